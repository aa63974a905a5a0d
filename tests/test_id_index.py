"""The id index: a profile's row by binary search in sorted, mapped ids, equal to what
pandas' hash table answers, through the merges and appends a refresh makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.features import FeatureTable
from dmp_ml.id_index import IDS_FILE, ROWS_FILE, IdIndex
from dmp_ml.mapped import is_mapped
from dmp_ml.rows import id_merge_order

# text that sorts unlike its bytes would if the index compared them carelessly: NUL and 0x01
# inside and at the end of an id, a prefix of another id, accents, CJK, an emoji, long ids
_ODD = ["a", "a\x00", "a\x00b", "a\x01", "ab", "é", "e\u0301", "日本", "🙂", "x" * 70, ""]


def _text(values: list[str]) -> pd.Index:
    return pd.Index(pd.array(values, dtype="string"), name="profile_id")


def _pandas_rows(index: pd.Index, ids: list[str]) -> np.ndarray:
    return index.get_indexer(_text(ids))


def test_rows_match_pandas_for_missing_repeated_and_unicode_ids(tmp_path: Path) -> None:
    ids = sorted({f"p{i:05d}" for i in range(0, 2000, 3)} | set(_ODD))
    index = _text(ids)
    IdIndex.build(index).write(tmp_path)
    mapped = IdIndex.read(tmp_path)
    assert mapped is not None and is_mapped(mapped._keys)
    asked = ["p00003", "p00004", "p00003", "nobody", "a\x00\x00", "x" * 71, "x" * 69, *_ODD]
    assert mapped.rows(asked).tolist() == _pandas_rows(index, asked).tolist()
    assert mapped.contains(["p00003", "p00004"]).tolist() == [True, False]
    assert mapped.rows([]).tolist() == []


def test_unsorted_ids_keep_their_rows_and_repeated_ids_are_refused(tmp_path: Path) -> None:
    index = _text(["p3", "p1", "日本", "p2"])
    ids = IdIndex.build(index)
    ids.write(tmp_path)
    assert (tmp_path / ROWS_FILE).exists()  # the rows of the sorted ids are written
    mapped = IdIndex.read(tmp_path)
    assert mapped is not None
    assert mapped.rows(["p1", "p2", "p3", "日本", "p4"]).tolist() == [1, 3, 0, 2, -1]
    with pytest.raises(ValueError, match="unique"):
        IdIndex.build(["p1", "p2", "p1"])


def test_an_empty_index_knows_no_id_and_takes_new_ones(tmp_path: Path) -> None:
    empty = IdIndex.build(_text([]))
    assert len(empty) == 0 and empty.rows(["p1", ""]).tolist() == [-1, -1]
    empty.write(tmp_path)
    read = IdIndex.read(tmp_path)
    assert read is not None and len(read) == 0
    grown = read.merged([], ["p2", "p1"], _text(["p1", "p2"]))
    assert grown.rows(["p1", "p2", "p3"]).tolist() == [0, 1, -1]
    assert read.appended(["p2", "p1"]).rows(["p1", "p2"]).tolist() == [1, 0]
    assert IdIndex.read(tmp_path / "nothing") is None


def test_merges_and_appends_follow_the_table_and_write_what_a_fresh_build_would(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    pool = [f"p{i:04d}" for i in rng.choice(5000, 300, replace=False)] + _ODD
    index = _text(sorted(set(pool[:150])))
    ids = IdIndex.build(index)
    for _ in range(6):  # refreshes: some profiles go, some come, some change in place
        removed = [p for p in index if rng.random() < 0.05]
        added = list(dict.fromkeys(p for p in pool if rng.random() < 0.05))
        drop = np.zeros(len(index), dtype=bool)
        for found in (ids.rows(removed), ids.rows(added)):
            drop[found[found >= 0]] = True
        new = _text(added)
        order = id_merge_order(index, drop, new)
        assert ids.merge_order(index, drop, new).tolist() == order.tolist()
        index = _text(list(index.append(new)[order]))
        ids = ids.merged(removed, added, index)
        assert len(ids) == len(index)
        assert ids.rows(pool).tolist() == _pandas_rows(index, pool).tolist()
    for name, written in (("merged", ids), ("built", IdIndex.build(index))):
        (tmp_path / name).mkdir()
        written.write(tmp_path / name)
    assert (tmp_path / "merged" / IDS_FILE).read_bytes() == (
        tmp_path / "built" / IDS_FILE
    ).read_bytes()
    assert not (tmp_path / "merged" / ROWS_FILE).exists()
    tail = [p for p in pool if p not in set(index)][:7]
    appended = ids.appended(tail)
    assert appended.rows(pool).tolist() == _pandas_rows(index.append(_text(tail)), pool).tolist()


def test_a_table_without_an_id_index_file_builds_one(tmp_path: Path, trained_workdir: Path) -> None:
    """A bundle written before id indexes still loads: its table's index is built in memory."""
    from dmp_ml.bundle import FEATURES_DIR, live_bundle_path

    table = FeatureTable.read(live_bundle_path(trained_workdir) / FEATURES_DIR)
    assert table.id_index is not None  # mapped from the bundle
    table.write(tmp_path)
    (tmp_path / IDS_FILE).unlink()
    old = FeatureTable.read(tmp_path)
    assert old.id_index is None
    asked = [*table.frame.index[::97], "nobody"]
    assert old.rows(asked).tolist() == table.rows(asked).tolist()
    assert old.rows(asked).tolist() == _pandas_rows(table.frame.index, asked).tolist()
