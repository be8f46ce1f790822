"""AnimeSR warm-up and scene cuts: how many frames a segment must run before its first one.

A recurrent model's output depends on every earlier frame, so a segment started on its own
differs from the same frames of a one-segment run. This runs each clip once whole, then from
frame S - K for several warm-ups K, and prints the PSNR of frames S.. against the whole run
(the first frame and the lowest / mean over the next `--span`). It also compares, against the
ground truth of a clip downscaled 4x, a scene cut run through with the state kept and reset.

    PYTHONPATH=. python benchmarks/animesr_warmup.py [--model animesr-v2-x4] [--precision fp32]
        [--only warmup|split|cut|fps]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from vsr.engine.recurrent import RecurrentRun, RecurrentUpscaler
from vsr.job.temporal import WARMUP_FRAMES

MEDIA = Path(__file__).resolve().parents[1] / "tests" / "data" / "media"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def frames_of(name: str, first: int, count: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """count RGB frames from frame `first` of a shared clip, cropped to box (y, x, h, w)."""
    y, x, h, w = box
    out = []
    with av.open(f"{MEDIA}/{name}") as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= first + count:
                break
            if i >= first:
                out.append(f.to_ndarray(format="rgb24")[y:y + h, x:x + w])
    return np.stack(out)


def down4(frames: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    return t.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def warmup_table(up: RecurrentUpscaler, clip: np.ndarray, start: int, warmups: list[int], span: int) -> None:
    whole = up.upscale(clip)
    for k in warmups:
        part = up.upscale(clip[start - k:start + span])[k:]
        db = [psnr(a, b) for a, b in zip(part, whole[start:start + span])]
        print(f"  K={k:2d}: first {db[0]:6.2f} dB, lowest {min(db):6.2f}, mean {np.mean(db):6.2f}")


def split_table(up: RecurrentUpscaler, clip: np.ndarray, seg_len: int, warmup: int) -> None:
    """The clip cut into segments of seg_len frames, each run as run_segment runs it (warm-up
    before, the next frame after), against one run: every frame's PSNR. Frames whose segment's
    warm-up reaches back to frame 0 are identical (inf dB): the lowest and mean are taken over
    the others, the pooled figure (PSNR of the mean squared error) over all frames."""
    whole = up.upscale(clip)
    db, mse = [], []
    for start in range(0, len(clip), seg_len):
        first, end = max(0, start - warmup), min(len(clip), start + seg_len + 1)
        out = up.upscale(clip[first:end], carry=RecurrentRun(), last=end == len(clip))
        for a, b in zip(out[start - first:start - first + seg_len], whole[start:start + seg_len]):
            mse.append(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
            if first > 0:
                db.append(psnr(a, b))
    pooled = 10 * np.log10(255.0 ** 2 / np.mean(mse))
    print(f"  {len(clip)} frames in segments of {seg_len}, warm-up {warmup}: {len(db)} frames not exact, "
          f"lowest {min(db):6.2f} dB, mean {np.mean(db):6.2f} dB; pooled over all frames {pooled:6.2f} dB")


def fps(up: RecurrentUpscaler, clip: np.ndarray) -> None:
    up.upscale(clip[:2])
    t = time.perf_counter()
    up.upscale(clip)
    dt = time.perf_counter() - t
    print(f"  {clip.shape[2]}x{clip.shape[1]} -> x4: {len(clip) / dt:.2f} frames/s ({len(clip)} frames)")


def y_psnr(a: np.ndarray, b: np.ndarray) -> float:
    wts = np.array([0.299, 0.587, 0.114])
    return psnr(a.astype(np.float64) @ wts, b.astype(np.float64) @ wts)


def scene_cut(up: RecurrentUpscaler, gt_a: np.ndarray, gt_b: np.ndarray) -> None:
    lr_a, lr_b = down4(gt_a), down4(gt_b)
    kept = up.upscale(np.concatenate([lr_a, lr_b]))[len(lr_a):]
    # reset: a fresh run from the cut (the frame before it is not its neighbour either)
    reset = up.upscale(lr_b)
    for name, out in (("state kept", kept), ("state reset", reset)):
        db = [y_psnr(o, g) for o, g in zip(out, gt_b)]
        print(f"  {name:11s}: GT PSNR-Y after the cut, frames 1-3 {np.mean(db[:3]):6.2f} dB, "
              f"all {len(db)} {np.mean(db):6.2f} dB")
    print(f"  kept vs reset, frame after the cut: {psnr(kept[0], reset[0]):.2f} dB, "
          f"frame 8: {psnr(kept[7], reset[7]):.2f} dB")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="animesr-v2-x4")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--span", type=int, default=6)
    p.add_argument("--only", choices=["warmup", "split", "cut", "fps"], default=None)
    args = p.parse_args()
    up = RecurrentUpscaler(args.model, device="cpu", precision=args.precision)
    print(f"{args.model} {up.precision} on {cpu_name()}, {torch.get_num_threads()} threads")
    warmups = [0, 2, 4, 6, 8, 10, 12]
    clips = (("bbb_320x180_vp9_opus.webm", (40, 100, 96, 128)), ("carphone_176x144_noaudio.mp4", (24, 24, 96, 128)))
    if args.only in (None, "warmup"):
        for name, box in clips:
            t = time.perf_counter()
            clip = frames_of(name, 0, 12 + 12 + args.span, box)
            print(f"{name} crop {box[3]}x{box[2]}, segment start at frame 24:")
            warmup_table(up, clip, 24, warmups, args.span)
            print(f"  ({time.perf_counter() - t:.0f} s)")
    if args.only in (None, "split"):
        for name, box in clips:
            print(f"{name} crop {box[3]}x{box[2]}:")
            split_table(up, frames_of(name, 0, 40, box), 8, WARMUP_FRAMES)
    if args.only in (None, "cut"):
        print("scene cut: bikes (downscaled 4x) then webcam (downscaled 4x), 8 + 10 frames:")
        scene_cut(up, frames_of("bikes_640x272_noaudio.mp4", 0, 8, (0, 100, 256, 384)),
                  frames_of("webcam_1080x720_h264_aac.mp4", 0, 10, (200, 300, 256, 384)))
    if args.only in (None, "fps"):
        print("frames/s, whole frames:")
        fps(up, frames_of("bbb_176x144_mpeg4part2.mp4", 0, 6, (0, 0, 144, 176)))
        fps(up, frames_of("bbb_320x180_vp9_opus.webm", 0, 4, (0, 0, 180, 320)))


if __name__ == "__main__":
    main()
