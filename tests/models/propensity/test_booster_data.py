"""LightGBM reads a prepared frame in place: the same boosters, without a copy of the frame."""

from __future__ import annotations

import tracemalloc

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dmp_ml.models.propensity import booster_data

PARAMS = {
    "objective": "binary",
    "num_leaves": 15,
    "min_data_in_leaf": 300,  # pre-filters the rare column below
    "min_data_per_group": 300,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "bin_construct_sample_cnt": 2000,  # fewer than the rows: the bins come from a sample
    "seed": 3,
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
    "verbosity": -1,
}


def prepared(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A frame shaped like ``PropensityModel._prepare``'s: separate float64 columns with NaN,
    a categorical one with missing values and an unused category between them."""
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    for i in range(12):
        x = rng.gamma(1.0, 3.0, n)
        x[rng.random(n) < 0.3] = 0.0
        x[rng.random(n) < 0.05] = np.nan
        cols[f"f{i}"] = np.round(x) if i % 3 == 0 else x
    cols["f12"] = pd.Categorical(
        rng.choice(["a", "b", "c", None], n), categories=["a", "b", "c", "unused"]
    )
    cols["f13"] = np.where(rng.random(n) < 0.001, 1.0, 0.0)
    X = pd.DataFrame(cols, copy=False)
    logit = 0.3 * X["f1"].fillna(0) - 0.2 * X["f4"].fillna(0) + (X["f12"] == "a") - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).to_numpy(dtype=np.float64)
    return X, y


def _fit(train: lgb.Dataset, valid: lgb.Dataset) -> lgb.Booster:
    return lgb.train(
        PARAMS,
        train,
        num_boost_round=60,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(5, verbose=False)],
    )


def test_boosters_equal_the_ones_the_frame_gives() -> None:
    X, y = prepared(12_000, 0)
    cut = 8_000
    Xt, Xv = X.iloc[:cut], X.iloc[cut:]
    framed = lgb.Dataset(Xt, y[:cut], categorical_feature=["f12"])
    expected = _fit(framed, lgb.Dataset(Xv, y[cut:], reference=framed))
    read = booster_data.dataset(Xt, y[:cut], ["f12"])
    got = _fit(read, booster_data.dataset(Xv, y[cut:], ["f12"], reference=read))
    assert got.model_to_string() == expected.model_to_string()
    infos = next(ln for ln in got.model_to_string().splitlines() if ln.startswith("feature_infos"))
    assert infos.endswith(" none")  # the rare column was pre-filtered by the leaf size
    # predictions a block at a time are the frame's, and new frames are categorised as trained
    np.testing.assert_array_equal(
        booster_data.predict(got, Xv, raw_score=True), expected.predict(Xv, raw_score=True)
    )
    assert booster_data.predict(got, Xv.iloc[:0]).shape == (0,)


def test_float32_columns_give_the_boosters_of_the_float64_values_they_hold() -> None:
    """The labelled rows keep whole-number columns as float32: LightGBM reads them in place
    as the same values, so the Dataset and every booster are the float64 frame's."""
    X, y = prepared(12_000, 4)
    whole = [c for c in X.columns if c != "f12" and np.array_equal(X[c], X[c].round(), True)]
    assert len(whole) >= 4  # f0, f3, f6, f9 and the rare f13
    narrow = X.astype({c: np.float32 for c in whole})
    cut = 8_000
    results = []
    for frame in (X, narrow):
        train = booster_data.dataset(frame.iloc[:cut], y[:cut], ["f12"])
        valid = booster_data.dataset(frame.iloc[cut:], y[cut:], ["f12"], reference=train)
        results.append(_fit(train, valid))
    assert results[1].model_to_string() == results[0].model_to_string()
    np.testing.assert_array_equal(
        booster_data.predict(results[1], narrow.iloc[cut:], raw_score=True),
        booster_data.predict(results[0], X.iloc[cut:], raw_score=True),
    )
    table = booster_data.dataset(narrow, y, ["f12"]).data
    assert table.schema.field("f0").type == pa.float32()  # read in place, not widened


def test_the_frame_is_not_copied() -> None:
    X, y = prepared(200_000, 1)
    size = sum(X[c].to_numpy().nbytes for c in X.columns if X[c].dtype == np.float64)

    def traced_peak(make) -> int:
        tracemalloc.start()
        try:
            make().construct()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    params = {"verbosity": -1, "bin_construct_sample_cnt": 2000}
    frame_peak = traced_peak(lambda: lgb.Dataset(X, y, categorical_feature=["f12"], params=params))
    read_peak = traced_peak(lambda: booster_data.dataset(X, y, ["f12"]))
    assert frame_peak >= size  # what LightGBM copies from a frame
    assert read_peak < size / 4


def test_an_empty_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        booster_data.dataset(pd.DataFrame({"f0": np.empty(0)}), np.empty(0), [])
