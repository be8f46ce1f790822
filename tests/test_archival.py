"""Archival sources: interlace detection and deinterlacing, true display aspect, target size, crop.

Interlaced material is made here by weaving two fields of real frames (tests/data/media) into one
frame and encoding it with PyAV as an interlaced, top-field-first H.264 stream.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vsr.errors import UsageError
from vsr.media.borders import detect_borders, parse_crop
from vsr.media.decode import decode_segment
from vsr.media.deinterlace import comb_energy, detect_interlace, field_pts, field_time_base
from vsr.media.picture import PictureOptions, output_geometry, plan_picture
from vsr.media.probe import probe, timecode_of
from vsr.media.segments import plan_segments

MEDIA = Path(__file__).parent / "data" / "media"
BIKES = MEDIA / "bikes_640x272_noaudio.mp4"  # 25 fps, camera and subject motion
CARPHONE = MEDIA / "carphone_176x144_noaudio.mp4"


def real_frames(path: Path, n: int, start: int = 0) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= start:
                out.append(f.to_ndarray(format="rgb24"))
            if len(out) >= n:
                break
    return out


def encode(path: Path, pictures: list[np.ndarray], *, rate=25, field: str | None = None,
           sar: Fraction | None = None, codec="libx264", timecode: str | None = None) -> None:
    """Encode RGB pictures; field='tff'/'bff' flags every frame interlaced with that field first;
    timecode: the video's start timecode tag (a tmcd track in .mp4/.mov)."""
    h, w = pictures[0].shape[:2]
    tb = Fraction(1, rate)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "12", "preset": "ultrafast"} if codec == "libx264" else {}
        if field:
            s.options = {**s.options, "flags": "+ilme+ildct"}
            s.codec_context.field_order = 2 if field == "tff" else 3
        if sar:
            s.codec_context.sample_aspect_ratio = sar
        if timecode:
            s.metadata["timecode"] = timecode
        graph = None
        if field:  # setfield puts the interlaced + field-order flags on the frames the encoder sees
            graph = av.filter.Graph()
            src = graph.add("buffer", video_size=f"{w}x{h}", pix_fmt=str(int(av.VideoFormat("yuv420p"))),
                            time_base=str(tb), pixel_aspect="1/1")
            setfield = graph.add("setfield", f"mode={field}")
            sink = graph.add("buffersink")
            src.link_to(setfield)
            setfield.link_to(sink)
            graph.configure()
        for i, pic in enumerate(pictures):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(pic), format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = i, tb
            if graph is not None:
                graph.push(f)
                f = graph.pull()
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def weave(a: np.ndarray, b: np.ndarray, first: str = "tff") -> np.ndarray:
    """One interlaced frame: the first field's lines from a, the second field's from b."""
    out = a.copy()
    if first == "tff":
        out[1::2] = b[1::2]
    else:
        out[0::2] = b[0::2]
    return out


N_WOVEN = 8


@pytest.fixture(scope="module")
def woven(tmp_path_factory) -> dict:
    """A tff interlaced H.264 MKV woven from real frame pairs (2k, 2k+1) of a moving clip, 320x272."""
    src = [f[:, 160:480] for f in real_frames(BIKES, 2 * N_WOVEN, start=60)]
    pairs = [(src[2 * i], src[2 * i + 1]) for i in range(N_WOVEN)]
    path = tmp_path_factory.mktemp("woven") / "woven_tff.mkv"
    encode(path, [weave(a, b, "tff") for a, b in pairs], field="tff")
    return {"path": path, "pairs": pairs, "info": probe(path)}


def decode_all(path, info, frame_filter=None) -> tuple[np.ndarray, list[int]]:
    frames, pts = [], []
    for seg in plan_segments(info, 1000.0):
        for chunk in decode_segment(path, seg, info=info, frame_filter=frame_filter):
            frames.append(chunk.frames)
            pts += chunk.pts
    return np.concatenate(frames), pts


def luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ------------------------------------------------------------------ detection
def test_auto_detects_tff_from_the_stream(woven):
    info = woven["info"]
    assert info.video.field_order == "tt"
    d = detect_interlace(info, "auto")
    assert d.interlaced and d.parity == "tff"
    assert not detect_interlace(info, "off").interlaced


def test_auto_uses_frame_flags_when_field_order_unknown(woven):
    info = woven["info"]
    unknown = dataclasses.replace(info, video=dataclasses.replace(info.video, field_order=None, interlaced=False))
    d = detect_interlace(unknown, "auto")
    assert d.interlaced and d.parity == "auto"  # bwdif then follows each frame's own field flag
    assert d.flagged_frames == d.sampled_frames == N_WOVEN


def test_progressive_real_clip_is_left_alone():
    info = probe(BIKES)
    assert not detect_interlace(info, "auto").interlaced
    assert plan_picture(info, 2).frame_filter() is None  # nothing to do: frames pass untouched


def test_dv_ntsc_is_bottom_field_first(tmp_path):
    # DV stores no field order in the container; frames are flagged interlaced; the spec says bff.
    path = tmp_path / "dv_ntsc.mov"
    pic = real_frames(CARPHONE, 1)[0]
    big = np.asarray(av.VideoFrame.from_ndarray(pic, format="rgb24").reformat(720, 480).to_ndarray())
    with av.open(str(path), "w") as c:
        s = c.add_stream("dvvideo", rate=Fraction(30000, 1001))
        s.width, s.height, s.pix_fmt = 720, 480, "yuv411p"
        for i in range(2):
            f = av.VideoFrame.from_ndarray(big, format="rgb24").reformat(format="yuv411p")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe(path)
    assert info.video.codec == "dvvideo" and info.video.field_order is None
    d = detect_interlace(info, "auto")
    assert d.interlaced and d.parity == "bff" and "DV" in d.reason


# ------------------------------------------------------------------ deinterlacing
@pytest.mark.parametrize("deinterlacer", ["bwdif", "yadif"])
def test_frame_rate_deinterlace_keeps_count_and_pts_and_removes_combing(woven, deinterlacer):
    info = woven["info"]
    raw, raw_pts = decode_all(woven["path"], info)
    plan = plan_picture(info, 2, PictureOptions(deinterlacer=deinterlacer))
    assert plan.deinterlace and not plan.field_rate and plan.time_base == info.video.time_base
    out, pts = decode_all(woven["path"], info, plan.frame_filter())
    assert len(out) == len(raw) == N_WOVEN
    assert pts == raw_pts == info.video.frame_pts == plan.frame_pts
    comb_in = np.mean([comb_energy(y) for y in luma(raw)])
    comb_out = np.mean([comb_energy(y) for y in luma(out)])
    assert comb_in >= 5 * comb_out, (comb_in, comb_out)


def test_field_rate_doubles_frames_with_midpoint_timestamps(woven):
    info = woven["info"]
    raw, _ = decode_all(woven["path"], info)
    plan = plan_picture(info, 2, PictureOptions(deinterlace_rate="field"))
    out, pts = decode_all(woven["path"], info, plan.frame_filter())
    src = info.video.frame_pts
    assert len(out) == 2 * len(src) == plan.frame_count
    assert pts == plan.frame_pts
    tb_out = plan.time_base
    times = [p * tb_out for p in pts]
    src_times = [p * info.video.time_base for p in src]
    step = src_times[1] - src_times[0]
    assert times[0::2] == src_times
    assert times[1::2] == [t + step / 2 for t in src_times]
    assert all(b > a for a, b in zip(times, times[1:]))
    comb_in = np.mean([comb_energy(y) for y in luma(raw)])
    comb_out = np.mean([comb_energy(y) for y in luma(out)])
    assert comb_in >= 5 * comb_out, (comb_in, comb_out)
    # Fields come out in the right order: output 2k shows frame A (top field), 2k+1 frame B.
    for k, (a, b) in enumerate(woven["pairs"][1:-1], start=1):
        assert psnr(out[2 * k], a) > psnr(out[2 * k], b)
        assert psnr(out[2 * k + 1], b) > psnr(out[2 * k + 1], a)


