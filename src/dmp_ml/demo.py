"""The synthetic demo DMP world: events, profiles, consent, and the ground truth planted in them.

``make run``, the tests and the evaluations all use this world. It is generated with vectorised
numpy draws from one ``np.random.default_rng(seed)``, so a seed always gives the same world.

What is planted (and written to ``truth.parquet``, one row per person):

- an interest group (outdoor, fashion, home, tech, beauty, kids; 30% also have a secondary
  group) with its own mix over 22 product categories;
- a lognormal engagement that drives web/app sessions and purchases;
- an active period ``[active_from, active_until)``: 15% activate late, 20% churn. Purchases are a
  Poisson process with a constant daily rate inside that period and none outside it, so the
  probability of at least one purchase in any window is known exactly
  (:func:`true_purchase_probability`);
- a preferred local hour of day (sessions cluster around it; email opens are likelier when the
  send lands near it) and the true IANA time zone (missing from ``profiles.timezone`` for ~10%);
- machine openers (~5%: an open seconds after every send), households (~4% of people share a
  device they both log into), and the final marketing-consent state (~3% withdrawn).

Identity is realistic: each person has 1-3 devices whose cookie rotates after 30-90 days; only
some sessions are logged in (about 90% of a person's cookies get at least one logged-in event);
third-party ad impressions land mostly on anonymous cookies that never log in.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from dmp_ml.contract import EVENT_COLUMNS as CONTRACT_EVENT_COLUMNS
from dmp_ml.contract import WELL_KNOWN_EVENT_TYPES
from dmp_ml.errors import DataContractError
from dmp_ml.times import utc

logger = logging.getLogger(__name__)

EVENT_COLUMNS: tuple[str, ...] = tuple(CONTRACT_EVENT_COLUMNS)
INTEREST_GROUPS: tuple[str, ...] = ("outdoor", "fashion", "home", "tech", "beauty", "kids")
CATEGORIES: tuple[str, ...] = (
    "hiking",
    "camping",
    "cycling",
    "running",
    "womenswear",
    "menswear",
    "shoes",
    "accessories",
    "furniture",
    "kitchen",
    "garden",
    "decor",
    "phones",
    "laptops",
    "audio",
    "gaming",
    "skincare",
    "makeup",
    "fragrance",
    "toys",
    "baby",
    "kidswear",
)
TIMEZONES: tuple[str, ...] = (
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
)
TRUTH_COLUMNS: tuple[str, ...] = (
    "profile_id",
    "interest_group",
    "secondary_interest_group",
    "preferred_local_hour",
    "timezone",
    "country",
    "engagement",
    "session_rate_per_day",
    "purchase_rate_per_day",
    "activation_day",
    "churn_day",
    "active_from",
    "active_until",
    "signup_at",
    "email_open_propensity",
    "has_email",
    "machine_opener",
    "n_devices",
    "household_id",
    "consent_withdrawn",
)

_EVENT_TYPES = WELL_KNOWN_EVENT_TYPES  # the order the codes below rely on
_PV, _PRV, _ATC, _BUY, _SEND, _OPEN, _CLICK, _IMP, _ADCLICK = range(len(_EVENT_TYPES))
_CHANNELS = ("web", "app", "email", "display", "partner")
_WEB, _APP, _EMAIL, _DISPLAY, _PARTNER = range(len(_CHANNELS))
_SOURCES = ("first_party", "second_party", "third_party")
_FIRST, _SECOND, _THIRD = range(len(_SOURCES))

_GROUP_SHARE = np.array([0.18, 0.2, 0.18, 0.16, 0.14, 0.14])
_GROUP_PURCHASE_FACTOR = np.array([1.0, 1.25, 0.9, 0.8, 1.15, 1.05])
_GROUP_AGE = np.array([40.0, 31.0, 45.0, 34.0, 32.0, 37.0])
_GROUP_CORE: dict[str, dict[str, float]] = {
    "outdoor": {"hiking": 0.3, "camping": 0.22, "cycling": 0.16, "running": 0.14, "shoes": 0.06},
    "fashion": {"womenswear": 0.3, "menswear": 0.2, "shoes": 0.18, "accessories": 0.16},
    "home": {"furniture": 0.25, "kitchen": 0.25, "decor": 0.2, "garden": 0.16},
    "tech": {"phones": 0.26, "laptops": 0.22, "audio": 0.2, "gaming": 0.2},
    "beauty": {"skincare": 0.34, "makeup": 0.28, "fragrance": 0.2, "accessories": 0.06},
    "kids": {"toys": 0.32, "baby": 0.24, "kidswear": 0.24, "gaming": 0.05},
}
_CATEGORY_PRICE = {
    "hiking": 60.0,
    "camping": 90.0,
    "cycling": 120.0,
    "running": 70.0,
    "womenswear": 55.0,
    "menswear": 50.0,
    "shoes": 80.0,
    "accessories": 35.0,
    "furniture": 250.0,
    "kitchen": 45.0,
    "garden": 40.0,
    "decor": 30.0,
    "phones": 400.0,
    "laptops": 900.0,
    "audio": 120.0,
    "gaming": 60.0,
    "skincare": 30.0,
    "makeup": 25.0,
    "fragrance": 60.0,
    "toys": 30.0,
    "baby": 35.0,
    "kidswear": 25.0,
}
_ZONE_SHARE = np.array([0.2, 0.2, 0.22, 0.15, 0.13, 0.1])
_COUNTRIES = ("GB", "DE", "US", "JP", "AU")
_ZONE_COUNTRY = np.array([0, 1, 2, 2, 3, 4])  # index into _COUNTRIES per TIMEZONES entry
# Relative activity by local hour for the "background" part of everyone's day.
_DAILY_PROFILE = np.array(
    [0.3, 0.2, 0.15, 0.1, 0.1, 0.2, 0.5, 1.0, 1.4, 1.3, 1.2, 1.3]
    + [1.5, 1.3, 1.2, 1.2, 1.3, 1.5, 1.8, 2.0, 2.1, 1.9, 1.4, 0.8]
)
_DAILY_PROFILE = _DAILY_PROFILE / _DAILY_PROFILE.sum()

_DAY = 86_400.0
_HOUR = 3_600.0


def _category_mix() -> np.ndarray:
    """Category probabilities per interest group, shape (n_groups, n_categories)."""
    mix = np.full((len(INTEREST_GROUPS), len(CATEGORIES)), 0.01)
    for g, name in enumerate(INTEREST_GROUPS):
        for cat, w in _GROUP_CORE[name].items():
            mix[g, CATEGORIES.index(cat)] += w
    return mix / mix.sum(axis=1, keepdims=True)


_CUM_MIX = np.cumsum(_category_mix(), axis=1)


@dataclass(frozen=True, eq=False)
class DemoWorld:
    """A generated demo world: canonical input frames plus the planted truth.

    Attributes
    ----------
    events : DataFrame
        Canonical event log (columns :data:`EVENT_COLUMNS`), sorted by ``event_time``.
    profiles : DataFrame
        One row per person: profile_id, timezone, country, email, age, loyalty_tier.
    consent : DataFrame
        profile_id, cookie_id, purpose, granted, updated_at; the latest record per id wins.
    truth : DataFrame
        One row per person with what was planted (columns :data:`TRUTH_COLUMNS`).
    start, end : Timestamp
        UTC bounds of the event log, ``[start, end)``.
    """

    events: pd.DataFrame
    profiles: pd.DataFrame
    consent: pd.DataFrame
    truth: pd.DataFrame
    start: pd.Timestamp
    end: pd.Timestamp

    def summary(self) -> dict[str, int]:
        """Row counts worth printing: events by type, profiles, cookies, consent records."""
        out = {
            "profiles": len(self.profiles),
            "events": len(self.events),
            "cookies": int(self.events["cookie_id"].nunique()),
            "consent_records": len(self.consent),
            "consent_withdrawn": int(self.truth["consent_withdrawn"].sum()),
        }
        counts = self.events["event_type"].value_counts()
        out.update({str(k): int(v) for k, v in counts.items()})
        return out


def generate_demo_world(
    n_profiles: int = 20_000,
    days: int = 120,
    seed: int = 0,
    start: str | pd.Timestamp = "2026-01-05",
) -> DemoWorld:
    """Generate the synthetic DMP world.

    Parameters
    ----------
    n_profiles : int
        Number of people (>= 10). About 55 events per person for 120 days.
    days : int
        Length of the event log in days (>= 14).
    seed : int
        Seed of ``np.random.default_rng``; the same arguments always give the same world.
    start : str or Timestamp
        First day of the log; naive means UTC; truncated to UTC midnight.

    Returns
    -------
    DemoWorld
    """
    if isinstance(n_profiles, bool) or not isinstance(n_profiles, (int, np.integer)):
        raise ValueError(f"n_profiles must be an integer, got {n_profiles!r}")
    if isinstance(days, bool) or not isinstance(days, (int, np.integer)):
        raise ValueError(f"days must be an integer, got {days!r}")
    if n_profiles < 10:
        raise ValueError(f"n_profiles must be at least 10, got {n_profiles}")
    if days < 14:
        raise ValueError(f"days must be at least 14 (two weekly campaigns), got {days}")
    n, days = int(n_profiles), int(days)
    start_ts = utc(start, "start").normalize()
    rng = np.random.default_rng(seed)
    offsets = _utc_offsets(start_ts, days)

    ppl = _draw_people(rng, n, days)
    dev = _draw_devices(rng, ppl)
    ppl["n_devices"] = dev["n_dev"] + (ppl["household"] >= 0)
    emails, clicks = _email_events(rng, ppl, offsets, start_ts, days)
    sess = _sessions(rng, ppl, dev, offsets, days, clicks)
    parts = [emails, *_session_events(rng, ppl, dev, sess)]
    parts.append(_anonymous_ads(rng, n, dev["n_keys"], offsets, days))

    events = _assemble_events(rng, parts, ppl, start_ts, days)
    profiles = _profiles_frame(rng, ppl)
    consent = _consent_frame(ppl, start_ts)
    truth = _truth_frame(ppl, start_ts)
    end_ts = start_ts + pd.Timedelta(days=days)
    logger.info(
        "demo world: %d profiles, %d days, %d events, %d cookies",
        n,
        days,
        len(events),
        events["cookie_id"].nunique(),
    )
    return DemoWorld(events, profiles, consent, truth, start_ts, end_ts)


def write_demo_world(world: DemoWorld, out_dir: str | Path) -> dict[str, Path]:
    """Write the world as Parquet files in ``out_dir`` (created if missing).

    Each file is written to a temporary name and renamed into place, so a crash never leaves a
    half-written file under the final name.

    Returns
    -------
    dict
        ``{"events", "profiles", "consent", "truth"}`` -> path of the written file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = {
        "events": world.events,
        "profiles": world.profiles,
        "consent": world.consent,
        "truth": world.truth,
    }
    paths: dict[str, Path] = {}
    for name, frame in frames.items():
        final = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, final)
        paths[name] = final
    logger.info("wrote demo world to %s", out)
    return paths


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read a truth file written by :func:`write_demo_world` (a file, or the folder holding it).

    Raises
    ------
    DataContractError
        The file is missing or lacks truth columns.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "truth.parquet"
    if not p.is_file():
        raise DataContractError(f"truth file not found: {p}")
    try:
        frame = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataContractError(f"cannot read truth file {p}: {exc}") from exc
    missing = [c for c in TRUTH_COLUMNS if c not in frame.columns]
    if missing:
        raise DataContractError(
            f"{p} is not a demo truth file: missing columns {missing}; "
            f"expected {list(TRUTH_COLUMNS)}, found {list(frame.columns)}"
        )
    return _coerce_truth(frame[list(TRUTH_COLUMNS)])


