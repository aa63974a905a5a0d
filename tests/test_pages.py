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
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k != "NUMPY_MADVISE_HUGEPAGE"
    }

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", FAULTS, mode],
            capture_output=True,
            text=True,
            env=environ,
            check=True,
        ).stdout.split()
        return out[0], int(out[1])

    done, kept = faults("keep")
    _, returned = faults("return")
    assert done == "True"
    # five 80 MB columns: each faulted in again page by page when freed memory is returned
    assert returned > 5 * 10_000
    assert kept < returned / 10
