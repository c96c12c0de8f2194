import bz2
import codecs
import csv
import gzip
import hashlib
import io
import lzma
import re
import zipfile

import pytest

from pipeline.header_rewrite import (
    MAX_HEADER_BYTES,
    HeaderError,
    NotText,
    SourceScan,
    copy_normalized,
    is_scanned,
    rewrite_csv,
    scanned_result,
)
from tests.fixtures import HEADER_OAS_CAHPS, HEADER_UNQUOTED_LF, HEADER_WITH_COMMA, csv_bytes, quoted_rows


def rewrite(data: bytes):
    dst = io.BytesIO()
    result = rewrite_csv(io.BytesIO(data), dst)
    return dst.getvalue(), result


def split_header(data: bytes, ending: bytes) -> tuple[bytes, bytes]:
    head, _, rest = data.partition(ending)
    return head, rest


def test_quoted_crlf_header_keeps_its_style_and_data_is_byte_identical():
    source = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(50, 5))
    out, result = rewrite(source)
    head, rest = split_header(out, b"\r\n")
    assert head == (
        b'"facility_id","facility_name","city_town",'
        b'"patients_rating_of_the_facility_linear_mean_score","number_of_sampled_patients"'
    )
    assert hashlib.sha256(rest).digest() == hashlib.sha256(split_header(source, b"\r\n")[1]).digest()
    assert result.rows == 50 and result.line_ending == "\r\n" and result.encoding == "utf-8"
    assert result.sha256 == hashlib.sha256(out).hexdigest() and result.bytes == len(out)


def test_unquoted_lf_header_stays_unquoted_lf():
    source = csv_bytes(HEADER_UNQUOTED_LF, ["A,1 Main St,Dothan,AL,36301,31.2,-85.3"], newline="\n")
    out, result = rewrite(source)
    assert out == b"name,addr,city,state,zip,lat,lon\nA,1 Main St,Dothan,AL,36301,31.2,-85.3\n"
    assert result.line_ending == "\n" and result.rows == 1


def test_a_comma_inside_a_quoted_header_field_is_one_column():
    out, result = rewrite(csv_bytes(HEADER_WITH_COMMA, ['"1","A","M","x, y","2025"']))
    assert result.normalized == ["facility_id", "facility_name", "measure_id", "footnote_if_any", "start_date"]
    assert list(csv.reader(io.StringIO(out.decode(), newline="")))[1] == ["1", "A", "M", "x, y", "2025"]


def test_a_quoted_header_field_may_span_lines():
    out, result = rewrite(b'"Facility ID","Long\r\nName"\r\n"1","x"\r\n')
    assert result.original == ["Facility ID", "Long\r\nName"]
    assert out == b'"facility_id","long_name"\r\n"1","x"\r\n'


def test_utf8_bom_is_stripped_and_output_has_none():
    out, result = rewrite(b"\xef\xbb\xbf" + csv_bytes('"Facility ID","Score"', ['"1","2"']))
    assert out == b'"facility_id","score"\r\n"1","2"\r\n'
    assert result.original[0] == "Facility ID"


def test_non_ascii_utf8_is_copied_unchanged():
    source = csv_bytes('"Ville","Prénom"', ['"Montréal","Zoë"'] * 3)
    out, result = rewrite(source)
    assert out == b'"ville","prenom"\r\n' + '"Montréal","Zoë"\r\n'.encode() * 3
    assert result.encoding == "utf-8"


def test_non_utf8_source_is_read_as_windows_1252_and_written_as_utf8():
    source = '"Café","Name"\r\n"1","Zoë – ok"\r\n'.encode("cp1252") + b'"\x81","x"\r\n'
    out, result = rewrite(source)
    assert result.encoding == "cp1252"
    assert out.decode("utf-8") == '"cafe","name"\r\n"1","Zoë – ok"\r\n"\x81","x"\r\n'


def test_invalid_utf8_late_in_a_large_file_switches_the_whole_file(monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.CHUNK", 64)
    source = csv_bytes('"A","B"', ['"é","1"'] * 40) + '"ü","2"\r\n'.encode("cp1252")
    out, result = rewrite(source)
    assert result.encoding == "cp1252"
    assert out.decode("utf-8").endswith('"ü","2"\r\n') and result.rows == 41


def test_multibyte_character_split_across_chunks_is_still_utf8(monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.CHUNK", 7)
    source = csv_bytes('"A"', ['"ééééé"'] * 20)
    out, result = rewrite(source)
    assert result.encoding == "utf-8" and out.endswith(source[len(b'"A"\r\n') :])


def test_header_only_file_and_missing_final_newline():
    assert rewrite(b'"A B"')[0] == b'"a_b"'
    out, result = rewrite(b'"A"\r\n"1"\r\n"2"')
    assert out == b'"a"\r\n"1"\r\n"2"' and result.rows == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no header row"),
        (b'\r\n"1","2"\r\n', "no header row"),
        (b'"A,B\r\n1,2\r\n', "unterminated"),
    ],
)
def test_unusable_header_is_an_error(data, message):
    with pytest.raises(HeaderError, match=message):
        rewrite(data)


