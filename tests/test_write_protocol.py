"""Every file the job keeps reaches its name durably: the real command, traced with strace, syncs each file's data
before renaming it into place and syncs its folder after, in every process that writes."""

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, command, console_script, write_project_cfg

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("strace") is None and not os.environ.get("CI"), reason="strace is not installed (CI has it)"
    ),
]

_CALL = re.compile(r"^(\d+) +(fsync|fdatasync|rename|renameat|renameat2)\((.*?)(?:\) += |\s*<unfinished)")
_FD_PATH = re.compile(r"^\d+<(.*)>$")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def trace(folder: Path, *args: str, argv: list[str] | None = None) -> list[tuple[int, str, tuple[str, ...]]]:
    """(pid, call, paths) of every sync and rename the command made, in order; a call that fails is an error."""
    log = folder / f"strace-{len(list(folder.glob('strace-*')))}.txt"
    done = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-e", "signal=none", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
         "-o", str(log), *(argv or command()), *args],
        cwd=folder, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    calls = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not (match := _CALL.match(line)):
            continue
        pid, call, arguments = int(match[1]), match[2], match[3]
        if call.startswith("rename"):
            paths = tuple(_QUOTED.findall(arguments))
        else:
            fd_path = _FD_PATH.match(arguments.strip())
            paths = (fd_path[1],) if fd_path else ()
        calls.append((pid, call, paths))
    return calls


def check_protocol(calls, data: Path) -> set[str]:
    """Asserts the order for each rename into the data folder; returns the final names (relative) it saw."""
    by_pid = defaultdict(list)
    for pid, call, paths in calls:
        by_pid[pid].append((call, paths))
    finals = set()
    for steps in by_pid.values():
        for i, (call, paths) in enumerate(steps):
            if not call.startswith("rename"):
                continue
            temp, final = (str((data.parent / p).resolve()) if not os.path.isabs(p) else p for p in paths)
            if not final.startswith(str(data)):
                continue  # Luigi's own files (none today), never the job's
            synced = {p for c, ps in steps[:i] if c in ("fsync", "fdatasync") for p in ps}
            assert temp in synced, f"{final}: renamed into place before its data was synced"
            later = {p for c, ps in steps[i + 1 :] if c == "fsync" for p in ps}
            assert str(Path(final).parent) in later, f"{final}: its folder was not synced after the rename"
            finals.add(Path(final).relative_to(data).as_posix())
    return finals


def test_every_kept_file_is_synced_then_renamed_then_its_folder_synced(site: Site, tmp_path):
    site.dataset("48nr-hqxx", "2025-04-08", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(50, 5))})
    site.dataset("cp-1252", "2025-04-08", {"Old.csv": '"Café","Zoë"\r\n"1","2"\r\n'.encode("cp1252")})
    write_project_cfg(site, tmp_path)
    data = (tmp_path / "data").resolve()
    calls = trace(tmp_path, "--run-id", "first")
    site.dataset("48nr-hqxx", "2025-05-01", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(9, 5))}, upload=2)
    calls += trace(tmp_path, "--run-id", "second")
    calls += trace(
        tmp_path, "--run-id", "third", argv=[console_script("luigi"), "--module", "pipeline", "HospitalsPlan"]
    )
    finals = check_protocol(calls, data)
    kinds = {re.sub(r"^datasets/[^/]+/[^/]+/", "<version>/", name) for name in finals}
    kinds = {re.sub(r"^(reports/(plan-)?|runs/)(first|second|third)", r"\1<run>", kind) for kind in kinds}
    assert kinds >= {
        "<version>/source.csv",
        "<version>/source.scan.json",
        "<version>/normalized.csv",  # both ways: the staged copy moved in (UTF-8), the rewrite (cp1252)
        "<version>/header_map.json",
        "latest/48nr-hqxx.csv",
        "latest/cp-1252.csv",
        "latest/latest.json",
        "latest/index.csv",
        "reports/<run>.json",
        "runs/<run>/catalog.json",
        "reports/plan-<run>.json",
    }, kinds
