"""dmp-ml: self-hosted audience models for a marketing DMP.

The public API is re-exported here. Heavy modules (LightGBM, FAISS, MLflow) load on first use,
so ``import dmp_ml`` and the CLI stay quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dmp_ml._lazy import lazy_exports
from dmp_ml.errors import (
    BundleError,
    ConfigError,
    DataContractError,
    DmpMlError,
    InsufficientDataError,
    MappingError,
    RequestError,
    UnknownProfileError,
)

__version__ = "0.1.0"

_LAZY = {
    "Settings": "dmp_ml.settings",
    "load_settings": "dmp_ml.settings",
    "LoadReport": "dmp_ml.contract",
    "LoadResult": "dmp_ml.contract",
    "load_consent": "dmp_ml.contract",
    "load_events": "dmp_ml.contract",
    "load_profiles": "dmp_ml.contract",
    "ColumnMapping": "dmp_ml.mapping",
    "load_mapping": "dmp_ml.mapping",
    "DemoWorld": "dmp_ml.demo",
    "generate_demo_world": "dmp_ml.demo",
    "write_demo_world": "dmp_ml.demo",
    "Resolution": "dmp_ml.identity",
    "resolve_identity": "dmp_ml.identity",
    "FeatureSpec": "dmp_ml.features",
    "FeatureTable": "dmp_ml.features",
    "build_features": "dmp_ml.features",
    "PropensityModel": "dmp_ml.models.propensity",
    "PropensityResult": "dmp_ml.models.propensity",
    "build_snapshots": "dmp_ml.models.propensity",
    "make_labels": "dmp_ml.models.propensity",
    "train_propensity": "dmp_ml.models.propensity",
    "SendTimeDecision": "dmp_ml.models.send_time",
    "SendTimeModel": "dmp_ml.models.send_time",
    "best_send_time": "dmp_ml.models.send_time",
    "evaluate_send_time": "dmp_ml.models.send_time",
    "Audience": "dmp_ml.models.lookalike",
    "LookalikeModel": "dmp_ml.models.lookalike",
    "ModelBundle": "dmp_ml.bundle",
    "load_bundle": "dmp_ml.bundle",
    "lookalike": "dmp_ml.bundle",
    "TrainResult": "dmp_ml.pipeline",
    "train": "dmp_ml.pipeline",
    "Promotion": "dmp_ml.promotion",
    "promote": "dmp_ml.promotion",
}

if TYPE_CHECKING:  # pragma: no cover
    from dmp_ml.bundle import ModelBundle, load_bundle, lookalike
    from dmp_ml.contract import LoadReport, LoadResult, load_consent, load_events, load_profiles
    from dmp_ml.demo import DemoWorld, generate_demo_world, write_demo_world
    from dmp_ml.features import FeatureSpec, FeatureTable, build_features
    from dmp_ml.identity import Resolution, resolve_identity
    from dmp_ml.mapping import ColumnMapping, load_mapping
    from dmp_ml.models.propensity import (
        PropensityModel,
        PropensityResult,
        build_snapshots,
        make_labels,
        train_propensity,
    )
    from dmp_ml.models.send_time import (
        SendTimeDecision,
        SendTimeModel,
        best_send_time,
        evaluate_send_time,
    )
    from dmp_ml.pipeline import TrainResult, train
    from dmp_ml.promotion import Promotion, promote
    from dmp_ml.settings import Settings, load_settings


__all__ = [
    "__version__",
    "Audience",
    "best_send_time",
    "build_features",
    "build_snapshots",
    "BundleError",
    "ColumnMapping",
    "ConfigError",
    "DataContractError",
    "DemoWorld",
    "DmpMlError",
    "evaluate_send_time",
    "FeatureSpec",
    "FeatureTable",
    "generate_demo_world",
    "InsufficientDataError",
    "load_bundle",
    "load_consent",
    "load_events",
    "load_mapping",
    "load_profiles",
    "load_settings",
    "lookalike",
    "LoadReport",
    "LoadResult",
    "LookalikeModel",
    "make_labels",
    "MappingError",
    "ModelBundle",
    "promote",
    "Promotion",
    "PropensityModel",
    "PropensityResult",
    "RequestError",
    "Resolution",
    "resolve_identity",
    "SendTimeDecision",
    "SendTimeModel",
    "Settings",
    "train",
    "train_propensity",
    "TrainResult",
    "UnknownProfileError",
    "write_demo_world",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
