"""``train()``: the steps from event files to a published model bundle, declared in order.

Each step is a function ``(TrainContext) -> StepOutcome``: the features step builds the
feature table, each model step puts its fitted model in ``ctx.models`` under its registered
name (the bundle codec, :func:`dmp_ml.bundle.save_bundle`, writes them all at the end) and
may write other artefacts into the bundle being built. A step that lacks data (too few
positives, no email history) is *skipped* with its reason and the pipeline goes on; any other
failure aborts the run and the previous bundle stays live.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml import bundle as bundle_io
from dmp_ml import layout
from dmp_ml.activation import write_contacts
from dmp_ml.contract import (
    LoadResult,
    clock_limit,
    data_end,
    load_consent,
    load_events,
    load_profiles,
)
from dmp_ml.erasure import apply_erasure_list, read_erasure_list
from dmp_ml.errors import InsufficientDataError, storage_errors
from dmp_ml.features import FeatureBuilder, FeatureTable
from dmp_ml.mapping import ColumnMapping
from dmp_ml.models import BundleModel
from dmp_ml.refresh import write_consent_state
from dmp_ml.settings import Settings, load_settings
from dmp_ml.store import merge_incoming, record_training_events
from dmp_ml.times import utc

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dmp_ml.models.lookalike import LookalikeModel
    from dmp_ml.models.send_time import SendTimeModel
    from dmp_ml.tracking import TrainingData

logger = logging.getLogger(__name__)

LOOKALIKE_CHART_SEED = 200
"""Profiles in the seed whose held-out recall the lookalike run charts."""

_LIBRARIES = ("dmp-ml", "pandas", "numpy", "scikit-learn", "lightgbm", "faiss-cpu", "mlflow")


@dataclass
class StepOutcome:
    """What one pipeline step did: ``trained`` or ``skipped`` (with the reason)."""

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "metrics": self.metrics,
            "mlflow_run_id": self.mlflow_run_id,
            **self.details,
        }


@dataclass
class TrainContext:
    """Inputs every step reads, and the bundle directory it writes into."""

    settings: Settings
    as_of: pd.Timestamp
    events: pd.DataFrame
    profiles: pd.DataFrame | None
    consent: pd.DataFrame | None
    erased: frozenset[str]
    bundle_dir: Path
    version: str  # the bundle being built: names every MLflow run of this train
    builder: FeatureBuilder  # the event log encoded once, for every cutoff any step needs
    fingerprint: str = ""  # sha256 of the whole event log (``_fingerprint``)
    events_source: str = "dataframe"  # the events file, or how the frame was given
    features: FeatureTable | None = None
    models: dict[str, BundleModel] = field(default_factory=dict)  # registered name -> fitted
    scores: pd.DataFrame | None = None  # propensity scores, indexed by profile_id
    # (step, action) run once the bundle is published, e.g. MLflow model registration;
    # each returns details added to the step's outcome
    after_publish: list[tuple[str, Callable[[], dict[str, Any]]]] = field(default_factory=list)

    def run_labels(self) -> dict[str, Any]:
        """MLflow run name and tags tying a run to this bundle (``dmp-ml promote`` reads them),
        and the event log it was trained on (logged as the run's input: digest and schema)."""
        from dmp_ml.tracking import TrainingData

        dataset: TrainingData = TrainingData.from_frame(
            self.events, "events", self.fingerprint, self.events_source
        )
        return {
            "run_name": f"bundle-{self.version}",
            "tags": {"bundle_version": self.version},
            "dataset": dataset,
        }


@dataclass(frozen=True)
class TrainResult:
    """The published bundle and what each step did."""

    bundle_path: Path
    version: str
    manifest: dict[str, Any]
    steps: dict[str, StepOutcome]
    loads: dict[str, dict[str, Any]]


Step = Callable[[TrainContext], StepOutcome]
StepCallback = Callable[[str, str], None]


def _features_step(ctx: TrainContext) -> StepOutcome:
    table = ctx.builder.build(ctx.as_of)
    # what activation and refresh need later: hashed e-mails only, hashed withdrawals only
    write_contacts(ctx.bundle_dir, ctx.profiles, table.frame.index)
    write_consent_state(ctx.bundle_dir, ctx.consent, ctx.settings)
    ctx.features = table
    return StepOutcome("trained", details={"summary": dict(table.summary), "rows": len(table)})


def _propensity_step(ctx: TrainContext) -> StepOutcome:
    from dmp_ml.models.propensity import build_snapshots, train_propensity
    from dmp_ml.tracking import log_propensity_run, register_propensity_run

    assert ctx.features is not None
    snapshots, _ = build_snapshots(
        ctx.events,
        ctx.as_of,
        ctx.settings,
        ctx.profiles,
        ctx.consent,
        erased=ctx.erased,
        score_table=ctx.features,
        builder=ctx.builder,
    )
    result = train_propensity(snapshots, ctx.features, ctx.settings)
    ctx.models["propensity"] = result.model
    ctx.scores = result.scores.set_index("profile_id")
    logged = log_propensity_run(result, ctx.settings, register=False, **ctx.run_labels())

    def register() -> dict[str, Any]:
        try:
            done = register_propensity_run(logged, result, ctx.settings)
        except Exception as exc:  # the bundle is live; the registry can be fixed later
            logger.error("MLflow registration of run %s failed: %s", logged.run_id, exc)
            return {"registration_error": f"{type(exc).__name__}: {exc}"[:500]}
        return {
            "champion": done.champion_version,
            "promoted": done.promoted,
            "champion_reason": done.reason,
            "model_version": done.model_version,
        }

    ctx.after_publish.append(("propensity", register))
    return StepOutcome(
        "trained",
        metrics=result.summary(),
        mlflow_run_id=logged.run_id,
        details={
            "target_event": result.target_event,
            "horizon_days": result.horizon_days,
            "served": result.served,
            "comparison": _comparison(result.candidates, result.served),
            # the registry version and champion decision come after publishing: see the
            # run's tags in MLflow (registered_model_version, champion_decision)
            "registration": "after publish",
        },
    )


def _comparison(candidates: dict[str, float], served: str) -> str:
    """One line a user reads: every candidate's held-out ROC-AUC and what is served."""
    shown = ", ".join(f"{name} {auc:.3f}" for name, auc in candidates.items())
    return f"held-out ROC-AUC: {shown}; serving {served}"


def _send_time_step(ctx: TrainContext) -> StepOutcome:
    from dmp_ml.models.send_time import SendTimeModel, evaluate_send_time
    from dmp_ml.models.send_time.baselines import comparison_line
    from dmp_ml.tracking import log_metrics_run

    st = ctx.settings.send_time
    holdout = pd.Timedelta(days=st.evaluation_days)
    cutoff = ctx.as_of - holdout
    assert ctx.features is not None
    eligible = ctx.features.frame.index
    timezones = _timezones(ctx.profiles)
    if timezones is not None:
        timezones = timezones[timezones.index.isin(eligible)]
    # honest evaluation: fit before the last `evaluation_days`, score on them, then refit on all
    resolved = ctx.builder.resolve(ctx.as_of).events
    resolved = resolved[resolved["profile_id"].isin(eligible)]
    train_part = resolved[resolved["event_time"] < cutoff]
    before = SendTimeModel.from_settings(ctx.settings).fit(train_part, cutoff, timezones)
    evaluation = evaluate_send_time(
        before, resolved, timezones=timezones, training_events=train_part
    )
    model = SendTimeModel.from_settings(ctx.settings).fit(resolved, ctx.as_of, timezones)
    ctx.models["send_time"] = model
    metrics = _flat_metrics(evaluation)
    # what the evaluated model served on the last `evaluation_days` (its own guard's winner)
    metrics["served_hit_rate"] = evaluation["model"]["hit_rate"]
    metrics.update(_flat_metrics(model.guard_ or {}, "guard_"))
    charts, chart_metrics = _send_time_charts(before, resolved, st.evaluation_days)
    metrics.update(chart_metrics)
    run_id = log_metrics_run(
        "dmp-send-time",
        params={
            "as_of": ctx.as_of.isoformat(),
            "evaluation_days": st.evaluation_days,
            "served": model.served_,
        },
        metrics=metrics,
        artifacts=charts,
        settings=ctx.settings,
        **ctx.run_labels(),
    )
    return StepOutcome(
        "trained",
        metrics=metrics,
        mlflow_run_id=run_id,
        details={
            "served": model.served_,
            "comparison": comparison_line(model.guard_, model.served_),
        },
    )


def _lookalike_step(ctx: TrainContext) -> StepOutcome:
    from dmp_ml.models.lookalike import LookalikeModel
    from dmp_ml.tracking import log_metrics_run

    assert ctx.features is not None
    model = LookalikeModel(ctx.settings.lookalike).fit(ctx.features)
    ctx.models["lookalike"] = model
    report = {k: v for k, v in model.build_report_.items() if isinstance(v, int | float)}
    charts, chart_metrics, seed_text, guard = _lookalike_charts(
        model, ctx.features, ctx.settings.propensity.target_event
    )
    run_id = log_metrics_run(
        "dmp-lookalike",
        params={
            "as_of": ctx.as_of.isoformat(),
            "index": str(model.build_report_.get("index_type")),
            "chart_seed": seed_text,
        },
        metrics={**report, **chart_metrics},
        artifacts=charts,
        settings=ctx.settings,
        **ctx.run_labels(),
    )
    return StepOutcome(
        "trained",
        metrics=report,
        mlflow_run_id=run_id,
        details={"build": model.build_report_, **guard},
    )


def _lookalike_comparison(recall: dict[str, float], served: str, size: int) -> str:
    """One line a user reads: each candidate's held-out seed recall on the chart seed."""
    shown = ", ".join(f"{name} {value:.3f}" for name, value in recall.items())
    return (
        f"held-out seed recall at {size}: {shown}; serving {served} "
        "(chosen again for every request)"
    )


def _send_time_charts(
    model: SendTimeModel, events: pd.DataFrame, days: int
) -> tuple[dict[str, Figure], dict[str, float]]:
    """Heat map (population curve vs held-out engagement) and reliability on held-out sends.

    ``model`` was fitted before the last ``days`` days of ``events``; both charts judge it on
    them. The reliability diagram needs held-out sends with both outcomes; without them only
    the heat map is drawn.
    """
    from dmp_ml import metrics
    from dmp_ml.experiments import plot_hour_of_week
    from dmp_ml.models.send_time import held_out

    held = held_out(model, events)
    charts: dict[str, Figure] = {
        "plots/send_time_heatmap": plot_hour_of_week(
            {
                "model: mean P(engage | send)": model.local_curve_.mean(axis=0),
                f"held-out engagement share ({days} d)": held.engagement,
            },
            title="Send time by local hour of week",
            label="probability / share",
        )
    }
    sends = held.sends
    found: dict[str, float] = {"heldout_sends": float(len(sends))}
    if len(sends) and sends["responded"].nunique() == 2:
        y, p = sends["responded"].to_numpy(), sends["probability"].to_numpy()
        charts["plots/send_time_reliability"] = metrics.plot_calibration(
            y,
            {"model (held-out sends)": p},
            title=f"Send time reliability: email response, last {days} d",
        )
        found["heldout_ece"] = metrics.expected_calibration_error(y, p)
        found["heldout_brier"] = metrics.brier(y, p)
    else:
        logger.info("send time: no held-out sends with both outcomes, no reliability diagram")
    return charts, found


def _lookalike_charts(
    model: LookalikeModel, table: FeatureTable, target_event: str
) -> tuple[dict[str, Figure], dict[str, float], str, dict[str, str]]:
    """Held-out recall against audience size, and the score distribution, for one seed.

    The seed: up to :data:`LOOKALIKE_CHART_SEED` random profiles that did the propensity
    target event (``<target>_count_total > 0``), the everyday "find more like my buyers". No
    such profiles (or too few to hold some out): no charts, and the run says why. The last
    item is the guard's choice for that seed (``served``, ``comparison``), empty without one.
    """
    from matplotlib.figure import Figure

    from dmp_ml.experiments import feature_seed, plot_quality_curve
    from dmp_ml.features import slug

    column = f"{slug(target_event)}_count_total"
    try:
        seed = feature_seed(table, column, n=LOOKALIKE_CHART_SEED, seed=0)
    except ValueError as exc:
        logger.info("lookalike: no chart seed (%s)", exc)
        return {}, {}, f"none: {exc}", {}
    n_seed = len(seed.ids)
    room = len(table) - n_seed
    if n_seed < 10 or room < 10:
        return {}, {}, f"none: {seed.description} (too few)", {}
    top = max(1, min(room, int(model.settings.max_reach * len(table))))
    sizes = sorted({int(v) for v in np.geomspace(min(n_seed, top), top, 6)})
    curve = model.quality_curve(seed.ids, sizes)
    charts: dict[str, Figure] = {
        "plots/lookalike_recall": plot_quality_curve(
            curve, title=f"Lookalike held-out recall: {seed.description}"
        )
    }
    audience = model.expand(seed.ids, size=top)
    scores = pd.to_numeric(audience.frame["score"], errors="coerce").dropna().to_numpy()
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    ax.hist(scores, bins=40, color="C0")
    if len(scores) >= n_seed:
        ax.axvline(scores[n_seed - 1], color="C1", linestyle="--", label=f"top {n_seed}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("lookalike score")
    ax.set_ylabel("profiles")
    ax.set_title(f"Scores of the {len(scores)} best profiles for the seed")
    fig.tight_layout()
    charts["plots/lookalike_scores"] = fig
    first = curve.iloc[0]
    found = {
        "chart_seed_size": float(n_seed),
        "heldout_recall_at_seed_size": float(first["expected_recall"]),
        "heldout_lift_at_seed_size": float(first["lift"]),
    }
    recall = audience.diagnostics["candidate_recall"]
    found.update({f"heldout_recall_{name}": float(value) for name, value in recall.items()})
    guard: dict[str, str] = {}
    if recall:
        served = audience.diagnostics["method"]
        guard = {"served": served, "comparison": _lookalike_comparison(recall, served, top)}
    return charts, found, seed.description, guard


def _affinity_step(ctx: TrainContext) -> StepOutcome:
    from dmp_ml.models.affinity import AffinityModel

    assert ctx.features is not None
    resolved = ctx.builder.resolve(ctx.as_of).events
    model = AffinityModel.from_settings(ctx.settings)
    model.fit(resolved, ctx.features.frame.index, ctx.as_of)
    ctx.models["affinity"] = model
    return StepOutcome("trained", metrics=model.summary())


STEPS: tuple[tuple[str, Step], ...] = (
    ("features", _features_step),
    ("propensity", _propensity_step),
    ("send_time", _send_time_step),
    ("lookalike", _lookalike_step),
    ("affinity", _affinity_step),
)


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
    workdir.mkdir(parents=True, exist_ok=True)
    loads: dict[str, dict[str, Any]] = {}
    events_df = _input(events, "events", load_events, mapping, settings, workdir, loads)
    assert events_df is not None
    events_df = merge_incoming(events_df, workdir)  # batches applied by near-real-time refresh
    limit = clock_limit(settings.contract)
    as_of_ts = data_end(events_df, limit) if str(as_of) == "end" else utc(as_of, "as_of")
    profiles_df = _input(
        profiles, "profiles", load_profiles, profiles_mapping, settings, workdir, loads
    )
    consent_df = _input(consent, "consent", load_consent, consent_mapping, settings, workdir, loads)
    fingerprint = _fingerprint(events_df)
    version = f"{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}-{fingerprint[:8]}"
    outcomes: dict[str, StepOutcome] = {}
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
        for name, step in STEPS:
            if on_step:
                on_step(name, "running")
            try:
                outcomes[name] = step(ctx)
            except InsufficientDataError as exc:
                logger.warning("%s skipped: %s", name, exc)
                outcomes[name] = StepOutcome("skipped", reason=str(exc))
            if on_step:
                on_step(name, outcomes[name].status)
        record_training_events(workdir, events_df, ctx.erased, bundle_version=version)
        assert ctx.features is not None
        manifest = bundle_io.save_bundle(
            tmp,
            features=ctx.features,
            models=ctx.models,
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
                "settings": settings.model_dump(mode="json", exclude={"api_token"}),
                "mlflow_tracking_uri": settings.tracking_uri(),
            },
        )
    # only now that the bundle is live: a registry version never names an unpublished bundle
    for name, register in ctx.after_publish:
        outcomes[name].details.update(register())
    apply_erasure_list(workdir)  # an erasure that landed while this run trained
    return TrainResult(bundle_io.live_bundle_path(workdir), version, manifest, outcomes, loads)


def _input(
    source: str | Path | pd.DataFrame | None,
    kind: str,
    loader: Callable[..., LoadResult],
    mapping: ColumnMapping | str | Path | None,
    settings: Settings,
    workdir: Path,
    loads: dict[str, dict[str, Any]],
) -> pd.DataFrame | None:
    if source is None:
        return None
    if isinstance(source, pd.DataFrame):
        loads[kind] = {"rows_loaded": len(source), "source": "dataframe"}
        return source
    result = loader(source, mapping=mapping, settings=settings.contract)
    report = result.report.to_dict()
    if len(result.quarantine):
        report["quarantine"] = str(
            result.write_quarantine(layout.quarantine_dir(workdir) / f"{kind}.parquet")
        )
    loads[kind] = report
    return result.frame


def _timezones(profiles: pd.DataFrame | None) -> pd.Series | None:
    if profiles is None or "timezone" not in profiles.columns:
        return None
    return profiles.set_index("profile_id")["timezone"]


def _flat_metrics(evaluation: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in evaluation.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_metrics(value, f"{name}_"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _fingerprint(events: pd.DataFrame) -> str:
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
