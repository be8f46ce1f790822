"""Media layer on the real clips: probe, frame-exact segments, decode, round trip through assemble."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from vsr.media.decode import decode_segment
from vsr.media.encode import EncodeOptions
from vsr.media.probe import probe
from vsr.job.local import nearest_upscale, transcode_with
from vsr.media.segments import Segment, plan_segments

MEDIA = Path(__file__).parent / "data" / "media"
from conftest import CHECK_VIDEO as CHECKER, psnr

# name -> (frames, audio streams) as SOURCES.md lists them (decoded in full by the curator).
CLIPS = {
    "leader_320x240_h264_aac.mp4": (209, 1),
    "webcam_1080x720_h264_aac.mp4": (30, 1),
    "carphone_176x144_noaudio.mp4": (120, 0),
    "bikes_640x272_noaudio.mp4": (250, 0),
    "bbb_320x180_vp9_opus.webm": (120, 1),
    "bear_161x121_vp9_odd.webm": (30, 0),
    "iphone_568x320_rot90.mov": (3, 0),
    "bbb_176x144_mpeg4part2.mp4": (15, 0),
}


def decode_all(path: Path) -> tuple[list[int], np.ndarray]:
    """Reference: a plain sequential PyAV decode (no seeking) converted like decode_segment does."""
    from vsr.media.colour import frame_to_rgb

    info = probe(path)
    with av.open(str(path)) as c:
        frames = list(c.decode(c.streams.video[0]))
        return [f.pts for f in frames], np.stack([frame_to_rgb(f, info.video) for f in frames])


def check_video(source: Path, output: Path, scale: float) -> str:
    """Run the independent checker; return its output, asserting it passed."""
    r = subprocess.run([sys.executable, str(CHECKER), str(source), str(output), str(scale)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_probe_real_clips(name):
    info = probe(MEDIA / name)
    frames, n_audio = CLIPS[name]
    v = info.video
    assert v.frame_count == frames == len(v.frame_pts)
    assert v.frame_pts == sorted(set(v.frame_pts))
    assert set(v.keyframe_pts) <= set(v.frame_pts) and v.keyframe_pts[0] == v.frame_pts[0]
    assert len(info.audio) == n_audio
    assert not v.vfr
    d = info.to_dict()
    assert d["video"]["frame_count"] == frames and isinstance(d["video"]["time_base"], str)
    assert name.split("_")[0] in info.describe()


def test_probe_facts_of_special_clips():
    assert probe(MEDIA / "iphone_568x320_rot90.mov").video.rotation == -90
    carphone = probe(MEDIA / "carphone_176x144_noaudio.mp4").video
    assert carphone.sar.numerator == 128 and carphone.sar.denominator == 117
    bear = probe(MEDIA / "bear_161x121_vp9_odd.webm").video
    assert (bear.width, bear.height) == (161, 121)
    vp9 = probe(MEDIA / "bbb_320x180_vp9_opus.webm").video
    assert (vp9.colorspace, vp9.color_primaries) == (1, 1)


@pytest.mark.parametrize("name", ["leader_320x240_h264_aac.mp4", "bikes_640x272_noaudio.mp4",
                                  "bbb_320x180_vp9_opus.webm"])
def test_segments_partition_every_frame_once(name):
    info = probe(MEDIA / name)
    pts = info.video.frame_pts
    keys = set(info.video.keyframe_pts)
    for target in (0, 0.5, 1.0, 2.5, 100.0):
        segs = plan_segments(info, target)
        covered = [p for s in segs for p in pts if s.contains(p)]
        assert covered == pts, f"target {target}"
        assert sum(s.frame_count for s in segs) == len(pts)
        assert [s.index for s in segs] == list(range(len(segs)))
        assert all(s.start_pts in keys or s.start_pts == pts[0] for s in segs)
        assert all(a.end_pts == b.start_pts for a, b in zip(segs, segs[1:])) and segs[-1].end_pts is None
        assert [Segment.from_dict(s.to_dict()) for s in segs] == segs
    if len(info.video.keyframe_pts) > 2:
        assert len(plan_segments(info, 0.5)) > 1


@pytest.mark.parametrize("name", ["leader_320x240_h264_aac.mp4", "bbb_320x180_vp9_opus.webm"])
def test_decode_segments_equal_a_sequential_decode(name):
    """Seeking to each segment's keyframe gives exactly the frames (pts and pixels) of a full decode."""
    path = MEDIA / name
    info = probe(path)
    ref_pts, ref = decode_all(path)
    got_pts, got = [], []
    for seg in plan_segments(info, 0.5):
        n = 0
        for chunk in decode_segment(path, seg, chunk_frames=7, info=info):
            assert chunk.frames.dtype == np.uint8 and chunk.frames.shape[1:] == (info.video.height, info.video.width, 3)
            assert len(chunk.pts) == len(chunk.frames) <= 7 and chunk.repeated == []
            got_pts += chunk.pts
            got.append(chunk.frames)
            n += len(chunk.pts)
        assert n == seg.frame_count
    assert got_pts == ref_pts == info.video.frame_pts
    assert np.array_equal(np.concatenate(got), ref)


