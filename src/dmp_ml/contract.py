"""The data contract: load events, profiles and consent, validate them, quarantine bad rows.

Nothing is silently lost: for every load, ``rows_read == rows_loaded + rows_quarantined``.
Each quarantined row keeps its original values (as text), its 1-based ``row_number`` in the
file, and a ``reason``. Exact duplicate events are collapsed: the extra copies are quarantined
with reason ``duplicate_event``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import numpy as np
import pandas as pd

from dmp_ml import _readers
from dmp_ml.errors import DataContractError
from dmp_ml.mapping import ColumnMapping, load_mapping
from dmp_ml.settings import ContractSettings

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

_OFFSET = re.compile(r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
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
) -> LoadResult:
    """Load an event log (CSV or Parquet) into the canonical event frame.

    Parameters
    ----------
    path : path of the file.
    mapping : a :class:`ColumnMapping`, the path of a mapping YAML file or the name of a packaged
        mapping (``online_retail``); None for a file that already uses the contract's column names.
    settings : batch size for reading large files.

    Returns
    -------
    LoadResult
        ``frame`` has the columns :data:`EVENT_COLUMNS` (UTC ``event_time``), sorted by time.
    """
    return _load(path, "events", _validate_events, mapping, settings, dedupe=True)


def load_profiles(
    path: str | Path,
    mapping: ColumnMapping | str | Path | None = None,
    settings: ContractSettings | None = None,
) -> LoadResult:
    """Load a profiles table: ``profile_id`` plus attributes, optional ``timezone``, ``email``."""
    return _load(path, "profiles", _validate_profiles, mapping, settings, dedupe=False)


def load_consent(
    path: str | Path,
    mapping: ColumnMapping | str | Path | None = None,
    settings: ContractSettings | None = None,
) -> LoadResult:
    """Load consent records: ``profile_id`` or ``cookie_id``, purpose, granted, updated_at."""
    return _load(path, "consent", _validate_consent, mapping, settings, dedupe=False)


# --------------------------------------------------------------------------- machinery

_Validator = Callable[[pd.DataFrame, ColumnMapping, pd.Series, dict[str, int]], pd.DataFrame]


def _load(
    path: str | Path,
    kind: str,
    validate: _Validator,
    mapping: ColumnMapping | str | Path | None,
    settings: ContractSettings | None,
    dedupe: bool,
) -> LoadResult:
    settings = settings or ContractSettings()
    if mapping is None:
        mapping = ColumnMapping()
    elif not isinstance(mapping, ColumnMapping):
        mapping = load_mapping(mapping)
    good: list[pd.DataFrame] = []
    bad: list[pd.DataFrame] = []
    warnings: dict[str, int] = {}
    rows_read = 0
    for raw in _readers.iter_batches(path, settings.chunk_rows):
        rows_read += len(raw)
        reason = pd.Series(pd.NA, index=raw.index, dtype="string")
        if _readers.MALFORMED in raw.columns:
            reason = reason.mask(raw[_readers.MALFORMED], "malformed_row")
            reason = reason.mask(reason.isna() & raw[_readers.BAD_ENCODING], "invalid_encoding")
        source = raw.drop(
            columns=[_readers.MALFORMED, _readers.BAD_ENCODING, _readers.RAW_TEXT],
            errors="ignore",
        )
        mapped, dropped = mapping.apply(source)
        reason = reason.fillna(dropped)
        valid = validate(mapped, mapping, reason, warnings)
        reason = valid.pop("_reason")
        keep = reason.isna()
        good.append(valid.loc[keep])
        bad.append(_quarantine_rows(raw.loc[~keep], reason.loc[~keep]))
    frame = pd.concat(good, ignore_index=True) if good else pd.DataFrame()
    quarantine = pd.concat(bad, ignore_index=True)
    if dedupe and len(frame):
        frame, dupes = _collapse_duplicates(frame)
        if len(dupes):
            quarantine = pd.concat([quarantine, dupes], ignore_index=True)
    frame = frame.drop(columns=["_row_number"], errors="ignore")
    if kind == "events":
        frame = frame.sort_values("event_time", kind="stable", ignore_index=True)
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
        warnings=warnings,
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
    return LoadResult(frame=frame, quarantine=quarantine, report=report)


def _quarantine_rows(raw: pd.DataFrame, reason: pd.Series) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    for column in raw.columns:
        if column in (_readers.MALFORMED, _readers.BAD_ENCODING, _readers.ROW_NUMBER):
            continue
        out[str(column)] = _as_text(raw[column])
    out["row_number"] = raw[_readers.ROW_NUMBER].astype("int64")
    out["reason"] = reason.astype("string")
    return out.reset_index(drop=True)


def _as_text(col: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.strftime("%Y-%m-%dT%H:%M:%S%z").astype("string")
    return col.astype("string")


def _collapse_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    row_numbers = frame.pop("_row_number")
    duplicated = frame.duplicated(keep="first")
    dupes = frame.loc[duplicated].copy()
    for column in dupes.columns:
        dupes[column] = _as_text(dupes[column])
    dupes["row_number"] = row_numbers.loc[duplicated].astype("int64")
    dupes["reason"] = pd.Series("duplicate_event", index=dupes.index, dtype="string")
    return frame.loc[~duplicated].reset_index(drop=True), dupes.reset_index(drop=True)


def _require(frame: pd.DataFrame, kind: str, required: list[str], expected: list[str]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = sorted(str(c) for c in frame.columns if not str(c).startswith("_"))
        raise DataContractError(
            f"{kind}: missing required column(s) {missing}; expected {expected}, found {found}"
        )


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as stripped text with empty strings as NA (absent column: all NA)."""
    if column not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    col = frame[column].astype("string").str.strip()
    return col.mask(col == "")


