"""Benchmark: the job on Windows CPython (the Windows lane's, under Wine), tasks in threads next to a process each.

    python benchmarks/windows_tasks.py              # 3 rounds, about 3 minutes
    python benchmarks/windows_tasks.py --rounds 1

Builds (or reuses) the lane's Windows Python (tests/windows_env.py), serves 5 small datasets from
tests.loopback_server on 127.0.0.1, and measures, side by side in each round: one
`python.exe -c "import luigi, pipeline.tasks"` (an interpreter start and the imports a spawned task process
pays), a cold `luigi.exe --module pipeline HospitalsDaily --workers 8` with the tasks in threads, and the same
with PIPELINE_TASK_THREADS=0 (Luigi's process per task, spawned). Every figure is the median over the rounds.
Wine starts processes far slower than Windows: the ratios, not the seconds, are the figures. Not a test.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.task_threads import SWITCH  # noqa: E402
from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows  # noqa: E402
from tests.harness import Site, write_project_cfg  # noqa: E402
from tests.loopback_server import LoopbackServer  # noqa: E402
from tests.windows_env import WindowsEnv, build  # noqa: E402

DATASETS = 5
COLD = "5 discovered, 5 downloaded"


def timed(env: WindowsEnv, args: list[str], cwd: Path, expect: str = "", **extra: str) -> float:
    started = time.monotonic()
    result = env.run(args, timeout=900, extra_env=extra, cwd=cwd)
    seconds = time.monotonic() - started
    if result.returncode != 0 or expect not in result.stdout:
        raise RuntimeError(f"{args[0]} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args()
    env = build()
    figures: dict[str, list[float]] = {"import": [], "threads": [], "processes": []}
    with tempfile.TemporaryDirectory(prefix="pipeline-windows-") as work, LoopbackServer() as server:
        site = Site(server)
        for n in range(DATASETS):
            site.dataset(f"win{n}-hosp", "2025-04-08", {f"W{n}.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(30, 5))})
        for round_ in range(1, args.rounds + 1):
            figures["import"].append(
                timed(env, [str(env.python), "-c", "import luigi, pipeline.tasks"], ROOT)  # as a spawned task does
            )
            for mode, extra in (("threads", {}), ("processes", {SWITCH: "0"})):
                folder = Path(work) / f"{mode}-{round_}"
                folder.mkdir()
                write_project_cfg(site, folder)
                command = [str(env.luigi), "--module", "pipeline", "HospitalsDaily", "--workers", "8"]
                figures[mode].append(timed(env, command, folder, COLD, **extra))
            print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in figures.items()), flush=True)
    one_import = statistics.median(figures["import"])
    print(f"one `import luigi, pipeline.tasks`: {one_import:.2f} s (median of {args.rounds})")
    for mode in ("threads", "processes"):
        value = statistics.median(figures[mode])
        print(f"cold, {DATASETS} datasets, tasks in {mode}: {value:.2f} s = {value / one_import:.2f}x one import")


if __name__ == "__main__":
    main()
