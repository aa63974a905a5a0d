"""The lookalike step of ``train``: the index over the feature table, charted on one seed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dmp_ml.training_context import StepOutcome, TrainContext, comparison

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dmp_ml.features import FeatureTable
    from dmp_ml.models.lookalike import LookalikeModel
    from dmp_ml.models.lookalike.embedding import EmbeddingEngine

logger = logging.getLogger(__name__)

CHART_SEED = 200
"""Profiles in the seed whose held-out recall the lookalike run charts."""


def train_step(ctx: TrainContext) -> StepOutcome:
    """Build the lookalike index over every profile, chart it on one seed, log the run."""
    from dmp_ml.models.lookalike import LookalikeModel
    from dmp_ml.tracking import log_metrics_run

    assert ctx.features is not None
    model = LookalikeModel(ctx.settings.lookalike).fit(ctx.features, engine=_embedding_engine(ctx))
    ctx.models["lookalike"] = model
    report = {k: v for k, v in model.build_report_.items() if isinstance(v, int | float)}
    charts, chart_metrics, seed_text, guard = _charts(
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


def _embedding_engine(ctx: TrainContext) -> EmbeddingEngine | None:
    """Where the embedder is fitted and the profiles embedded: on the train's Dask client when
    ``features.engine: dask`` (:class:`dmp_ml.scale.lookalike.DaskEmbedding`), else in
    process."""
    fs = ctx.settings.features
    if fs.engine != "dask":
        return None
    from dmp_ml.scale.lookalike import DaskEmbedding

    return DaskEmbedding(ctx.builder.engine, fs.dask_partitions)


def _charts(
    model: LookalikeModel, table: FeatureTable, target_event: str
) -> tuple[dict[str, Figure], dict[str, float], str, dict[str, str]]:
    """Held-out recall against audience size, and the score distribution, for one seed.

    The seed: up to :data:`CHART_SEED` random profiles that did the propensity target event
    (``<target>_count_total > 0``), the everyday "find more like my buyers". No such profiles
    (or too few to hold some out): no charts, and the run says why. The last item is the
    guard's choice for that seed (``served``, ``comparison``), empty without one.
    """
    from matplotlib.figure import Figure

    from dmp_ml.experiments import feature_seed, plot_quality_curve
    from dmp_ml.features import slug

    column = f"{slug(target_event)}_count_total"
    try:
        seed = feature_seed(table, column, n=CHART_SEED, seed=0)
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
        line = comparison(f"held-out seed recall at {top}", recall, served)
        guard = {"served": served, "comparison": f"{line} (chosen again for every request)"}
    return charts, found, seed.description, guard
