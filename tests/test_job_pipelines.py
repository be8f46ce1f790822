"""The ready job specs in pipelines/ and `vsr batch`, each run for real on tiny clips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av

from vsr.media.verify import verify

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "data" / "media"
TINY = MEDIA / "bbb_176x144_mpeg4part2.mp4"  # 15 frames, no audio
BEAR = MEDIA / "bear_161x121_vp9_odd.webm"  # 30 frames, odd size


def run_vsr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_archive_restore_spec_makes_a_lossless_verified_master(tmp_path):
    # The spec's own x4plus GAN takes minutes per clip on CPU; a real zoo network stands in.
    r = run_vsr("run", str(ROOT / "pipelines" / "archive_restore.toml"), "--input", str(BEAR),
                "--output-dir", str(tmp_path), "-m", "realesr-animevideov3-x2", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "bear_161x121_vp9_odd_restored.mkv"
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert c.format.name == "matroska,webm" and v.codec_context.name == "ffv1"
        assert (v.codec_context.width, v.codec_context.height) == (322, 242)
    assert verify(BEAR, out, 2.0).ok
    report = json.loads((tmp_path / "archive_report.json").read_text())
    assert report["done"] == 1 and report["failed"] == 0
    done = [e for e in events(r.stdout) if e["event"] == "job_done"][0]
    assert done["model"] == "realesr-animevideov3-x2" and done["picture"]["plan"]["options"]["deinterlace"] == "auto"


def test_nightly_batch_spec_goes_on_past_a_bad_file_and_skips_done_ones(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(TINY, inbox / "good.mp4")
    (inbox / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))  # not a playable video
    spec = ROOT / "pipelines" / "nightly_batch.toml"
    args = ["run", str(spec), "--input", str(inbox / "*.mp4"), "--output-dir", str(tmp_path / "outbox")]
    first = run_vsr(*args)
    assert first.returncode == 7, first.stderr[-3000:]
    report = json.loads((tmp_path / "outbox" / "nightly_report.json").read_text())
    status = {Path(r["input"]).name: r for r in report["results"]}
    assert status["good.mp4"]["status"] == "done" and status["broken.mp4"]["status"] == "failed"
    assert status["broken.mp4"]["exit_code"] == 3 and "\n" not in status["broken.mp4"]["error"]
    out = tmp_path / "outbox" / "good_x2.mp4"
    assert verify(TINY, out, 2.0).ok
    assert "1 done, 0 skipped, 1 failed" in first.stdout
    mtime = out.stat().st_mtime_ns

    second = run_vsr(*args, "--json")
    assert second.returncode == 7
    ev = events(second.stdout)
    assert [Path(e["input"]).name for e in ev if e["event"] == "file_skipped"] == ["good.mp4"]
    assert ev[-1]["event"] == "batch_done" and ev[-1]["skipped"] == 1 and ev[-1]["failed"] == 1
    assert out.stat().st_mtime_ns == mtime  # not redone


def test_batch_folder_with_report(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(BEAR, src / "bear.webm")
    shutil.copy(TINY, src / "tiny.mp4")
    (src / "readme.txt").write_text("not a video, not picked up")
    report = tmp_path / "report.json"
    r = run_vsr("batch", str(src), str(tmp_path / "out"), "-m", "bicubic", "--outscale", "2",
                "--name", "{stem}_x2.mkv", "--report", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["files"] == 2 and rep["done"] == 2 and rep["failed"] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bear_x2.mkv", "tiny_x2.mkv"]
    assert verify(BEAR, tmp_path / "out" / "bear_x2.mkv", 2.0).ok
    assert verify(TINY, tmp_path / "out" / "tiny_x2.mkv", 2.0).ok
