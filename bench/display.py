"""Display, retargeting and campaign speed figures (issue 19), and affinity on Online Retail.

    python bench/display.py                      # demo world, 20k profiles x 120 days
    python bench/display.py --profiles 5000      # smaller
    python bench/display.py --retail             # + affinity fit on the Online Retail log

On the demo world (identity resolved at the end of the log, consent applied):

- affinity: fit time of :class:`dmp_ml.models.affinity.AffinityModel` for every eligible
  profile, the per-profile answer for 1,000 ids (top 3), and a segment summary of one planted group;
- retargeting: each template (:func:`dmp_ml.retargeting.template_ids`) on the attributed log;
- campaigns: the readout's conversion counting and statistics for an audience of every known
  profile (:func:`dmp_ml.campaigns.conversions` and :func:`dmp_ml.campaigns.lift`).

With ``--retail``: the affinity fit on Online Retail (StockCode as the category: thousands of
categories, one channel), and its top-category sizes. Every figure is printed; nothing is
written.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from dmp_ml.campaigns import Campaign, conversions, holdout_draw, lift
from dmp_ml.demo import generate_demo_world
from dmp_ml.identity import resolve_identity
from dmp_ml.models.affinity import AffinityModel
from dmp_ml.retargeting import TEMPLATES, attribute, parse_params, template_ids
from dmp_ml.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"
RETAIL_MAPPING = ROOT / "pipelines" / "mappings" / "online_retail.yaml"


def timed(func: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Median wall time (seconds) of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def demo(profiles: int, days: int) -> None:
    settings = load_settings()
    world = generate_demo_world(profiles, days, seed=0)
    end = world.end
    res = resolve_identity(world.events, end, settings.features, consent=world.consent)
    eligible = res.profiles.index
    print(f"demo world: {profiles:,} people, {len(world.events):,} events, "
          f"{len(eligible):,} eligible profiles")  # fmt: skip

    fit_s, model = timed(
        lambda: AffinityModel.from_settings(settings).fit(res.events, eligible, end)
    )
    print(f"affinity fit: {fit_s:.2f} s ({len(model.categories_)} categories, "
          f"{len(model.channels_)} channels)")  # fmt: skip
    ids = eligible[:1000]
    one_s, _ = timed(lambda: model.profile_frame(ids, top=3), repeat=5)
    print(f"affinity answer, 1,000 profiles: {1e3 * one_s:.1f} ms")
    group = world.truth.loc[world.truth["interest_group"] == "outdoor", "profile_id"]
    seg_s, summary = timed(lambda: model.segment_summary(group, top=5), repeat=5)
    print(f"segment summary, {summary['size']:,} members: {1e3 * seg_s:.1f} ms")

    attr_s, events = timed(lambda: attribute(world.events, eligible, res.cookie_map), repeat=1)
    print(f"retargeting: attribute {len(world.events):,} events: {attr_s:.2f} s")
    for name in TEMPLATES:
        params = parse_params(name, {"days": 14} if name != "lapsed_buyers" else {})
        t_s, found = timed(lambda n=name, p=params: template_ids(events, n, p, end))
        print(f"  {name}: {len(found):,} profiles in {1e3 * t_s:.0f} ms")

    known = [p for p in eligible if not str(p).startswith("anon:")]
    draw = holdout_draw("bench", known)
    members = pd.DataFrame(
        {
            "profile_id": pd.array(known, dtype="string"),
            "group": pd.array(["holdout" if u < 0.1 else "treated" for u in draw], "string"),
            "propensity_score": float("nan"),
        }
    )
    launch = end - pd.Timedelta(days=30)
    meta = {"launch": launch.isoformat(), "horizon_days": 30, "target_event": "purchase"}
    campaign = Campaign("bench", meta, members)

    def readout() -> dict[str, Any]:
        hit = conversions(campaign, world.events, end).to_numpy()
        treated = (members["group"] == "treated").to_numpy()
        return lift(
            int(hit[treated].sum()),
            int(treated.sum()),
            int(hit[~treated].sum()),
            int((~treated).sum()),
        )

    r_s, result = timed(readout)
    print(f"campaign readout, {len(members):,} members: {1e3 * r_s:.0f} ms "
          f"(lift {result['absolute_lift']['estimate']:+.4f})")  # fmt: skip


def retail() -> None:
    from dmp_ml.contract import load_events

    settings = load_settings()
    events = load_events(RETAIL, mapping=RETAIL_MAPPING).frame
    end = events["event_time"].max().floor("D") + pd.Timedelta(days=1)
    res = resolve_identity(events, end, settings.features)
    fit_s, model = timed(
        lambda: AffinityModel.from_settings(settings).fit(res.events, res.profiles.index, end),
        repeat=1,
    )
    tops = model.profile_frame(model.profile_ids_, top=3)["top_categories"].map(len)
    print(f"Online Retail affinity fit: {fit_s:.2f} s, {len(model.profile_ids_):,} customers, "
          f"{len(model.categories_):,} categories; customers with 3 top categories: "
          f"{(tops == 3).mean():.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--retail", action="store_true")
    args = parser.parse_args()
    demo(args.profiles, args.days)
    if args.retail:
        retail()


if __name__ == "__main__":
    main()
