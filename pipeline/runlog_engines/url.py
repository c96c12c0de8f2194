"""The run-log URL: which engine, where, and the password kept out of everything that is shown or sent.

    ""                                    SQLite at <data_dir>/runlog.sqlite
    sqlite:///absolute/path.sqlite        SQLite elsewhere
    postgresql://user@host:port/dbname    PostgreSQL (password from the URL, PGPASSWORD or ~/.pgpass)

A password written in the URL is taken out where the URL is read and kept in this process only; the URL that
travels with the tasks, and every message, carries none. A process that never saw it (a spawned worker, an
assistant) finds it again through `PASSWORD_SOURCES` (its own luigi.cfg), or libpq finds it in PGPASSWORD or
~/.pgpass.
"""

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
_PASSWORDS: dict[str, str] = {}  # URL without password -> password, for this process
PASSWORD_SOURCES: list[Callable[[], str]] = []  # other URLs this process may know a password from


class RunLogUrlError(ValueError):
    """A run-log URL this release cannot use."""


def engine(url: str) -> str:
    scheme = urlsplit(url).scheme.lower() if url else ""
    if scheme in ("", "sqlite"):
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        return "postgresql"
    raise RunLogUrlError(
        f"run log URL {_without_password(urlsplit(url))!r}: unknown scheme {scheme!r}; use sqlite:///path or postgresql://user@host/db"
    )


def sqlite_path(url: str, default: Path) -> Path:
    if not url:
        return Path(default)
    path = unquote(urlsplit(url).path)
    if re.match(r"/[A-Za-z]:", path):  # sqlite:///C:/cms/runlog.sqlite
        path = path[1:]
    if not path or not Path(path).is_absolute():
        raise RunLogUrlError(f"run log URL {url!r}: give an absolute path, as in sqlite:///srv/cms/runlog.sqlite")
    return Path(path)


def _without_password(parts: SplitResult) -> str:
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}"
    return parts._replace(netloc=netloc).geturl()


def public(url: str) -> str:
    """The URL as it may be shown, sent and stored: without its password, which this process remembers."""
    if not url or engine(url) == "sqlite":  # no password; and urlunsplit would drop a slash of sqlite:////abs
        return url
    parts = urlsplit(url)
    shown = _without_password(parts)
    if parts.password:
        _PASSWORDS[shown] = unquote(parts.password)
    return shown


def password(url: str) -> str | None:
    """The password this process knows for a public URL, if any (else libpq looks in PGPASSWORD, ~/.pgpass)."""
    if url not in _PASSWORDS:
        for source in PASSWORD_SOURCES:
            public(source())  # remembers the password of a URL given in the configuration
    return _PASSWORDS.get(url)


def where(url: str) -> str:
    """host:port/dbname, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/') or parts.username or ''}"


def redact(text: str, url: str) -> str:
    """A message from the driver, with the password cut out should it ever contain it."""
    secret = password(url)
    return text.replace(secret, "***") if secret else text
