"""The model bundle: one versioned, self-contained directory that serving needs, and its codec.

Layout of a bundle directory (the workdir's layout is in :mod:`dmp_ml.layout`)::

    manifest.json               versions, as_of, data fingerprint, steps, run ids, checksums
    features/                   the feature table (mapped arrays, see FeatureTable.write)
    <model>/                    one directory per registered model that trained (its ``name``)
    propensity/scores.*         precomputed propensity scores (``.npy`` mapped, ids in Parquet)
    ...                         what steps add (hashed contacts, consent state, refresh records)

:func:`save_bundle` writes a bundle's features, models and scores and its manifest;
:class:`ModelBundle` reads them back, both by iterating :data:`dmp_ml.models.REGISTRY`, so a
registered model needs no code here. A model is in a bundle when its step's status in the
manifest's ``steps`` is ``trained``. Every large per-profile array (the feature table, the
scores, send-time curves, lookalike vectors, the flat FAISS index, affinity counts) is a file
mapped copy-on-write on load (:mod:`dmp_ml.mapped`), so the service's workers share one copy
in the page cache and a worker's private memory holds little more than the profile ids;
bundle files are never changed in place (a refresh or an erasure publishes a new version).
Format 2 introduced the mapped feature table and scores; format 1 bundles are refused (retrain).

A refresh publishes a *delta version* (:mod:`dmp_ml.delta`): only the touched profiles' rows,
its manifest's ``delta`` naming the base version and the chain of deltas over it. Loading one
maps the base and overlays the chain in order (:attr:`ModelBundle.base_path`,
:attr:`ModelBundle.deltas`); pruning keeps every version a kept one needs.

A bundle is written into a temporary directory, checked, then published by renaming it into
``bundles/`` and atomically replacing the ``bundle`` pointer: a run that fails leaves the
previous bundle live and intact. Loading verifies every file's checksum, so a partial or
corrupt bundle is refused with :class:`~dmp_ml.errors.BundleError`.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from dmp_ml import layout
from dmp_ml.delta import CHANGE_FILE, Delta, merge_rows, merge_table, read_change, read_delta
from dmp_ml.errors import BundleError
from dmp_ml.id_index import rows_of
from dmp_ml.manifest import (
    DELTA_KEY,
    MANIFEST,
    chain_names,
    delta_chain,
    delta_info,
    finish_manifest,
    read_manifest,
    references,
    verified_manifest,
    verify_written,
)
from dmp_ml.mapped import map_frame, write_frame
from dmp_ml.models import REGISTRY, BundleModel, model_class
from dmp_ml.models.base import ProfileUpdate
from dmp_ml.pages import release_free_memory

if TYPE_CHECKING:
    from dmp_ml.features import FeatureTable
    from dmp_ml.models.affinity import AffinityModel
    from dmp_ml.models.lookalike import Audience, LookalikeModel
    from dmp_ml.models.propensity import PropensityModel
    from dmp_ml.models.send_time import SendTimeModel

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"
SCORES_FILE = "propensity/scores.parquet"
"""The precomputed propensity scores' ids, relative to the bundle directory; the scores
themselves are in ``propensity/scores.npy`` (:func:`dmp_ml.mapped.write_frame`)."""
_SCORES_STEM = "scores"
TRAINED = "trained"
"""The status in the manifest's ``steps`` of a model that is in the bundle."""
KEEP_VERSIONS = 3
BENTO_MODEL_NAME = "dmp-ml-bundle"
"""The BentoML model that ``dmp-ml promote`` stores bundles as."""
BENTO_BUNDLE_DIR = "bundle"
"""The bundle's directory inside a BentoML model's directory."""


