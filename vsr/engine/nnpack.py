"""fp32 3x3 convolutions on the CPU through NNPACK's Winograd kernels.

oneDNN, torch's default CPU convolution, computes 3x3 convolutions directly; NNPACK (built into
torch's x86 and ARM wheels) uses Winograd F(6x6, 3x3), about 4x fewer multiplications. Measured
on a 2-core AVX-512 BF16 CPU (Zen 4), one 64->64 channel conv on a 320x180 frame: oneDNN fp32
19-21 ms, NNPACK 13-14 ms; the whole realesr-animevideov3-x4 network 2.7 -> 3.6 frames/s, and
its output differs from oneDNN's by at most one level (PSNR > 90 dB). bf16 stays on oneDNN,
whose direct bf16 kernels are faster still (9.8 ms).

NNPACK runs on its own thread pool, so OpenMP threads that spin after each oneDNN or ATen
kernel steal its cores; vsr sets OMP_WAIT_POLICY=PASSIVE before torch loads (vsr/__init__.py).

torch creates that pool once per process, at the first NNPACK call, with the calling thread's
torch thread count. A pool of one thread runs each call on its caller, so frame threads
(vsr/engine/framepool.py) then convolve side by side; a larger pool takes one call at a time.
The Upscaler starts the pool from a frame thread when it runs frames in parallel (see
pool_threads and start_pool_on).
"""

from __future__ import annotations

import functools
import logging
import threading

import torch
import torch.nn.functional as F
from torch import nn

from vsr.engine.device import is_out_of_memory

log = logging.getLogger("vsr")

# Narrow convolutions (RGB in) are memory-bound; oneDNN's channels_last kernel wins there
# (3->64 channels at 320x180: oneDNN 1.2 ms, NNPACK 4.7 ms).
MIN_IN_CHANNELS = 16
# NNPACK's workspace grows with the input and torch keeps it for the life of the process (a
# 1080p frame: 3.6 GB peak against oneDNN's 1.8 GB), and its lead shrinks on large inputs
# (1.13x at 1080p against 1.35x at 320x180; convolving in row bands bounded the memory but ran
# slower than oneDNN). Larger inputs go to oneDNN in channels_last; tiles whose padded size
# fits (`--tile 448` with SRVGG's 16 px overlap) bring NNPACK back for them.
MAX_PIXELS = 640 * 368


_POOL_LOCK = threading.Lock()
_pool_threads: int | None = None  # torch's NNPACK pool, once a call has created it


def pool_threads() -> int | None:
    """Threads of torch's NNPACK pool (fixed by the first call in this process), None before it.

    Only vsr's own calls are seen: a pool made by other code in the process (torch's own
    convolutions use NNPACK for batches of 16 and more) goes unnoticed."""
    return _pool_threads


def frames_share_cores(frame_threads: int) -> bool:
    """Whether `frame_threads` threads can each convolve on NNPACK at once, on their own cores:
    the pool has one thread, or is still to be made and each frame thread would have one torch
    thread (a frame pool with one torch thread each then makes it a one-thread pool)."""
    pool = pool_threads()
    one_each = torch.get_num_threads() // max(2, frame_threads) == 1
    return pool == 1 or (pool is None and one_each)


def _note_pool() -> None:
    global _pool_threads
    if _pool_threads is None:
        with _POOL_LOCK:
            if _pool_threads is None:
                # torch sizes the pool from the first caller's thread count, read the same way
                _pool_threads = torch.get_num_threads()


def start_pool_on(run_in_thread) -> None:
    """Create torch's NNPACK pool (if nothing has yet) by a tiny NNPACK call that
    run_in_thread(fn) runs, e.g. on a frame thread with one torch thread: a one-thread pool."""
    if _pool_threads is not None or not nnpack_available():
        return
    x = torch.zeros(1, MIN_IN_CHANNELS, 8, 8)
    w = torch.zeros(MIN_IN_CHANNELS, MIN_IN_CHANNELS, 3, 3)

    def first_call() -> None:
        try:
            torch._nnpack_spatial_convolution(x, w, None, [1, 1])
        except RuntimeError as err:  # NnpackConv2d falls back on its own calls; nothing to do here
            log.debug("NNPACK pool not started: %s", str(err).splitlines()[0][:120])
            return
        _note_pool()

    run_in_thread(first_call)


@functools.lru_cache(maxsize=1)
def nnpack_available() -> bool:
    """True when this torch build has NNPACK and it initialised on this CPU."""
    try:
        return bool(torch._nnpack_available())
    except Exception:  # noqa: BLE001 - a build without the op
        return False


class NnpackConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 nn.Conv2d computed by NNPACK (same parameters and state dict).

    Falls back to torch's own convolution for good if NNPACK refuses a call.
    """

    nnpack_failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nnpack_failed or x.dtype != torch.float32 or x.device.type != "cpu":
            return self._torch_conv(x)
        if x.shape[-2] * x.shape[-1] > MAX_PIXELS:  # oneDNN, in its faster channels_last layout
            return self._torch_conv(x.contiguous(memory_format=torch.channels_last))
        try:
            return self._nnpack(x.contiguous())
        except RuntimeError as err:
            if is_out_of_memory(err):
                raise  # the Upscaler lowers the batch, then the tile
            self.nnpack_failed = True
            log.warning("NNPACK convolution failed (%s); using torch's own convolution",
                        str(err).splitlines()[0][:120])
            return self._torch_conv(x)

    def _torch_conv(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN follows the input's layout (channels_last when either tensor is)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def _nnpack(self, x: torch.Tensor) -> torch.Tensor:
        _note_pool()
        n = x.shape[0]
        if n == 1:
            return torch._nnpack_spatial_convolution(x, self.weight, self.bias, [1, 1])
        # NNPACK's batched algorithm is slower than one inference call per frame
        return torch.cat([torch._nnpack_spatial_convolution(x[i:i + 1], self.weight, self.bias, [1, 1])
                          for i in range(n)])


def _eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.padding == (1, 1) and m.dilation == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros" and m.in_channels >= MIN_IN_CHANNELS
            and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu")


def use_nnpack_convs(net: nn.Module) -> int:
    """Switch a CPU fp32 network's wide 3x3 convolutions to NNPACK in place; return how many.

    Weights are made NCHW-contiguous, the layout NNPACK reads. Returns 0 (network unchanged)
    when NNPACK is not available.
    """
    if not nnpack_available():
        return 0
    count = 0
    for m in net.modules():
        if _eligible(m):
            m.__class__ = NnpackConv2d
            m.weight.data = m.weight.data.contiguous()
            count += 1
    return count
