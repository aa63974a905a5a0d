"""Propensity model: labels, calibrated LightGBM, reasons, persistence, baselines, orchestration."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from scipy.stats import spearmanr

from dmp_ml import metrics
from dmp_ml.errors import BundleError, InsufficientDataError
from dmp_ml.features import FeatureSpec, FeatureTable
from dmp_ml.models.propensity import (
    Calibrator,
    PropensityModel,
    RecencyFrequencyBaseline,
    SingleFeatureBaseline,
    align_features,
    make_labels,
    recency_frequency_columns,
    train_propensity,
)
from dmp_ml.models.propensity.baselines import RFMLightGBMBaseline
from dmp_ml.models.propensity.blend import baseline_logit
from dmp_ml.settings import PropensitySettings, Settings

FAST = {"n_estimators": 150, "early_stopping_rounds": 15, "min_child_samples": 20, "n_threads": 1}


def synth(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Profiles whose purchase probability depends on recency, frequency, a tier and a sine."""
    rng = np.random.default_rng(seed)
    recency = rng.exponential(30, n)
    recency[rng.random(n) < 0.2] = np.nan  # never purchased
    count = rng.poisson(3, n).astype(float)
    tier = rng.choice(["gold", "silver", "bronze"], n, p=[0.2, 0.4, 0.4])
    wave = rng.normal(size=n)
    logit = (
        -2.0
        + 0.7 * np.log1p(count)
        - 0.04 * np.nan_to_num(recency, nan=150)
        + np.where(tier == "gold", 1.2, 0.0)
        + 1.0 * np.sin(2 * wave)
        + shift
    )
    p = expit(logit)
    y = (rng.random(n) < p).astype(int)
    X = pd.DataFrame(
        {
            "days_since_last_purchase": recency,
            "purchase_count_90d": count,
            "loyalty_tier": pd.Categorical(tier),
            "wave [odd: name]": wave,
        },
        index=pd.Index([f"s{seed}-{i}" for i in range(n)], name="profile_id", dtype="string"),
    )
    return X, y, p


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
    return {"train": synth(6000, 1), "valid": synth(3000, 2), "test": synth(3000, 3)}


@pytest.fixture(scope="module")
def fitted(data) -> PropensityModel:
    (Xt, yt, _), (Xv, yv, _) = data["train"], data["valid"]
    return PropensityModel(**FAST).fit(Xt, yt, Xv, yv)


# ------------------------------------------------------------------------------------ labels


def _events(rows: list[tuple[str, str | None, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_time": pd.to_datetime([r[0] for r in rows], utc=True),
            "profile_id": pd.array([r[1] for r in rows], dtype="string"),
            "event_type": pd.array([r[2] for r in rows], dtype="string"),
        }
    )


def test_labels_count_target_events_in_the_half_open_window() -> None:
    events = _events(
        [
            ("2026-03-01 00:00", "a", "purchase"),  # at the cutoff: counts
            ("2026-03-30 23:59", "b", "purchase"),  # last minute of the window: counts
            ("2026-03-31 00:00", "c", "purchase"),  # cutoff + horizon: excluded
            ("2026-02-28 23:59", "d", "purchase"),  # before the cutoff: excluded
            ("2026-03-05 00:00", "e", "page_view"),  # not the target event
            ("2026-03-05 00:00", None, "purchase"),  # unresolved: ignored
            ("2026-03-06 00:00", "a", "purchase"),  # second purchase: still 1
        ]
    )
    ids = ["f", "e", "d", "c", "b", "a"]
    labels = make_labels(events, "2026-03-01", 30, "purchase", ids)
    assert labels.index.tolist() == ids
    assert labels.to_dict() == {"f": 0, "e": 0, "d": 0, "c": 0, "b": 1, "a": 1}
    assert labels.name == "label"
    # another target event, and a tz-aware cutoff in another zone (same instant)
    clicks = make_labels(
        events, pd.Timestamp("2026-03-01 01:00", tz="Europe/Berlin"), 30, "page_view", ids
    )
    assert clicks.sum() == 1 and clicks["e"] == 1


# -------------------------------------------------------------------------------- calibrator


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibrator_repairs_overconfident_scores(method: str) -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-2, 1.2, 20_000)
    y = (rng.random(true_logit.size) < expit(true_logit)).astype(int)
    raw = 1.8 * true_logit + 2.5  # overconfident and shifted
    cal = Calibrator.fit(raw[:10_000], y[:10_000], method)
    before = metrics.expected_calibration_error(y[10_000:], expit(raw[10_000:]))
    after = metrics.expected_calibration_error(y[10_000:], cal.predict(raw[10_000:]))
    assert before > 0.1 and after < 0.02
    # monotone, within (0, 1), and JSON round-trips exactly
    grid = np.linspace(-10, 10, 200)
    p = cal.predict(grid)
    assert np.all(np.diff(p) >= 0) and p.min() > 0 and p.max() < 1
    np.testing.assert_array_equal(Calibrator.from_dict(cal.to_dict()).predict(grid), p)


