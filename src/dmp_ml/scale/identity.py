"""Identity on Dask: the cookie-profile graph resolved partition by partition.

The rules are :mod:`dmp_ml.identity`'s, and so is the code that applies them
(:func:`~dmp_ml.identity.row_facts`, :func:`~dmp_ml.identity.attribute`,
:func:`~dmp_ml.identity.used_rows`); only where the rows are read changes.

The graph's connected components are stars: profiles are never merged through a cookie (a
cookie linked to two profiles is a shared household device, not a bridge), so a cookie's
component label is the least profile it links to, and one round of min-label propagation over
the edges is already the fixed point; the cookie is shared when its least and greatest labels
differ. That round is a reduction over the edge table.

* **Once per log.** The log's ``event_time`` and id columns are split into row ranges, sent to
  the workers and encoded there, each over its own vocabularies (:func:`scatter_log`); every
  cutoff reads these partitions.
* **Pass 1, per partition.** Each partition computes its per-id facts: per cookie (cookie-only
  events, first and last seen, withdrawn cookies seen), per profile, the distinct
  cookie-profile edges and two counts, keyed by the id strings.
* **Reduction.** A tree of tasks merges the partitions' tables by id (sums, minima, maxima;
  edges deduplicated). The client receives one row per id and per edge, never one per event,
  takes each cookie's least and greatest profile over its edges, and decides attribution,
  expiry, consent and erasure with :func:`~dmp_ml.identity.attribute`.
* **Pass 2, per partition.** The decided graph (per-id arrays) is sent to the workers once;
  each partition lists its used rows with their output profile.

The result equals :func:`dmp_ml.identity.resolve_codes` on the same log: same profiles, same
cookie map, same summary, same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dmp_ml import identity
from dmp_ml.rows import distinct
from dmp_ml.scale.cluster import map_parts
from dmp_ml.settings import FeatureSettings
from dmp_ml.times import utc

logger = logging.getLogger(__name__)

_NAT = np.iinfo(np.int64).min
_BIG = np.iinfo(np.int64).max
_TEXT = pd.StringDtype("pyarrow")
_COOKIE_AGG = {
    "n_co": "sum",
    "co_last": "max",
    "co_first": "min",
    "link_last": "max",
    "seen_w": "max",
    "linked_w": "max",
}
_PROFILE_AGG = {"n_pk": "sum", "pk_last": "max", "pk_first": "min"}


def id_frame(events: pd.DataFrame) -> pd.DataFrame:
    """The columns identity reads (``event_time`` and the id columns present), indexed by row
    position: what is partitioned."""
    identity.check_events(events)
    cols = ["event_time", *[c for c in identity.ID_COLUMNS if c in events.columns]]
    return events[cols].reset_index(drop=True)


@dataclass(frozen=True)
class EncodedPart:
    """One partition of the log, its ids encoded over its own vocabularies (done once, kept on
    the worker for every cutoff): row ``positions`` in the log, times and id codes."""

    positions: np.ndarray
    codes: identity.IdCodes


def encode_part(part: pd.DataFrame) -> EncodedPart:
    """:class:`EncodedPart` of a partition of :func:`id_frame`."""
    codes = identity.IdCodes(
        n=len(part),
        t=identity.time_ns(part["event_time"]),
        columns=identity.encode_many(part, list(identity.ID_COLUMNS), threads=1),
    )
    return EncodedPart(part.index.to_numpy(dtype=np.int64), codes)


def partition_facts(
    part: EncodedPart, as_of_ns: int, withdrawn_cookies: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pass 1 over one partition: per-cookie facts, per-profile facts, the distinct
    cookie-profile edges, and the counts ``n_before``/``n_withdrawn_rows`` (one row).

    Every id of the partition has its row (also those only seen at or after the cutoff, as
    the local engine's vocabulary does), keyed by the id string in column ``cookie_id`` or
    ``profile_id``.
    """
    t, n = part.codes.t, part.codes.n
    c, c_vocab = part.codes.cookie
    p, p_vocab = part.codes.profile
    n_c, n_p = len(c_vocab), len(p_vocab)
    withdrawn = identity.cookie_flags(withdrawn_cookies, c_vocab)
    f = identity.row_facts(t, c, p, (n_c, n_p), as_of_ns, withdrawn, [slice(0, n)], edges=True)
    cookies = pd.DataFrame(
        {
            "cookie_id": pd.array(c_vocab, dtype=_TEXT),
            "n_co": f["n_co"],
            "co_last": f["co_last"],
            "co_first": f["co_first"],
            "link_last": f["link_last"],
            "seen_w": f["seen_w"][:-1].astype(np.int8),
            "linked_w": f["linked_w"][:-1].astype(np.int8),
        }
    )
    profiles = pd.DataFrame(
        {
            "profile_id": pd.array(p_vocab, dtype=_TEXT),
            "n_pk": f["n_pk"],
            "pk_last": f["pk_last"],
            "pk_first": f["pk_first"],
        }
    )
    keys = f["edges"]
    edges = pd.DataFrame(
        {
            "cookie_id": pd.array(c_vocab.take(pa.array(keys // (n_p + 1))), dtype=_TEXT),
            "profile_id": pd.array(p_vocab.take(pa.array(keys % (n_p + 1))), dtype=_TEXT),
        }
    )
    counts = pd.DataFrame(
        {"n_before": [int(f["n_before"])], "n_withdrawn_rows": [int(f["n_withdrawn_rows"])]}
    )
    return cookies, profiles, edges, counts


def partition_rows(
    part: EncodedPart, graph: identity.Graph, cookie_vocab: pa.Array, profile_vocab: pa.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pass 2 over one partition: the row positions used (in the log), their output profile
    row, the distinct (shared cookie, profile) keys in ``graph``'s codes, and the partition's
    number of rows."""
    t = part.codes.t
    glob = {}
    for name, vocab in (("cookie_id", cookie_vocab), ("profile_id", profile_vocab)):
        local, local_vocab = part.codes.columns[name]
        to_global = np.append(identity.lookup(local_vocab, vocab), -1)  # code -1 stays -1
        glob[name] = to_global[local]
    rows, code, pairs = identity.used_rows(t, glob["cookie_id"], glob["profile_id"], graph)
    return part.positions[rows], code, pairs, part.codes.n


def scatter_log(client: Any, events: pd.DataFrame, npartitions: int) -> list[Any]:
    """The log's identity columns (:func:`id_frame`) in ``npartitions`` row ranges, placed on
    the workers and encoded there once (futures of :class:`EncodedPart`): every cutoff's
    resolution reads them there."""
    frame = id_frame(events)
    n = len(frame)
    bounds = np.unique(np.linspace(0, n, max(1, min(npartitions, n)) + 1).astype(np.int64))
    parts = [frame.iloc[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return map_parts(client, encode_part, client.scatter(parts or [frame], hash=False))


def merge_tables(a: tuple[pd.DataFrame, ...], b: tuple[pd.DataFrame, ...]) -> tuple:
    """Two sets of pass-1 tables (over disjoint rows) as one, one row per id (or edge)."""
    cookies = pd.concat([a[0], b[0]]).groupby("cookie_id", as_index=False, sort=False)
    profiles = pd.concat([a[1], b[1]]).groupby("profile_id", as_index=False, sort=False)
    return (
        cookies.agg(_COOKIE_AGG),
        profiles.agg(_PROFILE_AGG),
        pd.concat([a[2], b[2]]).drop_duplicates(ignore_index=True),
        a[3] + b[3],
    )


def _tree(client: Any, items: list[Any]) -> Any:
    """The pass-1 tables of every partition merged pairwise on the cluster (a tree)."""
    while len(items) > 1:
        pairs = [
            client.submit(merge_tables, a, b, pure=False)
            for a, b in zip(items[::2], items[1::2], strict=False)
        ]
        items = pairs + ([items[-1]] if len(items) % 2 else [])
    return items[0]


def resolve_on_dask(
    parts: list[Any],
    as_of: pd.Timestamp | str,
    settings: FeatureSettings,
    client: Any,
    *,
    consent: pd.DataFrame | None = None,
    links: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
) -> identity.Resolved:
    """:func:`dmp_ml.identity.resolve_codes` computed on ``client`` over the log's partitions
    ``parts`` (:func:`scatter_log`; see the module doc); equal to the local result."""
    as_of = utc(as_of, "as_of")
    withdrawn_profiles, withdrawn = identity.latest_consent(consent, settings.consent_purpose)
    logger.info("dask identity: %d partitions on %s", len(parts), client.scheduler.address)
    facts = map_parts(client, partition_facts, parts, shared=(int(as_of.value), withdrawn))
    cookies, profiles, edges, counts = client.gather(_tree(client, facts))
    cookies = cookies.set_index("cookie_id")
    profiles = profiles.set_index("profile_id")
    # the least and greatest profile per cookie: its component label, and whether it is shared
    edges = edges.groupby("cookie_id", sort=False)["profile_id"].agg(["min", "max"])
    cookie_vocab = pa.array(cookies.index.to_numpy(dtype=object), type=pa.string())
    profile_vocab = pa.array(profiles.index.to_numpy(dtype=object), type=pa.string())
    link_c, link_p, profile_vocab = identity.link_pairs(links, as_of, cookie_vocab, profile_vocab)
    f = _facts(cookies, profiles, edges, counts.iloc[0], cookie_vocab, profile_vocab)
    np.minimum.at(f["pmin"], link_c, link_p)
    np.maximum.at(f["pmax"], link_c, link_p)
    withdrawn_c = identity.cookie_flags(withdrawn, cookie_vocab)
    withdrawn_p = identity.cookie_flags(withdrawn_profiles, profile_vocab)
    graph = identity.attribute(
        f, as_of, settings, cookie_vocab, profile_vocab, withdrawn_c, withdrawn_p, erased=erased
    )
    del f
    out = client.gather(
        map_parts(client, partition_rows, parts, shared=(graph, cookie_vocab, profile_vocab))
    )
    rows = np.concatenate([x[0] for x in out])
    code = np.concatenate([x[1] for x in out])
    pairs = distinct(np.concatenate([graph.link_pairs(link_c, link_p), *[x[2] for x in out]]))
    events_in = sum(int(x[3]) for x in out)
    return graph.resolved(rows, code, pairs, events_in)


def _facts(
    cookies: pd.DataFrame,
    profiles: pd.DataFrame,
    edges: pd.DataFrame,
    counts: pd.Series,
    cookie_vocab: pa.Array,
    profile_vocab: pa.Array,
) -> dict[str, Any]:
    """The reduced per-id tables as :func:`dmp_ml.identity.row_facts` arrays over the given
    vocabularies (``profile_vocab`` may extend ``profiles`` with link-only profiles)."""
    n_c, n_p = len(cookie_vocab), len(profile_vocab)
    f: dict[str, Any] = {k: cookies[k].to_numpy(dtype=np.int64) for k in _COOKIE_AGG}
    for k in ("seen_w", "linked_w"):
        f[k] = np.append(f[k].astype(bool), False)
    for k, fill in (("n_pk", 0), ("pk_last", _NAT), ("pk_first", _BIG)):
        f[k] = np.full(n_p, fill, dtype=np.int64)
        f[k][: len(profiles)] = profiles[k].to_numpy(dtype=np.int64)
    # the least and greatest profile per cookie: the component label and whether it is shared
    c = identity.lookup(edges.index.to_series(), cookie_vocab)
    f["pmin"] = np.full(n_c + 1, n_p, dtype=np.int64)
    f["pmax"] = np.full(n_c + 1, -1, dtype=np.int64)
    if len(edges):
        f["pmin"][c] = identity.lookup(edges["min"], profile_vocab)
        f["pmax"][c] = identity.lookup(edges["max"], profile_vocab)
    f["n_before"] = int(counts["n_before"])
    f["n_withdrawn_rows"] = int(counts["n_withdrawn_rows"])
    return f
