"""The evidence behind a send-time curve and the curve's posterior.

From resolved events to per-profile counts in local hour of week (email sends with their
response weight, engagement hours), the circular smoothing kernel (Gaussian over hours plus day
pooling), pooling per cohort and over the population, the Gamma-Poisson posterior of the
relative intensity, the response / activity rates, and the probability with its calibration.
Everything here is plain arrays; :class:`~dmp_ml.models.send_time.model.SendTimeModel` holds
the fitted state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from dmp_ml.codes import text_codes
from dmp_ml.errors import DataContractError

if TYPE_CHECKING:
    from dmp_ml.models.send_time.zones import ZoneConverter, ZoneMixture

HOURS_PER_WEEK = 168
BASES = (
    "profile",
    "cohort",
    "global",
    "baseline_profile_hour",
    "baseline_profile_hour_of_week",
    "baseline_global_hour",
    "baseline_cohort",
)
"""What a profile's curve rests on: its own data, its zone cohort, or the population; or,
when the guard serves a plain baseline, that baseline (see :mod:`.baselines`)."""
CALIBRATION_LAG = 2 * 86_400
"""Calibration uses held-out sends at least this old (seconds), so they could be answered."""
_EMAIL_SEND = "email_send"
_EMAIL_RESPONSES = ("email_open", "email_click")
EVENT_COLUMNS = ("event_time", "profile_id", "event_type", "campaign_id")
"""The only columns of the event log a send-time model reads."""
_P_EPS = 1e-4
_CALIBRATION_MIN_SENDS = 200
_CALIBRATION_MIN_POSITIVES = 20
BLOCK_ROWS = 2048
"""Profiles whose posterior curves are computed at once (:func:`posterior_blocks`): bounds a
fit's temporaries to about 90 MB whatever the population (each row is computed on its own,
so the block size changes no value)."""


@dataclass
class Evidence:
    """Raw per-profile evidence before local-time conversion (seconds since the epoch)."""

    send_p: np.ndarray
    send_sec: np.ndarray
    send_resp: np.ndarray  # response weight per send: 0, machine weight or 1
    act_p: np.ndarray
    act_sec: np.ndarray  # one row per profile and clock hour with engagement


@dataclass
class Counts:
    """Per-profile counts in local hour of week, shape (n_profiles, 168).

    ``sends`` and ``activity`` count whole events: they are held as int32, half the bytes of
    float64 and the same values wherever they meet a float (every sum of them is exact);
    ``responses`` are weighted (a machine open counts less than one) and stay float64.
    """

    sends: np.ndarray
    responses: np.ndarray
    activity: np.ndarray


# --------------------------------------------------------------------------------------------
# evidence


def extract(
    events: pd.DataFrame, as_of: pd.Timestamp | None, non_engagement: Sequence[str]
) -> dict[str, Any]:
    """Numpy arrays of the rows that matter (profile set, before ``as_of`` when given).

    Profiles come as ``profile`` (a code per row) into ``profiles`` (the distinct ids, an
    Index): a log repeats each id many times, and matching the distinct ids once
    (:func:`profile_codes`) costs far less than hashing every row's text.
    """
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise DataContractError(f"events lack column(s) {', '.join(missing)}")
    times = events["event_time"]
    if not isinstance(times.dtype, pd.DatetimeTZDtype):
        raise DataContractError("events.event_time must be a tz-aware datetime column")
    keep = events["profile_id"].notna().to_numpy() & times.notna().to_numpy()
    sec = times[keep].dt.tz_convert("UTC").dt.as_unit("s").astype("int64").to_numpy()
    if as_of is not None:
        before = sec < int(as_of.value // 1_000_000_000)
        keep[np.flatnonzero(keep)[~before]] = False
        sec = sec[before]
    frame = events.loc[keep, ["profile_id", "event_type", "campaign_id"]]
    # what each event type is, decided once per type (a missing type: another event)
    kind, kinds = text_codes(frame["event_type"])
    send = kinds == _EMAIL_SEND
    resp = kinds.isin(_EMAIL_RESPONSES)
    other = ~(send | resp) & ~kinds.isin(list(non_engagement))
    is_send, is_resp = np.append(send, False)[kind], np.append(resp, False)[kind]
    is_other = np.append(other, True)[kind]
    camp_codes, _ = _first_seen(frame["campaign_id"])
    profile, profiles = _first_seen(frame["profile_id"])
    return {
        "profile": profile,
        "profiles": pd.Index(pd.array(profiles, dtype="string"), name="profile_id"),
        "sec": sec,
        "is_send": is_send,
        "is_resp": is_resp,
        "is_other": is_other,
        "campaign": camp_codes,
    }


def before(raw: dict[str, Any], end_sec: int) -> dict[str, Any]:
    """``raw`` (:func:`extract`) cut to its rows before ``end_sec``: what extracting the same
    log before that time gives, array for array, without reading the log again (a refit
    before a held-out window holds no second extraction's copies of the log's columns)."""
    keep = raw["sec"] < end_sec
    profile, used = _renumbered(raw["profile"][keep])
    campaign, _ = _renumbered(raw["campaign"][keep])
    return {
        "profile": profile,
        "profiles": raw["profiles"][used],
        "sec": raw["sec"][keep],
        "is_send": raw["is_send"][keep],
        "is_resp": raw["is_resp"][keep],
        "is_other": raw["is_other"][keep],
        "campaign": campaign,
    }


def _first_seen(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize`` of the column as text: codes in order of first appearance (-1:
    missing; int32, as a code is kept for every event, unless there are 2**31 values or
    more) and the values they number, found from the column's codes
    (:func:`dmp_ml.codes.text_codes`)."""
    codes, values = text_codes(column)
    out, used = _renumbered(codes)
    return out, values[used]


