"""assemble: concatenate segment video packets and remux every other source stream into the output."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import av

from vsr.errors import OutputError, UsageError, VerifyError
from vsr.faults import maybe_fail
from vsr.media import subtitle_text
from vsr.media.colour import is_rgb_format, matrix_tag_of
from vsr.media.containers import (HANDLER_NAME, JOB_TAG, TS_PCR_LEAD_MIN_S, TS_PCR_LEAD_S, job_tag_fingerprint,
                                  muxer_for, set_job_tag)
from vsr.media.encode import EncodeOptions, output_range
from vsr.media.frame_digests import EncodedFrame
from vsr.media.probe import MediaInfo, open_input, probe, set_display_matrix, stream_by_index
from vsr.media.start_trim import add_trimmed_copy
from vsr.media.streams import PLAN_ACTIONS, StreamPlan, audio_encoder_format, plan_streams
from vsr.media.verify import VerifyReport, empty_mov_text, output_timecode, verify

log = logging.getLogger("vsr.media")

# the source's own job tag (a vsr output upscaled again) describes the source, not this output
_DROP_META = {"encoder", "major_brand", "minor_version", "compatible_brands", "creation_time_utc", JOB_TAG}
_AUDIO_BITRATE = {"aac": 256_000, "libopus": 192_000}


def host_name() -> str:
    """This machine's name as it appears in part-file names (only [A-Za-z0-9._-])."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", socket.gethostname())[:64] or "host"


def temp_output_path(output: Path) -> Path:
    """A hidden temporary name beside the output (same directory, so os.replace is atomic).

    Host and PID name the writer: on storage shared by several nodes a PID alone says nothing
    about a file another node is writing.
    """
    return output.with_name(f".{output.stem}.vsr-part-{host_name()}-{os.getpid()}{output.suffix}")


