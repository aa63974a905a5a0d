"""The data contract: every row read is either loaded or quarantined with a reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.contract import EVENT_COLUMNS, load_consent, load_events, load_profiles
from dmp_ml.errors import DataContractError, MappingError
from dmp_ml.features import build_features
from dmp_ml.identity import encode
from dmp_ml.mapping import parse_mapping
from dmp_ml.settings import MAPPINGS_DIR, ContractSettings

ROOT = Path(__file__).resolve().parents[1]
RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"
RETAIL_MAPPING = MAPPINGS_DIR / "online_retail.yaml"

HEADER = "event_time,cookie_id,profile_id,event_type,source,value\n"


def write(tmp_path: Path, text: str | bytes, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def assert_accounted(result) -> None:
    report = result.report
    assert report.rows_read == report.rows_loaded + report.rows_quarantined
    assert len(result.frame) == report.rows_loaded
    assert len(result.quarantine) == report.rows_quarantined
    assert sum(report.quarantined_by_reason.values()) == report.rows_quarantined


def test_clean_csv_loads_in_canonical_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "2026-01-02T10:00:00Z,c1,,page_view,,\n"
        + "2026-01-01 09:30:00,c1,p1,purchase,first_party,19.5\n",
    )
    result = load_events(path)
    assert_accounted(result)
    frame = result.frame
    assert list(frame.columns) == EVENT_COLUMNS
    assert str(frame["event_time"].dt.tz) == "UTC"
    # sorted by time; naive time means UTC; missing source defaults to first_party
    assert frame["event_time"].iloc[0] == pd.Timestamp("2026-01-01 09:30", tz="UTC")
    assert frame["source"].tolist() == ["first_party", "first_party"]
    assert frame["value"].iloc[0] == 19.5
    assert pd.isna(frame["profile_id"].iloc[1])
    assert frame["cookie_id"].dtype == "string"


def test_bad_rows_are_quarantined_with_reasons(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "not a time,c1,,page_view,,\n"
        + "2026-01-01T00:00:00Z,,,page_view,,\n"
        + "2026-01-01T00:00:00Z,c1,,,,\n"
        + "2026-01-01T00:00:00Z,c1,,page_view,fourth_party,\n"
        + "2026-01-01T00:00:00Z,c1,,purchase,,twelve\n"
        + "2026-01-01T00:00:00Z,c2,,page_view,,\n",
    )
    result = load_events(path)
    assert_accounted(result)
    assert result.report.rows_read == 6
    assert result.report.rows_loaded == 1
    assert result.report.quarantined_by_reason == {
        "invalid_event_time": 1,
        "missing_id": 1,
        "missing_event_type": 1,
        "unknown_source": 1,
        "non_numeric_value": 1,
    }
    # the quarantine keeps the original text and where it was in the file
    bad_time = result.quarantine.set_index("reason").loc["invalid_event_time"]
    assert bad_time["event_time"] == "not a time"
    assert bad_time["row_number"] == 1


def test_mixed_time_zones_are_converted_to_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "2026-03-01T10:00:00+02:00,c1,,page_view,,\n"
        + "2026-03-01T10:00:00-05:00,c2,,page_view,,\n"
        + "2026-03-01T10:00:00,c3,,page_view,,\n"
        + "13/03/2026 10:00,c4,,page_view,,\n",
    )
    result = load_events(path)
    assert_accounted(result)
    times = result.frame.set_index("cookie_id")["event_time"]
    assert times["c1"] == pd.Timestamp("2026-03-01 08:00", tz="UTC")
    assert times["c2"] == pd.Timestamp("2026-03-01 15:00", tz="UTC")
    assert times["c3"] == pd.Timestamp("2026-03-01 10:00", tz="UTC")
    assert times["c4"] == pd.Timestamp("2026-03-13 10:00", tz="UTC")  # 13: day first


def test_exact_duplicates_are_collapsed_and_counted(tmp_path: Path) -> None:
    line = "2026-01-01T00:00:00Z,c1,p1,purchase,,10\n"
    path = write(tmp_path, HEADER + line * 3 + "2026-01-01T00:00:00Z,c1,p1,purchase,,11\n")
    result = load_events(path)
    assert_accounted(result)
    assert result.report.rows_loaded == 2
    assert result.report.quarantined_by_reason == {"duplicate_event": 2}


def test_duplicates_across_batches_match_a_full_comparison(tmp_path: Path) -> None:
    # copies split over batches, missing values equal to missing, rows one field apart kept
    rows = [
        ("2026-01-01T00:00:00Z", "c1", "", "page_view", ""),
        ("2026-01-01T00:00:00Z", "c1", "", "page_view", ""),
        ("2026-01-01T00:00:00Z", "c1", "p1", "page_view", ""),
        ("2026-01-01T00:00:00Z", "c2", "", "page_view", ""),
        ("2026-01-01T00:00:00Z", "c1", "", "purchase", "5"),
        ("2026-01-01T00:00:01Z", "c1", "", "page_view", ""),
        ("2026-01-01T00:00:00Z", "c1", "", "purchase", "5.0"),
        ("2026-01-01T00:00:00Z", "c1", "", "purchase", "-0"),
        ("2026-01-01T00:00:00Z", "c1", "", "purchase", "0"),
        ("2026-01-01T00:00:00Z", "c1", "", "page_view", ""),
    ]
    frame = pd.DataFrame(
        rows, columns=["event_time", "cookie_id", "profile_id", "event_type", "value"]
    )
    path = tmp_path / "events.parquet"
    frame.replace("", None).to_parquet(path, index=False)
    result = load_events(path, settings=ContractSettings(chunk_rows=3))
    assert_accounted(result)
    dupes = result.quarantine.loc[result.quarantine["reason"] == "duplicate_event"]
    # the later copies, by their row in the file: 2 and 10 (page views), 7 (5.0), 9 (0 = -0)
    assert sorted(dupes["row_number"]) == [2, 7, 9, 10]
    assert result.report.rows_loaded == 6
    assert not result.frame.duplicated().any()


def test_duplicates_in_a_large_log_match_a_full_comparison(tmp_path: Path) -> None:
    # enough rows that the loader narrows hashes by buckets before its exact pass
    rng = np.random.default_rng(3)
    n = 100_000
    frame = pd.DataFrame(
        {
            "event_time": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(np.sort(rng.integers(0, 600, n)), unit="s"),
            "cookie_id": [f"c{i}" for i in rng.integers(0, 40, n)],
            "event_type": rng.choice(["page_view", "purchase"], n),
            "value": np.where(rng.random(n) < 0.5, np.nan, rng.integers(0, 3, n).astype(float)),
        }
    )
    expected = frame.duplicated(keep="first")
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False)
    result = load_events(path, settings=ContractSettings(chunk_rows=30_000))
    assert_accounted(result)
    assert expected.sum() > 1_000
    assert sorted(result.quarantine["row_number"]) == list(np.flatnonzero(expected) + 1)


def test_a_few_duplicates_over_many_batches_leave_the_other_rows_as_they_were(
    tmp_path: Path,
) -> None:
    # a few copies in each batch: the loader keeps the rest of each text column uncopied
    rng = np.random.default_rng(5)
    n = 20_000
    frame = pd.DataFrame(
        {
            "event_time": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(np.arange(n) // 2, unit="s"),
            "cookie_id": [f"c{i}" for i in rng.integers(0, 5_000, n)],
            "profile_id": [None if i % 3 else f"p{i % 97}" for i in range(n)],
            "event_type": rng.choice(["page_view", "purchase"], n),
            "value": np.where(rng.random(n) < 0.5, np.nan, rng.integers(0, 3, n).astype(float)),
        }
    )
    copies = np.sort(rng.choice(np.arange(0, n, 2), 9, replace=False))
    frame.iloc[copies + 1] = frame.iloc[copies].to_numpy()
    expected = frame.duplicated(keep="first")
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False)
    result = load_events(path, settings=ContractSettings(chunk_rows=3_000))
    assert_accounted(result)
    assert sorted(result.quarantine["row_number"]) == list(np.flatnonzero(expected) + 1)
    kept = frame.loc[~expected].reset_index(drop=True)
    assert len(result.frame) == len(kept)
    for column in ("cookie_id", "profile_id", "event_type"):
        assert result.frame[column].tolist() == kept[column].astype("string").tolist()
    assert (result.frame["event_time"] == kept["event_time"]).all()
    np.testing.assert_array_equal(result.frame["value"].to_numpy(), kept["value"].to_numpy())


def test_stray_quote_damages_only_its_own_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "2026-01-01T00:00:00Z,c1,,page_view,,\n"
        + '2026-01-01T01:00:00Z,"c2,,page_view,,\n'
        + "2026-01-01T02:00:00Z,c3,,page_view,,\n"
        + "2026-01-01T03:00:00Z,c4,,page_view,,\n",
    )
    result = load_events(path)
    assert_accounted(result)
    assert result.report.rows_read == 4
    assert sorted(result.frame["cookie_id"]) == ["c1", "c3", "c4"]
    assert result.report.quarantined_by_reason == {"malformed_row": 1}
    assert '"c2' in result.quarantine["_raw_text"].iloc[0]


def test_non_utf8_bytes_are_quarantined_not_fatal(tmp_path: Path) -> None:
    body = (HEADER + "2026-01-01T00:00:00Z,c1,,page_view,,\n").encode()
    body += b"2026-01-01T00:00:00Z,caf\xe9,,page_view,,\n"
    path = write(tmp_path, body)
    result = load_events(path)
    assert_accounted(result)
    assert result.report.rows_loaded == 1
    assert result.report.quarantined_by_reason == {"invalid_encoding": 1}


def test_wrong_column_count_rows_are_malformed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER + "2026-01-01T00:00:00Z,c1,,page_view,,\n" + "2026-01-01T00:00:00Z,c1\n",
    )
    result = load_events(path)
    assert_accounted(result)
    assert result.report.quarantined_by_reason == {"malformed_row": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "file is empty"),
        ("a,b,c\n1,2,3\n", "missing required column(s) ['event_time', 'event_type']"),
        ("event_time,event_type,value\n2026-01-01,page_view,1\n", "need cookie_id or profile_id"),
    ],
)
def test_unusable_files_raise_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(DataContractError, match=re.escape(message)):
        load_events(write(tmp_path, content))


def test_missing_column_error_lists_expected_and_found(tmp_path: Path) -> None:
    with pytest.raises(DataContractError) as info:
        load_events(write(tmp_path, "when,who\n1,2\n"))
    assert "expected" in str(info.value) and "found ['when', 'who']" in str(info.value)


def test_header_only_file_loads_nothing(tmp_path: Path) -> None:
    result = load_events(write(tmp_path, HEADER))
    assert result.report.rows_read == 0
    assert result.report.rows_loaded == 0
    assert list(result.frame.columns) == EVENT_COLUMNS


def test_parquet_with_wrong_types(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "event_time": ["2026-01-01T00:00:00Z", "yesterday"],
            "cookie_id": ["c1", "c2"],
            "event_type": ["purchase", "purchase"],
            "value": ["3.5", "lots"],
        }
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    result = load_events(path)
    assert_accounted(result)
    assert result.report.rows_loaded == 1
    assert result.report.quarantined_by_reason == {"invalid_event_time": 1}


def test_large_file_is_read_in_batches(tmp_path: Path) -> None:
    from dmp_ml.settings import ContractSettings

    n = 2_500
    frame = pd.DataFrame(
        {
            "event_time": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"),
            "cookie_id": [f"c{i % 50}" for i in range(n)],
            "event_type": "page_view",
        }
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    result = load_events(path, settings=ContractSettings(chunk_rows=1000))
    assert_accounted(result)
    assert result.report.rows_loaded == n


def test_mapping_renames_derives_and_drops(tmp_path: Path) -> None:
    raw = pd.DataFrame(
        {
            "When": ["2026-01-01 10:00", "2026-01-01 11:00", "2026-07-01 12:00"],
            "Customer": [17850.0, 17851.0, None],
            "Invoice": ["1", "C2", "3"],
            "Qty": [2, 1, 1],
            "Price": [1.5, 2.0, 3.0],
        }
    )
    path = tmp_path / "raw.parquet"
    raw.to_parquet(path)
    mapping = parse_mapping(
        {
            "timezone": "Europe/London",
            "rename": {"When": "event_time", "Customer": "profile_id"},
            "integer_ids": ["profile_id"],
            "constants": {"event_type": "purchase"},
            "derive": {"value": {"multiply": ["Qty", "Price"]}},
            "drop": [
                {"column": "Invoice", "op": "startswith", "value": "C", "reason": "cancelled"}
            ],
        }
    )
    result = load_events(path, mapping=mapping)
    assert_accounted(result)
    assert result.report.quarantined_by_reason == {"cancelled": 1, "missing_id": 1}
    row = result.frame.iloc[0]
    assert row["profile_id"] == "17850"
    assert row["value"] == 3.0
    assert row["event_time"] == pd.Timestamp("2026-01-01 10:00", tz="UTC")  # GMT in winter


def test_mapping_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="unknown op"):
        parse_mapping({"drop": [{"column": "a", "op": "~", "value": 1, "reason": "x"}]})
    with pytest.raises(MappingError, match="not an IANA time zone"):
        parse_mapping({"timezone": "Mars/Olympus"})
    path = write(tmp_path, "a,b\n1,2\n")
    with pytest.raises(MappingError, match=r"needs columns \['When'\]"):
        load_events(path, mapping=parse_mapping({"rename": {"When": "event_time"}}))


@pytest.mark.slow
@pytest.mark.skipif(not RETAIL.exists(), reason="shared Online Retail data not present")
def test_online_retail_loads_with_shipped_mapping() -> None:
    result = load_events(RETAIL, mapping=RETAIL_MAPPING)
    assert_accounted(result)
    report = result.report
    assert report.rows_read == 541_909
    assert report.quarantined_by_reason == {
        "cancelled_invoice": 9_288,
        "duplicate_event": 5_234,
        "missing_id": 132_220,
        "non_positive_price": 1_181,
        "non_positive_quantity": 1_336,
    }
    assert report.rows_loaded == 392_650
    assert result.frame["profile_id"].nunique() == 4_338
    assert (result.frame["value"] > 0).all()


def test_profiles_and_consent(tmp_path: Path) -> None:
    profiles = write(
        tmp_path,
        "profile_id,timezone,age,tier,email\n"
        "p1,Europe/Berlin,34,gold,a@example.com\n"
        "p2,Not/AZone,,silver,\n"
        "p1,UTC,40,gold,\n"
        ",UTC,1,gold,\n",
        name="profiles.csv",
    )
    result = load_profiles(profiles)
    assert_accounted(result)
    assert result.report.quarantined_by_reason == {
        "duplicate_profile_id": 1,
        "missing_profile_id": 1,
    }
    assert result.report.warnings == {"invalid_timezone_set_to_unknown": 1}
    assert result.frame["age"].dtype == "float64"
    consent = write(
        tmp_path,
        "profile_id,cookie_id,purpose,granted,updated_at\n"
        "p1,,marketing,true,2026-01-01\n"
        "p1,,marketing,withdrawn,2026-02-01\n"
        ",c9,marketing,no,2026-02-01\n"
        "p2,,marketing,maybe,2026-02-01\n",
        name="consent.csv",
    )
    result = load_consent(consent)
    assert_accounted(result)
    assert result.report.quarantined_by_reason == {"invalid_granted": 1}
    assert result.frame["granted"].tolist() == [True, False, False]


def test_public_api_resolves() -> None:
    import dmp_ml

    for name in dmp_ml.__all__:
        assert getattr(dmp_ml, name) is not None, name


def test_the_loaders_id_codes_are_the_loaded_frames_and_give_the_same_features(
    tmp_path: Path,
) -> None:
    # duplicates across batches (a value whose later copies go), missing ids, and a profile
    # first seen in a row that is then repeated: the codes handed on must be exactly what
    # encoding the loaded frame gives, so the features built with them are the same
    rows = [
        ("2026-01-01T00:00:00Z", "c1", None, "page_view", None),
        ("2026-01-01T00:00:00Z", "c1", None, "page_view", None),
        ("2026-01-01T00:00:01Z", "c2", "p1", "purchase", 5.0),
        ("2026-01-01T00:00:01Z", "c2", "p1", "purchase", 5.0),
        ("2026-01-01T00:00:02Z", None, "p2", "email_open", None),
        ("2026-01-01T00:00:02Z", "c3", None, "page_view", None),
        ("2026-01-01T00:00:02Z", "c3", None, "page_view", None),
        ("2026-01-01T00:00:03Z", "c1", "p2", "product_view", None),
        ("2026-01-01T00:00:03Z", "c1", "p2", "product_view", None),
    ]
    frame = pd.DataFrame(
        rows, columns=["event_time", "cookie_id", "profile_id", "event_type", "value"]
    )
    frame["event_time"] = pd.to_datetime(frame["event_time"])
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False, row_group_size=4)
    result = load_events(path, settings=ContractSettings(chunk_rows=2))
    assert result.report.quarantined_by_reason == {"duplicate_event": 4}
    assert set(result.encoded) == {"cookie_id", "profile_id"}
    for column, (codes, values) in result.encoded.items():
        expected_codes, expected_values = encode(result.frame[column], len(result.frame))
        np.testing.assert_array_equal(codes, expected_codes)
        assert values.equals(expected_values)
    as_of = "2026-01-02"
    given = build_features(result.frame, as_of, encoded=result.encoded)
    fresh = build_features(result.frame, as_of)
    pd.testing.assert_frame_equal(given.frame, fresh.frame)
    # out of time order: the loader sorts, and hands no codes on
    frame.iloc[::-1].to_parquet(path, index=False)
    assert load_events(path).encoded == {}


def test_parquet_text_kept_as_dictionaries_is_the_same_log_and_gives_the_same_features(
    tmp_path: Path,
) -> None:
    """``load_events(dictionaries=True)`` (what ``dmp-ml features`` reads): padded, blank and
    upper-case text, unknown and missing sources, copies across row groups: the same rows,
    values, quarantine and features as the decoded load."""
    rng = np.random.default_rng(11)
    n = 4_000

    def pick(values: list[str | None]) -> np.ndarray:
        return np.array(values, dtype=object)[rng.integers(0, len(values), n)]

    frame = pd.DataFrame(
        {
            "event_time": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(np.arange(n) // 3, "s"),
            "cookie_id": pick(["c1", " c1", "c2 ", "", "c3", None, "c4"]),
            "profile_id": pick(["p1", "p1 ", "", None, "p2", "p3"]),
            "event_type": pick(["page_view", " purchase", "", "email_open", "email_click"]),
            "channel": pick(["web", "Email ", None, ""]),
            "source": pick(["First_Party", "third_party ", "nobody", "", None]),
            "campaign_id": pick(["cmp1", "cmp2 ", None, ""]),
            "category": pick(["shoes", " hats", None]),
            "value": rng.choice([1.5, np.nan, 2.0], n),
        }
    )
    frame.loc[frame.index % 89 == 7] = frame.loc[frame.index % 89 == 6].to_numpy()  # copies
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False, row_group_size=900)
    settings = ContractSettings(chunk_rows=500)
    decoded = load_events(path, settings=settings)
    kept = load_events(path, settings=settings, dictionaries=True)
    assert kept.report == decoded.report
    assert kept.report.quarantined_by_reason["duplicate_event"] > 0
    assert kept.report.quarantined_by_reason["unknown_source"] > 0
    pd.testing.assert_frame_equal(kept.quarantine, decoded.quarantine)
    text = [c for c in kept.frame.columns if isinstance(kept.frame[c].dtype, pd.ArrowDtype)]
    assert {"cookie_id", "event_type", "source", "campaign_id"} <= set(text)
    pd.testing.assert_frame_equal(
        kept.frame.astype({c: "string" for c in text}), decoded.frame, check_dtype=False
    )
    for column, (codes, values) in kept.encoded.items():
        expected_codes, expected_values = encode(decoded.frame[column], len(codes))
        np.testing.assert_array_equal(codes, expected_codes)
        assert values.equals(expected_values)
    as_of = "2026-01-02"
    fast = build_features(kept.frame, as_of, encoded=kept.encoded)
    plain = build_features(decoded.frame, as_of, encoded=decoded.encoded)
    assert fast.summary == plain.summary
    pd.testing.assert_frame_equal(fast.frame, plain.frame, check_exact=True)
    np.testing.assert_array_equal(fast.hour_of_week, plain.hour_of_week)
    # out of time order: sorted the same way (each column's chunks joined)
    frame.iloc[::-1].to_parquet(path, index=False, row_group_size=900)
    decoded = load_events(path, settings=settings)
    kept = load_events(path, settings=settings, dictionaries=True)
    assert kept.report == decoded.report
    pd.testing.assert_frame_equal(
        kept.frame.astype({c: "string" for c in text}), decoded.frame, check_dtype=False
    )


def test_parquet_text_loads_as_the_same_log_written_as_csv(tmp_path: Path) -> None:
    """Parquet text is read as dictionaries and cleaned on its distinct values: padded and
    blank ids, upper-case sources and bad rows come out as they do from the CSV of the log."""
    rng = np.random.default_rng(7)
    n = 3_000
    ids = np.array(["c1", " c1", "c2 ", "", "  ", "c3", None], dtype=object)
    profiles = np.array(["p1", "p1 ", "", None, "p2"], dtype=object)
    frame = pd.DataFrame(
        {
            "event_time": pd.Series(
                pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) // 3, "s")
            ).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cookie_id": ids[rng.integers(0, len(ids), n)],
            "profile_id": profiles[rng.integers(0, len(profiles), n)],
            "event_type": rng.choice(["page_view", " purchase", ""], n),
            "source": rng.choice(["First_Party", "third_party ", "nobody", ""], n),
            "value": rng.choice(["1.5", "x", "", "2"], n),
        }
    )
    frame.loc[frame.index % 97 == 5] = frame.loc[frame.index % 97 == 4].to_numpy()  # copies
    parquet, csv = tmp_path / "events.parquet", tmp_path / "events.csv"
    frame.to_parquet(parquet, index=False, row_group_size=700)
    frame.to_csv(csv, index=False)
    settings = ContractSettings(chunk_rows=500)
    from_parquet = load_events(parquet, settings=settings)
    from_csv = load_events(csv, settings=settings)
    assert_accounted(from_parquet)
    assert from_parquet.report.quarantined_by_reason == from_csv.report.quarantined_by_reason
    assert from_parquet.report.quarantined_by_reason["missing_id"] > 0
    assert from_parquet.report.quarantined_by_reason["duplicate_event"] > 0
    pd.testing.assert_frame_equal(from_parquet.frame, from_csv.frame)
    assert sorted(from_parquet.quarantine["row_number"]) == sorted(
        from_csv.quarantine["row_number"]
    )
    # text held as dictionaries is quarantined as the same text
    held = load_events(parquet, settings=settings, dictionaries=True)
    pd.testing.assert_frame_equal(held.quarantine, from_parquet.quarantine)
    assert set(from_parquet.encoded) == set(from_csv.encoded) == {"cookie_id", "profile_id"}
    for column, (codes, values) in from_parquet.encoded.items():
        expected_codes, expected_values = encode(from_parquet.frame[column], len(codes))
        np.testing.assert_array_equal(codes, expected_codes)
        assert values.equals(expected_values)
        # the CSV's codes, built from its batches of plain text, are the same
        np.testing.assert_array_equal(from_csv.encoded[column][0], expected_codes)
        assert from_csv.encoded[column][1].equals(expected_values)


def test_a_log_of_dates_without_times_loads_with_a_warning(tmp_path: Path, caplog) -> None:
    days = pd.date_range("2026-01-01", periods=120, freq="D")
    rows = "\n".join(f"{d:%Y-%m-%d},c{i % 7},purchase" for i, d in enumerate(days))
    result = load_events(write(tmp_path, "event_time,cookie_id,event_type\n" + rows + "\n"))
    assert_accounted(result)
    assert result.report.warnings == {"every_event_at_one_time_of_day": 120}
    assert "all 120 events are at 00:00 UTC" in caplog.text
    # a log with times of day, or too short to tell, says nothing
    timed = "\n".join(f"{d:%Y-%m-%d} {i % 24:02d}:15,c1,purchase" for i, d in enumerate(days))
    assert (
        load_events(write(tmp_path, "event_time,cookie_id,event_type\n" + timed)).report.warnings
        == {}
    )
    few = "\n".join(rows.split("\n")[:20])
    assert (
        load_events(write(tmp_path, "event_time,cookie_id,event_type\n" + few)).report.warnings
        == {}
    )
