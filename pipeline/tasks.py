"""The Luigi task graph:

    HospitalsDaily(run_id) -> FetchCatalog(run_id)           the metastore, once per run
                           => NormalizeCsv(version) x N     yielded together, so workers run them in parallel
                                -> DownloadCsv(version)      streams the CSV; holds one `cms_http` slot

Targets are keyed by the version (identifier, modified, download URL), so finished versions are skipped
without a request. Outcomes go to the SQLite run log. Whichever task settles the run's last version closes
the run (latest/, the report, the run's status): pipeline/close_run.py holds that protocol.
"""

import json
import logging
import time
from dataclasses import replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import luigi
import luigi.interface
import luigi.rpc
from luigi.parameter import ParameterVisibility

from pipeline import latest, layout, notify
from pipeline.catalog import Catalog, CsvVersion
from pipeline.change_report import write_change_report
from pipeline.close_run import close_failed, close_if_complete
from pipeline.console import say
from pipeline.durable import json_text, remove, temp_path
from pipeline.errors import DatasetError, RunClosed
from pipeline.header_rewrite import NotText, SourceScan
from pipeline.http import DownloadError, changed_since, download
from pipeline.metastore import load_catalog
from pipeline.normalized_file import make_normalized
from pipeline.report import progress_line
from pipeline.run_files import repair_closed_runs
from pipeline.runlog import STATS, RunLog
from pipeline.schema_drift import diff_columns, previous_version
from pipeline.settings import FolderParameter, RunIdParameter, RunLogUrlParameter, Settings, SettingsParameter
from pipeline.storage import Storage, StorageError, join, open_storage, parent
from pipeline.task_threads import unwrapped
from pipeline.typed_version import write_typed
from pipeline.version_check import VOUCHED_BY, VersionCheck, check_version, deep_check, hash_problem, header_map_of

logger = logging.getLogger("luigi-interface")


class RunTask(luigi.Task):
    data_dir = FolderParameter(default="data", description="folder (or s3://bucket/prefix) for outputs and reports")
    run_id = RunIdParameter(
        default="", description="names this run in the log and the report; defaults to the UTC start time"
    )
    settings = SettingsParameter()
    runlog_url = RunLogUrlParameter()

    @classmethod
    def get_params(cls):
        # Luigi looks the parameters up with dir() on every task it creates (a third of a run's clone() time at
        # 2000 datasets); ours are fixed once the class exists, so each class keeps its list.
        if "_params" not in cls.__dict__:
            cls._params = super().get_params()
        return list(cls._params)

    @cached_property
    def config(self) -> Settings:
        return Settings.from_dict(self.settings)

    @property
    def store(self) -> Storage:
        return open_storage(self.data_dir, self.runlog_url, self.config.scratch_dir)

    def runlog(self) -> RunLog:
        self.store  # noqa: B018 - object storage without a run log stops here, before a SQLite file is made
        return RunLog(layout.runlog_db(Path(self.data_dir)), self.runlog_url)

    def complete_afresh(self) -> bool:
        """complete() as the store answers it now, not the run's listing: asked of a task's requirements just
        before the task runs (pipeline/task_threads.py)."""
        return self.complete()

    def close_run_if_complete(self) -> None:
        """Called by every task that may settle the run's last item; pipeline/close_run.py has the protocol."""
        keep = self.config.retention.keep_versions
        typed = self.config.analytics.parquet
        close_if_complete(self.store, self.runlog(), self.run_id, keep, self.config.by_wrapper, typed)


