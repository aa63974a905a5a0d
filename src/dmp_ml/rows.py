"""Rows of a frame: which repeat an earlier row exactly, keeping a subset without copies, the
id-sorted merge of new rows, and a row array (or frame) built only when something reads it.

Used by the data contract on logs of millions of events: duplicates are found by a 64-bit
hash of each row's values, narrowed column by column, and confirmed value by value, so a hash
collision never merges two different rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def duplicated_rows(
    frame: pd.DataFrame, codes: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """``frame.duplicated(keep="first")`` as a boolean array, without comparing every row.

    Rows are narrowed down by a hash of their values, one column at a time, keeping only rows
    whose hash so far repeats; what is left is compared value by value. On a big log in time
    order the rows are narrowed in two halves side by side, cut between two runs of equal
    times (copies of a row share their time, so no pair of copies is cut apart; NumPy
    releases the GIL in its loops).

    Parameters
    ----------
    frame : the rows, (n, k).
    codes : integer codes (n,) of some columns, already computed (e.g. dictionary codes of the
        id columns): equal values get equal codes, and every missing value one code. Used as
        those columns' keys instead of encoding them again.
    """
    codes = codes or {}
    candidates, ticks = _may_repeat(frame)
    cut = _between_runs(ticks) if len(candidates) >= _PARALLEL_CANDIDATES else 0
    if cut:
        assert ticks is not None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmp-ml-rows") as helper:
            later = helper.submit(_narrow, frame, codes, candidates[cut:], ticks[cut:])
            first = _narrow(frame, codes, candidates[:cut], ticks[:cut])
            candidates = np.concatenate([first, later.result()])
    else:
        candidates = _narrow(frame, codes, candidates, ticks)
    duplicated = np.zeros(len(frame), dtype=bool)
    if len(candidates):  # confirmed on the values, or on the codes where they are given
        left = take_rows(frame[[c for c in frame.columns if c not in codes]], candidates)
        for column in codes:
            if column in frame.columns:
                left[column] = codes[column][candidates]
        repeated = left.duplicated(keep="first").to_numpy(bool)
        duplicated[candidates[repeated]] = True
    return duplicated


_PARALLEL_CANDIDATES = 1_000_000  # rows to narrow from which two threads narrow them


def _between_runs(ticks: np.ndarray | None) -> int:
    """A position near the middle of ``ticks`` (sorted) where a new time starts; 0 when none
    (or when the rows are not in time order: ``ticks`` None)."""
    if ticks is None or (os.cpu_count() or 1) < 2:
        return 0
    middle = len(ticks) // 2
    cut = int(np.searchsorted(ticks, ticks[middle], side="left"))
    return cut or int(np.searchsorted(ticks, ticks[middle], side="right")) % len(ticks)


def _narrow(
    frame: pd.DataFrame,
    codes: Mapping[str, np.ndarray],
    candidates: np.ndarray,
    ticks: np.ndarray | None,
) -> np.ndarray:
    """The rows of ``candidates`` whose hash over every column repeats (within their run of
    equal ``ticks`` when given): every repeated row, and perhaps a few others."""
    hashed = np.zeros(len(candidates), dtype=np.uint64)
    raw = ticks is not None  # runs compare hashes for equality only: the first key as it is
    for number, column in enumerate(frame.columns):
        if not len(candidates):
            break
        if ticks is not None and column == "event_time":
            continue  # equal times are what the runs already group
        if column in codes:
            key = codes[column][candidates].astype(np.int64).view(np.uint64)
        else:
            key = _column_key(frame[column], candidates, len(frame))
        hashed, raw = (key, False) if raw else (_mix(hashed * _GOLDEN + key), raw)
        if ticks is not None:
            repeats = _repeats_in_runs(hashed, ticks)
            candidates, hashed, ticks = candidates[repeats], hashed[repeats], ticks[repeats]
            continue
        if number == 0:  # the first column alone rarely tells rows apart (times repeat)
            continue
        repeats = _repeats(hashed, exact=len(hashed) <= _EXACT_REPEATS)
        candidates, hashed = candidates[repeats], hashed[repeats]
    if ticks is None:
        candidates = candidates[_repeats(hashed, exact=True)]
    return candidates


def distinct(keys: np.ndarray, in_place: bool = False) -> np.ndarray:
    """The sorted distinct values of an integer array (``in_place``: ``keys``, a 1-d array the
    caller no longer needs, is sorted instead of a copy).

    ``np.unique`` finds them with a hash table first (NumPy 2.3 and later), which on millions
    of mostly distinct keys is tens of times slower than sorting and keeping the values that
    differ from their predecessor (2M distinct int64: 1.2 s against 0.03 s).
    """
    if in_place:
        keys.sort()
    out = keys if in_place else np.sort(keys, axis=None)
    if len(out) > 1:
        out = out[np.concatenate([[True], out[1:] != out[:-1]])]
    return out


def missing_text(index: pd.Index) -> pd.Series:
    """An all-missing ``string`` Series on ``index``, without writing a value per row.

    ``pd.Series(pd.NA, index=index, dtype="string")`` repeats the missing value row by row;
    an Arrow array of nulls holds only its offsets and validity.
    """
    nulls = pa.chunked_array([pa.nulls(len(index), pa.large_string())])
    return pd.Series(pd.arrays.ArrowStringArray(nulls), index=index, dtype="string")


def keep_rows(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """``frame.loc[keep]`` with a fresh index.

    Arrow text columns are cut chunk by chunk without copying their text: a chunk that loses
    no row is kept as it is, one that loses a few rows becomes the zero-copy slices between
    them, and only a chunk that loses many rows is filtered (copied). Dropping a few duplicates
    from a log of millions of events then copies none of its text. On a big frame the columns
    are cut two at a time (Arrow and NumPy release the GIL while they copy).
    """
    runs = _kept_runs(keep)

    def kept(column: Any) -> pd.Series:
        values = frame[column].array
        if isinstance(values, pd.arrays.ArrowStringArray):
            whole = values.__arrow_array__()
            cut = pa.chunked_array(_cut(whole, keep, runs), type=whole.type)
            return pd.Series(pd.arrays.ArrowStringArray(cut), dtype=values.dtype)
        if is_dictionary(values.dtype):  # chunk by chunk: only the codes are copied
            whole = values.__arrow_array__()
            cut = pa.chunked_array(_filter_chunks(whole, keep), type=whole.type)
            return pd.Series(pd.arrays.ArrowExtensionArray(cut))
        return pd.Series(values[keep], copy=False)  # a fresh array already

    names = list(frame.columns)
    if len(frame) < _PARALLEL_CANDIDATES or (os.cpu_count() or 1) < 2:
        return pd.DataFrame({c: kept(c) for c in names}, copy=False)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dmp-ml-rows") as pool:
        return pd.DataFrame(dict(zip(names, pool.map(kept, names), strict=True)), copy=False)


def is_dictionary(dtype: object) -> bool:
    """Whether ``dtype`` is an Arrow dictionary (what a Parquet read keeps as codes)."""
    return isinstance(dtype, pd.ArrowDtype) and pa.types.is_dictionary(dtype.pyarrow_dtype)


def filled_indices(indices: pa.Array, fill: int) -> np.ndarray:
    """The integers of ``indices`` (no nulls: a read-only view) with ``fill`` at the nulls
    (widened to int64 when ``fill`` does not fit their type).

    The same as ``pc.fill_null(indices, fill).to_numpy()``, which takes about ten times as long
    where the nulls are scattered one by one (a cookie column: 60 ms a million rows).
    """
    n, width = len(indices), indices.type.bit_width // 8
    dtype = np.dtype(f"int{indices.type.bit_width}")
    values = np.frombuffer(
        indices.buffers()[1], dtype=dtype, count=n, offset=indices.offset * width
    )
    if not indices.null_count:
        return values
    bits = np.frombuffer(indices.buffers()[0], dtype=np.uint8)
    valid = np.unpackbits(bits, count=indices.offset + n, bitorder="little")[indices.offset :]
    info = np.iinfo(dtype)
    if not info.min <= fill <= info.max:
        values, dtype = values.astype(np.int64), np.dtype(np.int64)
    return np.where(valid.view(bool), values, dtype.type(fill))


def _filter_chunks(whole: pa.ChunkedArray, keep: np.ndarray) -> list[pa.Array]:
    """The kept rows of each chunk (each keeps its own dictionary: none is unified)."""
    out, offset = [], 0
    for chunk in whole.chunks:
        part = keep[offset : offset + len(chunk)]
        out.append(chunk if part.all() else chunk.filter(pa.array(part)))
        offset += len(chunk)
    return out


_MAX_SLICES_PER_CHUNK = 64  # a chunk losing more rows than this is filtered (copied) instead


def _kept_runs(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the runs of kept rows."""
    edges = np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _cut(
    whole: pa.ChunkedArray, keep: np.ndarray, runs: tuple[np.ndarray, np.ndarray]
) -> list[pa.Array]:
    """The kept rows of ``whole`` as a list of arrays (slices where few rows go)."""
    starts, ends = runs
    out: list[pa.Array] = []
    offset = 0
    for chunk in whole.chunks:
        stop = offset + len(chunk)
        part = keep[offset:stop]
        if part.all():
            out.append(chunk)
        elif part.any():
            first = np.searchsorted(ends, offset, side="right")
            last = np.searchsorted(starts, stop, side="left")
            if last - first > _MAX_SLICES_PER_CHUNK:
                out.append(chunk.filter(pa.array(part)))
            else:
                for a, b in zip(starts[first:last], ends[first:last], strict=True):
                    lo, hi = max(int(a), offset), min(int(b), stop)
                    out.append(chunk.slice(lo - offset, hi - lo))
        offset = stop
    return out


