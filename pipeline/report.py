"""The run report: one JSON document per run, and the one-line console summary that names it."""

import json
from collections.abc import Sequence

from pipeline.schema_drift import describe

COUNTS = ("discovered", "downloaded", "up_to_date", "failed", "invalid", "retired")


def progress_line(done: int, failed: int, total: int) -> tuple[str, int]:
    """The wrapper's status message and percentage in luigid's UI."""
    return f"{done} done, {failed} failed of {total} CSV versions", 100 * (done + failed) // max(1, total)


def tally(items: list[dict]) -> tuple[dict, str]:
    """(counts, status) of a run from its items' outcomes: any failed version fails the run."""
    counts = {name: sum(item["outcome"] == name for item in items) for name in COUNTS}
    counts["discovered"] = sum(item["outcome"] not in ("invalid", "retired") for item in items)
    return counts, "failed" if counts["failed"] else "succeeded"


def build_report(
    run: dict,
    items: list[dict],
    counts: dict,
    status: str,
    finished_at: str,
    notes: Sequence[str] = (),
    error: str | None = None,
) -> dict:
    datasets = []
    for item in items:
        done = item["outcome"] in ("downloaded", "up_to_date")
        datasets.append(
            {
                "identifier": item["identifier"],
                "title": item["title"],
                "version": {
                    "modified": item["modified"],
                    "download_url": item["download_url"],
                    "revision": item["revision"] or None,
                },
                "status": item["outcome"],
                "paths": {
                    "source": item["source_path"],
                    "normalized": item["output_path"],
                    "header_map": item["header_map_path"],
                    "changes": (item.get("changes") or {}).get("path"),
                }
                if done
                else None,
                "rows": item["rows"] if done else None,
                "bytes": item["bytes"] if done else None,
                "sha256": item["sha256"] if done else None,
                "source_encoding": item["source_encoding"] if done else None,
                "released": item["released"],
                "described_by": item["described_by"],
                "changes": (item.get("changes") or {}).get("summary"),
                "schema_change": {
                    "previous_version": {"modified": item["previous_modified"], "download_url": item["previous_url"]},
                    **json.loads(item["schema_change"]),
                }
                if item["schema_change"]
                else None,
                "error": item["error"],
            }
        )
    return {
        "run_id": run["run_id"],
        "status": status,
        "started_at": run["started_at"],
        "finished_at": finished_at,
        "metastore_url": run["metastore_url"],
        "theme": run["theme"],
        "counts": {name: counts[name] for name in COUNTS},
        "error": error,
        "notes": list(notes),
        "datasets": datasets,
    }


def summary_lines(report: dict, report_path) -> list[str]:
    counts = report["counts"]
    lines = [
        f"HospitalsDaily run {report['run_id']} {report['status']}: "
        + ", ".join(f"{counts[name]} {name.replace('_', ' ')}" for name in COUNTS)
        + f". Report: {report_path}"
    ]
    if report.get("error"):
        lines.append(f"  ERROR {report['error']}")
    lines += [f"  NOTE {note}" for note in report.get("notes", [])]
    for entry in report["datasets"]:
        if entry["status"] in ("failed", "invalid"):
            lines.append(f"  {entry['status'].upper()} {entry['identifier'] or '(no identifier)'}: {entry['error']}")
        elif entry["schema_change"]:
            lines.append(f"  SCHEMA {entry['identifier']}: {describe(entry['schema_change'])}")
        elif entry["status"] == "retired":
            lines.append(f"  RETIRED {entry['identifier']}: no longer in the catalog (its files stay)")
        elif entry["error"]:
            lines.append(f"  NOTE {entry['identifier']}: {entry['error']}")
        elif entry["source_encoding"] not in (None, "utf-8"):
            lines.append(f"  NOTE {entry['identifier']}: source was not UTF-8, read as {entry['source_encoding']}")
    return lines
