"""The lookalike embedding on Dask equals the local fit's: same embedder, inputs, vectors."""

from __future__ import annotations

import numpy as np
import pytest

from dmp_ml.features import build_features
from dmp_ml.models.lookalike import Embedder, LookalikeModel
from dmp_ml.scale import DaskEmbedding, DaskEngine
from dmp_ml.settings import LookalikeSettings


@pytest.fixture(scope="module")
def table(world):
    return build_features(world.events, world.end, profiles=world.profiles, consent=world.consent)


@pytest.mark.parametrize(
    ("npartitions", "n_components", "max_fit_rows"),
    [(1, None, 200_000), (4, None, 200_000), (3, 8, 200_000), (5, 6, 97)],
)
def test_dask_embedding_equals_the_local_fit(
    table, client, npartitions, n_components, max_fit_rows
):
    # max_fit_rows=97: the PCA is fitted on a sample drawn across the slices
    def embedder() -> Embedder:
        return Embedder(n_components=n_components, max_fit_rows=max_fit_rows, min_level_count=5)

    local = embedder()
    raw, codes = local.fit_arrays(table.frame)
    vectors = local.embed(raw, codes)
    dask = embedder()
    out = DaskEmbedding(DaskEngine(client), npartitions).fit_embed(dask, table.frame)
    assert dask.to_dict() == local.to_dict()
    assert local.dim_ == (n_components or len(local.feature_names_))
    assert local.levels_  # the world's text columns are embedded too
    for name, a, b in zip(("raw", "codes", "vectors"), (raw, codes, vectors), out, strict=True):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_a_train_on_dask_serves_the_local_lookalike_audiences(table, client):
    settings = LookalikeSettings(pca_components=8)
    local = LookalikeModel(settings).fit(table)
    dask = LookalikeModel(settings).fit(table, engine=DaskEmbedding(DaskEngine(client), 3))
    seed = list(table.frame.index[:30])
    a, b = local.expand(seed, size=60), dask.expand(seed, size=60)
    assert len(a.frame) == 60
    assert a.frame.equals(b.frame)
