"""A stacked blend of the LightGBM model and one plain baseline, the guard's last candidate.

When the model and the best baseline each see something the other misses, a logistic
regression on their two log-odds can beat both. It is fitted on the validation snapshot only
(the holdout booster and the holdout baseline score it, neither trained on it) and judged
there by cross-fitting: every validation row is scored by a stack fitted on the other folds,
so its held-out ROC-AUC is as honest as the baselines'. Served, it combines the final booster
and the final baseline with the stack fitted on every validation row, and a calibrator fitted
on the stacked validation scores maps it to a probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.linear_model import LogisticRegression

from dmp_ml.models.propensity.calibration import cross_fit

__all__ = ["BLEND", "Blend", "baseline_logit"]

BLEND = "blend"
"""The guard's name of the blend candidate."""


def baseline_logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of a baseline's probabilities (clipped off 0 and 1), shape (n,)."""
    return np.asarray(logit(np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)))


@dataclass(frozen=True)
class Blend:
    """``raw = a * model_log_odds + b * baseline_log_odds + c``; JSON-serialisable.

    Attributes
    ----------
    baseline : str
        Report name of the blended baseline (e.g. ``baseline_rf_logreg``).
    a, b, c : float
        Stack coefficients of the model, of the baseline, and the intercept.
    """

    baseline: str
    a: float
    b: float
    c: float

    def raw(self, model_raw: np.ndarray, baseline_raw: np.ndarray) -> np.ndarray:
        """Blended log-odds, shape (n,), from the two inputs' log-odds (n,)."""
        return self.a * np.asarray(model_raw) + self.b * np.asarray(baseline_raw) + self.c

    @classmethod
    def fit(
        cls, baseline: str, model_raw: np.ndarray, baseline_raw: np.ndarray, y: np.ndarray
    ) -> Blend:
        """The stack fitted on every row: inputs (n,) log-odds, ``y`` (n,) 0/1."""
        lr = LogisticRegression(C=1.0, max_iter=500)
        lr.fit(np.column_stack([model_raw, baseline_raw]), np.asarray(y, dtype=np.int64))
        a, b = (float(v) for v in lr.coef_[0])
        return cls(baseline=baseline, a=a, b=b, c=float(lr.intercept_[0]))

    @classmethod
    def cross_fitted(
        cls,
        model_raw: np.ndarray,
        baseline_raw: np.ndarray,
        y: np.ndarray,
        folds: int,
        seed: int,
    ) -> np.ndarray | None:
        """Out-of-fold blended log-odds (n,): no row scored by a stack fitted on it.

        None when the labels cannot be split into two folds with both classes.
        """
        y = np.asarray(y, dtype=np.int64)

        def fit_predict(fit: np.ndarray, ev: np.ndarray) -> np.ndarray:
            stack = cls.fit("", model_raw[fit], baseline_raw[fit], y[fit])
            return stack.raw(model_raw[ev], baseline_raw[ev])

        return cross_fit(y, folds, seed, fit_predict)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Blend:
        return cls(
            baseline=str(state["baseline"]),
            a=float(state["a"]),
            b=float(state["b"]),
            c=float(state["c"]),
        )
