"""The event spool: batches durable at once, applied together later, nothing lost, erasure kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dmp_ml import spool, store
from dmp_ml.bundle import load_bundle
from dmp_ml.erasure import forget
from dmp_ml.errors import RequestError
from dmp_ml.refresh import Refresher

CopyWorkdir = Callable[[Path, Path], Path]


def batch(as_of: pd.Timestamp, cookie: str, n: int = 3, profile: str | None = None) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        row = {
            "event_time": (as_of + pd.Timedelta(minutes=10 + i)).isoformat(),
            "cookie_id": cookie,
            "event_type": "product_view",
        }
        if profile is not None:
            row["profile_id"] = profile
        rows.append(row)
    return rows


@pytest.fixture
def workdir(trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path) -> Path:
    return copy_workdir(trained_workdir, tmp_path / "w")


def test_batches_are_durable_at_once_and_applied_together(workdir: Path) -> None:
    as_of = load_bundle(workdir).as_of
    first = spool.accept(workdir, batch(as_of, "ck-spool-1"))
    bad = [{"event_time": as_of.isoformat(), "event_type": "page_view"}]  # neither id
    second = spool.accept(workdir, batch(as_of, "ck-spool-2") + bad)
    assert (first.rows_received, first.rows_valid) == (3, 3)
    assert second.quarantined_by_reason == {"missing_id": 1}
    assert second.queued_batches == 2
    assert [p.stem for p in spool.pending(workdir)] == [first.batch, second.batch]
    assert spool.batch_status(workdir, second.batch)["batches_ahead"] == 1

    applied: list[str] = []
    done = spool.drain(
        workdir, Refresher(workdir), on_applied=lambda r: applied.append(r.bundle_version)
    )
    assert done is not None and done.batches == [first.batch, second.batch]
    assert done.report.rows_accepted == 6 and done.report.rows_quarantined == 1  # one refresh
    assert applied == [done.report.bundle_version]
    assert spool.pending(workdir) == []
    for receipt in (first, second):
        status = spool.batch_status(workdir, receipt.batch)
        assert status["status"] == "applied" and status["applied_with"] == 2
        assert status["bundle_version"] == load_bundle(workdir).version
        assert status["seconds_to_visible"] >= 0
    live = load_bundle(workdir)
    assert {"anon:ck-spool-1", "anon:ck-spool-2"} <= set(live.features.frame.index)
    stored = pd.concat([store.read_events_file(p) for p in store.incoming_batches(workdir)])
    assert set(stored["cookie_id"].dropna()) >= {"ck-spool-1", "ck-spool-2"}  # nothing lost
    assert spool.drain(workdir, Refresher(workdir)) is None  # nothing left


def test_a_failed_application_keeps_the_batches_and_says_why(workdir: Path) -> None:
    as_of = load_bundle(workdir).as_of
    receipt = spool.accept(workdir, batch(as_of, "ck-spool-3"))

    class Broken(Refresher):
        def apply(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(28, "No space left on device", str(workdir / "events"))

    with pytest.raises(OSError):
        spool.drain(workdir, Broken(workdir))
    status = spool.batch_status(workdir, receipt.batch)
    assert status["status"] == "queued" and "No space" in status["last_error"]
    assert spool.drain(workdir, Refresher(workdir)) is not None  # retried: applied
    assert spool.batch_status(workdir, receipt.batch)["status"] == "applied"


def test_forget_purges_spooled_events_and_the_application_honours_the_list(
    workdir: Path,
) -> None:
    bundle = load_bundle(workdir)
    victim = next(p for p in bundle.features.frame.index if not p.startswith("anon:"))
    spool.accept(workdir, batch(bundle.as_of, "ck-victim", profile=victim))
    report = forget(workdir, [victim])
    assert sum(n for k, n in report.events_removed.items() if "/spool/" in k) == 3
    later = spool.accept(workdir, batch(bundle.as_of, "ck-victim-2", profile=victim))
    spool.drain(workdir, Refresher(workdir))
    assert spool.batch_status(workdir, later.batch)["status"] == "applied"
    assert victim not in load_bundle(workdir).features.frame.index
    for path in store.incoming_batches(workdir):
        assert victim not in set(store.read_events_file(path)["profile_id"].dropna())


def test_bad_bodies_and_batch_ids_are_refused_by_field(workdir: Path) -> None:
    with pytest.raises(RequestError) as caught:
        spool.accept(workdir, [])
    assert caught.value.field == "events"
    with pytest.raises(RequestError) as caught:
        spool.accept(workdir, [{"event_time": "2026-01-01"}, "not an object"])  # type: ignore[list-item]
    assert caught.value.field == "events[1]"
    assert spool.pending(workdir) == []
    with pytest.raises(RequestError):
        spool.batch_status(workdir, "../../etc/passwd")
    assert spool.batch_status(workdir, "20260101T000000000000-0123abcd")["status"] == "unknown"


def test_a_batch_applied_while_its_status_is_read_is_reported_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The applier writes the record, then removes the spooled file; a status read that falls
    between the two steps must not call the batch unknown (the service answered 404)."""
    as_of = pd.Timestamp("2026-01-01", tz="UTC")
    receipt = spool.accept(tmp_path, batch(as_of, "ck-race"))
    listing = spool.pending

    def applier_finishes_first(workdir: Path) -> list[Path]:
        # the applier completes right as the status read looks at the queue
        folder = spool.status_dir(workdir)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"status": "applied", "batch": receipt.batch}
        (folder / f"{receipt.batch}.json").write_text(json.dumps(record))
        (spool.spool_dir(workdir) / f"{receipt.batch}.parquet").unlink(missing_ok=True)
        return listing(workdir)

    monkeypatch.setattr(spool, "pending", applier_finishes_first)
    assert spool.batch_status(tmp_path, receipt.batch)["status"] == "applied"
