"""decode_segment: exact frames of one segment as RGB chunks; scan_decodable: find corrupt frames early."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import av
import numpy as np
from av.video.frame import PictureType

from vsr.errors import InputError, UsageError
from vsr.media.colour import alpha_of, frame_to_rgb, range_of
from vsr.media.framesize import FrameFitter, FrameSizeCount
from vsr.media.probe import FrameRetimer, MediaInfo, VideoInfo, open_input, probe, side_data_of, stream_by_index
from vsr.media.segments import Segment

FrameFilter = Callable[[Iterator[av.VideoFrame]], Iterator[av.VideoFrame]]
ON_CORRUPT = ("fail", "repeat-previous")


@dataclass
class FrameChunk:
    """Consecutive frames of one segment: RGB pixels with their pts in the input time base."""

    frames: np.ndarray  # (N,H,W,3) uint8, or uint16 (full scale) for > 8-bit sources
    pts: list[int]
    side_data: list[bytes | None] = field(default_factory=list)  # A53 closed captions per frame
    repeated: list[int] = field(default_factory=list)  # pts filled with a neighbour (corruption)
    # (N,H,W) straight alpha, same dtype as frames (full scale), when the decode was asked for it
    alpha: np.ndarray | None = None


# The decoders that read a WebM VP8/VP9 alpha plane (BlockAdditional data; VideoInfo.alpha):
# FFmpeg's own vp8/vp9 decoders ignore it and give yuv420p, libvpx's give yuva420p.
ALPHA_DECODERS = {"vp8 alpha": "libvpx", "vp9 alpha": "libvpx-vp9"}


def alpha_decoder(video: VideoInfo) -> str | None:
    """The decoder that gives this video's frames with their alpha: None when FFmpeg's default one
    does (a pix_fmt with alpha) or the video has none; libvpx's for WebM VP8/VP9 alpha."""
    return ALPHA_DECODERS.get(getattr(video, "alpha", "none"))


def set_decode_threads(stream: av.video.stream.VideoStream, video: VideoInfo) -> None:
    """FFmpeg's own threading, or one thread where the plan asks for it (VideoInfo.decode_threads:
    a damaged stream, whose concealed frames differ between threaded decodes)."""
    if video.decode_threads == 1:
        stream.codec_context.thread_count = 1
    else:
        stream.thread_type = "AUTO"


def _packet_decoder(stream: av.video.stream.VideoStream, decoder: str | None,
                    threads: int = 0) -> Callable[[av.Packet], list]:
    """packet -> decoded frames, by the stream's own decoder or (decoder) one opened by name."""
    if decoder is None:
        return lambda pkt: pkt.decode()
    try:
        cc = av.CodecContext.create(decoder, "r")
    except (av.error.FFmpegError, ValueError, KeyError):
        raise InputError(f"decoder {decoder} is not available in this FFmpeg build") from None
    ctx = stream.codec_context
    if ctx.extradata:
        cc.extradata = ctx.extradata
    cc.width, cc.height = ctx.width, ctx.height
    cc.thread_count = threads
    return lambda pkt: cc.decode(pkt)


def a53_captions(frame: av.VideoFrame) -> bytes | None:
    """The frame's A53 closed-caption side data (CEA-608/708), or None."""
    sd = side_data_of(frame).get("A53_CC")
    return bytes(sd) if sd is not None else None


def _seconds(info: MediaInfo, pts: int) -> str:
    return f"{float(pts * info.video.time_base):.3f} s"


# Picture types a decoder keeps as references (an MPEG-1/2 B-picture never is one).
_REFERENCE_TYPES = frozenset({PictureType.I, PictureType.P, PictureType.SI, PictureType.SP})
# Keyframes before a segment's own that a decode may start at, nearest first, before the file's start
EARLIER_STARTS = 3


