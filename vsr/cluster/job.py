"""run_upscale_job: one input video to one verified output, over a pool of Ray segment workers.

probe -> (fast decode scan) -> plan segments -> manifest (resume) -> schedule segments on the
workers (bounded in flight, retries on a lost worker) -> assemble + verify -> atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Collection, Sequence

from vsr import __version__
from vsr.cluster.events import Events
from vsr.cluster.lock import OutputLock, clear_workdir
from vsr.cluster.manifest import Manifest, content_digest, input_identity, weights_identity
from vsr.cluster.options import JobOptions
from vsr.cluster.picture import plan_job_picture
from vsr.cluster.pool import Worker, WorkerPool, unwrap_ray_error
from vsr.cluster.runtime import RaySession, workers_are_local
from vsr.errors import InputError, JobError, OutputError, UsageError, VsrError
from vsr.media.containers import job_tag_text
from vsr.media.encode import is_nvenc

log = logging.getLogger("vsr.cluster")

SEGMENT_SUFFIX = ".nut"  # the media layer's segment container (exact time base and pts/dts)
STATUS_POLL_S = 0.5


def default_workdir(output: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """The work directory of a job: a hidden folder beside the output (same filesystem, and the
    same command finds it again to resume), or one folder per output inside `base` (--workdir,
    e.g. shared storage of a cluster; several jobs can share it).

    The folder is resolved (symlinks, `..`, relative paths), so every path to the same output
    shares one work directory and one lock. Not the file name: os.replace writes the output
    over a symlink there, not through it. Paths without symlinks hash as before (absolute path).
    """
    out = Path(output).absolute()
    out = out.parent.resolve() / out.name
    if base is None:
        return out.parent / f".{out.name}.vsr-work"
    tag = hashlib.sha1(str(out).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return Path(base).absolute() / f"{out.name}.{tag}"


def check_paths(input: str | os.PathLike, output: str | os.PathLike) -> tuple[Path, Path]:
    """Input exists and is a file; output is not the input and its folder is writable."""
    src, dst = Path(input), Path(output)
    if not src.exists():
        raise InputError(f"{src}: no such file")
    if not src.is_file():
        raise InputError(f"{src}: not a file")
    if not os.access(src, os.R_OK):
        raise InputError(f"{src}: not readable")
    if dst.exists() and dst.resolve() == src.resolve() or dst.absolute() == src.absolute():
        raise UsageError(f"output {dst} is the input; choose another output path")
    if dst.is_dir():
        raise UsageError(f"output {dst} is a directory; give a file name such as {dst / src.name}")
    parent = dst.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)  # like `-o out/x.mp4` in most tools
    except OSError as err:
        raise OutputError(f"{dst}: cannot create the output folder {parent}: {err.strerror or err}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{dst}: output folder {parent} is not writable")
    return src, dst


def enough_segments(info: Any, segments: list, workers: int) -> list:
    """The plan, or a finer keyframe-aligned one when a short video would leave workers idle.

    `workers` counts worker slots (workers x segments each runs at once). With fewer than two
    segments per slot the tail of the job runs on one slot while the others wait; shorter
    segments (>= 0.5 s) spread the frames over every slot.
    """
    from vsr.media.segments import plan_segments

    if workers < 2 or len(segments) >= 2 * workers:
        return segments
    pts = info.video.frame_pts
    duration = float((pts[-1] - pts[0]) * info.video.time_base) if len(pts) > 1 else 0.0
    finer = plan_segments(info, max(0.5, duration / (2 * workers)))
    return finer if len(finer) > len(segments) else segments


def output_settings(options: JobOptions, model: str, encode: dict[str, Any], picture: dict[str, Any],
                    out_size: tuple[int, int] | list[int]) -> dict[str, Any]:
    """The settings that decide an output's pictures and encoding (JSON-able).

    Part of the resume manifest's fingerprint, and (hashed by settings_fingerprint) the first
    part of the tag in the output's metadata (output_tag) that lets batch runs skip an output
    only when it was made with the same settings. Not in it: the vsr version, worker count,
    device and batch size.
    """
    upscaler = {k: v for k, v in options.upscaler_kwargs().items() if k not in ("device", "batch_size")}
    # a weight file retrained or replaced in place must not mix old segments into the output
    weights = weights_identity(upscaler["model"])
    if weights is not None:
        # a weight file is known by its content, not by its name or where it lies: the same file
        # renamed, moved or mounted elsewhere (another node, a new project folder) still makes
        # the same output
        upscaler["model"] = model = "file"
    return {
        "model": model,
        "upscaler": upscaler,
        "weights": weights,
        "out_size": list(out_size), "encode": encode, "picture": picture, "on_corrupt": options.on_corrupt,
    }


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """Short stable hash of output_settings (canonical JSON)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def output_tag(settings: dict[str, Any], source_digest: str) -> str:
    """The job tag an output carries: 'SETTINGS.SOURCE', the settings fingerprint and the first
    16 hex digits of the source's content_digest (a source re-exported under the same name
    makes its output stale even when the old output still verifies against it)."""
    return f"{settings_fingerprint(settings)}.{source_digest[:16]}"


