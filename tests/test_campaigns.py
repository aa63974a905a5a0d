"""Campaigns: reproducible holdouts, and readouts that recover a planted lift honestly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.bundle import load_bundle
from dmp_ml.campaigns import (
    campaign_report,
    create_campaign,
    difference_interval,
    export_campaign,
    holdout_draw,
    load_campaign,
    ratio_interval,
)
from dmp_ml.demo import DemoWorld, generate_demo_world, plant_uplift
from dmp_ml.erasure import forget
from dmp_ml.errors import RequestError

CopyWorkdir = Callable[[Path, Path], Path]


@pytest.fixture()
def workdir(trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path) -> Path:
    return copy_workdir(trained_workdir, tmp_path / "w")


def _launch(workdir: Path) -> pd.Timestamp:
    return load_bundle(workdir).as_of - pd.Timedelta(days=30)


def _known(workdir: Path) -> list[str]:
    index = load_bundle(workdir).features.frame.index
    return [p for p in index if not p.startswith("anon:")]


def test_holdout_is_a_reproducible_hash_and_exports_leave_it_out(workdir: Path) -> None:
    bundle = load_bundle(workdir)
    ids = _known(workdir)
    campaign = create_campaign(
        bundle, "spring", ids, workdir=workdir, holdout=0.2, launch=_launch(workdir)
    )
    held = set(campaign.holdout_ids)
    assert 0.15 < len(held) / len(ids) < 0.25
    # the same name and profile always land in the same group, whatever the audience order
    draw = holdout_draw("spring", list(reversed(ids)))
    assert held == {p for p, u in zip(reversed(ids), draw, strict=True) if u < 0.2}
    assert set(load_campaign(workdir, "spring").holdout_ids) == held
    assert held != set(
        create_campaign(bundle, "autumn", ids, workdir=workdir, holdout=0.2).holdout_ids
    )
    report = export_campaign(bundle, workdir, "spring", workdir / "spring.csv")
    exported = set(pd.read_csv(workdir / "spring.csv")["profile_id"])
    assert exported == set(campaign.treated_ids) and not exported & held
    assert report.rows == len(campaign.treated_ids)
    with pytest.raises(RequestError, match="exists"):
        create_campaign(bundle, "spring", ids, workdir=workdir)
    with pytest.raises(RequestError, match="holdout"):
        create_campaign(bundle, "x", ids, workdir=workdir, holdout=1.5)
    with pytest.raises(RequestError, match="unknown campaign 'sprin'; did you mean 'spring'"):
        campaign_report(workdir, "sprin")


def test_planted_uplift_is_recovered_and_no_uplift_covers_zero(
    workdir: Path, demo_world: DemoWorld
) -> None:
    bundle = load_bundle(workdir)
    launch = _launch(workdir)
    campaign = create_campaign(
        bundle, "planted", _known(workdir), workdir=workdir, holdout=0.5, launch=launch
    )
    planted = plant_uplift(demo_world, campaign.treated_ids, launch, 30, probability=0.25)
    report = campaign_report(workdir, "planted", events=planted.world.events, bundle=bundle)
    low, high = report["absolute_lift"]["interval_95"]
    assert low <= planted.true_absolute_lift <= high, (planted.true_absolute_lift, report)
    assert low > 0 and report["verdict"] == "treated converted more than holdout"
    rel = report["relative_lift"]["interval_95"]
    assert rel[0] <= planted.true_relative_lift <= rel[1] or rel[0] > 0
    assert report["days_so_far"] == 30 and report["horizon_complete"]
    assert report["by_propensity"]["available"]

    # the same campaign on the events without the effect: the interval covers zero
    null = campaign_report(workdir, "planted", events=demo_world.events)
    low0, high0 = null["absolute_lift"]["interval_95"]
    assert low0 <= 0 <= high0
    assert null["verdict"] == "no detectable effect"
    assert null["minimum_detectable_effect"]["absolute"] > 0

    # ten days in, from the workdir's own event store: too early to tell
    early = campaign_report(workdir, "planted", as_of=launch + pd.Timedelta(days=10))
    assert early["days_so_far"] == 10 and not early["horizon_complete"]
    assert early["holdout"]["converted"] <= null["holdout"]["converted"]
    e_low, e_high = early["absolute_lift"]["interval_95"]
    if e_low <= 0 <= e_high:
        assert early["verdict"] == "too early to tell"


def test_no_uplift_intervals_cover_zero_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(400):
        x1, x2 = rng.binomial(500, 0.08), rng.binomial(120, 0.08)
        low, high = difference_interval(int(x1), 500, int(x2), 120)
        covered += low <= 0 <= high
    assert 0.92 <= covered / 400 <= 0.99
    assert ratio_interval(0, 100, 5, 100) is None


def test_erased_profiles_leave_stored_campaigns(workdir: Path) -> None:
    bundle = load_bundle(workdir)
    ids = _known(workdir)
    create_campaign(bundle, "c1", ids, workdir=workdir)
    report = forget(workdir, ids[:3])
    assert report.campaign_members_removed == {"c1": 3}
    assert not set(ids[:3]) & set(load_campaign(workdir, "c1").members["profile_id"])


def test_plant_uplift_is_off_by_default_and_changes_only_the_treated() -> None:
    a = generate_demo_world(n_profiles=200, days=30, seed=4)
    b = generate_demo_world(n_profiles=200, days=30, seed=4)
    pd.testing.assert_frame_equal(a.events, b.events)
    treated = a.truth["profile_id"].head(100).tolist()
    planted = plant_uplift(a, treated, a.start + pd.Timedelta(days=10), 10, probability=1.0)
    extra = len(planted.world.events) - len(a.events)
    assert extra == planted.extra_purchases == 100
    new = planted.world.events.merge(a.events, how="left", indicator=True)
    assert set(new.loc[new["_merge"] == "left_only", "profile_id"]) == set(treated)
    pd.testing.assert_frame_equal(a.events, b.events)  # the input world is untouched
