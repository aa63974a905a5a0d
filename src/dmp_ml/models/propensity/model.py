"""The propensity estimator: how likely a profile is to do ``target_event`` in ``horizon_days``.

A calibrated LightGBM binary classifier. ``fit`` stops early on the later (validation) data,
fits a :class:`~.calibration.Calibrator` on it (evaluated by cross-fitting, so the "after
calibration" figures come from data each calibrator did not see), and refits the booster on all
data with the early-stopped number of trees.

No class weights are used: LightGBM's binary log-loss is a proper scoring rule, so the raw
probabilities stay meaningful with imbalanced targets and the calibrator only corrects residual
bias.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.base import BaseEstimator

from dmp_ml import metrics
from dmp_ml.errors import BundleError
from dmp_ml.models.base import constructor_args
from dmp_ml.models.propensity import booster_data
from dmp_ml.models.propensity.baselines import Baseline, baseline_from_dict
from dmp_ml.models.propensity.blend import BLEND, Blend, baseline_logit
from dmp_ml.models.propensity.calibration import Calibrator

if TYPE_CHECKING:
    from dmp_ml.models.base import ProfileUpdate
    from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["MODEL_FORMAT_VERSION", "PropensityModel", "is_categorical"]

MODEL_FORMAT_VERSION = 1
_MODEL_FILE = "model.txt"
_HOLDOUT_FILE = "holdout_model.txt"
_META_FILE = "propensity.json"


_MIN_LEAF = 5
"""Smallest candidate leaf size: below it a leaf's rate is mostly noise."""
_AUC_TIE = 0.002
"""A smaller leaf size must beat a larger one by this much ROC-AUC to be chosen."""

_DEFAULT_LGBM = {
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "cat_smooth": 10.0,
    "cat_l2": 10.0,
    "max_bin": 255,
}


class BoosterTrainer(Protocol):
    """Where LightGBM boosters are trained: ``train(params, X, y, cat_cols, num_boost_round,
    valid=None, early_stopping_rounds=0)`` -> (booster, trees kept); with ``valid`` the
    booster is cut at the iteration early stopping on it would keep."""

    def train(
        self,
        params: dict[str, Any],
        X: pd.DataFrame,
        y: np.ndarray,
        cat_cols: list[str],
        num_boost_round: int,
        valid: tuple[pd.DataFrame, np.ndarray] | None = None,
        early_stopping_rounds: int = 0,
    ) -> tuple[lgb.Booster, int]: ...


class LocalBoosters:
    """In process: ``lightgbm.train`` (with its early stopping on ``valid``), the Datasets
    read from the frames' columns in place (:mod:`.booster_data`)."""

    def train(
        self,
        params: dict[str, Any],
        X: pd.DataFrame,
        y: np.ndarray,
        cat_cols: list[str],
        num_boost_round: int,
        valid: tuple[pd.DataFrame, np.ndarray] | None = None,
        early_stopping_rounds: int = 0,
    ) -> tuple[lgb.Booster, int]:
        """A booster of at most ``num_boost_round`` trees and the trees kept."""
        if valid is None:
            data = booster_data.dataset(X, y, cat_cols)
            booster = lgb.train(params, data, num_boost_round=num_boost_round)
            return booster, booster.current_iteration()
        train_set = booster_data.dataset(X, y, cat_cols)
        valid_set = booster_data.dataset(valid[0], valid[1], cat_cols, reference=train_set)
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=num_boost_round,
            valid_sets=[valid_set],
            valid_names=["validation"],
            callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
        )
        best = max(int(booster.best_iteration or booster.current_iteration()), 1)
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=best)), best


