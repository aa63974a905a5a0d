"""The bundle's per-profile arrays are mapped, so a worker's private memory does not grow with
the population: loading a 10x larger model adds little private memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dmp_ml.bundle import load_bundle

_LOAD = r"""
import gc, json, sys
from pathlib import Path
import numpy as np
from dmp_ml.models import model_class

def private_anon():
    gc.collect()
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(l.split()[1]) * 1024 for l in f if l.startswith("Anonymous:"))

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
