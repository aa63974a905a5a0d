"""Identity graph and profile lifecycle: which events belong to which eligible profile.

Rules, all evaluated on events with ``event_time < as_of`` only:

* **Links.** An event carrying both a ``cookie_id`` and a ``profile_id`` links the two; so does
  each row of the optional ``links`` frame (``cookie_id``, ``profile_id`` and, if present, a
  ``linked_at`` time that must be before ``as_of``).
* **Attribution.** An event with a ``profile_id`` belongs to that profile. A cookie-only event
  belongs to the one profile its cookie is linked to; a cookie never linked to any profile is an
  anonymous profile ``anon:<cookie_id>``.
* **Shared devices.** A cookie linked to two or more profiles is a shared (household) device.
  Profiles are never merged through it, and its *cookie-only* events are attributed to nobody:
  they are dropped and counted in ``events_unattributed_shared_device`` (we cannot tell who was
  at the keyboard, and guessing would leak one person's behaviour into another's profile).
  Events on it that carry a ``profile_id`` still belong to that profile.
* **Expiry.** Cookies expire, customers do not. A cookie whose last event is more than
  ``cookie_ttl_days`` before ``as_of`` is expired: it no longer resolves in ``cookie_map``, and
  an anonymous profile built on it goes with it. A known profile (one with a ``profile_id``, in
  the events or the links) stays a profile however old its last event: a lapsed customer is who
  a win-back campaign targets, and its recency features say how lapsed it is. Old events of an
  expired cookie linked to a known profile still belong to that profile. Only when
  ``profile_ttl_days`` is set does a known profile whose last event is older than that drop out
  (counted in ``profiles_expired`` with the expired anonymous ones).
* **Consent.** For ``settings.consent_purpose``, the latest record per id wins (a record with a
  ``profile_id`` is about that profile, otherwise about its ``cookie_id``; on equal timestamps a
  withdrawal wins). Consent is a *current state*, not an event: the latest record applies
  whatever its time relative to ``as_of``, so a withdrawal is honoured by every computation made
  after it, including historical training snapshots. A withdrawn profile is removed entirely
  (with the cookies attributed to it, which never reappear as anonymous profiles); a withdrawn
  cookie's events are removed before the graph is built (so an anonymous profile built on it
  disappears). Ids without a record are kept.
* **Erasure.** Erased ids (profile ids, or ``anon:<cookie_id>``) are removed like withdrawals.

Exclusion counts in the summary are disjoint and applied in that order: erasure, consent, expiry.
Everything is vectorised: ids are dictionary-encoded once (Arrow), the graph is solved with
``numpy`` reductions over integer codes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dmp_ml.codes import ColumnCodes
from dmp_ml.errors import DataContractError
from dmp_ml.rows import distinct, filled_indices, is_dictionary
from dmp_ml.settings import FeatureSettings
from dmp_ml.times import utc

logger = logging.getLogger(__name__)

ID_COLUMNS = ("cookie_id", "profile_id")
"""The event columns that identify who acted: identity links them."""

ANON_PREFIX = "anon:"
T = TypeVar("T")
_DAY_NS = 86_400 * 10**9
_NAT = np.iinfo(np.int64).min


@dataclass(frozen=True)
class Resolution:
    """The resolved identity graph as of a cutoff.

    Attributes
    ----------
    events : DataFrame
        Events with ``event_time < as_of`` that belong to eligible profiles, in input order, with
        the input's columns; ``profile_id`` is replaced by the resolved profile (never null) as a
        categorical whose categories are ``profiles.index`` (so ``.cat.codes`` are row positions
        in ``profiles``).
    profiles : DataFrame
        One row per eligible profile, indexed by ``profile_id`` (sorted): ``is_anonymous``,
        ``n_cookies`` (cookies linked to it, shared ones included), ``n_shared_devices``,
        ``n_events``, ``first_seen``, ``last_seen`` (UTC).
    cookie_map : Series
        ``cookie_id -> profile_id`` for every cookie a request can be resolved through: seen
        before ``as_of``, not expired, not shared, not withdrawn, owner eligible (anonymous
        cookies map to ``anon:<cookie_id>``). Indexed by ``cookie_id`` (sorted).
    summary : dict of str to int
        ``profiles_known``, ``profiles_anonymous``, ``shared_devices``, ``expired_cookies``,
        ``profiles_expired`` (anonymous profiles whose cookie expired, plus known profiles beyond
        ``profile_ttl_days`` when set: ``known_profiles_expired``), ``profiles_lapsed`` (known
        profiles kept although unseen for ``cookie_ttl_days``), ``excluded_by_consent``,
        ``excluded_by_erasure``,
        ``cookies_withdrawn``, ``events_in``, ``events_before_as_of``, ``events_used``,
        ``events_unattributed_shared_device``, ``events_excluded_by_consent``,
        ``events_excluded_by_erasure``, ``events_expired``, ``cookies_resolvable``.
    as_of : Timestamp
    """

    events: pd.DataFrame
    profiles: pd.DataFrame
    cookie_map: pd.Series
    summary: dict[str, int] = field(default_factory=dict)
    as_of: pd.Timestamp | None = None


def resolve_identity(
    events: pd.DataFrame,
    as_of: pd.Timestamp | str,
    settings: FeatureSettings | Any | None = None,
    *,
    consent: pd.DataFrame | None = None,
    links: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
) -> Resolution:
    """Resolve every event before ``as_of`` to an eligible profile (rules in the module doc).

    Parameters
    ----------
    events : contract event frame (``event_time``, ``cookie_id``, ``profile_id``, ...).
    as_of : cutoff; naive timestamps are UTC.
    settings : :class:`FeatureSettings` (or the whole ``Settings``); ``cookie_ttl_days`` and
        ``consent_purpose`` are used.
    consent : optional consent records (``profile_id``/``cookie_id``, ``purpose``, ``granted``,
        ``updated_at``).
    links : optional extra ``cookie_id``/``profile_id`` pairs (e.g. a CRM match table).
    erased : profile ids (or ``anon:<cookie_id>``) on the erasure list.
    """
    settings = getattr(settings, "features", settings) or FeatureSettings()
    codes = encode_ids(events)
    res = resolve_codes(codes, as_of, settings, consent=consent, links=links, erased=erased)
    return resolution_from(events, res)


def resolution_from(
    events: pd.DataFrame, res: Resolved, columns: Sequence[str] | None = None
) -> Resolution:
    """The public :class:`Resolution` of a :class:`Resolved` over ``events``; its events hold
    only ``columns`` (and ``profile_id``) when given, so the other columns are not copied."""
    if columns is not None:
        events = events[[c for c in events.columns if c in columns or c == "profile_id"]]
    if len(res.rows) == len(events):  # every row used: no copy of the log
        frame = events
    else:
        frame = events.iloc[res.rows]
        if isinstance(events.index, pd.RangeIndex):
            frame = frame.reset_index(drop=True)
    resolved = pd.Categorical.from_codes(res.profile_codes, dtype=res.profile_dtype)
    frame = frame.assign(profile_id=resolved)
    return Resolution(
        events=frame,
        profiles=res.profiles,
        cookie_map=res.cookie_map(),
        summary=dict(res.summary),
        as_of=res.as_of,
    )


# --------------------------------------------------------------------------- encoding helpers


def time_ns(col: pd.Series) -> np.ndarray:
    """UTC nanoseconds since the epoch (int64; NaT -> int64 min)."""
    if not pd.api.types.is_datetime64_any_dtype(col):
        raise DataContractError(f"events.event_time must be a datetime column, got {col.dtype}")
    values = col.array
    if not isinstance(values, pd.arrays.DatetimeArray):
        values = pd.DatetimeIndex(col).array
    if values.unit != "ns":
        values = values.as_unit("ns")
    # the column's own integers where it is held in nanoseconds (a loaded log): a training
    # keeps both through every step. Read-only: they are the column's values.
    ns = values.asi8.view()
    ns.flags.writeable = False
    return ns


def arrow_strings(col: pd.Series) -> pa.Array | pa.ChunkedArray:
    """A text column as an Arrow string array without copying when it is Arrow-backed."""
    values = col.array
    if isinstance(col.dtype, pd.CategoricalDtype):
        values = col.astype(object).array
    if hasattr(values, "__arrow_array__"):
        arr = values.__arrow_array__()
    else:
        arr = pa.array(np.asarray(values, dtype=object), from_pandas=True)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr


def encode(
    col: pd.Series | pa.Array | pa.ChunkedArray | None, n: int
) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode a text column: int32 codes (-1 for null) and the distinct values.

    Codes follow first appearance; use them only as group keys, never as an order.
    """
    if col is None:
        return np.full(n, -1, dtype=np.int32), pa.array([], type=pa.string())
    if isinstance(col, pd.Series) and is_dictionary(col.dtype):
        return _encode_dictionaries(col.array.__arrow_array__())
    if isinstance(col, pd.Series) and isinstance(col.dtype, pd.CategoricalDtype):
        codes = np.asarray(col.cat.codes, dtype=np.int32)
        return codes, pa.array(np.asarray(col.cat.categories.astype(str), dtype=object))
    arr = arrow_strings(col) if isinstance(col, pd.Series) else col
    if isinstance(arr, pa.ChunkedArray) and arr.num_chunks == 1:
        arr = arr.chunk(0)
    if isinstance(arr, pa.ChunkedArray) and arr.num_chunks > 1:
        # one hash table across chunks: Arrow gives every chunk the same final dictionary
        # (checked; otherwise fall back to one combined array)
        chunked = pc.dictionary_encode(arr).chunks
        if _same_dictionary(chunked):
            codes = np.concatenate([filled_indices(c.indices, -1) for c in chunked]).astype(
                np.int32, copy=False
            )
            return codes, _plain(chunked[0].dictionary)
    if isinstance(arr, pa.ChunkedArray):
        try:
            arr = arr.combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowCapacityError):
            arr = pa.concat_arrays([c.cast(pa.large_string()) for c in arr.chunks])
    enc = pc.dictionary_encode(arr)
    codes = filled_indices(enc.indices, -1).astype(np.int32, copy=False)
    return codes, _plain(enc.dictionary)


