"""The ``dmp-ml`` command line: parse arguments, call the library, print. No logic of its own.

Heavy libraries (pandas, the models, MLflow, BentoML) are imported inside the commands, so
``dmp-ml --help`` answers quickly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from dmp_ml import __version__
from dmp_ml.errors import DataContractError, DmpMlError, RequestError

if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import Progress

    from dmp_ml.activation import ExportReport, SendTimeOptions
    from dmp_ml.bundle import ModelBundle
    from dmp_ml.segments import Rule
    from dmp_ml.settings import Settings

logger = logging.getLogger("dmp_ml.cli")

app = typer.Typer(
    name="dmp-ml",
    help="Audience models for a marketing DMP: validate, features, train, score, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


out = Console()
err = Console(stderr=True)

MappingOpt = Annotated[
    Path | None,
    typer.Option(
        "--mapping",
        help="YAML column mapping for a foreign log, or a packaged mapping's name (online_retail).",
    ),
]
ProfilesMappingOpt = Annotated[
    Path | None,
    typer.Option("--profiles-mapping", help="YAML column mapping for the profiles file."),
]
ConsentMappingOpt = Annotated[
    Path | None,
    typer.Option("--consent-mapping", help="YAML column mapping for the consent file."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Settings YAML (default: the packaged config/default.yaml)."),
]


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler: logging.Handler
    if err.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=err, show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "distributed", "bentoml", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _show_version(value: bool) -> None:
    if value:
        print(f"dmp-ml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging; tracebacks on errors.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Warnings and errors only; no progress.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    if verbose and quiet:
        raise RequestError("--quiet", "give --verbose or --quiet, not both")
    _setup_logging(verbose, quiet)


def _input_file(option: Path | None, argument: Path | None, command: str) -> Path:
    """The file of ``--events FILE``; the older positional form still works, with a note."""
    if option is not None and argument is not None:
        raise RequestError("--events", "give the file once: --events FILE")
    if argument is not None:
        err.print(
            f"note: `dmp-ml {command} FILE` is deprecated; use `dmp-ml {command} --events FILE`",
            highlight=False,
        )
        return argument
    if option is None:
        raise RequestError("--events", "missing option --events FILE")
    return option


@app.command()
def validate(
    events: Annotated[
        Path | None, typer.Option("--events", help="Event log, CSV or Parquet.")
    ] = None,
    legacy_events: Annotated[
        Path | None,
        typer.Argument(metavar="FILE", help="Deprecated: use --events FILE.", show_default=False),
    ] = None,
    mapping: MappingOpt = None,
    quarantine: Annotated[
        Path | None, typer.Option("--quarantine", help="Write quarantined rows to this Parquet.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load an event log against the data contract and report what was loaded and quarantined."""
    from rich.table import Table

    from dmp_ml.contract import load_events

    events = _input_file(events, legacy_events, "validate")
    result = load_events(events, mapping=mapping, settings=_settings(None).contract)
    if quarantine is not None:
        result.write_quarantine(quarantine)
    report = result.report
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    table = Table(title=f"{report.kind}: {report.path}", show_header=False)
    table.add_row("rows read", f"{report.rows_read:,}")
    table.add_row("rows loaded", f"{report.rows_loaded:,}")
    table.add_row("rows quarantined", f"{report.rows_quarantined:,}")
    for reason, count in report.quarantined_by_reason.items():
        table.add_row(f"  {reason}", f"{count:,}")
    for warning, count in report.warnings.items():
        table.add_row(f"warning: {warning}", f"{count:,}")
    if len(result.frame):
        first, last = result.frame["event_time"].min(), result.frame["event_time"].max()
        table.add_row("time range (UTC)", f"{first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}")
    if quarantine is not None:
        table.add_row("quarantine written to", str(quarantine))
    out.print(table)


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder for events/profiles/consent/truth.")],
    profiles: Annotated[int, typer.Option("--profiles", min=10)] = 20_000,
    days: Annotated[int, typer.Option("--days", min=14)] = 120,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    style: Annotated[
        str,
        typer.Option(
            "--style",
            help="dmp: cookies, web, e-mail and ads; retail: a sparse customer-keyed purchase log.",
        ),
    ] = "dmp",
) -> None:
    """Generate a synthetic demo world (events, profiles, consent, ground truth)."""
    from dmp_ml.demo import generate_demo_world, generate_retail_world, write_demo_world

    if style not in ("dmp", "retail"):
        raise typer.BadParameter(f"--style must be dmp or retail, got {style!r}")
    with _Steps("demo-data", ["generating the world", "writing Parquet files"]) as steps:
        steps.next()
        try:
            if style == "retail":
                world = generate_retail_world(n_customers=profiles, days=days, seed=seed)
            else:
                world = generate_demo_world(n_profiles=profiles, days=days, seed=seed)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        steps.next()
        paths = write_demo_world(world, out_dir)
    out.print(
        f"demo world: {len(world.profiles):,} profiles, {len(world.events):,} events, "
        f"{world.start:%Y-%m-%d} .. {world.end:%Y-%m-%d}"
    )
    for name, path in paths.items():
        out.print(f"  {name}: {path}")


