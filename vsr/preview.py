"""`vsr preview`: a contact sheet (source bicubic | upscaled) at chosen times, and a short preview clip.

Only what is shown gets decoded: each time is a seek to the keyframe before it and a decode up to
the frame shown at that time (plus one frame of context when deinterlacing); the count of decoded
frames is reported. The picture plan (deinterlace, crop, aspect, target) is the one the video job
uses, so the preview shows what the job will produce. Media + engine only, no Ray.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from bisect import bisect_right
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vsr.errors import InputError, OutputError, UsageError
from vsr.media.colour import frame_to_rgb, range_of
from vsr.media.containers import muxer_for
from vsr.media.deinterlace import DeinterlaceCrop
from vsr.media.framesize import FrameFitter
from vsr.media.picture import PictureOptions, PicturePlan, plan_picture
from vsr.media.probe import (FrameRetimer, MediaInfo, VideoInfo, open_input, probe, set_display_matrix,
                             stream_by_index)

LABEL_HEIGHT = 28  # px band above each picture for its label
PLOT_HEIGHT = 150  # px of the per-frame flicker plot below the pictures
FLICKER_FRAMES = 12  # consecutive frames from the first time measured for the plot (0: no plot)
GAP = 8  # px between the two halves
BACKGROUND = (24, 24, 24)

_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")
_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s)?$")


def parse_time(text: str) -> float:
    """Seconds from 'HH:MM:SS(.fff)', 'MM:SS', '5', '5.5', '5s' or '500ms'; UsageError otherwise."""
    t = str(text).strip().lower()
    m = _CLOCK.match(t)
    if m:
        h, mnt, sec = m.groups()
        return int(h or 0) * 3600 + int(mnt) * 60 + float(sec)
    m = _SECONDS.match(t)
    if m:
        return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    raise UsageError(f"bad time {text!r}: use HH:MM:SS(.fff), MM:SS, seconds (5, 5.5, 5s) or 500ms")


def parse_times(text: str) -> list[float]:
    """A comma-separated list of times (--at 00:00:05,00:01:10)."""
    items = [s for s in str(text).split(",") if s.strip()]
    if not items:
        raise UsageError("--at needs at least one time, e.g. --at 00:00:05,00:01:10")
    return [parse_time(s) for s in items]


def format_time(seconds: float) -> str:
    h, rem = divmod(max(0.0, seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


def frame_at(info: MediaInfo, seconds: float) -> int:
    """The pts of the frame on screen at `seconds` (the last frame starting at or before it)."""
    v = info.video
    t0 = float(v.frame_pts[0] * v.time_base)
    end = float(v.end_pts() * v.time_base) if hasattr(v, "end_pts") else float(v.frame_pts[-1] * v.time_base)
    if seconds < 0 or seconds + t0 >= end + 1e-9:
        raise UsageError(f"time {format_time(seconds)} is outside {info.path} "
                         f"(video lasts {end - t0:.3f} s)")
    target = Fraction(seconds).limit_denominator(1_000_000) + Fraction(v.frame_pts[0]) * v.time_base
    i = bisect_right(v.frame_pts, int(target / v.time_base)) - 1
    return v.frame_pts[max(0, i)]


class _Counter:
    def __init__(self) -> None:
        self.decoded = 0


def _decode_from_keyframe(container: av.container.InputContainer, stream, video: VideoInfo, first_pts: int,
                          last_pts: int, counter: _Counter, extra: int = 0) -> Iterator[av.VideoFrame]:
    """Frames with first_pts <= pts <= last_pts (+ `extra` frames after it), after one seek to the
    keyframe before them; each frame carries its pts of video.frame_pts (frames probe moved off a
    shared pts, as browser recorders write them, are counted from that keyframe: FrameRetimer)."""
    keyframe = max((k for k in video.keyframe_pts if k <= first_pts), default=video.frame_pts[0])
    container.seek(keyframe, stream=stream, backward=True, any_frame=False)
    retime = FrameRetimer(video)
    after = 0
    for f in container.decode(stream):
        counter.decoded += 1
        f.pts = retime(f.pts)
        if f.pts is None or f.pts < first_pts:
            continue
        if f.pts > last_pts:
            if after >= extra:
                return
            after += 1
        yield f
        if f.pts >= last_pts and extra == 0:
            return


def _preview_filter(plan: PicturePlan, info: MediaInfo) -> DeinterlaceCrop | None:
    """The plan's deinterlace/crop at frame rate (a sheet shows frames, not fields)."""
    if plan.is_identity:
        return None
    return DeinterlaceCrop(
        deinterlace=plan.deinterlace, parity=plan.parity, field_rate=False,
        deinterlacer=plan.options.deinterlacer, crop=plan.crop.as_tuple() if plan.crop else None,
        sar=plan.source_sar, time_base=plan.source_time_base, frame_pts=info.video.frame_pts,
    )


