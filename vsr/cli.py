"""The `vsr` command.

Each sub-command has an `_add_<name>` function that declares its arguments and a
`_cmd_<name>` handler that calls into the library. Handlers import lazily so that
`vsr --help` and `vsr probe` stay fast (no torch, no Ray). Every VsrError becomes
one line on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import threading
from typing import Any, Callable, NoReturn, Sequence

from vsr import __version__
from vsr.errors import EXIT_INTERRUPTED, InputError, InternalError, VsrError

log = logging.getLogger("vsr")


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout (machine-readable output for --json)."""
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


# ---------------------------------------------------------------- models
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from vsr.weights.zoo import list_models

    entries = list_models()
    if args.json:
        print_json(entries)
        return 0
    print(f"{'name':<32} {'family':<11} {'arch':<16} {'scale':>5} {'denoise':<12} {'params':>10} "
          f"{'licence':<12} {'speed':<11} weights")
    for e in entries:
        params = f"{e['params']:,}" if e.get("params") else "-"
        scale = "any" if e.get("any_scale") else e["scale"]
        print(f"{e['name']:<32} {e['family']:<11} {e['arch']:<16} {scale:>5} {e['denoise']:<12} {params:>10} "
              f"{e['licence']:<12} {e['speed'] or '-':<11} {e['source']}")
    print("speed: frames/s on 320x240 input, fp32, whole frames, on a shared 2-core AMD EPYC (docs/benchmarks.md)")
    return 0


# ---------------------------------------------------------------- image
TILE_HELP = ("tile size in input pixels (0 = automatic: whole frames, or exact cache-sized tiles for SRVGG "
             "models on the CPU)")


