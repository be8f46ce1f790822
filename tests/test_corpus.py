"""The corpus sweep (benchmarks/corpus.py): every shared clip upscaled, verified by vsr and checked
by check_video.py, or refused before any work with a reason a user would accept."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus.py"

# Files whose refusal is the right answer for a user, and why. Nothing else may be refused: a
# refusal of a file that players and editors handle is a failure of vsr, however well worded.
ALLOWED_REFUSALS = {
    # The H.264 payload is damaged (FFmpeg flags 27 of 100 frames corrupt): upscaling it would
    # carry garbage into the output. The message names --on-corrupt repeat-previous, and the
    # sweep's rerun of the file with that flag (a row of its own) must then give a verified output.
    "empty_edit_5s_yuv444.mp4",
}

# Seconds the whole sweep may take; rows it leaves undone are failures. Measured on 2 shared
# cores (AMD EPYC): 22 min at load average 2-10, 41 min at 10-28; most of it is the lanczos
# resize and the encoding of the large clips' 2x output (two clips alone take a third).
SWEEP_BUDGET_S = 3600


@functools.cache
def load_sweep():
    """benchmarks/corpus.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("corpus_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def events(*names: str, **end: object) -> list[dict]:
    """A file's event list: the names in order, the last one with `end`'s fields."""
    out = [{"event": n, "time": float(i)} for i, n in enumerate(names)]
    out[-1].update(end)
    return out


def test_classify_tells_refusals_from_failures():
    sweep = load_sweep()
    refused = events("file_start", "file_failed", error="corrupt frame", exit_code=3)
    assert sweep.classify(refused) == ("refused", "corrupt frame")
    # the same error once a segment has started is no refusal: the refusal must come before work
    late = events("file_start", "job_start", "segment_start", "file_failed", error="bad", exit_code=3)
    assert sweep.classify(late)[0] == "FAILED"
    # a crash while planning (an internal error, exit 1) is a failure, not a refusal
    crash = events("file_start", "file_failed", error="internal error: KeyError: 'x'", exit_code=1)
    assert sweep.classify(crash)[0] == "FAILED"
    assert sweep.classify(events("file_start", "segment_start", "file_done"))[0] == "done"


def test_batch_files_splits_a_batch_stream_per_file():
    sweep = load_sweep()
    stream = [
        {"event": "batch_start", "time": 0}, {"event": "file_start", "time": 1, "input": "a"},
        {"event": "segment_start", "time": 2}, {"event": "file_done", "time": 5, "input": "a"},
        {"event": "file_failed", "time": 6, "input": "b", "error": "no workers", "exit_code": 1},
    ]
    lines = [json.dumps(e) for e in stream] + ["a stray print on stdout"]
    files = dict(sweep.batch_files(lines))
    assert [e["event"] for e in files["a"]] == ["file_start", "segment_start", "file_done"]
    assert sweep.event_seconds(files["a"]) == 4
    assert [e["event"] for e in files["b"]] == ["file_failed"]  # failed before its file_start


def test_runs_share_a_batch_unless_flags_or_names_differ():
    sweep = load_sweep()
    sources = [Path(n) for n in ("a.mp4", "b.mkv", "c.webm", "empty_edit_5s_yuv444.mp4")]
    groups = sweep.group_rows(sweep.plan_rows(sources, variants=True))
    names = {(g.flags, g.pattern): sorted(r.file for r in g.rows) for g in groups}
    fast = ("--preset", "ultrafast")
    # every file into .mkv in one batch (one Ray start), .mkv inputs too
    assert names[(fast, "{name}.mkv")] == ["a.mp4", "b.mkv", "c.webm", "empty_edit_5s_yuv444.mp4"]
    assert names[("--on-corrupt", "repeat-previous", *fast), "{name}.mkv"] == ["empty_edit_5s_yuv444.mp4"]
    assert names[(fast, "{stem}{ext}")] == ["a.mp4", "empty_edit_5s_yuv444.mp4"]
    assert names[((), "{stem}{ext}")] == ["c.webm"]  # WebM: the encoders' own speed
    assert len(groups) == 4


@pytest.mark.corpus
def test_corpus_sweep(corpus_dir):
    """Every everyday clip and corpus file into .mkv: ok (vsr verified it, check_video.py passed),
    or refused before work only for ALLOWED_REFUSALS; their reruns with the suggested flag are ok."""
    shared = corpus_dir.parents[1]
    # the sweep stops its own vsr processes at --timeout (a killed script would orphan them)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", "--shared", str(shared),
                           "--timeout", str(SWEEP_BUDGET_S)],
                          capture_output=True, text=True, timeout=SWEEP_BUDGET_S + 300)
    print(proc.stderr)  # one line per row as it ended: shown when the test fails
    assert proc.stdout.strip(), proc.stderr[-2000:]
    rows = json.loads(proc.stdout)["rows"]
    sources = [p for p in corpus_dir.iterdir() if p.suffix != ".md"] + \
        [p for pat in ("*.mp4", "*.webm", "*.mov") for p in shared.joinpath("media").glob(pat)]
    plain = {r["file"] for r in rows if not r["flags"]}
    assert plain == {p.name for p in sources}, "the sweep left files out"

    wrong = [f"{r['file']} {' '.join(r['flags'])}: {r['result']}: {r['reason']}" for r in rows
             if not (r["result"] == "ok"
                     or (r["result"] == "refused" and not r["flags"] and r["file"] in ALLOWED_REFUSALS))]
    assert not wrong, "\n".join(wrong)
    reruns = {r["file"] for r in rows if r["flags"]}
    refused = {r["file"] for r in rows if r["result"] == "refused"}
    assert refused <= reruns, f"refused without a rerun row: {refused - reruns}"
