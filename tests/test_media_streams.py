"""Every stream other than the main video, on the real clips read in place (../shared/media and
its corpus): what plan_streams decides for it before any work, and that assembly follows only
that plan (data and timecode tracks, MPEG-TS output, captions, relabelled audio, dispositions)."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import pytest

from conftest import CORPUS, NO_SHARED, SHARED_MEDIA
from test_media import check_video
from vsr.errors import InputError, OutputError
from vsr.media.assemble import assemble
from vsr.media.containers import MUXERS, read_job_tag
from vsr.media.encode import EncodeOptions
from vsr.media.probe import probe
from vsr.job.local import nearest_upscale, transcode_with
from vsr.media.streams import PLAN_ACTIONS, StreamPlan, plan_streams

FAST = EncodeOptions(preset="ultrafast")


if SHARED_MEDIA is None:
    pytest.skip(NO_SHARED, allow_module_level=True)
SHARED = SHARED_MEDIA
REAL_FILES = sorted(p for d in (SHARED, CORPUS) for p in d.iterdir() if p.is_file() and p.suffix != ".md")
MEBX = CORPUS / "iphone_hevc10_hlg_dovi_mebx.mov"


def _non_main_streams(path: Path, main_index: int) -> list[int]:
    with av.open(str(path)) as c:
        return sorted(s.index for s in c.streams if s.index != main_index)


@pytest.mark.parametrize("ext", sorted(MUXERS))
def test_every_stream_of_every_real_file_is_decided_while_planning(tmp_path, ext):
    """One decision per source stream (PyAV's own count, not probe's), a known action, and a
    note for every drop; a refusal is one line. Files probe refuses are refused before work too."""
    planned_files = 0
    for path in REAL_FILES:
        try:
            info = probe(path)
        except InputError:
            continue
        try:
            plans = plan_streams(info, tmp_path / f"out{ext}")
        except OutputError as err:
            assert "\n" not in str(err) and str(err)
            continue
        planned_files += 1
        assert sorted(p.index for p in plans) == _non_main_streams(path, info.video.index), path.name
        for p in plans:
            assert p.action in PLAN_ACTIONS, (path.name, p)
            if p.action == "drop":
                assert p.note.startswith(f"stream #{p.index} "), (path.name, p)
    assert planned_files >= len(REAL_FILES) // 2


@pytest.mark.parametrize("name", ["iphone_hevc10_hlg_dovi_mebx.mov", "iphone_hevc10_hlg_dovi_rot90.mp4",
                                  "android_hevc_yuvj_rot90_metatrack.mp4"])
def test_data_tracks_ffmpeg_cannot_describe_are_dropped_with_a_note_everywhere(tmp_path, name):
    """Apple 'mebx' timed metadata and Android 'mett' tracks: FFmpeg keeps their packets but not
    their sample description; a MOV copy even had an empty description (a broken track)."""
    info = probe(CORPUS / name)
    data = [s.index for s in info.streams if s.kind == "data"]
    assert data
    for ext in sorted(MUXERS):
        if MUXERS[ext] == "mpegts":  # the rotation has no place there: refused before any work
            with pytest.raises(OutputError, match="display rotation"):
                plan_streams(info, tmp_path / f"out{ext}")
            continue
        plans = {p.index: p for p in plan_streams(info, tmp_path / f"out{ext}")}
        for i in data:
            assert plans[i].action == "drop", (ext, plans[i])
            assert "cannot identify" in plans[i].note and "not copied" in plans[i].note


def test_assembly_refuses_streams_the_plan_did_not_decide(tmp_path):
    info = probe(MEBX)
    plans = plan_streams(info, tmp_path / "out.mov")
    with pytest.raises(OutputError, match=r"decides streams \[1, 2, 3, 4, 5\] but the source has \[1, 2, 3, 4, 5, 6\]"):
        assemble([], MEBX, tmp_path / "out.mov", info, scale=2, plans=plans[:-1])
    odd = [StreamPlan(p.index, p.kind, p.codec, "keep", None) if p.index == 2 else p for p in plans]
    with pytest.raises(OutputError, match="unknown planned action 'keep'"):
        assemble([], MEBX, tmp_path / "out.mov", info, scale=2, plans=odd)
    assert not (tmp_path / "out.mov").exists()


def test_iphone_timed_metadata_into_mkv_through_the_media_layer(tmp_path, caplog):
    out = tmp_path / "mebx.mkv"
    with caplog.at_level(logging.WARNING, logger="vsr.media"):
        report = transcode_with(MEBX, out, nearest_upscale(2), 2, options=FAST)
    assert report.ok, report.problems
    notes = report.facts["notes"]
    assert sum("a data format FFmpeg cannot identify" in n for n in notes) == 5
    assert sum("cannot identify" in r.getMessage() for r in caplog.records) == 5
    # the AAC's MOV edit list hides 2112 priming samples; Matroska's CodecDelay marks 1024 on a
    # copy (vsr.media.start_trim): a packet never heard is left out, 64 samples play: said, not silent
    assert ("stream #1 (audio aac): the source marks its first 2112 samples (encoder priming or cut sound, "
            "44 ms) to be skipped; matroska marks 1024 on a copy, so the first 1 packet(s), whose sound is "
            "never heard, are left out and 64 samples (1.3 ms) play before the sound, which stays in sync and "
            "decodes sample for sample as the source's (.mov and .mp4 keep the whole mark)") in notes
    assert report.facts["audio"][0]["packets_left_out"] == 1 and report.facts["audio"][0]["bit_identical"] is True
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]


def test_iphone_timed_metadata_into_mov_through_the_cli(tmp_path, capsys, caplog):
    """The job ran, then assembly crashed with a traceback (a data stream without a codec context)."""
    from vsr.cli import main

    out = tmp_path / "mebx.mov"
    with caplog.at_level(logging.WARNING, logger="vsr"):
        code = main(["upscale", str(MEBX), str(out), "-m", "lanczos", "--outscale", "2", "--preset", "ultrafast"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "Traceback" not in err
    assert sum("a data format FFmpeg cannot identify" in r.getMessage() for r in caplog.records) == 5
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
    check_video(MEBX, out, 2)


# ---------------------------------------------------------------- AAC priming behind an MP4 edit list
EDITLIST = CORPUS / "editlist_video_starts_1s.mp4"  # FFmpeg-made: its first packet marks 1024 samples


def _audio_plan(src: Path, out: str) -> StreamPlan:
    return next(p for p in plan_streams(probe(src), out) if p.kind == "audio")


def test_aac_priming_mark_per_output_container():
    """What each container does with the samples an MP4 edit list hides (the first packet's
    skip_samples): MOV/MP4 write the mark again; Matroska marks FFmpeg's AAC encoder's 1024 samples
    (CodecDelay) on a copy, and leaves out Apple's first packet of 2112 priming samples; WebM gets
    Opus, whose header carries its own pre-skip; NUT and MPEG-TS have no place: the priming plays."""
    for out in ("x.mp4", "x.mov"):
        assert _audio_plan(EDITLIST, out) == StreamPlan(1, "audio", "aac", "copy", "aac")
    assert _audio_plan(EDITLIST, "x.mkv") == StreamPlan(1, "audio", "aac", "copy", "aac", codec_delay=1024)
    iphone = _audio_plan(MEBX, "x.mkv")
    assert (iphone.action, iphone.skip_packets, iphone.codec_delay, iphone.played_lead) == ("copy", 1, 1024, 64)
    assert "decodes sample for sample as the source's" in iphone.note
    assert _audio_plan(EDITLIST, "x.webm").target_codec == "libopus"
    for out in ("x.nut", "x.ts"):
        plan = _audio_plan(EDITLIST, out)
        assert (plan.action, plan.skip_packets, plan.codec_delay, plan.played_lead) == ("copy", 0, 0, 1024)
        assert "players play them before the sound, which stays in sync" in plan.note


def _decoded_audio(path: Path) -> tuple[float, "np.ndarray"]:
    """First decoded sample's time (s, against the first video frame's) and every decoded sample."""
    import numpy as np

    with av.open(str(path)) as c:
        video = next(f.time for f in c.decode(c.streams.video[0]))
    with av.open(str(path)) as c:
        frames = list(c.decode(c.streams.audio[0]))
    return frames[0].time - video, np.concatenate([f.to_ndarray() for f in frames], axis=1)


def test_iphone_aac_priming_into_mkv_through_the_cli(tmp_path, capsys):
    """An iPhone MOV hides 2112 samples of AAC priming behind its edit list; a copy into Matroska
    played all of it, 44 ms before the video, and the checker failed it. Now CodecDelay marks 1024
    and the one packet never heard is left out: 64 samples play first, then the source's sound,
    decoded sample for sample, in sync; every other packet is copied bit for bit."""
    import numpy as np

    from vsr.cli import main
    from vsr.job.existing import existing_output_action
    from vsr.job.options import JobOptions
    from vsr.job.plan import plan_job

    out = tmp_path / "iphone.mkv"
    code = main(["upscale", str(MEBX), str(out), "-m", "lanczos", "--outscale", "2", "--preset", "ultrafast"])
    assert code == 0, capsys.readouterr().err[-2000:]
    check_video(MEBX, out, 2)
    src_start, src = _decoded_audio(MEBX)
    out_start, got = _decoded_audio(out)
    assert src_start == 0 and abs(out_start + 64 / 48000) < 0.0015  # Matroska's times are in ms
    assert got.shape == (src.shape[0], src.shape[1] + 64) and np.array_equal(got[:, 64:], src)
    with av.open(str(MEBX)) as a, av.open(str(out)) as b:
        source_packets = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        assert [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size] == source_packets[1:]
    # a batch run again keeps it: it verifies by its plan (the packet left out is planned)
    options = JobOptions(model="lanczos", outscale=2.0, encode={"preset": "ultrafast"})
    assert existing_output_action(str(out), lambda: plan_job(MEBX, out, options))[0] == "skip"


# ---------------------------------------------------------------- closed captions on two channels
SINTEL = CORPUS / "sintel_h264_aac_cea608.ts"


def _caption_data(path: Path) -> list[bytes | None]:
    """Each decoded frame's A53 cc_data, in presentation order."""
    from vsr.media.decode import a53_captions

    with av.open(str(path)) as c:
        return [a53_captions(f) for f in c.decode(c.streams.video[0])]


