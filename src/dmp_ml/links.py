"""The cookie links a refresher asks about, answered per asked id, not per linked cookie.

A refresh needs to know which of a batch's cookies the bundle links to a profile and which of
its profiles some cookie links to (:func:`dmp_ml.refresh.Refresher.apply` records only those
in its delta). Merging every delta's links into the population's map for that is a pass over
every cookie per batch. :class:`LinkIndex` instead searches sorted keys the feature table
writes beside its links (:func:`write_link_index`; a table written before them has its keys
sorted once, on a refresher's first batch), keeps each later batch's changes in small private
overlays and answers by binary search. The sorted keys and rows are mapped; the links' text
is read once per loaded base (a refresher's first batch after a train or a compaction).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dmp_ml.id_index import IdIndex, sorted_keys, span
from dmp_ml.mapped import map_array, write_array


def _text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ids as one Arrow array of large strings (a take from it is one pass)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(pa.large_string())


LINKS_FILE = "cookie_map.parquet"
"""A feature table's links: ``cookie_id``, ``profile_id``."""
_COOKIES = "cookie_"  # the cookies' id index: cookie_ids.npy (and cookie_id_rows.npy)
_TARGETS, _TARGET_ROWS = "cookie_targets.npy", "cookie_target_rows.npy"


def write_link_index(links: pd.Series, directory: Path) -> None:
    """Write the sorted keys :meth:`LinkIndex.read` maps next to the links file of
    ``directory`` (written in the order of ``links``): the writer sorts once, so a refresher
    that loads the bundle does not."""
    IdIndex.build(links.index).write(directory, prefix=_COOKIES)
    by_target, target_rows = sorted_keys(links.astype("string"))
    write_array(directory / _TARGETS, by_target)
    write_array(directory / _TARGET_ROWS, target_rows)


class LinkIndex:
    """``cookie_id -> profile_id`` links as of the last change, looked up id by id.

    Build one from the whole map (:meth:`build`) or map the one a bundle holds
    (:meth:`read`); :meth:`change` applies a refresh's delta to it.
    """

    def __init__(
        self,
        cookies: IdIndex,
        cookie_ids: pa.Array,
        targets: pa.Array,
        by_target: np.ndarray,
        target_rows: np.ndarray,
    ) -> None:
        self._cookies = cookies  # cookie -> row
        self._cookie_ids = cookie_ids  # row -> cookie
        self._targets = targets  # row -> profile
        # the rows sorted by profile: a profile's cookies are one run of them
        self._by_target, self._target_rows = by_target, target_rows
        self._over: dict[str, str | None] = {}  # cookies changed since: profile, or unlinked
        self._over_cookies: dict[str, set[str]] = {}  # profile -> the cookies changed to it

    @classmethod
    def build(cls, links: pd.Series) -> LinkIndex:
        """The index of ``links`` (indexed by ``cookie_id``, unique; values ``profile_id``)."""
        by_target, target_rows = sorted_keys(links.astype("string"))
        return cls(
            IdIndex.build(links.index),
            _text(pa.array(links.index.astype("string").array)),
            _text(pa.array(links.astype("string").array)),
            by_target,
            target_rows,
        )

    @classmethod
    def read(cls, directory: Path) -> LinkIndex | None:
        """The index :func:`write_link_index` wrote into ``directory`` (its sorted keys and rows
        mapped, the links' text read); None when it has none (a table written before link
        indexes)."""
        cookies = IdIndex.read(directory, prefix=_COOKIES)
        if cookies is None or not (directory / _TARGETS).exists():
            return None
        table = pq.read_table(directory / LINKS_FILE, columns=["cookie_id", "profile_id"])
        return cls(
            cookies,
            _text(table["cookie_id"]),
            _text(table["profile_id"]),
            map_array(directory / _TARGETS),
            map_array(directory / _TARGET_ROWS),
        )

    def target(self, cookies: Iterable[str]) -> list[str | None]:
        """The profile each of ``cookies`` links to (None: not linked)."""
        cookies = [str(c) for c in cookies]
        out: list[str | None] = [None] * len(cookies)
        base = [i for i, c in enumerate(cookies) if c not in self._over]
        rows = self._cookies.rows([cookies[i] for i in base])
        found = rows >= 0
        if found.any():
            targets = self._targets.take(pa.array(rows[found])).to_pylist()
            for i, target in zip(np.asarray(base)[found], targets, strict=True):
                out[int(i)] = target
        for i, c in enumerate(cookies):
            if c in self._over:
                out[i] = self._over[c]
        return out

    def _base_cookies(self, profiles: list[str]) -> tuple[list[str], np.ndarray]:
        """The cookies the base links to ``profiles`` that no change has touched since (they
        still link there), and the position in ``profiles`` of each one's profile."""
        lo, hi = span(self._by_target, profiles)
        counts = hi - lo
        # every run's rows in one take: a take per profile costs a pass over the column
        runs = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        names = self._cookie_ids.take(pa.array(self._target_rows[runs])).to_pylist()
        owner = np.repeat(np.arange(len(profiles)), counts)
        if not self._over:
            return names, owner
        alive = np.fromiter((n not in self._over for n in names), dtype=bool, count=len(names))
        return [n for n, keep in zip(names, alive, strict=True) if keep], owner[alive]

    def linked(self, cookies: pd.Index) -> np.ndarray:
        """Whether each of ``cookies`` links to a profile, shape (len(cookies),)."""
        return np.array([t is not None for t in self.target(cookies)], dtype=bool)

    def targeted(self, profiles: pd.Index) -> np.ndarray:
        """Whether some cookie links to each of ``profiles``, shape (len(profiles),)."""
        wanted = [str(p) for p in profiles]
        _, owner = self._base_cookies(wanted)
        out = np.bincount(owner, minlength=len(wanted)) > 0
        if self._over_cookies:
            out |= np.fromiter((bool(self._over_cookies.get(p)) for p in wanted), bool, len(wanted))
        return out

    def change(self, cookies: pd.Index, relinked: pd.Index, links: pd.Series | None) -> None:
        """Apply one delta: the links of ``cookies`` and those to the ``relinked`` profiles
        are redone as ``links`` (``cookie_id -> profile_id``), as
        :func:`dmp_ml.delta.merge_links` merges them into the whole map."""
        relinked_ids = [str(p) for p in relinked]
        stale = {str(c) for c in cookies}
        stale.update(self._base_cookies(relinked_ids)[0])
        for profile in relinked_ids:
            stale.update(self._over_cookies.get(profile, ()))
        new = {} if links is None else dict(zip(links.index.tolist(), links.tolist(), strict=True))
        over, to = self._over, self._over_cookies
        for cookie in stale | new.keys():
            before = over.get(cookie)
            if before is not None:
                to[before].discard(cookie)
            profile = new.get(cookie)
            profile = None if profile is None or pd.isna(profile) else str(profile)
            over[cookie] = profile
            if profile is not None:
                to.setdefault(profile, set()).add(cookie)
