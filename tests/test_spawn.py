"""Worker processes started with "spawn", as on Windows and macOS: Luigi pickles each task into a fresh
interpreter, which imports the pipeline and reads luigi.cfg again but never sees the parent's command line.
The job's tasks run in threads (pipeline/task_threads.py); a process per task is what Luigi does with
PIPELINE_TASK_THREADS=0, or with a worker timeout, and what these tests compare the threads with.

The runs happen in fresh Python processes (the start method is per process); the loopback site stays here.
"""

import json
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from luigi.task import flatten

from pipeline import DownloadCsv, FetchCatalog, HospitalsDaily, NormalizeCsv
from pipeline.tasks import DatasetError
from tests.fixtures import HEADER_IPF, HEADER_OAS_CAHPS, HEADER_UNQUOTED_LF, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site
from tests.loopback_server import LoopbackServer
from tests.luigid_support import client_cfg, loopback_env

pytestmark = pytest.mark.integration

START_METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]

# A file, not `python -c`: under spawn every worker process imports it again as __mp_main__, so it needs the guard
# (as any script that calls luigi.build with workers > 1 on Windows does).
BUILD_SCRIPT = """\
import json
import multiprocessing
import multiprocessing.spawn
import sys

spawned = []
_prepare = multiprocessing.spawn.get_preparation_data


def _counting(name):  # called once for every process started by spawn (or forkserver), never by fork
    spawned.append(name)
    return _prepare(name)


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)
    multiprocessing.spawn.get_preparation_data = _counting
    import luigi

    from pipeline import HospitalsDaily

    task = HospitalsDaily(data_dir=sys.argv[2], run_id="cmp", metastore_url=sys.argv[3])
    ok = luigi.build([task], local_scheduler=True, workers=3, log_level="WARNING")
    print("RESULT " + json.dumps({"ok": ok, "start_method": multiprocessing.get_start_method(),
                                  "spawned": len(spawned)}), flush=True)
"""

CLI_SCRIPT = textwrap.dedent("""\
    import multiprocessing
    import sys

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[1], force=True)
        from luigi.cmdline import luigi_run

        luigi_run(sys.argv[2:])  # what the `luigi` console script runs; exits with the [retcode] code
""")


def publish(site: Site) -> dict[str, bytes]:
    files = {
        "oas": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(20, 5)),
        "lf": csv_bytes(HEADER_UNQUOTED_LF, ["A,1 Main,Dothan,AL,36301,31.2,-85.3"] * 3, newline="\n"),
        "bom": b"\xef\xbb\xbf" + csv_bytes(HEADER_IPF, quoted_rows(3, 4, "a")),
        "cp1252": '"Hôpital","Score"\r\n"Saint-Étienne","1"\r\n'.encode("cp1252"),
        "ipf": csv_bytes(HEADER_IPF, quoted_rows(6, 4, "b")),
    }
    site.dataset("48nr-hqxx", "2025-04-08", {"OAS.csv": files["oas"]})
    site.dataset("hbf-map", "2025-01-02", {"map.csv": files["lf"]})
    site.dataset("ipf1-2345", "2025-03-01", {"IPF_A.csv": files["bom"], "IPF_B.csv": files["ipf"]})
    site.dataset("enc1-0001", "2025-01-01", {"Latin.csv": files["cp1252"]})
    return files


def run_python(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        env=env or loopback_env(),
    )


# -- pickling ----------------------------------------------------------------------------------------------------


def graph(data_dir: str = "/srv/cms/data"):
    daily = HospitalsDaily(
        data_dir=data_dir,
        run_id="20250408-061500-000",
        metastore_url="http://127.0.0.1:9/provider-data/api/1/metastore/schemas/dataset/items",
    )
    normalize = NormalizeCsv(
        data_dir=data_dir,
        run_id=daily.run_id,
        identifier="48nr-hqxx",
        modified="2025-04-08",
        url="http://127.0.0.1:9/provider-data/sites/default/files/resources/ab_1/OAS.csv",
    )
    return [daily, daily.requires(), normalize, normalize.requires()]


