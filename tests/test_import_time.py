"""Import cost: no module reads the settings when it is imported (a broken configuration in
the environment must not break ``import``), ``dmp-ml --help`` imports no heavy library, and a
command imports and loads only what it answers from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from dmp_ml.bundle import load_bundle
from dmp_ml.models import REGISTRY

CHECK = """
import importlib, pkgutil
import dmp_ml
walk = pkgutil.walk_packages(dmp_ml.__path__, "dmp_ml.")
names = [m.name for m in walk if not m.name.endswith("__main__")]  # __main__ runs the CLI
for name in names:
    importlib.import_module(name)
import dmp_ml.service as service
try:
    service.DmpMlService
except Exception as exc:
    print("lookup:", type(exc).__name__)
print("imported", len(names))
"""


@pytest.mark.slow  # imports every module in a fresh interpreter
def test_importing_every_module_reads_no_settings() -> None:
    env = {**os.environ, "DMP_ML_SERVICE__WORKERS": "not-a-number"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split()
    assert int(lines[-1]) > 20  # every module of the package was imported
    # the service itself is built (and its settings loaded) only when it is looked up
    assert "lookup: ConfigError" in result.stdout, result.stdout


# what a command must not import unless it needs it (pydantic is not here: typer parses with it)
HEAVY = (
    "numpy",
    "pandas",
    "pyarrow",
    "yaml",
    "scipy",
    "sklearn",
    "lightgbm",
    "faiss",
    "mlflow",
    "bentoml",
    "matplotlib",
    "dask",
)

RUN_CLI = """
import json, sys
from dmp_ml.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def run_cli(*args: str | Path) -> tuple[int, list[str], str]:
    """``dmp-ml ARGS`` in a fresh interpreter: exit code, heavy libraries imported, output."""
    script = f"HEAVY = {HEAVY!r}\n{RUN_CLI}"
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], report["loaded"], result.stdout + result.stderr


def test_help_imports_no_heavy_library() -> None:
    code, loaded, output = run_cli("--help")
    assert code == 0, output
    assert "score" in output and "send-time" in output  # the real help, every command listed
    assert loaded == [], f"dmp-ml --help imported {loaded}"


def test_command_help_imports_no_heavy_library() -> None:
    code, loaded, output = run_cli("lookalike", "--help")
    assert code == 0, output
    assert "--seeds" in output
    assert loaded == [], f"dmp-ml lookalike --help imported {loaded}"


