"""The segment worker: one Ray actor per GPU (or per share of the CPU cores).

It loads the model once and then turns segments of job plans into segment files with
vsr.job.segment.run_segment. Frames never leave the node; only the segment file's name, frame
count and checksum go back to the driver. The plan decides everything about the file.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Sequence

import ray

from vsr.faults import maybe_fail
from vsr.job.encoders import encoders_that_open
from vsr.job.handover import StateStore
from vsr.job.plan import JobPlan, Segment
from vsr.job.remote import run_segment_at
from vsr.job.segment import SegmentStopped, load_upscaler


class SegmentCancelled(Exception):
    """The driver cancelled this segment (its job failed elsewhere); nothing was written."""


class SegmentWorker:
    """Actor body (wrapped with ray.remote by WorkerPool). `process` may run for several
    segments at once (the pool's segments_per_worker: their decode and encode threads run side
    by side while their upscale calls, a chunk of frames each, take turns on the device);
    `status` and `cancel` run in their own concurrency group so the driver can reach a busy
    worker. For a temporal model it keeps the final state of up to `states` segments and hands
    each to the segment after it of the same plan, when that one comes here next."""

    def __init__(self, upscaler_kwargs: dict[str, Any], states: int = 1):
        self._upscaler_kwargs = upscaler_kwargs
        # a temporal model's final state of the segments it ran last, for the segments after them
        # (vsr.job.handover): one per segment run at once (each about half a GB at 1080p)
        self._states = StateStore(keep=states)
        self._upscaler = None
        # segment file in progress -> frames written to it (keyed by path: a batch run's next file
        # may start its segment 3 while the previous file's segment 3 still finishes)
        self._frames_written: dict[str, int] = {}
        self._segments_done = 0
        self._done_lock = threading.Lock()
        # segment file in progress -> (its job's token, its stop event)
        self._stops: dict[str, tuple[str, threading.Event]] = {}
        self._cancelled_jobs: set[str] = set()  # tokens of failed jobs (one per failed job)
        self._upscale_lock = threading.Lock()  # segments run together take turns on the device

    def ready(self, nvenc_probe: Sequence[str] = ()) -> dict[str, Any]:
        """Load the model (once) and describe this worker; with `nvenc_probe`, also which of those
        NVENC encoders open here (info["nvenc"]): the machine that encodes needs the GPU's
        encoder engine, and the driver's machine may have another GPU or none."""
        if self._upscaler is None:
            self._upscaler = load_upscaler(self._upscaler_kwargs)
        up = self._upscaler
        ctx = ray.get_runtime_context()
        info = {
            "pid": os.getpid(), "node_id": ctx.get_node_id(), "host": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "actor_id": ctx.get_actor_id(),
            "model": up.name, "scale": up.scale, "device": up.device, "precision": up.precision,
            "threads": os.environ.get("OMP_NUM_THREADS"),
        }
        if nvenc_probe:
            info["nvenc"] = encoders_that_open(list(nvenc_probe))
        return info

    @ray.method(concurrency_group="status")
    def status(self) -> dict[str, Any]:
        """Segments in progress and frames written of them (polled for the progress bar)."""
        written = dict(self._frames_written)
        return {"segments": len(written), "frames": sum(written.values()), "done": self._segments_done}

    @ray.method(concurrency_group="status")
    def cancel(self, job_token: str) -> int:
        """Stop this job's segments (it failed elsewhere): each ends within a chunk with
        SegmentCancelled and writes nothing; one not started yet will not start. The token is
        unique per job run, so a later run of the same output is not affected. Returns how
        many were running."""
        self._cancelled_jobs.add(job_token)
        running = 0
        for token, stop in list(self._stops.values()):
            if token == job_token:
                stop.set()
                running += 1
        return running

    def process(self, plan: JobPlan, segment: dict[str, Any], seg_path: str, job_token: str) -> dict[str, Any]:
        """Upscale one segment of the plan into seg_path; return its record for the manifest.
        Raises SegmentCancelled when the driver cancelled it (see cancel)."""
        key = str(seg_path)
        stop = threading.Event()
        # registered before the check: a cancel either sees this entry or is seen by the check
        self._stops[key] = (job_token, stop)
        self._frames_written[key] = 0
        try:
            if job_token in self._cancelled_jobs:
                raise SegmentStopped("cancelled before it started")
            maybe_fail("worker")
            seg = Segment.from_dict(segment)
            recurrent = plan.model.recurrent
            # seg_path may be a URI: the file is then made in this node's temporary folder and uploaded
            record = run_segment_at(plan, seg, seg_path, self._upscale, stop=stop,
                                    on_frames=lambda n: self._count(key, n),
                                    reuse=self._upscaler.reuse_geometry(),
                                    carry_in=self._states.take(plan, seg) if recurrent else None,
                                    carry_out=self._states.put if recurrent else None)
        except BaseException as err:
            if job_token in self._cancelled_jobs or isinstance(err, SegmentStopped):
                raise SegmentCancelled(f"{str(seg_path).rpartition('/')[2]} cancelled: its job failed") from None
            raise
        finally:
            self._stops.pop(key, None)
            self._frames_written.pop(key, None)
        with self._done_lock:
            self._segments_done += 1
        ctx = ray.get_runtime_context()
        return dict(record, node_id=ctx.get_node_id(), host=socket.gethostname(), pid=os.getpid())

    def _count(self, key: str, frames: int) -> None:
        self._frames_written[key] = self._frames_written.get(key, 0) + frames

    def _upscale(self, frames: Any, out_size: tuple[int, int], **run: Any) -> Any:
        # run: a temporal model's carry and last (vsr.job.segment.Upscale), passed through
        with self._upscale_lock:
            return self._upscaler.upscale(frames, out_size, **run)
