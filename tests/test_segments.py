"""Segments: the rule language, its errors, saved segments and previews on a trained bundle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dmp_ml.bundle import ModelBundle, load_bundle
from dmp_ml.erasure import ERASURE_FILE, add_to_erasure_list
from dmp_ml.segments import (
    SegmentError,
    delete_segment,
    evaluate,
    list_segments,
    load_segment,
    parse_rule,
    preview,
    save_segment,
)

# ------------------------------------------------------------------ fixtures
# (trained_workdir and copy_workdir are shared: tests/conftest.py)


@pytest.fixture(scope="module")
def workdir(
    trained_workdir: Path,
    copy_workdir: Callable[[Path, Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """This module's copy of the shared workdir (tests save segments, edit the erasure list)."""
    return copy_workdir(trained_workdir, tmp_path_factory.mktemp("segments") / "w")


@pytest.fixture(scope="module")
def bundle(workdir: Path) -> ModelBundle:
    return load_bundle(workdir)


# ------------------------------------------------------------------ parsing and errors


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        (
            {
                "all": [
                    {"feature": "purchase_count_30d", "op": ">=", "value": 1},
                    {"feature": "purchse_count_30d", "op": ">", "value": 0},
                ]
            },
            "all[1].feature",
            ["purchse_count_30d", "did you mean 'purchase_count_30d'"],
        ),
        (
            {"any": [{"score": "propensity", "op": "=>", "value": 0.5}]},
            "any[0].op",
            ["'=>'", "did you mean"],
        ),
        (
            {"none": [{"feature": "loyalty_tier", "op": "==", "value": "gld"}]},
            "none[0].value",
            ["'gld'", "did you mean 'gold'"],
        ),
        (
            {"all": [{"score": "propensity", "op": ">", "value": 70}]},
            "all[0].value",
            ["propensity_percentile"],
        ),
        (
            {"all": [{"score": "propensty", "op": ">", "value": 0.5}]},
            "all[0].score",
            ["propensity"],
        ),
        (
            {"all": [{"feature": "loyalty_tier", "op": ">", "value": 3}]},
            "all[0].op",
            ["text"],
        ),
        (
            {"all": [{"feature": "age", "op": "between", "value": [60, 20]}]},
            "all[0].value",
            ["low 60"],
        ),
        ({"all": [{"feature": "age", "op": "in", "value": []}]}, "all[0].value", ["non-empty"]),
        ({"all": [{"feature": "age", "op": ">", "value": "old"}]}, "all[0].value", ["number"]),
        ({"all": [{"featur": "age", "op": ">", "value": 1}]}, "all[0].featur", ["'feature'"]),
        ({"all": [], "none": [{"segment": "x"}]}, "all", ["non-empty"]),
        ({"all": [{"segment": "recent_buyrs"}]}, "all[0].segment", ["unknown segment"]),
        ({"all": [{"feature": "age"}]}, "all[0].op", ["missing"]),
        ({"all": [{"feature": "age", "score": "propensity", "op": ">", "value": 1}]}, "all[0]", []),
    ],
)
def test_a_bad_rule_names_the_clause_and_the_problem(
    bundle: ModelBundle, workdir: Path, rule: dict, field: str, words: list[str]
) -> None:
    save_segment(
        workdir, "recent_buyers", {"feature": "days_since_purchase", "op": "<=", "value": 14}
    )
    with pytest.raises(SegmentError) as caught:
        evaluate(rule, bundle)
    assert caught.value.field == field
    for word in words:
        assert word in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


def test_json_and_yaml_text_parse_to_the_same_rule() -> None:
    as_json = '{"all": [{"feature": "purchase_count_30d", "op": ">=", "value": 1}]}'
    as_yaml = "all:\n  - feature: purchase_count_30d\n    op: '>='\n    value: 1\n"
    assert parse_rule(as_json) == parse_rule(as_yaml)
    assert parse_rule(as_json).to_dict() == {
        "all": [{"feature": "purchase_count_30d", "op": ">=", "value": 1.0}]
    }
    with pytest.raises(SegmentError, match="JSON or YAML"):
        parse_rule("all: [unclosed")


# ------------------------------------------------------------------ evaluation semantics


def test_all_any_none_match_the_same_filter_written_in_pandas(bundle: ModelBundle) -> None:
    frame = bundle.features.frame
    scores = bundle.scores
    assert scores is not None
    rule = {
        "all": [
            {"feature": "event_count_30d", "op": ">=", "value": 5},
            {"score": "propensity_percentile", "op": ">", "value": 40},
        ],
        "any": [
            {"feature": "loyalty_tier", "op": "in", "value": ["gold", "silver"]},
            {"feature": "age", "op": "between", "value": [18, 30]},
        ],
        "none": [{"feature": "country", "op": "==", "value": "US"}],
    }
    pct = scores["percentile"].reindex(frame.index)
    expected = frame.index[
        (frame["event_count_30d"] >= 5)
        & (pct > 40)
        & (frame["loyalty_tier"].isin(["gold", "silver"]) | frame["age"].between(18, 30))
        & ~(frame["country"] == "US").fillna(False).astype(bool)
    ]
    got = evaluate(rule, bundle)
    assert len(got) > 0
    assert list(got) == list(expected)


def test_missing_values_match_no_comparison_only_exists(bundle: ModelBundle) -> None:
    frame = bundle.features.frame
    never = frame["days_since_purchase"].isna()
    assert never.any() and (~never).any()
    recent = evaluate({"feature": "days_since_purchase", "op": "<", "value": 10_000}, bundle)
    not_in = evaluate({"feature": "days_since_purchase", "op": "not_in", "value": [-1]}, bundle)
    missing = evaluate({"feature": "days_since_purchase", "op": "exists", "value": False}, bundle)
    assert set(recent) == set(frame.index[~never]) == set(not_in)
    assert set(missing) == set(frame.index[never])


