"""Refresh deltas: the rows one batch of fresh events changed, kept next to the base bundle.

A near-real-time refresh (:mod:`dmp_ml.refresh`) does not re-publish the whole bundle: it
publishes a *delta version*, a bundle directory (``W/bundles/<version>/``, published like any
version, checksums and atomic pointer swap included) that holds only its manifest and
``delta/`` with the rows of the profiles the batch touched. Its manifest's ``delta`` names the
base bundle and the chain of deltas over it (oldest first, itself last), so loading
(:func:`dmp_ml.bundle.load_bundle`) maps the base and overlays each delta in order: a later
delta wins. What one batch writes grows with the batch, not with the population.

Files of ``delta/`` (:func:`write_delta`, :func:`read_delta`)::

    features.npy, features.parquet   the touched profiles' feature rows (dmp_ml.mapped)
    hour_of_week.npy                 their hour-of-week counts
    scores.npy, scores.parquet       their propensity scores (when the bundle has them)
    events.parquet                   their complete resolved history: each model's ``update``
                                     derives its rows (send-time curves, lookalike vectors,
                                     affinity counts) from it and the features, on load too
    cookie_map.parquet               the cookie links of the touched profiles
    change.json                      as_of, removed ids, the profiles and cookies whose links
                                     were redone, known time zones

A compaction (``train``, or :func:`dmp_ml.refresh.compact` once the chain passes
``refresh.max_deltas`` or ``refresh.max_delta_bytes``) writes base and deltas as one new base.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dmp_ml.id_index import IdIndex
from dmp_ml.layout import DELTA_DIR
from dmp_ml.mapped import map_array, map_frame, writable, write_array, write_frame, write_rows
from dmp_ml.models.base import ProfileUpdate
from dmp_ml.rows import LazyRows, OverlaidFrame, id_merge_order, stacked_frame, stacked_take

if TYPE_CHECKING:
    from dmp_ml.features import FeatureTable

_FEATURES = "features"
_SCORES = "scores"
_HOW = "hour_of_week.npy"
_EVENTS = "events.parquet"
_COOKIES = "cookie_map.parquet"
CHANGE_FILE = "change.json"
"""The delta's change record (ids, links, as_of), read without the rest by the bundle index."""


@dataclass(frozen=True)
class Delta:
    """What one refresh changed.

    Attributes
    ----------
    change : the touched profiles, as every model's ``update`` is handed them; its
        ``features`` are the new feature rows, shape (n, f).
    hour_of_week : their hour-of-week counts, shape (n, 168), rows as ``change.features``.
    scores : their propensity scores indexed by ``profile_id``, shape (n, s); None without.
    cookie_map : the cookie-to-profile links of the touched profiles (None without a map).
    relinked : profiles whose cookie links were redone (the batch's affected closure).
    cookies : cookies whose links were redone.
    """

    change: ProfileUpdate
    hour_of_week: np.ndarray
    scores: pd.DataFrame | None
    cookie_map: pd.Series | None
    relinked: pd.Index
    cookies: pd.Index


def members(values: pd.Index | pd.Series, of: object) -> np.ndarray:
    """Which of ``values`` (ids as text) are in ``of``, shape (len(values),): a hash lookup in
    Arrow, where pandas' ``isin`` on Arrow strings walks ``of`` value by value in Python."""
    # the values' array, not the Series: pyarrow converts a Series value by value (0.1 s for
    # a population's 245k cookie links), an Arrow-backed array as it is
    keys = pa.array(values.astype("string").array).cast(pa.large_string())
    given = of if isinstance(of, pd.Index | pd.Series) else [str(v) for v in of]  # type: ignore[attr-defined]
    pool = pa.array(pd.array(given, dtype="string")).cast(pa.large_string())
    if len(pool) > 4 * len(keys):  # a few ids in a population: hash the few, not the many
        pool = pool.filter(pc.is_in(pool, value_set=keys))
    return np.asarray(pc.is_in(keys, value_set=pool).fill_null(False), dtype=bool)


def _ids(values: object) -> pd.Index:
    return pd.Index([str(v) for v in values], dtype="string", name="profile_id")  # type: ignore[attr-defined]


def read_change(directory: Path) -> dict[str, Any]:
    """The change record (:data:`CHANGE_FILE`) of the delta :func:`write_delta` wrote into
    ``directory``: its cutoff, the profiles it changed and removed, cookies, time zones."""
    return json.loads((Path(directory) / CHANGE_FILE).read_text(encoding="utf-8"))


