"""The change report through the real Luigi graph on the loopback site, on both storages: written beside the new
version, its figure in the run's line for that file, a NOTE (never a failure) when it cannot be made, and made
again by the next run, without downloading anything, when a crash lost it or the deep check finds it damaged."""

import csv
import io
import json

import pytest

from tests.harness import Site, by_identifier, run_daily
from tests.test_changes import FACILITY, body, facility_rows, replace_cell

pytestmark = pytest.mark.integration

OLD_ROWS = facility_rows()
NEW_ROWS = [replace_cell(OLD_ROWS[0], 10, "99"), *OLD_ROWS[1:-1], OLD_ROWS[0].replace("OP_18b", "OP_22")]


def folder_of(entry: dict) -> str:
    return entry["paths"]["normalized"].rsplit("/", 1)[0]


def two_versions(site: Site, data) -> tuple[str, str]:
    """A first version, then a refresh (1 added, 1 removed, 1 changed); returns both folders' locations."""
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, OLD_ROWS)})
    ok, report = run_daily(site, data.dir)
    assert ok
    first = folder_of(by_identifier(report)["yv7e-xc69"][0])
    site.dataset("yv7e-xc69", "2025-10-01", {"Timely.csv": body(FACILITY, NEW_ROWS)}, upload=1700000999)
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["status"] == "downloaded" and entry["error"] is None
    return first, folder_of(entry)


def csv_downloads(site: Site) -> list[str]:
    return [path for path in site.server.paths() if path.endswith(".csv")]


def entry_notes(report: dict) -> list[str]:
    return report["notes"] + [f"{e['identifier']}: {e['error']}" for e in report["datasets"] if e["error"]]


def test_a_new_version_gets_its_change_report(site, data, capfd):
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, OLD_ROWS)})
    ok, report = run_daily(site, data.dir)
    [first] = by_identifier(report)["yv7e-xc69"]
    assert ok
    no_earlier = json.loads(data.read(f"{folder_of(first)}/changes.json"))
    assert no_earlier == {
        "previous_version": None,
        "normalized_sha256": first["sha256"],
        "summary": "no earlier version",
    }
    assert not data.exists(f"{folder_of(first)}/changes.csv")
    site.dataset("yv7e-xc69", "2025-10-01", {"Timely.csv": body(FACILITY, NEW_ROWS)}, upload=1700000999)
    capfd.readouterr()
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["status"] == "downloaded" and entry["error"] is None
    folder = folder_of(entry)
    summary = json.loads(data.read(f"{folder}/changes.json"))
    assert summary["summary"] == "+1, -1, 1 changed" and summary["key"] == ["facility_id", "measure_id"]
    assert summary["previous_version"] == folder_of(first) and summary["normalized_sha256"] == entry["sha256"]
    assert json.loads(data.read(f"{folder}/header_map.json"))["changes_against"] == folder_of(first)
    cells = data.read(f"{folder}/changes.csv")
    assert len(cells) == summary["cells_bytes"]
    assert list(csv.reader(io.StringIO(cells.decode("utf-8")))) == [
        ["facility_id", "measure_id", "column", "old", "new"],
        ["010001", "OP_18b", "score", "10", "99"],
    ]
    assert "yv7e-xc69 2025-10-01: 12 rows (+1, -1, 1 changed), 0.0 MB" in capfd.readouterr().out


def test_an_identical_reupload_says_no_row_changed(site, data, capfd):
    rows = body(FACILITY, facility_rows())
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": rows})
    assert run_daily(site, data.dir)[0]
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": rows}, upload=1700000999)
    capfd.readouterr()
    assert run_daily(site, data.dir)[0]
    assert "yv7e-xc69 2025-07-01: 12 rows (no row changed), 0.0 MB" in capfd.readouterr().out


def lose(data, folder: str) -> None:  # a kill after header_map.json, before the report
    data.delete(f"{folder}/changes.csv")
    data.delete(f"{folder}/changes.json")


def zero_json(data, folder: str) -> None:  # a power cut after the rename, before the data reached the disk
    data.write(f"{folder}/changes.json", b"")


