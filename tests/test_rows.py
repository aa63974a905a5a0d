"""Duplicate rows are found by hashing, and agree with pandas' own comparison of every row."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dmp_ml.id_index import IdIndex
from dmp_ml.mapped import map_frame, write_frame
from dmp_ml.rows import (
    OverlaidFrame,
    OverlaidRows,
    distinct,
    duplicated_rows,
    filled_indices,
    id_merge_order,
    stacked_frame,
    stacked_takes,
)


def _log(n: int, seed: int, in_time_order: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 50, n), unit="min"
    )
    frame = pd.DataFrame(
        {
            "event_time": times,
            "profile_id": pd.array(
                [f"p{i}" if i % 7 else None for i in rng.integers(0, 6, n)], dtype="string"
            ),
            "event_type": pd.array(rng.choice(["view", "purchase"], n), dtype="string"),
            "value": np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 3, n).astype(float)),
        }
    )
    return frame.sort_values("event_time", kind="stable") if in_time_order else frame


@pytest.mark.parametrize("n", [0, 1, 2, 500])
@pytest.mark.parametrize("in_time_order", [True, False])
def test_duplicated_rows_matches_pandas(n: int, in_time_order: bool) -> None:
    for seed in range(3):
        frame = _log(n, seed, in_time_order).reset_index(drop=True)
        expected = frame.duplicated(keep="first").to_numpy(bool)
        np.testing.assert_array_equal(duplicated_rows(frame), expected)
        if n == 500:
            assert expected.sum() > 10  # the log does repeat rows, so the check means something


def test_duplicated_rows_of_a_big_log_in_time_order_match_pandas() -> None:
    """Enough rows sharing their time to be narrowed in two halves side by side."""
    rng = np.random.default_rng(7)
    n = 1_200_000
    ids = np.array([f"p{i}" for i in range(400)], dtype=object)
    frame = pd.DataFrame(
        {
            "event_time": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(np.sort(rng.integers(0, 400_000, n)), unit="s"),
            "profile_id": pd.array(ids[rng.integers(0, 400, n)], dtype="string"),
            "value": rng.integers(0, 5, n).astype(float),
        }
    )
    expected = frame.duplicated(keep="first").to_numpy(bool)
    assert 0 < expected.sum() < n
    np.testing.assert_array_equal(duplicated_rows(frame), expected)


def test_a_log_with_dates_only_is_checked_for_duplicates_quickly() -> None:
    """Hundreds of thousands of rows share each time: no comparison of every pair in a run."""
    rng = np.random.default_rng(3)
    n = 1_000_000
    frame = pd.DataFrame(
        {
            "event_time": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(np.sort(rng.integers(0, 4, n)), unit="D"),
            "profile_id": pd.array(rng.integers(0, 50_000, n).astype(str), dtype="string"),
            "value": rng.integers(0, 20, n).astype(float),
        }
    )
    expected = frame.duplicated(keep="first").to_numpy(bool)
    assert 0 < expected.sum() < n
    started = time.process_time()
    found = duplicated_rows(frame)
    assert time.process_time() - started < 20  # pairwise within the runs: far longer
    np.testing.assert_array_equal(found, expected)


def test_overlaid_rows_read_like_the_array_they_stand_for(tmp_path) -> None:
    """Rows changed and appended over a base read back as the plain array changed the same
    way would, by positions, slices and masks; the base (a mapped file) is never written, and
    a copy changes apart from its original."""
    rng = np.random.default_rng(0)
    plain = rng.normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "base.npy", plain)
    rows = OverlaidRows(np.load(tmp_path / "base.npy", mmap_mode="r"))
    rows[np.array([3, 40, 3])] = np.arange(9, dtype=np.float32).reshape(3, 3)
    plain[[3, 40, 3]] = np.arange(9, dtype=np.float32).reshape(3, 3)
    rows.append(np.ones((4, 3), dtype=np.float32))
    plain = np.vstack([plain, np.ones((4, 3), dtype=np.float32)])
    rows[np.array([52, 7])] = -1.0
    plain[[52, 7]] = -1.0
    twin = rows.copy()
    twin[np.array([0])] = 99.0
    assert rows.shape == plain.shape and len(rows) == 54
    for key in (np.array([53, 3, 0, 40, 7, 52]), slice(2, 50, 3), plain[:, 0] > 0, 40, -1):
        np.testing.assert_array_equal(rows[key], plain[key])
    np.testing.assert_array_equal(np.asarray(rows), plain)
    assert twin[0].tolist() == [99.0] * 3 and rows[0].tolist() != [99.0] * 3
    np.testing.assert_array_equal(np.load(tmp_path / "base.npy")[[3, 7]], rows.base[[3, 7]])


def test_stacked_frame_equals_concatenating_and_taking() -> None:
    """The one-copy merge of new rows gives the frame ``concat`` + ``iloc`` gives: values,
    dtypes (categories kept), column order and index."""
    rng = np.random.default_rng(1)
    ids = pd.Index([f"p{i:04d}" for i in range(0, 400, 2)], dtype="string", name="profile_id")
    levels = ["a", "b", "c"]

    def frame(index: pd.Index) -> pd.DataFrame:
        n = len(index)
        return pd.DataFrame(
            {
                "x": rng.normal(size=n),
                "kind": pd.Categorical(rng.choice(levels, n), categories=levels),
                "y": rng.normal(size=n),
                "count": rng.integers(0, 9, n),
            },
            index=index,
        )

    base = frame(ids)
    new = frame(pd.Index(["p0003", "p0151", "p9999", "a"], dtype="string", name="profile_id"))
    drop = np.zeros(len(base), dtype=bool)
    drop[[5, 17]] = True
    order = id_merge_order(base.index, drop, new.index)
    expected = pd.concat([base, new]).iloc[order]
    merged = stacked_frame(base, new, order)
    pd.testing.assert_frame_equal(merged, expected, check_exact=True)
    assert merged.index.is_monotonic_increasing


def test_an_overlaid_frame_reads_like_the_frame_it_stands_for(tmp_path) -> None:
    """New, changed and removed rows over a mapped base frame read back, by position and
    whole, as the frame merged the plain way (concat, drop, id order) does; the base file is
    never written and a merge leaves the frame it came from as it was."""
    rng = np.random.default_rng(3)
    levels = ["a", "b", "c"]

    def frame(ids: list[str]) -> pd.DataFrame:
        n = len(ids)
        return pd.DataFrame(
            {
                "x": rng.normal(size=n),
                "kind": pd.Categorical(rng.choice(levels, n), categories=levels),
                "y": rng.normal(size=n),
            },
            index=pd.Index(ids, dtype="string", name="profile_id"),
        )

    write_frame(tmp_path, "f", frame([f"p{i:03d}" for i in range(0, 200, 2)]))
    base = map_frame(tmp_path, "f")
    base.index = pd.Index(base.index, dtype="string", name="profile_id")
    on_disk = np.load(tmp_path / "f.npy").copy()
    plain = base.copy()
    overlaid = OverlaidFrame(base)
    for step in range(3):
        ids = IdIndex.build(overlaid.index)
        new = frame([f"p{i:03d}" for i in (5 + step, 40, 77 + step, 199 - step)])
        removed = pd.Index([plain.index[10 + step], plain.index[60]], dtype="string")
        drop = plain.index.isin(removed) | plain.index.isin(new.index)
        order = ids.merge_order(overlaid.index, drop, new.index)
        before = overlaid.frame().copy()
        merged = overlaid.merged(new, order)
        pd.testing.assert_frame_equal(overlaid.frame(), before, check_exact=True)
        plain = pd.concat([plain[~drop], new]).sort_index()
        changed = frame([str(i) for i in plain.index[[0, 33, 34]]])
        overlaid = merged.replaced(np.array([0, 33, 34]), changed)
        plain.iloc[[0, 33, 34]] = changed.to_numpy()
        plain["kind"] = plain["kind"].astype(before["kind"].dtype)
        assert overlaid.index.equals(plain.index) and len(overlaid) == len(plain)
        positions = rng.permutation(len(plain))[:25]
        pd.testing.assert_frame_equal(overlaid.take(positions), plain.iloc[positions])
        pd.testing.assert_frame_equal(overlaid.frame(), plain, check_exact=True)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), on_disk)


@pytest.mark.parametrize("n", [0, 3, 5000])
@pytest.mark.parametrize("updated", [0, 40])
def test_stacked_takes_equal_concatenating_and_taking(n: int, updated: int) -> None:
    """Both ways of taking (runs of slices; one gather with the new rows patched over) give
    ``concatenate`` + take, for 2-D rows, mixed dtypes and into given arrays."""
    rng = np.random.default_rng(n + updated)
    ids = pd.Index([f"p{i:05d}" for i in range(0, 2 * n, 2)], dtype="string")
    new = pd.Index([f"p{i:05d}" for i in rng.choice(2 * n + 10, 7, replace=False)], dtype="string")
    new = new[~new.isin(ids)]
    updated = min(updated, n)
    drop = np.zeros(n, dtype=bool)
    drop[rng.choice(n, updated, replace=False)] = True
    order = id_merge_order(ids, drop, new.append(ids[drop]))
    k = len(order) - (n - updated)
    pairs = [
        (rng.normal(size=(n, 3)), rng.normal(size=(k, 3))),
        (rng.integers(0, 9, n), rng.normal(size=k)),
    ]
    into = [np.empty((len(order), 3)), np.empty(len(order))]
    got = stacked_takes(pairs, order)
    assert stacked_takes(pairs, order, out=into) is into
    for (first, second), taken, written in zip(pairs, got, into, strict=True):
        expected = np.concatenate([first, second])[order]
        np.testing.assert_array_equal(taken, expected)
        np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_distinct_keys_are_numpys_unique(n: int) -> None:
    keys = np.random.default_rng(n).integers(-5, 2**40, n) // 3
    np.testing.assert_array_equal(distinct(keys), np.unique(keys))
    np.testing.assert_array_equal(distinct(np.repeat(keys, 3)), np.unique(keys))


@pytest.mark.parametrize("kind", [pa.int8(), pa.int16(), pa.int32(), pa.int64()])
@pytest.mark.parametrize("offset", [0, 3, 9])
def test_filled_indices_are_arrows_fill_null(kind: pa.DataType, offset: int) -> None:
    rng = np.random.default_rng(offset)
    for n in (0, 1, 8, 9, 1001):
        values = pa.array(rng.integers(0, 100, n), type=kind, mask=rng.random(n) < 0.3)
        for part in (values, values.slice(min(offset, n)), values.drop_null()):
            expected = pc.fill_null(part, -1).to_numpy(zero_copy_only=False)
            got = filled_indices(part, -1)
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)
    one_past = pa.array([0, None, 127], type=pa.int8())  # 128 entries: one past needs int16
    np.testing.assert_array_equal(filled_indices(one_past, 128), [0, 128, 127])
