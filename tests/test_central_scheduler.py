"""The job against a real central scheduler (`luigid`) on 127.0.0.1: what luigid needs, how a client reaches it,
what luigid shows, and what two hosts sharing one luigid and one data folder do.

Every luigid, `luigi` client and HTTP server here is started by the test and stopped by it.
"""

import importlib.util
import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures import HEADER_IPF, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site, query
from tests.loopback_server import LoopbackServer
from tests.luigid_support import (
    LUIGID_CFG,
    Luigid,
    client_cfg,
    finish,
    free_port,
    luigi_command,
    start_client,
    stop_client,
)

pytestmark = pytest.mark.integration

FILES_PREFIX = "/provider-data/sites/default/files/"
ASSISTANT = "import luigi, pipeline; luigi.build([], assistant=True, workers=2)"  # luigid from [core] of luigi.cfg


@pytest.fixture
def luigid(tmp_path):
    server = Luigid(tmp_path / "luigid").start()
    try:
        yield server
    finally:
        server.stop()


def serve_datasets(site: Site, count: int) -> list[str]:
    paths = []
    for n in range(count):
        body = csv_bytes(HEADER_IPF, quoted_rows(4, 4, f"{n}"))
        paths += site.dataset(f"ds{n:02d}-test", "2025-04-08", {f"File{n}.csv": body})
    return paths


def write_cfg(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def scheduler_args(server: Luigid) -> list[str]:
    return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(server.port)]


def run_job_on(central: Luigid, site: Site, folder: Path, run_id: str, workers: int) -> tuple[Path, Path]:
    """The job as a client of `central`, from its own folder; returns (its data dir, its log)."""
    data_dir = folder / "data"
    config = write_cfg(folder / "client" / "luigi.cfg", client_cfg(site, data_dir))
    proc, log = start_client(
        luigi_command("--workers", str(workers), "--run-id", run_id, "--no-lock", *scheduler_args(central)),
        config,
        config.parent,
        "client.log",
    )
    assert finish(proc) == 0, output_of(log)
    return data_dir, log


