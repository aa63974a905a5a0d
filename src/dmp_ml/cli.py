"""The ``dmp-ml`` command line: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from dmp_ml.errors import DmpMlError

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
    Path | None, typer.Option("--mapping", help="YAML column mapping for a foreign log.")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Settings YAML (default pipelines/default.yaml).")
]


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if err.is_terminal:
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "distributed", "bentoml"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command()
def validate(
    events: Annotated[Path, typer.Argument(help="Event log, CSV or Parquet.")],
    mapping: MappingOpt = None,
    quarantine: Annotated[
        Path | None, typer.Option("--quarantine", help="Write quarantined rows to this Parquet.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load an event log against the data contract and report what was loaded and quarantined."""
    from dmp_ml.contract import load_events

    result = load_events(events, mapping=mapping)
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
) -> None:
    """Generate the synthetic demo DMP world (events, profiles, consent, ground truth)."""
    from dmp_ml.demo import generate_demo_world, write_demo_world

    world = generate_demo_world(n_profiles=profiles, days=days, seed=seed)
    paths = write_demo_world(world, out_dir)
    out.print(
        f"demo world: {len(world.profiles):,} profiles, {len(world.events):,} events, "
        f"{world.start:%Y-%m-%d} .. {world.end:%Y-%m-%d}"
    )
    for name, path in paths.items():
        out.print(f"  {name}: {path}")


def main() -> None:
    """Console entry point: user errors become one readable line and a non-zero exit."""
    try:
        app(standalone_mode=False)
    except DmpMlError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except click.exceptions.Abort:
        err.print("aborted")
        raise SystemExit(130) from None
    except click.exceptions.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
