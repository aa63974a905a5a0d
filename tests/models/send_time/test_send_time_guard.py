"""The send-time guard: the curves against plain baselines on held-out time, and what is served."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from synthetic import CRIPPLED_SEND_TIME, ONE_SEND_TIME_CANDIDATE

import dmp_ml
from dmp_ml.demo import DemoWorld, generate_demo_world
from dmp_ml.models.base import ProfileUpdate
from dmp_ml.models.send_time import SendTimeModel, curves
from dmp_ml.models.send_time.baselines import BASELINES, MODEL, choose_served
from dmp_ml.models.send_time.zones import profile_universe
from dmp_ml.settings import Settings

ONE = ONE_SEND_TIME_CANDIDATE
CRIPPLED = CRIPPLED_SEND_TIME


@pytest.fixture(scope="module")
def world() -> dict:
    w = generate_demo_world(n_profiles=600, days=80, seed=5)
    events = w.events[w.events["profile_id"].notna()]
    timezones = w.profiles.set_index("profile_id")["timezone"]
    as_of = w.start + pd.Timedelta(days=70)
    return {"events": events, "timezones": timezones, "as_of": as_of}


def _mode_local_hour(events: pd.DataFrame, model: SendTimeModel) -> pd.Series:
    """Each profile's most frequent local hour of day of engagement before ``as_of``, where it
    is clear (at least two hours more often than the runner-up)."""
    engaged = events[
        (events["event_time"] < model.as_of_)
        & ~events["event_type"].isin([*model.non_engagement_events, "email_send"])
    ]
    zone = pd.Series(model.timezone_, index=model.profile_ids_)
    out = {}
    for pid, rows in engaged.groupby("profile_id", observed=True):
        local = rows["event_time"].dt.tz_convert(str(zone[pid])).dt.floor("h")
        counts = local.drop_duplicates().dt.hour.value_counts()
        if len(counts) == 1 or counts.iloc[0] >= counts.iloc[1] + 2:
            out[str(pid)] = int(counts.index[0])
    return pd.Series(out)


def test_a_crippled_model_serves_the_profile_hour_and_keeps_it(world: dict, tmp_path) -> None:
    model = SendTimeModel(**CRIPPLED).fit(world["events"], world["as_of"], world["timezones"])
    guard = model.guard_
    assert guard is not None and set(guard) == {MODEL, *BASELINES}
    assert model.served_ in BASELINES
    gain = guard[model.served_]["hit_rate"] - guard[MODEL]["hit_rate"]
    assert gain > 1.645 * guard[model.served_]["gain_se"] > 0
    assert model.served_ == choose_served(guard)

    decision = model.best_send_time(window_hours=168).frame
    assert set(decision["basis"]) <= {model.served_, "baseline_global_hour"}
    if model.served_ == "baseline_profile_hour":
        mode = _mode_local_hour(world["events"], model)
        served = decision.set_index("profile_id")["local_send_at"].str.slice(11, 13).astype(int)
        both = mode.index.intersection(served.index)
        assert len(both) > 50
        assert (served[both] == mode[both]).mean() > 0.9

    again = SendTimeModel.load(model.save(tmp_path / "st"))
    assert again.served_ == model.served_
    assert again.guard_ == guard
    pd.testing.assert_frame_equal(again.best_send_time(window_hours=168).frame, decision)


def test_the_fitted_model_is_kept_when_it_wins(world: dict) -> None:
    model = SendTimeModel(**ONE).fit(world["events"], world["as_of"], world["timezones"])
    guard = model.guard_
    assert model.served_ == MODEL == choose_served(guard)
    assert set(model.basis_) <= {"profile", "cohort", "global"}


def test_the_guard_pools_consecutive_held_out_windows(world: dict) -> None:
    events, as_of, zones = world["events"], world["as_of"], world["timezones"]
    one = SendTimeModel(**ONE, guard_windows=1).fit(events, as_of, zones).guard_
    three = SendTimeModel(**ONE, guard_windows=3).fit(events, as_of, zones).guard_
    assert one is not None and three is not None
    assert (one[MODEL]["n_windows"], three[MODEL]["n_windows"]) == (1, 3)
    # about three times the (profile, window) pairs: a tighter verdict on every baseline
    assert three[MODEL]["n_profiles"] > 2 * one[MODEL]["n_profiles"]
    for name in BASELINES:
        assert three[name]["gain_se"] < one[name]["gain_se"]
    # a window with no history before it is skipped, not an error
    early = world["as_of"] - pd.Timedelta(days=40)
    short = SendTimeModel(**ONE, guard_windows=3).fit(events, early, zones).guard_
    assert short is not None and short[MODEL]["n_windows"] == 1
    # a population large enough for one period decides on the latest period alone
    enough = int(one[MODEL]["n_profiles"])
    latest = SendTimeModel(**ONE, guard_windows=3, guard_profiles=enough).fit(events, as_of, zones)
    assert latest.guard_ is not None and latest.guard_[MODEL]["n_windows"] == 1
    assert latest.guard_[MODEL]["hit_rate"] == one[MODEL]["hit_rate"]
    two = SendTimeModel(**ONE, guard_windows=3, guard_profiles=enough + 1).fit(events, as_of, zones)
    assert two.guard_ is not None and two.guard_[MODEL]["n_windows"] == 2


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_refit_reads_the_rows_before_its_window_as_a_fit_on_the_log_extracts_them(
    world: dict, shuffled: bool
) -> None:
    """The guard's refits cut the fit's extraction (no second extraction of the log): the
    arrays must be the ones extracting the log before the window gives, codes numbered in
    order of first appearance among those rows, whatever the log's row order."""
    events = world["events"]
    if shuffled:  # a log out of time order: first appearances before the window differ
        events = events.sample(frac=1.0, random_state=3)
    events = events.assign(  # some events without a campaign
        campaign_id=events["campaign_id"].mask(np.arange(len(events)) % 7 == 0)
    )
    as_of = world["as_of"]
    split = as_of - pd.Timedelta(days=20)
    model = SendTimeModel(**ONE)
    cut = curves.before(
        curves.extract(events, as_of, model.non_engagement_events), int(split.value // 10**9)
    )
    fresh = curves.extract(events, split, model.non_engagement_events)
    assert cut.keys() == fresh.keys()
    for key, value in fresh.items():
        if key == "profiles":
            pd.testing.assert_index_equal(cut[key], value, exact=True)
        else:
            assert cut[key].dtype == value.dtype, key
            np.testing.assert_array_equal(cut[key], value, err_msg=key)
    assert (fresh["campaign"] == -1).any() and len(fresh["sec"]) < len(events)
    # the refit's history is the window's baselines' history: the evidence the fit's own rows
    # give before the window, the same arrays (in time order; else the same sends and hours)
    raw = curves.extract(events, as_of, model.non_engagement_events)
    index = profile_universe(cut["profiles"], world["timezones"])
    end = int(split.value // 10**9)
    machine = (model.machine_open_seconds, model.machine_open_weight)
    mine = curves.evidence(cut, curves.profile_codes(cut, index), end, *machine)
    whole = curves.evidence(raw, curves.profile_codes(raw, index), end, *machine)
    for name in ("act_p", "act_sec", *(() if shuffled else ("send_p", "send_sec", "send_resp"))):
        np.testing.assert_array_equal(getattr(mine, name), getattr(whole, name), err_msg=name)
    sends = [np.lexsort((e.send_resp, e.send_sec, e.send_p)) for e in (mine, whole)]
    for name in ("send_p", "send_sec", "send_resp"):
        np.testing.assert_array_equal(
            getattr(mine, name)[sends[0]], getattr(whole, name)[sends[1]], err_msg=name
        )
    assert len(mine.send_p) and len(mine.act_p)


def test_only_a_significant_gain_replaces_the_model() -> None:
    figures = {
        name: {"hit_rate": 0.4, "loglik": -3.0, "gain_se": 0.01} for name in (MODEL, *BASELINES)
    }
    figures["baseline_cohort"]["loglik"] = -1.0  # better log-likelihood alone does not win
    assert choose_served(figures) == MODEL
    figures["baseline_global_hour"]["hit_rate"] = 0.41  # within chance of the model
    assert choose_served(figures) == MODEL
    figures["baseline_global_hour"]["hit_rate"] = 0.45
    figures["baseline_profile_hour"]["hit_rate"] = 0.43
    assert choose_served(figures) == "baseline_global_hour"
    assert choose_served(None) == MODEL


def test_update_and_forget_keep_serving_the_baseline(world: dict) -> None:
    events, as_of = world["events"], world["as_of"]
    model = SendTimeModel(**CRIPPLED).fit(events, as_of, world["timezones"])
    assert model.served_ == "baseline_profile_hour"
    pid = str(model.profile_ids_[0])
    zone = str(model.timezone_[0])
    day = (as_of - pd.Timedelta(days=20)).tz_convert(zone).normalize()
    habit = [(day + pd.Timedelta(days=d, hours=4, minutes=5)).tz_convert("UTC") for d in range(19)]
    new = pd.DataFrame(
        {
            "event_time": pd.to_datetime(habit, utc=True),
            "profile_id": pd.array([pid] * len(habit), dtype="string"),
            "event_type": pd.array(["page_view"] * len(habit), dtype="string"),
            "campaign_id": pd.array([None] * len(habit), dtype="string"),
        }
    )
    mine = pd.concat([events[events["profile_id"] == pid], new], ignore_index=True)
    change = ProfileUpdate(
        as_of=as_of,
        profile_ids=pd.Index([pid, "newcomer"], dtype="string"),
        removed=pd.Index([], dtype="string"),
        features=pd.DataFrame(),
        events=mine,
        timezones=pd.Series({"newcomer": zone}, dtype="string"),
    )
    model.update(change)
    frame = model.best_send_time([pid, "newcomer"], window_hours=168).frame.set_index("profile_id")
    assert frame.loc[pid, "local_send_at"][11:13] == "04"
    assert frame.loc[pid, "basis"] == "baseline_profile_hour"
    assert frame.loc["newcomer", "basis"] == "baseline_global_hour"
    assert model.forget([pid]) == 1
    assert pid not in set(model.profiles_frame()["profile_id"])


@pytest.mark.slow
def test_train_publishes_what_the_guard_picked(
    demo_world: DemoWorld, train_settings: Settings, tmp_path
) -> None:
    crippled = {k: list(v) for k, v in CRIPPLED.items()}
    settings = train_settings.model_copy(
        update={"send_time": train_settings.send_time.model_copy(update=crippled)}
    )
    result = dmp_ml.train(
        demo_world.events,
        "end",
        tmp_path / "w",
        profiles=demo_world.profiles,
        consent=demo_world.consent,
        settings=settings,
    )
    step = result.steps["send_time"]
    assert step.status == "trained"
    served = step.details["served"]
    assert served in BASELINES
    assert f"serving {served}" in step.details["comparison"]
    assert 0.0 <= step.metrics["served_hit_rate"] <= 1.0
    bundle = dmp_ml.load_bundle(tmp_path / "w")
    assert bundle.send_time_model.served_ == served
    answer = bundle.send_time(window_hours=168).frame
    assert set(answer["basis"]) <= {served, "baseline_global_hour"}
    run = mlflow.MlflowClient(settings.tracking_uri()).get_run(step.mlflow_run_id)
    assert run.data.params["served"] == served
    for name in (MODEL, *BASELINES):
        assert f"guard_{name}_hit_rate" in run.data.metrics
    assert np.isfinite(run.data.metrics["served_hit_rate"])
