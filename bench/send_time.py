"""Send-time speed and offline-evaluation figures (issue 5, sections 3 and 4).

    python bench/send_time.py              # speed: fit 20k profiles, decide for 10k
    python bench/send_time.py --engine dask  # the fit's population work on a local Dask cluster
    python bench/send_time.py --eval       # + demo world and Online Retail evaluations
    python bench/send_time.py --eval-only  # evaluations only

Speed: the demo world (``--profiles`` x ``--days``) resolved with ``resolve_identity`` at
``--fit-day``; fit time of :class:`SendTimeModel` for its known profiles, decision latency for
``--decide`` profiles (24-hour window, quiet hours 22-7), save/load time and size.

Evaluation (``evaluate_send_time``): hit rate (+-1 h of the next engagement) and mean held-out
log-likelihood for the model and the two baselines, on

- the demo world: fit on days before ``--fit-day``, evaluated on the rest, plus recovery of the
  planted preferred local hour;
- Online Retail: each non-cancelled invoice line is a purchase (the packaged
  ``online_retail`` mapping, UK local time), one engagement per customer and clock hour; fit before
  ``--retail-cutoff``, evaluated after it; every customer's zone is Europe/London.

Every figure is printed; nothing is written except under a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from dmp_ml.models.send_time import SendTimeModel, evaluate_send_time
from dmp_ml.models.send_time.baselines import comparison_line
from dmp_ml.settings import MAPPINGS_DIR

ROOT = Path(__file__).resolve().parents[1]
RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"
RETAIL_MAPPING = MAPPINGS_DIR / "online_retail.yaml"


def _timed(label: str, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"  [{label}: {time.perf_counter() - t0:.2f} s]")
    return out


def _demo(n_profiles: int, days: int, fit_day: int, seed: int) -> dict[str, Any]:
    """The demo world, resolved at the fit cutoff (training) and at its end (evaluation)."""
    from dmp_ml.demo import generate_demo_world
    from dmp_ml.identity import resolve_identity

    world = _timed("generate demo world", generate_demo_world, n_profiles, days, seed=seed)
    as_of = world.start + pd.Timedelta(days=fit_day)
    train = _timed("resolve identity at as_of", resolve_identity, world.events, as_of,
                   consent=world.consent)  # fmt: skip
    full = resolve_identity(world.events, world.end, consent=world.consent)
    known = train.profiles.index[~train.profiles["is_anonymous"].to_numpy(bool)]
    events = train.events[train.events["profile_id"].isin(known)]
    timezones = world.profiles.set_index("profile_id")["timezone"]
    timezones = timezones[timezones.index.isin(known)]
    return {
        "world": world,
        "as_of": as_of,
        "events": events,
        "all_events": full.events,
        "timezones": timezones,
    }


def _print_eval(result: dict[str, Any]) -> None:
    print(f"  profiles scored: {result['n_profiles']}, engagement hours: "
          f"{result['n_engagement_hours']}")  # fmt: skip
    print(f"  {'method':<14}{'hit rate':>10}{'log-lik':>10}")
    for name in ("model", "global_hour", "own_hour"):
        r = result[name]
        print(f"  {name:<14}{r['hit_rate']:>10.4f}{r['loglik']:>10.4f}")
    print(f"  {'uniform':<14}{'':>10}{result['uniform_loglik']:>10.4f}")
    print(f"  own_hour pseudo-count (picked in hindsight): {result['own_hour']['pseudo_count']}")
    for key in ("by_basis", "by_timezone_source"):
        for group, r in result["model"][key].items():
            print(
                f"    {key[3:]}={group:<9} n={r['n_profiles']:<6} hit model/global/own "
                f"{r['hit_rate']:.3f}/{r['global_hour_hit_rate']:.3f}/{r['own_hour_hit_rate']:.3f}"
                f"  loglik {r['loglik']:.3f}/{r['global_hour_loglik']:.3f}/"
                f"{r['own_hour_loglik']:.3f}"
            )
    if "recovery" in result:
        rec = result["recovery"]
        print(f"  planted preferred local hour recovered ({rec['n_profiles']} profiles):")
        for name in ("model", "global_hour", "own_hour"):
            print(f"    {name:<14} exact {rec[name]['exact']:.4f}  "
                  f"within 1 h {rec[name]['within_1h']:.4f}")  # fmt: skip


def _verdict(result: dict[str, Any]) -> bool:
    ok = all(
        result["model"][metric] > result[baseline][metric]
        for baseline in ("global_hour", "own_hour")
        for metric in ("hit_rate", "loglik")
    )
    print(f"  model beats both baselines on both metrics: {'YES' if ok else 'NO'}")
    return ok


def _selection(model: SendTimeModel) -> None:
    sel = model.selection_
    chosen = {k: sel[k] for k in ("prior_strength", "cohort_strength", "day_pooling",
                                  "bandwidth", "activity_weight", "sharpness")}  # fmt: skip
    print(f"  selected on the internal hold-out: {chosen} (held-out log-lik "
          f"{sel['heldout_loglik']:.4f}, {len(sel['evaluated'])} tried)")  # fmt: skip
    print(f"  guard: {comparison_line(model.guard_, model.served_)}")
    sources = pd.Series(model.timezone_source_).value_counts().to_dict()
    bases = pd.Series(model.basis_).value_counts().to_dict()
    print(f"  time zones: {sources}; basis: {bases}")


def _inferred_accuracy(model: SendTimeModel, truth: pd.DataFrame) -> None:
    """How often an inferred zone is within one hour of the true zone's offset at as_of."""
    inferred = model.timezone_source_ == "inferred"
    if not inferred.any():
        return
    true_zone = truth.set_index("profile_id")["timezone"].reindex(model.profile_ids_[inferred])
    at = model.as_of_

    def offset(zone: str) -> float:
        return at.tz_convert(zone).utcoffset().total_seconds() / 3600

    guessed = [offset(z) for z in model.timezone_[inferred]]
    actual = [offset(z) for z in true_zone.astype(str)]
    close = sum(abs(g - a) <= 1 for g, a in zip(guessed, actual, strict=True))
    print(f"  inferred zones within 1 h of the true offset: {close}/{len(guessed)}")


