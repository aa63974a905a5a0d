"""The models a bundle holds, one package each, all keeping :class:`.base.BundleModel`.

:data:`REGISTRY` names them in the order ``train`` fits them; the bundle codec, the refresher
and erasure iterate it. Classes are imported on first use, so importing this package stays
cheap (the CLI's ``--help`` does not load LightGBM or FAISS).
"""

from __future__ import annotations

from importlib import import_module

from dmp_ml.models.base import BundleModel, ProfileUpdate

REGISTRY: dict[str, str] = {
    "propensity": "dmp_ml.models.propensity:PropensityModel",
    "send_time": "dmp_ml.models.send_time:SendTimeModel",
    "lookalike": "dmp_ml.models.lookalike:LookalikeModel",
    "affinity": "dmp_ml.models.affinity:AffinityModel",
}
"""Model name (its bundle directory and manifest step) -> ``module:Class``."""


def model_class(name: str) -> type[BundleModel]:
    """The class registered as ``name``."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise KeyError(f"no model registered as {name!r}; known: {sorted(REGISTRY)}") from None
    module, _, attr = target.partition(":")
    cls: type[BundleModel] = getattr(import_module(module), attr)
    return cls


__all__ = ["REGISTRY", "BundleModel", "ProfileUpdate", "model_class"]
