"""Plain baselines a propensity model must beat on the same held-out snapshot.

The first two read only recency and frequency columns, chosen by name so they work with whatever
subset the feature table has: :class:`RecencyFrequencyBaseline` (a logistic regression on all of
them) and :class:`SingleFeatureBaseline` (the best one alone). :class:`BGNBDBaseline` is the
buy-till-you-die model of the target event (BG/NBD, fitted with the ``lifetimes`` library).
:class:`RFMLightGBMBaseline` is one plain LightGBM on the recency, frequency, value and tenure
columns (the afternoon's RFM model: fixed small trees, nothing tuned).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.special import betainc, expit
from sklearn.linear_model import LogisticRegression

from dmp_ml import metrics
from dmp_ml.features.params import slug

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "BGNBDBaseline",
    "Baseline",
    "FREQUENCY_PATTERN",
    "RECENCY_PATTERN",
    "RFMLightGBMBaseline",
    "RecencyFrequencyBaseline",
    "SingleFeatureBaseline",
    "baseline_from_dict",
    "choose_served",
    "expected_column",
    "recency_frequency_columns",
]

# Baseline inputs: recency columns are days since something happened (larger = longer ago),
# frequency columns count events. Matching is by name so the baselines work with whatever subset
# the feature table has; per-category columns (``...__<category>``) are excluded on purpose.
RECENCY_PATTERN = re.compile(r"^(days_since|recency)")
FREQUENCY_PATTERN = re.compile(r"(^|_)(count|counts|frequency)(_|$)|^active_days_")


def recency_frequency_columns(columns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split column names into (recency, frequency) baseline inputs by name.

    Recency: names starting with ``days_since`` or ``recency`` (``days_since_last_event``,
    ``days_since_purchase``). Frequency: names with a ``count``/``frequency`` token or starting
    with ``active_days_`` (``purchase_count_30d``, ``event_count_total``, ``active_days_7d``).
    Names containing ``__`` (per-category expansions) are left out.
    """
    recency, frequency = [], []
    for c in map(str, columns):
        if "__" in c:
            continue
        if RECENCY_PATTERN.search(c):
            recency.append(c)
        elif FREQUENCY_PATTERN.search(c):
            frequency.append(c)
    return recency, frequency


def _column(X: pd.DataFrame, c: str) -> np.ndarray:
    """Column ``c`` of ``X`` as float64 (n,), NaN where missing or not numeric, or absent."""
    if c not in X.columns:
        return np.full(len(X), np.nan)
    if X[c].dtype == np.float64:
        return X[c].to_numpy()  # a view: the callers read it only
    return pd.to_numeric(X[c], errors="coerce").astype("float64").to_numpy(na_value=np.nan)


def _in_place(X: pd.DataFrame, c: str) -> np.ndarray:
    """Column ``c`` of ``X`` for LightGBM: a float32 column as it is (read as the float64 values
    it holds), else :func:`_column`."""
    if c in X.columns and X[c].dtype == np.float32:
        return X[c].to_numpy()
    return _column(X, c)


def _stack(cols: Iterable[np.ndarray], n: int, k: int) -> np.ndarray:
    """``k`` float64 columns of length ``n`` side by side, shape (n, k); (n, 0) for none.

    Filled a column at a time from ``cols`` (a generator): only one column's temporaries stand
    beside the matrix (a list of every column and then its stack held it twice).
    """
    out = np.empty((n, k))
    for j, col in enumerate(cols):
        out[:, j] = col
    return out


