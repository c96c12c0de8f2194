"""What a Windows user meets, through the real `luigi` command (`luigi.exe` on Windows): a daily cycle of cold run,
no-op, refresh and failure, a file held open as Excel holds it, a power cut's zero-length files, a data path
outside the ANSI code page with output to a pipe, a start in System32, a second copy, `python -m luigi`,
deploy/run-daily.cmd and the README's Task Scheduler action.

The same tests run on Linux in the suite and on Windows CPython in the Windows lane (tests/test_windows_lane.py),
so both systems are held to one behaviour; the few that need Windows itself say so."""

import ctypes
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import run_lock
from tests.doc_commands import block
from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import COMMAND, Site, command, query, write_project_cfg
from tests.loopback_server import LoopbackServer
from tests.luigid_support import loopback_env
from tests.stored_data import LocalData
from tests.typed_support import needs_duckdb

pytestmark = [pytest.mark.integration, pytest.mark.windows]

WINDOWS = sys.platform == "win32"
TIMEOUT = 600  # a task process starts in about 2 s under Wine
SUMMARY = re.compile(
    r"^HospitalsDaily run \S+ (succeeded|failed): (\d+) discovered, (\d+) downloaded, (\d+) up to date"
)


def rows(tag: str, count: int = 30) -> bytes:
    return csv_bytes(HEADER_OAS_CAHPS, quoted_rows(count, 5, tag))


