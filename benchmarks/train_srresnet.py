"""Benchmark: how much a short CPU training run of pipelines/train_srresnet_x4.toml beats bicubic.

Builds a data set from real footage: every 6th frame of the first 80 % of each clip in
--media-dir plus the still images of --images-dir go to training; frames from the last
20 % of each clip (never trained on) and one held-out still image are the test set.
Runs `vsr train CONFIG --max-minutes M` as a user would, then prints the mean Y-channel
PSNR/SSIM (4 px border shaved, the SR literature's convention) of the trained generator and
of bicubic upscaling on the held-out images, each downscaled x4 by bicubic.

    python benchmarks/train_srresnet.py                   # the 10-minute run
    python benchmarks/train_srresnet.py --max-minutes 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_STILLS = {"0014.jpg"}  # a real photo kept out of training


def _decode_all(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def _has_detail(frame: np.ndarray) -> bool:
    """False for flat frames (black leaders, fades): nothing to super-resolve, and bicubic
    reproduces them exactly (infinite PSNR)."""
    return float(frame.astype(np.float32).std()) > 8.0


def build_dataset(media_dir: Path, images_dir: Path, work: Path, step: int = 6,
                  test_per_clip: int = 3) -> tuple[Path, Path, dict]:
    """Write train/ and test/ PNG folders under `work`; returns their paths and counts."""
    from vsr.train.data import IMAGE_EXTS, VIDEO_EXTS, load_image_rgb8

    train, test = work / "train", work / "test"
    train.mkdir(parents=True, exist_ok=True)
    test.mkdir(parents=True, exist_ok=True)
    counts = {"train_frames": 0, "train_stills": 0, "test_frames": 0, "test_stills": 0}
    for clip in sorted(p for p in media_dir.iterdir() if p.suffix.lower() in VIDEO_EXTS):
        frames = _decode_all(clip)
        split = int(len(frames) * 0.8)
        for i in range(0, split, step):
            if not _has_detail(frames[i]):
                continue
            Image.fromarray(frames[i]).save(train / f"{clip.stem}_{i:05d}.png")
            counts["train_frames"] += 1
        tail = [i for i in range(split + step // 2, len(frames), step) if _has_detail(frames[i])]
        tail = tail or [i for i in range(split, len(frames)) if _has_detail(frames[i])][-1:]
        for i in [tail[j] for j in np.linspace(0, len(tail) - 1, min(test_per_clip, len(tail))).astype(int)]:
            Image.fromarray(frames[i]).save(test / f"{clip.stem}_{i:05d}.png")
            counts["test_frames"] += 1
    for img in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        target = test if img.name in HELD_OUT_STILLS else train
        Image.fromarray(load_image_rgb8(img)).save(target / f"{img.stem}.png")
        counts["test_stills" if target is test else "train_stills"] += 1
    return train, test, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "train_srresnet_x4.toml"))
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--media-dir", default=str(ROOT.parent / "shared" / "media"),
                    help="video clips (default ../shared/media; tests/data/media holds copies)")
    ap.add_argument("--images-dir", default=str(ROOT.parent / "shared" / "images"))
    ap.add_argument("--work", help="folder for the data set and run (default: a temp folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    media, images = Path(args.media_dir), Path(args.images_dir)
    if not media.is_dir():
        media = ROOT / "tests" / "data" / "media"
    if not images.is_dir():
        images = ROOT / "tests" / "data" / "images"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vsr-train-bench-"))
    train_dir, test_dir, counts = build_dataset(media, images, work)
    out = work / "run"

    cmd = [sys.executable, "-m", "vsr.cli", "train", args.config, "--data", str(train_dir),
           "--out", str(out), "--max-minutes", str(args.max_minutes), "--json"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    summary = json.loads(proc.stdout)

    from vsr.train.data import load_hr_images, make_val_pairs
    from vsr.train.trainer import evaluate
    from vsr.weights.zoo import load_model

    loaded = load_model(summary["generator"])
    scale = summary["scale"]
    pairs = make_val_pairs(load_hr_images(test_dir, "test"), scale, max_size=0)
    rows = []
    for p in pairs:
        m = evaluate(loaded.network, [p], scale, shave=4)
        b = evaluate(None, [p], scale, shave=4)
        rows.append({"image": p.name, "size": f"{p.hr.shape[1]}x{p.hr.shape[0]}",
                     "psnr_model": m["psnr"], "psnr_bicubic": b["psnr"],
                     "ssim_model": m["ssim"], "ssim_bicubic": b["ssim"]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in
            ("psnr_model", "psnr_bicubic", "ssim_model", "ssim_bicubic")}
    result = {"config": os.path.relpath(args.config, ROOT), "max_minutes": args.max_minutes,
              "steps": summary["steps"], "train_seconds": summary["seconds"], "wall_seconds": round(wall, 1),
              "precision": summary["precision"], "data": counts, "test_images": len(rows),
              "mean": mean, "gain_db": mean["psnr_model"] - mean["psnr_bicubic"], "images": rows,
              "cpu_threads": os.cpu_count()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"train_srresnet: {result['config']}, {summary['steps']} steps in {summary['seconds']:.0f} s "
          f"({summary['precision']}, {os.cpu_count()} CPUs); train {counts['train_frames']} frames + "
          f"{counts['train_stills']} stills; test {len(rows)} held-out images")
    print(f"{'image':<36} {'size':>9} {'bicubic dB':>10} {'model dB':>9} {'gain':>6} {'SSIM bic':>8} {'SSIM mdl':>8}")
    for r in rows:
        print(f"{r['image']:<36} {r['size']:>9} {r['psnr_bicubic']:>10.2f} {r['psnr_model']:>9.2f} "
              f"{r['psnr_model'] - r['psnr_bicubic']:>+6.2f} {r['ssim_bicubic']:>8.4f} {r['ssim_model']:>8.4f}")
    print(f"{'mean':<36} {'':>9} {mean['psnr_bicubic']:>10.2f} {mean['psnr_model']:>9.2f} "
          f"{result['gain_db']:>+6.2f} {mean['ssim_bicubic']:>8.4f} {mean['ssim_model']:>8.4f}")
    print(f"target: +1.00 dB over bicubic in 10 CPU minutes -> "
          f"{'met' if result['gain_db'] >= 1.0 else 'NOT met'} ({result['gain_db']:+.2f} dB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
