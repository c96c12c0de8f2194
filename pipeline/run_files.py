"""A finished run's report and catalog snapshot are views of the run log: checked as a crash can leave them
(zero-length, cut short), and rebuilt from the log when they do not parse."""

import json

from pipeline import layout
from pipeline.report import COUNTS, build_report, tally
from pipeline.runlog import RunLog
from pipeline.storage import Storage
from pipeline.version_check import change_summary


def repair_closed_runs(store: Storage, log: RunLog, run_id: str, every: bool) -> list[str]:
    """The newest finished run's files (the ones a power cut can have caught), or `every` run's; a NOTE each."""
    notes = []
    for run, items in log.closed_runs(run_id, every):
        if run["report_path"]:
            key = layout.report(run["run_id"])
            if problem := _damage(store, key):
                store.write_json(key, rebuilt_report(store, run, items))
                notes.append(f"{key} {problem}; rebuilt from the run log")
        if run["catalog"]:
            key = layout.catalog_snapshot(run["run_id"])
            if problem := _damage(store, key):
                store.write_text(key, run["catalog"])
                notes.append(f"{key} {problem}; rebuilt from the run log")
    return notes


def rebuilt_report(store: Storage, run: dict, items: list[dict]) -> dict:
    """The report close_run wrote, from what the run log kept of the run and the change reports it linked."""
    notes = json.loads(run["notes"] or "[]")
    if run["error"]:  # failed as a whole, before any item
        return build_report(run, [], dict.fromkeys(COUNTS, 0), "failed", run["finished_at"], notes, run["error"])
    counts, status = tally(items)
    for item in items:
        item["changes"] = change_summary(store, item) if item["outcome"] == "downloaded" else None
    return build_report(run, items, counts, status, run["finished_at"], notes)


def _damage(store: Storage, key: str) -> str | None:
    data, problem = store.read_json(key)
    return problem or ("is missing" if data is None else None)
