"""What changed between two versions of a dataset's normalized CSV: rows added, removed and changed, and for each
changed row the cells that differ, matched by a key found from the data (or given), else by whole rows.

Pure: works on binary files that the caller's functions open (each file is opened more than once; the old one must
be seekable) and writes the changed cells to an open text file. No Luigi, no paths, no run log.

How, in bounded memory:
1. Records are split in C at line ends (a block with a line break inside quotes is joined in Python) and compared
   as raw bytes: a new record whose bytes are an old record is unchanged, without being parsed. The old file is
   held as 64-bit hashes (a set, about 30 MB at 445k rows) and each record's offset (8 bytes a row); only the
   records without an identical twin are kept, spooled to a temporary file beyond a few MB, the old ones read
   back at their offsets.
2. The key: among the identifying columns (an `_id` or `_ccn` name, `state`), the smallest set, up to three
   columns, whose values are unique in both files. The first rows of the new file rule candidates out; the
   few left are hashed on every new row. Uniqueness in the old file follows from the new file's and the
   spooled records' keys, so the old file's keys are never all computed.
3. The records without a twin are matched by key (by their cells in the columns both versions have, as a
   multiset, when no key is unique), in buckets of bounded size when there are many: a pair whose cells differ
   is a changed row, an unmatched new record added, an unmatched old one removed.

A hash collision can only make a key look not unique (a larger key, or whole rows, is used) or, for two
different records, hide a change with odds of about n^2 / 2^64 (1e-8 at 445k rows).
"""

import csv
import gc
import re
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, combinations, compress
from operator import itemgetter, methodcaller, not_
from typing import IO, BinaryIO, TextIO

IDENTIFYING = re.compile(r"(^|_)(id|ccn)$|^state$|^provider_number$")
MAX_KEY = 3  # columns in a key found from the data
SAMPLE = 5000  # first rows of the new file that rule key candidates out
CHECKED = 4  # candidates checked on every row, at most
BUCKET_ROWS = 50_000  # unmatched records per side held in memory at once
SPOOL_BYTES = 8 << 20  # unmatched records kept in memory before they go to a temporary file


@dataclass
class ChangeSummary:
    key: list[str] | None  # the columns rows were matched by; None: whole rows
    key_source: str  # "found", "configured", or "none"
    old_rows: int = 0
    new_rows: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0  # matched rows with at least one cell that differs (key only)
    cells: int = 0  # lines of the changed-cells CSV
    changed_columns: dict[str, int] = field(default_factory=dict)  # column -> rows whose cell changed
    compared: list[str] = field(default_factory=list)  # the columns compared (those both versions have)
    key_note: str | None = None  # why a configured key was not used

    def figure(self) -> str:
        """The one figure of the console line, the report and index.csv."""
        if not (self.added or self.removed or self.changed):
            return "no row changed"
        if self.key is None:
            return f"+{self.added:,}, -{self.removed:,}"
        return f"+{self.added:,}, -{self.removed:,}, {self.changed:,} changed"

    def to_json(self) -> dict:
        return {
            "summary": self.figure(),
            "key": self.key,
            "key_source": self.key_source,
            "key_note": self.key_note,
            "rows": {"old": self.old_rows, "new": self.new_rows},
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.new_rows - self.added - self.changed,
            "changed_columns": dict(sorted(self.changed_columns.items(), key=lambda kv: (-kv[1], kv[0]))),
            "cells": self.cells,
        }


READ = 1 << 20
_HAS_QUOTE = methodcaller("__contains__", b'"')
_HAS_LF = methodcaller("__contains__", b"\n")


class Offsets:
    """Where each record starts in a file, to read a few of them again; unusable where a record could not be
    placed by C-level arithmetic (a line break inside quotes, a blank line)."""

    def __init__(self) -> None:
        self.starts = array("q")
        self.usable = True

    def forget(self) -> None:
        self.usable = False
        self.starts = array("q")