def _renumbered(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` (-1: missing) numbered again in order of first appearance, and the old code
    of each new one."""
    present = codes >= 0
    numbered, used = pd.factorize(codes[present])
    out = np.full(len(codes), -1, dtype=np.int32 if len(used) < 2**31 else np.int64)
    out[present] = numbered
    return out, used


def profile_codes(raw: dict[str, Any], index: pd.Index) -> np.ndarray:
    """Position in ``index`` of each row's profile (-1 where it is not there); int32 (a code
    a row, held through a fit) unless ``index`` has 2**31 profiles or more."""
    kind = np.int32 if len(index) < 2**31 else np.int64
    return index.get_indexer(raw["profiles"]).astype(kind)[raw["profile"]]


def max_sec(raw: dict[str, np.ndarray]) -> int:
    return int(raw["sec"].max()) if len(raw["sec"]) else 0


def evidence(
    raw: dict[str, np.ndarray],
    codes: np.ndarray,
    end_sec: int,
    machine_seconds: float,
    machine_weight: float,
    start_sec: int | None = None,
) -> Evidence:
    """Sends with response weights, and engagement hours, for rows with time < ``end_sec``.

    With ``start_sec``, engagement hours are restricted to ``[start_sec, end_sec)`` while sends
    from any earlier time are still used to recognise machine opens.
    """
    sec = raw["sec"]
    ok = (codes >= 0) & (sec < end_sec)
    n_camp = int(raw["campaign"].max()) + 2 if len(raw["campaign"]) else 1
    # sends: first send per (profile, campaign)
    s = ok & raw["is_send"] & (raw["campaign"] >= 0)
    sp, ssec, sc = codes[s].astype(np.int64), sec[s], raw["campaign"][s]  # keys: 64 bits
    skey = sp * n_camp + sc
    order = np.lexsort((ssec, skey))
    skey, sp, ssec = skey[order], sp[order], ssec[order]
    first = np.r_[True, skey[1:] != skey[:-1]] if len(skey) else np.zeros(0, bool)
    skey, sp, ssec = skey[first], sp[first], ssec[first]
    # responses linked to their send
    r = ok & raw["is_resp"]
    rp, rsec, rc = codes[r].astype(np.int64), sec[r], raw["campaign"][r]
    rkey = rp * n_camp + np.where(rc >= 0, rc, n_camp - 1)
    idx = np.searchsorted(skey, rkey)
    idx_c = np.minimum(idx, max(len(skey) - 1, 0))
    matched = (len(skey) > 0) & (rc >= 0)
    if len(skey):
        matched = matched & (skey[idx_c] == rkey) & (rsec >= ssec[idx_c])
    else:
        matched = np.zeros(len(rkey), bool)
    delay = np.where(matched, rsec - (ssec[idx_c] if len(skey) else 0), np.inf)
    human = delay >= machine_seconds  # unmatched responses count as human activity
    weight = np.where(human, 1.0, machine_weight)
    resp = np.zeros(len(skey))
    if matched.any():
        np.maximum.at(resp, idx_c[matched], weight[matched])
    # engagement hours: other engagement events and human responses at their own hour
    a = ok & raw["is_other"]
    act_p = np.concatenate([codes[a], rp[human]])
    act_sec = np.concatenate([sec[a], rsec[human]])
    if start_sec is not None:
        keep = act_sec >= start_sec
        act_p, act_sec = act_p[keep], act_sec[keep]
    if len(act_p):
        hour = act_sec // 3600
        key = act_p * (int(hour.max() - hour.min()) + 1) + (hour - hour.min())
        _, first_idx = np.unique(key, return_index=True)
        act_p, act_sec = act_p[first_idx], act_sec[first_idx]
    return Evidence(sp, ssec, resp, act_p.astype(np.int64), act_sec.astype(np.int64))


def evidence_range(ev: Evidence, lo: int, hi: int) -> Evidence:
    """The evidence of profiles ``lo``..``hi - 1`` of ``ev`` (sorted by profile, as
    :func:`evidence` returns it), their codes shifted to start at 0."""
    s = slice(*np.searchsorted(ev.send_p, [lo, hi]))
    a = slice(*np.searchsorted(ev.act_p, [lo, hi]))
    return Evidence(
        ev.send_p[s] - lo, ev.send_sec[s], ev.send_resp[s], ev.act_p[a] - lo, ev.act_sec[a]
    )


def count_hours(ev: Evidence, n: int, zone_code: np.ndarray, conv: ZoneConverter) -> Counts:
    """Sends, response weights and engagement hours per profile and local hour of week
    (n, 168) each (see :func:`_hour_counts`)."""
    sh = conv.local_how(ev.send_sec, zone_code[ev.send_p])
    return Counts(
        _hour_counts(ev.send_p, sh, n),
        _hour_counts(ev.send_p, sh, n, ev.send_resp),
        count_activity(ev, n, zone_code, conv),
    )


def count_activity(ev: Evidence, n: int, zone_code: np.ndarray, conv: ZoneConverter) -> np.ndarray:
    """Engagement hours per profile and local hour of week, (n, 168) int32."""
    return _hour_counts(ev.act_p, conv.local_how(ev.act_sec, zone_code[ev.act_p]), n)


def _hour_counts(
    profile: np.ndarray, how: np.ndarray, n: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Rows per profile and hour of week, (n, 168): int32 counts, or float64 sums of
    ``weights``. Counted a block of profiles at a time (``profile`` sorted, as
    :func:`evidence` returns it), so no (n, 168) int64 count stands beside the result; each
    cell adds its rows in their order, so the figures are a whole count's."""
    if len(profile) > 1 and (np.diff(profile) < 0).any():
        raise ValueError("evidence must be sorted by profile, as evidence() returns it")
    out = np.zeros((n, HOURS_PER_WEEK), dtype=np.int32 if weights is None else np.float64)
    bounds = np.searchsorted(profile, np.arange(0, n + BLOCK_ROWS, BLOCK_ROWS))
    for b, lo in enumerate(range(0, n, BLOCK_ROWS)):
        rows = slice(bounds[b], bounds[b + 1])
        size = (min(lo + BLOCK_ROWS, n) - lo) * HOURS_PER_WEEK
        key = (profile[rows] - lo) * HOURS_PER_WEEK + how[rows]
        part = weights[rows] if weights is not None else None
        counts = np.bincount(key, weights=part, minlength=size)
        out[lo : lo + BLOCK_ROWS] = counts.reshape(-1, HOURS_PER_WEEK)
    return out


def rates(
    counts: Counts, kind: str, strength: float, span_hours: float
) -> tuple[np.ndarray, float]:
    """Per-profile response rate per send (``rate``) or activity rate per hour (``activity``)."""
    if kind == "rate":
        sends = counts.sends.sum(axis=1)
        resp = counts.responses.sum(axis=1)
        g = resp.sum() / sends.sum()
        return (resp + strength * g) / (sends + strength), float(g)
    act = counts.activity.sum(axis=1)
    hours = max(span_hours, 1.0)
    g = act.sum() / (len(act) * hours)
    return (act + strength) / (hours + strength / max(g, 1e-12)), float(g)


def span_hours(raw: dict[str, np.ndarray], as_of_sec: int) -> float:
    if not len(raw["sec"]):
        return 1.0
    return (as_of_sec - int(raw["sec"].min())) / 3600.0


def probability(
    shape: np.ndarray,
    shape_sd: np.ndarray,
    rate: np.ndarray,
    kind: str,
    calibration: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The curve and its sd from the intensity posterior; see the module doc."""
    # (a probability's sd never exceeds 0.5: the delta method can, with very little data)
    if kind == "rate":
        p = rate[:, None] * shape
        sd = rate[:, None] * shape_sd
        if calibration is None:
            return np.clip(p, 0.0, 1.0), np.minimum(sd, 0.5)
        raw = np.clip(p, _P_EPS, 1.0 - _P_EPS)
        z = calibration["intercept"] + calibration["slope"] * np.log(raw / (1.0 - raw))
        cal = 1.0 / (1.0 + np.exp(-z))
        # delta method through the monotone calibration map
        sd = sd * calibration["slope"] * cal * (1.0 - cal) / (raw * (1.0 - raw))
        return cal, np.minimum(sd, 0.5)
    lam = rate[:, None] * shape
    p = 1.0 - np.exp(-lam)
    return p, np.minimum(rate[:, None] * np.exp(-lam) * shape_sd, 0.5)


def at_hours(rows: Any, codes: np.ndarray, how: np.ndarray) -> np.ndarray:
    """``rows[codes]`` (curves, 168 values a row) at the hours ``how`` (a row of hours per
    code), a block of codes at a time: a held-out send asks one hour of its profile's curve,
    and the rows of every send at once would be the largest array of a fit's evaluation."""
    step = BLOCK_ROWS
    return np.concatenate(
        [
            np.take_along_axis(rows[codes[lo : lo + step]], how[lo : lo + step], axis=1)
            for lo in range(0, len(codes), step)
        ]
        or [np.take_along_axis(rows[codes], how, axis=1)]
    )


def fit_calibration(raw: np.ndarray, outcome: np.ndarray) -> dict[str, float] | None:
    """Platt scaling of P(human response | send): ``logit p = a + b * logit raw`` (b > 0).

    The posterior curve is built from engagement *shape* times an average response rate, so its
    level drifts with time and its contrast follows activity more than responses; two
    parameters fitted on the held-out sends fix both without changing any ranking (a logistic
    regression of the outcome on ``logit raw``). None when there are too few sends or
    responses, every send was answered, or the fit is not increasing.
    """
    y = outcome.astype(float)
    if len(y) < _CALIBRATION_MIN_SENDS or y.sum() < _CALIBRATION_MIN_POSITIVES or y.all():
        return None
    clipped = np.clip(raw, _P_EPS, 1.0 - _P_EPS)
    x = np.log(clipped / (1.0 - clipped))
    # training only (a loaded model applies the stored intercept and slope): imported here so
    # serving never imports scikit-learn
    from sklearn.linear_model import LogisticRegression

    # maximum likelihood (C large: a negligible ridge on the slope); a two-parameter fit gains
    # nothing from threads, which only spin on a busy machine
    platt = LogisticRegression(C=1e6, solver="newton-cholesky", tol=1e-10, max_iter=100)
    with threadpool_limits(limits=1):
        platt.fit(x[:, None], y)
    beta = np.array([platt.intercept_[0], platt.coef_[0, 0]])
    if not np.all(np.isfinite(beta)) or beta[1] <= 0:
        return None
    return {
        "intercept": float(beta[0]),
        "slope": float(beta[1]),
        "n_sends": int(len(y)),
        "responses": int(y.sum()),
        "mean_raw": float(raw.mean()),
        "mean_observed": float(y.mean()),
    }


# --------------------------------------------------------------------------------------------
# shrinkage


def kernel(bandwidth: float, day_pooling: float) -> np.ndarray:
    """Circular smoothing kernel over the 168 hours (sums to 1)."""
    d = np.arange(HOURS_PER_WEEK)
    d = np.minimum(d, HOURS_PER_WEEK - d).astype(float)
    base = (d == 0).astype(float) if bandwidth <= 0 else np.exp(-0.5 * (d / bandwidth) ** 2)
    base /= base.sum()
    k = base.copy()
    for day in range(1, 7):
        k += day_pooling * np.roll(base, 24 * day)
    return k / k.sum()


def smooth(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Circular convolution of each row of ``x`` with ``kernel`` (FFT)."""
    fk = np.fft.rfft(kernel)
    return np.fft.irfft(np.fft.rfft(x, axis=1) * fk[None, :], n=HOURS_PER_WEEK, axis=1)


@dataclass
class Pooled:
    """Unsmoothed evidence per profile, summed per cohort and over the global pool.

    ``resp``: weighted responses at send hour; ``act``: engagement hours; ``sends`` and
    ``rate`` (n,): sends and the profile's response rate, whose product ``expo`` (expected
    responses if the intensity were flat) :meth:`rows` forms for the rows asked, never for the
    whole population at once; ``mu``: mean engagement hours per hour-of-week bin. ``cohort``
    and ``pool`` hold the sums of ``resp``, ``act``, ``expo`` and ``mu``.
    """

    resp: np.ndarray
    act: np.ndarray
    sends: np.ndarray
    rate: np.ndarray
    mu: np.ndarray
    cohort: dict[str, np.ndarray]
    pool: dict[str, np.ndarray]

    def rows(self, rows: slice | np.ndarray) -> dict[str, np.ndarray]:
        """``resp``, ``act``, ``expo`` and ``mu`` of ``rows`` (:func:`smooth_block`'s)."""
        return {
            "resp": self.resp[rows],
            "act": self.act[rows],
            "expo": self.rate[rows, None] * self.sends[rows],
            "mu": self.mu[rows],
        }

    def take(self, rows: np.ndarray) -> Pooled:
        """The per-profile parts of ``rows`` only, with the same cohort and pool sums."""
        parts = (self.resp, self.act, self.sends, self.rate, self.mu)
        return Pooled(*(part[rows] for part in parts), self.cohort, self.pool)


def totals(counts: Counts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per profile of ``counts``: sends, responses, engagement hours (float64, (k,) each); and
    engagement per hour of week summed over them (168,)."""
    return (
        counts.sends.sum(axis=1, dtype=np.float64),
        counts.responses.sum(axis=1),
        counts.activity.sum(axis=1, dtype=np.float64),
        counts.activity.sum(axis=0, dtype=np.float64),
    )


def total_counts(sends: np.ndarray, responses: np.ndarray, activity: np.ndarray) -> Counts:
    """Each profile's totals (:func:`totals`) as (n, 1) counts, what :func:`rates` and
    :func:`pooled_rows` read."""
    return Counts(sends[:, None], responses[:, None], activity[:, None])


def population_rate(responses: np.ndarray, sends: np.ndarray) -> float:
    """The population's responses per send (0 without sends), from per-profile totals."""
    return float(responses.sum() / sends.sum()) if sends.sum() > 0 else 0.0


def pools_everyone(source: np.ndarray, responses: np.ndarray, activity: np.ndarray) -> bool:
    """Whether the global pool takes every profile: it takes those whose zone is known or
    inferred (their local time is meaningful), unless none of them has engaged."""
    located = source != 2
    return bool(activity[located].sum() + responses[located].sum() <= 0)


def pooled_rows(counts: Counts, g: float, strength: float) -> Pooled:
    """The per-profile parts of :class:`Pooled` (no sums yet): the counts, each profile's
    response rate shrunk towards the population's ``g`` with ``strength`` pseudo-sends, and
    its mean engagement hours per hour of week."""
    sends_tot = counts.sends.sum(axis=1)
    resp_tot = counts.responses.sum(axis=1)
    rate = (resp_tot + strength * g) / (sends_tot + strength)
    mu = counts.activity.sum(axis=1) / HOURS_PER_WEEK
    return Pooled(counts.responses, counts.activity, counts.sends, rate, mu, {}, {})


def pool_sums(
    rows: Pooled, cohort_code: np.ndarray, n_cohorts: int, located: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """``cohort`` and ``pool``: the sums of the per-profile parts of ``rows`` per cohort and
    over the ``located`` profiles (a mask), ``expo`` summed from the sends times the rates."""
    parts = {"resp": (rows.resp, None), "act": (rows.act, None), "expo": (rows.sends, rows.rate)}
    cohort = {k: group_sum(v, cohort_code, n_cohorts, scale=s) for k, (v, s) in parts.items()}
    cohort["mu"] = np.bincount(cohort_code, weights=rows.mu, minlength=n_cohorts)
    pool = {k: rows_sum(v, located, scale=s) for k, (v, s) in parts.items()}
    pool["mu"] = np.array(rows.mu[located].sum())
    return {"cohort": cohort, "pool": pool}


def smooth_parts(pooled: Pooled, rho: float, bandwidth: float) -> dict[str, dict[str, np.ndarray]]:
    """Circularly smoothed responses, engagement hours and exposures (linear, so cohort and
    pool sums are smoothed after summing, over hours only: a population has data enough for its
    own day-of-week pattern)."""
    k = kernel(bandwidth, rho)
    k_pop = kernel(bandwidth, 0.0)
    return {
        "rows": smooth_block(k, **pooled.rows(slice(None))),
        "cohort": smooth_block(k_pop, **pooled.cohort),
        "pool": smooth_block(k_pop, **pooled.pool),
    }


def smooth_block(
    kernel: np.ndarray, resp: np.ndarray, act: np.ndarray, expo: np.ndarray, mu: np.ndarray
) -> dict[str, np.ndarray]:
    """Rows of responses, engagement hours and exposures (k, 168) smoothed with ``kernel``;
    ``mu`` (k,) as a column. Row by row: a block of rows gives what the whole would."""
    return {
        "resp": smooth(np.atleast_2d(resp), kernel),
        "act": smooth(np.atleast_2d(act), kernel),
        "expo": smooth(np.atleast_2d(expo), kernel),
        "mu": np.reshape(mu, (-1, 1)),
    }


def posterior_blocks(
    pooled: Pooled,
    cohort_code: np.ndarray,
    source: np.ndarray,
    mixture: ZoneMixture | None,
    params: tuple[float, float, float, float, float, float],
    block_rows: int = BLOCK_ROWS,
    first: int = 0,
) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """The posterior (:func:`shapes`, with sd) of every profile of ``pooled``, a block of
    ``block_rows`` profiles at a time: ``(rows, fitted)`` in order of the rows. ``first`` is
    the position of ``pooled``'s first profile among all (the zone mixture's rows), when it
    holds a range of them.

    ``params`` are (prior strength, cohort strength, day pooling, bandwidth, activity weight,
    sharpness). The population parts are smoothed once; every row's values are those of one
    call over all rows (each row is smoothed and shrunk on its own), while the temporaries
    (about thirty arrays of (rows, 168) floats) stay the size of a block, not of the
    population.
    """
    alpha, beta, rho, bandwidth, activity_weight, sharpness = params
    k = kernel(bandwidth, rho)
    k_pop = kernel(bandwidth, 0.0)
    population = {
        "cohort": smooth_block(k_pop, **pooled.cohort),
        "pool": smooth_block(k_pop, **pooled.pool),
    }
    n = len(pooled.mu)
    for lo in range(0, n, block_rows):
        rows = slice(lo, min(lo + block_rows, n))
        block = smooth_block(k, **pooled.rows(rows))
        fitted = shapes(
            smoothed({"rows": block, **population}, activity_weight),
            cohort_code[rows],
            alpha,
            beta,
            mixture=mixture,
            source=source[rows],
            rows=np.arange(first + rows.start, first + rows.stop),
            sharpness=sharpness,
        )
        yield rows, fitted


def smoothed(parts: dict[str, dict[str, np.ndarray]], activity_weight: float) -> dict:
    """Smoothed successes Y and exposures E for the rows, the cohorts and the global pool.

    Y = responses + w * engagement hours, E = rate * sends + w * mean engagement per bin, so
    that Y / E estimates the relative intensity s(h) (mean 1).
    """
    w = activity_weight

    def ye(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        y = np.maximum(p["resp"] + w * p["act"], 0.0)
        e = np.maximum(p["expo"], 0.0) + w * p["mu"]
        return y, e

    ys, es = ye(parts["rows"])
    cy, ce = ye(parts["cohort"])
    gy, ge = ye(parts["pool"])
    glob = np.where(ge[0] > 0, gy[0] / np.where(ge[0] > 0, ge[0], 1.0), 0.0)
    if glob.mean() > 0:
        glob = unit_mean(np.maximum(glob, 1e-3 * glob.mean()))
    else:
        glob = np.ones(HOURS_PER_WEEK)
    return {"y": ys, "e": es, "cohort_y": cy, "cohort_e": ce, "global": glob}


def shapes(
    sm: dict[str, np.ndarray],
    cohort_code: np.ndarray,
    alpha: float,
    beta: float,
    mixture: ZoneMixture | None = None,
    source: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    sharpness: float = 1.0,
    with_sd: bool = True,
) -> dict[str, np.ndarray]:
    """Gamma-Poisson posterior of the relative intensity, profile -> cohort -> global.

    ``sm`` holds the smoothed evidence of the profiles at hand (``cohort_code`` and ``source``
    row-aligned with it; ``rows`` their positions among all profiles, for the zone mixture).
    ``alpha`` and ``beta`` are prior strengths in pseudo engagement events per week, spread
    over the 168 hours. Profiles left in UTC take the zone ``mixture`` prior when given.
    ``sharpness`` raises the posterior mean curve to a power (1: unchanged; ranking kept).
    Without ``with_sd`` only the (unnormalised, when sharpened) ``shape`` is returned.
    """
    a_bin, b_bin = alpha / HOURS_PER_WEEK, beta / HOURS_PER_WEEK
    cohort = unit_mean((b_bin * sm["global"][None, :] + sm["cohort_y"]) / (b_bin + sm["cohort_e"]))
    ys, es = sm["y"], sm["e"]
    prior = cohort[cohort_code]
    if mixture is not None and source is not None:
        utc = np.flatnonzero(source == 2)
        if len(utc):
            where = utc if rows is None else rows[utc]
            mixed = mixture.prior(cohort, sm["global"], where)
            prior[utc] = unit_mean(np.maximum(mixed, 1e-12))
    a = a_bin * prior + ys
    b = a_bin + es
    shape = a / b
    if not with_sd:
        return {"shape": shape if sharpness == 1.0 else shape**sharpness}
    shape_sd = np.sqrt(a) / b
    if sharpness != 1.0:
        # calibration of the curve's contrast (smoothing flattens peaks; little data may
        # over-sharpen them): s -> s**tau, back to mean 1; sd by the delta method
        powered = shape**sharpness
        scale = powered.mean(axis=1, keepdims=True)
        shape_sd = sharpness * shape ** (sharpness - 1.0) * shape_sd / scale
        shape = powered / scale
    return {
        "shape": shape,
        "shape_sd": shape_sd,
        "global_shape": sm["global"],
        "cohort_shapes": cohort,
        "data_weight": es.sum(axis=1) / b.sum(axis=1),
    }


def _scaled(values: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """``values`` as float64, each row times ``scale`` when given."""
    values = np.asarray(values, dtype=np.float64)
    return values if scale is None else scale[:, None] * values


def rows_sum(
    values: np.ndarray,
    rows: np.ndarray,
    scale: np.ndarray | None = None,
    block_rows: int = BLOCK_ROWS,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """``values[rows].sum(axis=0)`` as float64 (``rows`` a mask; each row times ``scale``
    when given), a block of rows at a time: the same sums in the same order (row after row,
    as NumPy reduces over the rows) without a copy of every selected row. From ``start``
    (the sums of the rows before these, by this function) the sums go on as one call over all
    the rows would give them."""
    total = np.zeros((1, values.shape[1])) if start is None else np.reshape(start, (1, -1))
    for lo in range(0, len(values), block_rows):
        mine = rows[lo : lo + block_rows]
        block = _scaled(
            values[lo : lo + block_rows][mine],
            None if scale is None else scale[lo : lo + block_rows][mine],
        )
        total = np.concatenate([total, block]).sum(axis=0, keepdims=True)
    return total[0]


def group_sum(
    values: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    scale: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Sum the rows of ``values`` (n, k) (each times ``scale`` (n,) when given) per group
    code: (n_groups, k) float64, each group's rows added one after another in row order
    (:func:`rows_sum`). From ``start`` (n_groups, k), the sums of the rows before these, the
    sums go on as one call over all the rows would give them: the profiles can be summed a
    range at a time. No BLAS (threads spin)."""
    out = np.zeros((n_groups, values.shape[1])) if start is None else np.array(start, float)
    for g in np.unique(group):
        out[g] = rows_sum(values, group == g, scale, start=out[g])
    return out


def unit_mean(x: np.ndarray) -> np.ndarray:
    m = x.mean(axis=-1, keepdims=True)
    return x / np.where(m > 0, m, 1.0)


def timing(shape: np.ndarray) -> np.ndarray:
    """Relative intensities (n, 168) normalised over the 168 local hours, as float64."""
    shape = np.maximum(shape.astype(np.float64), 1e-12)
    return shape / shape.sum(axis=1, keepdims=True)


def daily(q: np.ndarray) -> np.ndarray:
    """Sum a (n, 168) curve over the seven days: (n, 24) by hour of day."""
    return q.reshape(q.shape[0], 7, 24).sum(axis=1)
