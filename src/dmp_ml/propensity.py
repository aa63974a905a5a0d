"""Propensity models: how likely is a profile to do ``target_event`` in the next ``horizon_days``.

Training data are labelled snapshots: features computed at cutoffs ``as_of - k * horizon``
(k = 1..n) and a label saying whether the profile did the target event in
``[cutoff, cutoff + horizon)``. The most recent labelled snapshot is the validation set (a time
split): LightGBM stops early on it, a calibrator is fitted on it (and evaluated by cross-fitting,
so the "after calibration" figures come from data each calibrator did not see), two baselines are
scored on it, and finally the booster is refit on all snapshots with the early-stopped number of
trees. Scores are produced for the feature table at ``as_of``.

No class weights are used: LightGBM's binary log-loss is a proper scoring rule, so the raw
probabilities stay meaningful with imbalanced targets and the calibrator only corrects residual
bias.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from dmp_ml import metrics
from dmp_ml.errors import BundleError, InsufficientDataError
from dmp_ml.features import FeatureBuilder, FeatureSpec, FeatureTable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dmp_ml.settings import PropensitySettings, Settings

logger = logging.getLogger(__name__)

__all__ = [
    "Calibrator",
    "PropensityModel",
    "PropensityResult",
    "RecencyFrequencyBaseline",
    "SingleFeatureBaseline",
    "ValidationSet",
    "align_features",
    "build_snapshots",
    "make_labels",
    "recency_frequency_columns",
    "train_propensity",
]

MODEL_FORMAT_VERSION = 1
_MODEL_FILE = "model.txt"
_HOLDOUT_FILE = "holdout_model.txt"
_META_FILE = "propensity.json"

# Baseline inputs: recency columns are days since something happened (larger = longer ago),
# frequency columns count events. Matching is by name so the baselines work with whatever subset
# the feature table has; per-category columns (``...__<category>``) are excluded on purpose.
RECENCY_PATTERN = re.compile(r"^(days_since|recency)")
FREQUENCY_PATTERN = re.compile(r"(^|_)(count|counts|frequency)(_|$)|^active_days_")


# ------------------------------------------------------------------------------------- labels


def _utc(ts: object) -> pd.Timestamp:
    t = pd.Timestamp(ts)  # type: ignore[arg-type]
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def make_labels(
    events: pd.DataFrame,
    cutoff: object,
    horizon_days: int,
    target_event: str,
    profile_ids: Iterable[str],
) -> pd.Series:
    """1 when the profile has at least one ``target_event`` in ``[cutoff, cutoff + horizon)``.

    Parameters
    ----------
    events : DataFrame
        Resolved events (``profile_id`` filled by identity resolution); rows without a
        profile id are ignored.
    profile_ids : iterable of str
        The profiles to label (e.g. the index of the snapshot's feature table).

    Returns
    -------
    Series of int (0/1), indexed by ``profile_id`` in the order given, named ``label``.
    """
    start = _utc(cutoff)
    end = start + pd.Timedelta(days=horizon_days)
    times = events["event_time"]
    mask = (
        events["event_type"].isin([target_event]).to_numpy(dtype=bool)
        & (times >= start).to_numpy(dtype=bool)
        & (times < end).to_numpy(dtype=bool)
        & events["profile_id"].notna().to_numpy(dtype=bool)
    )
    positives = pd.Index(events.loc[mask, "profile_id"].astype("string").unique())
    ids = pd.Index(list(profile_ids), dtype="string", name="profile_id")
    return pd.Series(ids.isin(positives).astype(np.int64), index=ids, name="label")


# --------------------------------------------------------------------------------- calibrator


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


# ------------------------------------------------------------------------------------- model

_DEFAULT_LGBM = {
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "cat_smooth": 10.0,
    "cat_l2": 10.0,
    "max_bin": 255,
}


def _is_categorical(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)
    )


def _json_value(v: object) -> object:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return str(v)


class PropensityModel(BaseEstimator):
    """Calibrated LightGBM binary classifier with per-profile reasons.

    Parameters
    ----------
    learning_rate, num_leaves, min_child_samples, n_estimators, early_stopping_rounds
        LightGBM settings; ``n_estimators`` is the cap that early stopping works under.
    calibration : {"isotonic", "sigmoid"}
    calibration_folds : int
        Cross-fitting folds used to report calibrated metrics on data the calibrator did not see.
    n_reasons : int
        Default number of reasons returned by :meth:`explain`.
    seed : int
    n_threads : int
        LightGBM threads; 0 lets LightGBM/OpenMP decide.
    refit : bool
        Refit on train + validation with the early-stopped tree count (default True).
    lgbm_params : dict, optional
        Extra LightGBM parameters overriding the defaults.

    Fitted attributes
    -----------------
    booster_ (final, refit), holdout_booster_ (trained without the validation data),
    calibrator_, best_iteration_, feature_names_, categories_ (column -> categories),
    feature_importance_ (gain of ``booster_``), validation_ (metrics before/after calibration),
    validation_predictions_ (DataFrame: y, raw, p_uncalibrated, p_calibrated), info_ (free-form
    metadata saved with the model, e.g. cutoffs).
    """

    def __init__(
        self,
        learning_rate: float = 0.05,
        num_leaves: int = 7,
        min_child_samples: int = 100,
        n_estimators: int = 600,
        early_stopping_rounds: int = 50,
        calibration: str = "isotonic",
        calibration_folds: int = 5,
        n_reasons: int = 3,
        seed: int = 0,
        n_threads: int = 1,
        refit: bool = True,
        lgbm_params: dict[str, Any] | None = None,
    ) -> None:
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.calibration = calibration
        self.calibration_folds = calibration_folds
        self.n_reasons = n_reasons
        self.seed = seed
        self.n_threads = n_threads
        self.refit = refit
        self.lgbm_params = lgbm_params

    @classmethod
    def from_settings(cls, ps: PropensitySettings, **overrides: Any) -> PropensityModel:
        """A model configured from the ``propensity`` settings section."""
        kwargs: dict[str, Any] = {
            name: getattr(ps, name)
            for name in (
                "learning_rate",
                "num_leaves",
                "min_child_samples",
                "n_estimators",
                "early_stopping_rounds",
                "calibration",
                "calibration_folds",
                "n_reasons",
                "seed",
                "n_threads",
            )
            if hasattr(ps, name)
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # -------------------------------------------------------------------------- internals

    def _lgb_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "min_data_per_group": self.min_child_samples,
            "seed": self.seed,
            "num_threads": self.n_threads,
            "verbosity": -1,
            "force_col_wise": True,
            "deterministic": True,
            **_DEFAULT_LGBM,
        }
        params.update(self.lgbm_params or {})
        return params

    def _prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        """Reindex to the training columns, fix dtypes and categories, rename to f0..fN."""
        missing = [c for c in self.feature_names_ if c not in X.columns]
        if missing:
            logger.warning(
                "%d feature column(s) missing at prediction, treated as unknown: %s",
                len(missing),
                missing[:5],
            )
        out: dict[str, Any] = {}
        for i, name in enumerate(self.feature_names_):
            key = f"f{i}"
            col = X[name] if name in X.columns else None
            if name in self.categories_:
                cats = self.categories_[name]
                values = (
                    col.astype("string").to_numpy(dtype=object, na_value=None)
                    if col is not None
                    else [None] * len(X)
                )
                out[key] = pd.Categorical(values, categories=cats)
            elif col is None:
                out[key] = np.full(len(X), np.nan)
            else:
                out[key] = (
                    pd.to_numeric(col, errors="coerce")
                    .astype("float64")
                    .to_numpy(dtype=np.float64, na_value=np.nan)
                )
        return pd.DataFrame(out, index=pd.RangeIndex(len(X)))

    def _learn_schema(self, X_train: pd.DataFrame, X_valid: pd.DataFrame) -> None:
        self.feature_names_ = [str(c) for c in X_train.columns]
        if len(set(self.feature_names_)) != len(self.feature_names_):
            raise ValueError("feature columns must be unique")
        self.categories_: dict[str, list[str]] = {}
        for name in self.feature_names_:
            if _is_categorical(X_train[name]):
                seen = pd.concat([X_train[name], X_valid[name]]).dropna().astype(str)
                self.categories_[name] = sorted(seen.unique().tolist())

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise RuntimeError("PropensityModel is not fitted")

    # ------------------------------------------------------------------------------ fit

    def fit(
        self,
        X_train: pd.DataFrame,
        y_train: Sequence[int] | np.ndarray | pd.Series,
        X_valid: pd.DataFrame,
        y_valid: Sequence[int] | np.ndarray | pd.Series,
    ) -> PropensityModel:
        """Train with early stopping on the (later) validation data, calibrate, then refit.

        Parameters
        ----------
        X_train, X_valid : DataFrame, shape (n, n_features)
            Same columns (``X_valid`` is reindexed to ``X_train``'s columns); numeric or
            categorical (pandas ``category``/string columns are treated as categorical).
        y_train, y_valid : array-like of 0/1, shape (n,)
        """
        yt = np.asarray(y_train, dtype=np.float64)
        yv = np.asarray(y_valid, dtype=np.float64)
        if len(yt) != len(X_train) or len(yv) != len(X_valid):
            raise ValueError("X and y differ in length")
        X_valid = X_valid.reindex(columns=X_train.columns)
        self._learn_schema(X_train, X_valid)
        Xt, Xv = self._prepare(X_train), self._prepare(X_valid)
        cat_cols = [f"f{i}" for i, n in enumerate(self.feature_names_) if n in self.categories_]
        params = self._lgb_params()

        train_set = lgb.Dataset(Xt, yt, categorical_feature=cat_cols, free_raw_data=False)
        valid_set = lgb.Dataset(Xv, yv, reference=train_set, categorical_feature=cat_cols)
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=self.n_estimators,
            valid_sets=[valid_set],
            valid_names=["validation"],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        best = int(booster.best_iteration or booster.current_iteration())
        self.best_iteration_ = max(best, 1)
        self.holdout_booster_ = lgb.Booster(
            model_str=booster.model_to_string(num_iteration=self.best_iteration_)
        )

        raw_valid = self.holdout_booster_.predict(Xv, raw_score=True, num_threads=self.n_threads)
        p_before = expit(raw_valid)
        p_after = self._cross_fitted_calibration(raw_valid, yv)
        self.calibrator_ = Calibrator.fit(raw_valid, yv, self.calibration)
        self.validation_ = {
            "uncalibrated": metrics.classification_report(yv, p_before),
            "calibrated": metrics.classification_report(yv, p_after),
        }
        self.validation_predictions_ = pd.DataFrame(
            {"y": yv.astype(np.int64), "raw": raw_valid, "p_uncalibrated": p_before},
            index=X_valid.index,
        ).assign(p_calibrated=p_after)

        if self.refit:
            full = lgb.Dataset(
                pd.concat([Xt, Xv], ignore_index=True),
                np.concatenate([yt, yv]),
                categorical_feature=cat_cols,
            )
            self.booster_ = lgb.train(params, full, num_boost_round=self.best_iteration_)
        else:
            self.booster_ = self.holdout_booster_
        self.feature_importance_ = pd.Series(
            self.booster_.feature_importance("gain"), index=self.feature_names_, name="gain"
        )
        if not hasattr(self, "info_"):
            self.info_: dict[str, Any] = {}
        logger.info(
            "propensity model: %d trees, validation ROC-AUC %.4f, ECE %.4f -> %.4f",
            self.best_iteration_,
            self.validation_["calibrated"]["roc_auc"],
            self.validation_["uncalibrated"]["ece"],
            self.validation_["calibrated"]["ece"],
        )
        return self

    def _cross_fitted_calibration(self, raw: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Out-of-fold calibrated probabilities: no row is scored by a calibrator fitted on it."""
        n_pos = int(y.sum())
        folds = min(self.calibration_folds, n_pos, len(y) - n_pos)
        if folds < 2:
            logger.warning("too few positives/negatives to cross-fit calibration; uncalibrated")
            return expit(raw)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        out = np.empty_like(raw)
        for fit_idx, eval_idx in splitter.split(raw.reshape(-1, 1), y):
            cal = Calibrator.fit(raw[fit_idx], y[fit_idx], self.calibration)
            out[eval_idx] = cal.predict(raw[eval_idx])
        return out

    # -------------------------------------------------------------------------- predict

    def _booster(self, which: str) -> lgb.Booster:
        self._check_fitted()
        if which == "final":
            return self.booster_
        if which == "holdout":
            return self.holdout_booster_
        raise ValueError(f"which must be 'final' or 'holdout', got {which!r}")

    def predict_raw(self, X: pd.DataFrame, which: str = "final") -> np.ndarray:
        """Uncalibrated LightGBM log-odds, shape (n,)."""
        if len(X) == 0:
            return np.empty(0)
        booster = self._booster(which)
        return np.asarray(
            booster.predict(self._prepare(X), raw_score=True, num_threads=self.n_threads)
        )

    def predict_proba(self, X: pd.DataFrame, which: str = "final") -> np.ndarray:
        """Calibrated probabilities of the target event, shape (n,).

        ``which="holdout"`` uses the booster trained without the validation snapshot (used to
        compare models on data none of them was trained on).
        """
        raw = self.predict_raw(X, which)
        return self.calibrator_.predict(raw)

    def explain(self, X: pd.DataFrame, n: int | None = None) -> list[list[dict[str, Any]]]:
        """Top ``n`` reasons per row from LightGBM SHAP contributions (``pred_contrib``).

        Returns
        -------
        One list per row of X, each holding up to ``n`` dicts ``{"feature", "value",
        "direction" ("+" raises the score, "-" lowers it), "contribution" (log-odds)}``,
        largest absolute contribution first. Features contributing exactly 0 are left out.
        """
        self._check_fitted()
        n = self.n_reasons if n is None else n
        if len(X) == 0 or n <= 0:
            return [[] for _ in range(len(X))]
        prepared = self._prepare(X)
        contrib = self.booster_.predict(prepared, pred_contrib=True, num_threads=self.n_threads)
        contrib = np.asarray(contrib)[:, :-1]
        k = min(n, contrib.shape[1])
        top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
        values = {
            i: (
                prepared[f"f{i}"].astype("object").tolist()
                if self.feature_names_[i] in self.categories_
                else prepared[f"f{i}"].tolist()
            )
            for i in np.unique(top)
        }
        out: list[list[dict[str, Any]]] = []
        for row, idx in enumerate(top):
            reasons = []
            for i in idx:
                c = float(contrib[row, i])
                if c == 0.0:
                    continue
                reasons.append(
                    {
                        "feature": self.feature_names_[i],
                        "value": _json_value(values[i][row]),
                        "direction": "+" if c > 0 else "-",
                        "contribution": c,
                    }
                )
            out.append(reasons)
        return out

    # ---------------------------------------------------------------------------- persist

    def save(self, directory: str | Path) -> Path:
        """Write ``model.txt``, ``holdout_model.txt`` and ``propensity.json`` into ``directory``."""
        self._check_fitted()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(path / _MODEL_FILE))
        self.holdout_booster_.save_model(str(path / _HOLDOUT_FILE))
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            "params": {k: v for k, v in self.get_params().items()},
            "feature_names": self.feature_names_,
            "categories": self.categories_,
            "best_iteration": self.best_iteration_,
            "calibrator": self.calibrator_.to_dict(),
            "validation": self.validation_,
            "feature_importance": self.feature_importance_.to_dict(),
            "info": self.info_,
        }
        (path / _META_FILE).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PropensityModel:
        """Read a model written by :meth:`save`; raises :class:`BundleError` when incomplete."""
        path = Path(directory)
        try:
            meta = json.loads((path / _META_FILE).read_text(encoding="utf-8"))
            booster = lgb.Booster(model_file=str(path / _MODEL_FILE))
            holdout_file = path / _HOLDOUT_FILE
            holdout = lgb.Booster(model_file=str(holdout_file)) if holdout_file.exists() else None
        except (OSError, ValueError, lgb.basic.LightGBMError) as exc:
            raise BundleError(f"cannot load propensity model from {path}: {exc}") from exc
        if meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise BundleError(
                f"propensity model in {path} has format {meta.get('format_version')}, "
                f"expected {MODEL_FORMAT_VERSION}"
            )
        model = cls(**meta["params"])
        model.booster_ = booster
        model.holdout_booster_ = holdout if holdout is not None else booster
        model.feature_names_ = list(meta["feature_names"])
        model.categories_ = {k: list(v) for k, v in meta["categories"].items()}
        model.best_iteration_ = int(meta["best_iteration"])
        model.calibrator_ = Calibrator.from_dict(meta["calibrator"])
        model.validation_ = meta.get("validation", {})
        model.feature_importance_ = pd.Series(
            meta.get("feature_importance", {}), name="gain", dtype="float64"
        ).reindex(model.feature_names_, fill_value=0.0)
        model.info_ = dict(meta.get("info", {}))
        return model


