"""The demo world: contract-conform frames, deterministic, and the planted truth is visible."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from dmp_ml.demo import (
    CATEGORIES,
    EVENT_COLUMNS,
    INTEREST_GROUPS,
    TIMEZONES,
    TRUTH_COLUMNS,
    DemoWorld,
    generate_demo_world,
    read_truth,
    true_purchase_probability,
    write_demo_world,
)
from dmp_ml.errors import DataContractError

STRING_EVENT_COLUMNS = [
    "cookie_id",
    "profile_id",
    "event_type",
    "channel",
    "source",
    "campaign_id",
    "category",
]


@pytest.fixture(scope="module")
def world() -> DemoWorld:
    return generate_demo_world(n_profiles=2_000, days=90, seed=7)


def _is_string(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.StringDtype) and s.dtype.na_value is pd.NA


def _is_utc(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.DatetimeTZDtype) and str(s.dtype.tz) == "UTC"


def _assert_same_world(a: DemoWorld, b: DemoWorld) -> None:
    for name in ("events", "profiles", "consent", "truth"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.start == b.start and a.end == b.end


def test_same_seed_gives_the_same_world() -> None:
    a = generate_demo_world(n_profiles=300, days=30, seed=3)
    b = generate_demo_world(n_profiles=300, days=30, seed=3)
    _assert_same_world(a, b)


def test_different_seeds_give_different_worlds() -> None:
    a = generate_demo_world(n_profiles=300, days=30, seed=1)
    b = generate_demo_world(n_profiles=300, days=30, seed=2)
    assert len(a.events) != len(b.events) or not a.events.equals(b.events)
    assert not a.truth["engagement"].equals(b.truth["engagement"])


def test_events_follow_the_canonical_contract(world: DemoWorld) -> None:
    ev = world.events
    assert tuple(ev.columns) == EVENT_COLUMNS
    assert _is_utc(ev["event_time"])
    for col in STRING_EVENT_COLUMNS:
        assert _is_string(ev[col]), col
    assert ev["value"].dtype == np.float64
    assert ev["event_time"].is_monotonic_increasing
    assert (ev["event_time"] >= world.start).all() and (ev["event_time"] < world.end).all()
    assert (ev["cookie_id"].notna() | ev["profile_id"].notna()).all()
    assert set(ev["source"].unique()) == {"first_party", "second_party", "third_party"}
    assert set(ev["category"].dropna().unique()) <= set(CATEGORIES)
    known = {
        "page_view",
        "product_view",
        "add_to_cart",
        "purchase",
        "email_send",
        "email_open",
        "email_click",
        "ad_impression",
        "ad_click",
    }
    assert set(ev["event_type"].unique()) == known
    # revenue only on purchases, always positive there
    buys = ev["event_type"] == "purchase"
    assert (ev.loc[buys, "value"] > 0).all()
    assert ev.loc[~buys, "value"].isna().all()
    assert ev.loc[buys, "profile_id"].notna().all()


def test_profiles_consent_truth_follow_the_contract(world: DemoWorld) -> None:
    prof, cons, truth = world.profiles, world.consent, world.truth
    assert list(prof.columns) == [
        "profile_id",
        "timezone",
        "country",
        "email",
        "age",
        "loyalty_tier",
    ]
    assert prof["profile_id"].is_unique
    assert prof["profile_id"].str.fullmatch(r"p\d{6}").all()
    for col in ("profile_id", "timezone", "country", "email", "loyalty_tier"):
        assert _is_string(prof[col]), col
    assert prof["age"].dtype == np.float64 and prof["age"].isna().any()
    assert set(prof["loyalty_tier"].unique()) == {"bronze", "silver", "gold"}
    assert 0.07 < prof["timezone"].isna().mean() < 0.13
    assert 0.12 < prof["email"].isna().mean() < 0.18
    assert set(prof["timezone"].dropna().unique()) <= set(TIMEZONES)

    assert list(cons.columns) == ["profile_id", "cookie_id", "purpose", "granted", "updated_at"]
    assert _is_string(cons["profile_id"]) and _is_string(cons["cookie_id"])
    assert cons["granted"].dtype == bool and _is_utc(cons["updated_at"])
    assert (cons["purpose"] == "marketing").all()

    assert tuple(truth.columns) == TRUTH_COLUMNS
    assert truth["profile_id"].tolist() == prof["profile_id"].tolist()
    assert truth["timezone"].notna().all()
    assert set(truth["interest_group"].unique()) == set(INTEREST_GROUPS)
    assert truth["preferred_local_hour"].between(0, 23).all()
    # profile timezone, where present, is the true one; country always matches the true zone
    shown = prof["timezone"].notna()
    assert (prof.loc[shown, "timezone"] == truth.loc[shown, "timezone"]).all()
    assert (prof["country"] == truth["country"]).all()
    # event profile ids all exist in profiles
    assert set(world.events["profile_id"].dropna().unique()) <= set(prof["profile_id"])


def test_write_and_read_round_trip(world: DemoWorld, tmp_path) -> None:
    small = generate_demo_world(n_profiles=100, days=21, seed=0)
    paths = write_demo_world(small, tmp_path / "nested" / "demo")
    assert set(paths) == {"events", "profiles", "consent", "truth"}
    assert all(p.is_file() for p in paths.values())
    assert not list(paths["events"].parent.glob(".*tmp"))
    pd.testing.assert_frame_equal(read_truth(paths["truth"]), small.truth)
    pd.testing.assert_frame_equal(read_truth(paths["truth"].parent), small.truth)
    events = pd.read_parquet(paths["events"])
    assert len(events) == len(small.events)
    assert list(events.columns) == list(EVENT_COLUMNS)


def test_read_truth_rejects_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(DataContractError, match="not found"):
        read_truth(tmp_path / "nope.parquet")
    other = tmp_path / "other.parquet"
    pd.DataFrame({"profile_id": ["p1"]}).to_parquet(other)
    with pytest.raises(DataContractError, match="missing columns"):
        read_truth(other)


def test_interest_groups_show_in_category_shares(world: DemoWorld) -> None:
    ev = world.events
    views = ev[(ev["event_type"] == "product_view") & ev["profile_id"].notna()]
    group = world.truth.set_index("profile_id")["interest_group"]
    views = views.assign(group=views["profile_id"].map(group))
    shares = pd.crosstab(views["group"], views["category"], normalize="index")
    for g in INTEREST_GROUPS:
        top = shares.loc[g].idxmax()
        others = shares.drop(index=g)[top].mean()
        assert shares.loc[g, top] > 3 * others, (g, top)
    # groups differ in their top categories
    assert shares.idxmax(axis=1).nunique() >= 5


def _local_hour(times: pd.Series, zones: pd.Series) -> np.ndarray:
    out = np.empty(len(times))
    for zone in zones.unique():
        m = (zones == zone).to_numpy()
        out[m] = times[m].dt.tz_convert(ZoneInfo(zone)).dt.hour.to_numpy()
    return out


def _circular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 12) % 24 - 12)


def test_email_opens_concentrate_near_the_planted_local_hour(world: DemoWorld) -> None:
    ev, truth = world.events, world.truth.set_index("profile_id")
    humans = truth.index[~truth["machine_opener"]]
    opens = ev[(ev["event_type"] == "email_open") & ev["profile_id"].isin(humans)]
    assert len(opens) > 500
    zones = opens["profile_id"].map(truth["timezone"]).reset_index(drop=True)
    local = _local_hour(opens["event_time"].reset_index(drop=True), zones)
    pref = opens["profile_id"].map(truth["preferred_local_hour"]).to_numpy()
    dist = _circular_distance(local, pref)
    assert dist.mean() < 4.0  # uniform hours would give 6
    assert (dist <= 2).mean() > 0.4  # uniform: 5/24

    # sends themselves cover the whole day in local time (the exposure is varied)
    sends = ev[ev["event_type"] == "email_send"].reset_index(drop=True)
    send_local = _local_hour(
        sends["event_time"], sends["profile_id"].map(truth["timezone"]).reset_index(drop=True)
    )
    assert len(np.unique(send_local)) == 24


def test_email_responses_carry_the_campaign_of_a_send(world: DemoWorld) -> None:
    ev = world.events
    email = ev[ev["channel"] == "email"]
    assert email["cookie_id"].isna().all() and email["profile_id"].notna().all()
    assert email["campaign_id"].str.fullmatch(r"cmp-\d{4}-\d{2}").all()
    keys = ["profile_id", "campaign_id"]
    sends = pd.MultiIndex.from_frame(email.loc[email["event_type"] == "email_send", keys])
    resp = email[email["event_type"].isin(["email_open", "email_click"])]
    assert len(resp) > 0 and pd.MultiIndex.from_frame(resp[keys]).isin(sends).all()
    # nobody without an email address receives mail
    no_email = world.profiles.loc[world.profiles["email"].isna(), "profile_id"]
    assert not email["profile_id"].isin(no_email).any()


def test_machine_openers_open_within_seconds(world: DemoWorld) -> None:
    ev, truth = world.events, world.truth
    machines = truth.loc[truth["machine_opener"], "profile_id"]
    assert 0.03 < truth["machine_opener"].mean() < 0.07
    email = ev[
        ev["profile_id"].isin(machines) & ev["event_type"].isin(["email_send", "email_open"])
    ]
    sends = email[email["event_type"] == "email_send"].set_index(["profile_id", "campaign_id"])
    opens = email[email["event_type"] == "email_open"]
    first_open = opens.groupby(["profile_id", "campaign_id"])["event_time"].min()
    delay = (first_open - sends["event_time"].reindex(first_open.index)).dt.total_seconds()
    assert (delay < 60).mean() > 0.9
    assert len(first_open) > 0.9 * len(sends) - 5  # last-day sends may open after the log ends


def test_household_devices_carry_two_profiles(world: DemoWorld) -> None:
    truth, ev = world.truth, world.events
    households = truth.dropna(subset=["household_id"]).groupby("household_id")["profile_id"]
    assert 0.03 < truth["household_id"].notna().mean() < 0.05
    assert (households.size() == 2).all()
    logged = ev.dropna(subset=["cookie_id", "profile_id"])
    per_cookie = logged.groupby("cookie_id")["profile_id"].agg(frozenset)
    shared = {ids for ids in per_cookie if len(ids) == 2}
    for _, members in households:
        assert frozenset(members) in shared
    # shared cookies are households, nothing else
    assert per_cookie.map(len).max() == 2
    assert len(shared) == households.ngroups


def test_identity_cookies_rotate_and_most_log_in(world: DemoWorld) -> None:
    ev = world.events
    first = ev[(ev["source"] == "first_party") & ev["cookie_id"].notna()]
    logged = first.dropna(subset=["profile_id"])
    cookies = pd.Series(first["cookie_id"].unique())
    assert 0.8 < cookies.isin(logged["cookie_id"].unique()).mean() < 0.97
    cookies_per_person = logged.groupby("profile_id")["cookie_id"].nunique()
    assert cookies_per_person.max() > 3  # 3 devices at most, so rotation happened
    third = ev[ev["source"] == "third_party"]
    assert third["profile_id"].isna().all()
    never_first_party = ~third["cookie_id"].isin(first["cookie_id"])
    assert never_first_party.mean() > 0.4  # anonymous ad cookies
    assert third.loc[never_first_party, "cookie_id"].nunique() > 200
    partner = ev[ev["source"] == "second_party"]
    assert len(partner) > 0 and (partner["channel"] == "partner").all()


def test_consent_withdrawals_follow_latest_wins(world: DemoWorld) -> None:
    cons, truth = world.consent, world.truth
    assert cons.groupby("profile_id").size().reindex(truth["profile_id"]).notna().all()
    latest = cons.sort_values("updated_at").groupby("profile_id").tail(1).set_index("profile_id")
    withdrawn = ~latest["granted"].reindex(truth["profile_id"]).to_numpy()
    np.testing.assert_array_equal(withdrawn, truth["consent_withdrawn"].to_numpy())
    assert 0.015 < withdrawn.mean() < 0.05
    # some people withdrew and granted again: three records, the last one granted
    regranted = cons.groupby("profile_id")["granted"].agg(list)
    assert (regranted.map(lambda g: g == [True, False, True])).any()
    # withdrawn people get no email after the withdrawal
    withdrawal = cons[~cons["granted"]].groupby("profile_id")["updated_at"].min()
    final = truth.loc[truth["consent_withdrawn"], "profile_id"]
    sends = world.events[
        (world.events["event_type"] == "email_send") & world.events["profile_id"].isin(final)
    ]
    assert (sends["event_time"] < sends["profile_id"].map(withdrawal)).all()


def test_true_purchase_probability_is_consistent_with_realised_purchases(
    world: DemoWorld,
) -> None:
    truth, ev = world.truth, world.events
    as_of = world.start + pd.Timedelta(days=40)
    prob = true_purchase_probability(truth, as_of, horizon_days=30)
    assert prob.index.name == "profile_id" and prob.dtype == np.float64
    assert prob.index.tolist() == truth["profile_id"].tolist()
    assert prob.between(0, 1).all()

    # higher engagement, higher probability
    eng = truth.set_index("profile_id")["engagement"]
    assert prob.corr(eng, method="spearman") > 0.5

    window = ev[
        (ev["event_type"] == "purchase")
        & (ev["event_time"] >= as_of)
        & (ev["event_time"] < as_of + pd.Timedelta(days=30))
    ]
    bought = prob.index.isin(window["profile_id"].unique()).astype(float)
    # calibrated: realised share matches the mean probability within sampling noise
    se = np.sqrt((prob * (1 - prob)).sum()) / len(prob)
    assert abs(bought.mean() - prob.mean()) < 4 * se
    top = prob >= prob.quantile(0.75)
    bottom = prob <= prob.quantile(0.25)
    assert bought[top.to_numpy()].mean() > 4 * bought[bottom.to_numpy()].mean()

    # nobody buys outside their active period
    churned = truth["churn_day"].notna() & (truth["active_until"] <= as_of)
    not_yet = truth["active_from"] >= as_of + pd.Timedelta(days=30)
    assert (prob[(churned | not_yet).to_numpy()] == 0).all()
    all_buys = ev[ev["event_type"] == "purchase"].merge(
        truth[["profile_id", "active_from", "active_until"]], on="profile_id"
    )
    assert (all_buys["event_time"] >= all_buys["active_from"]).all()
    until = all_buys["active_until"].fillna(world.end)
    assert (all_buys["event_time"] < until).all()


def test_true_purchase_probability_accepts_naive_as_of_and_rejects_bad_horizon(
    world: DemoWorld,
) -> None:
    naive = true_purchase_probability(world.truth, "2026-02-01", 30)
    aware = true_purchase_probability(world.truth, pd.Timestamp("2026-02-01", tz="UTC"), 30)
    pd.testing.assert_series_equal(naive, aware)
    with pytest.raises(ValueError, match="horizon_days"):
        true_purchase_probability(world.truth, "2026-02-01", 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_profiles": 9}, "n_profiles must be at least 10"),
        ({"days": 13}, "days must be at least 14"),
        ({"n_profiles": 10.5}, "n_profiles must be an integer"),
    ],
)
def test_generate_validates_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_demo_world(**kwargs)


def test_smallest_world_works() -> None:
    w = generate_demo_world(n_profiles=10, days=14, seed=0)
    assert len(w.profiles) == 10 and len(w.events) > 0
    assert w.end - w.start == pd.Timedelta(days=14)
    assert w.summary()["profiles"] == 10
