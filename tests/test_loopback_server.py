"""Exercise LoopbackServer for real over sockets with `requests`."""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import random
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from urllib3.exceptions import ProtocolError

from tests.loopback_server import LoopbackServer

pytestmark = pytest.mark.integration

CSV = b"id,name\n1,alpha\n2,beta\n"
TS = 1_700_000_000


@pytest.fixture
def srv():
    with LoopbackServer() as server:
        yield server


def wait_until(cond, timeout=3.0):
    # Server-side bookkeeping finishes just after the client has its bytes.
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_plain_get_with_last_modified_and_no_etag(srv):
    srv.add("/a.csv", CSV, last_modified=TS)
    r = requests.get(srv.base_url + "/a.csv?download=1", timeout=5)
    assert r.status_code == 200
    assert r.content == CSV
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers["Content-Length"] == str(len(CSV))
    assert r.headers["Last-Modified"] == email.utils.formatdate(TS, usegmt=True)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "ETag" not in r.headers
    (rec,) = srv.requests
    assert (rec.method, rec.path, rec.query, rec.status) == ("GET", "/a.csv", "download=1", 200)
    assert "User-Agent" in rec.headers and rec.time > 0
    assert srv.count("/a.csv") == srv.count() == 1 and srv.paths() == ["/a.csv"]


def test_head_and_custom_headers(srv):
    srv.add("/h.csv", CSV, headers={"X-Extra": "1"}, ranges=False)
    r = requests.head(srv.url("/h.csv"), timeout=5)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == str(len(CSV)) and r.headers["X-Extra"] == "1"
    assert "Accept-Ranges" not in r.headers and "Last-Modified" not in r.headers


def test_unknown_path_is_404(srv):
    r = requests.get(srv.url("/missing.csv"), timeout=5)
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/plain") and r.content
    assert srv.requests[0].status == 404


def test_add_replaces_resource_and_its_faults(srv):
    srv.add("/a.csv", b"old\n")
    srv.fault("/a.csv", status=500, times=None)
    srv.add("/a.csv", b"new\n", last_modified=TS)
    r = requests.get(srv.url("/a.csv"), timeout=5)
    assert (r.status_code, r.content) == (200, b"new\n")


def test_keep_alive_reuses_one_connection(srv):
    srv.add("/a.csv", CSV)
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(srv.url("/a.csv"), timeout=5).content == CSV
    assert len({r.client for r in srv.requests}) == 1


def test_path_body_is_streamed_from_disk(srv, tmp_path):
    data = bytes(range(256)) * 1200  # ~300 KB: several chunks
    f = tmp_path / "big.csv"
    f.write_bytes(data)
    srv.add("/big.csv", f, last_modified=TS)
    r = requests.get(srv.url("/big.csv"), timeout=5)
    assert r.content == data and r.headers["Content-Length"] == str(len(data))
    r = requests.get(srv.url("/big.csv"), headers={"Range": "bytes=100000-"}, timeout=5)
    assert r.status_code == 206 and r.content == data[100000:]


def test_ranges(srv):
    srv.add("/r.csv", CSV, last_modified=TS)
    lm = email.utils.formatdate(TS, usegmt=True)
    url = srv.url("/r.csv")

    r = requests.get(url, headers={"Range": "bytes=5-"}, timeout=5)
    assert r.status_code == 206 and r.content == CSV[5:]
    assert r.headers["Content-Range"] == f"bytes 5-{len(CSV) - 1}/{len(CSV)}"

    r = requests.get(url, headers={"Range": "bytes=2-4", "If-Range": lm}, timeout=5)
    assert r.status_code == 206 and r.content == CSV[2:5]

    r = requests.get(url, headers={"Range": "bytes=5-", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}, timeout=5)
    assert r.status_code == 200 and r.content == CSV

    r = requests.get(url, headers={"Range": f"bytes={len(CSV)}-"}, timeout=5)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(CSV)}"

    srv.add("/r.csv", CSV, ranges=False)
    r = requests.get(url, headers={"Range": "bytes=5-"}, timeout=5)
    assert r.status_code == 200 and r.content == CSV


def test_status_fault_with_retry_after_then_normal(srv):
    srv.add("/a.csv", CSV)
    srv.fault("/a.csv", status=503, retry_after=2)
    r = requests.get(srv.url("/a.csv"), timeout=5)
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    r = requests.get(srv.url("/a.csv"), timeout=5)
    assert (r.status_code, r.content) == (200, CSV)
    assert [q.status for q in srv.requests] == [503, 200]


def test_close_after_truncates_body(srv):
    srv.add("/a.csv", CSV * 100)
    srv.fault("/a.csv", close_after=10)
    with requests.get(srv.url("/a.csv"), stream=True, timeout=5) as r:
        assert r.headers["Content-Length"] == str(len(CSV) * 100)
        got = bytearray()
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
            for chunk in r.iter_content(4096):
                got += chunk
    assert len(got) <= 10
    assert requests.get(srv.url("/a.csv"), timeout=5).content == CSV * 100


