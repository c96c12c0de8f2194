"""Store exactly what the server meant, or fail loudly, and never lose what is already good."""

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from pipeline import runlog
from pipeline.header_rewrite import rewrite_csv
from pipeline.runlog_engines import SchemaTooNew
from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, item, quoted_rows
from tests.harness import CATALOG_PATH, by_identifier, query, run_daily
from tests.old_schemas import BEFORE_USER_VERSION, FIRST_RELEASE
from tests.stored_data import LocalData

# Every test runs once per run-log engine (tests/conftest.py: runlog_engine), but those about SQLite's file.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("runlog_engine")]
sqlite_only = pytest.mark.parametrize("runlog_engine", ["sqlite"], indirect=True)

GOOD = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(50, 5))


@pytest.fixture
def luigi_log(tmp_path):
    """What Luigi's logger writes, from every worker process (forked, they inherit the handler)."""
    path = tmp_path / "luigi-interface.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    logger = logging.getLogger("luigi-interface")
    logger.addHandler(handler)
    yield lambda: path.read_text(encoding="utf-8")
    logger.removeHandler(handler)
    handler.close()


def latest_files(data) -> dict[str, bytes]:
    """latest/'s CSV files, name -> bytes (`data`: tests/stored_data.py, or a local data folder)."""
    data = LocalData(data) if isinstance(data, Path) else data
    return {key[7:]: data.read(key) for key in data.listing("latest/") if key.endswith(".csv") and key != INDEX}


def version_files(data, identifier: str) -> set[str]:
    data = LocalData(data) if isinstance(data, Path) else data
    return set(data.listing(f"datasets/{identifier}/"))


INDEX = "latest/index.csv"