def true_purchase_probability(
    truth: pd.DataFrame, as_of: str | pd.Timestamp, horizon_days: int
) -> pd.Series:
    """Planted probability of at least one purchase in ``[as_of, as_of + horizon_days)``.

    Purchases are a Poisson process with rate ``purchase_rate_per_day`` on every UTC day of
    ``[active_from, active_until)`` and zero elsewhere, so the probability is
    ``1 - exp(-rate * active days in the window)``. Exact for windows starting at UTC
    midnight; otherwise partial days count pro rata.

    Returns
    -------
    Series
        Float64 in [0, 1], index ``profile_id``, name ``true_purchase_probability``.
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    need = ("profile_id", "purchase_rate_per_day", "active_from", "active_until")
    missing = [c for c in need if c not in truth.columns]
    if missing:
        raise DataContractError(f"truth frame lacks columns {missing}")
    w0 = utc(as_of, "as_of")
    w1 = w0 + pd.Timedelta(days=horizon_days)
    lo = pd.to_datetime(truth["active_from"], utc=True).clip(lower=w0)
    hi = pd.to_datetime(truth["active_until"], utc=True).fillna(w1).clip(upper=w1)
    overlap = ((hi - lo) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    overlap = np.clip(overlap, 0.0, None)
    rate = truth["purchase_rate_per_day"].to_numpy(dtype=float)
    prob = -np.expm1(-rate * overlap)
    index = pd.Index(truth["profile_id"].astype("string"), name="profile_id")
    return pd.Series(prob, index=index, name="true_purchase_probability", dtype="float64")


# --------------------------------------------------------------------------- people


def _draw_people(rng: np.random.Generator, n: int, days: int) -> dict[str, np.ndarray]:
    """Latent per-person attributes (arrays of length n)."""
    g_count = len(INTEREST_GROUPS)
    group = rng.choice(g_count, n, p=_GROUP_SHARE)
    second = (group + rng.integers(1, g_count, n)) % g_count
    second = np.where(rng.random(n) < 0.3, second, -1)
    zone = rng.choice(len(TIMEZONES), n, p=_ZONE_SHARE)

    # preferred local hour: evening, morning and lunch people, plus some anywhere.
    kind = rng.choice(4, n, p=[0.45, 0.25, 0.15, 0.15])
    centre = np.array([20.0, 8.0, 12.5, 12.0])[kind]
    spread = np.array([1.5, 1.0, 1.0, 0.0])[kind]
    pref = np.round(centre + spread * rng.normal(size=n))
    pref = np.where(kind == 3, rng.integers(0, 24, n), pref).astype(np.int64) % 24

    engagement = rng.lognormal(-0.35, 0.85, n)
    activation = np.where(rng.random(n) < 0.15, rng.integers(1, max(2, int(0.7 * days)), n), 0)
    room = days - activation - 7
    churn = activation + 7 + np.floor(rng.random(n) * np.maximum(room, 1)).astype(np.int64)
    churn = np.where((rng.random(n) < 0.2) & (room > 0), churn, -1)
    active_end = np.where(churn >= 0, churn, days)

    purchase_rate = 0.006 * engagement**1.25 * rng.lognormal(0.0, 0.35, n)
    purchase_rate = np.minimum(purchase_rate * _GROUP_PURCHASE_FACTOR[group], 0.25)
    session_rate = np.minimum(0.09 * engagement * rng.lognormal(0.0, 0.25, n), 3.0)

    has_email = rng.random(n) >= 0.15
    machine = has_email & (rng.random(n) < 0.06)
    open_prop = rng.beta(2.2, 4.0, n)
    tz_missing = rng.random(n) < 0.10
    partner = rng.random(n) < 0.4

    n_pairs = max(1, round(0.02 * n))
    members = rng.choice(n, 2 * n_pairs, replace=False)
    hh_a, hh_b = members[:n_pairs], members[n_pairs:]
    zone[hh_b] = zone[hh_a]  # a household lives in one time zone
    household = np.full(n, -1)
    household[hh_a] = np.arange(n_pairs)
    household[hh_b] = np.arange(n_pairs)

    # signup (seconds from start): before the log for early people, on the activation day else.
    signup = np.where(
        activation > 0,
        activation * _DAY + rng.random(n) * 6 * _HOUR,
        -rng.uniform(1.0, 730.0, n) * _DAY,
    )
    end_s = days * _DAY
    withdraw = rng.random(n) < 0.035
    lo = np.maximum(signup, 0.0) + _DAY
    withdraw &= lo < end_s - _DAY
    withdraw_at = np.where(withdraw, lo + rng.random(n) * np.maximum(end_s - _DAY - lo, 0), np.inf)
    regrant = withdraw & (rng.random(n) < 0.15)
    base = np.where(withdraw, withdraw_at, 0.0)
    regrant_at = np.where(regrant, base + rng.random(n) * (end_s - base), np.inf)

    return {
        "n": np.array(n),
        "group": group,
        "second": second,
        "zone": zone,
        "pref": pref,
        "engagement": engagement,
        "activation": activation,
        "churn": churn,
        "active_end": active_end,
        "purchase_rate": purchase_rate,
        "session_rate": session_rate,
        "has_email": has_email,
        "machine": machine,
        "open_prop": open_prop,
        "tz_missing": tz_missing,
        "partner": partner,
        "hh_a": hh_a,
        "hh_b": hh_b,
        "household": household,
        "signup": signup,
        "withdraw_at": withdraw_at,
        "regrant_at": regrant_at,
    }


def _draw_devices(rng: np.random.Generator, ppl: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Devices with rotating cookies, and pickers mapping (person, u) -> device."""
    n = int(ppl["n"])
    n_dev = rng.choice(np.array([1, 2, 3]), n, p=[0.45, 0.38, 0.17])
    owner = np.repeat(np.arange(n), n_dev)
    nd = len(owner)
    is_app = rng.random(nd) < 0.35
    life = rng.uniform(30.0, 90.0, nd)
    phase = rng.random(nd) * life
    linkable = rng.random(nd) < 0.9
    p_login = np.where(is_app, 0.75, 0.3)
    weight = rng.gamma(1.5, 1.0, nd) + 0.05

    # one shared, non-rotating household device (a family tablet) per pair
    hh_a, hh_b = ppl["hh_a"], ppl["hh_b"]
    n_pairs = len(hh_a)
    shared = np.arange(nd, nd + n_pairs)
    own_total = np.bincount(owner, weights=weight, minlength=n)
    is_app = np.concatenate([is_app, np.ones(n_pairs, bool)])
    life = np.concatenate([life, np.full(n_pairs, 1e6)])
    phase = np.concatenate([phase, np.zeros(n_pairs)])
    linkable = np.concatenate([linkable, np.ones(n_pairs, bool)])
    p_login = np.concatenate([p_login, np.full(n_pairs, 0.85)])
    shared_of = np.full(n, -1)
    shared_of[hh_a] = shared
    shared_of[hh_b] = shared

    slot_person = np.concatenate([owner, hh_a, hh_b])
    slot_dev = np.concatenate([np.arange(nd), shared, shared])
    slot_w = np.concatenate([weight, 0.6 * own_total[hh_a], 0.6 * own_total[hh_b]])
    all_keys, all_devs = _picker(slot_person, slot_dev, slot_w, n)
    link_w = slot_w * linkable[slot_dev]
    has_link = np.bincount(slot_person, weights=link_w, minlength=n) > 0
    link_w = np.where(has_link[slot_person], link_w, slot_w)
    link_keys, link_devs = _picker(slot_person, slot_dev, link_w, n)

    total = nd + n_pairs
    return {
        "n_dev": n_dev,
        "is_app": is_app,
        "life": life,
        "phase": phase,
        "linkable": linkable,
        "p_login": p_login,
        "shared_of": shared_of,
        "keys": all_keys,
        "devs": all_devs,
        "link_keys": link_keys,
        "link_devs": link_devs,
        "n_keys": np.array(total * _SEG_STRIDE),
    }


