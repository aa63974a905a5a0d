"""The data contract: load events, profiles and consent, validate them, quarantine bad rows.

Nothing is silently lost: for every load, ``rows_read == rows_loaded + rows_quarantined``.
Each quarantined row keeps its original values (as text), its 1-based ``row_number`` in the
file, and a ``reason``. Exact duplicate events are collapsed: the extra copies are quarantined
with reason ``duplicate_event``.

Times are read the way the mapping states (``time_format``, ``dayfirst``, ``time_unit``,
``timezone``); without a statement, a column of numeric dates that reads both day-first and
month-first (``01/12/2010``) is refused, never read one way for some rows and the other way for
others. An event later than now plus ``contract.future_tolerance_minutes`` is quarantined
(``future_time``), so no event moves the feature clock past the wall clock (:func:`data_end`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dmp_ml import _readers, identity, rows
from dmp_ml.codes import FrameCodes, held_as_dictionary
from dmp_ml.errors import DataContractError
from dmp_ml.mapping import ColumnMapping, load_mapping
from dmp_ml.settings import ContractSettings
from dmp_ml.time_columns import LATEST_TIME, parse_times
from dmp_ml.times import utc

logger = logging.getLogger(__name__)

EVENT_COLUMNS = [
    "event_time",
    "cookie_id",
    "profile_id",
    "event_type",
    "channel",
    "source",
    "campaign_id",
    "category",
    "value",
]
REQUIRED_EVENT_COLUMNS = ["event_time", "event_type"]
SOURCES = ("first_party", "second_party", "third_party")
WELL_KNOWN_EVENT_TYPES = (
    "page_view",
    "product_view",
    "add_to_cart",
    "purchase",
    "email_send",
    "email_open",
    "email_click",
    "ad_impression",
    "ad_click",
)
CONSENT_COLUMNS = ["profile_id", "cookie_id", "purpose", "granted", "updated_at"]

_TRUE = {"true", "1", "yes", "y", "t", "granted", "opt_in", "opt-in"}
_FALSE = {"false", "0", "no", "n", "f", "withdrawn", "denied", "opt_out", "opt-out"}


@dataclass(frozen=True)
class LoadReport:
    """What a load did: counts that always add up, and the reasons rows were quarantined."""

    path: str
    kind: str
    rows_read: int
    rows_loaded: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    warnings: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "rows_read": self.rows_read,
            "rows_loaded": self.rows_loaded,
            "rows_quarantined": self.rows_quarantined,
            "quarantined_by_reason": dict(self.quarantined_by_reason),
            "warnings": dict(self.warnings),
        }


@dataclass(frozen=True)
class LoadResult:
    """A validated frame, the quarantined rows with their reasons, and the report."""

    frame: pd.DataFrame
    quarantine: pd.DataFrame
    report: LoadReport
    encoded: dict[str, tuple[np.ndarray, pa.Array]] = field(default_factory=dict, repr=False)
    """Events: the id columns' dictionary codes (and those of the columns kept as dictionaries,
    see ``load_events(dictionaries=True)``), row for row with ``frame`` (see
    :func:`dmp_ml.identity.encode`), computed once for the duplicate check and handed on to
    :func:`dmp_ml.features.build_features` (``encoded=``); empty when not computed."""

    def write_quarantine(self, path: str | Path) -> Path:
        """Write the quarantined rows (all text columns plus ``reason``) to Parquet."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.quarantine.to_parquet(path, index=False)
        return path


# --------------------------------------------------------------------------- public loaders


def load_events(
    path: str | Path,
    mapping: ColumnMapping | str | Path | None = None,
    settings: ContractSettings | None = None,
    now: pd.Timestamp | None = None,
    *,
    dictionaries: bool = False,
) -> LoadResult:
    """Load an event log (CSV or Parquet) into the canonical event frame.

    Parameters
    ----------
    path : path of the file.
    mapping : a :class:`ColumnMapping`, the path of a mapping YAML file or the name of a packaged
        mapping (``online_retail``); None for a file that already uses the contract's column names.
    settings : batch size, field and value limits, the future tolerance.
    now : the wall clock events may not pass (plus the tolerance); default the current time.
    dictionaries : keep the text columns a Parquet file stores as dictionaries in that form
        (``pd.ArrowDtype`` dictionary columns, cleaned on their distinct values) instead of
        decoding one string per row; for :func:`dmp_ml.features.build_features`, which reads
        them as codes (``LoadResult.encoded``). The rows, values and quarantine are the same.
        (:func:`held_text` then holds every text column as one compact dictionary.)

    Returns
    -------
    LoadResult
        ``frame`` has the columns :data:`EVENT_COLUMNS` (UTC ``event_time``), sorted by time.
    """
    return _load(
        path,
        "events",
        _validate_events,
        mapping,
        settings,
        dedupe=True,
        now=now,
        dictionaries=dictionaries,
    )