def test_field_rate_across_segment_boundaries_matches_whole_decode(woven):
    # Segment edges must not change the output timing (second field of a segment's last frame).
    info = woven["info"]
    plan = plan_picture(info, 1, PictureOptions(deinterlace_rate="field"))
    pts = []
    segments = plan_segments(info, 0.01)  # as many keyframe segments as the stream allows
    for seg in segments:
        for chunk in decode_segment(woven["path"], seg, info=info, frame_filter=plan.frame_filter()):
            pts += chunk.pts
    assert pts == plan.frame_pts
    assert plan.output_pts_of(info.video.frame_pts) == plan.frame_pts


def test_field_time_base_halves_only_when_needed():
    assert field_time_base(Fraction(1, 1000), [0, 40, 80]) == Fraction(1, 1000)
    assert field_time_base(Fraction(1, 25), [0, 1, 2]) == Fraction(1, 50)
    assert field_pts([0, 1, 2], Fraction(1, 25), Fraction(1, 50)) == [0, 1, 2, 3, 4, 5]


# ------------------------------------------------------------------ aspect and target
@pytest.fixture(scope="module")
def pal_sar(tmp_path_factory) -> Path:
    """720x576 with SAR 64:45 (PAL 16:9 anamorphic), real frames stretched to the stored size."""
    pics = [np.asarray(av.VideoFrame.from_ndarray(p, format="rgb24").reformat(720, 576).to_ndarray())
            for p in real_frames(BIKES, 3, start=30)]
    path = tmp_path_factory.mktemp("sar") / "pal_169.mkv"
    encode(path, pics, sar=Fraction(64, 45))
    return path


def test_sar_64_45_gives_square_pixels_at_16_9(pal_sar):
    info = probe(pal_sar)
    assert (info.video.width, info.video.height, info.video.sar) == (720, 576, Fraction(64, 45))
    plan = plan_picture(info, 2)
    assert plan.output_sar == 1
    w, h = plan.out_size
    assert (w, h) == (2048, 1152) and Fraction(w, h) == Fraction(16, 9)
    keep = plan_picture(info, 2, PictureOptions(keep_sar=True))
    assert keep.out_size == (1440, 1152) and keep.output_sar == Fraction(64, 45)
    for target, size in (("1080p", (1920, 1080)), ("1440p", (2560, 1440)), ("2160p", (3840, 2160)),
                         ("1000x1000", (1000, 562))):
        assert plan_picture(info, 4, PictureOptions(target=target)).out_size == size
    assert plan_picture(info, 4, PictureOptions(target="1080p", keep_sar=True)).out_size == (1350, 1080)


def test_sar_source_upscaled_frames_are_16_9(pal_sar):
    # The frames the job writes: decoded, then resized to the plan's size (what Upscaler(out_size=) does).
    info = probe(pal_sar)
    plan = plan_picture(info, 0.25)
    assert plan.out_size == (256, 144)
    seg = plan_segments(info, 100)[0]
    chunk = next(decode_segment(pal_sar, seg, info=info))
    small = av.VideoFrame.from_ndarray(chunk.frames[0], format="rgb24").reformat(*plan.out_size).to_ndarray()
    assert small.shape == (144, 256, 3)


