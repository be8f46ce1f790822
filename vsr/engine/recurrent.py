"""The recurrent engine: a temporal generator (AnimeSR) run frame after frame with its state.

A recurrent step sees the previous, current and next frame, the previous output and a state.
``RecurrentUpscaler.upscale`` takes frames in order and gives the outputs of those whose next
frame it has seen; a ``RecurrentRun`` (one per run of consecutive frames: a segment, with its
warm-up) holds what carries from one call to the next. At the first frame the missing previous
one is the frame itself, and at the last (``last=True``) the missing next one.

Large frames run in tiles overlapping by tile_pad input pixels. The previous output and the
state stay whole frames, stitched from the tiles' centres, and each tile reads its part of
them with the overlap: a tile's error at its border is made again at each step but does not
pile up from step to step (docs/benchmarks.md: tiled against whole frames).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vsr.engine.colour import match_colour
from vsr.engine.device import DTYPES, is_out_of_memory, place_network, resolve_device, resolve_precision
from vsr.engine.tiles import MIN_TILE, explicit_plan
from vsr.errors import ModelError, UsageError
from vsr.models.resample import resize
from vsr.weights.zoo import load_model

log = logging.getLogger("vsr")
_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass
class RecurrentRun:
    """What carries between calls of one run: frames still waiting for their next one (at most
    one), the previous frame, and the network's padded previous output and state (None until
    the first step, zero then)."""

    waiting: list[np.ndarray] = field(default_factory=list)
    waiting_restarts: list[bool] = field(default_factory=list)
    prev: np.ndarray | None = None
    fb: torch.Tensor | None = None
    state: torch.Tensor | None = None
    steps: int = 0


class RecurrentUpscaler:
    """Run a temporal zoo model or weight file over frames in order (see the module doc).

    Arguments as vsr.engine.Upscaler's (batch_size and frame_threads are accepted and unused:
    each step needs the one before). tile 0 = whole frames (halved on out-of-memory errors).
    """

    temporal = True

    def __init__(self, model: str | os.PathLike, device: str = "auto", precision: str = "auto",
                 tile: int = 0, tile_pad: int | None = None, outscale: float | None = None,
                 batch_size: int = 1, compile: bool = False, colour_fix: bool = False,
                 frame_threads: int | None = None) -> None:
        if tile < 0 or (tile and tile < MIN_TILE) or (tile_pad is not None and tile_pad < 0):
            raise UsageError(f"tile ({tile}) must be 0 or >= {MIN_TILE}, tile_pad ({tile_pad}) >= 0")
        if outscale is not None and not (0 < outscale <= 32):
            raise UsageError(f"outscale must be in (0, 32], not {outscale}")
        self._dev = resolve_device(device)
        self.device: str = str(self._dev)
        self.precision: str = resolve_precision(precision, self._dev)
        self.dtype = DTYPES[self.precision]
        self.loaded = load_model(model)
        self.descriptor = self.loaded.descriptor
        if not self.descriptor.temporal or self.loaded.network is None:
            raise ModelError(f"model {self.loaded.name}: not a temporal network (use vsr.engine.Upscaler)")
        self.name, self.arch = self.loaded.name, self.loaded.arch
        self.model_scale: int = self.loaded.model_scale
        self.outscale = outscale
        self.scale: float = float(outscale) if outscale else float(self.model_scale)
        self.tile = int(tile)
        self.tile_pad = int(tile_pad) if tile_pad is not None else self.descriptor.tile_context
        self.colour_fix = bool(colour_fix)
        self.frame_threads = 1
        self.net, self.nnpack_convs = place_network(self.loaded.network, self._dev, self.dtype, compile)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Output (width, height) for an input of (width, height): round(size * scale)."""
        return max(1, round(width * self.scale)), max(1, round(height * self.scale))

    def reuse_geometry(self) -> None:
        """None: no part of a recurrent model's output may be reused for another frame (each
        output depends on the frames and the state before it)."""
        return None

    def upscale(self, frames: np.ndarray, out_size: tuple[int, int] | None = None, *,
                carry: RecurrentRun | None = None, last: bool = False,
                restarts: list[bool] | None = None) -> np.ndarray:
        """Take (N,H,W,3) uint8/uint16 RGB frames in order; return the outputs (M,oh,ow,3) of
        the frames whose next frame is known, oldest first: with a carry (a run continued over
        calls) the newest frame waits for the next call, unless last=True; without one the
        frames are a whole run (last implied). restarts[i]: the run restarts at frame i (zero
        previous output and state, the frame as its own previous neighbour), but for the
        frame before it, whose next neighbour stays frame i."""
        arr = np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype not in _MAX:
            raise UsageError(f"frames must be (N,H,W,3) uint8/uint16 RGB, got {arr.shape} {arr.dtype}")
        run = carry if carry is not None else RecurrentRun()
        queue = run.waiting + list(arr)
        flags = run.waiting_restarts + (list(restarts) if restarts is not None else [False] * len(arr))
        if len(flags) != len(queue):
            raise UsageError(f"restarts has {len(flags) - len(run.waiting)} flags for {len(arr)} frames")
        if queue and any(f.shape != queue[0].shape for f in queue):
            raise UsageError("frames of one recurrent run must all have one size")
        ready = len(queue) if (last or carry is None) else max(0, len(queue) - 1)
        h, w = (queue[0].shape[:2] if queue else arr.shape[1:3])
        ow, oh = out_size if out_size is not None else self.output_size(w, h)
        out = np.empty((ready, oh, ow, 3), dtype=queue[0].dtype if queue else arr.dtype)
        with torch.inference_mode():
            for i in range(ready):
                prev = run.prev if run.prev is not None else queue[i]
                nxt = queue[i + 1] if i + 1 < len(queue) else queue[i]
                if flags[i]:  # as at a run's start, so a run that starts here computes the same
                    run.fb = run.state = None
                    prev = queue[i]
                out[i] = self._output(prev, queue[i], nxt, run, (oh, ow))
                run.prev = queue[i]
        run.waiting, run.waiting_restarts = queue[ready:], flags[ready:]
        return out

    # ------------------------------------------------------------------ internals
    def _output(self, prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray, run: RecurrentRun,
                out_hw: tuple[int, int]) -> np.ndarray:
        """One step: the current frame's output as an (oh, ow, 3) integer array."""
        maxval = _MAX[cur.dtype]
        h, w = cur.shape[:2]
        x = torch.from_numpy(np.concatenate([prev, cur, nxt], axis=-1)).to(self._dev)
        x = x.permute(2, 0, 1)[None].to(self.dtype).mul_(1.0 / maxval)
        m = self.descriptor.pad_multiple
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")  # as upstream: replicated
        y = self._step(x, run)
        s = self.descriptor.scale
        y = y[..., : h * s, : w * s].float()
        if tuple(y.shape[-2:]) != out_hw:
            y = resize(y, out_hw, self.loaded.resize_kernel)
        if self.colour_fix:
            y = match_colour(y, x[:, 3:6, :h, :w].float())
        # out of place: in fp32, y may still be the run's feedback (fed back unclamped)
        y = y.clamp(0, 1).mul_(maxval).round_().to(torch.uint8 if maxval == 255.0 else torch.uint16)
        return y[0].permute(1, 2, 0).cpu().numpy()

    def _step(self, x: torch.Tensor, run: RecurrentRun) -> torch.Tensor:
        """The network's padded output for x (1, 9, Hp, Wp); updates the run's feedback and
        state. Out-of-memory errors halve the tile and retry the step (nothing was updated)."""
        hp, wp = x.shape[-2:]
        if run.fb is None or run.state is None or run.state.shape[-2:] != (hp, wp):
            run.fb, run.state = self.loaded.network.zero_carry(1, hp, wp, x)
        while True:
            try:
                out, state = self._tiled(x, run.fb, run.state)
                break
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(err):
                    raise
                self._halve_tile(hp, wp, err)
        run.fb, run.state = out, state
        run.steps += 1
        return out

    def _tiled(self, x: torch.Tensor, fb: torch.Tensor, state: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step over the whole frame, in tiles when self.tile is set and smaller than it."""
        hp, wp = x.shape[-2:]
        if not self.tile or (hp <= self.tile and wp <= self.tile):
            return self.net(x, fb, state)
        m, s = self.descriptor.pad_multiple, self.descriptor.scale
        tiles, pad = explicit_plan(hp, wp, self.tile, self.tile_pad, m)
        out, new_state = torch.empty_like(fb), torch.empty_like(state)
        for y0, y1, x0, x1 in tiles:
            a0, a1, b0, b1 = max(0, y0 - pad), min(hp, y1 + pad), max(0, x0 - pad), min(wp, x1 + pad)
            o, st = self.net(x[..., a0:a1, b0:b1], fb[..., a0 * s:a1 * s, b0 * s:b1 * s],
                             state[..., a0:a1, b0:b1])
            out[..., y0 * s:y1 * s, x0 * s:x1 * s] = o[..., (y0 - a0) * s:(y1 - a0) * s, (x0 - b0) * s:(x1 - b0) * s]
            new_state[..., y0:y1, x0:x1] = st[..., y0 - a0:y1 - a0, x0 - b0:x1 - b0]
        return out, new_state

    def _halve_tile(self, hp: int, wp: int, err: BaseException) -> None:
        if self._dev.type == "cuda":
            torch.cuda.empty_cache()
        new = (self.tile or max(hp, wp)) // 2
        if new < MIN_TILE:
            raise ModelError(f"out of memory on {self.device} even with tile {new * 2} "
                             f"({str(err).splitlines()[0][:120]})") from None
        self.tile = new
        log.warning("out of memory: tile size lowered to %d", new)

    def __repr__(self) -> str:
        return (f"RecurrentUpscaler({self.name!r}, device={self.device!r}, precision={self.precision!r}, "
                f"scale={self.scale:g}, tile={self.tile})")
