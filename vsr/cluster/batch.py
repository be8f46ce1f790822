"""Many files, one pool of workers: folders in, folders out, skip what is done, one report."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from vsr.cluster.job import run_upscale_job
from vsr.cluster.pool import WorkerPool
from vsr.cluster.runtime import RaySession, stop_requested
from vsr.errors import InternalError, OutputError, UsageError, VsrError
from vsr.job.encoders import nvenc_candidates
from vsr.job.events import BatchDone, BatchStart, Events, FileDone, FileFailed, FileSkipped, FileStart
from vsr.job.existing import existing_output_action
from vsr.job.inputs import BatchItem
from vsr.job.remote import local_copies
from vsr.job.options import JobOptions
from vsr.job.plan import WorkerFacts, plan_job
from vsr.storage.errorlog import internal_error
from vsr.storage.files import write_json_atomic
from vsr.storage.paths import check_paths, default_workdir
from vsr.storage.uri import exists, is_uri, write_bytes

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

    if is_uri(item.input) or is_uri(item.output):
        with local_copies(item.input, item.output) as (src, dst):  # judged on local copies
            return existing_output(BatchItem(src, dst, item.encode, item.codecs), pool, options)
    return existing_output_action(str(item.output), make_plan)


def _check_distinct_outputs(items: list[BatchItem]) -> None:
    """Two inputs mapping to one output would overwrite each other: a usage error up front."""
    seen: dict[Any, Any] = {}
    for it in items:
        if it.not_input:
            continue
        key = str(it.output) if is_uri(it.output) else Path(it.output).absolute()
        if key in seen:
            raise UsageError(f"{seen[key]} and {it.input} both map to {it.output}; "
                             "use a name pattern with {name} or {ext}")
        seen[key] = it.input


def run_batch(items: list[BatchItem], options: JobOptions, *, events: Events | None = None,
              skip_existing: bool = True, report_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Upscale every item with one pool of workers; go on past failures; return the summary.

    summary["failed"] > 0 means at least one file failed (the CLI exits non-zero). A file that
    fails with an unexpected exception (a bug) is failed with exit code 70, its traceback in a
    log file in its work directory, and the batch goes on.
    """
    options = options.validate()
    events = events or Events()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    _check_distinct_outputs(items)
    events.emit(BatchStart(files=len(items)))
    with ExitStack() as stack:
        files = _BatchFiles(items, options, events, stack, skip_existing)
        for n, item in enumerate(items, 1):
            rec, go_on = files.run(n, item)
            results.append(rec)
            if not go_on:
                break
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("done", "skipped", "failed")}
    not_run = len(items) - len(results)
    summary = {"files": len(items), **counts, "not_run": not_run,
               "seconds": round(time.perf_counter() - t0, 3), "results": results}
    summary["failed"] += not_run
    if report_path is not None and is_uri(report_path):
        write_bytes(str(report_path), json.dumps(summary, indent=1, ensure_ascii=False, default=str).encode())
        summary["report"] = str(report_path)
    elif report_path is not None:
        write_json_atomic(report_path, summary)
        summary["report"] = str(report_path)
    events.emit(BatchDone(**{k: v for k, v in summary.items() if k != "results"}))
    return summary


class _BatchFiles:
    """One batch's files run one after the other on one pool of workers, started at the first
    file that needs them."""

    def __init__(self, items: list[BatchItem], options: JobOptions, events: Events, stack: ExitStack,
                 skip_existing: bool) -> None:
        self.of, self.options, self.events, self.stack = len(items), options, events, stack
        self.skip_existing = skip_existing
        self.pool: WorkerPool | None = None

    def run(self, n: int, item: BatchItem) -> tuple[dict[str, Any], bool]:
        """File n's record (its status, and seconds) and whether the batch goes on after it."""
        rec: dict[str, Any] = {"input": str(item.input), "output": str(item.output)}
        t = time.perf_counter()
        go_on = True
        try:
            self._make(n, item, rec)
        except Exception as err:  # noqa: BLE001 - one broken file must not stop the night's batch
            if stop_requested():  # what failed is the stop itself: no further files
                raise KeyboardInterrupt from None
            if not isinstance(err, VsrError):
                err = internal_error(err, self._workdir(item))
            rec.update(status="failed", error=str(err), exit_code=err.exit_code)
            self.events.emit(FileFailed(file=n, of=self.of, **rec))
            log.error("%s: %s", item.input, err)
            # no workers could start: every other file would fail the same way
            go_on = not (self.pool is None and item.failure is None and not isinstance(err, InternalError))
        rec.setdefault("seconds", round(time.perf_counter() - t, 3))
        return rec, go_on

    def _workdir(self, item: BatchItem) -> Path | None:
        """The file's work directory (where its internal error's log goes), if it can be named."""
        try:
            return default_workdir(item.output, item.options_for(self.options).workdir)
        except Exception:  # noqa: BLE001 - the log then goes to the cache directory
            return None

    def _make(self, n: int, item: BatchItem, rec: dict[str, Any]) -> None:
        """Skip, or upscale, one file; its record is updated as it goes; raises when it fails."""
        if item.not_input:
            rec.update(status="skipped", reason=item.not_input)
            self.events.emit(FileSkipped(file=n, of=self.of, **rec))
            return
        if item.failure is not None:
            raise item.failure
        if self.pool is None:
            self.stack.enter_context(RaySession(self.options.address))
            self.pool = self.stack.enter_context(WorkerPool(self.options, self.events))
        if not is_uri(item.output):
            Path(item.output).parent.mkdir(parents=True, exist_ok=True)
        check_paths(item.input, item.output)
        opts = item.options_for(self.options)
        if self.skip_existing and (exists(item.output) if is_uri(item.output) else Path(item.output).exists()):
            action, why = existing_output(item, self.pool, opts)
            if action == "skip":
                rec.update(status="skipped", reason=why)
                self.events.emit(FileSkipped(file=n, of=self.of, **rec))
                return
            if action == "foreign":
                raise OutputError(f"{item.output} exists and {why}; not overwriting it: move it "
                                  "away, or rerun with --redo to replace it")
            rec["redo_reason"] = why
            log.info("%s exists, redoing it: %s", item.output, why)
        self.events.emit(FileStart(file=n, of=self.of, **rec))
        summary = run_upscale_job(item.input, item.output, opts, events=self.events, pool=self.pool)
        rec.update(status="done", frames=summary["frames"], fps=summary["fps"], width=summary["width"],
                   height=summary["height"], segments_reused=summary["segments_reused"])
        self.events.emit(FileDone(file=n, of=self.of, **rec))