class _DecodeStart:
    """What one decode start (a seek target) showed up to the segment's first frame: whether it
    reached the segment's keyframe, and whether the closed captions of the segment's frames are
    the ones a decode from the file's start gives them (`exact`).

    Why captions need this: a decoder still parses the caption user data / SEI of a picture it
    skips (pictures before the first keyframe it meets; B-pictures whose earlier reference it never
    decoded, such as an open GOP's leading B-frames) and appends them to the next picture it
    decodes. A decode is exact when nothing was skipped before the keyframe's packet and no
    leading picture followed it, or when two reference pictures shown before the segment were
    decoded: after the second one no picture is skipped, and all that was went onto frames before
    the segment.
    """

    def __init__(self, start_pts: int, target: int | None) -> None:
        self.start_pts = start_pts
        self.decided = self.exact = target is None  # the file's start: the reference itself
        self.late = False  # the decode passed the segment's first frame without showing it
        self.any_frame = False
        self._packets = 0
        self._clean = True  # only the keyframe's packet, then no picture shown before it, fed so far
        self._references = 0  # reference pictures shown before the segment

    def packet(self, pkt: av.Packet) -> None:
        """Note a packet about to be fed to the decoder."""
        if self.decided:
            return
        if self._packets == 0:
            self._clean = pkt.is_keyframe and pkt.pts == self.start_pts
        elif pkt.pts is None or pkt.pts < self.start_pts:
            self._clean = False
        self._packets += 1

    def frame(self, frame: av.VideoFrame) -> None:
        """Note a decoded frame (its decoded pts); decides at the first frame of the segment."""
        if frame.pts is None:
            return
        self.any_frame = True
        if self.decided:
            return
        if frame.pts < self.start_pts:
            self._references += frame.pict_type in _REFERENCE_TYPES
            return
        self.decided = True
        self.late = frame.pts > self.start_pts
        self.exact = not self.late and (self._clean or self._references >= 2)


def _frames_from(path: str | os.PathLike, v_info: VideoInfo, target: int | None, start: _DecodeStart,
                 problems: list[tuple[int | None, str]], decoder: str | None = None) -> Iterator[av.VideoFrame]:
    """Decoded frames from a seek to target (None: the file's start) in presentation order, each
    with its pts of v_info.frame_pts; stops at a frame that shows the seek landed late. decoder:
    one opened by name instead of the stream's own (alpha_decoder)."""
    retime = FrameRetimer(v_info)  # counts frames sharing a pts from where decoding starts
    with open_input(path) as c:
        v = stream_by_index(c, v_info.index)
        set_decode_threads(v, v_info)
        decode = _packet_decoder(v, decoder, v_info.decode_threads)
        if target is not None:
            c.seek(target, stream=v, backward=True, any_frame=False)
        try:
            for pkt in c.demux(v):
                start.packet(pkt)
                try:
                    frames = decode(pkt)
                except av.error.FFmpegError as err:
                    problems.append((pkt.pts, " ".join(str(err).split())))
                    continue
                for f in frames:
                    start.frame(f)
                    if start.late:
                        return
                    f.pts = retime(f.pts)
                    yield f
        except av.error.FFmpegError as err:  # demuxer: truncated or corrupt container
            problems.append((None, " ".join(str(err).split())))


def _decoded_frames(
    path: str | os.PathLike, info: MediaInfo, segment: Segment, problems: list[tuple[int | None, str]],
    decoder: str | None = None,
) -> Iterator[av.VideoFrame]:
    """Decoded frames of the main stream from the segment's keyframe on, in presentation order,
    each with its pts of info.video.frame_pts (frames probe retimed carry the retimed pts), and
    with the closed captions a decode from the file's start gives each frame of the segment.

    A decode from the segment's keyframe that is not exact (_DecodeStart) is used up to its first
    frame of the segment that carries captions; from that frame on, the frames come from a decode
    started at an earlier keyframe that is exact (sources without captions never need one).
    Decoder errors are appended to problems (pts of the failing packet, message) instead of raised,
    so the caller decides the corruption policy. decoder: a decoder to open by name instead of
    the stream's default (alpha_decoder).
    """
    resume: int | None = None  # after a restart: frames before this pts were delivered already
    for target in _seek_targets(info.video, segment.start_pts):
        start = _DecodeStart(segment.start_pts, target)
        frames = _frames_from(path, info.video, target, start, problems, decoder)
        restart = False
        try:
            for f in frames:
                if resume is not None and start.decided and not start.exact:
                    restart = True  # only an exact decode can take over from a restart
                    break
                if resume is not None and (f.pts is None or f.pts < resume):
                    continue
                if start.decided and not start.exact and a53_captions(f) is not None:
                    resume, restart = f.pts, True
                    break
                yield f
        finally:
            frames.close()
        # MPEG-TS seeks by decode time: with B-frames it can land just after the keyframe, and
        # when no keyframe follows in the file nothing decodes at all
        if not (restart or start.late or (target is not None and not start.any_frame)):
            return


