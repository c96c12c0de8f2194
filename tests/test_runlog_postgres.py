"""The `luigi` command with its run log on PostgreSQL: a server it cannot use stops the run before anything is
fetched, with one line and exit code 3; a restart mid-run costs at most the outcomes it cut off, and the next
run completes; two runs at once share the work; the password is in no output, file or table."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runlog_engines import engine_for
from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, command, console_script, project_cfg_lines
from tests.loopback_server import LoopbackServer
from tests.luigid_support import finish, free_port, loopback_env, stop_client
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
    hidden = tmp_path / "no-driver" / "psycopg2"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'psycopg2'\")\n", encoding="utf-8")
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
    """Both name the run log on the command line (luigi.cfg's is empty: SQLite), the password in the URL."""
    url = postgres.url()
    configure(site, tmp_path, "")
    site.server.bandwidth = 400_000
    first = start(tmp_path, "--run-id", "one", "--runlog-url", url)
    wait_for(lambda: site.server.paths())
    second = start(tmp_path, "--run-id", "two", "--runlog-url", url)
    outputs = [proc.communicate(timeout=180) for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    downloads = [p for p in site.server.paths() if p.endswith(".csv")]
    assert sorted(downloads) == sorted(set(downloads)) and len(downloads) == 5
    assert sorted(query_url(url, "SELECT run_id, status, discovered FROM runs")) == [
        ("one", "succeeded", 5),
        ("two", "succeeded", 5),
    ]
    assert all((tmp_path / "data" / "reports" / f"{run_id}.json").exists() for run_id in ("one", "two"))
    assert not (tmp_path / "data" / "runlog.sqlite").exists()
    for out, _err in outputs:  # each run printed its own summary once
        assert out.count("HospitalsDaily run ") == 1
        assert PASSWORD not in out + _err
    # The dry run reads the same run log: everything is up to date.
    plan = subprocess.run(
        [console_script("luigi"), "--module", "pipeline", "HospitalsPlan", "--runlog-url", url],
        cwd=tmp_path,
        env=loopback_env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert plan.returncode == 0, plan.stderr
    statuses = [line.split()[0] for line in plan.stdout.splitlines()[2:-2]]  # below the header, above the counts
    assert statuses == ["up_to_date"] * 5, plan.stdout


def query_url(url: str, sql: str) -> list[tuple]:
    with engine_for(url, Path("unused")).connection() as db:
        return [tuple(row) for row in db.execute(sql).fetchall()]


def test_the_password_is_in_no_output_file_table_or_luigid_of_a_shared_run(postgres, tmp_path, luigi_setting):
    """A run shared by the job and an assistant on luigid, the password in each machine's configuration (the URL
    in luigi.cfg and central.cfg), one dataset failing: the password is nowhere but in those files."""
    from tests.test_shared_run import deployed, serve, start_assistant, start_shared_run, two_hosts

    url = postgres.url()
    assert f":{PASSWORD}@" in url
    luigi_setting("runlog", "url", url)  # written into each host's luigi.cfg by project_cfg_lines
    with deployed(tmp_path, latency=0.1) as (luigid, site):
        serve(site, 4, missing=1)
        _data_dir, job_folder, helper_folder = two_hosts(tmp_path, site, luigid)
        job, job_log = start_shared_run(job_folder, "secret", workers=2)
        assistant, assistant_log = start_assistant(helper_folder)
        try:
            assert finish(job, timeout=120) == 30, job_log.read_text(encoding="utf-8")
            api = json.dumps([luigid.tasks(), luigid.rpc("worker_list")])
        finally:
            stop_client(assistant)
    # Three versions done, one failed (FAILED in luigid, docs/operations.md), with the run log on PostgreSQL.
    statuses = sorted(t["status"] for t in json.loads(api)[0].values() if t["name"] == "DownloadCsv")
    assert statuses == ["DONE", "DONE", "DONE", "FAILED"]
    configs = ("luigi.cfg", "central.cfg")  # what each machine's user wrote, the password with the URL
    assert all(
        f":{PASSWORD}@" in (folder / name).read_text() for folder in (job_folder, helper_folder) for name in configs
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in configs]
    assert luigid.state_path in written and job_log in written and assistant_log in written
    assert len([p for p in written if p.name == "header_map.json"]) == 3
    leaks = [str(p) for p in written if PASSWORD.encode() in p.read_bytes()]
    assert leaks == []
    assert PASSWORD not in api
    assert "password authentication" not in job_log.read_text(encoding="utf-8")
    with engine_for(url, tmp_path / "unused").connection() as db:
        tables = [r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")]
        dump = "".join(str(db.execute(f"SELECT * FROM {table}").fetchall()) for table in tables)
    assert "secret" in dump and PASSWORD not in dump  # the run's rows, without the password


def test_spawned_workers_find_the_password_in_their_own_luigi_cfg(postgres, site, tmp_path):
    """As on Windows with a process per task (PIPELINE_TASK_THREADS=0, or a worker timeout): each task process is
    a fresh interpreter that never saw where the run started. The URL comes with the task, without its password;
    the process finds the password in the luigi.cfg it reads."""
    from tests.test_spawn import BUILD_SCRIPT

    url = postgres.url()
    config = tmp_path / "runlog.cfg"
    config.write_text(f"[runlog]\nurl = {url}\n", encoding="utf-8")
    script = tmp_path / "build_daily.py"
    script.write_text(BUILD_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), "spawn", str(tmp_path / "data"), site.metastore_url],
        cwd=tmp_path,
        env={**loopback_env(config), "PIPELINE_TASK_THREADS": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["ok"] and result["start_method"] == "spawn" and result["spawned"] >= 11, result
    assert query_url(url, "SELECT run_id, status, downloaded FROM runs") == [("cmp", "succeeded", 5)]
    assert not (tmp_path / "data" / "runlog.sqlite").exists()
    assert PASSWORD not in done.stdout + done.stderr
