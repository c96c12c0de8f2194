"""The real Luigi graph against a loopback CMS site: what is fetched, what lands on disk, what is logged."""

import csv
import hashlib
import http.server
import io
import json
import threading
from pathlib import Path

import luigi
import pytest

from pipeline.tasks import NormalizeCsv
from tests.fixtures import HEADER_IPF, HEADER_OAS_CAHPS, HEADER_UNQUOTED_LF, HEADER_WITH_COMMA, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site, by_identifier, query, run_daily

# Every test runs once per run-log engine: SQLite, and PostgreSQL (tests/conftest.py: runlog_engine); those
# taking `data`, once per storage as well: a local folder and an S3 bucket.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("runlog_engine")]


def data_after_header(data: bytes) -> bytes:
    """Everything after the first record (headers here have no quoted line breaks)."""
    return data[data.index(b"\n") + 1 :]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_site(site: Site) -> dict[str, bytes]:
    files = {
        "oas": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(30, 5)),
        "comma": csv_bytes(HEADER_WITH_COMMA, ['"1","A","M","x, y","2025"'] * 4),
        "lf": csv_bytes(HEADER_UNQUOTED_LF, ["A,1 Main,Dothan,AL,36301,31.2,-85.3"] * 7, newline="\n"),
        "ipf-a": b"\xef\xbb\xbf" + csv_bytes(HEADER_IPF, quoted_rows(3, 4, "a")),
        "ipf-b": csv_bytes(HEADER_IPF, quoted_rows(5, 4, "b")),
    }
    site.dataset("48nr-hqxx", "2025-04-08", {"OAS.csv": files["oas"]})
    site.dataset("x663-bwbj", "2025-04-08", {"Footnotes.csv": files["comma"]})
    site.dataset("hbf-map", "2025-01-02", {"map.csv": files["lf"]})
    site.dataset("ipf1-2345", "2025-03-01", {"IPF_A.csv": files["ipf-a"], "IPF_B.csv": files["ipf-b"]})
    site.dataset("nh00-0001", "2025-04-08", {"NH.csv": csv_bytes('"A"', ['"1"'])}, theme=["Nursing homes"])
    return files


def test_first_run_fetches_every_hospitals_csv_once_and_nothing_else(site, server, tmp_path, data):
    files = small_site(site)
    server.clear()
    ok, report = run_daily(site, data.dir)
    assert ok
    csv_requests = [p for p in server.paths() if p != CATALOG_PATH]
    assert server.count(CATALOG_PATH) == 1
    assert len(csv_requests) == 5 == len(set(csv_requests))
    assert not any("NH.csv" in p for p in csv_requests)
    assert report["status"] == "succeeded"
    assert report["counts"] == {
        "discovered": 5,
        "downloaded": 5,
        "up_to_date": 0,
        "failed": 0,
        "invalid": 0,
        "retired": 0,
    }

    entries = by_identifier(report)
    assert sorted(entries) == ["48nr-hqxx", "hbf-map", "ipf1-2345", "x663-bwbj"]
    assert len(entries["ipf1-2345"]) == 2  # both CSV distributions of one dataset land

    oas = entries["48nr-hqxx"][0]
    out = data.read(oas["paths"]["normalized"])
    assert out.startswith(
        b'"facility_id","facility_name","city_town",'
        b'"patients_rating_of_the_facility_linear_mean_score","number_of_sampled_patients"\r\n'
    )
    assert sha(data_after_header(out)) == sha(data_after_header(files["oas"]))
    assert data.read(oas["paths"]["source"]) == files["oas"]
    assert oas["rows"] == 30 and oas["sha256"] == sha(out)
    assert data.exists(oas["paths"]["source"].replace("source.csv", "source.scan.json"))  # normalized by kernel copy

    lf = data.read(entries["hbf-map"][0]["paths"]["normalized"])
    assert lf.split(b"\n")[0] == b"name,addr,city,state,zip,lat,lon" and b"\r" not in lf
    assert data_after_header(lf) == data_after_header(files["lf"])

    comma = data.read(entries["x663-bwbj"][0]["paths"]["normalized"]).decode("utf-8")
    assert next(csv.reader(io.StringIO(comma)))[3] == "footnote_if_any"

    ipf = {data.read(e["paths"]["normalized"]).split(b"\r\n")[0] for e in entries["ipf1-2345"]}
    assert ipf == {b'"facility_id","n_readm_30_ipf_number_ipfs_better","faph_30_percent","rate_percent"'}
    for entry in entries["ipf1-2345"]:
        assert not data.read(entry["paths"]["normalized"]).startswith(b"\xef\xbb\xbf")

    header_map = json.loads(data.read(oas["paths"]["header_map"]))
    assert header_map["columns"][3] == {
        "position": 4,
        "original": "Patients' rating of the facility linear mean score",
        "normalized": "patients_rating_of_the_facility_linear_mean_score",
    }

    rows = query(data.runlog_dir, "SELECT identifier, status, rows, sha256 FROM versions ORDER BY identifier, rows")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("48nr-hqxx", "done", 30),
        ("hbf-map", "done", 7),
        ("ipf1-2345", "done", 3),
        ("ipf1-2345", "done", 5),
        ("x663-bwbj", "done", 4),
    ]
    assert query(data.runlog_dir, "SELECT status, discovered, downloaded, failed FROM runs") == [("succeeded", 5, 5, 0)]
    assert not [key for key in data.listing() if "-luigi-tmp-" in key or key.endswith(".staged")]
    assert not list(tmp_path.glob("scratch/cms-pipeline/*"))  # object storage: downloads made there, then deleted
    latest = json.loads(data.read("latest/latest.json"))  # each file in latest/ is its version's bytes
    assert sorted(sha(data.read(f"latest/{item['path']}")) for item in latest["datasets"]) == sorted(
        entry["sha256"] for group in entries.values() for entry in group
    )


