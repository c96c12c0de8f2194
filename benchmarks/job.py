"""The measured command, `luigi --module pipeline HospitalsDaily`, as every benchmark runs it: in a folder of
its own whose luigi.cfg is the shipped one pointed at a loopback catalog, in the caller's environment made safe
for loopback."""

import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.task_threads import SWITCH as TASK_THREADS_ENV  # noqa: E402

LUIGI = str(Path(sys.executable).with_name("luigi"))
CONFIG = ROOT / "luigi.cfg"
T = TypeVar("T")


def write_cfg(
    folder: Path,
    metastore_url: str,
    worker_cfg: list[str] | None = None,
    central_port: int | None = None,
    cms_http: int | None = None,
    runlog_url: str = "",
    data_dir: str = "",
    scratch_dir: str = "",
) -> None:
    """The shipped luigi.cfg pointed at the loopback catalog, with worker_cfg lines ("key=value") added to its
    [worker] and, if given, another [resources] cms_http, [runlog] url, data_dir (default: the folder's data/)
    and [storage] scratch_dir.

    Its own lock_pid_dir: Luigi's pid lock is keyed by the command line, the same for anyone running the job.
    With central_port, the client of a luigid on 127.0.0.1 instead of the in-process scheduler."""
    lines = []
    for line in CONFIG.read_text(encoding="utf-8").splitlines():
        if line.startswith("metastore_url = "):
            line = f"metastore_url = {metastore_url}"
        elif line.startswith("data_dir = "):
            line = f"data_dir = {data_dir or folder / 'data'}"
        elif line.startswith("local_scheduler = ") and central_port:
            line = "local_scheduler = false"
        elif line.startswith("cms_http = ") and cms_http:
            line = f"cms_http = {cms_http}"
        elif line.startswith("url =") and runlog_url:
            line = f"url = {runlog_url}"
        elif line.startswith("scratch_dir =") and scratch_dir:
            line = f"scratch_dir = {scratch_dir}"
        lines.append(line)
        if line == "[core]":
            lines.append(f"lock_pid_dir = {folder / 'locks'}")
            if central_port:
                lines += ["scheduler_host = 127.0.0.1", f"scheduler_port = {central_port}"]
        if line == "[worker]":
            lines += [setting.replace("=", " = ", 1) for setting in worker_cfg or ()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "luigi.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")


def job_env(**extra: str) -> dict[str, str]:
    """The caller's environment, without LUIGI_CONFIG_PATH (the folder's luigi.cfg is the one meant) and with
    loopback exempt from any proxy, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "LUIGI_CONFIG_PATH"}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env | extra


RUNLOG_ENGINES = ("sqlite", "postgresql")


class RunLogs:
    """The [runlog] url of each measured folder: "" (runlog.sqlite in the folder), or a fresh database on a
    PostgreSQL this benchmark starts on 127.0.0.1 (tests/postgres_support.py) and removes at the end."""

    def __init__(self, engines: list[str]):
        unknown = set(engines) - set(RUNLOG_ENGINES)
        if unknown:
            sys.exit(f"--runlog takes {' and '.join(RUNLOG_ENGINES)}, comma separated; not {', '.join(unknown)}")
        self.engines = engines
        self.postgres = None
        if "postgresql" in engines:
            from tests.postgres_support import start_postgres

            self.postgres = start_server("--runlog postgresql", start_postgres)

    def url(self, engine: str) -> str:
        return self.postgres.url() if engine == "postgresql" and self.postgres else ""

    def close(self) -> None:
        if self.postgres:
            self.postgres.remove()


def start_server(option: str, start: Callable[[], T]) -> T:
    """A server the tests start (tests/*_support.py), or exit naming the option and why it cannot start."""
    try:
        return start()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pytest's skip, where the server is not installed
        sys.exit(f"{option}: {exc}")


STORAGES = ("local", "s3")


@dataclass(frozen=True)
class Setup:
    """Where a measured job keeps its data and its run log."""

    storage: str
    engine: str
    tasks: str = "threads"  # or "processes": Luigi's process per task (PIPELINE_TASK_THREADS=0)

    @property
    def label(self) -> str:
        where = self.engine if self.storage == "local" else f"{self.storage}+{self.engine}"
        return where if self.tasks == "threads" else f"{where} processes"

    @property
    def env(self) -> dict[str, str]:
        return {} if self.tasks == "threads" else {TASK_THREADS_ENV: "0"}


def setups(storages: list[str], engines: list[str], tasks: tuple[str, ...] = ("threads",)) -> list[Setup]:
    """A local folder with each run-log engine; object storage with PostgreSQL, the run log of several
    machines sharing a bucket (object storage cannot hold the run log); each with the tasks in threads, and in
    a process each where asked (to compare)."""
    unknown = set(storages) - set(STORAGES)
    if unknown:
        sys.exit(f"--storage takes {' and '.join(STORAGES)}, comma separated; not {', '.join(unknown)}")
    if set(tasks) - {"threads", "processes"}:
        sys.exit(f"--tasks takes threads and processes, comma separated; not {', '.join(tasks)}")
    places = [("local", engine) for engine in engines if "local" in storages] + (
        [("s3", "postgresql")] if "s3" in storages else []
    )
    return [Setup(storage, engine, kind) for storage, engine in places for kind in tasks]


@dataclass
class Place:
    """One measured folder's data: data_dir and scratch_dir for its luigi.cfg, what its job's environment
    adds, and the bucket (empty for a local folder)."""

    data_dir: str = ""
    scratch_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    bucket: str = ""


class Storages:
    """The data of each measured folder: its own data/ folder, or with "s3" a fresh bucket of a SeaweedFS
    server (`weed mini`) this benchmark starts on 127.0.0.1 (tests/s3_support.py) and removes at the end."""

    def __init__(self, storages: list[str], runlogs: RunLogs):
        self.s3 = None
        if "s3" in storages:
            from tests.s3_support import start_s3

            try:
                self.s3 = start_server("--storage s3", start_s3)
            except SystemExit:
                runlogs.close()  # the PostgreSQL started before it
                raise

    def place(self, setup: Setup, folder: Path) -> Place:
        if setup.storage == "local" or not self.s3:
            return Place(env=setup.env)
        bucket = self.s3.new_bucket()
        return Place(f"s3://{bucket}/hospitals", str(folder / "scratch"), self.s3.env() | setup.env, bucket)

    def requests(self, place: Place) -> Counter:
        """S3 requests answered so far for the folder's bucket, by type (HEAD counts as GET); none locally."""
        return self.s3.request_counts(place.bucket) if self.s3 and place.bucket else Counter()

    def close(self) -> None:
        if self.s3:
            self.s3.remove()
