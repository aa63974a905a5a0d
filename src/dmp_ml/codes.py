"""Dictionary codes of a text column, built batch by batch while a log is read.

A column's codes number its distinct values in order of first appearance (-1 for a missing
value), as :func:`dmp_ml.identity.encode` gives them. Most of the work is per batch and is
done as each batch arrives (while the next one is still being read): each batch's values are
dictionary-encoded (a Parquet batch already is), and its dictionary entries are listed in order
of first use. :meth:`ColumnCodes.codes` then only joins the batches' dictionaries and gives
each row the code of its entry (one lookup per row).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dmp_ml.rows import filled_indices, is_dictionary


class ColumnCodes:
    """The codes of one text column, fed its values batch by batch in row order."""

    def __init__(self) -> None:
        # per non-empty chunk: its dictionary's values (as ``string``), each row's entry
        # (missing: one past the dictionary; the column's own indices when none is missing)
        # and the entries in order of first use
        self._chunks: list[tuple[pa.Array, np.ndarray, np.ndarray]] = []
        self._rows = 0

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        """Take the next rows: text, or dictionary-encoded text (its dictionary kept)."""
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        for chunk in chunks:
            if not len(chunk):
                continue
            if not pa.types.is_dictionary(chunk.type):
                chunk = pc.dictionary_encode(chunk)
            # each row's entry, a missing row's one past the dictionary
            entries = filled_indices(chunk.indices, len(chunk.dictionary))
            first_use = pd.unique(entries)
            first_use = first_use[first_use < len(chunk.dictionary)]
            self._chunks.append((chunk.dictionary.cast(pa.string()), entries, first_use))
            self._rows += len(chunk)

    def codes(self) -> tuple[np.ndarray, pa.Array]:
        """int32 codes of every row taken (-1 for missing) and the distinct values they number."""
        if not self._chunks:
            return np.full(self._rows, -1, dtype=np.int32), pa.array([], type=pa.string())
        values = pa.concat_arrays([dictionary for dictionary, _, _ in self._chunks])
        distinct = pc.dictionary_encode(values)
        value_ids = filled_indices(distinct.indices, -1)
        ids, used, start = [], [], 0
        for dictionary, _, first_use in self._chunks:
            ids.append(value_ids[start : start + len(dictionary)])
            used.append(ids[-1][first_use])
            start += len(dictionary)
        order = pd.unique(np.concatenate(used))  # distinct values by first appearance
        order = order[order >= 0]
        rank = np.full(len(distinct.dictionary) + 1, -1, dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        codes = np.empty(self._rows, dtype=np.int32)
        at = 0
        for (_, entries, _), chunk_ids in zip(self._chunks, ids, strict=True):
            table = np.append(rank[chunk_ids], np.int32(-1))  # a missing value -> -1
            codes[at : at + len(entries)] = table[entries]
            at += len(entries)
        return codes, distinct.dictionary.take(pa.array(order))


class FrameCodes:
    """The codes of some text columns of a frame that arrives in batches (the loader's)."""

    def __init__(self, columns: list[str]) -> None:
        self._columns = {column: ColumnCodes() for column in columns}

    def add(self, batch: pd.DataFrame) -> None:
        """Take the next rows (the columns are Arrow-backed: text, or dictionary-encoded text)."""
        for column, codes in self._columns.items():
            codes.add(batch[column].array.__arrow_array__())

    def codes(self) -> dict[str, tuple[np.ndarray, pa.Array]]:
        """Each column's codes and values (:meth:`ColumnCodes.codes`), two columns at a time
        (NumPy and Arrow release the GIL)."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dmp-ml-codes") as pool:
            done = pool.map(ColumnCodes.codes, self._columns.values())
            return dict(zip(self._columns, done, strict=True))


_INDEX_TYPES = (pa.int8(), pa.int16(), pa.int32())


def held_as_dictionary(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Text (plain, or dictionary-encoded with any dictionary per chunk) as one
    dictionary-encoded chunk, the form a loaded event log keeps its text columns in.

    The one dictionary holds each value in use once (entries no row uses are dropped, so that
    a group-by over the column sees only values that occur), and the indices are the narrowest
    integers that number it: a column of a few event types costs one byte a row, an id column
    four, where one string a row costs 12 to 20. The values, row for row, are unchanged.
    """
    chunked = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
    if not pa.types.is_dictionary(chunked.type):
        chunked = pc.dictionary_encode(chunked)  # one dictionary across the chunks
    chunked = chunked.unify_dictionaries()
    if not chunked.num_chunks:
        return pa.chunked_array([], type=pa.dictionary(pa.int8(), pa.string()))
    dictionary = chunked.chunk(0).dictionary.cast(pa.string())
    missing = len(dictionary)  # a missing row's entry: one past the dictionary
    entries = np.concatenate(
        [filled_indices(c.indices, missing).astype(np.int32, copy=False) for c in chunked.chunks]
    )
    used = np.bincount(entries, minlength=missing + 1)[:missing] > 0
    index_type = next(
        t for t in _INDEX_TYPES if int(used.sum()) <= np.iinfo(t.to_pandas_dtype()).max
    )
    if (
        used.all()
        and chunked.num_chunks == 1
        and chunked.type == pa.dictionary(index_type, pa.string())
    ):
        return chunked  # held so already (a train's log, hashed or stored): nothing to renumber
    renumber = np.append(np.cumsum(used) - 1, 0).astype(index_type.to_pandas_dtype())
    indices = pa.array(renumber[entries], mask=entries == missing, type=index_type)
    kept = dictionary.filter(pa.array(used)) if not used.all() else dictionary
    return pa.chunked_array([pa.DictionaryArray.from_arrays(indices, kept)])


def as_categorical(values: pa.Array | pa.ChunkedArray) -> pd.Categorical:
    """Text (plain or dictionary-encoded) as a ``pandas`` categorical of the same values, its
    codes copied, not its text: ``pd.util.hash_pandas_object`` hashes it as it hashes the
    text, from the distinct values (an Arrow dictionary column it hashes one Python string a
    row, several times slower)."""
    held = held_as_dictionary(values)
    if not held.num_chunks:
        return pd.Categorical([], categories=[])
    codes = filled_indices(held.chunk(0).indices, -1)
    return pd.Categorical.from_codes(codes, categories=held.chunk(0).dictionary.to_pylist())


def text_codes(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Each row's code (-1: missing) and the text values (``string``) the codes number. A
    categorical or an Arrow dictionary column (a training's log) is read from its codes, never
    spelled out one string a row; other text is factorized."""
    if is_dictionary(column.dtype):
        values = as_categorical(column.array.__arrow_array__())
    elif isinstance(column.dtype, pd.CategoricalDtype):
        values = column.array
    else:
        codes, uniques = pd.factorize(column.astype("string"), use_na_sentinel=True)
        return codes, pd.Index(uniques, dtype="string")
    return np.asarray(values.codes), pd.Index(values.categories).astype("string")
