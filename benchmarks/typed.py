"""Benchmark: the typed files (pipeline/typed_files.py) of a whole catalog of real CMS CSVs.

    python benchmarks/typed.py --folder ../shared/cms-sample/csv
    python benchmarks/typed.py --folder ../shared/cms-sample/csv --largest ../shared/cms-sample/csv/nrdb-3fcy.csv

Each CSV of --folder is normalized first as the job does it (header_rewrite.rewrite_csv, not timed), then typed
into Parquet the way a run does it (pipeline/typed_files.write_parquet), one file after the other. Prints the wall
and CPU seconds of the typing, the CSV and Parquet totals, and how many columns took each type. With --largest,
also a file of --rows rows built from that CSV as benchmarks/changes.py builds it (the largest file's size), typed
in a fresh process: its time and peak RSS (Linux). Not a test.
"""

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.changes import build, peak_rss_mib  # noqa: E402
from pipeline.header_rewrite import rewrite_csv  # noqa: E402
from pipeline.settings import AnalyticsSettings  # noqa: E402

MB = 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=ROOT.parent / "shared" / "cms-sample" / "csv")
    parser.add_argument("--largest", type=Path, help="a real CMS CSV to build the largest file's size from")
    parser.add_argument("--rows", type=int, default=445_000, help="rows of that file (default 445000)")
    args = parser.parse_args()
    from pipeline.typed_files import write_parquet  # DuckDB: the analytics extra

    sentinels = AnalyticsSettings().sentinels
    files = sorted(args.folder.glob("*.csv"))
    csv_bytes = parquet_bytes = 0
    wall = cpu = 0.0
    types: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as work:
        for source in files:
            normalized, parquet = Path(work) / "normalized.csv", Path(work) / f"{source.stem}.parquet"
            with open(source, "rb") as src, open(normalized, "w+b") as dst:
                names = rewrite_csv(src, dst).normalized
            start, start_cpu = time.perf_counter(), time.process_time()
            columns = write_parquet(normalized, parquet, names, sentinels)
            wall += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            csv_bytes += normalized.stat().st_size
            parquet_bytes += parquet.stat().st_size
            types.update(c["type"].split("(")[0] for c in columns)
    print(f"{len(files)} files: {csv_bytes / MB:,.1f} MB of CSV -> {parquet_bytes / MB:,.1f} MB of Parquet")
    print(f"typing: {wall:.1f} s wall, {cpu:.1f} s CPU of this process")
    print("columns: " + ", ".join(f"{kind} {count}" for kind, count in types.most_common()))
    if args.largest:
        with tempfile.TemporaryDirectory() as work:
            _, big = build(Path(work), args.largest, args.rows, 0.0)
            receive, send = multiprocessing.Pipe(duplex=False)
            child = multiprocessing.get_context("spawn").Process(target=type_one, args=(big, send))
            child.start()
            seconds, peak, size = receive.recv()
            child.join()
            print(f"{args.rows:,} rows, {big.stat().st_size / MB:,.1f} MB of CSV -> {size / MB:,.1f} MB of Parquet")
            print(f"typing: {seconds:.1f} s wall, peak RSS {peak:.0f} MiB")


def type_one(path: Path, answer) -> None:
    """In a fresh process, so its peak RSS is its own."""
    import csv

    from pipeline.typed_files import write_parquet

    names = next(csv.reader([path.open(encoding="utf-8").readline()]))
    start = time.perf_counter()
    write_parquet(path, path.with_suffix(".parquet"), names, AnalyticsSettings().sentinels)
    answer.send((time.perf_counter() - start, peak_rss_mib(), path.with_suffix(".parquet").stat().st_size))


if __name__ == "__main__":
    main()
