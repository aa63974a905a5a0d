"""A refresh writes a delta of the touched profiles' rows next to the base bundle: loading
overlays it, what a batch writes does not grow with the population, compaction folds deltas
into a new base with the same answers, and an erasure after a delta leaves no trace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dmp_ml.bundle
import dmp_ml.manifest
import dmp_ml.store
from dmp_ml import layout
from dmp_ml.bundle import (
    DELTA_KEY,
    ModelBundle,
    live_bundle_path,
    load_bundle,
    read_features_index,
    read_manifest,
)
from dmp_ml.delta import CHANGE_FILE
from dmp_ml.demo import DemoWorld
from dmp_ml.erasure import forget
from dmp_ml.errors import BundleError
from dmp_ml.refresh import Refresher, compact
from dmp_ml.settings import RefreshSettings

CopyWorkdir = Callable[[Path, Path], Path]


def _batch(events: pd.DataFrame, as_of: pd.Timestamp, size: int, seed: int) -> pd.DataFrame:
    """Live-like traffic: existing profiles' and cookies' events after ``as_of``, plus new
    cookies (so the batch both changes and adds profiles)."""
    rng = np.random.default_rng(seed)
    rows = events.iloc[rng.integers(0, len(events), size)].reset_index(drop=True)
    offsets = np.sort(rng.uniform(0, 6 * 3600, size)).round()
    rows["event_time"] = as_of + pd.to_timedelta(offsets, unit="s")
    fresh = rng.random(size) < 0.05
    rows.loc[fresh, "profile_id"] = pd.NA
    rows.loc[fresh, "cookie_id"] = pd.array(
        [f"delta-{seed}-{i}" for i in range(int(fresh.sum()))], dtype="string"
    )
    return rows


@dataclass
class Refreshed:
    base: Path  # the workdir after train
    deltas: Path  # two batches applied as deltas
    full: Path  # the same two batches, the second compacting (a whole re-publish)
    touched: list[str]
    base_version: str


@pytest.fixture(scope="module")
def refreshed(
    trained_workdir: Path,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    tmp_path_factory: pytest.TempPathFactory,
) -> Refreshed:
    root = tmp_path_factory.mktemp("delta")
    deltas = copy_workdir(trained_workdir, root / "deltas")
    full = copy_workdir(trained_workdir, root / "full")
    before = load_bundle(deltas, lazy=True)
    batches = [_batch(demo_world.events, before.as_of, 300, seed) for seed in (1, 2)]
    one = Refresher(deltas)
    other = Refresher(full, refresh=RefreshSettings(max_deltas=1))
    for batch in batches:
        one.apply(batch)
        other.apply(batch)
        other.compact_if_due()
    ids = pd.concat(batches)["profile_id"].dropna().astype(str).unique().tolist()
    held = load_bundle(deltas, lazy=True).features.frame.index
    touched = sorted(p for p in ids if p in held)  # not those without consent
    return Refreshed(trained_workdir, deltas, full, touched, before.version)


def _answers(bundle: ModelBundle, ids: list[str]) -> dict[str, pd.DataFrame]:
    """What a client sees of ``ids`` (and the per-profile rows behind it), by profile."""
    st = bundle.send_time(ids).frame.set_index("profile_id").sort_index()
    lookalike = bundle.lookalike_model
    affinity = bundle.affinity_model
    assert lookalike is not None and affinity is not None
    rows = lookalike.profile_ids_.get_indexer(pd.Index(ids, dtype="string"))
    segment = affinity.segment_summary(ids, top=10)
    return {
        "features": bundle.features.frame.loc[ids],
        "how": pd.DataFrame(
            np.asarray(bundle.features.hour_of_week)[bundle.features.frame.index.get_indexer(ids)]
        ),
        "scores": bundle.score(ids).frame.set_index("profile_id").sort_index(),
        "send_time": st.drop(columns=[c for c in st.columns if "generated" in c]),
        "vectors": pd.DataFrame(np.asarray(lookalike.vectors_)[rows], index=ids),
        "affinity": affinity.profile_frame(ids).set_index("profile_id").sort_index(),
        "segment_channels": pd.DataFrame(segment["channels"]),
        "segment_categories": pd.DataFrame(segment["top_categories"]),
    }


def _assert_same(a: ModelBundle, b: ModelBundle, ids: list[str]) -> None:
    left, right = _answers(a, ids), _answers(b, ids)
    for key in left:
        pd.testing.assert_frame_equal(left[key], right[key], check_exact=False, rtol=1e-9)


def test_a_batch_is_published_as_a_small_delta_over_the_untouched_base(
    refreshed: Refreshed,
) -> None:
    live = load_bundle(refreshed.deltas)
    assert [p.name for p in live.deltas] == read_manifest(live.path)[DELTA_KEY]["chain"]
    assert len(live.deltas) == 2 and live.base_path.name == refreshed.base_version
    # the base's files are the train's, unchanged (checksums verified on load)
    base = layout.versions_dir(refreshed.deltas) / refreshed.base_version
    trained = layout.versions_dir(refreshed.base) / refreshed.base_version
    assert read_manifest(base)["files"] == read_manifest(trained)["files"]
    # a delta holds the touched profiles' rows only: a small fraction of the base
    base_bytes = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    for link in live.deltas:
        written = sum(p.stat().st_size for p in link.rglob("*") if p.is_file())
        assert written < base_bytes / 4
        features = pd.read_parquet(link / layout.DELTA_DIR / "features.parquet")
        assert len(features) < len(live.features.frame) / 2
    assert not (live.path / "features").exists()  # no feature table re-written


def test_a_refresh_and_the_load_after_it_hash_the_delta_not_the_base(
    refreshed: Refreshed,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The base is hashed once (a copy, with new inodes, by its first reader), then neither a
    refresh nor the loads after it hash it again: what a batch costs to verify is its delta."""
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    base = load_bundle(workdir, lazy=True).base_path
    hashed: list[Path] = []
    real = dmp_ml.manifest.sha256_file
    monkeypatch.setattr(dmp_ml.manifest, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    load_bundle(workdir)
    assert hashed == []
    batch = _batch(demo_world.events, load_bundle(workdir, lazy=True).as_of, 100, 4)
    Refresher(workdir).apply(batch)
    live = load_bundle(workdir)
    assert live.base_path == base and hashed
    assert not any(p.is_relative_to(base) for p in hashed)
    base_bytes = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in hashed if p.exists()) < base_bytes / 4


