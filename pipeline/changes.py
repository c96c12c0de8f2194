"""What changed between two versions of a dataset's normalized CSV: rows added, removed and changed, and for each
changed row the cells that differ, matched by a key found from the data (or given), else by whole rows.

Pure: works on binary files that the caller's functions open (each file is opened more than once; the old one must
be seekable) and writes the changed cells to an open text file. No Luigi, no paths, no run log.

How, in bounded memory:
1. Records are split in C at line ends (a block with a line break inside quotes is joined in Python) and compared
   as raw bytes: a new record whose bytes are an old record is unchanged, without being parsed. A refresh keeps
   the rows in order, so both files are read side by side and runs of equal records are counted in C; after a
   difference the next few thousand records of each file line them up again (a changed row, rows removed or
   added). The records out of line are kept (a few MB) and paired by their bytes at the end (a moved row is
   unchanged). Files that do not keep their order (too many records out of line) are compared by hashes
   instead: the old file held as 64-bit hashes (a set, about 30 MB at 445k rows) and each record's offset
   (8 bytes a row), the records without an identical twin spooled, the old ones read back at their offsets.
   Either way only the records without a twin are kept, spooled to a temporary file beyond a few MB.
2. The key: among the identifying columns (an `_id` or `_ccn` name, `state`), the smallest set, up to three
   columns, whose values are unique in both files. The first rows of the new file rule candidates out; the
   first one left is split and hashed in C on every new row (the csv module parses only the records with a
   quote before its last column), the others in a pass of their own if it is not unique. Uniqueness in the
   old file follows from the new file's and the spooled records' keys, so the old file's keys are never all
   computed.
3. The records without a twin are matched by key (by their cells in the columns both versions have, as a
   multiset, when no key is unique), in buckets of bounded size when there are many: a pair whose cells differ
   is a changed row, an unmatched new record added, an unmatched old one removed.

A hash collision can only make a key look not unique (a larger key, or whole rows, is used) or, for two
different records compared by hashes, hide a change with odds of about n^2 / 2^64 (1e-8 at 445k rows).
"""

import csv
import gc
import re
import tempfile
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, combinations, compress, islice, repeat, takewhile
from operator import eq, itemgetter, methodcaller, not_
from typing import IO, BinaryIO, TextIO

IDENTIFYING = re.compile(r"(^|_)(id|ccn)$|^state$|^provider_number$")
MAX_KEY = 3  # columns in a key found from the data
SAMPLE = 5000  # first rows of the new file that rule key candidates out
CHECKED = 4  # candidates checked on every row, at most
BUCKET_ROWS = 50_000  # unmatched records per side held in memory at once
SPOOL_BYTES = 8 << 20  # unmatched records kept in memory before they go to a temporary file
LOOK = 4096  # records looked ahead in each file to line them up again after a difference
OUT_OF_LINE = 40_000  # records out of line, at most, before the files are taken not to keep their order


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
_FIND_QUOTE = methodcaller("find", b'"')
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b',"\n')))


class Offsets:
    """Where each record starts in a file, to read a few of them again; unusable where a record could not be
    placed by C-level arithmetic (a line break inside quotes, a blank line)."""

    def __init__(self) -> None:
        self.starts = array("q")
        self.usable = True

    def forget(self) -> None:
        self.usable = False
        self.starts = array("q")


def batches(
    file: BinaryIO, offsets: Offsets | None = None, sep: bytes = b"", reach: int = 0
) -> Iterator[tuple[list[bytes], Sequence[int]]]:
    """The file's CSV records, a list per MiB read, each record's bytes without its line ending (blank lines are
    no records, as for the csv module). Split in C at the file's line ending; a block with a line break inside
    quotes is split line by line in Python. `offsets`, if given, gets where each record starts. With `reach`,
    each list comes with the positions in it of the records that may hold a quote among their first `reach`
    fields (a few more, never fewer), else with none."""
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
        broken, opens, marks = _quotes(block)
        if broken:  # a line break inside quotes
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
            broken = True
            if offsets:
                offsets.forget()
        if not reach:
            yield lines, ()
        elif broken:
            yield lines, _quoted(lines)
        elif opens is None:
            yield lines, _quoted_in(lines, marks, reach)
        elif opens:  # the record each quoted stretch opens in, by where the records start
            starts = list(accumulate(map(len(sep).__add__, map(len, lines[:-1])), initial=0))
            yield lines, list(dict.fromkeys(map((-1).__add__, map(bisect_right, repeat(starts), opens))))
        else:
            yield lines, ()
    tail = carry.rstrip(b"\r\n")
    if tail and b"\n" not in tail:  # the last record, without a line ending
        if offsets and offsets.usable:
            offsets.starts.append(offset)
        lines = [tail]
    elif tail:
        if offsets:
            offsets.forget()
        joined, rest = _join_quoted(tail.split(b"\n"))
        lines = list(filter(None, [*joined, rest or b""]))
    if tail:
        yield lines, _quoted(lines) if reach else ()


