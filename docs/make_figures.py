"""Regenerate the README pictures under docs/ from a demo-world training (``make docs``).

Every number drawn comes from the library trained on the synthetic demo world with a fixed seed:

- ``send_time_heatmap.png``: P(engage | send) by local hour of week, population and one profile;
- ``propensity_gains.png``: cumulative gains and lift by decile of the propensity model against
  its baselines on the validation snapshot (the most recent labelled period, never trained on);
- ``lookalike_quality.png``: held-out seed recall and true precision against audience size for
  a seed drawn from one planted interest group;
- ``affinity_segments.png``: top categories (lift over the population, members behind each) and
  channel mix of three planted interest groups;
- ``code_layout.png``: the data flow of the code and the modules that own each stage;
- ``campaign_readout.png``: a campaign simulated on the demo world (trained before launch, 30%
  holdout, a planted extra-purchase effect) read out with and without the effect.

Usage: ``python docs/make_figures.py [--out docs] [--profiles 3000] [--days 150] [--seed 0]
[--only affinity campaign ...]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from dmp_ml import experiments, metrics
from dmp_ml.bundle import load_bundle
from dmp_ml.campaigns import campaign_report, create_campaign, plot_readout
from dmp_ml.demo import DemoWorld, generate_demo_world, plant_uplift
from dmp_ml.features import FeatureTable
from dmp_ml.identity import resolve_identity
from dmp_ml.models.affinity import AffinityModel, plot_segment_affinity
from dmp_ml.models.lookalike import LookalikeModel
from dmp_ml.models.propensity import build_snapshots, train_propensity
from dmp_ml.models.send_time import SendTimeModel
from dmp_ml.pipeline import train
from dmp_ml.settings import Settings, load_settings

logger = logging.getLogger("make_figures")

DPI = 80
SIZES = [50, 100, 200, 300, 400, 600, 800, 1200]


def _save(fig: Figure, path: Path) -> Path:
    # no timestamps or version strings in the file: the same inputs give the same bytes
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    logger.info("wrote %s (%.0f KB)", path, path.stat().st_size / 1024)
    return path


def send_time_figure(world: DemoWorld, settings: Settings, out: Path) -> Path:
    """Population mean curve and the curve of the profile with the most own evidence."""
    resolved = resolve_identity(
        world.events, world.end, settings.features, consent=world.consent
    ).events
    timezones = world.profiles.set_index("profile_id")["timezone"]
    model = SendTimeModel.from_settings(settings).fit(resolved, world.end, timezones)
    curves = model.local_curve_
    known = np.flatnonzero(model.basis_ == "profile")
    one = known[np.argmax(model.data_weight_[known])] if len(known) else 0
    fig = experiments.plot_hour_of_week(
        {
            "population (mean of all profiles)": curves.mean(axis=0),
            f"profile {model.profile_ids_[one]} ({model.timezone_[one]})": curves[one],
        },
        title="Send time: probability of engaging by local hour of week",
    )
    return _save(fig, out / "send_time_heatmap.png")


def gains_figure(world: DemoWorld, settings: Settings, out: Path) -> tuple[Path, FeatureTable]:
    """Cumulative gains and lift per decile on the validation snapshot; returns the table too."""
    snapshots, table = build_snapshots(
        world.events, world.end, settings, world.profiles, world.consent
    )
    result = train_propensity(snapshots, table, settings)
    y = result.validation.y
    pred = result.validation.predictions
    scores = {
        "LightGBM model (calibrated)": pred["p_model"].to_numpy(),
        "recency/frequency logistic": pred["p_baseline_rf_logreg"].to_numpy(),
        f"single feature: {result.baseline_single_feature}": pred["p_baseline_single"].to_numpy(),
    }
    fig = Figure(figsize=(9, 3.8))
    gains_ax, lift_ax = fig.subplots(1, 2)
    gains_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="random")
    deciles = np.arange(1, 11)
    width = 0.8 / len(scores)
    for i, (name, p) in enumerate(scores.items()):
        gains = metrics.cumulative_gains(y, p)
        auc = metrics.roc_auc(y, p)
        gains_ax.plot(
            gains["fraction_targeted"], gains["fraction_captured"], label=f"{name} (AUC {auc:.2f})"
        )
        # lift of each decile on its own (not cumulative): positives rate in it / overall rate
        order = np.argsort(-p, kind="stable")
        parts = np.array_split(y[order], 10)
        lift = [part.mean() / y.mean() for part in parts]
        offset = (i - (len(scores) - 1) / 2) * width
        lift_ax.bar(deciles + offset, lift, width=width, label=name)
    gains_ax.set_xlabel("share of profiles targeted (by score)")
    gains_ax.set_ylabel("share of buyers reached")
    gains_ax.set_title("Cumulative gains")
    gains_ax.legend(loc="lower right", fontsize=7)
    lift_ax.axhline(1.0, linestyle="--", color="grey", linewidth=1)
    lift_ax.set_xticks(deciles)
    lift_ax.set_xlabel("score decile (1 = highest scores)")
    lift_ax.set_ylabel("purchase rate / overall rate")
    lift_ax.set_title("Lift by decile")
    fig.suptitle(
        f"Propensity: purchase in the next {result.horizon_days} days, validation snapshot "
        f"{result.validation.cutoff:%Y-%m-%d} ({len(y):,} profiles, {int(y.sum()):,} buyers)",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, out / "propensity_gains.png"), table


def lookalike_figure(world: DemoWorld, table: FeatureTable, settings: Settings, out: Path) -> Path:
    """Quality against size for a seed of 150 members of the largest planted interest group."""
    model = LookalikeModel(settings.lookalike).fit(table)
    seed = experiments.truth_seed(world.truth, table, n=150, seed=0)
    curve = model.quality_curve(seed.ids, SIZES, truth_ids=seed.truth_ids)
    fig = experiments.plot_quality_curve(
        curve, title=f"Lookalike quality, seed: {seed.description}"
    )
    return _save(fig, out / "lookalike_quality.png")


def affinity_figure(world: DemoWorld, settings: Settings, out: Path) -> Path:
    """Segment affinity of three planted interest groups (consented profiles at the end)."""
    resolved = resolve_identity(
        world.events, world.end, settings.features, consent=world.consent
    ).events
    eligible = resolved["profile_id"].astype("string").unique()
    model = AffinityModel.from_settings(settings).fit(resolved, eligible, world.end)
    truth = world.truth
    summaries = {
        group: model.segment_summary(
            truth.loc[truth["interest_group"] == group, "profile_id"], top=5
        )
        for group in ("outdoor", "tech", "beauty")
    }
    fig = plot_segment_affinity(
        summaries, title="Affinity of three planted interest groups (demo world)"
    )
    return _save(fig, out / "affinity_segments.png")


def campaign_figure(world: DemoWorld, settings: Settings, out: Path) -> Path:
    """A campaign launched 30 days before the end of the log, trained on the days before."""
    launch = world.end - pd.Timedelta(days=30)
    with tempfile.TemporaryDirectory() as tmp:
        quick = settings.model_copy(
            update={
                "workdir": Path(tmp) / "w",
                "mlflow_tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                "propensity": settings.propensity.model_copy(
                    update={"n_snapshots": 2, "n_estimators": 150}
                ),
            }
        )
        before = world.events[world.events["event_time"] < launch]
        train(before, launch, quick.workdir, profiles=world.profiles, consent=world.consent,
              settings=quick)  # fmt: skip
        bundle = load_bundle(quick.workdir)
        frame = bundle.features.frame
        audience = frame.index[(frame["event_count_90d"] >= 1) & (frame["is_anonymous"] == 0)]
        campaign = create_campaign(
            bundle, "spring", audience, workdir=quick.workdir, holdout=0.3, launch=launch
        )
        planted = plant_uplift(world, campaign.treated_ids, launch, 30, probability=0.1)
        name = f"planted +{planted.true_absolute_lift:.3f}"
        readouts = {
            name: campaign_report(quick.workdir, "spring", events=planted.world.events),
            "no effect": campaign_report(quick.workdir, "spring", events=world.events),
        }
    fig = plot_readout(
        readouts,
        truths={name: planted.true_absolute_lift, "no effect": 0.0},
        title=f"Simulated campaign: purchase within 30 days, {len(campaign.members):,} "
        "profiles, 30% holdout",
    )
    return _save(fig, out / "campaign_readout.png")


# The data flow of the code and where each concept lives (README "How the code is laid out").
LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("events", ("contract.py", "rows.py", "mapping.py", "store.py", "spool.py")),
    ("identity", ("identity.py", "erasure.py")),
    ("features", ("features/", "scale.py")),
    (
        "models",
        (
            "models/base.py",
            "training_context.py",
            "propensity/",
            "send_time/",
            "lookalike/",
            "affinity/",
        ),
    ),
    (
        "bundle",
        (
            "bundle.py",
            "mapped.py",
            "delta.py",
            "layout.py",
            "pipeline.py",
            "refresh.py",
            "tracking.py",
        ),
    ),
    (
        "answers",
        ("service/", "cli/", "activation.py", "segments.py", "retargeting.py", "campaigns.py"),
    ),
)


def layout_figure(out: Path) -> Path:
    """Boxes for each stage of the data flow, the modules that own it listed inside."""
    fig = Figure(figsize=(11, 3.6))
    ax = fig.add_subplot()
    ax.set_axis_off()
    n = len(LAYOUT)
    width, gap = 1.0, 0.35
    for i, (stage, modules) in enumerate(LAYOUT):
        x = i * (width + gap)
        ax.add_patch(
            FancyBboxPatch(
                (x, 0), width, 1.0, boxstyle="round,pad=0.02", facecolor=f"C{i}", alpha=0.15
            )
        )
        ax.text(x + width / 2, 0.92, stage, ha="center", va="top", fontsize=11, weight="bold")
        step = min(0.13, 0.72 / max(1, len(modules)))  # the longest list fits in the box
        for j, module in enumerate(modules):
            ax.text(x + width / 2, 0.77 - j * step, module, ha="center", va="top", fontsize=8)
        if i < n - 1:
            ax.annotate(
                "",
                xy=(x + width + gap - 0.03, 0.5),
                xytext=(x + width + 0.03, 0.5),
                arrowprops={"arrowstyle": "->", "lw": 1.5},
            )
    ax.set_xlim(-0.1, n * (width + gap) - gap + 0.1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("dmp-ml: events -> identity -> features -> models -> bundle -> answers")
    fig.tight_layout()
    return _save(fig, out / "code_layout.png")


FIGURES = ("send_time", "propensity", "lookalike", "affinity", "campaign", "layout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--profiles", type=int, default=3000)
    parser.add_argument("--days", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("dmp_ml", "lightgbm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if "layout" in args.only:
        layout_figure(args.out)
    if not set(args.only) - {"layout"}:
        return 0
    settings = load_settings()
    world = generate_demo_world(args.profiles, args.days, seed=args.seed)
    logger.info(
        "demo world: %d profiles, %d days, %d events", args.profiles, args.days, len(world.events)
    )
    if "send_time" in args.only:
        send_time_figure(world, settings, args.out)
    if {"propensity", "lookalike"} & set(args.only):
        _, table = gains_figure(world, settings, args.out)
        if "lookalike" in args.only:
            lookalike_figure(world, table, settings, args.out)
    if "affinity" in args.only:
        affinity_figure(world, settings, args.out)
    if "campaign" in args.only:
        campaign_figure(world, settings, args.out)
    logger.info("done in %.0f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
