"""Schema drift: how a dataset's normalized header changed from its previous version."""

from difflib import SequenceMatcher


def diff_columns(old: list[str], new: list[str]) -> dict | None:
    """Added, removed, renamed (a removed and an added column at the same position) and moved columns;
    None when the header is the same."""
    if old == new:
        return None
    old_set, new_set = set(old), set(new)
    added = [c for c in new if c not in old_set]
    removed = [c for c in old if c not in new_set]
    renamed = []
    for position, (before, after) in enumerate(zip(old, new, strict=False)):
        if before in removed and after in added:
            renamed.append({"position": position + 1, "from": before, "to": after})
    added = [c for c in added if c not in {r["to"] for r in renamed}]
    removed = [c for c in removed if c not in {r["from"] for r in renamed}]
    common_old = [c for c in old if c in new_set]
    common_new = [c for c in new if c in old_set]
    # Columns outside the longest common ordering are the ones that moved.
    matcher = SequenceMatcher(None, common_old, common_new, autojunk=False)
    stayed = {c for block in matcher.get_matching_blocks() for c in common_new[block.b:block.b + block.size]}
    moved = [c for c in common_new if c not in stayed]
    return {"added": added, "removed": removed, "renamed": renamed, "moved": moved}


def describe(change: dict) -> str:
    parts = []
    if change["added"]:
        parts.append(f"added {', '.join(change['added'])}")
    if change["removed"]:
        parts.append(f"removed {', '.join(change['removed'])}")
    if change["renamed"]:
        parts.append("renamed " + ", ".join(f"{r['from']} -> {r['to']}" for r in change["renamed"]))
    if change["moved"]:
        parts.append(f"moved {', '.join(change['moved'])}")
    return "; ".join(parts)
