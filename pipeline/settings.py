"""The run's settings: sections [download], [retention], [storage], [changes] and [analytics], one typed object,
and the task parameter that carries them to the workers.

Luigi reads a Config class where it is instantiated. A worker process started by spawning (Windows) re-reads
luigi.cfg but never sees the command line, so the settings are resolved once, where HospitalsDaily is created,
and handed down to every task as a hidden, insignificant parameter (a dict on the wire, `Settings` in code);
but for the scratch folder, which is an assistant's own (`Settings.scratch_dir`). With them goes whether the
job's wrapper (pipeline/shared_run.py) tells the operator, so that no assistant does it with its own settings.
The defaults live in the dataclasses only; the Config classes and luigi.cfg take them from there.
"""

import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

import luigi
import luigi.configuration
import luigi.interface
from luigi.freezing import FrozenOrderedDict
from luigi.parameter import ParameterVisibility

from pipeline.http import HttpSettings
from pipeline.runlog_engines import url as runlog_urls
from pipeline.storage import data_dir_problem, normalized_data_dir


@dataclass(frozen=True)
class Retention:
    keep_versions: int = 0  # finished versions kept per dataset; 0 keeps all
    drop_source: bool = False  # delete source.csv once normalized.csv is written


@dataclass(frozen=True)
class StorageSettings:
    scratch_dir: str = ""  # where downloads for object storage are made before upload; empty: the system's temp


@dataclass(frozen=True)
class ChangeSettings:
    keys: str = ""  # per-dataset keys of the change report: "<identifier>: col1+col2, <identifier>: col"

    def __post_init__(self) -> None:
        parse_keys(self.keys)  # a typo stops the run where it starts, not in a task

    def key_for(self, identifier: str) -> list[str] | None:
        """The configured key of a dataset, or None: found from the data."""
        return parse_keys(self.keys).get(identifier)


def parse_keys(text: str) -> dict[str, list[str]]:
    """`[changes] keys`: identifier -> the normalized column names of its key."""
    keys = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        identifier, colon, columns = part.partition(":")
        names = [name.strip() for name in columns.split("+")]
        if not colon or not identifier.strip() or not all(names):
            raise ValueError(f"[changes] keys: {part!r} is not <identifier>: column+column")
        keys[identifier.strip()] = names
    return keys


@dataclass(frozen=True)
class AnalyticsSettings:
    parquet: bool = False  # a typed Parquet file and data dictionary per version, latest/hospitals.duckdb
    null_values: str = "Not Available, Not Applicable, N/A"  # values read as NULL in the typed files

    @property
    def sentinels(self) -> list[str]:
        return [value.strip() for value in self.null_values.split(",") if value.strip()]


# Set by an assistant (pipeline/assistant.py) to its machine's own scratch folder: the run's is a folder on the
# job's machine. Through the environment, so its task processes see it, spawned ones too.
ASSISTANT_SCRATCH_ENV = "PIPELINE_ASSISTANT_SCRATCH_DIR"
# Set by pipeline/shared_run.py in the job's process, where the run's settings are made: it prints the summary and
# sends the mail and the pings itself, with the job's configuration (which an assistant may not have).
BY_WRAPPER_ENV = "CMS_PIPELINE_SUMMARY_BY_WRAPPER"


@dataclass(frozen=True)
class Settings:
    download: HttpSettings
    retention: Retention
    storage: StorageSettings = StorageSettings()
    by_wrapper: bool = False  # the summary, the mail and the pings are the job's wrapper's (BY_WRAPPER_ENV)
    changes: ChangeSettings = ChangeSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()

    @property
    def scratch_dir(self) -> str:
        """The scratch folder of the machine this process runs on: an assistant's own, else the run's."""
        return os.environ.get(ASSISTANT_SCRATCH_ENV) or self.storage.scratch_dir

    @classmethod
    def from_dict(cls, data) -> "Settings":
        return cls(
            HttpSettings(**data["download"]),
            Retention(**data["retention"]),
            StorageSettings(**data["storage"]),
            bool(data.get("by_wrapper", False)),
            ChangeSettings(**data.get("changes", {})),
            AnalyticsSettings(**data.get("analytics", {})),
        )

    def to_dict(self) -> dict:
        return {
            "download": asdict(self.download),
            "retention": asdict(self.retention),
            "storage": asdict(self.storage),
            "by_wrapper": self.by_wrapper,
            "changes": asdict(self.changes),
            "analytics": asdict(self.analytics),
        }


_HTTP, _RETENTION, _STORAGE, _CHANGES = HttpSettings(), Retention(), StorageSettings(), ChangeSettings()
_ANALYTICS = AnalyticsSettings()