def cut_json(data, folder: str) -> None:
    whole = data.read(f"{folder}/changes.json")
    data.write(f"{folder}/changes.json", whole[: len(whole) // 2])


def zero_csv(data, folder: str) -> None:
    data.write(f"{folder}/changes.csv", b"")


# state -> (how, the NOTE's problem). A bucket has keys whole or absent: only a kill's state is possible there.
DAMAGE = {
    "killed before the report": (lose, "changes.json is missing"),
    "changes.json zero-length": (zero_json, "changes.json does not parse"),
    "changes.json cut mid-JSON": (cut_json, "changes.json does not parse"),
    "changes.csv zero-length": (zero_csv, "changes.csv has 0 bytes, changes.json says"),
}


@pytest.mark.parametrize(
    "state, data",
    [*((state, "local") for state in DAMAGE), ("killed before the report", "s3")],
    indirect=["data"],
)
def test_a_lost_or_damaged_report_is_made_again_by_the_next_run_without_a_download(site, data, state):
    _, folder = two_versions(site, data)
    key = data.key(folder)
    before = {name: data.read(f"{key}/{name}") for name in ("changes.json", "changes.csv", "header_map.json")}
    how, problem = DAMAGE[state]
    how(data, key)
    site.server.clear()
    ok, report = run_daily(site, data.dir)
    assert ok and report["status"] == "succeeded"
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert entry["status"] == "up_to_date"
    [note] = entry_notes(report)
    assert note.startswith(f"yv7e-xc69: {key}: {problem}") and note.endswith("; change report made again")
    assert csv_downloads(site) == []
    assert {name: data.read(f"{key}/{name}") for name in before} == before
    ok, report = run_daily(site, data.dir)
    assert ok and entry_notes(report) == []  # repaired for good


def flip(data, key: str) -> None:
    changed = bytearray(data.read(key))
    changed[-3] ^= 0x01
    data.write(key, bytes(changed))


def test_a_report_with_flipped_bytes_is_made_again_by_the_deep_check(site, data):
    _, folder = two_versions(site, data)
    key = data.key(folder)
    cells = data.read(f"{key}/changes.csv")
    flip(data, f"{key}/changes.csv")
    ok, report = run_daily(site, data.dir)
    assert ok and entry_notes(report) == []  # the size is right: the daily check cannot see it
    site.server.clear()
    ok, report = run_daily(site, data.dir, deep_check=True)
    assert ok
    assert f"yv7e-xc69: {key}: changes.csv does not match changes.json's sha256; change report made again" in (
        entry_notes(report)
    )
    assert csv_downloads(site) == [] and data.read(f"{key}/changes.csv") == cells


def test_a_report_that_cannot_be_made_is_a_note_the_run_succeeds_and_a_later_run_makes_it(site, data):
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, OLD_ROWS)})
    ok, report = run_daily(site, data.dir)
    old = data.key(folder_of(by_identifier(report)["yv7e-xc69"][0]))
    kept = data.read(f"{old}/normalized.csv")
    data.delete(f"{old}/normalized.csv")  # the earlier version's file, deleted by hand
    site.dataset("yv7e-xc69", "2025-10-01", {"Timely.csv": body(FACILITY, NEW_ROWS)}, upload=1700000999)
    for attempt in range(2):
        ok, report = run_daily(site, data.dir)
        [entry] = by_identifier(report)["yv7e-xc69"]
        assert ok and report["status"] == "succeeded" and entry["status"] == ("downloaded", "up_to_date")[attempt]
        assert entry["error"].startswith("change report: ") and entry["error"].endswith("; retried next run")
        assert "normalized.csv" in entry["error"]
        new = data.key(folder_of(entry))
        assert not data.exists(f"{new}/changes.json") and not data.exists(f"{new}/changes.csv")
        assert data.read("latest/yv7e-xc69.csv") == body(FACILITY, NEW_ROWS)  # the CSV is good: published
    data.write(f"{old}/normalized.csv", kept)
    site.server.clear()
    ok, report = run_daily(site, data.dir)
    assert ok and entry_notes(report) == [f"yv7e-xc69: {new}: changes.json is missing; change report made again"]
    assert json.loads(data.read(f"{new}/changes.json"))["summary"] == "+1, -1, 1 changed"
    assert csv_downloads(site) == []


