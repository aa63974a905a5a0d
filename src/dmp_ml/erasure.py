"""The erasure list: profile ids that asked to be forgotten, applied by every later train.

It lives in ``<workdir>/erasure.txt``, one id per line, append-only. It holds the ids themselves
(a suppression list cannot work without them) and nothing else about the person.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

ERASURE_FILE = "erasure.txt"


def read_erasure_list(workdir: str | Path) -> frozenset[str]:
    """Every id on the workdir's erasure list (empty when there is none)."""
    path = Path(workdir) / ERASURE_FILE
    if not path.exists():
        return frozenset()
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip())


def add_to_erasure_list(workdir: str | Path, profile_ids: Iterable[str]) -> int:
    """Append ids not yet on the list; return how many were new. Durable before it returns."""
    path = Path(workdir) / ERASURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    known = read_erasure_list(workdir)
    new = sorted({str(p).strip() for p in profile_ids if str(p).strip()} - known)
    if new:
        with path.open("a", encoding="utf-8") as handle:
            handle.write("".join(f"{p}\n" for p in new))
            handle.flush()
            os.fsync(handle.fileno())
    return len(new)
