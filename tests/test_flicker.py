"""`vsr flicker`: still-region flicker, sparkle, warping error, tOF and PSNR/SSIM on real pictures.

The clips are cut from a real photograph (tests/data/images/00003.png) and written losslessly
(FFV1, RGB) with real PyAV: a camera pan (pure translation), and a still shot with film grain and
one moving patch. The outputs are vsr's own Lanczos upscale of them (the engine's `lanczos`), with
and without extra per-frame noise where the source stands still.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vsr.cli import main
from vsr.flicker import describe, measure_flicker

PHOTO = Path(__file__).parent / "data" / "images" / "00003.png"  # 512x256 RGB
W, H, N = 160, 96, 10  # source clips: 160x96, 10 frames at 25 fps; outputs 2x


def encode(path: Path, frames: list[np.ndarray], first: int = 0) -> Path:
    """Lossless RGB video (FFV1 bgr0 in Matroska), frame i at (first + i) / 25 s."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24").reformat(format="bgr0")
            vf.pts, vf.time_base = first + i, Fraction(1, 25)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def lanczos_x2(frames: list[np.ndarray]) -> list[np.ndarray]:
    from vsr.engine import Upscaler

    return list(Upscaler("lanczos", outscale=2).upscale(np.stack(frames), out_size=(2 * W, 2 * H)))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("flicker")
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    rng = np.random.default_rng(22)
    # a pan: the crop window moves 3 px right per frame, so the picture translates 3 px left
    pan = [photo[100:100 + H, 40 + 3 * i:40 + 3 * i + W] for i in range(N)]
    # a still shot with grain (sigma 1) and one 32x32 patch moving 4 px down-right per frame
    still = []
    for i in range(N):
        f = photo[20:20 + H, 300:300 + W].astype(np.float32) + rng.normal(0, 1.0, (H, W, 3))
        f[8 + 4 * i:40 + 4 * i, 8 + 4 * i:40 + 4 * i] = photo[150:182, 60:92]
        still.append(np.clip(f + 0.5, 0, 255).astype(np.uint8))
    up = lanczos_x2(still)
    noisy = []
    for i, f in enumerate(up):
        n = rng.normal(0, 3.0, f.shape)
        lo, hi = 2 * 8 - 8, 2 * (40 + 4 * (N - 1)) + 8  # the patch's whole path (output pixels): left alone
        n[lo:hi, lo:hi] = 0
        noisy.append(np.clip(f + n + 0.5, 0, 255).astype(np.uint8))
    return {
        "pan": encode(d / "pan.mkv", pan), "pan_x2": encode(d / "pan_x2.mkv", lanczos_x2(pan)),
        "still": encode(d / "still.mkv", still), "still_x2": encode(d / "still_x2.mkv", up),
        "noisy_x2": encode(d / "noisy_x2.mkv", noisy),
        "late_x2": encode(d / "late_x2.mkv", up[3:], first=3),  # starts 3 frames (0.12 s) late
        "dir": d,
    }


def test_vsr_lanczos_output_is_as_steady_as_the_reference(clips):
    """The output is exactly the in-memory reference (vsr's Lanczos): every ratio is 1."""
    r = measure_flicker(clips["still"], clips["still_x2"])
    assert r["frames"] == N and r["pairs"] == N - 1 and r["unmatched_output_frames"] == 0
    s = r["still"]
    assert 0.3 < s["share"] < 0.95  # the grainy background is still, the patch's path is not
    assert s["output_change"] == s["reference_change"] > 0 and s["ratio"] == 1.0
    assert s["output_sparkle"] == s["reference_sparkle"]
    assert r["warping"]["ratio"] == 1.0
    assert r["noise"]["sigma"] > 0.5 and r["noise"]["still_threshold"] > 1.0


