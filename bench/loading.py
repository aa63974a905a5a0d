"""Time the data contract's loader: rows per second through ``load_events``.

Usage::

    python bench/loading.py                                   # the Online Retail log
    python bench/loading.py --input events.parquet [--mapping m.yaml] [--repeat 3]
    python bench/loading.py --csv-time-format '%m/%d/%Y %H:%M'   # times as the UCI CSV has them

The file is loaded as given (Parquet) and once more as CSV (written to a temporary file, times
as text, so the time parsing is measured too: ISO-8601 by default, or ``--csv-time-format``;
the mapping must then read that format). Each figure is the best of ``--repeat`` runs in this
process; it prints rows read, rows loaded and rows per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from dmp_ml.contract import load_events
from dmp_ml.mapping import load_mapping

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT.parent / "shared/data/online_retail/online_retail.parquet"
DEFAULT_MAPPING = ROOT / "src/dmp_ml/config/mappings/online_retail.yaml"


def _best(path: Path, mapping: Path | None, repeat: int) -> tuple[float, int, int]:
    best = float("inf")
    read = loaded = 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = load_events(path, mapping=mapping)
        best = min(best, time.perf_counter() - start)
        read, loaded = result.report.rows_read, result.report.rows_loaded
    return best, read, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--mapping", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--csv-time-format", default=None, help="strftime of the CSV's times")
    args = parser.parse_args()
    mapping = args.mapping
    if mapping is None and args.input == DEFAULT_INPUT:
        mapping = DEFAULT_MAPPING
    with tempfile.TemporaryDirectory(prefix="dmp-bench-load-") as tmp:
        csv_path = Path(tmp) / (args.input.stem + ".csv")
        frame = pd.read_parquet(args.input) if args.input.suffix == ".parquet" else None
        if frame is not None:
            if args.csv_time_format:
                renamed = load_mapping(mapping).rename if mapping else {}
                column = next((k for k, v in renamed.items() if v == "event_time"), "event_time")
                frame[column] = frame[column].dt.strftime(args.csv_time_format)
            frame.to_csv(csv_path, index=False)
        for label, path in (("parquet", args.input), ("csv", csv_path)):
            if not path.exists():
                continue
            seconds, read, loaded = _best(path, mapping, args.repeat)
            print(
                f"{label:8s} rows read {read:>10,}  loaded {loaded:>10,}  "
                f"{seconds:7.3f} s  {read / seconds:>12,.0f} rows/s"
            )


if __name__ == "__main__":
    main()
