"""Video with real alpha (issue 21): the alpha plane is upscaled by the same network as the
colour and kept where the output codec can carry it; an output that cannot is refused while planning.

Sources are made with PyAV from a real picture: the 16-bit RGBA tree of tests/images (an overlay
with a cut-out alpha) moving over a transparent canvas, encoded as web overlays, stickers and
masters are: VP9 and VP8 WebM with alpha (libvpx's BlockAdditional), ProRes 4444 and QuickTime
animation (qtrle argb) .mov, FFV1 yuva .mkv. Every job runs through the real CLI (Ray, the
workers' run_segment, assembly, verify); the output's alpha is then decoded here with plain PyAV
(libvpx's decoders for WebM alpha) and compared with the source's alpha upscaled.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from test_media import check_video
from vsr.cli import main
from vsr.job.local import nearest_upscale, transcode_with
from vsr.media.encode import EncodeOptions
from vsr.media.probe import probe
from vsr.media.verify import verify

TREE = Path(__file__).parent / "data" / "images" / "tree_alpha_16bit.png"  # the shared image, copied here
LANCZOS = ["-m", "lanczos", "--outscale", "2"]
W, H = 96, 64  # even: 4:2:0 formats need it


def _tree(width: int) -> np.ndarray:
    """The tree picture (RGBA, uint16) scaled to `width`."""
    with av.open(str(TREE)) as c:
        rgba = next(c.decode(video=0)).to_ndarray(format="rgba64le")
    height = round(rgba.shape[0] * width / rgba.shape[1])
    planes = [np.asarray(Image.fromarray(rgba[..., k].astype(np.float32)).resize((width, height), Image.BICUBIC))
              for k in range(4)]
    return np.clip(np.rint(np.dstack(planes)), 0, 65535).astype(np.uint16)


def _overlay_frames(n: int) -> list[np.ndarray]:
    """n RGBA frames (uint16): the tree moving right over a transparent canvas whose colour (seen
    nowhere: alpha 0) is a gradient, as straight-alpha overlays are stored."""
    tree = _tree(56)
    th, tw = tree.shape[:2]
    y, x = np.mgrid[0:H, 0:W]
    frames = []
    for i in range(n):
        canvas = np.zeros((H, W, 4), np.uint16)
        canvas[..., 0], canvas[..., 1], canvas[..., 2] = x * 600, y * 900, 20000
        left, top = 4 + 5 * i, (H - th) // 2
        canvas[top:top + th, left:left + tw] = tree
        frames.append(canvas)
    return frames


def _write(path: Path, codec: str, pix_fmt: str, n: int = 6, rate: Fraction = Fraction(10),
           options: dict | None = None, invert_alpha: bool = False) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, options=options or {})
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        for i, rgba in enumerate(_overlay_frames(n)):
            if invert_alpha:
                rgba[..., 3] = 65535 - rgba[..., 3]
            f = av.VideoFrame.from_ndarray(rgba, format="rgba64le").reformat(format=pix_fmt)
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return path


SOURCES = {
    "vp9.webm": lambda p: _write(p, "libvpx-vp9", "yuva420p", options={"crf": "20", "b": "0"}),
    "vp8.webm": lambda p: _write(p, "libvpx", "yuva420p", options={"auto-alt-ref": "0", "crf": "10", "b": "2M"}),
    "prores4444.mov": lambda p: _write(p, "prores_ks", "yuva444p10le", options={"profile": "4"}),
    # 29.97 fps in a 1/30000 QuickTime time base: times that are no whole milliseconds
    "qtrle.mov": lambda p: _write(p, "qtrle", "argb", rate=Fraction(30000, 1001)),
    "ffv1.mkv": lambda p: _write(p, "ffv1", "yuva444p10le"),
}


def _alphas(path: Path) -> list[np.ndarray]:
    """Every frame's alpha (8-bit), decoded with plain PyAV: libvpx's decoders for WebM VP8/VP9,
    which read the BlockAdditional alpha (FFmpeg's own ignore it), else the stream's decoder."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        if v.codec_context.name in ("vp8", "vp9"):
            dec = av.CodecContext.create("libvpx" if v.codec_context.name == "vp8" else "libvpx-vp9", "r")
            frames = [f for pkt in c.demux(v) for f in dec.decode(pkt)]
        else:
            frames = list(c.decode(v))
    assert all(f.format.name in ("yuva420p", "yuva444p12le", "yuva444p10le", "argb", "bgra")
               for f in frames), {f.format.name for f in frames}
    return [f.to_ndarray(format="rgba")[..., 3] for f in frames]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _upscaled(alpha: np.ndarray, scale: int = 2) -> np.ndarray:
    return np.asarray(Image.fromarray(alpha).resize((alpha.shape[1] * scale, alpha.shape[0] * scale), Image.LANCZOS))


def _assert_alpha_upscaled(src: Path, out: Path, min_db: float) -> list[float]:
    """The output's alpha, frame by frame, is the source's upscaled x2 (and not another frame's)."""
    theirs, ours = _alphas(src), _alphas(out)
    assert len(ours) == len(theirs)
    scores = []
    for i, (a, b) in enumerate(zip(theirs, ours)):
        want = _upscaled(a)
        assert b.shape == want.shape
        scores.append(_psnr(b, want))
        assert 0.2 < float(np.mean(b < 128)) < 0.9  # a real cut-out: neither opaque nor empty
        if i:  # the overlay moved: the previous frame's alpha is far off (the check can fail)
            assert _psnr(b, _upscaled(theirs[i - 1])) < min_db - 5
    assert min(scores) >= min_db, scores
    return scores


@pytest.mark.parametrize("name, ext, alpha", [
    ("vp9.webm", ".webm", "vp9 alpha"),       # VP9 yuva420p, BlockAdditional alpha
    ("vp8.webm", ".webm", "vp9 alpha"),       # read with libvpx, written as VP9 with alpha
    ("prores4444.mov", ".mkv", "yuva444p12le"),  # FFV1 keeps its 12 bits (ProRes 4444 decodes 12-bit)
    ("qtrle.mov", ".mov", "yuva444p12le"),    # ProRes 4444 (decodes 12-bit) from argb
    ("qtrle.mov", ".webm", "vp9 alpha"),      # non-millisecond times through Matroska segments
    ("ffv1.mkv", ".mkv", "yuva444p10le"),
])
def test_alpha_is_upscaled_and_kept(tmp_path, name, ext, alpha):
    src = SOURCES[name](tmp_path / name)
    out = tmp_path / f"out{ext}"
    assert main(["upscale", str(src), str(out), *LANCZOS]) == 0
    o = probe(out).video
    assert o.alpha == alpha and (o.width, o.height) == (2 * W, 2 * H)
    if ext == ".webm":
        assert o.metadata.get("alpha_mode") == "1"  # Matroska's AlphaMode: browsers need it
    _assert_alpha_upscaled(src, out, 40.0)  # vsr's Lanczos against Pillow's: about 51-55 dB
    check_video(src, out, 2)  # the independent checker (RGB only)


def test_prores_4444_to_mov_keeps_alpha_when_10_bits_are_accepted(tmp_path, capsys):
    """ProRes 4444 decodes as 12-bit and prores_ks encodes 10-bit samples: the default refuses to
    lower the depth (naming FFV1 and --pix-fmt); asked for yuva444p10le, the .mov keeps the alpha."""
    src = SOURCES["prores4444.mov"](tmp_path / "p.mov")
    out = tmp_path / "out.mov"
    assert main(["upscale", str(src), str(out), *LANCZOS]) == 2
    assert "use ffv1 in .mkv, or --pix-fmt yuva444p10le" in capsys.readouterr().err
    assert main(["upscale", str(src), str(out), *LANCZOS, "--pix-fmt", "yuva444p10le"]) == 0
    assert probe(out).video.alpha == "yuva444p12le" and probe(out).video.codec == "prores"
    _assert_alpha_upscaled(src, out, 40.0)


def test_output_that_cannot_carry_alpha_is_refused_while_planning(tmp_path, capsys):
    src = SOURCES["vp9.webm"](tmp_path / "vp9.webm")
    out = tmp_path / "out.mp4"
    assert main(["upscale", str(src), str(out), *LANCZOS, "--json"]) == 2
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["job_failed"]  # no job_start: nothing was upscaled
    assert ("libx264 in .mp4 cannot carry the alpha channel of the source (VP9 alpha); use .webm (VP9 "
            "with alpha), .mov (ProRes 4444) or .mkv (FFV1), or --drop-alpha") in events[0]["error"]
    assert not out.exists()
    # --drop-alpha: an .mp4 without it, as asked
    assert main(["upscale", str(src), str(out), *LANCZOS, "--drop-alpha"]) == 0
    assert probe(out).video.alpha == "none"


def test_alpha_through_a_real_network(tmp_path):
    """realesr-animevideov3-x2 (colour fix on, the default) on a small overlay: the alpha goes
    through the generator as a gray picture and comes out where the source's is, unshifted."""
    src = SOURCES["vp9.webm"](tmp_path / "vp9.webm")
    out = tmp_path / "out.webm"
    assert main(["upscale", str(src), str(out), "-m", "realesr-animevideov3-x2", "--device", "cpu"]) == 0
    scores = _assert_alpha_upscaled(src, out, 20.0)  # about 25 dB against Pillow's Lanczos
    theirs, ours = _alphas(src), _alphas(out)
    assert max(abs(float(b.mean()) - float(_upscaled(a).mean())) for a, b in zip(theirs, ours)) < 3.0
    assert min(scores) < 60  # a generator's output, not a resampled copy


def test_verify_fails_an_output_that_lost_or_changed_the_alpha(tmp_path):
    """Verify decodes both alphas (libvpx for WebM): an output without one fails unless it was
    dropped on request, and one whose alpha is not the source's fails though its colour matches."""
    src = SOURCES["vp9.webm"](tmp_path / "vp9.webm")
    other = _write(tmp_path / "inverted.webm", "libvpx-vp9", "yuva420p", options={"crf": "20", "b": "0"},
                   invert_alpha=True)  # the same colour, the opposite alpha
    good, wrong, dropped = tmp_path / "good.webm", tmp_path / "wrong.webm", tmp_path / "dropped.webm"
    report = transcode_with(src, good, nearest_upscale(2), 2)
    assert report.ok and report.facts["worst_alpha_psnr_db"] >= 30, report.problems
    assert transcode_with(other, wrong, nearest_upscale(2), 2).ok
    problems = verify(src, wrong, 2).problems
    assert len(problems) == 1 and problems[0].startswith("alpha channel differs from the source's"), problems
    assert transcode_with(src, dropped, nearest_upscale(2), 2, options=EncodeOptions(drop_alpha=True)).ok
    assert verify(src, dropped, 2).problems == ["alpha channel dropped (vp9 alpha -> yuv420p)"]
