"""The Luigi task graph:

    HospitalsDaily(run_id) -> FetchCatalog(run_id)           the metastore, once per run
                           => NormalizeCsv(version) x N     yielded together, so workers run them in parallel
                                -> DownloadCsv(version)      streams the CSV; holds one `cms_http` slot

Targets are keyed by the version (identifier, modified, download URL), so finished versions are skipped
without a request. Outcomes go to the SQLite run log; whichever task settles the run's last version
writes the run report.
"""

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import luigi

from pipeline import latest, layout
from pipeline.catalog import Catalog, CatalogError, CsvVersion, parse_catalog
from pipeline.header_rewrite import SourceScan, copy_normalized, rewrite_csv
from pipeline.http import DownloadError, changed_since, download, fetch_bytes
from pipeline.report import build_report, summary_lines
from pipeline.runlog import RunLog, now
from pipeline.schema_drift import diff_columns
from pipeline.settings import SettingsParameter, http_settings
from pipeline.targets import atomic_path, folder_lock, remove_stale_temps, sweep_stale_temps, write_json

logger = logging.getLogger("luigi-interface")


class DatasetError(Exception):
    """A failure of one dataset version: Luigi shows "<identifier>: <cause>", the run log keeps the cause."""

    def __init__(self, identifier: str, cause: str):
        super().__init__(identifier, cause)  # both in args, so the exception pickles
        self.identifier, self.cause = identifier, cause

    def __str__(self) -> str:
        return f"{self.identifier}: {self.cause}"


