"""The run log's migration steps as single statements, and the refusal of a schema newer than this release."""

import re

_COMMENT = re.compile(r"--[^\n]*")
ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


class SchemaTooNew(Exception):
    def __init__(self, found: int, known: int):
        super().__init__(found, known)
        self.found, self.known = found, known

    def __str__(self) -> str:
        return f"run log schema {self.found} is newer than this release knows ({self.known}); upgrade the pipeline"


def statements(step: str) -> list[str]:
    return [s.strip() for s in _COMMENT.sub("", step).split(";") if s.strip()]


def check_version(found: int, known: int) -> None:
    if found > known:
        raise SchemaTooNew(found, known)
