"""The planted truth of a demo world: its columns, reading it back, exact purchase probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmp_ml.demo.catalogue import (
    COUNTRIES,
    INTEREST_GROUPS,
    TIMEZONES,
    ZONE_COUNTRY,
    strings,
)
from dmp_ml.demo.personas import profile_ids
from dmp_ml.errors import DataContractError
from dmp_ml.times import utc

TRUTH_COLUMNS: tuple[str, ...] = (
    "profile_id",
    "interest_group",
    "secondary_interest_group",
    "preferred_local_hour",
    "timezone",
    "country",
    "engagement",
    "session_rate_per_day",
    "purchase_rate_per_day",
    "activation_day",
    "churn_day",
    "active_from",
    "active_until",
    "signup_at",
    "email_open_propensity",
    "has_email",
    "machine_opener",
    "n_devices",
    "household_id",
    "consent_withdrawn",
)


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read a truth file written by :func:`write_demo_world` (a file, or the folder holding it).

    Raises
    ------
    DataContractError
        The file is missing or lacks truth columns.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "truth.parquet"
    if not p.is_file():
        raise DataContractError(f"truth file not found: {p}")
    try:
        frame = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataContractError(f"cannot read truth file {p}: {exc}") from exc
    missing = [c for c in TRUTH_COLUMNS if c not in frame.columns]
    if missing:
        raise DataContractError(
            f"{p} is not a demo truth file: missing columns {missing}; "
            f"expected {list(TRUTH_COLUMNS)}, found {list(frame.columns)}"
        )
    return _coerce_truth(frame[list(TRUTH_COLUMNS)])


def true_purchase_probability(
    truth: pd.DataFrame, as_of: str | pd.Timestamp, horizon_days: int
) -> pd.Series:
    """Planted probability of at least one purchase in ``[as_of, as_of + horizon_days)``.

    Purchases are a Poisson process with rate ``purchase_rate_per_day`` on every UTC day of
    ``[active_from, active_until)`` and zero elsewhere, so the probability is
    ``1 - exp(-rate * active days in the window)``. Exact for windows starting at UTC
    midnight; otherwise partial days count pro rata.

    Returns
    -------
    Series
        Float64 in [0, 1], index ``profile_id``, name ``true_purchase_probability``.
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    need = ("profile_id", "purchase_rate_per_day", "active_from", "active_until")
    missing = [c for c in need if c not in truth.columns]
    if missing:
        raise DataContractError(f"truth frame lacks columns {missing}")
    w0 = utc(as_of, "as_of")
    w1 = w0 + pd.Timedelta(days=horizon_days)
    lo = pd.to_datetime(truth["active_from"], utc=True).clip(lower=w0)
    hi = pd.to_datetime(truth["active_until"], utc=True).fillna(w1).clip(upper=w1)
    overlap = ((hi - lo) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    overlap = np.clip(overlap, 0.0, None)
    rate = truth["purchase_rate_per_day"].to_numpy(dtype=float)
    prob = -np.expm1(-rate * overlap)
    index = pd.Index(truth["profile_id"].astype("string"), name="profile_id")
    return pd.Series(prob, index=index, name="true_purchase_probability", dtype="float64")


def truth_frame(ppl: dict[str, np.ndarray], start: pd.Timestamp) -> pd.DataFrame:
    n = int(ppl["n"])
    churn = ppl["churn"]
    day = pd.Timedelta(days=1)
    active_from = start + ppl["activation"] * day
    until = pd.Series(start + np.where(churn >= 0, churn, 0) * day)
    until[churn < 0] = pd.NaT
    width = max(4, len(str(len(ppl["hh_a"]))))
    households = [f"h{i:0{width}d}" for i in range(len(ppl["hh_a"]))]
    ns = start.as_unit("ns").value + np.round(ppl["signup"] * 1e9).astype(np.int64)
    withdrawn = np.isfinite(ppl["withdraw_at"]) & ~np.isfinite(ppl["regrant_at"])
    frame = pd.DataFrame(
        {
            "profile_id": strings(np.arange(n), profile_ids(n)),
            "interest_group": strings(ppl["group"], INTEREST_GROUPS),
            "secondary_interest_group": strings(ppl["second"], INTEREST_GROUPS),
            "preferred_local_hour": ppl["pref"].astype(np.int64),
            "timezone": strings(ppl["zone"], TIMEZONES),
            "country": strings(ZONE_COUNTRY[ppl["zone"]], COUNTRIES),
            "engagement": ppl["engagement"],
            "session_rate_per_day": ppl["session_rate"],
            "purchase_rate_per_day": ppl["purchase_rate"],
            "activation_day": ppl["activation"].astype(np.int64),
            "churn_day": pd.array(np.where(churn >= 0, churn, 0), dtype="Int64"),
            "active_from": pd.Series(active_from),
            "active_until": until,
            "signup_at": pd.to_datetime(ns, unit="ns", utc=True),
            "email_open_propensity": ppl["open_prop"],
            "has_email": ppl["has_email"],
            "machine_opener": ppl["machine"],
            "n_devices": ppl["n_devices"],
            "household_id": strings(ppl["household"], households),
            "consent_withdrawn": withdrawn,
        }
    )
    frame.loc[churn < 0, "churn_day"] = pd.NA
    return _coerce_truth(frame)


def _coerce_truth(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical dtypes of the truth table (also after a Parquet round trip)."""
    out = frame.copy()
    for c in ("profile_id", "interest_group", "secondary_interest_group", "timezone", "country"):
        out[c] = out[c].astype("string")
    out["household_id"] = out["household_id"].astype("string")
    for c in ("preferred_local_hour", "activation_day", "n_devices"):
        out[c] = out[c].astype(np.int64)
    out["churn_day"] = out["churn_day"].astype("Int64")
    for c in ("engagement", "session_rate_per_day", "purchase_rate_per_day"):
        out[c] = out[c].astype(np.float64)
    out["email_open_propensity"] = out["email_open_propensity"].astype(np.float64)
    for c in ("has_email", "machine_opener", "consent_withdrawn"):
        out[c] = out[c].astype(bool)
    for c in ("active_from", "active_until", "signup_at"):
        out[c] = pd.to_datetime(out[c], utc=True)
    return out.reset_index(drop=True)