def test_second_run_makes_no_file_request(site, server, tmp_path, data):
    small_site(site)
    assert run_daily(site, data.dir)[0]
    server.clear()
    ok, report = run_daily(site, data.dir)
    assert ok and server.paths() == [CATALOG_PATH]
    assert report["counts"]["up_to_date"] == 5 and report["counts"]["downloaded"] == 0
    assert query(data.runlog_dir, "SELECT count(*), count(DISTINCT status) FROM runs") == [(2, 1)]


def test_a_day_with_one_new_version_gives_luigi_that_version_alone(site, server, data):
    """The catalog task checks every version's files; HospitalsDaily yields the queued versions alone, so Luigi
    (and luigid's UI) is given the day's work, not a task per finished version to check again."""
    small_site(site)
    assert run_daily(site, data.dir)[0]
    site.dataset("48nr-hqxx", "2025-05-01", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(12, 5, "new"))})
    given = []

    def found_done(task):
        given.append(("found done", task.identifier))

    def started(task):
        given.append(("started", task.identifier))

    NormalizeCsv.event_handler(luigi.Event.DEPENDENCY_PRESENT)(found_done)
    NormalizeCsv.event_handler(luigi.Event.START)(started)
    try:
        ok, report = run_daily(site, data.dir)
    finally:
        NormalizeCsv._event_callbacks[NormalizeCsv][luigi.Event.DEPENDENCY_PRESENT].discard(found_done)
        NormalizeCsv._event_callbacks[NormalizeCsv][luigi.Event.START].discard(started)
    assert ok and (report["counts"]["downloaded"], report["counts"]["up_to_date"]) == (1, 4)
    assert given == [("started", "48nr-hqxx")]


@pytest.mark.parametrize(
    ("modified", "upload"),
    [
        ("2025-05-01", 1700000999),  # a later modified with a new file
        ("2025-01-01", 1700000999),  # an earlier modified: still a new version
        ("2025-04-08", 1700000999),  # a silent re-upload: same modified, new URL
    ],
)
def test_each_kind_of_new_version_is_fetched_exactly_once(site, server, data, modified, upload):
    small_site(site)
    assert run_daily(site, data.dir)[0]
    new_file = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(12, 5, "new"))
    [new_path] = site.dataset("48nr-hqxx", modified, {"OAS.csv": new_file}, upload=upload)
    server.clear()
    ok, report = run_daily(site, data.dir)
    assert ok and server.paths() == [CATALOG_PATH, new_path]
    entry = by_identifier(report)["48nr-hqxx"][0]
    assert entry["status"] == "downloaded" and entry["rows"] == 12
    assert data_after_header(data.read(entry["paths"]["normalized"])) == data_after_header(new_file)
    assert data.read("latest/48nr-hqxx.csv") == data.read(entry["paths"]["normalized"])
    assert len(data.folders("datasets/48nr-hqxx")) == 2  # the old version stays
    server.clear()
    assert run_daily(site, data.dir)[0] and server.paths() == [CATALOG_PATH]


