"""No event moves a bundle's feature clock past the wall clock (issue 17).

Before: one event dated 2200 in a batch moved ``features_as_of`` to 2200-01-02, and the next
refresh silently removed the profiles it touched (their cookies "expired").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dmp_ml import layout, store
from dmp_ml.bundle import load_bundle
from dmp_ml.refresh import Refresher


def test_a_far_future_event_is_quarantined_and_the_clock_stays(
    trained_workdir: Path, copy_workdir: Callable[[Path, Path], Path], tmp_path: Path
) -> None:
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    bundle = load_bundle(workdir)
    people = bundle.features.frame.index
    first, second = [p for p in people if not str(p).startswith("anon:")][:2]
    refresher = Refresher(workdir)

    future = refresher.apply(
        [{"event_time": "2200-01-01T00:00:00Z", "profile_id": first, "event_type": "purchase"}]
    )
    assert future.rows_accepted == 0
    assert future.quarantined_by_reason == {"future_time": 1}

    when = bundle.as_of + pd.Timedelta(hours=3)
    normal = refresher.apply(
        [{"event_time": when.isoformat(), "profile_id": second, "event_type": "page_view"}]
    )
    assert normal.rows_accepted == 1
    assert normal.profiles_removed == 0
    assert normal.profiles_updated == 1
    assert pd.Timestamp(normal.features_as_of) == when.floor("D") + pd.Timedelta(days=1)
    assert first in load_bundle(workdir).features.frame.index


def test_a_stored_future_batch_cannot_move_the_clock_either(
    trained_workdir: Path, copy_workdir: Callable[[Path, Path], Path], tmp_path: Path
) -> None:
    """A batch stored by an older version (never validated against the clock) is capped."""
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    bundle = load_bundle(workdir)
    person = next(p for p in bundle.features.frame.index if not str(p).startswith("anon:"))
    old = pd.DataFrame(
        {
            "event_time": [pd.Timestamp("2200-01-01", tz="UTC")],
            "profile_id": [person],
            "event_type": ["purchase"],
        }
    )
    name = store.new_batch_name(pd.Timestamp.now(tz="UTC"))
    store.write_parquet_atomic(
        store.contract_frame(old),
        layout.incoming_dir(workdir) / f"{name}.parquet",
    )
    report = Refresher(workdir).catch_up()
    assert report is not None
    assert pd.Timestamp(report.features_as_of) == bundle.as_of  # the clock did not move
    assert report.profiles_removed == 0
    assert person in load_bundle(workdir).features.frame.index
