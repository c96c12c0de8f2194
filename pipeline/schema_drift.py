"""Schema drift: which earlier version a new one replaces, and how its normalized header changed.

Rules (docs/data.md repeats them for users):
- A version is compared with the newest finished version of the same distribution: the same file name, or,
  when the file was renamed on re-upload, the same position among the dataset's CSV distributions. A file the
  catalog lists beside it now is never its predecessor, so Part_A.csv is never compared with Part_B.csv.
- A removed and an added column at the same position count as renamed only with evidence: both neighbours are
  unchanged, or the two names are alike. Anything else is reported as removed and added.
"""

from difflib import SequenceMatcher

from pipeline.catalog import file_name

SIMILAR = 0.6  # difflib ratio from which two names at the same position read as one renamed column
LISTED = 5  # names spelled out per kind before the rest is counted


def previous_version(url: str, position: int | None, siblings: set[str], candidates: list[dict]) -> dict | None:
    """The candidate (dataset's other finished versions, newest first, with download_url and position) that
    `url` replaces, or None."""
    beside = {file_name(s) for s in siblings}
    others = [c for c in candidates if c["download_url"] not in siblings and file_name(c["download_url"]) not in beside]
    name = file_name(url)
    same_name = [c for c in others if file_name(c["download_url"]) == name]
    same_place = [c for c in others if position is not None and c["position"] == position]
    return next(iter(same_name or same_place), None)


def _renamed(old: list[str], new: list[str], i: int) -> bool:
    before = i == 0 or old[i - 1] == new[i - 1]
    after = i + 1 == len(old) == len(new) or (i + 1 < min(len(old), len(new)) and old[i + 1] == new[i + 1])
    return (before and after) or SequenceMatcher(None, old[i], new[i]).ratio() >= SIMILAR


def diff_columns(old: list[str], new: list[str]) -> dict | None:
    """Added, removed, renamed and moved columns; None when the header is the same."""
    if old == new:
        return None
    old_set, new_set = set(old), set(new)
    added = [c for c in new if c not in old_set]
    removed = [c for c in old if c not in new_set]
    renamed = [
        {"position": i + 1, "from": before, "to": after}
        for i, (before, after) in enumerate(zip(old, new, strict=False))
        if before not in new_set and after not in old_set and _renamed(old, new, i)
    ]
    added = [c for c in added if c not in {r["to"] for r in renamed}]
    removed = [c for c in removed if c not in {r["from"] for r in renamed}]
    common_old = [c for c in old if c in new_set]
    common_new = [c for c in new if c in old_set]
    # Columns outside the longest common ordering are the ones that moved.
    matcher = SequenceMatcher(None, common_old, common_new, autojunk=False)
    stayed = {c for block in matcher.get_matching_blocks() for c in common_new[block.b : block.b + block.size]}
    moved = [c for c in common_new if c not in stayed]
    return {"added": added, "removed": removed, "renamed": renamed, "moved": moved}


def _names(kind: str, names: list[str]) -> str:
    if len(names) <= LISTED:
        return f"{kind} {', '.join(names)}"
    return f"{len(names)} {kind} ({', '.join(names[:LISTED])} and {len(names) - LISTED} more)"


def describe(change: dict) -> str:
    parts = [_names(kind, change[kind]) for kind in ("added", "removed") if change[kind]]
    if change["renamed"]:
        parts.append("renamed " + ", ".join(f"{r['from']} -> {r['to']}" for r in change["renamed"]))
    if change["moved"]:
        parts.append(_names("moved", change["moved"]))
    return "; ".join(parts)
