#!/usr/bin/env python3
"""Corpus sweep: every shared clip through `vsr upscale SRC OUT -m lanczos --outscale 2`, each
output checked by vsr's own verify (an output exists only if it verified) and by the independent
checker (../shared/tools/check_video.py SRC OUT 2). Prints one row per run: file, output
container, seconds, result (ok / refused before work: <reason> / FAILED: <why>).

Inputs: ../shared/media/*.mp4|webm|mov (the everyday clips) and ../shared/media/corpus/* (real
files from public test suites; SOURCES.md there describes each). Runs:
  - every file into .mkv (the container that holds every stream kind);
  - a rerun with the flag a refusal message suggests, for the files in RETRY_FLAGS;
  - with --variants, also every file into its own container where vsr writes it (.mp4, .mov,
    .webm: vsr.media.containers.MUXERS).
One `vsr batch --json` (one Ray start) per group of runs with the same flags and name pattern,
over a temporary folder of symlinks to the inputs; a file `vsr batch` does not list (by its
extension) runs alone through `vsr upscale --json`, its seconds then include that Ray start.
A run is "refused before work" only when it failed with a refusal's exit code (usage, input,
output) and no segment started; any failure after a segment started is FAILED.

usage: python benchmarks/corpus.py [--json] [--variants] [--files PATTERN ...] [--keep DIR]
                                  [--timeout SECONDS]
Exit status 1 when a row FAILED.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsr.errors import InputError, OutputError, UsageError  # noqa: E402
from vsr.job.inputs import VIDEO_SUFFIXES  # noqa: E402
from vsr.media.containers import MUXERS, UNIVERSAL  # noqa: E402

SHARED = REPO.parent / "shared"
EVERYDAY_PATTERNS = ("*.mp4", "*.webm", "*.mov")
UPSCALE = ("-m", "lanczos", "--outscale", "2")
SCALE = "2"
# The same file again with the flag its refusal message suggests: the refusal is right for a
# user only if that flag then gives a verified output.
RETRY_FLAGS: dict[str, tuple[str, ...]] = {
    # damaged H.264 payload (27 of 100 frames corrupt): refused unless the user accepts repeats
    "empty_edit_5s_yuv444.mp4": ("--on-corrupt", "repeat-previous"),
}
# Exit codes of a refusal (vsr.errors): the input, the output or the request cannot be honoured.
REFUSAL_EXIT_CODES = frozenset({UsageError.exit_code, InputError.exit_code, OutputError.exit_code})
# Events that mean frames were (or had been) upscaled for the file: a failure after one is no refusal.
WORK_EVENTS = frozenset({"segment_start", "segment_done", "segment_reused", "segment_retry", "assemble"})
CHECK_PARALLEL = 2  # checker processes at once (2 cores on CI)
CHECK_TIMEOUT_S = 1800.0  # one check_video.py run
SWEEP_TIMEOUT_S = 4 * 3600.0  # default --timeout


@dataclass
class Row:
    """One run of one file: what was asked, and how it ended."""

    source: str
    container: str
    flags: tuple[str, ...] = ()
    result: str = "FAILED"  # ok, refused, FAILED
    reason: str = "not run"
    seconds: float = 0.0
    check_seconds: float = 0.0
    output: str = ""

    @property
    def file(self) -> str:
        return Path(self.source).name

    def label(self) -> str:
        """The file name, with the run's extra flags when it has any."""
        return self.file + (f" ({' '.join(self.flags)})" if self.flags else "")

    def result_text(self) -> str:
        if self.result == "ok":
            return "ok"
        if self.result == "refused":
            return f"refused before work: {self.reason}"
        return f"FAILED: {self.reason}"


@dataclass
class Group:
    """Runs that share flags and output name pattern: one `vsr batch` (plus lone `vsr upscale`s)."""

    flags: tuple[str, ...]
    pattern: str
    rows: list[Row] = field(default_factory=list)


