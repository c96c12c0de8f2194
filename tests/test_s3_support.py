"""The S3 server the tests start (tests/s3_support.py) answers as S3 does, and counts what it is asked."""

from collections import Counter

import pytest

from tests.s3_support import SECRET_KEY

pytestmark = pytest.mark.integration


def error_code(call) -> str:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"]


def test_put_then_get_gives_back_the_bytes(s3):
    client, bucket = s3.client(), s3.new_bucket()
    body = "naïve,ünïcode\r\n".encode() + bytes(range(256))
    client.put_object(Bucket=bucket, Key="datasets/x/1/source.csv", Body=body)
    assert client.get_object(Bucket=bucket, Key="datasets/x/1/source.csv")["Body"].read() == body
    listed = client.list_objects_v2(Bucket=bucket, Prefix="datasets/")["Contents"]
    assert [(item["Key"], item["Size"]) for item in listed] == [("datasets/x/1/source.csv", len(body))]


def test_request_counter_rises_by_the_requests_made(s3):
    client, bucket = s3.client(), s3.new_bucket()
    before, total = s3.request_counts(bucket), s3.request_count()
    for n in range(3):
        client.put_object(Bucket=bucket, Key=f"k{n}", Body=b"x")
    assert s3.request_counts(bucket) - before == Counter(PUT=3)
    client.head_object(Bucket=bucket, Key="k0")
    client.get_object(Bucket=bucket, Key="k0")["Body"].read()
    client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "k0"})
    client.list_objects_v2(Bucket=bucket)
    client.delete_object(Bucket=bucket, Key="copy")
    assert s3.request_counts(bucket) - before == Counter(PUT=3, GET=2, COPY=1, LIST=1, DELETE=1)  # HEAD is a GET
    assert s3.request_count() - total == 8


def test_multipart_upload_of_20_mb(s3, tmp_path):
    from boto3.s3.transfer import TransferConfig

    client, bucket = s3.client(), s3.new_bucket()
    source = tmp_path / "big.csv"
    body = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    source.write_bytes(body)
    before = s3.request_counts(bucket)
    mib = 1024 * 1024
    client.upload_file(str(source), bucket, "big.csv", Config=TransferConfig(multipart_threshold=8 * mib))
    assert s3.request_counts(bucket) - before == Counter(POST=2, PUT=3)  # create, 3 parts of 8 MiB, complete
    assert client.head_object(Bucket=bucket, Key="big.csv")["ETag"].endswith('-3"')
    assert client.get_object(Bucket=bucket, Key="big.csv")["Body"].read() == body


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_an_empty_bucket_of_its_own(s3, turn):
    client, bucket = s3.client(), s3.new_bucket()
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    client.put_object(Bucket=bucket, Key="left-behind", Body=str(turn).encode())


def test_answers_errors_as_s3_does(s3):
    client, bucket = s3.client(), s3.new_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"first")
    assert error_code(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")) == (
        "PreconditionFailed"
    )
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"
    assert error_code(lambda: client.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")) == "NoSuchBucket"
    assert error_code(lambda: client.get_object(Bucket=bucket, Key="missing")) == "NoSuchKey"
    wrong = s3.client(secret_key="not-the-" + SECRET_KEY)
    assert error_code(lambda: wrong.list_objects_v2(Bucket=bucket)) == "SignatureDoesNotMatch"
    assert SECRET_KEY not in s3.log()


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_keeps_the_data_across_a_restart(s3, kill):
    from botocore.exceptions import EndpointConnectionError

    client, bucket = s3.client(), s3.new_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"kept")
    s3.stop(kill=kill)
    with pytest.raises(EndpointConnectionError):
        client.list_objects_v2(Bucket=bucket)
    s3.start()
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"kept"
