"""A copied audio stream's start trim: the samples its source marks to be skipped.

An AAC encoder puts priming before the sound (FFmpeg's 1024 samples, Apple's 2112); an MP4/MOV
edit list hides it, and FFmpeg hands the mark over as the first packet's skip_samples, which its
decoder obeys: the first sample decoded is the sound's first, with the video. A copy keeps the
mark only where the output container has a place for it that FFmpeg's muxer fills:

- MOV/MP4: the muxer writes an edit list from skip_samples again (nothing to do here).
- Matroska/WebM: CodecDelay, which the muxer writes from the output stream's initial_padding
  (AVCodecParameters), never from skip_samples; its per-block DiscardPadding it writes only for
  the end of a block. The MOV demuxer leaves initial_padding at 0 and PyAV has no setter for it;
  only an opened encoder sets it, to its own priming (FFmpeg's AAC encoder: 1024, AAC's codec
  delay), the mark of a 1024-sample priming. A longer mark (Apple's 2112) is kept to within a
  frame: the leading packets whose sound is never heard are left out, the rest plays early.
- NUT and MPEG-TS have no place for it: the marked samples play before the sound, in sync.

Every trimmed copy is written and decoded in memory while planning: the plan keeps it only when
its decoded samples are the source's. They are to the bit, except where the decoder fills bands
with noise of its own (AAC's perceptual noise substitution, which FFmpeg's encoder uses): a decoder
that starts at a later packet draws other noise of the same spectrum, far below the sound.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from vsr.media.containers import COPY_LOSES_START_TRIM
from vsr.media.probe import codec_name

# muxers that write CodecDelay from the stream's initial_padding
CODEC_DELAY_MUXERS = ("matroska", "webm")
# frames decoded past the mark to compare a trimmed copy with its source
COMPARED_FRAMES = 4
MAX_LEADING_PACKETS = 64
# a trimmed copy whose decoded samples differ from the source's by more (RMS, relative to the
# sound's) is not kept: a sample out of place is -25 dB for a 440 Hz tone at 48 kHz
MAX_DIFFERENCE_DB = -40.0


@dataclass(frozen=True)
class StartTrim:
    """How a copy keeps its source's mark of `marked` samples to skip at the start."""

    marked: int  # samples the source marks to be skipped (its first packet's skip_samples)
    rate: int  # samples per second
    skip_packets: int = 0  # leading packets left out of the copy: their sound is never heard
    codec_delay: int = 0  # samples the output container marks to be skipped (Matroska CodecDelay)
    played: int = 0  # marked samples the output plays before the sound (the sound stays in sync)
    difference_db: float | None = None  # after them, the decoded samples' difference from the source's (None: none)


def skip_mark(pkt: av.Packet) -> int:
    """Samples a packet's skip_samples side data marks to be skipped at its start (0: none)."""
    if not pkt.has_sidedata("skip_samples"):
        return 0
    raw = bytes(pkt.get_sidedata("skip_samples"))
    return int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0


def plan_start_trim(path: str, stream: av.stream.Stream, muxer: str) -> StartTrim | None:
    """How a copy of `stream` (an open input stream of `path`) into `muxer` keeps the samples the
    source marks to be skipped at its start; None when it marks none or the output keeps the mark
    by itself (MOV/MP4) or Opus carries it in its own header (pre-skip), which every container copies."""
    cc = stream.codec_context
    if stream.type != "audio" or muxer not in COPY_LOSES_START_TRIM or cc is None or codec_name(cc) == "opus":
        return None
    packets = _leading_packets(path, stream.index)
    marked = skip_mark(packets[0]) if packets else 0
    rate = cc.sample_rate or 0
    if marked <= 0 or not rate or _written_mark(stream, muxer, packets[0], trimmed=False) == marked:
        return None  # nothing marked, or a plain copy keeps the mark (Matroska's CodecDelay into Matroska)
    if muxer in CODEC_DELAY_MUXERS:
        trim = _codec_delay_trim(path, stream, muxer, packets, StartTrim(marked, rate))
        if trim is not None:
            return trim
    return StartTrim(marked, rate, played=marked)


def add_trimmed_copy(dst: Any, stream: av.stream.Stream) -> Any:
    """An output stream of `dst` for a copy of `stream` whose container marks its first samples to
    be skipped: as many as FFmpeg's encoder of the codec primes (AVCodecContext.initial_padding,
    passed on to AVCodecParameters, which Matroska writes as CodecDelay). PyAV sets initial_padding
    no other way: the stream is made for that encoder with the source's parameters and the encoder
    is opened, which sets it; its own codec configuration is replaced by the source's again. No
    frame is encoded: the packets written are the source's."""
    out = dst.add_stream_from_template(stream, opaque=False)
    cc = out.codec_context
    config = cc.extradata
    cc.open()
    cc.extradata = config
    out.time_base = stream.time_base
    return out


def _leading_packets(path: str, index: int) -> list[av.Packet]:
    """The stream's first non-empty packets: those up to the marked samples' end and COMPARED_FRAMES
    more (at most MAX_LEADING_PACKETS)."""
    found: list[av.Packet] = []
    try:
        with av.open(path) as c:
            s = next(x for x in c.streams if x.index == index)
            rate = s.codec_context.sample_rate or 1
            for p in c.demux(s):
                if not p.size or p.pts is None:
                    continue
                found.append(p)
                mark_end = _samples(found[0].pts, p.time_base, rate) + skip_mark(found[0])
                past = [q for q in found if _samples(q.pts, q.time_base, rate) >= mark_end]
                if len(past) > COMPARED_FRAMES or len(found) >= MAX_LEADING_PACKETS:
                    break
    except (av.error.FFmpegError, StopIteration):
        return []
    return found


