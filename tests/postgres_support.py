"""A real PostgreSQL for the tests: a cluster made with initdb in a temp folder, listening on 127.0.0.1 on a
free port with password authentication, removed at the end of the session.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (`runuser`). Where no
PostgreSQL is installed the tests that need it skip with the reason; on CI (CI=true) they fail instead,
since `.ci/run` installs it.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.luigid_support import free_port

USER, PASSWORD = "pipeline", "s3cret-Pg-pass-9f2c"  # a password no other output contains by chance
SUPERUSER, SUPERPASSWORD = "postgres", "super-Pg-pass-4e1a"


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests must run on CI: {reason}")
    pytest.skip(reason)


class Postgres:
    """One cluster; `url()` makes a fresh database for a test and gives its URL (with the password)."""

    def __init__(self, bin_dir: Path, address: str = "127.0.0.1", prefix: tuple[str, ...] = ()):
        """`prefix`: how to start its processes elsewhere, e.g. in a network namespace (`ip netns exec NAME`)."""
        self.bin, self.address, self.prefix = bin_dir, address, prefix
        self.port = free_port() if address == "127.0.0.1" else 5432
        self.root = Path(tempfile.mkdtemp(prefix="runlog-pg-"))
        self.data = self.root / "cluster"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.prefix, *self.as_postgres, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> "Postgres":
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(SUPERPASSWORD + "\n", encoding="utf-8")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres")
        done = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
            "-E",
            "UTF8",
        )
        assert done.returncode == 0, done.stderr
        pwfile.unlink()
        if self.address != "127.0.0.1":  # initdb lets in only the loopback addresses
            with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as hba:
                hba.write(f"host all all {self.address}/24 scram-sha-256\n")
        self.start_server()
        self.admin(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}' CREATEDB")
        return self

    def start_server(self) -> None:
        options = f"-c listen_addresses={self.address} -p {self.port} -k {self.root}"
        options += " -c fsync=off -c full_page_writes=off"  # a test cluster: nothing to keep across a crash
        done = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        assert done.returncode == 0, done.stderr + self.log()

    def stop_server(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    @contextmanager
    def _superuser(self, database: str = "postgres"):
        """Through the server's Unix socket: reachable from here whatever network it listens on. Yields a
        connection whose execute() returns the cursor."""
        import psycopg2

        conn = psycopg2.connect(
            host=str(self.root), port=self.port, user=SUPERUSER, password=SUPERPASSWORD, dbname=database
        )
        conn.autocommit = True
        try:
            yield _Executing(conn)
        finally:
            conn.close()

    def admin(self, sql: str, database: str = "postgres") -> None:
        with self._superuser(database) as conn:
            conn.execute(sql)

    def rows(self, database: str, sql: str) -> list[tuple]:
        with self._superuser(database) as conn:
            return conn.execute(sql).fetchall()

    def terminate(self, database: str) -> None:
        """Drop every connection to `database`, as a server restart does, and wait until they are gone."""
        with self._superuser() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=%s", (database,))
            deadline = time.monotonic() + 10
            while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname=%s", (database,)).fetchone()[0]:
                assert time.monotonic() < deadline, "connections outlived pg_terminate_backend"
                time.sleep(0.02)

    def url_for(self, user: str, password: str | None, database: str) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@{self.address}:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"runlog_{uuid.uuid4().hex[:10]}"
        self.admin(f"CREATE DATABASE {name} OWNER {USER}")
        return name

    def url(self, *, password: bool = True) -> str:
        """A fresh database: its URL with the password in it, or without."""
        return self.url_for(USER, PASSWORD if password else None, self.new_database())

    def remove(self) -> None:
        self.stop_server()
        shutil.rmtree(self.root, ignore_errors=True)


class _Executing:
    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql: str, params=None):
        cursor = self.conn.cursor()
        cursor.execute(sql, params)
        return cursor


def start_postgres(address: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> Postgres:
    bin_dir = binaries()
    if bin_dir is None:
        unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); .ci/run installs it")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        unavailable("psycopg2 is not installed: pip install -r requirements-dev.txt")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        unavailable("PostgreSQL refuses root and runuser is missing")
    return Postgres(bin_dir, address, prefix).start()  # type: ignore[arg-type]