def _add_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image", help="upscale one image (PNG/JPEG/WebP)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("-m", "--model", default="realesrgan-x4plus", help="zoo name or weight file")
    p.add_argument("--outscale", type=float, default=None, help="output scale (default: the model's)")
    p.add_argument("--tile", type=int, default=0, help=TILE_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--colour-fix", action=argparse.BooleanOptionalAction, default=True, dest="colour_fix",
                   help="keep the source's low-frequency colour: GAN models shift tones (default: on)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=_cmd_image)


def _cmd_image(args: argparse.Namespace) -> int:
    from vsr.job.image import upscale_image_file

    summary = upscale_image_file(
        args.input, args.output, model=args.model, outscale=args.outscale, tile=args.tile,
        device=args.device, precision=args.precision, colour_fix=args.colour_fix,
    )
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {summary['output']} ({summary['width']}x{summary['height']}, "
              f"model {summary['model']}, {summary['seconds']:.2f} s)")
    return 0


# ---------------------------------------------------------------- probe
def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="describe a media file's streams, timing and colour")
    p.add_argument("input")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--scan", action="store_true",
                   help="also decode every video frame and list corrupt ones (exit 3 if any)")
    p.add_argument("--pts", action="store_true", help="with --json: every frame's pts")
    p.set_defaults(handler=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from vsr.job.remote import local_copies

    with local_copies(args.input) as (source,):  # an object: probing reads all of it, once
        return _probe_file(args, source)


def _probe_file(args: argparse.Namespace, source: Any) -> int:
    from vsr.media.probe import damage_message, probe

    info = probe(source)
    if source != args.input:
        info.path = args.input  # an object's name, not its local copy's
    scan = None
    if args.scan:
        from vsr.media.decode import scan_decodable

        scan = scan_decodable(source, info)
    if args.json:
        d = info.to_dict(with_pts=args.pts)
        if scan is not None:
            d["scan"] = scan.to_dict()
        print_json(d)
    else:
        print(info.describe())
        if scan is not None:
            bad = ", ".join(f"{t:.3f} s" for t in scan.bad_times[:10])
            print(f"scan: {scan.frames}/{scan.expected} frames decode"
                  + (f"; corrupt or missing at {bad}" if bad else ""))
    if scan is not None:
        scan.raise_if_failed()
        if info.damage:
            raise InputError(damage_message(info))
    return 0


# ---------------------------------------------------------------- upscale / run / batch (video jobs)
def _add_job_options(p: argparse.ArgumentParser, *, model_default: str | None = None) -> None:
    """Options shared by `upscale`, `run` and `batch` (None = not given: `run` keeps the spec's)."""
    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", default=model_default,
                   help="zoo name or weight file (default: realesr-animevideov3-x2)")
    g.add_argument("--outscale", type=float, default=None, help="output scale (default: the model's)")
    g.add_argument("--tile", type=int, default=None, help=TILE_HELP)
    g.add_argument("--tile-pad", type=int, default=None, dest="tile_pad",
                   help="tile overlap in input pixels (default: what the model needs for seamless tiles)")
    g.add_argument("--batch", type=int, default=None, dest="batch_size", help="frames per inference batch")
    g.add_argument("--precision", default=None, choices=["auto", "fp32", "fp16", "bf16"])
    g.add_argument("--device", default=None, help="auto, cpu or cuda (per worker)")
    g.add_argument("--colour-fix", action=argparse.BooleanOptionalAction, default=None, dest="colour_fix",
                   help="keep the source's low-frequency colour: GAN models shift tones (default: on)")
    g.add_argument("--reuse-repeats", action=argparse.BooleanOptionalAction, default=None, dest="reuse_repeats",
                   help="a frame identical to the one before it (held drawings, title cards, static "
                        "shots) gets that frame's output instead of being computed again: the same "
                        "output, faster (default: on)")
    g.add_argument("--state-period", type=int, default=None, dest="state_period",
                   help="recurrent models (AnimeSR): restart the state every N frames, so that any "
                        "split into segments gives the same frames (default 0: never, as upstream)")
    g.add_argument("--temporal", default=None, choices=["exact", "off", "stable"],
                   help="exact: the parts of a frame whose source pixels (with the model's reach) "
                        "did not change keep the previous frame's output, computed once: the same "
                        "output, faster on still pictures; stable: also the parts whose source "
                        "changed only within its noise (grain, compression): steadier, not the "
                        "per-frame output; off: every frame run whole (default: exact)")
    g = p.add_argument_group("encoding (defaults keep the input's bit depth and colour)")
    g.add_argument("--codec", default=None,
                   help="e.g. libx264, libx265, ffv1, prores_ks, h264_nvenc; auto: as if not given")
    g.add_argument("--crf", type=int, default=None)
    g.add_argument("--preset", default=None)
    g.add_argument("--pix-fmt", default=None, dest="pix_fmt",
                   help="output pixel format (one below the input's bit depth lowers it, as asked)")
    g.add_argument("--drop-alpha", action="store_true", default=None, dest="drop_alpha",
                   help="encode a video with an alpha channel without it (by default its alpha is upscaled "
                        "too and kept: .webm VP9, .mov ProRes 4444, .mkv FFV1; other outputs are refused)")
    g = p.add_argument_group("job")
    g.add_argument("--segment-seconds", type=float, default=None,
                   help="target segment length; segments start at keyframes (default 20)")
    g.add_argument("--chunk-frames", type=int, default=None, help="frames per decode/inference chunk (default 8)")
    g.add_argument("--on-corrupt", choices=["fail", "repeat-previous"], default=None,
                   help="a corrupt frame fails the job (default) or is replaced by the previous good one")
    g.add_argument("--no-scan", action="store_false", dest="scan", default=None,
                   help="skip the fast decode pass that finds corrupt frames before inference")
    g.add_argument("--workdir", default=None, help="segment files and manifest (default: beside the output)")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="re-use finished segments of an interrupted run (default: on)")
    g.add_argument("--keep-workdir", action="store_true", default=None, help="keep segments after success")
    g = p.add_argument_group("cluster")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (host:port, auto, ray://...; default RAY_ADDRESS, else a "
                        "local loopback-only instance)")
    g.add_argument("--workers", type=int, default=None, help="actors (default: one per GPU, or one on CPU)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="e.g. 0.5 runs two workers per GPU")
    g.add_argument("--segments-per-worker", type=int, default=None,
                   help="segments each worker runs at once (default 2 on a GPU, so that two encoders keep "
                        "up with it; 1 on the CPU)")
    g.add_argument("--max-retries", type=int, default=None, help="attempts per segment after a failure (default 2)")
    _add_picture_options(p, defaults=False)
    p.add_argument("--json", action="store_true", help="JSON Lines events and summary on stdout")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "openjd", "none"],
                   help="bar: a progress bar on stderr; openjd: Open Job Description progress and status "
                        "lines on stdout, for render farms; auto (default): openjd inside an OpenJD session, "
                        "else the bar (none with --json or --quiet)")
    p.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="plan the job (every check and decision, no frame upscaled), print the plan, stop")


