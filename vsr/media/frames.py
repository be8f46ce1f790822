"""Frames of two or more videos matched by presentation time, decoded to RGB: what `vsr flicker`
compares (an upscaled output against its source, and a ground truth).

The match is planned from the probed frame times before anything is decoded: each frame of the
leading video gets the frame of another video shown at the same time, within half of that
video's typical frame step; frames with no partner are left out and counted. Then each video is
decoded once, front to back, keeping only the frames a match uses.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import Iterator, Sequence

import av
import numpy as np

from vsr.errors import InputError
from vsr.media.colour import frame_to_rgb, range_of
from vsr.media.decode import decoded_frames
from vsr.media.framesize import FrameFitter
from vsr.media.probe import MediaInfo


def nearest_frames(times: Sequence[float], other: MediaInfo, offset: float = 0.0) -> list[int | None]:
    """For each time, the pts of `other`'s frame shown then (time + offset, within half its frame
    step), or None."""
    v = other.video
    tb = v.time_base
    others = [float(p * tb) for p in v.frame_pts]
    tolerance = 0.5 * float(v.frame_duration_ticks() * tb) + 1e-6
    found: list[int | None] = []
    for t in times:
        t += offset
        i = bisect_left(others, t)
        best = min((j for j in (i - 1, i) if 0 <= j < len(others)), key=lambda j: abs(others[j] - t), default=None)
        found.append(v.frame_pts[best] if best is not None and abs(others[best] - t) <= tolerance else None)
    return found


@dataclass
class FrameMatch:
    """Which frames are compared: the leading video's pts and, per other video, the pts matched."""

    lead_pts: list[int]
    times: list[float]  # seconds, the leading video's
    others: list[list[int]]  # one list per other video, parallel to lead_pts
    unmatched: int  # frames of the leading video (within the limit) left out: no partner


def match_frames(lead: MediaInfo, others: Sequence[MediaInfo], *, offsets: Sequence[float] | None = None,
                 limit: int | None = None) -> FrameMatch:
    """Plan the comparison: frames of `lead` (the first `limit`) that every other video shows too.
    offsets: seconds added to the lead's times to find each other video's frame (0 by default)."""
    v = lead.video
    pts = list(v.frame_pts[:limit] if limit else v.frame_pts)
    times = [float(p * v.time_base) for p in pts]
    found = [nearest_frames(times, o, (offsets or [0.0] * len(others))[n]) for n, o in enumerate(others)]
    keep = [i for i in range(len(pts)) if all(f[i] is not None for f in found)]
    return FrameMatch([pts[i] for i in keep], [times[i] for i in keep],
                      [[f[i] for i in keep] for f in found], len(pts) - len(keep))  # type: ignore[misc]


def rgb_frames(path: str | os.PathLike, info: MediaInfo, wanted: Sequence[int]) -> Iterator[np.ndarray]:
    """RGB pictures (uint8, or uint16 above 8 bits) of the frames with these pts, in the order given
    (non-decreasing; a pts may repeat), every frame at the stream's declared size."""
    v = info.video
    order = list(wanted)
    if not order:
        return
    last = order[-1]
    need = set(order)
    i = 0
    frames = FrameFitter((v.width, v.height), range_of(v))(decoded_frames(path, info))
    try:
        for f in frames:
            if f.pts not in need:
                if f.pts is not None and f.pts > last:
                    break
                continue
            rgb = frame_to_rgb(f, v)
            while i < len(order) and order[i] == f.pts:
                yield rgb
                i += 1
            if i == len(order):
                break
    except av.error.FFmpegError as err:
        raise InputError(f"{path}: cannot decode: {' '.join(str(err).split())}") from None
    if i < len(order):
        raise InputError(f"{path}: the frame at pts {order[i]} could not be decoded")
