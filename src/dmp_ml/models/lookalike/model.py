"""The lookalike model: more profiles like a seed, with how good the audience is likely to be.

A campaign tool sends a seed (customers who converted, a CRM list) and asks for more people
like them. :class:`LookalikeModel` embeds every profile of a feature table
(:mod:`.embedding`), indexes the vectors with FAISS (:mod:`.index`), ranks the population for
a seed (:mod:`.audience`) and says what the audience is likely worth (:mod:`.quality`):
seeds matched/unknown, "seed too small", "seed not distinctive", expected quality from a
held-out slice of the seed and the features that distinguish the seed, in words.

Row ids inside the index are int64 positions into the model's profile table; the model maps
them back to profile ids. Everything is deterministic for the same inputs and model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from dmp_ml.errors import BundleError, DataContractError, RequestError, UnknownProfileError
from dmp_ml.features import FeatureSpec, FeatureTable
from dmp_ml.id_index import IdIndex, rows_of
from dmp_ml.mapped import map_array, write_array
from dmp_ml.models.base import ProfileUpdate
from dmp_ml.models.lookalike.audience import (
    CANDIDATES,
    Audience,
    PUClassifiers,
    SeedPlan,
    fit_ranker,
    rank,
)
from dmp_ml.models.lookalike.embedding import CHUNK_ROWS, Embedder, EmbeddingEngine
from dmp_ml.models.lookalike.index import LookalikeIndex, resolve_threads
from dmp_ml.models.lookalike.quality import (
    choose_method,
    distinguishing,
    holdout_quality,
    quiet_nan_warnings,
)
from dmp_ml.rows import OverlaidRows
from dmp_ml.settings import LookalikeSettings

if TYPE_CHECKING:
    from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
ARRAYS = ("raw", "codes", "vectors")
"""Per-profile arrays saved as ``<name>.npy`` and mapped on load (attributes ``<name>_``)."""


class LookalikeModel:
    """Seed expansion over one feature table.

    Parameters
    ----------
    settings : LookalikeSettings, optional
        Every tunable (index, centroids, re-rank, hold-out, reach limit, seed).
    n_threads : int, optional
        Threads for FAISS, BLAS and LightGBM; overrides ``settings.threads`` (0: every core).
        The service sets one value per worker.

    Attributes (after fit)
    ----------------------
    profile_ids_ : Index of the profiles, row-aligned with ``vectors_``
    id_index_ : IdIndex or None, the id index of ``profile_ids_`` when a bundle shares its
        table's: lookups search it instead of a hash table over the ids (a retired row stays
        in it under its old id, masked by ``removed_``; new rows are appended to it)
    embedder_ : Embedder
    raw_ : (n, n_numeric) float32, the embedder's numeric inputs (NaN kept)
    codes_ : (n, n_categorical) int16, its level codes (-1: other)
    vectors_ : (n, dim) float32
    removed_ : (n,) bool, forgotten or retired rows (never returned nor used)
    population_ : dict of population statistics (means, sds, medians) the diagnostics use
    index_ : LookalikeIndex
    build_report_ : dict  (index report plus embedding facts; log it to MLflow)
    spec_ : FeatureSpec of the table the model was fitted on
    """

    name: ClassVar[str] = "lookalike"
    id_index_: IdIndex | None = None

    def __init__(
        self, settings: LookalikeSettings | None = None, *, n_threads: int | None = None
    ) -> None:
        self.settings = settings if settings is not None else LookalikeSettings()
        self.n_threads = n_threads

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """An unfitted model configured from the ``lookalike`` section of ``settings``."""
        return cls(settings.lookalike)

    @property
    def threads(self) -> int:
        """Threads for FAISS, BLAS and LightGBM: ``n_threads``, else ``settings.threads``."""
        return resolve_threads(self.settings.threads if self.n_threads is None else self.n_threads)

    def request_threads(self) -> dict[str, int]:
        """Thread limits of a request (:meth:`expand`, :meth:`quality_curve`): OpenMP (FAISS
        search, LightGBM) on :attr:`threads`, BLAS on one.

        A request's matrix products are skinny (profiles x dimensions times dimensions x at most
        ``max_centroids``) and memory-bound: a second BLAS thread does not shorten them, and
        between them it spins. Measured on 2 cores: 20 products of 5,000 x 146 by 146 x 4 take
        9x the wall time on two threads; 1M x 146 by 146 x 16 in chunks no less time on one;
        a whole expansion on 27k profiles spends about 0.4 s more CPU for no less wall time.
        The products are the same on one thread (each output is one dot product either way).
        """
        return {"blas": 1, "openmp": self.threads}

    # -- fitting --------------------------------------------------------------------------
    def fit(self, table: FeatureTable, engine: EmbeddingEngine | None = None) -> Self:
        """Embed every profile of ``table`` and build the index.

        ``engine`` fits the embedder and embeds the table elsewhere (e.g. slice by slice on
        Dask, :class:`dmp_ml.scale.lookalike.DaskEmbedding`) with the in-process result;
        None: in process.
        """
        s = self.settings
        if len(table) == 0:
            raise DataContractError("the feature table is empty: nothing to build a lookalike on")
        started = time.perf_counter()
        with threadpool_limits(limits=self.threads):
            self.embedder_ = Embedder(
                clip=s.clip,
                max_levels=s.max_levels,
                min_level_count=s.min_level_count,
                n_components=s.pca_components,
                seed=s.seed,
            )
            if engine is None:
                raw, codes = self.embedder_.fit_arrays(table.frame)
                vectors = None
            else:
                raw, codes, vectors = engine.fit_embed(self.embedder_, table.frame)
            ids = pd.Index(table.frame.index.astype("string"), name="profile_id")
            self._set_data(ids, raw, codes, vectors)
            self.removed_ = np.zeros(len(raw), dtype=bool)
            self.index_ = self.new_index().fit(self.vectors_)
            self._population_stats()
        self.spec_ = table.spec
        self.build_report_ = {
            **self.index_.build_report_,
            "features": len(self.embedder_.feature_names_),
            "embedding_dim": self.embedder_.dim_,
            "fit_seconds": round(time.perf_counter() - started, 3),
        }
        return self

    def new_index(self) -> LookalikeIndex:
        """An unbuilt index configured from the settings (what :meth:`fit` builds)."""
        s = self.settings
        return LookalikeIndex(
            exact_max_profiles=s.exact_max_profiles,
            factory=s.index_factory,
            recall_target=s.recall_target,
            tune_queries=s.tune_queries,
            nprobe=s.nprobe,
            ef_search=s.ef_search,
            n_threads=self.threads,
            seed=s.seed,
        )

    def _set_data(
        self, ids: pd.Index, raw: np.ndarray, codes: np.ndarray, vectors: np.ndarray | None = None
    ) -> None:
        if ids.has_duplicates:
            raise DataContractError("the feature table has duplicate profile ids")
        self.profile_ids_ = ids
        self.raw_ = raw
        self.codes_ = codes
        self.vectors_ = self.embedder_.embed(raw, codes) if vectors is None else vectors

    def _population_stats(self) -> None:
        """Population means/sds of the scaled features and medians of the raw ones."""
        keep = ~self.removed_
        total = np.zeros(len(self.embedder_.feature_names_))
        total_sq = np.zeros_like(total)
        vec_total = np.zeros(self.vectors_.shape[1])
        vec_sq = np.zeros_like(vec_total)
        count = 0
        for start in range(0, len(self.raw_), CHUNK_ROWS):
            rows = np.flatnonzero(keep[start : start + CHUNK_ROWS]) + start
            pre = self.embedder_.pre(self.raw_[rows], self.codes_[rows]).astype(np.float64)
            total += pre.sum(axis=0)
            total_sq += (pre**2).sum(axis=0)
            vec = self.vectors_[rows].astype(np.float64)
            vec_total += vec.sum(axis=0)
            vec_sq += (vec**2).sum(axis=0)
            count += len(rows)
        mean = total / max(1, count)
        var = np.maximum(total_sq / max(1, count) - mean**2, 0.0)
        means, sds = _raw_moments(self.raw_, keep)
        vec_mean = vec_total / max(1, count)
        self.population_ = {
            "mean": mean,
            "std": np.sqrt(var),
            "median": self.embedder_.center_,  # as of the fit
            "raw_mean": means,
            "raw_std": sds,  # with raw_mean: the z-scores of the raw_centroid candidate
            "vec_mean": vec_mean,
            "vec_std": np.sqrt(np.maximum(vec_sq / max(1, count) - vec_mean**2, 0.0)),
        }

    # -- expansion ------------------------------------------------------------------------
    def expand(
        self,
        seed_ids: Iterable[str],
        size: int | None = None,
        reach: float | None = None,
        exclude_ids: Iterable[str] = (),
        method: str | None = None,
    ) -> Audience:
        """Profiles most like the seed, best first.

        Parameters
        ----------
        seed_ids : profile ids of the seed (unknown ids are reported, not fatal)
        size : number of profiles to return, or
        reach : share of the eligible population to return, in (0, max_reach]
        exclude_ids : profile ids that must not be returned (e.g. existing customers)
        method : one of ``CANDIDATES`` to force it; None (default): the guard serves the
            simplest candidate whose held-out seed recall is within one standard error of the
            best (a plain centroid unless another is clearly better)

        Returns
        -------
        Audience
            Never contains a seed, an excluded id or a profile outside the table. Diagnostics
            keys: seeds_given, seeds_matched, unknown_seed_count, unknown_seed_ids (first 100),
            excluded, population, size, reach, method (the candidate that ranked it: raw_centroid,
            centroid, hybrid or classifier, chosen by held-out seed recall), hybrid_method,
            candidate_recall ({candidate: held-out recall}; empty when the seed is too small to
            hold out), classifier_weight, n_centroids,
            retrieval, seed_too_small, seed_too_small_message, seed_not_distinctive, warnings,
            expected_quality ({holdout_seeds, recall, random_recall, lift, auc} or None),
            distinguishing_features ([{feature, seed_median, population_median, ..., text}]).

        Raises
        ------
        RequestError
            Invalid size/reach (field ``size`` or ``reach``) or an empty seed (``seed_ids``).
        UnknownProfileError
            No seed id is in the table.
        """
        size_req, reach_req = self._check_request(size, reach)
        offered = self.candidates()
        if method is not None and method not in offered:
            raise RequestError("method", f"must be one of {', '.join(offered)}, got {method!r}")
        with threadpool_limits(limits=self.request_threads()):
            plan = self._plan(seed_ids, exclude_ids, size_req, reach_req)
            s = self.settings
            warnings: list[str] = list(plan.warnings)
            n_seed = len(plan.seeds)
            rerank = n_seed >= s.min_seed
            weight = self._blend_weight(n_seed) if rerank else 0.0
            quality = None
            served = "hybrid"
            candidates: dict[str, dict[str, Any]] = {}
            n_hold = int(math.floor(n_seed * s.holdout_fraction))
            if n_hold >= s.min_holdout_seeds and n_seed - n_hold >= 2:
                # the guard: every candidate on the same held-out split, the best one serves
                # (the hybrid and the classifier share their PU classifier there)
                classifiers: PUClassifiers = {}
                candidates = {
                    m: holdout_quality(
                        self, plan, [plan.size], rerank, weight, method=m, classifiers=classifiers
                    )[0]
                    for m in (offered if method is None else (method,))
                }
                served = choose_method(candidates) if method is None else method
                for row in candidates.values():
                    del row["recovered"]
                quality = candidates[served]
            elif method is not None:
                served = method
            if n_seed > 0 and not candidates:
                warnings.append(
                    f"the seed is too small to hold out {s.min_holdout_seeds} profiles, so "
                    "there is no quality estimate"
                    + (" and no choice of method: the hybrid ranks it" if method is None else "")
                )
            excluded = np.union1d(plan.seeds, plan.exclude)
            ranker = fit_ranker(self, plan.seeds, rerank, weight, excluded, salt=0, method=served)
            positions, values, retrieval = rank(self, ranker, plan.size, excluded)
            distinct = distinguishing(self, plan.seeds)
            significant = [f for f in distinct if f["significant"]]
            auc = quality["auc"] if quality else None
            not_distinctive = not significant and (auc is None or auc < s.distinct_auc)
            if not_distinctive:
                warnings.append(
                    "seed not distinctive: no feature separates the seed from the population"
                    + (f" (held-out AUC {auc:.2f})" if auc is not None else "")
                    + "; the audience is close to a random sample"
                )
        too_small = n_seed < s.min_seed
        too_small_msg = (
            f"seed too small: {n_seed} known profiles, the seed-vs-population re-rank needs "
            f"{s.min_seed}; this audience uses similarity only"
            if too_small
            else None
        )
        if too_small_msg:
            warnings.insert(0, too_small_msg)
        scores = ranker.scores(values)
        frame = pd.DataFrame(
            {
                "profile_id": pd.array(self.profile_ids_[positions].to_numpy(), dtype="string"),
                "score": scores,
                "rank": np.arange(1, len(positions) + 1, dtype=np.int64),
            }
        )
        diagnostics = {
            "seeds_given": plan.given,
            "seeds_matched": n_seed,
            "unknown_seed_count": len(plan.unknown),
            "unknown_seed_ids": plan.unknown[:100],
            "excluded": int(len(plan.exclude)),
            "population": plan.population,
            "size": int(len(frame)),
            "reach": len(frame) / max(1, plan.population),
            "method": served,
            "hybrid_method": "similarity+classifier" if rerank else "similarity",
            "candidate_recall": {m: q["recall"] for m, q in candidates.items()},
            "classifier_weight": round(ranker.weight, 4),
            "n_centroids": int(len(ranker.centroids)),
            "retrieval": retrieval,
            "seed_too_small": too_small,
            "seed_too_small_message": too_small_msg,
            "seed_not_distinctive": not_distinctive,
            "warnings": warnings,
            "expected_quality": quality,
            "distinguishing_features": [
                {k: v for k, v in f.items() if k != "significant"} for f in significant
            ][: s.n_distinguishing],
        }
        return Audience(frame=frame, diagnostics=diagnostics)

    def candidates(self) -> tuple[str, ...]:
        """The rankers this model can serve, simplest first (:data:`.audience.CANDIDATES`;
        ``raw_centroid`` only when the table has a numeric feature)."""
        return tuple(m for m in CANDIDATES if m != "raw_centroid" or self.raw_.shape[1] > 0)

    def quality_curve(
        self,
        seed_ids: Iterable[str],
        sizes: Sequence[int],
        exclude_ids: Iterable[str] = (),
        rerank: bool | None = None,
        truth_ids: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Expected quality against audience size, for choosing a size.

        Columns: ``size``, ``reach``, ``expected_recall`` (share of a held-out slice of the seed
        found within ``size`` when expanding the rest), ``random_recall``, ``lift``; with
        ``truth_ids`` (the profiles that really belong with the seed, e.g. the demo world's
        planted interest group) also ``precision`` and ``recall`` of the full-seed audience
        against them (seeds excluded from the truth).

        ``rerank`` forces the classifier on or off (None: as :meth:`expand` decides).
        """
        sizes = sorted({int(v) for v in sizes})
        if not sizes or sizes[0] <= 0:
            raise RequestError("sizes", "give one or more positive sizes")
        with threadpool_limits(limits=self.request_threads()):
            plan = self._plan(seed_ids, exclude_ids, max(sizes), None)
            sizes = [min(v, plan.size) for v in sizes]
            n_seed = len(plan.seeds)
            use = (n_seed >= self.settings.min_seed) if rerank is None else bool(rerank)
            weight = self._blend_weight(n_seed) if use else 0.0
            rows = holdout_quality(self, plan, sizes, use, weight)
            for row in rows:
                row.pop("recovered", None)
            out = pd.DataFrame(rows).rename(
                columns={"recall": "expected_recall", "auc": "holdout_auc"}
            )
            if truth_ids is not None:
                excluded = np.union1d(plan.seeds, plan.exclude)
                ranker = fit_ranker(self, plan.seeds, use, weight, excluded, salt=0)
                positions, _, _ = rank(self, ranker, max(sizes), excluded)
                truth = self._positions(truth_ids)[0]
                truth = np.setdiff1d(truth, excluded)
                hit = np.isin(positions, truth)
                found = np.cumsum(hit)
                out["precision"] = [found[v - 1] / v if v > 0 else np.nan for v in sizes]
                out["recall"] = [found[v - 1] / max(1, len(truth)) if v > 0 else 0.0 for v in sizes]
        out.insert(1, "reach", out["size"] / max(1, plan.population))
        return out

    # -- internals ------------------------------------------------------------------------
    def _check_request(self, size: Any, reach: Any) -> tuple[int | None, float | None]:
        if (size is None) == (reach is None):
            raise RequestError("size", "give exactly one of size or reach")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
                raise RequestError("size", f"must be a whole number, got {size!r}")
            if size <= 0:
                raise RequestError("size", f"must be positive, got {size}")
            # the same ceiling as reach: a size cannot ask for more of the population
            population = len(self.profile_ids_) - int(self.removed_.sum())
            cap = max(1, int(self.settings.max_reach * population))
            if size > cap:
                raise RequestError(
                    "size",
                    f"must be at most {cap} (max_reach {self.settings.max_reach} of "
                    f"{population} profiles), got {size}",
                )
            return int(size), None
        try:
            reach_f = float(reach)
        except (TypeError, ValueError) as exc:
            raise RequestError("reach", f"must be a number, got {reach!r}") from exc
        max_reach = self.settings.max_reach
        if not (0.0 < reach_f <= max_reach):
            raise RequestError("reach", f"must be in (0, {max_reach}], got {reach_f}")
        return None, reach_f

    def _positions(self, ids: Iterable[str]) -> tuple[np.ndarray, list[str]]:
        """Sorted unique positions of known, not forgotten ids, and the unknown ids."""
        given = pd.Index(pd.array([str(i) for i in ids], dtype="string")).unique()
        loc = rows_of(self.profile_ids_, self.id_index_, given)
        known = loc >= 0
        pos = loc[known]
        pos = pos[~self.removed_[pos]] if len(pos) else pos
        unknown = [str(v) for v in given[~known]]
        return np.unique(pos.astype(np.int64)), unknown

    def _plan(
        self,
        seed_ids: Iterable[str],
        exclude_ids: Iterable[str],
        size: int | None,
        reach: float | None,
    ) -> SeedPlan:
        seed_list = list(seed_ids)
        if not seed_list:
            raise RequestError("seed_ids", "the seed is empty")
        seeds, unknown = self._positions(seed_list)
        if len(seeds) == 0:
            raise UnknownProfileError(
                f"none of the {len(set(map(str, seed_list)))} seed ids is an eligible profile "
                "of this model"
            )
        exclude, _ = self._positions(exclude_ids)
        removed = np.flatnonzero(self.removed_)
        population = len(self.profile_ids_) - len(removed)
        available = population - len(np.union1d(seeds, exclude))
        warnings: list[str] = []
        wanted = size if size is not None else max(1, int(round(reach * population)))
        if wanted > available:
            warnings.append(
                f"only {available} eligible profiles are neither seeds nor excluded; "
                f"returning {available} instead of {wanted}"
            )
        return SeedPlan(
            seeds=seeds,
            exclude=np.union1d(exclude, removed).astype(np.int64),
            unknown=unknown,
            given=len(set(map(str, seed_list))),
            population=int(population),
            size=int(max(0, min(wanted, available))),
            warnings=warnings,
        )

    def _blend_weight(self, n_seed: int) -> float:
        s = self.settings
        return s.classifier_weight * n_seed / (n_seed + s.blend_half_seed)

    # -- near-real-time update, forgetting --------------------------------------------------
    def update(self, change: ProfileUpdate) -> Self:
        """Re-embed the touched profiles and put their vectors in the index, in place.

        ``change.removed`` profiles are forgotten. The others' rows of ``change.features`` are
        embedded with the fitted embedder: a profile the model holds is replaced in place
        (``remove_ids`` + ``add_with_ids``; a flat or IVF index supersedes the row of its
        mapped base and holds the new one in its side index) where the index type can remove,
        else its old row is retired (masked) and a new one appended; a new profile is
        appended. The arrays hold the changed and new rows over their mapped base
        (:class:`OverlaidRows`), so a batch costs its rows, not a copy of the population's.
        The embedder's scaling stays as fitted; a retrain re-estimates it.
        """
        removed = [str(r) for r in change.removed]
        if removed:
            self.forget(removed)
        frame = change.features
        if len(frame) == 0:
            return self
        raw, codes = self.embedder_.arrays(frame)
        vectors = self.embedder_.embed(raw, codes)
        ids = pd.Index(frame.index.astype("string"))
        pos = rows_of(self.profile_ids_, self.id_index_, ids)
        live = pos >= 0
        live[live] = ~self.removed_[pos[live]]
        in_place = self.index_.kind_ in ("flat", "ivf")
        self._overlay_arrays()
        if live.any() and in_place:
            p = pos[live].astype(np.int64)
            self.index_.remove_ids(p)
            self.raw_[p] = raw[live]
            self.codes_[p] = codes[live]
            self.vectors_[p] = vectors[live]
            self.index_.add_with_ids(vectors[live], p)
        append = ~live if in_place else np.ones(len(ids), dtype=bool)
        if (live & append).any():  # index types that mask: retire the old row, append a new one
            self._retire(np.unique(pos[live & append].astype(np.int64)))
        if append.any():
            start = len(self.profile_ids_)
            new_pos = np.arange(start, start + int(append.sum()), dtype=np.int64)
            self.raw_.append(raw[append])
            self.codes_.append(codes[append])
            self.vectors_.append(vectors[append])
            self.removed_ = np.concatenate([self.removed_, np.zeros(len(new_pos), dtype=bool)])
            self.profile_ids_ = pd.Index(
                self.profile_ids_.append(pd.Index(ids[append], dtype="string")),
                name="profile_id",
            )
            if self.id_index_ is not None:
                self.id_index_ = self.id_index_.appended(ids[append])
            self.index_.add_with_ids(vectors[append], new_pos)
        return self

    def forget(self, profile_ids: Iterable[str]) -> int:
        """Erase profiles: out of the index, never returned or used, features wiped.

        An index type that cannot remove a vector (HNSW) masks it first; the index is then
        rebuilt over the live rows, so no forgotten vector stays in it. Returns the number of
        profiles forgotten. Row positions of the others do not change.
        """
        pos, _ = self._positions(profile_ids)
        if len(pos) == 0:
            return 0
        self._retire(pos)
        if len(self.index_.removed_):  # an index type that only masks: rebuild without them
            live = np.flatnonzero(~self.removed_)
            self.index_ = self.new_index().fit(self.vectors_[live], ids=live)
        return int(len(pos))

    def detached(self) -> Self:
        """A copy that :meth:`update` and :meth:`forget` can change while this model keeps
        answering (a service worker builds its next bundle so): the index and the per-profile
        arrays copied, the fitted parts shared."""
        other = copy.copy(self)
        self._overlay_arrays()
        other.raw_, other.codes_, other.vectors_ = (
            a.copy() for a in (self.raw_, self.codes_, self.vectors_)
        )
        other.removed_ = np.array(self.removed_, copy=True)
        other.index_ = self.index_.detached()
        return other

    def _overlay_arrays(self) -> None:
        """The per-profile arrays as a base with private rows over it (:class:`OverlaidRows`):
        a change writes, and a copy (:meth:`detached`) copies, only the rows changed since the
        arrays were loaded or fitted."""
        for name in ARRAYS:
            values = getattr(self, f"{name}_")
            if not isinstance(values, OverlaidRows):
                setattr(self, f"{name}_", OverlaidRows(values))

    def _retire(self, pos: np.ndarray) -> None:
        """Take rows out of the index (masked where it cannot remove) and wipe them."""
        self.index_.remove_ids(pos)
        self.removed_[pos] = True
        self._overlay_arrays()
        self.raw_[pos] = np.nan
        self.codes_[pos] = -1
        self.vectors_[pos] = 0.0
        ids = self.profile_ids_.to_numpy(dtype=object).copy()
        ids[pos] = [f"\x00forgotten-{p}" for p in pos]
        self.profile_ids_ = pd.Index(pd.array(ids, dtype="string"), name="profile_id")
        self._population_stats()

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the model to ``directory`` (JSON, Parquet and a FAISS index; no pickle)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.index_.save(directory)
        data = {"profile_id": pd.array(self.profile_ids_.to_numpy(), dtype="string")}
        pd.DataFrame(data).to_parquet(directory / "profiles.parquet", index=False)
        # the per-profile arrays as .npy files that load maps (shared by every worker)
        for name in ARRAYS:
            write_array(directory / f"{name}.npy", getattr(self, f"{name}_"))
        meta = {
            "format_version": FORMAT_VERSION,
            "settings": self.settings.model_dump(),
            "embedder": self.embedder_.to_dict(),
            # derived from the arrays, but stored: recomputing it at load reads every row
            # into private memory
            "population": {k: np.asarray(v).tolist() for k, v in self.population_.items()},
            "removed": np.flatnonzero(self.removed_).tolist(),
            "spec": self.spec_.to_dict() if self.spec_ is not None else None,
            "build_report": self.build_report_,
        }
        (directory / "lookalike.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> Self:
        """Read a model written by :meth:`save`; ``n_threads`` as in the constructor."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "lookalike.json").read_text(encoding="utf-8"))
            profiles = pd.read_parquet(directory / "profiles.parquet")
        except (OSError, ValueError) as exc:
            raise BundleError(f"lookalike model in {directory} is unreadable: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"lookalike model format {meta.get('format_version')} is not {FORMAT_VERSION}"
            )
        self = cls(LookalikeSettings(**meta["settings"]), n_threads=n_threads)
        self.embedder_ = Embedder.from_dict(meta["embedder"])
        try:
            arrays = {name: map_array(directory / f"{name}.npy") for name in ARRAYS}
        except (OSError, ValueError) as exc:
            raise BundleError(f"lookalike arrays in {directory} are unreadable: {exc}") from exc
        n = len(profiles)
        if any(len(a) != n for a in arrays.values()):
            raise BundleError(f"lookalike arrays in {directory} do not match its profile list")
        self.profile_ids_ = pd.Index(profiles["profile_id"].astype("string"), name="profile_id")
        self.raw_, self.codes_, self.vectors_ = arrays["raw"], arrays["codes"], arrays["vectors"]
        with threadpool_limits(limits=self.threads):
            self.removed_ = np.zeros(n, dtype=bool)
            self.removed_[np.asarray(meta["removed"], dtype=np.int64)] = True
            self.index_ = LookalikeIndex.load(directory, n_threads=self.threads)
        self.population_ = {
            k: np.asarray(v, dtype=np.float64) for k, v in meta["population"].items()
        }
        if "raw_std" not in self.population_:  # saved before the raw_centroid candidate
            self.population_["raw_std"] = _raw_moments(self.raw_, ~self.removed_)[1]
        self.spec_ = FeatureSpec.from_dict(meta["spec"]) if meta["spec"] else None
        self.build_report_ = meta["build_report"]
        return self


def _raw_moments(raw: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each raw feature over the ``keep`` rows, NaN ignored
    (NaN where a feature has no value), shapes (n_raw,)."""
    kept = raw[keep]
    with np.errstate(all="ignore"), quiet_nan_warnings():
        return (
            np.nanmean(kept, axis=0, dtype=np.float64),
            np.nanstd(kept, axis=0, dtype=np.float64),
        )
