import csv
import hashlib
import io

import pytest

from pipeline.header_rewrite import HeaderError, SourceScan, copy_normalized, rewrite_csv
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
    assert head == (b'"facility_id","facility_name","city_town",'
                    b'"patients_rating_of_the_facility_linear_mean_score","number_of_sampled_patients"')
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
    assert result.encoding == "utf-8" and out.endswith(source[len(b'"A"\r\n'):])


def test_header_only_file_and_missing_final_newline():
    assert rewrite(b'"A B"')[0] == b'"a_b"'
    out, result = rewrite(b'"A"\r\n"1"\r\n"2"')
    assert out == b'"a"\r\n"1"\r\n"2"' and result.rows == 2


@pytest.mark.parametrize(("data", "message"), [
    (b"", "no header row"),
    (b"\r\n\"1\",\"2\"\r\n", "no header row"),
    (b'"A,B\r\n1,2\r\n', "unterminated"),
])
def test_unusable_header_is_an_error(data, message):
    with pytest.raises(HeaderError, match=message):
        rewrite(data)


def test_header_longer_than_the_limit_is_an_error(monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.MAX_HEADER_BYTES", 1000)
    with pytest.raises(HeaderError, match="longer than"):
        rewrite(("," .join(f'"Column {i}"' for i in range(200)) + "\r\n").encode())


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
]


@pytest.mark.parametrize("data", SAMPLES)
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_scan_while_downloading_then_kernel_copy_equals_the_full_rewrite(data, chunk, tmp_path):
    scan = SourceScan()
    scan.feed(b"garbage from an attempt that was restarted")
    scan.reset()
    for start in range(0, len(data), chunk):
        scan.feed(data[start:start + chunk])
    found = scan.result()
    assert found is not None
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "w+b") as dst:
        fast = copy_normalized(src, dst, found)
    expected, full = rewrite(data)
    assert (tmp_path / "dst").read_bytes() == expected
    assert (fast.normalized, fast.rows, fast.bytes, fast.sha256, fast.line_ending) == (
        full.normalized, full.rows, full.bytes, full.sha256, full.line_ending)


@pytest.mark.parametrize("data", [
    '"Café"\r\n"Zoë"\r\n'.encode("cp1252"),     # not UTF-8: rewrite_csv must transcode
    csv_bytes('"A"', ['"1"']) + b"\xff",         # invalid UTF-8 late in the data
    b'"Header only, no newline"',               # no complete first record
    b"\r\n\"1\"\r\n",                           # no header row: rewrite_csv reports it
])
def test_scan_declines_what_only_the_full_rewrite_can_handle(data):
    scan = SourceScan()
    scan.feed(data)
    assert scan.result() is None


def test_kernel_copy_refuses_a_source_that_changed_after_the_scan(tmp_path):
    data = csv_bytes('"A"', ['"1"'])
    scan = SourceScan()
    scan.feed(data)
    (tmp_path / "src").write_bytes(data + b'"2"\r\n')
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "w+b") as dst, \
            pytest.raises(ValueError, match="changed"):
        copy_normalized(src, dst, scan.result())


@pytest.mark.parametrize("chunk", [100, 10_000, 1 << 20])
def test_scan_leaves_a_header_over_the_limit_to_the_full_rewrite(chunk, monkeypatch):
    monkeypatch.setattr("pipeline.header_rewrite.MAX_HEADER_BYTES", 1000)
    data = ",".join(f'"Column {i}"' for i in range(200)).encode() + b"\r\n1\r\n"
    scan = SourceScan()
    for start in range(0, len(data), chunk):
        scan.feed(data[start:start + chunk])
    assert scan.result() is None
