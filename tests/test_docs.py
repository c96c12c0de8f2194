"""The README and docs/ say what is true: every marked block is run exactly as written or checked against the
code (tests/doc_commands.py reads them). Each test names the blocks it covers; a block without a test, a test
without its block, or a command or file block without a marker fails."""

from __future__ import annotations

import argparse
import configparser
import csv
import dataclasses
import gzip
import importlib.util
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import latest, layout, run_lock
from pipeline import preflight as preflight_module
from pipeline.catalog import CsvVersion
from pipeline.dry_run import HospitalsPlan
from pipeline.header_rewrite import SourceScan, copy_normalized, rewrite_csv
from pipeline.http import DownloadError, HttpSettings, download
from pipeline.naming import normalize_header
from pipeline.runlog import RunLog
from pipeline.schema_drift import describe, diff_columns
from pipeline.settings import AnalyticsSettings, Retention
from pipeline.tasks import DownloadCsv, FetchCatalog, HospitalsDaily, NormalizeCsv
from tests.doc_commands import (
    DOC_FILES,
    ROOT,
    Project,
    all_blocks,
    block,
    blocks,
    code_spans,
    commands,
    layout_patterns,
    parse,
    shape,
    table,
)
from tests.fixtures import HEADER_IPF, HEADER_OAS_CAHPS, HEADER_UNQUOTED_LF, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site
from tests.loopback_server import LoopbackServer
from tests.luigid_support import Luigid, free_port
from tests.typed_support import needs_duckdb

COVERED: set[str] = set()
# The integration tests run the documented commands with bash, and stop what they start by process group.
runs_commands = [
    pytest.mark.integration,
    pytest.mark.skipif(os.name == "nt" or not shutil.which("bash"), reason="needs bash and POSIX"),
]


def runs(test):
    for mark in runs_commands:
        test = mark(test)
    return test


def covers(*names: str):
    COVERED.update(names)
    return lambda test: test


def daily() -> str:
    """The job's command, as the README runs it (its first shell line)."""
    return commands(block("daily-run").text)[0]


def commands_run_by_tests() -> set[str]:
    """Commands that the integration tests below run exactly as written, and that cron lines may use."""
    return {*commands(block("daily-run").text), *commands(block("verify").text), *commands(block("deep-check").text)}


