"""The channel and content affinity model: what each profile engages through and with, per
profile and per segment, for display and retargeting buyers.

Only engagement counts: events of ``features.passive_event_types`` (e-mail sends, ad
impressions) are pushed by the marketer and say nothing of the person's interest. From the
point-in-time events of the eligible profiles (identity resolved at ``as_of``, consent and
erasure applied) the model keeps, per profile, the engagement counts per channel and per
content category, and the population's shares.

* **Channel mix** (a probability distribution): ``(n_ch + k * p_ch) / (N + k)``, the profile's
  channel counts shrunk toward the population's channel shares ``p`` with ``k =
  channel_prior_strength`` pseudo-events (Dirichlet posterior mean). A profile with no
  engagement gets the population's mix.
* **Category affinity** (share of interest relative to the population): ``score = (n_c + a) /
  (N * p_c + a)``, the observed over the expected number of events in category ``c`` (``N``
  categorised engagement events, ``p_c`` the population's share), both shrunk by ``a =
  category_prior_strength`` pseudo-events (a Gamma-Poisson posterior mean of the rate ratio).
  A score of 1 is "like everyone"; one page view of a rare category gives a score near 1,
  not a passion, because shrinkage scales with the expected count rather than the share.
  A profile's top categories are the ones it engaged with, by score.

A segment's channel mix is the mean of its members' mixes (people-weighted); its categories are
scored the same way on the members' pooled counts, with the number of members behind each;
its best display hours aggregate the members' send-time timing curves (local time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pandas as pd
from scipy import sparse

from dmp_ml.codes import text_codes
from dmp_ml.errors import BundleError
from dmp_ml.id_index import IdIndex, rows_of
from dmp_ml.mapped import map_array, write_array
from dmp_ml.models.base import constructor_args
from dmp_ml.rows import (
    OverlaidRows,
    OverlaidSparseRows,
    id_merge_order,
    keep_rows,
)

if TYPE_CHECKING:
    from dmp_ml.models.base import ProfileUpdate
    from dmp_ml.models.send_time import SendTimeModel
    from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["AFFINITY_DIR", "AffinityModel", "CountEngine", "display_hours"]

AFFINITY_DIR = "affinity"
"""The model's directory in a bundle (its :attr:`AffinityModel.name`)."""
CHANNELS_FILE = "channels.npy"
_CSR = ("data", "indices", "indptr")
"""The category counts' CSR arrays, each saved as ``categories_<name>.npy`` and mapped."""
FORMAT_VERSION = 2
"""2: the counts as mapped ``.npy`` files (1: Parquet tables, refused: retrain)."""
POPULATION_FILE = "population.json"
EVENT_COLUMNS = ("profile_id", "event_type", "channel", "category")
"""The only columns of the event log the affinity counts read."""
PROFILES_FILE = "profiles.parquet"
OTHER_CHANNEL = "other"


class CountEngine(Protocol):
    """Where the counts are made: ``count(model, events, ids)`` sets ``model``'s vocabularies
    (``channels_``, ``categories_``) and counts (``channel_counts_``, ``category_counts_``)
    for the sorted ``ids``, as :meth:`AffinityModel.count` does in process."""

    def count(self, model: AffinityModel, events: pd.DataFrame, ids: pd.Index) -> None: ...


