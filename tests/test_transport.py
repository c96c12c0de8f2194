"""Content-Encoding, chunked bodies and the [download] bounds: the decoder alone, download() on loopback, real runs."""

import gzip
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.content_coding import DECODED
from pipeline.http import DownloadError, HttpSettings, download, session_for
from pipeline.settings import current, http_settings
from tests.harness import CATALOG_PATH, by_identifier, query, run_daily
from tests.test_content_coding import BODY, TRUNCATED, deflate

pytestmark = pytest.mark.integration

# -- download() against the loopback server ------------------------------------------------------------------

FAST = HttpSettings(backoff_factor=0, read_timeout=5)


def get(server, tmp_path, settings=FAST, path="/f.csv", **kwargs):
    return download(server.url(path), tmp_path / "f.csv", settings, **kwargs)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_encoded_bodies_are_written_decoded(server, tmp_path, encoding, chunked):
    server.add("/f.csv", BODY, encoding=encoding, chunked=chunked, last_modified=1700000000)
    seen = []
    got = get(server, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert (tmp_path / "f.csv").read_bytes() == BODY
    wire = len(gzip.compress(BODY, 6)) if encoding == "gzip" else len(deflate(BODY))
    assert (got.bytes, got.wire_bytes, got.content_encoding) == (len(BODY), wire, encoding)
    assert got.last_modified and got.content_type.startswith("text/csv")
    assert seen[-1] == (len(BODY), None)  # decoded bytes; Content-Length counts other bytes


def test_a_redirect_to_a_cdn_copy_is_followed(server, tmp_path):
    server.add("/cdn/f.csv", BODY, encoding="gzip", chunked=True, last_modified=1700000000)
    server.add("/f.csv", b"", status=302, headers={"Location": server.url("/cdn/f.csv")})
    got = get(server, tmp_path)
    assert (tmp_path / "f.csv").read_bytes() == BODY
    assert (got.bytes, got.content_encoding) == (len(BODY), "gzip") and got.last_modified
    assert server.paths() == ["/f.csv", "/cdn/f.csv"]


def test_plain_bodies_report_identity_and_their_length(server, tmp_path):
    server.add("/p.csv", BODY, chunked=True)
    got = get(server, tmp_path, path="/p.csv")
    assert (got.bytes, got.wire_bytes, got.content_encoding) == (len(BODY), len(BODY), "identity")


def test_accept_encoding_names_exactly_what_is_decoded(server, tmp_path):
    server.add("/f.csv", BODY, encoding="gzip")
    get(server, tmp_path)
    advertised = server.requests[0].headers["Accept-Encoding"]
    assert sorted(c.strip() for c in advertised.split(",")) == sorted(DECODED) == ["deflate", "gzip"]


def test_a_cut_off_encoded_body_restarts_from_scratch(server, tmp_path):
    server.add("/f.csv", BODY, encoding="gzip", last_modified=1700000000)
    server.fault("/f.csv", close_after=5_000)
    scan = Recorder()
    assert get(server, tmp_path, scan=scan).bytes == len(BODY)
    assert (tmp_path / "f.csv").read_bytes() == BODY == scan.data
    assert scan.resets == 2  # once per response
    assert [r.headers.get("Range") for r in server.requests] == [None, None]


def test_a_resumed_range_that_comes_encoded_is_refused(server, tmp_path):
    server.add("/f.csv", BODY, last_modified=1700000000)
    server.fault("/f.csv", close_after=5_000)

    def encode_the_rest(done, total):
        if server.count("/f.csv") == 1:  # the same file, but now its ranges come gzip-labelled
            server.add("/f.csv", BODY, last_modified=1700000000, headers={"Content-Encoding": "gzip"})

    with pytest.raises(DownloadError, match=r"^the resumed range came with Content-Encoding 'gzip'$"):
        get(server, tmp_path, progress=encode_the_rest)
    assert [(r.status, r.headers.get("Range")) for r in server.requests] == [(200, None), (206, "bytes=5000-")]


class Recorder:
    def __init__(self, fail_at: int | None = None):
        self.data, self.resets, self.fail_at = b"", 0, fail_at

    def reset(self):
        self.data, self.resets = b"", self.resets + 1

    def feed(self, chunk):
        self.data += chunk
        if self.fail_at is not None and len(self.data) >= self.fail_at:
            raise BinaryContent("binary")


class BinaryContent(ValueError):
    pass


def test_errors_of_the_scan_propagate_unchanged(server, tmp_path):
    server.add("/f.csv", BODY, encoding="gzip")
    with pytest.raises(BinaryContent):
        get(server, tmp_path, scan=Recorder(fail_at=1))
    assert server.count() == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_truncated_gzip_stream_fails_without_retrying(server, tmp_path, chunked):
    data = gzip.compress(BODY)
    server.add("/f.csv", data[: len(data) // 2], headers={"Content-Encoding": "gzip"}, ranges=False, chunked=chunked)
    with pytest.raises(DownloadError, match=r"^compressed body ends before the end of its gzip stream \(truncated\)$"):
        get(server, tmp_path)
    assert server.count() == 1


def test_unsupported_encoding_and_markup_inside_gzip(server, tmp_path):
    server.add("/f.csv", BODY, headers={"Content-Encoding": "br"})
    with pytest.raises(DownloadError, match=r"^the server sent Content-Encoding 'br', which this pipeline does not"):
        get(server, tmp_path)
    server.add("/f.csv", b"  <html><body>maintenance</body></html>", encoding="gzip", content_type="text/csv")
    with pytest.raises(DownloadError, match="body starts with '<'"):
        get(server, tmp_path)


def test_a_drip_fails_the_rate_floor(server, tmp_path):
    server.add("/f.csv", BODY, encoding="gzip")
    server.fault("/f.csv", rate=1)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"^slower than 1 KB/s for 1 s \(at 0 bytes; min_rate, min_rate_window\)$"):
        get(server, tmp_path, HttpSettings(backoff_factor=0, read_timeout=5, min_rate=1000, min_rate_window=1))
    assert time.monotonic() - t0 < 10
    assert server.count() == 1


def test_a_steady_body_passes_the_rate_floor(server, tmp_path):
    server.add("/f.csv", BODY)
    server.fault("/f.csv", rate=100_000)  # ~1 s, 10x the floor
    assert get(server, tmp_path, HttpSettings(min_rate=10_000, min_rate_window=0.2)).bytes == len(BODY)


def test_an_endless_body_or_a_bomb_stops_at_max_bytes(server, tmp_path):
    server.add_endless("/f.csv")
    settings = HttpSettings(max_bytes=1 << 20)
    with pytest.raises(DownloadError, match=r"^larger than 1 MiB \(max_bytes\)$"):
        get(server, tmp_path, settings)
    server.add("/f.csv", b"0" * (50 << 20), encoding="gzip")  # 50 MiB from ~50 KB
    with pytest.raises(DownloadError, match=r"^larger than 1 MiB \(max_bytes\)$"):
        get(server, tmp_path, settings)
    assert (tmp_path / "f.csv").stat().st_size <= 1 << 20


def test_the_deadline_is_checked_before_the_request_and_while_reading(server, tmp_path):
    server.add("/f.csv", BODY)
    with pytest.raises(DownloadError, match=r"^the run's deadline passed \(run_minutes = 5\)$"):
        get(server, tmp_path, HttpSettings(run_minutes=5, deadline=time.time() - 1))
    assert server.count() == 0
    server.fault("/f.csv", rate=1000)
    with pytest.raises(DownloadError, match=r"^the run's deadline passed \(run_minutes = 0.01\)$"):
        get(server, tmp_path, HttpSettings(read_timeout=5, run_minutes=0.01, deadline=time.time() + 0.6))


def test_no_wait_between_retries_ends_past_the_deadline(server, tmp_path):
    server.add("/f.csv", BODY)
    server.fault("/f.csv", status=503, retry_after=30)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"^the run's deadline passed \(run_minutes = 0.01\)$"):
        get(server, tmp_path, HttpSettings(run_minutes=0.01, deadline=time.time() + 0.6))
    assert time.monotonic() - started < 10 and server.count() == 1


def test_session_for_makes_one_session_however_many_threads_ask():
    settings = HttpSettings(user_agent=f"test-{time.time_ns()}")
    barrier = threading.Barrier(8)

    def ask(_):
        barrier.wait()
        return session_for(settings)

    with ThreadPoolExecutor(8) as pool:
        assert len({id(s) for s in pool.map(ask, range(8))}) == 1


def test_settings_carry_the_bounds_and_fix_the_deadline_once(luigi_setting):
    for key, value in {"min_rate": "500", "min_rate_window": "2", "max_bytes": "1000", "run_minutes": "2"}.items():
        luigi_setting("download", key, value)
    before = time.time()
    settings = http_settings(current())
    assert (settings.min_rate, settings.min_rate_window, settings.max_bytes, settings.run_minutes) == (500, 2, 1000, 2)
    assert before + 120 <= settings.deadline <= time.time() + 120
    luigi_setting("download", "run_minutes", "0")
    assert http_settings(current()).deadline == 0.0
    hash(settings)  # a key of session_for


def test_defaults():
    s = HttpSettings()
    assert (s.min_rate, s.min_rate_window, s.max_bytes, s.run_minutes, s.deadline) == (10_000, 60, 5 << 30, 0, 0)
    assert http_settings(current()).max_bytes == 5 * 1024**3  # as luigi.cfg and the Config class have it


# -- real runs -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast(fast_http, luigi_setting):
    """A read timeout longer than a 1 byte/s drip's gaps: the rate floor, not the timeout, must end it."""
    luigi_setting("download", "read_timeout", "5")


def leftovers(data_dir: Path, identifier: str) -> list[str]:
    return [p.name for p in data_dir.glob(f"datasets/{identifier}/*/*") if p.name != ".lock"]


def assert_failed(ok, report, data_dir: Path, identifier: str, message: str) -> None:
    assert not ok and report["status"] == "failed"
    entry = by_identifier(report)[identifier][0]
    assert entry["status"] == "failed" and message in entry["error"], entry["error"]
    [(status, error)] = query(data_dir, "SELECT status, error FROM versions WHERE identifier=?", identifier)
    assert status == "failed" and message in error
    assert leftovers(data_dir, identifier) == []  # no source.csv, no temp file


def test_compressed_and_chunked_bodies_give_the_files_of_the_plain_one(site, server, tmp_path):
    variants = {
        "plain-000": {},
        "plain-chk": {"chunked": True},
        "gzip-0000": {"encoding": "gzip"},
        "gzip-chnk": {"encoding": "gzip", "chunked": True},
        "defl-0000": {"encoding": "deflate"},
        "defl-chnk": {"encoding": "deflate", "chunked": True},
    }
    for identifier, options in variants.items():
        [path] = site.dataset(identifier, "2025-04-08", {"Timely.csv": BODY})
        server.add(path, BODY, last_modified=1700000300, **options)
    catalog = json.dumps(list(site.items.values())).encode()
    server.add(CATALOG_PATH, catalog, content_type="application/json", encoding="gzip")  # fetch_bytes decodes it
    ok, report = run_daily(site, tmp_path)
    assert ok and report["status"] == "succeeded"
    entries = {identifier: by_identifier(report)[identifier][0] for identifier in variants}
    plain = Path(entries["plain-000"]["paths"]["normalized"]).read_bytes()
    assert plain.endswith(BODY[BODY.index(b"\n") :])
    for identifier, entry in entries.items():
        assert entry["status"] == "downloaded"
        assert Path(entry["paths"]["source"]).read_bytes() == BODY, identifier
        normalized = Path(entry["paths"]["normalized"]).read_bytes()
        assert normalized == plain and entry["sha256"] == hashlib.sha256(normalized).hexdigest(), identifier
    for request in server.requests:
        assert sorted(c.strip() for c in request.headers["Accept-Encoding"].split(",")) == ["deflate", "gzip"]
    statuses = query(tmp_path, "SELECT status, error FROM versions")
    assert statuses == [("done", None)] * len(variants)


def test_a_cut_off_gzip_body_is_fetched_again_whole_without_range(site, server, tmp_path):
    [path] = site.dataset("yv7e-xc69", "2025-04-08", {"Timely.csv": BODY})
    server.add(path, BODY, last_modified=1700000300, encoding="gzip")
    server.fault(path, close_after=5_000)
    ok, report = run_daily(site, tmp_path)
    assert ok
    first, second = [r for r in server.requests if r.path == path]
    assert "Range" not in first.headers and "Range" not in second.headers
    assert (first.status, second.status) == (200, 200)
    entry = by_identifier(report)["yv7e-xc69"][0]
    assert Path(entry["paths"]["source"]).read_bytes() == BODY
    assert entry["sha256"] == hashlib.sha256(Path(entry["paths"]["normalized"]).read_bytes()).hexdigest()
    assert query(tmp_path, "SELECT status, error FROM versions") == [("done", None)]


def test_a_truncated_gzip_stream_fails_the_dataset(site, server, tmp_path):
    [path] = site.dataset("yv7e-xc69", "2025-04-08", {"Timely.csv": BODY})
    data = gzip.compress(BODY)
    server.add(path, data[: len(data) // 2], headers={"Content-Encoding": "gzip"}, ranges=False, chunked=True)
    ok, report = run_daily(site, tmp_path)
    assert_failed(ok, report, tmp_path, "yv7e-xc69", TRUNCATED)
    assert server.count(path) == 1


def test_an_encoding_that_is_not_decoded_fails_the_dataset_by_name(site, server, tmp_path):
    [path] = site.dataset("yv7e-xc69", "2025-04-08", {"Timely.csv": BODY})
    site.dataset("hbf-map", "2025-01-02", {"map.csv": b"name,city\nA,Dothan\n"})
    server.add(path, BODY, headers={"Content-Encoding": "br"})
    ok, report = run_daily(site, tmp_path)
    assert_failed(
        ok, report, tmp_path, "yv7e-xc69", "the server sent Content-Encoding 'br', which this pipeline does not decode"
    )
    assert by_identifier(report)["hbf-map"][0]["status"] == "downloaded"


def test_a_drip_fails_the_dataset_and_the_run_ends(site, server, tmp_path, luigi_setting):
    luigi_setting("download", "min_rate", "1000")
    luigi_setting("download", "min_rate_window", "1")
    [path] = site.dataset("yv7e-xc69", "2025-04-08", {"Timely.csv": BODY})
    server.fault(path, rate=1, times=None)
    t0 = time.monotonic()
    ok, report = run_daily(site, tmp_path)
    assert time.monotonic() - t0 < 30  # without the floor it would take ~27 hours
    assert_failed(ok, report, tmp_path, "yv7e-xc69", "slower than 1 KB/s for 1 s (at ")
    assert server.count(path) == 1


def test_an_endless_body_fails_at_max_bytes(site, server, tmp_path, luigi_setting):
    luigi_setting("download", "max_bytes", str(1 << 20))
    [path] = site.dataset("endless-1", "2025-04-08", {"Endless.csv": b""})
    server.add_endless(path, b'"1","a long and endless row of a CSV file"\r\n' * 100)
    t0 = time.monotonic()
    ok, report = run_daily(site, tmp_path)
    assert time.monotonic() - t0 < 30
    assert_failed(ok, report, tmp_path, "endless-1", "larger than 1 MiB (max_bytes)")


def test_the_runs_deadline_fails_a_download_still_running(site, server, tmp_path, luigi_setting):
    luigi_setting("download", "run_minutes", "0.02")  # 1.2 s from the creation of HospitalsDaily
    [path] = site.dataset("yv7e-xc69", "2025-04-08", {"Timely.csv": BODY})
    server.fault(path, rate=2000, times=None)  # ~50 s
    t0 = time.monotonic()
    ok, report = run_daily(site, tmp_path)
    assert time.monotonic() - t0 < 30
    assert_failed(ok, report, tmp_path, "yv7e-xc69", "the run's deadline passed (run_minutes = 0.02)")
