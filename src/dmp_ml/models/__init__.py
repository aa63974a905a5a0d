"""The models a bundle holds, one package each, all keeping :class:`.base.BundleModel`.

:data:`REGISTRY` names them in the order ``train`` fits them; the bundle codec, the refresher
and erasure iterate it. Classes are imported on first use, so importing this package stays
cheap (the CLI's ``--help`` does not load LightGBM or FAISS).
"""

from __future__ import annotations

from importlib import import_module

from dmp_ml.models.base import BundleModel, ProfileUpdate

REGISTRY: dict[str, str] = {
    # TEMP: the current locations until the model packages land (the lead reverts this);
    # dmp_ml.models._pre_move gives the classes whose load lacks n_threads that argument
    "propensity": "dmp_ml.models._pre_move:PropensityModel",
    "send_time": "dmp_ml.models._pre_move:SendTimeModel",
    "lookalike": "dmp_ml.expansion:LookalikeModel",
    "affinity": "dmp_ml.models._pre_move:AffinityModel",
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
