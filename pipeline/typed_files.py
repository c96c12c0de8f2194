"""Typing a normalized CSV with DuckDB: which SQL type each column takes, the Parquet file with those types, and
the views of latest/hospitals.duckdb. Local paths in, no Storage, no Luigi; imported only where the typed files
are wanted (`[analytics] parquet = true`), so the job without the `analytics` extra never imports DuckDB.

The rules (docs/data.md, "The typed files"): every value is read as text, the configured sentinels ("Not
Available", ...) and empty fields are NULL, and a column takes a type only if every other value reads back as
exactly that type: integers without leading zeros, decimals, MM/DD/YYYY or YYYY-MM-DD dates, Yes/No or Y/N
booleans. One value that does not fit keeps the whole column text, so no value is ever lost. Identifiers stay
text whatever they look like: a column whose name has one of IDENTIFIER_WORDS as a word (ZIP codes, facility
IDs, CCNs, NPIs, phone numbers, FIPS and county codes, measure IDs, footnote codes)."""

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

TEXT = "VARCHAR"
IDENTIFIER_WORDS = (
    "id",
    "ids",
    "ccn",
    "npi",
    "zip",
    "phone",
    "telephone",
    "fax",
    "fips",
    "county",
    "code",
    "codes",
    "msa",
    "footnote",
    "footnotes",
)
_IDENTIFIER = re.compile(rf"(^|_)({'|'.join(IDENTIFIER_WORDS)})(_|$)")
_INTEGER = r"-?(0|[1-9][0-9]{0,17})"  # no leading zeros (they would be lost), within BIGINT
_DECIMAL = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?"
_US_DATE, _ISO_DATE = r"[0-9]{2}/[0-9]{2}/[0-9]{4}", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
BOOLEANS = (("Yes", "No"), ("Y", "N"))
MAX_PRECISION = 38  # DuckDB's widest DECIMAL
BATCH = 4  # columns per query


@dataclass(frozen=True)
class ColumnType:
    sql: str  # the Parquet column's type: BIGINT, DECIMAL(p,s), DATE, BOOLEAN or VARCHAR
    read_from: str = ""  # the text form it was read from, where there is a choice: a date format, "Yes/No"

    def cast(self, value: str) -> str:
        """The SQL expression turning the text `value` (NULL for a sentinel) into this type."""
        if self.sql == "DATE":
            return f"CAST(strptime({value}, '{self.read_from}') AS DATE)"
        if self.sql == "BOOLEAN":
            return f"({value} = '{self.read_from.split('/')[0]}')"
        return value if self.sql == TEXT else f"CAST({value} AS {self.sql})"


