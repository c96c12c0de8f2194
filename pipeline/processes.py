"""Which process this is: the `luigi` command, or a task process that multiprocessing started for it."""

import multiprocessing


def task_process() -> bool:
    """True in a process multiprocessing started, from its first import on. A spawned process (Windows) imports
    the pipeline while it unpickles its task, before parent_process() is set; by then it already has its
    Process object's name, never "MainProcess"."""
    return multiprocessing.current_process().name != "MainProcess" or multiprocessing.parent_process() is not None
