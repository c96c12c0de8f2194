"""One shared run across two "machines": network namespaces this test makes (a veth pair, 10.231.7.1 and
10.231.7.2, which exist only inside them) and removes. Host A runs the CMS site, luigid, PostgreSQL (the run
log and the folder locks), the S3 server (the data folder, s3://BUCKET/data) and the job; host B runs an
assistant that reaches them over the veth. The hosts share no folder: each has its project folder and its
scratch folder, and the test reads the bucket through the S3 server's Unix socket (tests/s3_support.py). Needs
root and iproute2; skipped otherwise (tests/test_shared_run.py covers the same run with processes on
127.0.0.1)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness import PROJECT_CFG, project_cfg_lines
from tests.postgres_support import PASSWORD, USER, start_postgres
from tests.s3_support import SECRET_KEY, start_s3
from tests.stored_data import BucketData
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

    def __init__(self, namespace: str, folder: Path, env: dict[str, str]):
        self.namespace, self.folder, self.env = namespace, folder, env
        self.scratch = folder / "scratch"
        folder.mkdir(parents=True)
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], log: str, config: str | None = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(self.env, PYTHONPATH=str(ROOT))
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
                start_new_session=True,  # its own process group: kill() takes its task processes too
            )
        self.procs.append(proc)
        return proc

    def configure(self, metastore_url: str, data_dir: str, runlog_url: str) -> None:
        site = SimpleNamespace(metastore_url=metastore_url)
        lines = project_cfg_lines(site, data_dir=data_dir, url=runlog_url, scratch_dir=str(self.scratch))
        (self.folder / "luigi.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")
        central = (DEPLOY / "central.cfg").read_text(encoding="utf-8")
        central = central.replace("scheduler_host = 127.0.0.1", f"scheduler_host = {A_ADDRESS}")
        (self.folder / "central.cfg").write_text(with_runlog_url(central, runlog_url), encoding="utf-8")

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL to the process and its task processes, as a machine that dies."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)

    def scratch_files(self) -> list[Path]:
        return [path for path in (self.scratch / "cms-pipeline").rglob("*") if path.is_file()]

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


@contextmanager
def two_hosts(names: tuple[str, str], tmp_path: Path, luigid_settings: str = "") -> Iterator[SimpleNamespace]:
    """Host A's services started and both hosts configured; `luigid_settings`: lines added to luigid's
    [scheduler]. Yields the hosts, the run log's database and a reader of the data folder."""
    ns_a, ns_b = names
    on_a = ("ip", "netns", "exec", ns_a)
    postgres = start_postgres(A_ADDRESS, on_a)  # each listening on host A's address only
    try:
        s3 = start_s3(A_ADDRESS, on_a)
    except BaseException:
        postgres.remove()
        raise
    a, b = (Host(ns, tmp_path / name, s3.env()) for ns, name in ((ns_a, "host-a"), (ns_b, "host-b")))
    try:
        database, bucket = postgres.new_database(), s3.new_bucket()
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
        (a.folder / "luigid").mkdir()
        luigid_cfg = (DEPLOY / "luigid.cfg").read_text(encoding="utf-8")
        assert "\n[scheduler]\n" in luigid_cfg
        (a.folder / "luigid.cfg").write_text(
            luigid_cfg.replace("\n[scheduler]\n", f"\n[scheduler]\n{luigid_settings}"), encoding="utf-8"
        )
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
            config=str(a.folder / "luigid.cfg"),
        )
        server_log = a.folder / "luigid" / "luigi-server.log"
        wait_for(server_log.exists, 30, "luigid did not start")
        runlog_url = postgres.url_for(USER, PASSWORD, database)
        for host in (a, b):
            host.configure((a.folder / "url.txt").read_text(encoding="utf-8"), f"s3://{bucket}/data", runlog_url)
        yield SimpleNamespace(
            a=a,
            b=b,
            server_log=server_log,
            runs=lambda: postgres.rows(database, "SELECT run_id, status, downloaded FROM runs ORDER BY started_at"),
            done=lambda: postgres.rows(database, "SELECT count(*) FROM versions WHERE status='done'"),
            data=BucketData(s3.client(), bucket, "data", tmp_path),
            uploads=lambda: s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []),
        )
    finally:
        b.stop()
        a.stop()
        s3.remove()
        postgres.remove()


def start_assistant(host: Host, server_log: Path) -> subprocess.Popen:
    """Host B's assistant, once it is asking luigid for work: it takes part in a run whatever the load."""
    asked = server_log.read_text(encoding="utf-8").count("/api/get_work")
    assistant = host.start(
        [sys.executable, "-m", "pipeline.assistant", "--workers", "2"], "assistant.log", "central.cfg"
    )
    wait_for(lambda: server_log.read_text(encoding="utf-8").count("/api/get_work") > asked, 60, "it never asked")
    return assistant


