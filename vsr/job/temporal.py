"""What a segment of a temporal (recurrent) model decodes beyond its own frames.

A recurrent model's output depends on every frame before it, and each step also sees the next
frame. Every segment decodes one frame after its last (the last frame's next neighbour, as in a
one-segment run). A segment that runs right after the one before it in the same process goes
on from that segment's final state (vsr.job.handover: the worker keeps it, the scheduler gives
a worker slot consecutive segments) and decodes nothing before its first frame: its frames are
those of a one-segment run, bit for bit. Any other segment (the start of a worker slot's range,
one taken over from another slot, retried, or resumed after an earlier run) runs on its own: it
decodes and runs frames before its first one (a warm-up: their outputs are discarded).

By default the state never restarts (as upstream) and a segment warms up WARMUP_FRAMES frames:
it comes close to a one-segment run as far as the state forgets its start, and the segments
that go on from it by hand-over keep that small difference. With a state
period R (ModelPlan.state_period) the state restarts at every R-th frame of the file (frame
index a multiple of R: zero state, the frame its own previous neighbour as at the file's
start, but still the next one of the frame before it), a segment warms up from the restart at
or before its first frame (at most R - 1 frames), and every split of the file gives the frames
of a one-segment run bit for bit. Segments stay keyframe-aligned: the warm-up may start
anywhere, since the decoder seeks to the keyframe at or before it and drops the frames before
(vsr.media.decode). The plan records the warm-up and period; the worker only follows them.
"""

from __future__ import annotations

from bisect import bisect_left

from vsr.media.probe import MediaInfo
from vsr.media.segments import Segment

# Frames a segment runs before its first one when the state never restarts. Measured
# (docs/benchmarks.md, benchmarks/animesr_warmup.py, AnimeSR v2 fp32, 2-core AMD EPYC): the
# first frame of a segment warmed up by K frames against the same frame of a one-segment run
# climbs from 33 dB (K = 0) to 47.6 dB (K = 8) on live action and no further (47.3 at K = 10,
# 46.9 at 12), and stays at 48.5-49.8 dB on animation whatever K (0 to 12): the state never
# forgets its start exactly, so 8 frames reach what warming up can. Restarting it every R
# frames (JobOptions.state_period) makes every split exact instead, but each restart changes
# the output as much as a cold start does (33 dB on live action): a pulse every R frames, so
# it is not the default.
WARMUP_FRAMES = 8
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
