"""The run log on SQLite and on PostgreSQL: what BEGIN IMMEDIATE gives on one (one writer at a time: the close
claim has exactly one winner, no update is lost, the schema is made once) holds on the other, raced by real
processes and by threads of one process; a connection the server dropped fails the write that needed it with
one line, and the next works."""

import multiprocessing
import queue
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.catalog import CsvVersion
from pipeline.runlog import SCHEMA_VERSION, RunLog
from pipeline.runlog_engines import RunLogUnavailable, SchemaTooNew, engine_for

pytestmark = pytest.mark.integration

RACERS = 12
STATS = {
    "source_path": "s",
    "output_path": "o",
    "header_map_path": "h",
    "source_encoding": "utf-8",
    "rows": 1,
    "bytes": 3 * 2**31,  # past a 32-bit integer: a 6 GB file
    "sha256": "x",
}
# Fork where there is one (fast); Windows spawns, and every racer imports this module again.
fork = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def version(n: int) -> CsvVersion:
    return CsvVersion(f"ds-{n:03d}", f"Dataset {n}", "2025-04-08", f"https://example.org/{n}.csv", "Hospitals")


def open_log(folder: Path, url: str) -> RunLog:
    return RunLog(folder / "runlog.sqlite", url)


@pytest.fixture(params=["processes", "threads"])
def race(request):
    """`race(target, *args)`: target(*args) in RACERS processes, or threads of this one (the job's tasks run in
    threads: pipeline/task_threads.py), released together; their answers."""
    threads = request.param == "threads"

    def racing(target, *args) -> list:
        start = threading.Barrier(RACERS) if threads else fork.Barrier(RACERS)
        answers = queue.Queue() if threads else fork.Queue()
        kind = threading.Thread if threads else fork.Process
        racers = [kind(target=_after, args=(start, target, args, answers)) for _ in range(RACERS)]
        for racer in racers:
            racer.start()
        results = [answers.get(timeout=120) for _ in racers]
        for racer in racers:
            racer.join(timeout=60)
            assert threads or racer.exitcode == 0
        return results

    return racing


def _after(start, target, args, answers) -> None:
    start.wait()
    try:
        answers.put(target(*args))
    except Exception as exc:
        answers.put(f"error: {exc!r}")


def _claim(folder: Path, url: str, run_id: str):
    return open_log(folder, url).claim_close(run_id) is not None


def _settle_one(folder: Path, url: str, run_id: str, versions: list[CsvVersion], counter) -> tuple:
    with counter.get_lock():
        n = counter.value
        counter.value += 1
    return tuple(open_log(folder, url).record_done(run_id, versions[n], {**STATS, "output_path": f"o{n}"}))


def _open_schema(folder: Path, url: str) -> int:
    log = open_log(folder, url)
    with log.engine.connection() as db:
        return db.execute("SELECT count(*) FROM runs").fetchone()[0]


def test_the_close_claim_raced_by_many_processes_has_exactly_one_winner(race, runlog_engine, tmp_path):
    log = open_log(tmp_path, runlog_engine)
    log.start_run("r1", "https://example.org/items", "Hospitals")
    log.plan_run("r1", [version(1)], [], [])
    log.record_done("r1", version(1), STATS)
    assert sorted(race(_claim, tmp_path, runlog_engine, "r1")) == [False] * (RACERS - 1) + [True]
    assert log.run("r1")["status"] == "closing"


def test_settled_versions_raced_by_many_processes_lose_no_update(race, runlog_engine, tmp_path):
    log = open_log(tmp_path, runlog_engine)
    versions = [version(n) for n in range(RACERS)]
    log.start_run("r1", "https://example.org/items", "Hospitals")
    log.plan_run("r1", versions, [], [])
    counter = fork.Value("i", 0)
    progress = race(_settle_one, tmp_path, runlog_engine, "r1", versions, counter)
    # Each write saw every write before it: the counts it returned are 1..N, each once.
    assert sorted(progress) == [(done, 0, RACERS) for done in range(1, RACERS + 1)]
    assert tuple(log.progress("r1")) == (RACERS, 0, RACERS)
    assert log.known_versions().keys() == {v.key for v in versions}


