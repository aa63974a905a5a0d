"""Who lives in the demo world: latent people, their devices and cookies, profiles and consent."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from dmp_ml.demo.catalogue import (
    CATEGORIES,
    COUNTRIES,
    CUM_MIX,
    DAILY_PROFILE,
    DAY,
    GROUP_AGE,
    GROUP_PURCHASE_FACTOR,
    GROUP_SHARE,
    HOUR,
    INTEREST_GROUPS,
    TIMEZONES,
    ZONE_COUNTRY,
    ZONE_SHARE,
    strings,
)


def draw_people(rng: np.random.Generator, n: int, days: int) -> dict[str, np.ndarray]:
    """Latent per-person attributes (arrays of length n)."""
    g_count = len(INTEREST_GROUPS)
    group = rng.choice(g_count, n, p=GROUP_SHARE)
    second = (group + rng.integers(1, g_count, n)) % g_count
    second = np.where(rng.random(n) < 0.3, second, -1)
    zone = rng.choice(len(TIMEZONES), n, p=ZONE_SHARE)

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
    purchase_rate = np.minimum(purchase_rate * GROUP_PURCHASE_FACTOR[group], 0.25)
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
        activation * DAY + rng.random(n) * 6 * HOUR,
        -rng.uniform(1.0, 730.0, n) * DAY,
    )
    end_s = days * DAY
    withdraw = rng.random(n) < 0.035
    lo = np.maximum(signup, 0.0) + DAY
    withdraw &= lo < end_s - DAY
    withdraw_at = np.where(withdraw, lo + rng.random(n) * np.maximum(end_s - DAY - lo, 0), np.inf)
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


def draw_devices(rng: np.random.Generator, ppl: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
        "n_keys": np.array(total * SEG_STRIDE),
    }


SEG_STRIDE = 1_000  # cookie key = device * stride + rotation segment (+1)


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


def pick_device(
    keys: np.ndarray, devs: np.ndarray, person: np.ndarray, u: np.ndarray
) -> np.ndarray:
    idx = np.searchsorted(keys, person + u * 0.999999, side="right")
    return devs[np.minimum(idx, len(devs) - 1)]


def utc_offsets(start: pd.Timestamp, days: int) -> np.ndarray:
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
    generic = rng.choice(24, m, p=DAILY_PROFILE) + rng.random(m)
    return np.where(rng.random(m) < p_pref, near, generic) % 24.0


def times_in_active_days(
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
    return day * DAY + utc_hour * HOUR


def draw_categories(
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
        cat[mask] = np.searchsorted(CUM_MIX[g], u[mask], side="right")
    cat = np.minimum(cat, len(CATEGORIES) - 1)
    noise = rng.random(m) < 0.1
    return np.where(noise, rng.integers(0, len(CATEGORIES), m), cat)


def profile_ids(n: int) -> np.ndarray:
    width = max(6, len(str(n - 1)))
    return np.array([f"p{i:0{width}d}" for i in range(n)], dtype=object)


def profiles_frame(rng: np.random.Generator, ppl: dict[str, np.ndarray]) -> pd.DataFrame:
    n = int(ppl["n"])
    zone = ppl["zone"]
    age = np.clip(np.round(rng.normal(GROUP_AGE[ppl["group"]], 11.0)), 18, 85)
    age = np.where(rng.random(n) < 0.15, np.nan, age)
    score = np.log(ppl["engagement"]) + rng.normal(0.0, 0.6, n)
    rank = score.argsort().argsort() / n
    tier = np.where(rank >= 0.9, 2, np.where(rank >= 0.6, 1, 0))
    email = np.array([f"user{i}@example.com" for i in range(n)], dtype=object)
    return pd.DataFrame(
        {
            "profile_id": strings(np.arange(n), profile_ids(n)),
            "timezone": strings(np.where(ppl["tz_missing"], -1, zone), TIMEZONES),
            "country": strings(ZONE_COUNTRY[zone], COUNTRIES),
            "email": strings(np.where(ppl["has_email"], np.arange(n), -1), email),
            "age": age.astype(np.float64),
            "loyalty_tier": strings(tier, ("bronze", "silver", "gold")),
        }
    )


def consent_frame(ppl: dict[str, np.ndarray], start: pd.Timestamp) -> pd.DataFrame:
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
            "profile_id": strings(who[order], profile_ids(n)),
            "cookie_id": pd.Series(pd.array([pd.NA] * m, dtype="string")),
            "purpose": pd.Series(pd.array(["marketing"] * m, dtype="string")),
            "granted": granted[order],
            "updated_at": pd.to_datetime(ns, unit="ns", utc=True),
        }
    )
