"""The send-time guard: the fitted curves against plain baselines on held-out time.

A plain baseline is a 168-hour local curve per profile that anyone could write in an
afternoon: the profile's most frequent hour of day, its most frequent hour of week, one
global hour for everyone, or its time-zone cohort's curve. :func:`compare` scores the model
and every baseline on the last ``guard_windows`` periods of ``holdout_days`` before ``as_of``
(for each, a model refitted before it with the selected hyper-parameters, baselines built from
the same history) and
:func:`choose_served` names the winner; :func:`baseline_shapes` builds the served curves
(fit, and :meth:`SendTimeModel.update` for refreshed profiles).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.errors import InsufficientDataError
from dmp_ml.models.send_time import curves
from dmp_ml.models.send_time.curves import BASES, HOURS_PER_WEEK
from dmp_ml.models.send_time.zones import ZoneConverter

if TYPE_CHECKING:
    from dmp_ml.models.send_time.fitting import CurveEngine
    from dmp_ml.models.send_time.model import SendTimeModel

logger = logging.getLogger(__name__)

MODEL = "model"
BASELINES = (
    "baseline_profile_hour",
    "baseline_profile_hour_of_week",
    "baseline_global_hour",
    "baseline_cohort",
)
"""Plain baselines, in order of preference on a tie (a model tie keeps the model)."""
_TIE_BREAK = 0.05
"""Weight of the population's curve added to a profile's own counts: breaks ties only."""
SIGNIFICANCE_Z = 1.645
"""A baseline replaces the model when its held-out gain is significant (paired, one-sided 5%)."""
_PARAMS = {
    "prior_strength_candidates": "prior_strength",
    "cohort_strength_candidates": "cohort_strength",
    "day_pooling_candidates": "day_pooling",
    "bandwidth_candidates": "bandwidth",
    "activity_weight_candidates": "activity_weight",
    "sharpness_candidates": "sharpness",
}


def global_curve(activity: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The population's engagement share per local hour of week (``fallback`` when empty)."""
    total = activity.sum(axis=0)
    if total.sum() <= 0:
        total = np.asarray(fallback, dtype=np.float64)
    return total / total.sum()