def _decode_pictures(c: av.container.InputContainer, stream, info: MediaInfo, plan: PicturePlan,
                     wanted: Sequence[int], counter: _Counter) -> list[np.ndarray]:
    """RGB pictures of the frames with these pts (ascending, one decode from the keyframe before
    the first), after the plan's deinterlace/crop."""
    v = info.video
    # One frame of context on each side lets the deinterlacer use its temporal half.
    i = v.frame_pts.index(wanted[0])
    first = v.frame_pts[max(0, i - 1)] if plan.deinterlace else wanted[0]
    extra = 1 if plan.deinterlace else 0
    frames: Iterator[av.VideoFrame] = _decode_from_keyframe(c, stream, v, first, wanted[-1], counter, extra)
    # a picture size that changes mid-stream: every frame into the planned one, as the job does
    frames = FrameFitter(tuple(plan.source_size), range_of(v))(frames)
    filt = _preview_filter(plan, info)
    if filt is not None:
        frames = filt(frames)
    picked: dict[int, np.ndarray] = {}
    need = set(wanted)
    try:
        for f in frames:
            if f.pts in need and f.pts not in picked:
                picked[f.pts] = frame_to_rgb(f, v)
    except av.error.FFmpegError as err:
        raise InputError(f"{info.path}: cannot decode the frame at pts {wanted[0]}: "
                         f"{' '.join(str(err).split())}") from None
    missing = [p for p in wanted if p not in picked]
    if missing:
        raise InputError(f"{info.path}: frame at pts {missing[0]} could not be decoded")
    return [picked[p] for p in wanted]


def grab_frames(info: MediaInfo, pts_list: Sequence[int], plan: PicturePlan) -> tuple[list[np.ndarray], int]:
    """RGB pictures (after the plan's deinterlace/crop) of the frames with these pts; and frames decoded."""
    counter = _Counter()
    pictures: list[np.ndarray] = []
    with open_input(info.path) as c:
        stream = stream_by_index(c, info.video.index)
        for target in pts_list:
            pictures += _decode_pictures(c, stream, info, plan, [target], counter)
    return pictures, counter.decoded


def grab_run(info: MediaInfo, first_pts: int, count: int, plan: PicturePlan) -> tuple[list[int], list[np.ndarray], int]:
    """Up to `count` consecutive frames from the one at first_pts, in one decode: their pts, RGB
    pictures (after the plan's deinterlace/crop) and the frames decoded."""
    v = info.video
    i = v.frame_pts.index(first_pts)
    run = v.frame_pts[i:i + count]
    counter = _Counter()
    with open_input(info.path) as c:
        pictures = _decode_pictures(c, stream_by_index(c, v.index), info, plan, run, counter)
    return run, pictures, counter.decoded


