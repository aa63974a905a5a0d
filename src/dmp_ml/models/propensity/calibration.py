"""The monotone map from the booster's raw score (log-odds) to a probability.

Fitted on the validation snapshot only (see :mod:`.model`); JSON-serialisable so a bundle and an
MLflow artifact carry it as plain numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

__all__ = ["Calibrator", "cross_fit"]

logger = logging.getLogger(__name__)


def cross_fit(
    y: np.ndarray,
    folds: int,
    seed: int,
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray | None:
    """Out-of-fold predictions (n,): every row predicted by a fit that did not see it.

    ``fit_predict(fit_idx, eval_idx)`` fits on the rows ``fit_idx`` and returns predictions for
    ``eval_idx``. Stratified folds (at most ``folds``, fewer when a class is rarer), shuffled
    with ``seed``. None when ``y`` (n,) cannot be split into two folds holding both classes.
    """
    y = np.asarray(y, dtype=np.int64)
    n_pos = int(y.sum())
    k = min(folds, n_pos, len(y) - n_pos)
    if k < 2:
        return None
    out = np.empty(len(y), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit_idx, eval_idx in splitter.split(np.zeros((len(y), 1)), y):
        out[eval_idx] = fit_predict(fit_idx, eval_idx)
    return out


@dataclass(frozen=True)
class Calibrator:
    """Monotone map from LightGBM raw score (log-odds) to probability; JSON-serialisable.

    ``isotonic``: piecewise-linear through the centres of the isotonic (PAV) blocks, clipped at
    the ends; it keeps the isotonic fit's calibration but is strictly increasing between the
    first and last block, so it does not create large ties in the ranking.
    ``sigmoid``: Platt scaling, ``p = expit(a * score + b)``.
    """

    method: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0

    def predict(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(raw, np.asarray(self.x), np.asarray(self.y))
        if self.method == "sigmoid":
            return expit(self.a * raw + self.b)
        if self.method == "identity":
            return expit(raw)
        raise ValueError(f"unknown calibration method {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "x": list(self.x),
            "y": list(self.y),
            "a": self.a,
            "b": self.b,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        return cls(
            method=str(data["method"]),
            x=tuple(float(v) for v in data.get("x", ())),
            y=tuple(float(v) for v in data.get("y", ())),
            a=float(data.get("a", 1.0)),
            b=float(data.get("b", 0.0)),
        )

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray, method: str) -> Calibrator:
        """Fit on raw scores ``raw`` (n,) and labels ``y`` (n,)."""
        raw = np.asarray(raw, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if method == "sigmoid":
            lr = LogisticRegression(C=1e6, max_iter=1000)
            lr.fit(raw.reshape(-1, 1), y)
            return cls(method="sigmoid", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
        if method != "isotonic":
            raise ValueError(f"calibration must be 'isotonic' or 'sigmoid', got {method!r}")
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        fitted = iso.fit_transform(raw, y)
        blocks = (
            pd.DataFrame({"raw": raw, "y": y, "block": fitted})
            .groupby("block", sort=True)
            .agg(x=("raw", "mean"), pos=("y", "sum"), n=("y", "size"))
        )
        # one pseudo-observation at the base rate per block keeps probabilities off 0 and 1
        base = float(y.mean()) if y.size else 0.5
        values = np.maximum.accumulate(
            ((blocks["pos"] + base) / (blocks["n"] + 1)).to_numpy(dtype=np.float64)
        )
        xs = blocks["x"].to_numpy(dtype=np.float64)
        order = np.argsort(xs, kind="stable")
        return cls(method="isotonic", x=tuple(xs[order]), y=tuple(values[order]))

    @classmethod
    def cross_fitted(
        cls, raw: np.ndarray, y: np.ndarray, method: str, folds: int, seed: int
    ) -> np.ndarray:
        """Out-of-fold calibrated probabilities (n,): no row scored by a calibrator fitted on it.

        Uncalibrated (``expit(raw)``) when the labels cannot be split into two folds.
        """
        raw = np.asarray(raw, dtype=np.float64)
        y = np.asarray(y)
        out = cross_fit(
            y,
            folds,
            seed,
            lambda fit, ev: cls.fit(raw[fit], y[fit], method).predict(raw[ev]),
        )
        if out is None:
            logger.warning("too few positives/negatives to cross-fit calibration; uncalibrated")
            return np.asarray(expit(raw))
        return out
