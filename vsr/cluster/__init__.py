"""Ray execution of video jobs: segment workers, scheduling, retries, the resume manifest,
job specs and batch folders. Knows segments, actors and manifests; codec options and tensor
shapes stay in media/ and engine/."""

from vsr.cluster.batch import BatchItem, plan_folder, run_batch
from vsr.cluster.events import Events
from vsr.cluster.job import default_workdir, run_upscale_job
from vsr.cluster.options import DEFAULT_MODEL, JobOptions

__all__ = ["BatchItem", "DEFAULT_MODEL", "Events", "JobOptions", "default_workdir", "plan_folder",
           "run_batch", "run_upscale_job"]
