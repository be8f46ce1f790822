"""The frame engine: batches of uint8/uint16 RGB frames in, upscaled frames out.

One Upscaler holds one generator on one device in one precision. Frames cross into torch once
per batch (NHWC numpy -> channels_last NCHW without a copy), run through the network under
``torch.inference_mode`` (tiled when large), are resized to the requested output size, and are
converted back to integers on the device before the copy to host memory. On CUDA the copies
go through reused page-locked buffers and the next batch is queued before the last one is
copied out, so the GPU does not sit idle while the host copies frames.
"""

from __future__ import annotations

import logging
import math
import os
import threading

import numpy as np
import torch
import torch.nn.functional as F

from vsr.engine.device import DTYPES, is_out_of_memory, resolve_device, resolve_precision
from vsr.engine.framepool import FramePool
from vsr.engine import nnpack
from vsr.engine.nnpack import use_nnpack_convs
from vsr.errors import ModelError, UsageError
from vsr.models.resample import resize
from vsr.weights.zoo import load_model

log = logging.getLogger("vsr")

MIN_TILE = 16
CPU_BATCH_PIXELS = 320 * 180  # input pixels per forward pass on the CPU (see upscale)
# Frames in parallel hold two forward passes' activations at once (~1 GB more at 720p in bf16):
# larger passes run one at a time, since on Linux an overcommitted allocation is not an
# out-of-memory error that the engine could step back from but the kernel's OOM killer.
PARALLEL_MAX_PIXELS = 1280 * 720
_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_TORCH_INT = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}
# CPU: a frame whose 64-channel activations would exceed the last-level cache runs in tiles that
# fit it (networks whose exact reach is known: see _cache_tiles). Measured on a 2-core Zen 4 with
# 32 MB of L3, realesr-animevideov3-x4 on 1280x720 frames, in 320x180-equivalent frames/s: fp32
# whole 1.95 -> 3x3 tiles of 240x427 3.30; bf16 (two frames at once) 3.89 -> 2x2 tiles of 360x640
# 4.65; output identical to whole frames in bf16 (fp32 within one level: NNPACK takes the tiles).
CPU_CACHE_BYTES = 32 * 2**20
# Page-locked staging per buffer (four per Upscaler: in and out, two batches in flight). Larger
# batches (e.g. 4K x4 output in fours) copy synchronously rather than lock GBs of host memory.
PINNED_MAX_BYTES = 512 * 2**20


