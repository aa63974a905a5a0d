"""Profile embeddings for the lookalike model: one unit float32 vector per profile.

Inner product of two vectors is their cosine similarity, which the FAISS index searches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from dmp_ml.errors import DataContractError

logger = logging.getLogger(__name__)

CHUNK_ROWS = 65_536
"""Rows handled at once by the array passes of the package (bounds temporary memory)."""


@dataclass(frozen=True)
class ColumnSummary:
    """What fitting an :class:`Embedder` needs of a slice of the feature table; summaries of
    slices add up (:meth:`merge`) to the whole table's, exactly.

    ``numeric`` holds, per numeric column, its sorted distinct float32 values (NaN left out)
    and their counts; ``levels`` per text column the count of each value.
    """

    numeric: list[tuple[np.ndarray, np.ndarray]]
    levels: list[pd.Series]

    @classmethod
    def merge(cls, parts: list[ColumnSummary]) -> ColumnSummary:
        """The summary of the slices' union."""
        numeric = []
        for columns in zip(*(p.numeric for p in parts), strict=True):
            values, inverse = np.unique(
                np.concatenate([v for v, _ in columns]), return_inverse=True
            )
            counts = np.bincount(
                inverse, weights=np.concatenate([c for _, c in columns]), minlength=len(values)
            )
            numeric.append((values, counts.astype(np.int64)))
        levels = [
            pd.concat(columns).groupby(level=0, sort=False).sum()
            for columns in zip(*(p.levels for p in parts), strict=True)
        ]
        return cls(numeric, levels)


