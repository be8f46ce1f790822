"""The Ray side of a video job: a lost worker, loopback-only embedded Ray, a two-node cluster."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import pytest

from vsr.cluster import Events, JobOptions, run_upscale_job
from vsr.errors import JobError
from vsr.media.verify import verify

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "data" / "media"
LEADER = MEDIA / "leader_320x240_h264_aac.mp4"
WEBM = MEDIA / "bbb_320x180_vp9_opus.webm"  # 5 keyframes, one per second
FAST = dict(model="bicubic", outscale=2.0, segment_seconds=0.5, encode={"preset": "ultrafast"})


# ---------------------------------------------------------------- processes and sockets
def _stat(pid: str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(d)):
            children.setdefault(int(st[1]), []).append(int(d))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def listening_sockets(pids: set[int]) -> list[str]:
    """'address:port' of every listening TCP socket (v4 and v6) owned by these processes."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = []
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                addr, port = f[1].split(":")
                raw = bytes.fromhex(addr)
                if size == 8:
                    ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:  # four little-endian 32-bit words
                    ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.append(f"{ip}:{int(port, 16)}")
    return found


def is_loopback(addr: str) -> bool:
    ip = addr.rsplit(":", 1)[0]
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


# ---------------------------------------------------------------- tests
def test_lost_worker_mid_job_still_verifies(tmp_path, monkeypatch):
    # conftest sets the loopback switch for every test; undo it here so that the job's own
    # setting (the embedded head process's environment) is what keeps Ray on loopback
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    killed: list[int] = []
    sockets: list[str] = []

    def on_event(name: str, fields: dict) -> None:
        if name == "segment_start" and not sockets:
            sockets.extend(listening_sockets(descendants(os.getpid()) | {os.getpid()}))
        if name == "segment_start" and fields["index"] == 1 and not killed:
            os.kill(fields["pid"], signal.SIGKILL)  # the worker that just got segment 1
            killed.append(fields["pid"])

    out = tmp_path / "bbb.webm"
    summary = run_upscale_job(WEBM, out, JobOptions(workers=2, **FAST), events=Events(callback=on_event))
    assert killed and summary["workers_lost"] >= 1 and summary["retries"] >= 1
    assert summary["segments"] == 5 and summary["frames"] == 120
    assert summary["verify"]["ok"] and verify(WEBM, out, 2.0).ok
    # embedded Ray listens, but on loopback only (DESIGN.md, Security)
    assert sockets, "expected Ray's own listening sockets"
    assert [s for s in sockets if not is_loopback(s)] == []
    import ray

    assert not ray.is_initialized()  # the job shut its embedded Ray down


def test_retries_are_bounded_and_the_failure_names_the_time_range(tmp_path):
    def on_event(name: str, fields: dict) -> None:
        if name == "segment_start" and fields["index"] == 1:
            os.kill(fields["pid"], signal.SIGKILL)  # every attempt at segment 1 loses its worker

    out = tmp_path / "bbb.webm"
    with pytest.raises(JobError) as err:
        run_upscale_job(WEBM, out, JobOptions(workers=1, max_retries=1, **FAST), events=Events(callback=on_event))
    msg = str(err.value)
    assert msg.startswith("segment 1 (0:00:01.000-0:00:02.000) failed after 2 attempts") and "\n" not in msg
    assert err.value.exit_code == 7
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    import ray

    assert not ray.is_initialized()