# ------------------------------------------------------------------------------------ model


def test_model_ranks_close_to_the_truth_and_is_calibrated(fitted, data) -> None:
    X, y, p_true = data["test"]
    p = fitted.predict_proba(X)
    assert p.shape == (len(X),) and p.dtype == np.float64
    assert np.all((p > 0) & (p < 1))
    assert metrics.roc_auc(y, p) > metrics.roc_auc(y, p_true) - 0.03
    assert metrics.expected_calibration_error(y, p) < 0.03
    assert abs(p.mean() - y.mean()) < 0.02
    assert 1 <= fitted.best_iteration_ < FAST["n_estimators"]  # early stopping kicked in


def test_validation_report_before_and_after_calibration(fitted, data) -> None:
    _, yv, _ = data["valid"]
    assert set(fitted.validation_) == {"uncalibrated", "calibrated"}
    for report in fitted.validation_.values():
        assert report["n"] == len(yv) and 0.5 < report["roc_auc"] < 1
    pred = fitted.validation_predictions_
    assert list(pred.columns) == ["y", "raw", "p_uncalibrated", "p_calibrated"]
    assert pred["y"].sum() == yv.sum()


def test_calibration_is_evaluated_on_data_the_calibrator_did_not_see(data) -> None:
    """Class weighting distorts probabilities; the cross-fitted calibration repairs it."""
    (Xt, yt, _), (Xv, yv, _) = data["train"], data["valid"]
    weighted = PropensityModel(**FAST, lgbm_params={"scale_pos_weight": 6.0}).fit(Xt, yt, Xv, yv)
    before = weighted.validation_["uncalibrated"]
    after = weighted.validation_["calibrated"]
    assert before["ece"] > 0.06 and after["ece"] < 0.03
    assert after["log_loss"] < before["log_loss"]
    # honest: the in-sample calibrated log-loss is at least as good as the cross-fitted one
    in_sample = metrics.log_loss(
        yv, weighted.calibrator_.predict(weighted.validation_predictions_["raw"])
    )
    assert in_sample <= after["log_loss"] + 1e-9
    X, y, _ = data["test"]
    assert metrics.expected_calibration_error(y, weighted.predict_proba(X)) < 0.04


def test_refit_uses_the_validation_snapshot_with_the_early_stopped_tree_count(fitted, data) -> None:
    X, _, _ = data["test"]
    assert fitted.booster_.current_iteration() == fitted.best_iteration_
    assert fitted.holdout_booster_.current_iteration() == fitted.best_iteration_
    assert not np.allclose(fitted.predict_raw(X), fitted.predict_raw(X, which="holdout"))


def test_fit_rows_on_one_frame_fits_what_fit_on_the_parts_does(fitted, data) -> None:
    (Xt, yt, _), (Xv, yv, _) = data["train"], data["valid"]
    one = PropensityModel(**FAST).fit_rows(pd.concat([Xt, Xv]), np.concatenate([yt, yv]), len(Xt))
    assert one.booster_.model_to_string() == fitted.booster_.model_to_string()
    assert one.holdout_booster_.model_to_string() == fitted.holdout_booster_.model_to_string()
    pd.testing.assert_frame_equal(one.validation_predictions_, fitted.validation_predictions_)


def test_predict_handles_reordered_columns_new_categories_and_plain_strings(fitted, data) -> None:
    X, _, _ = data["test"]
    base = fitted.predict_proba(X)
    shuffled = X[list(reversed(X.columns))]
    np.testing.assert_array_equal(fitted.predict_proba(shuffled), base)
    as_strings = X.assign(loyalty_tier=X["loyalty_tier"].astype("string"))
    np.testing.assert_array_equal(fitted.predict_proba(as_strings), base)
    # a category never seen at fit time is treated as missing, not an error
    unseen = as_strings.copy()
    unseen.loc[unseen.index[:10], "loyalty_tier"] = "platinum"
    p = fitted.predict_proba(unseen)
    np.testing.assert_array_equal(p[10:], base[10:])
    missing_tier = X.assign(loyalty_tier=pd.Categorical([None] * len(X), categories=["gold"]))
    np.testing.assert_array_equal(p[:10], fitted.predict_proba(missing_tier)[:10])


def test_missing_column_is_treated_as_unknown_with_a_warning(fitted, data, caplog) -> None:
    X, _, _ = data["test"]
    with caplog.at_level(logging.WARNING, logger="dmp_ml.models.propensity.model"):
        p = fitted.predict_proba(X.drop(columns=["purchase_count_90d"]))
    assert "purchase_count_90d" in caplog.text
    assert p.shape == (len(X),) and np.isfinite(p).all()


