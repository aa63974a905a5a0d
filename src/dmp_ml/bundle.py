"""The model bundle: one versioned, self-contained directory that serving needs.

Layout under a workdir::

    bundles/<version>/manifest.json   versions, as_of, data fingerprint, metrics, run ids, checksums
    bundles/<version>/...             feature table, models, precomputed scores
    bundle -> bundles/<version>       the live pointer, swapped atomically

A bundle is written into a temporary directory, checked, then published by renaming it into
``bundles/`` and atomically replacing the ``bundle`` symlink: a run that fails leaves the previous
bundle live and intact. Loading verifies every file's checksum, so a partial or corrupt bundle is
refused with :class:`~dmp_ml.errors.BundleError`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.errors import BundleError

if TYPE_CHECKING:
    from dmp_ml.models.lookalike import Audience

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
POINTER = "bundle"
VERSIONS_DIR = "bundles"
KEEP_VERSIONS = 3
BENTO_MODEL_NAME = "dmp-ml-bundle"
"""The BentoML model that ``dmp-ml promote`` stores bundles as."""
BENTO_BUNDLE_DIR = "bundle"
"""The bundle's directory inside a BentoML model's directory."""


def live_bundle_path(workdir: str | Path) -> Path:
    """The directory the ``bundle`` pointer of ``workdir`` names (resolved)."""
    pointer = Path(workdir) / POINTER
    if not pointer.exists():
        raise BundleError(f"no model bundle in {workdir}: run `dmp-ml train` first")
    return pointer.resolve()


def bento_bundle_path(tag: str) -> Path:
    """The bundle directory inside the BentoML model ``tag`` (``name:version`` or ``:latest``)."""
    bentoml = bentoml_quiet()
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as exc:
        raise BundleError(f"no BentoML model {tag}: run `dmp-ml promote` first") from exc
    except ValueError as exc:  # a malformed tag
        raise BundleError(f"{tag!r} is not a BentoML model tag: {exc}") from exc
    return Path(model.path) / BENTO_BUNDLE_DIR


def served_bundle_path(workdir: str | Path, bento_model: str | None = None) -> Path:
    """The bundle a service on ``workdir`` answers from: the promoted ``bento_model``'s, else
    the workdir's live one. A promoted model still needs the workdir: its erasure list."""
    if not bento_model:
        return live_bundle_path(workdir)
    if not Path(workdir).is_dir():
        raise BundleError(
            f"{workdir} does not exist: a promoted model is served with the "
            "workdir that holds its erasure list"
        )
    return bento_bundle_path(bento_model).resolve()


