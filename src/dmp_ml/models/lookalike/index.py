"""The lookalike model's FAISS index: exact when small, tuned to a recall target when not.

A FAISS ``IndexIDMap`` over unit vectors, searched by inner product (cosine; not ``IDMap2``,
whose reverse map of the ids would cost every worker 40 bytes a profile, and nothing looks a
vector up by id): exact flat search for small populations, a factory index (IVF or HNSW)
beyond, with ``nprobe`` or ``efSearch`` tuned at build time until recall@100 against exact
search reaches the target.
Search excludes ids on request; ``remove_ids`` removes where the index type can and masks
where it cannot. A flat or IVF index loaded from a bundle is mapped (shared by every worker:
a million 156-dimensional profiles are 620 MB a worker would otherwise hold) and never changed:
the rows a refresh changes or adds go to a small exact side index in private memory, the base's
superseded rows are left out of its searches, and the two results are merged (the base's first
among equals, as when the rows are appended to one index); ``save`` writes the one index those
changes in place would have left.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dmp_ml.errors import BundleError, ConfigError

logger = logging.getLogger(__name__)

# nprobe / efSearch are tuned for k = recall_k; a query for k >> recall_k must visit more of the
# index, so the tuned value is scaled by (k / recall_k) ** _LARGE_K_EXPONENT (a heuristic; the
# model's certified retrieval asks for more when a round falls short).
_LARGE_K_EXPONENT = 0.75
# how FAISS maps each index kind read from a bundle: a flat index's vectors, an IVF index's
# inverted lists; an HNSW graph is read into memory
_MAP_FLAGS = {"flat": faiss.IO_FLAG_MMAP_IFC, "ivf": faiss.IO_FLAG_MMAP}


def resolve_threads(n_threads: int) -> int:
    """``n_threads``, with 0 meaning every core."""
    return n_threads if n_threads > 0 else max(1, os.cpu_count() or 1)


def brute_force_search(
    vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search (``faiss.knn``), the reference for recall.

    Parameters
    ----------
    vectors : (n, d) float32
    queries : (q, d) float32
    k : int

    Returns
    -------
    sims, ids : (q, k) arrays, best first; ids are row positions (-1 where fewer than k rows).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(vectors) == 0 or k <= 0:
        return (
            np.full((len(queries), max(0, k)), -np.inf, dtype=np.float32),
            np.full((len(queries), max(0, k)), -1, dtype=np.int64),
        )
    sims, ids = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    sims[ids < 0] = -np.inf
    return sims, ids.astype(np.int64, copy=False)


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
        Populations up to this size get ``IDMap`` over ``IndexFlatIP`` (exact).
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
        faiss.omp_set_num_threads(resolve_threads(self.n_threads))

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
            index = faiss.index_factory(dim, f"IDMap,{factory}", faiss.METRIC_INNER_PRODUCT)
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
        self.mapped_ = False
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
        self.shadowed_ = np.zeros(0, dtype=np.int64)
        self.side_: Any = None
        recall = 1.0
        if self.kind_ != "flat" and n > 0:
            recall = self._tune(vectors, ids, rng)
        self.build_report_ = {
            "n": int(n),
            "dim": int(dim),
            "index_type": f"IDMap,{factory}",
            "kind": self.kind_,
            "tuned_param": self.param_name_,
            "tuned_value": self.param_value_,
            "recall_at_k": self.recall_k,
            "recall_at_100": recall,
            "recall_target": self.recall_target,
            "recall_target_met": bool(recall >= self.recall_target),
            "build_seconds": round(time.perf_counter() - started, 3),
            "n_threads": resolve_threads(self.n_threads),
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
        """Vectors the index answers with (masked and superseded ones not counted)."""
        side = 0 if self.side_ is None else int(self.side_.ntotal)
        return int(self.index_.ntotal) - len(self.removed_) - len(self.shadowed_) + side

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids by inner product for each query, never returning ``exclude_ids``.

        Returns ``(sims, ids)`` of shape (q, k); ids are -1 where fewer results exist. With
        rows changed since loading (a flat index), the base (less the superseded rows) and the
        side index are searched and their results merged, best first (the base's first among
        equals, as when the changed rows were appended to one index).
        """
        self._set_threads()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exclude = np.zeros(0, np.int64) if exclude_ids is None else np.asarray(exclude_ids)
        k = max(1, min(int(k), self.ntotal + len(self.removed_)))
        if self.side_ is None and not len(self.shadowed_):
            return self._search(self.index_, queries, k, exclude)
        sims, ids = self._search(self.index_, queries, k, np.union1d(exclude, self.shadowed_))
        if self.side_ is not None and self.side_.ntotal:
            more = self._search(self.side_, queries, k, exclude, tuned=False)
            sims, ids = np.hstack([sims, more[0]]), np.hstack([ids, more[1]])
        ranked = np.where(ids >= 0, sims, -np.inf)
        order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def _search(
        self, index: Any, queries: np.ndarray, k: int, exclude: np.ndarray, tuned: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of one FAISS index, never returning the masked rows nor ``exclude``; the
        base with its tuned ``nprobe`` or ``efSearch``, the exact side index (not ``tuned``)
        without."""
        excluded = self.removed_
        if len(exclude):
            excluded = np.union1d(excluded, exclude.astype(np.int64))
        batch = selector = None
        if len(excluded):
            batch = faiss.IDSelectorBatch(excluded)
            selector = faiss.IDSelectorNot(batch)
        if tuned:
            params = self._params(k, selector)
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        if params is None:
            sims, ids = index.search(queries, k)
        else:
            sims, ids = index.search(queries, k, params=params)
        del batch, selector
        return sims, ids

    def detached(self) -> LookalikeIndex:
        """A copy that can be changed while this one keeps answering: a flat or IVF index shares
        its base (never changed once built or loaded) and copies its side index, the rows
        changed since; other types copy their index into private memory."""
        other = copy.copy(self)
        other.removed_ = np.array(self.removed_, copy=True)
        other.shadowed_ = np.array(self.shadowed_, copy=True)
        if self.kind_ in _MAP_FLAGS:
            if self.side_ is not None:
                other.side_ = faiss.clone_index(self.side_)  # small, in private memory
            return other
        other.index_ = faiss.deserialize_index(faiss.serialize_index(self.index_))
        return other

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``vectors`` (m, d) under ``ids`` (m,). A flat or IVF index keeps its base as it
        is and adds them to a side index of the rows changed since (so a change costs what it
        adds, not a copy of the base); other types add to their index."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind_ not in _MAP_FLAGS:
            self.index_.add_with_ids(vectors, ids)
            return
        if self.side_ is None:
            self.side_ = faiss.index_factory(
                int(self.index_.d), "IDMap,Flat", faiss.METRIC_INNER_PRODUCT
            )
        self.side_.add_with_ids(vectors, ids)

    def _side_ids(self) -> np.ndarray:
        if self.side_ is None:
            return np.zeros(0, dtype=np.int64)
        return faiss.vector_to_array(self.side_.id_map).astype(np.int64)

    def remove_ids(self, ids: Iterable[int]) -> int:
        """Remove ``ids`` (held by the index) from it; where the index type cannot, they are
        masked instead. A flat or IVF index removes them from its side index and supersedes
        those of its base (left out of every search, and of the index it saves)."""
        arr = np.unique(np.asarray(list(ids), dtype=np.int64))
        if arr.size == 0:
            return 0
        if self.kind_ in _MAP_FLAGS:
            in_side = np.isin(arr, self._side_ids())
            if in_side.any():
                assert self.side_ is not None
                self.side_.remove_ids(arr[in_side])
            before = len(self.shadowed_)
            self.shadowed_ = np.union1d(self.shadowed_, arr[~in_side])
            return int(in_side.sum()) + len(self.shadowed_) - before
        try:
            return int(self.index_.remove_ids(arr))
        except RuntimeError:
            before = len(self.removed_)
            self.removed_ = np.union1d(self.removed_, arr)
            return len(self.removed_) - before

    def merged(self) -> Any:
        """One FAISS index with the base's rows less the superseded ones, then the side
        index's rows (in the order they were added): the index the changes in place would
        have left. Built in private memory; what :meth:`save` writes."""
        unchanged = self.side_ is None and not len(self.shadowed_)
        if unchanged and not (self.mapped_ and self.kind_ == "ivf"):  # mapped lists: copied
            return self.index_
        if self.kind_ == "ivf":
            index = _ivf_copy(self.index_, self.shadowed_)
        else:
            index = faiss.deserialize_index(faiss.serialize_index(self.index_))
            if len(self.shadowed_):
                index.remove_ids(self.shadowed_)
        if self.side_ is not None and self.side_.ntotal:
            vectors = self.side_.index.reconstruct_n(0, self.side_.ntotal)
            index.add_with_ids(vectors, self._side_ids())
        return index

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss`` and ``index.json`` into ``directory``; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.merged(), str(directory / "index.faiss"))
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
        """Read an index :meth:`save` wrote; ``n_threads`` overrides the saved thread count."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
            flags = _MAP_FLAGS.get(meta["kind"], 0)
            index = faiss.read_index(str(directory / "index.faiss"), flags)
            mapped = bool(flags)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BundleError(f"lookalike index in {directory} is unreadable: {exc}") from exc
        params = dict(meta["params"])
        if n_threads is not None:
            params["n_threads"] = n_threads
        self = cls(**params)
        self.index_ = index
        self.mapped_ = mapped
        self.kind_ = meta["kind"]
        self.param_name_ = meta["param_name"]
        self.param_value_ = meta["param_value"]
        self.nlist_ = meta["nlist"]
        self.removed_ = np.asarray(meta["removed"], dtype=np.int64)
        self.shadowed_ = np.zeros(0, dtype=np.int64)
        self.side_ = None
        self.build_report_ = meta["build_report"]
        return self


def _ivf_copy(index: Any, drop: np.ndarray) -> Any:
    """An id-mapped IVF ``index`` copied into private memory without the ids ``drop``.

    FAISS's own ``remove_ids`` through the id map would leave the IVF's row numbers as they
    were while it closes the gaps in its id map, so every later row would answer with the id
    of another; and FAISS can neither serialise nor clone the lists of an index it read
    mapped. So the structure is copied without its lists, and the lists are copied one by one,
    the kept rows numbered again in their order.
    """
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    id_map = faiss.vector_to_array(index.id_map)
    keep = ~np.isin(id_map, drop)
    renumbered = np.cumsum(keep) - 1
    mapped = isinstance(lists, faiss.OnDiskInvertedLists)
    copied = (  # lists left out where FAISS can, replaced below either way
        faiss.deserialize_index(faiss.serialize_index(index), faiss.IO_FLAG_SKIP_IVF_DATA)
        if mapped
        else faiss.clone_index(index)
    )
    owned = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for i in range(ivf.nlist):
        size = lists.list_size(i)
        if not size:
            continue
        rows = faiss.rev_swig_ptr(lists.get_ids(i), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(i), size * ivf.code_size)
        kept = keep[rows]
        new_rows = np.ascontiguousarray(renumbered[rows[kept]], dtype=np.int64)
        kept_codes = np.ascontiguousarray(codes.reshape(size, ivf.code_size)[kept])
        if len(new_rows):
            owned.add_entries(
                i, len(new_rows), faiss.swig_ptr(new_rows), faiss.swig_ptr(kept_codes)
            )
    inner = faiss.extract_index_ivf(copied)
    inner.replace_invlists(owned, True)
    owned.this.disown()  # the copy's lists now, freed with it
    inner.ntotal = copied.ntotal = int(keep.sum())
    faiss.copy_array_to_vector(id_map[keep], copied.id_map)
    if isinstance(copied, faiss.IndexIDMap2):  # written by an earlier version
        copied.construct_rev_map()
    return copied


def _doubling(start: int, stop: int) -> list[int]:
    values, v = [], start
    while v < stop:
        values.append(v)
        v *= 2
    values.append(stop)
    return values
