"""Cross-fitting: every row is predicted by a fit that never saw it."""

from __future__ import annotations

import numpy as np

from dmp_ml.models.propensity.calibration import Calibrator, cross_fit


def test_cross_fit_never_predicts_a_row_with_a_fit_that_saw_it() -> None:
    y = np.array([0, 1] * 20)
    seen: list[set[int]] = []

    def fit_predict(fit: np.ndarray, ev: np.ndarray) -> np.ndarray:
        assert not set(fit) & set(ev)
        seen.append(set(ev))
        return np.full(len(ev), float(len(seen)))

    out = cross_fit(y, folds=5, seed=0, fit_predict=fit_predict)
    assert out is not None
    assert len(seen) == 5
    assert set().union(*seen) == set(range(len(y)))
    assert sorted(np.unique(out)) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_cross_fit_declines_when_a_class_is_missing_and_calibration_falls_back() -> None:
    y = np.zeros(10, dtype=int)
    assert cross_fit(y, folds=5, seed=0, fit_predict=lambda f, e: np.zeros(len(e))) is None
    raw = np.linspace(-2, 2, 10)
    p = Calibrator.cross_fitted(raw, y, "isotonic", folds=5, seed=0)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-raw)))


def test_cross_fitted_calibration_gives_probabilities_that_still_rank() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=400)
    y = (rng.random(400) < 1 / (1 + np.exp(-2 * raw))).astype(int)
    p = Calibrator.cross_fitted(raw, y, "isotonic", folds=5, seed=0)
    assert p.shape == raw.shape
    assert np.all((p > 0) & (p < 1))
    # calibrated out of fold, the scores still rank buyers above non-buyers
    assert p[y == 1].mean() > p[y == 0].mean() + 0.1
