"""After the first download: schema drift, the stable latest view, retention, data dictionary links."""

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures import csv_bytes
from tests.harness import CATALOG_PATH, by_identifier, query, run_daily

pytestmark = pytest.mark.integration


def version(site, modified, header, rows, upload, identifier="yv7e-xc69"):
    body = csv_bytes(header, rows)
    site.dataset(identifier, modified, {"Timely.csv": body}, upload=upload)
    return body


def test_schema_drift_is_recorded_reported_and_printed(site, data, capfd):
    version(site, "2025-01-01", '"Facility ID","Score","Footnote"', ['"1","2","3"'], 1700000000)
    assert run_daily(site, data.dir)[0]
    assert by_identifier(run_daily(site, data.dir)[1])["yv7e-xc69"][0]["schema_change"] is None
    version(site, "2025-04-01", '"Facility ID","Footnote","Score (%)","Start Date"', ['"1","3","2","x"'], 1700000100)
    _ok, report = run_daily(site, data.dir)
    change = by_identifier(report)["yv7e-xc69"][0]["schema_change"]
    assert change["added"] == ["score_percent", "start_date"] and change["removed"] == ["score"]
    assert change["previous_version"]["modified"] == "2025-01-01"
    [(stored,)] = query(data.runlog_dir, "SELECT change FROM schema_changes WHERE modified='2025-04-01'")
    assert json.loads(stored)["removed"] == ["score"]
    assert "SCHEMA yv7e-xc69: added score_percent, start_date; removed score" in capfd.readouterr().out


def test_latest_view_follows_the_current_version_and_survives_a_failed_one(site, tmp_path):
    first = version(site, "2025-01-01", '"Facility ID","Score"', ['"1","2"'], 1700000000)
    site.dataset("hbf-map", "2025-01-01", {"a.csv": b"name\nA\n", "b.csv": b"name\nB\n"})
    ok, report = run_daily(site, tmp_path)
    latest = tmp_path / "latest"
    entry = by_identifier(report)["yv7e-xc69"][0]
    assert (latest / "yv7e-xc69.csv").read_bytes() == Path(entry["paths"]["normalized"]).read_bytes()
    if os.name != "nt":
        assert (latest / "yv7e-xc69.csv").stat().st_ino == Path(entry["paths"]["normalized"]).stat().st_ino
    assert (latest / "hbf-map__a.csv").read_bytes() == b"name\nA\n"  # several CSVs: one file each
    manifest = json.loads((latest / "latest.json").read_text(encoding="utf-8"))
    [item] = [d for d in manifest["datasets"] if d["identifier"] == "yv7e-xc69"]
    assert item["rows"] == 1 and item["sha256"] == entry["sha256"] and item["path"] == "yv7e-xc69.csv"
    assert item["version"] == {"modified": "2025-01-01", "download_url": entry["version"]["download_url"]}

    [broken] = site.dataset("yv7e-xc69", "2025-02-01", {"Timely.csv": b""}, upload=1700000050, serve=False)
    assert not run_daily(site, tmp_path)[0]
    assert (latest / "yv7e-xc69.csv").read_bytes().endswith(first[first.index(b"\n") :])  # still the good one

    second = csv_bytes('"Facility ID","Score"', ['"1","9"'])
    site.server.add(broken, second)
    ok, report = run_daily(site, tmp_path)
    assert ok and (latest / "yv7e-xc69.csv").read_bytes() == b'"facility_id","score"\r\n"1","9"\r\n'
    manifest = json.loads((latest / "latest.json").read_text(encoding="utf-8"))
    assert [d["version"]["modified"] for d in manifest["datasets"] if d["identifier"] == "yv7e-xc69"] == ["2025-02-01"]
    assert not list(latest.glob("*.tmp"))


def test_retention_keeps_the_newest_versions_and_drop_source_halves_disk(site, data, luigi_setting):
    luigi_setting("retention", "keep_versions", "2")
    luigi_setting("retention", "drop_source", "true")
    for n in range(4):
        version(site, f"2025-0{n + 1}-01", '"A","B"', [f'"{n}","x"'], 1700000000 + n)
        assert run_daily(site, data.dir)[0]
    folders = [f"datasets/yv7e-xc69/{name}" for name in sorted(data.folders("datasets/yv7e-xc69"))]
    assert [f.split("/")[-1][:10] for f in folders] == ["2025-03-01", "2025-04-01"]
    assert all(not data.exists(f"{f}/source.csv") and data.exists(f"{f}/normalized.csv") for f in folders)
    assert query(data.runlog_dir, "SELECT modified, status FROM versions ORDER BY modified") == [
        ("2025-01-01", "pruned"),
        ("2025-02-01", "pruned"),
        ("2025-03-01", "done"),
        ("2025-04-01", "done"),
    ]
    assert data.read("latest/yv7e-xc69.csv").endswith(b'"3","x"\r\n')
    for folder in folders:  # nothing points at the deleted source
        assert json.loads(data.read(f"{folder}/header_map.json"))["source_path"] is None
    assert query(data.runlog_dir, "SELECT count(*) FROM versions WHERE source_path IS NOT NULL") == [(0,)]
    site.server.clear()
    assert run_daily(site, data.dir)[0] and site.server.paths() == [CATALOG_PATH]  # no refetch without source


