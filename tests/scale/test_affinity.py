"""Affinity counts on Dask equal the local fit's: same vocabularies, counts, shares, files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmp_ml.identity import resolve_identity
from dmp_ml.models.affinity import AffinityModel
from dmp_ml.scale import DaskCounts, DaskEngine


@pytest.fixture(scope="module")
def resolved(world):
    return resolve_identity(world.events, world.end, consent=world.consent).events


def _assert_equal(local: AffinityModel, dask: AffinityModel) -> None:
    for name in ("profile_ids_", "channels_", "categories_"):
        pd.testing.assert_index_equal(getattr(dask, name), getattr(local, name))
    np.testing.assert_array_equal(dask.channel_counts_, local.channel_counts_)
    for name in ("data", "indices", "indptr"):
        a, b = getattr(local.category_counts_, name), getattr(dask.category_counts_, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(b, a, err_msg=name)
    np.testing.assert_array_equal(dask.channel_share_, local.channel_share_)
    np.testing.assert_array_equal(dask.category_share_, local.category_share_)


@pytest.mark.parametrize(("npartitions", "max_channels"), [(1, 20), (3, 2), (7, 3)])
def test_dask_counts_equal_the_local_fit_and_its_bundle_files(
    world, resolved, client, tmp_path, npartitions, max_channels
):
    eligible = world.profiles["profile_id"].iloc[::2]  # rows of other profiles are ignored
    local = AffinityModel(max_channels=max_channels).fit(resolved, eligible, world.end)
    engine = DaskCounts(DaskEngine(client), npartitions)
    dask = AffinityModel(max_channels=max_channels).fit(resolved, eligible, world.end, engine)
    assert local.category_counts_.nnz > 0 and len(local.channels_) > 1
    _assert_equal(local, dask)
    local.save(tmp_path / "local")
    dask.save(tmp_path / "dask")
    for path in sorted((tmp_path / "local").iterdir()):
        assert (tmp_path / "dask" / path.name).read_bytes() == path.read_bytes(), path.name


def test_channel_ties_keep_the_order_of_first_appearance_across_partitions(client):
    # "web" and "app" both have two events; "web" comes first in the log but from the last
    # profile (the last partition), so the order must come from the log, not the partitions
    events = pd.DataFrame(
        {
            "profile_id": ["p3", "p0", "p1", "p3", "p2", "p0", "p1"],
            "event_type": ["page_view"] * 6 + ["email_send"],
            "channel": ["web", "app", "sms", "web", "app", None, "sms"],
            "category": ["b", None, "a", "b", "c", "a", None],
        }
    )
    ids = ["p0", "p1", "p2", "p3", "p4"]
    local = AffinityModel(max_channels=1).fit(events, ids, "2026-01-01")
    assert list(local.channels_) == ["web", "other"]
    dask = AffinityModel(max_channels=1).fit(
        events, ids, "2026-01-01", DaskCounts(DaskEngine(client), 4)
    )
    _assert_equal(local, dask)
