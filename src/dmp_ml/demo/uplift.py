"""A planted campaign effect: extra purchases for a treated audience, with the exact true lift."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmp_ml.demo.catalogue import CATEGORY_PRICE, GROUP_CORE
from dmp_ml.demo.truth import true_purchase_probability
from dmp_ml.demo.world import DemoWorld
from dmp_ml.times import utc


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
    cats = [rng.choice(list(GROUP_CORE[g])) for g in groups]
    price = np.array([CATEGORY_PRICE[c] for c in cats])
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
