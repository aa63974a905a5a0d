"""What a user sees around the commands: one-line errors with exit code 2, --version, -q, -v,
progress on a terminal, the --events flag everywhere.

Every case runs the real ``dmp-ml`` entry point in a subprocess; none needs a trained bundle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import dmp_ml


def dmp_ml_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    code = "from dmp_ml.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_version() -> None:
    result = dmp_ml_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dmp-ml {dmp_ml.__version__}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("bogus",), "No such command 'bogus'"),
        (("train", "--events", "x.csv"), "Missing option '--as-of'"),
        (("demo-data", "out", "--profiles", "3"), "'--profiles'"),
        (("send-time", "--window-hours", "abc"), "'--window-hours'"),
        (("score", "--no-such-flag"), "No such option: --no-such-flag"),
        (("score", "--ids"), "'--ids' requires an argument"),
        (("validate",), "--events"),
        (("validate", "a.csv", "--events", "b.csv"), "--events"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    line = one_error_line(dmp_ml_cli(*args, cwd=tmp_path))
    assert expected in line


def test_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    line = one_error_line(dmp_ml_cli("validate", "--events", tmp_path / "nope.csv"))
    assert "nope.csv" in line


def test_os_error_is_one_line_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    target = blocker / "demo"
    line = one_error_line(dmp_ml_cli("-q", "demo-data", target, "--profiles", "10", "--days", "14"))
    assert str(target) in line
    assert "Not a directory" in line


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    args = ("demo-data", blocker / "demo", "--profiles", "10", "--days", "14")
    result = dmp_ml_cli("-v", *args)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_quiet_prints_the_answer_without_log_lines(tmp_path: Path) -> None:
    args = ("demo-data", tmp_path / "d", "--profiles", "10", "--days", "14")
    quiet = dmp_ml_cli("-q", *args)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert "demo world: 10 profiles" in quiet.stdout
    loud = dmp_ml_cli(*args)
    assert loud.returncode == 0, loud.stderr
    assert "demo-data: step 1/2: generating the world" in loud.stderr  # not a terminal: log lines
    assert "INFO" in loud.stderr


def test_progress_bar_on_a_terminal_log_lines_otherwise(tmp_path: Path) -> None:
    args = ("demo-data", tmp_path / "d", "--profiles", "300", "--days", "30")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    terminal = dmp_ml_cli(*args, env={**env, "FORCE_COLOR": "1"})  # rich: a terminal
    assert terminal.returncode == 0, terminal.stderr
    assert "writing Parquet files" in terminal.stderr
    assert "eta" in terminal.stderr and "━" in terminal.stderr  # the bar and its ETA column
    assert "step 1/2" not in terminal.stderr
    piped = dmp_ml_cli(*args, env=env)
    assert piped.returncode == 0, piped.stderr
    assert "demo-data: step 2/2: writing Parquet files" in piped.stderr
    assert "━" not in piped.stderr
    assert "demo world: 300 profiles" in piped.stdout


def test_events_flag_everywhere_old_positional_form_still_works(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "event_time": ["2026-01-01T10:00:00Z", "not a time"],
            "cookie_id": ["c1", "c2"],
            "profile_id": ["p1", "p2"],
            "event_type": ["purchase", "purchase"],
            "source": ["first_party", "first_party"],
            "value": [10.0, 5.0],
        }
    )
    events = tmp_path / "events.csv"
    frame.to_csv(events, index=False)
    new = dmp_ml_cli("validate", "--events", events, "--json")
    old = dmp_ml_cli("validate", events, "--json")
    assert new.returncode == 0, new.stderr
    assert old.returncode == 0, old.stderr
    assert new.stdout == old.stdout
    assert '"rows_quarantined": 1' in new.stdout
    assert "deprecated" in old.stderr
    assert "deprecated" not in new.stderr


def test_help_does_not_import_the_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from dmp_ml.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = [m for m in ('pandas', 'numpy', 'mlflow', 'bentoml', 'lightgbm', 'faiss')\n"
        "         if m in sys.modules]\n"
        "print(','.join(heavy), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert result.stderr.strip() == ""
