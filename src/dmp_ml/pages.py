"""Memory pages: transparent huge pages off where they cost more than they give, and the C
allocator set for what each batch command needs most, unless the user asks otherwise.

On the 2-core VMs we target, ``dmp-ml features`` on a 10M-event log spent about a third of its
CPU time in the kernel zeroing 2 MB huge pages (``perf``: ``clear_page_erms`` under
``do_huge_pmd_anonymous_page``, faulted in by Arrow's allocator, NumPy temporaries and copies),
most of them only partly used before being freed. With huge pages off for the process the same
command spent about 3 CPU s less in the kernel (of about 17 s) and peaked 140 MB lower, its
output byte for byte the same. :func:`disable_huge_pages` covers every allocator, for the whole
process (a batch command); :func:`small_pages` drops only NumPy's own hint, around a feature
build inside any process.

The C allocator gives every block of 32 MB or more (a column of a few million rows) its own
mapping and returns it to the kernel when freed, so the next such block is faulted in and
zeroed page by page again: the same command took about 1.1 million page faults (4.3 GB of fresh
pages for a 1.8 GB peak). :func:`keep_freed_memory` keeps freed blocks in the process for the
next allocation: about 0.75 million faults, a third less kernel time, peak RSS a little higher.
That suits ``features``, one pass whose peak is small. ``train`` needs the opposite: its stages
hold gigabytes in turn, and :func:`map_large_blocks` keeps glibc from serving large blocks out
of its heap (a training's many temporaries of 1-30 MB, freed out of order, otherwise leave a
heap whose pages are never given back, and each stage starts from the previous one's
high-water mark); :func:`release_free_memory` hands back the heaps' free pages between stages.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Iterator

try:  # private, but documented with NUMPY_MADVISE_HUGEPAGE; used only as a speed hint
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

_PR_SET_THP_DISABLE = 41  # linux/prctl.h
_M_TRIM_THRESHOLD = -1  # malloc.h (glibc)
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes (an int)
_M_MMAP_THRESHOLD = -3  # malloc.h
LARGE_BLOCK = 8 * 2**20
"""Blocks of this many bytes or more get a mapping of their own (:func:`map_large_blocks`)."""


def disable_huge_pages() -> bool:
    """Turn transparent huge pages off for this process (and its children); True when done.

    Only speed and memory change, never results. Left alone off Linux and when
    ``NUMPY_MADVISE_HUGEPAGE`` is set (the user chose huge pages).
    """
    if not sys.platform.startswith("linux") or _user_wants_huge_pages():
        return False
    try:
        done = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc prctl
        done = False
    logger.debug("transparent huge pages %s", "off" if done else "left as they are")
    return done


def keep_freed_memory() -> bool:
    """Have the C allocator (glibc) keep freed memory for reuse instead of unmapping it; True
    when done.

    For a batch command that allocates and frees columns of millions of rows: no block gets a
    mapping of its own, and freed memory is returned to the kernel only beyond 2 GB free at
    the top of the heap. Only speed and memory change, never results. Left alone off glibc and
    when the user tunes the allocator (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_`` or
    ``MALLOC_MMAP_THRESHOLD_`` set).
    """
    if not sys.platform.startswith("linux") or _user_tunes_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    done = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    logger.debug("freed memory %s", "kept for reuse" if done else "returned as usual")
    return done


def map_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mapping, returned to the
    system when freed, for this process; True when done.

    glibc starts at 128 kB and raises its mmap threshold to the size of each mapped block freed
    (up to 32 MB): after a few, every array below 32 MB comes from the heap, and a heap
    fragmented by temporaries freed out of order keeps its pages. ``dmp-ml train`` on the 20k
    demo world peaked at 1.4 GB with the threshold fixed at 8 MB against 2.0 GB without, at
    about 5 s more system CPU (of 45 s): faulting in fresh pages for each large block.
    Only memory and speed change, never results. Left alone where the C library is not glibc
    and when the user tunes the allocator (a ``MALLOC_*_`` variable such as
    ``MALLOC_MMAP_THRESHOLD_`` set).
    """
    if not sys.platform.startswith("linux") or _user_tunes_malloc():
        return False
    try:
        done = ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
    except (OSError, AttributeError):  # no glibc mallopt (e.g. musl)
        done = False
    logger.debug("mmap threshold %s", f"{threshold} bytes" if done else "left as it is")
    return done


def release_free_memory() -> bool:
    """Give the free pages of every malloc heap (glibc ``malloc_trim``) and of Arrow's memory
    pool back to the system; True when the heaps were trimmed.

    Blocks below :data:`LARGE_BLOCK` and those of other threads' heaps (LightGBM's OpenMP
    workers) stay in the heaps when freed, and Arrow's allocator keeps what a Parquet read
    freed for its next one: between two stages of a train, or once a bundle is loaded, none of
    it is needed. A serving worker that loaded the 135k-profile demo bundle held 75 MB
    privately, 49 MB once given back (the 27k one: 63 and 50 MB), so what a worker holds no
    longer grows with the population it read. Only memory changes, never results; the heaps
    are left alone where the C library is not glibc.
    """
    arrow = sys.modules.get("pyarrow")  # nothing to give back when Arrow was never used
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # no glibc malloc_trim (e.g. musl)
        return False
    return True


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """Build without NumPy's transparent-huge-page hint, unless ``NUMPY_MADVISE_HUGEPAGE`` is set.

    The build writes ~1.5 GB of fresh output per 10M events in scattered order; on the 2-core
    VMs we target, faulting that memory in as 2 MB huge pages costs 1.5-4x more than as 4 kB
    pages (measured). The hint only affects speed; it is restored on exit.
    """
    setter = getattr(_multiarray, "_set_madvise_hugepage", None)
    if setter is None or _user_wants_huge_pages():
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)


def _user_wants_huge_pages() -> bool:
    return "NUMPY_MADVISE_HUGEPAGE" in os.environ


_MALLOC_TUNABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def _user_tunes_malloc() -> bool:
    return any(name in os.environ for name in _MALLOC_TUNABLES)
