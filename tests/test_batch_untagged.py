"""An output with no vsr job tag that verifies (made by a vsr from before job tags, or by another
tool) is kept by `vsr batch`, never overwritten; one that does not verify is a failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av

from vsr.media.containers import read_job_tag

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "media" / "bbb_176x144_mpeg4part2.mp4"  # 15 frames, no audio
LANCZOS = ["-m", "lanczos", "--outscale", "2", "--preset", "ultrafast"]


def run_batch(src: Path, out: Path) -> tuple[int, dict[str, dict]]:
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "batch", str(src), str(out), *LANCZOS, "--json"],
                       capture_output=True, text=True, timeout=300)
    files = {}
    for line in r.stdout.splitlines():
        e = json.loads(line) if line.startswith("{") else {}
        if e.get("event", "").startswith("file_") and e["event"] != "file_start":
            files[Path(e["input"]).name] = e
    return r.returncode, files


def strip_tags(path: Path) -> None:
    """Remux `path` with no container metadata at all (as an older vsr or another tool wrote it)."""
    tmp = path.with_name("untagged" + path.suffix)
    with av.open(str(path)) as src, av.open(str(tmp), "w", format="mp4") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
    tmp.replace(path)


def test_untagged_output_that_verifies_is_kept(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(TINY, src / "tiny.mp4")
    code, files = run_batch(src, out)
    assert code == 0 and files["tiny.mp4"]["event"] == "file_done"
    made = next(out.iterdir())
    strip_tags(made)
    assert read_job_tag(made) is None
    before = made.read_bytes()

    code, files = run_batch(src, out)
    assert code == 0, files
    assert files["tiny.mp4"]["event"] == "file_skipped" and "no vsr job tag" in files["tiny.mp4"]["reason"]
    assert made.read_bytes() == before  # kept as it was
