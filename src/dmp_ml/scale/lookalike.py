"""The lookalike embedding on Dask: the embedder fitted from slice summaries, vectors by slice.

:class:`DaskEmbedding` is a :class:`dmp_ml.models.lookalike.embedding.EmbeddingEngine`. The
feature table is split into contiguous row slices that go to the workers, which keep each
slice's numeric inputs there. Then:

1. each slice summarises its columns (the distinct values of each numeric column with their
   counts, the counts of each text value); the client adds the summaries up, exactly, and
   fits medians, scales and kept levels from the sum as the in-process fit does;
2. each slice codes its text columns on the kept levels; when the embedding is reduced by
   PCA, the slices send the rows the in-process fit would sample and the client fits the
   axes on them;
3. each slice embeds its rows; the client stacks the slices' inputs and vectors.

Every step is the in-process fit's own code on the same numbers, so the embedder, the inputs
and the vectors equal the local engine's; the FAISS index is then built on the client.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dmp_ml.models.lookalike.embedding import (
    ColumnSummary,
    Embedder,
    numeric_raw,
    summarize,
)
from dmp_ml.scale.cluster import PartitionedStage, map_parts, range_bounds

logger = logging.getLogger(__name__)


def slice_codes(part: pd.DataFrame, embedder: Embedder) -> np.ndarray:
    """The slice's level codes on the fitted levels."""
    return embedder.level_codes(part)


def slice_pre(
    raw: np.ndarray, codes: np.ndarray, rows: np.ndarray, embedder: Embedder
) -> np.ndarray:
    """The scaled features of the slice's ``rows`` (positions within the slice)."""
    return embedder.pre(raw[rows], codes[rows])


def slice_vectors(raw: np.ndarray, codes: np.ndarray, embedder: Embedder) -> np.ndarray:
    """The slice's unit vectors."""
    return embedder.embed(raw, codes)


class DaskEmbedding(PartitionedStage):
    """Fit the lookalike embedder and embed the feature table on Dask (see the module doc),
    in ``npartitions`` row slices."""

    def fit_embed(
        self, embedder: Embedder, frame: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fit ``embedder`` on ``frame``; its raw inputs, level codes and vectors, shapes
        (n, n_numeric), (n, n_categorical) and (n, dim)."""
        if not len(frame):
            raw, codes = embedder.fit_arrays(frame)
            return raw, codes, embedder.embed(raw, codes)
        numeric, categorical = embedder.columns(frame)
        bounds = range_bounds(len(frame), self.npartitions)
        slices = [frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        with self.session.client() as client:
            logger.info("dask lookalike: %d profiles in %d slices", len(frame), len(slices))
            parts = client.scatter(slices, hash=False)
            raws = map_parts(client, numeric_raw, parts, shared=(numeric,))
            summaries = client.gather(
                map_parts(client, summarize, raws, parts, shared=(categorical,))
            )
            embedder.fit_summary(numeric, categorical, ColumnSummary.merge(summaries))
            codes = map_parts(client, slice_codes, parts, shared=(embedder,))
            if embedder.needs_pca:
                rows = embedder.pca_rows(len(frame))
                cuts = np.searchsorted(rows, bounds)
                local = [rows[cuts[i] : cuts[i + 1]] - bounds[i] for i in range(len(slices))]
                pre = client.gather(
                    map_parts(client, slice_pre, raws, codes, local, shared=(embedder,))
                )
                embedder.fit_pca(np.vstack(pre))
            vectors = map_parts(client, slice_vectors, raws, codes, shared=(embedder,))
            stacked = [np.concatenate(client.gather(f)) for f in (raws, codes, vectors)]
        return stacked[0], stacked[1], stacked[2]
