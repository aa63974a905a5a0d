"""MLflow glue: runs, metrics, charts, the pyfunc model, and champion gating in the registry.

Everything goes to a real MLflow store (``Settings.tracking_uri()``: ``MLFLOW_TRACKING_URI`` or
SQLite at ``<workdir>/mlflow.db``); with a SQLite store the artifacts live next to the database
in ``mlartifacts/``. Each propensity target has its own experiment (``dmp-propensity-<target>``);
each target *and horizon* its own registered model (``dmp-propensity-<target>-<horizon>d``), so
a 30-day model never competes with a 90-day one. The ``champion`` alias only moves when the new
model beats the current champion on the new run's validation snapshot; otherwise the run is
tagged with why. Registries written before horizons were in the name keep working: the
``champion`` of the old ``dmp-propensity-<target>`` counts as the champion of its own horizon
(read from its run's ``horizon_days`` tag) until a new model of that horizon beats it.

Every run records the events it was trained on as an MLflow input (``log_input``): the digest of
the whole log and its schema, never its contents.

How the champion comparison stays fair: both models are scored with their *holdout* booster
(trained without their own validation snapshot), so neither has seen the new validation
labels as long as the champion's validation cutoff is not later than the new one (checked and
recorded). ROC-AUC is compared on the raw (uncalibrated) scores, which rank exactly like the
calibrated ones without the ties calibration introduces; log-loss (the tie-break) uses the new
model's cross-fitted calibrated probabilities and the champion's own calibrator.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

# MLflow 3 sends usage telemetry unless told not to; dmp-ml never talks to the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.types import ColSpec, Schema, TensorSpec  # noqa: E402

from dmp_ml import metrics  # noqa: E402
from dmp_ml.models.propensity import PropensityModel, PropensityResult  # noqa: E402

if TYPE_CHECKING:
    from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "CHAMPION_ALIAS",
    "ChampionDecision",
    "PropensityPyfunc",
    "PropensityRun",
    "TrainingData",
    "champion_version",
    "decide_champion",
    "experiment_name",
    "legacy_registered_model_name",
    "log_metrics_run",
    "log_propensity_run",
    "pyfunc_input",
    "registered_model_name",
    "use_tracking_uri",
]

CHAMPION_ALIAS = "champion"
AUC_TIE_TOLERANCE = 1e-4
"""ROC-AUC differences up to this are a tie, decided by log-loss."""

_MODEL_ARTIFACT = "propensity_model"
_PYFUNC_CODE = """\
import mlflow
from dmp_ml.tracking import PropensityPyfunc

