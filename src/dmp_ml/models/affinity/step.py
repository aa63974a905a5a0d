"""The affinity step of ``train``: the affinity model fitted on the resolved event history."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dmp_ml.training_context import StepOutcome, TrainContext

if TYPE_CHECKING:
    from dmp_ml.models.affinity.model import CountEngine


def train_step(ctx: TrainContext) -> StepOutcome:
    """Fit the affinity model for every profile of the feature table."""
    from dmp_ml.models.affinity import AffinityModel
    from dmp_ml.models.affinity.model import EVENT_COLUMNS

    assert ctx.features is not None
    resolved = ctx.resolve(ctx.as_of, EVENT_COLUMNS).events
    model = AffinityModel.from_settings(ctx.settings)
    model.fit(resolved, ctx.features.profile_ids, ctx.as_of, engine=_count_engine(ctx))
    ctx.models["affinity"] = model
    return StepOutcome("trained", metrics=model.summary())


def _count_engine(ctx: TrainContext) -> CountEngine | None:
    """Where the counts are made: on the train's Dask client when ``features.engine: dask``
    (:class:`dmp_ml.scale.affinity.DaskCounts`), else in process."""
    fs = ctx.settings.features
    if fs.engine != "dask":
        return None
    from dmp_ml.scale.affinity import DaskCounts

    return DaskCounts(ctx.builder.engine, fs.dask_partitions)
