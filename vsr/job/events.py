"""Job progress for people (a tqdm bar in frames) and machines (JSON Lines events on stdout; the
OpenJD progress lines of vsr.job.openjd are another view of the same events).

Every event is a frozen dataclass below; `Events.emit` writes it as one flat JSON object:
"event" (its name) and "time" first, then its fields in the order declared here. A field marked
`omitted_when_none` is left out of the object when it is None (it is there only when it says
something); any other field is always there, null when it has no value. `events_schema()` is
the JSON Schema of that stream, generated from these classes (committed as
docs/events.schema.json). This module does not import Ray: the CLI and the cluster both use it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Protocol, TextIO

EventCallback = Callable[[str, dict[str, Any]], None]

log = logging.getLogger("vsr")

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def omitted_when_none() -> Any:
    """A field that is left out of the event's JSON when it is None (default None)."""
    return dataclasses.field(default=None, metadata={"omitted_when_none": True})


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event: `name` is the "event" value of its JSON object."""

    name: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The event's fields as they appear in its JSON (omitted_when_none ones left out when None)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omitted_when_none"):
                continue
            out[f.name] = value
        return out

    def record(self, when: float | None = None) -> dict[str, Any]:
        """The event's JSON object: "event" and "time" (Unix seconds, to the millisecond) first."""
        return {"event": self.name, "time": round(time.time() if when is None else when, 3), **self.fields()}


# ---------------------------------------------------------------- job events
@dataclass(frozen=True, kw_only=True)
class StalePartRemoved(Event):
    """A hidden partial output of this host whose process is gone was removed before the job."""

    name: ClassVar[str] = "stale_part_removed"
    path: str
    pid: int


@dataclass(frozen=True, kw_only=True)
class InputDamaged(Event):
    """The container lost data and --on-corrupt repeat-previous lets the job go on."""

    name: ClassVar[str] = "input_damaged"
    input: str
    messages: list[str]


@dataclass(frozen=True, kw_only=True)
class JobStart(Event):
    """The input is probed and planned; no frame upscaled yet."""

    name: ClassVar[str] = "job_start"
    input: str
    output: str
    frames: int
    segments: int
    model: str


@dataclass(frozen=True, kw_only=True)
class WorkerReady(Event):
    """A worker actor has loaded its model (at the start, and for each replacement)."""

    name: ClassVar[str] = "worker_ready"
    worker: str
    slot: int
    pid: int
    node_id: str
    host: str
    node_ip: str
    actor_id: str
    model: str
    scale: float
    device: str
    precision: str
    threads: Optional[str]  # the worker's OMP_NUM_THREADS
    nvenc: Optional[dict[str, bool]] = omitted_when_none()


@dataclass(frozen=True, kw_only=True)
class SegmentsPlanned(Event):
    """The segment plan changed after job_start (re-cut for the workers, or a resumed plan)."""

    name: ClassVar[str] = "segments_planned"
    segments: int
    workers: int
    resumed: Optional[bool] = omitted_when_none()


@dataclass(frozen=True, kw_only=True)
class EncoderFallback(Event):
    """The first encoder of a codec list does not open on every worker; a later one is used."""

    name: ClassVar[str] = "encoder_fallback"
    wanted: str
    used: str


@dataclass(frozen=True, kw_only=True)
class SegmentReused(Event):
    """A segment finished by an earlier run of the same job is kept (resume)."""

    name: ClassVar[str] = "segment_reused"
    index: int
    frames: int


@dataclass(frozen=True, kw_only=True)
class SegmentStart(Event):
    """A segment is sent to a worker."""

    name: ClassVar[str] = "segment_start"
    index: int
    frames: int
    worker: str
    pid: Optional[int]
    node_id: Optional[str]
    attempt: int
    start_time: float
    end_time: float


@dataclass(frozen=True, kw_only=True)
class SegmentRetry(Event):
    """A segment failed for a reason a retry can fix and goes back into the queue."""

    name: ClassVar[str] = "segment_retry"
    index: int
    worker: str
    reason: str
    worker_died: bool
    attempt: int


@dataclass(frozen=True, kw_only=True)
class WorkerLost(Event):
    """A worker died; it is killed and, while the budget lasts, replaced."""

    name: ClassVar[str] = "worker_lost"
    worker: str
    slot: int
    pid: Optional[int]