def test_every_task_pickles_and_comes_back_equal():
    for task in graph():
        back = pickle.loads(pickle.dumps(task))
        assert type(back) in (HospitalsDaily, FetchCatalog, NormalizeCsv, DownloadCsv)
        assert back == task and back.task_id == task.task_id
        assert back.param_kwargs == task.param_kwargs
        assert back.to_str_params() == task.to_str_params()
        assert [t.path for t in flatten(back.output())] == [t.path for t in flatten(task.output())]
        assert back.requires() == task.requires()
    error = pickle.loads(pickle.dumps(DatasetError("48nr-hqxx", "HTTP 404")))
    assert (error.identifier, error.cause, str(error)) == ("48nr-hqxx", "HTTP 404", "48nr-hqxx: HTTP 404")


def test_a_task_pickled_here_keeps_its_run_id_in_a_fresh_interpreter(tmp_path):
    """HospitalsDaily's default run_id is the import time: a spawned worker's import gives another one, so only
    values pickled with the instance may count (they do: the instance carries every parameter value)."""
    daily = HospitalsDaily(data_dir=str(tmp_path), metastore_url="http://127.0.0.1:9/items")  # default run_id
    blob = tmp_path / "tasks.pickle"
    blob.write_bytes(pickle.dumps([daily, *graph(str(tmp_path))]))
    time.sleep(0.01)  # the default has millisecond resolution
    code = textwrap.dedent("""\
        import json, pickle, sys
        from pipeline import HospitalsDaily
        tasks = pickle.loads(open(sys.argv[1], "rb").read())
        own_default = dict(HospitalsDaily.get_params())["run_id"]._default
        print(json.dumps({"run_id": tasks[0].run_id, "own_default": own_default, "ids": [t.task_id for t in tasks],
                          "fresh_equal": [t == type(t)(**t.param_kwargs) for t in tasks]}))
    """)
    result = run_python(["-c", code, str(blob)], tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["run_id"] == daily.run_id != seen["own_default"]
    assert seen["ids"] == [t.task_id for t in [daily, *graph(str(tmp_path))]]
    assert all(seen["fresh_equal"])


# -- whole runs ----------------------------------------------------------------------------------------------------


def build_run(site: Site, folder: Path, method: str, threads: bool = False) -> tuple[dict, Path]:
    folder.mkdir()
    script = folder / "build_daily.py"
    script.write_text(BUILD_SCRIPT, encoding="utf-8")
    data_dir = folder / "data"
    env = {**loopback_env(), **({} if threads else {"PIPELINE_TASK_THREADS": "0"})}
    result = run_python([str(script), method, str(data_dir), site.metastore_url], folder, env)
    assert result.returncode == 0, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), data_dir


def comparable_report(data_dir: Path) -> dict:
    report = json.loads((data_dir / "reports" / "cmp.json").read_text(encoding="utf-8"))
    text = json.dumps(report).replace(str(data_dir), "<data>").replace(json.dumps(str(data_dir))[1:-1], "<data>")
    report = json.loads(text)
    for key in ("started_at", "finished_at"):
        report.pop(key, None)
    return report


def runlog_rows(data_dir: Path) -> dict:
    import sqlite3

    with sqlite3.connect(data_dir / "runlog.sqlite") as db:
        return {
            "runs": db.execute(
                "SELECT run_id, status, discovered, downloaded, up_to_date, failed, invalid FROM runs"
            ).fetchall(),
            "versions": db.execute(
                "SELECT identifier, modified, download_url, status, error, source_encoding, rows,"
                " bytes, sha256 FROM versions ORDER BY 1, 2, 3"
            ).fetchall(),
            "run_items": db.execute(
                "SELECT run_id, identifier, modified, download_url, outcome, error FROM run_items ORDER BY 2, 3, 4"
            ).fetchall(),
        }


def files_under(data_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(data_dir).as_posix(): p.read_bytes()
        for p in sorted((data_dir / "datasets").rglob("*"))
        if p.is_file() and p.suffix == ".csv"
    }


