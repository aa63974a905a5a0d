"""End to end ``dmp-ml train`` on a demo world: wall time, the per-step table, peak memory.

Generates (or reuses) a demo world of ``--profiles`` profiles with ``dmp-ml demo-data``, then
runs ``dmp-ml train --as-of end`` in a subprocess exactly as a user would (CLI start-up,
loading and validating the files, every step, publishing, MLflow). Prints the command's wall
time, its peak resident memory (the train process alone, from ``wait4``), and the seconds of
every stage read from the published bundle's manifest and ``train``'s own summary.

    python bench/pipeline.py                          # 20,000 profiles x 120 days
    python bench/pipeline.py --profiles 100000 --data /tmp/world100k   # keep the world
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def dmp_ml() -> list[str]:
    """The ``dmp-ml`` command installed next to the interpreter running this script."""
    script = Path(sys.executable).parent / "dmp-ml"
    return [str(script)] if script.exists() else ["dmp-ml"]


def demo_world(directory: Path, profiles: int, days: int, seed: int) -> Path:
    """The demo world in ``directory``, generated unless its three files are there."""
    if all((directory / f"{n}.parquet").exists() for n in ("events", "profiles", "consent")):
        print(f"demo world: reusing {directory}")
        return directory
    start = time.perf_counter()
    subprocess.run(
        [*dmp_ml(), "demo-data", str(directory), "--profiles", str(profiles)]
        + ["--days", str(days), "--seed", str(seed)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"demo world: {profiles:,} profiles x {days} d in {time.perf_counter() - start:.0f} s")
    return directory


def run_train(world: Path, workdir: Path) -> tuple[float, float, str]:
    """Run ``dmp-ml train`` on ``world``; (wall seconds, peak RSS in GB, its output)."""
    command = [*dmp_ml(), "train", "--workdir", str(workdir), "--as-of", "end"] + [
        arg
        for n in ("events", "profiles", "consent")
        for arg in (f"--{n}", str(world / f"{n}.parquet"))
    ]
    log = workdir.parent / "train.log"
    start = time.perf_counter()
    with log.open("w") as out:
        env = {**os.environ, "COLUMNS": "250"}  # the summary's timing line on one line
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"dmp-ml train failed:\n{text[-3000:]}")
    return wall, usage.ru_maxrss / 1024**2, text  # ru_maxrss is in kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="keep (or reuse) the demo world here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dmp-bench-pipeline-"))
    try:
        world = demo_world(args.data or scratch / "world", args.profiles, args.days, args.seed)
        events = (world / "events.parquet").stat().st_size / 1024**2
        print(
            f"events file: {events:.0f} MB; cores: {os.cpu_count()}; "
            f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
        wall, rss, output = run_train(world, scratch / "workdir")
        live = next((scratch / "workdir").glob("bundles/*/manifest.json"), None)
        manifest = json.loads(live.read_text()) if live else {}
        print(
            f"\ndmp-ml train, {args.profiles:,} profiles: wall {wall:.1f} s "
            f"({wall / 60:.1f} min), peak RSS {rss:.2f} GB"
        )
        steps = manifest.get("steps", {})
        line = next((ln for ln in output.splitlines() if ln.startswith("seconds: ")), "")
        stages = line.removeprefix("seconds: ").split(";")[0].split(", ") if line else []
        print(f"{'stage':<12} {'seconds':>8}  status")
        timed = 0.0
        for stage in stages:
            name, _, value = stage.rpartition(" ")
            timed += float(value)
            print(f"{name:<12} {float(value):>8.1f}  {steps.get(name, {}).get('status', '')}")
        print(f"{'start/exit':<12} {wall - timed:>8.1f}  (CLI start-up, imports, exit)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