def stale_tag_reason(tag: str, settings: dict[str, Any], source_digest: str) -> str | None:
    """Why an output with job tag `tag` is not what these settings make of this source (None:
    it is). A tag without a source part (older vsr) is judged on its settings alone."""
    settings_part, _, source_part = tag.partition(".")
    if settings_part != settings_fingerprint(settings):
        return "settings changed"
    if source_part and source_part != source_digest[:16]:
        return "source changed (its content differs from the file this output was made of)"
    return None


def encoders_for_file(info: Any, dst: Path, encode: dict[str, Any], candidates: Sequence[str | None], *,
                      local: bool) -> tuple[list[str], list[VsrError]]:
    """The candidate encoders that suit this file with these settings, in order up to the first
    that needs no GPU, and the errors of the others. NVENC is checked on this machine when the
    workers run here (`local`); else the workers are asked once they run (encoder_for_workers)."""
    from vsr.media.encode import EncodeOptions, resolve_encode_options

    fits: list[str] = []
    errors: list[VsrError] = []
    for codec in candidates:
        try:
            resolved = resolve_encode_options(info, dst, EncodeOptions.from_dict(dict(encode, codec=codec)),
                                              nvenc=None if local else frozenset(filter(None, [codec])))
        except VsrError as err:
            errors.append(err)
            continue
        fits.append(str(resolved.codec))
        if not is_nvenc(resolved.codec):
            break  # runs on any worker: the rest of the list is never needed
    return fits, errors


def worker_opens(worker: Worker, codec: str | None) -> bool:
    """Whether `worker` can run this encoder: NVENC only where it said the encoder opens there
    (WorkerPool.ask_nvenc); the others come with PyAV and run anywhere."""
    return not is_nvenc(codec) or bool(worker.info.get("nvenc", {}).get(codec))


def encoder_for_workers(options: JobOptions, workers: Sequence[Worker]) -> tuple[JobOptions, frozenset[str]]:
    """The options with the first encoder of options.codecs (else encode["codec"]) that every
    worker can run, and the NVENC encoders of that list that open on every worker.

    NVENC needs a GPU with an encoder engine on the machine that encodes: each worker, not this
    driver (often a CPU-only head node; or a workstation sending work to GPUs that have no NVENC,
    such as the H100). Ask the workers first (WorkerPool.ask_nvenc): one that has not said
    counts as without.
    """
    candidates = options.encoders()
    everywhere = frozenset(c for c in candidates
                           if is_nvenc(c) and workers and all(worker_opens(w, c) for w in workers))
    usable = [c for c in candidates if c in everywhere or not is_nvenc(c)]
    if not usable:
        lacking = [w.name for w in workers if not any(worker_opens(w, c) for c in candidates)]
        where = (f"{len(lacking)} of {len(workers)} workers open none of them ({', '.join(lacking[:3])})"
                 if lacking else "no one of them opens on every worker")
        fix = ("list a software encoder that suits this file in [encode] codec (e.g. libx265)" if options.codecs
               else "use a software --codec (e.g. libx264 or libx265)")
        raise UsageError(f"encoder {' / '.join(map(str, candidates))}: needs an NVIDIA GPU with NVENC on every "
                         f"worker, and {where}; {fix}")
    codec = usable[0]  # None: the container's default encoder
    if codec != options.encode.get("codec"):
        options = options.replace(encode=dict(options.encode, codec=codec))
    return options, everywhere