def _samples(ticks: int | None, time_base: Fraction | None, rate: int) -> int:
    return round((ticks or 0) * (time_base or 0) * rate)


def _codec_delay_trim(path: str, stream: av.stream.Stream, muxer: str, packets: list[av.Packet],
                      want: StartTrim) -> StartTrim | None:
    """The copy into Matroska/WebM that keeps the mark best, checked by decoding it: the
    container's CodecDelay skips the first `delay` samples of the first packet kept, which is the
    last one with those samples before the mark's end (its own sound, decoded without the packet
    before it, is wrong, so all of it must be skipped). None when no such copy decodes as the source."""
    delay = _written_mark(stream, muxer, packets[0], trimmed=True)
    if not delay:
        return None
    rate, origin = want.rate, packets[0].pts
    starts = [_samples(p.pts - origin, p.time_base, rate) for p in packets]
    lengths = [_samples(p.duration, p.time_base, rate) for p in packets]
    kept = [j for j, start in enumerate(starts)
            if start + delay <= want.marked and (j == 0 or 0 < lengths[j] <= delay)]
    if not kept:
        return None
    first = kept[-1]
    played = want.marked - delay - starts[first]
    difference = _difference_from_source(path, stream, muxer, packets[first:], played)
    if difference is None or difference > MAX_DIFFERENCE_DB:
        return None
    return StartTrim(want.marked, rate, skip_packets=first, codec_delay=delay, played=played,
                     difference_db=None if difference == -np.inf else round(difference, 1))


def _written_copy(stream: av.stream.Stream, muxer: str, packets: list[av.Packet],
                  trimmed: bool = True) -> io.BytesIO | None:
    """A copy of these packets written to memory, trimmed (add_trimmed_copy) or plain; None when
    FFmpeg has no encoder to set the mark with or the muxer refuses it."""
    buf = io.BytesIO()
    try:
        with av.open(buf, "w", format=muxer) as out:
            if trimmed:
                o = add_trimmed_copy(out, stream)
            else:
                o = out.add_stream_from_template(stream, opaque=True)
                o.time_base = stream.time_base
            for p in packets:
                q = av.Packet(bytes(p))  # muxing rescales a packet's times: the source's stay as they are
                q.pts, q.dts, q.duration, q.time_base = p.pts, p.dts, p.duration, p.time_base
                q.is_keyframe = p.is_keyframe
                q.stream = o
                out.mux(q)
    except (av.error.FFmpegError, ValueError, TypeError):
        return None
    buf.seek(0)
    return buf


def _written_mark(stream: av.stream.Stream, muxer: str, first: av.Packet, trimmed: bool) -> int:
    """Samples a copy (trimmed: add_trimmed_copy) marks to be skipped at its start, as FFmpeg's
    demuxer reads the mark back."""
    buf = _written_copy(stream, muxer, [first], trimmed)
    if buf is None:
        return 0
    try:
        with av.open(buf) as c:
            return next((skip_mark(p) for p in c.demux(c.streams.audio[0]) if p.size), 0)
    except (av.error.FFmpegError, IndexError):
        return 0


def _difference_from_source(path: str, stream: av.stream.Stream, muxer: str, kept: list[av.Packet],
                            played: int) -> float | None:
    """How much the trimmed copy of `kept`, after `played` samples, decodes differently from the
    source (dB, the RMS of the difference relative to the sound's; -inf: not at all), over
    COMPARED_FRAMES frames at least; None when it does not decode or decodes too little."""
    buf = _written_copy(stream, muxer, kept)
    if buf is None:
        return None
    try:
        got = _decoded(buf, None)
        want = _decoded(path, stream.index, got.shape[1] - played)
    except (av.error.FFmpegError, StopIteration, ValueError):
        return None
    n = min(want.shape[1], got.shape[1] - played)
    if n < COMPARED_FRAMES * (stream.codec_context.frame_size or 1024) or got.shape[0] != want.shape[0]:
        return None
    a, b = want[:, :n].astype(np.float64), got[:, played:played + n].astype(np.float64)
    error, sound = np.sqrt(np.mean((b - a) ** 2)), np.sqrt(np.mean(a ** 2))
    if error == 0:
        return -np.inf
    return 20 * np.log10(error / sound) if sound > 0 else np.inf


def _decoded(source: Any, index: int | None, limit: int | None = None) -> np.ndarray:
    """The decoded samples (channels x samples) of audio stream `index` (None: the first) of a file
    or buffer, as FFmpeg's decoder gives them (marked samples skipped); `limit`: about that many."""
    chunks: list[np.ndarray] = []
    total = 0
    with av.open(source) as c:
        s = c.streams.audio[0] if index is None else next(x for x in c.streams if x.index == index)
        for f in c.decode(s):
            a = f.to_ndarray()
            chunks.append(a if f.format.is_planar else a.reshape(-1, len(f.layout.channels)).T)
            total += f.samples
            if limit is not None and total >= limit:
                break
    if not chunks:
        raise ValueError("nothing decodes")
    return np.concatenate(chunks, axis=1)
