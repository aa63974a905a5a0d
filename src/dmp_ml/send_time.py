"""Send-time optimisation: per-profile 168-hour engagement curves and the best-send-time decision.

The model
---------
Every profile gets a curve over the 168 hours of the week. Internally the curve lives in the
profile's *local* hour of week (its known time zone, else the apparent time zone of its
behaviour, else UTC), so that daylight-saving shifts are handled by real time-zone conversion;
:attr:`SendTimeModel.curve_` re-expresses it in UTC hour of week (hour 0 = Monday 00:00 UTC) at
the model's ``as_of``.

The curve is ``P(engage | send at h) = rate_p * s_p(h)`` where ``s_p`` is a relative intensity
(mean 1 over the week) and ``rate_p`` the profile's response rate per email send, shrunk to the
population's. ``s_p`` is a Gamma-Poisson posterior that combines two kinds of evidence:

- email: each send (deduplicated per campaign) is an exposure at its send hour, its response
  (any open or click, credited to the hour the email was *sent*) a success; a response within
  ``machine_open_seconds`` of the send is likely a machine open (mail privacy proxies, link
  scanners) and counts ``machine_open_weight`` only;
- activity: every other engagement event (and every human open or click, at its own hour), one per
  profile and clock hour, with a weight relative to a response; this gives a personal curve to
  profiles that never received an email.

Evidence is smoothed circularly over neighbouring hours (Gaussian bandwidth) and pooled over the
same hour on other days (day pooling). It is shrunk hierarchically: profile -> cohort (its time
zone) -> global (the population's local-time curve). A profile left in UTC takes as prior a
mixture of the zone cohorts, weighted by how well its activity fits each zone. The shrinkage
strengths, day pooling, bandwidth, activity weight and a contrast calibration (the posterior
curve raised to a power, "sharpness") are chosen from candidate lists on a held-out period at
the end of the training data (the last ``holdout_days`` before ``as_of``) by the held-out
log-likelihood of engagement hours (coordinate ascent).

The probability is then calibrated (Platt scaling on the held-out email sends: a monotone map,
so no ranking changes) because ``rate_p * s_p(h)`` inherits the contrast of *activity* and the
level of the past. When the training data hold no email sends the curve is the probability of
being active in that hour, ``1 - exp(-r_p * s_p(h))`` (``probability_kind_ == "activity"``).
:attr:`SendTimeModel.timing_` (``s_p`` normalised over the week) says *when* a profile engages;
it is what the offline evaluation scores.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from dmp_ml.errors import (
    BundleError,
    DataContractError,
    InsufficientDataError,
    RequestError,
    UnknownProfileError,
)

logger = logging.getLogger(__name__)

HOURS_PER_WEEK = 168
FORMAT_VERSION = "1"
BASES = ("profile", "cohort", "global")
TIMEZONE_SOURCES = ("known", "inferred", "utc")
# 1970-01-01 00:00 UTC was a Thursday: epoch hour 0 is hour 72 of a Monday-based week.
_EPOCH_HOW_SHIFT = 72
_EMAIL_SEND = "email_send"
_EMAIL_RESPONSES = ("email_open", "email_click")
_UNKNOWN_COHORT = "__unknown__"
_SELECTION_MAX_PROFILES = 5000
_SELECTION_MAX_ROUNDS = 4
_OWN_PSEUDO_COUNTS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
_P_EPS = 1e-4
# calibration uses held-out sends at least this old (seconds) at as_of, so they could be answered
_CALIBRATION_LAG = 2 * 86_400
_CALIBRATION_MIN_SENDS = 200
_CALIBRATION_MIN_POSITIVES = 20
# Engagement hours of one person are not independent (sessions, habits): their log-likelihood
# is tempered when it weighs time-zone candidates for the prior of profiles left in UTC.
_TZ_TEMPERATURE = 0.5
# Time-zone inference: share of a person's activity around a personal habit hour (a wrapped
# Gaussian over the hour of day with this sd), the rest following the population's rhythm.
_HABIT_SHARE = 0.5
_HABIT_SD_HOURS = 1.5
_REQUIRED_COLUMNS = ("event_time", "profile_id", "event_type", "campaign_id")
_FILES = ("send_time.json", "send_time_profiles.parquet", "send_time_curves.npz")


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class SendTimeDecision:
    """The answer of :meth:`SendTimeModel.best_send_time`.

    Attributes
    ----------
    frame : DataFrame
        One row per known requested profile, in request order, columns ``profile_id``,
        ``send_at`` (UTC), ``hour_of_week`` (UTC, 0 = Monday 00:00), ``probability``, ``basis``,
        ``timezone``, ``timezone_source`` (known / inferred / utc, or ``override`` when the
        request set a zone), ``local_send_at`` (ISO-8601 text in the recipient's zone) and
        ``alternatives`` (list of ``{"send_at": ISO-8601 UTC text, "probability": float}``, next
        best first). ``send_at`` is NaT when every hour of the window falls in the recipient's
        quiet hours (see :attr:`blocked_ids`).
    unknown_ids : list of str
        Requested ids the model does not know (not in the frame).
    window_start, window_hours
        The window actually used (``window_start`` rounded up to the hour).
    """

    frame: pd.DataFrame
    unknown_ids: list[str] = field(default_factory=list)
    window_start: pd.Timestamp | None = None
    window_hours: int = 24

    @property
    def blocked_ids(self) -> list[str]:
        """Profiles with no allowed hour in the window (all of it inside their quiet hours)."""
        return self.frame.loc[self.frame["send_at"].isna(), "profile_id"].tolist()

    def alternatives_frame(self) -> pd.DataFrame:
        """The alternatives in long form: profile_id, rank (1 = next best), send_at, probability."""
        rows = [
            (pid, rank, alt["send_at"], alt["probability"])
            for pid, alts in zip(self.frame["profile_id"], self.frame["alternatives"], strict=True)
            for rank, alt in enumerate(alts, start=1)
        ]
        out = pd.DataFrame(rows, columns=["profile_id", "rank", "send_at", "probability"])
        out["profile_id"] = out["profile_id"].astype("string")
        out["rank"] = out["rank"].astype(np.int64)
        out["send_at"] = pd.to_datetime(out["send_at"], utc=True)
        out["probability"] = out["probability"].astype(np.float64)
        return out


@dataclass
class _Evidence:
    """Raw per-profile evidence before local-time conversion (seconds since the epoch)."""

    send_p: np.ndarray
    send_sec: np.ndarray
    send_resp: np.ndarray  # response weight per send: 0, machine weight or 1
    act_p: np.ndarray
    act_sec: np.ndarray  # one row per profile and clock hour with engagement


@dataclass
class _ZoneMixture:
    """Prior over candidate zones for profiles left in UTC (weights: n_candidates x n)."""

    zones: list[str]
    offsets: np.ndarray  # seconds, at as_of
    weights: np.ndarray
    cohort_index: np.ndarray | None = None  # cohort of each candidate zone, -1: global

    def link(self, cohort_names: list[str]) -> None:
        self.cohort_index = np.array(
            [cohort_names.index(z) if z in cohort_names else -1 for z in self.zones],
            dtype=np.int64,
        )

    def prior(
        self, cohort: np.ndarray, glob: np.ndarray, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Mixture prior in UTC hour of week per profile (``rows``), zeros where no weight."""
        assert self.cohort_index is not None
        local = np.where(
            self.cohort_index[:, None] >= 0, cohort[np.maximum(self.cohort_index, 0)], glob
        )
        shift = np.floor(self.offsets / 3600).astype(np.int64)
        utc_idx = (np.arange(HOURS_PER_WEEK)[None, :] + shift[:, None]) % HOURS_PER_WEEK
        utc = np.take_along_axis(local, utc_idx, axis=1)  # (n_candidates, 168)
        weights = self.weights if rows is None else self.weights[:, rows]
        return _weighted_rows(weights, utc)


@dataclass
class _Counts:
    """Per-profile counts in local hour of week, shape (n_profiles, 168)."""

    sends: np.ndarray
    responses: np.ndarray
    activity: np.ndarray


# --------------------------------------------------------------------------------------------
# the model


class SendTimeModel:
    """Per-profile 168-hour send-time curves with hierarchical shrinkage.

    Parameters
    ----------
    prior_strength_candidates : sequence of float
        Candidate profile -> cohort shrinkage strengths, in pseudo engagement events per week
        (spread over the 168 hours like the prior curve).
    cohort_strength_candidates : sequence of float
        Candidate cohort -> global shrinkage strengths, same unit.
    day_pooling_candidates : sequence of float
        Candidate weights in [0, 1] of the same hour on the other six days when smoothing.
    bandwidth_candidates : sequence of float
        Candidate standard deviations (hours) of the circular Gaussian smoothing.
    machine_open_seconds : float
        A response this soon after its send is treated as a likely machine open.
    machine_open_weight : float
        Weight of such a response (a human response weighs 1).
    activity_weight_candidates : sequence of float
        Candidate weights of one engagement hour relative to one email response.
    sharpness_candidates : sequence of float
        Candidate powers applied to the posterior curve (contrast calibration; 1 = none).
    rate_prior_strength : float
        Pseudo-sends shrinking a profile's response rate to the population's.
    n_alternatives : int
        Next-best send times returned by :meth:`best_send_time`.
    default_quiet_hours : (int, int) or None
        Local quiet hours used when the caller gives none, ``[start, end)``; may wrap midnight.
    holdout_days : float
        Length of the internal held-out period (end of the training data) for model selection.
    basis_profile_min_weight : float
        Minimum share of a profile's curve that comes from its own data for ``basis="profile"``.
    tz_min_events : int
        Minimum engagement hours before a time zone is inferred from behaviour.
    tz_min_posterior : float
        Minimum posterior of the best UTC offset (uniform prior over candidates) to infer a zone.
    tz_candidates : sequence of str or None
        Zones considered for inference; None means every known zone of the training profiles.
    non_engagement_events : sequence of str
        Event types that are not engagement (besides email sends, handled as exposure).

    Attributes
    ----------
    as_of_ : Timestamp
        Training cutoff (UTC).
    profile_ids_ : Index
        Profiles with a curve (sorted): every profile with events before ``as_of``, plus the
        profiles listed in ``timezones``.
    local_shape_, local_shape_sd_ : ndarray (n_profiles, 168), float32
        Posterior relative intensity (mean 1) per local hour of week, and its sd.
    local_curve_, local_curve_sd_ : ndarray (n_profiles, 168)
        Calibrated P(engage | send at local hour of week h) and its sd (derived).
    curve_, curve_sd_ : ndarray (n_profiles, 168)
        The same in UTC hour of week (hour 0 = Monday 00:00 UTC), zone offsets at ``as_of``.
    timing_ : ndarray (n_profiles, 168)
        ``local_shape_`` normalised over the week: when the profile engages.
    best_hour_, best_local_hour_ : ndarray (n_profiles,)
        Best UTC / local hour of week.
    timezone_, timezone_source_, basis_ : ndarray of str (n_profiles,)
        Zone used; ``known`` / ``inferred`` / ``utc``; ``profile`` / ``cohort`` / ``global``.
    data_weight_ : ndarray (n_profiles,)
        Share of the curve that comes from the profile's own evidence (drives ``basis``).
    rate_, global_rate_ : per-profile and population response rate per send (or activity rate
        per hour when ``probability_kind_ == "activity"``).
    calibration_ : dict or None
        Platt parameters of the probability, fitted on the internal held-out sends.
    prior_strength_, cohort_strength_, day_pooling_, bandwidth_, activity_weight_, sharpness_
        The selected hyper-parameters; ``selection_`` holds the held-out scores of every
        combination tried.
    """

    def __init__(
        self,
        prior_strength_candidates: Sequence[float] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
        cohort_strength_candidates: Sequence[float] = (30.0, 300.0, 3000.0),
        day_pooling_candidates: Sequence[float] = (0.1, 0.3, 1.0),
        bandwidth_candidates: Sequence[float] = (1.0, 1.5, 2.5),
        machine_open_seconds: float = 120.0,
        machine_open_weight: float = 0.1,
        activity_weight_candidates: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
        sharpness_candidates: Sequence[float] = (0.8, 1.0, 1.25, 1.5, 2.0),
        rate_prior_strength: float = 5.0,
        n_alternatives: int = 3,
        default_quiet_hours: tuple[int, int] | None = None,
        holdout_days: float = 21.0,
        basis_profile_min_weight: float = 0.3,
        tz_min_events: int = 8,
        tz_min_posterior: float = 0.8,
        tz_candidates: Sequence[str] | None = None,
        non_engagement_events: Sequence[str] = (
            "ad_impression",
            "email_bounce",
            "email_unsubscribe",
            "email_delivered",
        ),
    ) -> None:
        self.prior_strength_candidates = prior_strength_candidates
        self.cohort_strength_candidates = cohort_strength_candidates
        self.day_pooling_candidates = day_pooling_candidates
        self.bandwidth_candidates = bandwidth_candidates
        self.machine_open_seconds = machine_open_seconds
        self.machine_open_weight = machine_open_weight
        self.activity_weight_candidates = activity_weight_candidates
        self.sharpness_candidates = sharpness_candidates
        self.rate_prior_strength = rate_prior_strength
        self.n_alternatives = n_alternatives
        self.default_quiet_hours = default_quiet_hours
        self.holdout_days = holdout_days
        self.basis_profile_min_weight = basis_profile_min_weight
        self.tz_min_events = tz_min_events
        self.tz_min_posterior = tz_min_posterior
        self.tz_candidates = tz_candidates
        self.non_engagement_events = non_engagement_events

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_settings(cls, settings: Any) -> SendTimeModel:
        """Build from ``Settings.send_time`` (a :class:`dmp_ml.settings.SendTimeSettings`)."""
        quiet = settings.default_quiet_hours
        return cls(
            prior_strength_candidates=tuple(settings.prior_strength_candidates),
            cohort_strength_candidates=tuple(settings.cohort_strength_candidates),
            day_pooling_candidates=tuple(settings.day_pooling_candidates),
            bandwidth_candidates=tuple(settings.bandwidth_candidates),
            machine_open_seconds=settings.machine_open_seconds,
            machine_open_weight=settings.machine_open_weight,
            activity_weight_candidates=tuple(settings.activity_weight_candidates),
            sharpness_candidates=tuple(settings.sharpness_candidates),
            rate_prior_strength=settings.rate_prior_strength,
            n_alternatives=settings.n_alternatives,
            default_quiet_hours=tuple(quiet) if quiet is not None else None,
            holdout_days=settings.holdout_days,
            basis_profile_min_weight=settings.basis_profile_min_weight,
            tz_min_events=settings.tz_min_events,
            tz_min_posterior=settings.tz_min_posterior,
            tz_candidates=tuple(settings.tz_candidates) if settings.tz_candidates else None,
            non_engagement_events=tuple(settings.non_engagement_events),
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters (scikit-learn convention)."""
        return {name: getattr(self, name) for name in _PARAM_NAMES}

    def set_params(self, **params: Any) -> SendTimeModel:
        for name, value in params.items():
            if name not in _PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r}")
            setattr(self, name, value)
        return self

    # ---------------------------------------------------------------- fit

    def fit(
        self,
        events: pd.DataFrame,
        as_of: pd.Timestamp | str,
        timezones: pd.Series | None = None,
    ) -> SendTimeModel:
        """Fit the curves from resolved events strictly before ``as_of``.

        Parameters
        ----------
        events : DataFrame
            Canonical events whose ``profile_id`` is the resolved profile (rows with a missing
            ``profile_id`` are ignored), restricted to eligible profiles.
        as_of : Timestamp
            Training cutoff (UTC; a naive value is read as UTC). Only events before it are used.
        timezones : Series, optional
            IANA time zone per profile (index ``profile_id``); NA or invalid names count as
            unknown. Profiles listed here without events still get a (cohort) curve.
        """
        self._check_params()
        as_of_ts = _utc_timestamp(as_of, "as_of", DataContractError)
        raw = _extract(events, as_of_ts, self.non_engagement_events)
        profile_index = _profile_universe(raw["profile_id"], timezones)
        if len(profile_index) == 0:
            raise InsufficientDataError("send time: no profile has events before as_of")
        codes = profile_index.get_indexer(raw["profile_id"])
        as_of_sec = int(as_of_ts.value // 1_000_000_000)
        full = _evidence(raw, codes, as_of_sec, self.machine_open_seconds, self.machine_open_weight)
        if len(full.act_p) == 0 and len(full.send_p) == 0:
            raise InsufficientDataError("send time: no engagement events before as_of")
        n = len(profile_index)

        # ---- time zones: known, inferred from behaviour, else UTC
        known = _known_zones(profile_index, timezones)
        zone_of, source, mixture = self._assign_zones(known, full, n, as_of_sec)
        zones, zone_code = np.unique(zone_of, return_inverse=True)
        zones = [str(z) for z in zones]
        zone_code = zone_code.astype(np.int64)
        # cohorts are zones; profiles of unknown zone form a cohort of their own
        cohort_key = np.where(source == 2, _UNKNOWN_COHORT, zone_of)
        cohort_names, cohort_code = np.unique(cohort_key, return_inverse=True)
        cohort_names = [str(c) for c in cohort_names]
        converter = _ZoneConverter(zones)
        if mixture is not None:
            mixture.link(cohort_names)

        # ---- model selection on an internal time split
        split_sec = as_of_sec - int(self.holdout_days * 86400)
        selection = self._select(
            raw,
            codes,
            n,
            zone_code,
            cohort_code,
            len(cohort_names),
            source,
            converter,
            split_sec,
            mixture,
            full,
            as_of_sec,
        )
        alpha = selection["prior_strength"]
        beta = selection["cohort_strength"]
        rho = selection["day_pooling"]
        bandwidth = selection["bandwidth"]
        activity_weight = selection["activity_weight"]
        sharpness = selection["sharpness"]

        # ---- final fit on everything before as_of
        counts = _count(full, n, zone_code, converter)
        kind = "rate" if counts.sends.sum() > 0 and counts.responses.sum() > 0 else "activity"
        pooled = _pool(counts, cohort_code, len(cohort_names), source, self.rate_prior_strength)
        smoothed = _smoothed(_smooth_parts(pooled, None, rho, bandwidth), activity_weight)
        fitted = _shapes(
            smoothed,
            cohort_code,
            alpha,
            beta,
            mixture=mixture,
            source=source,
            sharpness=sharpness,
        )
        rate, rate_global = _rates(
            counts, kind, self.rate_prior_strength, _span_hours(raw, as_of_sec)
        )
        calibration = selection.get("calibration") if kind == "rate" else None

        weight = fitted["data_weight"]
        basis = np.where(
            weight >= self.basis_profile_min_weight,
            0,
            np.where(source == 2, 2, 1),
        ).astype(np.int8)

        self.as_of_ = as_of_ts
        self.profile_ids_ = profile_index
        self.zones_ = zones
        self.zone_code_ = zone_code
        self.timezone_source_code_ = source.astype(np.int8)
        self.cohorts_ = cohort_names
        self.cohort_code_ = cohort_code.astype(np.int64)
        self.local_shape_ = fitted["shape"].astype(np.float32)
        self.local_shape_sd_ = fitted["shape_sd"].astype(np.float32)
        self.calibration_ = calibration
        self.global_shape_ = fitted["global_shape"]
        self.cohort_shapes_ = fitted["cohort_shapes"]
        self.rate_ = rate
        self.global_rate_ = float(rate_global)
        self.data_weight_ = weight
        self.basis_code_ = basis
        self.n_engagement_hours_ = counts.activity.sum(axis=1)
        self.n_sends_ = counts.sends.sum(axis=1)
        self.probability_kind_ = kind
        self.prior_strength_ = float(alpha)
        self.cohort_strength_ = float(beta)
        self.bandwidth_ = float(bandwidth)
        self.activity_weight_ = float(activity_weight)
        self.sharpness_ = float(sharpness)
        self.day_pooling_ = float(rho)
        self.selection_ = selection
        self.n_events_used_ = int(len(full.act_p) + len(full.send_p))
        logger.info(
            "send time: %d profiles, %d zones; selected prior %.3g, cohort %.3g, day pooling "
            "%.2g, bandwidth %.2g h, activity weight %.2g, sharpness %.2g",
            n,
            len(zones),
            alpha,
            beta,
            rho,
            bandwidth,
            activity_weight,
            sharpness,
        )
        return self

    def _check_params(self) -> None:
        for name in ("prior_strength_candidates", "cohort_strength_candidates"):
            values = list(getattr(self, name))
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{name} must be non-empty and positive")
        pools = list(self.day_pooling_candidates)
        if not pools or any(not 0 <= v <= 1 for v in pools):
            raise ValueError("day_pooling_candidates must be non-empty and within [0, 1]")
        for name in ("bandwidth_candidates", "activity_weight_candidates"):
            values = list(getattr(self, name))
            if not values or any(v < 0 for v in values):
                raise ValueError(f"{name} must be non-empty and >= 0")
        sharp = list(self.sharpness_candidates)
        if not sharp or any(v <= 0 for v in sharp):
            raise ValueError("sharpness_candidates must be non-empty and positive")
        if self.default_quiet_hours is not None:
            try:
                _check_quiet_hours(self.default_quiet_hours)
            except RequestError as exc:
                raise ValueError(f"default_quiet_hours: {exc.message}") from exc

    def _assign_zones(
        self, known: np.ndarray, ev: _Evidence, n: int, as_of_sec: int
    ) -> tuple[np.ndarray, np.ndarray, _ZoneMixture | None]:
        """Zone name and source code (0 known, 1 inferred, 2 utc) per profile.

        A profile without a known zone is compared, in each candidate zone, with a mixture of a
        personal habit hour (free) and the population's local-time activity curve (from profiles
        of known zone). When the posterior (uniform prior over candidates) within one hour of
        the best offset reaches ``tz_min_posterior`` the zone is inferred.
        Otherwise the profile stays in UTC, and the returned mixture (posterior with the
        population's zone shares as prior, likelihood tempered) serves as its prior curve.
        """
        zone_of = np.where(pd.isna(known), "UTC", known).astype(object)
        source = np.where(pd.isna(known), 2, 0).astype(np.int64)
        unknown = source == 2
        if not unknown.any() or (~unknown).sum() == 0:
            return zone_of, source, None
        known_names, known_counts = np.unique(known[~unknown].astype(str), return_counts=True)
        candidates = list(self.tz_candidates) if self.tz_candidates else list(known_names)
        candidates = [z for z in dict.fromkeys([*candidates, "UTC"]) if _valid_zone(z)]
        # population local-time activity curve from profiles of known zone
        names = [str(z) for z in known_names]
        conv = _ZoneConverter(names)
        zmap = {z: i for i, z in enumerate(names)}
        kz = np.full(n, -1, dtype=np.int64)
        kz[~unknown] = [zmap[str(z)] for z in known[~unknown]]
        mask = kz[ev.act_p] >= 0
        how = conv.local_how(ev.act_sec[mask], kz[ev.act_p[mask]])
        pop = np.bincount(how, minlength=HOURS_PER_WEEK).astype(float)
        if pop.sum() < 10 * HOURS_PER_WEEK**0.5:
            return zone_of, source, None
        pop = _smooth(pop[None, :], _kernel(1.0, 0.0))[0]
        pop = np.maximum(pop / pop.sum(), 1e-4 / HOURS_PER_WEEK)
        pop /= pop.sum()
        umask = unknown[ev.act_p]
        up, usec = ev.act_p[umask], ev.act_sec[umask]
        n_hours = np.bincount(up, minlength=n)
        cconv = _ZoneConverter(candidates)
        scores = np.zeros((len(candidates), n))
        # each person = a personal habit hour (free, any hour of day) + the population's
        # local-time rhythm; only the latter says where the person is
        habit = _habit_kernel()
        for i in range(len(candidates)):
            ch = cconv.local_how(usec, np.full(len(usec), i, dtype=np.int64))
            generic = (1.0 - _HABIT_SHARE) * pop[ch]
            per_habit = np.stack(
                [
                    np.bincount(
                        up,
                        weights=np.log(_HABIT_SHARE * habit[h, ch % 24] / 7 + generic),
                        minlength=n,
                    )
                    for h in range(24)
                ]
            )
            top = per_habit.max(axis=0)
            scores[i] = top + np.log(np.exp(per_habit - top).mean(axis=0))
        offsets = cconv.offsets_at(as_of_sec)
        popularity = np.array(
            [known_counts[names.index(z)] if z in names else 0 for z in candidates], dtype=float
        )
        # prior mixture for profiles that stay in UTC: population shares x tempered likelihood
        share = (popularity + 0.5) / (popularity + 0.5).sum()
        tempered = _TZ_TEMPERATURE * scores
        mix = np.log(share)[:, None] + tempered - tempered.max(axis=0, keepdims=True)
        mix = np.exp(mix - mix.max(axis=0, keepdims=True))
        mix /= mix.sum(axis=0, keepdims=True)
        mixture = _ZoneMixture(candidates, offsets, np.where(unknown[None, :], mix, 0.0))

        eligible = unknown & (n_hours >= self.tz_min_events)
        if not eligible.any():
            return zone_of, source, mixture
        # posterior over candidates (uniform prior); mass grouped by UTC offset at as_of
        post = np.exp(scores - scores.max(axis=0, keepdims=True))
        post /= post.sum(axis=0, keepdims=True)
        groups, group_of = np.unique(offsets, return_inverse=True)
        mass = _group_sum(post, group_of, len(groups))  # (n_groups, n)
        best_group = mass.argmax(axis=0)
        # "clear": the posterior within +-1 hour of the winning offset (neighbouring offsets
        # are nearly indistinguishable and off by one hour at worst)
        near = (np.abs(groups[:, None] - groups[None, :]) <= 3600).astype(float)
        near_mass = (near[best_group] * mass.T).sum(axis=1)
        clear = eligible & (near_mass >= self.tz_min_posterior)
        # within the winning offset group prefer the zone with most known profiles
        in_group = group_of[:, None] == best_group[None, :]
        pick = np.where(in_group, popularity[:, None] + post, -1.0).argmax(axis=0)
        cand = np.array(candidates, dtype=object)
        zone_of = np.where(clear, cand[pick], zone_of)
        source = np.where(clear, 1, source)
        mixture.weights[:, clear] = 0.0
        logger.info(
            "send time: inferred a time zone for %d of %d profiles without one",
            int(clear.sum()),
            int(unknown.sum()),
        )
        return zone_of, source, mixture

    def _select(
        self,
        raw: dict[str, np.ndarray],
        codes: np.ndarray,
        n: int,
        zone_code: np.ndarray,
        cohort_code: np.ndarray,
        n_cohorts: int,
        source: np.ndarray,
        converter: _ZoneConverter,
        split_sec: int,
        mixture: _ZoneMixture | None,
        full: _Evidence,
        as_of_sec: int,
    ) -> dict[str, Any]:
        """Choose the hyper-parameters by held-out log-likelihood of engagement hours.

        The model is fitted on events before ``split_sec`` and scored on the engagement hours in
        ``[split_sec, as_of)`` (profiles with held-out engagement; at most 5,000, an evenly spread
        subset). The search is coordinate ascent over the candidate lists, starting from the
        middle candidates, until no single change improves the score. With the chosen values,
        the response probability is then calibrated on the held-out email sends (see
        :func:`_fit_calibration`).
        """
        space = {
            "prior_strength": sorted(float(v) for v in self.prior_strength_candidates),
            "cohort_strength": sorted(float(v) for v in self.cohort_strength_candidates),
            "day_pooling": sorted(float(v) for v in self.day_pooling_candidates),
            "bandwidth": sorted(float(v) for v in self.bandwidth_candidates),
            "activity_weight": sorted(float(v) for v in self.activity_weight_candidates),
            "sharpness": sorted(float(v) for v in self.sharpness_candidates),
        }
        current = {name: values[len(values) // 2] for name, values in space.items()}
        if all(len(values) == 1 for values in space.values()):
            return {**current, "heldout_loglik": None, "calibration": None, "evaluated": []}
        train = _evidence(
            raw, codes, split_sec, self.machine_open_seconds, self.machine_open_weight
        )
        after = _evidence(
            raw,
            codes,
            _max_sec(raw) + 1,
            self.machine_open_seconds,
            self.machine_open_weight,
            start_sec=split_sec,
        )
        if len(after.act_p) == 0 or len(train.act_p) + len(train.send_p) == 0:
            logger.warning("send time: no held-out engagement; using middle candidates")
            return {**current, "heldout_loglik": None, "calibration": None, "evaluated": []}
        counts = _count(train, n, zone_code, converter)
        pooled = _pool(counts, cohort_code, n_cohorts, source, self.rate_prior_strength)
        hp = after.act_p
        hh = converter.local_how(after.act_sec, zone_code[hp])
        per_profile = np.bincount(hp, minlength=n)
        rows = np.flatnonzero(per_profile > 0)
        if len(rows) > _SELECTION_MAX_PROFILES:
            rows = rows[np.linspace(0, len(rows) - 1, _SELECTION_MAX_PROFILES).astype(np.int64)]
        pos = np.full(n, -1, dtype=np.int64)
        pos[rows] = np.arange(len(rows))
        sel = pos[hp] >= 0
        hrow, hhow = pos[hp[sel]], hh[sel]
        n_rows = per_profile[rows]
        part_cache: dict[tuple[float, float], dict[str, dict[str, np.ndarray]]] = {}
        scores: dict[tuple[float, ...], float] = {}

        def score(params: dict[str, float]) -> float:
            key = tuple(params[name] for name in space)
            if key not in scores:
                pkey = (params["day_pooling"], params["bandwidth"])
                if pkey not in part_cache:
                    if len(part_cache) >= 4:  # bounded memory: drop the oldest
                        part_cache.pop(next(iter(part_cache)))
                    part_cache[pkey] = _smooth_parts(pooled, rows, *pkey)
                shape = _shapes(
                    _smoothed(part_cache[pkey], params["activity_weight"]),
                    cohort_code[rows],
                    params["prior_strength"],
                    params["cohort_strength"],
                    mixture=mixture,
                    source=source[rows],
                    rows=rows,
                    sharpness=params["sharpness"],
                    with_sd=False,
                )["shape"]
                log_total = np.log(shape.sum(axis=1))
                ll = np.bincount(hrow, weights=np.log(shape[hrow, hhow]), minlength=len(rows))
                scores[key] = float((ll / n_rows - log_total).mean())
            return scores[key]

        best = score(current)
        for _ in range(_SELECTION_MAX_ROUNDS):
            improved = False
            for name, values in space.items():
                for value in values:
                    trial = {**current, name: value}
                    value_score = score(trial)
                    if value_score > best + 1e-9:
                        best, current, improved = value_score, trial, True
            if not improved:
                break
        evaluated = [
            {**dict(zip(space, key, strict=True)), "heldout_loglik": value}
            for key, value in scores.items()
        ]
        # calibrate P(response | send at h) on the held-out sends (old enough to be answered)
        calibration = None
        if counts.sends.sum() > 0 and counts.responses.sum() > 0:
            parts = _smooth_parts(pooled, None, current["day_pooling"], current["bandwidth"])
            sm = _smoothed(parts, current["activity_weight"])
            shape = _shapes(
                sm,
                cohort_code,
                current["prior_strength"],
                current["cohort_strength"],
                mixture=mixture,
                source=source,
                sharpness=current["sharpness"],
            )["shape"]
            rate, _ = _rates(counts, "rate", self.rate_prior_strength, 1.0)
            late = (full.send_sec >= split_sec) & (full.send_sec < as_of_sec - _CALIBRATION_LAG)
            sp = full.send_p[late]
            show = converter.local_how(full.send_sec[late], zone_code[sp])
            calibration = _fit_calibration(rate[sp] * shape[sp, show], full.send_resp[late] >= 1)
        return {
            **current,
            "heldout_loglik": best,
            "heldout_profiles": int(len(rows)),
            "calibration": calibration,
            "evaluated": evaluated,
        }

    # ---------------------------------------------------------------- fitted views

    def _check_fitted(self) -> None:
        if not hasattr(self, "local_shape_"):
            raise NotFittedError("this SendTimeModel is not fitted yet; call fit() or load()")

    @property
    def timezone_(self) -> np.ndarray:
        """Time zone used per profile (known, inferred or UTC)."""
        self._check_fitted()
        return np.asarray(self.zones_, dtype=object)[self.zone_code_]

    @property
    def timezone_source_(self) -> np.ndarray:
        """``known`` / ``inferred`` / ``utc`` per profile."""
        self._check_fitted()
        return np.asarray(TIMEZONE_SOURCES, dtype=object)[self.timezone_source_code_]

    @property
    def basis_(self) -> np.ndarray:
        """``profile`` / ``cohort`` / ``global`` per profile: how much was learned from it."""
        self._check_fitted()
        return np.asarray(BASES, dtype=object)[self.basis_code_]

    def _utc_index(self) -> np.ndarray:
        """For each profile and UTC hour of week, the local hour of week at ``as_of``."""
        conv = _ZoneConverter(self.zones_)
        ref = int(self.as_of_.value // 1_000_000_000)
        offset_h = np.floor(conv.offsets_at(ref) / 3600).astype(np.int64)
        utc_how = np.arange(HOURS_PER_WEEK)
        return (utc_how[None, :] + offset_h[self.zone_code_][:, None]) % HOURS_PER_WEEK

    def _probability(
        self, codes: np.ndarray, how: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probability and its sd for profiles ``codes`` at local hours ``how`` (None: all)."""
        shape, sd = self.local_shape_[codes], self.local_shape_sd_[codes]
        if how is not None:
            shape = np.take_along_axis(shape, how, axis=1)
            sd = np.take_along_axis(sd, how, axis=1)
        return _probability(
            shape.astype(np.float64),
            sd.astype(np.float64),
            self.rate_[codes],
            self.probability_kind_,
            self.calibration_,
        )

    @property
    def local_curve_(self) -> np.ndarray:
        """P(engage | send at local hour of week h), shape (n_profiles, 168)."""
        self._check_fitted()
        return self._probability(np.arange(len(self.profile_ids_)))[0]

    @property
    def local_curve_sd_(self) -> np.ndarray:
        """Posterior sd of :attr:`local_curve_`, shape (n_profiles, 168)."""
        self._check_fitted()
        return self._probability(np.arange(len(self.profile_ids_)))[1]

    @property
    def timing_(self) -> np.ndarray:
        """When each profile engages: the intensity normalised over the 168 local hours."""
        self._check_fitted()
        shape = np.maximum(self.local_shape_.astype(np.float64), 1e-12)
        return shape / shape.sum(axis=1, keepdims=True)

    @property
    def curve_(self) -> np.ndarray:
        """P(engage | send at UTC hour of week h), shape (n_profiles, 168), offsets at as_of."""
        self._check_fitted()
        return np.take_along_axis(self.local_curve_, self._utc_index(), axis=1)

    @property
    def curve_sd_(self) -> np.ndarray:
        """Posterior standard deviation of :attr:`curve_`, shape (n_profiles, 168)."""
        self._check_fitted()
        return np.take_along_axis(self.local_curve_sd_, self._utc_index(), axis=1)

    @property
    def best_local_hour_(self) -> np.ndarray:
        """Best local hour of week per profile (0 = local Monday 00:00)."""
        self._check_fitted()
        return self.local_shape_.argmax(axis=1)

    @property
    def best_hour_(self) -> np.ndarray:
        """Best UTC hour of week per profile, using each zone's UTC offset at ``as_of``."""
        self._check_fitted()
        return np.take_along_axis(self.local_shape_, self._utc_index(), axis=1).argmax(axis=1)

    def profiles_frame(self) -> pd.DataFrame:
        """One row per profile: zone, basis, best hour, its probability and posterior sd."""
        self._check_fitted()
        best = self.best_local_hour_
        prob, prob_sd = self._probability(np.arange(len(best)), best[:, None])
        return pd.DataFrame(
            {
                "profile_id": pd.array(self.profile_ids_, dtype="string"),
                "timezone": pd.array(self.timezone_, dtype="string"),
                "timezone_source": pd.array(self.timezone_source_, dtype="string"),
                "basis": pd.array(self.basis_, dtype="string"),
                "best_hour_of_week": self.best_hour_,
                "best_local_hour_of_week": best,
                "probability": prob[:, 0],
                "probability_sd": prob_sd[:, 0],
                "data_weight": self.data_weight_,
                "engagement_hours": self.n_engagement_hours_,
                "email_sends": self.n_sends_,
            }
        )

    # ---------------------------------------------------------------- decision

    def best_send_time(
        self,
        profile_ids: Iterable[str] | None = None,
        window_start: pd.Timestamp | str | None = None,
        window_hours: int = 24,
        quiet_hours: tuple[int, int] | None = None,
        timezone: str | None = None,
    ) -> SendTimeDecision:
        """The best allowed send hour in ``[window_start, window_start + window_hours)``.

        Parameters
        ----------
        profile_ids : iterable of str, optional
            Profiles to decide for (duplicates are answered once); None means every profile.
        window_start : Timestamp or ISO text, optional
            Start of the window (naive means UTC), rounded up to the next whole hour; None means
            the model's ``as_of``. The library never reads the clock: callers pass "now".
        window_hours : int
            Window length, 1..168 hours; candidate send times are the whole UTC hours inside it.
        quiet_hours : (start, end), optional
            Recipient-local hours ``[start, end)`` that must not be used, 0..23, may wrap midnight
            (``(22, 7)``: no sends from 22:00 to 06:59 local). None uses ``default_quiet_hours``;
            ``()`` means none.
        timezone : str, optional
            IANA zone that replaces every recipient's time zone (for reading their local-time
            curve and for quiet hours).

        Returns
        -------
        SendTimeDecision
            ``frame`` with one row per known profile, ``unknown_ids`` for the rest.

        Raises
        ------
        RequestError
            An argument is invalid (``field`` names it).
        UnknownProfileError
            Ids were given and none of them is known.
        """
        self._check_fitted()
        hours = _check_window_hours(window_hours)
        quiet = quiet_hours if quiet_hours is not None else self.default_quiet_hours
        if quiet is not None and not isinstance(quiet, str) and len(quiet) == 0:
            quiet = None  # an explicit () switches the default quiet hours off
        if quiet is not None:
            quiet = _check_quiet_hours(quiet)
        if timezone is not None and not _valid_zone(timezone):
            raise RequestError("timezone", f"unknown time zone {timezone!r}")
        if window_start is None:
            start = self.as_of_
        else:
            start = _utc_timestamp(window_start, "window_start", RequestError)
        start = start.ceil("h")

        if profile_ids is None:
            ids = pd.Index(self.profile_ids_)
            unknown: list[str] = []
            codes = np.arange(len(ids))
        else:
            if isinstance(profile_ids, str):
                raise RequestError("profile_ids", "expected a list of ids, got one string")
            requested = pd.Index(pd.unique(pd.array([str(i) for i in profile_ids], "string")))
            found = self.profile_ids_.get_indexer(requested)
            unknown = requested[found < 0].tolist()
            if len(requested) and (found >= 0).sum() == 0:
                raise UnknownProfileError(
                    f"none of the {len(requested)} requested profile ids is known"
                )
            ids = requested[found >= 0]
            codes = found[found >= 0]

        slots = start.value // 3_600_000_000_000 + np.arange(hours, dtype=np.int64)
        if timezone is not None:
            conv = _ZoneConverter([timezone])
            zcode = np.zeros(len(codes), dtype=np.int64)
            zone_names = np.full(len(codes), timezone, dtype=object)
        else:
            conv = _ZoneConverter(self.zones_)
            zcode = self.zone_code_[codes]
            zone_names = np.asarray(self.zones_, dtype=object)[zcode]
        offsets = conv.offsets(int(slots[0]), hours)  # (n_zones, hours) seconds
        local_h = (slots[None, :] * 3600 + offsets) // 3600  # local epoch hour (floor)
        how_table = (local_h + _EPOCH_HOW_SHIFT) % HOURS_PER_WEEK
        hod_table = local_h % 24
        how = how_table[zcode]  # (n, hours)
        score = self._probability(codes, how)[0]
        if quiet is not None:
            blocked = _in_quiet(hod_table, quiet)[zcode]
            score = np.where(blocked, -np.inf, score)
        k = min(1 + int(self.n_alternatives), hours)
        # best first; ties go to the earliest slot (stable sort)
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(score, order, axis=1)
        valid = np.isfinite(top)
        slot_sec = slots[order] * 3600
        ok = valid[:, 0]
        send_col = pd.Series(pd.to_datetime(np.where(ok, slot_sec[:, 0], 0), unit="s", utc=True))
        send_col = send_col.where(ok)
        prob = np.where(ok, top[:, 0], np.nan)
        how_utc = pd.Series((slots[order[:, 0]] + _EPOCH_HOW_SHIFT) % HOURS_PER_WEEK, dtype="Int64")
        how_utc = how_utc.where(ok)
        local_text = _local_text(slot_sec[:, 0], offsets[zcode, order[:, 0]], ok)
        alternatives = _alternatives(slot_sec[:, 1:], top[:, 1:], valid[:, 1:])
        frame = pd.DataFrame(
            {
                "profile_id": pd.array(ids, dtype="string"),
                "send_at": send_col.array,
                "hour_of_week": how_utc.array,
                "probability": prob,
                "basis": pd.array(
                    np.asarray(BASES, dtype=object)[self.basis_code_[codes]], "string"
                ),
                "timezone": pd.array(zone_names, dtype="string"),
                "timezone_source": pd.array(
                    np.asarray(TIMEZONE_SOURCES, dtype=object)[self.timezone_source_code_[codes]],
                    "string",
                ),
                "local_send_at": local_text.array,
                "alternatives": alternatives,
            }
        )
        if timezone is not None:
            frame["timezone_source"] = pd.array(["override"] * len(frame), dtype="string")
        if unknown:
            logger.info("send time: %d unknown profile ids", len(unknown))
        return SendTimeDecision(
            frame=frame, unknown_ids=unknown, window_start=start, window_hours=hours
        )

    # per-profile fitted attributes, row-aligned with ``profile_ids_``
    _PROFILE_ROWS = (
        "zone_code_",
        "timezone_source_code_",
        "cohort_code_",
        "basis_code_",
        "rate_",
        "data_weight_",
        "n_engagement_hours_",
        "n_sends_",
        "local_shape_",
        "local_shape_sd_",
    )

    def take_profiles(self, rows: np.ndarray) -> SendTimeModel:
        """Keep only the profiles at positions ``rows`` (in place; erasure and refresh)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.profile_ids_ = pd.Index(self.profile_ids_[rows], name="profile_id")
        for name in self._PROFILE_ROWS:
            setattr(self, name, np.asarray(getattr(self, name))[rows])
        return self

    # ---------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> Path:
        """Write the fitted model to ``directory`` (JSON + Parquet + NPZ; no pickle)."""
        self._check_fitted()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": _jsonable(self.get_params()),
            "as_of": self.as_of_.isoformat(),
            "zones": list(self.zones_),
            "cohorts": list(self.cohorts_),
            "probability_kind": self.probability_kind_,
            "global_rate": self.global_rate_,
            "prior_strength": self.prior_strength_,
            "cohort_strength": self.cohort_strength_,
            "bandwidth": self.bandwidth_,
            "activity_weight": self.activity_weight_,
            "sharpness": self.sharpness_,
            "calibration": self.calibration_,
            "day_pooling": self.day_pooling_,
            "selection": _jsonable(self.selection_),
            "n_events_used": self.n_events_used_,
        }
        profiles = pd.DataFrame(
            {
                "profile_id": pd.array(self.profile_ids_, dtype="string"),
                "zone_code": self.zone_code_.astype(np.int32),
                "timezone_source_code": self.timezone_source_code_.astype(np.int8),
                "cohort_code": self.cohort_code_.astype(np.int32),
                "basis_code": self.basis_code_.astype(np.int8),
                "rate": self.rate_.astype(np.float64),
                "data_weight": self.data_weight_.astype(np.float64),
                "engagement_hours": self.n_engagement_hours_.astype(np.float64),
                "email_sends": self.n_sends_.astype(np.float64),
            }
        )
        profiles.to_parquet(path / _FILES[1], index=False)
        np.savez(
            path / _FILES[2],
            local_shape=self.local_shape_,
            local_shape_sd=self.local_shape_sd_,
            global_shape=self.global_shape_,
            cohort_shapes=self.cohort_shapes_,
        )
        (path / _FILES[0]).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SendTimeModel:
        """Read a model written by :meth:`save`; raises BundleError when files are missing."""
        path = Path(directory)
        missing = [name for name in _FILES if not (path / name).exists()]
        if missing:
            raise BundleError(f"send-time model in {path} is missing {', '.join(missing)}")
        try:
            meta = json.loads((path / _FILES[0]).read_text(encoding="utf-8"))
            profiles = pd.read_parquet(path / _FILES[1])
            with np.load(path / _FILES[2], allow_pickle=False) as arrays:
                curves = {key: arrays[key] for key in arrays.files}
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"send-time model in {path} is unreadable: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"send-time model format {meta.get('format_version')!r} unsupported")
        params = dict(meta["params"])
        for key in (
            "prior_strength_candidates",
            "cohort_strength_candidates",
            "day_pooling_candidates",
            "bandwidth_candidates",
            "activity_weight_candidates",
            "sharpness_candidates",
            "non_engagement_events",
        ):
            params[key] = tuple(params[key])
        if params.get("default_quiet_hours") is not None:
            params["default_quiet_hours"] = tuple(params["default_quiet_hours"])
        if params.get("tz_candidates") is not None:
            params["tz_candidates"] = tuple(params["tz_candidates"])
        model = cls(**params)
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.profile_ids_ = pd.Index(profiles["profile_id"].astype("string"), name="profile_id")
        model.zones_ = list(meta["zones"])
        model.zone_code_ = profiles["zone_code"].to_numpy(np.int64)
        model.timezone_source_code_ = profiles["timezone_source_code"].to_numpy(np.int8)
        model.cohorts_ = list(meta["cohorts"])
        model.cohort_code_ = profiles["cohort_code"].to_numpy(np.int64)
        model.basis_code_ = profiles["basis_code"].to_numpy(np.int8)
        model.rate_ = profiles["rate"].to_numpy(np.float64)
        model.data_weight_ = profiles["data_weight"].to_numpy(np.float64)
        model.n_engagement_hours_ = profiles["engagement_hours"].to_numpy(np.float64)
        model.n_sends_ = profiles["email_sends"].to_numpy(np.float64)
        model.local_shape_ = curves["local_shape"]
        model.local_shape_sd_ = curves["local_shape_sd"]
        model.global_shape_ = curves["global_shape"]
        model.cohort_shapes_ = curves["cohort_shapes"]
        model.probability_kind_ = meta["probability_kind"]
        model.global_rate_ = float(meta["global_rate"])
        model.prior_strength_ = float(meta["prior_strength"])
        model.cohort_strength_ = float(meta["cohort_strength"])
        model.bandwidth_ = float(meta["bandwidth"])
        model.activity_weight_ = float(meta["activity_weight"])
        model.sharpness_ = float(meta["sharpness"])
        model.calibration_ = meta["calibration"]
        model.day_pooling_ = float(meta["day_pooling"])
        model.selection_ = meta["selection"]
        model.n_events_used_ = int(meta["n_events_used"])
        if model.local_shape_.shape != (len(model.profile_ids_), HOURS_PER_WEEK):
            raise BundleError("send-time model curves do not match its profile list")
        return model


_PARAM_NAMES = (
    "prior_strength_candidates",
    "cohort_strength_candidates",
    "day_pooling_candidates",
    "bandwidth_candidates",
    "machine_open_seconds",
    "machine_open_weight",
    "activity_weight_candidates",
    "sharpness_candidates",
    "rate_prior_strength",
    "n_alternatives",
    "default_quiet_hours",
    "holdout_days",
    "basis_profile_min_weight",
    "tz_min_events",
    "tz_min_posterior",
    "tz_candidates",
    "non_engagement_events",
)


def best_send_time(
    model: SendTimeModel,
    profile_ids: Iterable[str] | None = None,
    window_start: pd.Timestamp | str | None = None,
    window_hours: int = 24,
    quiet_hours: tuple[int, int] | None = None,
    timezone: str | None = None,
) -> SendTimeDecision:
    """Functional form of :meth:`SendTimeModel.best_send_time`."""
    return model.best_send_time(
        profile_ids,
        window_start=window_start,
        window_hours=window_hours,
        quiet_hours=quiet_hours,
        timezone=timezone,
    )


# --------------------------------------------------------------------------------------------
# evaluation


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
    model._check_fitted()
    as_of_sec = int(model.as_of_.value // 1_000_000_000)
    index = model.profile_ids_
    n = len(index)
    # the model reads hours in its own zones; the baselines in ``timezones`` where given
    model_conv = _ZoneConverter(model.zones_)
    base_names = list(model.zones_)
    base_code = model.zone_code_.copy()
    if timezones is not None:
        known = _known_zones(index, timezones)
        has = ~pd.isna(known)
        base_names += sorted({str(z) for z in known[has]} - set(base_names))
        zmap = {z: i for i, z in enumerate(base_names)}
        base_code[has] = [zmap[str(z)] for z in known[has]]
    base_conv = _ZoneConverter(base_names)

    raw = _extract(events_after, None, model.non_engagement_events)
    codes = index.get_indexer(raw["profile_id"])
    machine = (model.machine_open_seconds, model.machine_open_weight)
    after = _evidence(raw, codes, _max_sec(raw) + 1, *machine, start_sec=as_of_sec)
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
        traw = _extract(training_events, model.as_of_, model.non_engagement_events)
        before = _evidence(traw, index.get_indexer(traw["profile_id"]), as_of_sec, *machine)
    else:
        before = _evidence(raw, codes, as_of_sec, *machine)
    if len(before.act_p) == 0:
        logger.warning("send time evaluation: no rows before the cutoff; baselines lack history")
    how_before = base_conv.local_how(before.act_sec, base_code[before.act_p])
    past = np.bincount(
        before.act_p * HOURS_PER_WEEK + how_before, minlength=n * HOURS_PER_WEEK
    ).reshape(n, HOURS_PER_WEEK)
    past = past.astype(float)
    glob = past.sum(axis=0)
    if glob.sum() == 0:
        glob = model.global_shape_.astype(float).copy()
    glob = _smooth(glob[None, :], _kernel(model.bandwidth_, 0.0))[0]
    glob = np.maximum(glob / glob.sum(), 1e-6)
    glob /= glob.sum()

    def loglik(q: np.ndarray, hh: np.ndarray, subset: np.ndarray | None = None) -> float:
        ll = np.bincount(hp, weights=np.log(q[hp, hh]), minlength=n)
        sel = evaluated if subset is None else subset
        return float((ll[sel] / per_profile[sel]).mean())

    def hits(best: np.ndarray, actual: np.ndarray, subset: np.ndarray | None = None) -> float:
        sel = evaluated if subset is None else subset
        return float(_circular_hits(best[sel], actual[sel]).mean())

    q_model = model.timing_
    model_hod = _daily(q_model).argmax(axis=1)
    q_global = np.broadcast_to(glob, (n, HOURS_PER_WEEK))
    global_hod = np.full(n, int(_daily(glob[None, :]).argmax()))
    has_past = past.sum(axis=1) > 0
    own_hod = np.where(has_past, _daily(past).argmax(axis=1), global_hod)

    def own_curve(pseudo: float) -> np.ndarray:
        q = (past + pseudo) / (past.sum(axis=1, keepdims=True) + pseudo * HOURS_PER_WEEK)
        return np.where(has_past[:, None], q, glob[None, :])

    own_scores = {p: loglik(own_curve(p), hh_base) for p in _OWN_PSEUDO_COUNTS}
    best_pseudo = max(own_scores, key=own_scores.__getitem__)
    q_own = own_curve(best_pseudo)

    result: dict[str, Any] = {
        "n_profiles": int(evaluated.sum()),
        "n_engagement_hours": int(len(hp)),
        "model": {
            "hit_rate": hits(model_hod, next_model),
            "loglik": loglik(q_model, hh_model),
        },
        "global_hour": {
            "hit_rate": hits(global_hod, next_base),
            "loglik": loglik(q_global, hh_base),
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
                    "loglik": loglik(q_model, hh_model, sel),
                    "global_hour_loglik": loglik(q_global, hh_base, sel),
                    "own_hour_loglik": loglik(q_own, hh_base, sel),
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

    ``sends``: one row per email send after ``as_of`` that had ``_CALIBRATION_LAG`` to be
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
    model._check_fitted()
    as_of_sec = int(model.as_of_.value // 1_000_000_000)
    index = model.profile_ids_
    raw = _extract(events, None, model.non_engagement_events)
    codes = index.get_indexer(raw["profile_id"])
    end_sec = _max_sec(raw) + 1
    machine = (model.machine_open_seconds, model.machine_open_weight)
    ev = _evidence(raw, codes, end_sec, *machine, start_sec=as_of_sec)
    conv = _ZoneConverter(model.zones_)
    keep = (ev.send_sec >= as_of_sec) & (ev.send_sec < end_sec - _CALIBRATION_LAG)
    sp, ssec = ev.send_p[keep], ev.send_sec[keep]
    how = conv.local_how(ssec, model.zone_code_[sp])
    probability = model._probability(sp, how[:, None])[0][:, 0] if len(sp) else np.zeros(0)
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
    true_off = _ZoneConverter([str(z) for z in true_names]).offsets_at(ref)[true_code]
    out: dict[str, Any] = {"n_profiles": int(len(pos))}
    for name, (hod, offset) in best.items():
        shift = np.round((true_off - offset[pos]) / 3600).astype(np.int64)
        local = (hod[pos] + shift) % 24
        d = np.abs(local - planted) % 24
        d = np.minimum(d, 24 - d)
        out[name] = {"exact": float((d == 0).mean()), "within_1h": float((d <= 1).mean())}
    return out


# --------------------------------------------------------------------------------------------
# evidence


def _extract(
    events: pd.DataFrame, as_of: pd.Timestamp | None, non_engagement: Sequence[str]
) -> dict[str, np.ndarray]:
    """Numpy arrays of the rows that matter (profile set, before ``as_of`` when given)."""
    missing = [c for c in _REQUIRED_COLUMNS if c not in events.columns]
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
    etype = frame["event_type"].astype("string")
    is_send = (etype == _EMAIL_SEND).fillna(False).to_numpy(bool)
    is_resp = etype.isin(_EMAIL_RESPONSES).fillna(False).to_numpy(bool)
    is_other = ~(is_send | is_resp) & ~etype.isin(list(non_engagement)).fillna(True).to_numpy(bool)
    campaign = frame["campaign_id"].astype("string")
    camp_codes, _ = pd.factorize(campaign, use_na_sentinel=True)
    return {
        "profile_id": frame["profile_id"].astype("string").to_numpy(dtype=object),
        "sec": sec,
        "is_send": is_send,
        "is_resp": is_resp,
        "is_other": is_other,
        "campaign": camp_codes.astype(np.int64),
    }


def _max_sec(raw: dict[str, np.ndarray]) -> int:
    return int(raw["sec"].max()) if len(raw["sec"]) else 0


def _evidence(
    raw: dict[str, np.ndarray],
    codes: np.ndarray,
    end_sec: int,
    machine_seconds: float,
    machine_weight: float,
    start_sec: int | None = None,
) -> _Evidence:
    """Sends with response weights, and engagement hours, for rows with time < ``end_sec``.

    With ``start_sec``, engagement hours are restricted to ``[start_sec, end_sec)`` while sends
    from any earlier time are still used to recognise machine opens.
    """
    sec = raw["sec"]
    ok = (codes >= 0) & (sec < end_sec)
    n_camp = int(raw["campaign"].max()) + 2 if len(raw["campaign"]) else 1
    # sends: first send per (profile, campaign)
    s = ok & raw["is_send"] & (raw["campaign"] >= 0)
    sp, ssec, sc = codes[s], sec[s], raw["campaign"][s]
    skey = sp * n_camp + sc
    order = np.lexsort((ssec, skey))
    skey, sp, ssec = skey[order], sp[order], ssec[order]
    first = np.r_[True, skey[1:] != skey[:-1]] if len(skey) else np.zeros(0, bool)
    skey, sp, ssec = skey[first], sp[first], ssec[first]
    # responses linked to their send
    r = ok & raw["is_resp"]
    rp, rsec, rc = codes[r], sec[r], raw["campaign"][r]
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
    return _Evidence(sp, ssec, resp, act_p.astype(np.int64), act_sec.astype(np.int64))


def _count(ev: _Evidence, n: int, zone_code: np.ndarray, conv: _ZoneConverter) -> _Counts:
    size = n * HOURS_PER_WEEK
    sh = conv.local_how(ev.send_sec, zone_code[ev.send_p])
    ah = conv.local_how(ev.act_sec, zone_code[ev.act_p])
    skey = ev.send_p * HOURS_PER_WEEK + sh
    sends = np.bincount(skey, minlength=size).astype(float).reshape(n, HOURS_PER_WEEK)
    resp = np.bincount(skey, weights=ev.send_resp, minlength=size).reshape(n, HOURS_PER_WEEK)
    act = np.bincount(ev.act_p * HOURS_PER_WEEK + ah, minlength=size).astype(float)
    return _Counts(sends, resp, act.reshape(n, HOURS_PER_WEEK))


def _rates(
    counts: _Counts, kind: str, strength: float, span_hours: float
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


def _span_hours(raw: dict[str, np.ndarray], as_of_sec: int) -> float:
    if not len(raw["sec"]):
        return 1.0
    return (as_of_sec - int(raw["sec"].min())) / 3600.0


def _probability(
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


def _fit_calibration(raw: np.ndarray, outcome: np.ndarray) -> dict[str, float] | None:
    """Platt scaling of P(human response | send): ``logit p = a + b * logit raw`` (b > 0).

    The posterior curve is built from engagement *shape* times an average response rate, so its
    level drifts with time and its contrast follows activity more than responses; two
    parameters fitted on the held-out sends fix both without changing any ranking. None when
    there are too few sends or responses, or the fit is not increasing.
    """
    y = outcome.astype(float)
    if len(y) < _CALIBRATION_MIN_SENDS or y.sum() < _CALIBRATION_MIN_POSITIVES:
        return None
    clipped = np.clip(raw, _P_EPS, 1.0 - _P_EPS)
    x = np.log(clipped / (1.0 - clipped))
    beta = np.array([0.0, 1.0])
    for _ in range(50):  # Newton-Raphson on the logistic log-likelihood (tiny ridge)
        p = 1.0 / (1.0 + np.exp(-(beta[0] + beta[1] * x)))
        r, w = y - p, p * (1.0 - p)
        grad = np.array([r.sum(), (r * x).sum()]) - 1e-6 * beta
        sw, swx, swxx = w.sum(), (w * x).sum(), (w * x * x).sum()
        hess = np.array([[sw, swx], [swx, swxx]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.abs(step).max() < 1e-8:
            break
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


def _kernel(bandwidth: float, day_pooling: float) -> np.ndarray:
    """Circular smoothing kernel over the 168 hours (sums to 1)."""
    d = np.arange(HOURS_PER_WEEK)
    d = np.minimum(d, HOURS_PER_WEEK - d).astype(float)
    base = (d == 0).astype(float) if bandwidth <= 0 else np.exp(-0.5 * (d / bandwidth) ** 2)
    base /= base.sum()
    k = base.copy()
    for day in range(1, 7):
        k += day_pooling * np.roll(base, 24 * day)
    return k / k.sum()


def _smooth(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Circular convolution of each row of ``x`` with ``kernel`` (FFT)."""
    fk = np.fft.rfft(kernel)
    return np.fft.irfft(np.fft.rfft(x, axis=1) * fk[None, :], n=HOURS_PER_WEEK, axis=1)


@dataclass
class _Pooled:
    """Unsmoothed evidence per profile, summed per cohort and over the global pool.

    ``resp``: weighted responses at send hour; ``act``: engagement hours; ``expo``: sends times
    the profile's response rate (expected responses if the intensity were flat); ``mu``: mean
    engagement hours per hour-of-week bin.
    """

    resp: np.ndarray
    act: np.ndarray
    expo: np.ndarray
    mu: np.ndarray
    cohort: dict[str, np.ndarray]
    pool: dict[str, np.ndarray]


def _pool(
    counts: _Counts,
    cohort_code: np.ndarray,
    n_cohorts: int,
    source: np.ndarray,
    rate_strength: float,
) -> _Pooled:
    sends_tot = counts.sends.sum(axis=1)
    resp_tot = counts.responses.sum(axis=1)
    g = resp_tot.sum() / sends_tot.sum() if sends_tot.sum() > 0 else 0.0
    rate = (resp_tot + rate_strength * g) / (sends_tot + rate_strength)
    expo = rate[:, None] * counts.sends
    mu = counts.activity.sum(axis=1) / HOURS_PER_WEEK
    # the global pool: profiles whose zone is known or inferred (their local time is
    # meaningful) when there are any
    located = source != 2
    if counts.activity[located].sum() + counts.responses[located].sum() <= 0:
        located = np.ones(len(source), bool)
    parts = {"resp": counts.responses, "act": counts.activity, "expo": expo}
    cohort = {key: _group_sum(value, cohort_code, n_cohorts) for key, value in parts.items()}
    cohort["mu"] = np.bincount(cohort_code, weights=mu, minlength=n_cohorts)
    pool = {key: value[located].sum(axis=0) for key, value in parts.items()}
    pool["mu"] = np.array(mu[located].sum())
    return _Pooled(counts.responses, counts.activity, expo, mu, cohort, pool)


def _smooth_parts(
    pooled: _Pooled, rows: np.ndarray | None, rho: float, bandwidth: float
) -> dict[str, dict[str, np.ndarray]]:
    """Circularly smoothed responses, engagement hours and exposures (linear, so cohort and
    pool sums are smoothed after summing, over hours only: a population has data enough for its
    own day-of-week pattern)."""
    k = _kernel(bandwidth, rho)
    k_pop = _kernel(bandwidth, 0.0)
    take = (lambda x: x) if rows is None else (lambda x: x[rows])

    def parts(
        kernel: np.ndarray, resp: np.ndarray, act: np.ndarray, expo: np.ndarray, mu: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {
            "resp": _smooth(np.atleast_2d(resp), kernel),
            "act": _smooth(np.atleast_2d(act), kernel),
            "expo": _smooth(np.atleast_2d(expo), kernel),
            "mu": np.reshape(mu, (-1, 1)),
        }

    return {
        "rows": parts(k, take(pooled.resp), take(pooled.act), take(pooled.expo), take(pooled.mu)),
        "cohort": parts(k_pop, **pooled.cohort),
        "pool": parts(k_pop, **pooled.pool),
    }


def _smoothed(parts: dict[str, dict[str, np.ndarray]], activity_weight: float) -> dict:
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
        glob = _unit_mean(np.maximum(glob, 1e-3 * glob.mean()))
    else:
        glob = np.ones(HOURS_PER_WEEK)
    return {"y": ys, "e": es, "cohort_y": cy, "cohort_e": ce, "global": glob}


def _shapes(
    sm: dict[str, np.ndarray],
    cohort_code: np.ndarray,
    alpha: float,
    beta: float,
    mixture: _ZoneMixture | None = None,
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
    cohort = _unit_mean((b_bin * sm["global"][None, :] + sm["cohort_y"]) / (b_bin + sm["cohort_e"]))
    ys, es = sm["y"], sm["e"]
    prior = cohort[cohort_code]
    if mixture is not None and source is not None:
        utc = np.flatnonzero(source == 2)
        if len(utc):
            where = utc if rows is None else rows[utc]
            mixed = mixture.prior(cohort, sm["global"], where)
            prior[utc] = _unit_mean(np.maximum(mixed, 1e-12))
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


def _habit_kernel() -> np.ndarray:
    """Row h: distribution over the 24 hours of day of activity around habit hour h."""
    hod = np.arange(24)
    d = np.abs((hod[:, None] - hod[None, :] + 12) % 24 - 12)
    k = np.exp(-0.5 * (d / _HABIT_SD_HOURS) ** 2)
    return k / k.sum(axis=1, keepdims=True)


def _group_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the rows of ``values`` (n, k) per group code: (n_groups, k). No BLAS (threads spin)."""
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=n_groups)
    out = np.zeros((n_groups, values.shape[1]))
    present = counts > 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
    out[present] = np.add.reduceat(values[order], starts, axis=0)
    return out


def _weighted_rows(weights: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """``weights.T @ curves`` for few curves, (n_curves, n) x (n_curves, k) -> (n, k)."""
    out = np.zeros((weights.shape[1], curves.shape[1]))
    for i in range(len(curves)):
        out += weights[i][:, None] * curves[i][None, :]
    return out


def _unit_mean(x: np.ndarray) -> np.ndarray:
    m = x.mean(axis=-1, keepdims=True)
    return x / np.where(m > 0, m, 1.0)


def _daily(q: np.ndarray) -> np.ndarray:
    """Sum a (n, 168) curve over the seven days: (n, 24) by hour of day."""
    return q.reshape(q.shape[0], 7, 24).sum(axis=1)


# --------------------------------------------------------------------------------------------
# time zones


class _ZoneConverter:
    """UTC <-> local hour conversions for a fixed list of IANA zones (DST-aware)."""

    def __init__(self, zones: Sequence[str]) -> None:
        self.zones = list(zones)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def offsets(self, first_hour: int, n_hours: int) -> np.ndarray:
        """UTC offset in seconds, shape (n_zones, n_hours), at epoch hours first..first+n-1."""
        key = (first_hour, n_hours)
        if key not in self._cache:
            hours = np.arange(first_hour, first_hour + n_hours, dtype=np.int64)
            utc = pd.DatetimeIndex(pd.to_datetime(hours * 3600, unit="s", utc=True))
            naive = utc.tz_localize(None).as_unit("s").asi8
            out = np.empty((len(self.zones), n_hours), dtype=np.int64)
            for i, zone in enumerate(self.zones):
                if zone == "UTC":
                    out[i] = 0
                else:
                    local = utc.tz_convert(zone).tz_localize(None).as_unit("s").asi8
                    out[i] = local - naive
            self._cache = {key: out}
        return self._cache[key]

    def offsets_at(self, sec: int) -> np.ndarray:
        """UTC offset in seconds of every zone at one instant, shape (n_zones,)."""
        return self.offsets(sec // 3600, 1)[:, 0]

    def local_how(self, sec: np.ndarray, zone_code: np.ndarray) -> np.ndarray:
        """Local hour of week (0 = Monday 00:00 local) of each instant in its zone."""
        if len(sec) == 0:
            return np.zeros(0, dtype=np.int64)
        hour = sec // 3600
        first = int(hour.min())
        table = self.offsets(first, int(hour.max()) - first + 1)
        local = sec + table[zone_code, hour - first]
        return (local // 3600 + _EPOCH_HOW_SHIFT) % HOURS_PER_WEEK


def _valid_zone(name: object) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def _known_zones(index: pd.Index, timezones: pd.Series | None) -> np.ndarray:
    """Valid IANA zone per profile of ``index`` (object array, NA where unknown)."""
    out = np.full(len(index), pd.NA, dtype=object)
    if timezones is None or len(timezones) == 0:
        return out
    tz = timezones.copy()
    tz.index = pd.Index(tz.index.astype("string"))
    tz = tz[~tz.index.duplicated(keep="last")].astype("string")
    values = tz.reindex(index)
    names = values.dropna().unique()
    valid = {z for z in names if _valid_zone(str(z))}
    invalid = len(names) - len(valid)
    if invalid:
        logger.warning("send time: %d unknown time-zone names treated as missing", invalid)
    ok = values.isin(list(valid)).fillna(False).to_numpy(dtype=bool)
    out[ok] = values.to_numpy(dtype=object, na_value=pd.NA)[ok]
    return out


def _profile_universe(profile_ids: np.ndarray, timezones: pd.Series | None) -> pd.Index:
    ids = pd.unique(pd.array(profile_ids, dtype="string"))
    if timezones is not None and len(timezones):
        extra = pd.array(timezones.index.astype("string"), dtype="string")
        ids = pd.unique(pd.concat([pd.Series(ids), pd.Series(extra)], ignore_index=True))
    index = pd.Index(pd.array(ids, dtype="string"), name="profile_id").dropna()
    return index.sort_values()


# --------------------------------------------------------------------------------------------
# request validation and shaping


def _utc_timestamp(value: object, field_name: str, error: type[Exception]) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise _make_error(error, field_name, f"not a timestamp: {value!r}") from exc
    if ts is pd.NaT or pd.isna(ts):
        raise _make_error(error, field_name, f"not a timestamp: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _make_error(error: type[Exception], field_name: str, message: str) -> Exception:
    if error is RequestError:
        return RequestError(field_name, message)
    return error(f"{field_name}: {message}")


def _check_window_hours(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise RequestError("window_hours", f"must be an integer from 1 to 168, got {value!r}")
    if not 1 <= int(value) <= HOURS_PER_WEEK:
        raise RequestError("window_hours", f"must be from 1 to 168, got {value}")
    return int(value)


def _check_quiet_hours(value: object) -> tuple[int, int]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise RequestError("quiet_hours", f"must be a pair (start, end) of hours, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= int(v) <= 23:
            raise RequestError("quiet_hours", f"hours must be integers from 0 to 23, got {value!r}")
        out.append(int(v))
    if out[0] == out[1]:
        raise RequestError("quiet_hours", "start and end must differ")
    return out[0], out[1]


def _in_quiet(hod: np.ndarray, quiet: tuple[int, int]) -> np.ndarray:
    start, end = quiet
    if start < end:
        return (hod >= start) & (hod < end)
    return (hod >= start) | (hod < end)


def _local_text(sec: np.ndarray, offset: np.ndarray, valid: np.ndarray) -> pd.Series:
    """ISO-8601 local wall time with its UTC offset, e.g. ``2026-04-06T19:00:00-04:00``."""
    wall = np.datetime_as_string((sec + offset).astype("datetime64[s]"), unit="s")
    sign = np.where(offset < 0, "-", "+")
    minutes = np.abs(offset) // 60
    text = [
        f"{w}{s}{m // 60:02d}:{m % 60:02d}" if v else None
        for w, s, m, v in zip(
            wall.tolist(), sign.tolist(), minutes.tolist(), valid.tolist(), strict=True
        )
    ]
    return pd.Series(text, dtype="string")


def _alternatives(sec: np.ndarray, prob: np.ndarray, valid: np.ndarray) -> list[list[dict]]:
    """Per row the next-best slots: ``[{"send_at": "...Z", "probability": p}, ...]``."""
    if sec.shape[1] == 0:
        return [[] for _ in range(len(sec))]
    text = np.datetime_as_string(sec.astype("datetime64[s]"), unit="s", timezone="UTC").tolist()
    probs = prob.tolist()
    ok = valid.tolist()
    return [
        [{"send_at": t, "probability": p} for t, p, v in zip(t_row, p_row, v_row, strict=True) if v]
        for t_row, p_row, v_row in zip(text, probs, ok, strict=True)
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
