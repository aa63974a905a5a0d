"""Promotion: the MLflow champion's bundle as a BentoML model, servable without the workdir.

``train`` always publishes its bundle as the workdir's live bundle, even when the champion
gate kept the previous propensity model. :func:`promote` is the gated path to production: it
finds the registry's ``champion`` of ``dmp-propensity-<target>``, the bundle that run was
trained in (its ``bundle_version`` tag; a bundle re-published by ``forget`` or a refresh
counts as the same training, the newest one is taken), verifies it and stores it as a
BentoML model ``dmp-ml-bundle:<version>`` in the local model store (``BENTOML_HOME``). The
service serves it with ``DMP_ML_SERVICE__BENTO_MODEL=dmp-ml-bundle:latest``, and
``bentoml build`` packs it into the bento when ``bentofile.yaml`` lists it under ``models``.

Privacy: a bundle that still holds an erased profile is refused, and :func:`scrub_bento_models`
(called by :func:`dmp_ml.erasure.forget`) replaces every stored model holding a forgotten
profile by a scrubbed one, so ``:latest`` never serves an erased person after a restart.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dmp_ml.bundle import MANIFEST, VERSIONS_DIR, load_bundle, read_manifest
from dmp_ml.errors import BundleError
from dmp_ml.settings import Settings, load_settings

logger = logging.getLogger(__name__)

BENTO_MODEL_NAME = "dmp-ml-bundle"
BUNDLE_DIR = "bundle"
"""The bundle's directory inside a BentoML model's directory."""


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

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def bento_bundle_path(tag: str) -> Path:
    """The bundle directory inside the BentoML model ``tag`` (``name:version`` or ``:latest``)."""
    import bentoml
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
    if not versions.is_dir():
        raise BundleError(f"no bundles in {workdir}: run `dmp-ml train` first")
    name = registered_model_name(settings.propensity.target_event)
    uri = settings.tracking_uri()
    with use_tracking_uri(uri) as client:
        try:
            version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException as exc:
            raise BundleError(
                f"{name} has no {CHAMPION_ALIAS} in {uri}: train a propensity model first"
            ) from exc
        tags = client.get_run(version.run_id).data.tags
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
    import bentoml

    from dmp_ml.erasure import read_erasure_list

    settings = settings or load_settings()
    if Path(settings.workdir) != Path(workdir):
        settings = settings.model_copy(update={"workdir": Path(workdir)})
    path, champion = champion_bundle(workdir, settings)
    manifest = read_manifest(path, verify=True)
    _refuse_erased(path, read_erasure_list(workdir))
    labels = {"bundle_version": str(manifest["bundle_version"]), **champion}
    with bentoml.models.create(
        name,
        labels=labels,
        metadata={"as_of": str(manifest.get("as_of")), "source": str(path)},
    ) as model:
        shutil.copytree(path, Path(model.path) / BUNDLE_DIR)
    tag = str(model.tag)
    stored = bento_bundle_path(tag)  # the model moved into the store when the block closed
    read_manifest(stored, verify=True)
    logger.info("promoted bundle %s as BentoML model %s", manifest["bundle_version"], tag)
    return Promotion(tag=tag, path=str(stored), **labels)


def _refuse_erased(path: Path, erased: frozenset[str]) -> None:
    if not erased:
        return
    bundle = load_bundle(path, n_threads=1)
    held = int(bundle.features.frame.index.isin(list(erased)).sum())
    if held:
        raise BundleError(
            f"bundle {path.name} still holds {held} erased profile(s); "
            "run `dmp-ml forget` with the erasure list or retrain first"
        )


def scrub_bento_models(profile_ids: Iterable[str], name: str = BENTO_MODEL_NAME) -> list[str]:
    """Replace every stored model ``name`` holding any of ``profile_ids`` by a scrubbed copy.

    Each affected model is rewritten without the profiles as a new model version (same
    labels, ``parent`` naming the old tag), then the old version is deleted. Returns the
    deleted tags. A store without such models costs one directory listing.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from dmp_ml.erasure import remove_profiles
    from dmp_ml.store import new_version, write_bundle_files

    ids = [str(p) for p in profile_ids]
    try:
        models = bentoml.models.list(name)
    except NotFound:  # nothing was ever promoted
        return []
    replaced: list[str] = []
    for model in sorted(models, key=lambda m: m.creation_time):
        source = Path(model.path) / BUNDLE_DIR
        try:
            bundle = load_bundle(source, n_threads=1)
        except BundleError as exc:
            logger.warning("BentoML model %s cannot be checked for erasure: %s", model.tag, exc)
            continue
        removed = remove_profiles(bundle, ids)
        if not any(removed.values()):
            continue
        labels: dict[str, Any] = {**model.info.labels, "parent": str(model.tag)}
        with bentoml.models.create(name, labels=labels, metadata=model.info.metadata) as new:
            write_bundle_files(
                bundle,
                Path(new.path) / BUNDLE_DIR,
                version=new_version("forget"),
                manifest_update={},
                drop_ids=ids,
            )
        bentoml.models.delete(model.tag)
        replaced.append(str(model.tag))
        logger.info("BentoML model %s replaced by %s, without the profiles", model.tag, new.tag)
    return replaced
