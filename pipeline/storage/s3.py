"""The data folder as a prefix in S3-compatible object storage, through boto3 (the `s3` extra).

Endpoint, region and credentials come from boto3's standard chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...,
~/.aws/config, an instance role); nothing of them is kept or shown here. A PUT, and a multipart upload's
completion, makes a key visible only whole, so nothing partial is ever under a final key: files are made in a
local scratch folder and uploaded (in parts, from disk, so memory stays flat), latest/ files are server-side
copies. One listing of datasets/ per process answers the version checks (`prefetch`); a "not finished" answer
from it is asked again of the server. What a killed writer leaves (a staged copy without its source, an
unfinished multipart upload, a scratch folder) is deleted by `sweep` once nobody holds the folder's lock.
"""

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath

import luigi
import luigi.format
from filelock import FileLock, Timeout

from pipeline.storage import locks
from pipeline.storage.base import Storage, StorageError, parent

try:
    import boto3
    import botocore.config
    import botocore.exceptions
    import botocore.session
    import botocore.utils
    from boto3.s3.transfer import TransferConfig
except ImportError as _missing:  # pragma: no cover - the tests install the extra
    boto3 = None
    _IMPORT_ERROR = str(_missing)

MB = 1024 * 1024
# Parts of 16 MB, 4 at a time: the biggest file (about 150 MB) goes up in 10 parts with 64 MB in flight at most.
TRANSFER = dict(multipart_threshold=16 * MB, multipart_chunksize=16 * MB, max_concurrency=4)
SCRATCH = "cms-pipeline"
LISTING_TRUSTED = 600  # seconds a prefetched listing answers for its folders


