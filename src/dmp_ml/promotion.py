"""Promotion: the MLflow champion's bundle as a BentoML model, the gated path to production.

``train`` always publishes its bundle as the workdir's live bundle, even when the champion
gate kept the previous propensity model. :func:`promote` finds the registry's ``champion`` of
``dmp-propensity-<target>``, the bundle that run was trained in (its ``bundle_version`` tag; a
bundle re-published by ``forget`` or a refresh counts as the same training, the newest one is
taken), verifies it and stores it as a BentoML model ``dmp-ml-bundle:<version>`` in the local
model store (``BENTOML_HOME``). The service serves it with
``DMP_ML_SERVICE__BENTO_MODEL=dmp-ml-bundle:latest``; the workdir stays the home of the erasure
list.

Privacy: a bundle that still holds an erased profile is refused, and :func:`scrub_bento_models`
(called by :func:`dmp_ml.erasure.forget`) replaces every stored model holding a forgotten
profile by a scrubbed one, so ``:latest`` never serves an erased person after a restart.
Copies outside the local store (an exported or containerised Bento) are out of its reach.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from dmp_ml.bundle import MANIFEST, VERSIONS_DIR, load_bundle, read_manifest
from dmp_ml.errors import BundleError
from dmp_ml.settings import Settings, load_settings

logger = logging.getLogger(__name__)

BENTO_MODEL_NAME = "dmp-ml-bundle"
BUNDLE_DIR = "bundle"
"""The bundle's directory inside a BentoML model's directory."""


def _bentoml() -> ModuleType:
    """BentoML, with its usage telemetry off unless the user turned it on explicitly."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    import bentoml

    return bentoml


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` stored: the BentoML model tag and where it came from."""

    tag: str
    bundle_version: str
    train_version: str
    registered_model: str
    model_version: str
    run_id: str
    path: str


def bento_bundle_path(tag: str) -> Path:
    """The bundle directory inside the BentoML model ``tag`` (``name:version`` or ``:latest``)."""
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as exc:
        raise BundleError(f"no BentoML model {tag}: run `dmp-ml promote` first") from exc
    except ValueError as exc:  # a malformed tag
        raise BundleError(f"{tag!r} is not a BentoML model tag: {exc}") from exc
    return Path(model.path) / BUNDLE_DIR


def champion_bundle(workdir: str | Path, settings: Settings) -> tuple[Path, dict[str, str]]:
    """The newest bundle of ``workdir`` trained in the champion's run, and the champion's ids."""
    from mlflow.exceptions import MlflowException

    from dmp_ml.store import training_version
    from dmp_ml.tracking import CHAMPION_ALIAS, registered_model_name, use_tracking_uri

    versions = Path(workdir) / VERSIONS_DIR
    name = registered_model_name(settings.propensity.target_event)
    uri = settings.tracking_uri()
    with use_tracking_uri(uri) as client:
        try:
            version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
            tags = client.get_run(version.run_id).data.tags
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise BundleError(
                    f"{name} has no {CHAMPION_ALIAS} (or its run is gone) in {uri}: "
                    "train a propensity model first"
                ) from exc
            raise BundleError(f"cannot read the MLflow registry at {uri}: {exc.message}") from exc
    train_version = tags.get("bundle_version")
    if not train_version:
        raise BundleError(
            f"{name} v{version.version} (run {version.run_id}) names no bundle (logged outside "
            "`dmp-ml train`, or by a version before promotion existed): retrain to promote"
        )
    candidates = []
    for path in sorted(versions.iterdir()):
        if path.name.startswith(".") or not (path / MANIFEST).exists():
            continue
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if training_version(manifest) == train_version:
            candidates.append(path)  # names sort by creation time: the last is the newest
    if not candidates:
        raise BundleError(
            f"the champion {name} v{version.version} was trained in bundle {train_version}, "
            f"which is no longer in {versions} (only the newest bundles are kept); "
            "retrain, or promote right after the train that made the champion"
        )
    champion = {
        "train_version": train_version,
        "registered_model": name,
        "model_version": str(version.version),
        "run_id": str(version.run_id),
    }
    return candidates[-1], champion


def promote(
    workdir: str | Path, *, settings: Settings | None = None, name: str = BENTO_MODEL_NAME
) -> Promotion:
    """Store the champion's bundle of ``workdir`` as a new version of the BentoML model ``name``.

    Raises :class:`~dmp_ml.errors.BundleError` (nothing stored) when there is no champion, its
    bundle is gone or fails its checksums, or it still holds a profile on the erasure list.
    """
    bentoml = _bentoml()

    from dmp_ml.erasure import read_erasure_list
    from dmp_ml.store import workdir_lock

    settings = settings or load_settings()
    if Path(settings.workdir) != Path(workdir):
        settings = settings.model_copy(update={"workdir": Path(workdir)})
    if not (Path(workdir) / VERSIONS_DIR).is_dir():
        raise BundleError(f"no bundles in {workdir}: run `dmp-ml train` first")
    # under the workdir lock: a forget cannot land between the erasure check and the save
    # (nor delete the bundle while it is copied; a train pruning old bundles still can)
    with workdir_lock(workdir):
        path, champion = champion_bundle(workdir, settings)
        manifest = read_manifest(path, verify=True)
        _refuse_erased(path, read_erasure_list(workdir))
        labels = {"bundle_version": str(manifest["bundle_version"]), **champion}
        with bentoml.models.create(
            name,
            labels=labels,
            metadata={"as_of": str(manifest.get("as_of")), "source": str(path)},
        ) as model:
            try:
                shutil.copytree(path, Path(model.path) / BUNDLE_DIR)
            except OSError as exc:  # the model is not saved when this block raises
                raise BundleError(f"bundle {path.name} changed while it was copied: {exc}") from exc
        tag = str(model.tag)
        try:
            stored = bento_bundle_path(tag)  # the model moved into the store on leaving the block
            read_manifest(stored, verify=True)
        except BundleError:
            bentoml.models.delete(tag)
            raise
    logger.info("promoted bundle %s as BentoML model %s", manifest["bundle_version"], tag)
    return Promotion(tag=tag, path=str(stored), **labels)


def _refuse_erased(path: Path, erased: frozenset[str]) -> None:
    if not erased:
        return
    held = int(read_features_index(path).isin(list(erased)).sum())
    if held:
        raise BundleError(
            f"bundle {path.name} still holds {held} erased profile(s); "
            "run `dmp-ml forget` with the erasure list or retrain first"
        )


def scrub_bento_models(
    profile_ids: Iterable[str], name: str = BENTO_MODEL_NAME
) -> tuple[dict[str, str], list[str]]:
    """Replace every stored model ``name`` holding any of ``profile_ids`` by a scrubbed copy.

    Each affected model is rewritten without the profiles as a new, verified model version
    (same labels, ``parent`` naming the old tag), then the old version is deleted; the model
    that was ``:latest`` is rewritten last, so ``:latest`` keeps naming the same promotion.
    Returns ``{old tag: new tag}`` and the tags that could not be checked (they may still hold
    the profiles). A store where nothing was promoted costs one directory listing.
    """
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    ids = [str(p) for p in profile_ids]
    try:
        models = sorted(bentoml.models.list(name), key=lambda m: m.creation_time)
    except NotFound:  # nothing was ever promoted
        return {}, []
    unchecked: list[str] = []
    holding = []
    for model in models:
        try:
            index = read_features_index(Path(model.path) / BUNDLE_DIR)
        except (BundleError, OSError) as exc:
            logger.warning("BentoML model %s cannot be checked for erasure: %s", model.tag, exc)
            unchecked.append(str(model.tag))
            continue
        if index.isin(ids).any():
            holding.append(model)
    if holding and holding[-1] is not models[-1]:
        holding.append(models[-1])  # re-stored last, so it stays :latest
    replaced = {str(m.tag): _rewrite(m, ids, name) for m in holding}
    return replaced, unchecked


def read_features_index(bundle_dir: Path) -> Any:
    """The profile ids of a bundle's feature table, without loading the bundle."""
    import pandas as pd

    path = bundle_dir / "features" / "features.parquet"
    if not path.exists():
        raise BundleError(f"{bundle_dir} has no feature table")
    return pd.read_parquet(path, columns=[]).index.astype("string")


def _rewrite(model: Any, ids: list[str], name: str) -> str:
    """Store ``model`` again without ``ids`` (verified), delete the old version; the new tag."""
    bentoml = _bentoml()

    from dmp_ml.erasure import remove_profiles
    from dmp_ml.store import new_version, write_bundle_files

    bundle = load_bundle(Path(model.path) / BUNDLE_DIR, n_threads=1)
    remove_profiles(bundle, ids)
    version = new_version("forget")
    labels: dict[str, Any] = {**model.info.labels, "bundle_version": version}
    labels["parent"] = str(model.tag)
    with bentoml.models.create(name, labels=labels, metadata=model.info.metadata) as new:
        write_bundle_files(
            bundle, Path(new.path) / BUNDLE_DIR, version=version, manifest_update={}, drop_ids=ids
        )
    try:
        read_manifest(bento_bundle_path(str(new.tag)), verify=True)
    except BundleError:
        bentoml.models.delete(new.tag)
        raise
    bentoml.models.delete(model.tag)
    logger.info("BentoML model %s replaced by %s, without the profiles", model.tag, new.tag)
    return str(new.tag)
