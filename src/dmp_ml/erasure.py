"""The right to be forgotten: the erasure list and :func:`forget` across every store.

The erasure list lives in ``<workdir>/erasure.txt``, one id per line, append-only, applied by
every later train (and refresh). It holds the ids themselves (a suppression list cannot work
without them): the profile ids, and ``anon:<cookie_id>`` for the devices linked to them, and
nothing else about the person.

:func:`forget` puts ids on the list (durable first), removes the profiles from a loaded bundle
at once, rewrites and re-publishes the live bundle without them (deleting older versions),
purges their events from the workdir's event store and quarantine files, and replaces promoted
BentoML models that hold them. What remains outside (MLflow history, files already exported,
Bentos already built) is listed in :data:`REMAINS`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.bundle import (
    BENTO_BUNDLE_DIR,
    BENTO_MODEL_NAME,
    bento_bundle_path,
    bentoml_quiet,
    load_bundle,
    read_features_index,
    read_manifest,
)
from dmp_ml.errors import BundleError, RequestError

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle

logger = logging.getLogger(__name__)

ERASURE_FILE = "erasure.txt"


def read_erasure_list(workdir: str | Path) -> frozenset[str]:
    """Every id on the workdir's erasure list (empty when there is none)."""
    path = Path(workdir) / ERASURE_FILE
    if not path.exists():
        return frozenset()
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip())


def add_to_erasure_list(workdir: str | Path, profile_ids: Iterable[str]) -> int:
    """Append ids not yet on the list; return how many were new. Durable before it returns."""
    path = Path(workdir) / ERASURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    known = read_erasure_list(workdir)
    new = sorted({str(p).strip() for p in profile_ids if str(p).strip()} - known)
    if new:
        with path.open("a", encoding="utf-8") as handle:
            handle.write("".join(f"{p}\n" for p in new))
            handle.flush()
            os.fsync(handle.fileno())
    return len(new)


# --------------------------------------------------------------------------- forgetting
# (below: the right to be forgotten across every store; see forget())

MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class ForgetReport:
    """What :func:`forget` did, store by store.

    ``removed`` counts rows taken out of the live bundle per component (``features``,
    ``cookies`` of the cookie map, ``scores``, ``send_time``, ``lookalike``); ``bundle_version``
    is the re-published bundle (None when no bundle existed); ``deleted_versions`` the older
    bundle versions deleted because they still held the profiles; ``events_removed`` the rows
    taken out of each event-store and quarantine file; ``cookies_erased`` the devices of the
    profiles put on the erasure list as ``anon:<cookie>`` (so they never return as anonymous
    profiles once the links are purged); ``bento_models_replaced`` maps each promoted BentoML
    model that held them to its scrubbed replacement.
    """

    requested: int
    newly_erased: int
    in_bundle: int
    removed: dict[str, int]
    bundle_version: str | None
    deleted_versions: list[str]
    events_removed: dict[str, int]
    cookies_erased: int = 0
    bento_models_replaced: dict[str, str] = field(default_factory=dict)
    remains: list[str] = field(default_factory=list)
    campaign_members_removed: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "newly_erased": self.newly_erased,
            "in_bundle": self.in_bundle,
            "removed": dict(self.removed),
            "bundle_version": self.bundle_version,
            "deleted_versions": list(self.deleted_versions),
            "events_removed": dict(self.events_removed),
            "cookies_erased": self.cookies_erased,
            "bento_models_replaced": dict(self.bento_models_replaced),
            "remains": list(self.remains),
            "campaign_members_removed": dict(self.campaign_members_removed),
        }


REMAINS = [
    "MLflow history: models trained before the erasure were fitted on the profiles' data, and "
    "each propensity run's model artifact holds an input example of 5 validation feature rows "
    "(no ids). Retrain, then delete the older runs and model versions and run `mlflow gc` "
    "(see the README).",
    "Files exported before the erasure (audience CSV/Parquet handed to destinations) are "
    "outside the workdir: delete them at the destination.",
    "Bentos exported or containerised with a promoted model hold that model's copy: rebuild "
    "them from the scrubbed model (`bentoml build` after the forget).",
]


