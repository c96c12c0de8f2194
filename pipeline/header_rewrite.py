"""Rewrite a CSV's header row to snake_case and stream the rest of the file through unchanged.

Only the header record is parsed (with the csv module, so quoted commas and line breaks are handled);
every byte after it is copied as is, so for a UTF-8 source the data is byte-identical to the download.
A source that is not valid UTF-8 is read as Windows-1252 and written as UTF-8; bytes that are not text at all
(compressed, an archive, a PDF, UTF-16, anything with NUL) raise `NotText` instead of being "transcoded".

Two ways to the same output: `SourceScan` is fed the bytes while they download and works out the new header,
the output's sha256, size and rows, so `copy_normalized` only writes the header and lets the kernel copy the
rest; `rewrite_csv` does everything from the file alone (no scan, or a source that is not UTF-8).
"""

import codecs
import csv
import hashlib
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import BinaryIO

from pipeline.naming import normalize_header

MAX_HEADER_BYTES = 1 << 20
CHUNK = 1 << 20
_BOM = codecs.BOM_UTF8


class HeaderError(ValueError):
    """The file has no usable header row."""


class NotText(ValueError):
    """The bytes are not a text CSV: refused rather than read as Windows-1252 garbage."""


class _NotUtf8(Exception):
    pass


_COMPRESSED = "compressed data ({}) that the server did not label"
_UTF16 = "UTF-16 text (byte order mark {}), which is not read; expected UTF-8"
# What a file's first bytes say it is (a UTF-8 BOM is text and is stripped). bzip2's block-size digit keeps a
# header that merely starts with "BZh" a CSV.
_SIGNATURES = {
    b"\x1f\x8b": _COMPRESSED.format("gzip"),
    b"\x28\xb5\x2f\xfd": _COMPRESSED.format("zstd"),
    **{b"BZh%d" % level: _COMPRESSED.format("bzip2") for level in range(1, 10)},
    b"\xfd7zXZ\x00": _COMPRESSED.format("xz"),
    b"PK\x03\x04": "a ZIP archive, not a CSV",
    b"%PDF": "a PDF document, not a CSV",
    b"\xff\xfe": _UTF16.format("FF FE, little-endian"),
    b"\xfe\xff": _UTF16.format("FE FF, big-endian"),
}
_SIGNATURE_BYTES = max(map(len, _SIGNATURES))
# C0 controls but tab, CR, LF, and DEL: the same bytes in UTF-8 and Windows-1252, so raw bytes can be checked.
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Quoted fields are skipped whole (an unterminated one runs to the end); a CR that is not a CRLF's is bare, but CRs
# doubled before an LF (CRCRLF, a text-mode copy of a CRLF file) are read as before.
_QUOTED_OR_BARE_CR = re.compile(rb'"[^"]*(?:"|\Z)|\r(?!\r*\n)')


# Windows-1252 leaves five bytes undefined; map them as Latin-1 does rather than fail the whole file.
def _as_latin1(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("cp1252_as_latin1", _as_latin1)


@dataclass
class RewriteResult:
    original: list[str]
    normalized: list[str]
    encoding: str
    line_ending: str
    rows: int = 0
    bytes: int = 0
    sha256: str = ""
    _hash: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)

    def header_map(self) -> list[dict]:
        return [
            {"position": i, "original": o, "normalized": n}
            for i, (o, n) in enumerate(zip(self.original, self.normalized, strict=True), start=1)
        ]


