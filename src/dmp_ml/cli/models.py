"""Model commands: train, score, send times, lookalike audiences, promote the champion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dmp_ml.cli.common import (
    ConfigOpt,
    ConsentMappingOpt,
    ConsentOpt,
    EventsOpt,
    IdsOpt,
    MappingOpt,
    OutOpt,
    ProfilesMappingOpt,
    ProfilesOpt,
    Steps,
    WorkdirOpt,
    err,
    out,
    parse_quiet_hours,
    read_ids,
    report_unknown,
    settings_for,
    write_csv,
)


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

    from dmp_ml.pages import map_large_blocks
    from dmp_ml.pipeline import STEPS
    from dmp_ml.pipeline import train as run_pipeline

    map_large_blocks()  # a batch command: freed large temporaries go back to the system
    settings = settings_for(config, workdir=workdir)
    updates = {"target_event": target_event, "horizon_days": horizon_days}
    if any(v is not None for v in updates.values()):
        section = settings.propensity.model_copy(
            update={k: v for k, v in updates.items() if v is not None}
        )
        settings = settings.model_copy(update={"propensity": section})
    names = ["loading inputs", *(name.replace("_", " ") for name, _ in STEPS), "publishing"]
    with Steps("train", names) as steps:
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
    table.add_column("seconds", justify="right")
    table.add_column("headline")
    for name, outcome in result.steps.items():
        headline = ", ".join(f"{k}={v:.3f}" for k, v in _headline(outcome.metrics))
        if outcome.status != "trained":
            headline = outcome.reason
        elif "comparison" in (outcome.details or {}):  # the guard's verdict, not just numbers
            headline = str(outcome.details["comparison"])
        table.add_row(name, outcome.status, f"{outcome.seconds or 0:.1f}", headline)
    out.print(table)
    out.print(
        "seconds: "
        + ", ".join(f"{stage} {value:.1f}" for stage, value in result.seconds.items())
        + f"; total {sum(result.seconds.values()):.1f}"
    )
    if result.peak_mb:
        out.print(
            "peak memory MB: "
            + ", ".join(f"{stage} {value:.0f}" for stage, value in result.peak_mb.items())
        )
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


def score(
    workdir: WorkdirOpt = Path("models"),
    ids: IdsOpt = None,
    out_path: OutOpt = Path("scores.csv"),
) -> None:
    """Write propensity scores with their basis (history_days, events_used,
    days_since_last_event); unknown ids go to stderr."""
    from dmp_ml.bundle import load_bundle

    bundle = load_bundle(workdir, lazy=True)
    wanted = read_ids(ids) if ids else None
    result = bundle.score(wanted)
    write_csv(result.frame, out_path)
    report_unknown(result.unknown_ids)
    out.print(f"{len(result.frame):,} scores written to {out_path}")


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

    quiet = parse_quiet_hours(quiet_hours) if quiet_hours else None
    bundle = load_bundle(workdir, lazy=True)
    decision = bundle.send_time(
        read_ids(ids) if ids else None,
        window_start=window_start,
        window_hours=window_hours,
        quiet_hours=quiet,
    )
    frame = decision.frame[["profile_id", "send_at", "hour_of_week", "probability", "basis"]]
    write_csv(frame, out_path)
    report_unknown(decision.unknown_ids)
    out.print(f"{len(frame):,} send times written to {out_path}")


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

    bundle = load_bundle(workdir, lazy=True)
    audience = bundle.lookalike(
        read_ids(seeds),
        size=size,
        reach=reach,
        exclude_ids=read_ids(exclude) if exclude else (),
    )
    write_csv(audience.frame[["profile_id", "score", "rank"]], out_path)
    for line in audience.lines():
        err.print(line, highlight=False)
    if diagnostics is not None:
        diagnostics.parent.mkdir(parents=True, exist_ok=True)
        diagnostics.write_text(json.dumps(audience.diagnostics, indent=2, default=str))
    out.print(f"{len(audience.frame):,} profiles written to {out_path}")


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