class FetchCatalog(RunTask):
    """Starts the run: one metastore GET, the plan (queued or up to date) in the run log, the catalog snapshot."""

    metastore_url = luigi.Parameter()
    theme = luigi.Parameter()
    verify = luigi.BoolParameter(default=False)
    deep_check = luigi.BoolParameter(default=False)

    @property
    def resources(self):
        return {"cms_http": 1} if self.verify else {}  # verify's conditional GETs take a download slot

    def output(self):
        return self.store.target(layout.catalog_snapshot(self.run_id))

    def complete(self):
        # A snapshot a crash cut short is made again.
        return self.store.read_json(layout.catalog_snapshot(self.run_id))[0] is not None

    def run(self):
        log = self.runlog()
        earlier = log.run(self.run_id)
        if earlier and earlier["status"] in ("succeeded", "failed"):
            raise RunClosed(self.run_id, earlier["status"], earlier["report_path"])
        log.start_run(self.run_id, self.metastore_url, self.theme)
        if not self.config.by_wrapper:  # pipeline/shared_run.py sends it with the job's settings
            notify.run_started()  # the heartbeat's /start ping
        store = self.store
        store.sweep()
        # Files a crash may have damaged that no version task looks at: earlier runs' reports and snapshots.
        log.add_notes(self.run_id, repair_closed_runs(store, log, self.run_id, every=self.deep_check))
        catalog = load_catalog(self.metastore_url, self.theme, self.settings)
        known, sizes, recorded = log.known_versions(), log.last_sizes(), log.done_stats()
        store.prefetch("datasets")  # one listing answers every version's check below
        queued, up_to_date, notes, folders = [], [], {}, set()
        for version in catalog.versions:
            revision, _ = known.get(version.key, ("", ""))
            expected = sizes.get((version.identifier, version.position), sizes.get((version.identifier, None), 0))
            version = replace(version, revision=revision, expected_bytes=expected)
            # The version's folder, not its task: building a task per version costs more than checking it.
            folder = layout.version_dir(version.identifier, version.modified, version.url, version.revision)
            folders.add(folder)
            check, problems = inspect_version(store, folder, self.config.analytics.parquet, deep=self.deep_check)
            if check.finished:
                # Where the listing alone decided (object storage), the run log knows what the header map says.
                stats = recorded.get(store.location(layout.normalized_csv(folder)))
                up_to_date.append((version, stats or stored_stats(header_map_of(store, folder, check))))
            else:
                queued.append(version)
                if problems:  # damaged, not merely unfinished: say what, and what this run does about it
                    notes[version] = f"{folder}: {'; '.join(problems)}; {check.repair}"
        if self.deep_check:
            log.add_notes(self.run_id, self._deep_check_the_rest(folders, known, len(notes)))
        if self.verify:
            up_to_date, replaced, verify_notes = self._verify(up_to_date, known)
            queued += replaced
            notes.update(verify_notes)
        # The plan too: the first `queued` versions are the run's work, the rest were found finished above.
        planned = replace(catalog, versions=queued + [v for v, _ in up_to_date])
        snapshot = json_text({**planned.to_json(), "queued": len(queued)})  # made once
        log.plan_run(self.run_id, queued, up_to_date, catalog.invalid, snapshot)
        for version, note in notes.items():
            log.note(self.run_id, version, note)
        store.write_text(layout.catalog_snapshot(self.run_id), snapshot)

    def _deep_check_the_rest(self, in_catalog: set[str], known, damaged_in_catalog: int) -> list[str]:
        """After the catalog's versions: latest/, and the versions no longer in the catalog; then what was found."""
        notes, files = latest.check_hashes(self.store)
        archived = [
            folder
            for key, (revision, _) in sorted(known.items())
            if (folder := layout.version_dir(key.identifier, key.modified, key.url, revision)) not in in_catalog
            and self.store.sizes(folder)
        ]
        notes += self._deep_check_archive(archived)
        return [
            *notes,
            f"deep check: the files of {len(in_catalog) + len(archived)} versions and {files} in latest/ hashed; "
            f"{damaged_in_catalog + len(notes)} damaged",
        ]

    def _deep_check_archive(self, folders: list[str]) -> list[str]:
        """Versions no longer in the catalog: a damaged normalized file is made again from a whole source; what
        would need a download is left as it is, with a note."""
        notes, store = [], self.store
        for folder in folders:
            with store.lock(folder):
                check = check_version(store, folder, fresh=True)
                damaged = deep_check(store, folder, check) if check.complete else []
                problems = check.problems + [hash_problem(key) for key in damaged]
                if not problems:
                    continue
                action = "not in the catalog now: left as it is"
                header_map = header_map_of(store, folder, check)
                report_only = check.complete and all(key == layout.changes_csv(folder) for key in damaged)
                if header_map and report_only:  # only the change report: made again from what is here
                    action = "change report made again"
                    key = self.config.changes.key_for(header_map["identifier"])
                    if note := write_change_report(store, folder, header_map, key)[1]:
                        problems.append(note)
                        action = "left as it is"
                elif header_map and check.source_whole and layout.source_csv(folder) not in damaged:
                    store.remove(layout.normalized_csv(folder))
                    try:
                        if make_normalized(store, folder).sha256 == header_map["sha256"]:
                            action = "made again from source.csv"
                    except (ValueError, UnicodeError, OSError) as exc:
                        problems.append(f"cannot be made again ({exc})")
            notes.append(f"{folder}: {'; '.join(problems)}; {action}")
        return notes

    def _verify(self, up_to_date, known):
        """Conditional GETs for finished versions, one at a time in this task's slot: a file replaced under
        the same URL becomes a new revision."""
        kept, replaced, notes = [], [], {}
        for version, stats in up_to_date:
            new_revision, last_modified = None, known.get(version.key, ("", ""))[1]
            if not last_modified:
                notes[version] = "verify: no Last-Modified was recorded at download"
            else:
                try:
                    new_revision = changed_since(version.url, last_modified, self.config.download)
                except DownloadError as exc:
                    notes[version] = f"verify: {exc}"
            if new_revision:
                replaced.append(replace(version, revision=new_revision))
            else:
                kept.append((version, stats))
        return kept, replaced, notes

    def on_failure(self, exception):
        if isinstance(exception, RunClosed):  # nothing of that run may be touched
            return str(exception)
        message = f"metastore {self.metastore_url}: {exception}"
        try:
            close_failed(self.store, self.runlog(), self.run_id, message, self.config.by_wrapper)
        except StorageError as exc:  # the data folder itself is what failed: one line, no traceback
            logger.error("Run %s: could not write its report: %s", self.run_id, exc)
        except Exception:  # Luigi swallows errors here; say so loudly instead
            logger.exception("Run %s: could not record its failure in the run log", self.run_id)
        return message