def _interface_ip() -> str:
    """This machine's non-loopback IPv4 address (what Ray 2.60 maps 127.0.0.1 to)."""
    for probe in ("10.255.255.255", "192.168.255.255", "8.8.8.8"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((probe, 9))  # UDP connect sends nothing; it picks the outgoing interface
            ip = s.getsockname()[0]
            if not ip.startswith("127.") and ip != "0.0.0.0":
                return ip
        except OSError:
            continue
        finally:
            s.close()
    lines = Path("/proc/net/fib_trie").read_text().splitlines()  # no route out: any local address
    for prev, line in zip(lines, lines[1:]):
        if "/32 host LOCAL" in line:
            ip = prev.split()[-1]
            if not ip.startswith("127."):
                return ip
    raise AssertionError("this machine has no non-loopback IPv4 address for a two-node cluster")


def _ray_start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop_session(proc: subprocess.Popen) -> None:
    """Stop one `ray start --block` and everything it started (its own session), nothing else."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)


def test_two_node_cluster_runs_segments_on_both_nodes(tmp_path):
    ip = _interface_ip()
    assert not ip.startswith("127.")
    with socket.socket() as s:  # a free port for the head's GCS
        s.bind((ip, 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    # A private temp dir (short: it holds unix sockets) keeps `ray start`'s "current cluster"
    # file away from /tmp/ray, so no other Ray user on this machine joins this test cluster.
    ray_tmp = tempfile.mkdtemp(prefix="vsr-ray-", dir="/tmp")
    head = _ray_start(["--head", f"--port={port}", f"--node-ip-address={ip}", "--num-cpus=1",
                       "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
                      env, tmp_path / "head.log")
    node = None
    try:
        node = _ray_start([f"--address={ip}:{port}", f"--node-ip-address={ip}", "--num-cpus=1",
                           f"--temp-dir={ray_tmp}"],
                          env, tmp_path / "node.log")
        out_dir = tmp_path / "out"
        cmd = [sys.executable, "-m", "vsr.cli", "run", str(ROOT / "pipelines" / "renderfarm.toml"),
               "--input", str(WEBM), "--output-dir", str(out_dir), "--workdir", str(tmp_path / "work"),
               "--address", f"{ip}:{port}", "--workers", "2", "-m", "bicubic", "--outscale", "2",
               "--segment-seconds", "0.5", "--keep-workdir", "--json"]
        deadline = time.time() + 90
        while True:  # wait until both nodes have registered
            probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{ip}:{port}', "
                                    "log_to_driver=False); print(len([n for n in ray.nodes() if n['Alive']]))"],
                                   env=env, capture_output=True, text=True, timeout=120)
            if probe.stdout.strip().endswith("2") or time.time() > deadline:
                break
            time.sleep(2)
        assert probe.stdout.strip().endswith("2"), probe.stdout + probe.stderr[-2000:]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        ready = [e for e in events if e["event"] == "worker_ready"]
        assert len({e["node_id"] for e in ready}) == 2 and all(e["node_ip"] == ip for e in ready)
        (manifest_path,) = (tmp_path / "work").glob("*/manifest.json")
        manifest = json.loads(manifest_path.read_text())
        nodes = {rec["node_id"] for rec in manifest["segments"].values()}
        assert nodes == {e["node_id"] for e in ready}, "segments ran on both nodes"
        assert events[-1]["event"] == "batch_done" and events[-1]["done"] == 1
        out = out_dir / "bbb_320x180_vp9_opus_x4.mkv"
        assert verify(WEBM, out, 2.0).ok
        # renderfarm.toml prefers hevc_nvenc: the workers (not this driver) were asked, none has
        # NVENC, so the job fell back to libx265 and said so
        assert all(e["nvenc"] == {"hevc_nvenc": False} for e in ready), ready
        (fallback,) = [e for e in events if e["event"] == "encoder_fallback"]
        assert (fallback["wanted"], fallback["used"]) == ("hevc_nvenc", "libx265")
        with av.open(str(out)) as c:
            assert c.streams.video[0].codec_context.name == "hevc"
    finally:
        if node is not None:
            _stop_session(node)
        _stop_session(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    for proc in (head, node):
        assert proc.poll() is not None


def _video_packets(path: Path) -> list[tuple[int | None, str]]:
    import hashlib

    import av

    with av.open(str(path)) as c:
        return [(p.pts, hashlib.sha256(bytes(p)).hexdigest()) for p in c.demux(c.streams.video[0]) if p.size]


def test_a_worker_runs_two_segments_at_once_with_the_same_output(tmp_path):
    """segments_per_worker 2 (the default on a GPU, asked for here on the CPU): one worker has
    two segments in flight, and the video is packet for packet the one-at-a-time video."""
    log: list[tuple[str, int, int]] = []

    def on_event(name: str, fields: dict) -> None:
        if name in ("segment_start", "segment_done"):
            log.append((name, fields["index"], fields["pid"]))

    one, two = tmp_path / "one.webm", tmp_path / "two.webm"
    run_upscale_job(WEBM, one, JobOptions(workers=1, **FAST))
    summary = run_upscale_job(WEBM, two, JobOptions(workers=1, segments_per_worker=2, **FAST),
                              events=Events(callback=on_event))
    first_done = next(i for i, e in enumerate(log) if e[0] == "segment_done")
    started = [e for e in log[:first_done] if e[0] == "segment_start"]
    assert [e[1] for e in started] == [0, 1] and started[0][2] == started[1][2]  # one worker, both
    assert sorted(e[1] for e in log if e[0] == "segment_done") == [0, 1, 2, 3, 4]
    assert summary["verify"]["ok"] and summary["frames"] == 120
    assert _video_packets(two) == _video_packets(one)


def test_a_worker_lost_with_two_segments_is_replaced_once(tmp_path):
    """Both segments in flight on the killed worker are retried; one fresh actor takes its slots."""
    killed: list[int] = []

    def on_event(name: str, fields: dict) -> None:
        if name == "segment_start" and fields["index"] == 1 and not killed:
            os.kill(fields["pid"], signal.SIGKILL)  # segments 0 and 1 are both on this worker
            killed.append(fields["pid"])

    out = tmp_path / "bbb.webm"
    summary = run_upscale_job(WEBM, out, JobOptions(workers=1, segments_per_worker=2, max_retries=1, **FAST),
                              events=Events(callback=on_event))
    assert killed and summary["workers_lost"] == 1 and summary["retries"] == 2
    assert summary["verify"]["ok"] and verify(WEBM, out, 2.0).ok


def test_a_shared_pool_is_asked_for_nvenc_before_the_encoder_is_chosen(tmp_path):
    """A pool started for other options (a batch's, or an API user's) has not said whether
    NVENC opens on its workers: the job asks them, and with none takes the next encoder."""
    from vsr.cluster.batch import BatchItem, existing_output
    from vsr.cluster.pool import WorkerPool
    from vsr.cluster.runtime import RaySession
    from vsr.media.encode import nvenc_available

    seen: list[tuple[str, dict]] = []
    base = JobOptions(model="bicubic", outscale=2.0, segment_seconds=2.5, workers=1,
                      encode={"preset": "ultrafast"})
    with RaySession(None), WorkerPool(base) as pool:
        assert "nvenc" not in pool.workers[0].info  # nothing NVENC in the pool's own options
        options = base.replace(encode={"codec": "hevc_nvenc"}, codecs=["hevc_nvenc", "libx265"])
        summary = run_upscale_job(LEADER, tmp_path / "out.mkv", options, pool=pool,
                                  events=Events(callback=lambda n, f: seen.append((n, f))))
        here = nvenc_available("hevc_nvenc")
        assert pool.workers[0].info["nvenc"] == {"hevc_nvenc": here}
        # a batch run again: the output made with one encoder of the list is kept, also when the
        # workers' answer has changed since (other nodes), which would pick the other encoder
        item = BatchItem(LEADER, tmp_path / "out.mkv", encode=options.encode, codecs=options.codecs)
        assert existing_output(item, pool, options)[0] == "skip"
        pool.workers[0].info["nvenc"] = {"hevc_nvenc": not here}
        assert existing_output(item, pool, options) == ("skip", "output exists, verifies and was made with "
                                                        "the same settings")
    fallbacks = [f for n, f in seen if n == "encoder_fallback"]
    assert summary["encode"]["codec"] == ("hevc_nvenc" if here else "libx265")
    assert fallbacks == ([] if here else [{"wanted": "hevc_nvenc", "used": "libx265"}])
    assert summary["verify"]["ok"]


def test_resume_keeps_the_plan_made_for_other_worker_settings(tmp_path):
    """A short video is cut finer for more worker slots; resumed with fewer (a node lost), the
    job keeps the first run's segments and re-uses the finished ones instead of starting over."""
    work = tmp_path / "work"
    out = tmp_path / "out.mp4"
    base = JobOptions(model="bicubic", outscale=2.0, workdir=str(work), keep_workdir=True,
                      encode={"preset": "ultrafast"})
    first = run_upscale_job(LEADER, out, base.replace(workers=2))
    n = first["segments"]
    assert n > 1 and first["segments_computed"] == n  # one 20 s segment re-planned for 2 slots
    packets = _video_packets(out)
    out.unlink()
    seen: list[tuple[str, dict]] = []
    again = run_upscale_job(LEADER, out, base.replace(workers=1),
                            events=Events(callback=lambda n, f: seen.append((n, f))))
    assert again["segments"] == n and again["segments_reused"] == n and again["segments_computed"] == 0
    assert [f["index"] for name, f in seen if name == "segment_reused"] == list(range(n))
    assert ("segments_planned", {"segments": n, "workers": 1, "resumed": True}) in seen
    assert again["verify"]["ok"] and _video_packets(out) == packets


def test_a_failing_job_stops_its_other_segments(tmp_path):
    """Segment 1 meets a corrupt frame (no scan first) while segment 0 runs beside it on the
    same worker: the job fails with the frame's time and segment 0 is cancelled, not left
    running on a worker that a batch's next file would share."""
    import av

    from vsr.cluster.pool import WorkerPool
    from vsr.cluster.runtime import RaySession
    from vsr.errors import InputError

    with av.open(str(LEADER)) as c:
        pk = sorted((p.pts, p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.pos is not None)
    pts, pos, size = pk[80]  # early in the second segment (keyframes at 0, 50, 75, 104, 150)
    data = bytearray(LEADER.read_bytes())
    data[pos + 4: pos + size] = b"\xff" * (size - 4)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(data)
    finished: list[dict] = []
    options = JobOptions(model="bicubic", outscale=2.0, segment_seconds=2.5, scan=False,
                         workers=1, segments_per_worker=2)
    with RaySession(None), WorkerPool(options) as pool:
        import ray

        with pytest.raises(InputError) as err:
            run_upscale_job(bad, tmp_path / "out.mp4", options, pool=pool,
                            events=Events(callback=lambda n, f: finished.append(f) if n == "segment_done" else None))
        status = ray.get(pool.workers[0].handle.status.remote())
    assert f"{pts / 90000:.3f} s" in str(err.value)
    assert finished == []  # segment 0 did not run to its end
    assert status["segments"] == 0  # nothing of the failed job still running on the worker
    assert not (tmp_path / "out.mp4").exists()
