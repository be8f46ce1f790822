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

# Frames run before a segment's first one. Measured (docs/benchmarks.md, benchmarks/
# animesr_warmup.py, AnimeSR v2 fp32 on a 2-core AMD EPYC): a segment's frames against the
# same frames of a one-segment run
WARMUP_FRAMES = 10
LOOKAHEAD_FRAMES = 1  # each step sees the next frame


def context_segment(info: MediaInfo, segment: Segment, warmup: int,
                    lookahead: int = LOOKAHEAD_FRAMES) -> Segment:
    """The frames to decode for `segment`: up to `warmup` frames before it, its own, and up to
    `lookahead` after it (fewer at the file's ends). Same index; frame-exact like the segment."""
    pts = info.video.frame_pts
    tb = info.video.time_base
    lo = bisect_left(pts, segment.start_pts)
    hi = lo + segment.frame_count
    first, end = max(0, lo - warmup), min(len(pts), hi + lookahead)
    end_pts = pts[end] if end < len(pts) else None
    return Segment(index=segment.index, start_pts=pts[first], end_pts=end_pts, frame_count=end - first,
                   start_time=float(pts[first] * tb),
                   end_time=float(end_pts * tb) if end_pts is not None else segment.end_time)