def _to8(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else np.round(x.astype(np.float32) / 257.0).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def compose_sheet(rows: Sequence[tuple[np.ndarray, np.ndarray, str, str]], flicker: dict[str, Any] | None = None
                  ) -> Image.Image:
    """One RGB image: per row a label band, then left and right pictures side by side; below them
    the flicker plot when there is one (flicker_series)."""
    w = max(left.shape[1] for left, _, _, _ in rows)
    h_rows = [max(left.shape[0], right.shape[0]) for left, right, _, _ in rows]
    plot = PLOT_HEIGHT if flicker else 0
    sheet = Image.new("RGB", (2 * w + GAP, sum(LABEL_HEIGHT + h for h in h_rows) + plot), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(16)
    y = 0
    for (left, right, left_label, right_label), h in zip(rows, h_rows):
        draw.text((6, y + 5), left_label, fill=(235, 235, 235), font=font)
        draw.text((w + GAP + 6, y + 5), right_label, fill=(235, 235, 235), font=font)
        sheet.paste(Image.fromarray(_to8(left)), (0, y + LABEL_HEIGHT))
        sheet.paste(Image.fromarray(_to8(right)), (w + GAP, y + LABEL_HEIGHT))
        y += LABEL_HEIGHT + h
    if flicker:
        draw_flicker_plot(draw, (0, y, sheet.width, y + PLOT_HEIGHT), flicker)
    return sheet


SOURCE_COLOUR, OUTPUT_COLOUR = (120, 170, 255), (255, 150, 60)


def flicker_series(info: MediaInfo, plan: PicturePlan, upscaler: Any, first_pts: int,
                   count: int) -> dict[str, Any] | None:
    """Still-region change per frame (vsr.quality.temporal) of `count` consecutive frames from
    first_pts: the upscaler's output against vsr's Lanczos of the same pictures (the source, as
    steady as it is). None when fewer than two frames follow."""
    from vsr.engine import Upscaler
    from vsr.quality.temporal import TemporalMeter

    run, pictures, decoded = grab_run(info, first_pts, count, plan)
    if len(run) < 2:
        return None
    frames = np.stack(pictures)
    size = tuple(plan.out_size)
    out = upscaler.upscale(frames, out_size=size)
    ref = Upscaler("lanczos", outscale=upscaler.scale).upscale(frames, out_size=size)
    meter = TemporalMeter((frames.shape[2], frames.shape[1]), size, warping=False)  # type: ignore[arg-type]
    tb, t0 = info.video.time_base, info.video.frame_pts[0]
    for p, s, o, r in zip(run, frames, out, ref):
        meter.add(float((p - t0) * tb), s, o, r)
    res = meter.result()
    keep = ("time", "still_share", "output_change", "reference_change", "output_sparkle")
    return {"frames": len(run), "frames_decoded": decoded, "model": upscaler.name, "noise": res["noise"],
            "still": res["still"], "per_frame": [{k: f.get(k) for k in keep} for f in res["per_frame"][1:]]}


def draw_flicker_plot(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], flicker: dict[str, Any]) -> None:
    """Per frame pair: the mean change of still pixels (Y levels) of the source's Lanczos upscale
    and of the model's output, two lines in box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    font = _font(14)
    st = flicker["still"]
    ratio = f"{st['ratio']:.2f}" if st["ratio"] is not None else "-"
    if st["share"]:
        # the legend is the title: each line's name in its colour
        parts = [(f"still-region change per frame (Y levels), {flicker['frames']} frames: ", (235, 235, 235)),
                 (f"source (lanczos) {_num(st['reference_change'])}", SOURCE_COLOUR), (", ", (235, 235, 235)),
                 (f"{flicker['model']} {_num(st['output_change'])}", OUTPUT_COLOUR), (f", ratio {ratio}", (235, 235, 235))]
    else:
        parts = [(f"still-region change per frame: no still region in these {flicker['frames']} frames", (235, 235, 235))]
    x = x0 + 6
    for text, colour in parts:
        draw.text((x, y0 + 4), text, fill=colour, font=font)
        x += int(draw.textlength(text, font=font))
    left, top, right, bottom = x0 + 44, y0 + 26, x1 - 10, y1 - 18
    pts = flicker["per_frame"]
    values = [v for f in pts for v in (f["reference_change"], f["output_change"]) if v is not None]
    top_value = max(values + [0.1]) * 1.1
    draw.rectangle((left, top, right, bottom), outline=(90, 90, 90))
    draw.text((x0 + 4, top - 2), f"{top_value:.2f}", fill=(160, 160, 160), font=_font(11))
    draw.text((x0 + 4, bottom - 12), "0", fill=(160, 160, 160), font=_font(11))
    if pts:
        draw.text((left, bottom + 3), format_time(pts[0]["time"]), fill=(160, 160, 160), font=_font(11))
        draw.text((right - 80, bottom + 3), format_time(pts[-1]["time"]), fill=(160, 160, 160), font=_font(11))
    n = max(1, len(pts) - 1)
    for key, colour in (("reference_change", SOURCE_COLOUR), ("output_change", OUTPUT_COLOUR)):
        line = [(left + (right - left) * i / n, bottom - (bottom - top) * f[key] / top_value)
                for i, f in enumerate(pts) if f[key] is not None]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _temp_beside(path: Path, suffix: str) -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix + ".part", dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: cannot write in {path.parent}: {err.strerror or err}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes 0600; sheets and clips are ordinary files
    return Path(name)


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG under a temporary name in the same directory, then rename it into place."""
    if not path.parent.is_dir():
        raise OutputError(f"{path}: directory {path.parent} does not exist")
    tmp = _temp_beside(path, ".png")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None


def render_preview(
    input_path: str | os.PathLike,
    model: str | os.PathLike,
    at: Sequence[float],
    output: str | os.PathLike,
    *,
    picture: PictureOptions | None = None,
    outscale: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int = 0,
    colour_fix: bool = True,
    temporal: str = "exact",
    clip_seconds: float | None = None,
    clip_output: str | os.PathLike | None = None,
    flicker_frames: int = FLICKER_FRAMES,
) -> dict[str, Any]:
    """Write the contact sheet (and optionally a preview clip); returns a JSON-able summary.

    flicker_frames: consecutive frames from the first time measured for the sheet's flicker plot
    (flicker_series); 0 leaves the plot out."""
    from vsr.engine import Upscaler  # torch only now that the input checks passed

    started = time.perf_counter()
    src = Path(input_path)
    out = Path(output)
    if out.resolve() == src.resolve():
        raise UsageError(f"{out}: the sheet would overwrite the input")
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out}: the preview sheet is a PNG; name it *.png")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: directory {out.parent} does not exist")
    info = probe(src)
    targets = [frame_at(info, t) for t in at]
    upscaler = Upscaler(model, device=device, precision=precision, tile=tile, outscale=outscale,
                        colour_fix=colour_fix)
    plan = plan_picture(info, upscaler.scale, picture or PictureOptions())
    pictures, decoded = grab_frames(info, targets, plan)
    upscaled = upscaler.upscale(np.stack(pictures), out_size=plan.out_size)
    ow, oh = plan.out_size
    rows = []
    tb = info.video.time_base
    t0 = info.video.frame_pts[0]
    for t, p, pic, up in zip(at, targets, pictures, upscaled):
        resized = np.asarray(Image.fromarray(_to8(pic)).resize((ow, oh), Image.BICUBIC))
        shown = format_time(float((p - t0) * tb))
        rows.append((resized, _to8(up), f"source, bicubic  {shown}",
                     f"{upscaler.name}  {ow}x{oh}  {shown}"))
    flicker = flicker_series(info, plan, upscaler, targets[0], flicker_frames) if flicker_frames > 1 else None
    sheet = compose_sheet(rows, flicker)
    save_png(sheet, out)
    summary: dict[str, Any] = {
        "input": str(src), "output": str(out), "model": upscaler.name, "device": upscaler.device,
        "times": [format_time(float((p - t0) * tb)) for p in targets], "pts": targets,
        "out_size": [ow, oh], "sheet_size": list(sheet.size), "frames_decoded": decoded,
        "frames_total": info.video.frame_count, "picture": plan.to_dict(), "flicker": flicker,
        # auto-detection's own reads (interlace flags when the field order is unknown, --crop auto)
        "frames_decoded_detection": (plan.detected.get("interlace", {}).get("sampled_frames", 0)
                                     + plan.detected.get("borders", {}).get("decoded_frames", 0)),
    }
    if flicker is not None:
        summary["frames_decoded"] += flicker["frames_decoded"]
    if clip_seconds is not None:
        clip_path = Path(clip_output) if clip_output else out.with_name(out.stem + "_clip.mkv")
        summary["clip"] = write_clip(info, upscaler, plan, at[0], clip_seconds, clip_path, model=str(model),
                                     temporal=temporal)
        summary["frames_decoded"] += summary["clip"]["frames_decoded"]
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def write_clip(info: MediaInfo, upscaler, plan: PicturePlan, start: float, seconds: float,
               output: Path, *, model: str, temporal: str = "exact") -> dict[str, Any]:
    """An upscaled clip of [start, start+seconds) with the source's audio of that span (stream copy).

    The frames go through the job's own segment path (vsr.job.segment.run_segment) with the job's
    plan for this clip (the sheet's picture plan, field rate included); audio packets are copied,
    shifted by the same offset as the video, so they stay in sync.
    """
    from vsr.job.options import JobOptions
    from vsr.job.plan import plan_job
    from vsr.job.segment import run_segment
    from vsr.media.segments import Segment

    if seconds <= 0:
        raise UsageError(f"--clip must be a positive duration, not {seconds}")
    if output.resolve() == Path(info.path).resolve():
        raise UsageError(f"{output}: the clip would overwrite the input")
    if not output.parent.is_dir():
        raise OutputError(f"{output}: directory {output.parent} does not exist")
    muxer_for(output)  # an unknown extension is a usage error before any work
    v = info.video
    tb = v.time_base
    first = frame_at(info, start)
    end_pts = first + int(Fraction(seconds).limit_denominator(1_000_000) / tb)
    wanted = [p for p in v.frame_pts if first <= p < end_pts]
    job = plan_job(info.path, output, JobOptions(model=model, outscale=upscaler.scale, scan=False,
                                                 reuse_repeats=temporal != "off", temporal=temporal),
                   info=info, picture=plan)
    clip = Segment(0, first, end_pts, len(wanted), float(first * tb), float(end_pts * tb))
    segment = _temp_beside(output, ".nut")
    try:
        # a clip is not assembled and verified: no frame digests (nor their sidecar beside the output)
        record = run_segment(job, clip, segment, lambda frames, size: upscaler.upscale(frames, out_size=size),
                             frame_digests=False, reuse=upscaler.reuse_geometry())
        _mux_clip(segment, info, plan.output_info(info), output, first * tb, end_pts * tb)
    finally:
        segment.unlink(missing_ok=True)
    keyframe = max((k for k in v.keyframe_pts if k <= first), default=v.frame_pts[0])
    decoded = sum(1 for p in v.frame_pts if keyframe <= p < end_pts)  # from the keyframe before the span
    return {"path": str(output), "frames": record["frames"], "frames_decoded": decoded,
            "start": format_time(float((first - v.frame_pts[0]) * tb)), "seconds": seconds}