class _QuietDatasetErrors(logging.Filter):
    """A failed dataset or catalog is data, not a bug: Luigi logs one line for it, the summary gives the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (DatasetError, CatalogError, DownloadError)):
            record.exc_info = record.exc_text = None
        return True


logger.addFilter(_QuietDatasetErrors())


def load_catalog(metastore_url: str, theme: str, settings) -> Catalog:
    catalog = parse_catalog(fetch_bytes(metastore_url, http_settings(settings)), theme)
    if not catalog.versions and not catalog.invalid:
        raise CatalogError(f"no dataset has the theme {theme!r} ({catalog.items_total} items)")
    return catalog


def default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]


class RunTask(luigi.Task):
    data_dir = luigi.Parameter(description="folder for outputs, run log and reports")
    run_id = luigi.Parameter(description="names this run in the log and the report")
    settings = SettingsParameter()

    def runlog(self) -> RunLog:
        return RunLog(layout.runlog_db(Path(self.data_dir)))

    def close_run_if_complete(self) -> None:
        """If this run has nothing left queued: refresh latest/, write the report, prune, print the summary."""
        data_dir = Path(self.data_dir)

        def write_report(run, items, counts, status, finished_at, retired):
            done = [i for i in items if i["outcome"] in ("downloaded", "up_to_date")]
            for item in done:
                item["distributions"] = sum(i["identifier"] == item["identifier"] for i in done)
            latest.publish(data_dir / "latest", done, retired, self.run_id, now())
            report = build_report(run, items, counts, status, finished_at)
            target = luigi.LocalTarget(str(layout.report(data_dir, self.run_id)))
            write_json(target, report)
            return target.path, report

        log = self.runlog()
        report = log.finish_if_complete(self.run_id, write_report)
        if not report:
            return
        keep = self.settings["retention"]["keep_versions"]
        if keep > 0:
            for output_path in log.prune(self.run_id, keep):
                shutil.rmtree(Path(output_path).parent, ignore_errors=True)
        print("\n".join(summary_lines(report, layout.report(data_dir, self.run_id))), flush=True)


class FetchCatalog(RunTask):
    metastore_url = luigi.Parameter()
    theme = luigi.Parameter()
    verify = luigi.BoolParameter(default=False)

    def output(self):
        return luigi.LocalTarget(str(layout.catalog_snapshot(Path(self.data_dir), self.run_id)))

    def run(self):
        log = self.runlog()
        log.start_run(self.run_id, self.metastore_url, self.theme)
        sweep_stale_temps(Path(self.data_dir) / "datasets")
        catalog = load_catalog(self.metastore_url, self.theme, self.settings)
        known = log.known_versions()
        queued, up_to_date = [], []
        for version in catalog.versions:
            revision, _ = known.get((version.identifier, version.modified, version.url), ("", ""))
            version = replace(version, revision=revision)
            done = NormalizeCsv.for_version(self, version)
            if done.complete():
                up_to_date.append((version, done.stored_stats()))
            else:
                queued.append(version)
        notes = {}
        if self.verify:
            up_to_date, replaced, notes = self._verify(up_to_date, known)
            queued += replaced
        log.plan_run(self.run_id, queued, up_to_date, catalog.invalid)
        for version, note in notes.items():
            log.note(self.run_id, version, note)
        write_json(self.output(), replace(catalog, versions=queued + [v for v, _ in up_to_date]).to_json())

    def _verify(self, up_to_date, known):
        """Conditional GETs for finished versions: a file replaced under the same URL becomes a new revision."""
        def check(version):
            last_modified = known.get((version.identifier, version.modified, version.url), ("", ""))[1]
            if not last_modified:
                return None, "verify: no Last-Modified was recorded at download"
            try:
                return changed_since(version.url, last_modified, http_settings(self.settings)), None
            except DownloadError as exc:
                return None, f"verify: {exc}"

        slots = luigi.configuration.get_config().getint("resources", "cms_http", 4)
        with ThreadPoolExecutor(max_workers=max(1, slots)) as pool:
            results = list(pool.map(check, [v for v, _ in up_to_date]))
        kept, replaced, notes = [], [], {}
        for (version, stats), (new_revision, note) in zip(up_to_date, results, strict=True):
            if new_revision:
                replaced.append(replace(version, revision=new_revision))
            else:
                kept.append((version, stats))
                if note:
                    notes[version] = note
        return kept, replaced, notes

    def on_failure(self, exception):
        message = f"metastore {self.metastore_url}: {exception}"
        self.runlog().fail_run(self.run_id, message)
        logger.error("Run %s failed: %s", self.run_id, message)
        return message


class VersionTask(RunTask):
    """A task about one CSV distribution of one dataset version."""

    identifier = luigi.Parameter()
    modified = luigi.Parameter()
    url = luigi.Parameter()
    revision = luigi.Parameter(default="", description="Last-Modified of a file replaced in place")

    @classmethod
    def for_version(cls, run: RunTask, version: CsvVersion):
        return cls(data_dir=run.data_dir, run_id=run.run_id, settings=run.settings, identifier=version.identifier,
                   modified=version.modified, url=version.url, revision=version.revision)

    @property
    def version(self) -> CsvVersion:
        return CsvVersion(self.identifier, "", self.modified, self.url, "", revision=self.revision)

    @property
    def folder(self) -> Path:
        return layout.version_dir(Path(self.data_dir), self.identifier, self.modified, self.url, self.revision)

    def on_failure(self, exception):
        cause = exception.cause if isinstance(exception, DatasetError) else repr(exception)
        try:
            self.runlog().record_failed(self.run_id, self.version, cause)
            self.close_run_if_complete()
        except Exception:  # Luigi swallows errors here; say so loudly instead
            logger.exception("%s: could not record the failure in the run log", self.identifier)
        return f"{self.identifier}: {cause}"


@VersionTask.event_handler(luigi.Event.PROCESS_FAILURE)
@VersionTask.event_handler(luigi.Event.TIMEOUT)
def _worker_process_lost(task: VersionTask, error, *_) -> None:
    """Runs in the scheduling process when a task's own process died, so its on_failure never ran."""
    task.on_failure(DatasetError(task.identifier, f"worker process lost: {error}"))


