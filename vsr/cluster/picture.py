"""The one hook between the video job and the archival picture plan (issue 7).

A job's picture plan decides what happens to frames besides the network: a frame_filter for
decode_segment (deinterlace, crop), the final output size (SAR correction, --target) and the
timing of the produced frames (field rate). Without vsr.media.picture the default is no filter,
the upscaler's output size and the source's timing. The driver and every worker compute the same
plan from the same (info, scale, options), so only these small inputs cross the network.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class JobPicture:
    """What the job needs from a picture plan."""

    out_size: tuple[int, int]
    display_scale: float  # output height / source picture height (what verify checks)
    field_rate: bool = False  # two output frames per input frame
    detected: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    plan: Any = None  # vsr.media.picture.PicturePlan when present

    def frame_filter(self) -> Callable | None:
        """A fresh decode hook for one decode_segment call (None: frames pass unchanged)."""
        return self.plan.frame_filter() if self.plan is not None else None

    def output_info(self, info: Any) -> Any:
        """The MediaInfo describing the produced frames (timing, SAR) for the writer and assemble."""
        return self.plan.output_info(info) if self.plan is not None else info

    def to_dict(self) -> dict[str, Any]:
        return {"out_size": list(self.out_size), "display_scale": self.display_scale,
                "field_rate": self.field_rate, "detected": self.detected, "plan": self.summary}


def plan_job_picture(info: Any, scale: float, picture: dict[str, Any] | None) -> JobPicture:
    """The picture plan of one input for an upscaler of this scale."""
    v = info.video
    if importlib.util.find_spec("vsr.media.picture") is None:
        if picture:
            from vsr.errors import UsageError

            raise UsageError(f"picture options {sorted(picture)} need vsr.media.picture, "
                             "which this installation lacks")
        # Upscaler.output_size: round(w * scale), round(h * scale)
        size = (max(1, round(v.width * scale)), max(1, round(v.height * scale)))
        return JobPicture(out_size=size, display_scale=size[1] / v.height)
    from vsr.media import picture as media_picture

    plan = media_picture.plan_picture(info, scale, media_picture.PictureOptions.from_dict(picture or {}))
    return JobPicture(out_size=tuple(plan.out_size), display_scale=plan.display_scale,
                      field_rate=bool(plan.field_rate), detected=dict(plan.detected or {}),
                      summary=plan.to_dict(), plan=plan)
