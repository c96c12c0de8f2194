import pytest

from pipeline import layout


def test_plain_identifiers_are_kept():
    assert layout.safe_component("48nr-hqxx") == "48nr-hqxx"
    assert layout.safe_component("hbf-map") == "hbf-map"
    assert layout.safe_component("2025-04-08") == "2025-04-08"


@pytest.mark.parametrize(
    "hostile",
    [
        "..",
        "../../etc",
        "a/b",
        "a\\b",
        "c:evil",
        "nul\x00x",
        "CON",
        "nul",
        "com1.csv",
        "lpt9",
        "Upper",
        "x" * 500,
        "",
        " . ",
    ],
)
def test_hostile_identifiers_stay_one_safe_folder(hostile, tmp_path):
    name = layout.safe_component(hostile)
    assert name and len(name) <= layout.MAX_COMPONENT + 9
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    assert name.split(".")[0] not in {"con", "nul", "com1", "lpt9"} and not name.startswith(".")
    folder = tmp_path / layout.version_dir(hostile, "2025-01-01", "http://x/a.csv")
    assert folder.resolve().parent.parent == (tmp_path / "datasets").resolve()
    assert len(str(folder.relative_to(tmp_path))) < 120


def test_names_that_differ_only_in_case_or_punctuation_do_not_collide():
    assert len({layout.safe_component(t) for t in ["abc", "ABC", "Abc", "a/bc", "a\\bc", "a:bc"]}) == 6


def test_version_folder_is_keyed_by_modified_and_url():
    base = layout.version_dir("48nr-hqxx", "2025-04-08", "http://h/r/aa_1/F.csv")
    assert base == f"datasets/48nr-hqxx/2025-04-08-{layout.fingerprint('http://h/r/aa_1/F.csv')}"
    assert layout.version_dir("48nr-hqxx", "2025-04-08", "http://h/r/aa_2/F.csv") != base
    assert layout.version_dir("48nr-hqxx", "2025-04-09", "http://h/r/aa_1/F.csv") != base
