"""Right to be forgotten: gone from every answer at once, from disk, and after a retrain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from dmp_ml import activation, store
from dmp_ml.bundle import ModelBundle, load_bundle
from dmp_ml.demo import DemoWorld
from dmp_ml.erasure import (
    ERASURE_FILE,
    LEGACY_ERASURE_FILE,
    ForgetReport,
    add_to_erasure_list,
    apply_erasure_list,
    forget,
    read_erasure_list,
)
from dmp_ml.errors import RequestError, UnknownProfileError
from dmp_ml.pipeline import train
from dmp_ml.segments import evaluate
from dmp_ml.settings import Settings

# ------------------------------------------------------------------ fixtures
# (demo_world, trained_workdir, copy_workdir and train_settings are shared: tests/conftest.py)

CopyWorkdir = Callable[[Path, Path], Path]


@dataclass
class Forgotten:
    workdir: Path
    serving: ModelBundle  # the loaded bundle a service worker would hold
    victims: list[str]
    seeds: list[str]
    report: ForgetReport


@pytest.fixture(scope="module")
def forgotten(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path_factory: pytest.TempPathFactory
) -> Forgotten:
    workdir = copy_workdir(trained_workdir, tmp_path_factory.mktemp("erasure") / "w")
    serving = load_bundle(workdir)
    known = [p for p in serving.features.frame.index if not p.startswith("anon:")]
    seeds = known[:30]
    audience = serving.lookalike(seeds, size=40)
    # victims the outputs certainly contained: lookalike results, an anonymous profile, a seed
    anonymous = next(p for p in serving.features.frame.index if p.startswith("anon:"))
    victims = [*audience.frame["profile_id"].head(2), anonymous, seeds[0]]
    before = serving.score(victims)
    assert not before.unknown_ids
    assert not serving.send_time(victims).unknown_ids
    report = forget(workdir, victims, bundle=serving)
    return Forgotten(workdir, serving, victims, seeds, report)


def assert_gone_everywhere(bundle: ModelBundle, victims: list[str], seeds: list[str]) -> None:
    """No answer of the bundle (nor a segment or export built on it) names a victim."""
    result = bundle.score(victims)
    assert result.frame.empty and sorted(result.unknown_ids) == sorted(victims)
    assert sorted(bundle.send_time(victims + seeds[1:3]).unknown_ids) == sorted(victims)
    everyone = bundle.send_time(None).frame["profile_id"]
    assert not set(victims) & set(everyone)
    audience = bundle.lookalike(seeds, reach=0.5)  # the largest audience a request may ask
    assert not set(victims) & set(audience.frame["profile_id"])
    assert audience.diagnostics["seeds_matched"] == len(seeds) - len(set(seeds) & set(victims))
    with pytest.raises((UnknownProfileError, RequestError)):  # unknown, or an empty seed
        bundle.lookalike(victims, size=10)
    matched = evaluate({"feature": "event_count_total", "op": ">=", "value": 0}, bundle)
    assert not set(victims) & set(matched)
    frame, report = activation.export_frame(bundle, [*victims, *seeds[1:4]], send_time=True)
    assert list(frame["profile_id"]) == seeds[1:4]
    assert report.dropped_erased + report.dropped_not_eligible == len(victims)
    scores = activation.export_frame(bundle, activation.score_audience(bundle))[0]
    assert not set(victims) & set(scores["profile_id"])


def files_mention(workdir: Path, victims: list[str]) -> list[str]:
    """Data files of the workdir (bundles, event store) that still hold a victim's id."""
    hits = []
    for path in sorted(workdir.rglob("*.parquet")):
        frame = pd.read_parquet(path)
        values = set()
        for column in frame.columns:
            if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
                values |= set(frame[column].dropna().astype(str))
        values |= set(map(str, frame.index))
        if set(victims) & values:
            hits.append(str(path.relative_to(workdir)))
    return hits


# ------------------------------------------------------------------ tests


def test_forgotten_profiles_vanish_from_the_serving_bundle_at_once(forgotten: Forgotten) -> None:
    assert_gone_everywhere(forgotten.serving, forgotten.victims, forgotten.seeds)


