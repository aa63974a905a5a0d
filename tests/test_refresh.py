"""Near-real-time refresh: a batch of events updates the affected profiles everywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dmp_ml import activation, layout, pipeline, refresh, store
from dmp_ml.bundle import ModelBundle, load_bundle
from dmp_ml.demo import DemoWorld
from dmp_ml.erasure import forget, read_erasure_list
from dmp_ml.errors import RequestError
from dmp_ml.identity import latest_consent
from dmp_ml.refresh import Refresher, RefreshReport, apply_events
from dmp_ml.segments import evaluate
from dmp_ml.settings import Settings

# ------------------------------------------------------------------ fixtures
# (demo_world, trained_workdir, copy_workdir and train_settings are shared: tests/conftest.py)

CopyWorkdir = Callable[[Path, Path], Path]
# train's own features step and nothing else: enough to compare features, and fast
FEATURES_ONLY = tuple(step for step in pipeline.STEPS if step[0] == "features")


@dataclass
class Applied:
    workdir: Path
    before: ModelBundle
    after: ModelBundle
    report: RefreshReport
    batch: list[dict[str, Any]]
    new_profiles: pd.DataFrame
    known: str  # a known profile with new events
    linker: str  # a known profile whose new event carries an anonymous profile's cookie
    folded: str  # that anonymous profile


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat()


@pytest.fixture(scope="module")
def applied(
    trained_workdir: Path,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    tmp_path_factory: pytest.TempPathFactory,
) -> Applied:
    workdir = copy_workdir(trained_workdir, tmp_path_factory.mktemp("refresh") / "w")
    before = load_bundle(workdir)
    frame = before.features.frame
    known_ids = [p for p in frame.index if not p.startswith("anon:")]
    counts = frame.loc[known_ids, "event_count_30d"].sort_values(ascending=False, kind="stable")
    known, linker = str(counts.index[0]), str(counts.index[1])
    folded = next(p for p in frame.index if p.startswith("anon:"))
    cookie = folded.removeprefix("anon:")
    t = before.as_of
    category = str(demo_world.events["category"].dropna().iloc[0])
    good = [
        {
            "event_time": _iso(t + pd.Timedelta(hours=1)),
            "profile_id": known,
            "event_type": "purchase",
            "channel": "web",
            "category": category,
            "value": "19.90",
        },
        {
            "event_time": _iso(t + pd.Timedelta(hours=2)),
            "profile_id": known,
            "event_type": "page_view",
            "channel": "web",
        },
        {
            "event_time": _iso(t + pd.Timedelta(hours=3)),
            "cookie_id": "ck-new-1",
            "event_type": "page_view",
            "channel": "web",
        },
        {
            "event_time": _iso(t + pd.Timedelta(hours=4)),
            "profile_id": "p-new-1",
            "cookie_id": "ck-new-2",
            "event_type": "product_view",
            "channel": "app",
        },
        {
            "event_time": _iso(t + pd.Timedelta(hours=4, minutes=5)),
            "profile_id": "p-new-1",
            "cookie_id": "ck-new-2",
            "event_type": "add_to_cart",
            "channel": "app",
        },
        {
            "event_time": _iso(t + pd.Timedelta(hours=5)),
            "profile_id": linker,
            "cookie_id": cookie,
            "event_type": "page_view",
            "channel": "web",
        },
    ]
    bad = [
        {"event_time": _iso(t), "profile_id": known, "event_type": None},
        {"event_time": "yesterday-ish", "profile_id": known, "event_type": "page_view"},
        {
            "event_time": _iso(t),
            "profile_id": known,
            "event_type": "page_view",
            "source": "fourth_party",
        },
        {"event_time": _iso(t), "profile_id": known, "event_type": "purchase", "value": "a lot"},
        {"event_time": _iso(t), "event_type": "page_view"},
        dict(good[0]),  # an exact duplicate inside the batch
    ]
    new_profiles = pd.DataFrame(
        {"profile_id": ["p-new-1"], "timezone": ["Europe/Berlin"], "country": ["DE"]}
    )
    report = apply_events(workdir, good + bad, profiles=new_profiles)
    return Applied(
        workdir,
        before,
        load_bundle(workdir),
        report,
        good + bad,
        new_profiles,
        known,
        linker,
        folded,
    )


# ------------------------------------------------------------------ tests


def test_bad_rows_are_quarantined_with_reasons_and_never_lost(applied: Applied) -> None:
    r = applied.report
    assert r.rows_received == len(applied.batch) == 12
    assert r.rows_received == r.rows_accepted + r.rows_quarantined + r.rows_erased
    assert r.rows_accepted == 6
    assert r.quarantined_by_reason == {
        "duplicate_event": 1,
        "invalid_event_time": 1,
        "missing_event_type": 1,
        "missing_id": 1,
        "non_numeric_value": 1,
        "unknown_source": 1,
    }
    quarantine = pd.read_parquet(r.quarantine_path)
    assert len(quarantine) == 6 and quarantine["reason"].notna().all()
    assert "yesterday-ish" in set(quarantine["event_time"].astype(str))
    stored = pd.read_parquet(r.stored_path)
    assert len(stored) == 6
    history = store.history_events(applied.workdir)
    base = pd.read_parquet(layout.base_events(applied.workdir))
    assert len(history) == len(base) + 6
    assert r.bundle_version == applied.after.version


def test_an_existing_profile_is_updated_in_every_store(applied: Applied) -> None:
    before, after, p = applied.before, applied.after, applied.known
    old, new = before.features.frame.loc[p], after.features.frame.loc[p]
    # totals do not depend on the cutoff (windowed counts moved with it by a day)
    assert new["purchase_count_total"] == old["purchase_count_total"] + 1
    assert new["event_count_total"] == old["event_count_total"] + 2
    assert new["value_sum_total"] == pytest.approx(old["value_sum_total"] + 19.90)
    assert new["days_since_purchase"] < 1
    assert after.propensity is not None and after.scores is not None
    expected = after.propensity.predict_proba(after.features.frame.loc[[p]])[0]
    assert after.score([p]).frame["score"].iloc[0] == pytest.approx(expected)
    st_before, st_after = before.send_time_model, after.send_time_model
    assert st_before is not None and st_after is not None
    i, j = st_before.profile_ids_.get_loc(p), st_after.profile_ids_.get_loc(p)
    assert st_after.n_engagement_hours_[j] > st_before.n_engagement_hours_[i]
    assert not after.send_time([p]).unknown_ids
    model = after.lookalike_model
    assert model is not None
    row = model.profile_ids_.get_loc(p)
    vector = model.embedder_.transform(after.features.frame.loc[[p]])[0]
    np.testing.assert_allclose(model.vectors_[row], vector, atol=1e-6)
    _, found = model.index_.search(vector[None, :], 1)
    assert found[0, 0] == row
    refreshed = pd.read_parquet(after.path / refresh.REFRESHED_FILE)
    assert p in set(refreshed["profile_id"])
    assert str(refreshed["features_as_of"].max().isoformat()) == applied.report.features_as_of


def test_new_cookies_and_profiles_appear_as_new_profiles(applied: Applied) -> None:
    after = applied.after
    new = ["anon:ck-new-1", "p-new-1"]
    assert sorted(applied.report.created_ids) == sorted(new)
    assert not after.score(new).unknown_ids
    decision = after.send_time(new)
    assert not decision.unknown_ids
    berlin = decision.frame.set_index("profile_id").loc["p-new-1", "timezone"]
    assert berlin == "Europe/Berlin"
    assert after.features.frame.loc["p-new-1", "country"] == "DE"
    assert after.features.frame.loc["p-new-1", "add_to_cart_count_7d"] == 1
    assert after.lookalike(new, size=5).diagnostics["seeds_matched"] == 2
    carts = evaluate({"feature": "add_to_cart_count_7d", "op": ">=", "value": 1}, after)
    assert "p-new-1" in carts
    assert after.features.cookie_map is not None
    assert after.features.cookie_map.loc["ck-new-2"] == "p-new-1"
    frame, _ = activation.export_frame(after, new)
    assert list(frame["profile_id"]) == new


def test_a_linked_cookie_folds_its_anonymous_profile_into_the_known_one(applied: Applied) -> None:
    before, after = applied.before, applied.after
    assert applied.report.profiles_removed == 1
    assert applied.folded in before.features.frame.index
    assert applied.folded not in after.features.frame.index
    assert after.score([applied.folded]).unknown_ids == [applied.folded]
    assert after.send_time([applied.folded, applied.linker]).unknown_ids == [applied.folded]
    old = before.features.frame.loc[applied.linker, "n_cookies"]
    assert after.features.frame.loc[applied.linker, "n_cookies"] == old + 1
    assert after.features.cookie_map is not None
    assert after.features.cookie_map.loc[applied.folded.removeprefix("anon:")] == applied.linker


@pytest.mark.slow
def test_a_full_train_on_the_same_events_gives_the_same_features(
    applied: Applied,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    train_settings: Settings,
    tmp_path: Path,
) -> None:
    workdir = copy_workdir(applied.workdir, tmp_path / "w")
    profiles = pd.concat([demo_world.profiles, applied.new_profiles], ignore_index=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "STEPS", FEATURES_ONLY)
        result = pipeline.train(  # merges the stored batch into the export, as train always does
            demo_world.events,
            "end",
            workdir,
            profiles=profiles,
            consent=demo_world.consent,
            settings=train_settings,
        )
    assert result.manifest["as_of"] == applied.report.features_as_of
    retrained = load_bundle(workdir).features
    refreshed = applied.after.features
    ids = [applied.known, applied.linker, "anon:ck-new-1", "p-new-1"]
    a, b = refreshed.frame.loc[ids], retrained.frame.loc[ids]
    assert list(a.columns) == list(b.columns)
    population_prior = {"email_open_rate_smoothed", "email_click_rate_smoothed"}
    for column in a.columns:
        if isinstance(a[column].dtype, pd.CategoricalDtype):
            assert a[column].astype(str).tolist() == b[column].astype(str).tolist(), column
        else:
            atol = 0.02 if column in population_prior else 1e-9
            np.testing.assert_allclose(a[column], b[column], rtol=1e-9, atol=atol, err_msg=column)
    rows_a = refreshed.frame.index.get_indexer(ids)
    rows_b = retrained.frame.index.get_indexer(ids)
    np.testing.assert_array_equal(refreshed.hour_of_week[rows_a], retrained.hour_of_week[rows_b])
    assert applied.folded not in retrained.frame.index


def test_a_retried_batch_changes_nothing(
    applied: Applied, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(applied.workdir, tmp_path / "w")
    report = apply_events(workdir, applied.batch, profiles=applied.new_profiles)
    assert report.rows_accepted == 0
    assert report.quarantined_by_reason["duplicate_event"] == 7
    assert report.bundle_version == applied.after.version
    assert load_bundle(workdir).version == applied.after.version


@pytest.mark.slow
def test_forgotten_and_withdrawn_profiles_stay_out(
    applied: Applied, demo_world: DemoWorld, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(applied.workdir, tmp_path / "w")
    forget(workdir, [applied.known])
    withdrawn, _ = latest_consent(demo_world.consent, "marketing")
    withdrawn = [p for p in withdrawn if p in set(demo_world.events["profile_id"].dropna())][:1]
    assert withdrawn
    t = applied.before.as_of + pd.Timedelta(hours=8)
    cookie_map = applied.before.features.cookie_map
    assert cookie_map is not None
    device = str(cookie_map.index[cookie_map == applied.known][0])
    batch = [
        {"event_time": _iso(t), "profile_id": applied.known, "event_type": "purchase"},
        {"event_time": _iso(t), "cookie_id": device, "event_type": "page_view"},
        {"event_time": _iso(t), "profile_id": withdrawn[0], "event_type": "purchase"},
        {"event_time": _iso(t), "profile_id": applied.linker, "event_type": "purchase"},
    ]
    refresher = Refresher(workdir)
    report = refresher.apply(batch)
    assert report.rows_erased == 2 and report.rows_accepted == 2
    assert report.profiles_updated == 1 and report.profiles_created == 0
    after = load_bundle(workdir)
    for gone in (applied.known, withdrawn[0], f"anon:{device}"):
        assert gone not in after.features.frame.index
        assert after.score([gone]).unknown_ids == [gone]
    stored = pd.read_parquet(report.stored_path)
    assert applied.known not in set(stored["profile_id"])
    # the same refresher sees a later erasure by another writer
    forget(workdir, [applied.linker])
    later = refresher.apply(
        [{"event_time": _iso(t), "profile_id": "p-new-1", "event_type": "page_view"}]
    )
    assert later.profiles_updated == 1
    final = load_bundle(workdir)
    assert applied.linker not in final.features.frame.index
    assert "p-new-1" in final.features.frame.index
    assert {applied.known, applied.linker} <= read_erasure_list(workdir)


def test_a_batch_that_is_not_a_list_of_events_is_refused(applied: Applied) -> None:
    for bad, field in (([], "events"), ({"events": []}, "events"), ([1, 2], "events[0]")):
        with pytest.raises(RequestError) as caught:
            apply_events(applied.workdir, bad)  # type: ignore[arg-type]
        assert caught.value.field == field


@pytest.mark.slow
def test_batches_stored_while_a_train_ran_are_reapplied_to_its_bundle(
    applied: Applied,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    train_settings: Settings,
    tmp_path: Path,
) -> None:
    workdir = copy_workdir(applied.workdir, tmp_path / "w")
    # a train that read its input before the batch was stored: the batch is not in it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "STEPS", FEATURES_ONLY)
        mp.setattr(pipeline, "merge_incoming", lambda events, workdir: events)
        pipeline.train(  # records these events (without the batch) as its training events
            demo_world.events,
            "end",
            workdir,
            profiles=demo_world.profiles,
            consent=demo_world.consent,
            settings=train_settings,
        )
    assert [p.name for p in store.unmerged_batches(workdir)] == [
        Path(applied.report.stored_path).name
    ]
    trained_only = load_bundle(workdir)
    assert "p-new-1" not in trained_only.features.frame.index
    report = Refresher(workdir).catch_up()
    assert report is not None and report.profiles_created >= 2
    caught_up = load_bundle(workdir)
    for profile in ("p-new-1", "anon:ck-new-1", applied.known):
        assert profile in caught_up.features.frame.index
    known = caught_up.features.frame.loc[applied.known, "purchase_count_total"]
    assert known == applied.after.features.frame.loc[applied.known, "purchase_count_total"]
    assert Refresher(workdir).catch_up() is None  # nothing pending any more


def test_a_refresh_that_failed_midway_is_repaired_by_the_next_one(
    applied: Applied, copy_workdir: CopyWorkdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = copy_workdir(applied.workdir, tmp_path / "w")
    refresher = Refresher(workdir)
    t = applied.before.as_of + pd.Timedelta(hours=9)

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full")

    # loaded before the publish breaks: features and scores are edited in memory by then
    assert refresher.catch_up() is None
    monkeypatch.setattr(store, "publish_delta", broken)
    monkeypatch.setattr(store, "republish", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        refresher.apply([{"event_time": _iso(t), "profile_id": "p-new-2", "event_type": "x"}])
    monkeypatch.undo()
    assert load_bundle(workdir).version == applied.after.version  # nothing half-published
    report = refresher.apply(
        [{"event_time": _iso(t), "profile_id": applied.linker, "event_type": "page_view"}]
    )
    assert report.profiles_created == 1 and report.profiles_updated == 1
    assert "p-new-2" in load_bundle(workdir).features.frame.index
