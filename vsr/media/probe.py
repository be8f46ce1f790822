"""probe(path) -> MediaInfo: every stream, the main video's timing, keyframes and colour."""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from vsr.errors import InputError
from vsr.storage import uri as store

log = logging.getLogger("vsr.media")

# FFmpeg's "unspecified" values for colour tags (AVCOL_*_UNSPECIFIED) and range (AVCOL_RANGE_UNSPECIFIED).
COLOR_UNSPECIFIED = 2
RANGE_UNSPECIFIED = 0
ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC: cover art, not a video track


@dataclass
class VideoInfo:
    """The main video stream: geometry, timing (every frame's pts) and colour."""

    index: int
    codec: str
    width: int
    height: int
    pix_fmt: str | None
    bit_depth: int
    sar: Fraction
    time_base: Fraction
    avg_rate: Fraction | None
    real_rate: Fraction | None
    vfr: bool
    frame_count: int
    frame_pts: list[int]
    keyframe_pts: list[int]
    color_range: int
    color_primaries: int
    color_trc: int
    colorspace: int
    rotation: int
    field_order: str | None
    interlaced: bool
    start_time: float = 0.0
    language: str | None = None
    disposition: int = 0
    metadata: dict = field(default_factory=dict)
    # HDR10 static metadata of the first frame: master_display (x265 syntax), max_cll [MaxCLL, MaxFALL]
    hdr: dict | None = None
    mirrored: bool = False  # the display matrix flips the picture (not only rotates it)
    # the first frame's display matrix (FFmpeg's 9 int32, 16.16 fixed point), written unchanged to
    # the output: a rotation angle cannot say a mirror, and upscaling changes neither
    display_matrix: list[int] | None = None
    # how the picture is meant to be shown beyond rotation and colour tags (PICTURE_SIDE_DATA)
    side_data: list[str] = field(default_factory=list)
    # Frames before the first keyframe (a recording cut mid-GOP): undecodable, not in frame_pts.
    leading_undecodable: int = 0
    # VP8/VP9 packets that show no frame (an alt-ref frame stored as a packet of its own): not frames
    hidden_packets: int = 0
    # Frames that shared a pts with the frame before them and were moved just after it (browser
    # recorders): {"frames": n, "max_shift_ticks": t, "max_shift_s": s, "examples": [[pts, new], ...]}
    retimed: dict | None = None
    # decoded pts -> the retimed pts of each frame that carries it, in the decoder's output order,
    # for the pts whose frames were moved (FrameRetimer); empty when nothing was retimed
    retimed_groups: dict[int, list[int]] = field(default_factory=dict)
    # What the video carries beside its colour planes: "none", a pix_fmt with an alpha plane
    # (yuva420p...), or "vp8 alpha" / "vp9 alpha" (WebM BlockAdditional data in the packets,
    # which FFmpeg's own decoders ignore). Read from the data: WebM's alpha_mode tag is only a claim.
    alpha: str = "none"
    # The MPEG-1/2 GOP header timecode of the first frame shown (GOP_TIMECODE side data), for
    # sources without a timecode tag: it names the GOP's first picture in display order, so it is
    # the source's start timecode as a tag would give it (timecode_of)
    gop_timecode: str | None = None
    # Decoder threads: 0 lets FFmpeg choose (frame threads); 1 for a stream with damaged frames,
    # whose error concealment differs from one threaded decode to the next (the job and verify
    # must see the same pictures). Set by the job's plan, not by probe.
    decode_threads: int = 0

    @property
    def frame_times(self) -> list[float]:
        """Every frame's presentation time in seconds."""
        tb = self.time_base
        return [float(p * tb) for p in self.frame_pts]

    def frame_duration_ticks(self) -> int:
        """The typical (median) frame step in time-base ticks (1 when there is one frame)."""
        steps = sorted(b - a for a, b in zip(self.frame_pts, self.frame_pts[1:]))
        return max(1, steps[len(steps) // 2]) if steps else max(1, _default_step(self))

    def end_pts(self) -> int:
        """Pts just after the last frame (last pts + one typical frame step)."""
        return (self.frame_pts[-1] if self.frame_pts else 0) + self.frame_duration_ticks()

    @property
    def flip(self) -> str | None:
        """The mirror of a mirroring display matrix as a flip of the stored picture, applied before
        `rotation`: "vflip", or None when the matrix only rotates. Together they are the matrix:
        `rotation` is FFmpeg's angle of it (av_display_rotation_get), which it reads from the
        matrix's first row, so what that rotation leaves of a mirroring matrix always keeps the
        first row and negates the second: a vertical flip. The transpose 0 1 / 1 0 is a vflip, then
        -90 degrees (counter-clockwise); a horizontal mirror -1 0 / 0 1 is a vflip, then 180."""
        return "vflip" if self.mirrored else None


class FrameRetimer:
    """Each decoded frame's pts as VideoInfo.frame_pts has it: the retimed one for frames probe
    moved off a shared pts (VideoInfo.retimed), else the decoded one.

    Feed it every frame the decoder gives, in its output order, from a keyframe of keyframe_pts
    (or the start): the n-th frame carrying a shared pts gets that pts' n-th retimed value.
    """

    def __init__(self, video: VideoInfo) -> None:
        self._groups = getattr(video, "retimed_groups", None) or {}
        self._seen: dict[int, int] = {}

    def __call__(self, pts: int | None) -> int | None:
        group = self._groups.get(pts) if pts is not None else None
        if not group:
            return pts
        n = self._seen.get(pts, 0)
        self._seen[pts] = n + 1
        # more frames than probe decoded there (should not happen): left as they are, so the
        # caller sees a frame that is not in the index
        return group[n] if n < len(group) else pts


def _default_step(v: VideoInfo) -> int:
    rate = v.avg_rate or v.real_rate or Fraction(25)
    return round(1 / (rate * v.time_base)) if rate else 1


@dataclass
class StreamInfo:
    """Any stream other than the main video: audio, subtitle, attachment, data, extra video."""

    index: int
    kind: str  # audio | subtitle | video | attachment | data
    codec: str | None
    time_base: Fraction | None
    language: str | None
    disposition: int
    metadata: dict
    packets: int = 0
    start_time: float | None = None
    end_time: float | None = None
    # audio only
    sample_rate: int | None = None
    channels: int | None = None
    layout: str | None = None
    # extra video only
    width: int | None = None
    height: int | None = None


@dataclass
class MediaInfo:
    """Everything vsr needs to know about an input file before doing any work on it."""

    path: str
    container: str
    duration: float | None
    size_bytes: int
    video: VideoInfo
    audio: list[StreamInfo]
    subtitles: list[StreamInfo]
    other: list[StreamInfo]
    chapters: list[dict]
    metadata: dict
    # errors the demuxer reported while reading the packets (a damaged Matroska cluster, a TS
    # packet run lost): packets, and so frames, may be missing without any decoder noticing
    damage: list[str] = field(default_factory=list)

    @property
    def streams(self) -> list[StreamInfo]:
        """All non-main-video streams in file order."""
        return sorted(self.audio + self.subtitles + self.other, key=lambda s: s.index)

    def to_dict(self, with_pts: bool = False) -> dict[str, Any]:
        """JSON-safe dict (Fractions as strings); per-frame pts lists only with with_pts."""
        d = _jsonable(asdict(self))
        d["video"]["flip"] = self.video.flip  # with rotation: the display matrix (a property, not a field)
        if not with_pts:
            d["video"].pop("frame_pts")
            d["video"].pop("retimed_groups")
            d["video"]["keyframe_count"] = len(self.video.keyframe_pts)
            d["video"]["keyframe_pts"] = self.video.keyframe_pts[:50]
        return d

    def describe(self) -> str:
        """Human-readable multi-line summary."""
        v = self.video
        lines = [f"{self.path}: {self.container}, {_fmt_s(self.duration)}, {self.size_bytes:,} bytes"]
        rate = f"{float(v.avg_rate):.3f} fps" if v.avg_rate else "rate unknown"
        lines.append(
            f"  #{v.index} video {v.codec} {v.width}x{v.height} {v.pix_fmt} {v.bit_depth}-bit"
            f" SAR {v.sar} {rate} {'VFR' if v.vfr else 'CFR'} tb {v.time_base}"
            f" {v.frame_count} frames {len(v.keyframe_pts)} keyframes"
            + (f" rotation {v.rotation}" if v.rotation else "")
            + (f" interlaced ({v.field_order})" if v.interlaced else "")
            + (f"; {v.leading_undecodable} undecodable frames before the first keyframe skipped"
               if v.leading_undecodable else "")
            + (f"; {v.hidden_packets} packets show no frame" if v.hidden_packets else "")
            + (f"; {v.retimed['frames']} frames sharing a pts retimed by at most"
               f" {v.retimed['max_shift_ticks']} tick(s)" if v.retimed else "")
            + (f"; alpha: {v.alpha}" if v.alpha != "none" else "")
        )
        lines.append(
            f"      colour range={v.color_range} primaries={v.color_primaries}"
            f" transfer={v.color_trc} matrix={v.colorspace}"
        )
        for s in self.streams:
            extra = ""
            if s.kind == "audio":
                extra = f" {s.sample_rate} Hz {s.layout or s.channels}"
            elif s.kind == "video":
                extra = f" {s.width}x{s.height}"
            lang = f" [{s.language}]" if s.language else ""
            lines.append(f"  #{s.index} {s.kind} {s.codec}{extra}{lang} {s.packets} packets")
        if self.chapters:
            lines.append(f"  {len(self.chapters)} chapters")
        if self.damage:
            lines.append(f"  container damaged, frames may be missing: {'; '.join(self.damage)}")
        return "\n".join(lines)


def _meta_get(metadata: dict, key: str) -> Any:
    """A metadata value by case-insensitive key (Matroska tags read back upper-case)."""
    return next((v for k, v in metadata.items() if k.lower() == key), None)


def timecode_of(info: MediaInfo) -> str | None:
    """The start timecode of the main video ("HH:MM:SS:FF", ";" before FF when drop-frame), or None.

    Taken from the video stream's tags, else from a timecode track (a MOV/MP4 tmcd data stream),
    else from the container's tags (MXF), else from the MPEG-1/2 GOP header of the first frame
    (VideoInfo.gop_timecode). MOV/MP4 writers turn the video's timecode tag into a tmcd track
    again; Matroska and WebM keep it as the video's TIMECODE tag.
    """
    for meta in ([info.video.metadata] + [s.metadata for s in info.other if s.kind == "data"]
                 + [info.metadata]):
        tc = _meta_get(meta or {}, "timecode")
        if tc:
            return str(tc)
    return getattr(info.video, "gop_timecode", None)


def is_timecode_track(info: MediaInfo, stream: StreamInfo) -> bool:
    """Whether a stream is a MOV/MP4 timecode track (tmcd): data with no codec whose only content
    is the timecode. (MXF tags every stream with its tape's timecode, data streams such as
    SMPTE 436M captions too: those are not timecode tracks.)"""
    return (stream.kind == "data" and stream.codec is None and info.container.startswith("mov")
            and bool(_meta_get(stream.metadata or {}, "timecode")))


def _fmt_s(x: float | None) -> str:
    return "duration unknown" if x is None else f"{x:.3f} s"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Fraction):
        return f"{x.numerator}/{x.denominator}"
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def open_input(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a media file read-only, turning every failure into a one-line InputError. A URI
    (s3://...) is read through the store's random-access file object (vsr.storage.uri): only
    the byte ranges the demuxer asks for are fetched."""
    if store.is_uri(path):
        return _open_uri(str(path))
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a media file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: not readable (permission denied)")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file")
    try:
        return av.open(str(p), "r")
    except av.error.InvalidDataError as err:
        kind = _container_signature(p)
        if kind:
            raise InputError(f"{p}: truncated or corrupt {kind} file ({_one_line(err)})") from None
        raise InputError(f"{p}: not a media file (no known container format)") from None
    except av.error.FFmpegError as err:
        raise InputError(f"{p}: cannot open: {_one_line(err)}") from None


def _open_uri(uri: str) -> av.container.InputContainer:
    info = store.stat(uri)
    if info["type"] != "file":
        raise InputError(f"{uri}: not an object (a prefix?)")
    if info["size"] == 0:
        raise InputError(f"{uri}: empty object")
    f = store.open_read(uri)
    try:
        # the container holds f; it goes with the container
        return av.open(f, "r", buffer_size=store.reader_buffer())
    except av.error.FFmpegError as err:
        f.close()
        raise InputError(f"{uri}: cannot open: {_one_line(err)}") from None


_SIGNATURES = ((4, b"ftyp", "MP4/QuickTime"), (4, b"moov", "QuickTime"), (4, b"mdat", "QuickTime"),
               (0, b"\x1aE\xdf\xa3", "Matroska/WebM"), (0, b"RIFF", "AVI/WAV"), (0, b"OggS", "Ogg"),
               (0, b"nut/multimedia", "NUT"), (0, b"FLV", "FLV"))


def _container_signature(p: Path) -> str | None:
    """The container a file's first bytes announce (to tell 'truncated' from 'not media')."""
    try:
        with open(p, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not cover art."""
    for s in container.streams.video:
        if not (int(s.disposition) & ATTACHED_PIC):
            return s
    return None


def stream_by_index(container: av.container.Container, index: int) -> av.stream.Stream:
    """The stream with this file index (StreamContainer[int] means something else in PyAV)."""
    for s in container.streams:
        if s.index == index:
            return s
    raise InputError(f"{container.name}: no stream #{index}")


# Decoder names that differ from the format's codec name (PyAV reports the decoder it picked).
_CODEC_OF_DECODER = {"libdav1d": "av1", "libaom-av1": "av1", "libvpx": "vp8", "libvpx-vp9": "vp9",
                     "libopus": "opus", "libvorbis": "vorbis"}


def codec_name(ctx: Any) -> str | None:
    """The stream's codec name (av1, opus...), not the library decoding it."""
    if ctx is None or ctx.name is None:
        return None
    return _CODEC_OF_DECODER.get(ctx.name, ctx.name)


def _lang(stream: av.stream.Stream) -> str | None:
    lang = stream.metadata.get("language")
    return None if lang in (None, "", "und") else lang


def _bit_depth(pix_fmt: str | None) -> int:
    if not pix_fmt:
        return 8
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, av.error.FFmpegError):
        return 8


def _average_rate(pts: list[int], time_base: Fraction, stated: Any) -> Fraction | None:
    """The stream's average frame rate, measured from its pts when the header's is missing or off by
    more than 5% (browser recordings state 1000 fps)."""
    stated_rate = Fraction(stated) if stated else None
    if len(pts) < 2:
        return stated_rate
    measured = Fraction(len(pts) - 1) / ((pts[-1] - pts[0]) * time_base)
    if stated_rate and abs(float(stated_rate / measured) - 1) <= 0.05:
        return stated_rate
    return measured.limit_denominator(1001)


def _is_vfr(pts: list[int], time_base: Fraction) -> bool:
    steps = [b - a for a, b in zip(pts, pts[1:])]
    if len(steps) < 2:
        return False
    lo, hi = min(steps), max(steps)
    # Rounding a constant rate into the time base makes steps differ by one tick (33/34 ms),
    # or by its rescaled equivalent after remuxing (1 ms in a 1/16000 base): not VFR.
    return hi - lo > max(1, round(0.0011 / float(time_base)))


DAMAGE_KEPT = 5  # demuxer error messages kept in MediaInfo.damage


# An EBML element header is at most 12 bytes (4 of ID, 8 of size); a Matroska block's own header
# (track, timecode, flags) is 4 bytes that a packet's size does not count.
_EBML_HEADER_MAX = 12 + 4
_ENDED_AT = re.compile(r"File ended prematurely at pos\. (\d+)")


def _with_demuxer_errors(c: av.container.InputContainer, damage: list[str], file_size: int | None = None):
    """c.demux(), appending the errors the demuxer logs meanwhile (not the decoders': nothing is
    decoded here) to `damage` ("..." once there are more than DAMAGE_KEPT). FFmpeg's log goes
    to PyAV only while a level is set: ERROR for this pass, then back as it was."""
    name = c.format.name
    before, skip_repeated = av.logging.get_level(), av.logging.get_skip_repeated()
    if before is None or before < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # the same damage probed twice is reported twice
    data_end = 0  # where the last packet's data ends in the file
    try:
        with av.logging.Capture() as logs:  # this thread's messages only
            for pkt in c.demux():
                if pkt.pos is not None and pkt.pos >= 0:
                    data_end = max(data_end, pkt.pos + pkt.size)
                yield pkt
            found = [" ".join(m.split()) for level, who, m in logs if level <= av.logging.ERROR and who == name
                     and not _header_fragment_at_end(m, data_end, file_size)]
        damage.extend(found[:DAMAGE_KEPT])
        if len(found) > DAMAGE_KEPT:
            damage.append(f"... {len(found) - DAMAGE_KEPT} more")
    finally:
        av.logging.set_level(before)
        av.logging.set_skip_repeated(skip_repeated)


def _header_fragment_at_end(message: str, data_end: int, file_size: int | None) -> bool:
    """Whether a Matroska "File ended prematurely" error is about a few bytes after the last
    complete block, too few to hold even an element header (a browser recorder stopped while
    starting the next element): nothing in them could be shown, and a file cut just before them
    reads without a word, so they are not damage. A block cut short is still reported."""
    m = _ENDED_AT.search(message)
    return (m is not None and file_size is not None and int(m.group(1)) == file_size
            and 0 <= file_size - data_end <= _EBML_HEADER_MAX)


def damage_message(info: MediaInfo) -> str:
    """One line for a damaged container (MediaInfo.damage)."""
    return (f"{info.path}: container damaged, frames may be missing ({'; '.join(info.damage[:2])}); "
            "use --on-corrupt repeat-previous to go on with the frames that can be read")


def probe(path: str | os.PathLike) -> MediaInfo:
    """Describe a media file; raises InputError (one line) for anything vsr cannot read."""
    p = Path(path)
    c = open_input(p)
    try:
        return _probe(p, c)
    finally:
        c.close()


def _probe(p: Path, c: av.container.InputContainer) -> MediaInfo:
    v = _decodable_video(p, c)
    others = [s for s in c.streams if s.index != v.index]
    packets, counts, damage = _demux_all(p, c, v, others)
    timing = _video_timing(p, v, packets)
    video = _video_info(v, timing, packets, _first_frame(p, v.index))
    duration = c.duration / 1e6 if c.duration else None
    _check_not_truncated(p, video, counts, duration, c.start_time, c.format.name)
    audio, subs, other = _other_streams(others, counts)
    return MediaInfo(
        path=str(p),
        container=c.format.name,
        duration=duration,
        size_bytes=p.stat().st_size,
        video=video,
        audio=audio,
        subtitles=subs,
        other=other,
        chapters=[_jsonable(dict(ch)) for ch in c.chapters()],
        metadata=dict(c.metadata),
        damage=damage,
    )


def _decodable_video(p: Path, c: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The main video stream; InputError when there is none or this FFmpeg cannot decode it."""
    v = main_video_stream(c)
    if v is None:
        raise InputError(f"{p}: no video stream")
    if v.codec_context is None or v.codec_context.name is None:
        raise InputError(f"{p}: video stream #{v.index} uses a codec this FFmpeg cannot decode")
    return v


# Matroska BlockAddID of a VP8/VP9 alpha plane (WebM; FFmpeg hands BlockAdditional data out as
# packet side data: the ID as 8 bytes big-endian, then the payload)
_WEBM_ALPHA_ID = 1


@dataclass
class _VideoPackets:
    """What the demux pass learns of the main video from its packets (nothing decoded)."""

    codec: str | None
    pts: list[int] = field(default_factory=list)  # of the packets that show a frame
    # clean cut points: shown keyframes above every pts demuxed before them (B-frames of an
    # earlier GOP shown after a keyframe make it no clean cut)
    keys: list[int] = field(default_factory=list)
    first_key: int | None = None  # the first clean keyframe's pts, an edit list's discarded one included
    missing_pts: bool = False
    hidden: int = 0  # packets that show no frame
    alpha: bool = False  # a VP8/VP9 alpha plane in BlockAdditional side data
    max_pts: int | None = None  # highest pts demuxed so far

    def add(self, pkt: av.Packet) -> None:
        if not self.alpha and self.codec in ("vp8", "vp9") and pkt.has_sidedata("matroska_block_additional"):
            extra = bytes(pkt.get_sidedata("matroska_block_additional"))
            self.alpha = len(extra) > 8 and int.from_bytes(extra[:8], "big") == _WEBM_ALPHA_ID
        if pkt.pts is None:
            if not pkt.is_discard:
                self.missing_pts = True
            return
        if self.codec in ("vp8", "vp9") and not shows_frame(self.codec, memoryview(pkt)):
            self.hidden += 1  # decoded for later frames' sake, never shown: not a frame
            return
        clean_key = pkt.is_keyframe and (self.max_pts is None or pkt.pts > self.max_pts)
        self.max_pts = pkt.pts if self.max_pts is None else max(self.max_pts, pkt.pts)
        if clean_key and self.first_key is None:
            self.first_key = pkt.pts
        if pkt.is_discard:
            # An edit list's trimmed head (a cut or trimmed MP4: `ffmpeg -ss ... -c copy`, phone
            # trims): not frames of the video, but its keyframe decodes the frames shown after it,
            # so it still ends the undecodable lead-in
            return
        if clean_key:
            self.keys.append(pkt.pts)
        self.pts.append(pkt.pts)


def _demux_all(p: Path, c: av.container.InputContainer, v: av.video.stream.VideoStream,
               others: list[av.stream.Stream]) -> tuple[_VideoPackets, dict[int, list], list[str]]:
    """One pass over every packet: the main video's (_VideoPackets); per other stream
    [packets, first time, end time]; and what the container lost (demuxer errors, corrupt packets)."""
    video = _VideoPackets(codec_name(v.codec_context))
    counts: dict[int, list] = {s.index: [0, None, None] for s in others}
    damage: list[str] = []
    corrupt: dict[int, tuple[int | None, int]] = {}  # stream -> (first pts, packets) flagged corrupt
    try:
        for pkt in _with_demuxer_errors(c, damage, p.stat().st_size):
            if pkt.size == 0:
                continue
            idx = pkt.stream.index
            if pkt.is_corrupt:  # MPEG-TS: packets lost in transport (said only as a warning)
                first, n = corrupt.get(idx, (pkt.pts if pkt.pts is not None else pkt.dts, 0))
                corrupt[idx] = (first, n + 1)
            if idx == v.index:
                video.add(pkt)
            elif idx in counts:
                d = counts[idx]
                d[0] += 1
                if pkt.pts is not None:
                    t = float(pkt.pts * pkt.time_base)
                    d[1] = t if d[1] is None else min(d[1], t)
                    end = t + float((pkt.duration or 0) * pkt.time_base)
                    d[2] = end if d[2] is None else max(d[2], end)
    except av.error.FFmpegError as err:
        raise InputError(f"{p}: corrupt or truncated container: {_one_line(err)}") from None
    for idx, (first_ts, n) in sorted(corrupt.items()):
        s = stream_by_index(c, idx)
        at = f", first at {float(first_ts * s.time_base):.3f} s" if first_ts is not None and s.time_base else ""
        damage.append(f"{n} corrupt packet(s) in stream #{idx} ({s.type}){at}")
    return video, counts, damage


def shows_frame(codec: str | None, data: memoryview | bytes) -> bool:
    """Whether a VP8/VP9 packet shows a frame. libvpx-era WebM stores an alt-ref frame (decoded
    to predict later frames, never shown) as a packet of its own, with a pts of a shown frame
    beside it; a VP9 superframe shows a frame when one of its frames does. Any other codec, or
    a packet too short to tell: True."""
    if codec == "vp8":
        return len(data) < 3 or bool(data[0] & 0x10)  # frame tag: show_frame is bit 4
    if codec != "vp9" or not len(data):
        return True
    return any(_vp9_shows(frame) for frame in _vp9_frames(data))


def _vp9_frames(data: memoryview | bytes) -> list[memoryview | bytes]:
    """The frames of a VP9 packet: those its superframe index lists, else the packet itself."""
    marker = data[-1]
    if marker & 0xE0 == 0xC0:  # superframe index: marker, frame sizes, marker
        count, size_bytes = (marker & 7) + 1, ((marker >> 3) & 3) + 1
        index_size = 2 + size_bytes * count
        if len(data) >= index_size and data[-index_size] == marker:
            frames, at = [], 0
            for i in range(count):
                start = len(data) - index_size + 1 + i * size_bytes
                size = int.from_bytes(bytes(data[start:start + size_bytes]), "little")
                frames.append(data[at:at + size])
                at += size
            return frames
    return [data]


def _vp9_shows(frame: memoryview | bytes) -> bool:
    """A VP9 frame's uncompressed header: show_existing_frame or show_frame set."""
    if not len(frame):
        return False
    b = frame[0]
    if b >> 6 != 2:  # frame_marker: not a frame header we can read
        return True
    profile = ((b >> 5) & 1) | (((b >> 4) & 1) << 1)
    bit = 3 if profile < 3 else 2  # profile 3 has a reserved bit before show_existing_frame
    if (b >> bit) & 1:
        return True  # show_existing_frame: shows an earlier decoded frame
    return bool((b >> (bit - 2)) & 1)  # after frame_type comes show_frame


@dataclass
class _Timing:
    """The main video's frames: pts, clean cut points, frames skipped and retimed."""

    pts: list[int]
    keys: list[int]
    leading: int
    retimed: dict | None = None
    groups: dict[int, list[int]] = field(default_factory=dict)


def _video_timing(p: Path, v: av.video.stream.VideoStream, packets: _VideoPackets) -> _Timing:
    """Every frame's pts and the keyframes a segment may start at, from the packets that show a
    frame; from a full decode when packets carry no pts (raw, some AVI) or shown packets share one
    (then the decoder says which frames there are)."""
    pts, keys, first_key = packets.pts, packets.keys, packets.first_key
    if packets.missing_pts or not pts:
        pts, keys = _pts_by_decoding(p, v.index)
        first_key = None
    elif len(set(pts)) != len(pts):
        clean = set(keys)
        pts, keys = _pts_by_decoding(p, v.index)
        keys = [k for k in keys if k in clean]  # a decoder's keyframe is a cut point only if clean
    if not pts:
        raise InputError(f"{p}: video stream #{v.index} has no decodable frames")
    pts.sort()
    keys.sort()
    # A capture cut mid-GOP starts with frames that reference pictures before the cut: no decoder
    # can produce them and no player shows them, so they are not frames of this video (counted).
    first_key = first_key if first_key is not None else (keys[0] if keys else None)
    leading = [q for q in pts if first_key is not None and q < first_key]
    if leading:
        pts = pts[len(leading):]
    timing = _Timing(pts, keys, len(leading))
    if len(set(pts)) != len(pts):
        _retime(p, v, timing)
    return timing


# A retimed frame moves less than this fraction of the typical frame step: more is no recorder's
# rounding but timestamps that say nothing (broken muxing), refused as before.
RETIME_MAX_STEP_FRACTION = Fraction(1, 2)
RETIME_EXAMPLES = 5
_retime_warned: set[str] = set()


def _retime(p: Path, v: av.video.stream.VideoStream, timing: _Timing) -> None:
    """Give frames that share a pts with the frame before them (browser MediaRecorder output:
    every browser plays such files) pts of their own, in place.

    Each such frame moves to one tick after its predecessor, the smallest step that keeps the
    frames in order within the time base; a frame already that far on stays. Every frame is kept
    and stays as near its recorded time as the time base allows: frames with pts of their own keep
    them and the sync with the audio is untouched. Spreading the duplicates evenly up to the next
    distinct pts would instead invent capture times the recorder never measured and move frames
    by up to half a frame step. Segments start only at keyframes that did not move and whose pts
    no other frame shares, so a decoder started there meets every retimed frame in order."""
    tb = Fraction(v.time_base)
    old = timing.pts
    new: list[int] = []
    for q in old:
        new.append(q if not new or q > new[-1] else new[-1] + 1)
    moved = [(a, b) for a, b in zip(old, new) if a != b]
    steps = sorted(b - a for a, b in zip(old, old[1:]) if b > a)
    typical = steps[len(steps) // 2] if steps else 0
    worst = max(b - a for a, b in moved)
    if not typical or worst >= typical * RETIME_MAX_STEP_FRACTION:
        raise InputError(f"{p}: video stream #{v.index} repeats timestamps (broken muxing): {len(moved)} frames"
                         f" share a pts, and giving them their own would move a frame by {worst} ticks"
                         f" ({float(worst * tb) * 1000:.1f} ms, a typical frame step is {typical})")
    counts: dict[int, int] = {}
    for q in old:
        counts[q] = counts.get(q, 0) + 1
    keys = set(timing.keys)
    timing.keys = [b for a, b in zip(old, new) if a == b and a in keys and counts[a] == 1]
    moved_pts = {a for a, _ in moved}
    for a, b in zip(old, new):
        if a in moved_pts:
            timing.groups.setdefault(a, []).append(b)
    timing.pts = new
    timing.retimed = {"frames": len(moved), "max_shift_ticks": worst, "max_shift_s": float(worst * tb),
                      "examples": [list(m) for m in moved[:RETIME_EXAMPLES]]}
    if str(p) not in _retime_warned:  # probe runs more than once per job
        _retime_warned.add(str(p))
        log.warning("%s: %d video frames share a pts with the frame before them (as browser recorders"
                    " write them); each is moved just after it, by at most %d tick(s) (%.3f ms),"
                    " and every frame is kept", p, len(moved), worst, float(worst * tb) * 1000)


def _video_info(v: av.video.stream.VideoStream, timing: _Timing, packets: _VideoPackets,
                first: dict) -> VideoInfo:
    """VideoInfo from the stream's header, its frames' timing and its first decoded frame."""
    cc = v.codec_context
    tb = Fraction(v.time_base)
    pts = timing.pts
    field_order = _field_order(cc)
    alpha = cc.pix_fmt if _has_alpha_plane(cc.pix_fmt) else (
        f"{packets.codec} alpha" if packets.alpha else "none")
    return VideoInfo(
        index=v.index,
        codec=codec_name(cc),
        width=cc.width,
        height=cc.height,
        pix_fmt=cc.pix_fmt,
        bit_depth=_bit_depth(cc.pix_fmt),
        sar=Fraction(cc.sample_aspect_ratio or v.sample_aspect_ratio or 1),
        time_base=tb,
        avg_rate=_average_rate(pts, tb, v.average_rate),
        real_rate=Fraction(v.base_rate) if v.base_rate else None,
        vfr=_is_vfr(pts, tb),
        frame_count=len(pts),
        frame_pts=pts,
        keyframe_pts=timing.keys or [pts[0]],
        color_range=int(first.get("color_range", cc.color_range or 0)),
        color_primaries=int(first.get("color_primaries", cc.color_primaries or 2)),
        color_trc=int(first.get("color_trc", cc.color_trc or 2)),
        colorspace=int(first.get("colorspace", cc.colorspace or 2)),
        rotation=int(first.get("rotation", 0)),
        field_order=field_order,
        hdr=first.get("hdr"),
        mirrored=bool(first.get("mirrored")),
        display_matrix=first.get("display_matrix"),
        side_data=first.get("side_data") or [],
        leading_undecodable=timing.leading,
        hidden_packets=packets.hidden,
        retimed=timing.retimed,
        retimed_groups=timing.groups,
        alpha=alpha,
        gop_timecode=first.get("gop_timecode"),
        interlaced=bool(first.get("interlaced")) or field_order not in (None, "progressive", "unknown"),
        start_time=float(pts[0] * tb),
        language=_lang(v),
        disposition=int(v.disposition),
        metadata=dict(v.metadata),
    )


def _has_alpha_plane(pix_fmt: str | None) -> bool:
    try:
        return any(c.is_alpha for c in av.VideoFormat(pix_fmt or "").components)
    except (ValueError, av.error.FFmpegError):
        return False


def _other_streams(others: list[av.stream.Stream], counts: dict[int, list]
                   ) -> tuple[list[StreamInfo], list[StreamInfo], list[StreamInfo]]:
    """Audio, subtitle and all other streams (data, attachments, extra video), in file order."""
    audio, subs, other = [], [], []
    for s in others:
        n, t0, t1 = counts[s.index]
        ctx = s.codec_context
        info = StreamInfo(
            index=s.index,
            kind="attachment" if s.type == "attachment" else s.type,
            codec=codec_name(ctx),
            time_base=Fraction(s.time_base) if s.time_base else None,
            language=_lang(s),
            disposition=int(s.disposition),
            metadata=dict(s.metadata),
            packets=n,
            start_time=t0,
            end_time=t1,
        )
        if s.type == "audio":
            info.sample_rate = ctx.sample_rate
            info.channels = ctx.channels
            info.layout = ctx.layout.name if ctx.layout else None
            audio.append(info)
        elif s.type == "subtitle":
            subs.append(info)
        else:
            if s.type == "video":
                info.width, info.height = ctx.width, ctx.height
            other.append(info)
    return audio, subs, other


# Containers whose declared duration is where the streams end, counted from time 0, not how
# long they last from their first timestamp (FFmpeg's matroska and nut readers: a file whose
# timestamps start at 10 s and run for 1 s declares 11 s; MP4, MOV, TS and FLV declare 1 s).
_DURATION_IS_END = ("matroska", "nut")


def _check_not_truncated(p: Path, video: VideoInfo, counts: dict, duration: float | None,
                         start_us: int | None, format_name: str = "") -> None:
    """InputError when every stream stops well before the duration the container declares."""
    if not duration:
        return
    ends = [float(video.end_pts() * video.time_base)] + [d[2] for d in counts.values() if d[2] is not None]
    start = 0.0 if format_name.startswith(_DURATION_IS_END) else (start_us or 0) / 1e6
    end = max(ends) - start
    if end < duration - max(0.5, 0.02 * duration):
        raise InputError(f"{p}: truncated: its streams end at {end:.3f} s but the container declares"
                         f" {duration:.3f} s")


def side_data_of(frame: av.VideoFrame) -> dict[str, Any]:
    """A frame's side data by kind ("A53_CC", "DISPLAYMATRIX", ...; the first of each), not copied."""
    try:
        items = list(frame.side_data)
    except (TypeError, AttributeError):
        return {}
    found: dict[str, Any] = {}
    for sd in items:
        found.setdefault(str(getattr(sd, "type", "")).upper().rsplit(".", 1)[-1], sd)
    return found


def hdr_metadata(frame: av.VideoFrame) -> dict | None:
    """HDR10 static metadata from a frame's side data, or None.

    master_display: "G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)" in x265's units (chromaticity x 50000,
    luminance x 10000 cd/m2); max_cll: [MaxCLL, MaxFALL] in cd/m2.
    """
    out: dict = {}
    found = side_data_of(frame)
    if "MASTERING_DISPLAY_METADATA" in found and len(raw := bytes(found["MASTERING_DISPLAY_METADATA"])) >= 88:
        v = struct.unpack("<20i2i", raw[:88])
        q = [Fraction(v[i], v[i + 1]) if v[i + 1] else Fraction(0) for i in range(0, 20, 2)]
        if v[20]:  # has_primaries; FFmpeg orders R, G, B
            c = [round(x * 50000) for x in q[:8]]
            lum = f"L({round(q[9] * 10000)},{round(q[8] * 10000)})" if v[21] else ""
            out["master_display"] = (f"G({c[2]},{c[3]})B({c[4]},{c[5]})R({c[0]},{c[1]})"
                                     f"WP({c[6]},{c[7]}){lum}")
    if "CONTENT_LIGHT_LEVEL" in found and len(raw := bytes(found["CONTENT_LIGHT_LEVEL"])) >= 8:
        out["max_cll"] = list(struct.unpack("<2I", raw[:8]))
    return out or None


_FIELD_ORDERS = {0: None, 1: "progressive", 2: "tt", 3: "bb", 4: "tb", 5: "bt"}


def _field_order(cc: Any) -> str | None:
    """FFmpeg's AVFieldOrder as a name (tt: top field first...), None when unknown."""
    fo = getattr(cc, "field_order", None)
    if fo is None:
        return None
    if isinstance(fo, str):
        return fo.lower() or None
    return _FIELD_ORDERS.get(int(fo))


# First-frame side data that says how to show the picture and that vsr does not carry over (the
# output's stream is made from the encoder's): compared by verify, named when lost.
# AFD (which part of a broadcast picture a screen of another shape shows) and the ambient viewing
# environment (the room light an iPhone's HDR grade assumes) are among them: the output's frames
# are made from the upscaled pixels and the encoders get only captions and HDR10 from the source
# (FFmpeg's libx264 wrapper writes no AFD from frame side data in any case).
PICTURE_SIDE_DATA = {"STEREO3D": "stereo 3D", "SPHERICAL": "360-degree (spherical) projection",
                     "ICC_PROFILE": "ICC profile", "DYNAMIC_HDR_PLUS": "HDR10+ dynamic metadata",
                     "DOVI_METADATA": "Dolby Vision metadata", "DOVI_RPU_BUFFER": "Dolby Vision metadata",
                     "AFD": "active format description (AFD)",
                     "AMBIENT_VIEWING_ENVIRONMENT": "ambient viewing environment"}


def _picture_side_data(frame: av.VideoFrame) -> list[str]:
    return sorted({PICTURE_SIDE_DATA[k] for k in side_data_of(frame) if k in PICTURE_SIDE_DATA})


def display_matrix(frame: av.VideoFrame) -> list[int] | None:
    """The frame's display matrix (9 int32 in FFmpeg's layout), or None when it has none."""
    sd = side_data_of(frame).get("DISPLAYMATRIX")
    raw = bytes(sd) if sd is not None else b""
    return list(struct.unpack("<9i", raw[:36])) if len(raw) >= 36 else None


def set_display_matrix(stream: Any, video: VideoInfo) -> None:
    """Give an output video stream the source's orientation: its display matrix as it is (a
    rotation and any mirror), or its rotation when only the angle is known."""
    if video.display_matrix and (video.rotation or video.mirrored):
        stream.set_display_matrix(list(video.display_matrix))
    elif video.rotation:
        stream.set_display_rotation(video.rotation)


def _display_mirrored(matrix: list[int] | None) -> bool:
    """Whether a display matrix mirrors the picture (negative determinant): a flip, which a
    rotation angle cannot express."""
    if matrix is None:
        return False
    a, b, _, c, d = matrix[:5]
    return a * d - b * c < 0


def gop_timecode(frame: av.VideoFrame) -> str | None:
    """The MPEG-1/2 GOP header timecode a frame carries (GOP_TIMECODE side data), or None.

    FFmpeg stores the header's 25 bits in an int64: drop_frame_flag, hours (5 bits), minutes (6),
    a marker bit, seconds (6), pictures (6)."""
    sd = side_data_of(frame).get("GOP_TIMECODE")
    raw = bytes(sd) if sd is not None else b""
    if len(raw) < 8:
        return None
    tc = struct.unpack("<q", raw[:8])[0] & 0x1FFFFFF
    sep = ";" if tc >> 24 & 1 else ":"
    return f"{tc >> 19 & 0x1F:02d}:{tc >> 13 & 0x3F:02d}:{tc >> 6 & 0x3F:02d}{sep}{tc & 0x3F:02d}"


def _first_frame(path: Path, index: int) -> dict:
    """Tags only the decoded frame carries: rotation (display matrix), colour, interlacing, side
    data, an MPEG GOP header's timecode."""
    try:
        with av.open(str(path)) as c:
            s = stream_by_index(c, index)
            for f in c.decode(s):
                return {
                    "rotation": round(f.rotation or 0),
                    "color_range": f.color_range,
                    "color_primaries": f.color_primaries,
                    "color_trc": f.color_trc,
                    "colorspace": f.colorspace,
                    "interlaced": f.interlaced_frame,
                    "hdr": hdr_metadata(f),
                    "mirrored": _display_mirrored(display_matrix(f)),
                    "display_matrix": display_matrix(f),
                    "side_data": _picture_side_data(f),
                    "gop_timecode": gop_timecode(f),
                }
    except av.error.FFmpegError as err:
        raise InputError(f"{path}: cannot decode the first video frame: {_one_line(err)}") from None
    raise InputError(f"{path}: video stream #{index} has no decodable frames")


def _pts_by_decoding(path: Path, index: int) -> tuple[list[int], list[int]]:
    """Frame pts from a full decode, for streams whose packets carry no pts (raw, some AVI)."""
    pts, keys = [], []
    try:
        with av.open(str(path)) as c:
            s = stream_by_index(c, index)
            for f in c.decode(s):
                t = f.pts if f.pts is not None else f.dts
                if t is None:
                    raise InputError(f"{path}: video frames carry no timestamps")
                pts.append(t)
                if f.key_frame:
                    keys.append(t)
    except av.error.FFmpegError as err:
        raise InputError(f"{path}: cannot decode video: {_one_line(err)}") from None
    return pts, keys
