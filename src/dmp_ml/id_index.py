"""The id index: which row of a bundle's per-profile arrays holds a profile, without a hash
table over the population.

pandas answers ``index.get_indexer(ids)`` from a hash table it builds over the whole index on
the first lookup (about 85 bytes a profile, private to each serving worker). A bundle instead
writes its ids once, sorted, as one fixed-width byte array (``ids.npy``: each id's UTF-8 bytes,
padded with NUL to the longest; ``id_rows.npy``, each sorted id's row, only when the table is
not in id order), which every worker maps and shares in the page cache. A lookup is a binary
search per requested id: O(batch log n) and no private memory per profile.

A refresh changes which ids a table holds without rewriting the mapped file: the index keeps
the ids it gained (sorted, with their rows) and the positions of the ids it lost in small
private arrays. A table merged in id order (:func:`dmp_ml.rows.id_merge_order`) reads each
base id's row as its rank (its sorted position, less the ids gone before it, plus the ids
gained before it); a table that appends new rows (the lookalike model) keeps the base's rows.

Ids are keyed by their UTF-8 bytes with NUL and 0x01 escaped (``00 -> 01 01``, ``01 -> 01 02``),
so no key holds a NUL and the padding never makes two ids equal; byte order of the keys is the
order of the ids as Python compares them (code point order).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmp_ml.mapped import map_array, write_array
from dmp_ml.rows import id_merge_order

IDS_FILE = "ids.npy"
"""The sorted ids (fixed-width bytes) of a bundle table's rows."""
ROWS_FILE = "id_rows.npy"
"""The row of each sorted id, written only when the table is not in id order."""

_NONE = np.zeros(0, dtype=np.int64)
_EMPTY = np.zeros(0, dtype="S1")


def _key(value: str) -> bytes:
    raw = value.encode("utf-8")
    if b"\x00" in raw or b"\x01" in raw:
        raw = raw.replace(b"\x01", b"\x01\x02").replace(b"\x00", b"\x01\x01")
    return raw


def _keys(ids: Iterable[Any]) -> list[bytes]:
    return [_key(str(v)) for v in ids]


