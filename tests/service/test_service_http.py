"""The service over real HTTP: answers, bad input, auth, consent and bundle reloads.

Uses the session server of ``conftest.py`` (a real ``bentoml serve`` on a trained demo world).
The reload tests move the ``bundle`` pointer and run last; they put it back when done.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pandas as pd
import pytest

from .conftest import CAPS, Server, copy_bundle, point_to


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    with server.client() as client:
        yield client


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def ids_of(rows: list[dict[str, Any]]) -> set[str]:
    return {row["profile_id"] for row in rows}


# ------------------------------------------------------------------------------------ auth


def test_health_and_metrics_are_open_everything_else_needs_the_token(server: Server) -> None:
    with server.client(token=None) as anon, server.client(token="wrong") as wrong:
        for path in ("/livez", "/readyz", "/healthz", "/metrics"):
            assert anon.get(path).status_code == 200, path
        for client in (anon, wrong):
            for method, path in [
                ("GET", "/info"),
                ("POST", "/score"),
                ("POST", "/lookalike"),
                ("POST", "/send_time"),
                ("POST", "/reload"),
            ]:
                response = client.request(method, path, json={"profile_ids": ["x"]})
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["field"] == "Authorization"


# ----------------------------------------------------------------------------------- answers


def test_info_names_the_live_bundle_and_its_metrics(server: Server, http: httpx.Client) -> None:
    from dmp_ml.bundle import live_bundle_path, read_manifest

    manifest = read_manifest(live_bundle_path(server.workdir), verify=False)
    info = ok(http.get("/info"))
    assert info["live"]["version"] == manifest["bundle_version"]
    assert info["live"]["path"] == str(live_bundle_path(server.workdir))
    assert pd.Timestamp(info["live"]["as_of"]) == server.as_of
    assert info["live"]["models"] == {"propensity": True, "send_time": True, "lookalike": True}
    assert info["manifest"]["libraries"]["lightgbm"]
    assert "metrics" in info["manifest"]["steps"]["propensity"]
    # what each guard chose, and against what, without digging through the manifest
    served = info["live"]["served"]
    assert {"propensity", "send_time"} <= set(served)
    for step in ("propensity", "send_time"):
        assert served[step]["served"] == manifest["steps"][step]["served"]
        assert "serving" in served[step]["comparison"]
    assert "files" not in info["manifest"] and "settings" not in info["manifest"]
    assert info["limits"]["max_score_ids"] == CAPS["max_score_ids"]
    # one OpenMP/BLAS thread per worker, seen from a request thread (no oversubscription)
    assert info["worker"]["threadpools"], info["worker"]
    assert set(info["worker"]["threadpools"].values()) == {1}, info["worker"]


def test_score_matches_the_library_and_reports_unknown_ids(
    server: Server, http: httpx.Client
) -> None:
    from dmp_ml.bundle import load_bundle

    wanted = server.consented[:30] + ["no-such-profile", server.consented[0]]
    body = ok(http.post("/score", json={"profile_ids": wanted}))
    assert body["model_version"] == ok(http.get("/info"))["live"]["version"]
    assert "no-such-profile" in body["unknown_ids"]
    assert ids_of(body["results"]) | set(body["unknown_ids"]) == set(wanted)
    assert len(body["results"]) >= 20 and len(ids_of(body["results"])) == len(body["results"])
    assert all("reasons" not in row for row in body["results"])

    expected = load_bundle(server.workdir).score(wanted).frame.set_index("profile_id")
    got = pd.DataFrame(body["results"]).set_index("profile_id")
    pd.testing.assert_series_equal(
        got["score"], expected["score"], check_dtype=False, check_index_type=False
    )
    pd.testing.assert_series_equal(
        got["percentile"], expected["percentile"], check_dtype=False, check_index_type=False
    )
    # each score says what it rests on
    for column in ("history_days", "events_used", "days_since_last_event"):
        pd.testing.assert_series_equal(
            got[column], expected[column], check_dtype=False, check_index_type=False
        )
    assert (got["events_used"] >= 1).all()

    explained = ok(http.post("/score", json={"profile_ids": wanted[:5], "explain": True}))
    assert all(row["reasons"] for row in explained["results"])


def test_lookalike_by_size_and_reach(server: Server, http: httpx.Client) -> None:
    seeds = server.consented[:150]
    exclude = server.consented[150:400]
    body = ok(
        http.post(
            "/lookalike",
            json={"seed_ids": [*seeds, "no-such-seed"], "size": 100, "exclude_ids": exclude},
        )
    )
    members = [row["profile_id"] for row in body["audience"]]
    assert len(members) == 100 == len(set(members)) == body["diagnostics"]["size"]
    assert not set(members) & (set(seeds) | set(exclude))
    scores = [row["score"] for row in body["audience"]]
    assert scores == sorted(scores, reverse=True)
    assert body["unknown_seed_ids"] == ["no-such-seed"]
    assert "distinguishing_features" not in body["diagnostics"]

    by_reach = ok(http.post("/lookalike", json={"seed_ids": seeds, "reach": 0.1, "explain": True}))
    population = by_reach["diagnostics"]["population"]
    assert abs(len(by_reach["audience"]) - 0.1 * population) <= 1
    assert "distinguishing_features" in by_reach["diagnostics"]


def test_send_time_respects_window_and_quiet_hours(server: Server, http: httpx.Client) -> None:
    wanted = server.consented[:25] + ["no-such-profile"]
    start = pd.Timestamp("2026-04-06T05:30:00Z")
    body = ok(
        http.post(
            "/send_time",
            json={
                "profile_ids": wanted,
                "window_start": start.isoformat(),
                "window_hours": 48,
                "quiet_hours": {"start": 21, "end": 8},
            },
        )
    )
    assert body["unknown_ids"] == ["no-such-profile"]
    assert pd.Timestamp(body["window_start"]) == start.ceil("h")
    assert len(body["results"]) == 25
    for row in body["results"]:
        assert row["basis"] in {"profile", "cohort", "global"}
        assert 0 <= row["hour_of_week"] < 168
        send_at = pd.Timestamp(row["send_at"])
        assert start <= send_at < start + pd.Timedelta(hours=48)
        local_hour = pd.Timestamp(row["local_send_at"]).hour
        assert 8 <= local_hour < 21, row
        for alt in row["alternatives"]:
            assert alt["probability"] <= row["probability"] + 1e-12


def test_unknown_ids_only_are_reported_not_an_error(http: httpx.Client) -> None:
    for path in ("/score", "/send_time"):
        body = ok(http.post(path, json={"profile_ids": ["ghost-1", "ghost-2", "ghost-1"]}))
        assert body["results"] == []
        assert body["unknown_ids"] == ["ghost-1", "ghost-2"]
    response = http.post("/lookalike", json={"seed_ids": ["ghost-1"], "size": 10})
    assert response.status_code == 422 and response.json()["field"] == "seed_ids"


@pytest.mark.parametrize("path", ["/score", "/send_time", "/lookalike"])
def test_consent_withdrawn_profiles_never_appear_in_an_answer(
    server: Server, http: httpx.Client, path: str
) -> None:
    withdrawn = server.withdrawn[: CAPS["max_score_ids"] - 10]
    assert len(withdrawn) >= 10, "the demo world should withdraw some consent"
    if path == "/lookalike":
        body = ok(
            http.post(path, json={"seed_ids": server.consented[:300] + withdrawn, "reach": 0.5})
        )
        assert not ids_of(body["audience"]) & set(server.withdrawn)
        assert set(withdrawn) <= set(body["unknown_seed_ids"])  # same as an unknown id
        return
    body = ok(http.post(path, json={"profile_ids": withdrawn + server.consented[:10]}))
    leaked = ids_of(body["results"]) & set(withdrawn)
    assert not leaked, f"{len(leaked)} consent-withdrawn profiles answered by {path}"
    assert set(withdrawn) <= set(body["unknown_ids"])  # same as an unknown id


# --------------------------------------------------------------------------------- bad input

OVER = CAPS["max_score_ids"] + 1
BAD = [
    ("/score", {}, "profile_ids"),
    ("/score", {"profile_ids": []}, "profile_ids"),
    ("/score", {"profile_ids": [f"p{i}" for i in range(OVER)]}, "profile_ids"),
    ("/score", {"profile_ids": "p1"}, "profile_ids"),
    ("/score", {"profile_ids": [1, 2]}, "profile_ids"),
    ("/score", {"profile_ids": [""]}, "profile_ids"),
    ("/score", {"profile_ids": ["a"], "explain": "yes"}, "explain"),
    ("/score", {"profile_ids": ["a"], "explian": True}, "explian"),
    ("/lookalike", {"seed_ids": ["a"], "size": 0}, "size"),
    ("/lookalike", {"seed_ids": ["a"], "size": -3}, "size"),
    ("/lookalike", {"seed_ids": ["a"], "size": 2.5}, "size"),
    ("/lookalike", {"seed_ids": ["a"]}, "size"),
    ("/lookalike", {"seed_ids": ["a"], "size": 10, "reach": 0.1}, "reach"),
    ("/lookalike", {"seed_ids": ["a"], "reach": 0}, "reach"),
    ("/lookalike", {"seed_ids": ["a"], "reach": 0.51}, "reach"),
    ("/lookalike", {"seed_ids": ["a"], "reach": "0.1"}, "reach"),
    ("/lookalike", {"seed_ids": [], "size": 10}, "seed_ids"),
    ("/lookalike", {"seed_ids": [f"s{i}" for i in range(601)], "size": 10}, "seed_ids"),
    ("/lookalike", {"seed_ids": ["a"], "size": 10, "exclude_ids": "b"}, "exclude_ids"),
    ("/send_time", {"profile_ids": [f"p{i}" for i in range(OVER)]}, "profile_ids"),
    ("/send_time", {"profile_ids": ["a"], "window_start": "next tuesday"}, "window_start"),
    ("/send_time", {"profile_ids": ["a"], "window_start": "3026-01-01T00:00:00Z"}, "window_start"),
    ("/send_time", {"profile_ids": ["a"], "window_hours": 0}, "window_hours"),
    ("/send_time", {"profile_ids": ["a"], "window_hours": 169}, "window_hours"),
    ("/send_time", {"profile_ids": ["a"], "window_hours": "24"}, "window_hours"),
    ("/send_time", {"profile_ids": ["a"], "quiet_hours": {"start": 22}}, "quiet_hours.end"),
    (
        "/send_time",
        {"profile_ids": ["a"], "quiet_hours": {"start": 24, "end": 7}},
        "quiet_hours.start",
    ),
    ("/send_time", {"profile_ids": ["a"], "quiet_hours": [22, 7]}, "quiet_hours"),
    ("/send_time", {"profile_ids": ["a"], "timezone": "Mars/Olympus_Mons"}, "timezone"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD, ids=[f"{p}:{f}" for p, _, f in BAD])
def test_bad_input_is_a_422_naming_the_field(
    server: Server, http: httpx.Client, path: str, body: dict, field: str
) -> None:
    if field == "timezone":  # checked by the library, so it needs a known profile
        body = {**body, "profile_ids": server.consented[:1]}
    response = http.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.text


def test_library_checked_quiet_hours_and_malformed_bodies(
    server: Server, http: httpx.Client
) -> None:
    same = {"profile_ids": server.consented[:1], "quiet_hours": {"start": 22, "end": 22}}
    response = http.post("/send_time", json=same)
    assert response.status_code == 422 and response.json()["field"] == "quiet_hours"
    response = http.post("/score", content=b'{"profile_ids": [', headers=_json_type)
    assert response.status_code == 422 and response.json()["field"] == "body"
    response = http.post("/score", data={"profile_ids": "a"})  # a form, not JSON
    assert response.status_code == 422 and "application/json" in response.json()["error"]
    assert http.get("/score").status_code == 405


_json_type = {"Content-Type": "application/json"}


def test_no_profile_id_reaches_the_server_log(server: Server, http: httpx.Client) -> None:
    marker = "pii-canary-7c1e"
    http.post("/score", json={"profile_ids": [marker, *server.consented[:3]]})
    http.post("/score", json={"profile_ids": [marker] * (OVER + 1)})
    http.post("/lookalike", json={"seed_ids": [marker], "size": 5})
    http.post("/send_time", json={"profile_ids": [marker], "window_hours": 0})
    time.sleep(0.3)
    log = server.log.read_text(errors="replace")
    assert marker not in log
    assert not any(pid in log for pid in server.consented[:3])


# ------------------------------------------------------------------------------------ reload


def _live_version(http: httpx.Client) -> str:
    return ok(http.get("/info"))["live"]["version"]


def test_reload_refuses_a_corrupt_bundle_and_keeps_serving(
    server: Server, http: httpx.Client
) -> None:
    from dmp_ml.bundle import live_bundle_path

    original_dir = live_bundle_path(server.workdir)
    original = _live_version(http)
    bad = copy_bundle(server.workdir, "corrupt-1")
    victim = next(p for p in sorted(bad.rglob("*.parquet")))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    try:
        point_to(server.workdir, bad)
        response = http.post("/reload")
        assert response.status_code == 409, response.text
        assert response.json()["live_version"] == original
        assert "corrupt" in response.json()["error"]
        time.sleep(1.2)  # the pointer watcher tries too, and refuses too
        info = ok(http.get("/info"))
        assert info["live"]["version"] == original
        assert info["worker"]["last_reload_error"]
        body = ok(http.post("/score", json={"profile_ids": server.consented[:5]}))
        assert body["model_version"] == original
    finally:
        point_to(server.workdir, original_dir)
    assert ok(http.post("/reload"))["version"] == original


def test_reload_swaps_a_good_bundle_in_without_failing_requests(
    server: Server, http: httpx.Client
) -> None:
    from dmp_ml.bundle import live_bundle_path

    original_dir = live_bundle_path(server.workdir)
    original = _live_version(http)
    good = copy_bundle(server.workdir, "good-2")
    ids = server.consented[:40]

    def ask(_: int) -> tuple[int, str]:
        r = http.post("/score", json={"profile_ids": ids})
        return r.status_code, r.json().get("model_version", "")

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            before = pool.map(ask, range(40))
            point_to(server.workdir, good)
            reload = ok(http.post("/reload"))
            after = pool.map(ask, range(40))
            answers = list(before) + list(after)
        assert reload["version"] == "good-2"
        assert {status for status, _ in answers} == {200}
        assert {version for _, version in answers} <= {original, "good-2"}
        assert _live_version(http) == "good-2"
        assert ok(http.post("/score", json={"profile_ids": ids}))["model_version"] == "good-2"
    finally:
        point_to(server.workdir, original_dir)
    # no /reload: the pointer watcher of the worker brings the original back
    deadline = time.monotonic() + 10
    while _live_version(http) != original:
        assert time.monotonic() < deadline, "the watcher did not follow the pointer"
        time.sleep(0.2)
