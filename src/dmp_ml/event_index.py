"""An index of the event store's base events by profile and by cookie, for refresh reads.

A refresh reads the history of the profiles a batch touched (:func:`dmp_ml.store.history_of`).
Filtering ``W/events/base.parquet`` decodes the whole file, so what one batch reads grew with
the population. This index makes the read proportional to the touched profiles' events:

    base.arrow          the base events, same rows in the same order, as an uncompressed
                        Arrow IPC file (memory-mapped: a read touches only the pages it takes)
    base.index.arrow    per key kind (``profile_id``, ``cookie_id``): each id, and where its
                        rows' numbers start and end in ``base.rows-<kind>.npy``
    base.rows-*.npy     the row numbers grouped by id (ascending within an id)

A read looks the wanted ids up, takes their row numbers (sorted, so rows come back in file
order, exactly as the filtered Parquet read returns them) and only those rows. The index
belongs to one ``base.parquet``: its size and modification time are recorded, and a stale or
missing index is never used (the read falls back to filtering the Parquet file); the refresh
rebuilds it under the workdir lock (:func:`ensure_index`). The index holds events, so whoever
rewrites ``base.parquet`` (``train``, ``forget``) drops it first (:func:`drop_index`).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmp_ml import layout

logger = logging.getLogger(__name__)

KEYS = ("profile_id", "cookie_id")
_EVENTS = "base.arrow"
_INDEX = "base.index.arrow"
_STAMP = b"dmp_ml.event_index"
_CHUNK_ROWS = 1 << 20


def _paths(workdir: str | Path) -> tuple[Path, Path, dict[str, Path]]:
    root = layout.events_dir(workdir)
    rows = {key: root / f"base.rows-{key}.npy" for key in KEYS}
    return root / _EVENTS, root / _INDEX, rows


def _stamp(base: Path) -> dict[str, int]:
    st = base.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def drop_index(workdir: str | Path) -> None:
    """Delete the index (call before rewriting or deleting ``base.parquet``)."""
    events, index, rows = _paths(workdir)
    for path in (index, events, *rows.values()):
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


def _groups(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct non-null values of ``column``; the row numbers grouped by value (ascending
    within each), shape (n_rows - n_null,); each value's ``start`` and ``stop`` in them."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    codes = np.asarray(encoded.indices.fill_null(-1), dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    order = order[int((codes < 0).sum()) :]  # nulls sort first: no id, not indexed
    counts = np.bincount(codes[codes >= 0], minlength=len(encoded.dictionary))
    stops = np.cumsum(counts)
    return encoded.dictionary, order.astype(np.int64), stops - counts, stops


def build_index(workdir: str | Path) -> None:
    """(Re)build the index of ``W/events/base.parquet``; call under the workdir lock."""
    base = layout.base_events(workdir)
    events_path, index_path, rows_paths = _paths(workdir)
    drop_index(workdir)
    stamp = _stamp(base)
    table = pq.read_table(base)

    def write_events(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=_CHUNK_ROWS):
                writer.write_batch(batch)

    _atomic(events_path, write_events)
    keys, kinds, starts, stops = [], [], [], []
    for key in KEYS:
        if key not in table.column_names:
            continue
        values, order, first, last = _groups(table.column(key))

        def write_rows(tmp: Path, rows: np.ndarray = order) -> None:
            with tmp.open("wb") as handle:
                np.save(handle, rows, allow_pickle=False)

        _atomic(rows_paths[key], write_rows)
        keys.append(values.cast(pa.string()))
        kinds.append(pa.array([key] * len(values), type=pa.string()))
        starts.append(first)
        stops.append(last)
    index = pa.table(
        {
            "kind": pa.concat_arrays(kinds) if kinds else pa.array([], pa.string()),
            "key": pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
            "start": np.concatenate(starts) if starts else np.zeros(0, np.int64),
            "stop": np.concatenate(stops) if stops else np.zeros(0, np.int64),
        }
    ).replace_schema_metadata({_STAMP: json.dumps({**stamp, "rows": table.num_rows}).encode()})

    def write_index(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, index.schema) as writer:
            writer.write_table(index)

    _atomic(index_path, write_index)  # last: the index names a complete set of files
    logger.info("event index: %d events of %s indexed by profile and cookie", len(table), base)


@dataclass(frozen=True)
class EventIndex:
    """The mapped index of one ``base.parquet`` (see the module doc)."""

    events: list[pa.RecordBatch]
    offsets: np.ndarray  # first row of each batch, and the total, shape (n_batches + 1,)
    keys: dict[str, tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]]

    def rows(self, key: str, ids: Iterable[str]) -> np.ndarray:
        """Row numbers of the events whose ``key`` is one of ``ids`` (ascending)."""
        if key not in self.keys:
            return np.zeros(0, dtype=np.int64)
        values, starts, stops, order = self.keys[key]
        wanted = pa.array([str(i) for i in ids], type=pa.string())
        if len(wanted) == 0:
            return np.zeros(0, dtype=np.int64)
        at = np.asarray(pc.index_in(wanted, value_set=values).drop_null(), dtype=np.int64)
        if len(at) == 0:
            return np.zeros(0, dtype=np.int64)
        lo, lengths = starts[at], stops[at] - starts[at]
        # the ranges [lo, lo + length) of ``order`` one after another, without a Python loop
        heads = np.cumsum(lengths) - lengths
        picks = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(lo - heads, lengths)
        return np.sort(np.asarray(order[picks], dtype=np.int64))

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """The events at ``rows`` (ascending), only ``columns`` when given."""
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
        return pa.Table.from_batches(parts)


def open_index(workdir: str | Path) -> EventIndex | None:
    """The index of ``W/events/base.parquet``, memory-mapped; None when it is missing, stale
    (``base.parquet`` changed since it was built) or unreadable."""
    base = layout.base_events(workdir)
    events_path, index_path, rows_paths = _paths(workdir)
    try:
        index = pa.ipc.open_file(pa.memory_map(str(index_path))).read_all()
        stamp = json.loads((index.schema.metadata or {})[_STAMP])
        if {k: stamp[k] for k in ("size", "mtime_ns")} != _stamp(base):
            return None
        reader = pa.ipc.open_file(pa.memory_map(str(events_path)))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        sizes = [b.num_rows for b in batches]
        if sum(sizes) != stamp["rows"]:
            return None
        keys = {}
        kinds = index.column("kind").combine_chunks()
        for key in KEYS:
            mask = pc.equal(kinds, key)
            part = index.filter(mask)
            if part.num_rows == 0 and not rows_paths[key].exists():
                continue
            order = np.load(rows_paths[key], mmap_mode="r", allow_pickle=False)
            keys[key] = (
                part.column("key").combine_chunks(),
                part.column("start").to_numpy(),
                part.column("stop").to_numpy(),
                order,
            )
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return EventIndex(events=batches, offsets=offsets, keys=keys)


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
