"""Ray execution of video jobs: the runtime, segment workers, scheduling, retries, the resume
manifest and batches. Knows plans, segments, actors and manifests; codec options and tensor
shapes stay in job/, media/ and engine/."""

from vsr.cluster.batch import run_batch
from vsr.cluster.job import run_upscale_job
from vsr.job.events import Events
from vsr.job.inputs import BatchItem, plan_folder
from vsr.job.options import DEFAULT_MODEL, JobOptions
from vsr.storage.paths import default_workdir

__all__ = ["BatchItem", "DEFAULT_MODEL", "Events", "JobOptions", "default_workdir", "plan_folder",
           "run_batch", "run_upscale_job"]
