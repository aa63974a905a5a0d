"""train(): every step into one bundle; a step without enough data is skipped, not fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmp_ml.bundle import load_bundle
from dmp_ml.demo import generate_demo_world, write_demo_world
from dmp_ml.errors import BundleError, StorageError
from dmp_ml.pipeline import train


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


def _versions(settings) -> int:
    from mlflow import MlflowClient

    from dmp_ml.tracking import registered_model_name, use_tracking_uri

    with use_tracking_uri(settings.tracking_uri()) as client:
        assert isinstance(client, MlflowClient)
        name = registered_model_name(settings.propensity.target_event)
        return len(client.search_model_versions(f"name='{name}'"))


def test_a_train_that_cannot_publish_registers_no_model_version(
    trained_workdir: Path, copy_workdir, demo_world, train_settings, tmp_path: Path
) -> None:
    import shutil

    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    before = _versions(train_settings)
    live = (workdir / "bundle").resolve()
    (workdir / "bundle").unlink()
    shutil.copytree(live, workdir / "bundle")  # a directory where the pointer should be
    with pytest.raises(BundleError, match="not a bundle pointer"):
        train(demo_world.events, "end", workdir, settings=train_settings)
    assert _versions(train_settings) == before  # every step ran; nothing was published
    (workdir / "bundle").rename(tmp_path / "moved")
    result = train(demo_world.events, "end", workdir, settings=train_settings)
    assert _versions(train_settings) == before + 1  # registered once published
    assert result.steps["propensity"].details["model_version"] == str(before + 1)


def test_an_unwritable_workdir_is_one_typed_error_naming_the_path(
    demo_world, train_settings, tmp_path: Path
) -> None:
    # root writes through chmod, so the failure is made real another way: the bundles
    # directory's path is taken by a regular file (mkdir fails for root too)
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "bundles").write_text("not a directory")
    with pytest.raises(StorageError) as caught:
        train(demo_world.events, "end", workdir, settings=train_settings)
    assert str(workdir / "bundles") in str(caught.value)
    assert "in the way" in caught.value.cause or "not a directory" in caught.value.cause