_JOB_FIELDS = ("model", "outscale", "tile", "tile_pad", "batch_size", "precision", "device", "colour_fix",
               "reuse_repeats", "state_period", "temporal", "segment_seconds",
               "chunk_frames", "on_corrupt", "scan", "workdir", "resume", "keep_workdir", "address",
               "workers", "gpus_per_worker", "segments_per_worker", "max_retries")
_PICTURE_FIELDS = ("deinterlace", "deinterlace_rate", "keep_sar", "target", "crop", "deinterlacer")


def _job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The JobOptions fields given on the command line (absent ones are left out)."""
    out = {k: getattr(args, k) for k in _JOB_FIELDS if getattr(args, k, None) is not None}
    encode = {k: getattr(args, k) for k in ("codec", "crf", "preset", "pix_fmt", "drop_alpha")
              if getattr(args, k, None) is not None}
    if encode.get("codec") == "auto":  # a farm template passes its Encoder parameter's default
        del encode["codec"]
    if encode:
        out["encode"] = encode
    picture = {k: getattr(args, k) for k in _PICTURE_FIELDS if getattr(args, k, None) not in (None, False)}
    if picture:
        out["picture"] = picture
    return out


def _job_events(args: argparse.Namespace) -> Any:
    from vsr.job.events import Events
    from vsr.job.openjd import OpenJDProgress

    mode = _progress_mode(args)
    view = OpenJDProgress(sys.stdout) if mode == "openjd" else mode == "bar"
    return Events(json_stream=sys.stdout if args.json else None, progress=view)


def _progress_mode(args: argparse.Namespace) -> str:
    """--progress resolved: auto is none with --json (stdout holds only the events), openjd inside an
    OpenJD session (a render farm's task reads stdout), else the bar unless --quiet."""
    from vsr.errors import UsageError
    from vsr.job.openjd import in_openjd_session

    mode = getattr(args, "progress", "auto")
    if mode == "openjd" and args.json:
        raise UsageError("--progress openjd and --json both write to stdout; choose one")
    if mode != "auto":
        return mode
    if args.json:
        return "none"
    if in_openjd_session():
        return "openjd"
    return "none" if args.quiet else "bar"


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler cancelling the job) and SIGHUP stop like Ctrl-C: workers killed, nothing half-written.

    The request is remembered (runtime.request_stop): errors that follow it (Ray's daemons
    killed by the same group-wide signal) still end as an interruption (exit 130), not as a
    failed job. Repeated SIGHUPs are one hang-up (the shell and the kernel each send one) and a
    second SIGTERM within seconds is the same cancel: both leave the clean-up running. A SIGTERM
    later than that means "stop now": exit 130 at once (finished segments stay for a rerun).
    """
    import signal
    import time

    from vsr.cluster.runtime import forget_stop_requests, request_stop

    forget_stop_requests()  # this command's stops only (main may run again in one process)
    first_stop: list[float] = []

    def _raise(signum: int, frame: Any) -> None:
        if request_stop(signum):
            first_stop.append(time.monotonic())
            raise KeyboardInterrupt
        if signum != signal.SIGTERM or (first_stop and time.monotonic() - first_stop[0] < 3.0):
            return
        _say("vsr: stopping at once (second stop signal)")
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGTERM, _raise)
    # A closed terminal or dropped ssh session (SIGHUP) is the same request; under nohup the
    # signal is ignored on purpose, so it stays ignored.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise)


class _DropWhenReaderGone:
    """A text stream that drops output once its reader is gone (EPIPE: a closed pipe; EIO: a
    hung-up terminal) instead of raising: a job's outcome and exit code must not depend on
    whether anyone still reads its messages."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._lost = False

    def _lose(self, err: OSError) -> None:
        if err.errno not in (errno.EPIPE, errno.EIO):
            raise err
        self._lost = True
        try:  # the interpreter flushes the real stream at exit: let that succeed too
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text: str) -> int:
        if not self._lost:
            try:
                return self._stream.write(text)
            except OSError as err:
                self._lose(err)
        return len(text)

    def flush(self) -> None:
        if not self._lost:
            try:
                self._stream.flush()
            except OSError as err:
                self._lose(err)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _run_job(args: argparse.Namespace, events: Any, work: Callable[[], Any]) -> Any:
    """Run a job; with --json a failure is also an event on stdout."""
    from vsr.cluster.runtime import stop_requested
    from vsr.job.events import JobFailed
    from vsr.storage.errorlog import internal_error

    _stop_on_sigterm()
    # --json: stdout holds only the events (the stream Events was made with). Anything else that
    # prints meanwhile (Ray reports a dead worker with print() on stdout) goes to stderr.
    shielded = sys.stdout
    if getattr(args, "json", False):
        sys.stdout = sys.stderr
    try:
        return work()
    except KeyboardInterrupt:
        events.emit(JobFailed(error="interrupted", exit_code=EXIT_INTERRUPTED, kind="KeyboardInterrupt"))
        raise
    except Exception as err:
        if stop_requested():  # asked to stop: whatever failed after that is the interruption
            events.emit(JobFailed(error="interrupted", exit_code=EXIT_INTERRUPTED, kind="KeyboardInterrupt"))
            raise KeyboardInterrupt from None
        failure = err if isinstance(err, VsrError) else internal_error(err)  # a bug: its log in the cache
        kind = "internal" if isinstance(failure, InternalError) else type(failure).__name__
        events.emit(JobFailed(error=str(failure), exit_code=failure.exit_code, kind=kind))
        if failure is err:
            raise
        raise failure from err
    finally:
        sys.stdout = shielded


