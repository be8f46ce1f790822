"""Choosing the device and the numeric precision the engine runs a generator in."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from vsr.errors import UsageError

log = logging.getLogger("vsr")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
