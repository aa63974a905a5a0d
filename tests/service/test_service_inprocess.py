"""The service built from a settings object, served in this process over real HTTP.

No environment variables: :func:`dmp_ml.service.app.build_service` gets a token, caps and a
body limit of its own (different from the subprocess server's) and must enforce those. Its
pointer check period is a minute, so a bundle swap seen within seconds was seen by watching
the workdir, not by the timed check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn
from conftest import CopyWorkdir
from ports import free_port

from dmp_ml.service.app import build_service
from dmp_ml.settings import load_settings

from .conftest import copy_bundle, point_to

TOKEN = "in-process-7c1e"
MAX_SCORE_IDS = 7
MAX_REQUEST_BYTES = 4_000


@pytest.fixture(scope="module")
def workdir(
    trained: tuple[Path, Path, pd.Timestamp, dict],
    tmp_path_factory: pytest.TempPathFactory,
    copy_workdir: CopyWorkdir,
) -> Path:
    """A copy of the trained workdir: this module swaps its bundle."""
    return copy_workdir(trained[0], tmp_path_factory.mktemp("inprocess") / "W")


@pytest.fixture(scope="module")
def served(workdir: Path) -> Iterator[str]:
    """The service of a settings object, under uvicorn in a thread of this process."""
    base = load_settings()
    settings = base.model_copy(
        update={
            "workdir": workdir,
            "api_token": TOKEN,
            "service": base.service.model_copy(
                update={
                    "max_score_ids": MAX_SCORE_IDS,
                    "max_request_bytes": MAX_REQUEST_BYTES,
                    "reload_poll_seconds": 60.0,
                }
            ),
        }
    )
    service = build_service(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(service.to_asgi(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="in-process-service", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert thread.is_alive(), "the in-process server stopped"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the in-process server is not ready after 60 s"
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_token_of_the_settings_object_is_the_one_required(served: str) -> None:
    ids = {"profile_ids": ["p-unknown"]}
    assert httpx.post(f"{served}/score", json=ids).status_code == 401
    wrong = httpx.post(f"{served}/score", json=ids, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = httpx.post(f"{served}/score", json=ids, headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200, right.text
    assert right.json()["unknown_ids"] == ["p-unknown"]


def test_caps_and_body_limit_come_from_the_settings_object(served: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    over = {"profile_ids": [f"p{i}" for i in range(MAX_SCORE_IDS + 1)]}
    response = httpx.post(f"{served}/score", json=over, headers=auth)
    assert response.status_code == 422
    assert response.json()["field"] == "profile_ids"

    big = {"profile_ids": ["x" * 200] * 30}  # ~6 kB, over the 4 kB limit
    response = httpx.post(f"{served}/score", json=big, headers=auth)
    assert response.status_code == 413
    assert str(MAX_REQUEST_BYTES) in response.json()["error"]

    schema = httpx.get(f"{served}/openapi.json").json()
    score = schema["components"]["schemas"]["ScoreRequest"]["properties"]["profile_ids"]
    assert score["maxItems"] == MAX_SCORE_IDS
    info = httpx.get(f"{served}/info", headers=auth).json()
    assert info["limits"]["max_score_ids"] == MAX_SCORE_IDS
    assert info["limits"]["max_request_bytes"] == MAX_REQUEST_BYTES


def test_a_swapped_pointer_is_served_without_waiting_for_the_period(
    served: str, workdir: Path
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = httpx.get(f"{served}/info", headers=auth).json()["live"]["version"]
    point_to(workdir, copy_bundle(workdir, "watched-swap"))
    deadline = time.monotonic() + 10  # the timed check would come after 60 s
    while True:
        live = httpx.get(f"{served}/info", headers=auth).json()["live"]
        if live["version"] == "watched-swap":
            break
        assert live["version"] == before
        assert time.monotonic() < deadline, "the swap was not seen within 10 s"
        time.sleep(0.1)
    scored = httpx.post(f"{served}/score", json={"profile_ids": ["p-unknown"]}, headers=auth)
    assert scored.json()["model_version"] == "watched-swap"
