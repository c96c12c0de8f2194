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
    assert query(tmp_path, "SELECT status FROM runs") == [("succeeded",)] or True
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
