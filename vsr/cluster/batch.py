"""Many files, one pool of workers: folders in, folders out, skip what is done, one report."""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsr.cluster.events import Events
from vsr.cluster.job import check_paths, choose_encoder, plan_output, run_upscale_job, stale_tag_reason
from vsr.cluster.manifest import content_digest, write_json_atomic
from vsr.cluster.options import JobOptions
from vsr.cluster.pool import WorkerPool
from vsr.cluster.runtime import RaySession, stop_requested
from vsr.errors import InputError, OutputError, UsageError, VsrError

log = logging.getLogger("vsr.cluster")

VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .ts .mts .m2ts .mpg .mpeg .vob .wmv .flv .3gp .ogv .dv .mxf .y4m .nut".split())
DEFAULT_NAME = "{stem}{ext}"


@dataclass
class BatchItem:
    """One input file and the output it should become."""

    input: Path
    output: Path
    encode: dict[str, Any] | None = None  # per-file encode options (job specs), else the job's
    codecs: list[str] | None = None  # encoders that suit this file, preferred first (job specs)
    failure: VsrError | None = None  # found bad while validating: reported, not run
    not_input: str | None = None  # why this match is no input (a vsr output): reported as skipped


def find_videos(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Video files (by extension) in a folder, sorted by name; hidden files are left out."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    walk = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in walk if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def output_name(src: Path, pattern: str) -> str:
    """Fill the output name pattern: {stem} (name without extension), {ext} (with the dot),
    {name} (full name)."""
    try:
        name = pattern.format(stem=src.stem, ext=src.suffix, name=src.name)
    except (KeyError, IndexError, ValueError) as err:
        raise UsageError(f"name pattern {pattern!r}: {err}; use {{stem}}, {{ext}} and {{name}}") from None
    if not name or os.sep in name or name in (".", ".."):
        raise UsageError(f"name pattern {pattern!r} gives {name!r} for {src.name}; it must be a plain file name")
    return name


def plan_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, pattern: str = DEFAULT_NAME,
                recursive: bool = False) -> list[BatchItem]:
    """Pair every video of in_dir with its output in out_dir (sub-folders mirrored); vsr's own
    outputs, when out_dir is or lies in in_dir, are not inputs (without_own_outputs)."""
    src_root, dst_root = Path(in_dir), Path(out_dir)
    items = []
    for src in find_videos(src_root, recursive=recursive):
        dst = dst_root / src.parent.relative_to(src_root) / output_name(src, pattern)
        item = BatchItem(src, dst)
        if dst.absolute() == src.absolute() or (dst.exists() and os.path.samefile(dst, src)):
            # reported per file before any worker starts (check_paths would say it only then)
            item.failure = UsageError(f"output {dst} is the input; choose another output folder, "
                                      "or a --name pattern such as \"{stem}_x2{ext}\"")
        items.append(item)
    return without_own_outputs(items, dst_root)


def without_own_outputs(items: list[BatchItem], out_root: str | os.PathLike) -> list[BatchItem]:
    """Mark (item.not_input) the inputs that lie in the output folder and carry a vsr job tag.

    With the outputs beside their sources (`vsr batch in in --name "{stem}_x2{ext}"`, or a job
    spec's glob over its own output_dir) every nightly run would otherwise upscale the last run's
    outputs again (a_x2, a_x2_x2, ...). Files there without a tag, or whose tag cannot be read,
    are inputs as usual. Returns the same list.
    """
    from vsr.media.containers import read_job_tag

    root = Path(out_root)
    if not root.is_dir():
        return items  # nothing there yet
    for item in items:
        try:
            inside = any(os.path.samefile(folder, root) for folder in Path(item.input).absolute().parents)
            if inside and read_job_tag(item.input) is not None:
                item.not_input = "made by vsr (it carries a job tag) and in the output folder: not an input"
        except Exception:  # noqa: BLE001 - an unreadable file is judged (and reported) as an input
            continue
    return items


