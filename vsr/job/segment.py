"""run_segment: the one decode -> upscale -> encode path of vsr.

A Ray worker, `vsr preview`, the local runner (tests, benchmarks) all turn a segment of a
JobPlan into a segment file through this function. Decode, upscale and encode run in three
threads joined by bounded queues, so the device never waits on the codec and memory stays at
a few chunks of frames. The plan decides everything; this only follows it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vsr.engine.repeats import RepeatedFrames
from vsr.engine.reuse import ReusedTiles, ReuseGeometry
from vsr.engine.stable import StableTiles
from vsr.errors import InputError
from vsr.job.handover import StateHandover, plan_key
from vsr.job.plan import JobPlan
from vsr.job.temporal import context_segment, frame_index, restarts_state
from vsr.media.decode import decode_segment
from vsr.media.encode import SegmentWriter
from vsr.media.frame_digests import file_frame_digests
from vsr.media.segments import Segment
from vsr.storage.files import sha256_file, write_json_atomic

Upscale = Callable[..., np.ndarray]
"""frames (N,H,W,3) uint8/uint16 RGB, output (width, height) -> upscaled frames of that size.
For a recurrent model (plan.model.recurrent) it is called with keywords carry (the run's state,
vsr.engine.recurrent.RecurrentRun) and last, and gives the outputs of the frames whose next
frame it has seen (vsr.engine.recurrent.RecurrentUpscaler.upscale)."""

# chunks buffered between stages: enough to overlap, small enough for 4K (a GPU worker running
# two segments at once holds twice as many)
QUEUE_CHUNKS = 2
_END = object()
FRAMES_SUFFIX = ".frames.json"  # beside each segment file: what its frames decode to
FRAMES_FORMAT = 1


class SegmentStopped(Exception):
    """The stop event was set (the job failed elsewhere, or was cancelled); nothing was written."""


class _Stop(Exception):
    """Another stage failed or the stop event was set; this stage ends quietly."""


@dataclass
class _Failed:
    error: BaseException


@dataclass
class _Run:
    """The shared state of one segment's three stages."""

    stop: threading.Event
    to_upscale: queue.Queue = field(default_factory=lambda: queue.Queue(QUEUE_CHUNKS))
    to_encode: queue.Queue = field(default_factory=lambda: queue.Queue(QUEUE_CHUNKS))
    errors: list[BaseException] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=lambda: {"decode_s": 0.0, "infer_s": 0.0, "encode_s": 0.0})
    pts_seen: list[int] = field(default_factory=list)
    repeated: list[int] = field(default_factory=list)
    last_size: tuple[int, int] = (0, 0)  # output size of the last chunk (temporal models)
    carry: Any = None  # a temporal model's RecurrentRun, as the segment's last frame left it

    def put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def fail(self, err: BaseException) -> None:
        self.errors.append(err)
        self.stop.set()


def load_upscaler(kwargs: dict[str, Any]) -> Any:
    """The engine's Upscaler for a plan's model (ModelPlan.upscaler_kwargs): what a worker loads
    once and then serves every segment with; a RecurrentUpscaler for a temporal model."""
    from vsr.weights.zoo import describe_model

    if describe_model(kwargs["model"], with_descriptor=False).temporal:
        from vsr.engine.recurrent import RecurrentUpscaler

        return RecurrentUpscaler(**kwargs)
    from vsr.engine import Upscaler

    return Upscaler(**kwargs)


