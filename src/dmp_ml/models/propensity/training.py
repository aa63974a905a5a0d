"""Training orchestration: validate on the latest snapshot, compare with baselines, score.

The most recent labelled snapshot is the validation set (a time split): LightGBM's leaf size is
chosen on it (from a grid scaled to the training rows) and it stops early on it, a calibrator is
fitted on it (and evaluated by cross-fitting), the baselines of :mod:`.baselines` are scored on
it, and the booster is refit on all snapshots. Scores are produced for the feature table at
``as_of``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import expit

from dmp_ml import metrics
from dmp_ml.errors import InsufficientDataError
from dmp_ml.features import FeatureSpec, FeatureTable
from dmp_ml.models.propensity.baselines import (
    BASELINES,
    choose_served,
)
from dmp_ml.models.propensity.blend import BLEND, Blend, baseline_logit
from dmp_ml.models.propensity.calibration import Calibrator
from dmp_ml.models.propensity.model import BoosterTrainer, PropensityModel
from dmp_ml.models.propensity.snapshots import stack_snapshots, widened_copy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dmp_ml.settings import PropensitySettings, Settings

logger = logging.getLogger(__name__)

__all__ = ["PropensityResult", "ValidationSet", "score_profiles", "train_propensity"]


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
    ``baseline_rf_logreg``, ``baseline_single``, ``baseline_bgnbd``,
    ``baseline_rfm_lightgbm`` (and ``blend`` when it could be cross-fitted) to
    :func:`dmp_ml.metrics.classification_report` dicts computed on the validation snapshot.
    ``scores`` has ``profile_id, score, percentile, raw`` for every profile of the score table
    (percentile in (0, 100], 100 = most likely; ``raw`` the log-odds, which a refresh ranks a
    new score against instead of scoring the whole population again).
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
    candidates: dict[str, float] = field(default_factory=dict)
    """Validation ROC-AUC of the model and of each baseline: the guard's comparison."""

    @property
    def served(self) -> str:
        """What the bundle answers with: ``model`` or the baseline that beat it."""
        return self.model.served

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
                    "BG/NBD baseline": pred["p_baseline_bgnbd"],
                    "RFM LightGBM baseline": pred["p_baseline_rfm_lightgbm"],
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
            "baseline_bgnbd_roc_auc": m["baseline_bgnbd"]["roc_auc"],
            "baseline_rfm_lightgbm_roc_auc": m["baseline_rfm_lightgbm"]["roc_auc"],
            "ece_before_calibration": m["model_uncalibrated"]["ece"],
            "ece_after_calibration": m["model"]["ece"],
            "served_roc_auc": m[self.served]["roc_auc"],
            **{f"n_{k}": float(v) for k, v in self.counts.items()},
        }


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
    settings: Settings,
    trainer: BoosterTrainer | None = None,
) -> PropensityResult:
    """Train, validate and score a propensity model from labelled snapshots.

    Parameters
    ----------
    snapshots : list of (FeatureTable, labels)
        Feature tables at past cutoffs with their 0/1 labels (Series indexed by profile_id,
        see :func:`make_labels`). The one with the latest ``spec.as_of`` is the validation set.
    score_table : FeatureTable
        Features as of ``as_of``; its columns are the model's columns (snapshots are aligned to
        them with :func:`.snapshots.align_features`) and its profiles are scored.
    settings : Settings
        Its ``propensity`` section configures the model and the minimum counts.
    trainer : where the model's boosters are trained (default in process; see
        :meth:`PropensityModel.fit`). The baselines are fitted in process.

    Raises
    ------
    InsufficientDataError
        Fewer than two snapshots, or too few positives/negatives in train or validation.
    """
    ps = settings.propensity
    target = ps.target_event
    if len(snapshots) < 2:
        raise InsufficientDataError(
            f"the '{target}' propensity model needs at least 2 labelled snapshots (one to train, "
            f"one to validate), got {len(snapshots)}: the event history is probably shorter "
            f"than the first cutoff (as_of - n_snapshots x horizon_days = {ps.n_snapshots} x "
            f"{ps.horizon_days} days); use a shorter horizon_days or a later as_of"
        )
    ordered = sorted(snapshots, key=lambda s: s[0].spec.as_of)
    # the tables are copied into one frame of every labelled row below, each let go once
    # copied; a caller that passes the list without keeping it (the train step) has them
    # freed as they are copied
    del snapshots
    train_cutoffs = [t.spec.as_of for t, _ in ordered[:-1]]
    valid_cutoff = ordered[-1][0].spec.as_of
    n_snapshots = len(ordered)
    n_valid = len(ordered[-1][0].frame)
    X_all, y_all = stack_snapshots(ordered, score_table.frame)
    n_train = len(X_all) - n_valid
    # the training and validation rows are views of X_all, which the refits read whole
    X_train, X_valid = X_all.iloc[:n_train], X_all.iloc[n_train:]
    y_train, y_valid = y_all[:n_train], y_all[n_train:]
    _check_counts("training data (all snapshots but the last)", y_train, ps, target)
    _check_counts("validation snapshot (the most recent labelled one)", y_valid, ps, target)

    info = {
        "target_event": target,
        "horizon_days": ps.horizon_days,
        "as_of": score_table.spec.as_of.isoformat(),
        "validation_cutoff": valid_cutoff.isoformat(),
        "train_cutoffs": [c.isoformat() for c in train_cutoffs],
        "feature_version": score_table.spec.version,
    }
    # the plain baselines, fitted on the training snapshots only, like the holdout booster
    baselines = {
        name: make(target, ps.horizon_days).fit(X_train, y_train)
        for name, make in BASELINES.items()
    }
    model = PropensityModel.from_settings(settings)
    model.info_ = info
    model.fit_rows(X_all, y_all, n_train, trainer=trainer)
    rf, single = baselines["baseline_rf_logreg"], baselines["baseline_single"]
    predictions = pd.DataFrame(
        {
            "p_model_uncalibrated": model.validation_predictions_["p_uncalibrated"].to_numpy(),
            "p_model": model.validation_predictions_["p_calibrated"].to_numpy(),
            **{f"p_{name}": b.predict_proba(X_valid) for name, b in baselines.items()},
        },
        index=X_valid.index,
    )
    report = {
        "model": model.validation_["calibrated"],
        "model_uncalibrated": model.validation_["uncalibrated"],
        **{
            name: metrics.classification_report(y_valid, predictions[f"p_{name}"])
            for name in baselines
        },
    }
    # the guard: serve LightGBM only if no plain baseline (nor its blend with the best
    # baseline, cross-fitted on the validation snapshot) beats it on the held-out snapshot
    aucs = {name: float(report[name]["roc_auc"]) for name in ("model", *BASELINES)}
    served = choose_served(aucs)
    blend, blend_raw = _blend_candidate(model, predictions, aucs, y_valid, ps.seed)
    if blend is not None and blend_raw is not None:
        predictions[f"p_{BLEND}"] = p_blend = expit(blend_raw)
        report[BLEND] = metrics.classification_report(y_valid, p_blend)
        aucs[BLEND] = float(report[BLEND]["roc_auc"])
        if aucs[BLEND] > aucs[served]:
            served = BLEND
    if served == BLEND:
        assert blend is not None
        final = BASELINES[blend.baseline](target, ps.horizon_days).fit(X_all, y_all)
        stacked = blend.raw(
            model.validation_predictions_["raw"].to_numpy(),
            baseline_logit(predictions[f"p_{blend.baseline}"].to_numpy()),
        )
        calibrator = Calibrator.fit(stacked, y_valid, model.calibration)
        model.serve_blend(blend, baselines[blend.baseline], final, calibrator)
        logger.info(
            "propensity '%s': the blend of the model and %s (validation ROC-AUC %.4f, "
            "cross-fitted) beats the model (%.4f): serving it",
            target,
            blend.baseline,
            aucs[BLEND],
            aucs["model"],
        )
    elif served != "model":
        final = BASELINES[served](target, ps.horizon_days).fit(X_all, y_all)
        model.serve_baseline(served, baselines[served], final)
        logger.warning(
            "propensity '%s': %s (validation ROC-AUC %.4f) beats the model (%.4f): serving it",
            target,
            served,
            aucs[served],
            aucs["model"],
        )
    scores = score_profiles(model, score_table, raw=True)
    counts = {
        "train_rows": len(y_train),
        "train_positives": int(y_train.sum()),
        "validation_rows": len(y_valid),
        "validation_positives": int(y_valid.sum()),
        "scored_profiles": len(scores),
        "snapshots": n_snapshots,
        "best_iteration": model.best_iteration_,
        "min_child_samples": model.min_child_samples_,
    }
    logger.info(
        "propensity '%s': ROC-AUC model %.4f, RF baseline %.4f, single (%s) %.4f, BG/NBD %.4f",
        target,
        report["model"]["roc_auc"],
        report["baseline_rf_logreg"]["roc_auc"],
        single.feature_,
        report["baseline_single"]["roc_auc"],
        report["baseline_bgnbd"]["roc_auc"],
    )
    return PropensityResult(
        model=model,
        target_event=target,
        horizon_days=ps.horizon_days,
        as_of=score_table.spec.as_of,
        metrics=report,
        validation=ValidationSet(
            cutoff=valid_cutoff,
            X=widened_copy(X_valid),  # a view would hold every labelled row as long as the result
            y=y_valid,
            predictions=predictions,
        ),
        scores=scores,
        feature_spec=score_table.spec,
        train_cutoffs=train_cutoffs,
        counts=counts,
        baseline_single_feature=single.feature_,
        baseline_rf_features=rf.columns_,
        candidates=aucs,
    )


