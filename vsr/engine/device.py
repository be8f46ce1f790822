"""Device and precision policy: where and in what precision a generator runs, in what layout,
on which convolution kernels, and how many frames a pass takes and how many passes run at once.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from vsr.errors import UsageError

log = logging.getLogger("vsr")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_BATCH_PIXELS = 320 * 180  # input pixels per forward pass on the CPU (see frames_per_pass)
# Frames in parallel hold two forward passes' activations at once (~1 GB more at 720p in bf16):
# larger passes run one at a time, since on Linux an overcommitted allocation is not an
# out-of-memory error that the engine could step back from but the kernel's OOM killer.
PARALLEL_MAX_PIXELS = 1280 * 720


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX-512 BF16 or AMX), where bf16 is fast."""
    capability = ""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch builds
        pass
    if "AMX" in capability.upper():
        return True
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False  # no cpuinfo (macOS, Windows): bf16 would be emulated, so stay on fp32
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the first CUDA device when present, else the CPU; validates explicit names."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available here")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} does not exist "
                             f"({torch.cuda.device_count()} CUDA device(s))")
        return torch.device("cuda", index)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r} requested but MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {device!r} (auto, cpu, cuda or cuda:N)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> fp16 on CUDA, bf16 on CPUs with native bf16, fp32 otherwise."""
    text = str(precision).strip().lower()
    if text not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    if text == "auto":
        if device.type in ("cuda", "mps"):
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if text == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"precision bf16 is not supported on {device} (use fp16 or fp32)")
    if device.type == "cpu" and text == "fp16":
        log.warning("fp16 on the CPU is usually slow; bf16 or fp32 are the CPU precisions")
    return text


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA OOM and for allocator failures reported as RuntimeError."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    msg = str(err).lower()
    # "cannot allocate memory": ENOMEM from posix_memalign (NNPACK's workspace)
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "not enough memory" in msg
                                              or "cannot allocate memory" in msg)


def place_network(network: nn.Module, device: torch.device, dtype: torch.dtype, compile: bool = False,
                  ) -> tuple[nn.Module, int]:
    """(the network ready to run on `device` in `dtype`, convolutions moved to NNPACK).

    The module itself is moved (nn.Module.to works in place), in channels_last. compile=True
    runs it through torch.compile (eager if that fails); else CPU fp32 networks convolve on
    NNPACK (vsr/engine/nnpack.py)."""
    # channels_last lets oneDNN/cuDNN pick their NHWC kernels, faster on CPU and tensor cores
    net = network.to(device, dtype).to(memory_format=torch.channels_last).eval()
    if compile:
        return compiled_or_eager(net, device, dtype), 0
    if device.type == "cpu" and dtype == torch.float32:
        from vsr.engine.nnpack import use_nnpack_convs  # nnpack imports this module

        # Winograd beats oneDNN's direct fp32 kernels by ~1.35x (see vsr/engine/nnpack.py)
        return net, use_nnpack_convs(net)
    return net, 0


def compiled_or_eager(net: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """torch.compile(net), or net itself where compiling fails (probed with a tiny frame)."""
    try:
        compiled = torch.compile(net)
        # compile errors surface on the first call; probe with a tiny frame and fall back
        with torch.inference_mode():
            probe = torch.zeros(1, 3, 16, 16, device=device, dtype=dtype)
            compiled(probe.contiguous(memory_format=torch.channels_last))
        return compiled
    except Exception as err:  # noqa: BLE001 - any compiler failure means: run eager
        log.warning("torch.compile failed, running eagerly: %s", str(err).splitlines()[0][:160])
        return net


def frame_threads_for(device: torch.device, requested: int | None, precision: str, runs_network: bool,
                      compiled: bool, nnpack_side_by_side: bool) -> int:
    """How many passes run at once: 1 on a GPU (one stream of work keeps it busy; the CPU
    threads only feed it); on the CPU the number requested, else 2 when torch has 2 or more
    threads, for bf16/fp16 networks and for fp32 ones whose NNPACK convolutions can run side
    by side (nnpack_side_by_side: see Upscaler._nnpack_side_by_side), else 1."""
    if device.type != "cpu":
        return 1
    if requested is not None:
        return requested
    if not runs_network or compiled:
        return 1
    if precision == "fp32" and not nnpack_side_by_side:
        return 1  # oneDNN fp32 not measured two at a time; a shared NNPACK pool takes turns
    return 2 if torch.get_num_threads() >= 2 else 1


def frames_per_pass(device: torch.device, batch_size: int, height: int, width: int) -> int:
    """Frames per forward pass: batch_size, on the CPU at most CPU_BATCH_PIXELS input pixels.

    oneDNN's CPU convolutions slow down once a batch holds more than ~320x180 pixels
    (measured, 2-core AVX-512 BF16: 320x180 bf16 5.6 fps one frame at a time, 4.3 fps in
    fours; fp32 2.9 vs 2.0): frames of 320x180 and up run one at a time."""
    if device.type == "cpu":
        return max(1, min(batch_size, CPU_BATCH_PIXELS // (height * width)))
    return batch_size
