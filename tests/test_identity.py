"""Identity graph and profile lifecycle: households, expiry, consent, erasure, point in time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dmp_ml.errors import DataContractError
from dmp_ml.identity import encode, encode_ids, resolve_identity
from dmp_ml.settings import FeatureSettings

AS_OF = pd.Timestamp("2024-06-01", tz="UTC")


def _events(rows: list[tuple]) -> pd.DataFrame:
    """Contract events from (days_before_as_of, cookie_id, profile_id[, event_type])."""
    times, cookies, profiles, types = [], [], [], []
    for row in rows:
        days, cookie, profile = row[:3]
        times.append(AS_OF - pd.Timedelta(days=days))
        cookies.append(cookie)
        profiles.append(profile)
        types.append(row[3] if len(row) > 3 else "page_view")
    n = len(rows)
    return pd.DataFrame(
        {
            "event_time": pd.DatetimeIndex(times).as_unit("ns"),
            "cookie_id": pd.array(cookies, dtype="string"),
            "profile_id": pd.array(profiles, dtype="string"),
            "event_type": pd.array(types, dtype="string"),
            "channel": pd.array(["web"] * n, dtype="string"),
            "source": pd.array(["first_party"] * n, dtype="string"),
            "campaign_id": pd.array([None] * n, dtype="string"),
            "category": pd.array([None] * n, dtype="string"),
            "value": np.full(n, np.nan),
        }
    )


def _consent(rows: list[tuple]) -> pd.DataFrame:
    """(profile_id, cookie_id, purpose, granted, days_before_as_of)."""
    return pd.DataFrame(
        {
            "profile_id": pd.array([r[0] for r in rows], dtype="string"),
            "cookie_id": pd.array([r[1] for r in rows], dtype="string"),
            "purpose": pd.array([r[2] for r in rows], dtype="string"),
            "granted": [r[3] for r in rows],
            "updated_at": pd.DatetimeIndex([AS_OF - pd.Timedelta(days=r[4]) for r in rows]),
        }
    )


def _owner(res, cookie: str) -> str | None:
    return res.cookie_map.get(cookie)


def test_cookie_only_events_inherit_the_linked_profile_and_unlinked_cookies_are_anonymous():
    ev = _events(
        [
            (5, "c1", "p1"),  # login links c1 -> p1
            (4, "c1", None),  # cookie-only: p1
            (3, "c2", None),  # never linked: anon:c2
            (2, None, "p2"),  # profile-keyed only
        ]
    )
    res = resolve_identity(ev, AS_OF)
    assert res.events["profile_id"].astype(str).tolist() == ["p1", "p1", "anon:c2", "p2"]
    assert res.profiles.index.tolist() == ["anon:c2", "p1", "p2"]
    assert res.profiles.loc["anon:c2", "is_anonymous"]
    assert res.profiles.loc["p1", "n_cookies"] == 1
    assert res.profiles.loc["p2", "n_cookies"] == 0
    assert res.profiles.loc["p1", "n_events"] == 2
    assert res.cookie_map.to_dict() == {"c1": "p1", "c2": "anon:c2"}
    assert res.summary["profiles_known"] == 2
    assert res.summary["profiles_anonymous"] == 1
    assert res.summary["events_used"] == 4
    # codes of the categorical are rows of `profiles`
    codes = res.events["profile_id"].cat.codes.to_numpy()
    assert res.profiles.index[codes].tolist() == ["p1", "p1", "anon:c2", "p2"]


def test_household_device_keeps_two_profiles_and_attributes_its_cookie_only_events_to_nobody():
    ev = _events(
        [
            (9, "tv", "alice"),
            (8, "tv", "bob"),
            (7, "tv", None),  # who? nobody
            (6, "tv", None),
            (5, "a-phone", "alice"),
            (4, "a-phone", None),  # alice's own phone
        ]
    )
    res = resolve_identity(ev, AS_OF)
    assert set(res.profiles.index) == {"alice", "bob"}  # never merged
    assert res.profiles.loc["alice", "n_shared_devices"] == 1
    assert res.profiles.loc["bob", "n_shared_devices"] == 1
    assert res.profiles.loc["alice", "n_cookies"] == 2
    assert res.profiles.loc["bob", "n_cookies"] == 1
    assert res.summary["shared_devices"] == 1
    assert res.summary["events_unattributed_shared_device"] == 2
    assert res.events["profile_id"].astype(str).tolist() == ["alice", "bob", "alice", "alice"]
    assert "tv" not in res.cookie_map.index  # a shared cookie resolves to nobody
    assert _owner(res, "a-phone") == "alice"


def test_links_frame_adds_links_and_respects_linked_at():
    ev = _events([(3, "c1", None), (2, "c2", None)])
    links = pd.DataFrame(
        {
            "cookie_id": ["c1", "c2", "c-unseen"],
            "profile_id": ["crm-1", "crm-2", "crm-3"],
            "linked_at": pd.DatetimeIndex([AS_OF - pd.Timedelta(days=30), AS_OF, AS_OF], tz="UTC"),
        }
    )
    res = resolve_identity(ev, AS_OF, links=links)
    # c2's link is dated at the cutoff, so not yet known: c2 stays anonymous
    assert res.profiles.index.tolist() == ["anon:c2", "crm-1"]
    assert res.events["profile_id"].astype(str).tolist() == ["crm-1", "anon:c2"]


def _expiry_events() -> pd.DataFrame:
    return _events(
        [
            (100, "old", "p-stale"),  # p-stale: a known customer seen only long ago ...
            (95, "old", None),  # ... whose cookie-only event still belongs to them
            (100, "old2", "p-back"),  # p-back: old cookie ...
            (3, None, "p-back"),  # ... but a recent profile-keyed event
            (60, "anon-old", None),  # anonymous cookie unseen for 60 days
            (29, "anon-new", None),
            (31, "edge", None),  # just over the ttl
            (30, "on-edge", None),  # exactly at the ttl: still alive
        ]
    )


def test_cookies_expire_but_known_customers_do_not():
    res = resolve_identity(_expiry_events(), AS_OF, FeatureSettings(cookie_ttl_days=30))
    assert set(res.profiles.index) == {"p-stale", "p-back", "anon:anon-new", "anon:on-edge"}
    # a lapsed customer keeps all its history, the expired cookie's events included
    assert res.profiles.loc["p-stale", "n_events"] == 2
    assert res.profiles.loc["p-stale", "last_seen"] == AS_OF - pd.Timedelta(days=95)
    assert res.profiles.loc["p-back", "n_events"] == 2
    # ... but its expired cookies no longer resolve
    assert "old" not in res.cookie_map.index
    assert "old2" not in res.cookie_map.index
    assert res.summary["expired_cookies"] == 4  # old, old2, anon-old, edge
    assert res.summary["profiles_expired"] == 2  # anon:anon-old, anon:edge
    assert res.summary["known_profiles_expired"] == 0
    assert res.summary["profiles_lapsed"] == 1  # p-stale, kept
    assert res.summary["events_expired"] == 2


def test_profile_ttl_drops_long_dead_customers_when_asked():
    settings = FeatureSettings(cookie_ttl_days=30, profile_ttl_days=90)
    res = resolve_identity(_expiry_events(), AS_OF, settings)
    assert set(res.profiles.index) == {"p-back", "anon:anon-new", "anon:on-edge"}
    assert res.summary["profiles_expired"] == 3  # p-stale, anon:anon-old, anon:edge
    assert res.summary["known_profiles_expired"] == 1
    assert res.summary["events_expired"] == 4


def test_consent_latest_record_wins_including_regrant_and_ties():
    ev = _events(
        [
            (5, "c1", "regrant"),
            (5, "c2", "withdrew"),
            (5, "c3", "other-purpose"),
            (5, "c4", "tie"),
            (5, "c5", "no-record"),
        ]
    )
    consent = _consent(
        [
            ("regrant", None, "marketing", False, 20),
            ("regrant", None, "marketing", True, 10),  # re-granted later: back in
            ("withdrew", None, "marketing", True, 20),
            ("withdrew", None, "marketing", False, 10),
            ("other-purpose", None, "analytics", False, 1),  # another purpose: ignored
            ("tie", None, "marketing", True, 10),
            ("tie", None, "marketing", False, 10),  # same time: withdrawal wins
        ]
    )
    res = resolve_identity(ev, AS_OF, consent=consent)
    assert set(res.profiles.index) == {"regrant", "other-purpose", "no-record"}
    assert res.summary["excluded_by_consent"] == 2
    # the withdrawn profiles' cookies never come back as anonymous profiles
    assert not any(i.startswith("anon:") for i in res.profiles.index)
    assert "c2" not in res.cookie_map.index


def test_consent_after_as_of_still_applies_because_consent_is_current_state():
    ev = _events([(5, "c1", "p1")])
    consent = _consent([("p1", None, "marketing", False, -10)])  # withdrawn after the cutoff
    res = resolve_identity(ev, AS_OF, consent=consent)
    assert len(res.profiles) == 0


def test_withdrawn_cookie_loses_its_events_and_its_anonymous_profile():
    ev = _events(
        [
            (5, "shared-pc", "p1"),
            (4, "shared-pc", None),
            (3, "anon-c", None),
            (2, "p1-phone", "p1"),
        ]
    )
    consent = _consent(
        [(None, "anon-c", "marketing", False, 1), (None, "shared-pc", "marketing", False, 1)]
    )
    res = resolve_identity(ev, AS_OF, consent=consent)
    assert res.profiles.index.tolist() == ["p1"]  # the profile itself has not withdrawn
    assert res.events["cookie_id"].tolist() == ["p1-phone"]
    assert res.profiles.loc["p1", "n_cookies"] == 1
    assert res.summary["cookies_withdrawn"] == 2
    assert res.summary["excluded_by_consent"] == 1  # anon:anon-c
    assert res.summary["events_excluded_by_consent"] == 3


def test_erased_profiles_and_anonymous_ids_are_removed():
    ev = _events([(5, "c1", "p1"), (4, "c1", None), (3, "c9", None), (2, "c8", None)])
    res = resolve_identity(ev, AS_OF, erased=["p1", "anon:c9", "never-seen"])
    assert res.profiles.index.tolist() == ["anon:c8"]
    assert res.summary["excluded_by_erasure"] == 2
    assert res.summary["events_excluded_by_erasure"] == 3
    assert "c1" not in res.cookie_map.index


def test_point_in_time_later_events_change_nothing():
    before = _events([(10, "c1", "p1"), (5, "c1", None), (3, "c2", None)])
    later = _events(
        [
            (-1, "c1", "p2"),  # would make c1 a shared device
            (-2, "c2", "p3"),  # would link the anonymous cookie
            (-3, "c3", None),
        ]
    )
    a = resolve_identity(before, AS_OF)
    b = resolve_identity(pd.concat([later, before], ignore_index=True), AS_OF)
    pd.testing.assert_frame_equal(a.profiles, b.profiles)
    pd.testing.assert_series_equal(a.cookie_map, b.cookie_map)
    assert a.events["profile_id"].astype(str).tolist() == ["p1", "p1", "anon:c2"]
    assert b.events["profile_id"].astype(str).tolist() == ["p1", "p1", "anon:c2"]
    assert b.summary["events_before_as_of"] == 3


def test_events_exactly_at_as_of_are_excluded():
    ev = _events([(0, "c1", "p1"), (1, "c1", "p1")])
    res = resolve_identity(ev, AS_OF)
    assert res.summary["events_used"] == 1


def test_bad_input_is_a_contract_error():
    with pytest.raises(DataContractError, match="event_time"):
        resolve_identity(pd.DataFrame({"cookie_id": ["c"]}), AS_OF)
    with pytest.raises(DataContractError, match="cookie_id or a profile_id"):
        resolve_identity(pd.DataFrame({"event_time": pd.DatetimeIndex([AS_OF])}), AS_OF)
    with pytest.raises(DataContractError, match="datetime"):
        resolve_identity(pd.DataFrame({"event_time": ["x"], "cookie_id": ["c"]}), AS_OF)


def test_dictionary_column_encodes_like_its_text() -> None:
    """Parquet text arrives as a dictionary per batch: same codes and values as the plain text
    (first appearance across batches, a value in several dictionaries once, missing rows -1)."""
    rng = np.random.default_rng(0)
    words = pa.array(["a", "b", None, "c", "d", "b"])  # a missing and a repeated entry
    chunks = [
        pa.DictionaryArray.from_arrays(
            pa.array(rng.integers(0, 6 - offset, 40), mask=rng.random(40) < 0.2, type=pa.int32()),
            words.slice(offset),
        )
        for offset in (3, 0, 1)
    ]
    column = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array(chunks)))
    plain = [chunk.dictionary.take(chunk.indices) for chunk in chunks]
    text = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array(plain)), dtype="string")
    codes, values = encode(column, len(column))
    expected_codes, expected_values = encode(text, len(text))
    np.testing.assert_array_equal(codes, expected_codes)
    assert values.to_pylist() == expected_values.to_pylist()
    assert (codes == -1).sum() == text.isna().sum() > 0


def test_a_few_distinct_values_are_coded_in_one_byte_ids_in_four() -> None:
    """A training keeps the log's codes through every step: a column of a few event types
    costs a byte an event, a column of a few hundred campaigns two; the same values either
    way, and a count by code (shifted by one) still fits."""
    n = 1_000
    events = pd.DataFrame(
        {
            "event_time": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"),
            "cookie_id": [f"c{i % 7}" for i in range(n)],
            "profile_id": [None if i % 3 else f"p{i % 5}" for i in range(n)],
            "event_type": [["page_view", "purchase", None][i % 3] for i in range(n)],
            "campaign_id": [f"k{i % 300}" for i in range(n)],
        }
    )
    codes = encode_ids(events, extra=["event_type", "campaign_id"])
    assert codes.cookie[0].dtype == codes.profile[0].dtype == np.int32
    kinds, vocab = codes.columns["event_type"]
    assert kinds.dtype == np.int8
    np.testing.assert_array_equal(kinds, encode(events["event_type"], n)[0])
    assert vocab.to_pylist() == ["page_view", "purchase"]
    campaigns, vocab = codes.columns["campaign_id"]
    assert campaigns.dtype == np.int16 and len(vocab) == 300
    assert (campaigns + 1).max() == 300
