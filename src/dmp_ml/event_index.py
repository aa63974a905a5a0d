"""An index of the event store's base events by profile and by cookie, for refresh reads.

A refresh reads the history of the profiles a batch touched (:func:`dmp_ml.store.history_of`).
Filtering ``W/events/base.parquet`` decodes the whole file, so what one batch reads grew with
the population. This index makes the read proportional to the touched profiles' events:

    base.arrow              the base events as an uncompressed Arrow IPC file (memory-mapped: a
                            read touches only the pages it takes), grouped: each profile's
                            events together, then the anonymous events by cookie (each group
                            in file order), so one profile's history is one run of rows, not
                            rows scattered over the whole log (a read then costs its rows,
                            not the population's spread of them)
    base.original.npy       the row of ``base.parquet`` each row of ``base.arrow`` holds
    base.<kind>.ids.npy     per key kind (``profile_id``, ``cookie_id``): its ids, sorted (an id
                            index, :mod:`dmp_ml.id_index`; ``base.<kind>.id_rows.npy`` each
                            one's number), so a lookup is a binary search in a mapped file, not
                            a hash table built over every id of the population
    base.<kind>.bounds.npy  where each id's rows start and stop in ``base.rows-<kind>.npy``
    base.rows-<kind>.npy    the rows of ``base.arrow`` grouped by id
    base.index.json         the ``base.parquet`` it belongs to, written last

A read looks the wanted ids up, takes only their rows and puts them back in the order of
``base.parquet`` (by their original row), as the filtered Parquet read returns them. The index
belongs to one ``base.parquet``: its size and modification time are recorded, and a stale,
missing or older-format index is never used (the read falls back to filtering the Parquet
file); the refresh rebuilds it under the workdir lock (:func:`ensure_index`). The index holds
events and ids, so whoever rewrites ``base.parquet`` (``train``, ``forget``) drops it first
(:func:`drop_index`).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmp_ml import layout
from dmp_ml.codes import ColumnCodes, held_as_dictionary
from dmp_ml.id_index import IDS_FILE, ROWS_FILE, IdIndex

logger = logging.getLogger(__name__)

KEYS = ("profile_id", "cookie_id")
_EVENTS = "base.arrow"
_STAMP = "base.index.json"
_OLDER = ("base.index.arrow",)
"""Files of an index of an earlier format (their ids are dropped with the rest)."""
_LAYOUT = "grouped"
"""The stamp's ``layout`` of this format; an index without it (events in file order) is
rebuilt."""
_ORIGINAL = "base.original.npy"
_CHUNK_ROWS = 1 << 20


def _prefix(key: str) -> str:
    """What the names of a key kind's id index files start with (:meth:`IdIndex.write`)."""
    return f"base.{key}."


def _files(workdir: str | Path) -> tuple[Path, Path, dict[str, dict[str, Path]]]:
    """The events file, the stamp and, per key kind, its rows, bounds and ids."""
    root = layout.events_dir(workdir)
    kinds = {
        key: {
            "rows": root / f"base.rows-{key}.npy",
            "bounds": root / f"base.{key}.bounds.npy",
            "ids": root / f"{_prefix(key)}{IDS_FILE}",
            "id_rows": root / f"{_prefix(key)}{ROWS_FILE}",
        }
        for key in KEYS
    }
    return root / _EVENTS, root / _STAMP, kinds


def _stamp(base: Path) -> dict[str, int]:
    st = base.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def drop_index(workdir: str | Path) -> None:
    """Delete the index (call before rewriting or deleting ``base.parquet``)."""
    events, stamp, kinds = _files(workdir)
    root = layout.events_dir(workdir)
    files = [p for paths in kinds.values() for p in paths.values()]
    for path in (stamp, *(root / name for name in _OLDER), events, root / _ORIGINAL, *files):
        path.unlink(missing_ok=True)