def test_empty_input_gives_empty_output(fitted, data) -> None:
    X, _, _ = data["test"]
    assert fitted.predict_proba(X.iloc[:0]).shape == (0,)
    assert fitted.explain(X.iloc[:0]) == []


def test_explain_gives_top_reasons_with_value_and_direction(fitted, data) -> None:
    X, _, _ = data["test"]
    reasons = fitted.explain(X.iloc[:200])
    assert len(reasons) == 200
    assert all(len(r) == 3 for r in reasons)  # default n_reasons
    for row, rs in zip(X.iloc[:200].itertuples(index=False), reasons, strict=True):
        contribs = [abs(r["contribution"]) for r in rs]
        assert contribs == sorted(contribs, reverse=True)
        for r in rs:
            assert set(r) == {"feature", "value", "direction", "contribution"}
            assert r["direction"] == ("+" if r["contribution"] > 0 else "-")
            assert r["feature"] in X.columns
        tier = [r for r in rs if r["feature"] == "loyalty_tier"]
        if tier:
            assert tier[0]["value"] == row.loyalty_tier
    # the planted drivers dominate; a gold tier pushes up
    top = pd.Series([rs[0]["feature"] for rs in reasons]).value_counts()
    assert top.index[0] in {"days_since_last_purchase", "wave [odd: name]", "purchase_count_90d"}
    gold = [
        r for rs in reasons for r in rs if r["feature"] == "loyalty_tier" and r["value"] == "gold"
    ]
    assert gold and all(r["direction"] == "+" for r in gold)
    # never-purchased recency is reported as a missing value (None), and n is respected
    never = X.index[X["days_since_last_purchase"].isna()][0]
    one = fitted.explain(X.loc[[never]], n=5)[0]
    assert len(one) <= 4
    assert any(r["value"] is None for r in one if r["feature"] == "days_since_last_purchase")


def test_save_and_load_round_trip_without_pickle(fitted, data, tmp_path) -> None:
    X, _, _ = data["test"]
    fitted.info_ = {"target_event": "purchase"}
    fitted.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "holdout_model.txt",
        "model.txt",
        "propensity.json",
    ]
    loaded = PropensityModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(
        loaded.predict_proba(X, which="holdout"), fitted.predict_proba(X, which="holdout")
    )
    assert loaded.explain(X.iloc[:5]) == fitted.explain(X.iloc[:5])
    assert loaded.get_params() == fitted.get_params()
    assert loaded.info_ == {"target_event": "purchase"}
    pd.testing.assert_series_equal(loaded.feature_importance_, fitted.feature_importance_)


