"""Which source streams an output container can carry, and how: copy, convert, transcode or drop."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import Any

import av

from vsr.errors import OutputError
from vsr.media.containers import ENCODER_PRIMING, NO_START_TRIM, muxer_for
from vsr.media.probe import MediaInfo, StreamInfo, is_timecode_track, open_input, stream_by_index
from vsr.media.start_trim import StartTrim, plan_start_trim

TEXT_SUBTITLES = {"mov_text", "subrip", "srt", "text", "webvtt"}
LOSSLESS_AUDIO = {"flac", "alac", "wavpack", "truehd", "mlp", "tta", "ape"}
# containers offered (each tried with the stream) when the output's own refuses a stream
HOLDERS_TO_TRY = ((".mkv", "matroska"), (".mov", "mov"), (".mp4", "mp4"))


# what assemble does with a stream: write it (copy, convert, transcode), write it again from the
# video's tag or the file's chapters (timecode, chapters), or leave it out with a note (drop)
PLAN_ACTIONS = ("copy", "convert", "transcode", "timecode", "chapters", "drop")


@dataclass
class StreamPlan:
    """What assemble does with one non-main source stream."""

    index: int
    kind: str
    codec: str | None
    action: str  # copy | convert | transcode | timecode (carried as the video's tag) | chapters | drop
    target_codec: str | None
    note: str = ""
    target_layout: str | None = None  # transcode: the encoder's channel layout
    # Audio whose source marks its first samples to be skipped (encoder priming behind an MP4 edit
    # list; vsr.media.start_trim), or whose encoder primes it:
    skip_packets: int = 0  # copy: leading packets left out (their sound is never heard)
    codec_delay: int = 0  # copy: samples the output container marks to be skipped (Matroska CodecDelay)
    played_lead: int = 0  # samples the output plays before the sound, having no place to mark them

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return asdict(self)


def _is_lossless_audio(codec: str | None) -> bool:
    return bool(codec) and (codec.startswith("pcm_") or codec in LOSSLESS_AUDIO)


def _first_packets(path: str, indices: list[int]) -> dict[int, av.Packet]:
    """Each stream's first non-empty packet, in one demux pass that stops when all are found."""
    found: dict[int, av.Packet] = {}
    try:
        with av.open(path) as c:
            streams = [s for s in c.streams if s.index in indices and s.type != "attachment"]
            want = {s.index for s in streams}
            for p in c.demux(streams):
                if p.size and p.stream.index not in found:
                    found[p.stream.index] = p
                    if len(found) == len(want):
                        break
    except av.error.FFmpegError:
        pass
    return found


def _accepts(muxer: str, stream: av.stream.Stream, pkt: av.Packet | None) -> bool:
    """True when muxer takes a stream-copy of `stream` and gives it back: header, one real packet
    and trailer are written to memory (some muxers accept a codec in the header and refuse its
    packets) and read again (some write a codec they have no tag for as a private stream that no
    reader identifies, e.g. FLAC in MPEG-TS)."""
    if stream.type == "attachment":
        return muxer == "matroska"  # only Matroska stores attached files
    buf = io.BytesIO()
    try:
        out = av.open(buf, "w", format=muxer)
    except av.error.FFmpegError:
        return False
    try:
        o = out.add_stream_from_template(stream, opaque=True)
        o.time_base = stream.time_base
        out.start_encoding()
        if pkt is not None:
            pkt.stream = o
            out.mux(pkt)
        out.close()
    except (ValueError, av.error.FFmpegError, TypeError):
        try:
            out.close()
        except Exception:  # noqa: BLE001 - a muxer that failed leaves nothing worth closing
            pass
        return False
    return _reads_back(buf, stream, pkt is not None)


# Decoders of one bitstream family: MP4 stores MPEG-1/2 audio of any layer under one object type
# and reads it back as MP3 (the same frames, which every MPEG audio decoder takes).
_SAME_CODEC = {"mp1": "mpeg_audio", "mp2": "mpeg_audio", "mp3": "mpeg_audio"}


def _codec_name(stream: av.stream.Stream) -> str | None:
    """The codec of a stream as FFmpeg identifies it (data streams have no codec context)."""
    cc = stream.codec_context
    name = cc.name if cc is not None else getattr(stream, "name", None)
    if name and name.endswith("float"):
        name = name[: -len("float")]  # mp3float, mp2float: the decoder's name, not the codec's
    return _SAME_CODEC.get(name or "", name)


