"""JobPlan: every decision about one file, made once on the driver before any frame is upscaled.

plan_job probes the input and takes every refusal and admission decision: the model and its
scale, the encoder and its options, what happens to each other stream (copy / convert / drop,
with the reason), the picture plan (deinterlace, crop, aspect, size, timing), corrupt frames
found by a decode-only scan, and the keyframe-aligned segments. After the plan exists nothing
refuses the file except a real I/O or decode failure. Workers receive the plan and decide
nothing about the file; what the workers can do comes in as plain data (WorkerFacts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsr import __version__
from vsr.errors import InputError, UsageError
from vsr.faults import maybe_fail
from vsr.job.codec import from_jsonable, to_jsonable
from vsr.job.encoders import encoder_for_workers, nvenc_candidates, resolve_encoders
from vsr.job.options import JobOptions
from vsr.job.temporal import WARMUP_FRAMES
from vsr.media.colour import has_alpha
from vsr.media.containers import VIDEO_CODECS, muxer_for
from vsr.media.decode import alpha_decoder
from vsr.media.encode import SEGMENT_SUFFIX, EncodeOptions, is_nvenc, source_alpha
from vsr.media.picture import PictureOptions, PicturePlan, plan_picture
from vsr.media.probe import MediaInfo, damage_message, probe
from vsr.media.segments import Segment, plan_segments
from vsr.media.streams import StreamPlan, plan_streams
from vsr.storage import uri as store
from vsr.storage.digests import input_identity, weights_identity
from vsr.storage.paths import check_paths, default_workdir

log = logging.getLogger("vsr")

PLAN_FORMAT = 1


@dataclass(frozen=True)
class WorkerFacts:
    """What the workers can do, as plain data from whoever runs them (job/ never asks Ray).

    slots: segments that run at once over all workers (a short video is cut finer so none
    idles). nvenc: the NVENC encoders that open on every worker; None: the workers run on this
    machine, which is asked directly.
    """

    slots: int = 1
    nvenc: frozenset[str] | None = None


@dataclass(frozen=True)
class ModelPlan:
    """The network and how to run it (the workers load `model`; precision "auto" is resolved per
    device by the engine: fp16 on CUDA, bf16 on CPUs with bf16 in hardware, else fp32)."""

    name: str
    model: str  # zoo name, or the weight file's absolute path
    arch: str
    model_scale: int
    scale: float
    outscale: float | None
    device: str
    precision: str
    tile: int
    tile_pad: int | None
    batch_size: int
    colour_fix: bool
    reuse_repeats: bool
    # a temporal (recurrent) model: its state restarts every state_period frames of the file (0:
    # never), and a segment first runs the frames from the restart before it (at most
    # warmup_frames; all of warmup_frames without a period) and decodes one after it
    # (vsr.job.temporal); 0 and 0 for per-frame models
    recurrent: bool = False
    warmup_frames: int = 0
    state_period: int = 0
    temporal: str = "exact"  # JobOptions.temporal: exact reuses unchanged parts of frames, off does not

    def upscaler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of vsr.engine.Upscaler."""
        return dict(model=self.model, device=self.device, precision=self.precision, tile=self.tile,
                    tile_pad=self.tile_pad, outscale=self.outscale, batch_size=self.batch_size,
                    colour_fix=self.colour_fix)