@pytest.mark.skipif("fork" not in START_METHODS, reason="needs fork to compare with (not on Windows)")
def test_threads_and_spawned_workers_give_the_same_outputs_report_and_run_log_as_forked_ones(tmp_path):
    with LoopbackServer() as server:
        site = Site(server)
        publish(site)
        forked, fork_data = build_run(site, tmp_path / "fork", "fork")
        server.clear()
        spawned, spawn_data = build_run(site, tmp_path / "spawn", "spawn")
        spawn_paths = Counter(server.paths())
        server.clear()
        threads, thread_data = build_run(site, tmp_path / "threads", "spawn", threads=True)
        thread_paths = Counter(server.paths())

    assert forked == {"ok": True, "start_method": "fork", "spawned": 0}
    assert spawned["ok"] and spawned["start_method"] == "spawn"
    assert spawned["spawned"] >= 12  # a process per task: catalog, the run, 5 downloads, 5 normalizations
    assert spawn_paths[CATALOG_PATH] == 1 and len(spawn_paths) == 6 and set(spawn_paths.values()) == {1}

    assert files_under(spawn_data) == files_under(fork_data)
    assert len(files_under(spawn_data)) == 10
    report = comparable_report(spawn_data)
    assert report == comparable_report(fork_data)
    assert report["status"] == "succeeded" and report["counts"]["downloaded"] == 5
    assert runlog_rows(spawn_data) == runlog_rows(fork_data)
    assert runlog_rows(spawn_data)["runs"][0][:4] == ("cmp", "succeeded", 5, 5)
    assert not list(spawn_data.rglob("*-luigi-tmp-*"))

    # The same run in threads of one process: nothing spawned, the same requests, files, report and run log.
    assert threads == {"ok": True, "start_method": "spawn", "spawned": 0}
    assert thread_paths == spawn_paths
    assert files_under(thread_data) == files_under(fork_data)
    assert comparable_report(thread_data) == report
    assert runlog_rows(thread_data) == runlog_rows(fork_data)


# -- the luigi command under spawn ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The `luigi` command's code path (luigi_run) per start method, with a [download] flag on the command line."""
    runs = {}
    with LoopbackServer() as server:
        site = Site(server)
        publish(site)
        for method in START_METHODS:
            folder = tmp_path_factory.mktemp(f"cli-{method}")
            data_dir = folder / "data"
            config = folder / "luigi.cfg"
            config.write_text(client_cfg(site, data_dir, local_scheduler=True), encoding="utf-8")
            script = folder / "luigi_main.py"
            script.write_text(CLI_SCRIPT, encoding="utf-8")
            server.clear()
            result = run_python(
                [
                    str(script),
                    method,
                    "--module",
                    "pipeline",
                    "HospitalsDaily",
                    "--workers",
                    "3",
                    "--run-id",
                    "cli",
                    "--lock-pid-dir",
                    str(folder / "lock"),
                    "--download-user-agent",
                    "set-on-the-command-line",
                ],
                folder,
                loopback_env(config),
            )
            runs[method] = (result, data_dir, Counter(r.headers.get("User-Agent") for r in server.requests))
    return runs


@pytest.mark.parametrize("method", START_METHODS)
def test_the_luigi_command_runs_the_job_with_spawned_workers(cli_runs, method):
    result, data_dir, _ = cli_runs[method]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HospitalsDaily run cli succeeded: 5 discovered, 5 downloaded" in result.stdout
    assert len(files_under(data_dir)) == 10


@pytest.mark.parametrize("method", START_METHODS)
def test_download_flags_on_the_command_line_reach_the_worker_processes(cli_runs, method):
    """A spawned worker re-reads luigi.cfg but never sees the parent's command line: settings read inside run()
    would silently lose --download-* flags (they did, until the settings became a task parameter)."""
    result, _, agents = cli_runs[method]
    assert result.returncode == 0, result.stdout + result.stderr
    assert agents == {"set-on-the-command-line": 6}  # the catalog and the five CSVs
