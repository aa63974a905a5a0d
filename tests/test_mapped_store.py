"""The bundle's per-profile arrays are mapped, so a worker's private memory does not grow with
the population: loading a 10x larger model adds little private memory, the feature table and
the scores come from mapped files, and a refresh that changes a few rows stays correct."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from dmp_ml.bundle import ModelBundle, load_bundle
from dmp_ml.mapped import is_mapped
from dmp_ml.refresh import apply_events

_LOAD = r"""
import gc, json, sys
# no transparent huge pages: where the kernel grants them to every allocation, each counts
# in 2 MB steps and private memory measures the rounding, not what the model holds
from dmp_ml.pages import disable_huge_pages
disable_huge_pages()
from pathlib import Path
import numpy as np
from dmp_ml.models import model_class

from dmp_ml.peak_memory import private_bytes

def private_anon():
    gc.collect()
    return private_bytes()

name, path = sys.argv[1], Path(sys.argv[2])
cls = model_class(name)
import faiss, pandas as pd
pd.read_parquet(next(path.glob("*.parquet")))  # Arrow's pools set up before measuring
before = private_anon()
model = cls.load(path, n_threads=1)
loaded = private_anon() - before
if name == "lookalike":  # every page read: the vectors summed and searched
    total = float(model.vectors_.sum(dtype=np.float64) + model.raw_.sum(dtype=np.float64))
    model.index_.search(np.asarray(model.vectors_[:5]), 10)
else:
    total = float(model.local_shape_.sum() + model.local_shape_sd_.sum())
print(json.dumps({"private": private_anon() - before, "loaded": loaded, "total": total}))
"""


def _grown(name: str, path: Path, runs: int = 3) -> int:
    """Private memory a fresh process gains by loading the model: the least of a few runs,
    since the allocator's arenas add a few megabytes of noise to any single reading."""
    readings = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _LOAD, name, str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, path.name, result)
        readings.append(int(result["private"]))
    return min(readings)


def _ids(ids: pd.Index, copies: int) -> pd.Index:
    text = [f"{p}#{k}" for k in range(copies) for p in ids]
    return pd.Index(pd.array(text, dtype="string"), name="profile_id")


def _mapped_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".npy", ".faiss"))


def test_loading_a_10x_larger_model_adds_little_private_memory(
    trained_workdir: Path, tmp_path: Path
) -> None:
    """The trained models' per-profile rows replicated 10 times (saved by the models' own
    ``save``) load with private memory that grows far less than the files they map."""
    bundle = load_bundle(trained_workdir, n_threads=1)
    look, send = bundle.lookalike_model, bundle.send_time_model
    assert look is not None and send is not None
    copies = 10
    look.save(tmp_path / "look1")
    send.save(tmp_path / "send1")
    n = len(look.profile_ids_)
    look.raw_ = np.tile(look.raw_, (copies, 1))
    look.codes_ = np.tile(look.codes_, (copies, 1))
    look.vectors_ = np.tile(look.vectors_, (copies, 1))
    look.removed_ = np.tile(look.removed_, copies)
    look.profile_ids_ = _ids(look.profile_ids_, copies)
    look.index_ = look.new_index().fit(np.ascontiguousarray(look.vectors_))
    look.save(tmp_path / "look10")
    ids = send.profile_ids_
    send.take_profiles(np.tile(np.arange(len(ids)), copies))
    send.profile_ids_ = _ids(ids, copies)
    send.save(tmp_path / "send10")

    added_files = growth = 0
    for name, small, large in (
        ("lookalike", tmp_path / "look1", tmp_path / "look10"),
        ("send_time", tmp_path / "send1", tmp_path / "send10"),
    ):
        added_files += _mapped_bytes(large) - _mapped_bytes(small)
        growth += _grown(name, large) - _grown(name, small)
    assert added_files > 9 * n * 2000  # the large models map megabytes more
    # what remains private per profile is its id in each model's id index (the text and
    # pandas' hash table, about 150-500 bytes); the mapped curves and vectors are not copied
    assert growth < 0.5 * added_files, (growth, added_files)