def test_a_delta_gives_the_answers_of_a_whole_republish(refreshed: Refreshed) -> None:
    deltas, full = load_bundle(refreshed.deltas), load_bundle(refreshed.full)
    assert deltas.deltas and not full.deltas  # the second batch compacted the other one
    touched = refreshed.touched
    assert len(touched) > 50
    before = load_bundle(refreshed.base, lazy=True)
    changed = before.features.frame.loc[touched, "event_count_total"]
    assert (deltas.features.frame.loc[touched, "event_count_total"] > changed).all()
    assert deltas.features.frame.index.equals(full.features.frame.index)
    _assert_same(deltas, full, touched)
    # lazily loaded models replay the deltas when they load
    _assert_same(load_bundle(refreshed.deltas, lazy=True), full, touched)


def test_compaction_folds_the_deltas_into_a_base_with_the_same_answers(
    refreshed: Refreshed, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    before = load_bundle(workdir)
    done = subprocess.run(
        [sys.executable, "-m", "dmp_ml.cli", "compact", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    after = load_bundle(workdir)
    assert f"bundle {after.version}" in done.stdout
    assert not after.deltas and after.base_path == after.path
    assert DELTA_KEY not in after.manifest
    assert after.features.frame.index.equals(before.features.frame.index)
    _assert_same(before, after, refreshed.touched)
    assert compact(workdir) is None  # nothing left to fold
    # a refresh after it writes a delta over the new base
    batch = _batch(pd.read_parquet(layout.base_events(workdir)), after.as_of, 50, 3)
    Refresher(workdir).apply(batch)
    assert load_bundle(workdir).base_path.name == after.version


def test_a_batch_past_the_delta_limit_is_live_before_the_chain_is_folded(
    refreshed: Refreshed, demo_world: DemoWorld, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """A batch never waits for a compaction: past ``refresh.max_deltas`` it is still published
    as a delta, and folding the chain is a separate step after it."""
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    refresher = Refresher(workdir, refresh=RefreshSettings(max_deltas=2))
    assert not refresher.compaction_due()
    batch = _batch(demo_world.events, load_bundle(workdir, lazy=True).as_of, 100, 7)
    report = refresher.apply(batch)
    live = load_bundle(workdir)
    assert live.version == report.bundle_version and len(live.deltas) == 3
    assert refresher.compaction_due()
    version = refresher.compact_if_due()
    folded = load_bundle(workdir)
    assert version == folded.version and not folded.deltas
    _assert_same(live, folded, refreshed.touched)


def test_batches_applied_while_a_compaction_writes_stay_live_over_the_new_base(
    refreshed: Refreshed,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compaction writes the population without the workdir lock: a batch applied meanwhile
    goes live at once, and is published again over the new base when that goes live, with
    the answers of the same batch applied to the chain."""
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    reference = copy_workdir(refreshed.deltas, tmp_path / "reference")
    batch = _batch(demo_world.events, load_bundle(workdir, lazy=True).as_of, 300, 6)
    Refresher(reference).apply(batch)
    write_files = dmp_ml.store.write_bundle_files
    live_during: list[bool] = []

    def writing(*args: object, **kwargs: object) -> object:
        written = write_files(*args, **kwargs)
        report = Refresher(workdir).apply(batch)
        live_during.append(load_bundle(workdir, lazy=True).version == report.bundle_version)
        return written

    monkeypatch.setattr(dmp_ml.store, "write_bundle_files", writing)
    version = compact(workdir)
    assert live_during == [True]
    live = load_bundle(workdir)
    assert version == live.version and len(live.deltas) == 1
    assert DELTA_KEY not in read_manifest(live.base_path)
    assert live.base_path.name != refreshed.base_version
    expected = load_bundle(reference)
    named = set(batch["profile_id"].dropna().astype(str)) | set(refreshed.touched)
    _assert_same(live, expected, sorted(named & set(expected.features.frame.index)))
    assert live.features.frame.index.sort_values().equals(
        expected.features.frame.index.sort_values()
    )


def test_the_events_command_applies_a_batch_then_folds_the_deltas(
    refreshed: Refreshed, demo_world: DemoWorld, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")  # two deltas over the base
    batch = _batch(demo_world.events, load_bundle(workdir, lazy=True).as_of, 50, 8)
    batch.to_parquet(tmp_path / "batch.parquet", index=False)
    done = subprocess.run(
        [sys.executable, "-m", "dmp_ml.cli", "events", "--events", str(tmp_path / "batch.parquet")]
        + ["--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DMP_ML_REFRESH__MAX_DELTAS": "2"},
    )
    assert done.returncode == 0, done.stderr
    assert "events applied" in done.stdout
    live = load_bundle(workdir, lazy=True)
    assert f"deltas folded into a new base; live bundle {live.version}" in done.stdout
    assert not live.deltas


def test_one_compaction_at_a_time(
    refreshed: Refreshed, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """A second process asking to compact while one writes (two service workers) folds
    nothing and leaves the chain to the first."""
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    before = load_bundle(workdir, lazy=True).version
    with dmp_ml.store.compaction_lock(workdir) as mine:
        assert mine
        assert compact(workdir) is None
    assert load_bundle(workdir, lazy=True).version == before
    assert compact(workdir) is not None


def test_an_erasure_listed_while_a_compaction_writes_keeps_the_live_bundle(
    refreshed: Refreshed, copy_workdir: CopyWorkdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new base was written before the id was listed: it never goes live."""
    from dmp_ml.erasure import add_to_erasure_list

    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    before = load_bundle(workdir, lazy=True).version
    write_files = dmp_ml.store.write_bundle_files

    def writing(*args: object, **kwargs: object) -> object:
        written = write_files(*args, **kwargs)
        add_to_erasure_list(workdir, [refreshed.touched[0]])
        return written

    monkeypatch.setattr(dmp_ml.store, "write_bundle_files", writing)
    assert compact(workdir) is None
    assert load_bundle(workdir, lazy=True).version == before
    assert not [p for p in layout.versions_dir(workdir).iterdir() if "compact" in p.name]


def test_a_compaction_finishes_a_forget_killed_after_listing_the_profile(
    refreshed: Refreshed, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """An id on the erasure list that the live bundle still holds (its ``forget`` died after
    listing it) is forgotten, never folded into a new base."""
    from dmp_ml.erasure import add_to_erasure_list

    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    gone = next(p for p in refreshed.touched if p in load_bundle(workdir).features.frame.index)
    add_to_erasure_list(workdir, [gone])  # listed, and nothing else done
    assert compact(workdir) is not None
    after = load_bundle(workdir)
    assert not after.deltas
    assert gone not in read_features_index(after.path)
    assert after.score([gone]).unknown_ids == [gone]


def test_a_failed_fold_after_a_batch_leaves_the_batch_applied(
    refreshed: Refreshed,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``apply_events`` reports the batch it applied when the compaction after it fails (a
    full disk, say): the deltas stay for the next one, and the failure is logged."""
    import dmp_ml.refresh
    from dmp_ml.errors import StorageFullError

    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    batch = _batch(demo_world.events, load_bundle(workdir, lazy=True).as_of, 50, 9)

    def full_disk(_: object) -> None:
        raise StorageFullError(workdir, "no space left on device")

    monkeypatch.setattr(dmp_ml.refresh, "compact", full_disk)
    report = dmp_ml.refresh.apply_events(workdir, batch, refresh=RefreshSettings(max_deltas=2))
    live = load_bundle(workdir, lazy=True)
    assert live.version == report.bundle_version and len(live.deltas) == 3
    assert "folding the deltas failed" in caplog.text


def test_erasure_after_a_delta_removes_the_profile_everywhere(
    refreshed: Refreshed, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    live = load_bundle(workdir)
    gone = next(p for p in refreshed.touched if p in live.features.frame.index)
    delta_rows = pd.read_parquet(live.deltas[-1] / layout.DELTA_DIR / "features.parquet")
    assert gone in set(delta_rows["profile_id"]) or gone in set(
        pd.read_parquet(live.deltas[0] / layout.DELTA_DIR / "features.parquet")["profile_id"]
    )
    forget(workdir, [gone])
    after = load_bundle(workdir)
    assert not after.deltas  # compacted: no delta nor base left holding the profile
    versions = [p for p in layout.versions_dir(workdir).iterdir() if not p.name.startswith(".")]
    assert versions == [after.path]
    assert gone not in read_features_index(after.path)
    assert after.score([gone]).unknown_ids == [gone]
    for path in after.path.rglob("*.parquet"):
        frame = pd.read_parquet(path)
        if "profile_id" in frame.columns:
            assert gone not in set(frame["profile_id"].astype(str)), path
    # the next batch, even one naming the profile, writes no delta that brings it back
    batch = _batch(pd.read_parquet(layout.base_events(workdir)), after.as_of, 50, 4)
    batch.loc[0, "profile_id"] = gone
    Refresher(workdir).apply(batch)
    again = load_bundle(workdir)
    assert again.deltas and gone not in again.features.frame.index
    assert again.score([gone]).unknown_ids == [gone]


def test_a_delta_whose_base_or_chain_is_damaged_is_refused(
    refreshed: Refreshed, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    live = load_bundle(workdir, lazy=True)
    first = live.deltas[0] / layout.DELTA_DIR / "features.npy"
    first.write_bytes(first.read_bytes()[:-8] + bytes(8))  # a delta under the live one
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(workdir)
    shutil.rmtree(live.base_path)
    with pytest.raises(BundleError):
        load_bundle(workdir)


def test_a_refreshed_profile_ranks_among_the_others_as_a_full_re_sort_ranks_it(
    refreshed: Refreshed,
) -> None:
    """The second batch of one refresher (the population's raw scores kept sorted from the
    first, the first batch's taken out and put in by search) ranks each profile it touched,
    new ones included, exactly where sorting every other profile's raw score puts it."""
    after = load_bundle(refreshed.deltas, lazy=True)
    first, second = after.deltas
    before = load_bundle(first, lazy=True)
    change = json.loads((second / layout.DELTA_DIR / CHANGE_FILE).read_text(encoding="utf-8"))
    touched = pd.Index(change["profile_ids"], dtype="string")
    assert (~before.features.ids.contains(touched)).any()  # new profiles among them
    assert before.scores is not None and after.scores is not None
    gone = before.scores.index.isin(touched.union(pd.Index(change["removed"], dtype="string")))
    others = np.sort(before.scores["raw"].to_numpy()[~gone])
    raw = after.scores["raw"].reindex(touched).to_numpy()
    want = 100.0 * (np.searchsorted(others, raw, side="right") + 1) / (len(others) + 1)
    got = after.scores["percentile"].reindex(touched).to_numpy()
    np.testing.assert_array_equal(got, want)


def test_a_loaded_bundle_extended_by_a_new_delta_answers_as_a_fresh_load(
    refreshed: Refreshed,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    tmp_path: Path,
) -> None:
    workdir = copy_workdir(refreshed.deltas, tmp_path / "w")
    old = load_bundle(workdir)
    ids = refreshed.touched
    before = _answers(old, ids)
    batch = _batch(demo_world.events, old.as_of, 300, 5)
    Refresher(workdir).apply(batch)
    fresh = load_bundle(workdir)
    extended = old.extended(fresh.path, read_manifest(fresh.path))
    assert extended is not None and extended.version == fresh.version
    assert [p.name for p in extended.deltas] == [p.name for p in fresh.deltas]
    named = {*ids, *batch["profile_id"].dropna().astype(str)}
    now = sorted(named & set(fresh.features.frame.index))
    _assert_same(extended, fresh, now)
    # the bundle it came from (still answering requests meanwhile) did not change
    after = _answers(old, ids)
    for key in before:
        pd.testing.assert_frame_equal(before[key], after[key])
    assert extended.extended(fresh.path, fresh.manifest) is None  # nothing newer
    compact(workdir)
    assert fresh.extended(live_bundle_path(workdir), read_manifest(workdir / "bundle")) is None