def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="upscale one video file (Ray workers, resumable, verified)")
    p.add_argument("input")
    p.add_argument("output")
    _add_job_options(p)
    p.set_defaults(handler=_cmd_upscale)


def _cmd_upscale(args: argparse.Namespace) -> int:
    from vsr.cluster import run_upscale_job
    from vsr.job import JobOptions

    options = JobOptions(**_job_overrides(args))
    events = _job_events(args)
    if args.dry_run:
        plan = _run_job(args, events, lambda: _dry_plan(args.input, args.output, options))
        _print_plans(args, [plan])
        return 0
    s = _run_job(args, events, lambda: run_upscale_job(args.input, args.output, options, events=events))
    if not args.json:
        reused = f", {s['segments_reused']} segment(s) re-used" if s["segments_reused"] else ""
        if s.get("identical_frames_reused"):
            reused += f", {s['identical_frames_reused']} frame(s) identical to the one before re-used"
        if s.get("tiles_reused"):
            reused += f", {100 * s['tiles_reused'] / s['tiles']:.0f} % of tiles unchanged and re-used"
        print(f"wrote {s['output']} ({s['width']}x{s['height']}, {s['frames']} frames, model {s['model']}, "
              f"{s['seconds']:.1f} s, {s['fps']:.1f} frames/s{reused}; verified)")
        for r in s["repeated_frames"]:
            print(f"  repeated corrupt frame at {r['time']:.3f} s (pts {r['pts']})")
    return 0


def _dry_plan(input: str, output: str, options: Any) -> Any:
    """The job's plan as the run would make it before starting Ray (vsr.job.plan_job)."""
    from vsr.job.options import workers_are_local
    from vsr.job.plan import pre_start_facts
    from vsr.job.remote import plan_at

    return plan_at(input, output, options, pre_start_facts(options, local=workers_are_local(options.address)))


