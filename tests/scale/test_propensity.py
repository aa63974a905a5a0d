"""Propensity boosters trained by lightgbm.dask match the local ones (ROC-AUC within 0.005)."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from dmp_ml.models.propensity.model import LocalBoosters, PropensityModel
from dmp_ml.scale import DaskEngine
from dmp_ml.scale.propensity import DaskBoosters, best_iteration


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "recency": rng.exponential(20.0, n),
            "frequency": rng.poisson(3.0, n).astype(float),
            "noise": rng.normal(size=n),
            "channel": pd.Categorical(rng.choice(["web", "email", "app"], n)),
        }
    )
    logit = -1.0 - 0.05 * X["recency"] + 0.4 * X["frequency"] + (X["channel"] == "email") * 0.8
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def data():
    return _data(6000, 0), _data(3000, 1)


def test_propensity_on_lightgbm_dask_is_within_half_a_point_of_auc(data, client):
    (Xt, yt), (Xv, yv) = data
    local = PropensityModel(n_estimators=300).fit(Xt, yt, Xv, yv)
    dask = PropensityModel(n_estimators=300).fit(
        Xt, yt, Xv, yv, trainer=DaskBoosters(DaskEngine(client), 3)
    )
    auc_local = local.validation_["uncalibrated"]["roc_auc"]
    auc_dask = dask.validation_["uncalibrated"]["roc_auc"]
    assert auc_local > 0.7  # the model learned something
    assert abs(auc_dask - auc_local) < 0.005
    assert dask.booster_.current_iteration() == dask.best_iteration_ > 1


def test_the_best_iteration_is_where_lightgbm_early_stopping_stops(data):
    (Xt, yt), (Xv, yv) = data
    params = PropensityModel()._lgb_params(50)
    _, stopped = LocalBoosters().train(
        params, Xt, yt, ["channel"], 400, valid=(Xv, yv), early_stopping_rounds=20
    )
    full = lgb.train(params, lgb.Dataset(Xt, yt, categorical_feature=["channel"]), 400)
    assert 1 < stopped < 400
    assert best_iteration(full, Xv, yv.astype(float), 20) == stopped
