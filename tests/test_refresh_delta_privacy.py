"""Adversarial checks of refresh deltas against the product's first rule: a profile without
consent (withdrawn, or erased with ``forget``) never appears in any answer nor in any file of a
kept bundle version, and an erasure is never undone by a later delta or a compaction. Also: a
refresh that fails leaves the last good bundle live, and a damaged delta is refused clearly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dmp_ml import activation, layout
from dmp_ml.bundle import ModelBundle, live_bundle_path, load_bundle, read_features_index
from dmp_ml.demo import DemoWorld
from dmp_ml.erasure import forget, read_erasure_list
from dmp_ml.errors import BundleError, UnknownProfileError
from dmp_ml.identity import latest_consent
from dmp_ml.models.propensity import PropensityModel
from dmp_ml.refresh import Refresher, compact

CopyWorkdir = Callable[[Path, Path], Path]

NEWCOMER = "p-delta-newcomer"
NEW_COOKIE = "ck-delta-newcomer"


@dataclass
class World:
    workdir: Path  # trained, then two batches published as deltas
    trained: ModelBundle  # the train's bundle (lazy)
    withdrawn: str  # a profile whose consent was withdrawn before the train
    withdrawn_cookie: str  # one of its devices
    known: str  # a profile of the base touched by both deltas
    known_cookie: str
    seeds: list[str]  # consented profiles to seed lookalikes with


def _event(t: pd.Timestamp, kind: str, profile: str | None = None, cookie: str | None = None):
    return {"event_time": t.isoformat(), "profile_id": profile, "cookie_id": cookie,
            "event_type": kind}  # fmt: skip


@pytest.fixture(scope="module")
def world(
    trained_workdir: Path,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    workdir = copy_workdir(trained_workdir, tmp_path_factory.mktemp("privacy") / "w")
    trained = load_bundle(workdir, lazy=True)
    index = trained.features.frame.index
    events = demo_world.events
    with_cookie = events.dropna(subset=["profile_id", "cookie_id"])
    withdrawn_ids, _ = latest_consent(demo_world.consent, "marketing")
    withdrawn = next(p for p in withdrawn_ids if p in set(with_cookie["profile_id"]))
    assert withdrawn not in index
    w_cookie = str(with_cookie.loc[with_cookie["profile_id"] == withdrawn, "cookie_id"].iloc[0])
    cookie_map = trained.features.cookie_map
    assert cookie_map is not None
    linked = cookie_map[~cookie_map.str.startswith("anon:")]
    known_cookie = str(linked.index[0])
    known = str(linked.iloc[0])
    seeds = [str(p) for p in linked.iloc[1:40].unique()]
    refresher = Refresher(workdir)
    t = trained.as_of + pd.Timedelta(hours=2)
    refresher.apply(
        [
            _event(t, "purchase", known, known_cookie),
            _event(t, "purchase", NEWCOMER, NEW_COOKIE),
            _event(t, "purchase", withdrawn),
            _event(t, "page_view", None, w_cookie),
        ],
        profiles=pd.DataFrame(  # attributes given for the new profiles, the withdrawn one too
            {"profile_id": [NEWCOMER, withdrawn], "timezone": ["Europe/Paris", "Asia/Tokyo"]}
        ),
    )
    t2 = t + pd.Timedelta(hours=1)
    refresher.apply(
        [
            _event(t2, "page_view", known),
            _event(t2, "page_view", NEWCOMER),
            _event(t2, "page_view", withdrawn, w_cookie),
        ]
    )
    return World(workdir, trained, withdrawn, w_cookie, known, known_cookie, seeds)


def _bundle_files(workdir: Path) -> list[Path]:
    versions = layout.versions_dir(workdir)
    return sorted(p for p in versions.rglob("*") if p.is_file())


def _files_holding(workdir: Path, ids: Iterable[str]) -> dict[str, list[str]]:
    """Which files of any bundle version still hold any of ``ids``: the text of every Parquet
    column, the raw bytes of every other file (JSON, arrays, indexes)."""
    ids = [str(i) for i in ids]
    found: dict[str, list[str]] = {}
    for path in _bundle_files(workdir):
        hits: set[str] = set()
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                values = {str(v) for v in table.column(name).to_pylist() if v is not None}
                hits |= {i for i in ids if i in values or any(i in v for v in values)}
        else:
            data = path.read_bytes()
            hits |= {i for i in ids if i.encode() in data}
        if hits:
            found[str(path.relative_to(workdir))] = sorted(hits)
    return found


def _assert_no_answer(bundle: ModelBundle, gone: list[str], seeds: list[str]) -> None:
    """None of ``gone`` in any answer of ``bundle``: scores, send times, lookalikes (as seed
    and as audience member), ranked audiences, exports, affinity."""
    assert sorted(bundle.score(gone).unknown_ids) == sorted(gone)
    assert not bundle.score(None).frame["profile_id"].astype(str).isin(gone).any()
    try:  # refused, or answered with every id unknown
        only = bundle.send_time(gone)
    except UnknownProfileError:
        pass
    else:
        assert len(only.frame) == 0 and sorted(only.unknown_ids) == sorted(gone)
    mixed = bundle.send_time([*gone, *seeds])
    assert sorted(set(gone) & set(mixed.unknown_ids)) == sorted(gone)
    assert not mixed.frame["profile_id"].astype(str).isin(gone).any()
    everyone = bundle.send_time(None).frame["profile_id"].astype(str)
    assert not everyone.isin(gone).any()
    try:
        alone = bundle.lookalike(gone, size=10)
    except UnknownProfileError:
        pass
    else:
        assert len(alone.frame) == 0 and alone.diagnostics["seeds_matched"] == 0
    seeded = bundle.lookalike([*gone, seeds[0]], size=10)
    assert seeded.diagnostics["seeds_matched"] == 1
    audience = bundle.lookalike(seeds, reach=0.5)
    assert len(audience.frame) > 100
    assert not audience.frame["profile_id"].astype(str).isin(gone).any()
    ranked = activation.score_audience(bundle)
    assert len(ranked) > 100 and not ranked["profile_id"].astype(str).isin(gone).any()
    exported, _ = activation.export_frame(bundle, list(gone) + seeds, send_time=True)
    assert len(exported) > 0 and not exported["profile_id"].astype(str).isin(gone).any()


def _assert_absent(bundle: ModelBundle, gone: list[str], seeds: list[str]) -> None:
    """None of ``gone`` in any answer of ``bundle`` nor in any table or model it holds."""
    _assert_no_answer(bundle, gone, seeds)
    assert not bundle.features.frame.index.isin(gone).any()
    assert bundle.scores is not None and not bundle.scores.index.isin(gone).any()
    look = bundle.lookalike_model
    assert look is not None and not look.profile_ids_.isin(gone).any()
    affinity = bundle.affinity_model
    assert affinity is not None
    assert not affinity.profile_frame(gone)["profile_id"].astype(str).isin(gone).any()
    send_time = bundle.send_time_model
    assert send_time is not None and not send_time.profile_ids_.isin(gone).any()
    cookie_map = bundle.features.cookie_map
    assert cookie_map is not None and not cookie_map.isin(gone).any()


def test_a_withdrawn_profile_named_by_batches_stays_out_of_every_delta(world: World) -> None:
    live = load_bundle(world.workdir)
    assert len(live.deltas) == 2  # both batches published as deltas over the train's base
    gone = [world.withdrawn, f"anon:{world.withdrawn_cookie}"]
    assert world.trained.score(gone).unknown_ids == gone  # as the train left it
    # the batches did reach the profiles with consent
    assert world.known in live.features.frame.index and NEWCOMER in live.features.frame.index
    _assert_absent(live, gone, world.seeds)
    _assert_absent(load_bundle(world.workdir, lazy=True), gone, world.seeds)
    assert _files_holding(world.workdir, [*gone, world.withdrawn_cookie]) == {}


def test_forgotten_profiles_of_base_and_delta_never_come_back(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(world.workdir, tmp_path / "w")
    live = load_bundle(workdir)
    cookie_map = live.features.cookie_map
    assert cookie_map is not None and cookie_map[NEW_COOKIE] == NEWCOMER
    assert NEWCOMER not in world.trained.features.frame.index  # only in a delta
    assert world.known in world.trained.features.frame.index  # in the base and the deltas
    gone = [NEWCOMER, world.known]
    assert set(_files_holding(workdir, gone)) - {"bundles"}  # before: the deltas hold them
    report = forget(workdir, gone, bundle=live)
    assert report.complete and report.in_bundle == 2
    _assert_no_answer(live, gone, world.seeds)  # the loaded bundle stops answering at once
    erased = read_erasure_list(workdir)
    assert {*gone, f"anon:{NEW_COOKIE}", f"anon:{world.known_cookie}"} <= erased
    after = load_bundle(workdir)
    assert not after.deltas
    _assert_absent(after, gone, world.seeds)
    assert _files_holding(workdir, [*gone, NEW_COOKIE, world.known_cookie]) == {}
    # a further batch names them, by id and by device: nothing brings them back
    t = pd.Timestamp(after.manifest["refresh"]["features_as_of"]) + pd.Timedelta(hours=1)
    report2 = Refresher(workdir).apply(
        [
            _event(t, "purchase", NEWCOMER, NEW_COOKIE),
            _event(t, "purchase", world.known),
            _event(t, "page_view", None, world.known_cookie),
            _event(t, "page_view", None, NEW_COOKIE),
            _event(t, "page_view", world.seeds[0]),
        ]
    )
    assert report2.rows_erased == 4 and report2.profiles_updated == 1
    delta = load_bundle(workdir)
    assert len(delta.deltas) == 1
    everything = [*gone, f"anon:{NEW_COOKIE}", f"anon:{world.known_cookie}"]
    _assert_absent(delta, everything, world.seeds[1:])
    assert _files_holding(workdir, [*gone, NEW_COOKIE, world.known_cookie]) == {}
    # ... nor folding the deltas into a new base
    assert compact(workdir) is not None
    compacted = load_bundle(workdir)
    assert not compacted.deltas
    _assert_absent(compacted, everything, world.seeds[1:])
    assert _files_holding(workdir, [*gone, NEW_COOKIE, world.known_cookie]) == {}
    # and the event store the next train reads no longer holds them
    for path in layout.incoming_dir(workdir).glob("*.parquet"):
        frame = pd.read_parquet(path)
        assert not frame["profile_id"].astype("string").isin(gone).any(), path
        assert not frame["cookie_id"].astype("string").isin([NEW_COOKIE]).any(), path


def test_a_refresh_failing_midway_leaves_the_last_good_bundle_answering(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = copy_workdir(world.workdir, tmp_path / "w")
    good = load_bundle(workdir)
    ids = [world.known, NEWCOMER, *world.seeds[:5]]
    before = good.score(ids).frame
    versions = sorted(p.name for p in layout.versions_dir(workdir).iterdir())
    refresher = Refresher(workdir)
    assert refresher.catch_up() is None  # loaded (and its deltas replayed) before it breaks

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("rescoring failed")

    # midway: the features are merged in memory by then (the refresher loads the other
    # models lazily, so their updates do not run for a delta)
    t = good.as_of + pd.Timedelta(hours=5)
    monkeypatch.setattr(PropensityModel, "rescore", broken)
    with pytest.raises(RuntimeError, match="rescoring failed"):
        refresher.apply([_event(t, "purchase", world.known), _event(t, "purchase", "p-x")])
    monkeypatch.undo()
    assert live_bundle_path(workdir).name == good.version
    assert sorted(p.name for p in layout.versions_dir(workdir).iterdir()) == versions
    again = load_bundle(workdir)
    pd.testing.assert_frame_equal(again.score(ids).frame, before)
    assert again.lookalike(world.seeds, size=20).frame.shape[0] == 20


def test_a_truncated_delta_file_is_refused_in_one_line(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(world.workdir, tmp_path / "w")
    live = load_bundle(workdir, lazy=True)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{world.known}\n", encoding="utf-8")
    for name in ("events.parquet", "features.npy", "change.json"):
        target = live.deltas[-1] / layout.DELTA_DIR / name
        original = target.read_bytes()
        target.write_bytes(original[: len(original) // 2])
        for lazy in (False, True):
            with pytest.raises(BundleError, match=name):
                load_bundle(workdir, lazy=lazy)
        done = subprocess.run(
            [sys.executable, "-m", "dmp_ml.cli", "score", "--workdir", str(workdir),
             "--ids", str(ids), "--out", str(tmp_path / "s.csv")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode != 0
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and name in lines[0], done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "s.csv").exists()
        target.write_bytes(original)
    assert load_bundle(workdir).score([world.known]).unknown_ids == []


def test_a_base_damaged_after_a_first_load_is_still_refused(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """The base's checksums are verified once per process; a base file truncated since (a long
    running worker reloading after each refresh) is still refused with a BundleError."""
    workdir = copy_workdir(world.workdir, tmp_path / "w")
    live = load_bundle(workdir)  # the base verified (and remembered as verified)
    assert live.deltas
    for name in ("features/features.npy", "propensity/scores.npy", "lookalike/vectors.npy"):
        target = live.base_path / name
        original = target.read_bytes()
        target.write_bytes(original[: len(original) // 2])
        with pytest.raises(BundleError):
            load_bundle(workdir)
        target.write_bytes(original)


def test_a_service_worker_refuses_a_damaged_delta_and_keeps_erasures(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """A worker extending its live bundle with a new delta: a damaged delta is refused in one
    line (the old bundle stays and answers); an erasure made meanwhile holds in every answer,
    before and after the reload."""
    from dmp_ml.service.worker import ServiceWorker
    from dmp_ml.settings import Settings

    workdir = copy_workdir(world.workdir, tmp_path / "w")
    worker = ServiceWorker(Settings(workdir=workdir, service={"reload_poll_seconds": 0}))
    try:
        first = worker.live
        assert len(first.deltas) == 2
        t = pd.Timestamp(first.manifest["refresh"]["features_as_of"]) + pd.Timedelta(hours=1)
        Refresher(workdir).apply([_event(t, "purchase", world.known), _event(t, "x", "p-w1")])
        fresh = live_bundle_path(workdir)
        target = fresh / layout.DELTA_DIR / "features.npy"
        original = target.read_bytes()
        target.write_bytes(original[: len(original) // 2])
        with pytest.raises(BundleError) as caught:
            worker.reload_bundle()
        assert "\n" not in str(caught.value) and "features.npy" in str(caught.value)
        assert worker.live is first and worker.last_error == str(caught.value)
        assert worker.current_bundle().score([world.known]).unknown_ids == []
        target.write_bytes(original)
        # an erasure by another writer while the worker serves the delta chain
        forget(workdir, [world.seeds[0]])
        assert worker.current_bundle().score([world.seeds[0]]).unknown_ids == [world.seeds[0]]
        reloaded, _, current = worker.reload_bundle()
        assert reloaded and not current.deltas  # the forget compacted
        _assert_absent(current, [world.seeds[0]], world.seeds[1:])
        # a further batch: the worker extends its bundle with the delta, the profile stays out
        Refresher(workdir).apply(
            [_event(t, "purchase", world.seeds[0]), _event(t, "purchase", world.seeds[1])]
        )
        reloaded, _, extended = worker.reload_bundle()
        assert reloaded and len(extended.deltas) == 1
        _assert_absent(extended, [world.seeds[0]], world.seeds[1:])
    finally:
        worker.shutdown()


def test_a_corrupt_delta_change_file_is_reported_in_one_line_by_serve(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """``dmp-ml serve`` reads the live bundle's ids before starting (example requests): a
    truncated ``delta/change.json`` is one line on stderr, not a traceback."""
    workdir = copy_workdir(world.workdir, tmp_path / "w")
    live = live_bundle_path(workdir)
    target = live / layout.DELTA_DIR / "change.json"
    target.write_bytes(target.read_bytes()[:20])
    with pytest.raises(BundleError, match="change.json"):
        read_features_index(live)
    done = subprocess.run(
        [sys.executable, "-m", "dmp_ml.cli", "serve", "--workdir", str(workdir), "--port", "3987"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "change.json" in lines[0], done.stderr


def test_a_disk_full_while_writing_a_delta_leaves_no_version_and_is_repaired(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from dmp_ml import delta as delta_module
    from dmp_ml import store
    from dmp_ml.errors import StorageError

    workdir = copy_workdir(world.workdir, tmp_path / "w")
    good = load_bundle(workdir)
    versions = sorted(p.name for p in layout.versions_dir(workdir).iterdir())
    real = delta_module.write_delta

    def full(directory: Path, delta: delta_module.Delta) -> int:
        real(directory, delta)  # half the files written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    t = good.as_of + pd.Timedelta(hours=6)
    refresher = Refresher(workdir)
    monkeypatch.setattr(store, "write_delta", full)
    with pytest.raises(StorageError):
        refresher.apply([_event(t, "purchase", "p-after-full"), _event(t, "view", world.known)])
    monkeypatch.undo()
    assert live_bundle_path(workdir).name == good.version
    assert sorted(p.name for p in layout.versions_dir(workdir).iterdir()) == versions
    assert load_bundle(workdir).score(["p-after-full"]).unknown_ids == ["p-after-full"]
    report = refresher.apply([_event(t, "purchase", world.seeds[2])])
    assert report.profiles_created == 1  # the stored batch, applied with the next one
    assert load_bundle(workdir).score(["p-after-full"]).unknown_ids == []


def test_compaction_never_folds_a_listed_profile_into_the_new_base(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """A forget killed after listing the ids (its first, durable step) leaves them in the
    deltas; ``compact`` scrubs them instead of writing them into a new base."""
    from dmp_ml.erasure import add_to_erasure_list

    workdir = copy_workdir(world.workdir, tmp_path / "w")
    assert load_bundle(workdir).deltas
    add_to_erasure_list(workdir, [NEWCOMER, world.known])
    version = compact(workdir)
    after = load_bundle(workdir)
    assert version == after.version and not after.deltas
    _assert_absent(after, [NEWCOMER, world.known], world.seeds)
    assert _files_holding(workdir, [NEWCOMER, world.known]) == {}


def test_a_refresh_that_compacts_never_folds_a_listed_profile_into_the_new_base(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    from dmp_ml.erasure import add_to_erasure_list
    from dmp_ml.settings import RefreshSettings

    workdir = copy_workdir(world.workdir, tmp_path / "w")
    live = load_bundle(workdir)
    assert len(live.deltas) == 2
    add_to_erasure_list(workdir, [NEWCOMER])  # a forget killed after its first step
    t = pd.Timestamp(live.manifest["refresh"]["features_as_of"]) + pd.Timedelta(hours=1)
    refresher = Refresher(workdir, refresh=RefreshSettings(max_deltas=2))
    refresher.apply([_event(t, "purchase", world.seeds[3])])
    assert refresher.compact_if_due() is not None
    after = load_bundle(workdir)
    assert not after.deltas  # the refresh compacted
    _assert_absent(after, [NEWCOMER], world.seeds)
    assert NEWCOMER.encode() not in b"".join(
        p.read_bytes() for p in after.path.rglob("*") if p.is_file() and p.suffix != ".parquet"
    )
    assert not any(
        NEWCOMER in str(v)
        for p in after.path.rglob("*.parquet")
        for col in pq.read_table(p).columns
        for v in col.to_pylist()
    )


def test_forgetting_a_profile_a_delta_folded_away_leaves_no_copy_in_the_base(
    world: World, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """An anonymous profile of the base that a batch folds into a known one (its cookie now
    linked) is gone from every answer, but the base's files still hold it: forgetting it
    deletes those too."""
    workdir = copy_workdir(world.workdir, tmp_path / "w")
    live = load_bundle(workdir)
    cookie_map = live.features.cookie_map
    assert cookie_map is not None
    anon = cookie_map[cookie_map.str.startswith("anon:")]
    cookie, folded = str(anon.index[0]), str(anon.iloc[0])
    t = pd.Timestamp(live.manifest["refresh"]["features_as_of"]) + pd.Timedelta(hours=1)
    report = Refresher(workdir).apply([_event(t, "purchase", world.seeds[4], cookie)])
    assert report.profiles_removed == 1
    delta = load_bundle(workdir)
    assert folded not in delta.features.frame.index
    assert _files_holding(workdir, [folded])  # the base still has its rows
    forget(workdir, [folded])
    after = load_bundle(workdir)
    assert not after.deltas
    assert after.score([folded]).unknown_ids == [folded]
    assert _files_holding(workdir, [folded]) == {}
    assert folded in read_erasure_list(workdir)