class download(luigi.Config):  # Luigi names the config section after the class
    connect_timeout = luigi.FloatParameter(default=_HTTP.connect_timeout, description="seconds to wait to connect")
    read_timeout = luigi.FloatParameter(default=_HTTP.read_timeout, description="seconds to wait for the next bytes")
    retries = luigi.IntParameter(default=_HTTP.retries, description="urllib3 retries for connect errors, 429 and 5xx")
    backoff_factor = luigi.FloatParameter(default=_HTTP.backoff_factor, description="exponential backoff, retries")
    body_attempts = luigi.IntParameter(default=_HTTP.body_attempts, description="tries for a body cut off mid-way")
    user_agent = luigi.Parameter(default=_HTTP.user_agent)
    min_rate = luigi.IntParameter(default=_HTTP.min_rate, description="bytes/s a body must keep up; 0 for no floor")
    min_rate_window = luigi.FloatParameter(default=_HTTP.min_rate_window, description="seconds min_rate is over")
    max_bytes = luigi.IntParameter(default=_HTTP.max_bytes, description="largest decoded file; 0 for no limit")
    run_minutes = luigi.FloatParameter(
        default=_HTTP.run_minutes, description="minutes a run may download for; 0 for no deadline"
    )


class retention(luigi.Config):
    keep_versions = luigi.IntParameter(default=_RETENTION.keep_versions, description="versions kept per dataset")
    drop_source = luigi.BoolParameter(default=_RETENTION.drop_source, description="delete source.csv once normalized")


class storage(luigi.Config):
    scratch_dir = luigi.Parameter(
        default=_STORAGE.scratch_dir, description="local folder for downloads to object storage; empty: system temp"
    )


class changes(luigi.Config):
    keys = luigi.Parameter(
        default=_CHANGES.keys,
        description="change report keys: <identifier>: col1+col2, ...; empty: found from the data",
    )


class analytics(luigi.Config):
    parquet = luigi.BoolParameter(
        default=_ANALYTICS.parquet, description="typed Parquet files and latest/hospitals.duckdb (the analytics extra)"
    )
    null_values = luigi.Parameter(
        default=_ANALYTICS.null_values, description="values that are NULL in the typed files, comma-separated"
    )


def _configured_runlog_url() -> str:
    return luigi.configuration.get_config().get("runlog", "url", "")


# A process that never saw the command line (a spawned worker, an assistant) finds a password in its luigi.cfg.
runlog_urls.PASSWORD_SOURCES.append(_configured_runlog_url)
# Luigi calls a config_path fallback "deprecated"; here it is the point: `[runlog] url`, read by every task.
warnings.filterwarnings("ignore", r"The use of the configuration \[runlog\] url", DeprecationWarning)
# Luigi reads these [core] keys (luigi/rpc.py) without declaring them: an overlay that sets them (central.cfg) got
# an UnconsumedParameterWarning for each on every command.
_RPC_KEYS = {"rpc_retry_attempts", "rpc_retry_wait", "rpc_connect_timeout"}
luigi.interface.core.ignore_unconsumed = {*luigi.interface.core.ignore_unconsumed, *_RPC_KEYS}


class RunLogUrlParameter(luigi.Parameter):
    """`[runlog] url` (`--runlog-url` on the command line) without its password, which stays in this process
    (pipeline/runlog_engines/url.py): resolved where the task is created and handed down like `settings`."""

    def __init__(self):
        super().__init__(
            default="",
            config_path={"section": "runlog", "name": "url"},
            significant=False,
            visibility=ParameterVisibility.HIDDEN,
            description="where the run log is: empty for runlog.sqlite in data_dir, sqlite:///path, postgresql://...",
        )

    def normalize(self, value):
        runlog_urls.engine(value or "")  # an unknown scheme stops here, where the run starts
        return runlog_urls.public(value or "")


def current() -> dict:
    d, r, s, c, a = download(), retention(), storage(), changes(), analytics()
    # Every HttpSettings field is a [download] setting, but the deadline: fixed here, once, where the run starts.
    values = {f.name: getattr(d, f.name) for f in fields(HttpSettings) if f.name != "deadline"}
    http = HttpSettings(**values, deadline=time.time() + 60 * d.run_minutes if d.run_minutes else 0.0)
    kept = Retention(r.keep_versions, r.drop_source)
    wrapped = bool(os.environ.get(BY_WRAPPER_ENV))
    typed = AnalyticsSettings(a.parquet, a.null_values)
    return Settings(http, kept, StorageSettings(s.scratch_dir), wrapped, ChangeSettings(c.keys), typed).to_dict()


class SettingsParameter(luigi.DictParameter):
    """Empty means "read them now", which happens in the process that creates the task."""

    def __init__(self):
        super().__init__(
            default={},
            significant=False,
            visibility=ParameterVisibility.HIDDEN,
            description="[download] and [retention] settings, resolved where the run starts",
        )

    def normalize(self, value):
        if isinstance(value, FrozenOrderedDict):  # already normalized: passed on by clone(), task after task
            return value
        return super().normalize(value or current())


def http_settings(settings) -> HttpSettings:
    return Settings.from_dict(settings).download


def default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]


class FolderParameter(luigi.Parameter):
    """The data folder: a local folder, made absolute where the run starts (the paths in the run log and the
    reports then mean the same from wherever they are read; cron and Task Scheduler start in other folders),
    or s3://bucket/prefix. Any other URL is refused, never taken as a folder named after its scheme."""

    def normalize(self, value):
        if problem := data_dir_problem(value, check_runlog=False):
            raise ValueError(problem)
        return normalized_data_dir(value)


class RunIdParameter(luigi.Parameter):
    """Empty means "now", taken when the run's task is created (not once, when the module was imported)."""

    def normalize(self, value):
        return value or default_run_id()
