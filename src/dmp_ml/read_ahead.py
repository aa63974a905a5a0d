"""The first row groups of a Parquet file, decoded while the program is still starting.

A batch command spends its first half second importing pandas and the library, which holds
the interpreter on one core. Decoding Parquet needs neither: started as soon as pyarrow is
imported, the first row groups of the event log are decoded on the other core meanwhile, and
the loader (:func:`dmp_ml._readers.iter_batches`) takes them instead of reading them again.
This module imports nothing heavier than pyarrow, so that it can start before the rest.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

AHEAD_ROW_GROUPS = 2
"""How many row groups are decoded ahead: the loader decodes two at a time."""
AHEAD_MAX_ROWS = 1 << 20
"""Row groups larger than this are left to the loader (it may cut them into batches)."""


def is_text(kind: pa.DataType) -> bool:
    """Whether ``kind`` is an Arrow text type."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def text_columns(schema: pa.Schema) -> list[str]:
    """The text columns of a Parquet file: the loader reads them as dictionaries."""
    return [f.name for f in schema if is_text(f.type)]


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """The file, its text columns read as Parquet stores them: a dictionary per row group and
    codes, not one string per row."""
    parquet = pq.ParquetFile(path)
    text = text_columns(parquet.schema_arrow)
    return pq.ParquetFile(path, read_dictionary=text) if text else parquet


class ReadAhead:
    """The first :data:`AHEAD_ROW_GROUPS` row groups of the Parquet file ``path``, decoded in a
    helper thread from construction on (nothing for another kind of file, or one whose first
    row groups hold more than :data:`AHEAD_MAX_ROWS` rows).

    ``with ReadAhead(path) as ahead:`` around the load: what the loader did not take is
    dropped on leaving. A file that cannot be read is left for the loader to report.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmp-ml-ahead")
        self._tables: Future[dict[int, pa.Table]] = self._pool.submit(self._read)

    def _read(self) -> dict[int, pa.Table]:
        if self.path.suffix.lower() not in (".parquet", ".pq") or not self.path.is_file():
            return {}
        try:
            parquet = open_parquet(self.path)
            first = range(min(AHEAD_ROW_GROUPS, parquet.num_row_groups))
            if any(parquet.metadata.row_group(i).num_rows > AHEAD_MAX_ROWS for i in first):
                return {}
            return {i: parquet.read_row_group(i) for i in first}
        except (pa.ArrowException, OSError):  # the loader reads it again and says what is wrong
            return {}

    def take(self, path: str | Path, row_group: int) -> pa.Table | None:
        """Row group ``row_group`` of ``path`` as :func:`open_parquet` reads it, once; None
        when it was not read ahead (waits for it while it is being read)."""
        if Path(path) != self.path:
            return None
        return self._tables.result().pop(row_group, None)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tables.result().clear()
        self._pool.shutdown()
