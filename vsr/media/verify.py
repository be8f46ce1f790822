"""verify: does an output play exactly like its source (frames, times, size, colour, audio, subtitles)?"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Sequence

import av
import numpy as np
from PIL import Image

from vsr.errors import InputError, VerifyError
from vsr.media.colour import alpha_of, is_rgb_format, range_of, to_rgb24
from vsr.media.containers import NO_CHAPTERS_OR_TIMECODE_DEMUXERS
from vsr.media.decode import a53_captions, alpha_decoder, decoded_frames, set_decode_threads
from vsr.media.frame_digests import EncodedFrame, frame_digest
from vsr.media.framesize import FrameFitter
from vsr.media import subtitle_text, timecode
from vsr.media.probe import (COLOR_UNSPECIFIED, RANGE_UNSPECIFIED, FrameRetimer, MediaInfo, main_video_stream,
                             open_input, probe, timecode_of)

PSNR_MIN_DB = 20.0  # below this the picture is rotated, flipped, shifted or garbage
MEAN_SHIFT_MAX = 3.0  # RGB channel-mean levels (8-bit scale): more is a colour shift
AUDIO_START_TOL_S = 0.020
# The largest uniform shift of a whole output that verify accepts: what Matroska adds when it lifts
# negative timestamps (audio priming, B-frame delay) to zero, tens of milliseconds; more is a file
# that no longer starts where its source does.
MAX_START_SHIFT_S = 0.5
SAMPLES = 5


@dataclass
class VerifyReport:
    """ok when problems is empty; facts holds the measured values."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"ok": self.ok, "problems": list(self.problems), "facts": self.facts}

    def raise_if_failed(self) -> None:
        """VerifyError with the first problems on one line."""
        if not self.ok:
            raise VerifyError(f"{self.facts.get('output', 'output')}: verification failed: "
                              + "; ".join(self.problems[:4]))


def _oriented(rgb: np.ndarray, sar: Fraction, rotation: int, flip: str | None = None) -> np.ndarray:
    """The picture as a player shows it: the display matrix's mirror (flip, VideoInfo.flip) and
    rotation applied, square pixels (8-bit RGB)."""
    if flip == "vflip":
        rgb = np.ascontiguousarray(rgb[::-1])
    elif flip == "hflip":
        rgb = np.ascontiguousarray(rgb[:, ::-1])
    img = Image.fromarray(rgb)
    if sar and abs(float(sar) - 1) > 1e-3:
        img = img.resize((round(img.width * float(sar)), img.height), Image.BICUBIC)
    return np.rot90(np.asarray(img), k=round((rotation or 0) / 90))


SIZE_SAMPLES = 8  # beside SAMPLES: the first frame of each further picture size, up to this many


@dataclass
class _SourceView:
    """How the source's sampled frames are brought to what the output shows: fitted to the planned
    frame size (vsr.media.framesize), one field line-doubled, cropped (a picture plan's steps)."""

    fit_size: tuple[int, int] | None = None
    crop: Any = None  # x, y, w, h attributes
    keep_field: str | None = None  # "top" | "bottom"
    color_range: str | None = None
    # the output follows the source's picture sizes (no fitting): source (w, h) -> output (w, h)
    follow: dict[tuple[int, int], tuple[int, int]] | None = None

    def rgb(self, frame: av.VideoFrame, fitter: FrameFitter | None) -> np.ndarray:
        """The frame's 8-bit RGB after these steps (fitter: a FrameFitter to fit_size)."""
        if fitter is not None:
            frame = fitter.fit(frame)
        return self._after_fit(to_rgb24(frame))  # limited-range gray too (swscale reads it as full)

    def alpha(self, frame: av.VideoFrame, fitter: FrameFitter | None) -> np.ndarray:
        """The frame's 8-bit alpha after these steps, as three equal channels (an RGB picture)."""
        if fitter is not None:
            frame = fitter.fit(frame)
        return self._after_fit(np.repeat(alpha_of(frame, False)[..., None], 3, axis=2))

    def _after_fit(self, rgb: np.ndarray) -> np.ndarray:
        """One field line-doubled, cropped."""
        if self.keep_field is not None:
            lines = np.ascontiguousarray(rgb[0::2] if self.keep_field == "top" else rgb[1::2])
            rgb = np.asarray(Image.fromarray(lines).resize((rgb.shape[1], rgb.shape[0]), Image.BICUBIC))
        if self.crop is not None:
            c = self.crop
            rgb = np.ascontiguousarray(rgb[c.y:c.y + c.h, c.x:c.x + c.w])
        return rgb