def test_header_longer_than_the_limit_is_an_error(monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.MAX_HEADER_BYTES", 1000)
    with pytest.raises(HeaderError, match="longer than"):
        rewrite((",".join(f'"Column {i}"' for i in range(200)) + "\r\n").encode())


def test_header_map_lists_each_original_and_new_name_in_order():
    _, result = rewrite(csv_bytes('"Score","score","","Rate (%)"', []))
    assert result.header_map() == [
        {"position": 1, "original": "Score", "normalized": "score"},
        {"position": 2, "original": "score", "normalized": "score_2"},
        {"position": 3, "original": "", "normalized": "column_3"},
        {"position": 4, "original": "Rate (%)", "normalized": "rate_percent"},
    ]


SAMPLES = [
    csv_bytes(HEADER_OAS_CAHPS, quoted_rows(50, 5)),
    csv_bytes(HEADER_UNQUOTED_LF, ["A,1 Main St,Dothan,AL,36301,31.2,-85.3"] * 3, newline="\n"),
    csv_bytes(HEADER_WITH_COMMA, ['"1","A","M","x, y","2025"']),
    b"\xef\xbb\xbf" + csv_bytes('"Facility ID","Score"', ['"1","2"']),
    b'"Facility ID","Long\r\nName"\r\n"1","x"\r\n',
    csv_bytes('"Ville","Prénom"', ['"Montréal","Zoë"'] * 30),
    b'"A"\r\n"1"\r\n"2"',
    b'"Long\rName","B"\r\n"1","x"\r\n',  # a CR inside a quoted header field is legal
    b'"A","B"\r\r\n"1","2"\r\r\n',  # CRCRLF (a doubled CRLF) is read as before, not "bare CR"
    b'"A\tB","C"\r\n"1","\x0c"\r\n',  # tab in the header and control characters in data are text
    b"PK\r\n1\r\n",  # shorter than the ZIP signature it starts like
    b"BZh,x\r\n1,2\r\n",  # "BZh" without bzip2's block-size digit
]


@pytest.mark.parametrize("data", SAMPLES)
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_scan_while_downloading_then_kernel_copy_equals_the_full_rewrite(data, chunk, tmp_path):
    scan = SourceScan()
    scan.feed(b"garbage from an attempt that was restarted")
    scan.reset()
    for start in range(0, len(data), chunk):
        scan.feed(data[start : start + chunk])
    found = scan.result()
    assert found is not None
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "w+b") as dst:
        fast = copy_normalized(src, dst, found)
    expected, full = rewrite(data)
    assert (tmp_path / "dst").read_bytes() == expected
    assert (fast.normalized, fast.rows, fast.bytes, fast.sha256, fast.line_ending) == (
        full.normalized,
        full.rows,
        full.bytes,
        full.sha256,
        full.line_ending,
    )


@pytest.mark.parametrize("data", SAMPLES)
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_scan_writes_the_normalized_file_as_it_streams_and_starts_over_on_reset(data, chunk, tmp_path):
    with open(tmp_path / "staged", "wb") as out:
        scan = SourceScan(out)
        scan.feed(b'"Garbage","From"\r\n"an attempt that was restarted"\r\n')
        scan.reset()
        for start in range(0, len(data), chunk):
            scan.feed(data[start : start + chunk])
    (tmp_path / "src").write_bytes(data)
    expected, full = rewrite(data)
    assert (tmp_path / "staged").read_bytes() == expected
    assert is_scanned(scan.result(), len(data), len(expected))
    fast = scanned_result(scan.result())
    fields = ("original", "normalized", "encoding", "line_ending", "rows", "bytes", "sha256")
    assert [getattr(fast, f) for f in fields] == [getattr(full, f) for f in fields]


def test_only_the_scanned_sizes_are_the_scanned_files():
    data = csv_bytes('"Facility ID"', ['"1"', '"2"'])
    scan = SourceScan()
    scan.feed(data)
    found = scan.result()
    normalized = len(rewrite(data)[0])
    assert is_scanned(found, len(data), normalized)
    assert not is_scanned(found, len(data) + 4, normalized)  # the source changed
    assert not is_scanned(found, len(data), normalized - 1)  # a copy a kill cut short


