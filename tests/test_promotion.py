"""Promotion: the MLflow champion's bundle becomes a BentoML model, and erasure reaches it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bentoml
import pandas as pd
import pytest

from dmp_ml.bundle import BENTO_MODEL_NAME, bento_bundle_path, live_bundle_path, load_bundle
from dmp_ml.demo import DemoWorld
from dmp_ml.erasure import add_to_erasure_list, forget, scrub_bento_models
from dmp_ml.errors import BundleError
from dmp_ml.pipeline import train
from dmp_ml.promotion import promote
from dmp_ml.refresh import apply_events
from dmp_ml.settings import Settings

pytestmark = pytest.mark.slow  # trains bundles and promotes them to a BentoML store

CopyWorkdir = Callable[[Path, Path], Path]


@dataclass(frozen=True)
class Trained:
    workdir: Path
    settings: Settings  # with the run's own MLflow store: no other test moves its champion


@pytest.fixture(scope="module")
def trained(
    demo_world: DemoWorld, train_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    root = tmp_path_factory.mktemp("promotion")
    settings = train_settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    )
    workdir = root / "w"
    train(
        demo_world.events,
        "end",
        workdir,
        profiles=demo_world.profiles,
        consent=demo_world.consent,
        settings=settings,
    )
    return Trained(workdir, settings.model_copy(update={"workdir": workdir}))


def test_promote_stores_the_champion_bundle_as_a_bento_model(trained: Trained) -> None:
    promotion = promote(trained.workdir, settings=trained.settings)
    live = load_bundle(trained.workdir)
    assert promotion.tag.startswith(f"{BENTO_MODEL_NAME}:")
    assert promotion.bundle_version == live.version == promotion.train_version
    assert promotion.registered_model == "dmp-propensity-purchase-30d"
    model = bentoml.models.get(promotion.tag)
    assert model.info.labels["model_version"] == promotion.model_version
    assert model.info.labels["run_id"] == promotion.run_id
    assert Path(promotion.path) == bento_bundle_path(f"{BENTO_MODEL_NAME}:latest")
    served = load_bundle(promotion.path)
    assert served.version == live.version
    ids = list(live.features.frame.index[:50])
    assert served.score(ids).frame.equals(live.score(ids).frame)


def test_promoting_a_refreshed_bundle_stores_it_whole(
    trained: Trained, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(trained.workdir, tmp_path / "w")
    live = load_bundle(workdir)
    p = str(live.features.frame.index[0])
    when = (live.as_of + pd.Timedelta(hours=1)).isoformat()
    apply_events(workdir, [{"event_time": when, "profile_id": p, "event_type": "purchase"}])
    refreshed = load_bundle(workdir)
    assert refreshed.deltas  # a delta version over the trained base
    settings = trained.settings.model_copy(update={"workdir": workdir})
    promotion = promote(workdir, settings=settings)
    served = load_bundle(promotion.path)
    assert not served.deltas and served.version == refreshed.version
    ids = [p, *live.features.frame.index[1:50]]
    assert served.score(ids).frame.equals(refreshed.score(ids).frame)
    assert served.features.frame.loc[p].equals(refreshed.features.frame.loc[p])


def test_promote_refuses_a_bundle_holding_an_erased_profile(
    trained: Trained, tmp_path: Path, copy_workdir: CopyWorkdir
) -> None:
    workdir = copy_workdir(trained.workdir, tmp_path / "w")
    victim = str(load_bundle(workdir).features.frame.index[0])
    add_to_erasure_list(workdir, [victim])  # listed, but the bundle not yet rewritten
    before = len(bentoml.models.list(BENTO_MODEL_NAME))
    with pytest.raises(BundleError, match="erased"):
        promote(workdir, settings=trained.settings.model_copy(update={"workdir": workdir}))
    assert len(bentoml.models.list(BENTO_MODEL_NAME)) == before


def test_promote_explains_a_missing_champion_or_bundle(trained: Trained, tmp_path: Path) -> None:
    empty = trained.settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path / 'empty.db'}"}
    )
    with pytest.raises(BundleError, match="no champion"):
        promote(trained.workdir, settings=empty)
    with pytest.raises(BundleError, match="no bundles in"):
        promote(tmp_path / "elsewhere", settings=trained.settings)
    (tmp_path / "elsewhere" / "bundles").mkdir(parents=True)
    with pytest.raises(BundleError, match="no longer in"):
        promote(tmp_path / "elsewhere", settings=trained.settings)


def test_forget_replaces_promoted_models_that_hold_the_profile(
    trained: Trained, tmp_path: Path, copy_workdir: CopyWorkdir
) -> None:
    workdir = copy_workdir(trained.workdir, tmp_path / "w")
    promotion = promote(workdir, settings=trained.settings.model_copy(update={"workdir": workdir}))
    victim = str(load_bundle(live_bundle_path(workdir)).features.frame.index[3])
    report = forget(workdir, [victim])
    assert promotion.tag in report.bento_models_replaced
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get(promotion.tag)
    latest = load_bundle(bento_bundle_path(f"{BENTO_MODEL_NAME}:latest"))
    assert victim not in latest.features.frame.index
    assert latest.score([victim]).unknown_ids == [victim]
    assert bentoml.models.get(f"{BENTO_MODEL_NAME}:latest").info.labels["parent"] == promotion.tag


def test_scrubbing_a_store_where_nothing_was_promoted_is_a_no_op() -> None:
    # forget() calls this on every erasure, promoted or not
    assert scrub_bento_models(["p000001"], name="dmp-ml-never-promoted") == ({}, [])


def test_scrubbing_an_older_model_keeps_latest_on_the_newest_promotion(
    trained: Trained, tmp_path: Path, copy_workdir: CopyWorkdir
) -> None:
    from dmp_ml import store
    from dmp_ml.erasure import remove_profiles

    name = "dmp-ml-rollback-test"  # its own model name: other tests' models stay out of it
    workdir = copy_workdir(trained.workdir, tmp_path / "w")
    settings = trained.settings.model_copy(update={"workdir": workdir})
    older = promote(workdir, settings=settings, name=name)
    live = load_bundle(workdir)
    gone = str(live.features.frame.index[5])
    remove_profiles(live, [gone])  # a later bundle of the same training without the profile
    store.republish(live, workdir, tag="test", manifest_update={}, drop_ids=[gone])
    newer = promote(workdir, settings=settings, name=name)
    assert newer.bundle_version != older.bundle_version

    replaced, unchecked = scrub_bento_models([gone], name=name)
    assert set(replaced) == {older.tag, newer.tag} and not unchecked
    latest = bentoml.models.get(f"{name}:latest")
    assert latest.info.labels["parent"] == newer.tag  # not rolled back to the older promotion
    for tag in replaced.values():
        assert gone not in load_bundle(bento_bundle_path(tag)).features.frame.index
