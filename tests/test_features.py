"""Point-in-time features: known values on a hand-written log, invariance, lifecycle, I/O."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmp_ml.errors import UnknownProfileError
from dmp_ml.features import FeatureTable, build_features
from dmp_ml.settings import FeatureSettings, Settings

AS_OF = pd.Timestamp("2024-06-01", tz="UTC")  # a Saturday, Paris on summer time (UTC+2)


def _ev(
    when: str,
    cookie: str | None,
    profile: str | None,
    event_type: str,
    channel: str = "web",
    source: str = "first_party",
    campaign: str | None = None,
    category: str | None = None,
    value: float = np.nan,
) -> dict:
    return {
        "event_time": pd.Timestamp(when, tz="UTC"),
        "cookie_id": cookie,
        "profile_id": profile,
        "event_type": event_type,
        "channel": channel,
        "source": source,
        "campaign_id": campaign,
        "category": category,
        "value": value,
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["event_time"] = pd.DatetimeIndex(df["event_time"]).as_unit("ns")
    for c in ("cookie_id", "profile_id", "event_type", "channel", "source", "campaign_id"):
        df[c] = df[c].astype("string")
    df["category"] = df["category"].astype("string")
    df["value"] = df["value"].astype("float64")
    return df


def _tiny_log() -> pd.DataFrame:
    return _frame(
        [
            # p1 (Europe/Paris)
            _ev("2024-01-15 00:00", "c1", "p1", "purchase", category="shoes", value=30.0),
            _ev("2024-04-22 00:00", "c1", "p1", "purchase", category="bags", value=50.0),
            _ev("2024-05-18 00:00", "c1", None, "purchase", category="shoes", value=100.0),
            _ev("2024-05-22 00:00", None, "p1", "email_send", "email", campaign="m1"),
            _ev("2024-05-23 00:00", None, "p1", "email_open", "email", campaign="m1"),
            _ev("2024-05-23 12:00", None, "p1", "email_open", "email", campaign="m1"),
            _ev(
                "2024-05-27 08:30", "c1", None, "page_view", source="third_party", category="shoes"
            ),
            _ev("2024-05-29 00:00", None, "p1", "email_send", "email", campaign="m2"),
            _ev("2024-06-01 00:00", "c1", "p1", "purchase", value=999.0),  # at as_of: excluded
            _ev("2024-06-05 00:00", "c1", "p1", "purchase", value=999.0),  # after as_of
            # p2 (Asia/Kolkata, UTC+5:30)
            _ev("2024-05-22 00:00", None, "p2", "email_send", "email", campaign="m1"),
            _ev("2024-05-29 00:00", None, "p2", "email_send", "email", campaign="m2"),
            _ev("2024-05-31 20:00", "c2", "p2", "page_view", "app"),
            # p3 (invalid zone: UTC)
            _ev("2024-05-29 23:00", "c3", "p3", "add_to_cart"),
            # an anonymous cookie
            _ev("2024-05-30 00:00", "c9", None, "page_view", "display", "third_party"),
        ]
    )


def _profiles() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "profile_id": pd.array(["p1", "p2", "p3"], dtype="string"),
            "timezone": pd.array(["Europe/Paris", "Asia/Kolkata", "Mars/Base"], dtype="string"),
            "email": ["a@example.com", "b@example.com", "c@example.com"],
            "phone_number": ["1", "2", "3"],
            "crm_id": ["x1", "x2", "x3"],
            "age": [30, 41, None],
            "vip": [True, False, True],
            "tier": pd.array(["gold", "silver", None], dtype="string"),
            "signup": pd.DatetimeIndex(["2023-06-01", "2024-05-31", "2024-07-01"], tz="UTC"),
            "event_count_total": [1.0, 2.0, 3.0],
        }
    )


@pytest.fixture(scope="module")
def tiny() -> FeatureTable:
    return build_features(_tiny_log(), AS_OF, _profiles(), settings=Settings())


def test_counts_recency_value_and_tenure_on_a_hand_written_log(tiny: FeatureTable):
    f = tiny.frame
    assert f.index.tolist() == ["anon:c9", "p1", "p2", "p3"]
    p1 = f.loc["p1"]
    assert p1["purchase_count_7d"] == 0
    assert p1["purchase_count_30d"] == 1
    assert p1["purchase_count_90d"] == 2
    assert p1["purchase_count_total"] == 3
    assert p1["purchase_days_total"] == 3
    # two opens 12 hours apart in one 24-hour period: two events, one occasion
    assert (p1["email_open_count_total"], p1["email_open_days_total"]) == (2, 1)
    # the mean gap is between occasions: 2024-01-15 to 05-18 over two, and one day of opens
    # is one occasion, not a gap of 12 hours
    assert (
        p1["purchase_mean_gap_days"]
        == (pd.Timestamp("2024-05-18") - pd.Timestamp("2024-01-15")).days / 2
    )
    assert np.isnan(p1["email_open_mean_gap_days"])
    assert p1["days_since_purchase"] == 14.0
    assert p1["email_send_count_7d"] == 1
    assert p1["email_open_count_30d"] == 2
    assert p1["event_count_total"] == 8
    assert p1["days_since_last_event"] == 3.0
    assert p1["tenure_days"] == (AS_OF - pd.Timestamp("2024-01-15", tz="UTC")).days
    assert p1["value_sum_30d"] == 100.0
    assert p1["value_sum_90d"] == 150.0
    assert p1["value_sum_total"] == 180.0
    assert p1["value_mean"] == 60.0
    # 24-hour periods (k, k+1] days back holding an event: 2, 4 | 8 (ages 8.5 and 9), 9, 13 | 39
    assert (p1["active_days_7d"], p1["active_days_30d"], p1["active_days_90d"]) == (2, 5, 6)
    # never happened: NaN; counts 0
    assert np.isnan(p1["days_since_add_to_cart"])
    assert np.isnan(f.loc["p2", "value_mean"])
    assert f.loc["p2", "value_sum_total"] == 0.0


def test_decayed_activity_halves_every_half_life(tiny: FeatureTable):
    p1 = tiny.frame.loc["p1"]
    half = 14.0
    ages = {"purchase": [138.0, 40.0, 14.0], "page_view": [4 + 15.5 / 24], "email_open": [9, 8.5]}
    expected = {k: sum(2 ** (-a / half) for a in v) for k, v in ages.items()}
    assert p1["purchase_decayed"] == pytest.approx(expected["purchase"], rel=1e-12)
    assert p1["email_send_decayed"] == pytest.approx(2 ** (-10 / half) + 2 ** (-3 / half))
    # activity counts engagement only: sends are pushed by the marketer
    assert p1["activity_decayed"] == pytest.approx(sum(expected.values()), rel=1e-12)


def test_smoothed_email_rates_shrink_to_the_population_rate(tiny: FeatureTable):
    f = tiny.frame
    # distinct campaigns opened / sends: p1 1/2 (two opens of m1 count once), p2 0/2
    p0, k = 1 / 4, 10.0
    assert f.loc["p1", "email_open_rate_smoothed"] == pytest.approx((1 + k * p0) / (2 + k))
    assert f.loc["p2", "email_open_rate_smoothed"] == pytest.approx((0 + k * p0) / (2 + k))
    assert f.loc["p3", "email_open_rate_smoothed"] == pytest.approx(p0)  # no sends: the prior
    assert (f["email_click_rate_smoothed"] == 0).all()
    assert tiny.spec.params["email_open_rate_population"] == pytest.approx(p0)


def test_mixes_identity_columns_and_vocabulary(tiny: FeatureTable):
    f = tiny.frame
    assert f.loc["p1", "category_share_shoes"] == 0.75
    assert f.loc["p1", "category_share_bags"] == 0.25
    assert f.loc["p2", "category_share_shoes"] == 0.0  # nothing categorised: 0
    assert f.loc["p1", "channel_share_web"] == 0.5
    assert f.loc["p1", "channel_share_email"] == 0.5
    assert f.loc["p1", "source_share_third_party"] == 1 / 8
    assert f.loc["anon:c9", "is_anonymous"] == 1.0
    assert f.loc["p1", "is_anonymous"] == 0.0
    assert f.loc["p1", "n_cookies"] == 1.0
    assert tiny.spec.categories == ["shoes", "bags"]
    assert tiny.spec.event_types[:9] == [
        "page_view",
        "product_view",
        "add_to_cart",
        "purchase",
        "email_send",
        "email_open",
        "email_click",
        "ad_impression",
        "ad_click",
    ]
    assert all(f[c].dtype == np.float64 for c in f.columns if c not in tiny.spec.categorical)


def test_hour_of_week_counts_engagement_in_local_time(tiny: FeatureTable):
    how = pd.DataFrame(tiny.hour_of_week, index=tiny.frame.index)
    assert tiny.hour_of_week.shape == (4, 168)

    def hours(pid: str) -> dict[int, float]:
        row = how.loc[pid]
        return {int(h): float(v) for h, v in row[row > 0].items()}

    # Paris: CET (+1) in January, CEST (+2) from April; sends are not engagement
    assert hours("p1") == {1: 1.0, 2: 1.0, 122: 1.0, 74: 1.0, 86: 1.0, 10: 1.0}
    assert hours("p2") == {5 * 24 + 1: 1.0}  # Friday 20:00 UTC is Saturday 01:30 in Kolkata
    assert hours("p3") == {2 * 24 + 23: 1.0}  # unknown zone: UTC
    assert hours("anon:c9") == {3 * 24: 1.0}  # Thursday 00:00 UTC
    assert tiny.summary["timezones_invalid"] == 1


def test_profile_attributes_are_typed_and_identifiers_never_pass(tiny: FeatureTable):
    f = tiny.frame
    for banned in ("email", "phone_number", "crm_id"):
        assert banned not in f.columns
    assert f["age"].dtype == np.float64
    assert f.loc["p2", "age"] == 41.0
    assert np.isnan(f.loc["anon:c9", "age"])
    assert f.loc["p1", "vip"] == 1.0
    assert isinstance(f["tier"].dtype, pd.CategoricalDtype)
    assert f.loc["p1", "tier"] == "gold"
    assert "tier" in tiny.spec.categorical
    assert f.loc["p1", "days_since_signup"] == 366.0
    assert np.isnan(f.loc["p3", "days_since_signup"])  # in the future: unknown at as_of
    # a colliding attribute name is prefixed; the behavioural feature keeps its name
    assert f.loc["p1", "attr_event_count_total"] == 1.0
    assert f.loc["p1", "event_count_total"] == 8.0
    assert list(tiny.spec.columns) == list(f.columns)


def test_point_in_time_features_ignore_later_events():
    log = _tiny_log()
    cut = log[log["event_time"] < AS_OF].reset_index(drop=True)
    later = _frame(
        [
            _ev("2024-06-02", "c9", "p1", "purchase", value=5.0),  # would link anon c9 to p1
            _ev("2024-06-03", "c1", "p7", "page_view"),  # would make c1 shared
            _ev("2024-07-01", None, "p2", "email_open", "email", campaign="m9"),
        ]
    )
    a = build_features(cut, AS_OF, _profiles())
    b = build_features(pd.concat([later, log], ignore_index=True), AS_OF, _profiles())
    pd.testing.assert_frame_equal(a.frame, b.frame)
    np.testing.assert_array_equal(a.hour_of_week, b.hour_of_week)
    assert a.spec == b.spec
    drop = {"events_in", "events_before_as_of"}
    assert {k: v for k, v in a.summary.items() if k not in drop} == {
        k: v for k, v in b.summary.items() if k not in drop
    }


def test_withdrawn_expired_anonymous_and_erased_profiles_are_absent_lapsed_customers_stay():
    log = _frame(
        [
            _ev("2024-05-01", "tv", "alice", "page_view"),
            _ev("2024-05-02", "tv", "bob", "page_view"),
            _ev("2024-05-03", "tv", None, "purchase", value=10.0),  # nobody's
            _ev("2024-05-04", "c-w", "withdrawn", "page_view"),
            _ev("2023-12-01", "c-old", None, "page_view"),  # an anonymous cookie, expired
            _ev("2023-12-01", "c-lapsed", "lapsed", "purchase", value=5.0),  # a lapsed customer
            _ev("2024-05-05", "c-e", "erased", "page_view"),
        ]
    )
    consent = pd.DataFrame(
        {
            "profile_id": pd.array(["withdrawn"], dtype="string"),
            "cookie_id": pd.array([None], dtype="string"),
            "purpose": ["marketing"],
            "granted": [False],
            "updated_at": pd.DatetimeIndex(["2024-05-10"], tz="UTC"),
        }
    )
    t = build_features(log, AS_OF, consent=consent, erased={"erased"})
    assert t.frame.index.tolist() == ["alice", "bob", "lapsed"]
    assert t.frame["n_shared_devices"].tolist() == [1.0, 1.0, 0.0]
    assert t.frame["purchase_count_total"].tolist() == [0.0, 0.0, 1.0]
    # the lapsed customer's recency says how lapsed it is
    assert t.frame.loc["lapsed", "days_since_last_event"] > 150
    assert t.summary["profiles_lapsed"] == 1
    assert t.summary["excluded_by_consent"] == 1
    assert t.summary["excluded_by_erasure"] == 1
    assert t.summary["profiles_expired"] == 1
    assert t.summary["events_unattributed_shared_device"] == 1
    assert t.hour_of_week.shape == (3, 168)


def test_open_vocabulary_extra_types_rare_types_and_a_reference_spec():
    rows = [_ev(f"2024-05-{d:02d}", f"c{d % 3}", None, "page_view") for d in range(1, 29)]
    rows += [_ev("2024-05-10", "c1", None, "store_visit", category=f"k{i}") for i in range(5)]
    rows += [_ev("2024-05-11", "c2", None, "rare_thing", category="k9")]
    settings = Settings(features=FeatureSettings(vocab_min_share=0.05, top_k_categories=2))
    t = build_features(_frame(rows), AS_OF, settings=settings)
    assert "store_visit_count_30d" in t.frame.columns
    assert "rare_thing_count_30d" not in t.frame.columns
    assert t.frame.loc["anon:c2", "other_event_count_total"] == 1.0
    assert t.spec.categories == ["k0", "k1"]  # ties broken by name
    # scoring at another cutoff with the training spec: identical columns and vocabularies
    later = build_features(_frame(rows[:5]), AS_OF, settings=settings, reference=t.spec)
    assert list(later.frame.columns) == list(t.frame.columns)
    assert later.spec.categories == t.spec.categories
    fixed = build_features(_frame(rows), AS_OF, settings=settings, categories=["k9"])
    assert fixed.spec.categories == ["k9"]
    assert fixed.frame.loc["anon:c2", "category_share_k9"] == 1.0


def test_parquet_round_trip_and_select(tiny: FeatureTable, tmp_path):
    path = tiny.to_parquet(tmp_path / "features.parquet")
    back = FeatureTable.read_parquet(path)
    pd.testing.assert_frame_equal(back.frame, tiny.frame)
    np.testing.assert_array_equal(back.hour_of_week, tiny.hour_of_week)
    assert back.spec == tiny.spec
    assert back.summary == tiny.summary
    again = FeatureTable.read(tiny.write(tmp_path / "bundle"))
    pd.testing.assert_series_equal(again.cookie_map, tiny.cookie_map)
    pd.testing.assert_frame_equal(again.frame, tiny.frame)
    sub = tiny.select(["p2", "nobody", "p1"])
    assert sub.frame.index.tolist() == ["p2", "p1"]
    np.testing.assert_array_equal(sub.hour_of_week[1], tiny.hour_of_week[1])
    with pytest.raises(UnknownProfileError):
        tiny.select(["nobody"])


def test_hour_of_week_written_first_is_mapped_and_kept_by_the_table_write(
    tiny: FeatureTable, tmp_path
):
    """A train writes the hour-of-week counts into its bundle first and maps them; writing
    the table there later keeps that file (rewriting it would truncate what the mapping
    reads) and the table reads back the same."""
    from dmp_ml.mapped import is_mapped

    early = tiny.hour_of_week_written(tmp_path / "bundle")
    assert is_mapped(early.hour_of_week)
    np.testing.assert_array_equal(early.hour_of_week, tiny.hour_of_week)
    written = tmp_path / "bundle" / "hour_of_week.npy"
    stamp = written.stat().st_ino, written.stat().st_mtime_ns
    again = FeatureTable.read(early.write(tmp_path / "bundle"))
    assert (written.stat().st_ino, written.stat().st_mtime_ns) == stamp
    np.testing.assert_array_equal(again.hour_of_week, tiny.hour_of_week)
    pd.testing.assert_frame_equal(again.frame, tiny.frame)
    # another directory gets its own copy
    other = FeatureTable.read(early.write(tmp_path / "other"))
    np.testing.assert_array_equal(other.hour_of_week, tiny.hour_of_week)


def test_parquet_file_is_what_pandas_writes_missing_features_as_nulls(tiny: FeatureTable, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def by_pandas(table: FeatureTable) -> pa.Table:
        names = [f"hour_of_week_{h:03d}" for h in range(168)]
        how = pd.DataFrame(table.hour_of_week, index=table.frame.index, columns=names)
        return pa.Table.from_pandas(pd.concat([table.frame, how], axis=1), preserve_index=True)

    empty = build_features(_tiny_log(), "2020-01-01")
    for table in (tiny, tiny.select(["p2", "p1"]), empty):
        stored = pq.read_table(table.to_parquet(tmp_path / "features.parquet"))
        expected = by_pandas(table)
        assert stored.schema.pandas_metadata == expected.schema.pandas_metadata
        assert stored.column_names == expected.column_names
        for name in expected.column_names:
            assert stored.column(name).to_pylist() == expected.column(name).to_pylist(), name
    # a feature that never happened is NaN in pandas and NULL to a SQL reader of the file
    stored = pq.read_table(tiny.to_parquet(tmp_path / "features.parquet"))
    never = tiny.frame["days_since_purchase"].isna()
    assert never.any() and not never.all()
    assert stored.column("days_since_purchase").null_count == never.sum()


def test_nothing_before_as_of_gives_an_empty_table_with_the_full_schema():
    t = build_features(_tiny_log(), "2020-01-01", _profiles())
    assert len(t) == 0
    assert t.hour_of_week.shape == (0, 168)
    assert "purchase_count_30d" in t.frame.columns


def test_feature_builder_encodes_once_and_matches_build_features():
    from dmp_ml.features import FeatureBuilder
    from dmp_ml.identity import resolve_identity

    log, profiles = _tiny_log(), _profiles()
    builder = FeatureBuilder(log, profiles, erased=["p3"])
    for cut in (AS_OF, AS_OF - pd.Timedelta(days=5)):
        expected = build_features(log, cut, profiles, erased=["p3"])
        got = builder.build(cut)
        pd.testing.assert_frame_equal(got.frame, expected.frame)
        np.testing.assert_array_equal(got.hour_of_week, expected.hour_of_week)
        assert got.summary == expected.summary
        resolved = builder.resolve(cut)
        direct = resolve_identity(log, cut, erased=["p3"])
        pd.testing.assert_frame_equal(resolved.events, direct.events)
        pd.testing.assert_frame_equal(resolved.profiles, direct.profiles)
    # a train lets the encoded log and the identities go before it saves; asked again, the
    # builder encodes again and answers the same
    builder.release()
    assert builder._encoded is None and not builder._kept
    again = builder.build(AS_OF).frame
    pd.testing.assert_frame_equal(again, build_features(log, AS_OF, profiles, erased=["p3"]).frame)


def test_chunked_and_two_thread_paths_give_identical_results(monkeypatch):
    from dmp_ml import identity
    from dmp_ml.demo import generate_demo_world

    world = generate_demo_world(n_profiles=150, days=30, seed=5)
    args = (world.events, world.end, world.profiles, world.consent)
    expected = build_features(*args)  # small input: one chunk, one thread
    monkeypatch.setattr(identity, "CHUNK_ROWS", 257)
    monkeypatch.setattr(identity, "PARALLEL_ROWS", 0)
    got = build_features(*args)
    pd.testing.assert_frame_equal(got.frame, expected.frame, check_exact=True)
    np.testing.assert_array_equal(got.hour_of_week, expected.hour_of_week)
    assert got.summary == expected.summary


def test_builder_positives_are_the_resolved_events_of_the_type_in_the_window(demo_world):
    from dmp_ml.features import FeatureBuilder
    from dmp_ml.models.propensity import make_labels

    builder = FeatureBuilder(demo_world.events, demo_world.profiles, demo_world.consent)
    end = demo_world.end - pd.Timedelta(days=5)
    start = end - pd.Timedelta(days=20)
    resolution = builder.resolve(end)
    for event_type in ("purchase", "email_click", "no_such_event"):
        labels = make_labels(resolution.events, start, 20, event_type, resolution.profiles.index)
        positives = builder.positives(end, start, end, event_type)
        assert list(positives) == list(labels.index[labels == 1])
    assert len(builder.positives(end, start, end, "purchase")) > 10
    assert builder.resolved_cutoffs == [end]  # one identity for all three questions
