"""load_inputs(): the events, profiles and consent of a run, loaded side by side, each timed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dmp_ml.contract import load_consent, load_events, load_profiles
from dmp_ml.demo import generate_demo_world, write_demo_world
from dmp_ml.errors import DataContractError
from dmp_ml.inputs import load_inputs


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return write_demo_world(generate_demo_world(n_profiles=80, days=30, seed=4), root / "demo")


def test_each_file_loads_as_its_own_loader_loads_it_and_says_how_long_it_took(files) -> None:
    inputs = load_inputs(files["events"], files["profiles"], files["consent"], dictionaries=True)
    alone = {
        "events": load_events(files["events"], dictionaries=True),
        "profiles": load_profiles(files["profiles"]),
        "consent": load_consent(files["consent"]),
    }
    for kind, expected in alone.items():
        loaded = getattr(inputs, kind)
        pd.testing.assert_frame_equal(loaded.frame, expected.frame)
        assert loaded.report.rows_read == expected.report.rows_read
    assert inputs.events.encoded.keys() == alone["events"].encoded.keys()
    assert list(inputs.seconds) == ["events", "profiles", "consent"]
    assert all(seconds > 0 for seconds in inputs.seconds.values())


def test_files_not_given_are_not_loaded(files) -> None:
    inputs = load_inputs(files["events"])
    assert inputs.profiles is None and inputs.consent is None
    assert list(inputs.seconds) == ["events"]


def test_a_broken_profiles_file_fails_the_load(files, tmp_path: Path) -> None:
    broken = tmp_path / "profiles.csv"
    broken.write_text("name,age\nann,3\n", encoding="utf-8")
    with pytest.raises(DataContractError, match="profile_id"):
        load_inputs(files["events"], broken)