def test_geometry_rules():
    # 4:3 NTSC (SAR 8:9) narrows; odd results become even for 4:2:0; portrait follows the picture.
    assert output_geometry(720, 480, Fraction(8, 9), 2, pix_fmt="yuv420p") == ((1280, 960), 1)
    assert output_geometry(161, 121, Fraction(1), 3, pix_fmt="yuv420p")[0] == (484, 364)
    assert output_geometry(161, 121, Fraction(1), 3, pix_fmt="yuv444p")[0] == (483, 363)
    assert output_geometry(320, 568, Fraction(1), 4, target="1080p", pix_fmt="yuv420p")[0] == (1080, 1916)
    # A WxH box is as displayed: a 90-degree rotated stream fits the swapped box.
    assert output_geometry(568, 320, Fraction(1), 4, target="1080x1920", rotation=90,
                           pix_fmt="yuv420p")[0] == (1916, 1080)
    with pytest.raises(UsageError, match="--target"):
        PictureOptions(target="huge")
    with pytest.raises(UsageError, match="--deinterlace"):
        PictureOptions(deinterlace="maybe")
    with pytest.raises(UsageError, match="--crop"):
        PictureOptions(crop="10x10")
    with pytest.raises(UsageError, match="exceeds"):
        parse_crop("200:100:0:0", 176, 144)
    assert PictureOptions.from_dict(PictureOptions(target="1080p").to_dict()).target == "1080p"
    with pytest.raises(UsageError, match="unknown picture option"):
        PictureOptions.from_dict({"tagret": "1080p"})
    with pytest.raises(UsageError, match="keep_sar"):
        PictureOptions.from_dict({"keep_sar": "yes"})
    with pytest.raises(UsageError, match="target"):
        PictureOptions.from_dict({"target": 1080})


# ------------------------------------------------------------------ crop
def test_black_borders_of_a_real_clip_are_detected_within_2px(tmp_path):
    top, bottom, left, right = 20, 28, 16, 32
    pics = []
    for p in real_frames(CARPHONE, 24, start=20):
        canvas = np.zeros((144 + top + bottom, 176 + left + right, 3), np.uint8)
        canvas[top:top + 144, left:left + 176] = p
        pics.append(canvas)
    path = tmp_path / "letterboxed.mp4"
    encode(path, pics)
    info = probe(path)
    found = detect_borders(path, info)
    c = found.crop
    assert abs(c.x - left) <= 2 and abs(c.y - top) <= 2
    assert abs(c.w - 176) <= 2 and abs(c.h - 144) <= 2
    assert "crop" in found.describe()
    plan = plan_picture(info, 2, PictureOptions(crop="auto"))
    assert plan.picture_size == (c.w, c.h) and plan.detected["borders"]["crop"] == str(c)
    frames, pts = decode_all(path, info, plan.frame_filter())
    assert frames.shape[1:3] == (c.h, c.w) and pts == info.video.frame_pts
    # The cropped picture is the content: compare with the unpadded source at the same offset.
    ref = np.stack(real_frames(CARPHONE, 24, start=20))[:, c.y - top:c.y - top + c.h, c.x - left:c.x - left + c.w]
    assert psnr(frames, ref) > 30
    # Manual crop goes through the same filter.
    manual = plan_picture(info, 2, PictureOptions(crop=f"176:144:{left}:{top}"))
    assert manual.picture_size == (176, 144) and manual.out_size == (352, 288)


def test_head_switching_noise_at_the_bottom_is_cropped(tmp_path):
    rng = np.random.default_rng(7)
    pics = []
    for p in real_frames(BIKES, 12, start=100):
        p = p.copy()
        band = p[-8:].copy()  # VHS head switching: the last lines torn sideways, noisy
        p[-8:] = np.clip(np.roll(band, 60, axis=1).astype(int) + rng.integers(-60, 60, band.shape), 0, 255)
        p[-8:, :40] = 0
        pics.append(p)
    path = tmp_path / "vhs.mp4"
    encode(path, pics)
    found = detect_borders(path, probe(path))
    assert 7 <= found.head_switching <= 10 and found.bottom >= 7
    assert found.top == 0 and found.left == 0 and found.right == 0
    clean = tmp_path / "clean.mp4"
    encode(clean, real_frames(BIKES, 12, start=100))
    assert not detect_borders(clean, probe(clean)).found