def test_retention_marks_pruned_only_what_it_deleted(site, tmp_path, luigi_setting, monkeypatch):
    luigi_setting("retention", "keep_versions", "1")
    version(site, "2025-01-01", '"A"', ['"1"'], 1700000000)
    ok, first = run_daily(site, tmp_path)
    old = Path(first["datasets"][0]["paths"]["normalized"]).parent
    version(site, "2025-02-01", '"A"', ['"2"'], 1700000100)
    real_rmtree = shutil.rmtree

    def refuse(path, *args, **kwargs):
        if Path(path) == old:
            raise PermissionError(13, "Permission denied", str(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", refuse)
    ok, report = run_daily(site, tmp_path)
    assert ok and old.exists()
    assert report["notes"] == [f"retention: {old} could not be deleted (Permission denied); retried next run"]
    assert query(tmp_path, "SELECT modified, status FROM versions ORDER BY 1") == [
        ("2025-01-01", "done"),
        ("2025-02-01", "done"),
    ]
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    ok, report = run_daily(site, tmp_path)
    assert ok and not old.exists() and report["notes"][0].startswith("retention: deleted 1 older version(s), ")
    assert query(tmp_path, "SELECT modified, status FROM versions ORDER BY 1") == [
        ("2025-01-01", "pruned"),
        ("2025-02-01", "done"),
    ]


def test_data_dictionary_link_and_released_date_are_kept(site, tmp_path):
    version(site, "2025-01-01", '"A"', ['"1"'], 1700000000)
    site.items["yv7e-xc69"]["released"] = "2025-01-15"
    site.items["yv7e-xc69"]["distribution"][0]["describedBy"] = "https://example.invalid/dictionary.pdf"
    site.publish()
    _ok, report = run_daily(site, tmp_path)
    assert query(tmp_path, "SELECT released, described_by FROM versions") == [
        ("2025-01-15", "https://example.invalid/dictionary.pdf")
    ]
    entry = by_identifier(report)["yv7e-xc69"][0]
    assert entry["released"] == "2025-01-15" and entry["described_by"].endswith("dictionary.pdf")
    [item] = json.loads((tmp_path / "latest" / "latest.json").read_text(encoding="utf-8"))["datasets"]
    assert item["released"] == "2025-01-15" and item["described_by"].endswith("dictionary.pdf")


def test_verify_catches_a_file_replaced_under_the_same_url(site, tmp_path):
    [path] = site.dataset("yv7e-xc69", "2025-01-01", {"Timely.csv": csv_bytes('"A"', ['"old"'])}, upload=1700000000)
    ok, first = run_daily(site, tmp_path)
    old_output = Path(by_identifier(first)["yv7e-xc69"][0]["paths"]["normalized"])
    site.server.add(path, csv_bytes('"A"', ['"new"']), last_modified=1700086400)  # same URL, new file

    site.server.clear()
    assert run_daily(site, tmp_path)[0] and site.server.paths() == [CATALOG_PATH]  # a plain run cannot see it

    site.server.clear()
    ok, report = run_daily(site, tmp_path, verify=True)
    check, fetch = [r for r in site.server.requests if r.path == path]
    assert check.headers["If-Modified-Since"] == "Tue, 14 Nov 2023 22:18:20 GMT" and check.status == 200
    assert "If-Modified-Since" not in fetch.headers and fetch.status == 200
    entry = by_identifier(report)["yv7e-xc69"][0]
    assert entry["status"] == "downloaded" and entry["version"]["revision"] == "Wed, 15 Nov 2023 22:13:20 GMT"
    assert Path(entry["paths"]["normalized"]).read_bytes() == b'"a"\r\n"new"\r\n'
    assert old_output.read_bytes() == b'"a"\r\n"old"\r\n'  # the earlier file is kept
    assert query(tmp_path, "SELECT output_path, revision, status FROM superseded") == [(str(old_output), "", "kept")]
    assert (tmp_path / "latest" / "yv7e-xc69.csv").read_bytes() == b'"a"\r\n"new"\r\n'

    site.server.clear()
    ok, report = run_daily(site, tmp_path, verify=True)
    assert ok and [r.status for r in site.server.requests if r.path == path] == [304]
    assert by_identifier(report)["yv7e-xc69"][0]["status"] == "up_to_date"
    site.server.clear()
    assert run_daily(site, tmp_path)[0] and site.server.paths() == [CATALOG_PATH]


def test_retention_prunes_a_revision_superseded_in_place(site, tmp_path, luigi_setting):
    luigi_setting("retention", "keep_versions", "1")
    [path] = site.dataset("yv7e-xc69", "2025-01-01", {"Timely.csv": csv_bytes('"A"', ['"old"'])}, upload=1700000000)
    old_output = Path(by_identifier(run_daily(site, tmp_path)[1])["yv7e-xc69"][0]["paths"]["normalized"])
    site.server.add(path, csv_bytes('"A"', ['"new"']), last_modified=1700086400)
    ok, report = run_daily(site, tmp_path, verify=True)
    new_output = Path(by_identifier(report)["yv7e-xc69"][0]["paths"]["normalized"])
    assert ok and new_output.read_bytes() == b'"a"\r\n"new"\r\n'
    assert not old_output.parent.exists() and [p.name for p in new_output.parent.parent.iterdir()] == [
        new_output.parent.name
    ]
    assert query(tmp_path, "SELECT status FROM superseded") == [("pruned",)]
    assert query(tmp_path, "SELECT status, output_path FROM versions") == [("done", str(new_output))]