FEW_QUOTES = 1024  # quotes in a block found one by one; beyond, the block is split at them


def _quotes(block: bytes) -> tuple[bool, list[int] | None, bytes]:
    """Whether a line break is inside quotes in the block (a quote left open counts), and where its quoted
    stretches open; unless the quotes are many (None), then with the block's commas, quotes and line breaks.
    While they are few (by its first 16th), only the quotes are visited."""
    find, opens = block.find, list[int]()
    at = find(b'"') if block.count(b'"', 0, len(block) >> 4) << 4 <= FEW_QUOTES else -2
    while at >= 0 and len(opens) < FEW_QUOTES:
        close = find(b'"', at + 1)
        if close < 0 or find(b"\n", at, close) >= 0:
            return True, None, b""
        opens.append(at)
        at = find(b'"', close + 1)
    if at == -1:
        return False, opens, b""
    # Many: a line with an odd number of quotes ends inside them. All but commas, quotes and line breaks dropped,
    # then the commas and the pairs of quotes, in C: a quote left is one.
    marks = block.translate(None, _NOT_MARKS)
    return b'"' in marks.replace(b",", b"").replace(b'""', b""), None, marks


def _quoted_in(lines: list[bytes], marks: bytes, reach: int) -> Sequence[int]:
    """The records with a quote among their first `reach` fields, by the block's marks (commas, quotes and line
    breaks): those whose marks do not start with `reach` commas. Counted in C, and found line by line only if
    there are some."""
    if marks.count(b"\n") + 1 != len(lines):  # a line break outside quotes that is not a record's end
        return range(len(lines))
    commas = b"," * reach
    if (b"\n" + marks).count(b"\n" + commas) == len(lines):
        return ()
    return list(compress(range(len(lines)), map(not_, map(methodcaller("startswith", commas), marks.split(b"\n")))))


def _quoted(lines: list[bytes]) -> list[int]:
    return list(compress(range(len(lines)), map(_HAS_QUOTE, lines)))


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
    for lines, _ in batches(file):
        yield from lines


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

    def extend(self, records: list[bytes]) -> None:
        if records:
            self.file.write(b"\n".join(records) + b"\n")
            self.count += len(records)

    def __iter__(self) -> Iterator[bytes]:
        self.file.seek(0)
        for lines, _ in batches(self.file, sep=b"\n"):  # type: ignore[arg-type]
            yield from lines

    def close(self) -> None:
        self.file.close()


class _KeyHashes:
    """One candidate key's hash for every record of a file: the key is unique where they are distinct. A list as
    the file is read, a set once asked for (made then, when the big sets of the pass are gone)."""

    def __init__(self, combo: tuple[str, ...], at: dict[str, int]) -> None:
        positions = [at[name] for name in combo]
        self.get = itemgetter(*positions) if positions else None
        self.reach = max(positions, default=0) + 1
        self.split = methodcaller("split", b",", self.reach)  # no further than the last key column
        self.hashes: list[int] = []
        self.seen: set[int] | None = None
        self.ragged = False  # a record too short for the key: it is not trusted

    def add(self, lines: list[bytes], quoted: Sequence[int]) -> None:
        if self.get is None or self.ragged:
            return
        try:
            # Split and hashed in C, a map over the whole batch; then the few records with a quote up to the last
            # key column (a name with a comma), through one csv reader: those with fewer commas before their
            # first quote than the key reaches.
            hashes = list(map(hash, map(self.get, map(self.split, lines))))
            texts = list(map(lines.__getitem__, quoted))
            before = map(bytes.count, texts, repeat(b","), repeat(0), map(_FIND_QUOTE, texts))
            parsed = list(compress(quoted, map(self.reach.__gt__, before)))
            if parsed:
                rows = csv.reader(map(bytes.decode, map(lines.__getitem__, parsed)))
                for i, value in zip(parsed, map(self.get, rows)):  # noqa: B905 - a row each
                    hashes[i] = hash(value.encode() if isinstance(value, str) else tuple(map(str.encode, value)))
        except IndexError:
            self.ragged = True
            return
        self.hashes += hashes

    def distinct(self) -> set[int] | None:
        """The set of the hashes, or None if some repeat (the key is not unique in the file)."""
        if self.seen is None:
            self.seen = set(self.hashes)
        return self.seen if len(self.seen) == len(self.hashes) else None