def _encode_dictionaries(arr: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """:func:`encode` of a dictionary-encoded column (a dictionary per chunk, as Parquet text is
    read), worked mostly on the dictionaries (see :class:`dmp_ml.codes.ColumnCodes`)."""
    codes = ColumnCodes()
    codes.add(arr)
    return codes.codes()


def _plain(dictionary: pa.Array) -> pa.Array:
    return dictionary.cast(pa.string()) if pa.types.is_large_string(dictionary.type) else dictionary


def _same_dictionary(chunks: list[pa.DictionaryArray]) -> bool:
    """Whether all chunks share one dictionary (same length and buffers)."""

    def key(d: pa.Array) -> tuple[int, ...]:
        return (len(d), *(b.address if b is not None else 0 for b in d.buffers()))

    first = key(chunks[0].dictionary)
    return all(key(c.dictionary) == first for c in chunks[1:])


def encode_many(
    frame: pd.DataFrame, columns: list[str], threads: int | None = None
) -> dict[str, tuple[np.ndarray, pa.Array]]:
    """Encode several columns concurrently (Arrow releases the GIL); absent columns are all null."""
    n = len(frame)
    threads = threads or min(len(columns), os.cpu_count() or 1)

    def one(name: str) -> tuple[np.ndarray, pa.Array]:
        return encode(frame[name] if name in frame.columns else None, n)

    if threads <= 1 or n < 200_000:
        return {c: one(c) for c in columns}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(columns, pool.map(one, columns), strict=True))