def load_profiles(
    path: str | Path,
    mapping: ColumnMapping | str | Path | None = None,
    settings: ContractSettings | None = None,
    now: pd.Timestamp | None = None,
) -> LoadResult:
    """Load a profiles table: ``profile_id`` plus attributes, optional ``timezone``, ``email``."""
    return _load(path, "profiles", _validate_profiles, mapping, settings, dedupe=False, now=now)


def load_consent(
    path: str | Path,
    mapping: ColumnMapping | str | Path | None = None,
    settings: ContractSettings | None = None,
    now: pd.Timestamp | None = None,
) -> LoadResult:
    """Load consent records: ``profile_id`` or ``cookie_id``, purpose, granted, updated_at."""
    return _load(path, "consent", _validate_consent, mapping, settings, dedupe=False, now=now)


# --------------------------------------------------------------------------- machinery


@dataclass
class _Context:
    """What one load's validators need; ``day_first`` remembers a column's day order."""

    kind: str
    mapping: ColumnMapping
    settings: ContractSettings
    now: pd.Timestamp
    warnings: dict[str, int] = field(default_factory=dict)
    day_first: dict[str, bool] = field(default_factory=dict)
    dictionaries: bool = False

    @property
    def latest_event(self) -> pd.Timestamp:
        """The latest event time accepted: now plus the configured tolerance."""
        tolerance = pd.Timedelta(minutes=self.settings.future_tolerance_minutes)
        return min(self.now + tolerance, LATEST_TIME)


_Validator = Callable[[pd.DataFrame, _Context, pd.Series], pd.DataFrame]


