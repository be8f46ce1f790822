"""The typed events: their JSON shape (what --json readers see) and the schema that checks it."""

from __future__ import annotations

import io
import json

import pytest

from conftest import event_problems
from vsr.job.events import (EVENT_TYPES, Events, FileDone, JobFailed, SegmentsPlanned, WorkerLost, WorkerReady,
                            events_schema)


def lines(*events) -> list[dict]:
    stream = io.StringIO()
    sink = Events(json_stream=stream)
    for event in events:
        sink.emit(event)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_is_flat_with_event_and_time_first_then_the_fields_in_order():
    (rec,) = lines(JobFailed(error="x: no such file", exit_code=3, kind="InputError"))
    assert list(rec) == ["event", "time", "error", "exit_code", "kind"]
    assert rec["event"] == "job_failed" and isinstance(rec["time"], float)
    assert rec["time"] == round(rec["time"], 3)


def test_optional_fields_are_left_out_or_null_as_before():
    planned, resumed, lost = lines(SegmentsPlanned(segments=4, workers=2),
                                   SegmentsPlanned(segments=3, workers=2, resumed=True),
                                   WorkerLost(worker="w0@h:1", slot=0, pid=None))
    assert "resumed" not in planned and resumed["resumed"] is True
    assert lost["pid"] is None  # always there, null when the worker never said
    done = FileDone(file=1, of=2, input="a.mp4", output="b.mp4", redo_reason="settings changed", status="done",
                    frames=10, fps=None, width=4, height=2, segments_reused=0)
    (rec,) = lines(done)
    assert list(rec)[2:] == ["file", "of", "input", "output", "redo_reason", "status", "frames", "fps", "width",
                             "height", "segments_reused"]
    without = lines(FileDone(**{**done.fields(), "redo_reason": None}))[0]
    assert "redo_reason" not in without and without["fps"] is None


def test_callback_gets_the_name_and_the_json_fields():
    seen = []
    Events(callback=lambda name, fields: seen.append((name, fields))).emit(SegmentsPlanned(segments=2, workers=1))
    assert seen == [("segments_planned", {"segments": 2, "workers": 1})]


def test_schema_rejects_what_the_events_never_write():
    ready = dict(event="worker_ready", time=1.5, worker="w0@h:1", slot=0, pid=12, node_id="n", host="h",
                 node_ip="127.0.0.1", actor_id="a", model="bicubic", scale=2.0, device="cpu",
                 precision="fp32", threads=None)
    assert event_problems(ready) == []
    assert event_problems({**ready, "nvenc": {"h264_nvenc": False}}) == []
    assert event_problems({**ready, "nvenc": None})  # omitted when None, never null
    assert event_problems({**ready, "slot": "0"})
    assert event_problems({k: v for k, v in ready.items() if k != "threads"})
    assert event_problems({**ready, "event": "worker_readied"})
    assert event_problems({"time": 1.0, "event": "batch_start", "files": 1})  # "event" first


def test_every_event_type_has_a_schema_entry_matching_its_fields():
    import dataclasses

    defs = events_schema()["$defs"]
    for cls in EVENT_TYPES:
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(defs[cls.name]["properties"]) == ["event", "time", *names]


def test_an_event_with_a_field_it_does_not_have_is_refused():
    with pytest.raises(TypeError):
        WorkerReady(worker="w", slot=0, pid=1, node_id="n", host="h", node_ip="i", actor_id="a", model="m",
                    scale=2.0, device="cpu", precision="fp32", threads=None, gpu="0")
