"""The run's one metastore request: fetch the DKAN items and select the theme's CSV distributions."""

from pipeline.catalog import Catalog, CatalogError, parse_catalog
from pipeline.http import fetch_bytes
from pipeline.settings import http_settings


def load_catalog(metastore_url: str, theme: str, settings) -> Catalog:
    """The theme's catalog; a catalog with nothing of the theme is an error that lists the themes there are."""
    catalog = parse_catalog(fetch_bytes(metastore_url, http_settings(settings)), theme)
    if not catalog.versions and not catalog.invalid:
        raise CatalogError(catalog.no_match_message(theme))
    return catalog
