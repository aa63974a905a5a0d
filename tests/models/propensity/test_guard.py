"""The guard: a propensity model that loses to a plain baseline on held-out time is not served."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import dmp_ml
from dmp_ml.models.propensity import PropensityModel
from dmp_ml.models.propensity.baselines import choose_served
from dmp_ml.settings import load_settings

pytestmark = pytest.mark.slow


def test_the_model_is_served_unless_a_baseline_beats_it() -> None:
    assert choose_served({"model": 0.70, "baseline_rf_logreg": 0.69, "baseline_single": 0.6}) == (
        "model"
    )
    assert choose_served({"model": 0.70, "baseline_rf_logreg": 0.70}) == "model"  # a tie: model
    assert choose_served({"model": 0.50, "baseline_rf_logreg": 0.69, "baseline_single": 0.71}) == (
        "baseline_single"
    )
    assert choose_served({"model": math.nan, "baseline_rf_logreg": 0.6}) == "baseline_rf_logreg"
    assert choose_served({"model": 0.6, "baseline_rf_logreg": math.nan}) == "model"


def test_a_crippled_model_loses_and_the_bundle_serves_the_baseline(tmp_path: Path) -> None:
    world = dmp_ml.demo.generate_retail_world(800, days=365, seed=3)
    settings = load_settings(workdir=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db")
    # a leaf must hold every training row: LightGBM cannot split, every score is the base rate
    crippled = settings.propensity.model_copy(
        update={"min_child_samples": 1_000_000, "min_child_fractions": [1.0], "horizon_days": 30}
    )
    settings = settings.model_copy(update={"propensity": crippled})
    result = dmp_ml.train(world.events, "end", tmp_path, settings=settings)

    step = result.steps["propensity"]
    assert step.status == "trained"
    served = step.details["served"]
    assert served in (
        "baseline_rf_logreg",
        "baseline_single",
        "baseline_bgnbd",
        "baseline_rfm_lightgbm",
    )
    assert step.metrics["model_roc_auc"] < 0.55  # no better than chance
    assert step.metrics["served_roc_auc"] > 0.6
    assert f"serving {served}" in step.details["comparison"]

    bundle = dmp_ml.load_bundle(tmp_path)
    assert bundle.propensity.served == served  # what the guard picked survives save and load
    scores = bundle.score(explain=True).frame
    assert scores["score"].nunique() > 10  # the baseline ranks people; the crippled model did not
    reasons = [r for rs in scores["reasons"] for r in rs]
    X = bundle.features.frame.loc[scores["profile_id"].tolist()]
    shown = set(bundle.propensity.baseline_.reason_inputs(X).columns)
    assert reasons and {r["feature"] for r in reasons} <= shown
    # the scores are the baseline's probabilities for the bundle's own features
    np.testing.assert_allclose(
        scores["score"].to_numpy(), bundle.propensity.baseline_.predict_proba(X), rtol=1e-6
    )
    reloaded = PropensityModel.load(bundle.path / "propensity")
    np.testing.assert_allclose(reloaded.predict_proba(X), bundle.propensity.predict_proba(X))
