"""Propensity snapshots on Dask equal the local ones; identity is resolved once per cutoff."""

from __future__ import annotations

import pandas as pd

from dmp_ml.features import FeatureBuilder
from dmp_ml.models.propensity import build_snapshots
from dmp_ml.settings import FeatureSettings, Settings


def _settings(**features) -> Settings:
    return Settings(
        features=FeatureSettings(**features),
        propensity={"horizon_days": 10, "n_snapshots": 3, "target_event": "purchase"},
    )


def _snapshots(world, settings):
    builder = FeatureBuilder(world.events, world.profiles, world.consent, settings)
    with builder:
        snaps, score = build_snapshots(
            world.events, world.end, settings, world.profiles, world.consent, builder=builder
        )
    return snaps, score, builder


def test_snapshots_on_dask_equal_local_and_resolve_each_cutoff_once(world, client):
    local_snaps, local_score, local_builder = _snapshots(world, _settings())
    dask_settings = _settings(
        engine="dask", dask_scheduler=client.scheduler.address, dask_partitions=4
    )
    dask_snaps, dask_score, dask_builder = _snapshots(world, dask_settings)
    assert len(local_snaps) == 3
    pd.testing.assert_frame_equal(dask_score.frame, local_score.frame, check_exact=True)
    for (table, labels), (want_table, want_labels) in zip(dask_snaps, local_snaps, strict=True):
        pd.testing.assert_frame_equal(table.frame, want_table.frame, check_exact=True)
        pd.testing.assert_series_equal(labels, want_labels)
    assert sum(int(labels.sum()) for _, labels in local_snaps) > 20  # labels say something
    cutoffs = [world.end - pd.Timedelta(days=10 * k) for k in range(4)]
    for builder in (local_builder, dask_builder):
        # as_of (scores and the last labels), then each snapshot cutoff: once each
        assert sorted(builder.resolved_cutoffs) == sorted(cutoffs)
