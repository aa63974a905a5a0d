"""Reading raw CSV and Parquet files in batches without losing a single record.

CSV records are one per physical line (quoted fields may not hold newlines): a stray quote then
damages only its own line, which is reported as malformed instead of swallowing the lines after it.
Every batch is a DataFrame of the file's columns as strings (Parquet keeps its types) plus
``_row_number`` (1-based data row) and ``_raw_text`` (the line text of a malformed CSV record).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dmp_ml.errors import DataContractError

ROW_NUMBER = "_row_number"
RAW_TEXT = "_raw_text"
MALFORMED = "_malformed"
BAD_ENCODING = "_bad_encoding"

_CSV_BLOCK_BYTES = 64 << 20


def file_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the file name; anything else is refused."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".txt", ".tsv")):
        return "csv"
    raise DataContractError(f"{path}: unknown file type (expected .csv or .parquet)")


def iter_batches(path: str | Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """Yield the file's records in batches; raise DataContractError when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise DataContractError(f"{path}: file not found")
    if path.is_dir():
        raise DataContractError(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise DataContractError(f"{path}: file is empty")
    if file_format(path) == "parquet":
        yield from _parquet_batches(path, batch_rows)
    else:
        yield from _csv_batches(path)


def _parquet_batches(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataContractError(f"{path}: not a readable Parquet file ({exc})") from exc
    start = 1
    columns = parquet.schema_arrow.names
    empty = True
    for batch in parquet.iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        frame[ROW_NUMBER] = range(start, start + len(frame))
        start += len(frame)
        empty = False
        yield frame
    if empty:
        yield _empty_frame(columns)


def _empty_frame(columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series([], dtype="string") for c in columns})
    frame[ROW_NUMBER] = pd.Series([], dtype="int64")
    return frame


def _csv_batches(path: Path) -> Iterator[pd.DataFrame]:
    with path.open("rb") as handle:
        header_line = handle.readline()
        header = _split_line(header_line.decode("utf-8", errors="replace").rstrip("\r\n"))
        header = [h.strip().lstrip("\ufeff") for h in header]
        if not any(header):
            raise DataContractError(f"{path}: no header line")
        if len(set(header)) != len(header):
            raise DataContractError(f"{path}: duplicate column names in header {header}")
        start = 1
        empty = True
        while True:
            block = handle.read(_CSV_BLOCK_BYTES)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += handle.readline()
            frame = _parse_block(block, header, start)
            start += len(frame)
            empty = False
            yield frame
        if empty:
            yield _empty_frame(header)


def _parse_block(block: bytes, header: list[str], start: int) -> pd.DataFrame:
    lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
    try:
        table = pacsv.read_csv(
            io.BytesIO(block),
            read_options=pacsv.ReadOptions(column_names=header),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        fast = table.num_rows == lines
    except (pa.ArrowInvalid, UnicodeDecodeError):
        fast = False
    if fast:
        frame = table.to_pandas(types_mapper=lambda _: pd.StringDtype())
        frame[ROW_NUMBER] = range(start, start + len(frame))
        return frame
    return _parse_block_slowly(block, header, start)


def _split_line(text: str) -> list[str]:
    return next(csv.reader([text], strict=False), [])


def _parse_block_slowly(block: bytes, header: list[str], start: int) -> pd.DataFrame:
    """Line-by-line parsing: each malformed or badly encoded record is kept and flagged."""
    raw_lines = block.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    width = len(header)
    rows: list[list[str | None]] = []
    texts: list[str | None] = []
    malformed: list[bool] = []
    bad_encoding: list[bool] = []
    for raw in raw_lines:
        raw = raw.rstrip(b"\r")
        try:
            text = raw.decode("utf-8")
            encoding_ok = True
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="backslashreplace")
            encoding_ok = False
        fields = _split_line(text)
        ok = len(fields) == width and text.count('"') % 2 == 0
        if ok:
            rows.append([f if f != "" else None for f in fields])
            texts.append(None if encoding_ok else text)
        else:
            rows.append([None] * width)
            texts.append(text)
        malformed.append(not ok)
        bad_encoding.append(not encoding_ok)
    frame = pd.DataFrame(rows, columns=header, dtype="string")
    frame[ROW_NUMBER] = range(start, start + len(frame))
    frame[RAW_TEXT] = pd.array(texts, dtype="string")
    frame[MALFORMED] = malformed
    frame[BAD_ENCODING] = bad_encoding
    return frame