def _seek_targets(video: VideoInfo, start_pts: int) -> list[int | None]:
    """Where to start decoding a segment, in the order to try: its keyframe, the keyframes before
    it, nearest first (a seek that lands late there still meets the segment's keyframe, and a
    decode from there gives the segment's frames their captions exactly), the file's start (None)."""
    if start_pts <= video.frame_pts[0]:
        return [None]
    earlier = [k for k in video.keyframe_pts if video.frame_pts[0] < k < start_pts]
    return [start_pts] + earlier[::-1][:EARLIER_STARTS] + [None]


def _segment_frames(
    path: str | os.PathLike, info: MediaInfo, segment: Segment, on_corrupt: str,
    repeated: list[int], copied_from: dict[int, av.VideoFrame] | None = None, decoder: str | None = None,
) -> Iterator[av.VideoFrame]:
    """Exactly the segment's frames, one per expected pts, in order (the corruption policy applied)."""
    if on_corrupt not in ON_CORRUPT:
        raise UsageError(f"on_corrupt must be one of {', '.join(ON_CORRUPT)}, not {on_corrupt!r}")
    expected = [p for p in info.video.frame_pts if segment.contains(p)]
    if not expected:
        return
    expected_set = set(expected)
    problems: list[tuple[int | None, str]] = []
    want = 0  # index into expected of the next frame to deliver
    last: av.VideoFrame | None = None
    pending_missing: list[int] = []  # missing pts before any good frame (filled by the next good one)

    def missing(pts: int, why: str) -> None:
        if on_corrupt == "fail":
            raise InputError(f"{info.path}: corrupt or missing video frame at {_seconds(info, pts)} (pts {pts}): {why}")

    decoded = _decoded_frames(path, info, segment, problems, decoder)
    try:
        for f in decoded:
            pts = f.pts
            if pts is None or pts < segment.start_pts:
                continue
            if segment.end_pts is not None and pts >= segment.end_pts:
                break
            if want >= len(expected):
                break
            if f.is_corrupt:
                missing(pts, "decoder flagged the frame corrupt")
                continue
            if pts not in expected_set:
                continue  # not a frame of the container's index (should not happen)
            while want < len(expected) and expected[want] < pts:
                why = problems[-1][1] if problems else "frame not decodable"
                missing(expected[want], why)
                if last is None:
                    pending_missing.append(expected[want])
                else:
                    repeated.append(expected[want])
                    yield _retimed(last, expected[want], copied_from)
                want += 1
            if want < len(expected) and expected[want] == pts:
                for p in pending_missing:
                    repeated.append(p)
                    yield _retimed(f, p, copied_from)
                pending_missing.clear()
                yield f
                last = f
                want += 1
    finally:
        decoded.close()
    if want < len(expected):
        why = problems[-1][1] if problems else "stream ends early (truncated file?)"
        for p in expected[want:]:
            missing(p, why)
            if last is None:
                raise InputError(f"{info.path}: no decodable frame in segment {segment.index} ({why})")
            repeated.append(p)
            yield _retimed(last, p, copied_from)


