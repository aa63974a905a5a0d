"""Seed-conditioned ranking of the lookalike model, and the audience it returns.

1. Similarity: k-means (``faiss.Kmeans``, spherical) splits a large seed into several
   centroids, so a minority interest in a mixed seed keeps its own; each centroid queries with
   a seed-weighted direction (its offset from the population mean, on the embedding dimensions
   where the seed differs significantly, weighted by how much), and a profile's similarity is
   the soft maximum over centroids, weighted by their share of the seed.
2. Candidates: every profile is scored exactly while that is cheap (profiles x centroids up to
   ``index_min_work``); beyond, FAISS returns each centroid's nearest profiles, grown until a
   bound certifies that the union holds the top of the ranking.
3. Re-rank: from ``min_seed`` seeds a positive-unlabeled LightGBM classifier (seeds vs a sample
   of the population, :mod:`.pu`) scores a ``candidate_factor`` wider pool; its standardised
   margin is blended with the standardised similarity, the classifier's weight growing with the
   seed.

That is the ``hybrid`` candidate. Three plain ones rank the same way and the four are judged on
held-out seed recall (:mod:`.quality`): ``raw_centroid`` (cosine to the seed's mean on the
z-scored raw numeric features, the baseline a data scientist writes without any embedding),
``centroid`` (cosine to the seed's mean embedding vector) and ``classifier`` (the
positive-unlabeled LightGBM alone, scoring every eligible profile). The simplest one within one
standard error of the best serves.

``raw_centroid`` has no index over its space: it scores every eligible profile (a chunked
matrix product over ``raw_``, O(profiles x numeric features) per request: about 0.9 CPU s for
a million profiles of 40 features on one thread, linear in the population).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from dmp_ml.models.lookalike.embedding import CHUNK_ROWS
from dmp_ml.models.lookalike.pu import PUClassifier, classifier_matrix, fit_pu

if TYPE_CHECKING:
    from dmp_ml.models.lookalike.model import LookalikeModel
    from dmp_ml.settings import LookalikeSettings

# The index is only worth searching for an audience that is a small share of the population.
_EXHAUSTIVE_SHARE = 0.05
_MAX_RETRIEVAL_ROUNDS = 5
# Each centroid first asks for this many times its share of the pool: the union overlaps, and
# the best profiles by the soft maximum need not be any one centroid's very nearest.
_RETRIEVAL_OVERSAMPLE = 8.0
# k-means of a seed fits on at most this many of its vectors.
_KMEANS_MAX_POINTS = 50_000
# Below this many vectors k-means runs on one thread: OpenMP threads cost more than they save
# on a seed of a few thousand (far more on a busy machine), and the result does not change.
_KMEANS_THREADED_POINTS = 20_000

CANDIDATES = ("raw_centroid", "centroid", "hybrid", "classifier")
"""The ways to rank an audience, simplest first: the guard serves the simplest one whose
held-out seed recall is within one standard error of the best (:mod:`.quality`)."""

PUClassifiers = dict[tuple[bytes, bytes, int], tuple[PUClassifier, np.ndarray]]
"""The PU classifiers one expansion has fitted, by (seed rows, negative rows, random seed),
each with its margins by row (NaN: not predicted yet). The hybrid and the classifier
candidates judged on the same held-out split fit the same classifier: it is fitted once."""


@dataclass(frozen=True)
class Audience:
    """An expanded audience.

    Attributes
    ----------
    frame : DataFrame
        Columns ``profile_id`` (string), ``score`` (float64 in [0, 1]: the estimated share of
        the eligible population that is less seed-like) and ``rank`` (int64, 1 = best), best first.
    diagnostics : dict
        JSON-serialisable: seed matching, method, warnings, expected quality, distinguishing
        features. See :meth:`LookalikeModel.expand`.
    """

    frame: pd.DataFrame
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    def lines(self) -> list[str]:
        """The diagnostics as short readable lines (for a terminal or a log)."""
        d = self.diagnostics
        out = [
            f"seed: {d['seeds_matched']} of {d['seeds_given']} ids matched"
            + (f" ({d['unknown_seed_count']} unknown)" if d["unknown_seed_count"] else ""),
            f"audience: {d['size']} profiles ({d['reach']:.2%} of {d['population']} eligible), "
            f"method: {d['method']}",
        ]
        quality = d.get("expected_quality")
        if quality:
            out.append(
                f"expected quality: {quality['recall']:.0%} of {quality['holdout_seeds']} held-out "
                f"seeds recovered, {quality['lift']:.1f}x lift over random"
            )
        out.extend(f"warning: {w}" for w in d["warnings"])
        if d["distinguishing_features"]:
            out.append("seed differs from the population in:")
            out.extend(f"  {f['text']}" for f in d["distinguishing_features"])
        return out


@dataclass(frozen=True)
class SeedPlan:
    """One request resolved against the model's profiles (row positions, sorted)."""

    seeds: np.ndarray
    """Known, not forgotten seed positions."""
    exclude: np.ndarray
    """Positions never returned: the excluded ids and the forgotten profiles."""
    unknown: list[str]
    """Seed ids the model does not hold."""
    given: int
    """Distinct seed ids given."""
    population: int
    """Profiles the model holds (forgotten ones not counted)."""
    size: int
    """Profiles to return (at most the available ones)."""
    warnings: list[str]


