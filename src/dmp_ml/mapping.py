"""Column mappings: turn a foreign log's columns into the data contract's, declared in YAML.

A mapping file looks like::

    name: online_retail
    timezone: Europe/London        # naive timestamps are local time there (default UTC)
    time_format: "%m/%d/%Y %H:%M"  # how the time column is written (strptime codes)
    rename: {InvoiceDate: event_time, CustomerID: profile_id}
    integer_ids: [profile_id]      # "17850.0" -> "17850"
    constants: {event_type: purchase, source: first_party}
    derive:
      value: {multiply: [Quantity, UnitPrice]}
    drop:                          # rows kept in the quarantine with their reason
      - {column: InvoiceNo, op: startswith, value: "C", reason: cancelled_invoice}
      - {column: Quantity, op: "<=", value: 0, reason: non_positive_quantity}

``drop`` and ``derive`` name the file's own columns; ``rename`` happens after them.
Operators: ``== != < <= > >= startswith in missing``.

How the time column (``event_time`` of events, ``updated_at`` of consent) is written:
``time_format`` (strptime codes; a value not in that format is quarantined), or ``dayfirst``
(``true``: 01/12/2010 is 1 December; ``false``: 12 January) for numeric dates, or
``time_unit`` (``s``, ``ms``, ``us``, ``ns``) for epoch numbers. Without any of them, ISO-8601
and other unambiguous texts are read, and a column of numeric dates that reads both day-first
and month-first is refused (see :mod:`dmp_ml.contract`). A time column that is already a
timestamp (Parquet) needs none; a stated format is then checked but not needed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import yaml

from dmp_ml import rows
from dmp_ml.errors import MappingError
from dmp_ml.settings import MAPPINGS_DIR

_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
OPERATORS = (*_COMPARISONS, "startswith", "in", "missing")
TIME_UNITS = ("s", "ms", "us", "ns")


@dataclass(frozen=True)
class DropRule:
    """Rows matching ``column op value`` are quarantined with ``reason``."""

    column: str
    op: str
    value: Any
    reason: str

    def matches(self, frame: pd.DataFrame) -> pd.Series:
        col = frame[self.column]
        if self.op == "missing":
            result = col.isna() | (col.astype("string").str.strip() == "")
        elif self.op == "startswith":
            result = col.astype("string").str.startswith(str(self.value))
        elif self.op == "in":
            result = col.astype("string").isin([str(v) for v in self.value])
        elif isinstance(self.value, int | float) and not isinstance(self.value, bool):
            result = _COMPARISONS[self.op](pd.to_numeric(col, errors="coerce"), self.value)
        else:
            result = _COMPARISONS[self.op](col.astype("string"), str(self.value))
        return pd.Series(result, index=frame.index).fillna(False).astype(bool)


@dataclass(frozen=True)
class ColumnMapping:
    """A parsed mapping file; :meth:`apply` maps one batch of raw rows."""

    name: str = "identity"
    timezone: str = "UTC"
    time_format: str | None = None
    dayfirst: bool | None = None
    time_unit: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    integer_ids: tuple[str, ...] = ()
    constants: dict[str, Any] = field(default_factory=dict)
    derive: dict[str, tuple[str, ...]] = field(default_factory=dict)
    drop: tuple[DropRule, ...] = ()

    @property
    def rewrites(self) -> bool:
        """Whether the mapping does more than rename and add constant columns (rules that
        read values: drop rules, derived columns, integer ids)."""
        return bool(self.drop or self.derive or self.integer_ids)

    def source_columns(self) -> set[str]:
        """Columns of the input file this mapping reads."""
        used = set(self.rename)
        used.update(c for cols in self.derive.values() for c in cols)
        used.update(rule.column for rule in self.drop)
        return used

    def apply(self, raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
        """Map ``raw`` to contract names; return the frame and a per-row drop reason (NA = keep)."""
        missing = sorted(c for c in self.source_columns() if c not in raw.columns)
        if missing:
            raise MappingError(
                f"mapping '{self.name}' needs columns {missing} that the file does not have; "
                f"found {sorted(str(c) for c in raw.columns)}"
            )
        reason = rows.missing_text(raw.index)
        for rule in self.drop:
            reason = reason.mask(reason.isna() & rule.matches(raw), rule.reason)
        out = raw.copy(deep=False)  # copy on write: columns are replaced, never changed
        for target, (left, right) in self.derive.items():
            product = pd.to_numeric(raw[left], errors="coerce") * pd.to_numeric(
                raw[right], errors="coerce"
            )
            out[target] = product.astype("float64")
        out = out.rename(columns=self.rename)
        names = pd.Index([str(c) for c in out.columns])
        if names.has_duplicates:
            twice = sorted(set(names[names.duplicated()]))
            raise MappingError(
                f"mapping '{self.name}' gives two columns the name {twice[0]!r}: the file "
                f"already has a column {twice[0]!r}; rename or drop one of them"
            )
        for target, value in self.constants.items():
            out[target] = value
        for column in self.integer_ids:
            if column in out.columns:
                out[column] = _integer_strings(out[column])
        return out, reason


def _integer_strings(col: pd.Series) -> pd.Series:
    """Render float-typed ids (``17850.0``) as integers (``17850``); leave other text alone."""
    text = col.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    whole = numbers.notna() & np.isfinite(numbers) & (numbers == np.floor(numbers))
    as_int = numbers.where(whole).astype("Int64").astype("string")
    return text.mask(whole, as_int)


def packaged_mappings() -> dict[str, Path]:
    """The mappings shipped with dmp-ml, by name (``online_retail`` -> its YAML file)."""
    return {p.stem: p for p in sorted(MAPPINGS_DIR.glob("*.yaml"))}


def load_mapping(path: str | Path) -> ColumnMapping:
    """Parse and validate a mapping YAML file, or a packaged mapping by name (``online_retail``)."""
    path = Path(path)
    if not path.exists():
        packaged = packaged_mappings()
        if path.name == str(path) and path.stem in packaged and path.suffix in ("", ".yaml"):
            path = packaged[path.stem]
        else:
            known = ", ".join(packaged) or "none"
            raise MappingError(f"mapping file not found: {path} (packaged mappings: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MappingError(f"mapping {path} must hold a mapping at the top level")
    return parse_mapping(data, source=str(path))


def parse_mapping(data: dict[str, Any], source: str = "<mapping>") -> ColumnMapping:
    """Build a :class:`ColumnMapping` from its dictionary form, naming any bad key."""
    known = {"name", "description", "timezone", "rename", "integer_ids", "constants", "derive"}
    known.update({"drop", "time_format", "dayfirst", "time_unit"})
    unknown = sorted(set(data) - known)
    if unknown:
        raise MappingError(f"{source}: unknown keys {unknown}; allowed {sorted(known)}")
    timezone = str(data.get("timezone", "UTC"))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingError(f"{source}: timezone '{timezone}' is not an IANA time zone") from exc
    time_format, dayfirst, time_unit = _time_keys(data, source)
    derive: dict[str, tuple[str, ...]] = {}
    for target, spec in (data.get("derive") or {}).items():
        if not isinstance(spec, dict) or set(spec) != {"multiply"} or len(spec["multiply"]) != 2:
            raise MappingError(f"{source}: derive.{target} must be {{multiply: [col_a, col_b]}}")
        derive[str(target)] = tuple(str(c) for c in spec["multiply"])
    rules = []
    for i, rule in enumerate(data.get("drop") or []):
        if not isinstance(rule, dict) or not {"column", "op", "reason"} <= set(rule):
            raise MappingError(f"{source}: drop[{i}] needs column, op, value and reason")
        if rule["op"] not in OPERATORS:
            raise MappingError(
                f"{source}: drop[{i}] has unknown op '{rule['op']}'; use one of {list(OPERATORS)}"
            )
        rules.append(DropRule(str(rule["column"]), rule["op"], rule.get("value"), rule["reason"]))
    return ColumnMapping(
        name=str(data.get("name", Path(source).stem)),
        timezone=timezone,
        time_format=time_format,
        dayfirst=dayfirst,
        time_unit=time_unit,
        rename={str(k): str(v) for k, v in (data.get("rename") or {}).items()},
        integer_ids=tuple(str(c) for c in data.get("integer_ids") or ()),
        constants=dict(data.get("constants") or {}),
        derive=derive,
        drop=tuple(rules),
    )


def _time_keys(data: dict[str, Any], source: str) -> tuple[str | None, bool | None, str | None]:
    """``time_format``, ``dayfirst``, ``time_unit``: checked, at most one of them stated."""
    stated = [k for k in ("time_format", "dayfirst", "time_unit") if data.get(k) is not None]
    if len(stated) > 1:
        raise MappingError(f"{source}: state only one of {stated}")
    time_format = data.get("time_format")
    if time_format is not None:
        time_format = str(time_format)
        sample = datetime(2011, 12, 9, 12, 50, 7)
        try:
            datetime.strptime(sample.strftime(time_format), time_format)
        except ValueError as exc:
            raise MappingError(
                f"{source}: time_format {time_format!r} is not a strptime format ({exc}); "
                "e.g. '%d/%m/%Y %H:%M'"
            ) from exc
        if "%" not in time_format or not ({"%Y", "%y"} & _directives(time_format)):
            raise MappingError(
                f"{source}: time_format {time_format!r} needs at least the year (%Y or %y), "
                "e.g. '%d/%m/%Y %H:%M'"
            )
    dayfirst = data.get("dayfirst")
    if dayfirst is not None and not isinstance(dayfirst, bool):
        raise MappingError(f"{source}: dayfirst must be true or false, got {dayfirst!r}")
    time_unit = data.get("time_unit")
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise MappingError(
            f"{source}: time_unit must be one of {list(TIME_UNITS)}, got {time_unit!r}"
        )
    return time_format, dayfirst, time_unit


def _directives(fmt: str) -> set[str]:
    return {fmt[i : i + 2] for i in range(len(fmt) - 1) if fmt[i] == "%"}
