"""Time the data contract's loader: rows per second through ``load_events``.

Usage::

    python bench/loading.py                                   # the Online Retail log
    python bench/loading.py --input events.parquet [--mapping m.yaml] [--repeat 3]
    python bench/loading.py --csv-time-format '%m/%d/%Y %H:%M'   # times as the UCI CSV has them
    python bench/loading.py --events 10_000_000 --no-csv            # a synthetic DMP log

``--events N`` loads a synthetic log of N events (the generator of ``bench/features.py``, one
profile per 100 events, 120 days) instead of a file.

The file is loaded as given (Parquet) and once more as CSV (written to a temporary file, times
as text, so the time parsing is measured too: ISO-8601 by default, or ``--csv-time-format``;
the mapping must then read that format). Each figure is the best of ``--repeat`` runs in this
process; it prints rows read, rows loaded and rows per second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from dmp_ml.contract import load_events
from dmp_ml.mapping import load_mapping

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT.parent / "shared/data/online_retail/online_retail.parquet"
DEFAULT_MAPPING = ROOT / "src/dmp_ml/config/mappings/online_retail.yaml"


def _best(path: Path, mapping: Path | None, repeat: int) -> tuple[float, float, int, int]:
    """Best wall and CPU seconds of ``repeat`` loads; rows read and loaded."""
    best = cpu = float("inf")
    read = loaded = 0
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = load_events(path, mapping=mapping)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
        read, loaded = result.report.rows_read, result.report.rows_loaded
        del result
    return best, cpu, read, loaded


def _synthetic(n_events: int, folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from features import generate_log

    events, _, _ = generate_log(n_events, max(10, n_events // 100), days=120)
    path = folder / f"events_{n_events}.parquet"
    pq.write_table(events, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--mapping", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--csv-time-format", default=None, help="strftime of the CSV's times")
    parser.add_argument("--events", type=lambda s: int(float(s.replace("_", ""))), default=None)
    parser.add_argument("--no-csv", action="store_true", help="time the Parquet file only")
    args = parser.parse_args()
    mapping = args.mapping
    if mapping is None and args.input == DEFAULT_INPUT and args.events is None:
        mapping = DEFAULT_MAPPING
    with tempfile.TemporaryDirectory(prefix="dmp-bench-load-") as tmp:
        if args.events is not None:
            args.input = _synthetic(args.events, Path(tmp))
        csv_path = Path(tmp) / (args.input.stem + ".csv")
        frame = None
        if args.input.suffix == ".parquet" and not args.no_csv:
            frame = pd.read_parquet(args.input)
        if frame is not None:
            if args.csv_time_format:
                renamed = load_mapping(mapping).rename if mapping else {}
                column = next((k for k, v in renamed.items() if v == "event_time"), "event_time")
                frame[column] = frame[column].dt.strftime(args.csv_time_format)
            frame.to_csv(csv_path, index=False)
            del frame
        for label, path in (("parquet", args.input), ("csv", csv_path)):
            if not path.exists():
                continue
            seconds, cpu, read, loaded = _best(path, mapping, args.repeat)
            print(
                f"{label:8s} rows read {read:>10,}  loaded {loaded:>10,}  "
                f"{seconds:7.3f} s  {read / seconds:>12,.0f} rows/s  "
                f"(cpu {cpu:.3f} s, {read / cpu:,.0f} rows/cpu-s)"
            )


if __name__ == "__main__":
    main()
