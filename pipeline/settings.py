"""Settings read from luigi.cfg (section [download]); task parameters carry the rest."""

import luigi

from pipeline.http import HttpSettings


class download(luigi.Config):  # noqa: N801 - Luigi names the config section after the class
    connect_timeout = luigi.FloatParameter(default=10.0, description="seconds to wait for a connection")
    read_timeout = luigi.FloatParameter(default=60.0, description="seconds to wait for the next bytes")
    retries = luigi.IntParameter(default=5, description="urllib3 retries for connect errors, 429 and 5xx")
    backoff_factor = luigi.FloatParameter(default=1.0, description="exponential backoff between retries")
    body_attempts = luigi.IntParameter(default=3, description="tries for a body cut off mid-transfer")
    user_agent = luigi.Parameter(default="cms-hospitals-pipeline/0.1 (daily Luigi ingestion)")

    def http_settings(self) -> HttpSettings:
        return HttpSettings(self.connect_timeout, self.read_timeout, self.retries, self.backoff_factor,
                            self.body_attempts, self.user_agent)


class retention(luigi.Config):  # noqa: N801
    keep_versions = luigi.IntParameter(default=0, description="finished versions kept per dataset; 0 keeps all")
    drop_source = luigi.BoolParameter(default=False, description="delete source.csv once normalized.csv is written")
