"""Display, retargeting and campaign endpoints over real HTTP (the session server)."""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd
import pytest

from dmp_ml.bundle import load_bundle
from dmp_ml.campaigns import campaign_report, load_campaign
from dmp_ml.models.affinity import profile_affinity
from dmp_ml.retargeting import retarget

from .conftest import Server


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    with server.client() as client:
        yield client


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()


def test_affinity_per_profile(server: Server, http: httpx.Client) -> None:
    known = server.consented[:5]
    withdrawn = server.withdrawn[:2]
    body = ok(http.post("/affinity", json={"profile_ids": [*known, *withdrawn, "nobody"]}))
    assert {r["profile_id"] for r in body["results"]} <= set(known)
    assert set(withdrawn) | {"nobody"} <= set(body["unknown_ids"])
    frame, _ = profile_affinity(load_bundle(server.workdir), known, top=3)
    expected = {r.profile_id: r for r in frame.itertuples()}
    for row in body["results"]:
        assert sum(row["channels"].values()) == pytest.approx(1.0, abs=1e-3)
        assert row["preferred_channel"] == max(row["channels"], key=row["channels"].get)
        assert len(row["top_categories"]) <= 3
        assert row["top_categories"] == expected[row["profile_id"]].top_categories
    bad = http.post("/affinity", json={"profile_ids": known, "top": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "top"


def test_segment_affinity_from_a_rule_and_from_seeds(server: Server, http: httpx.Client) -> None:
    rule = {"all": [{"feature": "purchase_count_total", "op": ">=", "value": 1}]}
    body = ok(http.post("/segments/affinity", json={"rule": rule, "top": 3}))
    assert body["size"] > 50 and len(body["top_categories"]) <= 3
    assert all(c["profiles"] >= body["min_profiles_per_category"] for c in body["top_categories"])
    assert sum(c["share"] for c in body["channels"]) == pytest.approx(1.0, abs=1e-3)
    assert [h["hour"] for h in body["best_hours"]["hours"]]
    seeds = ok(
        http.post("/segments/affinity", json={"seed_ids": server.consented[:60], "size": 200})
    )
    assert seeds["size"] == 200
    nobody = http.post("/segments/affinity", json={"seed_ids": ["nobody", "no-one"]})
    assert nobody.status_code == 422 and nobody.json()["field"] == "seed_ids"
    both = http.post("/segments/affinity", json={"rule": rule, "segment": "x"})
    assert both.status_code == 422 and both.json()["field"] == "audience"


def test_retarget_matches_the_library(server: Server, http: httpx.Client) -> None:
    params = {"days": 14, "max_impressions": 3}
    body = ok(
        http.post(
            "/retarget",
            json={"template": "cart_abandoners", "params": params, "rank_by_propensity": True},
        )
    )
    expected = retarget(
        load_bundle(server.workdir), "cart_abandoners", params, rank_by_propensity=True
    )
    assert body["size"] == len(expected) > 0
    assert [r["profile_id"] for r in body["results"]] == expected["profile_id"].tolist()
    assert not {r["profile_id"] for r in body["results"]} & set(server.withdrawn)
    bad = http.post("/retarget", json={"template": "cart_abandoners", "params": {"days": -1}})
    assert bad.status_code == 422 and bad.json()["field"] == "params.days"
    typo = http.post("/retarget", json={"template": "cart_abandoner"})
    assert typo.status_code == 422 and "cart_abandoners" in typo.json()["error"]


def test_campaign_create_and_readout(server: Server, http: httpx.Client) -> None:
    launch = (server.as_of - pd.Timedelta(days=30)).isoformat()
    rule = {"all": [{"feature": "event_count_90d", "op": ">=", "value": 1}]}
    request = {"name": "http-spring", "audience": {"rule": rule}, "holdout": 0.3, "launch": launch}
    created = ok(http.post("/campaigns", json=request), status=201)
    stored = load_campaign(server.workdir, "http-spring")
    assert created["treated"] + created["holdout_profiles"] == len(stored.members) > 100
    assert created["audience"] == {"rule": rule}
    again = http.post("/campaigns", json=request)
    assert again.status_code == 422 and again.json()["field"] == "name"
    bad = http.post("/campaigns", json={**request, "name": "x2", "holdout": 1.5})
    assert bad.status_code == 422 and bad.json()["field"] == "holdout"

    report = ok(http.get("/campaigns/http-spring"))
    expected = campaign_report(server.workdir, "http-spring", bundle=load_bundle(server.workdir))
    for key in ("treated", "holdout", "absolute_lift", "relative_lift", "verdict"):
        assert report[key] == expected[key], key
    assert report["days_so_far"] == 30 and report["horizon_complete"]
    low, high = report["absolute_lift"]["interval_95"]
    assert low <= report["absolute_lift"]["estimate"] <= high
    assert report["minimum_detectable_effect"]["absolute"] > 0
    assert http.get("/campaigns/nothing-here").status_code == 404
    broken = http.get("/campaigns/a%0Ab")  # never reaches the router: still JSON naming the field
    assert broken.status_code == 422 and broken.json()["field"] == "name"
