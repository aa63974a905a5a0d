"""A bundle version's manifest: the checksums of its files, checked once per state of each
file, and the chain of versions a delta version names.

A manifest (:data:`MANIFEST`) lists every file of the version with its SHA-256; it is written
last (:func:`finish_manifest`), so a version without one is incomplete. A delta version's
manifest names its base and the chain of deltas over it (:data:`DELTA_KEY`); loading it needs
every one of them (:func:`delta_chain`), and pruning keeps them (:func:`references`).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dmp_ml.errors import BundleError
from dmp_ml.hashing import sha256_file

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERIFIED = ".verified.json"
"""The stats of a bundle's files when they were last found as its manifest says (not covered
by the checksums, like the manifest; see :func:`verified_manifest`)."""
FORMAT_VERSION = 2
DELTA_KEY = "delta"
"""The manifest key of a delta version: ``{"base": version, "chain": [versions], "bytes": n}``."""


def delta_info(path: Path) -> Mapping[str, Any] | None:
    """The ``delta`` entry of the manifest at ``path``, read without verifying anything; None
    for a full bundle or a manifest that cannot be read (loading it says why)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    info = manifest.get(DELTA_KEY) if isinstance(manifest, dict) else None
    return info if isinstance(info, dict) else None


def _version_name(value: object) -> str:
    """A version named in a delta's manifest: a plain directory name in ``bundles/``."""
    name = str(value)
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise BundleError(f"a delta's manifest names {name!r}, which is not a bundle version")
    return name


def chain_names(info: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The base and the chain a delta's manifest names (checked to be version names)."""
    chain = info.get("chain")
    if not isinstance(chain, list):
        raise BundleError("a delta's manifest has no chain of versions")
    return _version_name(info.get("base")), [_version_name(v) for v in chain]


def references(path: Path) -> set[str]:
    """The versions the bundle at ``path`` needs besides itself: a delta version's base and
    the deltas before it (none for a full bundle, or when its manifest cannot be read)."""
    info = delta_info(path)
    if info is None:
        return set()
    try:
        base, chain = chain_names(info)
    except BundleError:
        return set()
    return {base, *chain} - {path.name}


def _file_stats(path: Path, files: Iterable[str]) -> dict[str, list[int]] | None:
    """Inode, size, modification and status-change times (ns) of each of ``files`` under
    ``path``; None when one is missing. Writing a file, even with its old modification time
    put back, moves its status-change time, which nobody can set."""
    stats = {}
    for name in files:
        try:
            st = (path / name).stat()
        except OSError:
            return None
        stats[name] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return stats


def _bundle_stats(path: Path) -> dict[str, list[int]] | None:
    """:func:`_file_stats` of the manifest and every file it lists; None when one is missing
    or the manifest cannot be read."""
    try:
        files = json.loads((path / MANIFEST).read_bytes()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return None
    return _file_stats(path, [MANIFEST, *files]) if isinstance(files, dict) else None


def _record_verified(path: Path, stats: dict[str, list[int]] | None) -> None:
    """Write :data:`VERIFIED` into the bundle at ``path``: the stats of its files taken before
    they were hashed and found as the manifest says. Best effort (a read-only store stays
    unrecorded and is hashed by every process)."""
    if stats is None:
        return
    tmp = path / f"{VERIFIED}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(stats), encoding="utf-8")
        os.replace(tmp, path / VERIFIED)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        logger.debug("bundle %s: verification not recorded: %s", path, exc)


def verified_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the bundle at ``path``, its files checked against it.

    A bundle's files never change once published, so its files are hashed once (by the writer
    as it publishes, or by the first process to read it) and the inode, size, modification and
    status-change time of each is recorded (:data:`VERIFIED`); a later read hashes again only
    when any of those differ: a file written, truncated, replaced or copied since is hashed
    (and refused when damaged), so a refresh or a worker does not hash the whole base, which
    grows with the population, on each load."""
    stats = _bundle_stats(path)  # stated before hashing: a file changed meanwhile differs
    try:
        recorded = json.loads((path / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if stats is not None and recorded == stats:
        return read_manifest(path, verify=False)
    manifest = read_manifest(path, verify=True)
    _record_verified(path, stats)
    return manifest


def delta_chain(path: Path, manifest: Mapping[str, Any]) -> tuple[Path, dict[str, Any], list[Path]]:
    """The base bundle, its verified manifest and the delta directories (oldest first, ``path``
    last) of the bundle at ``path``; ``(path, manifest, [])`` for a full bundle."""
    info = manifest.get(DELTA_KEY)
    if not info:
        return path, dict(manifest), []
    if not isinstance(info, Mapping):
        raise BundleError(f"{path / MANIFEST} is corrupt: {DELTA_KEY} is not a JSON object")
    root = path.resolve().parent
    base_name, names = chain_names(info)
    base = root / base_name
    base_manifest = verified_manifest(base)
    if base_manifest.get(DELTA_KEY):
        raise BundleError(f"{path}: the base {base.name} of a delta is itself a delta")
    chain = [root / v for v in names]
    for link in chain:
        if link.resolve() != path.resolve():
            verified_manifest(link)
    return base, base_manifest, chain


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(VERIFIED)
    }


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read a bundle directory's manifest; with ``verify``, check every file against it."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"{path} is not a complete bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path} is corrupt: not UTF-8 text ({exc.reason})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path} is corrupt: not JSON ({exc})") from exc
    except OSError as exc:
        raise BundleError(f"{manifest_path} cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(
            f"{manifest_path} is corrupt: a JSON object was expected, got {type(manifest).__name__}"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    if verify:
        expected = manifest.get("files", {})
        if not isinstance(expected, dict):
            raise BundleError(f"{manifest_path} is corrupt: files is not a JSON object")
        actual = _checksums(path)
        missing = sorted(set(expected) - set(actual))
        changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
        if missing or changed:
            raise BundleError(
                f"{path} is incomplete or corrupt: missing {missing[:5]}, changed {changed[:5]}"
            )
    return manifest


def finish_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add format version and file checksums to ``manifest`` and write it last."""
    manifest = {**manifest, "format_version": FORMAT_VERSION, "files": _checksums(bundle_dir)}
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    (bundle_dir / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def verify_written(path: Path) -> None:
    """Check a bundle just written at ``path`` against its manifest, hashing every file, and
    record its files' stats (see :func:`verified_manifest`): its readers then hash nothing."""
    stats = _bundle_stats(path)
    read_manifest(path, verify=True)
    _record_verified(path, stats)
