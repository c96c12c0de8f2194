"""Benchmark: the change report (pipeline/changes.py) on the largest file's size, next to one read of the file.

    python benchmarks/changes.py --source ../shared/cms-sample/csv/nrdb-3fcy.csv   # 445k rows, 1% changed
    python benchmarks/changes.py --source ../shared/cms-sample/csv/nrdb-3fcy.csv --changed 1 --rounds 1
    python benchmarks/changes.py --source ../shared/cms-sample/csv/nrdb-3fcy.csv --shuffle   # rows reordered

Builds an old and a new normalized file of --rows rows (default 445,000, the HCAHPS file's size) from --source, a
real CMS CSV (the largest sample, Timely and Effective Care - Hospital, 18k rows: its header normalized, its rows
repeated with a per-copy prefix on the first column so that facility IDs stay unique). In the new file
--changed of the rows get another value in a middle column, and as many rows are removed and added as 1/10 of
that; with --shuffle the new file's rows are in another order (the report then pairs records by hashes). Each
round measures, side by side, in CPU seconds of this process (the machine may be shared): one read of
the new file with the csv module, and the change report of old against new. Peak RSS is measured in a child
process per report (Linux: VmHWM), so the read does not count. Not a test.
"""

import argparse
import csv
import io
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.changes import compare  # noqa: E402
from pipeline.naming import normalize_header  # noqa: E402

MIB = 1 << 20


def source_rows(source: Path) -> tuple[bytes, list[bytes]]:
    lines = source.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
    return lines[0], [line for line in lines[1:] if line]


def build(folder: Path, source: Path, rows: int, changed: float, shuffle: bool = False) -> tuple[Path, Path]:
    header, body = source_rows(source)
    names = normalize_header(next(csv.reader([header.decode("utf-8")])))
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerow(names)
    out, copy = [], 0
    while len(out) < rows:
        out += [b"%d" % copy + line if copy else line for line in body[: rows - len(out)]]
        copy += 1
    rng = random.Random(30)
    new = list(out)
    middle = len(names) // 2
    for i in rng.sample(range(len(new)), int(len(new) * changed)):
        if b'"' not in new[i]:
            cells = new[i].split(b",")
            cells[middle] = b"changed-" + cells[middle]
            new[i] = b",".join(cells)
    moved = int(len(new) * changed / 10)
    for i in sorted(rng.sample(range(len(new)), moved), reverse=True):
        del new[i]
    new += [b"X" + line for line in body[:moved]]
    if shuffle:
        rng.shuffle(new)
    old_path, new_path = folder / "old.csv", folder / "new.csv"
    head = text.getvalue().encode()
    old_path.write_bytes(head + b"\r\n".join(out) + b"\r\n")
    new_path.write_bytes(head + b"\r\n".join(new) + b"\r\n")
    return old_path, new_path


def read_once(path: Path) -> float:
    start = time.process_time()
    with open(path, encoding="utf-8", newline="") as file:
        for _ in csv.reader(file):
            pass
    return time.process_time() - start


def report(old: Path, new: Path, answer) -> None:
    start = time.process_time()
    cells = io.StringIO()
    summary = compare(partial(open, old, "rb"), partial(open, new, "rb"), cells)
    seconds = time.process_time() - start
    answer.send((seconds, peak_rss_mib(), summary.to_json()))


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would keep the high-water mark of the parent it was forked from,
    across the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure_report(old: Path, new: Path) -> tuple[float, float, dict]:
    """The report in a fresh process, so its peak RSS is its own."""
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(target=report, args=(old, new, send))
    child.start()
    result = receive.recv()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a real CMS CSV to build the files from")
    parser.add_argument("--rows", type=int, default=445_000, help="rows per file (default 445000)")
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed (default 0.01)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--shuffle", action="store_true", help="the new file's rows in another order")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="changes-bench-") as folder:
        old, new = build(Path(folder), args.source, args.rows, args.changed, args.shuffle)
        size, order = new.stat().st_size / MIB, ", in another order" if args.shuffle else ""
        print(f"files: {args.rows:,} rows, {size:,.1f} MiB; {args.changed:.1%} of rows changed{order}")
        reads, reports, peaks = [], [], []
        for _ in range(args.rounds):
            reads.append(read_once(new))
            seconds, peak, summary = measure_report(old, new)
            reports.append(seconds)
            peaks.append(peak)
        read, diff = statistics.median(reads), statistics.median(reports)
        print(f"report: {summary['summary']}, key {summary['key']}, {summary['cells']:,} changed cells")
        print(f"one csv read of the new file: {read:.2f} s CPU (median of {args.rounds})")
        print(f"change report:                {diff:.2f} s CPU, {diff / read:.2f}x one read (target <= 1.5x)")
        print(f"peak RSS of the report:       {max(peaks):.0f} MiB (target <= 150 MiB)")


if __name__ == "__main__":
    main()