def test_load_of_an_incomplete_directory_is_a_bundle_error(tmp_path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(BundleError, match="cannot load propensity model"):
        PropensityModel.load(tmp_path / "m")


def test_unfitted_model_refuses_to_predict(data) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        PropensityModel().predict_proba(data["test"][0])


# --------------------------------------------------------------------------------- baselines


def test_recency_frequency_columns_are_chosen_by_name() -> None:
    cols = [
        "days_since_last_event",
        "days_since_purchase",
        "event_count_30d",
        "purchase_count_total",
        "active_days_7d",
        "n_cookies",  # identity, not frequency
        "event_count_90d__shoes",  # per-category expansion: excluded
        "value_sum_30d",
        "email_open_rate_smoothed",
        "country",
    ]
    assert recency_frequency_columns(cols) == (
        ["days_since_last_event", "days_since_purchase"],
        ["event_count_30d", "purchase_count_total", "active_days_7d"],
    )


def test_baselines_learn_from_recency_and_frequency(data) -> None:
    (Xt, yt, _), (Xv, yv, _) = data["train"], data["valid"]
    rf = RecencyFrequencyBaseline().fit(Xt, yt)
    single = SingleFeatureBaseline().fit(Xt, yt)
    assert rf.columns_ == ["days_since_last_purchase", "purchase_count_90d"]
    assert single.feature_ == "days_since_last_purchase"  # the strongest planted RF signal
    auc_rf = metrics.roc_auc(yv, rf.predict_proba(Xv))
    auc_single = metrics.roc_auc(yv, single.predict_proba(Xv))
    assert 0.6 < auc_single <= auc_rf + 0.01
    # probabilities are sensible (the baselines are logistic fits)
    assert abs(rf.predict_proba(Xv).mean() - yv.mean()) < 0.03


def test_baselines_without_rf_columns_predict_the_base_rate(data) -> None:
    (Xt, yt, _), (Xv, _, _) = data["train"], data["valid"]
    only_other = Xt[["wave [odd: name]"]]
    rf = RecencyFrequencyBaseline().fit(only_other, yt)
    single = SingleFeatureBaseline().fit(only_other, yt)
    assert single.feature_ is None
    np.testing.assert_allclose(rf.predict_proba(Xv), yt.mean())
    np.testing.assert_allclose(single.predict_proba(Xv), yt.mean())


def test_the_rfm_baseline_reads_its_columns_in_place_and_predicts_a_block_at_a_time(
    monkeypatch,
) -> None:
    # the RFM baseline is refit on every snapshot row: a matrix of its columns (beside a list
    # of them, before) was the propensity step's largest moment at 135k profiles
    import lightgbm as lgb

    from dmp_ml.models.propensity import baselines

    monkeypatch.setattr(baselines, "_PREDICT_ROWS", 10_000)
    rng = np.random.default_rng(4)
    n = 50_000
    days = (7, 14, 30, 60, 90, 180, 365)
    X = pd.DataFrame(
        {f"purchase_count_{d}d": rng.poisson(d / 30, n).astype(float) for d in days}
        | {
            "days_since_last_purchase": rng.exponential(40.0, n),
            "value_sum_90d": rng.gamma(2.0, 30.0, n),
        }
    )
    y = (rng.random(n) < expit(-1 + X["purchase_count_30d"] / 2)).astype(int)
    tracemalloc.start()
    try:
        rfm = RFMLightGBMBaseline().fit(X, y)
        fit_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        proba = rfm.predict_proba(X)
        predict_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    matrix = n * len(rfm.columns_) * 8  # what a dense matrix of the columns costs
    assert fit_peak < 0.8 * matrix, fit_peak / matrix
    assert predict_peak < 0.8 * matrix, predict_peak / matrix
    assert metrics.roc_auc(y, proba) > 0.6
    # the same booster a dense matrix of the columns gives, bit for bit
    dense = lgb.train(
        baselines._RFM_LGBM,
        lgb.Dataset(X[rfm.columns_].to_numpy(), label=y, feature_name=rfm._names()),
        num_boost_round=baselines._RFM_ROUNDS,
    )
    assert dense.model_to_string() == rfm.booster_.model_to_string()


# ----------------------------------------------------------------------------- orchestration


def _table(X: pd.DataFrame, as_of: str) -> FeatureTable:
    spec = FeatureSpec(
        version="test",
        as_of=pd.Timestamp(as_of, tz="UTC"),
        columns={c: str(X[c].dtype) for c in X.columns},
        categorical=[c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)],
    )
    return FeatureTable(data=X, hour_of_week=np.zeros((len(X), 168)), spec=spec)


def _snapshots(shift_last: float = 0.0, n: int = 2500):
    out = []
    for k, cutoff in enumerate(["2026-01-01", "2026-01-31", "2026-03-02"]):
        X, y, _ = synth(n, 10 + k, shift=shift_last if k == 2 else 0.0)
        out.append((_table(X, cutoff), pd.Series(y, index=X.index, name="label")))
    return out


def _settings(**kw) -> Settings:
    return Settings(propensity=PropensitySettings(**{**FAST, "horizon_days": 30, **kw}))


def test_train_propensity_validates_on_the_latest_snapshot_and_scores_as_of() -> None:
    snaps = _snapshots()
    X_score, _, _ = synth(1000, 20)
    score_table = _table(X_score, "2026-04-01")
    # order given does not matter: the latest cutoff is the validation snapshot
    result = train_propensity([snaps[2], snaps[0], snaps[1]], score_table, _settings())
    assert result.validation.cutoff == pd.Timestamp("2026-03-02", tz="UTC")
    assert result.train_cutoffs == [pd.Timestamp(d, tz="UTC") for d in ["2026-01-01", "2026-01-31"]]
    assert result.validation.X.index.equals(snaps[2][0].frame.index)
    assert result.counts["train_rows"] == 5000 and result.counts["validation_rows"] == 2500
    assert set(result.metrics) == {
        "model",
        "model_uncalibrated",
        "baseline_rf_logreg",
        "baseline_single",
        "baseline_bgnbd",  # no purchase history columns here: the base rate
        "baseline_rfm_lightgbm",
        "blend",  # the model stacked with the best baseline, cross-fitted
    }
    m = result.metrics
    assert m["model"]["roc_auc"] > m["baseline_rf_logreg"]["roc_auc"]
    assert m["model"]["roc_auc"] > m["baseline_single"]["roc_auc"]
    assert result.baseline_single_feature == "days_since_last_purchase"
    # scores: one row per profile at as_of, calibrated probability, percentile and the raw
    # log-odds it ranks by (kept so that a refresh ranks new scores without re-scoring all)
    s = result.scores
    assert list(s.columns) == ["profile_id", "score", "percentile", "raw"]
    np.testing.assert_array_equal(s["raw"], result.model.predict_raw(X_score))
    assert s.sort_values("raw")["percentile"].is_monotonic_increasing
    assert s["profile_id"].tolist() == X_score.index.tolist()
    assert s["score"].between(0, 1).all() and s["percentile"].between(0, 100).all()
    assert s["percentile"].max() == 100
    # percentile follows the score (ties in the calibrated tails are broken by the raw score)
    assert s.sort_values(["score", "percentile"])["percentile"].is_monotonic_increasing
    np.testing.assert_allclose(s["score"], result.model.predict_proba(X_score))
    assert result.model.info_["validation_cutoff"].startswith("2026-03-02")
    assert set(result.figures()) == {"calibration", "gains", "feature_importance"}
    summary = result.summary()
    assert summary["model_roc_auc"] == m["model"]["roc_auc"]
    assert {"ece_before_calibration", "ece_after_calibration"} <= set(summary)


