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

Over HTTP (``--http-seconds``), a real server (``dmp-ml serve``) takes ``POST /events`` from
``--events-clients`` threads (batches of ``--http-batch`` events) while ``--score-clients``
threads call ``POST /score``; it prints p50/p99 of each endpoint, then waits until every
accepted batch is visible and prints the delay to visibility the service reported per batch,
and checks that nothing was lost (every event accepted is in the event store).

    python bench/realtime.py                       # 5,000 profiles x 90 days
    python bench/realtime.py --profiles 20000 --batches 100,1000,10000 --repeats 3
    python bench/realtime.py --profiles 2000 --batches "" --http-seconds 30   # 5 + 5 threads

Visibility against the population (``--populations``): for each size, trains a world, starts a
real server and POSTs ``--visible-batches`` batches of ``--visible-events`` events, timing from
the POST until ``POST /score`` of a profile the batch touched answers from it (its
``events_used`` changes): what a client sees, reload of every worker included.

    python bench/realtime.py --populations 5000,20000 --batches 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmp_ml import layout, store
from dmp_ml.bundle import load_bundle
from dmp_ml.demo import generate_demo_world
from dmp_ml.pipeline import train
from dmp_ml.refresh import Refresher
from dmp_ml.settings import Settings


def trained_world(workdir: Path, n_profiles: int, days: int) -> tuple[Any, float]:
    """A demo world (seed 0) trained into ``workdir`` with fast model settings, its events in
    the workdir's event store as ``train`` on a file would leave them; and the seconds that
    training and recording took."""
    world = generate_demo_world(n_profiles=n_profiles, days=days, seed=0)
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
    return world, time.perf_counter() - started


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
    parser.add_argument("--http-seconds", type=float, default=0, help="HTTP load; 0: skip")
    parser.add_argument("--events-clients", type=int, default=5)
    parser.add_argument("--score-clients", type=int, default=5)
    parser.add_argument("--http-batch", type=int, default=50, help="events per POST /events")
    parser.add_argument("--workers", type=int, default=1, help="server workers")
    parser.add_argument(
        "--populations", default="", help="profile counts, each measured in turn (see doc)"
    )
    parser.add_argument("--visible-batches", type=int, default=3, help="POSTs per population")
    parser.add_argument("--visible-events", type=int, default=1000, help="events per POST")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.populations.split(",") if s.strip()]
    if sizes:
        rows = []
        for n in sizes:
            rows.append(run_world(args, n))
        print(
            f"{'profiles':>9} {'events':>10} {'apply s':>8} {'visible s':>9} {'HTTP visible s':>15}"
        )
        for r in rows:
            print(
                f"{r['profiles']:>9} {r['events']:>10,} {r['apply_s']:>8.2f} "
                f"{r['visible_s']:>9.2f} {r['http_visible_s']:>15.2f}"
            )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0

    tmp = None
    if args.workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="dmp-realtime-"))
        workdir = tmp / "w"
    else:
        workdir = args.workdir
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        world, train_s = trained_world(workdir, args.profiles, args.days)
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
        for size in [int(s) for s in args.batches.split(",") if s.strip()]:
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
        http = None
        if args.http_seconds > 0:
            http = http_bench(workdir, world.events, bundle, args)
        summary = {
            "http": http,
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


def run_world(args: argparse.Namespace, n_profiles: int) -> dict[str, Any]:
    """One population: in-process apply and visibility, then visibility over HTTP."""
    tmp = Path(tempfile.mkdtemp(prefix="dmp-realtime-"))
    workdir = tmp / "w"
    try:
        world, _ = trained_world(workdir, n_profiles, args.days)
        bundle = load_bundle(workdir)
        rng = np.random.default_rng(0)
        refresher = Refresher(workdir)
        apply_s, visible_s = [], []
        for _ in range(args.repeats):
            batch = make_batch(world.events, bundle.as_of, args.visible_events, rng, args.new_share)
            t0 = time.perf_counter()
            refresher.apply(batch)
            t1 = time.perf_counter()
            live = load_bundle(workdir)
            live.score(batch["profile_id"].dropna().head(1).tolist())
            visible_s.append(time.perf_counter() - t0)
            apply_s.append(t1 - t0)
        del refresher, live
        http = http_visibility(workdir, world.events, bundle, args, rng)
        row = {
            "profiles": n_profiles,
            "events": len(world.events),
            "apply_s": statistics.median(apply_s),
            "visible_s": statistics.median(visible_s),
            "http_visible_s": statistics.median(http),
            "http_visible_all_s": [round(h, 3) for h in http],
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def http_visibility(
    workdir: Path,
    events: pd.DataFrame,
    bundle: Any,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> list[float]:
    """Seconds from ``POST /events`` until ``/score`` of a touched profile answers from it."""
    import httpx

    sys.path.insert(0, str(Path(__file__).parent))
    from load import start_server, stop_server

    token = "bench-token"
    proc, url = start_server(workdir, args.workers, token, workdir.parent / "server.log")
    out = []
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            for _ in range(args.visible_batches):
                batch = make_batch(events, bundle.as_of, args.visible_events, rng, args.new_share)
                probe = batch["profile_id"].dropna().value_counts().index[:5].tolist()
                before = client.post("/score", json={"profile_ids": probe}, timeout=60).json()
                seen = {r["profile_id"]: r["events_used"] for r in before["results"]}
                t0 = time.perf_counter()
                r = client.post("/events", json={"events": _records(batch)}, timeout=300)
                if r.status_code not in (200, 202):
                    log = (workdir.parent / "server.log").read_text()[-3000:]
                    raise SystemExit(f"POST /events: {r.status_code} {r.text[:300]}\n{log}")
                while time.perf_counter() - t0 < 600:
                    now = client.post("/score", json={"profile_ids": probe}, timeout=60).json()
                    if any(seen.get(x["profile_id"]) != x["events_used"] for x in now["results"]):
                        break
                    time.sleep(0.02)
                out.append(time.perf_counter() - t0)
    finally:
        stop_server(proc)
    return out


def _records(batch: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in batch.to_dict("records"):
        record = {}
        for key, value in row.items():
            if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
                continue
            record[key] = (
                value.isoformat(timespec="microseconds")
                if isinstance(value, pd.Timestamp)
                else value
            )
        out.append(record)
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def http_bench(
    workdir: Path, events: pd.DataFrame, bundle: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """``POST /events`` and ``POST /score`` threads against a real server; see the module doc."""
    import httpx

    sys.path.insert(0, str(Path(__file__).parent))
    from load import start_server, stop_server

    token = "bench-token"
    proc, url = start_server(workdir, args.workers, token, workdir.parent / "server.log")
    headers = {"Authorization": f"Bearer {token}"}
    known = bundle.scores.index.astype(str).tolist()
    stop = time.monotonic() + args.http_seconds
    lat: dict[str, list[float]] = {"events": [], "score": []}
    errors: list[str] = []
    accepted: list[dict[str, Any]] = []
    rows_sent = [0]
    lock = threading.Lock()

    def events_client(seed: int) -> None:
        rng = np.random.default_rng(1000 + seed)
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            while time.monotonic() < stop:
                body = {
                    "events": _records(make_batch(events, bundle.as_of, args.http_batch, rng, 0.05))
                }
                t0 = time.perf_counter()
                r = client.post("/events", json=body)
                took = time.perf_counter() - t0
                with lock:
                    lat["events"].append(took)
                    if r.status_code in (200, 202):
                        accepted.append(r.json())
                        rows_sent[0] += len(body["events"])
                    else:
                        errors.append(f"events {r.status_code}: {r.text[:200]}")

    def score_client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            while time.monotonic() < stop:
                ids = [known[i] for i in rng.integers(0, len(known), 20)]
                t0 = time.perf_counter()
                r = client.post("/score", json={"profile_ids": ids})
                took = time.perf_counter() - t0
                with lock:
                    lat["score"].append(took)
                    if r.status_code != 200:
                        errors.append(f"score {r.status_code}: {r.text[:200]}")

    threads = [
        threading.Thread(target=events_client, args=(i,)) for i in range(args.events_clients)
    ] + [threading.Thread(target=score_client, args=(i,)) for i in range(args.score_clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # until every accepted batch is visible (a synchronous service: already)
        visible: list[float] = []
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for answer in accepted:
                if answer.get("status") != "accepted":
                    continue
                while True:
                    state = client.get(f"/events/{answer['batch']}").json()
                    if state.get("status") == "applied":
                        visible.append(float(state["seconds_to_visible"]))
                        break
                    if time.monotonic() > deadline:
                        errors.append(f"batch {answer['batch']} not visible after 600 s")
                        break
                    time.sleep(0.2)
    finally:
        stop_server(proc)
    stored = sum(len(store.read_events_file(p)) for p in store.incoming_batches(workdir))
    quarantined = [layout.events_quarantine_dir(workdir)]
    q_rows = sum(
        len(pd.read_parquet(p)) for d in quarantined if d.exists() for p in d.glob("*.parquet")
    )
    result = {
        "seconds": args.http_seconds,
        "events_clients": args.events_clients,
        "score_clients": args.score_clients,
        "batch_events": args.http_batch,
        "workers": args.workers,
        "events_requests": len(lat["events"]),
        "score_requests": len(lat["score"]),
        "events_p50_s": round(_pct(lat["events"], 50), 3),
        "events_p99_s": round(_pct(lat["events"], 99), 3),
        "score_p50_s": round(_pct(lat["score"], 50), 3),
        "score_p99_s": round(_pct(lat["score"], 99), 3),
        "visible_p50_s": round(_pct(visible, 50), 3) if visible else None,
        "visible_p99_s": round(_pct(visible, 99), 3) if visible else None,
        "rows_sent": rows_sent[0],
        "rows_stored": stored,
        "rows_quarantined": q_rows,
        "errors": errors[:10],
        "n_errors": len(errors),
    }
    print(
        f"HTTP {args.http_seconds:.0f} s, {args.events_clients} /events + {args.score_clients} "
        f"/score threads, {args.workers} worker(s), {args.http_batch} events per batch:\n"
        f"  /events  n={result['events_requests']:>5}  p50 {result['events_p50_s']:.3f} s  "
        f"p99 {result['events_p99_s']:.3f} s\n"
        f"  /score   n={result['score_requests']:>5}  p50 {result['score_p50_s']:.3f} s  "
        f"p99 {result['score_p99_s']:.3f} s\n"
        f"  visible after accept: p50 {result['visible_p50_s']} s, "
        f"p99 {result['visible_p99_s']} s\n"
        f"  events sent {rows_sent[0]:,}, stored {stored:,} + quarantined {q_rows:,}; "
        f"errors {len(errors)}"
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