def is_identifier(column: str) -> bool:
    """Whether a normalized column name says it holds codes, which stay text (leading zeros kept)."""
    return bool(_IDENTIFIER.search(column))


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(spill: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to `spill` (not to ./.tmp, its default) and shares the machine with the
    job's other workers: with 128 MB, typing the largest file (445k rows) peaks at about 230 MiB and takes 25% longer
    than with 1 GB (460 MiB); docs/benchmark.md."""
    con = duckdb.connect(config={"threads": 2, "memory_limit": "128MB"})
    con.execute(f"SET temp_directory = {literal(str(spill))}")
    return con


def _source(csv_path: Path, columns: list[str], null_values: list[str]) -> str:
    """The CSV as text columns, sentinels NULL. The dialect is fixed (the job wrote the header; CMS files are
    RFC 4180), so no sniffing guess can drop or shift a column."""
    struct = ", ".join(f"{literal(c)}: 'VARCHAR'" for c in columns)
    sentinels = ", ".join(literal(v) for v in null_values) or "NULL"
    cleaned = ", ".join(f"CASE WHEN {q} IN ({sentinels}) THEN NULL ELSE {q} END AS {q}" for q in map(quote, columns))
    reader = (
        f"read_csv({literal(str(csv_path))}, header = true, columns = {{{struct}}}, delim = ',', quote = '\"', "
        "escape = '\"', auto_detect = false)"
    )
    return f"SELECT {cleaned} FROM {reader}"


def _measures(column: str) -> list[str]:
    v = quote(column)
    decimal = f"FILTER (regexp_full_match({v}, '{_DECIMAL}'))"
    return [
        f"count({v})",
        f"count({v}) FILTER (regexp_full_match({v}, '{_INTEGER}'))",
        f"count({v}) {decimal}",
        f"max(length(split_part({v}, '.', 1)) - starts_with({v}, '-')::INT) {decimal}",  # digits before the point
        f"max(length(split_part({v}, '.', 2))) {decimal}",  # and after it
        f"count({v}) FILTER (regexp_full_match({v}, '{_US_DATE}') AND try_strptime({v}, '%m/%d/%Y') IS NOT NULL)",
        f"count({v}) FILTER (regexp_full_match({v}, '{_ISO_DATE}') AND try_strptime({v}, '%Y-%m-%d') IS NOT NULL)",
        *(f"count({v}) FILTER ({v} IN ({literal(yes)}, {literal(no)}))" for yes, no in BOOLEANS),
    ]


def _decide(values: int, integers: int, decimals: int, digits, scale, us, iso, *booleans: int) -> ColumnType:
    if values == 0:  # nothing but NULLs: no evidence of any type
        return ColumnType(TEXT)
    if integers == values:
        return ColumnType("BIGINT")
    for (yes, no), count in zip(BOOLEANS, booleans, strict=True):
        if count == values:
            return ColumnType("BOOLEAN", f"{yes}/{no}")
    if decimals == values and 0 < digits + scale <= MAX_PRECISION:
        return ColumnType(f"DECIMAL({max(digits + scale, 1)},{scale})")
    if us == values:
        return ColumnType("DATE", "%m/%d/%Y")
    if iso == values:
        return ColumnType("DATE", "%Y-%m-%d")
    return ColumnType(TEXT)


def _batches(columns: list[str]) -> list[list[str]]:
    # DuckDB plans a query of hundreds of aggregates in more than linear time: a few columns per query is
    # faster (the whole sample catalog: 17.7 s typed in one query per file, 8.2 s by 4 columns).
    return [columns[i : i + BATCH] for i in range(0, len(columns), BATCH)]


def _aggregate(con: duckdb.DuckDBPyConnection, table: str, columns: list[str], measures) -> list[tuple]:
    """Per column, the values of `measures(column)` over `table`."""
    found = []
    for batch in _batches(columns):
        row = con.execute(f"SELECT {', '.join(m for c in batch for m in measures(c))} FROM {table}").fetchone()
        assert row is not None
        width = len(row) // len(batch)
        found += [row[i : i + width] for i in range(0, len(row), width)]
    return found


def column_types(con: duckdb.DuckDBPyConnection, table: str, columns: list[str]) -> list[ColumnType]:
    """Each column's type by the rules above, from the text columns of `table`."""
    measured = [c for c in columns if not is_identifier(c)]
    found = {
        c: _decide(*(x or 0 for x in row))
        for c, row in zip(measured, _aggregate(con, table, measured, _measures), strict=True)
    }
    return [found.get(c, ColumnType(TEXT)) for c in columns]


def write_parquet(csv_path: Path, parquet_path: Path, columns: list[str], null_values: list[str]) -> list[dict]:
    """The typed Parquet file of a normalized CSV (UTF-8, the job's header) at `parquet_path`, in the CSV's row
    order; returns per column {column, type, read_from, nulls, min, max}, as read back from the file written.
    Raises duckdb.Error (or OSError) when it cannot be made."""
    con = connect(parquet_path.with_name(parquet_path.name + ".spill"))
    try:
        # Read once (DuckDB spills what exceeds its memory limit), then measured and written from the table.
        con.execute(f"CREATE TEMP TABLE text_values AS {_source(csv_path, columns, null_values)}")
        types = column_types(con, "text_values", columns)
        typed = ", ".join(f"{t.cast(quote(c))} AS {quote(c)}" for c, t in zip(columns, types, strict=True))
        con.execute(
            f"COPY (SELECT {typed} FROM text_values) TO {literal(str(parquet_path))} "
            "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)"
        )
        written = f"read_parquet({literal(str(parquet_path))})"
        stats = _aggregate(con, written, columns, lambda c: [f"count(*) - count({quote(c)})", *_range(quote(c))])
    finally:
        con.close()
    return [
        {"column": c, "type": t.sql, "read_from": t.read_from, "nulls": nulls, "min": low, "max": high}
        for c, t, (nulls, low, high) in zip(columns, types, stats, strict=True)
    ]


def _range(column: str) -> list[str]:
    return [f"min({column})::VARCHAR", f"max({column})::VARCHAR"]


def write_database(db_path: Path, views: list[dict], work: Path) -> None:
    """A DuckDB database at `db_path` (a new file) with a view per typed file: {view, path (relative to the data
    folder, e.g. latest/x.parquet), columns: [{column, type}], identifier, title, rows}, and a `datasets` view
    listing them. A view is bound where it is made, so each is made over an empty file of the same columns laid
    out under `work`; the database then reads the real files, from wherever the query runs."""
    con = duckdb.connect(str(db_path))
    try:
        con.execute(f"SET file_search_path = {literal(str(work))}")
        for view in views:
            stub = work / view["path"]
            stub.parent.mkdir(parents=True, exist_ok=True)
            typed = ", ".join(f"CAST(NULL AS {c['type']}) AS {quote(c['column'])}" for c in view["columns"])
            con.execute(f"COPY (SELECT {typed} WHERE false) TO {literal(str(stub))} (FORMAT parquet)")
            con.execute(f"CREATE VIEW {quote(view['view'])} AS SELECT * FROM read_parquet({literal(view['path'])})")
        listing = " UNION ALL ".join(
            f"SELECT {', '.join(literal(str(v[k])) for k in ('view', 'identifier', 'title', 'path'))}, {int(v['rows'])}"
            for v in views
        )
        no_rows = "SELECT '', '', '', '', 0 WHERE false"
        con.execute(f"CREATE VIEW datasets(view_name, identifier, title, file, rows) AS {listing or no_rows}")
        con.execute("CHECKPOINT")
    finally:
        con.close()