@pytest.mark.parametrize(
    "data",
    [
        '"Café"\r\n"Zoë"\r\n'.encode("cp1252"),  # not UTF-8: rewrite_csv must transcode
        csv_bytes('"A"', ['"1"']) + b"\xff",  # invalid UTF-8 late in the data
        b'"Header only, no newline"',  # no complete first record
        b'\r\n"1"\r\n',  # no header row: rewrite_csv reports it
    ],
)
def test_scan_declines_what_only_the_full_rewrite_can_handle(data):
    scan = SourceScan()
    scan.feed(data)
    assert scan.result() is None


def test_kernel_copy_refuses_a_source_that_changed_after_the_scan(tmp_path):
    data = csv_bytes('"A"', ['"1"'])
    scan = SourceScan()
    scan.feed(data)
    (tmp_path / "src").write_bytes(data + b'"2"\r\n')
    with (
        open(tmp_path / "src", "rb") as src,
        open(tmp_path / "dst", "w+b") as dst,
        pytest.raises(ValueError, match="changed"),
    ):
        copy_normalized(src, dst, scan.result())


@pytest.mark.parametrize("chunk", [100, 10_000, 1 << 20])
def test_scan_leaves_a_header_over_the_limit_to_the_full_rewrite(chunk, monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.MAX_HEADER_BYTES", 1000)
    data = ",".join(f'"Column {i}"' for i in range(200)).encode() + b"\r\n1\r\n"
    scan = SourceScan()
    for start in range(0, len(data), chunk):
        scan.feed(data[start : start + chunk])
    assert scan.result() is None


def scan_in_chunks(data: bytes, chunk: int) -> SourceScan:
    scan = SourceScan()
    for start in range(0, len(data), chunk):
        scan.feed(data[start : start + chunk])
    return scan


def _zip(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Hospital_General_Information.csv", data)
    return out.getvalue()


TEXT = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(200, 5))
UTF16 = "UTF-16 text (byte order mark {}), which is not read; expected UTF-8"
NOT_TEXT = [
    (gzip.compress(TEXT), "compressed data (gzip) that the server did not label"),
    (b"\x28\xb5\x2f\xfd\x24\x0b\x59\x00\x00" + TEXT, "compressed data (zstd) that the server did not label"),
    (bz2.compress(TEXT), "compressed data (bzip2) that the server did not label"),
    (lzma.compress(TEXT), "compressed data (xz) that the server did not label"),  # its 6th byte is a NUL
    (_zip(TEXT), "a ZIP archive, not a CSV"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "a PDF document, not a CSV"),
    (codecs.BOM_UTF16_LE + TEXT.decode().encode("utf-16-le"), UTF16.format("FF FE, little-endian")),
    (codecs.BOM_UTF16_BE + TEXT.decode().encode("utf-16-be"), UTF16.format("FE FF, big-endian")),
    (
        b'"Facility ID\x01","Score"\r\n"1","2"\r\n',
        "binary file, not a CSV (control character U+0001 in the header row)",
    ),
    (
        b'"Caf\xe9","\x1b[0m"\r\n"1","2"\r\n',  # not UTF-8 either: caught before any Windows-1252 reading
        "binary file, not a CSV (control character U+001B in the header row)",
    ),
    (b"A,B\x7f\n1,2\n", "binary file, not a CSV (control character U+007F in the header row)"),
    (b'\xef\xbb\xbf"A","B\x00"\r\n', "binary file, not a CSV (NUL byte at offset 9)"),  # of the file, BOM included
]


@pytest.mark.parametrize(("data", "message"), NOT_TEXT)
def test_rewrite_refuses_bytes_that_are_not_text(data, message):
    with pytest.raises(NotText, match=re.escape(message)):
        rewrite(data)


@pytest.mark.parametrize(("data", "message"), NOT_TEXT)
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4096])
def test_scan_refuses_bytes_that_are_not_text_while_they_download(data, message, chunk):
    with pytest.raises(NotText, match=re.escape(message)):
        scan_in_chunks(data, chunk)


def test_scan_names_a_signature_as_soon_as_it_is_complete():
    scan = SourceScan()
    scan.feed(b"\x1f")  # one byte decides nothing
    with pytest.raises(NotText, match=re.escape("compressed data (gzip)")):
        scan.feed(b"\x8b\x08\x00")
    scan.reset()
    for byte in b"\xfd7zX":
        scan.feed(bytes([byte]))
    with pytest.raises(NotText, match=re.escape("compressed data (xz)")):  # not "NUL byte at offset 5"
        scan.feed(b"Z\x00")


def test_not_text_is_a_value_error_and_no_header_error():
    assert issubclass(NotText, ValueError) and not issubclass(NotText, HeaderError)


