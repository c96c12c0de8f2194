"""The change report's diff (pipeline/changes.py) on real-shaped normalized files: CMS headers as the job writes
them (snake_case), CMS-shaped rows (6-digit facility IDs, ZIP codes with leading zeros, quoted names with commas)."""

import csv
import io

import pytest

from pipeline import changes
from pipeline.changes import compare

# Timely and Effective Care - Hospital, as normalized: one row per facility and measure.
FACILITY = (
    '"facility_id","facility_name","address","city_town","state","zip_code","county_parish","telephone_number",'
    '"measure_id","measure_name","score","sample","footnote","start_date","end_date"'
)
HOSPITALS = [
    ("010001", "SOUTHEAST HEALTH MEDICAL CENTER", "1108 ROSS CLARK CIRCLE", "DOTHAN", "AL", "36301", "HOUSTON"),
    ("070002", '"HARTFORD HOSPITAL, INC"', "80 SEYMOUR STREET", "HARTFORD", "CT", "06106", "HARTFORD"),
    ("220074", "MASSACHUSETTS GENERAL HOSPITAL", "55 FRUIT STREET", "BOSTON", "MA", "02114", "SUFFOLK"),
    ("310001", "HACKENSACK UNIVERSITY MEDICAL CENTER", "30 PROSPECT AVE", "HACKENSACK", "NJ", "07601", "BERGEN"),
]
MEASURES = [("OP_18b", "Average time in the ED"), ("SEP_1", "Severe Sepsis and Septic Shock"), ("HCP_COVID_19", "x")]


def facility_rows() -> list[str]:
    return [
        f"{h[0]},{h[1]},{h[2]},{h[3]},{h[4]},{h[5]},{h[6]},(334) 793-8701,{m},{name},{10 + i},200,,"
        f"01/01/2024,12/31/2024"
        for i, (h, (m, name)) in enumerate((h, m) for h in HOSPITALS for m in MEASURES)
    ]


def body(header: str, rows: list[str], newline: str = "\r\n") -> bytes:
    return (newline.join([header, *rows]) + newline).encode("utf-8")


def diff(old: bytes, new: bytes, **options) -> tuple[changes.ChangeSummary, list[list[str]]]:
    out = io.StringIO()
    summary = compare(lambda: io.BytesIO(old), lambda: io.BytesIO(new), out, **options)
    return summary, list(csv.reader(io.StringIO(out.getvalue())))


def replace_cell(row: str, position: int, value: str) -> str:
    cells = next(csv.reader([row]))
    cells[position] = value
    text = io.StringIO()
    csv.writer(text).writerow(cells)
    return text.getvalue().removesuffix("\r\n")


def test_added_removed_and_changed_rows_matched_by_facility_and_measure():
    old_rows = facility_rows()
    new_rows = list(old_rows)
    new_rows[1] = replace_cell(new_rows[1], 10, "99")  # 010001 SEP_1: score
    new_rows[4] = replace_cell(replace_cell(new_rows[4], 10, "Not Available"), 12, "5")  # 070002 SEP_1
    del new_rows[7]  # 220074 SEP_1 removed
    new_rows.append(new_rows[0].replace("OP_18b", "OP_22"))  # 010001 OP_22 added
    summary, cells = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    assert summary.key == ["facility_id", "measure_id"] and summary.key_source == "found"
    assert (summary.added, summary.removed, summary.changed, summary.cells) == (1, 1, 2, 3)
    assert (summary.old_rows, summary.new_rows) == (12, 12)
    assert summary.figure() == "+1, -1, 2 changed"
    assert summary.changed_columns == {"score": 2, "footnote": 1}
    assert cells == [
        ["facility_id", "measure_id", "column", "old", "new"],
        ["010001", "SEP_1", "score", "11", "99"],
        ["070002", "SEP_1", "score", "14", "Not Available"],
        ["070002", "SEP_1", "footnote", "", "5"],
    ]
    assert summary.to_json()["unchanged"] == 9


def test_an_identical_reupload_says_no_row_changed():
    data = body(FACILITY, facility_rows())
    summary, cells = diff(data, data)
    assert summary.figure() == "no row changed"
    assert (summary.added, summary.removed, summary.changed) == (0, 0, 0)
    assert cells == [["facility_id", "measure_id", "column", "old", "new"]]


def test_rows_in_another_order_with_another_line_ending_are_unchanged():
    rows = facility_rows()
    summary, _ = diff(body(FACILITY, rows), body(FACILITY, rows[::-1], newline="\n"))
    assert summary.figure() == "no row changed" and summary.key == ["facility_id", "measure_id"]


def test_state_and_measure_key():
    header = '"state","measure_id","measure_name","number_of_hospitals_worse","number_of_hospitals_same","footnote"'
    old = [
        f"{state},{m},Rate of {m},0,{n},,"
        for n, state in enumerate(["AK", "AL", "AR"])
        for m in ("COMP_HIP", "MORT_30")
    ]
    new = [row.replace(",0,2,", ",1,2,") for row in old]  # AR's worse count
    summary, cells = diff(body(header, old), body(header, new))
    assert summary.key == ["state", "measure_id"]
    assert cells[1:] == [["AR", "COMP_HIP", "number_of_hospitals_worse", "0", "1"], ["AR", "MORT_30", *cells[2][2:]]]
    assert summary.figure() == "+0, -0, 2 changed"


