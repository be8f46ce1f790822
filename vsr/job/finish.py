"""The end of a job: its segment files assembled into the output as the plan says, verified
against the source, and only then renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from vsr import __version__
from vsr.job.plan import JobPlan
from vsr.media.assemble import assemble, stale_part_files
from vsr.media.containers import job_tag_text
from vsr.media.verify import VerifyReport


def assemble_plan(plan: JobPlan, segment_paths: Sequence[str | Path], *, tag: str | None = None) -> VerifyReport:
    """Concatenate the segments' video, remux every other stream as planned, verify, publish.

    tag: the output tag (vsr.job.plan.output_tag) written into the output's metadata.
    Raises VerifyError (nothing under the output's name) when the output does not verify.
    """
    job_tag = job_tag_text(tag, __version__) if tag is not None else None
    return assemble(list(segment_paths), plan.source, plan.output, plan.info, plan.encode,
                    scale=plan.display_scale, plans=list(plan.streams), picture=plan.picture, job_tag=job_tag)


def stale_partial_outputs(output: str | os.PathLike) -> list[tuple[Path, int]]:
    """(path, pid) of hidden partial outputs of this output whose writing process is gone (a job
    killed while assembling); only the caller holding the output's lock may remove them."""
    return stale_part_files(output)