@dataclass(frozen=True)
class JobPlan:
    """One file's job, decided: frozen, typed and JSON-serialisable (to_dict / from_dict)."""

    source: str
    output: str
    workdir: str
    info: MediaInfo
    model: ModelPlan
    encode: EncodeOptions  # the encoder this job uses
    encoders: tuple[EncodeOptions, ...]  # every candidate that suits the file, preferred first
    streams: tuple[StreamPlan, ...]
    picture: PicturePlan
    segments: tuple[Segment, ...]
    chunk_frames: int
    on_corrupt: str
    corrupt_pts: tuple[int, ...]  # frames the scan found undecodable (repeated with repeat-previous)
    notes: tuple[str, ...]  # what the plan changed or cannot keep, said before any work
    settings: dict[str, Any]  # what decides the output's pictures and encoding (output_settings)
    # the output keeps the source's alpha channel (the encoder's pix_fmt has an alpha plane): the
    # workers decode it, upscale it with the same network and encode it beside the colour
    keep_alpha: bool = False
    # the video decoder the workers open by name (None: FFmpeg's default for the codec): libvpx's
    # for WebM VP8/VP9 alpha, which FFmpeg's own decoders ignore (vsr.media.decode.alpha_decoder)
    decoder: str | None = None

    # ------------------------------------------------------------ derived facts
    @property
    def out_size(self) -> tuple[int, int]:
        return tuple(self.picture.out_size)  # type: ignore[return-value]

    @property
    def display_scale(self) -> float:
        return self.picture.display_scale

    @property
    def field_rate(self) -> bool:
        return bool(self.picture.field_rate)

    @property
    def source_frames(self) -> int:
        return sum(s.frame_count for s in self.segments)

    @property
    def output_frames(self) -> int:
        return self.source_frames * (2 if self.field_rate else 1)

    def output_info(self) -> MediaInfo:
        """The MediaInfo of the frames this plan produces (timing and SAR after the picture plan)."""
        return self.picture.output_info(self.info)

    def settings_fingerprint(self) -> str:
        return settings_fingerprint(self.settings)

    def resume_fingerprint(self) -> dict[str, Any]:
        """What a finished segment of an earlier run must share with this plan to be re-used."""
        return {"vsr": __version__, "input": input_identity(self.source), **self.settings,
                "segments": [s.to_dict() for s in self.segments], "segment_suffix": SEGMENT_SUFFIX}

    def segment_path(self, segment: Segment) -> str:
        """Where a segment's file lives in the work directory (a URI when the work directory is one)."""
        name = f"seg_{segment.index:05d}{SEGMENT_SUFFIX}"
        return store.join(self.workdir, name) if store.is_uri(self.workdir) else str(Path(self.workdir) / name)

    # ------------------------------------------------------------ refinements (plain data in)
    def with_segments(self, segments: list[Segment] | tuple[Segment, ...]) -> "JobPlan":
        """The same plan cut into other segments (same frames)."""
        if sum(s.frame_count for s in segments) != self.source_frames:
            raise ValueError("a re-cut plan must hold the same frames")
        return dataclasses.replace(self, segments=tuple(segments))

    def for_workers(self, facts: WorkerFacts, answers: list[dict[str, bool]] | None = None,
                    names: list[str] | None = None) -> "JobPlan":
        """The plan for the workers that run it: segments cut finer for facts.slots, and the first
        encoder every worker runs (answers: each worker's {nvenc name: opens}; None: the
        encoder stays, as when this machine was asked while planning)."""
        plan = self.with_segments(enough_segments(self.info, list(self.segments), facts.slots))
        candidates = [e.codec for e in self.encoders]
        if answers is None or not any(is_nvenc(c) for c in candidates):
            return plan
        codec, _ = encoder_for_workers(candidates, answers, from_spec=len(candidates) > 1, names=names or [])
        chosen = next(e for e in self.encoders if e.codec == codec)
        if chosen == plan.encode:
            return plan
        return dataclasses.replace(plan, encode=chosen, settings=dict(plan.settings, encode=chosen.to_dict()))

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, **to_jsonable(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobPlan":
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a vsr job plan of format {PLAN_FORMAT}")
        return from_jsonable(cls, data)

    def describe(self) -> str:
        """The plan as text for people (vsr upscale --dry-run)."""
        from vsr.job.describe import describe_plan

        return describe_plan(self)


def plan_job(input: str | os.PathLike, output: str | os.PathLike, options: JobOptions, *,
             facts: WorkerFacts = WorkerFacts(), info: MediaInfo | None = None,
             picture: PicturePlan | None = None) -> JobPlan:
    """Decide everything about one job; raise a VsrError (one line) for anything refused.

    info: an already probed source; picture: an already made picture plan (vsr preview).
    """
    options = options.validate()
    src, dst = check_paths(input, output)
    maybe_fail("plan")
    from vsr.weights.zoo import describe_model

    card = describe_model(options.upscaler_kwargs()["model"], options.outscale, with_descriptor=False)
    info = info if info is not None else probe(src)
    notes: list[str] = []
    _admit_damage(info, options, notes)
    encoders = _encoders(info, dst, options, facts)
    streams = tuple(plan_streams(info, dst))
    scan = scan_source(src, info, options.on_corrupt) if options.scan else None
    corrupt = list(scan.bad_pts) if scan is not None else []
    if corrupt or info.damage:  # going on with repeat-previous: every decode must conceal alike
        info = dataclasses.replace(info, video=dataclasses.replace(info.video, decode_threads=1))
    if picture is None:  # the scan's frame sizes decide the picture size when it changes mid-stream
        why_not = cannot_follow_sizes(info, dst, options)
        if card.temporal and why_not is None:
            why_not = f"{card.name} is a recurrent model: its state needs frames of one size"
        picture = plan_picture(info, card.scale, PictureOptions.from_dict(options.picture or {}), scan=scan,
                               follow=why_not is None)
        if why_not is not None and len(getattr(scan, "frame_sizes", None) or []) > 1:
            notes.append(f"one output size for frames of several sizes: {why_not}")
    if picture.follows:  # the one encoder that changes the picture size in-stream
        encoders, _ = resolve_encoders(info, dst, options.encode, [FOLLOW_CODEC], nvenc=facts.nvenc)
    segments = enough_segments(info, plan_segments(info, options.segment_seconds), facts.slots)
    model = ModelPlan(
        name=card.name, model=options.upscaler_kwargs()["model"], arch=card.arch, model_scale=card.model_scale,
        scale=card.scale, outscale=options.outscale, device=options.device, precision=options.precision,
        tile=options.tile, tile_pad=options.tile_pad, batch_size=options.batch_size,
        colour_fix=options.colour_fix, reuse_repeats=options.reuse_repeats and not card.temporal,
        temporal=options.temporal, recurrent=card.temporal,
        warmup_frames=(options.state_period - 1 if options.state_period else WARMUP_FRAMES) if card.temporal else 0,
        state_period=options.state_period if card.temporal else 0)
    settings = output_settings(options, card.name, encoders[0].to_dict(), picture_settings(picture),
                               picture.out_size)
    keep_alpha = has_alpha(encoders[0].pix_fmt)
    _admit_temporal(card, picture, keep_alpha)
    if keep_alpha:
        notes.append(f"alpha channel ({source_alpha(info.video)}) kept: upscaled by the same network, "
                     f"encoded as {encoders[0].codec} {encoders[0].pix_fmt}")
    return JobPlan(
        source=str(src.absolute()), output=str(dst.absolute()), workdir=str(default_workdir(dst, options.workdir)),
        info=info, model=model, encode=encoders[0], encoders=tuple(encoders), streams=streams,
        picture=picture, segments=tuple(segments), chunk_frames=options.chunk_frames,
        on_corrupt=options.on_corrupt, corrupt_pts=tuple(corrupt), notes=tuple(notes), settings=settings,
        keep_alpha=keep_alpha, decoder=alpha_decoder(info.video) if keep_alpha else None)


def _admit_temporal(card: Any, picture: PicturePlan, keep_alpha: bool) -> None:
    """UsageError for what a recurrent model cannot run (yet): doubled field rates (the warm-up
    counts source frames) and alpha (its own recurrent run would be needed)."""
    if not card.temporal:
        return
    if picture.field_rate:
        raise UsageError(f"model {card.name} is recurrent: deinterlacing to the field rate is not supported "
                         "with it; deinterlace to the frame rate")
    if keep_alpha:
        raise UsageError(f"model {card.name} is recurrent: keeping an alpha channel is not supported with it; "
                         "encode without it (--drop-alpha)")


# The encoder whose streams change picture size in-stream: a new encoder opened at the new size
# writes on into the same stream, and players and FFmpeg decode each frame at its own size
# (libx264/libx265/libsvtav1/ffv1 keep their size in stream headers and do not).
FOLLOW_CODEC = "libvpx-vp9"


def cannot_follow_sizes(info: MediaInfo, dst: Path, options: JobOptions) -> str | None:
    """Why this job's output cannot follow a picture size that changes mid-stream (None: it can,
    by writing VP9). Only the user's own choice of encoder, a depth or alpha channel VP9 would
    not keep here, or a container without VP9 keep the single planned size."""
    other = [c for c in options.encoders() if c is not None and c != FOLLOW_CODEC]
    if other:
        return f"{other[0]} writes one picture size per stream"
    if info.video.bit_depth > 8:
        return f"the source is {info.video.bit_depth}-bit"
    if source_alpha(info.video) and not options.encode.get("drop_alpha"):
        return "the alpha channel is kept"
    muxer = muxer_for(dst)
    if FOLLOW_CODEC not in VIDEO_CODECS.get(muxer, ()):
        return f"{muxer} holds no VP9 (use .mkv, .webm or .mp4 to follow the sizes)"
    return None


def _admit_damage(info: MediaInfo, options: JobOptions, notes: list[str]) -> None:
    """A damaged container (frames may be gone without any decoder noticing): refused, unless
    the user goes on with what can be read (--on-corrupt repeat-previous)."""
    if not info.damage:
        return
    if options.on_corrupt == "fail":
        raise InputError(damage_message(info))
    notes.append(f"container damaged, frames may be missing: {'; '.join(info.damage)}")


def _encoders(info: MediaInfo, dst: Path, options: JobOptions, facts: WorkerFacts) -> list[EncodeOptions]:
    """The resolved encoder candidates; the first error when none suits the file."""
    candidates = options.encoders()
    nvenc = facts.nvenc
    fits, problems = resolve_encoders(info, dst, options.encode, candidates, nvenc=nvenc)
    if not fits:
        raise problems[0]
    return fits


def pre_start_facts(options: JobOptions, *, local: bool) -> WorkerFacts:
    """The facts before any worker runs: NVENC is checked on this machine when the workers run
    here (`local`), else every NVENC candidate is kept until the workers answer."""
    return WorkerFacts(slots=1, nvenc=None if local else nvenc_candidates(options.encoders()))


def scan_source(src: Path, info: MediaInfo, on_corrupt: str) -> Any:
    """Fast decode-only pass (vsr.media.decode.ScanReport): refuse a file with a corrupt frame
    before any inference (or list the frames repeated with on_corrupt=repeat-previous), and find
    the picture sizes when they change mid-stream."""
    from vsr.media.decode import scan_decodable

    report = scan_decodable(src, info)
    bad = list(report.bad_pts)
    if bad and on_corrupt == "fail":
        t = report.bad_times[0]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise InputError(f"{src}: corrupt video frame at {t:.3f} s (pts {bad[0]}){more}; "
                         "use --on-corrupt repeat-previous to replace such frames with the previous good one")
    return report


def enough_segments(info: MediaInfo, segments: list[Segment], slots: int) -> list[Segment]:
    """The segments, or a finer keyframe-aligned cut when a short video would leave slots idle.

    With fewer than two segments per slot the tail of the job runs on one slot while the others
    wait; shorter segments (>= 0.5 s) spread the frames over every slot.
    """
    if slots < 2 or len(segments) >= 2 * slots:
        return segments
    pts = info.video.frame_pts
    duration = float((pts[-1] - pts[0]) * info.video.time_base) if len(pts) > 1 else 0.0
    finer = plan_segments(info, max(0.5, duration / (2 * slots)))
    return finer if len(finer) > len(segments) else segments


# ---------------------------------------------------------------- settings and output tags
def picture_settings(picture: PicturePlan) -> dict[str, Any]:
    """The picture plan's part of the output settings (as vsr has always tagged outputs)."""
    plan = picture.to_dict()
    return {"out_size": list(picture.out_size), "display_scale": picture.display_scale,
            "field_rate": bool(picture.field_rate), "detected": dict(picture.detected or {}),
            "plan": plan}


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
        # a weight file is known by its content, not by its name or where it lies
        upscaler["model"] = model = "file"
    settings = {
        "model": model, "upscaler": upscaler, "weights": weights,
        "out_size": list(out_size), "encode": encode, "picture": picture, "on_corrupt": options.on_corrupt,
    }
    if options.state_period:  # only then: the settings of every other job stay as they were
        settings["state_period"] = options.state_period
    # exact and off give the same pictures (per-frame processing); stable does not
    if options.temporal == "stable":
        settings["temporal"] = "stable"
    return settings


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """Short stable hash of output_settings (canonical JSON)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def output_tag(settings: dict[str, Any], source_digest: str) -> str:
    """The job tag an output carries: 'SETTINGS.SOURCE', the settings fingerprint and the first
    16 hex digits of the source's content digest (a source re-exported under the same name makes
    its output stale even when the old output still verifies against it)."""
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
