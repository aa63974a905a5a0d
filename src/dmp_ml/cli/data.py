"""Data commands: validate an event log, generate a demo world, build features."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from dmp_ml.cli.common import (
    ConfigOpt,
    ConsentMappingOpt,
    ConsentOpt,
    EventsOpt,
    MappingOpt,
    ProfilesMappingOpt,
    ProfilesOpt,
    Steps,
    input_file,
    out,
    settings_for,
)

logger = logging.getLogger(__name__)


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

    events = input_file(events, legacy_events, "validate")
    result = load_events(events, mapping=mapping, settings=settings_for(None).contract)
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
    with Steps("demo-data", ["generating the world", "writing Parquet files"]) as steps:
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
    from dmp_ml.features import build_features
    from dmp_ml.inputs import load_inputs
    from dmp_ml.pages import disable_huge_pages, keep_freed_memory

    # what the imports built lives as long as the process: no collection walks it again (the
    # one at exit took about 0.1 s over pandas' and pyarrow's objects)
    gc.freeze()
    disable_huge_pages()  # gigabytes of short-lived memory: 4 kB pages cost far less to fault
    keep_freed_memory()  # ... and freed columns are reused, not faulted in again
    feature_overrides = {"engine": engine, "dask_scheduler": scheduler}
    settings = settings_for(config)
    if any(v is not None for v in feature_overrides.values()):
        section = settings.features.model_copy(
            update={k: v for k, v in feature_overrides.items() if v is not None}
        )
        settings = settings.model_copy(update={"features": section})
    loading = "loading events" + (", profiles and consent" if profiles or consent else "")
    names = [loading, f"building features ({settings.features.engine})", "writing Parquet"]
    with Steps("features", names) as steps:
        steps.next()
        # text kept as Parquet's dictionaries: the build reads codes, never one string a row
        inputs = load_inputs(
            events,
            profiles,
            consent,
            mapping=mapping,
            profiles_mapping=profiles_mapping,
            consent_mapping=consent_mapping,
            settings=settings.contract,
            dictionaries=True,
        )
        logger.info(
            "features: loaded %s",
            ", ".join(f"{kind} in {seconds:.2f} s" for kind, seconds in inputs.seconds.items()),
        )
        steps.next()
        assert inputs.events is not None
        table = build_features(
            inputs.events.frame,
            as_of,
            inputs.profiles.frame if inputs.profiles else None,
            inputs.consent.frame if inputs.consent else None,
            settings,
            encoded=inputs.events.encoded,
        )
        del inputs  # the log is done with: its memory serves the write, not the exit
        steps.next()
        table.to_parquet(out_path)
    from rich.table import Table

    summary = Table(title=f"features as of {table.spec.as_of}", show_header=False)
    summary.add_row("profiles", f"{len(table):,}")
    for key, value in table.summary.items():
        summary.add_row(key.replace("_", " "), f"{value:,}")
    summary.add_row("written to", str(out_path))
    out.print(summary)
