"""Crop: parse a manual W:H:X:Y, or detect constant black borders and VHS head-switching noise.

Detection samples frames spread over the file (seeks, one frame each), looks at luma only, and
calls a line or column border only when it is dark in every sampled frame, so one dark scene does
not get cropped. Head-switching noise: a band at the very bottom, separated from the picture by a
discontinuity that sits on the same line in (almost) every sampled frame.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import av
import numpy as np

from vsr.errors import InputError, UsageError

BLACK_LEVEL = 32  # luma (0..255 scale, after swscale's gray conversion) at or below which a line is dark
MAX_CROP_FRACTION = 0.45  # never crop more than this of either dimension by detection


@dataclass
class Crop:
    """A crop rectangle in source pixels: width, height and the top-left corner."""

    w: int
    h: int
    x: int
    y: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.w, self.h, self.x, self.y)

    def __str__(self) -> str:
        return f"{self.w}:{self.h}:{self.x}:{self.y}"

    def to_dict(self) -> dict:
        return {"w": self.w, "h": self.h, "x": self.x, "y": self.y}


@dataclass
class BorderDetection:
    """What --crop auto found: the crop, the border on each side, and the frames it looked at."""

    crop: Crop
    top: int
    bottom: int
    left: int
    right: int
    head_switching: int  # bottom lines of VHS head-switching noise (part of `bottom`)
    sampled_frames: int
    notes: list[str] = field(default_factory=list)
    decoded_frames: int = 0

    @property
    def found(self) -> bool:
        return any((self.top, self.bottom, self.left, self.right))

    def to_dict(self) -> dict:
        return {"crop": str(self.crop), "top": self.top, "bottom": self.bottom, "left": self.left,
                "right": self.right, "head_switching": self.head_switching,
                "sampled_frames": self.sampled_frames, "decoded_frames": self.decoded_frames,
                "notes": self.notes}

    def describe(self) -> str:
        if not self.found:
            return f"no constant borders found over {self.sampled_frames} sampled frames"
        parts = [f"{n} {side}" for n, side in ((self.top, "top"), (self.bottom, "bottom"),
                                               (self.left, "left"), (self.right, "right")) if n]
        hs = f" (incl. {self.head_switching} lines of head-switching noise)" if self.head_switching else ""
        return f"crop {self.crop}: borders {', '.join(parts)}{hs} over {self.sampled_frames} sampled frames"


_CROP_RE = re.compile(r"^\s*(\d+):(\d+):(\d+):(\d+)\s*$")


def parse_crop(text: str, width: int, height: int) -> Crop:
    """A manual crop 'W:H:X:Y' checked against the source size; UsageError names the problem."""
    m = _CROP_RE.match(text or "")
    if not m:
        raise UsageError(f"--crop must be 'auto' or W:H:X:Y in pixels (e.g. 704:560:8:8), not {text!r}")
    w, h, x, y = (int(g) for g in m.groups())
    if w < 2 or h < 2:
        raise UsageError(f"--crop {text}: width and height must be at least 2")
    if x + w > width or y + h > height:
        raise UsageError(f"--crop {text}: rectangle exceeds the {width}x{height} picture")
    return Crop(w, h, x, y)


def align_crop(crop: Crop, width: int, height: int, pix_fmt: str | None) -> Crop:
    """Shrink a crop inwards to the chroma grid of pix_fmt (4:2:0 -> even offsets and sizes)."""
    ax = ay = 2
    try:
        fmt = av.VideoFormat(pix_fmt or "yuv420p")
        # chroma_width(n) is n >> log2_chroma_w: the subsampling factor follows from a large n.
        ax, ay = max(1, 1024 // max(1, fmt.chroma_width(1024))), max(1, 1024 // max(1, fmt.chroma_height(1024)))
    except (ValueError, av.error.FFmpegError):
        pass
    x0 = -(-crop.x // ax) * ax
    y0 = -(-crop.y // ay) * ay
    x1 = ((crop.x + crop.w) // ax) * ax
    y1 = ((crop.y + crop.h) // ay) * ay
    if x1 - x0 < 2 * ax or y1 - y0 < 2 * ay:
        raise UsageError(f"crop {crop} is too small for {pix_fmt} chroma alignment")
    return Crop(x1 - x0, y1 - y0, x0, y0)


MAX_DECODE_PER_SAMPLE = 24  # frames decoded after a seek before settling for the current one


def sample_luma(path: str | os.PathLike, stream_index: int, frame_pts: list[int], samples: int = 9
                ) -> tuple[list[np.ndarray], int]:
    """Luma (H,W uint8) of up to `samples` frames spread over the stream, and the frames decoded.

    One seek per sample; with long GOPs the frame taken is at most MAX_DECODE_PER_SAMPLE frames
    past the keyframe (any frame serves for border statistics), so the cost stays bounded.
    """
    if not frame_pts:
        return [], 0
    n = len(frame_pts)
    # Skip the first/last 5% (fades, leaders) when there is enough material.
    lo, hi = (n // 20, n - 1 - n // 20) if n >= 40 else (0, n - 1)
    picks = sorted({frame_pts[round(lo + (hi - lo) * i / max(1, samples - 1))] for i in range(samples)})
    out: list[np.ndarray] = []
    taken: set[int] = set()
    decoded = 0
    try:
        with av.open(str(path)) as c:
            s = next(st for st in c.streams if st.index == stream_index)
            for target in picks:
                c.seek(target, stream=s, backward=True, any_frame=False)
                since_seek = 0
                for f in c.decode(s):
                    decoded += 1
                    since_seek += 1
                    if f.pts is not None and f.pts < target and since_seek < MAX_DECODE_PER_SAMPLE:
                        continue
                    if f.pts not in taken:
                        taken.add(f.pts)
                        out.append(f.to_ndarray(format="gray"))
                    break
    except (av.error.FFmpegError, StopIteration) as err:
        raise InputError(f"{path}: cannot decode frames for border detection: {' '.join(str(err).split())}") from None
    return out, decoded


def _dark_run(profile_max: np.ndarray, profile_mean: np.ndarray, limit: int) -> int:
    """How many leading entries are dark (bright pixels rare, mean near black), up to limit."""
    n = 0
    while n < limit and profile_max[n] <= BLACK_LEVEL + 24 and profile_mean[n] <= BLACK_LEVEL:
        n += 1
    return n


def _head_switching(lumas: list[np.ndarray], bottom: int) -> int:
    """Lines of head-switching noise just above the black bottom border (0 when none)."""
    h = lumas[0].shape[0]
    band = max(2, min(16, round(0.03 * h)))
    rows = []
    for y in lumas:
        y = y.astype(np.float32)[: h - bottom]
        d = np.mean(np.abs(np.diff(y, axis=0)), axis=1)  # d[i]: line i vs line i+1
        typical = float(np.median(d)) + 1.0
        tail = d[-band:]
        i = int(np.argmax(tail))
        if tail[i] >= 6.0 * typical:
            rows.append(len(d) - band + i + 1)  # first noisy line
        else:
            rows.append(None)
    found = [r for r in rows if r is not None]
    if not found or len(found) < max(2, int(0.8 * len(rows))):
        return 0
    first = int(np.median(found))
    if sum(abs(r - first) <= 1 for r in found) < max(2, int(0.8 * len(rows))):
        return 0
    return (h - bottom) - min(r for r in found if abs(r - first) <= 1)


def detect_borders(path: str | os.PathLike, info, samples: int = 9) -> BorderDetection:
    """Detect constant black borders (letterbox, pillarbox) and VHS head-switching noise."""
    v = info.video
    lumas, decoded = sample_luma(path, v.index, v.frame_pts, samples)
    if not lumas:
        raise InputError(f"{path}: no decodable frames for border detection")
    if any(y.shape != (v.height, v.width) for y in lumas):
        # the picture size changes mid-stream (vsr.media.framesize): frames of another size get
        # bars of vsr's own, and borders found in the source's frames would not fit them
        return BorderDetection(Crop(v.width, v.height, 0, 0), 0, 0, 0, 0, 0, len(lumas),
                               ["the picture size changes mid-stream: no automatic crop"], decoded)
    stack = np.stack(lumas).astype(np.float32)  # (S,H,W)
    h, w = stack.shape[1:]
    row_max = np.percentile(stack, 99, axis=2).max(axis=0)  # worst frame per line
    row_mean = stack.mean(axis=2).max(axis=0)
    col_max = np.percentile(stack, 99, axis=1).max(axis=0)
    col_mean = stack.mean(axis=1).max(axis=0)
    lim_h, lim_w = int(MAX_CROP_FRACTION * h), int(MAX_CROP_FRACTION * w)
    top = _dark_run(row_max, row_mean, lim_h)
    bottom = _dark_run(row_max[::-1], row_mean[::-1], lim_h)
    left = _dark_run(col_max, col_mean, lim_w)
    right = _dark_run(col_max[::-1], col_mean[::-1], lim_w)
    notes = []
    if top >= lim_h or bottom >= lim_h or left >= lim_w or right >= lim_w:
        notes.append("picture is dark in every sampled frame; not cropping")
        top = bottom = left = right = 0
    head = 0
    if len(lumas) >= 3 and h >= 64:
        head = _head_switching([y[top:] for y in lumas], bottom)
        bottom += head
    crop = Crop(w - left - right, h - top - bottom, left, top)
    crop = align_crop(crop, v.width, v.height, v.pix_fmt)
    return BorderDetection(crop, crop.y, h - crop.y - crop.h, crop.x, w - crop.x - crop.w, head,
                           len(lumas), notes, decoded)