def run_segment(plan: JobPlan, segment: Segment, path: str | Path, upscale: Upscale, *,
                stop: threading.Event | None = None,
                on_frames: Callable[[int], None] | None = None, frame_digests: bool = True,
                reuse: ReuseGeometry | None = None, carry_in: StateHandover | None = None,
                carry_out: Callable[[StateHandover], None] | None = None) -> dict[str, Any]:
    """Upscale one segment of the plan into the segment file `path`; return its record.

    The file appears under `path` only when complete (written under a temporary name). stop:
    set it to abort (SegmentStopped, nothing written). on_frames(n) is called from the encoder
    thread after every n frames written (progress). frame_digests: decode the written file back
    and keep each frame's pts and digest in its sidecar (frames_sidecar; the record names it and
    its SHA-256), which verify matches the assembled output against, frame by frame. reuse: the
    upscaler's geometry for reusing unchanged parts of frames (Upscaler.reuse_geometry), used when
    the plan's temporal mode is "exact"; each segment starts with nothing to reuse.

    A temporal model's segment continues from carry_in, the state a run of the segment just
    before it left (vsr.job.handover), when it ended at the frame before this segment's first
    one: then it decodes no warm-up and gives the frames of a one-segment run; else it warms
    up (record["state"] says which). carry_out(state) receives this segment's final state for
    the segment after it, once the segment file is complete (not for the file's last segment).
    """
    t0 = time.perf_counter()
    run = _Run(stop or threading.Event())
    out_size = _output_size(plan)
    frames_fn = _frames_fn(plan, upscale, out_size, reuse)
    alpha_reuse = RepeatedFrames(lambda f: upscale(f, out_size(f))) if plan.model.reuse_repeats else None
    writer = SegmentWriter(str(path), plan.output_info(), plan.encode, *plan.out_size,
                           sizes_change=plan.picture.follows)
    key = plan_key(plan) if plan.model.recurrent else ""
    handed = carry_in if carry_in is not None and carry_in.continues(plan, segment, key) else None
    decoded = _decoded_segment(plan, segment, handed is not None)
    decoder = threading.Thread(target=_decode_stage, args=(plan, decoded, run), name="vsr-decode", daemon=True)
    encoder = threading.Thread(target=_encode_stage, args=(writer, run, on_frames), name="vsr-encode",
                               daemon=True)
    try:
        decoder.start()
        encoder.start()
        if plan.model.recurrent:
            _recurrent_stage(run, upscale, plan, segment, out_size, handed.carry if handed else None)
        else:
            _upscale_stage(run, upscale, frames_fn, out_size, alpha_reuse)
        encoder.join()
        if run.errors:
            raise run.errors[0]
        if run.stop.is_set():
            raise SegmentStopped(f"{Path(path).name}: stopped")  # after the last chunk: no file
        summary = writer.close()  # renames the finished file to `path`
    except BaseException:
        run.stop.set()
        decoder.join()
        encoder.join()  # it may be inside writer.write(): let it finish before the file closes
        writer.abort()
        raise
    finally:
        run.stop.set()
        decoder.join()
        encoder.join()
    record = _record(plan, segment, Path(path), summary, run, frames_fn, t0)
    if plan.model.recurrent:
        record["state"] = _state_kind(plan, segment, decoded, handed is not None)
    if frame_digests:
        record.update(_record_frame_digests(segment, Path(path), record["frames"]))
        record["seconds"] = round(time.perf_counter() - t0, 3)
    final = _final_state(run, key) if carry_out is not None and plan.model.recurrent else None
    if final is not None:
        carry_out(final)
    return record


def _decoded_segment(plan: JobPlan, segment: Segment, handed_over: bool) -> Segment:
    """What to decode for a segment: a temporal model's also its warm-up before it (none when
    it continues a handed-over state) and the frame after it."""
    if not plan.model.recurrent:
        return segment
    if handed_over:
        return context_segment(plan.info, segment, 0, 0)
    return context_segment(plan.info, segment, plan.model.warmup_frames, plan.model.state_period)


def _state_kind(plan: JobPlan, segment: Segment, decoded: Segment, handed_over: bool) -> str:
    """How a temporal model's segment started: "handed over" (the state of the segment before
    it), "start" (nothing before it to run: the file's first frame, or a restart of the state
    period) or "warm-up" (frames before it run to approach the state)."""
    if handed_over:
        return "handed over"
    return "start" if decoded.start_pts == segment.start_pts else "warm-up"


def _final_state(run: _Run, key: str) -> StateHandover | None:
    """The segment's final state: the carry after its last frame, without the frame after the
    segment that waits in it (the next segment decodes that one itself). None at the file's end
    (nothing waits: the last frame was its own next one), where no segment follows."""
    from vsr.engine.recurrent import RecurrentRun  # torch: only where a model runs

    carry = run.carry
    if carry is None or len(carry.waiting) != 1 or not run.pts_seen:
        return None
    return StateHandover(key=key, last_pts=run.pts_seen[-1],
                         carry=RecurrentRun(prev=carry.prev, fb=carry.fb, state=carry.state, steps=carry.steps))


def _frames_fn(plan: JobPlan, upscale: Upscale, out_size: Callable[[np.ndarray], tuple[int, int]],
               geometry: ReuseGeometry | None) -> ReusedTiles | RepeatedFrames | None:
    """What the upscale stage runs chunks through: nothing (None: every frame computed whole)
    without reuse_repeats; unchanged parts of frames reused (temporal "exact" with an upscaler
    that allows it), or parts changed only within the source's noise too ("stable"); else whole
    repeated frames."""
    if not plan.model.reuse_repeats:
        return None
    if plan.model.temporal == "stable" and geometry is not None:
        return StableTiles(upscale, geometry, out_size)
    if plan.model.temporal == "exact" and geometry is not None:
        return ReusedTiles(upscale, geometry, out_size)
    return RepeatedFrames(lambda f: upscale(f, out_size(f)))


