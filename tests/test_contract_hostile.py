"""Hostile and careless input to the loader: the bad row is quarantined with its reason, the
rest loads, and nothing moves the feature clock past the wall clock (issue 17, issue 14 s. 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmp_ml.contract import clock_limit, data_end, load_consent, load_events, load_profiles
from dmp_ml.errors import DataContractError, MappingError
from dmp_ml.mapping import load_mapping, parse_mapping
from dmp_ml.settings import MAPPINGS_DIR, ContractSettings

ROOT = Path(__file__).resolve().parents[1]
RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"
RETAIL_MAPPING = MAPPINGS_DIR / "online_retail.yaml"
HEADER = "event_time,cookie_id,profile_id,event_type,source,value\n"
NOW = pd.Timestamp("2026-06-01 12:00", tz="UTC")


def write(tmp_path: Path, text: str | bytes, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def reasons(result) -> dict[str, str]:
    """cookie_id of each quarantined row -> its reason (cookie ids are unique in these files)."""
    q = result.quarantine
    return dict(zip(q["cookie_id"].astype(str), q["reason"].astype(str), strict=True))


def assert_accounted(result) -> None:
    report = result.report
    assert report.rows_read == report.rows_loaded + report.rows_quarantined
    assert len(result.frame) == report.rows_loaded
    assert len(result.quarantine) == report.rows_quarantined
    assert result.quarantine["reason"].notna().all()


# ------------------------------------------------------------------ times out of bounds


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("2500-01-01T00:00:00Z", "future_time"),
        ("2500-06-01 10:00", "future_time"),
        ("1500-01-01 00:00:00", "event_time_out_of_range"),
        ("0001-01-01", "event_time_out_of_range"),
        ("9999-12-31T23:59:59+05:00", "future_time"),
    ],
)
def test_an_out_of_bounds_date_quarantines_its_row_only(
    tmp_path: Path, when: str, reason: str
) -> None:
    path = write(
        tmp_path,
        HEADER + f"{when},c-bad,,page_view,,\n" + "2026-01-01T10:00:00Z,c-good,,page_view,,\n",
    )
    result = load_events(path, now=NOW)
    assert_accounted(result)
    assert result.frame["cookie_id"].tolist() == ["c-good"]
    assert reasons(result) == {"c-bad": reason}
    assert result.quarantine["event_time"].iloc[0] == when  # the original text is kept


def test_times_to_the_nanosecond_and_to_the_second_load_together(tmp_path: Path) -> None:
    """One batch mixing precisions (a tracker writing nanoseconds, another whole seconds),
    with and without an offset, loads every row, each to its microsecond."""
    path = write(
        tmp_path,
        HEADER
        + "2026-01-01T10:00:00.123456789+00:00,c-ns,,page_view,,\n"
        + "2026-01-01T10:00:01+00:00,c-s,,page_view,,\n"
        + "2026-01-01T10:00:02.987654321,c-ns-naive,,page_view,,\n"
        + "2026-01-01 10:00:03,c-s-naive,,page_view,,\n",
    )
    result = load_events(path, now=NOW)
    assert_accounted(result)
    assert result.report.rows_quarantined == 0
    times = dict(zip(result.frame["cookie_id"], result.frame["event_time"], strict=True))
    day = pd.Timestamp("2026-01-01 10:00", tz="UTC")
    assert times == {
        "c-ns": day + pd.Timedelta(microseconds=123456),
        "c-s": day + pd.Timedelta(seconds=1),
        "c-ns-naive": day + pd.Timedelta(seconds=2, microseconds=987654),
        "c-s-naive": day + pd.Timedelta(seconds=3),
    }


def test_parquet_timestamps_beyond_nanoseconds_are_quarantined(tmp_path: Path) -> None:
    times = pa.array(
        [np.datetime64("9999-01-01", "us"), np.datetime64("1200-01-01", "us")]
        + [np.datetime64("2026-01-01T10:00", "us")],
        pa.timestamp("us"),
    )
    table = pa.table(
        {"event_time": times, "cookie_id": ["c-9999", "c-1200", "c-ok"], "event_type": ["x"] * 3}
    )
    pq.write_table(table, tmp_path / "events.parquet")
    result = load_events(tmp_path / "events.parquet", now=NOW)
    assert_accounted(result)
    assert result.frame["cookie_id"].tolist() == ["c-ok"]
    assert reasons(result) == {"c-9999": "future_time", "c-1200": "event_time_out_of_range"}
    assert str(result.frame["event_time"].dtype) == "datetime64[ns, UTC]"


def test_events_past_now_plus_tolerance_are_future_time(tmp_path: Path) -> None:
    rows = {
        "c-now": NOW,
        "c-skew": NOW + pd.Timedelta(minutes=50),  # within the 60 min default tolerance
        "c-late": NOW + pd.Timedelta(minutes=70),
        "c-2200": pd.Timestamp("2200-01-01", tz="UTC"),
    }
    text = HEADER + "".join(f"{t.isoformat()},{c},,page_view,,\n" for c, t in rows.items())
    path = write(tmp_path, text)
    result = load_events(path, now=NOW)
    assert_accounted(result)
    assert sorted(result.frame["cookie_id"]) == ["c-now", "c-skew"]
    assert reasons(result) == {"c-late": "future_time", "c-2200": "future_time"}
    # the tolerance is a setting
    strict = load_events(path, now=NOW, settings=ContractSettings(future_tolerance_minutes=0))
    assert sorted(strict.frame["cookie_id"]) == ["c-now"]
    # and the feature clock of what loaded stays within a day of the wall clock
    assert data_end(result.frame, clock_limit(now=NOW)) == pd.Timestamp("2026-06-02", tz="UTC")


def test_the_feature_clock_never_passes_the_wall_clock() -> None:
    """Events that bypassed the loader (a frame, an old stored batch) cannot move it either."""
    frame = pd.DataFrame(
        {"event_time": pd.to_datetime(["2026-05-31 08:00", "2200-01-01 00:00"], utc=True)}
    )
    limit = clock_limit(ContractSettings(future_tolerance_minutes=60), now=NOW)
    assert limit == pd.Timestamp("2026-06-02", tz="UTC")
    assert data_end(frame, limit) == pd.Timestamp("2026-06-01", tz="UTC")  # 2200 left out
    with pytest.raises(DataContractError, match="every event is later"):
        data_end(frame.iloc[1:], limit)


# ------------------------------------------------------------------ broken files


def test_an_oversized_field_and_a_malformed_line_are_quarantined(tmp_path: Path) -> None:
    huge = "x" * (200 * 1024)
    text = (
        HEADER
        + "2026-01-01T10:00:00Z,c1,,page_view,,\n"
        + f'2026-01-01T10:00:00Z,c2,"{huge}",page_view,,\n'
        + '2026-01-01T10:00:00Z,c3,"unbalanced,page_view,,\n'
        + "2026-01-01T11:00:00Z,c4,,page_view,,\n"
    )
    result = load_events(write(tmp_path, text), now=NOW)
    assert_accounted(result)
    assert sorted(result.frame["cookie_id"]) == ["c1", "c4"]
    assert result.report.quarantined_by_reason == {"field_too_large": 1, "malformed_row": 1}
    rows = result.quarantine.set_index("row_number")["reason"]
    assert rows[2] == "field_too_large" and rows[3] == "malformed_row"


def test_an_oversized_field_alone_is_quarantined_too(tmp_path: Path) -> None:
    """Without a malformed line the fast reader takes the file: same answer."""
    text = HEADER + "2026-01-01T10:00:00Z,c1,,page_view,,\n"
    text += "2026-01-01T10:00:00Z," + "y" * (150 * 1024) + ",,page_view,,\n"
    result = load_events(write(tmp_path, text), now=NOW)
    assert_accounted(result)
    assert result.frame["cookie_id"].tolist() == ["c1"]
    assert result.report.quarantined_by_reason == {"field_too_large": 1}
    small = ContractSettings(max_field_bytes=64)
    tight = load_events(
        write(tmp_path, HEADER + "2026-01-01,c" + "z" * 70 + ",,x,,\n"), None, small
    )
    assert tight.report.quarantined_by_reason == {"field_too_large": 1}


def test_parquet_with_a_duplicated_column_is_one_clear_error(tmp_path: Path) -> None:
    table = pa.Table.from_arrays(
        [pa.array(["2026-01-01"]), pa.array(["a"]), pa.array(["x"]), pa.array(["b"])],
        names=["event_time", "cookie_id", "event_type", "cookie_id"],
    )
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(DataContractError, match="column 'cookie_id' appears more than once"):
        load_events(tmp_path / "dup.parquet")


def test_a_mapping_that_creates_a_duplicate_column_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, "ts,event_time,cookie_id,event_type\n2026-01-01,x,c1,page_view\n")
    mapping = parse_mapping({"rename": {"ts": "event_time"}})
    with pytest.raises(MappingError, match="'event_time'"):
        load_events(path, mapping=mapping)


# ------------------------------------------------------------------ values and epochs


def test_non_finite_and_absurd_values_are_quarantined(tmp_path: Path) -> None:
    text = HEADER + "".join(
        f"2026-01-01T10:00:00Z,{c},,purchase,,{v}\n"
        for c, v in [
            ("c-inf", "inf"),
            ("c-minf", "-Infinity"),
            ("c-overflow", "1e400"),
            ("c-1e308", "1e308"),
            ("c-neg", "-12.5"),
            ("c-ok", "19.99"),
            ("c-none", ""),
        ]
    )
    result = load_events(write(tmp_path, text), now=NOW)
    assert_accounted(result)
    assert reasons(result) == {
        "c-inf": "non_finite_value",
        "c-minf": "non_finite_value",
        "c-overflow": "non_finite_value",
        "c-1e308": "value_out_of_range",
    }
    values = result.frame.set_index("cookie_id")["value"]
    assert values["c-neg"] == -12.5 and values["c-ok"] == 19.99 and np.isnan(values["c-none"])
    assert np.isfinite(result.frame["value"].dropna()).all()


def test_epoch_times_need_the_mapping_to_say_their_unit(tmp_path: Path) -> None:
    seconds = int(pd.Timestamp("2026-01-01 10:00", tz="UTC").timestamp())
    text = HEADER + f"{seconds},c1,,page_view,,\n" + f"{seconds + 60},c2,,page_view,,\n"
    path = write(tmp_path, text)
    refused = load_events(path, now=NOW)
    assert refused.report.quarantined_by_reason == {"event_time_needs_time_unit": 2}
    loaded = load_events(path, mapping=parse_mapping({"time_unit": "s"}), now=NOW)
    assert_accounted(loaded)
    assert loaded.frame["event_time"].tolist() == [
        pd.Timestamp("2026-01-01 10:00", tz="UTC"),
        pd.Timestamp("2026-01-01 10:01", tz="UTC"),
    ]
    # milliseconds in a Parquet integer column; a far-future epoch is still future_time
    far = int(pd.Timestamp("2300-01-01").timestamp()) * 1000
    table = pa.table(
        {"event_time": [seconds * 1000, far], "cookie_id": ["m1", "m2"], "event_type": ["x", "x"]}
    )
    pq.write_table(table, tmp_path / "ms.parquet")
    ms = load_events(tmp_path / "ms.parquet", mapping=parse_mapping({"time_unit": "ms"}), now=NOW)
    assert ms.frame["event_time"].tolist() == [pd.Timestamp("2026-01-01 10:00", tz="UTC")]
    assert ms.report.quarantined_by_reason == {"future_time": 1}
    no_unit = load_events(tmp_path / "ms.parquet", now=NOW)
    assert no_unit.report.quarantined_by_reason == {"event_time_needs_time_unit": 2}


# ------------------------------------------------------------------ time formats (issue 14)


def test_ambiguous_day_month_dates_are_refused_naming_column_and_fix(tmp_path: Path) -> None:
    text = "when,cookie_id,event_type\n01/12/2010 10:00,c1,x\n02/11/2010 09:00,c2,x\n"
    path = write(tmp_path, text)
    mapping = parse_mapping({"rename": {"when": "event_time"}})
    with pytest.raises(DataContractError) as caught:
        load_events(path, mapping=mapping, now=NOW)
    message = str(caught.value)
    assert "'when'" in message and "dayfirst" in message and "time_format" in message


def test_a_stated_day_order_or_format_parses(tmp_path: Path) -> None:
    text = HEADER + "01/12/2010 10:00,c1,,x,,\n02/11/2010 09:05,c2,,x,,\n"
    path = write(tmp_path, text)
    expected = [
        pd.Timestamp("2010-12-01 10:00", tz="UTC"),
        pd.Timestamp("2010-11-02 09:05", tz="UTC"),
    ]
    for spec in ({"dayfirst": True}, {"time_format": "%d/%m/%Y %H:%M"}):
        result = load_events(path, mapping=parse_mapping(spec), now=NOW)
        assert result.frame.set_index("cookie_id")["event_time"].sort_index().tolist() == expected
    month_first = load_events(path, mapping=parse_mapping({"dayfirst": False}), now=NOW)
    assert month_first.frame.set_index("cookie_id")["event_time"]["c1"] == pd.Timestamp(
        "2010-01-12 10:00", tz="UTC"
    )


def test_a_stated_format_with_a_time_zone_for_naive_local_times(tmp_path: Path) -> None:
    text = HEADER + "01/07/2025 10:00,c1,,x,,\n2025-07-01T10:00:00Z,c2,,x,,\n"
    mapping = parse_mapping({"time_format": "%d/%m/%Y %H:%M", "timezone": "Europe/Paris"})
    result = load_events(write(tmp_path, text), mapping=mapping, now=NOW)
    assert_accounted(result)
    assert result.frame["event_time"].tolist() == [pd.Timestamp("2025-07-01 08:00", tz="UTC")]
    # a value not written the stated way is quarantined, never guessed at
    assert reasons(result) == {"c2": "invalid_event_time"}


def test_dates_are_read_one_way_for_the_whole_column(tmp_path: Path) -> None:
    """13/12 shows the column is day first: 01/12 is then 1 December, never 12 January."""
    text = HEADER + "01/12/2010 10:00,c1,,x,,\n13/12/2010 10:00,c2,,x,,\n12/13/2010 10:00,c3,,x,,\n"
    with pytest.raises(DataContractError, match="day first in some rows"):
        load_events(write(tmp_path, text), now=NOW)
    text = HEADER + "01/12/2010 10:00,c1,,x,,\n13/12/2010 10:00,c2,,x,,\n"
    times = load_events(write(tmp_path, text), now=NOW).frame.set_index("cookie_id")["event_time"]
    assert times["c1"] == pd.Timestamp("2010-12-01 10:00", tz="UTC")
    assert times["c2"] == pd.Timestamp("2010-12-13 10:00", tz="UTC")


def test_a_later_batch_follows_the_order_the_first_batch_showed(tmp_path: Path) -> None:
    lines = ["13/12/2010 10:00,c0,,x,,\n"] + [
        f"0{i % 9 + 1}/12/2010 10:00,c{i},,x,,\n" for i in range(1, 5)
    ]
    lines.append("12/25/2010 10:00,c-month-first,,x,,\n")  # contradicts the first batch
    path = write(tmp_path, HEADER + "".join(lines))
    from dmp_ml import _readers

    original = _readers._CSV_BLOCK_BYTES
    _readers._CSV_BLOCK_BYTES = 64  # a few lines per batch
    try:
        result = load_events(path, now=NOW)
    finally:
        _readers._CSV_BLOCK_BYTES = original
    assert_accounted(result)
    assert (result.frame["event_time"].dt.month == 12).all()
    assert reasons(result) == {"c-month-first": "invalid_event_time"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"time_format": "%Q/%d"}, "strptime"),
        ({"time_format": "%d/%m %H:%M"}, "year"),
        ({"dayfirst": "yes"}, "true or false"),
        ({"time_unit": "minutes"}, "time_unit"),
        ({"dayfirst": True, "time_format": "%d/%m/%Y"}, "only one"),
    ],
)
def test_bad_time_keys_name_the_problem(spec: dict, message: str) -> None:
    with pytest.raises(MappingError, match=message):
        parse_mapping(spec)


@pytest.mark.skipif(not RETAIL.exists(), reason="Online Retail file not present")
def test_online_retail_mapping_states_its_format_and_parses_the_csv_form(tmp_path: Path) -> None:
    mapping = load_mapping(RETAIL_MAPPING)
    assert mapping.time_format == "%m/%d/%Y %H:%M"
    sample = pq.read_table(RETAIL).slice(0, 3000).to_pandas()
    assert pd.api.types.is_datetime64_any_dtype(sample["InvoiceDate"])  # format: documentation
    from_parquet = load_events(RETAIL, mapping=mapping).frame
    as_csv = sample.assign(InvoiceDate=sample["InvoiceDate"].dt.strftime("%m/%d/%Y %H:%M"))
    as_csv.to_csv(tmp_path / "retail.csv", index=False)
    from_csv = load_events(tmp_path / "retail.csv", mapping=mapping).frame
    first = from_parquet[from_parquet["event_time"] <= from_csv["event_time"].max()]
    assert from_csv["event_time"].min() == pd.Timestamp("2010-12-01 08:26", tz="UTC")
    assert set(from_csv["event_time"]) <= set(first["event_time"])


# ------------------------------------------------------------------ profiles and consent


def test_profiles_and_consent_take_a_mapping(tmp_path: Path) -> None:
    profiles = write(
        tmp_path,
        "CustomerID,TZ,Tier,Spend\n17850.0,Europe/London,gold,12.5\n13047.0,,silver,inf\n",
        "profiles.csv",
    )
    mapping = parse_mapping(
        {"rename": {"CustomerID": "profile_id", "TZ": "timezone"}, "integer_ids": ["profile_id"]}
    )
    loaded = load_profiles(profiles, mapping=mapping)
    assert loaded.frame["profile_id"].tolist() == ["17850", "13047"]
    assert loaded.frame["timezone"].tolist()[0] == "Europe/London"
    assert np.isnan(loaded.frame["Spend"].iloc[1])  # inf attribute: missing, and said so
    assert loaded.report.warnings == {"non_finite_Spend_set_to_missing": 1}

    consent = write(
        tmp_path,
        "Customer,Purpose,OptIn,Changed\n17850,marketing,yes,01/12/2010 10:00\n"
        "13047,marketing,no,02/11/2010 09:00\n",
        "consent.csv",
    )
    rename = {"Customer": "profile_id", "Purpose": "purpose", "OptIn": "granted"}
    rename["Changed"] = "updated_at"
    with pytest.raises(DataContractError, match="'Changed'"):
        load_consent(consent, mapping=parse_mapping({"rename": rename}))
    stated = parse_mapping({"rename": rename, "dayfirst": True})
    records = load_consent(consent, mapping=stated).frame.set_index("profile_id")
    assert records.loc["17850", "updated_at"] == pd.Timestamp("2010-12-01 10:00", tz="UTC")
    assert not records.loc["13047", "granted"]


def test_the_cli_reads_profiles_and_consent_through_their_mappings(tmp_path: Path) -> None:
    import subprocess
    import sys

    events = write(
        tmp_path,
        "When,Customer,What\n"
        + "".join(f"0{d}/12/2025 10:00,{c},purchase\n" for d in (1, 2, 3) for c in ("A1", "B2"))
        + "13/12/2025 10:00,A1,page_view\n",
        "events.csv",
    )
    (tmp_path / "events.yaml").write_text(
        "rename: {When: event_time, Customer: profile_id, What: event_type}\n"
    )
    profiles = write(tmp_path, "Customer,Zone,Tier\nA1,Europe/Paris,gold\nB2,,silver\n", "p.csv")
    (tmp_path / "profiles.yaml").write_text("rename: {Customer: profile_id, Zone: timezone}\n")
    consent = write(tmp_path, "Customer,Why,Ok,At\nB2,marketing,no,01/11/2025 09:00\n", "c.csv")
    (tmp_path / "consent.yaml").write_text(
        "rename: {Customer: profile_id, Why: purpose, Ok: granted, At: updated_at}\n"
        "time_format: '%d/%m/%Y %H:%M'\n"
    )
    out = tmp_path / "features.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "dmp_ml.cli", "features", "--events", str(events)]
        + ["--mapping", str(tmp_path / "events.yaml"), "--as-of", "2025-12-20"]
        + ["--profiles", str(profiles), "--profiles-mapping", str(tmp_path / "profiles.yaml")]
        + ["--consent", str(consent), "--consent-mapping", str(tmp_path / "consent.yaml")]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out)
    ids = set(table["profile_id"] if "profile_id" in table.columns else table.index)
    assert ids == {"A1"}  # B2 withdrew consent (a day-first date, stated in its mapping)
    assert table["timezone"].tolist() == ["Europe/Paris"]  # Zone, renamed by its mapping
    assert table["Tier"].tolist() == ["gold"]
    assert table["event_count_total"].tolist() == [4]  # 13/12: the events column is day first


def test_an_oversized_parquet_field_quarantines_its_row_only(tmp_path: Path) -> None:
    """Parquet text is read as dictionaries: the length limit still applies row by row."""
    long = "y" * 100
    frame = pd.DataFrame(
        {
            "event_time": ["2026-01-01T10:00:00Z"] * 6,
            "cookie_id": ["c1", long, "c2", "c1", "c3", long],
            "event_type": ["page_view", "purchase", "page_view", long, "purchase", "page_view"],
        }
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False, row_group_size=3)
    result = load_events(path, None, ContractSettings(max_field_bytes=64, chunk_rows=2), now=NOW)
    assert_accounted(result)
    assert result.report.quarantined_by_reason == {"field_too_large": 3}
    assert sorted(result.quarantine["row_number"]) == [2, 4, 6]
    assert result.frame["cookie_id"].tolist() == ["c1", "c2", "c3"]
