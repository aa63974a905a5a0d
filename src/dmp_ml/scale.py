"""Scale-out: the same feature functions, run partition-wise on Dask.

The identity graph is small (one entry per cookie and profile) and is solved on the client
with :func:`dmp_ml.identity.resolve_codes`. The population statistics that features depend on
(the event-type, channel and top-K category vocabularies) are chosen on the client too, from
the eligible events. The eligible events are then partitioned by profile (every profile's rows
in one partition, in input order) into a ``dask.dataframe``; each partition runs
:func:`dmp_ml.features.aggregate`; the client concatenates the partitions and applies
:func:`dmp_ml.features.finalize` (identity columns, the population-smoothed email rates,
attributes). The result equals the pandas engine's bit for bit.

Scheduler: ``scheduler`` (or ``settings.features.dask_scheduler``) may be a
``distributed.Client``, a cluster object, or a scheduler address such as
``tcp://scheduler:8786``; when none is given a local in-process cluster is started for the
call. Dask is an optional extra: ``pip install 'dmp-ml[scale]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dmp_ml import features as _f
from dmp_ml import identity as _id
from dmp_ml.errors import ConfigError
from dmp_ml.settings import FeatureSettings, Settings
from dmp_ml.times import utc

logger = logging.getLogger(__name__)

_PCODE = "_profile_row"
_TEXT = ["event_type", "channel", "source", "category", "campaign_id"]


def _require_dask() -> tuple[Any, Any]:
    try:
        import dask
        import dask.dataframe as dd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the dask engine needs the optional 'scale' extra: pip install 'dmp-ml[scale]'"
        ) from exc
    return dask, dd


@contextlib.contextmanager
def _client(scheduler: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (address, cluster or client), closed after."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the dask engine needs 'distributed': pip install 'dmp-ml[scale]'"
        ) from exc
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is None:
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=os.cpu_count() or 1,
                processes=False,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    address = getattr(scheduler, "scheduler_address", scheduler)
    try:
        client = Client(address, timeout="30s")
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from exc
    with client:
        yield client


def partition_features(
    part: pd.DataFrame,
    params: _f.FeatureParams,
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
    codes = _id.IdCodes(
        n=len(part),
        t=_id.time_ns(part["event_time"]),
        columns=_id.encode_many(part, ["event_type", "channel", "source", "category"], threads=1),
    )
    arrays = _f.gather(part, codes, np.arange(len(part)), local, params)
    block, how = _f.aggregate(arrays, len(uniq), params, tz_codes[uniq], tz_names)
    data = np.concatenate([block.T, how], axis=1)
    return pd.DataFrame(data, index=pd.Index(uniq, name=_PCODE), columns=columns)


def _how_columns() -> list[str]:
    return [f"{_f.HOW_PREFIX}{h:03d}" for h in range(_f.HOURS_PER_WEEK)]


def build_features_dask(
    events: pd.DataFrame,
    as_of: pd.Timestamp | str,
    profiles: pd.DataFrame | None = None,
    consent: pd.DataFrame | None = None,
    settings: Settings | FeatureSettings | None = None,
    *,
    links: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
    categories: Sequence[str] | None = None,
    reference: _f.FeatureSpec | None = None,
    scheduler: Any = None,
    npartitions: int | None = None,
) -> _f.FeatureTable:
    """:func:`dmp_ml.features.build_features` on Dask; same arguments, same result.

    ``scheduler``: a ``distributed.Client``, a cluster, or an address; default
    ``settings.features.dask_scheduler``, else a local in-process cluster.
    ``npartitions``: default ``settings.features.dask_partitions``.
    """
    _, dd = _require_dask()
    fs = _f.feature_settings(settings)
    with _f.small_pages():
        return _build(
            dd,
            events,
            as_of,
            profiles,
            consent,
            fs,
            links,
            erased,
            categories,
            reference,
            scheduler,
            npartitions,
        )


def _build(
    dd: Any,
    events: pd.DataFrame,
    as_of: pd.Timestamp | str,
    profiles: pd.DataFrame | None,
    consent: pd.DataFrame | None,
    fs: FeatureSettings,
    links: pd.DataFrame | None,
    erased: Iterable[str],
    categories: Sequence[str] | None,
    reference: _f.FeatureSpec | None,
    scheduler: Any,
    npartitions: int | None,
) -> _f.FeatureTable:
    as_of_ts = utc(as_of, "as_of")
    codes = _id.encode_ids(events, extra=["event_type", "channel", "source", "category"])
    res = _id.resolve_codes(codes, as_of_ts, fs, consent=consent, links=links, erased=erased)
    params = _f.params_from_codes(codes, res.rows, as_of_ts, fs, categories, reference)
    del codes
    tz_codes, tz_names, n_invalid = _f.profile_timezones(res.profiles.index, profiles)
    n = len(res.profiles)

    # eligible rows, grouped by profile (stable: each profile keeps its input order)
    keep = ["event_time", *[c for c in _TEXT if c in events.columns]]
    if "value" in events.columns:
        keep.append("value")
    order = np.argsort(res.profile_codes, kind="stable")
    part = events[keep].iloc[res.rows[order]].reset_index(drop=True)
    part.index = pd.Index(res.profile_codes[order].astype(np.int64), name=_PCODE)
    nparts = max(1, min(npartitions or fs.dask_partitions, n))
    ddf = dd.from_pandas(part, npartitions=nparts, sort=True)
    del part
    meta = partition_features(events.iloc[:0][keep], params, tz_codes, tz_names)
    lazy = ddf.map_partitions(
        partition_features, params, tz_codes, list(tz_names), meta=meta, align_dataframes=False
    )
    with _client(scheduler if scheduler is not None else fs.dask_scheduler) as client:
        logger.info(
            "dask: %d profiles in %d partitions on %s", n, ddf.npartitions, client.scheduler.address
        )
        result = client.compute(lazy).result()
    result = result.sort_index()
    if len(result) != n or not np.array_equal(result.index.to_numpy(), np.arange(n)):
        raise RuntimeError("dask partitions lost or duplicated profiles")  # pragma: no cover
    cols = params.columns()
    block = np.array(result[cols].to_numpy(dtype=np.float64).T, order="C", copy=True)
    how = np.array(result[_how_columns()].to_numpy(dtype=np.float64), order="C", copy=True)
    del result
    summary = {**res.summary, "timezones_invalid": n_invalid}
    return _f.finalize(
        block,
        how,
        res.profiles,
        params,
        fs,
        as_of_ts,
        profiles,
        summary,
        reference,
        res.cookie_map(),
    )