def _print_plans(args: argparse.Namespace, plans: list[Any]) -> None:
    """--dry-run: each plan as text, or with --json one JSON document (the plans in full)."""
    if not plans:
        print("no input to plan")
        return
    if args.json:
        print_json(plans[0].to_dict() if len(plans) == 1 else [p.to_dict() for p in plans])
        return
    for n, plan in enumerate(plans):
        if n:
            print()
        print(plan.describe())


def _print_batch(summary: dict[str, Any]) -> None:
    for r in summary["results"]:
        detail = r.get("error") or r.get("reason") or f"{r.get('frames')} frames, {r.get('fps')} frames/s"
        print(f"{r['status']:<8} {r['input']} -> {r['output']}  ({detail})")
    print(f"{summary['files']} file(s): {summary['done']} done, {summary['skipped']} skipped, "
          f"{summary['failed']} failed, {summary['seconds']:.1f} s"
          + (f"; report {summary['report']}" if summary.get("report") else ""))


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a job spec (TOML): inputs, outputs, model, encode, cluster")
    p.add_argument("jobspec", help="the job's TOML file (see pipelines/)")
    p.add_argument("--input", action="append", default=None, dest="inputs",
                   help="input path or glob instead of the spec's [job] inputs (repeatable)")
    p.add_argument("--output-dir", default=None, help="instead of the spec's [job] output_dir")
    p.add_argument("--report", default=None, help="write the JSON summary here")
    p.add_argument("--check", action="store_true", help="validate the spec and list the files, run nothing")
    p.add_argument("--redo", action="store_true",
                   help="redo outputs that already exist (like [job] skip_existing = false)")
    _add_shard_option(p)
    _add_job_options(p)
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from vsr.cluster import run_batch
    from vsr.job.inputs import take_shard
    from vsr.job.spec import load_jobspec, resolve_codecs
    from vsr.errors import JobError

    events = _job_events(args)

    def load() -> Any:
        overrides = _job_overrides(args)
        spec = load_jobspec(args.jobspec, inputs=args.inputs, output_dir=args.output_dir,
                            overrides={k: v for k, v in overrides.items() if k != "encode"})
        if "encode" in overrides:
            spec.options.encode.update(overrides["encode"])
            if "codec" in overrides["encode"]:
                spec.codecs = [overrides["encode"]["codec"]]
        if args.shard is not None:
            spec.items = take_shard(spec.items, args.shard)
        resolve_codecs(spec)
        return spec

    spec = _run_job(args, events, load)  # --json: a bad spec is a job_failed event too
    if args.check:
        return _print_check(args, spec)
    if args.dry_run:
        runnable = [i for i in spec.items if i.failure is None and not i.not_input]
        plans = _run_job(args, events, lambda: [_dry_plan(i.input, i.output, i.options_for(spec.options))
                                                for i in runnable])
        _print_plans(args, plans)
        return 0
    report = args.report or spec.report
    summary = _run_job(args, events, lambda: run_batch(spec.items, spec.options, events=events,
                                                       skip_existing=spec.skip_existing and not args.redo,
                                                       report_path=report))
    if not args.json:
        _print_batch(summary)
    return JobError.exit_code if summary["failed"] else 0


def _print_check(args: argparse.Namespace, spec: Any) -> int:
    """vsr run --check: every file with its output and encoders (or why it is unusable)."""
    listing = [{"input": str(i.input), "output": str(i.output), "encode": i.encode, "codecs": i.codecs,
                "error": str(i.failure) if i.failure is not None else None} for i in spec.items]
    bad = [i.failure for i in spec.items if i.failure is not None]
    if args.json:
        print_json({"jobspec": str(spec.path), "files": listing, "options": spec.options.to_dict(),
                    "valid": not bad})
    else:
        for it in listing:
            encoders = " or ".join(it["codecs"] or [])  # more than one: the workers decide
            print(f"{it['input']} -> {it['output']}" + (f"  (error: {it['error']})" if it["error"]
                                                       else f"  ({encoders})" if encoders else ""))
        print(f"{spec.path}: " + (f"{len(bad)} of {len(listing)} input(s) unusable" if bad
                                  else f"valid, {len(listing)} file(s)"))
    return bad[0].exit_code if bad else 0


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="upscale every video in a folder; skip verified outputs; report")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    p.add_argument("--name", default="{stem}{ext}", help="output name pattern: {stem}, {ext}, {name}")
    p.add_argument("--recursive", action="store_true", help="also sub-folders (mirrored in the output)")
    p.add_argument("--redo", action="store_false", dest="skip_existing",
                   help="redo outputs that already exist, also ones vsr did not make")
    p.add_argument("--report", default=None, help="write the JSON summary here")
    _add_shard_option(p)
    _add_job_options(p)
    p.set_defaults(handler=_cmd_batch)


