"""The workdir's event store: what a retrain adds, what a refresh reads, what forgetting removes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml import layout, store
from dmp_ml.codes import held_as_dictionary
from dmp_ml.errors import BundleError
from dmp_ml.rows import is_dictionary

T0 = pd.Timestamp("2026-03-02 09:00", tz="UTC")


def events(*rows: tuple[int, str | None, str | None, str, float | None]) -> pd.DataFrame:
    """Contract events from (hour after T0, cookie, profile, type, value) tuples."""
    return pd.DataFrame(
        {
            "event_time": [T0 + pd.Timedelta(hours=h) for h, *_ in rows],
            "cookie_id": pd.array([r[1] for r in rows], dtype="string"),
            "profile_id": pd.array([r[2] for r in rows], dtype="string"),
            "event_type": pd.array([r[3] for r in rows], dtype="string"),
            "value": [r[4] for r in rows],
        }
    )


def store_batch(workdir: Path, frame: pd.DataFrame, at: pd.Timestamp) -> Path:
    """An incoming batch as the near-real-time refresh stores it."""
    name = f"{store.new_batch_name(at)}.parquet"
    path = layout.incoming_dir(workdir) / name
    return store.write_parquet_atomic(frame, path)


TRAINING = events(
    (0, "c1", "p1", "page_view", None),
    (1, "c1", "p1", "purchase", 20.0),
    (2, "c2", None, "page_view", None),
)


def test_without_refresh_batches_training_input_is_unchanged(tmp_path: Path) -> None:
    assert store.merge_incoming(TRAINING, tmp_path) is TRAINING


def test_a_retrain_adds_refresh_events_the_export_lacks_and_never_doubles_one(
    tmp_path: Path,
) -> None:
    already = TRAINING.iloc[[1]]  # the export already holds this purchase
    fresh = events((5, "c3", "p3", "purchase", 12.5), (4, "c1", "p1", "page_view", None))
    store_batch(tmp_path, pd.concat([already, fresh], ignore_index=True), T0)
    merged = store.merge_incoming(TRAINING, tmp_path)
    assert len(merged) == len(TRAINING) + 2
    assert merged["event_time"].is_monotonic_increasing
    purchases = merged[merged["event_type"] == "purchase"]
    assert sorted(purchases["profile_id"]) == ["p1", "p3"]  # p1's purchase once, not twice
    assert list(merged.columns)[:4] == ["event_time", "cookie_id", "profile_id", "event_type"]


def held(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its text columns held as dictionaries, as ``train`` holds its log."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == "string":
            text = held_as_dictionary(out[column].array.__arrow_array__())
            out[column] = pd.Series(pd.arrays.ArrowExtensionArray(text))
    return out


def test_a_log_held_as_dictionaries_takes_refresh_batches_and_is_stored_as_text(
    tmp_path: Path,
) -> None:
    """A refresh batch's text (plain strings, new values) joins a log held as dictionaries
    with its values, not Python objects or NaN; the log stays dictionaries, and the history
    written from it is the very file its plain text gives."""
    fresh = events((5, "c3", "p3", "purchase", 12.5), (4, "c1", None, "add_to_cart", None))
    store_batch(tmp_path, fresh, T0)
    merged = store.merge_incoming(held(TRAINING), tmp_path)
    expected = store.merge_incoming(TRAINING, tmp_path)
    assert len(merged) == len(TRAINING) + 2
    assert all(is_dictionary(merged[c].dtype) for c in ("cookie_id", "profile_id", "event_type"))
    assert list(merged["event_type"]) == [
        "page_view",
        "purchase",
        "page_view",
        "add_to_cart",
        "purchase",
    ]
    pd.testing.assert_frame_equal(store.contract_frame(merged), store.contract_frame(expected))
    assert np.array_equal(store.row_keys(merged), store.row_keys(expected))
    for name, frame in (("held", merged), ("plain", expected)):
        store.record_training_events(tmp_path / name, frame, bundle_version="v")
    written = [layout.base_events(tmp_path / name).read_bytes() for name in ("held", "plain")]
    assert written[0] == written[1]


def test_recorded_training_events_are_the_refresh_history(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no event history"):
        store.history_events(tmp_path)
    store.record_training_events(tmp_path, TRAINING, bundle_version="v1")
    assert store.history_version(tmp_path) == "v1"
    history = store.history_events(tmp_path)
    assert len(history) == len(TRAINING)
    later = store_batch(tmp_path, events((9, "c4", "p4", "purchase", 3.0)), T0)
    assert store.unmerged_batches(tmp_path) == [later]
    assert len(store.history_events(tmp_path)) == len(TRAINING) + 1


def test_a_batch_counts_as_merged_only_when_the_training_held_all_of_it(tmp_path: Path) -> None:
    held = store_batch(tmp_path, TRAINING.iloc[[0, 1]], T0)
    partly = store_batch(
        tmp_path, pd.concat([TRAINING.iloc[[2]], events((7, "c9", "p9", "page_view", None))]), T0
    )
    store.record_training_events(tmp_path, TRAINING, bundle_version="v2")
    assert store.unmerged_batches(tmp_path) == [partly]
    assert held not in store.unmerged_batches(tmp_path)
    # the batch that arrived while training ran stays in the history, once
    history = store.history_events(tmp_path)
    assert (history["profile_id"] == "p9").sum() == 1


def test_erased_profiles_never_enter_the_history(tmp_path: Path) -> None:
    store.record_training_events(tmp_path, TRAINING, erased=["p1"], bundle_version="v3")
    history = store.history_events(tmp_path)
    assert not history["profile_id"].isin(["p1"]).any()
    assert list(history["cookie_id"]) == ["c2"]


def test_forgetting_scrubs_a_profile_and_its_cookies_from_every_event_file(
    tmp_path: Path,
) -> None:
    store.record_training_events(tmp_path, TRAINING, bundle_version="v4")
    # an anonymous event on p1's cookie, stored later, goes too: the cookie is p1's
    batch = store_batch(
        tmp_path, events((8, "c1", None, "page_view", None), (8, "c5", "p5", "purchase", 1.0)), T0
    )
    removed, cookies, unreadable = store.purge_event_files(tmp_path, ["p1"])
    assert unreadable == {}
    assert "c1" in cookies
    assert sum(removed.values()) == 3
    remaining = store.history_events(tmp_path)
    assert not remaining["profile_id"].isin(["p1"]).any()
    assert not remaining["cookie_id"].isin(["c1"]).any()
    assert list(store.read_events_file(batch)["profile_id"]) == ["p5"]


def test_half_written_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    store.record_training_events(tmp_path, TRAINING, bundle_version="v5")
    stale = layout.incoming_dir(tmp_path) / ".batch.parquet.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"partial")
    removed = store.remove_stale_temp_files(tmp_path)
    assert removed == [str(stale.relative_to(tmp_path))]
    assert not stale.exists()
    assert layout.base_events(tmp_path).exists()
