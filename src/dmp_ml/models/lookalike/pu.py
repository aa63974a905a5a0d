"""The positive-unlabeled classifier of one lookalike request (seeds vs a population sample).

A request of ``min_seed`` seeds or more re-ranks with it, and the guard that picks the
ranker fits one per held-out part of the seed, so a command fits several: small LightGBM
boosters (a few thousand rows, on one thread). Importing the ``lightgbm`` Python package
imports scikit-learn and scipy.stats with it, about a second of a fresh process: more than
the fits themselves. So :func:`fit_pu` calls the library that package wraps
(``lib_lightgbm``, shipped inside it) through ctypes, with the same calls and the same
arguments as ``lightgbm.train`` and ``Booster.predict(raw_score=True)``: the same trees and
the same margins (the tests compare both, value for value). Where that library cannot be
found, or is not LightGBM 4's (the C API called here), the Python package fits them.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import sys
import weakref
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from dmp_ml.models.lookalike.model import LookalikeModel

logger = logging.getLogger(__name__)

# the C API's constants (LightGBM's c_api.h)
_API_MAJOR = "4"  # the LightGBM major version whose C API this module calls
_FLOAT32 = 0
_ROW_MAJOR = 1
_PREDICT_RAW_SCORE = 1


class PUClassifier(Protocol):
    """A fitted PU classifier: raw margins (log-odds) of classifier inputs."""

    def margin(self, X: np.ndarray, num_threads: int) -> np.ndarray:
        """Raw scores of the rows of ``X`` (n, n_inputs) float32, shape (n,) float64."""
        ...


def classifier_matrix(model: LookalikeModel, rows: np.ndarray) -> np.ndarray:
    """Classifier inputs of ``rows``: raw numeric features (NaN kept) and level codes (-1:
    other), float32 C-ordered, shape (len(rows), n_numeric + n_categorical)."""
    return np.hstack([model.raw_[rows], model.codes_[rows].astype(np.float32)])


def pu_params(model: LookalikeModel, n_seeds: int, n_negatives: int, seed: int) -> dict[str, Any]:
    """LightGBM parameters of a PU fit on ``n_seeds`` positives and ``n_negatives`` unlabeled."""
    s = model.settings
    return {
        "objective": "binary",
        "learning_rate": s.pu_learning_rate,
        "num_leaves": s.pu_num_leaves,
        "min_data_in_leaf": s.pu_min_child_samples,
        "max_bin": s.pu_max_bin,
        "feature_fraction": 0.8,
        "lambda_l2": 1.0,
        "scale_pos_weight": max(1.0, n_negatives / max(1, n_seeds)) ** 0.5,
        "deterministic": True,
        # row-wise histograms: the same trees, faster on a few thousand rows x ~100 columns
        "force_row_wise": True,
        # a PU fit is a few thousand rows: extra OpenMP threads only cost (and on a busy
        # machine they cost a lot), so it always runs on one
        "num_threads": 1,
        "seed": seed,
        "verbosity": -1,
    }


def fit_pu(
    model: LookalikeModel, seeds: np.ndarray, negatives: np.ndarray, seed: int
) -> PUClassifier:
    """A PU classifier of ``seeds`` (label 1) against ``negatives`` (label 0), positions into
    the model's profiles, ``settings.pu_n_estimators`` rounds with random ``seed``."""
    rows = np.concatenate([seeds, negatives])
    label = np.concatenate([np.ones(len(seeds)), np.zeros(len(negatives))])
    params = pu_params(model, len(seeds), len(negatives), seed)
    X = classifier_matrix(model, rows)
    rounds = model.settings.pu_n_estimators
    if native_library() is not None:
        return NativeBooster(X, label, params, rounds)
    return PackageBooster(X, label, params, rounds)


class PackageBooster:
    """A PU classifier fitted by the ``lightgbm`` package (the fallback, and the reference the
    tests compare :class:`NativeBooster` with)."""

    def __init__(self, X: np.ndarray, label: np.ndarray, params: dict[str, Any], rounds: int):
        import lightgbm as lgb

        data = lgb.Dataset(X, label=label, free_raw_data=True)
        # keep_training_booster: skips a model-to-text-and-back round trip; the booster only
        # lives for one request
        self.booster = lgb.train(params, data, num_boost_round=rounds, keep_training_booster=True)

    def margin(self, X: np.ndarray, num_threads: int) -> np.ndarray:
        """Raw scores of the rows of ``X``, shape (n,) float64."""
        return self.booster.predict(X, raw_score=True, num_threads=num_threads)


