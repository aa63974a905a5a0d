"""Column mappings as a user writes them: renames, derived values, dropped rows with reasons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dmp_ml.contract import load_events
from dmp_ml.errors import MappingError
from dmp_ml.mapping import load_mapping, packaged_mappings, parse_mapping

NOW = pd.Timestamp("2026-01-01", tz="UTC")
RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
RETAIL_ROWS = [
    "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom",
    "536366,22633,HAND WARMER,2,6/1/2011 10:00,1.85,13047.0,United Kingdom",
    "C536379,D,Discount,-1,12/1/2010 9:41,27.5,14527.0,United Kingdom",
    "C536383,35004C,SET OF 3 TINS,-1,12/1/2010 9:49,4.65,15311.0,United Kingdom",
    "536414,22139,lost in the warehouse,-38,12/1/2010 11:52,0,,United Kingdom",
    "536415,22140,free sample,3,12/1/2010 11:53,0,17850.0,United Kingdom",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def retail_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "retail.csv", "\n".join([RETAIL_HEADER, *RETAIL_ROWS]) + "\n")


def test_a_packaged_mapping_is_found_by_name() -> None:
    assert "online_retail" in packaged_mappings()
    mapping = load_mapping("online_retail")
    assert mapping.name == "online_retail"
    assert mapping.timezone == "Europe/London"
    assert mapping.rename["CustomerID"] == "profile_id"
    assert load_mapping("online_retail.yaml") == mapping


def test_an_unknown_mapping_name_lists_the_packaged_ones() -> None:
    with pytest.raises(
        MappingError, match=r"mapping file not found: online_retial .*online_retail"
    ):
        load_mapping("online_retial")


def test_the_packaged_retail_mapping_renames_derives_and_drops_with_counted_reasons(
    tmp_path: Path,
) -> None:
    result = load_events(retail_csv(tmp_path), mapping="online_retail", now=NOW)
    report = result.report
    assert report.rows_read == 6
    assert report.rows_read == report.rows_loaded + report.rows_quarantined
    # the first matching rule gives the reason: a cancelled line with a negative quantity
    # is a cancelled invoice
    assert report.quarantined_by_reason == {
        "cancelled_invoice": 2,
        "non_positive_quantity": 1,
        "non_positive_price": 1,
    }
    assert sorted(result.quarantine["reason"]) == sorted(
        ["cancelled_invoice", "cancelled_invoice", "non_positive_quantity", "non_positive_price"]
    )
    events = result.frame.sort_values("event_time", ignore_index=True)
    assert list(events["profile_id"]) == ["17850", "13047"]  # 17850.0 read as an integer id
    assert list(events["category"]) == ["85123A", "22633"]  # renamed from StockCode
    assert set(events["event_type"]) == {"purchase"}  # a constant
    assert events["value"].tolist() == pytest.approx([6 * 2.55, 2 * 1.85])  # derived
    # naive times are London time: GMT in December, BST (UTC+1) in June
    assert events["event_time"].tolist() == [
        pd.Timestamp("2010-12-01 08:26", tz="UTC"),
        pd.Timestamp("2011-06-01 09:00", tz="UTC"),
    ]


def test_a_mapping_file_of_ones_own_loads_from_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path / "shop.yaml",
        "name: shop\n"
        "rename: {ts: event_time, customer: profile_id, kind: event_type}\n"
        "derive:\n  value: {multiply: [qty, price]}\n"
        "drop:\n  - {column: kind, op: in, value: [test, probe], reason: test_traffic}\n"
        "  - {column: customer, op: missing, reason: no_customer}\n",
    )
    csv = write(
        tmp_path / "shop.csv",
        "ts,customer,kind,qty,price\n"
        "2025-03-01T10:00:00Z,a1,purchase,2,5.0\n"
        "2025-03-01T11:00:00Z,a2,probe,1,1.0\n"
        "2025-03-01T12:00:00Z,,purchase,1,1.0\n"
        "2025-03-01T13:00:00Z,a3,page_view,,\n",
    )
    result = load_events(csv, mapping=path, now=NOW)
    assert result.report.quarantined_by_reason == {"test_traffic": 1, "no_customer": 1}
    frame = result.frame.sort_values("event_time", ignore_index=True)
    assert list(frame["profile_id"]) == ["a1", "a3"]
    assert frame["value"].iloc[0] == 10.0
    assert pd.isna(frame["value"].iloc[1])  # nothing to multiply: no value, row kept


def test_a_mapping_needing_columns_the_file_lacks_names_them(tmp_path: Path) -> None:
    csv = write(tmp_path / "x.csv", "when,who\n2025-01-01T00:00:00Z,a\n")
    with pytest.raises(MappingError, match=r"needs columns \['CustomerID', 'InvoiceDate'"):
        load_events(csv, mapping="online_retail", now=NOW)


def test_a_mapping_file_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "rename: {a: b\n")
    with pytest.raises(MappingError, match=f"mapping {path} is not valid YAML"):
        load_mapping(path)
    listed = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(MappingError, match="must hold a mapping at the top level"):
        load_mapping(listed)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"renames": {"a": "b"}}, r"unknown keys \['renames'\]"),
        ({"timezone": "Mars/Olympus"}, "'Mars/Olympus' is not an IANA time zone"),
        ({"derive": {"value": {"add": ["a", "b"]}}}, r"derive.value must be \{multiply"),
        ({"drop": [{"column": "a", "op": "~", "reason": "x"}]}, "drop\\[0\\] has unknown op '~'"),
        ({"drop": [{"column": "a", "op": "=="}]}, r"drop\[0\] needs column, op, value and reason"),
        ({"time_format": "%d/%m/%Y", "dayfirst": True}, "state only one of"),
        ({"time_format": "%d/%m %H:%M"}, "needs at least the year"),
        ({"time_unit": "minutes"}, "time_unit must be one of"),
    ],
)
def test_a_bad_mapping_key_is_named(data: dict, expected: str) -> None:
    with pytest.raises(MappingError, match=expected) as caught:
        parse_mapping(data, source="shop.yaml")
    assert str(caught.value).startswith("shop.yaml")


def test_a_rename_onto_an_existing_column_is_refused() -> None:
    mapping = parse_mapping({"rename": {"ts": "event_time"}})
    raw = pd.DataFrame({"ts": ["2025-01-01"], "event_time": ["2025-01-02"]})
    with pytest.raises(MappingError, match="two columns the name 'event_time'"):
        mapping.apply(raw)
