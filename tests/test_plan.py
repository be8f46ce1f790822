"""JobPlan: made once, before any work; --dry-run prints it; every refusal happens while planning.

The refusal tests run the real CLI with --json and check that the job failed before it started:
no job_start, worker_ready or segment_start event, no output, no segment file, and no Ray.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vsr.cli import main
from vsr.job import JobOptions, JobPlan, plan_job
from vsr.job.codec import from_jsonable, to_jsonable
from vsr.media.probe import probe

LANCZOS = ["-m", "lanczos", "--outscale", "2"]


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]


def test_dry_run_prints_the_plan_and_does_no_work(tmp_path, media_dir, capsys):
    out = tmp_path / "leader.mkv"
    assert main(["upscale", str(media_dir / "leader_320x240_h264_aac.mp4"), str(out), *LANCZOS, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "lanczos (resampler), x2" in text and "320x240 SAR 1 -> 640x480 SAR 1" in text
    assert "stream  #1 audio aac: copy" in text and "209 in, 209 out" in text
    assert not out.exists() and not (tmp_path / ".leader.mkv.vsr-work").exists()


def test_dry_run_json_is_the_whole_plan_and_reads_back(tmp_path, media_dir, capsys):
    out = tmp_path / "leader.mp4"
    assert main(["upscale", str(media_dir / "leader_320x240_h264_aac.mp4"), str(out), *LANCZOS,
                 "--dry-run", "--json", "--crf", "20"]) == 0
    data = json.loads(capsys.readouterr().out)
    plan = JobPlan.from_dict(data)
    assert plan.to_dict() == data
    assert plan.encode.codec == "libx264" and plan.encode.crf == 20 and plan.out_size == (640, 480)
    assert len(plan.info.video.frame_pts) == 209 and plan.info.video.time_base == Fraction(1, 90000)
    assert [s.action for s in plan.streams] == ["copy"]
    # the picture plan comes back whole: the workers build their frame filter from it
    assert plan.picture.frame_pts == probe(media_dir / "leader_320x240_h264_aac.mp4").video.frame_pts
    assert plan.settings_fingerprint() == JobPlan.from_dict(json.loads(json.dumps(data))).settings_fingerprint()


def test_codec_round_trips_nested_dataclasses_fractions_and_tuples():
    from vsr.media.segments import Segment

    seg = Segment(3, 9000, None, 12, 0.1, 0.5)
    assert from_jsonable(Segment, to_jsonable(seg)) == seg
    assert from_jsonable(tuple[Fraction, int], to_jsonable((Fraction(1001, 30000), 4))) == (Fraction(1001, 30000), 4)


def test_plan_is_refined_for_workers_without_deciding_anew(tmp_path, media_dir):
    """More worker slots cut a short video finer, at keyframes, keeping every frame; the rest of
    the plan (encoder, streams, picture, settings) is unchanged."""
    from vsr.job.plan import WorkerFacts

    plan = plan_job(media_dir / "leader_320x240_h264_aac.mp4", tmp_path / "o.mkv",
                    JobOptions(model="lanczos", outscale=2, scan=False))
    finer = plan.for_workers(WorkerFacts(slots=4))
    assert len(finer.segments) > len(plan.segments) == 1
    assert finer.source_frames == plan.source_frames == 209
    keyframes = set(plan.info.video.keyframe_pts)
    assert all(s.start_pts in keyframes for s in finer.segments)
    assert finer.settings == plan.settings and finer.encode == plan.encode and finer.picture == plan.picture


def test_the_upscale_test_path_is_the_job_path(tmp_path, media_dir):
    """vsr.job.local runs the plan through run_segment and the job's assembly (no copy of its own)."""
    from vsr.job.local import run_plan

    plan = plan_job(media_dir / "bear_161x121_vp9_odd.webm", tmp_path / "b.mkv",
                    JobOptions(model="lanczos", outscale=2, scan=False, segment_seconds=0.5,
                               encode={"codec": "ffv1"}))
    seen = []

    def nearest(frames, size):
        seen.append(frames.shape[0])
        return frames.repeat(2, axis=1).repeat(2, axis=2)

    report = run_plan(plan, nearest)
    assert report.ok, report.problems
    assert sum(seen) == plan.source_frames and probe(tmp_path / "b.mkv").video.frame_count == plan.source_frames


# ---------------------------------------------------------------- refused while planning
def _alpha_video(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuva420p"
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 4), 60 * i, np.uint8), format="rgba")
            c.mux(s.encode(f.reformat(format="yuva420p")))
        c.mux(s.encode(None))
    return path