# ------------------------------------------------------------------------------------ speed


def bench_speed(demo: dict[str, Any], n_decide: int, repeats: int, engine: str = "local") -> None:
    events, as_of, tz = demo["events"], demo["as_of"], demo["timezones"]
    print(f"== speed: {events['profile_id'].nunique()} profiles, {len(events)} resolved events, "
          f"{engine} engine ==")  # fmt: skip
    fits, cpu, calling = [], [], []
    model = None
    with contextlib.ExitStack() as stack:
        curves = None
        if engine == "dask":  # a local in-process cluster, as `train` starts without a scheduler
            from dmp_ml.scale import DaskCurves, DaskEngine

            session = stack.enter_context(DaskEngine(None))
            curves = DaskCurves(session, 8)
        for _ in range(repeats):
            t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            model = SendTimeModel().fit(events, as_of, tz, engine=curves)
            fits.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            calling.append(time.thread_time() - m0)
    assert model is not None
    print(f"  fit: median {statistics.median(fits):.2f} s wall, {statistics.median(cpu):.2f} s CPU "
          f"({statistics.median(calling):.2f} s of it on the calling thread) over {repeats} "
          f"runs (wall {', '.join(f'{f:.2f}' for f in fits)}); "
          f"{len(model.profile_ids_)} curves")  # fmt: skip
    if engine == "dask":  # the same model as in process?
        local = SendTimeModel().fit(events, as_of, tz)
        names = ("prior_strength", "cohort_strength", "day_pooling", "bandwidth",
                 "activity_weight", "sharpness")  # fmt: skip
        same = all(model.selection_[k] == local.selection_[k] for k in names)
        print(f"  against the local engine: selected values {'equal' if same else 'DIFFERENT'}, "
              f"served {model.served_} / {local.served_}, max |curve difference| "
              f"{abs(model.local_shape_ - local.local_shape_).max():.2g}")  # fmt: skip
    _selection(model)
    ids = list(model.profile_ids_[:n_decide])
    start = as_of + pd.Timedelta(minutes=17)
    times, cpu = [], []
    for _ in range(max(5, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        decision = model.best_send_time(ids, window_start=start, quiet_hours=(22, 7))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"  decision for {len(decision.frame)} profiles (24 h window, quiet 22-7): median "
          f"{statistics.median(times) * 1000:.0f} ms wall ({statistics.median(cpu) * 1000:.0f} ms "
          f"CPU), best {min(times) * 1000:.0f} ms")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model.save(Path(tmp) / "send_time")
        saved = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (Path(tmp) / "send_time").iterdir())
        t0 = time.perf_counter()
        SendTimeModel.load(Path(tmp) / "send_time")
        loaded = time.perf_counter() - t0
    print(f"  save {saved:.2f} s, load {loaded:.2f} s, {size / 1e6:.1f} MB")


# ------------------------------------------------------------------------------------ evals


def bench_demo_eval(demo: dict[str, Any]) -> bool:
    world = demo["world"]
    days = (world.end - world.start).days
    fit_day = (demo["as_of"] - world.start).days
    print(
        f"== evaluation: demo world, fit before day {fit_day}, scored on days {fit_day}-{days} =="
    )
    model = _timed("fit", SendTimeModel().fit, demo["events"], demo["as_of"], demo["timezones"])
    _selection(model)
    _inferred_accuracy(model, world.truth)
    result = evaluate_send_time(model, demo["all_events"], demo["timezones"], world.truth)
    _print_eval(result)
    return _verdict(result)


def bench_retail(cutoff: str) -> bool | None:
    from dmp_ml.contract import load_events

    print(f"== evaluation: Online Retail, fit before {cutoff}, scored after ==")
    if not RETAIL.exists():
        print(f"  skipped: {RETAIL} not found")
        return None
    loaded = _timed("load with mapping", load_events, RETAIL, RETAIL_MAPPING)
    events = loaded.frame[loaded.frame["profile_id"].notna()]
    ids = pd.Index(events["profile_id"].astype("string").unique())
    timezones = pd.Series("Europe/London", index=ids, dtype="string")
    as_of = pd.Timestamp(cutoff, tz="UTC")
    model = _timed("fit", SendTimeModel().fit, events, as_of, timezones)
    _selection(model)
    result = evaluate_send_time(model, events, timezones)
    _print_eval(result)
    return _verdict(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval", action="store_true", help="also run the evaluations")
    parser.add_argument("--eval-only", action="store_true", help="only run the evaluations")
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--fit-day", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decide", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retail-cutoff", default="2011-09-01")
    parser.add_argument(
        "--engine",
        choices=("local", "dask"),
        default="local",
        help="where the fit's population work runs (dask: a local cluster)",
    )
    args = parser.parse_args(argv)

    demo = _demo(args.profiles, args.days, args.fit_day, args.seed)
    if not args.eval_only:
        bench_speed(demo, args.decide, args.repeats, args.engine)
    verdicts = []
    if args.eval or args.eval_only:
        verdicts.append(bench_demo_eval(demo))
        verdicts.append(bench_retail(args.retail_cutoff))
    return 0 if all(v is not False for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
