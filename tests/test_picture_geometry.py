"""Picture geometry of real files: the picture size changing mid-stream, and display matrices that
mirror as well as rotate (issue 21).

The corpus clips are read in place from shared/media/corpus beside the clone (see its SOURCES.md).
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import CORPUS, NO_SHARED
from PIL import Image

from conftest import psnr
from vsr.errors import VerifyError
from vsr.media.assemble import assemble
from vsr.media.decode import decode_segment, scan_decodable
from vsr.media.encode import EncodeOptions, SegmentWriter, resolve_encode_options
from vsr.media.framesize import plan_frame_size
from vsr.media.picture import PicturePlan, plan_picture
from vsr.media.probe import probe
from vsr.media.segments import plan_segments
from vsr.media.streams import plan_streams
from vsr.media.verify import verify

FAST = EncodeOptions(preset="ultrafast")


@pytest.fixture(scope="module")
def corpus() -> Path:
    """shared/media/corpus (conftest: beside the checkout, or the repository it was cloned from)."""
    if CORPUS is None:
        pytest.skip(NO_SHARED)
    return CORPUS


def _upscale(src: Path, out: Path, plan: PicturePlan, scale: int = 2, seconds: float = 0.3):
    """The job's media path with a nearest-neighbour x scale: decode (fitted to the plan's frame
    size, the plan's filter), encode at the plan's size, assemble, verify (VerifyError on failure)."""
    info = probe(src)
    options = resolve_encode_options(info, out, FAST)
    out_info = plan.output_info(info)
    paths = []
    for seg in plan_segments(info, seconds):
        path = out.parent / f"{out.stem}-{seg.index:05d}.nut"
        with SegmentWriter(path, out_info, options, *plan.out_size) as writer:
            for chunk in decode_segment(src, seg, 8, info=info, frame_filter=plan.frame_filter(),
                                        fit_size=plan.source_size):
                writer.write(chunk.frames.repeat(scale, axis=1).repeat(scale, axis=2), chunk.pts, chunk.side_data)
        paths.append(path)
    return assemble(paths, src, out, info, options, scale=plan.display_scale, plans=plan_streams(info, out),
                    picture=plan)


def _write_rgb(path: Path, frames: list[np.ndarray], pts: list[int], time_base: Fraction) -> Path:
    """A plain x264 Matroska file of these RGB frames at these pts (a hand-made output)."""
    with av.open(str(path), "w") as o:
        v = o.add_stream("libx264", options={"preset": "ultrafast", "crf": "12"})
        v.width, v.height, v.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        v.time_base = v.codec_context.time_base = time_base
        for rgb, p in zip(frames, pts):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = p, time_base
            for pkt in v.encode(f):
                o.mux(pkt)
        for pkt in v.encode(None):
            o.mux(pkt)
    return path


# ------------------------------------------------------------------ the size changes mid-stream

SIZE_CHANGES = {  # clip -> (frame sizes in order of appearance with counts, planned size)
    "vp9_resize_midstream.ivf": ([(352, 288, 7), (282, 173, 3)], (352, 288)),
    "av1_sizeup_mdcv.ivf": ([(352, 288, 10), (1280, 720, 10)], (1280, 720)),
    "vp8_frame_size_change.webm": ([(160, 90, 36), (160, 120, 33), (320, 180, 33), (320, 240, 33), (640, 360, 33),
                                    (640, 480, 33), (1280, 720, 33), (1280, 960, 33), (1920, 1080, 33)], (1920, 1080)),
}


@pytest.mark.parametrize("name", sorted(SIZE_CHANGES))
def test_scan_finds_every_frame_size_and_decode_fits_them_into_the_plan(corpus, name):
    """Decode stacked frames of different sizes: every segment of these clips failed three times."""
    src = corpus / name
    info = probe(src)
    sizes, planned = SIZE_CHANGES[name]
    scan = scan_decodable(src, info)
    assert scan.ok and scan.frame_sizes == sizes
    assert scan.to_dict()["frame_sizes"] == [list(s) for s in sizes]
    size, note = plan_frame_size(info, scan)
    assert size == planned
    if name.startswith("vp8"):
        assert note == "frames of 9 sizes (160x90 ... 1920x1080) scaled to 1920x1080"
    plan = plan_picture(info, 2, scan=scan)
    assert plan.source_size == planned and plan.out_size == (planned[0] * 2, planned[1] * 2)
    assert plan.describe().splitlines()[0] == note and plan.detected["frame_sizes"]["planned"] == list(planned)
    first = plan_segments(info, 2.0)[0]  # the first 2 s hold every size of each clip
    pts = []
    for chunk in decode_segment(src, first, 16, info=info, fit_size=size):
        assert chunk.frames.shape[1:] == (planned[1], planned[0], 3)
        pts += chunk.pts
    assert pts == [p for p in info.video.frame_pts if first.contains(p)]


def test_without_the_scan_stray_frames_are_fitted_into_the_declared_size(corpus):
    """Scan off: nothing knows the sizes in advance, and decode still never stacks mixed sizes."""
    src = corpus / "av1_sizeup_mdcv.ivf"
    info = probe(src)
    assert plan_frame_size(info, None) == ((352, 288), None)
    (seg,) = plan_segments(info, 0)
    chunks = list(decode_segment(src, seg, 32, info=info))
    assert chunks[0].frames.shape == (20, 288, 352, 3) and chunks[0].pts == info.video.frame_pts
    # a 1280x720 frame is scaled to fill 352x288 as a player scales it to the render size: no bars
    with av.open(str(src)) as c:
        hd = [f for f in c.decode(video=0)][15].to_ndarray(width=352, height=288, format="rgb24")
    assert chunks[0].frames[15][:44].mean() > 40 and psnr(chunks[0].frames[15], hd) > 30


def _letterboxed(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """rgb scaled to fit inside w x h with its aspect kept, centred on black (vsr's old fit)."""
    k = min(w / rgb.shape[1], h / rgb.shape[0])
    fw, fh = round(rgb.shape[1] * k), round(rgb.shape[0] * k)
    out = np.zeros((h, w, 3), np.uint8)
    x, y = (w - fw) // 2, (h - fh) // 2
    out[y:y + fh, x:x + fw] = np.asarray(Image.fromarray(rgb).resize((fw, fh), Image.BICUBIC))
    return out


@pytest.mark.parametrize("name", ["vp9_resize_midstream.ivf", "av1_sizeup_mdcv.ivf"])
def test_size_change_output_verifies_and_a_letterboxed_one_does_not(corpus, tmp_path, name):
    """Every frame scaled to the planned size, at the source's times; verify scales the source's
    frames the same way, and fails frames letterboxed into the picture (bars the source lacks)."""
    src = corpus / name
    info = probe(src)
    plan = plan_picture(info, 2, scan=scan_decodable(src, info))
    out = tmp_path / "out.mkv"
    report = _upscale(src, out, plan)
    assert report.ok, report.problems
    o = probe(out)
    assert (o.video.width, o.video.height) == plan.out_size == (plan.source_size[0] * 2, plan.source_size[1] * 2)
    assert o.video.frame_count == info.video.frame_count
    assert np.allclose(o.video.frame_times, info.video.frame_times, atol=0.0006)
    # the first frame of the second size was compared too, not only the five evenly spread ones
    assert report.facts["worst_psnr_db"] > 30
    w, h = plan.out_size
    with av.open(str(src)) as c:
        boxed = [_letterboxed(f.to_ndarray(format="rgb24"), w, h) for f in c.decode(video=0)]
    wrong = _write_rgb(tmp_path / "letterboxed.mkv", boxed, info.video.frame_pts, info.video.time_base)
    bad = verify(src, wrong, 2, picture=plan)
    assert not bad.ok and any(p.startswith("picture differs from the source") for p in bad.problems), bad.problems


def test_size_change_through_the_cli(corpus, tmp_path, capsys):
    """The real command: vsr upscale with lanczos x2 (the job failed 'segment 0 failed after 3
    attempts')."""
    import json

    from vsr.cli import main

    src = corpus / "vp9_resize_midstream.ivf"
    out = tmp_path / "resized.mkv"
    # an encoder of one picture size per stream: the single planned canvas (VP9 follows the sizes)
    assert main(["upscale", str(src), str(out), "-m", "lanczos", "--outscale", "2", "--codec", "libx264",
                 "--json"]) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"job_done"' in line][-1]
    assert done["picture"]["plan"]["source_size"] == [352, 288] and (done["width"], done["height"]) == (704, 576)
    info, o = probe(src), probe(out)
    assert o.video.frame_count == done["frames"] == 10
    assert np.allclose(o.video.frame_times, info.video.frame_times, atol=0.0006)
    report = verify(src, out, 2)
    assert report.ok, report.problems
    # frames 3-5 (282x173) letterboxed instead of scaled to fill the picture: caught
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(src)) as c:
        boxed = [_letterboxed(f.to_ndarray(format="rgb24"), 704, 576) for f in c.decode(video=0)]
    frames[3:6] = boxed[3:6]
    wrong = _write_rgb(tmp_path / "letterboxed.mkv", frames, info.video.frame_pts, info.video.time_base)
    assert any(p.startswith("picture differs from the source") for p in verify(src, wrong, 2).problems)


