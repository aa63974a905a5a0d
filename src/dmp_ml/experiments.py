"""Hand-run experiments: challengers, run comparisons, the champion, seeds and charts.

The notebooks under ``notebooks/`` and ``docs/make_figures.py`` call these so that they hold no
logic of their own. Nothing here trains differently from the pipeline: a challenger is
:func:`dmp_ml.models.propensity.train_propensity` with changed ``propensity`` settings, logged by
:func:`dmp_ml.tracking.log_propensity_run`, whose champion gate decides whether it is promoted.

- :func:`train_challenger` trains and logs a challenger on given snapshots;
- :func:`compare_runs` puts the runs of an MLflow experiment side by side (changed
  hyper-parameters, validation metrics, which version holds the ``champion`` alias);
- :func:`head_to_head` scores the champion and a challenger on the challenger's validation
  snapshot, both calibrated out-of-fold the same way, with gains and calibration charts;
- :func:`load_champion` reads the champion from the registry and scores profiles with it
  (:func:`reasons_frame` lays the reasons out one per row);
- :func:`truth_seed` / :func:`feature_seed` pick lookalike seeds; :func:`plot_quality_curve`
  and :func:`plot_hour_of_week` draw lookalike quality and send-time curves.

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot (no global state).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import ValidationError

from dmp_ml import metrics
from dmp_ml.errors import BundleError, ConfigError
from dmp_ml.models.propensity import Calibrator, PropensityModel, score_profiles
from dmp_ml.settings import PropensitySettings, Settings, load_settings

if TYPE_CHECKING:
    from dmp_ml.features import FeatureTable
    from dmp_ml.models.propensity import PropensityResult
    from dmp_ml.tracking import PropensityRun

logger = logging.getLogger(__name__)

__all__ = [
    "COMPARE_METRICS",
    "Challenger",
    "Champion",
    "HeadToHead",
    "SeedSample",
    "compare_runs",
    "feature_seed",
    "head_to_head",
    "load_champion",
    "plot_hour_of_week",
    "plot_quality_curve",
    "reasons_frame",
    "train_challenger",
    "truth_seed",
    "with_propensity",
]

COMPARE_METRICS: tuple[str, ...] = (
    "model_roc_auc",
    "model_pr_auc",
    "model_log_loss",
    "model_ece",
    "model_lift_top_decile",
    "baseline_rf_logreg_roc_auc",
    "best_iteration",
    "gate_new_roc_auc",
    "gate_champion_roc_auc",
)
"""Metrics :func:`compare_runs` shows by default (names as logged by ``log_propensity_run``).

``model_*`` are the calibrated, cross-fitted validation figures; ``gate_*`` the raw-score
ROC-AUC of the new model and of the champion it was compared with (absent for a first model).
"""

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _uri(settings: Settings | None, tracking_uri: str | None) -> str:
    if tracking_uri:
        return tracking_uri
    return (settings if settings is not None else load_settings()).tracking_uri()


def _target(settings: Settings | None, target_event: str | None) -> str:
    if target_event:
        return target_event
    return (settings if settings is not None else load_settings()).propensity.target_event


# ------------------------------------------------------------------------------ challengers


def with_propensity(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``propensity`` values changed, validated like the YAML.

    Raises
    ------
    ConfigError
        An unknown key or an invalid value (e.g. ``num_leaves=1``).
    """
    data = {**settings.propensity.model_dump(), **changes}
    try:
        section = PropensitySettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting propensity.{where}: {first['msg']}") from exc
    return settings.model_copy(update={"propensity": section})


@dataclass(frozen=True)
class Challenger:
    """A propensity model trained with changed hyper-parameters and logged to MLflow."""

    name: str
    changes: dict[str, Any]
    settings: Settings
    result: PropensityResult
    run: PropensityRun

    @property
    def promoted(self) -> bool:
        """True when the champion gate moved the ``champion`` alias to this model."""
        return self.run.promoted

    @property
    def reason(self) -> str:
        """The gate's explanation (ROC-AUC of both on the validation snapshot)."""
        return self.run.reason

    @property
    def version(self) -> str | None:
        """Its registry version."""
        return self.run.version