def _load(
    path: str | Path,
    kind: str,
    validate: _Validator,
    mapping: ColumnMapping | str | Path | None,
    settings: ContractSettings | None,
    dedupe: bool,
    now: pd.Timestamp | None,
    dictionaries: bool = False,
) -> LoadResult:
    settings = settings or ContractSettings()
    if mapping is None:
        mapping = ColumnMapping()
    elif not isinstance(mapping, ColumnMapping):
        mapping = load_mapping(mapping)
    ctx = _Context(kind, mapping, settings, _utc_now(now), dictionaries=dictionaries)
    good: list[pd.DataFrame] = []
    bad: list[pd.DataFrame] = []
    shapes: set[tuple[Any, ...]] = set()  # the columns of batches with no bad row, once each
    rows_read = 0
    codes: FrameCodes | None = None
    batches = _readers.iter_batches(path, settings.chunk_rows, settings.max_field_bytes)
    coding: list[Future[None]] = []
    # each batch is coded in a thread of its own, in order, while the next is read and validated
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmp-ml-coder") as coder:
        for raw in batches:
            rows_read += len(raw)
            reason = rows.missing_text(raw.index)
            for flag, label in _readers.FLAG_REASONS:
                if flag in raw.columns:
                    reason = _mark(reason, raw[flag].to_numpy(bool), label)
            source = raw.drop(columns=[*_readers.FLAGS, _readers.RAW_TEXT], errors="ignore")
            if ctx.mapping.rewrites:  # its rules read the text as a plain read gives it
                source = _readers.plain_text(source)
            mapped, dropped = ctx.mapping.apply(source)
            if not dropped.isna().all():
                reason = reason.fillna(dropped)
            valid = validate(mapped, ctx, reason)
            reason = valid.pop("_reason")
            keep = reason.isna().to_numpy(bool)
            good.append(valid if keep.all() else rows.keep_rows(valid, keep))
            if dedupe and codes is None:  # dictionary text coded batch by batch, plain text after
                dicts = {c for c in valid.columns if _is_text_dictionary(valid[c].dtype)}
                coded = [
                    c
                    for c in valid.columns
                    if c in identity.ID_COLUMNS or dictionaries and c in dicts
                ]
                codes = FrameCodes([c for c in coded if c in dicts])
            if codes is not None:
                coding.append(coder.submit(codes.add, good[-1]))
            # selected, not sliced: a slice of the raw batch would keep all of its text alive
            if keep.all():  # the usual batch: nothing to select, only the quarantine's columns
                if tuple(raw.columns) not in shapes:
                    bad.append(_no_quarantine(raw.columns))
                    shapes.add(tuple(raw.columns))
            else:
                bad.append(_quarantine_rows(raw.loc[~keep], reason.loc[~keep]))
    for job in coding:
        job.result()  # a batch that failed to code fails the load
    frame = _concat(good) if good else pd.DataFrame()
    quarantine = _concat(bad)
    encoded: dict[str, tuple[np.ndarray, pa.Array]] = {}
    if codes is not None and len(frame):
        batchwise = codes.codes()
        plain = identity.encode_many(frame, [c for c in coded if c not in batchwise])
        encoded, codes = {c: batchwise.get(c) or plain[c] for c in coded}, None
        if not dictionaries:
            frame = _decode_ids(frame)
        frame, dupes, encoded = _collapse_duplicates(frame, encoded)
        if len(dupes):
            quarantine = pd.concat([quarantine, dupes], ignore_index=True)
    frame = frame.drop(columns=["_row_number"], errors="ignore")
    if not dictionaries:
        frame = _decode_ids(frame)
    if kind == "events" and not frame["event_time"].is_monotonic_increasing:
        frame = frame.sort_values("event_time", kind="stable", ignore_index=True)
        encoded = {}  # codes follow first appearance, which sorting changes
    if kind == "events" and (clock := one_time_of_day(frame["event_time"])) is not None:
        ctx.warnings["every_event_at_one_time_of_day"] = len(frame)
        logger.warning(
            "events: all %d events are at %s UTC: the log holds dates, not times, so the "
            "hour-of-week features and send-time curves cannot tell when profiles engage",
            len(frame),
            clock,
        )
    by_reason = (
        quarantine["reason"].value_counts().sort_index().to_dict() if len(quarantine) else {}
    )
    report = LoadReport(
        path=str(path),
        kind=kind,
        rows_read=rows_read,
        rows_loaded=len(frame),
        rows_quarantined=len(quarantine),
        quarantined_by_reason={str(k): int(v) for k, v in by_reason.items()},
        warnings=ctx.warnings,
    )
    if report.rows_read != report.rows_loaded + report.rows_quarantined:
        raise AssertionError(
            "row accounting broken: read != loaded + quarantined"
        )  # pragma: no cover
    logger.info(
        "loaded %s from %s: %d read, %d loaded, %d quarantined",
        kind,
        path,
        report.rows_read,
        report.rows_loaded,
        report.rows_quarantined,
    )
    return LoadResult(frame=frame, quarantine=quarantine, report=report, encoded=encoded)


def _utc_now(now: pd.Timestamp | str | None) -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC") if now is None else utc(now, "now")


def _quarantine_rows(raw: pd.DataFrame, reason: pd.Series) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    for column in raw.columns:
        if column in (*_readers.FLAGS, _readers.ROW_NUMBER):
            continue
        out[str(column)] = _as_text(raw[column])
    out["row_number"] = raw[_readers.ROW_NUMBER].astype("int64")
    out["reason"] = reason.astype("string")
    return out.reset_index(drop=True)


def _no_quarantine(columns: pd.Index) -> pd.DataFrame:
    """What :func:`_quarantine_rows` gives for no rows, without selecting from the batch."""
    text = [str(c) for c in columns if c not in (*_readers.FLAGS, _readers.ROW_NUMBER)]
    out = pd.DataFrame({c: pd.Series([], dtype="string") for c in text})
    out["row_number"] = pd.Series([], dtype="int64")
    out["reason"] = pd.Series([], dtype="string")
    return out


def _as_text(col: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.strftime("%Y-%m-%dT%H:%M:%S%z").astype("string")
    if _is_text_dictionary(col.dtype):  # the rows' values only, not the whole dictionary
        text = pa.chunked_array(col.array.__arrow_array__()).cast(pa.string())
        return pd.Series(pd.array(text, dtype="string"), index=col.index, name=col.name)
    return col.astype("string")


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One frame from the batches' frames (no copy when there is one batch)."""
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)