class NativeBooster:
    """A PU classifier fitted through ``lib_lightgbm``'s C API, as ``lightgbm.train`` fits it.

    The dataset and the booster handles are freed when the object is collected.
    """

    def __init__(self, X: np.ndarray, label: np.ndarray, params: dict[str, Any], rounds: int):
        lib = native_library()
        assert lib is not None
        # lightgbm.train passes the rounds as num_iterations, to the dataset and the booster
        text = _param_text({**params, "num_iterations": rounds})
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.ascontiguousarray(label, dtype=np.float32)  # as Dataset.set_label stores it
        dataset, booster = ctypes.c_void_p(), ctypes.c_void_p()
        _call(
            lib.LGBM_DatasetCreateFromMat,
            *_matrix_args(X),
            ctypes.c_char_p(text),
            None,
            ctypes.byref(dataset),
        )
        self._handles = weakref.finalize(self, _free, lib, dataset, booster)
        _call(
            lib.LGBM_DatasetSetField,
            dataset,
            ctypes.c_char_p(b"label"),
            y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            ctypes.c_int(len(y)),
            ctypes.c_int(_FLOAT32),
        )
        _call(lib.LGBM_BoosterCreate, dataset, ctypes.c_char_p(text), ctypes.byref(booster))
        finished = ctypes.c_int(0)
        for _ in range(rounds):  # as lightgbm.train: every round, finished or not
            _call(lib.LGBM_BoosterUpdateOneIter, booster, ctypes.byref(finished))
        self._booster = booster

    def margin(self, X: np.ndarray, num_threads: int) -> np.ndarray:
        """Raw scores of the rows of ``X`` over every tree, shape (n,) float64."""
        lib = native_library()
        assert lib is not None
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty(X.shape[0], dtype=np.float64)
        written = ctypes.c_int64(0)
        _call(
            lib.LGBM_BoosterPredictForMat,
            self._booster,
            *_matrix_args(X),
            ctypes.c_int(_PREDICT_RAW_SCORE),
            ctypes.c_int(0),  # from the first tree
            ctypes.c_int(0),  # to the last (what Booster.predict passes without early stopping)
            ctypes.c_char_p(_param_text({"num_threads": num_threads})),
            ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        if written.value != len(out):
            raise RuntimeError(f"LightGBM wrote {written.value} margins for {len(out)} rows")
        return out


@cache
def native_library() -> ctypes.CDLL | None:
    """``lib_lightgbm`` of the installed ``lightgbm`` package, loaded without importing the
    package (None where it cannot be found or loaded, or is not of LightGBM 4)."""
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = {"win32": "lib_lightgbm.dll", "darwin": "lib_lightgbm.dylib"}.get(
        sys.platform, "lib_lightgbm.so"
    )
    for location in spec.submodule_search_locations:
        package = Path(location)
        try:  # the package reads its version from this file too
            version = (package / "VERSION.txt").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if version.split(".")[0] != _API_MAJOR:
            logger.debug("LightGBM %s: the lightgbm package fits the PU classifiers", version)
            return None
        # where the package itself looks (lightgbm/libpath.py)
        for candidate in (package / "lib" / name, package / "bin" / name, package.parent / name):
            if candidate.is_file():
                try:
                    lib = ctypes.CDLL(str(candidate))
                except OSError as exc:
                    logger.debug("cannot load %s (%s): the lightgbm package fits", candidate, exc)
                    return None
                lib.LGBM_GetLastError.restype = ctypes.c_char_p
                return lib
    return None


def _matrix_args(X: np.ndarray) -> tuple[Any, ...]:
    """How the C API takes a contiguous float32 matrix: data, type, rows, columns, order."""
    return (
        X.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        ctypes.c_int(_FLOAT32),
        ctypes.c_int32(X.shape[0]),
        ctypes.c_int32(X.shape[1]),
        ctypes.c_int(_ROW_MAJOR),
    )


def _param_text(params: dict[str, Any]) -> bytes:
    """Parameters as the C API reads them (``key=value`` pairs, as the package writes them)."""
    return " ".join(f"{key}={value}" for key, value in params.items()).encode()


def _call(function: Any, *args: Any) -> None:
    if function(*args) != 0:
        lib = native_library()
        message = lib.LGBM_GetLastError().decode() if lib is not None else "unknown error"
        raise RuntimeError(f"LightGBM: {message}")


def _free(lib: ctypes.CDLL, dataset: ctypes.c_void_p, booster: ctypes.c_void_p) -> None:
    if booster.value:
        lib.LGBM_BoosterFree(booster)
    if dataset.value:
        lib.LGBM_DatasetFree(dataset)
