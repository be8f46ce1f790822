#!/usr/bin/env python3
"""Decode and encode throughput of the media layer on this CPU (frames/s), per size and codec.

Decode: vsr.media.decode.decode_segment (PyAV decode + YUV->RGB with the stream's matrix) of an
H.264 source, and the bare decode without RGB. Encode: vsr.media.encode.SegmentWriter (RGB->YUV
+ encoder + NUT mux) per codec. Source frames are a moving synthetic picture with detail.

usage: python benchmarks/media.py [--frames 48] [--sizes 720p,1080p] [--codecs ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsr.media.decode import decode_segment  # noqa: E402
from vsr.media.encode import EncodeOptions, SegmentWriter, resolve_encode_options  # noqa: E402
from vsr.media.probe import probe  # noqa: E402
from vsr.media.segments import plan_segments  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
CODECS = {
    "libx264 veryfast": EncodeOptions(codec="libx264", preset="veryfast"),
    "libx264 medium": EncodeOptions(codec="libx264", preset="medium"),
    "libx265 medium": EncodeOptions(codec="libx265", preset="medium"),
    "ffv1": EncodeOptions(codec="ffv1"),
}


def frames_rgb(w: int, h: int, n: int) -> np.ndarray:
    """n frames of a moving picture with texture (so encoders do real work)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    y, x = np.mgrid[0:h, 0:w]
    grad = ((x + y) % 256).astype(np.uint8)[..., None]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i] = (base[i % 8:i % 8 + h, i % 8:i % 8 + w] // 2 + grad // 2)
    return out


def make_source(path: Path, rgb: np.ndarray) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "20"})
        s.width, s.height, s.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
        for i, f in enumerate(rgb):
            fr = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
            fr.pts = i
            out.mux(s.encode(fr))
        out.mux(s.encode(None))
    return path


def bench_decode(path: Path) -> tuple[float, float]:
    info = probe(path)
    seg = plan_segments(info, 0)[0]
    t = time.perf_counter()
    n = sum(len(c.pts) for c in decode_segment(path, seg, 8, info=info))
    rgb_fps = n / (time.perf_counter() - t)
    t = time.perf_counter()
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        m = sum(1 for _ in c.decode(v))
    bare_fps = m / (time.perf_counter() - t)
    return rgb_fps, bare_fps


def bench_encode(path: Path, rgb: np.ndarray, opts: EncodeOptions, tmp: Path) -> float:
    info = probe(path)
    resolved = resolve_encode_options(info, tmp / "out.mkv", opts)
    h, w = rgb.shape[1:3]
    t = time.perf_counter()
    with SegmentWriter(tmp / "seg.nut", info, resolved, w, h) as writer:
        for i in range(0, len(rgb), 8):
            writer.write(rgb[i:i + 8], info.video.frame_pts[i:i + 8])
    return len(rgb) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--sizes", default="720p,1080p")
    ap.add_argument("--codecs", default=",".join(CODECS), help="comma list of: " + ", ".join(CODECS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vsr-bench-") as d:
        tmp = Path(d)
        for size in args.sizes.split(","):
            w, h = SIZES[size]
            rgb = frames_rgb(w, h, args.frames)
            src = make_source(tmp / f"src_{size}.mp4", rgb)
            rgb_fps, bare_fps = bench_decode(src)
            rows.append({"size": size, "stage": "decode", "codec": "h264 -> RGB (decode_segment)", "fps": rgb_fps})
            rows.append({"size": size, "stage": "decode", "codec": "h264 (bare PyAV decode)", "fps": bare_fps})
            for name in args.codecs.split(","):
                fps = bench_encode(src, rgb, CODECS[name], tmp)
                rows.append({"size": size, "stage": "encode", "codec": f"RGB -> {name} (SegmentWriter)", "fps": fps})
    if args.json:
        print(json.dumps({"cpu_count": os.cpu_count(), "frames": args.frames, "rows": rows}, indent=2))
        return 0
    print(f"media throughput, {args.frames} frames per measurement, {os.cpu_count()} CPUs, PyAV {av.__version__}")
    print(f"{'size':<6} {'stage':<7} {'codec':<40} {'frames/s':>9}")
    for r in rows:
        print(f"{r['size']:<6} {r['stage']:<7} {r['codec']:<40} {r['fps']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
