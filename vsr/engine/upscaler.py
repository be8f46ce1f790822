"""The frame engine: batches of uint8/uint16 RGB frames in, upscaled frames out.

One Upscaler holds one generator on one device in one precision. Frames cross into torch once
per batch (NHWC numpy -> channels_last NCHW without a copy), run through the network under
``torch.inference_mode`` (tiled when large: vsr/engine/tiles.py), are resized to the requested
output size, and are converted back to integers on the device before the copy to host memory.
On CUDA the copies go through reused page-locked buffers and the next batch is queued before
the last one is copied out (vsr/engine/staging.py). What the engine knows of the network comes
from its ModelDescriptor (vsr.models.descriptor), never from its architecture's name.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import torch

from vsr.engine import nnpack
from vsr.engine.colour import match_colour
from vsr.engine.device import (CPU_BATCH_PIXELS, DTYPES, PARALLEL_MAX_PIXELS, frame_threads_for,
                               frames_per_pass, is_out_of_memory, place_network, resolve_device,
                               resolve_precision)
from vsr.engine.framepool import FramePool
from vsr.engine.reuse import ReuseGeometry, reuse_geometry
from vsr.engine.staging import PinnedStaging
from vsr.engine.tiles import (MIN_TILE, CacheTiles, TilePlan, explicit_plan, largest_pass,
                              largest_padded, pad_to_multiple, run_tiles, tile_grid, tile_in_use,
                              with_frame_stats)
from vsr.errors import ModelError, UsageError
from vsr.models.descriptor import ModelDescriptor
from vsr.models.resample import resize, resize_channels_last
from vsr.weights.zoo import load_model

log = logging.getLogger("vsr")

__all__ = ["CPU_BATCH_PIXELS", "MIN_TILE", "PARALLEL_MAX_PIXELS", "Upscaler", "match_colour"]
_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class Upscaler:
    """Run a zoo model or weight file on frames.

    Args:
        model: zoo name (see ``vsr models``) or path of a .safetensors / .pth file.
        device: "auto" (first CUDA device, else CPU), "cpu", "cuda" or "cuda:N".
        precision: "auto" (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), "fp32",
            "fp16" or "bf16".
        tile: tile size in input pixels (0 = automatic: whole frames, except on the CPU where
            frames too large for its cache run in exact, cache-sized tiles when the model's
            tiles are exact (SRVGG); see vsr/engine/tiles.py); on out-of-memory the engine
            halves the batch, then the tile, and retries.
        tile_pad: overlap in input pixels around each tile; None = what the model needs for
            tiles to match whole frames (its descriptor's tile_context: num_conv + 2 for
            SRVGG, 48 for RRDB).
        outscale: output scale (default: the model's scale); any value, reached by a
            high-quality resize after the network.
        batch_size: frames per forward pass (on the CPU also capped at CPU_BATCH_PIXELS).
        compile: run the network through torch.compile (falls back to eager if it fails).
        frame_threads: on the CPU, batches run this many at once, each on its share of torch's
            threads (see vsr/engine/framepool.py); None = 2 when torch has 2 or more threads for
            bf16/fp16 networks, and for fp32 ones on NNPACK when torch has 2 or 3 threads and
            NNPACK's pool is free to be one thread (vsr/engine/nnpack.py; that pool then serves
            every later call of the process: a lone frame in cache tiles spreads them over the
            frame threads, a lone untiled frame convolves on one core), else 1.
            Frames in parallel hold that many batches in memory: passes over more than
            PARALLEL_MAX_PIXELS input pixels run one at a time, and the first out-of-memory
            error goes back to one at a time.
        colour_fix: pin the output's low-frequency colour to the input's (see match_colour).
            GAN generators shift tones (realesr-animevideov3 brightens some footage by 3-4
            levels); the video and image commands turn this on by default so that the output
            keeps the source's colours. Off here, so the engine alone computes the plain network.
    """

    def __init__(self, model: str | os.PathLike, device: str = "auto", precision: str = "auto",
                 tile: int = 0, tile_pad: int | None = None, outscale: float | None = None,
                 batch_size: int = 4, compile: bool = False, colour_fix: bool = False,
                 frame_threads: int | None = None) -> None:
        _check_arguments(tile, tile_pad, batch_size, frame_threads, outscale)
        self._dev = resolve_device(device)
        self.device: str = str(self._dev)
        self.precision: str = resolve_precision(precision, self._dev)
        self.dtype = DTYPES[self.precision]
        self.loaded = load_model(model)
        self.descriptor = self.loaded.descriptor
        _check_runnable(self.loaded.name, self.descriptor)
        self.name: str = self.loaded.name
        self.arch: str = self.loaded.arch
        self.model_scale: int = self.loaded.model_scale
        self.outscale = outscale
        self.scale: float = float(outscale) if outscale else float(self.model_scale)
        self.tile, self.batch_size = int(tile), int(batch_size)
        self.tile_pad = int(tile_pad) if tile_pad is not None else self.descriptor.tile_context
        self.colour_fix = bool(colour_fix)
        self.net = None
        self.nnpack_convs = 0  # convolutions running on NNPACK (CPU fp32 only)
        self._warned_depth = False
        if self.loaded.network is None:
            self.precision, self.dtype = "fp32", torch.float32  # resamplers always run in fp32
        else:
            self.net, self.nnpack_convs = place_network(self.loaded.network, self._dev, self.dtype, compile)
        self.frame_threads: int = frame_threads_for(
            self._dev, frame_threads, self.precision, self.net is not None, compile,
            self.precision == "fp32" and self._nnpack_side_by_side(2))
        self._frame_pool: FramePool | None = None
        # out-of-memory handling shared by the frame threads: one shrink per failure, not one each
        self._oom_lock = threading.Lock()
        self._oom_count = 0
        self._one_at_a_time = threading.Lock()
        self._staging = PinnedStaging(self._dev) if self._dev.type == "cuda" else None
        self._cache_plans = CacheTiles(self.descriptor)  # CPU: exact cache-sized tiles per frame size

    # ------------------------------------------------------------------ public API
    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Output (width, height) for an input of (width, height): round(size * scale)."""
        return max(1, round(width * self.scale)), max(1, round(height * self.scale))

    def upscale(self, frames: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """Upscale (N,H,W,3) or (H,W,3) uint8/uint16 RGB frames; same layout and dtype out.

        out_size=(width, height) overrides the output size (resize after the network).
        """
        arr, single, (ow, oh) = self._checked_frames(frames, out_size)
        n, h, w, _ = arr.shape
        out = np.empty((n, oh, ow, 3), dtype=arr.dtype)
        step = frames_per_pass(self._dev, self.batch_size, h, w)
        spans = [(start, min(n, start + step)) for start in range(0, n, step)]

        def run(span: tuple[int, int]) -> None:
            with torch.inference_mode():  # thread-local: entered in the thread that runs the batch
                out[span[0]:span[1]] = self._run_batch(arr[span[0]:span[1]], (oh, ow))

        if self._staging is not None:
            self._staging.run(arr, out, spans, lambda t: self._device_frames(t, (oh, ow)))
        elif self.frame_threads > 1 and len(spans) > 1 and self.parallel_fits(h, w, step) \
                and (not self.nnpack_convs or self._nnpack_side_by_side(self.frame_threads, h, w, step)):
            self._pool().map(run, spans)
        else:
            for span in spans:
                run(span)
        return out[0] if single else out

    def reuse_geometry(self) -> ReuseGeometry | None:
        """What reusing the unchanged parts of frames needs (vsr.engine.reuse.ReusedTiles), or None
        where only whole repeated frames may be reused: a resampler, or a network whose
        descriptor does not promise exact tiles (decided by reuse_geometry from the descriptor)."""
        if self.net is None:
            return None
        return reuse_geometry(self.descriptor, self.colour_fix, self.scale)

    def parallel_fits(self, height: int, width: int, batch: int = 1) -> bool:
        """Whether forward passes over `batch` frames of height x width are small enough
        (PARALLEL_MAX_PIXELS, counted per tile when tiled) to run frame_threads at a time."""
        if self.tile:
            side = self.tile + 2 * self.tile_pad
            height, width = min(height, side), min(width, side)
        return batch * height * width <= PARALLEL_MAX_PIXELS

    # ------------------------------------------------------------------ internals
    def _checked_frames(self, frames: np.ndarray, out_size: tuple[int, int] | None,
                        ) -> tuple[np.ndarray, bool, tuple[int, int]]:
        """(frames as an (N,H,W,3) array, whether one (H,W,3) frame was given, output (width,
        height)); UsageError for bad ones."""
        arr = np.asarray(frames)
        single = arr.ndim == 3
        if single:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise UsageError(f"frames must be (N,H,W,3) or (H,W,3) RGB, got shape {np.shape(frames)}")
        if arr.dtype not in _MAX:
            raise UsageError(f"frames must be uint8 or uint16, got {arr.dtype}")
        _, h, w, _ = arr.shape
        if h == 0 or w == 0:
            raise UsageError(f"frames have an empty size {w}x{h}")
        ow, oh = out_size if out_size is not None else self.output_size(w, h)
        if ow < 1 or oh < 1:
            raise UsageError(f"output size must be positive, not {ow}x{oh}")
        if arr.dtype == np.uint16 and self.precision in ("bf16", "fp16") and not self._warned_depth:
            self._warned_depth = True
            log.warning("%s inference keeps about %d bits per sample; use precision fp32 to keep "
                        "all the bits of a >8-bit source", self.precision,
                        8 if self.precision == "bf16" else 11)
        return arr, single, (ow, oh)

    def _nnpack_side_by_side(self, frame_threads: int, height: int | None = None, width: int | None = None,
                             batch: int = 1) -> bool:
        """Whether this fp32 network's passes can run in `frame_threads` threads at once: its
        NNPACK pool has one thread, or is still to be made and each frame thread would have one
        torch thread (the frame pool then makes it so; vsr/engine/nnpack.py), and (for a frame
        size) every pass is small enough for NNPACK (oneDNN fp32 two at a time is not measured,
        and would hold two large passes). Measured on 2 cores, realesr-animevideov3-x4 in fp32,
        two frames at once against one on both cores: 320x180 3.90-4.02 -> 4.49-4.68 frames/s,
        640x360 0.889 -> 1.017, 1280x720 0.202 -> 0.230; output identical."""
        if not self.nnpack_convs or not nnpack.frames_share_cores(frame_threads):
            return False
        return height is None or self._largest_pass(height, width, batch) <= nnpack.MAX_PIXELS

    def _largest_pass(self, height: int, width: int, batch: int) -> int:
        """Input pixels of the largest forward pass over frames of height x width (tiled or not)."""
        cache = None if self.tile else self._cache_tiles(height, width, batch * torch.finfo(self.dtype).bits // 8)
        return largest_pass(height, width, self.tile, self.tile_pad, cache)

    def _pool(self) -> FramePool:
        if self._frame_pool is None or self._frame_pool.threads != self.frame_threads:
            intra = max(1, torch.get_num_threads() // self.frame_threads)
            self._frame_pool = FramePool(self.frame_threads, intra)
            if self.nnpack_convs and intra == 1:
                pool = self._frame_pool
                nnpack.start_pool_on(lambda fn: pool.map(lambda _: fn(), [0]))  # a one-thread pool
        return self._frame_pool

    def _run_batch(self, batch: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        if not batch.flags.writeable:
            # torch warns about read-only arrays (np.asarray of a PIL image); a copy costs less
            # than one layer, and warnings.catch_warnings is not safe in the frame threads
            batch = batch.copy()
        t = torch.from_numpy(batch).to(self._dev)
        return self._device_frames(t, out_hw).cpu().numpy()

    def _device_frames(self, t: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """(N,H,W,3) integer frames on the device -> (N,oh,ow,3) upscaled, same dtype, contiguous."""
        maxval = 255.0 if t.dtype == torch.uint8 else 65535.0
        if self.net is None:  # a resampler: resized as the frames lie (N,H,W,3), no layout copies
            y = resize_channels_last(t.float().mul_(1.0 / maxval), out_hw, self.loaded.resize_kernel)
            return y.clamp_(0, 1).mul_(maxval).round_().to(t.dtype).contiguous()  # laid out after the cast
        low, high = self.descriptor.input_range
        # NHWC memory viewed as NCHW is exactly the channels_last layout: no copy needed.
        x = t.permute(0, 3, 1, 2).to(self.dtype if self.net is not None else torch.float32)
        x = x.mul_((high - low) / maxval)  # (0, 1): 1 / maxval exactly
        if low:
            x = x.add_(low)
        y = self._forward(x) if self.net is not None else x
        # Scale and round in fp32: bf16 has 8 significant bits, too few for 16-bit samples.
        y = y.float()
        if (low, high) != (0.0, 1.0):
            y = y.sub_(low).mul_(1.0 / (high - low))
        if tuple(y.shape[-2:]) != out_hw:
            y = resize(y, out_hw, self.loaded.resize_kernel)
        if self.colour_fix and self.net is not None:
            y = match_colour(y, t.permute(0, 3, 1, 2).float().mul_(1.0 / maxval))
        y = y.clamp_(0, 1).mul_(maxval).round_()
        y = y.to(t.dtype)  # on the device: less to copy
        return y.permute(0, 2, 3, 1).contiguous()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network output for a batch, padded to the network's size multiple, tiled, OOM-safe."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.descriptor.pad_multiple)
        while True:
            seen = self._oom_count
            try:
                if self.frame_threads == 1:
                    # after an out-of-memory error the frame threads still running this call's
                    # batches take turns, so the retries do not fail again for running together
                    with self._one_at_a_time:
                        y = self._forward_chunks(x)
                else:
                    y = self._forward_chunks(x)
                break
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(err):
                    raise
                with self._oom_lock:
                    if self._oom_count == seen:  # else another frame thread already shrank: retry
                        self._shrink_after_oom(x, err)
                        self._oom_count += 1
        if tuple(x.shape[-2:]) != (h, w):
            s = self.descriptor.scale
            y = y[..., : h * s, : w * s]
        return y

    def _shrink_after_oom(self, x: torch.Tensor, err: BaseException) -> None:
        """One step back after an out-of-memory error: frames one at a time, else half the
        batch, else half the tile (ModelError below MIN_TILE)."""
        if self._dev.type == "cuda":
            torch.cuda.empty_cache()
        if self.frame_threads > 1:
            self.frame_threads = 1
            log.warning("out of memory: frames one at a time (frame_threads 1)")
            return
        if self.batch_size > 1:
            self.batch_size //= 2
            log.warning("out of memory: batch size lowered to %d", self.batch_size)
            return
        h, w = x.shape[-2:]
        cache = None if self.tile else self._cache_tiles(h, w, x.shape[0] * x.element_size())
        current = tile_in_use(self.tile, cache, h, w)
        new = current // 2
        if new < MIN_TILE:
            raise ModelError(f"out of memory on {self.device} even with tile {current} "
                             f"({str(err).splitlines()[0][:120]})") from None
        self.tile = new
        log.warning("out of memory: tile size lowered to %d", new)

    def _forward_chunks(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.batch_size:
            return self._forward_tiles(x)
        # batch_size was lowered after an OOM: run the batch in smaller pieces
        return torch.cat([self._forward_tiles(c) for c in x.split(self.batch_size)], dim=0)

    def _forward_tiles(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.tile:
            if h <= self.tile and w <= self.tile:
                return self.net(x)
            plan = explicit_plan(h, w, self.tile, self.tile_pad, tile_grid(self.descriptor))
        else:
            plan = self._cache_tiles(h, w, x.shape[0] * x.element_size())
            if plan is None:
                return self.net(x)
        mapper = self._pool().map if self._tiles_side_by_side(plan, h, w) else map
        # SE networks: the tiles first gather the whole frame's means, which every tile then uses
        net = with_frame_stats(self.net, x, plan) if self.descriptor.frame_stats else self.net
        return run_tiles(net, x, plan, self.descriptor.scale, mapper)

    def _tiles_side_by_side(self, plan: TilePlan, h: int, w: int) -> bool:
        """Whether the tiles of a pass that runs alone go to the frame threads, each convolving
        on NNPACK on its own core (as frames side by side do; vsr/engine/nnpack.py). Measured on
        2 cores, realesr-animevideov3-x4 fp32, one 1080x720 frame in 3x3 cache tiles: 4.05 s on
        a two-thread NNPACK pool, 3.48 s this way; output identical. Not from inside a frame
        thread, and not after an out-of-memory error (frame_threads 1)."""
        # cheap checks first: every tiled pass asks (bf16 ones never get past nnpack_convs)
        return (len(plan.tiles) > 1 and self.frame_threads > 1 and self.nnpack_convs > 0
                and not FramePool.in_pool_thread() and self._nnpack_side_by_side(self.frame_threads)
                and largest_padded(*plan, h, w) <= nnpack.MAX_PIXELS)

    def _cache_tiles(self, h: int, w: int, bytes_per_value: int) -> TilePlan | None:
        """Exact cache-sized tiles for a CPU pass over h x w (vsr/engine/tiles.py), or None:
        whole frames on a GPU, for resamplers, and for a compiled network (tiles of several
        shapes would recompile it)."""
        if self._dev.type != "cpu" or self.net is None or self.net is not self.loaded.network:
            return None
        return self._cache_plans.plan(h, w, bytes_per_value)

    def __repr__(self) -> str:
        return (f"Upscaler({self.name!r}, device={self.device!r}, precision={self.precision!r}, "
                f"scale={self.scale:g}, tile={self.tile})")


def _check_arguments(tile: int, tile_pad: int | None, batch_size: int, frame_threads: int | None,
                     outscale: float | None) -> None:
    if tile < 0 or (tile_pad is not None and tile_pad < 0):
        raise UsageError(f"tile ({tile}) and tile_pad ({tile_pad}) must be >= 0")
    if tile and tile < MIN_TILE:
        raise UsageError(f"tile {tile} is too small (minimum {MIN_TILE})")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, not {batch_size}")
    if frame_threads is not None and frame_threads < 1:
        raise UsageError(f"frame_threads must be >= 1, not {frame_threads}")
    if outscale is not None and not (0 < outscale <= 32):
        raise UsageError(f"outscale must be in (0, 32], not {outscale}")


def _check_runnable(name: str, descriptor: ModelDescriptor) -> None:
    """ModelError for models the frame engine cannot run: temporal ones, or not RGB to RGB."""
    if descriptor.temporal:
        raise ModelError(f"model {name}: each output frame depends on other frames (a temporal "
                         "model); the frame engine upscales frames one by one")
    if (descriptor.in_channels, descriptor.out_channels) != (3, 3):
        raise ModelError(f"model {name}: takes {descriptor.in_channels} channel(s) and gives "
                         f"{descriptor.out_channels}; the engine runs RGB frames (3 and 3)")
