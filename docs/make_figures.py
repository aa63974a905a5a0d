"""Regenerate the README pictures under docs/ from a demo-world training (``make docs``).

Every number drawn comes from the library trained on the synthetic demo world with a fixed seed:

- ``send_time_heatmap.png``: P(engage | send) by local hour of week, population and one profile;
- ``propensity_gains.png``: cumulative gains and lift by decile of the propensity model against
  its baselines on the validation snapshot (the most recent labelled period, never trained on);
- ``lookalike_quality.png``: held-out seed recall and true precision against audience size for
  a seed drawn from one planted interest group.

Usage: ``python docs/make_figures.py [--out docs] [--profiles 3000] [--days 150] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dmp_ml import experiments, metrics
from dmp_ml.demo import DemoWorld, generate_demo_world
from dmp_ml.expansion import LookalikeModel
from dmp_ml.features import FeatureTable
from dmp_ml.identity import resolve_identity
from dmp_ml.propensity import build_snapshots, train_propensity
from dmp_ml.send_time import SendTimeModel
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
    model = SendTimeModel.from_settings(settings.send_time).fit(resolved, world.end, timezones)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--profiles", type=int, default=3000)
    parser.add_argument("--days", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("dmp_ml", "lightgbm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    world = generate_demo_world(args.profiles, args.days, seed=args.seed)
    logger.info(
        "demo world: %d profiles, %d days, %d events", args.profiles, args.days, len(world.events)
    )
    send_time_figure(world, settings, args.out)
    _, table = gains_figure(world, settings, args.out)
    lookalike_figure(world, table, settings, args.out)
    logger.info("done in %.0f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
