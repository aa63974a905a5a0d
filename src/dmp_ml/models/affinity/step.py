"""The affinity step of ``train``: the affinity model fitted on the resolved event history."""

from __future__ import annotations

from dmp_ml.training_context import StepOutcome, TrainContext


def train_step(ctx: TrainContext) -> StepOutcome:
    """Fit the affinity model for every profile of the feature table."""
    from dmp_ml.models.affinity import AffinityModel
    from dmp_ml.models.affinity.model import EVENT_COLUMNS

    assert ctx.features is not None
    resolved = ctx.resolve(ctx.as_of, EVENT_COLUMNS).events
    model = AffinityModel.from_settings(ctx.settings)
    model.fit(resolved, ctx.features.frame.index, ctx.as_of)
    ctx.models["affinity"] = model
    return StepOutcome("trained", metrics=model.summary())
