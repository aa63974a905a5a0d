"""One small world and one local in-process Dask cluster, shared by every scale-out test."""

from __future__ import annotations

import pytest

pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from dmp_ml.demo import DemoWorld, generate_demo_world  # noqa: E402


@pytest.fixture(scope="package")
def world() -> DemoWorld:
    """A small demo world (300 profiles, 60 days): households, consent, anonymous cookies."""
    return generate_demo_world(n_profiles=300, days=60, seed=3)


@pytest.fixture(scope="package")
def client():
    """A client of a local in-process cluster (one worker, two threads)."""
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c