mlflow.models.set_model(PropensityPyfunc())
"""


def experiment_name(target_event: str) -> str:
    """The MLflow experiment of a propensity target."""
    return f"dmp-propensity-{target_event}"


def registered_model_name(target_event: str, horizon_days: int) -> str:
    """The registry name of a propensity target and horizon, e.g. ``dmp-propensity-purchase-90d``.

    The champion gate only compares versions of one name, hence models of one horizon.
    """
    return f"dmp-propensity-{target_event}-{int(horizon_days)}d"


# what the registry answers for a missing model (RESOURCE_...) or alias (INVALID_...)
_ABSENT = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def legacy_registered_model_name(target_event: str) -> str:
    """The registry name used before the horizon was part of it (read, never written)."""
    return f"dmp-propensity-{target_event}"


def champion_version(
    client: MlflowClient, target_event: str, horizon_days: int
) -> ModelVersion | None:
    """The model version holding the ``champion`` alias for ``target_event`` in ``horizon_days``.

    The champion of :func:`registered_model_name`; when that name has none yet, the champion of
    the legacy name if its run was trained for the same horizon (its ``horizon_days`` tag).
    None when neither exists.
    """
    try:
        return client.get_model_version_by_alias(
            registered_model_name(target_event, horizon_days), CHAMPION_ALIAS
        )
    except MlflowException as exc:
        if exc.error_code not in _ABSENT:
            raise
    try:
        legacy = client.get_model_version_by_alias(
            legacy_registered_model_name(target_event), CHAMPION_ALIAS
        )
        tags = client.get_run(legacy.run_id).data.tags
    except MlflowException as exc:
        if exc.error_code not in _ABSENT:
            raise
        return None
    if tags.get("horizon_days") != str(int(horizon_days)):
        return None
    return legacy


# ---------------------------------------------------------------------------------- plumbing


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API (runs, ``log_model``, ``load_model``) at ``uri`` for a while.

    Uses only MLflow's public setters: on leaving, the tracking and registry URIs the caller
    saw before (``mlflow.get_tracking_uri()``/``get_registry_uri()``) are set again and the
    ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` variables, which the setters write, are put
    back as they were. Yields a client bound to ``uri`` for everything the fluent API lacks.
    """
    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    prev_tracking = mlflow.get_tracking_uri()
    prev_registry = mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        mlflow.set_tracking_uri(prev_tracking)
        mlflow.set_registry_uri(prev_registry)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class TrainingData:
    """What a run was trained on, for ``mlflow.log_input``: a digest, never the rows.

    ``digest`` is a hash of the whole frame (``dmp_ml.pipeline`` computes it once per train);
    ``source`` the file it was read from (or a description of an in-memory frame).
    """

    name: str
    digest: str
    source: str
    rows: int
    columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, name: str, digest: str, source: str) -> TrainingData:
        """Describe ``frame`` (schema from its dtypes; the digest is the caller's)."""
        return cls(name, digest, source, len(frame), {c: str(t) for c, t in frame.dtypes.items()})

    def log(self, context: str = "training") -> None:
        """Log as an input of the active run (a digest-only MLflow dataset, with its schema)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        if Path(self.source).exists():
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": a file
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(str(Path(self.source).resolve()))
        else:
            source = CodeDatasetSource({"mlflow.source.name": self.source})
        schema = Schema([ColSpec(_mlflow_type(t), c) for c, t in self.columns.items()])
        # the dataset table keeps 36 characters of digest: 32 hex digits are 128 bits
        dataset = MetaDataset(source, name=self.name, digest=self.digest[:32], schema=schema)
        mlflow.log_input(dataset, context=context, tags={"rows": str(self.rows)})


def _mlflow_type(dtype: str) -> str:
    if dtype.startswith(("int", "Int", "uint", "UInt")):
        return "long"
    if dtype.startswith(("float", "Float")):
        return "double"
    if dtype.startswith(("bool", "boolean")):
        return "boolean"
    if dtype.startswith("datetime"):
        return "datetime"
    return "string"


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts go to ``mlartifacts/<experiment>`` beside the database."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    db = unquote(uri[len("sqlite:///") :])
    if not db or db == ":memory:":
        return None
    return (Path(db).resolve().parent / "mlartifacts" / experiment).as_uri()


def _experiment_id(
    client: MlflowClient, uri: str, name: str, tags: Mapping[str, str] | None = None
) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(
            name, artifact_location=_artifact_location(uri, name), tags=dict(tags or {})
        )
    except MlflowException:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    """MLflow rejects NaN poorly across stores: drop non-finite values (logged as absent)."""
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 500 else text[:497] + "..."


def _log_artifacts(client: MlflowClient, run_id: str, artifacts: Mapping[str, Any]) -> None:
    """``name -> Figure | DataFrame | dict | list | str/Path (file)``; figures become PNGs,
    frames MLflow tables (shown in the run's evaluation view)."""
    from matplotlib.figure import Figure

    for name, obj in artifacts.items():
        if isinstance(obj, Figure):
            client.log_figure(run_id, obj, name if name.endswith(".png") else f"{name}.png")
        elif isinstance(obj, pd.DataFrame):
            client.log_table(run_id, obj, name if name.endswith(".json") else f"{name}.json")
        elif isinstance(obj, dict | list):
            client.log_dict(run_id, obj, name if name.endswith(".json") else f"{name}.json")
        elif isinstance(obj, str | Path) and Path(obj).is_file():
            client.log_artifact(run_id, str(obj))
        elif isinstance(obj, str | Path) and Path(obj).is_dir():
            client.log_artifacts(run_id, str(obj), artifact_path=name)
        else:
            raise TypeError(f"artifact {name!r}: cannot log a {type(obj).__name__}")


def guard_artifacts(candidates: Mapping[str, float], served: str, metric: str) -> dict[str, Any]:
    """The guard's comparison as MLflow artifacts: a table and a bar chart.

    ``candidates`` maps the model and each baseline to its held-out ``metric`` (higher is
    better); ``served`` is the one the bundle serves. Both land under ``guard/`` so every run
    of a model shows what it was weighed against.
    """
    from matplotlib.figure import Figure

    names = list(candidates)
    values = [float(candidates[n]) for n in names]
    table = pd.DataFrame(
        {"candidate": names, metric: values, "served": [n == served for n in names]}
    )
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.4))
    ax = fig.add_subplot()
    colors = ["C1" if n == served else "C0" for n in names]
    ax.barh(names, values, color=colors)
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        pad = max(0.02, (high - low) * 0.25)
        ax.set_xlim(max(0.0, low - pad), high + pad)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"held-out {metric}")
    ax.set_title(f"Guard: serving {served}")
    fig.tight_layout()
    return {"guard/comparison": table, "plots/guard_comparison": fig}


