"""Near-real-time refresh: throughput of the incremental path and latency until visible.

Trains a bundle on a demo world (fast model settings: the bench measures the refresh, not the
training), then applies batches of new events as the service's ``POST /events`` would, with
one long-lived :class:`dmp_ml.refresh.Refresher`:

* **throughput** = events in the batch / seconds of ``Refresher.apply`` (validation, event
  store, features of the affected profiles, scores, send-time curves, lookalike vectors and
  re-publishing the bundle);
* **latency until visible** = ``apply`` + loading the new version the way a service worker
  does on reload (``load_bundle``, checksums verified) + the first score answered from it,
  i.e. the time from receiving a batch until every worker that reloads can answer with it
  (workers that only poll add up to ``service.reload_poll_seconds``).

Batches resemble live traffic: events of existing profiles and cookies (resampled from the
log, moved to the hours after the bundle's ``as_of``) plus a share of new cookies.

    python bench/realtime.py                       # 5,000 profiles x 90 days
    python bench/realtime.py --profiles 20000 --batches 100,1000,10000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dmp_ml import store
from dmp_ml.bundle import load_bundle
from dmp_ml.demo import generate_demo_world
from dmp_ml.pipeline import train
from dmp_ml.refresh import Refresher
from dmp_ml.settings import Settings


def fast_settings(workdir: Path) -> Settings:
    one = {
        "prior_strength_candidates": [10.0],
        "cohort_strength_candidates": [300.0],
        "day_pooling_candidates": [0.3],
        "bandwidth_candidates": [1.5],
        "activity_weight_candidates": [2.0],
        "sharpness_candidates": [1.0],
    }
    propensity = {"n_snapshots": 2, "n_estimators": 150, "calibration_folds": 2}
    return Settings(workdir=workdir, send_time=one, propensity=propensity)


def make_batch(
    events: pd.DataFrame, as_of: pd.Timestamp, size: int, rng: np.random.Generator, new_share: float
) -> pd.DataFrame:
    rows = events.iloc[rng.integers(0, len(events), size)].reset_index(drop=True)
    offsets = np.sort(rng.uniform(0, 6 * 3600, size))
    rows["event_time"] = as_of + pd.to_timedelta(offsets, unit="s")
    fresh = rng.random(size) < new_share
    n_new = int(fresh.sum())
    rows.loc[fresh, "profile_id"] = pd.NA
    cookies = [f"bench-{rng.integers(1 << 62):x}" for _ in range(n_new)]
    rows.loc[fresh, "cookie_id"] = pd.array(cookies, dtype="string")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=5000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--batches", default="10,100,1000,10000", help="batch sizes (events)")
    parser.add_argument("--repeats", type=int, default=3, help="batches per size")
    parser.add_argument("--new-share", type=float, default=0.05, help="share of new cookies")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workdir here")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    tmp = None
    if args.workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="dmp-realtime-"))
        workdir = tmp / "w"
    else:
        workdir = args.workdir
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        world = generate_demo_world(n_profiles=args.profiles, days=args.days, seed=0)
        started = time.perf_counter()
        train(
            world.events,
            "end",
            workdir,
            profiles=world.profiles,
            consent=world.consent,
            settings=fast_settings(workdir),
        )
        store.record_training_events(workdir, world.events)
        train_s = time.perf_counter() - started
        bundle = load_bundle(workdir)
        print(
            f"world: {args.profiles} profiles x {args.days} days, {len(world.events):,} events; "
            f"bundle of {len(bundle.features.frame):,} profiles trained in {train_s:.1f} s"
        )
        rng = np.random.default_rng(0)
        refresher = Refresher(workdir)
        as_of = bundle.as_of
        results = []
        header = (
            f"{'batch':>7} {'profiles':>8} {'apply s':>8} {'events/s':>9} "
            f"{'visible s':>9}  stages (median s)"
        )
        print(header)
        for size in [int(s) for s in args.batches.split(",")]:
            runs = []
            for _ in range(args.repeats):
                batch = make_batch(world.events, as_of, size, rng, args.new_share)
                t0 = time.perf_counter()
                report = refresher.apply(batch)
                t1 = time.perf_counter()
                live = load_bundle(workdir)
                probe = batch["profile_id"].dropna()
                live.score(probe.head(1).tolist() or [])
                t2 = time.perf_counter()
                assert live.version == report.bundle_version
                runs.append(
                    {
                        "apply_s": t1 - t0,
                        "visible_s": t2 - t0,
                        "reload_s": t2 - t1,
                        "profiles": report.profiles_updated + report.profiles_created,
                        "accepted": report.rows_accepted,
                        "stages": report.seconds,
                    }
                )
            apply_s = statistics.median(r["apply_s"] for r in runs)
            visible_s = statistics.median(r["visible_s"] for r in runs)
            profiles = int(statistics.median(r["profiles"] for r in runs))
            stages = {
                k: round(statistics.median(r["stages"].get(k, 0.0) for r in runs), 3)
                for k in runs[0]["stages"]
            }
            row = {
                "batch_events": size,
                "profiles_touched": profiles,
                "apply_s": round(apply_s, 3),
                "events_per_s": round(size / apply_s, 1),
                "visible_s": round(visible_s, 3),
                "reload_s": round(statistics.median(r["reload_s"] for r in runs), 3),
                "stages_s": stages,
            }
            results.append(row)
            stage_text = " ".join(f"{k}={v}" for k, v in stages.items())
            print(
                f"{size:>7} {profiles:>8} {apply_s:>8.2f} {size / apply_s:>9.0f} "
                f"{visible_s:>9.2f}  {stage_text}"
            )
        summary = {
            "profiles": args.profiles,
            "days": args.days,
            "events": len(world.events),
            "bundle_profiles": len(bundle.features.frame),
            "train_s": round(train_s, 1),
            "results": results,
        }
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
