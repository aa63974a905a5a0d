"""Binary-classification metrics and charts for propensity scores.

Every function takes ``y`` (0/1 labels, shape (n,)) and ``p`` (predicted probabilities, shape (n,))
and is pure: no state, no I/O. Ranking metrics that are undefined (a single class present) return
NaN rather than raising, so a report can still be logged. Plot helpers return
:class:`matplotlib.figure.Figure` objects built without pyplot (no display, no global state);
save them with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn import metrics as skm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "TOP_FRACTION",
    "brier",
    "calibration_curve",
    "classification_report",
    "capture_rate_at",
    "cumulative_gains",
    "expected_calibration_error",
    "lift_at",
    "log_loss",
    "plot_calibration",
    "plot_feature_importance",
    "plot_gains",
    "pr_auc",
    "roc_auc",
]

TOP_FRACTION = 0.1
"""The "top decile" used by :func:`lift_at` and :func:`capture_rate_at` in reports."""


def _arrays(y: object, p: object) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"y and p differ in length: {y_arr.shape[0]} != {p_arr.shape[0]}")
    if np.isnan(p_arr).any():
        raise ValueError("p contains NaN")
    return y_arr, p_arr


def _two_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < y.sum() < y.size


def roc_auc(y: object, p: object) -> float:
    """Area under the ROC curve (ties count half); NaN when only one class is present."""
    y_arr, p_arr = _arrays(y, p)
    if not _two_classes(y_arr):
        return math.nan
    return float(skm.roc_auc_score(y_arr, p_arr))


def pr_auc(y: object, p: object) -> float:
    """Average precision (step-wise area under precision/recall); NaN without positives."""
    y_arr, p_arr = _arrays(y, p)
    if y_arr.size == 0 or y_arr.sum() == 0:
        return math.nan
    return float(skm.average_precision_score(y_arr, p_arr))


def log_loss(y: object, p: object) -> float:
    """Mean negative log-likelihood; probabilities of exactly 0 or 1 are clipped by one float
    epsilon, so a certain and wrong score is large but finite."""
    y_arr, p_arr = _arrays(y, p)
    if y_arr.size == 0:
        return math.nan
    return float(skm.log_loss(y_arr, p_arr, labels=[0, 1]))


def brier(y: object, p: object) -> float:
    """Mean squared error of the probabilities."""
    y_arr, p_arr = _arrays(y, p)
    if y_arr.size == 0:
        return math.nan
    return float(skm.brier_score_loss(y_arr, p_arr, pos_label=1))


def _equal_mass_bins(p: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Indices of ``p`` split into ``n_bins`` groups of (nearly) equal size, by ascending ``p``."""
    order = np.argsort(p, kind="stable")
    n_bins = max(1, min(n_bins, p.size))
    return [b for b in np.array_split(order, n_bins) if b.size]