def batches(file: BinaryIO, offsets: Offsets | None = None, sep: bytes = b"") -> Iterator[list[bytes]]:
    """The file's CSV records, a list per MiB read, each record's bytes without its line ending (blank lines are
    no records, as for the csv module). Split in C at the file's line ending; a block with a line break inside
    quotes (seen by splitting it at its quotes) is split line by line in Python. `offsets`, if given, gets where
    each record starts."""
    carry, offset = b"", 0  # offset: where `carry` starts in the file; `sep`: as its first line ends, unless given
    while chunk := file.read(READ):
        block = carry + chunk
        if not sep:
            first = block.find(b"\n")
            if first < 0:
                carry = block
                continue
            sep = b"\r\n" if block[first - 1 : first] == b"\r" else b"\n"
        cut = block.rfind(sep)
        if cut < 0:
            carry = block
            continue
        block, carry, at = block[:cut], block[cut + len(sep) :], offset
        offset += cut + len(sep)
        quotes = block.count(b'"')
        if quotes and (quotes % 2 or any(map(_HAS_LF, block.split(b'"')[1::2]))):  # a line break inside quotes
            lines, rest = _join_quoted(block.split(b"\n"))
            if rest is not None:  # a record still open: read on, from its start
                carry, offset = rest + sep + carry, offset - len(rest) - len(sep)
            if offsets:
                offsets.forget()
        else:
            lines = block.split(sep)
            if offsets and offsets.usable:
                offsets.starts.extend(accumulate(map(len(sep).__add__, map(len, lines[:-1])), initial=at))
        if b"" in lines:
            lines = list(filter(None, lines))
            if offsets:
                offsets.forget()
        yield lines
    tail = carry.rstrip(b"\r\n")
    if tail and b"\n" not in tail:  # the last record, without a line ending
        if offsets and offsets.usable:
            offsets.starts.append(offset)
        yield [tail]
    elif tail:
        if offsets:
            offsets.forget()
        lines, rest = _join_quoted(tail.split(b"\n"))
        yield list(filter(None, [*lines, rest or b""]))


def _join_quoted(lines: list[bytes]) -> tuple[list[bytes], bytes | None]:
    """Lines (split at LF) joined into records; the start of a record still open at the end, if any."""
    joined, pending = [], None
    for line in lines:
        pending = line if pending is None else pending + b"\n" + line
        if pending.count(b'"') % 2 == 0:
            joined.append(pending.rstrip(b"\r"))  # its line ending; a CR inside quotes stays
            pending = None
    return joined, pending


def records(file: BinaryIO) -> Iterator[bytes]:
    for batch in batches(file):
        yield from batch


def fields(record: bytes) -> list[bytes]:
    """A record's cells; most CMS records have no quote, and split as fast as bytes split."""
    if b'"' not in record:
        return record.split(b",")
    return [cell.encode("utf-8") for cell in next(csv.reader([record.decode("utf-8")]))]


def header(record: bytes) -> list[str]:
    return next(csv.reader([record.decode("utf-8")]))


def candidates(columns: list[str], sample: list[list[bytes]]) -> list[tuple[str, ...]]:
    """Sets of identifying columns, smallest first, that no two rows of the sample share; the smallest size left
    and the next one, at most CHECKED of them."""
    identifying = [name for name in columns if IDENTIFYING.search(name)]
    position = {name: i for i, name in enumerate(columns)}
    left: list[tuple[str, ...]] = []
    for size in range(1, min(MAX_KEY, len(identifying)) + 1):
        for combo in combinations(identifying, size):
            get = itemgetter(*(position[name] for name in combo))
            values = [get(row) for row in sample if len(row) == len(columns)]
            if len(set(values)) == len(values):
                left.append(combo)
        if left and len(left[-1]) < size:  # a size beyond the smallest unique one: enough
            break
    return left[:CHECKED]