def stale_part_files(output: str | os.PathLike) -> list[tuple[Path, int]]:
    """(path, pid) of this output's temporary files (temp_output_path) whose process is gone.

    A job killed while assembling (SIGKILL, power cut) leaves its hidden part file behind; only
    names of exactly our pattern for this output are considered. Only this host's files count
    (and the host-less `.NAME.vsr-part-PID.EXT` of older vsr versions, taken as this host's):
    whether another node's process still runs cannot be seen from here, so its files stay.
    """
    out = Path(output)
    pattern = re.compile(r"\." + re.escape(out.stem) + r"\.vsr-part-(?:([A-Za-z0-9._-]+)-)?(\d+)"
                         + re.escape(out.suffix))
    here = host_name()
    found = []
    try:
        names = [e.name for e in os.scandir(out.parent if str(out.parent) else ".") if e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    for name in sorted(names):
        m = pattern.fullmatch(name)
        if not m:
            continue
        host, pid = m.group(1), int(m.group(2))
        if host is not None and host != here:
            log.debug("part file %s belongs to host %s: left alone", out.with_name(name), host)
        elif not _process_alive(pid):
            found.append((out.with_name(name), pid))
    return found


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def check_output_writable(output: str | os.PathLike) -> Path:
    """The output path if its directory exists (created if missing) and is writable; else OutputError."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out}: cannot create the output directory: {err.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: output directory {parent} is not writable")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory")
    return out


class _SegmentClock:
    """A segment packet's pts in the video's time base: exact, or for a Matroska segment (VP8/VP9
    with alpha, whose BlockAdditional data NUT drops: encode.segment_muxer), which stores
    milliseconds, the one frame pts that the muxer rounded to that millisecond."""

    def __init__(self, frame_pts: Sequence[int], time_base: Fraction) -> None:
        self.time_base = time_base
        self._frame_pts = frame_pts
        self._by_ms: dict[int, int] | None = None

    def __call__(self, pts: int, src_tb: Fraction, where: Path) -> int:
        if src_tb == Fraction(1, 1000) and self.time_base != src_tb:
            # first: a rounded time can also convert exactly, to a tick that is no frame's
            if self._by_ms is None:
                self._by_ms = self._milliseconds()
            if pts in self._by_ms:
                return self._by_ms[pts]
        exact = pts * src_tb / self.time_base
        if exact.denominator == 1:
            return int(exact)
        raise OutputError(f"segment {where}: pts {pts} in {src_tb} is not exact in the source time base "
                          f"{self.time_base}")

    def _milliseconds(self) -> dict[int, int]:
        """millisecond -> the frame pts rounded to it (half away from zero, as FFmpeg rounds),
        for the milliseconds that one frame rounds to."""
        found: dict[int, list[int]] = {}
        for p in self._frame_pts:
            t = p * self.time_base * 1000
            found.setdefault(int(math.copysign(math.floor(abs(t) + Fraction(1, 2)), t)), []).append(p)
        return {ms: ps[0] for ms, ps in found.items() if len(ps) == 1}


def _segment_pts(paths: Sequence[Path], clock: _SegmentClock) -> tuple[list[list[int]], bytes | None]:
    """Every segment's packet pts (in clock.time_base) in decode order and their shared extradata.

    The segment muxer may store another time base (NUT picks its own); pts must convert exactly
    (_SegmentClock).
    """
    all_pts: list[list[int]] = []
    extradata: bytes | None = None
    for i, p in enumerate(paths):
        if not p.exists():
            raise OutputError(f"segment file {p} is missing")
        try:
            with av.open(str(p)) as c:
                s = c.streams.video[0]
                ed = bytes(s.codec_context.extradata or b"")
                if i == 0:
                    extradata = ed
                elif ed != extradata:
                    raise OutputError(f"segment {p} was encoded with other codec headers than segment 0"
                                      " (re-run it with the same encode options)")
                tb = Fraction(s.time_base)
                all_pts.append([clock(pk.pts, tb, p) for pk in c.demux(s) if pk.size])
        except av.error.FFmpegError as err:
            raise OutputError(f"segment file {p} is unreadable: {' '.join(str(err).split())}") from None
    return all_pts, extradata


def _decode_timestamps(pts_in_order: list[int]) -> list[int]:
    """Strictly increasing dts <= pts for packets in decode order (segments' own dts overlap at joins).

    dts_i = i-th smallest pts minus the largest reorder lead, so decoding order is kept and
    every packet still decodes before it is shown.
    """
    ordered = sorted(pts_in_order)
    shift = max(o - p for o, p in zip(ordered, pts_in_order))
    return [o - shift for o in ordered]


def _frame_durations(sorted_pts: list[int], last_step: int) -> dict[int, int]:
    dur = {a: b - a for a, b in zip(sorted_pts, sorted_pts[1:])}
    dur[sorted_pts[-1]] = last_step
    return dur


# A phone's or camera's QuickTime metadata ('mdta' keys) that FFmpeg's MOV/MP4 muxer writes only
# under its own names (udta atoms: location as ©xyz, make ©mak, model ©mod, date ©day); without
# them GPS position, camera make and model were lost from a .mov/.mp4 output
_QUICKTIME_ATOM_KEYS = {
    "com.apple.quicktime.location.iso6709": "location", "com.apple.quicktime.make": "make",
    "com.apple.quicktime.model": "model", "com.apple.quicktime.creationdate": "date",
    "com.apple.quicktime.title": "title", "com.apple.quicktime.artist": "artist",
    "com.apple.quicktime.comment": "comment", "com.apple.quicktime.copyright": "copyright",
    "com.apple.quicktime.keywords": "keywords", "com.apple.quicktime.author": "author",
    "com.apple.quicktime.genre": "genre", "com.apple.quicktime.album": "album",
}


def _container_metadata(src: dict, muxer: str) -> dict:
    """The source's file-level metadata as the output's muxer should get it: QuickTime 'mdta'
    keys under the names MOV/MP4 write (a key the source also has under that name wins)."""
    meta = dict(src)
    if muxer in ("mp4", "mov"):
        for k, v in src.items():
            name = _QUICKTIME_ATOM_KEYS.get(k.lower())
            if name and not any(x.lower() == name for x in meta):
                meta[name] = v
    return meta


def _lost_metadata(src: dict, output: Path, muxer: str) -> list[str]:
    """File-level metadata keys of the source that the written output does not carry (the
    container has no place for them), for a note: never dropped silently."""
    with open_input(output) as c:
        kept = {k.lower() for k in c.metadata}
    lost = []
    for k in src:
        low = k.lower()
        if low in _DROP_META or low == "timecode" or low in kept:
            continue
        if _QUICKTIME_ATOM_KEYS.get(low) in kept:
            continue
        lost.append(k)
    return lost


def _stream_metadata(meta: Any) -> dict:
    """A stream's metadata to copy: a MOV/MP4 track name (read as "name", written from "title")
    as its title, so that track titles ("Director commentary", "SDH") reach every container."""
    out = dict(meta)
    if "name" in out and not any(k.lower() == "title" for k in out):
        out["title"] = out.pop("name")
    return out


def _copy_metadata(dst: Any, src: dict) -> None:
    for k, v in src.items():
        if k.lower() in _DROP_META:
            continue
        if k.lower() == HANDLER_NAME and job_tag_fingerprint(str(v)):
            continue  # a vsr .mov source's job tag (its video track's handler name): not this output's
        dst.metadata[k] = v


def assemble(
    segment_paths: Sequence[str | os.PathLike],
    source: str | os.PathLike,
    output: str | os.PathLike,
    info: MediaInfo | None,
    options: EncodeOptions | None = None,
    *,
    scale: float,
    plans: list[StreamPlan] | None = None,
    picture: Any = None,
    job_tag: str | None = None,
    encoded: Sequence[EncodedFrame] | None = None,
) -> VerifyReport:
    """Write the output: the segments' video + the source's other streams, chapters and metadata.

    Written under a temporary name in the output's directory, verified against the source, then
    renamed over `output`. Raises VerifyError (the temporary file removed) when verification fails.
    picture (vsr.media.picture.PicturePlan): the segments hold that plan's frames (field rate: its
    pts and time base); `info` stays the source's, and verify compares with the plan applied.
    job_tag: text for the container's job tag (containers.set_job_tag), e.g. the settings'
    fingerprint, so a later batch can tell whether this output was made with its settings.
    encoded: every frame the segments encoded (their digests), for verify to match frame by frame.
    """
    info = info or probe(source)
    source_info = info
    if picture is not None:
        info = picture.output_info(info)  # video timing and SAR of the produced frames
    out = check_output_writable(output)
    if out.exists() and out.resolve() == Path(source).resolve():
        raise UsageError(f"{out}: output would overwrite the input")
    muxer = muxer_for(out)
    plans = plans if plans is not None else plan_streams(info, out)
    _check_plans_cover(info, plans, out)
    seg_paths = [Path(p) for p in segment_paths]
    dts_all, durations = _video_timing(seg_paths, info)
    tmp = temp_output_path(out)
    notes = [p.note for p in plans if p.note]
    for note in notes:
        log.warning(note)
    layout = _Layout(info, seg_paths, dts_all, durations, plans, muxer, output_timecode(source_info, picture))
    dst = _open_output(tmp, out, layout)
    # from here on any failure, expected or not, removes the temporary file: nothing half-made
    # stays beside the output, and nothing appears under its name
    try:
        _write_and_close(dst, out, source, layout, job_tag)
        report = verify(source, tmp, scale, info=source_info, plans=plans, picture=picture, encode=options,
                        encoded=encoded)
        if report.ok:
            notes += _verified_notes(report, source, tmp, layout)
        report.facts["notes"] = notes
        _publish(report, tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.facts["output"] = str(out)
    return report


def _check_plans_cover(info: MediaInfo, plans: list[StreamPlan], out: Path) -> None:
    """Assembly only follows the plan: every source stream but the main video has exactly one
    decision (plan_streams), made before any work; a stream without one is an error, not a guess."""
    planned = sorted(p.index for p in plans)
    streams = sorted(s.index for s in info.streams)
    if planned != streams:
        raise OutputError(f"{out}: the stream plan decides streams {planned} but the source has {streams} "
                          "besides its video: plan again (vsr.media.streams.plan_streams)")
    unknown = [p for p in plans if p.action not in PLAN_ACTIONS]
    if unknown:
        raise OutputError(f"{out}: stream #{unknown[0].index}: unknown planned action {unknown[0].action!r}")


def _video_timing(seg_paths: list[Path], info: MediaInfo) -> tuple[list[int], dict[int, int]]:
    """Every output video packet's dts (decode order) and each frame's duration by pts, after
    checking that the segments hold exactly the source's frames."""
    if not seg_paths:
        raise UsageError("assemble needs at least one segment file")
    seg_pts, _ = _segment_pts(seg_paths, _SegmentClock(info.video.frame_pts, info.video.time_base))
    flat = list(itertools.chain.from_iterable(seg_pts))
    if sorted(flat) != info.video.frame_pts:
        raise OutputError(
            f"segments hold {len(flat)} frames, source has {info.video.frame_count}"
            + ("" if len(flat) != info.video.frame_count else " (timestamps differ)")
            + ": a segment is missing, duplicated or stale")
    return _decode_timestamps(flat), _frame_durations(info.video.frame_pts, info.video.frame_duration_ticks())


@dataclass(frozen=True)
class _Layout:
    """What goes into the output file: the produced video's timing, the stream plans, the muxer."""

    info: MediaInfo  # the produced video's (picture plan applied)
    seg_paths: list[Path]
    dts_all: list[int]
    durations: dict[int, int]
    plans: list[StreamPlan]
    muxer: str
    start_timecode: str | None


def _open_output(tmp: Path, out: Path, layout: _Layout) -> Any:
    """The output container, opened under its temporary name with the muxer's options."""
    try:
        return av.open(str(tmp), "w", format=layout.muxer, options=_container_options(layout))
    except (OSError, av.error.FFmpegError) as err:
        raise OutputError(f"{out}: cannot create output: {' '.join(str(err).split())}") from None


def _write_and_close(dst: Any, out: Path, source: str | os.PathLike, layout: _Layout, job_tag: str | None) -> None:
    """_write the output and close it; a write or mux failure is an OutputError naming `out`."""
    extra_meta: dict[str, str] = {}
    video_meta: dict[str, str] = {}
    if job_tag is not None:
        set_job_tag(extra_meta, video_meta, layout.muxer, job_tag)
    try:
        with open_input(source) as src:
            _write(dst, src, layout, extra_meta, video_meta)
        dst.close()
    except BaseException as err:
        try:
            dst.close()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        if isinstance(err, OSError):
            raise OutputError(f"{out}: write failed: {err.strerror or err}") from None
        if isinstance(err, av.error.FFmpegError):
            raise OutputError(f"{out}: muxing failed: {' '.join(str(err).split())}") from None
        raise


def _container_options(layout: _Layout) -> dict[str, str]:
    """The muxer's options: MOV/MP4 index first (faststart); MPEG-TS keeps every timestamp as given
    (mpegts_copyts), moved only by _ts_clock's offset, with its PCR leading them by _ts_clock's lead."""
    if layout.muxer in ("mp4", "mov"):
        return {"movflags": "+faststart"}
    if layout.muxer == "mpegts":
        lead, offset = _ts_clock(layout)
        return {"mpegts_copyts": "1", "max_delay": str(round(lead * 1_000_000)),
                "output_ts_offset": str(round(offset * 1_000_000)) + "us"}
    return {}


def _ts_clock(layout: _Layout) -> tuple[float, float]:
    """(PCR lead, timestamp offset) in seconds for an MPEG-TS output.

    The PCR (the receiver's clock) must run ahead of every packet's decode time by more than the
    muxer holds audio back (it packs audio frames into PES packets for up to half the lead), and
    can never be negative. FFmpeg's muxer gets there by adding twice its delay to every timestamp
    (a 1.4 s later start); vsr keeps the source's timestamps instead and leads by TS_PCR_LEAD_S, or
    by less when they start earlier. A source that starts before TS_PCR_LEAD_MIN_S (an MP4 at 0,
    B-frames decoding before 0) is moved by what is missing: said in a note, within verify's bound.
    """
    tb = layout.info.video.time_base
    starts = [float(layout.dts_all[0] * tb)] if layout.dts_all else []
    written = {p.index for p in layout.plans if p.action in ("copy", "transcode", "convert")}
    starts += [s.start_time for s in layout.info.streams if s.index in written and s.start_time is not None]
    first = min(starts, default=0.0)
    if first >= TS_PCR_LEAD_MIN_S:
        return min(TS_PCR_LEAD_S, first), 0.0
    return TS_PCR_LEAD_MIN_S, TS_PCR_LEAD_MIN_S - first


def _verified_notes(report: VerifyReport, source: str | os.PathLike, tmp: Path, layout: _Layout) -> list[str]:
    """What verify accepted as beyond this output's reach (captions in VP9, HDR10 in H.264, a
    timecode track, a uniform shift), the file-level metadata, stream flags and channel layouts
    the container lost: said, not only recorded."""
    muxer = layout.muxer
    notes = []
    for key in ("captions_dropped", "hdr_dropped", "timecode_dropped", "chapters_dropped", "side_data_dropped"):
        if key in report.facts:
            log.warning("%s", report.facts[key])
            notes.append(str(report.facts[key]))
    shift = report.facts.get("start_shift_s")
    if shift:
        # the muxer's own (verify accepts a uniform shift this small): said, not only recorded
        why = (f"MPEG-TS needs its clock (PCR) to run at least {TS_PCR_LEAD_MIN_S * 1000:.0f} ms ahead of the "
               "first decode time and the source starts earlier" if muxer == "mpegts" else
               f"{muxer} writes no negative timestamps and the source decodes (B-frames) or primes its audio "
               "before its first frame")
        note = f"every timestamp moved by {shift * 1000:+.0f} ms: {why}; sync is kept"
        log.warning(note)
        notes.append(note)
    with open_input(source) as src:
        lost = _lost_metadata(dict(src.metadata), tmp, muxer)
    if lost:
        note = (f"metadata {', '.join(lost)}: {muxer} cannot hold {'it' if len(lost) == 1 else 'them'}; "
                "not copied (use .mkv to keep it)")
        log.warning(note)
        notes.append(note)
    for note in _lost_stream_labels(source, tmp, layout):
        log.warning(note)
        notes.append(note)
    return notes


# Stream flags a player acts on (commentary, SDH, audio description, forced): one the output's
# container drops is said. "default" is left out: MP4 has none and every muxer picks its own.
_NOTED_DISPOSITIONS = ("comment", "hearing_impaired", "visual_impaired", "forced", "dub", "original", "karaoke",
                       "lyrics", "clean_effects", "captions", "descriptions")


def _lost_stream_labels(source: str | os.PathLike, output: Path, layout: _Layout) -> list[str]:
    """Notes for what the written container did not keep of a written stream's labels: its
    disposition flags (the WebM muxer writes no commentary, hearing- or visual-impaired flag) and,
    for copied audio, its channel layout (the samples are the same, the speakers they are read back
    for are not: FLAC 4.1 in MP4 reads back as 5.0(side), PCM in Matroska as "N channels")."""
    written = [p for p in layout.plans if p.action in ("copy", "transcode", "convert") and p.kind != "attachment"]
    notes = []
    with open_input(source) as src, open_input(output) as out:
        pairs = [(stream_by_index(src, layout.info.video.index), out.streams.video[0], None)]
        for kind in ("video", "audio", "subtitle"):
            ours = [p for p in written if p.kind == kind]
            theirs = [s for s in out.streams if s.type == kind][1 if kind == "video" else 0:]
            pairs += [(stream_by_index(src, p.index), o, p) for p, o in zip(ours, theirs)]
        for a, b, plan in pairs:
            lost = [name for name in _NOTED_DISPOSITIONS
                    if a.disposition & getattr(av.stream.Disposition, name) and not
                    b.disposition & getattr(av.stream.Disposition, name)]
            if lost:
                notes.append(f"stream #{a.index} ({a.type}): {layout.muxer} cannot mark it {', '.join(lost)}; "
                             "the flag is not kept (use .mkv or .mp4 to keep it)")
            if plan is not None and plan.action == "copy" and a.type == "audio":
                notes += _relabelled_layout(a, b, layout.muxer)
    return notes


# what players take "N channels" (no speaker positions) for
_ASSUMED_LAYOUT = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}


