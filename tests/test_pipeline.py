"""train(): every step into one bundle; a step without enough data is skipped, not fatal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dmp_ml.bundle import TEMP_PREFIX, load_bundle
from dmp_ml.demo import generate_demo_world, write_demo_world
from dmp_ml.errors import BundleError, StorageError
from dmp_ml.layout import versions_dir
from dmp_ml.pipeline import train

pytestmark = pytest.mark.slow  # every test trains (the later ones read the first one's bundle)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("tiny")
    paths = write_demo_world(generate_demo_world(n_profiles=60, days=150, seed=2), root / "demo")
    return root, paths


def test_too_little_data_skips_propensity_and_the_rest_goes_on(tiny) -> None:
    root, paths = tiny
    staged: dict[str, list[str]] = {}

    def on_step(name: str, status: str) -> None:
        # what the bundle being built holds as each step starts: every earlier model is
        # written already (and let go), so no later step carries its arrays; so are the
        # features' hour-of-week counts, which no step reads
        if status == "running":
            (building,) = versions_dir(root / "W").glob(f"{TEMP_PREFIX}*")
            staged[name] = sorted(
                p.name for p in building.iterdir() if p.is_dir() and any(p.iterdir())
            )

    result = train(
        paths["events"],
        "end",
        root / "W",
        profiles=paths["profiles"],
        consent=paths["consent"],
        on_step=on_step,
    )
    assert staged["features"] == []
    assert staged["lookalike"] == ["features", "send_time"]
    assert staged["affinity"] == ["features", "lookalike", "send_time"]
    propensity = result.steps["propensity"]
    assert propensity.status == "skipped"
    assert "positives" in propensity.reason or "negatives" in propensity.reason
    assert result.steps["features"].status == "trained"
    assert result.steps["lookalike"].status == "trained"
    manifest = result.manifest
    assert manifest["steps"]["propensity"]["status"] == "skipped"
    assert manifest["inputs"]["events"]["rows_read"] > 0
    assert manifest["data_fingerprint"]
    # every stage is timed, in run order: the result, the manifest and each step's outcome
    stages = ["inputs", *result.steps, "save", "publish"]
    assert list(result.seconds) == stages and all(v >= 0 for v in result.seconds.values())
    assert list(manifest["seconds"]) == stages[:-2]
    for name, outcome in result.steps.items():
        assert manifest["steps"][name]["seconds"] == outcome.seconds == result.seconds[name]
    # and each stage's peak memory: at least the interpreter with pandas loaded, and within
    # the machine's memory
    assert list(result.peak_mb) == stages and list(manifest["peak_mb"]) == stages[:-2]
    machine_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    assert all(30 < mb < machine_mb for mb in result.peak_mb.values())

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


def test_every_model_run_logs_its_charts_and_the_events_it_saw(
    trained_workdir: Path, train_settings
) -> None:
    """MLflow shows charts for all three models and the digest of the training events."""
    from mlflow import MlflowClient

    bundle = load_bundle(trained_workdir)
    manifest = bundle.manifest
    uri = train_settings.tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    expected = {
        "propensity": {"calibration", "gains", "feature_importance", "guard_comparison"},
        "send_time": {"send_time_heatmap", "send_time_reliability", "guard_comparison"},
        "lookalike": {"lookalike_recall", "lookalike_scores"},
    }
    for step, charts in expected.items():
        run_id = manifest["steps"][step]["mlflow_run_id"]
        run = client.get_run(run_id)
        assert run.data.tags["bundle_version"] == manifest["bundle_version"]
        plots = {Path(a.path).name for a in client.list_artifacts(run_id, "plots")}
        assert plots == {f"{c}.png" for c in charts}, (step, plots)
        (given,) = run.inputs.dataset_inputs
        assert given.dataset.name == "events"
        assert given.dataset.digest == manifest["data_fingerprint"][:32]
        assert int({t.key: t.value for t in given.tags}["rows"]) > 0
        # the train's timing table is on every run of the bundle
        assert run.data.metrics[f"seconds_{step}"] == pytest.approx(manifest["seconds"][step])
        assert {"seconds_inputs", "seconds_features", "seconds_save"} <= set(run.data.metrics)
        assert run.data.metrics[f"peak_mb_{step}"] == pytest.approx(manifest["peak_mb"][step])
    send_time = client.get_run(manifest["steps"]["send_time"]["mlflow_run_id"]).data.metrics
    assert send_time["heldout_sends"] > 0 and 0 <= send_time["heldout_ece"] < 1
    lookalike = client.get_run(manifest["steps"]["lookalike"]["mlflow_run_id"]).data.metrics
    # held-out seeds are found far more often than a random audience would find them
    assert lookalike["heldout_lift_at_seed_size"] > 1.5
    # every lookalike candidate's held-out recall is logged; the step says which one serves
    candidates = ("raw_centroid", "centroid", "hybrid", "classifier")
    assert {f"heldout_recall_{name}" for name in candidates} <= set(lookalike)
    details = manifest["steps"]["lookalike"]
    assert details["served"] in candidates
    assert f"serving {details['served']}" in details["comparison"]


def _versions(settings) -> int:
    from mlflow import MlflowClient

    from dmp_ml.tracking import registered_model_name, use_tracking_uri

    with use_tracking_uri(settings.tracking_uri()) as client:
        assert isinstance(client, MlflowClient)
        name = registered_model_name(
            settings.propensity.target_event, settings.propensity.horizon_days
        )
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


def test_the_log_is_held_as_dictionaries_and_csv_trains_the_same_bundle_as_parquet(
    demo_world, train_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train`` holds the loaded log's text columns as dictionaries (a few bytes an event, not
    one string each), from Parquet (its dictionaries kept) and from CSV (its text encoded), and
    both files of one log give the same features and the same scores."""
    import numpy as np
    import pandas as pd

    from dmp_ml import pipeline
    from dmp_ml.rows import is_dictionary

    paths = write_demo_world(demo_world, tmp_path / "demo")
    csv = tmp_path / "events.csv"
    pd.read_parquet(paths["events"]).to_csv(csv, index=False)
    held: list[pd.DataFrame] = []

    class Spy(pipeline.FeatureBuilder):
        def __init__(self, events: pd.DataFrame, *args, **kwargs) -> None:
            held.append(events)
            super().__init__(events, *args, **kwargs)

    monkeypatch.setattr(pipeline, "FeatureBuilder", Spy)
    bundles = {}
    for name, events in (("parquet", paths["events"]), ("csv", csv)):
        result = train(
            events,
            "end",
            tmp_path / name,
            profiles=paths["profiles"],
            consent=paths["consent"],
            settings=train_settings,
        )
        assert result.steps["propensity"].status == "trained"
        bundles[name] = result.bundle_path
    text = ["cookie_id", "profile_id", "event_type", "channel", "source", "campaign_id"]
    for frame in held:
        assert all(is_dictionary(frame[c].dtype) for c in [*text, "category"])
        assert frame.memory_usage(deep=True).sum() / len(frame) < 40  # 121 as strings
    pd.testing.assert_frame_equal(held[0], held[1])
    for part in ("propensity/scores.parquet", "features/features.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(bundles["parquet"] / part), pd.read_parquet(bundles["csv"] / part)
        )
    for part in ("lookalike/vectors.npy", "send_time/rate.npy"):
        np.testing.assert_array_equal(
            np.load(bundles["parquet"] / part), np.load(bundles["csv"] / part)
        )
