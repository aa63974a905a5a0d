"""The serving decision: the best allowed send hour per profile inside a window.

Reads a fitted :class:`~dmp_ml.models.send_time.model.SendTimeModel`; validates the request
(window, quiet hours, zone override) and shapes the answer (:class:`SendTimeDecision`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dmp_ml.errors import RequestError, UnknownProfileError
from dmp_ml.id_index import rows_of
from dmp_ml.models.send_time.curves import BASES, HOURS_PER_WEEK
from dmp_ml.models.send_time.zones import (
    EPOCH_HOW_SHIFT,
    TIMEZONE_SOURCES,
    ZoneConverter,
    valid_zone,
)

if TYPE_CHECKING:
    from dmp_ml.models.send_time.model import SendTimeModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendTimeDecision:
    """The answer of :meth:`SendTimeModel.best_send_time`.

    Attributes
    ----------
    frame : DataFrame
        One row per known requested profile, in request order, columns ``profile_id``,
        ``send_at`` (UTC), ``hour_of_week`` (UTC, 0 = Monday 00:00), ``probability``, ``basis``,
        ``timezone``, ``timezone_source`` (known / inferred / utc, or ``override`` when the
        request set a zone), ``local_send_at`` (ISO-8601 text in the recipient's zone) and
        ``alternatives`` (list of ``{"send_at": ISO-8601 UTC text, "probability": float}``, next
        best first). ``send_at`` is NaT when every hour of the window falls in the recipient's
        quiet hours (see :attr:`blocked_ids`).
    unknown_ids : list of str
        Requested ids the model does not know (not in the frame).
    window_start, window_hours
        The window actually used (``window_start`` rounded up to the hour).
    """

    frame: pd.DataFrame
    unknown_ids: list[str] = field(default_factory=list)
    window_start: pd.Timestamp | None = None
    window_hours: int = 24

    @property
    def blocked_ids(self) -> list[str]:
        """Profiles with no allowed hour in the window (all of it inside their quiet hours)."""
        return self.frame.loc[self.frame["send_at"].isna(), "profile_id"].tolist()

    def alternatives_frame(self) -> pd.DataFrame:
        """The alternatives in long form: profile_id, rank (1 = next best), send_at, probability."""
        rows = [
            (pid, rank, alt["send_at"], alt["probability"])
            for pid, alts in zip(self.frame["profile_id"], self.frame["alternatives"], strict=True)
            for rank, alt in enumerate(alts, start=1)
        ]
        out = pd.DataFrame(rows, columns=["profile_id", "rank", "send_at", "probability"])
        out["profile_id"] = out["profile_id"].astype("string")
        out["rank"] = out["rank"].astype(np.int64)
        out["send_at"] = pd.to_datetime(out["send_at"], utc=True)
        out["probability"] = out["probability"].astype(np.float64)
        return out


def profiles_frame(model: SendTimeModel) -> pd.DataFrame:
    """One row per profile of ``model``: zone, basis, best hour, its probability and
    posterior sd, the data behind it."""
    model.check_fitted()
    best = model.best_local_hour_
    prob, prob_sd = model.probability(np.arange(len(best)), best[:, None])
    return pd.DataFrame(
        {
            "profile_id": pd.array(model.profile_ids_, dtype="string"),
            "timezone": pd.array(model.timezone_, dtype="string"),
            "timezone_source": pd.array(model.timezone_source_, dtype="string"),
            "basis": pd.array(model.basis_, dtype="string"),
            "best_hour_of_week": model.best_hour_,
            "best_local_hour_of_week": best,
            "probability": prob[:, 0],
            "probability_sd": prob_sd[:, 0],
            "data_weight": model.data_weight_,
            "engagement_hours": model.n_engagement_hours_,
            "email_sends": model.n_sends_,
        }
    )


def best_send_time(
    model: SendTimeModel,
    profile_ids: Iterable[str] | None = None,
    window_start: pd.Timestamp | str | None = None,
    window_hours: int = 24,
    quiet_hours: tuple[int, int] | None = None,
    timezone: str | None = None,
) -> SendTimeDecision:
    """The best allowed send hour in ``[window_start, window_start + window_hours)``.

    Parameters
    ----------
    model : SendTimeModel
        A fitted model.
    profile_ids : iterable of str, optional
        Profiles to decide for (duplicates are answered once); None means every profile.
    window_start : Timestamp or ISO text, optional
        Start of the window (naive means UTC), rounded up to the next whole hour; None means
        the model's ``as_of``. The library never reads the clock: callers pass "now".
    window_hours : int
        Window length, 1..168 hours; candidate send times are the whole UTC hours inside it.
    quiet_hours : (start, end), optional
        Recipient-local hours ``[start, end)`` that must not be used, 0..23, may wrap midnight
        (``(22, 7)``: no sends from 22:00 to 06:59 local). None uses ``default_quiet_hours``;
        ``()`` means none.
    timezone : str, optional
        IANA zone that replaces every recipient's time zone (for reading their local-time
        curve and for quiet hours).

    Returns
    -------
    SendTimeDecision
        ``frame`` with one row per known profile, ``unknown_ids`` for the rest.

    Raises
    ------
    RequestError
        An argument is invalid (``field`` names it).
    UnknownProfileError
        Ids were given and none of them is known.
    """
    model.check_fitted()
    hours = _check_window_hours(window_hours)
    quiet = quiet_hours if quiet_hours is not None else model.default_quiet_hours
    if quiet is not None and not isinstance(quiet, str) and len(quiet) == 0:
        quiet = None  # an explicit () switches the default quiet hours off
    if quiet is not None:
        quiet = check_quiet_hours(quiet)
    if timezone is not None and not valid_zone(timezone):
        raise RequestError("timezone", f"unknown time zone {timezone!r}")
    if window_start is None:
        start = model.as_of_
    else:
        start = utc_timestamp(window_start, "window_start", RequestError)
    start = start.ceil("h")

    if profile_ids is None:
        ids = pd.Index(model.profile_ids_)
        unknown: list[str] = []
        codes = np.arange(len(ids))
    else:
        if isinstance(profile_ids, str):
            raise RequestError("profile_ids", "expected a list of ids, got one string")
        requested = pd.Index(pd.unique(pd.array([str(i) for i in profile_ids], "string")))
        found = rows_of(model.profile_ids_, model.id_index_, requested)
        unknown = requested[found < 0].tolist()
        if len(requested) and (found >= 0).sum() == 0:
            raise UnknownProfileError(
                f"none of the {len(requested)} requested profile ids is known"
            )
        ids = requested[found >= 0]
        codes = found[found >= 0]

    slots = start.value // 3_600_000_000_000 + np.arange(hours, dtype=np.int64)
    if timezone is not None:
        conv = ZoneConverter([timezone])
        zcode = np.zeros(len(codes), dtype=np.int64)
        zone_names = np.full(len(codes), timezone, dtype=object)
    else:
        conv = ZoneConverter(model.zones_)
        zcode = model.zone_code_[codes]
        zone_names = np.asarray(model.zones_, dtype=object)[zcode]
    offsets = conv.offsets(int(slots[0]), hours)  # (n_zones, hours) seconds
    local_h = (slots[None, :] * 3600 + offsets) // 3600  # local epoch hour (floor)
    how_table = (local_h + EPOCH_HOW_SHIFT) % HOURS_PER_WEEK
    hod_table = local_h % 24
    how = how_table[zcode]  # (n, hours)
    score = model.probability(codes, how)[0]
    if quiet is not None:
        blocked = _in_quiet(hod_table, quiet)[zcode]
        score = np.where(blocked, -np.inf, score)
    k = min(1 + int(model.n_alternatives), hours)
    # best first; ties go to the earliest slot (stable sort)
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(score, order, axis=1)
    valid = np.isfinite(top)
    slot_sec = slots[order] * 3600
    ok = valid[:, 0]
    send_col = pd.Series(pd.to_datetime(np.where(ok, slot_sec[:, 0], 0), unit="s", utc=True))
    send_col = send_col.where(ok)
    prob = np.where(ok, top[:, 0], np.nan)
    how_utc = pd.Series((slots[order[:, 0]] + EPOCH_HOW_SHIFT) % HOURS_PER_WEEK, dtype="Int64")
    how_utc = how_utc.where(ok)
    local_text = _local_text(slot_sec[:, 0], offsets[zcode, order[:, 0]], ok)
    alternatives = _alternatives(slot_sec[:, 1:], top[:, 1:], valid[:, 1:])
    frame = pd.DataFrame(
        {
            "profile_id": pd.array(ids, dtype="string"),
            "send_at": send_col.array,
            "hour_of_week": how_utc.array,
            "probability": prob,
            "basis": pd.array(np.asarray(BASES, dtype=object)[model.basis_code_[codes]], "string"),
            "timezone": pd.array(zone_names, dtype="string"),
            "timezone_source": pd.array(
                np.asarray(TIMEZONE_SOURCES, dtype=object)[model.timezone_source_code_[codes]],
                "string",
            ),
            "local_send_at": local_text.array,
            "alternatives": alternatives,
        }
    )
    if timezone is not None:
        frame["timezone_source"] = pd.array(["override"] * len(frame), dtype="string")
    if unknown:
        logger.info("send time: %d unknown profile ids", len(unknown))
    return SendTimeDecision(
        frame=frame, unknown_ids=unknown, window_start=start, window_hours=hours
    )


# --------------------------------------------------------------------------------------------
# request validation and shaping


def utc_timestamp(value: object, field_name: str, error: type[Exception]) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise _make_error(error, field_name, f"not a timestamp: {value!r}") from exc
    if ts is pd.NaT or pd.isna(ts):
        raise _make_error(error, field_name, f"not a timestamp: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _make_error(error: type[Exception], field_name: str, message: str) -> Exception:
    if error is RequestError:
        return RequestError(field_name, message)
    return error(f"{field_name}: {message}")


def _check_window_hours(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise RequestError("window_hours", f"must be an integer from 1 to 168, got {value!r}")
    if not 1 <= int(value) <= HOURS_PER_WEEK:
        raise RequestError("window_hours", f"must be from 1 to 168, got {value}")
    return int(value)


def check_quiet_hours(value: object) -> tuple[int, int]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise RequestError("quiet_hours", f"must be a pair (start, end) of hours, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= int(v) <= 23:
            raise RequestError("quiet_hours", f"hours must be integers from 0 to 23, got {value!r}")
        out.append(int(v))
    if out[0] == out[1]:
        raise RequestError("quiet_hours", "start and end must differ")
    return out[0], out[1]


def _in_quiet(hod: np.ndarray, quiet: tuple[int, int]) -> np.ndarray:
    start, end = quiet
    if start < end:
        return (hod >= start) & (hod < end)
    return (hod >= start) | (hod < end)


def _local_text(sec: np.ndarray, offset: np.ndarray, valid: np.ndarray) -> pd.Series:
    """ISO-8601 local wall time with its UTC offset, e.g. ``2026-04-06T19:00:00-04:00``."""
    wall = np.datetime_as_string((sec + offset).astype("datetime64[s]"), unit="s")
    sign = np.where(offset < 0, "-", "+")
    minutes = np.abs(offset) // 60
    text = [
        f"{w}{s}{m // 60:02d}:{m % 60:02d}" if v else None
        for w, s, m, v in zip(
            wall.tolist(), sign.tolist(), minutes.tolist(), valid.tolist(), strict=True
        )
    ]
    return pd.Series(text, dtype="string")


def _alternatives(sec: np.ndarray, prob: np.ndarray, valid: np.ndarray) -> list[list[dict]]:
    """Per row the next-best slots: ``[{"send_at": "...Z", "probability": p}, ...]``."""
    if sec.shape[1] == 0:
        return [[] for _ in range(len(sec))]
    text = np.datetime_as_string(sec.astype("datetime64[s]"), unit="s", timezone="UTC").tolist()
    probs = prob.tolist()
    ok = valid.tolist()
    return [
        [{"send_at": t, "probability": p} for t, p, v in zip(t_row, p_row, v_row, strict=True) if v]
        for t_row, p_row, v_row in zip(text, probs, ok, strict=True)
    ]
