"""The command line as a user drives it: real processes, real files, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dmp_ml.bundle import live_bundle_path

pytestmark = pytest.mark.slow  # the module fixture trains a bundle through the CLI


def dmp_ml(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmp_ml.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    made = dmp_ml("demo-data", root / "demo", "--profiles", "700", "--days", "150", "--seed", "5")
    assert made.returncode == 0, made.stderr
    trained = dmp_ml(
        "train",
        "--events",
        root / "demo" / "events.parquet",
        "--profiles",
        root / "demo" / "profiles.parquet",
        "--consent",
        root / "demo" / "consent.parquet",
        "--as-of",
        "end",
        "--workdir",
        root / "W",
    )
    assert trained.returncode == 0, trained.stderr
    assert "bundle:" in trained.stdout
    return root


def ids_file(path: Path, ids: list[str]) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


def test_score_writes_every_known_id_and_reports_unknown(workdir: Path) -> None:
    features = pd.read_parquet(live_bundle_path(workdir / "W") / "propensity" / "scores.parquet")
    known = features["profile_id"].head(5).tolist()
    ids = ids_file(workdir / "ids.txt", [*known, "no-such-profile"])
    result = dmp_ml("score", "--workdir", workdir / "W", "--ids", ids, "--out", workdir / "s.csv")
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(workdir / "s.csv", dtype={"profile_id": str})
    basis = ["history_days", "events_used", "days_since_last_event"]
    assert list(scores.columns) == ["profile_id", "score", "percentile", *basis]
    assert (scores["events_used"] >= 1).all()
    assert (scores["history_days"] >= scores["days_since_last_event"]).all()
    assert scores["profile_id"].tolist() == known
    assert scores["score"].between(0, 1).all()
    assert "1 unknown ids: no-such-profile" in result.stderr


def test_score_all_profiles_by_default(workdir: Path) -> None:
    result = dmp_ml("score", "--workdir", workdir / "W", "--out", workdir / "all.csv")
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(workdir / "all.csv")
    assert len(scores) > 500
    assert scores["percentile"].max() == pytest.approx(100)


def test_send_time_csv(workdir: Path) -> None:
    result = dmp_ml(
        "send-time",
        "--workdir",
        workdir / "W",
        "--window-start",
        "2026-06-01T00:00:00Z",
        "--quiet-hours",
        "22-7",
        "--out",
        workdir / "st.csv",
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(workdir / "st.csv")
    assert list(frame.columns) == ["profile_id", "send_at", "hour_of_week", "probability", "basis"]
    send_at = pd.to_datetime(frame["send_at"], utc=True)
    start = pd.Timestamp("2026-06-01", tz="UTC")
    assert ((send_at >= start) & (send_at < start + pd.Timedelta(hours=24))).all()
    assert set(frame["basis"]) <= {"profile", "cohort", "global"}


def test_lookalike_csv_and_diagnostics(workdir: Path) -> None:
    scores = pd.read_parquet(live_bundle_path(workdir / "W") / "propensity" / "scores.parquet")
    seeds = ids_file(workdir / "seeds.txt", scores["profile_id"].head(40).tolist())
    result = dmp_ml(
        "lookalike",
        "--workdir",
        workdir / "W",
        "--seeds",
        seeds,
        "--size",
        "25",
        "--out",
        workdir / "aud.csv",
        "--diagnostics",
        workdir / "diag.json",
    )
    assert result.returncode == 0, result.stderr
    audience = pd.read_csv(workdir / "aud.csv")
    assert list(audience.columns) == ["profile_id", "score", "rank"]
    assert len(audience) == 25
    assert not set(audience["profile_id"]) & set(scores["profile_id"].head(40))
    assert "seed too small" in result.stderr
    assert json.loads((workdir / "diag.json").read_text())["seeds_matched"] == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("validate", "--events", "missing.csv"), "missing.csv: file not found"),
        (("score", "--workdir", "nowhere"), "no model bundle in nowhere"),
        (("lookalike", "--workdir", "W", "--seeds", "seeds.txt", "--size", "0"), "size"),
        (("send-time", "--workdir", "W", "--quiet-hours", "late"), "--quiet-hours"),
    ],
)
def test_user_errors_are_one_readable_line(
    workdir: Path, args: tuple[str, ...], message: str
) -> None:
    result = dmp_ml(*args, cwd=workdir)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_train_keeps_the_live_bundle(workdir: Path) -> None:
    before = live_bundle_path(workdir / "W")
    broken = workdir / "broken.csv"
    broken.write_text("when,who\n2026-01-01,x\n")
    result = dmp_ml("train", "--events", broken, "--as-of", "end", "--workdir", workdir / "W")
    assert result.returncode == 2
    assert "missing required column(s)" in result.stderr
    assert live_bundle_path(workdir / "W") == before


def test_validate_reports_counts(workdir: Path) -> None:
    events = workdir / "demo" / "events.parquet"
    result = dmp_ml("validate", "--events", events, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows_read"] == report["rows_loaded"] + report["rows_quarantined"]


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"[]", "a JSON object was expected"), (b"\xff\xfe{", "not UTF-8"), (b"{", "not JSON")],
)
def test_a_corrupt_manifest_is_one_line_and_exit_2(
    workdir: Path, tmp_path: Path, content: bytes, words: str
) -> None:
    import shutil

    broken = tmp_path / "W"
    shutil.copytree(workdir / "W", broken, symlinks=True)
    (live_bundle_path(broken) / "manifest.json").write_bytes(content)
    for args in (("score", "--workdir", broken), ("serve", "--workdir", broken)):
        result = dmp_ml(*args)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "manifest.json" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_hostile_ids_and_numbers_are_one_line_and_exit_2(workdir: Path) -> None:
    from dmp_ml.erasure import read_erasure_list

    ids = workdir / "odd-ids.txt"
    ids.write_text("nobody\u2028p000020\n", encoding="utf-8")
    before = read_erasure_list(workdir / "W")
    result = dmp_ml("forget", "--workdir", workdir / "W", "--ids", ids)
    assert result.returncode == 2, result.stderr
    assert "profile_ids[0]" in result.stderr and "U+2028" in result.stderr
    assert "Traceback" not in result.stderr
    assert read_erasure_list(workdir / "W") == before

    rule = workdir / "huge.json"
    rule.write_text('{"feature": "purchase_count_90d", "op": "<", "value": 1' + "0" * 400 + "}")
    result = dmp_ml("segment", "--workdir", workdir / "W", "--rule", rule)
    assert result.returncode == 2, result.stderr
    assert "value" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