def _scan(path: str | os.PathLike, info: MediaInfo, picks: set[int], view: _SourceView | None = None,
          size_samples: int = 0, digests: bool = False) -> dict[str, Any]:
    """Decode the main video fully: frame count, pts, captions, sampled pictures (player view).

    view: the source's frames are brought to the output's picture first (fitted to the planned
    frame size, a field line-doubled: what a deinterlacer keeps of a woven frame, which itself
    mixes two instants; cropped), so a planned output compares with the same picture.
    size_samples: also sample the first frame of each new picture size, up to this many (their
    indices in "size_picks"): every size the frames were fitted from is compared once.
    digests: also (pts, frame_digest) of every frame, in order ("digests").
    """
    n, pts, pics, errors, size_picks, frame_digests, sizes = 0, [], {}, [], set(), [], []
    cc_frames: list[tuple[float | None, str]] = []  # (time, payload digest) of each captioned frame
    rank = {p: i for i, p in enumerate(info.video.frame_pts)}  # picks by position in the index
    retime = FrameRetimer(info.video)  # frames probe moved off a shared pts: their index pts
    fitter = (FrameFitter(view.fit_size, view.color_range) if view is not None and view.fit_size else None)
    seen_sizes: set[tuple[int, int]] = set()
    with open_input(path) as c:
        v = main_video_stream(c)
        set_decode_threads(v, info.video)
        try:
            for pkt in c.demux(v):
                try:
                    frames = pkt.decode()
                except av.error.FFmpegError as err:  # a corrupt packet: count it, keep going
                    errors.append(" ".join(str(err).split()))
                    continue
                for f in frames:
                    t = retime(f.pts)
                    if t is not None:
                        pts.append(t)
                    if digests:
                        frame_digests.append((t, frame_digest(f)))
                    cc = a53_captions(f)
                    if cc:
                        cc_frames.append((f.time, hashlib.sha256(cc).hexdigest()))
                    i = rank.get(t, n)
                    sizes.append((f.width, f.height))
                    if (f.width, f.height) not in seen_sizes:
                        if seen_sizes and len(size_picks) < size_samples:
                            size_picks.add(i)
                        seen_sizes.add((f.width, f.height))
                    if i in picks or i in size_picks:
                        rgb = view.rgb(f, fitter) if view is not None else to_rgb24(f)
                        pics[i] = _oriented(rgb, info.video.sar, round(f.rotation or 0), info.video.flip)
                    n += 1
        except av.error.FFmpegError as err:  # demuxer: truncated container
            errors.append(" ".join(str(err).split()))
    return {"n": n, "pts": pts, "captions": len(cc_frames), "cc_frames": cc_frames, "pics": pics,
            "error": errors[0] if errors else None, "size_picks": size_picks, "digests": frame_digests,
            "sizes": sizes}


def _adts_payload(data: bytes) -> bytes:
    """AAC without its ADTS header (MPEG-TS/raw AAC); MP4/MKV store the raw frame (aac_adtstoasc)."""
    if len(data) > 9 and data[0] == 0xFF and (data[1] & 0xF6) == 0xF0:
        return data[7 if data[1] & 1 else 9:]
    return data


LOSSLESS_TARGETS = {"alac", "flac"}
PCM_SPAN_TOL_S = 0.002  # start and end each rounded to a container tick (1 ms in Matroska)
_FRAMED_PCM = {"pcm_dvd", "pcm_bluray", "pcm_lxf"}  # a header in every packet: packets are frames


def _unframed_pcm(codec: str | None) -> bool:
    """Raw PCM, whose packets are arbitrary runs of samples."""
    return bool(codec) and codec.startswith("pcm_") and codec not in _FRAMED_PCM


def _pcm_digest(path: str | os.PathLike, index: int) -> tuple[str, int]:
    """sha256 and count of the decoded samples as packed s32 (exact for every integer PCM depth)."""
    h = hashlib.sha256()
    n = 0
    resampler = None
    with open_input(path) as c:
        s = next(x for x in c.streams if x.index == index)
        for f in c.decode(s):
            if resampler is None:
                resampler = av.AudioResampler(format="s32", layout=f.layout, rate=f.sample_rate)
            for g in resampler.resample(f):
                a = g.to_ndarray()
                h.update(a.tobytes())
                n += a.size
    return h.hexdigest(), n


def _first_sample_time(path: str | os.PathLike, index: int) -> float | None:
    """When the stream's first decoded sample is presented (s): after the decoder has dropped the
    samples the file marks as priming or cut. None when nothing decodes."""
    with open_input(path) as c:
        s = next(x for x in c.streams if x.index == index)
        try:
            for f in c.decode(s):
                if f.samples and f.pts is not None:
                    return float(f.pts * f.time_base)
        except av.error.FFmpegError:
            return None
    return None


def empty_mov_text(data: bytes) -> bool:
    """A mov_text sample without text (2-byte length 0): the MOV/MP4 muxer's gap filler, which
    only clears the screen. The muxer writes its own between cues, so copies are not comparable."""
    return len(data) >= 2 and data[0] == 0 and data[1] == 0


def _packets_digests(path: str | os.PathLike, indices: list[int],
                     left_out: dict[int, int] | None = None) -> dict[int, dict[str, Any]]:
    """Per stream, in one demux pass: payload sha256 (also without ADTS headers; also without
    mov_text's empty gap samples, with each cue's time and duration: cues_sha256), packet count,
    first and last time, longest packet duration. left_out: per stream, how many leading packets
    to leave out (those a copy leaves out: StreamPlan.skip_packets)."""
    acc = {i: [hashlib.sha256(), hashlib.sha256(), 0, None, 0.0, 0.0, hashlib.sha256()] for i in indices}
    skip = dict(left_out or {})
    if indices:
        with open_input(path) as c:
            streams = [x for x in c.streams if x.index in acc]
            mov_text = {x.index for x in streams if x.type == "subtitle" and x.codec_context is not None
                        and x.codec_context.name == "mov_text"}
            for p in c.demux(streams):
                if not p.size:
                    continue
                if skip.get(p.stream.index):
                    skip[p.stream.index] -= 1
                    continue
                a = acc[p.stream.index]
                data = bytes(p)
                a[0].update(data)
                a[1].update(_adts_payload(data))
                if not (p.stream.index in mov_text and empty_mov_text(data)):
                    a[6].update(data)
                    if p.stream.index in mov_text and p.pts is not None:
                        # when each cue shows and how long (MP4 keeps no end but the next sample)
                        a[6].update(b"@%d+%d" % (round(float(p.pts * p.time_base) * 1000),
                                                 round(float((p.duration or 0) * p.time_base) * 1000)))
                a[2] += 1
                if p.pts is not None:
                    t = float(p.pts * p.time_base)
                    d = float((p.duration or 0) * p.time_base)
                    a[3] = t if a[3] is None else min(a[3], t)
                    a[4] = max(a[4], t + d)
                    a[5] = max(a[5], d)
    return {i: {"sha256": a[0].hexdigest(), "raw_sha256": a[1].hexdigest(), "packets": a[2], "start": a[3],
                "end": a[4], "frame": a[5], "cues_sha256": a[6].hexdigest()} for i, a in acc.items()}


