"""What a power cut leaves when a file was renamed into place before its data reached the disk (zero-length or
cut short under its final name): the next run repairs it with one NOTE, downloads only what it must, and ends
with every file as a clean run leaves it. The deep check does the same for bytes that differ at the same size.

In object storage a key is visible only whole, so a power cut leaves none of the version folders' states; the
files every run reads (latest/, the last report and snapshot) are checked there too, against damage by other
writers, and the deep check is the same."""

import hashlib
import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, run_command, run_daily, write_project_cfg
from tests.stored_data import LocalData

# Once per run-log engine (tests/conftest.py: runlog_engine): reports and snapshots are rebuilt from either.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("runlog_engine")]


def zero(data, key: str) -> None:
    data.write(key, b"")  # in place: a hard link to the same file sees it too, as after a real power cut


def halve(data, key: str) -> None:
    whole = data.read(key)
    data.write(key, whole[: len(whole) // 2])


def new_empty(data, key: str) -> None:
    data.delete(key)
    data.write(key, b"")  # a file of its own: latest/ copies (no hard links) are damaged alone


def version(data, identifier: str) -> str:
    """The key of a dataset's only version folder (`data`: tests/stored_data.py)."""
    [folder] = data.folders(f"datasets/{identifier}")
    return f"datasets/{identifier}/{folder}"


# state -> (dataset it damages, which file, how, the NOTEs the next run must print, what it downloads again)
STATES = {
    "normalized.csv zero-length": ("ds-norm0", "normalized.csv", zero, ["normalized.csv has 0 bytes", "@latest"], 0),
    "normalized.csv half-written": ("ds-norm2", "normalized.csv", halve, ["normalized.csv has", "@latest"], 0),
    "source.csv zero-length": ("ds-src0", "source.csv", zero, ["source.csv has 0 bytes, source.scan.json says"], 1),
    "source.csv half-written": ("ds-src2", "source.csv", halve, ["source.csv has"], 1),
    "header_map.json zero-length": ("ds-map0", "header_map.json", zero, ["header_map.json does not parse"], 0),
    "header_map.json cut mid-JSON": ("ds-map2", "header_map.json", halve, ["header_map.json does not parse"], 0),
    "source.scan.json zero-length": ("ds-scan0", "source.scan.json", zero, ["source.scan.json does not parse"], 0),
    "source.scan.json half-written": ("ds-scan2", "source.scan.json", halve, ["source.scan.json does not parse"], 0),
    "latest/ file zero-length": ("ds-latest", "latest", new_empty, ["@latest"], 0),
    "latest.json zero-length": (None, "latest/latest.json", zero, ["latest/latest.json does not parse"], 0),
    "index.csv zero-length": (None, "latest/index.csv", zero, ["latest/index.csv has no header row"], 0),
    "last report zero-length": (None, "report", zero, ["reports/first.json does not parse"], 0),
    "catalog snapshot zero-length": (
        None,
        "runs/first/catalog.json",
        zero,
        ["runs/first/catalog.json does not parse"],
        0,
    ),
}
DATASETS = sorted({state[0] for state in STATES.values() if state[0]})
# What other writers can do to a bucket's files that every run reads (a power cut cannot cut an object short).
IN_A_BUCKET = sorted(state for state, (identifier, name, *_) in STATES.items() if not identifier or name == "latest")


def publish(site: Site) -> None:
    for n, identifier in enumerate(DATASETS):
        site.dataset(identifier, "2025-04-08", {"Data.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(40 + n, 5, n))})


def damage(data, state: str) -> list[str]:
    """Applies a state; returns the NOTE fragments the next run must print for it."""
    identifier, name, how, notes, _ = STATES[state]
    if name == "latest":
        key = f"latest/{identifier}.csv"
    elif name == "report":
        key = "reports/first.json"
    elif identifier:
        key = f"{version(data, identifier)}/{name}"
    else:
        key = name
    how(data, key)
    latest_note = f"latest/{identifier}.csv had 0 bytes" if how is not halve else f"latest/{identifier}.csv had"
    return [latest_note if note == "@latest" else note for note in notes]


def kept_files(data) -> dict[str, bytes]:
    """Every file a run keeps, by key; latest.json without the fields that name the run that wrote it."""
    files = {}
    for key in data.listing():
        if key.startswith(("reports/", "runs/")) and "first" not in key:
            continue  # the second run's own
        if key == "latest/latest.json":
            files[key] = json.dumps(json.loads(data.read(key))["datasets"], sort_keys=True).encode()
        else:
            files[key] = data.read(key)
    return files


def downloads(site: Site) -> set[str]:
    return {path.split("/")[-2] for path in site.server.paths() if path.endswith(".csv")}


def notes_of(report: dict) -> list[str]:
    done = ("downloaded", "up_to_date")
    return report["notes"] + [
        f"{e['identifier']}: {e['error']}" for e in report["datasets"] if e["status"] in done and e["error"]
    ]


@pytest.fixture
def first_run(site, data):
    publish(site)
    ok, _ = run_daily(site, data.dir, run_id="first")
    assert ok
    clean = kept_files(data)
    site.server.clear()
    return clean


@pytest.mark.parametrize(
    "state, data",
    [*((state, "local") for state in sorted(STATES)), *((state, "s3") for state in IN_A_BUCKET)],
    indirect=["data"],
)
def test_each_power_cut_state_is_repaired_by_the_next_run_with_one_note(site, data, first_run, state):
    expected = damage(data, state)
    ok, report = run_daily(site, data.dir, run_id="second")
    assert ok and report["status"] == "succeeded"
    notes = notes_of(report)
    assert len(notes) == len(expected), notes
    for fragment in expected:
        assert any(fragment in note for note in notes), (fragment, notes)
    identifier, _, _, _, fetched = STATES[state]
    assert downloads(site) == ({_upload_folder(identifier)} if fetched else set())
    after = kept_files(data)
    if state == "latest.json zero-length":  # rebuilt: every file counts as published by this run
        first_run["latest/latest.json"] = after["latest/latest.json"] = b""
    assert after == first_run
    assert notes_of(run_daily(site, data.dir, run_id="third")[1]) == []  # repaired for good


def _upload_folder(identifier: str) -> str:
    return f"{(identifier.encode().hex() * 8)[:32]}_1700000000"


def test_every_power_cut_state_at_once_then_the_real_command_repairs_all_without_a_traceback(site, tmp_path):
    publish(site)
    write_project_cfg(site, tmp_path)
    data = LocalData(tmp_path / "data")
    first = run_command(tmp_path, "--run-id", "first")
    assert first.returncode == 0, first.stderr
    clean = kept_files(data)
    site.server.clear()
    expected = []
    for state in STATES:
        expected += damage(data, state)
    # With latest.json gone no file of latest/ is known to have been published: they are put back unremarked.
    expected = [note for note in expected if not note.startswith("latest/ds-")]
    second = run_command(tmp_path, "--run-id", "second")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    printed = [line.strip() for line in second.stdout.splitlines() if line.strip().startswith("NOTE ")]
    assert len(printed) == len(expected), printed
    for fragment in expected:
        assert any(fragment in line for line in printed), (fragment, printed)
    assert downloads(site) == {_upload_folder(STATES[s][0]) for s in STATES if STATES[s][4]}
    after = kept_files(data)
    clean["latest/latest.json"] = after["latest/latest.json"] = b""
    assert after == clean


def flip(data, key: str, offset: int = -3) -> None:
    changed = bytearray(data.read(key))
    changed[offset] ^= 0x01
    data.write(key, bytes(changed))


def test_the_deep_check_finds_and_repairs_flipped_bytes_in_version_and_latest_files(site, data, first_run):
    site.dataset("ds-scan0", "2025-05-01", {"Data.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(7, 5, "new"))})
    assert run_daily(site, data.dir, run_id="update")[0]
    clean = kept_files(data)
    [archived] = [f"datasets/ds-scan0/{f}" for f in data.folders("datasets/ds-scan0") if f.startswith("2025-04-08")]
    flip(data, f"{archived}/normalized.csv")  # a version no longer in the catalog
    flip(data, f"{version(data, 'ds-norm0')}/normalized.csv")  # on disk in place: its latest/ link changes too
    new_empty(data, "latest/ds-latest.csv")
    data.write("latest/ds-latest.csv", clean["latest/ds-latest.csv"])
    flip(data, "latest/ds-latest.csv")  # a latest/ file of its own
    flip(data, f"{version(data, 'ds-src0')}/source.csv")
    ok, report = run_daily(site, data.dir, run_id="quick")
    assert ok and notes_of(report) == []  # sizes are right: the daily check cannot see it
    site.server.clear()
    ok, report = run_daily(site, data.dir, run_id="deep", deep_check=True)
    assert ok
    linked = data.kind == "local"  # latest/ files are hard links on disk, copies in a bucket
    notes = notes_of(report)
    assert sorted(notes) == sorted(
        [
            f"ds-norm0: {version(data, 'ds-norm0')}: normalized.csv does not match header_map.json's sha256; made"
            " again from source.csv",
            f"ds-src0: {version(data, 'ds-src0')}: source.csv does not match header_map.json's sha256; downloaded"
            " again",
            "latest/ds-latest.csv does not match latest.json's sha256; put back",
            *(["latest/ds-norm0.csv does not match latest.json's sha256; put back"] if linked else []),
            f"{archived}: normalized.csv does not match header_map.json's sha256; made again from source.csv",
            f"deep check: the files of 10 versions and 9 in latest/ hashed; {5 if linked else 4} damaged",
        ]
    ), notes
    assert downloads(site) == {_upload_folder("ds-src0")}  # nothing whole is downloaded
    assert kept_files(data) == clean


def test_latest_files_are_read_only_so_an_edit_in_place_cannot_change_the_archive(site):
    data = Path(tempfile.mkdtemp())
    data.chmod(0o755)  # another user may reach it
    publish(site)
    assert run_daily(site, data / "data")[0]
    latest = data / "data" / "latest" / "ds-norm0.csv"
    archived = data / "data" / version(LocalData(data / "data"), "ds-norm0") / "normalized.csv"
    assert os.path.samefile(latest, archived)
    assert stat.S_IMODE(latest.stat().st_mode) & 0o222 == 0
    before = archived.read_bytes()
    edit = subprocess.run(  # an analyst's script writing into the file in place, as an ordinary user
        ["/bin/sh", "-c", 'printf x >> "$1"', "sh", str(latest)],
        capture_output=True,
        text=True,
        user=65534 if os.geteuid() == 0 else None,
    )
    assert edit.returncode != 0 and "Permission denied" in edit.stderr
    assert (
        archived.read_bytes() == before
        and hashlib.sha256(before).hexdigest() in (data / "data" / "latest" / "latest.json").read_text()
    )
    site.dataset("ds-norm0", "2025-05-01", {"Data.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(3, 5, "new"))})
    ok, report = run_daily(site, data / "data")
    assert ok and report["notes"] == []  # the publisher still replaces a read-only file
    assert latest.read_bytes() == (version_of(data / "data", "ds-norm0", "2025-05-01") / "normalized.csv").read_bytes()
    assert archived.read_bytes() == before


def version_of(data: Path, identifier: str, modified: str) -> Path:
    [folder] = (data / "datasets" / identifier).glob(f"{modified}-*")
    return folder


def zero_file(path: Path) -> None:
    path.write_bytes(b"")


def test_a_repaired_version_does_not_report_its_schema_change_again(site, tmp_path):
    site.dataset("ds-drift", "2025-04-08", {"Data.csv": csv_bytes('"Facility ID","Score"', ['"1","2"'])})
    assert run_daily(site, tmp_path)[0]
    site.dataset("ds-drift", "2025-05-01", {"Data.csv": csv_bytes('"Facility ID","Rate"', ['"1","2"'])}, upload=2)
    ok, changed = run_daily(site, tmp_path)
    assert ok and changed["datasets"][0]["schema_change"]["renamed"]
    zero_file(version_of(tmp_path, "ds-drift", "2025-05-01") / "normalized.csv")
    ok, repaired = run_daily(site, tmp_path)
    assert ok
    [entry] = repaired["datasets"]
    assert "normalized.csv has 0 bytes" in entry["error"] and entry["schema_change"] is None