def train_challenger(
    snapshots: Sequence[tuple[FeatureTable, pd.Series]],
    score_table: FeatureTable,
    settings: Settings,
    changes: Mapping[str, Any] | None = None,
    *,
    name: str = "challenger",
    tracking_uri: str | None = None,
    register: bool = True,
) -> Challenger:
    """Train on ``snapshots`` with ``propensity`` settings ``changes``, log it, apply the gate.

    Reuse the snapshots of the champion (:func:`dmp_ml.models.propensity.build_snapshots`) so
    that only the hyper-parameters differ. The run is named ``name`` and tagged with the changes;
    with ``register`` it becomes a new registry version, and the ``champion`` alias moves to it only
    if it beats the current champion on its validation snapshot (the first model of a target
    always becomes champion).
    """
    from dmp_ml.models.propensity import train_propensity
    from dmp_ml.tracking import log_propensity_run

    changes = dict(changes or {})
    trial = with_propensity(settings, **changes)
    result = train_propensity(snapshots, score_table, trial)
    run = log_propensity_run(
        result,
        trial,
        tracking_uri=tracking_uri,
        register=register,
        run_name=name,
        tags={"challenger_changes": json.dumps(changes, sort_keys=True, default=str)},
    )
    logger.info("%s (%s): %s", name, changes or "defaults", run.reason)
    return Challenger(name, changes, trial, result, run)


# ------------------------------------------------------------------------------ comparisons


def compare_runs(
    experiment: str | None = None,
    settings: Settings | None = None,
    *,
    tracking_uri: str | None = None,
    run_ids: Iterable[str] | None = None,
    metric_names: Sequence[str] = COMPARE_METRICS,
    max_runs: int = 100,
) -> pd.DataFrame:
    """The latest ``max_runs`` propensity runs of ``experiment`` side by side, oldest first.

    ``experiment`` defaults to ``dmp-propensity-<settings.propensity.target_event>``; the store
    is ``tracking_uri``, else ``settings.tracking_uri()``. ``run_ids`` limits the rows.

    Returns
    -------
    DataFrame indexed by run name (``run_name``), with ``run_id``, ``version`` (registry
    version or None), ``champion`` (True for the version holding the alias now), ``decision``
    (``promoted`` / ``kept`` at logging time), one column per ``propensity.*`` parameter whose
    value differs between the runs shown, and ``metric_names`` (NaN when a run lacks one).

    Raises
    ------
    ConfigError
        No such experiment in the store.
    """
    # dmp_ml.tracking first: it turns MLflow's telemetry off before mlflow is imported
    from dmp_ml.tracking import champion_version, experiment_name, legacy_registered_model_name

    from mlflow import MlflowClient  # isort: skip
    from mlflow.exceptions import MlflowException  # isort: skip

    uri = _uri(settings, tracking_uri)
    name = experiment or experiment_name(_target(settings, None))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {name!r} in {uri}: train a model first")
    newest = client.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=max_runs
    )
    runs = list(reversed(newest))
    if run_ids is not None:
        wanted = set(run_ids)
        runs = [r for r in runs if r.info.run_id in wanted]
    champions: dict[tuple[str, str], tuple[str, str] | None] = {}

    def champion_of(target: str, horizon: str) -> tuple[str, str] | None:
        """(registered name, version) of the champion of ``target`` in ``horizon`` days."""
        if (target, horizon) not in champions:
            try:
                mv = champion_version(client, target, int(horizon))
            except MlflowException:
                mv = None
            champions[target, horizon] = (mv.name, str(mv.version)) if mv else None
        return champions[target, horizon]

    rows = []
    for run in runs:
        tags, params, values = run.data.tags, run.data.params, run.data.metrics
        version = tags.get("registered_model_version")
        target = tags.get("target_event")
        horizon = tags.get("horizon_days")
        registered = tags.get("registered_model") or (
            legacy_registered_model_name(target) if target else None
        )
        row: dict[str, Any] = {
            "run_name": run.info.run_name,
            "run_id": run.info.run_id,
            "version": version,
            "champion": bool(
                version
                and target
                and horizon
                and champion_of(target, horizon) == (registered, version)
            ),
            "decision": tags.get("champion_decision"),
        }
        row.update({k: v for k, v in params.items() if k.startswith("propensity.")})
        row.update({m: values.get(m, math.nan) for m in metric_names})
        rows.append(row)
    fixed = ["run_name", "run_id", "version", "champion", "decision"]
    if not rows:
        return pd.DataFrame(columns=fixed + list(metric_names)).set_index("run_name")
    frame = pd.DataFrame(rows)
    param_cols = [c for c in frame.columns if str(c).startswith("propensity.")]
    changed = [c for c in param_cols if frame[c].nunique(dropna=False) > 1]
    frame = frame[fixed + changed + list(metric_names)]
    frame = frame.rename(columns={c: c.removeprefix("propensity.") for c in changed})
    return frame.set_index("run_name")


