"""Error types with one-line messages and the CLI exit code each maps to."""

from __future__ import annotations


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


EXIT_INTERRUPTED = 130
