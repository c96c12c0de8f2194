"""The Content-Encoding decoder: gzip and deflate in any chunking, bounded pieces, truncation and refusals."""

import gzip
import zlib

import pytest

from pipeline.content_coding import MAX_PIECE, ContentCodingError, Decoder
from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows

BODY = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(2000, 5))  # ~97 KB, ~23 KB gzipped
TRUNCATED = "compressed body ends before the end of its gzip stream (truncated)"


def deflate(data: bytes, wbits: int = zlib.MAX_WBITS) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def decode_all(coding: str | None, data: bytes, step: int | None = None) -> bytes:
    decoder = Decoder(coding)
    step = step or len(data) or 1
    out = b"".join(piece for i in range(0, len(data), step) for piece in decoder.decode(data[i : i + step]))
    decoder.finish()
    return out


# -- the decoder ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", [None, "", "identity", "Identity "])
def test_identity_passes_bytes_through(coding):
    assert decode_all(coding, BODY, 1000) == BODY
    assert Decoder(coding).identity and Decoder(coding).coding == "identity"


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "GZIP"])
@pytest.mark.parametrize("step", [1, 7, 4096, None])
def test_gzip_in_any_chunking(coding, step):
    assert decode_all(coding, gzip.compress(BODY), step) == BODY
    assert Decoder(coding).coding == "gzip"


def test_concatenated_gzip_members_are_one_body():
    data = gzip.compress(BODY[:1000]) + gzip.compress(b"") + gzip.compress(BODY[1000:])
    assert decode_all("gzip", data) == decode_all("gzip", data, 3) == BODY


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
@pytest.mark.parametrize("step", [1, 2, None])
def test_deflate_zlib_wrapped_or_raw(wbits, step):
    assert decode_all("deflate", deflate(BODY, wbits), step) == BODY


def test_a_decompression_bomb_is_decoded_in_bounded_pieces():
    bomb = deflate(b"0" * (64 * MAX_PIECE), 16 + zlib.MAX_WBITS)  # 64 MiB from ~64 KB
    decoder, total = Decoder("gzip"), 0
    for piece in decoder.decode(bomb):
        assert len(piece) <= MAX_PIECE
        total += len(piece)
    decoder.finish()
    assert total == 64 * MAX_PIECE


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        ("gzip", gzip.compress(BODY)),
        ("deflate", deflate(BODY)),
        ("deflate", deflate(BODY, -zlib.MAX_WBITS)),
        ("deflate", b"x"),
    ],
)
def test_a_truncated_stream_fails_at_finish(coding, data):
    decoder = Decoder(coding)
    decoded = b"".join(decoder.decode(data[: len(data) // 2] or data))
    assert BODY.startswith(decoded)
    with pytest.raises(ContentCodingError, match=rf"before the end of its {coding} stream \(truncated\)"):
        decoder.finish()


def test_corrupt_data_and_trailing_data_fail():
    with pytest.raises(ContentCodingError, match="the gzip body is corrupt"):
        list(Decoder("gzip").decode(b"not gzip at all"))
    with pytest.raises(ContentCodingError, match="data after the end of the deflate stream"):
        list(Decoder("deflate").decode(deflate(b"a,b\n") + b"junk"))


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip", "gzip, br"])
def test_other_codings_are_refused_by_name(coding):
    with pytest.raises(ContentCodingError) as info:
        Decoder(coding)
    assert str(info.value) == f"the server sent Content-Encoding {coding!r}, which this pipeline does not decode"
