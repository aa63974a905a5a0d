"""Hostile and broken input over real HTTP: size caps, odd ids, huge numbers, broken disks.

The first tests use the session server. The last ones need a workdir whose disk can be
broken for real, so they start their own server on a copy of the trained workdir placed on a
small tmpfs: filled up it gives a genuine ENOSPC, remounted read-only a genuine EROFS. Both
stop root, which the tests run as here (chmod does not: root writes through it). Where tmpfs
cannot be mounted (no privilege), those tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from dmp_ml.bundle import live_bundle_path, load_bundle
from dmp_ml.erasure import read_erasure_list
from dmp_ml.errors import BundleError

from .conftest import CAPS, TOKEN, Server, start_server, stop_server


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


# ------------------------------------------------------------------------- size caps


def test_a_body_over_the_cap_is_413_declared_or_streamed(http: httpx.Client) -> None:
    limit = CAPS["max_request_bytes"]
    big = {"profile_ids": ["p" * 200] * (limit // 200 + 10)}
    declared = http.post("/score", json=big)
    assert declared.status_code == 413, declared.text
    assert declared.json()["field"] == "body"
    assert str(limit) in declared.json()["error"]

    payload = json.dumps(big).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(payload), 16_384):
            yield payload[start : start + 16_384]

    streamed = http.post("/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    # the server is fine afterwards, and a body under the cap is answered
    assert http.post("/score", json={"profile_ids": ["p000001"]}).status_code == 200
    assert http.get("/info").json()["limits"]["max_request_bytes"] == limit


def test_lookalike_size_is_capped_like_reach(server: Server, http: httpx.Client) -> None:
    seeds = server.consented[:20]
    for size in (1e12, 10**12):
        response = http.post("/lookalike", json={"seed_ids": seeds, "size": size})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "size"
        assert "max_reach" in response.json()["error"]
    over = http.post("/lookalike", json={"seed_ids": seeds, "reach": 0.99})
    assert over.status_code == 422 and over.json()["field"] == "reach"
    fine = http.post("/lookalike", json={"seed_ids": seeds, "size": 10})
    assert fine.status_code == 200 and len(fine.json()["audience"]) == 10


# ------------------------------------------------------------------------ odd values


def test_a_segment_number_beyond_float_range_is_422_naming_the_clause(http: httpx.Client) -> None:
    rule = {
        "all": [
            {"feature": "purchase_count_90d", "op": ">=", "value": 1},
            {"feature": "purchase_count_90d", "op": "<", "value": 10**400},
        ]
    }
    response = http.post("/segments/preview", json={"rule": rule})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "all[1].value"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\n", "\r", "\x85", "\x0b", "\x00"])
def test_forget_refuses_ids_holding_a_separator_or_control_character(
    server: Server, http: httpx.Client, separator: str
) -> None:
    target = server.consented[0]
    before = read_erasure_list(server.workdir)
    response = http.post("/forget", json={"profile_ids": [f"nobody{separator}{target}"]})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "profile_ids[0]"
    assert read_erasure_list(server.workdir) == before  # nothing recorded
    scored = http.post("/score", json={"profile_ids": [target]}).json()
    assert [r["profile_id"] for r in scored["results"]] == [target]  # still answered


# ---------------------------------------------------------------- broken disks (tmpfs)


def _mount_tmpfs(path: Path, size_bytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


@pytest.fixture(scope="module")
def on_tmpfs(
    trained: tuple[Path, Path, pd.Timestamp, dict], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """A copy of the trained workdir on its own small tmpfs, served by its own server."""
    source = trained[0]
    used = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    workdir = tmp_path_factory.mktemp("tmpfs") / "W"  # the mount point: the log stays outside
    if not _mount_tmpfs(workdir, max(64 << 20, 4 * used)):
        pytest.skip("tmpfs cannot be mounted here (needs root): no real full/read-only disk")
    try:
        shutil.copytree(source, workdir, symlinks=True, dirs_exist_ok=True)
        proc, url, _ = start_server(workdir)
        try:
            yield workdir, url
        finally:
            stop_server(proc)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(workdir)], check=False)
        subprocess.run(["umount", str(workdir)], check=False)


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)


def _live_ids(workdir: Path) -> set[str]:
    """The live bundle's profile ids (retried while a re-publish swaps it underneath)."""
    for _ in range(20):
        try:
            return set(load_bundle(workdir).features.frame.index)
        except BundleError:
            time.sleep(0.2)
    raise AssertionError("the live bundle stays unreadable")


