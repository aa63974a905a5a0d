"""Per-profile inputs besides events: time zones and attribute columns.

Attributes: numeric ones as float64, datetimes as ``days_since_<col>``, text as ``category``.
Direct identifiers (``email``, phone, name, address, ip, ``*_id`` ...) and identifier-like text
columns (more than 1,000 distinct values, or one per row) are never used.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dmp_ml import identity
from dmp_ml.errors import DataContractError
from dmp_ml.features.params import DAY_NS

logger = logging.getLogger(__name__)

_NAT = np.iinfo(np.int64).min
_IDENTIFIER_TOKENS = frozenset(
    {
        "email",
        "mail",
        "phone",
        "mobile",
        "telephone",
        "tel",
        "msisdn",
        "name",
        "firstname",
        "lastname",
        "surname",
        "fullname",
        "address",
        "street",
        "ip",
        "ssn",
        "passport",
        "password",
        "iban",
        "creditcard",
        "cardnumber",
        "dob",
        "birthdate",
        "birthday",
        "id",
        "uuid",
        "cookie",
    }
)
_MAX_TEXT_LEVELS = 1_000


def profile_timezones(
    profile_index: pd.Index, profiles: pd.DataFrame | None
) -> tuple[np.ndarray, list[str], int]:
    """Per output profile: zone code (-1 = UTC), zone names, and how many names were invalid."""
    codes = np.full(len(profile_index), -1, dtype=np.int64)
    if profiles is None or "timezone" not in profiles.columns or len(profile_index) == 0:
        return codes, [], 0
    pos = identity.lookup(
        pa.array(profile_index.to_numpy(dtype=object)), _arrow_ids(_profile_id_column(profiles))
    )
    zones = identity.arrow_strings(profiles["timezone"].astype("string"))
    if isinstance(zones, pa.ChunkedArray):
        zones = zones.combine_chunks()
    mine = zones.take(pa.array(pos, mask=pos < 0))
    valid, invalid = [], []
    for z in sorted(v for v in pc.unique(mine).to_pylist() if v):
        try:
            ZoneInfo(z)
            valid.append(z)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            invalid.append(z)
    codes = identity.lookup(mine, pa.array(valid, type=pa.string()))
    n_invalid = int(
        np.count_nonzero(identity.lookup(mine, pa.array(invalid, type=pa.string())) >= 0)
    )
    if n_invalid:
        logger.warning("%d profiles have an unknown time zone %s; UTC used", n_invalid, invalid)
    return codes, valid, n_invalid


def _profile_id_column(profiles: pd.DataFrame) -> pd.Series:
    if "profile_id" in profiles.columns:
        return profiles["profile_id"]
    if profiles.index.name == "profile_id":
        return profiles.index.to_series(index=profiles.index)
    raise DataContractError("profiles: need a profile_id column")


def _arrow_ids(ids: pd.Series) -> pa.Array:
    arr = identity.arrow_strings(ids.astype("string"))
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _is_identifier(name: str) -> bool:
    """Direct identifiers by name: ``email``, ``first_name``, ``phone_number``, ``crm_id`` ..."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    return any(t in _IDENTIFIER_TOKENS for t in tokens) or "".join(tokens) in _IDENTIFIER_TOKENS


def profile_attributes(
    profile_index: pd.Index,
    profiles: pd.DataFrame | None,
    as_of: pd.Timestamp,
    taken: Iterable[str],
) -> pd.DataFrame:
    """Attribute columns aligned to ``profile_index`` (see the module doc for the rules)."""
    out: dict[str, Any] = {}
    if profiles is None or len(profiles.columns) == 0:
        return pd.DataFrame(index=profile_index)
    ids = _profile_id_column(profiles)
    body = profiles.drop(columns=["profile_id"], errors="ignore")
    # lookup() finds the first row of a repeated id
    pos = identity.lookup(pa.array(profile_index.to_numpy(dtype=object)), _arrow_ids(ids))
    found = pos >= 0
    taken = set(taken)
    dropped = []
    for column in body.columns:
        name = str(column)
        col = body[column]
        if name == "timezone":
            pass
        elif _is_identifier(name):
            dropped.append(name)
            continue
        target = f"attr_{name}" if name in taken else name
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            values = np.full(len(profile_index), np.nan)
            values[found] = col.to_numpy(dtype=np.float64, na_value=np.nan)[pos[found]]
            out[target] = values
        elif pd.api.types.is_datetime64_any_dtype(col):
            ns = identity.time_ns(col)[pos[found]]
            days = np.where((ns != _NAT) & (ns < as_of.value), (as_of.value - ns) / DAY_NS, np.nan)
            values = np.full(len(profile_index), np.nan)
            values[found] = days
            target = f"days_since_{name}" if f"days_since_{name}" not in taken else target
            out[target] = values
        else:
            text = col.astype("string")
            levels = sorted(text.dropna().unique().tolist())
            n_rows = int(text.notna().sum())
            if len(levels) > _MAX_TEXT_LEVELS or (n_rows >= 20 and len(levels) == n_rows):
                dropped.append(name)
                continue
            codes = pd.Categorical(text, categories=levels).codes
            mine = np.full(len(profile_index), -1, dtype=codes.dtype)
            mine[found] = codes[pos[found]]
            out[target] = pd.Categorical.from_codes(mine, categories=levels)
    if dropped:
        logger.info("profile attributes not used as features (identifiers): %s", dropped)
    return pd.DataFrame(out, index=profile_index)