def _tables_mapped(bundle: ModelBundle) -> None:
    table, scores = bundle.features, bundle.scores
    assert scores is not None
    assert is_mapped(np.asarray(table.hour_of_week))  # (built on first use after a delta)
    floats = [c for c in table.frame.columns if table.frame[c].dtype == np.float64]
    assert len(floats) > 100
    assert all(is_mapped(table.frame[c].to_numpy()) for c in floats)
    assert is_mapped(scores["score"].to_numpy()) and is_mapped(scores["percentile"].to_numpy())
    # answers read through the id index: one index shared by the table and the scores
    assert scores.index is table.frame.index


def test_feature_table_and_scores_are_mapped_and_a_refresh_of_a_few_profiles_is_correct(
    trained_workdir: Path, copy_workdir: Callable[[Path, Path], Path], tmp_path: Path
) -> None:
    """Loading maps the feature table and the scores (only ids and categories are read); a
    refresh of existing profiles, which writes their rows in place (copy-on-write), gives the
    same features and scores as one that rebuilds the table, and the old files are intact."""
    before = load_bundle(trained_workdir, n_threads=1)
    _tables_mapped(before)
    affinity = before.affinity_model
    assert affinity is not None and is_mapped(affinity.channel_counts_)
    assert is_mapped(affinity.category_counts_.data) and is_mapped(affinity.category_counts_.indptr)
    # every model with the table's profile list shares the table's id index
    for name in ("send_time", "lookalike", "affinity"):
        assert before.models[name].profile_ids_ is before.features.frame.index, name
    frame = before.features.frame
    known = [p for p in frame.index if not p.startswith("anon:")]
    touched = frame.loc[known, "event_count_30d"].sort_values(ascending=False).index[:3]
    t = before.as_of
    batch = [
        {
            "event_time": (t - pd.Timedelta(hours=k + 1)).isoformat(),
            "profile_id": str(p),
            "event_type": "page_view",
            "channel": "web",
        }
        for k, p in enumerate(touched)
    ]
    newcomer = {  # the same batch with a new profile: the table is rebuilt, not edited
        "event_time": (t - pd.Timedelta(hours=9)).isoformat(),
        "profile_id": "p-newcomer",
        "event_type": "page_view",
        "channel": "web",
    }
    in_place = copy_workdir(trained_workdir, tmp_path / "in_place")
    rebuilt = copy_workdir(trained_workdir, tmp_path / "rebuilt")
    assert apply_events(in_place, batch).profiles_updated == 3
    report = apply_events(rebuilt, [*batch, newcomer])
    assert report.profiles_updated == 3 and report.profiles_created == 1

    a, b = load_bundle(in_place, n_threads=1), load_bundle(rebuilt, n_threads=1)
    _tables_mapped(a)
    # the lookalike model takes the batch's rows (3 updated, 1 new) over its mapped base: the
    # FAISS index and the vectors stay the file's pages, the 4 rows are its own
    look = b.lookalike_model
    assert look is not None and look.index_.mapped_ and look.index_.side_.ntotal == 4
    assert is_mapped(look.vectors_.base) and len(look.vectors_) == len(frame) + 1
    assert look.index_.ntotal == len(frame) + 1
    # so do the affinity counts and the send-time curves: the batch's rows over the mapped base
    counts, curves = b.affinity_model, b.send_time_model
    assert counts is not None and is_mapped(counts.channel_counts_.base)
    assert is_mapped(counts.category_counts_.base.indices)
    assert curves is not None and is_mapped(curves.local_shape_.base)
    after = a.features.frame
    assert (
        after.loc[touched, "event_count_total"] == frame.loc[touched, "event_count_total"] + 1
    ).all()
    others = frame.index.difference(touched)
    pd.testing.assert_frame_equal(after.loc[others], frame.loc[others])
    same = b.features.frame.drop(index="p-newcomer")
    pd.testing.assert_frame_equal(after, same)
    rows = b.features.frame.index.get_indexer(after.index)
    np.testing.assert_array_equal(a.features.hour_of_week, b.features.hour_of_week[rows])
    assert not np.array_equal(
        a.features.hour_of_week[after.index.get_indexer(touched)],
        before.features.hour_of_week[frame.index.get_indexer(touched)],
    )
    ids = list(touched) + [str(p) for p in others[:50]]
    pd.testing.assert_frame_equal(a.score(ids).frame, b.score(ids).frame)
    # their raw scores are recomputed (the calibrated ones may sit on one isotonic step)
    assert not np.allclose(
        a.scores.loc[touched, "raw"].to_numpy(), before.scores.loc[touched, "raw"].to_numpy()
    )
    # the bundle the refresh started from is unchanged on disk (its checksums hold) and in
    # the process that still has it mapped
    old = load_bundle(before.path, n_threads=1)
    pd.testing.assert_frame_equal(old.features.frame, frame)
    pd.testing.assert_frame_equal(old.score(ids).frame, before.score(ids).frame)


