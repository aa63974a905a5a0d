"""The rest of the DMP loop over real HTTP: segment previews, fresh events, and forgetting.

Runs after the other service modules (it forgets profiles on the shared server).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from dmp_ml.bundle import DELTA_KEY, live_bundle_path, read_manifest
from dmp_ml.erasure import read_erasure_list
from dmp_ml.settings import RefreshSettings

from .conftest import Server, wait_applied


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    with server.client() as client:
        yield client


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def test_segment_preview_sizes_a_rule(http: httpx.Client) -> None:
    rule = {"all": [{"feature": "purchase_count_90d", "op": ">=", "value": 1}]}
    body = ok(http.post("/segments/preview", json={"rule": rule, "sample": 5}))
    assert 0 < body["size"] < body["population"]
    assert len(body["sample_ids"]) == 5
    assert "purchase_count_90d" in body["distribution"]


def test_a_bad_rule_names_the_clause(http: httpx.Client) -> None:
    rule = {"all": [{"feature": "purchse_count_30d", "op": ">=", "value": 1}]}
    response = http.post("/segments/preview", json={"rule": rule})
    assert response.status_code == 422
    error = response.json()
    assert error["field"] == "all[0].feature"
    assert "purchase_count_30d" in error["error"]  # did you mean


def test_fresh_events_count_before_the_next_retrain(server: Server, http: httpx.Client) -> None:
    when = (server.as_of + pd.Timedelta(hours=3)).isoformat()
    events = [
        {"event_time": when, "cookie_id": "ck-fresh-visitor", "event_type": "product_view"},
        {"event_time": when, "event_type": "page_view"},  # neither id: quarantined
    ]
    response = http.post("/events", json={"events": events})
    assert response.status_code == 202, response.text
    receipt = response.json()
    assert receipt["status"] == "accepted"
    assert receipt["rows_received"] == 2 and receipt["rows_valid"] == 1
    assert receipt["quarantined_by_reason"] == {"missing_id": 1}
    applied = wait_applied(http, receipt["status_url"])
    assert applied["bundle_version"] and applied["seconds_to_visible"] >= 0
    assert applied["refresh"]["rows_accepted"] == 1
    assert applied["refresh"]["quarantined_by_reason"] == {"missing_id": 1}
    scored = ok(http.post("/score", json={"profile_ids": ["anon:ck-fresh-visitor"]}))
    assert [r["profile_id"] for r in scored["results"]] == ["anon:ck-fresh-visitor"]


def test_deltas_past_the_limit_are_folded_while_batches_stay_answered(
    server: Server, http: httpx.Client
) -> None:
    """Past ``refresh.max_deltas`` (4) the worker folds the deltas into a new base in a process
    of its own; every batch was answered as soon as it was applied, and still is after (one
    applied while the new base was written stays, as a delta over it)."""
    base = _base(server.workdir)
    cookies = []
    for i in range(RefreshSettings().max_deltas + 1):
        when = (server.as_of + pd.Timedelta(hours=4, minutes=i)).isoformat()
        cookies.append(f"ck-fold-{i}")
        event = {"event_time": when, "cookie_id": cookies[-1], "event_type": "page_view"}
        response = http.post("/events", json={"events": [event]})
        assert response.status_code == 202, response.text
        wait_applied(http, response.json()["status_url"])
        scored = ok(http.post("/score", json={"profile_ids": [f"anon:{cookies[-1]}"]}))
        assert len(scored["results"]) == 1
    deadline = time.monotonic() + 120
    while _base(server.workdir) == base:
        assert time.monotonic() < deadline, "the deltas were never folded"
        time.sleep(0.5)
    live = read_manifest(live_bundle_path(server.workdir))
    assert len(live.get(DELTA_KEY, {}).get("chain", [])) < RefreshSettings().max_deltas
    ids = [f"anon:{c}" for c in cookies]
    time.sleep(1.5)  # the worker's pointer poll (0.5 s)
    scored = ok(http.post("/score", json={"profile_ids": ids}))
    assert {r["profile_id"] for r in scored["results"]} == set(ids)


def _base(workdir: Path) -> str:
    """The base version of the live bundle (itself for a full bundle)."""
    live = live_bundle_path(workdir)
    return str(read_manifest(live).get(DELTA_KEY, {}).get("base", live.name))


def test_events_and_forget_need_the_token(server: Server) -> None:
    with server.client(token=None) as anonymous:
        assert anonymous.post("/forget", json={"profile_ids": ["x"]}).status_code == 401
        assert anonymous.post("/events", json={"events": [{"a": 1}]}).status_code == 401


def test_forgotten_profiles_vanish_from_every_answer(server: Server, http: httpx.Client) -> None:
    gone = server.consented[-2:]
    others = server.consented[:-2][:300]
    before = ok(http.post("/score", json={"profile_ids": gone}))
    assert {r["profile_id"] for r in before["results"]} == set(gone)

    ok(http.post("/forget", json={"profile_ids": gone}))

    scored = ok(http.post("/score", json={"profile_ids": gone}))
    assert scored["results"] == [] and set(scored["unknown_ids"]) == set(gone)
    timed = ok(http.post("/send_time", json={"profile_ids": [*gone, others[0]]}))
    assert not {r["profile_id"] for r in timed["results"]} & set(gone)
    audience = ok(http.post("/lookalike", json={"seed_ids": others, "reach": 0.5}))
    assert not {r["profile_id"] for r in audience["audience"]} & set(gone)
    as_seed = http.post("/lookalike", json={"seed_ids": [*gone, others[0]], "size": 10})
    assert set(ok(as_seed)["unknown_seed_ids"]) >= set(gone)
    everyone = {"all": [{"feature": "event_count_total", "op": ">=", "value": 0}]}
    preview = ok(http.post("/segments/preview", json={"rule": everyone, "sample": 1000}))
    assert not set(preview["sample_ids"]) & set(gone)
    assert set(gone) <= read_erasure_list(server.workdir)