class VersionTask(RunTask):
    """A task about one CSV distribution of one dataset version: (identifier, modified, url) is its identity
    (and its folder); revision is set only for a file found replaced in place."""

    identifier = luigi.Parameter()
    modified = luigi.Parameter()
    url = luigi.Parameter()
    revision = luigi.Parameter(default="", description="Last-Modified of a file replaced in place")
    wrapper_task_id = luigi.Parameter(
        default="",
        significant=False,
        visibility=ParameterVisibility.HIDDEN,
        description="the run's HospitalsDaily, whose progress line this task updates",
    )
    expected_bytes = luigi.IntParameter(
        default=0,
        significant=False,
        visibility=ParameterVisibility.HIDDEN,
        description="the distribution's size last time: the longest start first",
    )
    # A failed version stays FAILED in luigid's UI (a DISABLED one would not count as failed there). The next run
    # retries it; luigid offers a FAILED task again only after its [scheduler] retry_delay (15 minutes), to a run
    # still going, and disables it at a second failure. A keep-alive worker does not wait for it: it leaves once
    # its run is closed (pipeline/keep_alive.py).
    retry_count = 2

    @classmethod
    def for_version(cls, task: luigi.Task, version: CsvVersion, **extra):
        return task.clone(
            cls,
            identifier=version.identifier,
            modified=version.modified,
            url=version.url,
            revision=version.revision,
            expected_bytes=version.expected_bytes,
            **extra,
        )

    @property
    def priority(self) -> int:  # type: ignore[override]
        # Luigi runs higher priorities first (and passes a task's priority on to what it requires): the run
        # ends sooner when its biggest files do not start last.
        return self.expected_bytes // 1000

    @property
    def version(self) -> CsvVersion:
        return CsvVersion(self.identifier, "", self.modified, self.url, "", revision=self.revision)

    @cached_property
    def folder(self) -> str:
        return layout.version_dir(self.identifier, self.modified, self.url, self.revision)

    def failure(self, stage: str, exc: BaseException) -> DatasetError:
        """A data, network or disk problem of this version: one line naming the cause (no traceback)."""
        if isinstance(exc, StorageError):  # names the bucket and key itself
            cause = str(exc)
        elif isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
            cause = f"{exc.strerror or exc} (writing in {Path(self.data_dir).resolve()})"
        else:
            cause = str(exc)
        return DatasetError(self.identifier, f"{stage}: {cause}")

    def show_run_progress(self, done: int, failed: int, total: int) -> None:
        """The wrapper's line in luigid's UI, updated by each settled version with the run's (done, failed,
        total) as its run-log write returned them (a local scheduler has no UI to show it)."""
        if not self.wrapper_task_id or not (scheduler := self._luigid()):
            return
        message, percent = progress_line(done, failed, total)
        try:
            scheduler.set_task_status_message(self.wrapper_task_id, message)
            scheduler.set_task_progress_percentage(self.wrapper_task_id, percent)
        except luigi.rpc.RPCError as exc:  # the UI line is not worth failing a version for
            logger.warning("%s: could not update the run's progress in luigid: %s", self.identifier, exc)

    def _luigid(self) -> Any:
        """The luigid the worker running this task reports to, or None with a local scheduler. Called first in
        run(), so on_failure, which Luigi calls after run()'s status reporter is gone, knows it too."""
        reporter = getattr(self.set_status_message, "__self__", None)  # set by Luigi's worker while run() runs
        if reporter is not None:
            # Luigi 3.8.1 (pinned): the worker's own scheduler, also where luigi.build(local_scheduler=True) runs
            # with a luigi.cfg (or none) that names a luigid which is not there.
            scheduler = reporter._scheduler  # a LockedScheduler: task threads share it (pipeline/task_threads.py)
            self._reports_to = scheduler if isinstance(unwrapped(scheduler), luigi.rpc.RemoteScheduler) else None
        if hasattr(self, "_reports_to"):
            return self._reports_to
        core = luigi.interface.core()  # never ran here (a lost worker's event handler): as the command has it
        if core.local_scheduler:
            return None
        # The address as Luigi's own worker finds it (luigi.interface builds it the same way).
        return luigi.rpc.RemoteScheduler(core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/")

    def on_failure(self, exception):
        cause = exception.cause if isinstance(exception, DatasetError) else repr(exception)
        try:
            self.show_run_progress(*self.runlog().record_failed(self.run_id, self.version, cause))
            self.close_run_if_complete()
        except Exception:  # Luigi swallows errors here; say so loudly (one line if the disk is full)
            logger.exception("%s: could not record the failure in the run log", self.identifier)
        return f"{self.identifier}: {cause}"


@RunTask.event_handler(luigi.Event.FAILURE)
def _mail_a_bug(task: RunTask, exception: BaseException) -> None:
    """Runs in the task's process, before on_failure: an unexpected exception's traceback to the operator."""
    notify.mail_bug(task, exception)


@VersionTask.event_handler(luigi.Event.PROCESS_FAILURE)
@VersionTask.event_handler(luigi.Event.TIMEOUT)
def _worker_process_lost(task: VersionTask, error, *_) -> None:
    """Runs in the scheduling process when a task's own process died, so its on_failure never ran."""
    task.on_failure(DatasetError(task.identifier, f"worker process lost: {error}"))


class DownloadCsv(VersionTask):
    @property
    def resources(self):
        return {"cms_http": 1}  # a download slot: luigid's [resources] (or luigi.cfg's, locally) caps them

    def output(self):
        return self.store.target(layout.source_csv(self.folder))

    def complete(self):
        return check_version(self.store, self.folder).source_whole  # not merely there: the size its scan recorded

    def complete_afresh(self):
        if self.complete():
            return True
        check = check_version(self.store, self.folder, fresh=True)
        return check.source_whole or check.complete  # finished elsewhere, its source dropped ([retention])

    def run(self):
        self._luigid()
        store = self.store
        with store.lock(self.folder):
            if check_version(store, self.folder, fresh=True).source_whole:
                return  # an overlapping run fetched it while we waited for the lock
            present = store.sizes(self.folder)
            # Normalized already (only its source is downloaded again): its normalized file is left alone.
            copy = None if "header_map.json" in present else store.staged(layout.normalized_csv(self.folder))
            if "source.scan.json" in present:  # an earlier attempt's: it vouches for the rest
                store.remove(layout.source_scan(self.folder))
            try:
                with store.workdir(self.folder) as work:
                    fetched = self._fetch(store, work, copy)
            except (DownloadError, NotText, OSError) as exc:  # anything else is a bug: keep its traceback
                if copy:
                    store.remove(copy)
                raise self.failure(f"download of {self.url} failed", exc) from exc
        self._report(fetched.bytes, fetched.bytes)
        self.runlog().record_download(self.version, fetched.last_modified)

    def _fetch(self, store: Storage, work: Path, copy: str | None):
        """The source and, written while the bytes arrive, the normalized copy (so Normalize does not copy the
        file again afterwards) to `copy`; put in place copy first, then the scan that vouches for both, then the
        source."""
        source, scan_file = temp_path(work / "source.csv"), temp_path(work / "source.scan.json")
        staged = work / PurePosixPath(copy or "normalized.staged").name  # on disk: its place in the folder
        try:
            with open(staged, "wb") as out:
                scan = SourceScan(out)
                fetched = download(self.url, source, self.config.download, self._progress, scan)
            files = [(staged, copy)] if copy else []
            if not (copy and scan.result()):
                staged.unlink()  # Normalize rewrites this file from the source
                files = []
            scan_file.write_text(json_text(scan.record()), encoding="utf-8", newline="")
            files += [(scan_file, layout.source_scan(self.folder)), (source, layout.source_csv(self.folder))]
            store.put_files(files)
        finally:
            remove(source)
            remove(scan_file)
        return fetched

    _last_report = 0.0

    def _progress(self, done: int, total: int | None) -> None:
        # Each report is a scheduler RPC: at most one a second.
        if time.monotonic() - self._last_report >= 1.0:
            self._last_report = time.monotonic()
            self._report(done, total)

    def _report(self, done: int, total: int | None) -> None:
        if not self.set_status_message:
            return
        if total:
            self.set_progress_percentage(min(100, done * 100 // total))
        self.set_status_message(f"{done / 1e6:,.1f} MB" + (f" of {total / 1e6:,.1f} MB" if total else ""))


class NormalizeCsv(VersionTask):
    def requires(self):
        # A version whose data is whole and only its change report is missing or damaged: made again from what is
        # here, without downloading the file again.
        if "header_map.json" not in self.store.sizes(self.folder):  # never normalized, the usual case: no read
            return DownloadCsv.for_version(self, self.version)
        return [] if check_version(self.store, self.folder).complete else DownloadCsv.for_version(self, self.version)

    def output(self):
        return {
            "csv": self.store.target(layout.normalized_csv(self.folder)),
            "header_map": self.store.target(layout.header_map(self.folder)),
        }

    def complete(self):
        check = check_version(self.store, self.folder, typed=self.config.analytics.parquet)  # parsed, sized as recorded
        # A report or typed file that could not be made is a NOTE of this run, and the next run's to try again.
        return check.finished or (check.complete and self.runlog().settled(self.run_id, self.version))

    def run(self):
        self._luigid()
        store = self.store
        with store.lock(self.folder):
            check = check_version(store, self.folder, fresh=True, typed=self.config.analytics.parquet)
            if check.complete:  # normalized by an overlapping run, or only its source, report or typed file to make
                if (staged := store.staged(layout.normalized_csv(self.folder))) != layout.normalized_csv(self.folder):
                    store.remove(staged)  # a copy of what is already here, if an overlapping download left one
                header_map = header_map_of(store, self.folder, check)
                if not check.report_ok:
                    self._report_changes(header_map)
                if check.typed_wanted and not check.typed_ok:
                    self._type_version(header_map)
                self.runlog().record_done(self.run_id, self.version, stored_stats(header_map), outcome="up_to_date")
            else:
                self._normalize()
        self.close_run_if_complete()

    def _previous(self) -> tuple[tuple[str, str] | None, list[str] | None]:
        """The (modified, url) and normalized columns of the version this one replaces, if any (its folder in
        `self._previous_folder`)."""
        position, siblings, candidates = self.runlog().drift_context(self.run_id, self.version)
        header_maps = {c["header_map_path"]: self._read_header_map(c["header_map_path"]) for c in candidates}
        readable = [c for c in candidates if header_maps[c["header_map_path"]]]  # a damaged one is left out
        previous = previous_version(self.url, position, siblings, readable)
        if not previous:
            return None, None
        columns = header_maps[previous["header_map_path"]]["columns"]  # type: ignore[index]
        self._previous_folder = parent(self.store.key(previous["header_map_path"]))
        return (previous["modified"], previous["download_url"]), [c["normalized"] for c in columns]

    def _read_header_map(self, location: str) -> dict | None:
        try:
            return self.store.read_json(self.store.key(location))[0]
        except ValueError:  # written under another data folder: not comparable
            return None

    def _normalize(self) -> None:
        store, folder = self.store, self.folder
        normalized, header_map = layout.normalized_csv(folder), layout.header_map(folder)
        # The outputs appear together: whatever is here now was left by a killed attempt, and is rebuilt.
        present = store.sizes(folder)  # as the check under the lock listed it
        for key in (normalized, header_map):
            if key.rsplit("/", 1)[1] in present and key != store.staged(normalized):  # not the download's copy
                store.remove(key)
        previous, old_columns = self._previous()  # the slow, fallible reads come before the first write
        # A version made again after a crash keeps the version its report was made against (the run log no
        # longer gives one for a version it counts as finished).
        kept, _ = store.read_json(layout.changes_json(folder)) if "changes.json" in present else (None, None)
        if kept is not None and "previous_version" in kept:
            against = kept["previous_version"]
        else:
            against = store.location(self._previous_folder) if previous else None
        drop_source = self.config.retention.drop_source
        source, scan = layout.source_csv(folder), layout.source_scan(folder)
        try:
            result = make_normalized(store, folder)
            stats = {
                "identifier": self.identifier,
                "modified": self.modified,
                "download_url": self.url,
                "source_path": None if drop_source else store.location(source),
                "output_path": store.location(normalized),
                "header_map_path": store.location(header_map),
                "source_bytes": store.size(source),
                "source_encoding": result.encoding,
                "line_ending": result.line_ending,
                "rows": result.rows,
                "bytes": result.bytes,
                "sha256": result.sha256,
                "columns": result.header_map(),
                "changes_against": against,
            }
            store.write_json(header_map, stats)
        except (ValueError, UnicodeError) as exc:  # HeaderError, NotText, a changed download
            raise self.failure("cannot normalize the download", exc) from exc
        except OSError as exc:
            raise self.failure("cannot write the normalized file", exc) from exc
        if drop_source:
            store.remove(source)
            store.remove(scan)
        if self.set_status_message:
            self.set_status_message(f"{result.rows:,} rows")
            self.set_progress_percentage(100)
        change = diff_columns(old_columns, result.normalized) if old_columns is not None else None
        drift = json.dumps(change) if change else None
        # A report kept from before a crash is used if it was made from these bytes and its CSV is whole.
        report = kept or {}
        stale = report.get("normalized_sha256") != result.sha256
        if stale or report.get("cells_bytes") not in (None, present.get("changes.csv")):
            report = self._report_changes(stats) or {}
        figure = report["summary"] if "added" in report else None  # none without an earlier version
        if self.config.analytics.parquet:
            self._type_version(stats)
        done, failed, total = self.runlog().record_done(self.run_id, self.version, stats, drift, previous)
        self.show_run_progress(done, failed, total)
        say(
            f"[{done + failed}/{total}] {self.identifier} {self.modified}: {result.rows:,} rows"
            + (f" ({figure})" if figure else "")
            + f", {result.bytes / 1e6:,.1f} MB"
            + ("" if result.encoding == "utf-8" else f" (read as {result.encoding})")
        )

    def _report_changes(self, header_map: dict | None) -> dict | None:
        """The change report against the version the header map names; one that cannot be made is a NOTE, never
        a failure of a version whose CSV is good."""
        assert header_map is not None
        key = self.config.changes.key_for(self.identifier)
        report, note = write_change_report(self.store, self.folder, header_map, key)
        if note:
            self.runlog().note(self.run_id, self.version, f"{note}; retried next run")
        return report

    def _type_version(self, header_map: dict | None) -> None:
        """The typed files (pipeline/typed_version.py); like the change report, one that cannot be made is a NOTE."""
        assert header_map is not None
        if note := write_typed(self.store, self.folder, header_map, self.config.analytics.sentinels)[1]:
            self.runlog().note(self.run_id, self.version, f"{note}; retried next run")


class HospitalsDaily(RunTask):
    """Every CSV of every dataset in the theme, downloaded if new and normalized to snake_case headers."""

    metastore_url = luigi.Parameter(description="DKAN metastore items endpoint (set in luigi.cfg)")
    theme = luigi.Parameter(default="Hospitals", description="exact theme to select")
    verify = luigi.BoolParameter(default=False, description="ask the server whether finished files changed in place")
    deep_check = luigi.BoolParameter(
        default=False, description="hash every kept file against its recorded sha256 and repair what differs"
    )

    def requires(self):
        return self.clone(FetchCatalog)

    def output(self):
        return self.store.target(layout.report(self.run_id))

    def complete(self):
        return _report_status(self.store, self.run_id) == "succeeded"

    def run(self):
        # Side-effect free up to the yield: Luigi runs this method again from the top once the children are done.
        store = self.store
        status = _report_status(store, self.run_id)
        if status == "failed":  # a run that failed is not run again (one that succeeded is complete)
            raise RunClosed(self.run_id, status, store.location(layout.report(self.run_id)))
        snapshot, problem = store.read_json(layout.catalog_snapshot(self.run_id))
        if snapshot is None:
            raise OSError(f"{store.location(layout.catalog_snapshot(self.run_id))}: {problem or 'is missing'}")
        # The versions FetchCatalog queued; those it found finished, it has just checked (a no-op day yields none).
        queued = Catalog.from_json(snapshot).versions[: snapshot.get("queued")]
        children = [NormalizeCsv.for_version(self, version, wrapper_task_id=self.task_id) for version in queued]
        if self.set_status_message:  # the run log knows what is done: no second pass over the children's files
            message, percent = progress_line(*self.runlog().progress(self.run_id))
            self.set_status_message(message)
            self.set_progress_percentage(percent)
        if children:  # Luigi checks each one's complete() here, in this process: one listing, made now (once they
            store.prefetch("datasets", fresh=True)  # are done, it must show what a shared run's assistants made)
        yield children
        self.runlog().settle_queued(self.run_id)
        self.close_run_if_complete()


def inspect_version(store: Storage, folder: str, typed: bool, deep: bool = False) -> tuple[VersionCheck, list[str]]:
    """A version's files as a crash may have left them (with `typed`, its typed files too), and what is damaged.
    `deep` also hashes, and deletes a file whose bytes differ from its recorded sha256, so the run makes it again."""
    check = check_version(store, folder, typed=typed)
    if not (deep and check.complete):
        return check, check.problems
    with store.lock(folder):  # an overlapping run may be writing this version
        check = check_version(store, folder, fresh=True, typed=typed)
        damaged = deep_check(store, folder, check)
        for key in damaged:
            if voucher := VOUCHED_BY.get(PurePosixPath(key).name):  # a report or typed file as a whole, its
                store.remove(join(folder, voucher))  # voucher first
            store.remove(key)
        if not damaged:
            return check, check.problems
        return check_version(store, folder, fresh=True, typed=typed), [hash_problem(key) for key in damaged]


def _report_status(store: Storage, run_id: str) -> str | None:
    report, _ = store.read_json(layout.report(run_id))  # one a crash cut short counts as none: closed again
    return report.get("status") if report else None


def stored_stats(header_map: dict | None) -> dict:
    """What the run log keeps about a finished version, from its header map."""
    assert header_map is not None
    return {key: header_map[key] for key in STATS}