def clean_ids(profile_ids: Iterable[object], field_name: str = "profile_ids") -> list[str]:
    """Distinct, stripped, non-empty ids in the order given; RequestError on a bad one."""
    if isinstance(profile_ids, str | bytes):
        raise RequestError(field_name, "expected a list of ids, got one string")
    out: dict[str, None] = {}
    for i, value in enumerate(profile_ids):
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise RequestError(f"{field_name}[{i}]", f"must be text, got {type(value).__name__}")
        text = str(value).strip()
        if not text:
            continue
        if len(text) > MAX_ID_LENGTH or "\n" in text or "\r" in text:
            raise RequestError(
                f"{field_name}[{i}]", f"must be one line of at most {MAX_ID_LENGTH} characters"
            )
        out[text] = None
    return list(out)


def remove_profiles(bundle: ModelBundle, profile_ids: Iterable[str]) -> dict[str, int]:
    """Physically remove profiles from a loaded bundle's tables and models (in memory).

    For a private copy that is about to be re-published (see :func:`forget`); a bundle that
    is serving requests should use :meth:`ModelBundle.forget` instead.
    """
    ids = pd.Index(list(profile_ids), dtype="string")
    table = bundle.features
    keep = ~table.frame.index.isin(ids)
    removed = {"features": int((~keep).sum()), "cookies": 0, "scores": 0}
    cookie_map = table.cookie_map
    if cookie_map is not None:
        gone = cookie_map.isin(ids).to_numpy(dtype=bool)
        removed["cookies"] = int(gone.sum())
        cookie_map = cookie_map.loc[~gone]
    if removed["features"] or removed["cookies"]:
        summary = dict(table.summary)
        summary["erased_after_build"] = summary.get("erased_after_build", 0) + removed["features"]
        bundle.features = replace(
            table,
            frame=table.frame.loc[keep],
            hour_of_week=table.hour_of_week[keep],
            cookie_map=cookie_map,
            summary=summary,
        )
    if bundle.scores is not None:
        hit = bundle.scores.index.isin(ids)
        removed["scores"] = int(hit.sum())
        if hit.any():
            bundle.scores = bundle.scores.loc[~hit]
    if bundle.send_time_model is not None:
        model = bundle.send_time_model
        hit = model.profile_ids_.isin(ids)
        removed["send_time"] = int(hit.sum())
        if hit.any():
            model.take_profiles(np.flatnonzero(~hit))
    if bundle.lookalike_model is not None:
        model = bundle.lookalike_model
        removed["lookalike"] = int(model.forget(ids))
        if len(model.index_.removed_):  # an index type that only masks: rebuild without them
            live = np.flatnonzero(~model.removed_)
            model.index_ = model._new_index().fit(model.vectors_[live], ids=live)
    return removed


