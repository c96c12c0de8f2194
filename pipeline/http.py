"""HTTP for the pipeline: one retrying requests Session per process, and checked, resumable, bounded downloads.

Who retries what: urllib3's Retry (in the Session) retries failed connects, and 429/5xx answers, honouring
Retry-After. A body cut off mid-transfer is resumed here (Range + If-Range) or restarted. Luigi does not
retry a failed task within a run; the next run retries it.
"""

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.content_coding import DECODED, ContentCodingError, Decoder

CHUNK = 1 << 20
# Only what download() decodes; requests would add br/zstd whenever brotli/zstandard happen to be installed.
# Compressed is worth asking for: benchmarks/compression.py, a 180 MB HCAHPS-shaped CSV at 20 MB/s, took 9.06 s
# and 180 MB on the wire as is, 0.40 s and 3.9 MB gzipped (46:1; 0.45 s chunked), peak RSS 42 vs 46 MiB.
ACCEPT_ENCODING = ", ".join(DECODED)
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 300.0  # seconds; a longer Retry-After is cut to this


class DownloadError(Exception):
    """The server did not give us a usable file."""


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 5
    backoff_factor: float = 1.0
    body_attempts: int = 3
    user_agent: str = "cms-hospitals-pipeline/0.1 (daily Luigi ingestion)"
    min_rate: int = 10_000  # bytes/s, over any min_rate_window seconds; 0 = no floor
    min_rate_window: float = 60.0
    max_bytes: int = 5 * 1024**3  # decoded; 0 = no limit
    run_minutes: float = 0.0  # named in the deadline's message
    deadline: float = 0.0  # epoch seconds when the run must stop downloading; 0 = none

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)


@dataclass(frozen=True)
class Downloaded:
    bytes: int  # decoded, as written
    last_modified: str
    content_type: str
    wire_bytes: int
    content_encoding: str


class _CappedRetry(Retry):
    """urllib3's Retry, but a server asking us to wait an hour does not stall the morning run, and no wait
    between retries ends past the run's deadline (`bounds`, given by _new_session)."""

    bounds: "_Bounds | None" = None

    def new(self, **kw):
        retry = super().new(**kw)  # a new Retry per attempt, made from urllib3's own parameters only
        retry.bounds = self.bounds
        return retry

    def get_retry_after(self, response):
        wait = super().get_retry_after(response)
        return None if wait is None else min(wait, MAX_RETRY_AFTER)

    def sleep(self, response=None):
        if self.bounds:
            wait = self.get_retry_after(response) if response and self.respect_retry_after_header else None
            self.bounds.check_deadline(time.monotonic() + (self.get_backoff_time() if wait is None else wait))
        super().sleep(response)


_sessions: dict[tuple[int, HttpSettings], requests.Session] = {}
_sessions_lock = threading.Lock()


def session_for(settings: HttpSettings) -> requests.Session:
    """The process's Session (keyed by pid too: a forked child must not share its parent's sockets)."""
    key = (os.getpid(), settings)
    with _sessions_lock:  # one per process and settings, whichever thread asks first
        if key not in _sessions:
            _sessions[key] = _new_session(settings)
        return _sessions[key]


def _new_session(settings: HttpSettings) -> requests.Session:
    retry = _CappedRetry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=settings.backoff_factor,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    retry.bounds = _Bounds(settings)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = settings.user_agent
    session.headers["Accept-Encoding"] = ACCEPT_ENCODING
    return session


def fetch_bytes(url: str, settings: HttpSettings) -> bytes:
    """A whole (small) response body, e.g. the metastore answer."""
    try:
        response = session_for(settings).get(url, timeout=settings.timeout)
    except requests.RequestException as exc:
        raise DownloadError(f"request failed: {exc}") from None
    if response.status_code != 200:
        raise DownloadError(f"HTTP {response.status_code} {response.reason}")
    return response.content


def changed_since(url: str, last_modified: str, settings: HttpSettings) -> str | None:
    """Ask with If-Modified-Since whether the file changed in place: its new Last-Modified, or None.

    The body of a 200 is not read here; the download fetches it."""
    headers = {"If-Modified-Since": last_modified}
    try:
        with session_for(settings).get(url, stream=True, timeout=settings.timeout, headers=headers) as response:
            if response.status_code == 304:
                return None
            if response.status_code != 200:
                raise DownloadError(f"HTTP {response.status_code} {response.reason}")
            new = response.headers.get("Last-Modified", "")
    except requests.RequestException as exc:
        raise DownloadError(f"request failed: {exc}") from None
    if not new:
        raise DownloadError("the server sent no Last-Modified, so a change cannot be told")
    return None if new == last_modified else new


