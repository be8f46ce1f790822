"""The end of a job: its segment files assembled into the output as the plan says, verified
against the source, and only then renamed into place."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from vsr import __version__
from vsr.errors import OutputError
from vsr.job.plan import JobPlan
from vsr.job.segment import frames_sidecar, read_frames_sidecar
from vsr.media.assemble import assemble, stale_part_files
from vsr.media.containers import job_tag_text
from vsr.media.frame_digests import EncodedFrame
from vsr.media.verify import VerifyReport


def assemble_plan(plan: JobPlan, segment_paths: Sequence[str | Path], *, tag: str | None = None) -> VerifyReport:
    """Concatenate the segments' video, remux every other stream as planned, verify, publish.

    tag: the output tag (vsr.job.plan.output_tag) written into the output's metadata.
    Every output frame is matched against the digest its segment recorded when it decoded its
    file back (the sidecar beside each segment file, vsr.job.segment.frames_sidecar).
    Raises VerifyError (nothing under the output's name) when the output does not verify.
    """
    job_tag = job_tag_text(tag, __version__) if tag is not None else None
    encoded = encoded_frames(plan, segment_paths)
    return assemble(list(segment_paths), plan.source, plan.output, plan.info, plan.encode,
                    scale=plan.display_scale, plans=list(plan.streams), picture=plan.picture, job_tag=job_tag,
                    encoded=encoded)


def encoded_frames(plan: JobPlan, segment_paths: Sequence[str | Path]) -> list[EncodedFrame]:
    """Every frame the plan's segments encoded, in order: time, digest and segment, from the
    sidecars; OutputError when one is missing or unreadable (the segment must be made again)."""
    frames: list[EncodedFrame] = []
    for segment, path in zip(plan.segments, segment_paths):
        try:
            sidecar = read_frames_sidecar(path)
            time_base = Fraction(sidecar["time_base"])
        except (OSError, ValueError, ZeroDivisionError) as err:
            raise OutputError(f"segment {segment.index}: no frame digests in {frames_sidecar(path)} ({err}); "
                              "run the job again with --no-resume") from None
        frames.extend(EncodedFrame(None if p is None else float(p * time_base), d, segment.index)
                      for p, d in zip(sidecar["pts"], sidecar["digests"]))
    return frames


def stale_partial_outputs(output: str | os.PathLike) -> list[tuple[Path, int]]:
    """(path, pid) of hidden partial outputs of this output whose writing process is gone (a job
    killed while assembling); only the caller holding the output's lock may remove them."""
    return stale_part_files(output)
