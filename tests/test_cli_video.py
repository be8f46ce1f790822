"""`vsr upscale` end to end on real clips through a real embedded Ray: output checks, resume after
SIGKILL, Ctrl-C cleanliness, corrupt input, awkward paths."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "data" / "media"
LEADER = MEDIA / "leader_320x240_h264_aac.mp4"  # 209 frames, AAC, keyframes at 0/1.67/2.5/3.47/5.0 s
WEBM = MEDIA / "bbb_320x180_vp9_opus.webm"  # 120 frames, Opus, a keyframe every second
from conftest import CHECK_VIDEO, validated_events
FAST = ["-m", "bicubic", "--outscale", "2", "--segment-seconds", "0.5", "--preset", "ultrafast"]
QUICK = ["-m", "bicubic", "--outscale", "1", "--segment-seconds", "0.5", "--preset", "ultrafast"]  # not about size
# the default encoder settings (x264 medium, crf 18), whose output depended on what the heap held
# until vsr/media/heap.py (without it, 2 of 3 resumed runs differed from the uninterrupted one)
RESUME = ["-m", "bicubic", "--outscale", "1", "--segment-seconds", "0.5"]


def vsr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vsr.cli", *args]


def run_vsr(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(vsr_cmd(*args), capture_output=True, text=True, timeout=timeout, **kw)


def json_events(stdout: str) -> list[dict]:
    """The run's events, each checked against docs/events.schema.json."""
    return validated_events(stdout)


def packets(path: Path, kind: str) -> list[tuple[int | None, str]]:
    """(pts, sha256 of payload) of every packet of the first stream of this kind."""
    with av.open(str(path)) as c:
        stream = getattr(c.streams, kind)[0]
        return [(p.pts, hashlib.sha256(bytes(p)).hexdigest()) for p in c.demux(stream) if p.size]


def frame_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [round(float(f.pts * f.time_base) * 1e6) for f in c.decode(v)]


