"""The lookalike guard over the real service: a bundle whose embedding and PU classifier are
crippled answers ``POST /lookalike`` with the raw-feature centroid, the plain candidate that
still sees the seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import dmp_ml
import dmp_ml.demo
from dmp_ml.settings import load_settings

from .conftest import TOKEN, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crippled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse retail world trained with a one-dimensional embedding and a PU classifier
    that cannot split (every leaf must hold more rows than the seed has)."""
    workdir = tmp_path_factory.mktemp("guard") / "W"
    settings = load_settings(workdir=workdir, mlflow_tracking_uri=f"sqlite:///{workdir}.db")
    look = settings.lookalike.model_copy(
        update={"pca_components": 1, "pu_n_estimators": 1, "pu_min_child_samples": 100_000}
    )
    settings = settings.model_copy(update={"lookalike": look})
    world = dmp_ml.demo.generate_retail_world(800, days=365, seed=3)
    dmp_ml.train(world.events, "end", workdir, settings=settings)
    return workdir


@pytest.fixture(scope="module")
def served(crippled: Path) -> Iterator[str]:
    """``dmp-ml serve`` on that workdir (the bundle carries its lookalike settings)."""
    proc, url, _ = start_server(crippled)
    try:
        yield url
    finally:
        stop_server(proc)


def test_the_service_answers_with_the_raw_centroid_the_guard_picked(
    crippled: Path, served: str
) -> None:
    bundle = dmp_ml.load_bundle(crippled)
    frame = bundle.features.frame
    # the seed: half of the heaviest buyers; the other half is what a good audience finds
    count = frame["purchase_count_total"].fillna(0)
    heavy = frame.index[count >= count.quantile(0.8)]
    ids = list(np.random.default_rng(0).permutation(heavy.astype(str)))
    seed, truth = ids[: len(ids) // 2], set(ids[len(ids) // 2 :])
    response = httpx.post(
        f"{served}/lookalike",
        json={"seed_ids": seed, "size": len(truth)},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    d = body["diagnostics"]
    assert d["method"] == "raw_centroid"
    assert set(d["candidate_recall"]) == {"raw_centroid", "centroid", "hybrid", "classifier"}
    assert d["candidate_recall"]["raw_centroid"] > d["candidate_recall"]["centroid"] + 0.1
    answered = [row["profile_id"] for row in body["audience"]]
    forced = bundle.lookalike(seed, size=len(truth), method="raw_centroid").frame
    assert answered == forced["profile_id"].tolist()
    embedding = bundle.lookalike(seed, size=len(truth), method="centroid").frame

    def precision(members: list[str]) -> float:
        return float(np.isin(members, list(truth)).mean())

    assert precision(answered) > precision(embedding["profile_id"].tolist()) + 0.1
