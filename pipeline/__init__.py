"""Daily incremental ingestion of the CMS Provider Data Hospitals CSVs, as a Luigi task graph.

Run: luigi --module pipeline HospitalsDaily --workers 8
"""

import pipeline.config_path  # noqa: F401 - first, before Luigi is imported (python -m pipeline.*)
from pipeline import console, keep_alive, notify, preflight, scheduler_speedups, task_threads
from pipeline.dry_run import HospitalsPlan
from pipeline.tasks import DownloadCsv, FetchCatalog, HospitalsDaily, NormalizeCsv

__all__ = ["DownloadCsv", "FetchCatalog", "HospitalsDaily", "HospitalsPlan", "NormalizeCsv"]

scheduler_speedups.apply()  # Luigi 3.8.1's scheduler without a pass over every task per get_work
task_threads.apply()  # the job's tasks in threads of the luigi process, not a process each
console.install()
keep_alive.install()  # a keep-alive worker leaves once its run is closed
notify.install()  # Luigi's scheduler mails a disabled task only where failure mails are on
preflight.check()
