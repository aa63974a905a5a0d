"""Per-profile arrays stored so that serving workers map them instead of loading them.

A bundle's large per-profile arrays (send-time curves, lookalike vectors, ...) are written as
NumPy ``.npy`` files and opened read-only with ``mmap_mode='r'``: the operating system keeps one
copy in its page cache, shared by every worker that maps the file, so a worker's private memory
does not grow with the population. A mapped array is read-only; a model that changes one in
place (refresh, erasure) first takes a private copy with :func:`writable`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_array(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as a plain ``.npy`` file (no pickle) that :func:`map_array` can map."""
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    return path


def map_array(path: Path) -> np.ndarray:
    """The array at ``path`` mapped read-only (pages are read on use and shared)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself when it can be changed in place, else a private copy of it."""
    return array if array.flags.writeable else np.array(array)
