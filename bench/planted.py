"""The propensity model on a planted world unlike the demo's: served AUC vs planted truth.

A purchase log drawn from processes the demo generators do not use: most customers buy once and
never again, the repeaters' rates are heavy-tailed (log-normal, sigma 1.3), they drop out after
an exponential lifetime, and every purchase rate follows one calendar (a yearly wave, a
holiday peak in late November and December, busier weekends). The planted probability of a
purchase in ``[cutoff, cutoff + horizon)`` is exact: it knows each customer's type, rate and
drop-out day. The bundle is trained on the log before the cutoff and judged on what happened
after it, against the planted probabilities, the plain baselines of ``bench/quality.py`` and
the ceiling: the exact posterior probability given each customer's purchases before the cutoff
and the prior they were drawn from (:func:`posterior`), the best any model of the log can do.
The options move the world: ``--one-time 0 --lifetime inf --sigma 0.5`` is a low-signal one
(everyone repeats at rates alike, the truth's AUC about 0.67), ``--days 200`` a short history.
``se_*`` are paired-bootstrap standard errors of served minus the best baseline, the truth and
the ceiling.

    python bench/planted.py --seeds 0 1 --horizon 30
    python bench/planted.py --seeds 0 1 --one-time 0 --lifetime inf --sigma 0.5 --gap 45
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
from quality import _auc, _resolved, _settings, paired_auc_se, propensity_scores

import dmp_ml

DAY_S = 86_400.0
START = pd.Timestamp("2024-01-01", tz="UTC")


def calendar(days: int) -> np.ndarray:
    """Every day's purchase-rate multiplier (mean about 1), shape (days,)."""
    date = START + pd.to_timedelta(np.arange(days), unit="D")
    doy = date.day_of_year.to_numpy()
    wave = 1.0 + 0.4 * np.sin(2 * np.pi * (doy - 100) / 365.25)
    holiday = np.where((doy >= 325) & (doy <= 358), 2.0, 1.0)
    weekend = np.where(date.day_of_week.to_numpy() >= 5, 1.3, 1.0)
    return wave * holiday * weekend


@dataclass(frozen=True)
class Prior:
    """How customers are drawn: the share who buy once only, the repeaters' mean lifetime, the
    median days between a repeater's purchases and the spread of their log-rates (the smaller,
    the more alike the customers and the less any model, the truth included, can rank them)."""

    one_time: float = 0.6
    lifetime_days: float = 250.0
    median_gap_days: float = 45.0
    sigma: float = 1.3


def draw(n: int, days: int, rng: np.random.Generator, prior: Prior) -> dict[str, np.ndarray]:
    """Customers (birth and death in days, rate per day) and their daily purchase counts after
    the first, shape (n, days)."""
    birth = rng.random(n) * days
    once = rng.random(n) < prior.one_time
    rates = rng.lognormal(-np.log(prior.median_gap_days), prior.sigma, n)
    rate = np.where(once, 0.0, np.minimum(rates, 1.0))
    death = birth + rng.exponential(prior.lifetime_days, n)
    day = np.arange(days)
    # the share of each day a customer is alive after the first purchase
    alive = np.clip(np.minimum(day + 1, death[:, None]) - np.maximum(day, birth[:, None]), 0, 1)
    counts = rng.poisson(rate[:, None] * calendar(days)[None, :] * alive)
    return {"birth": birth, "death": death, "rate": rate, "counts": counts}


def truth(people: dict[str, np.ndarray], cutoff: float, horizon: int) -> np.ndarray:
    """Exact probability of a purchase in ``[cutoff, cutoff + horizon)`` (days), shape (n,)."""
    span = np.arange(int(cutoff), int(cutoff) + horizon)
    season = calendar(int(cutoff) + horizon)[span]
    birth, death = people["birth"][:, None], people["death"][:, None]
    alive = np.clip(np.minimum(span + 1, death) - np.maximum(span, birth), 0, 1)
    return -np.expm1(-people["rate"] * (alive * season).sum(axis=1))


