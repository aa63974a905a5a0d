"""Workdir state shared by erasure, refresh and activation: lock, event store, re-publishing.

The event store (``W/events``, see :mod:`dmp_ml.layout`) holds the events the live training
used (``base.parquet``, see :func:`record_training_events`), which incoming batches it
already holds, the validated batches applied since by near-real-time refresh and the rows of
them that failed the contract. Writers (forget, refresh) serialise on :func:`workdir_lock`.

The event store holds contract frames; it is what a refresh recomputes profiles from and what
the next ``train`` adds to its input (:func:`merge_incoming`), so no event applied to the live
service is lost at the next retrain. Forgotten profiles are purged from every file here
(:func:`purge_event_files`). The base events have an index by profile and cookie
(:mod:`dmp_ml.event_index`) through which a refresh reads only the touched profiles' rows;
whoever rewrites ``base.parquet`` drops it first (it holds the same events).

:func:`republish` writes a loaded, edited :class:`~dmp_ml.bundle.ModelBundle` as a new bundle
version through :func:`dmp_ml.bundle.write_bundle` and the bundle codec
(:func:`dmp_ml.bundle.save_bundle`): checksums stay valid, the pointer swap is atomic, and a
failure leaves the previous bundle live.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from dmp_ml import bundle as bundle_io
from dmp_ml import layout
from dmp_ml.codes import as_categorical, held_as_dictionary
from dmp_ml.contract import EVENT_COLUMNS
from dmp_ml.delta import write_delta
from dmp_ml.errors import BundleError
from dmp_ml.event_index import EventIndex, build_index, drop_index
from dmp_ml.files import write_json_atomic
from dmp_ml.manifest import VERIFIED
from dmp_ml.rows import distinct, is_dictionary

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle
    from dmp_ml.delta import Delta

logger = logging.getLogger(__name__)
_STRING = pd.StringDtype("pyarrow", na_value=pd.NA)
"""The contract's text dtype (what ``pd.array(values, dtype="string")`` makes)."""

_YOUNG_SECONDS = 120.0  # a spool file this new may be mid-write (accepting takes no lock)
ANON_PREFIX = "anon:"


# --------------------------------------------------------------------------- workdir basics


def bundle_workdir(bundle: ModelBundle) -> Path:
    """The workdir a loaded bundle belongs to (``W`` of ``W/bundles/<version>``)."""
    path = Path(bundle.path).resolve()
    if path.parent.name == layout.VERSIONS_DIR:
        return path.parent.parent
    raise BundleError(f"bundle {path} is not inside a workdir's {layout.VERSIONS_DIR}/ directory")


@contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[None]:
    """Exclusive lock on the workdir for writers (forget, refresh); blocks until it is free."""
    path = layout.lock_file(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


@contextmanager
def lock_if_free(path: Path) -> Iterator[bool]:
    """Hold the lock file ``path`` and yield True, or yield False at once when another
    process holds it."""
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def compaction_lock(workdir: str | Path) -> AbstractContextManager[bool]:
    """True when this process is now the workdir's one compaction, False if another is (a
    compaction writes the whole population: two at once would waste it)."""
    return lock_if_free(layout.compaction_lock(workdir))


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` via a temporary file, fsync and rename (no index).

    Text held as dictionaries (a train's log, see :func:`dmp_ml.contract.held_text`) is
    written as ``string``, the file its decoded frame gives, decoded one row group at a time:
    the whole log is never spelled out as text beside its dictionaries.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if any(is_dictionary(dtype) for dtype in frame.dtypes):
            _write_decoded(frame, tmp)
        else:
            frame.to_parquet(tmp, index=False)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_ROW_GROUP_ROWS = 1024 * 1024
"""The rows of a Parquet row group as ``DataFrame.to_parquet`` writes them (Arrow's default)."""


def _write_decoded(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` with its dictionary columns decoded, written to ``path`` as
    ``frame.to_parquet(path, index=False)`` would write it, one row group at a time."""
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, max(len(frame), 1), _ROW_GROUP_ROWS):
            part = frame.iloc[start : start + _ROW_GROUP_ROWS]
            decoded = {
                c: _decoded(part[c].array.__arrow_array__())
                if is_dictionary(part[c].dtype)
                else part[c]
                for c in part.columns
            }
            table = pa.Table.from_pandas(pd.DataFrame(decoded), preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


# --------------------------------------------------------------------------- event store


def contract_frame(frame: pd.DataFrame, *, dictionaries: bool = False) -> pd.DataFrame:
    """The contract's columns in order, with its dtypes (absent columns are all missing).

    A text column that is pandas ``string`` already is taken as it is, not spelled out as
    Python strings and read back (a train's whole log: millions of objects per column). A
    text column held as a dictionary (:func:`dmp_ml.contract.held_text`) is decoded in Arrow
    to ``string``, the type the event store writes, or kept as it is with ``dictionaries``.
    """
    n = len(frame)
    # the columns gathered and framed once, without a copy: a train's log is held beside them
    columns: dict[str, Any] = {}
    for column in EVENT_COLUMNS:
        given = frame[column] if column in frame.columns else None
        if column == "event_time":
            if given is not None and _zoned_ns(given.dtype):  # in UTC as a view: no copy
                columns[column] = given.array.tz_convert("UTC")
            else:  # from the Series: to_numpy() boxes every tz-aware time
                times = given if given is not None else [None] * n
                columns[column] = pd.DatetimeIndex(pd.to_datetime(times, utc=True)).array
        elif given is not None and column != "value" and given.dtype == _STRING:
            columns[column] = given.array  # already the contract's text: no copy
        elif given is not None and is_dictionary(given.dtype):
            held = given.array
            columns[column] = held if dictionaries else _decoded(held.__arrow_array__())
        elif column == "value":
            if given is None:
                columns[column] = np.full(n, np.nan)
            elif given.dtype == np.float64:
                columns[column] = given.to_numpy()
            else:
                numbers = pd.to_numeric(pd.Series(given.to_numpy()), errors="coerce")
                columns[column] = numbers.astype("float64").to_numpy()
        else:
            columns[column] = (
                pd.array(given.to_numpy(), dtype="string")
                if given is not None
                else pd.array([pd.NA] * n, dtype="string")
            )
    return pd.DataFrame(columns, index=pd.RangeIndex(n), copy=False)


def _zoned_ns(dtype: object) -> bool:
    """Whether ``dtype`` is nanosecond times with a time zone (read in UTC as they are)."""
    return isinstance(dtype, pd.DatetimeTZDtype) and dtype.unit == "ns"


def _decoded(values: pa.ChunkedArray) -> pd.arrays.ArrowStringArray:
    """Dictionary-encoded text as pandas ``string``, decoded in Arrow (no Python object)."""
    return pd.array(pc.cast(values, pa.large_string()), dtype=_STRING)


def row_keys(events: pd.DataFrame) -> np.ndarray:
    """One uint64 hash per event over the contract columns (exact-duplicate detection)."""
    frame = contract_frame(events, dictionaries=True)
    frame["event_time"] = frame["event_time"].dt.as_unit("ns")
    for column in frame.columns:  # hashed on their distinct values, equal to their text's
        if is_dictionary(frame[column].dtype):
            frame[column] = as_categorical(frame[column].array.__arrow_array__())
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def repeated_rows(events: pd.DataFrame, stored: pd.DataFrame) -> np.ndarray:
    """Which rows of ``events`` repeat a row of ``stored`` exactly (by :func:`row_keys`), shape
    (len(events),): the stored keys sorted and searched (``np.isin`` hashes them first, several
    times slower on the tens of thousands of events a refresh reads)."""
    keys = row_keys(events)
    if not len(stored):
        return np.zeros(len(keys), dtype=bool)
    held = np.sort(row_keys(stored))
    return held[np.minimum(np.searchsorted(held, keys), len(held) - 1)] == keys


def _read_state(workdir: str | Path) -> dict[str, Any]:
    path = layout.events_state(workdir)
    if not path.exists():
        return {"merged": []}
    return json.loads(path.read_text(encoding="utf-8"))


def incoming_batches(workdir: str | Path) -> list[Path]:
    """Every stored refresh batch, oldest first (names start with their UTC time)."""
    folder = layout.incoming_dir(workdir)
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def read_events_file(path: Path) -> pd.DataFrame:
    """A stored contract frame (string columns as pandas ``string``)."""
    frame = pd.read_parquet(path)
    return contract_frame(frame) if len(frame.columns) else contract_frame(pd.DataFrame())


def merge_incoming(events: pd.DataFrame, workdir: str | Path) -> pd.DataFrame:
    """``events`` plus the stored refresh batches' rows it does not already contain.

    Call it in ``train`` before building anything, so that events applied through the
    near-real-time path are never lost at the next retrain, whether or not the new export
    already contains them (exact duplicates are not added twice).
    """
    batches = incoming_batches(workdir)
    if not batches:
        return events
    extra = pd.concat([read_events_file(p) for p in batches], ignore_index=True)
    known = np.isin(row_keys(extra), row_keys(events))
    extra = extra.loc[~known]
    if extra.empty:
        return events
    logger.info("train: adding %d events from %d refresh batches", len(extra), len(batches))
    merged = _joined(contract_frame(events, dictionaries=True), extra)
    return merged.sort_values("event_time", kind="stable", ignore_index=True)


def _joined(events: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """``extra``'s rows after those of ``events`` (both contract frames): a text column that
    ``events`` holds as a dictionary stays one, ``extra``'s text encoded into it (``pd.concat``
    would spell both out as Python objects); the log's text is never decoded."""
    kind = pa.dictionary(pa.int32(), pa.string())  # a type every part can take
    columns = {}
    for column in events.columns:
        if not is_dictionary(events[column].dtype):
            columns[column] = pd.concat([events[column], extra[column]], ignore_index=True)
            continue
        added = held_as_dictionary(extra[column].array.__arrow_array__())
        parts = [*events[column].array.__arrow_array__().chunks, *added.chunks]
        held = held_as_dictionary(pa.chunked_array([c.cast(kind) for c in parts], type=kind))
        columns[column] = pd.Series(pd.arrays.ArrowExtensionArray(held))
    return pd.DataFrame(columns)


def record_training_events(
    workdir: str | Path,
    events: pd.DataFrame,
    erased: Iterable[str] = (),
    bundle_version: str | None = None,
) -> Path:
    """Keep the events a training used as the refresh history (``W/events/base.parquet``).

    Rows of erased profiles are left out. An incoming batch counts as merged when all of its
    rows are in ``events`` (so a batch stored while the training ran stays in the history of
    the next refresh, which also re-applies it to the new bundle). Call it in ``train`` after
    the steps, just before the bundle is published, with the version being published (a
    refresh warns when the live bundle comes from another training).
    """
    # text held as dictionaries stays so: the log is decoded a row group at a time, written
    frame = purge_events(contract_frame(events, dictionaries=True), erased)
    with workdir_lock(workdir):  # forget and refresh rewrite these files under it too
        merged: list[str] = []
        batches = incoming_batches(workdir)
        if batches:  # a hash per event (and its temporaries) only when batches are stored
            keys = row_keys(frame)
            merged = [
                batch.name
                for batch in batches
                if np.isin(row_keys(read_events_file(batch)), keys).all()
            ]
        drop_index(workdir)  # the old index holds the old events
        path = write_parquet_atomic(frame, layout.base_events(workdir))
        write_json_atomic(
            layout.events_state(workdir), {"merged": merged, "bundle_version": bundle_version}
        )
        build_index(workdir)  # refresh reads the touched profiles' events through it
    return path


def remove_stale_temp_files(workdir: str | Path) -> list[str]:
    """Delete half-written files a killed writer left in the event store; call under the lock.

    Every writer of ``W/events`` holds :func:`workdir_lock` (but accepting a batch into the
    spool, whose temporary files are left alone for two minutes), so under it any ``.*``
    file there belongs to a writer that died: it may hold events of a profile (even an
    erased one) and is never read. Returns the paths removed.
    """
    root = layout.events_dir(workdir)
    if not root.exists():
        return []
    spool = layout.spool_dir(workdir)
    now = time.time()
    stale = [
        p
        for p in root.rglob(".*")
        if p.is_file()
        and not p.is_symlink()
        and not (p.parent == spool and now - p.stat().st_mtime < _YOUNG_SECONDS)
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.warning("removed %d half-written files under %s", len(stale), root)
    return [str(p.relative_to(workdir)) for p in stale]


def training_version(manifest: Mapping[str, Any]) -> str:
    """The version of the ``train`` run a bundle descends from (itself for a train bundle)."""
    return str(manifest.get("train_version") or manifest.get("bundle_version"))


def history_version(workdir: str | Path) -> str | None:
    """The bundle version the recorded base events belong to (None when not recorded)."""
    return _read_state(workdir).get("bundle_version")


def unmerged_batches(workdir: str | Path) -> list[Path]:
    """Stored refresh batches the base events do not hold yet, oldest first."""
    merged = set(_read_state(workdir).get("merged", []))
    return [p for p in incoming_batches(workdir) if p.name not in merged]


def history_events(workdir: str | Path) -> pd.DataFrame:
    """The base events plus the refresh batches not yet merged into them."""
    base = layout.base_events(workdir)
    if not base.exists():
        raise BundleError(
            f"no event history in {layout.events_dir(workdir)}: a near-real-time refresh needs the "
            "training events (train records them with dmp_ml.store.record_training_events)"
        )
    parts = [read_events_file(base)]
    parts += [read_events_file(p) for p in unmerged_batches(workdir)]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def history_files(workdir: str | Path) -> list[Path]:
    """The files of the event history: the base events, then the unmerged refresh batches."""
    base = layout.base_events(workdir)
    if not base.exists():
        raise BundleError(
            f"no event history in {layout.events_dir(workdir)}: a near-real-time refresh needs the "
            "training events (train records them with dmp_ml.store.record_training_events)"
        )
    return [base, *unmerged_batches(workdir)]


def history_of(
    workdir: str | Path,
    profiles: Iterable[str] = (),
    cookies: Iterable[str] = (),
    columns: list[str] | None = None,
    files: list[Path] | None = None,
    index: EventIndex | None = None,
) -> pd.DataFrame:
    """The stored events of ``profiles`` or of ``cookies`` (the history of
    :func:`history_events`), read file by file with the filter applied as each is read, so
    memory holds the matches, not the history. With ``columns``, only those (as stored);
    ``files``: :func:`history_files` listed once for several reads of the same history;
    ``index``: the base events' index (:func:`dmp_ml.event_index.ensure_index`), through
    which only the matching rows of the base events are read (the same rows, in the same
    order, as filtering the file)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted_p = pa.array([str(p) for p in profiles], type=pa.string())
    wanted_c = pa.array([str(c) for c in cookies], type=pa.string())
    base = layout.base_events(workdir)
    parts = []
    for path in history_files(workdir) if files is None else files:
        if index is not None and path == base:
            if len(wanted_p) or len(wanted_c):
                both = np.concatenate(
                    [
                        index.rows("profile_id", wanted_p.to_pylist()),
                        index.rows("cookie_id", wanted_c.to_pylist()),
                    ]
                )
                rows = distinct(both, in_place=True)  # np.union1d hashes them first
                parts.append(index.take(rows, columns).to_pandas())
            continue
        names = set(pq.read_schema(path).names)
        test = None
        for column, values in (("profile_id", wanted_p), ("cookie_id", wanted_c)):
            if len(values) and column in names:
                hit = pc.field(column).isin(values)
                test = hit if test is None else test | hit
        if test is None:
            continue
        keep = [c for c in columns if c in names] if columns is not None else None
        parts.append(pq.read_table(path, columns=keep, filters=test).to_pandas())
    if columns is not None:
        empty = pd.DataFrame({c: pd.Series([], dtype="string") for c in columns})
        frame = pd.concat(parts, ignore_index=True) if parts else empty
        return frame.astype({c: "string" for c in columns if c in ("profile_id", "cookie_id")})
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return contract_frame(frame)


def new_batch_name(now: pd.Timestamp) -> str:
    """A sortable, unique batch name: UTC time to the microsecond and a random suffix."""
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond:06d}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- purging


def linked_cookies(events: pd.DataFrame, profile_ids: Iterable[str]) -> set[str]:
    """Cookies seen together with any of ``profile_ids`` (and the cookies of ``anon:`` ids)."""
    ids = {str(p) for p in profile_ids}
    cookies = {p[len(ANON_PREFIX) :] for p in ids if p.startswith(ANON_PREFIX)}
    if "profile_id" in events.columns and "cookie_id" in events.columns and ids:
        hit = events["profile_id"].isin(list(ids)).fillna(False).to_numpy(bool)
        cookies |= set(events.loc[hit, "cookie_id"].dropna().astype(str))
    return cookies


def purge_mask(
    events: pd.DataFrame, profile_ids: Iterable[str], cookies: Iterable[str] | None = None
) -> np.ndarray:
    """Rows that belong to the profiles: theirs, or cookie-only rows of their cookies.

    A cookie shared with other profiles is purged too: its cookie-only rows could be the
    forgotten person's, and no one else's features use them (see :mod:`dmp_ml.identity`).
    """
    ids = [str(p) for p in profile_ids]
    if not ids or len(events) == 0:
        return np.zeros(len(events), dtype=bool)
    cookie_set = linked_cookies(events, ids) if cookies is None else set(cookies)
    has_profile = "profile_id" in events.columns
    mask = np.zeros(len(events), dtype=bool)
    if has_profile:
        mask |= events["profile_id"].astype("string").isin(ids).fillna(False).to_numpy(bool)
    if "cookie_id" in events.columns and cookie_set:
        in_cookie = (
            events["cookie_id"].astype("string").isin(list(cookie_set)).fillna(False).to_numpy(bool)
        )
        cookie_only = (
            events["profile_id"].isna().to_numpy(bool) if has_profile else np.ones_like(mask)
        )
        mask |= in_cookie & cookie_only
    return mask


def purge_events(events: pd.DataFrame, erased: Iterable[str]) -> pd.DataFrame:
    """``events`` without the rows of the erased profiles (see :func:`purge_mask`)."""
    erased = list(erased)
    if not erased:
        return events
    mask = purge_mask(events, erased)
    return events.loc[~mask].reset_index(drop=True) if mask.any() else events


def purge_event_files(
    workdir: str | Path, profile_ids: Iterable[str], cookies: Iterable[str] = ()
) -> tuple[dict[str, int], set[str], dict[str, str]]:
    """Remove the profiles' rows from every event file of the workdir.

    Covers the event store (base, incoming batches, spooled batches, their quarantine) and
    the training quarantine files ``W/quarantine/*.parquet`` (text columns; matched the same
    way).
    Returns the rows removed per file, every cookie linked to the profiles (``cookies``
    plus those found in the files), and the files that could not be read (so not scrubbed),
    with why.
    """
    workdir = Path(workdir)
    ids = [str(p) for p in profile_ids]
    files = []
    base = layout.base_events(workdir)
    if base.exists():
        files.append(base)
    files += incoming_batches(workdir)
    for folder in (
        layout.spool_dir(workdir),
        layout.events_quarantine_dir(workdir),
        layout.quarantine_dir(workdir),
    ):
        if folder.exists():
            files += sorted(folder.glob("*.parquet"))
    # cookies linked to the profiles anywhere in the store
    found = {p[len(ANON_PREFIX) :] for p in ids if p.startswith(ANON_PREFIX)} | set(cookies)
    frames: dict[Path, pd.DataFrame] = {}
    unreadable: dict[str, str] = {}
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # e.g. truncated by a killed writer
            unreadable[str(path.relative_to(workdir))] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        frames[path] = frame
        found |= linked_cookies(frame, ids)
    removed: dict[str, int] = {}
    for path, frame in frames.items():
        mask = purge_mask(frame, ids, found)
        if mask.any():
            if path == base:
                drop_index(workdir)  # it holds the base's events; refresh rebuilds it
            write_parquet_atomic(frame.loc[~mask].reset_index(drop=True), path)
            removed[str(path.relative_to(workdir))] = int(mask.sum())
    return removed, found, unreadable


# --------------------------------------------------------------------------- re-publishing


def new_version(tag: str, now: pd.Timestamp | None = None) -> str:
    """A bundle version name that sorts after any earlier one (time first, like train's)."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond:06d}-{tag}-{uuid.uuid4().hex[:6]}"


def republish(
    bundle: ModelBundle,
    workdir: str | Path,
    *,
    tag: str,
    manifest_update: Mapping[str, Any],
    extra_files: Mapping[str, Callable[[Path], object]] | None = None,
    drop_ids: Iterable[str] = (),
) -> Path:
    """Write the loaded (edited) ``bundle`` as a new live version; return its directory.

    See :func:`write_bundle_files` for what is written. Afterwards ``bundle.path``,
    ``bundle.version`` and ``bundle.manifest`` describe the new version.
    """
    version = new_version(tag)
    with bundle_io.write_bundle(workdir, version) as tmp:
        manifest = write_bundle_files(
            bundle,
            tmp,
            version=version,
            manifest_update=manifest_update,
            extra_files=extra_files,
            drop_ids=drop_ids,
        )
    final = layout.versions_dir(workdir) / version
    bundle.path = final
    bundle.version = version
    bundle.manifest = manifest
    return final


def publish_delta(
    bundle: ModelBundle,
    workdir: str | Path,
    delta: Delta,
    *,
    tag: str,
    manifest_update: Mapping[str, Any],
    extra_files: Mapping[str, Callable[[Path], object]] | None = None,
) -> Path:
    """Publish ``delta`` (the rows a refresh changed) as a new live version over the loaded
    ``bundle``'s base; return its directory.

    The version holds only its manifest, ``delta/`` (:func:`dmp_ml.delta.write_delta`) and
    ``extra_files``; its manifest is ``bundle``'s with ``manifest_update`` and the chain (see
    :data:`dmp_ml.bundle.DELTA_KEY`). ``bundle`` must already hold the delta's rows in memory:
    afterwards its ``path``, ``version``, ``manifest`` and ``deltas`` describe the new version.
    """
    version = new_version(tag)
    info = bundle.manifest.get(bundle_io.DELTA_KEY) or {}
    with bundle_io.write_bundle(workdir, version) as tmp:
        size = write_delta(tmp / layout.DELTA_DIR, delta)
        for rel, writer in dict(extra_files or {}).items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            writer(target)
            size += target.stat().st_size
        base = {k: v for k, v in bundle.manifest.items() if k not in ("files", "format_version")}
        manifest = bundle_io.finish_manifest(
            tmp,
            {
                **base,
                **dict(manifest_update),
                "train_version": training_version(bundle.manifest),
                "bundle_version": version,
                "parent_version": bundle.version,
                "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
                bundle_io.DELTA_KEY: _chain_entry(
                    Path(bundle.base_path).resolve().name,
                    [Path(d).name for d in bundle.deltas] + [version],
                    int(info.get("bytes", 0)) + size,
                ),
            },
        )
    final = layout.versions_dir(workdir) / version
    bundle.path = final
    bundle.version = version
    bundle.manifest = manifest
    bundle.deltas.append(final)
    return final


def _chain_entry(base: str, chain: list[str], size: int) -> dict[str, Any]:
    """A delta version's :data:`~dmp_ml.bundle.DELTA_KEY` manifest entry: its base, the chain
    of deltas over it up to itself, and the chain's bytes (what compaction limits)."""
    return {"base": base, "chain": list(chain), "bytes": int(size)}


def deltas_since(live: Path, snapshot: ModelBundle) -> list[Path] | None:
    """The delta versions published over ``snapshot`` since it was loaded, oldest first: the
    live version at ``live`` is ``snapshot`` or a delta chain extending its chain. None when
    another writer replaced the base meanwhile (a train, a forget)."""
    if live.name == Path(snapshot.path).name:
        return []
    names = snapshot.newer_deltas(bundle_io.delta_info(live))
    return None if names is None else [live.parent / name for name in names]


def rebase_deltas(workdir: str | Path, base: Path, deltas: list[Path]) -> Path:
    """Publish ``deltas`` (delta versions of another base) again over the full version
    ``base``, oldest first, the last one live; returns it (``base`` when there are none).

    A delta holds whole rows of the profiles it touched, so it means the same over any base
    that holds what its own base held: a compaction's new base. Its files are linked, not
    copied; the caller holds :func:`workdir_lock`.
    """
    chain: list[str] = []
    size = 0
    published = base
    for i, old in enumerate(deltas):
        manifest = json.loads((old / bundle_io.MANIFEST).read_text(encoding="utf-8"))
        version = new_version("refresh")
        with bundle_io.staged_bundle(workdir, version) as staged:
            for item in sorted(old.rglob("*")):
                name = item.name
                if not item.is_file() or name == bundle_io.MANIFEST:
                    continue
                if name.startswith(VERIFIED):
                    continue
                target = staged.path / item.relative_to(old)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(item, target)
                except OSError:
                    shutil.copy2(item, target)
                size += target.stat().st_size
            chain.append(version)
            kept = {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
            bundle_io.finish_manifest(
                staged.path,
                {
                    **kept,
                    "bundle_version": version,
                    "parent_version": published.name,
                    bundle_io.DELTA_KEY: _chain_entry(base.name, chain, size),
                },
            )
            published = staged.publish(live=i == len(deltas) - 1)
    return published


def write_bundle_files(
    bundle: ModelBundle,
    dest: Path,
    *,
    version: str,
    manifest_update: Mapping[str, Any],
    extra_files: Mapping[str, Callable[[Path], object]] | None = None,
    drop_ids: Iterable[str] = (),
) -> dict[str, Any]:
    """Write the loaded (edited) ``bundle`` into the empty directory ``dest``; return its manifest.

    Features, models and scores are written from the objects in memory by the bundle codec
    (:func:`dmp_ml.bundle.save_bundle`); every other file of the bundle directory (contacts,
    consent state, ...) is copied; copied Parquet files with a ``profile_id`` column lose the
    rows of ``drop_ids`` (hashed contacts, refresh records, ...). ``extra_files`` maps a
    relative path to a writer called with its destination. The manifest (checksums
    included) is written last.
    """
    dest.mkdir(parents=True, exist_ok=True)
    extra_files = dict(extra_files or {})
    drop = pd.Index([str(p) for p in drop_ids], dtype="string")
    rewritten = (bundle_io.FEATURES_DIR, bundle_io.SCORES_FILE, layout.DELTA_DIR, *bundle.models)
    # the base's files, each replaced by the newest delta's copy where one has it
    copied: dict[str, Path] = {}
    for source in (Path(bundle.base_path), *map(Path, bundle.deltas)):
        for item in source.rglob("*"):
            if item.is_file():
                copied[str(item.relative_to(source))] = item
    for key in sorted(copied):
        item, rel = copied[key], Path(key)
        if rel.name == bundle_io.MANIFEST or rel.name.startswith(VERIFIED):
            continue
        if any(str(rel) == r or str(rel).startswith(f"{r}/") for r in rewritten):
            continue
        if str(rel) in extra_files:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if len(drop) and item.suffix == ".parquet":
            frame = pd.read_parquet(item)
            if "profile_id" in frame.columns:
                hit = frame["profile_id"].astype("string").isin(drop).to_numpy(bool)
                if hit.any():
                    frame.loc[~hit].reset_index(drop=True).to_parquet(target, index=False)
                    continue
        shutil.copy2(item, target)
    for rel, writer in extra_files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        writer(target)
    base = {
        k: v
        for k, v in bundle.manifest.items()
        if k not in ("files", "format_version", bundle_io.DELTA_KEY)
    }
    return bundle_io.save_bundle(
        dest,
        features=bundle.features,
        models=bundle.models,
        scores=bundle.scores,
        manifest={
            **base,
            **dict(manifest_update),
            "train_version": training_version(bundle.manifest),
            "bundle_version": version,
            "parent_version": bundle.version,
            "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
        },
    )


def delete_other_versions(workdir: str | Path, keep: Path) -> list[str]:
    """Delete every bundle version but ``keep`` and the versions it needs (a delta version's
    base and earlier deltas): after an erasure, old ones hold the data."""
    versions = layout.versions_dir(workdir)
    needed = {Path(keep).resolve().name} | bundle_io.references(Path(keep))
    deleted = []
    for path in sorted(versions.iterdir()):
        if path.name.startswith("."):
            continue  # a bundle being written by a concurrent train
        if path.is_dir() and path.name not in needed:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path.name)
    return deleted