def _retimed(frame: av.VideoFrame, pts: int, copied_from: dict[int, av.VideoFrame] | None = None
             ) -> av.VideoFrame:
    """A copy of frame's picture carrying another pts (fills a corrupt frame's slot).

    copied_from[id(copy)] = frame lets the RGB conversion use the original: swscale's chroma
    interpolation reads the decoder's row padding, so a tightly packed copy converts differently.
    """
    try:
        copy = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name)
        for tag in ("color_range", "color_primaries", "color_trc", "colorspace"):
            setattr(copy, tag, getattr(frame, tag))
    except (ValueError, TypeError, av.error.FFmpegError):
        copy = frame  # formats without an ndarray view: reuse (converted before the next frame)
    copy.pts = pts
    copy.time_base = frame.time_base
    if copied_from is not None and copy is not frame:
        copied_from[id(copy)] = frame
    return copy


def decode_segment(
    path: str | os.PathLike,
    segment: Segment,
    chunk_frames: int = 8,
    *,
    info: MediaInfo | None = None,
    on_corrupt: str = "fail",
    frame_filter: FrameFilter | None = None,
    fit_size: tuple[int, int] | None = None,
    alpha: bool = False,
    decoder: str | None = None,
    follow_sizes: bool = False,
) -> Iterator[FrameChunk]:
    """Yield the segment's frames as RGB chunks with their input pts.

    Seeks to the segment's keyframe, discards frames before start_pts and stops at end_pts.
    on_corrupt "fail" raises InputError naming the time of a corrupt/missing frame;
    "repeat-previous" fills it with the nearest good frame and records its pts in chunk.repeated.
    fit_size (w, h): the planned picture size (vsr.media.framesize.plan_frame_size; the picture
    plan's source_size); a frame of another size (the size changes mid-stream) is scaled into it
    to fill it. None: the stream's declared size.
    follow_sizes: frames keep their own size (the output follows the source's sizes,
    vsr.media.picture.follow_plan); fit_size is unused and a chunk ends where the size changes.
    frame_filter (deinterlace/crop hooks) sees the segment's decoded frames, fitted, before RGB
    conversion.
    alpha: also give each frame's straight alpha (chunk.alpha; opaque where a frame has none),
    decoded by `decoder` (the plan's; by default alpha_decoder's: libvpx's for WebM VP8/VP9 alpha).
    """
    info = info or probe(path)
    if alpha and decoder is None:
        decoder = alpha_decoder(info.video)
    if chunk_frames < 1:
        raise UsageError(f"chunk_frames must be >= 1, not {chunk_frames}")
    repeated: list[int] = []
    copied_from: dict[int, av.VideoFrame] = {}
    frames: Iterable[av.VideoFrame] = _segment_frames(path, info, segment, on_corrupt, repeated,
                                                      None if frame_filter else copied_from, decoder)
    if not follow_sizes:
        # Stacking needs one size, so every frame is brought to the planned one here, before any
        # other step: frames that have it pass untouched.
        fitter = FrameFitter(tuple(fit_size or (info.video.width, info.video.height)), range_of(info.video))
        frames = fitter(frames, copied_from)
    if frame_filter is not None:
        frames = frame_filter(iter(frames))
    yield from _chunks(frames, info.video, chunk_frames, alpha, repeated, copied_from)


def _chunks(frames: Iterable[av.VideoFrame], video: VideoInfo, chunk_frames: int, alpha: bool,
            repeated: list[int], copied_from: dict[int, av.VideoFrame]) -> Iterator[FrameChunk]:
    """The frames as RGB chunks of up to chunk_frames; a chunk also ends where the picture size
    changes (frames of another size are only there when the output follows the sizes)."""
    buf: list[np.ndarray] = []
    pts: list[int] = []
    side: list[bytes | None] = []
    alphas: list[np.ndarray] = []
    reported = 0
    for f in frames:
        picture = copied_from.pop(id(f), f)
        rgb = frame_to_rgb(picture, video)
        if buf and rgb.shape != buf[0].shape:
            yield FrameChunk(np.stack(buf), pts, side, _new(repeated, reported, pts),
                             np.stack(alphas) if alpha else None)
            reported = len(repeated)
            buf, pts, side, alphas = [], [], [], []
        buf.append(rgb)
        if alpha:
            alphas.append(alpha_of(picture, buf[-1].dtype == np.uint16))
        pts.append(f.pts)
        side.append(a53_captions(f))
        if len(buf) == chunk_frames:
            yield FrameChunk(np.stack(buf), pts, side, _new(repeated, reported, pts),
                             np.stack(alphas) if alpha else None)
            reported = len(repeated)
            buf, pts, side, alphas = [], [], [], []
    if buf:
        yield FrameChunk(np.stack(buf), pts, side, _new(repeated, reported, pts),
                         np.stack(alphas) if alpha else None)


