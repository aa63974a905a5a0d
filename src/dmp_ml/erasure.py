"""The right to be forgotten: the erasure list and :func:`forget` across every store.

The erasure list lives in ``<workdir>/erasure.jsonl``, one JSON string per line (so an id
round-trips whatever it holds), append-only, applied by every later train (and refresh); an
old ``erasure.txt`` is read too and migrated on the next write. It holds the ids themselves
(a suppression list cannot work without them): the profile ids, and ``anon:<cookie_id>`` for
the devices linked to them, and nothing else about the person.

:func:`forget` puts ids on the list (durable first), removes the profiles from a loaded bundle
at once, rewrites and re-publishes the live bundle without them (deleting older versions),
purges their events from the workdir's event store and quarantine files, and replaces promoted
BentoML models that hold them. What remains outside (MLflow history, files already exported,
Bentos already built) is listed in :data:`REMAINS`.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from filelock import FileLock

from dmp_ml import bundle as bundle_io
from dmp_ml import layout
from dmp_ml.bundle import (
    BENTO_BUNDLE_DIR,
    BENTO_MODEL_NAME,
    bento_bundle_path,
    bentoml_quiet,
    load_bundle,
    read_features_index,
    read_manifest,
)
from dmp_ml.errors import BundleError, RequestError, StorageError, storage_errors_in
from dmp_ml.files import fsync_dir

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle

logger = logging.getLogger(__name__)

ERASURE_FILE = layout.ERASURE_FILE
"""The erasure list: one JSON string per line (ASCII, so any id round-trips, separators too)."""
LEGACY_ERASURE_FILE = layout.LEGACY_ERASURE_FILE
"""The list's former format (one id per line); read, then migrated on the next write."""


def _read_legacy(path: Path) -> set[str]:
    """Ids of an old ``erasure.txt``: each line whole *and* split at every Unicode line break.

    The old reader split at ``\u2028``/``\x85``/...: the fragments were honoured as erased
    ids, so they stay erased; the whole line is kept too (what was asked to be forgotten).
    """
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    ids = {line.strip() for line in text.split("\n")}
    ids |= {line.strip() for line in text.splitlines()}
    return {i for i in ids if i}


def _read_jsonl(path: Path) -> set[str]:
    text = path.read_text(encoding="ascii", errors="replace")
    lines = text.split("\n")
    ids = set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):  # a torn last append (no newline): never acknowledged
                logger.warning("%s: ignoring an unfinished last line", path)
                continue
            raise StorageError(path, f"line {n} is not a JSON string ({exc.msg})") from exc
        ids.add(str(value))
    return ids


def read_erasure_list(workdir: str | Path) -> frozenset[str]:
    """Every id on the workdir's erasure list (empty when there is none).

    Reads ``erasure.jsonl`` and, until it is migrated, the old ``erasure.txt``.
    """
    workdir = Path(workdir)
    ids: set[str] = set()
    path = layout.erasure_file(workdir)
    if path.exists():
        ids |= _read_jsonl(path)
    legacy = layout.legacy_erasure_file(workdir)
    if legacy.exists():
        ids |= _read_legacy(legacy)
    return frozenset(ids)


def erasure_stamp(workdir: str | Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, legacy size) of the erasure list: changes whenever anyone forgets."""
    workdir = Path(workdir)
    try:
        stat = layout.erasure_file(workdir).stat()
        current = (stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:
        current = (0, 0)
    try:
        legacy = layout.legacy_erasure_file(workdir).stat().st_size
    except FileNotFoundError:
        legacy = -1
    if current == (0, 0) and legacy < 0:
        return None
    return (*current, legacy)


def _line(profile_id: str) -> str:
    return json.dumps(profile_id, ensure_ascii=True) + "\n"


def add_to_erasure_list(workdir: str | Path, profile_ids: Iterable[str]) -> int:
    """Append ids not yet on the list; return how many were new. Durable before it returns.

    An old ``erasure.txt`` is first migrated into ``erasure.jsonl`` (written and fsynced
    before the old file is removed, so no erased id is ever lost).
    """
    workdir = Path(workdir)
    path = layout.erasure_file(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with FileLock(layout.erasure_lock(workdir)):
        known = read_erasure_list(workdir)
        legacy = layout.legacy_erasure_file(workdir)
        if legacy.exists():
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            with tmp.open("w", encoding="ascii") as handle:
                handle.write("".join(_line(p) for p in sorted(known)))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            fsync_dir(workdir)
            legacy.unlink()
            logger.info("erasure list migrated to %s (%d ids)", path.name, len(known))
        new = sorted({str(p).strip() for p in profile_ids if str(p).strip()} - known)
        if new:
            _drop_torn_tail(path)
            with path.open("a", encoding="ascii") as handle:
                handle.write("".join(_line(p) for p in new))
                handle.flush()
                os.fsync(handle.fileno())
    return len(new)


def _drop_torn_tail(path: Path) -> None:
    """Cut an unfinished last line (an append that failed, e.g. on a full disk) before the next.

    Such a line was never acknowledged; appending after it would glue two ids together.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------- forgetting
# (below: the right to be forgotten across every store; see forget())