def _with_nul(data: bytes, at: int) -> bytes:
    return data[:at] + b"\x00" + data[at:]


BIG = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(5000, 5))  # about 200 kB
NUL_AT = len(BIG) - 1000


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_rewrite_refuses_a_nul_far_into_the_data(chunk, monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.CHUNK", chunk)
    with pytest.raises(NotText, match=re.escape(f"binary file, not a CSV (NUL byte at offset {NUL_AT})")):
        rewrite(_with_nul(BIG, NUL_AT))


def test_rewrite_refuses_a_nul_after_the_switch_to_windows_1252():
    data = _with_nul(BIG[:100] + b"\xe9" + BIG[100:], NUL_AT)
    with pytest.raises(NotText, match=re.escape(f"(NUL byte at offset {NUL_AT})")):
        rewrite(data)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_scan_refuses_a_nul_far_into_the_data_in_the_chunk_that_holds_it(chunk):
    scan = SourceScan()
    data = _with_nul(BIG, NUL_AT)
    with pytest.raises(NotText, match=re.escape(f"binary file, not a CSV (NUL byte at offset {NUL_AT})")):
        for start in range(0, len(data), chunk):
            scan.feed(data[start : start + chunk])
    assert scan.source_bytes == NUL_AT // chunk * chunk


def test_scan_refuses_a_nul_even_once_the_file_is_left_to_the_full_rewrite():
    scan = SourceScan()
    scan.feed('"Café"\r\n'.encode("cp1252"))  # not UTF-8: unusable, but still checked
    assert not scan.usable
    with pytest.raises(NotText, match=re.escape("(NUL byte at offset 10)")):
        scan.feed(b"12\x00")


WINDOWS_1252 = b'"Facility ID","Name"\r\n"1","Caf\xe9 \x93Hope\x94"\r\n'


def test_windows_1252_is_still_read_as_before():
    out, result = rewrite(WINDOWS_1252)
    assert result.encoding == "cp1252"
    assert out.decode("utf-8") == '"facility_id","name"\r\n"1","Café “Hope”"\r\n'


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_scan_leaves_windows_1252_to_the_full_rewrite_without_raising(chunk):
    assert scan_in_chunks(WINDOWS_1252, chunk).result() is None


BARE_CR = "line endings are bare CR (classic Mac OS); expected CRLF or LF"
MAC = [
    b'"Facility ID","Score"\r"1","2"\r"3","4"\r',
    b"Facility ID,Score\r1,2\r3,4",
    b'"Long\rName","Score"\r"1","5"" pipe"\r',  # CR in a quoted field is fine; the record end is not
    b'"A","B"\r"1","x\r\ny"\r\n',  # an LF inside a later quoted field: the header record still ends in CR
    b'"Header only"\r',
    b'"Facility ID","Pipe"\r"1",5" pipe\r',  # odd quotes: today's "unterminated quoted field"
    b'"A","B"\r"1","\x0c"\r',  # a control character after the bare CR is in a data row, not the header's
]


@pytest.mark.parametrize("data", MAC)
def test_rewrite_refuses_bare_cr_line_endings_and_says_so(data):
    with pytest.raises(HeaderError, match=re.escape(BARE_CR)):
        rewrite(data)


@pytest.mark.parametrize("data", MAC)
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_scan_leaves_bare_cr_to_the_full_rewrite(data, chunk):
    assert scan_in_chunks(data, chunk).result() is None


MAC_BIG = b'"Facility ID","Score"\r' + b'"123456","7"\r' * (MAX_HEADER_BYTES // 12)  # no LF at all


def test_rewrite_says_bare_cr_not_too_long_for_a_big_file_without_lf():
    assert len(MAC_BIG) > MAX_HEADER_BYTES and b"\n" not in MAC_BIG
    with pytest.raises(HeaderError, match=re.escape(BARE_CR)):
        rewrite(MAC_BIG)


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_scan_leaves_a_big_file_without_lf_to_the_full_rewrite(chunk):
    scan = scan_in_chunks(MAC_BIG, chunk)
    assert not scan.usable and scan.result() is None


def test_an_over_long_header_is_still_too_long_when_its_cut_falls_in_a_crlf(monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.MAX_HEADER_BYTES", 1000)
    data = b"x" * 999 + b"\r\r\n"  # the limit cuts after the CRs: they are a (doubled) CRLF's, not bare
    with pytest.raises(HeaderError, match="longer than"):
        rewrite(data)


def test_a_cr_inside_a_quoted_header_field_is_accepted():
    out, result = rewrite(b'"Long\rName","B"\r\n"1","x"\r\n')
    assert result.original == ["Long\rName", "B"] and out == b'"long_name","b"\r\n"1","x"\r\n'