def _output_size(plan: JobPlan) -> Callable[[np.ndarray], tuple[int, int]]:
    """frames (N,H,W[,3]) of one size -> the size they are upscaled to: the plan's output size, or
    (the output follows the source's sizes) their own size's output size."""
    picture = plan.picture
    return lambda frames: picture.out_size_for(frames.shape[2], frames.shape[1])


def frames_sidecar(path: str | Path) -> Path:
    """The file beside a segment file that holds what its frames decode to (run_segment)."""
    path = Path(path)
    return path.with_name(path.name + FRAMES_SUFFIX)


def read_frames_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of segment file `path`: time_base (text), pts and digests (lists, in order).
    OSError or ValueError when it is missing or not one of ours."""
    data = json.loads(frames_sidecar(path).read_text(encoding="utf-8"))
    if (not isinstance(data, dict) or data.get("version") != FRAMES_FORMAT
            or len(data.get("pts", ())) != len(data.get("digests", ())) or "time_base" not in data):
        raise ValueError("not a vsr frame digest file of this version")
    return data


def _record_frame_digests(segment: Segment, path: Path, frames: int) -> dict[str, Any]:
    """Decode the finished segment file, write its sidecar (atomically); the record's fields."""
    t = time.perf_counter()
    try:
        time_base, decoded = file_frame_digests(path)
    except InputError as err:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"segment {segment.index}: {path.name} does not decode back: {err}") from None
    if len(decoded) != frames:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"segment {segment.index}: {len(decoded)} frames decode back from {path.name}, "
                           f"{frames} were written")
    sidecar = frames_sidecar(path)
    write_json_atomic(sidecar, {"version": FRAMES_FORMAT, "segment": segment.index, "file": path.name,
                                "time_base": str(time_base), "pts": [p for p, _ in decoded],
                                "digests": [d for _, d in decoded]})
    return {"frames_file": sidecar.name, "frames_sha256": sha256_file(sidecar),
            "digest_s": round(time.perf_counter() - t, 3)}


def _upscale_stage(run: _Run, upscale: Upscale, reuse: ReusedTiles | RepeatedFrames | None,
                   out_size: Callable[[np.ndarray], tuple[int, int]],
                   alpha_reuse: RepeatedFrames | None = None) -> None:
    """Runs in the caller's thread: chunks from the decoder, upscaled, to the encoder."""
    try:
        while True:
            chunk = run.get(run.to_upscale)
            if chunk is _END:
                run.put(run.to_encode, _END)
                return
            if isinstance(chunk, _Failed):
                raise chunk.error
            t = time.perf_counter()
            size = out_size(chunk.frames)
            frames = reuse(chunk.frames) if reuse is not None else upscale(chunk.frames, size)
            alpha = None if chunk.alpha is None else upscale_alpha(chunk.alpha, upscale, size, alpha_reuse)
            run.timing["infer_s"] += time.perf_counter() - t
            run.pts_seen.extend(chunk.pts)
            run.repeated.extend(chunk.repeated or [])
            run.put(run.to_encode, (frames, list(chunk.pts), chunk.side_data, alpha))
    except _Stop:
        if not run.errors:
            raise SegmentStopped("stopped") from None
    except BaseException as err:
        run.fail(err)


def _recurrent_stage(run: _Run, upscale: Upscale, plan: JobPlan, segment: Segment,
                     out_size: Callable[[np.ndarray], tuple[int, int]], start: Any = None) -> None:
    """The upscale stage of a temporal model: every decoded frame (warm-up, the segment's, the
    one after) goes through one recurrent run in order, its state restarted where the plan's
    period says; only the segment's outputs are encoded. The frame after the segment is only
    the last one's next neighbour; at the end of the file the last frame is its own (last=True).
    start: a handed-over RecurrentRun to continue (no warm-up decoded), else a fresh one; the
    run is left in run.carry."""
    from vsr.engine.recurrent import RecurrentRun  # torch: only where a model runs

    carry = run.carry = start if start is not None else RecurrentRun()
    waiting: deque = deque()  # (pts, side data) of the frames pushed, not yet output
    beyond = False  # the frame after the segment was decoded
    try:
        while True:
            chunk = run.get(run.to_upscale)
            if isinstance(chunk, _Failed):
                raise chunk.error
            done = chunk is _END
            if done and (beyond or not waiting):
                run.put(run.to_encode, _END)
                return
            t = time.perf_counter()
            if done:
                frames = upscale(np.empty((0, 0, 0, 3), np.uint8), run.last_size, carry=carry, last=True)
            else:
                run.last_size = out_size(chunk.frames)
                waiting.extend(zip(chunk.pts, chunk.side_data or [None] * len(chunk.pts)))
                beyond = beyond or (segment.end_pts is not None and chunk.pts[-1] >= segment.end_pts)
                run.repeated.extend(p for p in chunk.repeated or [] if segment.contains(p))
                restarts = [restarts_state(frame_index(plan.info, p), plan.model.state_period) for p in chunk.pts]
                frames = upscale(chunk.frames, run.last_size, carry=carry, last=False, restarts=restarts)
            run.timing["infer_s"] += time.perf_counter() - t
            meta = [waiting.popleft() for _ in range(len(frames))]
            keep = [i for i, (p, _) in enumerate(meta) if segment.contains(p)]  # not the warm-up
            if keep:
                pts = [meta[i][0] for i in keep]
                run.pts_seen.extend(pts)
                run.put(run.to_encode, (frames[keep], pts, [meta[i][1] for i in keep], None))
            if done:
                run.put(run.to_encode, _END)
                return
    except _Stop:
        if not run.errors:
            raise SegmentStopped("stopped") from None
    except BaseException as err:
        run.fail(err)


