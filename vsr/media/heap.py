"""Repeatable encodes: what an encoder allocates during its calls holds the same bytes on every run.

libx264 as bundled with PyAV (core 165) reads memory it never wrote, so identical pictures can
become different streams. Measured on this project's machines: six 2160x1440 frames with
identical YUV planes and settings gave one of two streams from run to run, the first difference
in the IDR frame (123317 or 123323 bytes); with the heap left full of 0x01 bytes instead of 0x11
the stream changed every time (tests/test_media_heap.py). valgrind reports x264 using
uninitialised values inside x264_encoder_encode. A resumed job recomputes some segments, which
could then differ from an uninterrupted run's: three runs of the same real-model job
(webcam_1080x720, realesr-animevideov3-x2, x264 crf 18) gave three different H.264 streams.
libx265, libsvtav1, libvpx-vp9, ffv1 and prores_ks gave the same stream whatever the heap held,
inside their calls too (6 frames, heap left full of 0x11, 0x01 or 0x33 bytes); libx264 at
1080x720 changed with it.

glibc's malloc can fill the blocks it hands out (with FILL_BYTE ^ 0xFF) and takes back (with
FILL_BYTE): M_PERTURB; not blocks of up to 1032 bytes, which it recycles through a per-thread
cache. filled_heap() turns that on only while an encoder call runs (set-up and encode, flush),
so that what the encoder allocates during its calls holds the same bytes on every run. That is
what was measured, not a guarantee: allocations by an encoder's own threads after a call has
returned are not covered. The same job then gave one stream in four runs (92.1-94.0 s against
89.8-93.6 s without, within this machine's noise). Only libx264's calls need it
(encode.NEEDS_FILLED_HEAP). Not enough: a low mmap threshold during the calls instead (fresh,
zeroed pages for the encoder's large blocks): two runs of that job, two streams.

What it costs: libx264 builds its pool of frames in a segment's first calls (at 2560x1088 one
9.4 MB block per call for the first ~45 on 2 cores, more with more threads), and each new block is
filled; blocks that other threads allocate meanwhile are filled too (with the filling on all the
time, CPU inference ran about 6% slower). Where the encoder is the bottleneck (an H200 with 16
cores, 640x272 -> 2560x1088, x264 medium; 3 runs each, alternated) the workers' span ran at 20.7
frames/s against 21.5 without for one 250-frame segment, and 22.7 against 26.0 for 83-frame
segments; libx264 alone, 250 frames: 11.7 s against 11.2 s.

Elsewhere (musl, macOS, Windows, another malloc preloaded) mallopt does not accept M_PERTURB:
nothing changes, and encoders keep whatever repeatability they have. A filling byte set by the
user (MALLOC_PERTURB_, even 0, or GLIBC_TUNABLES glibc.malloc.perturb) is left as it is:
MALLOC_PERTURB_=0 trades repeatable libx264 output for the speed above.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

M_PERTURB = -6  # glibc <malloc.h>
FILL_BYTE = 0xA5  # any non-zero byte: 0 turns the filling off

_lock = threading.Lock()
_depth = 0
_mallopt: Any = None
_resolved = False


def _resolve_mallopt() -> Any:
    """glibc's mallopt when it accepts M_PERTURB and the user has not set the filling byte
    (MALLOC_PERTURB_, even to 0, or GLIBC_TUNABLES glibc.malloc.perturb), else None."""
    if "MALLOC_PERTURB_" in os.environ or "glibc.malloc.perturb" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        fn = ctypes.CDLL(None).mallopt  # the process's own C library (or a preloaded malloc)
    except Exception:  # noqa: BLE001 - no C library to open (Windows) or no mallopt in it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    # glibc returns 1; musl's stub and other allocators return 0 for an option they ignore
    return fn if fn(M_PERTURB, 0) == 1 else None


def heap_filling_available() -> bool:
    """Whether filled_heap() changes anything in this process (glibc's malloc, no MALLOC_PERTURB_)."""
    global _mallopt, _resolved
    with _lock:
        if not _resolved:
            _mallopt, _resolved = _resolve_mallopt(), True
        return _mallopt is not None


@contextmanager
def filled_heap() -> Iterator[None]:
    """Within: malloc fills the blocks it hands out and takes back with FILL_BYTE (glibc).

    Re-entrant and shared by threads: filling stays on until the last holder leaves.
    """
    global _depth
    available = heap_filling_available()
    if available:
        with _lock:
            if _depth == 0:
                _mallopt(M_PERTURB, FILL_BYTE)
            _depth += 1
    try:
        yield
    finally:
        if available:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _mallopt(M_PERTURB, 0)
