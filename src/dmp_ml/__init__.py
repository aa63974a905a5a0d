"""dmp-ml: self-hosted audience models for a marketing DMP."""

from __future__ import annotations

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
from dmp_ml.features import FeatureSpec, FeatureTable
from dmp_ml.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "ConfigError",
    "DataContractError",
    "DmpMlError",
    "FeatureSpec",
    "FeatureTable",
    "InsufficientDataError",
    "MappingError",
    "RequestError",
    "Settings",
    "UnknownProfileError",
    "__version__",
    "load_settings",
]
