"""Segments to worker slots: bounded in flight, each result into the manifest, lost ones retried.

A slot is one of a worker's segments_per_worker; a segment goes to the first idle slot, so a
slow worker never hoards work and memory stays bounded. A worker that dies is replaced (within
the pool's budget) and its segments go back to the queue.

A temporal (recurrent) model runs best on consecutive segments: a worker that has just run
segment i hands its state over to segment i + 1 (vsr.job.handover), which then needs no warm-up
and gives the frames of a one-segment run. For such a plan the slots start at the starts of as
many contiguous ranges of the pending segments (first_segments), a slot that finishes segment i
goes on with i + 1 when it is pending, and one that has nothing left to go on with takes a
range nobody will reach, else the second half of the longest pending range (next_segment):
only the segment a slot starts a range with warms up. Other plans keep the queue's order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Collection, Sequence

from vsr.cluster.manifest import Manifest
from vsr.cluster.pool import Worker, WorkerPool, unwrap_ray_error
from vsr.errors import JobError, VsrError
from vsr.job.events import Events, SegmentDone, SegmentRetry, SegmentStart
from vsr.job.plan import JobPlan, Segment
from vsr.storage.errorlog import write_error_log

log = logging.getLogger("vsr.cluster")

STATUS_POLL_S = 0.5
CANCEL_WAIT_S = 30.0  # how long a failing job waits for its other segments to stop


def first_segments(pending: Sequence[Segment], slots: int) -> list[Segment]:
    """Where the slots start a recurrent plan: the first segment of each of min(slots, pending)
    contiguous ranges of the pending segments (in index order, counts differing by at most one)."""
    ordered = sorted(pending, key=lambda s: s.index)
    n, k = len(ordered), min(slots, len(ordered))
    return [ordered[j * n // k] for j in range(k)]


def next_segment(pending: Sequence[Segment], after: Segment | None, continued: Collection[int]) -> Segment | None:
    """The segment a slot runs next for a recurrent plan (None: nothing pending). after: the
    segment the slot has just finished (None: a fresh or failed slot, whose state is gone);
    continued: segments whose slot goes on to the one after them (those running).

    The one after `after` when it is pending (its state is handed over); else the first of the
    longest run of consecutive pending segments that no slot goes on into (it warms up however it
    is run); else the start of the second half of the longest run (work stealing: the slot that
    goes into it keeps the first half)."""
    by_index = {s.index: s for s in pending}
    if after is not None and after.index + 1 in by_index:
        return by_index[after.index + 1]
    runs: list[list[int]] = []
    for i in sorted(by_index):
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    if not runs:
        return None
    free = [r for r in runs if r[0] - 1 not in continued]
    if free:
        return by_index[max(free, key=len)[0]]  # max: the first of the longest
    longest = max(runs, key=len)
    return by_index[longest[len(longest) // 2]]


@dataclass
class _Slot:
    """One of a worker's segments_per_worker, and the segment it ran last (a recurrent model's
    worker holds that segment's final state for the segment after it)."""

    worker: Worker
    last: Segment | None = None


