"""Huge pages off for batch commands: the process really runs without them, unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = (
    "from dmp_ml.pages import disable_huge_pages\n"
    "done = disable_huge_pages()\n"
    "status = open('/proc/self/status').read()\n"
    "print(done, status.split('THP_enabled:')[1].split()[0])\n"
)


def _status_has_thp() -> bool:
    return (
        Path("/proc/self/status").exists()
        and "THP_enabled:" in Path("/proc/self/status").read_text()
    )


def _own_thp() -> str:
    return Path("/proc/self/status").read_text().split("THP_enabled:")[1].split()[0]


@pytest.mark.skipif(not _status_has_thp(), reason="needs Linux with THP_enabled in status")
@pytest.mark.parametrize("asked", [False, True])
def test_huge_pages_are_off_unless_the_user_asked_for_them(asked: bool) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if asked:
        environ["NUMPY_MADVISE_HUGEPAGE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=environ, check=True
    )
    # asked: left as this process has them (inherited), else switched off
    assert done.stdout.strip() == (f"False {_own_thp()}" if asked else "True 0")


RSS = "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"


def _allocator_run(script: str, *args: str) -> list[str]:
    """Run ``script`` in a fresh interpreter with glibc's malloc defaults (and NumPy's huge-page
    hint as it comes); its printed words."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k != "NUMPY_MADVISE_HUGEPAGE"
    }
    out = subprocess.run(
        [sys.executable, "-c", RSS + script, *args], capture_output=True, text=True, env=environ
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


FREED = (
    "import sys, numpy as np\n"
    "from dmp_ml.pages import map_large_blocks\n"
    "done = map_large_blocks() if sys.argv[1] == 'map' else None\n"
    "big = np.ones(20 * 2**20 // 8)\n"
    "del big  # glibc's default: the threshold now follows this block up to 20 MB\n"
    "before = rss()\n"
    "block = np.ones(10 * 2**20 // 8)\n"
    "del block\n"
    "print(done, (rss() - before) / 2**20)\n"
)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_a_freed_large_block_goes_back_to_the_system_once_large_blocks_are_mapped() -> None:
    done, kept = _allocator_run(FREED, "map")
    assert done == "True" and float(kept) < 2  # the 10 MB block was a mapping: unmapped
    assert float(_allocator_run(FREED, "default")[1]) > 8  # glibc's default: kept in the heap


TRIMMED = (
    "import numpy as np\n"
    "from dmp_ml.pages import release_free_memory\n"
    "before = rss()\n"
    "blocks = [np.ones(64 * 1024 // 8) for _ in range(3000)]  # 190 MB of heap blocks\n"
    "pin = np.ones(64 * 1024 // 8)  # above them: the heap cannot shrink from its top\n"
    "del blocks\n"
    "freed = rss()\n"
    "done = release_free_memory()\n"
    "print(done, (freed - before) / 2**20, (rss() - before) / 2**20)\n"
)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_free_heap_pages_go_back_to_the_system_when_released() -> None:
    done, freed, released = _allocator_run(TRIMMED)
    assert done == "True"
    assert float(freed) > 150  # freed, yet still held by the heap
    assert float(released) < 20  # given back


FAULTS = (
    "import resource, sys\n"
    "import numpy as np\n"
    "from dmp_ml.pages import disable_huge_pages, keep_freed_memory\n"
    "disable_huge_pages()  # as the features command runs: 4 kB pages\n"
    "done = keep_freed_memory() if sys.argv[1] == 'keep' else False\n"
    "np.ones(10_000_000)  # 80 MB, allocated once and freed\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "for _ in range(5):\n"
    "    np.ones(10_000_000)\n"
    "print(done, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_freed_columns_are_reused_without_new_page_faults() -> None:
    done, kept = _allocator_run(FAULTS, "keep")
    returned = int(_allocator_run(FAULTS, "return")[1])
    assert done == "True"
    # five 80 MB columns: each faulted in again page by page when freed memory is returned
    assert returned > 5 * 10_000
    assert int(kept) < returned / 10
