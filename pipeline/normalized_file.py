"""Making a version's normalized.csv from its whole source.csv: the one way, for Normalize and for the deep
check's repair of versions no longer in the catalog."""

from pipeline import layout
from pipeline.header_rewrite import RewriteResult, copy_normalized, is_scanned, rewrite_csv, scan_record, scanned_result
from pipeline.storage import Storage


def make_normalized(store: Storage, folder: str) -> RewriteResult:
    """The staged copy the download wrote, moved in when the scan vouches for it; else written from the source
    (the new header and a kernel copy of the rest with a usable scan, the full rewrite without). A scan that was
    lost or damaged is made again first. Raises ValueError/UnicodeError for bytes that cannot be normalized."""
    source, scan_key = layout.source_csv(folder), layout.source_scan(folder)
    normalized = layout.normalized_csv(folder)
    staged = store.staged(normalized)
    sizes = store.sizes(folder)  # as the check its caller made under the folder's lock listed it
    scan, _ = store.read_json(scan_key)
    if scan is None or "source_bytes" not in scan:  # damaged, or from an earlier release: rescan the source
        with store.local_copy(source) as path, open(path, "rb") as src:
            scan = scan_record(src)
        store.write_json(scan_key, scan)
    usable = "sha256" in scan  # else not UTF-8, or no usable header: rewritten from the source
    staged_size = sizes.get(staged.rsplit("/", 1)[1])
    if usable and staged_size is not None and is_scanned(scan, sizes.get("source.csv", -1), staged_size):
        if staged != normalized:
            store.move(staged, normalized, read_only=True)  # the download wrote it: moved in, not copied
        return scanned_result(scan)
    store.remove(staged)  # none, or cut short by a kill: made from the source
    result: list[RewriteResult] = []

    def write(temp) -> None:
        with store.local_copy(source) as path, open(path, "rb") as src, open(temp, "w+b") as dst:
            result.append(copy_normalized(src, dst, scan) if usable else rewrite_csv(src, dst))

    store.write_file(normalized, write, read_only=True)
    return result[0]