def _is_html(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")


def _size(n: int) -> str:
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit:
            return f"{n / unit:.4g} {name}"
    return f"{n:,} bytes"


class _Bounds:
    """[download] bounds on one download: a rate floor over any min_rate_window seconds, max_bytes, the deadline.

    Checked at every read, however small: a server dripping a byte a second never trips the read timeout."""

    def __init__(self, settings: HttpSettings):
        self.settings = settings
        # On the monotonic clock, so that a wall clock stepped mid-run does not move it.
        self.deadline = settings.deadline and time.monotonic() + settings.deadline - time.time()
        self.restart(0)

    def restart(self, done: int) -> None:
        """A response begins: its rate is measured from now. Marks are (time, bytes), ~1/10 window apart."""
        self.marks = deque([(time.monotonic(), done)])

    def check_deadline(self, now: float) -> None:
        if self.deadline and now > self.deadline:
            raise DownloadError(f"the run's deadline passed (run_minutes = {self.settings.run_minutes:g})")

    def check_size(self, done: int) -> None:
        if self.settings.max_bytes and done > self.settings.max_bytes:
            raise DownloadError(f"larger than {_size(self.settings.max_bytes)} (max_bytes)")

    def check(self, done: int) -> None:
        s, now, marks = self.settings, time.monotonic(), self.marks
        self.check_deadline(now)
        if not s.min_rate:
            return
        window = s.min_rate_window
        while len(marks) > 1 and now - marks[1][0] >= window:
            marks.popleft()  # marks[0] stays the newest mark at least a window old
        since, then = marks[0]
        if now - since >= window and done - then < s.min_rate * window:
            raise DownloadError(
                f"slower than {s.min_rate / 1000:g} KB/s for {window:g} s (at {done:,} bytes; "
                "min_rate, min_rate_window)"
            )
        if now - marks[-1][0] >= window / 10:
            marks.append((now, done))


def download(
    url: str, dest: Path, settings: HttpSettings, progress: Callable[[int, int | None], None] | None = None, scan=None
) -> Downloaded:
    """Stream `url` into `dest`, decoded, checking status, type, emptiness, length and the [download] bounds;
    resume a cut-off unencoded body. `scan` (feed/reset) sees every decoded byte written, in order, as it streams."""
    try:
        return _download(url, dest, settings, progress, scan)
    except ContentCodingError as exc:
        raise DownloadError(str(exc)) from None


def _download(url, dest, settings, progress, scan) -> Downloaded:
    session, bounds = session_for(settings), _Bounds(settings)
    done = wire = 0  # decoded bytes written, and the body's bytes as sent
    total, validator, last_modified, content_type, decoder = None, "", "", "", Decoder(None)
    with open(dest, "wb") as out:
        for attempt in range(1, settings.body_attempts + 1):
            bounds.check_deadline(time.monotonic())
            resume = done > 0 and bool(validator)
            headers = {"Range": f"bytes={done}-", "If-Range": validator} if resume else {}
            try:
                response = session.get(url, stream=True, timeout=settings.timeout, headers=headers)
            except requests.RequestException as exc:  # the Session's Retry has already tried again
                raise DownloadError(f"request failed: {exc}") from None
            with response:
                coding = response.headers.get("Content-Encoding")
                if response.status_code == 200 or (response.status_code == 206 and not resume):
                    # From the start, with a new decoder: encoded and decoded bytes are never glued.
                    out.seek(0)
                    out.truncate()
                    done = wire = 0
                    if scan:
                        scan.reset()
                    decoder = Decoder(coding)
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    # Resuming is only safe against the same file, unencoded, that we started on.
                    ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
                    last_modified = response.headers.get("Last-Modified", "")
                    validator = last_modified if ranges and decoder.identity else ""
                elif response.status_code != 206:
                    raise DownloadError(f"HTTP {response.status_code} {response.reason}")
                elif not Decoder(coding).identity:
                    raise DownloadError(f"the resumed range came with Content-Encoding {coding!r}")
                content_type = response.headers.get("Content-Type", "")
                if _is_html(content_type):
                    raise DownloadError(f"server sent an HTML page ({content_type}), not a CSV")
                bounds.restart(done)
                try:
                    # read1 hands over whatever has arrived, so a body cut off mid-way keeps its prefix.
                    while chunk := response.raw.read1(CHUNK, decode_content=False):
                        wire += len(chunk)
                        for piece in decoder.decode(chunk):
                            if done == 0 and piece.lstrip().startswith(b"<"):
                                raise DownloadError("server sent markup (body starts with '<'), not a CSV")
                            bounds.check_size(done + len(piece))  # before writing: a bomb never reaches the disk
                            out.write(piece)
                            done += len(piece)
                            if scan:
                                scan.feed(piece)
                            if progress:
                                progress(done, total if decoder.identity else None)
                        bounds.check(done)
                except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                    if attempt == settings.body_attempts:
                        raise DownloadError(f"body cut off {attempt} times (at {wire:,} bytes): {exc}") from None
                    continue
            break
    if total is not None and wire != total:
        raise DownloadError(f"body length {wire} does not match Content-Length {total}")
    decoder.finish()
    if done == 0:
        raise DownloadError("empty response body")
    return Downloaded(done, last_modified, content_type, wire, decoder.coding)
