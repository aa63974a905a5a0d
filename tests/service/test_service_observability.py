"""What operators read over HTTP: the service's own /metrics, and one public API description.

Runs its own server on a copy of the trained workdir: it moves the bundle pointer and counts
requests, which the shared session server's other tests would disturb.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import TOKEN, copy_bundle, point_to, start_server, stop_server


@pytest.fixture(scope="module")
def own(
    trained: tuple[Path, Path, pd.Timestamp, dict],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, list[str]]]:
    import shutil

    workdir = tmp_path_factory.mktemp("observability") / "W"
    shutil.copytree(trained[0], workdir, symlinks=True)
    withdrawn = set(trained[3]["withdrawn"])
    people = [p for p in trained[3]["with_events"] if p not in withdrawn][:5]
    proc, url, _ = start_server(workdir)
    try:
        yield url, workdir, people
    finally:
        stop_server(proc)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` without a token: {(sample name, sorted labels without pid): value}."""
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            out[sample.name, labels] = out.get((sample.name, labels), 0.0) + sample.value
    return out


def requests(values: dict, endpoint: str, outcome: str) -> float:
    return values.get(
        ("dmp_ml_requests_total", (("endpoint", endpoint), ("outcome", outcome))), 0.0
    )


def live_version(http: httpx.Client) -> str:
    return http.get("/info").json()["live"]["version"]


def test_metrics_show_the_bundle_its_age_reloads_and_requests(
    own: tuple[str, Path, list[str]],
) -> None:
    url, workdir, people = own
    from dmp_ml.bundle import live_bundle_path

    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    ) as http:
        original = live_version(http)
        first = scrape(url)
        assert first["dmp_ml_bundle_info", (("version", original),)] == 1
        age = first["dmp_ml_bundle_age_seconds", ()]
        assert 0 < age < 3600  # trained minutes ago, in this session

        # requests by endpoint and outcome: 3 answered, 2 refused as invalid, 1 without token
        for _ in range(3):
            assert http.post("/score", json={"profile_ids": people}).status_code == 200
        for _ in range(2):
            assert http.post("/score", json={"profile_ids": []}).status_code == 422
        assert httpx.get(f"{url}/info").status_code == 401
        counted = scrape(url)
        for endpoint, outcome, added in [
            ("/score", "ok", 3),
            ("/score", "client_error", 2),
            ("/info", "client_error", 1),
        ]:
            before = requests(first, endpoint, outcome)
            assert requests(counted, endpoint, outcome) == before + added, (endpoint, outcome)
        assert counted["dmp_ml_bundle_age_seconds", ()] >= age

        # a refused bundle: a failure counted, the old one still reported live
        original_dir = live_bundle_path(workdir)
        bad = copy_bundle(workdir, "corrupt-m")
        victim = next(p for p in sorted(bad.rglob("*.parquet")))
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        good = copy_bundle(workdir, "good-m")
        try:
            point_to(workdir, bad)
            assert http.post("/reload").status_code == 409
            refused = scrape(url)
            assert refused["dmp_ml_bundle_reload_failures_total", ()] >= 1
            assert refused["dmp_ml_bundle_info", (("version", original),)] == 1
            reloads = refused.get(("dmp_ml_bundle_reloads_total", ()), 0.0)

            # a good one: one reload more, the new version live, the old one 0
            point_to(workdir, good)
            assert http.post("/reload").json()["version"] == "good-m"
            swapped = scrape(url)
            assert swapped["dmp_ml_bundle_reloads_total", ()] == reloads + 1
            assert swapped["dmp_ml_bundle_info", (("version", "good-m"),)] == 1
            assert swapped["dmp_ml_bundle_info", (("version", original),)] == 0
            assert requests(swapped, "/reload", "ok") >= 1
            assert requests(swapped, "/reload", "client_error") >= 1
        finally:
            point_to(workdir, original_dir)
        assert http.post("/reload").json()["version"] == original


def test_one_public_schema_and_api_page_while_the_routes_keep_the_token(
    own: tuple[str, Path, list[str]],
) -> None:
    url, _, people = own
    with httpx.Client(base_url=url, timeout=60) as anon:
        docs, openapi = anon.get("/docs.json"), anon.get("/openapi.json")
        assert docs.status_code == openapi.status_code == 200
        assert docs.json() == openapi.json()
        schema = docs.json()
        assert schema["info"]["title"] == "dmp-ml"
        assert {"/score", "/lookalike", "/send_time", "/info", "/reload"} <= set(schema["paths"])
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        page = anon.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "static_content/swagger-initializer.js" in page.text
        assert "docs.json" in anon.get("/static_content/swagger-initializer.js").text
        # the API itself stays closed
        for method, path in [("POST", "/score"), ("GET", "/info"), ("POST", "/reload")]:
            response = anon.request(method, path, json={"profile_ids": people})
            assert response.status_code == 401, (method, path)
