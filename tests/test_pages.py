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