def test_the_schema_is_made_once_when_many_processes_open_a_new_run_log(race, runlog_engine, tmp_path):
    assert race(_open_schema, tmp_path, runlog_engine) == [0] * RACERS
    log = open_log(tmp_path, runlog_engine)
    with log.engine.connection() as db:
        if runlog_engine:
            assert db.execute("SELECT version FROM runlog_schema").fetchall() == [(SCHEMA_VERSION,)]
        else:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_rows_read_back_the_same_on_both_engines(runlog_engine, tmp_path):
    log = open_log(tmp_path, runlog_engine)
    older = replace(version(1), modified="2025-01-01", url="https://example.org/1-old.csv")
    newer = replace(version(1), modified="2025-05-01", url="https://example.org/1-new.csv")
    log.start_run("r1", "https://example.org/items", "Hospitals")
    log.plan_run("r1", [older, version(1), version(2), newer], [], [])
    log.record_done("r1", older, {**STATS, "header_map_path": "h-old"})
    log.record_done("r1", version(1), STATS, '{"added": ["b"]}', ("2025-01-01", older.url))
    log.record_failed("r1", version(2), "HTTP 404")
    # The dataset's other finished versions, newest first: insertion order, which is rowid on both engines.
    assert log.drift_context("r1", newer)[2] == [
        {"modified": "2025-04-08", "download_url": version(1).url, "position": 1, "header_map_path": "h"},
        {"modified": "2025-01-01", "download_url": older.url, "position": 1, "header_map_path": "h-old"},
    ]
    log.record_failed("r1", newer, "HTTP 500")
    run, items, retired = log.claim_close("r1")
    assert (run["run_id"], run["status"], retired) == ("r1", "running", set())
    assert [(i["modified"], i["outcome"], i["bytes"], i["schema_change"], i["error"]) for i in items] == [
        ("2025-01-01", "downloaded", 3 * 2**31, None, None),
        ("2025-04-08", "downloaded", 3 * 2**31, '{"added": ["b"]}', None),
        ("2025-05-01", "failed", None, None, "HTTP 500"),
        ("2025-04-08", "failed", None, None, "HTTP 404"),
    ]


def test_a_connection_the_server_dropped_fails_that_write_with_one_line_and_the_next_reconnects(postgres, tmp_path):
    url = postgres.url()
    log = open_log(tmp_path, url)
    log.start_run("r1", "https://example.org/items", "Hospitals")
    log.plan_run("r1", [version(1), version(2)], [], [])
    database = url.rsplit("/", 1)[1]
    with pytest.raises(RunLogUnavailable) as lost, log.transaction() as db:
        db.execute("UPDATE runs SET theme='changed'")
        postgres.terminate(database)
        db.execute("SELECT 1")
    message = str(lost.value)
    assert message.startswith(f"run log 127.0.0.1:{postgres.port}/{database}: ")
    assert "this outcome was not recorded" in message and "\n" not in message
    assert log.run("r1")["theme"] == "Hospitals"  # rolled back; this read opened a new connection
    # A connection that broke between two operations costs nothing: the next one reconnects before it starts.
    postgres.terminate(database)
    assert log.record_done("r1", version(1), STATS) == (1, 0, 2)


def test_a_reader_of_a_run_log_not_made_yet_creates_nothing(runlog_engine, tmp_path):
    with engine_for(runlog_engine, tmp_path / "runlog.sqlite").read_only() as db:
        assert db is None
    assert not (tmp_path / "runlog.sqlite").exists()


def test_a_run_log_from_a_newer_release_is_refused_on_postgresql(postgres, tmp_path):
    url = postgres.url()
    with open_log(tmp_path, url).transaction() as db:
        db.execute("UPDATE runlog_schema SET version=?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match="newer than this release knows"):
        multiprocessing_free_open(url, tmp_path)


def multiprocessing_free_open(url: str, folder: Path) -> RunLog:
    """A new process's first open: this one has checked the schema already and would not look again."""
    from pipeline.runlog_engines import postgres

    postgres._SCHEMA_CHECKED.clear()
    return open_log(folder, url)


def test_an_unknown_run_log_scheme_is_one_error_without_its_password():
    from pipeline.runlog_engines import RunLogUrlError
    from pipeline.runlog_engines import url as urls

    with pytest.raises(RunLogUrlError) as refused:
        urls.public("mysql://cms:secret-pw-1@db.example.org/cms")
    assert str(refused.value).startswith("run log URL 'mysql://cms@db.example.org/cms': unknown scheme 'mysql'")
    assert "secret-pw-1" not in str(refused.value)
