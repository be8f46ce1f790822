"""Interlacing: detection, FFmpeg's bwdif/yadif through PyAV's filter graph, field-rate timing, comb metric.

Field-rate timing: every input frame yields two output frames; the first field keeps the frame's
pts, the second sits halfway to the next frame's pts (taken from the probe's frame list, so the
result does not depend on where a segment ends). When every frame step is an even number of ticks
the input time base is kept; otherwise the output time base is half the input's (pts doubled).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator

import av
import numpy as np

from vsr.errors import InputError, UsageError

DEINTERLACE_MODES = ("auto", "on", "off")
DEINTERLACE_RATES = ("frame", "field")
DEINTERLACERS = ("bwdif", "yadif")

# FFmpeg AVFieldOrder names (probe's field_order) -> the field shown first.
# tt/bt: top field displayed first; bb/tb: bottom field displayed first.
_FIRST_FIELD = {"tt": "tff", "bt": "tff", "tff": "tff", "bb": "bff", "tb": "bff", "bff": "bff"}
# DV (IEC 61834 / SMPTE 314M) stores both NTSC and PAL as bottom field first.
_BFF_CODECS = {"dvvideo"}


@dataclass
class InterlaceDetection:
    """What auto-detection found: interlaced or not, which field comes first, and why."""

    interlaced: bool
    parity: str  # "tff" | "bff" | "auto" (each frame's own flag)
    reason: str
    flagged_frames: int = 0
    sampled_frames: int = 0

    def to_dict(self) -> dict:
        return {"interlaced": self.interlaced, "parity": self.parity, "reason": self.reason,
                "flagged_frames": self.flagged_frames, "sampled_frames": self.sampled_frames}


def first_field(field_order: object) -> str | None:
    """'tff', 'bff', 'progressive' or None (unknown) from a probe field order (name or AVFieldOrder int)."""
    if field_order is None:
        return None
    if isinstance(field_order, int):
        field_order = {1: "progressive", 2: "tt", 3: "bb", 4: "tb", 5: "bt"}.get(field_order)
        if field_order is None:
            return None
    name = str(field_order).lower()
    if name == "progressive":
        return "progressive"
    return _FIRST_FIELD.get(name)


def count_interlaced_frames(path: str | os.PathLike, stream_index: int, frames: int = 12) -> tuple[int, int]:
    """(flagged, decoded) over the first `frames` decoded frames of a stream."""
    flagged = decoded = 0
    try:
        with av.open(str(path)) as c:
            stream = next(s for s in c.streams if s.index == stream_index)
            for f in c.decode(stream):
                decoded += 1
                flagged += bool(f.interlaced_frame)
                if decoded >= frames:
                    break
    except (av.error.FFmpegError, StopIteration) as err:
        raise InputError(f"{path}: cannot decode video stream #{stream_index} to detect interlacing: "
                         f"{' '.join(str(err).split())}") from None
    return flagged, decoded


def detect_interlace(info, mode: str = "auto") -> InterlaceDetection:
    """Decide whether to deinterlace and with which field first.

    auto: interlaced when the stream's field order says tt/bb/tb/bt, or, when the field order is
    unknown, when most of the first decoded frames carry the interlaced flag. Parity comes from the
    field order; DV is bottom field first by specification; otherwise each frame's own flag.
    """
    if mode not in DEINTERLACE_MODES:
        raise UsageError(f"--deinterlace must be one of {', '.join(DEINTERLACE_MODES)}, not {mode!r}")
    v = info.video
    order = first_field(getattr(v, "field_order", None))
    codec = (getattr(v, "codec", None) or "").lower()
    parity = order if order in ("tff", "bff") else ("bff" if codec in _BFF_CODECS else "auto")
    if mode == "off":
        return InterlaceDetection(False, parity, "deinterlacing off (--deinterlace off)")
    if mode == "on":
        return InterlaceDetection(True, parity, "deinterlacing forced (--deinterlace on)")
    if order in ("tff", "bff"):
        return InterlaceDetection(True, parity, f"stream field order {v.field_order} ({order})")
    if order == "progressive":
        return InterlaceDetection(False, "auto", "stream field order progressive")
    flagged, decoded = count_interlaced_frames(info.path, v.index)
    if decoded and flagged * 2 > decoded:
        why = f"field order unknown, {flagged}/{decoded} frames flagged interlaced"
        if codec in _BFF_CODECS:
            why += "; DV is bottom field first"
        return InterlaceDetection(True, parity, why, flagged, decoded)
    return InterlaceDetection(False, "auto", f"field order unknown, {flagged}/{decoded} frames flagged interlaced",
                              flagged, decoded)


def field_time_base(time_base: Fraction, frame_pts: list[int]) -> Fraction:
    """Output time base at field rate: the input's when every frame step is even, else half of it."""
    steps = {b - a for a, b in zip(frame_pts, frame_pts[1:])}
    if steps and all(s % 2 == 0 for s in steps):
        return Fraction(time_base)
    return Fraction(time_base) / 2