def test_snapshot_columns_are_aligned_to_the_score_table() -> None:
    snaps = _snapshots()
    # an older snapshot lacks a column (e.g. a top-K category) and has one the score table lacks
    old_table, old_labels = snaps[0]
    odd = old_table.frame.drop(columns=["purchase_count_90d"]).assign(extra_col=1.0)
    snaps[0] = (_table(odd, "2026-01-01"), old_labels)
    X_score, _, _ = synth(500, 21)
    result = train_propensity(snaps, _table(X_score, "2026-04-01"), _settings())
    assert result.model.feature_names_ == list(X_score.columns)
    assert len(result.scores) == 500

    aligned = align_features(odd, X_score)
    assert list(aligned.columns) == list(X_score.columns)
    assert aligned["purchase_count_90d"].isna().all()
    # the columns the snapshot has are its own arrays, not copies
    assert np.shares_memory(
        aligned["days_since_last_purchase"].to_numpy(), odd["days_since_last_purchase"].to_numpy()
    )
    no_tier = align_features(odd.drop(columns=["loyalty_tier"]), X_score)
    assert isinstance(no_tier["loyalty_tier"].dtype, pd.CategoricalDtype)


def test_snapshots_are_stacked_as_their_concatenation_and_let_go_as_copied() -> None:
    """One frame of every labelled row equals ``pd.concat`` of the aligned snapshots (values,
    index, dtypes but that a column float32 in every snapshot stays float32), with their
    labels; the list is emptied as each snapshot is copied."""
    from dmp_ml.models.propensity.snapshots import narrowed, stack_snapshots, widened_copy

    snaps = _snapshots()
    old_table, old_labels = snaps[0]
    odd = old_table.frame.drop(columns=["purchase_count_90d", "loyalty_tier"])
    snaps[0] = (_table(odd, "2026-01-01"), old_labels.iloc[:-5])  # a few rows unlabelled
    # a second count, which one snapshot holds beyond a float32's whole numbers
    for k, (table, label) in enumerate(snaps):
        sessions = np.arange(len(table.frame), dtype=np.float64)
        sessions[3] = 2.0**24 + 1 if k == 1 else sessions[3]
        frame = table.frame.assign(sessions_30d=sessions)
        snaps[k] = (_table(narrowed(frame), str(table.spec.as_of.date())), label)
    X_score = synth(500, 21)[0].assign(sessions_30d=0.0)
    want = pd.concat([align_features(widened_copy(t.frame), X_score) for t, _ in snaps])
    labels = [lab.reindex(t.frame.index).fillna(0).astype(np.int64) for t, lab in snaps]
    got, y = stack_snapshots(snaps, X_score)
    assert snaps == []
    narrow = {c for c in got.columns if got[c].dtype == np.float32}
    assert narrow == {"purchase_count_90d"}  # float32 wherever a snapshot has it
    assert got["sessions_30d"].dtype == np.float64  # float32 in two snapshots of three
    pd.testing.assert_frame_equal(widened_copy(got), want, check_exact=True)
    np.testing.assert_array_equal(y, np.concatenate(labels))
    assert y.dtype == np.int64