class _Spool:
    """Records written one per line (a record's own line breaks are inside quotes), read back in order."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - closed by close()
        self.count = 0

    def add(self, record: bytes) -> None:
        self.file.write(record + b"\n")
        self.count += 1

    def extend(self, records: Iterable[bytes]) -> None:
        for record in records:
            self.add(record)

    def __iter__(self) -> Iterator[bytes]:
        self.file.seek(0)
        for batch in batches(self.file, sep=b"\n"):  # type: ignore[arg-type]
            yield from batch  # type: ignore[arg-type]

    def close(self) -> None:
        self.file.close()


class _KeyHashes:
    """Each candidate key's hash for every record of a file, in arrays of 8 bytes a value (a set of 445k Python
    ints takes 30 MB; made only at the end, one candidate at a time)."""

    def __init__(self, tried: list[tuple[str, ...]], at: dict[str, int]) -> None:
        self.getters = [itemgetter(*(at[name] for name in combo)) for combo in tried]
        self.reach = max((at[name] for combo in tried for name in combo), default=0) + 1
        self.split = methodcaller("split", b",", self.reach)  # no further than the last key column
        self.hashes = [array("q") for _ in tried]
        self.ragged = False  # a record too short for a key: no key is trusted

    def add(self, batch: list[bytes]) -> None:
        if not self.getters or self.ragged:
            return
        parts = list(map(self.split, batch))
        # A quote up to the last key column (a name with a comma): those records through one csv reader.
        quoted = [i for i in compress(range(len(batch)), map(_HAS_QUOTE, batch)) if b'"' in b"".join(parts[i][:-1])]
        for i, row in zip(quoted, csv.reader(batch[i].decode("utf-8") for i in quoted)):  # noqa: B905 - one each
            parts[i] = [cell.encode("utf-8") for cell in row]
        try:
            for get, kept in zip(self.getters, self.hashes):  # noqa: B905 - made together
                kept.extend(map(hash, map(get, parts)))
        except IndexError:
            self.ragged = True


def _after_header(first: list[bytes], rest: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
    yield first[1:]
    yield from rest


def _key_hashes(open_file: Callable[[], BinaryIO], combo: tuple[str, ...], at: dict[str, int]) -> "_KeyHashes":
    """One candidate key's hashes for every data record of a file."""
    keys = _KeyHashes([combo], at)
    with open_file() as file:
        it = batches(file)
        for batch in _after_header(next(it, []), it):
            keys.add(batch)
    return keys


def _hash_file(file: BinaryIO, offsets: Offsets) -> array:
    """Every data record's hash, in file order."""
    hashes = array("q")
    it = batches(file, offsets)
    for batch in _after_header(next(it, []), it):
        hashes.extend(map(hash, batch))
    return hashes


def _spool(file: BinaryIO, offsets: Offsets | None, hashes: array, wanted: set[int], spool: "_Spool") -> None:
    """The records whose hash is in `wanted`, to the spool: read where they start when that is known (few, unless
    most rows changed), else by reading the file again."""
    if not wanted:
        return
    if offsets and offsets.usable:
        for i in compress(range(len(hashes)), map(wanted.__contains__, hashes)):
            file.seek(offsets.starts[i + 1])  # the header is record 0
            spool.add(file.readline().rstrip(b"\r\n"))
        return
    it = batches(file)
    for batch in _after_header(next(it, []), it):
        spool.extend(compress(batch, map(wanted.__contains__, map(hash, batch))))


def _duplicated(hashes: array) -> set[int]:
    """The hashes that occur more than once (whole rows repeated in a file: rare)."""
    distinct = set(hashes)
    if len(distinct) == len(hashes):
        return set()
    seen: set[int] = set()
    return {h for h in hashes if h in seen or seen.add(h)}  # type: ignore[func-returns-value]


def compare(
    open_old: Callable[[], BinaryIO],
    open_new: Callable[[], BinaryIO],
    cells_out: TextIO,
    renamed: dict[str, str] | None = None,
    key: list[str] | None = None,
) -> ChangeSummary:
    """Compare two normalized CSVs (UTF-8, first record the header). `renamed` maps old column names to new ones
    (the schema drift's renames); `key` is a configured key, used when its columns are in both files and unique
    in both. Writes the changed cells to `cells_out` (the key's columns, then column, old, new)."""
    # Nothing made here can form a reference cycle, and the collector would scan the millions of lists the key
    # columns are split into, again and again (a third of the time): it is off while this runs.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _compare(open_old, open_new, cells_out, renamed or {}, key)
    finally:
        if collecting:
            gc.enable()


