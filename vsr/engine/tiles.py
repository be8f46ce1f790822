"""Tiling a forward pass: padding to the network's size multiple, tile plans, running tiles.

Two kinds of plan, both from the model's descriptor (vsr.models.descriptor), never from its
architecture's name:

- explicit tiles (``--tile N``, or the tile an out-of-memory error left): N x N tiles on the
  network's size grid, overlapping by the descriptor's tile_context (or the caller's tile_pad);
- cache tiles on the CPU: frames whose activations would overflow the last-level cache run in
  tiles that fit it, for networks whose tiles compute exactly what whole frames do
  (descriptor.exact_tiles, overlapping by tile_context: the exact reach).

Tiles start on the network's grid (descriptor.tile_multiple and pad_multiple). A network whose
output depends on statistics of the whole frame (descriptor.frame_stats: squeeze-and-excitation
means) runs its tiles with the whole frame's statistics, gathered tile by tile first
(``with_frame_stats``), so that tiled output is the whole frame's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from vsr.models.descriptor import ModelDescriptor

MIN_TILE = 16
# CPU: a frame whose 64-channel activations would exceed the last-level cache runs in tiles that
# fit it (networks whose exact reach is known: see plan_cache_tiles). Measured on a 2-core Zen 4
# with 32 MB of L3, realesr-animevideov3-x4 on 1280x720 frames, in 320x180-equivalent frames/s:
# fp32 whole 1.95 -> 3x3 tiles of 240x427 3.30; bf16 (two frames at once) 3.89 -> 2x2 tiles of
# 360x640 4.65; output identical to whole frames in bf16 (fp32 within one level: NNPACK takes
# the tiles).
CPU_CACHE_BYTES = 32 * 2**20

Tile = tuple[int, int, int, int]
"""(y0, y1, x0, x1) of a tile in input pixels, before its overlap."""


class TilePlan(NamedTuple):
    """Tiles covering a frame and the overlap (input pixels per side) each is run with."""

    tiles: list[Tile]
    pad: int


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """x (N,C,H,W) padded at the bottom and right to multiples of `multiple` (reflected, or
    replicated where the frame is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return x


def grid_tiles(h: int, w: int, tile_h: int, tile_w: int) -> list[Tile]:
    """Tiles of at most tile_h x tile_w covering an h x w frame, row by row."""
    return [(ty * tile_h, min(h, (ty + 1) * tile_h), tx * tile_w, min(w, (tx + 1) * tile_w))
            for ty in range(math.ceil(h / tile_h)) for tx in range(math.ceil(w / tile_w))]


def split_length(length: int, n: int, pad: int, multiple: int = 1) -> tuple[int, int]:
    """(largest padded piece, total padded length) of `length` cut into n even pieces (each a
    multiple of `multiple`, but for the last), each widened by `pad` on every side that has a
    neighbour."""
    piece = _round_up(math.ceil(length / n), multiple)
    largest = min(length, piece + pad * min(2, n - 1))
    return largest, length + 2 * pad * (n - 1)


def largest_padded(tiles: list[Tile], pad: int, h: int, w: int) -> int:
    """Pixels of the largest of these tiles once widened by `pad` (within the h x w frame)."""
    return max((min(h, y1 + pad) - max(0, y0 - pad)) * (min(w, x1 + pad) - max(0, x0 - pad))
               for y0, y1, x0, x1 in tiles)


def tile_grid(descriptor: ModelDescriptor) -> int:
    """The grid (input pixels) that tiles and their overlap keep to."""
    return math.lcm(descriptor.pad_multiple, descriptor.tile_multiple)


def frame_stats_by_tiles(net: Any, x: torch.Tensor, plan: TilePlan) -> list[torch.Tensor]:
    """The whole frame's statistics (descriptor.frame_stats), gathered over the plan's tiles
    with no pass over the whole frame: one pass over the tiles per statistic, each tile adding
    its share (``net.tile_stats(piece, known, rows, cols)`` -> (sum, count)) of the next one."""
    h, w = x.shape[-2:]
    tiles, pad = plan
    stats: list[torch.Tensor] = []
    for _ in range(net.frame_stats_count):
        total, count = None, 0
        for y0, y1, x0, x1 in tiles:
            py0, px0 = max(0, y0 - pad), max(0, x0 - pad)
            piece = x[..., py0:min(h, y1 + pad), px0:min(w, x1 + pad)]
            part, n = net.tile_stats(piece, stats, (py0, y0, y1, h), (px0, x0, x1, w))
            total, count = part if total is None else total + part, count + n
        stats.append(total / count)
    return stats


def with_frame_stats(net: Any, x: torch.Tensor, plan: TilePlan) -> Callable[[torch.Tensor], torch.Tensor]:
    """net, for the plan's tiles of x, with the statistics of the whole of x bound
    (frame_stats_by_tiles; ``net(tile, stats)``)."""
    stats = frame_stats_by_tiles(net, x, plan)
    return lambda tile: net(tile, stats)


def explicit_plan(h: int, w: int, tile: int, tile_pad: int, multiple: int) -> TilePlan:
    """tile x tile tiles of an h x w input (already padded to `multiple`) with tile_pad overlap.

    Tile and overlap are rounded to multiples of the network's size multiple, so that every
    tile's size is one too (pixel-unshuffle networks need it)."""
    tile = max(multiple, tile - tile % multiple)
    return TilePlan(grid_tiles(h, w, tile, tile), _round_up(tile_pad, multiple))


def plan_cache_tiles(h: int, w: int, bytes_per_value: int, descriptor: ModelDescriptor) -> TilePlan | None:
    """Tiles that keep each forward pass over an h x w input within CPU_CACHE_BYTES of
    activations, or None (whole frames: small enough, or tiles would not be exact).

    bytes_per_value: frames per pass times the sample size. Only networks with exact tiles
    qualify, overlapping by their exact reach (tile_context). Of the splits whose largest
    tile (with its overlap) fits, the one with the least computation in all (frame plus
    overlaps) is taken; tiles along an axis are as long as each other, but for a shorter
    last one. Tiles and overlap keep to the network's size multiple (the input is padded to
    it already)."""
    if not descriptor.exact_tiles:
        return None
    budget = CPU_CACHE_BYTES // (descriptor.feature_channels * bytes_per_value)  # padded tile pixels
    if h * w <= budget:
        return None
    m = tile_grid(descriptor)
    pad = _round_up(descriptor.tile_context, m)
    best = None
    reach = max(1, pad)  # no split finer than the overlap
    for ny in range(1, max(1, h // reach) + 1):
        th, sh = split_length(h, ny, pad, m)
        if th * min(w, 4 * reach) > budget:
            continue  # too tall even for the narrowest tiles
        for nx in range(1, max(1, w // reach) + 1):
            tw, sw = split_length(w, nx, pad, m)
            if th * tw <= budget:
                if best is None or sh * sw < best[0]:
                    best = (sh * sw, ny, nx)
                break  # more columns only add overlap
    if best is None or best[1] * best[2] == 1:
        return None
    _, ny, nx = best
    return TilePlan(grid_tiles(h, w, _round_up(math.ceil(h / ny), m), _round_up(math.ceil(w / nx), m)), pad)


class CacheTiles:
    """plan_cache_tiles for one model, worked out once per (frame size, sample size, budget)."""

    def __init__(self, descriptor: ModelDescriptor) -> None:
        self.descriptor = descriptor
        self._plans: dict[tuple[int, int, int, int], TilePlan | None] = {}

    def plan(self, h: int, w: int, bytes_per_value: int) -> TilePlan | None:
        key = (h, w, bytes_per_value, CPU_CACHE_BYTES)
        if key not in self._plans:
            self._plans[key] = plan_cache_tiles(h, w, bytes_per_value, self.descriptor)
        return self._plans[key]


def largest_pass(h: int, w: int, tile: int, tile_pad: int, cache_plan: TilePlan | None) -> int:
    """Input pixels of the largest forward pass over an h x w frame: in explicit tiles of
    `tile` (when set), in the cache plan's tiles, or whole."""
    if tile:
        side = tile + 2 * tile_pad
        return min(h, side) * min(w, side)
    if cache_plan is None:
        return h * w
    return largest_padded(*cache_plan, h, w)


def tile_in_use(tile: int, cache_plan: TilePlan | None, h: int, w: int) -> int:
    """The tile side a pass over an h x w input runs with: the explicit tile, else the longest
    side of the cache plan's tiles, else of the whole input (what an out-of-memory error halves)."""
    if tile:
        return tile
    sides = [max(y1 - y0, x1 - x0) for y0, y1, x0, x1 in cache_plan.tiles] if cache_plan else (h, w)
    return max(sides)


def run_tiles(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, plan: TilePlan, scale: int,
              mapper: Callable[[Callable, Iterable], Iterable] = map) -> torch.Tensor:
    """net's output for x (N,C,H,W), computed tile by tile with the plan's overlap and stitched.

    mapper runs the tiles (map: one after another; a FramePool's map: side by side)."""
    h, w = x.shape[-2:]
    tiles, pad = plan
    s = scale

    def run_tile(t: Tile) -> torch.Tensor:
        y0, y1, x0, x1 = t
        py0, py1 = max(0, y0 - pad), min(h, y1 + pad)
        px0, px1 = max(0, x0 - pad), min(w, x1 + pad)
        with torch.inference_mode():  # thread-local: also in a frame thread
            piece = net(x[..., py0:py1, px0:px1])
        return piece[..., (y0 - py0) * s:(y1 - py0) * s, (x0 - px0) * s:(x1 - px0) * s]

    out = None
    for (y0, y1, x0, x1), piece in zip(tiles, mapper(run_tile, tiles)):
        if out is None:
            out = piece.new_empty((x.shape[0], piece.shape[1], h * s, w * s))
        out[..., y0 * s:y1 * s, x0 * s:x1 * s] = piece
    return out


def _round_up(value: int, multiple: int) -> int:
    return value + (-value) % multiple
