"""Propensity boosters on Dask: LightGBM trained by ``lightgbm.dask`` on the cluster.

:class:`DaskBoosters` is a :class:`dmp_ml.models.propensity.model.BoosterTrainer`. The
training rows are scattered to the workers in partitions and ``lightgbm.dask`` trains one
booster over all of them (data-parallel LightGBM across the workers). ``lightgbm.dask`` has no
early stopping, so a booster with a validation set is trained to ``num_boost_round`` trees and
cut where LightGBM's early stopping would have stopped: the validation log-loss after each
tree is computed on the client, and the best iteration is the one early stopping with the same
patience would return. The leaf-size search, calibration, baselines and scoring stay on the
client. Validation ROC-AUC within 0.005 of the local engine (the tests check it).
"""

from __future__ import annotations

import logging
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit

from dmp_ml.scale.cluster import PartitionedStage, require_dask

logger = logging.getLogger(__name__)


def best_iteration(booster: lgb.Booster, X: pd.DataFrame, y: np.ndarray, patience: int) -> int:
    """The iteration LightGBM's early stopping on ``X, y`` (binary log-loss, ``patience``
    rounds) would keep for ``booster``: the first best score before ``patience`` trees
    without improvement."""
    raw = np.zeros(len(y))
    best, best_i = np.inf, 0
    for i in range(booster.current_iteration()):
        raw += booster.predict(X, start_iteration=i, num_iteration=1, raw_score=True)
        p = np.clip(expit(raw), 1e-15, 1 - 1e-15)
        loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        if loss < best:
            best, best_i = loss, i
        elif i - best_i >= patience:
            break
    return best_i + 1


class DaskBoosters(PartitionedStage):
    """Train LightGBM boosters with ``lightgbm.dask`` (see the module doc), the training rows
    in ``npartitions`` partitions."""

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
        """A booster of at most ``num_boost_round`` trees and the trees kept (cut at the best
        iteration on ``valid`` when given)."""
        dd = require_dask()
        from lightgbm.dask import DaskLGBMClassifier

        nparts = max(1, min(self.npartitions, len(X)))
        frame = X.assign(_label=np.asarray(y, dtype=np.float64))
        bounds = np.linspace(0, len(frame), nparts + 1).astype(int)
        parts = [frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        with self.session.client() as client:
            # the rows travel to the workers as data, not inside the task graph
            sent = client.scatter(parts, hash=False)
            data = dd.from_delayed(sent, meta=frame.iloc[:0], verify_meta=False)
            model = DaskLGBMClassifier(
                client=client, n_estimators=int(num_boost_round), **_sklearn_params(params)
            )
            model.fit(data.drop(columns="_label"), data["_label"], categorical_feature=cat_cols)
            booster = model.booster_
        best = booster.current_iteration()
        if valid is not None:
            best = best_iteration(booster, valid[0], valid[1], early_stopping_rounds)
        logger.info("dask propensity booster: %d of %d trees kept", best, num_boost_round)
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=best)), best


def _sklearn_params(params: dict[str, Any]) -> dict[str, Any]:
    """LightGBM parameters for the scikit-learn interface (``seed`` -> ``random_state``;
    threads are the Dask workers' to set)."""
    out = {k: v for k, v in params.items() if k not in ("objective", "seed", "num_threads")}
    out["random_state"] = params.get("seed")
    out["objective"] = params.get("objective", "binary")
    return out