@dataclass(frozen=True)
class HeadToHead:
    """Two models on the same validation snapshot: metrics table, predictions, figures."""

    metrics: pd.DataFrame
    predictions: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)


def head_to_head(
    challenger: PropensityResult,
    champion: PropensityModel,
    *,
    labels: tuple[str, str] = ("champion", "challenger"),
    baselines: bool = True,
) -> HeadToHead:
    """Score ``champion`` and ``challenger`` on the challenger's validation snapshot.

    Both score with what their bundle serves, fitted without that snapshot (the *holdout*
    booster or baseline, as the champion gate does; a blend's stack itself is fitted on the
    challenger's snapshot) and both raw scores are calibrated out-of-fold with the same folds
    and method, so neither model's calibrator has seen the row it scores. With ``baselines``,
    the challenger's recency/frequency logistic and single-feature baselines are added.

    Returns
    -------
    HeadToHead
        ``metrics``: one row per model (``classification_report`` columns); ``predictions``:
        ``y`` and one probability column per model, row-aligned with the snapshot;
        ``figures``: ``gains`` and ``calibration``.
    """
    val = challenger.validation
    y = np.asarray(val.y, dtype=np.int64)
    model = challenger.model
    method, folds, seed = model.calibration, model.calibration_folds, model.seed
    raw = {
        labels[0]: champion.predict_raw(val.X, which="holdout"),
        # what the challenger's bundle serves (LightGBM, a baseline or the blend), as the
        # champion's side is scored
        labels[1]: model.predict_raw(val.X, which="holdout"),
    }
    probs = {name: Calibrator.cross_fitted(r, y, method, folds, seed) for name, r in raw.items()}
    if baselines:
        single = challenger.baseline_single_feature or "best single feature"
        probs["RF logistic baseline"] = val.predictions["p_baseline_rf_logreg"].to_numpy()
        probs[f"single: {single}"] = val.predictions["p_baseline_single"].to_numpy()
    table = pd.DataFrame({name: metrics.classification_report(y, p) for name, p in probs.items()}).T
    # ranking metrics from the raw scores (calibration ties must not cost the models AUC)
    for name, r in raw.items():
        table.loc[name, "roc_auc"] = metrics.roc_auc(y, r)
    table.index.name = "model"
    predictions = pd.DataFrame({"y": y, **probs}, index=val.X.index)
    what = f"{challenger.target_event} in {challenger.horizon_days} d"
    figures = {
        "gains": metrics.plot_gains(y, probs, title=f"Cumulative gains: {what} (validation)"),
        "calibration": metrics.plot_calibration(
            y,
            {name: probs[name] for name in labels},
            title=f"Calibration: {what} (out-of-fold)",
        ),
    }
    return HeadToHead(metrics=table, predictions=predictions, figures=figures)


# ------------------------------------------------------------------------------- champion


@dataclass(frozen=True)
class Champion:
    """The registry version holding the ``champion`` alias, loaded as a PropensityModel."""

    name: str
    version: str
    run_id: str | None
    model_uri: str
    model: PropensityModel

    def score(
        self, table: FeatureTable, profile_ids: Iterable[str] | None = None, explain: bool = False
    ) -> pd.DataFrame:
        """``profile_id, score, percentile`` (and ``reasons``) as of the table's ``as_of``.

        Percentiles rank against every profile of ``table``; ``profile_ids`` selects rows
        (ids absent from the table are left out).
        """
        scores = score_profiles(self.model, table).set_index("profile_id")
        if profile_ids is not None:
            ids = [str(p) for p in profile_ids]
            scores = scores.loc[[p for p in ids if p in scores.index]]
        if explain:
            scores["reasons"] = self.model.explain(table.frame.loc[scores.index])
        return scores.reset_index()


