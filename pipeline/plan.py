"""The dry run: what the next run would do with each CSV version, from the catalog and the run log alone."""

from collections.abc import Callable

from pipeline.catalog import Catalog, CsvVersion

ORDER = ("new", "changed", "failed_last_time", "up_to_date", "retired", "invalid")


def plan(
    catalog: Catalog,
    is_done: Callable[[CsvVersion], bool],
    known: dict[str, str],
    failed: set[tuple[str, str, str]],
    retired: set[str],
) -> list[dict]:
    rows = []
    for version in catalog.versions:
        if is_done(version):
            status = "up_to_date"
        elif (version.identifier, version.modified, version.url) in failed:
            status = "failed_last_time"
        else:
            status = "changed" if version.identifier in known else "new"
        rows.append(
            {
                "status": status,
                "identifier": version.identifier,
                "title": version.title,
                "modified": version.modified,
                "download_url": version.url,
            }
        )
    present = {v.identifier for v in catalog.versions} | {i.identifier for i in catalog.invalid}
    for identifier, title in sorted(known.items()):
        if identifier not in present:
            rows.append(
                {
                    "status": "retired",
                    "identifier": identifier,
                    "title": title,
                    "note": "already marked retired" if identifier in retired else "leaves the catalog",
                }
            )
    rows += [
        {"status": "invalid", "identifier": i.identifier, "title": i.title, "error": i.error} for i in catalog.invalid
    ]
    return sorted(rows, key=lambda row: (ORDER.index(row["status"]), row["identifier"]))


def format_table(rows: list[dict]) -> str:
    counts = {status: sum(row["status"] == status for row in rows) for status in ORDER}
    lines = [f"{'status':<17} {'identifier':<14} {'modified':<11} title", "-" * 80]
    for row in rows:
        title = (row.get("title") or "")[:60]
        lines.append(f"{row['status']:<17} {row['identifier'][:14]:<14} {row.get('modified', ''):<11} {title}")
    lines.append(", ".join(f"{count} {status.replace('_', ' ')}" for status, count in counts.items()))
    return "\n".join(lines)