def _shard(text: str) -> tuple[int, int]:
    from vsr.errors import UsageError
    from vsr.job.inputs import parse_shard

    try:
        return parse_shard(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_shard_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="make only inputs K, K+N, K+2N, ... of the sorted list (a render farm's N tasks "
                        "each run one shard; N = the number of files gives a task per file)")


def _cmd_batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vsr.cluster import run_batch
    from vsr.job import JobOptions
    from vsr.job.inputs import plan_folder, take_shard
    from vsr.errors import JobError, OutputError
    from vsr.storage.uri import check_bucket, is_uri

    events = _job_events(args)

    def plan() -> Any:
        items = plan_folder(args.input_dir, args.output_dir, pattern=args.name, recursive=args.recursive)
        if args.shard is not None:
            items = take_shard(items, args.shard)
        try:
            if is_uri(args.output_dir):
                check_bucket(args.output_dir)  # a missing bucket: said before any work
            else:
                Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{args.output_dir}: cannot create the output folder: {err.strerror or err}") from None
        return items, JobOptions(**_job_overrides(args))

    items, options = _run_job(args, events, plan)  # --json: these failures are events too
    if args.dry_run:
        runnable = [i for i in items if i.failure is None and not i.not_input]
        _print_plans(args, _run_job(args, events, lambda: [_dry_plan(i.input, i.output, options) for i in runnable]))
        return 0
    summary = _run_job(args, events, lambda: run_batch(items, options, events=events,
                                                       skip_existing=args.skip_existing,
                                                       report_path=args.report))
    if not args.json:
        _print_batch(summary)
    return JobError.exit_code if summary["failed"] else 0


# ---------------------------------------------------------------- preview
def _add_picture_options(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """Archival picture flags (deinterlace, aspect, target size, crop), shared by preview and jobs.

    defaults=False leaves every flag None when not given (a job spec's [picture] table then holds).
    """
    g = p.add_argument_group("archival picture (deinterlace, aspect, size, crop)")
    g.add_argument("--deinterlace", default="auto" if defaults else None, choices=["auto", "on", "off"],
                   help="deinterlace before upscaling (auto: when the stream or its frames say interlaced)")
    g.add_argument("--deinterlace-rate", default="frame" if defaults else None, choices=["frame", "field"],
                   help="frame: 25i -> 25p; field: 25i -> 50p (one output frame per field)")
    g.add_argument("--deinterlacer", default="bwdif" if defaults else None, choices=["bwdif", "yadif"],
                   help="FFmpeg filter (default bwdif)")
    g.add_argument("--keep-sar", action="store_true", default=False if defaults else None,
                   help="keep the source's sample aspect ratio (default: square pixels at the display aspect)")
    g.add_argument("--target", default=None,
                   help="fit inside 720p, 1080p, 1440p, 2160p or WxH, keeping the display aspect")
    g.add_argument("--crop", default=None, help="auto (detect black borders / head-switching noise) or W:H:X:Y")


def _picture_options(args: argparse.Namespace):
    from vsr.media.picture import PictureOptions

    return PictureOptions(deinterlace=args.deinterlace, deinterlace_rate=args.deinterlace_rate,
                          keep_sar=args.keep_sar, target=args.target, crop=args.crop,
                          deinterlacer=args.deinterlacer)


def _add_preview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preview", help="contact sheet of source vs upscaled frames at chosen times")
    p.add_argument("input")
    p.add_argument("-m", "--model", default="realesr-animevideov3-x4", help="zoo name or weight file")
    p.add_argument("--at", required=True, help="comma-separated times, e.g. 00:00:05,00:01:10 or 5,70.5")
    p.add_argument("-o", "--output", default=None, help="sheet PNG (default: <input stem>_preview.png here)")
    p.add_argument("--clip", default=None, help="also write an upscaled clip of this length from the first time, e.g. 3s")
    p.add_argument("--clip-output", default=None, help="clip file (default: <sheet stem>_clip.mkv)")
    p.add_argument("--flicker", type=int, default=12, metavar="N",
                   help="plot the still-region flicker of N consecutive frames from the first time, source "
                        "(Lanczos) against the model, below the pictures (default 12; 0: no plot)")
    p.add_argument("--outscale", type=float, default=None, help="output scale (default: the model's)")
    p.add_argument("--tile", type=int, default=0, help=TILE_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--colour-fix", action=argparse.BooleanOptionalAction, default=True, dest="colour_fix",
                   help="keep the source's low-frequency colour: GAN models shift tones (default: on)")
    p.add_argument("--temporal", default="exact", choices=["exact", "off", "stable"],
                   help="the clip (--clip): reuse the output of unchanged parts of frames (default: exact)")
    _add_picture_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=_cmd_preview)