def _may_repeat(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of the rows that could equal another row, and their times when that helps.

    In a log in time order (the usual case) copies of a row sit in one run of equal times, so
    only rows whose time equals a neighbour's need comparing, and only within their run: their
    times (int64 ticks) are returned with them. Otherwise every row, and None.
    """
    times = frame["event_time"] if "event_time" in frame.columns else None
    if len(frame) < 2 or times is None or times.hasnans or not times.is_monotonic_increasing:
        return np.arange(len(frame)), None
    ticks = times.array.asi8
    same = ticks[1:] == ticks[:-1]
    paired = np.zeros(len(ticks), dtype=bool)
    paired[:-1] = same
    paired[1:] |= same
    positions = np.flatnonzero(paired)
    return positions, ticks[positions]


_LONGEST_COMPARED_RUN = 32
"""Runs of equal times up to this long are compared entry by entry; a longer one (a log with
coarse times, e.g. dates only) would make that quadratic, so the entries are sorted instead."""


def _repeats_in_runs(hashed: np.ndarray, ticks: np.ndarray) -> np.ndarray:
    """Which entries share their hash with another entry of the same time.

    ``ticks`` is sorted, so the entries of one time form a run: each entry is compared with the
    one 1, 2, ... places later while that one is still in its run (runs are usually short: no
    sort and no hash table over millions of entries). When a run is longer than
    :data:`_LONGEST_COMPARED_RUN`, the entries are sorted by time and hash and neighbours
    compared.
    """
    n = len(hashed)
    repeats = np.zeros(n, dtype=bool)
    if n < 2:
        return repeats
    in_run = ticks[1:] == ticks[:-1]
    starts = np.flatnonzero(~in_run) + 1
    if int(np.diff(starts, prepend=0, append=n).max()) > _LONGEST_COMPARED_RUN:
        order = np.lexsort((hashed, ticks))
        same = (ticks[order[1:]] == ticks[order[:-1]]) & (hashed[order[1:]] == hashed[order[:-1]])
        repeats[order[1:][same]] = True
        repeats[order[:-1][same]] = True
        return repeats
    hit = in_run & (hashed[1:] == hashed[:-1])
    repeats[:-1] |= hit
    repeats[1:] |= hit
    first = np.flatnonzero(in_run)  # entries whose run goes on: the only ones to look further
    step = 2
    while len(first):
        first = first[first + step < n]
        later = first + step
        in_run = ticks[later] == ticks[first]
        first, later = first[in_run], later[in_run]
        hit = hashed[first] == hashed[later]
        repeats[first[hit]] = True
        repeats[later[hit]] = True
        step += 1
    return repeats


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


_EXACT_REPEATS = 1 << 16  # up to this many hashes, repeats are found by sorting
_BUCKET_BITS = 24


def _repeats(hashed: np.ndarray, exact: bool) -> np.ndarray:
    """Which entries of ``hashed`` occur more than once.

    Not ``exact``: entries whose top bits are shared, counted in buckets (every repeat, and
    some others that later columns or the exact pass remove); cheaper than sorting millions.
    Many entries left are counted again by the next bits, which drops most of the others.
    """
    if not exact:
        top = np.uint64(64 - _BUCKET_BITS)
        buckets = (hashed >> top).astype(np.int64)
        repeats = np.bincount(buckets, minlength=1 << _BUCKET_BITS)[buckets] > 1
        left = np.flatnonzero(repeats)
        if len(left) > _EXACT_REPEATS:
            buckets = ((hashed[left] << np.uint64(_BUCKET_BITS)) >> top).astype(np.int64)
            repeats[left] = np.bincount(buckets, minlength=1 << _BUCKET_BITS)[buckets] > 1
        return repeats
    order = np.argsort(hashed)
    same = hashed[order[1:]] == hashed[order[:-1]]
    repeats = np.zeros(len(hashed), dtype=bool)
    repeats[order[1:][same]] = True
    repeats[order[:-1][same]] = True
    return repeats


def _column_key(col: pd.Series, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Keys of the values at positions ``rows``: equal values (and all missing values) get
    equal 64-bit keys. Missing equals missing, as in ``DataFrame.duplicated``.
    """
    if len(rows) < n_rows // 4:  # few rows left: encode only those
        col = _take(col, rows)
        rows = np.arange(len(rows))
    return _keys(col)[rows]


def take_rows(frame: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """``frame.iloc[positions]`` (fresh index) for sorted ``positions``, Arrow columns taken
    chunk by chunk."""
    return pd.DataFrame({c: _take(frame[c], positions) for c in frame.columns})


def _take(col: pd.Series, positions: np.ndarray) -> pd.Series:
    """``col.iloc[positions]`` (fresh index) for sorted ``positions``: Arrow columns (text,
    dictionaries) are taken chunk by chunk (pandas, and Arrow itself, join a column's chunks
    into one before taking)."""
    values = col.array
    if not isinstance(values, pd.arrays.ArrowExtensionArray):
        return col.iloc[positions].reset_index(drop=True)
    chunked = values.__arrow_array__()
    bounds = np.cumsum([0, *(len(c) for c in chunked.chunks)])
    cuts = np.searchsorted(positions, bounds)
    parts = [
        chunk.take(pa.array(positions[a:b] - start))
        for chunk, start, a, b in zip(chunked.chunks, bounds[:-1], cuts[:-1], cuts[1:], strict=True)
        if b > a
    ]
    taken = pa.chunked_array(parts, type=chunked.type)
    if isinstance(values, pd.arrays.ArrowStringArray):
        return pd.Series(pd.arrays.ArrowStringArray(taken)).astype(col.dtype)
    return pd.Series(pd.arrays.ArrowExtensionArray(taken))


def _keys(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.array.asi8.view(np.uint64)
    if pd.api.types.is_float_dtype(col):
        values = col.to_numpy(np.float64, na_value=np.nan) + 0.0  # -0.0 equals 0.0
        values[np.isnan(values)] = np.nan  # one bit pattern for every missing value
        return values.view(np.uint64)
    if (pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col)) and not (
        col.hasnans
    ):
        return col.to_numpy(np.int64).view(np.uint64)
    values = pa.chunked_array(pa.array(col))
    # the chunks of a chunked array are encoded against one dictionary: codes agree across them
    encoded = pc.dictionary_encode(values)
    codes = [filled_indices(chunk.indices, -1).astype(np.int64) for chunk in encoded.chunks]
    return np.concatenate(codes).view(np.uint64) if codes else np.zeros(0, np.uint64)


def _mix(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit moves every output bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def id_merge_order(ids: pd.Index, drop: np.ndarray, new: pd.Index) -> np.ndarray:
    """Where each row of the id-sorted merge of ``ids`` (less the ``drop`` rows) and ``new``
    comes from, as positions in ``ids`` followed by ``new`` (n + k rows), shape (kept + k,).

    Equal to a stable ``argsort`` of the kept ids followed by the new ones, mapped back to
    those positions. When ``ids`` is sorted and unique and ``new`` unique and apart from the
    kept ids (a refresh's rows over a bundle's table), only ``new`` is sorted and searched
    for: no sort over the whole population, whose ids are Python strings.
    """
    kept = np.flatnonzero(~np.asarray(drop, dtype=bool))
    held = ids.to_numpy(dtype=object)[kept]
    fresh = new.to_numpy(dtype=object)
    n = len(ids)
    new_order = np.argsort(fresh, kind="stable")
    fresh = fresh[new_order]
    at = np.searchsorted(held, fresh, side="left") if len(held) else np.zeros(len(fresh), int)
    sorted_held = bool((held[1:] > held[:-1]).all()) if len(held) > 1 else True
    clash = bool(len(fresh) and len(held) and (held[np.minimum(at, len(held) - 1)] == fresh).any())
    unique = bool((fresh[1:] > fresh[:-1]).all()) if len(fresh) > 1 else True
    if not (sorted_held and unique) or clash:
        sources = np.concatenate([kept, n + np.arange(len(new), dtype=np.int64)])
        merged = np.concatenate([held, new.to_numpy(dtype=object)])
        return sources[np.argsort(merged, kind="stable")]
    out = np.empty(len(held) + len(fresh), dtype=np.int64)
    out[at + np.arange(len(fresh))] = n + new_order
    # a kept row moves down by the number of new rows that sort before it
    out[np.arange(len(held)) + np.searchsorted(at, np.arange(len(held)), side="right")] = kept
    return out


class LazyRows:
    """A row array built on first use (then kept): the hour-of-week counts of a table with a
    delta's rows merged in. Answers never read them, only a compaction or an erasure that
    writes the table, so loading a delta with new profiles does not copy the population's
    (n, 168) counts. Indexing and ``np.asarray`` build it."""

    def __init__(self, build: Callable[[], np.ndarray], shape: tuple[int, ...]) -> None:
        self._build: Callable[[], np.ndarray] | None = build
        self._array: np.ndarray | None = None
        self.shape = shape

    def built(self) -> np.ndarray:
        """The array (built now if it was not)."""
        if self._array is None:
            assert self._build is not None
            self._array, self._build = self._build(), None
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.built()[key]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self.built()
        return array if dtype is None else array.astype(dtype, copy=False)


def stacked_take(first: np.ndarray, second: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``np.concatenate([first, second])[order]`` without the stacked copy: an id merge
    order (:func:`id_merge_order`) is a few runs of consecutive rows, each copied as one slice,
    so a merge of a few new rows into a population's array copies it once, not twice."""
    return stacked_takes([(first, second)], order)[0]


def stacked_takes(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    order: np.ndarray,
    out: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """:func:`stacked_take` of each ``(first, second)`` pair (all ``first`` of one length) by
    one ``order``, into ``out`` (new arrays when None): slice by slice when it is a few runs
    of consecutive rows, else gathered from ``first`` straight into the result and the rows
    of ``second`` patched over (an order with the updated rows taken from ``second`` has two
    runs per updated row); either way each result is written once."""
    order = np.asarray(order, dtype=np.int64)
    if out is None:
        out = [
            np.empty((len(order), *first.shape[1:]), dtype=np.result_type(first, second))
            for first, second in pairs
        ]
    if not pairs or not len(order):
        return out
    n = len(pairs[0][0])
    cut = np.flatnonzero((np.diff(order) != 1) | (order[1:] == n)) + 1
    if len(cut) * _ROWS_PER_RUN > len(order):
        at = np.flatnonzero(order >= n)
        head = np.minimum(order, max(n - 1, 0))  # rows of ``second`` patched over below
        tail = order[at] - n
        for taken, (first, second) in zip(out, pairs, strict=True):
            if n and taken.dtype == first.dtype:
                np.take(first, head, axis=0, out=taken, mode="clip")
            elif n:
                taken[:] = first[head]
            taken[at] = second[tail]
        return out
    for start, stop in zip(np.r_[0, cut].tolist(), np.r_[cut, len(order)].tolist(), strict=True):
        src = int(order[start])
        for taken, (first, second) in zip(out, pairs, strict=True):
            part, at = (first, src) if src < n else (second, src - n)
            taken[start:stop] = part[at : at + stop - start]
    return out


_ROWS_PER_RUN = 256  # runs shorter than this on average: one gather beats a slice per run


def stacked_frame(frame: pd.DataFrame, rows: pd.DataFrame, order: np.ndarray) -> pd.DataFrame:
    """``pd.concat([frame, rows]).iloc[order]`` (``rows`` with ``frame``'s columns) with one
    copy, not two: the float64 columns taken (:func:`stacked_takes`) straight
    into the rows of one ``(n_columns, n_rows)`` array, the layout a mapped frame has, the
    other columns concatenated and taken one by one (a merge of a refresh's score rows; a
    refreshed feature table built whole, :meth:`OverlaidFrame.frame`)."""
    floats = [c for c in frame.columns if frame[c].dtype == np.float64 == rows[c].dtype]
    pairs = [(frame[c].to_numpy(), rows[c].to_numpy()) for c in floats]
    values = np.empty((len(floats), len(order)), dtype=np.float64)
    stacked_takes(pairs, order, out=list(values))
    index = frame.index.append(rows.index)[order]
    out = pd.DataFrame(values.T, index=index, columns=floats, copy=False)
    done = set(floats)
    for at, column in enumerate(frame.columns):
        if column not in done:
            both = pd.concat([frame[column], rows[column]], ignore_index=True)
            out.insert(at, column, both.iloc[order].array)
    return out


def _positions(key: Any, length: int) -> np.ndarray:
    """The row positions a ``key`` (a slice, a boolean mask, or positions, negative ones
    counted from the end) selects among ``length`` rows, shape (k,) int64."""
    if isinstance(key, slice):
        return np.arange(*key.indices(length), dtype=np.int64)
    key = np.asarray(key)
    if key.dtype == bool:
        return np.flatnonzero(key)
    return np.where(key < 0, key + length, key).astype(np.int64)


class OverlaidRows:
    """The rows of a base array (a mapped file's, shared by every worker and never written)
    with a small block of private rows over it: rows changed since (by their position in the
    base) and rows added past its end, optionally read in another order (new rows merged in
    id order, :meth:`merge`: a map from each row to where it is held, 8 bytes a row). A
    refresh then costs what it changes, not a copy of the population's array; reads by
    position (``rows[positions]``, slices, boolean masks) return plain arrays, and
    ``np.asarray`` builds the whole array (a compaction writing it).
    """

    def __init__(self, base: np.ndarray) -> None:
        self.base = base
        self._at = np.zeros(0, dtype=np.int64)  # sorted places held in ``_rows``
        self._rows = np.empty((0, *base.shape[1:]), dtype=base.dtype)
        self._held = len(base)  # places: the base's rows, then those added
        self._where: np.ndarray | None = None  # row -> place (None: the same)

    @property
    def shape(self) -> tuple[int, ...]:
        length = self._held if self._where is None else len(self._where)
        return (length, *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def _places(self, key: Any) -> np.ndarray:
        """Where the rows ``key`` selects are held."""
        pos = _positions(key, len(self))
        return pos if self._where is None else self._where[pos]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not len(self._at) and self._where is None:
            return self.base[key]
        scalar = np.ndim(key) == 0 and not isinstance(key, slice)
        pos = self._places(np.atleast_1d(key) if scalar else key)
        out = np.empty((len(pos), *self.base.shape[1:]), dtype=self.base.dtype)
        in_base = pos < len(self.base)
        out[in_base] = self.base[pos[in_base]]
        if len(self._at):
            slot = np.minimum(np.searchsorted(self._at, pos), len(self._at) - 1)
            held = self._at[slot] == pos
            out[held] = self._rows[slot[held]]
        return out[0] if scalar else out

    def __setitem__(self, key: Any, values: Any) -> None:
        self._put(self._places(np.atleast_1d(key) if np.ndim(key) == 0 else key), values)

    def _put(self, pos: np.ndarray, values: Any) -> None:
        rows = np.broadcast_to(np.asarray(values, dtype=self.dtype), (len(pos), *self.shape[1:]))
        pos, last = np.unique(pos[::-1], return_index=True)  # a repeated position: last wins
        rows = rows[::-1][last]
        slot = np.minimum(np.searchsorted(self._at, pos), max(len(self._at) - 1, 0))
        held = (self._at[slot] == pos) if len(self._at) else np.zeros(len(pos), dtype=bool)
        self._rows[slot[held]] = rows[held]
        if not held.all():
            at = np.concatenate([self._at, pos[~held]])
            order = np.argsort(at, kind="stable")
            self._at = at[order]
            self._rows = np.concatenate([self._rows, rows[~held]])[order]

    def _add(self, rows: np.ndarray) -> np.ndarray:
        """Hold ``rows`` in new places; returns those places."""
        places = np.arange(self._held, self._held + len(rows), dtype=np.int64)
        self._held += len(rows)
        self._put(places, rows)
        return places

    def append(self, rows: np.ndarray) -> None:
        """Add ``rows`` past the end."""
        places = self._add(rows)
        if self._where is not None:
            self._where = np.concatenate([self._where, places])

    def merge(self, rows: np.ndarray, order: np.ndarray) -> None:
        """Add ``rows`` and read every row in ``order`` from now on: positions in this array
        followed by ``rows`` (e.g. an :func:`id_merge_order`), as ``np.concatenate([self,
        rows])[order]`` would be."""
        places = self._add(rows)
        where = np.arange(len(self), dtype=np.int64) if self._where is None else self._where
        self._where = stacked_take(where, places, order)

    def select(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (positions), in that order."""
        self._where = self._places(np.asarray(rows, dtype=np.int64))

    def copy(self) -> OverlaidRows:
        """A copy whose changes leave this one as it is (the base shared, the rows copied)."""
        other = OverlaidRows(self.base)
        other._at, other._rows, other._held = self._at.copy(), self._rows.copy(), self._held
        other._where = None if self._where is None else self._where.copy()
        return other

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self[np.arange(len(self))] if len(self._at) or self._where is not None else None
        whole = np.array(self.base) if whole is None else whole
        return whole if dtype is None else whole.astype(dtype, copy=False)


class OverlaidFrame:
    """The rows of a base frame (a bundle's mapped feature table, shared and never written)
    with a private block of rows over it (a refresh's new and changed rows, in the order they
    came) and where each row is held (``where``: a position in the base, or past its end one
    in the block; 8 bytes a row). Merging a batch's rows costs the batch, not a copy of the
    population's columns; reads by position (:meth:`take`) gather only the rows asked for,
    and the whole frame (the order a merge gives, :func:`stacked_frame`) is built, once, only
    when a caller asks for every row (:meth:`frame`). Never changed: a merge returns another.
    """

    def __init__(
        self,
        base: pd.DataFrame,
        block: pd.DataFrame | None = None,
        where: np.ndarray | None = None,
        index: pd.Index | None = None,
    ) -> None:
        self.base = base
        self.block = base.iloc[:0] if block is None else block
        self.where = np.arange(len(base), dtype=np.int64) if where is None else where
        self._index = index
        self._frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.where)

    @property
    def columns(self) -> pd.Index:
        return self.base.columns

    @property
    def index(self) -> pd.Index:
        """The rows' ids, in row order (built on first use: one take of the ids)."""
        if self._index is None:
            both = self.base.index.append(self.block.index)
            self._index = pd.Index(both[self.where], dtype="string", name=self.base.index.name)
        return self._index

    def take(self, positions: np.ndarray) -> pd.DataFrame:
        """``frame().iloc[positions]``, gathered from the base and the block alone."""
        places = self.where[np.asarray(positions, dtype=np.int64)]
        n = len(self.base)
        in_base = places < n
        both = pd.concat([self.base.iloc[places[in_base]], self.block.iloc[places[~in_base] - n]])
        order = np.empty(len(places), dtype=np.int64)
        order[in_base] = np.arange(int(in_base.sum()))
        order[~in_base] = int(in_base.sum()) + np.arange(int((~in_base).sum()))
        out = both.iloc[order]
        out.index = pd.Index(out.index, dtype="string", name=self.base.index.name)
        return out

    def _added(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The block with ``rows`` (this frame's columns) after it, and where they are held."""
        places = len(self.base) + len(self.block) + np.arange(len(rows), dtype=np.int64)
        return pd.concat([self.block, rows[list(self.columns)]]), places

    def merged(self, rows: pd.DataFrame, order: np.ndarray) -> OverlaidFrame:
        """``concat([frame, rows]).iloc[order]`` (``order``: positions in this frame followed
        by ``rows``, e.g. an :func:`id_merge_order`), with ``rows`` only added to the block."""
        block, places = self._added(rows)
        return OverlaidFrame(self.base, block, stacked_take(self.where, places, order))

    def replaced(self, positions: np.ndarray, rows: pd.DataFrame) -> OverlaidFrame:
        """This frame with the rows at ``positions`` replaced by ``rows`` (the same ids)."""
        block, places = self._added(rows)
        where = self.where.copy()
        where[positions] = places
        return OverlaidFrame(self.base, block, where, self._index)

    def frame(self) -> pd.DataFrame:
        """Every row as one frame (built on first use, then kept)."""
        if self._frame is None:
            frame = stacked_frame(self.base, self.block, self.where)
            if self._index is None:  # the stacked ids are the index: not taken a second time
                self._index = pd.Index(frame.index, dtype="string", name=self.base.index.name)
            frame.index = self._index
            self._frame = frame
        return self._frame


class OverlaidSparseRows:
    """The rows of a base CSR matrix (a bundle's mapped affinity counts, shared and never
    written) with a private block of rows over it (a refresh's recounted and new profiles, in
    the order they came) and where each row is held (``where``: a row of the base, or past its
    end one of the block; 8 bytes a row), as :class:`OverlaidFrame` holds a feature table's
    rows. Reading rows (``matrix[rows]``, :meth:`row`) gathers only those, so a refresh costs
    its batch, not a re-take of the population's counts; :meth:`tocsr` builds the whole
    matrix, once, for a caller that writes it (a compaction). Never changed: :meth:`replaced`
    and :meth:`merged` return another.
    """

    def __init__(self, base: Any, block: Any = None, where: np.ndarray | None = None) -> None:
        from scipy import sparse

        self.base = base
        self.block = (
            sparse.csr_matrix((0, base.shape[1]), dtype=base.dtype) if block is None else block
        )
        self.where = np.arange(base.shape[0], dtype=np.int64) if where is None else where
        self._whole: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.where), int(self.base.shape[1]))

    def __len__(self) -> int:
        return len(self.where)

    def take(self, positions: np.ndarray) -> Any:
        """The rows at ``positions`` as a CSR matrix, gathered from the base and the block."""
        from scipy import sparse

        places = self.where[np.asarray(positions, dtype=np.int64)]
        n = self.base.shape[0]
        in_base = places < n
        both = sparse.vstack(
            [self.base[places[in_base]], self.block[places[~in_base] - n]], format="csr"
        )
        order = np.empty(len(places), dtype=np.int64)
        order[in_base] = np.arange(int(in_base.sum()))
        order[~in_base] = int(in_base.sum()) + np.arange(int((~in_base).sum()))
        return both[order]

    def __getitem__(self, key: Any) -> Any:
        """``matrix[rows]`` or ``matrix[rows, columns]``, as a CSR matrix would answer."""
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        taken = self.take(
            _positions(np.atleast_1d(rows) if np.ndim(rows) == 0 else rows, len(self))
        )
        scalar = np.ndim(rows) == 0 and not isinstance(rows, slice)
        return taken[(0 if scalar else slice(None), *rest)] if rest else taken

    def row(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The column indices and values of one row."""
        place, n = int(self.where[position]), self.base.shape[0]
        matrix, at = (self.base, place) if place < n else (self.block, place - n)
        start, stop = matrix.indptr[at], matrix.indptr[at + 1]
        return matrix.indices[start:stop], matrix.data[start:stop]

    def _added(self, rows: Any) -> tuple[Any, np.ndarray]:
        from scipy import sparse

        places = self.base.shape[0] + self.block.shape[0] + np.arange(rows.shape[0])
        return sparse.vstack([self.block, rows], format="csr"), places.astype(np.int64)

    def replaced(self, positions: np.ndarray, rows: Any) -> OverlaidSparseRows:
        """These rows with those at ``positions`` replaced by ``rows`` (CSR, in that order)."""
        block, places = self._added(rows)
        where = self.where.copy()
        where[np.asarray(positions, dtype=np.int64)] = places
        return OverlaidSparseRows(self.base, block, where)

    def merged(self, rows: Any, order: np.ndarray) -> OverlaidSparseRows:
        """``vstack([matrix, rows])[order]`` (``order``: positions in these rows followed by
        ``rows``, e.g. an :func:`id_merge_order`), with ``rows`` only added to the block."""
        block, places = self._added(rows)
        return OverlaidSparseRows(self.base, block, stacked_take(self.where, places, order))

    def tocsr(self) -> Any:
        """Every row as one CSR matrix (built on first use, then kept)."""
        from scipy import sparse

        if self._whole is None:
            stacked = sparse.vstack([self.base, self.block], format="csr")
            self._whole = stacked[self.where]
        return self._whole
