"""Temporal stability of vsr's upscalers on the shared clips: one table, one run.

For an anime-like clip (Big Buck Bunny, a CG cartoon) and a live-action one (bikes), their first
N frames are cut losslessly (FFV1) and upscaled 2x by `vsr upscale` with lossless output
(`--codec ffv1`, .mkv): `-m lanczos --outscale 2`, then each model given. Each row reports
`vsr flicker` against the Lanczos output file (the same codec: ratios of 1.0 = as steady as the
source), and frames/s of the whole `vsr upscale` command. The GT row group upscales bikes
downscaled 2x (vsr's Lanczos, antialiased) and compares with the original frames: PSNR-Y and tOF.

`--temporal MODE ...` adds a row per model and mode with `vsr upscale --temporal MODE`, when this
vsr has that option (detected from `vsr upscale --help`; otherwise the rows are skipped, saying so).

    python benchmarks/temporal.py                           # 60 frames of each clip
    python benchmarks/temporal.py --frames 24 --json
    python benchmarks/temporal.py --temporal off exact stable
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vsr.flicker import measure_flicker  # noqa: E402



def shared_media() -> Path:
    """The shared clips: $VSR_SHARED/media, else a shared/ beside this checkout or a parent of
    it, else beside the repository a clone was made from (git remote origin)."""
    candidates = [Path(os.environ["VSR_SHARED"])] if os.environ.get("VSR_SHARED") else []
    candidates += [parent / "shared" for parent in ROOT.parents]
    origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True, timeout=10).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared")
    found = next((c / "media" for c in candidates if (c / "media" / CLIPS_NEEDED[0]).is_file()), None)
    if found is None:
        raise SystemExit("the shared clips (shared/media) are not beside this checkout; set VSR_SHARED")
    return found

CLIPS = {"anime-like (bbb)": "bbb_320x180_vp9_opus.webm", "live action (bikes)": "bikes_640x272_noaudio.mp4"}
GT_CLIP = "bikes_640x272_noaudio.mp4"
CLIPS_NEEDED = list(CLIPS.values())


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def cut(src: Path, dst: Path, frames: int, half: bool = False) -> Path:
    """The first `frames` frames of src as lossless FFV1 (yuv420p; half: downscaled 2x by vsr's
    Lanczos, as RGB), with the source's frame times."""
    with av.open(str(src)) as c, av.open(str(dst), "w") as out:
        vin = c.streams.video[0]
        s = out.add_stream("ffv1", rate=vin.average_rate or 25)
        s.time_base = vin.time_base
        w, h = vin.codec_context.width, vin.codec_context.height
        s.width, s.height = (w // 2, h // 2) if half else (w, h)
        s.pix_fmt = "bgr0" if half else "yuv420p"
        n = 0
        for f in c.decode(vin):
            if half:
                rgb = f.to_ndarray(format="rgb24")
                small = _lanczos_half(rgb)
                nf = av.VideoFrame.from_ndarray(small, format="rgb24").reformat(format="bgr0")
            else:
                nf = f.reformat(format="yuv420p")
            nf.pts, nf.time_base = f.pts, f.time_base or Fraction(vin.time_base)
            for p in s.encode(nf):
                out.mux(p)
            n += 1
            if n == frames:
                break
        for p in s.encode():
            out.mux(p)
    return dst


def _lanczos_half(rgb: np.ndarray) -> np.ndarray:
    import torch

    from vsr.models.resample import resize

    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    h, w = rgb.shape[:2]
    y = resize(t, (h // 2, w // 2), "lanczos").clamp_(0, 255).round_()
    return y[0].permute(1, 2, 0).to(torch.uint8).numpy()


def has_temporal_option() -> bool:
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", "--help"], capture_output=True, text=True,
                       cwd=ROOT, env=_env(), timeout=120)
    return "--temporal" in r.stdout


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def upscale(src: Path, dst: Path, model: str, temporal: str | None) -> dict:
    """Run `vsr upscale` (lossless FFV1 output); its job_done event, with the wall seconds."""
    args = [sys.executable, "-m", "vsr.cli", "upscale", str(src), str(dst), "-m", model, "--codec", "ffv1",
            "--json", "--no-resume"]
    if model == "lanczos":
        args += ["--outscale", "2"]
    if temporal:
        args += ["--temporal", temporal]
    started = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=3600)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"vsr upscale failed ({' '.join(args[3:])}): {r.stderr.strip()[-400:]}")
    done = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{") and '"job_done"' in line]
    return {**done[-1], "wall": wall}


def run(frames: int, models: list[str], modes: list[str], work: Path) -> list[dict]:
    media = shared_media()
    rows = []
    temporal_ok = has_temporal_option() if modes else False
    if modes and not temporal_ok:
        print(f"vsr upscale has no --temporal option: rows for {', '.join(modes)} skipped", file=sys.stderr)
    variants = [(m, None) for m in models] + [(m, t) for m in models for t in (modes if temporal_ok else [])]
    for label, name in CLIPS.items():
        src = cut(media / name, work / f"{Path(name).stem}_{frames}.mkv", frames)
        ref = work / f"{src.stem}_lanczos.mkv"
        done = upscale(src, ref, "lanczos", None)
        rows.append(_row(label, "lanczos", None, done, measure_flicker(src, ref, reference=ref)))
        for model, mode in variants:
            out = work / f"{src.stem}_{model}_{mode or 'default'}.mkv"
            done = upscale(src, out, model, mode)
            rows.append(_row(label, model, mode, done, measure_flicker(src, out, reference=ref)))
    gt = cut(media / GT_CLIP, work / f"gt_{frames}.mkv", frames)
    low = cut(media / GT_CLIP, work / f"half_{frames}.mkv", frames, half=True)
    ref = work / f"{low.stem}_lanczos.mkv"
    done = upscale(low, ref, "lanczos", None)
    rows.append(_row("bikes / 2, against the original", "lanczos", None, done,
                     measure_flicker(low, ref, gt=gt, reference=ref)))
    for model, mode in variants:
        out = work / f"{low.stem}_{model}_{mode or 'default'}.mkv"
        done = upscale(low, out, model, mode)
        rows.append(_row("bikes / 2, against the original", model, mode, done,
                         measure_flicker(low, out, gt=gt, reference=ref)))
    return rows


def _row(clip: str, model: str, mode: str | None, done: dict, report: dict) -> dict:
    g = report.get("gt") or {}
    return {"clip": clip, "model": model, "temporal": mode, "frames": report["frames"],
            "still_share": report["still"]["share"], "still_change": report["still"]["output_change"],
            "still_ratio": report["still"]["ratio"], "sparkle": report["still"]["output_sparkle"],
            "warping": report["warping"]["output"], "warping_ratio": report["warping"]["ratio"],
            "psnr_y": g.get("psnr_y"), "ssim_y": g.get("ssim_y"), "tof": g.get("tof"),
            "fps": done.get("fps"), "upscale_wall_s": round(done["wall"], 1), "flicker_s": report["seconds"]}


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict], cpu: str) -> None:
    print(f"# {cpu}")
    print("| clip | model | temporal | frames | still share | still change | still ratio | sparkle % "
          "| warping err | warping ratio | PSNR-Y | SSIM-Y | tOF | vsr upscale fps | vsr flicker s |")
    print("|" + " --- |" * 15)
    for r in rows:
        print(f"| {r['clip']} | {r['model']} | {r['temporal'] or '-'} | {r['frames']} | {_f(r['still_share'], '.2f')} "
              f"| {_f(r['still_change'], '.4f')} | {_f(r['still_ratio'], '.2f')} "
              f"| {_f(r['sparkle'] and 100 * r['sparkle'], '.3f')} | {_f(r['warping'], '.3f')} "
              f"| {_f(r['warping_ratio'], '.2f')} | {_f(r['psnr_y'], '.2f')} | {_f(r['ssim_y'], '.4f')} "
              f"| {_f(r['tof'], '.3f')} | {_f(r['fps'], '.2f')} | {r['flicker_s']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60, help="first N frames of each clip (default 60)")
    ap.add_argument("--models", nargs="+", default=["realesr-animevideov3-x2"],
                    help="per-frame zoo models at 2x (default: realesr-animevideov3-x2)")
    ap.add_argument("--temporal", nargs="*", default=[], metavar="MODE",
                    help="also each model with `vsr upscale --temporal MODE` (when that option exists)")
    ap.add_argument("--work", default=None, help="folder for the clips and outputs (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpu = cpu_name()
    with tempfile.TemporaryDirectory(prefix="vsr_temporal_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(args.frames, args.models, args.temporal, work)
    if args.json:
        print(json.dumps({"cpu": cpu, "rows": rows}, indent=2))
    else:
        print_table(rows, cpu)


if __name__ == "__main__":
    main()
