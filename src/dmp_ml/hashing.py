"""SHA-256 digests: of a file (bundle checksums) and of each text of a column (hashed ids)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd


def sha256_file(path: Path) -> str:
    """Hex SHA-256 digest of the file at ``path``, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(values: pd.Series) -> pd.Series:
    """Hex SHA-256 digest of each non-missing string's UTF-8 bytes (NA stays NA)."""
    out = pd.Series(pd.NA, index=values.index, dtype="string")
    present = values.notna()
    out[present] = [
        hashlib.sha256(str(v).encode("utf-8")).hexdigest() for v in values[present].tolist()
    ]
    return out
