"""Activation exports: hashed e-mails, send times, and never a profile without consent."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from dmp_ml import activation
from dmp_ml.activation import (
    SendTimeOptions,
    export_audience,
    export_frame,
    hash_emails,
    resolve_audience,
)
from dmp_ml.bundle import ModelBundle, load_bundle
from dmp_ml.demo import DemoWorld
from dmp_ml.erasure import ERASURE_FILE, add_to_erasure_list
from dmp_ml.errors import RequestError
from dmp_ml.identity import latest_consent

# ------------------------------------------------------------------ fixtures
# (demo_world, trained_workdir and copy_workdir are shared: tests/conftest.py)


@pytest.fixture(scope="module")
def workdir(
    trained_workdir: Path,
    copy_workdir: Callable[[Path, Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """This module's copy of the shared workdir (a test edits its erasure list)."""
    return copy_workdir(trained_workdir, tmp_path_factory.mktemp("activation") / "w")


@pytest.fixture(scope="module")
def bundle(workdir: Path) -> ModelBundle:
    return load_bundle(workdir)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ tests


def test_hash_emails_normalises_and_skips_missing() -> None:
    profiles = pd.DataFrame(
        {
            "profile_id": ["a", "b", "c", "d", "a"],
            "email": [" User@Example.COM ", "user@example.com", None, "  ", "other@x.org"],
        }
    )
    out = hash_emails(profiles)
    assert list(out["profile_id"]) == ["a", "b"]
    assert list(out["email_sha256"]) == [sha("user@example.com")] * 2
    assert hash_emails(profiles.drop(columns="email")).empty


def test_the_bundle_carries_hashes_never_addresses(bundle: ModelBundle) -> None:
    contacts = pd.read_parquet(bundle.path / activation.CONTACTS_FILE)
    assert list(contacts.columns) == ["profile_id", "email_sha256"]
    assert contacts["email_sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    frame = bundle.features.frame
    assert "email" not in frame.columns
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            assert not any("@" in str(level) for level in frame[column].cat.categories)
    assert set(contacts["profile_id"]) <= set(bundle.features.frame.index)


def test_segment_export_to_csv_has_the_destination_columns(
    bundle: ModelBundle, demo_world: DemoWorld, tmp_path: Path
) -> None:
    rule = {"feature": "purchase_count_total", "op": ">=", "value": 1}
    path = tmp_path / "buyers.csv"
    report = export_audience(bundle, activation.segment_audience(bundle, rule), path)
    text = path.read_text()
    frame = pd.read_csv(path, dtype={"profile_id": str, "email_sha256": str})
    assert report.rows == len(frame) > 0 and report.format == "csv"
    assert list(frame.columns) == [
        "profile_id",
        "email_sha256",
        "propensity_score",
        "propensity_percentile",
    ]
    assert "@" not in text
    emails = demo_world.profiles.set_index("profile_id")["email"]
    known = frame["profile_id"].isin(emails.index)
    assert known.any()
    addresses = emails.loc[frame.loc[known, "profile_id"]]
    expected = [None if pd.isna(e) else sha(e.strip().lower()) for e in addresses]
    got = [None if pd.isna(h) else h for h in frame.loc[known, "email_sha256"]]
    assert got == expected and any(expected)
    assert frame["propensity_score"].between(0, 1).all()


def test_lookalike_export_to_parquet_with_send_times(bundle: ModelBundle, tmp_path: Path) -> None:
    seeds = list(bundle.features.frame.index[:40])
    audience = bundle.lookalike(seeds, size=60)
    window = SendTimeOptions(window_start=bundle.as_of, window_hours=48, quiet_hours=(22, 7))
    path = tmp_path / "lookalike.parquet"
    report = export_audience(bundle, audience, path, send_time=window)
    frame = pd.read_parquet(path)
    assert report.rows == len(frame) == 60 and report.format == "parquet"
    assert {"lookalike_score", "rank", "send_at", "email_sha256"} <= set(frame.columns)
    assert list(frame["profile_id"]) == list(audience.frame["profile_id"])
    assert list(frame["rank"]) == list(range(1, 61))
    sent = frame["send_at"].dropna()
    assert len(sent) == 60 - report.send_at_missing > 0
    assert (sent >= bundle.as_of).all() and (sent < bundle.as_of + pd.Timedelta(hours=48)).all()
    assert not set(frame["profile_id"]) & set(seeds)


def test_score_threshold_audience_is_best_first(bundle: ModelBundle) -> None:
    audience = resolve_audience(bundle, min_percentile=50, top=30)
    frame, report = export_frame(bundle, audience)
    assert len(frame) == report.rows == 30
    assert frame["propensity_percentile"].is_monotonic_decreasing
    assert (frame["propensity_percentile"] >= 50).all()
    assert list(frame["rank"]) == list(range(1, 31))
    with pytest.raises(RequestError, match="exactly one"):
        resolve_audience(bundle, min_score=0.5, segment={"segment": "x"})
    with pytest.raises(RequestError) as caught:
        export_audience(bundle, audience, Path("audience.xlsx"))
    assert caught.value.field == "out"


def test_exports_never_hold_non_consented_unknown_or_erased_profiles(
    bundle: ModelBundle, demo_world: DemoWorld, workdir: Path, tmp_path: Path
) -> None:
    withdrawn, _ = latest_consent(demo_world.consent, "marketing")
    withdrawn = [p for p in withdrawn if p in set(demo_world.events["profile_id"].dropna())]
    assert withdrawn, "the demo world should have a withdrawn profile with events"
    with_email = set(demo_world.profiles.loc[demo_world.profiles["email"].notna(), "profile_id"])
    live = [p for p in bundle.features.frame.index if p in with_email][:5]
    anonymous = [p for p in bundle.features.frame.index if p.startswith("anon:")][:1]
    add_to_erasure_list(workdir, [live[0]])
    try:
        ids = [withdrawn[0], "nobody", *live, *anonymous]
        path = tmp_path / "mixed.csv"
        report = export_audience(bundle, ids, path, require_email=True)
        frame = pd.read_csv(path, dtype=str)
        assert withdrawn[0] not in set(frame["profile_id"])
        assert live[0] not in set(frame["profile_id"])
        assert report.dropped_not_eligible == 2  # no consent, unknown
        assert report.dropped_erased == 1
        assert report.dropped_without_email == len(anonymous) == 1
        assert list(frame["profile_id"]) == live[1:]
        assert frame["email_sha256"].notna().all()
    finally:
        (workdir / ERASURE_FILE).unlink()
