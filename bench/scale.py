"""Training and serving at scale: one row per demo world, and a picture of the slopes.

For each size, builds a demo world (``dmp-ml demo-data``) and trains it (``dmp-ml train``),
sampling the proportional set size (PSS) of the whole process tree to get the peak memory of
all processes together, with the per-stage seconds the train manifest records. Then, each in a
fresh process: the private memory of a loaded bundle (the ``Anonymous`` memory from
``/proc/<pid>/smaps_rollup``: what only it holds, backed by no file; the pages of mapped
bundle files are page cache, shared by every worker mapping them) and what each part adds;
``score`` latency (100 ids) and lookalike latency (a seed of 1% of the profiles to an
audience of 10%) from the loaded bundle, with FAISS's exact search over the same vectors for
reference; and the visibility of a 1,000-event refresh batch (``apply_events``, then loading
the new version and answering from it; wall and CPU seconds, and the refresh's phases) on a
copy of the workdir; the slowest of the batches one refresher applies until the deltas pass
``refresh.max_deltas``, and the compaction after them (``worst s``, ``compact s``); and the
private memory of a process that answers, then picks up two such batches as a service worker
does (``ModelBundle.extended``) and answers again (the ``refreshed MB`` column). With
``--workers 2`` it also starts ``dmp-ml serve`` with two workers and reports each worker's
private memory after a round of requests. Prints one table; ``--plot`` draws it
(``docs/scale.png``).

    python bench/scale.py --profiles 20000 100000 --workers 2 --plot docs/scale.png
    python bench/scale.py --profiles 10000 --workdir /tmp/scale     # keeps the worlds
    python bench/scale.py --bundle /tmp/scale/w10000                # measure only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib import request as urlrequest

HERE = Path(__file__).resolve().parent
DMP_ML = [sys.executable, "-m", "dmp_ml.cli"]

_PROBE = r"""
import gc, json, sys, time
from pathlib import Path

from dmp_ml.peak_memory import private_bytes

def uss():
    gc.collect()
    return private_bytes()

import dmp_ml.bundle as b
from dmp_ml.features import FeatureTable
from dmp_ml.models import REGISTRY, model_class
for name in REGISTRY:  # every library the bundle needs, imported before measuring
    model_class(name)
import faiss, lightgbm, pyarrow.parquet, scipy.sparse  # noqa: F401
where, part = Path(sys.argv[1]), sys.argv[2]
path = where if (where / b.MANIFEST).exists() else b.live_bundle_path(where)
manifest = b.read_manifest(path, verify=True)
before = uss()
if part == "features":
    kept = FeatureTable.read(path / b.FEATURES_DIR)
elif part == "scores":
    kept = b.read_scores(path)
