"""Closed captions (A53 cc_data) across segments: every output frame carries the caption bytes that
frame carries in a decode of the source from its start, however the job cuts the video.

A decoder parses the captions of pictures it skips and appends them to the next picture it
decodes; a segment decode that starts at its keyframe skips pictures (an MPEG-TS seek lands after
an open GOP's keyframe packet, the open GOP's leading B-frames reference the previous GOP), so
captions moved between frames and verify failed every multi-segment job of a captioned broadcast
TS. The corpus clips are read in place from shared/media/corpus (SOURCES.md there).
"""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from test_media import check_video
from vsr.job.local import nearest_upscale, transcode_with
from vsr.media.captions import with_captions
from vsr.media.decode import a53_captions, decode_segment
from vsr.media.encode import EncodeOptions
from vsr.media.probe import probe
from conftest import CORPUS, NO_SHARED
from vsr.media.segments import plan_segments
from vsr.media.verify import verify

if CORPUS is None:
    pytest.skip(NO_SHARED, allow_module_level=True)
SCTE20 = CORPUS / "mpeg2_ntsc_scte20_cc.ts"  # MPEG-2, open GOPs, SCTE-20 captions on all 202 frames
SINTEL = CORPUS / "sintel_h264_aac_cea608.ts"  # H.264, CEA-608 in SEI on all 240 frames
FAST = EncodeOptions(codec="libx264", preset="ultrafast")


def captions_from_start(path: Path) -> list[tuple[int, bytes | None]]:
    """(pts, cc_data) of every frame of a plain decode from the file's start: the reference."""
    with av.open(str(path)) as c:
        return [(f.pts, a53_captions(f)) for f in c.decode(c.streams.video[0])]


def captions_by_time(path: Path) -> dict[float, bytes | None]:
    """cc_data of each frame by its time in seconds, rounded to the millisecond (Matroska's)."""
    with av.open(str(path)) as c:
        return {round(float(f.pts * f.time_base), 3): a53_captions(f) for f in c.decode(c.streams.video[0])}


def assert_same_captions_frame_by_frame(source: Path, output: Path) -> None:
    """The output's frames, in order, carry the source's frames' cc_data (times within 1 ms)."""
    want, got = sorted(captions_by_time(source).items()), sorted(captions_by_time(output).items())
    assert len(got) == len(want)
    assert all(abs(a - b) <= 0.0011 for (a, _), (b, _) in zip(want, got))
    assert [t for (t, a), (_, b) in zip(want, got) if a != b] == []


@pytest.mark.parametrize("path, seconds", [(SCTE20, 0.1), (SCTE20, 3.0), (SINTEL, 0.1)])
def test_segment_decode_gives_each_frame_the_captions_of_a_decode_from_the_start(path, seconds):
    """SCTE-20 MPEG-2 cut at every keyframe: the seek to a keyframe landed after its packet and the
    next I-frame got 86 triplets (43 skipped pictures' captions); the open GOP's two leading
    B-frames gave theirs to the segment's fourth frame. Each segment's frames now carry exactly the
    bytes of the reference decode."""
    info = probe(path)
    segments = plan_segments(info, seconds)
    assert len(segments) > 1
    got = [(p, cc) for s in segments for c in decode_segment(path, s, info=info) for p, cc in zip(c.pts, c.side_data)]
    want = captions_from_start(path)
    assert [p for p, _ in got] == [p for p, _ in want]
    moved = [p for (p, a), (_, b) in zip(got, want) if a != b]
    assert not moved, f"captions differ from the decode from the start at pts {moved}"
    assert all(cc for _, cc in got)


@pytest.fixture(scope="module")
def broadcast_job(tmp_path_factory) -> Path:
    """The SCTE-20 broadcast TS upscaled in 1 s segments (5 segments, one per GOP)."""
    out = tmp_path_factory.mktemp("captions") / "broadcast.mkv"
    report = transcode_with(SCTE20, out, nearest_upscale(2), 2, target_seconds=1.0, options=FAST)
    assert report.ok, report.problems
    assert report.facts["captions"] == [202, 202]
    return out


def test_multi_segment_broadcast_job_keeps_captions_frame_by_frame(broadcast_job):
    assert len(plan_segments(probe(SCTE20), 1.0)) == 5
    assert_same_captions_frame_by_frame(SCTE20, broadcast_job)
    check_video(SCTE20, broadcast_job, 2)


def test_multi_segment_h264_job_keeps_captions_frame_by_frame(tmp_path):
    out = tmp_path / "sintel.mkv"
    report = transcode_with(SINTEL, out, nearest_upscale(2), 2, target_seconds=0.1, options=FAST)
    assert report.ok, report.problems
    assert report.facts["captions"] == [240, 240]
    assert_same_captions_frame_by_frame(SINTEL, out)
    check_video(SINTEL, out, 2)


def _without_captions(data: bytes) -> bytes:
    """An AVCC access unit (4-byte NAL lengths, as Matroska stores H.264) without its SEI NAL units."""
    out, i = bytearray(), 0
    while i + 4 <= len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        if data[i + 4] & 0x1F != 6:
            out += data[i:i + 4 + n]
        i += 4 + n
    return bytes(out)


def _recaptioned(src: Path, dst: Path, change: dict[float, bytes | None]) -> Path:
    """A copy of src whose frames at the given times (s) carry other cc_data (None: none)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        v_in = inp.streams.video[0]
        v_out = out.add_stream_from_template(v_in)
        out.metadata.update(inp.metadata)  # the start timecode, among others
        v_out.metadata.update(v_in.metadata)
        for pkt in inp.demux(v_in):
            if pkt.dts is None:
                continue
            t = round(float(pkt.pts * pkt.time_base), 3)
            if t in change:
                bare = av.Packet(_without_captions(bytes(pkt)))
                bare.pts, bare.dts, bare.duration, bare.time_base = pkt.pts, pkt.dts, pkt.duration, pkt.time_base
                bare.is_keyframe, bare.stream = pkt.is_keyframe, v_out
                pkt = bare if change[t] is None else with_captions(bare, change[t], False)
            pkt.stream = v_out
            out.mux(pkt)
    return dst


def test_verify_fails_captions_lost_or_moved_between_frames(broadcast_job, tmp_path):
    """Verify compares each captioned frame's payload in order: a frame's captions lost fail, and
    so do captions moved onto the neighbour frame with every byte kept (the bug's signature, which
    a hash over all payloads at once took for equal)."""
    cc = captions_by_time(broadcast_job)
    times = sorted(cc)
    a, b = times[100], times[101]
    assert len(cc[a]) == len(cc[b]) == 6
    info = probe(SCTE20)
    assert verify(SCTE20, _recaptioned(broadcast_job, tmp_path / "same.mkv", {a: cc[a]}), 2, info=info).ok
    lost = verify(SCTE20, _recaptioned(broadcast_job, tmp_path / "lost.mkv", {a: None}), 2, info=info)
    assert "closed captions on 201 frames, source 202" in lost.problems
    moved = {a: cc[a] + cc[b][:3], b: cc[b][3:]}
    shifted = verify(SCTE20, _recaptioned(broadcast_job, tmp_path / "moved.mkv", moved), 2, info=info)
    assert f"closed captions on 202 frames, source 202 (payloads differ, first at the source's frame at {a:.3f} s)" \
        in shifted.problems, shifted.problems
