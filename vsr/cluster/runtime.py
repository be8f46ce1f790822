"""Connecting to Ray: an embedded loopback-only local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from vsr.errors import JobError, UsageError

log = logging.getLogger("vsr.cluster")

LOCAL_ADDRESSES = ("", "local", "embedded")

_stop_signals: list[int] = []


def request_stop(signum: int) -> bool:
    """Remember that this process was asked to stop (SIGTERM); True the first time.

    Errors that follow the request (Ray's daemons dying with the same group-wide signal, a
    worker lost) are then reported as the interruption, not as job failures.
    """
    _stop_signals.append(signum)
    return len(_stop_signals) == 1


def stop_requested() -> bool:
    """Whether request_stop was called in this process."""
    return bool(_stop_signals)


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS, else None (embedded local instance)."""
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address is not None and address.strip().lower() in LOCAL_ADDRESSES:
        return None
    return address


def workers_are_local(address: str | None) -> bool:
    """Whether a job's workers run on this machine: an embedded instance (no address, no
    RAY_ADDRESS), unless this process is already connected to Ray (RaySession then uses that)."""
    ray = sys.modules.get("ray")
    return resolve_address(address) is None and not (ray is not None and ray.is_initialized())


class RaySession:
    """Context manager around ray.init / ray.shutdown.

    Embedded (no address): starts a local instance that listens on loopback only (DESIGN.md,
    Security) and shuts it down on exit, workers included. With an address: joins the cluster
    and on exit only disconnects (the caller kills its own actors first). If Ray is already
    initialised in this process (a test, or a driver inside `ray job submit`), it is used as is
    and left running.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 num_gpus: int | None = None, log_to_driver: bool = False):
        self.address = resolve_address(address)
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.log_to_driver = log_to_driver
        self.owned = False
        self.embedded = self.address is None

    def __enter__(self) -> "RaySession":
        if self.embedded:
            _force_loopback()
        import ray

        if ray.is_initialized():
            return self
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=self.log_to_driver,
                                      configure_logging=False)
        if self.embedded:
            _token_auth_quietly()
            # "local": always a new private instance, never one that `ray start` left behind
            kwargs.update(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1)
            if self.num_gpus is not None:
                kwargs["num_gpus"] = self.num_gpus
        else:
            kwargs.pop("include_dashboard")
            kwargs["address"] = self.address
            _check_reachable(self.address)
        # ray.init installs a SIGTERM handler that exits with 15; vsr's own turns SIGTERM into a
        # clean interrupt (exit 130, no half file), so keep it
        main_thread = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        try:
            with _daemons_in_own_process_group(self.embedded), _lean_embedded_start(self.embedded), \
                    _stop_signals_after_connect():
                ray.init(**kwargs)
        except SystemExit as err:
            # Ray's own SIGTERM handler (sys.exit(signum)) is active while ray.init runs: a
            # scheduler's cancel in that window is still a clean interrupt, not a silent exit 15
            if main_thread and sigterm is not None:  # a second SIGTERM now must not exit 15 either
                signal.signal(signal.SIGTERM, sigterm)
            ray.shutdown()  # whatever ray.init finished (an unfinished start stopped itself)
            if err.code != signal.SIGTERM:
                raise
            request_stop(signal.SIGTERM)
            raise KeyboardInterrupt from None
        except KeyboardInterrupt:  # Ctrl-C, or vsr's SIGHUP handler
            ray.shutdown()
            raise
        except (ConnectionError, ValueError, RuntimeError) as err:
            ray.shutdown()
            where = self.address or "a local instance"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self.embedded:
                raise JobError(f"cannot start {where} of Ray: {first}") from None
            raise UsageError(f"cannot join the Ray cluster at {where!r}: {first} "
                             "(check --address / RAY_ADDRESS, or leave both unset for a local run)") from None
        finally:
            if main_thread and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        self.owned = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False


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


def _force_loopback() -> None:
    """Make the embedded Ray bind to 127.0.0.1 only.

    Ray 2.60 reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once at import; with it at 0 every Ray
    process (ours and its children, which inherit the environment) uses the loopback address.
    If ray was imported before this ran, its constant is set as well.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    mod = sys.modules.get("ray._private.ray_constants")
    if mod is not None and getattr(mod, "ENABLE_RAY_CLUSTER", False):
        mod.ENABLE_RAY_CLUSTER = False


