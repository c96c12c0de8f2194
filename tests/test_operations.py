"""Operations: concurrent-download cap, progress lines, the dry-run plan, retired datasets."""

import json
from pathlib import Path

import luigi
import luigi.configuration
import pytest

from pipeline import HospitalsPlan
from tests.fixtures import csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site, by_identifier, query, run_daily

pytestmark = pytest.mark.integration

FILES_PREFIX = "/provider-data/sites/"


def publish(site: Site, count: int) -> None:
    for n in range(count):
        site.dataset(f"ds{n:02d}-0000", "2025-04-08", {"F.csv": csv_bytes('"Facility ID","Score"', quoted_rows(50, 2))})


def test_the_http_resource_caps_concurrent_downloads_whatever_the_workers(site, server, tmp_path, luigi_setting):
    luigi_setting("resources", "cms_http", "2")
    publish(site, 8)
    server.latency = 0.3  # each file takes long enough for downloads to overlap
    ok, report = run_daily(site, tmp_path, workers=6)
    assert ok and report["counts"]["downloaded"] == 8
    assert server.peak_concurrency_for(FILES_PREFIX) == 2


def test_console_shows_a_progress_line_per_dataset_and_the_summary(site, tmp_path, capfd):
    publish(site, 3)
    assert run_daily(site, tmp_path)[0]
    out = capfd.readouterr().out.splitlines()
    progress = [line for line in out if line.startswith("[") and "rows" in line]
    assert len(progress) == 3 and all("50 rows" in line for line in progress)
    assert sorted(line.split("]")[0] for line in progress) == ["[1/3", "[2/3", "[3/3"]
    assert any(line.startswith("HospitalsDaily run") and "3 downloaded" in line for line in out)


def files_in(folder: Path) -> dict:
    """Every file and its mtime, but SQLite's WAL sidecars (a reader may create them; they hold no data)."""
    return {
        p.relative_to(folder): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }


def run_plan(site: Site, data_dir: Path) -> dict:
    task = HospitalsPlan(data_dir=str(data_dir), metastore_url=site.metastore_url, run_id="plan1")
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    plan = json.loads(Path(task.output().path).read_text(encoding="utf-8"))
    Path(task.output().path).unlink()
    return {row["identifier"]: row["status"] for row in plan["versions"]}


def test_plan_classifies_every_version_and_downloads_nothing(site, server, tmp_path):
    publish(site, 4)
    assert run_daily(site, tmp_path)[0]
    site.dataset("ds00-0000", "2025-05-01", {"F.csv": csv_bytes('"A"', ['"1"'])})  # changed
    site.dataset("ds01-0000", "2025-04-08", {"F.csv": b""}, upload=1800000000, serve=False)  # changed, will fail
    site.retire("ds02-0000")
    site.dataset("new0-0000", "2025-04-08", {"F.csv": csv_bytes('"A"', ['"1"'])})  # new
    site.extra.append({"identifier": "bad0-0000", "theme": ["Hospitals"], "modified": "2025-01-01"})
    site.publish()
    assert not run_daily(site, tmp_path)[0]
    site.dataset("ds00-0000", "2025-06-01", {"F.csv": csv_bytes('"A"', ['"2"'])})  # changed again
    before = files_in(tmp_path)
    log_before = query(tmp_path, "SELECT * FROM versions ORDER BY 1, 2, 3")
    server.clear()

    statuses = run_plan(site, tmp_path)
    assert statuses == {
        "ds00-0000": "changed",
        "ds01-0000": "failed_last_time",
        "ds02-0000": "retired",
        "ds03-0000": "up_to_date",
        "new0-0000": "up_to_date",
        "bad0-0000": "invalid",
    }
    assert server.paths() == [CATALOG_PATH]
    assert files_in(tmp_path) == before
    assert query(tmp_path, "SELECT * FROM versions ORDER BY 1, 2, 3") == log_before


def test_plan_on_a_fresh_data_directory_says_everything_is_new(site, tmp_path):
    publish(site, 2)
    assert set(run_plan(site, tmp_path).values()) == {"new"}
    assert not (tmp_path / "runlog.sqlite").exists()


def test_a_dataset_that_leaves_the_catalog_is_marked_retired_and_its_files_stay(site, tmp_path):
    publish(site, 3)
    ok, first = run_daily(site, tmp_path)
    kept = Path(by_identifier(first)["ds01-0000"][0]["paths"]["normalized"])
    site.retire("ds01-0000")
    ok, report = run_daily(site, tmp_path)
    assert ok and report["counts"]["retired"] == 1 and report["counts"]["discovered"] == 2
    assert by_identifier(report)["ds01-0000"][0]["status"] == "retired"
    assert kept.exists()
    assert query(tmp_path, "SELECT identifier FROM retired") == [("ds01-0000",)]
    assert query(tmp_path, "SELECT retired FROM runs ORDER BY rowid DESC LIMIT 1") == [(1,)]

    ok, report = run_daily(site, tmp_path)  # reported once, not every day
    assert report["counts"]["retired"] == 0

    publish(site, 3)  # it comes back
    ok, report = run_daily(site, tmp_path)
    assert query(tmp_path, "SELECT count(*) FROM retired") == [(0,)]


def test_the_files_that_were_biggest_last_time_start_first(site, server, tmp_path):
    sizes = {"small-001": 1, "big-0001": 300, "mid-0001": 40}  # thousands of rows
    for identifier, rows in sizes.items():
        site.dataset(identifier, "2025-01-01", {"F.csv": csv_bytes('"A"', ['"x"'] * rows * 1000)})
    assert run_daily(site, tmp_path, workers=1)[0]
    for identifier, rows in sizes.items():  # every file re-uploaded: all three are new versions
        site.dataset(identifier, "2025-02-01", {"F.csv": csv_bytes('"A"', ['"y"'] * rows * 1000)}, upload=1700000100)
    server.clear()
    assert run_daily(site, tmp_path, workers=1)[0]
    order = [path.split("/")[-2] for path in server.paths() if path.startswith(FILES_PREFIX)]
    digest = {identifier: (identifier.encode().hex() * 8)[:32] for identifier in sizes}
    assert [next(i for i, d in digest.items() if part.startswith(d)) for part in order] == [
        "big-0001",
        "mid-0001",
        "small-001",
    ]
