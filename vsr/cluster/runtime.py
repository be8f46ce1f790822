"""Connecting to Ray: an embedded loopback-only local instance by default, or an existing cluster."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from vsr.errors import JobError, UsageError, VsrError
from vsr.job.options import resolve_address

log = logging.getLogger("vsr.cluster")


_stop_signals: list[int] = []


def request_stop(signum: int) -> bool:
    """Remember that this process was asked to stop (SIGTERM); True the first time.

    Errors that follow the request (Ray's daemons dying with the same group-wide signal, a
    worker lost) are then reported as the interruption, not as job failures.
    """
    _stop_signals.append(signum)
    return len(_stop_signals) == 1


def forget_stop_requests() -> None:
    """A new command starts (vsr.cli.main called again in one process, as tests and embedding
    programs do): a stop asked of an earlier one does not stop this one."""
    _stop_signals.clear()


def stop_requested() -> bool:
    """Whether request_stop was called in this process."""
    return bool(_stop_signals)


class RaySession:
    """Context manager around ray.init / ray.shutdown, through Ray's public API only.

    Embedded (no address): starts a private local instance (_EmbeddedHead: its own process, in
    its own session) that listens on loopback only (DESIGN.md, Security), with token
    authentication, joins it, and stops it on exit, workers included. With an address: joins
    the cluster and on exit only disconnects (the caller kills its own actors first). If Ray is
    already initialised in this process (a test, or a driver inside `ray job submit`), it is
    used as is and left running.

    ray.init runs in a thread of its own (_RayStart) while this thread holds stop signals: a stop
    during the start takes effect at once before the connection and right after it otherwise.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 num_gpus: int | None = None, log_to_driver: bool = False):
        self.address = resolve_address(address)
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.log_to_driver = log_to_driver
        self.owned = False
        self.embedded = self.address is None
        self._head: _EmbeddedHead | None = None

    def __enter__(self) -> "RaySession":
        if self.embedded:
            _driver_environment_before_import()
        import ray

        if ray.is_initialized():
            return self
        head = None
        if self.embedded:
            _require_driver_settings()
        else:
            _check_reachable(self.address)
        try:
            if self.embedded:  # a slow machine may time its start out: a JobError, like ray.init's
                head = _EmbeddedHead(num_cpus=self.num_cpus or os.cpu_count() or 1, num_gpus=self.num_gpus)
            start = _RayStart(dict(address=self.address, log_to_driver=self.log_to_driver,
                                   configure_logging=False), head)
            start.run()
        except VsrError:
            _stop(head)
            raise
        except Exception as err:  # noqa: BLE001 - one line for the user, whatever Ray raised
            _stop(head)
            where = self.address or "a local instance"
            text = str(err).strip()
            first = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
            if self.embedded:
                raise JobError(f"cannot start {where} of Ray: {first}") from None
            raise UsageError(f"cannot join the Ray cluster at {where!r}: {first} "
                             "(check --address / RAY_ADDRESS, or leave both unset for a local run)") from None
        except BaseException:  # a stop signal (held while ray.init ran)
            _stop(head)
            raise
        self._head = head
        self.owned = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            _stop(self._head)
        self.owned = False
        self._head = None


def _stop(head: "_EmbeddedHead | None") -> None:
    """Disconnect this driver (ray.shutdown), then stop the embedded instance if there is one."""
    import ray

    try:
        ray.shutdown()
    finally:
        if head is not None:
            head.stop()


# The embedded instance's head process: a new local Ray instance (ray.init starts its GCS,
# raylet, ...), whose GCS address goes to stdout as one JSON line; then it waits for stdin to
# close. Run with `python -c`, so it imports nothing but Ray.
HEAD_SCRIPT = r"""
import json, os, sys
import ray
try:
    ray.init(**json.loads(sys.argv[1]))
    address = ray.get_runtime_context().gcs_address
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
    sys.exit(1)
print(json.dumps({"gcs_address": address}), flush=True)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)  # nobody reads this pipe from now on: nothing may block on it
sys.stdin.read()  # until vsr stops it or its end of the pipe closes (vsr ended, however)
"""