def output_timecode(info: MediaInfo, picture: Any = None) -> str | None:
    """The start timecode the output of this source (and picture plan) carries: the source's,
    moved past the frames skipped before its first keyframe and counted in fields at field rate
    (vsr.media.timecode.for_output); None when the source has none."""
    tc = timecode_of(info)
    if tc is None:
        return None
    v = info.video
    return timecode.for_output(tc, v.avg_rate, v.leading_undecodable,
                               bool(picture is not None and picture.field_rate))


def verify(source: str | os.PathLike, output: str | os.PathLike, scale: float, *,
           info: MediaInfo | None = None, plans: list | None = None, picture: Any = None,
           encode: Any = None, encoded: Sequence[EncodedFrame] | None = None) -> VerifyReport:
    """Compare output with source; never raises for a mismatch (see VerifyReport.raise_if_failed).

    Checks: decoded frame count and every frame time; displayed size = source's x scale; sampled
    pictures match (PSNR >= 20 dB, channel means within 3 levels); bit depth and colour tags kept;
    an alpha channel kept, its sampled frames matching too (PSNR >= 20 dB); closed captions on as many frames; start timecode kept; video duration within one frame; each
    audio stream present, bit-identical when copied (else its end within one audio frame), same
    offset from the video (20 ms), language kept; subtitle streams present with the same payloads
    or event count.
    Pictures are compared as players show them: each display matrix's rotation and mirror
    (VideoInfo.flip) applied, so an output that lost or doubled a mirror fails. Source frames whose
    size differs from the planned frame size (the size changes mid-stream) are fitted into it as
    decode fits them (vsr.media.framesize), and the first frame of each further size is sampled too.
    picture (vsr.media.picture.PicturePlan): the output was made by this plan: frames fitted to its
    source_size (without a plan: the stream's declared size), deinterlaced, cropped; frame count
    and times are the plan's (field rate: two frames per source frame), the displayed size and
    sampled pictures are compared with the cropped source; `scale` applies to the cropped size.
    encode (vsr.media.encode.EncodeOptions, resolved): what the output was asked to be; a bit depth
    lowered to its pix_fmt's (the user's explicit --pix-fmt) and an alpha channel dropped on request
    (drop_alpha) are then recorded in facts instead of failing.
    encoded: every frame the segments encoded, in order (their digests as they decoded back,
    vsr.media.frame_digests): each output frame must decode to exactly that picture, at its time.
    """
    src = info or probe(source)
    problems: list[str] = []
    facts: dict[str, Any] = {"source": str(source), "output": str(output), "scale": scale}
    try:
        out = probe(output)
    except InputError as err:
        return VerifyReport(False, [f"output unreadable: {err}"], facts)
    n = src.video.frame_count
    per_frame = 2 if picture is not None and picture.field_rate else 1  # output frames per source frame
    picks = {round(i * (n - 1) / (SAMPLES - 1)) for i in range(SAMPLES)} if n > 1 else {0}
    view = _source_view(src, picture)
    s_scan = _scan(source, src, picks, view, SIZE_SAMPLES)
    picks |= s_scan["size_picks"]
    o_scan = _scan(output, out, {i * per_frame for i in picks}, digests=encoded is not None)
    o_scan["pics"] = {i // per_frame: p for i, p in o_scan["pics"].items()}
    _check_video_timing(src, out, s_scan, o_scan, picture, per_frame, problems, facts)
    if encoded is not None:
        _check_frame_digests(encoded, o_scan["digests"], out.video.time_base, _time_tolerance(src, out, picture),
                             problems, facts)
    _check_pictures(src, out, s_scan, o_scan, scale, view, per_frame, problems, facts)
    _check_orientation_and_timecode(src, out, picture, problems, facts)
    _check_depth_and_colour(src, out, encode, problems, facts)
    _check_alpha(source, output, src, out, (picks, per_frame, view), encode, problems, facts)
    _check_captions_and_side_data(src, out, s_scan, o_scan, problems, facts)
    _check_other_video(src, out, plans, problems)
    plan_by_index = {p.index: p for p in (plans or [])}
    left_out = {p.index: p.skip_packets for p in plan_by_index.values() if p.action == "copy" and p.skip_packets}
    sdig = _packets_digests(source, [x.index for x in src.audio + src.subtitles], left_out)
    odig = _packets_digests(output, [x.index for x in out.audio + out.subtitles])
    _check_audio(source, output, src, out, plan_by_index, problems, facts, sdig, odig)
    _check_subtitles(source, output, src, out, plan_by_index, problems, facts, sdig, odig)
    return VerifyReport(not problems, problems, facts)


def _source_view(src: MediaInfo, picture: Any) -> _SourceView:
    """What the picture plan (None: none) did to the source's frames before the network."""
    v = src.video
    view = _SourceView(fit_size=(v.width, v.height), color_range=range_of(v))
    if picture is not None and getattr(picture, "follows", False):
        view.fit_size = None  # each frame at its own size, as decode gives it
        view.follow = {(sw, sh): (ow, oh) for sw, sh, ow, oh in picture.follow_sizes}
    elif picture is not None:
        view.fit_size = tuple(getattr(picture, "source_size", None) or view.fit_size)
        view.crop = picture.crop
        if picture.deinterlace:
            view.keep_field = "bottom" if picture.parity == "bff" else "top"
    return view


def _check_video_timing(src: MediaInfo, out: MediaInfo, s_scan: dict, o_scan: dict, picture: Any,
                        per_frame: int, problems: list, facts: dict) -> None:
    """Frame count, every frame's time (a uniform muxer shift is tolerated and recorded in
    facts["start_shift_s"]), and where the video ends."""
    sv, ov = src.video, out.video
    facts.update(frames_source=s_scan["n"], frames_output=o_scan["n"])
    if per_frame != 1:
        facts["frames_per_source_frame"] = per_frame
    if o_scan["error"]:
        problems.append(f"output does not decode: {o_scan['error']}")
    # Expected frames: the source's index (a corrupt source frame that was repeated still counts).
    if o_scan["n"] != sv.frame_count * per_frame or ov.frame_count != sv.frame_count * per_frame:
        problems.append(f"frame count {o_scan['n']} != source {sv.frame_count}"
                        + (f" x {per_frame} (field rate)" if per_frame != 1 else ""))
    # Frame times: absolute, within half a tick of the coarser time base (container rounding).
    exp_tb = picture.time_base if picture is not None else sv.time_base
    tol = _time_tolerance(src, out, picture)
    st = [float(p * exp_tb) for p in picture.frame_pts] if picture is not None else sv.frame_times
    ot = ov.frame_times
    if len(st) == len(ot) and st:
        worst = max(abs(a - b) for a, b in zip(st, ot))
        facts["worst_frame_time_diff_s"] = worst
        if worst > tol:
            # A uniform shift of the whole file (Matroska lifts negative audio priming to 0) keeps
            # sync and is recorded; frame times moving against each other are a failure.
            rel = max(abs((a - st[0]) - (b - ot[0])) for a, b in zip(st, ot))
            shift = ot[0] - st[0]
            facts["start_shift_s"] = shift
            if rel > tol:
                problems.append(f"frame times differ by up to {rel * 1000:.2f} ms (allowed {tol * 1000:.2f} ms)")
            if abs(shift) > MAX_START_SHIFT_S:
                problems.append(f"the whole file moved by {shift * 1000:+.0f} ms (a muxer's shift is at most "
                                f"{MAX_START_SHIFT_S * 1000:.0f} ms): frame times no longer match the source's")
    retimed = getattr(sv, "retimed", None)
    if retimed:  # the times compared above are the retimed ones (probe's index)
        facts["frames_retimed"] = (f"{retimed['frames']} frames of the source shared a pts with the frame before "
                                   f"them; each was moved just after it, by at most {retimed['max_shift_ticks']} "
                                   f"tick(s) ({retimed['max_shift_s'] * 1000:.3f} ms)")
    # Duration of the video stream: within one frame, after the uniform shift tolerated above.
    step = float(sv.frame_duration_ticks() * sv.time_base)
    s_end, o_end = float(sv.end_pts() * sv.time_base), float(ov.end_pts() * ov.time_base)
    if abs(s_end - (o_end - facts.get("start_shift_s", 0.0))) > step + tol:
        problems.append(f"video ends at {o_end:.3f} s, source at {s_end:.3f} s")


def _time_tolerance(src: MediaInfo, out: MediaInfo, picture: Any) -> float:
    """How far (s) an output frame's time may be from its planned one: half a tick of the coarser
    of the two time bases (a container that rewrites timestamps rounds them to its own)."""
    exp_tb = picture.time_base if picture is not None else src.video.time_base
    return float(max(exp_tb, out.video.time_base)) / 2 + 1e-6


def _check_frame_digests(encoded: Sequence[EncodedFrame], decoded: list[tuple[int | None, str]],
                         time_base: Fraction, tol: float, problems: list, facts: dict) -> None:
    """Every output frame (decoded: its pts in time_base, digest) is, in order, the picture its
    segment encoded, shown at the time it was encoded for (after the uniform shift that
    _check_video_timing accepted); the first one that is not is named."""
    shift = facts.get("start_shift_s", 0.0)
    facts["frames_digest_checked"] = min(len(encoded), len(decoded))
    if len(decoded) != len(encoded):
        problems.append(f"output has {len(decoded)} frames, its segments encoded {len(encoded)}")
    differ, moved = [], []
    for i, (want, (pts, digest)) in enumerate(zip(encoded, decoded)):
        if digest != want.digest:
            differ.append(i)
        elif pts is not None and want.time_s is not None and abs(float(pts * time_base) - shift - want.time_s) > tol:
            moved.append(i)
    if differ:
        i = differ[0]
        problems.append(f"frame {i} at {_frame_time(encoded[i])} differs from what segment {encoded[i].segment} "
                        f"encoded (its frame {_index_in_segment(encoded, i)})"
                        + (f"; {len(differ)} frames differ" if len(differ) > 1 else ""))
    if moved:
        i = moved[0]
        got = float(decoded[i][0] * time_base) - shift
        problems.append(f"frame {i} is shown at {got:.3f} s, segment {encoded[i].segment} encoded it for "
                        f"{_frame_time(encoded[i])}" + (f"; {len(moved)} frames moved" if len(moved) > 1 else ""))
    facts["frames_digest_differ"] = len(differ)


def _frame_time(frame: EncodedFrame) -> str:
    return "an unknown time" if frame.time_s is None else f"{frame.time_s:.3f} s"


def _index_in_segment(encoded: Sequence[EncodedFrame], i: int) -> int:
    """Frame i's place in its own segment (0 = the segment's first frame)."""
    first = i
    while first > 0 and encoded[first - 1].segment == encoded[i].segment:
        first -= 1
    return i - first


def _shown_size(vi: Any, size: tuple[int, int] | None = None) -> tuple[float, float]:
    """Displayed width and height of a video stream (or of `size` in its pixels): SAR and
    rotation applied."""
    width, height = size or (vi.width, vi.height)
    w, h = width * float(vi.sar or 1), float(height)
    return (h, w) if round(vi.rotation / 90) % 2 else (w, h)


def _check_pictures(src: MediaInfo, out: MediaInfo, s_scan: dict, o_scan: dict, scale: float, view: _SourceView,
                    per_frame: int, problems: list, facts: dict) -> None:
    """Displayed size = the source's (its planned frame size, cropped) x scale; sampled pictures
    match (PSNR, channel means)."""
    sv, ov = src.video, out.video
    crop = view.crop
    if view.follow is not None:
        if not _check_followed_sizes(s_scan["sizes"], o_scan["sizes"], view.follow, problems, facts):
            return
    else:
        (sw, sh) = _shown_size(sv, (crop.w, crop.h) if crop is not None else view.fit_size)
        (ow, oh) = _shown_size(ov)
        ew, eh = sw * scale, sh * scale
        facts.update(displayed_source=[round(sw), round(sh)], displayed_output=[round(ow), round(oh)])
        if abs(ow - ew) > max(2, 0.01 * ew) or abs(oh - eh) > max(2, 0.01 * eh):
            problems.append(f"displayed size {ow:.0f}x{oh:.0f} != {ew:.0f}x{eh:.0f}")
            return
    if sv.frame_count * per_frame != o_scan["n"]:
        return
    worst_p, worst_m = 99.0, 0.0
    for i in sorted(s_scan["pics"]):
        if i not in o_scan["pics"]:
            continue
        a = s_scan["pics"][i].astype(np.float64)
        b = np.asarray(Image.fromarray(np.ascontiguousarray(o_scan["pics"][i])).resize(
            (a.shape[1], a.shape[0]), Image.BICUBIC), dtype=np.float64)
        mse = float(np.mean((a - b) ** 2))
        worst_p = min(worst_p, 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
        worst_m = max(worst_m, float(np.max(np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))))))
    facts.update(worst_psnr_db=round(float(worst_p), 2), worst_channel_mean_shift=round(float(worst_m), 3))
    if worst_p < PSNR_MIN_DB:
        problems.append(f"picture differs from the source (PSNR {worst_p:.1f} dB)")
    if worst_m > MEAN_SHIFT_MAX:
        problems.append(f"colours shifted (channel mean off by {worst_m:.1f} levels)")


