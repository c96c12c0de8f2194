import luigi.configuration
import pytest

from tests.harness import Site
from tests.loopback_server import LoopbackServer


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def site(server):
    return Site(server)


@pytest.fixture
def luigi_setting():
    """Set luigi.cfg values for one test (worker processes are forked, so they see them too)."""
    config = luigi.configuration.get_config()
    saved = []

    def set_value(section: str, key: str, value: str) -> None:
        saved.append((section, key, config.get(section, key, None)))
        config.set(section, key, value)

    yield set_value
    for section, key, value in reversed(saved):
        if value is None:
            config.remove_option(section, key)
        else:
            config.set(section, key, value)


@pytest.fixture
def fast_http(luigi_setting):
    """Short timeouts and backoff, so the faults a test serves resolve in well under a second."""
    for key, value in {
        "backoff_factor": "0.01",
        "read_timeout": "0.5",
        "connect_timeout": "2",
        "retries": "3",
        "body_attempts": "3",
    }.items():
        luigi_setting("download", key, value)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster for the session, started on first use (tests/postgres_support.py)."""
    from tests.postgres_support import start_postgres

    server = start_postgres()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def runlog_engine(request, luigi_setting, tmp_path):
    """Runs the test once per run-log engine: `[runlog] url` is "" (SQLite in the data folder) or a fresh
    PostgreSQL database, with its password in the URL. Returns that URL."""
    if request.param == "sqlite":
        yield ""
        return
    url = request.getfixturevalue("postgres").url()
    luigi_setting("runlog", "url", url)
    yield url
    assert not list(tmp_path.rglob("runlog.sqlite")), "a run on PostgreSQL wrote a SQLite run log"
