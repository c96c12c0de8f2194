"""kill -9 in the middle of a download, and a second copy started while one runs."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, command, query, run_command, write_project_cfg
from tests.loopback_server import LoopbackServer

pytestmark = [pytest.mark.integration, pytest.mark.skipif(sys.platform == "win32", reason="kills a process group")]

BIG = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(60_000, 5))  # ~2 MB, 10 s at the throttled rate


@pytest.fixture
def site(tmp_path, runlog_engine, data):
    """The site, and the luigi.cfg of the run, once per run-log engine and storage (tests/conftest.py)."""
    with LoopbackServer(bandwidth=200_000) as server:
        site = Site(server)
        site.dataset("dgck-syfz", "2025-04-08", {"HCAHPS.csv": BIG})
        for n in range(3):
            site.dataset(f"small-{n:03d}", "2025-04-08", {"S.csv": csv_bytes('"A","B"', ['"1","2"'] * 10)})
        write_project_cfg(site, tmp_path, data_dir=data.dir)
        yield site


def start(folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(*extra),
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def partial_downloads(folder: Path) -> list[Path]:
    """In the version folder on disk; in the scratch folder where the data is in object storage."""
    return [
        *folder.glob("data/datasets/dgck-syfz/*/source.csv-luigi-tmp-*"),
        *folder.glob("scratch/cms-pipeline/*/source.csv-luigi-tmp-*"),
    ]


def test_kill_9_mid_download_then_the_next_run_completes_everything(site, tmp_path, data):
    job = start(tmp_path, "--lock-pid-dir", str(tmp_path / "locks"))
    try:
        wait_for(lambda: any(p.stat().st_size > 100_000 for p in partial_downloads(tmp_path)))
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.communicate(timeout=30)
    assert partial_downloads(tmp_path)
    assert not [key for key in data.listing("datasets/dgck-syfz") if key.endswith("source.csv")]
    assert query(data.runlog_dir, "SELECT status FROM runs") == [("running",)]

    site.server.bandwidth = None
    again = run_command(tmp_path, "--lock-pid-dir", str(tmp_path / "locks"))
    assert again.returncode == 0, again.stderr
    assert not list(tmp_path.rglob("*-luigi-tmp-*")) and not list(tmp_path.glob("scratch/cms-pipeline/*"))
    assert not [key for key in data.listing() if "-luigi-tmp-" in key or key.endswith(".staged")]
    [normalized] = [key for key in data.listing("datasets/dgck-syfz") if key.endswith("normalized.csv")]
    out = data.read(normalized)
    assert out[out.index(b"\n") :] == BIG[BIG.index(b"\n") :]
    [(rows, sha)] = query(data.runlog_dir, "SELECT rows, sha256 FROM versions WHERE identifier='dgck-syfz'")
    assert rows == 60_000 and sha == hashlib.sha256(out).hexdigest()
    assert query(data.runlog_dir, "SELECT status FROM runs ORDER BY started_at, run_id") == [
        ("interrupted",),
        ("succeeded",),
    ]
    assert query(data.runlog_dir, "SELECT count(*) FROM versions WHERE status='done'") == [(4,)]


def test_a_second_copy_exits_already_running_and_the_first_finishes(site, tmp_path, data):
    lock = ("--lock-pid-dir", str(tmp_path / "locks"))
    first = start(tmp_path, *lock)
    try:
        wait_for(lambda: partial_downloads(tmp_path))
        second = run_command(tmp_path, *lock)
        assert second.returncode == 10, second.stderr  # [retcode] already_running
        assert "already running" in (second.stdout + second.stderr).lower()
        site.server.bandwidth = None
        _out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err
    assert query(data.runlog_dir, "SELECT status, downloaded FROM runs") == [("succeeded", 4)]
