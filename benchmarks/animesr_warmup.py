"""AnimeSR warm-up and scene cuts: how many frames a segment must run before its first one.

A recurrent model's output depends on every earlier frame, so a segment started on its own
differs from the same frames of a one-segment run. This runs each clip once whole, then from
frame S - K for several warm-ups K, and prints the PSNR of frames S.. against the whole run
(the first frame and the lowest / mean over the next `--span`). It also compares, against the
ground truth of a clip downscaled 4x, a scene cut run through with the state kept and reset.

    PYTHONPATH=. python benchmarks/animesr_warmup.py [--model animesr-v2-x4] [--precision fp32]
        [--only warmup|split|cut|fps] [--split-frames 40]

--only split runs the clips cut into segments of 8 frames as vsr runs them: each segment warmed
up (as before the state was handed over), then on 1 and 2 worker slots with the state handed
over between consecutive segments of a slot (vsr.job.handover, vsr.cluster.schedule).
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


def slot_orders(segments: int, slots: int) -> list[list[int]]:
    """The segments each worker slot runs, in order, as vsr's scheduler gives them out for a
    recurrent plan (vsr.cluster.schedule) when every segment takes as long: slots freed together
    are served in slot order, those that can go on with the segment after theirs first."""
    from vsr.cluster.schedule import first_segments, next_segment
    from vsr.media.segments import Segment

    pending = [Segment(index=i, start_pts=i, end_pts=i + 1, frame_count=1, start_time=i, end_time=i + 1)
               for i in range(segments)]
    orders = [[s.index] for s in first_segments(pending, slots)]
    pending = [s for s in pending if s.index not in {o[0] for o in orders}]
    while pending:  # one round: every slot finishes its segment at once
        waiting = {s.index for s in pending}
        running: set[int] = set()
        for order in sorted(orders, key=lambda o: o[-1] + 1 not in waiting):
            seg = next_segment(pending, Segment(order[-1], 0, None, 0, 0.0, 0.0), running)
            if seg is not None:
                pending.remove(seg)
                order.append(seg.index)
                running.add(seg.index)
    return orders


def run_split(up: RecurrentUpscaler, clip: np.ndarray, seg_len: int, warmup: int,
              orders: list[list[int]] | None) -> np.ndarray:
    """The clip's outputs as vsr makes them in segments of seg_len frames. orders: the segments
    each slot runs; a segment right after its predecessor on a slot goes on from its state, as
    run_segment does with a hand-over (no warm-up decoded; the frame after the previous segment,
    which waits in the state, dropped), any other warms up. None: every segment warms up (vsr
    before the hand-over)."""
    n = -(-len(clip) // seg_len)
    out = np.empty((len(clip), clip.shape[1] * 4, clip.shape[2] * 4, 3), np.uint8)
    for order in orders if orders is not None else [[i] for i in range(n)]:
        run, prev = RecurrentRun(), None
        for i in order:
            start = i * seg_len
            if prev == i - 1:
                run.waiting, run.waiting_restarts, first = [], [], start
            else:
                run, first = RecurrentRun(), max(0, start - warmup)
            end = min(len(clip), start + seg_len + 1)
            frames = up.upscale(clip[first:end], carry=run, last=end == len(clip))
            out[start:start + seg_len] = frames[start - first:start - first + seg_len]
            prev = i
    return out


def split_table(up: RecurrentUpscaler, clip: np.ndarray, seg_len: int, warmup: int) -> None:
    """The clip cut into segments of seg_len frames, run as vsr runs them, against one run: every
    frame's PSNR. Each segment warming up (warm-up before, the next frame after: vsr before the
    hand-over), then on 1 and 2 workers with the state handed over between consecutive segments
    of a slot. Frames that come out identical (inf dB) are left out of the lowest and mean;
    the pooled figure (PSNR of the mean squared error) is over all frames."""
    whole = up.upscale(clip)
    n = -(-len(clip) // seg_len)
    for name, orders in (("each segment warmed up", None), ("1 worker, handed over", slot_orders(n, 1)),
                         ("2 workers, handed over", slot_orders(n, 2))):
        out = run_split(up, clip, seg_len, warmup, orders)
        mse = [np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) for a, b in zip(out, whole)]
        db = [10 * np.log10(255.0 ** 2 / m) for m in mse if m > 0]
        pooled = 10 * np.log10(255.0 ** 2 / np.mean(mse)) if np.mean(mse) > 0 else float("inf")
        low = f"lowest {min(db):6.2f} dB, mean {np.mean(db):6.2f} dB" if db else "bit-identical"
        slots = "" if orders is None else f" {orders}"
        print(f"  {name}{slots}: {len(db)} of {len(clip)} frames not exact, {low}; "
              f"pooled over all frames {pooled:6.2f} dB")


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
    p.add_argument("--split-frames", type=int, default=40, help="frames of the split runs (segments of 8)")
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
            split_table(up, frames_of(name, 0, args.split_frames, box), 8, WARMUP_FRAMES)
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
