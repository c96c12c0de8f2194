"""Reading the README and docs/ for tests/test_docs.py: marked blocks, their commands and tables, and a copy of
the project folder where the commands run exactly as written.

A block is marked by an HTML comment on the line before it, `<!-- doc-test: NAME -->`; the block is the fenced
code block, table or list that follows (indented blocks inside list items count too).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import PROJECT_CFG, Site, write_project_cfg
from tests.luigid_support import loopback_env

ROOT = PROJECT_CFG.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^\s*<!-- doc-test: ([a-z0-9-]+) -->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
# Fenced blocks that show a command or a file must be marked; `text` blocks (diagrams, sample output) may be.
MUST_BE_MARKED = {"sh", "bash", "bat", "cmd", "cron", "ini", "json", "console", "powershell", ""}
TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the marker
    name: str
    info: str  # the fence's info string, or "table" / "list"
    text: str  # the content, without the fences, dedented

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _dedent(lines: list[str], indent: str) -> str:
    return "\n".join(line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines)


def _fence_end(lines: list[str], start: int) -> int:
    for end in range(start + 1, len(lines)):
        if lines[end].strip() == "```":
            return end
    raise ValueError(f"unclosed fence at line {start + 1}")


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """(marked blocks, places of fenced blocks that should be marked and are not)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, unmarked = [], []
    i, pending = 0, None  # pending: (marker line, name) waiting for its block
    while i < len(lines):
        line = lines[i]
        if marker := MARKER.match(line):
            pending = (i + 1, marker[1])
            i += 1
            continue
        if fence := FENCE.match(line):
            end = _fence_end(lines, i)
            if pending:
                blocks.append(Block(path, pending[0], pending[1], fence[2], _dedent(lines[i + 1 : end], fence[1])))
            elif fence[2] in MUST_BE_MARKED:
                unmarked.append(f"{path.relative_to(ROOT)}:{i + 1} (```{fence[2]})")
            pending, i = None, end + 1
            continue
        if pending and line.strip():
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            kind = "table" if line.lstrip().startswith("|") else "list"
            blocks.append(Block(path, pending[0], pending[1], kind, "\n".join(lines[i:end])))
            pending, i = None, end
            continue
        i += 1
    return blocks, unmarked


def all_blocks() -> list[Block]:
    return [block for path in DOC_FILES for block in parse(path)[0]]


def blocks(name: str) -> list[Block]:
    found = [block for block in all_blocks() if block.name == name]
    assert found, f"no block marked doc-test: {name}"
    return found


def block(name: str) -> Block:
    [found] = blocks(name)
    return found


def commands(text: str) -> list[str]:
    """Logical lines of a shell block: backslash continuations joined (as bash joins them), blank lines dropped."""
    out, parts = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        if command := " ".join(part for part in [*parts, stripped] if part):
            out.append(command)
        parts = []
    return out


def table(text: str) -> list[list[str]]:
    """Body rows of a markdown table, as stripped cells."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return rows[2:]


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


# -- output shapes -------------------------------------------------------------------------------------------

_SHAPES = [
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"(?:/[^\s/]+)+/data/"), "<project>/data/"),  # the data folder is absolute in what the job prints
    (re.compile(r"\b\d{8}-\d{6}-\d{3}\b"), "<run>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "<date>"),
    (re.compile(r"\b[a-z0-9]{4}-[a-z0-9]{4}\b"), "<id>"),
    (re.compile(r"\d[\d,]*(?:\.\d+)?"), "<n>"),
]


def shape(line: str) -> str:
    """A console line with its run ids, URLs, dates, identifiers and numbers masked."""
    for pattern, mask in _SHAPES:
        line = pattern.sub(mask, line)
    return line.rstrip()


# -- the layout trees ----------------------------------------------------------------------------------------

_TREE_LINE = re.compile(r"^(\s*)(\S.*?)(?:\s{2,}.*)?$")


def layout_patterns(text: str) -> dict[str, re.Pattern]:
    """Each file path of a layout tree (`<placeholders>` allowed), with a regex for real relative paths."""
    stack: list[tuple[int, str]] = []
    found = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _TREE_LINE.match(line)
        assert match, line
        indent, name = len(match[1]), match[2]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        full = (stack[-1][1] if stack else "") + name
        if name.endswith("/"):
            stack.append((indent, full))
            continue
        regex = "".join(
            "[^/]+" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]+>)", full) if part
        )
        found[full] = re.compile(regex + r"\Z")
    return found


# -- a project folder where documented commands run -----------------------------------------------------------


class Project:
    """A folder laid out as a user's clone: the shipped luigi.cfg pointed at `site`, and `.venv` (a link to the
    venv running the tests). Commands run through bash, exactly as written, from this folder. TMPDIR is the
    project's own, so the job's run lock (a lock file under the temp folder, keyed on the data folder) is the
    project's own too."""

    def __init__(self, folder: Path, site: Site | None):
        if sys.platform == "win32":
            pytest.skip("runs the documented POSIX commands through bash; tests/test_windows.py runs the Windows ones")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        venv = Path(sys.executable).parent.parent
        assert (venv / "bin" / "luigi").exists(), f"the tests run from a venv with luigi: {venv}"
        (folder / ".venv").symlink_to(venv, target_is_directory=True)
        if site is not None:
            write_project_cfg(site, folder)
        self.tmp = folder.parent / f"{folder.name}-tmp"
        self.tmp.mkdir(exist_ok=True)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def env(self) -> dict[str, str]:
        env = loopback_env()
        env["TMPDIR"] = str(self.tmp)
        return env

    def run(self, command: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.folder,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, command: str, log_name: str) -> tuple[subprocess.Popen, Path]:
        log = self.folder.parent / log_name
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.folder,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return proc, log

    @staticmethod
    def stop(proc: subprocess.Popen) -> int:
        """SIGTERM to the process group of a command started by `start`, then SIGKILL if it lingers."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        proc.wait(timeout=15)
        return proc.returncode
