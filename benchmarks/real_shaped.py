"""Benchmark: the job on a catalog shaped like the real one, next to a plain download of the same files.

    python benchmarks/real_shaped.py              # 3 rounds, about 2 minutes
    python benchmarks/real_shaped.py --rounds 1   # one round
    python benchmarks/real_shaped.py --runlog sqlite,postgresql   # the run log on each engine, side by side
    python benchmarks/real_shaped.py --storage local,s3   # the data folder local and in S3, side by side

The catalog is benchmarks/run.py's realistic one: 80 HCAHPS-shaped CSVs, one of 450k rows (about 180 MB), five
of 50k-170k rows, the rest small, in a shuffled order, served by tests.loopback_server on 127.0.0.1 with 50 ms
before every response and 20 MB/s per connection. Each round measures, side by side:

* plain: benchmarks/plain_download.py with 4 threads (4 = [resources] cms_http), timed from its first request;
* cold: `luigi --module pipeline HospitalsDaily --workers 8` in an empty data folder (nothing is known of the
  files, so they start in catalog order);
* refresh: the next day's catalog, in which every file was re-uploaded (new download URLs, same bytes), run in
  the same folder: the run log knows each file's last size, so the biggest starts first;
* no-op: the same catalog once more: nothing to fetch.

With `--runlog sqlite,postgresql` the job's runs are made once per run-log engine: runlog.sqlite in the data
folder, and a database of a PostgreSQL started on 127.0.0.1 for the benchmark (tests/postgres_support.py).

With `--storage local,s3` they are made once more with the data in object storage: data_dir is
s3://<a fresh bucket>/hospitals on a SeaweedFS server started on 127.0.0.1 (tests/s3_support.py), the run log
on PostgreSQL, [storage] scratch_dir in the round's folder. The S3 requests of each run are counted, by type.

With --fsync-cost, each round also runs cold and refresh with the job's own fsyncs switched off (the
benchmark-only CMS_PIPELINE_NO_FSYNC; the run log still syncs as configured), on the first engine, so their
cost is measured side by side.

Every figure is the median over the rounds; the ratios are against the plain download. Not a test.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bytecode import compile_pipeline  # noqa: E402
from benchmarks.job import Place, RunLogs, Setup, Storages, setups, write_cfg  # noqa: E402
from benchmarks.plain_download import plain_download  # noqa: E402
from benchmarks.run import Site, realistic_rows  # noqa: E402
from benchmarks.scale import requests, run_luigi  # noqa: E402
from pipeline.durable import NO_SYNC_ENV  # noqa: E402
from tests.loopback_server import LoopbackServer  # noqa: E402


def run_job(
    folder: Path, metastore_url: str, expect: str, runlog_url: str = "", syncs: bool = True, place: Place | None = None
) -> dict:
    """One run: its wall time, peak RSS (the luigi process's and the largest process's), ... (scale.run_luigi)."""
    place = place or Place()
    write_cfg(folder, metastore_url, runlog_url=runlog_url, data_dir=place.data_dir, scratch_dir=place.scratch_dir)
    env = place.env | ({} if syncs else {NO_SYNC_ENV: "1"})
    return run_luigi(folder, "on", expect, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of plain, cold and refresh (default 3)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each response (default 0.05)")
    parser.add_argument(
        "--tasks",
        default="threads",
        help="how the job runs its tasks, comma separated: threads (default), processes (PIPELINE_TASK_THREADS=0)",
    )
    parser.add_argument("--bandwidth", type=float, default=20, help="MB/s per connection (default 20)")
    parser.add_argument("--runlog", default="sqlite", help="run-log engines, comma separated: sqlite, postgresql")
    parser.add_argument(
        "--storage",
        default="local",
        help="data folders, comma separated: local (default), s3 (a bucket on a loopback SeaweedFS, the run log "
        "on PostgreSQL)",
    )
    parser.add_argument("--fsync-cost", action="store_true", help="also run cold and refresh without the fsyncs")
    parser.add_argument("--runs", default="cold,refresh,no-op", help="which runs, comma separated (default all)")
    args = parser.parse_args()
    measured = setups(args.storage.split(","), args.runlog.split(","), tuple(args.tasks.split(",")))
    labels = [setup.label for setup in measured]
    runlogs = RunLogs(sorted({setup.engine for setup in measured}))
    storages = Storages(args.storage.split(","), runlogs)
    compile_pipeline()
    rows = realistic_rows(1.0)
    work = Path(tempfile.mkdtemp(prefix="pipeline-real-", dir="/tmp"))
    runs = [kind for kind in ("cold", "refresh", "no-op") if kind in args.runs.split(",")]
    kinds = [f"{kind} {label}" for label in labels for kind in runs]
    if args.fsync_cost:
        kinds += [f"{kind} {labels[0]} without fsyncs" for kind in ("cold", "refresh") if kind in runs]
    figures: dict[str, list[float]] = {"plain": []} | {kind: [] for kind in kinds}
    rss: dict[str, list[float]] = {kind: [] for kind in kinds}  # the luigi process's peak RSS, MiB
    largest: dict[str, list[float]] = {kind: [] for kind in kinds}  # the largest process's, MiB
    s3_requests: dict[str, list[dict]] = {}  # "cold s3+postgresql" -> the S3 requests of its runs, each count once
    try:
        with LoopbackServer(bandwidth=args.bandwidth * 1e6, latency=args.latency) as server:
            site = Site(server, work)
            day1, day2 = site.catalog("real", rows, day=1), site.catalog("real", rows, day=2)
            size = sum(site.body(r).stat().st_size for r in rows) / 1e6
            print(f"{len(rows)} CSVs, {size:,.0f} MB, the largest {site.body(max(rows)).stat().st_size / 1e6:,.0f} MB")
            for round_ in range(1, args.rounds + 1):
                figures["plain"].append(plain_download(day1, work / "plain", 4))
                if storages.s3:  # object storage's yardstick: the same GETs, and two PUTs of each file
                    bucket = storages.s3.new_bucket()
                    wall = plain_download(day1, work / "plain-s3", 4, bucket, storages.s3.env())
                    figures.setdefault("plain into s3", []).append(wall)
                for setup in measured:
                    folder, runlog_url = work / f"job-{round_}-{setup.label}", runlogs.url(setup.engine)
                    place = storages.place(setup, folder)
                    fetched, nothing = (
                        f" {len(rows)} downloaded, 0 up to date",
                        f" 0 downloaded, {len(rows)} up to date",
                    )
                    for kind, day, expect in (
                        ("cold", day1, fetched),
                        ("refresh", day2, fetched),
                        ("no-op", day2 if "refresh" in runs else day1, nothing),
                    ):
                        if kind not in runs:
                            continue
                        name, before = f"{kind} {setup.label}", storages.requests(place)
                        result = run_job(folder, day, expect, runlog_url, place=place)
                        figures[name].append(result["wall"])
                        rss[name].append(result["parent_rss"])
                        largest[name].append(result["largest_rss"])
                        counts = dict(storages.requests(place) - before)
                        if place.bucket and counts not in s3_requests.setdefault(name, []):
                            s3_requests[name].append(counts)
                    shutil.rmtree(folder)
                    if args.fsync_cost and setup == measured[0]:
                        for kind, day in ((k, d) for k, d in (("cold", day1), ("refresh", day2)) if k in runs):
                            result = run_job(folder, day, fetched, runlog_url, syncs=False)
                            figures[f"{kind} {setup.label} without fsyncs"].append(result["wall"])
                        shutil.rmtree(folder)
                print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in figures.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        runlogs.close()
        storages.close()
    plain = statistics.median(figures["plain"])
    for name in (k for k in kinds if rss[k]):  # the runs without fsyncs have their own line below
        value = statistics.median(figures[name])
        print(
            f"{name}: {value:.2f} s vs plain {plain:.2f} s = {value / plain:.2f}x (median of {args.rounds}); "
            f"peak RSS: luigi process {statistics.median(rss[name]):.0f} MiB, "
            f"largest process {statistics.median(largest[name]):.0f} MiB"
            + (f"; S3 requests {' / '.join(requests(r) for r in rounds)}" if (rounds := s3_requests.get(name)) else "")
        )
    if args.fsync_cost:
        for kind in (k for k in ("cold", "refresh") if k in runs):
            synced, unsynced = (
                statistics.median(figures[f"{kind} {labels[0]}{how}"]) for how in ("", " without fsyncs")
            )
            print(f"{kind}: the fsyncs cost {synced / unsynced - 1:+.1%} ({synced:.2f} s vs {unsynced:.2f} s)")
    if {"postgresql", "sqlite"} <= set(labels):
        for kind in runs:
            pg, lite = (statistics.median(figures[f"{kind} {engine}"]) for engine in ("postgresql", "sqlite"))
            print(f"{kind}: the run log on PostgreSQL {pg:.2f} s vs SQLite {lite:.2f} s = {pg / lite:.2f}x")
    for setup in (s for s in measured if s.tasks == "processes"):
        threads = Setup(setup.storage, setup.engine)
        for kind in runs:
            there, here = (statistics.median(figures[f"{kind} {s.label}"]) for s in (threads, setup))
            print(f"{kind} {threads.label}: tasks in threads {there:.2f} s vs a process each {here:.2f} s")
    if "plain into s3" in figures:
        plain_s3 = statistics.median(figures["plain into s3"])
        for setup in (s for s in measured if s.storage == "s3"):
            cold = statistics.median(figures[f"cold {setup.label}"])
            print(f"cold {setup.label}: {cold:.2f} s vs a plain copy into S3 {plain_s3:.2f} s = {cold / plain_s3:.2f}x")
    s3, local = Setup("s3", "postgresql"), Setup("local", "sqlite")
    if s3 in measured and local in measured:
        for kind, goal in ((k, g) for k, g in (("cold", 1.5), ("refresh", None), ("no-op", 2.0)) if k in runs):
            there, here = (statistics.median(figures[f"{kind} {setup.label}"]) for setup in (s3, local))
            print(
                f"{kind}: S3 + PostgreSQL {there:.2f} s vs local + SQLite {here:.2f} s = {there / here:.2f}x"
                + (f" (goal {goal}x: {'met' if there / here <= goal else 'not met'})" if goal else "")
            )


if __name__ == "__main__":
    main()
