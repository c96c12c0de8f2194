"""HospitalsPlan: the dry run, as a Luigi task. It shares HospitalsDaily's settings."""

import warnings
from pathlib import Path

import luigi

from pipeline import layout
from pipeline.metastore import load_catalog
from pipeline.plan import format_table, plan
from pipeline.runlog import read_state
from pipeline.settings import FolderParameter, RunIdParameter, RunLogUrlParameter, Settings, SettingsParameter
from pipeline.storage import Storage, open_storage
from pipeline.tasks import NormalizeCsv

# Luigi calls a config_path fallback "deprecated"; here it is the point: one [HospitalsDaily] section for both tasks.
warnings.filterwarnings("ignore", r"The use of the configuration \[HospitalsDaily\]", DeprecationWarning)


def _daily_setting(name: str, kind: type[luigi.Parameter] = luigi.Parameter, **kwargs) -> luigi.Parameter:
    """A parameter that falls back to HospitalsDaily's value in luigi.cfg, so a plan sees the same settings."""
    return kind(config_path={"section": "HospitalsDaily", "name": name}, **kwargs)


class HospitalsPlan(luigi.Task):
    """Dry run: which versions are new, changed, up to date, failed last time, retired or invalid.

    Downloads no file and writes nothing but its own report, reports/plan-<run_id>.json.
    """

    data_dir = _daily_setting("data_dir", FolderParameter, default="data")
    metastore_url = _daily_setting("metastore_url")
    theme = _daily_setting("theme", default="Hospitals")
    run_id = RunIdParameter(default="")
    settings = SettingsParameter()
    runlog_url = RunLogUrlParameter()

    @property
    def store(self) -> Storage:
        return open_storage(self.data_dir, self.runlog_url, Settings.from_dict(self.settings).scratch_dir)

    def output(self):
        return self.store.target(layout.plan_report(self.run_id))

    def complete(self):
        return self.store.read_json(layout.plan_report(self.run_id))[0] is not None  # one cut short: made again

    def run(self):
        store = self.store
        catalog = load_catalog(self.metastore_url, self.theme, self.settings)
        known, failed, retired = read_state(layout.runlog_db(Path(self.data_dir)), self.theme, self.runlog_url)
        store.prefetch("datasets")
        rows = plan(catalog, lambda v: NormalizeCsv.for_version(self, v).complete(), known, failed, retired)
        store.write_json(
            layout.plan_report(self.run_id),
            {"run_id": self.run_id, "metastore_url": self.metastore_url, "theme": self.theme, "versions": rows},
        )
        print(format_table(rows) + f"\nPlan: {store.location(layout.plan_report(self.run_id))}", flush=True)