def reasons_frame(scored: pd.DataFrame) -> pd.DataFrame:
    """One row per profile and reason from a scored frame with a ``reasons`` column.

    Columns: ``profile_id``, ``score``, ``feature``, ``value``, ``direction``, ``contribution``
    (log-odds); profiles without reasons keep one row with empty reason fields.
    """
    if "reasons" not in scored.columns:
        raise ValueError("no reasons column: score with explain=True")
    rows = []
    columns = ["profile_id", "score", "reasons"]
    for pid, score, reasons in scored[columns].itertuples(index=False):
        for reason in reasons or [{}]:
            rows.append({"profile_id": pid, "score": score, **reason})
    columns = ["profile_id", "score", "feature", "value", "direction", "contribution"]
    return pd.DataFrame(rows).reindex(columns=columns)


def load_champion(
    settings: Settings | None = None,
    target_event: str | None = None,
    *,
    horizon_days: int | None = None,
    tracking_uri: str | None = None,
    missing_ok: bool = False,
) -> Champion | None:
    """Load ``dmp-propensity-<target>-<horizon>d@champion`` from the settings' store.

    ``target_event`` and ``horizon_days`` default to the settings' ``propensity`` values; a
    registry from before the horizon was in the name answers with its old name's champion when
    that was trained for the same horizon (:func:`dmp_ml.tracking.champion_version`).
    Returns None when no version holds the alias and ``missing_ok``.

    Raises
    ------
    BundleError
        No version of the target and horizon holds the ``champion`` alias (and not
        ``missing_ok``).
    """
    # dmp_ml.tracking first: it turns MLflow's telemetry off before mlflow is imported
    from dmp_ml.tracking import (
        CHAMPION_ALIAS,
        champion_version,
        registered_model_name,
        use_tracking_uri,
    )

    import mlflow  # isort: skip
    from mlflow import MlflowClient  # isort: skip
    from mlflow.exceptions import MlflowException  # isort: skip

    uri = _uri(settings, tracking_uri)
    target = _target(settings, target_event)
    if horizon_days is None:
        horizon_days = (settings or load_settings()).propensity.horizon_days
    name = registered_model_name(target, horizon_days)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = champion_version(client, target, horizon_days)
    except MlflowException as exc:
        raise BundleError(f"cannot read the MLflow registry at {uri}: {exc.message}") from exc
    if mv is None:
        if missing_ok:
            return None
        raise BundleError(f"no {CHAMPION_ALIAS} for {name} in {uri}: train a model first")
    with use_tracking_uri(uri):
        wrapper = mlflow.pyfunc.load_model(f"models:/{mv.name}/{mv.version}").unwrap_python_model()
    model_uri = f"models:/{mv.name}@{CHAMPION_ALIAS}"
    return Champion(mv.name, str(mv.version), mv.run_id, model_uri, wrapper.model)


# ---------------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class SeedSample:
    """A lookalike seed, and (when known) every profile that truly belongs with it."""

    ids: list[str]
    truth_ids: list[str] | None
    description: str


def truth_seed(
    truth: pd.DataFrame,
    table: FeatureTable,
    group: str | None = None,
    n: int = 200,
    seed: int = 0,
) -> SeedSample:
    """``n`` random eligible members of a planted interest group of the demo world.

    ``truth`` is :attr:`dmp_ml.demo.DemoWorld.truth`; ``group`` defaults to the largest group
    among the profiles of ``table``. ``truth_ids`` are all its eligible members, the reference
    for true precision (:meth:`dmp_ml.models.lookalike.LookalikeModel.quality_curve`).
    """
    groups = truth.set_index("profile_id")["interest_group"].astype("string")
    groups = groups.reindex(pd.Index(table.frame.index.astype(str))).dropna()
    if groups.empty:
        raise ValueError("no profile of the table is in the truth file")
    group = group or str(groups.value_counts().index[0])
    members = groups.index[groups.to_numpy() == group]
    if len(members) == 0:
        raise ValueError(f"no eligible profile in interest group {group!r}")
    picked = _pick(members, n, seed)
    return SeedSample(
        ids=picked,
        truth_ids=[str(p) for p in members],
        description=f"{len(picked)} of the {len(members)} eligible '{group}' profiles",
    )


def feature_seed(
    table: FeatureTable, column: str, n: int = 200, min_value: float = 0.0, seed: int = 0
) -> SeedSample:
    """Up to ``n`` random profiles whose feature ``column`` exceeds ``min_value``.

    For data without planted truth, e.g. the buyers of a product:
    ``feature_seed(table, "category_share_85123a")``.
    """
    if column not in table.frame.columns:
        raise ValueError(f"no feature column {column!r}")
    values = pd.to_numeric(table.frame[column], errors="coerce")
    members = table.frame.index[(values > min_value).fillna(False).to_numpy(dtype=bool)]
    if len(members) == 0:
        raise ValueError(f"no profile has {column} > {min_value}")
    picked = _pick(members, n, seed)
    return SeedSample(
        ids=picked,
        truth_ids=None,
        description=f"{len(picked)} of the {len(members)} profiles with {column} > {min_value:g}",
    )