def upscale_alpha(alpha: np.ndarray, upscale: Upscale, out_size: tuple[int, int],
                  reuse: RepeatedFrames | None = None) -> np.ndarray:
    """(N,H,W) straight alpha upscaled by the same network as the colour (as Real-ESRGAN does):
    each plane as a gray picture of three equal channels, their mean taken back. The colour fix
    sees the alpha frames alone, so it pins them to the source's alpha, never to its colour."""
    gray = np.repeat(alpha[..., None], 3, axis=-1)
    out = reuse(gray) if reuse is not None else upscale(gray, out_size)
    return np.rint(out.mean(axis=-1, dtype=np.float32)).astype(alpha.dtype)


def _decode_stage(plan: JobPlan, segment: Segment, run: _Run) -> None:
    chunks: Iterator | None = None
    try:
        chunks = decode_segment(plan.source, segment, plan.chunk_frames, info=plan.info,
                                on_corrupt=plan.on_corrupt, frame_filter=plan.picture.frame_filter(),
                                fit_size=tuple(plan.picture.source_size), alpha=plan.keep_alpha,
                                decoder=plan.decoder, follow_sizes=plan.picture.follows)
        while True:
            t = time.perf_counter()
            chunk = next(chunks, _END)
            run.timing["decode_s"] += time.perf_counter() - t
            run.put(run.to_upscale, chunk)
            if chunk is _END:
                return
    except _Stop:
        return
    except BaseException as err:  # handed to the upscale stage, which raises it
        try:
            run.put(run.to_upscale, _Failed(err))
        except _Stop:
            run.errors.append(err)
    finally:
        if chunks is not None:
            chunks.close()  # closes the input file now, also when stopped early


def _encode_stage(writer: SegmentWriter, run: _Run, on_frames: Callable[[int], None] | None) -> None:
    try:
        while True:
            item = run.get(run.to_encode)
            if item is _END:
                return
            frames, pts, side, alpha = item
            t = time.perf_counter()
            writer.write(frames, pts, side, alpha)
            run.timing["encode_s"] += time.perf_counter() - t
            if on_frames is not None:
                on_frames(len(pts))
    except _Stop:
        return
    except BaseException as err:
        run.fail(err)


def _record(plan: JobPlan, segment: Segment, path: Path, summary: dict[str, Any], run: _Run,
            reuse: ReusedTiles | RepeatedFrames | None, t0: float) -> dict[str, Any]:
    """The segment's record for the manifest; a wrong frame count is an error, never a file."""
    expected = segment.frame_count * (2 if plan.field_rate else 1)
    if summary["frames"] != expected:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"segment {segment.index}: wrote {summary['frames']} frames, expected {expected}")
    return {
        "index": segment.index, "file": path.name, "frames": summary["frames"],
        "bytes": path.stat().st_size, "sha256": summary["sha256"],
        "first_pts": run.pts_seen[0] if run.pts_seen else None,
        "last_pts": run.pts_seen[-1] if run.pts_seen else None,
        "repeated": run.repeated, "identical_reused": reuse.reused if reuse is not None else 0,
        # TILE x TILE cells of the source frames, and those whose output was the previous frame's
        "tiles": getattr(reuse, "tiles", 0), "tiles_reused": getattr(reuse, "tiles_reused", 0),
        "seconds": round(time.perf_counter() - t0, 3),
        **{k: round(v, 3) for k, v in run.timing.items()},
    }
