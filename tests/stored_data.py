"""The data folder a test's runs write, read back the way the test needs it, whichever storage it is on: a
local folder or a prefix in a bucket of the test's S3 server (tests/s3_support.py). Tests parametrized over
storage (the `data` fixture in tests/conftest.py) use only this, so one test body checks both."""

from pathlib import Path, PurePosixPath


class LocalData:
    kind = "local"

    def __init__(self, root: Path):
        self.root = root
        self.dir = str(root)
        self.runlog_dir = root  # where the default run log is (tests/harness.py: query)

    def key(self, where: str) -> str:
        path = Path(where)
        return path.relative_to(self.root).as_posix() if path.is_absolute() else where

    def read(self, where: str) -> bytes:
        """The bytes of a key (`latest/x.csv`) or of a location a report gives."""
        return (self.root / self.key(where)).read_bytes()

    def exists(self, where: str) -> bool:
        return (self.root / self.key(where)).is_file()

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        if path.exists():
            path.chmod(0o644)  # the archive's files are read-only
        path.write_bytes(data)

    def delete(self, key: str) -> None:
        (self.root / key).unlink()

    def listing(self, prefix: str = "") -> list[str]:
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in (self.root / prefix).rglob("*")
            if p.is_file() and p.name != ".lock" and not p.name.startswith("runlog.sqlite")
        )

    def folders(self, prefix: str) -> set[str]:
        """The names of the folders directly under `prefix`."""
        return {p.name for p in (self.root / prefix).iterdir() if p.is_dir()}


class BucketData:
    kind = "s3"

    def __init__(self, client, bucket: str, prefix: str, runlog_dir: Path):
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.dir = f"s3://{bucket}/{prefix}"
        self.runlog_dir = runlog_dir  # unused by query(): object storage's run log is always given by URL

    def key(self, where: str) -> str:
        head = f"{self.dir}/"
        return where[len(head) :] if where.startswith(head) else where

    def read(self, where: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{self.key(where)}")["Body"].read()

    def exists(self, where: str) -> bool:
        return self.key(where) in self.listing(str(PurePosixPath(self.key(where)).parent))

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")

    def listing(self, prefix: str = "") -> list[str]:
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{prefix}"
        )
        for page in pages:
            found += [item["Key"][len(self.prefix) + 1 :] for item in page.get("Contents", [])]
        return sorted(found)

    def folders(self, prefix: str) -> set[str]:
        return {
            key[len(prefix) :].strip("/").split("/")[0] for key in self.listing(prefix) if "/" in key[len(prefix) + 1 :]
        }