def baseline_shapes(
    name: str,
    activity: np.ndarray,
    global_how: np.ndarray,
    cohort_shapes: np.ndarray,
    cohort_code: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Curves (mean 1 over 168 local hours) of baseline ``name`` and each profile's basis code.

    ``activity``: engagement hours per profile and local hour of week before the cutoff;
    ``global_how``: the population's share per local hour of week. A profile without history
    gets the global hour under the profile baselines (basis ``baseline_global_hour``).
    """
    n = len(activity)
    day = curves.daily(global_how[None, :])[0]
    own = activity.sum(axis=1) > 0
    code = np.full(n, BASES.index(name), dtype=np.int8)
    if name == "baseline_profile_hour":
        hod = curves.daily(activity) + _TIE_BREAK * day[None, :]
        shape = np.tile(np.where(own[:, None], hod, day[None, :]), 7)
    elif name == "baseline_profile_hour_of_week":
        shape = np.where(own[:, None], activity + _TIE_BREAK * global_how[None, :], global_how)
    elif name == "baseline_global_hour":
        shape = np.broadcast_to(np.tile(day, 7), (n, HOURS_PER_WEEK))
    elif name == "baseline_cohort":
        shape = np.asarray(cohort_shapes, dtype=np.float64)[cohort_code]
    else:
        raise ValueError(f"unknown send-time baseline {name!r}")
    if name in BASELINES[:2]:
        code[~own] = BASES.index("baseline_global_hour")
    return curves.unit_mean(np.maximum(np.asarray(shape, dtype=np.float64), 1e-9)), code


def compare(
    model: SendTimeModel,
    as_of: pd.Timestamp,
    timezones: pd.Series | None,
    selection: dict[str, Any],
    raw: dict[str, Any],
    engine: CurveEngine,
) -> dict[str, dict[str, float]] | None:
    """Held-out hit rate (+-1 h) and log-likelihood of the model and every baseline.

    Judged on ``guard_windows`` consecutive windows of ``holdout_days`` ending at ``as_of``
    (rolling origin): for each, the model is refitted on the events before the window with the
    selected hyper-parameters and the baselines are built from the same history; every
    profile's next engagement in the window is the target of the hit rate (its best hour of
    day within one hour, circularly), all its engagement hours there of the log-likelihood
    (curve normalised over the week). ``raw`` is ``events`` extracted before ``as_of``
    (:func:`.curves.extract`); each window reads its part of it. The figures pool every
    (profile, window) pair, so one window's luck (a few hundred profiles) does not decide
    alone; windows stop once the pool holds ``guard_profiles`` pairs. A window without history
    before it or without engagement in it is skipped; None when every window is. The refits
    and the scoring run on ``engine`` (:meth:`~.fitting.CurveEngine.score_guard`).
    """
    length = pd.Timedelta(days=float(model.holdout_days))
    params = model.get_params()
    params.update({key: (float(selection[value]),) for key, value in _PARAMS.items()})
    params["guard_baselines"] = False
    hits: dict[str, list[np.ndarray]] = {}
    logliks: dict[str, list[np.ndarray]] = {}
    used = 0
    for k in range(max(1, int(model.guard_windows))):
        end = as_of - k * length
        refit = partial(type(model), **params)
        window = _window(refit, raw, end, end - length, timezones, engine)
        if window is None:
            continue
        used += 1
        for name, (hit, ll) in window.items():
            hits.setdefault(name, []).append(hit)
            logliks.setdefault(name, []).append(ll)
        if sum(len(h) for h in hits[MODEL]) >= model.guard_profiles:
            break  # enough held-out profiles: earlier periods would only cost refits
    if not used:
        return None
    pooled = {name: np.concatenate(parts) for name, parts in hits.items()}
    out: dict[str, dict[str, float]] = {}
    for name, hit in pooled.items():
        out[name] = {
            "hit_rate": float(hit.mean()),
            "loglik": float(np.concatenate(logliks[name]).mean()),
        }
        if name != MODEL:  # standard error of the paired per-profile gain over the model
            gain = hit - pooled[MODEL]
            se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
            out[name]["gain_se"] = float(se)
    out[MODEL]["n_profiles"] = float(len(pooled[MODEL]))
    out[MODEL]["n_windows"] = float(used)
    return out


def _window(
    unfitted: Callable[[], SendTimeModel],
    raw: dict[str, Any],
    end: pd.Timestamp,
    split: pd.Timestamp,
    timezones: pd.Series | None,
    engine: CurveEngine,
) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Per scored profile of ``[split, end)``: each candidate's hit (0/1) and mean log-lik.
    ``unfitted`` makes the model refitted before the window (held here only)."""
    split_sec = int(split.value // 1_000_000_000)
    before = unfitted()
    try:  # on the rows of `raw` before the window, as a fit on the log would extract them;
        # the history the refit reads is the baselines' (made once, not again after it)
        past = before._fit_extracted(curves.before(raw, split_sec), split, timezones, None, engine)
    except InsufficientDataError as exc:  # no history before the window
        logger.info("send time guard: window before %s skipped: %s", end.date(), exc)
        return None
    codes = curves.profile_codes(raw, before.profile_ids_)  # rows at or after `end` left out
    machine = (before.machine_open_seconds, before.machine_open_weight)
    # what the window reads of the refit: the rest of it (its curves' sd, as large as the
    # curves) goes before the window's evidence is made
    refit = {
        "zones": list(before.zones_),
        "zone_code": before.zone_code_,
        "cohort_code": before.cohort_code_,
        "shape": before.local_shape_,
        "cohort_shapes": before.cohort_shapes_,
        "global_shape": before.global_shape_,
    }
    del before
    end_sec = int(end.value // 1_000_000_000)
    after = curves.evidence(raw, codes, end_sec, *machine, start_sec=split_sec)
    if len(after.act_p) == 0:
        return None
    return engine.score_guard(GuardWindow(past=past, after=after, **refit))


@dataclass(frozen=True)
class GuardWindow:
    """One held-out window of the guard for the profiles of a refit before it: their evidence
    before the window (the baselines' history) and in it (the targets), both sorted by
    profile as :func:`.curves.evidence` returns them; the refit's zones, cohorts and curves."""

    past: curves.Evidence
    after: curves.Evidence
    zones: list[str]
    zone_code: np.ndarray
    cohort_code: np.ndarray
    shape: np.ndarray  # (n, 168): the refit's local_shape_
    cohort_shapes: np.ndarray
    global_shape: np.ndarray

    def take(self, lo: int, hi: int) -> GuardWindow:
        """The window of profiles ``lo``..``hi - 1`` (codes shifted to start at 0)."""
        return replace(
            self,
            past=curves.evidence_range(self.past, lo, hi),
            after=curves.evidence_range(self.after, lo, hi),
            zone_code=self.zone_code[lo:hi],
            cohort_code=self.cohort_code[lo:hi],
            shape=self.shape[lo:hi],
        )


def window_activity(window: GuardWindow) -> np.ndarray:
    """Engagement hours per profile and local hour of week before the window (n, 168)."""
    n = len(window.zone_code)
    conv = ZoneConverter(window.zones)
    return curves.count_activity(window.past, n, window.zone_code, conv)


def score_window(window: GuardWindow) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every candidate's hit and mean log-likelihood per scored profile of ``window`` (see
    :func:`compare`), in process."""
    activity = window_activity(window)
    return score_profiles(window, activity, global_curve(activity, window.global_shape))


def score_profiles(
    window: GuardWindow, activity: np.ndarray, glob: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per profile of ``window`` with engagement in it, in profile order: each candidate's
    hit (its best hour of day within one hour of the next engagement's) and mean
    log-likelihood of the engagement hours. ``activity``: :func:`window_activity`; ``glob``:
    the population's engagement share per local hour of week. Each profile's figures are
    its own: any range of profiles gives its part of the whole's."""
    n = len(window.zone_code)
    conv = ZoneConverter(window.zones)
    hp, hsec = window.after.act_p, window.after.act_sec
    how = conv.local_how(hsec, window.zone_code[hp])
    per_profile = np.bincount(hp, minlength=n)
    scored = per_profile > 0
    order = np.lexsort((hsec, hp))
    first = order[np.r_[True, hp[order][1:] != hp[order][:-1]]] if len(hp) else order
    next_hod = np.full(n, -1, dtype=np.int64)
    next_hod[hp[first]] = how[first] % 24
    names = (MODEL, *BASELINES)
    best = {name: np.empty(n, dtype=np.int64) for name in names}
    ll = {name: np.zeros(n) for name in names}
    # every candidate's curves a block of profiles at a time: memory bounded by the block
    by_profile = np.argsort(hp, kind="stable")  # a profile's hours keep their order
    bounds = np.searchsorted(hp[by_profile], np.arange(0, n + curves.BLOCK_ROWS, curves.BLOCK_ROWS))
    for b, start in enumerate(range(0, n, curves.BLOCK_ROWS)):
        rows = slice(start, min(start + curves.BLOCK_ROWS, n))
        mine = by_profile[bounds[b] : bounds[b + 1]]
        for name in names:
            if name == MODEL:
                shape = curves.timing(window.shape[rows])
            else:
                shape = baseline_shapes(
                    name, activity[rows], glob, window.cohort_shapes, window.cohort_code[rows]
                )[0]
            q = shape / shape.sum(axis=1, keepdims=True)
            best[name][rows] = curves.daily(q).argmax(axis=1)
            at = np.log(np.maximum(q[hp[mine] - start, how[mine]], 1e-12))
            ll[name][rows] = np.bincount(hp[mine] - start, weights=at, minlength=len(q))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        d = np.abs(best[name][scored] - next_hod[scored]) % 24
        out[name] = (
            (np.minimum(d, 24 - d) <= 1).astype(np.float64),
            ll[name][scored] / per_profile[scored],
        )
    return out


def choose_served(candidates: dict[str, dict[str, float]] | None) -> str:
    """The model, unless a baseline beats its held-out hit rate by more than chance.

    A baseline qualifies when its paired per-profile gain over the model exceeds
    ``SIGNIFICANCE_Z`` standard errors (``gain_se``); the best qualifying one (hit rate, then
    log-likelihood) is served. A few hundred held-out profiles move a hit rate by a point or
    two by chance, and a switch on noise loses on the next period as often as it wins. Hit
    rate decides: a baseline's log-likelihood rests on its tie-break pseudo-counts, so it is
    reported, not trusted to overrule the model. Nothing to compare keeps the model.
    """
    if not candidates:
        return MODEL
    model_hit = candidates[MODEL]["hit_rate"]
    better = [
        name
        for name in BASELINES
        if candidates[name]["hit_rate"] - model_hit
        > max(SIGNIFICANCE_Z * candidates[name].get("gain_se", 0.0), 1e-12)
    ]
    if not better:
        return MODEL
    return max(better, key=lambda b: (candidates[b]["hit_rate"], candidates[b]["loglik"]))


def comparison_line(candidates: dict[str, dict[str, float]] | None, served: str) -> str:
    """One line a user reads: every candidate's held-out hit rate and what is served."""
    if not candidates:
        return f"no held-out engagement to compare; serving {served}"
    shown = ", ".join(f"{name} {c['hit_rate']:.3f}" for name, c in candidates.items())
    model = candidates[MODEL]
    pooled = (
        f" ({int(model['n_profiles'])} profile-periods in {int(model['n_windows'])} periods)"
        if "n_windows" in model
        else ""
    )
    return f"held-out hit rate +-1 h{pooled}: {shown}; serving {served}"
