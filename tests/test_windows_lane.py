"""The Windows lane: the project's tests on Windows CPython 3.13 (the official embeddable build, under Wine;
tests/windows_env.py builds it from PyPI). It runs the fast set (`-m "not integration"`) and the Windows set
(tests/test_windows.py: the real `luigi.exe`, end to end). Every test of the Windows set must run there, not skip.

Without Wine this skips with the reason; on CI (CI=true) it fails instead, since `.ci/run` installs Wine."""

import os
import re
import shutil
import sys
import time

import pytest

from tests import test_windows
from tests.windows_env import ROOT, build, windows_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="runs Windows from Linux; on Windows run pytest itself"),
]
SELECTION = ["-m", "not integration or windows"]


def _wine_or_skip() -> None:
    if shutil.which("wine") is None:
        reason = "Wine is not installed (apt-get install wine wine64)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Windows lane must run on CI: {reason}")
        pytest.skip(reason)


def test_the_windows_lane_passes_with_every_windows_test_run(tmp_path):
    _wine_or_skip()
    env = build()
    started = time.monotonic()
    result = env.run(
        [
            str(env.python),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-v",  # a line per test with its outcome (the junit report would ask platform.node(), which
            "-rfEs",  # crashes under Wine 8)
            *SELECTION,
            f"--basetemp={windows_path(tmp_path / 'base')}",
        ],
        cwd=ROOT,
        timeout=3000,
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    failures = output[output.find("= FAILURES =") :] if "= FAILURES =" in output else output[-20000:]
    print(failures[-30000:], f"\nWindows lane: {seconds:.0f} s", sep="\n")
    assert result.returncode == 0, failures[-30000:]
    [closing] = [line for line in result.stdout.splitlines() if re.fullmatch(r"=* ?\d+ passed.* in [\d.]+s.*", line)]
    assert "failed" not in closing and "error" not in closing, closing
    outcomes = re.findall(r"^tests[/\\]test_windows\.py::(\w+) (PASSED|FAILED|SKIPPED|ERROR)", output, re.M)
    windows_set = dict(outcomes)
    expected = {name for name in dir(test_windows) if name.startswith("test_")}
    assert windows_set == dict.fromkeys(expected, "PASSED"), windows_set  # every one ran there, and passed