def _data(batches: Iterable[tuple[list[bytes], Sequence[int]]]) -> Iterator[tuple[list[bytes], Sequence[int]]]:
    """The batches without the header record."""
    header = True
    for lines, quoted in batches:
        if header and lines:
            header = False
            lines, quoted = lines[1:], [i - 1 for i in quoted if i]
        yield lines, quoted


def _key_hashes(open_file: Callable[[], BinaryIO], combo: tuple[str, ...], at: dict[str, int]) -> "_KeyHashes":
    """One candidate key's hashes for every data record of a file."""
    keys = _KeyHashes(combo, at)
    with open_file() as file:
        for lines, quoted in _data(batches(file, reach=keys.reach)):
            keys.add(lines, quoted)
    return keys


def _hash_file(file: BinaryIO, offsets: Offsets) -> list[int]:
    """Every data record's hash, in file order (a list: its ints are the ones the set of them holds)."""
    hashes: list[int] = []
    for lines, _ in _data(batches(file, offsets)):
        hashes += map(hash, lines)
    return hashes


def _spool(file: BinaryIO, offsets: Offsets | None, hashes: Sequence[int], wanted: set[int], spool: "_Spool") -> None:
    """The records whose hash is in `wanted`, to the spool: read where they start when that is known (few, unless
    most rows changed), else by reading the file again."""
    if not wanted:
        return
    if offsets and offsets.usable:
        for i in compress(range(len(hashes)), map(wanted.__contains__, hashes)):
            file.seek(offsets.starts[i + 1])  # the header is record 0
            spool.add(file.readline().rstrip(b"\r\n"))
        return
    for lines, _ in _data(batches(file)):
        spool.extend(list(compress(lines, map(wanted.__contains__, map(hash, lines)))))


def _duplicated(hashes: Sequence[int]) -> set[int]:
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

    first = tried[0] if tried else ()  # the others only if it is not unique: a pass of their own
    keys = _KeyHashes(first, new_at)
    added, removed = _Spool(), _Spool()
    try:
        counted = _in_line(open_old, open_new, keys, added, removed)
        if counted is None:  # the files do not line up: every record hashed
            added.close()
            removed.close()
            keys, added, removed = _KeyHashes(first, new_at), _Spool(), _Spool()
            counted = _by_hashes(open_old, open_new, keys, added, removed)
        old_rows, new_rows, old_repeats = counted

        chosen = None
        if not (keys.ragged or old_repeats):  # a row repeated whole repeats its key
            for combo in tried:
                if combo != first:
                    keys = _key_hashes(open_new, combo, new_at)
                if keys.ragged:
                    break
                if _unique_in_both(keys, removed, added, [old_at[n] for n in combo], [new_at[n] for n in combo]):
                    chosen = list(combo)
                    break
        del keys
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


def _in_line(
    open_old: Callable[[], BinaryIO], open_new: Callable[[], BinaryIO], keys: _KeyHashes, added: _Spool, removed: _Spool
) -> tuple[int, int, bool] | None:
    """Both files read together, record against record: a refresh keeps the rows in order, so whole runs of
    records compare equal as bytes in C, and only the records around a difference are looked at one by one.
    Records out of line (changed, added, removed or moved) are paired by their bytes at the end; the rest go to
    the spools in file order. None, and nothing spooled, when too many records are out of line."""
    out_new: list[bytes] = []
    out_old: list[bytes] = []
    new_rows = old_rows = 0
    with open_old() as old_file, open_new() as new_file:
        new_batches = _data(batches(new_file, reach=keys.reach if keys.get else 0))
        old_batches = _data(batches(old_file))
        new: list[bytes] = []
        old: list[bytes] = []
        a = b = 0  # the next new and old record
        new_more = old_more = True
        while True:
            if new_more and len(new) - a < LOOK:  # records ahead to line up again after a difference
                batch = next(new_batches, None)
                if batch is None:
                    new_more = False
                else:
                    keys.add(*batch)
                    new_rows += len(batch[0])
                    new, a = new[a:] + batch[0], 0
                continue
            if old_more and len(old) - b < len(new) - a + LOOK:
                batch = next(old_batches, None)
                if batch is None:
                    old_more = False
                else:
                    old_rows += len(batch[0])
                    old, b = old[b:] + batch[0], 0
                continue
            count = min(len(new) - a, len(old) - b)
            if count == 0:
                break
            new_at, old_at = iter(new), iter(old)
            new_at.__setstate__(a)  # type: ignore[attr-defined]
            old_at.__setstate__(b)  # type: ignore[attr-defined]
            run = sum(takewhile(bool, map(eq, islice(new_at, count), old_at)))  # equal records, counted in C
            a, b = a + run, b + run
            if run == count:
                continue
            skip_new, skip_old = _line_up(new, a, old, b)
            out_new += new[a : a + skip_new]
            out_old += old[b : b + skip_old]
            a, b = a + skip_new, b + skip_old
            if len(out_new) + len(out_old) > OUT_OF_LINE:
                return None
        out_new += new[a:]  # one file is done: the rest of the other is out of line
        out_old += old[b:]
        for lines, quoted in new_batches:
            keys.add(lines, quoted)
            new_rows += len(lines)
            out_new += lines
            if len(out_new) + len(out_old) > OUT_OF_LINE:
                return None
        for lines, _ in old_batches:
            old_rows += len(lines)
            out_old += lines
            if len(out_new) + len(out_old) > OUT_OF_LINE:
                return None
    # A record out of line in both files is a moved one: only the rest are added and removed (counted, so that a
    # record repeated whole is paired as often as it is in both).
    left = Counter(out_old)
    new_only, old_only = [], []
    for record in out_new:
        if left[record]:
            left[record] -= 1
        else:
            new_only.append(record)
    for record in out_old:
        if left[record]:
            left[record] -= 1
            old_only.append(record)
    added.extend(new_only)
    removed.extend(old_only)
    return old_rows, new_rows, False


