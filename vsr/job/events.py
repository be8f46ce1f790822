"""Job progress for people (a tqdm bar in frames) and machines (JSON Lines events on stdout)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable, TextIO

EventCallback = Callable[[str, dict[str, Any]], None]

log = logging.getLogger("vsr")


class Events:
    """Fan-out of job events: optional JSON Lines stream, optional tqdm bar, optional callback.

    Event names: job_start, worker_ready, segments_planned, segment_reused, segment_start, segment_done,
    segment_retry, worker_lost, stale_part_removed, assemble, job_done, job_failed (batch adds
    file_start, with redo_reason when an existing output is made again, file_done, file_skipped,
    file_failed, batch_done). Every event is a flat JSON object with
    "event" and "time" keys.
    """

    def __init__(self, *, json_stream: TextIO | None = None, progress: bool = False,
                 callback: EventCallback | None = None):
        self.json_stream = json_stream
        self.progress = progress
        self.callback = callback
        self._bar = None

    def emit(self, event: str, **fields: Any) -> None:
        if self.json_stream is not None:
            rec = {"event": event, "time": round(time.time(), 3), **fields}
            try:
                self.json_stream.write(json.dumps(rec, default=str, ensure_ascii=False) + "\n")
                self.json_stream.flush()
            except OSError as err:
                # the reader went away (a closed pipe, a hung-up terminal): the job itself goes on
                # or stops as it would have; losing the event stream must not change its outcome
                self.json_stream = None
                log.warning("event stream closed (%s); events no longer written", err.strerror or err)
        if self.callback is not None:
            self.callback(event, fields)

    # ------------------------------------------------------------ frame progress bar
    def bar_open(self, total_frames: int, desc: str) -> None:
        if not self.progress:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total_frames, desc=desc, unit="frame", dynamic_ncols=True,
                         file=sys.stderr, smoothing=0.1)

    def bar_set(self, frames_done: int) -> None:
        if self._bar is not None and frames_done > self._bar.n:
            self._bar.update(min(frames_done, self._bar.total) - self._bar.n)

    def bar_close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