@contextmanager
def _daemons_in_own_process_group(embedded: bool) -> Iterator[None]:
    """Start the embedded instance's daemons (GCS, raylet, ...) outside vsr's process group.

    Some schedulers cancel a job with SIGTERM to its whole process group. Ray's daemons would die
    with the driver then, and the driver's Ray core exits the process with status 1 (C++ _Exit,
    no Python cleanup) as soon as it sees its raylet gone, instead of vsr's clean interrupt (130).
    In their own groups only vsr gets the signal, stops its workers and shuts Ray down, as with
    `kill PID`. Ray does the same on Windows; its daemons already ignore SIGINT for this reason.
    They still die with vsr however it ends: Ray's kernel fate-sharing (PR_SET_PDEATHSIG) kills
    them when their parent dies, so this is done only where that is available.
    """
    if not embedded or not sys.platform.startswith("linux"):
        yield
        return
    try:
        from ray._private import services, utils

        base = services.ConsolePopen
        fate_sharing = utils.detect_fate_sharing_support()
    except (ImportError, AttributeError):  # another Ray version: its own behaviour
        fate_sharing = False
    if not fate_sharing:
        yield
        return

    class OwnGroupPopen(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("process_group", 0)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = base


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
# a stop signal held while the driver connects: another one this much later stops at once
STOP_NOW_AFTER_S = 3.0
_CONNECT_LOCK = threading.Lock()


@contextmanager
def _stop_signals_after_connect() -> Iterator[None]:
    """Hold stop signals (STOP_SIGNALS) while ray.init connects this driver; deliver them after.

    Ray's driver connection builds its C++ core worker before Python holds on to it. A stop
    signal handled in between (Ray's own SIGTERM handler exits, Ctrl-C raises) leaves a core
    worker that ray.shutdown cannot see, and whose destructor at process exit aborts the process
    (SIGABRT: exit 134 instead of vsr's clean 130; measured with a SIGTERM 0.1 or 0.3 s into the
    connection, which takes ~0.4 s on 2 cores). So the first stop signal is held and raised
    again once the connection returns (or fails); repeats within STOP_NOW_AFTER_S are the same
    request (a hang-up comes twice, a scheduler may resend its SIGTERM); one later than that, as
    from a connection that hangs, stops the process at once (the signal's default action). Only
    in the main thread, where Python runs signal handlers; for embedded and joined clusters alike.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        from ray._private import worker
    except ImportError:
        yield
        return
    original = getattr(worker, "connect", None)
    if original is None:
        yield
        return
    starter = threading.get_ident()

    def connect_then_stop(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != starter:
            return original(*args, **kwargs)
        held: list[tuple[int, float]] = []
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
            return original(*args, **kwargs)
        finally:
            for number, handler in before.items():
                signal.signal(number, handler)
            if held:
                signal.raise_signal(held[0][0])  # the restored handler runs before anything else

    with _CONNECT_LOCK:
        worker.connect = connect_then_stop
        try:
            yield
        finally:
            worker.connect = original


_LEAN_START_LOCK = threading.Lock()
NODE_REGISTRATION_POLL_S = 0.02
NODE_REGISTRATION_TIMEOUT_S = 30.0  # Ray's own limit for a starting node (Node.__init__)
REAP_TIMEOUT_S = 5.0  # per daemon of an interrupted start, after SIGKILL


@contextmanager
def _lean_embedded_start(embedded: bool) -> Iterator[None]:
    """Start the embedded instance without what a private fixed-size instance does not use.

    ray.init has no parameters for these, so they are patched in while it runs, for the
    starting thread only and one start at a time (a lock); a Ray version without the patched
    names starts as it always does. Joining a cluster (embedded False) changes nothing.

    - no autoscaler monitor (`ray start --no-monitor`): nothing to autoscale, and the monitor,
      ignoring SIGTERM, held every ray.shutdown for its 1 s grace period (1.35 s -> 0.15 s);
    - the wait for the raylet to register polls every 20 ms instead of Ray's 1 s sleeps, which
      found it 1.1 or 2.1 s after the raylet started while it registers after 0.8-1.8 s
      (measured on 2 cores, six starts each: ray.init 2.9-4.1 s, median 3.5 s -> 2.7-3.8 s,
      median 3.0 s);
    - Ray's API server is started just after the raylet instead of before it, so that its
      start-up (~1.1 s on 2 cores, which ray.init waits for) runs while the raylet waits for
      its dashboard agent instead of before the raylet starts (measured on 2 cores, six starts
      each, interleaved: ray.init 3.2-4.3 s, median 3.95 s -> 2.7-3.3 s, median 2.85 s; the
      workers ready 4.5-5.9 s, median 5.5 s -> 4.0-5.2 s, median 4.3 s after the process began).
      Ray starts it first only to give the raylet the dashboard's address for display; not
      deferred where Ray's cgroup resource isolation is on (it moves the processes started
      before the raylet into its system cgroup).

    A start cut short (SIGTERM or Ctrl-C while ray.init runs) stops every daemon it had started
    (_stop_unfinished_start).

    (Ray's API server is kept although a private instance serves no job or state API: without
    it the dashboard agent asks the GCS for its address every second, logging an error each
    time, for as long as the job runs.)
    """
    if not embedded:
        yield
        return
    with _LEAN_START_LOCK:
        starter = threading.get_ident()
        started: list[Any] = []
        with _no_autoscaler_monitor(starter), _quick_node_registration(starter), \
                _api_server_after_raylet(starter), _processes_recorded(starter, started):
            try:
                yield
            except BaseException:
                _stop_unfinished_start(started)
                raise


@contextmanager
def _no_autoscaler_monitor(starter: int) -> Iterator[None]:
    try:
        from ray._private.parameter import RayParams
    except ImportError:
        yield
        return
    original = RayParams.__init__

    def without_monitor(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if threading.get_ident() == starter and hasattr(self, "no_monitor"):
            self.no_monitor = True

    RayParams.__init__ = without_monitor  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayParams.__init__ = original  # type: ignore[method-assign]


@contextmanager
def _processes_recorded(starter: int, started: list[Any]) -> Iterator[None]:
    """Record every Ray daemon (ray._private.services ProcessInfo) the starting thread starts."""
    try:
        from ray._private import services
    except ImportError:
        yield
        return
    original = getattr(services, "start_ray_process", None)
    if original is None:
        yield
        return

    def recorded(*args: Any, **kwargs: Any) -> Any:
        info = original(*args, **kwargs)
        if threading.get_ident() == starter:
            started.append(info)
        return info

    services.start_ray_process = recorded
    try:
        yield
    finally:
        services.start_ray_process = original


def _stop_unfinished_start(started: list[Any]) -> None:
    """Stop the daemons of a start cut short (SIGTERM or Ctrl-C while ray.init runs).

    ray.shutdown stops only a node that ray.init finished; one interrupted half-way would leave
    its daemons running until vsr exits, and a raylet that still waits for its agents dies on
    SIGTERM without stopping them (they outlive vsr). A half-started node has nothing to stop
    gracefully: each daemon's process group (_daemons_in_own_process_group; the raylet's agents
    are in the raylet's) is killed at once, then the daemons are reaped. Stop signals wait until
    this is done (Ray's own SIGTERM handler would exit in the middle of it).
    """
    try:
        from ray._private import worker

        finished = getattr(worker, "_global_node", None)
    except ImportError:
        finished = None
    theirs = set()
    if finished is not None:  # ray.shutdown stops it (RaySession calls it on every failure)
        theirs = {id(i) for infos in getattr(finished, "all_processes", {}).values() for i in infos}
    processes = [i.process for i in started if id(i) not in theirs and getattr(i, "process", None) is not None]
    if not processes:
        return
    blocked = {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        ours = os.getpgrp()
        for proc in processes:
            try:
                if os.getpgid(proc.pid) == proc.pid != ours:
                    os.killpg(proc.pid, signal.SIGKILL)  # before reaping: the group cannot be reused yet
                else:
                    proc.kill()
            except OSError:
                pass  # already gone
        for proc in processes:
            try:
                proc.wait(timeout=REAP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a daemon that will not die: the interrupt still stands
                log.debug("Ray daemon %s did not exit after SIGKILL", proc.pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _api_server_after_raylet(starter: int) -> Iterator[None]:
    try:
        from ray._private.node import Node
    except ImportError:
        yield
        return
    start_api_server = getattr(Node, "start_api_server", None)
    start_raylet = getattr(Node, "start_raylet", None)
    if start_api_server is None or start_raylet is None:
        yield
        return
    deferred: dict[int, dict[str, Any]] = {}  # id(node) -> its start_api_server arguments

    def isolated(node: Any) -> bool:
        config = getattr(node, "resource_isolation_config", None)
        try:
            return config is not None and bool(config.is_enabled())
        except Exception:  # noqa: BLE001 - another Ray version: keep Ray's order
            return True

    def api_server_later(self: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != starter or args or isolated(self):
            return start_api_server(self, *args, **kwargs)
        deferred[id(self)] = kwargs
        return None

    def raylet_then_api_server(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = start_raylet(self, *args, **kwargs)
        except BaseException:
            deferred.pop(id(self), None)  # no node: nothing for an API server to serve
            raise
        later = deferred.pop(id(self), None)
        if later is not None:
            start_api_server(self, **later)
        return result

    Node.start_api_server = api_server_later  # type: ignore[method-assign]
    Node.start_raylet = raylet_then_api_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        Node.start_api_server = start_api_server  # type: ignore[method-assign]
        Node.start_raylet = start_raylet  # type: ignore[method-assign]


def node_registered(client: Any, node_id: str) -> bool | None:
    """Whether the GCS behind `client` (a ray._raylet.GcsClient) lists node_id (hex) as alive;
    None if it cannot tell (another Ray version's API, the GCS not answering)."""
    try:
        from ray._raylet import NodeID
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        nodes = client.get_all_node_info(timeout=5, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
        return NodeID.from_hex(node_id) in nodes
    except Exception:  # noqa: BLE001 - any failure: leave the waiting to Ray
        return None


def wait_for_node(gcs_address: str, node_id: str, timeout_s: float) -> bool | None:
    """Poll the GCS every NODE_REGISTRATION_POLL_S until node_id is alive: True; False at
    timeout; None as soon as the GCS cannot tell (see node_registered)."""
    try:
        from ray._raylet import GcsClient

        client = GcsClient(address=gcs_address)  # the GCS is up: Ray started it before the raylet
    except Exception:  # noqa: BLE001
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        registered = node_registered(client, node_id)
        if registered is not False:
            return registered
        if time.monotonic() >= deadline:
            return False
        time.sleep(NODE_REGISTRATION_POLL_S)


@contextmanager
def _quick_node_registration(starter: int) -> Iterator[None]:
    try:
        from ray._private import services
    except ImportError:
        yield
        return
    original = getattr(services, "get_node", None)
    if original is None:
        yield
        return

    def get_node(gcs_address: str, node_id: str, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == starter:
            # registered: Ray's call finds it at once; cannot tell: Ray's own wait as before
            if wait_for_node(gcs_address, node_id, timeout_s=NODE_REGISTRATION_TIMEOUT_S) is False:
                # what Ray's get_node raises for a missing node: its retry loop (30 s from the
                # same start) then fails the start instead of waiting as long again
                raise RuntimeError(f"node {node_id} did not register within {NODE_REGISTRATION_TIMEOUT_S:g} s")
        return original(gcs_address, node_id, *args, **kwargs)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


def _token_auth_quietly() -> None:
    """Token authentication on for the embedded instance, without Ray's notice about it.

    A new local Ray 2.60 instance turns token authentication on by default when RAY_AUTH_MODE is
    unset, and prints "Token authentication is enabled for this Ray cluster..." on every run;
    with the mode set explicitly it says nothing. So set it to token, which is what Ray would do
    (same function: environment for the child processes, and this process's cached config, read
    when ray was imported). An explicit RAY_AUTH_MODE of the user's is kept. Joining a cluster
    never comes here: its own settings and token apply.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:  # another Ray version: its notice may show, nothing else changes
        return
    _enable_token_auth()


def cluster_resources() -> dict[str, float]:
    """Total resources of the connected cluster (CPU, GPU, ...)."""
    import ray

    return dict(ray.cluster_resources())