@dataclass(frozen=True, kw_only=True)
class SegmentDone(Event):
    """A segment's file is written and recorded in the manifest."""

    name: ClassVar[str] = "segment_done"
    index: int
    frames: int
    seconds: float
    identical_reused: int
    worker: str
    pid: Optional[int]
    node_id: Optional[str]
    done_frames: int


@dataclass(frozen=True, kw_only=True)
class Assemble(Event):
    """Every segment is done; the output is being muxed and verified."""

    name: ClassVar[str] = "assemble"
    segments: int
    output: str


@dataclass(frozen=True, kw_only=True)
class JobDone(Event):
    """The output verified and was renamed into place: the job's summary."""

    name: ClassVar[str] = "job_done"
    input: str
    output: str
    model: str
    width: int
    height: int
    frames: int
    source_frames: int
    segments: int
    segments_reused: int
    segments_computed: int
    segments_handed_over: int
    segments_warmed_up: int
    retries: int
    workers_lost: int
    nodes: list[str]
    seconds: float
    fps: Optional[float]
    repeated_frames: list[dict[str, Any]]
    identical_frames_reused: int
    tiles: int
    tiles_reused: int
    picture: dict[str, Any]
    encode: dict[str, Any]
    workdir: str
    container_damage: list[str]
    settings_fingerprint: str
    output_tag: str
    verified: bool


@dataclass(frozen=True, kw_only=True)
class JobFailed(Event):
    """The command failed or was interrupted; the last event."""

    name: ClassVar[str] = "job_failed"
    error: str
    exit_code: int
    kind: str


# ---------------------------------------------------------------- batch events
@dataclass(frozen=True, kw_only=True)
class BatchStart(Event):
    """The list of files is known and checked."""

    name: ClassVar[str] = "batch_start"
    files: int


@dataclass(frozen=True, kw_only=True)
class FileEvent(Event):
    """Base of the events about one file of a batch: its place in the batch and its paths."""

    file: int
    of: int
    input: str
    output: str


@dataclass(frozen=True, kw_only=True)
class FileRunEvent(FileEvent):
    """Base of the events about a file's job: why an earlier output is redone, when it is."""

    redo_reason: Optional[str] = omitted_when_none()


@dataclass(frozen=True, kw_only=True)
class FileSkipped(FileEvent):
    """A file is not made (its output is done, or it is a vsr output itself)."""

    name: ClassVar[str] = "file_skipped"
    status: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class FileStart(FileRunEvent):
    """A file's job starts."""

    name: ClassVar[str] = "file_start"


@dataclass(frozen=True, kw_only=True)
class FileDone(FileRunEvent):
    """A file's output verified."""

    name: ClassVar[str] = "file_done"
    status: str
    frames: int
    fps: Optional[float]
    width: int
    height: int
    segments_reused: int


@dataclass(frozen=True, kw_only=True)
class FileFailed(FileRunEvent):
    """A file failed; the batch goes on with the next one."""

    name: ClassVar[str] = "file_failed"
    status: str
    error: str
    exit_code: int


@dataclass(frozen=True, kw_only=True)
class BatchDone(Event):
    """The batch ended."""

    name: ClassVar[str] = "batch_done"
    files: int
    done: int
    skipped: int
    failed: int
    not_run: int
    seconds: float
    report: Optional[str] = omitted_when_none()


EVENT_TYPES: tuple[type[Event], ...] = (
    StalePartRemoved, InputDamaged, JobStart, WorkerReady, SegmentsPlanned, EncoderFallback,
    SegmentReused, SegmentStart, SegmentRetry, WorkerLost, SegmentDone, Assemble, JobDone, JobFailed,
    BatchStart, FileSkipped, FileStart, FileDone, FileFailed, BatchDone,
)


