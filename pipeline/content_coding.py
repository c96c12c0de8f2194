"""Streaming decoder for one HTTP Content-Encoding (identity, gzip, deflate) in bounded memory.

Standard library only. A decompression bomb never holds more than MAX_PIECE decoded bytes at once:
zlib is asked for at most that much per call, and the rest of the input waits in its unconsumed_tail.
"""

import zlib
from collections.abc import Iterator

DECODED = ("gzip", "deflate")  # what a client using this module may advertise in Accept-Encoding
MAX_PIECE = 1 << 20
_GZIP = 16 + zlib.MAX_WBITS
_ALIASES = {"": "identity", "identity": "identity", "gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class ContentCodingError(ValueError):
    """The body's coding is unsupported, or its compressed data is corrupt or incomplete."""


class Decoder:
    """Feed wire bytes to `decode`, which yields decoded pieces; call `finish` once the body has ended."""

    def __init__(self, content_encoding: str | None):
        coding = _ALIASES.get((content_encoding or "").strip().lower())
        if coding is None:
            raise ContentCodingError(
                f"the server sent Content-Encoding {content_encoding!r}, which this pipeline does not decode"
            )
        self.coding = coding
        self.identity = coding == "identity"
        self._zlib = zlib.decompressobj(_GZIP) if coding == "gzip" else zlib.decompressobj()
        # deflate should be zlib-wrapped (RFC 9110) but some servers send it raw: the first two bytes tell.
        self._sniff = b"" if coding == "deflate" else None

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self.identity:
            if data:
                yield data
            return
        if self._sniff is not None:
            self._sniff += data
            if len(self._sniff) < 2:
                return
            data, self._sniff = self._sniff, None
            try:
                zlib.decompressobj().decompress(data[:2])
            except zlib.error:
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            yield from self._inflate(data)
        except zlib.error as exc:
            raise ContentCodingError(f"the {self.coding} body is corrupt ({exc})") from None

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        while True:
            if self._zlib.eof and data:
                if self.coding != "gzip":
                    raise ContentCodingError(f"data after the end of the {self.coding} stream")
                self._zlib = zlib.decompressobj(_GZIP)  # concatenated gzip members are one valid gzip body
            piece = self._zlib.decompress(data, MAX_PIECE)
            if piece:
                yield piece
            data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
            # A full piece may leave output inside zlib even when all input is consumed: ask again.
            if not data and (self._zlib.eof or len(piece) < MAX_PIECE):
                return

    def finish(self) -> None:
        """Raise unless the compressed stream ended properly: a truncated body must not pass as complete."""
        if not self.identity and not self._zlib.eof:
            raise ContentCodingError(f"compressed body ends before the end of its {self.coding} stream (truncated)")
