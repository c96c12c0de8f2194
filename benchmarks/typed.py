"""Benchmark: the typed files (pipeline/typed_files.py) of a whole catalog of real CMS CSVs.

    python benchmarks/typed.py --folder ../shared/cms-sample/csv

Each CSV of --folder is normalized first as the job does it (header_rewrite.rewrite_csv, not timed), then typed
into Parquet the way a run does it (two passes of DuckDB over the CSV, then the file read back for the
dictionary), one file after the other. Prints the wall and CPU seconds of the typing, the CSV and Parquet totals,
and how many columns took each type. Not a test.
"""

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.header_rewrite import rewrite_csv  # noqa: E402
from pipeline.settings import AnalyticsSettings  # noqa: E402

MB = 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=ROOT.parent / "shared" / "cms-sample" / "csv")
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


if __name__ == "__main__":
    main()
