"""CSV files dmp-ml writes never carry a formula a spreadsheet would run (issue 17).

Profile ids such as ``=HYPERLINK(...)`` arrive with fresh events; ``dmp-ml score``,
``send-time`` and ``export`` then write them. Each such cell is prefixed with a single quote
(OWASP), numbers stay numbers, and Parquet keeps the ids unchanged.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.bundle import load_bundle
from dmp_ml.csv_output import write_csv
from dmp_ml.refresh import apply_events

HOSTILE = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(1+1)", "\tcmd", "\rcmd"]


def test_text_cells_are_escaped_numbers_and_times_are_not(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "profile_id": pd.array([*HOSTILE, "p1", None], dtype="string"),
            "score": [-0.5, -2.0, 3.0, -4.25, 5.0, 6.0, 7.0, np.nan],
            "rank": np.arange(8),
            "send_at": pd.Timestamp("2026-06-08T10:00:00Z"),
            "mixed": ["-x", -3, "ok", None, "=1", 2.5, "a", "b"],
            "=header": ["a"] * 8,
        }
    )
    write_csv(frame, tmp_path / "out.csv")
    with (tmp_path / "out.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["profile_id", "score", "rank", "send_at", "mixed", "'=header"]
    cells = [r[0] for r in rows[1:]]
    assert cells == [f"'{v}" for v in HOSTILE] + ["p1", ""]
    assert [r[1] for r in rows[1:]] == ["-0.5", "-2.0", "3.0", "-4.25", "5.0", "6.0", "7.0", ""]
    assert [r[4] for r in rows[1:]] == ["'-x", "-3", "ok", "", "'=1", "2.5", "a", "b"]
    assert frame["profile_id"].iloc[0] == HOSTILE[0]  # the caller's frame is untouched
    # read back by a CSV reader, the numeric columns are numbers again
    back = pd.read_csv(tmp_path / "out.csv")
    assert back["score"].dtype == np.float64 and back["rank"].dtype == np.int64
    assert back["score"].iloc[:4].tolist() == [-0.5, -2.0, 3.0, -4.25]


def dmp_ml(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmp_ml.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def hostile_workdir(
    trained_workdir: Path,
    copy_workdir: Callable[[Path, Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A copy of the shared workdir after a batch of events from profiles with hostile ids."""
    workdir = copy_workdir(trained_workdir, tmp_path_factory.mktemp("csv") / "w")
    as_of = load_bundle(workdir).as_of
    events = [
        {
            "event_time": (as_of - pd.Timedelta(hours=h + 1)).isoformat(),
            "profile_id": pid,
            "event_type": kind,
            "value": 12.5 if kind == "purchase" else None,
        }
        for pid in HOSTILE[:4]
        for h, kind in enumerate(["page_view", "product_view", "purchase"])
    ]
    report = apply_events(workdir, events)
    assert report.rows_accepted == len(events), report
    assert report.profiles_created == 4
    return workdir


def _cells(path: Path, column: str) -> list[str]:
    with path.open(newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def test_score_send_time_and_export_csv_escape_hostile_ids(
    hostile_workdir: Path, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(HOSTILE[:4]) + "\n")
    escaped = sorted(f"'{v}" for v in HOSTILE[:4])

    scored = dmp_ml(
        "score", "--workdir", hostile_workdir, "--ids", ids, "--out", tmp_path / "s.csv"
    )
    assert scored.returncode == 0, scored.stderr
    assert sorted(_cells(tmp_path / "s.csv", "profile_id")) == escaped
    assert all(0 <= float(s) <= 1 for s in _cells(tmp_path / "s.csv", "score"))

    timed = dmp_ml(
        "send-time", "--workdir", hostile_workdir, "--ids", ids, "--out", tmp_path / "t.csv"
    )
    assert timed.returncode == 0, timed.stderr
    assert sorted(_cells(tmp_path / "t.csv", "profile_id")) == escaped

    exported = dmp_ml(
        "export", "--workdir", hostile_workdir, "--ids", ids, "--out", tmp_path / "e.csv"
    )
    assert exported.returncode == 0, exported.stderr
    assert sorted(_cells(tmp_path / "e.csv", "profile_id")) == escaped

    # Parquet keeps the ids as they are
    parquet = dmp_ml(
        "export", "--workdir", hostile_workdir, "--ids", ids, "--out", tmp_path / "e.parquet"
    )
    assert parquet.returncode == 0, parquet.stderr
    ids_back = pd.read_parquet(tmp_path / "e.parquet")["profile_id"].astype(str)
    assert sorted(ids_back) == sorted(HOSTILE[:4])
