"""``train()``: the steps from event files to a published model bundle, declared in order.

Each step is a function ``(TrainContext) -> StepOutcome``: the features step builds the
feature table, then each model of :data:`dmp_ml.models.REGISTRY` runs its own step (its
package's ``step.train_step``), which puts its fitted model in ``ctx.models`` under its
registered name (the bundle codec, :func:`dmp_ml.bundle.save_bundle`, writes them all at the
end) and may write other artefacts into the bundle being built. Every step is timed: its wall
seconds are in its outcome, the manifest and the MLflow runs of the bundle. A step that lacks
data (too few positives, no email history) is *skipped* with its reason and the pipeline goes
on; any other failure aborts the run and the previous bundle stays live.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from dmp_ml import bundle as bundle_io
from dmp_ml import layout
from dmp_ml.activation import write_contacts
from dmp_ml.codes import as_categorical
from dmp_ml.contract import LoadResult, clock_limit, data_end, held_text
from dmp_ml.erasure import apply_erasure_list, read_erasure_list
from dmp_ml.errors import InsufficientDataError, storage_errors
from dmp_ml.features import FeatureBuilder
from dmp_ml.inputs import load_inputs
from dmp_ml.mapping import ColumnMapping
from dmp_ml.models import REGISTRY, train_step
from dmp_ml.pages import release_free_memory
from dmp_ml.peak_memory import StagePeaks
from dmp_ml.refresh import write_consent_state
from dmp_ml.rows import is_dictionary
from dmp_ml.settings import Settings, load_settings
from dmp_ml.store import merge_incoming, record_training_events
from dmp_ml.times import utc
from dmp_ml.training_context import StepOutcome, TrainContext, TrainStep

logger = logging.getLogger(__name__)

_LIBRARIES = ("dmp-ml", "pandas", "numpy", "scikit-learn", "lightgbm", "faiss-cpu", "mlflow")


@dataclass(frozen=True)
class TrainResult:
    """The published bundle, what each step did, and the wall seconds of every stage.

    ``seconds`` maps ``inputs`` (loading and validating the files), each step and ``publish``
    (MLflow registration after the bundle went live) to wall seconds, in run order;
    ``peak_mb`` maps the same stages to the peak resident MB of this process during each
    (:mod:`dmp_ml.peak_memory`; empty where it cannot be measured).
    """

    bundle_path: Path
    version: str
    manifest: dict[str, Any]
    steps: dict[str, StepOutcome]
    loads: dict[str, dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)


StepCallback = Callable[[str, str], None]


def _features_step(ctx: TrainContext) -> StepOutcome:
    table = ctx.builder.build(ctx.as_of)
    # what activation and refresh need later: hashed e-mails only, hashed withdrawals only
    write_contacts(ctx.bundle_dir, ctx.profiles, table.frame.index)
    write_consent_state(ctx.bundle_dir, ctx.consent, ctx.settings)
    # the hour-of-week counts are only saved: into the bundle now, not held by later steps
    ctx.features = table.hour_of_week_written(ctx.bundle_dir / bundle_io.FEATURES_DIR)
    return StepOutcome("trained", details={"summary": dict(table.summary), "rows": len(table)})


STEPS: tuple[tuple[str, TrainStep], ...] = (
    ("features", _features_step),
    *((name, train_step(name)) for name in REGISTRY),
)
"""Every step of ``train`` in order: the feature table, then each registered model."""


def train(
    events: str | Path | pd.DataFrame,
    as_of: str | pd.Timestamp,
    workdir: str | Path | None = None,
    *,
    profiles: str | Path | pd.DataFrame | None = None,
    consent: str | Path | pd.DataFrame | None = None,
    mapping: ColumnMapping | str | Path | None = None,
    profiles_mapping: ColumnMapping | str | Path | None = None,
    consent_mapping: ColumnMapping | str | Path | None = None,
    settings: Settings | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Run every step and publish a new bundle in ``workdir`` (default ``settings.workdir``).

    ``as_of`` is a timestamp, or ``"end"`` for the midnight after the last event.
    ``events``, ``profiles`` and ``consent`` are file paths (validated against the contract,
    bad rows quarantined under ``<workdir>/quarantine/``) or frames already in contract form;
    ``mapping``, ``profiles_mapping`` and ``consent_mapping`` map each file's columns.
    """
    settings = settings or load_settings()
    workdir = Path(workdir if workdir is not None else settings.workdir)
    if settings.workdir != workdir:
        settings = settings.model_copy(update={"workdir": workdir})
    with storage_errors(workdir):  # a full or read-only disk: one typed error naming the path
        return _train(
            events,
            as_of,
            workdir,
            (profiles, consent),
            (mapping, profiles_mapping, consent_mapping),
            settings,
            on_step,
        )