class _Utf8Check:
    """UTF-8 validation chunk by chunk, for a character may straddle two chunks."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    @property
    def pending(self) -> bool:
        """A multi-byte character is still open: at the end of the file, that makes it invalid."""
        return bool(self._decoder.getstate()[0])

    def valid(self, chunk: bytes) -> bool:
        if chunk.isascii() and not self.pending:  # the common case costs no decoding
            return True
        try:
            self._decoder.decode(chunk)
        except UnicodeDecodeError:
            return False
        return True


def _rows(line_breaks: int, last_byte: bytes) -> int:
    """Records after the header: its line breaks, plus a last record without one."""
    return line_breaks + (last_byte not in (b"", b"\n"))


def _refuse_signature(start: bytes) -> None:
    """NotText if the file starts like a known binary format; a start shorter than a signature cannot match it."""
    for magic, what in _SIGNATURES.items():
        if start.startswith(magic):
            raise NotText(what)


def _refuse_nul(data: bytes, offset: int) -> None:
    # Text has no NUL, and find is a memchr: cheap enough for every byte of the file.
    if (at := data.find(b"\x00")) != -1:
        raise NotText(f"binary file, not a CSV (NUL byte at offset {offset + at})")


def _refuse_odd_header(raw: bytes | bytearray) -> None:
    """NotText for a control character in the header row; HeaderError when its record ends in a bare CR."""
    cr = next((m.start() for m in _QUOTED_OR_BARE_CR.finditer(raw) if m[0] == b"\r"), -1)
    if control := _CONTROL.search(raw, 0, len(raw) if cr == -1 else cr):  # a bare CR ends the header row
        raise NotText(f"binary file, not a CSV (control character U+{control[0][0]:04X} in the header row)")
    if cr != -1:
        raise HeaderError("line endings are bare CR (classic Mac OS); expected CRLF or LF")


def _read_header_bytes(src: BinaryIO) -> bytes:
    """The raw bytes of the first CSV record, line ending included (a quoted field may span lines)."""
    buf = bytearray()
    while True:
        line = src.readline(MAX_HEADER_BYTES + 1 - len(buf))
        _refuse_nul(line, len(buf))
        buf += line
        if len(buf) > MAX_HEADER_BYTES:
            _refuse_odd_header(buf.rstrip(b"\r"))  # a CR at the cut may be a CRLF's
            raise HeaderError(f"header row is longer than {MAX_HEADER_BYTES} bytes")
        balanced = buf.count(b'"') % 2 == 0
        if not line and not balanced:
            _refuse_odd_header(buf)
            raise HeaderError("header row has an unterminated quoted field")
        if not line or (line.endswith(b"\n") and balanced):
            return bytes(buf)


def _line_ending(header: bytes) -> str:
    if header.endswith(b"\r\n"):
        return "\r\n"
    return "\n" if header.endswith(b"\n") else ""


def _decode(data: bytes, encoding: str) -> str:
    if encoding == "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _NotUtf8 from None
    return data.decode("cp1252", errors="cp1252_as_latin1")


def _write(dst: BinaryIO, result: RewriteResult, data: bytes) -> None:
    dst.write(data)
    result._hash.update(data)
    result.bytes += len(data)


def _new_header(raw_header: bytes, encoding: str) -> tuple[bytes, list[str], list[str], str]:
    """(the snake_case header line, original names, new names, line ending) from the raw first record."""
    if raw_header.startswith(_BOM):
        raw_header = raw_header[len(_BOM) :]
    _refuse_odd_header(raw_header)
    text = _decode(raw_header, encoding)
    original = next(csv.reader(io.StringIO(text, newline="")), [])
    if not any(name.strip() for name in original):
        raise HeaderError("file has no header row")
    ending = _line_ending(raw_header)
    normalized = normalize_header(original)
    out = io.StringIO(newline="")
    quoting = csv.QUOTE_ALL if text.startswith('"') else csv.QUOTE_MINIMAL  # keep the source's style
    csv.writer(out, lineterminator=ending, quoting=quoting).writerow(normalized)  # type: ignore[arg-type]
    return out.getvalue().encode("utf-8"), original, normalized, ending


def _rewrite(src: BinaryIO, dst: BinaryIO, encoding: str) -> RewriteResult:
    raw_header = _read_header_bytes(src)
    header, original, normalized, ending = _new_header(raw_header, encoding)
    result = RewriteResult(original, normalized, encoding, ending)
    _write(dst, result, header)

    utf8 = _Utf8Check()
    line_breaks, last, offset = 0, b"", len(raw_header)
    while chunk := src.read(CHUNK):
        _refuse_nul(chunk, offset)
        offset += len(chunk)
        line_breaks += chunk.count(b"\n")
        last = chunk[-1:]
        if encoding == "utf-8":
            if not utf8.valid(chunk):
                raise _NotUtf8
            _write(dst, result, chunk)
        else:
            _write(dst, result, _decode(chunk, encoding).encode("utf-8"))
    if encoding == "utf-8" and utf8.pending:
        raise _NotUtf8
    result.rows = _rows(line_breaks, last)
    result.sha256 = result._hash.hexdigest()
    return result


def rewrite_csv(src: BinaryIO, dst: BinaryIO) -> RewriteResult:
    """Write `src` to `dst` with a snake_case header; both are seekable binary files. Raises NotText for a file
    that is not text (the first pass finds a NUL before any invalid UTF-8 byte, the Windows-1252 one after it)."""
    _refuse_signature(src.read(_SIGNATURE_BYTES))
    src.seek(0)
    try:
        return _rewrite(src, dst, "utf-8")
    except _NotUtf8:
        src.seek(0)
        dst.seek(0)
        dst.truncate()
        return _rewrite(src, dst, "cp1252")


def _header_record_end(buf: bytes | bytearray) -> int | None:
    """Offset just past the first record's line ending, once the buffer holds all of it."""
    start = 0
    while (newline := buf.find(b"\n", start)) != -1:
        if buf.count(b'"', 0, newline + 1) % 2 == 0:
            return newline + 1
        start = newline + 1
    return None