def test_forgotten_profiles_are_removed_from_the_bundle_on_disk(forgotten: Forgotten) -> None:
    report, workdir = forgotten.report, forgotten.workdir
    assert report.requested == report.newly_erased == report.in_bundle == 4
    assert report.removed["scores"] == report.removed["send_time"] == 4
    assert report.removed["lookalike"] == 4 and report.removed["cookies"] >= 1
    assert report.cookies_erased >= report.removed["cookies"]
    assert any(p.startswith("anon:") for p in read_erasure_list(workdir) - set(forgotten.victims))
    versions = [p.name for p in (workdir / "bundles").iterdir()]
    assert versions == [report.bundle_version]  # older versions held them
    reloaded = load_bundle(workdir)  # checksums verified: a valid, published bundle
    assert reloaded.version == report.bundle_version
    assert_gone_everywhere(reloaded, forgotten.victims, forgotten.seeds)
    assert files_mention(workdir, forgotten.victims) == []
    assert read_erasure_list(workdir) >= set(forgotten.victims)
    assert sum(report.events_removed.values()) > 0
    history = store.history_events(workdir)
    assert not history["profile_id"].isin(forgotten.victims).any()
    assert any("mlflow gc" in line for line in report.remains)


@pytest.mark.slow
def test_a_retrain_on_the_same_events_never_brings_them_back(
    forgotten: Forgotten,
    demo_world: DemoWorld,
    copy_workdir: CopyWorkdir,
    train_settings: Settings,
    tmp_path: Path,
) -> None:
    workdir = copy_workdir(forgotten.workdir, tmp_path / "w")
    assert demo_world.events["profile_id"].isin(forgotten.victims).any()
    result = train(  # the original events, victims included
        demo_world.events,
        "end",
        workdir,
        profiles=demo_world.profiles,
        consent=demo_world.consent,
        settings=train_settings,
    )
    assert all(step.status == "trained" for step in result.steps.values())
    retrained = load_bundle(workdir)
    assert retrained.version == result.version
    assert_gone_everywhere(retrained, forgotten.victims, forgotten.seeds)
    assert [p for p in files_mention(workdir, forgotten.victims) if "bundles" in p] == []
    assert not store.history_events(workdir)["profile_id"].isin(forgotten.victims).any()


def test_forget_twice_is_harmless_and_bad_ids_are_refused(forgotten: Forgotten) -> None:
    again = forget(forgotten.workdir, forgotten.victims[:2])
    assert again.newly_erased == 0 and again.in_bundle == 0
    assert again.bundle_version == forgotten.report.bundle_version  # nothing to re-publish
    for bad in ("p000001", [], ["   "], ["a\nb"], [3.5]):
        with pytest.raises(RequestError) as caught:
            forget(forgotten.workdir, bad)  # type: ignore[arg-type]
        assert caught.value.field.startswith("profile_ids")


