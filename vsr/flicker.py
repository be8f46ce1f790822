"""`vsr flicker`: how steady an upscaled video is against its source (and a ground truth).

Decodes the source, the output and optionally a ground truth and a reference upscale (media
layer, frames matched by time), upscales the source with vsr's own Lanczos resampler where no
reference file is given (the engine's `lanczos` model: the pictures `vsr upscale -m lanczos` encodes),
and feeds every matched frame to vsr.quality.temporal.TemporalMeter. Like preview.py a command
that combines media and engine without Ray; the measures themselves live in vsr/quality/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vsr.errors import InputError, UsageError
from vsr.media.frames import FrameMatch, match_frames, rgb_frames
from vsr.media.probe import MediaInfo, probe
from vsr.quality.temporal import TemporalMeter

CHUNK = 8  # source frames resampled at once
LANCZOS = "lanczos (vsr's resampler, in memory, rounded to 8/16 bits: what `vsr upscale -m lanczos` encodes)"


def _size(info: MediaInfo) -> tuple[int, int]:
    return int(info.video.width), int(info.video.height)


def _check_sizes(out: MediaInfo, gt: MediaInfo | None, ref: MediaInfo | None) -> None:
    for name, other in (("--gt", gt), ("--reference", ref)):
        if other is not None and _size(other) != _size(out):
            w, h = _size(other)
            raise UsageError(f"{other.path}: {name} is {w}x{h}, the output {out.path} is "
                             f"{_size(out)[0]}x{_size(out)[1]}: they must be the same size")


def plan_comparison(source: MediaInfo, output: MediaInfo, others: Sequence[MediaInfo], *,
                    frames: int | None, offset: float) -> FrameMatch:
    """The frames compared: output frames that the source (and each other video) shows at the same
    time; UsageError when fewer than two, before anything is decoded."""
    match = match_frames(output, [source, *others], offsets=[offset] * (1 + len(others)), limit=frames)
    if len(match.lead_pts) < 2:
        ov, sv = output.video, source.video
        raise UsageError(
            f"{output.path}: fewer than two of its frames are shown at the times of {source.path}'s"
            f" frames (output from {float(ov.frame_pts[0] * ov.time_base):.3f} s, source from "
            f"{float(sv.frame_pts[0] * sv.time_base):.3f} s): is it an upscale of that source?")
    return match


def _with_lanczos(frames: Iterator[np.ndarray], size: tuple[int, int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(source, its Lanczos upscale to size) per frame, resampled CHUNK frames at a time."""
    from vsr.engine import Upscaler  # torch only once the inputs are known to be good

    w, h = size
    upscaler: Any = None
    for chunk in _chunked(frames):
        if upscaler is None:
            upscaler = Upscaler("lanczos", outscale=w / chunk[0].shape[1])
        yield from zip(chunk, upscaler.upscale(np.stack(chunk), out_size=(w, h)))


def _chunked(frames: Iterator[np.ndarray]) -> Iterator[list[np.ndarray]]:
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == CHUNK:
            yield buf
            buf = []
    if buf:
        yield buf


def _probe_all(paths: dict[str, str | os.PathLike | None]) -> dict[str, MediaInfo | None]:
    infos: dict[str, MediaInfo | None] = {}
    for key, path in paths.items():
        if path is None:
            infos[key] = None
            continue
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
        infos[key] = probe(p)
    return infos


def measure_flicker(source: str | os.PathLike, output: str | os.PathLike, *, gt: str | os.PathLike | None = None,
                    reference: str | os.PathLike | None = None, frames: int | None = None, offset: float = 0.0,
                    warping: bool = True) -> dict[str, Any]:
    """The temporal measures of `output` (an upscale of `source`) as a JSON-able dict.

    gt: a ground-truth video at the output's size; reference: an upscale of the source to compare
    against (default: vsr's Lanczos of the source, in memory); frames: only the output's first N;
    offset: seconds added to the output's times to find the source's frame (0: vsr keeps times).
    """
    if frames is not None and frames < 2:
        raise UsageError(f"--frames must be at least 2, not {frames}")
    started = time.perf_counter()
    infos = _probe_all({"source": source, "output": output, "gt": gt, "reference": reference})
    src, out, gt_info, ref_info = infos["source"], infos["output"], infos["gt"], infos["reference"]
    assert src is not None and out is not None
    _check_sizes(out, gt_info, ref_info)
    others = [i for i in (gt_info, ref_info) if i is not None]
    match = plan_comparison(src, out, others, frames=frames, offset=offset)
    size = _size(out)
    meter = TemporalMeter(_size(src), size, warping=warping, ground_truth=gt_info is not None)
    src_frames = rgb_frames(src.path, src, match.others[0])
    gt_frames = rgb_frames(gt_info.path, gt_info, match.others[1]) if gt_info else None
    pairs = (zip(src_frames, rgb_frames(ref_info.path, ref_info, match.others[-1])) if ref_info is not None
             else _with_lanczos(src_frames, size))
    for t, o, (s, r) in zip(match.times, rgb_frames(out.path, out, match.lead_pts), pairs):
        meter.add(t, s, o, r, next(gt_frames) if gt_frames is not None else None)
    result = meter.result()
    return {
        "source": str(source), "output": str(output), "gt": str(gt) if gt else None,
        "reference": str(reference) if reference else LANCZOS,
        "source_size": list(_size(src)), "output_size": list(size),
        "unmatched_output_frames": match.unmatched, **result,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def describe(report: dict[str, Any]) -> str:
    """The report as a few lines of text (what `vsr flicker` prints without --json)."""
    s, n = report["still"], report["noise"]
    ref = "lanczos" if report["reference"] == LANCZOS else "reference"
    lines = [
        f"{report['output']} ({report['output_size'][0]}x{report['output_size'][1]}) against "
        f"{report['source']}: {report['frames']} frames compared"
        + (f", {report['unmatched_output_frames']} without a source frame" if report["unmatched_output_frames"] else "")
        + f", {report['seconds']:.1f} s",
        f"  still regions: {_fmt(s['share'] and 100 * s['share'], '.1f')} % of the picture (source noise sigma "
        f"{n['sigma']:.2f}, still below {n['still_threshold']:.2f} Y levels per {n['block']}x{n['block']} block)",
        f"  still-region change: {_fmt(s['output_change'])} levels, {ref} {_fmt(s['reference_change'])}, "
        f"ratio {_fmt(s['ratio'], '.2f')}",
        f"  sparkle (still pixels changing by > 4 levels): {_fmt(s['output_sparkle'] and 100 * s['output_sparkle'])} %"
        f", {ref} {_fmt(s['reference_sparkle'] and 100 * s['reference_sparkle'])} %",
    ]
    w = report.get("warping")
    if w:
        lines.append(f"  warping error: {_fmt(w['output'])} levels, {ref} {_fmt(w['reference'])}, "
                     f"ratio {_fmt(w['ratio'], '.2f')} ({_fmt(w['valid_share'] and 100 * w['valid_share'], '.0f')} "
                     f"% of pixels not occluded)")
    g = report.get("gt")
    if g:
        lines.append(f"  against {report['gt']}: PSNR-Y {_fmt(g['psnr_y'], '.2f')} dB ({ref} "
                     f"{_fmt(g['reference_psnr_y'], '.2f')}), SSIM-Y {_fmt(g['ssim_y'], '.4f')}, tOF "
                     f"{_fmt(g['tof'])} ({ref} {_fmt(g['reference_tof'])})")
    return "\n".join(lines)
