"""Closing a run: the one place that turns a run's settled items into latest/, a report and a final status.

Any version task may settle a run's last item, and the wrapper checks once more when all its children are
done, so each of them calls `close_if_complete`. The protocol makes exactly one of them close the run:

1. claim   one run-log write transaction: an open run with nothing queued becomes 'closing'; every other
           caller finds it still queued or already claimed and returns;
2. decide  counts and status are a pure function of the items (`report.tally`);
3. files   latest/ (file by file, under latest/.lock), retention, the run's mail and final ping (their NOTEs
           go in the report; a shared run's job sends them itself, pipeline/shared_run.py), the report: outside
           any database lock;
4. finish  the run row gets its status, counts and report path.

A kill between 1 and 4 leaves the run 'closing': the next run marks it interrupted, and since every run
publishes the whole catalog, its publish brings latest/ up to date.
"""

import json
import logging

from pipeline import latest, layout, notify
from pipeline.catalog import Catalog
from pipeline.console import say
from pipeline.report import COUNTS, build_report, summary_lines, tally
from pipeline.runlog import RunLog, now
from pipeline.storage import Storage, parent
from pipeline.version_check import change_summary

logger = logging.getLogger("luigi-interface")


def close_if_complete(
    store: Storage, log: RunLog, run_id: str, keep_versions: int, by_wrapper: bool = False, typed: bool = False
) -> dict | None:
    """Close the run if nothing of it is left to do; returns the report when this call closed it. `by_wrapper`:
    the job's pipeline/shared_run.py mails, pings and prints the summary, not this process. `typed`: latest/ gets
    the typed files too ([analytics] parquet)."""
    claim = log.claim_close(run_id)
    if claim is None:
        return None
    run, items, retired = claim
    counts, status = tally(items)
    snapshot, problem = store.read_json(layout.catalog_snapshot(run_id))
    if snapshot is None:  # written before any item was planned: only a lost object storage gets here
        raise OSError(f"{store.location(layout.catalog_snapshot(run_id))}: {problem or 'is missing'}")
    catalog = Catalog.from_json(snapshot)
    done = [item for item in items if item["outcome"] in ("downloaded", "up_to_date")]
    for item in done:  # a new version's change report: read here once, for the report and latest/index.csv
        item["changes"] = change_summary(store, item) if item["outcome"] == "downloaded" else None
    notes = json.loads(run["notes"] or "[]")  # what the catalog task repaired
    notes += latest.publish(store, latest.latest_names(catalog.versions), done, retired, run_id, now(), typed)
    if keep_versions > 0:
        notes += _prune(store, log, run_id, keep_versions)
    finished = now()
    report = build_report(run, items, counts, status, finished, notes)

    def record(path: str | None) -> None:  # with the notes _finish adds: the mail's and the ping's
        log.finish_run(run_id, status, counts, finished, path, report["notes"])

    _finish(store, log, run_id, report, record, by_wrapper)
    return report


def close_failed(store: Storage, log: RunLog, run_id: str, error: str, by_wrapper: bool = False) -> None:
    """A run that failed as a whole (metastore unusable, theme not found): still a report and a summary."""
    row = log.run(run_id)
    run = dict(row) if row else {"run_id": run_id, "started_at": None, "metastore_url": None, "theme": None}
    finished = now()
    notes = json.loads(run.get("notes") or "[]")
    report = build_report(run, [], dict.fromkeys(COUNTS, 0), "failed", finished, notes, error=error)
    _finish(store, log, run_id, report, lambda path: log.fail_run(run_id, error, finished, path), by_wrapper)


def _finish(store: Storage, log: RunLog, run_id: str, report: dict, record, by_wrapper: bool) -> None:
    path = store.location(layout.report(run_id))
    if not by_wrapper:
        add_told(log, run_id, report, notify.run_closed(report, path))
    try:
        store.write_json(layout.report(run_id), report)
    except OSError as exc:
        logger.error("Run %s: could not write its report %s: %s", run_id, path, exc.strerror or exc)
        record(None)
        return
    record(path)
    if not by_wrapper:
        say("\n".join(summary_lines(report, path)))


def add_told(log: RunLog, run_id: str, report: dict, notes: list[str]) -> None:
    """The NOTEs of the mail and the final ping that failed, in the report and the run log."""
    report["notes"] += notes
    log.add_notes(run_id, notes)


def _prune(store: Storage, log: RunLog, run_id: str, keep: int) -> list[str]:
    """Delete older versions' folders; the log marks only those really gone."""
    gone, freed, notes = [], 0, []
    for output_path in log.prune_candidates(run_id, keep):
        folder = parent(store.key(output_path))
        try:
            freed += store.remove_tree(folder)
        except OSError as exc:
            notes.append(
                f"retention: {store.location(folder)} could not be deleted ({exc.strerror or exc}); retried next run"
            )
            continue
        gone.append(output_path)
    log.mark_pruned(gone)
    if gone:
        notes.append(f"retention: deleted {len(gone)} older version(s), {freed / 1e6:,.1f} MB freed")
    return notes