BAD_BODIES = {
    "unlabelled gzip": (gzip.compress(GOOD), "compressed data (gzip) that the server did not label"),
    "NUL bytes": (GOOD[:200] + b"\x00\x00" + GOOD[200:], "binary file, not a CSV (NUL byte at offset 200)"),
    "UTF-16": (b"\xff\xfe" + GOOD.decode().encode("utf-16-le"), "UTF-16 text (byte order mark FF FE"),
    "PDF": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF document, not a CSV"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_a_body_that_is_not_text_fails_its_dataset_and_keeps_the_previous_version(site, tmp_path, data, case):
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    ok, _first = run_daily(site, data.dir)
    assert ok
    before_latest, before_files = latest_files(data), version_files(data, "48nr-hqxx")
    manifest = data.read("latest/latest.json")

    body, message = BAD_BODIES[case]
    [path] = site.dataset("48nr-hqxx", "2025-04-08", {"OAS.csv": body}, upload=1700000100)
    ok, report = run_daily(site, data.dir)
    assert not ok and report["status"] == "failed"
    [entry] = by_identifier(report)["48nr-hqxx"]
    assert entry["status"] == "failed" and message in entry["error"] and path in entry["error"]
    assert query(data.runlog_dir, "SELECT status FROM versions WHERE modified='2025-04-08'") == [("failed",)]
    assert query(data.runlog_dir, "SELECT status FROM versions WHERE modified='2025-01-01'") == [("done",)]
    assert version_files(data, "48nr-hqxx") == before_files  # nothing of the bad body was kept
    assert latest_files(data) == before_latest == {"48nr-hqxx.csv": latest_files(data)["48nr-hqxx.csv"]}
    assert json.loads(data.read("latest/latest.json"))["datasets"] == json.loads(manifest)["datasets"]
    assert not list(tmp_path.glob("scratch/cms-pipeline/*"))


def test_bare_cr_line_endings_are_named_as_such(site, tmp_path):
    site.dataset("mac0-0001", "2025-01-01", {"Mac.csv": GOOD.replace(b"\r\n", b"\r")})
    ok, report = run_daily(site, tmp_path)
    assert not ok
    [entry] = report["datasets"]
    assert entry["status"] == "failed"
    assert "line endings are bare CR (classic Mac OS); expected CRLF or LF" in entry["error"]
    assert query(tmp_path, "SELECT status FROM versions") == [("failed",)]
    assert not (tmp_path / "latest" / "mac0-0001.csv").exists()


def test_a_theme_nobody_has_gives_a_report_naming_the_themes_that_exist(site, tmp_path, capfd):
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    site.dataset("nh00-0001", "2025-01-01", {"NH.csv": GOOD}, theme=["Nursing homes", "Hospitals"])
    site.dataset("dc00-0001", "2025-01-01", {"DC.csv": GOOD}, theme=["Dialysis facilities"])
    ok, report = run_daily(site, tmp_path, theme="Hospital")
    assert not ok and report["status"] == "failed" and report["datasets"] == []
    expected = (
        "no dataset has the theme 'Hospital' among 3 items; themes present: 'Dialysis facilities' (1), "
        "'Hospitals' (2), 'Nursing homes' (1)"
    )
    assert report["error"].endswith(expected)
    assert expected in capfd.readouterr().out
    [(status, error)] = query(tmp_path, "SELECT status, error FROM runs")
    assert status == "failed" and error.endswith(expected)
    assert not (tmp_path / "datasets").exists()


def test_a_rerun_of_a_failed_run_id_says_so_and_changes_nothing(site, server, tmp_path, luigi_log):
    [path] = site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    server.fault(path, status=404)
    ok, report = run_daily(site, tmp_path, run_id="morning")
    assert not ok and report["status"] == "failed"
    server.clear()
    ok, again = run_daily(site, tmp_path, run_id="morning")
    assert not ok and again == report
    assert server.paths() == []
    assert "run morning already finished (failed; report " in luigi_log()
    assert query(tmp_path, "SELECT status FROM runs") == [("failed",)]


# -- schema drift ----------------------------------------------------------------------------------------

PARTS = {
    "Part_A.csv": b'"Facility ID","Part A Score"\r\n"1","2"\r\n',
    "Part_B.csv": b'"Facility ID","Part B Score","Part B Footnote"\r\n"1","2","x"\r\n',
}


def test_a_dataset_with_two_csvs_never_compares_one_with_the_other(site, tmp_path, capfd):
    site.dataset("zz04-twocsv", "2025-01-01", PARTS)
    ok, first = run_daily(site, tmp_path)
    site.dataset("zz04-twocsv", "2025-01-01", PARTS, upload=1700000100)  # re-uploaded, same files
    ok2, second = run_daily(site, tmp_path)
    assert ok and ok2 and second["counts"]["downloaded"] == 2
    for report in (first, second):
        assert [e["schema_change"] for e in report["datasets"]] == [None, None]
    assert query(tmp_path, "SELECT count(*) FROM schema_changes") == [(0,)]
    assert "SCHEMA" not in capfd.readouterr().out

    renamed = {
        "Part_A_2025.csv": PARTS["Part_A.csv"].replace(b"Part A Score", b"Part A Rate"),
        "Part_B.csv": PARTS["Part_B.csv"],
    }
    site.dataset("zz04-twocsv", "2025-02-01", renamed, upload=1700000200)  # file renamed on re-upload
    ok, third = run_daily(site, tmp_path)
    changes = {e["version"]["download_url"].rsplit("/", 1)[1]: e["schema_change"] for e in third["datasets"]}
    assert changes["Part_B.csv"] is None
    assert changes["Part_A_2025.csv"]["renamed"] == [{"position": 2, "from": "part_a_score", "to": "part_a_rate"}]
    assert changes["Part_A_2025.csv"]["previous_version"]["download_url"].endswith("/Part_A.csv")


HGI_2020 = (
    '"Facility ID","Facility Name","Address","City","State","ZIP Code","County Name","Phone Number",'
    '"Hospital Type","Hospital Ownership","Emergency Services",'
    '"Meets criteria for promoting interoperability of EHRs","Hospital overall rating",'
    '"Hospital overall rating footnote","Mortality national comparison",'
    '"Mortality national comparison footnote","Safety of care national comparison",'
    '"Safety of care national comparison footnote","Readmission national comparison",'
    '"Readmission national comparison footnote","Patient experience national comparison",'
    '"Patient experience national comparison footnote","Effectiveness of care national comparison",'
    '"Effectiveness of care national comparison footnote","Timeliness of care national comparison",'
    '"Timeliness of care national comparison footnote","Efficient use of medical imaging national comparison",'
    '"Efficient use of medical imaging national comparison footnote"'
)
HGI_2024 = (
    '"Facility ID","Facility Name","Address","City/Town","State","ZIP Code","County/Parish",'
    '"Telephone Number","Hospital Type","Hospital Ownership","Emergency Services",'
    '"Meets criteria for birthing friendly designation","Hospital overall rating",'
    '"Hospital overall rating footnote","MORT Group Measure Count","Count of Facility MORT Measures",'
    '"Count of MORT Measures Better","Count of MORT Measures No Different","Count of MORT Measures Worse",'
    '"MORT Group Footnote","Safety Group Measure Count","Count of Facility Safety Measures",'
    '"Count of Safety Measures Better","Count of Safety Measures No Different",'
    '"Count of Safety Measures Worse","Safety Group Footnote","READM Group Measure Count",'
    '"Count of Facility READM Measures","Count of READM Measures Better",'
    '"Count of READM Measures No Different","Count of READM Measures Worse","READM Group Footnote",'
    '"Pt Exp Group Measure Count","Count of Facility Pt Exp Measures","Pt Exp Group Footnote",'
    '"TE Group Measure Count","Count of Facility TE Measures","TE Group Footnote"'
)


def test_a_wholesale_header_change_reads_as_removed_and_added(site, tmp_path, capfd):
    site.dataset("xubh-q36u", "2020-10-01", {"HGI.csv": csv_bytes(HGI_2020, [])})
    assert run_daily(site, tmp_path)[0]
    site.dataset("xubh-q36u", "2024-10-01", {"HGI.csv": csv_bytes(HGI_2024, [])}, upload=1700000100)
    ok, report = run_daily(site, tmp_path)
    assert ok
    change = report["datasets"][0]["schema_change"]
    renames = {(r["from"], r["to"]) for r in change["renamed"]}
    assert renames == {
        ("city", "city_town"),
        ("county_name", "county_parish"),
        ("phone_number", "telephone_number"),
        ("meets_criteria_for_promoting_interoperability_of_ehrs", "meets_criteria_for_birthing_friendly_designation"),
    }
    assert len(change["removed"]) == 14 and len(change["added"]) == 24
    assert "mortality_national_comparison" in change["removed"]
    assert "14 removed (mortality_national_comparison," in capfd.readouterr().out


# -- crash safety and upgrades ---------------------------------------------------------------------------


# What a kill leaves: one output written and not the other; or neither, with the copy the download wrote whole,
# or cut short (a disk that lost its tail).
@pytest.mark.parametrize(
    ("lost", "staged"),
    [
        (["header_map.json"], None),
        (["normalized.csv"], None),
        (["normalized.csv", "header_map.json"], "whole"),
        (["normalized.csv", "header_map.json"], "cut short"),
    ],
    ids=["header map lost", "normalized lost", "staged copy whole", "staged copy cut short"],
)
def test_a_version_missing_its_outputs_is_rebuilt(site, server, tmp_path, lost, staged):
    [path] = site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    ok, first = run_daily(site, tmp_path)
    folder = Path(first["datasets"][0]["paths"]["normalized"]).parent
    normalized = (folder / "normalized.csv").read_bytes()
    if staged:
        (folder / "normalized.staged").write_bytes(normalized if staged == "whole" else normalized[:-7])
        os.link(folder / "normalized.staged", tmp_path / "staged-inode")  # keeps its inode number from reuse
        staged_inode = (folder / "normalized.staged").stat().st_ino
    for name in lost:
        (folder / name).unlink()
    server.clear()
    ok, report = run_daily(site, tmp_path)
    assert ok and report["datasets"][0]["status"] == "downloaded" and path not in server.paths()
    assert (folder / "normalized.csv").read_bytes() == normalized
    assert not (folder / "normalized.staged").exists()
    if staged:  # moved in when whole, else made anew from the source
        assert ((folder / "normalized.csv").stat().st_ino == staged_inode) == (staged == "whole")
    stored = json.loads((folder / "header_map.json").read_text(encoding="utf-8"))
    assert stored["sha256"] == first["datasets"][0]["sha256"]
    assert query(tmp_path, "SELECT status FROM versions") == [("done",)]


def test_a_staged_copy_without_its_source_is_swept_and_one_beside_it_kept(site, tmp_path):
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    # A download killed mid-way, of a version no catalog lists any more; and one killed before its Normalize.
    cut = tmp_path / "datasets" / "gone-1" / "2024-12-01-0123abcd"
    waiting = tmp_path / "datasets" / "kept-1" / "2024-12-01-4567cdef"
    for folder in (cut, waiting):
        folder.mkdir(parents=True)
        (folder / "normalized.staged").write_bytes(b"facility_id\r\n")
    (cut / "source.csv-luigi-tmp-1234").write_bytes(b'"Facility ID"\r\n')
    (waiting / "source.csv").write_bytes(b'"Facility ID"\r\n')
    ok, _ = run_daily(site, tmp_path)
    assert ok
    assert sorted(p.name for p in cut.iterdir()) == [".lock"]  # the sweep's lock file
    assert sorted(p.name for p in waiting.iterdir()) == [".lock", "normalized.staged", "source.csv"]


def test_the_download_writes_the_normalized_file_and_normalize_moves_it_in(site, tmp_path):
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    site.dataset("cp-1252", "2025-01-01", {"Old.csv": '"Café"\r\n"Zoë"\r\n'.encode("cp1252")})
    ok, report = run_daily(site, tmp_path)
    assert ok
    for entry in report["datasets"]:
        folder = Path(entry["paths"]["normalized"]).parent
        assert not (folder / "normalized.staged").exists()
        source, normalized = (folder / "source.csv").read_bytes(), (folder / "normalized.csv").read_bytes()
        dst = io.BytesIO()
        rewrite_csv(io.BytesIO(source), dst)
        assert normalized == dst.getvalue()
        assert hashlib.sha256(normalized).hexdigest() == entry["sha256"]
        scan = json.loads((folder / "source.scan.json").read_text(encoding="utf-8"))
        assert ("sha256" in scan) == (entry["identifier"] == "48nr-hqxx")  # cp1252: only the source's size
        assert scan["source_bytes"] == len(source)


@sqlite_only
@pytest.mark.parametrize("schema", [FIRST_RELEASE, BEFORE_USER_VERSION], ids=["first release", "before user_version"])
def test_a_run_log_from_an_earlier_release_is_upgraded_in_place(site, server, tmp_path, schema):
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    ok, _first = run_daily(site, tmp_path, run_id="old")
    db_path = tmp_path / "runlog.sqlite"
    with sqlite3.connect(db_path) as db:
        runs = db.execute("SELECT run_id, started_at, finished_at, status FROM runs").fetchall()
        versions = db.execute(
            "SELECT identifier, modified, download_url, title, theme, status, source_path,"
            " output_path, header_map_path, rows, sha256 FROM versions"
        ).fetchall()
    db_path.unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{db_path}{extra}").unlink(missing_ok=True)
    with sqlite3.connect(db_path) as db:  # the database as that release left it
        db.executescript(schema)
        db.executemany("INSERT INTO runs(run_id, started_at, finished_at, status) VALUES (?,?,?,?)", runs)
        db.executemany(
            "INSERT INTO versions(identifier, modified, download_url, title, theme, status, source_path,"
            " output_path, header_map_path, rows, sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            versions,
        )

    site.dataset("77hc-ibv8", "2025-01-01", {"HAI.csv": GOOD})
    server.clear()
    ok, report = run_daily(site, tmp_path, verify=True)
    assert ok
    assert {e["identifier"]: e["status"] for e in report["datasets"]} == {
        "48nr-hqxx": "up_to_date",
        "77hc-ibv8": "downloaded",
    }
    assert not any("OAS.csv" in p for p in server.paths())
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == runlog.SCHEMA_VERSION
        assert db.execute("SELECT identifier, position, revision FROM versions ORDER BY 1").fetchall() == [
            ("48nr-hqxx", 1, ""),
            ("77hc-ibv8", 1, ""),
        ]
        assert db.execute("SELECT run_id, status FROM runs ORDER BY started_at").fetchall()[0] == ("old", "succeeded")


@sqlite_only
def test_a_run_log_from_a_newer_release_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / "runlog.sqlite") as db:
        db.execute(f"PRAGMA user_version={runlog.SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew, match="newer than this release knows"):
        runlog.RunLog(tmp_path / "runlog.sqlite")


def test_a_programming_error_keeps_its_traceback(site, tmp_path, monkeypatch, luigi_log):
    from pipeline.header_rewrite import SourceScan

    def broken(self, chunk):
        raise ZeroDivisionError("a bug, not data")

    monkeypatch.setattr(SourceScan, "feed", broken)  # the worker processes are forked: they see it too
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    ok, report = run_daily(site, tmp_path)
    assert not ok and "ZeroDivisionError" in report["datasets"][0]["error"]
    err = luigi_log()
    assert "Traceback (most recent call last)" in err and 'in broken\n    raise ZeroDivisionError("a bug' in err


# -- latest/ follows the catalog ------------------------------------------------------------------------


def test_latest_names_come_from_the_catalog_whatever_failed(site, server, tmp_path):
    [_a, b] = site.dataset("hbf-map", "2025-01-01", {"a.csv": b"name\nA\n", "b.csv": b"name\nB\n"})
    server.fault(b, status=404)
    ok, report = run_daily(site, tmp_path)
    assert not ok and [e["status"] for e in report["datasets"]] == ["downloaded", "failed"]
    assert latest_files(tmp_path) == {"hbf-map__a.csv": b"name\nA\n"}
    ok, report = run_daily(site, tmp_path)
    assert ok and [e["status"] for e in report["datasets"]] == ["up_to_date", "downloaded"]
    assert latest_files(tmp_path) == {"hbf-map__a.csv": b"name\nA\n", "hbf-map__b.csv": b"name\nB\n"}

    site.dataset("hbf-map", "2025-02-01", {"a.csv": b"name\nA2\n"}, upload=1700000100)  # down to one CSV
    ok, _report = run_daily(site, tmp_path)
    assert ok and latest_files(tmp_path) == {"hbf-map.csv": b"name\nA2\n"}
    manifest = json.loads((tmp_path / "latest" / "latest.json").read_text(encoding="utf-8"))
    assert [d["path"] for d in manifest["datasets"]] == ["hbf-map.csv"]
    index = (tmp_path / "latest" / "index.csv").read_text(encoding="utf-8-sig").splitlines()
    assert index == [
        "identifier,title,file,rows,changes,modified,released,data_dictionary,retired",
        'hbf-map,Dataset hbf-map,hbf-map.csv,1,"+1, -1",2025-02-01,2025-02-01,,',  # whole rows: name is no key
    ]


def test_two_distributions_with_the_same_file_name_both_reach_latest(site, server, tmp_path):
    first, second = "/files/one/data.csv", "/files/two/data.csv"
    server.add(first, b"name\none\n")
    server.add(second, b"name\ntwo\n")
    site.items["dup-1"] = item("dup-1", "2025-01-01", [server.url(first), server.url(second)])
    site.publish()
    for _ in range(2):  # the names are stable across runs
        ok, _report = run_daily(site, tmp_path)
        assert ok
        assert latest_files(tmp_path) == {"dup-1__data-1.csv": b"name\none\n", "dup-1__data-2.csv": b"name\ntwo\n"}


def test_an_impossible_modified_date_is_invalid_and_named(site, tmp_path):
    site.dataset("bad-date", "2025-13-45", {"Bad.csv": GOOD})
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    ok, report = run_daily(site, tmp_path)
    assert ok and report["counts"]["invalid"] == 1
    [entry] = by_identifier(report)["bad-date"]
    assert entry["status"] == "invalid" and "'2025-13-45'" in entry["error"]
    assert query(tmp_path, "SELECT outcome FROM run_items WHERE identifier='bad-date'") == [("invalid",)]
    assert not (tmp_path / "datasets" / "bad-date").exists()


def test_temp_files_a_killed_publisher_left_in_latest_are_swept(site, tmp_path):
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    (tmp_path / "latest").mkdir(parents=True)
    (tmp_path / "latest" / "48nr-hqxx.csv.4242.tmp").write_bytes(b"partial")  # as earlier releases named them
    (tmp_path / "latest" / "48nr-hqxx.csv-luigi-tmp-000004242").write_bytes(b"partial")
    assert run_daily(site, tmp_path)[0]
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == [
        ".lock",
        "48nr-hqxx.csv",
        "index.csv",
        "latest.json",
    ]


# -- a hostile host ---------------------------------------------------------------------------------------


def test_a_latest_file_held_open_delays_only_itself(site, server, tmp_path, monkeypatch, capfd):
    site.dataset("aaa-1111", "2025-01-01", {"A.csv": b"name\nA1\n"})
    site.dataset("bbb-2222", "2025-01-01", {"B.csv": b"name\nB1\n"})
    assert run_daily(site, tmp_path)[0]
    site.dataset("aaa-1111", "2025-02-01", {"A.csv": b"name\nA2\n"}, upload=1700000100)
    site.dataset("bbb-2222", "2025-02-01", {"B.csv": b"name\nB2\n"}, upload=1700000100)
    real_replace = os.replace

    def in_use(source, dest):  # what Windows does to a file Excel holds open
        if Path(dest).name == "aaa-1111.csv":
            raise PermissionError(13, "The process cannot access the file because it is being used")
        return real_replace(source, dest)

    monkeypatch.setattr(os, "replace", in_use)  # the worker processes are forked: they see it too
    capfd.readouterr()
    ok, report = run_daily(site, tmp_path)
    assert ok and report["status"] == "succeeded" and report["counts"]["downloaded"] == 2
    note = "latest/aaa-1111.csv is in use; it still holds version 2025-01-01; retried next run"
    assert report["notes"] == [note]
    assert f"  NOTE {note}" in capfd.readouterr().out
    assert latest_files(tmp_path) == {"aaa-1111.csv": b"name\nA1\n", "bbb-2222.csv": b"name\nB2\n"}
    assert not list((tmp_path / "latest").glob("*.tmp"))
    assert query(tmp_path, "SELECT status FROM runs ORDER BY started_at DESC LIMIT 1") == [("succeeded",)]
    manifest = json.loads((tmp_path / "latest" / "latest.json").read_text(encoding="utf-8"))
    assert [d["version"]["modified"] for d in manifest["datasets"]] == ["2025-01-01", "2025-02-01"]

    monkeypatch.setattr(os, "replace", real_replace)  # the file was closed
    server.clear()
    ok, report = run_daily(site, tmp_path)
    assert ok and report["notes"] == [] and server.paths() == [CATALOG_PATH]
    assert latest_files(tmp_path) == {"aaa-1111.csv": b"name\nA2\n", "bbb-2222.csv": b"name\nB2\n"}


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB filesystem for the data folder (tmpfs: needs root; skipped elsewhere)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a small filesystem needs root and mount")
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@sqlite_only
def test_a_full_disk_fails_the_datasets_it_hits_with_one_line_and_the_next_run_completes(
    site, server, small_disk, luigi_log
):
    big = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(40_000, 5))  # ~1.5 MB: with the run log and its copy, too much
    site.dataset("big-0001", "2025-01-01", {"Big.csv": big})
    site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": GOOD})
    ok, report = run_daily(site, small_disk, workers=1)  # one at a time: the big file is what fills the disk
    assert not ok and report["status"] == "failed"
    entries = by_identifier(report)
    assert entries["big-0001"][0]["status"] == "failed"
    assert f"No space left on device (writing in {small_disk.resolve()})" in entries["big-0001"][0]["error"]
    assert entries["48nr-hqxx"][0]["status"] == "downloaded"
    assert "Traceback" not in luigi_log()
    assert query(small_disk, "SELECT status FROM versions WHERE identifier='big-0001'") == [("failed",)]
    assert version_files(small_disk, "big-0001") == set()  # nothing partial presented as complete

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    ok, report = run_daily(site, small_disk)
    assert ok and by_identifier(report)["big-0001"][0]["status"] == "downloaded"
    out = Path(by_identifier(report)["big-0001"][0]["paths"]["normalized"]).read_bytes()
    assert out[out.index(b"\n") :] == big[big.index(b"\n") :]
