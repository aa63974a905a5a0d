"""Reading raw CSV and Parquet files in batches without losing a single record.

CSV records are one per physical line (quoted fields may not hold newlines): a stray quote then
damages only its own line, which is reported as malformed instead of swallowing the lines after it.
Every batch is a DataFrame of the file's columns as strings (Parquet keeps its types) plus
``_row_number`` (1-based data row) and ``_raw_text`` (the line text of a malformed CSV record).
Flag columns (:data:`FLAGS`) mark records that cannot be used as read: a malformed CSV line, a
line that is not UTF-8, a text field longer than the limit. They appear only in batches that
hold such a record.
"""

from __future__ import annotations

import csv
import io
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dmp_ml.errors import DataContractError
from dmp_ml.rows import is_dictionary

ROW_NUMBER = "_row_number"
RAW_TEXT = "_raw_text"
MALFORMED = "_malformed"
BAD_ENCODING = "_bad_encoding"
TOO_LARGE = "_too_large"
FLAGS = (MALFORMED, TOO_LARGE, BAD_ENCODING)
# the quarantine reason of each flag, the first that applies wins
FLAG_REASONS = (
    (MALFORMED, "malformed_row"),
    (TOO_LARGE, "field_too_large"),
    (BAD_ENCODING, "invalid_encoding"),
)

_CSV_BLOCK_BYTES = 64 << 20
T = TypeVar("T")
_DONE = object()


def file_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the file name; anything else is refused."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".txt", ".tsv")):
        return "csv"
    raise DataContractError(f"{path}: unknown file type (expected .csv or .parquet)")