class AffinityModel:
    """Per-profile engagement counts by channel and category, and the population's shares.

    Parameters
    ----------
    category_prior_strength : float
        ``a``: pseudo-events shrinking a category score toward 1 (the population).
    channel_prior_strength : float
        ``k``: pseudo-events shrinking a channel mix toward the population's mix.
    passive_event_types : sequence of str
        Event types that are not engagement (left out).
    max_channels : int
        Most frequent channels kept by name; the rest count as ``other``.
    segment_min_profiles : int
        A segment's category needs this many members behind it to be listed.

    Attributes
    ----------
    profile_ids_ : Index
        Profiles with counts (every eligible profile at fit, sorted).
    id_index_ : IdIndex or None
        The id index of ``profile_ids_`` when a bundle shares its table's (the same ids):
        :meth:`update` merges a batch's profiles by binary search in it, and keeps it.
    channels_, categories_ : Index
        The channel and category vocabularies (columns of the count matrices).
    channel_counts_ : ndarray or OverlaidRows (n_profiles, n_channels)
    category_counts_ : csr_matrix or OverlaidSparseRows (n_profiles, n_categories)
        As fitted or mapped; after :meth:`update`, the mapped counts with the recounted rows
        over them (read by row; ``np.asarray`` and ``tocsr()`` give the whole arrays).
    channel_share_, category_share_ : ndarray
        Population shares of engagement events (pooled over every profile at fit).
    as_of_ : Timestamp
    """

    name: ClassVar[str] = AFFINITY_DIR
    """The model's directory in a bundle and its step in the manifest."""
    id_index_: IdIndex | None = None

    def __init__(
        self,
        category_prior_strength: float = 2.0,
        channel_prior_strength: float = 5.0,
        passive_event_types: Sequence[str] = ("email_send", "ad_impression"),
        max_channels: int = 20,
        segment_min_profiles: int = 5,
    ) -> None:
        self.category_prior_strength = category_prior_strength
        self.channel_prior_strength = channel_prior_strength
        self.passive_event_types = tuple(passive_event_types)
        self.max_channels = max_channels
        self.segment_min_profiles = segment_min_profiles

    @classmethod
    def from_settings(cls, settings: Settings) -> AffinityModel:
        return cls(
            **constructor_args(
                cls,
                settings.affinity,
                passive_event_types=settings.features.passive_event_types,
            )
        )

    # ------------------------------------------------------------------ fitting

    def engagement(self, events: pd.DataFrame, ids: pd.Index) -> pd.DataFrame:
        """Engagement rows of ``ids``: profile_id, channel, category (``string``, may be
        missing), indexed by their labels in ``events``. Kept as Arrow text, not Python
        objects: a row costs its bytes, not three Python strings (most of the step's peak).
        The rows are chosen on the columns' distinct values where the log holds its text as
        dictionaries or categories, and only the rows kept are spelled out as text."""
        keep = _member(events["profile_id"], ids) & ~_member(
            events["event_type"], pd.Index(self.passive_event_types, dtype="string")
        )
        columns = ["profile_id", "channel", "category"]
        kept = keep_rows(events[columns], keep) if not keep.all() else events[columns]
        return pd.DataFrame(
            {c: kept[c].astype("string").array for c in columns},
            index=events.index[keep],
        )

    def matrices(self, rows: pd.DataFrame, ids: pd.Index) -> tuple[np.ndarray, sparse.csr_matrix]:
        """Channel counts (dense) and category counts (CSR) of ``ids`` from :meth:`engagement`
        rows, over the fitted vocabularies."""
        n = len(ids)
        row_of = ids.get_indexer(rows["profile_id"])
        ch = rows["channel"].where(rows["channel"].notna() & rows["channel"].isin(self.channels_))
        ch = ch.fillna(OTHER_CHANNEL).where(rows["channel"].notna())
        has_ch = ch.notna().to_numpy(bool)
        ch_col = self.channels_.get_indexer(ch[has_ch])
        channel = np.zeros((n, len(self.channels_)))
        np.add.at(channel, (row_of[has_ch], ch_col), 1.0)
        cat_col = self.categories_.get_indexer(rows["category"].fillna(""))
        has_cat = (cat_col >= 0) & rows["category"].notna().to_numpy(bool)
        category = sparse.csr_matrix(
            (np.ones(int(has_cat.sum())), (row_of[has_cat], cat_col[has_cat])),
            shape=(n, len(self.categories_)),
        )
        category.sum_duplicates()
        return channel, category

    def fit(
        self,
        events: pd.DataFrame,
        profile_ids: Iterable[str],
        as_of: pd.Timestamp | str,
        engine: CountEngine | None = None,
    ) -> AffinityModel:
        """Count each profile's engagement by channel and category (by ``engine``, e.g.
        :class:`dmp_ml.scale.affinity.DaskCounts`; None: :meth:`count`, in process).

        ``events`` are identity-resolved (``profile_id`` set on every row, see
        :meth:`dmp_ml.features.FeatureBuilder.resolve`) and before ``as_of``;
        ``profile_ids`` the eligible profiles (rows of other profiles are ignored).
        """
        ids = pd.Index(sorted({str(p) for p in profile_ids}), dtype="string")
        (engine or self).count(self, events, ids)
        self.profile_ids_ = ids
        self.channel_share_ = _shares(self.channel_counts_.sum(axis=0))
        self.category_share_ = _shares(np.asarray(self.category_counts_.sum(axis=0)).ravel())
        self.as_of_ = pd.Timestamp(as_of)
        logger.info(
            "affinity: %d profiles, %d channels, %d categories",
            len(ids),
            len(self.channels_),
            len(self.categories_),
        )
        return self

    @staticmethod
    def count(model: AffinityModel, events: pd.DataFrame, ids: pd.Index) -> None:
        """The in-process :class:`CountEngine`: vocabularies and counts from every row."""
        rows = model.engagement(events, ids)
        channels = rows["channel"].dropna().value_counts()
        model.set_vocabularies(channels, rows["category"].dropna().unique())
        model.channel_counts_, model.category_counts_ = model.matrices(rows, ids)

    def set_vocabularies(self, channel_counts: pd.Series, categories: Iterable[str]) -> None:
        """The channels: the ``max_channels`` most frequent of ``channel_counts`` (events per
        channel, most first, ties in order of first appearance), and ``other`` for the rest;
        the categories: the distinct ``categories``, sorted."""
        named = [str(c) for c in channel_counts.index[: self.max_channels]]
        extra = (
            [OTHER_CHANNEL]
            if len(channel_counts) > len(named) and OTHER_CHANNEL not in named
            else []
        )
        self.channels_ = pd.Index(named + extra, dtype="string")
        self.categories_ = pd.Index(sorted({str(c) for c in categories}), dtype="string")

    def update(self, change: ProfileUpdate) -> AffinityModel:
        """Recount the touched profiles from ``change.events`` (their full resolved history)
        and drop ``change.removed``. Population shares and vocabularies stay as trained (new
        channels count as ``other`` when the model has one, new categories are ignored until
        the next train).

        The recounted rows go into a small block over the (mapped) counts
        (:class:`~dmp_ml.rows.OverlaidRows`, :class:`~dmp_ml.rows.OverlaidSparseRows`): a
        profile the model holds keeps its row, a new one is merged in id order, so a batch
        costs its rows, not a copy of the population's counts; the arrays this model shares
        with a detached copy are never written."""
        self._check_fitted()
        changed = pd.Index(sorted({str(p) for p in change.profile_ids}), dtype="string")
        rows = self.engagement(change.events, changed)
        ch_new, cat_new = self.matrices(rows, changed)
        at = rows_of(self.profile_ids_, self.id_index_, changed)
        held = at >= 0
        channels = self.channel_counts_
        channels = channels.copy() if isinstance(channels, OverlaidRows) else OverlaidRows(channels)
        categories = self.category_counts_
        if not isinstance(categories, OverlaidSparseRows):
            categories = OverlaidSparseRows(categories)
        channels[at[held]] = ch_new[held]
        categories = categories.replaced(at[held], cat_new[held])
        removed = pd.Index([str(p) for p in change.removed], dtype="string").difference(changed)
        gone = rows_of(self.profile_ids_, self.id_index_, removed)
        gone = gone[gone >= 0]
        if len(gone) or not held.all():
            # the new profiles merged in id order, found without sorting every id (with the
            # table's id index, without reading any: binary searches)
            added = changed[~held]
            drop = np.zeros(len(self.profile_ids_), dtype=bool)
            drop[gone] = True
            if self.id_index_ is not None:
                order = self.id_index_.merge_order(self.profile_ids_, drop, added)
            else:
                order = id_merge_order(self.profile_ids_, drop, added)
            channels.merge(ch_new[~held], order)
            categories = categories.merged(cat_new[~held], order)
            ids = self.profile_ids_.append(added)
            self.profile_ids_ = pd.Index(ids.take(order).array, dtype="string")
            if self.id_index_ is not None:
                self.id_index_ = self.id_index_.merged(removed, added, self.profile_ids_)
        self.channel_counts_ = channels
        self.category_counts_ = categories
        self.as_of_ = max(self.as_of_, pd.Timestamp(change.as_of))
        return self

    def forget(self, profile_ids: Iterable[str]) -> int:
        """Remove profiles' counts; returns how many were held."""
        self._check_fitted()
        hit = self.profile_ids_.isin([str(p) for p in profile_ids])
        if hit.any():
            self.id_index_ = None
            self.profile_ids_ = self.profile_ids_[~hit]
            self.channel_counts_ = self.channel_counts_[~hit]
            self.category_counts_ = self.category_counts_[~hit]
        return int(hit.sum())

    def _check_fitted(self) -> None:
        if not hasattr(self, "profile_ids_"):
            raise BundleError("this AffinityModel is not fitted; call fit() or load()")

    # ------------------------------------------------------------------ answers

    def rows(self, profile_ids: Iterable[str]) -> tuple[np.ndarray, list[str]]:
        """Row positions of the known ids (in the order given) and the unknown ids."""
        ids = pd.Index(list(dict.fromkeys(str(p) for p in profile_ids)), dtype="string")
        pos = rows_of(self.profile_ids_, self.id_index_, ids)
        return pos[pos >= 0], ids[pos < 0].tolist()

    def channel_mix(self, rows: np.ndarray) -> np.ndarray:
        """Shrunk channel distributions of ``rows``, shape (len(rows), n_channels)."""
        counts = self.channel_counts_[rows]
        k = self.channel_prior_strength
        total = counts.sum(axis=1, keepdims=True)
        return (counts + k * self.channel_share_[None, :]) / (total + k)

    def _scores(self, counts: np.ndarray, total: float) -> np.ndarray:
        a = self.category_prior_strength
        return (counts + a) / (total * self.category_share_ + a)

    def top_categories(self, row: int, top: int) -> list[dict[str, Any]]:
        """The profile's engaged categories by affinity score, best first (at most ``top``)."""
        cols, counts = _row_counts(self.category_counts_, row)
        if not len(cols):
            return []
        total = float(counts.sum())
        a = self.category_prior_strength
        score = (counts + a) / (total * self.category_share_[cols] + a)
        order = np.lexsort((cols, -score))[:top]  # the vocabulary is sorted: ties by name
        names = self._category_names()
        return [
            {
                "category": names[cols[i]],
                "score": round(float(score[i]), 4),
                "share": round(float(counts[i] / total), 4),
                "events": int(counts[i]),
            }
            for i in order
        ]

    def _category_names(self) -> list[str]:
        if getattr(self, "_names_of", None) is not self.categories_:
            self._names = [str(c) for c in self.categories_]
            self._names_of = self.categories_
        return self._names

    def profile_frame(self, profile_ids: Iterable[str], top: int = 3) -> pd.DataFrame:
        """One row per known profile: ``profile_id``, ``preferred_channel``, ``channels``
        (channel -> probability), ``top_categories`` (list of dicts), ``engagement_events``."""
        rows, _ = self.rows(profile_ids)
        mix = self.channel_mix(rows)
        names = [str(c) for c in self.channels_]
        best = mix.argmax(axis=1) if len(names) else np.zeros(len(rows), dtype=int)
        return pd.DataFrame(
            {
                "profile_id": pd.array(self.profile_ids_[rows].to_numpy(), dtype="string"),
                "preferred_channel": [names[b] if names else None for b in best],
                "channels": [
                    {n: round(float(v), 4) for n, v in zip(names, m, strict=True)} for m in mix
                ],
                "top_categories": [self.top_categories(int(r), top) for r in rows],
                "engagement_events": self.channel_counts_[rows].sum(axis=1).astype(np.int64),
            }
        )

    def segment_summary(
        self,
        profile_ids: Iterable[str],
        top: int = 5,
        send_time: SendTimeModel | None = None,
        hours: int = 3,
    ) -> dict[str, Any]:
        """A segment's channel mix and top categories against the population, and its best
        display hours (see the module doc). Ids the model does not hold are left out."""
        rows, unknown = self.rows(profile_ids)
        n = len(rows)
        names = [str(c) for c in self.channels_]
        population_mix = self.channel_mix(np.arange(len(self.profile_ids_))).mean(axis=0)
        mix = self.channel_mix(rows).mean(axis=0) if n else np.full(len(names), np.nan)
        channels = [
            {
                "channel": name,
                "share": _round(mix[i]),
                "population_share": _round(population_mix[i]),
                "lift": _round(mix[i] / population_mix[i]) if population_mix[i] > 0 else None,
            }
            for i, name in enumerate(names)
        ]
        channels.sort(key=lambda c: -(c["share"] or 0.0))
        categories: list[dict[str, Any]] = []
        if n:
            sub = self.category_counts_[rows]
            counts = np.asarray(sub.sum(axis=0)).ravel()
            behind = np.asarray((sub > 0).sum(axis=0)).ravel()
            total = float(counts.sum())
            score = self._scores(counts, total)
            ok = np.flatnonzero((behind >= self.segment_min_profiles) & (counts > 0))
            order = ok[np.lexsort((self.categories_[ok].to_numpy(dtype=object), -score[ok]))]
            categories = [
                {
                    "category": str(self.categories_[c]),
                    "lift": round(float(score[c]), 4),
                    "share": round(float(counts[c] / total), 4),
                    "population_share": round(float(self.category_share_[c]), 4),
                    "profiles": int(behind[c]),
                }
                for c in order[:top]
            ]
        out: dict[str, Any] = {
            "size": n,
            "unknown_ids": len(unknown),
            "channels": channels,
            "top_categories": categories,
            "min_profiles_per_category": self.segment_min_profiles,
        }
        out["best_hours"] = display_hours(send_time, self.profile_ids_[rows], hours)
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """The profile list (Parquet), the counts as ``.npy`` files that :meth:`load` maps
        (row-aligned with the list), vocabularies, shares and parameters as JSON (no ids)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, writer in self.writers().items():
            writer(directory / name)
        return directory

    def writers(self) -> dict[str, Any]:
        """``file name -> writer(path)`` for each file of :meth:`save` (a refresh re-publishes
        the bundle with these in place of the trained files)."""
        self._check_fitted()

        def profiles(path: Path) -> None:
            frame = {"profile_id": pd.array(self.profile_ids_.to_numpy(), dtype="string")}
            pd.DataFrame(frame).to_parquet(path, index=False)

        def channels(path: Path) -> None:
            write_array(path, np.asarray(self.channel_counts_, dtype=np.float64))

        def categories(name: str) -> Any:
            return lambda path: write_array(path, getattr(self.category_counts_.tocsr(), name))

        def population(path: Path) -> None:
            meta = {
                "params": {
                    "category_prior_strength": self.category_prior_strength,
                    "channel_prior_strength": self.channel_prior_strength,
                    "passive_event_types": list(self.passive_event_types),
                    "max_channels": self.max_channels,
                    "segment_min_profiles": self.segment_min_profiles,
                },
                "format_version": FORMAT_VERSION,
                "as_of": self.as_of_.isoformat(),
                "channels": [str(c) for c in self.channels_],
                "channel_share": self.channel_share_.tolist(),
                "categories": [str(c) for c in self.categories_],
                "category_share": self.category_share_.tolist(),
            }
            path.write_text(json.dumps(meta), encoding="utf-8")

        return {
            PROFILES_FILE: profiles,
            CHANNELS_FILE: channels,
            **{f"categories_{name}.npy": categories(name) for name in _CSR},
            POPULATION_FILE: population,
        }

    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> AffinityModel:
        """Read a model :meth:`save` wrote (``n_threads`` is unused: plain NumPy/SciPy);
        raises :class:`BundleError` when a file is missing or unreadable."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / POPULATION_FILE).read_text(encoding="utf-8"))
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format_version')} is not {FORMAT_VERSION}")
            profiles = pd.read_parquet(directory / PROFILES_FILE)
            channel = map_array(directory / CHANNELS_FILE)
            csr = [map_array(directory / f"categories_{name}.npy") for name in _CSR]
        except (OSError, ValueError) as exc:
            raise BundleError(f"affinity model in {directory} cannot be read: {exc}") from exc
        model = cls(**meta["params"])
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.channels_ = pd.Index(meta["channels"], dtype="string")
        model.categories_ = pd.Index(meta["categories"], dtype="string")
        model.channel_share_ = np.asarray(meta["channel_share"], dtype=np.float64)
        model.category_share_ = np.asarray(meta["category_share"], dtype=np.float64)
        model.profile_ids_ = pd.Index(profiles["profile_id"].astype("string"))
        n = len(model.profile_ids_)
        if channel.shape != (n, len(model.channels_)) or len(csr[2]) != n + 1:
            raise BundleError(f"affinity counts in {directory} do not match its profile list")
        model.channel_counts_ = channel  # mapped, as are the category counts
        model.category_counts_ = sparse.csr_matrix(tuple(csr), shape=(n, len(model.categories_)))
        return model

    def summary(self) -> dict[str, float]:
        self._check_fitted()
        engaged = np.asarray(self.channel_counts_).sum(axis=1) > 0
        return {
            "profiles": float(len(self.profile_ids_)),
            "profiles_engaged": float(engaged.sum()),
            "channels": float(len(self.channels_)),
            "categories": float(len(self.categories_)),
        }