def index_rows(data) -> dict[str, dict[str, str]]:
    text = data.read("latest/index.csv").decode("utf-8-sig")
    return {row["identifier"]: row for row in csv.DictReader(io.StringIO(text))}


def test_the_run_report_links_the_report_index_csv_shows_its_figure_and_a_configured_key_is_used(
    site, data, luigi_setting
):
    luigi_setting("changes", "keys", "yv7e-xc69: facility_id+measure_id+start_date, other-id: state")
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, OLD_ROWS)})
    ok, report = run_daily(site, data.dir)
    [first] = by_identifier(report)["yv7e-xc69"]
    assert (
        ok
        and first["changes"] == "no earlier version"
        and index_rows(data)["yv7e-xc69"]["changes"] == ("no earlier version")
    )
    site.dataset("yv7e-xc69", "2025-10-01", {"Timely.csv": body(FACILITY, NEW_ROWS)}, upload=1700000999)
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["changes"] == "+1, -1, 1 changed"
    assert entry["paths"]["changes"] == f"{folder_of(entry)}/changes.json"
    summary = json.loads(data.read(entry["paths"]["changes"]))
    assert summary["key"] == ["facility_id", "measure_id", "start_date"] and summary["key_source"] == "configured"
    assert data.read(f"{folder_of(entry)}/changes.csv").decode().splitlines() == [
        "facility_id,measure_id,start_date,column,old,new",
        "010001,OP_18b,01/01/2024,score,10,99",
    ]
    index = data.read("latest/index.csv")
    assert index_rows(data)["yv7e-xc69"]["changes"] == "+1, -1, 1 changed"
    manifest = json.loads(data.read("latest/latest.json"))
    assert manifest["datasets"][0]["changes"] == "+1, -1, 1 changed"
    ok, report = run_daily(site, data.dir)  # nothing new: the figure stays, without reading the report again
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["status"] == "up_to_date" and entry["changes"] is None and entry["paths"]["changes"] is None
    assert data.read("latest/index.csv") == index


def test_retention_deletes_a_version_with_its_report_and_a_report_lost_after_that_says_so(site, data, luigi_setting):
    luigi_setting("retention", "keep_versions", "1")
    first, second = (data.key(folder) for folder in two_versions(site, data))
    assert data.listing(first) == []  # the whole folder, its change report with it
    assert {key.rsplit("/", 1)[1] for key in data.listing(second)} >= {"changes.json", "changes.csv"}
    site.dataset("yv7e-xc69", "2026-01-01", {"Timely.csv": body(FACILITY, OLD_ROWS)}, upload=1700009999)
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["changes"] == "+1, -1, 1 changed"  # against the second version, kept until now
    third = data.key(folder_of(entry))
    assert data.listing(second) == [] and data.exists(f"{third}/changes.csv")
    lose(data, third)
    ok, report = run_daily(site, data.dir)
    assert ok and entry_notes(report) == [f"yv7e-xc69: {third}: changes.json is missing; change report made again"]
    assert json.loads(data.read(f"{third}/changes.json"))["summary"] == "earlier version no longer kept"
    assert not data.exists(f"{third}/changes.csv")


def test_the_deep_check_makes_again_the_damaged_report_of_a_version_no_longer_in_the_catalog(site, data):
    _, folder = two_versions(site, data)
    archived = data.key(folder)
    site.dataset("yv7e-xc69", "2026-01-01", {"Timely.csv": body(FACILITY, OLD_ROWS)}, upload=1700009999)
    assert run_daily(site, data.dir)[0]
    cells = data.read(f"{archived}/changes.csv")
    flip(data, f"{archived}/changes.csv")
    site.server.clear()
    ok, report = run_daily(site, data.dir, deep_check=True)
    assert (
        ok
        and f"{archived}: changes.csv does not match changes.json's sha256; change report made again"
        in (report["notes"])
    )
    assert data.read(f"{archived}/changes.csv") == cells and csv_downloads(site) == []
