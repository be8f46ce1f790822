"""The picture plan of archival sources: deinterlace, crop, true display aspect, target size.

plan_picture(info, upscaler_scale, options, scan) decides once, on the driver, everything about the
picture that is not the network: the one size every decoded frame is brought to (the picture size
may change mid-stream: vsr.media.framesize), whether and how to deinterlace (and at which rate),
what to crop, the output size (square pixels at the
source's display aspect unless keep_sar, fitted into a target box when asked, even where chroma
subsampling needs it) and the output's time base and frame pts. Decode takes source_size as its
fit_size and frame_filter() as its hook (vsr.media.decode.decode_segment(fit_size=...,
frame_filter=...)).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterator

import av

from vsr.errors import UsageError
from vsr.media.borders import BorderDetection, Crop, align_crop, detect_borders, parse_crop
from vsr.media.framesize import name_sizes, plan_frame_size
from vsr.media.deinterlace import (
    DEINTERLACE_MODES,
    DEINTERLACE_RATES,
    DEINTERLACERS,
    DeinterlaceCrop,
    InterlaceDetection,
    detect_interlace,
    field_pts,
    field_time_base,
)

# Named targets: (long side, short side) of the box, oriented like the picture (portrait stays portrait).
TARGETS = {"720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440), "2160p": (3840, 2160),
           "4k": (3840, 2160)}
_WXH = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")

FrameFilter = Callable[[Iterator[av.VideoFrame]], Iterator[av.VideoFrame]]


@dataclass
class PictureOptions:
    """What the user asked for (JSON-able; crosses Ray and job specs)."""

    deinterlace: str = "auto"  # auto | on | off
    deinterlace_rate: str = "frame"  # frame (25i -> 25p) | field (25i -> 50p)
    keep_sar: bool = False
    target: str | None = None  # 720p | 1080p | 1440p | 2160p | WxH
    crop: str | None = None  # None | "auto" | "W:H:X:Y"
    deinterlacer: str = "bwdif"  # bwdif | yadif

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """UsageError (one line naming the option) for anything out of range."""
        if not isinstance(self.keep_sar, bool):
            raise UsageError(f"keep_sar must be true or false, not {self.keep_sar!r}")
        for name in ("deinterlace", "deinterlace_rate", "deinterlacer"):
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"{name} must be a string, not {getattr(self, name)!r}")
        for name in ("target", "crop"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise UsageError(f"{name} must be a string like {'1080p' if name == 'target' else '704:560:8:8'}, "
                                 f"not {getattr(self, name)!r}")
        if self.deinterlace not in DEINTERLACE_MODES:
            raise UsageError(f"--deinterlace must be one of {', '.join(DEINTERLACE_MODES)}, not {self.deinterlace!r}")
        if self.deinterlace_rate not in DEINTERLACE_RATES:
            raise UsageError(f"--deinterlace-rate must be one of {', '.join(DEINTERLACE_RATES)}, "
                             f"not {self.deinterlace_rate!r}")
        if self.deinterlacer not in DEINTERLACERS:
            raise UsageError(f"deinterlacer must be one of {', '.join(DEINTERLACERS)}, not {self.deinterlacer!r}")
        if self.target is not None:
            parse_target(self.target)
        if self.crop is not None and self.crop != "auto" and not re.match(r"^\d+:\d+:\d+:\d+$", str(self.crop)):
            raise UsageError(f"--crop must be 'auto' or W:H:X:Y in pixels (e.g. 704:560:8:8), not {self.crop!r}")

    @property
    def is_default(self) -> bool:
        return self == PictureOptions()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PictureOptions":
        """From a dict (job spec / JSON); unknown keys are a UsageError naming them."""
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown picture option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def parse_target(text: str) -> tuple[int, int, bool]:
    """(width, height, named) of a --target: a preset name (orientation follows the picture) or WxH."""
    key = str(text).strip().lower()
    if key in TARGETS:
        w, h = TARGETS[key]
        return w, h, True
    m = _WXH.match(key)
    if not m or int(m.group(1)) < 2 or int(m.group(2)) < 2:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)} or WxH (e.g. 1920x1080), not {text!r}")
    return int(m.group(1)), int(m.group(2)), False


def _chroma_factors(pix_fmt: str | None) -> tuple[int, int]:
    try:
        fmt = av.VideoFormat(pix_fmt or "yuv420p")
        return max(1, 1024 // max(1, fmt.chroma_width(1024))), max(1, 1024 // max(1, fmt.chroma_height(1024)))
    except (ValueError, av.error.FFmpegError):
        return 2, 2


def _round_to(x: float, m: int, down: bool = False) -> int:
    if m <= 1:
        return max(1, int(x) if down else round(x))
    n = int(x // m) if down else round(x / m)
    return max(m, n * m)


@dataclass
class PicturePlan:
    """Everything the video job needs to know about the picture besides the network."""

    options: PictureOptions
    # (w, h) every decoded frame is brought to (decode_segment's fit_size): the stream's size, or
    # the planned one when the size changes mid-stream (vsr.media.framesize.plan_frame_size)
    source_size: tuple[int, int]
    picture_size: tuple[int, int]  # (w, h) after crop, what the network sees
    out_size: tuple[int, int]  # (w, h) the frames are written at
    output_sar: Fraction  # 1 (square pixels) unless keep_sar
    source_sar: Fraction
    deinterlace: bool
    parity: str  # tff | bff | auto
    field_rate: bool  # two output frames per input frame
    crop: Crop | None
    time_base: Fraction  # of the output frames' pts
    frame_pts: list[int]  # every output frame's pts, in time_base
    source_time_base: Fraction
    detected: dict[str, Any] = field(default_factory=dict)
    # The output follows the source's picture sizes (vsr.media.picture.follow_plan): each
    # (source w, source h, output w, output h); empty when every frame is brought to source_size.
    # source_size, picture_size and out_size are then the first frame's.
    follow_sizes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def frame_count(self) -> int:
        return len(self.frame_pts)

    @property
    def is_identity(self) -> bool:
        """True when frames pass through unchanged (no deinterlace, no crop)."""
        return not self.deinterlace and self.crop is None

    @property
    def follows(self) -> bool:
        """True when every output frame is its own source frame upscaled (sizes change in-stream)."""
        return bool(self.follow_sizes)

    def out_size_for(self, width: int, height: int) -> tuple[int, int]:
        """The output size of a source frame of width x height (out_size unless the plan follows
        the source's sizes). KeyError for a size the scan did not find."""
        if not self.follow_sizes:
            return tuple(self.out_size)  # type: ignore[return-value]
        for sw, sh, ow, oh in self.follow_sizes:
            if (sw, sh) == (width, height):
                return ow, oh
        raise KeyError(f"a frame of {width}x{height}, a size the scan did not find")

    @property
    def display_scale(self) -> float:
        """Output height over the (cropped) source height: the scale a verify of display sizes expects."""
        return self.out_size[1] / self.picture_size[1]

    def frame_filter(self) -> FrameFilter | None:
        """A fresh decode hook (one per decode; it holds a filter graph), or None when not needed."""
        if self.is_identity:
            return None
        return DeinterlaceCrop(
            deinterlace=self.deinterlace, parity=self.parity, field_rate=self.field_rate,
            deinterlacer=self.options.deinterlacer,
            crop=self.crop.as_tuple() if self.crop is not None else None,
            sar=self.source_sar, time_base=self.source_time_base, frame_pts=self._source_pts,
            out_time_base=self.time_base,
        )

    _source_pts: list[int] = field(default_factory=list, repr=False)

    def output_pts_of(self, source_pts: list[int]) -> list[int]:
        """The output pts that a run of source frames becomes (one or two each, in time_base)."""
        if not self.field_rate:
            return list(source_pts)
        index = {p: i for i, p in enumerate(self._source_pts)}
        out: list[int] = []
        for p in source_pts:
            i = index.get(p)
            if i is None:
                raise KeyError(f"pts {p} is not a frame of the source")
            out.extend(self.frame_pts[2 * i: 2 * i + 2])
        return out

    def output_info(self, info):
        """The source's MediaInfo with the video timing and SAR of the frames this plan produces.

        Hand it to the segment writer / verify in place of the source's: the time base, frame pts,
        frame count and rate follow field-rate output, the SAR is the output's, and the field order
        is progressive once deinterlaced. Size and colour stay the source's (the decode-side RGB
        conversion is chosen from them; the writer gets the output size separately).
        """
        v = info.video
        k = 2 if self.field_rate else 1
        video = dataclasses.replace(
            v, time_base=self.time_base, frame_pts=list(self.frame_pts), frame_count=len(self.frame_pts),
            keyframe_pts=self.output_pts_of(v.keyframe_pts)[::k] if self.field_rate else list(v.keyframe_pts),
            avg_rate=v.avg_rate * k if v.avg_rate else v.avg_rate,
            real_rate=v.real_rate * k if v.real_rate else v.real_rate,
            sar=self.output_sar,
            field_order="progressive" if self.deinterlace else v.field_order,
            interlaced=False if self.deinterlace else v.interlaced,
        )
        return dataclasses.replace(info, video=video)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary for reports (no per-frame lists)."""
        follow = {"follow_sizes": [list(x) for x in self.follow_sizes]} if self.follow_sizes else {}
        return {**follow,
            "options": self.options.to_dict(),
            "source_size": list(self.source_size),
            "picture_size": list(self.picture_size),
            "out_size": list(self.out_size),
            "source_sar": str(self.source_sar),
            "output_sar": str(self.output_sar),
            "deinterlace": self.deinterlace,
            "parity": self.parity,
            "field_rate": self.field_rate,
            "crop": str(self.crop) if self.crop else None,
            "time_base": str(self.time_base),
            "frame_count": self.frame_count,
            "detected": self.detected,
        }

    def describe(self) -> str:
        """One line per decision, for the job's log."""
        lines = []
        sizes = self.detected.get("frame_sizes")
        if sizes is not None:
            lines.append(sizes["note"])
        mirror = self.detected.get("mirror")
        if mirror is not None:
            lines.append(mirror["note"])
        d = self.detected.get("interlace")
        if d is not None:
            what = (f"deinterlace {self.options.deinterlacer} {self.parity} at "
                    f"{'field' if self.field_rate else 'frame'} rate" if self.deinterlace else "no deinterlacing")
            lines.append(f"{what} ({d['reason']})")
        b = self.detected.get("borders")
        if b is not None:
            lines.append(b["describe"])
        elif self.crop is not None:
            lines.append(f"crop {self.crop} (manual)")
        lines.append(f"{self.picture_size[0]}x{self.picture_size[1]} SAR {self.source_sar} -> "
                     f"{self.out_size[0]}x{self.out_size[1]} SAR {self.output_sar}"
                     + (f" (target {self.options.target})" if self.options.target else "")
                     + (f" (the first frame's size; {len(self.follow_sizes) - 1} more each at its own)"
                        if self.follows else ""))
        return "\n".join(lines)


def output_geometry(width: int, height: int, sar: Fraction, scale: float, *, keep_sar: bool = False,
                    target: str | None = None, rotation: int = 0, pix_fmt: str | None = None
                    ) -> tuple[tuple[int, int], Fraction]:
    """(out_size, output_sar) for a picture of width x height stored pixels with sample aspect sar.

    Default: square pixels at the display aspect (width*sar : height), height x scale.
    keep_sar: the stored size x scale with the source's SAR. target: fitted inside the box
    (display aspect kept); a named box follows the picture's orientation, a WxH box is taken as
    displayed (swapped for a 90/270 degree rotation). Sizes are multiples of the chroma subsampling.
    """
    sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
    display_w = width * sar  # in source lines' units
    mx, my = _chroma_factors(pix_fmt)
    if target is None:
        if keep_sar or sar == 1:
            w, h = width * scale, height * scale
            if sar == 1 and mx == my == 1:
                return (max(1, round(w)), max(1, round(h))), sar
            return (_round_to(w, mx), _round_to(h, my)), sar
        return (_round_to(float(display_w) * scale, mx), _round_to(height * scale, my)), Fraction(1)
    tw, th, named = parse_target(target)
    if named:
        if display_w < height:  # portrait picture: portrait box
            tw, th = th, tw
    elif abs(int(rotation or 0)) % 180 == 90:
        tw, th = th, tw
    f = min(tw / float(display_w), th / float(height))
    out_h = _round_to(height * f, my, down=True)
    out_disp_w = float(display_w) * f
    if keep_sar:
        return (_round_to(out_disp_w / float(sar), mx, down=True), out_h), sar
    return (_round_to(out_disp_w, mx, down=True), out_h), Fraction(1)


def plan_picture(info, upscaler_scale: float, options: PictureOptions | None = None, scan: Any = None,
                 follow: bool = False) -> PicturePlan:
    """Decide the frame size, deinterlacing, crop, output size/SAR and output timing for one input.

    scan: the input's vsr.media.decode.ScanReport, whose frame sizes decide the size every frame is
    brought to when the size changes mid-stream (plan_frame_size); None: the stream's declared size.
    follow: the encoder can change the picture size in-stream: frames of several sizes are then
    each upscaled at their own size (follow_plan) unless a crop, target or deinterlacing
    needs one picture size.
    Reads a few frames of the input for auto-detection (interlace flags when the field order is
    unknown; --crop auto samples frames over the whole file). Raises UsageError for bad options.
    """
    options = options or PictureOptions()
    options.validate()
    v = info.video
    detected: dict[str, Any] = {}
    (frame_w, frame_h), size_note = plan_frame_size(info, scan)
    if size_note is not None:
        detected["frame_sizes"] = {"sizes": [list(x) for x in scan.frame_sizes], "planned": [frame_w, frame_h],
                                   "note": size_note}
    if getattr(v, "mirrored", False):
        # the pixels stay as stored and the output carries the source's display matrix, so a
        # player shows both the same way (and a later edit of the matrix applies to both)
        detected["mirror"] = {"mirrored": True, "note": "display matrix mirrors the picture: the output "
                              "carries the same matrix (pixels kept as stored)"}
    inter: InterlaceDetection = detect_interlace(info, options.deinterlace)
    detected["interlace"] = inter.to_dict()

    crop: Crop | None = None
    if options.crop == "auto" and len(getattr(scan, "frame_sizes", None) or []) > 1:
        # the bars around frames of another size are vsr's own, not the source's borders
        detected["borders"] = {"found": False, "describe": "no automatic crop: the picture size changes mid-stream"}
    elif options.crop == "auto":
        found: BorderDetection = detect_borders(info.path, info)
        detected["borders"] = {**found.to_dict(), "describe": found.describe()}
        if found.found:
            crop = found.crop
    elif options.crop:
        crop = align_crop(parse_crop(options.crop, frame_w, frame_h), frame_w, frame_h, v.pix_fmt)
    pic_w, pic_h = (crop.w, crop.h) if crop else (frame_w, frame_h)

    sar = Fraction(v.sar) if v.sar and v.sar > 0 else Fraction(1)
    out_size, out_sar = output_geometry(pic_w, pic_h, sar, float(upscaler_scale), keep_sar=options.keep_sar,
                                        target=options.target, rotation=getattr(v, "rotation", 0),
                                        pix_fmt=v.pix_fmt)

    field_rate = inter.interlaced and options.deinterlace_rate == "field"
    src_tb = Fraction(v.time_base)
    pts = list(v.frame_pts)
    if field_rate:
        tb = field_time_base(src_tb, pts)
        last = v.frame_duration_ticks() if hasattr(v, "frame_duration_ticks") else None
        out_pts = field_pts(pts, src_tb, tb, last)
    else:
        tb, out_pts = src_tb, pts
    plan = PicturePlan(
        options=options, source_size=(frame_w, frame_h), picture_size=(pic_w, pic_h), out_size=out_size,
        output_sar=out_sar, source_sar=sar, deinterlace=inter.interlaced, parity=inter.parity,
        field_rate=field_rate, crop=crop, time_base=tb, frame_pts=out_pts, source_time_base=src_tb,
        detected=detected,
    )
    plan._source_pts = pts
    if follow and size_note is not None and len(scan.frame_sizes) > 1:
        plan = follow_plan(plan, scan.frame_sizes, float(upscaler_scale), v.pix_fmt)
    return plan


def follow_plan(plan: PicturePlan, sizes: list, scale: float, pix_fmt: str | None) -> PicturePlan:
    """The plan with the output following the source's picture sizes: each frame upscaled at its
    own size (output_geometry of that size, so the chroma rounding is the same), the output
    changing size where the source does. A checker (and a player) sees the source's size after
    any frame x scale, so one canvas for all would be wrong for all sizes but the largest. Kept
    as one canvas (the note says why) when a crop, target box or deinterlacing is planned:
    those work on one picture size."""
    note = plan.detected["frame_sizes"]["note"]
    why = [name for name, on in (("a crop", plan.crop is not None), ("a target size", plan.options.target),
                                 ("deinterlacing", plan.deinterlace)) if on]
    if why:
        plan.detected["frame_sizes"]["note"] = f"{note} ({' and '.join(why)} needs one picture size)"
        return plan
    mapping = []
    for w, h, _ in sizes:
        (ow, oh), _sar = output_geometry(w, h, plan.source_sar, scale, keep_sar=plan.options.keep_sar,
                                         pix_fmt=pix_fmt)
        mapping.append((int(w), int(h), int(ow), int(oh)))
    first = mapping[0]
    detected = dict(plan.detected)
    detected["frame_sizes"] = dict(detected["frame_sizes"], planned=list(first[:2]),
                                   note=follow_note(sizes), follow=True)
    followed = dataclasses.replace(plan, source_size=first[:2], picture_size=first[:2], out_size=first[2:],
                                   follow_sizes=mapping, detected=detected)
    followed._source_pts = plan._source_pts
    return followed


def follow_note(sizes: list) -> str:
    """"frames of 9 sizes (160x90 ... 1920x1080): the output follows them (VP9, which changes
    size in-stream)"."""
    return f"{name_sizes(sizes)}: the output follows them (VP9, which changes size in-stream)"