def output_of(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


def assert_every_version_done(data_dir: Path, paths: list[str], run_id: str) -> None:
    assert query(data_dir, "SELECT run_id, status, discovered, downloaded, failed FROM runs") == [
        (run_id, "succeeded", len(paths), len(paths), 0)
    ]
    assert query(data_dir, "SELECT count(*), min(status), max(status) FROM versions") == [(len(paths), "done", "done")]
    assert query(data_dir, "SELECT outcome, count(*) FROM run_items GROUP BY outcome") == [("downloaded", len(paths))]
    report = json.loads((data_dir / "reports" / f"{run_id}.json").read_text(encoding="utf-8"))
    assert report["status"] == "succeeded"
    for entry in report["datasets"]:
        for path in entry["paths"].values():
            assert Path(path).is_file(), path
    assert not list(data_dir.rglob("*-luigi-tmp-*"))


# -- one client --------------------------------------------------------------------------------------------------


def test_job_runs_on_luigid_which_limits_downloads_and_knows_every_task_done(luigid, tmp_path):
    with LoopbackServer(latency=0.3) as server:
        site = Site(server)
        paths = serve_datasets(site, 6)
        # The shipped luigi.cfg says local_scheduler = true and cms_http = 4: the copy given to the client turns the
        # first off (the command line cannot, see the next test); the second no longer matters.
        data_dir, log = run_job_on(luigid, site, tmp_path, "central", workers=4)
        assert "HospitalsDaily run central succeeded" in output_of(log)

        # luigid's own [resources] cms_http = 2 is what limits downloads, not the client's luigi.cfg (4).
        assert server.peak_concurrency_for(FILES_PREFIX) == 2
        assert [(r["name"], r["num_total"]) for r in luigid.rpc("resource_list")] == [("cms_http", 2)]
        assert all(server.count(path) == 1 for path in paths) and server.count(CATALOG_PATH) == 1
        urls = sorted(server.base_url + path for path in paths)

    done = luigid.tasks("DONE")
    assert Counter(task["name"] for task in done.values()) == {
        "HospitalsDaily": 1,
        "FetchCatalog": 1,
        "DownloadCsv": 6,
        "NormalizeCsv": 6,
    }
    assert luigid.families() == luigid.families("DONE")  # nothing pending, running or failed
    downloads = [task["params"] for task in done.values() if task["name"] == "DownloadCsv"]
    assert sorted(params["url"] for params in downloads) == urls
    assert {params["run_id"] for params in downloads} == {"central"}
    [worker] = luigid.rpc("worker_list")
    assert worker["workers"] == 4 and worker["first_task"].startswith("HospitalsDaily_")
    assert_every_version_done(data_dir, paths, "central")

    # --logdir: luigid logs every API call there; --state-path: written on SIGTERM, read back on the next start.
    assert "/api/get_work" in luigid.server_log.read_text(encoding="utf-8")
    assert luigid.stop() == 0
    assert luigid.state_path.stat().st_size > 0
    with Luigid(luigid.folder) as restarted:
        assert restarted.families("DONE") == {
            "HospitalsDaily": 1,
            "FetchCatalog": 1,
            "DownloadCsv": 6,
            "NormalizeCsv": 6,
        }
    assert f"Attempting to load state from {luigid.state_path}" in luigid.server_log.read_text(encoding="utf-8")


def test_local_scheduler_true_in_luigi_cfg_wins_over_scheduler_host_and_an_overlay_config_turns_it_off(
    luigid, tmp_path
):
    with LoopbackServer() as server:
        site = Site(server)
        paths = serve_datasets(site, 2)
        data_dir = tmp_path / "data"
        job = tmp_path / "job"  # a deployment folder: the shipped luigi.cfg, as is but for catalog and data folder
        write_cfg(job / "luigi.cfg", client_cfg(site, data_dir, local_scheduler=True))
        lock = ["--lock-pid-dir", str(tmp_path / "lock")]

        # [core] local_scheduler = true cannot be undone on the command line (--local-scheduler is a store_true
        # flag; there is no --no-local-scheduler), and --scheduler-host/--scheduler-port are then ignored silently.
        proc, log = start_client(
            luigi_command("--run-id", "ignored", *lock, *scheduler_args(luigid)), None, job, "ignored.log"
        )
        assert finish(proc) == 0, output_of(log)
        assert luigid.tasks() == {} and luigid.rpc("worker_list") == []
        assert query(data_dir, "SELECT status, downloaded FROM runs") == [("succeeded", 2)]

        # LUIGI_CONFIG_PATH is read after ./luigi.cfg, so a small overlay switches the same folder to luigid.
        overlay = write_cfg(
            tmp_path / "central.cfg",
            "[core]\nlocal_scheduler = false\nscheduler_host = 127.0.0.1\n"
            f"scheduler_port = {luigid.port}\nrpc_retry_attempts = 2\n"
            "rpc_retry_wait = 1\n",
        )
        server.clear()
        proc, log = start_client(luigi_command("--run-id", "overlay", *lock), overlay, job, "overlay.log")
        assert finish(proc) == 0, output_of(log)
        assert server.paths() == [CATALOG_PATH]  # both versions are already done
        assert luigid.families("DONE") == {"HospitalsDaily": 1, "FetchCatalog": 1}
        [(status, up_to_date)] = query(data_dir, "SELECT status, up_to_date FROM runs WHERE run_id='overlay'")
        assert (status, up_to_date) == ("succeeded", len(paths))


def test_an_unreachable_luigid_fails_the_command_after_the_rpc_retries(tmp_path):
    with LoopbackServer() as server:
        site = Site(server)
        serve_datasets(site, 1)
        data_dir = tmp_path / "data"
        config = write_cfg(tmp_path / "client" / "luigi.cfg", client_cfg(site, data_dir))
        nobody = free_port()  # nothing listens there
        started = time.monotonic()
        proc, log = start_client(
            luigi_command(
                "--run-id", "down", "--no-lock", "--scheduler-host", "127.0.0.1", "--scheduler-port", str(nobody)
            ),
            config,
            config.parent,
            "client.log",
        )
        code = finish(proc, timeout=60)
        elapsed = time.monotonic() - started
    # rpc_retry_attempts = 2, rpc_retry_wait = 1 (client_cfg): about 1 s of retries, then [retcode]
    # unhandled_exception. Luigi's defaults (3 attempts, 30 s apart) make it about a minute per call.
    assert code == 40, output_of(log)
    assert "Errors (2 attempts) when connecting to remote scheduler" in output_of(log)
    assert elapsed < 30
    assert not data_dir.exists() and server.paths() == []  # nothing ran: the tasks never reached a scheduler


# -- two hosts, one luigid, one data folder ------------------------------------------------------------------------


def host_cfg(site: Site, data_dir: Path, folder: Path, server: Luigid, *, keep_alive: bool = False) -> Path:
    """A host's luigi.cfg: its own User-Agent, so the loopback server can tell the hosts' requests apart."""
    extra = (
        f"[download]\nuser_agent = {folder.name}\n"
        f"[core]\nscheduler_host = 127.0.0.1\nscheduler_port = {server.port}\n"
        f"[worker]\nkeep_alive = {str(keep_alive).lower()}\n"
    )
    if keep_alive:  # wait for tasks and cms_http slots another host holds, but not forever after a failure
        extra += "max_keep_alive_idle_duration = 5 seconds\nwait_interval = 0.5\nwait_jitter = 0.5\n"  # jitter: 5 s
    return write_cfg(folder / "luigi.cfg", client_cfg(site, data_dir, extra=extra))


def agents(server: LoopbackServer) -> Counter:
    return Counter(r.headers.get("User-Agent") for r in server.requests if r.path.startswith(FILES_PREFIX))


def test_two_hosts_with_the_same_run_id_fetch_each_file_once_but_one_host_does_all_the_work(tmp_path):
    """Both hosts run the README command with the same --run-id, at the same time, against one luigid.

    luigid deduplicates the tasks (same ids), so nothing is fetched twice and the run log shows one run. But the
    NormalizeCsv/DownloadCsv tasks are dynamic dependencies, yielded by HospitalsDaily.run: luigid gives them only
    to the worker that yielded them (scheduler.get_work: `worker_id in task.workers`, unless the worker is an
    assistant). The other host finds FetchCatalog running elsewhere, has nothing it may run, and with
    [worker] keep_alive = false leaves at once: Luigi counts that task as "being run by another worker" and
    exits with [retcode] already_running (10). So both processes cannot exit 0; see the assistant test below
    for a second host that does help.
    """
    # Default stable_done_cooldown_secs (10 s): with 0, a host that saw FetchCatalog incomplete just before the
    # other finished it could flip it back to PENDING and run it again.
    with (
        Luigid(tmp_path / "luigid", LUIGID_CFG.replace("stable_done_cooldown_secs = 0\n", "")) as central,
        LoopbackServer(latency=0.2) as server,
    ):
        site = Site(server)
        paths = serve_datasets(site, 12)
        server.fault(CATALOG_PATH, delay=2.0)  # both hosts have scheduled their tasks before the catalog is in
        data_dir = tmp_path / "shared-data"
        procs = {}
        for host in ("host-a", "host-b"):
            folder = tmp_path / host
            config = host_cfg(site, data_dir, folder, central)
            procs[host] = start_client(
                luigi_command("--workers", "2", "--run-id", "same", "--lock-pid-dir", str(folder / "lock")),
                config,
                folder,
                "out.log",
            )
        codes = {host: finish(proc) for host, (proc, _) in procs.items()}
        outputs = {host: output_of(log) for host, (_, log) in procs.items()}

        assert sorted(codes.values()) == [0, 10], outputs
        worker_host = next(host for host, code in codes.items() if code == 0)
        assert "HospitalsDaily run same succeeded: 12 discovered, 12 downloaded" in outputs[worker_host]
        assert server.count(CATALOG_PATH) == 1
        assert {path: server.count(path) for path in paths} == dict.fromkeys(paths, 1)
        assert agents(server) == {worker_host: 12}  # the other host downloaded nothing
        assert central.families("DONE") == {
            "HospitalsDaily": 1,
            "FetchCatalog": 1,
            "DownloadCsv": 12,
            "NormalizeCsv": 12,
        }
    assert_every_version_done(data_dir, paths, "same")


def test_an_assistant_worker_on_a_second_host_shares_the_downloads(tmp_path):
    """The setup that does spread one run over two hosts: host A runs the job; host B runs an assistant worker,
    which asks luigid for any runnable task. Both keep_alive = true: A waits for tasks B runs, B waits for work
    (an assistant with keep_alive never leaves by itself: it is a service, stopped here by the test).

    The assistant is `luigi.build([], assistant=True)`, not `luigi ... HospitalsDaily --assistant`: the luigi
    command always schedules its root task too, so an assistant started that way without the job's --run-id
    would start a run of its own."""
    with (
        Luigid(tmp_path / "luigid", LUIGID_CFG.replace("cms_http = 2", "cms_http = 4")) as central,
        LoopbackServer(latency=0.5) as server,
    ):
        site = Site(server)
        paths = serve_datasets(site, 12)
        data_dir = tmp_path / "shared-data"
        args = ["--workers", "2", "--run-id", "shared"]
        folder_a, folder_b = tmp_path / "host-a", tmp_path / "host-b"
        config_a = host_cfg(site, data_dir, folder_a, central, keep_alive=True)
        config_b = host_cfg(site, data_dir, folder_b, central, keep_alive=True)
        job, log_a = start_client(
            luigi_command(*args, "--lock-pid-dir", str(folder_a / "lock")), config_a, folder_a, "out.log"
        )
        assistant = None
        try:
            deadline = time.monotonic() + 30
            while not central.families().get("NormalizeCsv"):  # A has run FetchCatalog and yielded the versions
                assert time.monotonic() < deadline and job.poll() is None, output_of(log_a)
                time.sleep(0.05)
            assistant, _log_b = start_client([sys.executable, "-c", ASSISTANT], config_b, folder_b, "out.log")
            ran_by = {}  # DownloadCsv task id -> the worker luigid saw running it (each takes >= 0.5 s)
            deadline = time.monotonic() + 60  # A may leave while B still closes the run
            while central.families("DONE").get("HospitalsDaily") != 1:
                assert time.monotonic() < deadline, output_of(log_a)
                ran_by.update(
                    {
                        task_id: task["worker_running"]
                        for task_id, task in central.tasks("RUNNING").items()
                        if task["name"] == "DownloadCsv"
                    }
                )
                time.sleep(0.05)
            code_a = finish(job, timeout=60)
        finally:
            for proc in (job, assistant):
                if proc is not None:
                    stop_client(proc)

        pids = Counter(worker.rpartition("pid=")[2].rstrip(")") for worker in ran_by.values())
        assert pids.keys() == {str(job.pid), str(assistant.pid)} and sum(pids.values()) == 12, (pids, ran_by)
        # The run's [download] settings travel with its tasks through luigid (a hidden task parameter), so the
        # assistant downloads with host A's settings (User-Agent here), not with its own luigi.cfg.
        assert agents(server) == {"host-a": 12}
        assert {path: server.count(path) for path in paths} == dict.fromkeys(paths, 1)
        assert server.count(CATALOG_PATH) == 1
    assert_every_version_done(data_dir, paths, "shared")
    # A's exit code says what A's own worker saw, not how the run went: 0 if A ran the last step itself,
    # 10 (already_running) if it waited on a task B was running, 25 (not_run) if B finished HospitalsDaily.
    # The run log (runs.status) is the reliable result of a shared run.
    assert code_a in (0, 10, 25), output_of(log_a)


def test_two_overlapping_runs_with_different_run_ids_both_succeed(tmp_path):
    """Two hosts' cron jobs (or two differently worded commands, which the per-host pid lock does not stop) with
    their own run ids share no task, run_id being a parameter of every task: they fetch the same versions at
    the same time into one data folder. Without the version folder lock (pipeline/storage/, Storage.lock), one
    run deleted the other's download in progress as a stale temp file (FileNotFoundError at the rename) or lost
    the rename race (luigi FileAlreadyExists), and its datasets failed."""
    with (
        Luigid(tmp_path / "luigid", LUIGID_CFG.replace("stable_done_cooldown_secs = 0\n", "")) as central,
        LoopbackServer(latency=0.5) as server,
    ):
        site = Site(server)
        paths = serve_datasets(site, 8)
        data_dir = tmp_path / "shared-data"
        procs = {}
        for host in ("host-a", "host-b"):
            folder = tmp_path / host
            procs[host] = start_client(
                luigi_command("--workers", "2", "--run-id", f"run-{host}", "--lock-pid-dir", str(folder / "lock")),
                host_cfg(site, data_dir, folder, central, keep_alive=True),
                folder,
                "out.log",
            )
        codes = {host: finish(proc) for host, (proc, _) in procs.items()}
        outputs = {host: output_of(log) for host, (_, log) in procs.items()}
    assert dict(query(data_dir, "SELECT run_id, status FROM runs")) == {
        "run-host-a": "succeeded",
        "run-host-b": "succeeded",
    }, outputs
    assert codes == {"host-a": 0, "host-b": 0}, outputs
    # The second run to reach a version waits for the folder lock, then finds it done: one fetch per file.
    assert {path: server.count(path) for path in paths} == dict.fromkeys(paths, 1)
    assert query(data_dir, "SELECT sum(downloaded), sum(up_to_date) FROM runs") == [(len(paths), len(paths))]
    assert query(data_dir, "SELECT count(*), min(status), max(status) FROM versions") == [(len(paths), "done", "done")]
    assert len(list(data_dir.glob("datasets/*/*/normalized.csv"))) == len(paths)
    assert not list(data_dir.rglob("*-luigi-tmp-*"))


# -- task history ----------------------------------------------------------------------------------------------


def test_luigid_records_task_history_in_sqlite(tmp_path):
    if importlib.util.find_spec("sqlalchemy") is None:
        pytest.skip("task history needs SQLAlchemy < 2 in luigid's environment (pip install 'sqlalchemy<2')")
    import sqlalchemy

    if int(sqlalchemy.__version__.split(".")[0]) >= 2:
        pytest.skip(
            f"SQLAlchemy {sqlalchemy.__version__}: luigi 3.8.1's db_task_history needs < 2 "
            "(it executes plain SQL strings, which 2.x refuses: ObjectNotExecutableError)"
        )
    history = tmp_path / "history.db"
    config = (
        LUIGID_CFG.replace("record_task_history = false", "record_task_history = true")
        + f"\n[task_history]\ndb_connection = sqlite:///{history.as_posix()}\n"
    )
    with Luigid(tmp_path / "luigid", config) as central, LoopbackServer() as server:
        site = Site(server)
        paths = serve_datasets(site, 2)
        data_dir, _ = run_job_on(central, site, tmp_path, "history", workers=2)
    assert_every_version_done(data_dir, paths, "history")
    with sqlite3.connect(history) as db:
        tasks = Counter(dict(db.execute("SELECT name, count(*) FROM tasks GROUP BY name")))
        events = {row[0] for row in db.execute("SELECT event_name FROM task_events")}
        params = dict(
            db.execute(
                "SELECT p.name, p.value FROM task_parameters p JOIN tasks t ON t.id = p.task_id"
                " WHERE t.name = 'HospitalsDaily'"
            )
        )
    assert tasks == {"HospitalsDaily": 1, "FetchCatalog": 1, "DownloadCsv": 2, "NormalizeCsv": 2}
    assert {"PENDING", "RUNNING", "DONE"} <= events
    assert params["run_id"] == "history" and params["data_dir"] == str(data_dir)
