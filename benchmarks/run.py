"""Benchmark: how close the daily pipeline runs to the I/O limits, as ratios measured in one run.

    python benchmarks/run.py            # full run (1 GB file, 80/400/2000 datasets), about 20 minutes on 2 cores
    python benchmarks/run.py --quick    # the same figures on small data, about a minute

Builds synthetic HCAHPS-like CSVs in a temporary folder under /tmp (deleted at the end), serves them from
tests.loopback_server on 127.0.0.1 with a per-connection bandwidth and latency, runs the real
`luigi --module pipeline HospitalsDaily` command, and prints every figure next to its target.
Linux only: memory is read from /proc. Not part of the test suite.
"""

import argparse
import io
import json
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bytecode import compile_pipeline  # noqa: E402
from benchmarks.job import CONFIG, LUIGI, job_env, write_cfg  # noqa: E402
from benchmarks.plain_download import plain_download  # noqa: E402
from pipeline import header_rewrite  # noqa: E402
from tests.fixtures import HEADER_HCAHPS, item, resource_path  # noqa: E402
from tests.loopback_server import LoopbackServer  # noqa: E402

MB = 1 << 20
HEADER = HEADER_HCAHPS + "\r\n"
HOSPITALS = [
    ("SOUTHEAST HEALTH MEDICAL CENTER", "1108 ROSS CLARK CIRCLE", "DOTHAN", "AL", "36301", "HOUSTON"),
    ("MARSHALL MEDICAL CENTERS", "2505 U S HIGHWAY 431 NORTH", "BOAZ", "AL", "35957", "MARSHALL"),
    ("PROVIDENCE ALASKA MEDICAL CENTER", "3200 PROVIDENCE DRIVE", "ANCHORAGE", "AK", "99508", "ANCHORAGE"),
    ("MAYO CLINIC HOSPITAL", "5777 EAST MAYO BOULEVARD", "PHOENIX", "AZ", "85054", "MARICOPA"),
]
MEASURES = [
    (
        "H_COMP_1_A_P",
        'Patients who reported that their nurses ""Always"" communicated well',
        'Nurses ""always"" communicated well',
    ),
    (
        "H_CLEAN_HSP_U_P",
        'Patients who reported that their room and bathroom were ""Usually"" clean',
        'Room was ""usually"" clean',
    ),
    ("H_HSP_RATING_STAR_RATING", "Overall hospital rating - star rating", "Overall hospital rating"),
    (
        "H_RECMND_DN_P",
        "Patients who reported NO, they would not recommend the hospital",
        '""NO"", patients would not recommend the hospital',
    ),
]


# -- synthetic data -------------------------------------------------------------------------------------------


