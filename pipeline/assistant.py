"""`python -m pipeline.assistant --workers 4`: a helper machine's worker for shared runs on luigid.

It runs any task luigid offers, of whichever run, until it is stopped (a service: deploy/*.service). Not
`luigi --module pipeline HospitalsDaily --assistant`: that command schedules a run of its own as well. The
tasks bring the run's settings, made on the job's machine; the scratch folder is this machine's own.
"""

import argparse
import os
import sys
import tempfile

import luigi

import pipeline  # noqa: F401 - registers the task classes the assistant is given
from pipeline import config_path, preflight, settings
from pipeline.storage import sweep_scratch


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
    return 0 if luigi.build([], assistant=True, workers=args.workers) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