def test_a_loaded_bundle_reads_the_cookie_links_only_when_asked(trained_workdir: Path) -> None:
    """Answers never need the cookie links (one per cookie: the table's largest private part
    after the ids), so loading and answering leave them in their file; a refresh, an erasure
    or an attribution reads them, as the file holds them."""
    bundle = load_bundle(trained_workdir, n_threads=1)
    ids = bundle.features.frame.index[:20].tolist()
    bundle.score(ids)
    bundle.send_time(ids)
    bundle.lookalike(ids[:10], size=50)
    links = bundle.features.links
    assert isinstance(links, Path)
    stored = pd.read_parquet(links)
    cookie_map = bundle.features.cookie_map
    assert cookie_map is not None and bundle.features.links is cookie_map
    assert cookie_map.to_dict() == dict(zip(stored["cookie_id"], stored["profile_id"], strict=True))


_ANSWER = r"""
import gc, json, sys
from dmp_ml.pages import disable_huge_pages
disable_huge_pages()
from pathlib import Path
from dmp_ml.bundle import load_bundle
from dmp_ml.models import REGISTRY, model_class
for name in REGISTRY:
    model_class(name)
import faiss, lightgbm  # noqa: F401

from dmp_ml.peak_memory import private_bytes

def private_anon():
    gc.collect()
    return private_bytes()

import pandas as pd
pd.read_parquet(next(Path(sys.argv[1]).rglob("*.parquet")))  # Arrow's pools set up first
start = private_anon()
bundle = load_bundle(Path(sys.argv[1]), n_threads=1)
loaded = private_anon() - start
index = bundle.features.frame.index
ids = [index[i] for i in range(0, len(index), max(1, len(index) // 60))][:60]
before = private_anon()
for _ in range(3):
    assert len(bundle.score(ids + ["nobody"]).frame) == len(ids)
    bundle.send_time(ids)
    bundle.lookalike(ids[:20], size=100, exclude_ids=ids[20:])
print(json.dumps({"loaded": loaded, "answered": private_anon() - before, "profiles": len(index)}))
"""


