"""The propensity model on a planted world unlike the demo's: served AUC vs planted truth.

A purchase log drawn from processes the demo generators do not use: most customers buy once and
never again, the repeaters' rates are heavy-tailed (log-normal, sigma 1.3), they drop out after
an exponential lifetime, and every purchase rate follows one calendar (a yearly wave, a
holiday peak in late November and December, busier weekends). The planted probability of a
purchase in ``[cutoff, cutoff + horizon)`` is exact: it knows each customer's type, rate and
drop-out day. The bundle is trained on the log before the cutoff and judged on what happened
after it, against the planted probabilities, the plain baselines of ``bench/quality.py`` and
a ceiling: a LightGBM on each customer's purchase count, first and last purchase (the Poisson
processes' sufficient statistics), fitted on 100,000 customers simulated from the same prior,
which approximates the best any model of the log can do.

    python bench/planted.py --seeds 0 1 --horizon 30
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from quality import _resolved, _settings, propensity_rows

import dmp_ml
from dmp_ml import metrics

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
    """How customers are drawn: the share who buy once only, the repeaters' mean lifetime."""

    one_time: float = 0.6
    lifetime_days: float = 250.0


def draw(n: int, days: int, rng: np.random.Generator, prior: Prior) -> dict[str, np.ndarray]:
    """Customers (birth and death in days, rate per day) and their daily purchase counts after
    the first, shape (n, days)."""
    birth = rng.random(n) * days
    once = rng.random(n) < prior.one_time
    rate = np.where(once, 0.0, np.minimum(rng.lognormal(np.log(1 / 45), 1.3, n), 1.0))
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


def ceiling(
    cutoff: int, horizon: int, seed: int, prior: Prior, n: int = 100_000
) -> tuple[float, float]:
    """ROC-AUC of a LightGBM on (purchases, days since first, days since last) fitted on
    simulated customers, and the planted probabilities' AUC on the same held-out customers."""
    rng = np.random.default_rng(seed + 7919)
    people = draw(n, cutoff + horizon, rng, prior)
    before = people["counts"][:, :cutoff]
    seen = people["birth"] < cutoff
    repeats = before.sum(axis=1)
    last_day = np.where(repeats > 0, cutoff - 1 - np.argmax(before[:, ::-1] > 0, axis=1), -1)
    last = np.maximum(last_day + 0.5, people["birth"])
    X = np.c_[repeats, cutoff - people["birth"], cutoff - last][seen]
    y = (people["counts"][:, cutoff : cutoff + horizon].sum(axis=1) > 0)[seen]
    p = truth(people, cutoff, horizon)[seen]
    half = len(y) // 2
    clf = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, verbose=-1)
    clf.fit(X[:half], y[:half])
    best = metrics.roc_auc(y[half:], clf.predict_proba(X[half:])[:, 1])
    return best, metrics.roc_auc(y[half:], p[half:])


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
        row = propensity_rows(bundle, history, as_of, horizon)
        served = result.steps["propensity"].details["served"]
        ids = bundle.score().frame["profile_id"].astype(str)
    index = pd.Index([f"p{i:06d}" for i in range(n)])
    p_true = pd.Series(truth(people, cut_day, horizon), index=index).reindex(ids).to_numpy()
    y = ids.isin(set(history.loc[history["event_time"] >= as_of, "profile_id"])).to_numpy()
    best, truth_sim = ceiling(cut_day, horizon, seed, prior)
    return {
        "seed": seed,
        **{k: round(v, 3) for k, v in row.items()},
        "guard_served": served,
        "truth": round(metrics.roc_auc(y.astype(int), p_true), 3),
        "ceiling_sim": round(best, 3),
        "truth_sim": round(truth_sim, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--days", type=int, default=450)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--one-time", type=float, default=0.6, help="share who buy once only")
    parser.add_argument("--lifetime", type=float, default=250.0, help="mean days; inf = forever")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prior = Prior(args.one_time, args.lifetime)
    rows = [evaluate(args.customers, args.days, args.horizon, s, prior) for s in args.seeds]
    pd.set_option("display.width", 250)
    print(
        f"planted world, {args.customers} customers ({args.one_time:.0%} buy once, repeaters live "
        f"{args.lifetime:g} days on average), {args.days} days, horizon {args.horizon} days"
    )
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