class DownloadCsv(VersionTask):
    resources = {"cms_http": 1}

    def output(self):
        return luigi.LocalTarget(str(layout.source_csv(self.folder)), format=luigi.format.Nop)

    def run(self):
        with folder_lock(self.folder):
            if self.output().exists():
                return  # an overlapping run fetched it while we waited for the lock
            scan_target = luigi.LocalTarget(str(layout.source_scan(self.folder)))
            remove_stale_temps(self.output(), scan_target)
            scan = SourceScan()
            with atomic_path(self.output()) as temp:
                try:
                    fetched = download(self.url, temp, http_settings(self.settings), self._progress, scan)
                except Exception as exc:
                    raise DatasetError(self.identifier, f"download of {self.url} failed: {exc}") from exc
                Path(scan_target.path).unlink(missing_ok=True)  # an earlier attempt's scan
                if scan.result():
                    write_json(scan_target, scan.result())
        self.runlog().record_download(self.version, fetched.last_modified)

    _last_report = 0.0

    def _progress(self, done: int, total: int | None) -> None:
        # Each report is a scheduler RPC: at most one a second.
        if time.monotonic() - self._last_report < 1.0 or not self.set_status_message:
            return
        self._last_report = time.monotonic()
        if total:
            self.set_progress_percentage(min(100, done * 100 // total))
        self.set_status_message(f"{done / 1e6:,.1f} MB" + (f" of {total / 1e6:,.1f} MB" if total else ""))


class NormalizeCsv(VersionTask):
    def requires(self):
        return DownloadCsv.for_version(self, self.version)

    def output(self):
        return {"csv": luigi.LocalTarget(str(layout.normalized_csv(self.folder)), format=luigi.format.Nop),
                "header_map": luigi.LocalTarget(str(layout.header_map(self.folder)))}

    def stored_stats(self) -> dict:
        """What the run log keeps about a finished version, read back from its header map."""
        stats = json.loads(Path(self.output()["header_map"].path).read_text(encoding="utf-8"))
        return {key: stats[key] for key in ("source_path", "output_path", "header_map_path", "source_encoding",
                                            "rows", "bytes", "sha256")}

    def run(self):
        with folder_lock(self.folder):
            if self.complete():  # an overlapping run normalized it while we waited for the lock
                self.runlog().record_done(self.run_id, self.version, self.stored_stats(), outcome="up_to_date")
            else:
                self._normalize()
        self.close_run_if_complete()

    def _normalize(self) -> None:
        outputs = self.output()
        remove_stale_temps(*outputs.values())
        source = Path(self.input().path)
        scan_path = layout.source_scan(self.folder)
        scan = json.loads(scan_path.read_text(encoding="utf-8")) if scan_path.exists() else None
        with atomic_path(outputs["csv"]) as temp, open(source, "rb") as src, open(temp, "w+b") as dst:
            try:
                result = copy_normalized(src, dst, scan) if scan else rewrite_csv(src, dst)
            except (ValueError, UnicodeError) as exc:
                raise DatasetError(self.identifier, f"cannot normalize the download: {exc}") from exc
        if self.set_status_message:
            self.set_status_message(f"{result.rows:,} rows")
            self.set_progress_percentage(100)
        stats = {"identifier": self.identifier, "modified": self.modified, "download_url": self.url,
                 "source_path": str(source), "output_path": outputs["csv"].path,
                 "header_map_path": outputs["header_map"].path, "source_encoding": result.encoding,
                 "line_ending": result.line_ending, "rows": result.rows, "bytes": result.bytes,
                 "sha256": result.sha256, "columns": result.header_map()}
        log = self.runlog()
        previous = log.previous_header_map(self.version)
        change = None
        if previous:
            old = json.loads(Path(previous[2]).read_text(encoding="utf-8"))["columns"]
            change = diff_columns([c["normalized"] for c in old], result.normalized)
        write_json(outputs["header_map"], stats)
        if self.settings["retention"]["drop_source"]:
            source.unlink()
            scan_path.unlink(missing_ok=True)
            stats["source_path"] = None
        settled, total = log.record_done(self.run_id, self.version, stats, change and json.dumps(change), previous)
        print(f"[{settled}/{total}] {self.identifier} {self.modified}: {result.rows:,} rows, "
              f"{result.bytes / 1e6:,.1f} MB" + ("" if result.encoding == "utf-8" else f" (read as {result.encoding})"),
              flush=True)


class HospitalsDaily(RunTask):
    """Every CSV of every dataset in the theme, downloaded if new and normalized to snake_case headers."""

    data_dir = luigi.Parameter(default="data", description="folder for outputs, run log and reports")
    run_id = luigi.Parameter(default=default_run_id(), description="defaults to the UTC start time")
    metastore_url = luigi.Parameter(description="DKAN metastore items endpoint (set in luigi.cfg)")
    theme = luigi.Parameter(default="Hospitals", description="exact theme to select")
    verify = luigi.BoolParameter(default=False, description="ask the server whether finished files changed in place")

    def requires(self):
        return FetchCatalog(data_dir=self.data_dir, run_id=self.run_id, settings=self.settings,
                            metastore_url=self.metastore_url, theme=self.theme, verify=self.verify)

    def output(self):
        return luigi.LocalTarget(str(layout.report(Path(self.data_dir), self.run_id)))

    def run(self):
        # Side-effect free up to the yield: Luigi runs this method again from the top once the children are done.
        with self.input().open("r") as snapshot:
            catalog = Catalog.from_json(json.load(snapshot))
        children = [NormalizeCsv.for_version(self, version) for version in catalog.versions]
        if self.set_status_message:
            done = sum(child.complete() for child in children)
            self.set_status_message(f"{done} of {len(children)} CSV versions done")
            self.set_progress_percentage(100 * done // max(1, len(children)))
        yield children
        self.runlog().settle_queued(self.run_id)
        self.close_run_if_complete()
