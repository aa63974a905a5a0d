"""The feature table: what it holds (:class:`FeatureSpec`) and how it is stored (one Parquet
file for export, or a directory of mapped arrays in a bundle)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dmp_ml.errors import DataContractError, UnknownProfileError
from dmp_ml.id_index import IdIndex
from dmp_ml.links import LINKS_FILE, write_link_index
from dmp_ml.mapped import map_array, map_frame, write_array, write_frame
from dmp_ml.rows import LazyRows, OverlaidFrame

FEATURE_VERSION = "1"
HOURS_PER_WEEK = 168
HOW_PREFIX = "hour_of_week_"
_META_KEY = b"dmp_ml.features"
TABLE_FILE = "table.json"
"""Spec and summary of a feature table directory (:meth:`FeatureTable.write`)."""
HOW_FILE = "hour_of_week.npy"


_TRANSPOSE_ROWS = 4096


def _transposed(rows: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray(rows.T)``, copied a block of rows at a time: each block is read
    and written while it is in cache (about 40% less time than one strided copy of the whole
    (n, 168) array)."""
    out = np.empty(rows.shape[::-1], dtype=rows.dtype)
    for start in range(0, len(rows), _TRANSPOSE_ROWS):
        out[:, start : start + _TRANSPOSE_ROWS] = rows[start : start + _TRANSPOSE_ROWS].T
    return out


def _float_arrays(columns: Iterable[np.ndarray]) -> list[pa.Array]:
    """Contiguous float64 columns as Arrow arrays, NaN as null, as ``Table.from_pandas`` makes
    them; the values are not copied. NumPy finds the NaNs and packs the validity bitmap in
    about half the time Arrow's conversion takes."""
    out = []
    for values in columns:
        nan = np.isnan(values)
        n_null = int(np.count_nonzero(nan))
        valid = pa.py_buffer(np.packbits(~nan, bitorder="little")) if n_null else None
        buffers = [valid, pa.py_buffer(np.ascontiguousarray(values))]
        out.append(pa.Array.from_buffers(pa.float64(), len(values), buffers, null_count=n_null))
    return out


def _arrow_table(frame: pd.DataFrame, how: np.ndarray) -> pa.Table:
    """``frame``, the ``hour_of_week`` columns and the index as one Arrow table, the same as
    ``Table.from_pandas`` of them side by side (schema and pandas metadata included).

    The hour-of-week rows are transposed and converted in a helper thread while the frame's
    columns are converted here (NumPy and Arrow release the GIL): about half the time of
    joining them in one frame and converting that.
    """
    how_names = [f"{HOW_PREFIX}{h:03d}" for h in range(HOURS_PER_WEEK)]
    floats = [c for c in frame.columns if frame[c].dtype == np.float64]
    with ThreadPoolExecutor(max_workers=1) as helper:
        how_arrays = helper.submit(lambda: _float_arrays(_transposed(how)))
        # the schema, pandas metadata included, from the same columns without their rows
        empty = {c: frame[c].iloc[:0] for c in frame.columns}
        empty.update({name: np.zeros(0) for name in how_names})
        schema = pa.Schema.from_pandas(
            pd.DataFrame(empty, index=frame.index[:0]), preserve_index=True
        )
        arrays = dict(zip(floats, _float_arrays(frame[c].to_numpy() for c in floats), strict=True))
        # the other columns (categories) and the index as pandas converts them
        rest = pa.Table.from_pandas(
            frame[[c for c in frame.columns if c not in set(floats)]], preserve_index=True
        )
        arrays.update(zip(rest.column_names, rest.columns, strict=True))
        arrays.update(zip(how_names, how_arrays.result(), strict=True))
    return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)