EventsOpt = Annotated[Path, typer.Option("--events", help="Event log, CSV or Parquet.")]
ProfilesOpt = Annotated[Path | None, typer.Option("--profiles", help="Profiles table.")]
ConsentOpt = Annotated[Path | None, typer.Option("--consent", help="Consent records.")]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", help="Work directory holding the bundle.")]
IdsOpt = Annotated[
    Path | None, typer.Option("--ids", help="File with one profile id per line (default: all).")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output CSV.")]


def _settings(config: Path | None, **overrides: object) -> Settings:
    from dmp_ml.settings import load_settings

    return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})


def _read_ids(path: Path) -> list[str]:
    if not path.exists():
        raise DataContractError(f"{path}: file not found")
    # lines end at \n only: an id holding another separator (U+2028, \x85, ...) stays one id,
    # which the library then refuses by name instead of acting on its fragments
    text = path.read_text(encoding="utf-8")
    ids = [line.strip(" \r\t") for line in text.split("\n")]
    ids = [i for i in ids if i and i != "profile_id"]
    if not ids:
        raise DataContractError(f"{path}: no ids in the file")
    return ids


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    from dmp_ml.csv_output import write_csv

    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, path)


def _report_unknown(unknown: list[str], what: str = "ids") -> None:
    if unknown:
        shown = ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        err.print(f"{len(unknown)} unknown {what}: {shown}", highlight=False)


