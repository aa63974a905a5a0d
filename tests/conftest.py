"""Shared fixtures: one small demo world, trained once per session by the real pipeline.

``trained_workdir`` is the workdir of one :func:`dmp_ml.pipeline.train` run on ``demo_world``
(refresh batches merged, contacts and consent state written, training events recorded,
erasure list applied: everything ``train`` does). It is shared by every test module that
asks for it, so it must never be written to: a test that refreshes, forgets, saves segments
or edits the erasure list works on ``copy_workdir(trained_workdir, tmp_path / "w")``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Promoted models (and servers started by the tests) use a private BentoML store, never the
# user's ~/bentoml. BentoML reads this on first use, so it is set before anything touches it.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="dmp-ml-test-bentoml-")

from synthetic import ONE_SEND_TIME_CANDIDATE

from dmp_ml.demo import DemoWorld, generate_demo_world
from dmp_ml.pipeline import train
from dmp_ml.settings import Settings

N_PROFILES, DAYS, SEED = 800, 90, 3

# Fixtures that train a bundle or start a server: every test using one is marked ``slow``, so
# ``pytest -m "not slow"`` is the quick loop. Tests that train on their own carry the mark.
SLOW_FIXTURES = frozenset({"trained_workdir", "trained", "server", "retail_bundle", "runs"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


CopyWorkdir = Callable[[Path, Path], Path]


def _copy_workdir(src: Path, dst: Path) -> Path:
    """A private copy of a workdir; the ``bundle`` pointer stays a relative symlink."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def copy_workdir() -> CopyWorkdir:
    """``copy_workdir(src, dst) -> dst``: copy a workdir before changing anything in it."""
    return _copy_workdir


@pytest.fixture(scope="session")
def demo_world() -> DemoWorld:
    """A small demo world (800 profiles, 90 days) with enough buyers for every model."""
    return generate_demo_world(n_profiles=N_PROFILES, days=DAYS, seed=SEED)


@pytest.fixture(scope="session")
def train_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Fast training settings logging to a session-private MLflow SQLite store.

    One candidate per send-time grid and a small propensity model keep a train to seconds;
    ``train`` fills in the workdir it is given. The MLflow store lives outside every workdir,
    so copies of a workdir never share (or write into) another one's tracking artefacts.
    """
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    fast = {"n_snapshots": 2, "n_estimators": 100, "min_positives": 10, "min_negatives": 10}
    return Settings(
        mlflow_tracking_uri=f"sqlite:///{db}",
        send_time=ONE_SEND_TIME_CANDIDATE,
        propensity={**fast, "calibration_folds": 2},
    )


def _snapshot(workdir: Path) -> dict[str, tuple[int, int] | str]:
    """Every entry under ``workdir``: (size, mtime) of files, the target of symlinks."""
    out: dict[str, tuple[int, int] | str] = {}
    for path in sorted(workdir.rglob("*")):
        key = str(path.relative_to(workdir))
        if path.is_symlink():
            out[key] = str(path.readlink())
        elif path.is_file():
            stat = path.stat()
            out[key] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="session")
def trained_workdir(
    tmp_path_factory: pytest.TempPathFactory, demo_world: DemoWorld, train_settings: Settings
) -> Iterator[Path]:
    """A workdir with a bundle published by ``train`` on ``demo_world``. Read-only: copy it.

    At the end of the session the fixture checks that no test wrote into it.
    """
    workdir = tmp_path_factory.mktemp("trained") / "w"
    result = train(
        demo_world.events,
        "end",
        workdir,
        profiles=demo_world.profiles,
        consent=demo_world.consent,
        settings=train_settings,
    )
    skipped = {name: s.reason for name, s in result.steps.items() if s.status != "trained"}
    assert not skipped, f"the shared demo world should train every step: {skipped}"
    before = _snapshot(workdir)
    yield workdir
    changed = sorted(set(before.items()) ^ set(_snapshot(workdir).items()))
    assert not changed, f"a test wrote into the shared trained_workdir (copy it first): {changed}"
