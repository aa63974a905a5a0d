"""Where everything lives in a workdir ``W``: the one place its paths are named.

::

    W/bundle -> bundles/<version>        the live bundle pointer (see dmp_ml.bundle)
    W/bundles/<version>/                 bundle versions (``.tmp-*`` while being written)
    W/bundles/<version>/delta/           a refresh's rows, over a base version (dmp_ml.delta)
    W/erasure.jsonl                      the erasure list (``erasure.txt``: its former format)
    W/.erasure.lock                      writers of the erasure list serialise on it
    W/.dmp-ml.lock                       writers of bundles and events (forget, refresh)
    W/.dmp-ml-applier.lock               the one spool applier
    W/.dmp-ml-compact.lock               the one compaction
    W/quarantine/<kind>.parquet          rows of training inputs that failed the contract
    W/events/base.parquet                the events the live training used
    W/events/state.json                  which incoming batches base.parquet holds
    W/events/incoming/<batch>.parquet    event batches applied by near-real-time refresh
    W/events/quarantine/<batch>.parquet  rows of those batches that failed the contract
    W/events/spool/<batch>.parquet       batches accepted by POST /events, not applied yet
    W/events/batches/<batch>.json        the outcome of each applied spooled batch
    W/events/spool.json                  the spool applier's state
    W/segments/<name>.json               saved segment rules
    W/campaigns/<name>/                  stored campaigns
    W/mlflow.db                          the MLflow tracking store (see Settings)

Inside a bundle directory: ``consent_state.parquet`` (hashed withdrawals) next to the
models' directories (see :mod:`dmp_ml.bundle`).
"""

from __future__ import annotations

from pathlib import Path

POINTER = "bundle"
VERSIONS_DIR = "bundles"
ERASURE_FILE = "erasure.jsonl"
LEGACY_ERASURE_FILE = "erasure.txt"
ERASURE_LOCK = ".erasure.lock"
LOCK_FILE = ".dmp-ml.lock"
APPLIER_LOCK = ".dmp-ml-applier.lock"
COMPACTION_LOCK = ".dmp-ml-compact.lock"
QUARANTINE_DIR = "quarantine"
EVENTS_DIR = "events"
BASE_EVENTS = "base.parquet"
EVENTS_STATE_FILE = "state.json"
INCOMING_DIR = "incoming"
SPOOL_DIR = "spool"
SPOOL_STATUS_DIR = "batches"
SPOOL_STATE_FILE = "spool.json"
SEGMENTS_DIR = "segments"
CAMPAIGNS_DIR = "campaigns"
MLFLOW_DB = "mlflow.db"
DELTA_DIR = "delta"
"""Inside a delta version's directory: the rows its refresh changed (see dmp_ml.delta)."""
CONSENT_STATE_FILE = "consent_state.parquet"
"""Inside a bundle directory: the hashed ids whose consent was withdrawn."""


def pointer(workdir: str | Path) -> Path:
    """The live bundle pointer (a symbolic link into :func:`versions_dir`)."""
    return Path(workdir) / POINTER


def versions_dir(workdir: str | Path) -> Path:
    """The directory of every bundle version."""
    return Path(workdir) / VERSIONS_DIR


def erasure_file(workdir: str | Path) -> Path:
    return Path(workdir) / ERASURE_FILE


def legacy_erasure_file(workdir: str | Path) -> Path:
    return Path(workdir) / LEGACY_ERASURE_FILE


def erasure_lock(workdir: str | Path) -> Path:
    return Path(workdir) / ERASURE_LOCK


def lock_file(workdir: str | Path) -> Path:
    """The lock writers of bundles and events (forget, refresh) hold."""
    return Path(workdir) / LOCK_FILE


def applier_lock(workdir: str | Path) -> Path:
    return Path(workdir) / APPLIER_LOCK


def compaction_lock(workdir: str | Path) -> Path:
    return Path(workdir) / COMPACTION_LOCK


def quarantine_dir(workdir: str | Path) -> Path:
    """Where ``train`` keeps the rows of its input files that failed the contract."""
    return Path(workdir) / QUARANTINE_DIR


def events_dir(workdir: str | Path) -> Path:
    """The event store (see :mod:`dmp_ml.store`)."""
    return Path(workdir) / EVENTS_DIR


def base_events(workdir: str | Path) -> Path:
    return events_dir(workdir) / BASE_EVENTS


def events_state(workdir: str | Path) -> Path:
    return events_dir(workdir) / EVENTS_STATE_FILE


def incoming_dir(workdir: str | Path) -> Path:
    return events_dir(workdir) / INCOMING_DIR


def events_quarantine_dir(workdir: str | Path) -> Path:
    return events_dir(workdir) / QUARANTINE_DIR


def spool_dir(workdir: str | Path) -> Path:
    return events_dir(workdir) / SPOOL_DIR


def spool_status_dir(workdir: str | Path) -> Path:
    return events_dir(workdir) / SPOOL_STATUS_DIR


def spool_state(workdir: str | Path) -> Path:
    return events_dir(workdir) / SPOOL_STATE_FILE


def segments_dir(workdir: str | Path) -> Path:
    return Path(workdir) / SEGMENTS_DIR


def campaigns_dir(workdir: str | Path) -> Path:
    return Path(workdir) / CAMPAIGNS_DIR


def mlflow_db(workdir: str | Path) -> Path:
    """The default MLflow tracking store (SQLite) of a workdir."""
    return Path(workdir) / MLFLOW_DB
