"""Per-profile arrays stored so that serving workers map them instead of loading them.

A bundle's large per-profile arrays (feature table, scores, send-time curves, lookalike
vectors, affinity counts) are written as NumPy ``.npy`` files and opened with
``mmap_mode='c'``: the operating system keeps one copy in its page cache, shared by every
worker that maps the file, so a worker's private memory does not grow with the population.
The mapping is copy-on-write: a model that changes rows in place (refresh, erasure) gets
private copies of the pages it writes and of no others, and the file never changes (bundle
files are immutable; a change is published as a new version).

:func:`write_frame` and :func:`map_frame` store a DataFrame this way: its float64 columns as
one ``(n_columns, n_rows)`` array, which becomes the frame's block without a copy, and its
index and other columns (categories, text) in a small Parquet file for readers, and the same
columns in an uncompressed Arrow file (``<stem>.arrow``) that :func:`map_frame` maps, so the
ids' text is shared too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_FRAME_KEY = b"dmp_ml.mapped_frame"
_TEXT = {pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype()}


def write_array(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as a plain ``.npy`` file (no pickle) that :func:`map_array` can map."""
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    return path


def map_array(path: Path) -> np.ndarray:
    """The array at ``path`` mapped copy-on-write (pages are read on use and shared until
    written; a write stays private to the process)."""
    return np.load(path, mmap_mode="c", allow_pickle=False)


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself when it can be changed in place (a copy-on-write mapping copies only
    the pages written), else a private copy of it."""
    return array if array.flags.writeable else np.array(array)


def is_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` (or the array it is a view of) is a file mapping."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        base = array.base
        array = base if isinstance(base, np.ndarray) else None
    return False


def write_frame(directory: Path, stem: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` as ``<stem>.npy`` (its float64 columns) and ``<stem>.parquet`` (its
    index as a column and the other columns, with the column order in the schema metadata)."""
    directory.mkdir(parents=True, exist_ok=True)
    floats = [c for c in frame.columns if frame[c].dtype == np.float64]
    rest = [c for c in frame.columns if c not in set(floats)]
    values = np.empty((len(floats), len(frame)), dtype=np.float64)
    for j, column in enumerate(floats):
        values[j] = frame[column].to_numpy()
    write_array(directory / f"{stem}.npy", values)
    index = str(frame.index.name or "index")
    table = pa.Table.from_pandas(frame[rest].reset_index(names=index), preserve_index=False)
    meta = {"columns": [str(c) for c in frame.columns], "mapped": floats, "index": index}
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _FRAME_KEY: json.dumps(meta).encode()}
    )
    pq.write_table(table, directory / f"{stem}.parquet")
    # the same columns as one uncompressed Arrow batch, text as large strings: what a worker
    # maps (its ids then stay in the page cache, shared, instead of ~24 private bytes a row)
    fields = [
        pa.field(f.name, pa.large_string()) if f.type == pa.string() else f for f in table.schema
    ]
    mapped = table.cast(pa.schema(fields, metadata=table.schema.metadata)).combine_chunks()
    with pa.ipc.new_file(directory / f"{stem}.arrow", mapped.schema) as writer:
        writer.write_table(mapped)


def _columns(directory: Path, stem: str) -> pa.Table:
    """The index and other columns of a frame :func:`write_frame` wrote: its Arrow file
    mapped (no copy) or, in a bundle written before those, its Parquet file read."""
    arrow = directory / f"{stem}.arrow"
    if arrow.exists():
        return pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()
    # one chunk per column: Arrow takes rows from a chunked text column by first joining its
    # chunks, so an answer's 100 ids cost 4 ms at 816k profiles instead of 0.01 ms
    return pq.read_table(directory / f"{stem}.parquet").combine_chunks()


def map_frame(directory: Path, stem: str) -> pd.DataFrame:
    """Read a frame written by :func:`write_frame`: the float64 columns are one block over
    the mapped ``<stem>.npy`` (no copy), the index and the other columns are read."""
    table = _columns(directory, stem)
    meta = json.loads((table.schema.metadata or {})[_FRAME_KEY])
    rest = table.to_pandas(types_mapper=_TEXT.get)
    rest = rest.set_index(meta["index"])
    values = map_array(directory / f"{stem}.npy")
    if values.shape != (len(meta["mapped"]), len(rest)):
        raise ValueError(f"{directory / stem}.npy does not match {stem}.parquet")
    frame = pd.DataFrame(values.T, index=rest.index, columns=meta["mapped"], copy=False)
    where = {c: i for i, c in enumerate(meta["columns"])}
    for column in sorted(rest.columns, key=where.__getitem__):
        frame.insert(where[column], column, rest[column])
    return frame


def write_rows(frame: pd.DataFrame, pos: np.ndarray, rows: pd.DataFrame) -> None:
    """Overwrite the rows at positions ``pos`` of ``frame`` with ``rows`` (same columns), in
    place. A float column over a copy-on-write mapping (:func:`map_frame`) is written through
    its array, so only the pages holding those rows become private: pandas' own assignment
    writes the whole column back, which would copy every page of the table. Other views of
    ``frame``'s columns see the change; the caller owns the frame."""
    for j, column in enumerate(frame.columns):
        values = rows[column].to_numpy()
        target = frame[column].to_numpy()
        if target.dtype == np.float64 and is_mapped(target):
            target = target.view()
            target.flags.writeable = True  # pandas hands out read-only views of its blocks
            target[pos] = values
        else:
            frame.iloc[pos, j] = values
