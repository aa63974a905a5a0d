"""Serving commands: serve the bundle over HTTP, apply fresh events, forget profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dmp_ml.cli.common import MappingOpt, WorkdirOpt, err, input_file, out, read_ids, settings_for
from dmp_ml.errors import DmpMlError


def forget(
    ids: Annotated[Path, typer.Option("--ids", help="Profile ids to forget, one per line.")],
    workdir: WorkdirOpt = Path("models"),
) -> None:
    """Forget profiles: erasure list, live bundle (re-published), event store."""
    from dmp_ml.erasure import forget as forget_profiles

    report = forget_profiles(workdir, read_ids(ids))
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


def compact(workdir: WorkdirOpt = Path("models")) -> None:
    """Fold the refresh deltas over the live bundle into a new base bundle."""
    from dmp_ml.refresh import compact as compact_deltas

    version = compact_deltas(workdir)
    if version is None:
        out.print(
            "nothing folded: no deltas over the live bundle, or another process compacted or "
            "replaced it meanwhile"
        )
    else:
        out.print(f"deltas folded into a new base; live bundle {version}", highlight=False)


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
    from dmp_ml.refresh import Refresher, compact

    batch = input_file(batch, legacy_batch, "events")
    settings = settings_for(None)
    refresher = Refresher(workdir, contract=settings.contract, refresh=settings.refresh)
    report = refresher.apply(batch, mapping=mapping)
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
    if not refresher.compaction_due():
        return
    # the batch is live already: a fold only tidies the chain, and its failure is its own
    out.print("folding the deltas over the base into a new base (refresh.max_deltas) ...")
    try:
        folded = compact(workdir)
    except (DmpMlError, OSError) as exc:
        raise DmpMlError(
            f"the events were applied (bundle {report.bundle_version}), but folding the deltas "
            f"failed: {exc}; they stay until `dmp-ml compact` succeeds"
        ) from exc
    if folded is None:
        out.print("nothing folded: another process is compacting or replaced the base")
    else:
        out.print(f"deltas folded into a new base; live bundle {folded}", highlight=False)


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
    from dmp_ml.bundle import served_bundle_path
    from dmp_ml.service import example_profile_ids
    from dmp_ml.service import serve as run_service

    settings = settings_for(None)
    port = port or settings.service.port
    model = model or settings.service.bento_model
    bundle_path = served_bundle_path(workdir, model)
    ids = json.dumps(example_profile_ids(bundle_path))
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
