"""Features on Dask: the feature reductions, run partition-wise.

:class:`DaskEngine` is a :class:`dmp_ml.features.FeatureEngine`: the build itself (identity,
vocabularies, assembly) is :func:`dmp_ml.features.build_features`, the same call as the
pandas engine's. Identity is resolved partition-wise too (:mod:`dmp_ml.scale.identity`); the
population statistics that features depend on (the event-type, channel and top-K category
vocabularies) are chosen on the client, from the eligible events. The engine then partitions
the eligible events by profile (every profile's rows in one partition, in input order) into a
``dask.dataframe``; each partition runs :func:`dmp_ml.features.aggregate`; the client
concatenates the partitions and completes the table (identity columns, the
population-smoothed email rates, attributes). The result equals the pandas engine's bit for
bit.

Scheduler: ``features.dask_scheduler`` (or ``DaskEngine(scheduler)``) may be a
``distributed.Client``, a cluster object, or a scheduler address such as
``tcp://scheduler:8786``; when none is given a local in-process cluster is started for the
call (or once for a ``with engine:`` block).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dmp_ml import identity
from dmp_ml.features import HOURS_PER_WEEK, HOW_PREFIX, FeatureParams
from dmp_ml.features.aggregate import ENCODED_COLUMNS, aggregate, gather
from dmp_ml.scale.cluster import Session, map_parts, require_dask
from dmp_ml.scale.identity import resolve_on_dask, scatter_log
from dmp_ml.settings import FeatureSettings

logger = logging.getLogger(__name__)

_PCODE = "_profile_row"
_TEXT = [*ENCODED_COLUMNS, "campaign_id"]


def partition_features(
    part: pd.DataFrame,
    params: FeatureParams,
    tz_codes: np.ndarray,
    tz_names: Sequence[str],
) -> pd.DataFrame:
    """Features of the profiles in one partition (index: profile row; every row of a profile
    present, in input order). Columns: :meth:`FeatureParams.columns` then the 168 hours."""
    columns = [*params.columns(), *_how_columns()]
    if len(part) == 0:
        return pd.DataFrame(
            np.zeros((0, len(columns))), columns=columns, index=pd.Index([], dtype=np.int64)
        )
    rows_profile = part.index.to_numpy(dtype=np.int64)
    uniq, local = np.unique(rows_profile, return_inverse=True)
    codes = identity.IdCodes(
        n=len(part),
        t=identity.time_ns(part["event_time"]),
        columns=identity.encode_many(part, ENCODED_COLUMNS, threads=1),
    )
    arrays = gather(part, codes, np.arange(len(part)), local, params)
    block, how = aggregate(arrays, len(uniq), params, tz_codes[uniq], tz_names)
    data = np.concatenate([block.T, how], axis=1)
    return pd.DataFrame(data, index=pd.Index(uniq, name=_PCODE), columns=columns)


def _how_columns() -> list[str]:
    return [f"{HOW_PREFIX}{h:03d}" for h in range(HOURS_PER_WEEK)]


class DaskEngine(Session):
    """Run identity and the feature reductions on Dask (see the module doc).

    Parameters
    ----------
    scheduler : a ``distributed.Client``, a cluster, or an address; None: a local in-process
        cluster per call, or per ``with engine:`` block.
    npartitions : how many partitions the events (identity) and the eligible events
        (features, at most one per profile) are split into.
    """

    def __init__(self, scheduler: Any = None, npartitions: int = 8) -> None:
        super().__init__(scheduler)
        require_dask()
        self.npartitions = npartitions
        self._log: tuple[pd.DataFrame | None, list[Any] | None] = (None, None)

    def close(self) -> None:
        """Release the log's partitions, then the client (see :class:`Session`)."""
        self._log = (None, None)
        super().close()

    def resolve(
        self,
        events: pd.DataFrame,
        codes: identity.IdCodes,
        as_of: pd.Timestamp,
        fs: FeatureSettings,
        *,
        consent: pd.DataFrame | None = None,
        links: pd.DataFrame | None = None,
        erased: Iterable[str] = (),
    ) -> identity.Resolved:
        """Identity as of ``as_of``, partition-wise (:func:`resolve_on_dask`); ``codes`` is
        not read: each partition encodes its own ids. While the engine is held (``with
        engine:``) the log's partitions stay on the workers for every later cutoff."""
        with self.client() as client:
            log, parts = self._log
            if log is not events or parts is None:
                parts = scatter_log(client, events, self.npartitions)
                if self.held:  # one log at a time, kept with the frame it came from
                    self._log = (events, parts)
            return resolve_on_dask(
                parts, as_of, fs, client, consent=consent, links=links, erased=erased
            )

    def gather(
        self,
        events: pd.DataFrame,
        codes: identity.IdCodes,
        rows: np.ndarray,
        profile_codes: np.ndarray,
        params: FeatureParams,
    ) -> pd.DataFrame:
        """The eligible rows' raw columns, grouped by profile (stable: each profile keeps its
        input order), indexed by profile row."""
        keep = ["event_time", *[c for c in _TEXT if c in events.columns]]
        if "value" in events.columns:
            keep.append("value")
        order = np.argsort(profile_codes, kind="stable")
        part = events[keep].iloc[rows[order]].reset_index(drop=True)
        part.index = pd.Index(profile_codes[order].astype(np.int64), name=_PCODE)
        return part

    def aggregate(
        self,
        gathered: pd.DataFrame,
        n: int,
        params: FeatureParams,
        tz_codes: np.ndarray,
        tz_names: Sequence[str],
    ) -> tuple[np.ndarray, np.ndarray]:
        """``block`` (n_columns, n) and ``how`` (n, 168), computed partition-wise (ranges of
        profiles: every row of a profile in one partition)."""
        rows_profile = gathered.index.to_numpy(dtype=np.int64)
        bounds = np.unique(np.linspace(0, n, max(1, min(self.npartitions, n)) + 1).astype(int))
        cuts = np.searchsorted(rows_profile, bounds)
        parts = [gathered.iloc[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        with self.client() as client:
            logger.info(
                "dask: %d profiles in %d partitions on %s", n, len(parts), client.scheduler.address
            )
            futures = map_parts(
                client,
                partition_features,
                client.scatter(parts or [gathered], hash=False),
                shared=(params, tz_codes, list(tz_names)),
            )
            result = pd.concat(client.gather(futures))
        if len(result) != n or not np.array_equal(result.index.to_numpy(), np.arange(n)):
            raise RuntimeError("dask partitions lost or duplicated profiles")  # pragma: no cover
        block = np.array(result[params.columns()].to_numpy(dtype=np.float64).T, order="C")
        how = np.array(result[_how_columns()].to_numpy(dtype=np.float64), order="C")
        return block, how