def parse_times(values: pd.Series, timezone: str = "UTC") -> pd.Series:
    """Parse timestamps to UTC: offsets are honoured, naive values are local time in ``timezone``.

    Unparseable or non-existent local times become NaT.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.dt.tz is None:
            return _localize(values, timezone)
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(values):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    text = values.astype("string").str.strip()
    has_offset = text.str.contains(_OFFSET, na=False)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if has_offset.any():
        out[has_offset] = _to_datetime(text[has_offset], utc=True)
    naive = ~has_offset & text.notna()
    if naive.any():
        out[naive] = _localize(_to_datetime(text[naive], utc=False), timezone)
    return out


def _to_datetime(text: pd.Series, utc: bool) -> pd.Series:
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=utc)
    retry = parsed.isna() & text.notna()
    if retry.any():
        parsed = parsed.astype("datetime64[ns, UTC]" if utc else "datetime64[ns]")
        parsed[retry] = pd.to_datetime(text[retry], format="mixed", errors="coerce", utc=utc)
    return parsed


def _localize(values: pd.Series, timezone: str) -> pd.Series:
    values = values.astype("datetime64[ns]")
    if timezone == "UTC":
        return values.dt.tz_localize("UTC")
    local = values.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    return local.dt.tz_convert("UTC")


def _numbers(frame: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """Numeric column and a mask of values that were present but not numbers."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index), pd.Series(False, index=frame.index)
    col = frame[column]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype("float64"), pd.Series(False, index=frame.index)
    text = _text(frame, column)
    numbers = pd.to_numeric(text, errors="coerce").astype("float64")
    return numbers, text.notna() & numbers.isna()


def _mark(reason: pd.Series, mask: pd.Series, label: str) -> pd.Series:
    return reason.mask(reason.isna() & mask.fillna(False).astype(bool), label)


def _validate_events(
    frame: pd.DataFrame, mapping: ColumnMapping, reason: pd.Series, warnings: dict[str, int]
) -> pd.DataFrame:
    _require(frame, "events", REQUIRED_EVENT_COLUMNS, EVENT_COLUMNS)
    if "cookie_id" not in frame.columns and "profile_id" not in frame.columns:
        found = sorted(str(c) for c in frame.columns if not str(c).startswith("_"))
        raise DataContractError(
            f"events: need cookie_id or profile_id (or both); expected {EVENT_COLUMNS}, "
            f"found {found}"
        )
    out = pd.DataFrame(index=frame.index)
    out["event_time"] = parse_times(frame["event_time"], mapping.timezone)
    for column in ("cookie_id", "profile_id", "event_type", "channel", "source", "campaign_id"):
        out[column] = _text(frame, column)
    out["category"] = _text(frame, "category")
    out["source"] = out["source"].str.lower().fillna("first_party")
    out["value"], bad_value = _numbers(frame, "value")
    out = out[EVENT_COLUMNS]
    reason = _mark(reason, out["event_time"].isna(), "invalid_event_time")
    reason = _mark(reason, out["cookie_id"].isna() & out["profile_id"].isna(), "missing_id")
    reason = _mark(reason, out["event_type"].isna(), "missing_event_type")
    reason = _mark(reason, ~out["source"].isin(SOURCES), "unknown_source")
    reason = _mark(reason, bad_value, "non_numeric_value")
    out["_row_number"] = frame[_readers.ROW_NUMBER].to_numpy()
    out["_reason"] = reason
    return out


def _validate_profiles(
    frame: pd.DataFrame, mapping: ColumnMapping, reason: pd.Series, warnings: dict[str, int]
) -> pd.DataFrame:
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
            out[name] = numbers
        else:
            out[name] = _text(frame, name)
    if "timezone" in out.columns:
        zones = available_timezones() | {"UTC"}
        invalid = out["timezone"].notna() & ~out["timezone"].isin(sorted(zones))
        if invalid.any():
            warnings["invalid_timezone_set_to_unknown"] = int(invalid.sum())
            out["timezone"] = out["timezone"].mask(invalid)
    reason = _mark(reason, out["profile_id"].isna(), "missing_profile_id")
    repeated = out["profile_id"].notna() & out["profile_id"].duplicated(keep="first")
    reason = _mark(reason, repeated, "duplicate_profile_id")
    out["_reason"] = reason
    return out


def _validate_consent(
    frame: pd.DataFrame, mapping: ColumnMapping, reason: pd.Series, warnings: dict[str, int]
) -> pd.DataFrame:
    _require(frame, "consent", ["purpose", "granted", "updated_at"], CONSENT_COLUMNS)
    out = pd.DataFrame(index=frame.index)
    out["profile_id"] = _text(frame, "profile_id")
    out["cookie_id"] = _text(frame, "cookie_id")
    out["purpose"] = _text(frame, "purpose").str.lower()
    granted = frame["granted"]
    if pd.api.types.is_bool_dtype(granted):
        out["granted"] = granted.astype("boolean")
    else:
        text = granted.astype("string").str.strip().str.lower()
        out["granted"] = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        out.loc[text.isin(sorted(_TRUE)), "granted"] = True
        out.loc[text.isin(sorted(_FALSE)), "granted"] = False
    out["updated_at"] = parse_times(frame["updated_at"], mapping.timezone)
    reason = _mark(reason, out["profile_id"].isna() & out["cookie_id"].isna(), "missing_id")
    reason = _mark(reason, out["purpose"].isna(), "missing_purpose")
    reason = _mark(reason, out["granted"].isna(), "invalid_granted")
    reason = _mark(reason, out["updated_at"].isna(), "invalid_updated_at")
    out["granted"] = out["granted"].fillna(False).astype(bool)
    out["_reason"] = reason
    return out