def _relabelled_layout(a: Any, b: Any, muxer: str) -> list[str]:
    """A note when a copied audio stream reads back with other speakers than the source's (not when
    it reads back as "N channels" and the source had the layout readers assume for N)."""
    was, now = a.codec_context.layout, b.codec_context.layout
    if was.name == now.name or "channels" in was.name:
        return []
    if "channels" in now.name and _ASSUMED_LAYOUT.get(now.nb_channels) == was.name:
        return []
    return [f"stream #{a.index} (audio {a.codec_context.name}): {muxer} stores no channel layout for it, its "
            f"{was.name} channels read back as {now.name} (the samples are the same; a player may send them to "
            "other speakers; use .mkv or .mov to keep the layout)"]


def _publish(report: VerifyReport, tmp: Path, out: Path) -> None:
    """Rename the verified temporary file over the output; VerifyError when it failed verification."""
    if not report.ok:
        raise VerifyError(f"{out}: output failed verification: {'; '.join(report.problems[:4])}")
    maybe_fail("assemble")
    os.replace(tmp, out)


@dataclass
class _OtherOutputs:
    """The output streams of the planned non-main streams, by source index, and how each is fed."""

    streams: dict[int, Any] = field(default_factory=dict)  # every stream written (copy/transcode/convert)
    transcoders: dict[int, Any] = field(default_factory=dict)
    converters: dict[int, tuple[Any, str, str]] = field(default_factory=dict)  # (stream, from, to)