def _collapse_duplicates(
    frame: pd.DataFrame, encoded: dict[str, tuple[np.ndarray, pa.Array]]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[np.ndarray, pa.Array]]]:
    """Quarantine the later copies of rows equal in every column (the first copy is kept);
    returns the kept rows, the quarantined copies and the kept rows' codes (``encoded``)."""
    row_numbers = frame.pop("_row_number")
    duplicated = rows.duplicated_rows(frame, {c: codes for c, (codes, _) in encoded.items()})
    if not duplicated.any():
        return frame, frame.iloc[:0], encoded
    kept = ~duplicated
    with ThreadPoolExecutor(max_workers=1) as helper:  # the codes beside the columns
        # the first copy of a row is kept, so every value keeps its first appearance: the
        # kept codes are what encoding the kept rows would give
        kept_codes = helper.submit(
            lambda: {c: (codes[kept], values) for c, (codes, values) in encoded.items()}
        )
        at = np.flatnonzero(duplicated)
        dupes = rows.take_rows(frame, at)
        for column in dupes.columns:
            dupes[column] = _as_text(dupes[column])
        dupes["row_number"] = row_numbers.to_numpy(np.int64)[at]
        dupes["reason"] = pd.Series("duplicate_event", index=dupes.index, dtype="string")
        return rows.keep_rows(frame, kept), dupes, kept_codes.result()