def numeric_raw(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """``frame``'s ``columns`` as float32 (NaN for missing), row-major (n, len(columns))."""
    # filled column by column into a column-major buffer, then made row-major once
    raw = np.empty((len(columns), len(frame)), dtype=np.float32)
    for j, col in enumerate(columns):
        raw[j] = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.ascontiguousarray(raw.T)


def summarize(raw: np.ndarray, frame: pd.DataFrame, categorical: list[str]) -> ColumnSummary:
    """The :class:`ColumnSummary` of one slice: its :func:`numeric_raw` and its text columns."""
    numeric = []
    for j in range(raw.shape[1]):
        col = raw[:, j]
        values, counts = np.unique(col[~np.isnan(col)], return_counts=True)
        numeric.append((values, counts.astype(np.int64)))
    levels = [frame[col].astype("string").value_counts(dropna=True) for col in categorical]
    return ColumnSummary(numeric, levels)


def robust_scale(values: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """Median and spread of a column given as sorted distinct ``values`` and their ``counts``.

    The spread is the IQR (quartiles linearly interpolated between order statistics), else
    the mean absolute deviation from the median, else 1; an empty column gives (0, 1).
    """
    n = int(counts.sum())
    if n == 0:
        return 0.0, 1.0
    ends = np.cumsum(counts)
    x = values.astype(np.float64)

    def quantile(q: float) -> float:
        h = q * (n - 1)
        lo = int(np.floor(h))
        a, b = x[np.searchsorted(ends, [lo, min(lo + 1, n - 1)], side="right")]
        return float(a + (b - a) * (h - lo))

    q25, q50, q75 = quantile(0.25), quantile(0.5), quantile(0.75)
    spread = q75 - q25
    if not spread > 0:
        spread = float(np.dot(counts, np.abs(x - q50)) / n)
    return q50, spread if spread > 0 else 1.0


class EmbeddingEngine(Protocol):
    """Where an embedder is fitted and the table embedded: ``fit_embed(embedder, frame)``
    fits ``embedder`` on ``frame`` and returns its :meth:`Embedder.arrays` and vectors, as
    :meth:`Embedder.fit_arrays` then :meth:`Embedder.embed` do in process."""

    def fit_embed(
        self, embedder: Embedder, frame: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


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
        self.fit_arrays(frame)
        return self

    def fit_arrays(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`fit`, returning the :meth:`arrays` of ``frame`` it computed on the way.

        The lookalike model keeps those arrays (to re-rank and to explain a seed), so it fits
        with this instead of :meth:`fit` followed by :meth:`arrays`, which would read the
        feature frame twice. The steps are public so that a scale-out engine can run them
        slice by slice (:class:`EmbeddingEngine`) and give this result.
        """
        numeric, categorical = self.columns(frame)
        raw = numeric_raw(frame, numeric)
        self.fit_summary(numeric, categorical, summarize(raw, frame, categorical))
        codes = self.level_codes(frame)
        if self.needs_pca:
            rows = self.pca_rows(len(raw))
            self.fit_pca(self.pre(raw[rows], codes[rows]))
        return raw, codes

    def columns(self, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
        """The numeric (and boolean) columns and the text or category columns of ``frame``
        (others are ignored)."""
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
        return numeric, categorical

    def fit_summary(
        self, numeric: list[str], categorical: list[str], summary: ColumnSummary
    ) -> Embedder:
        """Learn the kept levels, medians and scales from the whole table's ``summary``."""
        levels: dict[str, list[str]] = {}
        for col, counts in zip(categorical, summary.levels, strict=True):
            counts = counts[counts >= self.min_level_count]
            ordered = sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
            kept = [str(level) for level, _ in ordered[: self.max_levels]]
            if kept:
                levels[col] = kept
        if not numeric and not levels:
            raise DataContractError("the feature table has no usable numeric or categorical column")
        self.numeric_columns_ = list(numeric)
        self.categorical_columns_ = [c for c in categorical if c in levels]
        self.levels_ = levels
        spread = [robust_scale(values, counts) for values, counts in summary.numeric]
        self.center_ = np.array([c for c, _ in spread], dtype=np.float64)
        self.scale_ = np.array([s for _, s in spread], dtype=np.float64)
        self.feature_names_ = list(numeric) + [
            f"{c}={level}" for c in self.categorical_columns_ for level in levels[c]
        ]
        self.pca_mean_: np.ndarray | None = None
        self.pca_components_: np.ndarray | None = None
        self.dim_ = len(self.feature_names_)
        return self

    @property
    def needs_pca(self) -> bool:
        """Whether the fitted scaling is to be reduced by PCA (``n_components`` below the
        number of scaled features)."""
        return self.n_components is not None and 0 < self.n_components < len(self.feature_names_)

    def pca_rows(self, n_rows: int) -> np.ndarray:
        """The sorted rows of an ``n_rows`` table the PCA is fitted on (at most
        ``max_fit_rows``, drawn with ``seed``)."""
        rows = np.arange(n_rows)
        if n_rows > self.max_fit_rows:
            rng = np.random.default_rng(self.seed)
            rows = np.sort(rng.choice(rows, self.max_fit_rows, replace=False))
        return rows

    def fit_pca(self, pre: np.ndarray) -> Embedder:
        """Learn the PCA axes from the :meth:`pre` rows of :meth:`pca_rows`, shape (m, F)."""
        pre = pre.astype(np.float64)
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
        self.dim_ = len(self.pca_components_)
        return self

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
        return numeric_raw(frame, self.numeric_columns_), self.level_codes(frame)

    def level_codes(self, frame: pd.DataFrame) -> np.ndarray:
        """The kept levels' codes of ``frame``'s categorical columns, int16 (n, n_categorical),
        -1 for any other value."""
        codes = np.empty((len(self.categorical_columns_), len(frame)), dtype=np.int16)
        for j, col in enumerate(self.categorical_columns_):
            values = frame[col].astype("string").astype(object)
            codes[j] = pd.Categorical(values, categories=self.levels_[col]).codes
        return np.ascontiguousarray(codes.T)

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
        for start in range(0, len(raw), CHUNK_ROWS):
            stop = start + CHUNK_ROWS
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
        """:meth:`fit` then :meth:`transform` of the same ``frame``."""
        return self.fit(frame).transform(frame)

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Parameters and fitted state as JSON-serialisable data (no pickle)."""
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
        """The embedder :meth:`to_dict` described."""
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