class _RFTransform:
    """log1p of recency (missing = never: 10 years / longest seen) and frequency (missing = 0)."""

    def fit(self, X: pd.DataFrame) -> _RFTransform:
        self.recency_, self.frequency_ = recency_frequency_columns(
            c for c in X.columns if pd.api.types.is_numeric_dtype(X[c].dtype)
        )
        self.fill_ = {}
        for c in self.recency_:
            seen = pd.to_numeric(X[c], errors="coerce").astype("float64")
            top = float(seen.max()) if seen.notna().any() else 0.0
            self.fill_[c] = max(3650.0, top)
        return self

    @property
    def columns_(self) -> list[str]:
        return self.recency_ + self.frequency_

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return _stack((self._log(X, c) for c in self.columns_), len(X), len(self.columns_))

    def _log(self, X: pd.DataFrame, c: str) -> np.ndarray:
        v = _column(X, c)
        return np.log1p(np.clip(np.where(np.isnan(v), self.fill_.get(c, 0.0), v), 0, None))

    def to_dict(self) -> dict[str, Any]:
        return {"recency": self.recency_, "frequency": self.frequency_, "fill": self.fill_}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> _RFTransform:
        transform = cls()
        transform.recency_ = list(state["recency"])
        transform.frequency_ = list(state["frequency"])
        transform.fill_ = {k: float(v) for k, v in state["fill"].items()}
        return transform