def _damaged_webm(path: Path, media_dir: Path) -> Path:
    data = bytearray((media_dir / "bbb_320x180_vp9_opus.webm").read_bytes())
    clusters = [i for i in range(len(data) - 4) if data[i:i + 4] == b"\x1f\x43\xb6\x75"]
    at = clusters[len(clusters) // 2]
    data[at:at + 40] = bytes(40)
    path.write_bytes(bytes(data))
    return path


REFUSALS = {
    "unknown model": (lambda d, t: d / "leader_320x240_h264_aac.mp4", ".mkv", ["-m", "lanczos-x2"], 5,
                      "unknown model 'lanczos-x2'; did you mean lanczos"),
    "encoder refuses its options": (lambda d, t: d / "leader_320x240_h264_aac.mp4", ".mp4", [*LANCZOS, "--preset", "warp9"],
                                    2, "encoder libx264 refuses its options"),
    "container cannot hold the codec": (lambda d, t: d / "leader_320x240_h264_aac.mp4", ".webm",
                                        [*LANCZOS, "--codec", "libx264"], 2, "container webm cannot hold libx264"),
    "unknown output container": (lambda d, t: d / "leader_320x240_h264_aac.mp4", ".xyz", LANCZOS, 2,
                                 "unknown output container"),
    "not a video": (lambda d, t: (t / "notes.mp4").write_text("hello") and t / "notes.mp4", ".mkv", LANCZOS, 3, ""),
    "alpha channel": (lambda d, t: _alpha_video(t / "alpha.mkv"), ".mp4", LANCZOS, 2, "cannot carry the alpha channel"),
    "damaged container": (lambda d, t: _damaged_webm(t / "hole.webm", d), ".mkv", LANCZOS, 3, "container damaged"),
    "bad picture option": (lambda d, t: d / "leader_320x240_h264_aac.mp4", ".mkv", [*LANCZOS, "--crop", "1:2"],
                           2, "crop"),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_refusals_happen_before_any_work(kind, tmp_path, media_dir, capsys):
    make, ext, args, code, words = REFUSALS[kind]
    src = make(media_dir, tmp_path)
    out = tmp_path / f"out{ext}"
    assert main(["upscale", str(src), str(out), *args, "--json"]) == code
    captured = capsys.readouterr()
    names = [e["event"] for e in _events(captured.out)]
    assert names == ["job_failed"], names  # no job_start, no worker, no segment
    error = _events(captured.out)[0]["error"]
    assert words in error and "\n" not in error
    assert not out.exists() and not any(tmp_path.glob(".out*.vsr-work/seg_*"))
    assert "Traceback" not in captured.err


def test_a_corrupt_frame_is_found_by_the_scan_before_any_work(tmp_path, corpus_dir, capsys):
    """The real H.264 file with a damaged payload: the decode-only scan of the plan refuses it."""
    out = tmp_path / "out.mkv"
    assert main(["upscale", str(corpus_dir / "empty_edit_5s_yuv444.mp4"), str(out), *LANCZOS, "--json"]) == 3
    events = _events(capsys.readouterr().out)
    assert [e["event"] for e in events] == ["job_failed"]
    assert "corrupt video frame at" in events[0]["error"] and "--on-corrupt repeat-previous" in events[0]["error"]
    assert not out.exists()


def test_run_dry_run_plans_every_file_of_a_spec(tmp_path, media_dir, capsys):
    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\ninputs = ["{media_dir}/*.webm"]\noutput_dir = "out"\nname = "{{stem}}.mkv"\n'
                    '[model]\nname = "lanczos"\noutscale = 2\n', encoding="utf-8")
    assert main(["run", str(spec), "--dry-run", "--json"]) == 0
    plans = [JobPlan.from_dict(d) for d in json.loads(capsys.readouterr().out)]
    assert sorted(Path(p.source).name for p in plans) == ["bbb_320x180_vp9_opus.webm", "bear_161x121_vp9_odd.webm"]
    assert all(p.model.name == "lanczos" and p.model.scale == 2 for p in plans)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("model, extra, name, fingerprint", [
    ("lanczos", {"outscale": 2.0}, "leader_320x240_h264_aac.mp4", "071227d50e2b152fece9a52f723eb1b2"),
    ("lanczos", {"outscale": 2.0}, "iphone_568x320_rot90.mov", "2fff674b0896bd820400e8906be10162"),
    ("realesr-animevideov3-x2", {}, "leader_320x240_h264_aac.mp4", "4b0a04a4179c1829b5df3d265b5883a9"),
])
def test_settings_fingerprints_stay_those_of_earlier_versions(tmp_path, media_dir, model, extra, name, fingerprint):
    """Outputs carry this fingerprint in their job tag; a batch skips an output only when it matches.
    A change here (a new key in the picture plan, say) makes every nightly batch redo every output
    made before it: the values are those vsr 0.1.0 at ccb1099 computed."""
    plan = plan_job(media_dir / name, tmp_path / "x.mkv", JobOptions(model=model, **extra))
    assert plan.settings_fingerprint() == fingerprint


def test_a_damaged_stream_is_decoded_alike_by_the_job_and_verify(tmp_path, corpus_dir, capsys):
    """The real H.264 file with a damaged payload, accepted with --on-corrupt repeat-previous:
    threaded decodes conceal its broken frames differently each time (89 of 100 frames differed
    between two decodes), so the plan asks one decoder thread of the job and of verify alike, and
    the output verifies."""
    src = corpus_dir / "empty_edit_5s_yuv444.mp4"
    plan = plan_job(src, tmp_path / "o.mkv", JobOptions(model="lanczos", outscale=2, on_corrupt="repeat-previous"))
    assert plan.info.video.decode_threads == 1 and plan.corrupt_pts
    assert plan_job(media_dir_leader(), tmp_path / "p.mkv", JobOptions(model="lanczos", outscale=2)
                    ).info.video.decode_threads == 0
    out = tmp_path / "out.mkv"
    assert main(["upscale", str(src), str(out), *LANCZOS, "--on-corrupt", "repeat-previous",
                 "--preset", "ultrafast"]) == 0
    assert probe(out).video.frame_count == probe(src).video.frame_count


def media_dir_leader() -> Path:
    return Path(__file__).parent / "data" / "media" / "leader_320x240_h264_aac.mp4"


def test_planning_a_zoo_model_does_not_import_torch(media_dir):
    """The driver plans before Ray starts; a zoo name needs only the zoo's table (torch costs ~1 s
    to import on the driver, which only the workers need)."""
    import subprocess
    import sys

    code = ("import sys, tempfile; from vsr.job import JobOptions, plan_job; "
            f"plan_job({str(media_dir / 'leader_320x240_h264_aac.mp4')!r}, tempfile.mkdtemp() + '/o.mkv', "
            "JobOptions(model='realesr-animevideov3-x2')); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"