def is_categorical(s: pd.Series) -> bool:
    """Whether LightGBM treats ``s`` as categorical (category, string or object dtype)."""
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
    """Calibrated LightGBM binary classifier with per-profile reasons; a bundle model.

    Parameters
    ----------
    learning_rate, num_leaves, n_estimators, early_stopping_rounds
        LightGBM settings; ``n_estimators`` is the cap that early stopping works under.
    min_child_samples : int
        Upper bound on the rows a leaf must hold.
    min_child_fractions : sequence of float
        Candidate leaf sizes as shares of the training rows (at least 5, at most
        ``min_child_samples``): each is fitted and the one with the best validation ROC-AUC is
        kept, so a small log (a few hundred rows) can still split while a large one stays
        regularised. On large data every candidate hits the bound and one fit is made.
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
    calibrator_, best_iteration_, min_child_samples_ (the chosen leaf size), leaf_size_auc_
    (candidate -> validation ROC-AUC), feature_names_, categories_ (column -> categories),
    feature_importance_ (gain of ``booster_``), validation_ (metrics before/after calibration),
    validation_predictions_ (DataFrame: y, raw, p_uncalibrated, p_calibrated), info_ (free-form
    metadata saved with the model, e.g. cutoffs).
    """

    name: ClassVar[str] = "propensity"
    """The model's directory in a bundle and its step in the manifest."""

    def __init__(
        self,
        learning_rate: float = 0.05,
        num_leaves: int = 7,
        min_child_samples: int = 100,
        min_child_fractions: Sequence[float] = (0.005, 0.02, 0.05),
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
        self.min_child_fractions = min_child_fractions
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
    def from_settings(cls, settings: Settings) -> PropensityModel:
        """An unfitted model configured from the ``propensity`` section of ``settings``."""
        return cls(**constructor_args(cls, settings.propensity))

    # -------------------------------------------------------------------------- internals

    def leaf_size_candidates(self, n_rows: int) -> list[int]:
        """Candidate minimum leaf sizes for ``n_rows`` training rows, largest first.

        Each share of :attr:`min_child_fractions` times ``n_rows``, clipped to
        ``[min(5, min_child_samples), min_child_samples]`` and de-duplicated.
        """
        low = min(_MIN_LEAF, self.min_child_samples)
        sizes = {
            int(min(self.min_child_samples, max(low, round(f * n_rows))))
            for f in self.min_child_fractions
        }
        return sorted(sizes or {self.min_child_samples}, reverse=True)

    def _lgb_params(self, min_child_samples: int | None = None) -> dict[str, Any]:
        leaf = self.min_child_samples if min_child_samples is None else min_child_samples
        params: dict[str, Any] = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": leaf,
            "min_data_per_group": leaf,
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
        """Reindex to the training columns, fix dtypes and categories, rename to f0..fN; the
        float columns are views of ``X``'s (read-only), not copies (LightGBM reads a float32
        column as the float64 values it holds)."""
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
            elif col.dtype in (np.float64, np.float32):  # a view (to_numeric would copy it)
                out[key] = col.to_numpy()
            else:  # float64 after astype (NA -> NaN)
                out[key] = pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()
        # the columns as they are, not consolidated into one block: no copy of the matrix
        return pd.DataFrame(out, index=pd.RangeIndex(len(X)), copy=False)

    def _learn_schema(self, X: pd.DataFrame) -> None:
        self.feature_names_ = [str(c) for c in X.columns]
        if len(set(self.feature_names_)) != len(self.feature_names_):
            raise ValueError("feature columns must be unique")
        self.categories_: dict[str, list[str]] = {}
        for name in self.feature_names_:
            if is_categorical(X[name]):
                seen = X[name].dropna().astype(str)
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
        trainer: BoosterTrainer | None = None,
    ) -> PropensityModel:
        """Train with early stopping on the (later) validation data, calibrate, then refit.

        Parameters
        ----------
        X_train, X_valid : DataFrame, shape (n, n_features)
            Same columns (``X_valid`` is reindexed to ``X_train``'s columns); numeric or
            categorical (pandas ``category``/string columns are treated as categorical).
        y_train, y_valid : array-like of 0/1, shape (n,)
        trainer : where the boosters are trained (default :class:`LocalBoosters`, in process;
            e.g. ``dmp_ml.scale.DaskBoosters``, ``lightgbm.dask`` on a cluster).

        The two are copied into one frame; a caller holding every row in one frame already
        calls :meth:`fit_rows` and saves that copy.
        """
        if len(y_train) != len(X_train) or len(y_valid) != len(X_valid):
            raise ValueError("X and y differ in length")
        return self.fit_rows(
            pd.concat([X_train, X_valid.reindex(columns=X_train.columns)]),
            np.concatenate([np.asarray(y_train), np.asarray(y_valid)]),
            len(X_train),
            trainer,
        )

    def fit_rows(
        self,
        X: pd.DataFrame,
        y: Sequence[int] | np.ndarray | pd.Series,
        n_train: int,
        trainer: BoosterTrainer | None = None,
    ) -> PropensityModel:
        """:meth:`fit` on every labelled row in one frame: the first ``n_train`` rows train,
        the rest validate.

        The boosters read views of ``X``'s columns (its row slices for the holdout fits, all
        of it for the refit), so LightGBM's float matrix is the only copy of the data made;
        concatenating the parts for the refit made a second one.
        """
        trainer = trainer if trainer is not None else LocalBoosters()
        y_all = np.asarray(y, dtype=np.float64)
        if len(y_all) != len(X):
            raise ValueError("X and y differ in length")
        yt, yv = y_all[:n_train], y_all[n_train:]
        X_valid = X.iloc[n_train:]
        self._learn_schema(X)
        Xt, Xv = self._prepare(X.iloc[:n_train]), self._prepare(X_valid)
        cat_cols = [f"f{i}" for i, n in enumerate(self.feature_names_) if n in self.categories_]
        # leaf size chosen on the validation snapshot from a grid scaled to the training rows
        self.leaf_size_auc_: dict[int, float] = {}
        chosen: tuple[float, int, int, lgb.Booster] | None = None
        for leaf in self.leaf_size_candidates(len(yt)):
            booster, best = self._fit_holdout(Xt, yt, Xv, yv, cat_cols, leaf, trainer)
            raw = booster_data.predict(booster, Xv, raw_score=True, num_threads=self.n_threads)
            auc = float(metrics.roc_auc(yv, raw)) if 0 < yv.sum() < len(yv) else 0.5
            self.leaf_size_auc_[leaf] = auc
            if chosen is None or auc > chosen[0] + _AUC_TIE:
                chosen = (auc, leaf, best, booster)
        assert chosen is not None
        _, self.min_child_samples_, self.best_iteration_, self.holdout_booster_ = chosen
        params = self._lgb_params(self.min_child_samples_)

        raw_valid = booster_data.predict(
            self.holdout_booster_, Xv, raw_score=True, num_threads=self.n_threads
        )
        del Xt, Xv  # their categorical codes (and converted columns): not held through the refit
        p_before = expit(raw_valid)
        p_after = Calibrator.cross_fitted(
            raw_valid, yv, self.calibration, self.calibration_folds, self.seed
        )
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
            self.booster_, _ = trainer.train(
                params,
                self._prepare(X),
                y_all,
                cat_cols,
                self.best_iteration_,
            )
        else:
            self.booster_ = self.holdout_booster_
        self.feature_importance_ = pd.Series(
            self.booster_.feature_importance("gain"), index=self.feature_names_, name="gain"
        )
        if not hasattr(self, "info_"):
            self.info_: dict[str, Any] = {}
        logger.info(
            "propensity model: %d trees, leaf size %d of %s, validation ROC-AUC %.4f, "
            "ECE %.4f -> %.4f",
            self.best_iteration_,
            self.min_child_samples_,
            sorted(self.leaf_size_auc_),
            self.validation_["calibrated"]["roc_auc"],
            self.validation_["uncalibrated"]["ece"],
            self.validation_["calibrated"]["ece"],
        )
        return self

    def _fit_holdout(
        self,
        Xt: pd.DataFrame,
        yt: np.ndarray,
        Xv: pd.DataFrame,
        yv: np.ndarray,
        cat_cols: list[str],
        min_child_samples: int,
        trainer: BoosterTrainer,
    ) -> tuple[lgb.Booster, int]:
        """A booster early-stopped on the validation data, cut at its best iteration."""
        return trainer.train(
            self._lgb_params(min_child_samples),
            Xt,
            yt,
            cat_cols,
            self.n_estimators,
            valid=(Xv, yv),
            early_stopping_rounds=self.early_stopping_rounds,
        )

    # -------------------------------------------------------------------------- predict

    def _booster(self, which: str) -> lgb.Booster:
        self._check_fitted()
        return self._fitted(which, self.booster_, self.holdout_booster_)

    def _fitted(self, which: str, final: Any, holdout: Any) -> Any:
        """The ``final`` (every labelled row) or ``holdout`` (validation unseen) fit."""
        self._check_fitted()
        if which == "final":
            return final
        if which == "holdout":
            return holdout
        raise ValueError(f"which must be 'final' or 'holdout', got {which!r}")

    # ------------------------------------------------------------------- the guard's choice

    @property
    def served(self) -> str:
        """What answers: ``model`` (LightGBM), the name of the baseline that beat it, or
        ``blend`` (LightGBM stacked with a baseline, :mod:`.blend`)."""
        return getattr(self, "served_", "model")

    def serve_blend(
        self, blend: Blend, holdout: Baseline, final: Baseline, calibrator: Calibrator
    ) -> PropensityModel:
        """Answer with LightGBM stacked with a baseline (the blend won on held-out time).

        ``holdout``/``final`` are the baseline's two fits, like the boosters; ``calibrator``
        maps the blended log-odds to a probability (fitted on the validation snapshot).
        """
        self._check_fitted()
        self.served_ = BLEND
        self.blend_ = blend
        self.holdout_baseline_ = holdout
        self.baseline_ = final
        self.calibrator_ = calibrator
        return self

    def serve_baseline(self, name: str, holdout: Baseline, final: Baseline) -> PropensityModel:
        """Answer with a plain baseline instead of LightGBM (it won on held-out time).

        ``holdout`` was fitted without the validation snapshot, ``final`` on every labelled
        row, like the two boosters. Baselines are logistic, so their probabilities are served
        as they are (identity calibration).
        """
        self._check_fitted()
        self.served_ = name
        self.holdout_baseline_ = holdout
        self.baseline_ = final
        self.calibrator_ = Calibrator(method="identity")
        return self

    def predict_raw(self, X: pd.DataFrame, which: str = "final") -> np.ndarray:
        """Uncalibrated log-odds of what is served (LightGBM, or the baseline), shape (n,)."""
        if len(X) == 0:
            return np.empty(0)
        if self.served != "model":
            baseline = self._fitted(which, self.baseline_, self.holdout_baseline_)
            base_raw = baseline_logit(baseline.predict_proba(X))
            if self.served != BLEND:
                return base_raw
        booster = self._booster(which)
        raw = booster_data.predict(
            booster, self._prepare(X), raw_score=True, num_threads=self.n_threads
        )
        return self.blend_.raw(raw, base_raw) if self.served == BLEND else raw

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
        if self.served not in ("model", BLEND):
            names, contrib = self.baseline_.contributions(X)
            k = min(n, contrib.shape[1])
            top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
            inputs = self.baseline_.reason_inputs(X)
            values = {i: inputs[names[i]].tolist() for i in np.unique(top)}
            return _reasons(top, contrib, names, values)
        prepared = self._prepare(X)
        contrib = self.booster_.predict(prepared, pred_contrib=True, num_threads=self.n_threads)
        contrib = np.asarray(contrib)[:, :-1]
        if self.served == BLEND:  # the model's share of the blended log-odds
            contrib = contrib * self.blend_.a
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
        return _reasons(top, contrib, self.feature_names_, values)

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
            "min_child_samples": self.min_child_samples_,
            "leaf_size_auc": {str(k): v for k, v in self.leaf_size_auc_.items()},
            "calibrator": self.calibrator_.to_dict(),
            "validation": self.validation_,
            "feature_importance": self.feature_importance_.to_dict(),
            "info": self.info_,
            "served": self.served,
        }
        if self.served != "model":
            meta["baseline"] = self.baseline_.to_dict()
            meta["holdout_baseline"] = self.holdout_baseline_.to_dict()
        if self.served == BLEND:
            meta["blend"] = self.blend_.to_dict()
        (path / _META_FILE).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> PropensityModel:
        """Read a model written by :meth:`save`; raises :class:`BundleError` when incomplete.

        ``n_threads`` (when given) replaces the trained thread count for predictions.
        """
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
        # JSON lists back to the tuples the constructor was given (as constructor_args does)
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()}
        if n_threads is not None:
            params["n_threads"] = n_threads
        model = cls(**params)
        model.booster_ = booster
        model.holdout_booster_ = holdout if holdout is not None else booster
        model.feature_names_ = list(meta["feature_names"])
        model.categories_ = {k: list(v) for k, v in meta["categories"].items()}
        model.best_iteration_ = int(meta["best_iteration"])
        model.min_child_samples_ = int(meta.get("min_child_samples", model.min_child_samples))
        model.leaf_size_auc_ = {int(k): float(v) for k, v in meta.get("leaf_size_auc", {}).items()}
        model.calibrator_ = Calibrator.from_dict(meta["calibrator"])
        model.validation_ = meta.get("validation", {})
        model.feature_importance_ = pd.Series(
            meta.get("feature_importance", {}), name="gain", dtype="float64"
        ).reindex(model.feature_names_, fill_value=0.0)
        model.info_ = dict(meta.get("info", {}))
        model.served_ = str(meta.get("served", "model"))
        if model.served_ != "model":
            model.baseline_ = baseline_from_dict(meta["baseline"])
            model.holdout_baseline_ = baseline_from_dict(meta["holdout_baseline"])
        if model.served_ == BLEND:
            model.blend_ = Blend.from_dict(meta["blend"])
        return model

    # ---------------------------------------------------------------------------- refresh

    def update(self, change: ProfileUpdate) -> PropensityModel:
        """Nothing to learn between trains: the booster and calibrator stay as fitted.

        The touched profiles' scores change with their features; :meth:`rescore` computes them.
        """
        self._check_fitted()
        return self

    def rescore(
        self, features: pd.DataFrame, ranked: np.ndarray, replaced: np.ndarray
    ) -> pd.DataFrame:
        """Scores of profiles whose features a refresh changed, ranked among the others'.

        Parameters
        ----------
        features : DataFrame
            The profiles' new feature rows, indexed by ``profile_id``.
        ranked : ndarray
            Every scored profile's raw score (log-odds), sorted.
        replaced : ndarray
            The raw scores in ``ranked`` of the profiles the refresh touched (theirs are
            replaced, or gone): they do not count in the ranks.

        Returns
        -------
        ``score``, ``percentile`` and ``raw`` indexed by ``profile_id``. A percentile ranks
        the new raw score among the other profiles' (theirs are not re-ranked until the next
        train), found by binary search in ``ranked`` less the ``replaced`` scores below it,
        so a batch does not sort the population's scores again.
        """
        self._check_fitted()
        raw = np.asarray(self.predict_raw(features), dtype=np.float64)
        score = self.calibrator_.predict(raw) if len(raw) else raw
        gone = np.sort(np.asarray(replaced, dtype=np.float64))
        below = np.searchsorted(ranked, raw, side="right") - np.searchsorted(gone, raw, "right")
        pct = 100.0 * (below + 1) / (len(ranked) - len(gone) + 1)
        return pd.DataFrame(
            {"score": np.asarray(score, dtype=np.float64), "percentile": pct, "raw": raw},
            index=pd.Index(features.index, name="profile_id"),
        )

    def forget(self, profile_ids: Iterable[str]) -> int:
        """Drop the profiles' rows from the in-memory validation predictions (the only
        per-profile data the model holds; none is saved); returns how many were held."""
        held = getattr(self, "validation_predictions_", None)
        if held is None:
            return 0
        hit = held.index.astype(str).isin([str(p) for p in profile_ids])
        self.validation_predictions_ = held.loc[~hit]
        return int(hit.sum())


def _reasons(
    top: np.ndarray, contrib: np.ndarray, names: Sequence[str], values: dict[int, list[Any]]
) -> list[list[dict[str, Any]]]:
    """Reason dicts per row from the ``top`` column indices of ``contrib`` (see explain)."""
    out: list[list[dict[str, Any]]] = []
    for row, idx in enumerate(top):
        reasons = []
        for i in idx:
            c = float(contrib[row, i])
            if c == 0.0:
                continue
            reasons.append(
                {
                    "feature": names[i],
                    "value": _json_value(values[i][row]),
                    "direction": "+" if c > 0 else "-",
                    "contribution": c,
                }
            )
        out.append(reasons)
    return out
