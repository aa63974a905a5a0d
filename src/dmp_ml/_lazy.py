"""Lazy re-exports: a package's public names import their module on first use.

Keeps ``import dmp_ml`` (and so ``dmp-ml --help``) free of pandas, scikit-learn and LightGBM
until a name that needs them is touched.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, origins: Mapping[str, str], names: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build the module-level ``__getattr__`` and ``__dir__`` of a package.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    origins : Mapping[str, str]
        Public name -> the module that defines it.
    names : Sequence[str]
        The package's ``__all__``.

    Returns
    -------
    (__getattr__, __dir__)
        A resolved name is stored on the package, so the hook runs once per name.
    """

    def __getattr__(name: str) -> Any:
        module = origins.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