class _EmbeddedHead:
    """The embedded instance, run by a head process of its own (HEAD_SCRIPT) in its own session.

    - Process group: Ray's daemons (GCS, raylet, workers) are children of the head process, in
      its session. A stop signal to vsr's whole process group (some schedulers cancel a job so,
      `timeout` does) reaches vsr only, which stops its workers and Ray itself, as with `kill
      PID`. Started by this process, Ray's daemons would die with the same signal, and Ray's
      core in this driver then exits the process at once (status 1) when it sees its raylet
      gone, before vsr's clean interrupt (130), or ray.init, if still running, waits a minute
      for its dead GCS. (ray.init has no option for the daemons' process group.)
    - Loopback only and token authentication are set in the head process's environment
      (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, RAY_AUTH_MODE), which Ray reads when it is imported
      there, whatever this process imported before.
    - It ends with vsr: stop() kills its session at once (a private instance has nothing to
      save), and if vsr ends without that (SIGKILL, a crash) the head process sees its stdin
      close and exits, and Ray's daemons die with it (Ray's own fate sharing).
    """

    def __init__(self, *, num_cpus: int, num_gpus: int | None):
        self.init_kwargs: dict[str, Any] = dict(address="local", include_dashboard=False, num_cpus=num_cpus,
                                                log_to_driver=False, configure_logging=False)
        if num_gpus is not None:
            self.init_kwargs["num_gpus"] = num_gpus
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._stopped = False

    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopped

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.setdefault("RAY_AUTH_MODE", "token")
        return env

    def start(self) -> str:
        """Start the head process and wait until its instance runs; its GCS address."""
        self.launch()
        return self.address()

    def launch(self) -> None:
        """Start the head process (it boots on its own: see address)."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("stopped before it started")
            self._process = subprocess.Popen(
                [sys.executable, "-c", HEAD_SCRIPT, json.dumps(self.init_kwargs)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=self.environment(), text=True, start_new_session=True)

    def address(self) -> str:
        """Wait until the launched head's instance runs; its GCS address."""
        assert self._process is not None, "launch() first"
        stdout = self._process.stdout
        assert stdout is not None
        try:
            for line in stdout:  # Ray may print other lines first
                if line.startswith("{"):
                    reply = json.loads(line)
                    if "gcs_address" in reply:
                        return str(reply["gcs_address"])
                    raise RuntimeError(reply.get("error") or "its head process failed")
        finally:
            stdout.close()  # not read again (the head process writes nothing more to it)
        raise RuntimeError(f"its head process ended (status {self._process.wait()})")

    def stop(self) -> None:
        """Kill the head process's session (Ray's daemons, workers included) and reap it."""
        with self._lock:
            self._stopped = True
            process = self._process
        if process is None:
            return
        try:
            if hasattr(os, "killpg"):
                os.killpg(process.pid, signal.SIGKILL)  # its session's group: it leads it
            else:
                process.kill()
        except OSError:
            pass  # already gone
        process.wait()
        if process.stdin is not None:
            process.stdin.close()


