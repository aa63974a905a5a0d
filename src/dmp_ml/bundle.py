"""The model bundle: one versioned, self-contained directory that serving needs.

Layout under a workdir::

    bundles/<version>/manifest.json   versions, as_of, data fingerprint, metrics, run ids, checksums
    bundles/<version>/...             feature table, models, precomputed scores
    bundle -> bundles/<version>       the live pointer, swapped atomically

A bundle is written into a temporary directory, checked, then published by renaming it into
``bundles/`` and atomically replacing the ``bundle`` symlink: a run that fails leaves the previous
bundle live and intact. Loading verifies every file's checksum, so a partial or corrupt bundle is
refused with :class:`~dmp_ml.errors.BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dmp_ml.errors import BundleError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
POINTER = "bundle"
VERSIONS_DIR = "bundles"
KEEP_VERSIONS = 3


def live_bundle_path(workdir: str | Path) -> Path:
    """The directory the ``bundle`` pointer of ``workdir`` names (resolved)."""
    pointer = Path(workdir) / POINTER
    if not pointer.exists():
        raise BundleError(f"no model bundle in {workdir}: run `dmp-ml train` first")
    return pointer.resolve()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_of(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read a bundle directory's manifest; with ``verify``, check every file against it."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"{path} is not a complete bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is corrupt: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    if verify:
        expected = manifest.get("files", {})
        actual = _checksums(path)
        missing = sorted(set(expected) - set(actual))
        changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
        if missing or changed:
            raise BundleError(
                f"{path} is incomplete or corrupt: missing {missing[:5]}, changed {changed[:5]}"
            )
    return manifest


@contextmanager
def write_bundle(workdir: str | Path, version: str) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success publish it as the live bundle.

    The caller writes its files and a ``manifest`` dict into ``<tmp>/manifest.json`` via
    :func:`finish_manifest` before leaving the block. On any exception the temporary directory
    is removed and the live bundle is untouched.
    """
    workdir = Path(workdir)
    versions = workdir / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        read_manifest(tmp, verify=True)
        final = versions / version
        if final.exists():
            raise BundleError(f"bundle version {version} already exists in {versions}")
        os.replace(tmp, final)
        _point_to(workdir, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(versions, keep=KEEP_VERSIONS, live=final)
    logger.info("published bundle %s", final)


def finish_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add format version and file checksums to ``manifest`` and write it last."""
    manifest = {**manifest, "format_version": FORMAT_VERSION, "files": _checksums(bundle_dir)}
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    (bundle_dir / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def _point_to(workdir: Path, target: Path) -> None:
    pointer = workdir / POINTER
    if pointer.exists() and not pointer.is_symlink():
        raise BundleError(f"{pointer} exists and is not a bundle pointer; move it away")
    tmp_link = workdir / f".{POINTER}-{uuid.uuid4().hex[:8]}"
    os.symlink(Path(VERSIONS_DIR) / target.name, tmp_link)
    os.replace(tmp_link, pointer)


def _prune(versions: Path, keep: int, live: Path) -> None:
    done = sorted(
        (p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for old in done[:-keep]:
        if old != live:
            shutil.rmtree(old, ignore_errors=True)
