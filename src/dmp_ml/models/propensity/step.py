"""The propensity step of ``train``: labelled snapshots, the guarded fit, the MLflow run."""

from __future__ import annotations

import logging
import pickle
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dmp_ml.training_context import StepOutcome, TrainContext, comparison

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from dmp_ml.models.propensity.model import BoosterTrainer

logger = logging.getLogger(__name__)


def _trainer(ctx: TrainContext) -> BoosterTrainer | None:
    """Where the boosters are trained: ``lightgbm.dask`` on the train's Dask client when
    ``features.engine: dask`` (:class:`dmp_ml.scale.propensity.DaskBoosters`), else in process."""
    fs = ctx.settings.features
    if fs.engine != "dask":
        return None
    from dmp_ml.scale.propensity import DaskBoosters

    return DaskBoosters(ctx.builder.engine, fs.dask_partitions)


def train_step(ctx: TrainContext) -> StepOutcome:
    """Fit propensity on snapshots before ``ctx.as_of``, score every profile, log the run.

    Registration in the MLflow model registry waits until the bundle is published
    (``ctx.after_publish``), so a registry version never names an unpublished bundle.
    """
    from dmp_ml.models.propensity import build_snapshots, train_propensity
    from dmp_ml.tracking import log_propensity_run, register_propensity_run

    assert ctx.features is not None
    # the snapshots are handed over, not kept: train_propensity frees them once copied
    result = train_propensity(
        build_snapshots(
            ctx.events,
            ctx.as_of,
            ctx.settings,
            ctx.profiles,
            ctx.consent,
            erased=ctx.erased,
            score_table=ctx.features,
            builder=ctx.builder,
        )[0],
        ctx.features,
        ctx.settings,
        _trainer(ctx),
    )
    ctx.models["propensity"] = result.model
    ctx.scores = result.scores.set_index("profile_id")
    logged = log_propensity_run(result, ctx.settings, register=False, **ctx.run_labels())
    # the champion gate scores the champion on the validation snapshot's features once the
    # bundle is published: until then they wait compressed, not as a matrix through every
    # later step
    packed = pack_frame(result.validation.X)
    result.validation = replace(result.validation, X=result.validation.X.iloc[:0].copy())

    def register() -> dict[str, Any]:
        result.validation = replace(result.validation, X=unpack_frame(packed))
        try:
            done = register_propensity_run(logged, result, ctx.settings)
        except Exception as exc:  # the bundle is live; the registry can be fixed later
            logger.error("MLflow registration of run %s failed: %s", logged.run_id, exc)
            return {"registration_error": f"{type(exc).__name__}: {exc}"[:500]}
        return {
            "champion": done.champion_version,
            "promoted": done.promoted,
            "champion_reason": done.reason,
            "model_version": done.model_version,
        }

    ctx.after_publish.append(("propensity", register))
    return StepOutcome(
        "trained",
        metrics=result.summary(),
        mlflow_run_id=logged.run_id,
        details={
            "target_event": result.target_event,
            "horizon_days": result.horizon_days,
            "served": result.served,
            "comparison": comparison("held-out ROC-AUC", result.candidates, result.served),
            # the registry version and champion decision come after publishing: see the
            # run's tags in MLflow (registered_model_version, champion_decision)
            "registration": "after publish",
        },
    )


def pack_frame(frame: pd.DataFrame) -> tuple[pa.Buffer, int]:
    """``frame`` pickled and compressed (zstd), with its pickled size: held in this process
    only, so :func:`unpack_frame` gives back the same frame (values, dtypes, index)."""
    import pyarrow as pa

    raw = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    return pa.compress(raw, codec="zstd", asbytes=False), len(raw)


def unpack_frame(packed: tuple[pa.Buffer, int]) -> pd.DataFrame:
    """The frame :func:`pack_frame` packed."""
    import pyarrow as pa

    buffer, size = packed
    frame: pd.DataFrame = pickle.loads(pa.decompress(buffer, size, codec="zstd", asbytes=False))
    return frame
