"""Servers started by the tests take their ports from DMP_ML_TEST_PORTS when it is set."""

from __future__ import annotations

import socket

import pytest
from ports import free_port, port_range


def test_ports_come_from_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMP_ML_TEST_PORTS", "41000-41009")
    assert {free_port() for _ in range(20)} <= set(range(41000, 41010))


def test_a_taken_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setenv("DMP_ML_TEST_PORTS", f"{taken}-{taken + 1}")
        assert {free_port() for _ in range(10)} == {taken + 1}


def test_without_the_variable_any_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DMP_ML_TEST_PORTS", raising=False)
    assert 0 < free_port() < 65536


@pytest.mark.parametrize("value", ["4000", "4100-4000", "a-b", "0-10"])
def test_a_bad_range_is_a_clear_error(value: str) -> None:
    with pytest.raises(ValueError, match="DMP_ML_TEST_PORTS"):
        port_range(value)