def field_pts(frame_pts: list[int], time_base: Fraction, out_time_base: Fraction,
              last_step: int | None = None) -> list[int]:
    """Every output frame's pts at field rate (two per input frame) in out_time_base."""
    k = int(Fraction(time_base) / Fraction(out_time_base))  # 1 or 2
    if not frame_pts:
        return []
    steps = [b - a for a, b in zip(frame_pts, frame_pts[1:])]
    if last_step is None:
        last_step = sorted(steps)[len(steps) // 2] if steps else 2
    out = []
    for i, p in enumerate(frame_pts):
        step = steps[i] if i < len(steps) else last_step
        out.append(p * k)
        out.append(p * k + (step * k) // 2)
    return out


class DeinterlaceCrop:
    """A frame filter: decoded frames in, deinterlaced and/or cropped frames out (FFmpeg filters,
    in that order: the crop is in the source's pixels).

    One instance per decode (it keeps a filter graph); the pts of the output frames are set in
    `out_time_base` (see the module docstring for field rate).
    """

    def __init__(self, *, deinterlace: bool, parity: str = "auto", field_rate: bool = False,
                 deinterlacer: str = "bwdif", crop: tuple[int, int, int, int] | None = None,
                 sar: Fraction = Fraction(1), time_base: Fraction, frame_pts: list[int] | None = None,
                 out_time_base: Fraction | None = None) -> None:
        if deinterlacer not in DEINTERLACERS:
            raise UsageError(f"deinterlacer must be one of {', '.join(DEINTERLACERS)}, not {deinterlacer!r}")
        self.deinterlace = deinterlace
        self.parity = parity
        self.field_rate = field_rate and deinterlace
        self.deinterlacer = deinterlacer
        self.crop = crop
        self.sar = Fraction(sar or 1)
        self.time_base = Fraction(time_base)
        self.out_time_base = Fraction(out_time_base or time_base)
        pts = sorted(frame_pts or [])
        self._next = dict(zip(pts, pts[1:]))
        steps = sorted(b - a for a, b in zip(pts, pts[1:]))
        self._typical_step = steps[len(steps) // 2] if steps else None
        self.frames_in = 0
        self.frames_out = 0

    def _graph(self, frame: av.VideoFrame) -> av.filter.Graph:
        g = av.filter.Graph()
        sar = self.sar if self.sar > 0 else Fraction(1)
        src = g.add("buffer", video_size=f"{frame.width}x{frame.height}",
                    pix_fmt=str(int(av.VideoFormat(frame.format.name))), time_base=str(self.time_base),
                    pixel_aspect=f"{sar.numerator}/{sar.denominator}")
        last = src
        if self.deinterlace:
            mode = "send_field" if self.field_rate else "send_frame"
            parity = {"tff": "tff", "bff": "bff"}.get(self.parity, "auto")
            node = g.add(self.deinterlacer, f"mode={mode}:parity={parity}:deint=all")
            last.link_to(node)
            last = node
            if self.field_rate:
                # Both fields inherit the frame's side data; closed captions (A53) belong to the
                # frame once, so the second field (odd output) drops them instead of repeating them.
                node = g.add("sidedata", "mode=delete:type=A53_CC:enable=mod(n,2)")
                last.link_to(node)
                last = node
        if self.crop is not None:
            w, h, x, y = self.crop
            node = g.add("crop", f"w={w}:h={h}:x={x}:y={y}:exact=1")
            last.link_to(node)
            last = node
        sink = g.add("buffersink")
        last.link_to(sink)
        g.configure()
        return g

    def _timed(self, frame: av.VideoFrame, in_pts: int | None, second: bool) -> av.VideoFrame:
        k = int(self.time_base / self.out_time_base)
        if in_pts is None:
            return frame
        if not second:
            pts = in_pts * k
        else:
            step = self._next.get(in_pts, in_pts + (self._typical_step or 2)) - in_pts
            pts = in_pts * k + (step * k) // 2
        frame.pts = pts
        frame.time_base = self.out_time_base
        return frame

    def __call__(self, frames: Iterable[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        graph: av.filter.Graph | None = None
        pending: list[int | None] = []  # input pts not yet fully emitted, oldest first
        per_input = 2 if self.field_rate else 1
        emitted = 0  # outputs already emitted for pending[0]

        def drain() -> Iterator[av.VideoFrame]:
            nonlocal emitted
            while True:
                try:
                    out = graph.pull()
                except (av.BlockingIOError, BlockingIOError, av.EOFError):
                    return
                in_pts = pending[0] if pending else None
                out = self._timed(out, in_pts, second=emitted == 1)
                emitted += 1
                if emitted == per_input and pending:
                    pending.pop(0)
                    emitted = 0
                self.frames_out += 1
                yield out

        for frame in frames:
            if graph is None:
                graph = self._graph(frame)
            pending.append(frame.pts)
            self.frames_in += 1
            graph.push(frame)
            yield from drain()
        if graph is not None:
            graph.push(None)
            yield from drain()


def comb_energy(luma: np.ndarray) -> float:
    """Energy of the vertical line-alternating component (combing) of a luma picture (H,W).

    The residual of each line against the mean of its neighbours above and below: interlace
    combing alternates line by line, so it dominates this residual; smooth detail barely does.
    """
    y = np.asarray(luma, dtype=np.float64)
    if y.ndim == 3:
        y = y @ np.array([0.299, 0.587, 0.114]) if y.shape[2] == 3 else y[..., 0]
    if y.shape[0] < 3:
        return 0.0
    r = y[1:-1] - 0.5 * (y[:-2] + y[2:])
    return float(np.mean(r * r))