# ---------------------------------------------------------------------------------- baselines


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
        cols = []
        for c in self.columns_:
            v = (
                pd.to_numeric(X[c], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
                if c in X.columns
                else np.full(len(X), np.nan)
            )
            fill = self.fill_.get(c, 0.0)
            cols.append(np.log1p(np.clip(np.where(np.isnan(v), fill, v), 0, None)))
        return np.column_stack(cols) if cols else np.empty((len(X), 0))


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


# --------------------------------------------------------------------------- orchestration


@dataclass
class ValidationSet:
    """The validation snapshot and every model's predictions on it (row-aligned)."""

    cutoff: pd.Timestamp
    X: pd.DataFrame
    y: np.ndarray
    predictions: pd.DataFrame  # p_model_uncalibrated, p_model, p_baseline_rf_logreg, ...


@dataclass
class PropensityResult:
    """Everything one propensity training produced.

    ``metrics`` maps ``model`` (calibrated, cross-fitted), ``model_uncalibrated``,
    ``baseline_rf_logreg`` and ``baseline_single`` to :func:`dmp_ml.metrics.classification_report`
    dicts computed on the validation snapshot. ``scores`` has ``profile_id, score, percentile`` for
    every profile of the score table (percentile in (0, 100], 100 = most likely).
    """

    model: PropensityModel
    target_event: str
    horizon_days: int
    as_of: pd.Timestamp
    metrics: dict[str, dict[str, float]]
    validation: ValidationSet
    scores: pd.DataFrame
    feature_spec: FeatureSpec
    train_cutoffs: list[pd.Timestamp]
    counts: dict[str, int]
    baseline_single_feature: str | None = None
    baseline_rf_features: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Figure]:
        """PNG-ready charts: ``calibration``, ``gains``, ``feature_importance``."""
        pred = self.validation.predictions
        y = self.validation.y
        return {
            "calibration": metrics.plot_calibration(
                y,
                {
                    "before calibration": pred["p_model_uncalibrated"],
                    "after calibration (cross-fitted)": pred["p_model"],
                },
                title=f"Calibration: {self.target_event} in {self.horizon_days} d (validation)",
            ),
            "gains": metrics.plot_gains(
                y,
                {
                    "model": pred["p_model"],
                    "RF logistic baseline": pred["p_baseline_rf_logreg"],
                    f"single: {self.baseline_single_feature}": pred["p_baseline_single"],
                },
                title=f"Cumulative gains: {self.target_event} in {self.horizon_days} d",
            ),
            "feature_importance": metrics.plot_feature_importance(self.model.feature_importance_),
        }

    def summary(self) -> dict[str, float]:
        """Flat headline figures (ROC-AUC of model and baselines, ECE before/after)."""
        m = self.metrics
        return {
            "model_roc_auc": m["model"]["roc_auc"],
            "baseline_rf_logreg_roc_auc": m["baseline_rf_logreg"]["roc_auc"],
            "baseline_single_roc_auc": m["baseline_single"]["roc_auc"],
            "ece_before_calibration": m["model_uncalibrated"]["ece"],
            "ece_after_calibration": m["model"]["ece"],
            **{f"n_{k}": float(v) for k, v in self.counts.items()},
        }