def existing_output(item: BatchItem, pool: WorkerPool, options: JobOptions) -> tuple[str, str]:
    """What to do with an output that already exists: ("skip" | "redo" | "foreign", why).

    skip: it verifies against its input and its job tag says it was made with these settings
        from this very source (content digest, so a re-exported source is made again);
        or it has no job tag (made by something else, or by a vsr from before job tags) and
        verifies: kept as it is, said in the reason (--redo remakes it);
    redo: vsr made it, but with other settings, or it does not verify (replaced atomically);
    foreign: no vsr job tag and it does not verify: never overwritten without --redo.
    """
    from vsr.media.containers import read_job_tag
    from vsr.media.verify import verify

    tag = read_job_tag(item.output)
    try:
        chosen, nvenc = choose_encoder(options, pool)
        info, encode, plan, settings = plan_output(item.input, item.output, chosen, pool.workers[0].info,
                                                   nvenc=nvenc)
        if tag is not None:
            digest = content_digest(item.input)
            stale = stale_tag_reason(tag, settings, digest)
            # made with another encoder of the file's list (say NVENC, on workers that had it) and
            # otherwise the same settings: as good as what this run would make
            for codec in options.codecs or []:
                if stale != "settings changed" or codec == chosen.encode.get("codec"):
                    continue
                other = chosen.replace(encode=dict(chosen.encode, codec=codec))
                other_settings = plan_output(item.input, item.output, other, pool.workers[0].info, info,
                                             nvenc=frozenset([codec]))[3]
                stale = stale_tag_reason(tag, other_settings, digest)
    except VsrError as err:
        return ("foreign" if tag is None else "redo"), str(err)
    if tag is not None and stale:
        return "redo", stale
    try:
        report = verify(item.input, item.output, plan.display_scale, info=info, picture=plan.plan, encode=encode)
        problems = [] if report.ok else report.problems
    except VsrError as err:
        problems = [str(err)]
    if tag is None:
        if problems:
            return "foreign", "has no vsr job tag (vsr did not make it) and does not verify against its input"
        log.warning("%s has no vsr job tag but verifies against its input: kept (--redo remakes it)", item.output)
        return "skip", "output exists and verifies; it has no vsr job tag, so its settings are unknown"
    if problems:
        return "redo", "does not verify: " + "; ".join(problems[:3])
    return "skip", "output exists, verifies and was made with the same settings"


def run_batch(items: list[BatchItem], options: JobOptions, *, events: Events | None = None,
              skip_existing: bool = True, report_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Upscale every item with one pool of workers; go on past failures; return the summary.

    summary["failed"] > 0 means at least one file failed (the CLI exits non-zero).
    """
    options = options.validate()
    events = events or Events()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    seen: dict[Path, Path] = {}
    for it in items:  # two inputs mapping to one output would overwrite each other
        if it.not_input:
            continue
        key = it.output.absolute()
        if key in seen:
            raise UsageError(f"{seen[key]} and {it.input} both map to {it.output}; "
                             "use a name pattern with {name} or {ext}")
        seen[key] = it.input
    events.emit("batch_start", files=len(items))
    with ExitStack() as stack:
        pool: WorkerPool | None = None
        for n, item in enumerate(items, 1):
            rec: dict[str, Any] = {"input": str(item.input), "output": str(item.output)}
            t = time.perf_counter()
            try:
                if item.not_input:
                    rec.update(status="skipped", reason=item.not_input)
                    events.emit("file_skipped", file=n, of=len(items), **rec)
                    results.append(rec)
                    continue
                if item.failure is not None:
                    raise item.failure
                if pool is None:
                    stack.enter_context(RaySession(options.address))
                    pool = stack.enter_context(WorkerPool(options, events))
                item.output.parent.mkdir(parents=True, exist_ok=True)
                check_paths(item.input, item.output)
                opts = options if item.encode is None else options.replace(encode=item.encode, codecs=item.codecs)
                if skip_existing and item.output.exists():
                    action, why = existing_output(item, pool, opts)
                    if action == "skip":
                        rec.update(status="skipped", reason=why)
                        events.emit("file_skipped", file=n, of=len(items), **rec)
                        results.append(rec)
                        continue
                    if action == "foreign":
                        raise OutputError(f"{item.output} exists and {why}; not overwriting it: move it "
                                          "away, or rerun with --redo to replace it")
                    rec["redo_reason"] = why
                    log.info("%s exists, redoing it: %s", item.output, why)
                events.emit("file_start", file=n, of=len(items), **rec)
                summary = run_upscale_job(item.input, item.output, opts, events=events, pool=pool)
                rec.update(status="done", frames=summary["frames"], fps=summary["fps"],
                           width=summary["width"], height=summary["height"],
                           segments_reused=summary["segments_reused"])
                events.emit("file_done", file=n, of=len(items), **rec)
            except VsrError as err:
                if stop_requested():  # what failed is the stop itself: no further files
                    raise KeyboardInterrupt from None
                rec.update(status="failed", error=str(err), exit_code=err.exit_code)
                events.emit("file_failed", file=n, of=len(items), **rec)
                log.error("%s: %s", item.input, err)
                if pool is None and item.failure is None:  # no workers could start: all would fail
                    results.append(rec)
                    break
            except Exception as err:  # noqa: BLE001 - one broken file must not stop the night's batch
                if stop_requested():
                    raise KeyboardInterrupt from None
                rec.update(status="failed", error=f"internal error: {type(err).__name__}: {err}", exit_code=1)
                events.emit("file_failed", file=n, of=len(items), **rec)
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
    events.emit("batch_done", **{k: v for k, v in summary.items() if k != "results"})
    return summary
