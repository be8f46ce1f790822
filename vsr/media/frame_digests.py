"""Digests of decoded video frames: what a segment file decodes to, frame by frame.

Decoders of the codecs vsr writes (H.264, HEVC, VP9, AV1, FFV1, ProRes) are bit-exact, so the
same packets decode to the same pixels wherever and whenever they are decoded: a digest taken
when a worker decodes its segment file back names exactly the picture the assembled output must
show at that place. verify compares them (vsr.media.verify.verify, `encoded`).
"""

from __future__ import annotations

import hashlib
import math
import os
from fractions import Fraction
from typing import NamedTuple

import av
import numpy as np

from vsr.errors import InputError
from vsr.media.probe import main_video_stream, open_input


class EncodedFrame(NamedTuple):
    """One frame a segment encoded: when it is shown (s), its digest (frame_digest), the segment."""

    time_s: float | None
    digest: str
    segment: int


def _row_bytes(frame: av.VideoFrame, index: int) -> int:
    """The bytes of one line of plane `index` that hold pixels (a line is padded to line_size,
    and what the padding holds is whatever the buffer held before: never part of a digest)."""
    fmt, plane = frame.format, frame.planes[index]
    if len(frame.planes) == 1:
        bits = fmt.padded_bits_per_pixel  # packed: every component of a pixel side by side
    else:  # planar or semi-planar: each component in whole bytes (10-bit in 16, ...)
        bits = sum(8 * math.ceil(c.bits / 8) for c in fmt.components if c.plane == index)
    return min(plane.line_size, math.ceil(plane.width * bits / 8))


def frame_digest(frame: av.VideoFrame) -> str:
    """A 64-bit BLAKE2b (hex) of the frame's pixel format, size and the pixels of every plane."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{frame.format.name} {frame.width}x{frame.height}".encode())
    for i, plane in enumerate(frame.planes):
        lines = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        row = _row_bytes(frame, i)
        h.update(lines if row == plane.line_size else np.ascontiguousarray(lines[:, :row]))
    return h.hexdigest()


def file_frame_digests(path: str | os.PathLike) -> tuple[Fraction, list[tuple[int | None, str]]]:
    """Decode the main video of a file: its time base and (pts, frame_digest) of every frame in
    presentation order. InputError (one line) when it does not open or decode."""
    frames: list[tuple[int | None, str]] = []
    with open_input(path) as c:
        v = main_video_stream(c)
        if v is None:
            raise InputError(f"{path}: no video stream")
        v.thread_type = "AUTO"
        time_base = Fraction(v.time_base)
        try:
            for f in c.decode(v):
                frames.append((f.pts, frame_digest(f)))
        except av.error.FFmpegError as err:
            raise InputError(f"{path}: does not decode: {' '.join(str(err).split())}") from None
    return time_base, frames
