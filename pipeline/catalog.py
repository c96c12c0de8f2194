"""Reading the DKAN metastore answer: which CSV distributions belong to the theme, and which items are broken."""

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class CatalogError(ValueError):
    """The metastore answer as a whole is unusable; nothing may be downloaded."""


@dataclass(frozen=True)
class CsvVersion:
    """One CSV distribution of one dataset version: the unit that is downloaded and normalized."""

    identifier: str
    title: str
    modified: str
    url: str
    theme: str
    released: str = ""
    described_by: str = ""
    revision: str = ""  # the Last-Modified of a file replaced in place under the same URL (verify mode)
    position: int = 1  # its place among the item's CSV distributions, from 1
    distributions: int = 1  # how many CSV distributions the item has
    expected_bytes: int = 0  # its distribution's size last time, if known: big files start first

    @property
    def key(self) -> "VersionKey":
        return VersionKey(self.identifier, self.modified, self.url)


@dataclass(frozen=True, order=True)
class VersionKey:
    """What names a dataset version everywhere: the run log's primary key, the targets' folder."""

    identifier: str
    modified: str
    url: str


def file_name(url: str) -> str:
    """The file name at the end of a download URL (the one rule for it)."""
    return PurePosixPath(unquote(urlsplit(url).path)).name


@dataclass(frozen=True)
class InvalidItem:
    identifier: str
    title: str
    error: str


@dataclass(frozen=True)
class Catalog:
    versions: list[CsvVersion]
    invalid: list[InvalidItem]
    items_total: int
    themes: dict[str, int] = field(default_factory=dict)  # every theme in the answer, with its item count

    def to_json(self) -> dict:
        return {
            "items_total": self.items_total,
            "versions": [asdict(v) for v in self.versions],
            "invalid": [asdict(i) for i in self.invalid],
            "themes": self.themes,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Catalog":
        return cls(
            [CsvVersion(**v) for v in data["versions"]],
            [InvalidItem(**i) for i in data["invalid"]],
            data["items_total"],
            data.get("themes", {}),
        )

    def no_match_message(self, theme: str) -> str:
        """Why nothing was selected: the first thing a user pointing the job at another DKAN site sees."""
        known = ", ".join(f"{name!r} ({count})" for name, count in sorted(self.themes.items()))
        return f"no dataset has the theme {theme!r} among {self.items_total} items; " + (
            f"themes present: {known}" if known else "no item has a theme"
        )


def _unwrap(value):
    """DKAN's reference mode wraps values as {"identifier": ..., "data": ...}."""
    if isinstance(value, dict) and "data" in value and "identifier" in value:
        return value["data"]
    return value


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _themes(item: dict) -> list[str]:
    return [t for t in map(_unwrap, _as_list(item.get("theme"))) if isinstance(t, str)]


def _is_csv(dist: dict, url: str) -> bool:
    media_type = dist.get("mediaType")
    if media_type is None:
        return urlsplit(url).path.lower().endswith(".csv")
    return isinstance(media_type, str) and media_type.split(";")[0].strip().lower() == "text/csv"


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _valid_modified(value: str) -> bool:
    """A real calendar date (YYYY-MM-DD) or ISO date-time: 2025-13-45 is not a version."""
    try:
        (date if _DATE.fullmatch(value) else datetime).fromisoformat(value)
    except ValueError:
        return False
    return True


def _csv_versions(item: dict, theme: str) -> list[CsvVersion]:
    """The item's CSV versions; raises ValueError naming what is missing."""
    identifier, modified = item.get("identifier"), item.get("modified")
    if not isinstance(identifier, str) or not identifier.strip():
        raise ValueError("missing identifier")
    if not isinstance(modified, str) or not _valid_modified(modified):
        raise ValueError(f"missing or malformed 'modified' ({modified!r}): expected a real date, YYYY-MM-DD")
    title = _text(item, "title")
    distributions = _as_list(item.get("distribution"))
    if not distributions:
        raise ValueError("no distribution")
    # DCAT puts the data dictionary link on the distribution; accept it on the dataset too.
    described_by = _text(item, "describedBy")
    versions: list[CsvVersion] = []
    for dist in map(_unwrap, distributions):
        if not isinstance(dist, dict):
            raise ValueError("distribution is not an object")
        url = dist.get("downloadURL")
        if not isinstance(url, str) or not url.strip():
            raise ValueError("distribution without downloadURL")
        if not _is_csv(dist, url):
            continue
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ValueError(f"download URL is not http(s): {url!r}")
        versions.append(
            CsvVersion(
                identifier,
                title,
                modified,
                url,
                theme,
                released=_text(item, "released"),
                described_by=_text(dist, "describedBy") or described_by,
                position=len(versions) + 1,
            )
        )
    if not versions:
        raise ValueError("no CSV distribution")
    return [replace(v, distributions=len(versions)) for v in versions]


def parse_catalog(payload: bytes, theme: str) -> Catalog:
    """Every CSV distribution of the items whose theme list contains `theme` (exact match)."""
    try:
        items = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogError(f"metastore answer is not a JSON array: it is not JSON ({exc})") from None
    if not isinstance(items, list):
        raise CatalogError(f"metastore answer is not a JSON array but a {type(items).__name__}")
    versions: list[CsvVersion] = []
    invalid: list[InvalidItem] = []
    seen: set[tuple[str, str]] = set()
    themes: Counter[str] = Counter()
    for position, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            invalid.append(InvalidItem("", "", f"item {position} is not an object"))
            continue
        themes.update(set(_themes(item)))
        if theme not in _themes(item):
            continue
        identifier, title = _text(item, "identifier"), _text(item, "title")
        try:
            found = _csv_versions(item, theme)
        except ValueError as exc:
            invalid.append(InvalidItem(identifier, title, f"item {position}: {exc}"))
            continue
        for version in found:
            key = (version.identifier, version.url)
            if key in seen:
                invalid.append(InvalidItem(identifier, title, f"item {position}: duplicate of an earlier item"))
                continue
            seen.add(key)
            versions.append(version)
    return Catalog(versions, invalid, len(items), dict(themes))
