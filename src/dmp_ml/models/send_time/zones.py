"""Time zones of a send-time model: UTC <-> local hour of week, known zones, and the zone of a
profile inferred from its behaviour (or, failing that, a mixture of zones as its prior).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from dmp_ml.models.send_time.curves import HOURS_PER_WEEK, group_sum, kernel, smooth

if TYPE_CHECKING:
    from dmp_ml.models.send_time.curves import Evidence
    from dmp_ml.models.send_time.fitting import CurveEngine

logger = logging.getLogger(__name__)

TIMEZONE_SOURCES = ("known", "inferred", "utc")
# 1970-01-01 00:00 UTC was a Thursday: epoch hour 0 is hour 72 of a Monday-based week.
EPOCH_HOW_SHIFT = 72
# Engagement hours of one person are not independent (sessions, habits): their log-likelihood
# is tempered when it weighs time-zone candidates for the prior of profiles left in UTC.
_TZ_TEMPERATURE = 0.5
# Time-zone inference: share of a person's activity around a personal habit hour (a wrapped
# Gaussian over the hour of day with this sd), the rest following the population's rhythm.
_HABIT_SHARE = 0.5
_HABIT_SD_HOURS = 1.5


class ZoneConverter:
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
        return (local // 3600 + EPOCH_HOW_SHIFT) % HOURS_PER_WEEK


def valid_zone(name: object) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def known_zones(index: pd.Index, timezones: pd.Series | None) -> np.ndarray:
    """Valid IANA zone per profile of ``index`` (object array, NA where unknown)."""
    out = np.full(len(index), pd.NA, dtype=object)
    if timezones is None or len(timezones) == 0:
        return out
    tz = timezones.copy()
    tz.index = pd.Index(tz.index.astype("string"))
    tz = tz[~tz.index.duplicated(keep="last")].astype("string")
    values = tz.reindex(index)
    names = values.dropna().unique()
    valid = {z for z in names if valid_zone(str(z))}
    invalid = len(names) - len(valid)
    if invalid:
        logger.warning("send time: %d unknown time-zone names treated as missing", invalid)
    ok = values.isin(list(valid)).fillna(False).to_numpy(dtype=bool)
    out[ok] = values.to_numpy(dtype=object, na_value=pd.NA)[ok]
    return out


UNKNOWN_COHORT = "__unknown__"
"""The cohort of the profiles whose zone is unknown (:func:`zones_and_cohorts`)."""


def zones_and_cohorts(
    zone_of: np.ndarray, source: np.ndarray
) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The zones in use and each profile's (int64), the cohorts and each profile's: a cohort
    is a zone's profiles, and the profiles of unknown zone (``source`` 2) form their own."""
    zones, zone_code = np.unique(zone_of, return_inverse=True)
    cohort_key = np.where(source == 2, UNKNOWN_COHORT, zone_of)
    cohorts, cohort_code = np.unique(cohort_key, return_inverse=True)
    return (
        [str(z) for z in zones],
        zone_code.astype(np.int64),
        [str(c) for c in cohorts],
        cohort_code,
    )


def profile_universe(profile_ids: np.ndarray, timezones: pd.Series | None) -> pd.Index:
    ids = pd.unique(pd.array(profile_ids, dtype="string"))
    if timezones is not None and len(timezones):
        extra = pd.array(timezones.index.astype("string"), dtype="string")
        ids = pd.unique(pd.concat([pd.Series(ids), pd.Series(extra)], ignore_index=True))
    index = pd.Index(pd.array(ids, dtype="string"), name="profile_id").dropna()
    return index.sort_values()


@dataclass
class ZoneMixture:
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


def assign_zones(
    known: np.ndarray,
    ev: Evidence,
    as_of_sec: int,
    candidates: Sequence[str] | None,
    min_events: int,
    min_posterior: float,
    engine: CurveEngine,
) -> tuple[np.ndarray, np.ndarray, ZoneMixture | None]:
    """Zone name and source code (0 known, 1 inferred, 2 utc) per profile.

    ``known`` holds each profile's known zone (NA where unknown); ``ev`` their evidence;
    ``candidates`` the zones considered for inference (None: every known zone);
    ``min_events`` and ``min_posterior`` the engagement hours and posterior an inference needs.

    A profile without a known zone is compared, in each candidate zone, with a mixture of a
    personal habit hour (free) and the population's local-time activity curve (from profiles
    of known zone). When the posterior (uniform prior over candidates) within one hour of
    the best offset reaches ``min_posterior`` the zone is inferred.
    Otherwise the profile stays in UTC, and the returned mixture (posterior with the
    population's zone shares as prior, likelihood tempered) serves as its prior curve.

    The population's curve is a sum of the profiles' hours, and each profile's inference its
    own: both run on ``engine``'s ranges of profiles
    (:meth:`~dmp_ml.models.send_time.fitting.CurveEngine.map_profiles`).
    """
    n = len(known)
    zone_of = np.where(pd.isna(known), "UTC", known).astype(object)
    source = np.where(pd.isna(known), 2, 0).astype(np.int64)
    unknown = source == 2
    if not unknown.any() or (~unknown).sum() == 0:
        return zone_of, source, None
    known_names, known_counts = np.unique(known[~unknown].astype(str), return_counts=True)
    listed = list(candidates) if candidates else list(known_names)
    candidates = [z for z in dict.fromkeys([*listed, "UTC"]) if valid_zone(z)]
    # population local-time activity curve from profiles of known zone
    names = [str(z) for z in known_names]
    zmap = {z: i for i, z in enumerate(names)}
    kz = np.full(n, -1, dtype=np.int64)
    kz[~unknown] = [zmap[str(z)] for z in known[~unknown]]
    pop = np.sum(engine.map_profiles(known_hours, ev, (kz,), (names,)), axis=0)
    if pop.sum() < 10 * HOURS_PER_WEEK**0.5:
        return zone_of, source, None
    pop = smooth(pop[None, :], kernel(1.0, 0.0))[0]
    pop = np.maximum(pop / pop.sum(), 1e-4 / HOURS_PER_WEEK)
    pop /= pop.sum()
    offsets = ZoneConverter(candidates).offsets_at(as_of_sec)
    popularity = np.array(
        [known_counts[names.index(z)] if z in names else 0 for z in candidates], dtype=float
    )
    inference = ZoneInference(candidates, pop, popularity, offsets, min_events, min_posterior)
    parts = engine.map_profiles(infer_zones, ev, (zone_of, source), (inference,))
    zone_of = np.concatenate([p[0] for p in parts])
    clear = np.concatenate([p[1] for p in parts])
    mixture = ZoneMixture(candidates, offsets, np.concatenate([p[2] for p in parts], axis=1))
    source = np.where(clear, 1, source)
    logger.info(
        "send time: inferred a time zone for %d of %d profiles without one",
        int(clear.sum()),
        int(unknown.sum()),
    )
    return zone_of, source, mixture


