"""Challengers, run comparisons, the champion, seeds and charts on a real MLflow SQLite store."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from synthetic import CUTOFFS, FAST, feature_table, labelled_frame

from dmp_ml import experiments, metrics
from dmp_ml.errors import BundleError, ConfigError
from dmp_ml.features import FeatureTable
from dmp_ml.settings import Settings


@pytest.fixture(scope="module")
def data() -> tuple[list[tuple[FeatureTable, pd.Series]], FeatureTable]:
    snapshots = []
    for k, cutoff in enumerate(CUTOFFS):
        X, y = labelled_frame(1200, k)
        snapshots.append((feature_table(X, cutoff), pd.Series(y, index=X.index)))
    return snapshots, feature_table(labelled_frame(300, 7)[0], "2026-04-01")


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    """One SQLite store for the module (creating its schema takes seconds)."""
    workdir = tmp_path_factory.mktemp("experiments")
    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    return Settings(workdir=workdir, mlflow_tracking_uri=uri, propensity=FAST)


@pytest.fixture(scope="module")
def runs(data, settings) -> dict[str, experiments.Challenger]:
    """A first model (becomes champion) and a challenger with a crippled learning rate."""
    snapshots, table = data
    first = experiments.train_challenger(snapshots, table, settings, name="defaults")
    worse = experiments.train_challenger(
        snapshots,
        table,
        settings,
        {"num_leaves": 2, "n_estimators": 1, "learning_rate": 0.001},
        name="tiny",
    )
    return {"first": first, "worse": worse}


# ------------------------------------------------------------------------------ settings


def test_with_propensity_changes_only_the_given_values(settings) -> None:
    changed = experiments.with_propensity(settings, num_leaves=15, horizon_days=90)
    assert changed.propensity.num_leaves == 15
    assert changed.propensity.horizon_days == 90
    assert changed.propensity.learning_rate == settings.propensity.learning_rate
    assert changed.tracking_uri() == settings.tracking_uri()
    assert settings.propensity.num_leaves != 15  # the original is untouched


@pytest.mark.parametrize("changes", [{"num_leaves": 1}, {"no_such_setting": 3}])
def test_with_propensity_rejects_invalid_changes(settings, changes) -> None:
    with pytest.raises(ConfigError, match="propensity"):
        experiments.with_propensity(settings, **changes)


# ------------------------------------------------------------------------------ challengers


def test_first_model_becomes_champion_and_a_worse_challenger_is_kept_out(runs) -> None:
    first, worse = runs["first"], runs["worse"]
    assert first.promoted and first.reason == "no champion yet"
    assert first.version == "1"
    assert not worse.promoted
    assert worse.reason.startswith("champion kept")
    assert worse.settings.propensity.num_leaves == 2
    assert worse.changes == {"num_leaves": 2, "n_estimators": 1, "learning_rate": 0.001}


def test_compare_runs_shows_changed_parameters_metrics_and_the_champion(runs, settings) -> None:
    table = experiments.compare_runs(settings=settings)
    assert list(table.index) == ["defaults", "tiny"]
    assert table["champion"].tolist() == [True, False]
    assert table["decision"].tolist() == ["promoted", "kept"]
    assert table["version"].tolist() == ["1", "2"]
    # only the hyper-parameters that differ between the runs get a column
    assert {"num_leaves", "n_estimators", "learning_rate"} <= set(table.columns)
    assert "horizon_days" not in table.columns
    assert table.loc["tiny", "num_leaves"] == "2"
    first = runs["first"].result.metrics["model"]
    assert table.loc["defaults", "model_roc_auc"] == pytest.approx(first["roc_auc"])
    assert math.isnan(table.loc["defaults", "gate_new_roc_auc"])  # nothing to compare with
    tiny = table.loc["tiny"]
    assert tiny["gate_new_roc_auc"] < tiny["gate_champion_roc_auc"]


def test_compare_runs_filters_runs_and_names_a_missing_experiment(runs, settings) -> None:
    only = experiments.compare_runs(settings=settings, run_ids=[runs["worse"].run.run_id])
    assert list(only.index) == ["tiny"]
    assert list(experiments.compare_runs(settings=settings, max_runs=1).index) == ["tiny"]
    with pytest.raises(ConfigError, match="no MLflow experiment 'nope'"):
        experiments.compare_runs("nope", settings)


def test_head_to_head_scores_both_models_on_the_same_rows(runs) -> None:
    first, worse = runs["first"], runs["worse"]
    duel = experiments.head_to_head(worse.result, first.result.model)
    assert list(duel.metrics.index[:2]) == ["champion", "challenger"]
    assert len(duel.metrics) == 4  # plus the two baselines
    y = worse.result.validation.y
    assert duel.predictions["y"].to_numpy().tolist() == y.tolist()
    raw = first.result.model.predict_raw(worse.result.validation.X, which="holdout")
    assert duel.metrics.loc["champion", "roc_auc"] == pytest.approx(metrics.roc_auc(y, raw))
    assert duel.metrics.loc["champion", "roc_auc"] > duel.metrics.loc["challenger", "roc_auc"]
    assert set(duel.figures) == {"gains", "calibration"}
    assert all(isinstance(f, Figure) for f in duel.figures.values())
    # a model against itself ties exactly: same folds, same calibration
    same = experiments.head_to_head(first.result, first.result.model, baselines=False)
    assert same.metrics.loc["champion"].to_dict() == same.metrics.loc["challenger"].to_dict()


# ------------------------------------------------------------------------------ champion


def test_load_champion_scores_like_the_model_it_registered(runs, data, settings) -> None:
    _, table = data
    champion = experiments.load_champion(settings)
    assert champion.version == "1"
    assert champion.model_uri == "models:/dmp-propensity-purchase-30d@champion"
    assert champion.run_id == runs["first"].run.run_id
    ids = [table.frame.index[5], "not-a-profile", table.frame.index[0]]
    scored = champion.score(table, ids, explain=True)
    assert scored["profile_id"].tolist() == [ids[0], ids[2]]
    expected = runs["first"].result.scores.set_index("profile_id").loc[[ids[0], ids[2]]]
    np.testing.assert_allclose(scored["score"], expected["score"])
    np.testing.assert_allclose(scored["percentile"], expected["percentile"])
    reasons = experiments.reasons_frame(scored)
    assert list(reasons.columns) == [
        "profile_id",
        "score",
        "feature",
        "value",
        "direction",
        "contribution",
    ]
    assert set(reasons["profile_id"]) == {ids[0], ids[2]}
    assert set(reasons["direction"].dropna()) <= {"+", "-"}


def test_load_champion_without_one(runs, settings) -> None:
    assert experiments.load_champion(settings, "email_click", missing_ok=True) is None
    with pytest.raises(BundleError, match="no champion for dmp-propensity-email_click-30d"):
        experiments.load_champion(settings, "email_click")


# ------------------------------------------------------------------------------ seeds


def test_truth_seed_samples_eligible_members_of_one_group() -> None:
    X, _ = labelled_frame(200, 3)
    table = feature_table(X.iloc[:150], "2026-04-01")
    truth = pd.DataFrame(
        {
            "profile_id": X.index.astype(str),
            "interest_group": np.where(np.arange(200) % 3 == 0, "tech", "home"),
        }
    )
    seed = experiments.truth_seed(truth, table, n=30, seed=1)
    home = set(truth.loc[truth["interest_group"] == "home", "profile_id"]) & set(table.frame.index)
    assert set(seed.truth_ids) == home  # the largest group, eligible members only
    assert len(seed.ids) == 30 and set(seed.ids) <= home
    assert seed.ids == experiments.truth_seed(truth, table, n=30, seed=1).ids
    tech = experiments.truth_seed(truth, table, "tech", n=1000)
    assert len(tech.ids) == len(tech.truth_ids) == 50
    with pytest.raises(ValueError, match="no eligible profile"):
        experiments.truth_seed(truth, table, "garden")


def test_feature_seed_takes_profiles_above_the_threshold() -> None:
    X, _ = labelled_frame(100, 4)
    table = feature_table(X, "2026-04-01")
    seed = experiments.feature_seed(table, "event_count_30d", n=10, min_value=4)
    assert len(seed.ids) == 10 and seed.truth_ids is None
    assert (table.frame.loc[seed.ids, "event_count_30d"] > 4).all()
    with pytest.raises(ValueError, match="no feature column"):
        experiments.feature_seed(table, "nope")


# ------------------------------------------------------------------------------ charts


def test_plot_quality_curve_with_and_without_truth() -> None:
    curve = pd.DataFrame(
        {
            "size": [50, 100, 200],
            "expected_recall": [0.2, 0.5, 0.8],
            "random_recall": [0.05, 0.1, 0.2],
            "lift": [4.0, 5.0, 4.0],
        }
    )
    lift_fig = experiments.plot_quality_curve(curve)
    assert lift_fig.axes[1].get_ylabel() == "lift over random"
    truth = curve.assign(precision=[0.9, 0.8, 0.5], recall=[0.2, 0.4, 0.5])
    fig = experiments.plot_quality_curve(truth)
    assert fig.axes[1].get_ylabel() == "precision"
    # the random-audience line: precision / recall * random recall = 0.9 / 0.2 * 0.05
    assert fig.axes[1].lines[-1].get_ydata()[0] == pytest.approx(0.225)
    with pytest.raises(ValueError, match="lacks columns"):
        experiments.plot_quality_curve(curve.drop(columns="lift"))


def test_plot_hour_of_week_marks_the_best_hour() -> None:
    curve = np.full(168, 0.01)
    curve[24 * 2 + 19] = 0.05  # Wednesday 19:00
    fig = experiments.plot_hour_of_week({"population": np.ones(168), "one profile": curve})
    assert len(fig.axes) == 4  # two heat maps and their colour bars
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("one profile") and "best: Wed 19:00" in t for t in titles)
    with pytest.raises(ValueError, match=r"shape \(24,\)"):
        experiments.plot_hour_of_week({"bad": np.ones(24)})