_SEG_STRIDE = 1_000  # cookie key = device * stride + rotation segment (+1)


def _picker(
    person: np.ndarray, device: np.ndarray, weight: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys ``person + cumulative weight share`` so one searchsorted picks a device."""
    order = np.lexsort((device, person))
    person, device, weight = person[order], device[order], weight[order]
    counts = np.bincount(person, minlength=n)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cs = np.cumsum(weight)
    before = np.concatenate([[0.0], cs])[first]
    within = cs - np.repeat(before, counts)
    total = np.repeat(np.bincount(person, weights=weight, minlength=n), counts)
    frac = within / total
    frac[first + counts - 1] = 1.0
    return person + frac, device


def _pick_device(
    keys: np.ndarray, devs: np.ndarray, person: np.ndarray, u: np.ndarray
) -> np.ndarray:
    idx = np.searchsorted(keys, person + u * 0.999999, side="right")
    return devs[np.minimum(idx, len(devs) - 1)]


# --------------------------------------------------------------------------- time helpers


def _utc_offsets(start: pd.Timestamp, days: int) -> np.ndarray:
    """UTC offset in hours per zone and day (noon UTC), shape (n_zones, days + 4); day d at d+2."""
    idx = pd.date_range(start - pd.Timedelta(days=2), periods=days + 4, freq="D")
    idx = idx + pd.Timedelta(hours=12)
    naive = idx.tz_localize(None)
    out = np.empty((len(TIMEZONES), len(idx)))
    for z, name in enumerate(TIMEZONES):
        local = idx.tz_convert(ZoneInfo(name)).tz_localize(None)
        out[z] = (local - naive) / pd.Timedelta(hours=1)
    return out


def _local_hours(rng: np.random.Generator, pref: np.ndarray, p_pref: float = 0.6) -> np.ndarray:
    """Local hour of day (float) mixing 'around the preferred hour' and a generic daily curve."""
    m = len(pref)
    near = pref + 0.5 + rng.normal(0.0, 1.3, m)
    generic = rng.choice(24, m, p=_DAILY_PROFILE) + rng.random(m)
    return np.where(rng.random(m) < p_pref, near, generic) % 24.0


def _times_in_active_days(
    rng: np.random.Generator,
    person: np.ndarray,
    ppl: dict[str, np.ndarray],
    offsets: np.ndarray,
) -> np.ndarray:
    """Seconds from start: a uniform UTC day of the active period, at a local hour of the person."""
    act = ppl["activation"][person]
    span = ppl["active_end"][person] - act
    day = act + np.floor(rng.random(len(person)) * span).astype(np.int64)
    local = _local_hours(rng, ppl["pref"][person])
    utc_hour = (local - offsets[ppl["zone"][person], day + 2]) % 24.0
    return day * _DAY + utc_hour * _HOUR


def _draw_categories(
    rng: np.random.Generator, person: np.ndarray, ppl: dict[str, np.ndarray]
) -> np.ndarray:
    """A category per row from the person's interest mix (10% uniform noise)."""
    m = len(person)
    second = ppl["second"][person]
    group = np.where((second >= 0) & (rng.random(m) < 0.3), second, ppl["group"][person])
    u = rng.random(m)
    cat = np.empty(m, np.int64)
    for g in range(len(INTEREST_GROUPS)):
        mask = group == g
        cat[mask] = np.searchsorted(_CUM_MIX[g], u[mask], side="right")
    cat = np.minimum(cat, len(CATEGORIES) - 1)
    noise = rng.random(m) < 0.1
    return np.where(noise, rng.integers(0, len(CATEGORIES), m), cat)


# --------------------------------------------------------------------------- events


def _part(
    t: np.ndarray,
    etype: int | np.ndarray,
    channel: int | np.ndarray,
    source: int,
    person: np.ndarray | None = None,
    cookie: np.ndarray | None = None,
    campaign: np.ndarray | None = None,
    category: np.ndarray | None = None,
    value: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    m = len(t)

    def col(x: int | np.ndarray | None, dtype: type, fill: float) -> np.ndarray:
        if x is None:
            return np.full(m, fill, dtype)
        return np.broadcast_to(np.asarray(x, dtype), (m,))

    return {
        "t": np.asarray(t, np.float64),
        "person": col(person, np.int64, -1),
        "cookie": col(cookie, np.int64, -1),
        "etype": col(etype, np.int64, -1),
        "channel": col(channel, np.int64, -1),
        "source": col(source, np.int64, -1),
        "campaign": col(campaign, np.int64, -1),
        "category": col(category, np.int64, -1),
        "value": col(value, np.float64, np.nan),
    }


def _email_events(
    rng: np.random.Generator,
    ppl: dict[str, np.ndarray],
    offsets: np.ndarray,
    start: pd.Timestamp,
    days: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weekly campaigns (Tuesdays) sent at a random hour per recipient; opens and clicks."""
    n = int(ppl["n"])
    first = (1 - start.weekday()) % 7
    send_days = np.arange(first, days, 7)
    k_count = len(send_days)
    send_t = send_days[:, None] * _DAY + rng.random((k_count, n)) * _DAY
    consented = (send_t < ppl["withdraw_at"]) | (send_t >= ppl["regrant_at"])
    eligible = ppl["has_email"] & (send_t >= ppl["signup"]) & consented
    k, p = np.nonzero(eligible)
    st = send_t[k, p]

    local = (st / _HOUR + offsets[ppl["zone"][p], send_days[k] + 2]) % 24.0
    dist = np.abs((local - (ppl["pref"][p] + 0.5) + 12.0) % 24.0 - 12.0)
    churned = (ppl["churn"][p] >= 0) & (st >= ppl["churn"][p] * _DAY)
    p_open = ppl["open_prop"][p] * (0.1 + 0.9 * np.exp(-(dist**2) / (2 * 2.2**2)))
    p_open = p_open * np.where(churned, 0.1, 1.0)
    opened = rng.random(len(st)) < p_open
    delay = np.minimum(np.exp(rng.normal(np.log(25 * 60.0), 0.9, len(st))), 2 * _DAY)
    open_t = st + delay
    p_click = np.minimum(0.08 + 0.12 * np.minimum(ppl["engagement"][p], 2.0), 0.4)
    clicked = opened & (rng.random(len(st)) < p_click)
    click_t = open_t + 20.0 + rng.exponential(180.0, len(st))
    machine = ppl["machine"][p] & (rng.random(len(st)) < 0.97)
    machine_t = st + 1.0 + rng.random(len(st)) * 20.0

    t = np.concatenate([st, open_t[opened], machine_t[machine], click_t[clicked]])
    who = np.concatenate([p, p[opened], p[machine], p[clicked]])
    cmp = np.concatenate([k, k[opened], k[machine], k[clicked]])
    etype = np.concatenate(
        [
            np.full(len(st), _SEND),
            np.full(int(opened.sum()), _OPEN),
            np.full(int(machine.sum()), _OPEN),
            np.full(int(clicked.sum()), _CLICK),
        ]
    )
    emails = _part(t, etype, _EMAIL, _FIRST, person=who, campaign=cmp)
    campaign_category = rng.integers(0, len(CATEGORIES), k_count)
    clicks = {
        "t": click_t[clicked],
        "person": p[clicked],
        "campaign": k[clicked],
        "category": campaign_category[k[clicked]],
        "send_days": send_days,
    }
    return emails, clicks


def _sessions(
    rng: np.random.Generator,
    ppl: dict[str, np.ndarray],
    dev: dict[str, np.ndarray],
    offsets: np.ndarray,
    days: int,
    clicks: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Web/app sessions: regular (kind 0), purchase (1) and email landing (2), with identity."""
    n = int(ppl["n"])
    active = ppl["active_end"] - ppl["activation"]
    n_reg = rng.poisson(ppl["session_rate"] * active)
    n_reg[ppl["household"] >= 0] = np.maximum(n_reg[ppl["household"] >= 0], 3)
    reg_p = np.repeat(np.arange(n), n_reg)
    reg_t = _times_in_active_days(rng, reg_p, ppl, offsets)

    n_buy = rng.poisson(ppl["purchase_rate"] * active)
    buy_p = np.repeat(np.arange(n), n_buy)
    buy_t = _times_in_active_days(rng, buy_p, ppl, offsets)

    lead_t = clicks["t"] + 5.0 + rng.random(len(clicks["t"])) * 20.0
    person = np.concatenate([reg_p, buy_p, clicks["person"]])
    t = np.concatenate([reg_t, buy_t, lead_t])
    kind = np.concatenate(
        [np.zeros(len(reg_p), np.int64), np.ones(len(buy_p), np.int64), np.full(len(lead_t), 2)]
    )
    campaign = np.concatenate([np.full(len(reg_p) + len(buy_p), -1), clicks["campaign"]])
    category = _draw_categories(rng, person, ppl)
    category[kind == 2] = clicks["category"]
    # only email-landing sessions can fall after the end; regular sessions (first rows, indexed
    # below via n_reg) and purchases always lie inside their active days.
    keep = t < days * _DAY
    person, t, kind, campaign, category = (a[keep] for a in (person, t, kind, campaign, category))
    m = len(person)

    u = rng.random(m)
    device = _pick_device(dev["keys"], dev["devs"], person, u)
    is_buy = kind == 1
    device[is_buy] = _pick_device(dev["link_keys"], dev["link_devs"], person[is_buy], u[is_buy])
    logged = dev["linkable"][device] & (rng.random(m) < dev["p_login"][device])
    logged |= is_buy

    # both household members log into their shared device at least once
    shared = dev["shared_of"][person]
    ok = (device == shared) & logged & (kind == 0)
    has_ok = np.bincount(person[ok], minlength=n) > 0
    needy = np.flatnonzero((dev["shared_of"] >= 0) & ~has_ok)
    first_reg = np.concatenate([[0], np.cumsum(n_reg)[:-1]])[needy]
    device[first_reg] = dev["shared_of"][needy]
    logged[first_reg] = True

    # buy sessions start a few minutes before the purchase (purchase stays at t)
    gap_cart = 20.0 + rng.exponential(120.0, m)
    gap_view = 60.0 + rng.exponential(480.0, m)
    begin = np.where(is_buy, t - gap_cart - gap_view, t)
    seg = np.floor((begin / _DAY + dev["phase"][device]) / dev["life"][device]).astype(np.int64)
    cookie = device * _SEG_STRIDE + seg + 1

    # a linkable cookie gets at least one logged-in session
    uniq, first_idx, inv = np.unique(cookie, return_index=True, return_inverse=True)
    n_logged = np.bincount(inv, weights=logged.astype(float), minlength=len(uniq))
    force = dev["linkable"][uniq // _SEG_STRIDE] & (n_logged == 0)
    logged[first_idx[force]] = True

    return {
        "person": person,
        "begin": begin,
        "kind": kind,
        "campaign": campaign,
        "category": category,
        "device": device,
        "cookie": cookie,
        "logged": logged,
        "gap_view": gap_view,
        "t": t,
    }


def _session_events(
    rng: np.random.Generator,
    ppl: dict[str, np.ndarray],
    dev: dict[str, np.ndarray],
    sess: dict[str, np.ndarray],
) -> list[dict[str, np.ndarray]]:
    """Expand sessions into first-party events, plus the ad and partner events they spawn."""
    s_count = len(sess["person"])
    kind = sess["kind"]
    n_ev = np.where(kind == 0, 1 + rng.poisson(2.4, s_count), np.where(kind == 1, 3, 2))
    e_count = int(n_ev.sum())
    sid = np.repeat(np.arange(s_count), n_ev)
    first = np.concatenate([[0], np.cumsum(n_ev)[:-1]])
    pos = np.arange(e_count) - np.repeat(first, n_ev)
    e_kind = kind[sid]
    reg, buy, lead = e_kind == 0, e_kind == 1, e_kind == 2

    gaps = rng.exponential(75.0, e_count)
    gaps[pos == 0] = 0.0
    gaps[buy & (pos == 1)] = sess["gap_view"][sid[buy & (pos == 1)]]
    cum = np.cumsum(gaps)
    t = sess["begin"][sid] + (cum - np.repeat(cum[first], n_ev))
    is_purchase = buy & (pos == 2)
    t[is_purchase] = sess["t"][sid[is_purchase]]  # exactly the planted purchase time

    browse = rng.choice(np.array([_PV, _PRV, _ATC]), e_count, p=[0.3, 0.55, 0.15])
    etype = np.where(pos == 0, _PV, browse)
    etype[buy] = np.array([_PRV, _ATC, _BUY])[pos[buy]]
    etype[lead] = np.array([_PV, _PRV])[pos[lead]]

    person = sess["person"][sid]
    cat = sess["category"][sid]
    u = rng.random(e_count)
    fresh = _draw_categories(rng, person, ppl)
    cat = np.where(reg & (etype == _PV) & (u < 0.35), -1, cat)
    cat = np.where(reg & (etype != _PV) & (u < 0.15), fresh, cat)
    campaign = np.where(lead & (pos == 0), sess["campaign"][sid], -1)
    value = np.full(e_count, np.nan)
    price = np.array([_CATEGORY_PRICE[c] for c in CATEGORIES])[cat[is_purchase]]
    value[is_purchase] = np.round(rng.lognormal(np.log(price), 0.6), 2)
    channel = np.where(dev["is_app"][sess["device"][sid]], _APP, _WEB)
    first_party = _part(
        t,
        etype,
        channel,
        _FIRST,
        person=np.where(sess["logged"][sid], person, -1),
        cookie=sess["cookie"][sid],
        campaign=campaign,
        category=cat,
        value=value,
    )

    # third-party impressions on the person's own cookie in the hour before a visit
    reg_s = np.flatnonzero(kind == 0)
    ad_s = np.repeat(reg_s, rng.poisson(0.15, len(reg_s)))
    ad_t = sess["begin"][ad_s] - rng.uniform(60.0, _HOUR, len(ad_s))
    retarget = rng.random(len(ad_s)) < 0.5
    ad_cat = np.where(
        retarget, sess["category"][ad_s], _draw_categories(rng, sess["person"][ad_s], ppl)
    )
    clicked = rng.random(len(ad_s)) < 0.02
    click_t = ad_t[clicked] + 2.0 + rng.exponential(20.0, int(clicked.sum()))
    ads = _part(
        np.concatenate([ad_t, click_t]),
        np.concatenate([np.full(len(ad_s), _IMP), np.full(len(click_t), _ADCLICK)]),
        _DISPLAY,
        _THIRD,
        cookie=sess["cookie"][np.concatenate([ad_s, ad_s[clicked]])],
        category=np.concatenate([ad_cat, ad_cat[clicked]]),
    )

    # second-party partner views, matched by hashed email (profile) or a synced cookie
    pr_s = reg_s[ppl["partner"][sess["person"][reg_s]]]
    pr = np.repeat(pr_s, rng.poisson(0.12, len(pr_s)))
    pr_t = sess["begin"][pr] + rng.uniform(_HOUR, 72 * _HOUR, len(pr))
    by_profile = rng.random(len(pr)) < 0.5
    partner = _part(
        pr_t,
        _PRV,
        _PARTNER,
        _SECOND,
        person=np.where(by_profile, sess["person"][pr], -1),
        cookie=np.where(by_profile, -1, sess["cookie"][pr]),
        category=_draw_categories(rng, sess["person"][pr], ppl),
    )
    return [first_party, ads, partner]


def _anonymous_ads(
    rng: np.random.Generator,
    n: int,
    key_base: np.ndarray,
    offsets: np.ndarray,
    days: int,
) -> dict[str, np.ndarray]:
    """Third-party impressions on cookies that never log in (about 0.2 per person)."""
    n_anon = max(1, round(0.2 * n))
    counts = rng.negative_binomial(2, 2 / 14, n_anon)
    cookie_idx = np.repeat(np.arange(n_anon), counts)
    m = len(cookie_idx)
    zone = rng.choice(len(TIMEZONES), n_anon, p=_ZONE_SHARE)[cookie_idx]
    day = rng.integers(0, days, m)
    local = rng.choice(24, m, p=_DAILY_PROFILE) + rng.random(m)
    t = day * _DAY + ((local - offsets[zone, day + 2]) % 24.0) * _HOUR
    cookie = int(key_base) + cookie_idx
    category = rng.integers(0, len(CATEGORIES), m)
    clicked = rng.random(m) < 0.015
    click_t = t[clicked] + 2.0 + rng.exponential(20.0, int(clicked.sum()))
    return _part(
        np.concatenate([t, click_t]),
        np.concatenate([np.full(m, _IMP), np.full(len(click_t), _ADCLICK)]),
        _DISPLAY,
        _THIRD,
        cookie=np.concatenate([cookie, cookie[clicked]]),
        category=np.concatenate([category, category[clicked]]),
    )


# --------------------------------------------------------------------------- frames


def _profile_ids(n: int) -> np.ndarray:
    width = max(6, len(str(n - 1)))
    return np.array([f"p{i:0{width}d}" for i in range(n)], dtype=object)


def _strings(codes: np.ndarray, names: Sequence[str] | np.ndarray) -> pd.Series:
    """A pandas "string" column from integer codes (-1 = missing) into ``names``."""
    cat = pd.Categorical.from_codes(codes, categories=pd.Index(list(names), dtype=object))
    return pd.Series(cat).astype("string")


def _random_cookie_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Unique opaque cookie ids like ``ck-3f9a0b1c2d4e``."""
    raw = np.unique(rng.integers(0, 2**48, count + count // 10 + 16))
    while len(raw) < count:  # pragma: no cover - astronomically unlikely
        raw = np.unique(np.concatenate([raw, rng.integers(0, 2**48, count)]))
    raw = rng.permutation(raw)[:count]
    return [f"ck-{x:012x}" for x in raw.tolist()]


def _assemble_events(
    rng: np.random.Generator,
    parts: list[dict[str, np.ndarray]],
    ppl: dict[str, np.ndarray],
    start: pd.Timestamp,
    days: int,
) -> pd.DataFrame:
    """Concatenate event parts, keep ``[start, end)``, sort by time, build the canonical frame."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = (cols["t"] >= 0.0) & (cols["t"] < days * _DAY)
    # millisecond resolution, like most real logs
    ns = start.as_unit("ns").value + np.round(cols["t"][keep] * 1e3).astype(np.int64) * 1_000_000
    order = np.argsort(ns, kind="stable")
    cols = {k: v[keep][order] for k, v in cols.items()}
    ns = ns[order]

    cookie = cols["cookie"]
    known = cookie >= 0
    uniq, inv = np.unique(cookie[known], return_inverse=True)
    cookie_codes = np.full(len(cookie), -1, np.int64)
    cookie_codes[known] = inv
    n = int(ppl["n"])
    frame = pd.DataFrame(
        {
            "event_time": pd.to_datetime(ns, unit="ns", utc=True),
            "cookie_id": _strings(cookie_codes, _random_cookie_ids(rng, len(uniq))),
            "profile_id": _strings(cols["person"], _profile_ids(n)),
            "event_type": _strings(cols["etype"], _EVENT_TYPES),
            "channel": _strings(cols["channel"], _CHANNELS),
            "source": _strings(cols["source"], _SOURCES),
            "campaign_id": _strings(cols["campaign"], _campaign_ids(start, days)),
            "category": _strings(cols["category"], CATEGORIES),
            "value": cols["value"].astype(np.float64),
        }
    )
    return frame


def _campaign_ids(start: pd.Timestamp, days: int) -> list[str]:
    """``cmp-<ISO year>-<ISO week>`` for each weekly (Tuesday) send, in send order."""
    first = (1 - start.weekday()) % 7
    out = []
    for d in range(first, days, 7):
        iso = (start + pd.Timedelta(days=d)).isocalendar()
        out.append(f"cmp-{iso[0]}-{iso[1]:02d}")
    return out


def _profiles_frame(rng: np.random.Generator, ppl: dict[str, np.ndarray]) -> pd.DataFrame:
    n = int(ppl["n"])
    zone = ppl["zone"]
    age = np.clip(np.round(rng.normal(_GROUP_AGE[ppl["group"]], 11.0)), 18, 85)
    age = np.where(rng.random(n) < 0.15, np.nan, age)
    score = np.log(ppl["engagement"]) + rng.normal(0.0, 0.6, n)
    rank = score.argsort().argsort() / n
    tier = np.where(rank >= 0.9, 2, np.where(rank >= 0.6, 1, 0))
    email = np.array([f"user{i}@example.com" for i in range(n)], dtype=object)
    return pd.DataFrame(
        {
            "profile_id": _strings(np.arange(n), _profile_ids(n)),
            "timezone": _strings(np.where(ppl["tz_missing"], -1, zone), TIMEZONES),
            "country": _strings(_ZONE_COUNTRY[zone], _COUNTRIES),
            "email": _strings(np.where(ppl["has_email"], np.arange(n), -1), email),
            "age": age.astype(np.float64),
            "loyalty_tier": _strings(tier, ("bronze", "silver", "gold")),
        }
    )


def _consent_frame(ppl: dict[str, np.ndarray], start: pd.Timestamp) -> pd.DataFrame:
    """Signup grant for everyone, later withdrawals, and a few re-grants (latest wins)."""
    n = int(ppl["n"])
    people = np.arange(n)
    w = np.flatnonzero(np.isfinite(ppl["withdraw_at"]))
    r = np.flatnonzero(np.isfinite(ppl["regrant_at"]))
    who = np.concatenate([people, w, r])
    at = np.concatenate([ppl["signup"], ppl["withdraw_at"][w], ppl["regrant_at"][r]])
    granted = np.concatenate([np.ones(n, bool), np.zeros(len(w), bool), np.ones(len(r), bool)])
    order = np.lexsort((who, at))
    ns = start.as_unit("ns").value + np.round(at[order] * 1e9).astype(np.int64)
    m = len(order)
    return pd.DataFrame(
        {
            "profile_id": _strings(who[order], _profile_ids(n)),
            "cookie_id": pd.Series(pd.array([pd.NA] * m, dtype="string")),
            "purpose": pd.Series(pd.array(["marketing"] * m, dtype="string")),
            "granted": granted[order],
            "updated_at": pd.to_datetime(ns, unit="ns", utc=True),
        }
    )


def _truth_frame(ppl: dict[str, np.ndarray], start: pd.Timestamp) -> pd.DataFrame:
    n = int(ppl["n"])
    churn = ppl["churn"]
    day = pd.Timedelta(days=1)
    active_from = start + ppl["activation"] * day
    until = pd.Series(start + np.where(churn >= 0, churn, 0) * day)
    until[churn < 0] = pd.NaT
    width = max(4, len(str(len(ppl["hh_a"]))))
    households = [f"h{i:0{width}d}" for i in range(len(ppl["hh_a"]))]
    ns = start.as_unit("ns").value + np.round(ppl["signup"] * 1e9).astype(np.int64)
    withdrawn = np.isfinite(ppl["withdraw_at"]) & ~np.isfinite(ppl["regrant_at"])
    frame = pd.DataFrame(
        {
            "profile_id": _strings(np.arange(n), _profile_ids(n)),
            "interest_group": _strings(ppl["group"], INTEREST_GROUPS),
            "secondary_interest_group": _strings(ppl["second"], INTEREST_GROUPS),
            "preferred_local_hour": ppl["pref"].astype(np.int64),
            "timezone": _strings(ppl["zone"], TIMEZONES),
            "country": _strings(_ZONE_COUNTRY[ppl["zone"]], _COUNTRIES),
            "engagement": ppl["engagement"],
            "session_rate_per_day": ppl["session_rate"],
            "purchase_rate_per_day": ppl["purchase_rate"],
            "activation_day": ppl["activation"].astype(np.int64),
            "churn_day": pd.array(np.where(churn >= 0, churn, 0), dtype="Int64"),
            "active_from": pd.Series(active_from),
            "active_until": until,
            "signup_at": pd.to_datetime(ns, unit="ns", utc=True),
            "email_open_propensity": ppl["open_prop"],
            "has_email": ppl["has_email"],
            "machine_opener": ppl["machine"],
            "n_devices": ppl["n_devices"],
            "household_id": _strings(ppl["household"], households),
            "consent_withdrawn": withdrawn,
        }
    )
    frame.loc[churn < 0, "churn_day"] = pd.NA
    return _coerce_truth(frame)


def _coerce_truth(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical dtypes of the truth table (also after a Parquet round trip)."""
    out = frame.copy()
    for c in ("profile_id", "interest_group", "secondary_interest_group", "timezone", "country"):
        out[c] = out[c].astype("string")
    out["household_id"] = out["household_id"].astype("string")
    for c in ("preferred_local_hour", "activation_day", "n_devices"):
        out[c] = out[c].astype(np.int64)
    out["churn_day"] = out["churn_day"].astype("Int64")
    for c in ("engagement", "session_rate_per_day", "purchase_rate_per_day"):
        out[c] = out[c].astype(np.float64)
    out["email_open_propensity"] = out["email_open_propensity"].astype(np.float64)
    for c in ("has_email", "machine_opener", "consent_withdrawn"):
        out[c] = out[c].astype(bool)
    for c in ("active_from", "active_until", "signup_at"):
        out[c] = pd.to_datetime(out[c], utc=True)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- planted uplift


@dataclass(frozen=True, eq=False)
class PlantedUplift:
    """A demo world with a campaign effect planted for a treated audience.

    Attributes
    ----------
    world : DemoWorld
        The input world plus the extra purchases (the input world is not changed).
    extra_purchases : int
        Purchases added.
    true_absolute_lift : float
        The planted effect on the treated, exactly: the mean over the treated of
        ``P(convert | treated) - P(convert | not treated)`` in the window, which is
        ``probability * (1 - p)`` per person, ``p`` their planted baseline probability of a
        purchase in the window (:func:`true_purchase_probability`).
    baseline_rate : float
        The treated's mean baseline probability ``p``.
    """

    world: DemoWorld
    extra_purchases: int
    true_absolute_lift: float
    baseline_rate: float

    @property
    def true_relative_lift(self) -> float:
        return self.true_absolute_lift / self.baseline_rate if self.baseline_rate else math.nan


def plant_uplift(
    world: DemoWorld,
    treated_ids: Sequence[str],
    start: str | pd.Timestamp,
    days: int,
    probability: float,
    seed: int = 0,
) -> PlantedUplift:
    """Plant a true campaign effect: each treated person makes one extra purchase in
    ``[start, start + days)`` with ``probability`` (at a uniform time, logged in, a category
    of their interests). Nothing changes unless this is called, so a seed's world stays the
    same; the draws come from their own generator (``seed``).
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be within [0, 1], got {probability}")
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    w0 = utc(start, "start")
    w1 = w0 + pd.Timedelta(days=days)
    if w0 < world.start or w1 > world.end:
        raise ValueError(f"the window {w0}..{w1} must lie inside the world {world.start}..")
    truth = world.truth.set_index("profile_id")
    ids = pd.Index(sorted({str(p) for p in treated_ids}), dtype="string")
    unknown = ids[~ids.isin(truth.index)]
    if len(unknown):
        raise ValueError(f"{len(unknown)} treated ids are not in the world, e.g. {unknown[0]}")
    rng = np.random.default_rng([seed, 0x0FF1CE])
    buy = rng.random(len(ids)) < probability
    who = ids[buy]
    n = int(buy.sum())
    at = w0.as_unit("ns").value + (rng.random(n) * (w1 - w0).value).astype(np.int64)
    at = at // 1_000_000 * 1_000_000  # milliseconds, like the rest of the log
    groups = truth.loc[who, "interest_group"].to_numpy(dtype=object)
    cats = [rng.choice(list(_GROUP_CORE[g])) for g in groups]
    price = np.array([_CATEGORY_PRICE[c] for c in cats])
    extra = pd.DataFrame(
        {
            "event_time": pd.to_datetime(at, unit="ns", utc=True),
            "cookie_id": pd.array([pd.NA] * n, dtype="string"),
            "profile_id": pd.array(who.to_numpy(), dtype="string"),
            "event_type": pd.array(["purchase"] * n, dtype="string"),
            "channel": pd.array(["web"] * n, dtype="string"),
            "source": pd.array(["first_party"] * n, dtype="string"),
            "campaign_id": pd.array([pd.NA] * n, dtype="string"),
            "category": pd.array(cats, dtype="string"),
            "value": np.round(rng.lognormal(np.log(price), 0.6), 2) if n else np.zeros(0),
        }
    )
    events = pd.concat([world.events, extra], ignore_index=True)
    events = events.sort_values("event_time", kind="stable", ignore_index=True)
    base = true_purchase_probability(world.truth, w0, days).reindex(ids).to_numpy()
    planted = DemoWorld(events, world.profiles, world.consent, world.truth, world.start, world.end)
    return PlantedUplift(
        world=planted,
        extra_purchases=n,
        true_absolute_lift=float(np.mean(probability * (1.0 - base))) if len(ids) else 0.0,
        baseline_rate=float(np.mean(base)) if len(ids) else 0.0,
    )