elif part == "latency":
    import numpy as np
    bundle = b.load_bundle(path, n_threads=1)
    ids = bundle.features.frame.index
    rng = np.random.default_rng(0)
    score_ms = []
    for _ in range(200):
        chosen = ids[rng.choice(len(ids), 100, replace=False)].tolist()
        t = time.perf_counter()
        bundle.score(chosen)
        score_ms.append((time.perf_counter() - t) * 1000)
    out = {"score_p50_ms": float(np.percentile(score_ms, 50)),
           "score_p99_ms": float(np.percentile(score_ms, 99))}
    look = bundle.lookalike_model
    if look is not None:
        known = look.profile_ids_
        seed = known[rng.choice(len(known), max(10, len(known) // 100), replace=False)].tolist()
        size = max(100, len(known) // 10)
        bundle.lookalike(seed[:10], size=100)  # first call: lazy parts set up
        t = time.perf_counter()
        audience = bundle.lookalike(seed, size=size)
        out["lookalike_ms"] = (time.perf_counter() - t) * 1000
        out["lookalike_seed"], out["lookalike_size"] = len(seed), len(audience.frame)
        vectors = np.ascontiguousarray(look.vectors_, dtype=np.float32)
        query = vectors[look.profile_ids_.get_indexer(seed)].mean(axis=0, keepdims=True)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        t = time.perf_counter()
        faiss.knn(query, vectors, size, metric=faiss.METRIC_INNER_PRODUCT)
        out["exact_search_ms"] = (time.perf_counter() - t) * 1000
    print(json.dumps(out))
    sys.exit(0)
elif part != "bundle":
    kept = model_class(part).load(path / part, n_threads=1)
else:
    bundle = b.load_bundle(path, n_threads=1)
    loaded = uss()
    ids = bundle.features.profile_ids[:50].tolist()
    if bundle.scores is not None:
        bundle.score(ids)
    if bundle.send_time_model is not None:
        bundle.send_time(ids)
    if bundle.lookalike_model is not None:
        bundle.lookalike(ids[:20], size=100)
    answered = uss()
    print(json.dumps({"profiles": len(bundle.features), "base_mb": before / 2**20,
                      "load_mb": (loaded - before) / 2**20,
                      "answered_mb": (answered - before) / 2**20,
                      "parts": ["features", *b.trained_models(manifest),
                                *(["scores"] if bundle.scores is not None else [])]}))
    sys.exit(0)
print(json.dumps({"mb": (uss() - before) / 2**20}))
"""

_REFRESHED = r"""
import gc, json, subprocess, sys
from pathlib import Path
from dmp_ml.bundle import live_bundle_path, load_bundle, read_manifest
from dmp_ml.models import REGISTRY, model_class
for name in REGISTRY:
    model_class(name)
import faiss, lightgbm, pyarrow.parquet, scipy.sparse  # noqa: F401

from dmp_ml.peak_memory import private_bytes

def uss():
    gc.collect()
    return private_bytes()

def answer(bundle):
    ids = bundle.features.profile_ids[:50].tolist()
    bundle.score(ids)
    bundle.send_time(ids)
    bundle.lookalike(ids[:20], size=100)

workdir, apply = Path(sys.argv[1]), sys.argv[2:]
before = uss()
bundle = load_bundle(workdir, n_threads=1)
answer(bundle)
out = {"answered_mb": (uss() - before) / 2**20}
for k in range(2):  # a batch applied by another process, picked up as a worker reloads
    subprocess.run([*apply, str(k)], check=True, stdout=subprocess.DEVNULL)
    path = live_bundle_path(workdir)
    bundle = bundle.extended(path, read_manifest(path, verify=True)) or load_bundle(path)
    answer(bundle)
    out[f"refreshed{k + 1}_mb"] = (uss() - before) / 2**20
print(json.dumps(out))
"""

_APPLY = r"""
import json, sys
from pathlib import Path
import pandas as pd
from dmp_ml.bundle import MANIFEST, live_bundle_path
from dmp_ml.refresh import apply_events
events, workdir, k = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
as_of = pd.Timestamp(json.loads((live_bundle_path(workdir) / MANIFEST).read_text())["as_of"])
batch = pd.read_parquet(events).sample(1000, random_state=k).reset_index(drop=True)
offsets = pd.to_timedelta(range(1000), unit="s")
batch["event_time"] = as_of + pd.Timedelta(minutes=1 + 30 * k) + offsets
apply_events(workdir, batch)
"""


def run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def tree_pss(pid: int) -> int:
    """Proportional set size of process ``pid`` and its children: shared pages are split
    between the processes sharing them, so the sum is the tree's real footprint."""
    import psutil

    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_full_info().pss
    return total


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its wall seconds and the peak PSS (GB) of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid))
        time.sleep(0.5)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return time.perf_counter() - started, peak / 2**30


def build(workdir: Path, profiles: int, days: int) -> dict[str, object]:
    """Demo world and trained bundle in ``workdir``; what training cost (kept in
    ``train.json`` there, so a later run over the same workdir reports it too)."""
    record = workdir / "train.json"
    if record.exists():
        return json.loads(record.read_text())
    demo = workdir / "demo"
    if not (demo / "events.parquet").exists():  # a world kept from an earlier run is reused
        run([*DMP_ML, "demo-data", str(demo), "--profiles", str(profiles), "--days", str(days)])
    import pyarrow.parquet as pq

    events = pq.ParquetFile(demo / "events.parquet").metadata.num_rows
    seconds, peak_gb = timed(
        [*DMP_ML, "train", "--workdir", str(workdir), "--as-of", "end"]
        + ["--events", str(demo / "events.parquet"), "--profiles", str(demo / "profiles.parquet")]
        + ["--consent", str(demo / "consent.parquet")]
    )
    from dmp_ml.bundle import MANIFEST, live_bundle_path

    manifest = json.loads((live_bundle_path(workdir) / MANIFEST).read_text())
    result = {
        "events": events,
        "train_s": seconds,
        "train_peak_gb": peak_gb,
        "stages_s": {k: round(v, 1) for k, v in manifest["seconds"].items()},
    }
    record.write_text(json.dumps(result))
    return result


@contextlib.contextmanager
def _copy_of(workdir: Path) -> Iterator[tuple[Path, object]]:
    """A temporary copy of ``workdir`` (without its demo inputs) and its bundle's ``as_of``.

    The copy's files are verified first, as the writer of a bundle verifies them when it
    publishes (a copy has new inodes, so its first reader would hash it again: see
    :func:`dmp_ml.bundle.verified_manifest`)."""
    import shutil

    import pandas as pd

    from dmp_ml.bundle import MANIFEST, live_bundle_path, verified_manifest

    with tempfile.TemporaryDirectory(prefix="dmp-ml-scale-") as tmp:
        copy = Path(tmp) / "w"
        shutil.copytree(workdir, copy, symlinks=True, ignore=shutil.ignore_patterns("demo"))
        verified_manifest(live_bundle_path(copy))
        as_of = pd.Timestamp(json.loads((live_bundle_path(copy) / MANIFEST).read_text())["as_of"])
        yield copy, as_of


def _batch(workdir: Path, as_of: object, size: int, seed: int) -> object:
    """``size`` events of the world's existing profiles, moved to one a second from a minute
    after ``as_of`` plus ``seed`` hours (later batches come later)."""
    import pandas as pd

    events = pd.read_parquet(workdir / "demo" / "events.parquet")
    batch = events.sample(size, random_state=seed).reset_index(drop=True)
    offsets = pd.to_timedelta(range(size), unit="s")
    batch["event_time"] = as_of + pd.Timedelta(minutes=1, hours=seed) + offsets
    return batch


def refresh_visibility(workdir: Path, batch_size: int = 1000) -> dict[str, object]:
    """Seconds (wall and CPU) from applying a batch of ``batch_size`` events of existing
    profiles (moved to the hour after ``as_of``) to an answer from the new version, on a copy
    of ``workdir``, with the refresh's own phases (``RefreshReport.seconds``) and the load.

    Nothing of the bundle is loaded before the clock starts (as in a fresh ``dmp-ml events``
    process): only the libraries are imported."""
    from dmp_ml.bundle import load_bundle
    from dmp_ml.models import REGISTRY, model_class
    from dmp_ml.refresh import apply_events

    for name in REGISTRY:  # imports are not what the batch waits for in a running service
        model_class(name)
    with _copy_of(workdir) as (copy, as_of):
        batch = _batch(workdir, as_of, batch_size, 0)
        ids = [p for p in batch["profile_id"].dropna().astype(str).unique()[:20]]
        cpu, started = time.process_time(), time.perf_counter()
        report = apply_events(copy, batch)
        applied = time.perf_counter()
        fresh = load_bundle(copy, n_threads=1)
        loaded = time.perf_counter()
        fresh.score(
            [p for p, known in zip(ids, fresh.features.ids.contains(ids), strict=True) if known]
            or None
        )
        seconds = time.perf_counter() - started
        if report.rows_accepted < batch_size * 0.9:
            raise RuntimeError(f"refresh accepted {report.rows_accepted} of {batch_size}")
        return {
            "refresh_s": seconds,
            "refresh_cpu_s": time.process_time() - cpu,
            "refresh_phases_s": {
                **report.seconds,
                "load": round(loaded - applied, 4),
                "answer": round(started + seconds - loaded, 4),
            },
        }


def compaction(workdir: Path, batch_size: int = 1000) -> dict[str, object]:
    """On a copy of ``workdir``, one refresher applies 1,000-event batches until the deltas
    pass ``refresh.max_deltas``, then folds them into a new base: the slowest batch's
    visibility (a batch never waits for the compaction) and the compaction's seconds."""

    from dmp_ml.models import REGISTRY, model_class
    from dmp_ml.refresh import Refresher

    for name in REGISTRY:  # imports are not what a batch waits for in a running service
        model_class(name)
    with _copy_of(workdir) as (copy, as_of):
        refresher = Refresher(copy)
        visible = []
        while not refresher.compaction_due():
            batch = _batch(workdir, as_of, batch_size, len(visible) + 1)
            started = time.perf_counter()
            refresher.apply(batch)
            visible.append(time.perf_counter() - started)
        started = time.perf_counter()
        if refresher.compact_if_due() is None:
            raise RuntimeError("the compaction folded nothing")
        return {
            "batches_s": [round(v, 3) for v in visible],
            "refresh_worst_s": max(visible),
            "compact_s": time.perf_counter() - started,
        }


def refreshed_memory(workdir: Path) -> dict[str, float]:
    """Private MB of a process that loads the bundle and answers, then picks up two 1,000-event
    refreshes (applied by another process, as ``/events`` or ``dmp-ml events`` does) the way a
    service worker reloads (:meth:`dmp_ml.bundle.ModelBundle.extended`) and answers again; on
    a copy of ``workdir``."""
    import shutil

    from dmp_ml.bundle import live_bundle_path, verified_manifest

    with tempfile.TemporaryDirectory(prefix="dmp-ml-scale-worker-") as tmp:
        copy = Path(tmp) / "w"
        shutil.copytree(workdir, copy, symlinks=True, ignore=shutil.ignore_patterns("demo"))
        verified_manifest(live_bundle_path(copy))
        apply = [sys.executable, "-c", _APPLY, str(workdir / "demo" / "events.parquet"), str(copy)]
        out = subprocess.run(
            [sys.executable, "-c", _REFRESHED, str(copy), *apply],
            check=True,
            capture_output=True,
            text=True,
        )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "worker_refreshed_mb": float(result["refreshed2_mb"]),
        **{f"worker_{k}": v for k, v in result.items()},
    }


def bundle_size(workdir: Path) -> float:
    """MB on disk of the live bundle."""
    live = (workdir / "bundle").resolve()
    return sum(p.stat().st_size for p in live.rglob("*") if p.is_file()) / 2**20


def measure(workdir: Path, part: str) -> dict[str, object]:
    """Run the probe for ``part`` of the bundle in a fresh process; what it printed."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(workdir), part],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe(workdir: Path) -> dict[str, object]:
    """Load the bundle, then each of its parts, each in a fresh process; private memory MB."""
    result = measure(workdir, "bundle")
    result["parts_mb"] = {p: measure(workdir, p)["mb"] for p in result.pop("parts")}
    return result


def serve_workers(workdir: Path, n_workers: int) -> list[float]:
    """Serve with ``n_workers``, send a few requests; each worker's private (anonymous) MB."""
    import psutil

    from dmp_ml.peak_memory import private_bytes

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*DMP_ML, "serve", "--workdir", str(workdir), "--port", str(port)]
        + ["--workers", str(n_workers), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urlrequest.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        body = json.dumps({"profile_ids": [f"p{i:06d}" for i in range(1, 50)]}).encode()
        for _ in range(4 * n_workers):  # requests spread over the workers
            req = urlrequest.Request(
                f"{url}/score", data=body, headers={"Content-Type": "application/json"}
            )
            with urlrequest.urlopen(req, timeout=60):
                pass
        time.sleep(1)
        workers = psutil.Process(server.pid).children(recursive=True)
        return sorted(
            private_bytes(p.pid) / 2**20 for p in workers if "python" in p.name().lower()
        )[-n_workers:]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def plot(rows: list[dict[str, object]], out: Path) -> None:
    """Six panels against the number of profiles: train seconds by stage, peak memory, bundle
    size, private memory, latencies, refresh visibility."""
    from matplotlib.figure import Figure

    sizes = [int(r["profiles"]) for r in rows]
    labels = [
        f"{n / 1000:.0f}k profiles\n{int(r.get('events', 0)) / 1e6:.1f}M events"
        for n, r in zip(sizes, rows, strict=True)
    ]
    fig = Figure(figsize=(13, 7.5))
    axes = fig.subplots(2, 3).ravel()
    ax = axes[0]
    stages: list[str] = []
    for r in rows:
        stages += [k for k in r.get("stages_s", {}) if k not in stages]
    bottom = [0.0] * len(rows)
    for stage in stages:
        heights = [float(r.get("stages_s", {}).get(stage, 0.0)) for r in rows]
        ax.bar(labels, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_title("train: seconds by stage")
    ax.legend(fontsize=7)
    panels = [
        ("train: peak memory, all processes (GB)", ["train_peak_gb"]),
        ("bundle on disk (MB)", ["bundle_mb"]),
        ("private memory (MB)", ["load_mb", "answered_mb", "worker_refreshed_mb", "worker_max_mb"]),
        ("latency (ms)", ["score_p99_ms", "lookalike_ms", "exact_search_ms"]),
        ("refresh: 1,000 events visible after (s)", ["refresh_s", "refresh_worst_s"]),
    ]
    for ax, (title, keys) in zip(axes[1:], panels, strict=True):
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            values = [float(r.get(key, float("nan"))) for r in rows]
            xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
            bars = ax.bar(xs, values, width=width, label=key)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(range(len(rows)), labels)
        ax.set_title(title)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle("dmp-ml at scale (bench/scale.py, one 2-core machine)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--workdir", type=Path, help="keep the worlds here (default: temporary)")
    parser.add_argument("--bundle", type=Path, nargs="+", help="measure these workdirs only")
    parser.add_argument("--workers", type=int, default=0, help="also serve with N workers")
    parser.add_argument("--plot", type=Path, help="draw the table here (e.g. docs/scale.png)")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="dmp-ml-scale-"))
    targets = args.bundle or [root / f"w{n}" for n in args.profiles]
    rows: list[dict[str, object]] = []
    for i, workdir in enumerate(targets):
        row: dict[str, object] = {"workdir": str(workdir)}
        if not args.bundle:
            row.update(build(workdir, args.profiles[i], args.days))
        elif (workdir / "train.json").exists():
            row.update(json.loads((workdir / "train.json").read_text()))
        row["bundle_mb"] = bundle_size(workdir)
        row.update(probe(workdir))
        row.update(measure(workdir, "latency"))
        if (workdir / "demo" / "events.parquet").exists():
            row.update(refresh_visibility(workdir))
            row.update(compaction(workdir))
            row.update(refreshed_memory(workdir))
        if args.workers:
            row["worker_mb"] = serve_workers(workdir, args.workers)
            row["worker_max_mb"] = max(row["worker_mb"])  # type: ignore[type-var]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    nan = float("nan")
    print(
        f"{'profiles':>9} {'events':>10} {'train s':>8} {'peak GB':>8} {'bundle MB':>10} "
        f"{'load MB':>8} {'answered MB':>12} {'score p99 ms':>13} {'lookalike ms':>13} "
        f"{'exact ms':>9} {'refresh s':>10} {'worst s':>8} {'compact s':>10} "
        f"{'refreshed MB':>13}  workers' private MB; "
        "train seconds by stage"
    )
    for r in rows:
        g = r.get
        stages = " ".join(f"{k}={v:.0f}" for k, v in g("stages_s", {}).items())  # type: ignore[union-attr]
        print(
            f"{g('profiles'):>9} {g('events', 0):>10} {g('train_s', nan):>8.0f} "
            f"{g('train_peak_gb', nan):>8.2f} {g('bundle_mb'):>10.1f} {g('load_mb'):>8.1f} "
            f"{g('answered_mb'):>12.1f} {g('score_p99_ms', nan):>13.1f} "
            f"{g('lookalike_ms', nan):>13.1f} {g('exact_search_ms', nan):>9.1f} "
            f"{g('refresh_s', nan):>10.2f} {g('refresh_worst_s', nan):>8.2f} "
            f"{g('compact_s', nan):>10.1f} {g('worker_refreshed_mb', nan):>13.1f}  "
            f"{[round(w) for w in g('worker_mb', [])]}; {stages}"  # type: ignore[union-attr]
        )
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
