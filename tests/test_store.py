"""The bundle codec and the workdir state: a bundle written and read by iterating the registered
models, re-published after an edit, and the locks writers serialise on."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from dmp_ml import layout, spool, store
from dmp_ml.bundle import (
    MANIFEST,
    finish_manifest,
    load_bundle,
    read_manifest,
    remove_abandoned,
    save_bundle,
    write_bundle,
)
from dmp_ml.errors import BundleError
from dmp_ml.models import REGISTRY

CopyWorkdir = Callable[[Path, Path], Path]  # the copy_workdir fixture (tests/conftest.py)


def _model_files(manifest: dict) -> dict[str, str]:
    """Checksums of the files the codec writes (features, models, scores)."""
    codec_dirs = ("features", *REGISTRY)
    return {k: v for k, v in manifest["files"].items() if k.split("/")[0] in codec_dirs}


def test_a_bundle_round_trips_with_every_registered_model(
    trained_workdir: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(trained_workdir)
    assert set(bundle.models) == set(REGISTRY)
    assert bundle.propensity is bundle.models["propensity"]
    assert bundle.send_time_model is bundle.models["send_time"]
    assert bundle.lookalike_model is bundle.models["lookalike"]
    assert bundle.affinity_model is bundle.models["affinity"]

    copy = tmp_path / "copy"
    base = {k: v for k, v in bundle.manifest.items() if k not in ("files", "format_version")}
    written = save_bundle(
        copy,
        features=bundle.features,
        models=bundle.models,
        scores=bundle.scores,
        manifest=base,
    )
    assert read_manifest(copy, verify=True) == written
    # the same model files, byte for byte: nothing is lost or changed by a load and a save
    assert _model_files(written) == _model_files(bundle.manifest)

    again = load_bundle(copy)
    assert set(again.models) == set(REGISTRY)
    pd.testing.assert_frame_equal(again.scores, bundle.scores)
    ids = bundle.features.frame.index[:20].tolist()
    pd.testing.assert_frame_equal(again.score(ids).frame, bundle.score(ids).frame)
    seed = bundle.features.frame.index[:30].tolist()
    assert (
        again.lookalike(seed, size=50).frame["profile_id"].tolist()
        == bundle.lookalike(seed, size=50).frame["profile_id"].tolist()
    )


def test_a_model_whose_step_did_not_train_is_absent_not_an_error(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    live = layout.pointer(workdir).resolve()
    manifest = read_manifest(live)
    manifest["steps"]["send_time"] = {"status": "skipped", "reason": "no email history"}
    base = {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
    shutil.rmtree(live / "send_time")
    (live / MANIFEST).unlink()
    finish_manifest(live, base)

    bundle = load_bundle(workdir)
    assert "send_time" not in bundle.models
    assert bundle.send_time_model is None
    assert set(bundle.models) == set(REGISTRY) - {"send_time"}
    with pytest.raises(BundleError, match="no email history"):
        bundle.send_time(bundle.features.frame.index[:3])

    # a re-publish keeps it absent and the other models intact
    path = store.republish(bundle, workdir, tag="test", manifest_update={})
    assert not (path / "send_time").exists()
    again = load_bundle(workdir)
    assert again.version == bundle.version
    assert set(again.models) == set(REGISTRY) - {"send_time"}


def test_republish_writes_the_edited_models(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    bundle = load_bundle(workdir)
    parent = bundle.version
    gone = bundle.affinity_model.profile_ids_[:5].tolist()
    assert bundle.affinity_model.forget(gone) == 5
    path = store.republish(bundle, workdir, tag="edit", manifest_update={"note": "x"})
    again = load_bundle(workdir)
    assert again.path == path and again.manifest["parent_version"] == parent
    assert again.manifest["note"] == "x"
    assert not again.affinity_model.profile_ids_.isin(gone).any()
    assert len(again.affinity_model.profile_ids_) == len(bundle.affinity_model.profile_ids_)


def test_save_bundle_refuses_an_unregistered_model(trained_workdir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(trained_workdir)
    with pytest.raises(KeyError, match="no model registered"):
        save_bundle(
            tmp_path / "b",
            features=bundle.features,
            models={"mystery": bundle.models["affinity"]},
            scores=None,
            manifest={"bundle_version": "v"},
        )


def test_workdir_lock_serialises_writers(tmp_path: Path) -> None:
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with store.workdir_lock(tmp_path):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with store.workdir_lock(tmp_path):
        inside.set()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert layout.lock_file(tmp_path).exists()


def test_one_spool_applier_at_a_time(tmp_path: Path) -> None:
    with spool.applier_lock(tmp_path) as first:
        assert first is True
        result: list[bool] = []

        def other() -> None:
            with spool.applier_lock(tmp_path) as mine:
                result.append(mine)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=10)
        assert result == [False]
    with spool.applier_lock(tmp_path) as again:
        assert again is True


def test_a_bundle_being_written_is_not_abandoned(tmp_path: Path) -> None:
    with write_bundle(tmp_path, "v1") as tmp:
        (tmp / "x.txt").write_text("1")
        assert remove_abandoned(tmp_path) == []  # its writer holds the lock
        assert tmp.exists()
        finish_manifest(tmp, {"bundle_version": "v1"})
    leftovers = [p.name for p in layout.versions_dir(tmp_path).iterdir()]
    assert leftovers == ["v1"]  # no temporary directory nor lock file left behind
    # one a dead writer left (no lock held) is removed
    dead = layout.versions_dir(tmp_path) / ".tmp-v2-dead"
    dead.mkdir()
    (dead / "features.parquet").write_bytes(b"secret")
    assert remove_abandoned(tmp_path) == [".tmp-v2-dead"]
    assert not dead.exists()


def test_events_state_is_written_atomically(tmp_path: Path) -> None:
    events = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2026-01-01T10:00:00Z"]),
            "profile_id": ["p1"],
            "event_type": ["page_view"],
        }
    )
    store.record_training_events(tmp_path, events, bundle_version="v1")
    state = json.loads(layout.events_state(tmp_path).read_text(encoding="utf-8"))
    assert state == {"merged": [], "bundle_version": "v1"}
    assert store.history_version(tmp_path) == "v1"
    assert len(store.history_events(tmp_path)) == 1