def world(n: int, days: int, seed: int, prior: Prior) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The purchase log (the columns of ``dmp_ml.generate_retail_world``'s) and its people."""
    rng = np.random.default_rng(seed)
    people = draw(n, days, rng, prior)
    who, day = np.nonzero(people["counts"])
    reps = people["counts"][who, day]
    who, day = np.repeat(who, reps), np.repeat(day, reps)
    seconds = np.concatenate(
        [people["birth"] * DAY_S, (day + rng.random(len(day))) * DAY_S]
    )  # a repeat is some time on its day (none before the first purchase: alive share)
    who = np.concatenate([np.arange(n), who])
    seconds = np.maximum(seconds, people["birth"][who] * DAY_S)
    m = len(who)
    spend = rng.lognormal(3.0, 0.8, n)
    events = pd.DataFrame(
        {
            "event_time": START + pd.to_timedelta(seconds, unit="s"),
            "cookie_id": pd.array([pd.NA] * m, dtype="string"),
            "profile_id": pd.array([f"p{i:06d}" for i in who], dtype="string"),
            "event_type": pd.array(["purchase"] * m, dtype="string"),
            "channel": pd.array(["web"] * m, dtype="string"),
            "source": pd.array(["first_party"] * m, dtype="string"),
            "campaign_id": pd.array([pd.NA] * m, dtype="string"),
            "category": pd.array(["general"] * m, dtype="string"),
            "value": np.round(spend[who] * rng.lognormal(0.0, 0.4, m), 2),
        }
    )
    return events.sort_values("event_time", kind="stable").reset_index(drop=True), people


def posterior(events: pd.DataFrame, cutoff: int, horizon: int, prior: Prior) -> pd.Series:
    """The best any model of the log can do: each customer's probability of a purchase in
    ``[cutoff, cutoff + horizon)`` given their purchases before ``cutoff`` and the prior they
    were drawn from (exact Bayes, on a grid of rates and daily drop-out days), per profile.

    A customer's evidence is their first purchase ``b``, the number ``n`` of repeats and the
    last one ``t``: a repeater with rate ``r`` alive until ``d`` has the likelihood
    ``r**n exp(-r (C(min(d, cutoff)) - C(b)))`` for ``d > t`` (``C`` the cumulated calendar),
    one who buys once only has 1 when ``n = 0``.
    """
    past = events[events["event_time"] < START + pd.Timedelta(days=cutoff)]
    days = (past["event_time"] - START).dt.total_seconds() / DAY_S
    by = days.groupby(past["profile_id"].astype(str))
    ids, b, t = by.min().index, by.min().to_numpy(), by.max().to_numpy()
    n = by.size().to_numpy() - 1
    season = calendar(cutoff + horizon)
    cum = np.r_[0.0, np.cumsum(season)]

    def C(x: np.ndarray) -> np.ndarray:  # cumulated calendar at (fractional) day x
        i = np.minimum(np.floor(x).astype(int), len(season) - 1)
        return cum[i] + (x - i) * season[i]

    mu, sd = -np.log(prior.median_gap_days), max(prior.sigma, 1e-3)
    log_r = np.linspace(mu - 5 * sd, min(0.0, mu + 5 * sd), 400)
    log_w = -0.5 * ((log_r - mu) / sd) ** 2
    log_w -= np.logaddexp.reduce(log_w)
    r = np.exp(log_r)
    life = prior.lifetime_days
    # log-likelihood of the repeats given each rate and survival to the cutoff, (customers, K)
    base = log_w[None, :] + n[:, None] * log_r[None, :]
    alive = base - r[None, :] * (C(np.full(1, cutoff)) - C(b))[:, None]
    total = alive
    if np.isfinite(life):
        alive = alive - ((cutoff - b) / life)[:, None]
        # drop-out in (t, cutoff): density exp(-(d - b)/life)/life, a midpoint per day
        first = np.floor(t).astype(int)
        mids = np.arange(cutoff) + 0.5
        term = np.exp(-mids[:, None] / life - r[None, :] * C(mids)[:, None]) / life
        after = np.flipud(np.cumsum(np.flipud(term), axis=0))  # sum over days >= j
        later = np.vstack([after, np.zeros((1, len(r)))])[np.minimum(first + 1, cutoff)]
        span = np.minimum(first + 1, cutoff) - t  # the rest of the last purchase's day
        mid = t + span / 2
        part = span[:, None] * np.exp(-mid[:, None] / life - r[None, :] * C(mid)[:, None]) / life
        dead = base + (r[None, :] * C(b)[:, None] + (b / life)[:, None]) + np.log(later + part)
        total = np.logaddexp(alive, dead)
    # the chance of no purchase in the horizon for a repeater alive at the cutoff, per rate
    steps = np.arange(horizon + 1)
    exposure = C(cutoff + np.minimum(steps + 0.5, horizon)) - C(np.full(1, cutoff))
    if np.isfinite(life):
        mass = np.r_[np.diff(-np.exp(-steps / life)), np.exp(-horizon / life)]
    else:
        mass = np.r_[np.zeros(horizon), 1.0]
    none = (mass[:, None] * np.exp(-exposure[:, None] * r[None, :])).sum(axis=0)
    with np.errstate(divide="ignore"):
        once = np.where(n == 0, np.log(prior.one_time), -np.inf)
        repeater = np.log1p(-prior.one_time)
    norm = np.logaddexp(once, repeater + np.logaddexp.reduce(total, axis=1))
    buy = repeater + np.logaddexp.reduce(alive + np.log1p(-none)[None, :], axis=1)
    return pd.Series(np.exp(buy - norm), index=ids)


def evaluate(n: int, days: int, horizon: int, seed: int, prior: Prior) -> dict[str, object]:
    """Train before ``days - horizon``, judge on the horizon after it."""
    events, people = world(n, days, seed, prior)
    cut_day = days - horizon
    as_of = START + pd.Timedelta(days=cut_day)
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp, horizon)
        result = dmp_ml.train(events[events["event_time"] < as_of], as_of, tmp, settings=settings)
        bundle = dmp_ml.load_bundle(result.bundle_path)
        history = _resolved(events, as_of + pd.Timedelta(days=horizon), settings)
        y, scores = propensity_scores(bundle, history, as_of, horizon)
        served = result.steps["propensity"].details["served"]
        held_out = result.steps["propensity"].metrics
    ids = scores["served"].index
    index = pd.Index([f"p{i:06d}" for i in range(n)])
    scores["truth"] = pd.Series(truth(people, cut_day, horizon), index=index).reindex(ids)
    scores["ceiling"] = posterior(events, cut_day, horizon, prior).reindex(ids)
    aucs = {name: _auc(y, s) for name, s in scores.items()}
    best = max(("recency", "frequency", "rfm_lightgbm"), key=lambda k: aucs.get(k, -1.0))
    return {
        "seed": seed,
        "positives": int(y.sum()),
        "profiles": len(y),
        **{k: round(v, 3) for k, v in aucs.items()},
        "se_best": round(paired_auc_se(y, scores["served"], scores[best]), 3),
        "se_truth": round(paired_auc_se(y, scores["served"], scores["truth"]), 3),
        "se_ceiling": round(paired_auc_se(y, scores["served"], scores["ceiling"]), 3),
        "guard_served": served,
        "train_rows": int(held_out["n_train_rows"]),
        "valid_model": round(held_out["model_roc_auc"], 3),
        "valid_served": round(held_out["served_roc_auc"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--days", type=int, default=450)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--one-time", type=float, default=0.6, help="share who buy once only")
    parser.add_argument("--lifetime", type=float, default=250.0, help="mean days; inf = forever")
    parser.add_argument("--gap", type=float, default=45.0, help="repeaters' median days between")
    parser.add_argument("--sigma", type=float, default=1.3, help="spread of repeaters' log-rates")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prior = Prior(args.one_time, args.lifetime, args.gap, args.sigma)
    rows = [evaluate(args.customers, args.days, args.horizon, s, prior) for s in args.seeds]
    pd.set_option("display.width", 250)
    print(
        f"planted world, {args.customers} customers ({args.one_time:.0%} buy once, repeaters live "
        f"{args.lifetime:g} days on average, buy every {args.gap:g} days (median) with log-rate "
        f"sd {args.sigma:g}), {args.days} days, horizon {args.horizon} days"
    )
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
