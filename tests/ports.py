"""Ports for the servers the tests start.

``DMP_ML_TEST_PORTS=4000-4100`` confines them to a range (a firewall, a shared machine); without
it the system hands out any free port.
"""

from __future__ import annotations

import os
import random
import socket

ENV = "DMP_ML_TEST_PORTS"


def port_range(value: str) -> range:
    """``"4000-4100"`` -> ``range(4000, 4101)``; a clear error for anything else."""
    try:
        low, high = (int(part) for part in value.split("-"))
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: expected LOW-HIGH, e.g. 4000-4100") from None
    if not 0 < low <= high < 65536:
        raise ValueError(f"{ENV}={value!r}: expected 0 < LOW <= HIGH < 65536")
    return range(low, high + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, from ``DMP_ML_TEST_PORTS`` when set.

    The range is scanned from a random start so parallel test runs rarely pick the same port.
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    ports = port_range(value)
    start = random.randrange(len(ports))
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        if _bindable(port):
            return port
    raise RuntimeError(f"{ENV}={value}: every port in the range is taken")