def _cmd_preview(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vsr.preview import parse_time, parse_times, render_preview

    output = args.output or f"{Path(args.input).stem}_preview.png"
    summary = render_preview(
        args.input, args.model, parse_times(args.at), output, picture=_picture_options(args),
        outscale=args.outscale, device=args.device, precision=args.precision, tile=args.tile,
        colour_fix=args.colour_fix, temporal=args.temporal, clip_seconds=parse_time(args.clip) if args.clip else None, clip_output=args.clip_output,
        flicker_frames=args.flicker,
    )
    if args.json:
        print_json(summary)
    else:
        w, h = summary["sheet_size"]
        print(f"wrote {summary['output']} ({w}x{h}, {len(summary['times'])} times, model {summary['model']}, "
              f"{summary['frames_decoded']} of {summary['frames_total']} frames decoded, {summary['seconds']:.2f} s)")
        if summary.get("flicker"):
            f = summary["flicker"]["still"]
            ratio = f"{f['ratio']:.2f}" if f["ratio"] is not None else "-"
            print(f"still-region flicker over {summary['flicker']['frames']} frames: {ratio}x the source's Lanczos")
        if "clip" in summary:
            print(f"wrote {summary['clip']['path']} ({summary['clip']['frames']} frames)")
    return 0


# ---------------------------------------------------------------- flicker
def _add_flicker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flicker", help="temporal stability of an upscaled video: still-region flicker, "
                                       "warping error (and tOF, PSNR/SSIM against a ground truth)")
    p.add_argument("source", help="the video that was upscaled")
    p.add_argument("output", help="its upscaled version (frames matched to the source's by time)")
    p.add_argument("--gt", default=None, metavar="HIGHRES",
                   help="ground-truth video at the output's size: adds tOF and PSNR/SSIM on Y")
    p.add_argument("--reference", default=None, metavar="UPSCALE",
                   help="compare against this upscale of the source (e.g. `vsr upscale -m lanczos` with the "
                        "output's codec) instead of vsr's Lanczos computed in memory")
    p.add_argument("--frames", type=int, default=None, help="only the output's first N frames")
    p.add_argument("--offset", type=float, default=0.0,
                   help="seconds added to the output's frame times to find the source's (default 0: "
                        "vsr keeps the source's times)")
    p.add_argument("--no-warping", action="store_false", dest="warping",
                   help="skip the warping error (optical flow): faster")
    p.add_argument("--json", action="store_true", help="machine-readable report (every frame's numbers)")
    p.set_defaults(handler=_cmd_flicker)


def _cmd_flicker(args: argparse.Namespace) -> int:
    from vsr.flicker import describe, measure_flicker

    report = measure_flicker(args.source, args.output, gt=args.gt, reference=args.reference, frames=args.frames,
                             offset=args.offset, warping=args.warping)
    if args.json:
        print_json(report)
    else:
        print(describe(report))
    return 0


