"""A loopback CMS site as its own process, for tests that run it inside a network namespace:

    python -m tests.site_server --host 10.231.7.1 --datasets 8 --latency 0.3 --ready url.txt --log requests.json

It writes its metastore URL to --ready once listening, serves until SIGTERM, then writes every request it saw
(path and client address) to --log."""

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from tests.fixtures import HEADER_IPF, csv_bytes, quoted_rows
from tests.harness import Site
from tests.loopback_server import LoopbackServer


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--datasets", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LoopbackServer(latency=args.latency, host=args.host) as server:
        site = Site(server)
        for n in range(args.datasets):
            site.dataset(
                f"ds{n:02d}-test", "2025-04-08", {f"File{n}.csv": csv_bytes(HEADER_IPF, quoted_rows(4, 4, f"{n}"))}
            )
        args.ready.write_text(site.metastore_url, encoding="utf-8")
        stop.wait()
        seen = [{"path": r.path, "client": r.client[0], "agent": r.headers.get("User-Agent")} for r in server.requests]
    args.log.write_text(json.dumps(seen), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