def _sei_nal(cc_data: bytes) -> bytes:
    """An H.264 SEI NAL with one GA94 user_data_registered message (what a broadcast encoder that
    writes each caption field in its own SEI emits), emulation prevention included."""
    body = bytes([0xB5, 0x00, 0x31]) + b"GA94" + bytes([0x03, 0x40 | len(cc_data) // 3, 0xFF]) + cc_data + b"\xff"
    rbsp = bytes([4, len(body)]) + body + b"\x80"
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return b"\x00\x00\x00\x01\x06" + bytes(out)


def _two_channel_source(path: Path, frames: int = 48) -> list[bytes]:
    """H.264 TS whose pictures carry Sintel's real CEA-608 bytes twice: field 1 (CC1) in one SEI
    and the same bytes as field 2 (CC3) in a second SEI, each with 19 padding triplets: 40
    triplets a picture, which FFmpeg's decoder joins into one A53 side data."""
    from fractions import Fraction

    import numpy as np

    real = [cc for cc in _caption_data(SINTEL) if cc]
    per_pts: dict[int, tuple[bytes, bytes]] = {}
    out = av.open(str(path), "w", format="mpegts")
    v = out.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
    v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"

    def mux(packets):
        for p in packets:
            cc1, cc3 = per_pts[p.pts]
            q = av.Packet(_sei_nal(cc1) + _sei_nal(cc3) + bytes(p))
            q.pts, q.dts, q.time_base, q.is_keyframe, q.stream = p.pts, p.dts, p.time_base, p.is_keyframe, p.stream
            out.mux(q)

    for i in range(frames):
        cc = real[i % len(real)]
        triplets = [cc[k:k + 3] for k in range(0, len(cc), 3)]
        field1 = next(t for t in triplets if t[0] & 3 == 0)
        padding = [t for t in triplets if t[0] & 3 >= 2][:19]
        cc1 = b"".join([field1, *padding])
        cc3 = b"".join([bytes([0xFD]) + field1[1:], *padding])  # cc_valid, cc_type 1: field 2
        assert len(cc1) // 3 == 20
        rgb = np.full((64, 96, 3), (i * 9) % 256, np.uint8)
        rgb[:, : i % 96] = 220
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        f.pts, f.time_base = i, Fraction(1, 24)
        per_pts[i] = (cc1, cc3)
        mux(v.encode(f))
    mux(v.encode(None))
    out.close()
    return [per_pts[i][0] + per_pts[i][1] for i in range(frames)]


@pytest.mark.parametrize("ext,codec", [(".mkv", "libx264"), (".mp4", "libx265")])
def test_captions_on_two_channels_keep_every_triplet(tmp_path, ext, codec):
    """40 triplets a picture (CC1 and CC3 in two SEIs): the writer cut them to cc_count's 31 and
    vsr's own verify refused the output ("closed captions ... payloads differ")."""
    src = tmp_path / "cc1_cc3.ts"
    expected = _two_channel_source(src)
    assert _caption_data(src) == expected  # the decoder joins both SEIs
    out = tmp_path / f"out{ext}"
    report = transcode_with(src, out, nearest_upscale(2), 2, options=EncodeOptions(codec=codec, preset="ultrafast"))
    assert report.ok, report.problems
    assert report.facts["captions"] == [48, 48]
    assert _caption_data(out) == expected


# ---------------------------------------------------------------- MPEG-TS output
START_59857 = CORPUS / "h264_aac_start59857s.ts"


def _ts_clock(path: Path) -> tuple[list[tuple[int, int]], dict[int, list[tuple[int, int, int]]]]:
    """An MPEG-TS file's PCRs [(packet number, PCR in 27 MHz)] and per PID its PES headers
    [(packet number, PTS, DTS) in 90 kHz] (188-byte packets, or 192 with an arrival-time prefix)."""
    data = path.read_bytes()
    size = 192 if data[4:5] == b"\x47" and data[0:1] != b"\x47" else 188
    pcr, pes = [], {}
    for n, at in enumerate(range(size - 188, len(data) - 187, size)):
        p = data[at:at + 188]
        assert p[0] == 0x47, f"lost sync at packet {n}"
        pid, start, control = ((p[1] & 0x1F) << 8) | p[2], p[1] & 0x40, (p[3] >> 4) & 3
        body = 4
        if control & 2:
            if p[4] and p[5] & 0x10:
                base = (p[6] << 25) | (p[7] << 17) | (p[8] << 9) | (p[9] << 1) | (p[10] >> 7)
                pcr.append((n, base * 300 + (((p[10] & 1) << 8) | p[11])))
            body = 5 + p[4]
        if control & 1 and start and p[body:body + 3] == b"\x00\x00\x01" and p[body + 7] & 0x80:
            def stamp(q: bytes) -> int:
                return ((q[0] >> 1) & 7) << 30 | q[1] << 22 | (q[2] >> 1) << 15 | q[3] << 7 | q[4] >> 1
            pts = stamp(p[body + 9:body + 14])
            dts = stamp(p[body + 14:body + 19]) if p[body + 7] & 0x40 else pts
            pes.setdefault(pid, []).append((n, pts, dts))
    return pcr, pes


def _pcr_leads(path: Path) -> dict[int, list[float]]:
    """Per PID, for every PES: its DTS minus the last PCR before it (s), in file order: how long
    a receiver buffers it before decoding (negative: it arrives too late)."""
    pcr, pes = _ts_clock(path)
    assert pcr, "no PCR"
    leads: dict[int, list[float]] = {}
    for pid, headers in pes.items():
        for n, _, dts in headers:
            before = [value for at, value in pcr if at <= n]
            if before:
                leads.setdefault(pid, []).append(dts / 90_000 - before[-1] / 27_000_000)
    return leads


def _check_clock(path: Path, lead: float) -> None:
    """Every PES arrives before its decode time and not far more than `lead` ahead (audio PES
    packets hold several frames, and their DTS is the first's), and on streams long enough to
    tell, the lead does not drift: over the last tenth it is what it was over the first."""
    for pid, leads in _pcr_leads(path).items():
        assert 0 <= min(leads) and max(leads) <= lead + 0.25, pid
        if len(leads) >= 50:
            tenth = len(leads) // 10
            first, last = leads[:tenth], leads[-tenth:]
            assert abs(sum(first) / len(first) - sum(last) / len(last)) < 0.1, pid


def _times(path: Path, kind: str) -> tuple[float, float]:
    """First and last presentation time (s) of a stream kind's packets; for audio the last one's
    end (MPEG-TS stores no video packet durations, every audio packet's follows from its samples)."""
    with av.open(str(path)) as c:
        s = next(x for x in c.streams if x.type == kind)
        ts = [(p.pts, p.duration or 0) for p in c.demux(s) if p.size and p.pts is not None]
        tb = s.time_base
    return float(min(t for t, _ in ts) * tb), float(max(t + (d if kind == "audio" else 0) for t, d in ts) * tb)


def test_ts_source_into_ts_keeps_timestamps_captions_audio_and_a_steady_clock(tmp_path):
    """Sintel (10 s, starts at 9.881 s, CEA-608 on every frame, AAC) into .ts: not shifted, captions
    in the H.264 stream, audio copied bit for bit, and the PCR a steady lead over every DTS."""
    out = tmp_path / "sintel.ts"
    report = transcode_with(SINTEL, out, nearest_upscale(2), 2, options=FAST)
    assert report.ok, report.problems
    assert "start_shift_s" not in report.facts and report.facts["notes"] == []
    assert report.facts["audio"][0]["bit_identical"] is True
    assert report.facts["captions"] == [240, 240] and _caption_data(out) == _caption_data(SINTEL)
    with av.open(str(out)) as c:
        assert c.format.name == "mpegts" and c.streams.video[0].codec_context.name == "h264"
    assert probe(out).video.frame_pts == probe(SINTEL).video.frame_pts  # the same 90 kHz ticks
    for kind in ("video", "audio"):
        assert _times(out, kind) == pytest.approx(_times(SINTEL, kind), abs=1 / 90_000)
    _check_clock(out, 0.7)
    check_video(SINTEL, out, 2)


def test_ts_start_at_59857_s_into_m2ts_is_not_shifted(tmp_path):
    out = tmp_path / "late.m2ts"
    report = transcode_with(START_59857, out, nearest_upscale(2), 2, options=FAST)
    assert report.ok, report.problems
    assert out.read_bytes()[4] == 0x47 and out.stat().st_size % 192 == 0  # Blu-ray packets
    assert probe(out).video.frame_pts == probe(START_59857).video.frame_pts
    assert _times(out, "audio") == pytest.approx(_times(START_59857, "audio"), abs=1 / 90_000)
    _check_clock(out, 0.7)
    check_video(START_59857, out, 2)


def test_mp4_with_b_frames_into_ts_is_moved_just_enough_for_the_clock(tmp_path):
    """An MP4 starting at 0 whose B-frames decode before 0: the PCR cannot run ahead of that, so
    the whole file moves by what is missing (0.1 s + the B-frame delay); said in a note, accepted by
    verify, audio AAC copied (ADTS headers added). With the PCR equal to the first DTS, audio the
    muxer packed into a PES arrived up to 23 ms after its decode time."""
    src = SHARED / "leader_320x240_h264_aac.mp4"
    out = tmp_path / "leader.ts"
    report = transcode_with(src, out, nearest_upscale(2), 2, options=EncodeOptions(preset="veryfast"))
    assert report.ok, report.problems
    assert report.facts["start_shift_s"] == pytest.approx(0.1 + 2 * 1001 / 30000, abs=2e-5)
    assert any(n.startswith("every timestamp moved by +167 ms: MPEG-TS needs its clock") for n in report.facts["notes"])
    assert report.facts["audio"][0]["bit_identical"] == "without ADTS headers"
    shift = report.facts["start_shift_s"]
    (v0, v1), (o0, o1) = _times(src, "video"), _times(out, "video")
    assert o0 - v0 == pytest.approx(shift, abs=2e-5) and o1 - v1 == pytest.approx(shift, abs=2e-5)
    (a0, a1), (b0, b1) = _times(src, "audio"), _times(out, "audio")
    assert b0 - a0 == pytest.approx(shift, abs=2e-5) and b1 - a1 == pytest.approx(shift, abs=2e-3)
    _check_clock(out, 0.1)
    check_video(src, out, 2)


def test_a_rotation_ts_cannot_hold_is_refused_before_any_work(tmp_path):
    from vsr.media.encode import resolve_encode_options

    with pytest.raises(OutputError) as err:
        resolve_encode_options(probe(CORPUS / "rot270_h264_aac.mp4"), tmp_path / "out.ts")
    assert "MPEG-TS has no place for the video's display rotation (90 degrees" in str(err.value)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_ts_leaves_out_chapters_and_a_gop_timecode_with_notes(tmp_path):
    """Chapters (MP4 text track) and an MPEG-2 GOP header's timecode have no place in MPEG-TS: left
    out and said (a broadcast MPEG-2 TS source was refused for its 00:00:00:00 GOP timecode)."""
    report = transcode_with(CORPUS / "chapters_h264_aac.mp4", tmp_path / "ch.ts", nearest_upscale(2), 2, options=FAST)
    assert report.ok, report.problems
    assert report.facts["chapters"] == [3, 0]
    assert "mpegts has no place for the source's 3 chapters: not kept (use .mkv, .mp4 or .mov)" in report.facts["notes"]
    src = CORPUS / "xdcam_mpeg2_422_mp2.ts"
    report = transcode_with(src, tmp_path / "xdcam.ts", nearest_upscale(2), 2, options=FAST)
    assert report.ok, report.problems
    assert report.facts["timecode"] == ["00:00:00:00", None]
    assert any(n.startswith("mpegts has no place for the start timecode 00:00:00:00") for n in report.facts["notes"])
    assert report.facts["audio"][0]["bit_identical"] is True  # MP2 copied
    assert probe(tmp_path / "xdcam.ts").video.frame_pts == probe(src).video.frame_pts


def test_ts_refuses_subtitles_and_transcodes_pcm_with_notes(tmp_path):
    """SRT has no place in MPEG-TS: refused while planning, as by every other container (vsr never
    loses a subtitle stream), naming one that keeps it; 24-bit PCM becomes AAC, said to be lossy,
    and its encoder priming, which TS cannot mark, is not taken for a shift."""
    out = tmp_path / "srt.ts"
    with pytest.raises(OutputError, match=r"mpegts container cannot hold stream #2 \(subtitle srt, eng\).*\.mkv"):
        transcode_with(CORPUS / "srt_h264_ac3.mkv", out, nearest_upscale(2), 2, options=FAST)
    assert not out.exists()
    out = tmp_path / "pcm.ts"
    report = transcode_with(CORPUS / "pcm24_ipcm_h264.mp4", out, nearest_upscale(2), 2, options=FAST)
    assert report.ok, report.problems
    note = report.facts["notes"][0]
    assert "transcoded to aac (lossy" in note and "1024-sample priming" in note
    assert abs(report.facts["audio"][0]["offset_ms"]) < 1
    with av.open(str(out)) as c:
        assert [s.codec_context.name for s in c.streams] == ["h264", "aac"]


def test_ts_source_into_ts_through_the_cli(tmp_path, capsys):
    from vsr.cli import main

    out = tmp_path / "sintel.ts"
    code = main(["upscale", str(SINTEL), str(out), "-m", "lanczos", "--outscale", "2"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert probe(out).video.frame_pts == probe(SINTEL).video.frame_pts
    assert _caption_data(out) == _caption_data(SINTEL)
    assert read_job_tag(out)  # in the SDT's provider name: a later batch knows vsr made it
    check_video(SINTEL, out, 2)


# ---------------------------------------------------------------- labels a container does not keep
def _labelled_source(path: Path, fmt: str, audio: list[tuple[str, str, int]], subs: tuple[int, ...] = ()) -> Path:
    """A short H.264 file with audio streams (encoder, channel layout, disposition flags) of a 440 Hz
    tone on every channel and SubRip streams (disposition flags) of two cues each."""
    from fractions import Fraction

    import numpy as np

    out = av.open(str(path), "w", format=fmt)
    v = out.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    streams = []
    for codec, layout, flags in audio:
        a = out.add_stream(codec, rate=48000, layout=layout)
        a.disposition = flags
        streams.append(a)
    texts = []
    for flags in subs:
        s = out.add_mux_stream("subrip")
        s.time_base = Fraction(1, 1000)
        s.disposition = flags
        texts.append(s)
    for i in range(24):
        f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24").reformat(format="yuv420p")
        f.pts, f.time_base = i, Fraction(1, 24)
        out.mux(v.encode(f))
    out.mux(v.encode(None))
    for a in streams:
        n = a.codec_context.layout.nb_channels
        for k in range(0, 48000, 1024):
            tone = (np.sin(2 * np.pi * 440 * np.arange(k, k + 1024) / 48000) * 8000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.repeat(tone, n)[None], format="s16", layout=a.codec_context.layout)
            frame.sample_rate, frame.pts, frame.time_base = 48000, k, Fraction(1, 48000)
            out.mux(a.encode(frame))
        out.mux(a.encode(None))
    for s in texts:
        for start, text in ((100, "one"), (600, "two")):
            pk = av.Packet(text.encode())
            pk.pts = pk.dts = start
            pk.duration, pk.time_base, pk.stream = 300, Fraction(1, 1000), s
            out.mux(pk)
    out.close()
    return path


def test_flags_webm_cannot_hold_are_named_and_kept_where_the_muxer_can(tmp_path):
    """The WebM muxer writes no commentary, hearing- or visual-impaired flag: said in a note
    (they were dropped silently); Matroska keeps them, and says nothing."""
    from av.stream import Disposition as D

    src = _labelled_source(tmp_path / "flags.mkv", "matroska", [("libopus", "stereo", D.comment | D.visual_impaired)],
                           subs=(D.hearing_impaired,))
    report = transcode_with(src, tmp_path / "out.webm", nearest_upscale(2), 2, options=EncodeOptions())
    assert report.ok, report.problems
    notes = report.facts["notes"]
    assert "stream #1 (audio): webm cannot mark it comment, visual_impaired; the flag is not kept" \
           " (use .mkv or .mp4 to keep it)" in notes
    assert any(n.startswith("stream #2 (subtitle): webm cannot mark it hearing_impaired") for n in notes)
    report = transcode_with(src, tmp_path / "out.mkv", nearest_upscale(2), 2, options=FAST)
    assert report.ok and not any("cannot mark" in n for n in report.facts["notes"])
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.audio[0].disposition & (D.comment | D.visual_impaired) == D.comment | D.visual_impaired
        assert c.streams.subtitles[0].disposition & D.hearing_impaired


@pytest.mark.parametrize("codec,layout,fmt,ext,read_back", [
    ("flac", "4.1", "matroska", ".mp4", "5.0(side)"),  # LFE read back as a side speaker
    ("pcm_s16le", "quad", "mov", ".mkv", "4 channels"),
    ("pcm_s16le", "5.1", "mov", ".mkv", None),  # "6 channels" is what players take for 5.1
])
def test_copied_audio_a_container_relabels_is_named(tmp_path, codec, layout, fmt, ext, read_back):
    src = _labelled_source(tmp_path / f"src.{'mkv' if fmt == 'matroska' else fmt}", fmt, [(codec, layout, 0)])
    report = transcode_with(src, tmp_path / f"out{ext}", nearest_upscale(2), 2, options=FAST)
    assert report.ok, report.problems
    audio = report.facts["audio"][0]
    assert audio["bit_identical"] and audio["layout"][0] == layout
    relabel = [n for n in report.facts["notes"] if "channels read back as" in n]
    if read_back is None:
        assert not relabel, relabel
    else:
        assert audio["layout"][1] == read_back
        assert relabel == [f"stream #1 (audio {codec}): {MUXERS[ext]} stores no channel layout for it, its {layout} "
                           f"channels read back as {read_back} (the samples are the same; a player may send them to "
                           "other speakers; use .mkv or .mov to keep the layout)"]
