"""Settings as an operator meets them: which source wins, and what a broken file says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmp_ml.errors import ConfigError
from dmp_ml.settings import DEFAULT_CONFIG, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DMP_ML_ variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("DMP_ML_"):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_file_the_packaged_default_yaml_is_the_configuration() -> None:
    packaged = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    settings = load_settings()
    assert settings.config is None
    assert settings.propensity.horizon_days == packaged["propensity"]["horizon_days"]
    assert settings.features.windows_days == packaged["features"]["windows_days"]
    assert settings.send_time.sharpness_candidates == packaged["send_time"]["sharpness_candidates"]


def test_a_config_file_changes_only_what_it_names(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.yaml", "propensity:\n  horizon_days: 45\nseed: 7\n")
    settings = load_settings(path)
    assert settings.config == path
    assert settings.propensity.horizon_days == 45
    assert settings.seed == 7
    default = load_settings()
    # the rest of the section, and the other sections, stay as packaged
    assert settings.propensity.n_snapshots == default.propensity.n_snapshots
    assert settings.propensity.target_event == default.propensity.target_event
    assert settings.features == default.features


def test_environment_beats_the_file_and_arguments_beat_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "mine.yaml", "propensity:\n  horizon_days: 45\n  n_snapshots: 3\n")
    monkeypatch.setenv("DMP_ML_PROPENSITY__HORIZON_DAYS", "60")
    from_env = load_settings(path)
    assert from_env.propensity.horizon_days == 60
    assert from_env.propensity.n_snapshots == 3  # the file's other key still counts
    from_args = load_settings(path, propensity={"horizon_days": 14})
    assert from_args.propensity.horizon_days == 14
    assert from_args.propensity.n_snapshots == 3


def test_dmp_ml_config_names_the_file_and_an_explicit_file_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write(tmp_path / "env.yaml", "seed: 11\n")
    cli_file = write(tmp_path / "cli.yaml", "seed: 22\n")
    monkeypatch.setenv("DMP_ML_CONFIG", str(env_file))
    assert load_settings().seed == 11
    assert Settings().seed == 11
    assert load_settings(cli_file).seed == 22


def test_loading_settings_leaves_the_environment_alone(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.yaml", "seed: 3\n")
    before = dict(os.environ)
    load_settings(path)
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "missing.yaml")
    assert dict(os.environ) == before


def test_a_file_that_is_not_yaml_is_one_error_naming_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "propensity:\n  horizon_days: [30\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    assert "not valid YAML" in message
    assert "line " in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- 1\n- 2\n", "must hold a mapping"),
        ("config: other.yaml\n", "'config' names a file"),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused_by_name(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "odd.yaml", text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load_settings(missing)
    monkeypatch.setenv("DMP_ML_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("propensty:\n  horizon_days: 45\n", "propensty"),  # a misspelt section
        ("propensity:\n  horizon_dayz: 45\n", "propensity.horizon_dayz"),  # a misspelt key
    ],
)
def test_unknown_keys_are_rejected_not_ignored(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path / "typo.yaml", text)
    with pytest.raises(ConfigError, match=rf"invalid setting {where}: Extra inputs"):
        load_settings(path)


def test_an_unknown_key_in_the_environment_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMP_ML_PROPENSITY__HORIZON_DAYZ", "45")
    with pytest.raises(ConfigError, match="propensity.horizon_dayz"):
        load_settings()


def test_an_invalid_value_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "bad.yaml", "propensity:\n  horizon_days: -5\n")
    with pytest.raises(ConfigError, match="invalid setting propensity.horizon_days"):
        load_settings(path)
    monkeypatch.setenv("DMP_ML_FEATURES__ENGINE", "spark")
    with pytest.raises(ConfigError, match="invalid setting features.engine"):
        load_settings()


def test_candidate_lists_must_not_be_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.yaml", "send_time:\n  bandwidth_candidates: []\n")
    with pytest.raises(ConfigError, match="send_time.bandwidth_candidates"):
        load_settings(path)


def test_the_cli_reports_a_broken_config_file_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "seed: [1\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DMP_ML_")}
    events = write(tmp_path / "events.csv", "event_time,cookie_id,event_type\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmp_ml.cli",
            "features",
            "--events",
            str(events),
            "--as-of",
            "2026-01-01",
            "--out",
            str(tmp_path / "f.parquet"),
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr + run.stdout
    assert f"config file {path} is not valid YAML" in " ".join((run.stderr + run.stdout).split())
