"""The change report through the real Luigi graph on the loopback site, on both storages: written beside the new
version, its figure in the run's line for that file, and a NOTE (never a failure) when it cannot be made."""

import csv
import io
import json

import pytest

from tests.harness import by_identifier, run_daily
from tests.test_changes import FACILITY, body, facility_rows, replace_cell

pytestmark = pytest.mark.integration


def test_a_new_version_gets_its_change_report(site, data, capfd):
    old_rows = facility_rows()
    site.dataset("yv7e-xc69", "2025-07-01", {"Timely.csv": body(FACILITY, old_rows)})
    ok, report = run_daily(site, data.dir)
    [first] = by_identifier(report)["yv7e-xc69"]
    assert ok and not data.exists(first["paths"]["normalized"].replace("normalized.csv", "changes.json"))
    new_rows = [replace_cell(old_rows[0], 10, "99"), *old_rows[1:-1], old_rows[0].replace("OP_18b", "OP_22")]
    site.dataset("yv7e-xc69", "2025-10-01", {"Timely.csv": body(FACILITY, new_rows)}, upload=1700000999)
    capfd.readouterr()
    ok, report = run_daily(site, data.dir)
    [entry] = by_identifier(report)["yv7e-xc69"]
    assert ok and entry["status"] == "downloaded" and entry["error"] is None
    folder = entry["paths"]["normalized"].rsplit("/", 1)[0]
    summary = json.loads(data.read(f"{folder}/changes.json"))
    assert summary["summary"] == "+1, -1, 1 changed" and summary["key"] == ["facility_id", "measure_id"]
    assert summary["previous_version"] == first["paths"]["normalized"].rsplit("/", 1)[0]
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
