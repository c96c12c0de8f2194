"""What the tests of the typed files share: DuckDB, or a skip naming the extra that brings it."""

import importlib.util

import pytest

HAS_DUCKDB = importlib.util.find_spec("duckdb") is not None
needs_duckdb = pytest.mark.skipif(
    not HAS_DUCKDB, reason="needs DuckDB, the analytics extra: pip install -e '.[analytics]' (in requirements-dev.txt)"
)
