"""Metrics a campaign analyst reads off the propensity report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from dmp_ml import metrics as m


def _calibrated_sample(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(1, 6, size=n)
    y = (rng.random(n) < p).astype(int)
    return y, p


def test_ranking_metrics_on_known_examples() -> None:
    y = [0, 0, 1, 1]
    assert m.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert m.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert m.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert m.pr_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_single_class_gives_nan_not_an_exception() -> None:
    assert math.isnan(m.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(m.pr_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(m.lift_at([0, 0, 0], [0.1, 0.2, 0.3]))
    report = m.classification_report([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(report["roc_auc"]) and report["positive_rate"] == 0.0


def test_log_loss_and_brier_match_hand_computation() -> None:
    y = np.array([1, 0])
    p = np.array([0.8, 0.4])
    assert m.log_loss(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert m.brier(y, p) == pytest.approx((0.04 + 0.16) / 2)
    # certain and wrong is large but finite
    assert math.isfinite(m.log_loss([1], [0.0]))


def test_ece_small_for_calibrated_and_large_for_shifted_scores() -> None:
    y, p = _calibrated_sample()
    assert m.expected_calibration_error(y, p) < 0.01
    assert m.expected_calibration_error(y, np.clip(p * 2, 0, 1)) > 0.1


def test_calibration_curve_uses_equal_mass_bins() -> None:
    y, p = _calibrated_sample(n=1_000)
    curve = m.calibration_curve(y, p, n_bins=10)
    assert list(curve.columns) == ["mean_predicted", "observed_rate", "count"]
    assert curve["count"].tolist() == [100] * 10
    assert curve["mean_predicted"].is_monotonic_increasing


def test_lift_and_capture_at_top_decile() -> None:
    # 100 profiles, 10 positives, all ranked in the top decile
    y = np.zeros(100, dtype=int)
    y[:10] = 1
    p = np.linspace(1, 0, 100)
    assert m.lift_at(y, p) == pytest.approx(10.0)
    assert m.capture_rate_at(y, p) == pytest.approx(1.0)
    # scores carrying no information: lift ~ 1 on average
    y, _ = _calibrated_sample()
    noise = np.random.default_rng(1).random(y.size)
    assert m.lift_at(y, noise) == pytest.approx(1.0, abs=0.15)
    assert m.capture_rate_at(y, noise) == pytest.approx(0.1, abs=0.02)


def test_cumulative_gains_runs_from_origin_to_one() -> None:
    y, p = _calibrated_sample(n=5_000)
    gains = m.cumulative_gains(y, p)
    assert gains.iloc[0].tolist() == [0.0, 0.0]
    assert gains.iloc[-1].tolist() == [1.0, 1.0]
    assert gains["fraction_captured"].is_monotonic_increasing
    # informative scores beat the diagonal
    at_10 = np.interp(0.1, gains["fraction_targeted"], gains["fraction_captured"])
    assert at_10 == pytest.approx(m.capture_rate_at(y, p), abs=0.01)
    assert at_10 > 0.2


def test_classification_report_is_plain_floats() -> None:
    y, p = _calibrated_sample(n=2_000)
    report = m.classification_report(y, p)
    assert set(report) >= {
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "ece",
        "lift_top_decile",
        "capture_top_decile",
    }
    assert all(type(v) is float for v in report.values())
    assert 0.6 < report["roc_auc"] < 0.9


def test_mismatched_or_nan_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="length"):
        m.roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        m.brier([0, 1], [0.5, float("nan")])


def test_plots_are_figures_that_save_as_png(tmp_path) -> None:
    y, p = _calibrated_sample(n=2_000)
    figs = [
        m.plot_calibration(y, {"before": np.clip(p * 1.5, 0, 1), "after": p}),
        m.plot_gains(y, {"model": p, "random": np.random.default_rng(0).random(y.size)}),
        m.plot_feature_importance(pd.Series({"a": 3.0, "b": 1.0, "c": 2.0}, name="gain")),
    ]
    for i, fig in enumerate(figs):
        assert isinstance(fig, Figure)
        path = tmp_path / f"{i}.png"
        fig.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
