"""The event spool: ``POST /events`` batches stored durably at once, applied in the background.

Applying a batch (:meth:`dmp_ml.refresh.Refresher.apply`) re-publishes the bundle and takes
seconds under the workdir lock, so answering only after it made every client queue behind the
others. Instead a batch is

1. **accepted** (:func:`accept`): checked against the data contract for its counts, then
   written to ``W/events/spool/<batch>.parquet`` (fsynced, renamed into place) before the
   answer; nothing acknowledged is lost, whatever happens next;
2. **applied** (:func:`drain`): by one background applier per workdir at a time, which takes
   every spooled batch (oldest first, up to ``max_rows``), applies them together as one refresh
   (one re-publish for all of them), writes each batch's outcome to
   ``W/events/batches/<batch>.json`` and only then deletes the spooled files.

:func:`batch_status` tells a client where its batch is: ``queued`` (with the batches ahead and
an estimate), ``applied`` (with the bundle version that holds it and ``seconds_to_visible``)
or unknown. Erasure holds for spooled events: ``forget`` purges the spool like every event
file, and the refresh drops rows of erased profiles before storing anything. A crash between
applying and deleting re-applies the batches; the refresh quarantines exact re-sends as
``duplicate_event``, so nothing counts twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from dmp_ml import layout, store
from dmp_ml.errors import RequestError, storage_errors, storage_errors_in
from dmp_ml.files import fsync_dir, write_json_atomic

if TYPE_CHECKING:
    from dmp_ml.refresh import Refresher, RefreshReport

logger = logging.getLogger(__name__)

_BATCH = re.compile(r"^[0-9]{8}T[0-9]{12}-[0-9a-f]{8}$")
STATUS_KEEP_SECONDS = 7 * 24 * 3600
"""How long the outcome of an applied batch stays queryable."""


def spool_dir(workdir: str | Path) -> Path:
    return layout.spool_dir(workdir)


def status_dir(workdir: str | Path) -> Path:
    return layout.spool_status_dir(workdir)


@dataclass(frozen=True)
class Accepted:
    """A batch durably spooled: its id, its contract counts, and the queue in front of it."""

    batch: str
    accepted_at: str
    rows_received: int
    rows_valid: int
    quarantined_by_reason: dict[str, int]
    queued_batches: int
    estimated_seconds_to_visible: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "accepted",
            "batch": self.batch,
            "accepted_at": self.accepted_at,
            "rows_received": self.rows_received,
            "rows_valid": self.rows_valid,
            "quarantined_by_reason": dict(self.quarantined_by_reason),
            "queued_batches": self.queued_batches,
            "estimated_seconds_to_visible": self.estimated_seconds_to_visible,
        }


@storage_errors_in(lambda workdir, *_, **__: workdir)
def accept(workdir: str | Path, events: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Accepted:
    """Check ``events`` against the contract and spool them durably; return the receipt.

    RequestError for a body that is not a list of event objects (nothing is stored). Rows the
    contract refuses are counted here and quarantined with their reason when the batch is
    applied (the same check runs again there), never dropped silently.
    """
    from dmp_ml.refresh import as_text_frame, validate_events

    checked = validate_events(events)  # RequestError for a malformed body
    frame = events if isinstance(events, pd.DataFrame) else pd.DataFrame.from_records(events)
    now = pd.Timestamp.now(tz="UTC")
    batch = store.new_batch_name(now)
    folder = spool_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{batch}.{uuid.uuid4().hex[:6]}.tmp"
    try:
        text = as_text_frame(frame)
        text.attrs = {}
        text.to_parquet(tmp, index=False)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, folder / f"{batch}.parquet")
        fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
    report = checked.report
    queued = len(pending(workdir))
    return Accepted(
        batch=batch,
        accepted_at=now.isoformat(),
        rows_received=int(report.rows_read),
        rows_valid=int(report.rows_loaded),
        quarantined_by_reason={str(k): int(v) for k, v in report.quarantined_by_reason.items()},
        queued_batches=queued,
        estimated_seconds_to_visible=_estimate(workdir, queued),
    )


def pending(workdir: str | Path) -> list[Path]:
    """Spooled batches not applied yet, oldest first."""
    folder = spool_dir(workdir)
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def batch_status(workdir: str | Path, batch: str) -> dict[str, Any]:
    """Where ``batch`` is: ``queued`` (with the batches ahead), ``applied`` or ``unknown``."""
    if not _BATCH.match(batch):
        raise RequestError("batch", "not a batch id (as returned by POST /events)")
    # The queue is read before the applied record: the applier writes the record, then
    # removes the spooled file, so a batch gone from the queue has its record by then.
    queue = [p.stem for p in pending(workdir)]
    if batch in queue:
        ahead = queue.index(batch)
        return {
            "status": "queued",
            "batch": batch,
            "batches_ahead": ahead,
            "estimated_seconds_to_visible": _estimate(workdir, ahead + 1),
            "last_error": _read_state(workdir).get("last_error"),
        }
    done = status_dir(workdir) / f"{batch}.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    return {"status": "unknown", "batch": batch}


def applier_lock(workdir: str | Path) -> AbstractContextManager[bool]:
    """True when this process is now the workdir's one applier, False if another is."""
    return store.lock_if_free(layout.applier_lock(workdir))