def test_colour_matrix_follows_the_stream():
    """Untagged HD decodes with BT.709, untagged SD with BT.601 (the same YUV gives other RGB)."""
    from vsr.media.colour import matrix_of

    assert matrix_of(probe(MEDIA / "webcam_1080x720_h264_aac.mp4").video) == "itu709"
    assert matrix_of(probe(MEDIA / "leader_320x240_h264_aac.mp4").video) == "itu601"
    assert matrix_of(probe(MEDIA / "bbb_320x180_vp9_opus.webm").video) == "itu709"  # tagged


def test_round_trip_ffv1_mkv_is_exact(tmp_path):
    from vsr.media.encode import file_sha256

    src = MEDIA / "leader_320x240_h264_aac.mp4"
    before = (file_sha256(src), src.stat().st_mtime_ns)
    out = tmp_path / "out.mkv"
    report = transcode_with(src, out, nearest_upscale(2), 2, target_seconds=1.0,
                            options=EncodeOptions(codec="ffv1"), workdir=tmp_path)
    assert report.ok, report.problems
    info, oinfo = probe(src), probe(out)
    assert oinfo.video.codec == "ffv1" and (oinfo.video.width, oinfo.video.height) == (640, 480)
    assert oinfo.video.frame_count == info.video.frame_count
    assert np.allclose(oinfo.video.frame_times, info.video.frame_times, atol=0.0005 + 1e-9)  # MKV: 1 ms ticks
    ref_pts, ref = decode_all(src)
    _, back = decode_all(out)
    assert np.array_equal(back[:, ::2, ::2], ref)
    assert report.facts["audio"][0]["bit_identical"]
    assert not list(tmp_path.glob(".out.vsr-part-*"))
    assert (file_sha256(src), src.stat().st_mtime_ns) == before  # the input is never touched
    check_video(src, out, 2)


def test_round_trip_x264_crf0_mp4_multi_segment(tmp_path):
    src = MEDIA / "leader_320x240_h264_aac.mp4"
    out = tmp_path / "out.mp4"
    report = transcode_with(src, out, nearest_upscale(2), 2, target_seconds=0.5,
                            options=EncodeOptions(codec="libx264", crf=0, preset="veryfast"))
    assert report.ok, report.problems
    info, oinfo = probe(src), probe(out)
    assert oinfo.video.frame_pts == info.video.frame_pts  # same time base, same pts
    assert oinfo.video.time_base == info.video.time_base
    _, ref = decode_all(src)
    _, back = decode_all(out)
    assert psnr(back[:, ::2, ::2], ref) >= 45
    assert report.facts["audio"][0]["bit_identical"]
    check_video(src, out, 2)


_SVT_SEGMENT = r"""
import sys
import av
import numpy as np
from vsr.media.encode import EncodeOptions, SegmentWriter, resolve_encode_options
from vsr.media.probe import probe
info = probe(sys.argv[1])
opts = resolve_encode_options(info, sys.argv[2] + ".webm", EncodeOptions(codec="libsvtav1"))
with av.open(sys.argv[1]) as c:
    decoded = [(f.to_ndarray(format="rgb24"), f.pts) for _, f in zip(range(3), c.decode(c.streams.video[0]))]
h, w = decoded[0][0].shape[:2]
with SegmentWriter(sys.argv[2], info, opts, w, h) as writer:
    writer.write(np.stack([f for f, _ in decoded]), [p for _, p in decoded])
"""


def test_svt_av1_segments_do_not_print_its_banner(tmp_path):
    """SVT-AV1 printed ~20 lines of banner and configuration per segment to stderr (Ray shows
    them on the console); its warnings and errors still come through (SVT_LOG 2)."""
    env = {k: v for k, v in os.environ.items() if k != "SVT_LOG"}
    r = subprocess.run([sys.executable, "-c", _SVT_SEGMENT, str(MEDIA / "bbb_320x180_vp9_opus.webm"),
                        str(tmp_path / "seg.nut")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "seg.nut").stat().st_size > 0
    assert "Svt[info]" not in r.stderr, r.stderr[:500]