def live_bundle_path(workdir: str | Path) -> Path:
    """The directory the ``bundle`` pointer of ``workdir`` names (resolved)."""
    pointer = layout.pointer(workdir)
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
    """The profile ids of a bundle's feature table, without loading the bundle (a delta
    version's: its base's with the chain's profiles added and removed)."""
    base, chain = bundle_dir, []
    info = delta_info(bundle_dir)
    if info is not None:
        root = bundle_dir.resolve().parent
        base_name, names = chain_names(info)
        base, chain = root / base_name, [root / v for v in names]
    path = base / FEATURES_DIR / "features.parquet"
    if not path.exists():
        raise BundleError(f"{bundle_dir} has no feature table")
    try:
        ids = pd.read_parquet(path, columns=["profile_id"])["profile_id"]
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path} is corrupt: {type(exc).__name__}") from exc
    index = pd.Index(ids.astype("string"), name="profile_id")
    for link in chain:
        change_file = link / layout.DELTA_DIR / CHANGE_FILE
        try:
            change = read_change(link / layout.DELTA_DIR)
            index = index.difference(pd.Index(change["removed"], dtype="string"))
            index = index.union(pd.Index(change["profile_ids"], dtype="string"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{change_file} is missing or corrupt: {type(exc).__name__}") from exc
    return pd.Index(index, dtype="string", name="profile_id")


TEMP_PREFIX = ".tmp-"
"""Bundles being written live in ``bundles/.tmp-*`` until they are published."""
LOCK_PREFIX = ".lock"
"""The writer of ``bundles/.tmp-x`` holds ``bundles/.lock.tmp-x`` while it writes."""


class StagedBundle:
    """A bundle directory being written (``path``, under ``bundles/.tmp-*``), live only once
    :meth:`publish` is called; see :func:`staged_bundle`."""

    def __init__(self, workdir: Path, path: Path, version: str) -> None:
        self.workdir = workdir
        self.path = path
        self.version = version
        self.published: Path | None = None
        self._verified = False

    def verify(self) -> None:
        """Check the written files against the manifest (hashing every file once): a writer
        that publishes under the workdir lock calls it first, so the lock is held for the
        renames only. :meth:`publish` calls it when the writer did not."""
        if self._verified:
            return
        verify_written(self.path)
        self._verified = True

    def publish(self, *, live: bool = True) -> Path:
        """Move the verified directory (:meth:`verify`) to its version name; with ``live``
        point the workdir at it and prune old versions. A version published without ``live``
        is one a later version builds on (a rebased delta's base)."""
        self.verify()
        versions = self.path.parent
        final = versions / self.version
        if final.exists():
            raise BundleError(f"bundle version {self.version} already exists in {versions}")
        os.replace(self.path, final)
        self.published = final
        if live:
            _point_to(self.workdir, final)
            _prune(versions, keep=KEEP_VERSIONS, live=final)
            logger.info("published bundle %s", final)
        return final


@contextmanager
def staged_bundle(workdir: str | Path, version: str) -> Iterator[StagedBundle]:
    """Yield a :class:`StagedBundle` to fill and publish; one not published when the block
    ends (or on any exception) is removed and the live bundle is untouched.

    The writer holds the temporary directory's lock file (:data:`LOCK_PREFIX`, released by the
    system if the process dies), so one a killed writer left behind is told apart from one
    being written: abandoned ones are removed here first (and by ``forget``, see
    :func:`remove_abandoned`).
    """
    workdir = Path(workdir)
    versions = layout.versions_dir(workdir)
    versions.mkdir(parents=True, exist_ok=True)
    remove_abandoned(workdir)
    tmp = versions / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    lock = _writer_lock(tmp)
    try:
        with lock:
            tmp.mkdir()
            staged = StagedBundle(workdir, tmp, version)
            try:
                yield staged
            finally:
                if staged.published is None:
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        Path(lock.lock_file).unlink(missing_ok=True)


@contextmanager
def write_bundle(workdir: str | Path, version: str) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success publish it as the live bundle.

    The caller writes its files and a ``manifest`` dict into ``<tmp>/manifest.json`` via
    :func:`finish_manifest` before leaving the block. On any exception the temporary directory
    is removed and the live bundle is untouched (see :func:`staged_bundle`).
    """
    with staged_bundle(workdir, version) as staged:
        yield staged.path
        staged.publish()


def remove_abandoned(workdir: str | Path) -> list[str]:
    """Delete the temporary bundles of writers that died (``kill -9``, power loss).

    They hold whole feature tables, scores and hashed e-mails, so they must not outlive
    their writer (nor an erasure). One still being written is locked by its writer and kept.
    Returns the names removed.
    """
    versions = layout.versions_dir(workdir)
    if not versions.is_dir():
        return []
    removed = []
    for path in sorted(versions.glob(f"{TEMP_PREFIX}*")):
        if not path.is_dir() or path.is_symlink():
            continue
        lock = _writer_lock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # a live writer
        try:
            if path.is_dir():  # not published or removed meanwhile
                shutil.rmtree(path)
                removed.append(path.name)
        finally:
            lock.release()
            Path(lock.lock_file).unlink(missing_ok=True)
    for lock_path in versions.glob(f"{LOCK_PREFIX}{TEMP_PREFIX}*"):  # died before mkdir
        if (versions / lock_path.name.removeprefix(LOCK_PREFIX)).exists():
            continue
        lock = FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        lock.release()
        lock_path.unlink(missing_ok=True)
    if removed:
        logger.warning("removed %d abandoned temporary bundles in %s", len(removed), versions)
    return removed


def _writer_lock(tmp: Path) -> FileLock:
    """The lock a writer of the temporary bundle ``tmp`` holds while it writes."""
    return FileLock(tmp.with_name(f"{LOCK_PREFIX}{tmp.name}"))


def _point_to(workdir: Path, target: Path) -> None:
    pointer = layout.pointer(workdir)
    if pointer.exists() and not pointer.is_symlink():
        raise BundleError(f"{pointer} exists and is not a bundle pointer; move it away")
    tmp_link = workdir / f".{layout.POINTER}-{uuid.uuid4().hex[:8]}"
    os.symlink(Path(layout.VERSIONS_DIR) / target.name, tmp_link)
    os.replace(tmp_link, pointer)


def _prune(versions: Path, keep: int, live: Path) -> None:
    # version names start with their creation time, so name order is age order; a kept delta
    # version keeps its base and the deltas before it
    done = sorted(p for p in versions.iterdir() if p.is_dir() and not p.name.startswith("."))
    kept = {p.name for p in done[-keep:]} | {live.name}
    needed = set(kept)
    for name in kept:
        needed |= references(versions / name)
    for old in done:
        if old.name not in needed:
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- codec


def trained_models(manifest: Mapping[str, Any]) -> list[str]:
    """The registered models a bundle holds: those whose step in ``steps`` trained."""
    steps = manifest.get("steps", {})
    return [name for name in REGISTRY if steps.get(name, {}).get("status") == TRAINED]


def detached(model: BundleModel) -> BundleModel:
    """A copy of ``model`` that its ``update`` and ``forget`` can change while ``model`` keeps
    answering: the model's own ``detached()`` where it changes arrays in place (lookalike),
    else a shallow copy (the others replace their arrays on update)."""
    own = getattr(model, "detached", None)
    return own() if callable(own) else copy.copy(model)


def load_models(
    path: Path, manifest: Mapping[str, Any], n_threads: int | None = None
) -> dict[str, BundleModel]:
    """Every model of the bundle at ``path``, by name (each from its directory ``<name>/``)."""
    return {
        name: model_class(name).load(path / name, n_threads=n_threads)
        for name in trained_models(manifest)
    }


class LazyModels(Mapping[str, BundleModel]):
    """The models of the bundle at ``path``, each loaded (and its library imported) the first
    time it is looked up, so a command that answers from the scores never loads LightGBM, the
    FAISS index or the send-time curves. Membership and iteration need no loading."""

    def __init__(
        self, path: Path, manifest: Mapping[str, Any], n_threads: int | None = None
    ) -> None:
        self._path = path
        self._names = trained_models(manifest)
        self._n_threads = n_threads
        self._loaded: dict[str, BundleModel] = {}
        self._changes: list[ProfileUpdate] = []
        self._lock = threading.Lock()

    def update(self, change: ProfileUpdate) -> None:
        """Bring every model up to date with ``change``: those loaded now, the others (in
        order with earlier changes) when they load."""
        with self._lock:
            self._changes.append(change)
            for model in self._loaded.values():
                model.update(change)

    def __getitem__(self, name: str) -> BundleModel:
        if name not in self._names:
            raise KeyError(name)
        with self._lock:
            if name not in self._loaded:
                try:
                    model = model_class(name).load(self._path / name, n_threads=self._n_threads)
                except (OSError, ValueError, KeyError) as exc:
                    raise BundleError(
                        f"bundle {self._path}: its {name} model cannot be loaded: {exc}"
                    ) from exc
                for change in self._changes:
                    model.update(change)
                self._loaded[name] = model
            return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def read_scores(path: Path) -> pd.DataFrame:
    """The precomputed propensity scores of the bundle at ``path``, indexed by ``profile_id``
    (the score columns mapped)."""
    scores = map_frame((path / SCORES_FILE).parent, _SCORES_STEM)
    scores.index = pd.Index(scores.index.astype("string"), name="profile_id")
    return scores


def save_bundle(
    directory: Path,
    *,
    features: FeatureTable,
    models: Mapping[str, BundleModel],
    scores: pd.DataFrame | None,
    manifest: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a bundle's features, models and scores into ``directory``, then its manifest.

    Each model goes into ``<name>/`` (``models`` maps registered names to fitted models; the
    manifest's ``steps`` must say ``trained`` for each, or loading leaves it out). ``scores``
    are indexed by ``profile_id``. Other files already in ``directory`` (e.g. the models
    ``train`` wrote with :func:`save_model` as their steps ended) are kept and covered by the
    checksums; the manifest is written last (:func:`finish_manifest`). Returns it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    features.write(directory / FEATURES_DIR)
    for name, model in models.items():
        save_model(directory, name, model)
    if scores is not None:
        frame = scores.set_axis(pd.Index(scores.index.astype("string"), name="profile_id"))
        rows = frame.index.get_indexer(features.profile_ids)
        if frame.index.is_unique and len(rows) == len(frame) and bool((rows >= 0).all()):
            frame = frame.iloc[rows]  # the table's order: loading shares one id index
        write_frame((directory / SCORES_FILE).parent, _SCORES_STEM, frame)
    return finish_manifest(directory, manifest)


def save_model(directory: Path, name: str, model: BundleModel) -> None:
    """Write one model into ``<name>/`` of the bundle being built in ``directory``.

    ``train`` writes each model as soon as its step has fitted it, so no later step holds it;
    :func:`save_bundle` then finds it among the files already there.
    """
    if name not in REGISTRY:
        raise KeyError(f"no model registered as {name!r}; known: {sorted(REGISTRY)}")
    model.save(directory / name)


# --------------------------------------------------------------------------- loaded bundle


@dataclass(frozen=True)
class ScoreResult:
    """Scores of the requested profiles that are known, and the ids that are not."""

    frame: pd.DataFrame
    unknown_ids: list[str]


class ModelBundle:
    """A loaded, verified bundle: the feature table, the models and the precomputed scores.

    ``models`` maps each registered model the bundle holds to it (see :func:`load_models`);
    ``propensity``, ``send_time_model``, ``lookalike_model`` and ``affinity_model`` name them
    (None when the bundle has none); with ``lazy`` each model loads on first use
    (:class:`LazyModels`); the feature table and the scores are always mapped at once. Every
    question a campaign tool asks goes through one of its methods, so the CLI, the service and
    notebooks give the same answers. Forgotten profiles (see :meth:`forget`) disappear from
    every answer at once.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        n_threads: int | None = None,
        lazy: bool = False,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.version: str = manifest["bundle_version"]
        self.as_of = pd.Timestamp(manifest["as_of"])
        self._n_threads = n_threads
        self.models: Mapping[str, BundleModel]
        self.features: FeatureTable
        self.scores: pd.DataFrame | None
        self.base_path: Path = path
        """The full bundle the answers rest on (:attr:`path` itself unless a delta version)."""
        self.deltas: list[Path] = []
        """The delta versions overlaid on :attr:`base_path`, oldest first."""
        self._read(lazy)
        self._forgotten: set[str] = set()

    def _read(self, lazy: bool) -> None:
        """Load the models and map the feature table and the scores of :attr:`path` (of its
        base, with its deltas overlaid in order, for a delta version)."""
        base, base_manifest, chain = delta_chain(self.path, self.manifest)
        self.base_path, self.deltas = base, []
        n_threads = self._n_threads
        self.models = (
            LazyModels(base, base_manifest, n_threads)
            if lazy
            else load_models(base, base_manifest, n_threads)
        )
        self._read_tables()
        if not lazy:
            self._share_ids()  # the deltas' updates then go through the table's id index
        for link in chain:
            self.overlay(read_delta(link / layout.DELTA_DIR))
            self.deltas.append(link)
        if not lazy:
            self._share_ids()
        release_free_memory()  # the reads' buffers, so a worker holds as much at any size

    def _read_tables(self) -> None:
        """Map the feature table and the scores of :attr:`base_path` (one id index when equal)."""
        from dmp_ml.features import FeatureTable

        self.features = FeatureTable.read(self.base_path / FEATURES_DIR)
        self.scores = read_scores(self.base_path) if "propensity" in self.models else None
        if self.scores is not None and self.scores.index.equals(self.features.profile_ids):
            self.scores.index = self.features.profile_ids  # one id index (and hash table)

    def overlay(self, delta: Delta, in_place: bool = True) -> None:
        """Apply a refresh's rows: features, scores, and every model's ``update`` with the
        delta's change (a lazily loaded model gets it when it loads). Without ``in_place`` the
        feature and score arrays are replaced, not written into."""
        change = delta.change
        before = self.features
        self.features = merge_table(before, delta, in_place=in_place)
        if self.scores is not None and delta.scores is not None:
            aligned = self.scores.index is before.profile_ids
            ids = before.ids if aligned else None
            self.scores = merge_rows(self.scores, delta.scores, change.removed, in_place, ids)
            if aligned and self.scores.index.equals(self.features.profile_ids):
                self.scores.index = self.features.profile_ids  # one id index again
        if isinstance(self.models, LazyModels):
            self.models.update(change)
        else:
            for model in self.models.values():
                model.update(change)

    def newer_deltas(self, info: object) -> list[str] | None:
        """The delta versions a chain has beyond this bundle's, oldest first, when it extends
        this bundle's chain over the same base; None when it does not (another base, a full
        bundle). ``info`` is a delta version's :data:`DELTA_KEY` manifest entry (see
        :func:`delta_info`), None for a full bundle."""
        if not isinstance(info, Mapping):
            return None
        base, names = chain_names(info)
        mine = [link.name for link in self.deltas]
        if base != Path(self.base_path).resolve().name or names[: len(mine)] != mine:
            return None
        return names[len(mine) :]

    def extended(self, path: Path, manifest: dict[str, Any]) -> ModelBundle | None:
        """The bundle at ``path`` (a verified ``manifest``) built from this one, when it is
        this one plus newer deltas: only those are read and overlaid, on copies, so this bundle
        keeps answering unchanged meanwhile. A service worker reloads so after a refresh
        instead of mapping the base and replaying every delta again. None when ``path`` is not
        such an extension (another base, a full bundle) or this bundle loads models lazily."""
        names = self.newer_deltas(manifest.get(DELTA_KEY))
        if not names or isinstance(self.models, LazyModels):
            return None
        root = path.resolve().parent
        fresh = [root / name for name in names]
        for link in fresh:
            if link.resolve() != path.resolve():
                read_manifest(link, verify=True)
        new = copy.copy(self)
        new.path, new.manifest = path, manifest
        new.version = manifest["bundle_version"]
        new.as_of = pd.Timestamp(manifest["as_of"])
        new.deltas = list(self.deltas)
        new._forgotten = set(self._forgotten)
        new.models = {name: detached(model) for name, model in self.models.items()}
        for link in fresh:
            new.overlay(read_delta(link / layout.DELTA_DIR), in_place=False)
            new.deltas.append(link)
        new._share_ids()  # the models' merged id lists: one index (and hash table) again
        release_free_memory()
        return new

    def file(self, relative: str) -> Path:
        """Where the bundle's file ``relative`` is: in the newest delta that has it, else in
        the base (a path that may not exist)."""
        for link in reversed(self.deltas):
            if (link / relative).exists():
                return link / relative
        return self.base_path / relative

    def _share_ids(self) -> None:
        """Models whose profile list is the table's use the table's index and its id index
        (:mod:`dmp_ml.id_index`): one copy of the ids per worker instead of one per model,
        and lookups by binary search in the mapped ids instead of a hash table over them."""
        index = self.features.profile_ids
        for model in self.models.values():
            ids = getattr(model, "profile_ids_", None)
            if isinstance(ids, pd.Index) and (ids is index or ids.equals(index)):
                model.profile_ids_ = index  # type: ignore[attr-defined]
                model.id_index_ = self.features.ids  # type: ignore[attr-defined]

    @property
    def propensity(self) -> PropensityModel | None:
        return self.models.get("propensity")  # type: ignore[return-value]

    @property
    def send_time_model(self) -> SendTimeModel | None:
        return self.models.get("send_time")  # type: ignore[return-value]

    @property
    def lookalike_model(self) -> LookalikeModel | None:
        return self.models.get("lookalike")  # type: ignore[return-value]

    @property
    def affinity_model(self) -> AffinityModel | None:
        return self.models.get("affinity")  # type: ignore[return-value]

    # -- questions ------------------------------------------------------------------------
    def score(self, profile_ids: Iterable[str] | None = None, explain: bool = False) -> ScoreResult:
        """Propensity ``score`` and ``percentile`` as of the bundle's ``as_of`` (all profiles
        when ``profile_ids`` is None), with what each score rests on: ``history_days`` (first
        event to ``as_of``), ``events_used`` and ``days_since_last_event``, so a thin answer
        can be told from a confident one."""
        if self.scores is None or "propensity" not in self.models:
            raise BundleError(
                f"bundle {self.version} has no propensity model: {self._why('propensity')}"
            )
        if profile_ids is None:
            profile_ids = self.scores.index
        ids = pd.Index(list(dict.fromkeys(str(p) for p in profile_ids)), dtype="string")
        aligned = self.scores.index is self.features.profile_ids  # the table's rows: its index
        rows = rows_of(self.scores.index, self.features.ids if aligned else None, ids)
        found = rows >= 0
        if self._forgotten:
            found &= ~ids.isin(list(self._forgotten))
        known = ids[found].tolist()
        unknown = ids[~found].tolist()
        frame = self.scores.iloc[rows[found]][["score", "percentile"]].reset_index()
        frame = frame.join(self._basis(frame["profile_id"]))
        if explain and known:
            X = self.features.take(self.features.rows(known))
            propensity = self.propensity
            assert propensity is not None  # "propensity" is in self.models
            frame["reasons"] = propensity.explain(X)
        return ScoreResult(frame=frame, unknown_ids=unknown)

    def _basis(self, profile_ids: pd.Series) -> pd.DataFrame:
        """The history behind each profile's answers (rows aligned with ``profile_ids``)."""
        rows = self.features.rows(profile_ids.astype(str))
        known = rows >= 0
        table = self.features.take(rows[known])  # the rows asked for, not the whole table
        basis = pd.DataFrame(index=profile_ids.index)
        for name, column in (
            ("history_days", "tenure_days"),
            ("events_used", "event_count_total"),
            ("days_since_last_event", "days_since_last_event"),
        ):
            values = np.full(len(rows), np.nan)
            if column in table.columns:
                values[known] = table[column].to_numpy(dtype=float, na_value=np.nan)
            basis[name] = pd.array(np.round(values), dtype="Int64")
        return basis

    def lookalike(self, seed_ids: Iterable[str], **request: Any) -> Audience:
        """More profiles like the seed; ``request`` (``size``, ``reach``, ``exclude_ids``) as
        in :meth:`dmp_ml.models.lookalike.LookalikeModel.expand`."""
        if self.lookalike_model is None:
            raise BundleError(
                f"bundle {self.version} has no lookalike model: {self._why('lookalike')}"
            )
        # forgotten seeds are no longer in the index: the model reports them as unknown
        return self.lookalike_model.expand([str(s) for s in seed_ids], **request)

    def send_time(self, profile_ids: Iterable[str] | None = None, **request: Any) -> Any:
        """Best send time per profile (every eligible one when ``profile_ids`` is None).

        ``request`` (``window_start``, ``window_hours``, ``quiet_hours``, ``timezone``) as in
        ``SendTimeModel.best_send_time``; the window starts at the bundle's ``as_of`` unless
        ``window_start`` says otherwise.
        """
        if self.send_time_model is None:
            raise BundleError(
                f"bundle {self.version} has no send-time model: {self._why('send_time')}"
            )
        eligible_ids = self.features.profile_ids
        if profile_ids is None:
            ids = eligible_ids.astype(str).tolist()
        else:
            ids = [str(p) for p in profile_ids]
        if request.get("window_start") is None:
            request["window_start"] = self.as_of
        decision = self.send_time_model.best_send_time(ids, **request)
        # only eligible (consented, unexpired, not forgotten) profiles ever get an answer; the
        # lookup is a binary search in the table's id index, not a pass over the population
        answered = decision.frame["profile_id"].to_numpy(dtype=object, na_value=None)
        eligible = self.features.ids.contains(answered)
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


def lookalike(bundle: ModelBundle, seed_ids: Iterable[str], **request: Any) -> Audience:
    """More profiles like ``seed_ids`` from ``bundle``: the library form of ``POST /lookalike``
    (``request`` as in :meth:`ModelBundle.lookalike`)."""
    return bundle.lookalike(seed_ids, **request)


def load_bundle(
    location: str | Path, n_threads: int | None = None, *, lazy: bool = False
) -> ModelBundle:
    """Load and verify the live bundle of a workdir, or a bundle directory itself.

    Every file is checked against the manifest either way. With ``lazy`` the models load when
    first used (a one-shot command needs one or two of them; the mapped feature table and
    scores cost little); without, all load now, so a long-lived server pays the cost, and finds
    an unloadable model, before it answers.
    """
    location = Path(location)
    path = location if (location / MANIFEST).exists() else live_bundle_path(location)
    manifest = verified_manifest(path)  # a delta's base: verified by delta_chain
    try:
        return ModelBundle(path, manifest, n_threads=n_threads, lazy=lazy)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"bundle {path} cannot be loaded: {exc}") from exc
