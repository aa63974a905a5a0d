"""Labelled snapshots: point-in-time features at past cutoffs and what happened next.

Training data are features computed at cutoffs ``as_of - k * horizon`` (k = 1..n) with a label
saying whether the profile did the target event in ``[cutoff, cutoff + horizon)``; every table is
aligned to the columns of the score table (features as of ``as_of``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.features import FeatureBuilder, FeatureTable
from dmp_ml.models.propensity.model import is_categorical

if TYPE_CHECKING:
    from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_CHECK_ROWS = 65_536
"""Rows of a column :func:`_fits_float32` checks at a time."""

__all__ = ["align_features", "build_snapshots", "make_labels", "narrowed"]


def _utc(ts: object) -> pd.Timestamp:
    t = pd.Timestamp(ts)  # type: ignore[arg-type]
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def make_labels(
    events: pd.DataFrame,
    cutoff: object,
    horizon_days: int,
    target_event: str,
    profile_ids: Iterable[str],
) -> pd.Series:
    """1 when the profile has at least one ``target_event`` in ``[cutoff, cutoff + horizon)``.

    Parameters
    ----------
    events : DataFrame
        Resolved events (``profile_id`` filled by identity resolution); rows without a
        profile id are ignored.
    profile_ids : iterable of str
        The profiles to label (e.g. the index of the snapshot's feature table).

    Returns
    -------
    Series of int (0/1), indexed by ``profile_id`` in the order given, named ``label``.
    """
    start = _utc(cutoff)
    end = start + pd.Timedelta(days=horizon_days)
    times = events["event_time"]
    mask = (
        events["event_type"].isin([target_event]).to_numpy(dtype=bool)
        & (times >= start).to_numpy(dtype=bool)
        & (times < end).to_numpy(dtype=bool)
        & events["profile_id"].notna().to_numpy(dtype=bool)
    )
    positives = pd.Index(events.loc[mask, "profile_id"].astype("string").unique())
    ids = pd.Index(list(profile_ids), dtype="string", name="profile_id")
    return pd.Series(ids.isin(positives).astype(np.int64), index=ids, name="label")


def align_features(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly ``reference``'s columns (order and kind).

    Columns absent from ``frame`` (e.g. a top-K category that was not top-K at an older cutoff)
    become missing: NaN for numeric columns, a missing category for categorical ones; LightGBM
    treats them as unknown rather than as zero. Extra columns are dropped. The columns ``frame``
    has are its own arrays, not copies.
    """
    out = {}
    for name in reference.columns:
        if name in frame.columns:
            out[name] = frame[name]
        elif is_categorical(reference[name]):
            out[name] = pd.Series(pd.Categorical([None] * len(frame)), index=frame.index)
        else:
            out[name] = pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.DataFrame(out, index=frame.index, copy=False)


def stack_snapshots(
    snapshots: list[tuple[FeatureTable, pd.Series]], reference: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every snapshot's rows aligned to ``reference`` (:func:`align_features`) in one frame,
    in order, and their labels (0 for a row without one): ``pd.concat`` of the aligned frames,
    value for value and dtype for dtype, but that a column float32 in every snapshot that has
    it (:func:`narrowed`) stays float32. The labelled rows are the largest thing a training
    holds; LightGBM and the baselines read such a column as the float64 values it holds.

    ``snapshots`` is emptied as it is read: each table is let go once its rows are copied, so
    the labelled rows are held once (and one snapshot), not twice. Float columns are filled a
    snapshot at a time; the few others (categories) are concatenated as ``pd.concat`` does.
    """
    total = sum(len(table.frame) for table, _ in snapshots)
    kinds = {
        name: {table.frame[name].dtype for table, _ in snapshots if name in table.frame.columns}
        for name in reference.columns
        if not is_categorical(reference[name])
    }
    filled = {
        name: np.empty(total, dtype=np.float32 if found == {_FLOAT32} else np.float64)
        for name, found in kinds.items()
        if found <= {_FLOAT32, _FLOAT64}
    }
    others: dict[str, list[pd.Series]] = {
        name: [] for name in reference.columns if name not in filled
    }
    indexes: list[pd.Index] = []
    labels: list[np.ndarray] = []
    start = 0
    while snapshots:
        table, label = snapshots.pop(0)
        aligned = align_features(table.frame, reference)
        stop = start + len(aligned)
        for name, out in filled.items():
            out[start:stop] = aligned[name].to_numpy()
        for name, parts in others.items():
            parts.append(aligned[name])
        indexes.append(aligned.index)
        labels.append(label.reindex(aligned.index).fillna(0).astype(np.int64).to_numpy())
        del table, aligned  # its float columns are copied: the snapshot goes here
        start = stop
    index = indexes[0].append(indexes[1:]) if indexes else reference.index[:0]
    columns = {
        name: pd.Series(filled[name], index=index, copy=False)
        if name in filled
        else pd.concat(others[name]).set_axis(index)
        for name in reference.columns
    }
    return pd.DataFrame(columns, index=index, copy=False), (
        np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    )


def widened_copy(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of rows of :func:`stack_snapshots` with its float32 columns as float64: the
    frame ``pd.concat`` gives, holding none of the stacked rows' memory (kept with a model)."""
    return pd.DataFrame(
        {
            name: frame[name].astype(np.float64)
            if frame[name].dtype == _FLOAT32
            else frame[name].copy()
            for name in frame.columns
        },
        index=frame.index,
        copy=False,
    )


def narrowed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each float64 column whose every value a float32 holds exactly (counts,
    whole days; NaN included) as float32: the same values in about half the memory.

    The float columns are copied into two blocks, one per dtype, so nothing of ``frame``'s
    arrays is kept, and a snapshot's memory is two allocations, given back whole when it goes
    (a column at a time, they would be heap fragments the allocator keeps).
    """
    floats = [name for name in frame.columns if frame[name].dtype == _FLOAT64]
    fits = {name: _fits_float32(frame[name].to_numpy()) for name in floats}
    out: dict[str, Any] = {name: frame[name] for name in frame.columns}  # keeps the order
    for dtype, names in (
        (np.float32, [n for n in floats if fits[n]]),
        (np.float64, [n for n in floats if not fits[n]]),
    ):
        block = np.empty((len(frame), len(names)), dtype=dtype, order="F")
        for j, name in enumerate(names):
            block[:, j] = frame[name].to_numpy()
            out[name] = block[:, j]
    return pd.DataFrame(out, index=frame.index, copy=False)


def _fits_float32(values: np.ndarray) -> bool:
    """Whether a float32 holds every value of ``values`` exactly (NaN included)."""
    for start in range(0, len(values), _CHECK_ROWS):  # no float32 copy of a whole column
        part = values[start : start + _CHECK_ROWS]
        with np.errstate(over="ignore"):  # too large: inf, which is not equal
            if not np.array_equal(part.astype(np.float32), part, equal_nan=True):
                return False
    return True


def build_snapshots(
    events: pd.DataFrame,
    as_of: object,
    settings: Settings,
    profiles: pd.DataFrame | None = None,
    consent: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
    *,
    links: pd.DataFrame | None = None,
    score_table: FeatureTable | None = None,
    builder: FeatureBuilder | None = None,
) -> tuple[list[tuple[FeatureTable, pd.Series]], FeatureTable]:
    """Labelled snapshots at ``as_of - k * horizon`` (k = 1..n_snapshots) and the score table.

    The score table is built first (features as of ``as_of``); every snapshot is built with it
    as ``reference`` so all tables share its vocabularies and columns. Features are point in
    time (only events before each cutoff). Labels come from the events in ``[cutoff, cutoff +
    horizon)`` after identity resolution as of ``cutoff + horizon``; an anonymous profile
    (``anon:<cookie>``) whose cookie has been linked to a known profile by then is labelled with
    that profile's events. Snapshots without eligible profiles are skipped.

    Pass ``score_table`` (the features as of ``as_of``, built with the same inputs) to reuse it
    instead of building it again; it is returned unchanged. Pass ``builder`` (a
    :class:`~dmp_ml.features.FeatureBuilder` over the same inputs) to reuse its encoded log
    and the identity it resolved: a snapshot's labels and the next snapshot's features share
    the identity at their cutoff, resolved once (on the builder's engine, e.g. Dask), and the
    labels are read from the encoded log (:meth:`FeatureBuilder.positives`) without copying
    the resolved events.

    A snapshot's table carries no hour-of-week counts (``hour_of_week`` has no columns): no
    model trains on them, and at 168 floats a profile they would be most of the snapshots'
    memory. Its float columns that a float32 holds exactly are float32 (:func:`narrowed`): the
    snapshots are held together until they are stacked.
    """
    from dmp_ml.identity import ANON_PREFIX

    ps = settings.propensity
    as_of_ts = _utc(as_of)
    horizon = pd.Timedelta(days=ps.horizon_days)
    if builder is None:
        builder = FeatureBuilder(events, profiles, consent, settings, links=links, erased=erased)
    if score_table is None:
        score_table = builder.build(as_of_ts)
    elif score_table.spec.as_of != as_of_ts:
        raise ValueError(
            f"score_table is as of {score_table.spec.as_of}, not {as_of_ts}: build it at as_of"
        )
    snapshots: list[tuple[FeatureTable, pd.Series]] = []
    for k in range(ps.n_snapshots, 0, -1):
        cutoff = as_of_ts - k * horizon
        table = builder.build(cutoff, reference=score_table.spec)
        table = replace(table, data=narrowed(table.frame), hour_of_week=np.empty((len(table), 0)))
        if len(table) == 0:
            logger.info("snapshot at %s has no eligible profiles; skipped", cutoff)
            continue
        ids = pd.Index(table.frame.index.astype("string"))
        label_ids = ids.to_series(index=ids)
        anon = ids.str.startswith(ANON_PREFIX)
        if anon.any():
            later = builder.resolved(cutoff + horizon).cookie_map().astype("string")
            cookies = ids[anon].str.slice(len(ANON_PREFIX))
            mapped = later.reindex(cookies).to_numpy(dtype=object, na_value=None)
            label_ids[anon] = [
                m if m is not None else i for m, i in zip(mapped, ids[anon], strict=True)
            ]
        positives = builder.positives(cutoff + horizon, cutoff, cutoff + horizon, ps.target_event)
        labels = pd.Series(
            pd.Index(label_ids.to_numpy(), dtype="string").isin(positives).astype(np.int64),
            index=ids,
        )
        snapshots.append((table, pd.Series(labels.to_numpy(), index=ids, name="label")))
        logger.info(
            "snapshot %s: %d profiles, %d positive", cutoff.date(), len(ids), int(labels.sum())
        )
    return snapshots, score_table
