"""What train's steps share: the identity at a cutoff is resolved once, and equals the builder's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dmp_ml.demo import generate_demo_world
from dmp_ml.features import FeatureBuilder
from dmp_ml.settings import load_settings
from dmp_ml.training_context import StepOutcome, TrainContext, comparison


def test_steps_share_one_resolution_per_cutoff(tmp_path: Path) -> None:
    world = generate_demo_world(n_profiles=60, days=60, seed=1)
    settings = load_settings(workdir=tmp_path)
    as_of = pd.Timestamp(world.events["event_time"].max()).ceil("D")
    builder = FeatureBuilder(world.events, world.profiles, world.consent, settings)
    ctx = TrainContext(
        settings=settings,
        as_of=as_of,
        events=world.events,
        profiles=world.profiles,
        consent=world.consent,
        erased=frozenset(),
        bundle_dir=tmp_path,
        version="v",
        builder=builder,
    )
    columns = ("event_time", "event_type")
    first = ctx.resolve(as_of, columns)
    second = ctx.resolve(as_of, ("channel",))
    assert builder.resolved_cutoffs == [as_of]  # the second step reuses the identity
    # each step gets only the columns it reads, equal to the whole resolved log's
    direct = builder.resolve(as_of).events
    assert list(first.events.columns) == ["event_time", "profile_id", "event_type"]
    pd.testing.assert_frame_equal(first.events, direct[list(first.events.columns)])
    pd.testing.assert_frame_equal(second.events, direct[["profile_id", "channel"]])
    earlier = ctx.resolve(as_of - pd.Timedelta(days=30), columns)
    assert len(earlier.events) < len(first.events)
    ctx.resolve(as_of, columns)
    assert len(builder.resolved_cutoffs) == 2  # the latest cutoff stays kept
    builder.keep_only(as_of)  # what train does after each step
    ctx.resolve(as_of, columns)
    assert len(builder.resolved_cutoffs) == 2  # the train's own cutoff stays
    ctx.resolve(as_of - pd.Timedelta(days=30), columns)
    assert len(builder.resolved_cutoffs) == 3  # the step's other cutoff went with it


def test_an_outcome_carries_its_seconds_and_the_comparison_line_names_what_is_served() -> None:
    outcome = StepOutcome("trained", metrics={"auc": 0.7}, seconds=1.5)
    assert outcome.to_dict()["seconds"] == 1.5
    line = comparison("held-out ROC-AUC", {"model": 0.7412, "recency": 0.7}, "model")
    assert line == "held-out ROC-AUC: model 0.741, recency 0.700; serving model"
