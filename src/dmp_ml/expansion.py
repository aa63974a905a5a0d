"""Lookalike expansion: profile embeddings, a FAISS index and seed-conditioned ranking.

A campaign tool sends a seed (customers who converted, a CRM list) and asks for more people
like them. The pieces:

- :class:`Embedder` turns the feature table into one L2-normalised float32 vector per profile
  (robust scaling, clipped outliers, top categorical levels one-hot, optional PCA), so that
  inner product is cosine similarity.
- :class:`LookalikeIndex` is a FAISS ``IndexIDMap2``: exact flat inner product for small
  populations, a factory index (IVF or HNSW) beyond, with ``nprobe``/``efSearch`` tuned at
  build time until recall@100 against exact search reaches the target; search-time exclusion
  of ids and ``remove_ids`` (masked where the index type cannot remove).
- :class:`LookalikeModel` expands a seed:

  1. similarity: k-means splits a large seed into several centroids (so a minority interest in
     a mixed seed keeps its own); each centroid queries with a seed-weighted direction (its
     offset from the population mean, on the embedding dimensions where the seed differs
     significantly, weighted by how much), and a profile's similarity is the soft maximum over
     centroids, weighted by their share of the seed;
  2. candidates: every profile is scored exactly while that is cheap (profiles x centroids up
     to ``index_min_work``); beyond, FAISS returns each centroid's nearest profiles, grown until
     a bound certifies that the union holds the top of the ranking;
  3. re-rank: from ``min_seed`` seeds a positive-unlabeled LightGBM classifier (seeds vs a
     sample of the population) scores a ``candidate_factor`` wider pool; its standardised
     margin is blended with the standardised similarity, the classifier's weight growing with
     the seed size;
  4. diagnostics: seeds matched/unknown, "seed too small", "seed not distinctive", expected
     quality from a held-out slice of the seed (recall within the size, lift over random,
     AUC) and the features that distinguish the seed, in words.

Row ids inside the index are int64 positions into the model's profile table; the model maps
them back to profile ids. Everything is deterministic for the same inputs and model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import faiss
import lightgbm as lgb
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from dmp_ml.errors import (
    BundleError,
    ConfigError,
    DataContractError,
    RequestError,
    UnknownProfileError,
)
from dmp_ml.features import FeatureSpec, FeatureTable
from dmp_ml.settings import LookalikeSettings

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CHUNK_ROWS = 65_536
# nprobe / efSearch are tuned for k = recall_k; a query for k >> recall_k must visit more of the
# index, so the tuned value is scaled by (k / recall_k) ** _LARGE_K_EXPONENT (a heuristic; the
# model's certified retrieval below asks for more when a round falls short).
_LARGE_K_EXPONENT = 0.75
# The index is only worth searching for an audience that is a small share of the population.
_EXHAUSTIVE_SHARE = 0.05
_MAX_RETRIEVAL_ROUNDS = 5
# Each centroid first asks for this many times its share of the pool: the union overlaps, and
# the best profiles by the soft maximum need not be any one centroid's very nearest.
_RETRIEVAL_OVERSAMPLE = 8.0


def _threads(n_threads: int) -> int:
    return n_threads if n_threads > 0 else max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Embedding


class Embedder:
    """Feature frame -> L2-normalised float32 vectors for cosine similarity.

    Numeric columns are centred on their median and divided by their IQR (falling back to the
    mean absolute deviation from the median, then 1, for columns that are mostly constant),
    clipped to ``[-clip, clip]``; a missing value becomes 0, the population median. String and
    category columns are one-hot encoded on their ``max_levels`` most frequent levels that occur
    at least ``min_level_count`` times (others encode as all zeros; a column without such levels,
    e.g. an e-mail address, is dropped). ``n_components`` optionally reduces the result with PCA
    fitted on at most ``max_fit_rows`` rows.

    Parameters
    ----------
    clip : float
        Bound of the robust z-score; keeps a handful of extreme counts from owning the geometry.
    max_levels, min_level_count : int
        Categorical levels kept.
    n_components : int or None
        PCA dimensions; None keeps the scaled features as they are.
    max_fit_rows : int
        Row sample for the PCA fit.
    seed : int
        Sampling seed for the PCA fit.
    """

    def __init__(
        self,
        clip: float = 5.0,
        max_levels: int = 10,
        min_level_count: int = 20,
        n_components: int | None = None,
        max_fit_rows: int = 200_000,
        seed: int = 0,
    ) -> None:
        self.clip = clip
        self.max_levels = max_levels
        self.min_level_count = min_level_count
        self.n_components = n_components
        self.max_fit_rows = max_fit_rows
        self.seed = seed

    # -- fitting --------------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame) -> Embedder:
        """Learn medians, scales, kept levels and (optionally) PCA axes from ``frame``."""
        self._fit(frame)
        return self

    def _fit(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`fit`, returning the :meth:`arrays` of ``frame`` it computed on the way."""
        numeric: list[str] = []
        categorical: list[str] = []
        for col in frame.columns:
            dtype = frame[col].dtype
            if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
                categorical.append(str(col))
            elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
                numeric.append(str(col))
            else:
                logger.info("lookalike embedding ignores column %s of dtype %s", col, dtype)
        levels: dict[str, list[str]] = {}
        for col in categorical:
            counts = frame[col].astype("string").value_counts(dropna=True)
            counts = counts[counts >= self.min_level_count]
            ordered = sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
            kept = [str(level) for level, _ in ordered[: self.max_levels]]
            if kept:
                levels[col] = kept
        self.numeric_columns_ = numeric
        self.categorical_columns_ = [c for c in categorical if c in levels]
        self.levels_ = levels
        if not numeric and not levels:
            raise DataContractError("the feature table has no usable numeric or categorical column")
        raw, codes = self.arrays(frame)
        center = np.zeros(len(numeric))
        scale = np.ones(len(numeric))
        for j in range(len(numeric)):
            col = raw[:, j].astype(np.float64)
            col = col[~np.isnan(col)]
            if col.size == 0:
                continue
            q25, q50, q75 = np.quantile(col, [0.25, 0.5, 0.75])
            center[j] = q50
            spread = q75 - q25
            if not spread > 0:
                spread = float(np.mean(np.abs(col - q50)))
            scale[j] = spread if spread > 0 else 1.0
        self.center_ = center
        self.scale_ = scale
        self.feature_names_ = numeric + [
            f"{c}={level}" for c in self.categorical_columns_ for level in levels[c]
        ]
        self.pca_mean_: np.ndarray | None = None
        self.pca_components_: np.ndarray | None = None
        n_features = len(self.feature_names_)
        if self.n_components is not None and 0 < self.n_components < n_features:
            rng = np.random.default_rng(self.seed)
            rows = np.arange(len(raw))
            if len(rows) > self.max_fit_rows:
                rows = np.sort(rng.choice(rows, self.max_fit_rows, replace=False))
            pre = self.pre(raw[rows], codes[rows]).astype(np.float64)
            mean = pre.mean(axis=0)
            centred = pre - mean
            cov = centred.T @ centred / max(1, len(pre) - 1)
            values, vectors = np.linalg.eigh(cov)
            order = np.argsort(values)[::-1][: self.n_components]
            comps = vectors[:, order].T
            signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
            signs[signs == 0] = 1.0
            self.pca_mean_ = mean
            self.pca_components_ = comps * signs[:, None]
        self.dim_ = len(self.pca_components_) if self.pca_components_ is not None else n_features
        return raw, codes

    # -- transforming ---------------------------------------------------------------------
    def arrays(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Raw inputs: numeric columns as float32 (NaN kept) and level codes as int16 (-1: other).

        Shapes (n, n_numeric) and (n, n_categorical).
        """
        missing = [
            c for c in self.numeric_columns_ + self.categorical_columns_ if c not in frame.columns
        ]
        if missing:
            raise DataContractError(f"feature table lacks columns the embedder needs: {missing}")
        # filled column by column into a column-major buffer, then made row-major once
        raw = np.empty((len(self.numeric_columns_), len(frame)), dtype=np.float32)
        for j, col in enumerate(self.numeric_columns_):
            raw[j] = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
        codes = np.empty((len(self.categorical_columns_), len(frame)), dtype=np.int16)
        for j, col in enumerate(self.categorical_columns_):
            values = frame[col].astype("string").astype(object)
            codes[j] = pd.Categorical(values, categories=self.levels_[col]).codes
        return np.ascontiguousarray(raw.T), np.ascontiguousarray(codes.T)

    def pre(self, raw: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Scaled, clipped numeric columns then one-hot levels (before PCA), float32 (n, F)."""
        scaled = (raw.astype(np.float64) - self.center_) / self.scale_
        np.clip(scaled, -self.clip, self.clip, out=scaled)
        scaled[np.isnan(scaled)] = 0.0
        parts = [scaled.astype(np.float32)]
        for j, col in enumerate(self.categorical_columns_):
            n_levels = len(self.levels_[col])
            onehot = np.zeros((len(codes), n_levels), dtype=np.float32)
            known = codes[:, j] >= 0
            onehot[np.flatnonzero(known), codes[known, j].astype(np.int64)] = 1.0
            parts.append(onehot)
        return np.hstack(parts) if len(parts) > 1 else parts[0]

    def embed(self, raw: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Vectors from :meth:`arrays` output; float32 (n, dim_), unit norm (zero rows stay 0)."""
        out = np.empty((len(raw), self.dim_), dtype=np.float32)
        for start in range(0, len(raw), _CHUNK_ROWS):
            stop = start + _CHUNK_ROWS
            block = self.pre(raw[start:stop], codes[start:stop]).astype(np.float64)
            if self.pca_components_ is not None:
                block = (block - self.pca_mean_) @ self.pca_components_.T
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            out[start:stop] = (block / norms).astype(np.float32)
        return out

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Vectors for ``frame``: float32 array of shape (len(frame), dim_)."""
        return self.embed(*self.arrays(frame))

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.fit(frame).transform(frame)

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "params": {
                "clip": self.clip,
                "max_levels": self.max_levels,
                "min_level_count": self.min_level_count,
                "n_components": self.n_components,
                "max_fit_rows": self.max_fit_rows,
                "seed": self.seed,
            },
            "numeric_columns": self.numeric_columns_,
            "categorical_columns": self.categorical_columns_,
            "levels": self.levels_,
            "center": self.center_.tolist(),
            "scale": self.scale_.tolist(),
            "feature_names": self.feature_names_,
            "pca_mean": None if self.pca_mean_ is None else self.pca_mean_.tolist(),
            "pca_components": (
                None if self.pca_components_ is None else self.pca_components_.tolist()
            ),
            "dim": self.dim_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Embedder:
        self = cls(**data["params"])
        self.numeric_columns_ = list(data["numeric_columns"])
        self.categorical_columns_ = list(data["categorical_columns"])
        self.levels_ = {k: list(v) for k, v in data["levels"].items()}
        self.center_ = np.asarray(data["center"], dtype=np.float64)
        self.scale_ = np.asarray(data["scale"], dtype=np.float64)
        self.feature_names_ = list(data["feature_names"])
        pm, pc = data["pca_mean"], data["pca_components"]
        self.pca_mean_ = None if pm is None else np.asarray(pm, dtype=np.float64)
        self.pca_components_ = None if pc is None else np.asarray(pc, dtype=np.float64)
        self.dim_ = int(data["dim"])
        return self


# --------------------------------------------------------------------------------------------
# Index


def brute_force_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    batch_rows: int = 65_536,
    batch_queries: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search with numpy (batched matmul), the reference for recall.

    Parameters
    ----------
    vectors : (n, d) float32
    queries : (q, d) float32
    k : int
    exclude : bool mask (n,), optional
        Rows that may not be returned.

    Returns
    -------
    sims, ids : (q, k) arrays, best first; ids are row positions (-1 where fewer than k rows).
    """
    sims = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_queries):
        stop = start + batch_queries
        sims[start:stop], ids[start:stop] = _brute_force_block(
            vectors, queries[start:stop], k, exclude, batch_rows
        )
    return sims, ids


def _brute_force_block(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    batch_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(vectors)
    k_eff = min(k, n)
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, n, batch_rows):
        block = queries @ vectors[start : start + batch_rows].T
        if exclude is not None:
            block[:, exclude[start : start + batch_rows]] = -np.inf
        ids = np.broadcast_to(np.arange(start, start + block.shape[1]), block.shape)
        cat_s = np.hstack([best_s, block])
        cat_i = np.hstack([best_i, ids])
        if cat_s.shape[1] > k_eff:
            part = np.argpartition(-cat_s, k_eff - 1, axis=1)[:, :k_eff]
            cat_s = np.take_along_axis(cat_s, part, axis=1)
            cat_i = np.take_along_axis(cat_i, part, axis=1)
        best_s, best_i = cat_s, cat_i
    if best_s.size:
        order = np.lexsort((best_i, -best_s), axis=1)
        best_s = np.take_along_axis(best_s, order, axis=1)
        best_i = np.take_along_axis(best_i, order, axis=1)
    best_i = np.where(np.isfinite(best_s), best_i, -1)
    if k_eff < k:
        pad = k - k_eff
        best_s = np.hstack([best_s, np.full((len(queries), pad), -np.inf, dtype=np.float32)])
        best_i = np.hstack([best_i, np.full((len(queries), pad), -1, dtype=np.int64)])
    return best_s.astype(np.float32), best_i


def _recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [
        len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, int((t >= 0).sum()))
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


class LookalikeIndex:
    """FAISS inner-product index over unit vectors, exact when small, tuned when approximate.

    Parameters
    ----------
    exact_max_profiles : int
        Populations up to this size get ``IDMap2`` over ``IndexFlatIP`` (exact).
    factory : str
        FAISS factory string beyond that; ``{nlist}`` is replaced by ``round(sqrt(n))``.
        IVF (``nprobe``) and HNSW (``efSearch``) are tuned; other types are used as they are.
    recall_target, recall_k, tune_queries : float, int, int
        Tuning: the smallest ``nprobe``/``efSearch`` whose recall@``recall_k`` against exact
        search, over ``tune_queries`` sampled profiles, reaches ``recall_target``.
    nprobe, ef_search : int or None
        Fixed values instead of tuning.
    n_threads : int
        FAISS OpenMP threads (``faiss.omp_set_num_threads``); 0 means every core.
    seed : int
        Sampling seed (tuning queries, training sample).
    """

    def __init__(
        self,
        exact_max_profiles: int = 200_000,
        factory: str = "IVF{nlist},Flat",
        recall_target: float = 0.95,
        recall_k: int = 100,
        tune_queries: int = 200,
        nprobe: int | None = None,
        ef_search: int | None = None,
        n_threads: int = 1,
        seed: int = 0,
    ) -> None:
        self.exact_max_profiles = exact_max_profiles
        self.factory = factory
        self.recall_target = recall_target
        self.recall_k = recall_k
        self.tune_queries = tune_queries
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.n_threads = n_threads
        self.seed = seed

    def _set_threads(self) -> None:
        faiss.omp_set_num_threads(_threads(self.n_threads))

    def fit(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> LookalikeIndex:
        """Build the index over ``vectors`` (n, d) float32 with int64 ``ids`` (default 0..n-1)."""
        started = time.perf_counter()
        self._set_threads()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        factory = "Flat"
        if n > self.exact_max_profiles:
            factory = self.factory.replace("{nlist}", str(max(1, round(math.sqrt(n)))))
        try:
            index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(
                f"lookalike index_factory {self.factory!r} is not a FAISS factory string"
            ) from exc
        if not index.is_trained:
            train_rows = np.arange(n)
            if n > 256 * 1024:
                train_rows = np.sort(rng.choice(n, 256 * 1024, replace=False))
            index.train(vectors[train_rows])
        index.add_with_ids(vectors, ids)
        self.index_ = index
        sub = faiss.downcast_index(index.index)
        self.kind_ = "flat"
        self.param_name_: str | None = None
        self.param_value_: int | None = None
        self.nlist_: int | None = None
        if isinstance(sub, faiss.IndexFlat):
            self.kind_ = "flat"
        elif isinstance(sub, faiss.IndexHNSW):
            self.kind_, self.param_name_ = "hnsw", "efSearch"
        elif faiss.try_extract_index_ivf(sub) is not None:
            self.kind_, self.param_name_ = "ivf", "nprobe"
            self.nlist_ = int(faiss.extract_index_ivf(sub).nlist)
        else:
            self.kind_ = "other"
        self.removed_ = np.zeros(0, dtype=np.int64)
        recall = 1.0
        if self.kind_ != "flat" and n > 0:
            recall = self._tune(vectors, ids, rng)
        self.build_report_ = {
            "n": int(n),
            "dim": int(dim),
            "index_type": f"IDMap2,{factory}",
            "kind": self.kind_,
            "tuned_param": self.param_name_,
            "tuned_value": self.param_value_,
            "recall_at_k": self.recall_k,
            "recall_at_100": recall,
            "recall_target": self.recall_target,
            "recall_target_met": bool(recall >= self.recall_target),
            "build_seconds": round(time.perf_counter() - started, 3),
            "n_threads": _threads(self.n_threads),
        }
        logger.info("lookalike index built: %s", self.build_report_)
        return self

    def _tune(self, vectors: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> float:
        n = len(vectors)
        rows = np.sort(rng.choice(n, min(self.tune_queries, n), replace=False))
        queries = vectors[rows]
        k = min(self.recall_k, n)
        _, exact_rows = brute_force_search(vectors, queries, k)
        truth = np.where(exact_rows >= 0, ids[np.maximum(exact_rows, 0)], -1)
        fixed = self.nprobe if self.kind_ == "ivf" else self.ef_search
        if self.kind_ == "ivf":
            grid = [p for p in _doubling(1, self.nlist_ or 1)]
        elif self.kind_ == "hnsw":
            grid = [e for e in _doubling(16, 8192)]
        else:
            _, found = self.index_.search(queries, k)
            return _recall_at(found, truth)
        if fixed is not None:
            grid = [int(fixed)]
        recall = 0.0
        for value in grid:
            self.param_value_ = int(value)
            _, found = self.index_.search(queries, k, params=self._params(k, None))
            recall = _recall_at(found, truth)
            if recall >= self.recall_target:
                break
        if recall < self.recall_target:
            logger.warning(
                "lookalike index recall@%d is %.3f at %s=%s, below the target %.2f",
                k,
                recall,
                self.param_name_,
                self.param_value_,
                self.recall_target,
            )
        return round(recall, 4)

    def _params(self, k: int, sel: Any) -> Any:
        scale = max(1.0, k / self.recall_k) ** _LARGE_K_EXPONENT
        if self.kind_ == "ivf":
            nprobe = min(self.nlist_ or 1, math.ceil((self.param_value_ or 1) * scale))
            return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        if self.kind_ == "hnsw":
            ef = max(k, math.ceil((self.param_value_ or 16) * scale))
            return faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    @property
    def ntotal(self) -> int:
        return int(self.index_.ntotal) - len(self.removed_)

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids by inner product for each query, never returning ``exclude_ids``.

        Returns ``(sims, ids)`` of shape (q, k); ids are -1 where fewer results exist.
        """
        self._set_threads()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        excluded = self.removed_
        if exclude_ids is not None and len(exclude_ids):
            excluded = np.union1d(excluded, np.asarray(exclude_ids, dtype=np.int64))
        batch = selector = None
        if len(excluded):
            batch = faiss.IDSelectorBatch(excluded)
            selector = faiss.IDSelectorNot(batch)
        k = max(1, min(int(k), int(self.index_.ntotal)))
        params = self._params(k, selector)
        if params is None:
            sims, ids = self.index_.search(queries, k)
        else:
            sims, ids = self.index_.search(queries, k, params=params)
        del batch, selector
        return sims, ids

    def remove_ids(self, ids: Iterable[int]) -> int:
        """Remove ``ids`` from the index; where the index type cannot, they are masked instead."""
        arr = np.unique(np.asarray(list(ids), dtype=np.int64))
        if arr.size == 0:
            return 0
        try:
            return int(self.index_.remove_ids(arr))
        except RuntimeError:
            before = len(self.removed_)
            self.removed_ = np.union1d(self.removed_, arr)
            return len(self.removed_) - before

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index_, str(directory / "index.faiss"))
        meta = {
            "params": {
                "exact_max_profiles": self.exact_max_profiles,
                "factory": self.factory,
                "recall_target": self.recall_target,
                "recall_k": self.recall_k,
                "tune_queries": self.tune_queries,
                "nprobe": self.nprobe,
                "ef_search": self.ef_search,
                "n_threads": self.n_threads,
                "seed": self.seed,
            },
            "kind": self.kind_,
            "param_name": self.param_name_,
            "param_value": self.param_value_,
            "nlist": self.nlist_,
            "removed": self.removed_.tolist(),
            "build_report": self.build_report_,
        }
        (directory / "index.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> LookalikeIndex:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
            index = faiss.read_index(str(directory / "index.faiss"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise BundleError(f"lookalike index in {directory} is unreadable: {exc}") from exc
        params = dict(meta["params"])
        if n_threads is not None:
            params["n_threads"] = n_threads
        self = cls(**params)
        self.index_ = index
        self.kind_ = meta["kind"]
        self.param_name_ = meta["param_name"]
        self.param_value_ = meta["param_value"]
        self.nlist_ = meta["nlist"]
        self.removed_ = np.asarray(meta["removed"], dtype=np.int64)
        self.build_report_ = meta["build_report"]
        return self


def _doubling(start: int, stop: int) -> list[int]:
    values, v = [], start
    while v < stop:
        values.append(v)
        v *= 2
    values.append(stop)
    return values


# --------------------------------------------------------------------------------------------
# Expansion


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


@dataclass
class _Ranker:
    """Seed-conditioned scoring state of one expansion (centroids, classifier, normalisation)."""

    centroids: np.ndarray
    log_shares: np.ndarray
    tau: float
    weight: float
    booster: lgb.Booster | None
    sim_mean: float = 0.0
    sim_std: float = 1.0
    clf_mean: float = 0.0
    clf_std: float = 1.0
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reference_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # classifier margins already computed, by row position (NaN: not yet): the reference
    # sample, the held-out slice and the candidates overlap, and each row is predicted once
    margins: np.ndarray | None = None


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
    embedder_ : Embedder
    vectors_ : (n, dim) float32
    index_ : LookalikeIndex
    build_report_ : dict  (index report plus embedding facts; log it to MLflow)
    spec_ : FeatureSpec of the table the model was fitted on
    """

    def __init__(
        self, settings: LookalikeSettings | None = None, *, n_threads: int | None = None
    ) -> None:
        self.settings = settings if settings is not None else LookalikeSettings()
        self.n_threads = n_threads

    @property
    def _n_threads(self) -> int:
        return _threads(self.settings.threads if self.n_threads is None else self.n_threads)

    # -- fitting --------------------------------------------------------------------------
    def fit(self, table: FeatureTable) -> LookalikeModel:
        """Embed every profile of ``table`` and build the index."""
        s = self.settings
        if len(table) == 0:
            raise DataContractError("the feature table is empty: nothing to build a lookalike on")
        started = time.perf_counter()
        with threadpool_limits(limits=self._n_threads):
            self.embedder_ = Embedder(
                clip=s.clip,
                max_levels=s.max_levels,
                min_level_count=s.min_level_count,
                n_components=s.pca_components,
                seed=s.seed,
            )
            raw, codes = self.embedder_._fit(table.frame)
            self._set_data(
                pd.Index(table.frame.index.astype("string"), name="profile_id"), raw, codes
            )
            self.removed_ = np.zeros(len(raw), dtype=bool)
            self.index_ = self._new_index().fit(self.vectors_)
            self._population_stats()
        self.spec_ = table.spec
        self.build_report_ = {
            **self.index_.build_report_,
            "features": len(self.embedder_.feature_names_),
            "embedding_dim": self.embedder_.dim_,
            "fit_seconds": round(time.perf_counter() - started, 3),
        }
        return self

    def _new_index(self) -> LookalikeIndex:
        s = self.settings
        return LookalikeIndex(
            exact_max_profiles=s.exact_max_profiles,
            factory=s.index_factory,
            recall_target=s.recall_target,
            tune_queries=s.tune_queries,
            nprobe=s.nprobe,
            ef_search=s.ef_search,
            n_threads=self._n_threads,
            seed=s.seed,
        )

    def _set_data(self, ids: pd.Index, raw: np.ndarray, codes: np.ndarray) -> None:
        if ids.has_duplicates:
            raise DataContractError("the feature table has duplicate profile ids")
        self.profile_ids_ = ids
        self._raw = raw
        self._codes = codes
        self.vectors_ = self.embedder_.embed(raw, codes)

    def _population_stats(self) -> None:
        """Population means/sds of the scaled features and medians of the raw ones."""
        keep = ~self.removed_
        total = np.zeros(len(self.embedder_.feature_names_))
        total_sq = np.zeros_like(total)
        vec_total = np.zeros(self.vectors_.shape[1])
        vec_sq = np.zeros_like(vec_total)
        count = 0
        for start in range(0, len(self._raw), _CHUNK_ROWS):
            rows = np.flatnonzero(keep[start : start + _CHUNK_ROWS]) + start
            pre = self.embedder_.pre(self._raw[rows], self._codes[rows]).astype(np.float64)
            total += pre.sum(axis=0)
            total_sq += (pre**2).sum(axis=0)
            vec = self.vectors_[rows].astype(np.float64)
            vec_total += vec.sum(axis=0)
            vec_sq += (vec**2).sum(axis=0)
            count += len(rows)
        mean = total / max(1, count)
        var = np.maximum(total_sq / max(1, count) - mean**2, 0.0)
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            means = np.nanmean(self._raw[keep], axis=0, dtype=np.float64)
        vec_mean = vec_total / max(1, count)
        self.population_ = {
            "mean": mean,
            "std": np.sqrt(var),
            "median": self.embedder_.center_,  # as of the fit
            "raw_mean": means,
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
    ) -> Audience:
        """Profiles most like the seed, best first.

        Parameters
        ----------
        seed_ids : profile ids of the seed (unknown ids are reported, not fatal)
        size : number of profiles to return, or
        reach : share of the eligible population to return, in (0, max_reach]
        exclude_ids : profile ids that must not be returned (e.g. existing customers)

        Returns
        -------
        Audience
            Never contains a seed, an excluded id or a profile outside the table. Diagnostics
            keys: seeds_given, seeds_matched, unknown_seed_count, unknown_seed_ids (first 100),
            excluded, population, size, reach, method, classifier_weight, n_centroids,
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
        with threadpool_limits(limits=self._n_threads):
            plan = self._plan(seed_ids, exclude_ids, size_req, reach_req)
            s = self.settings
            warnings: list[str] = list(plan["warnings"])
            n_seed = len(plan["seeds"])
            rerank = n_seed >= s.min_seed
            weight = self._blend_weight(n_seed) if rerank else 0.0
            quality = None
            n_hold = int(math.floor(n_seed * s.holdout_fraction))
            if n_hold >= s.min_holdout_seeds and n_seed - n_hold >= 2:
                quality = self._holdout_quality(plan, [plan["size"]], rerank, weight)[0]
            elif n_seed > 0:
                warnings.append(
                    f"the seed is too small to hold out {s.min_holdout_seeds} profiles, so "
                    "there is no quality estimate"
                )
            excluded = np.union1d(plan["seeds"], plan["exclude"])
            ranker = self._ranker(plan["seeds"], rerank, weight, excluded, salt=0)
            positions, values, retrieval = self._rank(ranker, plan["size"], excluded)
            distinct = self._distinguishing(plan["seeds"])
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
        scores = self._scores(ranker, values)
        frame = pd.DataFrame(
            {
                "profile_id": pd.array(self.profile_ids_[positions].to_numpy(), dtype="string"),
                "score": scores,
                "rank": np.arange(1, len(positions) + 1, dtype=np.int64),
            }
        )
        diagnostics = {
            "seeds_given": plan["given"],
            "seeds_matched": n_seed,
            "unknown_seed_count": len(plan["unknown"]),
            "unknown_seed_ids": plan["unknown"][:100],
            "excluded": int(len(plan["exclude"])),
            "population": plan["population"],
            "size": int(len(frame)),
            "reach": len(frame) / max(1, plan["population"]),
            "method": "similarity+classifier" if rerank else "similarity",
            "classifier_weight": round(weight, 4),
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
        with threadpool_limits(limits=self._n_threads):
            plan = self._plan(seed_ids, exclude_ids, max(sizes), None)
            sizes = [min(v, plan["size"]) for v in sizes]
            n_seed = len(plan["seeds"])
            use = (n_seed >= self.settings.min_seed) if rerank is None else bool(rerank)
            weight = self._blend_weight(n_seed) if use else 0.0
            rows = self._holdout_quality(plan, sizes, use, weight)
            out = pd.DataFrame(rows).rename(
                columns={"recall": "expected_recall", "auc": "holdout_auc"}
            )
            if truth_ids is not None:
                excluded = np.union1d(plan["seeds"], plan["exclude"])
                ranker = self._ranker(plan["seeds"], use, weight, excluded, salt=0)
                positions, _, _ = self._rank(ranker, max(sizes), excluded)
                truth = self._positions(truth_ids)[0]
                truth = np.setdiff1d(truth, excluded)
                hit = np.isin(positions, truth)
                found = np.cumsum(hit)
                out["precision"] = [found[v - 1] / v if v > 0 else np.nan for v in sizes]
                out["recall"] = [found[v - 1] / max(1, len(truth)) if v > 0 else 0.0 for v in sizes]
        out.insert(1, "reach", out["size"] / max(1, plan["population"]))
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
        loc = self.profile_ids_.get_indexer(given)
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
    ) -> dict[str, Any]:
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
        return {
            "seeds": seeds,
            "exclude": np.union1d(exclude, removed).astype(np.int64),
            "unknown": unknown,
            "given": len(set(map(str, seed_list))),
            "population": int(population),
            "size": int(max(0, min(wanted, available))),
            "warnings": warnings,
        }

    def _blend_weight(self, n_seed: int) -> float:
        s = self.settings
        return s.classifier_weight * n_seed / (n_seed + s.blend_half_seed)

    def _rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.settings.seed, salt])

    def _ranker(
        self, seeds: np.ndarray, rerank: bool, weight: float, excluded: np.ndarray, salt: int
    ) -> _Ranker:
        s = self.settings
        rng = self._rng(salt)
        n_c = self._n_centroids(len(seeds))
        centroids, shares, means = _kmeans(self.vectors_[seeds], n_c, rng)
        if s.seed_weighted_metric:
            centroids = self._query_directions(seeds, means)
        unlabeled = np.ones(len(self.profile_ids_), dtype=bool)
        unlabeled[seeds] = False
        unlabeled[self.removed_] = False
        pool = np.flatnonzero(unlabeled)
        booster = None
        if rerank and weight > 0 and len(pool):
            negatives = np.sort(rng.choice(pool, min(s.pu_negatives, len(pool)), replace=False))
            booster = self._train_pu(seeds, negatives, rng)
        reference_pool = np.setdiff1d(pool, excluded, assume_unique=True)
        if len(reference_pool) == 0:
            reference_pool = pool
        reference = np.sort(
            rng.choice(reference_pool, min(s.reference_size, len(reference_pool)), replace=False)
        )
        ranker = _Ranker(
            centroids=centroids,
            log_shares=np.log(shares),
            tau=s.similarity_temperature,
            weight=weight if booster is not None else 0.0,
            booster=booster,
        )
        sims = self._similarity(ranker, reference)
        ranker.sim_mean, ranker.sim_std = float(sims.mean()), _safe_std(sims)
        if booster is not None:
            margin = self._margin(ranker, reference)
            ranker.clf_mean, ranker.clf_std = float(margin.mean()), _safe_std(margin)
        ranker.reference = np.sort(self._blend(ranker, sims, reference))
        ranker.reference_rows = reference
        return ranker

    def _query_directions(self, seeds: np.ndarray, means: np.ndarray) -> np.ndarray:
        """Seed-weighted query per centroid: ``unit(w * (mean_c - population_mean))``.

        ``w = |effect| / sd`` on the embedding dimensions where the whole seed differs
        significantly from the population (|t| >= 2.5; effect = standardized mean difference)
        and 0 elsewhere: dimensions that say nothing about the seed drop out instead of adding
        noise to every cosine, and the most distinctive ones count most. Inner product with
        such a query is a (diagonal) discriminant score; FAISS searches it as is.
        """
        pop_mean, pop_sd = self.population_["vec_mean"], self.population_["vec_std"]
        sd = np.where(pop_sd > 1e-6, pop_sd, np.inf)
        effect = (self.vectors_[seeds].mean(axis=0) - pop_mean) / sd
        t_stat = np.abs(effect) * math.sqrt(len(seeds))
        weight = np.where(t_stat >= 2.5, np.abs(effect) / sd, 0.0)
        if not weight.any():
            weight = 1.0 / sd
        return _unit((means - pop_mean) * weight)

    def _n_centroids(self, n_seed: int) -> int:
        s = self.settings
        if n_seed < s.kmeans_min_seed:
            return 1
        return int(min(s.max_centroids, max(1, math.ceil(n_seed / s.seeds_per_centroid))))

    def _train_pu(
        self, seeds: np.ndarray, negatives: np.ndarray, rng: np.random.Generator
    ) -> lgb.Booster:
        s = self.settings
        rows = np.concatenate([seeds, negatives])
        label = np.concatenate([np.ones(len(seeds)), np.zeros(len(negatives))])
        params = {
            "objective": "binary",
            "learning_rate": s.pu_learning_rate,
            "num_leaves": s.pu_num_leaves,
            "min_data_in_leaf": s.pu_min_child_samples,
            "max_bin": s.pu_max_bin,
            "feature_fraction": 0.8,
            "lambda_l2": 1.0,
            "scale_pos_weight": max(1.0, len(negatives) / max(1, len(seeds))) ** 0.5,
            "deterministic": True,
            # row-wise histograms: the same trees, faster on a few thousand rows x ~100 columns
            "force_row_wise": True,
            # a PU fit is a few thousand rows: extra OpenMP threads only cost (and on a busy
            # machine they cost a lot), so it always runs on one
            "num_threads": 1,
            "seed": int(rng.integers(0, 2**31 - 1)),
            "verbosity": -1,
        }
        data = lgb.Dataset(self._clf_matrix(rows), label=label, free_raw_data=True)
        # keep_training_booster: skips a model-to-text-and-back round trip; the booster only
        # lives for one request
        return lgb.train(
            params, data, num_boost_round=s.pu_n_estimators, keep_training_booster=True
        )

    def _clf_matrix(self, rows: np.ndarray) -> np.ndarray:
        """Classifier inputs: raw numeric features (NaN kept) and level codes (-1: other)."""
        return np.hstack([self._raw[rows], self._codes[rows].astype(np.float32)])

    def _similarity(self, ranker: _Ranker, rows: np.ndarray) -> np.ndarray:
        """Seed similarity: ``tau * log(sum_c share_c * exp(cos(x, c) / tau))`` over centroids.

        A soft maximum: a profile close to any centroid scores high (a minority interest keeps
        its members), while a centroid made of a few seeds counts in proportion to them.
        """
        out = np.empty(len(rows), dtype=np.float64)
        for start in range(0, len(rows), _CHUNK_ROWS):
            block = self.vectors_[rows[start : start + _CHUNK_ROWS]] @ ranker.centroids.T
            out[start : start + _CHUNK_ROWS] = _soft_max(
                block.astype(np.float64) / ranker.tau + ranker.log_shares, axis=1
            )
        return out * ranker.tau

    def _margin(self, ranker: _Ranker, rows: np.ndarray) -> np.ndarray:
        """Classifier raw scores of ``rows``; each row is predicted once per ranker (memoised)."""
        assert ranker.booster is not None
        if ranker.margins is None:
            ranker.margins = np.full(len(self.profile_ids_), np.nan)
        cache = ranker.margins
        todo = np.unique(rows[np.isnan(cache[rows])])
        for start in range(0, len(todo), 4 * _CHUNK_ROWS):
            part = todo[start : start + 4 * _CHUNK_ROWS]
            cache[part] = ranker.booster.predict(
                self._clf_matrix(part),
                raw_score=True,
                num_threads=self._n_threads if len(part) >= 100_000 else 1,
            )
        return cache[rows]

    def _blend(self, ranker: _Ranker, sims: np.ndarray, rows: np.ndarray) -> np.ndarray:
        z = (sims - ranker.sim_mean) / ranker.sim_std
        if ranker.booster is None:
            return z
        margin = self._margin(ranker, rows)
        return (1 - ranker.weight) * z + ranker.weight * (margin - ranker.clf_mean) / ranker.clf_std

    def _rank(
        self, ranker: _Ranker, size: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Top ``size`` positions (best first) with their blended values, and the retrieval path."""
        n_avail = len(self.profile_ids_) - len(excluded)
        if size <= 0 or n_avail <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0), "none"
        size = min(size, n_avail)
        pool = size
        if ranker.booster is not None:
            # the classifier is better than similarity at telling seed-like profiles apart, so
            # it re-ranks a wider pool (everyone, once that is a large share anyway)
            pool = min(n_avail, math.ceil(self.settings.candidate_factor * size))
        candidates: np.ndarray | None = None
        retrieval = "exhaustive"
        sims: np.ndarray | None = None
        work = n_avail * len(ranker.centroids)
        if pool < _EXHAUSTIVE_SHARE * n_avail and work > self.settings.index_min_work:
            found = self._retrieve(ranker, pool, excluded)
            if found is not None and len(found[0]) >= pool:
                (candidates, sims), retrieval = found, "index"
        if candidates is None or sims is None:
            keep = np.ones(len(self.profile_ids_), dtype=bool)
            keep[excluded] = False
            candidates = np.flatnonzero(keep)
            sims = self._similarity(ranker, candidates)
            retrieval = "exhaustive"
        values = self._blend(ranker, sims, candidates)
        order = np.lexsort((candidates, -values))[:size]
        return candidates[order], values[order], retrieval

    def _retrieve(
        self, ranker: _Ranker, pool: int, excluded: np.ndarray
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
        n_total = self.index_.ntotal
        shares = np.exp(ranker.log_shares)
        factor = _RETRIEVAL_OVERSAMPLE
        for _ in range(_MAX_RETRIEVAL_ROUNDS):
            want = np.maximum(1, np.ceil(factor * pool * shares)).astype(np.int64)
            ks = np.minimum(n_total, 2 ** np.ceil(np.log2(want)).astype(np.int64))
            found, kth = [], np.empty(len(ks))
            for k in np.unique(ks):
                rows = np.flatnonzero(ks == k)
                sims, ids = self.index_.search(ranker.centroids[rows], int(k), excluded)
                found.append(ids[ids >= 0])
                kth[rows] = np.where(ids[:, -1] >= 0, sims[:, -1], -np.inf)
            union = np.unique(np.concatenate(found))
            if len(union) >= pool:
                union_sims = self._similarity(ranker, union)
                threshold = np.partition(union_sims, len(union) - pool)[len(union) - pool]
                bound = ranker.tau * _soft_max(kth / ranker.tau + ranker.log_shares, axis=0)
                if bound <= threshold or ks.min() >= n_total:
                    return union, union_sims
            elif ks.min() >= n_total:
                return union, self._similarity(ranker, union)
            factor *= 2
        return None

    def _scores(self, ranker: _Ranker, values: np.ndarray) -> np.ndarray:
        ref = ranker.reference
        if len(ref) == 0:
            return np.ones(len(values))
        lo = np.searchsorted(ref, values, side="left")
        hi = np.searchsorted(ref, values, side="right")
        return np.clip((lo + hi) / (2.0 * len(ref)), 0.0, 1.0)

    def _holdout_quality(
        self, plan: dict[str, Any], sizes: list[int], rerank: bool, weight: float
    ) -> list[dict[str, Any]]:
        """Expand from part of the seed and count how much of the held-out rest comes back.

        A held-out seed counts as recovered at size v when fewer than v available profiles
        score above it. Up to ``holdout_sample`` available profiles that count is exact;
        beyond, it is estimated from a uniform sample of ``holdout_sample`` of them (no full
        ranking needed). The sample starts from the ranker's reference sample (itself uniform
        over the same profiles, and already scored), topped up with uniform draws of the rest.
        """
        s = self.settings
        seeds = plan["seeds"]
        n_hold = int(math.floor(len(seeds) * s.holdout_fraction))
        n_hold = max(1, min(n_hold, len(seeds) - 1)) if len(seeds) > 1 else 0
        if n_hold == 0:
            return [
                {
                    "size": v,
                    "holdout_seeds": 0,
                    "recall": None,
                    "random_recall": None,
                    "lift": None,
                    "auc": None,
                }
                for v in sizes
            ]
        perm = self._rng(1).permutation(seeds)
        held, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        excluded = np.union1d(train, plan["exclude"])
        ranker = self._ranker(train, rerank, weight, excluded, salt=1)
        keep = np.ones(len(self.profile_ids_), dtype=bool)
        keep[excluded] = False
        available = np.flatnonzero(keep)
        n_avail = len(available)
        sample = available
        if n_avail > s.holdout_sample:
            rng = self._rng(2)
            base = np.intersect1d(ranker.reference_rows, available, assume_unique=True)
            if len(base) > s.holdout_sample:
                base = rng.choice(base, s.holdout_sample, replace=False)
            rest = np.setdiff1d(available, base, assume_unique=True)
            extra = rng.choice(rest, min(len(rest), s.holdout_sample - len(base)), replace=False)
            sample = np.sort(np.concatenate([base, extra]).astype(np.int64))
        sample_values = np.sort(self._blend(ranker, self._similarity(ranker, sample), sample))
        held_values = self._blend(ranker, self._similarity(ranker, held), held)
        above = len(sample) - np.searchsorted(sample_values, held_values, side="right")
        held_rank = above * (n_avail / max(1, len(sample)))
        auc = _auc(held_values, ranker.reference)
        rows = []
        for v in sizes:
            recall = float(np.mean(held_rank < v))
            random_recall = min(1.0, v / max(1, n_avail))
            rows.append(
                {
                    "size": int(v),
                    "holdout_seeds": int(n_hold),
                    "recall": round(recall, 4),
                    "random_recall": round(random_recall, 4),
                    "lift": round(recall / random_recall, 3) if random_recall > 0 else None,
                    "auc": round(auc, 4),
                }
            )
        return rows

    def _distinguishing(self, seeds: np.ndarray) -> list[dict[str, Any]]:
        """Features whose seed distribution differs from the population's, largest effect first.

        Effect = standardized mean difference of the scaled (clipped) feature; significant when
        it is at least ``min_effect_size`` and its z statistic passes a Bonferroni-corrected 1%
        two-sided test over all features.
        """
        s = self.settings
        emb = self.embedder_
        pre = emb.pre(self._raw[seeds], self._codes[seeds]).astype(np.float64)
        pop = self.population_
        std = np.where(pop["std"] > 0, pop["std"], np.inf)
        effect = (pre.mean(axis=0) - pop["mean"]) / std
        z_stat = np.abs(effect) * math.sqrt(len(seeds))
        z_crit = NormalDist().inv_cdf(1 - 0.005 / max(1, len(effect)))
        significant = (np.abs(effect) >= s.min_effect_size) & (z_stat >= z_crit)
        n_num = len(emb.numeric_columns_)
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            seed_raw = self._raw[seeds].astype(np.float64)
            seed_median = np.nanmedian(seed_raw, axis=0) if len(seeds) else np.array([])
            seed_mean = np.nanmean(seed_raw, axis=0) if len(seeds) else np.array([])
        out = []
        for j in np.argsort(-np.abs(effect), kind="stable"):
            name = emb.feature_names_[j]
            if j < n_num:
                sm, pm = float(seed_median[j]), float(pop["median"][j])
                sa, pa = float(seed_mean[j]), float(pop["raw_mean"][j])
                text = f"{name}: seed median {_fmt(sm)} vs population {_fmt(pm)}"
                if _fmt(sm) == _fmt(pm):
                    text += f" (average {_fmt(sa)} vs {_fmt(pa)})"
                item = {
                    "feature": name,
                    "seed_median": _json_float(sm),
                    "population_median": _json_float(pm),
                    "seed_mean": _json_float(sa),
                    "population_mean": _json_float(pa),
                }
            else:
                col, _, level = name.partition("=")
                ss, ps = float(pre[:, j].mean()), float(pop["mean"][j])
                text = f"{col} = {level}: {ss:.0%} of seed vs {ps:.0%} of population"
                item = {
                    "feature": name,
                    "seed_median": None,
                    "population_median": None,
                    "seed_share": round(ss, 4),
                    "population_share": round(ps, 4),
                }
            item["effect_size"] = round(float(effect[j]), 3)
            item["text"] = text
            item["significant"] = bool(significant[j])
            out.append(item)
        return out

    # -- forgetting & persistence ---------------------------------------------------------
    def forget(self, profile_ids: Iterable[str]) -> int:
        """Erase profiles: out of the index, never returned or used, features wiped.

        Returns the number of profiles forgotten. Row positions of the others do not change.
        """
        pos, _ = self._positions(profile_ids)
        if len(pos) == 0:
            return 0
        self.index_.remove_ids(pos)
        self.removed_[pos] = True
        self._raw[pos] = np.nan
        self._codes[pos] = -1
        self.vectors_[pos] = 0.0
        ids = self.profile_ids_.to_numpy(dtype=object).copy()
        ids[pos] = [f"\x00forgotten-{p}" for p in pos]
        self.profile_ids_ = pd.Index(pd.array(ids, dtype="string"), name="profile_id")
        self._population_stats()
        return int(len(pos))

    def save(self, directory: str | Path) -> Path:
        """Write the model to ``directory`` (JSON, Parquet and a FAISS index; no pickle)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.index_.save(directory)
        emb = self.embedder_
        data = {"profile_id": pd.array(self.profile_ids_.to_numpy(), dtype="string")}
        for j, col in enumerate(emb.numeric_columns_):
            data[f"n:{col}"] = self._raw[:, j]
        for j, col in enumerate(emb.categorical_columns_):
            data[f"c:{col}"] = self._codes[:, j]
        pd.DataFrame(data).to_parquet(directory / "profiles.parquet", index=False)
        meta = {
            "format_version": FORMAT_VERSION,
            "settings": self.settings.model_dump(),
            "embedder": emb.to_dict(),
            "removed": np.flatnonzero(self.removed_).tolist(),
            "spec": self.spec_.to_dict() if self.spec_ is not None else None,
            "build_report": self.build_report_,
        }
        (directory / "lookalike.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> LookalikeModel:
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
        emb = self.embedder_
        try:
            raw = np.ascontiguousarray(
                np.array(
                    [profiles[f"n:{c}"].to_numpy(np.float32) for c in emb.numeric_columns_],
                    dtype=np.float32,
                )
                .reshape(len(emb.numeric_columns_), len(profiles))
                .T
            )
            codes = np.ascontiguousarray(
                np.array(
                    [profiles[f"c:{c}"].to_numpy(np.int16) for c in emb.categorical_columns_],
                    dtype=np.int16,
                )
                .reshape(len(emb.categorical_columns_), len(profiles))
                .T
            )
        except KeyError as exc:
            raise BundleError(f"lookalike profiles in {directory} lack column {exc}") from exc
        ids = pd.Index(profiles["profile_id"].astype("string"), name="profile_id")
        with threadpool_limits(limits=self._n_threads):
            self._set_data(ids, raw, codes)
            self.removed_ = np.zeros(len(raw), dtype=bool)
            self.removed_[np.asarray(meta["removed"], dtype=np.int64)] = True
            self.index_ = LookalikeIndex.load(directory, n_threads=self._n_threads)
            self._population_stats()
        self.spec_ = FeatureSpec.from_dict(meta["spec"]) if meta["spec"] else None
        self.build_report_ = meta["build_report"]
        return self


# --------------------------------------------------------------------------------------------
# helpers


def _kmeans(
    points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means (k-means++ start) of unit ``points``.

    Returns unit centroids, float32 (k', d), the share of points each one holds (k',) and
    the plain mean of those points (k', d); empty clusters are dropped, so k' <= k.
    """
    points = np.asarray(points, dtype=np.float32)
    if k <= 1 or len(points) <= 1:
        mean = points.mean(axis=0, keepdims=True)
        return _unit(mean), np.ones(1), mean.astype(np.float64)
    k = min(k, len(points))
    fit = points
    if len(points) > 50_000:
        fit = points[np.sort(rng.choice(len(points), 50_000, replace=False))]
    chosen = [int(rng.integers(len(fit)))]
    best = 1.0 - fit @ fit[chosen[0]]
    for _ in range(1, k):
        prob = np.maximum(best, 0).astype(np.float64)
        total = prob.sum()
        if total <= 0:
            break
        nxt = int(rng.choice(len(fit), p=prob / total))
        chosen.append(nxt)
        best = np.minimum(best, 1.0 - fit @ fit[nxt])
    centroids = _unit(fit[chosen])
    for _ in range(iters):
        assign = np.argmax(fit @ centroids.T, axis=1)
        sums = _group_sums(fit, assign, len(centroids))
        empty = np.bincount(assign, minlength=len(centroids)) == 0
        sums[empty] = centroids[empty]
        new = _unit(sums)
        if np.array_equal(new, centroids):
            break
        centroids = new
    assign = np.argmax(points @ centroids.T, axis=1)
    counts = np.bincount(assign, minlength=len(centroids))
    sums = _group_sums(points.astype(np.float64), assign, len(centroids))
    keep = counts > 0
    means = sums[keep] / counts[keep, None]
    return centroids[keep], counts[keep] / counts.sum(), means


def _group_sums(points: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """Per-group sums of ``points`` rows, (k, d) in their dtype.

    An indicator matmul per block of rows: much faster than ``np.add.at`` for the few groups
    of k-means, with the indicator's memory bounded by the block.
    """
    out = np.zeros((k, points.shape[1]), dtype=points.dtype)
    for start in range(0, len(points), _CHUNK_ROWS):
        block = points[start : start + _CHUNK_ROWS]
        indicator = np.zeros((k, len(block)), dtype=points.dtype)
        indicator[assign[start : start + _CHUNK_ROWS], np.arange(len(block))] = 1
        out += indicator @ block
    return out


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


def _auc(positive: np.ndarray, reference_sorted: np.ndarray) -> float:
    """P(positive > reference) with ties counted half; ``reference_sorted`` ascending."""
    if len(positive) == 0 or len(reference_sorted) == 0:
        return 0.5
    lo = np.searchsorted(reference_sorted, positive, side="left")
    hi = np.searchsorted(reference_sorted, positive, side="right")
    return float(np.mean((lo + hi) / 2.0) / len(reference_sorted))


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    return f"{x:.3g}"


def _json_float(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


@contextlib.contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    """Silence numpy's all-NaN-slice RuntimeWarnings inside a block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
