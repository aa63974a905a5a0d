"""The Dask engine gives exactly the pandas engine's features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("dask.dataframe")

from dmp_ml.features import FeatureBuilder, FeatureTable, build_features  # noqa: E402
from dmp_ml.scale import DaskEngine  # noqa: E402
from dmp_ml.settings import FeatureSettings, Settings  # noqa: E402


def _assert_same(a: FeatureTable, b: FeatureTable) -> None:
    pd.testing.assert_frame_equal(a.frame, b.frame, check_exact=True)
    np.testing.assert_array_equal(a.hour_of_week, b.hour_of_week)
    assert a.spec == b.spec
    assert a.summary == b.summary
    pd.testing.assert_series_equal(a.cookie_map, b.cookie_map)


def test_dask_engine_equals_pandas_engine_on_the_demo_world(world, client):
    as_of = world.end - pd.Timedelta(days=7)
    erased = [str(world.profiles["profile_id"].iloc[0])]
    expected = build_features(world.events, as_of, world.profiles, world.consent, erased=erased)
    got = build_features(
        world.events,
        as_of,
        world.profiles,
        world.consent,
        erased=erased,
        engine=DaskEngine(client, npartitions=5),
    )
    assert len(expected) > 100
    assert expected.summary["shared_devices"] > 0  # the demo world has households
    _assert_same(expected, got)


def test_engine_setting_routes_build_features_to_dask(world, client):
    as_of = world.end
    settings = Settings(
        features=FeatureSettings(
            engine="dask", dask_scheduler=client.scheduler.address, dask_partitions=3
        )
    )
    got = build_features(world.events, as_of, world.profiles, world.consent, settings)
    expected = build_features(world.events, as_of, world.profiles, world.consent, Settings())
    _assert_same(expected, got)


def test_feature_builder_on_dask_reuses_its_encoded_log_and_equals_pandas(world, client):
    settings = Settings(
        features=FeatureSettings(
            engine="dask", dask_scheduler=client.scheduler.address, dask_partitions=4
        )
    )
    as_of = world.end - pd.Timedelta(days=14)
    got = FeatureBuilder(world.events, world.profiles, world.consent, settings).build(as_of)
    expected = build_features(world.events, as_of, world.profiles, world.consent, Settings())
    _assert_same(expected, got)


def test_a_held_engine_keeps_one_local_cluster_across_builds(world):
    engine = DaskEngine(None, npartitions=2)  # no scheduler: a local cluster of its own
    with engine:
        with engine.client() as first:
            pass
        a = build_features(world.events, world.end, world.profiles, engine=engine)
        b = build_features(world.events, world.end, world.profiles, engine=engine)
        with engine.client() as after:
            assert after is first  # the builds entered and left the engine without closing it
    pd.testing.assert_frame_equal(a.frame, b.frame, check_exact=True)
    assert first.status == "closed"  # leaving the outer block closes it
