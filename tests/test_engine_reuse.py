"""Unchanged parts of frames reused (--temporal exact, vsr/engine/reuse.py): the output is what
per-frame processing gives, at each precision, on real frames with real weights."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from conftest import MEDIA
from vsr.engine import Upscaler
from vsr.engine.reuse import TILE, ReusedTiles, reuse_geometry
from vsr.job.options import JobOptions
from vsr.job.plan import JobPlan, plan_job
from vsr.job.segment import run_segment
from vsr.errors import UsageError
from vsr.models.descriptor import ModelDescriptor

torch.set_num_threads(2)
MODEL = "realesr-animevideov3-x2"
LEADER = MEDIA / "leader_320x240_h264_aac.mp4"


@pytest.fixture(scope="module")
def leader() -> np.ndarray:
    """Frames 21-23 of the leader clip: 22 and 23 change in a small part (a 20x20 px spot near a
    corner), so that only a window around it runs (a part of a smaller frame would run whole:
    its window, the change widened twice by the reach, would cover much of it)."""
    with av.open(str(LEADER)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(24), c.decode(video=0))]
    return np.stack(frames[21:24])


@pytest.fixture(scope="module")
def spot(leader) -> np.ndarray:
    """Three 128x192 frames of the leader clip for bf16 (emulated on CPUs without it in hardware:
    several times slower): the second takes a 12x12 spot of a later frame in its corner, the
    third the spot's right half back as it was."""
    a = leader[0, 96:224, 128:320]
    b = a.copy()
    b[:12, :12] = leader[2, :12, :12] // 2 + 60
    c = b.copy()
    c[:12, 6:12] = a[:12, 6:12]
    return np.stack([a, b, c])


def _both(up: Upscaler, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, ReusedTiles]:
    """Every frame whole, and through ReusedTiles, in chunks of 2 (reuse crosses chunks)."""
    size = lambda f: up.output_size(f.shape[2], f.shape[1])  # noqa: E731
    chunks = [frames[i:i + 2] for i in range(0, len(frames), 2)]
    whole = np.concatenate([up.upscale(c) for c in chunks])
    tiles = ReusedTiles(up.upscale, up.reuse_geometry(), size)
    reused = np.concatenate([tiles(c) for c in chunks])
    return whole, reused, tiles


@pytest.mark.parametrize("precision, clip", [("fp32", "leader"), ("bf16", "spot")])
def test_reused_parts_equal_every_frame_computed(request, precision, clip):
    frames = request.getfixturevalue(clip)
    up = Upscaler(MODEL, device="cpu", precision=precision, colour_fix=True)
    whole, reused, tiles = _both(up, frames)
    diff = np.abs(whole.astype(np.int16) - reused.astype(np.int16))
    # a kernel's summation order may follow the window's shape: one level at most, on a tiny
    # share of pixels (measured: docs/benchmarks.md)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (precision, diff.max(), (diff > 0).mean())
    assert (tiles.computed, tiles.reused) == (3, 0)
    per_frame = -(-frames.shape[1] // TILE) * (frames.shape[2] // TILE)
    assert tiles.tiles == 3 * per_frame
    assert tiles.tiles_reused >= per_frame  # most of frames 2 and 3


def test_geometry_decided_from_the_descriptor():
    exact = ModelDescriptor(scale=4, tile_context=18, exact_tiles=True)
    assert reuse_geometry(exact, colour_fix=False, scale=4).reach == 18
    assert reuse_geometry(exact, colour_fix=True, scale=4).reach == 18 + 6  # the colour fix's box
    assert reuse_geometry(exact, colour_fix=False, scale=2).reach == 18 + 4  # the resize after it
    assert reuse_geometry(exact, colour_fix=False, scale=2.5) is None  # grids would not line up
    # an output that depends on the whole frame (global pooling, unknown reach): whole frames only
    assert reuse_geometry(dataclasses.replace(exact, exact_tiles=False), False, 4) is None
    assert reuse_geometry(dataclasses.replace(exact, temporal=True), False, 4) is None
    grid = reuse_geometry(ModelDescriptor(scale=2, tile_context=9, exact_tiles=True, pad_multiple=4), False, 2)
    assert (grid.reach, grid.multiple) == (12, 4)
    assert Upscaler("realesrgan-x4plus-anime", device="cpu").reuse_geometry() is None  # RRDB: no exact tiles
    assert Upscaler("lanczos", outscale=2).reuse_geometry() is None


def test_without_geometry_only_identical_frames_are_reused():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    c = a.copy()
    c[0, 0, 0] ^= 1  # one level in one pixel: computed
    runs: list[int] = []

    def nearest(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        runs.append(len(frames))
        return frames.repeat(2, axis=1).repeat(2, axis=2)

    tiles = ReusedTiles(nearest, None, lambda f: (16, 16))
    out = np.concatenate([tiles(np.stack([a, a, b])), tiles(np.stack([b, c]))])
    assert np.array_equal(out, nearest(np.stack([a, a, b, b, c]), (16, 16)))
    assert (tiles.computed, tiles.reused, runs[:2]) == (3, 2, [2, 1])


def test_plan_carries_the_mode_outside_the_fingerprint(tmp_path):
    exact = plan_job(LEADER, tmp_path / "o.mp4", JobOptions(model=MODEL, scan=False))
    off = plan_job(LEADER, tmp_path / "o.mp4", JobOptions(model=MODEL, scan=False, temporal="off"))
    assert (exact.model.temporal, off.model.temporal) == ("exact", "off")
    # the same pictures: an output made with either is not redone, segments of both mix on resume
    assert exact.settings_fingerprint() == off.settings_fingerprint()
    assert exact.resume_fingerprint() == off.resume_fingerprint()
    assert JobPlan.from_dict(json.loads(json.dumps(off.to_dict()))).model.temporal == "off"
    with pytest.raises(UsageError, match="temporal 'often': use one of exact, off, stable"):
        JobOptions(temporal="often").validate()
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", str(LEADER), str(tmp_path / "x.mp4"),
                        "--temporal", "often"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'often'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_segment_reuses_parts_and_starts_fresh(tmp_path):
    """run_segment (the workers' path) with the upscaler's geometry: tiles reused and counted,
    the pictures those of --temporal off (lossless FFV1), each segment's first frame whole."""
    up = Upscaler(MODEL, device="cpu", precision="fp32", colour_fix=True)
    options = dict(model=MODEL, scan=False, segment_seconds=0.5, encode={"codec": "ffv1"},
                   picture={"crop": "96:64:192:128"})
    decoded, records = {}, {}
    for mode in ("off", "exact"):
        plan = plan_job(LEADER, tmp_path / f"{mode}.mkv", JobOptions(temporal=mode, **options))
        assert plan.out_size == (192, 128)
        path = tmp_path / f"{mode}.nut"
        records[mode] = run_segment(plan, plan.segments[1], path, lambda f, size: up.upscale(f, out_size=size),
                                    reuse=up.reuse_geometry(), frame_digests=False)
        with av.open(str(path)) as c:
            decoded[mode] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert records["off"]["tiles"] == records["off"]["tiles_reused"] == 0
    exact = records["exact"]
    assert exact["frames"] == records["off"]["frames"] > 1 and 0 < exact["tiles_reused"] < exact["tiles"]
    assert exact["identical_reused"] > 0  # whole repeated frames are counted as before
    diff = np.abs(decoded["off"].astype(np.int16) - decoded["exact"].astype(np.int16))
    assert diff.max() <= 2  # one level in RGB, through the YUV round trip
    assert np.array_equal(decoded["off"][0], decoded["exact"][0])  # nothing carried in from segment 0
