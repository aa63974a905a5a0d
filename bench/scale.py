"""Serving at scale: bundle size on disk and a serving worker's private memory per demo world.

For each size, builds a demo world (``dmp-ml demo-data``), trains it (``dmp-ml train``), then
loads the bundle in a fresh process and measures that process's private memory (the
``Anonymous`` memory from ``/proc/<pid>/smaps_rollup``: what only it holds, backed by no
file; the pages of mapped bundle files are page cache, shared by every worker mapping them),
before and after loading and after answering a few questions, with what each part of the
bundle adds. With ``--workers 2`` it also starts ``dmp-ml serve`` with two workers and reports
each worker's private memory after a round of requests. Prints one table.

    python bench/scale.py --profiles 10000 50000
    python bench/scale.py --profiles 10000 --workdir /tmp/scale --workers 2   # keeps the worlds
    python bench/scale.py --bundle /tmp/scale/w10000                          # measure only
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib import request as urlrequest

HERE = Path(__file__).resolve().parent
DMP_ML = [sys.executable, "-m", "dmp_ml.cli"]

_PROBE = r"""
import gc, json, sys
from pathlib import Path

def uss():
    # anonymous bytes: what only this process holds, not backed by a file (the
    # pages of a mapped bundle file are page cache, shared by whoever maps them)
    gc.collect()
    return private_anon("self")

def private_anon(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Anonymous:"))

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
elif part != "bundle":
    kept = model_class(part).load(path / part, n_threads=1)
else:
    bundle = b.load_bundle(path, n_threads=1)
    loaded = uss()
    ids = bundle.features.frame.index[:50].tolist()
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
                      "parts": ["features", *b.trained_models(manifest), "scores"]}))
    sys.exit(0)
print(json.dumps({"mb": (uss() - before) / 2**20}))
"""


def private_anon(pid: int | str) -> int:
    """Anonymous (private, backed by no file) bytes of process ``pid`` (``self``: this one)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Anonymous:"))


def run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def build(workdir: Path, profiles: int, days: int) -> float:
    """Demo world and trained bundle in ``workdir`` (skipped when one is there); train seconds."""
    if (workdir / "bundle").exists():
        return float("nan")
    demo = workdir / "demo"
    run([*DMP_ML, "demo-data", str(demo), "--profiles", str(profiles), "--days", str(days)])
    started = time.perf_counter()
    run(
        [*DMP_ML, "train", "--workdir", str(workdir), "--as-of", "end"]
        + ["--events", str(demo / "events.parquet"), "--profiles", str(demo / "profiles.parquet")]
        + ["--consent", str(demo / "consent.parquet")]
    )
    return time.perf_counter() - started


def bundle_size(workdir: Path) -> float:
    """MB on disk of the live bundle."""
    live = (workdir / "bundle").resolve()
    return sum(p.stat().st_size for p in live.rglob("*") if p.is_file()) / 2**20


def probe(workdir: Path) -> dict[str, object]:
    """Load the bundle, then each of its parts, each in a fresh process; private memory MB."""

    def measure(part: str) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(workdir), part],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = measure("bundle")
    result["parts_mb"] = {p: measure(p)["mb"] for p in result.pop("parts")}
    return result


def serve_workers(workdir: Path, n_workers: int) -> list[float]:
    """Serve with ``n_workers``, send a few requests; each worker's private (anonymous) MB."""
    import psutil

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
        return sorted(private_anon(p.pid) / 2**20 for p in workers if "python" in p.name().lower())[
            -n_workers:
        ]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--workdir", type=Path, help="keep the worlds here (default: temporary)")
    parser.add_argument("--bundle", type=Path, nargs="+", help="measure these workdirs only")
    parser.add_argument("--workers", type=int, default=0, help="also serve with N workers")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="dmp-ml-scale-"))
    targets = args.bundle or [root / f"w{n}" for n in args.profiles]
    rows = []
    for i, workdir in enumerate(targets):
        train_s = float("nan") if args.bundle else build(workdir, args.profiles[i], args.days)
        row = {"workdir": str(workdir), "train_s": train_s, "bundle_mb": bundle_size(workdir)}
        row.update(probe(workdir))
        if args.workers:
            row["worker_uss_mb"] = serve_workers(workdir, args.workers)
        rows.append(row)
    print(
        f"{'profiles':>9} {'train s':>8} {'bundle MB':>10} {'base MB':>8} {'load MB':>8} "
        f"{'answered MB':>12}  per part MB / workers' private MB"
    )
    for r in rows:
        parts = " ".join(f"{k}={v:.1f}" for k, v in r["parts_mb"].items())
        workers = (
            f"  workers {[round(w) for w in r['worker_uss_mb']]}" if "worker_uss_mb" in r else ""
        )
        print(
            f"{r['profiles']:>9} {r['train_s']:>8.0f} {r['bundle_mb']:>10.1f} "
            f"{r['base_mb']:>8.0f} {r['load_mb']:>8.1f} {r['answered_mb']:>12.1f}  {parts}{workers}"
        )


if __name__ == "__main__":
    main()