def _mapped_from(array: object, path: Path) -> bool:
    """Whether ``array`` is the mapping of the file at ``path`` (writing that file again
    would truncate what the mapping reads)."""
    filename = getattr(array, "filename", None)  # an np.memmap's file
    return filename is not None and path.exists() and Path(filename).samefile(path)


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature table holds: names, dtypes, version and the cutoff it describes.

    ``event_types``, ``channels`` and ``categories`` are the vocabularies chosen at build time;
    pass the spec as ``reference`` to :func:`build_features` to get the same columns at another
    cutoff. ``params`` records the window lengths, half-life and population email rates.
    """

    version: str
    as_of: pd.Timestamp
    columns: dict[str, str]
    categorical: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "as_of": self.as_of.isoformat(),
            "columns": dict(self.columns),
            "categorical": list(self.categorical),
            "event_types": list(self.event_types),
            "channels": list(self.channels),
            "categories": list(self.categories),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureSpec:
        return cls(
            version=str(data["version"]),
            as_of=pd.Timestamp(str(data["as_of"])),
            columns=dict(data["columns"]),  # type: ignore[arg-type]
            categorical=list(data.get("categorical", [])),  # type: ignore[arg-type]
            event_types=list(data.get("event_types", [])),  # type: ignore[arg-type]
            channels=list(data.get("channels", [])),  # type: ignore[arg-type]
            categories=list(data.get("categories", [])),  # type: ignore[arg-type]
            params=dict(data.get("params", {})),  # type: ignore[arg-type]
        )


def read_links(path: Path) -> pd.Series:
    """The ``cookie_id -> profile_id`` links a feature table directory holds (``path``)."""
    table = pq.read_table(path).to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
    return table.set_index("cookie_id")["profile_id"]


def resolve_links(links: pd.Series | Path | Callable[[], pd.Series] | None) -> pd.Series | None:
    """The links themselves: read from their file, or returned by what merges them."""
    if isinstance(links, Path):
        return read_links(links)
    return links() if callable(links) else links


@dataclass(frozen=True)
class FeatureTable:
    """Features of every eligible profile as of ``spec.as_of``.

    Attributes
    ----------
    data : DataFrame or OverlaidFrame, shape (n_profiles, n_features)
        The rows (:attr:`frame`): a frame, or after a refresh merged new profiles in, the
        mapped table with the refreshed rows over it (:class:`dmp_ml.rows.OverlaidFrame`), so
        that a batch does not copy the population's columns. Read rows with :meth:`take` and
        the ids with :attr:`profile_ids`; :attr:`frame` builds the whole frame.
    hour_of_week : ndarray, shape (n_profiles, 168)
        Engagement counts per local hour of week (hour 0 = Monday 00:00), row-aligned with frame
        (built on first use after a refresh merged rows in: :class:`dmp_ml.rows.LazyRows`).
    spec : FeatureSpec
    summary : dict
        Counts describing the build (profiles known/anonymous, shared devices, exclusions, ...).
    links : Series, Path, callable or None
        ``cookie_id -> profile_id`` for cookies a request can be resolved through (see
        :class:`dmp_ml.identity.Resolution`), or the Parquet file :meth:`read` found them in,
        read on first use (:attr:`cookie_map`), or what returns them with a refresh's links
        merged in (:func:`dmp_ml.delta.merge_table`), called on first use: answers never need
        them, only a refresh, an erasure or an attribution does, so a serving worker neither
        holds a link per cookie nor merges a delta's links into the population's.
    id_index : (rows, IdIndex) or None
        The id index of the rows (:attr:`ids`) and the ``data`` it describes: a table whose
        rows are replaced (another object) builds its own on first use.
    """

    data: pd.DataFrame | OverlaidFrame
    hour_of_week: np.ndarray | LazyRows
    spec: FeatureSpec
    summary: dict[str, int] = field(default_factory=dict)
    links: pd.Series | Path | Callable[[], pd.Series] | None = None
    id_index: tuple[pd.DataFrame | OverlaidFrame, IdIndex] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def frame(self) -> pd.DataFrame:
        """Every row, indexed by ``profile_id`` (built on first use when a refresh merged rows
        over the mapped table: a caller that needs a few rows uses :meth:`take`)."""
        data = self.data
        return data.frame() if isinstance(data, OverlaidFrame) else data

    def take(self, positions: np.ndarray) -> pd.DataFrame:
        """The rows at ``positions`` (``frame.iloc[positions]``, without building the frame)."""
        data = self.data
        return data.take(positions) if isinstance(data, OverlaidFrame) else data.iloc[positions]

    @property
    def columns(self) -> pd.Index:
        return self.data.columns

    @property
    def ids(self) -> IdIndex:
        """The rows' id index (:mod:`dmp_ml.id_index`): mapped from the bundle, or built from
        the ids on first use (a bundle written before id indexes, a table built in memory), so
        that every id lookup is a binary search and not a hash table over the population."""
        if self.id_index is None or self.id_index[0] is not self.data:
            object.__setattr__(self, "id_index", (self.data, IdIndex.build(self.profile_ids)))
        assert self.id_index is not None
        return self.id_index[1]

    def with_ids(self, ids: IdIndex) -> FeatureTable:
        """This table with ``ids`` as its rows' id index (one a merge or a read found)."""
        return replace(self, id_index=(self.data, ids))

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """The row of each of ``ids`` (-1 for an unknown one), by binary search."""
        return self.ids.rows(ids)

    @property
    def cookie_map(self) -> pd.Series | None:
        """``cookie_id -> profile_id`` (read from the bundle's file, and the deltas' links
        merged in, on first use), or None."""
        object.__setattr__(self, "links", resolve_links(self.links))
        return self.links  # type: ignore[return-value]

    @property
    def profile_ids(self) -> pd.Index:
        """The rows' ids, in row order (without building the frame)."""
        return self.data.index

    def __len__(self) -> int:
        return len(self.data)

    def select(self, ids: Iterable[str]) -> FeatureTable:
        """The rows of ``ids`` that are known, in the order given (unknown ids are skipped).

        Raises UnknownProfileError when none is known.
        """
        wanted = pd.unique(pd.array([str(i) for i in ids], dtype="string"))
        pos = self.rows(wanted)
        pos = pos[pos >= 0]
        if len(pos) == 0:
            raise UnknownProfileError("none of the requested profile ids has features")
        return replace(self, data=self.take(pos), hour_of_week=self.hour_of_week[pos])

    # -- persistence ---------------------------------------------------------------------
    def to_parquet(self, path: str | Path) -> Path:
        """One Parquet file: the frame, ``hour_of_week_000..167`` columns, spec and summary."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _arrow_table(self.frame, np.asarray(self.hour_of_week))
        meta = json.dumps({"spec": self.spec.to_dict(), "summary": self.summary}).encode()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: meta})
        # dictionary pages for the text columns only: float features written plain take about
        # half the time (the file reads back the same)
        text = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
        pq.write_table(table, path, use_dictionary=text)
        return path

    @classmethod
    def read_parquet(cls, path: str | Path) -> FeatureTable:
        """Read a file written by :meth:`to_parquet`."""
        path = Path(path)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataContractError(f"{path}: not a readable feature table ({exc})") from exc
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise DataContractError(f"{path}: not a dmp-ml feature table (no spec)")
        meta = json.loads(raw)
        spec = FeatureSpec.from_dict(meta["spec"])
        frame = table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
        frame.index = pd.Index(frame.index.astype("string"), name="profile_id")
        how_cols = [c for c in frame.columns if str(c).startswith(HOW_PREFIX)]
        how = frame[how_cols].to_numpy(dtype=np.float64)
        frame = frame[list(spec.columns)]
        return cls(data=frame, hour_of_week=how, spec=spec, summary=dict(meta["summary"]))

    def write(self, directory: str | Path) -> Path:
        """A directory the serving workers map (see :mod:`dmp_ml.mapped`): ``features.npy``
        (the float features), ``features.parquet`` (the profile ids and the other columns),
        ``ids.npy`` (the id index, :mod:`dmp_ml.id_index`), ``hour_of_week.npy``,
        ``table.json`` (spec and summary), ``cookie_map.parquet`` and its sorted keys
        (:func:`dmp_ml.links.write_link_index`)."""
        directory = Path(directory)
        write_frame(directory, "features", self.frame)
        self.ids.write(directory)
        meta = {"spec": self.spec.to_dict(), "summary": self.summary}
        (directory / TABLE_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if not _mapped_from(self.hour_of_week, directory / HOW_FILE):  # else written already
            write_array(directory / HOW_FILE, np.asarray(self.hour_of_week, dtype=np.float64))
        if self.cookie_map is not None:
            self.cookie_map.reset_index().to_parquet(directory / LINKS_FILE, index=False)
            write_link_index(self.cookie_map, directory)
        return directory

    def hour_of_week_written(self, directory: str | Path) -> FeatureTable:
        """This table with its hour-of-week counts written into ``directory`` as :meth:`write`
        writes them, and mapped from there (:meth:`write` then leaves the file as it is).

        A train's later steps never read the counts, only save them: mapped and untouched,
        they hold no memory (an (n, 168) float64 matrix: 1.3 GB at a million profiles).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = write_array(directory / HOW_FILE, np.asarray(self.hour_of_week, dtype=np.float64))
        return replace(self, hour_of_week=map_array(path))

    @classmethod
    def read(cls, directory: str | Path) -> FeatureTable:
        """Read a directory written by :meth:`write`; the float features and the hour-of-week
        counts stay mapped (copy-on-write), so only the ids and the categories are private."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / TABLE_FILE).read_text(encoding="utf-8"))
            frame = map_frame(directory, "features")
            how = map_array(directory / HOW_FILE)
        except (OSError, ValueError, KeyError, pa.ArrowInvalid) as exc:
            raise DataContractError(f"{directory}: not a readable feature table ({exc})") from exc
        spec = FeatureSpec.from_dict(meta["spec"])
        frame.index = pd.Index(frame.index.astype("string"), name="profile_id")
        if list(frame.columns) != list(spec.columns) or how.shape != (len(frame), HOURS_PER_WEEK):
            raise DataContractError(f"{directory}: the feature files do not match their spec")
        table = cls(data=frame, hour_of_week=how, spec=spec, summary=dict(meta["summary"]))
        try:
            ids = IdIndex.read(directory)
        except (OSError, ValueError) as exc:
            raise DataContractError(f"{directory}: not a readable id index ({exc})") from exc
        if ids is not None:
            if len(ids) != len(frame):
                raise DataContractError(f"{directory}: the id index does not match the table")
            table = table.with_ids(ids)
        cookies = directory / LINKS_FILE
        return replace(table, links=cookies) if cookies.exists() else table
