"""Column names to snake_case: the rules the README documents, as plain functions."""

import re
import unicodedata

# Apostrophes and quote marks vanish so that "Patients’" and "Patients'" agree.
_QUOTE_MARKS = dict.fromkeys(map(ord, "'\"’‘ʼ`´“”„‟′″"), None)
# Letters that do not decompose into ASCII plus accents under NFKD.
_LETTERS = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "ae",
        "œ": "oe",
        "Œ": "oe",
        "ø": "o",
        "Ø": "o",
        "đ": "d",
        "Đ": "d",
        "ł": "l",
        "Ł": "l",
        "þ": "th",
        "Þ": "th",
        "ð": "d",
        "Ð": "d",
    }
)
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def snake_case(name: str) -> str:
    """One column name in snake_case; may be empty (see `normalize_header`)."""
    text = unicodedata.normalize("NFKC", name).translate(_QUOTE_MARKS)
    text = text.replace("%", " percent ").replace("#", " number ").translate(_LETTERS)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _NOT_ALNUM.sub("_", text.casefold()).strip("_")


def normalize_header(names: list[str]) -> list[str]:
    """snake_case every name; empty ones become column_<position>; repeats get _2, _3, ... unused elsewhere."""
    bases = [snake_case(n) or f"column_{i}" for i, n in enumerate(names, start=1)]
    taken = set(bases)
    # Per base, the suffix to try next: every lower one is a header name or went to this base already (another
    # base's "<b>_<n>" never spells "<base>_<m>"), so the search resumes there and the header costs linear time.
    next_suffix: dict[str, int] = {}
    result = []
    for base in bases:
        if base not in next_suffix:
            next_suffix[base] = 2
            result.append(base)
            continue
        suffix = next_suffix[base]
        while f"{base}_{suffix}" in taken:
            suffix += 1
        name = f"{base}_{suffix}"
        taken.add(name)
        next_suffix[base] = suffix + 1
        result.append(name)
    return result