def _write(dst, src, layout: _Layout, extra_meta: dict[str, str] | None = None,
           video_meta: dict[str, str] | None = None) -> None:
    out_v = _add_video_stream(dst, src, layout, video_meta)
    others = _add_other_streams(dst, src, layout.plans, layout.muxer)
    _write_container_metadata(dst, src, layout.muxer, extra_meta)
    packets = heapq.merge(_video_packets(layout, out_v), _other_packets(src, layout.plans, others),
                          key=lambda t: (t[0], t[1]))
    for _, _, pkt in packets:
        dst.mux(pkt)


def _add_video_stream(dst, src, layout: _Layout, video_meta: dict[str, str] | None) -> Any:
    """The output's main video stream, from the first segment's, with the source's tags."""
    v, muxer = layout.info.video, layout.muxer
    with av.open(str(layout.seg_paths[0])) as first:
        out_v = dst.add_stream_from_template(first.streams.video[0], opaque=True)  # decoder-named codecs (libdav1d) too
        segment_tag = first.streams.video[0].codec_context.codec_tag
        segment_alpha = first.streams.video[0].metadata.get("alpha_mode") == "1"  # VP8/VP9 alpha segments
    out_v.time_base = v.time_base
    _fix_codec_tag(out_v, muxer)
    if out_v.codec_context.name == "prores" and segment_tag.strip("\0 "):
        # A ProRes fourcc names its profile (the template does not copy it): without it MOV
        # writes apch (HQ) and MKV none, and a 4444 stream decodes as 10-bit instead of 12-bit
        out_v.codec_context.codec_tag = segment_tag
    src_v = stream_by_index(src, v.index)
    _copy_metadata(out_v, _stream_metadata(src_v.metadata))
    out_v.metadata.update(video_meta or {})  # MOV's job tag replaces the source's video handler name
    # the timecode is set below; alpha_mode is the segments' to claim (the source's may be dropped)
    for key in [k for k in out_v.metadata if k.lower() in ("timecode", "alpha_mode")]:
        del out_v.metadata[key]
    if segment_alpha:  # the muxer then writes Matroska's AlphaMode flag, which players need
        out_v.codec_context.pix_fmt = "yuva420p"
    if layout.start_timecode:
        out_v.metadata["timecode"] = layout.start_timecode  # MOV/MP4 write it as a tmcd track
    out_v.disposition = src_v.disposition
    set_display_matrix(out_v, v)
    # VP9/AV1 carry primaries and transfer only in the container, and NUT segments drop them.
    cc = out_v.codec_context
    if v.avg_rate:
        cc.framerate = v.avg_rate
    cc.color_primaries, cc.color_trc = v.color_primaries, v.color_trc
    if v.color_range:
        # the range the segments were written in: full for RGB, limited for ProRes (output_range)
        cc.color_range = 2 if output_range(v, cc.name, cc.pix_fmt or "yuv420p") == "JPEG" else 1
    # FFV1/ProRes bitstreams carry no matrix: the container must (RGB: none, AVCOL_SPC_RGB)
    cc.colorspace = 0 if is_rgb_format(cc.pix_fmt or "yuv420p") else matrix_tag_of(v)
    return out_v