def _reads_back(buf: io.BytesIO, stream: av.stream.Stream, with_packet: bool) -> bool:
    """Whether the bytes a muxer wrote read back as a stream of the same kind and codec (and,
    with_packet, with a packet of that stream)."""
    buf.seek(0)
    want = _codec_name(stream)
    try:
        with av.open(buf, "r") as c:
            found = [s for s in c.streams if s.type == stream.type and _codec_name(s) == want]
            if not found:
                return False
            if not with_packet:
                return True
            return any(p.size for p in c.demux(found[0]))
    except (av.error.FFmpegError, ValueError):
        return False


def _audio_target(muxer: str, codec: str | None) -> str:
    if muxer == "webm":
        return "libopus"
    if muxer == "mpegts":
        return "aac"  # FFmpeg writes no lossless codec readable from MPEG-TS (s302m is not built)
    if muxer in ("mp4", "mov"):
        return "alac" if _is_lossless_audio(codec) else "aac"
    return "flac" if _is_lossless_audio(codec) else "aac"


def audio_encoder_format(codec: str, src: Any) -> tuple[int, str]:
    """Sample rate and format for a transcode: the source's when the encoder takes them, else the
    closest it takes without losing resolution (s16 -> s16p, 24-bit -> s32p; 44.1 kHz -> 48 kHz Opus)."""
    enc = av.codec.Codec(codec, "w")
    rates = list(enc.audio_rates or [])
    rate = src.sample_rate
    if rates and rate not in rates:
        rate = min((r for r in rates if r >= rate), default=max(rates))
    formats = [f.name for f in (enc.audio_formats or [])]
    want = src.format.name if src.format else "s16"
    if not formats or want in formats:
        return rate, want
    bytes_of = {f: av.AudioFormat(f).bytes for f in formats}
    need = av.AudioFormat(want).bytes
    fmt = min(formats, key=lambda f: (bytes_of[f] < need, bytes_of[f], not f.endswith("p")))
    return rate, fmt


# Standard layouts an encoder may take instead of a source's: the same speakers with side and back
# channels exchanged (AC-3's 5.1 is 5.1(side); Opus and AAC take 5.1). Resampling then moves
# the side channels onto the back ones at unity gain; nothing is mixed.
_SIDE_BACK = {"SL": "BL", "SR": "BR", "BL": "SL", "BR": "SR"}
_STANDARD_LAYOUTS = ("mono", "stereo", "2.1", "3.0", "3.0(back)", "4.0", "quad", "quad(side)", "3.1", "4.1",
                     "5.0", "5.0(side)", "5.1", "5.1(side)", "6.0", "6.1", "6.1(back)", "7.0", "7.1",
                     "7.1(wide)", "7.1(wide-side)")


def _encoder_layout(codec: str, cc: Any) -> tuple[str | None, bool]:
    """(layout the encoder opens with, whether it is the source's relabelled) for a transcode of an
    audio stream with codec context cc; (None, False) when no layout keeps every channel."""
    src = cc.layout.name
    count = cc.channels
    if "channels" in src:  # "2 channels" (no channel order, e.g. PCM in AVI): the default for the count
        src = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(count, src)
    if _opens(codec, cc, src):
        return src, False
    try:
        names = [c.name for c in av.AudioLayout(src).channels]
    except (ValueError, av.error.FFmpegError):
        return None, False
    swapped = sorted(_SIDE_BACK.get(n, n) for n in names)
    for other in _STANDARD_LAYOUTS:
        chans = [c.name for c in av.AudioLayout(other).channels]
        if len(chans) == count and sorted(chans) == swapped and _opens(codec, cc, other):
            return other, True
    return None, False


def _opens(codec: str, cc: Any, layout: str) -> bool:
    rate, fmt = audio_encoder_format(codec, cc)
    enc = av.CodecContext.create(codec, "w")
    try:
        enc.sample_rate, enc.format, enc.layout = rate, fmt, layout
        enc.open(strict=False)
        return True
    except (av.error.FFmpegError, ValueError):
        return False
    finally:
        try:
            enc.close()
        except (AttributeError, av.error.FFmpegError):
            pass