def known_hours(ev: Evidence, zone_code: np.ndarray, names: list[str]) -> np.ndarray:
    """Engagement hours per local hour of week (168,) of the profiles of known zone
    (``zone_code`` into ``names``; -1: unknown)."""
    mask = zone_code[ev.act_p] >= 0
    how = ZoneConverter(names).local_how(ev.act_sec[mask], zone_code[ev.act_p[mask]])
    return np.bincount(how, minlength=HOURS_PER_WEEK).astype(float)


@dataclass(frozen=True)
class ZoneInference:
    """What every profile's zone inference shares: the candidate zones, the population's
    local-time activity share (168,), each candidate's number of known profiles and UTC offset
    at ``as_of``, the engagement hours and posterior an inference needs."""

    candidates: list[str]
    pop: np.ndarray
    popularity: np.ndarray
    offsets: np.ndarray
    min_events: int
    min_posterior: float


def infer_zones(
    ev: Evidence, zone_of: np.ndarray, source: np.ndarray, inference: ZoneInference
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the profiles of ``ev`` (source 2: zone unknown): the zone (inferred where clear,
    else as given), whether it was inferred, and the weights (n_candidates, n) of the prior
    mixture of those left in UTC (zeros elsewhere). Profile by profile."""
    candidates, pop, popularity = inference.candidates, inference.pop, inference.popularity
    offsets = inference.offsets
    n = len(source)
    unknown = source == 2
    umask = unknown[ev.act_p]
    up, usec = ev.act_p[umask], ev.act_sec[umask]
    n_hours = np.bincount(up, minlength=n)
    cconv = ZoneConverter(candidates)
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
    # prior mixture for profiles that stay in UTC: population shares x tempered likelihood
    share = (popularity + 0.5) / (popularity + 0.5).sum()
    tempered = _TZ_TEMPERATURE * scores
    mix = np.log(share)[:, None] + tempered - tempered.max(axis=0, keepdims=True)
    mix = np.exp(mix - mix.max(axis=0, keepdims=True))
    mix /= mix.sum(axis=0, keepdims=True)
    weights = np.where(unknown[None, :], mix, 0.0)

    eligible = unknown & (n_hours >= inference.min_events)
    if not eligible.any():
        return zone_of, np.zeros(n, bool), weights
    # posterior over candidates (uniform prior); mass grouped by UTC offset at as_of
    post = np.exp(scores - scores.max(axis=0, keepdims=True))
    post /= post.sum(axis=0, keepdims=True)
    groups, group_of = np.unique(offsets, return_inverse=True)
    mass = group_sum(post, group_of, len(groups))  # (n_groups, n)
    best_group = mass.argmax(axis=0)
    # "clear": the posterior within +-1 hour of the winning offset (neighbouring offsets
    # are nearly indistinguishable and off by one hour at worst)
    near = (np.abs(groups[:, None] - groups[None, :]) <= 3600).astype(float)
    near_mass = (near[best_group] * mass.T).sum(axis=1)
    clear = eligible & (near_mass >= inference.min_posterior)
    # within the winning offset group prefer the zone with most known profiles
    in_group = group_of[:, None] == best_group[None, :]
    pick = np.where(in_group, popularity[:, None] + post, -1.0).argmax(axis=0)
    cand = np.array(candidates, dtype=object)
    weights[:, clear] = 0.0
    return np.where(clear, cand[pick], zone_of), clear, weights


def _habit_kernel() -> np.ndarray:
    """Row h: distribution over the 24 hours of day of activity around habit hour h."""
    hod = np.arange(24)
    d = np.abs((hod[:, None] - hod[None, :] + 12) % 24 - 12)
    k = np.exp(-0.5 * (d / _HABIT_SD_HOURS) ** 2)
    return k / k.sum(axis=1, keepdims=True)


def _weighted_rows(weights: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """``weights.T @ curves`` for few curves, (n_curves, n) x (n_curves, k) -> (n, k)."""
    out = np.zeros((weights.shape[1], curves.shape[1]))
    for i in range(len(curves)):
        out += weights[i][:, None] * curves[i][None, :]
    return out