def seeded_rng(seed: int, salt: int) -> np.random.Generator:
    """The generator of one step of an expansion: the model's ``seed`` and the step's ``salt``."""
    return np.random.default_rng([seed, salt])


@dataclass
class Ranker:
    """Seed-conditioned scoring state of one expansion (centroids, classifier, normalisation).

    Built by :func:`fit_ranker`; scores rows (positions into ``model``'s profiles).
    """

    model: LookalikeModel
    centroids: np.ndarray
    log_shares: np.ndarray
    tau: float
    weight: float
    booster: PUClassifier | None
    sim_mean: float = 0.0
    sim_std: float = 1.0
    clf_mean: float = 0.0
    clf_std: float = 1.0
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reference_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # classifier margins already computed, by row position (NaN: not yet): the reference
    # sample, the held-out slice and the candidates overlap, and each row is predicted once
    margins: np.ndarray | None = None
    space: str = "embedding"
    """``embedding`` (the model's vectors, which the index holds) or ``raw`` (z-scored raw
    numeric features, :func:`raw_vectors`; no index: always scored exhaustively)."""

    def similarity(self, rows: np.ndarray) -> np.ndarray:
        """Seed similarity: ``tau * log(sum_c share_c * exp(cos(x, c) / tau))`` over centroids.

        A soft maximum: a profile close to any centroid scores high (a minority interest keeps
        its members), while a centroid made of a few seeds counts in proportion to them.
        """
        raw_space = self.space == "raw"
        vectors = self.model.vectors_
        out = np.empty(len(rows), dtype=np.float64)
        for start in range(0, len(rows), CHUNK_ROWS):
            part = rows[start : start + CHUNK_ROWS]
            block = (raw_vectors(self.model, part) if raw_space else vectors[part]) @ (
                self.centroids.T
            )
            out[start : start + CHUNK_ROWS] = _soft_max(
                block.astype(np.float64) / self.tau + self.log_shares, axis=1
            )
        return out * self.tau

    def margin(self, rows: np.ndarray) -> np.ndarray:
        """Classifier raw scores of ``rows``; each row is predicted once per ranker (memoised)."""
        assert self.booster is not None
        model = self.model
        if self.margins is None:
            self.margins = np.full(len(model.profile_ids_), np.nan)
        cache = self.margins
        todo = np.unique(rows[np.isnan(cache[rows])])
        for start in range(0, len(todo), 4 * CHUNK_ROWS):
            part = todo[start : start + 4 * CHUNK_ROWS]
            cache[part] = self.booster.margin(
                classifier_matrix(model, part),
                num_threads=model.threads if len(part) >= 100_000 else 1,
            )
        return cache[rows]

    def blend(self, sims: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Standardised similarity, blended with the standardised classifier margin if any."""
        z = (sims - self.sim_mean) / self.sim_std
        if self.booster is None:
            return z
        margin = self.margin(rows)
        return (1 - self.weight) * z + self.weight * (margin - self.clf_mean) / self.clf_std

    def scores(self, values: np.ndarray) -> np.ndarray:
        """Blended values as the share of the reference sample that ranks lower, in [0, 1]."""
        ref = self.reference
        if len(ref) == 0:
            return np.ones(len(values))
        lo = np.searchsorted(ref, values, side="left")
        hi = np.searchsorted(ref, values, side="right")
        return np.clip((lo + hi) / (2.0 * len(ref)), 0.0, 1.0)


def fit_ranker(
    model: LookalikeModel,
    seeds: np.ndarray,
    rerank: bool,
    weight: float,
    excluded: np.ndarray,
    salt: int,
    method: str = "hybrid",
    classifiers: PUClassifiers | None = None,
) -> Ranker:
    """Centroids, (optionally) the PU classifier and the score normalisation for ``seeds``.

    ``excluded`` positions stay out of the reference sample that normalises the scores;
    ``salt`` separates the random draws of the full seed from those of a held-out split.
    ``method`` is one of :data:`CANDIDATES`: ``hybrid`` as ``rerank``/``weight`` say,
    ``centroid`` one plain mean direction and no classifier, ``classifier`` the PU
    classifier alone. ``classifiers``, shared by the rankers of one expansion, reuses a PU
    classifier fitted on the same rows with the same random seed.
    """
    if method not in CANDIDATES:
        raise ValueError(f"unknown lookalike method {method!r}")
    s = model.settings
    rng = seeded_rng(s.seed, salt)
    space = "embedding"
    if method == "raw_centroid":
        rerank, weight, space = False, 0.0, "raw"
        centroids, shares = _unit(_raw_z(model, seeds).mean(axis=0, keepdims=True)), np.ones(1)
    elif method == "centroid":
        rerank, weight = False, 0.0
        mean = model.vectors_[seeds].astype(np.float64).mean(axis=0, keepdims=True)
        centroids, shares = _unit(mean), np.ones(1)
    else:
        if method == "classifier":
            rerank, weight = True, 1.0
        n_c = _n_centroids(s, len(seeds))
        centroids, shares, means = kmeans(model.vectors_[seeds], n_c, rng)
        if s.seed_weighted_metric:
            centroids = _query_directions(model, seeds, means)
    unlabeled = np.ones(len(model.profile_ids_), dtype=bool)
    unlabeled[seeds] = False
    unlabeled[model.removed_] = False
    pool = np.flatnonzero(unlabeled)
    booster = margins = None
    if rerank and weight > 0 and len(pool):
        negatives = np.sort(rng.choice(pool, min(s.pu_negatives, len(pool)), replace=False))
        key = (seeds.tobytes(), negatives.tobytes(), int(rng.integers(0, 2**31 - 1)))
        if classifiers is not None and key in classifiers:
            booster, margins = classifiers[key]
        else:
            booster = fit_pu(model, seeds, negatives, key[2])
            margins = np.full(len(model.profile_ids_), np.nan)
            if classifiers is not None:
                classifiers[key] = (booster, margins)
    reference_pool = np.setdiff1d(pool, excluded, assume_unique=True)
    if len(reference_pool) == 0:
        reference_pool = pool
    reference = np.sort(
        rng.choice(reference_pool, min(s.reference_size, len(reference_pool)), replace=False)
    )
    ranker = Ranker(
        model=model,
        centroids=centroids,
        log_shares=np.log(shares),
        tau=s.similarity_temperature,
        weight=weight if booster is not None else 0.0,
        booster=booster,
        margins=margins,
        space=space,
    )
    sims = ranker.similarity(reference)
    ranker.sim_mean, ranker.sim_std = float(sims.mean()), _safe_std(sims)
    if booster is not None:
        margin = ranker.margin(reference)
        ranker.clf_mean, ranker.clf_std = float(margin.mean()), _safe_std(margin)
    ranker.reference = np.sort(ranker.blend(sims, reference))
    ranker.reference_rows = reference
    return ranker


def _raw_z(model: LookalikeModel, rows: np.ndarray) -> np.ndarray:
    """Raw numeric features of ``rows`` z-scored on the population, missing -> 0 (the mean).

    Returns float32, shape (len(rows), n_numeric).
    """
    pop = model.population_
    sd = np.where(pop["raw_std"] > 1e-12, pop["raw_std"], 1.0)
    # in place, and one mask for NaN and both infinities (what nan_to_num to 0 does in four
    # passes): the same values at half the cost, and every request scores tens of thousands
    z = model.raw_[rows].astype(np.float64)
    z -= pop["raw_mean"]
    z /= sd
    z[~np.isfinite(z)] = 0.0
    return z.astype(np.float32)


def raw_vectors(model: LookalikeModel, rows: np.ndarray) -> np.ndarray:
    """Unit rows of :func:`_raw_z`: the space of the ``raw_centroid`` candidate, (len(rows), d).

    An all-mean profile (or a forgotten one, wiped to NaN) is the zero vector: cosine 0.
    """
    z = _raw_z(model, rows)  # a new array: normalised in place, as :func:`_unit` would
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    z /= norms
    return z


def _query_directions(model: LookalikeModel, seeds: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Seed-weighted query per centroid: ``unit(w * (mean_c - population_mean))``.

    ``w = |effect| / sd`` on the embedding dimensions where the whole seed differs
    significantly from the population (|t| >= 2.5; effect = standardized mean difference)
    and 0 elsewhere: dimensions that say nothing about the seed drop out instead of adding
    noise to every cosine, and the most distinctive ones count most. Inner product with
    such a query is a (diagonal) discriminant score; FAISS searches it as is.
    """
    pop_mean, pop_sd = model.population_["vec_mean"], model.population_["vec_std"]
    sd = np.where(pop_sd > 1e-6, pop_sd, np.inf)
    effect = (model.vectors_[seeds].mean(axis=0) - pop_mean) / sd
    t_stat = np.abs(effect) * math.sqrt(len(seeds))
    weight = np.where(t_stat >= 2.5, np.abs(effect) / sd, 0.0)
    if not weight.any():
        weight = 1.0 / sd
    return _unit((means - pop_mean) * weight)


def _n_centroids(s: LookalikeSettings, n_seed: int) -> int:
    if n_seed < s.kmeans_min_seed:
        return 1
    return int(min(s.max_centroids, max(1, math.ceil(n_seed / s.seeds_per_centroid))))


def rank(
    model: LookalikeModel, ranker: Ranker, size: int, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str]:
    """Top ``size`` positions (best first) with their blended values, and the retrieval path."""
    n_avail = len(model.profile_ids_) - len(excluded)
    if size <= 0 or n_avail <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0), "none"
    size = min(size, n_avail)
    pool = size
    if ranker.booster is not None:
        # the classifier is better than similarity at telling seed-like profiles apart, so
        # it re-ranks a wider pool (everyone, once that is a large share anyway; everyone
        # when it ranks alone)
        factor = math.inf if ranker.weight >= 1.0 else model.settings.candidate_factor
        pool = min(n_avail, math.ceil(factor * size)) if math.isfinite(factor) else n_avail
    candidates: np.ndarray | None = None
    retrieval = "exhaustive"
    sims: np.ndarray | None = None
    work = n_avail * len(ranker.centroids)
    if (
        ranker.space == "embedding"
        and pool < _EXHAUSTIVE_SHARE * n_avail
        and work > model.settings.index_min_work
    ):
        found = _retrieve(model, ranker, pool, excluded)
        if found is not None and len(found[0]) >= pool:
            (candidates, sims), retrieval = found, "index"
    if candidates is None or sims is None:
        keep = np.ones(len(model.profile_ids_), dtype=bool)
        keep[excluded] = False
        candidates = np.flatnonzero(keep)
        sims = ranker.similarity(candidates)
        retrieval = "exhaustive"
    values = ranker.blend(sims, candidates)
    order = np.lexsort((candidates, -values))[:size]
    return candidates[order], values[order], retrieval