def _add_other_streams(dst, src, plans: list[StreamPlan], muxer: str) -> _OtherOutputs:
    """An output stream (or attachment) for each planned copy, transcode and conversion."""
    others = _OtherOutputs()
    for plan in plans:
        s = stream_by_index(src, plan.index)
        if plan.action == "copy" and plan.kind == "attachment":
            name = getattr(s, "name", None) or s.metadata.get("filename", f"attachment{plan.index}")
            mime = getattr(s, "mimetype", None) or s.metadata.get("mimetype", "application/octet-stream")
            dst.add_attachment(name, mime, bytes(getattr(s, "data", b"") or b""))
            continue
        if plan.action == "copy" and plan.codec_delay:
            o = add_trimmed_copy(dst, s)  # the container marks the source's priming to be skipped
            _fix_codec_tag(o, muxer)
        elif plan.action == "copy":
            o = dst.add_stream_from_template(s, opaque=True)  # decoder-named codecs too
            o.time_base = s.time_base
            _fix_codec_tag(o, muxer)
        elif plan.action == "transcode":
            cc = s.codec_context
            rate, fmt = audio_encoder_format(plan.target_codec or "", cc)
            # planned (streams._encoder_layout): the source's, or its side channels as back ones
            layout = plan.target_layout or cc.layout.name
            o = dst.add_stream(plan.target_codec, rate=rate, layout=layout, format=fmt)
            if plan.target_codec in _AUDIO_BITRATE:
                o.codec_context.bit_rate = _AUDIO_BITRATE[plan.target_codec]
            others.transcoders[plan.index] = o
        elif plan.action == "convert":
            o = dst.add_mux_stream(plan.target_codec)
            o.time_base = s.time_base
            others.converters[plan.index] = (o, plan.codec or "", plan.target_codec or "")
        else:
            continue
        _copy_metadata(o, _stream_metadata(s.metadata))
        o.disposition = s.disposition
        others.streams[plan.index] = o
    return others


