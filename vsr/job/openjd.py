"""Job progress as Open Job Description stdout messages, for render farms that run vsr as a task.

An OpenJD session (openjd-sessions: `openjd run`, AWS Deadline Cloud's worker agent) reads the
task's stdout and takes a line `openjd_progress: <0..100>` as the task's progress,
`openjd_status: <text>` as its status message and `openjd_fail: <text>` as its failure message
(each a whole line, the prefix at its start, one space after the colon). OpenJDProgress is a
view of the job's events (vsr.job.events.ProgressView), like the tqdm bar: it turns the same
events and frame counts into such lines. Farms keep every line of a task's log and some stop a
task whose log grows too large, so it writes a progress line only when the whole percent has
grown and `interval` seconds have passed since the last one (plus 100 at the end), and a status
line per phase of a file (started, assembling, done, failed), never per frame or segment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Mapping, TextIO

from vsr.job.events import (
    Assemble, BatchDone, BatchStart, Event, FileDone, FileFailed, FileSkipped, FileStart, JobDone,
    JobFailed, JobStart, SegmentRetry, WorkerLost,
)

# openjd-sessions sets this for every action it runs (its Session exports it as public API)
SESSION_ENV = "OPENJD_SESSION_WORKING_DIR"
# share of a file's progress for its frames; the rest is assembly and verification
FRAMES_SHARE = 0.95
DEFAULT_INTERVAL_S = 5.0
STATUS_MAX_CHARS = 200


def in_openjd_session(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs as an action of an OpenJD session."""
    return bool((os.environ if environ is None else environ).get(SESSION_ENV))


def _one_line(text: str) -> str:
    """Status text OpenJD takes whole: one line (the message ends at the newline), not empty, short."""
    line = " ".join(str(text).split()) or "-"
    return line if len(line) <= STATUS_MAX_CHARS else line[:STATUS_MAX_CHARS - 3] + "..."


class OpenJDProgress:
    """The OpenJD view of a job (`vsr upscale`) or batch (`vsr batch`, `vsr run`): progress over
    the whole command in percent, and a status line per phase of each file."""

    def __init__(self, stream: TextIO, *, interval: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.file, self.files = 1, 1  # the file being made, of how many (1 of 1 outside a batch)
        self.total_frames = 0
        self.shown: int | None = None  # the last percent written
        self.shown_at = 0.0

    # ------------------------------------------------------------ lines
    def _write(self, kind: str, text: str) -> None:
        try:
            self.stream.write(f"openjd_{kind}: {text}\n")
            self.stream.flush()
        except OSError:
            pass  # the reader is gone: the job's outcome must not depend on its log

    def status(self, text: str) -> None:
        self._write("status", _one_line(text))

    def _progress(self, fraction_of_file: float, *, force: bool = False) -> None:
        """The whole command's percent, from the current file's fraction done; throttled."""
        fraction = (self.file - 1 + min(max(fraction_of_file, 0.0), 1.0)) / max(self.files, 1)
        percent = int(fraction * 100 + 1e-9)
        now = self.clock()
        if self.shown is not None and percent <= self.shown:
            return
        if not force and self.shown is not None and now - self.shown_at < self.interval:
            return
        self.shown, self.shown_at = percent, now
        self._write("progress", str(percent))

    # ------------------------------------------------------------ ProgressView
    def open(self, total_frames: int, desc: str) -> None:
        self.total_frames = max(int(total_frames), 0)
        self._progress(0.0, force=self.shown is None)

    def set(self, frames_done: int) -> None:
        if self.total_frames:
            self._progress(FRAMES_SHARE * frames_done / self.total_frames)

    def close(self) -> None:
        self.total_frames = 0

    def event(self, event: Event) -> None:
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    # ------------------------------------------------------------ events
    def _batch_start(self, e: BatchStart) -> None:
        self.files = max(e.files, 1)
        self.status(f"{e.files} file(s) to make")
        self._progress(0.0, force=True)

    def _file_start(self, e: FileStart) -> None:
        self.file, self.files = e.file, e.of
        self.status(f"file {e.file} of {e.of}: {Path(e.input).name}")

    def _file_end(self, e: FileDone | FileFailed | FileSkipped) -> None:
        self.file, self.files = e.file, e.of
        what = {FileDone: "done", FileSkipped: "skipped", FileFailed: "failed"}[type(e)]
        why = getattr(e, "error", None) or getattr(e, "reason", None)
        self.status(f"file {e.file} of {e.of} {what}: {Path(e.output).name}" + (f" ({why})" if why else ""))
        self._progress(1.0, force=e.file == e.of)

    def _job_start(self, e: JobStart) -> None:
        self.status(f"upscaling {Path(e.input).name}: {e.frames} frames, {e.segments} segment(s), model {e.model}")

    def _assemble(self, e: Assemble) -> None:
        self._progress(FRAMES_SHARE)
        self.status(f"assembling and verifying {Path(e.output).name}")

    def _job_done(self, e: JobDone) -> None:
        if self.files == 1:
            self._progress(1.0, force=True)
        self.status(f"verified {Path(e.output).name}: {e.width}x{e.height}, {e.frames} frames")

    def _job_failed(self, e: JobFailed) -> None:
        self.status(f"failed (exit code {e.exit_code}): {e.error}")
        self._write("fail", _one_line(e.error))

    def _batch_done(self, e: BatchDone) -> None:
        self.file = self.files
        self._progress(1.0, force=True)
        self.status(f"{e.done} done, {e.skipped} skipped, {e.failed} failed")
        if e.failed:
            self._write("fail", f"{e.failed} of {e.files} file(s) failed")

    def _retry(self, e: SegmentRetry) -> None:
        self.status(f"segment {e.index} retried (attempt {e.attempt}): {e.reason}")

    def _worker_lost(self, e: WorkerLost) -> None:
        self.status(f"worker {e.worker} lost; its segments run again")

    _HANDLERS: dict[type, Callable[["OpenJDProgress", Event], None]] = {
        BatchStart: _batch_start, FileStart: _file_start, FileDone: _file_end, FileFailed: _file_end,
        FileSkipped: _file_end, JobStart: _job_start, Assemble: _assemble, JobDone: _job_done,
        JobFailed: _job_failed, BatchDone: _batch_done, SegmentRetry: _retry, WorkerLost: _worker_lost,
    }
