"""A whole job in this process, segment after segment, with any upscale function: what the
tests and benchmarks run, through the same run_segment and assembly as the Ray workers."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vsr.job.finish import assemble_plan
from vsr.job.handover import StateStore
from vsr.job.options import JobOptions
from vsr.job.plan import JobPlan, plan_job
from vsr.job.segment import Upscale, run_segment
from vsr.media.encode import EncodeOptions
from vsr.media.picture import PictureOptions, plan_picture
from vsr.media.probe import MediaInfo, probe
from vsr.media.verify import VerifyReport

FramesFn = Callable[[np.ndarray], np.ndarray]


def nearest_upscale(factor: int) -> FramesFn:
    """Nearest-neighbour x factor on (N,H,W,3) frames: each pixel becomes a factor x factor block."""
    def up(frames: np.ndarray) -> np.ndarray:
        return frames.repeat(factor, axis=1).repeat(factor, axis=2)
    return up


def run_plan(plan: JobPlan, upscale: Upscale, *, workdir: str | os.PathLike | None = None,
             tag: str | None = None, records: list[dict[str, Any]] | None = None) -> VerifyReport:
    """Every segment of the plan through run_segment, in order, then assembly and verification.
    A temporal model's state goes on from each segment to the next one (vsr.job.handover): the
    frames are those of a one-segment run. records: if given, each segment's record is added."""
    states = StateStore(keep=1)
    with tempfile.TemporaryDirectory(prefix="vsr-seg-", dir=workdir) as tmp:
        paths = [Path(tmp) / f"segment-{seg.index:05d}.nut" for seg in plan.segments]
        for seg, path in zip(plan.segments, paths):
            record = run_segment(plan, seg, path, upscale, carry_in=states.take(plan, seg), carry_out=states.put)
            if records is not None:
                records.append(record)
        return assemble_plan(plan, paths, tag=tag)


def transcode_with(
    source: str | os.PathLike,
    output: str | os.PathLike,
    process: FramesFn,
    scale: float,
    *,
    target_seconds: float = 0.0,
    options: EncodeOptions | None = None,
    workdir: str | os.PathLike | None = None,
    on_corrupt: str = "fail",
    chunk_frames: int = 8,
    info: MediaInfo | None = None,
) -> VerifyReport:
    """Plan source -> output at `scale` (stored pixels scaled as they are: no deinterlacing, SAR
    kept) and run it with process (frames -> frames of that size); returns the verify report."""
    job = JobOptions(model="lanczos", outscale=scale, encode=(options or EncodeOptions()).to_dict(),
                     picture={"deinterlace": "off", "keep_sar": True},
                     segment_seconds=target_seconds if target_seconds > 0 else float("inf"),
                     chunk_frames=chunk_frames, on_corrupt=on_corrupt, scan=False, reuse_repeats=False)
    info = info if info is not None else probe(source)
    picture = plan_picture(info, scale, PictureOptions.from_dict(job.picture))
    # process scales stored pixels by `scale` as they are: the writer takes that size (and
    # repeats the edge pixel where 4:2:0 needs even sizes), not one rounded to the chroma grid
    v = info.video
    picture = dataclasses.replace(picture, out_size=(max(1, round(v.width * scale)), max(1, round(v.height * scale))))
    plan = plan_job(source, output, job, info=info, picture=picture)
    return run_plan(plan, lambda frames, size: process(frames), workdir=workdir)
