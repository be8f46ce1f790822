"""Many files, one pool of workers: folders in, folders out, skip what is done, one report."""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from vsr.cluster.job import run_upscale_job
from vsr.cluster.pool import WorkerPool
from vsr.cluster.runtime import RaySession, stop_requested
from vsr.errors import OutputError, UsageError, VsrError
from vsr.job.encoders import nvenc_candidates
from vsr.job.events import BatchDone, BatchStart, Events, FileDone, FileFailed, FileSkipped, FileStart
from vsr.job.existing import existing_output_action
from vsr.job.inputs import BatchItem
from vsr.job.options import JobOptions
from vsr.job.plan import WorkerFacts, plan_job
from vsr.storage.files import write_json_atomic
from vsr.storage.paths import check_paths

log = logging.getLogger("vsr.cluster")

def existing_output(item: BatchItem, pool: WorkerPool, options: JobOptions) -> tuple[str, str]:
    """What to do with item's existing output (vsr.job.existing.existing_output_action), judged
    with the plan these workers would run: the encoder they all open, or another of the file's
    encoders (an output made with NVENC on workers that had it is as good)."""
    def make_plan():
        candidates = options.encoders()
        assumed = WorkerFacts(slots=1, nvenc=nvenc_candidates(candidates))
        plan = plan_job(item.input, item.output, options.replace(scan=False), facts=assumed)
        pool.ask_nvenc(candidates)
        return plan.for_workers(assumed, pool.nvenc_answers())

    return existing_output_action(str(item.output), make_plan)


def _check_distinct_outputs(items: list[BatchItem]) -> None:
    """Two inputs mapping to one output would overwrite each other: a usage error up front."""
    seen: dict[Path, Path] = {}
    for it in items:
        if it.not_input:
            continue
        key = it.output.absolute()
        if key in seen:
            raise UsageError(f"{seen[key]} and {it.input} both map to {it.output}; "
                             "use a name pattern with {name} or {ext}")
        seen[key] = it.input


def run_batch(items: list[BatchItem], options: JobOptions, *, events: Events | None = None,
              skip_existing: bool = True, report_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Upscale every item with one pool of workers; go on past failures; return the summary.

    summary["failed"] > 0 means at least one file failed (the CLI exits non-zero).
    """
    options = options.validate()
    events = events or Events()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    _check_distinct_outputs(items)
    events.emit(BatchStart(files=len(items)))
    with ExitStack() as stack:
        pool: WorkerPool | None = None
        for n, item in enumerate(items, 1):
            rec: dict[str, Any] = {"input": str(item.input), "output": str(item.output)}
            t = time.perf_counter()
            try:
                if item.not_input:
                    rec.update(status="skipped", reason=item.not_input)
                    events.emit(FileSkipped(file=n, of=len(items), **rec))
                    results.append(rec)
                    continue
                if item.failure is not None:
                    raise item.failure
                if pool is None:
                    stack.enter_context(RaySession(options.address))
                    pool = stack.enter_context(WorkerPool(options, events))
                item.output.parent.mkdir(parents=True, exist_ok=True)
                check_paths(item.input, item.output)
                opts = item.options_for(options)
                if skip_existing and item.output.exists():
                    action, why = existing_output(item, pool, opts)
                    if action == "skip":
                        rec.update(status="skipped", reason=why)
                        events.emit(FileSkipped(file=n, of=len(items), **rec))
                        results.append(rec)
                        continue
                    if action == "foreign":
                        raise OutputError(f"{item.output} exists and {why}; not overwriting it: move it "
                                          "away, or rerun with --redo to replace it")
                    rec["redo_reason"] = why
                    log.info("%s exists, redoing it: %s", item.output, why)
                events.emit(FileStart(file=n, of=len(items), **rec))
                summary = run_upscale_job(item.input, item.output, opts, events=events, pool=pool)
                rec.update(status="done", frames=summary["frames"], fps=summary["fps"],
                           width=summary["width"], height=summary["height"],
                           segments_reused=summary["segments_reused"])
                events.emit(FileDone(file=n, of=len(items), **rec))
            except VsrError as err:
                if stop_requested():  # what failed is the stop itself: no further files
                    raise KeyboardInterrupt from None
                rec.update(status="failed", error=str(err), exit_code=err.exit_code)
                events.emit(FileFailed(file=n, of=len(items), **rec))
                log.error("%s: %s", item.input, err)
                if pool is None and item.failure is None:  # no workers could start: all would fail
                    results.append(rec)
                    break
            except Exception as err:  # noqa: BLE001 - one broken file must not stop the night's batch
                if stop_requested():
                    raise KeyboardInterrupt from None
                rec.update(status="failed", error=f"internal error: {type(err).__name__}: {err}", exit_code=1)
                events.emit(FileFailed(file=n, of=len(items), **rec))
                log.error("%s: %s", item.input, rec["error"])
            finally:
                rec.setdefault("seconds", round(time.perf_counter() - t, 3))
            results.append(rec)
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("done", "skipped", "failed")}
    not_run = len(items) - len(results)
    summary = {"files": len(items), **counts, "not_run": not_run,
               "seconds": round(time.perf_counter() - t0, 3), "results": results}
    summary["failed"] += not_run
    if report_path is not None:
        write_json_atomic(report_path, summary)
        summary["report"] = str(report_path)
    events.emit(BatchDone(**{k: v for k, v in summary.items() if k != "results"}))
    return summary
