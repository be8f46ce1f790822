"""One job per output: an exclusive lock on the output's work directory.

Two jobs writing the same output would share its work directory (segment files, manifest) and
its temporary output name. The lock is fcntl.flock on `WORKDIR/lock`: the kernel releases it when
the holder exits, however it dies (SIGKILL, power loss of a node: NFS turns it into a POSIX lock
that the server drops), so a stale lock never blocks a rerun.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from vsr.errors import BusyError, OutputError

LOCK_NAME = "lock"
# flock errors that mean "this filesystem has no locks", not "someone holds it"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}

log = logging.getLogger("vsr")


class OutputLock:
    """Context manager: hold the lock of `workdir` (created if missing) for writing `output`."""

    def __init__(self, workdir: str | os.PathLike, output: str | os.PathLike):
        self.workdir = Path(workdir)
        self.output = Path(output)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise BusyError naming the process that holds it (never waits)."""
        for _ in range(5):
            try:
                self.workdir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # the folder went with a finishing job's release: make it again
            except OSError as err:
                raise OutputError(f"cannot create work directory {self.workdir}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in _NO_LOCKS:  # EWOULDBLOCK, or EACCES (CIFS): held by another job
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise BusyError(f"{self.output}: another vsr job ({holder}) is writing this output "
                                    f"(work directory {self.workdir} is locked); wait for it to end or stop it") from None
                # a filesystem without locks (Lustre without flock, some NFS and CIFS mounts):
                # nothing is busy; refusing would make vsr unusable there
                log.warning("cannot lock %s (%s): this filesystem has no file locks, so two jobs on "
                            "the same output are not kept apart", self.path, err.strerror or err)
                break
            # The holder removes the lock file when it finishes; a lock on a removed file locks
            # nothing, so take it again on the file that is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise BusyError(f"{self.output}: its work directory {self.workdir} keeps changing; another job is using it")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock; a work directory holding nothing but the lock file goes as well."""
        if self._fd is None:
            return
        try:
            # only our own lock file: another job may have locked a new one after ours went
            ours = os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
            if ours and [p.name for p in self.workdir.iterdir()] == [LOCK_NAME]:
                self.path.unlink()
                self.workdir.rmdir()
        except OSError:
            pass
        os.close(self._fd)  # closing the file releases the flock
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def clear_workdir(workdir: str | os.PathLike) -> None:
    """Remove everything in a finished job's work directory except the lock file, which
    OutputLock.release removes last (removing it while held would let a second job in early)."""
    import shutil

    root = Path(workdir)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(info['pid'])} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is just starting"