class SourceScan:
    """Fed a download chunk by chunk (call `reset` when it starts over). `result()` says what the normalized
    file will be, or None when the file must go through `rewrite_csv` (no usable header, not UTF-8).
    `feed` raises NotText as soon as the bytes show they are not text, so the download fails there.

    With `out`, the normalized file is written there as the download streams (the new header, then the data
    bytes): it is whole exactly when `result()` is not None, and then it is a copy Normalize need not make."""

    def __init__(self, out: BinaryIO | None = None):
        self._out = out
        self.reset()

    def reset(self) -> None:
        if self._out:
            self._out.seek(0)
            self._out.truncate()
        self._head = bytearray()
        self._start = b""
        self._utf8 = _Utf8Check()
        self._hash = hashlib.sha256()
        self._last = b""
        self.header: bytes | None = None
        self.usable = True
        self.data_offset = self.source_bytes = self.line_breaks = self.bytes = 0

    def feed(self, chunk: bytes) -> None:
        if self.source_bytes < _SIGNATURE_BYTES:  # a signature may come in over several small chunks
            self._start = (self._start + chunk[:_SIGNATURE_BYTES])[:_SIGNATURE_BYTES]
            _refuse_signature(self._start)
        _refuse_nul(chunk, self.source_bytes)  # also once unusable: fail the download, not a later rewrite
        self.source_bytes += len(chunk)
        if not self.usable:
            return
        if self.header is None:
            self._head += chunk
            end = _header_record_end(self._head)
            if end is None or end > MAX_HEADER_BYTES:
                # Too long a header is left to rewrite_csv, which reports it.
                self.usable = end is None and len(self._head) <= MAX_HEADER_BYTES
                return
            try:
                self.header, self.original, self.normalized, self.line_ending = _new_header(
                    bytes(self._head[:end]), "utf-8"
                )
            except (HeaderError, _NotUtf8, csv.Error):
                self.usable = False
                return
            self.data_offset, chunk, self._head = end, bytes(self._head[end:]), bytearray()
            self._add(self.header)
        if not chunk:
            return
        if not self._utf8.valid(chunk):
            self.usable = False
            return
        self.line_breaks += chunk.count(b"\n")
        self._last = chunk[-1:]
        self._add(chunk)

    def _add(self, data: bytes) -> None:
        """Bytes of the normalized file, in order."""
        self._hash.update(data)
        self.bytes += len(data)
        if self._out:
            self._out.write(data)

    def record(self) -> dict:
        """What source.scan.json keeps: the result, or at least the source's size (by which later runs know the
        source is whole) when the file must go through rewrite_csv."""
        return self.result() or {"source_bytes": self.source_bytes}

    def result(self) -> dict | None:
        if not self.usable or self.header is None or self._utf8.pending:
            return None
        return {
            "source_bytes": self.source_bytes,
            "data_offset": self.data_offset,
            "header": self.header.decode("utf-8"),
            "original": self.original,
            "normalized": self.normalized,
            "line_ending": self.line_ending,
            "rows": _rows(self.line_breaks, self._last),
            "bytes": self.bytes,
            "sha256": self._hash.hexdigest(),
        }


def scan_record(src: BinaryIO) -> dict:
    """A whole file's SourceScan record, for a source whose scan was lost."""
    scan = SourceScan()
    while chunk := src.read(CHUNK):
        scan.feed(chunk)
    return scan.record()


def _copy_rest(src: BinaryIO, dst: BinaryIO) -> None:
    """The rest of src onto dst; in the kernel where the OS can (Linux copy_file_range), else in chunks."""
    dst.flush()
    try:
        while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
            pass
    except (AttributeError, OSError):  # not Linux, or a filesystem that refuses: positions are unchanged
        shutil.copyfileobj(src, dst, CHUNK)


def scanned_result(scan: dict) -> RewriteResult:
    """What the normalized file of a scan is (its columns, rows, size and hash), as `rewrite_csv` would say."""
    return RewriteResult(
        scan["original"], scan["normalized"], "utf-8", scan["line_ending"], scan["rows"], scan["bytes"], scan["sha256"]
    )


def is_scanned(scan: dict, source_bytes: int, normalized_bytes: int) -> bool:
    """Whether files of these sizes are the source and the normalized file (a SourceScan's `out`) it scanned;
    a copy a kill cut short is smaller."""
    return source_bytes == scan["source_bytes"] and normalized_bytes == scan["bytes"]


def copy_normalized(src: BinaryIO, dst: BinaryIO, scan: dict) -> RewriteResult:
    """The normalized file from a download's scan: the new header, then the source's data bytes as they are."""
    src.seek(0, os.SEEK_END)
    if src.tell() != scan["source_bytes"]:
        raise ValueError("the download changed after it was scanned")
    src.seek(scan["data_offset"])
    header = scan["header"].encode("utf-8")
    dst.write(header)
    _copy_rest(src, dst)
    dst.seek(0, os.SEEK_END)
    if dst.tell() != scan["bytes"]:
        raise ValueError(f"wrote {dst.tell()} bytes, the scan expected {scan['bytes']}")
    return scanned_result(scan)