def _mux_clip(segment: Path, info: MediaInfo, out_info: MediaInfo, output: Path, start: Fraction,
              end: Fraction) -> None:
    """Video packets of the encoded segment + the source's audio in [start, end), all shifted to 0."""
    tmp = _temp_beside(output, output.suffix)
    try:
        with av.open(str(segment)) as seg, open_input(info.path) as src, \
                av.open(str(tmp), "w", format=muxer_for(output)) as dst:
            vin = seg.streams.video[0]
            vout = dst.add_stream_from_template(vin)
            # The segment container keeps no rate or colour primaries/transfer: set them from the plan.
            ov = out_info.video
            vout.time_base = ov.time_base
            if ov.avg_rate:
                vout.codec_context.framerate = ov.avg_rate
            vout.codec_context.color_primaries, vout.codec_context.color_trc = ov.color_primaries, ov.color_trc
            set_display_matrix(vout, ov)
            audio_in = [stream_by_index(src, a.index) for a in info.audio]
            audio_out = {a.index: dst.add_stream_from_template(a) for a in audio_in}
            for pkt in seg.demux(vin):
                if pkt.size == 0:
                    continue
                shift = int(start / vin.time_base)
                pkt.pts = None if pkt.pts is None else pkt.pts - shift
                pkt.dts = None if pkt.dts is None else pkt.dts - shift
                pkt.stream = vout
                dst.mux(pkt)
            if audio_in:
                src.seek(int(max(Fraction(0), start - 1) / audio_in[0].time_base), stream=audio_in[0])
                finished: set[int] = set()
                for pkt in src.demux(audio_in):
                    if pkt.size == 0 or pkt.pts is None:
                        continue
                    t = pkt.pts * pkt.time_base
                    if t >= end:
                        finished.add(pkt.stream.index)
                        if len(finished) == len(audio_in):
                            break
                        continue
                    if t < start:
                        continue
                    shift = int(start / pkt.time_base)
                    pkt.pts -= shift
                    pkt.dts = None if pkt.dts is None else pkt.dts - shift
                    pkt.stream = audio_out[pkt.stream.index]
                    dst.mux(pkt)
        os.replace(tmp, output)
    except av.error.FFmpegError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{output}: cannot write the preview clip: {' '.join(str(err).split())}"
                          f" (try a .mkv name with --clip-output)") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
