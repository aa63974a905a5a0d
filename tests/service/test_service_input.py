"""Hostile event batches over real HTTP: bad rows are quarantined with their reason, never a 500,
and no event moves the bundle's feature clock past the wall clock (issue 17).
"""

from __future__ import annotations

import json

import pandas as pd

from .conftest import Server, wait_applied


def test_out_of_bounds_future_and_non_finite_events_are_quarantined(server: Server) -> None:
    good_time = (server.as_of + pd.Timedelta(hours=2)).isoformat()
    seconds = int((server.as_of - pd.Timedelta(days=1)).timestamp())
    events = [
        {"event_time": "2500-01-01T00:00:00Z", "cookie_id": "ck-y2500", "event_type": "x"},
        {"event_time": "1500-01-01 00:00", "cookie_id": "ck-y1500", "event_type": "x"},
        {"event_time": "0001-01-01", "cookie_id": "ck-y0001", "event_type": "x"},
        {"event_time": "2200-01-01T00:00:00Z", "cookie_id": "ck-y2200", "event_type": "x"},
        {"event_time": seconds, "cookie_id": "ck-epoch", "event_type": "x"},
        {"event_time": good_time, "cookie_id": "ck-huge", "event_type": "purchase", "value": 1e308},
        {"event_time": good_time, "cookie_id": "ck-good", "event_type": "product_view"},
    ]
    inf = {"event_time": good_time, "cookie_id": "ck-inf", "event_type": "purchase", "value": 0}
    # 1e400 is valid JSON and reads as infinity: written as raw text
    body = json.dumps({"events": [*events, inf]}).replace('"value": 0}', '"value": 1e400}')
    with server.client() as http:
        response = http.post("/events", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 202, response.text
        receipt = response.json()
        expected = {
            "future_time": 2,
            "event_time_out_of_range": 2,
            "event_time_needs_time_unit": 1,
            "value_out_of_range": 1,
            "non_finite_value": 1,
        }
        # the receipt counts what the contract refuses; applying confirms it
        assert receipt["quarantined_by_reason"] == expected
        assert receipt["rows_received"] == 8 and receipt["rows_valid"] == 1
        report = wait_applied(http, receipt["status_url"])["refresh"]
        assert report["quarantined_by_reason"] == expected
        assert report["rows_received"] == 8 and report["rows_accepted"] == 1
        midnight_after = (server.as_of + pd.Timedelta(hours=2)).floor("D") + pd.Timedelta(days=1)
        assert pd.Timestamp(report["features_as_of"]) == midnight_after
        scored = http.post("/score", json={"profile_ids": ["anon:ck-good", "anon:ck-y2200"]})
        assert scored.status_code == 200, scored.text
        assert [r["profile_id"] for r in scored.json()["results"]] == ["anon:ck-good"]
        assert scored.json()["unknown_ids"] == ["anon:ck-y2200"]
