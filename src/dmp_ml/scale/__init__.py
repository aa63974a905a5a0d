"""Scale-out: the training stages, run partition-wise on Dask (``features.engine: dask``).

* :mod:`~dmp_ml.scale.cluster`: the client (given, by address, or a local cluster).
* :mod:`~dmp_ml.scale.identity`: the identity graph over partitions of the log.
* :mod:`~dmp_ml.scale.features`: :class:`DaskEngine`, the engine ``build_features`` and
  ``train`` use: identity and the feature reductions.
* :mod:`~dmp_ml.scale.send_time`: :class:`DaskCurves`, the send-time curves (per-profile
  counts by partition, population priors by a reduction).
* :mod:`~dmp_ml.scale.affinity`: :class:`DaskCounts`, the affinity counts (per-profile
  counts by partition, vocabularies by a reduction).
* :mod:`~dmp_ml.scale.lookalike`: :class:`DaskEmbedding`, the lookalike embedder fitted
  from slice summaries and the profiles embedded slice by slice.
* :mod:`~dmp_ml.scale.propensity`: :class:`DaskBoosters`, the propensity boosters trained
  by ``lightgbm.dask``.

Every stage gives the local engine's result. Dask is an optional extra:
``pip install 'dmp-ml[scale]'``.
"""

from __future__ import annotations

from dmp_ml.scale.affinity import DaskCounts
from dmp_ml.scale.features import DaskEngine, partition_features
from dmp_ml.scale.lookalike import DaskEmbedding
from dmp_ml.scale.propensity import DaskBoosters
from dmp_ml.scale.send_time import DaskCurves

__all__ = [
    "DaskBoosters",
    "DaskCounts",
    "DaskCurves",
    "DaskEmbedding",
    "DaskEngine",
    "partition_features",
]
