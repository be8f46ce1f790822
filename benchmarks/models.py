"""Throughput of the zoo generators on this machine: vsr (fp32, default precision) vs ncnn.

For each model and input size it prints frames/s of vsr's Upscaler in fp32 and in the default
("auto") precision, of the ncnn runtime on the same frames and thread count with its fastest
CPU options (every option set in NCNN_OPTION_SETS, one frame at a time on all threads or two at
once on half of them each, as vsr does; the best is reported), the ratios,
the PSNR of each output against vsr fp32, and the network's GFLOPs per frame.

    python benchmarks/models.py                       # the full table (slow for realesrgan-x4plus)
    python benchmarks/models.py --frames 2 --sizes 320x180 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import vsr  # noqa: F401 - before torch: vsr sets OMP_WAIT_POLICY, read when torch loads OpenMP
import numpy as np
import torch
from PIL import Image

from vsr.engine import Upscaler
from vsr.engine.upscaler import CPU_BATCH_PIXELS
from vsr.weights.zoo import load_model, ncnn_models_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "images" / "00003.png"
FP32_ONLY = dict(use_fp16_packed=False, use_fp16_storage=False, use_fp16_arithmetic=False,
                 use_bf16_storage=False)
NCNN_OPTION_SETS = {
    "default": {},
    "fp32": FP32_ONLY,
    "bf16-storage": dict(FP32_ONLY, use_bf16_storage=True),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def conv_gflops(net: torch.nn.Module, width: int, height: int) -> float:
    """2 x multiply-adds of every convolution for one frame (exact for same-padded convs)."""
    macs = 0

    def hook(mod: torch.nn.Conv2d, inp, out) -> None:
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        macs += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    probe = 32
    with torch.inference_mode():
        net(torch.zeros(1, 3, probe, probe, dtype=next(net.parameters()).dtype))
    for h in handles:
        h.remove()
    return 2 * macs * (width * height) / (probe * probe) / 1e9


def timed(fn, reps: int) -> float:
    fn()  # warm-up: oneDNN / ncnn build their kernels on the first call
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def ncnn_net(name: str, threads: int, options: dict):
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    for k, v in options.items():
        setattr(net.opt, k, v)
    models = ncnn_models_dir()
    net.load_param(str(models / f"{name}.param"))
    net.load_model(str(models / f"{name}.bin"))
    return net


def ncnn_run(net, frame: np.ndarray) -> np.ndarray:
    import ncnn

    planar = np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32) * (1 / 255)
    mat = ncnn.Mat(planar)
    ex = net.create_extractor()
    ex.input("data", mat)
    _, out = ex.extract("output")
    return (np.clip(np.array(out), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def ncnn_variants(name: str, threads: int) -> list[tuple[str, object, int]]:
    """(label, net, frame_threads) for every ncnn configuration tried: each option set with all
    threads on one frame, and (with 2+ threads) two frames at once on half of the threads each,
    the same choice vsr's engine makes (ncnn releases the GIL in extract)."""
    variants = []
    for label, opts in NCNN_OPTION_SETS.items():
        variants.append((label, ncnn_net(name, threads, opts), 1))
        if threads >= 2:
            variants.append((f"{label}, 2 frames x {threads // 2} thread(s)", ncnn_net(name, threads // 2, opts), 2))
    return variants


def ncnn_frames(net, frames, frame_threads: int) -> list[np.ndarray]:
    """ncnn on every frame, `frame_threads` frames at a time (results in order)."""
    if frame_threads == 1:
        return [ncnn_run(net, f) for f in frames]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(frame_threads) as pool:
        return list(pool.map(lambda f: ncnn_run(net, f), frames))


def fastest_ncnn(name: str, threads: int, frames, trial: int = 6) -> tuple[str, object, int]:
    """ncnn's fastest configuration (ncnn_variants) on the first `trial` of `frames` (fewer
    frames pick by noise: bf16-storage's lead over fp32 is ~15%, the noise ~10% per frame)."""
    best = None
    for label, net, frame_threads in ncnn_variants(name, threads):
        ncnn_run(net, frames[0])  # warm-up
        t0 = time.perf_counter()
        ncnn_frames(net, frames[:trial], frame_threads)
        seconds = time.perf_counter() - t0
        if best is None or seconds < best[0]:
            best = (seconds, label, net, frame_threads)
    return best[1:]


def bench_one(name: str, width: int, height: int, frames: int, threads: int, batch: int,
              compile_: bool, rounds: int) -> dict:
    base = np.asarray(Image.open(SAMPLE).convert("RGB").resize((width, height), Image.BICUBIC))
    clip = np.repeat(base[None], frames, axis=0)
    row: dict = dict(model=name, size=f"{width}x{height}", frames=frames, threads=threads)

    fp32 = Upscaler(name, device="cpu", precision="fp32", batch_size=batch)
    # counted on a fresh copy: fp32's network now runs NNPACK, whose thread pool its first call
    # sizes (on the main thread: both cores, where fp32 frames would then take turns)
    row["gflops"] = round(conv_gflops(load_model(name).network.float(), width, height), 1)
    # two frames, as the video path calls it (chunks of frames): a lone first frame would make
    # torch's NNPACK pool on both threads too (vsr/engine/nnpack.py)
    ref = fp32.upscale(clip[:2])[0]
    auto = Upscaler(name, device="cpu", precision="auto", batch_size=batch, compile=compile_)
    row["default_precision"] = auto.precision + ("+compile" if compile_ else "")
    row["default_psnr"] = psnr(auto.upscale(clip[:1])[0], ref)

    label, net, ncnn_frame_threads = fastest_ncnn(name, threads, clip)
    row["ncnn_options"] = label
    row["ncnn_psnr"] = psnr(ncnn_run(net, base), ref)

    # Interleaved rounds, best round per engine: the ratios then survive a busy machine better.
    runs = {"fp32": lambda: fp32.upscale(clip), "default": lambda: auto.upscale(clip),
            "ncnn": lambda: ncnn_frames(net, clip, ncnn_frame_threads)}
    seconds = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            seconds[k] = min(seconds[k], time.perf_counter() - t0)
    for k in runs:
        row[f"{k}_fps"] = frames / seconds[k]
    row["fp32_vs_ncnn"] = row["fp32_fps"] / row["ncnn_fps"]
    row["default_vs_ncnn"] = row["default_fps"] / row["ncnn_fps"]
    return row


def print_table(rows: list[dict]) -> None:
    cols = [("model", "{}"), ("size", "{}"), ("gflops", "{:.1f}"), ("fp32_fps", "{:.3g}"),
            ("default_precision", "{}"), ("default_fps", "{:.3g}"), ("default_psnr", "{:.1f}"),
            ("ncnn_options", "{}"), ("ncnn_fps", "{:.3g}"), ("ncnn_psnr", "{:.1f}"),
            ("fp32_vs_ncnn", "{:.2f}x"), ("default_vs_ncnn", "{:.2f}x")]
    cells = [[c for c, _ in cols]] + [[f.format(r[c]) for c, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for i, row in enumerate(cells):
        print("  ".join(v.rjust(w) if i and j > 1 else v.ljust(w) for j, (v, w) in enumerate(zip(row, widths))))
    print("fps: best of the interleaved rounds; PSNR columns: dB against vsr fp32 on the same frame; GFLOPs: 2 x conv multiply-adds.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="realesr-animevideov3-x4,realesrgan-x4plus")
    p.add_argument("--sizes", default="320x180,640x360")
    p.add_argument("--frames", type=int, default=8, help="frames per timed run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (best is kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--compile", action="store_true", help="torch.compile the default-precision run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            rows.append(bench_one(name, w, h, args.frames, args.threads, args.batch, args.compile,
                                  args.rounds))
            print(f"# done {name} {size}", file=sys.stderr, flush=True)
    print(f"# torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, {args.frames} frames, batch {args.batch} "
          f"(on the CPU at most {CPU_BATCH_PIXELS} input pixels per pass: one frame from 320x180 up)")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
