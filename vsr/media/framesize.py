"""Streams whose picture size changes mid-stream: one planned size, every frame scaled to it.

VP8/VP9/AV1 (and H.264/HEVC at a new sequence header) may change the coded size from one frame
to the next: WebRTC and MediaRecorder recordings follow the bandwidth, libvpx and libaom resize
internally. Where the output keeps one size, vsr plans it (plan_frame_size, from the sizes the
decode-only scan found) and scales every frame to fill it, as a player scales a resized VP9/AV1
frame to the stream's render size: the encoder shrank the picture, not the scene, so no bars.
FrameFitter does that on the decoded frame, in its own pixel format, before the frames of a chunk
are stacked and converted to RGB, so the colour conversion that follows is the stream's own
(matrix and range) whatever the frame's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import av

# One run of a size: (width, height, frames), in the order the sizes first appear.
FrameSizeCount = tuple[int, int, int]


def plan_frame_size(info: Any, scan: Any = None) -> tuple[tuple[int, int], str | None]:
    """(width, height) every decoded frame is brought to, and a note for the plan and the log
    (None when the stream keeps the size it declares).

    scan: a vsr.media.decode.ScanReport (its frame_sizes), or None when the scan was off: then the
    stream's declared size is all there is, and decode fits any frame of another size into it.

    The planned size is the smallest picture that holds every frame at its own resolution: the
    largest width and the largest height any frame has (the largest frame when, as usual, they share
    an aspect). No frame is ever shrunk, so no detail is thrown away before the network; frames of
    that size pass untouched. The declared size is not used when frames were seen: it is only what
    the container header says (IVF and Matroska write the first frame's size), and av1_sizeup
    declares 352x288 and turns 1280x720 halfway.
    """
    v = info.video
    declared = (int(v.width), int(v.height))
    sizes = list(getattr(scan, "frame_sizes", None) or [])
    if not sizes:
        return declared, None
    if len(sizes) == 1:
        (w, h, _), = sizes
        if (w, h) == declared:
            return declared, None
        return (w, h), f"every frame is {w}x{h} (the stream declares {declared[0]}x{declared[1]})"
    planned = (max(w for w, _, _ in sizes), max(h for _, h, _ in sizes))
    return planned, describe_sizes(sizes, planned)


def name_sizes(sizes: Sequence[FrameSizeCount]) -> str:
    """"frames of 9 sizes (160x90 ... 1920x1080)" (two sizes: both named), smallest first."""
    by_area = sorted({(w, h) for w, h, _ in sizes}, key=lambda s: (s[0] * s[1], s))
    named = [f"{w}x{h}" for w, h in by_area]
    span = ", ".join(named) if len(named) <= 2 else f"{named[0]} ... {named[-1]}"
    return f"frames of {len(named)} sizes ({span})"


def describe_sizes(sizes: Sequence[FrameSizeCount], planned: tuple[int, int]) -> str:
    """"frames of 9 sizes (160x90 ... 1920x1080) scaled to 1920x1080"."""
    return f"{name_sizes(sizes)} scaled to {planned[0]}x{planned[1]}"


@dataclass
class FrameFitter:
    """Brings decoded frames of any size to `canvas` (w, h): unchanged when they have it, else
    scaled to fill it (FFmpeg's scale filter), in their own pixel format. color_range
    ("MPEG"/"JPEG") is the range the stream is converted with. One instance per decode: it keeps
    a filter graph per frame size it met; `fitted` counts the frames it changed."""

    canvas: tuple[int, int]
    color_range: str | None = None
    fitted: int = field(default=0, init=False)
    _graphs: dict[tuple[int, int, str], av.filter.Graph] = field(default_factory=dict, init=False, repr=False)

    def _graph(self, frame: av.VideoFrame) -> av.filter.Graph:
        key = (frame.width, frame.height, frame.format.name)
        graph = self._graphs.get(key)
        if graph is not None:
            return graph
        fw, fh = self.canvas
        graph = av.filter.Graph()
        args = {"video_size": f"{frame.width}x{frame.height}", "pix_fmt": str(int(av.VideoFormat(frame.format.name))),
                "time_base": str(frame.time_base or "1/1000"), "pixel_aspect": "1/1"}
        if self.color_range in ("MPEG", "JPEG"):
            args["range"] = "tv" if self.color_range == "MPEG" else "pc"
        src = graph.add("buffer", **args)
        # area averaging when shrinking (no aliasing), bicubic when enlarging; interl=-1 scales the
        # fields of a frame flagged interlaced apart, so a deinterlacer after this still sees two fields
        kernel = "area" if fw * fh < frame.width * frame.height else "bicubic"
        scale = graph.add("scale", f"w={fw}:h={fh}:flags={kernel}+accurate_rnd:interl=-1")
        sink = graph.add("buffersink")
        src.link_to(scale)
        scale.link_to(sink)
        graph.configure()
        self._graphs[key] = graph
        return graph

    def fit(self, frame: av.VideoFrame) -> av.VideoFrame:
        """The frame at the canvas size (the same object when it already is), pts and tags kept."""
        if (frame.width, frame.height) == tuple(self.canvas):
            return frame
        graph = self._graph(frame)
        graph.push(frame)
        out = graph.pull()
        out.pts = frame.pts
        out.time_base = frame.time_base
        for tag in ("color_range", "color_primaries", "color_trc", "colorspace"):
            setattr(out, tag, getattr(frame, tag))
        self.fitted += 1
        return out

    def __call__(self, frames: Iterable[av.VideoFrame], originals: dict[int, av.VideoFrame] | None = None
                 ) -> Iterator[av.VideoFrame]:
        """Every frame at the canvas size. originals[id(copy)]: the decoded frame a repeated copy was
        made from (vsr.media.decode._retimed); a copy of another size is fitted from it instead."""
        for f in frames:
            if (f.width, f.height) == tuple(self.canvas):
                yield f
                continue
            source = originals.pop(id(f), f) if originals is not None else f
            out = self.fit(source)
            out.pts = f.pts
            yield out
