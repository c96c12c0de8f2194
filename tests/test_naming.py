import pytest

from pipeline.naming import normalize_header, snake_case


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("Patients’ rating of the facility linear mean score", "patients_rating_of_the_facility_linear_mean_score"),
        ("Patients' rating of the facility linear mean score", "patients_rating_of_the_facility_linear_mean_score"),
        ('Patientsʼ ‘rating’ "score"', "patients_rating_score"),
        ("City/Town", "city_town"),
        ("ASC-1 Rate*", "asc_1_rate"),
        ("FAPH-30 %", "faph_30_percent"),
        ("N READM-30-IPF # IPFs Better", "n_readm_30_ipf_number_ipfs_better"),
        ("Rate (%)", "rate_percent"),
        ("Facility ID", "facility_id"),
        ("County/Parish", "county_parish"),
        ("Café Größe", "cafe_grosse"),  # accents stripped, ß -> ss
        ("Ｆｕｌｌ　Ｗｉｄｔｈ", "full_width"),  # NFKC
        ("HospitalName", "hospitalname"),  # no camelCase splitting
        ("30-day rate", "30_day_rate"),  # leading digits kept
        ("  __Start Date__  ", "start_date"),
        ("Score, adjusted", "score_adjusted"),
        ("!!!", ""),
    ],
)
def test_snake_case_rules(original, expected):
    assert snake_case(original) == expected


def test_empty_names_take_their_position():
    assert normalize_header(["Facility ID", "", "???", "Score"]) == ["facility_id", "column_2", "column_3", "score"]


def test_repeated_names_are_numbered_in_order():
    assert normalize_header(["Score", "score", "SCORE"]) == ["score", "score_2", "score_3"]


def test_numbering_never_collides_with_another_column():
    assert normalize_header(["a", "a", "a_2"]) == ["a", "a_3", "a_2"]
    assert normalize_header(["", "column_1"]) == ["column_1", "column_1_2"]
    names = normalize_header(["x", "x_2", "x", "x_2", "x_3"])
    assert len(set(names)) == len(names)


def test_a_20000_column_header_of_repeats_is_numbered_in_order():
    names = normalize_header(["Score"] * 20_000)
    assert names == ["score"] + [f"score_{n}" for n in range(2, 20_001)]


def test_a_20000_column_header_of_repeats_skips_a_suffix_taken_elsewhere():
    names = normalize_header(["Score"] * 10_000 + ["score_2"] + ["Score"] * 10_000)
    assert len(set(names)) == len(names) == 20_001
    assert names[:3] == ["score", "score_3", "score_4"] and names[10_000] == "score_2"
    before, after = range(3, 10_002), range(10_002, 20_002)
    assert names == ["score", *(f"score_{n}" for n in before), "score_2", *(f"score_{n}" for n in after)]
