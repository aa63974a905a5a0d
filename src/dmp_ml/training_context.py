"""What a ``train`` step reads and returns: shared by the pipeline and every model's step.

:class:`TrainContext` carries the inputs of one ``train`` run and collects what its steps
fit; :class:`StepOutcome` is what one step did. A model's step lives in its own package
(``dmp_ml.models.<name>.step``, found through :func:`dmp_ml.models.train_step`), so the
pipeline names no model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from dmp_ml.features import FeatureBuilder, FeatureTable
    from dmp_ml.identity import Resolution
    from dmp_ml.models.base import BundleModel
    from dmp_ml.settings import Settings


@dataclass
class StepOutcome:
    """What one pipeline step did: ``trained`` or ``skipped`` (with the reason).

    ``seconds`` is the step's wall time, set by the pipeline.
    """

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "metrics": self.metrics,
            "mlflow_run_id": self.mlflow_run_id,
            "seconds": self.seconds,
            **self.details,
        }


@dataclass
class TrainContext:
    """Inputs every step reads, and the bundle directory it writes into."""

    settings: Settings
    as_of: pd.Timestamp
    events: pd.DataFrame
    profiles: pd.DataFrame | None
    consent: pd.DataFrame | None
    erased: frozenset[str]
    bundle_dir: Path
    version: str  # the bundle being built: names every MLflow run of this train
    builder: FeatureBuilder  # the event log encoded once, for every cutoff any step needs
    fingerprint: str = ""  # sha256 of the whole event log
    events_source: str = "dataframe"  # the events file, or how the frame was given
    features: FeatureTable | None = None
    # registered name -> fitted; the pipeline writes each into ``bundle_dir`` and lets it go
    # as soon as its step ends, so later steps do not hold it
    models: dict[str, BundleModel] = field(default_factory=dict)
    scores: pd.DataFrame | None = None  # propensity scores, indexed by profile_id
    # (step, action) run once the bundle is published, e.g. MLflow model registration;
    # each returns details added to the step's outcome
    after_publish: list[tuple[str, Callable[[], dict[str, Any]]]] = field(default_factory=list)

    def resolve(self, as_of: pd.Timestamp, columns: Sequence[str]) -> Resolution:
        """Identity as of ``as_of`` with the resolved events' ``columns`` (and ``profile_id``).

        Several steps need the identity at the same cutoff (the last labels of the propensity
        snapshots, send time and affinity all at ``as_of``): the builder resolves it once and
        keeps it. The events are copied per call, only the columns a step reads, so a step's
        copy goes with the step instead of staying for the next ones.
        """
        return self.builder.resolve(as_of, columns)

    def run_labels(self) -> dict[str, Any]:
        """MLflow run name and tags tying a run to this bundle (``dmp-ml promote`` reads them),
        and the event log it was trained on (logged as the run's input: digest and schema)."""
        from dmp_ml.tracking import TrainingData

        dataset: TrainingData = TrainingData.from_frame(
            self.events, "events", self.fingerprint, self.events_source
        )
        return {
            "run_name": f"bundle-{self.version}",
            "tags": {"bundle_version": self.version},
            "dataset": dataset,
        }


TrainStep = Callable[[TrainContext], StepOutcome]
"""One step of ``train``: reads the context, fits, returns what it did."""


def comparison(measure: str, scores: Mapping[str, float], served: str) -> str:
    """One line a user reads: every candidate's held-out ``measure`` and what is served.

    E.g. ``"held-out ROC-AUC: model 0.741, recency 0.702; serving model"``.
    """
    shown = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    return f"{measure}: {shown}; serving {served}"