# --------------------------------------------------------------------------------- charts


def plot_quality_curve(
    curve: pd.DataFrame, base_rate: float | None = None, title: str = "Lookalike quality"
) -> Figure:
    """Recall and precision (or lift) against audience size.

    ``curve`` is :meth:`dmp_ml.models.lookalike.LookalikeModel.quality_curve` output. Left: the
    expected recall (share of held-out seeds found), random targeting and, with planted truth,
    the true recall. Right: the true precision when the curve has it, with the precision of a
    random audience (``base_rate``; by default estimated from the curve as
    ``precision / recall * random_recall``), else the expected lift over random.
    """
    needed = {"size", "expected_recall", "random_recall", "lift"}
    if not needed <= set(curve.columns):
        raise ValueError(f"curve lacks columns {sorted(needed - set(curve.columns))}")
    size = curve["size"].to_numpy()
    fig = Figure(figsize=(9, 3.8))
    left, right = fig.subplots(1, 2)
    left.plot(size, curve["expected_recall"], marker="o", label="held-out seeds (expected)")
    if "recall" in curve.columns:
        left.plot(size, curve["recall"], marker="s", label="true group (demo truth)")
    left.plot(size, curve["random_recall"], linestyle="--", color="grey", label="random")
    left.set_ylim(0, 1.02)
    left.set_xlabel("audience size (profiles)")
    left.set_ylabel("recall")
    left.set_title("Share found")
    left.legend(loc="lower right", fontsize=8)
    if "precision" in curve.columns:
        right.plot(size, curve["precision"], marker="s", color="C1", label="true precision")
        if base_rate is None:
            usable = curve[curve["recall"] > 0]
            if len(usable):
                first = usable.iloc[0]
                base_rate = float(first["precision"] / first["recall"] * first["random_recall"])
        if base_rate is not None:
            right.axhline(base_rate, linestyle="--", color="grey", label="random audience")
        right.set_ylim(0, 1.02)
        right.set_ylabel("precision")
        right.set_title("Share of the audience in the group")
    else:
        right.plot(size, curve["lift"], marker="o", color="C0", label="expected lift")
        right.axhline(1.0, linestyle="--", color="grey", label="random audience")
        right.set_ylim(0, None)
        right.set_ylabel("lift over random")
        right.set_title("Expected lift (held-out seeds)")
    right.set_xlabel("audience size (profiles)")
    right.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_hour_of_week(
    curves: Mapping[str, np.ndarray],
    title: str | None = None,
    label: str = "P(engage | send)",
    percent: bool = True,
) -> Figure:
    """One 7 x 24 heat map per 168-hour curve (hour 0 = Monday 00:00), best hour circled.

    ``curves`` maps a panel title (e.g. ``"population"``, ``"profile p000123"``) to an array of
    shape (168,), e.g. rows of ``SendTimeModel.local_curve_``.
    """
    if not curves:
        raise ValueError("give at least one curve")
    grids = {}
    for name, values in curves.items():
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.shape != (168,):
            raise ValueError(f"curve {name!r} has shape {arr.shape}, expected (168,)")
        grids[name] = arr.reshape(7, 24) * (100.0 if percent else 1.0)
    fig = Figure(figsize=(4.6 * len(grids), 2.9))
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        day, hour = np.unravel_index(int(np.argmax(grid)), grid.shape)
        ax.scatter([hour], [day], s=90, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.set_yticks(range(7), _DAYS)
        ax.set_xticks(range(0, 24, 3), [f"{h:02d}" for h in range(0, 24, 3)])
        ax.set_xlabel("local hour of day")
        ax.set_title(f"{name}\nbest: {_DAYS[day]} {hour:02d}:00", fontsize=9)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(f"{label}{' (%)' if percent else ''}", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _pick(members: Any, n: int, seed: int) -> list[str]:
    """Up to ``n`` of ``members`` drawn without replacement (reproducible), sorted."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(np.asarray(members, dtype=object), min(n, len(members)), replace=False)
    return sorted(str(p) for p in picked)
