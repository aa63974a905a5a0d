"""Coverage on a real customer-keyed log: does every known customer get an answer?

For each cutoff, trains a bundle on the events before it and counts the customers with any
loaded event before the cutoff, and how many of them get a propensity score, a send time and a
lookalike vector (and so can be a seed or a candidate). Prints one table.

    python bench/coverage.py                       # Online Retail at three cutoffs, 90 days
    python bench/coverage.py --events my.csv --mapping my.yaml --cutoffs 2024-01-01 --horizon 30
    python bench/coverage.py --retail-demo 5000 --cutoffs 2025-09-01 2025-11-01   # sparse demo
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import dmp_ml
from dmp_ml.settings import MAPPINGS_DIR, load_settings

HERE = Path(__file__).resolve().parent
RETAIL = HERE.parent.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"
MAPPING = MAPPINGS_DIR / "online_retail.yaml"


def coverage(
    events: Path | pd.DataFrame, mapping: Path | None, cutoff: str, horizon: int
) -> dict[str, object]:
    """Train on the log before ``cutoff`` and count the customers each model answers for."""
    if isinstance(events, pd.DataFrame):
        loaded = events
    else:
        loaded = dmp_ml.load_events(events, mapping=mapping).frame
    as_of = pd.Timestamp(cutoff, tz="UTC")
    before = loaded[(loaded["event_time"] < as_of) & loaded["profile_id"].notna()]
    customers = pd.Index(before["profile_id"].astype(str).unique())
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            workdir=Path(tmp), mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db"
        )
        propensity = settings.propensity.model_copy(update={"horizon_days": horizon})
        settings = settings.model_copy(update={"propensity": propensity})
        started = time.perf_counter()
        result = dmp_ml.train(events, as_of, tmp, mapping=mapping, settings=settings)
        seconds = time.perf_counter() - started
        bundle = dmp_ml.load_bundle(result.bundle_path)
        row: dict[str, object] = {"cutoff": cutoff, "customers": len(customers)}
        steps = result.steps
        if steps["propensity"].status == "trained":
            row["scored"] = len(bundle.score(customers).frame)
        else:
            row["scored"] = f"skipped: {steps['propensity'].reason}"
        if steps["send_time"].status == "trained":
            row["send_time"] = int(bundle.send_time(customers).frame["profile_id"].nunique())
        else:
            row["send_time"] = f"skipped: {steps['send_time'].reason}"
        if steps["lookalike"].status == "trained":
            row["lookalike"] = int(bundle.lookalike_model.profile_ids_.isin(customers).sum())
        else:
            row["lookalike"] = f"skipped: {steps['lookalike'].reason}"
        row["train_s"] = round(seconds, 1)
        row["lapsed"] = result.manifest["steps"]["features"]["summary"].get("profiles_lapsed")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, default=RETAIL)
    parser.add_argument("--mapping", type=Path, default=MAPPING)
    parser.add_argument("--cutoffs", nargs="+", default=["2011-06-01", "2011-09-01", "2011-10-01"])
    parser.add_argument("--horizon", type=int, default=90)
    parser.add_argument(
        "--retail-demo", type=int, metavar="N", help="use a sparse retail demo world of N customers"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    events: Path | pd.DataFrame = args.events
    if args.retail_demo:
        from dmp_ml.demo import generate_retail_world

        events = generate_retail_world(args.retail_demo, seed=args.seed).events
        args.mapping = None
    rows = [coverage(events, args.mapping, c, args.horizon) for c in args.cutoffs]
    table = pd.DataFrame(rows)
    for column in ("scored", "send_time", "lookalike"):
        table[f"{column}_%"] = [
            f"{100 * v / r['customers']:.1f}" if isinstance(v, int) else "-"
            for v, (_, r) in zip(table[column], table.iterrows(), strict=True)
        ]
    name = f"retail demo ({args.retail_demo} customers)" if args.retail_demo else args.events.name
    print(f"events: {name}, horizon {args.horizon} days")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
