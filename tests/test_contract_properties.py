"""Property: whatever rows a feed sends, the loader accounts for every one of them.

Random rows (times in many spellings and out of range, values including inf and huge numbers,
ids with quotes, commas and control characters, bytes that are not UTF-8, random column sets)
are written as CSV or Parquet and loaded. Every row read is loaded or quarantined with a reason,
the rows read are the rows written, no exception escapes except the documented refusals (a
missing required column; numeric dates whose day order the mapping does not state), and what
loads is usable (a time in range, a finite value).
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmp_ml.contract import load_events
from dmp_ml.errors import DataContractError
from dmp_ml.mapping import parse_mapping
from dmp_ml.time_columns import EARLIEST_TIME

NOW = pd.Timestamp("2026-06-01 12:00", tz="UTC")
OPTIONAL = ["cookie_id", "profile_id", "channel", "source", "campaign_id", "category", "value"]
NUMERIC_DATE = re.compile(r"^\d{1,2}/\d{1,2}/\d{4}")

instants = st.datetimes(
    min_value=pd.Timestamp("0001-01-02").to_pydatetime(),
    max_value=pd.Timestamp("9999-12-30").to_pydatetime(),
)
recent = st.datetimes(
    min_value=pd.Timestamp("2020-01-01").to_pydatetime(),
    max_value=pd.Timestamp("2026-06-01").to_pydatetime(),
)
times = st.one_of(
    recent.map(lambda t: t.isoformat()),
    recent.map(lambda t: t.isoformat() + "Z"),
    recent.map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S+05:30")),
    instants.map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")),
    recent.map(lambda t: t.strftime("%d/%m/%Y %H:%M")),
    recent.map(lambda t: str(int(t.timestamp()))),
    st.sampled_from(["", "not a time", "2026-02-30 10:00", "24:61", "NaT", "0"]),
)
text = st.text(
    alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
    max_size=12,
)
ids = st.one_of(
    st.from_regex(r"[a-z]{1,3}[0-9]{1,4}", fullmatch=True),
    st.sampled_from(['=HYPERLINK("x")', "+1+1", "-2+3", "@SUM(1+1)", '"quoted"', "a,b"]),
    text,
)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", "inf", "-inf", "1e400", "1e308", "abc", "12,5"]),
)
event_types = st.one_of(st.sampled_from(["page_view", "purchase", "email_open", ""]), text)
sources = st.sampled_from(["", "first_party", "Third_Party", "fourth_party"])


@st.composite
def feeds(draw: st.DrawFn) -> tuple[list[str], list[dict[str, str]]]:
    columns = ["event_time", "event_type"] + draw(
        st.lists(st.sampled_from(OPTIONAL), unique=True, max_size=len(OPTIONAL))
    )
    if draw(st.integers(0, 9)) == 0:  # sometimes a required column is missing
        columns.remove(draw(st.sampled_from(["event_time", "event_type"])))
    field = {
        "event_time": times,
        "event_type": event_types,
        "cookie_id": ids,
        "profile_id": ids,
        "channel": text,
        "source": sources,
        "campaign_id": ids,
        "category": text,
        "value": values,
    }
    rows = draw(
        st.lists(st.fixed_dictionaries({c: field[c] for c in columns}), min_size=1, max_size=25)
    )
    return columns, rows


def _csv_bytes(
    columns: list[str], rows: list[dict[str, str]], latin1_rows: set[int], bom: bool
) -> bytes:
    out = io.BytesIO()
    out.write((b"\xef\xbb\xbf" if bom else b"") + ",".join(columns).encode() + b"\n")
    for i, row in enumerate(rows):
        line = io.StringIO()
        csv.writer(line, lineterminator="").writerow([row[c] for c in columns])
        encoded = line.getvalue().encode("utf-8")
        if i in latin1_rows:  # a byte that is not UTF-8
            encoded = b"\xff" + encoded
        out.write(encoded + b"\n")
    return out.getvalue()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    feed=feeds(),
    as_parquet=st.booleans(),
    dayfirst=st.booleans(),
    latin1=st.sets(st.integers(0, 24), max_size=3),
    bom=st.booleans(),
)
def test_every_row_is_loaded_or_quarantined_with_a_reason(
    feed: tuple[list[str], list[dict[str, str]]],
    as_parquet: bool,
    dayfirst: bool,
    latin1: set[int],
    bom: bool,
) -> None:
    columns, rows = feed
    mapping = parse_mapping({"dayfirst": True}) if dayfirst else None
    with tempfile.TemporaryDirectory() as tmp:
        if as_parquet:
            path = Path(tmp) / "events.parquet"
            table = {c: pa.array([r[c] or None for r in rows], pa.string()) for c in columns}
            pq.write_table(pa.table(table), path)
        else:
            path = Path(tmp) / "events.csv"
            path.write_bytes(_csv_bytes(columns, rows, latin1, bom))
        try:
            result = load_events(path, mapping=mapping, now=NOW)
        except DataContractError as exc:
            message = str(exc)
            missing = {"event_time", "event_type"} - set(columns)
            no_id = not {"cookie_id", "profile_id"} & set(columns)
            undecided = not dayfirst and any(
                NUMERIC_DATE.match(r.get("event_time", "") or "") for r in rows
            )
            assert (
                (missing and "missing required column" in message)
                or (no_id and "cookie_id or profile_id" in message)
                or (undecided and "day first" in message)
            ), message
            return
    report = result.report
    assert report.rows_read == len(rows)
    assert report.rows_read == report.rows_loaded + report.rows_quarantined
    assert len(result.frame) == report.rows_loaded
    assert len(result.quarantine) == report.rows_quarantined
    assert sum(report.quarantined_by_reason.values()) == report.rows_quarantined
    assert result.quarantine["reason"].notna().all()
    assert (result.quarantine["reason"].str.len() > 0).all()
    frame = result.frame
    if len(frame):
        assert frame["event_time"].notna().all()
        assert frame["event_time"].min() >= EARLIEST_TIME
        assert frame["event_time"].max() <= NOW + pd.Timedelta(hours=1)
        assert np.isfinite(frame["value"].dropna().to_numpy(np.float64)).all()
        assert (frame["cookie_id"].notna() | frame["profile_id"].notna()).all()
