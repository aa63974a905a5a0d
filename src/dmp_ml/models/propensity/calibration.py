"""The monotone map from the booster's raw score (log-odds) to a probability.

Fitted on the validation snapshot only (see :mod:`.model`); JSON-serialisable so a bundle and an
MLflow artifact carry it as plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

__all__ = ["Calibrator"]


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
