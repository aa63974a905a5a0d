"""Point-in-time behavioural features: one row per eligible profile as of a cutoff.

Only events with ``event_time < as_of`` count, after identity resolution
(:mod:`dmp_ml.identity`). Windows are trailing: an event is in the ``30d`` window when
``as_of - 30 days <= event_time < as_of``. Column families (``{w}`` runs over
``settings.features.windows_days``, ``{type}`` over the event-type vocabulary below):

* identity: ``is_anonymous`` (0/1), ``n_cookies``, ``n_shared_devices``;
* lifecycle: ``tenure_days`` (since first seen), ``days_since_last_event``,
  ``event_count_{w}d``, ``event_count_total``, ``active_days_{w}d`` (how many of the 24-hour
  periods ``(as_of - (k + 1) days, as_of - k days]``, k < w, hold an event),
  ``activity_decayed`` (engagement events weighted ``0.5 ** (age_days / half_life_days)``);
* per event type: ``{type}_count_{w}d``, ``{type}_count_total``, ``days_since_{type}``,
  ``{type}_decayed``. The vocabulary is the well-known types (always present, so the schema is
  stable) plus any other type with at least ``vocab_min_share`` of the events (at most
  ``vocab_max_extra`` of them, the most frequent, ties by name); the rest is ``other_event``;
* money: ``value_sum_{w}d``, ``value_sum_total``, ``value_mean`` (over events with a value);
* mixes: ``category_share_<cat>`` for the top-K categories by event count (plus
  ``category_share_other``; shares of the profile's categorised events), ``channel_share_<ch>``
  (frequent channels by the same rule as types, plus ``channel_share_other``) and
  ``source_share_{first,second,third}_party`` (shares of all the profile's events);
* email: ``email_open_rate_smoothed``, ``email_click_rate_smoothed``: distinct campaigns
  opened (clicked) over sends in the longest window, shrunk to the population rate with a Beta
  prior of ``rate_prior_strength`` pseudo-sends: ``(opens + k * p0) / (sends + k)``;
* profile attributes: numeric ones as float64, datetimes as ``days_since_<col>``, text as
  ``category``. Direct identifiers (``email``, phone, name, address, ip, ``*_id`` ...) and
  identifier-like text columns (more than 1,000 distinct values, or one per row) are never used.
  Attributes are taken as given: supply point-in-time snapshots when training on old cutoffs.

Missing values: ``days_since_*`` and ``value_mean`` are NaN when the event never happened (an
honest "never": LightGBM routes NaN natively; distance-based consumers must impute, e.g. with
the column maximum). Counts, sums and shares are 0 when there is nothing to count.

The 168-bin ``hour_of_week`` matrix counts engagement events (all but
``passive_event_types``) per hour of week in the profile's local time (``profiles.timezone``,
UTC when missing or invalid), hour 0 = Monday 00:00.

Everything is computed with integer codes and ``numpy.bincount`` / ``ufunc.at`` reductions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmp_ml import identity as _id

try:  # private, but documented with NUMPY_MADVISE_HUGEPAGE; used only as a speed hint
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
from dmp_ml.contract import SOURCES, WELL_KNOWN_EVENT_TYPES
from dmp_ml.errors import DataContractError, UnknownProfileError
from dmp_ml.settings import FeatureSettings, Settings
from dmp_ml.times import utc

logger = logging.getLogger(__name__)

FEATURE_VERSION = "1"
HOURS_PER_WEEK = 168
OTHER_EVENT = "other_event"
HOW_PREFIX = "hour_of_week_"
_META_KEY = b"dmp_ml.features"
_DAY_NS = 86_400 * 10**9
_HOUR_NS = 3_600 * 10**9
_QUARTER_NS = 900 * 10**9
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


# --------------------------------------------------------------------------- shared types


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature table holds: names, dtypes, version and the cutoff it describes.

    ``event_types``, ``channels`` and ``categories`` are the vocabularies chosen at build time;
    pass the spec as ``reference`` to :func:`build_features` to get the same columns at another
    cutoff. ``params`` records the window lengths, half-life and population email rates.
    """

    version: str
    as_of: pd.Timestamp
    columns: dict[str, str]
    categorical: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "as_of": self.as_of.isoformat(),
            "columns": dict(self.columns),
            "categorical": list(self.categorical),
            "event_types": list(self.event_types),
            "channels": list(self.channels),
            "categories": list(self.categories),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureSpec:
        return cls(
            version=str(data["version"]),
            as_of=pd.Timestamp(str(data["as_of"])),
            columns=dict(data["columns"]),  # type: ignore[arg-type]
            categorical=list(data.get("categorical", [])),  # type: ignore[arg-type]
            event_types=list(data.get("event_types", [])),  # type: ignore[arg-type]
            channels=list(data.get("channels", [])),  # type: ignore[arg-type]
            categories=list(data.get("categories", [])),  # type: ignore[arg-type]
            params=dict(data.get("params", {})),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class FeatureTable:
    """Features of every eligible profile as of ``spec.as_of``.

    Attributes
    ----------
    frame : DataFrame, shape (n_profiles, n_features)
        Indexed by ``profile_id``; numeric features as float64, string attributes as category.
    hour_of_week : ndarray, shape (n_profiles, 168)
        Engagement counts per local hour of week (hour 0 = Monday 00:00), row-aligned with frame.
    spec : FeatureSpec
    summary : dict
        Counts describing the build (profiles known/anonymous, shared devices, exclusions, ...).
    cookie_map : Series or None
        ``cookie_id -> profile_id`` for cookies a request can be resolved through (see
        :class:`dmp_ml.identity.Resolution`).
    """

    frame: pd.DataFrame
    hour_of_week: np.ndarray
    spec: FeatureSpec
    summary: dict[str, int] = field(default_factory=dict)
    cookie_map: pd.Series | None = None

    @property
    def profile_ids(self) -> pd.Index:
        return self.frame.index

    def __len__(self) -> int:
        return len(self.frame)

    def select(self, ids: Iterable[str]) -> FeatureTable:
        """The rows of ``ids`` that are known, in the order given (unknown ids are skipped).

        Raises UnknownProfileError when none is known.
        """
        wanted = pd.Index(pd.unique(pd.array([str(i) for i in ids], dtype="string")))
        pos = self.frame.index.get_indexer(wanted)
        pos = pos[pos >= 0]
        if len(pos) == 0:
            raise UnknownProfileError("none of the requested profile ids has features")
        return replace(self, frame=self.frame.iloc[pos], hour_of_week=self.hour_of_week[pos])

    # -- persistence ---------------------------------------------------------------------
    def to_parquet(self, path: str | Path) -> Path:
        """One Parquet file: the frame, ``hour_of_week_000..167`` columns, spec and summary."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        how = pd.DataFrame(
            self.hour_of_week,
            index=self.frame.index,
            columns=[f"{HOW_PREFIX}{h:03d}" for h in range(HOURS_PER_WEEK)],
        )
        table = pa.Table.from_pandas(pd.concat([self.frame, how], axis=1), preserve_index=True)
        meta = json.dumps({"spec": self.spec.to_dict(), "summary": self.summary}).encode()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: meta})
        pq.write_table(table, path)
        return path

    @classmethod
    def read_parquet(cls, path: str | Path) -> FeatureTable:
        """Read a file written by :meth:`to_parquet`."""
        path = Path(path)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataContractError(f"{path}: not a readable feature table ({exc})") from exc
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise DataContractError(f"{path}: not a dmp-ml feature table (no spec)")
        meta = json.loads(raw)
        spec = FeatureSpec.from_dict(meta["spec"])
        frame = table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
        frame.index = pd.Index(frame.index.astype("string"), name="profile_id")
        how_cols = [c for c in frame.columns if str(c).startswith(HOW_PREFIX)]
        how = frame[how_cols].to_numpy(dtype=np.float64)
        frame = frame[list(spec.columns)]
        return cls(frame=frame, hour_of_week=how, spec=spec, summary=dict(meta["summary"]))

    def write(self, directory: str | Path) -> Path:
        """A directory: ``features.parquet`` (see :meth:`to_parquet`) and ``cookie_map.parquet``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_parquet(directory / "features.parquet")
        if self.cookie_map is not None:
            self.cookie_map.reset_index().to_parquet(directory / "cookie_map.parquet", index=False)
        return directory

    @classmethod
    def read(cls, directory: str | Path) -> FeatureTable:
        """Read a directory written by :meth:`write`."""
        directory = Path(directory)
        table = cls.read_parquet(directory / "features.parquet")
        cookies = directory / "cookie_map.parquet"
        if cookies.exists():
            frame = pq.read_table(cookies).to_pandas(
                types_mapper={pa.string(): pd.StringDtype()}.get
            )
            table = replace(table, cookie_map=frame.set_index("cookie_id")["profile_id"])
        return table


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class FeatureParams:
    """Everything a partition needs besides its events: vocabularies, windows, cutoff.

    Vocabularies are chosen globally (over all eligible events) so that any partitioning of
    the profiles gives the same columns and values.
    """

    as_of_ns: int
    windows: tuple[int, ...]
    half_life_days: float
    event_types: tuple[str, ...]  # column order; last is OTHER_EVENT
    passive: tuple[bool, ...]  # per event type: not engagement
    channels: tuple[str, ...]
    categories: tuple[str, ...]
    type_slugs: tuple[str, ...]
    channel_slugs: tuple[str, ...]
    category_slugs: tuple[str, ...]

    @property
    def open_index(self) -> int:
        return self.event_types.index("email_open")

    @property
    def click_index(self) -> int:
        return self.event_types.index("email_click")

    @property
    def send_index(self) -> int:
        return self.event_types.index("email_send")

    def columns(self) -> list[str]:
        """Float columns, in order (public first, then the internal ``_email_*`` counts)."""
        w = self.windows
        cols = ["is_anonymous", "n_cookies", "n_shared_devices", "tenure_days"]
        cols += ["days_since_last_event", "event_count_total"]
        cols += [f"event_count_{d}d" for d in w]
        cols += [f"active_days_{d}d" for d in w]
        cols += ["activity_decayed"]
        for s in self.type_slugs:
            cols += [f"{s}_count_{d}d" for d in w]
            cols += [f"{s}_count_total", f"days_since_{s}", f"{s}_decayed"]
        cols += [f"value_sum_{d}d" for d in w] + ["value_sum_total", "value_mean"]
        cols += [f"category_share_{s}" for s in self.category_slugs] + ["category_share_other"]
        cols += [f"channel_share_{s}" for s in self.channel_slugs] + ["channel_share_other"]
        cols += [f"source_share_{s}" for s in SOURCES]
        cols += ["email_open_rate_smoothed", "email_click_rate_smoothed"]
        return cols + _INTERNAL

    def to_dict(self) -> dict[str, Any]:
        return {"windows_days": list(self.windows), "half_life_days": self.half_life_days}


_INTERNAL = ["_email_sends", "_email_opens", "_email_clicks"]


def slug(text: str) -> str:
    """``text`` as a column-safe name part (ASCII, lower case, ``_`` between words)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def _slugs(names: Sequence[str], fallback: str, taken: Iterable[str] = ()) -> tuple[str, ...]:
    """Column-safe, unique slugs (collisions get ``_2``, ``_3`` ...)."""
    used = set(taken)
    out = []
    for i, name in enumerate(names):
        base = slug(name) or f"{fallback}{i}"
        name_slug, k = base, 2
        while name_slug in used:
            name_slug, k = f"{base}_{k}", k + 1
        used.add(name_slug)
        out.append(name_slug)
    return tuple(out)


def _frequent(counts: dict[str, int], min_share: float, max_n: int) -> list[str]:
    """Names with at least ``min_share`` of the total, the ``max_n`` largest, sorted by name."""
    total = sum(counts.values())
    if total == 0 or max_n == 0:
        return []
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return sorted(k for k, v in ranked[:max_n] if v > 0 and v / total >= min_share)


def _top_k(counts: dict[str, int], k: int) -> list[str]:
    ranked = sorted(((n, v) for n, v in counts.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))
    return [n for n, _ in ranked[:k]]


def fit_params(
    as_of: pd.Timestamp,
    fs: FeatureSettings,
    type_counts: dict[str, int],
    channel_counts: dict[str, int],
    category_counts: dict[str, int],
    categories: Sequence[str] | None = None,
    reference: FeatureSpec | None = None,
) -> FeatureParams:
    """Choose the vocabularies from global counts over the eligible events (or a reference)."""
    windows = tuple(sorted({int(w) for w in fs.windows_days}))
    if not windows or windows[0] <= 0:
        raise DataContractError(f"features.windows_days must be positive, got {fs.windows_days}")
    if reference is not None and reference.event_types:
        types = [t for t in reference.event_types if t != OTHER_EVENT]
        channels = list(reference.channels)
        cats = list(reference.categories) if categories is None else list(categories)
    else:
        extra = {k: v for k, v in type_counts.items() if k not in WELL_KNOWN_EVENT_TYPES}
        total = sum(type_counts.values())
        min_n = fs.vocab_min_share * total
        frequent = _frequent(extra, 0.0, fs.vocab_max_extra)
        types = [*WELL_KNOWN_EVENT_TYPES, *[t for t in frequent if extra[t] >= min_n]]
        channels = _frequent(channel_counts, fs.vocab_min_share, fs.vocab_max_extra)
        cats = (
            _top_k(category_counts, fs.top_k_categories) if categories is None else list(categories)
        )
    types = [*types, OTHER_EVENT]
    type_slugs = _slugs(types, "event_type_", taken={"event", "activity"})
    return FeatureParams(
        as_of_ns=int(as_of.value),
        windows=windows,
        half_life_days=float(fs.half_life_days),
        event_types=tuple(types),
        passive=tuple(t in set(fs.passive_event_types) for t in types),
        channels=tuple(channels),
        categories=tuple(cats),
        type_slugs=type_slugs,
        channel_slugs=_slugs(channels, "channel_", taken={"other"}),
        category_slugs=_slugs(cats, "category_", taken={"other"}),
    )


# --------------------------------------------------------------------------- aggregation


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
        keys = np.unique(prof[has] * width + campaign[has])
        out += np.bincount(keys // width, minlength=n)
    return out


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
    bounds = np.array([d * _DAY_NS for d in windows], dtype=np.int64)
    count_rows = np.array(
        [[pos[f"{s}_count_{d}d"] for d in windows] + [pos[f"{s}_count_total"]] for s in slugs],
        dtype=np.int64,
    )
    since_rows = np.array([pos[f"days_since_{s}"] for s in slugs], dtype=np.int64)
    decay_rows = np.array([pos[f"{s}_decayed"] for s in slugs], dtype=np.int64)
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

    def timing() -> None:  # counts per window bin, recency, decay: their own rows of block
        for sl in _id.chunks(len(a)):
            prof = a.prof[sl].astype(np.int64)
            et = a.etype[sl]
            age_ns = p.as_of_ns - a.t[sl]  # > 0
            wbin = np.searchsorted(bounds, age_ns, side="left")  # windows the event is outside
            age = age_ns / _DAY_NS
            np.add.at(flat, count_rows[et, wbin] * n + prof, 1.0)
            np.minimum.at(flat, since_rows[et] * n + prof, age)
            np.add.at(flat, decay_rows[et] * n + prof, np.exp2(age / -p.half_life_days))

    def mixes() -> None:  # active days, category/channel/source counts, hour of week
        for sl in _id.chunks(len(a)):
            prof = a.prof[sl].astype(np.int64)
            t = a.t[sl]
            day = (p.as_of_ns - t - 1) // _DAY_NS  # period k: age in (k, k + 1] days
            recent = day < span
            bits[prof[recent] * span + day[recent]] = 1
            for codes, rows in (
                (a.category[sl], cat_rows),
                (a.channel[sl], ch_rows),
                (a.source[sl], src_rows),
            ):
                ok = codes >= 0
                np.add.at(flat, rows[codes[ok]] * n + prof[ok], 1.0)
            eng = engaged[a.etype[sl]]
            if clock is None:
                hours = (t[eng] // _HOUR_NS + 72) % HOURS_PER_WEEK
            else:
                hours = clock.hour_of_week(t[eng], tz_codes[prof[eng]])
            np.add.at(how_flat, prof[eng] * HOURS_PER_WEEK + hours, 1.0)

    # the two halves write disjoint memory, so on a big log they run side by side (NumPy
    # releases the GIL in these loops); each keeps row order, so sums are the same either way
    if len(a) >= _id.PARALLEL_ROWS and (os.cpu_count() or 1) > 1:
        with ThreadPoolExecutor(max_workers=1) as pool:
            other = pool.submit(mixes)
            timing()
            other.result()
    else:
        timing()
        mixes()

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
    for r in since_rows:
        np.fmin(last, block[r], out=last)
        never = np.isinf(block[r])
        block[r][never] = np.nan
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
    cprof = a.prof[a.campaign_rows].astype(np.int64)
    cet = a.etype[a.campaign_rows]
    cin = p.as_of_ns - a.t[a.campaign_rows] <= bounds[-1]
    for name, idx in (("_email_opens", p.open_index), ("_email_clicks", p.click_index)):
        rows = cin & (cet == idx)
        hits = _unique_per_profile(cprof[rows], a.campaign[rows], n)
        block[pos[name]] = np.minimum(hits, sends)
    block[pos["_email_sends"]] = sends
    return block, how


class LocalClock:
    """Local hour of week (0 = Monday 00:00) of UTC instants in several time zones.

    UTC offsets are tabulated per quarter hour over the span of ``t`` for the zones listed in
    ``used`` (indices into ``tz_names``), so DST and half-hour zones are exact and each lookup
    is one array index.
    """

    def __init__(self, tz_names: Sequence[str], t: np.ndarray, used: np.ndarray) -> None:
        self.tz_names = list(tz_names)
        self.used = np.unique(used[used >= 0])
        self.row = np.full(len(self.tz_names) + 1, -1, dtype=np.int64)
        self.row[self.used] = np.arange(len(self.used))
        self.bmin, self.table = 0, None
        if len(t) == 0 or len(self.used) == 0:
            return
        self.bmin = int(t.min()) // _QUARTER_NS
        bmax = int(t.max()) // _QUARTER_NS
        if len(self.used) * (bmax - self.bmin + 1) <= 50_000_000:
            self.table = np.stack(
                [_offset_table(self.tz_names[z], self.bmin, bmax) for z in self.used]
            )

    def hour_of_week(self, t: np.ndarray, tz: np.ndarray) -> np.ndarray:
        """``t``: UTC nanoseconds; ``tz``: index into ``tz_names`` (-1 = UTC)."""
        how = (t // _HOUR_NS + 72) % HOURS_PER_WEEK  # 1970-01-01 was a Thursday
        local = np.flatnonzero(tz >= 0)
        if len(local) == 0:
            return how
        b = t[local] // _QUARTER_NS
        codes = tz[local]
        if self.table is not None:
            lb = b + self.table[self.row[codes], b - self.bmin]
        else:  # a very long span and many zones: convert zone by zone
            lb = np.empty_like(b)
            for z in np.unique(codes):
                m = codes == z
                utc = pd.to_datetime(t[local][m], utc=True)
                lb[m] = utc.tz_convert(self.tz_names[z]).tz_localize(None).asi8 // _QUARTER_NS
        how[local] = (lb // 4 + 72) % HOURS_PER_WEEK
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
    return LocalClock(tz_names, t[tz >= 0], tz).hour_of_week(t, tz)


# --------------------------------------------------------------------------- profiles


def profile_timezones(
    profile_index: pd.Index, profiles: pd.DataFrame | None
) -> tuple[np.ndarray, list[str], int]:
    """Per output profile: zone code (-1 = UTC), zone names, and how many names were invalid."""
    codes = np.full(len(profile_index), -1, dtype=np.int64)
    if profiles is None or "timezone" not in profiles.columns or len(profile_index) == 0:
        return codes, [], 0
    pos = _id.lookup(
        pa.array(profile_index.to_numpy(dtype=object)), _arrow_ids(_profile_id_column(profiles))
    )
    zones = _id.arrow_strings(profiles["timezone"].astype("string"))
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
    codes = _id.lookup(mine, pa.array(valid, type=pa.string()))
    n_invalid = int(np.count_nonzero(_id.lookup(mine, pa.array(invalid, type=pa.string())) >= 0))
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
    arr = _id.arrow_strings(ids.astype("string"))
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
    pos = _id.lookup(pa.array(profile_index.to_numpy(dtype=object)), _arrow_ids(ids))
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
            ns = _id.time_ns(col)[pos[found]]
            days = np.where((ns != _NAT) & (ns < as_of.value), (as_of.value - ns) / _DAY_NS, np.nan)
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


# --------------------------------------------------------------------------- assembly


def finalize(
    block: np.ndarray,
    how: np.ndarray,
    resolved_profiles: pd.DataFrame,
    params: FeatureParams,
    fs: FeatureSettings,
    as_of: pd.Timestamp,
    profiles: pd.DataFrame | None,
    summary: dict[str, int],
    reference: FeatureSpec | None = None,
    cookie_map: pd.Series | None = None,
    attributes: pd.DataFrame | None = None,
) -> FeatureTable:
    """Identity columns, population-smoothed rates, attributes, spec: the finished table.

    ``block`` is the (n_columns, n) output of :func:`aggregate` for all profiles, rows in
    ``resolved_profiles`` order; it is completed in place.
    """
    cols = params.columns()
    pos = {c: i for i, c in enumerate(cols)}
    block[pos["is_anonymous"]] = resolved_profiles["is_anonymous"].to_numpy(dtype=np.float64)
    block[pos["n_cookies"]] = resolved_profiles["n_cookies"].to_numpy(dtype=np.float64)
    block[pos["n_shared_devices"]] = resolved_profiles["n_shared_devices"].to_numpy(np.float64)
    first_ns = pd.DatetimeIndex(resolved_profiles["first_seen"]).as_unit("ns").asi8
    block[pos["tenure_days"]] = (as_of.value - first_ns) / _DAY_NS
    sends = block[pos["_email_sends"]]
    k = float(fs.rate_prior_strength)
    prior: dict[str, float] = {}
    for name, raw in (("open", "_email_opens"), ("click", "_email_clicks")):
        hits = block[pos[raw]]
        total_sends = float(sends.sum())
        p0 = float(hits.sum()) / total_sends if total_sends > 0 else 0.0
        prior[f"email_{name}_rate_population"] = p0
        block[pos[f"email_{name}_rate_smoothed"]] = (hits + k * p0) / (sends + k)
    public = len(cols) - len(_INTERNAL)
    numeric = pd.DataFrame(
        block[:public].T, index=resolved_profiles.index, columns=cols[:public], copy=False
    )
    attrs = (
        profile_attributes(resolved_profiles.index, profiles, as_of, cols)
        if attributes is None
        else attributes
    )
    frame = pd.concat([numeric, attrs], axis=1) if len(attrs.columns) else numeric
    if reference is not None:
        frame = _align(frame, reference)
    categorical = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    spec = FeatureSpec(
        version=FEATURE_VERSION,
        as_of=as_of,
        columns={c: ("category" if c in categorical else "float64") for c in frame.columns},
        categorical=categorical,
        event_types=list(params.event_types),
        channels=list(params.channels),
        categories=list(params.categories),
        params={
            **params.to_dict(),
            "rate_prior_strength": k,
            "cookie_ttl_days": fs.cookie_ttl_days,
            "passive_event_types": list(fs.passive_event_types),
            **prior,
        },
    )
    summary = {**summary, "features": frame.shape[1]}
    return FeatureTable(
        frame=frame, hour_of_week=how, spec=spec, summary=summary, cookie_map=cookie_map
    )


def _align(frame: pd.DataFrame, reference: FeatureSpec) -> pd.DataFrame:
    """The reference spec's columns, in its order (absent ones NaN / empty category)."""
    out = {}
    for name, dtype in reference.columns.items():
        if name in frame.columns:
            out[name] = frame[name]
        elif dtype == "category":
            out[name] = pd.Categorical.from_codes(np.full(len(frame), -1), categories=[])
        else:
            out[name] = np.full(len(frame), np.nan)
    return pd.DataFrame(out, index=frame.index)


def feature_settings(settings: Settings | FeatureSettings | None) -> FeatureSettings:
    if settings is None:
        return Settings().features
    if isinstance(settings, FeatureSettings):
        return settings
    return settings.features


def _vocab_lut(dictionary: pa.Array, vocab: Sequence[str], other: int, null: int) -> np.ndarray:
    """Map codes of ``dictionary`` to indices of ``vocab``; index with ``codes`` (-1 -> null)."""
    idx = _id.lookup(dictionary, pa.array(list(vocab), type=pa.string()))
    return np.append(np.where(idx >= 0, idx, other), null).astype(np.int64)


def _counts(codes: np.ndarray, dictionary: pa.Array, rows: np.ndarray) -> dict[str, int]:
    """Rows per distinct value among ``rows`` (nulls left out)."""
    acc = np.zeros(len(dictionary) + 1, dtype=np.int64)
    for sl in _id.chunks(len(rows)):
        acc += np.bincount(codes[rows[sl]] + 1, minlength=len(dictionary) + 1)
    names = dictionary.to_pylist()
    return {str(names[i]): int(v) for i, v in enumerate(acc[1:]) if v > 0}


def build_features(
    events: pd.DataFrame,
    as_of: pd.Timestamp | str,
    profiles: pd.DataFrame | None = None,
    consent: pd.DataFrame | None = None,
    settings: Settings | FeatureSettings | None = None,
    *,
    links: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
    categories: Sequence[str] | None = None,
    reference: FeatureSpec | None = None,
) -> FeatureTable:
    """Features of every eligible profile from the events before ``as_of``.

    Parameters
    ----------
    events : contract event frame.
    as_of : cutoff (naive = UTC); only ``event_time < as_of`` counts.
    profiles : optional profile attributes (``profile_id``, optional ``timezone``, ...).
    consent : optional consent records; see :mod:`dmp_ml.identity`.
    settings : :class:`~dmp_ml.settings.Settings` (or its ``features`` section); None = defaults.
        ``features.engine == "dask"`` runs :func:`dmp_ml.scale.build_features_dask`.
    links : optional extra cookie/profile links.
    erased : ids on the erasure list.
    categories : the category vocabulary to use instead of the top-K at ``as_of`` (e.g.
        ``train_table.spec.categories`` when scoring).
    reference : a training table's spec: reuse its vocabularies and return exactly its columns.

    Returns
    -------
    FeatureTable
        ``frame`` indexed by ``profile_id`` (sorted), ``hour_of_week`` (n, 168), ``spec``,
        ``summary`` (identity counts plus ``features``, ``timezones_invalid``) and ``cookie_map``.
    """
    fs = feature_settings(settings)
    if fs.engine == "dask":
        from dmp_ml.scale import build_features_dask

        return build_features_dask(
            events,
            as_of,
            profiles,
            consent,
            settings,
            links=links,
            erased=erased,
            categories=categories,
            reference=reference,
        )
    # Arrow work (encoding, lookups, sorting) runs in a helper thread while NumPy works here
    with small_pages(), ThreadPoolExecutor(max_workers=1) as helper:
        codes = _id.encode_ids(events)
        extra = helper.submit(_id.encode_many, events, _EXTRA_COLUMNS, 1)
        return _build(
            events,
            codes,
            extra,
            helper,
            utc(as_of, "as_of"),
            profiles,
            consent,
            fs,
            links,
            erased,
            categories,
            reference,
        )


def _build(
    events: pd.DataFrame,
    codes: _id.IdCodes,
    extra: Future[dict[str, tuple[np.ndarray, pa.Array]]] | None,
    helper: ThreadPoolExecutor,
    as_of: pd.Timestamp,
    profiles: pd.DataFrame | None,
    consent: pd.DataFrame | None,
    fs: FeatureSettings,
    links: pd.DataFrame | None,
    erased: Iterable[str],
    categories: Sequence[str] | None,
    reference: FeatureSpec | None,
) -> FeatureTable:
    """The pandas engine over encoded ids; ``extra`` (the other encoded columns) may still be
    in flight on ``helper`` while identity is resolved."""
    res = _id.resolve_codes(codes, as_of, fs, consent=consent, links=links, erased=erased)
    if extra is not None:
        codes = _id.IdCodes(codes.n, codes.t, {**codes.columns, **extra.result()})
    params = params_from_codes(codes, res.rows, as_of, fs, categories, reference)
    arrays = gather(events, codes, res.rows, res.profile_codes, params)
    resolved, summary = res.profiles, dict(res.summary)
    cookie_map = helper.submit(res.cookie_map)
    attributes = helper.submit(
        profile_attributes, resolved.index, profiles, as_of, params.columns()
    )
    del codes, res  # the encoded input is no longer needed here: keep the peak memory down
    tz_codes, tz_names, n_invalid = profile_timezones(resolved.index, profiles)
    block, how = aggregate(arrays, len(resolved), params, tz_codes, tz_names)
    del arrays
    summary["timezones_invalid"] = n_invalid
    return finalize(
        block,
        how,
        resolved,
        params,
        fs,
        as_of,
        profiles,
        summary,
        reference,
        cookie_map.result(),
        attributes.result(),
    )


class FeatureBuilder:
    """Encode an event log once, then build features (or resolve identity) at many cutoffs.

    Training builds one table per snapshot cutoff; encoding the log's text columns is the
    largest fixed cost of a build, and this pays it once. ``build(as_of)`` equals
    ``build_features(events, as_of, profiles, consent, settings, links=..., erased=...)``.
    """

    def __init__(
        self,
        events: pd.DataFrame,
        profiles: pd.DataFrame | None = None,
        consent: pd.DataFrame | None = None,
        settings: Settings | FeatureSettings | None = None,
        *,
        links: pd.DataFrame | None = None,
        erased: Iterable[str] = (),
    ) -> None:
        self.events = events
        self.profiles = profiles
        self.consent = consent
        self.settings = settings
        self.links = links
        self.erased = tuple(str(e) for e in erased)
        self._fs = feature_settings(settings)
        with small_pages():
            self._codes = _id.encode_ids(events, extra=_EXTRA_COLUMNS)

    def build(
        self,
        as_of: pd.Timestamp | str,
        *,
        categories: Sequence[str] | None = None,
        reference: FeatureSpec | None = None,
    ) -> FeatureTable:
        """Features as of ``as_of`` (see :func:`build_features`)."""
        if self._fs.engine == "dask":
            return build_features(
                self.events,
                as_of,
                self.profiles,
                self.consent,
                self.settings,
                links=self.links,
                erased=self.erased,
                categories=categories,
                reference=reference,
            )
        with small_pages(), ThreadPoolExecutor(max_workers=1) as helper:
            return _build(
                self.events,
                self._codes,
                None,
                helper,
                utc(as_of, "as_of"),
                self.profiles,
                self.consent,
                self._fs,
                self.links,
                self.erased,
                categories,
                reference,
            )

    def resolve(self, as_of: pd.Timestamp | str) -> _id.Resolution:
        """Identity as of ``as_of`` (see :func:`dmp_ml.identity.resolve_identity`)."""
        res = _id.resolve_codes(
            self._codes,
            as_of,
            self._fs,
            consent=self.consent,
            links=self.links,
            erased=self.erased,
        )
        return _id.resolution_from(self.events, res)


_EXTRA_COLUMNS = ["event_type", "channel", "source", "category"]


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """Build without NumPy's transparent-huge-page hint, unless ``NUMPY_MADVISE_HUGEPAGE`` is set.

    The build writes ~1.5 GB of fresh output per 10M events in scattered order; on the 2-core
    VMs we target, faulting that memory in as 2 MB huge pages costs 1.5-4x more than as 4 kB
    pages (measured). The hint only affects speed; it is restored on exit.
    """
    setter = getattr(_multiarray, "_set_madvise_hugepage", None)
    if setter is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)


