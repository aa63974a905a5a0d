"""Offline evaluation of a send-time model on the period after its ``as_of``.

:func:`evaluate_send_time` scores the model against two baselines (hit rate, held-out
log-likelihood, planted-hour recovery); :func:`held_out` gives the predicted-against-observed
views the training charts draw (reliability, heat map).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.errors import DataContractError, InsufficientDataError
from dmp_ml.models.send_time import curves
from dmp_ml.models.send_time.curves import BASES, CALIBRATION_LAG, HOURS_PER_WEEK
from dmp_ml.models.send_time.zones import TIMEZONE_SOURCES, ZoneConverter, known_zones

if TYPE_CHECKING:
    from dmp_ml.models.send_time.model import SendTimeModel

logger = logging.getLogger(__name__)

_OWN_PSEUDO_COUNTS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def evaluate_send_time(
    model: SendTimeModel,
    events_after: pd.DataFrame,
    timezones: pd.Series | None = None,
    truth: pd.DataFrame | None = None,
    training_events: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Offline evaluation on the period after the model's ``as_of``.

    Parameters
    ----------
    model : SendTimeModel
        A fitted model.
    events_after : DataFrame
        Resolved canonical events. Engagement at or after ``model.as_of_`` is scored. Rows
        before it, when present (pass the whole log), are the baselines' history; email sends
        before it also let machine opens after it be recognised.
    timezones : Series, optional
        Zones in which the *baselines* read hours (profile_id -> IANA name); default, and for
        profiles not listed, the zone the model used. The model is always scored in its own
        zone (known, inferred or UTC), so neither side gets knowledge the other lacks unless
        ``timezones`` holds zones the model was not given.
    truth : DataFrame, optional
        Planted ``profile_id``, ``preferred_local_hour``, ``timezone`` (the demo world).
    training_events : DataFrame, optional
        The baselines' history (rows before ``as_of``) when ``events_after`` does not hold it.

    Returns
    -------
    dict
        ``n_profiles`` scored (known to the model, with engagement after the cutoff),
        ``n_engagement_hours``, then per method (``model``, ``global_hour``, ``own_hour``):

        - ``hit_rate``: share of profiles whose next engagement falls within +-1 hour
          (circular, hour of day) of the method's best hour of day;
        - ``loglik``: mean over profiles of the mean log-likelihood of their engagement hours
          under the method's curve normalised over the 168 hours (``uniform_loglik``: -5.12).

        ``model`` also holds breakdowns ``by_basis`` and ``by_timezone_source``. With ``truth``,
        ``recovery``: share of profiles whose best hour of day, read in their true zone at
        ``as_of``, is the planted hour (``exact``) or within one hour (``within_1h``).

    Notes
    -----
    Engagement hours follow the model's evidence: non-email engagement events and human email
    opens/clicks at the hour they happened, one per profile and clock hour. The model's curve
    is :attr:`SendTimeModel.timing_`; its best hour of day is the peak of that curve summed
    over the seven days (the same ranking as the probability curve). Baselines:
    ``global_hour`` is the population's pre-cutoff engagement histogram by local hour of week
    (smoothed over +-bandwidth hours, one curve for everyone; best hour = its daily peak).
    ``own_hour`` is the profile's own pre-cutoff histogram plus a pseudo-count per hour, the
    pseudo-count picked *in hindsight* on the evaluation period (this favours the baseline),
    the global curve without history; best hour = the most frequent past local hour of day.
    """
    model.check_fitted()
    as_of_sec = int(model.as_of_.value // 1_000_000_000)
    index = model.profile_ids_
    n = len(index)
    # the model reads hours in its own zones; the baselines in ``timezones`` where given
    model_conv = ZoneConverter(model.zones_)
    base_names = list(model.zones_)
    base_code = model.zone_code_.copy()
    if timezones is not None:
        known = known_zones(index, timezones)
        has = ~pd.isna(known)
        base_names += sorted({str(z) for z in known[has]} - set(base_names))
        zmap = {z: i for i, z in enumerate(base_names)}
        base_code[has] = [zmap[str(z)] for z in known[has]]
    base_conv = ZoneConverter(base_names)

    raw = curves.extract(events_after, None, model.non_engagement_events)
    codes = curves.profile_codes(raw, index)
    machine = (model.machine_open_seconds, model.machine_open_weight)
    after = curves.evidence(raw, codes, curves.max_sec(raw) + 1, *machine, start_sec=as_of_sec)
    hp, hsec = after.act_p, after.act_sec
    if len(hp) == 0:
        raise InsufficientDataError("send time evaluation: no engagement after the cutoff")
    hh_model = model_conv.local_how(hsec, model.zone_code_[hp])
    hh_base = base_conv.local_how(hsec, base_code[hp])
    per_profile = np.bincount(hp, minlength=n)
    evaluated = per_profile > 0
    # the next engagement of each profile, as hour of day in either frame
    order = np.lexsort((hsec, hp))
    first = order[np.r_[True, hp[order][1:] != hp[order][:-1]]]
    next_model = np.full(n, -1, dtype=np.int64)
    next_base = np.full(n, -1, dtype=np.int64)
    next_model[hp[first]] = hh_model[first] % 24
    next_base[hp[first]] = hh_base[first] % 24

    # pre-cutoff history for the baselines
    if training_events is not None:
        traw = curves.extract(training_events, model.as_of_, model.non_engagement_events)
        before = curves.evidence(traw, curves.profile_codes(traw, index), as_of_sec, *machine)
    else:
        before = curves.evidence(raw, codes, as_of_sec, *machine)
    if len(before.act_p) == 0:
        logger.warning("send time evaluation: no rows before the cutoff; baselines lack history")
    # the baselines' curves are read at the evaluation's engagement hours only: per profile
    # its pre-cutoff count at each of them, its total and its count by hour of day, not an
    # (n_profiles, 168) histogram (each curve of them was a matrix as large as the model's)
    how_before = base_conv.local_how(before.act_sec, base_code[before.act_p])
    past_p = before.act_p.astype(np.int64)
    past_total = np.bincount(past_p, minlength=n).astype(float)
    past_at = _counts_at(past_p * HOURS_PER_WEEK + how_before, hp * HOURS_PER_WEEK + hh_base)
    past_daily = np.bincount(past_p * 24 + how_before % 24, minlength=n * 24).reshape(n, 24)
    glob = np.bincount(how_before, minlength=HOURS_PER_WEEK).astype(float)
    if glob.sum() == 0:
        glob = model.global_shape_.astype(float).copy()
    glob = curves.smooth(glob[None, :], curves.kernel(model.bandwidth_, 0.0))[0]
    glob = np.maximum(glob / glob.sum(), 1e-6)
    glob /= glob.sum()

    def loglik(q_at: np.ndarray, subset: np.ndarray | None = None) -> float:
        """Mean over profiles of the mean log of a curve ``q_at`` read at each engagement."""
        ll = np.bincount(hp, weights=np.log(q_at), minlength=n)
        sel = evaluated if subset is None else subset
        return float((ll[sel] / per_profile[sel]).mean())

    def hits(best: np.ndarray, actual: np.ndarray, subset: np.ndarray | None = None) -> float:
        sel = evaluated if subset is None else subset
        return float(_circular_hits(best[sel], actual[sel]).mean())

    model_hod, q_model = _timing_at(model, hp, hh_model)
    q_global = glob[hh_base]
    global_hod = np.full(n, int(curves.daily(glob[None, :]).argmax()))
    has_past = past_total > 0
    own_hod = np.where(has_past, past_daily.argmax(axis=1), global_hod)

    def own_curve(pseudo: float) -> np.ndarray:
        """The own-history curve (counts plus ``pseudo`` per hour, normalised; the global
        curve without history) at each engagement."""
        q = (past_at + pseudo) / (past_total[hp] + pseudo * HOURS_PER_WEEK)
        return np.where(has_past[hp], q, q_global)

    own_scores = {p: loglik(own_curve(p)) for p in _OWN_PSEUDO_COUNTS}
    best_pseudo = max(own_scores, key=own_scores.__getitem__)
    q_own = own_curve(best_pseudo)

    result: dict[str, Any] = {
        "n_profiles": int(evaluated.sum()),
        "n_engagement_hours": int(len(hp)),
        "model": {
            "hit_rate": hits(model_hod, next_model),
            "loglik": loglik(q_model),
        },
        "global_hour": {
            "hit_rate": hits(global_hod, next_base),
            "loglik": loglik(q_global),
        },
        "own_hour": {
            "hit_rate": hits(own_hod, next_base),
            "loglik": own_scores[best_pseudo],
            "pseudo_count": best_pseudo,
        },
        "uniform_loglik": float(-math.log(HOURS_PER_WEEK)),
    }
    for key, codes_of, names in (
        ("by_basis", model.basis_code_, BASES),
        ("by_timezone_source", model.timezone_source_code_, TIMEZONE_SOURCES),
    ):
        groups = {}
        for code, name in enumerate(names):
            sel = evaluated & (codes_of == code)
            if sel.any():
                groups[name] = {
                    "n_profiles": int(sel.sum()),
                    "hit_rate": hits(model_hod, next_model, sel),
                    "global_hour_hit_rate": hits(global_hod, next_base, sel),
                    "own_hour_hit_rate": hits(own_hod, next_base, sel),
                    "loglik": loglik(q_model, sel),
                    "global_hour_loglik": loglik(q_global, sel),
                    "own_hour_loglik": loglik(q_own, sel),
                }
        result["model"][key] = groups

    if truth is not None:
        model_off = model_conv.offsets_at(as_of_sec)[model.zone_code_]
        base_off = base_conv.offsets_at(as_of_sec)[base_code]
        result["recovery"] = _recovery(
            model,
            truth,
            {
                "model": (model_hod, model_off),
                "global_hour": (global_hod, base_off),
                "own_hour": (own_hod, base_off),
            },
        )
    return result


@dataclass(frozen=True)
class HeldOut:
    """The period after a model's ``as_of`` as its charts need it (see :func:`held_out`).

    ``sends``: one row per email send after ``as_of`` that had ``CALIBRATION_LAG`` to be
    answered, with ``profile_id``, ``local_hour_of_week``, the model's ``probability`` for that
    hour and ``responded`` (a human open or click). ``engagement``: the share of held-out
    engagement hours per local hour of week (168 values; zeros when there are none).
    """

    sends: pd.DataFrame
    engagement: np.ndarray


def held_out(model: SendTimeModel, events: pd.DataFrame) -> HeldOut:
    """Predicted against observed on the events after ``model.as_of_`` (reliability, heat map).

    ``events`` are resolved canonical events; rows before ``as_of`` only link machine opens
    to their sends. Hours are read in the model's own zone of each profile.
    """
    model.check_fitted()
    as_of_sec = int(model.as_of_.value // 1_000_000_000)
    index = model.profile_ids_
    raw = curves.extract(events, None, model.non_engagement_events)
    codes = curves.profile_codes(raw, index)
    end_sec = curves.max_sec(raw) + 1
    machine = (model.machine_open_seconds, model.machine_open_weight)
    ev = curves.evidence(raw, codes, end_sec, *machine, start_sec=as_of_sec)
    conv = ZoneConverter(model.zones_)
    keep = (ev.send_sec >= as_of_sec) & (ev.send_sec < end_sec - CALIBRATION_LAG)
    sp, ssec = ev.send_p[keep], ev.send_sec[keep]
    how = conv.local_how(ssec, model.zone_code_[sp])
    probability = model.probability(sp, how[:, None])[0][:, 0] if len(sp) else np.zeros(0)
    sends = pd.DataFrame(
        {
            "profile_id": index[sp].astype(str),
            "local_hour_of_week": how.astype(np.int64),
            "probability": probability.astype(np.float64),
            "responded": ev.send_resp[keep] >= 1,
        }
    )
    hours = np.bincount(
        conv.local_how(ev.act_sec, model.zone_code_[ev.act_p]), minlength=HOURS_PER_WEEK
    ).astype(np.float64)
    engagement = hours / hours.sum() if hours.sum() > 0 else hours
    return HeldOut(sends, engagement)


def _counts_at(keys: np.ndarray, at: np.ndarray) -> np.ndarray:
    """How often each of ``at`` occurs among ``keys``, as float64, shape ``at.shape``."""
    seen, counts = np.unique(keys, return_counts=True)
    pos = np.minimum(np.searchsorted(seen, at), max(len(seen) - 1, 0))
    found = (seen[pos] == at) if len(seen) else np.zeros(len(at), dtype=bool)
    return np.where(found, counts[pos] if len(seen) else 0, 0).astype(np.float64)


def _timing_at(
    model: SendTimeModel, profile: np.ndarray, how: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The model's best hour of day per profile (the peak of :attr:`~SendTimeModel.timing_`
    summed over the days) and its timing curve at each (``profile``, ``how``), computed a
    block of profiles at a time, not as one (n_profiles, 168) matrix."""
    shape = np.asarray(model.local_shape_)
    n = len(shape)
    best = np.empty(n, dtype=np.int64)
    at = np.empty(len(profile), dtype=np.float64)
    order = np.argsort(profile, kind="stable")
    bounds = np.searchsorted(profile[order], np.arange(0, n + curves.BLOCK_ROWS, curves.BLOCK_ROWS))
    for block, lo in enumerate(range(0, n, curves.BLOCK_ROWS)):
        q = curves.timing(shape[lo : lo + curves.BLOCK_ROWS])
        best[lo : lo + len(q)] = curves.daily(q).argmax(axis=1)
        mine = order[bounds[block] : bounds[block + 1]]
        at[mine] = q[profile[mine] - lo, how[mine]]
    return best, at


def _circular_hits(a: np.ndarray, b: np.ndarray, tolerance: int = 1) -> np.ndarray:
    """Whether hours of day ``a`` and ``b`` are within ``tolerance`` hours (circularly)."""
    d = np.abs(a - b) % 24
    return np.minimum(d, 24 - d) <= tolerance


def _recovery(
    model: SendTimeModel,
    truth: pd.DataFrame,
    best: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """Share of profiles whose best hour, read in the true zone, is the planted local hour.

    ``best`` maps a method to (best hour of day per profile, UTC offset in seconds of the frame
    that hour is expressed in).
    """
    for column in ("profile_id", "preferred_local_hour", "timezone"):
        if column not in truth.columns:
            raise DataContractError(f"truth lacks column {column!r}")
    t = truth.dropna(subset=["profile_id", "preferred_local_hour", "timezone"])
    pos = model.profile_ids_.get_indexer(t["profile_id"].astype("string"))
    keep = pos >= 0
    pos = pos[keep]
    planted = t["preferred_local_hour"].to_numpy(dtype=float)[keep].astype(np.int64)
    true_zone = t["timezone"].astype(str).to_numpy()[keep]
    ref = int(model.as_of_.value // 1_000_000_000)
    true_names, true_code = np.unique(true_zone, return_inverse=True)
    true_off = ZoneConverter([str(z) for z in true_names]).offsets_at(ref)[true_code]
    out: dict[str, Any] = {"n_profiles": int(len(pos))}
    for name, (hod, offset) in best.items():
        shift = np.round((true_off - offset[pos]) / 3600).astype(np.int64)
        local = (hod[pos] + shift) % 24
        d = np.abs(local - planted) % 24
        d = np.minimum(d, 24 - d)
        out[name] = {"exact": float((d == 0).mean()), "within_1h": float((d <= 1).mean())}
    return out