def test_a_snapshot_keeps_as_float32_only_the_columns_a_float32_holds_exactly() -> None:
    from dmp_ml.models.propensity.snapshots import narrowed, widened_copy

    n = 200_000  # more rows than one check block: the last block decides for one column
    late = np.zeros(n)
    late[-1] = 0.1
    frame = pd.DataFrame(
        {
            "count": np.arange(n, dtype=np.float64),
            "with_missing": np.where(np.arange(n) % 7 == 0, np.nan, 2.5),
            "fraction": np.linspace(0, 1, n),
            "late_fraction": late,
            "too_large": np.full(n, 1e39),
            "tier": pd.Categorical(["a", "b"] * (n // 2)),
        },
        index=pd.Index([f"p{i}" for i in range(n)], dtype="string", name="profile_id"),
    )
    got = narrowed(frame)
    dtypes = {c: str(got[c].dtype) for c in got.columns}
    assert dtypes == {
        "count": "float32",
        "with_missing": "float32",
        "fraction": "float64",
        "late_fraction": "float64",
        "too_large": "float64",
        "tier": "category",
    }
    pd.testing.assert_frame_equal(widened_copy(got), frame, check_exact=True)
    # nothing of the built frame's float arrays is kept
    for name in ("count", "fraction"):
        assert not np.shares_memory(got[name].to_numpy(), frame[name].to_numpy())


def test_stacking_lets_each_snapshot_go_once_its_rows_are_copied(monkeypatch) -> None:
    import weakref

    from dmp_ml.models.propensity import snapshots as module

    snaps = _snapshots()
    frames = [weakref.ref(table.frame) for table, _ in snaps]
    alive: list[list[bool]] = []  # which snapshots' frames live as each one is aligned
    align = module.align_features

    def spied(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
        alive.append([ref() is not None for ref in frames])
        return align(frame, reference)

    monkeypatch.setattr(module, "align_features", spied)
    module.stack_snapshots(snaps, synth(500, 21)[0])
    assert alive == [[True, True, True], [False, True, True], [False, False, True]]


def test_minimum_data_gate_refuses_with_a_clear_message() -> None:
    snaps = _snapshots()
    small_X, small_y, _ = synth(100, 30)
    snaps[2] = (_table(small_X, "2026-03-02"), pd.Series(small_y, index=small_X.index))
    score_table = _table(synth(100, 22)[0], "2026-04-01")
    n_pos = int(small_y.sum())
    with pytest.raises(InsufficientDataError, match=r"validation snapshot.*minimum 100") as err:
        train_propensity(snaps, score_table, _settings(min_positives=100))
    assert f"has {n_pos} positive" in str(err.value)
    with pytest.raises(InsufficientDataError, match=r"training data.*min_positives/min_negatives"):
        train_propensity(snaps, score_table, _settings(min_negatives=100_000))
    with pytest.raises(InsufficientDataError, match="at least 2 labelled snapshots"):
        train_propensity(snaps[:1], score_table, _settings())


# --------------------------------------------------------------------- snapshots (integration)


def _contract_events(rows: list[tuple[str, str | None, str | None, str]]) -> pd.DataFrame:
    n = len(rows)
    return pd.DataFrame(
        {
            "event_time": pd.to_datetime([r[0] for r in rows], utc=True),
            "cookie_id": pd.array([r[1] for r in rows], dtype="string"),
            "profile_id": pd.array([r[2] for r in rows], dtype="string"),
            "event_type": pd.array([r[3] for r in rows], dtype="string"),
            "channel": pd.array(["web"] * n, dtype="string"),
            "source": pd.array(["first_party"] * n, dtype="string"),
            "campaign_id": pd.array([None] * n, dtype="string"),
            "category": pd.array(["shoes"] * n, dtype="string"),
            "value": [10.0 if r[3] == "purchase" else np.nan for r in rows],
        }
    )


def test_build_snapshots_labels_point_in_time_and_follow_cookies_to_profiles() -> None:
    from dmp_ml.models.propensity import build_snapshots
    from dmp_ml.settings import Settings

    events = _contract_events(
        [
            ("2026-01-20", None, "A", "page_view"),
            ("2026-02-12", None, "A", "purchase"),  # in [02-09, 02-19): first snapshot only
            ("2026-02-01", "c1", None, "page_view"),  # anonymous cookie before 02-19 ...
            ("2026-02-22", "c1", "B", "page_view"),  # ... logs in as B inside the window
            ("2026-02-25", None, "B", "purchase"),  # B buys: anon:c1 at 02-19 is positive
            ("2026-01-25", None, "E", "page_view"),  # E is erased: never appears
            ("2026-02-20", None, "E", "purchase"),
            ("2026-01-28", None, "D", "page_view"),  # D never buys
            ("2026-03-01", None, "D", "purchase"),  # at as_of: outside every window
        ]
    )
    settings = Settings(propensity={"horizon_days": 10, "n_snapshots": 2})
    snaps, score = build_snapshots(events, "2026-03-01", settings, erased=["E"])
    assert [t.spec.as_of for t, _ in snaps] == [
        pd.Timestamp("2026-02-09", tz="UTC"),
        pd.Timestamp("2026-02-19", tz="UTC"),
    ]
    first, second = (labels.to_dict() for _, labels in snaps)
    assert first == {"A": 1, "D": 0, "anon:c1": 0}
    assert second == {"A": 0, "D": 0, "anon:c1": 1}
    assert "E" not in score.frame.index
    for table, labels in snaps:
        assert list(table.frame.columns) == list(score.frame.columns)
        assert labels.index.equals(pd.Index(table.frame.index.astype("string")))
    # the score table can be passed in instead of being rebuilt
    again, same = build_snapshots(events, "2026-03-01", settings, erased=["E"], score_table=score)
    assert same is score and [lab.to_dict() for _, lab in again] == [first, second]


@pytest.mark.slow
def test_demo_world_end_to_end_beats_the_baselines() -> None:
    from dmp_ml.demo import generate_demo_world
    from dmp_ml.models.propensity import build_snapshots
    from dmp_ml.settings import Settings

    world = generate_demo_world(1500, 75, seed=3)
    settings = Settings(propensity={"horizon_days": 15, "n_snapshots": 3, "n_threads": 1})
    snaps, score = build_snapshots(world.events, world.end, settings, world.profiles, world.consent)
    result = train_propensity(snaps, score, settings)
    m = result.metrics
    assert m["model"]["roc_auc"] > 0.7
    assert m["model"]["roc_auc"] > m["baseline_single"]["roc_auc"]
    assert m["model"]["ece"] < 0.05
    assert result.scores["profile_id"].tolist() == score.frame.index.tolist()
    reasons = result.model.explain(score.frame.head(20))
    assert all(1 <= len(r) <= 3 for r in reasons)


# ------------------------------------------------------------------------- bundle protocol


def test_propensity_model_keeps_the_bundle_protocol(fitted, data, tmp_path) -> None:
    from dmp_ml.models import BundleModel, model_class

    assert model_class("propensity") is PropensityModel and PropensityModel.name == "propensity"
    assert isinstance(fitted, BundleModel)
    settings = Settings(propensity={"num_leaves": 15, "n_threads": 2, "calibration": "sigmoid"})
    built = PropensityModel.from_settings(settings)
    assert (built.num_leaves, built.n_threads, built.calibration) == (15, 2, "sigmoid")
    assert built.learning_rate == settings.propensity.learning_rate
    X = data["test"][0]
    loaded = PropensityModel.load(fitted.save(tmp_path / "m"), n_threads=2)
    assert loaded.n_threads == 2
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


def test_forget_drops_the_validation_rows_it_holds(fitted) -> None:
    import copy

    model = copy.deepcopy(fitted)
    ids = model.validation_predictions_.index[:3].tolist()
    assert model.forget([*ids, "never-seen"]) == 3
    assert not model.validation_predictions_.index.isin(ids).any()
    assert model.forget(ids) == 0


def test_rescore_scores_touched_profiles_and_ranks_them_among_the_others(fitted, data) -> None:
    X = data["test"][0].iloc[:200]
    raw = fitted.predict_raw(X)
    touched = X.index[:5]  # rescored; the next two are removed: their old scores go too
    new_rows = X.loc[touched].assign(purchase_count_90d=40.0)  # bought a lot since
    new_rows.loc[touched[0], "days_since_last_purchase"] = 0.0
    new = pd.Index(["brand-new"], dtype="string", name="profile_id")
    features = pd.concat([new_rows, X.iloc[[10]].set_axis(new)])
    # the population's scores sorted once; the touched profiles' old ones taken out by search
    fresh = fitted.rescore(features, np.sort(raw), raw[:7])
    assert list(fresh.columns) == ["score", "percentile", "raw"]
    np.testing.assert_array_equal(fresh["raw"], fitted.predict_raw(features))
    np.testing.assert_allclose(fresh["score"], fitted.predict_proba(features))
    # each new score ranks among the untouched profiles' exactly as a full re-sort ranks it
    others = np.sort(raw[7:])
    want = 100.0 * (np.searchsorted(others, fresh["raw"], side="right") + 1) / (len(others) + 1)
    np.testing.assert_array_equal(fresh["percentile"].to_numpy(), want)
    assert fresh.loc[touched[0], "score"] > fitted.predict_proba(X.iloc[[0]])[0]
    # equal scores: a tie taken out counts once, as in the re-sort
    tied = np.sort(np.concatenate([raw[7:], raw[:3], raw[:3]]))
    again = fitted.rescore(features, tied, raw[:3])
    others = np.sort(np.concatenate([raw[7:], raw[:3]]))
    want = 100.0 * (np.searchsorted(others, again["raw"], side="right") + 1) / (len(others) + 1)
    np.testing.assert_array_equal(again["percentile"].to_numpy(), want)


# ------------------------------------------------------------------- leaf size by validation


def test_leaf_size_candidates_scale_with_training_rows() -> None:
    model = PropensityModel(min_child_samples=100, min_child_fractions=(0.005, 0.02, 0.05))
    assert model.leaf_size_candidates(200) == [10, 5]  # 1 and 4 rows are raised to the floor
    assert model.leaf_size_candidates(2000) == [100, 40, 10]
    assert model.leaf_size_candidates(100_000) == [100]  # large data: one fit, as before


def test_small_training_set_gets_a_leaf_size_that_can_split() -> None:
    """Under 200 rows (Online Retail at a 90-day horizon): a leaf size of 100 cannot split."""
    (Xt, yt, _), (Xv, yv, _) = synth(190, 11), synth(1500, 12)
    fixed = PropensityModel(**{**FAST, "min_child_samples": 100, "min_child_fractions": (1.0,)})
    fixed.fit(Xt, yt, Xv, yv)
    chosen = PropensityModel(**{**FAST, "min_child_samples": 100}).fit(Xt, yt, Xv, yv)
    assert fixed.min_child_samples_ == 100
    assert chosen.min_child_samples_ < 100
    assert set(chosen.leaf_size_auc_) == set(chosen.leaf_size_candidates(len(yt)))
    best = max(chosen.leaf_size_auc_.values())
    assert chosen.leaf_size_auc_[chosen.min_child_samples_] >= best - 0.002
    auc_fixed = fixed.validation_["uncalibrated"]["roc_auc"]
    auc_chosen = chosen.validation_["uncalibrated"]["roc_auc"]
    assert fixed.best_iteration_ <= 2 and chosen.best_iteration_ > 2
    assert auc_chosen > auc_fixed + 0.05


def test_chosen_leaf_size_survives_save_and_load(tmp_path) -> None:
    (Xt, yt, _), (Xv, yv, _) = synth(400, 13), synth(800, 14)
    model = PropensityModel(**FAST).fit(Xt, yt, Xv, yv)
    loaded = PropensityModel.load(model.save(tmp_path / "m"))
    assert loaded.min_child_samples_ == model.min_child_samples_
    assert loaded.leaf_size_auc_ == model.leaf_size_auc_


def test_the_blend_serves_when_it_beats_model_and_baselines_held_out(tmp_path) -> None:
    """A model of 20 small stumps sees the tier and the wave but is weak on recency and count,
    the RF baseline sees only those: their stack, cross-fitted on the validation snapshot,
    beats both, and it is what answers."""
    snaps = _snapshots()
    X_score, _, p_score = synth(3000, 20)
    crippled = _settings(n_estimators=20, num_leaves=2, min_child_fractions=[0.005])
    result = train_propensity(snaps, _table(X_score, "2026-04-01"), crippled)
    aucs = result.candidates
    assert result.served == "blend"
    assert aucs["blend"] > max(v for k, v in aucs.items() if k != "blend")
    assert result.model.blend_.baseline == max(
        (k for k in aucs if k.startswith("baseline_")), key=lambda k: aucs[k]
    )
    assert result.summary()["served_roc_auc"] == aucs["blend"]
    # served on new profiles: better than the model and its baseline alone, and calibrated
    model = result.model
    score = result.scores["score"].to_numpy()
    baseline = model.baseline_.predict_proba(X_score)
    alone = model.predict_raw(X_score) - model.blend_.b * baseline_logit(baseline)  # a * model
    assert model.blend_.a > 0 and model.blend_.b > 0

    def agreement(s: np.ndarray) -> float:  # rank correlation with the planted probabilities
        return float(spearmanr(p_score, s)[0])

    assert agreement(score) > agreement(baseline) + 0.005
    assert agreement(score) > agreement(alone) + 0.02
    assert abs(score.mean() - p_score.mean()) < 0.01
    # it survives save and load, and explains with the model's reasons
    model.save(tmp_path / "p")
    again = PropensityModel.load(tmp_path / "p")
    assert again.served == "blend"
    np.testing.assert_allclose(again.predict_proba(X_score), score)
    reasons = again.explain(X_score.iloc[:5])
    assert all(r["feature"] in X_score.columns for rs in reasons for r in rs)


def test_packed_validation_features_score_as_the_frame_did(fitted, data) -> None:
    """The train step holds the validation snapshot's features packed until the champion gate
    reads them: unpacked, they are the same frame and score the same, bit for bit."""
    from dmp_ml.models.propensity.step import pack_frame, unpack_frame

    X = data["valid"][0].copy()
    X["loyalty_tier"] = X["loyalty_tier"].cat.add_categories(["platinum"])  # unused category
    X.iloc[:5, 0] = np.nan
    packed = pack_frame(X)
    back = unpack_frame(packed)
    pd.testing.assert_frame_equal(back, X, check_exact=True)
    assert packed[0].size < X.memory_usage(deep=True).sum()
    for which in ("final", "holdout"):
        np.testing.assert_array_equal(
            fitted.predict_raw(back, which=which), fitted.predict_raw(X, which=which)
        )
