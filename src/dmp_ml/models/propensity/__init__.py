"""Propensity: how likely is a profile to do ``target_event`` in the next ``horizon_days``.

* :mod:`.model`: the calibrated LightGBM estimator (:class:`PropensityModel`, a bundle model).
* :mod:`.calibration`: the raw-score -> probability map (:class:`Calibrator`).
* :mod:`.baselines`: the plain recency/frequency baselines it is compared with.
* :mod:`.snapshots`: labelled point-in-time training snapshots.
* :mod:`.training`: validation on the latest snapshot, baselines, scores
  (:func:`train_propensity`).
"""

from dmp_ml.models.propensity.baselines import (
    RecencyFrequencyBaseline,
    SingleFeatureBaseline,
    recency_frequency_columns,
)
from dmp_ml.models.propensity.calibration import Calibrator
from dmp_ml.models.propensity.model import PropensityModel
from dmp_ml.models.propensity.snapshots import align_features, build_snapshots, make_labels
from dmp_ml.models.propensity.training import (
    PropensityResult,
    ValidationSet,
    score_profiles,
    train_propensity,
)

__all__ = [
    "Calibrator",
    "PropensityModel",
    "PropensityResult",
    "RecencyFrequencyBaseline",
    "SingleFeatureBaseline",
    "ValidationSet",
    "align_features",
    "build_snapshots",
    "make_labels",
    "recency_frequency_columns",
    "score_profiles",
    "train_propensity",
]
