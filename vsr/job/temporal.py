"""What a segment of a temporal (recurrent) model decodes beyond its own frames.

A recurrent model's output depends on every frame before it, and each step also sees the next
frame. A segment run on its own therefore decodes and runs WARMUP_FRAMES frames before its
first one (their outputs are discarded) and decodes one frame after its last (the last frame's
next neighbour, as in a one-segment run). Segments stay keyframe-aligned: the warm-up may start
anywhere, since the decoder seeks to the keyframe at or before it and drops the frames before
(vsr.media.decode), so any plan's segments can be warmed up; the plan records the warm-up
(ModelPlan.warmup_frames), the worker only follows it.
"""

from __future__ import annotations

from bisect import bisect_left

from vsr.media.probe import MediaInfo
from vsr.media.segments import Segment

# Measured (docs/benchmarks.md, benchmarks/animesr_warmup.py, AnimeSR v2 fp32, 2-core AMD
# EPYC): a segment warmed up by K frames stays 48-50 dB from a one-segment run whatever K (0 to
# 12): the state never forgets its start (the 53-54 dB floor is not reached on these
# clips), so warming up cannot reach a 50 dB mean. Restarting the state every STATE_PERIOD
# frames makes any split exact, at the cost of R/2 frames of warm-up per segment on average and
# a change at each restart no larger than a late start's (48-50 dB).
STATE_PERIOD = 16
WARMUP_FRAMES = STATE_PERIOD - 1  # the longest warm-up a segment runs
LOOKAHEAD_FRAMES = 1  # each step sees the next frame


def frame_index(info: MediaInfo, pts: int) -> int:
    """The index in the file of the frame with this pts (info.video.frame_pts)."""
    return bisect_left(info.video.frame_pts, pts)


def restarts_state(index: int, period: int) -> bool:
    """Whether the state restarts at the frame of this index (a multiple of the period)."""
    return period > 0 and index % period == 0


def context_segment(info: MediaInfo, segment: Segment, warmup: int, period: int = 0,
                    lookahead: int = LOOKAHEAD_FRAMES) -> Segment:
    """The frames to decode for `segment`: its warm-up (from the state's restart at or before
    it with a period, else `warmup` frames), its own, and up to `lookahead` after it (fewer at
    the file's ends). Same index; frame-exact like the segment."""
    pts = info.video.frame_pts
    tb = info.video.time_base
    lo = frame_index(info, segment.start_pts)
    hi = lo + segment.frame_count
    first = lo - lo % period if period > 0 else max(0, lo - warmup)
    end = min(len(pts), hi + lookahead)
    end_pts = pts[end] if end < len(pts) else None
    return Segment(index=segment.index, start_pts=pts[first], end_pts=end_pts, frame_count=end - first,
                   start_time=float(pts[first] * tb),
                   end_time=float(end_pts * tb) if end_pts is not None else segment.end_time)
