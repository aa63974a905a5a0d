"""Time columns as logs write them (ISO text, local dates in either day order, epoch numbers),
read to UTC the way the column mapping states, with the reason each value failed."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from dmp_ml import rows
from dmp_ml.errors import DataContractError
from dmp_ml.mapping import ColumnMapping

_OFFSET = re.compile(r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# day and month first, year last: 01/12/2010, 1.12.10, 01-12-2010 08:26
_NUMERIC_DATE = re.compile(r"^\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})(?:$|[ T])")
# a first number that can only be a day (13..31) before one that can be a month, and the reverse
_DAY_FIRST = re.compile(r"^(?:1[3-9]|2\d|3[01])[/.\-](?:0?[1-9]|1[0-2])[/.\-]")
_MONTH_FIRST = re.compile(r"^(?:0?[1-9]|1[0-2])[/.\-](?:1[3-9]|2\d|3[01])[/.\-]")
# nanosecond timestamps hold 1677-09-21 .. 2262-04-11; keep a day inside either end
EARLIEST_TIME = pd.Timestamp("1677-09-22", tz="UTC")
LATEST_TIME = pd.Timestamp("2262-04-10", tz="UTC")
_MAX_FORMATS = 8  # distinct formats tried per batch before the per-value parser


def parse_times(
    values: pd.Series,
    mapping: ColumnMapping,
    column: str,
    latest: pd.Timestamp = LATEST_TIME,
    day_first: dict[str, bool] | None = None,
) -> tuple[pd.Series, pd.Series]:
    """Parse a time column to UTC the way ``mapping`` states, and say why a value failed.

    Parameters
    ----------
    values : the column as read (text, numbers or timestamps).
    mapping : its ``time_format``, ``dayfirst``, ``time_unit`` and ``timezone``.
    column : the contract's name of the column, for errors.
    latest : later times are refused as ``future``.
    day_first : the day order decided for numeric dates of this column in earlier batches of
        the same file; updated when this batch decides it.

    Returns
    -------
    times : ``datetime64[ns, UTC]``, NaT where the value failed.
    problem : NA where parsed, else ``invalid`` (missing, unparseable, a non-existent local
        time), ``out_of_range`` (before 1677-09-22), ``future`` (after ``latest``) or
        ``needs_time_unit`` (a number, and the mapping states no ``time_unit``).

    Raises
    ------
    DataContractError
        Numeric dates that read both day-first and month-first, with no order stated.
    """
    day_first = {} if day_first is None else day_first
    index = values.index
    problem = rows.missing_text(index)
    if pd.api.types.is_datetime64_any_dtype(values):
        times = values if values.dt.tz is not None else _localize(values, mapping.timezone)
        parsed = times.dt.tz_convert("UTC")
    elif mapping.time_unit is not None:
        parsed, early, late = _from_epoch(values, mapping.time_unit)
        problem = problem.mask(early, "out_of_range").mask(late, "future")
    elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        parsed = pd.Series(pd.NaT, index=index, dtype="datetime64[us, UTC]")
        problem = problem.mask(values.notna().to_numpy(bool), "needs_time_unit")
    else:
        text = values.astype("string").str.strip()
        text = text.mask(text == "")
        if mapping.time_format is not None:
            parsed = _with_format(text, mapping.time_format, mapping.timezone)
        else:
            parsed = _guess(text, mapping, column, day_first)
            failed = parsed.isna() & text.notna()
            if failed.any():
                number = text[failed].str.fullmatch(_NUMBER).fillna(False).astype(bool)
                problem[number[number].index] = "needs_time_unit"
    invalid = parsed.isna().to_numpy(bool) & problem.isna().to_numpy(bool)
    if invalid.any():
        problem = problem.mask(invalid, "invalid")
    early = (parsed < EARLIEST_TIME).fillna(False).to_numpy(bool)
    late = (parsed > latest).fillna(False).to_numpy(bool)
    if early.any() or late.any():
        problem = problem.mask(early, "out_of_range").mask(late, "future")
        parsed = parsed.mask(early | late)
    return parsed.astype("datetime64[ns, UTC]"), problem


def _from_epoch(values: pd.Series, unit: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Epoch numbers (or their text) in ``unit`` to UTC, and masks of numbers out of range."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[unit]
    early = (numbers < EARLIEST_TIME.timestamp() * per_second).to_numpy(bool)
    late = (numbers > LATEST_TIME.timestamp() * per_second).to_numpy(bool)
    parsed = pd.to_datetime(numbers.mask(early | late), unit=unit, utc=True)
    return parsed.astype("datetime64[us, UTC]"), early, late


def _with_format(text: pd.Series, time_format: str, timezone: str) -> pd.Series:
    aware = "%z" in time_format or "%Z" in time_format
    parsed = pd.to_datetime(text, format=time_format, errors="coerce", utc=aware)
    return parsed if aware else _localize(parsed, timezone)


def _guess(
    text: pd.Series, mapping: ColumnMapping, column: str, day_first: dict[str, bool]
) -> pd.Series:
    """ISO-8601 first; then numeric dates in one stated or evident day order; then the rest."""
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    has_offset = text.str.contains(_OFFSET, na=False).to_numpy(bool)
    if has_offset.any():
        out[has_offset] = _iso_or_mixed(text[has_offset], utc=True)
    naive = ~has_offset & text.notna().to_numpy(bool)
    if not naive.any():
        return out
    local = pd.to_datetime(text[naive], format="ISO8601", errors="coerce")
    local = local.astype("datetime64[us]")
    left = local.isna()
    if left.any():
        rest = text[naive][left]
        parsed = pd.Series(pd.NaT, index=rest.index, dtype="datetime64[us]")
        numeric = rest.str.contains(_NUMERIC_DATE, na=False).to_numpy(bool)
        if numeric.any():
            first = _day_order(rest[numeric], mapping, column, day_first)
            parsed[numeric] = _by_formats(rest[numeric], first)
        # epoch numbers are not guessed at: they need the mapping's time_unit
        other = ~numeric & ~rest.str.fullmatch(_NUMBER).fillna(False).to_numpy(bool)
        if other.any():
            parsed[other] = _by_formats(rest[other], None, mixed=True)
        local[left[left].index] = parsed
    out[naive] = _localize(local, mapping.timezone)
    return out


def _iso_or_mixed(text: pd.Series, utc: bool) -> pd.Series:
    """ISO-8601 text (else any format pandas recognises) in microseconds, the log's unit: a
    value written to the nanosecond is truncated to its microsecond, not refused."""
    unit = "datetime64[us, UTC]" if utc else "datetime64[us]"
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=utc).astype(unit)
    retry = parsed.isna() & text.notna()
    if retry.any():
        again = pd.to_datetime(text[retry], format="mixed", errors="coerce", utc=utc)
        parsed[retry] = again.astype(unit)
    return parsed


def _day_order(
    text: pd.Series, mapping: ColumnMapping, column: str, day_first: dict[str, bool]
) -> bool:
    """Whether numeric dates read day first: stated, decided earlier, or evident from values."""
    if mapping.dayfirst is not None:
        return mapping.dayfirst
    if column in day_first:
        return day_first[column]
    days = text[text.str.contains(_DAY_FIRST, na=False).to_numpy(bool)]
    months = text[text.str.contains(_MONTH_FIRST, na=False).to_numpy(bool)]
    name = _source_name(mapping, column)
    if len(days) and len(months):
        raise DataContractError(
            f"{name}: dates are written day first in some rows ({days.iloc[0]!r}) and month "
            f"first in others ({months.iloc[0]!r}); state the format in the mapping, e.g. "
            "time_format: '%d/%m/%Y %H:%M'"
        )
    if not len(days) and not len(months):
        sample = text.iloc[0]
        raise DataContractError(
            f"{name}: dates like {sample!r} read both day first and month first; state which "
            "in the mapping: 'dayfirst: true' (or false), or time_format: '%d/%m/%Y %H:%M'"
        )
    day_first[column] = bool(len(days))
    return day_first[column]


def _source_name(mapping: ColumnMapping, column: str) -> str:
    source = [k for k, v in mapping.rename.items() if v == column]
    return f"column '{source[0]}' ({column})" if source else f"column '{column}'"


def _by_formats(text: pd.Series, day_first: bool | None, mixed: bool = False) -> pd.Series:
    """Parse with the format guessed from a value, again for what is left, a few times.

    With ``day_first`` set, every guessed format puts the day where it says; ``mixed`` lets
    pandas read what no guessed format fits, value by value (slow; only unusual texts).
    """
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us]")
    left = text.notna().to_numpy(bool).copy()
    tried: set[str] = set()
    for _ in range(_MAX_FORMATS):
        if not left.any():
            break
        fmt = _guess_format(text[left].iloc[0], day_first)
        if fmt is None or fmt in tried:
            break
        tried.add(fmt)
        got = pd.to_datetime(text[left], format=fmt, errors="coerce").astype("datetime64[us]")
        hit = got.notna().to_numpy(bool)
        if not hit.any():
            break
        out[got.index[hit]] = got[hit]
        left[left] = ~hit
    if mixed and left.any():
        got = pd.to_datetime(text[left], format="mixed", errors="coerce")
        out[left] = got.astype("datetime64[us]")
    return out


def _guess_format(value: str, day_first: bool | None) -> str | None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fmt = guess_datetime_format(value, dayfirst=bool(day_first))
    if fmt is None or day_first is None:
        return fmt
    d, m = fmt.find("%d"), fmt.find("%m")
    if d >= 0 and m >= 0 and (d < m) != day_first:
        fmt = fmt.replace("%d", "\0").replace("%m", "%d").replace("\0", "%m")
    return fmt


def _localize(values: pd.Series, timezone: str) -> pd.Series:
    if values.dt.tz is not None:
        return values.dt.tz_convert("UTC")
    if timezone == "UTC":
        return values.dt.tz_localize("UTC")
    local = values.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    return local.dt.tz_convert("UTC")
