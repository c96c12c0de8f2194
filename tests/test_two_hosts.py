"""One shared run across two "machines": network namespaces this test makes (a veth pair, 10.231.7.1 and
10.231.7.2, which exist only inside them) and removes. Host A runs luigid, the CMS site and the job; host B
runs an assistant that reaches both over the veth, and PostgreSQL on host A's address holds the run log. They
share the data folder, as hosts mounting one volume at the same path would. Needs root and iproute2; skipped
otherwise (tests/test_shared_run.py covers the same run with processes on 127.0.0.1)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness import PROJECT_CFG, project_cfg_lines
from tests.postgres_support import PASSWORD, USER, start_postgres
from tests.test_shared_run import with_runlog_url

pytestmark = pytest.mark.integration

A_ADDRESS, B_ADDRESS = "10.231.7.1", "10.231.7.2"
DEPLOY = PROJECT_CFG.parent / "deploy"
ROOT = PROJECT_CFG.parent


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def hosts():
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    a, b = f"cms-a-{tag}", f"cms-b-{tag}"
    steps = [
        ("netns", "add", a),
        ("netns", "add", b),
        ("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}"),
        ("link", "set", f"va{tag}", "netns", a),
        ("link", "set", f"vb{tag}", "netns", b),
        ("-n", a, "addr", "add", f"{A_ADDRESS}/24", "dev", f"va{tag}"),
        ("-n", b, "addr", "add", f"{B_ADDRESS}/24", "dev", f"vb{tag}"),
        ("-n", a, "link", "set", f"va{tag}", "up"),
        ("-n", b, "link", "set", f"vb{tag}", "up"),
        ("-n", a, "link", "set", "lo", "up"),
        ("-n", b, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            if (done := ip(*step)).returncode:
                pytest.skip(f"this machine does not allow network namespaces: ip {' '.join(step)}: {done.stderr}")
        yield a, b
    finally:
        for name in (a, b):  # deleting a namespace removes its end of the veth, and so the pair
            ip("netns", "del", name)


class Host:
    """One namespace's processes, started in its own project folder."""

    def __init__(self, namespace: str, folder: Path):
        self.namespace, self.folder = namespace, folder
        folder.mkdir(parents=True)
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], log: str, config: str | None = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = str(ROOT)
        if config:
            env["LUIGI_CONFIG_PATH"] = config
        with open(self.folder / log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *args],
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def configure(self, metastore_url: str, data_dir: Path, runlog_url: str) -> None:
        site = SimpleNamespace(metastore_url=metastore_url)
        lines = project_cfg_lines(site, data_dir=str(data_dir), url=runlog_url)
        (self.folder / "luigi.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")
        central = (DEPLOY / "central.cfg").read_text(encoding="utf-8")
        central = central.replace("scheduler_host = 127.0.0.1", f"scheduler_host = {A_ADDRESS}")
        (self.folder / "central.cfg").write_text(with_runlog_url(central, runlog_url), encoding="utf-8")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_run_shared_by_two_hosts_uses_both_and_ends_with_the_runs_code(hosts, tmp_path):
    ns_a, ns_b = hosts
    a, b = Host(ns_a, tmp_path / "host-a"), Host(ns_b, tmp_path / "host-b")
    data_dir = tmp_path / "shared-volume" / "data"
    postgres = start_postgres(A_ADDRESS, ("ip", "netns", "exec", ns_a))  # listening on host A's address only
    database = postgres.new_database()
    try:
        a.start(
            [
                sys.executable,
                "-m",
                "tests.site_server",
                "--host",
                A_ADDRESS,
                "--datasets",
                "8",
                "--latency",
                "0.4",
                "--ready",
                "url.txt",
                "--log",
                "requests.json",
            ],
            "site.log",
        )
        wait_for((a.folder / "url.txt").exists, 30, (a.folder / "site.log").read_text(encoding="utf-8"))
        metastore_url = (a.folder / "url.txt").read_text(encoding="utf-8")
        (a.folder / "luigid").mkdir()
        a.start(
            [
                str(Path(sys.executable).with_name("luigid")),
                "--address",
                A_ADDRESS,
                "--port",
                "8082",
                "--state-path",
                str(a.folder / "luigid" / "state.pickle"),
                "--logdir",
                str(a.folder / "luigid"),
            ],
            "luigid.log",
            config=str(DEPLOY / "luigid.cfg"),
        )
        wait_for(lambda: (a.folder / "luigid" / "luigi-server.log").exists(), 30, "luigid did not start")
        for host in (a, b):
            host.configure(metastore_url, data_dir, postgres.url_for(USER, PASSWORD, database))
        b.start([sys.executable, "-m", "pipeline.assistant", "--workers", "2"], "assistant.log", config="central.cfg")
        server_log = a.folder / "luigid" / "luigi-server.log"
        # The assistant is asking luigid for work before the run starts, so host B takes part whatever the load.
        wait_for(lambda: "/api/get_work" in server_log.read_text(encoding="utf-8"), 60, "the assistant never asked")
        job = a.start(
            [sys.executable, "-m", "pipeline.shared_run", "--workers", "1", "--run-id", "two-hosts"],
            "job.log",
            config="central.cfg",
        )
        code = job.wait(timeout=180)
        runs = postgres.rows(database, "SELECT status, downloaded FROM runs")
    finally:
        b.stop()
        a.stop()
        postgres.remove()
    out = (a.folder / "job.log").read_text(encoding="utf-8", errors="replace")
    assert code == 0, out + (b.folder / "assistant.log").read_text(encoding="utf-8", errors="replace")
    assert "HospitalsDaily run two-hosts succeeded: 8 discovered, 8 downloaded" in out
    assert runs == [("succeeded", 8)] and not (data_dir / "runlog.sqlite").exists()
    requests = json.loads((a.folder / "requests.json").read_text(encoding="utf-8"))
    files = [r for r in requests if r["path"].endswith(".csv")]
    assert len(files) == 8 == len({r["path"] for r in files})  # each file once, whichever host fetched it
    clients = {r["client"] for r in files}
    assert B_ADDRESS in clients, clients  # host B really did part of the run, over the veth
    assert {r["client"] for r in requests if "metastore" in r["path"]} == {A_ADDRESS}