class Upscaler:
    """Run a zoo model or weight file on frames.

    Args:
        model: zoo name (see ``vsr models``) or path of a .safetensors / .pth file.
        device: "auto" (first CUDA device, else CPU), "cpu", "cuda" or "cuda:N".
        precision: "auto" (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), "fp32",
            "fp16" or "bf16".
        tile: tile size in input pixels (0 = automatic: whole frames, except on the CPU where
            SRVGG frames too large for its cache run in exact, cache-sized tiles; see
            _cache_tiles); on out-of-memory the engine halves the batch, then the tile, and retries.
        tile_pad: overlap in input pixels around each tile; None = what the architecture needs
            for tiles to match whole frames (LoadedModel.tile_context: num_conv + 2 for SRVGG, 48 for RRDB).
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
        self._dev = resolve_device(device)
        self.device: str = str(self._dev)
        self.precision: str = resolve_precision(precision, self._dev)
        self.dtype = DTYPES[self.precision]
        self.loaded = load_model(model)
        self.name: str = self.loaded.name
        self.arch: str = self.loaded.arch
        self.model_scale: int = self.loaded.model_scale
        self.outscale = outscale
        self.scale: float = float(outscale) if outscale else float(self.model_scale)
        self.tile, self.batch_size = int(tile), int(batch_size)
        self.tile_pad = int(tile_pad) if tile_pad is not None else self.loaded.tile_context
        self.colour_fix = bool(colour_fix)
        self.net = None
        self.nnpack_convs = 0  # convolutions running on NNPACK (CPU fp32 only)
        self._warned_depth = False
        if self.loaded.network is None:
            self.precision, self.dtype = "fp32", torch.float32  # resamplers always run in fp32
        else:
            net = self.loaded.network.to(self._dev, self.dtype)
            # channels_last lets oneDNN/cuDNN pick their NHWC kernels, faster on CPU and tensor cores
            self.net = net.to(memory_format=torch.channels_last).eval()
            if compile:
                self._try_compile()
            elif self._dev.type == "cpu" and self.precision == "fp32":
                # Winograd beats oneDNN's direct fp32 kernels by ~1.35x (see vsr/engine/nnpack.py)
                self.nnpack_convs = use_nnpack_convs(self.net)
        self.frame_threads: int = self._resolve_frame_threads(frame_threads, compile)
        self._frame_pool: FramePool | None = None
        # out-of-memory handling shared by the frame threads: one shrink per failure, not one each
        self._oom_lock = threading.Lock()
        self._oom_count = 0
        self._one_at_a_time = threading.Lock()
        # CUDA: page-locked staging buffers, one upscale() call at a time using them
        self._cuda_lock = threading.Lock()
        self._pinned_buffers: dict[tuple[str, int], torch.Tensor] = {}
        self._pinning_failed = False
        # CPU: (height, width, bytes per activation value, budget) -> cache tile plan (_cache_tiles)
        self._cache_tile_plans: dict[tuple[int, int, int, int], tuple[list, int] | None] = {}

    # ------------------------------------------------------------------ public API
    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Output (width, height) for an input of (width, height): round(size * scale)."""
        return max(1, round(width * self.scale)), max(1, round(height * self.scale))

    def upscale(self, frames: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """Upscale (N,H,W,3) or (H,W,3) uint8/uint16 RGB frames; same layout and dtype out.

        out_size=(width, height) overrides the output size (resize after the network).
        """
        arr = np.asarray(frames)
        single = arr.ndim == 3
        if single:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise UsageError(f"frames must be (N,H,W,3) or (H,W,3) RGB, got shape {np.shape(frames)}")
        if arr.dtype not in _MAX:
            raise UsageError(f"frames must be uint8 or uint16, got {arr.dtype}")
        n, h, w, _ = arr.shape
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
        out = np.empty((n, oh, ow, 3), dtype=arr.dtype)
        step = self.batch_size
        if self._dev.type == "cpu":
            # oneDNN's CPU convolutions slow down once a batch holds more than ~320x180 pixels
            # (measured, 2-core AVX-512 BF16: 320x180 bf16 5.6 fps one frame at a time, 4.3 fps in
            # fours; fp32 2.9 vs 2.0): frames of 320x180 and up run one at a time
            step = max(1, min(step, CPU_BATCH_PIXELS // (h * w)))
        spans = [(start, min(n, start + step)) for start in range(0, n, step)]

        def run(span: tuple[int, int]) -> None:
            with torch.inference_mode():  # thread-local: entered in the thread that runs the batch
                out[span[0]:span[1]] = self._run_batch(arr[span[0]:span[1]], (oh, ow))

        if self._dev.type == "cuda":
            # the device guard puts every copy and kernel on this device's current stream (the
            # process's current device may be another GPU)
            with self._cuda_lock, torch.cuda.device(self._dev), torch.inference_mode():
                self._upscale_queued(arr, out, spans, (oh, ow))
        elif self.frame_threads > 1 and len(spans) > 1 and self.parallel_fits(h, w, step) \
                and (not self.nnpack_convs or self._nnpack_side_by_side(self.frame_threads, h, w, step)):
            self._pool().map(run, spans)
        else:
            for span in spans:
                run(span)
        return out[0] if single else out

    def parallel_fits(self, height: int, width: int, batch: int = 1) -> bool:
        """Whether forward passes over `batch` frames of height x width are small enough
        (PARALLEL_MAX_PIXELS, counted per tile when tiled) to run frame_threads at a time."""
        if self.tile:
            side = self.tile + 2 * self.tile_pad
            height, width = min(height, side), min(width, side)
        return batch * height * width <= PARALLEL_MAX_PIXELS

    # ------------------------------------------------------------------ internals
    def _resolve_frame_threads(self, requested: int | None, compile: bool) -> int:
        if self._dev.type != "cpu":
            return 1  # one stream of work keeps a GPU busy; the CPU threads only feed it
        if requested is not None:
            return requested
        if self.net is None or compile:
            return 1
        if self.precision == "fp32" and not self._nnpack_side_by_side(2):
            return 1  # oneDNN fp32 not measured two at a time; a shared NNPACK pool takes turns
        return 2 if torch.get_num_threads() >= 2 else 1

    def _nnpack_side_by_side(self, frame_threads: int, height: int | None = None, width: int | None = None,
                             batch: int = 1) -> bool:
        """Whether this fp32 network's passes can run in `frame_threads` threads at once: its
        NNPACK pool has one thread, or is still to be made and each frame thread would have one
        torch thread (the frame pool then makes it so; vsr/engine/nnpack.py), and (for a frame
        size) every pass is small enough for NNPACK (oneDNN fp32 two at a time is not measured,
        and would hold two large passes). Measured on 2 cores, realesr-animevideov3-x4 in fp32,
        two frames at once against one on both cores: 320x180 3.90-4.02 -> 4.49-4.68 frames/s,
        640x360 0.889 -> 1.017, 1280x720 0.202 -> 0.230; output identical."""
        if not self.nnpack_convs:
            return False
        pool = nnpack.pool_threads()
        one_each = torch.get_num_threads() // max(2, frame_threads) == 1
        if not (pool == 1 or (pool is None and one_each)):
            return False
        return height is None or self._largest_pass(height, width, batch) <= nnpack.MAX_PIXELS

    def _largest_pass(self, height: int, width: int, batch: int) -> int:
        """Input pixels of the largest forward pass over frames of height x width (tiled or not)."""
        if self.tile:
            side = self.tile + 2 * self.tile_pad
            return min(height, side) * min(width, side)
        cache = self._cache_tiles(height, width, batch * torch.finfo(self.dtype).bits // 8)
        if cache is None:
            return height * width
        return _largest_padded(*cache, height, width)

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
        # NHWC memory viewed as NCHW is exactly the channels_last layout: no copy needed.
        x = t.permute(0, 3, 1, 2).to(self.dtype if self.net is not None else torch.float32)
        x = x.mul_(1.0 / maxval)
        y = self._forward(x) if self.net is not None else x
        # Scale and round in fp32: bf16 has 8 significant bits, too few for 16-bit samples.
        y = y.float()
        if tuple(y.shape[-2:]) != out_hw:
            y = resize(y, out_hw, self.loaded.resize_kernel)
        if self.colour_fix and self.net is not None:
            y = match_colour(y, t.permute(0, 3, 1, 2).float().mul_(1.0 / maxval))
        y = y.clamp_(0, 1).mul_(maxval).round_()
        y = y.to(t.dtype)  # on the device: less to copy
        return y.permute(0, 2, 3, 1).contiguous()

    def _upscale_queued(self, arr: np.ndarray, out: np.ndarray, spans: list[tuple[int, int]],
                        out_hw: tuple[int, int]) -> None:
        """CUDA: queue batch k+1 on the GPU before copying batch k out, through pinned buffers,
        so the GPU is not idle while the host copies frames in and out."""
        pending: tuple | None = None
        try:
            for k, (start, end) in enumerate(spans):
                queued = (start, end, *self._queue_batch(arr[start:end], out_hw, slot=k % 2))
                if pending is not None:
                    self._collect(pending, out)
                pending = queued
            if pending is not None:
                self._collect(pending, out)
        except BaseException:
            # copies still queued read or write the staging buffers: let them finish before
            # the next call refills those buffers
            try:
                torch.cuda.current_stream(self._dev).synchronize()
            except Exception:  # noqa: BLE001 - a broken device: the first error is the one to see
                pass
            raise

    def _queue_batch(self, batch: np.ndarray, out_hw: tuple[int, int],
                     slot: int) -> tuple[torch.cuda.Event | None, torch.Tensor]:
        staged = self._pinned(("in", slot), batch.shape, batch.dtype)
        if staged is not None:
            np.copyto(staged.numpy(), batch)
            t = staged.to(self._dev, non_blocking=True)
        else:
            t = torch.from_numpy(np.array(batch)).to(self._dev)
        y = self._device_frames(t, out_hw)
        host = self._pinned(("out", slot), tuple(y.shape), np.dtype(batch.dtype))
        if host is None:
            return None, y.cpu()
        host.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self._dev))
        return done, host

    @staticmethod
    def _collect(pending: tuple, out: np.ndarray) -> None:
        start, end, done, host = pending
        if done is not None:
            done.synchronize()
        out[start:end] = host.numpy()

    def _pinned(self, key: tuple[str, int], shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor | None:
        """A page-locked host buffer of `shape` (reused per key; None above PINNED_MAX_BYTES or
        where page-locked memory cannot be had): copies from it to the GPU and back run
        asynchronously, and at full speed."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > PINNED_MAX_BYTES or self._pinning_failed:
            return None
        buf = self._pinned_buffers.get(key)
        if buf is None or buf.numel() < nbytes:
            if self._pinned_buffers.pop(key, None) is not None:
                # torch keeps freed page-locked blocks for reuse: give the smaller one back
                empty = getattr(torch._C, "_host_emptyCache", None)
                if empty is not None:
                    empty()
            try:
                buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise  # a CUDA error, not a lack of lockable memory: not ours to hide
                self._pinning_failed = True
                log.warning("no page-locked host memory (%s): GPU copies run synchronously",
                            str(err).splitlines()[0][:120])
                return None
            self._pinned_buffers[key] = buf
        return buf[:nbytes].view(_TORCH_INT[dtype]).view(shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network output for a batch, padded to the network's size multiple, tiled, OOM-safe."""
        h, w = x.shape[-2:]
        m = self.loaded.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
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
        if ph or pw:
            s = self.loaded.net_scale
            y = y[..., : h * s, : w * s]
        return y

    def _shrink_after_oom(self, x: torch.Tensor, err: BaseException) -> None:
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
        # halve what the failed pass ran: the tile, the largest cache tile, or the whole frame
        current = self.tile
        if not current:
            cache = self._cache_tiles(*x.shape[-2:], x.shape[0] * x.element_size())
            sides = [max(y1 - y0, x1 - x0) for y0, y1, x0, x1 in cache[0]] if cache else x.shape[-2:]
            current = max(sides)
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
        tile = self.tile
        if tile and h <= tile and w <= tile:
            return self.net(x)
        if not tile:
            cache = self._cache_tiles(h, w, x.shape[0] * x.element_size())
            if cache is None:
                return self.net(x)
            tiles, pad = cache
        else:
            m = self.loaded.pad_multiple
            # x is already padded to a multiple of m; keeping tile and pad multiples of m keeps
            # every tile's size a multiple too (pixel-unshuffle networks need it)
            tile = max(m, tile - tile % m)
            tiles, pad = _tiles(h, w, tile, tile), self.tile_pad + (-self.tile_pad) % m
        s = self.loaded.net_scale

        def run_tile(t: tuple[int, int, int, int]) -> torch.Tensor:
            y0, y1, x0, x1 = t
            py0, py1 = max(0, y0 - pad), min(h, y1 + pad)
            px0, px1 = max(0, x0 - pad), min(w, x1 + pad)
            with torch.inference_mode():  # thread-local: also in a frame thread
                piece = self.net(x[..., py0:py1, px0:px1])
            return piece[..., (y0 - py0) * s:(y1 - py0) * s, (x0 - px0) * s:(x1 - px0) * s]

        if self._tiles_side_by_side(tiles, pad, h, w):
            pieces = self._pool().map(run_tile, tiles)
        else:
            pieces = map(run_tile, tiles)
        out = None
        for (y0, y1, x0, x1), piece in zip(tiles, pieces):
            if out is None:
                out = piece.new_empty((x.shape[0], piece.shape[1], h * s, w * s))
            out[..., y0 * s:y1 * s, x0 * s:x1 * s] = piece
        return out

    def _tiles_side_by_side(self, tiles: list[tuple[int, int, int, int]], pad: int, h: int, w: int) -> bool:
        """Whether the tiles of a pass that runs alone go to the frame threads, each convolving
        on NNPACK on its own core (as frames side by side do; vsr/engine/nnpack.py). Measured on
        2 cores, realesr-animevideov3-x4 fp32, one 1080x720 frame in 3x3 cache tiles: 4.05 s on
        a two-thread NNPACK pool, 3.48 s this way; output identical. Not from inside a frame
        thread, and not after an out-of-memory error (frame_threads 1)."""
        # cheap checks first: every tiled pass asks (bf16 ones never get past nnpack_convs)
        return (len(tiles) > 1 and self.frame_threads > 1 and self.nnpack_convs > 0
                and not FramePool.in_pool_thread() and self._nnpack_side_by_side(self.frame_threads)
                and _largest_padded(tiles, pad, h, w) <= nnpack.MAX_PIXELS)

    def _cache_tiles(self, h: int, w: int, bytes_per_value: int) -> tuple[list, int] | None:
        """Tiles (and their overlap) that keep each CPU forward pass within CPU_CACHE_BYTES, or
        None (whole frames: on a GPU, small frames, or a network whose reach is not known
        exactly). Used when no tile size is set; the plan is worked out once per frame size.

        Only SRVGGNetCompact qualifies: its reach is one pixel per 3x3 conv (num_conv + 2), so
        tiles overlapping by that much compute exactly what the whole frame does. Of the splits
        whose largest tile (with its overlap) fits, the one with the least computation in all
        (frame plus overlaps) is taken; tiles along an axis are as long as each other, but for
        a shorter last one."""
        key = (h, w, bytes_per_value, CPU_CACHE_BYTES)
        if key not in self._cache_tile_plans:
            self._cache_tile_plans[key] = self._plan_cache_tiles(h, w, bytes_per_value)
        return self._cache_tile_plans[key]

    def _plan_cache_tiles(self, h: int, w: int, bytes_per_value: int) -> tuple[list, int] | None:
        if self._dev.type != "cpu" or self.net is None or self.loaded.arch != "srvggnet_compact":
            return None
        if self.net is not self.loaded.network:
            return None  # compiled: tiles of several shapes would recompile it
        feat = int(self.loaded.hparams.get("num_feat", 64))
        budget = CPU_CACHE_BYTES // (feat * bytes_per_value)  # padded tile pixels (frames x sample size)
        if h * w <= budget:
            return None
        pad = self.loaded.tile_context  # the exact reach (vsr.weights.loader.tile_context)
        best = None
        for ny in range(1, max(1, h // pad) + 1):
            th, sh = _split(h, ny, pad)
            if th * min(w, 4 * pad) > budget:
                continue  # too tall even for the narrowest tiles
            for nx in range(1, max(1, w // pad) + 1):
                tw, sw = _split(w, nx, pad)
                if th * tw <= budget:
                    if best is None or sh * sw < best[0]:
                        best = (sh * sw, ny, nx)
                    break  # more columns only add overlap
        if best is None or best[1] * best[2] == 1:
            return None
        _, ny, nx = best
        return _tiles(h, w, math.ceil(h / ny), math.ceil(w / nx)), pad

    def _try_compile(self) -> None:
        try:
            self.net = torch.compile(self.net)
            # compile errors surface on the first call; probe with a tiny frame and fall back
            with torch.inference_mode():
                probe = torch.zeros(1, 3, 16, 16, device=self._dev, dtype=self.dtype)
                self.net(probe.contiguous(memory_format=torch.channels_last))
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eager
            log.warning("torch.compile failed, running eagerly: %s", str(err).splitlines()[0][:160])
            self.net = self.loaded.network

    def __repr__(self) -> str:
        return (f"Upscaler({self.name!r}, device={self.device!r}, precision={self.precision!r}, "
                f"scale={self.scale:g}, tile={self.tile})")


COLOUR_FIX_RADIUS = 4
"""Half-size, in input pixels, of the box over which match_colour equalises local means."""


def match_colour(y: torch.Tensor, x: torch.Tensor, radius: int = COLOUR_FIX_RADIUS) -> torch.Tensor:
    """Return y with its local colour means (per channel, over ~(2r+1)^2 input pixels) set to x's.

    y: (N,C,OH,OW) network output; x: (N,C,H,W) its input, both float in [0, 1]. The output is
    area-downsampled to the input grid, the difference to the input is box-blurred (so only
    low frequencies are corrected and the network's detail is untouched) and added back,
    upsampled bilinearly. Uniform tone shifts vanish; sharpening and texture stay.
    """
    h, w = x.shape[-2:]
    down = F.adaptive_avg_pool2d(y, (h, w))
    delta = x - down
    r = max(0, min(radius, h - 1, w - 1))
    if r:
        # separable box blur: two 1-D passes, same mean (halves match_colour's time)
        delta = F.pad(delta, (r, r, r, r), mode="replicate")
        delta = F.avg_pool2d(F.avg_pool2d(delta, (1, 2 * r + 1), stride=1), (2 * r + 1, 1), stride=1)
    return y + F.interpolate(delta, size=y.shape[-2:], mode="bilinear", align_corners=False)


def _split(length: int, n: int, pad: int) -> tuple[int, int]:
    """(largest padded piece, total padded length) of `length` cut into n even pieces, each
    widened by `pad` on every side that has a neighbour."""
    piece = math.ceil(length / n)
    largest = min(length, piece + pad * min(2, n - 1))
    return largest, length + 2 * pad * (n - 1)


def _largest_padded(tiles: list[tuple[int, int, int, int]], pad: int, h: int, w: int) -> int:
    """Pixels of the largest of these tiles once widened by `pad` (within the h x w frame)."""
    return max((min(h, y1 + pad) - max(0, y0 - pad)) * (min(w, x1 + pad) - max(0, x0 - pad))
               for y0, y1, x0, x1 in tiles)


def _tiles(h: int, w: int, tile_h: int, tile_w: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of tiles of at most tile_h x tile_w covering an h x w frame."""
    return [(ty * tile_h, min(h, (ty + 1) * tile_h), tx * tile_w, min(w, (tx + 1) * tile_w))
            for ty in range(math.ceil(h / tile_h)) for tx in range(math.ceil(w / tile_w))]