def run_program(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """A program with its output to pipes (as Task Scheduler's log redirect or a CI runner gives it)."""
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env or loopback_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    print(result.stdout, result.stderr, sep="\n")  # shown when a test fails
    return result


def run(folder: Path, *extra: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The README's command."""
    return run_program(command(*extra), cwd or folder, env)


def summary(result: subprocess.CompletedProcess) -> tuple[str, int, int, int]:
    [line] = [line for line in result.stdout.splitlines() if SUMMARY.match(line)]
    status, discovered, downloaded, up_to_date = SUMMARY.match(line).groups()  # type: ignore[union-attr]
    return status, int(discovered), int(downloaded), int(up_to_date)


def writable(path: Path) -> bool:
    """The read-only attribute on Windows (shared by every hard link of the file, st_mode shows it), the mode bits
    on Linux (os.access would say yes to root)."""
    return bool(path.stat().st_mode & stat.S_IWUSR)


def only_version(data: Path, identifier: str, modified: str) -> Path:
    [folder] = data.glob(f"datasets/{identifier}/{modified}-*")
    return folder


class HeldOpen:
    """A file opened as Excel opens it: read access, others may read but not write or delete (so not rename)."""

    def __init__(self, path: Path):
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        kernel32.CreateFileW.restype = ctypes.c_void_p
        kernel32.CreateFileW.argtypes = [ctypes.c_wchar_p, *[ctypes.c_uint32] * 2, ctypes.c_void_p]
        kernel32.CreateFileW.argtypes += [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
        kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
        generic_read, file_share_read, open_existing = 0x80000000, 0x1, 3
        self.kernel32 = kernel32
        self.handle = kernel32.CreateFileW(str(path), generic_read, file_share_read, None, open_existing, 0, None)
        assert self.handle not in (None, ctypes.c_void_p(-1).value), ctypes.get_last_error()

    def close(self) -> None:
        self.kernel32.CloseHandle(self.handle)


@pytest.fixture
def project(tmp_path):
    with LoopbackServer() as server:
        site = Site(server)
        for identifier in ("aaa-1111", "bbb-2222", "ccc-3333"):
            site.dataset(identifier, "2025-01-01", {"Data.csv": rows(identifier)})
        write_project_cfg(site, tmp_path)
        yield site, tmp_path


def test_a_daily_cycle_keeps_every_archived_version_read_only(project):
    """Cold, a no-op the next day (no --no-lock: a stale pid must not refuse it), then a refresh with one new
    version and one whose file is gone."""
    site, folder = project
    data = folder / "data"
    cold = run(folder)
    assert cold.returncode == 0 and summary(cold) == ("succeeded", 3, 3, 0)
    assert not [line for line in cold.stderr.splitlines() if line.strip()]
    old = only_version(data, "aaa-1111", "2025-01-01") / "normalized.csv"
    assert not writable(old) and not writable(data / "latest" / "aaa-1111.csv")

    noop = run(folder)
    assert noop.returncode == 0 and summary(noop) == ("succeeded", 3, 0, 3)

    site.dataset("aaa-1111", "2025-04-01", {"Data.csv": rows("aaa-new")}, upload=1700100000)
    [gone] = site.dataset("bbb-2222", "2025-04-01", {"Data.csv": b""}, upload=1700100000, serve=False)
    refresh = run(folder)
    assert refresh.returncode == 30 and summary(refresh) == ("failed", 3, 1, 1)
    assert f"  FAILED bbb-2222: download of {site.server.base_url}{gone} failed: HTTP 404 Not Found" in (
        refresh.stdout.splitlines()
    )
    # One ERROR line for the failed task, as on Linux: no traceback, nothing from a last-resort handler.
    [error] = [line for line in refresh.stderr.splitlines() if line.strip()]
    assert error.startswith("ERROR: ") and "bbb-2222" in error and "HTTP 404" in error, refresh.stderr
    new = only_version(data, "aaa-1111", "2025-04-01") / "normalized.csv"
    assert (data / "latest" / "aaa-1111.csv").read_bytes() == new.read_bytes()
    assert b"aaa-new" in new.read_bytes()
    assert not writable(old), "the archived version lost its read-only protection"
    assert not writable(new) and not writable(data / "latest" / "aaa-1111.csv")
    assert query(data, "SELECT status FROM runs ORDER BY started_at, rowid") == [
        ("succeeded",),
        ("succeeded",),
        ("failed",),
    ]


def refresh_while_held(site: Site, folder: Path, held_path: Path, data: bytes) -> subprocess.CompletedProcess:
    """A new version of ccc-3333 fetched by a run while `held_path` is held open; the run succeeds."""
    site.dataset("ccc-3333", "2025-04-01", {"Data.csv": data}, upload=1700100000)
    held = HeldOpen(held_path)
    try:
        busy = run(folder)
    finally:
        held.close()
    assert busy.returncode == 0 and summary(busy) == ("succeeded", 3, 1, 2)
    return busy


@pytest.mark.skipif(not WINDOWS, reason="Windows' sharing rules: Linux replaces a file that is open")
def test_a_latest_file_held_open_waits_for_the_next_run_and_both_versions_stay_read_only(project):
    site, folder = project
    data = folder / "data"
    assert run(folder).returncode == 0
    latest = data / "latest" / "ccc-3333.csv"
    busy = refresh_while_held(site, folder, latest, rows("ccc-new"))
    assert "  NOTE latest/ccc-3333.csv is in use; it still holds version 2025-01-01; retried next run" in (
        busy.stdout.splitlines()
    )
    old = only_version(data, "ccc-3333", "2025-01-01") / "normalized.csv"
    new = only_version(data, "ccc-3333", "2025-04-01") / "normalized.csv"
    assert latest.read_bytes() == old.read_bytes()
    assert not writable(old) and not writable(new), "a version lost its read-only protection"
    assert not list(data.rglob("*-luigi-tmp-*"))

    released = run(folder)
    assert released.returncode == 0 and summary(released) == ("succeeded", 3, 0, 3)
    assert latest.read_bytes() == new.read_bytes()
    assert not writable(old) and not writable(new) and not writable(latest)


@pytest.mark.skipif(not WINDOWS, reason="Windows' sharing rules: Linux replaces a file that is open")
@needs_duckdb
def test_a_database_held_open_waits_for_the_next_run(project):
    site, folder = project
    cfg = folder / "luigi.cfg"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("# parquet = false", "parquet = true"), encoding="utf-8")
    data = folder / "data"
    assert run(folder).returncode == 0
    database = data / "latest" / "hospitals.duckdb"
    before = database.read_bytes()
    busy = refresh_while_held(site, folder, database, rows("ccc-new", 40))
    assert "  NOTE latest/hospitals.duckdb is in use; retried next run" in busy.stdout.splitlines()
    assert database.read_bytes() == before and not list(data.rglob("*-luigi-tmp-*"))
    released = run(folder)
    assert released.returncode == 0 and "NOTE" not in released.stdout
    assert database.read_bytes() != before  # made again, with the new file's view


def test_a_power_cuts_zero_length_files_are_repaired_with_notes(project):
    _site, folder = project
    data = folder / "data"
    assert run(folder).returncode == 0
    stored = LocalData(data)
    version = only_version(data, "bbb-2222", "2025-01-01")
    whole = (version / "normalized.csv").read_bytes()
    for key in ("latest/latest.json", "latest/index.csv", stored.key(str(version / "normalized.csv"))):
        stored.write(key, b"")  # in place, as the disk leaves a file whose data was never flushed
    (version / "normalized.csv").chmod(0o444)

    repaired = run(folder)
    assert repaired.returncode == 0 and summary(repaired) == ("succeeded", 3, 1, 2)  # made again from its source
    notes = [line for line in repaired.stdout.splitlines() if line.startswith("  NOTE ")]
    for fragment in ("latest/latest.json does not parse", "latest/index.csv has no header row", "normalized.csv"):
        assert any(fragment in note for note in notes), (fragment, notes)
    assert (version / "normalized.csv").read_bytes() == whole == (data / "latest" / "bbb-2222.csv").read_bytes()
    assert not writable(version / "normalized.csv")
    assert summary(run(folder)) == ("succeeded", 3, 0, 3)


def test_a_data_path_outside_the_ansi_code_page_with_output_to_a_pipe(tmp_path):
    """Windows writes a pipe or a log file in the ANSI code page (cp1252 here): a path with "Łódź" in it must
    not turn a good run into exit 30."""
    with LoopbackServer() as server:
        site = Site(server)
        site.dataset("aaa-1111", "2025-01-01", {"Data.csv": rows("a")}, title="Łódź hospitals")
        folder = tmp_path / "Łódź dane"
        folder.mkdir()
        write_project_cfg(site, folder)
        result = run(folder)
    assert result.returncode == 0, result.stderr
    assert summary(result) == ("succeeded", 1, 1, 0)
    assert query(folder / "data", "SELECT status FROM runs") == [("succeeded",)]
    assert not [line for line in result.stderr.splitlines() if line.strip()]
    assert (folder / "data" / "latest" / "aaa-1111.csv").is_file()


def test_started_elsewhere_with_luigi_config_path_the_data_stays_beside_the_config(project, tmp_path_factory):
    """Task Scheduler starts in System32 (cron in $HOME): with LUIGI_CONFIG_PATH naming the project's luigi.cfg,
    its relative `data_dir = data` is the project's data folder, not one in the start folder."""
    _site, folder = project
    start = Path(os.environ["SYSTEMROOT"]) / "System32" if WINDOWS else tmp_path_factory.mktemp("home")
    before = set(start.iterdir())
    result = run(folder, cwd=start, env=loopback_env(folder / "luigi.cfg"))
    assert result.returncode == 0 and summary(result) == ("succeeded", 3, 3, 0)
    assert all((folder / "data" / "latest" / f"{name}.csv").is_file() for name in ("aaa-1111", "bbb-2222", "ccc-3333"))
    assert set(start.iterdir()) == before


def test_python_m_luigi_gets_the_same_start_up_checks(tmp_path):
    result = run_program([sys.executable, "-m", "luigi", *COMMAND[1:]], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"pipeline: no luigi.cfg with [HospitalsDaily] metastore_url was found (looked in {tmp_path / 'luigi.cfg'}); "
        "run the command from the project folder (cd /path/to/project) or set LUIGI_CONFIG_PATH to its luigi.cfg"
    ]


def test_a_second_daily_run_on_the_same_folder_exits_10_and_the_first_finishes(project):
    site, folder = project
    [slow] = site.dataset("ddd-4444", "2025-01-01", {"Data.csv": rows("d")})
    site.server.fault(slow, delay=8)
    first = subprocess.Popen(
        command(), cwd=folder, env=loopback_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while site.server.count(slow) == 0:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
        second = run(folder)
        lock = run_lock.lock_path(run_lock.default_folder(), str(folder / "data"))
        assert second.returncode == 10
        assert second.stderr.splitlines() == [
            f"pipeline: a run on {folder / 'data'} is already running on this machine (it holds {lock}); "
            "nothing was done"
        ]
        out, _ = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0
    assert "HospitalsDaily run" in out and "succeeded: 4 discovered, 4 downloaded" in out


@pytest.mark.skipif(not WINDOWS, reason="cmd.exe")
def test_deploy_run_daily_cmd_runs_the_job_and_passes_its_exit_code_on(project):
    """deploy/run-daily.cmd as Task Scheduler starts it (in System32), its project folder moved to this one."""
    _site, folder = project
    shipped = (Path(__file__).resolve().parent.parent / "deploy" / "run-daily.cmd").read_bytes()
    assert b"C:\\cms-hospitals" in shipped
    (folder / "run-daily.cmd").write_bytes(shipped.replace(b"C:\\cms-hospitals", str(folder).encode("mbcs")))
    (folder / "logs").mkdir()
    venv = folder / ".venv" / "Scripts"
    venv.mkdir(parents=True)
    shutil.copy(command()[0], venv / "luigi.exe")  # what `py -m venv .venv && pip install -e .` leaves there
    system32 = Path(os.environ["SYSTEMROOT"]) / "System32"
    result = subprocess.run(
        ["cmd.exe", "/c", str(folder / "run-daily.cmd")],
        cwd=system32,
        env=loopback_env(),
        capture_output=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    log = (folder / "logs" / "daily.log").read_text(encoding="mbcs", errors="replace")
    assert result.returncode == 0, log
    assert "HospitalsDaily run" in log and "succeeded: 3 discovered, 3 downloaded" in log
    assert all((folder / "data" / "latest" / f"{name}.csv").is_file() for name in ("aaa-1111", "bbb-2222", "ccc-3333"))


@pytest.mark.skipif(not WINDOWS, reason="Task Scheduler's fields name luigi.exe")
def test_the_readmes_task_scheduler_action_runs_the_job(project):
    """The README's three fields, as Task Scheduler uses them: the program, its arguments, the start folder
    (the project folder moved to this one)."""
    _site, folder = project
    fields = dict(line.split(":", 1) for line in block("task-scheduler").text.splitlines())
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    program = Path(fields["Program/script"].replace(fields["Start in"], str(folder)))
    program.parent.mkdir(parents=True)
    shutil.copy(command()[0], program)  # what `py -m venv .venv && pip install -e .` leaves there
    result = run_program([str(program), *fields["Add arguments"].split()], cwd=folder)  # "Start in"
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result) == ("succeeded", 3, 3, 0)