def _compare(open_old, open_new, cells_out: TextIO, renamed: dict[str, str], key: list[str] | None) -> ChangeSummary:
    with open_new() as new_file:
        it = records(new_file)
        new_columns = header(next(it, b""))
        sample = [fields(record) for _, record in zip(range(SAMPLE), it, strict=False)]
    with open_old() as old_file:
        old_columns = [renamed.get(name, name) for name in header(next(records(old_file), b""))]
    old_at = {name: i for i, name in enumerate(old_columns)}
    new_at = {name: i for i, name in enumerate(new_columns)}
    compared = [name for name in new_columns if name in old_at]

    key_note = None
    if key:
        missing = [name for name in key if name not in old_at or name not in new_at]
        tried = [] if missing else [tuple(key)]
        if missing:
            key_note = f"configured key column(s) {', '.join(missing)} not in both versions"
    else:
        tried = [combo for combo in candidates(new_columns, sample) if all(name in old_at for name in combo)]

    # 1. The old records' hashes; 2. the new ones' (and their keys'), with the new records that have no identical
    # old one spooled as they pass; 3. the old records that have no identical new one, read again and spooled.
    old_offsets = Offsets()
    with open_old() as old_file:
        old_hashes = _hash_file(old_file, old_offsets)
    old_set = set(old_hashes)
    keys = _KeyHashes(tried[:1], new_at)  # the others only if it is not unique: a pass of their own
    added, removed = _Spool(), _Spool()
    try:
        with open_new() as new_file:
            pieces = batches(new_file)
            new_hashes = array("q")
            for batch in _after_header(next(pieces, []), pieces):
                hashes = list(map(hash, batch))
                new_hashes.extend(hashes)
                keys.add(batch)
                added.extend(compress(batch, map(not_, map(old_set.__contains__, hashes))))
        old_left = old_set.difference(new_hashes)
        old_rows, new_rows, old_repeats = len(old_hashes), len(new_hashes), len(old_set) < len(old_hashes)
        del old_set  # before the next big set: memory holds one at a time
        with open_old() as old_file:
            _spool(old_file, old_offsets, old_hashes, old_left, removed)

        chosen = None
        if not (keys.ragged or old_repeats):  # a row repeated whole repeats its key
            for combo in tried:
                if combo != tried[0]:
                    keys = _key_hashes(open_new, combo, new_at)
                if keys.ragged:
                    break
                key_hashes = keys.hashes[0]
                if _unique_in_both(key_hashes, removed, added, [old_at[n] for n in combo], [new_at[n] for n in combo]):
                    chosen = list(combo)
                    break
        del keys
        if chosen is None:  # whole rows repeated in a file are matched by count: every copy goes to the spools
            repeated = _duplicated(new_hashes) | (_duplicated(old_hashes) if old_repeats else set())
            in_both = repeated.intersection(old_hashes).intersection(new_hashes)
            if in_both:
                with open_new() as new_file:
                    _spool(new_file, None, new_hashes, in_both, added)
                with open_old() as old_file:
                    _spool(old_file, old_offsets, old_hashes, in_both - old_left, removed)
        del old_hashes, new_hashes, old_left, old_offsets
        if key and chosen is None and key_note is None:
            key_note = "configured key is not unique in both versions"
        summary = ChangeSummary(
            key=chosen,
            key_source=("configured" if key else "found") if chosen else "none",
            old_rows=old_rows,
            new_rows=new_rows,
            compared=compared,
            key_note=key_note,
        )
        _match(summary, removed, added, old_columns, new_columns, cells_out)
    finally:
        added.close()
        removed.close()
    return summary