def lookup(values: Iterable[str] | pa.Array | pd.Series, vocab: pa.Array) -> np.ndarray:
    """Positions of ``values`` in ``vocab`` (int64, -1 when absent or null)."""
    if isinstance(values, pd.Series):
        arr = arrow_strings(values)
    elif isinstance(values, pa.Array | pa.ChunkedArray):
        arr = values
    else:
        arr = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    found = pc.index_in(arr, value_set=vocab)
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass(frozen=True)
class IdCodes:
    """The input's event times and dictionary-encoded id columns (plus any extra columns)."""

    n: int
    t: np.ndarray
    columns: dict[str, tuple[np.ndarray, pa.Array]]

    @property
    def cookie(self) -> tuple[np.ndarray, pa.Array]:
        return self.columns["cookie_id"]

    @property
    def profile(self) -> tuple[np.ndarray, pa.Array]:
        return self.columns["profile_id"]


def check_events(events: pd.DataFrame) -> None:
    """Raise :class:`DataContractError` unless ``events`` has what identity reads."""
    if not isinstance(events, pd.DataFrame):
        raise DataContractError(f"events must be a DataFrame, got {type(events).__name__}")
    if "event_time" not in events.columns:
        raise DataContractError("events: missing required column 'event_time'")
    if "cookie_id" not in events.columns and "profile_id" not in events.columns:
        raise DataContractError("events: need a cookie_id or a profile_id column (or both)")


def encode_ids(
    events: pd.DataFrame,
    extra: Iterable[str] = (),
    encoded: Mapping[str, tuple[np.ndarray, pa.Array]] | None = None,
) -> IdCodes:
    """Validate the event frame's shape and encode ``cookie_id``, ``profile_id`` (and ``extra``).

    ``encoded``: columns already encoded by :func:`encode` (e.g. by the loader, see
    ``LoadResult.encoded``), row for row with ``events``; they are used as given.
    """
    check_events(events)
    columns = [*ID_COLUMNS, *[c for c in extra if c not in ID_COLUMNS]]
    t = time_ns(events["event_time"])
    return IdCodes(n=len(events), t=t, columns=encode_given(events, columns, encoded))


def encode_given(
    events: pd.DataFrame,
    columns: list[str],
    encoded: Mapping[str, tuple[np.ndarray, pa.Array]] | None = None,
    threads: int | None = None,
) -> dict[str, tuple[np.ndarray, pa.Array]]:
    """:func:`encode_many` of ``columns``, taking those already in ``encoded`` (row for row
    with ``events``) as given."""
    given = {c: v for c, v in (encoded or {}).items() if c in columns and len(v[0]) == len(events)}
    done = encode_many(events, [c for c in columns if c not in given], threads)
    out = {c: given.get(c) or done[c] for c in columns}
    return {c: (narrowed(*out[c]) if c not in ID_COLUMNS else out[c]) for c in columns}