def ci_parts() -> list[str]:
    """The commands of .ci/run, each `&&` part on its own, pip's -q left out."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    parts = [
        part.strip()
        for line in lines
        if line and not line.startswith(("#", "set ", "cd "))
        for part in line.split("&&")
    ]
    return [part.replace(" -q ", " ") for part in parts]


def luigi_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "luigi.cfg", encoding="utf-8")
    return parser


def commented_defaults() -> dict[str, str]:
    """`# key = value` lines of luigi.cfg: the defaults it shows commented out, as "[section] key" -> value."""
    found, section = {}, ""
    for line in (ROOT / "luigi.cfg").read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            section = match[1]
        elif match := re.match(r"^#\s*(\w+) = (.+)$", line):
            found[f"[{section}] {match[1]}"] = match[2].strip()
    return found


# -- every block has a test, every test its block ------------------------------------------------------------


def test_every_command_and_file_block_is_marked():
    unmarked = [place for path in DOC_FILES for place in parse(path)[1]]
    assert unmarked == [], "mark these with <!-- doc-test: NAME --> and give NAME a test in tests/test_docs.py"


def test_every_marked_block_has_a_test_and_every_test_its_block():
    in_docs = {b.name for b in all_blocks()}
    assert in_docs - COVERED == set(), "blocks that no test covers"
    assert COVERED - in_docs == set(), "tests whose block is gone"


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


# -- commands that cannot run here: their content is checked -------------------------------------------------


@covers("install-and-test", "ci-lines")
def test_the_test_and_lint_commands_are_what_ci_runs():
    ci = ci_parts()
    [install_and_test] = commands(block("install-and-test").text)
    for part in install_and_test.split(" && "):
        assert part in ci, part
    for command in commands(block("ci-lines").text):
        assert command in ci, command


@covers("install-and-run", "windows-install-and-run")
def test_the_install_and_run_command_installs_as_ci_does_and_runs_the_tested_command():
    [command] = commands(block("install-and-run").text)
    venv, install, run = command.split(" && ")
    assert venv in ci_parts()
    assert f"{install} -r requirements-dev.txt" in ci_parts()
    assert run == daily()
    [windows] = commands(block("windows-install-and-run").text)
    assert windows == command.replace("python3 -m venv", "py -m venv").replace(".venv/bin/", ".venv\\Scripts\\")


CRON = re.compile(r"^(?:\S+ ){5}cd (/\S+) && (.+?) >> (/\S+) 2>&1$")


@covers("cron-line", "verify-cron-line", "deep-check-cron-line")
def test_cron_lines_change_to_an_absolute_folder_and_run_a_tested_command():
    for name in ("cron-line", "verify-cron-line", "deep-check-cron-line"):
        [line] = commands(block(name).text)
        match = CRON.match(line)
        assert match, line
        assert match[2] in commands_run_by_tests(), match[2]
    shipped = ROOT / "deploy" / "crontab"
    if shipped.exists():  # the deployment files and the README give the same line
        lines = [line for line in shipped.read_text(encoding="utf-8").splitlines() if line and line[0] != "#"]
        assert lines == commands(block("cron-line").text)


@covers("task-scheduler")
def test_the_task_scheduler_action_runs_the_tested_command_from_the_project_folder():
    fields = dict(line.split(":", 1) for line in block("task-scheduler").text.splitlines())
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    start_in = fields["Start in"]
    assert re.match(r"^[A-Z]:\\", start_in)
    assert fields["Program/script"] == start_in + "\\.venv\\Scripts\\luigi.exe"
    assert f".venv/bin/luigi {fields['Add arguments']}" == daily()


@covers("exit-codes")
def test_the_exit_code_table_lists_the_codes_the_command_can_give():
    documented = {int(code) for row in table(block("exit-codes").text) for code in row[0].split(",")}
    retcodes = {int(value) for value in luigi_cfg()["retcode"].values()}
    preflight = {preflight_module.NO_CONFIG, preflight_module.RUNLOG_UNAVAILABLE, preflight_module.STORAGE_UNAVAILABLE}
    assert documented == {0} | preflight | retcodes


@covers("benchmark-args", "benchmark-changes", "benchmark-typed")
def test_benchmark_commands_are_accepted_by_their_scripts(monkeypatch):
    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args
    bench = [
        c
        for path in DOC_FILES
        for b in parse(path)[0]
        for c in commands(b.text)
        if c.startswith(".venv/bin/python benchmarks/")
    ]
    assert bench
    for command in bench:
        script, *args = command.split()[1:]
        spec = importlib.util.spec_from_file_location(f"doc_{Path(script).stem}", ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

        def parse_only(self, _args=None, namespace=None, args=args):
            original(self, args, namespace)  # exits 2 on an option the script does not know
            raise Parsed

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        with pytest.raises(Parsed):
            module.main()
        monkeypatch.undo()


# -- tables checked against the code -------------------------------------------------------------------------


@covers("settings-table")
def test_the_settings_table_has_every_setting_with_its_real_default():
    rows = {row[0]: row for row in table(block("settings-table").text)}
    cfg = luigi_cfg()
    shipped = {f"[{section}] {key}": value for section in cfg.sections() for key, value in cfg[section].items()}
    commented = commented_defaults()
    code = {f"[download] {f.name}": f.default for f in dataclasses.fields(HttpSettings) if f.name != "deadline"}
    code |= {f"[retention] {f.name}": f.default for f in dataclasses.fields(Retention)}
    code |= {f"[analytics] {f.name}": f.default for f in dataclasses.fields(AnalyticsSettings)}
    assert set(commented) <= set(code), "luigi.cfg shows only real settings commented out"
    task_settings = {
        f"[HospitalsDaily] {name}"
        for name, _ in HospitalsDaily.get_params()
        if name not in ("run_id", "settings", "runlog_url")
    }
    documented = {code_spans(key)[0] for key in rows if key != "–"}
    assert documented == set(shipped) | set(code) | task_settings

    def same(text: str, value) -> bool:
        return text == str(value).lower() if isinstance(value, bool) else type(value)(text) == value

    for key in documented:
        default = code_spans(rows[f"`{key}`"][2])[0]
        if key in code:
            assert same(default, code[key]) and same(commented.get(key, default), code[key]), key
        elif key in shipped and not shipped[key]:  # empty: the cell says what that means
            assert rows[f"`{key}`"][2].startswith("empty"), key
        elif key in shipped:
            assert default == shipped[key], key
        else:
            assert same(default, dict(HospitalsDaily.get_params())[key.split()[1]]._default), key
    assert any(code_spans(row[1])[0].startswith("--run-id") for row in rows.values())


@covers("snake-case-examples")
def test_the_snake_case_examples_are_what_the_rules_give():
    rows = table(block("snake-case-examples").text)
    assert len(rows) >= 8
    for original, normalized in rows:
        names = [
            name if name != "(empty)" else ""
            for name in [*code_spans(original), *(["(empty)"] if "(empty)" in original else [])]
        ]
        assert normalize_header(names) == code_spans(normalized), original


@covers("drift-examples")
def test_the_drift_examples_are_what_the_comparison_prints():
    for previous, new, printed in table(block("drift-examples").text):

        def header(cell: str) -> list[str]:
            text = code_spans(cell)[0]
            if match := re.search(r"(\w+)_1,…,\1_(\d+)", text):  # a long run of columns, written short
                run = ",".join(f"{match[1]}_{i}" for i in range(1, int(match[2]) + 1))
                text = text.replace(match[0], run)
            return text.split(",")

        assert describe(diff_columns(header(previous), header(new))) == code_spans(printed)[0]


@covers("latest-names")
def test_the_latest_names_are_what_the_catalog_gives():
    for identifier, urls, names in table(block("latest-names").text):
        [identifier] = code_spans(identifier)
        versions = [
            CsvVersion(
                identifier, "", "2025-04-08", "https://data.cms.gov/x" + url.lstrip("…"), "Hospitals", position=i
            )
            for i, url in enumerate(code_spans(urls), start=1)
        ]
        assert sorted(latest.latest_names(versions).values()) == sorted(code_spans(names))


@covers("runlog-tables")
def test_the_run_log_tables_and_columns_are_the_schema(tmp_path):
    RunLog(tmp_path / "runlog.sqlite")
    with sqlite3.connect(tmp_path / "runlog.sqlite") as db:
        schema = {
            name: [row[1] for row in db.execute(f"PRAGMA table_info({name})")]
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    documented = {}
    for name, _, columns in table(block("runlog-tables").text):
        documented[code_spans(name)[0]] = code_spans(re.sub(r"\([^)]*\)", "", columns))
    assert {name: sorted(cols) for name, cols in documented.items()} == {
        name: sorted(cols) for name, cols in schema.items()
    }


@covers("modules")
def test_every_module_is_listed_once():
    listed = re.findall(r"^- `([\w.]+\.py)`:", block("modules").text, flags=re.MULTILINE)
    assert sorted(listed) == sorted(p.name for p in (ROOT / "pipeline").glob("*.py"))
    packages = re.findall(r"^- `(\w+)/`:", block("modules").text, flags=re.MULTILINE)
    assert sorted(packages) == sorted(p.parent.name for p in (ROOT / "pipeline").glob("*/__init__.py"))


@covers("task-identity")
def test_the_documented_task_identity_is_the_tasks_parameters():
    documented: dict[bool, set[str]] = {True: set(), False: set()}
    for item in block("task-identity").text.split("\n- "):
        significant = item.lstrip("- ").startswith("Significant")
        documented[significant] |= set(code_spans(re.search(r"\*\*(.+?)\*\*", item)[1]))
    for task in (HospitalsDaily, FetchCatalog, DownloadCsv, NormalizeCsv, HospitalsPlan):
        for name, param in task.get_params():
            assert name in documented[param.significant], f"{task.__name__}.{name}"


# -- refused bytes: each message of the table from a body of its own ------------------------------------------

GOOD = csv_bytes(HEADER_OAS_CAHPS, quoted_rows(20, 5))
BODIES = {  # name: (body, content type, extra headers)
    "gzip": (gzip.compress(GOOD), "text/csv", {}),
    "zip": (b"PK\x03\x04\x14\x00\x00\x00" + GOOD, "text/csv", {}),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "text/csv", {}),
    "utf-16": (b"\xff\xfe" + GOOD.decode().encode("utf-16-le"), "text/csv", {}),
    "nul": (b'"id","name"\r\n1\x00,x\r\n', "text/csv", {}),
    "control": (b'"id","na\x01me"\r\n1,2\r\n', "text/csv", {}),
    "html": (b"<!DOCTYPE html><html><body>Maintenance</body></html>\n", "text/html", {}),
    "markup": (b"<html><body>Maintenance</body></html>\n", "text/csv", {}),
    "br": (GOOD, "text/csv", {"Content-Encoding": "br"}),
    "truncated gzip": (gzip.compress(GOOD)[:-12], "text/csv", {"Content-Encoding": "gzip"}),
    "empty": (b"", "text/csv", {}),
    "bare CR": (GOOD.replace(b"\r\n", b"\r"), "text/csv", {}),
    "no header": (b"\r\n1,2\r\n", "text/csv", {}),
}


def outcome(url: str, folder: Path) -> tuple[str, str] | None:
    """(stage, message) as DownloadCsv and NormalizeCsv would fail on this URL, or None."""
    scan, source = SourceScan(), folder / "source.csv"
    try:
        download(url, source, HttpSettings(retries=0, body_attempts=1), scan=scan)
    except (DownloadError, ValueError) as exc:
        return "download", str(exc)
    result = scan.result()
    try:
        with open(source, "rb") as src, open(folder / "normalized.csv", "w+b") as dst:
            copy_normalized(src, dst, result) if result else rewrite_csv(src, dst)
    except ValueError as exc:
        return "normalize", str(exc)
    return None


@pytest.mark.integration
@covers("refused-bytes")
def test_each_refused_body_gives_the_documented_message(tmp_path):
    documented = {(stage, code_spans(message)[0]) for _, stage, message in table(block("refused-bytes").text)}
    found = set()
    with LoopbackServer() as server:
        for name, (body, content_type, headers) in BODIES.items():
            path = f"/files/{name.replace(' ', '_')}.csv"
            server.add(path, body, content_type=content_type, headers=headers)
            folder = tmp_path / name
            folder.mkdir()
            found.add(outcome(server.url(path), folder))
    assert found == documented


# -- the job, as the README runs it --------------------------------------------------------------------------

FAILING = "632h-zaca"


def serve_catalog(site: Site) -> None:
    site.dataset(
        "48nr-hqxx", "2025-04-08", {"ASCQR_OAS_CAHPS_BY_ASC.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(40, 5))}
    )
    site.dataset(
        "wue8-3vwe", "2025-04-08", {"ASC_National.csv": csv_bytes(HEADER_UNQUOTED_LF, ["1,2,3,4,5,6,7"], "\n")}
    )
    site.dataset("4jcv-atw7", "2025-04-08", {"ASC_Facility.csv": csv_bytes(HEADER_IPF, quoted_rows(30, 4))})
    site.dataset(FAILING, "2025-04-22", {"Unplanned_Hospital_Visits-Hospital.csv": b""}, serve=False)


def data_files(data: Path) -> list[str]:
    return sorted(
        str(Path("data") / p.relative_to(data))
        for p in data.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    )


def check_layout(files: list[str], tree: str, complete: bool) -> None:
    patterns = layout_patterns(tree)
    for name, pattern in patterns.items():
        assert any(pattern.match(f) for f in files), f"{name}: no such file after a run: {files}"
    if complete:
        for f in files:
            assert any(p.match(f) for p in patterns.values()), f"{f} is missing from the layout in docs/data.md"


def keys_of(doc: dict, real: dict, where: str) -> None:
    assert list(doc) == list(real), where
    for key, value in doc.items():
        if isinstance(value, dict) and isinstance(real[key], dict):
            keys_of(value, real[key], f"{where}.{key}")


@runs
@covers(
    "daily-run",
    "run-output",
    "layout",
    "layout-excerpt",
    "header-map-excerpt",
    "failures-query",
    "report-example",
    "latest-entry",
    "index-columns",
    "plan",
)
def test_the_daily_command_its_output_files_and_the_failure_query(tmp_path):
    with LoopbackServer() as server:
        site = Site(server)
        serve_catalog(site)
        project = Project(tmp_path / "project", site)
        job, plan = commands(block("daily-run").text)
        assert commands(block("plan").text) == [plan]

        first = project.run(job)
        assert first.returncode == 30, first.stderr  # one dataset failed
        out = first.stdout.splitlines()
        shapes = {shape(line) for line in out}
        for line in block("run-output").text.splitlines():
            if line.strip() != "...":
                assert shape(line) in shapes, f"{line!r} is not a line the job prints:\n{first.stdout}"
        assert "Execution Summary" not in first.stdout + first.stderr  # [core] log_level = WARNING
        assert "Traceback" not in first.stderr
        errors = [line for line in first.stderr.splitlines() if line.startswith("ERROR:")]
        assert errors and all(FAILING in line for line in errors), first.stderr  # one line per failed task

        planned = project.run(plan)
        assert planned.returncode == 0, planned.stderr
        assert re.search(rf"^failed_last_time\s+{FAILING}", planned.stdout, flags=re.MULTILINE)
        assert f"Plan: {project.folder / 'data' / 'reports' / 'plan-'}" in planned.stdout

        sqlite_cli, python = commands(block("failures-query").text)
        via_python = project.run(python)
        assert via_python.returncode == 0, via_python.stderr
        [failure] = via_python.stdout.splitlines()
        assert failure.startswith(f"{FAILING}|download of ") and failure.endswith("failed: HTTP 404 Not Found")
        if shutil.which("sqlite3"):
            assert project.run(sqlite_cli).stdout == via_python.stdout

        files = data_files(project.data)
        check_layout(files, block("layout").text, complete=True)
        check_layout(files, block("layout-excerpt").text, complete=False)
        check_files_against_examples(project.data)

        run_id = re.search(r"HospitalsDaily run (\S+) failed", first.stdout)[1]
        again = project.run(f"{job} --run-id {run_id}")
        assert again.returncode == 30
        assert (
            f"run {run_id} already finished (failed; report {project.folder / 'data' / 'reports' / run_id}.json); "
            "a finished run is not run again" in again.stderr
        )

        [fixed] = site.dataset(
            FAILING, "2025-04-22", {"Unplanned_Hospital_Visits-Hospital.csv": csv_bytes(HEADER_IPF, ["1"])}
        )
        server.clear()
        second = project.run(job)  # the same command again: only what failed is fetched
        assert second.returncode == 0, second.stderr
        assert "3 up to date" in second.stdout and "1 downloaded" in second.stdout
        assert [r.path for r in server.requests if r.path != CATALOG_PATH] == [fixed]
        assert project.run(python).stdout == ""

        check_exit_2_and_10(tmp_path, project, site, job)


def check_files_against_examples(data: Path) -> None:
    [doc_map] = [json.loads(b.text) for b in blocks("header-map-excerpt")]
    real_map = json.loads(next(data.glob(f"datasets/{doc_map['identifier']}/*/header_map.json")).read_text())
    keys_of(doc_map, real_map, "header_map.json")
    data_dir = Path("/opt/cms-hospitals/data")  # the job writes absolute paths: the README's project folder
    folder = data_dir / layout.version_dir(doc_map["identifier"], doc_map["modified"], doc_map["download_url"])
    assert doc_map["header_map_path"] == str(folder / "header_map.json")
    assert doc_map["output_path"] == str(folder / "normalized.csv")
    for column in doc_map["columns"]:
        assert normalize_header([column["original"]]) == [column["normalized"]]
        assert list(column) == list(real_map["columns"][0])

    doc_report = json.loads(block("report-example").text)
    real_report = json.loads(next(data.glob("reports/2*.json")).read_text())
    keys_of(doc_report, real_report, "report")
    done = next(entry for entry in real_report["datasets"] if entry["status"] == "downloaded")
    keys_of(doc_report["datasets"][0], done, "report.datasets[]")
    assert doc_report["datasets"][0]["paths"]["header_map"] == doc_map["header_map_path"]
    counts = doc_report["counts"]
    assert counts["discovered"] == counts["downloaded"] + counts["up_to_date"] + counts["failed"]

    doc_entry = json.loads(block("latest-entry").text)
    manifest = json.loads((data / "latest" / "latest.json").read_text(encoding="utf-8"))
    assert list(manifest) == ["generated_at", "run_id", "datasets"]
    keys_of(doc_entry, manifest["datasets"][0], "latest.json datasets[]")
    assert doc_entry["path"] == f"{doc_entry['identifier']}.csv"
    with open(data / "latest" / "index.csv", encoding="utf-8-sig", newline="") as index:
        assert ",".join(next(csv.reader(index))) == block("index-columns").text.strip()
    assert (data / "latest" / "index.csv").read_bytes().startswith(b"\xef\xbb\xbf")


def check_exit_2_and_10(tmp_path: Path, project: Project, site: Site, job: str) -> None:
    elsewhere = Project(tmp_path / "elsewhere", None)  # a folder without luigi.cfg, as cron's $HOME
    lost = elsewhere.run(job)
    assert lost.returncode == 2
    assert lost.stderr.splitlines() == [
        f"pipeline: no luigi.cfg with [HospitalsDaily] metastore_url was found (looked in "
        f"{elsewhere.folder / 'luigi.cfg'}); run the command from the project folder (cd /path/to/project) or set "
        "LUIGI_CONFIG_PATH to its luigi.cfg"
    ]

    [slow] = site.dataset("yv7e-xc69", "2025-04-08", {"Timely.csv": csv_bytes(HEADER_IPF, ["1"])})
    site.server.fault(slow, delay=4)
    running, log = project.start(job, "running.log")
    try:
        deadline = time.monotonic() + 30
        while site.server.count(slow) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = project.run(job)
        assert second.returncode == 10, second.stdout + second.stderr
        assert second.stderr == (
            f"pipeline: a run on {project.data} is already running on this machine (it holds "
            f"{run_lock.lock_path(project.tmp / 'luigi', str(project.data))}); nothing was done\n"
        )
        assert running.wait(timeout=60) == 0, log.read_text()
    finally:
        Project.stop(running)


# -- configuration -------------------------------------------------------------------------------------------


@runs
@covers("help-all", "overrides", "overlay-file", "overlay-run", "retention-note")
def test_settings_are_overridden_as_documented(tmp_path):
    with LoopbackServer() as server:
        site = Site(server)
        project = Project(tmp_path / "project", site)

        [help_all] = commands(block("help-all").text)
        shown = project.run(help_all)
        assert shown.returncode == 0, shown.stderr
        for row in table(block("settings-table").text):
            for flag in code_spans(row[1]):
                assert re.search(rf"^\s+{re.escape(flag.split()[0])}\b", shown.stdout, flags=re.MULTILINE), flag

        keep_one, archive, archive_plan = commands(block("overrides").text)
        site.dataset("48nr-hqxx", "2025-01-08", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(3000, 5))})
        assert project.run(keep_one).returncode == 0
        site.dataset(
            "48nr-hqxx", "2025-04-08", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(10, 5))}, upload=1700000100
        )
        pruned = project.run(keep_one)
        assert pruned.returncode == 0, pruned.stderr
        [note] = [line for line in pruned.stdout.splitlines() if "retention:" in line]
        [documented] = block("retention-note").text.splitlines()
        assert shape(note) == shape(documented), note
        assert len(list(project.data.glob("datasets/48nr-hqxx/*/normalized.csv"))) == 1

        assert project.run(archive).returncode == 0
        elsewhere = project.folder.parent / "cms-archive"
        assert (elsewhere / "runlog.sqlite").exists() and (elsewhere / "latest" / "48nr-hqxx.csv").exists()
        planned = project.run(archive_plan)
        assert planned.returncode == 0 and re.search(r"^up_to_date\s+48nr-hqxx", planned.stdout, re.MULTILINE)
        assert list(elsewhere.glob("reports/plan-*.json"))

        (project.folder / "local.cfg").write_text(block("overlay-file").text + "\n", encoding="utf-8")
        site.dataset(
            "48nr-hqxx", "2025-06-08", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(5, 5))}, upload=1700000200
        )
        [overlay_run] = commands(block("overlay-run").text)
        assert project.run(overlay_run).returncode == 0
        [newest] = project.data.glob("datasets/48nr-hqxx/2025-06-08-*")
        assert not (newest / "source.csv").exists() and (newest / "normalized.csv").exists()
        [earlier] = project.data.glob("datasets/48nr-hqxx/2025-04-08-*")
        assert (earlier / "source.csv").exists()  # drop_source acts on what is normalized from then on


@runs
@covers("verify")
def test_verify_asks_only_where_a_last_modified_was_recorded(tmp_path):
    with LoopbackServer() as server:
        site = Site(server)
        [with_date] = site.dataset("48nr-hqxx", "2025-04-08", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, ["1"])})
        [without] = site.dataset("wue8-3vwe", "2025-04-08", {"Nat.csv": b""}, serve=False)
        server.add(without, csv_bytes(HEADER_UNQUOTED_LF, ["1"], "\n"))  # no Last-Modified
        project = Project(tmp_path / "project", site)
        assert project.run(daily()).returncode == 0
        server.clear()
        [verify] = commands(block("verify").text)
        checked = project.run(verify)
        assert checked.returncode == 0, checked.stderr
        assert "  NOTE wue8-3vwe: verify: no Last-Modified was recorded at download" in checked.stdout.splitlines()
        assert server.count(with_date) == 1 and server.count(without) == 0
        assert "If-Modified-Since" in next(r for r in server.requests if r.path == with_date).headers


def _without_folder_hashes(line: str) -> str:
    return shape(re.sub(r"(\d{4}-\d{2}-\d{2})-[0-9a-f]{8}", r"\1-<hash>", line))


def _notes(output: str) -> set[str]:
    return {_without_folder_hashes(line) for line in output.splitlines() if line.startswith("  NOTE ")}


@pytest.fixture
def three_datasets_run(tmp_path):
    """(server, project) after a first daily run of three datasets."""
    with LoopbackServer() as server:
        site = Site(server)
        for n, identifier in enumerate(("48nr-hqxx", "wue8-3vwe", "xubh-q36u")):
            site.dataset(identifier, "2025-04-08", {f"F{n}.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(30 + n, 5))})
        project = Project(tmp_path / "project", site)
        assert project.run(daily()).returncode == 0
        yield server, project


@covers("repair-notes")
def test_the_repair_notes_are_the_ones_a_run_after_a_power_cut_prints(three_datasets_run):
    _, project = three_datasets_run
    [report] = project.data.glob("reports/*.json")
    for path in (
        report,
        project.data / "latest" / "index.csv",
        *project.data.glob("datasets/48nr-hqxx/*/normalized.csv"),
    ):
        path.write_bytes(b"")  # as a power cut leaves a file renamed into place before its data was on disk
    [header_map] = project.data.glob("datasets/xubh-q36u/*/header_map.json")
    header_map.write_bytes(b"")
    [source] = project.data.glob("datasets/wue8-3vwe/*/source.csv")
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    repaired = project.run(daily())
    assert repaired.returncode == 0, repaired.stderr
    assert _notes(repaired.stdout) == {_without_folder_hashes(line) for line in block("repair-notes").text.splitlines()}
    assert "Traceback" not in repaired.stderr


@covers("deep-check")
def test_the_deep_check_puts_back_a_latest_file_with_a_flipped_byte(three_datasets_run):
    server, project = three_datasets_run
    latest_file = project.data / "latest" / "48nr-hqxx.csv"
    good = latest_file.read_bytes()
    latest_file.unlink()
    latest_file.write_bytes(good[:-3] + b"X" + good[-2:])
    assert project.run(daily()).returncode == 0 and latest_file.read_bytes() != good  # same size: not seen
    server.clear()
    [deep] = commands(block("deep-check").text)
    checked = project.run(deep)
    assert checked.returncode == 0, checked.stderr
    assert [line for line in checked.stdout.splitlines() if line.startswith("  NOTE ")] == [
        "  NOTE latest/48nr-hqxx.csv does not match latest.json's sha256; put back",
        "  NOTE deep check: the files of 3 versions and 3 in latest/ hashed; 1 damaged",
    ]
    assert latest_file.read_bytes() == good
    assert [path for path in server.paths() if path.endswith(".csv")] == []


# -- the central scheduler -----------------------------------------------------------------------------------


def merged(*texts: str) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    for text in texts:
        parser.read_string(text)
    return "\n".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in parser[s].items()) for s in parser.sections())


@runs
@covers(
    "luigid-cfg",
    "luigid-start",
    "luigid-api",
    "central-cfg",
    "central-run",
    "task-history-cfg",
    "keep-alive-cfg",
    "shared-run",
)
def test_the_central_scheduler_commands(tmp_path, postgres):
    from tests.postgres_support import PASSWORD, USER

    port = free_port()
    database = postgres.new_database()
    roots = {
        "/etc/cms-hospitals": tmp_path / "etc",
        "/var/lib/cms-hospitals": tmp_path / "var-lib",
        "/var/log/cms-hospitals": tmp_path / "var-log",
    }

    def here(text: str, port: int = port) -> str:
        """The documented text with its machine paths and luigid's port replaced by temporary ones."""
        for documented, temporary in roots.items():
            text = text.replace(documented, str(temporary))
        text = text.replace("db.example.org:5432", f"127.0.0.1:{postgres.port}").replace("cms_runlog", database)
        text = text.replace("postgresql://cms@", f"postgresql://{USER}@").replace(":cms:", f":{USER}:")
        return text.replace("8082", str(port))

    with LoopbackServer() as server:
        site = Site(server)
        serve_catalog(site)
        project = Project(tmp_path / "project", site)
        home = tmp_path / "home"  # the run log's password for psql, the job and the assistant
        home.mkdir()
        (home / ".pgpass").write_text(here(block("pgpass-line").text).replace("the-password", PASSWORD) + "\n")
        (home / ".pgpass").chmod(0o600)
        psql = postgres.bin / "psql"
        project.env = lambda: {**Project.env(project), "HOME": str(home), "PATH": f"{psql.parent}:{os.environ['PATH']}"}
        overlay = project.folder / "deploy" / "central.cfg"
        overlay.parent.mkdir()
        roots["/etc/cms-hospitals"].mkdir()
        (roots["/etc/cms-hospitals"] / "luigid.cfg").write_text(
            here(merged(block("luigid-cfg").text, block("task-history-cfg").text)), encoding="utf-8"
        )
        mkdir, start = commands(block("luigid-start").text)
        assert project.run(here(mkdir)).returncode == 0
        luigid, luigid_log = project.start(here(start), "luigid.log")
        try:
            probe = Luigid(tmp_path / "probe")
            probe.port = port
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    probe.rpc("task_list")
                    break
                except (OSError, ValueError):
                    assert luigid.poll() is None, luigid_log.read_text()
                    time.sleep(0.1)

            central = block("central-cfg").text
            overlay.write_text(here(central), encoding="utf-8")
            [central_run] = commands(block("central-run").text)
            result = project.run(central_run)
            assert result.returncode == 30, result.stderr  # the dataset that is not served
            assert "UnconsumedParameterWarning" not in result.stderr, result.stderr  # not for the rpc_* keys
            assert "HospitalsDaily run" in result.stdout and "3 downloaded" in result.stdout

            [api] = commands(block("luigid-api").text)
            answer = project.run(here(api))
            assert answer.returncode == 0, answer.stderr
            failed = json.loads(answer.stdout)["response"]
            assert [(task["name"], task["params"]["identifier"]) for task in failed.values()] == [
                ("DownloadCsv", FAILING)
            ]
            with sqlite3.connect(roots["/var/lib/cms-hospitals"] / "luigi-history.db") as db:
                tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            assert {"tasks", "task_parameters", "task_events"} <= tables

            site.dataset(FAILING, "2025-04-22", {"Unplanned.csv": csv_bytes(HEADER_IPF, ["1"])})
            shared = merged(central, block("keep-alive-cfg").text, block("runlog-url-cfg").text)
            overlay.write_text(here(shared), encoding="utf-8")
            assistant_command, job, status = commands(block("shared-run").text)
            assistant, assistant_log = project.start(assistant_command, "assistant.log")
            try:
                shared = project.run(job)
                assert shared.returncode == 0, shared.stdout + shared.stderr + assistant_log.read_text()
                assert "succeeded" in shared.stdout
                unknown = [
                    line
                    for line in shared.stderr.splitlines()
                    if "UnconsumedParameterWarning" in line and "'rpc_" not in line
                ]
                assert unknown == [], "keys Luigi does not know"
                answer = project.run(here(status))
                assert (answer.returncode, answer.stdout) == (0, "succeeded\n"), answer.stderr
                assert assistant.poll() is None, assistant_log.read_text()
            finally:
                Project.stop(assistant)
        finally:
            Project.stop(luigid)
        assert (roots["/var/lib/cms-hospitals"] / "luigid-state.pickle").exists()  # written when it stops
        assert (roots["/var/log/cms-hospitals"] / "luigi-server.log").exists()

        # luigid gone: one line and 40 (the retries made short: 3 attempts 1 s apart).
        overlay.write_text(here(central).replace("rpc_retry_wait = 10", "rpc_retry_wait = 1"), encoding="utf-8")
        dead = project.run(central_run)
        assert dead.returncode == 40
        assert "Traceback" not in dead.stderr
        said = [line for line in dead.stderr.splitlines() if line.startswith(("ERROR:", "WARNING:"))]
        assert len(said) == 1 and "cannot reach the central scheduler: " in said[0], dead.stderr
        assert said[0].endswith("; is luigid running?")


