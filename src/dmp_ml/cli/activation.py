"""Activation commands: segments, exports, affinity, retargeting, campaigns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dmp_ml.cli.common import (
    EmailOpt,
    MappingOpt,
    NameOpt,
    QuietOpt,
    RuleOpt,
    SendAtOpt,
    Steps,
    WindowHoursOpt,
    WindowStartOpt,
    WorkdirOpt,
    err,
    out,
    parse_quiet_hours,
    read_ids,
    report_unknown,
    write_csv,
)
from dmp_ml.errors import RequestError

if TYPE_CHECKING:
    import pandas as pd

    from dmp_ml.activation import ExportReport, SendTimeOptions
    from dmp_ml.bundle import ModelBundle
    from dmp_ml.segments import Rule


def _send_options(
    send_time: bool, start: str | None, hours: int, quiet: str | None
) -> SendTimeOptions | bool:
    from dmp_ml.activation import SendTimeOptions

    if not send_time:
        return False
    return SendTimeOptions(
        window_start=start,
        window_hours=hours,
        quiet_hours=parse_quiet_hours(quiet) if quiet else None,
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
    bundle = load_bundle(workdir, lazy=True)
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

    with Steps("export", ["loading the bundle", "choosing the audience", "writing"]) as steps:
        steps.next()
        bundle = load_bundle(workdir, lazy=True)
        steps.next()
        seg = _segment_rule(rule, name, workdir, bundle)
        audience = activation.resolve_audience(
            bundle,
            segment=seg,
            seed_ids=read_ids(seeds) if seeds else None,
            size=size,
            reach=reach,
            min_score=min_score,
            min_percentile=min_percentile,
            top=top,
            profile_ids=read_ids(ids) if ids else None,
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
        ids = read_ids(path)
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
    from dmp_ml.bundle import load_bundle
    from dmp_ml.models import affinity as aff

    bundle = load_bundle(workdir, lazy=True)
    if ids is not None:
        if rule or name or seeds:
            raise RequestError("--ids", "give --ids or a segment (--rule/--segment/--seeds)")
        frame, unknown = aff.profile_affinity(bundle, read_ids(ids), top=top)
        report_unknown(unknown)
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
            write_csv(flat, out_path)
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
            bundle, {"seed_ids": read_ids(seeds), "size": size}
        )
    summary = aff.segment_affinity(bundle, audience["profile_id"], top=top)
    _write_json({"model_version": str(bundle.version), **summary}, out_path)


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
    bundle = load_bundle(workdir, lazy=True)
    frame = retarget(bundle, template, params, rank_by_propensity=rank)
    out.print(f"{template}: {len(frame):,} profiles (bundle {bundle.version})")
    if out_path is not None:
        report = activation.export_audience(bundle, frame, out_path, affinity=with_affinity)
        _print_export(report)


campaign_app = typer.Typer(
    help="Campaigns: an audience with a reproducible holdout, and the lift readout.",
    no_args_is_help=True,
)


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

    bundle = load_bundle(workdir, lazy=True)
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
        bundle = load_bundle(workdir, lazy=True)
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
