"""run_upscale_job: one input video to one verified output, over a pool of Ray segment workers.

plan (vsr.job, before Ray starts: every refusal) -> workers -> the plan fitted to them (finer
segments, the encoder they all run) -> manifest (resume) -> segments scheduled on the workers
-> assemble + verify -> atomic rename.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

from vsr.cluster.manifest import Manifest
from vsr.cluster.pool import WorkerPool
from vsr.cluster.runtime import RaySession, stop_requested
from vsr.cluster.schedule import SegmentScheduler
from vsr.errors import VsrError
from vsr.job.events import Assemble, EncoderFallback, Events, InputDamaged, JobDone, JobStart
from vsr.job.events import SegmentReused, SegmentsPlanned, StalePartRemoved
from vsr.job.finish import assemble_plan, stale_partial_outputs
from vsr.job.options import JobOptions, workers_are_local
from vsr.job.plan import JobPlan, WorkerFacts, output_tag, picture_settings, plan_job, pre_start_facts
from vsr.job.plan import Segment
from vsr.job.remote import StagedJob
from vsr.storage.digests import content_digest
from vsr.storage.errorlog import internal_error
from vsr.storage.lease import ObjectLock, clear_objects
from vsr.storage.lock import OutputLock, clear_workdir
from vsr.storage.uri import is_uri
from vsr.storage.paths import check_paths, default_workdir

log = logging.getLogger("vsr.cluster")


def run_upscale_job(input: str | os.PathLike, output: str | os.PathLike, options: JobOptions | None = None,
                    *, events: Events | None = None, pool: WorkerPool | None = None) -> dict[str, Any]:
    """Upscale one video file into `output` and return the job summary (a JSON-able dict).

    The job is planned first (vsr.job.plan_job: every refusal, before Ray starts). With
    `pool=None` this then starts Ray (embedded loopback instance, or the cluster named by
    options.address / RAY_ADDRESS) and the workers, and tears both down at the end, also on
    errors and Ctrl-C. Batch mode passes its own pool so the model loads once per worker.
    Raises VsrError subclasses with one-line messages; the output exists only if it verified.
    BusyError when another running job holds the output's work directory. An unexpected
    exception (a bug) becomes an InternalError whose traceback is in a log file in the work
    directory.
    """
    options = (options or JobOptions()).validate()
    events = events or Events()
    t_start = time.perf_counter()
    src, dst = check_paths(input, output)  # a URI's bucket, key and write permission too
    workdir = default_workdir(dst, options.workdir)
    lock = ObjectLock(str(workdir), str(dst)) if is_uri(workdir) else OutputLock(workdir, dst)
    with lock:
        try:
            if not is_uri(dst):
                _remove_stale_parts(dst, events)
            facts = pool.facts(options.encoders()) if pool is not None else \
                pre_start_facts(options, local=workers_are_local(options.address))
            with StagedJob(src, dst) as staged:
                plan = plan_job(staged.source, staged.output, options, facts=facts)
                plan = staged.for_workers(plan, workdir) if staged.remote or is_uri(workdir) else plan
                return _run_plan(plan, options, events, pool, t_start, staged)
        except Exception as err:
            if isinstance(err, VsrError) or stop_requested():  # said already, or the stop itself
                raise
            raise internal_error(err, workdir) from err


def _remove_stale_parts(dst: Any, events: Events) -> None:
    for path, pid in stale_partial_outputs(dst):  # ours to remove: we hold the output's lock
        try:
            path.unlink()
        except OSError as err:
            log.warning("cannot remove stale partial output %s: %s", path, err.strerror or err)
            continue
        log.warning("removed stale partial output %s (its process %d is gone)", path, pid)
        events.emit(StalePartRemoved(path=str(path), pid=pid))


def _run_plan(plan: JobPlan, options: JobOptions, events: Events, pool: WorkerPool | None,
              t_start: float, staged: StagedJob) -> dict[str, Any]:
    """Run a planned job on the workers, then assemble and verify it; returns the summary.
    staged: the driver's local copies when the input, output or work directory is a URI."""
    if plan.info.damage:
        log.warning("%s: container damaged, frames may be missing: %s", plan.source, "; ".join(plan.info.damage))
        events.emit(InputDamaged(input=plan.source, messages=list(plan.info.damage)))
    picture = plan.picture
    if options.picture or picture.deinterlace or "mirror" in picture.detected or "frame_sizes" in picture.detected:
        for line in picture.describe().splitlines():
            log.info("%s", line)  # what auto-detection decided
    events.emit(JobStart(input=plan.source, output=plan.output, frames=plan.source_frames,
                         segments=len(plan.segments), model=options.model))
    # The digest is needed only for the output's tag: a multi-GB master on network storage hashes
    # while Ray starts and the workers run, not before the job starts
    def source_digest_of() -> str:  # an object's: of the driver's local copy
        return staged.digest() or content_digest(plan.source)

    source_digest = _Background(source_digest_of)
    with ExitStack() as stack:
        shared_pool = pool is not None  # batch mode: the workers go on to the next file
        if pool is None:
            stack.enter_context(RaySession(options.address))
            pool = stack.enter_context(WorkerPool(options, events))
        plan = _fit_to_workers(plan, pool, events, wanted=options.encoders()[0])
        manifest, reused, plan = _open_manifest(plan, options, events, len(pool.workers))
        todo = [s for s in plan.segments if not manifest.is_done(s.index)]
        events.bar_open(plan.output_frames, desc=os.path.basename(plan.source))
        try:
            scheduler = SegmentScheduler(pool, plan, manifest, events, run_no=len(manifest.history),
                                         job_token=uuid.uuid4().hex, max_retries=options.max_retries,
                                         done_frames=sum(manifest.segments[i]["frames"] for i in reused))
            stats = scheduler.run(todo, cancel_on_failure=shared_pool)
        finally:
            events.bar_close()
        model_name = pool.workers[0].info["model"]
    tag = output_tag(plan.settings, source_digest.result())
    events.emit(Assemble(segments=len(plan.segments), output=plan.output))
    count = len(plan.segments)  # objects downloaded, each checked against its recorded SHA-256
    segments = staged.segments(manifest.segment_paths(count),
                               [manifest.segments[i].get("sha256") for i in range(count)])
    report = assemble_plan(staged.for_assembly(plan), segments, tag=tag)
    report.raise_if_failed()
    staged.publish()  # an output object appears only now, whole
    summary = _summary(plan, model_name, manifest, reused, todo, stats, report, tag, t_start)
    if not options.keep_workdir:  # the lock last, by OutputLock / ObjectLock on release
        clear_objects(plan.workdir) if is_uri(plan.workdir) else clear_workdir(plan.workdir)
    events.emit(JobDone(**{k: v for k, v in summary.items() if k != "verify"}, verified=report.ok))
    return summary