def align_features(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly ``reference``'s columns (order and kind).

    Columns absent from ``frame`` (e.g. a top-K category that was not top-K at an older cutoff)
    become missing: NaN for numeric columns, a missing category for categorical ones; LightGBM
    treats them as unknown rather than as zero. Extra columns are dropped.
    """
    out = {}
    for name in reference.columns:
        if name in frame.columns:
            out[name] = frame[name]
        elif _is_categorical(reference[name]):
            out[name] = pd.Series(pd.Categorical([None] * len(frame)), index=frame.index)
        else:
            out[name] = pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.DataFrame(out, index=frame.index)


def _propensity_settings(settings: Settings | PropensitySettings) -> PropensitySettings:
    return getattr(settings, "propensity", settings)  # type: ignore[return-value]


def _check_counts(what: str, y: np.ndarray, ps: PropensitySettings, target: str) -> None:
    pos = int(y.sum())
    neg = int(len(y) - pos)
    if pos < ps.min_positives or neg < ps.min_negatives:
        raise InsufficientDataError(
            f"not enough labelled data to train the '{target}' propensity model: the {what} has "
            f"{pos} positive and {neg} negative profiles (minimum {ps.min_positives} and "
            f"{ps.min_negatives}; settings propensity.min_positives/min_negatives). Provide more "
            "history, a shorter horizon_days or a more frequent target_event."
        )


def train_propensity(
    snapshots: Sequence[tuple[FeatureTable, pd.Series]],
    score_table: FeatureTable,
    settings: Settings | PropensitySettings,
) -> PropensityResult:
    """Train, validate and score a propensity model from labelled snapshots.

    Parameters
    ----------
    snapshots : list of (FeatureTable, labels)
        Feature tables at past cutoffs with their 0/1 labels (Series indexed by profile_id,
        see :func:`make_labels`). The one with the latest ``spec.as_of`` is the validation set.
    score_table : FeatureTable
        Features as of ``as_of``; its columns are the model's columns (snapshots are aligned to
        them with :func:`align_features`) and its profiles are scored.
    settings : Settings or PropensitySettings

    Raises
    ------
    InsufficientDataError
        Fewer than two snapshots, or too few positives/negatives in train or validation.
    """
    ps = _propensity_settings(settings)
    target = ps.target_event
    if len(snapshots) < 2:
        raise InsufficientDataError(
            f"the '{target}' propensity model needs at least 2 labelled snapshots (one to train, "
            f"one to validate), got {len(snapshots)}: the event history is probably shorter "
            f"than the first cutoff (as_of - n_snapshots x horizon_days = {ps.n_snapshots} x "
            f"{ps.horizon_days} days); use a shorter horizon_days or a later as_of"
        )
    ordered = sorted(snapshots, key=lambda s: s[0].spec.as_of)
    reference = score_table.frame

    def labelled(table: FeatureTable, labels: pd.Series) -> tuple[pd.DataFrame, np.ndarray]:
        X = align_features(table.frame, reference)
        y = labels.reindex(X.index).fillna(0).astype(np.int64).to_numpy()
        return X, y

    parts = [labelled(t, lab) for t, lab in ordered[:-1]]
    X_train = pd.concat([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    X_valid, y_valid = labelled(*ordered[-1])
    _check_counts("training data (all snapshots but the last)", y_train, ps, target)
    _check_counts("validation snapshot (the most recent labelled one)", y_valid, ps, target)

    train_cutoffs = [t.spec.as_of for t, _ in ordered[:-1]]
    valid_cutoff = ordered[-1][0].spec.as_of
    model = PropensityModel.from_settings(ps)
    model.info_ = {
        "target_event": target,
        "horizon_days": ps.horizon_days,
        "as_of": score_table.spec.as_of.isoformat(),
        "validation_cutoff": valid_cutoff.isoformat(),
        "train_cutoffs": [c.isoformat() for c in train_cutoffs],
        "feature_version": score_table.spec.version,
    }
    model.fit(X_train, y_train, X_valid, y_valid)

    rf = RecencyFrequencyBaseline().fit(X_train, y_train)
    single = SingleFeatureBaseline().fit(X_train, y_train)
    predictions = pd.DataFrame(
        {
            "p_model_uncalibrated": model.validation_predictions_["p_uncalibrated"].to_numpy(),
            "p_model": model.validation_predictions_["p_calibrated"].to_numpy(),
            "p_baseline_rf_logreg": rf.predict_proba(X_valid),
            "p_baseline_single": single.predict_proba(X_valid),
        },
        index=X_valid.index,
    )
    report = {
        "model": model.validation_["calibrated"],
        "model_uncalibrated": model.validation_["uncalibrated"],
        "baseline_rf_logreg": metrics.classification_report(
            y_valid, predictions["p_baseline_rf_logreg"]
        ),
        "baseline_single": metrics.classification_report(y_valid, predictions["p_baseline_single"]),
    }
    scores = score_profiles(model, score_table)
    counts = {
        "train_rows": len(y_train),
        "train_positives": int(y_train.sum()),
        "validation_rows": len(y_valid),
        "validation_positives": int(y_valid.sum()),
        "scored_profiles": len(scores),
        "snapshots": len(ordered),
        "best_iteration": model.best_iteration_,
    }
    logger.info(
        "propensity '%s': ROC-AUC model %.4f, RF baseline %.4f, single (%s) %.4f",
        target,
        report["model"]["roc_auc"],
        report["baseline_rf_logreg"]["roc_auc"],
        single.feature_,
        report["baseline_single"]["roc_auc"],
    )
    return PropensityResult(
        model=model,
        target_event=target,
        horizon_days=ps.horizon_days,
        as_of=score_table.spec.as_of,
        metrics=report,
        validation=ValidationSet(
            cutoff=valid_cutoff, X=X_valid, y=y_valid, predictions=predictions
        ),
        scores=scores,
        feature_spec=score_table.spec,
        train_cutoffs=train_cutoffs,
        counts=counts,
        baseline_single_feature=single.feature_,
        baseline_rf_features=rf.columns_,
    )


def score_profiles(model: PropensityModel, table: FeatureTable) -> pd.DataFrame:
    """``profile_id, score, percentile`` for every profile of ``table``.

    ``score`` is the calibrated probability; ``percentile`` in (0, 100] ranks by the model's raw
    score (same order as ``score``, but without the ties calibration can introduce).
    """
    X = table.frame
    raw = model.predict_raw(X)
    score = model.calibrator_.predict(raw)
    pct = pd.Series(raw).rank(method="max", pct=True).to_numpy() * 100 if len(raw) else raw
    return pd.DataFrame(
        {
            "profile_id": pd.array(X.index.astype(str), dtype="string"),
            "score": score.astype(np.float64),
            "percentile": np.asarray(pct, dtype=np.float64),
        }
    )


def build_snapshots(
    events: pd.DataFrame,
    as_of: object,
    settings: Settings,
    profiles: pd.DataFrame | None = None,
    consent: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
    *,
    links: pd.DataFrame | None = None,
    score_table: FeatureTable | None = None,
    builder: FeatureBuilder | None = None,
) -> tuple[list[tuple[FeatureTable, pd.Series]], FeatureTable]:
    """Labelled snapshots at ``as_of - k * horizon`` (k = 1..n_snapshots) and the score table.

    The score table is built first (features as of ``as_of``); every snapshot is built with it
    as ``reference`` so all tables share its vocabularies and columns. Features are point in
    time (only events before each cutoff). Labels come from the events in ``[cutoff, cutoff +
    horizon)`` after identity resolution as of ``cutoff + horizon``; an anonymous profile
    (``anon:<cookie>``) whose cookie has been linked to a known profile by then is labelled with
    that profile's events. Snapshots without eligible profiles are skipped.

    Pass ``score_table`` (the features as of ``as_of``, built with the same inputs) to reuse it
    instead of building it again; it is returned unchanged. Pass ``builder`` (a
    :class:`~dmp_ml.features.FeatureBuilder` over the same inputs) to reuse its encoded log.
    """
    from dmp_ml.identity import ANON_PREFIX

    ps = settings.propensity
    as_of_ts = _utc(as_of)
    horizon = pd.Timedelta(days=ps.horizon_days)
    if builder is None:
        builder = FeatureBuilder(events, profiles, consent, settings, links=links, erased=erased)
    if score_table is None:
        score_table = builder.build(as_of_ts)
    elif score_table.spec.as_of != as_of_ts:
        raise ValueError(
            f"score_table is as of {score_table.spec.as_of}, not {as_of_ts}: build it at as_of"
        )
    snapshots: list[tuple[FeatureTable, pd.Series]] = []
    for k in range(ps.n_snapshots, 0, -1):
        cutoff = as_of_ts - k * horizon
        table = builder.build(cutoff, reference=score_table.spec)
        if len(table) == 0:
            logger.info("snapshot at %s has no eligible profiles; skipped", cutoff)
            continue
        resolved = builder.resolve(cutoff + horizon)
        ids = pd.Index(table.frame.index.astype("string"))
        label_ids = ids.to_series(index=ids)
        anon = ids.str.startswith(ANON_PREFIX)
        if anon.any():
            later = resolved.cookie_map.astype("string")
            cookies = ids[anon].str.slice(len(ANON_PREFIX))
            mapped = later.reindex(cookies).to_numpy(dtype=object, na_value=None)
            label_ids[anon] = [
                m if m is not None else i for m, i in zip(mapped, ids[anon], strict=True)
            ]
        labels = make_labels(
            resolved.events, cutoff, ps.horizon_days, ps.target_event, label_ids.to_numpy()
        )
        snapshots.append((table, pd.Series(labels.to_numpy(), index=ids, name="label")))
        logger.info(
            "snapshot %s: %d profiles, %d positive", cutoff.date(), len(ids), int(labels.sum())
        )
    return snapshots, score_table