def _check_followed_sizes(source: list[tuple[int, int]], output: list[tuple[int, int]],
                          follow: dict[tuple[int, int], tuple[int, int]], problems: list, facts: dict) -> bool:
    """The output follows the source's sizes: every output frame has the planned size of its
    source frame's size (a player shows the size of the frame it is at, a checker the size after
    the last frame). False, with the first wrong frame named, when one has not."""
    facts["frame_sizes_checked"] = min(len(source), len(output))
    if output:
        facts["displayed_output_last"] = list(output[-1])
    if len(source) != len(output):
        return False  # the frame count check names this
    wrong = [i for i, (s, o) in enumerate(zip(source, output)) if follow.get(s) != o]
    if not wrong:
        return True
    i = wrong[0]
    want = follow.get(source[i])
    problems.append(f"output frame {i} is {output[i][0]}x{output[i][1]}, its source frame is "
                    f"{source[i][0]}x{source[i][1]}: "
                    + (f"expected {want[0]}x{want[1]}" if want else "a size the plan did not find")
                    + (f"; {len(wrong)} frames have a wrong size" if len(wrong) > 1 else ""))
    return False


def _check_orientation_and_timecode(src: MediaInfo, out: MediaInfo, picture: Any, problems: list,
                                    facts: dict) -> None:
    """Display rotation, chapter count and the start timecode (of the output's first frame)."""
    sv, ov = src.video, out.video
    facts["rotation"] = [sv.rotation, ov.rotation]
    if sv.mirrored or ov.mirrored:
        facts["mirrored"] = [sv.mirrored, ov.mirrored]
        if sv.mirrored != ov.mirrored:  # the pictures compared above are each shown by their own matrix
            problems.append("display matrix mirror not kept" if sv.mirrored else "display matrix mirrors, the source's does not")
    if (ov.rotation - sv.rotation) % 360:
        problems.append(f"display rotation {ov.rotation} != source {sv.rotation}")
    facts["chapters"] = [len(src.chapters), len(out.chapters)]
    # MPEG-TS has no place for chapters or a start timecode (planned: vsr.media.streams)
    holds_no_marks = out.container in NO_CHAPTERS_OR_TIMECODE_DEMUXERS
    if len(out.chapters) != len(src.chapters):
        if holds_no_marks and not out.chapters:
            facts["chapters_dropped"] = (f"{out.container} has no place for the source's {len(src.chapters)} "
                                         "chapters: not kept (use .mkv, .mp4 or .mov)")
        else:
            problems.append(f"chapters {len(out.chapters)} != source {len(src.chapters)}")
    want_tc, got_tc = output_timecode(src, picture), timecode_of(out)
    facts["timecode"] = [want_tc, got_tc]
    if want_tc and got_tc is None and out.container.startswith("mov"):
        # MOV/MP4 hold it in a timecode track, which FFmpeg's writer leaves out (with a warning
        # only) for a timecode it cannot set up at the video's frame rate
        facts["timecode_dropped"] = f"the MOV/MP4 writer made no timecode track for {want_tc} (use .mkv)"
    elif want_tc and got_tc is None and holds_no_marks:
        facts["timecode_dropped"] = (f"{out.container} has no place for the start timecode {want_tc}: not kept "
                                     "(use .mkv, .mov or .mp4)")
    elif want_tc and not timecode.same(got_tc, want_tc):
        problems.append(f"timecode {got_tc} != source {want_tc}")