def _known(workdir: Path, n: int) -> list[str]:
    index = load_bundle(workdir).scores.index
    return [str(p) for p in index if not str(p).startswith("anon:")][-n:]


def test_forget_on_a_truncated_live_bundle_says_so_and_the_next_good_load_scrubs(
    on_tmpfs: tuple[Path, str],
) -> None:
    workdir, url = on_tmpfs
    victim = _known(workdir, 1)[0]
    features = live_bundle_path(workdir) / "features" / "features.parquet"
    intact = features.read_bytes()
    features.write_bytes(intact[: len(intact) // 3])
    with _client(url) as client:
        response = client.post("/forget", json={"profile_ids": [victim]})
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "incomplete" and body["field"] == "bundle"
        assert any(k.startswith("bundles/") for k in body["not_scrubbed"])
        assert "could not be scrubbed" in body["error"]
        scored = client.post("/score", json={"profile_ids": [victim]}).json()
        assert scored["unknown_ids"] == [victim]  # the running worker stops at once

        features.write_bytes(intact)  # repaired: the worker's next look scrubs it
        deadline = time.monotonic() + 60
        while victim in _live_ids(workdir):
            assert time.monotonic() < deadline, "the repaired bundle was not scrubbed"
            time.sleep(0.5)
        assert client.post("/score", json={"profile_ids": [victim]}).json()["unknown_ids"] == [
            victim
        ]


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until the disk is full; the file to delete afterwards."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):  # then the last partial block
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def _assert_storage_answer(response: httpx.Response, status: int, cause: str, workdir: Path):
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["field"] == "workdir"
    assert cause in body["error"] and str(workdir) in body["error"], body


def test_a_full_disk_is_507_naming_the_path_and_a_retry_completes(
    on_tmpfs: tuple[Path, str],
) -> None:
    workdir, url = on_tmpfs
    victim = _known(workdir, 2)[0]
    as_of = load_bundle(workdir).as_of
    filler = _fill(workdir)
    try:
        with _client(url) as client:
            events = [{"event_time": as_of.isoformat(), "cookie_id": "ck-full", "event_type": "x"}]
            _assert_storage_answer(
                client.post("/events", json={"events": events}), 507, "no space", workdir
            )
            _assert_storage_answer(
                client.post("/forget", json={"profile_ids": [victim]}), 507, "no space", workdir
            )
            if victim in read_erasure_list(workdir):  # the list is written first, and fit:
                scored = client.post("/score", json={"profile_ids": [victim]}).json()
                assert scored["unknown_ids"] == [victim]  # then it is honoured at once
            assert client.get("/readyz").status_code == 200  # still serving
    finally:
        filler.unlink()
    with _client(url) as client:  # space again: the same request goes through
        again = client.post("/forget", json={"profile_ids": [victim]})
        assert again.status_code == 200 and again.json()["status"] == "complete"
    assert victim in read_erasure_list(workdir)
    assert victim not in _live_ids(workdir)


def test_a_read_only_workdir_is_503_naming_the_path(on_tmpfs: tuple[Path, str]) -> None:
    workdir, url = on_tmpfs
    victim = _known(workdir, 3)[0]
    as_of = load_bundle(workdir).as_of
    _remount(workdir, "ro")
    try:
        with _client(url) as client:
            events = [{"event_time": as_of.isoformat(), "cookie_id": "ck-ro", "event_type": "x"}]
            _assert_storage_answer(
                client.post("/events", json={"events": events}), 503, "read-only", workdir
            )
            _assert_storage_answer(
                client.post("/forget", json={"profile_ids": [victim]}), 503, "read-only", workdir
            )
            assert client.post("/score", json={"profile_ids": [victim]}).status_code == 200
    finally:
        _remount(workdir, "rw")
