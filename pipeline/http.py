"""HTTP for the pipeline: one retrying requests Session per process, and checked, resumable downloads.

Who retries what: urllib3's Retry (in the Session) retries failed connects, and 429/5xx answers, honouring
Retry-After. A body cut off mid-transfer is resumed here (Range + If-Range) or restarted. Luigi does not
retry a failed task within a run; the next run retries it.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

CHUNK = 1 << 20
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
    user_agent: str = "cms-hospitals-pipeline"

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)


@dataclass(frozen=True)
class Downloaded:
    bytes: int
    last_modified: str
    content_type: str


class _CappedRetry(Retry):
    """urllib3's Retry, but a server asking us to wait an hour does not stall the morning run."""

    def get_retry_after(self, response):
        wait = super().get_retry_after(response)
        return None if wait is None else min(wait, MAX_RETRY_AFTER)


_sessions: dict[tuple[int, HttpSettings], requests.Session] = {}


def session_for(settings: HttpSettings) -> requests.Session:
    """The process's Session (keyed by pid too: a forked child must not share its parent's sockets)."""
    key = (os.getpid(), settings)
    if key not in _sessions:
        retry = _CappedRetry(total=settings.retries, connect=settings.retries, read=settings.retries,
                             status=settings.retries, backoff_factor=settings.backoff_factor,
                             status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET", "HEAD"}),
                             respect_retry_after_header=True, raise_on_status=False)
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = settings.user_agent
        _sessions[key] = session
    return _sessions[key]


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


def download(url: str, dest: Path, settings: HttpSettings,
             progress: Callable[[int, int | None], None] | None = None, scan=None) -> Downloaded:
    """Stream `url` into `dest`, checking status, type, emptiness and length; resume a cut-off body.
    `scan` (feed/reset) sees every byte written, in order, while it streams."""
    session = session_for(settings)
    done, total, validator, last_modified, content_type, encoded = 0, None, "", "", "", False
    with open(dest, "wb") as out:
        for attempt in range(1, settings.body_attempts + 1):
            resume = done > 0 and bool(validator)
            headers = {"Range": f"bytes={done}-", "If-Range": validator} if resume else {}
            try:
                response = session.get(url, stream=True, timeout=settings.timeout, headers=headers)
            except requests.RequestException as exc:  # the Session's Retry has already tried again
                raise DownloadError(f"request failed: {exc}") from None
            with response:
                if response.status_code == 200 or (response.status_code == 206 and not resume):
                    out.seek(0)
                    out.truncate()
                    done = 0
                    if scan:
                        scan.reset()
                elif response.status_code != 206:
                    raise DownloadError(f"HTTP {response.status_code} {response.reason}")
                content_type = response.headers.get("Content-Type", "")
                if _is_html(content_type):
                    raise DownloadError(f"server sent an HTML page ({content_type}), not a CSV")
                if done == 0:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    # Resuming is only safe against the same file, unencoded, that we started on.
                    ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
                    encoded = response.headers.get("Content-Encoding", "identity") != "identity"
                    last_modified = response.headers.get("Last-Modified", "")
                    validator = last_modified if ranges and not encoded else ""
                try:
                    # read1 hands over whatever has arrived, so a body cut off mid-way keeps its prefix.
                    while chunk := response.raw.read1(CHUNK):
                        if done == 0 and chunk.lstrip().startswith(b"<"):
                            raise DownloadError("server sent markup (body starts with '<'), not a CSV")
                        out.write(chunk)
                        done += len(chunk)
                        if scan:
                            scan.feed(chunk)
                        if progress:
                            progress(done, total)
                except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                    if attempt == settings.body_attempts:
                        raise DownloadError(f"body cut off {attempt} times (at {done:,} bytes): {exc}") from None
                    continue
            break
    if done == 0:
        raise DownloadError("empty response body")
    if total is not None and not encoded and done != total:
        raise DownloadError(f"body length {done} does not match Content-Length {total}")
    return Downloaded(done, last_modified, content_type)
