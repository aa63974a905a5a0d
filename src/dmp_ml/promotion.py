"""Promotion: the MLflow champion's bundle as a BentoML model, the gated path to production.

``train`` always publishes its bundle as the workdir's live bundle, even when the champion
gate kept the previous propensity model. :func:`promote` finds the registry's ``champion`` of
``dmp-propensity-<target>-<horizon>d`` (the settings' target and horizon; see
:func:`dmp_ml.tracking.champion_version` for registries from before the horizon), the bundle
that run was trained in (its ``bundle_version`` tag; a bundle re-published by ``forget`` or a
refresh counts as the same training, the newest one is taken), verifies it and stores it as a
BentoML model ``dmp-ml-bundle:<version>`` in the local model store (``BENTOML_HOME``). The
service serves it with ``DMP_ML_SERVICE__BENTO_MODEL=dmp-ml-bundle:latest``; the workdir stays
the home of the erasure list.

Privacy: a bundle that still holds an erased profile is refused, and
:func:`dmp_ml.erasure.forget` replaces every stored model holding a forgotten profile by a
scrubbed one, so ``:latest`` never serves an erased person after a restart. Copies outside the
local store (an exported or containerised Bento) are out of its reach.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dmp_ml import layout
from dmp_ml.bundle import (
    BENTO_BUNDLE_DIR,
    BENTO_MODEL_NAME,
    DELTA_KEY,
    bento_bundle_path,
    bentoml_quiet,
    load_bundle,
    read_features_index,
    read_manifest,
)
from dmp_ml.errors import BundleError, storage_errors_in
from dmp_ml.settings import Settings, load_settings

logger = logging.getLogger(__name__)


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


def champion_bundle(workdir: str | Path, settings: Settings) -> tuple[Path, dict[str, str]]:
    """The newest bundle of ``workdir`` trained in the champion's run, and the champion's ids."""
    from dmp_ml.store import training_version
    from dmp_ml.tracking import CHAMPION_ALIAS, champion_version, registered_model_name

    from mlflow import MlflowClient  # isort: skip (after dmp_ml.tracking: telemetry off)
    from mlflow.exceptions import MlflowException  # isort: skip

    versions = layout.versions_dir(workdir)
    target, horizon = settings.propensity.target_event, settings.propensity.horizon_days
    name = registered_model_name(target, horizon)
    uri = settings.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = champion_version(client, target, horizon)
        if version is None:
            raise BundleError(
                f"{name} has no {CHAMPION_ALIAS} in {uri}: train a propensity model with "
                f"target {target!r} and horizon {horizon} d first"
            )
        name = version.name  # the legacy name when its champion is the one of this horizon
        tags = client.get_run(version.run_id).data.tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise BundleError(
                f"the run of {name} v{version.version} is gone from {uri}: retrain to promote"
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
        if path.name.startswith("."):
            continue
        try:
            manifest = read_manifest(path, verify=False)  # checksums: for the one chosen
        except BundleError:
            continue  # not a complete bundle: never a candidate
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


@storage_errors_in(lambda workdir, *_, **__: workdir)
def promote(
    workdir: str | Path, *, settings: Settings | None = None, name: str = BENTO_MODEL_NAME
) -> Promotion:
    """Store the champion's bundle of ``workdir`` as a new version of the BentoML model ``name``.

    Raises :class:`~dmp_ml.errors.BundleError` (nothing stored) when there is no champion, its
    bundle is gone or fails its checksums, or it still holds a profile on the erasure list.
    """
    bentoml = bentoml_quiet()

    from dmp_ml.erasure import read_erasure_list
    from dmp_ml.store import workdir_lock

    settings = settings or load_settings()
    if Path(settings.workdir) != Path(workdir):
        settings = settings.model_copy(update={"workdir": Path(workdir)})
    if not layout.versions_dir(workdir).is_dir():
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
                if manifest.get(DELTA_KEY):  # a refresh's delta: the model gets it whole
                    from dmp_ml.store import write_bundle_files

                    write_bundle_files(
                        load_bundle(path, n_threads=1),
                        Path(model.path) / BENTO_BUNDLE_DIR,
                        version=str(manifest["bundle_version"]),
                        manifest_update={},
                    )
                else:
                    shutil.copytree(path, Path(model.path) / BENTO_BUNDLE_DIR)
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
