"""luigid's web UI, seen in a real headless Chromium during and after a shared run: the task list, the
workers page and the run's progress line. Skipped where Chromium is not installed (Debian: apt-get install
chromium). Set UI_SCREENSHOTS=<folder> to keep the screenshots."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.luigid_support import finish, stop_client
from tests.test_shared_run import deployed, host_folder, serve, start_shared_run

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a machine without network: no background connections, no sandbox as root, a fresh profile.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--virtual-time-budget=4000",
]


def counts(dom: str) -> dict[str, int]:
    """The numbers in the UI's status boxes (PENDING, RUNNING, DONE, FAILED, ...), as rendered."""
    return {
        status: int(number)
        for status, number in re.findall(
            r'data-category="(\w+)"[^>]*>.*?<span class="info-box-number">(\d+)</span>', dom, re.S
        )
    }


def browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot of it): what a person would see."""
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    if screenshot:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=60, check=True)
        assert screenshot.stat().st_size > 10_000
    return subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.skipif(not CHROMIUM, reason="needs Chromium (apt-get install chromium)")
def test_the_ui_shows_the_run_as_it_goes_and_when_it_is_done(tmp_path):
    shots = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with deployed(tmp_path, latency=1.0) as (luigid, site):
        serve(site, 12)
        data_dir = tmp_path / "data"
        folder = host_folder(tmp_path, "host-a", site, data_dir, luigid)
        job, log = start_shared_run(folder, "ui", workers=2)
        tasks_page = f"{luigid.url}/static/visualiser/index.html#tab=tasks"
        workers_page = f"{luigid.url}/static/visualiser/index.html#tab=workers"
        try:
            deadline = time.monotonic() + 60
            while luigid.families("DONE").get("NormalizeCsv", 0) < 2:
                assert time.monotonic() < deadline and job.poll() is None, log.read_text(encoding="utf-8")
                time.sleep(0.1)
            mid = browse(tasks_page, tmp_path / "profile", shots / "tasks-mid-run.png")
            mid_workers = browse(workers_page, tmp_path / "profile", shots / "workers-mid-run.png")
            assert finish(job, timeout=120) == 0, log.read_text(encoding="utf-8")
        finally:
            stop_client(job)
        after = browse(tasks_page, tmp_path / "profile", shots / "tasks-after-run.png")
        [wrapper] = [t for t in luigid.tasks().values() if t["name"] == "HospitalsDaily"]
    during, done = counts(mid), counts(after)
    assert during["PENDING"] > 0 and during["DONE"] >= 3 and during["FAILED"] == 0, during  # FetchCatalog + 2
    assert "Worker(salt=" in mid_workers and "Root Task:" in mid_workers and "HospitalsDaily(" in mid_workers
    assert done["DONE"] == 26 and done["PENDING"] == done["RUNNING"] == done["FAILED"] == 0, done  # 1 + 1 + 2 x 12
    assert wrapper["status_message"] == "12 done, 0 failed of 12 CSV versions"
