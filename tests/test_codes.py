"""Codes built batch by batch while a log is read are those of encoding the whole column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from dmp_ml.codes import ColumnCodes, as_categorical, held_as_dictionary
from dmp_ml.identity import encode


def test_codes_fed_batch_by_batch_equal_the_whole_columns() -> None:
    rng = np.random.default_rng(3)
    words = pa.array(["a", "b", None, "c", "a", "d"])  # a missing entry, a repeated value
    batches: list[pa.Array | pa.ChunkedArray] = [
        pa.DictionaryArray.from_arrays(
            pa.array(rng.integers(0, 6, 50), mask=rng.random(50) < 0.2, type=pa.int32()), words
        ),
        pa.array(["d", None, "e", "b", "e"]),  # plain text (a CSV batch)
        pa.array([], type=pa.string()),
        pa.nulls(4, pa.large_string()),  # a column the file does not have
        pa.chunked_array([pa.array(["f", "a"]), pa.array(["f", None])], type=pa.string()),
    ]
    codes = ColumnCodes()
    for batch in batches:
        codes.add(batch)
    got, values = codes.codes()
    text = [
        (
            b.cast(pa.string())
            if not pa.types.is_dictionary(b.type)
            else b.dictionary.take(b.indices)
        )
        for b in batches
    ]
    whole = pd.Series(
        pd.arrays.ArrowStringArray(pa.chunked_array(text, type=pa.string())), dtype="string"
    )
    expected, expected_values = encode(whole, len(whole))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32
    assert values.equals(expected_values)
    # the distinct values in order of first appearance; missing rows -1
    assert values.to_pylist() == list(pd.unique(whole.dropna()))
    np.testing.assert_array_equal(got == -1, whole.isna().to_numpy())


def test_a_column_of_no_rows_or_only_missing_values_has_no_values() -> None:
    codes = ColumnCodes()
    got, values = codes.codes()
    assert len(got) == 0 and len(values) == 0
    codes.add(pa.nulls(3, pa.string()))
    got, values = codes.codes()
    np.testing.assert_array_equal(got, [-1, -1, -1])
    assert len(values) == 0 and values.type == pa.string()


def test_text_held_as_one_dictionary_keeps_its_values_in_the_narrowest_indices() -> None:
    """What a train holds of its log's text: one dictionary a column, each value in use once
    (an entry no row uses is dropped: a group-by sees only what occurs), the narrowest
    indices, the values row for row unchanged."""
    words = pa.array(["b", "unused", "a", "b2"])
    chunks = pa.chunked_array(
        [
            pa.DictionaryArray.from_arrays(pa.array([0, None, 2, 0], type=pa.int32()), words),
            pa.DictionaryArray.from_arrays(pa.array([1], type=pa.int32()), pa.array(["c", "a"])),
            pa.array(["a", None, "d"]).dictionary_encode(),
        ]
    )
    held = held_as_dictionary(chunks)
    assert held.num_chunks == 1 and held.type == pa.dictionary(pa.int8(), pa.string())
    assert held.to_pylist() == chunks.to_pylist()
    assert sorted(held.chunk(0).dictionary.to_pylist()) == ["a", "b", "d"]
    ids = pa.array([f"id{i}" for i in range(300)] * 2 + [None], type=pa.large_string())
    held = held_as_dictionary(ids)  # plain text (a CSV's), 300 values: two-byte indices
    assert held.type == pa.dictionary(pa.int16(), pa.string())
    assert held.to_pylist() == ids.to_pylist()
    assert held_as_dictionary(pa.chunked_array([], type=pa.string())).to_pylist() == []


def test_a_categorical_view_of_dictionary_text_hashes_as_the_text() -> None:
    """The event store's row keys and the train's data fingerprint hash text held as
    dictionaries through a categorical view: the hashes are those of the text."""
    text = pa.chunked_array([pa.array(["x", None, "y"]), pa.array(["y", "z", None])])
    held = pa.chunked_array([c.dictionary_encode() for c in text.chunks])
    expected = pd.util.hash_pandas_object(
        pd.Series(pd.arrays.ArrowStringArray(text), dtype="string"), index=False
    )
    for values in (held, text):
        got = pd.util.hash_pandas_object(pd.Series(as_categorical(values)), index=False)
        np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