def _unique_in_both(
    new_keys: array, removed: "_Spool", added: "_Spool", old_positions: list[int], new_positions: list[int]
) -> bool:
    """Unique in the new file: its key hashes are distinct. Unique in the old one, whose keys were not all
    computed: an old record is either one the new file has byte for byte (its key is a new key that no added
    record has) or a removed one; the removed ones' keys must be distinct and none the key of a kept record."""
    new_set = set(new_keys)
    if len(new_set) != len(new_keys):
        return False
    old_key = _projection(old_positions, 0)
    new_key = _projection(new_positions, 0)
    try:
        in_added = {hash(new_key(record)[1]) for record in added}
        seen: set[int] = set()
        for record in removed:
            h = hash(old_key(record)[1])
            if h in seen or (h in new_set and h not in in_added):
                return False
            seen.add(h)
    except IndexError:
        return False
    return True


def _projection(positions: list[int], width: int) -> Callable[[bytes], tuple[list[bytes], object]]:
    """A record's cells (a short record padded to `width`) and their values at `positions`."""
    get = itemgetter(*positions) if positions else (lambda _: ())

    def project(record: bytes) -> tuple[list[bytes], object]:
        cells = fields(record)
        if len(cells) < width:
            cells += [b""] * (width - len(cells))
        return cells, get(cells)

    return project


def _match(
    summary: ChangeSummary,
    removed: _Spool,
    added: _Spool,
    old_columns: list[str],
    new_columns: list[str],
    cells_out: TextIO,
) -> None:
    """Pairs the records without an identical twin: by key, or by their cells in the compared columns. Many
    such records are matched bucket by bucket (records with the same key hash share a bucket)."""
    old_at = {name: i for i, name in enumerate(old_columns)}
    new_at = {name: i for i, name in enumerate(new_columns)}
    matched_by = summary.key or summary.compared
    old = _projection([old_at[name] for name in matched_by], len(old_columns))
    new = _projection([new_at[name] for name in matched_by], len(new_columns))
    writer = csv.writer(cells_out)
    key_columns = summary.key or []
    writer.writerow([*key_columns, "column", "old", "new"])
    pairs = [(name, new_at[name], old_at[name]) for name in summary.compared if name not in key_columns]
    parts = 1 + max(removed.count, added.count) // BUCKET_ROWS
    if parts == 1:
        _match_bucket(summary, removed, added, old, new, pairs, writer)
        return
    for old_part, new_part in zip(_buckets(removed, parts, old), _buckets(added, parts, new), strict=True):
        try:
            _match_bucket(summary, old_part, new_part, old, new, pairs, writer)
        finally:
            old_part.close()
            new_part.close()


def _buckets(spool: _Spool, parts: int, project: Callable) -> list[_Spool]:
    buckets = [_Spool() for _ in range(parts)]
    for record in spool:
        buckets[hash(project(record)[1]) % parts].add(record)
    return buckets


def _text(value: object) -> list[str]:
    values = value if isinstance(value, tuple) else (value,)
    return [v.decode("utf-8") for v in values]  # type: ignore[union-attr]


def _match_bucket(
    summary: ChangeSummary,
    removed: Iterable[bytes],
    added: Iterable[bytes],
    old: Callable,
    new: Callable,
    pairs: list[tuple[str, int, int]],
    writer,
) -> None:
    if summary.key is None:  # whole rows: a multiset of their cells in the compared columns
        counts: dict[object, int] = {}
        for record in removed:
            k = old(record)[1]
            counts[k] = counts.get(k, 0) + 1
        for record in added:
            k = new(record)[1]
            if counts.get(k):
                counts[k] -= 1
            else:
                summary.added += 1
        summary.removed += sum(counts.values())
        return
    old_by_key = {old(record)[1]: record for record in removed}  # raw bytes: a third of the parsed size
    for record in added:
        cells, k = new(record)
        before = old_by_key.pop(k, None)
        if before is None:
            summary.added += 1
            continue
        was = old(before)[0]
        differ = [(name, was[oi], cells[ni]) for name, ni, oi in pairs if was[oi] != cells[ni]]
        if not differ:
            continue
        summary.changed += 1
        key_text = _text(k)
        for name, before_cell, after_cell in differ:
            summary.changed_columns[name] = summary.changed_columns.get(name, 0) + 1
            writer.writerow([*key_text, name, before_cell.decode("utf-8"), after_cell.decode("utf-8")])
            summary.cells += 1
    summary.removed += len(old_by_key)
