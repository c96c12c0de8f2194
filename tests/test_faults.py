"""Faults of the network and of the catalog: how each run ends, and that the next run heals it."""

import hashlib
from pathlib import Path

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site, by_identifier, query, run_daily

pytestmark = pytest.mark.integration

BODY = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(2000, 5))  # ~60 KB


@pytest.fixture(autouse=True)
def _fast(fast_http):
    """Faults resolve in well under a second."""


def one_dataset(site: Site, body: bytes = BODY) -> str:
    [path] = site.dataset("yv7e-xc69", "2025-04-08", {"Timely.csv": body})
    site.dataset("hbf-map", "2025-01-02", {"map.csv": b"name,city\nA,Dothan\n"})
    return path


def normalized(report: dict, identifier: str = "yv7e-xc69") -> bytes:
    return Path(by_identifier(report)[identifier][0]["paths"]["normalized"]).read_bytes()


def assert_complete(report: dict, body: bytes = BODY) -> None:
    out = normalized(report)
    assert out[out.index(b"\n") :] == body[body.index(b"\n") :]
    assert by_identifier(report)["yv7e-xc69"][0]["sha256"] == hashlib.sha256(out).hexdigest()


def test_server_errors_are_retried_by_the_session(site, server, tmp_path):
    path = one_dataset(site)
    server.fault(path, status=503, times=2)
    ok, report = run_daily(site, tmp_path)
    assert ok and server.count(path) == 3
    assert_complete(report)


def test_429_retry_after_is_honoured(site, server, tmp_path):
    path = one_dataset(site)
    server.fault(path, status=429, retry_after=1)
    ok, report = run_daily(site, tmp_path)
    first, second = [r.time for r in server.requests if r.path == path]
    assert ok and second - first >= 0.9
    assert_complete(report)


def test_a_cut_off_body_is_resumed_with_range_and_if_range(site, server, tmp_path):
    path = one_dataset(site)
    server.fault(path, close_after=10_000)
    ok, report = run_daily(site, tmp_path)
    assert ok
    first, second = [r for r in server.requests if r.path == path]
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=10000-" and second.headers["If-Range"]
    assert second.status == 206
    assert_complete(report)


def test_a_cut_off_body_restarts_when_the_server_has_no_ranges(site, server, tmp_path):
    path = one_dataset(site)
    server.add(path, BODY, last_modified=1700000300, ranges=False)
    server.fault(path, close_after=10_000)
    ok, report = run_daily(site, tmp_path)
    assert ok and [r.status for r in server.requests if r.path == path] == [200, 200]
    assert "Range" not in server.requests[-1].headers
    assert_complete(report)


def test_a_file_changed_between_attempts_is_fetched_whole(server, tmp_path):
    from pipeline.http import HttpSettings, download

    server.add("/f.csv", BODY, last_modified=1700000300)
    server.fault("/f.csv", close_after=10_000)
    changed = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(2100, 5, "v2"))

    def replace_file_once(done, total):
        if server.count("/f.csv") == 1:
            server.add("/f.csv", changed, last_modified=1800000000)  # If-Range no longer matches

    download(server.url("/f.csv"), tmp_path / "f.csv", HttpSettings(backoff_factor=0), replace_file_once)
    assert (tmp_path / "f.csv").read_bytes() == changed
    assert [r.status for r in server.requests] == [200, 200]
    assert server.requests[1].headers.get("Range") == "bytes=10000-"


def test_a_body_cut_off_every_time_fails_that_dataset_and_leaves_no_partial_file(site, server, tmp_path):
    path = one_dataset(site)
    server.fault(path, close_after=5_000, times=None)
    ok, report = run_daily(site, tmp_path)
    assert not ok
    entry = by_identifier(report)["yv7e-xc69"][0]
    assert entry["status"] == "failed" and "cut off 3 times" in entry["error"]
    assert by_identifier(report)["hbf-map"][0]["status"] == "downloaded"
    leftovers = [p.name for p in tmp_path.glob("datasets/yv7e-xc69/*/*") if p.name != ".lock"]
    assert leftovers == []  # neither a prefix nor a temp file

    server.add(path, BODY, last_modified=1700000300)  # healed
    server.clear()
    ok, report = run_daily(site, tmp_path)
    assert ok and sorted(server.paths()) == sorted([CATALOG_PATH, path])
    assert_complete(report)