def _write_container_metadata(dst, src, muxer: str, extra_meta: dict[str, str] | None) -> None:
    """The source's file-level metadata and chapters, and vsr's own tags (extra_meta)."""
    _copy_metadata(dst, _container_metadata(dict(src.metadata), muxer))
    # the timecode is the video's (_add_video_stream): a file-level one (MXF, DV) would override it in MOV/MP4
    for key in [k for k in dst.metadata if k.lower() == "timecode"]:
        del dst.metadata[key]
    dst.metadata.update(extra_meta or {})
    chapters = src.chapters()
    if chapters:
        dst.set_chapters(chapters)


def _video_packets(layout: _Layout, out_v: Any) -> Iterator[tuple[float, int, av.Packet]]:
    """The segments' video packets in decode order, retimed to the source's time base: (time, 0, packet)."""
    i = 0
    tb = layout.info.video.time_base
    clock = _SegmentClock(layout.info.video.frame_pts, tb)
    for p in layout.seg_paths:
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            for pkt in c.demux(s):
                if not pkt.size:
                    continue
                pts = clock(pkt.pts, Fraction(s.time_base), p)
                pkt.time_base = tb
                pkt.pts, pkt.dts, pkt.duration = pts, layout.dts_all[i], layout.durations[pts]
                pkt.stream = out_v
                i += 1
                yield float(pkt.dts * tb), 0, pkt


