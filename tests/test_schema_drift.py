from pipeline.schema_drift import describe, diff_columns


def test_same_header_is_no_change():
    assert diff_columns(["a", "b"], ["a", "b"]) is None


def test_added_removed_renamed_moved():
    change = diff_columns(["id", "name", "score", "old_note", "city"], ["id", "city", "name", "score", "new_note", "x"])
    assert change == {"added": ["new_note", "x"], "removed": ["old_note"], "renamed": [], "moved": ["city"]}
    assert describe(change) == "added new_note, x; removed old_note; moved city"


def test_rename_at_the_same_position():
    change = diff_columns(["id", "rate", "footnote"], ["id", "rate_percent", "footnote"])
    assert change == {
        "added": [],
        "removed": [],
        "renamed": [{"position": 2, "from": "rate", "to": "rate_percent"}],
        "moved": [],
    }
    assert describe(change) == "renamed rate -> rate_percent"


def test_pure_additions_and_removals():
    assert diff_columns(["a", "b"], ["a", "b", "c"]) == {"added": ["c"], "removed": [], "renamed": [], "moved": []}
    assert diff_columns(["a", "b", "c"], ["a", "c"]) == {"added": [], "removed": ["b"], "renamed": [], "moved": []}
    assert len(diff_columns(["a", "b", "c"], ["b", "a", "c"])["moved"]) == 1  # one swap is one move


def test_the_end_of_a_shorter_header_is_no_evidence_of_a_rename():
    old = ["id", *(f"measure_{n}" for n in range(1, 15))]
    change = diff_columns(old, ["id", "score"])
    assert change["renamed"] == [] and change["added"] == ["score"] and len(change["removed"]) == 14
    assert (
        describe(change) == "added score; 14 removed (measure_1, measure_2, measure_3, measure_4, measure_5 and 9 more)"
    )
