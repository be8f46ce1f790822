"""transcode_with: the whole media path in one process, with any frames -> frames function.

The reference for what the cluster does in parallel (plan, decode, process, encode per segment,
assemble, verify), used by tests and benchmarks and for quick single-machine runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from vsr.media.assemble import assemble
from vsr.media.decode import decode_segment
from vsr.media.encode import EncodeOptions, SegmentWriter, resolve_encode_options
from vsr.media.probe import MediaInfo, probe
from vsr.media.segments import plan_segments
from vsr.media.streams import plan_streams
from vsr.media.verify import VerifyReport

FramesFn = Callable[[np.ndarray], np.ndarray]


def nearest_upscale(factor: int) -> FramesFn:
    """Nearest-neighbour x factor on (N,H,W,3) frames: each pixel becomes a factor x factor block."""
    def up(frames: np.ndarray) -> np.ndarray:
        return frames.repeat(factor, axis=1).repeat(factor, axis=2)
    return up


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
    """Run source through process segment by segment into output; returns the verify report."""
    info = info or probe(source)
    opts = resolve_encode_options(info, output, options)
    plans = plan_streams(info, output)  # refuse before any work
    w, h = round(info.video.width * scale), round(info.video.height * scale)
    with tempfile.TemporaryDirectory(prefix="vsr-seg-", dir=workdir) as tmp:
        paths = []
        for seg in plan_segments(info, target_seconds):
            path = Path(tmp) / f"segment-{seg.index:05d}.nut"
            with SegmentWriter(path, info, opts, w, h) as writer:
                for chunk in decode_segment(source, seg, chunk_frames, info=info, on_corrupt=on_corrupt):
                    writer.write(process(chunk.frames), chunk.pts, chunk.side_data)
            paths.append(path)
        return assemble(paths, source, output, info, opts, scale=scale, plans=plans)