def run_job(host: Host, run_id: str) -> tuple[subprocess.Popen, Path]:
    args = [sys.executable, "-m", "pipeline.shared_run", "--workers", "1", "--run-id", run_id]
    return host.start(args, f"{run_id}.log", config="central.cfg"), host.folder / f"{run_id}.log"


def check_outputs(data: BucketData) -> None:
    """latest/ lists the 8 datasets, each file the bytes of its version's normalized.csv; nothing half-made."""
    keys = data.listing()
    assert not [key for key in keys if "-luigi-tmp-" in key or key.endswith(".staged")], keys
    latest = json.loads(data.read("latest/latest.json"))
    assert sorted(item["identifier"] for item in latest["datasets"]) == [f"ds{n:02d}-test" for n in range(8)]
    for item in latest["datasets"]:
        [normalized] = [k for k in keys if k.startswith(f"datasets/{item['identifier']}/") and "/normalized.csv" in k]
        body = data.read(f"latest/{item['path']}")
        assert body == data.read(normalized) and item["rows"] == 4, item
    assert "latest/index.csv" in keys


def logged_secrets(*hosts: Host) -> list[str]:
    """Files of the hosts' folders (their settings aside) that hold a password or a storage key."""
    return [
        f"{path}: {secret}"
        for host in hosts
        for path in host.folder.rglob("*")
        if path.is_file() and path.suffix != ".cfg"
        for secret in (PASSWORD, SECRET_KEY)
        if secret.encode() in path.read_bytes()
    ]


def test_a_run_shared_by_two_hosts_uses_both_and_ends_with_the_runs_code(hosts, tmp_path):
    with two_hosts(hosts, tmp_path) as run:
        a, b = run.a, run.b
        start_assistant(b, run.server_log)
        job, job_log = run_job(a, "two-hosts")
        code = job.wait(timeout=180)
        runs, reports = run.runs(), run.data.listing("reports/")
        check_outputs(run.data)
        b.stop()
        a.stop()  # the site writes the requests it saw
    out = job_log.read_text(encoding="utf-8", errors="replace")
    assert code == 0, out + (b.folder / "assistant.log").read_text(encoding="utf-8", errors="replace")
    assert out.count("HospitalsDaily run two-hosts") == 1
    assert "HospitalsDaily run two-hosts succeeded: 8 discovered, 8 downloaded" in out
    assert runs == [("two-hosts", "succeeded", 8)]
    assert reports == ["reports/two-hosts.json"]  # the run closed once
    requests = json.loads((a.folder / "requests.json").read_text(encoding="utf-8"))
    files = [r for r in requests if r["path"].endswith(".csv")]
    assert len(files) == 8 == len({r["path"] for r in files})  # each file once, whichever host fetched it
    clients = {r["client"] for r in files}
    assert B_ADDRESS in clients, clients  # host B really did part of the run, over the veth
    assert {r["client"] for r in requests if "metastore" in r["path"]} == {A_ADDRESS}
    assert b.scratch.is_dir() and not a.scratch_files() and not b.scratch_files()  # B's downloads: in its own
    assert not logged_secrets(a, b)


def test_an_assistant_killed_mid_download_leaves_a_run_the_next_one_completes(hosts, tmp_path):
    # luigid fails a dead worker's tasks once it has been silent this long (60 s by default).
    with two_hosts(hosts, tmp_path, "worker_disconnect_delay = 10\nprune_on_get_work = true\n") as run:
        a, b = run.a, run.b
        assistant = start_assistant(b, run.server_log)
        job, first_log = run_job(a, "first")
        wait_for(lambda: list(b.scratch.glob("cms-pipeline/*/source.csv-luigi-tmp-*")), 60, "host B never downloaded")
        b.kill(assistant)  # its request to the site is still waiting for the answer
        left = b.scratch_files()
        first = job.wait(timeout=120)  # once luigid has failed the dead worker's tasks
        start_assistant(b, run.server_log)  # as its service restarts it
        job, second_log = run_job(a, "second")
        second = job.wait(timeout=180)
        runs, done, uploads = run.runs(), run.done(), run.uploads()
        check_outputs(run.data)
    out = second_log.read_text(encoding="utf-8", errors="replace")
    first_out = first_log.read_text(encoding="utf-8", errors="replace")
    assert first != 0 and "run first did not finish (running)" in first_out, first_out
    assert second == 0, out
    assert "HospitalsDaily run second succeeded: 8 discovered" in out
    assert [(run_id, status) for run_id, status, _ in runs] == [("first", "interrupted"), ("second", "succeeded")]
    assert done == [(8,)] and not uploads
    assert left and not a.scratch_files() and not b.scratch_files()  # the killed download's, swept on B
    assert not logged_secrets(a, b)