def log_metrics_run(
    experiment: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],  # noqa: F811 (the documented name; module unused here)
    artifacts: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    tracking_uri: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    dataset: TrainingData | None = None,
) -> str:
    """Log one run (params, metrics, artifacts, input data) to ``experiment``; returns its id.

    For steps without a registered model (send time, lookalike). ``artifacts`` maps a name to a
    matplotlib Figure (PNG), a dict/list (JSON) or a file/directory path. Non-finite metrics
    are skipped. ``dataset`` is logged as the run's training input. The store is
    ``tracking_uri``, else ``settings.tracking_uri()``, else MLflow's current tracking URI.
    """
    uri = tracking_uri or (settings.tracking_uri() if settings is not None else None)
    if uri is None:
        uri = mlflow.get_tracking_uri()
        logger.warning(
            "log_metrics_run(%r) without settings= or tracking_uri=: logging to MLflow's "
            "current store %s instead of the workdir's",
            experiment,
            uri,
        )
    with (
        use_tracking_uri(uri) as client,
        mlflow.start_run(
            experiment_id=_experiment_id(client, uri, experiment),
            run_name=run_name,
            tags=dict(tags or {}),
        ) as run,
    ):
        run_id = run.info.run_id
        for k, v in params.items():
            client.log_param(run_id, k, _param(v))
        mlflow.log_metrics(_finite(metrics))
        _log_artifacts(client, run_id, artifacts or {})
        if dataset is not None:
            dataset.log()
    return run_id


def log_seconds(
    run_ids: Iterable[str],
    seconds: Mapping[str, float],
    peak_mb: Mapping[str, float],
    settings: Settings,
) -> None:
    """Log a ``train`` run's timing table to each of its MLflow runs.

    Every run gets ``seconds_<stage>`` and ``peak_mb_<stage>`` (the train process's peak
    resident MB) for every stage (``inputs``, each step, ``save``, ``publish``), so the table
    is visible from any run of the bundle.
    """
    now = int(time.time() * 1000)
    table = _finite(
        {
            **{f"seconds_{stage}": float(value) for stage, value in seconds.items()},
            **{f"peak_mb_{stage}": float(value) for stage, value in peak_mb.items()},
        }
    )
    with use_tracking_uri(settings.tracking_uri()) as client:
        for run_id in run_ids:
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in table.items()])


# ------------------------------------------------------------------------------------ pyfunc