def _row(i: int) -> bytes:
    name, address, city, state, zip_code, county = HOSPITALS[i % len(HOSPITALS)]
    measure, question, answer = MEASURES[i // len(HOSPITALS) % len(MEASURES)]
    fields = [
        f"{10001 + i % 5000:06d}",
        name,
        address,
        city,
        state,
        zip_code,
        county,
        f"(334) 793-{i % 10000:04d}",
        measure,
        question,
        answer,
        "Not Applicable",
        "",
        str(i % 100),
        "",
        "Not Applicable",
        str(300 + i % 3000),
        "",
        str(10 + i % 40),
        "",
        "01/01/2023",
        "12/31/2023",
    ]
    return (",".join(f'"{f}"' for f in fields) + "\r\n").encode()


BLOCK = [_row(i) for i in range(4096)]
ROW_BYTES = sum(map(len, BLOCK)) / len(BLOCK)


def write_csv(path: Path, rows: int) -> Path:
    """An HCAHPS-shaped CSV (CRLF, every field quoted) with `rows` data rows."""
    full, rest = divmod(rows, len(BLOCK))
    block = b"".join(BLOCK)
    with open(path, "wb") as out:
        out.write(HEADER.encode())
        for _ in range(full):
            out.write(block)
        out.write(b"".join(BLOCK[:rest]))
    return path


def rows_for(mb: float) -> int:
    return int(mb * MB / ROW_BYTES)


def realistic_rows(scale: float) -> list[int]:
    """80 datasets: one ~450k-row file, five of 50-170k rows, the rest small (log-uniform 50-10k), shuffled."""
    rng = random.Random(80)
    rows = [450_000, 170_000, 140_000, 110_000, 80_000, 50_000]
    rows += [int(10 ** rng.uniform(1.7, 4)) for _ in range(80 - len(rows))]
    rng.shuffle(rows)
    return [max(10, int(r * scale)) for r in rows]


class Site:
    """Catalogs and files on one LoopbackServer; each scenario gets its own metastore path."""

    def __init__(self, server: LoopbackServer, folder: Path):
        self.server, self.folder, self.bodies = server, folder, {}

    def body(self, rows: int) -> Path:
        if rows not in self.bodies:
            self.bodies[rows] = write_csv(self.folder / f"body-{rows}.csv", rows)
        return self.bodies[rows]

    def catalog(self, name: str, rows: list[int], day: int = 0) -> str:
        """The catalog `name` as on `day`: the same datasets and bytes every day, each file uploaded anew (a new
        download URL) and modified that day."""
        items, upload = [], 1700000000 + 86400 * day
        for i, count in enumerate(rows):
            identifier = f"{name}-{i:04d}"
            path = resource_path(identifier, upload + i, f"File_{i}.csv")
            self.server.add(path, self.body(count), last_modified=upload)
            items.append(item(identifier, (date(2025, 4, 8) + timedelta(days=day)).isoformat(), self.server.url(path)))
        path = f"/{name}/day{day}/provider-data/api/1/metastore/schemas/dataset/items"
        self.server.add(path, json.dumps(items).encode(), content_type="application/json")
        return self.server.url(path)


# -- measuring ------------------------------------------------------------------------------------------------


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _proc_kb(pid: int, name: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field)), 0)
    except OSError:  # the process has just exited
        return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        pids.append(todo.pop())
        try:
            for task in os.listdir(f"/proc/{pids[-1]}/task"):
                with open(f"/proc/{pids[-1]}/task/{task}/children") as f:
                    todo += map(int, f.read().split())
        except OSError:
            pass
    return pids