def iter_batches(
    path: str | Path, batch_rows: int, max_field_bytes: int = 128 * 1024
) -> Iterator[pd.DataFrame]:
    """Yield the file's records in batches; raise DataContractError when it is unusable.

    A record with a text field longer than ``max_field_bytes`` (UTF-8) is flagged ``TOO_LARGE``.
    The next batch is read while the caller works on this one (:func:`prefetched`; whole
    Parquet row groups are read ahead two at a time by their own threads instead).
    """
    path = Path(path)
    if not path.exists():
        raise DataContractError(f"{path}: file not found")
    if path.is_dir():
        raise DataContractError(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise DataContractError(f"{path}: file is empty")
    if file_format(path) == "parquet":
        yield from _parquet_batches(path, batch_rows, max_field_bytes)
    else:
        yield from prefetched(_csv_batches(path, max_field_bytes))


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """``items``, with the next one read in a helper thread while the caller works on this one.

    Parquet decoding and CSV parsing release the GIL, so reading batch k + 1 overlaps the
    validation of batch k; at most one batch is read ahead. Errors surface in the caller, in
    order.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmp-ml-read") as pool:
        pending = pool.submit(next, items, _DONE)
        while True:
            item = pending.result()
            if item is _DONE:
                return
            pending = pool.submit(next, items, _DONE)
            yield item  # type: ignore[misc]


def _duplicates(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataContractError(
                f"{path}: column {name!r} appears more than once; give each column its own name"
            )
        seen.add(name)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _oversized(columns: list[pa.Array | pa.ChunkedArray], limit: int) -> np.ndarray | None:
    """Rows with a text field longer than ``limit`` bytes (None when there are none)."""
    mask = None
    for col in columns:
        if pa.types.is_dictionary(col.type) and _is_text(col.type.value_type):
            if _longest_value(col) <= limit:
                continue
            lengths = _dictionary_lengths(col)  # each row's length, from its dictionary value's
        elif _is_text(col.type):
            lengths = pc.binary_length(col)
        else:
            continue
        longest = pc.max(lengths).as_py()
        if longest is None or longest <= limit:
            continue
        over = pc.fill_null(pc.greater(lengths, limit), False).to_numpy(zero_copy_only=False)
        mask = over if mask is None else mask | over
    return mask


def _longest_value(col: pa.DictionaryArray | pa.ChunkedArray) -> int:
    """The byte length of the longest value in the dictionaries of ``col`` (0 when none)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    longest = [pc.max(pc.binary_length(c.dictionary)).as_py() for c in chunks]
    return max((n for n in longest if n is not None), default=0)


def _dictionary_lengths(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The byte length of each row's value in a dictionary-encoded text column."""
    if isinstance(col, pa.ChunkedArray):
        return pa.chunked_array([_dictionary_lengths(c) for c in col.chunks], type=pa.int64())
    lengths = pc.binary_length(col.dictionary).cast(pa.int64())
    return pc.take(lengths, col.indices)


def _arrow_dictionaries(kind: pa.DataType) -> pd.ArrowDtype | None:
    """Dictionary columns stay Arrow dictionaries in pandas (not categoricals built value by
    value): the contract works on their few distinct values (see ``contract._text``)."""
    return pd.ArrowDtype(kind) if pa.types.is_dictionary(kind) else None


def plain_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its Arrow dictionary columns decoded to text, as a plain read gives them."""
    columns = {}
    for name in frame.columns:
        dtype = frame[name].dtype
        if is_dictionary(dtype):
            values = frame[name].array.__arrow_array__()
            plain = values.cast(dtype.pyarrow_dtype.value_type)
            columns[name] = pd.Series(plain.to_pandas(), index=frame.index, name=name)
    return frame.assign(**columns) if columns else frame


def _parquet_batches(path: Path, batch_rows: int, max_field_bytes: int) -> Iterator[pd.DataFrame]:
    """The file's rows in order: whole row groups when none is much larger than ``batch_rows``,
    else batches of ``batch_rows`` (a batch never holds much more than that).

    Decoding a row group whole costs less than cutting it into batches (measured: about 20%
    less CPU on 1M-row groups read in 500k-row batches); two row groups are decoded at a time
    (Arrow's threads decode the columns of one side by side, then wait for the slowest, often
    a text column rebuilt into a dictionary value by value).
    """

    def opened() -> pq.ParquetFile:
        # text read as Parquet stores it, a dictionary per row group and codes (no decoding
        # into one string per row: the contract trims and checks the distinct values only)
        return pq.ParquetFile(path, read_dictionary=text or None)

    try:
        parquet = pq.ParquetFile(path)
        text = [f.name for f in parquet.schema_arrow if _is_text(f.type)]
        if text:  # reopened to read them as dictionaries
            parquet = opened()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataContractError(f"{path}: not a readable Parquet file ({exc})") from exc
    columns = parquet.schema_arrow.names
    _duplicates(path, columns)

    def frame_of(batch: pa.Table | pa.RecordBatch, start: int) -> pd.DataFrame:
        too_large = _oversized(batch.columns, max_field_bytes)
        frame = batch.to_pandas(types_mapper=_arrow_dictionaries)
        frame[ROW_NUMBER] = range(start, start + len(frame))
        if too_large is not None:
            frame[TOO_LARGE] = too_large
        return frame

    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    if not sum(sizes):
        yield _empty_frame(columns)
    elif max(sizes) <= 2 * batch_rows:
        starts = np.cumsum([1, *sizes])
        files = threading.local()

        def row_group(i: int) -> pd.DataFrame:
            if not hasattr(files, "parquet"):  # a reader of its own for each thread
                files.parquet = opened()
            return frame_of(files.parquet.read_row_group(i), int(starts[i]))

        yield from _ordered_map(row_group, [i for i, size in enumerate(sizes) if size], 2)
    else:
        yield from prefetched(_batched(parquet, batch_rows, frame_of))


def _batched(
    parquet: pq.ParquetFile,
    batch_rows: int,
    frame_of: Callable[[pa.RecordBatch, int], pd.DataFrame],
) -> Iterator[pd.DataFrame]:
    """The file's rows in batches of ``batch_rows``, numbered from 1."""
    start = 1
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield frame_of(batch, start)
        start += len(batch)


def _ordered_map(work: Callable[[int], T], items: list[int], threads: int) -> Iterator[T]:
    """``work`` over ``items`` on ``threads`` threads, at most ``threads`` ahead, in order."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dmp-ml-parquet") as pool:
        pending = deque(pool.submit(work, i) for i in items[:threads])
        for i in items[threads:]:
            done = pending.popleft().result()
            pending.append(pool.submit(work, i))
            yield done
        while pending:
            yield pending.popleft().result()


def _empty_frame(columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series([], dtype="string") for c in columns})
    frame[ROW_NUMBER] = pd.Series([], dtype="int64")
    return frame


def _csv_batches(path: Path, max_field_bytes: int) -> Iterator[pd.DataFrame]:
    with path.open("rb") as handle:
        header_line = handle.readline()
        header = _split_line(header_line.decode("utf-8", errors="replace").rstrip("\r\n"))
        header = [h.strip().lstrip("\ufeff") for h in header]
        if not any(header):
            raise DataContractError(f"{path}: no header line")
        _duplicates(path, header)
        start = 1
        empty = True
        while True:
            block = handle.read(_CSV_BLOCK_BYTES)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += handle.readline()
            frame = _parse_block(block, header, start, max_field_bytes)
            start += len(frame)
            empty = False
            yield frame
        if empty:
            yield _empty_frame(header)


def _parse_block(block: bytes, header: list[str], start: int, limit: int) -> pd.DataFrame:
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
        too_large = _oversized(table.columns, limit)
        frame = table.to_pandas(types_mapper=lambda _: pd.StringDtype())
        frame[ROW_NUMBER] = range(start, start + len(frame))
        if too_large is not None:
            frame[TOO_LARGE] = too_large
        return frame
    return _parse_block_slowly(block, header, start, limit)


def _split_line(text: str) -> list[str]:
    return next(csv.reader([text], strict=False), [])


def _parse_block_slowly(block: bytes, header: list[str], start: int, limit: int) -> pd.DataFrame:
    """Line-by-line parsing: each malformed, oversized or badly encoded record is kept, flagged.

    Only blocks the fast reader refused come here (a malformed line or bad bytes in them).
    """
    raw_lines = block.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    width = len(header)
    rows: list[list[str | None]] = []
    texts: list[str | None] = []
    malformed: list[bool] = []
    too_large: list[bool] = []
    bad_encoding: list[bool] = []
    for raw in raw_lines:
        raw = raw.rstrip(b"\r")
        try:
            text = raw.decode("utf-8")
            encoding_ok = True
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="backslashreplace")
            encoding_ok = False
        large = len(raw) > limit
        try:
            fields = _split_line(text)
        except csv.Error:  # a field over the csv module's own limit: too large, or broken
            fields = []
        if large and len(fields) == width:
            large = any(len(f.encode("utf-8")) > limit for f in fields)
        ok = len(fields) == width and text.count('"') % 2 == 0
        if ok and not large:
            rows.append([f if f != "" else None for f in fields])
            texts.append(None if encoding_ok else text)
        else:
            rows.append([None] * width)
            texts.append(text)
        malformed.append(not ok and not large)
        too_large.append(large)
        bad_encoding.append(not encoding_ok)
    frame = pd.DataFrame(rows, columns=header, dtype="string")
    frame[ROW_NUMBER] = range(start, start + len(frame))
    frame[RAW_TEXT] = pd.array(texts, dtype="string")
    frame[MALFORMED] = malformed
    frame[TOO_LARGE] = too_large
    frame[BAD_ENCODING] = bad_encoding
    return frame
