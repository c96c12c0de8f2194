"""`python -m pipeline.assistant --workers 4`: a helper machine's worker for shared runs on luigid.

It runs any task luigid offers, of whichever run, until it is stopped (a service: deploy/*.service). Not
`luigi --module pipeline HospitalsDaily --assistant`: that command schedules a run of its own as well. The
tasks bring the run's settings, made on the job's machine; the scratch folder is this machine's own.

A luigid that cannot be reached (down, restarting) is one line, and the assistant tries again a little later,
as `Restart=on-failure` would restart it, instead of dying with Luigi's traceback; tasks it was running when
luigid went away are stopped by Luigi, and the next run does them.
"""

import argparse
import os
import sys
import tempfile
import time

import luigi
import luigi.rpc

import pipeline  # noqa: F401 - registers the task classes the assistant is given
from pipeline import config_path, preflight, settings
from pipeline.storage import sweep_scratch

RETRY_SECONDS = 10.0


def _root_cause(exc: BaseException) -> BaseException:
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.assistant")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    if message := config_path.problem():
        print(message, file=sys.stderr, flush=True)
        return preflight.NO_CONFIG
    scratch = settings.storage().scratch_dir or tempfile.gettempdir()
    os.environ[settings.ASSISTANT_SCRATCH_ENV] = scratch
    sweep_scratch(scratch)  # what an assistant killed here left
    while True:
        try:
            return 0 if luigi.build([], assistant=True, workers=args.workers) else 1
        except luigi.rpc.RPCError as exc:
            cause = _root_cause(exc)
            print(
                f"ERROR: assistant: cannot reach the central scheduler: {exc} ({type(cause).__name__}: {cause}); "
                f"is luigid running? Trying again in {RETRY_SECONDS:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(RETRY_SECONDS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