class _RayStart:
    """ray.init in a thread of its own (the embedded head started first), the stop signals of
    the calling thread held meanwhile (_stop_signals_held).

    Python runs signal handlers in the main thread only. Ray's driver connection builds its C++
    core worker before Python holds on to it; an exception from a handler in the middle of it
    (Ray's own SIGTERM handler exits, Ctrl-C raises) left a core worker that ray.shutdown could
    not see and whose destructor aborted the process at exit (SIGABRT: exit 134 instead of
    vsr's clean 130). In another thread no handler interrupts ray.init (and Ray installs no
    SIGTERM handler of its own). A stop held while the embedded head is still starting stops it
    at once; one held while this driver connects takes effect when ray.init has returned.
    """

    def __init__(self, init_kwargs: dict[str, Any], head: _EmbeddedHead | None):
        self._init_kwargs = init_kwargs
        self._head = head
        self._lock = threading.Lock()
        self._connecting = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vsr-ray-start", daemon=True)

    def _run(self) -> None:
        try:
            if self._head is not None:
                # the head boots (its own Python, Ray's import, its daemons) while this process
                # imports Ray: about 2 s of a 7 s start on 2 cores, where one waited on the other
                self._head.launch()
            import ray

            if self._head is not None:
                self._init_kwargs["address"] = self._head.address()
            with self._lock:
                if self._head is not None and self._head.stopping():
                    raise RuntimeError("stopped while it started")
                self._connecting = True
            ray.init(**self._init_kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            self._error = err

    def run(self) -> None:
        """Start (or join) and connect; raise what failed, or the stop signal held meanwhile."""
        with _stop_signals_held() as held, _ray_thread_notice_dropped():
            self._thread.start()
            while self._thread.is_alive():
                self._thread.join(START_POLL_S)
                if held and self._head is not None and not self._head.stopping():
                    with self._lock:
                        if not self._connecting:
                            self._head.stop()  # nothing to wait for: no connection begun
        if self._error is not None:
            raise self._error


START_POLL_S = 0.05
CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """UsageError when a host:port address does not accept connections: ray.init would retry
    for minutes (printing a warning every 30 s) instead of failing. Other forms (auto, ray://,
    a session directory) are left to ray.init."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in address:
        return
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(f"cannot join the Ray cluster at {address!r}: nothing answers there ({reason}) "
                         "(check --address / RAY_ADDRESS, or leave both unset for a local run)") from None


def _driver_environment_before_import() -> None:
    """Ray's documented environment variables this driver needs to join the embedded instance,
    set before ray is imported: Ray reads them once, at import (the vsr command imports ray
    only after this; _require_driver_settings checks a process that imported it before).

    - RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray uses the loopback address. Without it ray.init
      rewrites the instance's address 127.0.0.1 into this machine's network address, where
      nothing listens (the embedded instance listens on loopback only).
    - RAY_AUTH_MODE=token unless the user set a mode: the driver sends the instance's token.
      A new local Ray instance turns token authentication on by default when RAY_AUTH_MODE is
      unset, and says so on every run ("Token authentication is enabled for this Ray
      cluster..."); set explicitly, it says nothing. The head process gets the same mode.
      Set only if ray is not imported yet: set later it would be half applied.

    Joining a cluster never comes here: its own settings apply.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _require_driver_settings() -> None:
    """JobError if this driver, which imported ray before _driver_environment_before_import,
    could not join the embedded instance: Ray does not use the loopback address
    (ray.util.get_node_ip_address before ray.init), or no RAY_AUTH_MODE was set."""
    from ray.util import get_node_ip_address

    address = get_node_ip_address()
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    missing = [] if loopback else ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"]
    if os.environ.get("RAY_AUTH_MODE") is None:
        missing.append("RAY_AUTH_MODE=token")
    if missing:
        raise JobError(f"ray was imported before vsr could set {' and '.join(missing)} for its own Ray "
                       "instance (Ray reads them at import): set them before importing ray")


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
# a stop signal held while Ray starts: another one this much later stops at once
STOP_NOW_AFTER_S = 3.0


@contextmanager
def _stop_signals_held() -> Iterator[list[tuple[int, float]]]:
    """Hold stop signals (STOP_SIGNALS) while Ray starts (_RayStart); deliver them after.

    The first stop signal is held and raised again once the start returns (or fails), where
    the handler that was there before runs (vsr's: KeyboardInterrupt). Repeats within
    STOP_NOW_AFTER_S are the same request (a hang-up comes twice, a scheduler may resend its
    SIGTERM); one later than that, as from a start that hangs, stops the process at once (the
    signal's default action; the embedded head process ends with it). Only signals with a
    Python handler, and only in the main thread, where Python runs signal handlers.
    """
    held: list[tuple[int, float]] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    before: dict[int, Any] = {}

    def hold(signum: int, frame: Any) -> None:
        if not held:
            held.append((signum, time.monotonic()))
        elif time.monotonic() - held[0][1] >= STOP_NOW_AFTER_S:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and callable(signal.getsignal(number)):  # Python handlers only
            before[number] = signal.signal(number, hold)
    try:
        yield held
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0][0])  # the restored handler runs before anything else


# what ray.init logs when it runs outside the main thread, as _RayStart runs it on purpose
RAY_THREAD_NOTICE = "SIGTERM handler is not set because current thread is not the main thread"


class _DropRayThreadNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(RAY_THREAD_NOTICE)


@contextmanager
def _ray_thread_notice_dropped() -> Iterator[None]:
    """Drop Ray's notice that ray.init ran outside the main thread (RAY_THREAD_NOTICE) while Ray
    starts: no stray line on every run. Everything else Ray logs meanwhile passes.

    ray.init(configure_logging=False) removes the "ray" logger's handler, which does not
    propagate: Ray's warnings then reach logging.lastResort. The filter is on that handler, on
    the "ray" logger's and on the root logger's (wherever the notice could be written).
    """
    handlers = [*logging.getLogger("ray").handlers, *logging.getLogger().handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    notice_filter = _DropRayThreadNotice()
    for handler in handlers:
        handler.addFilter(notice_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(notice_filter)


def cluster_resources() -> dict[str, float]:
    """Total resources of the connected cluster (CPU, GPU, ...)."""
    import ray

    return dict(ray.cluster_resources())