def test_forgotten_and_erased_profiles_never_match(bundle: ModelBundle, workdir: Path) -> None:
    everyone = {"feature": "event_count_total", "op": ">=", "value": 0}
    before = evaluate(everyone, bundle)
    gone_in_memory, gone_on_list = str(before[0]), str(before[1])
    copy = load_bundle(workdir)
    copy.forget([gone_in_memory])
    add_to_erasure_list(workdir, [gone_on_list])
    try:
        after = evaluate(everyone, copy)
        assert gone_in_memory not in after and gone_on_list not in after
        assert len(after) == len(before) - 2
        assert gone_on_list not in preview(everyone, copy, sample=len(before))["sample_ids"]
    finally:
        (workdir / ERASURE_FILE).unlink()


# ------------------------------------------------------------------ saved segments


def test_saved_segments_reference_each_other_without_cycles(
    bundle: ModelBundle, workdir: Path
) -> None:
    save_segment(workdir, "buyers", {"feature": "purchase_count_total", "op": ">=", "value": 1})
    save_segment(
        workdir,
        "engaged_non_buyers",
        {
            "all": [{"feature": "event_count_30d", "op": ">=", "value": 3}],
            "none": [{"segment": "buyers"}],
        },
        description="active, never bought",
    )
    buyers = set(evaluate({"segment": "buyers"}, bundle))
    engaged = set(evaluate({"segment": "engaged_non_buyers"}, bundle))
    assert buyers and engaged and not buyers & engaged
    assert {s.name for s in list_segments(workdir)} >= {"buyers", "engaged_non_buyers"}
    assert load_segment(workdir, "engaged_non_buyers").to_dict()["none"] == [{"segment": "buyers"}]

    with pytest.raises(SegmentError, match="cycle: buyers -> engaged_non_buyers -> buyers"):
        save_segment(workdir, "buyers", {"segment": "engaged_non_buyers"})
    with pytest.raises(SegmentError, match="used by engaged_non_buyers"):
        delete_segment(workdir, "buyers")
    with pytest.raises(SegmentError, match="invalid segment name"):
        save_segment(workdir, "../escape", {"segment": "buyers"})
    # a cycle written by hand into the files is caught at evaluation, not looped on
    (workdir / "segments" / "buyers.json").write_text(
        '{"name": "buyers", "rule": {"segment": "engaged_non_buyers"}}'
    )
    with pytest.raises(SegmentError, match="cycle"):
        evaluate({"segment": "buyers"}, bundle)
    save_segment(workdir, "buyers", {"feature": "purchase_count_total", "op": ">=", "value": 1})


# ------------------------------------------------------------------ preview


def test_preview_reports_size_sample_and_distributions(bundle: ModelBundle) -> None:
    rule = {
        "all": [
            {"feature": "purchase_count_30d", "op": ">=", "value": 1},
            {"feature": "loyalty_tier", "op": "exists"},
        ]
    }
    ids = evaluate(rule, bundle)
    out = preview(rule, bundle, sample=7, seed=1)
    assert out["size"] == len(ids) > 7
    assert out["population"] == len(bundle.features.frame)
    assert out["share"] == pytest.approx(len(ids) / len(bundle.features.frame), abs=1e-6)
    assert len(out["sample_ids"]) == 7 and set(out["sample_ids"]) <= set(ids)
    assert out["sample_ids"] == preview(rule, bundle, sample=7, seed=1)["sample_ids"]
    dist = out["distribution"]
    assert {"purchase_count_30d", "loyalty_tier", "event_count_30d", "propensity_score"} <= set(
        dist
    )
    purchases = bundle.features.frame.loc[ids, "purchase_count_30d"]
    assert dist["purchase_count_30d"]["median"] == pytest.approx(purchases.median())
    assert dist["purchase_count_30d"]["min"] >= 1
    assert dist["loyalty_tier"]["kind"] == "categorical"
    assert sum(t["share"] for t in dist["loyalty_tier"]["top"]) == pytest.approx(1.0)
    assert out["rule"]["all"][1] == {"feature": "loyalty_tier", "op": "exists"}
    empty = preview({"feature": "purchase_count_30d", "op": "<", "value": 0}, bundle)
    assert empty["size"] == 0 and empty["sample_ids"] == []
    assert np.isclose(empty["share"], 0.0)


@pytest.mark.parametrize(
    ("clause", "field"),
    [
        ({"feature": "purchase_count_30d", "op": ">=", "value": 10**400}, "any[1].value"),
        ({"feature": "purchase_count_30d", "op": "between", "value": [0, 10**400]}, "any[1].value"),
        ({"feature": "purchase_count_30d", "op": "in", "value": [1, -(10**400)]}, "any[1].value"),
        ({"feature": "purchase_count_30d", "op": "==", "value": 10**400}, "any[1].value"),
        ({"score": "propensity", "op": "<", "value": 10**400}, "any[1].value"),
    ],
)
def test_a_number_beyond_float_range_is_refused_by_clause(clause: dict, field: str) -> None:
    rule = {"any": [{"feature": "purchase_count_30d", "op": ">=", "value": 1}, clause]}
    with pytest.raises(SegmentError) as caught:
        parse_rule(rule)
    assert caught.value.field == field
    assert len(caught.value.message) < 200  # the 401-digit number is not echoed whole
