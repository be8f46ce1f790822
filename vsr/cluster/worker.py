"""The segment worker: one Ray actor per GPU (or per share of the CPU cores).

It loads the model once and then turns whole segments into segment files: decode, batched
inference and encode run in three threads joined by bounded queues, so the device never waits
on the codec and memory stays at a few chunks of frames. Frames never leave the node; only the
segment file's name, frame count and checksum go back to the driver.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray

from vsr.cluster.picture import JobPicture, plan_job_picture
from vsr.engine.repeats import RepeatedFrames

# chunks buffered between stages, per segment in progress: enough to overlap, small enough for
# 4K (with segments_per_worker 2, a worker holds twice as many)
QUEUE_CHUNKS = 2
_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class _Stop(Exception):
    """Another stage failed; this one stops quietly."""


class SegmentCancelled(Exception):
    """The driver cancelled this segment (its job failed elsewhere); nothing was written."""


class SegmentWorker:
    """Actor body (wrapped with ray.remote by WorkerPool). `process` may run for several
    segments at once (the pool's segments_per_worker: their decode and encode threads run side
    by side while their upscale calls, a chunk of frames each, take turns on the device);
    `status` and `cancel` run in their own concurrency group so the driver can reach a busy
    worker."""

    def __init__(self, upscaler_kwargs: dict[str, Any]):
        self._upscaler_kwargs = upscaler_kwargs
        self._upscaler = None
        # segment file in progress -> frames written to it (keyed by path: a batch run's next file
        # may start its segment 3 while the previous file's segment 3 still finishes)
        self._frames_written: dict[str, int] = {}
        self._segments_done = 0
        self._done_lock = threading.Lock()
        # segment file in progress -> (its job's token, its stop event)
        self._stops: dict[str, tuple[str, threading.Event]] = {}
        self._cancelled_jobs: set[str] = set()  # tokens of failed jobs (one per failed job)
        self._plans: dict[tuple[str, str], JobPicture] = {}
        self._plans_lock = threading.Lock()
        self._upscale_lock = threading.Lock()  # segments run together take turns on the device

    # ------------------------------------------------------------ set-up
    def ready(self, nvenc_probe: Sequence[str] = ()) -> dict[str, Any]:
        """Load the model (once) and describe this worker; with `nvenc_probe`, also which of those
        NVENC encoders open here (info["nvenc"]): the machine that encodes needs the GPU's
        encoder engine, and the driver's machine may have another GPU or none."""
        if self._upscaler is None:
            from vsr.engine import Upscaler

            self._upscaler = Upscaler(**self._upscaler_kwargs)
        up = self._upscaler
        ctx = ray.get_runtime_context()
        info = {
            "pid": os.getpid(), "node_id": ctx.get_node_id(), "host": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(), "actor_id": ctx.get_actor_id(),
            "model": up.name, "scale": up.scale, "device": up.device, "precision": up.precision,
            "threads": os.environ.get("OMP_NUM_THREADS"),
        }
        if nvenc_probe:
            from vsr.media.encode import nvenc_available

            info["nvenc"] = {name: nvenc_available(name) for name in nvenc_probe}
        return info

    def _picture(self, info: Any, picture: dict[str, Any] | None) -> JobPicture:
        # Auto-detection (crop, interlace) reads frames: plan once per input, not per segment.
        key = (info.path, json.dumps(picture, sort_keys=True))
        with self._plans_lock:  # segments started together plan once
            if key not in self._plans:
                self._plans = {key: plan_job_picture(info, self._upscaler.scale, picture)}
            return self._plans[key]

    @ray.method(concurrency_group="status")
    def status(self) -> dict[str, Any]:
        """Segments in progress and frames written of them (polled for the progress bar)."""
        written = dict(self._frames_written)
        return {"segments": len(written), "frames": sum(written.values()), "done": self._segments_done}

    @ray.method(concurrency_group="status")
    def cancel(self, job_token: str) -> int:
        """Stop this job's segments (it failed elsewhere): each ends within a chunk with
        SegmentCancelled and writes nothing; one not started yet will not start. The token is
        unique per job run, so a later run of the same output is not affected. Returns how
        many were running."""
        self._cancelled_jobs.add(job_token)
        running = 0
        for token, stop in list(self._stops.values()):
            if token == job_token:
                stop.set()
                running += 1
        return running

    # ------------------------------------------------------------ work
    def process(self, task: dict[str, Any], info: Any) -> dict[str, Any]:
        """Upscale one segment into task["seg_path"]; return its record for the manifest.
        Raises SegmentCancelled when the driver cancelled it (see cancel)."""
        from vsr.media.segments import Segment

        t0 = time.perf_counter()
        final = Path(task["seg_path"])
        progress_key = str(final)
        token = str(task.get("job_token", ""))
        stop = threading.Event()
        # registered before the check: a cancel either sees this entry or is seen by the check
        self._stops[progress_key] = (token, stop)
        try:
            seg = Segment.from_dict(task["segment"])
            if token in self._cancelled_jobs:
                raise _Stop  # cancelled before it started
            picture = self._picture(info, task.get("picture"))
            return self._process(task, info, seg, picture, final, progress_key, stop, t0)
        except BaseException:
            if token in self._cancelled_jobs:
                raise SegmentCancelled(f"{final.name} cancelled: its job failed") from None
            raise
        finally:
            self._stops.pop(progress_key, None)

    def _process(self, task: dict[str, Any], info: Any, seg: Any, picture: JobPicture, final: Path,
                 progress_key: str, stop: threading.Event, t0: float) -> dict[str, Any]:
        from vsr.media.decode import decode_segment
        from vsr.media.encode import EncodeOptions, SegmentWriter

        out_w, out_h = task["out_size"]
        to_infer: queue.Queue = queue.Queue(QUEUE_CHUNKS)
        to_encode: queue.Queue = queue.Queue(QUEUE_CHUNKS)
        timing = {"decode_s": 0.0, "infer_s": 0.0, "encode_s": 0.0}
        repeated: list[int] = []

        def put(q: queue.Queue, item: Any) -> None:
            while True:
                if stop.is_set():
                    raise _Stop
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def get(q: queue.Queue) -> Any:
            while True:
                if stop.is_set():
                    raise _Stop
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    continue

        def decode_stage() -> None:
            chunks: Iterator | None = None
            try:
                chunks = decode_segment(task["input"], seg, task["chunk_frames"], info=info,
                                        on_corrupt=task["on_corrupt"], frame_filter=picture.frame_filter())
                while True:
                    t = time.perf_counter()
                    chunk = next(chunks, _END)
                    timing["decode_s"] += time.perf_counter() - t
                    put(to_infer, chunk)
                    if chunk is _END:
                        return
            except _Stop:
                return
            except BaseException as err:  # handed to the inference thread, which re-raises
                stop_put(to_infer, _Failed(err))
            finally:
                if chunks is not None:
                    chunks.close()  # closes the input file now, also when stopped early

        def encode_stage(writer: Any) -> None:
            try:
                while True:
                    item = get(to_encode)
                    if item is _END:
                        return
                    frames, pts, side = item
                    t = time.perf_counter()
                    writer.write(frames, pts, side)
                    timing["encode_s"] += time.perf_counter() - t
                    self._frames_written[progress_key] += len(pts)
            except _Stop:
                return
            except BaseException as err:
                errors.append(err)
                stop.set()

        def stop_put(q: queue.Queue, item: Any) -> None:
            try:
                put(q, item)
            except _Stop:
                pass

        errors: list[BaseException] = []
        # per segment: its output never depends on which worker ran the segment before it
        reuse = RepeatedFrames(lambda f: self._upscale(f, (out_w, out_h))) \
            if task.get("reuse_repeats", True) else None
        writer = SegmentWriter(str(final), picture.output_info(info), EncodeOptions.from_dict(task["encode"]),
                               out_w, out_h)
        self._frames_written[progress_key] = 0  # popped in the finally below
        decoder = threading.Thread(target=decode_stage, name="vsr-decode", daemon=True)
        encoder = threading.Thread(target=encode_stage, args=(writer,), name="vsr-encode", daemon=True)
        try:
            decoder.start()
            encoder.start()
            try:
                pts_seen = self._infer_stage(get, put, to_infer, to_encode, (out_w, out_h), timing, repeated,
                                             reuse)
                put(to_encode, _END)
            except _Stop:
                if not errors:
                    raise
            encoder.join()
            if errors:
                raise errors[0]
            if stop.is_set():
                raise _Stop  # cancelled after the last chunk: abort, do not finish the file
            summary = writer.close()  # writes under a temp name, renames to `final`
        except BaseException:
            stop.set()
            # the encoder may be inside writer.write(): let it finish before the container closes
            decoder.join()
            encoder.join()
            writer.abort()
            raise
        finally:
            stop.set()
            decoder.join()
            encoder.join()
            self._frames_written.pop(progress_key, None)
        expected = seg.frame_count * (2 if picture.field_rate else 1)
        if summary["frames"] != expected:
            final.unlink()
            raise RuntimeError(f"segment {seg.index}: wrote {summary['frames']} frames, expected {expected}")
        with self._done_lock:
            self._segments_done += 1
        ctx = ray.get_runtime_context()
        return {
            "index": seg.index, "file": final.name, "frames": summary["frames"],
            "bytes": final.stat().st_size, "sha256": summary["sha256"],
            "first_pts": pts_seen[0] if pts_seen else None, "last_pts": pts_seen[-1] if pts_seen else None,
            "repeated": repeated, "identical_reused": reuse.reused if reuse is not None else 0,
            "node_id": ctx.get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "seconds": round(time.perf_counter() - t0, 3),
            **{k: round(v, 3) for k, v in timing.items()},
        }

    def _upscale(self, frames: Any, out_size: tuple[int, int]) -> Any:
        with self._upscale_lock:
            return self._upscaler.upscale(frames, out_size)

    def _infer_stage(self, get: Callable, put: Callable, to_infer: queue.Queue, to_encode: queue.Queue,
                     out_size: tuple[int, int], timing: dict[str, float], repeated: list[int],
                     reuse: RepeatedFrames | None) -> list[int]:
        pts_seen: list[int] = []
        while True:
            chunk = get(to_infer)
            if chunk is _END:
                return pts_seen
            if isinstance(chunk, _Failed):
                raise chunk.error
            t = time.perf_counter()
            frames = reuse(chunk.frames) if reuse is not None else self._upscale(chunk.frames, out_size)
            timing["infer_s"] += time.perf_counter() - t
            pts_seen.extend(chunk.pts)
            repeated.extend(getattr(chunk, "repeated", None) or [])
            put(to_encode, (frames, list(chunk.pts), getattr(chunk, "side_data", None)))