@dataclass(frozen=True)
class Drained:
    """One background application: the batches applied together and the refresh's report."""

    batches: list[str]
    report: RefreshReport
    seconds: float


def drain(
    workdir: str | Path,
    refresher: Refresher,
    max_rows: int = 200_000,
    on_applied: Callable[[RefreshReport], object] | None = None,
) -> Drained | None:
    """Apply the spooled batches (oldest first, up to ``max_rows`` rows) as one refresh.

    ``on_applied`` runs once the new bundle is published, before any batch is reported
    ``applied`` (a service worker loads the bundle there, so ``applied`` means it answers
    with it). None when nothing is spooled or another process is applying. On failure (a
    full disk, no bundle) the batches stay spooled for the next call and the error is
    recorded for :func:`batch_status`; the exception is raised.
    """
    workdir = Path(workdir)
    with applier_lock(workdir) as mine:
        if not mine:
            return None
        files = pending(workdir)
        if not files:
            return None
        started = time.perf_counter()
        frames, taken, rows = [], [], 0
        for path in files:
            frame = pd.read_parquet(path)
            if taken and rows + len(frame) > max_rows:
                break
            frames.append(frame)
            taken.append(path)
            rows += len(frame)
        combined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        try:
            report = refresher.apply(combined)
        except Exception as exc:
            _write_state(workdir, {"last_error": f"{type(exc).__name__}: {exc}"[:500]})
            raise
        if on_applied is not None:
            on_applied(report)
        seconds = time.perf_counter() - started
        applied_at = pd.Timestamp.now(tz="UTC")
        refresh = {
            k: v
            for k, v in report.to_dict().items()
            if k not in ("created_ids", "stored_path", "quarantine_path", "batch")
        }
        with storage_errors(workdir):
            for path, frame in zip(taken, frames, strict=True):
                accepted_at = _accepted_at(path.stem)
                status = {
                    "status": "applied",
                    "batch": path.stem,
                    "rows": len(frame),
                    "accepted_at": accepted_at.isoformat(),
                    "applied_at": applied_at.isoformat(),
                    "seconds_to_visible": round((applied_at - accepted_at).total_seconds(), 3),
                    "bundle_version": report.bundle_version,
                    "applied_with": len(taken),
                    "refresh": refresh,  # the counts of the whole application (no ids)
                }
                write_json_atomic(status_dir(workdir) / f"{path.stem}.json", status)
            for path in taken:
                path.unlink(missing_ok=True)
            _write_state(workdir, {"last_error": None, "last_apply_seconds": round(seconds, 3)})
            _prune_statuses(workdir, applied_at)
        logger.info(
            "applied %d spooled batches (%d rows) in %.2f s: bundle %s",
            len(taken),
            rows,
            seconds,
            report.bundle_version,
        )
        return Drained([p.stem for p in taken], report, seconds)


# --------------------------------------------------------------------------- helpers


def _accepted_at(batch: str) -> pd.Timestamp:
    return pd.Timestamp(
        f"{batch[0:4]}-{batch[4:6]}-{batch[6:8]}T{batch[9:11]}:{batch[11:13]}:{batch[13:15]}"
        f".{batch[15:21]}",
        tz="UTC",
    )


def _estimate(workdir: str | Path, applications: int) -> float | None:
    """Seconds until visible: the last application's duration per application ahead."""
    last = _read_state(workdir).get("last_apply_seconds")
    return None if last is None else round(float(last) * max(1, applications), 1)


def _read_state(workdir: str | Path) -> dict[str, Any]:
    path = layout.spool_state(workdir)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(workdir: str | Path, update: Mapping[str, Any]) -> None:
    state = {**_read_state(workdir), **dict(update)}
    write_json_atomic(layout.spool_state(workdir), state)


def _prune_statuses(workdir: str | Path, now: pd.Timestamp) -> None:
    folder = status_dir(workdir)
    limit = now.timestamp() - STATUS_KEEP_SECONDS
    for path in folder.glob("*.json"):
        if path.stat().st_mtime < limit:
            path.unlink(missing_ok=True)