def _retrieve(
    model: LookalikeModel, ranker: Ranker, pool: int, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Candidates from the index that provably hold the ``pool`` most similar profiles.

    Each centroid c fetches its nearest ``k_c ~ oversample * pool * share_c`` profiles
    (rounded up to a power of two so centroids asking alike share one FAISS call). A profile
    outside the union is at most as similar to c as c's k-th result, so its similarity is at
    most ``U = tau * log(sum_c share_c * exp(kth_c / tau))``; once the ``pool``-th best
    similarity inside the union reaches U the union holds the exact top (up to the index's
    own recall). Otherwise every k doubles, for a few rounds, before giving up (None: the
    caller scores everyone). Returns sorted positions and their similarities.
    """
    index = model.index_
    n_total = index.ntotal
    shares = np.exp(ranker.log_shares)
    factor = _RETRIEVAL_OVERSAMPLE
    for _ in range(_MAX_RETRIEVAL_ROUNDS):
        want = np.maximum(1, np.ceil(factor * pool * shares)).astype(np.int64)
        ks = np.minimum(n_total, 2 ** np.ceil(np.log2(want)).astype(np.int64))
        found, kth = [], np.empty(len(ks))
        for k in np.unique(ks):
            rows = np.flatnonzero(ks == k)
            sims, ids = index.search(ranker.centroids[rows], int(k), excluded)
            found.append(ids[ids >= 0])
            kth[rows] = np.where(ids[:, -1] >= 0, sims[:, -1], -np.inf)
        union = np.unique(np.concatenate(found))
        if len(union) >= pool:
            union_sims = ranker.similarity(union)
            threshold = np.partition(union_sims, len(union) - pool)[len(union) - pool]
            bound = ranker.tau * _soft_max(kth / ranker.tau + ranker.log_shares, axis=0)
            if bound <= threshold or ks.min() >= n_total:
                return union, union_sims
        elif ks.min() >= n_total:
            return union, ranker.similarity(union)
        factor *= 2
    return None


def kmeans(
    points: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means (``faiss.Kmeans``) of unit ``points``.

    Returns unit centroids, float32 (k', d), the share of points each one holds (k',) and
    the plain mean of those points (k', d); empty clusters are dropped, so k' <= k.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    if k <= 1 or len(points) <= 1:
        mean = points.mean(axis=0, keepdims=True)
        return _unit(mean), np.ones(1), mean.astype(np.float64)
    k = min(k, len(points))
    clustering = faiss.Kmeans(
        points.shape[1],
        k,
        niter=20,
        spherical=True,
        seed=int(rng.integers(0, 2**31 - 1)),
        min_points_per_centroid=1,  # a seed of 60 may have 2 clusters: no warning for that
        max_points_per_centroid=max(1, _KMEANS_MAX_POINTS // k),
    )
    # a small seed clusters faster on one thread; None leaves the thread count as it is
    with threadpool_limits(limits=1 if len(points) < _KMEANS_THREADED_POINTS else None):
        clustering.train(points)
    centroids = _unit(clustering.centroids)
    assign = np.argmax(points @ centroids.T, axis=1)
    counts = np.bincount(assign, minlength=len(centroids))
    keep = counts > 0
    means = np.stack(
        [points[assign == c].astype(np.float64).mean(axis=0) for c in np.flatnonzero(keep)]
    )
    return centroids[keep], counts[keep] / counts.sum(), means


def _soft_max(logits: np.ndarray, axis: int) -> np.ndarray:
    """``log(sum(exp(logits)))`` along ``axis``, computed stably."""
    peak = logits.max(axis=axis, keepdims=True)
    return (peak + np.log(np.exp(logits - peak).sum(axis=axis, keepdims=True))).squeeze(axis)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _safe_std(x: np.ndarray) -> float:
    sd = float(np.std(x)) if len(x) else 0.0
    return sd if sd > 1e-12 else 1.0