@app.command()
def features(
    events: EventsOpt,
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff: only events before it count.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output Parquet.")],
    profiles: ProfilesOpt = None,
    consent: ConsentOpt = None,
    mapping: MappingOpt = None,
    profiles_mapping: ProfilesMappingOpt = None,
    consent_mapping: ConsentMappingOpt = None,
    engine: Annotated[str | None, typer.Option("--engine", help="pandas or dask.")] = None,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Build point-in-time features per profile and write them to Parquet."""
    from dmp_ml.contract import load_consent, load_events, load_profiles
    from dmp_ml.features import build_features

    feature_overrides = {"engine": engine, "dask_scheduler": scheduler}
    settings = _settings(config)
    if any(v is not None for v in feature_overrides.values()):
        section = settings.features.model_copy(
            update={k: v for k, v in feature_overrides.items() if v is not None}
        )
        settings = settings.model_copy(update={"features": section})
    engine_name = settings.features.engine
    names = ["loading events", "loading profiles and consent", f"building features ({engine_name})"]
    with _Steps("features", [*names, "writing Parquet"]) as steps:
        steps.next()
        loaded = load_events(events, mapping=mapping, settings=settings.contract)
        steps.next()
        prof = None
        if profiles:
            prof = load_profiles(profiles, profiles_mapping, settings=settings.contract).frame
        cons = None
        if consent:
            cons = load_consent(consent, consent_mapping, settings=settings.contract).frame
        steps.next()
        table = build_features(loaded.frame, as_of, prof, cons, settings)
        steps.next()
        table.to_parquet(out_path)
    from rich.table import Table

    summary = Table(title=f"features as of {table.spec.as_of}", show_header=False)
    summary.add_row("profiles", f"{len(table):,}")
    for key, value in table.summary.items():
        summary.add_row(key.replace("_", " "), f"{value:,}")
    summary.add_row("written to", str(out_path))
    out.print(summary)


@app.command()
def train(
    events: EventsOpt,
    as_of: Annotated[str, typer.Option("--as-of", help="Training cutoff (UTC if naive).")],
    workdir: WorkdirOpt = Path("models"),
    profiles: ProfilesOpt = None,
    consent: ConsentOpt = None,
    mapping: MappingOpt = None,
    profiles_mapping: ProfilesMappingOpt = None,
    consent_mapping: ConsentMappingOpt = None,
    target_event: Annotated[str | None, typer.Option("--target-event")] = None,
    horizon_days: Annotated[int | None, typer.Option("--horizon-days", min=1)] = None,
    config: ConfigOpt = None,
) -> None:
    """Train every model and publish a new bundle in WORKDIR (the old one stays on failure)."""
    from rich.table import Table

    from dmp_ml.pipeline import STEPS
    from dmp_ml.pipeline import train as run_pipeline

    settings = _settings(config, workdir=workdir)
    updates = {"target_event": target_event, "horizon_days": horizon_days}
    if any(v is not None for v in updates.values()):
        section = settings.propensity.model_copy(
            update={k: v for k, v in updates.items() if v is not None}
        )
        settings = settings.model_copy(update={"propensity": section})
    names = ["loading inputs", *(name.replace("_", " ") for name, _ in STEPS), "publishing"]
    with _Steps("train", names) as steps:
        steps.next()

        def on_step(name: str, status: str) -> None:
            if status == "running" or name == STEPS[-1][0]:
                steps.next()

        result = run_pipeline(
            events,
            as_of,
            workdir,
            profiles=profiles,
            consent=consent,
            mapping=mapping,
            profiles_mapping=profiles_mapping,
            consent_mapping=consent_mapping,
            settings=settings,
            on_step=on_step,
        )
    table = Table(title=f"bundle {result.version} (as of {result.manifest['as_of']})")
    table.add_column("step")
    table.add_column("status")
    table.add_column("headline")
    for name, outcome in result.steps.items():
        headline = ", ".join(f"{k}={v:.3f}" for k, v in _headline(outcome.metrics))
        if outcome.status != "trained":
            headline = outcome.reason
        table.add_row(name, outcome.status, headline)
    out.print(table)
    for kind, load in result.loads.items():
        if load.get("rows_quarantined"):
            out.print(
                f"{kind}: {load['rows_quarantined']:,} of {load['rows_read']:,} rows quarantined "
                f"-> {load.get('quarantine')}"
            )
    out.print(f"bundle: {result.bundle_path}")
    out.print(f"MLflow: mlflow ui --backend-store-uri {settings.tracking_uri()}")


_HEADLINE_METRICS = ("roc_auc", "hit_rate", "loglik", "recall_at_100", "build_seconds")


def _headline(metrics: dict[str, float]) -> list[tuple[str, float]]:
    """The few metrics worth a glance: AUCs, hit rates, recall; the rest is in MLflow."""
    chosen = [
        (k, v) for k, v in metrics.items() if k.endswith(_HEADLINE_METRICS) and "_by_" not in k
    ]
    return chosen[:6]


@app.command()
def score(
    workdir: WorkdirOpt = Path("models"),
    ids: IdsOpt = None,
    out_path: OutOpt = Path("scores.csv"),
) -> None:
    """Write propensity scores with their basis (history_days, events_used,
    days_since_last_event); unknown ids go to stderr."""
    from dmp_ml.bundle import load_bundle

    bundle = load_bundle(workdir)
    wanted = _read_ids(ids) if ids else None
    result = bundle.score(wanted)
    _write_csv(result.frame, out_path)
    _report_unknown(result.unknown_ids)
    out.print(f"{len(result.frame):,} scores written to {out_path}")


@app.command("send-time")
def send_time(
    workdir: WorkdirOpt = Path("models"),
    ids: IdsOpt = None,
    window_start: Annotated[
        str | None, typer.Option("--window-start", help="UTC start (default: bundle as_of).")
    ] = None,
    window_hours: Annotated[int, typer.Option("--window-hours", min=1, max=168)] = 24,
    quiet_hours: Annotated[
        str | None, typer.Option("--quiet-hours", help="Local quiet hours START-END, e.g. 22-7.")
    ] = None,
    out_path: OutOpt = Path("send_times.csv"),
) -> None:
    """Write the best send time per profile inside the window."""
    from dmp_ml.bundle import load_bundle

    quiet = _parse_quiet_hours(quiet_hours) if quiet_hours else None
    bundle = load_bundle(workdir)
    decision = bundle.send_time(
        _read_ids(ids) if ids else None,
        window_start=window_start,
        window_hours=window_hours,
        quiet_hours=quiet,
    )
    frame = decision.frame[["profile_id", "send_at", "hour_of_week", "probability", "basis"]]
    _write_csv(frame, out_path)
    _report_unknown(decision.unknown_ids)
    out.print(f"{len(frame):,} send times written to {out_path}")


def _parse_quiet_hours(text: str) -> tuple[int, int]:

    try:
        start, end = (int(part) for part in text.split("-"))
    except ValueError:
        raise RequestError("--quiet-hours", f"expected START-END hours, got {text!r}") from None
    return start, end


@app.command()
def lookalike(
    seeds: Annotated[Path, typer.Option("--seeds", help="Seed profile ids, one per line.")],
    workdir: WorkdirOpt = Path("models"),
    size: Annotated[int | None, typer.Option("--size", help="Audience size.")] = None,
    reach: Annotated[
        float | None, typer.Option("--reach", help="Share of the eligible population.")
    ] = None,
    exclude: Annotated[Path | None, typer.Option("--exclude", help="Ids never to return.")] = None,
    out_path: OutOpt = Path("audience.csv"),
    diagnostics: Annotated[
        Path | None, typer.Option("--diagnostics", help="Write diagnostics JSON here.")
    ] = None,
) -> None:
    """Expand a seed list into an audience of similar profiles (profile_id,score,rank)."""
    from dmp_ml.bundle import load_bundle

    bundle = load_bundle(workdir)
    audience = bundle.lookalike(
        _read_ids(seeds),
        size=size,
        reach=reach,
        exclude_ids=_read_ids(exclude) if exclude else (),
    )
    _write_csv(audience.frame[["profile_id", "score", "rank"]], out_path)
    for line in audience.lines():
        err.print(line, highlight=False)
    if diagnostics is not None:
        diagnostics.parent.mkdir(parents=True, exist_ok=True)
        diagnostics.write_text(json.dumps(audience.diagnostics, indent=2, default=str))
    out.print(f"{len(audience.frame):,} profiles written to {out_path}")


RuleOpt = Annotated[Path | None, typer.Option("--rule", help="Segment rule file (JSON or YAML).")]
NameOpt = Annotated[str | None, typer.Option("--segment", help="A saved segment's name.")]
SendAtOpt = Annotated[
    bool, typer.Option("--send-time", help="Add send_at from the send-time model.")
]
WindowStartOpt = Annotated[
    str | None, typer.Option("--window-start", help="send_at window start, UTC (default as_of).")
]
WindowHoursOpt = Annotated[int, typer.Option("--window-hours", min=1, max=168)]
QuietOpt = Annotated[
    str | None, typer.Option("--quiet-hours", help="Local quiet hours START-END, e.g. 22-7.")
]
EmailOpt = Annotated[
    bool, typer.Option("--require-email", help="Only profiles with a hashed e-mail.")
]


def _send_options(
    send_time: bool, start: str | None, hours: int, quiet: str | None
) -> SendTimeOptions | bool:
    from dmp_ml.activation import SendTimeOptions

    if not send_time:
        return False
    return SendTimeOptions(
        window_start=start,
        window_hours=hours,
        quiet_hours=_parse_quiet_hours(quiet) if quiet else None,
    )


def _print_export(report: ExportReport) -> None:
    out.print(f"{report.rows:,} profiles written to {report.path} ({report.format})")
    dropped = {
        "not eligible (no consent, expired or unknown)": report.dropped_not_eligible,
        "erased": report.dropped_erased,
        "without e-mail": report.dropped_without_email,
    }
    for what, n in dropped.items():
        if n:
            err.print(f"left out: {n:,} {what}", highlight=False)
    for warning in report.warnings:
        err.print(f"warning: {warning}", highlight=False)


def _segment_rule(
    rule: Path | None, name: str | None, workdir: Path, bundle: ModelBundle
) -> Rule | None:
    """The rule of ``--rule FILE`` or ``--segment NAME`` (None for neither; both is an error)."""
    from dmp_ml import segments

    if rule is not None and name is not None:
        raise RequestError("--rule", "give --rule or --segment, not both")
    if rule is not None:
        return segments.load_rule_file(rule, bundle)
    if name is not None:
        return segments.load_segment(workdir, name)
    return None


@app.command()
def segment(
    rule: RuleOpt = None,
    name: NameOpt = None,
    workdir: WorkdirOpt = Path("models"),
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Export the audience (CSV or Parquet).")
    ] = None,
    save: Annotated[
        str | None, typer.Option("--save", help="Save the rule under this name.")
    ] = None,
    sample: Annotated[int, typer.Option("--sample", min=0, max=1000)] = 10,
    send_time: SendAtOpt = False,
    window_start: WindowStartOpt = None,
    window_hours: WindowHoursOpt = 24,
    quiet_hours: QuietOpt = None,
    require_email: EmailOpt = False,
) -> None:
    """Size and preview a segment rule; --out exports it, --save names it for reuse."""
    from dmp_ml import activation, segments
    from dmp_ml.bundle import load_bundle

    if rule is None and name is None:
        raise RequestError("--rule", "give a rule file (--rule) or a saved segment (--segment)")
    bundle = load_bundle(workdir)
    parsed = _segment_rule(rule, name, workdir, bundle)
    if save:
        segments.save_segment(workdir, save, parsed, bundle=bundle)
        out.print(f"saved segment {save!r}")
    info = segments.preview(parsed, bundle, sample=sample)
    out.print(
        f"segment: {info['size']:,} of {info['population']:,} eligible profiles "
        f"({info['share']:.1%}), bundle {info['bundle_version']}"
    )
    from rich.table import Table

    table = Table("feature", "median", "mean", "p10", "p90", "population median")
    for feature, d in info["distribution"].items():
        if d["kind"] == "numeric":
            cells = [d["median"], d["mean"], d["p10"], d["p90"], d["population_median"]]
            table.add_row(feature, *("-" if v is None else f"{v:.4g}" for v in cells))
    out.print(table)
    if info["sample_ids"]:
        out.print("sample: " + ", ".join(info["sample_ids"]), highlight=False)
    if out_path is not None:
        report = activation.export_audience(
            bundle,
            activation.segment_audience(bundle, parsed),
            out_path,
            send_time=_send_options(send_time, window_start, window_hours, quiet_hours),
            require_email=require_email,
        )
        _print_export(report)


@app.command()
def export(
    out_path: Annotated[Path, typer.Option("--out", help="Output file: .csv or .parquet.")],
    workdir: WorkdirOpt = Path("models"),
    rule: RuleOpt = None,
    name: NameOpt = None,
    seeds: Annotated[Path | None, typer.Option("--seeds", help="Lookalike seed ids file.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Lookalike audience size.")] = None,
    reach: Annotated[float | None, typer.Option("--reach", help="Lookalike reach.")] = None,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Propensity >= this.")
    ] = None,
    min_percentile: Annotated[
        float | None, typer.Option("--min-percentile", help="Propensity percentile >= this.")
    ] = None,
    top: Annotated[int | None, typer.Option("--top", help="At most this many, best first.")] = None,
    ids: Annotated[Path | None, typer.Option("--ids", help="Explicit profile ids file.")] = None,
    send_time: SendAtOpt = False,
    window_start: WindowStartOpt = None,
    window_hours: WindowHoursOpt = 24,
    quiet_hours: QuietOpt = None,
    require_email: EmailOpt = False,
    affinity: Annotated[
        bool,
        typer.Option("--affinity", help="Add top_categories and preferred_channel (display)."),
    ] = False,
) -> None:
    """Export an audience (segment, lookalike, score threshold or ids) for a destination."""
    from dmp_ml import activation
    from dmp_ml.bundle import load_bundle

    with _Steps("export", ["loading the bundle", "choosing the audience", "writing"]) as steps:
        steps.next()
        bundle = load_bundle(workdir)
        steps.next()
        seg = _segment_rule(rule, name, workdir, bundle)
        audience = activation.resolve_audience(
            bundle,
            segment=seg,
            seed_ids=_read_ids(seeds) if seeds else None,
            size=size,
            reach=reach,
            min_score=min_score,
            min_percentile=min_percentile,
            top=top,
            profile_ids=_read_ids(ids) if ids else None,
        )
        steps.next()
        report = activation.export_audience(
            bundle,
            audience,
            out_path,
            send_time=_send_options(send_time, window_start, window_hours, quiet_hours),
            require_email=require_email,
            affinity=affinity,
        )
    _print_export(report)


@app.command()
def forget(
    ids: Annotated[Path, typer.Option("--ids", help="Profile ids to forget, one per line.")],
    workdir: WorkdirOpt = Path("models"),
) -> None:
    """Forget profiles: erasure list, live bundle (re-published), event store."""
    from dmp_ml.erasure import forget as forget_profiles

    report = forget_profiles(workdir, _read_ids(ids))
    out.print(
        f"forgot {report.requested:,} profiles ({report.newly_erased:,} new on the erasure list, "
        f"{report.in_bundle:,} removed from the bundle, {report.cookies_erased:,} devices)"
    )
    if report.bundle_version:
        out.print(
            f"live bundle: {report.bundle_version}; older versions deleted: "
            f"{len(report.deleted_versions)}"
        )
    out.print(f"events removed: {sum(report.events_removed.values()):,}")
    for old, new in report.bento_models_replaced.items():
        out.print(f"promoted model {old} replaced by {new}", highlight=False)
    if report.temporary_removed:
        out.print(f"abandoned temporary files removed: {len(report.temporary_removed)}")
    for line in report.remains:
        err.print(f"remains: {line}", highlight=False)
    if not report.complete:
        for store, why in report.not_scrubbed.items():
            err.print(f"[red]not scrubbed:[/red] {store}: {why}", highlight=False, soft_wrap=True)
        err.print("the erasure is recorded; run forget again once the store is repaired")
        raise typer.Exit(1)


@app.command()
def promote(workdir: WorkdirOpt = Path("models")) -> None:
    """Store the MLflow champion's bundle as a BentoML model (serve with --model, or bake it)."""
    from dmp_ml.promotion import promote as promote_champion

    promotion = promote_champion(workdir)
    out.print(
        f"promoted {promotion.registered_model} v{promotion.model_version} "
        f"(bundle {promotion.bundle_version}) as BentoML model {promotion.tag}"
    )
    serve = f"dmp-ml serve --workdir {workdir} --model {promotion.tag}"
    out.print(f"serve it: {serve}", highlight=False)


@app.command()
def events(
    batch: Annotated[
        Path | None, typer.Option("--events", help="New events, CSV or Parquet (data contract).")
    ] = None,
    legacy_batch: Annotated[
        Path | None,
        typer.Argument(metavar="FILE", help="Deprecated: use --events FILE.", show_default=False),
    ] = None,
    workdir: WorkdirOpt = Path("models"),
    mapping: MappingOpt = None,
) -> None:
    """Apply a batch of new events to the live bundle without retraining."""
    from dmp_ml.refresh import apply_events

    batch = _input_file(batch, legacy_batch, "events")
    report = apply_events(workdir, batch, mapping=mapping, contract=_settings(None).contract)
    out.print(
        f"{report.rows_accepted:,} of {report.rows_received:,} events applied "
        f"({report.rows_quarantined:,} quarantined, {report.rows_erased:,} of erased profiles); "
        f"{report.profiles_updated:,} profiles updated, {report.profiles_created:,} new, "
        f"features as of {report.features_as_of}; bundle {report.bundle_version}"
    )
    for reason, n in report.quarantined_by_reason.items():
        err.print(f"quarantined {n:,}: {reason} -> {report.quarantine_path}", highlight=False)
    for warning in report.warnings:
        err.print(f"warning: {warning}", highlight=False)


@app.command()
def serve(
    workdir: WorkdirOpt = Path("models"),
    port: Annotated[
        int | None, typer.Option("--port", help="Default: service.port (3000).")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1)] = None,
    host: Annotated[str | None, typer.Option("--host", help="Default: service.host.")] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Serve a promoted BentoML model, e.g. dmp-ml-bundle:latest."),
    ] = None,
) -> None:
    """Serve the live bundle of WORKDIR (or a promoted model) over HTTP (BentoML)."""
    import pandas as pd

    from dmp_ml.bundle import served_bundle_path
    from dmp_ml.service import serve as run_service
    from dmp_ml.settings import load_settings

    settings = load_settings()
    port = port or settings.service.port
    model = model or settings.service.bento_model
    bundle_path = served_bundle_path(workdir, model)
    features = pd.read_parquet(bundle_path / "features" / "features.parquet", columns=[])
    index = features.index.astype(str)
    known = index[~index.str.startswith("anon:")]
    sample = (known if len(known) >= 2 else index)[:2]
    ids = json.dumps([str(i) for i in sample])
    base = f"http://localhost:{port}"
    auth = ' -H "Authorization: Bearer $DMP_ML_API_TOKEN"' if settings.api_token else ""
    post = f"curl -s{auth} -H 'Content-Type: application/json' {base}"
    quiet = '{"start": 22, "end": 7}'
    out.print(f"serving {bundle_path} on {base} (Ctrl-C stops). Try:", highlight=False)
    for line in (
        f"curl -s{auth} {base}/info",
        f'{post}/score -d \'{{"profile_ids": {ids}, "explain": true}}\'',
        f'{post}/lookalike -d \'{{"seed_ids": {ids}, "size": 10}}\'',
        f'{post}/send_time -d \'{{"profile_ids": {ids}, "quiet_hours": {quiet}}}\'',
    ):
        out.print(f"  {line}", highlight=False, soft_wrap=True)
    run_service(
        workdir, port=port, host=host, workers=workers, bento_model=model, settings=settings
    )