def test_a_key_that_stops_being_unique_falls_back_to_whole_rows():
    old_rows = facility_rows()
    duplicate = replace_cell(old_rows[0], 10, "77")  # a second 010001 OP_18b, with another score
    summary, cells = diff(body(FACILITY, old_rows), body(FACILITY, [*old_rows, duplicate]))
    assert summary.key is None and summary.key_source == "none"
    assert (summary.added, summary.removed, summary.changed) == (1, 0, 0)
    assert summary.figure() == "+1, -0"
    assert cells == [["column", "old", "new"]]


def test_a_key_unique_in_the_new_file_but_not_in_the_old_is_not_used():
    rows = facility_rows()
    repeated = replace_cell(rows[0], 10, "77")
    summary, _ = diff(body(FACILITY, [*rows, repeated]), body(FACILITY, rows))
    assert summary.key is None and (summary.added, summary.removed) == (0, 1)


def test_a_renamed_column_is_compared_under_its_new_name():
    new_header = FACILITY.replace('"score"', '"score_percent"')
    old_rows = facility_rows()
    new_rows = [replace_cell(old_rows[0], 10, "12"), *old_rows[1:]]
    summary, cells = diff(body(FACILITY, old_rows), body(new_header, new_rows), renamed={"score": "score_percent"})
    assert summary.changed == 1 and cells[1] == ["010001", "OP_18b", "score_percent", "10", "12"]
    assert "score_percent" in summary.compared


def test_an_added_column_is_not_a_change_of_every_row():
    old_rows = facility_rows()
    summary, _ = diff(
        body(FACILITY, old_rows), body(FACILITY + ',"compared_to_national"', [r + ",Same" for r in old_rows])
    )
    assert summary.figure() == "no row changed" and "compared_to_national" not in summary.compared


def test_zip_codes_with_leading_zeros_stay_text():
    old_rows = facility_rows()
    new_rows = [old_rows[0], old_rows[1], old_rows[2], replace_cell(old_rows[3], 5, "06105"), *old_rows[4:]]
    summary, cells = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    assert cells[1] == ["070002", "OP_18b", "zip_code", "06106", "06105"]
    assert summary.changed_columns == {"zip_code": 1}


def test_quoted_commas_and_a_line_break_inside_quotes():
    old_rows = facility_rows()
    new_rows = list(old_rows)
    new_rows[3] = replace_cell(old_rows[3], 12, "Results are\r\nbased on a shorter time period")
    new_rows[5] = replace_cell(old_rows[5], 1, "HARTFORD HOSPITAL, INC.")
    summary, cells = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    assert summary.key == ["facility_id", "measure_id"] and summary.new_rows == 12
    assert cells[1:] == [
        ["070002", "OP_18b", "footnote", "", "Results are\r\nbased on a shorter time period"],
        ["070002", "HCP_COVID_19", "facility_name", "HARTFORD HOSPITAL, INC", "HARTFORD HOSPITAL, INC."],
    ]


def test_without_identifying_columns_whole_rows_are_added_and_removed():
    header = "name,addr,city,state,zip,lat,lon"  # hbf-map: LF, unquoted
    old = [
        "A,1 Main,Dothan,AL,36301,31.2,-85.3",
        "B,2 Oak,Boaz,AL,35957,34.2,-86.1",
        "C,3 Elm,Hartford,CT,06106,41.7,-72.6",
    ]
    new = [old[0], old[0], "B,2 Oak,Boaz,AL,35957,34.3,-86.1", old[2]]  # A twice; B moved
    summary, cells = diff(body(header, old, "\n"), body(header, new, "\n"))
    assert summary.key is None
    assert (summary.added, summary.removed, summary.changed) == (2, 1, 0)
    assert summary.to_json()["unchanged"] == 2 and cells == [["column", "old", "new"]]


def test_a_configured_key_is_used_or_said_why_not():
    rows = facility_rows()
    new_rows = [replace_cell(rows[0], 10, "11"), *rows[1:]]
    summary, _ = diff(body(FACILITY, rows), body(FACILITY, new_rows), key=["facility_id", "measure_name"])
    assert summary.key == ["facility_id", "measure_name"] and summary.key_source == "configured"
    assert summary.changed == 1
    summary, _ = diff(body(FACILITY, rows), body(FACILITY, new_rows), key=["facility_id"])
    assert summary.key is None and summary.key_note == "configured key is not unique in both versions"
    summary, _ = diff(body(FACILITY, rows), body(FACILITY, new_rows), key=["ccn"])
    assert summary.key_note == "configured key column(s) ccn not in both versions"