def _fixed(keys: list[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` as an array of ``S<width>`` (those longer cut to ``width``) and which were cut."""
    longer = np.fromiter((len(k) > width for k in keys), dtype=bool, count=len(keys))
    array = np.array([k[:width] for k in keys] if longer.any() else keys, dtype=f"S{width}")
    return array.reshape(len(keys)), longer


def _find(sorted_keys: np.ndarray, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``keys`` sorts in ``sorted_keys`` (the left insertion point) and whether it
    is there. A key longer than the array's width is never there; it sorts after every key
    equal to its cut (which is then a prefix of it)."""
    width = max(sorted_keys.dtype.itemsize, 1)
    fixed, longer = _fixed(keys, width)
    at = np.searchsorted(sorted_keys, fixed, side="left").astype(np.int64)
    if longer.any():
        at[longer] = np.searchsorted(sorted_keys, fixed[longer], side="right")
    found = ~longer & (at < len(sorted_keys))
    found[found] = sorted_keys[at[found]] == fixed[found]
    return at, found


def sorted_keys(values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (repeats allowed) as sorted fixed-width keys, and the position among
    ``values`` of each sorted key: for runs of equal values found with :func:`span`."""
    array = _key_array(values)
    order = np.argsort(array, kind="stable")
    return array[order], order.astype(np.int64)


def _key_array(values: Iterable[Any]) -> np.ndarray:
    """``values`` as fixed-width byte keys, in their order (the width of the longest)."""
    keys = _keys(values)
    width = max((len(k) for k in keys), default=1) or 1
    return np.array(keys, dtype=f"S{width}").reshape(len(keys))


def span(keys: np.ndarray, values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``values``, the run ``[lo, hi)`` of the sorted ``keys`` equal to it."""
    wanted = _keys(values)
    width = max(keys.dtype.itemsize, 1)
    fixed, longer = _fixed(wanted, width)
    lo = np.searchsorted(keys, fixed, side="left").astype(np.int64)
    hi = np.searchsorted(keys, fixed, side="right").astype(np.int64)
    hi[longer] = lo[longer]  # longer than every key: equal to none
    return lo, hi


class IdIndex:
    """Profile id -> row of a table, from sorted ids (usually a mapped file) and the few ids a
    refresh added or removed since.

    Build one with :meth:`build` (in memory) or :meth:`read` (mapped); it never changes:
    :meth:`merged` and :meth:`appended` return the index of a changed table.
    """

    def __init__(
        self,
        keys: np.ndarray,
        rows: np.ndarray | None = None,
        *,
        gone: np.ndarray = _NONE,
        added: np.ndarray | None = None,
        added_rows: np.ndarray = _NONE,
        ranked: bool = False,
        tail: np.ndarray | None = None,
        tail_rows: np.ndarray = _NONE,
    ) -> None:
        self._keys = keys  # sorted fixed-width keys of the base
        self._rows = rows  # row of each base key; None: its position
        self._gone = gone  # sorted positions in ``_keys`` no longer in the table
        self._added = _EMPTY if added is None else added  # merged in: sorted, not in base
        self._added_rows = added_rows
        self._ranked = ranked  # rows of base keys are their rank among the table's ids
        self._tail = _EMPTY if tail is None else tail  # appended after: sorted, with rows
        self._tail_rows = tail_rows

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, ids: Iterable[Any]) -> IdIndex:
        """The index of a table whose rows hold ``ids`` (unique) in this order."""
        array = _key_array(ids)
        if len(array) > 1 and not bool((array[1:] > array[:-1]).all()):
            order = np.argsort(array, kind="stable")
            array = array[order]
            if bool((array[1:] == array[:-1]).any()):
                raise ValueError("the ids of an id index must be unique")
            return cls(array, order.astype(np.int64))
        return cls(array)

    def write(self, directory: Path, prefix: str = "") -> list[Path]:
        """Write the index into ``directory`` (:data:`IDS_FILE`, and :data:`ROWS_FILE` when the
        rows are not in id order; their names after ``prefix``) for :meth:`read` to map;
        returns the files written."""
        keys, rows = self._flat()
        written = [write_array(directory / f"{prefix}{IDS_FILE}", keys)]
        if rows is not None:
            written.append(write_array(directory / f"{prefix}{ROWS_FILE}", rows))
        return written

    @classmethod
    def read(cls, directory: Path, prefix: str = "") -> IdIndex | None:
        """The index :meth:`write` wrote into ``directory`` (with ``prefix``), mapped; None
        when it has none (a bundle written before id indexes)."""
        ids_path, rows_path = directory / f"{prefix}{IDS_FILE}", directory / f"{prefix}{ROWS_FILE}"
        if not ids_path.exists():
            return None
        keys = map_array(ids_path)
        rows = map_array(rows_path) if rows_path.exists() else None
        if (
            keys.dtype.kind != "S"
            or keys.ndim != 1
            or (rows is not None and rows.shape != keys.shape)
        ):
            raise ValueError(f"{ids_path} is not an id index")
        return cls(keys, rows)

    def _flat(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Sorted keys and their rows (None when in row order) of the table as it is now."""
        if not len(self._gone) and not len(self._added) and not len(self._tail):
            return self._keys, self._rows
        kept = np.ones(len(self._keys), dtype=bool)
        kept[self._gone] = False
        parts = [self._keys[kept], self._added, self._tail]
        width = max(part.dtype.itemsize for part in parts)
        keys = np.concatenate([part.astype(f"S{width}") for part in parts])
        rows = np.concatenate(
            [self._base_rows(np.flatnonzero(kept)), self._added_rows, self._tail_rows]
        )
        order = np.argsort(keys, kind="stable")
        width = int(np.char.str_len(keys).max(initial=1)) or 1  # as :meth:`build` would
        keys, rows = keys[order].astype(f"S{width}"), rows[order]
        return keys, (None if bool((rows == np.arange(len(rows))).all()) else rows)

    # ---------------------------------------------------------------- lookups
    def __len__(self) -> int:
        return len(self._keys) - len(self._gone) + len(self._added) + len(self._tail)

    def _base_rows(self, at: np.ndarray) -> np.ndarray:
        """Rows of the base keys at sorted positions ``at`` (not gone)."""
        if not self._ranked:
            return at.copy() if self._rows is None else np.asarray(self._rows[at], dtype=np.int64)
        before = np.searchsorted(self._gone, at, side="left")
        added = np.searchsorted(self._added, self._keys[at], side="left") if len(self._added) else 0
        return at - before + added

    def rows(self, ids: Iterable[Any]) -> np.ndarray:
        """The row of each of ``ids`` (-1 for an id the table does not hold), shape (len(ids),)."""
        keys = _keys(ids)
        out = np.full(len(keys), -1, dtype=np.int64)
        if not keys:
            return out
        if len(self._keys):
            at, found = _find(self._keys, keys)
            if len(self._gone):
                slot = np.minimum(np.searchsorted(self._gone, at), len(self._gone) - 1)
                found &= self._gone[slot] != at
            out[found] = self._base_rows(at[found])
        for extra, extra_rows in ((self._added, self._added_rows), (self._tail, self._tail_rows)):
            if len(extra):
                at, found = _find(extra, keys)
                out[found] = extra_rows[at[found]]
        return out

    def contains(self, ids: Iterable[Any]) -> np.ndarray:
        """Whether the table holds each of ``ids``, shape (len(ids),)."""
        return self.rows(ids) >= 0

    @property
    def in_id_order(self) -> bool:
        """Whether the rows are in id order (row = rank), which :meth:`merged` keeps."""
        return self._rows is None and not len(self._tail)

    def _rank(self, keys: list[bytes]) -> np.ndarray:
        """How many of the table's ids sort before each of ``keys``."""
        rank = np.zeros(len(keys), dtype=np.int64)
        if len(self._keys):
            at, _ = _find(self._keys, keys)
            rank += at - np.searchsorted(self._gone, at, side="left")
        if len(self._added):
            rank += _find(self._added, keys)[0]
        return rank

    # ---------------------------------------------------------------- changes
    def merge_order(self, index: pd.Index, drop: np.ndarray, new: pd.Index) -> np.ndarray:
        """:func:`dmp_ml.rows.id_merge_order` of ``index`` (this table's ids; ``drop`` a boolean
        mask over its rows) and ``new``, found by binary search: no id of the population is
        read unless the rows are not in id order or ``new`` repeats or holds a kept id."""
        fresh = np.asarray(_keys(new), dtype=object)
        new_order = np.argsort(fresh, kind="stable") if len(fresh) else _NONE
        fresh_sorted = fresh[new_order]
        unique = bool((fresh_sorted[1:] > fresh_sorted[:-1]).all()) if len(fresh) > 1 else True
        rows = self.rows(new)
        drop = np.asarray(drop, dtype=bool)
        clash = bool(((rows >= 0) & ~drop[np.maximum(rows, 0)]).any()) if len(drop) else False
        if not (self.in_id_order and unique) or clash:
            return id_merge_order(index, drop, new)
        kept = np.flatnonzero(~drop)
        dropped = np.flatnonzero(drop)
        ins = self._rank(list(fresh_sorted))
        at = ins - np.searchsorted(dropped, ins, side="left")
        n = len(drop)
        out = np.empty(len(kept) + len(fresh), dtype=np.int64)
        out[at + np.arange(len(fresh))] = n + new_order
        out[np.arange(len(kept)) + np.searchsorted(at, np.arange(len(kept)), side="right")] = kept
        return out

    def merged(self, removed: Iterable[Any], added: Iterable[Any], index: pd.Index) -> IdIndex:
        """The index of this table merged in id order (:func:`~dmp_ml.rows.id_merge_order`):
        ``removed`` ids gone, ``added`` ids in (one it holds keeps its place). ``index`` is the
        merged table's ids, read only when this index's rows are not in id order."""
        if not self.in_id_order:
            return IdIndex.build(index)
        gone_keys = _keys(removed)
        new_keys = _keys(added)
        gone = set(self._gone.tolist())
        extra = set(self._added.tolist())
        if gone_keys and len(self._keys):
            at, found = _find(self._keys, gone_keys)
            gone.update(at[found].tolist())
        extra.difference_update(gone_keys)
        if new_keys and len(self._keys):
            at, found = _find(self._keys, new_keys)
            gone.difference_update(at[found].tolist())
            new_keys = [k for k, f in zip(new_keys, found, strict=True) if not f]
        fresh = sorted(extra | set(new_keys))
        width = max((len(k) for k in fresh), default=1) or 1
        added_keys = np.array(fresh, dtype=f"S{width}").reshape(len(fresh))
        out = IdIndex(
            self._keys,
            gone=np.array(sorted(gone), dtype=np.int64),
            added=added_keys,
            ranked=True,
        )
        out._added_rows = out._rank(fresh)  # the added ids before it are counted in
        return out

    def appended(self, ids: Iterable[Any]) -> IdIndex:
        """The index of this table with ``ids`` added as its next rows, in order (an id it
        holds already reads its new row from then on: the lookalike model retires a row it
        cannot change in place and appends its new one)."""
        new = _keys(ids)
        if not new:
            return self
        keys = self._tail.tolist() + new
        rows = np.concatenate([self._tail_rows, len(self) + np.arange(len(new), dtype=np.int64)])
        order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
        width = max(len(k) for k in keys) or 1
        out = copy.copy(self)
        out._tail = np.array(keys, dtype=f"S{width}")[order]
        out._tail_rows = rows[order]
        return out


def rows_of(index: pd.Index, ids_index: IdIndex | None, ids: Iterable[Any]) -> np.ndarray:
    """The row in ``index`` of each of ``ids`` (-1 when absent): from ``ids_index`` (the same
    ids, binary search) when given, else ``index.get_indexer`` (pandas' hash table)."""
    if ids_index is not None:
        return ids_index.rows(ids)
    return index.get_indexer(pd.Index(pd.array([str(i) for i in ids], dtype="string")))
