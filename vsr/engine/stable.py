"""Steady where the source is still (``--temporal stable``): a tile whose source changed only by
noise keeps its previous output.

A per-frame GAN draws new texture (grain, hair, foliage) from every new draw of the source's
noise, so still parts of a picture shimmer. `--temporal exact` (vsr.engine.reuse) reuses only
tiles whose source is bit-identical, which a grainy or compressed source seldom has. Here a
BLOCK x BLOCK block of the output is recomputed only where its source, or the source around it,
changed beyond the noise of the source:

- noise: sigma of the source's luma, Immerkaer's estimator ("Fast noise variance estimation",
  1996; as vsr.quality.temporal), the median over the last SIGMA_FRAMES frames of the segment;
- a BLOCK x BLOCK block changed when its mean |Y difference| exceeds NOISE_MARGIN times the
  mean |difference| of two draws of that noise (2 sigma / sqrt(pi)) plus QUANT_LEVELS. Over 64
  pixels that mean has a standard deviation of about a tenth of its value, so pure noise stays
  below the threshold, while an edge of 16 levels moving by one pixel across a block crosses it;
- the comparison is with the source each tile's output was computed from (its anchor), not the
  previous frame: a slow drift (a fade, a slow pan) adds up until it crosses the threshold and
  the tile is recomputed, so a reused output never lags its source by more than the noise;
- a block changed since its output was computed but not since the previous frame (a slow
  drift) moves its output towards the new one by at most EASE_LEVELS a frame, and is computed
  again each frame until it has caught up (only then does its anchor move): where per-frame
  output creeps, the kept output does not jump (sparkle), nor lag behind for good (smear);
- a changed block is widened by STABLE_REACH (its neighbours' output depends on it most); the
  TILEs holding such blocks run (in windows widened by the model's full reach, or the frame
  whole when they cover most of it: a scene cut, motion everywhere), and only the changed
  blocks of their output are taken; every other block keeps its previous output.

The output is not per-frame processing's: reused tiles show the GAN's drawing of an earlier,
equal-within-noise source. So the mode is part of the settings fingerprint (vsr.job.plan).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from vsr.engine.reuse import (TILE, WHOLE_SHARE, Box, OutSize, ReusedTiles, ReuseGeometry, Upscale, area,
                              boxes_of, window)

BLOCK = 8  # source pixels per side of a block whose change is measured (TILE is a multiple)
NOISE_MARGIN = 1.5  # a block is still within this many times the expected |change| of noise ...
QUANT_LEVELS = 0.5  # ... plus this many Y levels for 8-bit rounding (as vsr.quality.temporal)
EASE_LEVELS = 4  # a block refreshed on slow drift moves its output by at most this a frame
SIGMA_FRAMES = 16  # the noise is the median estimate of this many recent frames
# Source pixels around a changed block whose output is recomputed too: the output's effective
# reach. A network's nominal reach (tile_context, 10 to 40 pixels) bounds where its output can
# depend on a pixel; nearly all of that dependence lies within a few pixels, and the windows that
# run are widened by the full reach, so what is computed is exact; only which blocks take it is
# decided with this smaller reach.
STABLE_REACH = 8
_LUMA = np.array([65.481, 128.553, 24.966], np.float32) / 255.0


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) RGB, uint8 or uint16 -> (H,W) float32 Y in 8-bit levels (BT.601, without offset)."""
    y = rgb.astype(np.float32) @ _LUMA
    return y * np.float32(1 / 257) if rgb.dtype == np.uint16 else y


def noise_sigma(y: np.ndarray) -> float:
    """Standard deviation of the picture's noise (Immerkaer 1996: the mean |Laplacian difference|
    over the picture, scaled). Texture raises it a little."""
    h, w = y.shape
    if h < 3 or w < 3:
        return 0.0
    r = (y[:-2, :-2] + y[:-2, 2:] + y[2:, :-2] + y[2:, 2:]
         - 2 * (y[:-2, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] + y[2:, 1:-1]) + 4 * y[1:-1, 1:-1])
    return float(math.sqrt(math.pi / 2) * np.abs(r).mean(dtype=np.float64) / 6.0)


def still_threshold(sigma: float) -> float:
    """The largest block mean |Y change| (levels) that counts as noise of standard deviation sigma."""
    return NOISE_MARGIN * 2.0 * sigma / math.sqrt(math.pi) + QUANT_LEVELS