def _atomic(path: Path, write: object) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)  # type: ignore[operator]
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _encoded(table: pa.Table, key: str) -> tuple[pa.Array, np.ndarray]:
    """The distinct values of column ``key`` (by first appearance) and each row's code among
    them (-1: missing)."""
    if key not in table.column_names:
        return pa.array([], type=pa.string()), np.full(table.num_rows, -1, dtype=np.int64)
    column = table.column(key)
    if pa.types.is_dictionary(column.type):  # numbered as encoding its text numbers it
        codes = ColumnCodes()
        codes.add(column)
        at, values = codes.codes()
        return values, at.astype(np.int64)
    encoded = pc.dictionary_encode(column.combine_chunks())
    return encoded.dictionary, np.asarray(encoded.indices.fill_null(-1), dtype=np.int64)


def _read_held(base: Path) -> tuple[pa.Table, pa.Schema]:
    """``base.parquet`` in one chunk a column, its text held as one dictionary a column
    (:func:`dmp_ml.codes.held_as_dictionary`: a few bytes an event, where text costs about a
    hundred), and the schema it was written with (text as text)."""
    schema = pq.read_schema(base)
    text = [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    table = pq.read_table(base, read_dictionary=text)
    columns = [
        held_as_dictionary(table.column(name))
        if name in text
        else table.column(name).combine_chunks()
        for name in table.column_names
    ]
    return pa.table(columns, names=table.column_names), schema


def _as_written(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows of the table :func:`_read_held` gives, their text decoded: as ``schema`` has them."""
    return pa.Table.from_arrays([part.column(f.name).cast(f.type) for f in schema], schema=schema)


def _groups(codes: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row numbers grouped by ``codes`` (ascending within each; missing ones left out),
    shape (n_rows - n_missing,); each value's ``start`` and ``stop`` in them."""
    order = np.argsort(codes, kind="stable")
    order = order[int((codes < 0).sum()) :]  # missing codes sort first: no id, not indexed
    counts = np.bincount(codes[codes >= 0], minlength=n_values)
    stops = np.cumsum(counts)
    return order.astype(np.int64), stops - counts, stops


def _grouping(
    profiles: np.ndarray, n_profiles: int, cookies: np.ndarray, n_cookies: int
) -> np.ndarray:
    """The order of the rows in ``base.arrow``: by profile code, then the events without a
    profile by cookie code, then those with neither; in file order within each group."""
    anonymous = n_profiles + np.where(cookies >= 0, cookies, n_cookies)
    return np.argsort(np.where(profiles >= 0, profiles, anonymous), kind="stable")


def _save(array: np.ndarray) -> Callable[[Path], None]:
    """A writer of ``array`` as a `.npy` file (for :func:`_atomic`)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return write


def build_index(workdir: str | Path) -> None:
    """(Re)build the index of ``W/events/base.parquet``; call under the workdir lock."""
    base = layout.base_events(workdir)
    events_path, stamp_path, kinds = _files(workdir)
    drop_index(workdir)
    stamp = _stamp(base)
    table, schema = _read_held(base)  # one chunk: each take below reads it as is
    encoded = {key: _encoded(table, key) for key in KEYS}
    (profile_ids, profiles), (cookie_ids, cookies) = (encoded[key] for key in KEYS)
    original = _grouping(profiles, len(profile_ids), cookies, len(cookie_ids))
    held = np.empty(len(original), dtype=np.int64)  # each original row's place in base.arrow
    held[original] = np.arange(len(original), dtype=np.int64)

    def write_events(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for start in range(0, len(original), _CHUNK_ROWS):
                part = table.take(pa.array(original[start : start + _CHUNK_ROWS]))
                for batch in _as_written(part, schema).combine_chunks().to_batches():
                    writer.write_batch(batch)

    _atomic(events_path, write_events)
    _atomic(events_path.with_name(_ORIGINAL), _save(original))
    indexed = []
    for key in KEYS:
        if key not in table.column_names:
            continue
        values, codes = encoded[key]
        order, first, last = _groups(codes, len(values))
        paths = kinds[key]
        _atomic(paths["rows"], _save(held[order]))
        _atomic(paths["bounds"], _save(np.stack([first, last]).astype(np.int64)))
        ids = IdIndex.build(values.cast(pa.string()).to_pylist())
        for path in ids.write(paths["ids"].parent, prefix=_prefix(key)):
            with path.open("rb") as handle:  # durable before the stamp names it
                os.fsync(handle.fileno())
        indexed.append(key)
    meta = {**stamp, "rows": table.num_rows, "keys": indexed, "layout": _LAYOUT}
    # last: the stamp names a complete set of files
    _atomic(stamp_path, lambda tmp: tmp.write_text(json.dumps(meta), encoding="utf-8"))
    logger.info("event index: %d events of %s indexed by profile and cookie", len(table), base)


@dataclass(frozen=True)
class EventIndex:
    """The mapped index of one ``base.parquet`` (see the module doc)."""

    events: list[pa.RecordBatch]
    offsets: np.ndarray  # first row of each batch, and the total, shape (n_batches + 1,)
    keys: dict[str, tuple[IdIndex, np.ndarray, np.ndarray, np.ndarray]]
    original: np.ndarray  # the row of base.parquet each row of base.arrow holds

    def rows(self, key: str, ids: Iterable[str]) -> np.ndarray:
        """Rows of ``base.arrow`` holding the events whose ``key`` is one of ``ids``
        (ascending)."""
        if key not in self.keys:
            return np.zeros(0, dtype=np.int64)
        index, starts, stops, order = self.keys[key]
        at = index.rows([str(i) for i in ids])  # binary search in the mapped sorted ids
        at = at[at >= 0]
        if len(at) == 0:
            return np.zeros(0, dtype=np.int64)
        lo, lengths = starts[at], stops[at] - starts[at]
        # the ranges [lo, lo + length) of ``order`` one after another, without a Python loop
        heads = np.cumsum(lengths) - lengths
        picks = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(lo - heads, lengths)
        return np.sort(np.asarray(order[picks], dtype=np.int64))

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """The events at ``rows`` of ``base.arrow`` (ascending), only ``columns`` when given,
        in the order of ``base.parquet``."""
        parts = []
        cut = np.searchsorted(rows, self.offsets)
        for i, batch in enumerate(self.events):
            mine = rows[cut[i] : cut[i + 1]] - self.offsets[i]
            if len(mine) == 0:
                continue
            if columns is not None:
                batch = batch.select([c for c in columns if c in batch.schema.names])
            parts.append(batch.take(pa.array(mine, type=pa.int64())))
        if not parts:
            schema = self.events[0].schema if self.events else pa.schema([])
            if columns is not None:
                schema = pa.schema([f for f in schema if f.name in columns])
            return schema.empty_table()
        back = np.argsort(np.asarray(self.original[rows], dtype=np.int64), kind="stable")
        return pa.Table.from_batches(parts).take(pa.array(back))


def open_index(workdir: str | Path) -> EventIndex | None:
    """The index of ``W/events/base.parquet``, memory-mapped; None when it is missing, stale
    (``base.parquet`` changed since it was built), of an earlier format or unreadable."""
    base = layout.base_events(workdir)
    events_path, stamp_path, kinds = _files(workdir)
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        if {k: stamp[k] for k in ("size", "mtime_ns")} != _stamp(base):
            return None
        if stamp.get("layout") != _LAYOUT:
            return None
        reader = pa.ipc.open_file(pa.memory_map(str(events_path)))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        sizes = [b.num_rows for b in batches]
        if sum(sizes) != stamp["rows"]:
            return None
        keys = {}
        for key in stamp["keys"]:
            paths = kinds[key]
            ids = IdIndex.read(paths["ids"].parent, prefix=_prefix(key))
            bounds = np.load(paths["bounds"], mmap_mode="r", allow_pickle=False)
            if ids is None or bounds.shape != (2, len(ids)):
                return None
            order = np.load(paths["rows"], mmap_mode="r", allow_pickle=False)
            keys[key] = (ids, bounds[0], bounds[1], order)
        original = np.load(events_path.with_name(_ORIGINAL), mmap_mode="r", allow_pickle=False)
        if original.shape != (stamp["rows"],):
            return None
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return EventIndex(events=batches, offsets=offsets, keys=keys, original=original)


def ensure_index(workdir: str | Path) -> EventIndex | None:
    """The index of the base events, rebuilt first when missing or stale; call under the
    workdir lock. None when there are no base events."""
    if not layout.base_events(workdir).exists():
        return None
    index = open_index(workdir)
    if index is None:
        build_index(workdir)
        index = open_index(workdir)
    return index