def test_a_failing_dataset_fails_alone_and_only_it_is_retried(site, server, tmp_path, data):
    small_site(site)
    [missing] = site.dataset("77hc-ibv8", "2025-04-08", {"HAI.csv": b""}, serve=False)  # 404
    [html] = site.dataset("632h-zaca", "2025-04-08", {"Visits.csv": b"<!DOCTYPE html><p>maintenance</p>"})
    server.add(html, b"<!DOCTYPE html><p>maintenance</p>", content_type="text/html")
    ok, report = run_daily(site, data.dir)
    assert not ok
    assert report["status"] == "failed"
    assert report["counts"] == {
        "discovered": 7,
        "downloaded": 5,
        "up_to_date": 0,
        "failed": 2,
        "invalid": 0,
        "retired": 0,
    }
    entries = by_identifier(report)
    assert "HTTP 404" in entries["77hc-ibv8"][0]["error"]
    assert "HTML" in entries["632h-zaca"][0]["error"]
    assert not [key for key in data.listing("datasets/77hc-ibv8") if key.endswith(".csv")]
    assert query(data.runlog_dir, "SELECT identifier, status FROM versions WHERE status<>'done' ORDER BY 1") == [
        ("632h-zaca", "failed"),
        ("77hc-ibv8", "failed"),
    ]

    good = csv_bytes('"Facility ID","Score"', ['"1","2"'])
    server.add(missing, good)
    server.add(html, good)
    server.clear()
    ok, report = run_daily(site, data.dir)
    assert ok and sorted(server.paths()) == sorted([CATALOG_PATH, missing, html])
    assert report["counts"]["downloaded"] == 2 and report["counts"]["up_to_date"] == 5
    assert query(data.runlog_dir, "SELECT count(*) FROM versions WHERE status='done'") == [(7,)]


def test_invalid_items_are_reported_and_the_rest_go_on(site, server, tmp_path):
    small_site(site)
    broken = {"identifier": "zz99-bad1", "title": "No distribution", "modified": "2025-01-01", "theme": ["Hospitals"]}
    site.extra.append(broken)
    site.publish()
    ok, report = run_daily(site, tmp_path)
    assert ok  # an invalid catalog item is reported, not a task failure
    assert report["counts"]["invalid"] == 1 and report["counts"]["downloaded"] == 5
    [entry] = by_identifier(report)["zz99-bad1"]
    assert entry["status"] == "invalid" and "no distribution" in entry["error"]


@pytest.mark.parametrize("answer", [b'{"message": "maintenance"}', b"<html>busy</html>"])
def test_a_metastore_answer_that_is_not_an_array_fails_the_run_and_changes_nothing(site, server, tmp_path, answer):
    small_site(site)
    assert run_daily(site, tmp_path)[0]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "datasets").rglob("*")}
    versions_before = query(tmp_path, "SELECT * FROM versions ORDER BY 1, 2, 3")
    server.add(CATALOG_PATH, answer, content_type="application/json")
    server.clear()
    ok, report = run_daily(site, tmp_path)
    assert not ok and report["status"] == "failed" and report["datasets"] == []
    assert "not a JSON array" in report["error"]
    assert server.paths() == [CATALOG_PATH]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "datasets").rglob("*")} == before
    assert query(tmp_path, "SELECT * FROM versions ORDER BY 1, 2, 3") == versions_before
    [(status, error)] = query(tmp_path, "SELECT status, error FROM runs WHERE downloaded IS NULL")
    assert status == "failed" and "not a JSON array" in error


def test_non_utf8_source_is_converted_and_reported(site, server, tmp_path):
    source = '"Hôpital","Score"\r\n"Saint-Étienne","1"\r\n'.encode("cp1252")
    site.dataset("enc1-0001", "2025-01-01", {"Latin.csv": source})
    ok, report = run_daily(site, tmp_path)
    assert ok
    [entry] = report["datasets"]
    assert entry["source_encoding"] == "cp1252"
    scan = json.loads((Path(entry["paths"]["source"]).parent / "source.scan.json").read_text(encoding="utf-8"))
    assert scan == {"source_bytes": len(source)}  # only the size, by which later runs know it is whole: rewritten
    expected = '"hopital","score"\r\n"Saint-Étienne","1"\r\n'
    assert Path(entry["paths"]["normalized"]).read_bytes().decode("utf-8") == expected


def test_a_run_built_with_a_local_scheduler_sends_nothing_to_the_luigid_its_config_names(site, tmp_path, luigi_setting):
    """luigi.build(local_scheduler=True) where luigi.cfg still names a luigid: the progress line goes nowhere, and
    no version waits on RPC retries to a scheduler the run does not use (with failures too)."""
    seen: list[str] = []

    class Luigid(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # luigid's RPCs are POSTs to /api/<method>
            seen.append(self.path)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *_) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Luigid) as elsewhere:
        threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
        luigi_setting("core", "local_scheduler", "false")
        luigi_setting("core", "scheduler_url", f"http://127.0.0.1:{elsewhere.server_address[1]}/")
        site.dataset("48nr-hqxx", "2025-01-01", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(5, 5))})
        site.dataset("gone-0001", "2025-01-01", {"Gone.csv": b""}, serve=False)
        ok, report = run_daily(site, tmp_path)
        elsewhere.shutdown()
    assert not ok and report["counts"]["downloaded"] == 1 and report["counts"]["failed"] == 1
    assert seen == []
