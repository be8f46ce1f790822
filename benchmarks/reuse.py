"""`--temporal exact` against `--temporal off`, and `vsr upscale` against bare ncnn, in one run.

For each clip (cut by stream copy to its first --seconds):

  still    a clip where most of the picture stands still (shared/media/corpus/theora_vorbis.ogg:
           GStreamer's test clip, 320x240, 50 frames, a white ball moving over black)
  live     live action where everything moves (shared/media/bikes_640x272_noaudio.mp4)
  anime    animation (shared/media/bbb_320x180_vp9_opus.webm: Big Buck Bunny, 320x180)
  titles   a still test picture with a small moving part (shared/media/corpus/
           chapters_h264_444_aac.mkv: androidx/media's sample, 320x240 4:4:4, 150 frames)

it runs the whole `vsr upscale` (1 worker, default settings) with `--temporal off` and with
`--temporal exact`, alternately for --rounds rounds, the order flipped each round (each row
keeps its best: on a shared machine the pair then compares runs that saw the least interference), and prints frames/s over the
workers' span (first segment start to last segment done: decode, inference, encode) and over
the whole command, the share of tiles re-used, and the ratio exact / off. On the anime clip it
also runs bare ncnn inference (the same model files, its fastest CPU option set, all threads,
frames in memory) and prints vsr / ncnn.

    python benchmarks/reuse.py                  # still and titles whole, 3 s of live and anime
    python benchmarks/reuse.py --seconds 0,1,0,0 --rounds 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from models import fastest_ncnn, ncnn_frames, ncnn_run  # this folder is on sys.path when run
from pipeline import cut_clip, decoded_frames, run_vsr

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VSR_SHARED", ROOT.parent / "shared")) / "media"
CLIPS = {"still": SHARED / "corpus" / "theora_vorbis.ogg", "live": SHARED / "bikes_640x272_noaudio.mp4",
         "anime": SHARED / "bbb_320x180_vp9_opus.webm", "titles": SHARED / "corpus" / "chapters_h264_444_aac.mkv"}


def bench_clip(name: str, clip: Path, model: str, rounds: int, tmp: Path) -> dict:
    best: dict[str, dict] = {}
    for r in range(rounds):
        # the order flips each round: the run after another one in a process tree is often a few
        # per cent slower or faster (caches, clocks), which one fixed order would credit to a mode
        for mode in ("off", "exact") if r % 2 == 0 else ("exact", "off"):
            r = run_vsr(clip, tmp / f"{name}_{mode}.mkv", model, 1, ["--temporal", mode])
            if r["verified"] != "yes":
                raise SystemExit(f"{name} --temporal {mode}: output did not verify: {r['verified']}")
            row = {"fps": r["frames"] / r["wall_s"], "work_fps": r["frames"] / r["work_s"],
                   "frames": r["frames"], "tiles": r["tiles"], "tiles_reused": r["tiles_reused"],
                   "identical_frames": r["reused"]}
            if mode not in best or row["work_fps"] > best[mode]["work_fps"]:
                best[mode] = row
    off, exact = best["off"], best["exact"]
    return {"clip": name, "file": clip.name, "frames": off["frames"], "off": off, "exact": exact,
            "tiles_reused_share": exact["tiles_reused"] / exact["tiles"] if exact["tiles"] else 0.0,
            "work_speedup": exact["work_fps"] / off["work_fps"], "speedup": exact["fps"] / off["fps"]}


def bench_ncnn(clip: Path, model: str, rounds: int) -> tuple[float, str]:
    frames = decoded_frames(clip)
    threads = os.cpu_count() or 1
    label, net, frame_threads = fastest_ncnn(model, threads, frames[:4])
    ncnn_run(net, frames[0])
    best = 0.0
    import time
    for _ in range(rounds):
        t = time.perf_counter()
        ncnn_frames(net, frames, frame_threads)
        best = max(best, len(frames) / (time.perf_counter() - t))
    return best, f"{label}, {threads} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="realesr-animevideov3-x2")
    ap.add_argument("--seconds", default="0,3,3,0",
                    help="each clip's first seconds (still,live,anime,titles; 0: the whole clip)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clips", default="still,titles,anime,live")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vsr-reuse-") as tmp:
        seconds = dict(zip(CLIPS, (float(s) for s in args.seconds.split(","))))
        for name in args.clips.split(","):
            src = CLIPS[name]
            clip = Path(tmp) / f"{name}.mkv"  # Matroska takes every stream copied (MPEG-TS cuts lost theirs)
            if seconds[name] > 0:
                cut_clip(src, clip, seconds[name])
            else:  # 0: the whole clip (Theora, for one, cannot be stream-copied by PyAV)
                clip = src
            row = bench_clip(name, clip, args.model, args.rounds, Path(tmp))
            if name == "anime":
                fps, label = bench_ncnn(clip, args.model, args.rounds)
                row["ncnn"] = {"fps": fps, "what": label}
                row["exact_vs_ncnn"] = row["exact"]["fps"] / fps
                row["exact_work_vs_ncnn"] = row["exact"]["work_fps"] / fps
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # each clip as it is measured
    if args.json:
        print(json.dumps({"model": args.model, "seconds": args.seconds, "rows": rows}, indent=2))
        return
    print(f"model {args.model}, first {args.seconds} s of the clips, 1 worker, best of {args.rounds}")
    print(f"{'clip':6} {'frames':>6} {'off fps':>8} {'exact fps':>9} {'x':>5} {'(whole cmd)':>11} {'tiles reused':>12}")
    for r in rows:
        print(f"{r['clip']:6} {r['frames']:6d} {r['off']['work_fps']:8.2f} {r['exact']['work_fps']:9.2f} "
              f"{r['work_speedup']:5.2f} {r['speedup']:11.2f} {100 * r['tiles_reused_share']:11.0f}%")
        if "ncnn" in r:
            print(f"  bare ncnn ({r['ncnn']['what']}): {r['ncnn']['fps']:.2f} frames/s; vsr upscale exact / ncnn: "
                  f"whole command {r['exact_vs_ncnn']:.2f}, workers' span {r['exact_work_vs_ncnn']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
