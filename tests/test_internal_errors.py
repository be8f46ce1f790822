"""No traceback, ever: a bug is one line on stderr, exit 70, its traceback in a log file.

The failures are real exceptions raised where VSR_FAULT asks (vsr/faults.py): while planning,
in a real Ray worker process, and in assembly after the output verified under its temporary
name. Nothing is mocked: the real CLI runs on a real clip with a real embedded Ray.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import validated_events
from vsr.errors import InternalError
from vsr.faults import FAULT_ENV, maybe_fail
from vsr.storage.errorlog import internal_error, write_error_log

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "media" / "bbb_176x144_mpeg4part2.mp4"  # 15 frames, no audio
LANCZOS = ["-m", "lanczos", "--outscale", "2", "--preset", "ultrafast"]
ONE_LINE = re.compile(r"^vsr: internal error: RuntimeError: injected fault at (\w+) \(details: (.+\.log)\)$")


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A copy of the tiny clip in src/ (its bytes and mtime recorded), an output path in out/, and
    a private cache directory (where logs without a work directory go)."""
    monkeypatch.setenv("VSR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "reel.mp4"
    shutil.copy2(TINY, src)
    before = (src.read_bytes(), src.stat().st_mtime_ns)
    out = tmp_path / "out" / "reel_x2.mkv"

    def input_untouched() -> bool:
        return (src.read_bytes(), src.stat().st_mtime_ns) == before and os.listdir(src.parent) == ["reel.mp4"]

    return src, out, input_untouched


def assert_nothing_under_the_output(out: Path) -> None:
    """No output and no hidden partial output: only the work directory is in the output folder."""
    assert not out.exists()
    assert sorted(os.listdir(out.parent)) == [f".{out.name}.vsr-work"]


def assert_logged(log: str, point: str, workdir: Path) -> str:
    path = Path(log)
    assert path.parent == workdir, f"log {path} is not in the job's work directory {workdir}"
    text = path.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and f"RuntimeError: injected fault at {point}" in text
    return text


def test_fault_points_raise_only_when_named(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    maybe_fail("plan")  # unset: nothing happens
    monkeypatch.setenv(FAULT_ENV, "worker, assemble")
    maybe_fail("plan")
    with pytest.raises(RuntimeError, match="^injected fault at assemble$"):
        maybe_fail("assemble")
    with pytest.raises(ValueError):
        maybe_fail("nowhere")  # a misspelt point in vsr's code fails loudly


def test_error_log_goes_to_the_cache_when_there_is_no_work_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a-file").write_text("x")
    try:
        {}["missing"]
    except KeyError as err:
        failure = internal_error(err)
        blocked = write_error_log(err, tmp_path / "a-file" / "sub")  # a file where the folder would be
    assert isinstance(failure, InternalError) and failure.exit_code == 70
    assert str(failure) == f"internal error: KeyError: 'missing' (details: {failure.log_path})"
    assert Path(failure.log_path).parent == tmp_path / "cache" / "logs"
    text = Path(failure.log_path).read_text()
    assert "Traceback" in text and '{}["missing"]' in text
    assert blocked is not None and blocked.parent == tmp_path / "cache" / "logs"
    assert internal_error(failure) is failure  # not wrapped twice


def test_planning_bug_is_one_line_exit_70_and_a_log_in_the_work_directory(job, monkeypatch, capsys):
    """In-process vsr.cli.main: the fault is raised in plan_job, before Ray starts."""
    from vsr.cli import main

    src, out, input_untouched = job
    monkeypatch.setenv(FAULT_ENV, "plan")
    assert main(["-q", "upscale", str(src), str(out), *LANCZOS]) == 70
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and (m := ONE_LINE.match(lines[0])), captured.err
    assert m.group(1) == "plan" and "Traceback" not in captured.err + captured.out
    assert_logged(m.group(2), "plan", out.parent / f".{out.name}.vsr-work")
    assert_nothing_under_the_output(out)
    assert input_untouched()

    assert main(["upscale", str(src), str(out), *LANCZOS, "--json"]) == 70  # the same, as an event
    captured = capsys.readouterr()
    (failed,) = validated_events(captured.out)
    assert failed["event"] == "job_failed" and failed["kind"] == "internal" and failed["exit_code"] == 70
    assert captured.err.splitlines() == [f"vsr: {failed['error']}"]


def test_bug_without_a_job_logs_into_the_cache(job, monkeypatch, capsys):
    """vsr run --dry-run plans without a work directory: the log goes to the cache's logs/."""
    from vsr.cli import main

    src, out, input_untouched = job
    spec = src.parent.parent / "job.toml"
    spec.write_text(f'[job]\ninputs = ["{src}"]\noutput_dir = "{out.parent}"\n'
                    '[model]\nname = "lanczos"\noutscale = 2\n', encoding="utf-8")
    monkeypatch.setenv(FAULT_ENV, "plan")
    assert main(["run", str(spec), "--dry-run"]) == 70
    (line,) = capsys.readouterr().err.splitlines()
    m = ONE_LINE.match(line)
    assert m and Path(m.group(2)).parent == Path(os.environ["VSR_CACHE"]) / "logs"
    assert "injected fault at plan" in Path(m.group(2)).read_text()
    assert input_untouched() and not out.exists()


def test_assembly_bug_in_a_real_cli_process_leaves_no_output_and_no_traceback(job):
    """`python -m vsr.cli upscale --json` with the fault after the output verified under its
    temporary name: one line on stderr, exit 70, the temporary file gone, the input as it was."""
    src, out, input_untouched = job
    env = dict(os.environ, **{FAULT_ENV: "assemble"})
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", str(src), str(out), *LANCZOS, "--json"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 70, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and (m := ONE_LINE.match(lines[0])), r.stderr[-3000:]
    assert m.group(1) == "assemble" and "Traceback" not in r.stderr
    events = validated_events(r.stdout)
    names = [e["event"] for e in events]
    assert names[0] == "job_start" and names[-2:] == ["assemble", "job_failed"], names
    assert events[-1]["kind"] == "internal" and events[-1]["exit_code"] == 70
    assert events[-1]["error"] == lines[0].removeprefix("vsr: ")
    workdir = out.parent / f".{out.name}.vsr-work"
    assert "in assemble" in assert_logged(m.group(2), "assemble", workdir)
    assert_nothing_under_the_output(out)
    assert input_untouched()
    assert any(workdir.glob("seg_*"))  # the finished segments stay for the rerun


def test_worker_bug_happens_in_the_worker_and_fails_the_job_in_one_line(job, monkeypatch, capfd):
    """The fault is raised inside the Ray worker process (it inherits VSR_FAULT); when its
    retries are spent the job fails with exit 7 and one line, the worker's traceback in a log."""
    from vsr.cli import main

    src, out, input_untouched = job
    monkeypatch.setenv(FAULT_ENV, "worker")
    assert main(["upscale", str(src), str(out), *LANCZOS, "--max-retries", "1", "--json"]) == 7
    captured = capfd.readouterr()  # file descriptors: Ray's own output would land there too
    assert "Traceback" not in captured.err + captured.out, captured.err[-3000:]
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err[-3000:]
    m = re.match(r"^vsr: error: segment 0 \(.+\) failed after 2 attempts: RuntimeError: injected fault at worker "
                 r"\(details: (.+\.log)\)$", lines[0])
    assert m, lines
    events = validated_events(captured.out)
    retry = next(e for e in events if e["event"] == "segment_retry")
    assert retry["reason"] == "RuntimeError: injected fault at worker" and not retry["worker_died"]
    assert events[-1]["event"] == "job_failed" and events[-1]["exit_code"] == 7
    text = assert_logged(m.group(1), "worker", out.parent / f".{out.name}.vsr-work")
    worker_pids = {int(p) for p in re.findall(r"\(pid=(\d+),", text)}
    assert worker_pids and os.getpid() not in worker_pids  # raised in another process: the worker
    assert "in process" in text and "maybe_fail(\"worker\")" in text
    assert not out.exists() and input_untouched()


def test_a_batch_file_with_a_bug_fails_with_70_and_the_batch_goes_on(tmp_path, monkeypatch):
    """In-process run_batch: the first file fails in assembly (the fault is then cleared by the
    event callback, on the driver where assembly runs) and the second is made."""
    from vsr.cluster import Events, JobOptions, run_batch
    from vsr.job.inputs import plan_folder

    monkeypatch.setenv("VSR_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy2(TINY, src / name)
    monkeypatch.setenv(FAULT_ENV, "assemble")
    seen: list[tuple[str, dict]] = []

    def on_event(name: str, fields: dict) -> None:
        seen.append((name, fields))
        if name == "file_failed":
            monkeypatch.delenv(FAULT_ENV)

    items = plan_folder(src, tmp_path / "out")
    summary = run_batch(items, JobOptions(model="lanczos", outscale=2, encode={"preset": "ultrafast"}),
                        events=Events(callback=on_event))
    failed = next(f for n, f in seen if n == "file_failed")
    done = next(f for n, f in seen if n == "file_done")
    assert Path(failed["input"]).name == "a.mp4" and failed["exit_code"] == 70
    m = re.match(r"^internal error: RuntimeError: injected fault at assemble \(details: (.+\.log)\)$", failed["error"])
    assert m, failed["error"]
    assert_logged(m.group(1), "assemble", tmp_path / "out" / ".a.mp4.vsr-work")
    assert not (tmp_path / "out" / "a.mp4").exists()
    assert Path(done["input"]).name == "b.mp4" and (tmp_path / "out" / "b.mp4").is_file()
    assert (summary["done"], summary["failed"]) == (1, 1)
    assert [r["exit_code"] for r in summary["results"] if r["status"] == "failed"] == [70]
