"""JSON shaping of the service's answers: frames and numpy values as plain JSON, error bodies.

Every client error is ``{"error": ..., "field": ...}`` naming the offending field; unexpected
failures are logged without their message (it may quote profile ids).
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi.responses import JSONResponse

from dmp_ml.errors import StorageError, StorageFullError, storage_error

logger = logging.getLogger(__name__)


def iso(value: Any) -> str | None:
    """``value`` as ISO 8601 text (UTC as ``Z``); None for missing values."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, datetime):  # Timestamp included; the common case, kept fast
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if not isinstance(value, str) and pd.isna(value):
        return None
    return iso(pd.Timestamp(value))


def plain(value: Any) -> Any:
    """A JSON-ready copy of ``value``: NaN/NA -> None, timestamps -> ISO text, numpy -> Python."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, np.generic):
        return plain(value.item())
    if value is pd.NA:
        return None
    return value


def _column(series: pd.Series) -> list[Any]:
    """One frame column as JSON-ready Python values, vectorised where the dtype allows."""
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(series):
        return [iso(v) for v in series]
    if pd.api.types.is_float_dtype(series.dtype) and not pd.api.types.is_extension_array_dtype(
        series.dtype
    ):
        arr = series.to_numpy(dtype=np.float64)
        out: list[Any] = arr.tolist()
        bad = np.flatnonzero(~np.isfinite(arr))
        for i in bad:
            out[i] = None
        return out
    if pd.api.types.is_string_dtype(series.dtype) or pd.api.types.is_extension_array_dtype(
        series.dtype
    ):
        values = series.astype(object)
        return [None if v is pd.NA or v is None else plain(v) for v in values]
    return [plain(v) for v in series.tolist()]


def records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of ``frame`` as JSON-ready dicts over those of ``columns`` it has."""
    present = [c for c in columns if c in frame.columns]
    cols = [_column(frame[c]) for c in present]
    return [dict(zip(present, row, strict=True)) for row in zip(*cols, strict=True)]


def json_response(payload: dict[str, Any], status: int = 200) -> JSONResponse:
    """A JSON answer with ``status``."""
    return JSONResponse(payload, status_code=status)


def error_response(
    status: int, message: str, field: str | None = None, **extra: Any
) -> JSONResponse:
    """The error shape of every refusal: ``{"error": message, "field": field, ...}``."""
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


def storage_failure(what: str, exc: StorageError | OSError) -> JSONResponse:
    """507 when the workdir's disk is full, 503 when it cannot be written (read-only, ...)."""
    error = exc if isinstance(exc, StorageError) else storage_error(exc)
    status = 507 if isinstance(error, StorageFullError) else 503
    logger.error("%s: the workdir cannot be written: %s", what, error)
    return error_response(status, f"the workdir cannot be written: {error}", "workdir")


def log_failure(what: str, exc: BaseException) -> None:
    """Log an unexpected failure without its message (it may quote profile ids)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s failed with %s\n%s", what, type(exc).__name__, frames)