def choose_encoder(options: JobOptions, pool: WorkerPool) -> tuple[JobOptions, frozenset[str]]:
    """encoder_for_workers over the pool's workers, once they have said which of the job's NVENC
    encoders open on them."""
    pool.ask_nvenc(options.encoders())
    return encoder_for_workers(options, pool.workers)


def plan_output(src: Path, dst: Path, options: JobOptions, worker_info: dict[str, Any],
                info: Any = None, *, nvenc: Collection[str] | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Probe (unless `info` is given), resolve the encoding and the picture plan of one job;
    returns (info, encode options, JobPicture, output_settings). `nvenc`: the NVENC encoders
    that open on every worker (encoder_for_workers); None: on this machine."""
    from vsr.media.encode import EncodeOptions, resolve_encode_options
    from vsr.media.probe import probe

    info = info if info is not None else probe(src)
    encode = resolve_encode_options(info, dst, EncodeOptions.from_dict(options.encode), nvenc=nvenc)
    plan = plan_job_picture(info, worker_info["scale"], options.picture)
    settings = output_settings(options, worker_info["model"], encode.to_dict(), plan.to_dict(), plan.out_size)
    return info, encode, plan, settings


def run_upscale_job(input: str | os.PathLike, output: str | os.PathLike, options: JobOptions | None = None,
                    *, events: Events | None = None, pool: WorkerPool | None = None) -> dict[str, Any]:
    """Upscale one video file into `output` and return the job summary (a JSON-able dict).

    With `pool=None` this starts Ray (embedded loopback instance, or the cluster named by
    options.address / RAY_ADDRESS) and the workers, and tears both down at the end, also on
    errors and Ctrl-C. Batch mode passes its own pool so the model loads once per worker.
    Raises VsrError subclasses with one-line messages; the output exists only if it verified.
    BusyError when another running job holds the output's work directory.
    """
    options = (options or JobOptions()).validate()
    events = events or Events()
    t_start = time.perf_counter()
    src, dst = check_paths(input, output)
    workdir = default_workdir(dst, options.workdir)
    with OutputLock(workdir, dst):
        return _run_locked(src, dst, workdir, options, events, pool, t_start)


def _run_locked(src: Path, dst: Path, workdir: Path, options: JobOptions, events: Events,
                pool: WorkerPool | None, t_start: float) -> dict[str, Any]:
    """run_upscale_job once the output's lock is held."""
    from vsr.media.assemble import stale_part_files

    for path, pid in stale_part_files(dst):  # ours to remove: we hold the output's lock
        try:
            path.unlink()
        except OSError as err:
            log.warning("cannot remove stale partial output %s: %s", path, err.strerror or err)
            continue
        log.warning("removed stale partial output %s (its process %d is gone)", path, pid)
        events.emit("stale_part_removed", path=str(path), pid=pid)

    from vsr.media.probe import damage_message, probe
    from vsr.media.segments import plan_segments

    info = probe(src)
    if info.damage:  # the demuxer lost data: frames may be gone without any decoder noticing
        if options.on_corrupt == "fail":
            raise InputError(damage_message(info))
        log.warning("%s: container damaged, frames may be missing: %s", src, "; ".join(info.damage))
        events.emit("input_damaged", input=str(src), messages=info.damage)
    # The digest is needed only for the output's tag: a multi-GB master on network storage hashes
    # while Ray starts and the workers run, not before the job starts
    source_digest = _Background(content_digest, src)
    # bad options: fail before Ray (NVENC too, where the workers run on this machine)
    fits, problems = encoders_for_file(info, dst, options.encode, options.encoders(),
                                       local=workers_are_local(options.address))
    if not fits:
        raise problems[0]
    segments = plan_segments(info, options.segment_seconds)
    total_frames = sum(s.frame_count for s in segments)
    events.emit("job_start", input=str(src), output=str(dst), frames=total_frames,
                segments=len(segments), model=options.model)
    scan_repeated = _scan_input(src, info, options) if options.scan else []

    with ExitStack() as stack:
        shared_pool = pool is not None  # batch mode: the workers go on to the next file
        if pool is None:
            stack.enter_context(RaySession(options.address))
            pool = stack.enter_context(WorkerPool(options, events))
        import ray

        info_ref = ray.put(info)
        first = pool.workers[0]
        # every slot busy: a GPU worker runs pool.segments_per_worker segments at once
        slots = len(pool.workers) * pool.segments_per_worker
        finer = enough_segments(info, segments, slots)
        if len(finer) != len(segments):
            log.info("%d segment(s) for %d worker slot(s): re-planned into %d shorter ones",
                     len(segments), slots, len(finer))
            segments = finer
            events.emit("segments_planned", segments=len(segments), workers=len(pool.workers))
        wanted = options.encoders()[0]
        options, nvenc = choose_encoder(options, pool)
        if options.encode.get("codec") != wanted:
            log.warning("%s does not open on every worker: encoding with %s", wanted, options.encode["codec"])
            events.emit("encoder_fallback", wanted=wanted, used=options.encode["codec"])
        _, encode, plan, settings = plan_output(src, dst, options, first.info, info, nvenc=nvenc)
        picture = plan.to_dict()
        out_size = plan.out_size
        if plan.plan is not None and (options.picture or plan.plan.deinterlace):
            for line in plan.plan.describe().splitlines():  # what auto-detection decided, for the log
                log.info("%s", line)
        fingerprint = {
            "vsr": __version__, "input": input_identity(src), **settings,
            "segments": [s.to_dict() for s in segments], "segment_suffix": SEGMENT_SUFFIX,
        }
        resumed = _resumed_plan(workdir, fingerprint, segments, total_frames) if options.resume else segments
        if resumed is not segments:
            segments = resumed
            fingerprint["segments"] = [s.to_dict() for s in segments]
            events.emit("segments_planned", segments=len(segments), workers=len(pool.workers), resumed=True)
        manifest = Manifest.open(workdir, fingerprint, resume=options.resume)
        reused = sorted(i for i in manifest.segments if i < len(segments))
        run_no = len(manifest.history) + 1
        manifest.start_run({"run": run_no, "started": time.time(), "reused": reused})
        for i in reused:
            events.emit("segment_reused", index=i, frames=manifest.segments[i]["frames"])

        task_base = {
            "input": str(src.absolute()), "encode": encode.to_dict(), "out_size": list(out_size),
            "picture": options.picture, "on_corrupt": options.on_corrupt,
            "chunk_frames": options.chunk_frames, "reuse_repeats": options.reuse_repeats,
            "job_token": uuid.uuid4().hex,  # names this run's segments for SegmentWorker.cancel
        }
        todo = [s for s in segments if not manifest.is_done(s.index)]
        out_frames = total_frames * (2 if plan.field_rate else 1)  # field rate: two per source frame
        events.bar_open(out_frames, desc=src.name)
        try:
            stats = _run_segments(pool, todo, task_base, info_ref, manifest, run_no, events, options,
                                  done_frames=sum(manifest.segments[i]["frames"] for i in reused),
                                  shared_pool=shared_pool)
        finally:
            events.bar_close()

    from vsr.media.assemble import assemble

    tag = output_tag(settings, source_digest.result())
    events.emit("assemble", segments=len(segments), output=str(dst))
    report = assemble(manifest.segment_paths(len(segments)), src, dst, info, encode,
                      scale=plan.display_scale, picture=plan.plan,
                      job_tag=job_tag_text(tag, __version__))
    report.raise_if_failed()
    repeated = sorted(set(scan_repeated) | {p for r in manifest.segments.values() for p in r.get("repeated", [])})
    seconds = time.perf_counter() - t_start
    tb = info.video.time_base
    summary = {
        "input": str(src), "output": str(dst.absolute()), "model": first.info["model"],
        "width": out_size[0], "height": out_size[1], "frames": out_frames, "source_frames": total_frames,
        "segments": len(segments), "segments_reused": len(reused), "segments_computed": len(todo),
        "retries": stats["retries"], "workers_lost": stats["lost"], "nodes": stats["nodes"],
        "seconds": round(seconds, 3), "fps": round(total_frames / seconds, 3) if seconds else None,
        "repeated_frames": [{"pts": p, "time": round(float(p * tb), 6)} for p in repeated],
        # frames identical to their predecessor whose output was re-used (vsr.engine.repeats)
        "identical_frames_reused": sum(int(r.get("identical_reused", 0)) for r in manifest.segments.values()),
        "picture": picture, "encode": encode.to_dict(), "workdir": str(workdir),
        "container_damage": info.damage,
        "settings_fingerprint": settings_fingerprint(settings),
        "output_tag": tag,
        "verify": report.to_dict(),
    }
    if not options.keep_workdir:
        clear_workdir(workdir)  # the lock file last, by OutputLock on release
    events.emit("job_done", **{k: v for k, v in summary.items() if k != "verify"}, verified=report.ok)
    return summary


def _resumed_plan(workdir: Path, fingerprint: dict[str, Any], segments: list, total_frames: int) -> list:
    """The previous run's segments when only they differ from this run's plan (a short video
    re-planned for other worker slots): finished ones are then re-used, not redone."""
    from vsr.media.segments import Segment

    previous = Manifest.previous_plan(workdir, fingerprint)
    if previous is None or previous == fingerprint["segments"]:
        return segments
    try:
        old = [Segment.from_dict(d) for d in previous]
    except (KeyError, TypeError, ValueError):
        return segments
    if [s.index for s in old] != list(range(len(old))) or sum(s.frame_count for s in old) != total_frames:
        return segments
    log.info("resuming with the previous run's plan of %d segment(s) (this run would plan %d)",
             len(old), len(segments))
    return old


class _Background:
    """fn(*args) in a daemon thread (an interrupted job does not wait for it); result() joins
    and returns its value or raises its exception."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True,
                                        name=f"vsr-{getattr(fn, '__name__', 'task')}")
        self._thread.start()

    def _run(self, fn: Any, args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to result()
            self._error = err

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _scan_input(src: Path, info: Any, options: JobOptions) -> list[int]:
    """Fast decode-only pass: fail before any inference on a corrupt frame (or list the
    frames that will be repeated with on_corrupt=repeat-previous)."""
    from vsr.media import decode as media_decode

    scan = getattr(media_decode, "scan_decodable", None)
    if scan is None:
        return []
    report = scan(src, info)
    bad = list(report.bad_pts)
    if bad and options.on_corrupt == "fail":
        t = report.bad_times[0]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise InputError(f"{src}: corrupt video frame at {t:.3f} s (pts {bad[0]}){more}; "
                         "use --on-corrupt repeat-previous to replace such frames with the previous good one")
    return bad


def _segment_range(seg: Any) -> str:
    return f"segment {seg.index} ({_hms(seg.start_time)}-{_hms(seg.end_time)})"


def _hms(t: float) -> str:
    h, rem = divmod(max(0.0, t), 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):d}:{int(m):02d}:{s:06.3f}"


def _is_worker_death(err: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

    return isinstance(err, (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError))


def _run_segments(pool: WorkerPool, todo: list[Any], task_base: dict[str, Any], info_ref: Any,
                  manifest: Manifest, run_no: int, events: Events, options: JobOptions,
                  *, done_frames: int, shared_pool: bool = False) -> dict[str, Any]:
    """Feed segments to idle worker slots (pool.segments_per_worker in flight per worker, so
    memory stays bounded and a slow worker never hoards work), record each result in the
    manifest, retry lost ones."""
    import ray

    pending = deque(todo)
    attempts: dict[int, int] = {}
    in_flight: dict[Any, tuple[Worker, Any]] = {}
    slots = pool.segments_per_worker
    idle: deque[Worker] = deque(w for _ in range(slots) for w in pool.workers)
    # workers already replaced (kept referenced, so that their id()s stay theirs): their other
    # segments fail too, and no slot of theirs goes back to idle
    lost: dict[int, Worker] = {}
    stats = {"retries": 0, "lost": 0, "nodes": set()}
    last_poll = 0.0
    try:
        while pending or in_flight:
            while pending and idle:
                w, seg = idle.popleft(), pending.popleft()
                task = dict(task_base, segment=seg.to_dict(),
                            seg_path=_seg_path(manifest.workdir, seg))
                ref = w.handle.process.remote(task, info_ref)
                in_flight[ref] = (w, seg)
                attempts[seg.index] = attempts.get(seg.index, 0) + 1
                events.emit("segment_start", index=seg.index, frames=seg.frame_count, worker=w.name,
                            pid=w.info.get("pid"), node_id=w.info.get("node_id"),
                            attempt=attempts[seg.index], start_time=seg.start_time, end_time=seg.end_time)
            if not in_flight:
                raise JobError(f"no worker left to run {_segment_range(pending[0])}")
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=STATUS_POLL_S)
            for ref in ready:
                w, seg = in_flight.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as raw:  # noqa: BLE001 - sorted below into death / user error / retry
                    err = unwrap_ray_error(raw)
                    if isinstance(err, VsrError):
                        raise err from None  # corrupt input, disk full, ...: retrying cannot help
                    death = _is_worker_death(raw)
                    if attempts[seg.index] > options.max_retries:
                        raise JobError(f"{_segment_range(seg)} failed after {attempts[seg.index]} attempts: "
                                       f"{_brief(err)}") from None
                    stats["retries"] += 1
                    events.emit("segment_retry", index=seg.index, worker=w.name, reason=_brief(err),
                                worker_died=death, attempt=attempts[seg.index])
                    log.warning("%s: %s on %s; retrying", _segment_range(seg), _brief(err), w.name)
                    pending.appendleft(seg)
                    if death:
                        if id(w) not in lost:
                            # its slots go to a fresh actor (once, however many of its segments
                            # fail with it); the segments go to whichever slot is idle first
                            lost[id(w)] = w
                            stats["lost"] += 1
                            idle = deque(x for x in idle if x is not w)
                            new = pool.replace(w)
                            codec = task_base["encode"].get("codec")
                            if new is not None and not worker_opens(new, codec):
                                # Ray placed it on a machine without this job's NVENC encoder
                                log.warning("%s cannot open %s: it gets no segment of this job", new.name, codec)
                                new = None
                            if new is not None:
                                idle.extend([new] * slots)
                    elif id(w) not in lost:
                        idle.append(w)
                    continue
                rec.update(run=run_no, worker=w.name)
                manifest.record(seg.index, rec)
                stats["nodes"].add(rec.get("node_id"))
                done_frames += rec["frames"]
                events.bar_set(done_frames)
                events.emit("segment_done", index=seg.index, frames=rec["frames"], seconds=rec["seconds"],
                            identical_reused=rec.get("identical_reused", 0), worker=w.name, pid=rec.get("pid"),
                            node_id=rec.get("node_id"), done_frames=done_frames)
                if id(w) not in lost:
                    idle.append(w)
            now = time.monotonic()
            if events.progress and in_flight and now - last_poll >= STATUS_POLL_S:
                last_poll = now
                events.bar_set(done_frames + _frames_in_progress(in_flight))
    except Exception:
        if shared_pool:
            # the job fails: its other segments stop too, so that the batch's next file does
            # not share the workers with work nobody will use (an own pool is killed instead)
            _cancel(in_flight, task_base["job_token"])
        raise
    stats["nodes"] = sorted(n for n in stats["nodes"] if n)
    return stats


CANCEL_WAIT_S = 30.0  # how long a failing job waits for its other segments to stop


def _seg_path(workdir: Path, seg: Any) -> str:
    return str(workdir / f"seg_{seg.index:05d}{SEGMENT_SUFFIX}")


def _cancel(in_flight: dict[Any, tuple[Worker, Any]], job_token: str) -> None:
    """Ask the workers to stop this job's segments and wait (bounded) until they have."""
    import ray

    if not in_flight:
        return
    workers = {id(w): w for w, _ in in_flight.values()}
    calls = []
    for w in workers.values():
        try:
            calls.append(w.handle.cancel.remote(job_token))
        except Exception as err:  # noqa: BLE001 - a dead worker: nothing to stop there
            log.debug("cancel on %s: %s", w.name, err)
    refs = list(in_flight) + calls
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
    for ref in ready:  # fetched, so that Ray does not report them as unhandled errors
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - SegmentCancelled, or a worker that died meanwhile
            pass


def _frames_in_progress(in_flight: dict[Any, tuple[Worker, Any]]) -> int:
    import ray

    busy = {id(w): w for w, _ in in_flight.values()}  # a worker with two segments: asked once
    refs = [w.handle.status.remote() for w in busy.values()]
    try:
        return sum(s["frames"] for s in ray.get(refs, timeout=2.0))
    except Exception:  # a worker just died; the main loop will see it
        return 0


def _brief(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return f"{type(err).__name__}: {text}"[:300]