def changed_blocks(y: np.ndarray, anchor: np.ndarray, threshold: float) -> np.ndarray:
    """(rows, cols) of BLOCK x BLOCK blocks, the frame padded to whole TILEs: True where the
    block's mean |y - anchor| exceeds the threshold (a block cut by the frame's edge is measured
    on its pixels only)."""
    h, w = y.shape
    ty, tx = -(-h // TILE), -(-w // TILE)
    d = np.zeros((ty * TILE, tx * TILE), np.float32)
    d[:h, :w] = np.abs(y - anchor)
    n = np.zeros_like(d)
    n[:h, :w] = 1.0
    k = TILE // BLOCK
    sums = d.reshape(ty * k, BLOCK, tx * k, BLOCK).sum(axis=(1, 3))
    counts = n.reshape(ty * k, BLOCK, tx * k, BLOCK).sum(axis=(1, 3))
    return sums > threshold * np.maximum(counts, 1.0)


def grown(cells: np.ndarray, k: int) -> np.ndarray:
    """A (rows, cols) mask widened by k cells each way (a square)."""
    out = cells.copy()
    for d in range(1, k + 1):
        out[d:] |= cells[:-d]
        out[:-d] |= cells[d:]
    rows = out.copy()
    for d in range(1, k + 1):
        out[:, d:] |= rows[:, :-d]
        out[:, :-d] |= rows[:, d:]
    return out


class StableTiles(ReusedTiles):
    """ReusedTiles that also reuse a block whose source changed only within the noise (see the
    module doc). Counters as ReusedTiles' (a tile reused: none of its blocks recomputed); `sigma`
    is the last noise estimate (Y levels)."""

    def __init__(self, upscale: Upscale, geometry: ReuseGeometry | None, out_size: OutSize):
        super().__init__(upscale, geometry, out_size)
        self._anchor: np.ndarray | None = None  # per pixel: the source Y its output was computed from
        self._prev_y: np.ndarray | None = None  # the source Y of the frame before
        self._easing: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame -> (drift blocks, its Y)
        self._sigmas: deque[float] = deque(maxlen=SIGMA_FRAMES)
        self.sigma = 0.0

    def _changed(self, frames: np.ndarray, i: int, geometry: ReuseGeometry | None) -> list[Box] | None:
        """The boxes of frame i to run, or None when every block keeps its output; the blocks
        taken from what runs in self._fresh[i]. Updates the anchors and counts the frame."""
        if geometry is None:
            self._anchor = None
            return super()._changed(frames, i, geometry)
        if i == 0:
            self._easing = {}
        y = luma(frames[i])
        h, w = y.shape
        per_frame = -(-h // TILE) * -(-w // TILE)
        self.tiles += per_frame
        self._sigmas.append(noise_sigma(y))
        self.sigma = float(np.median(self._sigmas))
        if self._anchor is None or self._anchor.shape != y.shape or (i == 0 and self._last_out is None):
            self._anchor = self._prev_y = y
            self.computed += 1
            return [(0, h, 0, w)]
        threshold, reach = still_threshold(self.sigma), -(-STABLE_REACH // BLOCK)
        blocks = grown(changed_blocks(y, self._anchor, threshold), reach)
        # changed since its output was computed, but not since the last frame: a slow drift, whose
        # new output is eased in by at most EASE_LEVELS a frame (no jump where per frame crept)
        drift = blocks & ~grown(changed_blocks(y, self._prev_y, threshold), reach)
        self._prev_y = y
        k = TILE // BLOCK
        tiles = blocks.reshape(blocks.shape[0] // k, k, blocks.shape[1] // k, k).any(axis=(1, 3))
        if not tiles.any():
            self._prev_y = y
            self.reused += 1
            self.tiles_reused += per_frame
            return None
        self.computed += 1
        self.tiles_reused += per_frame - int(tiles.sum())
        self._fresh[i] = (blocks, BLOCK, drift, EASE_LEVELS)
        self._easing[i] = (drift, y)  # their anchor moves once their output has caught up
        mask = np.repeat(np.repeat(blocks & ~drift, BLOCK, axis=0), BLOCK, axis=1)[:h, :w]
        self._anchor = np.where(mask, y, self._anchor)
        boxes = boxes_of(tiles, h, w)
        if sum(area(window(b, geometry, h, w)) for b in boxes) > WHOLE_SHARE * h * w:
            return [(0, h, 0, w)]
        return boxes

    def _taken(self, i: int, computed: np.ndarray, taken: np.ndarray) -> None:
        """A drifted block whose output reached what was computed (no step was clipped) takes
        frame i's source as its anchor; one still on its way is computed again next frame."""
        drift, y = self._easing.pop(i, (None, None))
        if drift is None or not drift.any() or self._anchor is None or self._anchor.shape != y.shape:
            return
        c = BLOCK * (taken.shape[0] // y.shape[0])
        gap = np.zeros((drift.shape[0] * c, drift.shape[1] * c), bool)
        gap[:taken.shape[0], :taken.shape[1]] = (computed != taken).any(axis=-1)
        settled = drift & ~gap.reshape(drift.shape[0], c, drift.shape[1], c).any(axis=(1, 3))
        h, w = y.shape
        mask = np.repeat(np.repeat(settled, BLOCK, axis=0), BLOCK, axis=1)[:h, :w]
        self._anchor = np.where(mask, y, self._anchor)
