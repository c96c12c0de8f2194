"""The failures the pipeline expects: data, network and disk problems of one dataset, or of the whole run."""


class DatasetError(Exception):
    """A failure of one dataset version: Luigi shows "<identifier>: <cause>", the run log keeps the cause."""

    def __init__(self, identifier: str, cause: str):
        super().__init__(identifier, cause)  # both in args, so the exception pickles
        self.identifier, self.cause = identifier, cause

    def __str__(self) -> str:
        return f"{self.identifier}: {self.cause}"


class RunClosed(Exception):
    """The run id names a run that already finished; its report stands."""

    def __init__(self, run_id: str, status: str, report_path: str | None):
        super().__init__(run_id, status, report_path)
        self.run_id, self.status, self.report_path = run_id, status, report_path

    def __str__(self) -> str:
        return (
            f"run {self.run_id} already finished ({self.status}; report {self.report_path}); a finished run is "
            "not run again: start a new run (without --run-id) to retry what failed"
        )