MAX_ID_LENGTH = 256
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})  # controls (\n \r \t \x85 ...), U+2028/9


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
    model that held them to its scrubbed replacement; ``temporary_removed`` the half-written
    bundles and files of killed writers deleted. ``not_scrubbed`` maps each store that may
    still hold them but could not be rewritten (an unreadable live bundle, an unreadable
    event file, a promoted model that cannot be read) to why: the erasure list still applies
    to it (every answer, every later load, train and forget), but the bytes are still there
    until it is repaired (see ``complete``).
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
    temporary_removed: list[str] = field(default_factory=list)
    not_scrubbed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """False when some store that may hold the profiles could not be scrubbed."""
        return not self.not_scrubbed

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "complete" if self.complete else "incomplete",
            "not_scrubbed": dict(self.not_scrubbed),
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
            "temporary_removed": list(self.temporary_removed),
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
    """Distinct, non-empty ids (outer spaces stripped) in the order given.

    RequestError (naming the item) for an id that is not text, too long, or holds a control
    or line/paragraph separator character: such an id would read back as several elsewhere.
    """
    if isinstance(profile_ids, str | bytes):
        raise RequestError(field_name, "expected a list of ids, got one string")
    out: dict[str, None] = {}
    for i, value in enumerate(profile_ids):
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise RequestError(f"{field_name}[{i}]", f"must be text, got {type(value).__name__}")
        text = str(value).strip(" ")
        if not text:
            continue
        if len(text) > MAX_ID_LENGTH:
            raise RequestError(f"{field_name}[{i}]", f"longer than {MAX_ID_LENGTH} characters")
        bad = next((c for c in text if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
        if bad is not None:
            raise RequestError(
                f"{field_name}[{i}]",
                f"contains the control or line-separator character U+{ord(bad):04X}; "
                "an id is one line of printable text",
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
            data=table.frame.loc[keep],
            hour_of_week=table.hour_of_week[keep],
            links=cookie_map,
            summary=summary,
        )
    if bundle.scores is not None:
        hit = bundle.scores.index.isin(ids)
        removed["scores"] = int(hit.sum())
        if hit.any():
            bundle.scores = bundle.scores.loc[~hit]
    for name, model in bundle.models.items():  # every model drops every trace it holds
        removed[name] = int(model.forget(ids))
    return removed


@storage_errors_in(lambda workdir, *_, **__: workdir)  # a full or read-only disk: one typed error
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

    Temporary bundles and half-written event files left by killed writers are deleted first.
    A store that cannot be rewritten (an unreadable live bundle, ...) is named in
    ``not_scrubbed`` (the report is then not ``complete``); the next forget or train that can
    read the live bundle removes every listed id it still holds. What remains outside the
    workdir's bundles and event store is listed in ``remains``.
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
    not_scrubbed: dict[str, str] = {}
    with store.workdir_lock(workdir):
        temporary = bundle_io.remove_abandoned(workdir)
        temporary += store.remove_stale_temp_files(workdir)
        try:
            private = load_bundle(workdir)
        except BundleError as exc:
            private = None
            live = _live_path_or_none(workdir)
            if live is not None:  # a bundle is there, but unreadable: it may hold them
                not_scrubbed[_rel(live, workdir)] = str(exc)
                logger.error("forget: the live bundle cannot be scrubbed: %s", exc)
                if live.is_dir():  # older versions hold them too, and they are readable
                    deleted = store.delete_other_versions(workdir, keep=live)
        if private is not None:
            # with the ids, any listed id the bundle still holds (an earlier forget that
            # found it unreadable): the first readable load scrubs it
            drop = sorted(set(ids) | set(erased_in(private, read_erasure_list(workdir))))
            cookie_map = private.features.cookie_map
            if cookie_map is not None:
                cookies |= set(cookie_map.index[cookie_map.isin(drop).to_numpy(bool)].astype(str))
            removed = remove_profiles(private, drop)
            # a delta version is always compacted: its base may hold rows of a profile that a
            # delta removed (folded into another), which no loaded answer shows any more
            if any(removed.values()) or private.deltas:
                erasures = int(private.manifest.get("erasure", {}).get("profiles_removed", 0))
                path = store.republish(
                    private,
                    workdir,
                    tag="forget",
                    drop_ids=drop,
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
        events_removed, cookies, unreadable = store.purge_event_files(workdir, ids, cookies)
        for rel, why in unreadable.items():
            not_scrubbed[rel] = f"unreadable: {why}"
        # their devices too: with the links purged, a later cookie-only event must not come
        # back as an anonymous profile (identity treats ``anon:<cookie>`` as erased)
        anon = [f"{store.ANON_PREFIX}{c}" for c in sorted(cookies)]
        cookies_erased = add_to_erasure_list(workdir, anon) if anon else 0
        replaced, unchecked = scrub_bento_models([*ids, *anon])
        from dmp_ml.campaigns import forget_in_campaigns

        in_campaigns = forget_in_campaigns(workdir, [*ids, *anon])
    remains = list(REMAINS)
    for tag in unchecked:
        not_scrubbed[f"bentoml model {tag}"] = (
            "cannot be read; delete it with bentoml models delete"
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
        temporary_removed=temporary,
        not_scrubbed=not_scrubbed,
    )
    logger.info(
        "forgot %d profiles (%d new on the erasure list, %d in the bundle); bundle %s%s",
        len(ids),
        newly,
        report.in_bundle,
        version,
        "" if report.complete else f"; NOT scrubbed: {', '.join(not_scrubbed)}",
    )
    return report


def _live_path_or_none(workdir: Path) -> Path | None:
    try:
        return bundle_io.live_bundle_path(workdir)
    except BundleError:
        return None


def _rel(path: Path, workdir: Path) -> str:
    try:
        return str(path.resolve().relative_to(workdir.resolve()))
    except ValueError:
        return str(path)


def erased_in(bundle: ModelBundle, erased: Iterable[str]) -> list[str]:
    """The ids of ``erased`` that ``bundle``'s files still hold (features or scores)."""
    erased = list(erased)
    if not erased:
        return []
    index = bundle.features.profile_ids
    present = set(index[index.isin(erased)])
    if bundle.scores is not None:
        present |= set(bundle.scores.index[bundle.scores.index.isin(erased)])
    return sorted(present)


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
    present = erased_in(live, erased)
    if not present:
        return None
    return forget(workdir, present)