# ---------------------------------------------------------------- what to run
def find_sources(shared: Path, patterns: Iterable[str] = ()) -> list[Path]:
    """The everyday clips and the corpus files, those whose name matches one of `patterns`
    (fnmatch; none: all). Raises SystemExit when the shared media folder is missing."""
    media = shared / "media"
    if not (media / "corpus").is_dir():
        raise SystemExit(f"no corpus at {media / 'corpus'}")
    everyday = sorted({p for pat in EVERYDAY_PATTERNS for p in media.glob(pat) if p.is_file()})
    corpus = sorted(p for p in (media / "corpus").iterdir() if p.is_file() and p.suffix.lower() != ".md")
    chosen = [p for p in everyday + corpus if not patterns or any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    names = [p.name for p in chosen]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:  # the symlink folders hold one name once
        raise SystemExit(f"two inputs share a name: {', '.join(clash)}")
    return chosen


def encode_flags(container: str) -> tuple[str, ...]:
    """A fast encoder preset: 'ultrafast' (x264/x265, and VP9's fastest speed), except into
    WebM, whose 10-bit AV1 encoder (SVT-AV1, numbered presets) would refuse the name: a refusal
    of the sweep, not of the file."""
    return () if container == ".webm" else ("--preset", "ultrafast")


def plan_rows(sources: list[Path], *, variants: bool) -> list[Row]:
    """Every source into .mkv, the RETRY_FLAGS reruns, and with `variants` each source into its own
    container when vsr writes that one (and it is not .mkv already)."""
    rows = [Row(str(p), UNIVERSAL) for p in sources]
    rows += [Row(str(p), UNIVERSAL, RETRY_FLAGS[p.name]) for p in sources if p.name in RETRY_FLAGS]
    if variants:
        rows += [Row(str(p), p.suffix) for p in sources if p.suffix in MUXERS and p.suffix != UNIVERSAL]
    return rows


def group_rows(rows: list[Row]) -> list[Group]:
    """Rows by (flags, output name pattern), in first-seen order."""
    groups: dict[tuple[tuple[str, ...], str], Group] = {}
    for row in rows:
        flags = row.flags + encode_flags(row.container)
        # into .mkv: "a.mp4" -> "a.mp4.mkv" (also for an .mkv input, which then shares the batch);
        # a variant's container is its input's
        pattern = "{name}" + UNIVERSAL if row.container == UNIVERSAL else "{stem}{ext}"
        groups.setdefault((flags, pattern), Group(flags, pattern)).rows.append(row)
    return list(groups.values())


# ---------------------------------------------------------------- reading vsr's events
def classify(events: list[dict[str, Any]]) -> tuple[str, str]:
    """("done" | "refused" | "FAILED", reason) from one file's events, in order (a batch's
    file_start ... file_done/file_failed, or `vsr upscale --json`'s whole stream)."""
    if not events:
        return "FAILED", "no event"
    end = events[-1]
    if end["event"] in ("file_done", "job_done"):
        return "done", ""
    if end["event"] == "file_skipped":
        return "FAILED", f"skipped: {end.get('reason', '')}"
    error = str(end.get("error", end["event"]))
    worked = any(e["event"] in WORK_EVENTS for e in events)
    if not worked and end.get("exit_code") in REFUSAL_EXIT_CODES:
        return "refused", error
    return "FAILED", error + (" (after segments started)" if worked else "")


def batch_files(lines: Iterable[str]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(input path, that file's events) from a batch's JSON Lines, each as soon as its file ends.
    Lines that are not JSON objects (stray prints) are passed over."""
    current: list[dict[str, Any]] = []
    for line in lines:
        event = _json_or_none(line)
        if event is None:
            continue
        if event["event"] == "file_start":
            current = [event]
        elif event["event"] in ("file_done", "file_failed", "file_skipped"):
            # a file failed before its file_start (listing, worker start) has only this event
            started = bool(current) and current[0].get("input") == event.get("input")
            yield event["input"], (current if started else []) + [event]
            current = []
        elif current:
            current.append(event)


def event_seconds(events: list[dict[str, Any]]) -> float:
    return round(events[-1]["time"] - events[0]["time"], 3) if events else 0.0


# ---------------------------------------------------------------- running
def vsr_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vsr.cli", *args]


def vsr_env() -> dict[str, str]:
    """This checkout first on the path (the CLI, and the Ray workers it starts, import it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def stderr_tail(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


def run_group(group: Group, where: Path, checks: "Checker", deadline: "Deadline") -> None:
    """Run a group's files: one `vsr batch` over symlinks for the files it lists, `vsr upscale`
    for each other file; each finished output goes to the checker at once."""
    inputs, outputs = where / "in", where / "out"
    inputs.mkdir(parents=True)
    outputs.mkdir()
    by_link: dict[str, Row] = {}
    for row in group.rows:
        link = inputs / row.file
        link.symlink_to(row.source)
        row.output = str(outputs / group.pattern.format(stem=link.stem, ext=link.suffix, name=link.name))
        by_link[str(link)] = row
    listed = {k: r for k, r in by_link.items() if Path(k).suffix.lower() in VIDEO_SUFFIXES}
    if listed:
        args = ["batch", str(inputs), str(outputs), "--name", group.pattern, *UPSCALE, *group.flags, "--json"]
        run_process(args, listed, where / "batch.stderr", checks, deadline)
    for n, (link, row) in enumerate(sorted(by_link.items())):
        if link not in listed:
            args = ["upscale", link, row.output, *UPSCALE, *group.flags, "--json"]
            run_process(args, {link: row}, where / f"upscale{n}.stderr", checks, deadline)


def run_process(args: list[str], rows: dict[str, Row], stderr_path: Path, checks: "Checker",
                deadline: "Deadline") -> None:
    """Run one vsr command with --json and settle `rows` (keyed by input path) from its events."""
    if deadline.left() <= 0:
        return  # the rows stay "not run"
    t0 = time.time()
    with open(stderr_path, "w") as err, subprocess.Popen(vsr_command(*args), stdout=subprocess.PIPE, stderr=err,
                                                         text=True, env=vsr_env(), cwd=REPO) as proc:
        watch = deadline.watch(proc)
        try:
            read_events(args, proc.stdout, rows, t0, checks)
            rc = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM: vsr stops its own workers on SIGTERM
            proc.terminate()
            proc.wait(timeout=120)
            raise
        finally:
            watch.cancel()
    for row in rows.values():
        if row.reason == "not run":  # no final event for it: the process died or was stopped
            why = "the sweep's time ran out" if watch.fired else \
                f"vsr exited {rc} before it finished: {stderr_tail(stderr_path)}"
            row.result, row.reason, row.seconds = "FAILED", why, round(time.time() - t0, 3)


def read_events(args: list[str], stdout: Iterable[str], rows: dict[str, Row], t0: float,
                checks: "Checker") -> None:
    """Settle rows from a vsr process's JSON Lines: a batch's per file, an upscale's at its end."""
    if args[0] == "batch":
        for link, events in batch_files(stdout):
            if link in rows:
                settle(rows[link], link, events, event_seconds(events), checks)
        return
    events = [e for e in (_json_or_none(ln) for ln in stdout) if e is not None]
    ends = [n for n, e in enumerate(events) if e["event"] in ("job_done", "job_failed")]
    if ends:
        settle(rows[args[1]], args[1], events[:ends[-1] + 1], time.time() - t0, checks)


def settle(row: Row, link: str, events: list[dict[str, Any]], seconds: float, checks: "Checker") -> None:
    """Record vsr's outcome for a row (its input as vsr saw it: `link`); a done row's output goes to
    the checker."""
    outcome, reason = classify(events)
    # the temporary folders' paths say nothing to a reader: the names do
    for path in sorted({link, row.output}, key=len, reverse=True):
        reason = reason.replace(path, Path(path).name)
    row.seconds = round(seconds, 3)
    exists = Path(row.output).exists()
    if outcome == "done" and not exists:
        row.result, row.reason = "FAILED", "vsr reported done but wrote no output"
    elif outcome == "done":
        row.result, row.reason = "checking", ""
        checks.submit(row)
        return
    elif exists:  # an output exists only if it verified
        row.result, row.reason = "FAILED", f"{reason}; and an output was left behind"
    else:
        row.result, row.reason = outcome, reason
    progress(row)


def progress(row: Row) -> None:
    """One line on stderr per finished row (a long sweep shows where it is)."""
    print(f"{row.label()} -> {row.container}: {row.result_text()} ({row.seconds:.1f} s)",
          file=sys.stderr, flush=True)


def _json_or_none(line: str) -> dict[str, Any] | None:
    """The event a JSON Lines line holds, or None for anything else (a stray print)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class Deadline:
    """The sweep's time limit: a vsr process still running at the end is stopped (SIGTERM, the
    clean stop; SIGKILL a minute later), and no further process starts."""

    GRACE_S = 60.0

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def watch(self, proc: subprocess.Popen) -> "_Watch":
        return _Watch(proc, max(0.0, self.left()), self.GRACE_S)


class _Watch:
    def __init__(self, proc: subprocess.Popen, seconds: float, grace: float) -> None:
        self.fired = False
        self._timers = [threading.Timer(seconds, self._stop, args=(proc.terminate,)),
                        threading.Timer(seconds + grace, self._stop, args=(proc.kill,))]
        for timer in self._timers:
            timer.daemon = True
            timer.start()

    def _stop(self, how: Any) -> None:
        self.fired = True
        try:
            how()
        except OSError:
            pass  # it has just ended

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def _only_pictures_differ(lines: list[str]) -> bool:
    """The checker failed on the sampled pictures alone: frame count, times, size, depth, colour
    tags and streams all held (its FAIL line names nothing but picture and colour-mean findings)."""
    fail = next((ln for ln in reversed(lines) if ln.startswith("FAIL:")), "")
    findings = [f.strip() for f in fail.removeprefix("FAIL:").split(";") if f.strip()]
    return bool(findings) and all(f.startswith(("picture differs", "colours shifted")) for f in findings)


class Checker:
    """check_video.py SRC OUT 2 on finished outputs, CHECK_PARALLEL at a time, beside the jobs."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self._pool = ThreadPoolExecutor(max_workers=CHECK_PARALLEL)
        self._futures: list[Future] = []

    def submit(self, row: Row) -> None:
        self._futures.append(self._pool.submit(self._check, row))

    def _check(self, row: Row) -> None:
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(self.script), row.source, row.output, SCALE],
                                  capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit {proc.returncode}, no output"
            ok = proc.returncode == 0 and last.startswith("ok")
            if not ok and "--on-corrupt" in row.flags and _only_pictures_differ(lines):
                # the checker compares each sampled frame with its own decode of the damaged
                # source; frames vsr repeated on purpose (listed in the job's summary) differ
                # from that garbage by design. vsr's verify, which knows them, passed.
                row.result, row.reason = "ok", "repeated frames differ from the damaged source's, as asked"
            else:
                row.result, row.reason = ("ok", "") if ok else ("FAILED", f"check_video: {last[:300]}")
        except subprocess.TimeoutExpired:
            row.result, row.reason = "FAILED", "check_video timed out"
        row.check_seconds = round(time.perf_counter() - t, 3)
        progress(row)

    def wait(self) -> None:
        for future in self._futures:
            future.result()
        self._pool.shutdown()


# ---------------------------------------------------------------- the sweep and its table
def sweep(rows: list[Row], workdir: Path, checker_script: Path, timeout: float = SWEEP_TIMEOUT_S) -> float:
    """Run every row (group by group) and check the outputs, within `timeout` seconds (rows it
    leaves undone are FAILED); returns the wall time in seconds."""
    t0 = time.perf_counter()
    checks = Checker(checker_script)
    deadline = Deadline(timeout)
    try:
        for n, group in enumerate(group_rows(rows)):
            run_group(group, workdir / f"group{n}", checks, deadline)
    finally:
        checks.wait()
    for row in rows:
        if row.reason == "not run":
            row.reason = "not run: the sweep's time ran out"
    return round(time.perf_counter() - t0, 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(rows: list[Row]) -> str:
    """The rows as a text table; the result last, as long as its reason (not padded)."""
    head = ("file", "container", "seconds", "result")
    body = [(r.label(), r.container, f"{r.seconds:.1f}", r.result_text()) for r in rows]
    width = [max(len(x[i]) for x in [head, *body]) for i in range(3)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c:>{width[2]}}  {d}" for a, b, c, d in [head, *body])


def summary(rows: list[Row], wall: float) -> dict[str, Any]:
    counts = {k: sum(r.result == k for r in rows) for k in ("ok", "refused", "FAILED")}
    return {"rows": len(rows), **counts, "wall_seconds": wall, "cpu": cpu_model(), "cores": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON document (rows and summary) on stdout")
    ap.add_argument("--files", action="append", default=[], metavar="PATTERN",
                    help="only files whose name matches (fnmatch; repeatable)")
    ap.add_argument("--variants", action="store_true", help="also each file into its own container")
    ap.add_argument("--shared", type=Path, default=SHARED, help=f"the shared folder (default {SHARED})")
    ap.add_argument("--keep", type=Path, default=None, help="write the outputs here and keep them")
    ap.add_argument("--timeout", type=float, default=SWEEP_TIMEOUT_S,
                    help="stop after this many seconds; what is left is FAILED (default %(default)s)")
    args = ap.parse_args(argv)
    rows = plan_rows(find_sources(args.shared, args.files), variants=args.variants)
    if not rows:
        raise SystemExit("no file matches")
    checker = args.shared / "tools" / "check_video.py"
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="vsr-corpus-"))
    try:
        wall = sweep(rows, workdir, checker, args.timeout)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    info = summary(rows, wall)
    if args.json:
        print(json.dumps({"summary": info, "rows": [dict(asdict(r), file=r.file) for r in rows]}, indent=1))
    else:
        print(table(rows))
        print(f"\n{info['rows']} runs: {info['ok']} ok, {info['refused']} refused before work, "
              f"{info['FAILED']} FAILED; wall {wall:.0f} s on {info['cpu']} ({info['cores']} cores)")
    return 1 if info["FAILED"] else 0


def _stop_on_sigterm() -> None:
    """SIGTERM ends the sweep as Ctrl-C does: the running vsr process is stopped, not orphaned."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    _stop_on_sigterm()
    sys.exit(main())
