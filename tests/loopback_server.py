"""A real HTTP/1.1 server on 127.0.0.1 for tests and benchmarks of the CSV downloader.

Serves in-memory or on-disk bodies with Last-Modified and byte ranges (never an ETag), gzip/deflate
Content-Encoding when the client accepts it, chunked transfer, endless bodies, scripted per-path faults
(error status, truncated body, delay, drip rate, HTML page, empty body), optional throttling, and a
thread-safe request log with concurrency tracking.
Standard library only; no fork or signals, so it runs the same on Linux and Windows.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import io
import socket
import socketserver
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LoopbackServer", "RecordedRequest"]

_CHUNK = 64 * 1024
_TEXT = "text/plain; charset=utf-8"
_NOT_FOUND = b"not found\n"
_HTML = (
    b"<!DOCTYPE html><html><head><title>Maintenance</title></head>"
    b"<body><p>The service is down for maintenance.</p></body></html>\n"
)
_UNSATISFIABLE = (-1, -1)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    time: float
    client: tuple
    status: int | None = None  # filled in just before the response headers go out
    # Global sequence numbers of start/end, so concurrency can be replayed exactly per prefix.
    _start: int = field(default=0, repr=False)
    _end: int | None = field(default=None, repr=False)


@dataclass
class _Fault:
    remaining: int | None  # None = forever
    status: int | None = None
    retry_after: int | str | None = None
    close_after: int | None = None
    delay: float = 0.0
    html: bool = False
    empty: bool = False
    rate: float | None = None  # bytes/s for this response, instead of the server's bandwidth


@dataclass
class _Endless:
    """A body without end: header, then chunk over and over."""

    header: bytes
    chunk: bytes


@dataclass
class _Resource:
    body: bytes | Path | _Endless
    content_type: str
    status: int
    headers: dict[str, str]
    last_modified: str | None
    ranges: bool
    encoding: str | None = None
    encoded: bytes = b""  # body in that encoding, made once by add()
    chunked: bool = False
    faults: list[_Fault] = field(default_factory=list)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # benchmarks open many connections at once
    owner: LoopbackServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can stall on reverse DNS (notably on Windows).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        # Clients hanging up mid-response (or stop() cutting them off) is routine here, not a bug.
        if isinstance(exc, (ConnectionError, TimeoutError)) or (
            isinstance(exc, OSError) and self.owner._stopping.is_set()
        ):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        # Without it, Nagle's algorithm and delayed ACKs add ~40 ms to small responses.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def do_GET(self) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        rec = owner._begin(self, path, query)
        try:
            self._respond(owner, rec, path)
        finally:
            owner._finish(rec)

    do_HEAD = do_GET

    def _respond(self, owner: LoopbackServer, rec: RecordedRequest, path: str) -> None:
        res, fault = owner._lookup(path)
        f = fault or _Fault(remaining=0)
        # Pauses come before the headers so that they trip a client's read timeout.
        if not owner._pause(owner.latency + f.delay):
            self.close_connection = True
            return
        hdrs: dict[str, str] = {}
        if f.retry_after is not None:
            hdrs["Retry-After"] = str(f.retry_after)
        body: bytes | Path | _Endless
        normal = ranges = chunked = False
        if f.status is not None:
            status, body, hdrs["Content-Type"] = f.status, f"error {f.status}\n".encode(), _TEXT
        elif res is None:
            status, body, hdrs["Content-Type"] = 404, _NOT_FOUND, _TEXT
        elif f.html:
            status, body, hdrs["Content-Type"] = 200, _HTML, "text/html; charset=utf-8"
        elif f.empty:
            status, body, hdrs["Content-Type"] = 200, b"", res.content_type
        else:
            status, body, hdrs["Content-Type"] = res.status, res.body, res.content_type
            normal, ranges, chunked = True, res.ranges, res.chunked
            if res.last_modified:
                hdrs["Last-Modified"] = res.last_modified
            if res.encoding and _accepts(self.headers.get("Accept-Encoding"), res.encoding):
                body, ranges, hdrs["Content-Encoding"] = res.encoded, False, res.encoding
            if ranges:
                hdrs["Accept-Ranges"] = "bytes"
            if res.encoding:
                hdrs["Vary"] = "Accept-Encoding"
            hdrs.update(res.headers)
        size = None if isinstance(body, _Endless) else body.stat().st_size if isinstance(body, Path) else len(body)
        start, length = 0, size
        if normal and status == 200 and self._not_modified(res):
            status, body, size, length, chunked = 304, b"", 0, 0, False
        if ranges and status == 200:
            rng = self._range(res, size)
            if rng == _UNSATISFIABLE:
                status, body, start, length, chunked = 416, b"", 0, 0, False
                hdrs["Content-Range"] = f"bytes */{size}"
            elif rng:
                status, start, length = 206, rng[0], rng[1] - rng[0] + 1
                hdrs["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{size}"

        rec.status = status
        self.send_response(status)
        for name, value in hdrs.items():
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif status != 304:  # a 304 has no body, and real servers send no length for it
            self.send_header("Content-Length", str(length))  # the full length, even when truncating
        self.end_headers()
        if self.command == "HEAD":
            return
        todo = f.close_after if length is None else length if f.close_after is None else min(length, f.close_after)
        if self._send_body(owner, body, start, todo, f.rate, chunked) and todo == length:
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.close_connection = True
            # Shut down now so the client sees EOF short of Content-Length (or of the last chunk).
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _not_modified(self, res: _Resource) -> bool:
        """If-Modified-Since as real servers answer it: 304 unless the resource is newer."""
        since = self.headers.get("If-Modified-Since")
        if not since or not res.last_modified:
            return False
        try:
            asked = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        return email.utils.parsedate_to_datetime(res.last_modified) <= asked

    def _range(self, res: _Resource, size: int) -> tuple[int, int] | None:
        """(first, last) inclusive, _UNSATISFIABLE, or None to ignore the Range header."""
        spec = self.headers.get("Range")
        if not spec:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != res.last_modified:
            return None  # validator changed: the client must get the whole new body
        unit, _, rng = spec.partition("=")
        first, sep, last = rng.strip().partition("-")
        if unit.strip().lower() != "bytes" or "," in rng or not sep:
            return None  # multi-range or junk: RFC 9110 lets us ignore it
        try:
            if not first.strip():
                n = int(last)
                return (max(0, size - n), size - 1) if n > 0 and size else _UNSATISFIABLE
            start, end = int(first), int(last) if last.strip() else None
        except ValueError:
            return None
        if start < 0 or (end is not None and end < start):
            return None
        if start >= size:
            return _UNSATISFIABLE
        return start, size - 1 if end is None else min(end, size - 1)

    def _send_body(
        self,
        owner: LoopbackServer,
        body: bytes | Path | _Endless,
        start: int,
        count: int | None,
        rate: float | None,
        chunked: bool,
    ) -> bool:
        """Write count bytes (None: no end) from start, paced by rate or else owner.bandwidth; False if cut short."""
        t0, sent = time.monotonic(), 0
        with _reader(body, start) as read:
            while count is None or sent < count:
                bw = rate or owner.bandwidth
                step = max(1, int(bw) // 50) if bw else _CHUNK  # ~20 ms slices
                chunk = read(step if count is None else min(count - sent, step))
                if not chunk:
                    return False  # the file shrank under us
                self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
                if not owner._pause(t0 + sent / bw - time.monotonic() if bw else 0):
                    return False
        return True


@contextlib.contextmanager
def _reader(body: bytes | Path | _Endless, start: int) -> Iterator[Callable[[int], bytes]]:
    """read(n) over body from start: a file is streamed from disk (1 GB files stay there), an endless body repeats."""
    if isinstance(body, _Endless):
        buffer = bytearray(body.header)

        def read(n: int) -> bytes:
            while len(buffer) < n:
                buffer.extend(body.chunk)
            piece = bytes(buffer[:n])
            del buffer[:n]
            return piece

        yield read
        return
    with body.open("rb") if isinstance(body, Path) else io.BytesIO(body) as src:
        src.seek(start)
        yield src.read


def _encode(body: bytes | Path, encoding: str) -> bytes:
    """body compressed once, at level 6 as web servers and CDNs commonly use."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    out = bytearray()
    with _reader(body, 0) as read:
        while block := read(16 * _CHUNK):
            out += compressor.compress(block)
    return bytes(out + compressor.flush())


