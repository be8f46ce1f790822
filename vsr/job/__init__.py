"""One file's job without Ray: its plan (JobPlan, made once before any work), the segment path
(run_segment: decode -> upscale -> encode), and assembly + verification. Knows codecs and
pictures through media/, networks through engine/; never imports Ray."""

from vsr.job.options import DEFAULT_MODEL, JobOptions
from vsr.job.plan import JobPlan, WorkerFacts, plan_job

__all__ = ["DEFAULT_MODEL", "JobOptions", "JobPlan", "WorkerFacts", "plan_job"]