# ------------------------------------------------------------------ mirroring display matrices

ONE = 1 << 16


def _matrix(frame: av.VideoFrame) -> list[list[int]]:
    """The 2x2 part of a frame's display matrix, as signs (identity when it has none)."""
    for sd in frame.side_data:
        if str(sd.type).upper().endswith("DISPLAYMATRIX"):
            m = struct.unpack("<9i", bytes(sd)[:36])
            return [[int(np.sign(m[0])), int(np.sign(m[1]))], [int(np.sign(m[3])), int(np.sign(m[4]))]]
    return [[1, 0], [0, 1]]


def _shown(rgb: np.ndarray, m: list[list[int]]) -> np.ndarray:
    """The picture where FFmpeg's display matrix puts it: the stored pixel (x, y) is shown at
    (a x + c y, b x + d y) (libavutil/display.h), an independent reading of the matrix."""
    (a, b), (c, d) = m
    h, w = rgb.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    sx, sy = a * xs + c * ys, b * xs + d * ys
    sx, sy = sx - sx.min(), sy - sy.min()
    shown = np.zeros((sy.max() + 1, sx.max() + 1, 3), rgb.dtype)
    shown[sy, sx] = rgb[ys, xs]
    return shown


def _first_shown(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return _shown(frame.to_ndarray(format="rgb24"), _matrix(frame))


def _displays_like(src: Path, out: Path) -> float:
    """PSNR of the output's first frame as shown by its matrix against the source's (brought to
    the source's size)."""
    a, b = _first_shown(src), _first_shown(out)
    assert a.shape[0] * b.shape[1] == a.shape[1] * b.shape[0], (a.shape, b.shape)  # same display aspect
    return psnr(a, np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.BICUBIC)))