def _train(
    events: str | Path | pd.DataFrame,
    as_of: str | pd.Timestamp,
    workdir: Path,
    people: tuple[str | Path | pd.DataFrame | None, str | Path | pd.DataFrame | None],
    mappings: tuple[ColumnMapping | str | Path | None, ...],
    settings: Settings,
    on_step: StepCallback | None,
) -> TrainResult:
    profiles, consent = people
    mapping, profiles_mapping, consent_mapping = mappings
    clock = time.perf_counter()
    peaks = StagePeaks()
    workdir.mkdir(parents=True, exist_ok=True)
    loads: dict[str, dict[str, Any]] = {}
    files = load_inputs(
        *(None if isinstance(source, pd.DataFrame) else source for source in (events, *people)),
        mapping=mapping,
        profiles_mapping=profiles_mapping,
        consent_mapping=consent_mapping,
        settings=settings.contract,
        dictionaries=True,
    )
    events_df = _input(events, files.events, "events", files.seconds, workdir, loads)
    assert events_df is not None
    if files.events is not None:  # kept through every step: its text as compact dictionaries
        events_df = held_text(events_df)
    events_df = merge_incoming(events_df, workdir)  # batches applied by near-real-time refresh
    limit = clock_limit(settings.contract)
    as_of_ts = data_end(events_df, limit) if str(as_of) == "end" else utc(as_of, "as_of")
    profiles_df = _input(profiles, files.profiles, "profiles", files.seconds, workdir, loads)
    consent_df = _input(consent, files.consent, "consent", files.seconds, workdir, loads)
    # the loaded frames are taken; the loader's codes of the log's text (an int32 a row for
    # each text column) are not: the feature builder encodes the log it holds itself
    del files
    fingerprint = _fingerprint(events_df)
    version = f"{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}-{fingerprint[:8]}"
    outcomes: dict[str, StepOutcome] = {}
    seconds = {"inputs": time.perf_counter() - clock}
    release_free_memory()  # the loaders' temporaries, before the next stage's peak starts
    peaks.mark("inputs")
    with bundle_io.write_bundle(workdir, version) as tmp:
        erased = read_erasure_list(workdir)
        ctx = TrainContext(
            settings=settings,
            as_of=as_of_ts,
            events=events_df,
            profiles=profiles_df,
            consent=consent_df,
            erased=erased,
            bundle_dir=tmp,
            version=version,
            builder=FeatureBuilder(events_df, profiles_df, consent_df, settings, erased=erased),
            fingerprint=fingerprint,
            events_source=str(events) if not isinstance(events, pd.DataFrame) else "dataframe",
        )
        with ctx.builder:  # one engine (e.g. one Dask client) for every step
            _run_steps(ctx, outcomes, (seconds, peaks), on_step)
        ctx.builder.release()  # the encoded log and its identities: the save needs neither
        clock = time.perf_counter()
        record_training_events(workdir, events_df, ctx.erased, bundle_version=version)
        assert ctx.features is not None
        manifest = bundle_io.save_bundle(
            tmp,
            features=ctx.features,
            models={},  # each written as its step ended (_run_steps)
            scores=ctx.scores,
            manifest={
                "bundle_version": version,
                "as_of": as_of_ts.isoformat(),
                "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
                "data_fingerprint": fingerprint,
                "libraries": _library_versions(),
                "python": platform.python_version(),
                "inputs": loads,
                "steps": {name: outcome.to_dict() for name, outcome in outcomes.items()},
                "seconds": dict(seconds),  # inputs and steps; saving and publishing follow
                "peak_mb": dict(peaks.mb),  # the same stages' peak resident MB
                "settings": settings.model_dump(mode="json", exclude={"api_token"}),
                "mlflow_tracking_uri": settings.tracking_uri(),
            },
        )
    seconds["save"] = time.perf_counter() - clock
    peaks.mark("save")
    clock = time.perf_counter()
    # only now that the bundle is live: a registry version never names an unpublished bundle
    for name, register in ctx.after_publish:
        outcomes[name].details.update(register())
    apply_erasure_list(workdir)  # an erasure that landed while this run trained
    seconds["publish"] = time.perf_counter() - clock
    peaks.mark("publish")
    _log_seconds(outcomes, seconds, peaks.mb, settings)
    return TrainResult(
        bundle_io.live_bundle_path(workdir), version, manifest, outcomes, loads, seconds, peaks.mb
    )


