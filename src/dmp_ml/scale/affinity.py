"""Affinity counts on Dask: per-profile counts by partition, vocabularies by a reduction.

:class:`DaskCounts` is a :class:`dmp_ml.models.affinity.model.CountEngine`. The eligible
profiles (sorted) are split into contiguous ranges and each range's events go to a worker,
which keeps its engagement rows there. Then:

1. each partition counts its engagement events per channel (with the position of the
   channel's first event in the log) and lists its categories; the client adds the counts and
   takes the earliest positions (a reduction) and picks the vocabularies as the local fit does
   (most frequent channels, ties in order of first appearance; the categories sorted);
2. each partition counts its profiles' events per channel and per category over those
   vocabularies with the model's own code; the client stacks the ranges' rows.

Counts are integers, so the result is the local fit's exactly (same arrays, same bundle files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from dmp_ml.models.affinity.model import AffinityModel
from dmp_ml.scale.cluster import PartitionedStage, map_parts, range_bounds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileRange:
    """The events of profiles ``ids`` (a contiguous range of the sorted eligible profiles),
    indexed by their positions in the log."""

    ids: pd.Index
    events: pd.DataFrame


def split_profiles(events: pd.DataFrame, ids: pd.Index, nparts: int) -> list[ProfileRange]:
    """The sorted ``ids`` in at most ``nparts`` contiguous ranges, each with its profiles'
    events in log order (rows of other profiles are left out)."""
    bounds = range_bounds(len(ids), nparts)
    codes, uniques = pd.factorize(events["profile_id"])  # few distinct ids: look each up once
    found = ids.get_indexer(pd.Index(uniques).astype("string"))
    row = np.append(found, -1)[codes]  # code -1: a missing id
    kept = np.flatnonzero(row >= 0)
    part = np.searchsorted(bounds, row[kept], side="right") - 1
    order = np.argsort(part, kind="stable")
    kept, cuts = kept[order], np.searchsorted(part[order], np.arange(len(bounds)))
    out = []
    for i in range(len(bounds) - 1):
        take = kept[cuts[i] : cuts[i + 1]]
        frame = events.iloc[take]
        frame.index = pd.Index(take)
        out.append(ProfileRange(ids[bounds[i] : bounds[i + 1]], frame))
    return out


def range_rows(part: ProfileRange, model: AffinityModel) -> pd.DataFrame:
    """The range's engagement rows (indexed by log position)."""
    return model.engagement(part.events, part.ids)


def range_vocabulary(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The range's channels with their event counts and first log positions; its categories."""
    channel = rows["channel"].dropna()
    codes, names = pd.factorize(channel.to_numpy(dtype=object))
    _, first = np.unique(codes, return_index=True)
    return (
        np.asarray(names, dtype=object),
        np.bincount(codes, minlength=len(names)),
        channel.index.to_numpy(dtype=np.int64)[first],
        rows["category"].dropna().unique(),
    )


def range_matrices(
    rows: pd.DataFrame, part: ProfileRange, model: AffinityModel
) -> tuple[np.ndarray, sparse.csr_matrix]:
    """The range's channel and category counts over ``model``'s vocabularies."""
    return model.matrices(rows, part.ids)


def channel_counts(partials: list[tuple[np.ndarray, ...]]) -> pd.Series:
    """Events per channel over every range, most first, ties in order of first appearance
    in the log (as ``value_counts`` orders the local fit's)."""
    frame = pd.DataFrame(
        {
            "channel": np.concatenate([p[0] for p in partials]),
            "n": np.concatenate([p[1] for p in partials]).astype(np.int64),
            "first": np.concatenate([p[2] for p in partials]).astype(np.int64),
        }
    )
    total = frame.groupby("channel", sort=False).agg(n=("n", "sum"), first=("first", "min"))
    total = total.sort_values("first").sort_values("n", ascending=False, kind="stable")
    return total["n"]


class DaskCounts(PartitionedStage):
    """Count the affinity model's engagement on Dask (see the module doc) in ``npartitions``
    profile ranges."""

    def count(self, model: AffinityModel, events: pd.DataFrame, ids: pd.Index) -> None:
        """Set ``model``'s vocabularies and counts for ``ids``, partition-wise."""
        if not len(ids):
            AffinityModel.count(model, events, ids)
            return
        ranges = split_profiles(events, ids, self.npartitions)
        with self.session.client() as client:
            logger.info(
                "dask affinity: %d profiles in %d ranges on %s",
                len(ids),
                len(ranges),
                client.scheduler.address,
            )
            parts = client.scatter(ranges, hash=False)
            rows = map_parts(client, range_rows, parts, shared=(model,))
            partials = client.gather(client.map(range_vocabulary, rows, pure=False))
            model.set_vocabularies(
                channel_counts(partials), np.concatenate([p[3] for p in partials])
            )
            out = client.gather(map_parts(client, range_matrices, rows, parts, shared=(model,)))
        model.channel_counts_ = np.vstack([o[0] for o in out])
        model.category_counts_ = sparse.vstack([o[1] for o in out], format="csr")
