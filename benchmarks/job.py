"""The measured command, `luigi --module pipeline HospitalsDaily`, as every benchmark runs it: in a folder of
its own whose luigi.cfg is the shipped one pointed at a loopback catalog, in the caller's environment made safe
for loopback."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUIGI = str(Path(sys.executable).with_name("luigi"))
CONFIG = ROOT / "luigi.cfg"


def write_cfg(
    folder: Path,
    metastore_url: str,
    worker_cfg: list[str] | None = None,
    central_port: int | None = None,
    cms_http: int | None = None,
    runlog_url: str = "",
) -> None:
    """The shipped luigi.cfg pointed at the loopback catalog, with worker_cfg lines ("key=value") added to its
    [worker] and, if given, another [resources] cms_http and [runlog] url.

    Its own lock_pid_dir: Luigi's pid lock is keyed by the command line, the same for anyone running the job.
    With central_port, the client of a luigid on 127.0.0.1 instead of the in-process scheduler."""
    lines = []
    for line in CONFIG.read_text(encoding="utf-8").splitlines():
        if line.startswith("metastore_url = "):
            line = f"metastore_url = {metastore_url}"
        elif line.startswith("data_dir = "):
            line = f"data_dir = {folder / 'data'}"
        elif line.startswith("local_scheduler = ") and central_port:
            line = "local_scheduler = false"
        elif line.startswith("cms_http = ") and cms_http:
            line = f"cms_http = {cms_http}"
        elif line.startswith("url =") and runlog_url:
            line = f"url = {runlog_url}"
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

            try:
                self.postgres = start_postgres()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # pytest's skip, where PostgreSQL is missing
                sys.exit(f"--runlog postgresql: {exc}")

    def url(self, engine: str) -> str:
        return self.postgres.url() if engine == "postgresql" and self.postgres else ""

    def close(self) -> None:
        if self.postgres:
            self.postgres.remove()