def test_noise_added_where_the_source_is_still_raises_the_ratio(clips):
    r = measure_flicker(clips["still"], clips["noisy_x2"])
    s = r["still"]
    assert s["ratio"] > 2.0, s  # RGB grain of sigma 3 (1.7 on Y) on an upscale changing by ~0.6 levels
    assert s["output_sparkle"] > 5 * max(s["reference_sparkle"], 1e-4)
    assert r["warping"]["ratio"] > 1.5
    plotted = [f["output_change"] / f["reference_change"] for f in r["per_frame"][1:]]
    assert len(plotted) == N - 1 and min(plotted) > 1.5  # every frame pair, not only on average


def test_warping_error_of_a_pure_translation_is_near_zero(clips):
    r = measure_flicker(clips["pan"], clips["pan_x2"])
    w = r["warping"]
    assert w["valid_share"] > 0.7 and w["pairs"] == N - 1  # the 6 px entering each frame are occluded
    assert w["output"] < 0.6, w  # levels of Y: bilinear resampling of a sub-pixel flow, no more
    assert r["still"]["share"] < 0.3  # a pan leaves little still
    # warping the other clip's noise-free output gives a larger error where the patch moves
    assert measure_flicker(clips["still"], clips["still_x2"])["warping"]["output"] > w["output"]


def test_frames_are_matched_by_time(clips):
    r = measure_flicker(clips["still"], clips["late_x2"], gt=clips["still_x2"])
    assert r["frames"] == N - 3 and r["per_frame"][0]["time"] == pytest.approx(0.12)
    assert r["still"]["ratio"] == 1.0
    assert r["gt"]["psnr_y"] == 100.0 and r["gt"]["tof"] == 0.0  # the same pictures at the same times


def test_cli_json_report_with_ground_truth(clips, capsys):
    assert main(["flicker", str(clips["still"]), str(clips["noisy_x2"]), "--gt", str(clips["still_x2"]),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) >= {"source", "output", "gt", "reference", "source_size", "output_size", "frames", "pairs",
                      "unmatched_output_frames", "noise", "still", "warping", "gt", "per_frame", "seconds"}
    assert r["source_size"] == [W, H] and r["output_size"] == [2 * W, 2 * H]
    assert set(r["noise"]) == {"sigma", "still_threshold", "block"}
    assert set(r["still"]) == {"share", "output_change", "reference_change", "ratio", "output_sparkle",
                               "reference_sparkle"}
    assert set(r["warping"]) == {"output", "reference", "ratio", "valid_share", "pairs"}
    g = r["gt"]
    assert set(g) == {"psnr_y", "ssim_y", "reference_psnr_y", "tof", "reference_tof", "frames"}
    assert 35 < g["psnr_y"] < 55 and g["reference_psnr_y"] == 100.0 and g["frames"] == N
    assert 0.5 < g["ssim_y"] < 1.0 and g["tof"] > 0.01 and g["reference_tof"] == 0.0
    assert len(r["per_frame"]) == N and r["per_frame"][0].keys() == {"time", "psnr_y", "ssim_y", "reference_psnr_y"}
    assert r["per_frame"][1].keys() >= {"still_share", "output_change", "reference_change", "output_sparkle",
                                        "warp_output", "warp_reference", "tof", "reference_tof"}
    assert "ratio" in describe(r) and "PSNR-Y" in describe(r)


@pytest.mark.parametrize("case, code, message", [
    ("missing", 3, "no such file"),
    ("not media", 3, "not a media file"),
    ("gt size", 2, "must be the same size"),
    ("no common times", 2, "fewer than two"),
    ("frames", 2, "--frames must be at least 2"),
])
def test_bad_input_is_one_line_and_an_exit_code(clips, capsys, case, code, message):
    d = clips["dir"]
    args = {
        "missing": [str(d / "nothing.mkv"), str(clips["still_x2"])],
        "not media": [str(PHOTO.with_name("SOURCES.md")), str(clips["still_x2"])],
        "gt size": [str(clips["still"]), str(clips["still_x2"]), "--gt", str(clips["still"])],
        "no common times": [str(clips["still"]), str(clips["still_x2"]), "--offset", "60"],
        "frames": [str(clips["still"]), str(clips["still_x2"]), "--frames", "1"],
    }[case]
    assert main(["flicker", *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
