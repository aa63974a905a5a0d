"""MLflow tracking on a real SQLite store: runs, artifacts, pyfunc model, champion gating."""

from __future__ import annotations

import math
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient
from synthetic import CUTOFFS, FAST, feature_table, labelled_frame

from dmp_ml.propensity import PropensityResult, train_propensity
from dmp_ml.settings import Settings
from dmp_ml.tracking import (
    decide_champion,
    experiment_name,
    log_metrics_run,
    log_propensity_run,
    pyfunc_input,
    registered_model_name,
    use_tracking_uri,
)


def _result(settings: Settings, drop: tuple[str, ...] = (), shuffle: bool = False):
    snaps = []
    for k, cutoff in enumerate(CUTOFFS):
        X, y = labelled_frame(1500, k)
        if shuffle and k < 2:
            y = np.random.default_rng(99).permutation(y)
        snaps.append(
            (feature_table(X.drop(columns=list(drop)), cutoff), pd.Series(y, index=X.index))
        )
    score = feature_table(labelled_frame(300, 7)[0].drop(columns=list(drop)), "2026-04-01")
    return train_propensity(snaps, score, settings)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Settings:
    """One SQLite store for the module (creating its schema takes seconds)."""
    workdir = tmp_path_factory.mktemp("tracking") / "work"
    workdir.mkdir()
    return Settings(workdir=workdir, propensity=FAST)


@pytest.fixture()
def settings(store, tmp_path, monkeypatch) -> Settings:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory by accident
    return store


@pytest.fixture(scope="module")
def results() -> dict[str, PropensityResult]:
    s = Settings(propensity=FAST)
    return {
        "weak": _result(s, drop=("wave",)),
        "noise": _result(s, shuffle=True),
        "strong": _result(s),
    }


def test_default_tracking_uri_is_sqlite_in_the_workdir(settings) -> None:
    uri = settings.tracking_uri()
    assert uri.startswith("sqlite:///") and uri.endswith("/work/mlflow.db")


@pytest.mark.slow
def test_log_metrics_run_records_params_metrics_and_artifacts(settings, tmp_path) -> None:
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    before = mlflow.get_tracking_uri()
    env_before = dict(os.environ)
    run_id = log_metrics_run(
        "dmp-send-time",
        {"horizon": 7, "channels": ["email", "web"]},
        {"lift": 1.7, "undefined": math.nan},
        {"plots/curve": fig, "summary": {"ok": True}},
        settings=settings,
        tags={"step": "send_time"},
    )
    assert mlflow.get_tracking_uri() == before  # global MLflow state restored
    assert dict(os.environ) == env_before
    client = MlflowClient(settings.tracking_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"lift": 1.7}  # NaN is skipped, not an error
    assert run.data.params == {"horizon": "7", "channels": '["email", "web"]'}
    assert run.data.tags["step"] == "send_time"
    names = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "plots")
    }
    assert {"plots/curve.png", "summary.json"} <= names
    # artifacts live beside the database, not in the current directory
    assert (settings.workdir / "mlartifacts" / "dmp-send-time").is_dir()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_propensity_runs_log_everything_and_gate_the_champion(settings, results, tmp_path) -> None:
    uri = settings.tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    name = registered_model_name("purchase")

    # 1. first model: no champion yet, alias set
    first = log_propensity_run(results["weak"], settings)
    assert first.version == "1" and first.decision.promoted
    assert first.decision.reason == "no champion yet"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    run = client.get_run(first.run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == experiment_name("purchase") == "dmp-propensity-purchase"
    m = run.data.metrics
    for key in (
        "model_roc_auc",
        "model_log_loss",
        "model_uncalibrated_roc_auc",
        "baseline_rf_logreg_roc_auc",
        "baseline_single_roc_auc",
        "baseline_single_capture_top_decile",
        "model_lift_top_decile",
        "ece_before_calibration",
        "ece_after_calibration",
    ):
        assert key in m
    assert m["model_roc_auc"] == pytest.approx(results["weak"].metrics["model"]["roc_auc"])
    assert run.data.params["propensity.horizon_days"] == "30"
    assert run.data.params["validation_cutoff"].startswith("2026-03-02")
    assert run.data.tags["champion_decision"] == "promoted"
    paths = {a.path for a in client.list_artifacts(first.run_id)}
    plots = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert {"feature_spec.json", "feature_importance.json", "validation_metrics.json"} <= paths
    assert plots == {"plots/calibration.png", "plots/gains.png", "plots/feature_importance.png"}

    # the logged model answers with probabilities through plain mlflow.pyfunc
    with use_tracking_uri(uri):
        loaded = mlflow.pyfunc.load_model(first.model_uri)
    X = results["weak"].validation.X.head(50)
    p = loaded.predict(pyfunc_input(results["weak"].model, X))
    np.testing.assert_allclose(np.asarray(p), results["weak"].model.predict_proba(X))
    assert loaded.metadata.get_input_schema().input_names() == list(X.columns)

    # 2. a worse model (trained on shuffled labels): champion stays, the run says why
    second = log_propensity_run(results["noise"], settings)
    assert second.version == "2" and not second.decision.promoted
    assert second.decision.reason.startswith("champion kept: ROC-AUC")
    assert second.decision.comparison_clean
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    tags = client.get_run(second.run_id).data.tags
    assert tags["champion_decision"] == "kept"
    assert "champion v1" in tags["champion_reason"]
    gate = client.get_run(second.run_id).data.metrics
    assert gate["gate_champion_roc_auc"] > gate["gate_new_roc_auc"]

    # 3. a better model on the same validation snapshot: the alias moves
    third = log_propensity_run(results["strong"], settings)
    assert third.decision.promoted, third.decision.reason
    assert third.decision.reason.startswith("new model is better")
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    assert third.champion_version == "3" and second.champion_version == "1"
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_decide_champion_ties_and_time_overlap(results) -> None:
    strong = results["strong"]
    # the same model: equal ROC-AUC; cross-fitted new log-loss vs champion's in-sample
    # calibrator: the champion (in-sample) is at least as good, so it is kept
    same = decide_champion(strong, strong.model, "3")
    assert "ROC-AUC tied" in same.reason and not same.promoted
    # a champion whose training data reach past this validation cutoff is flagged
    later = strong.model
    saved = dict(later.info_)
    later.info_ = {**saved, "validation_cutoff": "2026-03-20T00:00:00+00:00"}
    try:
        flagged = decide_champion(results["noise"], later, "9")
    finally:
        later.info_ = saved
    assert not flagged.comparison_clean and "caution" in flagged.reason
    assert decide_champion(strong, None).reason == "no champion yet"
