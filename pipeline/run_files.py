"""A finished run's report and catalog snapshot are views of the run log: checked as a crash can leave them
(zero-length, cut short), and rebuilt from the log when they do not parse."""

import json
from pathlib import Path

from pipeline import layout
from pipeline.durable import read_json, write_json, write_text
from pipeline.report import COUNTS, build_report, tally
from pipeline.runlog import RunLog


def repair_closed_runs(data_dir: Path, log: RunLog, run_id: str, every: bool) -> list[str]:
    """The newest finished run's files (the ones a power cut can have caught), or `every` run's; a NOTE each."""
    notes = []
    for run, items in log.closed_runs(run_id, every):
        if run["report_path"]:
            path = layout.report(data_dir, run["run_id"])
            if problem := _damage(path):
                write_json(path, rebuilt_report(run, items))
                notes.append(f"{_relative(path, data_dir)} {problem}; rebuilt from the run log")
        if run["catalog"]:
            path = layout.catalog_snapshot(data_dir, run["run_id"])
            if problem := _damage(path):
                write_text(path, run["catalog"])
                notes.append(f"{_relative(path, data_dir)} {problem}; rebuilt from the run log")
    return notes


def rebuilt_report(run: dict, items: list[dict]) -> dict:
    """The report close_run wrote, from what the run log kept of the run."""
    notes = json.loads(run["notes"] or "[]")
    if run["error"]:  # failed as a whole, before any item
        return build_report(run, [], dict.fromkeys(COUNTS, 0), "failed", run["finished_at"], notes, run["error"])
    counts, status = tally(items)
    return build_report(run, items, counts, status, run["finished_at"], notes)


def _damage(path: Path) -> str | None:
    data, problem = read_json(path)
    return problem or ("is missing" if data is None else None)


def _relative(path: Path, data_dir: Path) -> str:
    return path.relative_to(data_dir).as_posix()
