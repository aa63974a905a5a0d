"""The contract every model of a bundle keeps, so the bundle codec, training, refresh and erasure
can treat them alike.

A model package (``dmp_ml.models.<name>``) owns its whole lifecycle: it is built from its own
settings section, fitted (``fit(...)`` returns ``self``; what it learnt ends in ``_``), saved to
and loaded from one directory of the bundle, updated for the profiles a batch of fresh events
touched, and made to forget erased profiles. What ``fit`` takes differs by model (snapshots,
events, a feature table), so it is not part of the protocol; everything the codec and the
refresher call is.

Adding a model: write the package (``dmp_ml.models.<name>``) with its class (keeping
:class:`BundleModel`, ``name`` set) and a ``step`` module whose ``train_step(ctx)`` fits it
into ``ctx.models[name]`` (see :mod:`dmp_ml.training_context`), then add one line to
:data:`dmp_ml.models.REGISTRY`. ``train``, the bundle codec, refresh and erasure pick it up
from there.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

import pandas as pd

if TYPE_CHECKING:
    from pydantic import BaseModel

    from dmp_ml.settings import Settings


@dataclass(frozen=True)
class ProfileUpdate:
    """What near-real-time refresh hands every model: the profiles a batch of events touched.

    Attributes
    ----------
    as_of : the new feature clock of the touched profiles.
    profile_ids : the touched profiles that are still (or newly) profiles, shape (n,).
    removed : profiles that are gone (folded into another, or no longer eligible), shape (m,).
    features : their new feature rows as of ``as_of``, indexed by ``profile_id``, shape (n, f).
    events : the complete resolved history of ``profile_ids`` (identity applied), contract
        columns with ``profile_id`` as text.
    timezones : IANA zone per profile id where known (profile attributes), else None.
    """

    as_of: pd.Timestamp
    profile_ids: pd.Index
    removed: pd.Index
    features: pd.DataFrame
    events: pd.DataFrame
    timezones: pd.Series | None = None


@runtime_checkable
class BundleModel(Protocol):
    """A model the bundle codec saves, loads, refreshes and scrubs."""

    name: ClassVar[str]
    """The model's directory in a bundle and its step in the manifest."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """An unfitted model configured from its section of ``settings``."""
        ...

    def save(self, directory: Path) -> Path:
        """Write the fitted model into ``directory`` (created); returns it."""
        ...

    @classmethod
    def load(cls, directory: Path, n_threads: int | None = None) -> Self:
        """Read a model :meth:`save` wrote; ``n_threads`` bounds its native thread pools."""
        ...

    def update(self, change: ProfileUpdate) -> Self:
        """Bring the touched profiles up to date in place, population parts frozen."""
        ...

    def forget(self, profile_ids: Iterable[str]) -> int:
        """Drop every trace of ``profile_ids``; returns how many were held."""
        ...


def constructor_args(cls: type, section: BaseModel, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of ``cls.__init__`` that a settings ``section`` holds, by name.

    Lists become tuples (estimator parameters stay hashable and comparable); ``overrides``
    win. One reading of a settings section for every model's ``from_settings``.
    """
    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    values = section.model_dump(include=set(names))
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    args.update(overrides)
    return args


class EstimatorParams:
    """scikit-learn's parameter protocol (``get_params``, ``set_params``, a ``repr`` of the
    changed parameters) without importing scikit-learn.

    For a model that answers from a bundle: a command loads it in a fresh process, where
    importing scikit-learn costs more than the answer. The parameters are the keyword
    arguments of ``__init__``, each kept unchanged in the attribute of the same name (as
    ``sklearn.base.BaseEstimator`` requires too), so ``sklearn.base.clone`` copies such a
    model as it copies an estimator.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        """The keyword arguments of ``__init__``, sorted (scikit-learn's order)."""
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        parameters = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in parameters if p.name != "self" and p.kind not in skip)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters by name (``deep`` is accepted for scikit-learn's API;
        no parameter is itself an estimator)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters; an unknown name raises ``ValueError``. Returns self."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {valid!r}."
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [
            f"{name}={value!r}"
            for name, value in self.get_params().items()
            if repr(value) != repr(defaults.get(name))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"
