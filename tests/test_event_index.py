"""The event store's index: a refresh reads the touched profiles' history through it, gets
exactly the rows (and order) a filtered read of the whole base file gives, never uses an
index of other events, and no index outlives a forget of the events it holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml import layout, store
from dmp_ml.erasure import forget
from dmp_ml.event_index import ensure_index, open_index
from dmp_ml.models.propensity import PropensityModel
from dmp_ml.refresh import Refresher

CopyWorkdir = Callable[[Path, Path], Path]


@pytest.fixture(scope="module")
def workdir(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return copy_workdir(trained_workdir, tmp_path_factory.mktemp("index") / "w")


def _some(values: pd.Series, n: int, seed: int) -> list[str]:
    pool = values.dropna().astype(str).unique()
    return [str(v) for v in np.random.default_rng(seed).choice(pool, min(n, len(pool)), False)]


def test_reads_through_the_index_equal_filtering_the_whole_file(workdir: Path) -> None:
    index = open_index(workdir)
    assert index is not None  # train built it with the history
    base = store.read_events_file(layout.base_events(workdir))
    links = ["profile_id", "cookie_id"]
    for seed in range(3):
        profiles = [*_some(base["profile_id"], 25, seed), "no-such-profile"]
        cookies = [*_some(base["cookie_id"], 25, seed), "no-such-cookie"]
        for kw in (
            {"profiles": profiles},
            {"cookies": cookies},
            {"profiles": profiles, "cookies": cookies},
            {"profiles": profiles, "columns": links},
            {"cookies": cookies, "columns": links},
            {"profiles": ["no-such-profile"]},
        ):
            filtered = store.history_of(workdir, **kw)  # type: ignore[arg-type]
            indexed = store.history_of(workdir, index=index, **kw)  # type: ignore[arg-type]
            pd.testing.assert_frame_equal(indexed, filtered)
        assert len(store.history_of(workdir, profiles=profiles, index=index)) > 0


def test_an_index_of_other_events_is_never_used(
    workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    own = copy_workdir(workdir, tmp_path / "w")
    base = layout.base_events(own)
    events = store.read_events_file(base)
    store.write_parquet_atomic(events.iloc[: len(events) // 2], base)  # the base rewritten
    assert open_index(own) is None
    rebuilt = ensure_index(own)
    assert rebuilt is not None
    profiles = _some(events["profile_id"], 40, 0)
    pd.testing.assert_frame_equal(
        store.history_of(own, profiles=profiles, index=rebuilt),
        store.history_of(own, profiles=profiles),
    )


def test_an_index_of_a_base_in_many_row_groups_reads_what_filtering_reads(
    workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    """The index reads the base's text as dictionaries, one per row group (a few bytes an
    event): ids spread over many row groups, each with its own dictionary, are indexed as
    the text they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    own = copy_workdir(workdir, tmp_path / "w")
    base = layout.base_events(own)
    events = store.read_events_file(base)
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), base, row_group_size=97)
    assert pq.read_metadata(base).num_row_groups > 10
    rebuilt = ensure_index(own)
    assert rebuilt is not None
    for seed in range(2):
        for kw in (
            {"profiles": _some(events["profile_id"], 40, seed)},
            {"cookies": _some(events["cookie_id"], 40, seed)},
        ):
            pd.testing.assert_frame_equal(
                store.history_of(own, index=rebuilt, **kw),  # type: ignore[arg-type]
                store.history_of(own, **kw),  # type: ignore[arg-type]
            )


def test_forget_leaves_no_index_holding_the_profile(
    workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    own = copy_workdir(workdir, tmp_path / "w")
    base = store.read_events_file(layout.base_events(own))
    gone = _some(base["profile_id"], 1, 7)[0]
    forget(own, [gone])
    assert open_index(own) is None  # dropped with the base's rows
    events_dir = layout.events_dir(own)
    holding = [p.name for p in events_dir.glob("base.*") if gone.encode() in p.read_bytes()]
    assert holding == []
    # the next refresh rebuilds it from the scrubbed base
    as_of = pd.Timestamp(base["event_time"].max()) + pd.Timedelta(hours=1)
    other = _some(base["profile_id"], 1, 8)[0]
    Refresher(own).apply(
        [{"event_time": as_of.isoformat(), "profile_id": other, "event_type": "page_view"}]
    )
    index = open_index(own)
    assert index is not None and len(index.rows("profile_id", [gone])) == 0
    assert all(gone.encode() not in p.read_bytes() for p in events_dir.glob("base.*"))


def test_a_batch_scores_only_its_own_profiles(
    workdir: Path,
    copy_workdir: CopyWorkdir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The percentile of a refreshed score ranks it against the stored raw scores of the
    others: the population is not scored again, whatever its size."""
    own = copy_workdir(workdir, tmp_path / "w")
    base = store.read_events_file(layout.base_events(own))
    scored: list[int] = []
    real = PropensityModel.predict_raw

    def counting(self: PropensityModel, X: pd.DataFrame, which: str = "final") -> np.ndarray:
        scored.append(len(X))
        return real(self, X, which)

    monkeypatch.setattr(PropensityModel, "predict_raw", counting)
    t = pd.Timestamp(base["event_time"].max()) + pd.Timedelta(hours=1)
    batch = [
        {"event_time": t.isoformat(), "profile_id": p, "event_type": "page_view"}
        for p in _some(base["profile_id"], 5, 3)
    ]
    report = Refresher(own).apply(batch)
    touched = report.profiles_updated + report.profiles_created
    assert 0 < touched <= 5
    assert sum(scored) <= touched
