"""MLflow tracking on a real SQLite store: runs, artifacts, pyfunc model, champion gating."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient
from synthetic import CUTOFFS, FAST, feature_table, labelled_frame

from dmp_ml.models.propensity import PropensityResult, train_propensity
from dmp_ml.settings import Settings
from dmp_ml.tracking import (
    TrainingData,
    champion_version,
    decide_champion,
    experiment_name,
    guard_artifacts,
    legacy_registered_model_name,
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
def test_the_guard_comparison_is_a_table_and_a_chart_in_the_run(settings) -> None:
    candidates = {"model": 0.712, "recency": 0.698, "frequency": 0.731}
    run_id = log_metrics_run(
        "dmp-guard-test",
        {},
        {"served_roc_auc": 0.731},
        guard_artifacts(candidates, "frequency", "roc_auc"),
        settings=settings,
    )
    client = MlflowClient(settings.tracking_uri())
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {
        "plots/guard_comparison.png"
    }
    local = Path(client.download_artifacts(run_id, "guard/comparison.json"))
    payload = json.loads(local.read_text())
    rows = [dict(zip(payload["columns"], row, strict=True)) for row in payload["data"]]
    assert rows == [
        {"candidate": "model", "roc_auc": 0.712, "served": False},
        {"candidate": "recency", "roc_auc": 0.698, "served": False},
        {"candidate": "frequency", "roc_auc": 0.731, "served": True},
    ]


@pytest.mark.slow
def test_log_metrics_run_records_params_metrics_and_artifacts(settings, tmp_path) -> None:
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    before = mlflow.get_tracking_uri()
    env_before = dict(os.environ)
    events = pd.DataFrame({"profile_id": ["a", "b"], "n": [1, 2]})
    run_id = log_metrics_run(
        "dmp-send-time",
        {"horizon": 7, "channels": ["email", "web"]},
        {"lift": 1.7, "undefined": math.nan},
        {"plots/curve": fig, "summary": {"ok": True}},
        settings=settings,
        tags={"step": "send_time"},
        dataset=TrainingData.from_frame(events, "events", "ab" * 32, "dataframe"),
    )
    assert mlflow.get_tracking_uri() == before  # global MLflow state restored
    assert dict(os.environ) == env_before
    client = MlflowClient(settings.tracking_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"lift": 1.7}  # NaN is skipped, not an error
    assert run.data.params == {"horizon": "7", "channels": '["email", "web"]'}
    assert run.data.tags["step"] == "send_time"
    # the training data as an input: digest, schema and row count, never the rows
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "events" and given.dataset.digest == "ab" * 16
    assert "profile_id" in given.dataset.schema and "'a'" not in given.dataset.schema
    assert {t.key: t.value for t in given.tags}["rows"] == "2"
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
    name = registered_model_name("purchase", 30)
    assert name == "dmp-propensity-purchase-30d"

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
    assert plots == {
        "plots/calibration.png",
        "plots/gains.png",
        "plots/feature_importance.png",
        "plots/guard_comparison.png",
    }

    # the logged model answers with probabilities through plain mlflow.pyfunc
    with use_tracking_uri(uri):
        loaded = mlflow.pyfunc.load_model(first.model_uri)
        local = Path(
            mlflow.artifacts.download_artifacts(first.model_uri, dst_path=str(tmp_path / "model"))
        )
    X = results["weak"].validation.X.head(50)
    p = loaded.predict(pyfunc_input(results["weak"].model, X))
    np.testing.assert_allclose(np.asarray(p), results["weak"].model.predict_proba(X))
    assert loaded.metadata.get_input_schema().input_names() == list(X.columns)
    _assert_installable(local, X.head(20), results["weak"].model)

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
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # only the download asked for


def _closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they may import (their requirements and extras:
    e.g. scikit-learn imports rich when present), normalised."""
    norm = {n.lower().replace("_", "-") for n in names}
    todo = list(norm)
    while todo:
        try:
            requires = metadata.requires(todo.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            name = req.split(";")[0].split("[")[0]
            for sep in "<>=!~ (":
                name = name.split(sep)[0]
            name = name.strip().lower().replace("_", "-")
            if name and name not in norm:
                norm.add(name)
                todo.append(name)
    return norm


def _assert_installable(model_dir: Path, X: pd.DataFrame, model) -> None:
    """The logged requirements install from an index and cover what loading the model imports.

    No ``dmp-ml`` pin (no index has it): its code travels in the model. A fresh interpreter
    that cannot see this checkout's ``dmp_ml`` loads the model from its own copy, predicts,
    and every distribution it imported is a requirement or one of their dependencies.
    """
    lines = (model_dir / "requirements.txt").read_text().split()
    names = {line.split("==")[0] for line in lines}
    assert not any(n.replace("_", "-").lower() == "dmp-ml" for n in names), lines
    for line in lines:
        name, _, version = line.partition("==")
        assert version == metadata.version(name), line  # pinned to what was trained with
    assert (model_dir / "code" / "dmp_ml" / "models" / "propensity" / "model.py").is_file()
    pyfunc_input(model, X).to_parquet(model_dir / "X.parquet")
    script = f"""
import sys
sys.path = [p for p in sys.path if not (p.endswith("src") or "__editable__" in p)]
for finder in list(sys.meta_path):
    if "editable" in type(finder).__name__.lower():
        sys.meta_path.remove(finder)
import importlib.metadata as md, json, mlflow, numpy as np, pandas as pd
before = set(sys.modules)
model = mlflow.pyfunc.load_model({str(model_dir)!r})
import dmp_ml
p = model.predict(pd.read_parquet({str(model_dir / "X.parquet")!r}))
dists = md.packages_distributions()
used = {{d for m in set(sys.modules) - before for d in dists.get(m.split(".")[0], [])}}
print(json.dumps({{"file": dmp_ml.__file__, "p": np.asarray(p).tolist(), "used": sorted(used)}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(model_dir)), found["file"]
    np.testing.assert_allclose(found["p"], model.predict_proba(X))
    used = {d.lower().replace("_", "-") for d in found["used"]} - {"dmp-ml"}
    assert used <= _closure(names), sorted(used - _closure(names))


@pytest.mark.slow
def test_registry_names_carry_the_horizon_and_old_champions_keep_working(
    settings, results, tmp_path
) -> None:
    """A 30-day model never competes with a 90-day one; a pre-horizon champion of the same
    horizon stays champion until beaten."""
    s = settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path.parent / 'legacy.db'}"}
    )
    uri = s.tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    strong, weak = results["strong"], results["weak"]
    # a registry from before: the strong 30-day model as champion of the old name
    old = log_propensity_run(strong, s)
    old_name = legacy_registered_model_name("purchase")
    client.copy_model_version(f"models:/{old.registered_model}/{old.version}", old_name)
    client.set_registered_model_alias(old_name, "champion", "1")
    client.delete_registered_model(old.registered_model)
    assert champion_version(client, "purchase", 30).name == old_name
    assert champion_version(client, "purchase", 90) is None  # its run says 30 days

    # a weaker 30-day model meets the old champion and loses: the old one stays in charge
    kept = log_propensity_run(weak, s)
    assert not kept.promoted and f"1 of {old_name}" in kept.reason
    assert champion_version(client, "purchase", 30).name == old_name

    # a 90-day model (same data, other horizon) has no champion to beat: it starts its own line
    ninety = dataclasses.replace(weak, horizon_days=90)
    other = log_propensity_run(ninety, s)
    assert other.registered_model == "dmp-propensity-purchase-90d"
    assert other.promoted and other.reason == "no champion yet"
    assert champion_version(client, "purchase", 30).name == old_name  # untouched


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
