"""plan_segments: keyframe-aligned, frame-exact partitions of the main video stream."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass
from typing import Any

from vsr.errors import UsageError
from vsr.media.probe import MediaInfo


@dataclass(frozen=True)
class Segment:
    """Frames with start_pts <= pts < end_pts of the main video stream (end_pts None: to the end).

    start_pts is a keyframe (or the first frame), so a decoder can start there on its own.
    """

    index: int
    start_pts: int
    end_pts: int | None
    frame_count: int
    start_time: float
    end_time: float

    def contains(self, pts: int) -> bool:
        """True when a frame with this pts belongs to this segment."""
        return pts >= self.start_pts and (self.end_pts is None or pts < self.end_pts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (crosses Ray and manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Segment":
        """Inverse of to_dict."""
        return cls(
            index=int(d["index"]),
            start_pts=int(d["start_pts"]),
            end_pts=None if d.get("end_pts") is None else int(d["end_pts"]),
            frame_count=int(d["frame_count"]),
            start_time=float(d["start_time"]),
            end_time=float(d["end_time"]),
        )


def plan_segments(info: MediaInfo, target_seconds: float) -> list[Segment]:
    """Cut the video at keyframes into segments of about target_seconds (<= 0: one segment).

    Every frame of info.video.frame_pts falls in exactly one segment, in order; a segment
    can be longer than the target when keyframes are sparse.
    """
    v = info.video
    pts = v.frame_pts
    if not pts:
        raise UsageError(f"{info.path}: no frames to plan")
    tb = v.time_base
    target = target_seconds if target_seconds and target_seconds > 0 else float("inf")
    starts = [pts[0]]
    for k in v.keyframe_pts:
        if k <= starts[-1]:
            continue
        if float((k - starts[-1]) * tb) >= target:
            starts.append(k)
    end_time = float(v.end_pts() * tb)
    segments = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else None
        lo = bisect_left(pts, start)
        hi = bisect_left(pts, end) if end is not None else len(pts)
        segments.append(Segment(
            index=i,
            start_pts=start,
            end_pts=end,
            frame_count=hi - lo,
            start_time=float(start * tb),
            end_time=float(end * tb) if end is not None else end_time,
        ))
    return segments
