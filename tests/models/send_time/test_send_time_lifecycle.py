"""Send-time model as a bundle model: settings, protocol, update (refresh), forget, calibration."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from dmp_ml.models import model_class
from dmp_ml.models.base import BundleModel, ProfileUpdate
from dmp_ml.models.send_time import SendTimeModel
from dmp_ml.models.send_time.curves import fit_calibration
from dmp_ml.settings import Settings

START = pd.Timestamp("2026-01-05", tz="UTC")  # a Monday
AS_OF = START + pd.Timedelta(weeks=6)
ZONE = "America/New_York"


def _events(rows: list[tuple]) -> pd.DataFrame:
    """Resolved events from (utc time, profile_id, event_type) tuples."""
    raw = pd.DataFrame(rows, columns=["event_time", "profile_id", "event_type"])
    return pd.DataFrame(
        {
            "event_time": pd.to_datetime(raw["event_time"], utc=True),
            "profile_id": raw["profile_id"].astype("string"),
            "event_type": raw["event_type"].astype("string"),
            "campaign_id": pd.array([None] * len(raw), dtype="string"),
        }
    )


def _habit(pid: str, local_hour: int, first_day: int, days: int, zone: str = ZONE) -> list[tuple]:
    """A profile browsing daily at ``local_hour`` in ``zone``."""
    rows = []
    for d in range(first_day, first_day + days):
        local = (START + pd.Timedelta(days=d)).tz_convert(zone).normalize()
        t = (local + pd.Timedelta(hours=local_hour, minutes=10)).tz_convert("UTC")
        rows.append((t, pid, "page_view"))
    return rows


@pytest.fixture(scope="module")
def fitted() -> tuple[SendTimeModel, pd.DataFrame, pd.Series]:
    rows = []
    for i in range(24):
        rows += _habit(f"p{i}", (8, 13, 20)[i % 3], 0, 42)
    rows += _habit("mover", 9, 0, 42)
    events = _events(rows)
    zones = pd.Series({f"p{i}": ZONE for i in range(24)} | {"mover": ZONE}, dtype="string")
    model = SendTimeModel(
        prior_strength_candidates=(10.0,),
        cohort_strength_candidates=(300.0,),
        day_pooling_candidates=(0.3,),
        bandwidth_candidates=(1.0,),
        activity_weight_candidates=(1.0,),
        sharpness_candidates=(1.0,),
    ).fit(events, AS_OF, zones)
    return model, events, zones


def test_registered_and_keeps_the_bundle_protocol() -> None:
    assert model_class("send_time") is SendTimeModel
    assert SendTimeModel.name == "send_time"
    assert isinstance(SendTimeModel(), BundleModel)
    model = SendTimeModel.from_settings(Settings(send_time={"n_alternatives": 2}))
    assert model.n_alternatives == 2 and model.get_params()["n_alternatives"] == 2
    with pytest.raises(ValueError, match="nope"):
        model.set_params(nope=1)


def test_load_takes_n_threads(fitted, tmp_path) -> None:
    model, _, _ = fitted
    loaded = SendTimeModel.load(model.save(tmp_path / "send_time"), n_threads=1)
    np.testing.assert_array_equal(loaded.local_curve_, model.local_curve_)


def test_forget_drops_every_trace_and_counts(fitted) -> None:
    model = copy.deepcopy(fitted[0])
    assert model.forget(["p1", "p2", "stranger"]) == 2
    assert not {"p1", "p2"} & set(model.profile_ids_)
    assert len(model.local_shape_) == len(model.profile_ids_) == 23
    decision = model.best_send_time(["p1", "p3"], window_start=AS_OF)
    assert decision.unknown_ids == ["p1"]
    assert model.forget([]) == 0


def test_update_moves_a_changed_habit_and_adds_and_removes(fitted) -> None:
    base, events, _ = fitted
    model = copy.deepcopy(base)
    row = model.profile_ids_.get_loc("mover")
    assert model.best_local_hour_[row] % 24 == 9
    as_of = AS_OF + pd.Timedelta(weeks=10)
    # the mover now browses at 21:00 for ten weeks; a newcomer with a known zone arrives
    fresh = _events(_habit("mover", 21, 42, 70) + _habit("newcomer", 18, 98, 14, "Europe/Paris"))
    history = pd.concat([events[events["profile_id"] == "mover"], fresh], ignore_index=True)
    untouched = model.local_shape_[model.profile_ids_.get_loc("p0")].copy()
    change = ProfileUpdate(
        as_of=as_of,
        profile_ids=pd.Index(["mover", "newcomer"], dtype="string"),
        removed=pd.Index(["p5"], dtype="string"),
        features=pd.DataFrame(index=pd.Index(["mover", "newcomer"], name="profile_id")),
        events=history,
        timezones=pd.Series({"newcomer": "Europe/Paris"}, dtype="string"),
    )
    assert model.update(change) is model
    ids = list(model.profile_ids_)
    assert ids == sorted(ids) and "p5" not in ids and "newcomer" in ids
    frame = model.profiles_frame().set_index("profile_id")
    assert frame.loc["newcomer", "timezone"] == "Europe/Paris"
    assert frame.loc["newcomer", "timezone_source"] == "known"
    # population parts frozen: the untouched profile keeps its curve, hyper-parameters stay
    np.testing.assert_array_equal(model.local_shape_[model.profile_ids_.get_loc("p0")], untouched)
    assert model.prior_strength_ == base.prior_strength_
    assert model.best_local_hour_[model.profile_ids_.get_loc("mover")] % 24 == 21
    assert model.best_local_hour_[model.profile_ids_.get_loc("newcomer")] % 24 == 18


def test_calibration_recovers_a_planted_platt_map() -> None:
    rng = np.random.default_rng(3)
    raw = np.clip(rng.beta(2, 8, 20_000), 1e-3, 0.999)
    logit = np.log(raw / (1 - raw))
    outcome = rng.random(len(raw)) < 1 / (1 + np.exp(-(-1.2 + 0.6 * logit)))
    cal = fit_calibration(raw, outcome)
    assert cal is not None
    assert cal["intercept"] == pytest.approx(-1.2, abs=0.15)
    assert cal["slope"] == pytest.approx(0.6, abs=0.08)
    assert cal["n_sends"] == 20_000 and cal["responses"] == int(outcome.sum())
    # too few sends, every send answered, or a decreasing fit: no calibration
    assert fit_calibration(raw[:100], outcome[:100]) is None
    assert fit_calibration(raw[:500], np.ones(500, bool)) is None
    assert fit_calibration(raw, rng.random(len(raw)) < 1 - raw) is None


def test_parameters_keep_scikit_learns_protocol() -> None:
    from sklearn.base import clone

    model = SendTimeModel(n_alternatives=2, default_quiet_hours=(22, 7))
    copy_ = clone(model)
    assert copy_ is not model and copy_.get_params() == model.get_params()
    assert list(model.get_params()) == sorted(model.get_params())
    assert repr(model) == "SendTimeModel(default_quiet_hours=(22, 7), n_alternatives=2)"
    assert model.set_params(n_alternatives=4) is model and model.n_alternatives == 4
