"""train(): every step into one bundle; a step without enough data is skipped, not fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmp_ml.bundle import load_bundle
from dmp_ml.demo import generate_demo_world, write_demo_world
from dmp_ml.errors import BundleError
from dmp_ml.pipeline import train

pytestmark = pytest.mark.slow  # every test trains (the later ones read the first one's bundle)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("tiny")
    paths = write_demo_world(generate_demo_world(n_profiles=60, days=150, seed=2), root / "demo")
    return root, paths


def test_too_little_data_skips_propensity_and_the_rest_goes_on(tiny) -> None:
    root, paths = tiny
    result = train(
        paths["events"],
        "end",
        root / "W",
        profiles=paths["profiles"],
        consent=paths["consent"],
    )
    propensity = result.steps["propensity"]
    assert propensity.status == "skipped"
    assert "positives" in propensity.reason or "negatives" in propensity.reason
    assert result.steps["features"].status == "trained"
    assert result.steps["lookalike"].status == "trained"
    manifest = result.manifest
    assert manifest["steps"]["propensity"]["status"] == "skipped"
    assert manifest["inputs"]["events"]["rows_read"] > 0
    assert manifest["data_fingerprint"]

    bundle = load_bundle(root / "W")
    with pytest.raises(BundleError, match="no propensity model"):
        bundle.score(["p000001"])
    assert len(bundle.features) > 0


def test_withdrawn_profiles_are_in_no_part_of_the_bundle(tiny) -> None:
    root, paths = tiny
    world = generate_demo_world(n_profiles=60, days=150, seed=2)
    withdrawn = set(world.truth.loc[world.truth["consent_withdrawn"], "profile_id"])
    assert withdrawn, "the demo world plants withdrawals"
    bundle = load_bundle(root / "W")
    assert not withdrawn & set(bundle.features.frame.index)
    assert not withdrawn & set(bundle.lookalike_model.profile_ids_)
    if bundle.send_time_model is not None:
        assert not withdrawn & set(bundle.send_time_model.profile_ids_)
