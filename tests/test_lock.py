"""requirements.lock is the one list of versions `make install` installs; it covers pyproject."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+))?$"
)


def locked() -> dict[str, list[tuple[str, Marker | None]]]:
    """Package name -> [(version, marker)] from the lock (a package may differ by marker)."""
    pins: dict[str, list[tuple[str, Marker | None]]] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            marker = Marker(match["marker"]) if match["marker"] else None
            pins.setdefault(canonicalize_name(match["name"]), []).append((match["version"], marker))
    return pins


def declared() -> list[Requirement]:
    """Every requirement of pyproject: dependencies and each extra, minus the self-reference."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts.extend(extra)
    reqs = [Requirement(text) for text in texts]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def applies(marker: Marker | None) -> bool:
    return marker is None or marker.evaluate()


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_every_declared_dependency_is_pinned_within_its_range(requirement: Requirement) -> None:
    pins = locked().get(canonicalize_name(requirement.name))
    assert pins, (
        f"{requirement.name} is declared in pyproject.toml but not in {LOCK.name}: make lock"
    )
    versions = [version for version, marker in pins if applies(marker)]
    assert versions, f"{requirement.name}: no pin applies to this platform"
    for version in versions:
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement.name}=={version} in {LOCK.name} is outside {requirement.specifier}"
        )


def test_lock_names_no_index_or_local_path() -> None:
    text = LOCK.read_text(encoding="utf-8")
    for needle in ("--index-url", "--extra-index-url", "--find-links", "file://", "/opt/", "-e "):
        assert needle not in text, f"{LOCK.name} holds {needle!r}: it must install anywhere"


def test_installed_packages_match_the_lock() -> None:
    """`make install` installs with the lock as constraints: what is installed is what is locked."""
    drift = []
    for name, pins in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment does not install (notebook)
        wanted = [version for version, marker in pins if applies(marker)]
        if wanted and installed not in wanted:
            drift.append(f"{name} {installed} installed, {wanted[0]} locked")
    assert not drift, "; ".join(drift)
