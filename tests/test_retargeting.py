"""Retargeting templates return exactly the profiles a plain pandas filter of their rule does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.activation import export_frame, segment_audience
from dmp_ml.bundle import ModelBundle, load_bundle
from dmp_ml.demo import DemoWorld
from dmp_ml.erasure import forget
from dmp_ml.errors import RequestError
from dmp_ml.retargeting import retarget
from dmp_ml.segments import SegmentError, evaluate, parse_rule

CopyWorkdir = Callable[[Path, Path], Path]
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def bundle(trained_workdir: Path) -> ModelBundle:
    return load_bundle(trained_workdir)


@pytest.fixture(scope="module")
def events(bundle: ModelBundle, demo_world: DemoWorld) -> pd.DataFrame:
    """The demo events with the profile each belongs to (own id, else its cookie's owner),
    eligible profiles only: written here with plain pandas."""
    ev = demo_world.events.copy()
    owner = ev["cookie_id"].map(bundle.features.cookie_map)
    ev["who"] = ev["profile_id"].astype(object).where(ev["profile_id"].notna(), owner)
    ev = ev[ev["who"].isin(set(bundle.features.frame.index))]
    return ev[ev["event_time"] < bundle.as_of]


def _last(ev: pd.DataFrame, as_of: pd.Timestamp, days: float) -> pd.DataFrame:
    return ev[ev["event_time"] >= as_of - days * DAY]


def _who(ev: pd.DataFrame, event_type: str) -> set[str]:
    return set(ev.loc[ev["event_type"] == event_type, "who"])


def _ids(frame: pd.DataFrame) -> set[str]:
    return set(frame["profile_id"].astype(str))


@pytest.mark.parametrize(
    ("template", "trigger", "days"),
    [("cart_abandoners", "add_to_cart", 7), ("email_clickers", "email_click", 14)],
)
def test_trigger_templates_equal_the_pandas_filter(
    bundle: ModelBundle, events: pd.DataFrame, template: str, trigger: str, days: int
) -> None:
    t = bundle.as_of
    recent = _last(events, t, days)
    expected = _who(recent, trigger) - _who(recent, "purchase")
    got = _ids(retarget(bundle, template, {"days": days}))
    assert len(expected) > 10
    assert got == expected


def test_viewed_not_bought_with_categories_equals_the_pandas_filter(
    bundle: ModelBundle, events: pd.DataFrame
) -> None:
    t = bundle.as_of
    cats = ["hiking", "camping"]
    views = _last(events, t, 10)
    viewed = set(
        views.loc[(views["event_type"] == "product_view") & views["category"].isin(cats), "who"]
    )
    expected = viewed - _who(_last(events, t, 20), "purchase")
    params = {"days": 10, "categories": cats, "exclude_buyers_days": 20}
    got = _ids(retarget(bundle, "viewed_not_bought", params))
    assert len(expected) > 10
    assert got == expected


def test_lapsed_buyers_equal_the_pandas_filter(bundle: ModelBundle, events: pd.DataFrame) -> None:
    t = bundle.as_of
    buys = events[events["event_type"] == "purchase"]
    usual: dict[str, float] = {}
    last: dict[str, pd.Timestamp] = {}
    for who, rows in buys.groupby("who"):
        days = sorted(set(rows["event_time"].dt.floor("D")))
        last[who] = rows["event_time"].max()
        gaps = [(b - a) / DAY for a, b in zip(days, days[1:], strict=False)]
        if gaps:
            usual[who] = float(np.median(gaps))
    population = float(np.median(list(usual.values())))
    expected = {
        who
        for who, when in last.items()
        if when >= t - 60 * DAY and (t - when) / DAY > 1.2 * usual.get(who, population)
    }
    one_timers = {w for w in expected if w not in usual}
    got = _ids(retarget(bundle, "lapsed_buyers", {"days": 60, "lapse_factor": 1.2}))
    assert len(expected) > 10 and one_timers and expected - one_timers
    assert got == expected


def test_frequency_cap_and_recency_of_exposure(bundle: ModelBundle, events: pd.DataFrame) -> None:
    t = bundle.as_of
    base = _ids(retarget(bundle, "viewed_not_bought", {"days": 30}))
    capped = _ids(
        retarget(bundle, "viewed_not_bought", {"days": 30, "max_impressions": 2})
    )  # impression_days 7
    shown = _last(events, t, 7)
    counts = shown.loc[shown["event_type"] == "ad_impression", "who"].value_counts()
    assert capped == base - set(counts.index[counts >= 2])
    assert capped < base
    fresh = _ids(
        retarget(bundle, "viewed_not_bought", {"days": 30, "min_hours_since_impression": 48})
    )
    assert fresh == base - _who(_last(events, t, 2), "ad_impression")
    assert fresh < base


def test_ranked_by_propensity_and_usable_in_segments_and_exports(bundle: ModelBundle) -> None:
    ranked = retarget(bundle, "cart_abandoners", {"days": 14}, rank_by_propensity=True)
    assert ranked["propensity_score"].is_monotonic_decreasing
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    rule = {
        "all": [
            {"retarget": "cart_abandoners", "params": {"days": 14}},
            {"feature": "is_anonymous", "op": "==", "value": 0},
        ]
    }
    ids = set(evaluate(rule, bundle))
    anonymous = set(bundle.features.frame.index[bundle.features.frame["is_anonymous"] == 1])
    assert ids == _ids(ranked) - anonymous
    assert parse_rule(rule).to_dict() == rule
    frame, report = export_frame(bundle, segment_audience(bundle, rule))
    assert set(frame["profile_id"]) == ids and report.rows == len(ids)


def test_bad_parameters_name_the_field(bundle: ModelBundle) -> None:
    with pytest.raises(SegmentError, match=r"all\[0\]\.params\.days"):
        parse_rule({"all": [{"retarget": "cart_abandoners", "params": {"days": 0}}]})
    with pytest.raises(RequestError, match="did you mean 'cart_abandoners'"):
        retarget(bundle, "cart_abandoner")
    with pytest.raises(RequestError, match="params.categories"):
        retarget(bundle, "cart_abandoners", {"categories": ["x"]})
    with pytest.raises(RequestError, match="params.colour"):
        retarget(bundle, "email_clickers", {"colour": 1})


def test_withdrawn_and_forgotten_profiles_never_appear(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path, demo_world: DemoWorld
) -> None:
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    withdrawn = set(demo_world.truth.loc[demo_world.truth["consent_withdrawn"], "profile_id"])
    params = {"days": 30}
    before = _ids(retarget(load_bundle(workdir), "viewed_not_bought", params))
    assert before and not before & withdrawn
    victim = sorted(before)[0]
    forget(workdir, [victim])
    after = _ids(retarget(load_bundle(workdir), "viewed_not_bought", params))
    assert after == before - {victim}
