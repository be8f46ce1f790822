"""The one hook between the video job and the archival picture plan (issue 7).

A job's picture plan decides what happens to frames besides the network: a frame_filter for
decode_segment (deinterlace, crop) and the final output size (SAR correction, --target). The
default is no filter and the upscaler's own output size. When vsr.media.picture exists, its
plan_picture(info, upscaler_scale, PictureOptions) supplies both.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class JobPicture:
    """What the job needs from a picture plan; `make_filter` builds a fresh frame_filter."""

    out_size: tuple[int, int]
    make_filter: Callable[[], Callable | None] = lambda: None
    output_sar: Any = None
    field_rate: bool = False  # two output frames per input frame
    display_scale: float | None = None  # output height / source picture height (for verify)
    detected: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # the full plan's summary, for reports

    def frame_filter(self) -> Callable | None:
        return self.make_filter()

    def to_dict(self) -> dict[str, Any]:
        sar = self.output_sar
        return {"out_size": list(self.out_size), "output_sar": None if sar is None else str(sar),
                "field_rate": bool(self.field_rate), "display_scale": self.display_scale,
                "detected": self.detected, "plan": self.plan}


def plan_job_picture(info: Any, upscaler: Any, picture: dict[str, Any] | None) -> JobPicture:
    """The picture plan of one input for this upscaler (default, or vsr.media.picture's)."""
    video = info.video
    default_size = tuple(upscaler.output_size(video.width, video.height))
    default_scale = default_size[1] / video.height
    if importlib.util.find_spec("vsr.media.picture") is None:
        if picture:
            from vsr.errors import UsageError

            raise UsageError(f"picture options {sorted(picture)} need vsr.media.picture, "
                             "which this installation lacks")
        return JobPicture(out_size=default_size, display_scale=default_scale)
    from vsr.media import picture as media_picture

    try:
        opts = media_picture.PictureOptions.from_dict(picture or {})
    except TypeError as err:
        from vsr.errors import UsageError

        raise UsageError(f"picture options: {err}") from None
    plan = media_picture.plan_picture(info, upscaler.scale, opts)
    return JobPicture(
        out_size=tuple(plan.out_size), make_filter=plan.frame_filter, output_sar=plan.output_sar,
        field_rate=bool(plan.field_rate), display_scale=plan.display_scale,
        detected=dict(plan.detected or {}), plan=plan.to_dict(),
    )
