"""Identity on Dask equals identity in process: same profiles, cookie map, summary and rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmp_ml.features import FeatureBuilder
from dmp_ml.identity import Resolution, encode_ids, resolution_from, resolve_identity
from dmp_ml.scale.identity import resolve_on_dask, scatter_log
from dmp_ml.settings import FeatureSettings, Settings

AS_OF = pd.Timestamp("2024-06-01", tz="UTC")


def _assert_same(expected: Resolution, got: Resolution) -> None:
    assert got.summary == expected.summary
    pd.testing.assert_frame_equal(got.profiles, expected.profiles, check_exact=True)
    pd.testing.assert_series_equal(got.cookie_map, expected.cookie_map)
    pd.testing.assert_frame_equal(got.events, expected.events, check_exact=True)


def _on_dask(events, as_of, client, npartitions, fs=None, **kw) -> Resolution:
    fs = fs or FeatureSettings()
    parts = scatter_log(client, events, npartitions)
    return resolution_from(events, resolve_on_dask(parts, as_of, fs, client, **kw))


def _every_rule() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A log where each identity rule decides something, rows interleaved so that one
    profile's or one cookie's rows fall in different partitions."""
    rows = [
        (5, "tv", "alice"),  # household: tv linked to alice and bob ...
        (4, "tv", None),  # ... so its cookie-only events belong to nobody
        (3, "a-phone", "alice"),
        (2, "a-phone", None),  # exclusive cookie: alice
        (100, "old", "p-stale"),  # lapsed customer, kept; its old cookie expired
        (95, "old", None),
        (60, "anon-old", None),  # expired anonymous profile
        (29, "anon-new", None),
        (10, "gone", None),  # withdrawn cookie
        (9, "gone", "carol"),  # ... linked to carol: the row is removed
        (8, "c-dan", "dan"),  # dan withdraws consent
        (7, "c-erin", "erin"),  # erin is erased
        (6, "erased-anon", None),  # an erased anonymous id
        (1, "crm-cookie", None),  # linked through the links frame
        (0.5, None, "frank"),  # profile-only row
        (0, "late", "gina"),  # at the cutoff: not counted
        (-3, "tv", "hank"),  # after the cutoff: does not make tv shared with hank
        (2, None, None),  # no id at all
        (1, "tv", "bob"),
        (3, "b-laptop", "bob"),
        (1, "c-erin", None),
    ]
    rows = rows * 2  # every id in more than one partition
    events = pd.DataFrame(
        {
            "event_time": pd.DatetimeIndex([AS_OF - pd.Timedelta(days=r[0]) for r in rows]).as_unit(
                "ns"
            ),
            "cookie_id": pd.array([r[1] for r in rows], dtype="string"),
            "profile_id": pd.array([r[2] for r in rows], dtype="string"),
            "event_type": pd.array(["page_view"] * len(rows), dtype="string"),
        }
    )
    links = pd.DataFrame(
        {
            "cookie_id": ["crm-cookie", "a-phone", "never-seen", "late"],
            "profile_id": ["crm-9", "alice", "crm-ghost", "zed"],
            "linked_at": pd.DatetimeIndex(
                [AS_OF - pd.Timedelta(days=30)] * 3 + [AS_OF - pd.Timedelta(days=1)], tz="UTC"
            ),
        }
    )
    consent = pd.DataFrame(
        {
            "profile_id": pd.array(["dan", None], dtype="string"),
            "cookie_id": pd.array([None, "gone"], dtype="string"),
            "purpose": ["marketing", "marketing"],
            "granted": [False, False],
            "updated_at": pd.DatetimeIndex([AS_OF, AS_OF - pd.Timedelta(days=1)]),
        }
    )
    return events, links, consent


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_every_identity_rule_gives_the_same_graph_on_dask(client, npartitions):
    events, links, consent = _every_rule()
    kw = {"consent": consent, "links": links, "erased": ["erin", "anon:erased-anon"]}
    fs = FeatureSettings(cookie_ttl_days=30)
    expected = resolve_identity(events, AS_OF, fs, **kw)
    got = _on_dask(events, AS_OF, client, npartitions, fs, **kw)
    # the rules did decide something here, so equality is not vacuous
    s = expected.summary
    assert s["shared_devices"] == 1 and s["events_unattributed_shared_device"] == 2
    assert s["expired_cookies"] >= 2 and s["profiles_lapsed"] == 1
    assert s["cookies_withdrawn"] == 1 and s["excluded_by_consent"] >= 1
    assert s["excluded_by_erasure"] == 2
    assert expected.cookie_map["crm-cookie"] == "crm-9"
    assert expected.profiles.loc["alice", "n_shared_devices"] == 1
    _assert_same(expected, got)


def test_profile_ttl_and_a_later_cutoff_give_the_same_graph_on_dask(client):
    events, links, consent = _every_rule()
    for fs, as_of in (
        (FeatureSettings(cookie_ttl_days=30, profile_ttl_days=50), AS_OF),
        (FeatureSettings(), AS_OF + pd.Timedelta(days=10)),
    ):
        expected = resolve_identity(events, as_of, fs, links=links, consent=consent)
        got = _on_dask(events, as_of, client, 4, fs, links=links, consent=consent)
        _assert_same(expected, got)


def test_demo_world_identity_on_dask_equals_local_at_several_cutoffs(world, client):
    erased = [str(world.profiles["profile_id"].iloc[0])]
    shared = []
    for days in (30, 7, 0):
        as_of = world.end - pd.Timedelta(days=days)
        expected = resolve_identity(world.events, as_of, consent=world.consent, erased=erased)
        got = _on_dask(world.events, as_of, client, 5, consent=world.consent, erased=erased)
        shared.append(expected.summary["events_unattributed_shared_device"])
        _assert_same(expected, got)
    assert max(shared) > 0  # the demo world has households


def test_feature_builder_resolves_on_the_engine_the_setting_names(world, client):
    settings = Settings(
        features=FeatureSettings(
            engine="dask", dask_scheduler=client.scheduler.address, dask_partitions=3
        )
    )
    as_of = world.end - pd.Timedelta(days=14)
    local = FeatureBuilder(world.events, world.profiles, world.consent, Settings())
    with FeatureBuilder(world.events, world.profiles, world.consent, settings) as builder:
        _assert_same(local.resolve(as_of), builder.resolve(as_of))
        assert builder.engine.npartitions == 3


def test_the_encoded_log_is_not_what_dask_reads(world, client):
    """Each partition encodes its own ids: the client's dictionary order does not matter."""
    as_of = world.end
    shuffled = world.events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    expected = resolve_identity(shuffled, as_of, consent=world.consent)
    got = _on_dask(shuffled, as_of, client, 6, consent=world.consent)
    _assert_same(expected, got)
    assert len(encode_ids(shuffled).cookie[1]) > len(got.cookie_map)
    assert np.all(got.profiles["n_events"] > 0)
