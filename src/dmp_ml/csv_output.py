"""CSV files for people: every CSV dmp-ml writes goes through :func:`write_csv`.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some, a tab or
carriage return) as a formula, so a profile id such as ``=HYPERLINK(...)`` sent in with events
would run on the marketer's machine when an export is opened. Following OWASP's advice on CSV
injection, such text cells are written with a leading single quote (``'=HYPERLINK(...)``),
which spreadsheets show as text. Only text is escaped: numbers (``-2.5`` in a numeric column)
and timestamps stay as they are. Parquet files keep the values unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def escape_text(values: pd.Series) -> pd.Series:
    """Prefix ``'`` to the text cells of ``values`` that a spreadsheet would run as a formula."""
    text = values.astype("string")
    risky = text.str.startswith(FORMULA_PREFIXES).fillna(False).to_numpy(bool)
    if not risky.any():
        return values
    return text.mask(risky, "'" + text)


def escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells and column names are safe to open in a spreadsheet.

    Columns of numbers, booleans and timestamps are left alone; in a column of mixed Python
    objects only the ``str`` values are escaped.
    """
    out = frame.copy(deep=False)
    for position in range(frame.shape[1]):
        col = frame.iloc[:, position]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col.astype("string")
        if pd.api.types.is_string_dtype(col.dtype) and not pd.api.types.is_object_dtype(col.dtype):
            out.isetitem(position, escape_text(col))
        elif pd.api.types.is_object_dtype(col.dtype):
            is_text = col.map(lambda v: isinstance(v, str)).to_numpy(bool)
            if is_text.any():
                escaped = escape_text(col[is_text])
                fixed = col.copy()
                fixed[is_text] = escaped.astype(object)
                out.isetitem(position, fixed)
    names = escape_text(pd.Series([str(c) for c in frame.columns], dtype="string"))
    out.columns = pd.Index(names.tolist())
    return out


def write_csv(frame: pd.DataFrame, path: str | Path, date_format: str | None = None) -> Path:
    """Write ``frame`` as CSV without its index, text cells escaped (:func:`escape_formulas`).

    Lines end in CRLF (RFC 4180), so a cell holding a carriage return is quoted too.
    """
    path = Path(path)
    escaped = escape_formulas(frame)
    escaped.to_csv(path, index=False, date_format=date_format, lineterminator="\r\n")
    return path
