"""The `luigi` command with its run log on PostgreSQL: a server it cannot use stops the run before anything is
fetched, with one line and exit code 3; a restart mid-run costs at most the outcomes it cut off, and the next
run completes; two runs at once share the work; the password is in no output, file or table."""

import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, command, project_cfg_lines
from tests.loopback_server import LoopbackServer
from tests.luigid_support import free_port, loopback_env
from tests.postgres_support import PASSWORD, USER

pytestmark = pytest.mark.integration

RUNLOG_UNAVAILABLE = 3  # docs/operations.md, pipeline/preflight.py
SMALL = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(50, 5))
BIG = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(30_000, 5))  # ~1 MB: seconds at the throttled rate


@pytest.fixture
def site():
    with LoopbackServer() as server:
        site = Site(server)
        site.dataset("big-0001", "2025-04-08", {"Big.csv": BIG})
        for n in range(4):
            site.dataset(f"small-{n:03d}", "2025-04-08", {"S.csv": SMALL})
        yield site


def configure(site: Site, folder: Path, runlog_url: str) -> None:
    (folder / "luigi.cfg").write_text("\n".join(project_cfg_lines(site, url=runlog_url)) + "\n", encoding="utf-8")


def start(folder: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command("--lock-pid-dir", str(folder / "locks"), *extra),
        cwd=folder,
        env=env or loopback_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(folder: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = start(folder, *extra, env=env)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.parametrize("problem", ["wrong password", "nobody listening", "no such database"])
def test_a_run_log_server_it_cannot_use_stops_the_run_before_anything_with_one_line(postgres, site, tmp_path, problem):
    database = postgres.new_database()
    port, password = postgres.port, PASSWORD
    if problem == "wrong password":
        password = "not-the-password-7731"
    elif problem == "nobody listening":
        port = free_port()
    else:
        database = "no_such_database"
    configure(site, tmp_path, f"postgresql://{USER}:{password}@127.0.0.1:{port}/{database}")
    started = time.monotonic()
    done = run(tmp_path)
    assert time.monotonic() - started < 10  # the connect timeout
    assert done.returncode == RUNLOG_UNAVAILABLE, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"pipeline: run log 127.0.0.1:{port}/{database}: cannot connect: ")
    cause = {
        "wrong password": f'password authentication failed for user "{USER}"',
        "nobody listening": "Connection refused",
        "no such database": f'database "{database}" does not exist',
    }[problem]
    assert cause in line
    assert password not in done.stdout + done.stderr
    assert site.server.paths() == []  # not even the catalog
    assert not (tmp_path / "data").exists()


def test_a_postgresql_url_without_the_driver_installed_says_what_to_install(postgres, site, tmp_path):
    configure(site, tmp_path, postgres.url())
    hidden = tmp_path / "no-driver" / "psycopg"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'psycopg'\")\n", encoding="utf-8")
    env = {**loopback_env(), "PYTHONPATH": str(hidden.parent)}
    done = run(tmp_path, env=env)
    assert done.returncode == RUNLOG_UNAVAILABLE, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "driver is not installed: pip install -e .[postgres]" in line
    assert site.server.paths() == []


def test_postgresql_stopped_before_a_run_then_restarted_mid_run(postgres, site, tmp_path):
    url = postgres.url()
    configure(site, tmp_path, url)
    postgres.stop_server()
    try:
        stopped = run(tmp_path)
    finally:
        postgres.start_server()
    assert stopped.returncode == RUNLOG_UNAVAILABLE, stopped.stderr
    assert f"run log 127.0.0.1:{postgres.port}/" in stopped.stderr and site.server.paths() == []

    site.server.bandwidth = 200_000
    job = start(tmp_path, "--run-id", "first")
    try:
        wait_for(lambda: list(tmp_path.glob("data/datasets/big-0001/*/source.csv-luigi-tmp-*")))
        postgres.stop_server()
        postgres.start_server()
        site.server.bandwidth = None
        _out, err = job.communicate(timeout=120)
    finally:
        job.kill()
    if job.returncode != 0:  # a version that could not record its outcome says so
        assert "run log 127.0.0.1:" in err, err
        assert "Traceback" not in err, err
    again = run(tmp_path, "--run-id", "second")
    assert again.returncode == 0, again.stderr
    statuses = dict(query_url(url, "SELECT run_id, status FROM runs"))
    assert statuses["second"] == "succeeded" and statuses["first"] in ("succeeded", "interrupted", "failed")
    assert query_url(url, "SELECT count(*) FROM versions WHERE status='done'") == [(5,)]
    assert len(list(tmp_path.glob("data/latest/*.csv"))) == 6  # 5 files and index.csv


def test_two_runs_at_once_on_one_postgresql_fetch_each_file_once_and_both_close(postgres, site, tmp_path):
    url = postgres.url()
    configure(site, tmp_path, url)
    site.server.bandwidth = 400_000
    first = start(tmp_path, "--run-id", "one")
    wait_for(lambda: site.server.paths())
    second = start(tmp_path, "--run-id", "two")
    outputs = [proc.communicate(timeout=180) for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    downloads = [p for p in site.server.paths() if p.endswith(".csv")]
    assert sorted(downloads) == sorted(set(downloads)) and len(downloads) == 5
    assert sorted(query_url(url, "SELECT run_id, status, discovered FROM runs")) == [
        ("one", "succeeded", 5),
        ("two", "succeeded", 5),
    ]
    assert (tmp_path / "data" / "reports" / "one.json").exists() and (
        tmp_path / "data" / "reports" / "two.json"
    ).exists()
    for out, _err in outputs:  # each run printed its own summary once
        assert out.count("HospitalsDaily run ") == 1


def query_url(url: str, sql: str) -> list[tuple]:
    from pipeline.runlog_engines import engine_for

    with engine_for(url, Path("unused")).connection() as db:
        return [tuple(row) for row in db.execute(sql).fetchall()]
