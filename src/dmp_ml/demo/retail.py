"""The sparse retail demo world: a customer-keyed purchase log, as most real shops have one.

Unlike the DMP demo world (:mod:`dmp_ml.demo`) there are no cookies, no page views and no
e-mail events: each customer has a first purchase somewhere in the log, a few more or none, and
long silences. Most customers buy once or twice; by the end of the log most are lapsed.

What is planted (``truth``, with the columns of :data:`dmp_ml.demo.TRUTH_COLUMNS`):

- a buy-till-you-die process per customer: a first purchase at ``active_from``, then purchases
  as a Poisson process with rate ``purchase_rate_per_day`` until an exponential lifetime ends at
  ``active_until`` (which may lie after the log). So :func:`dmp_ml.demo.true_purchase_probability`
  gives the exact probability of a purchase in any later window;
- purchase rates and lifetimes heterogeneous across customers (gamma mixtures), spend per
  customer lognormal;
- a preferred local shopping hour (most purchases near it, the rest over shop hours, fewer on
  Sundays) and the customer's time zone (mostly one country, missing for some);
- an interest group with its category mix, and ~3% of customers who withdrew consent.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dmp_ml.demo.catalogue import CATEGORIES, INTEREST_GROUPS, TIMEZONES
from dmp_ml.demo.truth import TRUTH_COLUMNS
from dmp_ml.demo.world import DemoWorld

logger = logging.getLogger(__name__)

_DAY_S = 86_400.0
# weights of the local shopping hour outside the preferred one (shops open 7-22 h)
_SHOP_HOURS = np.array(
    [0.0] * 7  # 0-6 h
    + [0.4, 0.8, 1.0, 1.2, 1.3, 1.5, 1.3, 1.2, 1.1, 1.0, 1.0, 1.2, 1.2, 1.2, 1.0]  # 7-21 h
    + [0.6, 0.0]  # 22-23 h
)
_ZONE_SHARE = np.array([0.8, 0.08, 0.06, 0.03, 0.02, 0.01])  # the shop's home market first
_COUNTRY = ("GB", "DE", "US", "US", "JP", "AU")
# categories of each interest group (its own first), drawn with these weights
_GROUP_CATEGORIES = {
    "outdoor": ("hiking", "camping", "cycling", "running", "shoes"),
    "fashion": ("womenswear", "menswear", "shoes", "accessories"),
    "home": ("furniture", "kitchen", "decor", "garden"),
    "tech": ("phones", "laptops", "audio", "gaming"),
    "beauty": ("skincare", "makeup", "fragrance", "accessories"),
    "kids": ("toys", "baby", "kidswear", "gaming"),
}


def generate_retail_world(
    n_customers: int = 5_000,
    days: int = 365,
    seed: int = 0,
    start: str | pd.Timestamp = "2025-01-06",
) -> DemoWorld:
    """Generate a sparse, customer-keyed purchase log with its planted truth.

    Parameters
    ----------
    n_customers : int
        Number of customers (>= 10); each has at least one purchase in the log.
    days : int
        Length of the log in days (>= 60).
    seed : int
        Seed of ``np.random.default_rng``; the same arguments always give the same world.
    start : str or Timestamp
        First day of the log (UTC midnight).

    Returns
    -------
    DemoWorld
        ``events`` (purchases only, ``cookie_id`` always missing), ``profiles`` (timezone,
        country), ``consent`` and ``truth``.
    """
    for name, value, least in (("n_customers", n_customers, 10), ("days", days, 60)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    n, days = int(n_customers), int(days)
    rng = np.random.default_rng(seed)
    start_ts = pd.Timestamp(start)
    start_ts = (start_ts.tz_localize("UTC") if start_ts.tzinfo is None else start_ts).normalize()

    # buy till you die: first purchase, then Poisson purchases until the lifetime ends
    birth = rng.random(n) ** 1.3 * (days - 1) * _DAY_S  # more customers early than late
    rate = rng.gamma(0.7, 1.0 / 0.7 / 55.0, n)  # purchases per day, mean one in 55 days
    lifetime = rng.exponential(1.0 / rng.gamma(1.5, 1.0 / 1.5 / 200.0, n))
    death = birth + np.minimum(lifetime, 36_500.0) * _DAY_S  # a century is forever
    end_s = days * _DAY_S
    alive_for = (np.minimum(death, end_s) - birth) / _DAY_S
    repeats = rng.poisson(rate * np.maximum(alive_for, 0.0))
    who = np.concatenate([np.arange(n), np.repeat(np.arange(n), repeats)])
    t = np.concatenate(
        [birth, birth[who[n:]] + rng.random(len(who) - n) * alive_for[who[n:]] * _DAY_S]
    )

    # the hour: preferred local shopping hour, else anywhere in shop hours; fewer on Sundays
    zone = rng.choice(len(TIMEZONES), n, p=_ZONE_SHARE)
    pref = rng.choice(24, n, p=_SHOP_HOURS / _SHOP_HOURS.sum())
    m = len(who)
    near = (pref[who] + np.round(rng.normal(0.0, 0.8, m))) % 24
    generic = rng.choice(24, m, p=_SHOP_HOURS / _SHOP_HOURS.sum())
    local_hour = np.where(rng.random(m) < 0.6, near, generic) + rng.random(m)
    day = np.floor(t / _DAY_S)
    sunday = ((start_ts.dayofweek + day) % 7) == 6
    day = np.where(sunday & (rng.random(m) < 0.6), np.minimum(day + 1, days - 1), day)
    local = start_ts.tz_localize(None) + pd.to_timedelta(day * _DAY_S + local_hour * 3600, "s")
    event_time = _local_to_utc(local, zone[who])
    keep = (event_time >= start_ts) & (event_time < start_ts + pd.Timedelta(days=days))

    group = rng.choice(len(INTEREST_GROUPS), n)
    category = _categories(rng, group[who])
    spend = rng.lognormal(3.3, 0.7, n)
    value = np.round(spend[who] * rng.lognormal(0.0, 0.4, m), 2)
    width = max(6, len(str(n - 1)))
    ids = np.array([f"c{i:0{width}d}" for i in range(n)], dtype=object)
    events = pd.DataFrame(
        {
            "event_time": event_time,
            "cookie_id": pd.array([pd.NA] * m, dtype="string"),
            "profile_id": pd.array(ids[who], dtype="string"),
            "event_type": pd.array(["purchase"] * m, dtype="string"),
            "channel": pd.array(np.where(rng.random(m) < 0.25, "app", "web"), dtype="string"),
            "source": pd.array(["first_party"] * m, dtype="string"),
            "campaign_id": pd.array([pd.NA] * m, dtype="string"),
            "category": pd.array(category, dtype="string"),
            "value": value,
        }
    )[keep]
    events = events.sort_values("event_time", kind="stable").reset_index(drop=True)

    tz_missing = rng.random(n) < 0.1
    profiles = pd.DataFrame(
        {
            "profile_id": pd.array(ids, dtype="string"),
            "timezone": pd.array(
                np.where(tz_missing, None, np.asarray(TIMEZONES, dtype=object)[zone]),
                dtype="string",
            ),
            "country": pd.array(np.asarray(_COUNTRY, dtype=object)[zone], dtype="string"),
        }
    )
    withdrawn = rng.random(n) < 0.03
    consent = _consent(ids, withdrawn, start_ts, birth, days)
    truth = _truth(ids, group, pref, zone, rate, birth, death, start_ts, days, withdrawn)
    logger.info("retail world: %d customers, %d days, %d purchases", n, days, len(events))
    return DemoWorld(events, profiles, consent, truth, start_ts, start_ts + pd.Timedelta(days=days))


def _local_to_utc(local: pd.DatetimeIndex, zone: np.ndarray) -> pd.Series:
    """UTC instants of naive local times, each in its own zone (DST gaps shift forward)."""
    out = np.empty(len(local), dtype="datetime64[ns]")
    for z, name in enumerate(TIMEZONES):
        mask = zone == z
        if mask.any():
            summer = np.ones(int(mask.sum()), dtype=bool)  # the repeated autumn hour: the first
            utc = local[mask].tz_localize(name, ambiguous=summer, nonexistent="shift_forward")
            out[mask] = utc.tz_convert("UTC").tz_localize(None).to_numpy()
    return pd.Series(pd.to_datetime(out, utc=True))


def _categories(rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
    """A category per purchase: the group's own categories (the first most), 10% anything."""
    m = len(group)
    out = np.empty(m, dtype=object)
    for g, name in enumerate(INTEREST_GROUPS):
        mask = group == g
        own = _GROUP_CATEGORIES[name]
        weights = np.linspace(2.0, 1.0, len(own))
        out[mask] = rng.choice(own, int(mask.sum()), p=weights / weights.sum())
    noise = rng.random(m) < 0.1
    out[noise] = rng.choice(CATEGORIES, int(noise.sum()))
    return out