class S3Storage(Storage):
    whole_when_visible = True

    def __init__(self, url: str, scratch: Path, runlog_url: str):
        if boto3 is None:
            raise StorageError(
                f"data_dir {url} is in object storage but boto3 is not installed: pip install -e .[s3] "
                f"({_IMPORT_ERROR})"
            )
        self.root = url.rstrip("/")
        self.bucket, _, prefix = self.root[len("s3://") :].partition("/")
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        # The client's standard retry mode retries throttling (503 SlowDown), 5xx and broken connections.
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60
        )
        self.client = _session().client("s3", config=config)
        self.transfer = TransferConfig(**TRANSFER)
        self.scratch = Path(scratch) / SCRATCH
        self.locks = locks.for_runlog(runlog_url, self.scratch)
        self._tree: dict[str, dict[str, int]] = {}  # folder key -> {name: size}, from listings and own writes
        # Folders whose whole subtree a prefetch put in _tree, and when. Only those answer from the cache, and only
        # for the run that listed them: a run's sweep starts a new listing, and one older than LISTING_TRUSTED
        # seconds is made again (a worker or an assistant runs the tasks of runs it did not start). A folder's own
        # listing is fresh when made, but other machines change folders after it.
        self._listed: dict[str, float] = {}
        # The tasks of a run share this object from their threads (pipeline/task_threads.py): one lock for the
        # cache, held through a prefetch's listing so that threads asking together make one listing.
        self._cache = threading.RLock()

    # -- names and errors ---------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def key(self, location: str) -> str:
        head = f"s3://{self.bucket}/{self.prefix}"
        if not location.startswith(head):
            raise ValueError(f"{location} is not in {self.root}")
        return location[len(head) :]

    def target(self, key: str) -> luigi.Target:
        from luigi.contrib.s3 import S3Target

        return S3Target(self.location(key), format=luigi.format.Nop, client=self._luigi_client)

    @property
    def _luigi_client(self):
        from luigi.contrib.s3 import S3Client

        if not hasattr(self, "_s3client"):
            self._s3client = S3Client()
        return self._s3client

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Any failure of the client as one line naming the bucket, the key and the cause (never a secret)."""
        where = f"s3://{self.bucket}/{self._full(key)}" if key else f"s3://{self.bucket}"
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise StorageError(f"{where}: {_client_cause(exc)}") from None
        except botocore.exceptions.NoCredentialsError:
            raise StorageError(
                f"{where}: no credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws, or a role)"
            ) from None
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError) as exc:
            raise StorageError(f"{where}: endpoint unreachable ({exc})") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"{where}: {exc}") from None
        except boto3.exceptions.S3UploadFailedError as exc:  # the managed transfer's wrapper of the real error
            cause = exc.__cause__ or exc.__context__
            text = (
                _client_cause(cause) if isinstance(cause, botocore.exceptions.ClientError) else f"upload failed ({exc})"
            )
            raise StorageError(f"{where}: {text}") from None

    def check(self) -> None:
        with self._errors(""):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):  # HEAD has no body
                    raise StorageError(f"s3://{self.bucket}: {_cause('NoSuchBucket', 404, '')}") from None
                raise

    # -- listings -----------------------------------------------------------------------------------------

    def _list(self, folder: str, recursive: bool) -> Iterator[tuple[str, int]]:
        prefix = self._full(folder).rstrip("/") + "/" if folder else self.prefix
        options = {"Bucket": self.bucket, "Prefix": prefix, **({} if recursive else {"Delimiter": "/"})}
        with self._errors(folder):
            for page in self.client.get_paginator("list_objects_v2").paginate(**options):
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :], item["Size"]

    def _covered(self, folder: str) -> bool:
        trusted = time.monotonic() - LISTING_TRUSTED
        return any(_within(folder, done) and at > trusted for done, at in self._listed.items())

    def _drop_cached(self, folder: str) -> None:
        """The folder and everything under it out of the cache (called under its lock)."""
        for known in [name for name in self._tree if _within(name, folder)]:
            del self._tree[known]

    def cached(self, folder: str) -> bool:
        with self._cache:
            return self._covered(folder)

    def prefetch(self, folder: str, fresh: bool = False) -> None:
        with self._cache:
            if self._covered(folder) and not fresh:
                return
            at = time.monotonic()
            listed: dict[str, dict[str, int]] = {}
            for key, size in self._list(folder, recursive=True):
                listed.setdefault(parent(key), {})[PurePosixPath(key).name] = size
            self._drop_cached(folder)  # what was deleted since an earlier listing is gone from this one
            self._tree.update(listed)
            self._listed[folder] = at

    def sizes(self, folder: str, fresh: bool = False) -> dict[str, int]:
        with self._cache:
            if not fresh and self._covered(folder):
                return dict(self._tree.get(folder, {}))
        listed = {PurePosixPath(key).name: size for key, size in self._list(folder, recursive=False)}
        with self._cache:
            self._tree[folder] = listed
        return dict(listed)

    def listing(self, folder: str) -> Iterator[tuple[str, int]]:
        yield from self._list(folder, recursive=True)

    def _seen(self, key: str, size: int | None) -> None:
        """Keep the cached listing true to this process's own writes."""
        with self._cache:
            names = self._tree.setdefault(parent(key), {})
            if size is None:
                names.pop(PurePosixPath(key).name, None)
            else:
                names[PurePosixPath(key).name] = size

    def _forget(self) -> None:
        with self._cache:
            self._tree.clear()
            self._listed.clear()

    # -- reading ------------------------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes | None:
        with self._errors(key):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None

    @contextmanager
    def open_read(self, key: str):
        with self._errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        try:
            with self._errors(key):
                yield body
        finally:
            body.close()

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        with self.workdir(parent(key)) as work:
            path = work / PurePosixPath(key).name
            with self._errors(key):
                self.client.download_file(self.bucket, self._full(key), str(path), Config=self.transfer)
            yield path

    # -- writing ------------------------------------------------------------------------------------------

    @contextmanager
    def workdir(self, folder: str) -> Iterator[Path]:
        """A scratch folder of this writer's own, locked while in use so `sweep` leaves it alone, and deleted
        when done; one a killed writer left is deleted by the next sweep on this machine."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        work = self.scratch / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            with FileLock(f"{work}.lock"):
                work.mkdir()
                try:
                    yield work
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        finally:
            Path(f"{work}.lock").unlink(missing_ok=True)

    def put_file(self, local: Path, key: str, read_only: bool = False) -> None:
        size = Path(local).stat().st_size
        with self._errors(key):
            self.client.upload_file(str(local), self.bucket, self._full(key), Config=self.transfer)
        Path(local).unlink(missing_ok=True)
        self._seen(key, size)

    def put_files(self, files: list[tuple[Path, str]]) -> None:
        """Uploaded side by side: the biggest file's source and normalized copy take one upload's time."""
        with ThreadPoolExecutor(max_workers=max(1, len(files))) as uploads:  # boto3's clients are thread-safe
            for done in [uploads.submit(self.put_file, local, key) for local, key in files]:
                done.result()

    def staged(self, key: str) -> str:
        return key

    def copy(self, source: str, dest: str, read_only: bool = False) -> None:
        """Server-side: the bytes never pass through this machine (CopyObject copies up to 5 GB at once)."""
        with self._errors(dest):
            self.client.copy_object(
                Bucket=self.bucket, Key=self._full(dest), CopySource={"Bucket": self.bucket, "Key": self._full(source)}
            )
        with self._cache:
            size = self._tree.get(parent(source), {}).get(PurePosixPath(source).name, 0)
        self._seen(dest, size)

    def move(self, source: str, dest: str, read_only: bool = False) -> None:
        self.copy(source, dest, read_only)
        self.remove(source)

    def remove(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        self._seen(key, None)

    def remove_tree(self, folder: str) -> int:
        found = list(self._list(folder, recursive=True))
        for start in range(0, len(found), 1000):  # DeleteObjects takes 1,000 keys a request
            batch = [{"Key": self._full(key)} for key, _ in found[start : start + 1000]]
            with self._errors(folder):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if errors := answer.get("Errors"):
                first = errors[0]
                cause = _cause(first["Code"], None, first["Message"])
                raise StorageError(f"s3://{self.bucket}/{first['Key']}: {cause}")
        with self._cache:
            self._drop_cached(folder)
        return sum(size for _, size in found)

    # -- concurrency and leftovers ------------------------------------------------------------------------

    def lock(self, folder: str, wait: bool = True):
        return self.locks.hold(f"{self.bucket}/{self._full(folder)}", wait)

    def sweep(self) -> None:
        sweep_scratch(self.scratch)
        self._forget()  # a run starts: what an earlier run of this process listed is not trusted
        self.prefetch("datasets")
        with self._cache:
            folders = [(folder, dict(names)) for folder, names in self._tree.items()]
        for folder, names in folders:
            if {"normalized.csv"} == names.keys() & {"normalized.csv", "source.csv", "header_map.json"}:
                with self.lock(folder, wait=False) as held:  # a download cut short: its staged copy alone
                    if held and "source.csv" not in self.sizes(folder, fresh=True):
                        self.remove(f"{folder}/normalized.csv")
        with self._errors("datasets"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._full("datasets/")
            )
            uploads = [upload for page in pages for upload in page.get("Uploads", [])]
        for upload in uploads:  # a killed writer's parts: invisible, but stored (and billed) until aborted
            key = upload["Key"][len(self.prefix) :]
            with self.lock(parent(key), wait=False) as held:
                if held:
                    with self._errors(key):
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )


def sweep_scratch(scratch: Path) -> None:
    """Delete the work folders (`S3Storage.workdir`) whose writer died: nobody holds their lock."""
    if not scratch.is_dir():
        return
    for lock in scratch.glob("*.lock"):
        try:
            with FileLock(lock, timeout=0):
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
            lock.unlink(missing_ok=True)
        except Timeout:
            continue  # a live writer's


def _client_cause(exc) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _cause(error.get("Code", "?"), status, error.get("Message", ""))


def _within(key: str, folder: str) -> bool:
    return key == folder or key.startswith(f"{folder}/")


_SESSION = None
_SESSION_LOCK = threading.Lock()  # boto3's sessions are not thread-safe; the clients made from one are


def _session():
    """One boto3 session for this process and the task processes forked from it. A session parses the S3 API
    description and the endpoint rules (JSON, about 0.1 s of CPU) when its first client is made and keeps them:
    a session of each task's own made every DownloadCsv and NormalizeCsv parse them again. Each process still
    makes its own client (its own connections), as open_storage does."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            core = botocore.session.get_session()
            core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
            _SESSION = boto3.session.Session(botocore_session=core)
        return _SESSION


def _timestamp(value):
    """A listing gives each key's LastModified, which botocore's own parser (dateutil) takes about 0.1 ms to read:
    1.3 s of CPU for the 10,000 keys of 2,000 versions, in each process that lists them. S3 writes ISO 8601 in
    UTC, which the standard library reads in a microsecond; anything else goes to botocore's parser."""
    if isinstance(value, str) and value.endswith("Z"):
        try:
            return datetime.fromisoformat(f"{value[:-1]}+00:00")
        except ValueError:
            pass
    return botocore.utils.parse_timestamp(value)


def _cause(code: str, status: int | None, message: str) -> str:
    """What a user can act on, for the error codes S3 and its look-alikes answer."""
    if code in ("NoSuchBucket",):
        return "the bucket does not exist (NoSuchBucket)"
    if code in ("NoSuchKey", "404") or status == 404:
        return "no such key (404)"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
        return f"access denied ({code}): check the credentials and the bucket's policy"
    if code in ("SlowDown", "503", "ServiceUnavailable") or status == 503:
        return f"the server is overloaded ({code}), still after the client's retries"
    return f"{code}" + (f" ({message})" if message else "") + (f", HTTP {status}" if status else "")
