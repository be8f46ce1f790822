"""Repeatable encodes: the encoder's memory holds the same bytes on every run (vsr/media/heap.py)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import av
import numpy as np

from vsr.media import heap
from vsr.media.encode import SegmentWriter, resolve_encode_options
from vsr.media.probe import probe

MEDIA = Path(__file__).parent / "data" / "media"

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]


def _fresh_block(size: int = 4096) -> tuple[bool, bytes]:
    """(whether malloc gave the same block back, its bytes past the 32 the allocator keeps its lists in) for a
    block written with 0x11, freed and taken again. 4096 bytes: above glibc's per-thread cache
    (blocks up to 1032 bytes, which it hands back unfilled), below its mmap threshold."""
    p = _libc.malloc(size)
    ctypes.memset(p, 0x11, size)
    _libc.free(p)
    q = _libc.malloc(size)
    data = ctypes.string_at(q + 32, size - 32)
    _libc.free(q)
    return q == p, data


def test_filled_heap_fills_blocks_only_while_held():
    assert heap.heap_filling_available()  # glibc: the CI machine and every Linux wheel of torch
    with heap.filled_heap():
        same, inside = _fresh_block()
    assert same and inside == bytes([heap.FILL_BYTE ^ 0xFF]) * len(inside)  # filled when handed out
    same, after = _fresh_block()
    assert same and after == b"\x11" * len(after)  # off again: the block keeps what was written


def test_filled_heap_stays_on_until_the_last_holder_leaves():
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with heap.filled_heap():
            entered.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    try:
        assert entered.wait(10)
        with heap.filled_heap():
            pass
        _, still = _fresh_block()  # this thread left; the other one still holds it
        assert still == bytes([heap.FILL_BYTE ^ 0xFF]) * len(still)
    finally:
        release.set()
        other.join()
    _, after = _fresh_block()
    assert after == b"\x11" * len(after)


def _encode_under(fill: int, tmp: Path, info, options, frames: np.ndarray, pts: list[int]) -> bytes:
    """Encode with everything malloc hands out between encoder calls filled with `fill`."""
    h, w = frames.shape[1:3]
    writer = SegmentWriter(tmp / f"seg_{fill:02x}.nut", info, options, w, h)
    try:
        for frame, p in zip(frames, pts):
            _libc.mallopt(heap.M_PERTURB, fill)  # what earlier code leaves behind in the heap
            writer.write(frame, [p])
    finally:
        _libc.mallopt(heap.M_PERTURB, 0)
    done = writer.close()
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
    streams = {fill: _encode_under(fill, tmp_path, info, options, frames, pts) for fill in (0x11, 0x01)}
    assert streams[0x11] and streams[0x11] == streams[0x01]
