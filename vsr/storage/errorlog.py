"""Internal errors: the full traceback into a log file, one line for the user.

An exception that no vsr code expected (a bug, or a library failing in a way nobody foresaw) must
not reach a terminal as a Python traceback: the CLI prints `vsr: internal error: WHAT (details:
LOG)` and exits 70, and LOG holds the traceback. The log goes into the job's work directory when
there is one (beside the segments and the manifest, where an operator looks), else into
cache_dir()/logs.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

from vsr import __version__
from vsr.errors import InternalError
from vsr.storage import uri as store
from vsr.storage.paths import cache_dir


def one_line(err: BaseException) -> str:
    """`Type: the message's last line` (the part of an error a user can read)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


# colour codes Ray puts into a worker's error text (ray::Actor.method() in cyan)
_TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def _log_text(err: BaseException) -> str:
    header = [
        f"vsr {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S %z')}: {one_line(err)}",
        f"command: {' '.join(sys.argv)}",
        f"pid {os.getpid()} on {socket.gethostname()}, Python {platform.python_version()} ({sys.executable})",
        "",
    ]
    return "\n".join(header) + _TERMINAL_COLOURS.sub("", "".join(traceback.format_exception(err)))


def write_error_log(err: BaseException, directory: str | os.PathLike | None = None) -> Path | None:
    """Write err's traceback into `directory` (created if missing), else cache_dir()/logs, else
    the temporary folder; return the file, or None when none of them can be written."""
    name = f"vsr-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = _log_text(err)
    if directory is not None and store.is_uri(directory):
        directory = None  # a work directory on an object store: the log stays on this machine
    places = ([Path(directory)] if directory is not None else []) + \
        [cache_dir() / "logs", Path(tempfile.gettempdir()) / "vsr-logs"]
    for folder in places:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            with open(path, "a", encoding="utf-8") as f:  # append: two errors in one second
                f.write(text + "\n")
            return path
        except OSError:
            continue
    return None


def internal_error(err: BaseException, directory: str | os.PathLike | None = None) -> InternalError:
    """The InternalError (exit 70) for an unexpected exception, its traceback written to a log."""
    if isinstance(err, InternalError):
        return err
    return InternalError(one_line(err), write_error_log(err, directory))