def _require(frame: pd.DataFrame, kind: str, required: list[str], expected: list[str]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = sorted(str(c) for c in frame.columns if not str(c).startswith("_"))
        raise DataContractError(
            f"{kind}: missing required column(s) {missing}; expected {expected}, found {found}"
        )


def _text(
    frame: pd.DataFrame, column: str, lower: bool = False, dictionary: bool = False
) -> pd.Series:
    """A column as stripped text with empty strings as NA (absent column: all NA); ``lower``:
    in lower case.

    Worked in Arrow (``pandas``' string methods convert to and from it on every call); a
    dictionary column (Parquet text) on its distinct values, then decoded once, or kept a
    dictionary (``dictionary``: its codes serve the id encoding, see :func:`_decode_ids`).
    """
    if column not in frame.columns:
        return rows.missing_text(frame.index)
    values = frame[column].array
    if isinstance(values, pd.arrays.ArrowStringArray):
        text = _clean(identity.arrow_strings(frame[column]), lower)
    elif _is_text_dictionary(frame[column].dtype):
        chunks = values.__arrow_array__().chunks
        if dictionary:
            kind = frame[column].dtype.pyarrow_dtype
            kept = pa.chunked_array([_clean_dictionary(c, lower) for c in chunks], type=kind)
            return pd.Series(pd.arrays.ArrowExtensionArray(kept), index=frame.index)
        text = _decoded(chunks, lambda values: _clean(values, lower))
    else:  # numbers, objects, ...
        col = frame[column].astype("string").str.strip()
        empty = (col == "").to_numpy(bool, na_value=False)
        col = col.mask(empty) if empty.any() else col
        return col.str.lower() if lower else col
    return pd.Series(pd.arrays.ArrowStringArray(text), index=frame.index, dtype="string")


def held_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (changed in place) with each text column held as one dictionary with the
    narrowest indices (:func:`dmp_ml.codes.held_as_dictionary`), whether it was read as
    dictionaries (a Parquet file's) or as one string a row (a CSV file's): about a quarter of
    the memory, for a log kept through a whole ``train``. Rows and values are unchanged."""
    for column in frame.columns:
        values = frame[column].array
        if isinstance(values, pd.arrays.ArrowStringArray) or _is_text_dictionary(values.dtype):
            held = held_as_dictionary(values.__arrow_array__())
            frame[column] = pd.Series(pd.arrays.ArrowExtensionArray(held), index=frame.index)
    return frame


def _is_text_dictionary(dtype: Any) -> bool:
    return rows.is_dictionary(dtype) and pa.types.is_string(dtype.pyarrow_dtype.value_type)


def _clean_dictionary(codes: pa.DictionaryArray, lower: bool) -> pa.DictionaryArray:
    """A dictionary array with its values cleaned (:func:`_clean`); a value that becomes
    missing makes its rows' codes null, so that the rows read as missing. The dictionary
    itself holds no null (its unused entry is left empty): Arrow cannot join dictionaries
    with nulls when a column's chunks are combined."""
    values = _clean(codes.dictionary, lower)
    if not values.null_count and values.equals(codes.dictionary):
        return codes  # already clean (the usual case): the codes are not validated again
    indices = codes.indices
    if values.null_count:
        missing = pc.take(pc.is_null(values), indices)
        indices = pc.if_else(missing, pa.scalar(None, indices.type), indices)
        values = pc.fill_null(values, "")
    return pa.DictionaryArray.from_arrays(indices, values)


def _decoded(
    chunks: list[pa.DictionaryArray], clean: Callable[[pa.Array], pa.Array]
) -> pa.ChunkedArray:
    """Dictionary chunks decoded to text, each dictionary's values passed through ``clean``
    first; as ``large_string``, the type pandas keeps its text in (no copy on the way in)."""
    return pa.chunked_array(
        [pc.take(clean(c.dictionary.cast(pa.large_string())), c.indices) for c in chunks],
        type=pa.large_string(),
    )


def _filled(col: pd.Series, value: str) -> pd.Series:
    """``col.fillna(value)``; a dictionary column is filled on its codes (nothing decoded)."""
    if not _is_text_dictionary(col.dtype):
        return col.fillna(value)
    whole = col.array.__arrow_array__()
    chunks = [_fill_dictionary(c, value) for c in whole.chunks]
    filled = pa.chunked_array(chunks, type=whole.type)
    return pd.Series(pd.arrays.ArrowExtensionArray(filled), index=col.index)


def _isin(col: pd.Series, values: tuple[str, ...]) -> np.ndarray:
    """``col.isin(values)`` as an array; a dictionary column is checked on its values."""
    if not _is_text_dictionary(col.dtype):
        return col.isin(values).to_numpy(bool)
    value_set = pa.array(values, type=pa.string())
    found = [
        pc.take(pc.is_in(c.dictionary, value_set=value_set), c.indices)
        for c in col.array.__arrow_array__().chunks
    ]
    hit = [pc.fill_null(f, False).to_numpy(zero_copy_only=False) for f in found]
    return np.concatenate(hit) if hit else np.zeros(0, dtype=bool)


def _fill_dictionary(codes: pa.DictionaryArray, value: str) -> pa.DictionaryArray:
    """The missing rows of ``codes`` pointed at ``value`` (added to the dictionary if absent)."""
    if not codes.null_count:
        return codes
    values = codes.dictionary
    at = pc.index(values, value).as_py()
    if at < 0:
        at = len(values)
        values = pa.concat_arrays([values, pa.array([value], type=values.type)])
    indices = pc.fill_null(codes.indices, pa.scalar(at, codes.indices.type))
    return pa.DictionaryArray.from_arrays(indices, values)


def _decode_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the id columns the validator kept as dictionaries decoded to text."""
    for column in identity.ID_COLUMNS:
        if column in frame.columns and _is_text_dictionary(frame[column].dtype):
            chunks = frame[column].array.__arrow_array__().chunks
            text = _decoded(chunks, lambda values: values)
            frame[column] = pd.Series(
                pd.arrays.ArrowStringArray(text), index=frame.index, dtype="string"
            )
    return frame


def _clean(text: pa.Array | pa.ChunkedArray, lower: bool) -> pa.Array | pa.ChunkedArray:
    """Trimmed text, empty strings as nulls, in lower case when asked."""
    text = pc.utf8_trim_whitespace(text)
    empty = pc.equal(text, "")
    if pc.any(empty).as_py():
        text = pc.if_else(empty, pa.scalar(None, text.type), text)
    return pc.utf8_lower(text) if lower else text


# --------------------------------------------------------------------------- times


ONE_TIME_OF_DAY_ROWS = 100
"""Events from which a log whose times all share one time of day is taken for a log of dates."""


def one_time_of_day(times: pd.Series) -> str | None:
    """The one time of day (``HH:MM`` UTC) every one of at least :data:`ONE_TIME_OF_DAY_ROWS`
    event times falls at, e.g. midnight in a log of dates; None when they differ (the first
    thousand tell, almost always)."""
    if len(times) < ONE_TIME_OF_DAY_ROWS:
        return None
    ticks = times.array.asi8
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[times.array.unit]
    day = 86_400 * per_second
    first = ticks[0] % day
    if ((ticks[:1000] % day) != first).any() or ((ticks % day) != first).any():
        return None
    seconds = int(first) // per_second
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def data_end(events: pd.DataFrame, limit: pd.Timestamp | None = None) -> pd.Timestamp:
    """The UTC midnight after the last event: the cutoff ``train(as_of="end")`` and a refresh use.

    Events at or after ``limit`` (default :func:`clock_limit` of the current time) are left out,
    so an event that did not go through the loader (a frame handed to ``train``, a batch stored
    by an older version) cannot move the feature clock into the future either; the result is
    never later than ``limit``. Raises DataContractError when no event is before it.
    """
    if events.empty:
        raise DataContractError("no events loaded: nothing to train on")
    limit = clock_limit() if limit is None else limit
    times = events["event_time"]
    last = times[times < limit].max()
    if pd.isna(last):
        raise DataContractError(f"every event is later than the wall clock allows ({limit})")
    return min(last.floor("D") + pd.Timedelta(days=1), limit)


def clock_limit(
    settings: ContractSettings | None = None, now: pd.Timestamp | None = None
) -> pd.Timestamp:
    """The latest feature clock events can set: the UTC midnight after now plus the tolerance.

    The loader accepts no event later than now plus ``future_tolerance_minutes``, and the
    clock is the midnight after the last event.
    """
    settings = settings or ContractSettings()
    tolerance = pd.Timedelta(minutes=settings.future_tolerance_minutes)
    return min(_utc_now(now) + tolerance, LATEST_TIME).floor("D") + pd.Timedelta(days=1)


# --------------------------------------------------------------------------- validators


def _numbers(frame: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """Numeric column and a mask of values that were present but not numbers."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index), pd.Series(False, index=frame.index)
    col = frame[column]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype("float64"), pd.Series(False, index=frame.index)
    text = _text(frame, column)
    at, distinct = identity.encode(text, len(text))  # parsed once per distinct value
    parsed = pd.to_numeric(pd.Series(pd.arrays.ArrowStringArray(distinct)), errors="coerce")
    table = np.append(parsed.to_numpy(np.float64, na_value=np.nan), np.nan)  # -1: missing
    numbers = pd.Series(table[at], index=frame.index)
    return numbers, text.notna() & numbers.isna()


def _mark(reason: pd.Series, mask: pd.Series | np.ndarray, label: str) -> pd.Series:
    if isinstance(mask, pd.Series):
        mask = mask.fillna(False).to_numpy(bool)
    if not mask.any():
        return reason
    return reason.mask(reason.isna().to_numpy(bool) & mask, label)


def _mark_times(reason: pd.Series, problem: pd.Series, column: str) -> pd.Series:
    """Reasons of a time column: ``invalid_<column>``, ``<column>_out_of_range``, ..."""
    labels = {
        "invalid": f"invalid_{column}",
        "out_of_range": f"{column}_out_of_range",
        "future": "future_time" if column == "event_time" else f"{column}_out_of_range",
        "needs_time_unit": f"{column}_needs_time_unit",
    }
    if problem.isna().all():
        return reason
    for key, label in labels.items():
        reason = _mark(reason, (problem == key).fillna(False).to_numpy(bool), label)
    return reason


def _validate_events(frame: pd.DataFrame, ctx: _Context, reason: pd.Series) -> pd.DataFrame:
    _require(frame, "events", REQUIRED_EVENT_COLUMNS, EVENT_COLUMNS)
    if "cookie_id" not in frame.columns and "profile_id" not in frame.columns:
        found = sorted(str(c) for c in frame.columns if not str(c).startswith("_"))
        raise DataContractError(
            f"events: need cookie_id or profile_id (or both); expected {EVENT_COLUMNS}, "
            f"found {found}"
        )
    out = pd.DataFrame(index=frame.index)
    out["event_time"], time_problem = parse_times(
        frame["event_time"], ctx.mapping, "event_time", ctx.latest_event, ctx.day_first
    )
    for column in identity.ID_COLUMNS:  # dictionaries, if read so: encoded on their values
        out[column] = _text(frame, column, dictionary=True)
    keep = ctx.dictionaries
    for column in ("event_type", "channel", "campaign_id", "category"):
        out[column] = _text(frame, column, dictionary=keep)
    out["source"] = _filled(_text(frame, "source", lower=True, dictionary=keep), "first_party")
    value, bad_value = _numbers(frame, "value")
    present = value.notna().to_numpy(bool)
    infinite = present & ~np.isfinite(value.to_numpy(np.float64, na_value=np.nan))
    huge = present & ~infinite & (value.abs() > ctx.settings.max_abs_value).to_numpy(bool)
    out["value"] = value.mask(infinite | huge)
    out = out[EVENT_COLUMNS]
    reason = _mark_times(reason, time_problem, "event_time")
    reason = _mark(reason, out["cookie_id"].isna() & out["profile_id"].isna(), "missing_id")
    reason = _mark(reason, out["event_type"].isna(), "missing_event_type")
    reason = _mark(reason, ~_isin(out["source"], SOURCES), "unknown_source")
    reason = _mark(reason, bad_value, "non_numeric_value")
    reason = _mark(reason, infinite, "non_finite_value")
    reason = _mark(reason, huge, "value_out_of_range")
    out["_row_number"] = frame[_readers.ROW_NUMBER].to_numpy()
    out["_reason"] = reason
    return out


def _validate_profiles(frame: pd.DataFrame, ctx: _Context, reason: pd.Series) -> pd.DataFrame:
    _require(frame, "profiles", ["profile_id"], ["profile_id", "timezone", "email", "..."])
    out = pd.DataFrame(index=frame.index)
    out["profile_id"] = _text(frame, "profile_id")
    for column in frame.columns:
        name = str(column)
        if name == "profile_id" or name.startswith("_"):
            continue
        if name in ("timezone", "email"):
            out[name] = _text(frame, name)
            continue
        numbers, not_numbers = _numbers(frame, name)
        if pd.api.types.is_numeric_dtype(frame[column]) or not not_numbers.any():
            finite = np.isfinite(numbers.to_numpy(np.float64, na_value=np.nan))
            unusable = numbers.notna().to_numpy(bool) & ~finite
            if unusable.any():
                ctx.warnings[f"non_finite_{name}_set_to_missing"] = int(unusable.sum())
            out[name] = numbers.mask(unusable)
        else:
            out[name] = _text(frame, name)
    if "timezone" in out.columns:
        zones = available_timezones() | {"UTC"}
        invalid = out["timezone"].notna() & ~out["timezone"].isin(sorted(zones))
        if invalid.any():
            ctx.warnings["invalid_timezone_set_to_unknown"] = int(invalid.sum())
            out["timezone"] = out["timezone"].mask(invalid)
    reason = _mark(reason, out["profile_id"].isna(), "missing_profile_id")
    repeated = out["profile_id"].notna() & out["profile_id"].duplicated(keep="first")
    reason = _mark(reason, repeated, "duplicate_profile_id")
    out["_reason"] = reason
    return out


def _validate_consent(frame: pd.DataFrame, ctx: _Context, reason: pd.Series) -> pd.DataFrame:
    _require(frame, "consent", ["purpose", "granted", "updated_at"], CONSENT_COLUMNS)
    out = pd.DataFrame(index=frame.index)
    out["profile_id"] = _text(frame, "profile_id")
    out["cookie_id"] = _text(frame, "cookie_id")
    out["purpose"] = _text(frame, "purpose", lower=True)
    granted = frame["granted"]
    if pd.api.types.is_bool_dtype(granted):
        out["granted"] = granted.astype("boolean")
    else:
        text = granted.astype("string").str.strip().str.lower()
        out["granted"] = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        out.loc[text.isin(sorted(_TRUE)), "granted"] = True
        out.loc[text.isin(sorted(_FALSE)), "granted"] = False
    # a consent record dated in the future is kept: a withdrawal must never be dropped
    out["updated_at"], time_problem = parse_times(
        frame["updated_at"], ctx.mapping, "updated_at", LATEST_TIME, ctx.day_first
    )
    reason = _mark(reason, out["profile_id"].isna() & out["cookie_id"].isna(), "missing_id")
    reason = _mark(reason, out["purpose"].isna(), "missing_purpose")
    reason = _mark(reason, out["granted"].isna(), "invalid_granted")
    reason = _mark_times(reason, time_problem, "updated_at")
    out["granted"] = out["granted"].fillna(False).astype(bool)
    out["_reason"] = reason
    return out