class SegmentScheduler:
    """Runs a plan's unfinished segments on a pool; run() returns retries, lost workers, nodes."""

    def __init__(self, pool: WorkerPool, plan: JobPlan, manifest: Manifest, events: Events, *,
                 run_no: int, job_token: str, max_retries: int, done_frames: int) -> None:
        self.pool, self.plan, self.manifest, self.events = pool, plan, manifest, events
        self.run_no, self.job_token, self.max_retries = run_no, job_token, max_retries
        self.done_frames = done_frames
        import ray  # imported once RaySession has set Ray's environment (runtime.py)

        self.plan_ref = ray.put(plan)  # once per job, not once per segment
        self.pending: deque[Segment] = deque()
        self.attempts: dict[int, int] = {}
        self.in_flight: dict[Any, tuple[Worker, Segment]] = {}
        self.idle: deque[_Slot] = deque(_Slot(w) for _ in range(pool.segments_per_worker) for w in pool.workers)
        self.starts: deque[Segment] = deque()  # a recurrent plan's range starts, for the first slots
        # workers already replaced (kept referenced, so that their id()s stay theirs): their other
        # segments fail too, and no slot of theirs goes back to idle
        self.lost: dict[int, Worker] = {}
        self.stats: dict[str, Any] = {"retries": 0, "lost": 0, "nodes": set()}

    def run(self, todo: list[Segment], *, cancel_on_failure: bool) -> dict[str, Any]:
        """Every segment of `todo` finished and recorded, or an error (the job fails)."""
        import ray

        self.pending.extend(todo)
        if self.plan.model.recurrent:
            self.starts.extend(first_segments(todo, len(self.idle)))
        last_poll = 0.0
        try:
            while self.pending or self.in_flight:
                self._start_idle()
                if not self.in_flight:
                    raise JobError(f"no worker left to run {_segment_range(self.pending[0])}")
                ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=STATUS_POLL_S)
                for ref in ready:
                    self._collect(ref)
                now = time.monotonic()
                if self.events.progress and self.in_flight and now - last_poll >= STATUS_POLL_S:
                    last_poll = now
                    self.events.bar_set(self.done_frames + _frames_in_progress(self.in_flight))
        except Exception:
            if cancel_on_failure:
                # the job fails: its other segments stop too, so that a batch's next file does not
                # share the workers with work nobody will use (an own pool is killed instead)
                _cancel(self.in_flight, self.job_token)
            raise
        return dict(self.stats, nodes=sorted(n for n in self.stats["nodes"] if n))

    def _start_idle(self) -> None:
        if self.plan.model.recurrent:
            # slots that can go on with the segment after theirs first: none takes another's
            waiting = {s.index for s in self.pending}
            self.idle = deque(sorted(self.idle, key=lambda x: x.last is None or x.last.index + 1 not in waiting))
        while self.pending and self.idle:
            slot = self.idle.popleft()
            w, seg = slot.worker, self._pick(slot)
            ref = w.handle.process.remote(self.plan_ref, seg.to_dict(),
                                          self.plan.segment_path(seg), self.job_token)
            self.in_flight[ref] = (w, seg)
            self.attempts[seg.index] = self.attempts.get(seg.index, 0) + 1
            self.events.emit(SegmentStart(index=seg.index, frames=seg.frame_count, worker=w.name,
                                          pid=w.info.get("pid"), node_id=w.info.get("node_id"),
                                          attempt=self.attempts[seg.index], start_time=seg.start_time,
                                          end_time=seg.end_time))

    def _pick(self, slot: _Slot) -> Segment:
        """The pending segment this idle slot runs (taken out of the queue)."""
        if not self.plan.model.recurrent:
            return self.pending.popleft()
        seg = None
        while self.starts and seg is None:  # the first slots: the ranges' starts
            start = self.starts.popleft()
            seg = start if start in self.pending else None
        if seg is None:
            seg = next_segment(self.pending, slot.last, {s.index for _, s in self.in_flight.values()})
        self.pending.remove(seg)
        return seg

    def _collect(self, ref: Any) -> None:
        import ray

        w, seg = self.in_flight.pop(ref)
        try:
            rec = ray.get(ref)
        except Exception as raw:  # noqa: BLE001 - sorted into death / user error / retry
            self._failed(w, seg, raw)
            return
        rec.update(run=self.run_no, worker=w.name)
        self.manifest.record(seg.index, rec)
        self.stats["nodes"].add(rec.get("node_id"))
        self.done_frames += rec["frames"]
        self.events.bar_set(self.done_frames)
        self.events.emit(SegmentDone(index=seg.index, frames=rec["frames"], seconds=rec["seconds"],
                                     identical_reused=rec.get("identical_reused", 0), worker=w.name,
                                     pid=rec.get("pid"), node_id=rec.get("node_id"), done_frames=self.done_frames))
        if id(w) not in self.lost:
            self.idle.append(_Slot(w, seg))

    def _failed(self, w: Worker, seg: Segment, raw: BaseException) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

        err = unwrap_ray_error(raw)
        if isinstance(err, VsrError):
            raise err from None  # corrupt input, disk full, ...: retrying cannot help
        death = isinstance(raw, (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError))
        if self.attempts[seg.index] > self.max_retries:
            # the worker's traceback (Ray carries it in the error) goes to a log, not the terminal
            log_path = write_error_log(raw, self.plan.workdir)
            details = f" (details: {log_path})" if log_path is not None else ""
            raise JobError(f"{_segment_range(seg)} failed after {self.attempts[seg.index]} attempts: "
                           f"{_brief(err)}{details}") from None
        self.stats["retries"] += 1
        self.events.emit(SegmentRetry(index=seg.index, worker=w.name, reason=_brief(err),
                                      worker_died=death, attempt=self.attempts[seg.index]))
        log.warning("%s: %s on %s; retrying", _segment_range(seg), _brief(err), w.name)
        self.pending.appendleft(seg)
        if death:
            self._replace(w)
        elif id(w) not in self.lost:
            self.idle.append(_Slot(w))  # a failed segment's state is gone

    def _replace(self, w: Worker) -> None:
        """A dead worker's slots go to a fresh actor (once, however many of its segments fail with
        it); its segments go to whichever slot is idle first."""
        if id(w) in self.lost:
            return
        self.lost[id(w)] = w
        self.stats["lost"] += 1
        self.idle = deque(x for x in self.idle if x.worker is not w)
        new = self.pool.replace(w)
        codec = self.plan.encode.codec
        if new is not None and codec in self.pool.nvenc_probe and not new.info.get("nvenc", {}).get(codec):
            # Ray placed it on a machine without this job's NVENC encoder
            log.warning("%s cannot open %s: it gets no segment of this job", new.name, codec)
            new = None
        if new is not None:
            self.idle.extend(_Slot(new) for _ in range(self.pool.segments_per_worker))


def _cancel(in_flight: dict[Any, tuple[Worker, Segment]], job_token: str) -> None:
    """Ask the workers to stop this job's segments and wait (bounded) until they have."""
    import ray

    if not in_flight:
        return
    workers = {id(w): w for w, _ in in_flight.values()}
    calls = []
    for w in workers.values():
        try:
            calls.append(w.handle.cancel.remote(job_token))
        except Exception as err:  # noqa: BLE001 - a dead worker: nothing to stop there
            log.debug("cancel on %s: %s", w.name, err)
    refs = list(in_flight) + calls
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
    for ref in ready:  # fetched, so that Ray does not report them as unhandled errors
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - SegmentCancelled, or a worker that died meanwhile
            pass


def _frames_in_progress(in_flight: dict[Any, tuple[Worker, Segment]]) -> int:
    import ray

    busy = {id(w): w for w, _ in in_flight.values()}  # a worker with two segments: asked once
    refs = [w.handle.status.remote() for w in busy.values()]
    try:
        return sum(s["frames"] for s in ray.get(refs, timeout=2.0))
    except Exception:  # a worker just died; the main loop will see it
        return 0


def _segment_range(seg: Segment) -> str:
    return f"segment {seg.index} ({_hms(seg.start_time)}-{_hms(seg.end_time)})"


def _hms(t: float) -> str:
    h, rem = divmod(max(0.0, t), 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):d}:{int(m):02d}:{s:06.3f}"


def _brief(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return f"{type(err).__name__}: {text}"[:300]
