"""Local hour of week (0 = Monday 00:00) of UTC instants, per profile time zone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dmp_ml.features.table import HOURS_PER_WEEK

_HOUR_NS = 3_600 * 10**9
_QUARTER_NS = 900 * 10**9
_EPOCH_SHIFT = 72  # 1970-01-01 was a Thursday: hour 72 of its week


def utc_hour_of_week(t: np.ndarray) -> np.ndarray:
    """Hour of week (0 = Monday 00:00 UTC) of UTC nanoseconds ``t``."""
    return (t // _HOUR_NS + _EPOCH_SHIFT) % HOURS_PER_WEEK


class LocalClock:
    """Local hour of week (0 = Monday 00:00) of UTC instants in several time zones.

    UTC offsets are tabulated per quarter hour over the span of ``t`` for the zones listed in
    ``used`` (indices into ``tz_names``), so DST and half-hour zones are exact and each lookup
    is one array index. The table's last row is all zeros: UTC (``tz == -1``) is looked up
    like any zone, so a whole chunk of instants takes one pass whatever its zones.
    """

    def __init__(self, tz_names: Sequence[str], t: np.ndarray, used: np.ndarray) -> None:
        self.tz_names = list(tz_names)
        self.used = np.unique(used[used >= 0])
        self.row = np.full(len(self.tz_names) + 1, -1, dtype=np.int64)
        self.row[self.used] = np.arange(len(self.used))
        self.bmin, self.width, self.table = 0, 0, None
        if len(t) == 0 or len(self.used) == 0:
            return
        self.bmin = int(t.min()) // _QUARTER_NS
        bmax = int(t.max()) // _QUARTER_NS
        self.width = bmax - self.bmin + 1
        if len(self.used) * self.width <= 50_000_000:
            zones = [_offset_table(self.tz_names[z], self.bmin, bmax) for z in self.used]
            self.table = np.concatenate([*zones, np.zeros(self.width, dtype=np.int16)])
            self.row[-1] = len(self.used)  # code -1 (UTC): the row of zeros

    def hour_of_week(self, t: np.ndarray, tz: np.ndarray) -> np.ndarray:
        """``t``: UTC nanoseconds; ``tz``: index into ``tz_names`` (-1 = UTC)."""
        if self.table is not None:  # one lookup per instant, UTC's offset being 0
            quarter = t // _QUARTER_NS
            quarter += self.table[self.row[tz] * self.width + (quarter - self.bmin)]
            return (quarter // 4 + _EPOCH_SHIFT) % HOURS_PER_WEEK
        how = utc_hour_of_week(t)
        local = np.flatnonzero(tz >= 0)
        if len(local) == 0:
            return how
        b = t[local] // _QUARTER_NS
        codes = tz[local]
        lb = np.empty_like(b)  # a very long span and many zones: convert zone by zone
        for z in np.unique(codes):
            m = codes == z
            utc = pd.to_datetime(t[local][m], utc=True)
            lb[m] = utc.tz_convert(self.tz_names[z]).tz_localize(None).asi8 // _QUARTER_NS
        how[local] = (lb // 4 + _EPOCH_SHIFT) % HOURS_PER_WEEK
        return how


def _offset_table(name: str, bmin: int, bmax: int) -> np.ndarray:
    """UTC offset (in quarter hours) of zone ``name`` at each quarter hour bmin..bmax."""
    utc = pd.to_datetime(np.arange(bmin, bmax + 1, dtype=np.int64) * _QUARTER_NS, utc=True)
    local = utc.tz_convert(name).tz_localize(None)
    return ((local.asi8 - utc.tz_localize(None).asi8) // _QUARTER_NS).astype(np.int16)


def local_hour_of_week(t: np.ndarray, tz: np.ndarray, tz_names: Sequence[str]) -> np.ndarray:
    """Hour of week (0 = Monday 00:00) of UTC nanoseconds ``t`` in zone ``tz_names[tz]``.

    ``tz == -1`` means UTC.
    """
    return LocalClock(tz_names, t, tz).hour_of_week(t, tz)
