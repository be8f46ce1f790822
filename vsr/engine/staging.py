"""CUDA: frames in and out of the GPU through reused page-locked buffers, one batch queued ahead.

Copies from page-locked (pinned) host memory run asynchronously and at full speed; queueing
batch k+1 on the GPU before batch k is copied out keeps the GPU busy while the host copies
frames.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import numpy as np
import torch

from vsr.engine.device import is_out_of_memory

log = logging.getLogger("vsr")

# Page-locked staging per buffer (four per Upscaler: in and out, two batches in flight). Larger
# batches (e.g. 4K x4 output in fours) copy synchronously rather than lock GBs of host memory.
PINNED_MAX_BYTES = 512 * 2**20
_TORCH_INT = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}

DeviceFrames = Callable[[torch.Tensor], torch.Tensor]
"""(N,H,W,3) integer frames on the device -> (N,oh,ow,3) output frames on the device."""


class PinnedStaging:
    """Page-locked staging buffers for one CUDA device, used by one run() at a time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: dict[tuple[str, int], torch.Tensor] = {}
        self._lock = threading.Lock()
        self._pinning_failed = False

    def run(self, arr: np.ndarray, out: np.ndarray, spans: list[tuple[int, int]],
            device_frames: DeviceFrames) -> None:
        """out[start:end] = device_frames(arr[start:end] on the GPU) for every span, batch k+1
        queued on the GPU before batch k is copied out, through the pinned buffers."""
        # the device guard puts every copy and kernel on this device's current stream (the
        # process's current device may be another GPU)
        with self._lock, torch.cuda.device(self.device), torch.inference_mode():
            self._queued(arr, out, spans, device_frames)

    def _queued(self, arr: np.ndarray, out: np.ndarray, spans: list[tuple[int, int]],
                device_frames: DeviceFrames) -> None:
        pending: tuple | None = None
        try:
            for k, (start, end) in enumerate(spans):
                queued = (start, end, *self._queue_batch(arr[start:end], device_frames, slot=k % 2))
                if pending is not None:
                    self._collect(pending, out)
                pending = queued
            if pending is not None:
                self._collect(pending, out)
        except BaseException:
            # copies still queued read or write the staging buffers: let them finish before
            # the next call refills those buffers
            try:
                torch.cuda.current_stream(self.device).synchronize()
            except Exception:  # noqa: BLE001 - a broken device: the first error is the one to see
                pass
            raise

    def _queue_batch(self, batch: np.ndarray, device_frames: DeviceFrames,
                     slot: int) -> tuple[torch.cuda.Event | None, torch.Tensor]:
        staged = self.buffer(("in", slot), batch.shape, batch.dtype)
        if staged is not None:
            np.copyto(staged.numpy(), batch)
            t = staged.to(self.device, non_blocking=True)
        else:
            t = torch.from_numpy(np.array(batch)).to(self.device)
        y = device_frames(t)
        host = self.buffer(("out", slot), tuple(y.shape), np.dtype(batch.dtype))
        if host is None:
            return None, y.cpu()
        host.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return done, host

    @staticmethod
    def _collect(pending: tuple, out: np.ndarray) -> None:
        start, end, done, host = pending
        if done is not None:
            done.synchronize()
        out[start:end] = host.numpy()

    def buffer(self, key: tuple[str, int], shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor | None:
        """A page-locked host buffer of `shape` (reused per key; None above PINNED_MAX_BYTES or
        where page-locked memory cannot be had): copies from it to the GPU and back run
        asynchronously, and at full speed."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > PINNED_MAX_BYTES or self._pinning_failed:
            return None
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < nbytes:
            if self.buffers.pop(key, None) is not None:
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
            self.buffers[key] = buf
        return buf[:nbytes].view(_TORCH_INT[dtype]).view(shape)