def _text_target(muxer: str) -> str | None:
    return {"mp4": "mov_text", "mov": "mov_text", "matroska": "subrip", "webm": "webvtt"}.get(muxer)


_DISCARD_ALL = 48  # AVDISCARD_ALL


def _is_chapter_track(info: MediaInfo, s_info: StreamInfo, stream: av.stream.Stream) -> bool:
    """A MOV/MP4 chapter track: FFmpeg reads it into the file's chapters and marks the stream
    discarded (its packets are the chapter titles); not a stream to copy or to warn about."""
    return (info.container.startswith("mov") and bool(info.chapters) and s_info.kind in ("data", "subtitle")
            and int(getattr(stream, "discard", 0) or 0) >= _DISCARD_ALL)


def _unknown_data_note(s_info: StreamInfo) -> str:
    """Why a data stream of a format FFmpeg does not know (QuickTime timed metadata 'mebx', an
    Android 'mett' track) is not copied: FFmpeg keeps its packets but not its sample description
    (the keys that say what the bytes mean), so any copy would be unreadable, and MOV would even
    get a track with an empty description."""
    handler = next((str(v) for k, v in (s_info.metadata or {}).items() if k.lower() == "handler_name"), "")
    what = f" '{handler}'" if handler else ""
    return (f"stream #{s_info.index} (data{what}, {s_info.packets} packet(s)): a data format FFmpeg cannot "
            "identify; a copy would lose the description of its contents; not copied")


def plan_streams(info: MediaInfo, output_path: str | os.PathLike) -> list[StreamPlan]:
    """Decide, before any work, how each non-main stream reaches the output: one StreamPlan per
    stream, a note for every drop, conversion and transcode.

    Raises OutputError naming the stream and a container that would hold it when no faithful
    conversion exists (e.g. ASS or bitmap subtitles into .mp4), and when the container cannot hold
    what the video carries besides its pictures (a rotation, chapters or a timecode in MPEG-TS).
    """
    muxer = muxer_for(output_path)
    check_container_holds(info, muxer, output_path)
    first = _first_packets(info.path, [x.index for x in info.streams])
    with open_input(info.path) as c:
        return [_plan_stream(info, s_info, stream_by_index(c, s_info.index), muxer, output_path,
                             first.get(s_info.index)) for s_info in info.streams]


def check_container_holds(info: MediaInfo, muxer: str, output_path: str | os.PathLike) -> None:
    """OutputError (one line, before any work) when the output container has no place for what the
    video needs to show right: MPEG-TS for a display matrix (rotation or mirror). (Its chapters and start timecode,
    which TS cannot hold either, are left out with a note: verify records them as dropped.)"""
    if muxer == "mpegts" and (info.video.rotation or info.video.mirrored):
        what = "mirror" if info.video.mirrored else "rotation"
        raise OutputError(f"{output_path}: MPEG-TS has no place for the video's display {what} "
                          f"({info.video.rotation} degrees{', mirrored' if info.video.mirrored else ''}: it would "
                          "show unrotated and unmirrored); write .mkv, .mov or .mp4")


def _label(s_info: StreamInfo) -> str:
    return f"stream #{s_info.index} ({s_info.kind} {s_info.codec or 'unknown'}" + (
        f", {s_info.language})" if s_info.language else ")")


def _plan_stream(info: MediaInfo, s_info: StreamInfo, s: av.stream.Stream, muxer: str,
                 output_path: str | os.PathLike, pkt: av.Packet | None) -> StreamPlan:
    """The decision for one stream (pkt: its first packet, to try a copy with)."""
    kind, codec, index = s_info.kind, s_info.codec, s_info.index
    if is_timecode_track(info, s_info):
        # written again from the video's timecode tag (assemble), not copied: a copy next
        # to the muxer's own would give MOV/MP4 two timecode tracks
        return StreamPlan(index, kind, codec, "timecode", None)
    if _is_chapter_track(info, s_info, s):
        # the chapters themselves are written again (assemble), as the output's own kind
        return StreamPlan(index, kind, codec, "chapters", None)
    if kind == "data" and codec is None:
        return StreamPlan(index, kind, codec, "drop", None, _unknown_data_note(s_info))
    if _accepts(muxer, s, pkt):
        return _copy_plan(s_info, muxer, plan_start_trim(info.path, s, muxer) if kind == "audio" else None)
    if kind == "audio":
        return _plan_audio_transcode(s_info, s, muxer, output_path, pkt)
    if kind == "subtitle" and codec in TEXT_SUBTITLES and _text_target(muxer):
        target = _text_target(muxer)
        return StreamPlan(index, kind, codec, "convert", target,
                          f"{_label(s_info)}: {muxer} cannot hold {codec}; converted to {target}")
    holders = [ext for ext, other in HOLDERS_TO_TRY if other != muxer and _accepts(other, s, pkt)]
    if kind == "subtitle":  # subtitles are never dropped: refused now, naming a container that keeps them
        where = f"write to {' or '.join(holders)} instead" if holders else "no container vsr writes can hold it"
        raise OutputError(f"{output_path}: the {muxer} container cannot hold {_label(s_info)} and no "
                          f"faithful conversion exists; {where}")
    advice = f"use {' or '.join(holders)} to keep it" if holders else "no container vsr writes can hold it"
    return StreamPlan(index, kind, codec, "drop", None, f"{_label(s_info)}: {muxer} cannot hold it; not copied ({advice})")


