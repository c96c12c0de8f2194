"""The yardstick of the benchmarks: GET the metastore, then every CSV with N threads (one requests.Session
each), straight to disk, in a child process of its own as the pipeline's are. A missing file (404) is skipped;
DEST is deleted afterwards. With BUCKET (object storage's yardstick), each file is then PUT twice into it, as
source and as normalized copy, by one boto3 client (its endpoint and keys from the environment).

    python benchmarks/plain_download.py METASTORE_URL DEST THREADS [BUCKET]   prints {"wall": seconds, "files": n}
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests


def plain_download(metastore_url: str, dest: Path, threads: int, bucket: str = "", env: dict | None = None) -> float:
    """Seconds from the first request to the last byte, measured in the child."""
    out = subprocess.run(
        [sys.executable, __file__, metastore_url, str(dest), str(threads), *([bucket] if bucket else [])],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
    ).stdout
    return json.loads(out.splitlines()[-1])["wall"]


def _download(metastore_url: str, dest: str, threads: int, bucket: str = "") -> None:
    local = threading.local()
    client = None
    if bucket:
        import boto3

        client = boto3.client("s3")

    def get(job):
        index, url = job
        if not hasattr(local, "session"):
            local.session = requests.Session()
        with local.session.get(url, stream=True, timeout=60) as response:
            if response.status_code == 404:
                return
            response.raise_for_status()
            with open(f"{dest}/{index}.csv", "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
        if client:
            for name in ("source.csv", "normalized.csv"):
                client.upload_file(f"{dest}/{index}.csv", bucket, f"plain/{index}/{name}")

    Path(dest).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    items = requests.get(metastore_url, timeout=60).json()
    urls = [d["downloadURL"] for i in items for d in i["distribution"]]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, enumerate(urls)))
    wall = time.perf_counter() - start
    shutil.rmtree(dest)
    print(json.dumps({"wall": wall, "files": len(urls)}))


if __name__ == "__main__":
    _download(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