def params_from_codes(
    codes: _id.IdCodes,
    rows: np.ndarray,
    as_of: pd.Timestamp,
    fs: FeatureSettings,
    categories: Sequence[str] | None,
    reference: FeatureSpec | None,
) -> FeatureParams:
    """Global vocabularies from the encoded columns of the eligible rows."""
    return fit_params(
        as_of,
        fs,
        _counts(*codes.columns["event_type"], rows),
        _counts(*codes.columns["channel"], rows),
        _counts(*codes.columns["category"], rows),
        categories=categories,
        reference=reference,
    )


def _float_column(events: pd.DataFrame, name: str) -> np.ndarray | None:
    if name not in events.columns:
        return None
    col = events[name]
    if col.dtype == np.float64:
        return col.to_numpy()  # a view
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def gather(
    events: pd.DataFrame,
    codes: _id.IdCodes,
    rows: np.ndarray,
    prof: np.ndarray,
    params: FeatureParams,
) -> EventArrays:
    """The eligible rows (positions ``rows`` of ``events``) as :class:`EventArrays`."""
    m, n_types = len(rows), len(params.event_types)
    n_ch, n_cat = len(params.channels), len(params.categories)
    luts = {
        "event_type": _vocab_lut(
            codes.columns["event_type"][1], params.event_types, n_types - 1, n_types - 1
        ),
        "channel": _vocab_lut(codes.columns["channel"][1], params.channels, n_ch, -1),
        "source": _vocab_lut(codes.columns["source"][1], SOURCES, -1, -1),
        "category": _vocab_lut(codes.columns["category"][1], params.categories, n_cat, -1),
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

    valued = [x for part in _id.in_two(fill, list(_id.chunks(m))) for x in part]
    value_row_parts, value_parts = [x[0] for x in valued], [x[1] for x in valued]
    etype = out["event_type"]
    campaign_rows = np.flatnonzero((etype == params.open_index) | (etype == params.click_index))
    campaign = np.full(len(campaign_rows), -1, dtype=np.int64)
    if len(campaign_rows) and "campaign_id" in events.columns:
        col = _id.arrow_strings(events["campaign_id"])
        picked = col.take(pa.array(rows[campaign_rows]))
        campaign = _id.encode(picked, len(campaign_rows))[0].astype(np.int64)
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
