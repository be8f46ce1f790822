"""How vsr runs Ray: the embedded instance's token authentication (on, and quiet), and jobs sent
with `ray job submit` to an existing cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "data" / "media"
TINY = MEDIA / "bbb_176x144_mpeg4part2.mp4"  # 15 frames, no audio
LANCZOS = ["-m", "lanczos", "--outscale", "2", "--preset", "ultrafast"]


def _upscale_tiny_with(code: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -c code upscale TINY out` (code runs vsr.cli.main on its arguments)."""
    return subprocess.run([sys.executable, "-c", code, "upscale", str(TINY), str(out), *LANCZOS],
                          env=env, capture_output=True, text=True, timeout=300)


def test_embedded_run_has_no_token_notice_and_keeps_token_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    out = tmp_path / "tiny_x2.mp4"
    code = ("import sys\nfrom vsr.cli import main\nfrom ray._raylet import get_authentication_mode, AuthenticationMode\n"
            "import vsr.cluster.runtime as rt\nseen = []\norig = rt.RaySession.__enter__\n"
            "def enter(self):\n    r = orig(self)\n    seen.append(get_authentication_mode() == AuthenticationMode.TOKEN)\n"
            "    return r\nrt.RaySession.__enter__ = enter\n"
            "rc = main(sys.argv[1:])\nprint('token auth on:', seen)\nsys.exit(rc)\n")
    r = _upscale_tiny_with(code, out, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "token authentication" not in r.stderr.lower(), r.stderr
    assert "token auth on: [True]" in r.stdout  # quiet, not weaker: the embedded cluster still needs the token


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_vsr_on_the_existing_cluster(tmp_path):
    """`ray job submit -- vsr run job.toml`: the driver runs on the head with RAY_ADDRESS set by
    Ray, and vsr joins that cluster instead of starting its own."""
    import json
    import secrets
    import shutil
    import tempfile
    import time

    from test_cluster import _ray_start, _stop_session  # the two-node test's start/stop of `ray start`
    from vsr.media.verify import verify

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",  # loopback, token kept
               RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    port, dash = _free_port(), _free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    dashboard = f"http://127.0.0.1:{dash}"
    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\ninputs = ["{TINY}"]\noutput_dir = "{tmp_path / "out"}"\nname = "{{stem}}_x2.mp4"\n'
                    '[model]\nname = "lanczos"\noutscale = 2\n[encode]\npreset = "ultrafast"\n[cluster]\nworkers = 1\n')
    ray_tmp = tempfile.mkdtemp(prefix="vsr-ray-", dir="/tmp")  # short (unix sockets), private to this test
    head = _ray_start(["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
                       f"--temp-dir={ray_tmp}"], env, tmp_path / "head.log")
    try:
        deadline = time.time() + 40
        while True:  # until the head's job server answers and lists the head node
            nodes = subprocess.run([*ray, "list", "nodes", "--address", dashboard, "--format", "json"],
                                   env=env, capture_output=True, text=True, timeout=30)
            if '"node_id"' in nodes.stdout or time.time() > deadline or head.poll() is not None:
                break
            time.sleep(1)
        assert '"node_id"' in nodes.stdout, (tmp_path / "head.log").read_text()[-3000:] + nodes.stderr[-2000:]
        listing = nodes.stdout[nodes.stdout.index("["):]  # after any log lines
        (head_node,) = [n["node_id"] for n in json.loads(listing)]
        r = subprocess.run([*ray, "job", "submit", "--address", dashboard, "--submission-id", "vsr-job-1", "--",
                            sys.executable, "-m", "vsr.cli", "run", str(spec), "--json"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        status = subprocess.run([*ray, "job", "status", "vsr-job-1", "--address", dashboard],
                                env=env, capture_output=True, text=True, timeout=30)
        assert "Job 'vsr-job-1' succeeded" in status.stdout, status.stdout + status.stderr  # state SUCCEEDED
        events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"event"')]
        ready = [e for e in events if e["event"] == "worker_ready"]
        assert ready and {e["node_id"] for e in ready} == {head_node}, "vsr joined the head, no cluster of its own"
        assert events[-1]["event"] == "batch_done" and events[-1]["done"] == 1
        assert verify(TINY, tmp_path / "out" / "bbb_176x144_mpeg4part2_x2.mp4", 2.0).ok
    finally:
        _stop_session(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert head.poll() is not None


def test_explicit_worker_count_shares_the_embedded_instance_gpus_and_cores():
    """Seen on a one-GPU H100: `--workers 2` at 1 GPU each left the second actor pending for the
    whole start-up timeout. The embedded instance cannot grow, so the workers share the GPU."""
    from vsr.cluster.pool import gpu_share

    assert gpu_share(None, 1.0, 8, embedded=True) == (8, 1.0)  # one actor per GPU
    assert gpu_share(None, 0.5, 2, embedded=True) == (4, 0.5)
    assert gpu_share(2, 1.0, 1, embedded=True) == (2, 0.5)
    assert gpu_share(3, 1.0, 2, embedded=True) == (3, 0.5)  # a fraction must fit in one GPU
    assert gpu_share(5, 1.0, 4, embedded=True) == (5, 0.5)
    assert gpu_share(2, 2.0, 3, embedded=True) == (2, 1.0)  # whole GPUs above one
    assert gpu_share(2, 1.0, 4, embedded=True) == (2, 1.0)  # fits: as asked
    assert gpu_share(2, 1.0, 1, embedded=False) == (2, 1.0)  # a joined cluster may grow
    assert gpu_share(None, 0.4, 2, embedded=True) == (4, 0.4)  # two 0.4s per device, not five
    assert gpu_share(3, 0.6, 2, embedded=True) == (3, 0.5)  # 0.6 + 0.6 do not fit in one GPU
    from vsr.cluster.pool import cpu_share

    assert cpu_share(None, 2, embedded=True) == (1, 2.0)
    assert cpu_share(2, 8, embedded=True) == (2, 4.0)
    assert cpu_share(4, 2, embedded=True) == (4, 0.5)  # more workers than cores: fractions
    count, share = cpu_share(3, 2, embedded=True)
    assert count == 3 and count * share <= 2
    assert cpu_share(4, 2, embedded=False) == (4, 1.0)


def test_shares_fit_a_real_ray_instance():
    """The shares above are what Ray can place: every actor starts (2 fake GPUs, 2 cores)."""
    import ray

    from vsr.cluster.pool import cpu_share, gpu_share

    @ray.remote
    class Probe:
        def ok(self) -> int:
            return 1

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cases = [dict(num_gpus=gpu_share(3, 0.6, 2, embedded=True)[1],
                      num_cpus=min(1.0, cpu_share(3, 2, embedded=True)[1])),
                 dict(num_gpus=gpu_share(5, 1.0, 2, embedded=True)[1],
                      num_cpus=min(1.0, cpu_share(5, 2, embedded=True)[1])),
                 dict(num_cpus=cpu_share(3, 2, embedded=True)[1])]
        for opts, count in zip(cases, (3, 5, 3)):
            actors = [Probe.options(**opts).remote() for _ in range(count)]
            ready, pending = ray.wait([a.ok.remote() for a in actors], num_returns=count, timeout=60)
            assert not pending, f"{len(pending)} of {count} actors not placed with {opts}"
            for a in actors:
                ray.kill(a)
    finally:
        ray.shutdown()


def test_embedded_instance_runs_without_the_autoscaler_monitor(monkeypatch):
    """A private fixed-size instance has nothing to autoscale: no monitor process (it held
    ray.shutdown for its 1 s SIGTERM grace period); the raylet's registration is polled every
    20 ms (the patched get_node ran); Ray's API server starts after the raylet, not before it
    (its start-up then overlaps the raylet's), and is running; Ray's own functions are put back
    afterwards."""
    import ray
    from ray._private import services
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    import vsr.cluster.runtime as runtime
    from vsr.cluster.runtime import RaySession, node_registered, wait_for_node

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the embedded instance, not a cluster
    polls: list[bool | None] = []
    real_check = runtime.node_registered
    monkeypatch.setattr(runtime, "node_registered", lambda *a: polls.append(real_check(*a)) or polls[-1])
    started: list[str] = []  # the order in which Node asks Ray's services to start these
    for name in ("start_raylet", "start_api_server"):
        def spy(*args, _real=getattr(services, name), _name=name, **kwargs):
            started.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(services, name, spy)
    before = (RayParams.__init__, services.get_node, Node.start_api_server, Node.start_raylet)
    with RaySession(None, num_cpus=1):
        node = ray._private.worker._global_node
        procs = node.all_processes
        assert "monitor" not in procs and {"gcs_server", "raylet", "dashboard"} <= set(procs)
        assert started == ["start_raylet", "start_api_server"]
        assert procs["dashboard"][0].process.poll() is None  # the API server runs
        assert polls and polls[-1] is True  # ray.init waited through our poll, which saw the node
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42  # the instance works
        assert wait_for_node(node.gcs_address, node.node_id, timeout_s=5) is True
        assert wait_for_node(node.gcs_address, "ab" * 28, timeout_s=0.2) is False  # no such node
    assert node_registered(object(), "ab" * 28) is None  # a client that cannot answer: cannot tell
    assert not ray.is_initialized()
    assert (RayParams.__init__, services.get_node, Node.start_api_server, Node.start_raylet) == before
    assert RayParams().no_monitor is False


def test_lean_start_patches_apply_to_the_starting_thread_only():
    import threading

    from ray._private.parameter import RayParams

    from vsr.cluster.runtime import _lean_embedded_start

    other: list[bool] = []
    with _lean_embedded_start(True):
        assert RayParams().no_monitor is True  # what ray.init makes in this thread
        t = threading.Thread(target=lambda: other.append(RayParams().no_monitor))
        t.start()
        t.join()
    assert other == [False]  # another thread's Ray keeps its monitor
    assert RayParams().no_monitor is False
    with _lean_embedded_start(False):  # joining a cluster: nothing changes
        assert RayParams().no_monitor is False


def _live_processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every live (not zombie) process."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(d.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return found


@pytest.mark.parametrize("where", ["raylet registration", "API server start"])
def test_an_interrupted_start_leaves_no_ray_process(monkeypatch, where):
    """Ctrl-C (or a scheduler's SIGTERM) while ray.init starts the private instance: every daemon
    it had started is stopped, the raylet's dashboard and runtime-env agents included (ray.shutdown
    knows only a node that ray.init finished; a raylet killed while it waits for its agents left
    them running), and the API server that was still starting."""
    import time

    import ray
    from ray._private import services
    from ray.experimental import internal_kv

    import vsr.cluster.runtime as runtime
    from vsr.cluster.runtime import RaySession

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    daemons: list[int] = []  # pids of every process Ray's start launched
    real_start = services.start_ray_process

    def start_ray_process(*args, **kwargs):
        info = real_start(*args, **kwargs)
        daemons.append(info.process.pid)
        return info

    monkeypatch.setattr(services, "start_ray_process", start_ray_process)
    running: set[int] = set()

    def interrupt() -> None:
        # the raylet's agents are in its process group and are its children (so are its workers)
        procs = _live_processes()
        raylets = [pid for pid in daemons if pid in procs and "raylet" in procs[pid][2]]
        running.update(pid for pid in daemons if pid in procs)
        running.update(pid for pid, (ppid, pgid, _) in procs.items() if raylets and raylets[0] in (ppid, pgid))
        raise KeyboardInterrupt

    if where == "raylet registration":
        def interrupted_wait(gcs_address: str, node_id: str, timeout_s: float) -> bool:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until the raylet and its two agents run
                procs = _live_processes()
                raylets = [pid for pid in daemons if pid in procs and "raylet" in procs[pid][2]]
                if raylets and sum(1 for v in procs.values() if v[1] == raylets[0]) >= 3:
                    break
                time.sleep(0.05)
            interrupt()
        monkeypatch.setattr(runtime, "wait_for_node", interrupted_wait)
    else:
        real_get = internal_kv._internal_kv_get

        def interrupted_get(key, *args, **kwargs):
            if key == services.ray_constants.DASHBOARD_ADDRESS:  # the API server's start-up wait
                interrupt()
            return real_get(key, *args, **kwargs)
        monkeypatch.setattr(internal_kv, "_internal_kv_get", interrupted_get)

    with pytest.raises(KeyboardInterrupt):
        with RaySession(None, num_cpus=1):
            pass
    assert not ray.is_initialized()
    # at least the GCS, the raylet, its two agents, the API server were running
    assert len(running) >= (5 if where == "raylet registration" else 4), running
    deadline = time.monotonic() + 10
    while running & set(_live_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: cmd[:80] for pid, (_, _, cmd) in _live_processes().items() if pid in running}
    assert not left, f"Ray processes outlived the interrupted start: {left}"


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGTERM", "SIGTERM"), ("SIGHUP", "SIGHUP")])
def test_a_stop_while_the_driver_connects_waits_for_the_connection(tmp_path, signals):
    """A SIGTERM while the driver connects to the new instance takes effect once it is connected
    (exit 130). Handled in the middle of the connection, it left a C++ core worker that
    ray.shutdown could not see and whose destructor aborted the process at exit (SIGABRT, 134).
    A resent SIGTERM or a hang-up's second SIGHUP is the same request (no abort either)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "tiny_x2.mp4"
    code = ("import os, signal, sys, time\nimport ray._private.worker as worker\nreal = worker.connect\n"
            "def connect_with_a_stop_inside(*args, **kwargs):\n"
            f"    for name in {list(signals)!r}:\n"
            "        os.kill(os.getpid(), getattr(signal, name))\n"
            "        time.sleep(0.3)  # Python runs signal handlers here, unless they are held\n"
            "    result = real(*args, **kwargs)\n"
            "    print('connected', flush=True)\n"
            "    return result\n"
            "worker.connect = connect_with_a_stop_inside\n"
            "from vsr.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = _upscale_tiny_with(code, out, env)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "connected" in r.stdout  # the stop waited for the connection
    assert r.stderr.strip().splitlines()[-1] == "vsr: interrupted"
    assert not out.exists()


def test_an_address_where_nothing_listens_fails_at_once():
    """`--address 127.0.0.1:1` once hung (ray.init retries for minutes, printing a warning every
    30 s); a host:port that refuses connections is a one-line usage error before ray.init
    ("nothing answers" is only said by that check)."""
    from vsr.cluster.runtime import RaySession
    from vsr.errors import UsageError

    with pytest.raises(UsageError, match=r"cannot join the Ray cluster at '127.0.0.1:1': nothing answers"):
        with RaySession("127.0.0.1:1"):
            pass
