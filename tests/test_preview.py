"""`vsr preview`: contact sheet size and content, seeking (frames decoded counted), clip with audio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vsr.errors import OutputError, UsageError
from vsr.media.picture import PictureOptions, plan_picture
from vsr.media.probe import probe
from vsr.preview import (FLICKER_FRAMES, GAP, LABEL_HEIGHT, OUTPUT_COLOUR, PLOT_HEIGHT, SOURCE_COLOUR, frame_at, grab_frames,
                         parse_time, parse_times, render_preview)

MEDIA = Path(__file__).parent / "data" / "media"
LEADER = MEDIA / "leader_320x240_h264_aac.mp4"  # 209 frames, 5 keyframes, AAC audio
BIKES = MEDIA / "bikes_640x272_noaudio.mp4"


def vsr_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=120)


def test_time_parsing():
    assert parse_time("00:01:10") == 70 and parse_time("1:10.5") == 70.5
    assert parse_time("5") == 5 and parse_time("3s") == 3 and parse_time("250ms") == 0.25
    assert parse_times("00:00:05,00:01:10") == [5, 70]
    with pytest.raises(UsageError, match="bad time"):
        parse_time("five")


def test_seek_decodes_only_the_gop_before_each_time():
    info = probe(LEADER)
    v = info.video
    plan = plan_picture(info, 2, PictureOptions())
    late = frame_at(info, 6.5)
    pictures, decoded = grab_frames(info, [late], plan)
    key = max(k for k in v.keyframe_pts if k <= late)
    span = sum(1 for p in v.frame_pts if key <= p <= late)  # frames from the keyframe to the target
    assert decoded <= span + 4, (decoded, span)  # + reorder delay of B-frames
    assert decoded < v.frame_count // 3
    # The picked frame is the one a full decode gives at that pts.
    with av.open(str(LEADER)) as c:
        ref = next(f for f in c.decode(video=0) if f.pts == late).to_ndarray(format="rgb24")
    assert np.mean(np.abs(pictures[0].astype(int) - ref.astype(int))) < 2.0


def test_sheet_has_expected_size_and_halves_differ(tmp_path):
    out = tmp_path / "sheet.png"
    # real pretrained network; 4 frames for the flicker plot keep the test short (the default is 12)
    s = render_preview(LEADER, "realesr-animevideov3-x2", [1.0, 5.5], out, flicker_frames=4)
    w, h = 640, 480
    assert s["out_size"] == [w, h]
    with Image.open(out) as im:
        assert im.size == (2 * w + GAP, 2 * (LABEL_HEIGHT + h) + PLOT_HEIGHT) == tuple(s["sheet_size"])
        sheet = np.asarray(im.convert("RGB")).astype(int)
    for row in range(2):
        y = row * (LABEL_HEIGHT + h) + LABEL_HEIGHT
        left = sheet[y:y + h, :w]
        right = sheet[y:y + h, w + GAP:]
        assert np.mean(np.abs(left - right)) > 2  # bicubic source vs network output differ...
        assert np.mean(np.abs(left - right)) < 25  # ...but show the same picture
        assert left.std() > 10  # a real picture, not an empty canvas
        label = sheet[row * (LABEL_HEIGHT + h): y]
        assert (label > 128).any()  # the label text is drawn
    assert s["frames_decoded"] < s["frames_total"] // 2
    assert not list(tmp_path.glob("*.part"))
    # the flicker plot below the pictures: the source's Lanczos and the network, frame by frame
    f = s["flicker"]
    assert f["frames"] == 4 and len(f["per_frame"]) == 3
    assert f["model"] == "realesr-animevideov3-x2" and f["still"]["share"] > 0.2
    assert f["still"]["ratio"] > 0 and f["still"]["output_change"] > 0
    plot = sheet[2 * (LABEL_HEIGHT + h):]
    for colour in (SOURCE_COLOUR, OUTPUT_COLOUR):
        assert (np.abs(plot - np.array(colour)).sum(-1) < 30).sum() > 50, colour  # its line is drawn


def test_preview_of_interlaced_source_is_deinterlaced(tmp_path):
    from tests.test_archival import BIKES as SRC, encode, real_frames, weave
    from vsr.media.deinterlace import comb_energy

    src = [f[:, :320] for f in real_frames(SRC, 8, start=60)]
    path = tmp_path / "woven.mkv"
    encode(path, [weave(src[2 * i], src[2 * i + 1]) for i in range(4)], field="tff")
    info = probe(path)
    t = float(info.video.frame_pts[2] * info.video.time_base)
    raw_plan = plan_picture(info, 1, PictureOptions(deinterlace="off"))
    on_plan = plan_picture(info, 1, PictureOptions())
    (raw,), _ = grab_frames(info, [frame_at(info, t)], raw_plan)
    (clean,), _ = grab_frames(info, [frame_at(info, t)], on_plan)
    y = np.array([0.299, 0.587, 0.114])
    assert comb_energy(raw @ y) >= 5 * comb_energy(clean @ y)


def test_clip_has_upscaled_video_and_audio_of_the_span(tmp_path):
    out = tmp_path / "sheet.png"
    clip = tmp_path / "clip.mkv"
    s = render_preview(LEADER, "bicubic", [2.0], out, outscale=0.5, clip_seconds=1.0, clip_output=clip)
    assert s["clip"]["frames"] == 30  # 1 s of 29.97 fps: frames starting in [2.0, 3.0)
    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (160, 120)
        vt = [float(f.pts * f.time_base) for f in c.decode(v)]
        assert len(vt) == 30 and abs(vt[0]) < 1e-3
    with av.open(str(clip)) as c:
        a = c.streams.audio[0]
        at = [float(p.pts * p.time_base) for p in c.demux(a) if p.size and p.pts is not None]
    assert at and abs(at[0]) < 0.03 and 0.95 < at[-1] < 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "sheet.png"]  # no segment or its digests


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="outside"):
        render_preview(LEADER, "bicubic", [60.0], tmp_path / "s.png")
    with pytest.raises(OutputError, match="does not exist"):
        render_preview(LEADER, "bicubic", [1.0], tmp_path / "missing" / "s.png")
    r = vsr_cli("preview", str(tmp_path / "nope.mp4"), "-m", "bicubic", "--at", "1", "-o", str(tmp_path / "s.png"))
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    r = vsr_cli("preview", str(LEADER), "-m", "bicubic", "--at", "soon", "-o", str(tmp_path / "s.png"))
    assert r.returncode == 2 and "bad time" in r.stderr


def test_cli_json_summary(tmp_path):
    out = tmp_path / "bikes.png"
    r = vsr_cli("preview", str(BIKES), "-m", "bicubic", "--outscale", "1", "--at", "00:00:08",
                "--target", "320x320", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["out_size"] == [320, 136] and s["sheet_size"] == [2 * 320 + GAP, LABEL_HEIGHT + 136 + PLOT_HEIGHT]
    assert s["flicker"]["frames"] == FLICKER_FRAMES
    assert s["frames_decoded"] < 250 // 2 and out.is_file()


def test_preview_of_a_browser_recording_with_frames_sharing_a_pts(tmp_path, corpus_dir):
    """Chrome's MediaRecorder writes frames that share a pts; probe moves them just after their
    predecessor. The sheet and the clip find those frames by their moved pts (FrameRetimer)."""
    src = corpus_dir / "chrome57_mediarecorder_vp8_opus.webm"
    info = probe(src)
    assert info.video.retimed and info.video.retimed["frames"] > 0
    moved = info.video.retimed["examples"][0][1]  # a pts that exists only after retiming
    at = float((moved - info.video.frame_pts[0]) * info.video.time_base)
    clip = tmp_path / "clip.mkv"
    s = render_preview(src, "lanczos", [at], tmp_path / "sheet.png", outscale=0.5, clip_seconds=0.5,
                       clip_output=clip)
    assert s["pts"] == [moved]
    with av.open(str(clip)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(pts) == s["clip"]["frames"] > 0 and pts == sorted(set(pts))
