"""Channel and content affinity on the demo world: planted interests, shrinkage, privacy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.activation import export_frame
from dmp_ml.bundle import load_bundle
from dmp_ml.demo import GROUP_CORE, DemoWorld
from dmp_ml.erasure import forget
from dmp_ml.errors import RequestError
from dmp_ml.models.affinity import AFFINITY_DIR, AffinityModel, profile_affinity, segment_affinity
from dmp_ml.refresh import apply_events

CopyWorkdir = Callable[[Path, Path], Path]


def _core(truth: pd.DataFrame) -> dict[str, set[str]]:
    """Each person's planted main categories: their interest group's and secondary group's."""
    out = {}
    for row in truth.itertuples():
        cats = set(GROUP_CORE[row.interest_group])
        if pd.notna(row.secondary_interest_group):
            cats |= set(GROUP_CORE[row.secondary_interest_group])
        out[row.profile_id] = cats
    return out


def test_top_category_names_the_planted_interest_far_more_often_than_the_population_top(
    trained_workdir: Path, demo_world: DemoWorld
) -> None:
    bundle = load_bundle(trained_workdir)
    model = bundle.affinity_model
    assert model is not None
    core = _core(demo_world.truth)
    ids = [p for p in bundle.features.frame.index if p in core]
    frame, _ = profile_affinity(bundle, ids, top=1)
    frame = frame[frame["top_categories"].map(len) > 0]
    assert len(frame) > 300
    pairs = zip(frame["profile_id"], frame["top_categories"], strict=True)
    hits = [cats[0]["category"] in core[p] for p, cats in pairs]
    population_top = str(model.categories_[model.category_share_.argmax()])
    baseline = [population_top in core[p] for p in frame.profile_id]
    rate, base = sum(hits) / len(hits), sum(baseline) / len(baseline)
    assert rate > 0.8, rate
    assert rate > base + 0.4, (rate, base)


def test_passive_pushes_are_not_engagement_and_mixes_are_distributions(
    trained_workdir: Path,
) -> None:
    bundle = load_bundle(trained_workdir)
    model = bundle.affinity_model
    assert model is not None and "email" in set(model.channels_)
    frame, _ = profile_affinity(bundle, bundle.features.frame.index[:50], top=3)
    for mix in frame["channels"]:
        assert sum(mix.values()) == pytest.approx(1.0, abs=1e-3)
    # engagement counts equal the profile's non-passive events with a channel (sends excluded)
    f = bundle.features.frame
    pid = frame.loc[frame["engagement_events"].idxmax(), "profile_id"]
    passive = f.loc[pid, "email_send_count_total"] + f.loc[pid, "ad_impression_count_total"]
    assert model.channel_counts_[model.profile_ids_.get_loc(pid)].sum() <= (
        f.loc[pid, "event_count_total"] - passive
    )
    assert model.channel_counts_[model.profile_ids_.get_loc(pid)].sum() > 0


def test_one_view_of_a_rare_category_is_not_a_passion() -> None:
    events = pd.DataFrame(
        {
            "profile_id": ["fan"] * 40 + ["once"] + ["crowd"] * 200,
            "event_type": ["product_view"] * 241,
            "channel": ["web"] * 241,
            "category": ["hiking"] * 30
            + ["shoes"] * 10
            + ["rare"]
            + ["shoes"] * 198
            + ["rare"] * 2,
        }
    )
    model = AffinityModel().fit(events, ["fan", "once", "crowd"], "2026-01-01")
    once = model.top_categories(model.profile_ids_.get_loc("once"), 3)[0]
    fan = model.top_categories(model.profile_ids_.get_loc("fan"), 3)[0]
    assert once["category"] == "rare" and once["score"] < 2.0  # raw share ratio would be ~80
    assert fan["category"] == "hiking" and fan["score"] > 3.0


def test_segment_affinity_of_a_planted_group(trained_workdir: Path, demo_world: DemoWorld) -> None:
    bundle = load_bundle(trained_workdir)
    truth = demo_world.truth
    outdoor = truth.loc[truth["interest_group"] == "outdoor", "profile_id"].tolist()
    out = segment_affinity(bundle, outdoor, top=4)
    names = [c["category"] for c in out["top_categories"]]
    assert set(names) == {"hiking", "camping", "cycling", "running"}
    assert all(c["lift"] > 2 and c["profiles"] >= 5 for c in out["top_categories"])
    assert sum(c["share"] for c in out["channels"]) == pytest.approx(1.0, abs=1e-3)
    assert len(out["best_hours"]["hours"]) == 3
    assert out["size"] + out["not_eligible"] == out["requested"]
    with pytest.raises(RequestError, match="top"):
        segment_affinity(bundle, outdoor, top=0)


def test_exports_gain_display_columns(trained_workdir: Path) -> None:
    bundle = load_bundle(trained_workdir)
    ids = bundle.features.frame.index[:20].tolist()
    frame, _ = export_frame(bundle, ids, affinity=True)
    assert {"top_categories", "preferred_channel"} <= set(frame.columns)
    assert frame["preferred_channel"].notna().all()
    plain, _ = export_frame(bundle, ids)
    assert "top_categories" not in plain.columns