def _check_depth_and_colour(src: MediaInfo, out: MediaInfo, encode: Any, problems: list, facts: dict) -> None:
    """Bit depth kept (unless the encode options asked otherwise); colour tags kept."""
    sv, ov = src.video, out.video
    facts.update(bit_depth=[sv.bit_depth, ov.bit_depth])
    asked = getattr(encode, "pix_fmt", None)
    if ov.bit_depth < sv.bit_depth:
        if asked and ov.bit_depth >= _pix_fmt_depth(asked):  # only an explicit pix_fmt resolves lower
            facts["bit_depth_lowered_on_request"] = asked
        else:
            problems.append(f"bit depth lowered {sv.bit_depth} -> {ov.bit_depth}")
    for tag in ("color_primaries", "color_trc", "colorspace", "color_range"):
        a, b = getattr(sv, tag), getattr(ov, tag)
        unset = RANGE_UNSPECIFIED if tag == "color_range" else COLOR_UNSPECIFIED
        if a not in (unset, None) and a != b:
            if tag == "color_range" and _planned_range_change(a, b, ov):
                facts["color_range_converted"] = [a, b]  # the pictures were compared above
                continue
            if tag == "colorspace" and (is_rgb_format(sv.pix_fmt or "") or is_rgb_format(ov.pix_fmt or "")):
                # RGB has no YUV matrix (tag 0): a YUV output of an RGB source is tagged with the
                # matrix vsr converted it with, and the pictures were compared above
                facts["colour_matrix"] = [a, b]
                continue
            problems.append(f"colour {tag} {a} not kept (output {b})")


