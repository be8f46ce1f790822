"""One job per output on an object store: a lease object in the output's work directory.

An object store has no flock. The lock is `WORKDIR/lock`, created with a conditional PUT
(If-None-Match: *): of two jobs that create it at once, the store lets exactly one succeed. The
holder renews it (If-Match on its own ETag) every LEASE_SECONDS / 3 and deletes it when done.
A job that dies leaves its lease behind; it is taken over (again a conditional PUT, If-Match on
the ETag read) when it has expired, or at once when its holder ran on this host and its process
is gone. A job whose renewals fail (the store unreachable for a whole lease) may be overtaken:
the guarantee is "one job per output while the holder can reach the store".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from vsr.errors import BusyError
from vsr.storage import uri as store

LOCK_NAME = "lock"
LEASE_SECONDS = float(os.environ.get("VSR_LEASE_SECONDS", "60"))

log = logging.getLogger("vsr")


class ObjectLock:
    """Context manager: hold the lease of the work directory URI `workdir` for writing `output`."""

    def __init__(self, workdir: str, output: str, lease: float = LEASE_SECONDS):
        self.workdir, self.output, self.lease = workdir, output, lease
        self.uri = store.join(workdir, LOCK_NAME)
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                           "expires": time.time() + self.lease}).encode()

    def acquire(self) -> "ObjectLock":
        """Take the lease or raise BusyError naming its holder (never waits)."""
        for _ in range(3):
            self._etag = store.create_exclusive(self.uri, self._body())
            if self._etag is not None:
                break
            try:
                held = store.stat(self.uri)
                holder = json.loads(store.read_bytes(self.uri).decode() or "{}")
            except Exception:  # noqa: BLE001 - gone meanwhile (released): try again
                continue
            if not _stale(holder):
                raise BusyError(f"{self.output}: another vsr job (pid {holder.get('pid')} on "
                                f"{holder.get('host')}) is writing this output (lease {self.uri}); "
                                "wait for it to end or stop it")
            self._etag = store.replace_if(self.uri, self._body(), held["etag"])
            if self._etag is not None:
                log.warning("took over the expired lease %s of pid %s on %s", self.uri, holder.get("pid"),
                            holder.get("host"))
                break
        else:
            raise BusyError(f"{self.output}: its lease {self.uri} keeps changing; another job is using it")
        self._renewer = threading.Thread(target=self._renew, name="vsr-lease", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                etag = store.replace_if(self.uri, self._body(), self._etag or "")
            except Exception as err:  # noqa: BLE001 - tried again at the next tick
                log.warning("cannot renew the lease %s: %s", self.uri, err)
                continue
            if etag is None:
                log.error("lost the lease %s: another job took it over", self.uri)
                return
            self._etag = etag

    def release(self) -> None:
        """Stop renewing and delete the lease (only while it is still ours)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        try:
            if self._etag is not None and store.stat(self.uri)["etag"] == self._etag:
                store.remove(self.uri)
        except Exception as err:  # noqa: BLE001 - expires by itself
            log.warning("cannot remove the lease %s: %s", self.uri, err)
        self._etag = None

    def __enter__(self) -> "ObjectLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _stale(holder: dict[str, Any]) -> bool:
    """The lease expired, or its holder ran here and its process is gone."""
    try:
        if float(holder.get("expires", 0)) < time.time():
            return True
        if holder.get("host") == socket.gethostname():
            os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return False


def clear_objects(workdir: str) -> None:
    """Delete everything under a finished job's work directory URI except its lease, which
    ObjectLock.release deletes last."""
    keep = store.join(workdir, LOCK_NAME)
    for uri in store.list_files(workdir + "/", recursive=True):
        if uri != keep:
            store.remove(uri)
