"""Every stream other than the main video, on the real clips read in place (../shared/media and
its corpus): what plan_streams decides for it before any work, and that assembly follows only
that plan (data and timecode tracks, MPEG-TS output, captions, relabelled audio, dispositions)."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import pytest

from test_media import check_video
from vsr.errors import InputError, OutputError
from vsr.media.assemble import assemble
from vsr.media.containers import MUXERS
from vsr.media.encode import EncodeOptions
from vsr.media.probe import probe
from vsr.media.roundtrip import nearest_upscale, transcode_with
from vsr.media.streams import PLAN_ACTIONS, StreamPlan, plan_streams

FAST = EncodeOptions(preset="ultrafast")


def _shared_media() -> Path:
    """../shared/media beside the clone (the real clips; never copied into the repository)."""
    for parent in Path(__file__).resolve().parents:
        found = parent / "shared" / "media"
        if (found / "corpus").is_dir():
            return found
    raise AssertionError("the shared media folder (shared/media with its corpus/) is not beside this clone")


SHARED = _shared_media()
CORPUS = SHARED / "corpus"
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
    assert planned_files >= len(REAL_FILES) - 8


@pytest.mark.parametrize("name", ["iphone_hevc10_hlg_dovi_mebx.mov", "iphone_hevc10_hlg_dovi_rot90.mp4",
                                  "android_hevc_yuvj_rot90_metatrack.mp4"])
def test_data_tracks_ffmpeg_cannot_describe_are_dropped_with_a_note_everywhere(tmp_path, name):
    """Apple 'mebx' timed metadata and Android 'mett' tracks: FFmpeg keeps their packets but not
    their sample description; a MOV copy even had an empty description (a broken track)."""
    info = probe(CORPUS / name)
    data = [s.index for s in info.streams if s.kind == "data"]
    assert data
    for ext in sorted(MUXERS):
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
