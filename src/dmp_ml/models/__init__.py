"""The models a bundle holds, one package each, all keeping :class:`.base.BundleModel`.

:data:`REGISTRY` names them in the order ``train`` fits them; the bundle codec, the refresher
and erasure iterate it, and ``train`` runs each one's :func:`train_step` (the ``train_step``
function of the package's ``step`` module). Classes are imported on first use, so importing
this package stays cheap (the CLI's ``--help`` does not load LightGBM or FAISS).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from dmp_ml.models.base import BundleModel, ProfileUpdate

if TYPE_CHECKING:
    from dmp_ml.training_context import TrainStep

REGISTRY: dict[str, str] = {
    "propensity": "dmp_ml.models.propensity:PropensityModel",
    "send_time": "dmp_ml.models.send_time:SendTimeModel",
    "lookalike": "dmp_ml.models.lookalike:LookalikeModel",
    "affinity": "dmp_ml.models.affinity:AffinityModel",
}
"""Model name (its bundle directory and manifest step) -> ``module:Class``."""


def model_class(name: str) -> type[BundleModel]:
    """The class registered as ``name``."""
    module, _, attr = _target(name).partition(":")
    cls: type[BundleModel] = getattr(import_module(module), attr)
    return cls


def train_step(name: str) -> TrainStep:
    """The ``train`` step that fits the model registered as ``name``.

    It is ``train_step`` of the ``step`` module next to the registered class
    (``dmp_ml.models.<name>.step``): it reads a :class:`dmp_ml.training_context.TrainContext`,
    puts the fitted model in ``ctx.models[name]`` and returns a ``StepOutcome``.
    """
    package = _target(name).partition(":")[0]
    step: TrainStep = import_module(f"{package}.step").train_step
    return step


def _target(name: str) -> str:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no model registered as {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "BundleModel", "ProfileUpdate", "model_class", "train_step"]