def test_score_answers_from_the_scores_without_loading_any_model(
    trained_workdir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    code, loaded, output = run_cli("score", "--workdir", trained_workdir, "--out", out)
    assert code == 0, output
    for library in ("lightgbm", "faiss", "sklearn", "mlflow", "bentoml", "matplotlib"):
        assert library not in loaded, f"dmp-ml score imported {library}"
    written = pd.read_csv(out, dtype={"profile_id": str})
    expected = load_bundle(trained_workdir).score().frame  # every model loaded up front
    assert written["profile_id"].tolist() == expected["profile_id"].tolist()
    assert np.allclose(written["score"], expected["score"])
    assert written["events_used"].tolist() == expected["events_used"].tolist()


def test_a_lazy_bundle_answers_as_the_loaded_one(trained_workdir: Path) -> None:
    eager = load_bundle(trained_workdir)
    lazy = load_bundle(trained_workdir, lazy=True)
    assert list(lazy.models) == list(eager.models) == list(REGISTRY)
    ids = eager.features.frame.index[:40].tolist()
    assert_frame_equal(lazy.score(ids).frame, eager.score(ids).frame)
    window = {"window_hours": 24}  # from the bundle's as_of
    assert_frame_equal(lazy.send_time(ids, **window).frame, eager.send_time(ids, **window).frame)
    seeds = ids[:30]
    assert_frame_equal(lazy.lookalike(seeds, size=50).frame, eager.lookalike(seeds, size=50).frame)
    assert lazy.models["send_time"] is lazy.models["send_time"]  # loaded once, then kept


# what training needs and serving a loaded bundle does not
TRAINING_ONLY = ("sklearn", "mlflow", "matplotlib", "bentoml", "dask")


def test_send_time_answers_without_scikit_learn(trained_workdir: Path, tmp_path: Path) -> None:
    ids = load_bundle(trained_workdir).features.frame.index[:25].tolist()
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "send_times.csv"
    args = ("send-time", "--workdir", trained_workdir, "--ids", tmp_path / "ids.txt")
    code, loaded, output = run_cli(*args, "--out", out)
    assert code == 0, output
    for library in ("lightgbm", "faiss", *TRAINING_ONLY):
        assert library not in loaded, f"dmp-ml send-time imported {library}"
    written = pd.read_csv(out, dtype={"profile_id": str})
    expected = load_bundle(trained_workdir).send_time(ids, window_hours=24).frame
    assert written["profile_id"].tolist() == expected["profile_id"].tolist()
    assert written["hour_of_week"].tolist() == expected["hour_of_week"].tolist()
    assert np.allclose(written["probability"], expected["probability"])


def test_a_small_seed_expands_without_lightgbm_or_scikit_learn(
    trained_workdir: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(trained_workdir)
    seeds = bundle.features.frame.index[:20].tolist()  # below min_seed: similarity alone
    assert len(seeds) < bundle.lookalike_model.settings.min_seed
    (tmp_path / "seeds.txt").write_text("\n".join(seeds) + "\n")
    out = tmp_path / "audience.csv"
    args = ("lookalike", "--workdir", trained_workdir, "--seeds", tmp_path / "seeds.txt")
    code, loaded, output = run_cli(*args, "--size", "40", "--out", out)
    assert code == 0, output
    assert "faiss" in loaded  # the index answered
    for library in ("lightgbm", *TRAINING_ONLY):
        assert library not in loaded, f"dmp-ml lookalike imported {library}"
    written = pd.read_csv(out, dtype={"profile_id": str})
    expected = bundle.lookalike(seeds, size=40).frame
    assert written["profile_id"].tolist() == expected["profile_id"].tolist()
    assert np.allclose(written["score"], expected["score"])


def test_a_large_seed_fits_its_classifiers_without_importing_lightgbm_or_scikit_learn(
    trained_workdir: Path, tmp_path: Path
) -> None:
    # the guard fits a PU classifier per held-out part; lib_lightgbm fits it, not the package
    # (whose import brings scikit-learn and scipy.stats: about a second of a fresh process)
    bundle = load_bundle(trained_workdir)
    seeds = bundle.features.frame.index[::3][:120].tolist()
    assert len(seeds) >= bundle.lookalike_model.settings.min_seed
    (tmp_path / "seeds.txt").write_text("\n".join(seeds) + "\n")
    out, report = tmp_path / "audience.csv", tmp_path / "diagnostics.json"
    args = ("lookalike", "--workdir", trained_workdir, "--seeds", tmp_path / "seeds.txt")
    code, loaded, output = run_cli(*args, "--size", "60", "--out", out, "--diagnostics", report)
    assert code == 0, output
    for library in ("lightgbm", *TRAINING_ONLY):
        assert library not in loaded, f"dmp-ml lookalike imported {library}"
    expected = bundle.lookalike(seeds, size=60)
    written = json.loads(report.read_text())
    assert "classifier" in written["candidate_recall"]  # the classifiers were fitted
    assert written["candidate_recall"] == expected.diagnostics["candidate_recall"]
    assert written["method"] == expected.diagnostics["method"]
    audience = pd.read_csv(out, dtype={"profile_id": str})
    assert audience["profile_id"].tolist() == expected.frame["profile_id"].tolist()
    assert np.allclose(audience["score"], expected.frame["score"])
