"""`python -m pipeline.assistant --workers 4`: a helper machine's worker for shared runs on luigid.

It runs any task luigid offers, of whichever run, until it is stopped (a service: deploy/*.service). Not
`luigi --module pipeline HospitalsDaily --assistant`: that command schedules a run of its own as well.
"""

import argparse
import sys

import luigi

import pipeline  # noqa: F401 - registers the task classes the assistant is given


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.assistant")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    return 0 if luigi.build([], assistant=True, workers=args.workers) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
