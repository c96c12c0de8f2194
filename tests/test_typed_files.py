"""The typing rules of pipeline/typed_files.py on small CSVs and on real CMS files, read back with DuckDB and
compared cell by cell with the CSV; the start-up check without DuckDB. Pure: no servers."""

import csv
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline import preflight, typed_version
from pipeline.naming import normalize_header
from pipeline.settings import AnalyticsSettings
from tests.test_changes import FACILITY, body, facility_rows, replace_cell
from tests.typed_support import needs_duckdb

SENTINELS = AnalyticsSettings().sentinels
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "cms-sample" / "csv"


def typed(tmp_path: Path, data: bytes) -> tuple[dict[str, dict], list[tuple]]:
    """(column -> its dictionary entry, the Parquet file's rows) of a CSV whose header is already snake_case."""
    import duckdb

    from pipeline.typed_files import write_parquet

    source, parquet = tmp_path / "normalized.csv", tmp_path / "normalized.parquet"
    source.write_bytes(data)
    header = next(csv.reader([data.decode().splitlines()[0]]))
    columns = write_parquet(source, parquet, header, SENTINELS)
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT * FROM read_parquet('{parquet}')").fetchall()
    return {c["column"]: c for c in columns}, rows


def read_back(value: str, column: dict):
    """A CSV cell as the typed file must hold it."""
    if value == "" or value in SENTINELS:
        return None
    kind = column["type"].split("(")[0]
    if kind == "BIGINT":
        return int(value)
    if kind == "DECIMAL":
        return Decimal(value)
    if kind == "DATE":
        return datetime.strptime(value, column["read_from"]).date()
    if kind == "BOOLEAN":
        return value == column["read_from"].split("/")[0]
    return value


@needs_duckdb
def test_zip_codes_facility_ids_and_phone_numbers_stay_text_with_their_leading_zeros(tmp_path):
    columns, rows = typed(tmp_path, body(FACILITY, facility_rows()))
    assert {name: columns[name]["type"] for name in ("facility_id", "zip_code", "telephone_number", "measure_id")} == (
        dict.fromkeys(("facility_id", "zip_code", "telephone_number", "measure_id"), "VARCHAR")
    )
    assert [row[5] for row in rows[3:6]] == ["06106"] * 3 and rows[3][0] == "070002"


@needs_duckdb
def test_not_available_in_a_numeric_column_is_null_and_the_column_stays_numeric(tmp_path):
    rows = facility_rows()
    rows[1] = replace_cell(rows[1], 10, "Not Available")
    rows[2] = replace_cell(rows[2], 10, "N/A")
    columns, typed_rows = typed(tmp_path, body(FACILITY, rows))
    assert columns["score"]["type"] == "BIGINT" and columns["score"]["nulls"] == 2
    assert [row[10] for row in typed_rows[:4]] == [10, None, None, 13]
    assert columns["start_date"]["type"] == "DATE" and columns["start_date"]["min"] == "2024-01-01"


@needs_duckdb
def test_one_value_that_is_no_number_keeps_the_whole_column_text(tmp_path):
    rows = facility_rows()
    rows[1] = replace_cell(rows[1], 10, "Too Few to Report")
    columns, typed_rows = typed(tmp_path, body(FACILITY, rows))
    assert columns["score"]["type"] == "VARCHAR"
    assert [row[10] for row in typed_rows[:3]] == ["10", "Too Few to Report", "12"]


@needs_duckdb
def test_decimals_booleans_dates_and_leading_zeros(tmp_path):
    data = body(
        "rate,flag,yes_no,day,iso_day,padded,big,blank",
        ["0.25,Y,Yes,01/31/2024,2024-01-31,007,12345678901234567890,", "-12.5,N,No,02/29/2024,2024-02-29,10,1,"],
    )
    columns, rows = typed(tmp_path, data)
    assert {name: (c["type"], c["read_from"]) for name, c in columns.items()} == {
        "rate": ("DECIMAL(4,2)", ""),
        "flag": ("BOOLEAN", "Y/N"),
        "yes_no": ("BOOLEAN", "Yes/No"),
        "day": ("DATE", "%m/%d/%Y"),
        "iso_day": ("DATE", "%Y-%m-%d"),
        "padded": ("VARCHAR", ""),  # 007 would lose its zeros
        "big": ("DECIMAL(20,0)", ""),  # beyond BIGINT
        "blank": ("VARCHAR", ""),  # nothing but NULLs: no type to find
    }
    assert rows[0][:2] == (Decimal("0.25"), True) and rows[1][5] == "10" and rows[0][6] == Decimal(12345678901234567890)


@needs_duckdb
@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"needs the real CMS samples in {SAMPLES}")
@pytest.mark.parametrize("identifier", ["xubh-q36u", "48nr-hqxx", "97xg-v3wv", "tf3h-mrrs"])
def test_a_real_file_read_back_from_its_typed_file_equals_the_csv_cell_by_cell(tmp_path, identifier):
    raw = (SAMPLES / f"{identifier}.csv").read_bytes()
    first, rest = raw.split(b"\n", 1)  # the header replaced as the job does it, the line ending kept
    header = normalize_header(next(csv.reader([first.decode().rstrip("\r")])))
    columns, rows = typed(tmp_path, ",".join(header).encode() + (b"\r\n" if first.endswith(b"\r") else b"\n") + rest)
    with open(tmp_path / "normalized.csv", newline="", encoding="utf-8") as source:
        cells = list(csv.reader(source))[1:]
    assert len(rows) == len(cells)
    entries = [columns[name] for name in header]
    assert any(entry["type"] != "VARCHAR" for entry in entries)
    for row, csv_row in zip(rows, cells, strict=True):
        assert list(row) == [read_back(value, entry) for value, entry in zip(csv_row, entries, strict=True)]


def test_parquet_on_without_duckdb_stops_the_command_naming_the_extra(monkeypatch, luigi_setting):
    monkeypatch.setitem(sys.modules, "duckdb", None)  # as without the extra: `import duckdb` raises ImportError
    assert preflight.analytics_message(["luigi", "HospitalsDaily"]) is None  # off by default: not even asked
    luigi_setting("analytics", "parquet", "true")
    message = preflight.analytics_message(["luigi", "HospitalsDaily"])
    assert message == f"pipeline: {typed_version.MISSING_EXTRA}"
    assert "pip install -e '.[analytics]'" in message


def test_view_names_are_sql_names_made_from_the_latest_file_names():
    from pipeline.latest_typed import view_name

    assert view_name("48nr-hqxx.csv") == "ds_48nr_hqxx"
    assert view_name("abcd-0001__part_a-3c5af74f.csv") == "ds_abcd_0001__part_a_3c5af74f"


@needs_duckdb
def test_a_database_without_typed_files_still_opens_and_lists_none(tmp_path):
    import duckdb

    from pipeline.typed_files import write_database

    write_database(tmp_path / "hospitals.duckdb", [], tmp_path / "work")
    with duckdb.connect(str(tmp_path / "hospitals.duckdb"), read_only=True) as con:
        assert con.execute("SELECT * FROM datasets").fetchall() == []