def _run_steps(
    ctx: TrainContext,
    outcomes: dict[str, StepOutcome],
    timing: tuple[dict[str, float], StagePeaks],
    on_step: StepCallback | None,
) -> None:
    """Run every step of :data:`STEPS` in order, timing each and taking its peak memory; a
    step lacking data is skipped."""
    seconds, peaks = timing
    for name, step in STEPS:
        if on_step:
            on_step(name, "running")
        clock = time.perf_counter()
        try:
            outcomes[name] = step(ctx)
        except InsufficientDataError as exc:
            logger.warning("%s skipped: %s", name, exc)
            outcomes[name] = StepOutcome("skipped", reason=str(exc))
        outcomes[name].seconds = seconds[name] = time.perf_counter() - clock
        while ctx.models:  # into the bundle now: no later step holds this one's arrays
            bundle_io.save_model(ctx.bundle_dir, *ctx.models.popitem())
        ctx.builder.keep_only(ctx.as_of)  # identities at the step's other cutoffs go with it
        release_free_memory()  # the step's temporaries: the next step starts from what is held
        # marked once they are given back (this step's peak is taken already): the next
        # step's peak counts from what is held, not from this step's freed pages
        peaks.mark(name)
        logger.info(
            "train step %s: %s in %.1f s, peak %s MB",
            name,
            outcomes[name].status,
            seconds[name],
            peaks.mb.get(name, "?"),
        )
        if on_step:
            on_step(name, outcomes[name].status)


def _log_seconds(
    outcomes: dict[str, StepOutcome],
    seconds: dict[str, float],
    peak_mb: dict[str, float],
    settings: Settings,
) -> None:
    """Add the run's timing table to every MLflow run it logged; the bundle is live already,
    so a tracking failure is logged, not raised."""
    from dmp_ml.tracking import log_seconds

    run_ids = [o.mlflow_run_id for o in outcomes.values() if o.mlflow_run_id]
    try:
        log_seconds(run_ids, seconds, peak_mb, settings)
    except Exception as exc:
        logger.error("logging step timings to MLflow failed: %s", exc)


def _input(
    source: str | Path | pd.DataFrame | None,
    loaded: LoadResult | None,
    kind: str,
    seconds: dict[str, float],
    workdir: Path,
    loads: dict[str, dict[str, Any]],
) -> pd.DataFrame | None:
    """The frame of one input: a frame given as it is, or the file :func:`load_inputs` loaded
    (its quarantined rows written under the workdir); its report goes into ``loads``."""
    if isinstance(source, pd.DataFrame):
        loads[kind] = {"rows_loaded": len(source), "source": "dataframe"}
        return source
    if loaded is None:
        return None
    report = loaded.report.to_dict()
    if len(loaded.quarantine):
        report["quarantine"] = str(
            loaded.write_quarantine(layout.quarantine_dir(workdir) / f"{kind}.parquet")
        )
    report["seconds"] = round(seconds[kind], 3)
    loads[kind] = report
    return loaded.frame


def _fingerprint(events: pd.DataFrame) -> str:
    """sha256 of the log's row hashes; text held as dictionaries is hashed as categoricals of
    the same values (the same digest as its text, from the distinct values)."""
    held = [c for c in events.columns if is_dictionary(events[c].dtype)]
    if held:
        views = {c: as_categorical(events[c].array.__arrow_array__()) for c in held}
        events = events.assign(**views)
    hashed = pd.util.hash_pandas_object(events, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