def session_processes(sid: int) -> list[int]:
    """Live processes of a session (the job's own session: it and everything Ray started)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3] = session id
            out.append(int(d.name))
    return out


def assert_session_ends(sid: int, timeout: float = 15) -> None:
    """Every process of the job's session (Ray's daemons too) is gone within `timeout` seconds."""
    deadline = time.time() + timeout
    while session_processes(sid) and time.time() < deadline:
        time.sleep(0.5)
    assert session_processes(sid) == [], "Ray processes outlived the job"


def kill_session(sid: int) -> None:
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("full") / "leader_x2.mp4"
    r = run_vsr("upscale", str(LEADER), str(out), *FAST, "--json")
    return out, r


def test_end_to_end_real_clip_with_audio(uninterrupted):
    out, r = uninterrupted
    assert r.returncode == 0, r.stderr
    events = json_events(r.stdout)
    done = events[-1]
    assert done["event"] == "job_done" and done["verified"] is True
    assert done["output"] == str(out) and (done["width"], done["height"]) == (640, 480)
    assert done["frames"] == 209 and done["segments"] == 5 and done["segments_computed"] == 5
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (640, 480)
    assert frame_pts(out) == frame_pts(LEADER)
    assert packets(out, "audio") == packets(LEADER, "audio")  # stream-copied, bit-identical
    assert not list(out.parent.glob(".*")), "work directory and temp files are removed after success"
    checker = subprocess.run([sys.executable, str(CHECK_VIDEO), str(LEADER), str(out), "2"],
                             capture_output=True, text=True, timeout=300)
    assert checker.returncode == 0, checker.stdout + checker.stderr
    seg_events = [e for e in events if e["event"] == "segment_done"]
    assert sorted(e["index"] for e in seg_events) == [0, 1, 2, 3, 4]
    assert sum(e["frames"] for e in seg_events) == 209
    # the leader's frames identical to the one before (held digits) are not computed again,
    # but for a segment's first frame
    import numpy as np

    with av.open(str(LEADER)) as c:
        decoded = [(round(float(f.pts * f.time_base), 4), f.to_ndarray(format="rgb24"))
                   for f in c.decode(c.streams.video[0])]
    starts = {round(e["start_time"], 4) for e in events if e["event"] == "segment_start"}
    held = [t for (t, a), (_, b) in zip(decoded[1:], decoded) if np.array_equal(a, b) and t not in starts]
    assert done["identical_frames_reused"] == len(held) == 49


def test_resume_after_sigkill_reuses_finished_segments(tmp_path):
    full = tmp_path / "full" / "bbb_x2.mkv"
    full.parent.mkdir()
    assert run_vsr("upscale", str(WEBM), str(full), *RESUME).returncode == 0
    out = tmp_path / "bbb_x2.mkv"
    args = ["upscale", str(WEBM), str(out), *RESUME, "--json", "--workers", "1"]
    proc = subprocess.Popen(vsr_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if json.loads(line)["event"] == "segment_done":
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        time.sleep(2)  # Ray's processes notice their driver's death; whatever is left goes
        kill_session(proc.pid)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    manifest = json.loads((tmp_path / ".bbb_x2.mkv.vsr-work" / "manifest.json").read_text())
    finished = sorted(int(k) for k in manifest["segments"])
    assert 1 <= len(finished) < 5, finished

    r = run_vsr(*args[:-2], "--json", "--keep-workdir")
    assert r.returncode == 0, r.stderr
    events = json_events(r.stdout)
    assert sorted(e["index"] for e in events if e["event"] == "segment_reused") == finished
    started = sorted({e["index"] for e in events if e["event"] == "segment_start"})
    assert started == [i for i in range(5) if i not in finished]  # finished ones not recomputed
    manifest = json.loads((tmp_path / ".bbb_x2.mkv.vsr-work" / "manifest.json").read_text())
    assert [manifest["segments"][str(i)]["run"] for i in finished] == [1] * len(finished)
    assert manifest["history"][-1]["reused"] == finished
    assert events[-1]["segments_reused"] == len(finished) and events[-1]["verified"]
    # the resumed video stream equals the uninterrupted run's, with the default encoder settings
    assert packets(out, "video") == packets(full, "video")
    assert packets(out, "audio") == packets(full, "audio")


def _upscale_in_own_session(out: Path) -> subprocess.Popen:
    """`vsr upscale WEBM out --json` in its own session (its group can be signalled alone)."""
    return subprocess.Popen(vsr_cmd("upscale", str(WEBM), str(out), *QUICK, "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _read_until(proc: subprocess.Popen, event: str) -> None:
    """Read proc's JSON event lines up to and including the first `event`."""
    for line in proc.stdout:
        if json.loads(line)["event"] == event:
            return
    raise AssertionError(f"vsr ended without a {event} event")