def _line_up(new: list[bytes], a: int, old: list[bytes], b: int) -> tuple[int, int]:
    """How many records of each file, from two that differ, are out of line: up to the first new record found in
    the old file's next records (a changed row: one each; removed rows: old ones; added rows: new ones)."""
    if a + 1 < len(new) and b + 1 < len(old) and new[a + 1] == old[b + 1]:
        return 1, 1
    for width in (64, LOOK):
        ahead = old[b : b + width]
        where = dict(zip(reversed(ahead), range(len(ahead) - 1, -1, -1), strict=True))  # the first of equal ones
        found = list(map(where.__contains__, new[a : a + width]))
        if True in found:
            skip = found.index(True)
            return skip, where[new[a + skip]]
    return min(LOOK, len(new) - a), min(LOOK, len(old) - b)  # not in line so far ahead: all of them out of line


def _by_hashes(
    open_old: Callable[[], BinaryIO], open_new: Callable[[], BinaryIO], keys: _KeyHashes, added: _Spool, removed: _Spool
) -> tuple[int, int, bool]:
    """Records paired by hashes, in any order: 1. the old records' hashes; 2. the new ones' (and their keys'),
    with the new records that have no identical old one spooled as they pass; 3. the old records that have no
    identical new one, read again and spooled. Whole rows repeated in a file are matched by count: every copy
    goes to the spools (no key is used then)."""
    old_offsets = Offsets()
    with open_old() as old_file:
        old_hashes = _hash_file(old_file, old_offsets)
    old_left = set(old_hashes)
    old_repeats = len(old_left) < len(old_hashes)
    with open_new() as new_file:
        new_hashes = array("q")
        for lines, quoted in _data(batches(new_file, reach=keys.reach if keys.get else 0)):
            hashes = list(map(hash, lines))
            new_hashes.extend(hashes)
            keys.add(lines, quoted)
            added.extend(list(compress(lines, map(not_, map(old_left.__contains__, hashes)))))
    old_left.difference_update(new_hashes)  # in place: a copy would be as large as the set
    old_left = set(old_left)  # and the large table it leaves, let go
    with open_old() as old_file:
        _spool(old_file, old_offsets, old_hashes, old_left, removed)
    # A key unique in the new file rules out rows repeated whole there; else they are looked for.
    new_repeats = keys.get is None or keys.ragged or keys.distinct() is None
    repeated = (_duplicated(new_hashes) if new_repeats else set()) | (_duplicated(old_hashes) if old_repeats else set())
    in_both = repeated.intersection(old_hashes).intersection(new_hashes) if repeated else set()
    if in_both:
        with open_new() as new_file:
            _spool(new_file, None, new_hashes, in_both, added)
        with open_old() as old_file:
            _spool(old_file, old_offsets, old_hashes, in_both - old_left, removed)
    return len(old_hashes), len(new_hashes), old_repeats


def _unique_in_both(
    new_keys: _KeyHashes, removed: _Spool, added: _Spool, old_positions: list[int], new_positions: list[int]
) -> bool:
    """Unique in the new file: its key hashes are distinct. Unique in the old one, whose keys were not all
    computed: an old record is either one the new file has byte for byte (its key is a new key that no added
    record has) or a removed one; the removed ones' keys must be distinct and none the key of a kept record."""
    new_set = new_keys.distinct()
    if new_set is None:
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
