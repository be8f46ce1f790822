"""Steady where the source is still (--temporal stable, vsr/engine/stable.py): on real frames with
real weights, grain in a still picture keeps the previous output, while what moved or cut is
computed as per frame; the mode is part of the settings fingerprint."""

from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from conftest import MEDIA
from vsr.engine import Upscaler
from vsr.engine.reuse import ReusedTiles, ReuseGeometry
from vsr.engine.stable import BLOCK, EASE_LEVELS, StableTiles, luma, noise_sigma
from vsr.errors import UsageError
from vsr.job.options import JobOptions
from vsr.job.describe import describe_plan
from vsr.job.plan import plan_job

torch.set_num_threads(2)
MODEL = "realesr-animevideov3-x2"
LEADER = MEDIA / "leader_320x240_h264_aac.mp4"
GRAIN = 3.0  # standard deviation (levels) of the grain added to every frame


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """Four grainy 128x192 frames from the leader clip, each with its own draw of grain: 0 and 1
    the same still picture; 2 that picture with a 32x48 patch of another shot pasted in (an
    object moving in); 3 that other shot in negative (a scene cut: a new picture everywhere)."""
    with av.open(str(LEADER)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(22), c.decode(video=0))]
    still, other = frames[21][64:192, 64:256], frames[10][64:192, 64:256]
    moved = still.copy()
    moved[32:64, 64:112] = other[32:64, 64:112]
    rng = np.random.default_rng(7)
    grainy = [np.clip(f + rng.normal(0, GRAIN, f.shape), 0, 255).astype(np.uint8)
              for f in (still, still, moved, 255 - other)]
    return np.stack(grainy)


def _run(tiles: ReusedTiles, frames: np.ndarray) -> np.ndarray:
    """Through `tiles` in chunks of 2 (what is kept crosses chunks), as int16."""
    return np.concatenate([tiles(frames[i:i + 2]) for i in range(0, len(frames), 2)]).astype(np.int16)


def test_grain_keeps_the_output_and_motion_is_recomputed(clip):
    up = Upscaler(MODEL, device="cpu", precision="fp32", colour_fix=True)
    size = lambda f: up.output_size(f.shape[2], f.shape[1])  # noqa: E731
    exact = _run(ReusedTiles(up.upscale, up.reuse_geometry(), size), clip)
    stable_tiles = StableTiles(up.upscale, up.reuse_geometry(), size)
    stable = _run(stable_tiles, clip)
    assert abs(stable_tiles.sigma - GRAIN) < 1.0  # the grain is what the noise estimate sees
    # the still picture under new grain: exact recomputes every pixel (none is bit-identical),
    # stable keeps the output, so that the network's drawing of the grain does not boil
    exact_change = np.abs(exact[1] - exact[0]).mean()
    assert exact_change > 0.5
    assert np.abs(stable[1] - stable[0]).mean() < exact_change / 20
    assert np.array_equal(stable[0], exact[0])  # the first frame is computed whole
    # where the patch that moved in changed the source well beyond the grain, the output is the
    # per-frame output (the window's tiny float order aside) ...
    s = 2
    change = np.abs(luma(clip[2]) - luma(clip[1])).reshape(16, BLOCK, 24, BLOCK).mean(axis=(1, 3))
    moved = np.repeat(np.repeat(change > 10, BLOCK * s, axis=0), BLOCK * s, axis=1)
    assert 4 <= moved.sum() / (BLOCK * s) ** 2 <= 24  # blocks, all within the patch
    diff = np.abs(stable[2] - exact[2])[moved]
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
    # ... while the still part far from it keeps the output of frame 0
    far = (slice(96 * s, 128 * s), slice(0, 48 * s))
    assert np.array_equal(stable[2][far], stable[0][far])
    assert not np.array_equal(exact[2][far], exact[0][far])
    # a scene cut: every block changed beyond the noise, the frame is the per-frame output
    diff = np.abs(stable[3] - exact[3])
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
    assert stable_tiles.computed == 3 and stable_tiles.tiles_reused > 0


