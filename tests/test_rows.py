"""Duplicate rows are found by hashing, and agree with pandas' own comparison of every row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmp_ml.rows import duplicated_rows


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
