"""Making a version's normalized.csv from its whole source.csv: the one way, for Normalize and for the deep
check's repair of versions no longer in the catalog."""

from pathlib import Path

from pipeline import layout
from pipeline.durable import atomic_path, put_in_place, write_json
from pipeline.header_rewrite import RewriteResult, copy_normalized, is_scanned, rewrite_csv, scan_record, scanned_result
from pipeline.version_check import check_version


def make_normalized(folder: Path) -> RewriteResult:
    """The staged copy the download wrote, moved in when the scan vouches for it; else written from the source
    (the new header and a kernel copy of the rest with a usable scan, the full rewrite without). A scan that was
    lost or damaged is made again first. Raises ValueError/UnicodeError for bytes that cannot be normalized."""
    source, scan_path = layout.source_csv(folder), layout.source_scan(folder)
    staged, normalized = layout.normalized_staged(folder), layout.normalized_csv(folder)
    scan = check_version(folder).scan
    if scan is None:  # damaged, or a download of an earlier release: the source is whole, scan it again
        with open(source, "rb") as src:
            scan = scan_record(src)
        write_json(scan_path, scan)
    usable = "sha256" in scan  # else not UTF-8, or no usable header: rewritten from the source
    if usable and staged.exists() and is_scanned(scan, source.stat().st_size, staged.stat().st_size):
        put_in_place(staged, normalized, read_only=True)  # the download wrote it: moved in, not copied
        return scanned_result(scan)
    staged.unlink(missing_ok=True)  # none, or cut short by a kill: made from the source
    with atomic_path(normalized, read_only=True) as temp, open(source, "rb") as src, open(temp, "w+b") as dst:
        return copy_normalized(src, dst, scan) if usable else rewrite_csv(src, dst)
