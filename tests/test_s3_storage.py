"""What only object storage has: requests counted by the S3 server itself, a bucket that is missing, refuses
the keys or cannot be reached, and uploads cut short. What both storages share is tested once for both (the
`data` fixture: tests/test_daily_run.py, tests/test_integrity.py, tests/test_power_cut.py, tests/test_crash.py)."""

import json

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, query, run_command, run_daily, write_project_cfg

pytestmark = pytest.mark.integration


def many_datasets(site: Site, count: int) -> None:
    for n in range(count):
        site.dataset(f"ds{n:02d}-hosp", "2025-04-08", {f"F{n}.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(3, 5, n))})


def no_op_requests(site: Site, s3, bucket_data, datasets: int):
    before = s3.request_counts(bucket_data.bucket)
    ok, report = run_daily(site, bucket_data.dir)
    assert ok and report["counts"]["up_to_date"] == datasets and report["counts"]["downloaded"] == 0
    return s3.request_counts(bucket_data.bucket) - before


def test_a_no_op_day_at_75_datasets_costs_a_few_requests_and_as_many_as_at_5(site, s3, bucket_data):
    """Completeness comes from one listing per process, not a request per file: the count grows with pages of
    1,000 keys, not with datasets."""
    many_datasets(site, 5)
    assert run_daily(site, bucket_data.dir)[0]
    at_5 = no_op_requests(site, s3, bucket_data, 5)
    many_datasets(site, 75)
    assert run_daily(site, bucket_data.dir)[0]
    at_75 = no_op_requests(site, s3, bucket_data, 75)
    print(f"no-op S3 requests: {sum(at_5.values())} at 5 datasets, {sum(at_75.values())} at 75: {dict(at_75)}")
    assert sum(at_75.values()) <= 30, at_75
    assert at_75 == at_5


def test_a_cold_day_costs_a_few_requests_per_version_and_one_listing(site, s3, bucket_data):
    """The tasks share one client and one listing (they run in threads of one process: pipeline/task_threads.py):
    a version costs its five uploads, its copy to latest/, a listing of its folder under its lock in each of its
    two tasks and the reads of its scan and report; 21 requests a version when each task was a process."""
    many_datasets(site, 20)
    before = s3.request_counts(bucket_data.bucket)
    ok, report = run_daily(site, bucket_data.dir, workers=8)
    assert ok and report["counts"]["downloaded"] == 20
    cold = s3.request_counts(bucket_data.bucket) - before
    print(f"cold S3 requests for 20 versions: {sum(cold.values())}: {dict(cold)}")
    assert cold["LIST"] <= 3 * 20 and cold["PUT"] + cold["COPY"] <= 7 * 20, cold
    assert sum(cold.values()) <= 12 * 20, cold


def s3_command(tmp_path, data_dir: str, *extra: str):
    runlog = f"sqlite:///{(tmp_path / 'runlog.sqlite').as_posix().lstrip('/')}"
    return run_command(tmp_path, "--data-dir", data_dir, "--runlog-url", runlog, *extra)


@pytest.mark.parametrize("case", ["bucket missing", "access denied", "endpoint down"])
def test_a_bucket_that_cannot_be_used_stops_the_run_in_one_line_before_anything_is_fetched(
    site, server, s3, tmp_path, monkeypatch, case
):
    """Exit 4 and one line naming the bucket and the cause; never a credential, never a traceback."""
    from tests.luigid_support import free_port
    from tests.s3_support import SECRET_KEY

    write_project_cfg(site, tmp_path)
    many_datasets(site, 2)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3.new_bucket()
    if case == "bucket missing":
        bucket = "no-such-bucket-here"
        expected = f"pipeline: s3://{bucket}: the bucket does not exist (NoSuchBucket)"
    elif case == "access denied":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-31f7")
        expected = f"pipeline: s3://{bucket}: access denied (403): check the credentials and the bucket's policy"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        expected = f"pipeline: s3://{bucket}: endpoint unreachable (Could not connect to the endpoint URL: "
    server.clear()
    result = s3_command(tmp_path, f"s3://{bucket}/hospitals")
    assert result.returncode == 4, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(expected), line
    assert server.paths() == [] and not (tmp_path / "runlog.sqlite").exists()
    assert SECRET_KEY not in result.stdout + result.stderr and "not-the-secret" not in result.stderr


def test_the_real_command_writes_to_the_bucket_and_leaves_no_local_data(site, s3, tmp_path, monkeypatch):
    write_project_cfg(site, tmp_path)
    many_datasets(site, 3)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3.new_bucket()
    result = s3_command(tmp_path, f"s3://{bucket}/hospitals")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Report: s3://{bucket}/hospitals/reports/" in result.stdout
    keys = [item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sum(key.startswith("hospitals/latest/") for key in keys) == 5  # 3 files, latest.json, index.csv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["luigi.cfg", "runlog.sqlite"]
    assert query(tmp_path, "SELECT status FROM runs") == [("succeeded",)]
    index = s3.client().get_object(Bucket=bucket, Key="hospitals/latest/latest.json")["Body"].read()
    assert len(json.loads(index)["datasets"]) == 3


def test_an_upload_a_killed_writer_left_unfinished_is_aborted_by_the_next_run(site, s3, bucket_data):
    """A multipart upload cut short leaves no key (nothing partial is ever visible), but its parts are stored
    until aborted: the next run's sweep aborts those of every folder nobody holds the lock of."""
    many_datasets(site, 2)
    client, bucket = s3.client(), bucket_data.bucket
    key = "hospitals/datasets/ds00-hosp/2025-04-08-0badc0de/source.csv"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * (5 * 1024 * 1024))
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert run_daily(site, bucket_data.dir)[0]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "datasets/ds00-hosp/2025-04-08-0badc0de/source.csv" not in bucket_data.listing()


class FaultyProxy:
    """A reverse proxy in front of the S3 server that answers some requests itself with an S3 error (503
    SlowDown, 403 AccessDenied) and forwards the rest byte for byte (the Host header too, so signatures hold)."""

    def __init__(self, upstream_port: int, fault):
        import http.client
        import http.server
        import threading

        proxy = self
        self.fault, self.seen = fault, []  # fault(method, path, n) -> (status, code) or None

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append((self.command, self.path))
                if answer := proxy.fault(self.command, self.path, len(proxy.seen)):
                    status, code = answer
                    text = f"<Error><Code>{code}</Code><Message>{code} from the test</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(text) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(text)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                reply = upstream.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_slow_down_is_retried_by_the_client_and_a_refused_upload_fails_its_dataset_naming_the_key(
    site, s3, bucket_data, monkeypatch, capfd
):
    """Two SlowDowns on every first upload of a file are retried (botocore's standard mode) and the run
    succeeds; an upload refused for good fails its dataset alone, in one line naming the bucket and key."""
    many_datasets(site, 3)
    attempts: dict[str, int] = {}

    def fault(method: str, path: str, _n: int):
        if method != "PUT" or "source.csv" not in path:
            return None
        if "ds02-hosp" in path:
            return 403, "AccessDenied"
        attempts[path] = attempts.get(path, 0) + 1
        return (503, "SlowDown") if attempts[path] <= 2 else None

    proxy = FaultyProxy(s3.port, fault)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        ok, report = run_daily(site, bucket_data.dir)
    finally:
        proxy.close()
    assert not ok and report["counts"]["downloaded"] == 2 and report["counts"]["failed"] == 1
    assert sorted(attempts.values()) == [3, 3]  # two SlowDowns, then the upload that succeeded
    [failed] = [entry for entry in report["datasets"] if entry["status"] == "failed"]
    assert failed["identifier"] == "ds02-hosp"
    assert f": s3://{bucket_data.bucket}/hospitals/datasets/ds02-hosp/" in failed["error"]
    assert failed["error"].endswith(
        "/source.csv: access denied (AccessDenied): check the credentials and the bucket's policy"
    )
    assert "Traceback" not in capfd.readouterr().err


def test_the_dry_run_plans_from_the_bucket_and_writes_only_its_plan(site, s3, bucket_data):
    import luigi

    from pipeline.dry_run import HospitalsPlan

    many_datasets(site, 3)
    assert run_daily(site, bucket_data.dir)[0]
    site.dataset("ds01-hosp", "2025-05-01", {"F1.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(4, 5, "new"))})
    before = set(bucket_data.listing())
    task = HospitalsPlan(data_dir=bucket_data.dir, run_id="plan-1", metastore_url=site.metastore_url)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert set(bucket_data.listing()) == before | {"reports/plan-plan-1.json"}
    plan = json.loads(bucket_data.read("reports/plan-plan-1.json"))
    assert sorted((row["identifier"], row["status"]) for row in plan["versions"]) == [
        ("ds00-hosp", "up_to_date"),
        ("ds01-hosp", "changed"),
        ("ds02-hosp", "up_to_date"),
    ]
