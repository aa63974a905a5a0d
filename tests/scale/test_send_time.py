"""Send-time training on Dask (zone inference, selection, guard, curves) equals the local
engine's: per-profile values exactly, population sums to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import CRIPPLED_SEND_TIME, ONE_SEND_TIME_CANDIDATE

from dmp_ml.identity import resolve_identity
from dmp_ml.models.send_time import SendTimeModel, curves
from dmp_ml.models.send_time.baselines import BASELINES, MODEL
from dmp_ml.models.send_time.fitting import CurveInputs, FittedCurves, LocalCurves
from dmp_ml.models.send_time.zones import assign_zones, known_zones, profile_universe
from dmp_ml.scale import DaskCurves, DaskEngine

TOL = 1e-12
ONE = ONE_SEND_TIME_CANDIDATE


class KeepingInputs(LocalCurves):
    """The local engine, keeping what it was asked to select and fit (to give Dask the same)."""

    def select(self, inputs, rows, search, sends):
        self.selection = (inputs, rows, sends)
        return super().select(inputs, rows, search, sends)

    def fit(self, inputs: CurveInputs) -> FittedCurves:
        self.inputs = inputs
        return super().fit(inputs)


@pytest.fixture(scope="module")
def resolved(world):
    return resolve_identity(world.events, world.end, consent=world.consent).events


@pytest.fixture(scope="module")
def timezones(world):
    return world.profiles.set_index("profile_id")["timezone"]


def _assert_close(a: FittedCurves, b: FittedCurves) -> None:
    assert a.kind == b.kind
    for name in ("shape", "shape_sd", "data_weight", "global_shape", "cohort_shapes", "rate"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        np.testing.assert_allclose(y, x, rtol=TOL, atol=TOL, err_msg=name)
    for name in ("engagement_hours", "sends", "baseline_global"):  # counts: exact
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    assert a.global_rate == pytest.approx(b.global_rate, rel=TOL)


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_dask_curves_equal_the_local_fit_and_every_baseline(
    world, resolved, timezones, client, npartitions
):
    local = KeepingInputs()
    model = SendTimeModel(guard_baselines=False).fit(resolved, world.end, timezones, engine=local)
    expected = local.fit(local.inputs)
    assert model.probability_kind_ == "rate" and expected.shape.shape == (
        len(model.profile_ids_),
        168,
    )
    dask_curves = DaskCurves(DaskEngine(client), npartitions)
    got = dask_curves.fit(local.inputs)
    _assert_close(expected, got)
    cohort = local.inputs.cohort_code
    for name in BASELINES:
        want_shape, want_basis = local.baseline(name, expected, cohort)
        shape, basis = dask_curves.baseline(name, got, cohort)
        np.testing.assert_allclose(shape, want_shape, rtol=TOL, atol=TOL, err_msg=name)
        np.testing.assert_array_equal(basis, want_basis)


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_dask_selection_pools_and_prices_the_sends_as_the_local_engine(
    world, resolved, timezones, client, npartitions
):
    local = KeepingInputs()
    SendTimeModel(guard_baselines=False).fit(resolved, world.end, timezones, engine=local)
    inputs, rows, sends = local.selection
    assert sends is not None and len(sends[0]) > 100 and 0 < len(rows) < inputs.n
    seen = {}
    chosen = {  # not the middle candidates: the sends are priced with what the search chose
        "prior_strength": 3.0,
        "cohort_strength": 3000.0,
        "day_pooling": 0.1,
        "bandwidth": 2.5,
        "activity_weight": 4.0,
        "sharpness": 1.5,
    }

    def search(name):
        def chose(pooled):
            seen[name] = pooled
            return chosen

        return chose

    want_chosen, want = local.select(inputs, rows, search("local"), sends)
    got_chosen, got = DaskCurves(DaskEngine(client), npartitions).select(
        inputs, rows, search("dask"), sends
    )
    assert want_chosen == got_chosen == chosen
    for name in ("resp", "act", "sends", "rate", "mu"):  # the scored profiles' rows: exact
        want_rows = getattr(seen["local"], name)
        assert len(want_rows) == len(rows)
        np.testing.assert_array_equal(getattr(seen["dask"], name), want_rows, err_msg=name)
    for level in ("cohort", "pool"):  # population sums: to float rounding
        for name, value in getattr(seen["local"], level).items():
            np.testing.assert_allclose(getattr(seen["dask"], level)[name], value, rtol=TOL)
    assert want.shape == sends[0].shape
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    assert (
        DaskCurves(DaskEngine(client), npartitions).select(inputs, rows, search("x"), None)[1]
        is None
    )


def test_send_time_model_on_dask_serves_the_same_curves(world, resolved, timezones, client):
    cutoff = world.end - np.timedelta64(10, "D")
    kw = {"timezones": timezones}
    local = SendTimeModel().fit(resolved, cutoff, **kw)
    dask = SendTimeModel().fit(resolved, cutoff, **kw, engine=DaskCurves(DaskEngine(client), 4))
    assert dask.served_ == local.served_ and dask.guard_ == local.guard_
    # the same search path and choice; scores and calibration to float rounding
    chosen, heldout = dict(local.selection_), dict(dask.selection_)
    assert len(chosen["evaluated"]) > 10 and chosen["calibration"] is not None
    for key in ("evaluated", "calibration"):
        want, got = chosen.pop(key), heldout.pop(key)
        assert got == (
            [pytest.approx(w, rel=1e-9) for w in want]
            if key == "evaluated"
            else pytest.approx(want, rel=1e-9)
        ), key
    assert heldout == pytest.approx(chosen, rel=1e-12)
    for name in ("local_shape_", "local_shape_sd_", "rate_", "data_weight_", "basis_code_"):
        np.testing.assert_allclose(getattr(dask, name), getattr(local, name), rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(dask.best_hour_, local.best_hour_)
    np.testing.assert_allclose(dask.cohort_shapes_, local.cohort_shapes_, rtol=TOL, atol=TOL)


def test_the_guard_refits_on_dask_and_serves_the_same_baseline(world, resolved, timezones, client):
    crippled = CRIPPLED_SEND_TIME
    fits: list[int] = []

    class Counting(DaskCurves):
        def fit(self, inputs: CurveInputs) -> FittedCurves:
            fits.append(inputs.n)
            return super().fit(inputs)

    local = SendTimeModel(**crippled).fit(resolved, world.end, timezones)
    dask = SendTimeModel(**crippled).fit(
        resolved, world.end, timezones, engine=Counting(DaskEngine(client), 3)
    )
    assert local.served_ in BASELINES and dask.served_ == local.served_
    # one refit per guard window, then the served fit, whose profiles the baseline is built for
    assert len(fits) == 1 + local.guard_["model"]["n_windows"]
    assert fits[-1] == len(local.profile_ids_)
    assert dask.guard_.keys() == local.guard_.keys()
    for name, figures in local.guard_.items():
        assert dask.guard_[name] == pytest.approx(figures, rel=TOL, abs=TOL), name
    np.testing.assert_allclose(dask.local_shape_, local.local_shape_, rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(dask.basis_code_, local.basis_code_)


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_dask_scores_a_guard_window_as_the_local_engine(
    world, resolved, timezones, client, npartitions
):
    windows = []

    class KeepingWindows(LocalCurves):
        def score_guard(self, window):
            windows.append(window)
            return super().score_guard(window)

    local = KeepingWindows()
    model = SendTimeModel(**ONE).fit(resolved, world.end, timezones, engine=local)
    assert len(windows) == model.guard_[MODEL]["n_windows"] == 2  # the third has no history
    dask = DaskCurves(DaskEngine(client), npartitions)
    for window in windows:
        want = LocalCurves().score_guard(window)
        got = dask.score_guard(window)
        assert set(got) == {MODEL, *BASELINES}
        n_scored = len(np.unique(window.after.act_p))
        for name, (hit, ll) in want.items():
            assert len(hit) == n_scored and hit.sum() > 0
            np.testing.assert_array_equal(got[name][0], hit, err_msg=name)  # per profile: exact
            np.testing.assert_array_equal(got[name][1], ll, err_msg=name)


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_dask_infers_the_local_engines_zones(world, resolved, timezones, client, npartitions):
    model = SendTimeModel()
    raw = curves.extract(resolved, world.end, model.non_engagement_events)
    index = profile_universe(raw["profiles"], timezones)
    as_of_sec = int(world.end.value // 1_000_000_000)
    ev = curves.evidence(raw, curves.profile_codes(raw, index), as_of_sec, 120.0, 0.1)
    known = known_zones(index, timezones)
    args = (known, ev, as_of_sec, None, 4, 0.6)
    want = assign_zones(*args, LocalCurves())
    got = assign_zones(*args, DaskCurves(DaskEngine(client), npartitions))
    zone_of, source, mixture = want
    assert (source == 1).sum() > 0 and (source == 2).sum() > 0  # some inferred, some left
    np.testing.assert_array_equal(got[0], zone_of)
    np.testing.assert_array_equal(got[1], source)
    assert got[2].zones == mixture.zones
    np.testing.assert_array_equal(got[2].offsets, mixture.offsets)
    np.testing.assert_array_equal(got[2].weights, mixture.weights)  # profile by profile: exact
