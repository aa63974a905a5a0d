"""LightGBM's input from a prepared frame, without a dense copy of it.

Given a DataFrame whose columns are not one float block (the prepared frames are not: their
categorical columns sit among the numeric ones), LightGBM first copies it into one dense float
matrix, as large as the frame itself: for the snapshot rows of a large population the largest
allocation of a training. :func:`dataset` hands LightGBM the same values as an Arrow table of
the frame's own float columns instead (categorical columns as their codes, missing as NaN, the
codes LightGBM gives a frame's categories), which LightGBM reads in place; the Dataset, and so
every booster trained on it, is the one the frame gives, bit for bit (tests). :func:`predict`
converts a block of rows at a time.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["dataset", "predict"]

_BLOCK_ROWS = 65_536
"""Rows :func:`predict` converts at a time."""


def _floats(column: pd.Series) -> np.ndarray:
    """The column's values as LightGBM reads them: float64, or float32 (read as the float64
    values it holds); float columns as views."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy().astype(np.float64)
        codes[codes < 0] = np.nan
        return codes
    if column.dtype in (np.float64, np.float32):
        return column.to_numpy()  # a view, as LightGBM reads it
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def dataset(
    X: pd.DataFrame,
    y: np.ndarray,
    categorical_feature: list[str],
    reference: lgb.Dataset | None = None,
) -> lgb.Dataset:
    """``lgb.Dataset(X, y, categorical_feature=..., reference=...)`` read from ``X``'s columns
    in place (float64 and float32 columns are not copied).

    Parameters
    ----------
    X : DataFrame, shape (n, n_features)
        Numeric columns (read as float64 values) and pandas categorical ones; non-empty.
    y : ndarray, shape (n,)
    categorical_feature : names of ``X``'s columns LightGBM splits as categories
    reference : the training Dataset, for a validation one (its bins and categories)
    """
    if X.empty:
        raise ValueError("a LightGBM Dataset needs at least one row and one column")
    table = pa.Table.from_arrays(
        [pa.array(_floats(X[name])) for name in X.columns],
        names=[str(c) for c in X.columns],
    )
    data = lgb.Dataset(table, y, categorical_feature=categorical_feature, reference=reference)
    if reference is None:  # recorded as a frame's would be: the booster maps frames' categories
        data.pandas_categorical = [
            list(X[name].cat.categories)
            for name in X.columns
            if isinstance(X[name].dtype, pd.CategoricalDtype)
        ]
    return data


def predict(booster: lgb.Booster, X: pd.DataFrame, **kwargs: Any) -> np.ndarray:
    """``booster.predict(X, **kwargs)``, converting a block of ``X``'s rows at a time: shape
    (n,) or (n, k) as LightGBM returns it."""
    parts = [
        np.asarray(booster.predict(X.iloc[start : start + _BLOCK_ROWS], **kwargs))
        for start in range(0, len(X), _BLOCK_ROWS)
    ]
    return np.concatenate(parts) if parts else np.empty(0)