@pytest.mark.parametrize(("read", "bucket_rows"), [(64, 3), (97, 1), (1 << 20, 50_000)])
def test_small_reads_and_buckets_give_the_same_report(monkeypatch, read, bucket_rows):
    """Records cut at every read boundary and many buckets: the same figures and cells as in one piece."""
    old_rows = [replace_cell(r, 0, f"{n}{r[:6]}") for n in range(8) for r in facility_rows()]
    new_rows = [replace_cell(r, 10, "5") if i % 7 == 0 else r for i, r in enumerate(old_rows) if i % 11]
    new_rows[20] = replace_cell(new_rows[20], 12, "line\nbreak")
    expected = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    monkeypatch.setattr(changes, "READ", read)
    monkeypatch.setattr(changes, "BUCKET_ROWS", bucket_rows)
    summary, cells = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    assert summary.to_json() == expected[0].to_json()
    assert sorted(cells[1:]) == sorted(expected[1][1:]) and len(cells) > 10
    assert summary.removed == len(old_rows) // 11 + 1


def test_a_file_without_a_final_line_ending():
    rows = facility_rows()
    old = body(FACILITY, rows)
    summary, _ = diff(old, old[:-2])
    assert summary.figure() == "no row changed" and summary.new_rows == 12


def test_configured_keys_are_parsed_and_a_typo_is_refused():
    from pipeline.settings import ChangeSettings, parse_keys

    keys = ChangeSettings("yv7e-xc69: facility_id+measure_id, 4pq5-n9py: state + measure_id,")
    assert keys.key_for("yv7e-xc69") == ["facility_id", "measure_id"]
    assert keys.key_for("4pq5-n9py") == ["state", "measure_id"] and keys.key_for("xubh-q36u") is None
    assert parse_keys("") == {}
    for typo in ("yv7e-xc69 facility_id", "yv7e-xc69: facility_id+", ": facility_id"):
        with pytest.raises(ValueError, match=r"\[changes\] keys: .* is not <identifier>: column\+column"):
            ChangeSettings(typo)


def test_a_candidate_the_sample_left_but_not_unique_gives_way_to_the_next_one(monkeypatch):
    """The first candidate is hashed on every row as the new file is read; the next ones, read again, only when
    it is not unique in the whole file (here the sample, two rows, did not show it)."""
    monkeypatch.setattr(changes, "SAMPLE", 2)
    old_rows = facility_rows()
    new_rows = [replace_cell(old_rows[0], 10, "99"), *old_rows[1:]]
    summary, cells = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    assert summary.key == ["facility_id", "measure_id"]  # measure_id alone repeats past the sample
    assert cells[1:] == [["010001", "OP_18b", "score", "10", "99"]]


@pytest.mark.parametrize(("few_quotes", "look", "out_of_line"), [(0, 4096, 40_000), (1 << 20, 2, 40_000), (0, 2, 5)])
def test_files_read_side_by_side_or_by_hashes_give_the_same_report(monkeypatch, few_quotes, look, out_of_line):
    """Rows removed, added in a run longer than the look-ahead, moved far, with quotes and a line break inside
    them: the same report whether the files are lined up record by record or, once too many records are out of
    line, paired by hashes."""
    old_rows = [replace_cell(r, 0, f"{n}{r[:6]}") for n in range(8) for r in facility_rows()]
    new_rows = [replace_cell(r, 10, "5") if i % 7 == 0 else r for i, r in enumerate(old_rows) if i % 11]
    new_rows[20] = replace_cell(new_rows[20], 12, "line\nbreak")
    new_rows[40:40] = [replace_cell(r, 8, f"OP_2{i}") for i, r in enumerate(old_rows[:6])]  # added, in a run
    new_rows.append(new_rows.pop(3))  # moved to the end
    expected = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    monkeypatch.setattr(changes, "FEW_QUOTES", few_quotes)
    monkeypatch.setattr(changes, "LOOK", look)
    monkeypatch.setattr(changes, "OUT_OF_LINE", out_of_line)
    summary, cells = diff(body(FACILITY, old_rows), body(FACILITY, new_rows))
    assert summary.to_json() == expected[0].to_json() and cells == expected[1]
    assert (summary.added, summary.removed) == (6, len(old_rows) // 11 + 1) and summary.changed > 10


def test_a_quoted_value_in_the_last_key_column_is_the_value(monkeypatch):
    """`"MORT_30"` and `MORT_30` are one measure: measure_id alone repeats, and the key takes the state too."""
    monkeypatch.setattr(changes, "SAMPLE", 1)  # the sample does not show it
    header = '"measure_name","state","measure_id"'
    old = ["Death rate,AK,MORT_30", "Complications,AK,COMP_HIP", 'Death rate,AL,"MORT_30"']
    new = [old[0], "Complications (hip),AK,COMP_HIP", old[2]]
    summary, cells = diff(body(header, old), body(header, new))
    assert summary.key == ["state", "measure_id"]
    assert cells[1:] == [["AK", "COMP_HIP", "measure_name", "Complications", "Complications (hip)"]]