def _consent(
    ids: np.ndarray, withdrawn: np.ndarray, start: pd.Timestamp, birth: np.ndarray, days: int
) -> pd.DataFrame:
    """A grant at each customer's first purchase; a later withdrawal for some."""
    n = len(ids)
    w = np.flatnonzero(withdrawn)
    when = birth[w] + (days * _DAY_S - birth[w]) * 0.5
    at = np.concatenate([birth, when])
    m = len(at)
    return pd.DataFrame(
        {
            "profile_id": pd.array(np.concatenate([ids, ids[w]]), dtype="string"),
            "cookie_id": pd.array([pd.NA] * m, dtype="string"),
            "purpose": pd.array(["marketing"] * m, dtype="string"),
            "granted": np.concatenate([np.ones(n, bool), np.zeros(len(w), bool)]),
            "updated_at": start + pd.to_timedelta(at, unit="s"),
        }
    )


def _truth(
    ids: np.ndarray,
    group: np.ndarray,
    pref: np.ndarray,
    zone: np.ndarray,
    rate: np.ndarray,
    birth: np.ndarray,
    death: np.ndarray,
    start: pd.Timestamp,
    days: int,
    withdrawn: np.ndarray,
) -> pd.DataFrame:
    n = len(ids)
    churn = np.floor(death / _DAY_S).astype(np.int64)
    names = np.asarray(INTEREST_GROUPS, dtype=object)
    frame = pd.DataFrame(
        {
            "profile_id": pd.array(ids, dtype="string"),
            "interest_group": pd.array(names[group], dtype="string"),
            "secondary_interest_group": pd.array([pd.NA] * n, dtype="string"),
            "preferred_local_hour": pref.astype(np.int64),
            "timezone": pd.array(np.asarray(TIMEZONES, dtype=object)[zone], dtype="string"),
            "country": pd.array(np.asarray(_COUNTRY, dtype=object)[zone], dtype="string"),
            "engagement": rate * 55.0,
            "session_rate_per_day": np.zeros(n),
            "purchase_rate_per_day": rate,
            "activation_day": np.floor(birth / _DAY_S).astype(np.int64),
            "churn_day": pd.array(np.where(churn < days, churn, 0), dtype="Int64"),
            "active_from": start + pd.to_timedelta(birth, unit="s"),
            "active_until": start + pd.to_timedelta(death, unit="s"),
            "signup_at": start + pd.to_timedelta(birth, unit="s"),
            "email_open_propensity": np.zeros(n),
            "has_email": np.zeros(n, bool),
            "machine_opener": np.zeros(n, bool),
            "n_devices": np.zeros(n, np.int64),
            "household_id": pd.array([pd.NA] * n, dtype="string"),
            "consent_withdrawn": withdrawn,
        }
    )
    frame.loc[churn >= days, "churn_day"] = pd.NA
    return frame[list(TRUTH_COLUMNS)]
