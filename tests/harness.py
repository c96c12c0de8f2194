"""A loopback CMS site (catalog + files on a real HTTP server) and helpers to run the real Luigi graph on it."""

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import luigi
import luigi.configuration

from pipeline import HospitalsDaily, layout
from pipeline.runlog_engines import engine_for
from tests.fixtures import item, resource_path
from tests.loopback_server import LoopbackServer

CATALOG_PATH = "/provider-data/api/1/metastore/schemas/dataset/items"
PROJECT_CFG = Path(__file__).resolve().parent.parent / "luigi.cfg"
COMMAND = ["luigi", "--module", "pipeline", "HospitalsDaily", "--workers", "8"]  # as the README has it


class Site:
    """Publishes DKAN items and their CSV files on a LoopbackServer, the way data.cms.gov lays them out."""

    def __init__(self, server: LoopbackServer):
        self.server = server
        self.items: dict[str, dict] = {}
        self.extra: list = []

    @property
    def metastore_url(self) -> str:
        return self.server.base_url + CATALOG_PATH

    def dataset(
        self,
        identifier: str,
        modified: str,
        files: dict[str, bytes],
        *,
        upload: int = 1700000000,
        theme=("Hospitals",),
        title: str | None = None,
        serve: bool = True,
    ) -> list[str]:
        """(Re)publish a dataset: `files` maps file names to bytes; returns the download paths."""
        paths = [resource_path(identifier, upload, name) for name in files]
        self.items[identifier] = item(
            identifier, modified, [self.server.base_url + p for p in paths], title=title, theme=theme
        )
        if serve:
            for path, body in zip(paths, files.values(), strict=True):
                self.server.add(path, body, last_modified=upload + 300)
        self.publish()
        return paths

    def retire(self, identifier: str) -> None:
        self.items.pop(identifier)
        self.publish()

    def publish(self) -> None:
        body = json.dumps([*self.items.values(), *self.extra]).encode()
        self.server.add(CATALOG_PATH, body, content_type="application/json")


def run_daily(site: Site, data_dir: Path | str, workers: int = 2, **params) -> tuple[bool, dict | None]:
    """One HospitalsDaily run through luigi.build; returns (success, run report or None)."""
    run_id = params.pop("run_id", uuid.uuid4().hex[:12])
    task = HospitalsDaily(data_dir=str(data_dir), run_id=run_id, metastore_url=site.metastore_url, **params)
    ok = luigi.build([task], local_scheduler=True, workers=workers, log_level="WARNING")
    return ok, task.store.read_json(layout.report(run_id))[0]


def query(data_dir: Path, sql: str, *args) -> list[tuple]:
    """SQL on the run log the runs use: `[runlog] url` as a test set it (tests/conftest.py: runlog_engine),
    else data_dir's runlog.sqlite."""
    url = luigi.configuration.get_config().get("runlog", "url", "")
    with engine_for(url, data_dir / "runlog.sqlite").connection() as db:
        return [tuple(row) for row in db.execute(sql, args).fetchall()]


def by_identifier(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for entry in report["datasets"]:
        found.setdefault(entry["identifier"], []).append(entry)
    return found


def project_cfg_lines(site: Site, **values: str) -> list[str]:
    """The shipped luigi.cfg's lines, pointed at the loopback catalog and at the run log and scratch folder a
    test chose (tests/conftest.py: runlog_engine, data), with `values` for other keys it sets."""
    config = luigi.configuration.get_config()
    values = {
        "metastore_url": site.metastore_url,
        "url": config.get("runlog", "url", ""),
        "scratch_dir": config.get("storage", "scratch_dir", ""),
        **values,
    }
    return [
        f"{key} = {values[key]}" if (key := line.split("=", 1)[0].strip()) in values and "=" in line else line
        for line in PROJECT_CFG.read_text(encoding="utf-8").splitlines()
    ]


def write_project_cfg(site: Site, folder: Path, **values: str) -> None:
    """The shipped luigi.cfg, pointed at the loopback catalog, as `folder`/luigi.cfg."""
    assert any(
        line.startswith("metastore_url = https://data.cms.gov/")
        for line in PROJECT_CFG.read_text(encoding="utf-8").splitlines()
    )
    (folder / "luigi.cfg").write_text("\n".join(project_cfg_lines(site, **values)) + "\n", encoding="utf-8")


def console_script(name: str) -> str:
    """A console script installed beside this Python (luigi, luigid), as a user's venv has it."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"the {name} console script is installed beside {sys.executable}"
    return found


def command(*extra: str) -> list[str]:
    return [console_script("luigi"), *COMMAND[1:], *extra]


def run_command(folder: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*extra), cwd=folder, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