def test_delay_exceeds_read_timeout(srv):
    srv.add("/a.csv", CSV)
    srv.fault("/a.csv", delay=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(srv.url("/a.csv"), timeout=(2, 0.3))
    assert srv.count("/a.csv") == 1  # logged on arrival
    assert requests.get(srv.url("/a.csv"), timeout=5).content == CSV


def test_html_and_empty_faults(srv):
    srv.add("/a.csv", CSV)
    srv.fault("/a.csv", html=True, times=2)
    srv.fault("/a.csv", empty=True)
    for _ in range(2):
        r = requests.get(srv.url("/a.csv"), timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert r.content.startswith(b"<!DOCTYPE html>")
    r = requests.get(srv.url("/a.csv"), timeout=5)
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "0"
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert requests.get(srv.url("/a.csv"), timeout=5).content == CSV


def test_forever_fault_and_fault_needs_resource(srv):
    srv.add("/a.csv", CSV)
    srv.fault("/a.csv", status=500, times=None)
    assert all(requests.get(srv.url("/a.csv"), timeout=5).status_code == 500 for _ in range(3))
    with pytest.raises(KeyError):
        srv.fault("/nope.csv", status=500)


def test_bandwidth_and_latency_throttle(srv):
    body = b"x" * 200_000
    srv.add("/big.csv", body)
    srv.bandwidth = 400_000
    t0 = time.monotonic()
    assert requests.get(srv.url("/big.csv"), timeout=10).content == body
    assert time.monotonic() - t0 >= 0.4  # lower bound only: CI machines can be slow

    srv.bandwidth, srv.latency = None, 0.2
    t0 = time.monotonic()
    assert requests.get(srv.url("/big.csv"), timeout=10).content == body
    assert time.monotonic() - t0 >= 0.2


def test_peak_concurrency(srv):
    srv.add("/catalog.json", b"{}", content_type="application/json")
    for i in range(4):
        srv.add(f"/data/{i}.csv", CSV)
        srv.fault(f"/data/{i}.csv", delay=0.5)
    requests.get(srv.url("/catalog.json"), timeout=5)
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda i: requests.get(srv.url(f"/data/{i}.csv"), timeout=5).content, range(4)))
    assert bodies == [CSV] * 4
    wait_until(lambda: srv.active == 0)
    assert srv.peak_concurrency_for("/data/") == 4
    assert srv.peak_concurrency_for("/catalog") == 1
    assert srv.peak_concurrency == 4
    srv.clear()
    assert (srv.count(), srv.peak_concurrency, srv.paths()) == (0, 0, [])


def test_client_hangup_is_quiet(srv, capfd):
    srv.add("/big.csv", b"y" * 5_000_000)
    with requests.get(srv.url("/big.csv"), stream=True, timeout=5) as r:
        next(r.iter_content(1024))
    wait_until(lambda: srv.active == 0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_stop_is_prompt_during_slow_response():
    srv = LoopbackServer(bandwidth=10_000).start()
    srv.add("/slow.csv", b"z" * 1_000_000)  # would take ~100 s
    url = srv.url("/slow.csv")
    errors = []

    def client():
        try:
            with requests.get(url, stream=True, timeout=5) as r:
                for _ in r.iter_content(4096):
                    pass
        except requests.RequestException as exc:
            errors.append(exc)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    wait_until(lambda: srv.active == 1)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 5  # generous; a non-prompt stop would take ~100 s
    t.join(5)
    assert not t.is_alive() and errors
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=2)  # listening socket is closed


def test_accepted_encodings_are_sent_encoded_with_vary_and_without_ranges(srv):
    srv.add("/g.csv", CSV * 100, encoding="gzip", last_modified=TS)
    srv.add("/d.csv", CSV * 100, encoding="deflate")
    r = requests.get(srv.url("/g.csv"), headers={"Accept-Encoding": "gzip", "Range": "bytes=5-"}, timeout=5)
    assert r.status_code == 200 and r.content == CSV * 100  # Range ignored
    assert r.headers["Content-Encoding"] == "gzip" and r.headers["Vary"] == "Accept-Encoding"
    assert "Accept-Ranges" not in r.headers and r.headers["Last-Modified"]
    assert int(r.headers["Content-Length"]) == len(gzip.compress(CSV * 100, 6))
    r = requests.get(srv.url("/g.csv"), headers={"Accept-Encoding": "br;q=1, *;q=0.5"}, timeout=5)
    assert r.headers["Content-Encoding"] == "gzip" and r.content == CSV * 100
    with requests.get(srv.url("/d.csv"), headers={"Accept-Encoding": "deflate"}, stream=True, timeout=5) as r:
        assert r.headers["Content-Encoding"] == "deflate"
        assert zlib.decompress(r.raw.read(decode_content=False)) == CSV * 100