def narrowed(codes: np.ndarray, values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A column's codes (-1: missing) in the narrowest signed integers that also hold the
    number of its values (a count by code shifts them by one): the few event types,
    channels, sources and categories of a log cost one byte an event, not four, in a
    training that keeps them through every step."""
    for dtype in (np.int8, np.int16):
        if len(values) < np.iinfo(dtype).max:
            return codes.astype(dtype), values
    return codes, values


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Resolved:
    """Identity resolution over integer codes (what the feature builders consume).

    ``rows`` are positions (into the input frame) of the events used, in input order;
    ``profile_codes`` their row in ``profiles`` (sorted by id).
    """

    as_of: pd.Timestamp
    rows: np.ndarray
    profile_codes: np.ndarray
    profiles: pd.DataFrame
    summary: dict[str, int]
    _ids: pa.Array
    _cookie_ids: pa.Array
    _cookie_profile: np.ndarray

    @property
    def profile_dtype(self) -> pd.CategoricalDtype:
        return pd.CategoricalDtype(self.profiles.index, ordered=False)

    def cookie_map(self) -> pd.Series:
        """``cookie_id -> profile_id`` for resolvable cookies, sorted by cookie id."""
        return self.links()()

    def links(self) -> Callable[[], pd.Series]:
        """:meth:`cookie_map` to build on first use, holding its ids only (not the rows)."""
        return partial(_cookie_map, self._ids, self._cookie_ids, self._cookie_profile)


def _cookie_map(ids: pa.Array, cookie_ids: pa.Array, cookie_profile: np.ndarray) -> pd.Series:
    """``cookie_ids -> ids[cookie_profile]``, sorted by cookie id."""
    order = pc.sort_indices(cookie_ids)
    index = pd.Index(pd.array(cookie_ids.take(order), dtype="string"), name="cookie_id")
    owners = ids.take(pa.array(cookie_profile[order.to_numpy()]))
    return pd.Series(pd.array(owners, dtype="string"), index=index, name="profile_id")


def latest_consent(consent: pd.DataFrame | None, purpose: str) -> tuple[list[str], list[str]]:
    """Profile ids and cookie ids whose latest record for ``purpose`` is a withdrawal."""
    if consent is None or len(consent) == 0:
        return [], []
    missing = [c for c in ("purpose", "granted", "updated_at") if c not in consent.columns]
    if missing or ("profile_id" not in consent.columns and "cookie_id" not in consent.columns):
        raise DataContractError(
            "consent: need profile_id or cookie_id, purpose, granted, updated_at; "
            f"missing {missing}"
        )
    rec = pd.DataFrame(
        {
            "profile_id": consent.get("profile_id", pd.Series(pd.NA, index=consent.index)),
            "cookie_id": consent.get("cookie_id", pd.Series(pd.NA, index=consent.index)),
            "purpose": consent["purpose"].astype("string").str.strip().str.lower(),
            "granted": consent["granted"].astype("boolean").fillna(False).astype(bool),
            "t": time_ns(consent["updated_at"]),
        }
    )
    rec = rec[rec["purpose"] == purpose.lower()]
    is_profile = rec["profile_id"].notna()
    rec = rec.assign(
        kind=np.where(is_profile, "p", "c"),
        key=rec["profile_id"].astype("string").where(is_profile, rec["cookie_id"].astype("string")),
        withdrawn=~rec["granted"],
    )
    rec = rec[rec["key"].notna()]
    # latest record wins; on a tie the withdrawal wins (sorts last)
    rec = rec.sort_values(["t", "withdrawn"], kind="stable")
    latest = rec.drop_duplicates(["kind", "key"], keep="last")
    out = latest[latest["withdrawn"]]
    profiles = out.loc[out["kind"] == "p", "key"].astype(str).tolist()
    cookies = out.loc[out["kind"] == "c", "key"].astype(str).tolist()
    return profiles, cookies


def link_pairs(
    links: pd.DataFrame | None, as_of: pd.Timestamp, cookie_vocab: pa.Array, profile_vocab: pa.Array
) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Codes of the links frame's pairs linked before ``as_of``; profile ids new to the log
    extend the vocabulary. A cookie not in ``cookie_vocab`` (never in the log) is dropped."""
    as_of_ns = int(as_of.value)
    empty = np.zeros(0, dtype=np.int64)
    if links is None or len(links) == 0:
        return empty, empty, profile_vocab
    if "cookie_id" not in links.columns or "profile_id" not in links.columns:
        raise DataContractError("links: need columns cookie_id and profile_id")
    keep = links["cookie_id"].notna() & links["profile_id"].notna()
    if "linked_at" in links.columns:
        keep &= pd.Series(time_ns(links["linked_at"]) < as_of_ns, index=links.index)
    links = links.loc[keep]
    cookies = lookup(links["cookie_id"], cookie_vocab)
    known = cookies >= 0  # a cookie never seen in the log cannot attribute any event
    profile_ids = arrow_strings(links["profile_id"].astype("string"))
    if isinstance(profile_ids, pa.ChunkedArray):
        profile_ids = profile_ids.combine_chunks()
    profile_ids = profile_ids.filter(pa.array(known))
    cookies = cookies[known]
    profiles = lookup(profile_ids, profile_vocab)
    new = profiles < 0
    if new.any():
        fresh = pc.unique(profile_ids.filter(pa.array(new)))
        profile_vocab = pa.concat_arrays([profile_vocab, fresh.cast(profile_vocab.type)])
        profiles = lookup(profile_ids, profile_vocab)
    return cookies, profiles, profile_vocab


CHUNK_ROWS = 1 << 20
PARALLEL_ROWS = 2_000_000


def chunks(n: int, size: int | None = None) -> Iterable[slice]:
    """Row slices of at most ``size`` (default CHUNK_ROWS) rows: small, cache-warm temporaries."""
    size = size or CHUNK_ROWS
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


def in_two(work: Callable[[list[slice]], T], slices: list[slice]) -> list[T]:
    """``work`` over the first and the second half of ``slices``, side by side on big inputs
    (NumPy releases the GIL in its loops); results in order."""
    rows = sum(sl.stop - sl.start for sl in slices)
    if rows < PARALLEL_ROWS or len(slices) < 2 or (os.cpu_count() or 1) < 2:
        return [work(slices)]
    half = len(slices) // 2
    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(work, slices[half:])
        first = work(slices[:half])
        return [first, second.result()]


def resolve_codes(
    codes: IdCodes,
    as_of: pd.Timestamp | str,
    settings: FeatureSettings,
    *,
    consent: pd.DataFrame | None = None,
    links: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
) -> Resolved:
    """The identity graph over encoded ids (see the module doc for the rules).

    Two chunked passes over the rows: the first gathers per-cookie and per-profile facts
    (:func:`row_facts`), from which :func:`attribute` decides attribution and eligibility
    without touching the rows; the second lists the eligible rows with their output profile
    row (:func:`used_rows`).
    """
    as_of = utc(as_of, "as_of")
    cc_all, cookie_vocab = codes.cookie
    pc_all, profile_vocab = codes.profile
    link_c, link_p, profile_vocab = link_pairs(links, as_of, cookie_vocab, profile_vocab)
    n_c, n_p = len(cookie_vocab), len(profile_vocab)
    withdrawn_profiles, withdrawn_cookies = latest_consent(consent, settings.consent_purpose)
    withdrawn_c = cookie_flags(withdrawn_cookies, cookie_vocab)
    withdrawn_p = cookie_flags(withdrawn_profiles, profile_vocab)
    # Two workers take half of the chunks each, with their own accumulators, then merge
    # (counts, minima and maxima: exact whatever the split).
    parts = in_two(
        lambda slices: row_facts(
            codes.t, cc_all, pc_all, (n_c, n_p), int(as_of.value), withdrawn_c, slices
        ),
        list(chunks(codes.n)),
    )
    f = parts[0]
    for other in parts[1:]:
        f = merge_facts(f, other)
    del parts
    np.minimum.at(f["pmin"], link_c, link_p)
    np.maximum.at(f["pmax"], link_c, link_p)
    graph = attribute(
        f, as_of, settings, cookie_vocab, profile_vocab, withdrawn_c, withdrawn_p, erased=erased
    )
    del f
    # pass 2: chunks are independent: two workers, results kept in chunk order
    done = [
        x
        for part in in_two(
            lambda slices: [
                used_rows(codes.t[sl], cc_all[sl], pc_all[sl], graph, sl.start) for sl in slices
            ],
            list(chunks(codes.n)),
        )
        for x in part
    ]
    shared_pairs = [graph.link_pairs(link_c, link_p), *[x[2] for x in done]]
    rows = np.concatenate([x[0] for x in done]) if done else np.zeros(0, dtype=np.int64)
    code = np.concatenate([x[1] for x in done]) if done else np.zeros(0, dtype=np.int32)
    return graph.resolved(rows, code, distinct(np.concatenate(shared_pairs)), codes.n)


def cookie_flags(ids: Iterable[str] | pa.Array, vocab: pa.Array) -> np.ndarray:
    """(len(vocab) + 1,) bool: which of ``vocab`` are in ``ids``; the trailing False slot is
    what code -1 (no cookie) indexes."""
    flags = np.zeros(len(vocab) + 1, dtype=bool)
    flags[lookup(ids, vocab)] = True
    flags[-1] = False
    return flags


FACT_MERGE: dict[str, Callable[[Any, Any], Any]] = {
    "n_pk": np.add,
    "n_co": np.add,
    "n_before": np.add,
    "n_withdrawn_rows": np.add,
    "pk_last": np.maximum,
    "co_last": np.maximum,
    "pmax": np.maximum,
    "link_last": np.maximum,
    "pk_first": np.minimum,
    "co_first": np.minimum,
    "pmin": np.minimum,
    "seen_w": np.logical_or,
    "linked_w": np.logical_or,
}
"""How two :func:`row_facts` results over disjoint rows combine into the facts of both."""


def merge_facts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The facts of the rows of ``a`` and ``b`` together (same vocabularies)."""
    return {k: FACT_MERGE[k](a[k], b[k]) for k in FACT_MERGE}


def row_facts(
    t: np.ndarray,
    cookie: np.ndarray,
    profile: np.ndarray,
    sizes: tuple[int, int],
    as_of_ns: int,
    withdrawn_c: np.ndarray,
    slices: Iterable[slice],
    edges: bool = False,
) -> dict[str, Any]:
    """Pass 1 of the graph: per-id facts of the rows in ``slices``.

    ``t``, ``cookie``, ``profile`` are row arrays (times in ns, int32 codes, -1 null) over
    vocabularies of ``sizes`` = (n_cookies, n_profiles). ``pk_*`` are over profile-keyed rows
    (by profile), ``co_*`` over cookie-only rows (by cookie); ``pmin``/``pmax`` the least and
    greatest profile each cookie is linked to (min != max: shared); ``seen_w``/``linked_w``
    withdrawn cookies seen / seen with a profile. With ``edges``, also ``edges``: the distinct
    (cookie, profile) link keys ``cookie * (n_profiles + 1) + profile`` (what a partition
    hands to a reduction keyed by id).
    """
    n_c, n_p = sizes
    big = np.iinfo(np.int64).max
    f: dict[str, Any] = {
        "n_pk": np.zeros(n_p, dtype=np.int64),
        "pk_last": np.full(n_p, _NAT, dtype=np.int64),
        "pk_first": np.full(n_p, big, dtype=np.int64),
        "n_co": np.zeros(n_c, dtype=np.int64),
        "co_last": np.full(n_c, _NAT, dtype=np.int64),
        "co_first": np.full(n_c, big, dtype=np.int64),
        "pmin": np.full(n_c + 1, n_p, dtype=np.int64),
        "pmax": np.full(n_c + 1, -1, dtype=np.int64),
        "link_last": np.full(n_c, _NAT, dtype=np.int64),
        "seen_w": np.zeros(n_c + 1, dtype=bool),
        "linked_w": np.zeros(n_c + 1, dtype=bool),
        "n_before": 0,
        "n_withdrawn_rows": 0,
    }
    any_withdrawn_c = bool(withdrawn_c.any())
    keys = []
    for sl in slices:
        tt, c, p = t[sl], cookie[sl], profile[sl]
        before = (tt < as_of_ns) & (tt != _NAT)
        f["n_before"] += int(np.count_nonzero(before))
        has_p = p >= 0
        ok = before & ((c >= 0) | has_p)
        if any_withdrawn_c:
            w = ok & withdrawn_c[c]
            f["n_withdrawn_rows"] += int(np.count_nonzero(w))
            f["seen_w"][c[w]] = True
            f["linked_w"][c[w & has_p]] = True
            ok &= ~w
        pk = ok & has_p
        co = ok & ~has_p
        both = pk & (c >= 0)
        p_pk, t_pk = p[pk], tt[pk]
        f["n_pk"] += np.bincount(p_pk, minlength=n_p)
        np.maximum.at(f["pk_last"], p_pk, t_pk)
        np.minimum.at(f["pk_first"], p_pk, t_pk)
        c_co, t_co = c[co], tt[co]
        f["n_co"] += np.bincount(c_co, minlength=n_c)
        np.maximum.at(f["co_last"], c_co, t_co)
        np.minimum.at(f["co_first"], c_co, t_co)
        c_b, p_b = c[both], p[both]
        np.minimum.at(f["pmin"], c_b, p_b)
        np.maximum.at(f["pmax"], c_b, p_b)
        np.maximum.at(f["link_last"], c_b, tt[both])
        if edges:
            keys.append(distinct(c_b.astype(np.int64) * (n_p + 1) + p_b))
    if edges:
        f["edges"] = distinct(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
    return f


@dataclass(frozen=True)
class Graph:
    """Attribution and eligibility decided from the per-id facts (:func:`attribute`).

    ``cookie_out`` (n_cookies + 1,) and ``profile_out`` (n_profiles + 1,) give a row's output
    profile row from its cookie (cookie-only rows) or its profile; -1: nobody (the trailing
    entry serves code -1). ``withdrawn_c`` flags withdrawn cookies, ``shared`` shared cookies
    (both (n_cookies + 1,), the trailing slot False). The rest is what :meth:`resolved` assembles.
    """

    as_of: pd.Timestamp
    n_profiles: int
    withdrawn_c: np.ndarray
    shared: np.ndarray
    cookie_out: np.ndarray
    profile_out: np.ndarray
    ids: pa.Array
    slots: np.ndarray
    n_excl: np.ndarray
    n_events: np.ndarray
    first: np.ndarray
    last: np.ndarray
    cookie_ids: pa.Array
    cookie_profile: np.ndarray
    summary: dict[str, int]

    def link_pairs(self, link_c: np.ndarray, link_p: np.ndarray) -> np.ndarray:
        """Keys ``cookie * (n_profiles + 1) + profile`` of the links on shared cookies."""
        on = self.shared[link_c]
        return distinct(link_c[on] * (self.n_profiles + 1) + link_p[on])

    def resolved(
        self, rows: np.ndarray, code: np.ndarray, shared_pairs: np.ndarray, events_in: int
    ) -> Resolved:
        """The :class:`Resolved` from pass 2: the used ``rows`` and their output ``code``, the
        distinct (shared cookie, profile) keys, and the number of input rows."""
        n_p, slots = self.n_profiles, self.slots
        n_shared = np.bincount(shared_pairs % (n_p + 1), minlength=n_p)[:n_p]
        is_anon = slots >= n_p
        at = np.where(is_anon, n_p, slots)  # anonymous: one cookie, never shared
        index = pd.Index(pd.array(self.ids, dtype="string"), name="profile_id")
        profiles = pd.DataFrame(
            {
                "is_anonymous": is_anon,
                "n_cookies": np.append(self.n_excl + n_shared, 1)[at].astype(np.int64),
                "n_shared_devices": np.append(n_shared, 0)[at].astype(np.int64),
                "n_events": self.n_events[slots].astype(np.int64),
                "first_seen": pd.to_datetime(self.first[slots], unit="ns", utc=True),
                "last_seen": pd.to_datetime(self.last[slots], unit="ns", utc=True),
            },
            index=index,
        )
        summary = {**self.summary, "events_in": int(events_in), "events_used": int(len(rows))}
        summary = {k: summary[k] for k in SUMMARY_KEYS}
        logger.info(
            "identity as of %s: %d known + %d anonymous profiles, %d shared devices, "
            "%d expired cookies, %d excluded by consent, %d erased, %d events used",
            self.as_of.isoformat(),
            summary["profiles_known"],
            summary["profiles_anonymous"],
            summary["shared_devices"],
            summary["expired_cookies"],
            summary["excluded_by_consent"],
            summary["excluded_by_erasure"],
            summary["events_used"],
        )
        return Resolved(
            as_of=self.as_of,
            rows=rows,
            profile_codes=code,
            profiles=profiles,
            summary=summary,
            _ids=self.ids,
            _cookie_ids=self.cookie_ids,
            _cookie_profile=self.cookie_profile,
        )


SUMMARY_KEYS = (
    "profiles_known",
    "profiles_anonymous",
    "shared_devices",
    "expired_cookies",
    "profiles_expired",
    "known_profiles_expired",
    "profiles_lapsed",
    "excluded_by_consent",
    "excluded_by_erasure",
    "cookies_withdrawn",
    "events_in",
    "events_before_as_of",
    "events_used",
    "events_unattributed_shared_device",
    "events_excluded_by_consent",
    "events_excluded_by_erasure",
    "events_expired",
    "cookies_resolvable",
)


def attribute(
    f: dict[str, Any],
    as_of: pd.Timestamp,
    settings: FeatureSettings,
    cookie_vocab: pa.Array,
    profile_vocab: pa.Array,
    withdrawn_c: np.ndarray,
    withdrawn_p: np.ndarray,
    *,
    erased: Iterable[str] = (),
) -> Graph:
    """Attribution, eligibility and the output ids from the merged facts ``f`` of every row
    (links included in ``pmin``/``pmax``): the rules of the module doc, over per-id arrays.
    ``withdrawn_c`` and ``withdrawn_p`` flag the cookies and the profiles whose consent is
    withdrawn (:func:`cookie_flags` of :func:`latest_consent`'s ids).

    The vocabularies may be in any order and may hold ids never seen before ``as_of``: the
    result does not depend on either.
    """
    as_of_ns = int(as_of.value)
    horizon = as_of_ns - int(settings.cookie_ttl_days) * _DAY_NS
    n_c, n_p = len(cookie_vocab), len(profile_vocab)
    big = np.iinfo(np.int64).max
    erased_ids = [str(e) for e in erased]
    erased_p = cookie_flags(erased_ids, profile_vocab)
    anon_ids = [e[len(ANON_PREFIX) :] for e in erased_ids if e.startswith(ANON_PREFIX)]
    erased_c = cookie_flags(anon_ids, cookie_vocab)

    pmin, pmax, n_co, co_last, co_first = (
        f["pmin"],
        f["pmax"],
        f["n_co"],
        f["co_last"],
        f["co_first"],
    )
    n_pk, pk_last, pk_first, link_last = f["n_pk"], f["pk_last"], f["pk_first"], f["link_last"]
    seen_w, linked_w = f["seen_w"], f["linked_w"]
    linked = pmax[:-1] >= 0
    shared = linked & (pmin[:-1] != pmax[:-1])
    exclusive = linked & ~shared
    owner = pmin[:-1]
    cookie_last = np.maximum(co_last, link_last)
    seen_c = cookie_last > _NAT
    expired_c = seen_c & (cookie_last < horizon)

    # attribution. slot = profile code, or n_p + cookie code for an anonymous cookie; the
    # cookie-only rows of a shared cookie belong to nobody
    n_slots = n_p + n_c
    excl = np.flatnonzero(exclusive)
    anon = ~linked
    n_events = np.concatenate([n_pk, np.where(anon, n_co, 0)])
    last = np.concatenate([pk_last, np.where(anon, co_last, _NAT)])
    first = np.concatenate([pk_first, np.where(anon, co_first, big)])
    np.add.at(n_events, owner[excl], n_co[excl])
    np.maximum.at(last, owner[excl], co_last[excl])
    np.minimum.at(first, owner[excl], co_first[excl])

    has = n_events > 0
    is_erased = np.concatenate([erased_p[:-1], erased_c[:-1]])
    is_withdrawn = np.concatenate([withdrawn_p[:-1], np.zeros(n_c, dtype=bool)])
    # cookies expire, customers do not (unless the user asks for a profile TTL)
    alive = last >= horizon
    ttl = settings.profile_ttl_days
    alive[:n_p] = True if ttl is None else last[:n_p] >= as_of_ns - int(ttl) * _DAY_NS
    lapsed_known = has[:n_p] & (last[:n_p] < horizon) & alive[:n_p]
    ex_erased = has & is_erased
    ex_consent = has & ~is_erased & is_withdrawn
    ex_expired = has & ~is_erased & ~is_withdrawn & ~alive
    eligible = has & ~is_erased & ~is_withdrawn & alive

    # output ids, sorted
    known = np.flatnonzero(eligible[:n_p])
    anon_ok = np.flatnonzero(eligible[n_p:])
    ids = pa.concat_arrays(
        [
            profile_vocab.take(pa.array(known)),
            pc.binary_join_element_wise(ANON_PREFIX, cookie_vocab.take(pa.array(anon_ok)), ""),
        ]
    )
    order = pc.sort_indices(ids).to_numpy()
    ids = ids.take(pa.array(order))
    slots_sorted = np.concatenate([known, n_p + anon_ok])[order]
    out_code = np.full(n_slots + 1, -1, dtype=np.int64)  # trailing -1: nobody / null
    out_code[slots_sorted] = np.arange(len(slots_sorted))
    cookie_out = np.append(
        np.where(exclusive, out_code[np.where(exclusive, owner, n_slots)], -1), -1
    )
    cookie_out[:-1][anon] = out_code[n_p + np.flatnonzero(anon)]
    # resolvable cookies (for cookie-keyed requests)
    ok = seen_c & ~expired_c & ~shared & ~withdrawn_c[:-1] & (cookie_out[:-1] >= 0)
    cookie_rows = np.flatnonzero(ok)
    is_anon = slots_sorted >= n_p
    summary = {
        "profiles_known": int((~is_anon).sum()),
        "profiles_anonymous": int(is_anon.sum()),
        "shared_devices": int((shared & seen_c).sum()),
        "expired_cookies": int(expired_c.sum()),
        "profiles_expired": int(ex_expired.sum()),
        "known_profiles_expired": int(ex_expired[:n_p].sum()),
        "profiles_lapsed": int((lapsed_known & ~is_erased[:n_p] & ~is_withdrawn[:n_p]).sum()),
        "excluded_by_consent": int(ex_consent.sum()) + int((seen_w & ~linked_w)[:-1].sum()),
        "excluded_by_erasure": int(ex_erased.sum()),
        "cookies_withdrawn": int(seen_w[:-1].sum()),
        "events_before_as_of": int(f["n_before"]),
        "events_unattributed_shared_device": int(n_co[shared].sum()),
        "events_excluded_by_consent": int(f["n_withdrawn_rows"]) + int(n_events[ex_consent].sum()),
        "events_excluded_by_erasure": int(n_events[ex_erased].sum()),
        "events_expired": int(n_events[ex_expired].sum()),
        "cookies_resolvable": int(len(cookie_rows)),
    }
    return Graph(
        as_of=as_of,
        n_profiles=n_p,
        withdrawn_c=withdrawn_c,
        shared=np.append(shared, False),
        cookie_out=cookie_out,
        profile_out=np.append(out_code[:n_p], -1),
        ids=ids,
        slots=slots_sorted,
        n_excl=np.bincount(owner[excl], minlength=n_p)[:n_p],
        n_events=n_events,
        first=first,
        last=last,
        cookie_ids=cookie_vocab.take(pa.array(cookie_rows)),
        cookie_profile=cookie_out[cookie_rows],
        summary=summary,
    )


def used_rows(
    t: np.ndarray, cookie: np.ndarray, profile: np.ndarray, graph: Graph, start: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 2 over some rows (times in ns, cookie and profile codes of ``graph``'s
    vocabularies): positions (plus ``start``; int32 while they fit) of the rows used, their
    output profile row (int32), and the distinct (shared cookie, profile) keys of the rows
    on shared cookies."""
    as_of_ns = int(graph.as_of.value)
    n_p = graph.n_profiles
    ok = (t < as_of_ns) & (t != _NAT)
    if graph.withdrawn_c.any():
        ok &= ~graph.withdrawn_c[cookie]
    code = np.where(profile >= 0, graph.profile_out[profile], graph.cookie_out[cookie])
    used = ok & (code >= 0)
    on_shared = ok & (profile >= 0) & graph.shared[cookie]
    pairs = distinct(cookie[on_shared].astype(np.int64) * (n_p + 1) + profile[on_shared])
    # positions as int32 while they fit: a training keeps them, an integer per event used
    position = np.int32 if start + len(t) <= np.iinfo(np.int32).max else np.int64
    return (np.flatnonzero(used) + start).astype(position), code[used].astype(np.int32), pairs
