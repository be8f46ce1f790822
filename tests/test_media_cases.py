"""Media layer on generated files: each case of the issue's "real world" a test can make with PyAV.

Every case goes through plan -> decode -> nearest x2 -> encode -> assemble -> verify
(vsr.job.local.transcode_with) and, where it applies, the independent checker.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import CORPUS, NO_SHARED  # CORPUS: None when the shared folder is not beside this checkout

from test_media import check_video, decode_all, psnr
from vsr.errors import InputError, OutputError, UsageError
from vsr.media.decode import decode_segment, scan_decodable
from vsr.media.encode import EncodeOptions, resolve_encode_options
from vsr.media.probe import probe, timecode_of
from vsr.job.local import nearest_upscale, transcode_with
from vsr.media.segments import plan_segments
from vsr.media.streams import plan_streams
from vsr.media.verify import verify

FAST = EncodeOptions(preset="ultrafast")
ASS_HEADER = (
    "[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, "
    "SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, "
    "Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\nStyle: Default,Arial,20,"
    "&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,1\n\n[Events]\n"
    "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n").encode()

needs_corpus = pytest.mark.skipif(CORPUS is None, reason=NO_SHARED)

def picture(i: int, w: int, h: int, depth: int = 8) -> np.ndarray:
    """A moving gradient + checkerboard (sharp edges, every colour channel used)."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(1, w - 1) + i * 7) % 256
    g = (y * 255 // max(1, h - 1)) % 256
    b = ((x // 16 + y // 16 + i) % 2) * 120 + 60
    rgb = np.stack([r, g, b], -1).astype(np.uint8)
    if depth > 8:
        return rgb.astype(np.uint16) * 257
    return rgb

def make_video(path, *, w=96, h=64, n=24, fps=24, codec="libx264", pix_fmt="yuv420p", pts=None, time_base=None,
               fmt=None, audio=(), subs=(), video2=False, sar=None, rotation=None, tags=None, chapters=None,
               metadata=None, attachments=(), options=None, timecode=None):
    """Write a test file with PyAV. audio: dicts(codec, rate, layout, language); subs: dicts(codec,
    events=[(start_ms, duration_ms, text)], language, extradata); pts: explicit frame pts (VFR, gaps);
    timecode: the video's start timecode tag (MOV/MP4 write it as a tmcd track)."""
    out = av.open(str(path), "w", format=fmt)
    tb = time_base or Fraction(1, fps * 1000 if pts is None else 1000)
    v = out.add_stream(codec, rate=fps, options=options or ({"preset": "ultrafast"} if codec.startswith("libx26") else {}))
    v.width, v.height, v.pix_fmt = w, h, pix_fmt
    v.codec_context.time_base = tb
    v.time_base = tb
    if sar: v.codec_context.sample_aspect_ratio = Fraction(sar)
    if tags:
        for k, val in tags.items(): setattr(v.codec_context, k, val)
    if rotation: v.set_display_rotation(rotation)
    if timecode: v.metadata["timecode"] = timecode
    streams = []
    for a in audio:
        s = out.add_stream(a["codec"], rate=a.get("rate", 48000), layout=a.get("layout", "stereo"))
        if a.get("language"): s.metadata["language"] = a["language"]
        streams.append((s, a))
    v2 = None
    if video2:
        v2 = out.add_stream("libx264" if codec != "ffv1" else "ffv1", rate=fps, options={"preset": "ultrafast"})
        v2.width, v2.height, v2.pix_fmt = 32, 32, "yuv420p"
        v2.metadata["title"] = "second angle"
    sub_streams = []
    for sdef in subs:
        s = out.add_mux_stream(sdef["codec"])
        if sdef.get("extradata"): s.extradata = sdef["extradata"]
        if sdef.get("language"): s.metadata["language"] = sdef["language"]
        s.time_base = Fraction(1, 1000)
        sub_streams.append((s, sdef))
    for name, mime, data in attachments:
        out.add_attachment(name, mime, data)
    if metadata: out.metadata.update(metadata)
    if chapters: out.set_chapters(chapters)
    step = round(1 / (fps * tb))
    frame_pts = pts if pts is not None else [i * step for i in range(n)]
    depth = 10 if "10" in pix_fmt else 8
    for i, p in enumerate(frame_pts):
        rgb = picture(i, w, h, depth)
        f = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if depth > 8 else "rgb24")
        f = f.reformat(format=pix_fmt, dst_colorspace="itu709" if (tags or {}).get("colorspace") == 1 else
                       ("bt2020" if (tags or {}).get("colorspace") == 9 else None),
                       dst_color_range="JPEG" if (tags or {}).get("color_range") == 2 else None)
        if tags:
            for k, val in tags.items(): setattr(f, k, val)
        f.pts, f.time_base = p, tb
        out.mux(v.encode(f))
        if v2 is not None:
            g = av.VideoFrame.from_ndarray(picture(i, 32, 32), format="rgb24").reformat(format="yuv420p")
            g.pts, g.time_base = p, tb
            out.mux(v2.encode(g))
    out.mux(v.encode(None))
    if v2 is not None: out.mux(v2.encode(None))
    dur = float((frame_pts[-1] + step) * tb)
    for s, a in streams:
        rate = a.get("rate", 48000)
        total = int(dur * rate)
        t = 0
        while t < total:
            k = min(1024, total - t)
            samples = (np.sin(2 * np.pi * 440 * (np.arange(t, t + k) / rate)) * 8000).astype(np.int16)
            ch = 2 if a.get("layout", "stereo") == "stereo" else 1
            fr = av.AudioFrame.from_ndarray(np.tile(samples, (ch, 1)).T.reshape(1, -1).copy(), format="s16",
                                            layout=a.get("layout", "stereo"))
            fr.sample_rate = rate
            fr.pts, fr.time_base = t, Fraction(1, rate)
            out.mux(s.encode(fr))
            t += k
        out.mux(s.encode(None))
    for s, sdef in sub_streams:
        for (start_ms, dur_ms, text) in sdef["events"]:
            if sdef["codec"] == "mov_text":
                raw = text.encode(); payload = len(raw).to_bytes(2, "big") + raw
            else:
                payload = text.encode()
            pk = av.Packet(payload)
            pk.pts = pk.dts = start_ms; pk.duration = dur_ms; pk.time_base = Fraction(1, 1000); pk.stream = s
            out.mux(pk)
    out.close()
    return path


def run(src: Path, out: Path, options: EncodeOptions = FAST, scale: int = 2, seconds: float = 0.3, **kw):
    report = transcode_with(src, out, nearest_upscale(scale), scale, target_seconds=seconds, options=options, **kw)
    assert report.ok, report.problems
    return report


def test_vfr_irregular_pts_stay_vfr(tmp_path):
    rng = np.random.default_rng(1)
    steps = rng.choice([17, 33, 41, 50, 83], size=40)  # ms: a phone slowing down and speeding up
    pts = [0] + [int(x) for x in np.cumsum(steps)[:-1]]
    src = make_video(tmp_path / "vfr.mp4", pts=pts, time_base=Fraction(1, 1000), fps=30,
                     options={"preset": "ultrafast", "g": "8"})
    info = probe(src)  # MP4 stores ms as 1/16000 ticks: compare times
    assert info.video.vfr and np.allclose(info.video.frame_times, [p / 1000 for p in pts], atol=1e-9)
    assert len(plan_segments(info, 0.3)) > 1
    for ext in ("mp4", "mkv"):
        out = tmp_path / f"out.{ext}"
        run(src, out)
        o = probe(out)
        assert o.video.vfr
        assert np.allclose(o.video.frame_times, info.video.frame_times, atol=1e-6)
        check_video(src, out, 2)


def test_pts_gap_is_kept(tmp_path):
    pts = [i * 1000 for i in range(12)] + [i * 1000 for i in range(30, 42)]  # 0.75 s hole at 24 fps
    src = make_video(tmp_path / "gap.mp4", pts=pts, time_base=Fraction(1, 24000), fps=24)
    out = tmp_path / "out.mp4"
    run(src, out)
    assert probe(out).video.frame_pts == pts
    check_video(src, out, 2)


def test_mkv_two_audio_subtitle_attachment_chapters_metadata(tmp_path):
    chapters = [dict(id=1, start=0, end=500, time_base=Fraction(1, 1000), metadata={"title": "one"}),
                dict(id=2, start=500, end=1000, time_base=Fraction(1, 1000), metadata={"title": "two"})]
    src = make_video(
        tmp_path / "multi.mkv",
        audio=[dict(codec="aac", language="eng"), dict(codec="flac", layout="mono", language="fra")],
        subs=[dict(codec="subrip", events=[(100, 400, "hello"), (600, 300, "world")], language="deu")],
        chapters=chapters, metadata={"title": "generated"}, attachments=[("font.ttf", "font/ttf", b"\0\1font")])
    out = tmp_path / "out.mkv"
    report = run(src, out)
    o, i = probe(out), probe(src)
    assert [a.codec for a in o.audio] == ["aac", "flac"] and [a.language for a in o.audio] == ["eng", "fra"]
    assert all(a["bit_identical"] for a in report.facts["audio"])
    assert [(s.codec, s.language) for s in o.subtitles] == [("srt", "deu")]  # FFmpeg names the SubRip decoder "srt"
    assert [c["metadata"]["title"] for c in o.chapters] == ["one", "two"]
    assert o.metadata.get("title") == "generated"
    with av.open(str(out)) as c:
        att = [s for s in c.streams if s.type == "attachment"]
        assert [(s.name, bytes(s.data)) for s in att] == [("font.ttf", b"\0\1font")]
    assert [a.disposition for a in o.audio] == [a.disposition for a in i.audio]
    check_video(src, out, 2)
    # Into MP4: SRT becomes mov_text (said in the notes), the attachment is reported, audio copied.
    out4 = tmp_path / "out.mp4"
    report = run(src, out4)
    o4 = probe(out4)
    assert [s.codec for s in o4.subtitles] == ["mov_text"]
    assert any("converted to mov_text" in n for n in report.facts["notes"])
    assert any("attachment" in n and "not copied" in n for n in report.facts["notes"])
    assert all(a["bit_identical"] for a in report.facts["audio"])
    # Into WebM: VP9, both audio tracks to Opus, SRT to WebVTT, languages and chapters kept.
    outw = tmp_path / "out.webm"
    run(src, outw, EncodeOptions())
    ow = probe(outw)
    assert [(a.codec, a.language) for a in ow.audio] == [("opus", "eng"), ("opus", "fra")]
    assert [(s.codec, s.language) for s in ow.subtitles] == [("webvtt", "deu")] and len(ow.chapters) == 2
    check_video(src, outw, 2)


def test_mov_text_becomes_srt_in_mkv(tmp_path):
    src = make_video(tmp_path / "movtext.mp4", audio=[dict(codec="aac")],
                     subs=[dict(codec="mov_text", events=[(0, 500, "first"), (500, 500, "second")],
                                language="eng")])
    out = tmp_path / "out.mkv"
    report = run(src, out)
    o = probe(out)
    assert [(s.codec, s.language) for s in o.subtitles] == [("srt", "eng")]
    with av.open(str(out)) as c:
        texts = [bytes(p).decode() for p in c.demux(c.streams.subtitles[0]) if p.size]
    assert texts == ["first", "second"]
    assert report.facts["notes"]
    # Not check_video here: it counts mov_text's empty gap samples (which only clear the screen
    # and have no SRT form) as events, so a faithful conversion always differs by those.


def test_ass_subtitles_copied_to_mkv_refused_for_mp4(tmp_path):
    src = make_video(tmp_path / "ass.mkv", subs=[dict(
        codec="ass", extradata=ASS_HEADER, language="eng",
        events=[(100, 400, "0,0,Default,,0,0,0,,{\\i1}hello{\\i0}"), (600, 300, "1,0,Default,,0,0,0,,world")])])
    out = tmp_path / "out.mkv"
    run(src, out)
    check_video(src, out, 2)
    with pytest.raises(OutputError, match=r"stream #1 \(subtitle (ass|ssa), eng\).*\.mkv"):
        resolve_encode_options(probe(src), tmp_path / "out.mp4", FAST)
    assert not (tmp_path / "out.mp4").exists()


def test_pcm_and_flac_audio(tmp_path):
    src = make_video(tmp_path / "pcm.mkv", audio=[dict(codec="pcm_s16le"), dict(codec="flac", layout="mono")])
    info = probe(src)
    assert [p.action for p in plan_streams(info, tmp_path / "x.mov")] == ["copy", "transcode"]
    for ext in ("mkv", "mov"):
        out = tmp_path / f"out.{ext}"
        report = run(src, out)
        check_video(src, out, 2)
        assert report.facts["audio"][0]["bit_identical"]
    # FLAC does not fit .mov: transcoded losslessly to ALAC (verify decodes both: same samples).
    assert [a.codec for a in probe(tmp_path / "out.mov").audio] == ["pcm_s16le", "alac"]
    assert report.facts["audio"][1]["samples_identical"] is True


def test_audio_transcoded_when_webm_cannot_hold_it(tmp_path):
    src = make_video(tmp_path / "aac.mp4", audio=[dict(codec="aac", language="jpn")])
    out = tmp_path / "out.webm"
    report = run(src, out, EncodeOptions())
    o = probe(out)
    assert o.video.codec == "vp9" and [a.codec for a in o.audio] == ["opus"] and o.audio[0].language == "jpn"
    assert "transcoded to libopus" in report.facts["notes"][0]
    check_video(src, out, 2)


def test_ten_bit_bt2020_hlg_keeps_depth_and_tags(tmp_path):
    tags = dict(color_primaries=9, color_trc=18, colorspace=9, color_range=1)
    src = make_video(tmp_path / "hlg.mkv", codec="libx265", pix_fmt="yuv420p10le", tags=tags,
                     options={"preset": "ultrafast", "x265-params": "log-level=error"})
    info = probe(src)
    assert info.video.bit_depth == 10 and info.video.color_trc == 18
    chunk = next(decode_segment(src, plan_segments(info, 0)[0], 4, info=info))
    assert chunk.frames.dtype == np.uint16 and chunk.frames.max() > 255
    opts = resolve_encode_options(info, tmp_path / "o.mkv")
    assert (opts.codec, opts.pix_fmt) == ("libx265", "yuv420p10le")
    for ext, codec in (("mkv", "hevc"), ("mp4", "hevc"), ("webm", "av1")):
        out = tmp_path / f"out.{ext}"
        run(src, out, EncodeOptions(preset="ultrafast" if ext != "webm" else "12"))
        o = probe(out).video
        assert (o.codec, o.bit_depth) == (codec, 10)
        assert (o.color_primaries, o.color_trc, o.colorspace, o.color_range) == (9, 18, 9, 1)
        check_video(src, out, 2)
    with pytest.raises(UsageError, match="10-bit"):
        resolve_encode_options(info, tmp_path / "o.mp4", EncodeOptions(codec="libvpx-vp9"))


def test_ten_bit_lossless_codecs(tmp_path):
    src = make_video(tmp_path / "ten.mkv", codec="ffv1", pix_fmt="yuv422p10le", n=8)
    for codec, ext in (("ffv1", "mkv"), ("prores_ks", "mov")):
        out = tmp_path / f"out.{ext}"
        run(src, out, EncodeOptions(codec=codec))
        o = probe(out).video
        assert o.bit_depth == 10 and o.pix_fmt.startswith("yuv422p10")
    _, ref = decode_all(src)
    _, back = decode_all(tmp_path / "out.mkv")
    assert ref.dtype == np.uint16 and ref.max() > 255
    mse = np.mean((back[:, ::2, ::2].astype(np.float64) - ref) ** 2)
    assert 10 * np.log10(65535.0 ** 2 / mse) >= 45  # lossless codec: only the 4:2:2 <-> RGB rounding


def test_odd_size_321x241(tmp_path):
    src = make_video(tmp_path / "odd.mkv", codec="ffv1", w=321, h=241, n=6)
    out = tmp_path / "out.mp4"
    run(src, out)
    assert (probe(out).video.width, probe(out).video.height) == (642, 482)
    check_video(src, out, 2)
    # Scale 1 gives 321x241: 4:2:0 needs even sizes, the writer repeats the edge (1 px).
    out1 = tmp_path / "out1.mp4"
    run(src, out1, scale=1)
    assert (probe(out1).video.width, probe(out1).video.height) == (322, 242)
    check_video(src, out1, 1)


def test_rotation_display_matrix_kept(tmp_path):
    src = make_video(tmp_path / "rot.mp4", rotation=90, w=96, h=64)
    assert probe(src).video.rotation == 90
    for ext in ("mp4", "mkv"):
        out = tmp_path / f"out.{ext}"
        run(src, out)
        assert probe(out).video.rotation == 90
        check_video(src, out, 2)


def test_sar_kept_anamorphic(tmp_path):
    src = make_video(tmp_path / "sar.mkv", w=176, h=144, sar=Fraction(12, 11), n=6)
    out = tmp_path / "out.mp4"
    run(src, out)
    o = probe(out).video
    assert o.sar == Fraction(12, 11) and (o.width, o.height) == (352, 288)
    check_video(src, out, 2)


def test_two_video_streams(tmp_path):
    src = make_video(tmp_path / "two.mkv", video2=True, audio=[dict(codec="aac")])
    out = tmp_path / "out.mkv"
    run(src, out)
    o = probe(out)
    assert (o.video.width, o.video.height) == (192, 128)
    assert [(s.kind, s.width, s.height) for s in o.other if s.kind == "video"] == [("video", 32, 32)]
    check_video(src, out, 2)


def _corrupt_packet(path: Path, dst: Path, index: int) -> int:
    """Scramble the middle of the index-th video packet; return that frame's pts."""
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as c:
        pkts = [(p.pts, p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    pts, pos, size = pkts[index]
    for k in range(pos + size // 4, pos + size * 3 // 4):
        data[k] = (data[k] * 7 + 13) % 256
    dst.write_bytes(bytes(data))
    return pts


@pytest.mark.parametrize("codec,ext", [("ffv1", "mkv"), ("libx264", "mp4")])
def test_corrupt_frame_fails_with_its_time_or_repeats(tmp_path, codec, ext):
    good = make_video(tmp_path / f"good.{ext}", codec=codec, n=36, options={"preset": "ultrafast"}
                      if codec == "libx264" else {})
    bad = tmp_path / f"bad.{ext}"
    pts = _corrupt_packet(good, bad, 20)
    info = probe(bad)
    t = float(pts * info.video.time_base)
    seen: list[int] = []
    scan = scan_decodable(bad, info, progress=seen.append)
    assert not scan.ok and scan.bad_pts == [pts] and scan.frames == 35
    assert seen[-1] in (35, 36)  # ffv1 drops the frame, H.264 outputs it flagged corrupt
    with pytest.raises(InputError, match=f"at {t:.3f} s"):
        scan.raise_if_failed()
    out = tmp_path / "out.mkv"
    with pytest.raises(InputError, match=f"corrupt or missing video frame at {t:.3f} s"):
        transcode_with(bad, out, nearest_upscale(2), 2, options=FAST)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    chunks = [c for s in plan_segments(info, 0) for c in decode_segment(bad, s, info=info,
                                                                        on_corrupt="repeat-previous")]
    assert [p for c in chunks for p in c.repeated] == [pts]
    frames = np.concatenate([c.frames for c in chunks])
    assert [p for c in chunks for p in c.pts] == info.video.frame_pts
    k = info.video.frame_pts.index(pts)  # presentation position (packets are in decode order)
    assert np.array_equal(frames[k], frames[k - 1])
    run(bad, out, on_corrupt="repeat-previous")


def test_truncated_file(tmp_path):
    full = make_video(tmp_path / "full.mkv", n=96, audio=[dict(codec="aac")])
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match="cut.mkv: truncated"):
        probe(cut)
    cut_mp4 = tmp_path / "cut.mp4"
    data = (Path(__file__).parent / "data" / "media" / "leader_320x240_h264_aac.mp4").read_bytes()
    cut_mp4.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.mp4: truncated or corrupt MP4"):
        probe(cut_mp4)


def test_bad_inputs_one_line_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    audio_only = tmp_path / "audio.mka"
    with av.open(str(audio_only), "w", format="matroska") as c:
        s = c.add_stream("flac", rate=8000, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 8000, 0
        c.mux(s.encode(f))
        c.mux(s.encode(None))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    evc = tmp_path / "evc.mp4"  # MPEG-5 EVC: muxable, but this FFmpeg build has no decoder for it
    with av.open(str(evc), "w") as c:
        s = c.add_mux_stream("evc", width=64, height=64)
        s.time_base = Fraction(1, 1000)
        pkt = av.Packet(b"\0\0\1evc" * 8)
        pkt.pts = pkt.dts = 0
        pkt.time_base, pkt.stream = Fraction(1, 1000), s
        c.mux(pkt)
    cases = [(evc, "codec this FFmpeg cannot decode"), (tmp_path / "missing.mp4", "no such file"), (text, "not a media file"),
             (audio_only, "no video stream"), (empty, "empty file"), (tmp_path, "is a directory")]
    for path, why in cases:
        with pytest.raises(InputError) as err:
            probe(path)
        msg = str(err.value)
        assert why in msg and str(path) in msg and "\n" not in msg


def test_unwritable_output(tmp_path):
    src = make_video(tmp_path / "in.mp4", n=4)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        transcode_with(src, blocker / "sub" / "out.mp4", nearest_upscale(2), 2, options=FAST)
    with pytest.raises(UsageError, match="overwrite the input"):
        resolve_encode_options(probe(src), src)
    with pytest.raises(UsageError, match="unknown output container"):
        resolve_encode_options(probe(src), tmp_path / "out.xyz")
    with pytest.raises(UsageError, match=r"cannot hold ffv1 video; use \.mkv$"):  # MOV cannot either
        resolve_encode_options(probe(src), tmp_path / "out.mp4", EncodeOptions(codec="ffv1"))


def make_captioned(path: Path, n: int = 30) -> Path:
    """H.264 with A53 captions on every frame (SEI written by vsr, read back by FFmpeg's decoder)."""
    from vsr.media.captions import with_captions

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=30, options={"preset": "ultrafast", "g": "10"})
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        for i in range(n + 1):
            packets = v.encode(None) if i == n else v.encode(_frame(i))
            for p in packets:
                out.mux(with_captions(p, bytes([0xFC, 0x80 | (p.pts & 0x7F), 0x80 | (p.pts % 3)]), False))
    return path


def _frame(i: int) -> av.VideoFrame:
    f = av.VideoFrame.from_ndarray(picture(i, 96, 64), format="rgb24").reformat(format="yuv420p")
    f.pts = i
    return f


def test_closed_captions_land_on_the_matching_frames(tmp_path):
    from vsr.media.decode import a53_captions

    src = make_captioned(tmp_path / "cc.mp4")
    info = probe(src)
    chunks = [c for s in plan_segments(info, 0.3) for c in decode_segment(src, s, info=info)]
    side = [cc for c in chunks for cc in c.side_data]
    assert len(side) == 30 and all(side)
    for ext, codec in (("mp4", "libx264"), ("mkv", "libx265")):
        out = tmp_path / f"out.{ext}"
        report = run(src, out, EncodeOptions(codec=codec, preset="ultrafast"))
        assert report.facts["captions"] == [30, 30]
        with av.open(str(src)) as a, av.open(str(out)) as b:
            by_time_src = {float(f.pts * f.time_base): a53_captions(f) for f in a.decode(video=0)}
            by_time_out = {round(float(f.pts * f.time_base), 3): a53_captions(f) for f in b.decode(video=0)}
        assert [by_time_out[round(t, 3)] for t in sorted(by_time_src)] == [by_time_src[t] for t in sorted(by_time_src)]
        check_video(src, out, 2)
    # A codec that cannot carry them: the output is still written, the report says what was lost.
    report = run(src, tmp_path / "out_ffv1.mkv", EncodeOptions(codec="ffv1"))
    assert "cannot carry" in report.facts["captions_dropped"]


def test_probe_cli_json_and_errors(tmp_path, capsys):
    import json

    from vsr.cli import main

    src = make_video(tmp_path / "in.mkv", audio=[dict(codec="flac", language="eng")], n=6)
    assert main(["probe", str(src), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["video"]["frame_count"] == 6 and d["audio"][0]["language"] == "eng"
    assert main(["probe", str(src)]) == 0
    assert "6 frames" in capsys.readouterr().out
    assert main(["probe", str(src), "--json", "--scan", "--pts"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["scan"]["ok"] and len(d["video"]["frame_pts"]) == 6
    bad = tmp_path / "bad.mkv"
    pts = _corrupt_packet(make_video(tmp_path / "good.mkv", codec="ffv1", n=12), bad, 6)
    assert main(["probe", str(bad), "--scan"]) == InputError.exit_code
    cap = capsys.readouterr()
    assert f"corrupt or missing at {pts / 1000:.3f} s" in cap.out and "1 corrupt" in cap.err
    assert main(["probe", str(tmp_path / "nope.mp4")]) == InputError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsr: error:") and "no such file" in err and "\n" not in err


def test_mpegts_with_gap_and_adts_audio_into_mp4(tmp_path):
    """Broadcast capture: 90 kHz clock starting late, a hole in the video, ADTS AAC audio."""
    pts = [i * 3750 for i in range(36)] + [i * 3750 for i in range(60, 96)]
    src = make_video(tmp_path / "cap.ts", fmt="mpegts", pts=pts, time_base=Fraction(1, 90000), fps=24,
                     audio=[dict(codec="aac", language="eng")], options={"preset": "ultrafast", "g": "12"})
    info = probe(src)
    assert info.video.frame_count == 72 and info.video.start_time > 0  # the muxer's start offset
    out = tmp_path / "out.mp4"
    report = run(src, out, seconds=0.5)
    assert report.facts["audio"][0]["bit_identical"] == "without ADTS headers"
    o = probe(out).video
    assert np.allclose(np.diff(o.frame_times), np.diff(info.video.frame_times), atol=1e-6)
    check_video(src, out, 2)


def test_mpeg4_part2_avi_with_skipped_slots_and_pcm(tmp_path):
    """AVI stores a variable-rate source as a fixed 1/25 grid with empty chunks in the skipped slots."""
    pts = [0, 1, 2, 3, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    src = make_video(tmp_path / "old.avi", codec="mpeg4", fmt="avi", pts=pts, time_base=Fraction(1, 25), fps=25,
                     audio=[dict(codec="pcm_s16le")])
    info = probe(src)
    assert info.video.frame_pts == pts and info.video.vfr
    out = tmp_path / "out.mp4"
    report = run(src, out)
    assert "transcoded to alac" in report.facts["notes"][0]  # MP4 refuses PCM packets: lossless ALAC
    assert probe(out).audio[0].codec == "alac" and report.facts["audio"][0]["samples_identical"] is True
    check_video(src, out, 2)


def test_dv_411_ntsc_two_pcm_tracks(tmp_path):
    """DV: 720x480 4:1:1, SAR 8:9, 30000/1001 fps, two PCM tracks in QuickTime."""
    src = make_video(tmp_path / "dv.mov", codec="dvvideo", pix_fmt="yuv411p", w=720, h=480, n=4,
                     fps=Fraction(30000, 1001), time_base=Fraction(1001, 30000), sar=Fraction(8, 9), options={},
                     audio=[dict(codec="pcm_s16le", language="eng"), dict(codec="pcm_s16le", language="spa")])
    assert probe(src).video.pix_fmt == "yuv411p"
    out = tmp_path / "out.mkv"
    report = run(src, out)
    o = probe(out)
    assert o.video.pix_fmt == "yuv422p"  # the closest x264 format that keeps 4:1:1's vertical chroma
    assert o.video.sar == Fraction(8, 9) and [a.language for a in o.audio] == ["eng", "spa"]
    assert all(a["bit_identical"] is True for a in report.facts["audio"])
    check_video(src, out, 2)


def test_open_gop_b_frames_segments_decode_exactly(tmp_path):
    """Open GOPs: B-frames after a keyframe (decode order) that show before it belong to the
    previous segment; every segment still yields exactly the pixels of a sequential decode."""
    src = make_video(tmp_path / "open.mkv", n=60, options={
        "preset": "fast", "x264-params": "open-gop=1:keyint=12:min-keyint=12:bframes=3:scenecut=0"})
    info = probe(src)
    with av.open(str(src)) as c:
        order = [(p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]
    leading = [p for (p, _), (k, key) in zip(order[1:], order) if key and p < k]
    assert leading, "the encoder made no open GOP"
    segs = plan_segments(info, 0.4)
    assert len(segs) > 2
    _, ref = decode_all(src)
    got = np.concatenate([c.frames for s in segs for c in decode_segment(src, s, info=info)])
    assert np.array_equal(got, ref)


def test_paths_with_spaces_quotes_and_non_ascii(tmp_path):
    d = tmp_path / "my \"films\" – été"
    d.mkdir()
    src = make_video(d / "clip 1 'a'.mp4", n=6, audio=[dict(codec="aac")])
    out = d / "sortie (x2) ñ.mkv"
    run(src, out)
    assert probe(out).video.frame_count == 6
    assert sorted(p.name for p in d.iterdir()) == sorted([src.name, out.name])  # no temporary left


def test_nvenc_refused_without_an_nvidia_gpu(tmp_path):
    from vsr.media.encode import nvenc_available

    src = make_video(tmp_path / "in.mp4", n=4)
    if nvenc_available("h264_nvenc"):  # a GPU machine: the encoder must then really work
        run(src, tmp_path / "out.mp4", EncodeOptions(codec="h264_nvenc"))
    else:
        with pytest.raises(UsageError, match="h264_nvenc needs an NVIDIA GPU"):
            resolve_encode_options(probe(src), tmp_path / "out.mp4", EncodeOptions(codec="h264_nvenc"))


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from vsr.errors import VsrError
from vsr.media.encode import EncodeOptions
from vsr.media.probe import probe
from vsr.job.local import nearest_upscale, transcode_with
src, out, limit, workdir, seconds = sys.argv[1:6]
info = probe(src)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
try:
    transcode_with(src, out, nearest_upscale(2), 2, options=EncodeOptions(codec="ffv1"), workdir=workdir,
                   info=info, target_seconds=float(seconds))
except VsrError as err:
    print(err)
    sys.exit(err.exit_code)
"""


# ffv1 160x120 x2, 24 frames: two segments of ~157 kB, an output of ~314 kB.
@pytest.mark.parametrize("limit,seconds,where", [(50_000, 0, "segment-00000.nut"), (220_000, 0.3, "out.mkv")])
def test_disk_full_is_a_one_line_output_error(tmp_path, limit, seconds, where):
    """A real write failure (file-size limit of a child process: EFBIG like ENOSPC) while encoding
    a segment or while assembling: exit code 4, one line, nothing left under the output name."""
    import subprocess
    import sys

    src = make_video(tmp_path / "in.mkv", codec="ffv1", w=160, h=120, n=24)
    out = tmp_path / "out" / "out.mkv"
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(src), str(out), str(limit), str(tmp_path), str(seconds)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == OutputError.exit_code, r.stdout + r.stderr
    line = r.stdout.strip()
    assert "\n" not in line and where in line and "write failed" in line
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


@pytest.mark.parametrize("name,kw", [
    ("mpeg2.mxf", dict(codec="mpeg2video", w=720, h=576, n=6, fps=25, time_base=Fraction(1, 25), fmt="mxf",
                       sar=Fraction(16, 15), audio=[dict(codec="pcm_s16le", layout="mono")], options={})),
    ("h263.3gp", dict(codec="h263", w=176, h=144, n=10, fps=15, time_base=Fraction(1, 15), fmt="3gp",
                      audio=[dict(codec="aac", layout="mono", rate=16000)], options={})),
])
def test_legacy_containers_mpeg2_mxf_and_h263_3gp(tmp_path, name, kw):
    src = make_video(tmp_path / name, **kw)
    out = tmp_path / "out.mkv"
    report = run(src, out)
    assert report.facts["audio"][0]["bit_identical"] is True
    assert probe(out).video.sar == probe(src).video.sar
    check_video(src, out, 2)


def test_timecode_track_and_container_timecode_are_kept_and_verified(tmp_path):
    # Camera MOV: a tmcd track next to the video. It is carried as the video's timecode (MOV/MP4
    # write one tmcd track from it, Matroska a TIMECODE tag), not dropped with a warning.
    src = make_video(tmp_path / "camera.mov", n=12, timecode="01:02:03:04")
    info = probe(src)
    tmcd = [s for s in info.other if s.kind == "data"]
    assert len(tmcd) == 1 and timecode_of(info) == "01:02:03:04"
    for ext in ("mkv", "mov", "mp4", "webm"):
        out = tmp_path / f"out.{ext}"
        plans = plan_streams(info, out)
        assert [(p.action, p.note) for p in plans] == [("timecode", "")]
        report = run(src, out, options=FAST if ext != "webm" else EncodeOptions(codec="libvpx-vp9"))
        assert report.facts["timecode"] == ["01:02:03:04"] * 2
        got = probe(out)
        assert timecode_of(got) == "01:02:03:04"
        assert len([s for s in got.other if s.kind == "data"]) == (1 if ext in ("mov", "mp4") else 0)
    # MXF keeps its timecode in the container's tags: the output's video carries it
    mxf = make_video(tmp_path / "tape.mxf", codec="mpeg2video", w=720, h=576, n=4, fps=25,
                     time_base=Fraction(1, 25), fmt="mxf", metadata={"timecode": "10:00:00:07"}, options={})
    assert timecode_of(probe(mxf)) == "10:00:00:07"
    run(mxf, tmp_path / "tape.mov")
    assert timecode_of(probe(tmp_path / "tape.mov")) == "10:00:00:07"
    # verify catches an output that lost it (the same file remuxed without tags)
    stripped = tmp_path / "stripped.mkv"
    with av.open(str(tmp_path / "out.mkv")) as i, av.open(str(stripped), "w") as o:
        v = o.add_stream_from_template(i.streams.video[0])
        v.metadata.clear()
        for pkt in i.demux(i.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = v
                o.mux(pkt)
    report = verify(src, stripped, 2)
    assert timecode_of(probe(stripped)) is None
    assert "timecode None != source 01:02:03:04" in report.problems


def test_unholdable_stream_advice_names_a_container_that_holds_it(tmp_path):
    # A second video stream WebM cannot hold (H.264): the advice is a container that can, never
    # the output's own (.mkv told to use .mkv)
    src = make_video(tmp_path / "two.mp4", n=6, video2=True)
    plans = plan_streams(probe(src), tmp_path / "out.webm")
    (drop,) = [p for p in plans if p.action == "drop"]
    assert drop.note.endswith("not copied (use .mkv or .mov or .mp4 to keep it)")


def test_a_hundred_subtitle_tracks(tmp_path):
    langs = ["eng", "fra", "deu", "spa", "ita", "jpn", "kor", "por", "rus", "nld"]
    subs = [dict(codec="subrip", events=[(100 + i, 300, f"line {i}")], language=langs[i % 10]) for i in range(100)]
    src = make_video(tmp_path / "subs.mkv", n=12, subs=subs)
    out = tmp_path / "out.mkv"
    run(src, out)
    assert [s.language for s in probe(out).subtitles] == [langs[i % 10] for i in range(100)]
    check_video(src, out, 2)


def test_full_range_bt709_phone_video(tmp_path):
    """Phones record full-range ("JPEG") BT.709: decoded and re-encoded full range, tags kept."""
    tags = dict(color_primaries=1, color_trc=1, colorspace=1, color_range=2)
    src = make_video(tmp_path / "phone.mp4", tags=tags, n=8)
    info = probe(src)
    assert info.video.color_range == 2
    from vsr.media.colour import range_of

    assert range_of(info.video) == "JPEG"
    out = tmp_path / "out.mp4"
    run(src, out, EncodeOptions(codec="libx264", crf=0, preset="ultrafast"))
    o = probe(out).video
    assert (o.color_range, o.colorspace, o.color_primaries) == (2, 1, 1)
    _, ref = decode_all(src)
    _, back = decode_all(out)
    # Lossless x264: only RGB clipping of this picture's saturated chroma edges remains (the same
    # 42 dB as its limited-range twin); a range mix-up would cost ~20 dB and shift every mean.
    assert psnr(back[:, ::2, ::2], ref) >= 40
    assert np.abs(back[:, ::2, ::2].mean(axis=(0, 1, 2)) - ref.mean(axis=(0, 1, 2))).max() < 0.5
    check_video(src, out, 2)


def test_pq_hdr10_mastering_metadata_kept(tmp_path):
    """HDR10: BT.2020 + PQ with mastering-display and content-light metadata, through x265 and SVT-AV1."""
    tags = dict(color_primaries=9, color_trc=16, colorspace=9, color_range=1)
    md = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"
    src = make_video(tmp_path / "pq.mkv", codec="libx265", pix_fmt="yuv420p10le", tags=tags, n=4, options={
        "preset": "ultrafast", "x265-params": f"log-level=error:hdr10=1:master-display={md}:max-cll=1000,400"})
    hdr = probe(src).video.hdr
    assert hdr == {"master_display": md, "max_cll": [1000, 400]}
    for ext, preset in (("mkv", "ultrafast"), ("webm", "12")):
        out = tmp_path / f"out.{ext}"
        run(src, out, EncodeOptions(preset=preset))
        o = probe(out).video
        assert o.hdr == hdr and (o.color_trc, o.bit_depth) == (16, 10)
        check_video(src, out, 2)
    report = run(src, tmp_path / "out_ffv1.mkv", EncodeOptions(codec="ffv1"))
    assert "no HDR10" in report.facts["hdr_dropped"]
    assert any("no HDR10" in n for n in report.facts["notes"])  # said, not only recorded
    # a content light level of 0, 0 is "not given": x265 writes one for mastering-display-only sources
    from vsr.media.verify import _hdr_present

    assert _hdr_present({"master_display": md, "max_cll": [0, 0]}) == {"master_display": md}
    assert _hdr_present({"max_cll": [0, 0]}) is None and _hdr_present(hdr) == hdr


def test_interlaced_input_is_flagged(tmp_path):
    src = make_video(tmp_path / "tff.mkv", n=6, options={"preset": "ultrafast", "x264-params": "interlaced=1:tff=1"})
    v = probe(src).video
    assert v.interlaced and v.field_order == "tt"
    assert not probe(make_video(tmp_path / "p.mkv", n=6)).video.interlaced


def test_capture_cut_mid_gop(tmp_path):
    """A TS recording that starts mid-GOP: frames before the first keyframe are undecodable (no
    player shows them); they are counted in the probe, not made up, and everything else is kept."""
    full = make_video(tmp_path / "full.ts", fmt="mpegts", n=48, time_base=Fraction(1, 90000), fps=24,
                      audio=[dict(codec="aac")], options={"preset": "ultrafast", "g": "24"})
    data = full.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[(len(data) // 5) // 188 * 188:])  # whole 188-byte TS packets
    info = probe(cut)
    with av.open(str(cut)) as c:
        decodable = sum(1 for _ in c.decode(video=0))
    assert info.video.leading_undecodable > 0 and info.video.frame_count == decodable
    out = tmp_path / "out.mp4"
    run(src=cut, out=out)
    check_video(cut, out, 2)


def test_timecode_arithmetic():
    from vsr.media import timecode

    assert str(timecode.parse("1:00:00:02")) == "01:00:00:02" and timecode.same("1:00:00:02", "01:00:00:02")
    assert not timecode.same("01:00:00:02", "01:00:00;02")  # drop-frame is another count
    assert timecode.parse("bogus") is None and timecode.for_output("bogus", Fraction(25), 3) == "bogus"
    # 29.97 drop-frame: labels ;00 and ;01 do not exist at a minute but each tenth
    df = timecode.parse("00:00:59;29")
    assert str(timecode.Timecode.from_frame_number(df.frame_number(30) + 1, 30, True)) == "00:01:00;02"
    assert str(timecode.Timecode.from_frame_number(timecode.parse("00:09:59;29").frame_number(30) + 1, 30, True)) \
        == "00:10:00;00"
    for n in range(0, 40000, 997):  # labels and frame numbers map one to one
        assert timecode.Timecode.from_frame_number(n, 30, True).frame_number(30) == n
    # the output's first frame: skipped source frames, then counted in fields
    assert timecode.for_output("10:00:00:07", Fraction(25), 3) == "10:00:00:10"
    assert timecode.for_output("10:00:00:20", Fraction(25), 0, field_rate=True) == "10:00:00:40"
    assert timecode.for_output("10:00:00:20", Fraction(25), 6, field_rate=True) == "10:00:01:02"
    assert timecode.for_output("00:00:59;29", Fraction(30000, 1001), 0, field_rate=True) == "00:00:59;58"
    assert timecode.for_output("23:59:59:24", Fraction(25), 1) == "00:00:00:00"


def test_timecode_follows_the_first_frame_and_only_tmcd_tracks_are_taken_for_it(tmp_path):
    # A capture cut mid-GOP, remuxed with a timecode: the frames before the first keyframe are
    # skipped, so the output's first frame is later and its timecode with it.
    full = make_video(tmp_path / "full.ts", fmt="mpegts", n=48, time_base=Fraction(1, 90000), fps=24,
                      options={"preset": "ultrafast", "g": "24"})
    data = full.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[(len(data) // 5) // 188 * 188:])
    mov = tmp_path / "cut.mkv"
    with av.open(str(cut)) as i, av.open(str(mov), "w") as o:
        v = o.add_stream_from_template(i.streams.video[0])
        v.metadata["timecode"] = "01:00:00:20"
        for pkt in i.demux(i.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = v
                o.mux(pkt)
    info = probe(mov)
    skipped = info.video.leading_undecodable
    assert skipped > 0 and timecode_of(info) == "01:00:00:20"
    out = tmp_path / "out.mkv"
    report = run(mov, out)
    want = f"01:00:{(20 + skipped) // 24:02d}:{(20 + skipped) % 24:02d}"
    assert timecode_of(probe(out)) == want and report.facts["timecode"] == [want, want]
    # MXF: the tape's timecode on the video, another (material package) on the file: the output
    # carries the video's, and no file-level one that MOV/MP4 writers would put first
    src = make_video(tmp_path / "two.mkv", n=6, timecode="10:00:00:05", metadata={"timecode": "09:00:00:00"})
    assert timecode_of(probe(src)) == "10:00:00:05"
    out = tmp_path / "two.mov"
    run(src, out)
    with av.open(str(out)) as c:
        assert not any(k.lower() == "timecode" for k in c.metadata)
    assert timecode_of(probe(out)) == "10:00:00:05"
    # drop-frame counting exists only at multiples of 30 fps: at 24 fps the label counts as
    # non-drop, as FFmpeg's MOV writer has it, so every container carries the same timecode
    df = make_video(tmp_path / "df.mkv", n=6, timecode="10:00:00;02")
    for ext in ("mov", "mkv"):
        assert run(df, tmp_path / f"df_out.{ext}").facts["timecode"] == ["10:00:00:02"] * 2
    # a data stream of another container with a timecode tag (MXF tags them all) is no tmcd track
    from vsr.media.probe import StreamInfo, is_timecode_track

    data_stream = StreamInfo(index=1, kind="data", codec=None, time_base=None, language=None, disposition=0,
                             metadata={"timecode": "10:00:00:00"})
    assert is_timecode_track(probe(tmp_path / "two.mov"), data_stream)
    assert not is_timecode_track(info, data_stream)  # Matroska


@pytest.mark.parametrize("ext", ["mkv", "webm", "nut"])
def test_late_start_is_not_taken_for_truncation(tmp_path, ext):
    # Matroska and NUT declare where the streams end (from 0), not how long they last: a file
    # whose timestamps start at 10 s (a TS capture remuxed with its clock) was refused as
    # truncated, and so was a job's .mkv output of a source starting after 0.5 s.
    src = make_video(tmp_path / f"late.{ext}", n=24, fps=24, pts=[10000 + i * 42 for i in range(24)],
                     codec="libvpx-vp9" if ext == "webm" else "libx264")
    assert probe(src).video.start_time == 10.0
    report = run(src, tmp_path / f"out.{ext}")
    assert report.facts["frames_output"] == 24
    if ext != "nut":  # (a cut NUT file has lost the index that declares its duration)
        data = src.read_bytes()
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match="truncated"):  # a real truncation still is one
            probe(cut)


def test_edit_list_trimmed_head_keeps_the_frames_after_the_cut(tmp_path):
    """An MP4 whose edit list discards its first frames (`ffmpeg -ss ... -c copy`, phone trims):
    the discarded keyframe still decodes the frames shown after it. They were once taken for an
    undecodable lead-in and a whole GOP went missing, with a verified output."""
    step = 42  # 1/24 s in make_video's 1/1000 time base
    src = make_video(tmp_path / "trimmed.mp4", n=48, pts=[(i - 6) * step for i in range(48)],
                     audio=[dict(codec="aac")], options={"preset": "ultrafast", "g": "24", "bf": "2"})
    with av.open(str(src)) as c:
        shown = [f.pts for f in c.decode(video=0)]
    with av.open(str(src)) as c:
        discarded = sum(1 for p in c.demux(video=0) if p.is_discard and p.size)
    assert discarded >= 6 and len(shown) == 42 and min(shown) == 0
    info = probe(src)
    assert info.video.leading_undecodable == 0
    assert info.video.frame_count == 42 and info.video.frame_pts == sorted(shown)
    out = tmp_path / "out.mp4"
    run(src, out)
    check_video(src, out, 2)


def _remux(src: Path, dst: Path, edit=lambda p: p) -> Path:
    """Stream-copy src's video, audio and subtitle streams into dst, each packet through edit
    (which returns the packet to write, or None to drop it): a doctored output for verify."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        streams = [s for s in i.streams if s.type in ("video", "audio", "subtitle")]
        outs = {}
        for s in streams:
            outs[s.index] = o.add_stream_from_template(s, opaque=True)
            outs[s.index].time_base = s.time_base
            outs[s.index].metadata.update(s.metadata)
        for p in i.demux(streams):
            if p.size and (p := edit(p)) is not None:
                p.stream = outs[p.stream.index]
                o.mux(p)
    return dst


def _with_payload(p: av.Packet, data: bytes) -> av.Packet:
    q = av.Packet(data)
    q.pts, q.dts, q.duration, q.time_base, q.stream = p.pts, p.dts, p.duration, p.time_base, p.stream
    return q


def _av_file(path: Path, acodec: str = "aac", lead_s: float = 0.0, chunk: int = 1024) -> Path:
    """1 s of H.264 and an audio track starting lead_s before the first frame (cameras,
    `-itsoffset`), encoded in frames of `chunk` samples."""
    out = av.open(str(path), "w")
    tb = Fraction(1, 24000)
    v = out.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
    v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
    v.codec_context.time_base = v.time_base = tb
    a = out.add_stream(acodec, rate=48000, layout="stereo")
    for i in range(24):
        f = av.VideoFrame.from_ndarray(picture(i, 96, 64), format="rgb24").reformat(format="yuv420p")
        f.pts, f.time_base = i * 1000, tb
        out.mux(v.encode(f))
    out.mux(v.encode(None))
    t, end = -round(lead_s * 48000), 48000
    while t < end:
        k = min(chunk, end - t)
        s = (np.sin(2 * np.pi * 440 * np.arange(t, t + k) / 48000) * 8000).astype(np.int16)
        fr = av.AudioFrame.from_ndarray(np.repeat(s, 2)[None, :].copy(), format="s16", layout="stereo")
        fr.sample_rate, fr.pts, fr.time_base = 48000, t, Fraction(1, 48000)
        out.mux(a.encode(fr))
        t += k
    out.mux(a.encode(None))
    out.close()
    return path


def _cues(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.subtitles[0]) if p.size]


def test_mov_text_with_gaps_copied_into_mp4(tmp_path):
    """FFmpeg's MOV muxer writes an empty 2-byte sample in every gap between mov_text cues; copied
    back into MP4 each gained another empty sample before it, and verify failed every such file."""
    src = make_video(tmp_path / "gaps.mp4", n=24, subs=[dict(
        codec="mov_text", language="eng", events=[(100, 300, "first"), (700, 200, "second")])])
    assert b"\0\0" in _cues(src)  # the source has gap samples
    for ext in ("mp4", "mov"):
        out = tmp_path / f"out.{ext}"
        run(src, out)
        assert _cues(out) == _cues(src)
        check_video(src, out, 2)
    plans = plan_streams(probe(src), tmp_path / "x.mp4")
    # verify ignores gap samples (a plain remux doubles them) but not a lost cue
    doubled = _remux(tmp_path / "out.mp4", tmp_path / "doubled.mp4")
    assert len(_cues(doubled)) > len(_cues(src))
    assert verify(src, doubled, 2, plans=plans).ok
    lost = _remux(tmp_path / "out.mp4", tmp_path / "lost.mp4",
                  lambda p: None if bytes(p).endswith(b"second") else p)
    assert "subtitle stream #1 (mov_text) payloads changed" in verify(src, lost, 2, plans=plans).problems

    def longer(p):  # the first cue stays on screen until the second: its clearing gap is gone
        if p.stream.type == "subtitle" and bytes(p).endswith(b"first"):
            p.duration = 600
        return None if p.stream.type == "subtitle" and bytes(p) == b"\0\0" else p

    stays = _remux(tmp_path / "out.mp4", tmp_path / "stays.mp4", longer)
    assert "subtitle stream #1 (mov_text) payloads changed" in verify(src, stays, 2, plans=plans).problems


def test_pcm_in_mov_regrouped_into_other_packets(tmp_path):
    """The MOV demuxer cuts PCM into packets of at most 1024 samples per chunk of the file's
    interleaving: a copy holds the same samples in other packets, and was rejected as not
    bit-identical."""
    src = _av_file(tmp_path / "pcm.mov", "pcm_s16le", chunk=1100)
    out = tmp_path / "out.mov"
    entry = run(src, out).facts["audio"][0]
    assert entry["packets"][0] != entry["packets"][1], entry
    assert entry["bit_identical"] == "same samples, other packet sizes"
    check_video(src, out, 2)
    plans = plan_streams(probe(src), out)
    # one changed byte is still a failure
    first = []

    def flip(p):
        if p.stream.type == "audio" and not first:
            first.append(p)
            data = bytes(p)
            return _with_payload(p, bytes([data[0] ^ 1]) + data[1:])
        return p

    bad = _remux(out, tmp_path / "bad.mov", flip)
    assert "audio stream #1 (pcm_s16le) not bit-identical after copy" in verify(src, bad, 2, plans=plans).problems


def test_transcoded_audio_offset_is_taken_from_the_decoded_samples(tmp_path):
    """AAC starting before the video in MP4 (edit list), transcoded to Opus for WebM: the packets'
    first times hold each encoder's priming (not comparable); the decoded samples are in sync."""
    src = _av_file(tmp_path / "early.mp4", lead_s=0.05)
    out = tmp_path / "out.webm"
    report = run(src, out, EncodeOptions())
    assert abs(report.facts["audio"][0]["offset_ms"]) < 5
    plans = plan_streams(probe(src), out)

    def later(p):  # the audio really moved 100 ms
        if p.stream.type == "audio":
            p.pts, p.dts = p.pts + round(0.1 / p.time_base), p.dts + round(0.1 / p.time_base)
        return p

    moved = verify(src, _remux(out, tmp_path / "moved.webm", later), 2, plans=plans)
    assert any(x.startswith("audio stream #1 moved +100 ms") for x in moved.problems), moved.problems


def test_uniform_matroska_shift_is_not_a_longer_video(tmp_path):
    """Matroska lifts negative times to 0, shifting the whole file: the video end was compared
    unshifted and failed; a really longer video still fails. The MP4 edit list of this source skips
    3424 samples (priming and 50 ms of sound before the first frame); the copy's CodecDelay marks
    1024, so 2 packets never heard are left out and what is left of the lead (352 samples) is the
    shift, where the whole 71 ms of it used to be."""
    src = _av_file(tmp_path / "early.mp4", lead_s=0.05)
    out = tmp_path / "out.mkv"
    report = run(src, out)
    assert 0 < report.facts["start_shift_s"] < 0.0085
    assert report.facts["audio"][0]["packets_left_out"] == 2 and report.facts["audio"][0]["bit_identical"] is True
    check_video(src, out, 2)

    def uniform(p):  # every stream 71 ms later, as Matroska shifted this file before it kept CodecDelay
        p.pts, p.dts = p.pts + round(0.071 / p.time_base), p.dts + round(0.071 / p.time_base)
        return p

    shifted = verify(src, _remux(out, tmp_path / "shifted.mkv", uniform), 2, plans=plan_streams(probe(src), out))
    assert shifted.facts["start_shift_s"] > 0.07
    # (the remux keeps no default flag: that one problem is _remux's)
    assert shifted.problems == ["audio stream #1 default flag not kept"], shifted.problems

    def slower(p):  # the video 10 % longer, still from the shifted start
        if p.stream.type == "video":
            p.pts, p.dts = round(p.pts * 1.1), round(p.dts * 1.1)
        return p

    stretched = verify(src, _remux(out, tmp_path / "slow.mkv", slower), 2, plans=plan_streams(probe(src), out))
    assert any(x.startswith("video ends at") for x in stretched.problems), stretched.problems

    def later(p):  # every stream 2 s later: in sync, but no longer where the source is
        p.pts, p.dts = p.pts + round(2 / p.time_base), p.dts + round(2 / p.time_base)
        return p

    moved = verify(src, _remux(out, tmp_path / "late.mkv", later), 2, plans=plan_streams(probe(src), out))
    assert any(x.startswith("the whole file moved by +2") for x in moved.problems), moved.problems


def test_rgb_source_is_tagged_full_range(tmp_path):
    """RGB samples are full range: an untagged gbrp10le source gives an output tagged full, not limited."""
    from vsr.media.colour import range_of

    src = make_video(tmp_path / "rgb.mkv", codec="ffv1", pix_fmt="gbrp10le", n=4, w=64, h=48)
    info = probe(src)
    assert info.video.color_range == 0 and range_of(info.video) == "JPEG"
    out = tmp_path / "out.mkv"
    run(src, out, EncodeOptions(codec="libx265", preset="ultrafast"))
    o = probe(out).video
    assert (o.pix_fmt, o.color_range) == ("gbrp10le", 2)


def test_gray_sources_read_and_tagged_consistently(tmp_path):
    """gray is full range to swscale: an untagged 8-bit gray source through libx264 (whose monochrome
    stream decodes as yuv420p) is tagged full range; a gray source tagged limited keeps its tag and its
    picture (expanded by vsr, not read as full)."""
    for name, tags, want in (("untagged", None, 2), ("limited", {"color_range": 1}, 1)):
        src = make_video(tmp_path / f"gray_{name}.mkv", codec="ffv1", pix_fmt="gray", n=4, w=64, h=48, tags=tags)
        out = tmp_path / f"out_{name}.mkv"
        report = run(src, out, EncodeOptions(codec="libx264", crf=0, preset="ultrafast"))
        assert probe(out).video.color_range == want
        assert report.facts["worst_channel_mean_shift"] < 0.5 and report.facts["worst_psnr_db"] >= 40
    for pix_fmt in ("gray", "gray10le"):  # the conversion itself is exact both ways, full and limited
        src = make_video(tmp_path / f"{pix_fmt}.mkv", codec="ffv1", pix_fmt=pix_fmt, n=1, w=32, h=16)
        out = tmp_path / f"{pix_fmt}_x1.mkv"
        run(src, out, EncodeOptions(codec="ffv1", pix_fmt=pix_fmt), scale=1)
        (_, a), (_, b) = decode_all(src), decode_all(out)
        assert np.array_equal(a, b)


def test_explicit_pix_fmt_may_lower_depth_defaults_never(tmp_path):
    # A 12-bit source (ProRes 4444 decodes as yuv444p12le): prores_ks tops out at 10-bit, and the
    # advice names only encoders that keep 12-bit 4:4:4.
    src = make_video(tmp_path / "p4444.mov", codec="prores_ks", pix_fmt="yuv444p10le", n=3, w=64, h=48,
                     options={"profile": "4"})
    info = probe(src)
    assert info.video.pix_fmt == "yuv444p12le"
    with pytest.raises(UsageError, match="12-bit depth; use libx265$"):
        resolve_encode_options(info, tmp_path / "o.mov", EncodeOptions(codec="prores_ks"))
    with pytest.raises(UsageError, match="12-bit depth; use libx265 in .mkv or ffv1 in .mkv$"):  # none in webm
        resolve_encode_options(info, tmp_path / "o.webm", EncodeOptions(codec="libvpx-vp9"))
    # Explicit --pix-fmt: honoured; 4:4:4 ProRes is written as 4444 (not HQ, which decodes 10-bit)
    out = tmp_path / "out.mov"
    run(src, out, EncodeOptions(codec="prores_ks", pix_fmt="yuv444p10le"))
    assert probe(out).video.pix_fmt == "yuv444p12le"
    # A 10-bit source asked for 8-bit output: verify accepts exactly that depth; the default keeps 10
    src10 = make_video(tmp_path / "ten.mkv", codec="libx265", pix_fmt="yuv420p10le", n=3, w=64, h=48,
                       options={"preset": "ultrafast", "x265-params": "log-level=error"})
    info10 = probe(src10)
    assert resolve_encode_options(info10, tmp_path / "o.mkv").pix_fmt == "yuv420p10le"
    out8 = tmp_path / "out8.mkv"
    report = run(src10, out8, EncodeOptions(preset="ultrafast", pix_fmt="yuv420p"))
    assert probe(out8).video.bit_depth == 8 and report.facts["bit_depth_lowered_on_request"] == "yuv420p"
    assert "bit depth lowered 10 -> 8" in verify(src10, out8, 2).problems  # not asked: a failure


def test_full_range_source_to_prores_becomes_limited_range(tmp_path):
    """ProRes cannot signal full range: a full-range source is converted to limited range (the
    picture unchanged), which verify accepts as planned."""
    tags = dict(color_primaries=1, color_trc=1, colorspace=1, color_range=2)
    src = make_video(tmp_path / "phone.mp4", tags=tags, n=4, w=64, h=48)
    for ext in ("mov", "mkv"):
        out = tmp_path / f"out.{ext}"
        report = run(src, out, EncodeOptions(codec="prores_ks"))
        o = probe(out).video
        assert (o.color_range, o.colorspace) == (1, 1)
        assert report.facts["color_range_converted"] == [2, 1]
        with av.open(str(out)) as c:  # the container (MKV's Colour element) says limited too
            assert c.streams.video[0].codec_context.color_range == 1
        assert report.facts["worst_channel_mean_shift"] < 2  # as for a limited source (chroma edges)


@pytest.mark.parametrize("matrix, name", [(8, "YCgCo"), (10, "BT.2020 constant luminance")])
def test_unconvertible_matrix_is_refused_before_work(tmp_path, matrix, name):
    from vsr.errors import InputError

    src = make_video(tmp_path / "m.mkv", pix_fmt="yuv444p", n=2, w=32, h=32, tags={"colorspace": matrix})
    assert probe(src).video.colorspace == matrix
    with pytest.raises(InputError, match=rf"colour matrix {matrix} \({name}"):
        resolve_encode_options(probe(src), tmp_path / "o.mkv")


def test_alpha_kept_or_refused_or_dropped_on_request(tmp_path):
    """An alpha channel was refused everywhere: now kept where the output can carry it (FFV1 in
    .mkv), refused while planning where it cannot (.mp4), and dropped only when asked."""
    import subprocess
    import sys

    from vsr.cli import _job_overrides, build_parser

    src = make_video(tmp_path / "alpha.mkv", codec="ffv1", pix_fmt="yuva420p", n=2, w=32, h=32)
    info = probe(src)
    for codec in (None, "ffv1"):
        assert resolve_encode_options(info, tmp_path / "o.mkv", EncodeOptions(codec=codec)).pix_fmt == "yuva420p"
    for codec, ext in ((None, "mp4"), ("libx265", "mkv")):
        with pytest.raises(UsageError, match=r"cannot carry the alpha channel of the source \(yuva420p\)"):
            resolve_encode_options(info, tmp_path / f"o.{ext}", EncodeOptions(codec=codec))
    with pytest.raises(UsageError, match="pix_fmt yuv420p has no alpha plane"):  # an explicit pix_fmt too
        resolve_encode_options(info, tmp_path / "o.mkv", EncodeOptions(pix_fmt="yuv420p"))
    with pytest.raises(UsageError, match="alpha plane"):  # never an opaque-filled alpha plane
        resolve_encode_options(probe(make_video(tmp_path / "a.mkv", codec="ffv1", n=2, w=32, h=32)),
                               tmp_path / "o.mkv", EncodeOptions(codec="ffv1", pix_fmt="yuva420p"))
    out = tmp_path / "out.mkv"
    report = run(src, out, EncodeOptions(codec="ffv1", drop_alpha=True))
    assert probe(out).video.pix_fmt == "yuv420p" and "alpha_dropped_on_request" in report.facts
    assert "alpha channel dropped (yuva420p -> yuv420p)" in verify(src, out, 2).problems  # not asked
    # the CLI refuses before any work, with one line; --drop-alpha reaches the encode options
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", str(src), str(tmp_path / "c.mp4"),
                        "-m", "lanczos", "--outscale", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].count("alpha channel") == 1
    args = build_parser().parse_args(["upscale", "a.mkv", "b.mkv", "--drop-alpha"])
    assert _job_overrides(args)["encode"] == {"drop_alpha": True}
    from vsr.job.spec import load_jobspec, resolve_codecs  # and a job spec's [encode] drop_alpha

    spec_text = ('[job]\ninputs = ["alpha.mkv"]\noutput_dir = "out"\n[model]\nname = "lanczos"\n'
                 '[encode]\ncodec = "libx264"\n')  # libx264 carries no alpha
    (tmp_path / "job.toml").write_text(spec_text)
    with pytest.raises(UsageError, match="drop_alpha"):
        resolve_codecs(load_jobspec(tmp_path / "job.toml"))
    (tmp_path / "job.toml").write_text(spec_text + "drop_alpha = true\n")
    spec = load_jobspec(tmp_path / "job.toml")
    resolve_codecs(spec)
    assert spec.items[0].encode["drop_alpha"] is True
    assert "drop_alpha" not in EncodeOptions().to_dict()  # other jobs' settings fingerprints unchanged


def test_rgb_source_tagged_matrix_rgb_verifies(tmp_path):
    """PNG in MOV (decoded rgb24, matrix tag 0 = RGB): its whole job once ended in 'colour
    colorspace 0 not kept' because a YUV output has a matrix by necessity. An RGB output is tagged
    RGB like its source; a YUV output carries the matrix it was converted with."""
    src = make_video(tmp_path / "png.mov", codec="png", pix_fmt="rgb24", n=6)
    assert probe(src).video.colorspace == 0
    out = tmp_path / "out.mkv"
    report = run(src, out, EncodeOptions(codec="ffv1"))
    assert probe(out).video.colorspace == 0 and "colour_matrix" not in report.facts
    check_video(src, out, 2)
    report = run(src, tmp_path / "out.mp4", FAST)
    o = probe(tmp_path / "out.mp4").video
    assert o.colorspace not in (0, 2) and report.facts["colour_matrix"] == [0, o.colorspace]


@pytest.mark.parametrize("request_, words", [
    (EncodeOptions(crf=-5), "crf=-5"), (EncodeOptions(preset="nosuch"), "preset=nosuch"),
    (EncodeOptions(codec="libx265", crf=99), "crf=99")])
def test_options_the_encoder_refuses_fail_before_any_work(tmp_path, request_, words):
    """A crf out of range or an unknown preset once started Ray and the workers, failed every
    segment three times and ended as a job failure (exit 7): now a usage error while planning."""
    src = make_video(tmp_path / "in.mp4", n=4)
    with pytest.raises(UsageError, match=f"refuses its options.*{words}"):
        resolve_encode_options(probe(src), tmp_path / "out.mp4", request_)
    assert resolve_encode_options(probe(src), tmp_path / "out.mp4", EncodeOptions(crf=0, preset="veryslow")).crf == 0


def test_damaged_matroska_cluster_is_found_not_upscaled_short(tmp_path, media_dir):
    """40 zero bytes over a Cluster header of the real BBB WebM: the demuxer skips that cluster
    (24 of 120 frames) and says so only in its log, while every packet it returns decodes. The
    job once upscaled the 96 frames left and called the output verified."""
    from vsr.cluster import JobOptions, run_upscale_job

    data = bytearray((media_dir / "bbb_320x180_vp9_opus.webm").read_bytes())
    clusters = [i for i in range(len(data) - 4) if data[i:i + 4] == b"\x1f\x43\xb6\x75"]
    at = clusters[len(clusters) // 2]
    data[at:at + 40] = bytes(40)
    src = tmp_path / "hole.webm"
    src.write_bytes(bytes(data))
    assert probe(media_dir / "bbb_320x180_vp9_opus.webm").damage == []
    info = probe(src)
    assert info.video.frame_count < 120 and any("EBML" in m for m in info.damage)
    assert "container damaged" in info.describe()
    with pytest.raises(InputError, match=r"container damaged, frames may be missing \(.*EBML.*--on-corrupt repeat"):
        run_upscale_job(src, tmp_path / "out.webm", JobOptions(model="lanczos", outscale=2.0))
    assert not (tmp_path / "out.webm").exists()


def test_mpegts_packets_lost_in_transport_are_damage(tmp_path, media_dir):
    """Three 188-byte TS packets zeroed mid-file (a reception drop-out): the demuxer only warns and
    marks the packet corrupt; probe reports it, so a job refuses the input by default."""
    plain = tmp_path / "leader.ts"
    with av.open(str(media_dir / "leader_320x240_h264_aac.mp4")) as i, av.open(str(plain), "w") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if p.dts is not None:
                p.stream = streams[p.stream.index]
                o.mux(p)
    data = bytearray(plain.read_bytes())
    mid = len(data) // 2 // 188 * 188
    data[mid:mid + 3 * 188] = bytes(3 * 188)
    hole = tmp_path / "hole.ts"
    hole.write_bytes(bytes(data))
    assert probe(plain).damage == []
    damage = probe(hole).damage
    assert damage and "corrupt packet(s) in stream #" in damage[0], damage


def test_vp9_alpha_in_webm_is_kept_or_dropped_on_request(tmp_path):
    """VP9 carries alpha beside the picture (WebM alpha_mode): FFmpeg's decoder says yuv420p, so the
    yuva check alone let the alpha vanish silently, and the copied tag then claimed one. Now it is
    kept (VP9 yuva420p through Matroska segments), or dropped on request with the tag."""
    src = tmp_path / "alpha.webm"
    with av.open(str(src), "w") as o:
        s = o.add_stream("libvpx-vp9", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuva420p"
        for i in range(4):
            rgba = np.zeros((48, 64, 4), np.uint8)
            rgba[..., 0], rgba[..., 3] = 40 * i, np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
            f = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format="yuva420p")
            f.pts = i
            for p in s.encode(f):
                o.mux(p)
        for p in s.encode(None):
            o.mux(p)
    info = probe(src)
    assert info.video.pix_fmt == "yuv420p" and info.video.metadata.get("alpha_mode") == "1"
    assert resolve_encode_options(info, tmp_path / "o.webm").pix_fmt == "yuva420p"
    kept = tmp_path / "kept.webm"
    report = run(src, kept, EncodeOptions())
    assert probe(kept).video.alpha == "vp9 alpha" and probe(kept).video.metadata.get("alpha_mode") == "1"
    assert report.facts["alpha"] == ["vp9 alpha", "vp9 alpha"] and report.facts["worst_alpha_psnr_db"] > 30
    out = tmp_path / "out.webm"
    run(src, out, EncodeOptions(drop_alpha=True))
    assert not any(k.lower() == "alpha_mode" for k in probe(out).video.metadata)
    assert probe(out).video.alpha == "none"


def _surround(path: Path, layout: str) -> Path:
    """1 s of video and FLAC audio in `layout`, channel i a tone of 300 + 150 i Hz."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    n = len(av.AudioLayout(layout).channels)
    a = out.add_stream("flac", rate=48000, layout=layout)
    for i in range(24):
        f = av.VideoFrame.from_ndarray(picture(i, 64, 48), format="rgb24").reformat(format="yuv420p")
        f.pts = i
        out.mux(v.encode(f))
    out.mux(v.encode(None))
    t = np.arange(48000) / 48000
    planes = np.stack([np.sin(2 * np.pi * (300 + 150 * c) * t) * 8000 for c in range(n)]).astype(np.int16)
    for k in range(0, 48000, 1024):
        fr = av.AudioFrame.from_ndarray(planes[:, k:k + 1024].T.reshape(1, -1).copy(), format="s16", layout=layout)
        fr.sample_rate, fr.pts, fr.time_base = 48000, k, Fraction(1, 48000)
        out.mux(a.encode(fr))
    out.mux(a.encode(None))
    out.close()
    return path


def _tones(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        to_planar = av.AudioResampler(format="fltp")
        x = np.concatenate([g.to_ndarray() for f in c.decode(audio=0) for g in to_planar.resample(f)], axis=1)
    return [int(np.argmax(np.abs(np.fft.rfft(ch[:48000]))[1:]) + 1) for ch in x]


def test_surround_transcode_keeps_every_channel_or_is_refused_before_work(tmp_path):
    """AC-3's 5.1 is 5.1(side), which libopus does not open: the .webm job upscaled every frame and
    then failed in muxing. Side channels now go to the back ones (same speakers, nothing mixed);
    a layout no encoder layout holds (4.1's back centre) is refused before any work."""
    src = _surround(tmp_path / "side.mkv", "5.1(side)")
    out = tmp_path / "out.webm"
    report = run(src, out, EncodeOptions())
    assert any("5.1(side) as 5.1" in n for n in report.facts["notes"])
    assert probe(out).audio[0].layout == "5.1" and _tones(out) == _tones(src) == [300, 450, 600, 750, 900, 1050]
    with pytest.raises(OutputError, match=r"libopus cannot encode its 4.1 channel layout; write to .mkv"):
        plan_streams(probe(_surround(tmp_path / "four.mkv", "4.1")), tmp_path / "x.webm")


@needs_corpus
def test_stereo_3d_side_data_lost_is_said(tmp_path):
    """Stereo 3D, 360-degree projection, ICC profiles and the like live in side data that the
    output's stream (made from the encoder's) does not carry: they vanished without a word."""
    src = make_video(tmp_path / "sbs.mp4", n=4, options={"preset": "ultrafast", "x264-params": "frame-packing=3"})
    assert probe(src).video.side_data == ["stereo 3D"]
    report = run(src, tmp_path / "out.mkv")
    assert any(n.startswith("the source's stereo 3D is not carried") for n in report.facts["notes"])
    plain = run(make_video(tmp_path / "plain.mp4", n=4), tmp_path / "plain.mkv")
    assert "side_data_dropped" not in plain.facts


# ------------------------------------------------------------------ the real-world corpus
# Real files (../shared/media/corpus/SOURCES.md: origin, licence, probe facts), read in place where
# the shared folder sits beside the clone (never copied into the repository).


def plain_decode(path: Path) -> list[av.VideoFrame]:
    """Reference: every frame a plain sequential PyAV decode of the first video stream gives."""
    with av.open(str(path)) as c:
        return list(c.decode(c.streams.video[0]))


def segments_decoded(path: Path, info, seconds: float) -> tuple[list, list[int], np.ndarray]:
    """(segments, pts, RGB frames) of decode_segment over keyframe-aligned segments of `seconds`."""
    segments = plan_segments(info, seconds)
    chunks = [c for s in segments for c in decode_segment(path, s, info=info)]
    return segments, [p for c in chunks for p in c.pts], np.concatenate([c.frames for c in chunks])


def upscale_cli(src: Path, out: Path, *extra: str) -> None:
    """The real CLI in this process (embedded Ray), then the independent checker."""
    from vsr.cli import main

    assert main(["upscale", str(src), str(out), "-m", "lanczos", "--outscale", "2", *extra]) == 0
    check_video(src, out, 2)


@needs_corpus
def test_vp9_packet_that_shows_no_frame_is_not_a_frame(tmp_path):
    """libvpx-era WebM: an alt-ref frame (decoded, never shown) is a packet of its own with the pts
    of a shown frame: 5 packets, 4 frames. It was refused as 'repeats timestamps'."""
    from vsr.media.probe import shows_frame

    src = CORPUS / "vp9_720p_hidden_frame.webm"
    with av.open(str(src)) as c:
        shown = [shows_frame("vp9", bytes(p)) for p in c.demux(c.streams.video[0]) if p.size]
    assert shown == [True, False, True, True, True]
    frames = plain_decode(src)
    info = probe(src)
    v = info.video
    assert v.frame_count == len(frames) == 4 and v.hidden_packets == 1
    assert v.frame_pts == [f.pts for f in frames] and v.keyframe_pts == [0] and v.retimed is None
    _, pts, rgb = segments_decoded(src, info, 0.04)
    assert pts == v.frame_pts and rgb.shape[0] == 4
    out = tmp_path / "hidden.mkv"
    upscale_cli(src, out)
    assert [f.pts for f in plain_decode(out)] == v.frame_pts
    assert verify(src, out, 2).ok


def _vp8_with_hidden_packets(path: Path) -> Path:
    """A VP8 WebM (keyframes at frames 0, 8, 16) with three packets that show no frame, the way
    libvpx-era muxers stored alt-refs: copies of shown frames with show_frame cleared, two with
    the pts of the frame before them and one with the pts of the keyframe after it."""
    src = path.with_name("plain_" + path.name)
    with av.open(str(src), "w") as o:
        s = o.add_stream("libvpx", rate=25, options={"g": "8", "keyint_min": "8", "b": "300k"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(24):
            f = av.VideoFrame.from_ndarray(picture(i, 64, 48), format="rgb24").reformat(format="yuv420p")
            f.pts = i
            o.mux(s.encode(f))
        o.mux(s.encode(None))
    with av.open(str(src)) as c, av.open(str(path), "w") as o:
        out = o.add_stream_from_template(c.streams.video[0])
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]

        def copy(p: av.Packet, pts: int, hidden: bool = False) -> av.Packet:
            data = bytearray(bytes(p))
            if hidden:
                data[0] &= ~0x10  # VP8 frame tag: show_frame off
            q = av.Packet(bytes(data))
            q.pts = q.dts = pts
            q.time_base, q.stream, q.is_keyframe = p.time_base, out, p.is_keyframe and not hidden
            return q

        for i, p in enumerate(packets):
            if i == 16:
                o.mux(copy(packets[15], p.pts, hidden=True))
            o.mux(copy(p, p.pts))
            if i in (3, 11):
                o.mux(copy(p, p.pts, hidden=True))
    return path


def test_packets_that_show_no_frame_keep_segments_exact(tmp_path):
    src = _vp8_with_hidden_packets(tmp_path / "hidden.webm")
    frames = plain_decode(src)
    info = probe(src)
    v = info.video
    assert v.frame_count == len(frames) == 24 and v.hidden_packets == 3
    assert v.frame_pts == [f.pts for f in frames]
    assert v.keyframe_pts == [frames[i].pts for i in (0, 8, 16)]
    # every segment starts at a keyframe and holds exactly its frames, pixel for pixel
    segments, pts, rgb = segments_decoded(src, info, 0.3)
    assert [s.start_pts for s in segments] == v.keyframe_pts and [s.frame_count for s in segments] == [8, 8, 8]
    ref_pts, ref_rgb = decode_all(src)
    assert pts == ref_pts == v.frame_pts and np.array_equal(rgb, ref_rgb)
    run(src, tmp_path / "out.mkv")
    check_video(src, tmp_path / "out.mkv", 2)


@needs_corpus
def test_browser_recording_frames_sharing_a_pts_are_kept_and_retimed(tmp_path, caplog):
    """Chrome's MediaRecorder writes frames with the pts of the frame before them (66 of 185 here)
    and every browser plays the file. Every frame is kept; each such frame moves one tick after
    the one before it, and that is said (probe, warning, verify's facts)."""
    src = tmp_path / "recording.webm"
    src.symlink_to(CORPUS / "chrome57_mediarecorder_vp8_opus.webm")  # read in place, a path of its own
    decoded = [f.pts for f in plain_decode(src)]
    repeats = sum(1 for a, b in zip(decoded, decoded[1:]) if a == b)
    assert len(decoded) == 185 and repeats == 66
    with caplog.at_level("WARNING", logger="vsr.media"):
        info = probe(src)
    assert "66 video frames share a pts" in caplog.text and "at most 2 tick(s)" in caplog.text
    v = info.video
    assert v.frame_count == 185 and v.frame_pts == sorted(set(v.frame_pts))
    shifts = [new - old for old, new in zip(decoded, v.frame_pts)]
    assert min(shifts) == 0 and max(shifts) == v.retimed["max_shift_ticks"] == 2
    assert v.retimed["frames"] == sum(1 for s in shifts if s) == 66
    assert v.retimed["examples"][0] == [293, 294] and "retimed" in info.to_dict()["video"]
    assert v.keyframe_pts == [0, 4373] and info.damage == []  # a stray byte after the last block is no damage
    # two segments (the second seeks to its keyframe): each frame once, in order, with its retimed pts
    segments, pts, rgb = segments_decoded(src, info, 2.0)
    assert len(segments) == 2 and pts == v.frame_pts
    assert np.array_equal(rgb, decode_all(src)[1])
    out = tmp_path / "out.mkv"
    report = run(src, out, seconds=2.0)
    assert report.facts["frames_output"] == 185 and "2 tick(s)" in report.facts["frames_retimed"]
    assert report.facts["audio"][0]["bit_identical"] is True  # the audio is untouched
    assert [round(float(f.pts * f.time_base) * 1000) for f in plain_decode(out)] == v.frame_pts  # 1/1000 base
    check_video(src, out, 2)


@needs_corpus
def test_browser_recording_through_the_cli(tmp_path):
    src = CORPUS / "chrome57_mediarecorder_vp8_opus.webm"
    out = tmp_path / "recording.mkv"
    upscale_cli(src, out, "--segment-seconds", "2", "--preset", "ultrafast")
    info = probe(src)
    assert [round(float(f.pts * f.time_base) * 1000) for f in plain_decode(out)] == info.video.frame_pts
    assert verify(src, out, 2, info=info).ok


@needs_corpus
def test_a_damaged_last_block_is_still_damage(tmp_path):
    data = (CORPUS / "chrome57_mediarecorder_vp8_opus.webm").read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[:-4])  # into the last block's payload
    assert any("File ended prematurely" in m for m in probe(cut).damage)


def _vpx_alpha(path: Path, codec: str) -> Path:
    """A real WebM with alpha: libvpx encodes yuva420p, the alpha plane rides as BlockAdditional."""
    with av.open(str(path), "w") as o:
        s = o.add_stream(codec, rate=10, options={"auto-alt-ref": "0", "b": "1M"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuva420p"
        for i in range(3):
            rgba = np.dstack([picture(i, 64, 48), np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))])
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgba), format="rgba").reformat(format="yuva420p")
            f.pts = i
            o.mux(s.encode(f))
        o.mux(s.encode(None))
    return path


@needs_corpus
def test_webm_alpha_is_read_from_the_packets_not_the_tag(tmp_path):
    """A live-recorded WebM tags its track alpha_mode=1 with no alpha data in any packet: it was
    refused as 'VP9 alpha'. Real VP8/VP9 alpha (BlockAdditional) is found and named right."""
    live = probe(CORPUS / "noduration_720p_vp9_opus.webm")
    assert live.video.metadata.get("alpha_mode") == "1" and live.video.alpha == "none"
    assert resolve_encode_options(live, tmp_path / "o.mkv").pix_fmt == "yuv420p"
    for codec, name in (("libvpx", "VP8 alpha"), ("libvpx-vp9", "VP9 alpha")):
        info = probe(_vpx_alpha(tmp_path / f"{codec}.webm", codec))
        assert info.video.metadata.get("alpha_mode") == "1" and info.video.pix_fmt == "yuv420p"
        assert info.video.alpha == name.lower()
        with pytest.raises(UsageError, match=rf"cannot carry the alpha channel of the source \({name}\)"):
            resolve_encode_options(info, tmp_path / "o.mp4")
        assert resolve_encode_options(info, tmp_path / "o.mkv").pix_fmt == "yuva420p"
        assert resolve_encode_options(info, tmp_path / "o.mkv", EncodeOptions(drop_alpha=True)).pix_fmt == "yuv420p"


@needs_corpus
def test_mpeg2_gop_header_timecode_is_the_start_timecode(tmp_path):
    """Broadcast, XDCAM and DVD MPEG-2 carry their timecode in GOP headers only (no tag): it was
    lost. It names the GOP's first picture shown, so frames skipped before the first keyframe
    move the output's start timecode on, as with a tag."""
    from vsr.media.probe import gop_timecode
    from vsr.media.verify import output_timecode

    for name, want in (("xdcam_mpeg2_422_mp2.ts", "00:00:00:00"), ("dvd_mpeg2_ac3.vob", "00:00:00:00"),
                       ("ntsc_mpeg2_interlaced_ac3.ts", "00:00:00;00"), ("mpeg2_ntsc_scte20_cc.ts", "00:00:00:00")):
        info = probe(CORPUS / name)
        first = plain_decode(CORPUS / name)[0]
        raw = int.from_bytes(bytes(next(sd for sd in first.side_data if str(sd.type).endswith("GOP_TIMECODE")))[:8],
                             "little")
        assert gop_timecode(first) == want and raw & 0x3F == 0 and bool(raw >> 24 & 1) == want.endswith(";00")
        assert timecode_of(info) == want, name
    scte = probe(CORPUS / "mpeg2_ntsc_scte20_cc.ts")
    assert scte.video.leading_undecodable == 2 and output_timecode(scte) == "00:00:00:02"
    src = CORPUS / "xdcam_mpeg2_422_mp2.ts"
    out = tmp_path / "xdcam.mkv"
    report = run(src, out, seconds=100)
    assert report.facts["timecode"] == ["00:00:00:00"] * 2 and timecode_of(probe(out)) == "00:00:00:00"
    check_video(src, out, 2)


@needs_corpus
def test_afd_and_ambient_viewing_environment_are_named_when_lost(tmp_path):
    """The AFD of broadcast MPEG-2 and the iPhone's ambient viewing environment were dropped
    without a word: no encoder vsr uses writes them, so the job says so."""
    assert "ambient viewing environment" in probe(CORPUS / "iphone_hevc10_hlg_dovi_rot90.mp4").video.side_data
    src = CORPUS / "mpeg2_ntsc_scte20_cc.ts"
    info = probe(src)
    assert info.video.side_data == ["active format description (AFD)"]
    out = tmp_path / "broadcast.mkv"
    report = run(src, out, seconds=100)
    assert any("active format description (AFD) is not carried" in n for n in report.facts["notes"])
    assert report.facts["timecode"] == ["00:00:00:02"] * 2  # the GOP header's, past the 2 skipped frames
    check_video(src, out, 2)


@pytest.mark.parametrize("name", ["xdcam_mpeg2_422_mp2.ts", "ntsc_mpeg2_interlaced_ac3.ts"])
@needs_corpus
def test_mpegts_segment_after_the_last_keyframe_decodes(name):
    """MPEG-TS seeks by decode time: a seek to a keyframe with B-frames after it landed on the packet
    after it, and the file's last segment (no keyframe further on) decoded nothing: the job failed
    as 'stream ends early'. Every segment now holds exactly its frames, pixel for pixel."""
    import hashlib

    from vsr.media.colour import frame_to_rgb

    src = CORPUS / name
    info = probe(src)
    segments = plan_segments(info, 0.3)
    assert len(segments) == len(info.video.keyframe_pts) > 1
    got = [(p, hashlib.sha256(rgb.tobytes()).hexdigest()) for s in segments
           for c in decode_segment(src, s, info=info) for p, rgb in zip(c.pts, c.frames)]
    want = [(f.pts, hashlib.sha256(frame_to_rgb(f, info.video).tobytes()).hexdigest()) for f in plain_decode(src)]
    assert got == want


def test_x264_preset_names_set_libvpx_vp9_speed(tmp_path):
    """--preset ultrafast with VP9 was passed on as "preset", which libvpx does not know and FFmpeg
    ignores: every preset encoded the same (slow) stream. Now it names libvpx's own speed."""
    from vsr.media.encode import _encoder_options

    fast = _encoder_options(EncodeOptions(codec="libvpx-vp9", crf=28, preset="ultrafast", pix_fmt="yuv420p"))
    slow = _encoder_options(EncodeOptions(codec="libvpx-vp9", crf=28, preset="veryslow", pix_fmt="yuv420p"))
    assert "preset" not in fast and (fast["deadline"], fast["cpu-used"]) == ("realtime", "8")
    assert (slow["deadline"], slow["cpu-used"]) == ("good", "0")
    with av.open(str(Path(__file__).parent / "data" / "media" / "leader_320x240_h264_aac.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(6), c.decode(video=0))]

    def encoded(options: dict[str, str]) -> bytes:
        cc = av.CodecContext.create("libvpx-vp9", "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = 320, 240, "yuv420p", Fraction(1, 25)
        cc.options = dict(options)
        data = b""
        for i, rgb in enumerate(frames + [None]):
            frame = None
            if rgb is not None:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts = i
            data += b"".join(bytes(p) for p in cc.encode(frame))
        return data

    assert encoded(fast) != encoded(slow)  # the speed reached the encoder