# ---------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a generator (SRResNet/SRGAN, ESRGAN objectives)")
    p.add_argument("config", help="training config (TOML), e.g. pipelines/train_srresnet_x4.toml")
    p.add_argument("--data", help="folder of HR training images/videos (overrides data.train)")
    p.add_argument("--val", help="folder of held-out images (overrides data.val)")
    p.add_argument("--out", help="run folder for checkpoints, log and generator (overrides train.out)")
    p.add_argument("--max-steps", type=int, help="overrides train.max_steps")
    p.add_argument("--max-minutes", type=float,
                   help="training-time limit, counted across resumes like --max-steps (overrides train.max_minutes)")
    p.add_argument("--vgg", help="VGG-19 weight file (overrides loss.perceptual.vgg_weights)")
    p.add_argument("--init", help="start from a zoo model or weight file (overrides model.init)")
    p.add_argument("--device", help="auto, cpu or cuda:N (overrides train.device)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from vsr.train.config import load_config
    from vsr.train.trainer import train

    cfg = load_config(args.config, {
        "data.train": args.data, "data.val": args.val, "train.out": args.out,
        "train.max_steps": args.max_steps, "train.max_minutes": args.max_minutes,
        "loss.perceptual.vgg_weights": args.vgg, "train.device": args.device,
        "model.init": args.init,
    })
    summary = train(cfg, resume=args.resume, progress=not (args.json or args.quiet))
    if args.json:
        print_json(summary)
    else:
        val = (f", validation PSNR {summary['val_psnr']:.2f} dB (bicubic {summary['val_bicubic_psnr']:.2f})"
               if "val_psnr" in summary else "")
        print(f"trained {summary['steps_this_run']} steps (to step {summary['steps']}) in "
              f"{summary['seconds']:.0f} s on {summary['device']} {summary['precision']}{val}; "
              f"wrote {summary['generator']}")
    return 0


# ---------------------------------------------------------------- registry
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models,
    _add_image,
    _add_probe,
    _add_upscale,
    _add_run,
    _add_batch,
    _add_preview,
    _add_flicker,
    _add_train,
]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one line on stderr (exit 2), like every other vsr error,
    instead of the whole usage block; sub-commands inherit it."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("vsr").strip()
        self.exit(2, f"vsr: error: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = _Parser(prog="vsr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vsr {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vsr` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    if getattr(args, "json", False) and not args.verbose:
        level = max(level, logging.WARNING)  # stdout is for the JSON; keep stderr quiet too
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _DropWhenReaderGone(sys.stdout), _DropWhenReaderGone(sys.stderr)
    logging.basicConfig(level=level, format="vsr: %(message)s", stream=sys.stderr)
    saved_hook, threading.excepthook = threading.excepthook, _thread_died
    try:
        return int(args.handler(args) or 0)
    except InternalError as err:
        _say(f"vsr: {err}")
        return err.exit_code
    except VsrError as err:
        _say(f"vsr: error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _say("vsr: interrupted")
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - a bug: one line and a log file, never a traceback
        failure = _internal_error(err)
        _say(f"vsr: {failure}")
        return failure.exit_code
    finally:
        sys.stdout, sys.stderr = saved
        threading.excepthook = saved_hook


def _internal_error(err: BaseException) -> InternalError:
    """err as an InternalError, its traceback written to a log file in the cache directory."""
    from vsr.storage.errorlog import internal_error

    return internal_error(err)


def _thread_died(hook: threading.ExceptHookArgs) -> None:
    """An exception that ends one of vsr's threads: one line and a log file, not a traceback
    (the thread's owner sees that it stopped and fails the job its own way)."""
    if hook.exc_type is SystemExit or hook.exc_value is None:
        return
    log.error("thread %s: %s", hook.thread.name if hook.thread else "?", _internal_error(hook.exc_value))


def _say(line: str) -> None:
    """The last line on stderr; the exit code stands even when stderr is gone (closed pipe)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
