"""The per-profile reductions: events as codes (:func:`gather`), then the block (:func:`aggregate`).

Everything is computed with integer codes and ``numpy.bincount`` / ``ufunc.at`` reductions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from dmp_ml import identity
from dmp_ml.contract import SOURCES
from dmp_ml.features.clock import LocalClock, utc_hour_of_week
from dmp_ml.features.params import DAY_NS, FeatureParams, vocab_lut
from dmp_ml.features.table import HOURS_PER_WEEK
from dmp_ml.rows import distinct, is_dictionary

ENCODED_COLUMNS = ["event_type", "channel", "source", "category"]
"""The text columns :func:`gather` reads as integer codes (besides the ids)."""


@dataclass(frozen=True)
class EventArrays:
    """The events of some profiles as integer codes against a :class:`FeatureParams`.

    Rows are in input order. ``prof`` : profile row (0..n-1); ``t`` : int64 UTC nanoseconds;
    ``etype`` : index in ``event_types`` (other -> last); ``channel`` : index in ``channels``
    (-1 null, ``len(channels)`` other); ``source`` : index in SOURCES (-1 other/null);
    ``category`` : index in ``categories`` (-1 null, ``len(categories)`` other).
    Sparse columns: ``value`` at rows ``value_rows``; ``campaign`` (any int code per
    campaign, -1 null) at ``campaign_rows``, the email open/click rows.
    """

    prof: np.ndarray
    t: np.ndarray
    etype: np.ndarray
    channel: np.ndarray
    source: np.ndarray
    category: np.ndarray
    value_rows: np.ndarray
    value: np.ndarray
    campaign_rows: np.ndarray
    campaign: np.ndarray

    def __len__(self) -> int:
        return len(self.prof)


def _small_dtype(limit: int) -> type[np.signedinteger]:
    """The narrowest signed integer type holding -1..limit."""
    return np.int8 if limit < 127 else np.int16 if limit < 32_767 else np.int32


def _small_int(values: np.ndarray, limit: int) -> np.ndarray:
    return values.astype(_small_dtype(limit), copy=False)


def _unique_per_profile(prof: np.ndarray, campaign: np.ndarray, n: int) -> np.ndarray:
    """Distinct campaigns per profile (rows without a campaign count once each)."""
    has = campaign >= 0
    out = np.bincount(prof[~has], minlength=n).astype(np.float64)
    if has.any():
        width = int(campaign[has].max()) + 1
        keys = distinct(prof[has] * width + campaign[has])
        out += np.bincount(keys // width, minlength=n)
    return out


def _days_per_type(a: EventArrays, n: int, n_types: int, as_of_ns: int) -> np.ndarray:
    """Distinct 24-hour periods ``(as_of - (k + 1) days, as_of - k days]`` holding an event,
    per event type and profile, shape (n_types, n): the occasions a log with one row per order
    line counts many times over.

    Each event is one key, (profile, type) in the high bits and its period in the low bits,
    sorted to find the distinct ones: 32-bit keys where they fit (half the memory to sort and
    compare), shifts rather than divisions to take the (profile, type) back out.
    """
    if len(a) == 0:
        return np.zeros((n_types, n))
    n_days = int((as_of_ns - int(a.t.min()) - 1) // DAY_NS) + 1
    shift = max(n_days - 1, 1).bit_length()
    fits = (n * n_types) << shift <= np.iinfo(np.int32).max
    keys = np.empty(len(a), dtype=np.int32 if fits else np.int64)
    for sl in identity.chunks(len(a)):
        group = a.prof[sl].astype(np.int64) * n_types + a.etype[sl]
        keys[sl] = (group << shift) | ((as_of_ns - a.t[sl] - 1) // DAY_NS)
    groups = distinct(keys, in_place=True) >> shift
    return np.bincount(groups, minlength=n * n_types).reshape(n, n_types).T.astype(np.float64)


def aggregate(
    a: EventArrays, n: int, p: FeatureParams, tz_codes: np.ndarray, tz_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-profile features of ``n`` profiles from their events.

    Returns ``block`` of shape (n_columns, n) in :meth:`FeatureParams.columns` order (identity
    columns, tenure and smoothed rates are left for :func:`finalize`) and ``how`` of shape
    (n, 168).
    Counts, sums, minima and maxima are scattered straight into the output (``ufunc.at``) in
    chunks of rows, so memory stays at the output's size plus one chunk. Sums accumulate in
    row order: any partition of the profiles that keeps each profile's rows in order gives
    bit-identical values.
    """
    cols = p.columns()
    pos = {c: i for i, c in enumerate(cols)}
    block = np.zeros((len(cols), n))
    flat = block.reshape(-1)
    how = np.zeros((n, HOURS_PER_WEEK))
    how_flat = how.reshape(-1)
    slugs, windows = p.type_slugs, p.windows
    n_w, span = len(windows), windows[-1]
    bounds = np.array([d * DAY_NS for d in windows], dtype=np.int64)
    count_rows = np.array(
        [[pos[f"{s}_count_{d}d"] for d in windows] + [pos[f"{s}_count_total"]] for s in slugs],
        dtype=np.int64,
    )
    since_rows = np.array([pos[f"days_since_{s}"] for s in slugs], dtype=np.int64)
    decay_rows = np.array([pos[f"{s}_decayed"] for s in slugs], dtype=np.int64)
    first_rows = np.array([pos[f"{s}_tenure_days"] for s in slugs], dtype=np.int64)
    value_rows = np.array(
        [pos[f"value_sum_{d}d"] for d in windows] + [pos["value_sum_total"]], dtype=np.int64
    )
    cat_rows = np.array(
        [pos[f"category_share_{s}"] for s in p.category_slugs] + [pos["category_share_other"]],
        dtype=np.int64,
    )
    ch_rows = np.array(
        [pos[f"channel_share_{s}"] for s in p.channel_slugs] + [pos["channel_share_other"]],
        dtype=np.int64,
    )
    src_rows = np.array([pos[f"source_share_{s}"] for s in SOURCES], dtype=np.int64)
    engaged = ~np.asarray(p.passive, dtype=bool)
    block[since_rows] = np.inf
    bits = np.zeros(n * span, dtype=np.uint8)
    clock = LocalClock(tz_names, a.t, tz_codes) if (tz_codes >= 0).any() else None
    # counts add ones from an array: NumPy's ufunc.at is about twice as slow with a scalar
    ones = np.ones(min(len(a), identity.CHUNK_ROWS))

    def timing() -> None:  # counts per window bin, recency, decay: their own rows of block
        for sl in identity.chunks(len(a)):
            prof = a.prof[sl].astype(np.int64)
            et = a.etype[sl]
            age_ns = p.as_of_ns - a.t[sl]  # > 0
            wbin = np.searchsorted(bounds, age_ns, side="left")  # windows the event is outside
            age = age_ns / DAY_NS
            np.add.at(flat, count_rows[et, wbin] * n + prof, ones[: len(prof)])
            np.minimum.at(flat, since_rows[et] * n + prof, age)
            np.maximum.at(flat, first_rows[et] * n + prof, age)
            np.add.at(flat, decay_rows[et] * n + prof, np.exp2(age / -p.half_life_days))

    def mixes() -> None:  # active days, category/channel/source counts, hour of week
        for sl in identity.chunks(len(a)):
            prof = a.prof[sl].astype(np.int64)
            t = a.t[sl]
            day = (p.as_of_ns - t - 1) // DAY_NS  # period k: age in (k, k + 1] days
            recent = day < span
            bits[prof[recent] * span + day[recent]] = 1
            for codes, rows in (
                (a.category[sl], cat_rows),
                (a.channel[sl], ch_rows),
                (a.source[sl], src_rows),
            ):
                ok = codes >= 0
                at = rows[codes[ok]] * n + prof[ok]
                np.add.at(flat, at, ones[: len(at)])
            eng = engaged[a.etype[sl]]
            if clock is None:
                hours = utc_hour_of_week(t[eng])
            else:
                hours = clock.hour_of_week(t[eng], tz_codes[prof[eng]])
            at = prof[eng] * HOURS_PER_WEEK + hours
            np.add.at(how_flat, at, ones[: len(at)])

    def campaigns() -> list[np.ndarray]:  # distinct campaigns opened, clicked (longest window)
        cprof = a.prof[a.campaign_rows].astype(np.int64)
        cet = a.etype[a.campaign_rows]
        cin = p.as_of_ns - a.t[a.campaign_rows] <= bounds[-1]
        picked = [cin & (cet == idx) for idx in (p.open_index, p.click_index)]
        return [_unique_per_profile(cprof[rows], a.campaign[rows], n) for rows in picked]

    # the two halves write disjoint memory, so on a big log they run side by side (NumPy
    # releases the GIL in these loops); each keeps row order, so sums are the same either way
    with ThreadPoolExecutor(max_workers=1) as pool:
        parallel = len(a) >= identity.PARALLEL_ROWS and (os.cpu_count() or 1) > 1
        other = pool.submit(mixes) if parallel else None
        timing()
        if other is None:
            mixes()
        hits = campaigns()  # beside mixes, the lighter half takes them
        days = _days_per_type(a, n, len(slugs), p.as_of_ns)
        if other is not None:
            other.result()
    block[[pos[f"{s}_days_total"] for s in slugs]] = days
    del days

    # windows are cumulative: bin b holds events in window b but not in window b-1
    # (row-wise, in place: no copy of the block)
    for row in count_rows:
        for b in range(1, n_w + 1):
            block[row[b]] += block[row[b - 1]]
    for i, name in enumerate([*(f"event_count_{d}d" for d in windows), "event_count_total"]):
        acc = block[pos[name]]
        for row in count_rows[:, i]:
            acc += block[row]
    total = block[pos["event_count_total"]]
    last = block[pos["days_since_last_event"]]
    last[:] = np.inf
    for r, first, s in zip(since_rows, first_rows, slugs, strict=True):
        np.fmin(last, block[r], out=last)
        never = np.isinf(block[r])
        block[r][never] = np.nan
        block[first][never] = np.nan
        # mean days between the type's occasions: first to last over the distinct days after
        # the first (NaN below two days; ten order lines of one basket are not ten gaps of 0)
        repeats = block[pos[f"{s}_days_total"]] - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = (block[first] - block[r]) / repeats
        block[pos[f"{s}_mean_gap_days"]] = np.where(repeats > 0, gap, np.nan)
    activity = block[pos["activity_decayed"]]
    for r in decay_rows[engaged]:
        activity += block[r]
    bitmap = bits.reshape(n, span)
    for d in windows:
        block[pos[f"active_days_{d}d"]] = bitmap[:, :d].sum(axis=1)
    del bitmap

    # value (sparse rows)
    vprof = a.prof[a.value_rows].astype(np.int64)
    vbin = np.searchsorted(bounds, p.as_of_ns - a.t[a.value_rows], side="left")
    has = ~np.isnan(a.value)
    np.add.at(flat, value_rows[vbin[has]] * n + vprof[has], a.value[has])
    for b in range(1, n_w + 1):
        block[value_rows[b]] += block[value_rows[b - 1]]
    vcount = np.bincount(vprof[has], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        block[pos["value_mean"]] = np.where(vcount > 0, block[value_rows[n_w]] / vcount, np.nan)

    # shares
    den = np.zeros(n)
    for r in cat_rows:
        den += block[r]
    for rows, denominator in ((cat_rows, den), (ch_rows, total), (src_rows, total)):
        safe = np.where(denominator > 0, denominator, 1.0)
        for r in rows:
            block[r] /= safe

    # email: distinct campaigns opened / clicked in the longest window, capped at sends
    sends = block[count_rows[p.send_index, n_w - 1]]
    for name, n_campaigns in zip(("_email_opens", "_email_clicks"), hits, strict=True):
        block[pos[name]] = np.minimum(n_campaigns, sends)
    block[pos["_email_sends"]] = sends
    return block, how


def _float_column(events: pd.DataFrame, name: str) -> np.ndarray | None:
    if name not in events.columns:
        return None
    col = events[name]
    if col.dtype == np.float64:
        return col.to_numpy()  # a view
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def gather(
    events: pd.DataFrame,
    codes: identity.IdCodes,
    rows: np.ndarray,
    prof: np.ndarray,
    params: FeatureParams,
) -> EventArrays:
    """The eligible rows (positions ``rows`` of ``events``) as :class:`EventArrays`."""
    m, n_types = len(rows), len(params.event_types)
    n_ch, n_cat = len(params.channels), len(params.categories)
    luts = {
        "event_type": vocab_lut(
            codes.columns["event_type"][1], params.event_types, n_types - 1, n_types - 1
        ),
        "channel": vocab_lut(codes.columns["channel"][1], params.channels, n_ch, -1),
        "source": vocab_lut(codes.columns["source"][1], SOURCES, -1, -1),
        "category": vocab_lut(codes.columns["category"][1], params.categories, n_cat, -1),
    }
    limits = {
        "event_type": n_types,
        "channel": n_ch + 1,
        "source": len(SOURCES),
        "category": n_cat + 1,
    }
    out = {k: np.empty(m, dtype=_small_dtype(limits[k])) for k in luts}
    t = np.empty(m, dtype=np.int64)
    values = _float_column(events, "value")

    def fill(slices: list[slice]) -> list[tuple[np.ndarray, np.ndarray]]:
        found = []
        for sl in slices:
            r = rows[sl]
            t[sl] = codes.t[r]
            for k, lut in luts.items():
                out[k][sl] = lut[codes.columns[k][0][r]]
            if values is not None:
                v = values[r]
                nz = np.flatnonzero(~np.isnan(v))
                found.append((nz + sl.start, v[nz]))
        return found

    valued = [x for part in identity.in_two(fill, list(identity.chunks(m))) for x in part]
    value_row_parts, value_parts = [x[0] for x in valued], [x[1] for x in valued]
    etype = out["event_type"]
    campaign_rows = np.flatnonzero((etype == params.open_index) | (etype == params.click_index))
    campaign = np.full(len(campaign_rows), -1, dtype=np.int64)
    if len(campaign_rows) and "campaign_id" in codes.columns:  # coded by the loader
        campaign = codes.columns["campaign_id"][0][rows[campaign_rows]].astype(np.int64)
    elif len(campaign_rows) and "campaign_id" in events.columns:
        column = events["campaign_id"]
        if is_dictionary(column.dtype):
            campaign = identity.encode(column, len(column))[0][rows[campaign_rows]]
        else:
            picked = identity.arrow_strings(column).take(pa.array(rows[campaign_rows]))
            campaign = identity.encode(picked, len(campaign_rows))[0]
        campaign = campaign.astype(np.int64)
    return EventArrays(
        prof=_small_int(np.asarray(prof), 2**31),
        t=t,
        etype=etype,
        channel=out["channel"],
        source=out["source"],
        category=out["category"],
        value_rows=np.concatenate(value_row_parts) if value_row_parts else np.zeros(0, np.int64),
        value=np.concatenate(value_parts) if value_parts else np.zeros(0),
        campaign_rows=campaign_rows,
        campaign=campaign,
    )
