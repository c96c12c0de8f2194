"""Benchmark: how the daily job scales with the catalog, with and without the scheduler patch, against a download.

With and without pipeline/scheduler_speedups.py, next to a plain 4-connection download of the same files;
docs/benchmark.md ("Scaling") has the method and the figures.

    python benchmarks/scale.py                        # 80, 500, 2000 datasets, patch off and on (about 8 min)
    python benchmarks/scale.py --sizes 80             # a quick check (about 10 s)
    python benchmarks/scale.py --sizes 2000 --fail-every 100 --scheduler central --patch on

Each size gets its own catalog of N datasets, one small HCAHPS-shaped CSV each (--kb, default 10 KB), served by
tests.loopback_server on 127.0.0.1 with a latency before every response and a per-connection bandwidth
(defaults as benchmarks/run.py: 50 ms, 20 MB/s); with --fail-every K every K-th CSV answers 404. For each size,
in this order:

* plain: a child Python process GETs the metastore, then every CSV with a ThreadPoolExecutor of 4 threads, one
  requests.Session each, streaming to disk (timed from its first request, so interpreter start is not counted);
* for each --patch state: one cold run and --noop-runs no-op runs of the real command,
  `luigi --module pipeline HospitalsDaily --workers 8`, in a folder whose luigi.cfg is the shipped one pointed
  at the loopback catalog (with its own [core] lock_pid_dir); the patch is switched off with
  PIPELINE_SCHEDULER_SPEEDUPS=0 in its environment. With --scheduler central, each run gets its own luigid
  (`python -m pipeline.scheduler_speedups luigid`, with the same switch) and the job is its client.

With --storage local,s3 the runs are made once more with the data in a fresh bucket of a SeaweedFS server on
127.0.0.1 (tests/s3_support.py) and the run log on PostgreSQL; the S3 requests of each run are counted.

Every luigi run is started from a fresh intermediate Python process that only waits for it, so that process's
getrusage(RUSAGE_CHILDREN) covers exactly that run: CPU = user + system seconds of the luigi process and all the
task processes it forked; "largest" RSS = ru_maxrss of RUSAGE_CHILDREN, the peak RSS of the single largest
process of the run (a maximum, not a sum over processes). The luigi process's own RSS (VmHWM) and CPU are read
from /proc every 20 ms (the last reading before it exits); luigid's CPU likewise. Linux only. Not a test.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bytecode import compile_pipeline  # noqa: E402
from benchmarks.job import LUIGI, Place, RunLogs, Storages, job_env, setups, write_cfg  # noqa: E402
from benchmarks.plain_download import plain_download  # noqa: E402
from tests.fixtures import item, resource_path  # noqa: E402
from tests.loopback_server import LoopbackServer  # noqa: E402

SWITCH = "PIPELINE_SCHEDULER_SPEEDUPS"
HEADER = (
    '"Facility ID","Facility Name","City/Town","State","HCAHPS Measure ID","HCAHPS Answer Percent",'
    '"Number of Completed Surveys","Start Date","End Date"\r\n'
)


def make_csv(size: int) -> bytes:
    """An HCAHPS-shaped CSV (CRLF, every field quoted) of about `size` bytes."""
    out, i = [HEADER.encode()], 0
    total = len(out[0])
    while total < size:
        row = (
            f'"{10001 + i:06d}","MEMORIAL HOSPITAL {i}","DOTHAN","AL","H_COMP_1_A_P","{i % 100}","{300 + i}",'
            f'"01/01/2023","12/31/2023"\r\n'
        ).encode()
        out.append(row)
        total, i = total + len(row), i + 1
    return b"".join(out)


def publish(server: LoopbackServer, name: str, count: int, body: bytes, fail_every: int = 0) -> str:
    """A DKAN catalog of `count` datasets (one CSV each) under /<name>/; returns its metastore URL.

    With fail_every=K, every K-th CSV answers 404 (its version fails, and Luigi disables its task)."""
    items = []
    for i in range(count):
        identifier = f"{name}-{i:05d}"
        path = f"/{name}" + resource_path(identifier, 1700000000 + i, f"File_{i}.csv")
        if fail_every and i % fail_every == fail_every - 1:
            server.add(path, b"gone\n", status=404, content_type="text/plain")
        else:
            server.add(path, body, last_modified=1700000000)
        items.append(item(identifier, "2025-04-08", server.url(path)))
    path = f"/{name}/provider-data/api/1/metastore/schemas/dataset/items"
    server.add(path, json.dumps(items).encode(), content_type="application/json")
    return server.url(path)


# -- in the intermediate process ------------------------------------------------------------------------------


def _run_one(folder: str, patch: str) -> None:
    """Run the command once in `folder`, print one JSON line of what it cost."""
    env = job_env(**{SWITCH: "1" if patch == "on" else "0"})
    start = time.perf_counter()
    proc = subprocess.Popen(
        [LUIGI, "--module", "pipeline", "HospitalsDaily", "--workers", "8"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    hwm, parent_cpu, done = [0], [0.0], threading.Event()
    tick = os.sysconf("SC_CLK_TCK")

    def watch():
        while not done.wait(0.02):
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            hwm[0] = max(hwm[0], int(line.split()[1]))
                with open(f"/proc/{proc.pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                    parent_cpu[0] = max(parent_cpu[0], (int(fields[11]) + int(fields[12])) / tick)
            except (OSError, IndexError, ValueError):
                pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    import resource  # POSIX only: imported where used, so the script imports on Windows

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": usage.ru_utime + usage.ru_stime,
                "parent_cpu": parent_cpu[0],
                "parent_rss": hwm[0] / 1024,
                "largest_rss": usage.ru_maxrss / 1024,
                "code": proc.returncode,
                "out": out,
                "err": err[-4000:],
            }
        )
    )


# -- in the benchmark process ---------------------------------------------------------------------------------


class Central:
    """`python -m pipeline.scheduler_speedups luigid` on 127.0.0.1 (PIPELINE_SCHEDULER_SPEEDUPS=0: Luigi's own)."""

    def __init__(self, folder: Path, patch: str):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "logs").mkdir(exist_ok=True)
        (folder / "luigid.cfg").write_text(
            "[scheduler]\nrecord_task_history = false\n\n[resources]\ncms_http = 4\n", encoding="utf-8"
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env.update({"LUIGI_CONFIG_PATH": str(folder / "luigid.cfg"), SWITCH: "1" if patch == "on" else "0"})
        self.output = open(folder / "luigid.out", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.scheduler_speedups",
                "luigid",
                "--port",
                str(self.port),
                "--address",
                "127.0.0.1",
                "--state-path",
                str(folder / "state.pickle"),
                "--logdir",
                str(folder / "logs"),
            ],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 30
        while True:
            try:
                opener.open(f"http://127.0.0.1:{self.port}/api/resource_list", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"luigid did not start: {(folder / 'luigid.out').read_text()}") from None
                time.sleep(0.1)

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.output.close()


def run_luigi(folder: Path, patch: str, expect: str, failing: bool = False, env: dict[str, str] | None = None) -> dict:
    """One run of the command in `folder` (its environment is this process's, plus `env`)."""
    out = subprocess.run(
        [sys.executable, __file__, "--run-one", str(folder), patch],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
    ).stdout
    result = json.loads(out.splitlines()[-1])
    if (result["code"] != 0) != failing or expect not in result["out"]:
        raise RuntimeError(
            f"luigi exited {result['code']}, expected {expect!r}:\n{result['out'][-3000:]}\n{result['err']}"
        )
    return result


def machine() -> str:
    import luigi

    return (
        f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {platform.machine()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}, luigi {luigi.__version__}"
    )


def measure(folder: Path, url: str, n: int, patch: str, args, runlog_url: str = "", storages=None, setup=None) -> dict:
    """One cold run, then the no-op runs (the best is kept), in a fresh folder (and with a fresh luigid, and
    with S3 a fresh bucket, whose requests are counted for each run).

    With failing CSVs there is no no-op run: each run tries the failed versions again."""
    failed = n // args.fail_every if args.fail_every else 0
    central = Central(folder / "luigid", patch) if args.scheduler == "central" else None
    place = storages.place(setup, folder) if storages and setup else Place()

    def run(expect: str, failing: bool = False) -> dict:
        before = storages.requests(place) if storages else None
        result = run_luigi(folder, patch, expect, failing, place.env)
        result["requests"] = dict(storages.requests(place) - before) if storages and place.bucket else None
        return result

    try:
        write_cfg(
            folder,
            url,
            args.worker_cfg,
            central and central.port,
            runlog_url=runlog_url,
            data_dir=place.data_dir,
            scratch_dir=place.scratch_dir,
        )
        before = central.cpu() if central else 0.0
        cold = run(f" {n - failed} downloaded, 0 up to date, {failed} failed", bool(failed))
        luigid_cpu = central.cpu() - before if central else None
        noops = [] if failed else [run(f" {n} up to date") for _ in range(args.noop_runs)]
    finally:
        if central:
            central.stop()
    noop = min(noops, key=lambda r: r["wall"]) if noops else None
    shutil.rmtree(folder)
    return {
        "datasets": n,
        "patch": patch,
        "cold": cold["wall"],
        "cold_cpu": cold["cpu"],
        "cold_luigi_cpu": cold["parent_cpu"],
        "cold_luigid_cpu": luigid_cpu,
        "parent_rss": cold["parent_rss"],
        "largest_rss": cold["largest_rss"],
        "noop": noop and noop["wall"],
        "noops": [r["wall"] for r in noops],
        "noop_cpu": noop and noop["cpu"],
        "noop_parent_rss": noop and noop["parent_rss"],
        "cold_requests": cold["requests"],
        "noop_requests": noop and noop["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="80,500,2000", help="catalog sizes, comma separated (default 80,500,2000)")
    parser.add_argument("--patch", default="off,on", help="patch states to run, in order: off,on (default), on, off")
    parser.add_argument("--kb", type=float, default=10, help="size of each CSV in KB (default 10)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each response (default 0.05)")
    parser.add_argument(
        "--tasks",
        default="threads",
        help="how the job runs its tasks, comma separated: threads (default), processes (PIPELINE_TASK_THREADS=0)",
    )
    parser.add_argument("--bandwidth", type=float, default=20, help="MB/s per connection (default 20)")
    parser.add_argument("--threads", type=int, default=4, help="plain download threads (default 4, as cms_http)")
    parser.add_argument("--noop-runs", type=int, default=2, help="no-op runs after each cold run (best kept; 2)")
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        metavar="K",
        help="every K-th CSV answers 404 (no no-op runs then); default: none fails",
    )
    parser.add_argument(
        "--scheduler",
        choices=("local", "central"),
        default="local",
        help="the in-process scheduler (luigi.cfg's default) or a luigid started for each run",
    )
    parser.add_argument(
        "--worker-cfg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add a line to [worker] of the runs' luigi.cfg (repeatable)",
    )
    parser.add_argument(
        "--runlog", default="sqlite", help="run-log engines, comma separated: sqlite (default), postgresql"
    )
    parser.add_argument(
        "--storage",
        default="local",
        help="data folders, comma separated: local (default), s3 (a bucket on a loopback SeaweedFS, the run log "
        "on PostgreSQL)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--run-one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        return _run_one(*args.run_one)
    compile_pipeline()
    if not sys.platform.startswith("linux"):
        sys.exit("benchmarks/scale.py reads /proc: Linux only")
    sizes = [int(n) for n in args.sizes.split(",")]
    patches = args.patch.split(",")
    if not set(patches) <= {"on", "off"}:
        sys.exit("--patch takes on, off or both (comma separated)")
    measured = setups(args.storage.split(","), args.runlog.split(","), tuple(args.tasks.split(",")))
    runlogs = RunLogs(sorted({setup.engine for setup in measured}))
    storages = Storages(args.storage.split(","), runlogs)
    body = make_csv(int(args.kb * 1000))
    print(
        f"scale benchmark: {machine()}; {len(body):,}-byte CSVs, {args.latency * 1000:g} ms and "
        f"{args.bandwidth:g} MB/s per response; --workers 8, cms_http 4, {args.scheduler} scheduler"
        + (f"; every {args.fail_every}th CSV fails" if args.fail_every else "")
        + (f"; [worker] {', '.join(args.worker_cfg)}" if args.worker_cfg else ""),
        flush=True,
    )
    rows = []
    work = Path(tempfile.mkdtemp(prefix="pipeline-scale-", dir="/tmp"))
    try:
        with LoopbackServer(bandwidth=args.bandwidth * 1e6, latency=args.latency) as server:
            for n in sizes:
                url = publish(server, f"s{n}", n, body, args.fail_every)
                plain = plain_download(url, work / f"plain{n}", args.threads)
                print(f"{n:5d} datasets: plain {args.threads}-connection download {plain:6.1f} s", flush=True)
                for patch, setup in ((p, s) for p in patches for s in measured):
                    folder = work / f"s{n}-{patch}-{setup.label}"
                    row = measure(folder, url, n, patch, args, runlogs.url(setup.engine), storages, setup)
                    row.update(plain=plain, ratio=row["cold"] / plain, runlog=setup.engine, storage=setup.storage)
                    row.update(tasks=setup.tasks)
                    rows.append(row)
                    print(
                        f"      patch {patch:3s}, {setup.storage}, run log {setup.engine}, tasks in {setup.tasks}: "
                        f"cold {row['cold']:6.1f} s = "
                        f"{row['ratio']:.2f}x plain "
                        f"(CPU {row['cold_cpu']:5.1f} s, luigi process {row['cold_luigi_cpu']:4.1f} s"
                        + (f", luigid {row['cold_luigid_cpu']:4.1f} s" if row["cold_luigid_cpu"] is not None else "")
                        + "); no-op "
                        + (f"{row['noop']:5.2f} s" if noop_ran(row) else "-")
                        + f"; peak RSS: luigi process {row['parent_rss']:.0f} MiB, largest process "
                        f"{row['largest_rss']:.0f} MiB"
                        + (f"; S3 requests: cold {requests(row['cold_requests'])}" if row["cold_requests"] else "")
                        + (f", no-op {requests(row['noop_requests'])}" if row["noop_requests"] else ""),
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        runlogs.close()
        storages.close()
    print("\n" + table(rows))
    for s3 in (r for r in rows if r["storage"] == "s3"):
        local = next((r for r in rows if r["datasets"] == s3["datasets"] and r["patch"] == s3["patch"]), None)
        if local and local["storage"] == "local" and noop_ran(s3):
            print(
                f"{s3['datasets']:,} datasets, no-op: S3 + PostgreSQL {s3['noop']:.2f} s vs local + "
                f"{local['runlog']} {local['noop']:.2f} s = {s3['noop'] / local['noop']:.2f}x, "
                f"{requests(s3['noop_requests'])} S3 requests"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
            + "\n",
            encoding="utf-8",
        )


def requests(counts: dict[str, int]) -> str:
    """ "1,234 (GET 1,000, PUT 234)": the total, then each type of request, the most frequent first."""
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{sum(counts.values()):,} ({kinds})"


def noop_ran(row: dict) -> bool:
    return row["noop"] is not None


def table(rows: list[dict]) -> str:
    head = (
        "datasets",
        "patch",
        "storage",
        "run log",
        "plain download",
        "cold run",
        "cold / plain",
        "CPU: all / luigi process",
        "no-op run",
        "peak RSS: luigi process / largest",
    )
    lines = [head]
    for r in rows:
        lines.append(
            (
                f"{r['datasets']:,}",
                r["patch"],
                r.get("storage", "local"),
                r.get("runlog", "sqlite"),
                f"{r['plain']:.1f} s",
                f"{r['cold']:.1f} s",
                f"{r['ratio']:.2f}x",
                f"{r['cold_cpu']:.0f} s / {r['cold_luigi_cpu']:.0f} s"
                + (f" (luigid {r['cold_luigid_cpu']:.0f} s)" if r.get("cold_luigid_cpu") is not None else ""),
                f"{r['noop']:.2f} s" if noop_ran(r) else "-",
                f"{r['parent_rss']:.0f} / {r['largest_rss']:.0f} MiB",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in [lines[0], tuple("-" * w for w in widths), *lines[1:]]
    )


if __name__ == "__main__":
    main()
