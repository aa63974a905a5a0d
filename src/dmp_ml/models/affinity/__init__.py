"""Channel and content affinity.

* :mod:`.model`: per-profile engagement counts and population shares (:class:`AffinityModel`,
  a bundle model).
* :mod:`.answers`: per-profile and per-segment answers over a loaded bundle, export columns and
  the segment chart.
"""

from dmp_ml.models.affinity.answers import (
    MAX_TOP,
    affinity_columns,
    plot_segment_affinity,
    profile_affinity,
    segment_affinity,
)
from dmp_ml.models.affinity.model import AFFINITY_DIR, AffinityModel, display_hours

__all__ = [
    "AFFINITY_DIR",
    "MAX_TOP",
    "AffinityModel",
    "affinity_columns",
    "display_hours",
    "plot_segment_affinity",
    "profile_affinity",
    "segment_affinity",
]
