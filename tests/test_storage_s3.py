"""Inputs, outputs and work directories on an object store: a real S3 HTTP endpoint (moto's
standalone server on loopback, started here), real s3fs, real PyAV, real Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import CHECK_VIDEO

ROOT = Path(__file__).resolve().parents[1]
LANCZOS = ["-m", "lanczos", "--outscale", "2"]
BUCKET = "media"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (a free port), the AWS variables pointing at it (inherited
    by the vsr processes), a bucket, and an fsspec filesystem to look at it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    home = tmp_path_factory.mktemp("aws")
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           # no profile or config of the machine's user leaks in
           "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir(BUCKET)
    fs.put_file(str(tiny_clip(home / "clip.mp4")), f"{BUCKET}/in/clip.mp4")
    try:
        yield fs
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tiny_clip(path: Path, frames: int = 48, gop: int = 6) -> Path:
    """A 96x64 H.264 clip with AAC audio, a keyframe every `gop` frames (several segments);
    grainy and nearly lossless (~190 kB), so that a segment's bytes are a small part of it."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=24, options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                                                         "crf": "4"})
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        a = out.add_stream("aac", rate=48000, layout="mono")
        yy, xx = np.mgrid[0:64, 0:96]
        for i in range(frames):
            rgb = np.stack([(xx * 2 + i * 5) % 256, (yy * 3) % 256, ((xx + yy + i * 9) % 256)], -1)
            rgb = np.clip(rgb + rng.integers(-12, 13, rgb.shape), 0, 255).astype(np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
        samples = 48000 * frames // 24
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 48000)).astype(np.float32)
        for at in range(0, samples, 1024):
            chunk = tone[at:at + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, at, Fraction(1, 48000)
            for p in a.encode(frame):
                out.mux(p)
        for s in (v, a):
            for p in s.encode(None):
                out.mux(p)
    return path


def vsr(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr.cli", *args], capture_output=True, text=True,
                          timeout=240, **kw)


def checked(fs, key: str, source: Path, tmp_path: Path) -> None:
    """Download an output object and run the project's independent checker on it."""
    local = tmp_path / Path(key).name
    fs.get_file(f"{BUCKET}/{key}", str(local))
    r = subprocess.run([sys.executable, str(CHECK_VIDEO), str(source), str(local), "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def source_copy(fs, tmp_path: Path) -> Path:
    local = tmp_path / "source.mp4"
    fs.get_file(f"{BUCKET}/in/clip.mp4", str(local))
    return local


# ------------------------------------------------------------------ errors before any work
@pytest.mark.parametrize("args, code, words", [
    (["s3://no-such-bucket/in.mp4", f"s3://{BUCKET}/out/x.mp4"], 3, "no such bucket"),
    ([f"s3://{BUCKET}/in/missing.mp4", f"s3://{BUCKET}/out/x.mp4"], 3, "no such object"),
    ([f"s3://{BUCKET}/in/clip.mp4", "s3://no-such-bucket/x.mp4"], 4, "no such bucket"),
])
def test_a_bad_location_is_one_line_before_any_work(s3, capsys, args, code, words):
    from vsr.cli import main

    assert main(["upscale", *args, *LANCZOS]) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vsr: error: ") and words in err, err
    assert not s3.exists(f"{BUCKET}/out/x.mp4") and not s3.find(f"{BUCKET}/out/")


def test_bad_credentials_and_an_unwritable_prefix_are_one_line(s3, capsys, monkeypatch):
    """moto checks signatures and IAM policies once its no-auth allowance is used up: a key it
    does not know is refused; a user denied PutObject under ro/ cannot write there."""
    import boto3
    from moto import settings
    from s3fs import S3FileSystem

    from vsr.cli import main

    iam = boto3.client("iam")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(UserName="reader", PolicyName="p", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]},
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": [f"arn:aws:s3:::{BUCKET}/ro/*"]}]}))
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    src = f"s3://{BUCKET}/in/clip.mp4"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    S3FileSystem.clear_instance_cache()  # each vsr process reads the variables once; this one twice
    assert main(["upscale", src, f"s3://{BUCKET}/ok/x.mp4", *LANCZOS]) == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "credentials" in err, err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    S3FileSystem.clear_instance_cache()
    assert main(["upscale", src, f"s3://{BUCKET}/ro/x.mp4", *LANCZOS]) == 4
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot write under" in err and "access denied" in err, err
    monkeypatch.undo()
    S3FileSystem.clear_instance_cache()
    assert not s3.find(f"{BUCKET}/ro/") and not s3.find(f"{BUCKET}/ok/")


def test_a_missing_extra_is_named(monkeypatch):
    from vsr.errors import UsageError
    from vsr.storage import uri

    monkeypatch.setitem(sys.modules, "fsspec", None)  # as where vsr[s3] is not installed
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    with pytest.raises(UsageError, match=r"pip install 'vsr\[s3\]'"):
        uri.stat("s3://bucket/key.mp4")


def test_one_lease_per_output_on_the_store(s3):
    from vsr.errors import BusyError
    from vsr.storage.lease import ObjectLock

    work = f"s3://{BUCKET}/leases/.x.mp4.vsr-work"
    first = ObjectLock(work, "s3://x.mp4").acquire()
    try:
        with pytest.raises(BusyError, match=f"pid {os.getpid()} on "):
            ObjectLock(work, "s3://x.mp4").acquire()
    finally:
        first.release()
    assert not s3.exists(f"{BUCKET}/leases/.x.mp4.vsr-work/lock")
    # a dead holder's lease (a process of this host that is gone) is taken over
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    s3.pipe_file(f"{BUCKET}/leases/.x.mp4.vsr-work/lock", json.dumps(
        {"pid": gone.pid, "host": socket.gethostname(), "expires": time.time() + 600}).encode())
    with ObjectLock(work, "s3://x.mp4") as lock:
        held = json.loads(s3.cat_file(f"{BUCKET}/leases/.x.mp4.vsr-work/lock"))
        assert held["token"] == lock.token


def test_the_manifest_on_the_store_keeps_only_unchanged_segments(s3, tmp_path):
    """Resume on a work directory URI: a segment is kept while its object and its frame digests
    object have the ETags recorded at upload; one replaced since is redone; the driver's copy is
    checked against the recorded SHA-256."""
    from vsr.cluster.manifest import Manifest
    from vsr.errors import OutputError
    from vsr.job.remote import StagedJob
    from vsr.storage import uri
    from vsr.storage.files import sha256_file

    work = f"s3://{BUCKET}/manifest-work"
    records = {}
    for i in range(2):
        seg = tmp_path / f"seg_{i:05d}.nut"
        seg.write_bytes(bytes([i]) * 1000)
        sidecar = tmp_path / f"seg_{i:05d}.nut.frames.json"
        sidecar.write_text("{}")
        records[i] = {"file": seg.name, "bytes": 1000, "sha256": sha256_file(seg), "frames": 1,
                      "frames_file": sidecar.name, "frames_etag": uri.upload(sidecar, f"{work}/{sidecar.name}"),
                      "etag": uri.upload(seg, f"{work}/{seg.name}")}
    fingerprint = {"input": "x", "segments": [0, 1]}
    m = Manifest.open(work, fingerprint, resume=True)
    for i, rec in records.items():
        m.record(i, rec)
    s3.pipe_file(f"{BUCKET}/manifest-work/seg_00001.nut", b"\x09" * 1000)  # replaced: same size, new ETag
    again = Manifest.open(work, fingerprint, resume=True)
    assert sorted(again.segments) == [0]
    with StagedJob(str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")) as staged:
        (local,) = staged.segments([f"{work}/seg_00000.nut"], [records[0]["sha256"]])
        assert Path(local).read_bytes() == bytes([0]) * 1000 and Path(str(local) + ".frames.json").exists()
        with pytest.raises(OutputError, match="changed on the store"):
            staged.segments([f"{work}/seg_00001.nut"], [records[1]["sha256"]])


# ------------------------------------------------------------------ whole jobs
def test_batch_on_s3_resumes_after_the_job_is_killed(s3, tmp_path):
    s3.copy(f"{BUCKET}/in/clip.mp4", f"{BUCKET}/batch/a.mp4")
    s3.copy(f"{BUCKET}/in/clip.mp4", f"{BUCKET}/batch/b.mp4")
    args = ["batch", f"s3://{BUCKET}/batch/", f"s3://{BUCKET}/batch_out/", *LANCZOS,
            "--segment-seconds", "0.5", "--json"]
    # a killed driver leaves its local copies behind: in a folder of this test's (short: Ray puts
    # its unix sockets under TMPDIR too), not in /tmp
    driver_tmp = tempfile.mkdtemp(prefix="vsr-s3-", dir="/tmp")
    job = subprocess.Popen([sys.executable, "-m", "vsr.cli", *args], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                           env=dict(os.environ, TMPDIR=driver_tmp))
    try:
        for line in job.stdout:
            if '"segment_done"' in line:
                break
        os.killpg(job.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-file
    finally:
        job.wait(timeout=60)
        shutil.rmtree(driver_tmp, ignore_errors=True)
    left = s3.find(f"{BUCKET}/batch_out/")
    assert left and all("/.a.mp4.vsr-work/" in k for k in left), left  # segments, manifest, lease only
    r = vsr(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    done = {e["input"]: e for e in events if e["event"] == "file_done"}
    assert sorted(done) == [f"s3://{BUCKET}/batch/a.mp4", f"s3://{BUCKET}/batch/b.mp4"]
    assert done[f"s3://{BUCKET}/batch/a.mp4"]["segments_reused"] >= 1  # resumed from the store
    source = source_copy(s3, tmp_path)
    for name in ("a.mp4", "b.mp4"):
        checked(s3, f"batch_out/{name}", source, tmp_path)
    assert sorted(s3.find(f"{BUCKET}/batch_out/")) == [f"{BUCKET}/batch_out/a.mp4", f"{BUCKET}/batch_out/b.mp4"]


# ------------------------------------------------------------------ nodes that share only the store
def _frame_digests(path: Path) -> list[str]:
    import hashlib

    with av.open(str(path)) as c:
        return [hashlib.sha256(f.to_ndarray(format="rgb24").tobytes()).hexdigest() for f in c.decode(video=0)]


def _single_node_reference(source: Path, out: Path) -> Path:
    """The same job in this process (run_segment + assemble, the one code path), no Ray."""
    from vsr.job.local import run_plan
    from vsr.job.options import JobOptions
    from vsr.job.plan import plan_job
    from vsr.job.segment import load_upscaler

    plan = plan_job(source, out, JobOptions(model="lanczos", outscale=2, encode={"codec": "ffv1"}))
    upscaler = load_upscaler(plan.model.upscaler_kwargs())
    assert run_plan(plan, upscaler.upscale, workdir=out.parent).ok
    return out


def test_three_nodes_sharing_only_the_store_lose_one_and_match_one_node(s3, tmp_path, monkeypatch):
    """A head (no CPU for workers) and three 1-CPU nodes, each with its own private TMPDIR; the
    job's input, output and work directory are URIs. One node is removed while the job runs;
    the output (FFV1: lossless, so any cut into segments decodes to the same frames) equals a
    single-process run of the same job."""
    from ray.cluster_utils import Cluster

    # token authentication on, as on a real cluster; the job's driver sends the same token. The
    # token is Ray's own file (~/.ray/auth_token), as for vsr's private instances: a token of this
    # test's own in RAY_AUTH_TOKEN would stay cached in this process's Ray, and later in-process
    # jobs of other tests would present it to their private instances (InvalidAuthToken).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    # a head started in token mode needs the token to exist: Ray's public CLI makes it when
    # missing (a fresh machine whose first Ray instance is this cluster), as an administrator would
    subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"],
                   check=True, capture_output=True, timeout=120)
    # blocks of 4 KiB (not 1 MiB) for the reads of this small clip: the nodes' environment
    monkeypatch.setenv("VSR_S3_BLOCK", "4096")
    private = {n: tmp_path / f"node{n}" for n in range(3)}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = []
        for n, folder in private.items():
            folder.mkdir()
            nodes.append(cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(folder)}))
        cluster.wait_for_nodes()
        env = dict(os.environ, TMPDIR=str(tmp_path))
        work = f"s3://{BUCKET}/cluster-work"
        job = subprocess.Popen(
            [sys.executable, "-m", "vsr.cli", "upscale", f"s3://{BUCKET}/in/clip.mp4", f"s3://{BUCKET}/nodes/clip.mkv",
             *LANCZOS, "--codec", "ffv1", "--address", cluster.address, "--workers", "2",
             "--segment-seconds", "0.25", "--workdir", work, "--keep-workdir", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events, removed = [], None
        for line in job.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "segment_done" and removed is None:
                by_node = {n.node_id: n for n in nodes}
                removed = by_node[events[-1]["node_id"]]
                cluster.remove_node(removed)  # the node that just finished a segment: it had more
        assert job.wait(timeout=240) == 0, job.stderr.read()[-3000:]
    finally:
        cluster.shutdown()
    assert removed is not None
    ready = [e for e in events if e["event"] == "worker_ready"]
    done = [e for e in events if e["event"] == "job_done"][-1]
    assert done["workers_lost"] >= 1 and done["workdir"].startswith(f"s3://{BUCKET}/cluster-work/")
    assert len({e["node_id"] for e in ready}) >= 2
    # nothing passed between the nodes as a local path: the plan named only URIs, the manifest
    # holds object names, and each node's private folder holds nothing of the job any more
    (manifest_key,) = [k for k in s3.find(f"{BUCKET}/cluster-work/") if k.endswith("/manifest.json")]
    manifest = json.loads(s3.cat_file(manifest_key))
    records = manifest["segments"].values()
    assert all("/" not in r["file"] and "/" not in r["frames_file"] for r in records)
    assert str(tmp_path) not in json.dumps(manifest)
    assert len({r["node_id"] for r in records}) >= 2
    for n, folder in private.items():  # the removed node's may hold the segment it was making
        assert nodes[n] is removed or not list(folder.glob("vsr-*")), list(folder.iterdir())
    # each segment's worker fetched only byte ranges of the input (its index and its frames)
    size = s3.info(f"{BUCKET}/in/clip.mp4")["size"]
    assert all(0 < r["source_bytes"] < size / 2 for r in records), [r["source_bytes"] for r in records]
    source = source_copy(s3, tmp_path)
    checked(s3, "nodes/clip.mkv", source, tmp_path)
    reference = _single_node_reference(source, tmp_path / "one" / "clip.mkv")
    assert _frame_digests(tmp_path / "clip.mkv") == _frame_digests(reference)