def _copy_plan(s_info: StreamInfo, muxer: str, trim: StartTrim | None) -> StreamPlan:
    """A stream copy, keeping the source's start trim as the plan for it says (with a note when
    the output plays marked samples or leaves packets out)."""
    plan = StreamPlan(s_info.index, s_info.kind, s_info.codec, "copy", s_info.codec)
    if trim is None:
        return plan
    plan.skip_packets, plan.codec_delay, plan.played_lead = trim.skip_packets, trim.codec_delay, trim.played
    ms = trim.marked * 1000 / trim.rate
    head = (f"{_label(s_info)}: the source marks its first {trim.marked} samples (encoder priming or cut "
            f"sound, {ms:.0f} ms) to be skipped")
    if not trim.codec_delay:
        plan.note = (f"{head} and {muxer} cannot, so players play them before the sound, which stays in sync "
                     "(.mov and .mp4 keep the mark)")
    elif trim.skip_packets or trim.played:
        plan.note = (f"{head}; {muxer} marks {trim.codec_delay} on a copy, so the first {trim.skip_packets} "
                     f"packet(s), whose sound is never heard, are left out and {trim.played} samples "
                     f"({trim.played * 1000 / trim.rate:.1f} ms) play before the sound, which stays in sync and "
                     + ("decodes sample for sample as the source's" if trim.difference_db is None else
                        f"decodes as the source's to {trim.difference_db:.0f} dB (the decoder's noise substitution "
                        "starts afresh)") + " (.mov and .mp4 keep the whole mark)")
    return plan


def _plan_audio_transcode(s_info: StreamInfo, s: av.stream.Stream, muxer: str, output_path: str | os.PathLike,
                          pkt: av.Packet | None) -> StreamPlan:
    """Audio the container cannot hold as it is: transcoded keeping every channel, or refused now."""
    codec = s_info.codec
    target = _audio_target(muxer, codec)
    layout, relabelled = _encoder_layout(target, s.codec_context)
    if layout is None:  # refused now: found at the end, it cost the whole job
        holders = [ext for ext, other in HOLDERS_TO_TRY if other != muxer and _accepts(other, s, pkt)]
        where = f"write to {' or '.join(holders)} to keep it" if holders else "no container helps"
        raise OutputError(f"{output_path}: {muxer} cannot hold {_label(s_info)} and {target} cannot encode "
                          f"its {s.codec_context.layout.name} channel layout; {where}")
    note = f"{_label(s_info)}: {muxer} cannot hold {codec}; transcoded to {target}"
    if relabelled:
        note += f" ({s.codec_context.layout.name} as {layout}: side channels as back)"
    if _is_lossless_audio(codec) and target not in LOSSLESS_AUDIO:
        note += f" (lossy: {muxer} takes no lossless codec vsr writes; use .mkv or .mov to keep it lossless)"
    priming = ENCODER_PRIMING.get(target, 0) if muxer in NO_START_TRIM else 0
    if priming:
        note += (f"; {muxer} cannot mark the encoder's {priming}-sample priming to be skipped, so players "
                 f"play it (~{priming * 1000 // (s.codec_context.sample_rate or 48000)} ms) before the sound, "
                 "which stays in sync")
    return StreamPlan(s_info.index, s_info.kind, codec, "transcode", target, note, layout, played_lead=priming)