def _replicated(bundle: ModelBundle, directory: Path, copies: int) -> Path:
    """``bundle`` with every profile ``copies`` times (new ids, the feature table, scores,
    send-time curves and lookalike vectors tiled), written by the bundle's own codec."""
    from dmp_ml.bundle import save_bundle

    table, scores = bundle.features, bundle.scores
    look, send, propensity = bundle.lookalike_model, bundle.send_time_model, bundle.propensity
    assert scores is not None and look is not None and send is not None and propensity is not None
    look, send = copy.copy(look), copy.copy(send)
    frame = pd.concat([table.frame] * copies)
    frame.index = _ids(table.frame.index, copies)
    how = np.tile(np.asarray(table.hour_of_week), (copies, 1))
    features = replace(table, data=frame, hour_of_week=how, links=None)
    tiled = pd.concat([scores] * copies).set_axis(_ids(scores.index, copies))
    look.raw_ = np.tile(np.asarray(look.raw_), (copies, 1))
    look.codes_ = np.tile(np.asarray(look.codes_), (copies, 1))
    look.vectors_ = np.tile(np.asarray(look.vectors_), (copies, 1))
    look.removed_ = np.tile(look.removed_, copies)
    look.profile_ids_ = _ids(look.profile_ids_, copies)
    look.index_ = look.new_index().fit(np.ascontiguousarray(look.vectors_))
    ids = send.profile_ids_
    send.take_profiles(np.tile(np.arange(len(ids)), copies))
    send.profile_ids_ = _ids(ids, copies)
    manifest = copy.deepcopy(bundle.manifest)
    manifest.pop("files", None)
    manifest["steps"]["affinity"] = {"status": "skipped", "reason": "not replicated"}
    models = {"propensity": propensity, "send_time": send, "lookalike": look}
    save_bundle(directory, features=features, models=models, scores=tiled, manifest=manifest)
    return directory


_QUIET_ALLOCATORS = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "GLIBC_TUNABLES": "",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def _growth(path: Path, runs: int = 3) -> tuple[int, int]:
    """Private memory a process gains by loading the bundle at ``path``, and then by answering
    from it (score, send time, lookalike): the least of a few runs each (the allocator's
    arenas add noise).
    Arrays of 64 kB and more are mapped and unmapped by the allocator (glibc's threshold,
    fixed): what an answer only passes through (its work over the population's vectors)
    goes back to the system instead of staying in a heap grown to its high-water mark. The
    allocator's other tunables are its defaults (``glibc.malloc.hugetlb=1`` in the caller's
    environment would grow the heap in huge-page steps: megabytes of noise, not data). Arrow
    allocates from the C library too: its own allocator keeps what each reading thread freed
    in that thread's heap, up to 12 MB of noise from one run to the next."""
    readings = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _ANSWER, str(path)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **_QUIET_ALLOCATORS},
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(path.name, result)
        readings.append((int(result["loaded"]), int(result["answered"])))
    return min(r[0] for r in readings), min(r[1] for r in readings)


def test_loading_and_answering_from_a_30x_larger_bundle_add_no_private_memory_per_profile(
    trained_workdir: Path, tmp_path: Path
) -> None:
    """A worker that loads a bundle with 30 times the profiles holds the same private memory:
    the per-profile arrays (the send-time model's codes and rates among them) are mapped,
    and the buffers of the bundle's Parquet reads are given back once it is loaded; what is
    left is under 100 bytes a profile (the ids' text, FAISS's id map). Every id lookup of
    ``score``, ``send_time`` and ``lookalike`` (requested ids, seeds, exclusions,
    eligibility) searches the bundle's mapped id index, so answering costs the same too. A
    hash table over the ids, what pandas builds on a first lookup, would add about 85 bytes a
    profile (2-3 MB here). The lookalike request stays under the seed count that fits a
    classifier, whose work over the population's vectors is not a lookup."""
    bundle = load_bundle(trained_workdir, n_threads=1)
    small = _replicated(bundle, tmp_path / "x1", 1)
    large = _replicated(bundle, tmp_path / "x30", 30)
    n = len(bundle.features)
    (loaded_small, answered_small), (loaded_large, answered_large) = _growth(small), _growth(large)
    assert loaded_large - loaded_small < 3_000_000, (loaded_small, loaded_large, 29 * n)
    assert answered_large - answered_small < 1_000_000, (answered_small, answered_large, 29 * n)
