"""The affinity, retarget and campaign commands, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from dmp_ml.bundle import load_bundle
from dmp_ml.campaigns import campaign_report
from dmp_ml.retargeting import retarget

CopyWorkdir = Callable[[Path, Path], Path]


def dmp_ml(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmp_ml.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def workdir(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return copy_workdir(trained_workdir, tmp_path_factory.mktemp("cli-display") / "w")


def test_affinity_per_profile_and_per_segment(workdir: Path, tmp_path: Path) -> None:
    ids = load_bundle(workdir).features.frame.index[:5].tolist()
    (tmp_path / "ids.txt").write_text("\n".join([*ids, "nobody"]) + "\n")
    done = dmp_ml("affinity", "--workdir", workdir, "--ids", tmp_path / "ids.txt", "--out",
                  tmp_path / "a.csv")  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "a.csv")
    assert table["profile_id"].tolist() == ids
    assert "1 unknown ids: nobody" in done.stderr
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"retarget": "viewed_not_bought", "params": {"days": 30}}))
    done = dmp_ml("affinity", "--workdir", workdir, "--rule", rule, "--out", tmp_path / "s.json")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["size"] > 0 and summary["top_categories"] and summary["best_hours"]


def test_retarget_exports_the_template_audience(workdir: Path, tmp_path: Path) -> None:
    done = dmp_ml("retarget", "cart_abandoners", "--workdir", workdir, "--param", "days=14",
                  "--rank-by-propensity", "--out", tmp_path / "r.csv", "--affinity")  # fmt: skip
    assert done.returncode == 0, done.stderr
    exported = pd.read_csv(tmp_path / "r.csv")
    expected = retarget(
        load_bundle(workdir), "cart_abandoners", {"days": 14}, rank_by_propensity=True
    )
    assert exported["profile_id"].tolist() == expected["profile_id"].tolist()
    assert {"top_categories", "preferred_channel", "rank"} <= set(exported.columns)
    bad = dmp_ml("retarget", "cart_abandoners", "--workdir", workdir, "--param", "days=0")
    assert bad.returncode == 2 and "params.days" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_campaign_create_export_and_report(workdir: Path, tmp_path: Path) -> None:
    launch = (load_bundle(workdir).as_of - pd.Timedelta(days=30)).isoformat()
    rule = '{"feature": "event_count_90d", "op": ">=", "value": 1}'
    done = dmp_ml("campaign", "create", "spring", "--workdir", workdir, "--audience", rule,
                  "--holdout", "0.2", "--launch", launch, "--out", tmp_path / "t.csv")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = dmp_ml("campaign", "report", "spring", "--workdir", workdir, "--json")
    assert report.returncode == 0, report.stderr
    readout = json.loads(report.stdout)
    assert readout == campaign_report(workdir, "spring", bundle=load_bundle(workdir))
    treated = set(pd.read_csv(tmp_path / "t.csv")["profile_id"])
    assert len(treated) == readout["treated"]["profiles"]
    table = dmp_ml("campaign", "report", "spring", "--workdir", workdir)
    assert "absolute lift" in table.stdout and "minimum detectable effect" in table.stdout
    missing = dmp_ml("campaign", "report", "sprng", "--workdir", workdir)
    assert missing.returncode == 2 and "did you mean 'spring'" in missing.stderr
