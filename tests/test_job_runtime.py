"""How vsr runs Ray: the embedded instance (its own session, loopback only, token authentication
on and quiet, stops during its start, its end), jobs sent with `ray job submit` to an existing
cluster, and Ray through its public API only."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
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


# inside the vsr command, once its embedded instance runs: a client without the token tries it
TOKEN_PROBE = (
    "import os, subprocess, sys\nimport vsr.cluster.runtime as rt\nseen = []\norig = rt.RaySession.__enter__\n"
    "def enter(self):\n    r = orig(self)\n    import ray\n"
    "    env = dict(os.environ, RAY_AUTH_MODE='disabled')\n"
    "    probe = subprocess.run([sys.executable, '-c', 'import sys, ray; ray.init(address=sys.argv[1])',\n"
    "                            ray.get_runtime_context().gcs_address], env=env, capture_output=True, text=True)\n"
    "    seen.append((os.environ.get('RAY_AUTH_MODE'), probe.returncode, 'AuthenticationError' in probe.stderr))\n"
    "    return r\nrt.RaySession.__enter__ = enter\n"
    "from vsr.cli import main\nrc = main(sys.argv[1:])\nprint('token auth:', seen)\nsys.exit(rc)\n")


def test_embedded_run_has_no_token_notice_and_keeps_token_auth(tmp_path):
    """Quiet, not weaker: the embedded instance refuses a client without its token."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    r = _upscale_tiny_with(TOKEN_PROBE, tmp_path / "tiny_x2.mp4", env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "token authentication" not in r.stderr.lower(), r.stderr
    assert "token auth: [('token', 1, True)]" in r.stdout, r.stdout + r.stderr[-2000:]


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
    port, dash, agent = _free_port(), _free_port(), _free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    dashboard = f"http://127.0.0.1:{dash}"
    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\ninputs = ["{TINY}"]\noutput_dir = "{tmp_path / "out"}"\nname = "{{stem}}_x2.mp4"\n'
                    '[model]\nname = "lanczos"\noutscale = 2\n[encode]\npreset = "ultrafast"\n[cluster]\nworkers = 1\n')
    ray_tmp = tempfile.mkdtemp(prefix="vsr-ray-", dir="/tmp")  # short (unix sockets), private to this test
    head = _ray_start(["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
                       # not Ray's fixed default 52365: another instance on this machine may hold it,
                       # and the job server then has "no available agent to submit job"
                       f"--dashboard-agent-listen-port={agent}",
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


def _ray_gcs_started(root: int) -> set[int]:
    """Every descendant of process `root` once one of them is Ray's GCS server; else empty."""
    from test_cluster import descendants

    procs = _live_processes()
    ours = descendants(root)
    return ours if any("gcs_server" in procs[pid][2] for pid in ours if pid in procs) else set()


def _assert_gone(pids: set[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while pids & set(_live_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: cmd[:80] for pid, (_, _, cmd) in _live_processes().items() if pid in pids}
    assert not left, f"Ray processes outlived the embedded instance: {left}"


def test_embedded_instance_runs_in_a_session_of_its_own():
    """The embedded instance's processes run in a session of their own, so a stop signal to
    vsr's process group reaches vsr only; they listen on loopback only; this process's
    SIGTERM handler is left as it was (ray.init in the main thread would install Ray's); they
    all end with the session."""
    import ray

    from test_cluster import descendants, is_loopback, listening_sockets
    from vsr.cluster.runtime import RaySession

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handler)
    try:
        with RaySession(None, num_cpus=1):
            assert signal.getsignal(signal.SIGTERM) is handler
            assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42  # a worker runs too
            ours = descendants(os.getpid())
            assert len(ours) >= 5, ours  # the head process, GCS, raylet, its agents, a worker
            assert os.getsid(0) not in {os.getsid(pid) for pid in ours}
            assert os.getpgrp() not in {os.getpgid(pid) for pid in ours}
            sockets = listening_sockets(ours | {os.getpid()})
            assert sockets and [s for s in sockets if not is_loopback(s)] == []
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not ray.is_initialized()
    _assert_gone(ours)


@pytest.mark.parametrize("when", ["head starting", "driver connecting"])
def test_a_stop_during_the_start_leaves_no_ray_process(monkeypatch, when):
    """A stop signal while the embedded instance starts: before this driver connects, the
    start is stopped at once; while it connects (a stop handled in the middle of Ray's driver
    connection left a C++ core worker that aborted the process at exit: 134, not 130), it takes
    effect once connected. Either way the start's every process ends."""
    import threading

    import ray

    from test_cluster import descendants
    from vsr.cluster.runtime import RaySession

    real_init = ray.init
    seen: set[int] = set()
    connected: list[bool] = []

    def init(*args, **kwargs):  # the driver's connection (after the head process is ready)
        seen.update(descendants(os.getpid()))
        if when == "driver connecting":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)  # the main thread would handle it now, were it not held
        result = real_init(*args, **kwargs)
        connected.append(True)
        return result

    def stop_once_the_gcs_runs() -> None:
        deadline = time.monotonic() + 120
        while not seen and time.monotonic() < deadline:
            seen.update(_ray_gcs_started(os.getpid()))
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "init", init)
    before = signal.signal(signal.SIGTERM, handler)
    try:
        if when == "head starting":
            threading.Thread(target=stop_once_the_gcs_runs, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            with RaySession(None, num_cpus=1):
                pass
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not ray.is_initialized()
    assert connected == ([] if when == "head starting" else [True])
    assert len(seen) >= 2, seen  # the head process and its GCS at least
    _assert_gone(seen)


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGTERM", "SIGTERM"), ("SIGHUP", "SIGHUP")])
def test_a_stop_while_the_driver_connects_waits_for_the_connection(tmp_path, signals):
    """The vsr command: a SIGTERM while the driver connects to the new instance takes effect
    once it is connected (exit 130). A resent SIGTERM or a hang-up's second SIGHUP is the same
    request (no abort either)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "tiny_x2.mp4"
    code = ("import os, signal, sys, time\nimport ray\nreal = ray.init\n"
            "def init_with_a_stop_inside(*args, **kwargs):\n"
            f"    for name in {list(signals)!r}:\n"
            "        os.kill(os.getpid(), getattr(signal, name))\n"
            "        time.sleep(0.3)  # the main thread would handle it now, were it not held\n"
            "    result = real(*args, **kwargs)\n"
            "    print('connected', flush=True)\n"
            "    return result\n"
            "ray.init = init_with_a_stop_inside\n"
            "from vsr.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = _upscale_tiny_with(code, out, env)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "connected" in r.stdout  # the stop waited for the connection
    assert r.stderr.strip().splitlines()[-1] == "vsr: interrupted"
    assert not out.exists()


def test_a_stop_to_the_whole_process_group_while_ray_starts_is_a_clean_interrupt(tmp_path):
    """Some schedulers cancel with a SIGTERM to the job's whole process group (`timeout` does).
    Ray's daemons are not in it: vsr stops them itself and ends as a clean interrupt (130).
    (Were they in it, they would die with it and ray.init wait a minute for its GCS, or Ray's
    core exit the process with status 1 when it sees its raylet gone.)"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "tiny_x2.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "vsr.cli", "upscale", str(TINY), str(out), *LANCZOS, "--json"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            seen = _ray_gcs_started(proc.pid)
            time.sleep(0.02)
        assert seen, "Ray's GCS never started"
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "vsr: interrupted"
    assert not out.exists()
    _assert_gone(seen)


def test_the_embedded_instance_ends_when_its_driver_is_killed():
    """SIGKILL (or a crash) gives vsr no chance to stop Ray: the head process sees its stdin
    close and ends, and Ray's daemons and workers with it."""
    from test_cluster import descendants

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = ("import time\nfrom vsr.cluster.runtime import RaySession\n"
            "with RaySession(None, num_cpus=1):\n    import ray\n"
            "    ray.get(ray.remote(lambda: 1).remote())\n    print('ready', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        ray_processes = descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert len(ray_processes) >= 5, ray_processes  # the head process, GCS, raylet, agents, a worker
    _assert_gone(ray_processes, timeout=30)


def test_a_process_that_imported_ray_first_is_told_what_to_set():
    """Ray reads its loopback switch and authentication mode when it is imported: a process
    that imported it without them cannot join the embedded instance, and is told so."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    code = ("import ray\nfrom vsr.cluster.runtime import RaySession\nfrom vsr.errors import JobError\n"
            "try:\n    RaySession(None).__enter__()\nexcept JobError as err:\n    print(err)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and RAY_AUTH_MODE=token" in r.stdout, r.stdout
    assert "set them before importing ray" in r.stdout


# a Ray module or name whose name starts with one underscore, written anywhere (strings too)
PRIVATE_RAY_NAME = re.compile(r"\bray(?:\.\w+)*\.(?!__)_\w*")


def test_no_module_uses_a_private_ray_module():
    """Ray through its public API only (one Ray release must not break every job): no module
    in vsr/, tests/ or benchmarks/ imports or names a Ray module or attribute whose name starts
    with an underscore, code run in subprocesses (strings) included."""
    found = []
    for folder in ("vsr", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(text)):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "ray" and any(p.startswith("_") and not p.startswith("__") for p in parts):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
            for number, line in enumerate(text.splitlines(), 1):
                if PRIVATE_RAY_NAME.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_an_address_where_nothing_listens_fails_at_once():
    """`--address 127.0.0.1:1` once hung (ray.init retries for minutes, printing a warning every
    30 s); a host:port that refuses connections is a one-line usage error before ray.init
    ("nothing answers" is only said by that check)."""
    from vsr.cluster.runtime import RaySession
    from vsr.errors import UsageError

    with pytest.raises(UsageError, match=r"cannot join the Ray cluster at '127.0.0.1:1': nothing answers"):
        with RaySession("127.0.0.1:1"):
            pass