# ---------------------------------------------------------------- JSON Schema of the stream
def _type_schema(hint: Any) -> dict[str, Any]:
    """The JSON Schema of one field type: str, int, float, bool, list[...], dict[str, ...], Any,
    Optional[...] (null allowed)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {hint!r}: only Optional[X]")
        schema = _type_schema(inner[0])
        if type(None) not in args:
            return schema
        if isinstance(schema.get("type"), str):
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        values = _type_schema(args[1])
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if hint in simple:
        return {"type": simple[hint]}
    raise TypeError(f"unsupported event field type {hint!r}")


def _event_schema(cls: type[Event]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {"event": {"const": cls.name}, "time": {"type": "number"}}
    required = ["event", "time"]
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.metadata.get("omitted_when_none"):
            # never null in the JSON: absent instead
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        else:
            required.append(f.name)
        properties[f.name] = _type_schema(hint)
    return {"type": "object", "description": " ".join((cls.__doc__ or "").split()),
            "properties": properties, "required": required}


def events_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one line of the --json event stream, from EVENT_TYPES."""
    names = [cls.name for cls in EVENT_TYPES]
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "vsr --json events",
        "description": "One line of `vsr upscale|run|batch --json`: a flat object, \"event\" and \"time\" "
                       "first. Readers should ignore keys they do not know. Generated from "
                       "vsr/job/events.py; see docs/events.md.",
        "type": "object",
        "properties": {"event": {"enum": names}, "time": {"type": "number"}},
        "required": ["event", "time"],
        "allOf": [{"if": {"properties": {"event": {"const": n}}, "required": ["event"]},
                   "then": {"$ref": f"#/$defs/{n}"}} for n in names],
        "$defs": {cls.name: _event_schema(cls) for cls in EVENT_TYPES},
    }


def events_schema_text() -> str:
    """events_schema() as committed in docs/events.schema.json (`python -m vsr.job.events` prints it)."""
    return json.dumps(events_schema(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- the stream
class ProgressView(Protocol):
    """A way of showing a job's progress: fed the same events as the JSON stream, and the frames
    done of the file being upscaled (opened once per file, set as segments finish, closed)."""

    def event(self, event: Event) -> None: ...

    def open(self, total_frames: int, desc: str) -> None: ...

    def set(self, frames_done: int) -> None: ...

    def close(self) -> None: ...


class FrameBar:
    """The tqdm bar in frames on stderr, for a person at a terminal."""

    def __init__(self) -> None:
        self._bar: Any = None

    def event(self, event: Event) -> None:
        pass  # the bar shows frames only; the events are for machines

    def open(self, total_frames: int, desc: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total_frames, desc=desc, unit="frame", dynamic_ncols=True,
                         file=sys.stderr, smoothing=0.1)

    def set(self, frames_done: int) -> None:
        if self._bar is not None and frames_done > self._bar.n:
            self._bar.update(min(frames_done, self._bar.total) - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Events:
    """Fan-out of job events: optional JSON Lines stream, optional progress view, optional callback.

    `progress` is True for the tqdm bar (FrameBar), or a ProgressView (the OpenJD progress lines
    of vsr.job.openjd), or False for none. The callback gets each event's name and its JSON
    fields (Event.fields()).
    """

    def __init__(self, *, json_stream: TextIO | None = None, progress: bool | ProgressView = False,
                 callback: EventCallback | None = None):
        self.json_stream = json_stream
        self.view: ProgressView | None = FrameBar() if progress is True else (progress or None)
        self.callback = callback

    @property
    def progress(self) -> bool:
        """Whether a view shows frame progress (the scheduler then asks workers how far they are)."""
        return self.view is not None

    def emit(self, event: Event) -> None:
        """Write one event (a line of JSON on the stream), show it, and hand it to the callback."""
        if self.json_stream is not None:
            try:
                self.json_stream.write(json.dumps(event.record(), default=str, ensure_ascii=False) + "\n")
                self.json_stream.flush()
            except OSError as err:
                # the reader went away (a closed pipe, a hung-up terminal): the job itself goes on
                # or stops as it would have; losing the event stream must not change its outcome
                self.json_stream = None
                log.warning("event stream closed (%s); events no longer written", err.strerror or err)
        if self.view is not None:
            self.view.event(event)
        if self.callback is not None:
            self.callback(event.name, event.fields())

    # ------------------------------------------------------------ frame progress of one file
    def bar_open(self, total_frames: int, desc: str) -> None:
        if self.view is not None:
            self.view.open(total_frames, desc)

    def bar_set(self, frames_done: int) -> None:
        if self.view is not None:
            self.view.set(frames_done)

    def bar_close(self) -> None:
        if self.view is not None:
            self.view.close()


if __name__ == "__main__":
    sys.stdout.write(events_schema_text())
