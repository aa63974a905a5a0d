"""Peak resident memory of this process per stage of a run: which stage holds the peak.

Linux keeps a process's high-water mark of resident memory (``VmHWM`` in
``/proc/self/status``) and lets the process reset it (writing ``5`` to
``/proc/self/clear_refs``), so each stage of ``train`` can report its own peak, not the run's
so far. Elsewhere (or where ``/proc`` is not writable) :class:`StagePeaks` measures nothing
and the stages have no figure. Only this process is counted: Dask workers
(``features.engine: dask``) are processes of their own. The reset also resets the maximum
resident size ``getrusage`` reports (what ``/usr/bin/time`` prints): for a whole train, read
the largest stage peak instead. :func:`private_bytes` reads what a process holds on its own
(its anonymous memory), the figure the serving benchmarks and memory tests compare.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak() -> bool:
    """Start a new high-water mark at the current resident size; True when it could."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _peak_bytes() -> int | None:
    """Resident high-water mark (bytes) since the last reset, or None when unknown."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


class StagePeaks:
    """Peak resident MB of this process per stage, for stages run one after another.

    Created at the start of the first stage; :meth:`mark` ends a stage (its peak goes into
    :attr:`mb`) and starts the next. Where the peak cannot be reset (not Linux, ``/proc``
    read-only) :attr:`mb` stays empty.
    """

    def __init__(self) -> None:
        self.mb: dict[str, float] = {}
        self._measured = _reset_peak()

    def mark(self, stage: str) -> None:
        """Record the peak since the previous mark as ``stage``'s, and reset it."""
        peak = _peak_bytes() if self._measured else None
        if peak is not None:
            self.mb[stage] = round(peak / 2**20, 1)
            logger.debug("%s: peak resident memory %.0f MB", stage, self.mb[stage])
        self._measured = _reset_peak()


def private_bytes(pid: int | str = "self") -> int:
    """Anonymous bytes of process ``pid`` (``self``: this one): what only it holds, backed by
    no file (the pages of a mapped bundle are page cache, shared by whoever maps them), from
    ``/proc/<pid>/smaps_rollup`` (Linux; ``OSError`` elsewhere)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Anonymous:"))