def test_field_rate_keeps_closed_captions_once_per_frame(tmp_path):
    # A53 captions belong to the interlaced frame: at field rate they ride on its first field only.
    from vsr.media.captions import with_captions

    src = [f[:64, :96] for f in real_frames(BIKES, 12, start=60)]
    woven = [weave(src[2 * i], src[2 * i + 1]) for i in range(6)]
    plain = tmp_path / "plain.mkv"
    encode(plain, woven, field="tff")
    path = tmp_path / "captioned.mp4"
    with av.open(str(plain)) as a, av.open(str(path), "w") as out:
        vin = a.streams.video[0]
        v = out.add_stream_from_template(vin)
        for p in a.demux(vin):
            if p.size:
                p.stream = v
                out.mux(with_captions(p, bytes([0xFC, 0x80 | (p.pts & 0x7F), 0x80]), False))
    info = probe(path)
    assert info.video.field_order == "tt"
    plan = plan_picture(info, 1, PictureOptions(deinterlace_rate="field"))
    side = [cc for s in plan_segments(info, 100)
            for c in decode_segment(path, s, info=info, frame_filter=plan.frame_filter()) for cc in c.side_data]
    source = [cc for s in plan_segments(info, 100) for c in decode_segment(path, s, info=info) for cc in c.side_data]
    assert len(side) == 12 and all(source)
    assert side[0::2] == source and side[1::2] == [None] * 6


@pytest.mark.parametrize("rate", ["frame", "field"])
def test_writer_assemble_verify_accept_the_plan_and_catch_a_wrong_count(tmp_path, rate):
    # The media path of a job without Ray: plan -> decode hook -> writer (plan timing) -> assemble
    # + verify (plan-aware). Small fast-moving crop: the woven frames mix two instants strongly.
    from vsr.errors import OutputError
    from vsr.media.assemble import assemble
    from vsr.media.encode import SegmentWriter, resolve_encode_options

    src = [f[:64, :96] for f in real_frames(BIKES, 12, start=60)]
    path = tmp_path / "woven.mp4"
    encode(path, [weave(src[2 * i], src[2 * i + 1]) for i in range(6)], field="tff", timecode="10:00:00:07")
    info = probe(path)
    assert any(s.kind == "data" for s in info.other)  # the tmcd track MP4 writes for the tag
    plan = plan_picture(info, 2, PictureOptions(deinterlace_rate=rate))
    out_info = plan.output_info(info)
    out = tmp_path / "out.mkv"
    options = resolve_encode_options(info, out)
    segments = plan_segments(info, 0.1)
    paths = []
    for seg in segments:
        seg_path = tmp_path / f"seg{seg.index}.nut"
        with SegmentWriter(seg_path, out_info, options, *plan.out_size) as w:
            for chunk in decode_segment(path, seg, info=info, frame_filter=plan.frame_filter()):
                w.write(chunk.frames.repeat(2, axis=1).repeat(2, axis=2), chunk.pts, chunk.side_data)
        paths.append(seg_path)
    report = assemble(paths, path, out, info, options, scale=plan.display_scale, picture=plan)
    assert report.ok, report.problems
    assert probe(out).video.frame_count == plan.frame_count == 6 * (2 if rate == "field" else 1)
    # the first frame's timecode, counted in output frames: twice as many per second at field rate
    assert timecode_of(probe(out)) == ("10:00:00:14" if rate == "field" else "10:00:00:07")
    assert report.facts["timecode"] == [timecode_of(probe(out))] * 2
    if rate == "field":  # without the plan, twice the source's frames are refused
        with pytest.raises(OutputError, match="segments hold 12 frames"):
            assemble(paths, path, tmp_path / "plain.mkv", info, options, scale=2)
        assert not (tmp_path / "plain.mkv").exists()
