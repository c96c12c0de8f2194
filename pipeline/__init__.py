"""Daily incremental ingestion of the CMS Provider Data Hospitals CSVs, as a Luigi task graph.

Run: luigi --module pipeline HospitalsDaily --workers 8
"""

from pipeline import console, preflight
from pipeline.dry_run import HospitalsPlan
from pipeline.tasks import DownloadCsv, FetchCatalog, HospitalsDaily, NormalizeCsv

__all__ = ["DownloadCsv", "FetchCatalog", "HospitalsDaily", "HospitalsPlan", "NormalizeCsv"]

console.install()
preflight.check()