def test_a_server_slower_than_the_read_timeout_is_retried_then_fails(site, server, tmp_path):
    path = one_dataset(site)
    server.fault(path, delay=1.5)
    ok, report = run_daily(site, tmp_path)
    assert ok and server.count(path) == 2
    assert_complete(report)

    server.clear()
    [slow] = site.dataset("slow-0001", "2025-04-08", {"Slow.csv": BODY})
    server.fault(slow, delay=1.5, times=None)
    ok, report = run_daily(site, tmp_path)
    assert not ok and server.count(slow) == 4  # 1 + 3 retries
    assert "timed out" in by_identifier(report)["slow-0001"][0]["error"].lower()


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ({"html": True}, "HTML"),
        ({"empty": True}, "empty"),
        ({"status": 404}, "HTTP 404"),
        ({"status": 500, "times": None}, "500"),
    ],
)
def test_unusable_answers_fail_the_dataset_and_the_next_run_heals(site, server, tmp_path, fault, cause):
    path = one_dataset(site)
    server.fault(path, **fault)
    ok, report = run_daily(site, tmp_path)
    assert not ok and report["status"] == "failed"
    assert cause in by_identifier(report)["yv7e-xc69"][0]["error"]
    assert query(tmp_path, "SELECT status FROM versions WHERE identifier='yv7e-xc69'") == [("failed",)]

    server.add(path, BODY, last_modified=1700000300)
    server.clear()
    ok, report = run_daily(site, tmp_path)
    assert ok and sorted(server.paths()) == sorted([CATALOG_PATH, path])
    assert_complete(report)
    assert query(tmp_path, "SELECT status, error FROM versions WHERE identifier='yv7e-xc69'") == [("done", None)]


def test_a_metastore_503_once_is_retried(site, server, tmp_path):
    one_dataset(site)
    server.fault(CATALOG_PATH, status=503)
    ok, report = run_daily(site, tmp_path)
    assert ok and server.count(CATALOG_PATH) == 2 and report["counts"]["downloaded"] == 2


def test_a_metastore_that_keeps_failing_fails_the_run_cleanly(site, server, tmp_path):
    one_dataset(site)
    server.fault(CATALOG_PATH, status=503, times=None)
    ok, report = run_daily(site, tmp_path)
    assert not ok and report["status"] == "failed" and report["datasets"] == []
    assert report["error"] == f"metastore {site.metastore_url}: HTTP 503 Service Unavailable"
    assert server.paths() == [CATALOG_PATH] * 4
    [(status, error)] = query(tmp_path, "SELECT status, error FROM runs")
    assert status == "failed" and "503" in error
    assert query(tmp_path, "SELECT count(*) FROM versions") == [(0,)]


def test_header_row_over_the_limit_and_missing_header_are_errors_for_that_file(site, server, tmp_path):
    huge = ",".join(f'"Column number {i} with a long name"' for i in range(40_000)).encode() + b"\r\n1\r\n"
    site.dataset("huge-0001", "2025-01-01", {"Huge.csv": huge})
    site.dataset("blank-001", "2025-01-01", {"Blank.csv": b"\r\n\r\n"})
    site.dataset("good-0001", "2025-01-01", {"Good.csv": b"A\n1\n"})
    ok, report = run_daily(site, tmp_path)
    assert not ok
    entries = by_identifier(report)
    assert "longer than" in entries["huge-0001"][0]["error"]
    assert "no header row" in entries["blank-001"][0]["error"]
    assert entries["good-0001"][0]["status"] == "downloaded"


HOSTILE = ["../../escape", "..", "a/b\\c:d", "CON", "nul", "x\x00y", "LPT1", "Ünïcode id", "i" * 400]


def test_hostile_identifiers_and_titles_stay_inside_the_data_directory(site, server, tmp_path):
    for n, identifier in enumerate(HOSTILE):
        site.dataset(
            identifier,
            "2025-01-01",
            {f"F{n}.csv": f'"Col {n}"\r\n"{n}"\r\n'.encode()},
            title="../" * 50 + "T" * 1000,
            upload=1700000000 + n,
        )
    site.extra.append(
        {
            "identifier": "bad-url",
            "title": "x",
            "modified": "2025-01-01",
            "theme": ["Hospitals"],
            "distribution": [{"downloadURL": "file:///etc/passwd", "mediaType": "text/csv"}],
        }
    )
    site.publish()
    ok, report = run_daily(site, tmp_path)
    assert ok
    assert report["counts"]["downloaded"] == len(HOSTILE) and report["counts"]["invalid"] == 1
    assert "not http(s)" in by_identifier(report)["bad-url"][0]["error"]
    datasets = (tmp_path / "datasets").resolve()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    for path in files:
        relative = path.resolve().relative_to(tmp_path.resolve())
        assert len(str(relative)) < 160
        if relative.parts[0] == "datasets":
            assert path.resolve().is_relative_to(datasets)
    assert len(list(datasets.iterdir())) == len(HOSTILE)
    assert not (tmp_path.parent / "escape").exists()
    for entry in report["datasets"]:
        if entry["status"] == "downloaded":
            assert Path(entry["paths"]["normalized"]).read_bytes().startswith(b'"col_')