def _other_packets(src, plans: list[StreamPlan], others: _OtherOutputs) -> Iterator[tuple[float, int, av.Packet]]:
    """The other streams' packets (copied, transcoded or converted) in demux order: (time, 1, packet)."""
    wanted = [stream_by_index(src, i) for i in others.streams]
    if not wanted:
        return
    # The MOV/MP4 muxer fills the gaps between mov_text cues itself, and adds an empty sample
    # before each copied gap sample: the source's gap samples are left to it.
    mov_text_copies = {p.index for p in plans if p.action == "copy" and p.codec == "mov_text"}
    # leading packets of pure priming a copy leaves out (vsr.media.start_trim): never heard
    left_out = {p.index: p.skip_packets for p in plans if p.action == "copy" and p.skip_packets}
    for pkt in src.demux(wanted):
        idx = pkt.stream.index
        if idx in mov_text_copies and empty_mov_text(bytes(pkt)):
            continue
        if left_out.get(idx) and pkt.size:
            left_out[idx] -= 1
            continue
        if idx in others.transcoders:
            for q in _transcode(pkt, others.transcoders[idx]):
                yield _key(q), 1, q
        elif idx in others.converters:
            if pkt.size:
                q = _convert_text(pkt, *others.converters[idx])
                if q is not None:
                    yield _key(q), 1, q
        elif pkt.size:
            pkt.stream = others.streams[idx]
            yield _key(pkt), 1, pkt
    for o in others.transcoders.values():
        for q in o.encode(None):
            yield _key(q), 1, q


