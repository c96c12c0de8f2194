"""Rewrite a CSV's header row to snake_case and stream the rest of the file through unchanged.

Only the header record is parsed (with the csv module, so quoted commas and line breaks are handled);
every byte after it is copied as is, so for a UTF-8 source the data is byte-identical to the download.
A source that is not valid UTF-8 is read as Windows-1252 and written as UTF-8.
"""

import codecs
import csv
import hashlib
import io
from dataclasses import dataclass, field
from typing import BinaryIO

from pipeline.naming import normalize_header

MAX_HEADER_BYTES = 1 << 20
CHUNK = 1 << 20
_BOM = codecs.BOM_UTF8


class HeaderError(ValueError):
    """The file has no usable header row."""


class _NotUtf8(Exception):
    pass


# Windows-1252 leaves five bytes undefined; map them as Latin-1 does rather than fail the whole file.
codecs.register_error("cp1252_as_latin1", lambda e: (e.object[e.start:e.end].decode("latin-1"), e.end))


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
        return [{"position": i, "original": o, "normalized": n}
                for i, (o, n) in enumerate(zip(self.original, self.normalized, strict=True), start=1)]


def _read_header_bytes(src: BinaryIO) -> bytes:
    """The raw bytes of the first CSV record, line ending included (a quoted field may span lines)."""
    buf = bytearray()
    while True:
        line = src.readline(MAX_HEADER_BYTES + 1 - len(buf))
        buf += line
        if len(buf) > MAX_HEADER_BYTES:
            raise HeaderError(f"header row is longer than {MAX_HEADER_BYTES} bytes")
        balanced = buf.count(b'"') % 2 == 0
        if not line and not balanced:
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


def _rewrite(src: BinaryIO, dst: BinaryIO, encoding: str) -> RewriteResult:
    raw_header = _read_header_bytes(src)
    if raw_header.startswith(_BOM):
        raw_header = raw_header[len(_BOM):]
    text = _decode(raw_header, encoding)
    original = next(csv.reader(io.StringIO(text, newline="")), [])
    if not any(name.strip() for name in original):
        raise HeaderError("file has no header row")
    ending = _line_ending(raw_header)
    result = RewriteResult(original, normalize_header(original), encoding, ending)

    out = io.StringIO(newline="")
    quoting = csv.QUOTE_ALL if text.startswith('"') else csv.QUOTE_MINIMAL
    csv.writer(out, lineterminator=ending, quoting=quoting).writerow(result.normalized)
    _write(dst, result, out.getvalue().encode("utf-8"))

    validator = codecs.getincrementaldecoder("utf-8")()
    last = b""
    while chunk := src.read(CHUNK):
        result.rows += chunk.count(b"\n")
        last = chunk[-1:]
        if encoding == "utf-8":
            # ASCII needs no check unless a multi-byte character straddles the chunk boundary.
            if not chunk.isascii() or validator.getstate()[0]:
                try:
                    validator.decode(chunk)
                except UnicodeDecodeError:
                    raise _NotUtf8 from None
            _write(dst, result, chunk)
        else:
            _write(dst, result, _decode(chunk, encoding).encode("utf-8"))
    if encoding == "utf-8" and validator.getstate()[0]:
        raise _NotUtf8
    if last not in (b"", b"\n"):
        result.rows += 1  # last record without a line ending
    result.sha256 = result._hash.hexdigest()
    return result


def rewrite_csv(src: BinaryIO, dst: BinaryIO) -> RewriteResult:
    """Write `src` to `dst` with a snake_case header; both are seekable binary files."""
    try:
        return _rewrite(src, dst, "utf-8")
    except _NotUtf8:
        src.seek(0)
        dst.seek(0)
        dst.truncate()
        return _rewrite(src, dst, "cp1252")
