"""A real `luigid` on 127.0.0.1 for tests, its JSON API, and `luigi` client runs against it.

luigid only takes its port, address, state file and log folder on the command line (`--port`, `--address`,
`--state-path`, `--logdir`); everything else ([scheduler], [resources], [task_history]) comes from the
luigi.cfg of its working folder or the file named by LUIGI_CONFIG_PATH.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

from tests.harness import COMMAND, Site, console_script, project_cfg_lines

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# Every test talks to 127.0.0.1 only: never let an inherited proxy setting route loopback traffic elsewhere.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

LUIGID_CFG = """\
[scheduler]
stable_done_cooldown_secs = 0
record_task_history = false

[resources]
cms_http = 2
"""


def loopback_env(config: Path | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "luigi_config_path")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if config is not None:
        env["LUIGI_CONFIG_PATH"] = str(config)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Luigid:
    """One luigid process: start() waits for its API, stop() terminates it (state is dumped on SIGTERM)."""

    def __init__(self, folder: Path, config_text: str = LUIGID_CFG):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "luigid.cfg"
        self.config.write_text(config_text, encoding="utf-8")
        self.state_path = folder / "state.pickle"
        self.logdir = folder / "logs"
        self.logdir.mkdir(exist_ok=True)  # luigid does not create it (logging.basicConfig(filename=...))
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._output = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_log(self) -> Path:
        return self.logdir / "luigi-server.log"

    def output(self) -> str:
        return (self.folder / "luigid.out").read_text(encoding="utf-8", errors="replace")

    def start(self, port: int = 0) -> Luigid:
        """On a free port, or on `port` (a luigid restarted where its clients look for it)."""
        for _ in range(3):  # another process may take the free port between probe and bind
            self.port = port or free_port()
            self._output = open(self.folder / "luigid.out", "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                [
                    console_script("luigid"),
                    "--port",
                    str(self.port),
                    "--address",
                    "127.0.0.1",
                    "--state-path",
                    str(self.state_path),
                    "--logdir",
                    str(self.logdir),
                ],
                cwd=self.folder,
                env=loopback_env(self.config),
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"luigid did not answer on 127.0.0.1:{self.port}:\n{self.output()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                self.rpc("task_list")
                return True
            except (OSError, ValueError):
                time.sleep(0.1)
        return False

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: luigid dumps its state to --state-path, then exits 0
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)
            code = proc.returncode
        if self._output is not None:
            self._output.close()
            self._output = None
        return code

    def __enter__(self) -> Luigid:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the JSON API (luigi/server.py RPCHandler: GET /api/<method>?data=<json of keyword arguments>) --------

    def rpc(self, method: str, **arguments):
        query = urllib.parse.urlencode({"data": json.dumps(arguments)})
        with _NO_PROXY.open(f"{self.url}/api/{method}?{query}", timeout=10) as answer:
            return json.loads(answer.read().decode("utf-8"))["response"]

    def tasks(self, status: str = "") -> dict[str, dict]:
        """task_id -> task (name, status, params, workers, ...); luigid keeps DONE tasks for remove_delay (600 s)."""
        found = self.rpc("task_list", status=status, upstream_status="", search="")
        assert "num_tasks" not in found, found  # more than max_shown_tasks
        return found

    def families(self, status: str = "") -> Counter:
        return Counter(task["name"] for task in self.tasks(status).values())


def client_cfg(site: Site, data_dir: Path, *, local_scheduler: bool = False, extra: str = "") -> str:
    """The shipped luigi.cfg for a client of luigid: loopback catalog, absolute data_dir, short RPC retries."""
    lines = project_cfg_lines(site, data_dir=str(data_dir), local_scheduler=str(local_scheduler).lower())
    assert f"metastore_url = {site.metastore_url}" in lines and f"data_dir = {data_dir}" in lines
    assert any(line.startswith("local_scheduler = ") for line in lines), "the shipped luigi.cfg sets it"
    lines += ["", "[core]", "rpc_retry_attempts = 2", "rpc_retry_wait = 1", "rpc_connect_timeout = 5"]
    # Sections repeated by `extra` are merged into one (later values win).
    return _merge_sections("\n".join(lines) + "\n" + extra)


def _merge_sections(text: str) -> str:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(text)
    out = []
    for section in parser.sections():
        out.append(f"[{section}]")
        out += [f"{key} = {value}" for key, value in parser.items(section)]
        out.append("")
    return "\n".join(out)


def luigi_command(*args: str) -> list[str]:
    """The README's command without its --workers, for runs that set their own."""
    return [console_script("luigi"), *COMMAND[1:4], *args]


def start_client(args: list[str], config: Path | None, cwd: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    """A `luigi` client process writing stdout+stderr to cwd/<log_name>; the caller waits and cleans up."""
    log = cwd / log_name
    with open(log, "wb") as out:
        # Its own process group (POSIX), so a timed-out client is stopped together with its worker processes.
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=loopback_env(config),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=os.name != "nt",
        )
    return proc, log


def stop_client(proc: subprocess.Popen, *, force: bool = False) -> None:
    """Terminate (or kill) a client started by start_client and the worker processes it started."""
    if proc.poll() is not None:
        return
    if os.name == "nt":
        if force:
            proc.kill()
        else:
            proc.terminate()
    else:
        os.killpg(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_client(proc, force=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        stop_client(proc, force=True)