def test_an_erasure_that_raced_a_train_is_applied_afterwards(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    victim = str(load_bundle(workdir).features.frame.index[-1])
    add_to_erasure_list(workdir, [victim])  # listed, but the live bundle still has it
    report = apply_erasure_list(workdir)
    assert report is not None and report.in_bundle == 1
    assert victim not in load_bundle(workdir).features.frame.index
    assert apply_erasure_list(workdir) is None


def test_forget_without_a_bundle_still_records_the_erasure(tmp_path: Path) -> None:
    report = forget(tmp_path, ["p1", " p1 ", "p2"])
    assert report.requested == 2 and report.bundle_version is None
    assert read_erasure_list(tmp_path) == {"p1", "p2"}


# ------------------------------------------------------------------ hostile ids, killed writers


def holders(workdir: Path, profile_id: str) -> list[str]:
    """Every file under ``workdir`` (but the erasure list) that holds ``profile_id``.

    Parquet files are read (any column or the index); every other file is searched for the
    id's bytes as UTF-8 and as UTF-32 (NumPy text arrays).
    """
    needles = [profile_id.encode("utf-8"), profile_id.encode("utf-32-le")]
    found = []
    for path in sorted(p for p in workdir.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.name in (ERASURE_FILE, LEGACY_ERASURE_FILE):
            continue
        if path.suffix == ".parquet":
            try:
                frame = pd.read_parquet(path)
            except Exception:  # a half-written file: search its bytes
                frame = None
            if frame is not None:
                cells = frame.reset_index().astype("string")
                if cells.isin([profile_id]).to_numpy().any():
                    found.append(str(path.relative_to(workdir)))
                continue
        data = path.read_bytes()
        if any(n in data for n in needles):
            found.append(str(path.relative_to(workdir)))
    return found


@pytest.mark.parametrize(
    "bad", ["nobody\u2028p000020", "a\nb", "a\rb", "a\u2029b", "a\x85b", "a\x00b", "a\x1bb", "a\tb"]
)
def test_ids_holding_a_separator_or_control_character_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RequestError) as caught:
        forget(tmp_path, ["fine", bad])
    assert caught.value.field == "profile_ids[1]"
    assert "U+" in caught.value.message
    assert read_erasure_list(tmp_path) == frozenset()  # nothing half-recorded


def test_the_erasure_list_round_trips_any_id_and_migrates_the_old_format(tmp_path: Path) -> None:
    odd = ['quote"d', "back\\slash", "é-ü", "emoji-\U0001f600", "sp ace", "x\u2028y"]
    add_to_erasure_list(tmp_path, odd)  # the library stores whatever it is given, exactly
    assert read_erasure_list(tmp_path) == frozenset(odd)
    assert (tmp_path / ERASURE_FILE).read_bytes().isascii()  # one line per id, always

    old = tmp_path / "old"
    old.mkdir()
    # the old one-id-per-line list, holding a line that the old reader split in two
    (old / LEGACY_ERASURE_FILE).write_text("p1\np2\nnobody\u2028p3\n", encoding="utf-8")
    before = read_erasure_list(old)
    assert {"p1", "p2", "p3", "nobody", "nobody\u2028p3"} <= before  # nothing erased is lost
    assert add_to_erasure_list(old, ["p4"]) == 1
    assert not (old / LEGACY_ERASURE_FILE).exists()
    assert read_erasure_list(old) == before | {"p4"}


def test_forget_of_an_unreadable_live_bundle_says_so_and_the_next_readable_load_scrubs(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    bundle = load_bundle(workdir)
    victim, other = [p for p in bundle.features.frame.index if not p.startswith("anon:")][:2]
    features = bundle.path / "features" / "features.parquet"
    intact = features.read_bytes()
    features.write_bytes(intact[: len(intact) // 2])  # truncated on disk

    report = forget(workdir, [victim], bundle=bundle)
    assert not report.complete
    assert report.to_dict()["status"] == "incomplete"
    assert list(report.not_scrubbed) == [f"bundles/{bundle.path.name}"]
    assert report.bundle_version is None
    assert bundle.score([victim]).unknown_ids == [victim]  # the loaded copy stops at once

    features.write_bytes(intact)  # repaired (or restored from a backup)
    again = forget(workdir, [other])
    assert again.complete and again.in_bundle == 2  # the earlier victim goes too
    assert holders(workdir, victim) == []


def test_a_train_killed_mid_write_leaves_nothing_after_forget_or_the_next_train(
    trained_workdir: Path,
    copy_workdir: CopyWorkdir,
    demo_world: DemoWorld,
    train_settings: Settings,
    tmp_path: Path,
) -> None:
    killed = copy_workdir(trained_workdir, tmp_path / "killed")
    events = tmp_path / "events.parquet"
    demo_world.events.to_parquet(events, index=False)
    profiles = tmp_path / "profiles.parquet"
    demo_world.profiles.to_parquet(profiles, index=False)
    script = (
        "import sys\n"
        "from dmp_ml.pipeline import train\n"
        "from dmp_ml.settings import Settings\n"
        "settings = Settings.model_validate_json(sys.argv[3])\n"
        "train(sys.argv[1], 'end', sys.argv[2], profiles=sys.argv[4], settings=settings)\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            str(events),
            str(killed),
            train_settings.model_dump_json(),
            str(profiles),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 120
        # the features step writes the hashed contacts; the codec writes the rest at the end
        while not list((killed / "bundles").glob(".tmp-*/contacts.parquet")):
            assert proc.poll() is None, "the train finished before it could be killed"
            assert time.monotonic() < deadline, "no temporary bundle appeared"
            time.sleep(0.05)
        time.sleep(0.3)  # let the contacts be written whole
    finally:
        proc.send_signal(signal.SIGKILL)  # this test's own child, by its id
        proc.wait(timeout=30)
    temporary = list((killed / "bundles").glob(".tmp-*"))
    assert len(temporary) == 1
    victim = str(pd.read_parquet(temporary[0] / "contacts.parquet")["profile_id"].iloc[0])
    assert any(h.startswith("bundles/.tmp-") for h in holders(killed, victim))

    by_train = copy_workdir(killed, tmp_path / "by_train")
    report = forget(killed, [victim])
    assert report.temporary_removed == [temporary[0].name]
    assert not list((killed / "bundles").glob(".tmp-*"))
    assert holders(killed, victim) == []

    train(demo_world.events, "end", by_train, settings=train_settings)
    assert not list((by_train / "bundles").glob(".tmp-*"))
