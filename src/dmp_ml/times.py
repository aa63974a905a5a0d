"""Timestamps as the library keeps them: timezone-aware, in UTC."""

from __future__ import annotations

import pandas as pd

from dmp_ml.errors import RequestError


def utc(value: object, field: str = "time") -> pd.Timestamp:
    """``value`` (text, datetime, timestamp) as a UTC timestamp; a naive one is taken as UTC.

    Raises :class:`~dmp_ml.errors.RequestError` naming ``field`` when ``value`` is not a time.
    """
    try:
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise RequestError(field, f"not a time: {value!r}") from exc
    if ts is pd.NaT:
        raise RequestError(field, f"not a time: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
