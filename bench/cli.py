"""Command-line latency (issue 21): ``dmp-ml --help`` and typical commands on a trained bundle.

    python bench/cli.py                          # demo world of 20,000 profiles, trained here
    python bench/cli.py --workdir models         # an existing trained workdir
    python bench/cli.py --profiles 5000 --repeat 5

Each row is the wall time of the user's command as a fresh process (the ``dmp-ml`` script next
to this interpreter), best of ``--repeat``: interpreter start, imports, loading and verifying
the bundle, answering, writing the file. The slowest run is shown too, and the CPU seconds
(user + system) of the best run, which a busy machine inflates far less than wall time. Two
references are timed in the same run, so the figures can be read as ratios on a busy machine:
the bare interpreter (``python -c pass``) and importing pandas (what any command that reads a
table pays). Targets: ``--help`` under 0.5 s,
a command on a 20k-profile bundle under 2 s.

Without ``--workdir`` the bench generates a demo world (``dmp-ml demo-data``) and trains it
(``dmp-ml train``) into a temporary directory, removed at the end; that setup is not timed.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

TARGETS = {"help": 0.5}
COMMAND_TARGET = 2.0


def dmp_ml_command() -> list[str]:
    """The ``dmp-ml`` console script of this interpreter's environment (``-m`` when absent)."""
    script = shutil.which("dmp-ml", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "dmp_ml.cli"]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds the process took; a failed command stops the bench with its stderr."""
    cpu0 = _child_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    cpu = _child_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, cpu


def best_of(args: list[str], cwd: Path, repeat: int) -> tuple[float, float, float]:
    """Best wall seconds of ``repeat`` runs, the worst, and the CPU seconds of the best."""
    runs = sorted(run(args, cwd) for _ in range(repeat))
    return runs[0][0], runs[-1][0], runs[0][1]


def build_workdir(root: Path, profiles: int, days: int) -> Path:
    cli = dmp_ml_command()
    world = root / "world"
    print(f"building: demo-data {profiles:,} profiles x {days} days, then train (not timed)")
    t0 = time.perf_counter()
    run([*cli, "-q", "demo-data", str(world), "--profiles", str(profiles), "--days", str(days)],
        root)  # fmt: skip
    workdir = root / "workdir"
    run(
        [*cli, "-q", "train", "--events", str(world / "events.parquet"),
         "--profiles", str(world / "profiles.parquet"),
         "--consent", str(world / "consent.parquet"), "--as-of", "end", "--workdir", str(workdir)],
        root,
    )  # fmt: skip
    print(f"built in {time.perf_counter() - t0:.0f} s")
    return workdir


def inputs(workdir: Path, root: Path) -> dict[str, Path]:
    """Id, seed and rule files for the commands, from the bundle's feature table."""
    bundle = (workdir / "bundle").resolve()
    table = pq.read_table(bundle / "features" / "features.parquet", columns=["profile_id"])
    ids = [str(p) for p in table.column("profile_id").to_pylist()]
    (root / "ids.txt").write_text("\n".join(ids[:100]) + "\n")
    (root / "seeds.txt").write_text("\n".join(ids[::50][:200]) + "\n")
    rule = {
        "all": [
            {"feature": "event_count_30d", "op": ">=", "value": 1},
            {"score": "propensity_percentile", "op": ">=", "value": 50},
        ]
    }
    (root / "rule.json").write_text(json.dumps(rule))
    return {"ids": root / "ids.txt", "seeds": root / "seeds.txt", "rule": root / "rule.json"}


def commands(workdir: Path, files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    w = ["--workdir", str(workdir)]
    return {
        "help": ["--help"],
        "score (all profiles)": ["score", *w, "--out", str(out / "scores.csv")],
        "score --ids (100)": ["score", *w, "--ids", str(files["ids"]), "--out",
                              str(out / "scores_ids.csv")],
        "segment --rule": ["segment", *w, "--rule", str(files["rule"])],
        "export --min-percentile 90": ["export", *w, "--min-percentile", "90", "--out",
                                       str(out / "export.csv")],
        "send-time --ids (100)": ["send-time", *w, "--ids", str(files["ids"]), "--out",
                                  str(out / "send_times.csv")],
        "lookalike --size 1000": ["lookalike", *w, "--seeds", str(files["seeds"]), "--size",
                                  "1000", "--out", str(out / "audience.csv")],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="A trained workdir.")
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cli = dmp_ml_command()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp)
        workdir = args.workdir.resolve() if args.workdir else build_workdir(root, args.profiles,
                                                                            args.days)  # fmt: skip
        files = inputs(workdir, root)
        out = root / "out"
        out.mkdir()
        references = {
            "reference: python -c pass": [sys.executable, "-c", "pass"],
            "reference: import pandas": [sys.executable, "-c", "import pandas"],
        }
        rows: list[tuple[str, tuple[float, float, float], float | None]] = []
        for name, argv in references.items():
            rows.append((name, best_of(argv, root, args.repeat), None))
        for name, argv in commands(workdir, files, out).items():
            target = TARGETS.get(name, COMMAND_TARGET)
            rows.append((f"dmp-ml {name}", best_of([*cli, *argv], root, args.repeat), target))
        n = pq.read_metadata(
            (workdir / "bundle").resolve() / "features" / "features.parquet"
        ).num_rows
    print(f"\nbundle: {n:,} profiles; {args.repeat} runs; seconds per process")
    width = max(len(r[0]) for r in rows)
    print(f"{'command':<{width}}  {'best':>6}  {'worst':>6}  {'cpu':>6}  {'target':>6}  ")
    for name, (best, worst, cpu), target in rows:
        verdict = "" if target is None else ("ok" if best < target else "OVER")
        shown = "" if target is None else f"< {target:g}"
        print(f"{name:<{width}}  {best:6.2f}  {worst:6.2f}  {cpu:6.2f}  {shown:>6}  {verdict}")


if __name__ == "__main__":
    main()
