"""A real shop's log: keyed by customer ids only, most customers lapsed. Every one is answered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.bundle import load_bundle
from dmp_ml.demo import DemoWorld, generate_retail_world, true_purchase_probability
from dmp_ml.errors import BundleError
from dmp_ml.pipeline import train
from dmp_ml.settings import Settings

AS_OF = pd.Timestamp("2025-11-01", tz="UTC")


@pytest.fixture(scope="module")
def retail() -> DemoWorld:
    return generate_retail_world(n_customers=1500, days=365, seed=5)


@pytest.fixture(scope="module")
def retail_bundle(tmp_path_factory: pytest.TempPathFactory, retail: DemoWorld, train_settings):
    workdir = tmp_path_factory.mktemp("retail") / "w"
    result = train(
        retail.events,
        AS_OF,
        workdir,
        profiles=retail.profiles,
        consent=retail.consent,
        settings=train_settings,
    )
    return result, load_bundle(workdir)


def test_the_retail_world_is_sparse_and_customer_keyed(retail: DemoWorld) -> None:
    events = retail.events
    assert events["cookie_id"].isna().all()
    assert set(events["event_type"]) == {"purchase"}
    per_customer = events.groupby("profile_id").size()
    assert per_customer.median() <= 2
    last = events[events["event_time"] < AS_OF].groupby("profile_id")["event_time"].max()
    assert ((AS_OF - last) > pd.Timedelta(days=90)).mean() > 0.5  # most customers lapsed


def test_every_customer_with_an_event_before_the_cutoff_is_answered(
    retail: DemoWorld, retail_bundle
) -> None:
    result, bundle = retail_bundle
    assert {name: s.status for name, s in result.steps.items()} == dict.fromkeys(
        ("features", "propensity", "send_time", "lookalike", "affinity"), "trained"
    )
    before = retail.events[retail.events["event_time"] < AS_OF]
    withdrawn = set(retail.truth.loc[retail.truth["consent_withdrawn"], "profile_id"])
    customers = sorted(set(before["profile_id"]) - withdrawn)
    lapsed = before.groupby("profile_id")["event_time"].max() < AS_OF - pd.Timedelta(days=90)
    assert lapsed[customers].mean() > 0.5

    scores = bundle.score(customers).frame
    assert sorted(scores["profile_id"]) == customers
    assert scores["score"].between(0, 1).all()
    # each score says what it rests on: a lapsed one-time buyer is a thin, old history
    assert (scores["events_used"] >= 1).all()
    assert (scores["days_since_last_event"] <= scores["history_days"]).all()
    send = bundle.send_time(customers, window_start=AS_OF).frame
    assert sorted(send["profile_id"].unique()) == customers
    assert send["send_at"].notna().all()
    assert set(bundle.lookalike_model.profile_ids_) == set(customers)

    # a lapsed customer can seed a lookalike audience and be found by one
    lapsed_ids = [c for c in customers if lapsed[c]][:150]
    audience = bundle.lookalike(lapsed_ids, size=200)
    assert audience.diagnostics["seeds_matched"] == len(lapsed_ids)
    assert len(audience.frame) == 200

    # no withdrawn customer anywhere
    assert not withdrawn & set(bundle.features.frame.index)


def test_scores_rank_the_planted_probability(retail: DemoWorld, retail_bundle) -> None:
    _, bundle = retail_bundle
    horizon = bundle.manifest["steps"]["propensity"]["horizon_days"]
    truth = true_purchase_probability(retail.truth, AS_OF, horizon)
    scores = bundle.score().frame.set_index("profile_id")["score"]
    truth = truth.reindex(scores.index)
    # lapsed customers score lower than active ones, as the planted truth says
    assert np.corrcoef(scores.rank(), truth.rank())[0, 1] > 0.4


def test_a_log_too_small_to_label_says_why_and_score_names_the_reason(
    tmp_path: Path, train_settings: Settings
) -> None:
    world = generate_retail_world(n_customers=40, days=200, seed=2)
    result = train(world.events, "end", tmp_path / "w", settings=train_settings)
    assert result.steps["propensity"].status == "skipped"
    assert "positive" in result.steps["propensity"].reason
    assert result.steps["send_time"].status == "trained"
    bundle = load_bundle(tmp_path / "w")
    with pytest.raises(BundleError, match="no propensity model: not enough labelled data"):
        bundle.score()
    assert len(bundle.send_time(window_start=bundle.as_of).frame) > 0


@pytest.mark.slow
def test_cli_retail_world_and_a_clear_error_when_propensity_could_not_train(
    tmp_path: Path,
) -> None:
    def dmp_ml(*args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dmp_ml.cli", *map(str, args)]
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)

    made = dmp_ml("demo-data", tmp_path / "d", "--style", "retail", "--profiles", "40")
    assert made.returncode == 0, made.stderr
    events = pd.read_parquet(tmp_path / "d" / "events.parquet")
    assert events["cookie_id"].isna().all()
    trained = dmp_ml(
        "train", "--events", tmp_path / "d" / "events.parquet", "--as-of", "end",
        "--workdir", tmp_path / "w",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "skipped" in trained.stdout
    scored = dmp_ml("score", "--workdir", tmp_path / "w", "--out", tmp_path / "s.csv")
    assert scored.returncode == 2
    assert "Traceback" not in scored.stderr
    assert "no propensity model: not enough labelled data" in " ".join(scored.stderr.split())
    sent = dmp_ml("send-time", "--workdir", tmp_path / "w", "--out", tmp_path / "t.csv")
    assert sent.returncode == 0, sent.stderr
    assert len(pd.read_csv(tmp_path / "t.csv")["profile_id"].unique()) >= 30