class _Steps:
    """A command's steps: a rich bar (step n of N, elapsed, ETA) on a terminal, log lines otherwise.

    ``next()`` closes the running step and starts the next one. Nothing is shown with --quiet.
    """

    def __init__(self, command: str, names: Sequence[str]) -> None:
        self.command = command
        self.names = list(names)
        self.done = -1
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: int | None = None

    def __enter__(self) -> _Steps:
        if err.is_terminal and logger.isEnabledFor(logging.INFO):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.command, total=len(self.names))
        return self

    def next(self) -> None:
        """Finish the running step (if any) and start the next one."""
        self.done += 1
        if self.done >= len(self.names):
            return
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=self.done, description=self.names[self.done]
            )
        else:
            logger.info(
                "%s: step %d/%d: %s",
                self.command,
                self.done + 1,
                len(self.names),
                self.names[self.done],
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            while self.done < len(self.names):
                self.next()
            if self._progress is None:
                logger.info("%s: done in %.1f s", self.command, time.monotonic() - self.started)
        if self._progress is not None:
            self._progress.stop()


# --------------------------------------------------- display, retargeting and campaigns


def _audience_option(text: str, workdir: Path, bundle: ModelBundle) -> tuple[pd.DataFrame, dict]:
    """``--audience``: a rule file (.json/.yaml/.yml), an ids file (.csv/.txt), an inline
    JSON rule (``{"retarget": ...}`` included) or a saved segment's name."""
    from dmp_ml import activation, segments

    path = Path(text)
    if text.lstrip().startswith("{"):
        rule = segments.parse_rule(text, bundle)
        return activation.segment_audience(bundle, rule), {"rule": rule.to_dict()}
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        rule = segments.load_rule_file(path, bundle)
        return activation.segment_audience(bundle, rule), {"rule": rule.to_dict()}
    if path.suffix.lower() in (".csv", ".txt"):
        ids = _read_ids(path)
        return activation.audience_from_spec(bundle, {"profile_ids": ids}), {
            "profile_ids": len(ids),
            "file": path.name,
        }
    rule = segments.load_segment(workdir, text)
    return activation.segment_audience(bundle, rule), {"segment": text}


def _write_json(payload: object, path: Path | None) -> None:
    text = json.dumps(payload, indent=2, default=str)
    if path is None:
        out.print_json(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    out.print(f"written to {path}")


@app.command()
def affinity(
    workdir: WorkdirOpt = Path("models"),
    ids: Annotated[
        Path | None, typer.Option("--ids", help="Per profile: ids file, one per line.")
    ] = None,
    rule: RuleOpt = None,
    name: NameOpt = None,
    seeds: Annotated[Path | None, typer.Option("--seeds", help="Lookalike seed ids file.")] = None,
    size: Annotated[int, typer.Option("--size", help="Lookalike audience size.")] = 1000,
    top: Annotated[int, typer.Option("--top", min=1, max=50)] = 3,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Per profile: .csv or .json; segment: .json.")
    ] = None,
) -> None:
    """Channel and content affinity: per profile (--ids) or of a segment (--rule, --segment,
    --seeds): channel mix, top categories with lift, best display hours."""
    import pandas as pd

    from dmp_ml import activation
    from dmp_ml import affinity as aff
    from dmp_ml.bundle import load_bundle

    bundle = load_bundle(workdir)
    if ids is not None:
        if rule or name or seeds:
            raise RequestError("--ids", "give --ids or a segment (--rule/--segment/--seeds)")
        frame, unknown = aff.profile_affinity(bundle, _read_ids(ids), top=top)
        _report_unknown(unknown)
        if out_path is not None and out_path.suffix.lower() == ".json":
            _write_json(frame.to_dict(orient="records"), out_path)
            return
        flat = pd.DataFrame(
            {
                "profile_id": frame["profile_id"],
                "preferred_channel": frame["preferred_channel"],
                "top_categories": [
                    "|".join(f"{c['category']}:{c['score']:g}" for c in cats)
                    for cats in frame["top_categories"]
                ],
            }
        )
        if out_path is None:
            out.print(flat.to_string(index=False), highlight=False)
        else:
            _write_csv(flat, out_path)
            out.print(f"{len(flat):,} profiles written to {out_path}")
        return
    seg = _segment_rule(rule, name, workdir, bundle)
    if (seg is None) == (seeds is None):
        raise RequestError("--rule", "give --ids, or one of --rule / --segment / --seeds")
    if seg is not None:
        audience = activation.segment_audience(bundle, seg)
    else:
        assert seeds is not None
        audience = activation.audience_from_spec(
            bundle, {"seed_ids": _read_ids(seeds), "size": size}
        )
    summary = aff.segment_affinity(bundle, audience["profile_id"], top=top)
    _write_json({"model_version": str(bundle.version), **summary}, out_path)


@app.command("retarget")
def retarget_command(
    template: Annotated[
        str,
        typer.Argument(help="viewed_not_bought, cart_abandoners, lapsed_buyers, email_clickers"),
    ],
    workdir: WorkdirOpt = Path("models"),
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="KEY=VALUE (JSON value), e.g. days=14, repeatable."),
    ] = None,
    rank: Annotated[
        bool, typer.Option("--rank-by-propensity", help="Best propensity first.")
    ] = False,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Export the audience (CSV or Parquet).")
    ] = None,
    with_affinity: Annotated[
        bool, typer.Option("--affinity", help="Add top_categories and preferred_channel.")
    ] = False,
) -> None:
    """A retargeting audience from a built-in template; --out exports it."""
    from dmp_ml import activation
    from dmp_ml.bundle import load_bundle
    from dmp_ml.retargeting import retarget

    params: dict[str, object] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RequestError("--param", f"expected KEY=VALUE, got {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    bundle = load_bundle(workdir)
    frame = retarget(bundle, template, params, rank_by_propensity=rank)
    out.print(f"{template}: {len(frame):,} profiles (bundle {bundle.version})")
    if out_path is not None:
        report = activation.export_audience(bundle, frame, out_path, affinity=with_affinity)
        _print_export(report)


campaign_app = typer.Typer(
    help="Campaigns: an audience with a reproducible holdout, and the lift readout.",
    no_args_is_help=True,
)
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("create")
def campaign_create(
    name: Annotated[str, typer.Argument(help="Campaign name (letters, digits, _ - .).")],
    audience: Annotated[
        str,
        typer.Option(
            "--audience",
            help="Rule file (.json/.yaml), ids file (.csv/.txt), inline JSON rule, or a "
            "saved segment's name.",
        ),
    ],
    workdir: WorkdirOpt = Path("models"),
    holdout: Annotated[
        float | None, typer.Option("--holdout", help="Held-out share (default 0.1).")
    ] = None,
    target_event: Annotated[
        str | None, typer.Option("--target-event", help="Default: purchase.")
    ] = None,
    horizon_days: Annotated[int | None, typer.Option("--horizon-days", help="Default: 30.")] = None,
    launch: Annotated[
        str | None, typer.Option("--launch", help="UTC launch (default: the data cutoff).")
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Export the treated group (never the holdout).")
    ] = None,
) -> None:
    """Store a campaign: its audience now and a hashed holdout; --out exports the treated."""
    from dmp_ml.bundle import load_bundle
    from dmp_ml.campaigns import create_campaign, export_campaign

    bundle = load_bundle(workdir)
    frame, source = _audience_option(audience, workdir, bundle)
    campaign = create_campaign(
        bundle,
        name,
        frame,
        workdir=workdir,
        holdout=holdout,
        target_event=target_event,
        horizon_days=horizon_days,
        launch=launch,
        source=source,
    )
    info = campaign.to_dict()
    out.print(
        f"campaign {name!r}: {info['treated']:,} treated, {info['holdout_profiles']:,} held out; "
        f"launch {info['launch']}, {info['target_event']} within {info['horizon_days']} days"
    )
    if out_path is not None:
        _print_export(export_campaign(bundle, workdir, name, out_path))


@campaign_app.command("report")
def campaign_report_command(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    workdir: WorkdirOpt = Path("models"),
    events: Annotated[
        Path | None,
        typer.Option("--events", help="Event log after launch (default: the workdir's store)."),
    ] = None,
    mapping: MappingOpt = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Count events before this (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the readout as JSON.")] = False,
) -> None:
    """Treated vs holdout conversion, lift with 95% intervals, MDE and a verdict."""
    from rich.table import Table

    from dmp_ml.bundle import load_bundle
    from dmp_ml.campaigns import campaign_report
    from dmp_ml.contract import load_events
    from dmp_ml.errors import BundleError

    frame = load_events(events, mapping=mapping).frame if events is not None else None
    try:
        bundle = load_bundle(workdir)
    except BundleError:
        bundle = None
    report = campaign_report(workdir, name, events=frame, as_of=as_of, bundle=bundle)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    table = Table(title=f"campaign {name}: {report['verdict']}", show_header=False)
    table.add_row("launch", report["launch"])
    table.add_row("days so far", f"{report['days_so_far']:g} of {report['horizon_days']}")
    for arm in ("treated", "holdout"):
        a = report[arm]
        rate = "-" if a["rate"] is None else f"{a['rate']:.2%}"
        table.add_row(arm, f"{a['converted']:,} of {a['profiles']:,} converted ({rate})")
    absolute = report.get("absolute_lift")
    if absolute:
        low, high = absolute["interval_95"]
        table.add_row(
            "absolute lift",
            f"{absolute['estimate']:+.2%} (95% {low:+.2%} .. {high:+.2%}, {absolute['method']})",
        )
        relative = report["relative_lift"]
        if relative["estimate"] is not None and relative["interval_95"]:
            rl, rh = relative["interval_95"]
            table.add_row(
                "relative lift",
                f"{relative['estimate']:+.1%} (95% {rl:+.1%} .. {rh:+.1%}, {relative['method']})",
            )
        mde = report["minimum_detectable_effect"]
        table.add_row("minimum detectable effect", f"{mde['absolute']:.2%} (80% power, 5%)")
    out.print(table)
    by = report["by_propensity"]
    if by["available"]:
        bins = Table("bin", "scores", "treated", "holdout", "lift", "95%")
        for row in by["rows"]:
            lo, hi = row.get("interval_95") or (None, None)
            bins.add_row(
                str(row["bin"]),
                f"{row['score_range'][0]:.3f}..{row['score_range'][1]:.3f}",
                f"{row['treated_rate']:.2%} of {row['treated']}",
                f"{row['holdout_rate']:.2%} of {row['holdout']}",
                "-" if row.get("absolute_lift") is None else f"{row['absolute_lift']:+.2%}",
                "-" if lo is None else f"{lo:+.2%} .. {hi:+.2%}",
            )
        out.print(bins)
    else:
        err.print(f"uplift by propensity: {by['reason']}", highlight=False)


def _error_line(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)


def _os_error_message(exc: OSError) -> str:
    """``path: reason`` for an OSError (both paths of a rename)."""
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return reason
    return f"{' -> '.join(os.fsdecode(p) for p in paths)}: {reason}"


def _click_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage errors, other click errors) as typer raises them.

    Typer >= 0.29 ships its own copy of click, so its errors are not ``click.ClickException``;
    older typers re-export click's. ``typer.BadParameter`` derives from the right ones either way.
    """
    mro = typer.BadParameter.__mro__
    usage = tuple(cls for cls in mro if cls.__name__ == "UsageError")
    other = tuple(cls for cls in mro if cls.__name__ == "ClickException")
    return usage, other


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: a user error is one line on stderr and exit code 2.

    Usage errors, typed dmp-ml errors and OS errors (a missing file, a full disk, a read-only
    folder) are reported that way; ``-v`` adds the traceback.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = list(sys.argv[1:] if argv is None else argv)
    flags = args[: args.index("--")] if "--" in args else args
    verbose = "-v" in flags or "--verbose" in flags
    usage_errors, click_errors = _click_errors()
    try:
        code = app(args=args, prog_name="dmp-ml", standalone_mode=False)
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(2) from None
        if verbose:
            traceback.print_exc()
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _error_line(f"{exc.format_message()}{hint}")  # type: ignore[attr-defined]
        raise SystemExit(2) from None
    except click_errors as exc:
        if verbose:
            traceback.print_exc()
        _error_line(exc.format_message())  # type: ignore[attr-defined]
        raise SystemExit(2) from None
    except DmpMlError as exc:
        if verbose:
            traceback.print_exc()
        _error_line(str(exc))
        raise SystemExit(2) from None
    except OSError as exc:
        if verbose:
            traceback.print_exc()
        _error_line(_os_error_message(exc))
        raise SystemExit(2) from None
    except (KeyboardInterrupt, typer.Abort):
        err.print("aborted")
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