# -- the contributors' inner loop ----------------------------------------------------------------------------


@runs
@covers("inner-loop")
def test_the_inner_loop_runs_the_pure_tests():
    [command] = commands(block("inner-loop").text)
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    # Whether they pass is the suite's business (CI runs it); here: the command runs them, and only them.
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed.*, \d+ deselected in ", result.stdout.splitlines()[-1])


@covers("windows-lane")
def test_the_windows_lane_commands_name_the_lane_and_the_windows_set():
    lane, one = commands(block("windows-lane").text)
    assert lane == ".venv/bin/python -m pytest tests/test_windows_lane.py"
    assert (ROOT / lane.split()[-1]).is_file()
    prefix = ".venv/bin/python -m tests.windows_env python -m pytest -p no:cacheprovider tests/test_windows.py -k "
    assert one.startswith(prefix)
    from tests import test_windows

    assert any(one.removeprefix(prefix) in name for name in dir(test_windows) if name.startswith("test_"))


def optional_dependencies() -> str:
    """pyproject.toml's [project.optional-dependencies] section (tomllib is 3.11+)."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return pyproject.split("[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]


def assert_extra(name: str, extra: str, requirement: str, package: str) -> None:
    """The block installs the extra, pyproject.toml's extra is `requirement` (a pattern), and the default install
    (requirements.txt) does not bring `package`."""
    [install] = commands(block(name).text)
    assert install == f".venv/bin/pip install -e .[{extra}]"
    extras = optional_dependencies()
    assert re.search(rf"^{extra} = {requirement}$", extras, flags=re.MULTILINE), extras
    assert not any(package in line for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())


@covers("postgres-install")
def test_the_postgres_extra_is_the_driver_and_the_default_install_stays_without_it():
    assert_extra("postgres-install", "postgres", r'\["psycopg2-binary>=2\.9\.9"\]', "psycopg")


@runs
@covers("runlog-url-cfg", "pgpass-line", "failures-query-psql")
def test_the_run_log_on_postgresql_with_the_password_in_pgpass_and_the_psql_failure_query(tmp_path, postgres):
    from tests.postgres_support import PASSWORD, USER

    database = postgres.new_database()

    def here(text: str) -> str:  # the documented server, user and database, made the test's own
        text = text.replace("db.example.org:5432", f"127.0.0.1:{postgres.port}").replace("cms_runlog", database)
        return text.replace("postgresql://cms@", f"postgresql://{USER}@").replace(":cms:", f":{USER}:")

    with LoopbackServer() as server:
        site = Site(server)
        serve_catalog(site)
        project = Project(tmp_path / "project", site)
        overlay = here(block("runlog-url-cfg").text)
        config = (project.folder / "luigi.cfg").read_text(encoding="utf-8").replace("[runlog]\n", "[unused]\n")
        (project.folder / "luigi.cfg").write_text(config + "\n" + overlay, encoding="utf-8")
        home = tmp_path / "home"
        home.mkdir()
        pgpass = home / ".pgpass"
        pgpass.write_text(here(block("pgpass-line").text).replace("the-password", PASSWORD) + "\n", encoding="utf-8")
        pgpass.chmod(0o600)
        psql = postgres.bin / "psql"
        project.env = lambda: {**Project.env(project), "HOME": str(home), "PATH": f"{psql.parent}:{os.environ['PATH']}"}
        [job, _plan] = commands(block("daily-run").text)
        first = project.run(job)
        assert first.returncode == 30, first.stderr  # one dataset failed, as in the README
        assert not (project.data / "runlog.sqlite").exists()
        [query_psql] = commands(block("failures-query-psql").text)
        listed = project.run(here(query_psql))
        assert listed.returncode == 0, listed.stderr
        [failure] = listed.stdout.splitlines()
        assert failure.startswith(f"{FAILING}|download of ") and failure.endswith("failed: HTTP 404 Not Found")


# -- telling the operator ------------------------------------------------------------------------------------


@runs
@covers("notify-cfg", "notify-run", "notify-mail", "notify-notes")
def test_the_notify_example_mails_once_pings_and_a_relay_down_or_a_silent_endpoint_is_a_note(tmp_path):
    from pipeline.notify import redact
    from tests.notify_support import MailServer, PingServer, made_local, text

    [run] = commands(block("notify-run").text)
    with LoopbackServer() as server:
        site = Site(server)
        serve_catalog(site)
        project = Project(tmp_path / "project", site)
        overlay = project.folder / run.split()[0].split("=")[1]
        with MailServer() as mail, PingServer() as ping:
            overlay.write_text(made_local(block("notify-cfg").text, mail.port, ping.url), encoding="utf-8")
            result = project.run(run)
        assert result.returncode == 30, result.stderr  # the dataset that is not served
        [received] = mail.mails
        got = [f"Subject: {received['Subject']}", "", *text(received).splitlines()]
        assert [shape(line) for line in got] == [shape(line) for line in block("notify-mail").text.splitlines()]
        assert ping.paths() == ["/start", "/fail"]

        port = free_port()  # nothing listens there
        with PingServer(hang=True) as silent:
            settings = made_local(block("notify-cfg").text, port, silent.url)
            overlay.write_text(settings.replace("timeout = 10", "timeout = 2"), encoding="utf-8")
            result = project.run(run)
        assert result.returncode == 30, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("  NOTE ")]
    documented = block("notify-notes").text.replace("smtp.example.org:25", f"127.0.0.1:{port}")
    documented = documented.replace("https://hc-ping.com/…", redact(silent.url)).replace("10 s", "2 s")
    assert notes == documented.splitlines()


# -- the data in object storage ------------------------------------------------------------------------------


@covers("s3-install")
def test_the_s3_extra_is_boto3_and_the_default_install_stays_without_it():
    [install] = commands(block("s3-install").text)
    assert install == ".venv/bin/pip install -e .[s3]"
    extras = optional_dependencies()
    assert re.search(r'^s3 = \["boto3>=1\.34"\]$', extras, flags=re.MULTILINE), extras
    assert not any("boto" in line for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())


@runs
@covers("s3-cfg", "aws-config", "aws-credentials")
def test_the_documented_s3_overlay_and_aws_files_run_the_job_into_the_bucket_with_the_run_log_on_postgresql(
    tmp_path, postgres, s3, monkeypatch
):
    """The endpoint and keys from ~/.aws of the user that runs the job (no AWS_* variable set), as documented
    and as deploy/aws-config has them."""
    from tests.postgres_support import PASSWORD
    from tests.s3_support import ACCESS_KEY, SECRET_KEY

    assert block("aws-config").text in (ROOT / "deploy" / "aws-config").read_text(encoding="utf-8")
    bucket = s3.new_bucket()
    overlay = (
        block("s3-cfg")
        .text.replace("s3://cms-data/", f"s3://{bucket}/")
        .replace("postgresql://cms@db.example.org:5432/cms_runlog", postgres.url())
    )
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text(
        block("aws-config").text.replace("https://s3.example.org", s3.endpoint), encoding="utf-8"
    )
    credentials = home / ".aws" / "credentials"
    credentials.write_text(
        block("aws-credentials").text.replace("CMSJOBEXAMPLEKEY", ACCESS_KEY).replace("the-secret-key", SECRET_KEY),
        encoding="utf-8",
    )
    credentials.chmod(0o600)
    for key in [key for key in os.environ if key.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    with LoopbackServer() as server:
        site = Site(server)
        serve_catalog(site)
        project = Project(tmp_path / "project", site)
        [data_dir, runlog_url] = [line for line in overlay.splitlines() if " = " in line]
        config = (project.folder / "luigi.cfg").read_text(encoding="utf-8")
        config = re.sub(r"^url = .*$", runlog_url, config.replace("data_dir = data", data_dir), flags=re.MULTILINE)
        (project.folder / "luigi.cfg").write_text(config, encoding="utf-8")
        result = project.run(daily())
    assert result.returncode == 30, result.stderr  # one dataset failed, as in the README
    assert f"Report: s3://{bucket}/hospitals/reports/" in result.stdout
    assert not project.data.exists()
    assert not {PASSWORD, SECRET_KEY} & {word for word in re.split(r"[\s:/@'\"]+", result.stdout + result.stderr)}
    keys = {item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "hospitals/latest/latest.json" in keys and "hospitals/latest/index.csv" in keys


# -- several machines ----------------------------------------------------------------------------------------


@covers("shared-install")
def test_the_shared_install_is_one_command_with_both_extras():
    [install] = commands(block("shared-install").text)
    assert install == ".venv/bin/pip install -e '.[postgres,s3]'"
    extras = optional_dependencies()
    assert re.search(r"^postgres = \[", extras, flags=re.MULTILINE) and re.search(r"^s3 = \[", extras, re.MULTILINE)
    assert "'.[postgres,s3]'" in (ROOT / "deploy" / "central.cfg").read_text(encoding="utf-8")


@runs
@covers("bucket-create")
def test_the_bucket_is_made_as_documented_with_the_documented_aws_files(tmp_path, s3, monkeypatch):
    from tests.s3_support import ACCESS_KEY, SECRET_KEY

    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text(
        block("aws-config").text.replace("https://s3.example.org", s3.endpoint), encoding="utf-8"
    )
    (home / ".aws" / "credentials").write_text(
        block("aws-credentials").text.replace("CMSJOBEXAMPLEKEY", ACCESS_KEY).replace("the-secret-key", SECRET_KEY),
        encoding="utf-8",
    )
    for key in [key for key in os.environ if key.startswith("AWS_")]:
        monkeypatch.delenv(key)
    project = Project(tmp_path / "project", None)
    project.env = lambda: {**Project.env(project), "HOME": str(home)}
    name = f"cms-data-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    [make] = commands(block("bucket-create").text)
    assert "Bucket='cms-data'" in make
    made = project.run(make.replace("Bucket='cms-data'", f"Bucket='{name}'"))
    assert made.returncode == 0, made.stderr
    assert name in {bucket["Name"] for bucket in s3.client().list_buckets()["Buckets"]}


@covers("shared-run-cron-line")
def test_the_shared_run_cron_line_runs_the_documented_job_and_deploy_crontab_has_it():
    [cron] = block("shared-run-cron-line").text.splitlines()
    job = commands(block("shared-run").text)[1]
    without_run_id = job.split(" --run-id ")[0]
    assert cron == f"15 6 * * * cd /opt/cms-hospitals && {without_run_id} >> /var/log/cms-hospitals/daily.log 2>&1"
    assert f"# {cron}" in (ROOT / "deploy" / "crontab").read_text(encoding="utf-8").splitlines()


SAMPLE = ROOT.parent / "shared" / "cms-sample" / "csv" / "97xg-v3wv.csv"  # real CMS data, read where it is


def refreshed(sample: bytes) -> bytes:
    """A later release of a real CMS file, as CMS makes them: a facility's measure reported at last (its score,
    sample and footnote change), the last two rows gone, a measure added; the rest byte for byte."""
    lines = sample.split(b"\r\n")
    header, rows = lines[0], [line for line in lines[1:] if line]
    cells = next(csv.reader([rows[2].decode()]))  # 010779 REH_OP_18c: Not Available, Not Available, "1, 3"
    cells[11:14] = ["141", "27", ""]
    added = next(csv.reader([rows[0].decode()]))
    added[9:14] = ["REH_OP_22", "Left before being seen", "1", "148", ""]
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows([cells, added])
    changed, new = text.getvalue().encode().split(b"\r\n")[:2]
    return b"\r\n".join([header, rows[0], rows[1], changed, *rows[3:-2], new]) + b"\r\n"


def _docs_paths(text: str, data: Path) -> str:
    return re.sub(r"(\d{4}-\d{2}-\d{2})-[0-9a-f]{8}", r"\1-<hash>", text.replace(str(data), "/opt/cms-hospitals/data"))


@runs
@covers("change-report-line", "change-report-json", "change-report-cells")
@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"needs the real CMS sample {SAMPLE}")
def test_the_change_report_shown_is_the_one_a_refresh_of_a_real_file_gets(tmp_path):
    sample = SAMPLE.read_bytes()
    with LoopbackServer() as server:
        site = Site(server)
        site.dataset("97xg-v3wv", "2025-07-01", {"REH_Timely_and_Effective_Care.csv": sample}, upload=1751500000)
        project = Project(tmp_path / "project", site)
        assert project.run(daily()).returncode == 0
        site.dataset(
            "97xg-v3wv", "2025-10-01", {"REH_Timely_and_Effective_Care.csv": refreshed(sample)}, upload=1759300000
        )
        second = project.run(daily())
    assert second.returncode == 0, second.stderr
    [line] = [line for line in second.stdout.splitlines() if line.startswith("[1/1] 97xg-v3wv")]
    assert line == block("change-report-line").text.strip()
    [folder] = project.data.glob("datasets/97xg-v3wv/2025-10-01-*")
    report = (folder / "changes.json").read_text(encoding="utf-8")
    assert json.loads(_docs_paths(report, project.data)) == json.loads(
        _docs_paths(block("change-report-json").text, project.data)
    )
    cells = (folder / "changes.csv").read_text(encoding="utf-8")
    assert cells.splitlines() == block("change-report-cells").text.splitlines()


@covers("analytics-install")
def test_the_analytics_extra_is_duckdb_and_the_default_install_stays_without_it():
    assert_extra("analytics-install", "analytics", r'\["duckdb>=1\.1\.1,<3"\]', "duckdb")


@runs
@needs_duckdb
@covers("analytics-cfg", "typed-query", "typed-query-output", "typed-dictionary-excerpt")
@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"needs the real CMS sample {SAMPLE}")
def test_the_typed_query_shown_is_what_duckdb_answers_on_the_typed_files_of_a_real_file(tmp_path):
    assert block("analytics-cfg").text.splitlines() == ["[analytics]", "parquet = true"]
    with LoopbackServer() as server:
        site = Site(server)
        site.dataset("97xg-v3wv", "2025-07-01", {"REH_Timely_and_Effective_Care.csv": SAMPLE.read_bytes()})
        project = Project(tmp_path / "project", site)
        cfg = project.folder / "luigi.cfg"
        shipped = cfg.read_text(encoding="utf-8")
        assert "\n# parquet = false\n" in shipped
        cfg.write_text(shipped.replace("\n# parquet = false\n", "\nparquet = true\n"), encoding="utf-8")
        ran = project.run(daily())
        assert ran.returncode == 0, ran.stderr
    [query] = commands(block("typed-query").text)
    answer = project.run(query)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines() == block("typed-query-output").text.splitlines()
    [folder] = project.data.glob("datasets/97xg-v3wv/2025-07-01-*")
    dictionary = json.loads((folder / "dictionary.json").read_text(encoding="utf-8"))
    shown = json.loads(block("typed-dictionary-excerpt").text)
    assert [dictionary["columns"][entry["position"] - 1] for entry in shown] == shown
