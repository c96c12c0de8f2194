"""Settings of sections [download] and [retention], and the task parameter that carries them to workers.

Luigi reads a Config class where it is instantiated. A worker process started by spawning (Windows) re-reads
luigi.cfg but never sees the command line, so the settings are resolved once, where HospitalsDaily is created,
and handed down to every task as a hidden, insignificant parameter.
"""

import time
from dataclasses import asdict, fields

import luigi
from luigi.parameter import ParameterVisibility

from pipeline.http import HttpSettings


class download(luigi.Config):  # noqa: N801 - Luigi names the config section after the class
    connect_timeout = luigi.FloatParameter(default=10.0, description="seconds to wait for a connection")
    read_timeout = luigi.FloatParameter(default=60.0, description="seconds to wait for the next bytes")
    retries = luigi.IntParameter(default=5, description="urllib3 retries for connect errors, 429 and 5xx")
    backoff_factor = luigi.FloatParameter(default=1.0, description="exponential backoff between retries")
    body_attempts = luigi.IntParameter(default=3, description="tries for a body cut off mid-transfer")
    user_agent = luigi.Parameter(default="cms-hospitals-pipeline/0.1 (daily Luigi ingestion)")
    min_rate = luigi.IntParameter(default=10_000, description="bytes/s a body must keep up; 0 for no floor")
    min_rate_window = luigi.FloatParameter(default=60.0, description="seconds over which min_rate is measured")
    max_bytes = luigi.IntParameter(default=5 * 1024**3, description="largest decoded file; 0 for no limit")
    run_minutes = luigi.FloatParameter(default=0.0, description="minutes a run may download for; 0 for no deadline")


class retention(luigi.Config):  # noqa: N801
    keep_versions = luigi.IntParameter(default=0, description="finished versions kept per dataset; 0 keeps all")
    drop_source = luigi.BoolParameter(default=False, description="delete source.csv once normalized.csv is written")


def current() -> dict:
    d, r = download(), retention()
    # Every HttpSettings field is a [download] setting, but the deadline: fixed here, once, where the run starts.
    values = {f.name: getattr(d, f.name) for f in fields(HttpSettings) if f.name != "deadline"}
    http = HttpSettings(**values, deadline=time.time() + 60 * d.run_minutes if d.run_minutes else 0.0)
    return {"download": asdict(http), "retention": {"keep_versions": r.keep_versions, "drop_source": r.drop_source}}


class SettingsParameter(luigi.DictParameter):
    """Empty means "read them now", which happens in the process that creates the task."""

    def __init__(self):
        super().__init__(default={}, significant=False, visibility=ParameterVisibility.HIDDEN,
                         description="[download] and [retention] settings, resolved where the run starts")

    def normalize(self, value):
        return super().normalize(value or current())


def http_settings(settings) -> HttpSettings:
    return HttpSettings(**settings["download"])