@pytest.mark.parametrize("sig, group", [
    (signal.SIGINT, True),  # a terminal's Ctrl-C reaches the whole process group
    (signal.SIGTERM, False),  # `kill PID`: a scheduler cancelling the job
    (signal.SIGTERM, True),  # schedulers that signal the job's whole process group
    (signal.SIGHUP, False),  # the terminal or ssh session went away
], ids=["ctrl-c", "sigterm-pid", "sigterm-group", "sighup"])
def test_ctrl_c_stops_cleanly(tmp_path, sig, group):
    out = tmp_path / "bbb_x2.webm"
    proc = _upscale_in_own_session(out)
    try:
        _read_until(proc, "segment_start")
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1] == "vsr: interrupted"
        assert json_events(rest)[-1]["event"] == "job_failed"
        assert_session_ends(proc.pid)
    finally:
        kill_session(proc.pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bbb_x2.webm.vsr-work"]  # no half output


def test_terminal_hang_up_stops_cleanly(tmp_path):
    """ssh drops: the terminal vsr writes to is gone (SIGHUP, then EIO on every write). The stop
    must still be the clean interrupt (130), not a crash on the failing "interrupted" message."""
    import pty
    import select

    out = tmp_path / "bbb_x2.webm"
    pid, master = pty.fork()  # the child gets a new session with the pty as its terminal
    if pid == 0:
        os.execv(sys.executable, vsr_cmd("upscale", str(WEBM), str(out), *QUICK, "--json"))
    try:
        seen, deadline = b"", time.time() + 120
        while b"segment_start" not in seen and time.time() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert b"segment_start" in seen, seen[-2000:]
        os.close(master)  # hang up: the kernel sends SIGHUP to the session
        master = -1
        deadline = time.time() + 90
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.2)
        else:
            pytest.fail("vsr did not stop after the hang-up")
        assert os.waitstatus_to_exitcode(status) == 130
        assert_session_ends(pid)
    finally:
        if master >= 0:
            os.close(master)
        kill_session(pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bbb_x2.webm.vsr-work"]  # no half output


def test_job_outcome_does_not_depend_on_a_reader_of_its_output(tmp_path):
    """`vsr upscale ... | consumer` where the consumer dies at once (EPIPE on every write, the
    closing "wrote ..." line included): the job still finishes, verifies and exits 0; lost
    messages are dropped, not fatal. (With --json the event stream gives up the same way.)"""
    out = tmp_path / "bbb_x2.webm"
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: every write to stdout fails with EPIPE
    try:
        proc = subprocess.run(vsr_cmd("upscale", str(WEBM), str(out), *QUICK), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert out.is_file()


def test_sigterm_while_ray_starts_is_a_clean_interrupt(tmp_path):
    """Ray's own SIGTERM handler (exit 15) is active during ray.init; a cancel then is still 130."""
    out = tmp_path / "bbb_x2.webm"
    proc = _upscale_in_own_session(out)
    try:
        _read_until(proc, "job_start")
        time.sleep(1.0)  # Ray is starting (it takes several seconds)
        os.kill(proc.pid, signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1] == "vsr: interrupted"
        assert_session_ends(proc.pid)
    finally:
        kill_session(proc.pid)
    assert not out.exists()


def _corrupt_copy(dst: Path, frame_index: int) -> int:
    """Copy of LEADER with one video packet's payload overwritten; returns that frame's pts."""
    with av.open(str(LEADER)) as c:
        pk = sorted((p.pts, p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.pos is not None)
    pts, pos, size = pk[frame_index]
    data = bytearray(LEADER.read_bytes())
    data[pos + 4: pos + size] = b"\xff" * (size - 4)
    dst.write_bytes(data)
    return pts


def test_corrupt_frame_fails_before_inference_with_its_time(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    pts = _corrupt_copy(bad, 130)
    before = bad.read_bytes()
    r = run_vsr("upscale", str(bad), str(tmp_path / "out.mp4"), *QUICK, "--json")
    assert r.returncode == 3
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("vsr: error: ") and f"{pts / 90000:.3f} s" in err and "--on-corrupt" in err
    events = json_events(r.stdout)
    assert not [e for e in events if e["event"] == "segment_start"], "the scan runs before any inference"
    assert events[-1]["event"] == "job_failed" and events[-1]["exit_code"] == 3
    assert bad.read_bytes() == before and not (tmp_path / "out.mp4").exists()


def test_corrupt_frame_repeat_previous_is_reported(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    pts = _corrupt_copy(bad, 130)
    out = tmp_path / "out.mp4"
    r = run_vsr("upscale", str(bad), str(out), *QUICK, "--on-corrupt", "repeat-previous", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    done = json_events(r.stdout)[-1]
    assert done["event"] == "job_done" and done["frames"] == 209
    assert [f["pts"] for f in done["repeated_frames"]] == [pts]
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 209  # no frame dropped


def _held_drawings(path: Path) -> list[int]:
    """A 16-frame clip of real picture crops held for runs of frames, like animation on twos and
    threes (lossless, so a held frame decodes identical and others never do), a keyframe every 8
    frames. Returns the indices of frames identical to the one before."""
    import numpy as np
    from PIL import Image

    still = np.asarray(Image.open(ROOT / "tests" / "data" / "images" / "00003.png").convert("RGB"))
    order = "AAABBCDDDDEFFFGG"  # frame 8 (a segment start) repeats 7, frame 4 and 12 open chunks of 4
    crops = {k: still[30 * i:30 * i + 48, 50 * i:50 * i + 64] for i, k in enumerate(sorted(set(order)))}
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=12, options={"qp": "0", "preset": "ultrafast", "g": "8",
                                                       "keyint_min": "8", "sc_threshold": "0"})
        v.width, v.height, v.pix_fmt = 64, 48, "yuv444p"
        for i, k in enumerate(order):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(crops[k]), format="rgb24").reformat(format="yuv444p")
            f.pts = i
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    return [i for i in range(1, len(order)) if order[i] == order[i - 1]]


def test_repeated_frames_are_not_recomputed_and_the_output_is_the_same(tmp_path):
    # A real network: reuse changes how many frames it computes, never a picture of the output
    src = tmp_path / "held.mkv"
    repeats = _held_drawings(src)
    args = ["-m", "realesr-animevideov3-x2", "--segment-seconds", "0.5", "--chunk-frames", "4",
            "--codec", "ffv1", "--json"]  # lossless: the output's pictures are the network's
    fast, full = tmp_path / "fast.mkv", tmp_path / "full.mkv"
    r = run_vsr("upscale", str(src), str(fast), *args)
    assert r.returncode == 0, r.stderr[-2000:]
    events = json_events(r.stdout)
    starts = sorted(e["index"] for e in events if e["event"] == "segment_start")
    assert starts == [0, 1]  # two segments: each starts afresh (its first frame is computed)
    done = events[-1]
    assert done["identical_frames_reused"] == len(repeats) - 1 == 8  # all but frame 8, which opens segment 1
    assert sum(e["identical_reused"] for e in events if e["event"] == "segment_done") == 8
    r = run_vsr("upscale", str(src), str(full), *args, "--no-reuse-repeats")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json_events(r.stdout)[-1]["identical_frames_reused"] == 0
    assert packets(fast, "video") == packets(full, "video")
    with av.open(str(fast)) as c:
        pictures = [f.to_ndarray() for f in c.decode(c.streams.video[0])]
    assert len(pictures) == 16  # every frame kept: a held frame is not dropped or merged
    assert all((pictures[i] == pictures[i - 1]).all() == (i in repeats) for i in range(1, 16))


def test_paths_with_spaces_quotes_and_non_ascii(tmp_path):
    folder = tmp_path / "my clips ü"
    folder.mkdir()
    src = folder / "bear \"odd\" 'size' — ß.webm"
    shutil.copy(MEDIA / "bear_161x121_vp9_odd.webm", src)
    out = folder / "out put" / "bär ‘x2’ \"q\".mkv"
    out.parent.mkdir()
    r = run_vsr("upscale", str(src), str(out), "-m", "lanczos", "--outscale", "2")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout  # says where the output went
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (322, 242)
        assert sum(1 for _ in c.decode(v)) == 30
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_bad_input_and_output_are_one_line_errors(tmp_path):
    missing = run_vsr("upscale", str(tmp_path / "nope.mp4"), str(tmp_path / "o.mp4"))
    assert missing.returncode == 3 and missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr
    notvideo = tmp_path / "notes.mp4"
    notvideo.write_text("hello")
    r = run_vsr("upscale", str(notvideo), str(tmp_path / "o.mp4"))
    assert r.returncode == 3 and r.stderr.strip().count("\n") == 0
    same = run_vsr("upscale", str(LEADER), str(LEADER))
    assert same.returncode == 2 and "is the input" in same.stderr
    r = run_vsr("upscale", str(LEADER), str(notvideo / "o.mp4"))  # a folder that cannot exist
    assert r.returncode == 4 and r.stderr.strip().count("\n") == 0 and "output folder" in r.stderr
    assert not list(tmp_path.glob("o.mp4*"))
