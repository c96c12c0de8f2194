"""The typed files through the real Luigi graph on the loopback site, on both storages: each new version's
normalized.parquet and dictionary.json, latest/<id>.parquet and latest/hospitals.duckdb queried from the data
folder; made again without a download when a kill or power cut lost them, or the deep check finds them damaged; a
NOTE, never a failure, when they cannot be made; deleted with their version by retention; nothing at all with
`[analytics] parquet = false`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Site, by_identifier, run_daily
from tests.test_change_report import NEW_ROWS, OLD_ROWS, csv_downloads, entry_notes, flip, folder_of
from tests.test_changes import FACILITY, body
from tests.test_power_cut import halve, zero
from tests.typed_support import needs_duckdb

pytestmark = [pytest.mark.integration, needs_duckdb]

TYPED = ("normalized.parquet", "dictionary.json")


@pytest.fixture
def typed(luigi_setting):
    luigi_setting("analytics", "parquet", "true")


def first_version(site: Site, data, rows=OLD_ROWS) -> str:
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, rows)})
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["status"] == "downloaded" and entry_notes(report) == []
    return data.key(folder_of(entry))


def local_latest(data, tmp_path: Path) -> Path:
    """A folder holding latest/ as the data folder has it: the folder itself, or a copy of the bucket's latest/
    (what `aws s3 sync s3://bucket/prefix/latest latest` makes)."""
    if data.kind == "local":
        return data.root
    for key in data.listing("latest"):
        (tmp_path / "synced" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "synced" / key).write_bytes(data.read(key))
    return tmp_path / "synced"


def test_a_new_version_is_typed_and_latest_gets_its_parquet_and_a_database_to_query(
    site, data, typed, tmp_path, monkeypatch
):
    import duckdb

    rows = [OLD_ROWS[0].replace(",10,200,", ",Not Available,200,"), *OLD_ROWS[1:]]
    folder = first_version(site, data, rows)
    record = json.loads(data.read(f"{folder}/dictionary.json"))
    parquet = data.read(f"{folder}/normalized.parquet")
    assert record["parquet_bytes"] == len(parquet) and record["rows"] == 12
    types = {c["column"]: (c["type"], c["nulls"]) for c in record["columns"]}
    assert types["zip_code"] == ("VARCHAR", 0) and types["facility_id"] == ("VARCHAR", 0)
    assert types["score"] == ("BIGINT", 1) and types["sample"] == ("BIGINT", 0) and types["start_date"][0] == "DATE"
    assert data.read("latest/yv7e-xc69.parquet") == parquet
    manifest = json.loads(data.read("latest/latest.json"))
    assert manifest["datasets"][0]["parquet"]["view"] == "ds_yv7e_xc69"
    assert manifest["database"]["views"] == 1
    monkeypatch.chdir(local_latest(data, tmp_path))  # DuckDB reads the views' files from where it runs
    with duckdb.connect("latest/hospitals.duckdb", read_only=True) as con:
        found = con.execute("SELECT zip_code, score FROM ds_yv7e_xc69 WHERE state = 'CT' ORDER BY score").fetchall()
        assert found == [("06106", 13), ("06106", 14), ("06106", 15)]
        assert con.execute("SELECT count(*) FROM ds_yv7e_xc69 WHERE score IS NULL").fetchone() == (1,)
        assert con.execute("SELECT view_name, identifier, rows FROM datasets").fetchall() == [
            ("ds_yv7e_xc69", "yv7e-xc69", 12)
        ]


def test_a_refresh_replaces_latest_parquet_and_a_no_op_run_leaves_latest_alone(site, data, typed):
    first_version(site, data)
    database = data.read("latest/hospitals.duckdb")
    site.dataset("yv7e-xc69", "2025-10-01", {"Timely.csv": body(FACILITY, NEW_ROWS)}, upload=1700000999)
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry_notes(report) == []
    assert data.read("latest/yv7e-xc69.parquet") == data.read(f"{data.key(folder_of(entry))}/normalized.parquet")
    listing = {key: data.read(key) for key in data.listing("latest") if not key.endswith(".json")}
    assert len(listing["latest/hospitals.duckdb"]) == len(database)  # made again: a view over the same name
    site.server.clear()
    ok, report = run_daily(site, data.dir)
    assert ok and entry_notes(report) == [] and csv_downloads(site) == []
    assert {key: data.read(key) for key in listing} == listing


def lose(data, key: str) -> None:  # a kill between the Parquet file and its record
    data.delete(key)


# state -> (the file, what happens to it, the NOTE's problem); zero and halve are a power cut's (test_power_cut.py)
DAMAGE = {
    "killed before dictionary.json": ("dictionary.json", lose, "dictionary.json is missing"),
    "normalized.parquet zero-length": (
        "normalized.parquet",
        zero,
        "normalized.parquet has 0 bytes, dictionary.json says",
    ),
    "dictionary.json cut mid-JSON": ("dictionary.json", halve, "dictionary.json does not parse"),
}


@pytest.mark.parametrize(
    "state, data",
    [*((state, "local") for state in DAMAGE), ("killed before dictionary.json", "s3")],
    indirect=["data"],
)
def test_a_lost_or_damaged_typed_file_is_made_again_by_the_next_run_without_a_download(site, data, typed, state):
    folder = first_version(site, data)
    record = json.loads(data.read(f"{folder}/dictionary.json"))
    name, how, problem = DAMAGE[state]
    how(data, f"{folder}/{name}")
    site.server.clear()
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["status"] == "up_to_date" and csv_downloads(site) == []
    [note] = [note for note in entry_notes(report) if not note.startswith("latest/")]
    assert note.startswith(f"yv7e-xc69: {folder}: {problem}") and note.endswith("; typed file made again")
    # latest/'s hard link to the same file, cut short with it, is put back too
    put_back = f"latest/yv7e-xc69.parquet had 0 bytes, its version {record['parquet_bytes']:,}; put back"
    latest_notes = [note for note in entry_notes(report) if note.startswith("latest/")]
    assert latest_notes == ([put_back] if "zero" in state else [])
    assert json.loads(data.read(f"{folder}/dictionary.json"))["columns"] == record["columns"]
    assert (
        len(data.read(f"{folder}/normalized.parquet"))
        == json.loads(data.read(f"{folder}/dictionary.json"))["parquet_bytes"]
    )
    ok, report = run_daily(site, data.dir)
    assert ok and entry_notes(report) == []  # repaired for good


def test_a_typed_file_with_flipped_bytes_is_made_again_by_the_deep_check(site, data, typed):
    folder = first_version(site, data)
    flip(data, f"{folder}/normalized.parquet")
    ok, report = run_daily(site, data.dir)
    assert ok and entry_notes(report) == []  # the size is right: the daily check cannot see it
    site.server.clear()
    ok, report = run_daily(site, data.dir, deep_check=True)
    assert ok and csv_downloads(site) == []
    problem = "normalized.parquet does not match dictionary.json's sha256"
    assert f"yv7e-xc69: {folder}: {problem}; typed file made again" in entry_notes(report)
    record = json.loads(data.read(f"{folder}/dictionary.json"))
    assert len(data.read(f"{folder}/normalized.parquet")) == record["parquet_bytes"]
    assert data.read("latest/yv7e-xc69.parquet") == data.read(f"{folder}/normalized.parquet")


def test_a_typed_file_that_cannot_be_made_is_a_note_the_csv_is_published_and_the_next_run_tries_again(
    site, data, typed
):
    ragged = [*OLD_ROWS[:-1], OLD_ROWS[-1] + ",an extra cell"]  # kept byte for byte in the CSV; DuckDB refuses it
    for attempt in range(2):
        site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, ragged)})
        ok, report = run_daily(site, data.dir)
        [entry] = by_identifier(report)["yv7e-xc69"]
        assert ok and report["status"] == "succeeded" and entry["status"] == ("downloaded", "up_to_date")[attempt]
        assert entry["error"].startswith("typed file: DuckDB: ") and entry["error"].endswith("; retried next run")
        folder = data.key(folder_of(entry))
        assert not any(data.exists(f"{folder}/{name}") for name in TYPED)
        assert data.read("latest/yv7e-xc69.csv") == body(FACILITY, ragged)
        assert not data.exists("latest/yv7e-xc69.parquet")


def test_retention_deletes_a_version_with_its_typed_files(site, data, typed, luigi_setting):
    luigi_setting("retention", "keep_versions", "1")
    first = first_version(site, data)
    site.dataset("yv7e-xc69", "2025-10-01", {"Timely.csv": body(FACILITY, NEW_ROWS)}, upload=1700000999)
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and data.listing(first) == []
    second = data.key(folder_of(entry))
    assert {key.rsplit("/", 1)[1] for key in data.listing(second)} >= set(TYPED)


def test_with_parquet_off_no_typed_file_is_made_and_turning_it_off_withdraws_latest_ones(site, data, luigi_setting):
    folder = first_version(site, data)
    assert not any(key.endswith((".parquet", ".duckdb", "dictionary.json")) for key in data.listing())
    luigi_setting("analytics", "parquet", "true")
    ok, report = run_daily(site, data.dir)  # a version made before: typed now, without a NOTE or a download
    assert ok and entry_notes(report) == [] and data.exists(f"{folder}/normalized.parquet")
    assert data.exists("latest/yv7e-xc69.parquet") and data.exists("latest/hospitals.duckdb")
    luigi_setting("analytics", "parquet", "false")
    ok, report = run_daily(site, data.dir)
    assert ok and report["notes"] == [
        "latest/: [analytics] parquet is off; its Parquet files and hospitals.duckdb deleted"
    ]
    assert not data.exists("latest/yv7e-xc69.parquet") and not data.exists("latest/hospitals.duckdb")
    assert "database" not in json.loads(data.read("latest/latest.json"))


def test_latest_typed_files_cut_short_are_put_back_with_a_note(site, data, typed):
    folder = first_version(site, data)
    database = data.read("latest/hospitals.duckdb")
    data.write("latest/hospitals.duckdb", b"")  # a power cut after the rename, or another writer
    data.delete("latest/yv7e-xc69.parquet")  # its own file, not the version's hard link
    data.write("latest/yv7e-xc69.parquet", b"")
    ok, report = run_daily(site, data.dir)
    size = len(data.read(f"{folder}/normalized.parquet"))
    assert ok and entry_notes(report) == [
        f"latest/yv7e-xc69.parquet had 0 bytes, its version {size:,}; put back",
        f"latest/hospitals.duckdb has 0 bytes, latest.json says {len(database):,}; made again",
    ]
    assert data.read("latest/yv7e-xc69.parquet") == data.read(f"{folder}/normalized.parquet")
    assert len(data.read("latest/hospitals.duckdb")) == len(database)


NO_OP = """
import sys, luigi
from pipeline import HospitalsDaily
task = HospitalsDaily(data_dir=sys.argv[1], metastore_url=sys.argv[2], run_id="no-op")
ok = luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
print(ok, "duckdb" in sys.modules)
"""


def test_a_no_op_run_does_not_even_import_duckdb(site, typed, tmp_path):
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, OLD_ROWS)})
    assert run_daily(site, tmp_path / "data")[0]
    assert (tmp_path / "data" / "latest" / "hospitals.duckdb").is_file()
    (tmp_path / "typed.cfg").write_text("[analytics]\nparquet = true\n", encoding="utf-8")
    ran = subprocess.run(
        [sys.executable, "-c", NO_OP, str(tmp_path / "data"), site.metastore_url],
        env={**os.environ, "LUIGI_CONFIG_PATH": str(tmp_path / "typed.cfg")},  # [analytics] as this test has it
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "True False"  # succeeded, and DuckDB never imported


def test_every_dataset_typed_by_tasks_side_by_side_gets_its_latest_parquet_and_view(site, data, typed):
    identifiers = ["aaaa-0001", "bbbb-0002", "cccc-0003", "dddd-0004"]
    for n, identifier in enumerate(identifiers):
        site.dataset(identifier, "2025-07-01", {"Timely.csv": body(FACILITY, OLD_ROWS[: 4 + n])})
    ok, report = run_daily(site, data.dir, workers=4)
    assert ok and entry_notes(report) == []
    manifest = json.loads(data.read("latest/latest.json"))
    assert [row["parquet"]["view"] for row in manifest["datasets"]] == [
        f"ds_{identifier.replace('-', '_')}" for identifier in identifiers
    ]
    assert manifest["database"]["views"] == 4
    assert all(data.exists(f"latest/{identifier}.parquet") for identifier in identifiers)
