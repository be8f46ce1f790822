"""Deliberate failures for testing how vsr and the pipelines around it handle a bug.

VSR_FAULT names one or more points (comma-separated) where vsr raises
RuntimeError("injected fault at POINT"), an exception no vsr code expects, as a bug would:

  plan      while planning a job (vsr.job.plan.plan_job), on the driver
  worker    in a Ray worker, as it starts a segment (vsr.cluster.worker); Ray workers of the
            embedded instance inherit the driver's environment, so the variable reaches them
  assemble  in assembly, after the output is written and verified under its temporary name,
            just before it would be renamed into place (vsr.media.assemble)

Unset (the normal case) nothing happens. This module sits beside vsr.errors so that every layer
(media, job, cluster) may call it.
"""

from __future__ import annotations

import os

FAULT_ENV = "VSR_FAULT"
FAULT_POINTS = ("plan", "worker", "assemble")


def maybe_fail(point: str) -> None:
    """Raise RuntimeError("injected fault at POINT") when VSR_FAULT names `point`: a plain
    RuntimeError, like a bug, which no vsr code expects."""
    if point not in FAULT_POINTS:
        raise ValueError(f"unknown fault point {point!r}")
    wanted = {p.strip() for p in os.environ.get(FAULT_ENV, "").split(",")}
    if point in wanted:
        raise RuntimeError(f"injected fault at {point}")