class PropensityPyfunc(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` face of a :class:`PropensityModel`: ``predict(df)`` -> probabilities.

    The DataFrame holds the feature columns; categorical columns as strings (MLflow's schema
    has no category type). Missing columns are treated as unknown.
    """

    def load_context(self, context: Any) -> None:
        self.model = PropensityModel.load(context.artifacts[_MODEL_ARTIFACT])

    # ``pd.DataFrame`` is a hint MLflow does not derive a schema from: the explicit signature
    # logged with the model stays in charge of input validation (no hints on context/params:
    # MLflow warns about those).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # noqa: ANN001
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.model.predict_proba(frame)


def pyfunc_input(model: PropensityModel, X: pd.DataFrame) -> pd.DataFrame:
    """``X`` as the pyfunc model expects it: categorical columns as plain strings (None if NA)."""
    out = X.reset_index(drop=True).copy()
    for name in model.categories_:
        if name in out.columns:
            out[name] = out[name].astype("string").to_numpy(dtype=object, na_value=None)
    return out


def _signature(model: PropensityModel) -> ModelSignature:
    inputs = Schema(
        [
            ColSpec("string" if name in model.categories_ else "double", name, required=False)
            for name in model.feature_names_
        ]
    )
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1,), "probability")])
    return ModelSignature(inputs=inputs, outputs=outputs)


# What loading the pyfunc imports (dmp_ml.tracking -> dmp_ml.models.propensity and helpers). The
# dmp_ml code travels inside the model (``code_paths``): no index has this project's wheel.
PYFUNC_DISTRIBUTIONS = (
    "mlflow",
    "lightgbm",
    "lifetimes",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "threadpoolctl",
    "matplotlib",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
)


def pyfunc_requirements() -> list[str]:
    """``name==version`` of each distribution the pyfunc imports, as installed here."""
    reqs = []
    for dist in PYFUNC_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={importlib_metadata.version(dist)}")
        except importlib_metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def _package_copy(target: Path) -> Path:
    """A copy of the ``dmp_ml`` package (sources and data, no bytecode) for ``code_paths``."""
    import shutil

    import dmp_ml

    source = Path(dmp_ml.__file__).resolve().parent
    dest = target / "dmp_ml"
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


# ---------------------------------------------------------------------------------- champion


@dataclass(frozen=True)
class ChampionDecision:
    """Outcome of the champion gate: whether the alias moved and why."""

    promoted: bool
    reason: str
    previous_version: str | None = None
    comparison_clean: bool = True
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PropensityRun:
    """What :func:`log_propensity_run` logged."""

    run_id: str
    experiment_id: str
    model_uri: str
    registered_model: str | None
    version: str | None
    decision: ChampionDecision | None

    @property
    def model_version(self) -> str | None:
        """The registry version created by this run (None when not registered)."""
        return self.version

    @property
    def promoted(self) -> bool:
        """True when this run's model became the champion."""
        return bool(self.decision and self.decision.promoted)

    @property
    def reason(self) -> str:
        """Why the champion alias moved or stayed."""
        return self.decision.reason if self.decision else "model not registered"

    @property
    def champion_version(self) -> str | None:
        """The version holding the ``champion`` alias after this run."""
        if self.decision is None:
            return None
        return self.version if self.decision.promoted else self.decision.previous_version


def decide_champion(
    new: PropensityResult, champion: PropensityModel | None, champion_version: str | None = None
) -> ChampionDecision:
    """Compare ``new`` with ``champion`` on ``new``'s validation snapshot.

    The new model wins with a higher ROC-AUC (by more than :data:`AUC_TIE_TOLERANCE`), or an
    equal one and a lower log-loss. No champion: the new model wins.
    """
    if champion is None:
        return ChampionDecision(True, "no champion yet")
    val = new.validation
    y = val.y
    if new.model.served == "model":
        new_raw = new.model.validation_predictions_["raw"].to_numpy()
        new_p = val.predictions["p_model"].to_numpy()
    else:  # what the bundle serves (a baseline, or the blend), as the champion is scored
        new_raw = new.model.predict_raw(val.X, which="holdout")
        new_p = new.model.calibrator_.predict(new_raw)
    try:
        champ_raw = champion.predict_raw(val.X, which="holdout")
        champ_p = champion.calibrator_.predict(champ_raw)
    except Exception as exc:  # an old or incompatible champion cannot block new models
        logger.warning("champion v%s could not be scored: %s", champion_version, exc)
        return ChampionDecision(
            True, f"champion v{champion_version} could not be scored: {exc}", champion_version
        )
    scores = {
        "gate_new_roc_auc": metrics.roc_auc(y, new_raw),
        "gate_champion_roc_auc": metrics.roc_auc(y, champ_raw),
        "gate_new_log_loss": metrics.log_loss(y, new_p),
        "gate_champion_log_loss": metrics.log_loss(y, champ_p),
    }
    champ_cutoff = champion.info_.get("validation_cutoff")
    clean = champ_cutoff is None or pd.Timestamp(champ_cutoff) <= val.cutoff
    note = (
        ""
        if clean
        else f" (caution: the champion's training data reach {champ_cutoff}, after this "
        f"validation cutoff {val.cutoff.isoformat()})"
    )
    d_auc = scores["gate_new_roc_auc"] - scores["gate_champion_roc_auc"]
    auc_txt = (
        f"ROC-AUC {scores['gate_new_roc_auc']:.4f} vs champion v{champion_version} "
        f"{scores['gate_champion_roc_auc']:.4f}"
    )
    if d_auc > AUC_TIE_TOLERANCE:
        promoted, reason = True, f"new model is better: {auc_txt}"
    elif d_auc < -AUC_TIE_TOLERANCE:
        promoted, reason = False, f"champion kept: {auc_txt}"
    else:
        ll_txt = (
            f"log-loss {scores['gate_new_log_loss']:.4f} vs {scores['gate_champion_log_loss']:.4f}"
        )
        promoted = scores["gate_new_log_loss"] < scores["gate_champion_log_loss"]
        reason = (
            f"{'new model is better' if promoted else 'champion kept'}: ROC-AUC tied "
            f"({auc_txt}), {ll_txt}"
        )
    return ChampionDecision(promoted, reason + note, champion_version, clean, scores)


def _load_registered(uri: str) -> PropensityModel:
    wrapper = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    return wrapper.model


# ------------------------------------------------------------------------------ propensity


def _propensity_metrics(result: PropensityResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, report in result.metrics.items():
        for name, value in report.items():
            out[f"{key}_{name}"] = value
    out["ece_before_calibration"] = result.metrics["model_uncalibrated"]["ece"]
    out["ece_after_calibration"] = result.metrics["model"]["ece"]
    out.update({k: float(v) for k, v in result.counts.items()})
    return out


def _propensity_params(result: PropensityResult, settings: Settings) -> dict[str, Any]:
    params: dict[str, Any] = {
        f"propensity.{k}": v for k, v in settings.propensity.model_dump().items()
    }
    params.update(
        {
            "as_of": result.as_of.isoformat(),
            "validation_cutoff": result.validation.cutoff.isoformat(),
            "train_cutoffs": [c.isoformat() for c in result.train_cutoffs],
            "feature_version": result.feature_spec.version,
            "n_features": len(result.model.feature_names_),
            "baseline_single_feature": result.baseline_single_feature,
            "baseline_rf_features": result.baseline_rf_features,
            "best_iteration": result.model.best_iteration_,
        }
    )
    return params


def log_propensity_run(
    result: PropensityResult,
    settings: Settings,
    *,
    tracking_uri: str | None = None,
    register: bool = True,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    dataset: TrainingData | None = None,
) -> PropensityRun:
    """Log a propensity training to MLflow and apply the champion gate.

    Logs params (the ``propensity`` settings and the split), metrics (``model_*`` calibrated and
    cross-fitted, ``model_uncalibrated_*``, ``baseline_<name>_*`` for each baseline,
    ``ece_before_calibration``/``ece_after_calibration``, counts), PNG charts under ``plots/``,
    ``feature_spec.json``, ``feature_importance.json``, and the model as an MLflow pyfunc
    (``mlflow.pyfunc.load_model(uri).predict(df)`` returns probabilities; the ``dmp_ml`` code
    travels inside it, its requirements are the pinned third-party libraries only), and
    ``dataset`` as the run's input. With ``register`` the model becomes a new version of
    ``dmp-propensity-<target>-<horizon>d`` at once; without it, call
    :func:`register_propensity_run` later (``train`` does, once its bundle is published).
    """
    uri = tracking_uri or settings.tracking_uri()
    target = result.target_event
    exp_name = experiment_name(target)
    with use_tracking_uri(uri) as client:
        exp_id = _experiment_id(client, uri, exp_name, {"target_event": target})
        run_tags = {
            "target_event": target,
            "horizon_days": str(result.horizon_days),
            "as_of": result.as_of.isoformat(),
            **dict(tags or {}),
        }
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=run_tags) as run:
            run_id = run.info.run_id
            for k, v in _propensity_params(result, settings).items():
                client.log_param(run_id, k, _param(v))
            mlflow.log_metrics(_finite(_propensity_metrics(result)))
            figures = result.figures()
            _log_artifacts(
                client,
                run_id,
                {
                    **{f"plots/{k}": fig for k, fig in figures.items()},
                    **guard_artifacts(result.candidates, result.served, "roc_auc"),
                    "feature_spec": result.feature_spec.to_dict(),
                    "feature_importance": {
                        k: float(v) for k, v in result.model.feature_importance_.items()
                    },
                    "validation_metrics": result.metrics,
                },
            )
            if dataset is not None:
                dataset.log()
            with tempfile.TemporaryDirectory(prefix="dmp-propensity-") as tmp:
                model_dir = result.model.save(Path(tmp) / _MODEL_ARTIFACT)
                code = Path(tmp) / "propensity_pyfunc.py"
                code.write_text(_PYFUNC_CODE, encoding="utf-8")
                example = pyfunc_input(result.model, result.validation.X.head(5))
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(code),
                    artifacts={_MODEL_ARTIFACT: str(model_dir)},
                    signature=_signature(result.model),
                    input_example=example,
                    pip_requirements=pyfunc_requirements(),
                    code_paths=[str(_package_copy(Path(tmp) / "code"))],
                )
    run = PropensityRun(
        run_id=run_id,
        experiment_id=exp_id,
        model_uri=info.model_uri,
        registered_model=None,
        version=None,
        decision=None,
    )
    if register:
        return register_propensity_run(run, result, settings, tracking_uri=uri)
    logger.info("logged propensity run %s (not registered)", run_id)
    return run


def register_propensity_run(
    run: PropensityRun,
    result: PropensityResult,
    settings: Settings,
    *,
    tracking_uri: str | None = None,
) -> PropensityRun:
    """Register a logged run's model as a new version of ``dmp-propensity-<target>-<horizon>d``.

    The ``champion`` alias moves to it only if it beats the current champion of that target and
    horizon (see :func:`champion_version` and :func:`decide_champion`). ``train`` calls it only
    once its bundle is published, so no registry version (and no ``champion``) ever names a
    bundle that a failed run never made live. The decision is recorded as run tags
    ``champion_decision`` (promoted|kept), ``champion_reason``, ``registered_model`` and
    ``registered_model_version``; the gate's scores as run metrics.
    """
    uri = tracking_uri or settings.tracking_uri()
    reg_name = registered_model_name(result.target_event, result.horizon_days)
    with use_tracking_uri(uri) as client:
        registered = mlflow.register_model(run.model_uri, reg_name)
        version = str(registered.version)
        decision = _gate(client, reg_name, version, result)
        tags = {
            "champion_decision": "promoted" if decision.promoted else "kept",
            "champion_reason": decision.reason,
            "champion_comparison_clean": str(decision.comparison_clean).lower(),
            "registered_model": reg_name,
            "registered_model_version": version,
        }
        for key, value in tags.items():
            client.set_tag(run.run_id, key, value)
        for key, value in _finite(decision.scores).items():
            client.log_metric(run.run_id, key, value)
    logger.info("registered propensity run %s as v%s (%s)", run.run_id, version, decision.reason)
    return replace(run, registered_model=reg_name, version=version, decision=decision)


def _gate(
    client: MlflowClient, name: str, version: str, result: PropensityResult
) -> ChampionDecision:
    current = champion_version(client, result.target_event, result.horizon_days)
    champ_version = None
    champion = None
    if current is not None and not (current.name == name and str(current.version) == version):
        # a legacy-name champion is shown with its name: "v3" alone would be ambiguous
        champ_version = (
            str(current.version) if current.name == name else f"{current.version} of {current.name}"
        )
        try:
            champion = _load_registered(f"models:/{current.name}/{current.version}")
        except Exception as exc:
            logger.warning("cannot load champion %s v%s: %s", current.name, current.version, exc)
            decision = ChampionDecision(
                True, f"champion v{champ_version} could not be loaded: {exc}", champ_version
            )
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
            return decision
    decision = decide_champion(result, champion, champ_version)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, "champion_decision", decision.reason[:5000])
    client.set_model_version_tag(
        name, version, "validation_cutoff", result.validation.cutoff.isoformat()
    )
    client.set_model_version_tag(name, version, "horizon_days", str(result.horizon_days))
    return decision
