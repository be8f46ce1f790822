"""Error types with one-line messages and the CLI exit code each maps to."""

from __future__ import annotations

import os


class VsrError(Exception):
    """Base of every error vsr reports to a user: str(err) is one line naming the cause."""

    exit_code = 1


class UsageError(VsrError):
    """Bad command-line arguments or a bad job spec / config (names the key and the fix)."""

    exit_code = 2


class InputError(VsrError):
    """Missing, unreadable, non-media, truncated or corrupt input, or an undecodable codec."""

    exit_code = 3


class OutputError(VsrError):
    """Output cannot be written: unwritable directory, disk full, container cannot hold a stream."""

    exit_code = 4


class ModelError(VsrError):
    """Unknown model name, corrupt weight file, or a state dict that does not fit the architecture."""

    exit_code = 5


class VerifyError(VsrError):
    """The output failed verification against its source; it is never renamed into place."""

    exit_code = 6


class JobError(VsrError):
    """A job failed while running (a segment failed after its retries, a worker error)."""

    exit_code = 7


class BusyError(VsrError):
    """Another running vsr job is writing the same output (its work directory is locked)."""

    exit_code = 8


class InternalError(VsrError):
    """An exception no vsr code expected (a bug): said in one line, its traceback in a log file
    (vsr.storage.errorlog.internal_error makes one)."""

    exit_code = 70  # EX_SOFTWARE of sysexits.h: an internal software error

    def __init__(self, what: str, log_path: os.PathLike | str | None = None):
        self.what = what
        self.log_path = str(log_path) if log_path is not None else None
        details = f"details: {self.log_path}" if self.log_path else "no log file could be written"
        super().__init__(f"internal error: {what} ({details})")

    def __reduce__(self) -> tuple:
        return type(self), (self.what, self.log_path)  # pickled (Ray) with its parts, not its text


EXIT_INTERNAL = InternalError.exit_code
EXIT_INTERRUPTED = 130
