import luigi.configuration
import pytest

from tests.harness import Site
from tests.loopback_server import LoopbackServer


@pytest.fixture(scope="session", autouse=True)
def luigi_logging():
    """Luigi's logging, set up once per process by the first luigi.build, as every run_daily has it: here, so its
    handler writes to the session's stderr, not to the capture of whichever test (capfd) happened to run first,
    which is closed after it (a later test would see "--- Logging error ---" tracebacks)."""
    import luigi.interface
    from luigi.setup_logging import InterfaceLogging

    InterfaceLogging.setup(luigi.interface.core(log_level="WARNING"))


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


@pytest.fixture(scope="session")
def s3():
    """A SeaweedFS S3 server for the session, started on first use (tests/s3_support.py); each test takes its
    own bucket with `s3.new_bucket()`."""
    from tests.s3_support import start_s3

    server = start_s3()
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


@pytest.fixture
def bucket_data(request, tmp_path, luigi_setting, monkeypatch):
    """A data folder in a fresh bucket of the session's S3 server: its keys in this process's environment
    (which workers and commands inherit), the run log as the test's run-log engine has it, else a SQLite file in
    tmp_path, scratch in tmp_path/scratch (which the test can check is left empty). A tests/stored_data.py
    reader of it."""
    from tests.stored_data import BucketData

    server = request.getfixturevalue("s3")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    if not luigi.configuration.get_config().get("runlog", "url", ""):
        luigi_setting("runlog", "url", f"sqlite:///{(tmp_path / 'runlog.sqlite').as_posix().lstrip('/')}")
    luigi_setting("storage", "scratch_dir", str(tmp_path / "scratch"))
    return BucketData(server.client(), server.new_bucket(), "hospitals", tmp_path)


@pytest.fixture(params=["local", "s3"])
def data(request, tmp_path):
    """Runs the test once per storage: the data folder is tmp_path/data, or `bucket_data`."""
    from tests.stored_data import LocalData

    if "runlog_engine" in request.fixturenames:  # first: the bucket's run log is the engine's
        request.getfixturevalue("runlog_engine")
    if request.param == "local":
        return LocalData(tmp_path / "data")
    return request.getfixturevalue("bucket_data")