def _with_matrix(path: Path, matrix: list[int] | None = None, rotation: int | None = None) -> Path:
    """A 64x48 H.264 MP4 of an asymmetric picture (a bright corner square, a ramp) with a display
    matrix (PyAV writes any matrix, flips included) or a plain rotation."""
    with av.open(str(path), "w") as o:
        v = o.add_stream("libx264", rate=24, options={"preset": "ultrafast", "crf": "10"})
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        if matrix:
            v.set_display_matrix(matrix)
        if rotation:
            v.set_display_rotation(rotation)
        for i in range(3):
            rgb = np.zeros((48, 64, 3), np.uint8)
            rgb[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
            rgb[..., 1] = np.linspace(0, 200, 48, dtype=np.uint8)[:, None]
            rgb[4:16, 4:20] = 255
            rgb[40:46, 50 - i:60 - i, 2] = 255
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.pts = i
            for p in v.encode(f):
                o.mux(p)
        for p in v.encode(None):
            o.mux(p)
    return path


def _without_matrix(out: Path, path: Path) -> Path:
    """The output's stored pixels written again with no display matrix (an output that lost it)."""
    info = probe(out)
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return _write_rgb(path, frames, info.video.frame_pts, info.video.time_base)


@pytest.mark.parametrize("name, matrix, rotation", [
    ("hflip.mp4", [-ONE, 0, 0, 0, ONE, 0, 0, 0, 1 << 30], 180),
    ("vflip.mp4", [ONE, 0, 0, 0, -ONE, 0, 0, 0, 1 << 30], 0),
    ("transpose.mp4", [0, ONE, 0, ONE, 0, 0, 0, 0, 1 << 30], -90),
    ("antitranspose.mp4", [0, -ONE, 0, -ONE, 0, 0, 0, 0, 1 << 30], 90),
])
def test_mirroring_matrix_is_carried_to_the_output_and_verified(tmp_path, name, matrix, rotation):
    """A flip in the display matrix was reduced to a rotation (a horizontal mirror came out upside
    down, a vertical one unflipped, a transpose mirrored, all 'verified'), then refused, then baked
    into the pixels (which the independent checker, reading only the rotation, calls flipped). Now
    the pixels stay as stored and the output carries the source's matrix, mirror and all: it shows
    exactly what the source shows; an output that lost the matrix fails verify."""
    src = _with_matrix(tmp_path / name, matrix)
    info = probe(src)
    assert info.video.mirrored and info.video.flip == "vflip" and info.video.display_matrix == matrix
    assert info.video.rotation % 360 == rotation % 360 and info.to_dict()["video"]["flip"] == "vflip"
    plan = plan_picture(info, 2)
    assert plan.frame_filter() is None and "the output carries the same matrix" in plan.describe()
    out = tmp_path / "out.mkv"
    report = _upscale(src, out, plan)
    assert report.ok and report.facts["mirrored"] == [True, True], report.problems
    o = probe(out)
    assert o.video.mirrored and o.video.display_matrix == matrix
    assert _displays_like(src, out) > 25  # an output that lost the mirror: 8 dB
    bad = verify(src, _without_matrix(out, tmp_path / "plain.mkv"), 2, picture=plan)
    assert "display matrix mirror not kept" in bad.problems
    # shown by its own (missing) matrix it differs: in picture, or in shape where the matrix rotates
    assert any(p.startswith(("picture differs from the source", "displayed size")) for p in bad.problems), bad.problems


def test_plain_rotation_is_not_flipped(tmp_path):
    src = _with_matrix(tmp_path / "rot.mp4", rotation=90)
    info = probe(src)
    assert not info.video.mirrored and info.video.flip is None and info.video.rotation in (90, -90)
    plan = plan_picture(info, 2)
    assert plan.frame_filter() is None and "mirror" not in plan.detected
    out = tmp_path / "out.mp4"
    assert _upscale(src, out, plan).ok
    assert probe(out).video.rotation == info.video.rotation
    assert _displays_like(src, out) > 25  # an unrotated output: 8 dB


def test_real_transposed_hdr10_clip_through_the_cli(corpus, tmp_path):
    """hevc10_hdr10_rot_attachment_chapters.mkv: display matrix 0 1 / 1 0 (PyAV: rotation -90),
    10-bit HDR10 HEVC, an attachment and chapters. It was refused, then its mirror was baked into
    the pixels; the output now carries the same matrix and the independent checker agrees."""
    from test_media import check_video
    from vsr.cli import main

    src = corpus / "hevc10_hdr10_rot_attachment_chapters.mkv"
    info = probe(src)
    with av.open(str(src)) as c:
        assert _matrix(next(c.decode(video=0))) == [[0, 1], [1, 0]]
    assert (info.video.flip, info.video.rotation) == ("vflip", -90)
    out = tmp_path / "cli.mkv"
    assert main(["upscale", str(src), str(out), "-m", "lanczos", "--outscale", "2"]) == 0
    o = probe(out)
    assert (o.video.width, o.video.height, o.video.rotation, o.video.mirrored) == (1120, 640, -90, True)
    assert o.video.display_matrix == info.video.display_matrix
    assert o.video.frame_count == info.video.frame_count == 10 and o.video.bit_depth == 10
    assert np.allclose(o.video.frame_times, info.video.frame_times, atol=0.0006)
    assert _displays_like(src, out) > 25  # an output that lost the mirror: 8 dB
    report = verify(src, out, 2)
    assert report.ok and report.facts["displayed_output"] == [640, 1120], report.problems
    check_video(src, out, 2)


def test_auto_crop_of_a_size_changing_stream_is_no_crop_not_a_crash(corpus):
    """--crop auto stacked sampled frames of different sizes (a traceback); the bars around fitted
    frames are vsr's own, so there is nothing of the source's to crop."""
    from vsr.media.picture import PictureOptions

    src = corpus / "vp8_frame_size_change.webm"
    info = probe(src)
    unscanned = plan_picture(info, 2, PictureOptions(crop="auto"))
    assert unscanned.crop is None and unscanned.detected["borders"]["notes"] == [
        "the picture size changes mid-stream: no automatic crop"]
    scanned = plan_picture(info, 2, PictureOptions(crop="auto"), scan=scan_decodable(src, info))
    assert scanned.crop is None and "changes mid-stream" in scanned.describe()


# ------------------------------------------------------------------ the output follows the sizes

VP9 = EncodeOptions(codec="libvpx-vp9", extra={"deadline": "realtime", "cpu-used": "8"})


def _follow_upscale(src: Path, out: Path, plan: PicturePlan, resize=None, seconds: float = 0.3):
    """The job's media path in follow mode with a nearest-neighbour x2: each chunk (one size) at
    its own output size, a segment writer that changes size in-stream, assemble, verify.
    resize(chunk_pts, frames): another picture for a chunk (a wrong output to be caught)."""
    info = probe(src)
    options = resolve_encode_options(info, out, VP9)
    paths = []
    for seg in plan_segments(info, seconds):
        path = out.parent / f"{out.stem}-{seg.index:05d}.nut"
        with SegmentWriter(path, plan.output_info(info), options, *plan.out_size, sizes_change=True) as writer:
            for chunk in decode_segment(src, seg, 8, info=info, follow_sizes=True):
                assert len({chunk.frames.shape}) == 1
                frames = chunk.frames.repeat(2, axis=1).repeat(2, axis=2)
                assert plan.out_size_for(chunk.frames.shape[2], chunk.frames.shape[1]) == (
                    frames.shape[2], frames.shape[1])
                frames = resize(chunk.pts, frames) if resize is not None else frames
                writer.write(frames, chunk.pts, chunk.side_data)
        paths.append(path)
    return assemble(paths, src, out, info, options, scale=plan.display_scale, plans=plan_streams(info, out),
                    picture=plan)


def _frame_sizes(path: Path) -> list[tuple[int, int]]:
    with av.open(str(path)) as c:
        return [(f.width, f.height) for f in c.decode(video=0)]


def test_follow_mode_is_planned_in_the_dry_run_and_the_settings(corpus, tmp_path, capsys):
    """No --codec, 8-bit, a container that holds VP9: the plan follows the sizes with VP9, says so
    and fingerprints it; --codec libx264 or .mov keep one canvas and say why."""
    import json

    from vsr.cli import main

    src = corpus / "vp8_frame_size_change.webm"
    args = [str(src), "-m", "lanczos", "--outscale", "2", "--dry-run", "--json"]
    assert main(["upscale", args[0], str(tmp_path / "o.mkv"), *args[1:]]) == 0
    plan = json.loads(capsys.readouterr().out)
    picture = plan["picture"]
    assert plan["encode"]["codec"] == "libvpx-vp9"
    assert picture["follow_sizes"][0] == [160, 90, 320, 180] and len(picture["follow_sizes"]) == 9
    assert [1920, 1080, 3840, 2160] in picture["follow_sizes"]
    assert picture["out_size"] == [320, 180] and picture["source_size"] == [160, 90]
    note = picture["detected"]["frame_sizes"]["note"]
    assert note == ("frames of 9 sizes (160x90 ... 1920x1080): the output follows them "
                    "(VP9, which changes size in-stream)")
    assert plan["settings"]["picture"]["plan"]["follow_sizes"] == picture["follow_sizes"]
    assert main(["upscale", args[0], str(tmp_path / "o.mkv"), *args[1:-1]]) == 0
    assert note in capsys.readouterr().out
    for extra, out, why in ((["--codec", "libx264"], "o.mkv", "libx264 writes one picture size per stream"),
                            ([], "o.mov", "mov holds no VP9")):
        assert main(["upscale", args[0], str(tmp_path / out), *args[1:], *extra]) == 0
        single = json.loads(capsys.readouterr().out)
        assert single["picture"]["follow_sizes"] == [] and single["encode"]["codec"] != "libvpx-vp9"
        assert "follow_sizes" not in single["settings"]["picture"]["plan"]  # older outputs' tags hold
        assert single["picture"]["out_size"] == [3840, 2160]
        assert any(why in n for n in single["notes"]), single["notes"]
        assert single["settings"] != plan["settings"]


@pytest.mark.parametrize("name", ["vp9_resize_midstream.ivf", "av1_sizeup_mdcv.ivf"])
def test_follow_mode_output_frames_are_their_source_frames_x2(corpus, tmp_path, name):
    """Every output frame is its own source frame at twice its size, at the source's times, and
    verify holds; the size a checker reads after the last frame is the source's x2."""
    src = corpus / name
    info = probe(src)
    plan = plan_picture(info, 2, scan=scan_decodable(src, info), follow=True)
    assert plan.follows and plan.frame_filter() is None
    out = tmp_path / "out.mkv"
    report = _follow_upscale(src, out, plan)
    assert report.ok, report.problems
    src_sizes, out_sizes = _frame_sizes(src), _frame_sizes(out)
    assert out_sizes == [(w * 2, h * 2) for w, h in src_sizes]
    assert report.facts["frame_sizes_checked"] == info.video.frame_count
    assert report.facts["worst_psnr_db"] > 30
    o = probe(out)
    assert (o.video.width, o.video.height) == plan.out_size == (src_sizes[0][0] * 2, src_sizes[0][1] * 2)
    assert np.allclose(o.video.frame_times, info.video.frame_times, atol=0.0006)


def test_verify_fails_a_followed_output_with_one_frame_of_a_wrong_size(corpus, tmp_path):
    """Frames 3-5 (282x173) written at 704x576 instead of 564x346: the picture still resembles the
    source, the size does not, and verify names the first such frame."""
    src = corpus / "vp9_resize_midstream.ivf"
    info = probe(src)
    plan = plan_picture(info, 2, scan=scan_decodable(src, info), follow=True)
    small = set(info.video.frame_pts[3:6])

    def wrong(pts, frames):
        if not small & set(pts):
            return frames
        return np.stack([np.asarray(Image.fromarray(f).resize((704, 576), Image.BICUBIC)) for f in frames])

    with pytest.raises(VerifyError, match="output frame 3 is 704x576, its source frame is 282x173: "
                                          "expected 564x346; 3 frames have a wrong size"):
        _follow_upscale(src, tmp_path / "wrong.mkv", plan, resize=wrong)
    assert not (tmp_path / "wrong.mkv").exists()