def forget(
    workdir: str | Path, profile_ids: Iterable[str], bundle: ModelBundle | None = None
) -> ForgetReport:
    """Forget profiles everywhere in a workdir; durable before anything else happens.

    1. The ids go on the erasure list (fsync'ed), which every later ``train`` applies.
    2. ``bundle`` (a loaded bundle serving requests), if given, stops answering for them at
       once (:meth:`ModelBundle.forget`).
    3. The live bundle on disk is rewritten without them (features, cookie map, scores,
       send-time curves, lookalike vectors and index) and re-published as a new version;
       every older version is deleted, since it still holds them. Other service workers pick
       the new version up through the ``bundle`` pointer.
    4. Their events are removed from the workdir's event store and quarantine files, and they
       leave every stored campaign (:mod:`dmp_ml.campaigns`).
    5. Every promoted BentoML model holding them is replaced by a scrubbed version
       (:func:`scrub_bento_models`).

    What remains outside the workdir's bundles and event store is listed in ``remains``.
    """
    from dmp_ml import store

    workdir = Path(workdir)
    ids = clean_ids(profile_ids)
    if not ids:
        raise RequestError("profile_ids", "no profile ids given")
    newly = add_to_erasure_list(workdir, ids)
    if bundle is not None:
        bundle.forget(ids)
    removed: dict[str, int] = {}
    version = None
    deleted: list[str] = []
    cookies: set[str] = set()
    with store.workdir_lock(workdir):
        try:
            private = load_bundle(workdir)
        except BundleError:
            private = None
        if private is not None:
            cookie_map = private.features.cookie_map
            if cookie_map is not None:
                cookies |= set(cookie_map.index[cookie_map.isin(ids).to_numpy(bool)].astype(str))
            removed = remove_profiles(private, ids)
            if any(removed.values()):
                erasures = int(private.manifest.get("erasure", {}).get("profiles_removed", 0))
                path = store.republish(
                    private,
                    workdir,
                    tag="forget",
                    drop_ids=ids,
                    manifest_update={
                        "erasure": {
                            "profiles_removed": erasures + removed.get("features", 0),
                            "last_applied_at": pd.Timestamp.now(tz="UTC").isoformat(),
                        }
                    },
                )
                version = private.version
            else:
                path = private.path
                version = private.version
            deleted = store.delete_other_versions(workdir, keep=path)
        events_removed, cookies = store.purge_event_files(workdir, ids, cookies)
        # their devices too: with the links purged, a later cookie-only event must not come
        # back as an anonymous profile (identity treats ``anon:<cookie>`` as erased)
        anon = [f"{store.ANON_PREFIX}{c}" for c in sorted(cookies)]
        cookies_erased = add_to_erasure_list(workdir, anon) if anon else 0
        replaced, unchecked = scrub_bento_models([*ids, *anon])
        from dmp_ml.campaigns import forget_in_campaigns

        in_campaigns = forget_in_campaigns(workdir, [*ids, *anon])
    remains = list(REMAINS)
    if unchecked:
        remains.append(
            f"Promoted BentoML models that could not be read ({', '.join(unchecked)}) may still "
            "hold them: delete them with `bentoml models delete`."
        )
    report = ForgetReport(
        requested=len(ids),
        newly_erased=newly,
        in_bundle=removed.get("features", 0) if removed else 0,
        removed=removed,
        bundle_version=version,
        deleted_versions=deleted,
        events_removed=events_removed,
        cookies_erased=cookies_erased,
        bento_models_replaced=replaced,
        remains=remains,
        campaign_members_removed=in_campaigns,
    )
    logger.info(
        "forgot %d profiles (%d new on the erasure list, %d in the bundle); bundle %s",
        len(ids),
        newly,
        report.in_bundle,
        version,
    )
    return report


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
    bentoml = bentoml_quiet()
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
            index = read_features_index(Path(model.path) / BENTO_BUNDLE_DIR)
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


def _rewrite(model: Any, ids: list[str], name: str) -> str:
    """Store ``model`` again without ``ids`` (verified), delete the old version; the new tag."""
    from dmp_ml.store import new_version, write_bundle_files

    bentoml = bentoml_quiet()

    bundle = load_bundle(Path(model.path) / BENTO_BUNDLE_DIR, n_threads=1)
    remove_profiles(bundle, ids)
    version = new_version("forget")
    labels: dict[str, Any] = {**model.info.labels, "bundle_version": version}
    labels["parent"] = str(model.tag)
    with bentoml.models.create(name, labels=labels, metadata=model.info.metadata) as new:
        write_bundle_files(
            bundle,
            Path(new.path) / BENTO_BUNDLE_DIR,
            version=version,
            manifest_update={},
            drop_ids=ids,
        )
    try:
        read_manifest(bento_bundle_path(str(new.tag)), verify=True)
    except BundleError:
        bentoml.models.delete(new.tag)
        raise
    bentoml.models.delete(model.tag)
    logger.info("BentoML model %s replaced by %s, without the profiles", model.tag, new.tag)
    return str(new.tag)


def apply_erasure_list(workdir: str | Path) -> ForgetReport | None:
    """Re-apply the whole erasure list to the live bundle if it still holds any listed id.

    For the end of ``train`` (an erasure that landed while it ran) and service start-up.
    """
    erased = read_erasure_list(workdir)
    if not erased:
        return None
    try:
        live = load_bundle(workdir)
    except BundleError:
        return None
    present = set(live.features.frame.index[live.features.frame.index.isin(list(erased))])
    if live.scores is not None:
        present |= set(live.scores.index[live.scores.index.isin(list(erased))])
    if not present:
        return None
    return forget(workdir, sorted(present))
