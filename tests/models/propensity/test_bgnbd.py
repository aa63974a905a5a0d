"""The BG/NBD buy-till-you-die baseline on sparse logs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import dmp_ml.demo
from dmp_ml import metrics
from dmp_ml.models.propensity import build_snapshots
from dmp_ml.models.propensity.baselines import (
    BASELINES,
    BGNBDBaseline,
    baseline_from_dict,
    bgnbd_expected,
    choose_served,
)
from dmp_ml.settings import Settings

FAST = {"n_estimators": 120, "early_stopping_rounds": 15, "min_child_samples": 20, "n_threads": 1}


@pytest.fixture(scope="module")
def sparse() -> tuple[list, object, Settings]:
    """Labelled snapshots and the score table of a small sparse retail world (30-day horizon)."""
    world = dmp_ml.demo.generate_retail_world(600, days=365, seed=5)
    settings = Settings()
    settings = settings.model_copy(
        update={"propensity": settings.propensity.model_copy(update={**FAST, "horizon_days": 30})}
    )
    as_of = world.events["event_time"].max().floor("D") - pd.Timedelta(days=30)
    snapshots, score_table = build_snapshots(
        world.events, as_of, settings, world.profiles, world.consent
    )
    return snapshots, score_table, settings


def _history_frame(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> pd.DataFrame:
    """Feature-table columns of BG/NBD histories given in weeks (as the feature builder names
    them, in days)."""
    return pd.DataFrame(
        {
            "purchase_days_total": x + 1.0,
            "days_since_purchase": (T - t_x) * 7.0,
            "purchase_tenure_days": T * 7.0,
        }
    )


def test_the_fit_recovers_planted_bgnbd_parameters_from_the_feature_columns() -> None:
    # histories drawn from BG/NBD with the CDNOW parameters of Fader, Hardie and Lee (2005)
    from lifetimes.generate_data import beta_geometric_nbd_model

    planted = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    np.random.seed(0)  # lifetimes draws from numpy's global generator
    sim = beta_geometric_nbd_model(39, size=4000, **planted)
    X = _history_frame(*(sim[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T")))
    y = np.zeros(len(X), dtype=int)
    y[:200] = 1
    bgnbd = BGNBDBaseline("purchase", horizon_days=91).fit(X, y)
    assert bgnbd.params_ is not None
    for name, value in planted.items():
        assert bgnbd.params_[name] == pytest.approx(value, rel=0.35), name
    # more repeat purchases, same recency and age: more expected purchases
    more = _history_frame(np.array([1.0, 5.0]), np.array([20.0, 20.0]), np.array([30.0, 30.0]))
    expected = bgnbd.expected_purchases(more)
    assert 0 < expected[0] < expected[1]


def test_bgnbd_ranks_a_later_snapshot_of_a_sparse_world_and_round_trips(sparse) -> None:
    snapshots, _, _ = sparse
    (X_train, y_train), (X_test, y_test) = [(t.frame, lab.to_numpy()) for t, lab in snapshots[-2:]]
    bgnbd = BASELINES["baseline_bgnbd"]("purchase", 30).fit(X_train, y_train)
    assert bgnbd.params_ is not None and bgnbd.model_ is not None
    p = bgnbd.predict_proba(X_test)
    assert metrics.roc_auc(y_test, p) > 0.7  # far better than chance on held-out time
    never = X_test["purchase_count_total"].to_numpy() == 0
    assert np.all(bgnbd.expected_purchases(X_test)[never] == 0)
    # the state is plain JSON and rebuilds the same predictions and reasons
    state = json.loads(json.dumps(bgnbd.to_dict()))
    loaded = baseline_from_dict(state)
    np.testing.assert_allclose(loaded.predict_proba(X_test), p)
    names, contrib = loaded.contributions(X_test)
    assert names == ["purchase_expected_bgnbd", "never_purchase"] and contrib.shape[1] == 2
    assert list(loaded.reason_inputs(X_test).columns) == names


def test_repeat_purchases_are_days_not_order_lines() -> None:
    # an order-line log: every basket is many rows with the same timestamp or minutes apart
    as_of = pd.Timestamp("2024-06-01", tz="UTC")
    one_day = [
        pd.Timestamp("2024-03-01 10:00", tz="UTC") + pd.Timedelta(minutes=i) for i in range(10)
    ]
    two_days = one_day[:5] + [t + pd.Timedelta(days=30) for t in one_day[5:]]
    times = one_day + two_days
    log = pd.DataFrame(
        {
            "event_time": pd.DatetimeIndex(times).as_unit("ns"),
            "cookie_id": pd.array([None] * 20, dtype="string"),
            "profile_id": pd.array(["one_day"] * 10 + ["two_days"] * 10, dtype="string"),
            "event_type": pd.array(["purchase"] * 20, dtype="string"),
            "value": np.full(20, 5.0),
        }
    )
    X = dmp_ml.build_features(log, as_of).frame.loc[["one_day", "two_days"]]
    assert X["purchase_count_total"].tolist() == [10, 10]
    x, t_x, T = BGNBDBaseline("purchase").history(X)
    assert x.tolist() == [0, 1]
    age = (as_of - one_day[0]) / pd.Timedelta(days=1)
    np.testing.assert_allclose(t_x, [0.0, 30 + 9 / 1440])  # first line to the last
    np.testing.assert_allclose(T, [age, age])


def test_a_log_where_nobody_drops_out_still_fits_and_ranks() -> None:
    # Poisson purchases at Gamma-distributed rates, no drop-out: the likelihood peaks at the
    # edge (a -> 0) and the optimiser stops short of its default tolerance there (in this
    # draw under every penalty too: the baseline predicted the base rate before the looser one)
    rng = np.random.default_rng(5)
    rate = rng.gamma(0.7, 1 / 8.8, 1000)  # purchases a week
    T = rng.uniform(0.05, 30, 1000)
    x = rng.poisson(rate * T).astype(float)
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), 1), 0.0)  # the last of x in (0, T)
    y = (rng.poisson(rate * 4) > 0).astype(int)
    bgnbd = BGNBDBaseline("purchase", horizon_days=28).fit(_history_frame(x, t_x, T), y)
    assert bgnbd.params_ is not None and bgnbd.params_["a"] < 1e-3  # nobody drops out
    assert metrics.roc_auc(y, bgnbd.predict_proba(_history_frame(x, t_x, T))) > 0.7


def test_the_guard_can_serve_bgnbd() -> None:
    aucs = {"model": 0.70, "baseline_rf_logreg": 0.71, "baseline_bgnbd": 0.74}
    assert choose_served(aucs) == "baseline_bgnbd"


def test_expected_purchases_match_the_closed_form_and_stay_finite_where_it_breaks() -> None:
    from lifetimes import BetaGeoFitter

    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, 500).astype(float)
    T = rng.uniform(0.5, 60.0, 500)
    t_x = np.where(x > 0, T * rng.uniform(0, 1, 500), 0.0)
    cdnow = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(cdnow)
    closed = fitter.conditional_expected_number_of_purchases_up_to_time(13.0, x, t_x, T)
    np.testing.assert_allclose(bgnbd_expected(cdnow, 13.0, x, t_x, T), closed, rtol=1e-3)
    # a log where nobody drops out fits a and b near 0 (these are a planted world's): the
    # closed form is NaN for everyone without a repeat, who must still be ranked by their age
    # (no drop-out: (r + x) / (alpha + T) a week)
    bgnbd = BGNBDBaseline("purchase", horizon_days=28)
    bgnbd.params_ = {"r": 3.38, "alpha": 6.96, "a": 8.4e-17, "b": 1.7e-5}
    expected = bgnbd.expected_purchases(_history_frame(x, t_x, T))
    assert np.isfinite(expected).all()
    once = x == 0
    np.testing.assert_allclose(expected[once], 3.38 / (6.96 + T[once]) * 4.0, rtol=1e-3)


def test_a_bundle_fitted_on_order_lines_keeps_scoring_as_it_was_trained() -> None:
    # a BG/NBD state saved before purchase days were counted: its parameters were fitted on
    # order lines (at most one repeat a day), and its feature table has no purchase_days_total
    X = pd.DataFrame(
        {
            "purchase_count_total": [10.0, 3.0, 0.0],
            "days_since_purchase": [6.0, 40.0, np.nan],
            "purchase_tenure_days": [7.0, 100.0, np.nan],  # first and last a day apart
        }
    )
    state = {
        "kind": "bgnbd",
        "target_event": "purchase",
        "horizon_days": 30.0,
        "penalizer": 0.0,
        "base_rate": 0.1,
        "params": {"r": 0.5, "alpha": 5.0, "a": 0.5, "b": 2.0},
        "coef": [1.5, -1.0],
        "intercept": -2.0,
    }
    old = baseline_from_dict(state)
    x, t_x, T = old.history(X)
    np.testing.assert_array_equal(x[:2], [1, 2])  # ten lines a day apart: one repeat
    np.testing.assert_array_equal(t_x[:2], [1, 60])
    assert np.isnan(T[2])
    assert old.expected_purchases(X)[:2].min() > 0  # a refreshed buyer is scored, not zeroed
    assert baseline_from_dict(state | {"occasions": "days"}).history(X) is None  # no such column
