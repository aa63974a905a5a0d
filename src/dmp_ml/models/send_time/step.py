"""The send-time step of ``train``: an honest held-out evaluation, the served fit, its charts."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.training_context import StepOutcome, TrainContext

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dmp_ml.models.send_time import SendTimeModel
    from dmp_ml.models.send_time.fitting import CurveEngine

logger = logging.getLogger(__name__)


def train_step(ctx: TrainContext) -> StepOutcome:
    """Fit before the last ``evaluation_days``, score on them, then refit on all and log the run.

    The refit reuses the hyper-parameters the first fit selected (one search per train); its
    calibration and guard are fitted on all the data.
    """
    from dmp_ml.models.send_time import SendTimeModel, evaluate_send_time
    from dmp_ml.models.send_time.baselines import comparison_line
    from dmp_ml.tracking import guard_artifacts, log_metrics_run

    st = ctx.settings.send_time
    holdout = pd.Timedelta(days=st.evaluation_days)
    cutoff = ctx.as_of - holdout
    assert ctx.features is not None
    eligible = ctx.features.profile_ids
    timezones = _timezones(ctx.profiles)
    if timezones is not None:
        timezones = timezones[timezones.index.isin(eligible)]
    # honest evaluation: fit before the last `evaluation_days`, score on them, then refit on all
    resolved = _send_time_events(ctx, eligible)
    engine = _curve_engine(ctx)
    # a fit reads only the rows before its cutoff: the whole log serves both (no copy of a part)
    before = SendTimeModel.from_settings(ctx.settings).fit(
        resolved, cutoff, timezones, engine=engine
    )
    # the log holds the rows before the cutoff too: the baselines' history is read from the
    # same extraction (a second one of the whole log was the step's largest moment)
    evaluation = evaluate_send_time(before, resolved, timezones=timezones)
    charts, chart_metrics = _charts(before, resolved, st.evaluation_days)
    selection = before.selection_
    del before  # its curves ((n_profiles, 168) each) go before the served fit makes its own
    model = SendTimeModel.from_settings(ctx.settings).fit(
        resolved, ctx.as_of, timezones, selection=selection, engine=engine
    )
    ctx.models["send_time"] = model
    metrics = _flat_metrics(evaluation)
    # what the evaluated model served on the last `evaluation_days` (its own guard's winner)
    metrics["served_hit_rate"] = evaluation["model"]["hit_rate"]
    metrics.update(_flat_metrics(model.guard_ or {}, "guard_"))
    metrics.update(chart_metrics)
    run_id = log_metrics_run(
        "dmp-send-time",
        params={
            "as_of": ctx.as_of.isoformat(),
            "evaluation_days": st.evaluation_days,
            "served": model.served_,
        },
        metrics=metrics,
        artifacts={
            **charts,
            **guard_artifacts(
                {k: c["hit_rate"] for k, c in (model.guard_ or {}).items()},
                model.served_,
                "hit_rate",
            ),
        }
        if model.guard_
        else charts,
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


def _send_time_events(ctx: TrainContext, eligible: pd.Index) -> pd.DataFrame:
    """The resolved log's rows of ``eligible`` profiles, only the columns a send-time model
    reads (:data:`~dmp_ml.models.send_time.curves.EVENT_COLUMNS`): the rest is not copied."""
    from dmp_ml.models.send_time.curves import EVENT_COLUMNS

    resolved = ctx.resolve(ctx.as_of, EVENT_COLUMNS).events[list(EVENT_COLUMNS)]
    mine = resolved["profile_id"].isin(eligible).to_numpy()
    return resolved if mine.all() else resolved[mine]


def _charts(
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
                "model: mean P(engage | send)": _mean_curve(model),
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


def _mean_curve(model: SendTimeModel) -> np.ndarray:
    """``model.local_curve_.mean(axis=0)`` a block of profiles at a time: the same sums in the
    same order (row after row, as NumPy reduces over the rows), without the (n_profiles, 168)
    curves, their sd and the calibration's temporaries all at once (the step's peak)."""
    from dmp_ml.models.send_time.curves import BLOCK_ROWS, HOURS_PER_WEEK

    n = len(model.profile_ids_)
    total = np.zeros((1, HOURS_PER_WEEK))
    for lo in range(0, n, BLOCK_ROWS):
        block = model.probability(np.arange(lo, min(lo + BLOCK_ROWS, n)))[0]
        total = np.concatenate([total, block]).sum(axis=0, keepdims=True)
    return total[0] / n


def _curve_engine(ctx: TrainContext) -> CurveEngine | None:
    """Where the served curves are fitted: on the train's Dask client when
    ``features.engine: dask`` (:class:`dmp_ml.scale.send_time.DaskCurves`), else in process."""
    fs = ctx.settings.features
    if fs.engine != "dask":
        return None
    from dmp_ml.scale.send_time import DaskCurves

    return DaskCurves(ctx.builder.engine, fs.dask_partitions)


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
