"""Throughput of the zoo generators on a CUDA GPU, per precision, with PSNR against fp32.

For each model and input size it prints the Upscaler's frames/s (the whole engine call: host
uint8 frames in, host uint8 frames out) in fp32, fp16 and bf16 at the given batch sizes, the PSNR
of each output against fp32 on the same frame, and what "auto" picks. Run it on a machine with a
GPU; there is nothing to measure without one.

    python benchmarks/engine_gpu.py
    python benchmarks/engine_gpu.py --models realesr-animevideov3-x4 --sizes 640x360,1280x720 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from PIL import Image

from models import SAMPLE, psnr  # benchmarks/models.py: the same test image and PSNR
from vsr.engine import Upscaler



def fps_of(up: Upscaler, clip: np.ndarray, rounds: int) -> float:
    up.upscale(clip)  # warm-up: cuDNN picks its kernels on the first call of a shape
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        up.upscale(clip)  # returns host memory, so the GPU work is finished when it returns
        best = min(best, time.perf_counter() - t0)
    return len(clip) / best


def bench(name: str, width: int, height: int, frames: int, batches: list[int],
          precisions: list[str], rounds: int) -> list[dict]:
    base = np.asarray(Image.open(SAMPLE).convert("RGB").resize((width, height), Image.BICUBIC))
    clip = np.repeat(base[None], frames, axis=0)
    ref = Upscaler(name, device="cuda", precision="fp32", batch_size=1).upscale(base)
    auto = Upscaler(name, device="cuda", precision="auto").precision
    rows = []
    for precision in precisions:
        for batch in batches:
            up = Upscaler(name, device="cuda", precision=precision, batch_size=batch)
            rows.append(dict(model=name, size=f"{width}x{height}", precision=precision,
                             auto=precision == auto, batch=batch,
                             fps=fps_of(up, clip, rounds), psnr=psnr(up.upscale(base), ref),
                             peak_mib=torch.cuda.max_memory_allocated() / 2**20))
            torch.cuda.reset_peak_memory_stats()
            del up
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict]) -> None:
    cols = [("model", "{}"), ("size", "{}"), ("precision", "{}"), ("batch", "{}"),
            ("fps", "{:.1f}"), ("psnr", "{:.1f}"), ("peak_mib", "{:.0f}")]
    cells = [[c for c, _ in cols]] + [[f.format(r[c]) + ("*" if c == "precision" and r["auto"] else "")
                                       for c, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print("* = what precision auto picks. fps: best round, host uint8 in and out. "
          "psnr: dB against fp32 on the same frame (inf = identical).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="realesr-animevideov3-x4,realesrgan-x4plus")
    p.add_argument("--sizes", default="320x180,640x360,1280x720")
    p.add_argument("--frames", type=int, default=16, help="frames per timed round")
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--precisions", default="fp32,fp16,bf16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("engine_gpu.py: no CUDA device here", file=sys.stderr)
        return 2
    rows = []
    for name in args.models.split(","):
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            rows += bench(name, w, h, args.frames, [int(b) for b in args.batches.split(",")],
                          args.precisions.split(","), args.rounds)
            if not args.json:
                print(f"# {name} {size} done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows)))
    else:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