def decoded_frames(path: str | os.PathLike, info: MediaInfo, decoder: str | None = None,
                   problems: list[tuple[int | None, str]] | None = None) -> Iterator[av.VideoFrame]:
    """Every decoded frame of the main video, in presentation order, with its pts of
    info.video.frame_pts; decoder: one to open by name (alpha_decoder) instead of the default.
    Decoder errors go to problems (pts, message) instead of being raised."""
    whole = Segment(0, info.video.frame_pts[0], None, info.video.frame_count, 0.0, 0.0)
    return _decoded_frames(path, info, whole, [] if problems is None else problems, decoder)


def _new(repeated: list[int], reported: int, pts: list[int]) -> list[int]:
    chunk = set(pts)
    return [p for p in repeated[reported:] if p in chunk]


@dataclass
class ScanReport:
    """Result of scan_decodable: frames decoded, and the times of those that are not decodable."""

    path: str
    frames: int
    expected: int
    bad_pts: list[int]
    bad_times: list[float]
    problems: list[str]
    # (width, height, frames) of each picture size the decoded frames have, in the order the sizes
    # first appear: more than one when the size changes mid-stream (vsr.media.framesize)
    frame_sizes: list[FrameSizeCount] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad_pts and self.frames == self.expected

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "frames": self.frames, "expected": self.expected,
                "bad_pts": self.bad_pts, "bad_times": self.bad_times, "problems": self.problems,
                "frame_sizes": [list(s) for s in self.frame_sizes]}

    def raise_if_failed(self) -> None:
        """InputError naming the first bad frame's time."""
        if not self.ok:
            first = f" first at {self.bad_times[0]:.3f} s" if self.bad_times else ""
            raise InputError(f"{self.path}: {len(self.bad_pts)} corrupt or missing video frames{first}"
                             f" ({self.problems[0] if self.problems else 'decode failed'})")


def scan_decodable(path: str | os.PathLike, info: MediaInfo | None = None,
                   progress: Callable[[int], None] | None = None) -> ScanReport:
    """Decode the whole main video stream (no RGB conversion) and list frames that fail to decode,
    and the picture sizes of the frames (a size changing mid-stream is planned for before any
    frame is upscaled: vsr.media.framesize.plan_frame_size).

    progress(frames_done) is called every 250 frames and at the end (for a progress bar).
    """
    info = info or probe(path)
    whole = Segment(0, info.video.frame_pts[0], None, info.video.frame_count, 0.0, 0.0)
    problems: list[tuple[int | None, str]] = []
    expected = info.video.frame_pts
    seen: set[int] = set()
    corrupt: list[int] = []
    sizes: dict[tuple[int, int], int] = {}  # insertion order: the order the sizes first appear
    done = 0
    for f in _decoded_frames(path, info, whole, problems):
        done += 1
        if progress is not None and done % 250 == 0:
            progress(done)
        if f.pts is None:
            continue
        sizes[(f.width, f.height)] = sizes.get((f.width, f.height), 0) + 1
        if f.is_corrupt:
            corrupt.append(f.pts)
        else:
            seen.add(f.pts)
    if progress is not None:
        progress(done)
    bad = sorted(set(corrupt) | {p for p in expected if p not in seen})
    tb = info.video.time_base
    return ScanReport(
        path=str(path), frames=len(seen & set(expected)), expected=len(expected), bad_pts=bad,
        bad_times=[float(p * tb) for p in bad],
        problems=[f"{m} (pts {p})" if p is not None else m for p, m in problems],
        frame_sizes=[(w, h, n) for (w, h), n in sizes.items()],
    )