def bentoml_quiet() -> ModuleType:
    """BentoML, with its usage telemetry off unless the user turned it on explicitly."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    import bentoml

    return bentoml


def read_features_index(bundle_dir: Path) -> Any:
    """The profile ids of a bundle's feature table, without loading the bundle."""
    path = bundle_dir / "features" / "features.parquet"
    if not path.exists():
        raise BundleError(f"{bundle_dir} has no feature table")
    return pd.read_parquet(path, columns=[]).index.astype("string")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_of(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read a bundle directory's manifest; with ``verify``, check every file against it."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"{path} is not a complete bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path} is corrupt: not UTF-8 text ({exc.reason})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path} is corrupt: not JSON ({exc})") from exc
    except OSError as exc:
        raise BundleError(f"{manifest_path} cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(
            f"{manifest_path} is corrupt: a JSON object was expected, got {type(manifest).__name__}"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    if verify:
        expected = manifest.get("files", {})
        if not isinstance(expected, dict):
            raise BundleError(f"{manifest_path} is corrupt: files is not a JSON object")
        actual = _checksums(path)
        missing = sorted(set(expected) - set(actual))
        changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
        if missing or changed:
            raise BundleError(
                f"{path} is incomplete or corrupt: missing {missing[:5]}, changed {changed[:5]}"
            )
    return manifest


TEMP_PREFIX = ".tmp-"
"""Bundles being written live in ``bundles/.tmp-*`` until they are published."""


@contextmanager
def write_bundle(workdir: str | Path, version: str) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success publish it as the live bundle.

    The caller writes its files and a ``manifest`` dict into ``<tmp>/manifest.json`` via
    :func:`finish_manifest` before leaving the block. On any exception the temporary directory
    is removed and the live bundle is untouched. The writer holds a lock on the temporary
    directory, so one a killed writer left behind is told apart from one being written:
    abandoned ones are removed here first (and by ``forget``, see :func:`remove_abandoned`).
    """
    workdir = Path(workdir)
    versions = workdir / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    remove_abandoned(workdir)
    tmp = versions / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield tmp
            read_manifest(tmp, verify=True)
            final = versions / version
            if final.exists():
                raise BundleError(f"bundle version {version} already exists in {versions}")
            os.replace(tmp, final)
            _point_to(workdir, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        os.close(fd)
    _prune(versions, keep=KEEP_VERSIONS, live=final)
    logger.info("published bundle %s", final)


def remove_abandoned(workdir: str | Path) -> list[str]:
    """Delete the temporary bundles of writers that died (``kill -9``, power loss).

    They hold whole feature tables, scores and hashed e-mails, so they must not outlive
    their writer (nor an erasure). One still being written is locked by its writer and kept.
    Returns the names removed.
    """
    versions = Path(workdir) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    removed = []
    for path in sorted(versions.glob(f"{TEMP_PREFIX}*")):
        if not path.is_dir() or path.is_symlink():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # published or removed meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer
        try:
            shutil.rmtree(path)
            removed.append(path.name)
        finally:
            os.close(fd)
    if removed:
        logger.warning("removed %d abandoned temporary bundles in %s", len(removed), versions)
    return removed


def finish_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add format version and file checksums to ``manifest`` and write it last."""
    manifest = {**manifest, "format_version": FORMAT_VERSION, "files": _checksums(bundle_dir)}
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    (bundle_dir / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def _point_to(workdir: Path, target: Path) -> None:
    pointer = workdir / POINTER
    if pointer.exists() and not pointer.is_symlink():
        raise BundleError(f"{pointer} exists and is not a bundle pointer; move it away")
    tmp_link = workdir / f".{POINTER}-{uuid.uuid4().hex[:8]}"
    os.symlink(Path(VERSIONS_DIR) / target.name, tmp_link)
    os.replace(tmp_link, pointer)


def _prune(versions: Path, keep: int, live: Path) -> None:
    # version names start with their creation time, so name order is age order
    done = sorted(p for p in versions.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in done[:-keep]:
        if old != live:
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- loaded bundle


@dataclass(frozen=True)
class ScoreResult:
    """Scores of the requested profiles that are known, and the ids that are not."""

    frame: pd.DataFrame
    unknown_ids: list[str]


class ModelBundle:
    """A loaded, verified bundle: the feature table, the models and the precomputed scores.

    Every question a campaign tool asks goes through one of its methods, so the CLI, the
    service and notebooks give the same answers. Forgotten profiles (see :meth:`forget`)
    disappear from every answer at once.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], n_threads: int | None = None) -> None:
        from dmp_ml.features import FeatureTable
        from dmp_ml.models.lookalike import LookalikeModel
        from dmp_ml.models.propensity import PropensityModel
        from dmp_ml.models.send_time import SendTimeModel

        self.path = path
        self.manifest = manifest
        self.version: str = manifest["bundle_version"]
        self.as_of = pd.Timestamp(manifest["as_of"])
        self.features = FeatureTable.read(path / "features")
        steps = manifest.get("steps", {})

        def trained(name: str) -> bool:
            return steps.get(name, {}).get("status") == "trained"

        self.propensity = (
            PropensityModel.load(path / "propensity") if trained("propensity") else None
        )
        if self.propensity is not None and n_threads is not None:
            self.propensity.n_threads = n_threads
        self.scores = (
            pd.read_parquet(path / "propensity" / "scores.parquet").set_index("profile_id")
            if self.propensity is not None
            else None
        )
        self.send_time_model = (
            SendTimeModel.load(path / "send_time") if trained("send_time") else None
        )
        self.lookalike_model = (
            LookalikeModel.load(path / "lookalike", n_threads=n_threads)
            if trained("lookalike")
            else None
        )
        self.affinity_model = _load_affinity(path) if trained("affinity") else None
        self._forgotten: set[str] = set()

    # -- questions ------------------------------------------------------------------------
    def score(self, profile_ids: Iterable[str] | None = None, explain: bool = False) -> ScoreResult:
        """Propensity ``score`` and ``percentile`` as of the bundle's ``as_of`` (all profiles
        when ``profile_ids`` is None), with what each score rests on: ``history_days`` (first
        event to ``as_of``), ``events_used`` and ``days_since_last_event``, so a thin answer
        can be told from a confident one."""
        if self.scores is None or self.propensity is None:
            raise BundleError(
                f"bundle {self.version} has no propensity model: {self._why('propensity')}"
            )
        if profile_ids is None:
            profile_ids = self.scores.index
        ids = pd.Index(list(dict.fromkeys(str(p) for p in profile_ids)), dtype="string")
        rows = self.scores.index.get_indexer(ids)
        found = rows >= 0
        if self._forgotten:
            found &= ~ids.isin(list(self._forgotten))
        known = ids[found].tolist()
        unknown = ids[~found].tolist()
        frame = self.scores.iloc[rows[found]][["score", "percentile"]].reset_index()
        frame = frame.join(self._basis(frame["profile_id"]))
        if explain and known:
            X = self.features.frame.loc[known]
            frame["reasons"] = self.propensity.explain(X)
        return ScoreResult(frame=frame, unknown_ids=unknown)

    def _basis(self, profile_ids: pd.Series) -> pd.DataFrame:
        """The history behind each profile's answers (rows aligned with ``profile_ids``)."""
        table = self.features.frame
        rows = table.index.get_indexer(profile_ids.astype(str))
        known = rows >= 0
        basis = pd.DataFrame(index=profile_ids.index)
        for name, column in (
            ("history_days", "tenure_days"),
            ("events_used", "event_count_total"),
            ("days_since_last_event", "days_since_last_event"),
        ):
            values = np.full(len(rows), np.nan)
            if column in table.columns:
                picked = table[column].iloc[rows[known]]
                values[known] = picked.to_numpy(dtype=float, na_value=np.nan)
            basis[name] = pd.array(np.round(values), dtype="Int64")
        return basis

    def lookalike(
        self,
        seed_ids: Iterable[str],
        size: int | None = None,
        reach: float | None = None,
        exclude_ids: Iterable[str] = (),
    ) -> Audience:
        """More profiles like the seed; see :meth:`.models.lookalike.LookalikeModel.expand`."""
        if self.lookalike_model is None:
            raise BundleError(
                f"bundle {self.version} has no lookalike model: {self._why('lookalike')}"
            )
        # forgotten seeds are no longer in the index: the model reports them as unknown
        return self.lookalike_model.expand(
            [str(s) for s in seed_ids], size=size, reach=reach, exclude_ids=exclude_ids
        )

    def send_time(
        self,
        profile_ids: Iterable[str] | None = None,
        window_start: pd.Timestamp | str | None = None,
        window_hours: int = 24,
        quiet_hours: tuple[int, int] | None = None,
        timezone: str | None = None,
    ) -> Any:
        """Best send time per profile inside a window (see ``SendTimeModel.best_send_time``)."""
        if self.send_time_model is None:
            raise BundleError(
                f"bundle {self.version} has no send-time model: {self._why('send_time')}"
            )
        if profile_ids is None:
            ids = self.features.frame.index.astype(str).tolist()
        else:
            ids = [str(p) for p in profile_ids]
        decision = self.send_time_model.best_send_time(
            ids,
            window_start=window_start if window_start is not None else self.as_of,
            window_hours=window_hours,
            quiet_hours=quiet_hours,
            timezone=timezone,
        )
        # only eligible (consented, unexpired, not forgotten) profiles ever get an answer; the
        # lookup goes through the feature index's hash table (built once, then cached by pandas)
        # rather than ``Series.isin(index)``, which walks the whole population on every call
        answered = decision.frame["profile_id"].to_numpy(dtype=object, na_value=None)
        eligible = self.features.frame.index.get_indexer(answered) >= 0
        forgotten = self._forgotten
        gone = ~eligible | np.fromiter(
            (p in forgotten for p in answered), dtype=bool, count=len(answered)
        )
        if gone.any():
            unknown = list(decision.unknown_ids) + decision.frame.loc[gone, "profile_id"].tolist()
            decision = replace(
                decision,
                frame=decision.frame.loc[~gone].reset_index(drop=True),
                unknown_ids=unknown,
            )
        return decision

    def forget(self, profile_ids: Iterable[str]) -> int:
        """Remove profiles from every answer of this loaded bundle at once."""
        ids = {str(p) for p in profile_ids}
        self._forgotten |= ids
        if self.lookalike_model is not None:
            self.lookalike_model.forget(ids)
        return len(ids)

    def info(self) -> dict[str, Any]:
        """The manifest without file checksums, plus where the bundle lives."""
        info = {k: v for k, v in self.manifest.items() if k != "files"}
        info["path"] = str(self.path)
        return info

    def _why(self, step: str) -> str:
        outcome = self.manifest.get("steps", {}).get(step, {})
        return outcome.get("reason") or "the step did not run"


def _load_affinity(path: Path) -> Any:
    from dmp_ml.models.affinity import AFFINITY_DIR, AffinityModel

    return AffinityModel.load(path / AFFINITY_DIR)


def lookalike(
    bundle: ModelBundle,
    seed_ids: Iterable[str],
    size: int | None = None,
    reach: float | None = None,
    exclude_ids: Iterable[str] = (),
) -> Audience:
    """More profiles like ``seed_ids`` from ``bundle``: the library form of ``POST /lookalike``."""
    return bundle.lookalike(seed_ids, size=size, reach=reach, exclude_ids=exclude_ids)


def load_bundle(location: str | Path, n_threads: int | None = None) -> ModelBundle:
    """Load and verify the live bundle of a workdir, or a bundle directory itself."""
    location = Path(location)
    path = location if (location / MANIFEST).exists() else live_bundle_path(location)
    manifest = read_manifest(path, verify=True)
    try:
        return ModelBundle(path, manifest, n_threads=n_threads)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"bundle {path} cannot be loaded: {exc}") from exc