def _fit_to_workers(plan: JobPlan, pool: WorkerPool, events: Events, *, wanted: str | None) -> JobPlan:
    """The plan cut for the pool's slots, with the first encoder every worker runs (said when it
    is not the `wanted` one, the first the user listed)."""
    facts: WorkerFacts = pool.facts(e.codec for e in plan.encoders)
    fitted = plan.for_workers(facts, pool.nvenc_answers(), [w.name for w in pool.workers])
    if len(fitted.segments) != len(plan.segments):
        log.info("%d segment(s) for %d worker slot(s): re-planned into %d shorter ones",
                 len(plan.segments), facts.slots, len(fitted.segments))
        events.emit(SegmentsPlanned(segments=len(fitted.segments), workers=len(pool.workers)))
    if wanted is not None and fitted.encode.codec != wanted:
        log.warning("%s does not open on every worker: encoding with %s", wanted, fitted.encode.codec)
        events.emit(EncoderFallback(wanted=wanted, used=fitted.encode.codec))
    return fitted


def _open_manifest(plan: JobPlan, options: JobOptions, events: Events,
                   workers: int) -> tuple[Manifest, list[int], JobPlan]:
    """The work directory's manifest (finished segments of an earlier run re-used) and the plan,
    with the previous run's segments when only they differ (a short video re-planned for other
    worker slots: its finished segments are re-used, not redone)."""
    fingerprint = plan.resume_fingerprint()
    if options.resume:
        previous = _previous_segments(plan, fingerprint)
        if previous is not None:
            plan = plan.with_segments(previous)
            fingerprint = plan.resume_fingerprint()
            events.emit(SegmentsPlanned(segments=len(plan.segments), workers=workers, resumed=True))
    manifest = Manifest.open(plan.workdir, fingerprint, resume=options.resume)
    reused = sorted(i for i in manifest.segments if i < len(plan.segments))
    manifest.start_run({"run": len(manifest.history) + 1, "started": time.time(), "reused": reused})
    for i in reused:
        events.emit(SegmentReused(index=i, frames=manifest.segments[i]["frames"]))
    return manifest, reused, plan


def _previous_segments(plan: JobPlan, fingerprint: dict[str, Any]) -> list[Segment] | None:
    previous = Manifest.previous_plan(plan.workdir, fingerprint)
    if previous is None or previous == fingerprint["segments"]:
        return None
    try:
        old = [Segment.from_dict(d) for d in previous]
    except (KeyError, TypeError, ValueError):
        return None
    if [s.index for s in old] != list(range(len(old))) or sum(s.frame_count for s in old) != plan.source_frames:
        return None
    log.info("resuming with the previous run's plan of %d segment(s) (this run would plan %d)",
             len(old), len(plan.segments))
    return old


def _summary(plan: JobPlan, model_name: str, manifest: Manifest, reused: list[int], todo: list[Segment],
             stats: dict[str, Any], report: Any, tag: str, t_start: float) -> dict[str, Any]:
    records = manifest.segments.values()
    # how this run's segments of a temporal model started (vsr.job.handover); 0 and 0 otherwise
    started = [manifest.segments[s.index].get("state") for s in todo if s.index in manifest.segments]
    repeated = sorted(set(plan.corrupt_pts) | {p for r in records for p in r.get("repeated", [])})
    seconds = time.perf_counter() - t_start
    tb = plan.info.video.time_base
    w, h = plan.out_size
    return {
        "input": plan.source, "output": plan.output, "model": model_name,
        "width": w, "height": h, "frames": plan.output_frames, "source_frames": plan.source_frames,
        "segments": len(plan.segments), "segments_reused": len(reused), "segments_computed": len(todo),
        "segments_handed_over": started.count("handed over"), "segments_warmed_up": started.count("warm-up"),
        "retries": stats["retries"], "workers_lost": stats["lost"], "nodes": stats["nodes"],
        "seconds": round(seconds, 3), "fps": round(plan.source_frames / seconds, 3) if seconds else None,
        "repeated_frames": [{"pts": p, "time": round(float(p * tb), 6)} for p in repeated],
        # frames identical to their predecessor whose output was re-used (vsr.engine.repeats)
        "identical_frames_reused": sum(int(r.get("identical_reused", 0)) for r in records),
        # 32x32 source tiles whose output was the previous frame's (--temporal exact; vsr.engine.reuse)
        "tiles": sum(int(r.get("tiles", 0)) for r in records),
        "tiles_reused": sum(int(r.get("tiles_reused", 0)) for r in records),
        "picture": picture_settings(plan.picture), "encode": plan.encode.to_dict(), "workdir": plan.workdir,
        "container_damage": plan.info.damage,
        "settings_fingerprint": plan.settings_fingerprint(),
        "output_tag": tag,
        "verify": report.to_dict(),
    }


class _Background:
    """fn(*args) in a daemon thread (an interrupted job does not wait for it); result() joins
    and returns its value or raises its exception."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True,
                                        name=f"vsr-{getattr(fn, '__name__', 'task')}")
        self._thread.start()

    def _run(self, fn: Any, args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to result()
            self._error = err

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