def _blend_candidate(
    model: PropensityModel,
    predictions: pd.DataFrame,
    aucs: dict[str, float],
    y_valid: np.ndarray,
    seed: int,
) -> tuple[Blend | None, np.ndarray | None]:
    """The stack of the model and the best baseline on the validation snapshot.

    Returns the stack fitted on every validation row and its cross-fitted (out-of-fold)
    log-odds, which is what the guard compares; (None, None) when no baseline has a finite
    AUC or the labels are too few to cross-fit.
    """
    finite = {n: v for n, v in aucs.items() if n in BASELINES and np.isfinite(v)}
    if not finite or not np.isfinite(aucs.get("model", np.nan)):
        return None, None
    best = max(finite, key=lambda n: finite[n])
    model_raw = model.validation_predictions_["raw"].to_numpy(dtype=np.float64)
    base_raw = baseline_logit(predictions[f"p_{best}"].to_numpy())
    oof = Blend.cross_fitted(model_raw, base_raw, y_valid, model.calibration_folds, seed)
    if oof is None:
        return None, None
    return Blend.fit(best, model_raw, base_raw, y_valid), oof


def score_profiles(model: PropensityModel, table: FeatureTable, raw: bool = False) -> pd.DataFrame:
    """``profile_id, score, percentile`` for every profile of ``table`` (and ``raw`` with
    ``raw``: the model's log-odds the percentile ranks by).

    ``score`` is the calibrated probability; ``percentile`` in (0, 100] ranks by the model's raw
    score (same order as ``score``, but without the ties calibration can introduce).
    """
    X = table.frame
    log_odds = model.predict_raw(X)
    score = model.calibrator_.predict(log_odds)
    pct = (
        pd.Series(log_odds).rank(method="max", pct=True).to_numpy() * 100
        if len(log_odds)
        else log_odds
    )
    out = pd.DataFrame(
        {
            "profile_id": pd.array(X.index.astype(str), dtype="string"),
            "score": score.astype(np.float64),
            "percentile": np.asarray(pct, dtype=np.float64),
        }
    )
    if raw:
        out["raw"] = np.asarray(log_odds, dtype=np.float64)
    return out
