"""Repeatable encodes: the encoder's memory holds the same bytes on every run (vsr/media/heap.py)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from vsr.media import heap
from vsr.media.encode import EncodeOptions, SegmentWriter, resolve_encode_options
from vsr.media.probe import probe

MEDIA = Path(__file__).parent / "data" / "media"

# glibc only (every Linux that torch's wheels run on, the CI machine too), and not where the
# user set malloc's filling byte: there vsr leaves malloc alone, and these checks do not apply
pytestmark = pytest.mark.skipif(not heap.heap_filling_available(),
                                reason="glibc malloc with no MALLOC_PERTURB_ of the user's")


def _libc():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_CHECKS = r"""
import ctypes, json, threading
from vsr.media import heap

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 4096  # above glibc's per-thread cache (up to 1032 bytes, handed back unfilled), below mmap


def handed_out():  # the bytes past the 32 the allocator keeps its lists in
    p = libc.malloc(SIZE)
    data = ctypes.string_at(p + 32, SIZE - 32)
    libc.free(p)
    return data


def kept_after_free():  # written with 0x11, freed, handed out again: 0x11 unless malloc fills
    p = libc.malloc(SIZE)
    ctypes.memset(p, 0x11, SIZE)
    libc.free(p)
    q = libc.malloc(SIZE)
    data = ctypes.string_at(q + 32, SIZE - 32)
    libc.free(q)
    return q == p, data


def kind(data):
    return {bytes([heap.FILL_BYTE ^ 0xFF]) * (SIZE - 32): "filled", b"\x11" * (SIZE - 32): "kept"}.get(data, "other")


report = {"before": kind(kept_after_free()[1])}
with heap.filled_heap():
    report["inside"] = [kind(handed_out()), kind(kept_after_free()[1])]
same, data = kept_after_free()
report["after"] = [same, kind(data)]

entered, release = threading.Event(), threading.Event()
def hold():
    with heap.filled_heap():
        entered.set()
        release.wait(10)
other = threading.Thread(target=hold)
other.start()
entered.wait(10)
with heap.filled_heap():
    pass
report["other_holds"] = kind(handed_out())  # this thread left; the other one still holds it
release.set()
other.join()
same, data = kept_after_free()
report["all_left"] = [same, kind(data)]
print(json.dumps(report))
"""


def test_filled_heap_fills_blocks_only_while_held():
    """In a fresh process (a clean heap hands a freed block straight back): malloc fills the
    blocks it hands out while a holder is inside filled_heap(), from any thread, and stops
    when the last one leaves."""
    r = subprocess.run([sys.executable, "-c", _CHECKS], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == {"before": "kept", "inside": ["filled", "filled"], "after": [True, "kept"],
                                    "other_holds": "filled", "all_left": [True, "kept"]}


def _encode_under(fill: int, tmp: Path, info, options, frames: np.ndarray, pts: list[int], *,
                  fills_heap: bool) -> bytes:
    """Encode with everything malloc hands out between encoder calls, and at the flush, filled
    with `fill` (inside the calls too, where the writer leaves the heap alone)."""
    h, w = frames.shape[1:3]
    libc = _libc()
    writer = SegmentWriter(tmp / f"seg_{fill:02x}.nut", info, options, w, h)
    assert writer.fills_heap == fills_heap
    try:
        for frame, p in zip(frames, pts):
            libc.mallopt(heap.M_PERTURB, fill)  # what earlier code leaves behind in the heap
            writer.write(frame, [p])
        libc.mallopt(heap.M_PERTURB, fill)  # most encoders give their packets at the flush
        done = writer.close()
    finally:
        libc.mallopt(heap.M_PERTURB, 0)
    with av.open(done["path"]) as c:
        return b"".join(bytes(p) for p in c.demux(c.streams.video[0]) if p.size)


def test_x264_stream_does_not_depend_on_what_the_heap_held(tmp_path):
    """libx264 reads memory it never wrote: with the heap left full of 0x01 bytes instead of 0x11
    (or anything else), the same six frames gave another H.264 stream (first difference in the
    IDR frame). Inside SegmentWriter the encoder always sees FILL_BYTE."""
    src = MEDIA / "webcam_1080x720_h264_aac.mp4"
    info = probe(src)
    options = resolve_encode_options(info, tmp_path / "out.mp4")
    assert options.codec == "libx264"
    with av.open(str(src)) as c:
        decoded = [(f.to_ndarray(format="rgb24"), f.pts) for _, f in zip(range(6), c.decode(c.streams.video[0]))]
    frames = np.stack([f for f, _ in decoded]).repeat(2, axis=1).repeat(2, axis=2)  # 2160x1440
    pts = [p for _, p in decoded]
    streams = {fill: _encode_under(fill, tmp_path, info, options, frames, pts, fills_heap=True)
               for fill in (0x11, 0x01)}
    assert streams[0x11] and streams[0x11] == streams[0x01]


@pytest.mark.parametrize("codec", ["libx265", "libsvtav1", "libvpx-vp9", "ffv1", "prores_ks"])
def test_other_encoders_need_no_filled_heap(tmp_path, codec):
    """The other software encoders run with the heap left as it is (filling costs time): with it
    full of 0x11, 0x01 or 0x33 bytes, inside their calls too, each gives one stream."""
    src = MEDIA / "webcam_1080x720_h264_aac.mp4"
    info = probe(src)
    options = resolve_encode_options(info, tmp_path / ("out.mov" if codec == "prores_ks" else "out.mkv"),
                                     EncodeOptions(codec=codec))
    with av.open(str(src)) as c:
        decoded = [(f.to_ndarray(format="rgb24"), f.pts) for _, f in zip(range(6), c.decode(c.streams.video[0]))]
    frames, pts = np.stack([f for f, _ in decoded]), [p for _, p in decoded]
    streams = {fill: _encode_under(fill, tmp_path, info, options, frames, pts, fills_heap=False)
               for fill in (0x11, 0x01, 0x33)}
    assert streams[0x11] and streams[0x11] == streams[0x01] == streams[0x33]