def _row_counts(counts: Any, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The category columns and counts of one row of the (CSR or overlaid) category counts."""
    if isinstance(counts, OverlaidSparseRows):
        return counts.row(row)
    start, end = counts.indptr[row], counts.indptr[row + 1]
    return counts.indices[start:end], counts.data[start:end]


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def _round(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)


def display_hours(
    send_time: SendTimeModel | None, profile_ids: Iterable[str], hours: int = 3
) -> dict[str, Any] | None:
    """The best local hours of day for display: the members' send-time timing curves (when
    each engages, normalised over the week) averaged, summed over the days of the week."""
    if send_time is None:
        return None
    ids = pd.Index([str(p) for p in profile_ids], dtype="string")
    pos = send_time.profile_ids_.get_indexer(ids)
    pos = pos[pos >= 0]
    if not len(pos):
        return {"profiles": 0, "hours": []}
    shape = np.maximum(send_time.local_shape_[pos].astype(np.float64), 1e-12)
    timing = shape / shape.sum(axis=1, keepdims=True)
    by_hour = timing.mean(axis=0).reshape(7, 24).sum(axis=0)
    order = np.argsort(-by_hour, kind="stable")[:hours]
    return {
        "profiles": int(len(pos)),
        "time": "local",
        "hours": [{"hour": int(h), "share": round(float(by_hour[h]), 4)} for h in order],
    }


def _member(column: pd.Series, values: pd.Index) -> np.ndarray:
    """Whether each row's text is one of ``values`` (a missing one is not), shape (n,),
    decided once per distinct value (:func:`dmp_ml.codes.text_codes`)."""
    codes, distinct = text_codes(column)
    member = distinct.isin(values)
    if not member.any():
        return np.zeros(len(codes), dtype=bool)
    return np.where(codes >= 0, member[np.maximum(codes, 0)], False)