def test_forget_removes_affinity_rows_and_refresh_recounts(
    trained_workdir: Path, copy_workdir: CopyWorkdir, tmp_path: Path
) -> None:
    workdir = copy_workdir(trained_workdir, tmp_path / "w")
    bundle = load_bundle(workdir)
    known = [p for p in bundle.features.frame.index if not p.startswith("anon:")]
    victim, fan = known[0], known[1]
    forget(workdir, [victim])
    after = load_bundle(workdir)
    held = pd.read_parquet(after.path / AFFINITY_DIR / "profiles.parquet")["profile_id"]
    assert victim not in set(held.astype(str))
    # the counts are row-aligned with the profile list: the victim's row went with its id
    assert len(np.load(after.path / AFFINITY_DIR / "channels.npy")) == len(held)
    assert len(np.load(after.path / AFFINITY_DIR / "categories_indptr.npy")) == len(held) + 1
    _, unknown = profile_affinity(after, [victim, fan])
    assert unknown == [victim]

    before = after.affinity_model.category_counts_[after.affinity_model.profile_ids_.get_loc(fan)]
    t0 = after.as_of + pd.Timedelta(hours=1)
    batch = [
        {
            "event_time": (t0 + pd.Timedelta(minutes=i)).isoformat(),
            "profile_id": fan,
            "event_type": "product_view",
            "channel": "app",
            "category": "gaming",
        }
        for i in range(5)
    ]
    apply_events(workdir, batch)
    refreshed = load_bundle(workdir)
    model = refreshed.affinity_model
    row = model.profile_ids_.get_loc(fan)
    gaming = model.categories_.get_loc("gaming")
    assert model.category_counts_[row, gaming] == before[0, gaming] + 5
    assert victim not in set(model.profile_ids_)


def test_affinity_model_keeps_the_bundle_protocol(tmp_path: Path) -> None:
    from dmp_ml.models import BundleModel, ProfileUpdate, model_class
    from dmp_ml.settings import Settings

    assert model_class("affinity") is AffinityModel and AffinityModel.name == AFFINITY_DIR
    settings = Settings(affinity={"category_prior_strength": 4.0})
    model = AffinityModel.from_settings(settings)
    assert isinstance(model, BundleModel) and model.category_prior_strength == 4.0

    def events(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "profile_id": pd.array([r[0] for r in rows], dtype="string"),
                "event_type": ["product_view"] * len(rows),
                "channel": [r[1] for r in rows],
                "category": [r[2] for r in rows],
            }
        )

    model.fit(
        events([("a", "web", "shoes"), ("b", "app", "hiking"), ("c", "web", "shoes")]),
        ["a", "b", "c"],
        pd.Timestamp("2026-01-01", tz="UTC"),
    )
    # a's full history now has two hiking views in the app; b is gone (e.g. erased); d is new
    change = ProfileUpdate(
        as_of=pd.Timestamp("2026-01-02", tz="UTC"),
        profile_ids=pd.Index(["a", "d"], dtype="string"),
        removed=pd.Index(["b"], dtype="string"),
        features=pd.DataFrame(index=pd.Index(["a", "d"], dtype="string", name="profile_id")),
        events=events([("a", "app", "hiking"), ("a", "app", "hiking"), ("d", "web", "shoes")]),
    )
    assert model.update(change) is model
    assert model.profile_ids_.tolist() == ["a", "c", "d"]
    a = model.profile_ids_.get_loc("a")
    assert model.channel_counts_[a].tolist() == [0.0, 2.0]  # web, app (vocabulary as trained)
    top = model.top_categories(a, 3)
    assert [(t["category"], t["events"], t["share"]) for t in top] == [("hiking", 2, 1.0)]
    assert model.as_of_ == pd.Timestamp("2026-01-02", tz="UTC")
    loaded = AffinityModel.load(model.save(tmp_path / model.name), n_threads=1)
    assert loaded.profile_ids_.tolist() == ["a", "c", "d"]
    assert loaded.forget(["c", "x"]) == 1 and loaded.profile_ids_.tolist() == ["a", "d"]


def test_engagement_rows_are_the_same_from_text_dictionaries_and_categories() -> None:
    """A training's log holds its text as Arrow dictionaries (one per chunk); the engagement
    rows chosen on their distinct values are the ones the text gives: eligible profiles only,
    passive pushes and missing profiles left out, a missing event type kept."""
    import pyarrow as pa

    rng = np.random.default_rng(7)
    n = 3_000
    pick = lambda values: np.array(values, dtype=object)[rng.integers(0, len(values), n)]  # noqa: E731
    text = {
        "profile_id": pick(["p1", "p2", "p3", "p9", None]),
        "event_type": pick(["page_view", "email_send", "ad_impression", "purchase", None]),
        "channel": pick(["web", "email", None]),
        "category": pick(["shoes", "bags", None]),
    }
    ids = pd.Index(["p1", "p2", "p3", "p4"], dtype="string")
    model = AffinityModel()

    def chunked(values: np.ndarray) -> pd.Series:
        arrow = pa.array(list(values), type=pa.string())
        parts = [arrow[:1000].dictionary_encode(), arrow[1000:].dictionary_encode()]
        return pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array(parts)))

    index = pd.RangeIndex(5, 5 + n)
    found = {
        "string": pd.DataFrame({c: pd.array(v, dtype="string") for c, v in text.items()}),
        "category": pd.DataFrame({c: pd.Categorical(v) for c, v in text.items()}),
        "dictionary": pd.DataFrame({c: chunked(v) for c, v in text.items()}),
    }
    rows = {kind: model.engagement(frame.set_axis(index), ids) for kind, frame in found.items()}
    kind = pd.Series(text["event_type"])
    expected = (
        pd.Series(text["profile_id"]).isin(list(ids)).to_numpy()
        & ~kind.isin(model.passive_event_types).to_numpy()
    )
    assert 0 < expected.sum() < n
    np.testing.assert_array_equal(rows["string"].index, index[expected])
    for got in rows.values():
        pd.testing.assert_frame_equal(got, rows["string"])