def calibration_curve(y: object, p: object, n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram data over equal-mass bins.

    Returns
    -------
    DataFrame with one row per bin: ``mean_predicted``, ``observed_rate``, ``count``.
    """
    y_arr, p_arr = _arrays(y, p)
    rows = [
        (float(p_arr[b].mean()), float(y_arr[b].mean()), int(b.size))
        for b in _equal_mass_bins(p_arr, n_bins)
    ]
    return pd.DataFrame(rows, columns=["mean_predicted", "observed_rate", "count"])


def expected_calibration_error(y: object, p: object, n_bins: int = 10) -> float:
    """ECE over equal-mass bins: sum over bins of (bin share) * |observed rate - mean predicted|."""
    y_arr, p_arr = _arrays(y, p)
    if y_arr.size == 0:
        return math.nan
    curve = calibration_curve(y_arr, p_arr, n_bins)
    gaps = (curve["observed_rate"] - curve["mean_predicted"]).abs()
    return float((gaps * curve["count"]).sum() / curve["count"].sum())


def _top(y: np.ndarray, p: np.ndarray, fraction: float) -> np.ndarray:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * y.size))
    order = np.argsort(-p, kind="stable")
    return y[order[:k]]


def lift_at(y: object, p: object, fraction: float = TOP_FRACTION) -> float:
    """Positive rate among the top ``fraction`` by score divided by the overall positive rate."""
    y_arr, p_arr = _arrays(y, p)
    if y_arr.size == 0 or y_arr.sum() == 0:
        return math.nan
    return float(_top(y_arr, p_arr, fraction).mean() / y_arr.mean())


def capture_rate_at(y: object, p: object, fraction: float = TOP_FRACTION) -> float:
    """Share of all positives found in the top ``fraction`` by score."""
    y_arr, p_arr = _arrays(y, p)
    if y_arr.size == 0 or y_arr.sum() == 0:
        return math.nan
    return float(_top(y_arr, p_arr, fraction).sum() / y_arr.sum())


def cumulative_gains(y: object, p: object, n_points: int = 101) -> pd.DataFrame:
    """Cumulative-gains data: share of positives captured when targeting the top x by score.

    Returns
    -------
    DataFrame with ``fraction_targeted`` (0..1) and ``fraction_captured`` (0..1), ``n_points`` rows
    (fewer when there are fewer profiles), starting at (0, 0) and ending at (1, 1).
    """
    y_arr, p_arr = _arrays(y, p)
    n = y_arr.size
    if n == 0:
        return pd.DataFrame({"fraction_targeted": [0.0], "fraction_captured": [0.0]})
    captured = np.concatenate([[0.0], np.cumsum(y_arr[np.argsort(-p_arr, kind="stable")])])
    total = captured[-1] if captured[-1] > 0 else 1.0
    k = np.unique(np.round(np.linspace(0, n, min(n_points, n + 1))).astype(int))
    return pd.DataFrame({"fraction_targeted": k / n, "fraction_captured": captured[k] / total})


def classification_report(y: object, p: object, n_bins: int = 10) -> dict[str, float]:
    """All headline metrics of one set of scores, as plain floats (ready for MLflow).

    Keys: ``roc_auc``, ``pr_auc``, ``log_loss``, ``brier``, ``ece``, ``lift_top_decile``,
    ``capture_top_decile``, ``positive_rate``, ``mean_score``, ``n``.
    """
    y_arr, p_arr = _arrays(y, p)
    return {
        "roc_auc": roc_auc(y_arr, p_arr),
        "pr_auc": pr_auc(y_arr, p_arr),
        "log_loss": log_loss(y_arr, p_arr),
        "brier": brier(y_arr, p_arr),
        "ece": expected_calibration_error(y_arr, p_arr, n_bins),
        "lift_top_decile": lift_at(y_arr, p_arr, TOP_FRACTION),
        "capture_top_decile": capture_rate_at(y_arr, p_arr, TOP_FRACTION),
        "positive_rate": float(y_arr.mean()) if y_arr.size else math.nan,
        "mean_score": float(p_arr.mean()) if p_arr.size else math.nan,
        "n": float(y_arr.size),
    }


# --------------------------------------------------------------------------------------- plots


def plot_calibration(
    y: object, curves: Mapping[str, object], n_bins: int = 10, title: str = "Calibration"
) -> Figure:
    """Reliability diagram of several score sets for the same labels.

    ``curves`` maps a label (e.g. ``"before calibration"``) to probabilities of shape (n,).
    """
    from matplotlib.figure import Figure  # only the charts need matplotlib

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    top = 0.0
    for name, p in curves.items():
        curve = calibration_curve(y, p, n_bins)
        ece = expected_calibration_error(y, p, n_bins)
        ax.plot(
            curve["mean_predicted"],
            curve["observed_rate"],
            marker="o",
            label=f"{name} (ECE {ece:.3f})",
        )
        top = max(top, float(curve["mean_predicted"].max()), float(curve["observed_rate"].max()))
    lim = min(1.0, max(0.05, top * 1.1))
    labels = ("mean predicted probability (equal-mass bins)", "observed rate")
    return _finish(fig, title, labels, (lim, lim), "upper left")


def plot_gains(y: object, scores: Mapping[str, object], title: str = "Cumulative gains") -> Figure:
    """Cumulative-gains chart for several score sets (``name -> probabilities``)."""
    from matplotlib.figure import Figure  # only the charts need matplotlib

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="random")
    for name, p in scores.items():
        gains = cumulative_gains(y, p)
        capture = capture_rate_at(y, p)
        ax.plot(
            gains["fraction_targeted"],
            gains["fraction_captured"],
            label=f"{name} (top 10%: {capture:.0%})",
        )
    ax.axvline(TOP_FRACTION, color="lightgrey", linewidth=1)
    labels = ("share of profiles targeted (by descending score)", "share of positives captured")
    return _finish(fig, title, labels, (1.0, 1.01), "lower right")


def _finish(
    fig: Figure, title: str, labels: tuple[str, str], limits: tuple[float, float], legend: str
) -> Figure:
    """Axes from 0 to ``limits``, axis ``labels``, title and legend: the charts' one style."""
    (ax,) = fig.axes
    ax.set_xlim(0, limits[0])
    ax.set_ylim(0, limits[1])
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    return fig


def plot_feature_importance(
    importance: pd.Series, top: int = 20, title: str = "Feature importance (gain)"
) -> Figure:
    """Horizontal bar chart of the ``top`` largest values of ``importance`` (name -> value)."""
    from matplotlib.figure import Figure  # only the charts need matplotlib

    values = importance.astype(float).sort_values(ascending=False).head(top)[::-1]
    fig = Figure(figsize=(7, 0.3 * max(len(values), 3) + 1.2))
    ax = fig.add_subplot()
    ax.barh([str(i) for i in values.index], values.to_numpy())
    ax.set_xlabel(str(importance.name or "importance"))
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig
