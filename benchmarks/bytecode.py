"""The pipeline byte-compiled before anything is measured, as a user's machine has it after its first run.

Where PYTHONDONTWRITEBYTECODE is set (some CI images and sandboxes), Python never writes the package's .pyc
files, so each measured run would compile pipeline/ again (about 40 ms, in the luigi process).
"""

import compileall
from pathlib import Path


def compile_pipeline() -> None:
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "pipeline", quiet=1)
