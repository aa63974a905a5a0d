"""Bundle publishing: atomic, verified, and a failed run never damages the live bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import dmp_ml.bundle
import dmp_ml.manifest
from dmp_ml.bundle import (
    finish_manifest,
    live_bundle_path,
    read_manifest,
    verified_manifest,
    write_bundle,
)
from dmp_ml.errors import BundleError


def publish(workdir: Path, version: str, payload: str) -> Path:
    with write_bundle(workdir, version) as tmp:
        (tmp / "model.txt").write_text(payload)
        finish_manifest(tmp, {"bundle_version": version})
    return live_bundle_path(workdir)


def test_publish_swaps_the_pointer(tmp_path: Path) -> None:
    first = publish(tmp_path, "v1", "one")
    assert first.name == "v1"
    assert read_manifest(first)["bundle_version"] == "v1"
    second = publish(tmp_path, "v2", "two")
    assert second.name == "v2"
    assert (tmp_path / "bundle").is_symlink()


def test_failed_run_keeps_the_previous_bundle(tmp_path: Path) -> None:
    publish(tmp_path, "v1", "one")
    with pytest.raises(RuntimeError), write_bundle(tmp_path, "v2") as tmp:
        (tmp / "model.txt").write_text("half written")
        raise RuntimeError("training blew up")
    live = live_bundle_path(tmp_path)
    assert live.name == "v1"
    assert (live / "model.txt").read_text() == "one"
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "bundles").iterdir())


def test_bundle_without_manifest_is_not_published(tmp_path: Path) -> None:
    publish(tmp_path, "v1", "one")
    with (
        pytest.raises(BundleError, match="manifest.json is missing"),
        write_bundle(tmp_path, "v2") as tmp,
    ):
        (tmp / "model.txt").write_text("no manifest")
    assert live_bundle_path(tmp_path).name == "v1"


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    live = publish(tmp_path, "v1", "one")
    (live / "model.txt").write_text("tampered")
    with pytest.raises(BundleError, match="incomplete or corrupt"):
        read_manifest(live)
    (live / "model.txt").unlink()
    with pytest.raises(BundleError, match="missing"):
        read_manifest(live)


def test_a_published_bundle_is_not_hashed_again_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer hashes a bundle as it publishes and records its files' stats, so a reader
    (a refresh, a worker) does not hash the whole base again, whose size grows with the
    population; a file written since, even same-sized with its modification time put back,
    is hashed again and refused."""
    live = publish(tmp_path, "v1", "one")
    hashed: list[str] = []
    real = dmp_ml.manifest.sha256_file
    monkeypatch.setattr(
        dmp_ml.manifest, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p)
    )
    assert verified_manifest(live)["bundle_version"] == "v1"
    assert hashed == []
    target = live / "model.txt"
    before = target.stat()
    target.write_text("two")  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(BundleError, match="incomplete or corrupt"):
        verified_manifest(live)
    assert hashed == ["model.txt"]
    target.write_text("one")
    assert verified_manifest(live)["bundle_version"] == "v1"  # hashed, found good, recorded
    assert verified_manifest(live)["bundle_version"] == "v1"
    assert hashed == ["model.txt", "model.txt"]


def test_missing_bundle_has_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="run `dmp-ml train` first"):
        live_bundle_path(tmp_path)


def test_old_versions_are_pruned(tmp_path: Path) -> None:
    for i in range(5):
        publish(tmp_path, f"v{i}", str(i))
    kept = sorted(p.name for p in (tmp_path / "bundles").iterdir())
    assert kept == ["v2", "v3", "v4"]