@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0", "br, deflate", "*;q=0"])
def test_others_get_the_body_as_is(srv, accept):
    srv.add("/g.csv", CSV, encoding="gzip")
    r = requests.get(srv.url("/g.csv"), headers={"Accept-Encoding": accept}, timeout=5)
    assert r.content == CSV and "Content-Encoding" not in r.headers
    assert r.headers["Accept-Ranges"] == "bytes" and r.headers["Vary"] == "Accept-Encoding"


def test_encoding_is_done_once_and_works_for_files(srv, tmp_path, monkeypatch):
    import tests.loopback_server as module

    f = tmp_path / "big.csv"
    f.write_bytes(CSV * 50_000)
    calls = []
    real = module._encode
    monkeypatch.setattr(module, "_encode", lambda *a: calls.append(a) or real(*a))
    srv.add("/big.csv", f, encoding="gzip")
    for _ in range(3):
        assert requests.get(srv.url("/big.csv"), timeout=5).content == CSV * 50_000
    assert len(calls) == 1
    with pytest.raises(ValueError, match="encoding"):
        srv.add("/x.csv", CSV, encoding="br")


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_chunked_bodies_have_no_content_length(srv, encoding):
    srv.add("/c.csv", CSV * 30_000, encoding=encoding, chunked=True)
    with requests.get(srv.url("/c.csv"), stream=True, timeout=5) as r:
        assert r.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in r.headers
        assert r.headers.get("Content-Encoding") == encoding
        assert r.content == CSV * 30_000
    with requests.Session() as s:  # the last chunk ends the body: the connection is reused
        for _ in range(2):
            assert s.get(srv.url("/c.csv"), timeout=5).content == CSV * 30_000
    assert len({r.client for r in srv.requests[1:]}) == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_close_after_cuts_an_encoded_body(srv, chunked):
    body = random.Random(0).randbytes(300_000)  # incompressible: the encoded body is as long
    srv.add("/g.csv", body, encoding="gzip", chunked=chunked)
    srv.fault("/g.csv", close_after=10_000)
    got = bytearray()
    with requests.get(srv.url("/g.csv"), stream=True, timeout=5) as r, pytest.raises(ProtocolError):
        while chunk := r.raw.read1(4096, decode_content=False):
            got += chunk
    assert 0 < len(got) <= 10_000
    assert requests.get(srv.url("/g.csv"), timeout=5).content == body


def test_rate_fault_drips_the_body(srv):
    srv.add("/a.csv", CSV * 10)
    srv.fault("/a.csv", rate=400)  # ~0.6 s for 230 bytes, in 8-byte steps
    t0 = time.monotonic()
    with requests.get(srv.url("/a.csv"), stream=True, timeout=5) as r:
        sizes = []
        while chunk := r.raw.read1(1024):
            sizes.append(len(chunk))
    assert time.monotonic() - t0 >= 0.5 and sum(sizes) == len(CSV) * 10 and len(sizes) > 10
    t0 = time.monotonic()
    assert requests.get(srv.url("/a.csv"), timeout=5).content == CSV * 10  # one time only
    assert time.monotonic() - t0 < 0.5


def test_endless_body_streams_csv_rows_until_the_client_hangs_up(srv, capfd):
    srv.add_endless("/e.csv", b'"1","x"\r\n' * 10)
    with requests.get(srv.url("/e.csv"), stream=True, timeout=5) as r:
        assert r.headers["Transfer-Encoding"] == "chunked" and "Accept-Ranges" not in r.headers
        got = bytearray()
        for chunk in r.iter_content(65536):
            got += chunk
            if len(got) > 3_000_000:
                break
    assert got.startswith(b'"id","name"\r\n"1","x"\r\n') and got.count(b"\n") > 300_000
    wait_until(lambda: srv.active == 0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("setup", ["endless", "drip"])
def test_stop_is_prompt_during_endless_and_dripping_bodies(setup):
    srv = LoopbackServer().start()
    if setup == "endless":
        srv.add_endless("/x.csv")
    else:
        srv.add("/x.csv", CSV)
        srv.fault("/x.csv", rate=1)
    started = threading.Event()

    def client():
        with (
            contextlib.suppress(requests.RequestException),
            requests.get(srv.url("/x.csv"), stream=True, timeout=5) as r,
        ):
            started.set()
            for _ in r.iter_content(65536):
                pass

    t = threading.Thread(target=client, daemon=True)
    t.start()
    assert started.wait(5)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 5
    t.join(5)
    assert not t.is_alive()


def test_accepted_sockets_have_tcp_nodelay(srv):
    srv.add("/a.csv", CSV)
    srv.fault("/a.csv", delay=0.5)
    t = threading.Thread(target=requests.get, args=(srv.url("/a.csv"),), kwargs={"timeout": 5}, daemon=True)
    t.start()
    wait_until(lambda: srv.active == 1)
    with srv._lock:
        conns = list(srv._conns)
    assert conns and all(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in conns)
    t.join(5)