class TreeMemory(threading.Thread):
    """Samples a process tree every 20 ms: peak of the summed RSS and PSS, and the largest single VmHWM (MiB)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.rss = self.pss = self.single = 0.0

    def run(self):
        while not self.done.wait(0.02):
            pids = _tree(self.pid)
            self.rss = max(self.rss, sum(_proc_kb(p, "status", "VmRSS:") for p in pids) / 1024)
            self.pss = max(self.pss, sum(_proc_kb(p, "smaps_rollup", "Pss:") for p in pids) / 1024)
            self.single = max(self.single, *(_proc_kb(p, "status", "VmHWM:") / 1024 for p in pids))


def run_luigi(folder: Path, metastore_url: str, args, memory: bool = False, prefix=()):
    """The README command in `folder`, with the shipped luigi.cfg pointed at the loopback catalog.

    Returns (wall seconds, CPU seconds of the whole process tree, stdout, TreeMemory or None)."""
    write_cfg(folder, metastore_url, cms_http=args.cms_http)
    env = job_env()
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(
        [*prefix, LUIGI, "--module", "pipeline", "HospitalsDaily", "--workers", str(args.workers)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    monitor = TreeMemory(proc.pid) if memory else None
    if monitor:
        monitor.start()
    out, err = proc.communicate()
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if monitor:
        monitor.done.set()
        monitor.join()
    if proc.returncode != 0 or " succeeded: " not in out:
        raise RuntimeError(f"luigi exited {proc.returncode}:\n{out}\n{err[-3000:]}")
    return wall, cpu, out, monitor


def _children_cpu() -> float:
    """User + system CPU of every waited-for descendant (luigi joins its task processes)."""
    times = os.times()
    return times.children_user + times.children_system


def run_empty_luigi(folder: Path, args) -> float:
    """Luigi's own start-up: the same command shape, one task that only writes an empty output file."""
    module = folder / "bench_empty.py"
    if not module.exists():
        folder.mkdir(parents=True, exist_ok=True)
        module.write_text(
            "import luigi\n\n\nclass Empty(luigi.Task):\n    path = luigi.Parameter()\n\n"
            "    def output(self):\n        return luigi.LocalTarget(self.path)\n\n"
            "    def run(self):\n        open(self.path, 'w').close()\n"
        )
        shutil.copy(CONFIG, folder / "luigi.cfg")
    env = job_env(PYTHONPATH=str(folder))
    target = folder / f"out-{time.time_ns()}"
    start = time.perf_counter()
    subprocess.run(
        [LUIGI, "--module", "bench_empty", "Empty", "--workers", str(args.workers), "--path", str(target)],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    assert target.exists()
    return wall


# -- the figures ----------------------------------------------------------------------------------------------


class Results:
    def __init__(self):
        self.rows = []

    def add(self, figure: str, measured: str, target: str, ok: bool | None):
        self.rows.append((figure, measured, target, "-" if ok is None else "PASS" if ok else "FAIL"))
        print(f"  {figure}: {measured}  (target {target})", flush=True)

    def table(self) -> str:
        widths = [max(len(r[i]) for r in [("figure", "measured", "target", "result"), *self.rows]) for i in range(4)]
        lines = [("figure", "measured", "target", "result"), tuple("-" * w for w in widths), *self.rows]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def normalize_figure(src: Path, work: Path, results: Results) -> None:
    """1. The Normalize step as the pipeline runs it vs shutil.copyfile, warm page cache, alternating, best of 3.

    The download feeds every chunk to a SourceScan (sha256, rows, UTF-8 check) while it streams, so Normalize
    writes the new header and lets the kernel copy the rest. The scan's cost is reported beside it: it is
    spent during the download, at network speed. The full rewrite (no scan: non-UTF-8 sources) is shown too."""
    dst = work / "dst.csv"
    scan = header_rewrite.SourceScan()
    with open(src, "rb") as s:
        t0 = time.perf_counter()
        while chunk := s.read(header_rewrite.CHUNK):
            scan.feed(chunk)
        scan_seconds = time.perf_counter() - t0
    found = scan.result()

    def copy():
        shutil.copyfile(src, dst)

    def normalize():
        with open(src, "rb") as s, open(dst, "w+b") as d:
            header_rewrite.copy_normalized(s, d, found)

    def full_rewrite():
        with open(src, "rb") as s, open(dst, "w+b") as d:
            header_rewrite.rewrite_csv(s, d)

    timed(copy)  # warm-up: both read from the page cache
    best = {copy: float("inf"), normalize: float("inf"), full_rewrite: float("inf")}
    for _ in range(3):
        for fn in best:
            dst.unlink(missing_ok=True)
            best[fn] = min(best[fn], timed(fn))
    dst.unlink(missing_ok=True)
    ratio = best[normalize] / best[copy]
    size = src.stat().st_size / MB
    results.add(
        f"1. Normalize / copyfile, {size:,.0f} MiB",
        f"{ratio:.2f}x ({best[normalize]:.2f} s vs {best[copy]:.2f} s)",
        "<= 1.4x",
        ratio <= 1.4,
    )
    print(
        f"     scan during the download: {scan_seconds:.2f} s ({size / scan_seconds:,.0f} MiB/s, vs 20 MB/s on "
        f"the wire); full rewrite without a scan: {best[full_rewrite]:.2f} s "
        f"({best[full_rewrite] / best[copy]:.2f}x copyfile)",
        flush=True,
    )


def duplicate_header_figure(results: Results) -> None:
    """1b. A one-line file whose 20,000 columns are all "Score" through rewrite_csv: numbering repeats is linear."""
    line = ",".join(['"Score"'] * 20_000).encode() + b"\r\n"
    seconds = min(timed(header_rewrite.rewrite_csv, io.BytesIO(line), io.BytesIO()) for _ in range(3))
    results.add("1b. rewrite_csv, 20,000-column duplicate header", f"{seconds * 1000:.0f} ms", "<= 1 s", seconds <= 1)


def memory_figure(site: Site, work: Path, sizes_mb: list[int], args, results: Results) -> None:
    """2. Peak memory of the whole `luigi` process tree while it downloads and normalizes one big file."""
    bandwidth, latency = site.server.bandwidth, site.server.latency
    site.server.bandwidth, site.server.latency = None, 0.0  # unthrottled: memory, not time, is measured here
    peaks = {}
    try:
        for mb in sizes_mb:
            url = site.catalog(f"mem{mb}", [rows_for(mb)])
            wall, _, _, mem = run_luigi(work / f"mem{mb}", url, args, memory=True)
            peaks[mb] = mem
            print(
                f"     {mb:,} MiB: {wall:.1f} s; tree peak: sum of RSS {mem.rss:.0f} MiB, sum of PSS {mem.pss:.0f} "
                f"MiB; largest single process (VmHWM) {mem.single:.0f} MiB",
                flush=True,
            )
            shutil.rmtree(work / f"mem{mb}")
            site.bodies.pop(rows_for(mb)).unlink()
    finally:
        site.server.bandwidth, site.server.latency = bandwidth, latency
    small, big = peaks[min(sizes_mb)], peaks[max(sizes_mb)]
    results.add(
        f"2. Peak RSS, luigi tree summed, {max(sizes_mb):,} MiB file",
        f"{big.rss:.0f} MiB",
        "<= 150 MiB",
        big.rss <= 150,
    )
    results.add(
        f"2. Peak RSS growth {min(sizes_mb):,} -> {max(sizes_mb):,} MiB file",
        f"{small.rss:.0f} -> {big.rss:.0f} MiB",
        "flat (+10% max)",
        big.rss <= 1.1 * small.rss,
    )


def cold_and_noop(site: Site, work: Path, name: str, rows: list[int], args, repeats: int = 3) -> dict:
    """A cold run, the pure download of the same files, then no-op runs alternating with an empty Luigi."""
    url = site.catalog(name, rows)
    folder = work / name
    pure = plain_download(url, work / f"{name}-download", args.workers)
    cold, cpu, out, _ = run_luigi(folder, url, args)
    assert f" {len(rows)} downloaded" in out, out
    noop, empty, requests = float("inf"), float("inf"), set()
    for _ in range(repeats):
        site.server.clear()
        wall, _, out, _ = run_luigi(folder, url, args)
        assert f" {len(rows)} up to date" in out, out
        noop, requests = min(noop, wall), requests | {site.server.count()}
        empty = min(empty, run_empty_luigi(work / "empty", args))
    shutil.rmtree(folder)
    return {"cold": cold, "cpu": cpu, "pure": pure, "noop": noop, "empty": empty, "requests": requests}


def profile_figure(site: Site, work: Path, n: int, args) -> None:
    """Why a cold run grows faster than the catalog: the luigi scheduling process of one cold run under cProfile.

    Its task processes are forked from it and run profiled too (slower), but only the parent's profile is kept."""
    url, stats = site.catalog(f"prof{n}", [200] * n), work / "luigi.prof"
    wall, *_ = run_luigi(work / f"prof{n}", url, args, prefix=[sys.executable, "-m", "cProfile", "-o", str(stats)])
    text = io.StringIO()
    pstats.Stats(str(stats), stream=text).sort_stats("cumulative").print_stats(r"scheduler\.py|worker\.py|fork", 12)
    print(f"   profiled cold run of {n} datasets: {wall:.1f} s; the scheduling process, by cumulative time:")
    print("\n".join(line for line in text.getvalue().splitlines() if "(" in line or "ncalls" in line), flush=True)
    shutil.rmtree(work / f"prof{n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    parser.add_argument("--big-mb", type=int, help="size of the big CSV in MiB (default 1024, quick 64)")
    parser.add_argument("--small-mb", type=int, help="the smaller file of the memory figure (default 100, quick 16)")
    parser.add_argument("--datasets", help="catalog sizes for the scaling figure (default 80,400,2000; quick 80,200)")
    parser.add_argument("--bandwidth", type=float, default=20, help="MB/s per connection (default 20)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each response (default 0.05)")
    parser.add_argument("--workers", type=int, default=8, help="luigi --workers, and the download threads")
    parser.add_argument("--cms-http", type=int, help="override [resources] cms_http of luigi.cfg (shipped: 4)")
    parser.add_argument("--profile", type=int, metavar="N", help="also profile Luigi's scheduler on N datasets")
    parser.add_argument("--memory-only", action="store_true", help="figure 2 alone (the memory of the whole run)")
    args = parser.parse_args()
    compile_pipeline()
    if not sys.platform.startswith("linux"):
        sys.exit("benchmarks/run.py reads /proc: Linux only")
    big_mb = args.big_mb or (64 if args.quick else 1024)
    small_mb = args.small_mb or (16 if args.quick else 100)
    counts = [int(n) for n in (args.datasets or ("80,200" if args.quick else "80,400,2000")).split(",")]
    scale = 0.1 if args.quick else 1.0
    print(
        f"benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {args.bandwidth:g} MB/s and "
        f"{args.latency * 1000:g} ms per connection, --workers {args.workers}",
        flush=True,
    )

    results = Results()
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-", dir="/tmp"))
    try:
        with LoopbackServer(bandwidth=args.bandwidth * 1e6, latency=args.latency) as server:
            site = Site(server, work)
            print(f"1. Normalize throughput ({big_mb:,} MiB synthetic HCAHPS CSV)", flush=True)
            big = site.body(rows_for(big_mb))
            normalize_figure(big, work, results)
            duplicate_header_figure(results)
            print("2. Memory (luigi process tree, /proc sampled every 20 ms, unthrottled server)", flush=True)
            memory_figure(site, work, [small_mb, big_mb], args, results)
            if args.memory_only:
                print("\n" + results.table())
                return

            rows = realistic_rows(scale)
            print(
                f"3./4. Cold and no-op runs, 80 datasets, {sum(rows):,} rows "
                f"({sum(rows) * ROW_BYTES / MB:,.0f} MiB), largest {max(rows):,} rows",
                flush=True,
            )
            real = cold_and_noop(site, work, "real80", rows, args)
            ratio = real["cold"] / real["pure"]
            results.add(
                "3. Cold run / pure download (80 datasets)",
                f"{ratio:.2f}x ({real['cold']:.1f} s vs {real['pure']:.1f} s)",
                "<= 1.3x",
                ratio <= 1.3,
            )
            results.add(
                "4. No-op run: HTTP requests",
                " / ".join(map(str, sorted(real["requests"]))),
                "1",
                real["requests"] == {1},
            )
            ratio = real["noop"] / real["empty"]
            results.add(
                "4. No-op run / empty Luigi task",
                f"{ratio:.2f}x ({real['noop']:.2f} s vs {real['empty']:.2f} s)",
                "<= 2x",
                ratio <= 2,
            )

            print(f"5. Scaling with the catalog: {counts} datasets of 100-400 rows", flush=True)
            scaling = {}
            for n in counts:
                rows = [100 + 100 * (i % 4) for i in range(n)]
                scaling[n] = m = cold_and_noop(site, work, f"scale{n}", rows, args, repeats=1)
                print(
                    f"     {n:5d} datasets: cold {m['cold']:6.1f} s ({m['cold'] / n * 1000:5.1f} ms and "
                    f"{m['cpu'] / n * 1000:5.1f} ms CPU per dataset), pure download {m['pure']:5.1f} s, no-op "
                    f"{m['noop']:5.2f} s (empty Luigi {m['empty']:.2f} s, "
                    f"{(m['noop'] - m['empty']) / n * 1000:.2f} ms/dataset above it)",
                    flush=True,
                )
            for n in counts[1:]:
                m, first = scaling[n], scaling[counts[0]]
                growth = (m["cold"] / n) / (first["cold"] / counts[0])
                results.add(
                    f"5. Cold run per dataset, {n} vs {counts[0]}",
                    f"{growth:.2f}x (cold/pure {m['cold'] / m['pure']:.2f}x)",
                    "linear (<= 1.5x)",
                    growth <= 1.5,
                )
                growth = ((m["noop"] - m["empty"]) / n) / max(1e-3, (first["noop"] - first["empty"]) / counts[0])
                results.add(
                    f"5. No-op run per dataset above start-up, {n} vs {counts[0]}",
                    f"{growth:.2f}x (no-op {m['noop']:.2f} s)",
                    "linear (<= 1.5x)",
                    growth <= 1.5,
                )
            if args.profile:
                profile_figure(site, work, args.profile, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + results.table())


if __name__ == "__main__":
    main()
