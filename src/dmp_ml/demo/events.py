"""What the demo world's people do: e-mail campaigns, sessions, purchases, ads, as one event log."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmp_ml.demo.catalogue import (
    ADCLICK,
    APP,
    ATC,
    BUY,
    CATEGORIES,
    CATEGORY_PRICE,
    CHANNELS,
    CLICK,
    DAILY_PROFILE,
    DAY,
    DISPLAY,
    EMAIL,
    EVENT_TYPES,
    FIRST,
    HOUR,
    IMP,
    OPEN,
    PARTNER,
    PRV,
    PV,
    SECOND,
    SEND,
    SOURCES,
    THIRD,
    TIMEZONES,
    WEB,
    ZONE_SHARE,
    strings,
)
from dmp_ml.demo.personas import (
    SEG_STRIDE,
    draw_categories,
    pick_device,
    profile_ids,
    times_in_active_days,
)


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


def email_events(
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
    send_t = send_days[:, None] * DAY + rng.random((k_count, n)) * DAY
    consented = (send_t < ppl["withdraw_at"]) | (send_t >= ppl["regrant_at"])
    eligible = ppl["has_email"] & (send_t >= ppl["signup"]) & consented
    k, p = np.nonzero(eligible)
    st = send_t[k, p]

    local = (st / HOUR + offsets[ppl["zone"][p], send_days[k] + 2]) % 24.0
    dist = np.abs((local - (ppl["pref"][p] + 0.5) + 12.0) % 24.0 - 12.0)
    churned = (ppl["churn"][p] >= 0) & (st >= ppl["churn"][p] * DAY)
    p_open = ppl["open_prop"][p] * (0.1 + 0.9 * np.exp(-(dist**2) / (2 * 2.2**2)))
    p_open = p_open * np.where(churned, 0.1, 1.0)
    opened = rng.random(len(st)) < p_open
    delay = np.minimum(np.exp(rng.normal(np.log(25 * 60.0), 0.9, len(st))), 2 * DAY)
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
            np.full(len(st), SEND),
            np.full(int(opened.sum()), OPEN),
            np.full(int(machine.sum()), OPEN),
            np.full(int(clicked.sum()), CLICK),
        ]
    )
    emails = _part(t, etype, EMAIL, FIRST, person=who, campaign=cmp)
    campaign_category = rng.integers(0, len(CATEGORIES), k_count)
    clicks = {
        "t": click_t[clicked],
        "person": p[clicked],
        "campaign": k[clicked],
        "category": campaign_category[k[clicked]],
        "send_days": send_days,
    }
    return emails, clicks


def sessions(
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
    reg_t = times_in_active_days(rng, reg_p, ppl, offsets)

    n_buy = rng.poisson(ppl["purchase_rate"] * active)
    buy_p = np.repeat(np.arange(n), n_buy)
    buy_t = times_in_active_days(rng, buy_p, ppl, offsets)

    lead_t = clicks["t"] + 5.0 + rng.random(len(clicks["t"])) * 20.0
    person = np.concatenate([reg_p, buy_p, clicks["person"]])
    t = np.concatenate([reg_t, buy_t, lead_t])
    kind = np.concatenate(
        [np.zeros(len(reg_p), np.int64), np.ones(len(buy_p), np.int64), np.full(len(lead_t), 2)]
    )
    campaign = np.concatenate([np.full(len(reg_p) + len(buy_p), -1), clicks["campaign"]])
    category = draw_categories(rng, person, ppl)
    category[kind == 2] = clicks["category"]
    # only email-landing sessions can fall after the end; regular sessions (first rows, indexed
    # below via n_reg) and purchases always lie inside their active days.
    keep = t < days * DAY
    person, t, kind, campaign, category = (a[keep] for a in (person, t, kind, campaign, category))
    m = len(person)

    u = rng.random(m)
    device = pick_device(dev["keys"], dev["devs"], person, u)
    is_buy = kind == 1
    device[is_buy] = pick_device(dev["link_keys"], dev["link_devs"], person[is_buy], u[is_buy])
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
    seg = np.floor((begin / DAY + dev["phase"][device]) / dev["life"][device]).astype(np.int64)
    cookie = device * SEG_STRIDE + seg + 1

    # a linkable cookie gets at least one logged-in session
    uniq, first_idx, inv = np.unique(cookie, return_index=True, return_inverse=True)
    n_logged = np.bincount(inv, weights=logged.astype(float), minlength=len(uniq))
    force = dev["linkable"][uniq // SEG_STRIDE] & (n_logged == 0)
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


def session_events(
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

    browse = rng.choice(np.array([PV, PRV, ATC]), e_count, p=[0.3, 0.55, 0.15])
    etype = np.where(pos == 0, PV, browse)
    etype[buy] = np.array([PRV, ATC, BUY])[pos[buy]]
    etype[lead] = np.array([PV, PRV])[pos[lead]]

    person = sess["person"][sid]
    cat = sess["category"][sid]
    u = rng.random(e_count)
    fresh = draw_categories(rng, person, ppl)
    cat = np.where(reg & (etype == PV) & (u < 0.35), -1, cat)
    cat = np.where(reg & (etype != PV) & (u < 0.15), fresh, cat)
    campaign = np.where(lead & (pos == 0), sess["campaign"][sid], -1)
    value = np.full(e_count, np.nan)
    price = np.array([CATEGORY_PRICE[c] for c in CATEGORIES])[cat[is_purchase]]
    value[is_purchase] = np.round(rng.lognormal(np.log(price), 0.6), 2)
    channel = np.where(dev["is_app"][sess["device"][sid]], APP, WEB)
    first_party = _part(
        t,
        etype,
        channel,
        FIRST,
        person=np.where(sess["logged"][sid], person, -1),
        cookie=sess["cookie"][sid],
        campaign=campaign,
        category=cat,
        value=value,
    )

    # third-party impressions on the person's own cookie in the hour before a visit
    reg_s = np.flatnonzero(kind == 0)
    ad_s = np.repeat(reg_s, rng.poisson(0.15, len(reg_s)))
    ad_t = sess["begin"][ad_s] - rng.uniform(60.0, HOUR, len(ad_s))
    retarget = rng.random(len(ad_s)) < 0.5
    ad_cat = np.where(
        retarget, sess["category"][ad_s], draw_categories(rng, sess["person"][ad_s], ppl)
    )
    clicked = rng.random(len(ad_s)) < 0.02
    click_t = ad_t[clicked] + 2.0 + rng.exponential(20.0, int(clicked.sum()))
    ads = _part(
        np.concatenate([ad_t, click_t]),
        np.concatenate([np.full(len(ad_s), IMP), np.full(len(click_t), ADCLICK)]),
        DISPLAY,
        THIRD,
        cookie=sess["cookie"][np.concatenate([ad_s, ad_s[clicked]])],
        category=np.concatenate([ad_cat, ad_cat[clicked]]),
    )

    # second-party partner views, matched by hashed email (profile) or a synced cookie
    pr_s = reg_s[ppl["partner"][sess["person"][reg_s]]]
    pr = np.repeat(pr_s, rng.poisson(0.12, len(pr_s)))
    pr_t = sess["begin"][pr] + rng.uniform(HOUR, 72 * HOUR, len(pr))
    by_profile = rng.random(len(pr)) < 0.5
    partner = _part(
        pr_t,
        PRV,
        PARTNER,
        SECOND,
        person=np.where(by_profile, sess["person"][pr], -1),
        cookie=np.where(by_profile, -1, sess["cookie"][pr]),
        category=draw_categories(rng, sess["person"][pr], ppl),
    )
    return [first_party, ads, partner]


def anonymous_ads(
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
    zone = rng.choice(len(TIMEZONES), n_anon, p=ZONE_SHARE)[cookie_idx]
    day = rng.integers(0, days, m)
    local = rng.choice(24, m, p=DAILY_PROFILE) + rng.random(m)
    t = day * DAY + ((local - offsets[zone, day + 2]) % 24.0) * HOUR
    cookie = int(key_base) + cookie_idx
    category = rng.integers(0, len(CATEGORIES), m)
    clicked = rng.random(m) < 0.015
    click_t = t[clicked] + 2.0 + rng.exponential(20.0, int(clicked.sum()))
    return _part(
        np.concatenate([t, click_t]),
        np.concatenate([np.full(m, IMP), np.full(len(click_t), ADCLICK)]),
        DISPLAY,
        THIRD,
        cookie=np.concatenate([cookie, cookie[clicked]]),
        category=np.concatenate([category, category[clicked]]),
    )


def _random_cookie_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Unique opaque cookie ids like ``ck-3f9a0b1c2d4e``."""
    raw = np.unique(rng.integers(0, 2**48, count + count // 10 + 16))
    while len(raw) < count:  # pragma: no cover - astronomically unlikely
        raw = np.unique(np.concatenate([raw, rng.integers(0, 2**48, count)]))
    raw = rng.permutation(raw)[:count]
    return [f"ck-{x:012x}" for x in raw.tolist()]


def assemble_events(
    rng: np.random.Generator,
    parts: list[dict[str, np.ndarray]],
    ppl: dict[str, np.ndarray],
    start: pd.Timestamp,
    days: int,
) -> pd.DataFrame:
    """Concatenate event parts, keep ``[start, end)``, sort by time, build the canonical frame."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = (cols["t"] >= 0.0) & (cols["t"] < days * DAY)
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
            "cookie_id": strings(cookie_codes, _random_cookie_ids(rng, len(uniq))),
            "profile_id": strings(cols["person"], profile_ids(n)),
            "event_type": strings(cols["etype"], EVENT_TYPES),
            "channel": strings(cols["channel"], CHANNELS),
            "source": strings(cols["source"], SOURCES),
            "campaign_id": strings(cols["campaign"], _campaign_ids(start, days)),
            "category": strings(cols["category"], CATEGORIES),
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