def test_slow_drift_is_refreshed_against_the_source_it_came_from():
    """A picture brightening by a fraction of the threshold each frame: never beyond the noise
    from one frame to the next, but the output follows once it is, from the frame it came from."""
    rng = np.random.default_rng(3)
    base = rng.normal(100, 1.0, (64, 64, 3))
    frames = np.stack([np.clip(base + 0.4 * t, 0, 255).astype(np.uint8) for t in range(12)])

    def nearest(f: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return f.repeat(2, axis=1).repeat(2, axis=2)

    tiles = StableTiles(nearest, ReuseGeometry(scale=2, reach=4), lambda f: (128, 128))
    out = np.concatenate([tiles(frames[i:i + 3]) for i in range(0, 12, 3)]).astype(np.int16)
    assert tiles.reused > 0 and tiles.computed > 1  # kept a while, then refreshed
    lag = np.abs(out.mean(axis=(1, 2, 3)) - frames.astype(np.int16).mean(axis=(1, 2, 3)))
    assert lag.max() < 3.0  # never further from its source than about the threshold
    assert luma(frames[0]).shape == (64, 64) and noise_sigma(luma(frames[0])) > 0.5


def test_stable_counts_in_the_fingerprint(tmp_path):
    plans = {m: plan_job(LEADER, tmp_path / "o.mp4", JobOptions(model=MODEL, scan=False, temporal=m))
             for m in ("exact", "off", "stable")}
    assert plans["stable"].model.temporal == "stable"
    assert "(--temporal stable)" in describe_plan(plans["stable"])  # the dry run says so
    assert "(--temporal off)" in describe_plan(plans["off"]) and "--temporal" not in describe_plan(plans["exact"])
    # not the per-frame pictures: an output made with exact or off is redone, and back
    assert plans["exact"].settings_fingerprint() == plans["off"].settings_fingerprint()
    assert plans["stable"].settings_fingerprint() != plans["exact"].settings_fingerprint()
    assert plans["stable"].resume_fingerprint() != plans["exact"].resume_fingerprint()
    with pytest.raises(UsageError, match="temporal 'steady': use one of exact, off, stable"):
        JobOptions(temporal="steady").validate()
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", str(LEADER), str(tmp_path / "x.mp4"),
                        "--temporal", "steady"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'steady'" in r.stderr and "Traceback" not in r.stderr


def test_a_slowly_moving_edge_is_eased_in_and_catches_up():
    """A sharp edge creeping 0.05 pixel a frame, under fixed noise: each frame's change is within
    the noise, the change since the kept output is not; the output follows by at most
    EASE_LEVELS a frame, and once the edge stops it is exactly the computed output (no smear)."""
    rng = np.random.default_rng(5)
    grain = rng.normal(0, 1.0, (64, 64, 1))
    x = np.arange(64)[None, :, None]

    def frame(pos: float) -> np.ndarray:
        return np.clip(60 + 100 * np.clip(x - pos, 0, 1) + grain, 0, 255).astype(np.uint8).repeat(3, axis=2)

    positions = [30 + 0.05 * min(t, 40) for t in range(48)]  # moves for 40 frames, then stands
    frames = np.stack([frame(p) for p in positions])

    def nearest(f: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return f.repeat(2, axis=1).repeat(2, axis=2)

    tiles = StableTiles(nearest, ReuseGeometry(scale=2, reach=4), lambda f: (128, 128))
    out = _run(tiles, frames)
    steps = np.abs(np.diff(out, axis=0)).max(axis=(1, 2, 3))
    assert steps.max() <= EASE_LEVELS and tiles.reused > 0
    assert (np.abs(out - nearest(frames, (128, 128))).max(axis=(1, 2, 3)) > EASE_LEVELS).any()  # it did lag
    assert np.array_equal(out[-1], nearest(frames[-1:], (128, 128))[0])  # and caught up