def _accepts(header: str | None, coding: str) -> bool:
    """Whether Accept-Encoding allows coding (q > 0, or "*"); with no header, as web servers do, only identity."""
    weights = {}
    for item in (header or "").lower().split(","):
        name, _, param = item.partition(";")
        param = param.strip()
        weights[name.strip()] = float(param[2:]) if param.startswith("q=") else 1.0
    return weights.get(coding, weights.get("*", 0.0)) > 0


class LoopbackServer:
    """Threaded HTTP/1.1 server on 127.0.0.1:<free port>; use as a context manager or start()/stop()."""

    def __init__(self, bandwidth: float | None = None, latency: float = 0.0, host: str = "127.0.0.1") -> None:
        self.host = host  # loopback, or an address inside a network namespace a test made
        self.bandwidth = bandwidth  # bytes/s per response; None = unthrottled
        self.latency = latency  # seconds slept before every response's headers
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._log: list[RecordedRequest] = []
        self._seq = self._active = self._peak = 0
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> LoopbackServer:
        if self._server is not None:
            raise RuntimeError("LoopbackServer already started")
        self._stopping.clear()
        server = _Server((self.host, 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()  # wakes sleeping/pacing handlers
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # unblock handlers stuck in sendall() or idle on keep-alive reads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LoopbackServer not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- content -----------------------------------------------------------
    def add(
        self,
        path: str,
        body: bytes | str | Path,
        *,
        content_type: str = "text/csv; charset=utf-8",
        status: int = 200,
        headers: dict[str, str] | None = None,
        last_modified: float | None = None,
        ranges: bool = True,
        encoding: str | None = None,
        chunked: bool = False,
    ) -> None:
        """Serve body at exactly path (query ignored); replaces any previous resource and its faults.

        encoding ("gzip" or "deflate") is applied once, here, and sent with Content-Encoding and Vary to clients
        whose Accept-Encoding allows it, without ranges; others get the body as is. chunked sends
        Transfer-Encoding: chunked instead of Content-Length."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif not isinstance(body, Path):
            body = bytes(body)
        if encoding not in (None, *_WBITS):
            raise ValueError(f"encoding must be None, 'gzip' or 'deflate': {encoding!r}")
        lm = None if last_modified is None else email.utils.formatdate(last_modified, usegmt=True)
        encoded = _encode(body, encoding) if encoding else b""
        res = _Resource(body, content_type, status, dict(headers or {}), lm, ranges, encoding, encoded, chunked)
        self._put(path, res)

    def add_endless(
        self,
        path: str,
        chunk: bytes = b'"1","endless"\r\n' * 64,
        *,
        header: bytes = b'"id","name"\r\n',
        content_type: str = "text/csv; charset=utf-8",
    ) -> None:
        """Serve header, then chunk again and again (chunked, no ranges) until the client hangs up or stop()."""
        self._put(path, _Resource(_Endless(header, chunk), content_type, 200, {}, None, False, chunked=True))

    def _put(self, path: str, res: _Resource) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        with self._lock:
            self._resources[path] = res

    def fault(
        self,
        path: str,
        *,
        times: int | None = 1,
        status: int | None = None,
        retry_after: int | str | None = None,
        close_after: int | None = None,
        delay: float = 0.0,
        html: bool = False,
        empty: bool = False,
        rate: float | None = None,
    ) -> None:
        """Misbehave on the next `times` requests to path (None = forever); rules queue in order.

        rate drips the body at that many bytes/s (e.g. 1), whatever the server's bandwidth."""
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        rule = _Fault(times, status, retry_after, close_after, delay, html, empty, rate)
        with self._lock:
            res = self._resources.get(path)
            if res is None:
                raise KeyError(f"no resource at {path!r}; add() it first")
            res.faults.append(rule)

    # -- observability -----------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self._log if path is None or r.path == path)

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self._log]

    def clear(self) -> None:
        with self._lock:
            self._log = []
            self._peak = self._active

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    @property
    def peak_concurrency(self) -> int:
        with self._lock:
            return self._peak

    def peak_concurrency_for(self, prefix: str) -> int:
        """Max simultaneous logged requests whose path starts with prefix (since start/clear)."""
        with self._lock:
            events = [(r._start, 1) for r in self._log if r.path.startswith(prefix)]
            events += [(r._end, -1) for r in self._log if r.path.startswith(prefix) and r._end is not None]
        cur = peak = 0
        for _, delta in sorted(events):
            cur += delta
            peak = max(peak, cur)
        return peak

    # -- handler hooks -----------------------------------------------------
    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _begin(self, handler: _Handler, path: str, query: str) -> RecordedRequest:
        rec = RecordedRequest(
            handler.command, path, query, dict(handler.headers.items()), time.time(), handler.client_address
        )
        with self._lock:
            self._seq += 1
            rec._start = self._seq
            self._log.append(rec)  # logged on arrival, so a client that timed out still sees it
            self._active += 1
            self._peak = max(self._peak, self._active)
        return rec

    def _finish(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._seq += 1
            rec._end = self._seq
            self._active -= 1

    def _lookup(self, path: str) -> tuple[_Resource | None, _Fault | None]:
        """The resource and the fault rule this request consumes, if any."""
        with self._lock:
            res = self._resources.get(path)
            if res is None or not res.faults:
                return res, None
            rule = res.faults[0]
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining == 0:
                    res.faults.pop(0)
            return res, rule

    def _pause(self, seconds: float) -> bool:
        """Sleep, waking early on stop(); False means the server is stopping."""
        if seconds > 0:
            return not self._stopping.wait(seconds)
        return not self._stopping.is_set()