class RecencyFrequencyBaseline:
    """Logistic regression on log-transformed recency and frequency columns.

    The columns are chosen by :func:`recency_frequency_columns`; with none available it
    predicts the training base rate (and logs a warning).
    """

    def fit(self, X: pd.DataFrame, y: np.ndarray | pd.Series) -> RecencyFrequencyBaseline:
        y = np.asarray(y, dtype=np.int64)
        self.transform_ = _RFTransform().fit(X)
        self.columns_ = self.transform_.columns_
        self.base_rate_ = float(y.mean())
        self.model_: LogisticRegression | None = None
        if not self.columns_:
            logger.warning("no recency/frequency columns: RF baseline predicts the base rate")
            return self
        Z = self.transform_.transform(X)
        self.mean_, self.scale_ = Z.mean(axis=0), Z.std(axis=0) + 1e-9
        self.model_ = LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=200)
        self.model_.fit((Z - self.mean_) / self.scale_, y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.model_ is None:
            return np.full(len(X), self.base_rate_)
        Z = (self.transform_.transform(X) - self.mean_) / self.scale_
        return self.model_.predict_proba(Z)[:, 1]

    def contributions(self, X: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        """Per-row log-odds contribution of each input column, shape (n, k), with the names."""
        if self.model_ is None:
            return [], np.zeros((len(X), 0))
        Z = (self.transform_.transform(X) - self.mean_) / self.scale_
        return list(self.columns_), Z * self.model_.coef_[0]

    def reason_inputs(self, X: pd.DataFrame) -> pd.DataFrame:
        """The values :meth:`contributions` names, one column each (shown with a reason)."""
        return X.reindex(columns=self.columns_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (what :meth:`from_dict` reads back)."""
        state: dict[str, Any] = {
            "kind": "rf_logreg",
            "transform": self.transform_.to_dict(),
            "base_rate": self.base_rate_,
        }
        if self.model_ is not None:
            state.update(
                mean=self.mean_.tolist(),
                scale=self.scale_.tolist(),
                coef=self.model_.coef_[0].tolist(),
                intercept=float(self.model_.intercept_[0]),
            )
        return state


class SingleFeatureBaseline:
    """The best single recency or frequency column (by training ROC-AUC), as a 1-D logistic fit.

    The logistic map is monotone, so its ranking is the feature's ranking; it only turns the
    feature into probabilities for log-loss/Brier/ECE.
    """

    def fit(self, X: pd.DataFrame, y: np.ndarray | pd.Series) -> SingleFeatureBaseline:
        y = np.asarray(y, dtype=np.int64)
        self.transform_ = _RFTransform().fit(X)
        self.base_rate_ = float(y.mean())
        self.feature_: str | None = None
        self.train_auc_ = math.nan
        self.model_: LogisticRegression | None = None
        Z = self.transform_.transform(X)
        best = -1.0
        for j, name in enumerate(self.transform_.columns_):
            auc = metrics.roc_auc(y, Z[:, j])
            if not math.isnan(auc) and max(auc, 1 - auc) > best:
                best, self.feature_, self._j, self.train_auc_ = max(auc, 1 - auc), name, j, auc
        if self.feature_ is None:
            logger.warning("no usable recency/frequency column: single baseline = base rate")
            return self
        self.model_ = LogisticRegression(C=1e6, solver="newton-cholesky", max_iter=200)
        self.model_.fit(Z[:, [self._j]], y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.model_ is None:
            return np.full(len(X), self.base_rate_)
        return self.model_.predict_proba(self.transform_.transform(X)[:, [self._j]])[:, 1]

    def contributions(self, X: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        """Log-odds contribution of the one feature, shape (n, 1), with its name."""
        if self.model_ is None or self.feature_ is None:
            return [], np.zeros((len(X), 0))
        z = self.transform_.transform(X)[:, [self._j]]
        return [self.feature_], z * self.model_.coef_[0]

    def reason_inputs(self, X: pd.DataFrame) -> pd.DataFrame:
        """The values :meth:`contributions` names, one column each (shown with a reason)."""
        return X.reindex(columns=[self.feature_] if self.feature_ else [])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (what :meth:`from_dict` reads back)."""
        state: dict[str, Any] = {
            "kind": "single",
            "transform": self.transform_.to_dict(),
            "base_rate": self.base_rate_,
            "feature": self.feature_,
        }
        if self.model_ is not None:
            state.update(
                column=int(self._j),
                coef=self.model_.coef_[0].tolist(),
                intercept=float(self.model_.intercept_[0]),
            )
        return state


VALUE_PATTERN = re.compile(r"^value_|(^|_)tenure_days$")
"""Value (``value_sum_90d``, ``value_mean``) and tenure (``purchase_tenure_days``) columns: the
M of RFM and a customer's age, read by :class:`RFMLightGBMBaseline` with recency/frequency."""

_RFM_LGBM = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "seed": 0,
    "verbosity": -1,
}
_RFM_ROUNDS = 200
_PREDICT_ROWS = 65_536
"""Rows whose input matrix :meth:`RFMLightGBMBaseline.predict_proba` builds at a time."""


class RFMLightGBMBaseline:
    """One plain LightGBM (200 trees of 15 leaves, rate 0.05) on recency, frequency, value and
    tenure columns, chosen by name (:func:`recency_frequency_columns`, ``VALUE_PATTERN``).

    Missing values stay missing (LightGBM routes them). With no such column it predicts the
    training base rate.
    """

    def fit(self, X: pd.DataFrame, y: np.ndarray | pd.Series) -> RFMLightGBMBaseline:
        import lightgbm as lgb

        y = np.asarray(y, dtype=np.int64)
        numeric = [c for c in map(str, X.columns) if pd.api.types.is_numeric_dtype(X[c].dtype)]
        recency, frequency = recency_frequency_columns(numeric)
        value = [c for c in numeric if "__" not in c and VALUE_PATTERN.search(c)]
        self.columns_ = recency + frequency + [c for c in value if c not in recency + frequency]
        self.base_rate_ = float(y.mean())
        self.booster_: lgb.Booster | None = None
        if not self.columns_ or y.min() == y.max():
            logger.warning("no RFM columns or one class: RFM LightGBM baseline = base rate")
            return self
        # the columns read in place (an Arrow table of them): the Dataset a dense matrix of
        # them gives, without the matrix (every snapshot row times every RFM column)
        table = pa.Table.from_arrays(
            [pa.array(_in_place(X, c)) for c in self.columns_], names=self._names()
        )
        data = lgb.Dataset(table, label=y)
        self.booster_ = lgb.train(_RFM_LGBM, data, num_boost_round=_RFM_ROUNDS)
        return self

    def _names(self) -> list[str]:
        return [f"f{i}" for i in range(len(self.columns_))]

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        return _stack((_column(X, c) for c in self.columns_), len(X), len(self.columns_))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.booster_ is None:
            return np.full(len(X), self.base_rate_)
        out = np.empty(len(X))
        for start in range(0, len(X), _PREDICT_ROWS):  # a block's matrix at a time
            block = X.iloc[start : start + _PREDICT_ROWS]
            out[start : start + len(block)] = self.booster_.predict(
                self._matrix(block), num_threads=1
            )
        return out

    def contributions(self, X: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        """Per-row SHAP log-odds contribution of each input column, shape (n, k)."""
        if self.booster_ is None:
            return [], np.zeros((len(X), 0))
        contrib = self.booster_.predict(self._matrix(X), pred_contrib=True, num_threads=1)
        return list(self.columns_), np.asarray(contrib)[:, :-1]

    def reason_inputs(self, X: pd.DataFrame) -> pd.DataFrame:
        """The values :meth:`contributions` names, one column each (shown with a reason)."""
        return X.reindex(columns=self.columns_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (what :func:`baseline_from_dict` reads back)."""
        return {
            "kind": "rfm_lightgbm",
            "columns": self.columns_,
            "base_rate": self.base_rate_,
            "booster": self.booster_.model_to_string() if self.booster_ is not None else None,
        }


WEEK_DAYS = 7.0
"""BG/NBD is fitted in weeks: day-scale ages make its optimiser lose precision."""
TOL, LOOSE_TOL = 1e-7, 1e-6
"""The BG/NBD optimiser's tolerance (``lifetimes``' default), and the one a fit is retried with
when no penalty converges: where nobody seems to drop out the likelihood is highest at the
edge (``a`` to 0, ``b`` without bound) and the optimiser stops there short of 1e-7, "precision
loss" with its gradient already near 0 (Online Retail's purchase days, 2011)."""


_DROP_GRID = np.r_[0.0, np.geomspace(1e-8, 1.0, 160)]
"""Bin edges of the drop-out probability ``p`` over which BG/NBD's expectation is summed."""
_CHUNK_ROWS = 65_536


def bgnbd_expected(
    params: dict[str, float], t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """BG/NBD's expected repeat events in ``(T, T + t]`` given ``x`` repeats, the last at
    ``t_x`` (all arrays (n,), one time unit), for parameters ``r, alpha, a, b``.

    Equal to equation (10) of Fader, Hardie and Lee (2005) (``lifetimes``'
    ``conditional_expected_number_of_purchases_up_to_time``), computed without its
    hypergeometric function: that closed form divides by ``a - 1`` and has poles where
    ``a + b + x - 1`` is zero or a negative integer, so a fit near ``a = 1`` or one where nobody
    seems to drop out (``a`` and ``b`` near 0) gives NaN or nonsense for whole groups of rows
    (e.g. everyone without a repeat). Here ``P(alive)`` times, given alive, the mean over the
    drop-out probability ``p ~ Beta(a, b + x)`` of ``(1 - (1 + p t / (alpha + T))**-(r + x)) / p``
    (the Gamma rate integrated out), summed over fixed bins of ``p`` whose masses are exact
    (regularised incomplete beta); within 1e-3 (relative) of the closed form where that one
    is stable.
    """
    r, alpha, a, b = (float(params[k]) for k in ("r", "alpha", "a", "b"))
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    with np.errstate(divide="ignore"):
        log_dead = np.where(
            x > 0,
            np.log(a)
            - np.log(np.maximum(b + x - 1, 1e-300))
            + (r + x) * np.log((alpha + T) / (alpha + t_x)),
            -np.inf,
        )
    alive = expit(-log_dead)
    edges = _DROP_GRID
    mids = np.r_[0.0, np.sqrt(edges[1:-1] * edges[2:])]
    repeats, which = np.unique(x, return_inverse=True)
    mass = np.diff(betainc(a, b + repeats[:, None], edges[None, :]), axis=1)
    mass /= np.maximum(mass.sum(axis=1, keepdims=True), 1e-300)
    out = np.empty(len(x))
    for start in range(0, len(x), _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        theta, shape = t / (alpha + T[rows]), r + x[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            given = -np.expm1(-shape[:, None] * np.log1p(mids * theta[:, None])) / mids
        given[:, 0] = shape * theta  # the limit p -> 0: no drop-out, the Gamma rate's mean
        out[rows] = (mass[which[rows]] * given).sum(axis=1)
    return alive * out


def expected_column(target_event: str) -> str:
    """Name of the BG/NBD expected-events column of ``target_event`` (a derived feature)."""
    return f"{slug(target_event)}_expected_bgnbd"


class BGNBDBaseline:
    """BG/NBD buy-till-you-die model of the target event, scored as expected purchases.

    Each row's repeat occasions ``x = {event}_days_total - 1`` (the days with the event after
    the first: a basket logged as many order lines is one purchase), age
    ``T = {event}_tenure_days`` and first-to-last span ``t_x = T - days_since_{event}`` (days,
    as of the row's cutoff) feed
    ``lifetimes.BetaGeoFitter`` (in weeks) over the rows with at least one event; a row's
    score is the expected number of events in the next ``horizon_days`` given its history
    (:func:`bgnbd_expected`, stable where ``lifetimes``' closed form is not). A
    2-input logistic fit (log1p of that expectation, and "never did it") maps scores to
    probabilities, so profiles without the event are ranked too. Without the columns (or a
    converged fit) it predicts the base rate.

    Parameters
    ----------
    target_event : str
        The event type modelled (its column slug is looked up in the feature table).
    horizon_days : float
        The window the expectation is taken over (the propensity horizon).
    penalizer : float
        L2 penalty on the BG/NBD parameters (``lifetimes``' ``penalizer_coef``; 0 = plain
        maximum likelihood). A fit that does not converge is retried with 1e-3, then 1e-2,
        then all three again at the looser tolerance ``LOOSE_TOL``.
    """

    occasions: str = "days"
    """What a repeat is: ``days`` with the event (this version's fits); ``events``, capped at
    one a day, is how a bundle trained before purchase days were counted fitted its
    parameters, so such a bundle keeps scoring a refreshed profile as it was trained
    (its feature table has no ``{event}_days_total``)."""

    def __init__(
        self, target_event: str = "purchase", horizon_days: float = 90.0, penalizer: float = 0.0
    ) -> None:
        self.target_event = target_event
        self.horizon_days = horizon_days
        self.penalizer = penalizer

    def _columns(self) -> tuple[str, str, str]:
        s = slug(self.target_event)
        counted = f"{s}_days_total" if self.occasions == "days" else f"{s}_count_total"
        return counted, f"days_since_{s}", f"{s}_tenure_days"

    def history(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """BG/NBD's inputs per row in days: repeat occasions ``x`` (days with the event after
        the first), span ``t_x`` from the first to the last (0 without a repeat) and age ``T``,
        each (n,) and NaN where the event never happened; None without the columns."""
        if any(c not in X.columns for c in self._columns()):
            return None
        days, since, age = (
            pd.to_numeric(X[c], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
            for c in self._columns()
        )
        bought = (days >= 1) & (age > 0) & ~np.isnan(since)
        span = np.clip(age - since, 0.0, None)
        if self.occasions == "events":  # at most one repeat a day
            days = np.minimum(days, np.floor(np.nan_to_num(span)) + 1)
        x = np.where(bought, days - 1, np.nan)
        t_x = np.where(x > 0, span, 0.0)
        return x, np.where(bought, t_x, np.nan), np.where(bought, age, np.nan)

    def expected_purchases(self, X: pd.DataFrame) -> np.ndarray:
        """Expected target events in the horizon per row (0 where it never happened), (n,)."""
        history = self.history(X)
        if history is None or self.params_ is None:
            return np.zeros(len(X))
        x, t_x, T = history
        out = np.zeros(len(X))
        ok = ~np.isnan(T)
        if ok.any():
            out[ok] = bgnbd_expected(
                self.params_,
                self.horizon_days / WEEK_DAYS,
                x[ok],
                t_x[ok] / WEEK_DAYS,
                T[ok] / WEEK_DAYS,
            )
        return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0, None)

    def _fitter(self) -> Any:
        with warnings.catch_warnings():  # lifetimes sets a pandas option pandas 3 deprecates
            warnings.simplefilter("ignore")
            from lifetimes import BetaGeoFitter

        fitter = BetaGeoFitter(penalizer_coef=self.penalizer)
        if self.params_ is not None:
            fitter.params_ = pd.Series(self.params_)
        return fitter

    def _fit_params(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> dict[str, float] | None:
        """BG/NBD parameters (r, alpha, a, b); a stronger penalty, then a looser tolerance, when
        the fit does not converge, None (with a warning) when it never does."""
        from lifetimes.utils import ConvergenceError

        penalizers = (self.penalizer, *(p for p in (1e-3, 1e-2) if p > self.penalizer))
        for tol, penalizer in itertools.product((TOL, LOOSE_TOL), penalizers):
            fitter = self._fitter()
            fitter.penalizer_coef = penalizer
            try:
                # lifetimes prints the optimiser's state when it fails: keep it off stdout
                with (
                    contextlib.redirect_stdout(io.StringIO()),
                    warnings.catch_warnings(),
                    np.errstate(all="ignore"),
                ):
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fitter.fit(x, t_x, T, tol=tol)
            except ConvergenceError:
                logger.info("BG/NBD fit did not converge: penalizer %g, tol %g", penalizer, tol)
                continue
            return {k: float(v) for k, v in fitter.params_.items()}
        logger.warning("BG/NBD fit did not converge: the BG/NBD baseline predicts the base rate")
        return None

    def _inputs(self, X: pd.DataFrame) -> np.ndarray:
        history = self.history(X)
        never = np.ones(len(X)) if history is None else np.isnan(history[2]).astype(np.float64)
        return np.column_stack([np.log1p(self.expected_purchases(X)), never])

    def fit(self, X: pd.DataFrame, y: np.ndarray | pd.Series) -> BGNBDBaseline:
        y = np.asarray(y, dtype=np.int64)
        self.base_rate_ = float(y.mean())
        self.params_: dict[str, float] | None = None
        self.model_: LogisticRegression | None = None
        history = self.history(X)
        if history is None:
            logger.warning("no %s history columns: BG/NBD baseline = base rate", self.target_event)
            return self
        x, t_x, T = history
        ok = ~np.isnan(T)
        if ok.sum() < 10:
            logger.warning(
                "fewer than 10 rows with a %s: BG/NBD baseline = base rate", self.target_event
            )
            return self
        self.params_ = self._fit_params(x[ok], t_x[ok] / WEEK_DAYS, T[ok] / WEEK_DAYS)
        if self.params_ is None:
            return self
        self.model_ = LogisticRegression(C=1e6, solver="newton-cholesky", max_iter=200)
        self.model_.fit(self._inputs(X), y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.model_ is None:
            return np.full(len(X), self.base_rate_)
        return self.model_.predict_proba(self._inputs(X))[:, 1]

    def contributions(self, X: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        """Log-odds contribution of the expected purchases and of "never did it", (n, 2)."""
        if self.model_ is None:
            return [], np.zeros((len(X), 0))
        return self._names(), self._inputs(X) * self.model_.coef_[0]

    def _names(self) -> list[str]:
        s = slug(self.target_event)
        return [expected_column(self.target_event), f"never_{s}"]

    def reason_inputs(self, X: pd.DataFrame) -> pd.DataFrame:
        """Expected events in the horizon and "never did it" (0/1), as :meth:`contributions`
        names them."""
        history = self.history(X)
        never = np.ones(len(X)) if history is None else np.isnan(history[2]).astype(np.float64)
        values = np.column_stack([self.expected_purchases(X), never])
        return pd.DataFrame(values, index=X.index, columns=self._names())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (what :func:`baseline_from_dict` reads back)."""
        state: dict[str, Any] = {
            "kind": "bgnbd",
            "occasions": self.occasions,
            "target_event": self.target_event,
            "horizon_days": float(self.horizon_days),
            "penalizer": float(self.penalizer),
            "base_rate": self.base_rate_,
            "params": self.params_,
        }
        if self.model_ is not None:
            state.update(
                coef=self.model_.coef_[0].tolist(), intercept=float(self.model_.intercept_[0])
            )
        return state


def _logistic(coef: list[float], intercept: float) -> LogisticRegression:
    """A fitted-equivalent logistic regression from its coefficients (for loading)."""
    model = LogisticRegression()
    model.classes_ = np.array([0, 1])
    model.coef_ = np.asarray([coef], dtype=np.float64)
    model.intercept_ = np.asarray([intercept], dtype=np.float64)
    return model


Baseline = RecencyFrequencyBaseline | SingleFeatureBaseline | BGNBDBaseline | RFMLightGBMBaseline


def baseline_from_dict(state: dict[str, Any]) -> Baseline:
    """Rebuild a fitted baseline from :meth:`to_dict` state."""
    if state["kind"] == "rfm_lightgbm":
        import lightgbm as lgb

        rfm = RFMLightGBMBaseline()
        rfm.columns_ = list(state["columns"])
        rfm.base_rate_ = float(state["base_rate"])
        text = state.get("booster")
        rfm.booster_ = lgb.Booster(model_str=text) if text else None
        return rfm
    if state["kind"] == "bgnbd":
        bgnbd = BGNBDBaseline(state["target_event"], state["horizon_days"], state["penalizer"])
        bgnbd.occasions = state.get("occasions", "events")  # older bundles: order lines
        bgnbd.base_rate_ = float(state["base_rate"])
        bgnbd.params_ = state["params"]
        bgnbd.model_ = _logistic(state["coef"], state["intercept"]) if "coef" in state else None
        return bgnbd
    transform = _RFTransform.from_dict(state["transform"])
    baseline: RecencyFrequencyBaseline | SingleFeatureBaseline
    if state["kind"] == "rf_logreg":
        baseline = RecencyFrequencyBaseline()
        baseline.columns_ = transform.columns_
        baseline.model_ = None
        if "coef" in state:
            baseline.mean_ = np.asarray(state["mean"], dtype=np.float64)
            baseline.scale_ = np.asarray(state["scale"], dtype=np.float64)
            baseline.model_ = _logistic(state["coef"], state["intercept"])
    elif state["kind"] == "single":
        baseline = SingleFeatureBaseline()
        baseline.feature_ = state.get("feature")
        baseline.train_auc_ = math.nan
        baseline.model_ = None
        if "coef" in state:
            baseline._j = int(state["column"])
            baseline.model_ = _logistic(state["coef"], state["intercept"])
    else:
        raise ValueError(f"unknown baseline kind {state['kind']!r}")
    baseline.transform_ = transform
    baseline.base_rate_ = float(state["base_rate"])
    return baseline


BASELINES: dict[str, Callable[[str, int], Baseline]] = {
    "baseline_rf_logreg": lambda target_event, horizon_days: RecencyFrequencyBaseline(),
    "baseline_single": lambda target_event, horizon_days: SingleFeatureBaseline(),
    "baseline_bgnbd": BGNBDBaseline,
    "baseline_rfm_lightgbm": lambda target_event, horizon_days: RFMLightGBMBaseline(),
}
"""The plain baselines every propensity model is measured against, by report name: each makes
an unfitted baseline for ``(target_event, horizon_days)``."""


def choose_served(aucs: dict[str, float], margin: float = 0.0) -> str:
    """The candidate to serve: the model unless a baseline beats its held-out ROC-AUC by more
    than ``margin`` (NaN counts as losing). ``aucs`` maps ``model`` and baseline names to AUC."""

    def value(name: str) -> float:
        v = aucs.get(name, math.nan)
        return -math.inf if v is None or math.isnan(v) else float(v)

    best = max((n for n in aucs if n != "model"), key=value, default=None)
    if best is not None and value(best) > value("model") + margin:
        return best
    return "model"
