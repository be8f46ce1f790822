"""A pool of segment workers placed on the cluster's GPUs, or on shares of its CPU cores."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable

from vsr.cluster.runtime import cluster_resources
from vsr.job.options import resolve_address
from vsr.errors import JobError, VsrError
from vsr.job.encoders import nvenc_candidates, nvenc_everywhere
from vsr.job.events import Events, WorkerLost, WorkerReady
from vsr.job.options import JobOptions
from vsr.job.plan import WorkerFacts

log = logging.getLogger("vsr.cluster")

READY_TIMEOUT_S = 600.0  # model load + actor placement; a pending actor means missing resources


@dataclass
class Worker:
    """One live actor and what it reported about itself."""

    handle: Any
    info: dict[str, Any]
    slot: int

    @property
    def name(self) -> str:
        return f"w{self.slot}@{self.info.get('host', '?')}:{self.info.get('pid', '?')}"


def gpu_share(workers: int | None, gpus_per_worker: float, gpus: float, embedded: bool) -> tuple[int, float]:
    """(actor count, GPUs per actor) for a cluster with `gpus` GPUs.

    With no worker count: one actor per gpus_per_worker. An explicit count that the GPUs cannot
    hold at gpus_per_worker each shares them instead on the embedded (fixed-size) instance:
    `--workers 2` on a one-GPU machine runs two actors at 0.5 GPU rather than leaving one
    pending until the start-up timeout. A joined cluster may grow (autoscaler), so there the
    request stands as given.
    """
    per = gpus_per_worker
    whole = math.floor(gpus + 1e-9)
    # Ray places a fraction of a GPU inside one device: what fits is counted per device
    if per < 1:
        capacity = whole * math.floor(1 / per + 1e-9)
    else:
        capacity = whole // max(1, round(per))
    count = workers or max(1, capacity)
    if embedded and count > capacity and whole >= 1:
        if count <= whole:
            per = float(whole // count)  # Ray places whole GPUs, or fractions of one GPU
        else:
            # a fractional request must fit inside one GPU: pack ceil(count / GPUs) per device
            per = math.floor(1e4 / math.ceil(count / whole)) / 1e4
    return count, per


def cpu_share(workers: int | None, cpus: float, embedded: bool) -> tuple[int, float]:
    """(actor count, CPU cores per actor) for a cluster without GPUs: whole cores each, or on
    the embedded instance fractions when more workers are asked for than it has cores (they
    would otherwise wait out the start-up timeout)."""
    count = workers or 1
    share = max(1, math.floor(cpus / count))
    if embedded and count * share > cpus + 1e-9:
        share = math.floor(cpus / count * 1e4) / 1e4  # rounded down: the shares must fit
    return count, float(share)


def unwrap_ray_error(err: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error (a VsrError keeps its one-line message)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    return err


class WorkerPool:
    """Creates the actors, replaces dead ones (bounded) and kills them all on close."""

    def __init__(self, options: JobOptions, events: Events | None = None):
        self.options = options
        self.events = events or Events()
        self.workers: list[Worker] = []
        self.replacements = 0
        self.max_replacements = 0
        self.segments_per_worker = 1
        self._actor_options: dict[str, Any] = {}
        self._actor_class: Any = None
        # the NVENC encoders the job may use: each worker says which of them open on its machine
        self.nvenc_probe = sorted(nvenc_candidates(options.encoders()))

    # ------------------------------------------------------------ start
    def start(self) -> "WorkerPool":
        import ray

        from vsr.cluster.worker import SegmentWorker

        res = cluster_resources()
        gpus = float(res.get("GPU", 0))
        cpus = float(res.get("CPU", 1))
        opts = self.options
        if gpus > 0:
            count, per = gpu_share(opts.workers, opts.gpus_per_worker, gpus,
                                   embedded=resolve_address(opts.address) is None)
            if per != opts.gpus_per_worker:
                log.info("%d workers share %g GPU(s): %.3g GPU each instead of %g",
                         count, gpus, per, opts.gpus_per_worker)
            # one core each for decode/encode, or less when more actors than cores are packed
            self._actor_options = dict(num_gpus=per, num_cpus=min(1.0, cpu_share(count, cpus, embedded=True)[1]))
            # two only where the model runs on the GPU (device auto or cuda)
            on_gpu = not str(opts.device).startswith("cpu")
            self.segments_per_worker = opts.segments_per_worker or (2 if on_gpu else 1)
            where = f"{per:.3g} GPU each"
        else:
            count, share = cpu_share(opts.workers, cpus, embedded=resolve_address(opts.address) is None)
            self._actor_options = dict(num_cpus=share)
            self.segments_per_worker = opts.segments_per_worker or 1
            where = f"{share:g} CPU core(s) each, no GPU in the cluster"
        # process() calls run in the default group, segments_per_worker at a time
        self._actor_options.update(scheduling_strategy="SPREAD", max_restarts=0,
                                   max_concurrency=self.segments_per_worker)
        self._actor_class = ray.remote(concurrency_groups={"status": 1})(SegmentWorker)
        log.info("starting %d worker(s), %s, %d segment(s) at a time each", count, where,
                 self.segments_per_worker)
        self.max_replacements = count * max(1, opts.max_retries)
        handles = [self._new_handle() for _ in range(count)]
        infos = self._wait_ready(handles)
        for slot, (h, info) in enumerate(zip(handles, infos)):
            self._add(h, info, slot)
        return self

    def _new_handle(self) -> Any:
        return self._actor_class.options(**self._actor_options).remote(self.options.upscaler_kwargs(),
                                                                       states=self.segments_per_worker)

    def _wait_ready(self, handles: list[Any]) -> list[dict[str, Any]]:
        import ray

        refs = [h.ready.remote(self.nvenc_probe) for h in handles]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT_S)
        if pending:
            for h in handles:
                ray.kill(h)
            raise JobError(f"only {len(ready)} of {len(refs)} workers started within {READY_TIMEOUT_S:.0f} s: "
                           f"the cluster lacks the resources {self._actor_options_text()} per worker "
                           "(lower --workers or --gpus-per-worker)")
        try:
            return ray.get(refs)
        except Exception as err:
            for h in handles:
                ray.kill(h)
            cause = unwrap_ray_error(err)
            if isinstance(cause, VsrError):
                raise cause from None
            raise JobError(f"a worker failed to start: {_one_line(cause)}") from None

    def ask_nvenc(self, names: Iterable[str | None]) -> None:
        """Have every worker say which of these NVENC encoders open on its machine
        (info["nvenc"], name -> bool), if it has not yet; replacements are asked too."""
        import ray

        wanted = sorted(nvenc_candidates(list(names)))
        self.nvenc_probe = sorted(set(self.nvenc_probe) | set(wanted))
        todo = [w for w in self.workers if any(n not in w.info.get("nvenc", {}) for n in wanted)]
        if todo:
            for w, info in zip(todo, ray.get([w.handle.ready.remote(wanted) for w in todo])):
                w.info.setdefault("nvenc", {}).update(info.get("nvenc", {}))

    def nvenc_answers(self) -> list[dict[str, bool]]:
        """Each worker's answer: which NVENC encoders open on its machine (ask_nvenc first)."""
        return [dict(w.info.get("nvenc", {})) for w in self.workers]

    def facts(self, candidates: Iterable[str | None]) -> WorkerFacts:
        """What these workers can do, as plain data for the planner: segments at once over all of
        them, and the NVENC encoders of `candidates` that open on every one."""
        candidates = list(candidates)
        self.ask_nvenc(candidates)
        return WorkerFacts(slots=len(self.workers) * self.segments_per_worker,
                           nvenc=nvenc_everywhere(candidates, self.nvenc_answers()))

    def _actor_options_text(self) -> str:
        o = self._actor_options
        parts = [f"{o['num_cpus']} CPU"] + ([f"{o['num_gpus']} GPU"] if "num_gpus" in o else [])
        return "+".join(parts)

    def _add(self, handle: Any, info: dict[str, Any], slot: int) -> Worker:
        w = Worker(handle, info, slot)
        self.workers.append(w)
        self.events.emit(WorkerReady(worker=w.name, slot=slot, **info))
        return w

    # ------------------------------------------------------------ failures
    def replace(self, dead: Worker) -> Worker | None:
        """Swap a dead worker for a fresh actor; None once the replacement budget is spent."""
        import ray

        self.workers = [w for w in self.workers if w is not dead]
        try:
            ray.kill(dead.handle)
        except Exception:  # already gone
            pass
        self.events.emit(WorkerLost(worker=dead.name, slot=dead.slot, pid=dead.info.get("pid")))
        if self.replacements >= self.max_replacements:
            return None
        self.replacements += 1
        handle = self._new_handle()
        try:
            (info,) = self._wait_ready([handle])
        except VsrError:
            return None
        return self._add(handle, info, dead.slot)

    # ------------------------------------------------------------ end
    def close(self) -> None:
        import ray

        for w in self.workers:
            try:
                ray.kill(w.handle)
            except Exception:
                pass
        self.workers = []

    def __enter__(self) -> "WorkerPool":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def nodes(self) -> list[str]:
        return sorted({w.info["node_id"] for w in self.workers})


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"
