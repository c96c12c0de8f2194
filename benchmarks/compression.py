"""Benchmark: one large HCAHPS-shaped CSV through pipeline.http.download(), sent as is vs gzip-encoded.

    .venv/bin/python benchmarks/compression.py            # 180 MB file, about two minutes
    .venv/bin/python benchmarks/compression.py --mb 20    # quick check

Writes the CSV to a temporary folder (deleted at the end), serves it from tests.loopback_server on 127.0.0.1 at
a per-connection bandwidth (20 MB/s by default), and downloads it, as DownloadCsv does (with a SourceScan), in a
fresh child process per try so that each peak RSS (getrusage) is that download's own. Prints the median of the
tries of each variant. Decides whether Accept-Encoding: gzip pays off. Not part of the test suite.
"""

import argparse
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures import HEADER_HCAHPS  # noqa: E402
from tests.loopback_server import LoopbackServer  # noqa: E402

MB = 1_000_000
HEADER = HEADER_HCAHPS + "\r\n"
TOPICS = [
    ("COMP_1", "nurses communicated well"),
    ("COMP_2", "doctors communicated well"),
    ("COMP_3", "they received help as soon as they wanted"),
    ("COMP_5", "staff explained about medicines"),
    ("COMP_6", "they were given information about what to do during their recovery at home"),
    ("COMP_7", "they understood their care when they left the hospital"),
    ("CLEAN_HSP", "their room was clean"),
    ("QUIET_HSP", "the area around their room was quiet at night"),
    ("HSP_RATING", "they gave the hospital a rating"),
    ("RECMND", "they would recommend the hospital"),
]
ANSWERS = [
    ("A_P", '""Always""'),
    ("U_P", '""Usually""'),
    ("SN_P", '""Sometimes"" or ""Never""'),
    ("LINEAR_SCORE", "linear mean score"),
    ("STAR_RATING", "star rating"),
]
MEASURES = [
    (f"H_{topic}_{code}", f"Patients who reported that {text}: {answer}", f"{text}, {answer}")
    for topic, text in TOPICS
    for code, answer in ANSWERS
]
STREETS = ["MAIN STREET", "HOSPITAL DRIVE", "MEDICAL CENTER BLVD", "ROSS CLARK CIRCLE", "PROVIDENCE DRIVE"]
TOWNS = [
    ("DOTHAN", "AL", "HOUSTON"),
    ("BOAZ", "AL", "MARSHALL"),
    ("ANCHORAGE", "AK", "ANCHORAGE"),
    ("PHOENIX", "AZ", "MARICOPA"),
    ("FRESNO", "CA", "FRESNO"),
    ("DENVER", "CO", "DENVER"),
]
FOOTNOTES = ["", "", "", "", "", "5", "6", "11", "15"]


def facility_rows(rng: random.Random, n: int) -> bytes:
    """One facility's block of rows: its fields repeat on every row, the measures follow in a fixed order."""
    town, state, county = rng.choice(TOWNS)
    fixed = [
        f"{10001 + n:06d}",
        f"{rng.choice(['ST', 'MERCY', 'GENERAL', 'REGIONAL'])} {n} MEDICAL CENTER",
        f"{rng.randrange(1, 9999)} {rng.choice(STREETS)}",
        town,
        state,
        f"{rng.randrange(10000, 99999)}",
        county,
        f"({rng.randrange(200, 999)}) {rng.randrange(200, 999)}-{rng.randrange(10000):04d}",
    ]
    surveys, response_rate, footnote = str(rng.randrange(100, 3000)), str(rng.randrange(10, 40)), rng.choice(FOOTNOTES)
    out = []
    for measure, question, answer in MEASURES:
        star = str(rng.randrange(1, 6)) if measure.endswith("STAR_RATING") else "Not Applicable"
        mean = str(rng.randrange(70, 100)) if measure.endswith("LINEAR_SCORE") else "Not Applicable"
        percent = "Not Applicable" if star != "Not Applicable" or mean != "Not Applicable" else str(rng.randrange(100))
        fields = [
            *fixed,
            measure,
            question,
            answer,
            star,
            "",
            percent,
            "",
            mean,
            surveys,
            footnote,
            response_rate,
            footnote,
            "07/01/2022",
            "06/30/2023",
        ]
        out.append(",".join(f'"{f}"' for f in fields) + "\r\n")
    return "".join(out).encode()


def write_csv(path: Path, size: int) -> Path:
    """About `size` bytes, streamed to disk a facility at a time."""
    rng, written, n = random.Random(2025), 0, 0
    with open(path, "wb") as out:
        written += out.write(HEADER.encode())
        while written < size:
            written += out.write(facility_rows(rng, n))
            n += 1
    return path


def client(url: str, dest: str) -> None:
    """One download in this (child) process; prints its figures as JSON."""
    from pipeline.header_rewrite import SourceScan
    from pipeline.http import HttpSettings, download

    start = time.perf_counter()
    got = download(url, Path(dest), HttpSettings(), scan=SourceScan())
    wall = time.perf_counter() - start
    import resource  # POSIX only: imported where used, so the script imports on Windows

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {"wall": wall, "wire": got.wire_bytes, "decoded": got.bytes, "encoding": got.content_encoding, "rss": peak}
        )
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=180, help="size of the CSV in MB (default 180)")
    parser.add_argument("--bandwidth", type=float, default=20, help="MB/s per connection (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="tries per variant; the median is shown (default 3)")
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client(*args.client)

    work = Path(tempfile.mkdtemp(prefix="pipeline-compression-"))
    try:
        t0 = time.perf_counter()
        source = write_csv(work / "hcahps.csv", int(args.mb * MB))
        expected = sha256(source)
        print(
            f"{source.stat().st_size / MB:,.1f} MB CSV written in {time.perf_counter() - t0:.1f} s; "
            f"{args.bandwidth:g} MB/s per connection, median of {args.repeats}",
            flush=True,
        )
        with LoopbackServer(bandwidth=args.bandwidth * MB) as server:
            t0 = time.perf_counter()
            server.add("/identity.csv", source)
            server.add("/gzip.csv", source, encoding="gzip")
            server.add("/gzip-chunked.csv", source, encoding="gzip", chunked=True)
            print(f"gzip level 6 encoded twice in {time.perf_counter() - t0:.1f} s (by the server, once per add)")
            variants = ["identity", "gzip", "gzip-chunked"]
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            for _ in range(args.repeats):
                for variant in variants:  # interleaved, so that drift in the machine hits all alike
                    dest = work / "download.csv"
                    out = subprocess.run(
                        [sys.executable, __file__, "--client", server.url(f"/{variant}.csv"), str(dest)],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    assert sha256(dest) == expected, f"{variant}: the download differs from the file"
                    dest.unlink()
                    runs[variant].append(json.loads(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'variant':<14}{'wall s':>9}{'wire MB':>10}{'decoded MB':>12}{'ratio':>8}{'peak RSS MiB':>14}")
    for variant, figures in runs.items():
        wall, wire, decoded, rss = (
            statistics.median(f[k] for f in figures) for k in ("wall", "wire", "decoded", "rss")
        )
        print(f"{variant:<14}{wall:>9.2f}{wire / MB:>10.1f}{decoded / MB:>12.1f}{decoded / wire:>7.1f}x{rss:>14.0f}")
    plain, packed = (statistics.median(f["wall"] for f in runs[v]) for v in ("identity", "gzip"))
    verdict = "gzip, deflate" if packed < plain else "identity"
    print(f"\ngzip is {plain / packed:.1f}x as fast as identity: keep Accept-Encoding: {verdict}")


if __name__ == "__main__":
    main()