def _check_alpha(source: str | os.PathLike, output: str | os.PathLike, src: MediaInfo, out: MediaInfo,
                 sampling: tuple[set[int], int, _SourceView], encode: Any, problems: list, facts: dict) -> None:
    """The source's alpha channel kept unless dropped on request (encode.drop_alpha): the output has
    one (a pix_fmt with alpha, or WebM VP8/VP9 alpha, read with libvpx's decoder), and the sampled
    frames' alpha, as a player shows them, matches the source's (PSNR, as the pictures).
    sampling: the source frames compared, output frames per source frame, the source's view."""
    picks, per_frame, view = sampling
    s_alpha, o_alpha = getattr(src.video, "alpha", "none"), getattr(out.video, "alpha", "none")
    if s_alpha == "none":
        return
    facts["alpha"] = [s_alpha, o_alpha]
    if o_alpha == "none":
        if getattr(encode, "drop_alpha", False):
            facts["alpha_dropped_on_request"] = [s_alpha, out.video.pix_fmt]
        else:
            problems.append(f"alpha channel dropped ({s_alpha} -> {out.video.pix_fmt})")
        return
    theirs = _alpha_pics(source, src, picks, view)
    ours = {i // per_frame: a for i, a in _alpha_pics(output, out, {i * per_frame for i in picks}).items()}
    worst = 99.0
    for i in sorted(set(theirs) & set(ours)):
        a = theirs[i].astype(np.float64)
        b = np.asarray(Image.fromarray(ours[i]).resize((a.shape[1], a.shape[0]), Image.BICUBIC), dtype=np.float64)
        mse = float(np.mean((a - b) ** 2))
        worst = min(worst, 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
    facts["worst_alpha_psnr_db"] = round(float(worst), 2)
    if len(set(theirs) & set(ours)) < len(theirs):
        problems.append(f"alpha channel: {len(set(theirs) - set(ours))} sampled frame(s) missing in the output")
    if worst < PSNR_MIN_DB:
        problems.append(f"alpha channel differs from the source's (PSNR {worst:.1f} dB)")


def _alpha_pics(path: str | os.PathLike, info: MediaInfo, picks: set[int], view: _SourceView | None = None
                ) -> dict[int, np.ndarray]:
    """The 8-bit alpha (H,W) of the picked frames (index in frame_pts), as a player shows them,
    through `view` (the source's) first; decoded by the decoder that reads it (alpha_decoder)."""
    v = info.video
    rank = {p: i for i, p in enumerate(v.frame_pts)}
    fitter = FrameFitter(view.fit_size, view.color_range) if view is not None and view.fit_size else None
    pics: dict[int, np.ndarray] = {}
    frames = decoded_frames(path, info, alpha_decoder(v))
    try:
        for n, f in enumerate(frames):
            i = rank.get(f.pts, n)
            if i in picks:
                gray = view.alpha(f, fitter) if view is not None else np.repeat(alpha_of(f, False)[..., None], 3, 2)
                pics[i] = np.ascontiguousarray(_oriented(gray, v.sar, round(f.rotation or 0), v.flip)[..., 0])
            if i >= max(picks, default=-1):
                break
    except InputError:
        pass  # an unreadable output: the frame checks above say so
    finally:
        frames.close()
    return pics


def _caption_mismatch(src_frames: list[tuple[float | None, str]], out_frames: list[tuple[float | None, str]]
                      ) -> str:
    """Empty when the captioned frames carry the same payloads in the same order, frame by frame
    (captions moved onto a neighbour frame differ too, though all bytes are there); else where
    they first differ (", first at the source's frame at T s")."""
    if [d for _, d in src_frames] == [d for _, d in out_frames]:
        return ""
    for (t, a), (_, b) in zip(src_frames, out_frames):
        if a != b:
            return f", first at the source's frame at {t:.3f} s" if t is not None else ", first differing frame"
    return ", on more or fewer frames"


def _check_captions_and_side_data(src: MediaInfo, out: MediaInfo, s_scan: dict, o_scan: dict,
                                  problems: list, facts: dict) -> None:
    """A53 closed captions on as many frames with the same payloads; other side data (recorded
    when lost) and HDR10 static metadata (a failure when lost where the codec can carry it)."""
    sv, ov = src.video, out.video
    mismatch = _caption_mismatch(s_scan["cc_frames"], o_scan["cc_frames"])
    if s_scan["captions"] and mismatch:
        if ov.codec in ("h264", "hevc"):
            problems.append(f"closed captions on {o_scan['captions']} frames, source {s_scan['captions']}"
                            + (f" (payloads differ{mismatch})" if o_scan["captions"] == s_scan["captions"] else ""))
        else:
            facts["captions_dropped"] = f"{ov.codec} cannot carry A53 closed captions (use libx264/libx265)"
    facts["captions"] = [s_scan["captions"], o_scan["captions"]]
    lost = [k for k in getattr(sv, "side_data", []) if k not in getattr(ov, "side_data", [])]
    if lost:
        facts["side_data_dropped"] = (f"the source's {', '.join(lost)} is not carried into the output "
                                      "(vsr keeps rotation, colour tags and HDR10 static metadata)")
    s_hdr, o_hdr = _hdr_present(getattr(sv, "hdr", None)), _hdr_present(getattr(ov, "hdr", None))
    if s_hdr and o_hdr != s_hdr:
        if ov.codec in ("hevc", "av1"):
            problems.append(f"HDR10 metadata not kept ({o_hdr} vs source {s_hdr})")
        else:
            facts["hdr_dropped"] = f"{ov.codec} output carries no HDR10 mastering metadata (use libx265/libsvtav1)"


def _check_other_video(src: MediaInfo, out: MediaInfo, plans: list | None, problems: list) -> None:
    """As many further video streams as the plans keep (all of them without plans)."""
    plan_by_index = {p.index: p for p in (plans or [])}
    kept_video = [s for s in src.other if s.kind == "video"
                  and plan_by_index.get(s.index, None) is not None and plan_by_index[s.index].action != "drop"]
    if plans is None:
        kept_video = [s for s in src.other if s.kind == "video"]
    out_video = [s for s in out.other if s.kind == "video"]
    if len(out_video) != len(kept_video):
        problems.append(f"video streams {1 + len(out_video)} != {1 + len(kept_video)}")


def _pix_fmt_depth(pix_fmt: str) -> int:
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, av.error.FFmpegError):
        return 0


def _hdr_present(hdr: dict | None) -> dict | None:
    """HDR10 metadata without a content light level of 0, 0: that means "not given" (x265 writes it
    for a source that has mastering display data only)."""
    if not hdr:
        return None
    hdr = {k: v for k, v in hdr.items() if not (k == "max_cll" and not any(v or []))}
    return hdr or None


def _planned_range_change(src_range: int, out_range: int, ov: Any) -> bool:
    """A range change the encoding plans on purpose (vsr.media.encode.output_range): full -> limited
    for ProRes, which cannot signal full range; full for RGB output, whose samples always are."""
    from vsr.media.encode import LIMITED_RANGE_ONLY

    if src_range == 2 and out_range == 1 and ov.codec in LIMITED_RANGE_ONLY:
        return True
    return out_range == 2 and is_rgb_format(ov.pix_fmt or "")


def _check_audio(source, output, src: MediaInfo, out: MediaInfo, plans: dict, problems: list, facts: dict,
                 sdig: dict, odig: dict) -> None:
    facts["audio_streams"] = [len(src.audio), len(out.audio)]
    if len(src.audio) != len(out.audio):
        problems.append(f"audio streams {len(out.audio)} != {len(src.audio)}")
        return
    v0s, v0o = src.video.start_time, out.video.start_time
    audio_facts = []
    for a, b in zip(src.audio, out.audio):
        da, db = sdig[a.index], odig[b.index]
        copied = plans.get(a.index) is None or plans[a.index].action == "copy"
        entry = {"source_index": a.index, "codec": [a.codec, b.codec], "packets": [da["packets"], db["packets"]],
                 "layout": [a.layout, b.layout]}  # a copy a container relabels is noted by assemble
        if copied:
            if getattr(plans.get(a.index), "skip_packets", 0):
                entry["packets_left_out"] = plans[a.index].skip_packets  # pure priming (vsr.media.start_trim)
            entry["bit_identical"] = da["sha256"] == db["sha256"] and da["packets"] == db["packets"]
            if not entry["bit_identical"] and da["raw_sha256"] == db["raw_sha256"] and da["packets"] == db["packets"]:
                entry["bit_identical"] = "without ADTS headers"  # same AAC frames, MP4/MKV framing
            if (not entry["bit_identical"] and _unframed_pcm(a.codec) and da["sha256"] == db["sha256"]
                    and da["start"] is not None and db["start"] is not None
                    and abs((da["end"] - da["start"]) - (db["end"] - db["start"])) <= PCM_SPAN_TOL_S):
                # PCM's packet boundaries are arbitrary (muxers regroup samples): the same bytes (the
                # sha256 is of the concatenated payloads) lasting as long are the same audio; where
                # they start is the offset check's below
                entry["bit_identical"] = "same samples, other packet sizes"
            if not entry["bit_identical"]:
                problems.append(f"audio stream #{a.index} ({a.codec}) not bit-identical after copy")
        elif plans[a.index].target_codec in LOSSLESS_TARGETS and (a.codec or "").startswith(("pcm_", "flac", "alac")):
            entry["samples_identical"] = _pcm_digest(source, a.index) == _pcm_digest(output, b.index)
            if not entry["samples_identical"]:
                problems.append(f"audio stream #{a.index} {a.codec} -> {b.codec}: decoded samples differ")
        elif abs(da["end"] - db["end"]) > max(da["frame"], db["frame"], 0.005) + abs(v0s - v0o):
            problems.append(f"audio stream #{a.index} ends at {db['end']:.3f} s, source {da['end']:.3f} s")
        a_start, b_start = _sound_starts(source, output, a, b, plans.get(a.index), da, db)
        if a_start is not None and b_start is not None:
            off = (b_start - v0o) - (a_start - v0s)
            entry["offset_ms"] = round(off * 1000, 3)
            if abs(off) > AUDIO_START_TOL_S:
                problems.append(f"audio stream #{a.index} moved {off * 1000:+.0f} ms against the video")
        if a.language and a.language != b.language:
            problems.append(f"audio stream #{a.index} language {b.language} != {a.language}")
        if out.container.startswith("matroska") and (a.disposition & 1) != (b.disposition & 1):
            problems.append(f"audio stream #{a.index} default flag not kept")  # MP4 has no such flag
        audio_facts.append(entry)
    facts["audio"] = audio_facts


def _sound_starts(source, output, a: Any, b: Any, plan: Any, da: dict, db: dict) -> tuple[float | None, float | None]:
    """When the source's and the output's audio stream start to sound (s): their first decoded
    samples, as a player presents them (a decoder drops the samples a file marks as priming or cut:
    packet times can say neither). In the output, the samples its plan says it plays before the
    sound, having no place to mark them (StreamPlan.played_lead: encoder priming in MPEG-TS), come
    first. Packet times where either does not decode."""
    a_start, b_start = _first_sample_time(source, a.index), _first_sample_time(output, b.index)
    if a_start is None or b_start is None:
        return da["start"], db["start"]
    lead = getattr(plan, "played_lead", 0) or 0
    return a_start, b_start + (lead / b.sample_rate if lead and b.sample_rate else 0.0)


def _check_subtitles(source, output, src: MediaInfo, out: MediaInfo, plans: dict, problems: list,
                     facts: dict, sdig: dict, odig: dict) -> None:
    # a subtitle stream the plan dropped (MPEG-TS holds no text subtitles) is not expected
    kept = [s for s in src.subtitles if s.index not in plans or plans[s.index].action != "drop"]
    facts["subtitle_streams"] = [len(src.subtitles), len(out.subtitles)]
    if len(kept) != len(src.subtitles):
        facts["subtitle_streams_dropped"] = [s.index for s in src.subtitles if s not in kept]
    if len(kept) != len(out.subtitles):
        problems.append(f"subtitle streams {len(out.subtitles)} != {len(kept)}")
        return
    for a, b in zip(kept, out.subtitles):
        da, db = sdig[a.index], odig[b.index]
        if a.codec == b.codec:
            # cues only: mov_text gap samples are the muxer's (a lost or changed cue still differs)
            if da["cues_sha256"] != db["cues_sha256"]:
                problems.append(f"subtitle stream #{a.index} ({a.codec}) payloads changed")
        else:
            events, out_events = _text_events(source, a.index, a.codec), _text_events(output, b.index, b.codec)
            if len(events) != len(out_events):
                problems.append(f"subtitle stream #{a.index} {a.codec} -> {b.codec}: {len(out_events)} events,"
                                f" source {len(events)}")
            else:
                # text and styling exact; start within a millisecond (time bases differ) once a
                # uniform shift of the whole file (Matroska's, measured on the video) is taken off
                shift = round(facts.get("start_shift_s", 0.0) * 1000)
                changed = [(x, y) for x, y in zip(events, out_events)
                           if x[1:] != y[1:] or abs(x[0] + shift - y[0]) > 1]
                if changed:
                    (t, text, _), (t2, text2, _) = changed[0]
                    problems.append(f"subtitle stream #{a.index} {a.codec} -> {b.codec}: {len(changed)} event(s) "
                                    f"changed, first at {t / 1000:.3f} s: {text2[:40]!r} (timing {t2 / 1000:.3f} s), "
                                    f"source {text[:40]!r}")
        if a.language and a.language != b.language:
            problems.append(f"subtitle stream #{a.index} language {b.language} != {a.language}")


def _text_events(path, index: int, codec: str | None) -> list[tuple[int, str, list]]:
    """(start in ms, plain text, style runs) of each subtitle event that carries text (mov_text's
    empty gap samples are not events): what a conversion between text formats must keep."""
    events = []
    with open_input(path) as c:
        s = next(x for x in c.streams if x.index == index)
        for p in c.demux(s):
            data = bytes(p)
            if not data or p.pts is None:
                continue
            event = subtitle_text.parse(data, codec or "")
            if not event.text.strip():
                continue
            events.append((round(float(p.pts * p.time_base) * 1000), event.text, event.runs))
    return sorted(events)
