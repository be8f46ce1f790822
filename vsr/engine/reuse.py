"""Static tiles computed once (``--temporal exact``): what did not change keeps its output.

Anime, title cards, screen recordings and static shots hold large areas whose decoded pixels are
bit-identical from one frame to the next (a P-frame's skipped blocks decode to the same pixels).
A network whose reach is known exactly (ModelDescriptor.exact_tiles: tiles overlapping by
tile_context compute what the whole frame does) gives the same output wherever its input
within that reach is the same, so only the part of a frame around its changed pixels is run:

- the changed pixels' bounding box B (frame t against frame t-1, compared in numpy);
- the output that can differ is B widened by the reach (A); everything outside A is the
  previous output, copied;
- A is computed by running the network on A widened by the reach once more (its window), and
  only A is taken from that output.

The output is what per-frame processing gives, up to the floating-point order of the kernels,
which for some depends on the shape they run on (measured in docs/benchmarks.md: NNPACK fp32
and oneDNN bf16 give at most one level on a tiny share of pixels). A frame whose window would
cover most of the picture is run whole, exactly as without reuse, so content where everything
moves costs only the comparison. Models whose output depends on the whole frame (no
exact_tiles: global pooling, unknown reach) reuse only whole repeated frames.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from vsr.engine.colour import COLOUR_FIX_RADIUS

if TYPE_CHECKING:  # vsr.models imports torch, which the job's driver (vsr.job.segment) does without
    from vsr.models.descriptor import ModelDescriptor

Upscale = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
"""frames (N,H,W,3), output (width, height) -> upscaled frames of that size."""
OutSize = Callable[[np.ndarray], tuple[int, int]]
"""frames (N,H,W,3) of one size -> the output (width, height) they are upscaled to."""

# A frame whose windows cover more than this share of it runs whole: a lone window runs by
# itself (on one core, with fp32 NNPACK) where whole frames run two at once, and windows carry
# their margins. Measured on 2 AMD EPYC cores, realesr-animevideov3-x2 fp32, the first second of
# bbb_320x180_vp9_opus.webm (12 % of tiles unchanged): at 0.7 `exact` ran at 0.74x of `off`.
WHOLE_SHARE = 0.4
# Windows are rounded up to this many input pixels (within the frame) so that the windows of a
# chunk fall into few shapes, each shape one batched call (frames side by side on the cores).
WINDOW_STEP = 32
# Input pixels per side that a resize after the network reaches: 3 lobes of its kernel, in output
# pixels of at least one input pixel each, plus one for the half-pixel offset of its grid.
RESIZE_REACH = 4
# The grid (input pixels) on which changes are tracked and reused tiles counted.
TILE = 32
# Boxes are merged when one window around both costs no more than two, each counted with this
# margin (input pixels per side; about a network's reach).
MERGE_MARGIN = 24


@dataclass(frozen=True)
class ReuseGeometry:
    """What tile reuse needs to know of the upscaler: its output scale (a whole number), the reach
    (input pixels per side that an output pixel depends on: the network's, and the resize's and
    colour fix's after it) and the network's size grid."""

    scale: int
    reach: int
    multiple: int = 1


def reuse_geometry(descriptor: ModelDescriptor, colour_fix: bool, scale: float) -> ReuseGeometry | None:
    """The geometry for reusing parts of this model's output at output `scale`, or None where only
    whole repeated frames may be reused: the descriptor does not promise exact tiles (an output
    that depends on the whole frame, e.g. global pooling (frame_stats), or an unknown reach), the model is
    temporal or a resampler, or the scale is not a whole number (a part's output grid would not
    line up with the frame's). Decided from the descriptor's exact_tiles, tile_context and
    pad_multiple (and its temporal and any_scale).

    A resize after the network (scale other than the network's: kernels of up to 3 lobes, as
    vsr.models.resample has) reaches RESIZE_REACH input pixels further; the colour fix
    (vsr.engine.colour.match_colour) COLOUR_FIX_RADIUS, plus one for its area-downsample and one
    for its bilinear upsample."""
    if not descriptor.exact_tiles or descriptor.frame_stats or descriptor.temporal or descriptor.any_scale:
        return None
    if not float(scale).is_integer() or scale < 1:
        return None
    reach = descriptor.tile_context
    reach += RESIZE_REACH if int(scale) != descriptor.scale else 0
    reach += COLOUR_FIX_RADIUS + 2 if colour_fix else 0
    m = descriptor.pad_multiple
    return ReuseGeometry(scale=int(scale), reach=reach + (-reach) % m, multiple=m)


Box = tuple[int, int, int, int]
"""(y0, y1, x0, x1) in input pixels."""


class ReusedTiles:
    """Wraps `upscale` for consecutive chunks of one stream of frames (one segment): each frame
    is compared with the one before it, and only the part around its changed pixels is run.
    out_size: the output size of a chunk's frames (the network's own for parts to be reused).

    geometry None: only whole frames identical to the one before are reused (no part of a frame).
    Counters: `computed` / `reused` frames (reused: identical to the one before), `tiles` and
    `tiles_reused` (TILE x TILE cells of the input, counted once per frame).
    """

    def __init__(self, upscale: Upscale, geometry: ReuseGeometry | None, out_size: OutSize):
        self._upscale = upscale
        self._out_size = out_size
        self.geometry = geometry
        self._last_in: np.ndarray | None = None
        self._last_out: np.ndarray | None = None
        self.computed = self.reused = self.tiles = self.tiles_reused = 0
        # frame of the chunk -> (mask of cells, cell size in input pixels): only those cells of its
        # computed output are taken, the rest stays the previous output (vsr.engine.stable)
        self._fresh: dict[int, tuple[np.ndarray, int]] = {}

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """The upscaled frames (N,H,W,3) -> (N,oh,ow,3), of the size out_size(frames)."""
        out_size = self._out_size(frames)
        n = len(frames)
        if n == 0:
            return self._upscale(frames, out_size)
        h, w = frames.shape[1:3]
        geometry = self.geometry if self._tiles_fit(h, w, out_size) else None
        # per frame: None = identical to the one before, else the boxes to recompute
        self._fresh = {}
        regions = [self._changed(frames, i, geometry) for i in range(n)]
        out = self._run(frames, out_size, regions, geometry)
        # copies: the decoder may reuse its buffers, and a view would keep the whole chunk alive
        self._last_in = np.array(frames[-1])
        self._last_out = np.array(out[-1])
        return out

    # ------------------------------------------------------------------ deciding
    def _tiles_fit(self, h: int, w: int, out_size: tuple[int, int]) -> bool:
        """Whether parts of h x w frames can be run: the output is the whole-number scale the
        geometry is for, and the frame lies on the network's size grid."""
        g = self.geometry
        return (g is not None and tuple(out_size) == (w * g.scale, h * g.scale)
                and h % g.multiple == 0 and w % g.multiple == 0)

    def _changed(self, frames: np.ndarray, i: int, geometry: ReuseGeometry | None) -> list[Box] | None:
        """The boxes of frame i to recompute ([the whole frame] when there is no usable previous
        frame, no geometry, or the boxes' windows would cover most of it), or None when it is
        identical to the frame before it. Counts the frame and its tiles."""
        prev = frames[i - 1] if i else self._last_in
        cur = frames[i]
        h, w = cur.shape[:2]
        per_frame = -(-h // TILE) * -(-w // TILE)
        self.tiles += per_frame
        boxes: list[Box] | None = [(0, h, 0, w)]
        if prev is not None and prev.shape == cur.shape and prev.dtype == cur.dtype:
            if geometry is None:
                boxes = None if _same(cur, prev) else boxes
            else:
                dirty = _dirty_tiles(np.not_equal(cur, prev).any(axis=-1), geometry.reach)
                if dirty.any():
                    boxes = boxes_of(dirty, h, w)
                    if sum(area(window(b, geometry, h, w)) for b in boxes) > WHOLE_SHARE * h * w:
                        boxes = [(0, h, 0, w)]
                    else:
                        self.tiles_reused += per_frame - int(dirty.sum())
                else:
                    boxes = None
        if boxes is None:
            self.reused += 1
            self.tiles_reused += per_frame
        else:
            self.computed += 1
        return boxes

    # ------------------------------------------------------------------ running
    def _run(self, frames: np.ndarray, out_size: tuple[int, int], regions: list[list[Box] | None],
             geometry: ReuseGeometry | None) -> np.ndarray:
        n, h, w = frames.shape[:3]
        whole = [i for i, boxes in enumerate(regions) if boxes == [(0, h, 0, w)]]
        if len(whole) == n and not self._fresh:
            return self._upscale(frames, out_size)
        ow, oh = out_size
        out = np.empty((n, oh, ow, 3), dtype=frames.dtype)
        done = dict(zip(whole, self._upscale(frames[whole], out_size))) if whole else {}
        parts = [(i, box) for i, boxes in enumerate(regions) if boxes and i not in done for box in boxes]
        pieces = self._run_windows(frames, parts, geometry) if parts else {}
        s = geometry.scale if geometry is not None else 1
        for i in range(n):
            prev = out[i - 1] if i else self._last_out
            if i in done:
                out[i] = done[i]
            else:
                out[i] = prev
                for (y0, y1, x0, x1), piece in pieces.get(i, ()):
                    out[i, y0 * s:y1 * s, x0 * s:x1 * s] = piece
            if i in self._fresh and prev is not None:  # only these cells are taken (stable)
                cells, cell, *eased = self._fresh[i]
                computed = np.array(out[i])
                out[i] = _pasted(prev, computed, cells, cell, s, *eased)
                self._taken(i, computed, out[i])
        return out

    def _taken(self, i: int, computed: np.ndarray, taken: np.ndarray) -> None:
        """Told, for frame i of the chunk with cells in self._fresh, what was computed and what of
        it the output took (vsr.engine.stable)."""

    def _run_windows(self, frames: np.ndarray, parts: list[tuple[int, Box]],
                     geometry: ReuseGeometry) -> dict[int, list[tuple[Box, np.ndarray]]]:
        """{frame: [(box, the box's output), ...]} for the boxes run in part: each box widened by
        the reach into a window, the windows of one shape run in one call."""
        h, w = frames.shape[1:3]
        s = geometry.scale
        by_shape: dict[tuple[int, int], list[tuple[int, Box, Box]]] = defaultdict(list)
        for i, box in parts:
            win = window(box, geometry, h, w)
            by_shape[(win[1] - win[0], win[3] - win[2])].append((i, box, win))
        pieces: dict[int, list[tuple[Box, np.ndarray]]] = defaultdict(list)
        for (wh, ww), items in by_shape.items():
            crops = np.stack([frames[i, y0:y1, x0:x1] for i, _, (y0, y1, x0, x1) in items])
            outs = self._upscale(crops, (ww * s, wh * s))
            for (i, box, (y0, _, x0, _)), y in zip(items, outs):
                by0, by1, bx0, bx1 = box
                pieces[i].append((box, y[(by0 - y0) * s:(by1 - y0) * s, (bx0 - x0) * s:(bx1 - x0) * s]))
        return pieces


def _dirty_tiles(changed: np.ndarray, reach: int) -> np.ndarray:
    """(rows, cols) of TILE x TILE tiles of an (H, W) mask of changed pixels: True where a changed
    pixel lies within the tile widened by `reach` (rounded out to whole tiles), so that every
    other tile's output is the previous frame's."""
    h, w = changed.shape
    ty, tx = -(-h // TILE), -(-w // TILE)
    padded = np.zeros((ty * TILE, tx * TILE), dtype=bool)
    padded[:h, :w] = changed
    return _grown_tiles(padded.reshape(ty, TILE, tx, TILE).any(axis=(1, 3)), reach)


def _grown_tiles(tiles: np.ndarray, reach: int) -> np.ndarray:
    """A (rows, cols) mask of tiles widened by `reach` input pixels (rounded out to whole tiles)."""
    k = -(-reach // TILE)
    if k and tiles.any():  # widen by k tiles each way: the reach of a changed pixel
        grown = tiles.copy()
        for d in range(1, k + 1):
            grown[d:] |= tiles[:-d]
            grown[:-d] |= tiles[d:]
        tiles = grown.copy()
        for d in range(1, k + 1):
            tiles[:, d:] |= grown[:, :-d]
            tiles[:, :-d] |= grown[:, d:]
    return tiles


def boxes_of(dirty: np.ndarray, h: int, w: int) -> list[Box]:
    """Rectangles (input pixels, within h x w) covering the dirty tiles: runs along each row of
    tiles, stacked where rows below run alike, then merged wherever one window costs no more
    than two."""
    runs: list[list[int]] = []  # [row0, row1, col0, col1] in tiles
    open_runs: dict[tuple[int, int], list[int]] = {}
    for r, row in enumerate(dirty):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        now: dict[tuple[int, int], list[int]] = {}
        for c0, c1 in zip(edges[::2], edges[1::2]):
            run = open_runs.get((c0, c1))
            if run is not None and run[1] == r:
                run[1] = r + 1
            else:
                run = [r, r + 1, int(c0), int(c1)]
                runs.append(run)
            now[(c0, c1)] = run
        open_runs = now
    boxes = [(r0 * TILE, min(h, r1 * TILE), c0 * TILE, min(w, c1 * TILE)) for r0, r1, c0, c1 in runs]
    return _merged(boxes)


def _merged(boxes: list[Box]) -> list[Box]:
    """Boxes merged pairwise while their bounding box is no larger than the two (plus a window's
    margin of MERGE_MARGIN pixels around each: a window apart costs its margin too)."""
    def cost(b: Box) -> int:
        return (b[1] - b[0] + 2 * MERGE_MARGIN) * (b[3] - b[2] + 2 * MERGE_MARGIN)

    boxes = list(boxes)
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                p, q = boxes[a], boxes[b]
                u = (min(p[0], q[0]), max(p[1], q[1]), min(p[2], q[2]), max(p[3], q[3]))
                if cost(u) <= cost(p) + cost(q):
                    boxes[a] = u
                    del boxes[b]
                    merged = True
                    break
            if merged:
                break
    return boxes


def window(box: Box, g: ReuseGeometry, h: int, w: int) -> Box:
    """The input window whose output is exact over `box`: the box widened by the reach, rounded
    out to the network's size grid and up to WINDOW_STEP pixels, within the h x w frame."""
    y0, y1, x0, x1 = box
    return (*_span(y0, y1, g, h), *_span(x0, x1, g, w))


def _span(lo: int, hi: int, g: ReuseGeometry, length: int) -> tuple[int, int]:
    """[lo, hi) widened by the reach, on the size grid, its size rounded up to WINDOW_STEP (grown
    forward, or back at the frame's end); `length` is a multiple of the grid."""
    m = g.multiple
    lo = max(0, lo - g.reach)
    lo -= lo % m
    hi = min(length, hi + g.reach)
    hi += (-hi) % m
    size = min(length, hi - lo + (-(hi - lo)) % WINDOW_STEP)
    size += (-size) % m
    hi = min(length, lo + size)
    return hi - size, hi


def area(box: Box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    # every 16th row first: frames that differ (nearly all) cost 1/16 of a full comparison
    return np.array_equal(a[::16], b[::16]) and np.array_equal(a, b)


def _pasted(prev: np.ndarray, fresh: np.ndarray, cells: np.ndarray, cell: int, s: int,
            eased: np.ndarray | None = None, step: int = 0) -> np.ndarray:
    """The previous output with the given (rows, cols) cells of `cell` input pixels taken from
    `fresh` (both (oh, ow, 3) at output scale s); in the `eased` cells, moved towards it by at
    most `step` levels."""
    oh, ow = fresh.shape[:2]

    def full(c: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(c, cell * s, axis=0), cell * s, axis=1)[:oh, :ow, None]

    out = np.where(full(cells), fresh, prev)
    if eased is not None and eased.any():
        p = prev.astype(np.int32)
        towards = (p + np.clip(fresh.astype(np.int32) - p, -step, step)).astype(prev.dtype)
        out = np.where(full(eased), towards, out)
    return out
