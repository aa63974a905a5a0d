"""The lookalike model: more profiles like a seed, from embeddings and a FAISS index.

- :mod:`.embedding`: :class:`Embedder`, the feature table as unit vectors;
- :mod:`.index`: :class:`LookalikeIndex`, FAISS search tuned to a recall target;
- :mod:`.audience`: :class:`Audience` and the seed-conditioned ranking that builds it;
- :mod:`.pu`: the positive-unlabeled classifier a request fits (LightGBM's C library);
- :mod:`.quality`: held-out recall and the features that distinguish a seed;
- :mod:`.model`: :class:`LookalikeModel`, which owns the lifecycle (fit, expand, update,
  forget, save, load).
"""

from dmp_ml.models.lookalike.audience import Audience
from dmp_ml.models.lookalike.embedding import Embedder
from dmp_ml.models.lookalike.index import LookalikeIndex, brute_force_search
from dmp_ml.models.lookalike.model import LookalikeModel

__all__ = ["Audience", "Embedder", "LookalikeIndex", "LookalikeModel", "brute_force_search"]