def removed_ids(directories: Iterable[Path]) -> pd.Index:
    """The profiles the delta versions at ``directories`` removed (each delta's change record)."""
    removed: list[str] = []
    for directory in directories:
        removed.extend(str(p) for p in read_change(Path(directory) / DELTA_DIR).get("removed", []))
    return pd.Index(pd.unique(pd.array(removed, dtype="string")), name="profile_id")


def write_delta(directory: Path, delta: Delta) -> int:
    """Write ``delta`` into ``directory`` (created); returns the bytes written."""
    directory.mkdir(parents=True, exist_ok=True)
    change = delta.change
    write_frame(directory, _FEATURES, change.features)
    write_array(directory / _HOW, np.asarray(delta.hour_of_week, dtype=np.float64))
    if delta.scores is not None:
        write_frame(directory, _SCORES, delta.scores)
    change.events.to_parquet(directory / _EVENTS, index=False)
    if delta.cookie_map is not None:
        delta.cookie_map.rename("profile_id").rename_axis("cookie_id").reset_index().to_parquet(
            directory / _COOKIES, index=False
        )
    zones = change.timezones
    meta = {
        "as_of": change.as_of.isoformat(),
        "profile_ids": [str(p) for p in change.profile_ids],
        "removed": [str(p) for p in change.removed],
        "relinked": [str(p) for p in delta.relinked],
        "cookies": [str(c) for c in delta.cookies],
        "timezones": None
        if zones is None
        else {str(k): (None if pd.isna(v) else str(v)) for k, v in zones.items()},
    }
    (directory / CHANGE_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def read_delta(directory: Path) -> Delta:
    """Read a delta :func:`write_delta` wrote (the feature and score rows mapped)."""
    meta = read_change(directory)
    features = map_frame(directory, _FEATURES)
    features.index = _ids(features.index)
    scores = None
    if (directory / f"{_SCORES}.parquet").exists():
        scores = map_frame(directory, _SCORES)
        scores.index = _ids(scores.index)
    events = pd.read_parquet(directory / _EVENTS)
    cookies, relinked, cookie_map = read_link_change(directory, meta)
    zones = None
    if meta["timezones"] is not None:
        zones = pd.Series(meta["timezones"], dtype="string")
        zones.index = _ids(zones.index)
    change = ProfileUpdate(
        as_of=pd.Timestamp(meta["as_of"]),
        profile_ids=_ids(meta["profile_ids"]),
        removed=_ids(meta["removed"]),
        features=features,
        events=events,
        timezones=zones,
    )
    return Delta(
        change=change,
        hour_of_week=map_array(directory / _HOW),
        scores=scores,
        cookie_map=cookie_map,
        relinked=relinked,
        cookies=cookies,
    )


def read_link_change(
    directory: Path, meta: Mapping[str, Any] | None = None
) -> tuple[pd.Index, pd.Index, pd.Series | None]:
    """What a delta :func:`write_delta` wrote into ``directory`` changes of the cookie links:
    the cookies and the profiles whose links it redid, and its links (None without a map).
    ``meta``: its change record when already read (:func:`read_change`)."""
    meta = read_change(directory) if meta is None else meta
    cookie_map = None
    if (directory / _COOKIES).exists():
        links = pd.read_parquet(directory / _COOKIES)
        cookie_map = pd.Series(
            links["profile_id"].astype("string").to_numpy(),
            index=pd.Index(links["cookie_id"].astype("string"), name="cookie_id"),
            name="profile_id",
        )
    cookies = pd.Index([str(c) for c in meta["cookies"]], dtype="string")
    return cookies, _ids(meta["relinked"]), cookie_map


def merge_rows(
    frame: pd.DataFrame,
    rows: pd.DataFrame,
    removed: pd.Index,
    in_place: bool = True,
    ids: IdIndex | None = None,
) -> pd.DataFrame:
    """``frame`` with ``rows`` replacing or adding profiles and ``removed`` gone.

    When only rows ``frame`` has change (and ``in_place``), they are written in place (a frame
    mapped copy-on-write copies only those rows' pages) and ``frame`` itself is returned;
    otherwise a new frame sorted by id, ``frame`` unchanged. ``ids``: the id index of
    ``frame``'s rows (built here when not given).
    """
    ids = IdIndex.build(frame.index) if ids is None else ids
    pos, drop = _merge_plan(ids, rows.index, removed, in_place)
    if drop is None:
        write_rows(frame, pos, rows[list(frame.columns)])
        return frame
    return stacked_frame(frame, rows, ids.merge_order(frame.index, drop, rows.index))


def _merge_plan(
    ids: IdIndex, rows: pd.Index, removed: pd.Index, in_place: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of ``rows`` in the table of ``ids`` (-1 for new ones), and which
    of its rows a new frame leaves out (replaced or removed); None when the rows are written
    in place instead. Found by binary search in the id index: no pass over the population."""
    pos = ids.rows(rows)
    gone = ids.rows(removed)
    gone = gone[gone >= 0]
    if in_place and not len(gone) and bool((pos >= 0).all()):
        return pos, None
    drop = np.zeros(len(ids), dtype=bool)
    drop[gone] = True
    drop[pos[pos >= 0]] = True
    return pos, drop


def merge_table(current: FeatureTable, delta: Delta, in_place: bool = True) -> FeatureTable:
    """The feature table ``current`` with the delta's rows replacing/adding profiles, its
    removed profiles gone and the cookie links of its relinked profiles redone. Rows that only
    change existing ones are written into ``current``'s arrays when ``in_place`` (a mapped
    table copies only those rows' pages); otherwise the rows go into a block over the mapped
    table (:class:`dmp_ml.rows.OverlaidFrame`), ``current`` unchanged, so a batch with new
    profiles does not copy the population's columns either."""
    rows = delta.change.features
    removed = delta.change.removed
    data = current.data
    ids = current.ids
    pos, drop = _merge_plan(ids, rows.index, removed, in_place)
    held, fresh = current.hour_of_week, delta.hour_of_week
    merged: pd.DataFrame | OverlaidFrame
    if drop is None:
        if isinstance(data, OverlaidFrame):
            merged = data.replaced(pos, rows)
        else:
            merged = data
            write_rows(merged, pos, rows[list(data.columns)])

        def build() -> np.ndarray:
            how = writable(np.asarray(held))
            how[pos] = fresh
            return how

    else:
        # one id-sorted merge order, found by binary search in the id index
        order = ids.merge_order(current.profile_ids, drop, rows.index)
        overlaid = data if isinstance(data, OverlaidFrame) else OverlaidFrame(data)
        merged = overlaid.merged(rows, order)
        ids = ids.merged(removed, rows.index, merged.index)

        def build() -> np.ndarray:
            return stacked_take(np.asarray(held), fresh, order)

    how = LazyRows(build, (len(merged), *np.shape(fresh)[1:]))
    changed = (delta.cookies, delta.relinked, delta.cookie_map)
    # merged when something reads them (answers never do, nor does publishing a delta)
    links = None if current.links is None else partial(_merged_links, current.links, changed)
    summary = dict(current.summary)
    summary["refreshed_profiles"] = summary.get("refreshed_profiles", 0) + len(rows)
    table = replace(current, data=merged, hour_of_week=how, links=links, summary=summary)
    return table.with_ids(ids)


def merge_links(
    cookie_map: pd.Series, cookies: pd.Index, relinked: pd.Index, links: pd.Series | None
) -> pd.Series:
    """``cookie_map`` (``cookie_id -> profile_id``) with the links of ``cookies`` and of the
    ``relinked`` profiles replaced by ``links`` (a delta's), sorted by cookie."""
    stale = members(cookie_map.index, cookies) | members(cookie_map, relinked)
    if (
        links is not None
        and cookie_map.index.is_unique
        and links.index.is_unique
        and not (members(cookie_map.index, links.index) & ~stale).any()
    ):  # no cookie twice: the id-sorted merge, no sort of every cookie
        link_order = id_merge_order(cookie_map.index, stale, links.index)
        return pd.concat([cookie_map, links]).iloc[link_order]
    if links is not None:
        cookie_map = pd.concat([cookie_map[~stale], links]).sort_index()
    else:
        cookie_map = cookie_map[~stale]
    return cookie_map[~cookie_map.index.duplicated(keep="last")]


def _merged_links(
    links: pd.Series | Path | Callable[[], pd.Series],
    changed: tuple[pd.Index, pd.Index, pd.Series | None],
) -> pd.Series:
    """The cookie links ``links`` (read, a file, or links still to merge) with a delta's
    merged in."""
    from dmp_ml.features.table import resolve_links

    return merge_links(resolve_links(links), *changed)