def _fix_codec_tag(stream: Any, muxer: str) -> None:
    """Let the muxer choose the codec tag (a NUT/MKV tag is wrong in MP4); HEVC in MP4/MOV gets hvc1.
    A data stream has no codec context: its copy was tried with the template's tag when planned."""
    cc = stream.codec_context
    if cc is None:
        return
    try:
        cc.codec_tag = "hvc1" if (cc.name == "hevc" and muxer in ("mp4", "mov")) else "\0\0\0\0"
    except (ValueError, TypeError):
        pass


def _key(pkt: av.Packet) -> float:
    t = pkt.dts if pkt.dts is not None else pkt.pts
    return float((t or 0) * pkt.time_base) if pkt.time_base else 0.0


def _transcode(pkt: av.Packet, out_stream: Any) -> list[av.Packet]:
    packets: list[av.Packet] = []
    try:
        frames = pkt.decode()
    except av.error.FFmpegError as err:
        raise OutputError(f"audio stream #{pkt.stream.index}: cannot decode for transcoding: {err}") from None
    for f in frames:
        packets.extend(out_stream.encode(f))
    return packets


def _convert_text(pkt: av.Packet, out_stream: Any, src_codec: str, dst_codec: str) -> av.Packet | None:
    """Re-write one text subtitle event: mov_text <-> subrip/webvtt (words, timing and
    bold/italic/underline stay; vsr.media.subtitle_text)."""
    event = subtitle_text.parse(bytes(pkt), src_codec)
    if not event.text.strip():
        return None  # mov_text's empty samples only clear the screen; SRT/WebVTT express that by timing
    payload = subtitle_text.render(event, dst_codec)
    q = av.Packet(payload)
    q.pts = pkt.pts
    q.dts = pkt.pts
    q.duration = pkt.duration
    q.time_base = pkt.time_base
    q.stream = out_stream
    return q
