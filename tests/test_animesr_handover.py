"""AnimeSR: the state handed from each segment to the next one, and the scheduling that keeps
consecutive segments on one worker slot.

A clip of 20 frames cut into 5 segments of 4: the segments that start after frame 8 would warm
up from a later frame than 0 (8 frames, vsr.job.temporal) and not be exact; handed over, they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import MEDIA, psnr
from vsr.cluster.schedule import first_segments, next_segment
from vsr.engine.recurrent import RecurrentUpscaler
from vsr.job.handover import StateHandover, StateStore, plan_key
from vsr.job.local import run_plan
from vsr.job.options import JobOptions
from vsr.job.plan import plan_job
from vsr.job.segment import run_segment
from vsr.media.decode import decode_segment
from vsr.media.probe import probe
from vsr.media.segments import Segment, plan_segments

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """20 frames of 32x24 H.264 (live action: the state remembers more than on animation), a
    keyframe every 4 at 8 frames/s: five segments of 0.5 s."""
    with av.open(str(MEDIA / "carphone_176x144_noaudio.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24")[60:84, 70:102] for _, f in zip(range(FRAMES), c.decode(video=0))]
    path = tmp_path_factory.mktemp("handover") / "clip.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        s.options = {"g": "4", "keyint_min": "4", "sc_threshold": "0", "bf": "0"}
        for a in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def up() -> RecurrentUpscaler:
    return RecurrentUpscaler("animesr-v2-x4", device="cpu", precision="fp32", colour_fix=True)


@pytest.fixture(scope="module")
def one_run(clip, up) -> np.ndarray:
    """The whole clip in one recurrent run: what every split must give."""
    info = probe(clip)
    lr = np.concatenate([c.frames for c in decode_segment(clip, plan_segments(info, 0)[0], info=info)])
    assert len(lr) == FRAMES
    return up.upscale(lr)


def options(**kw) -> JobOptions:
    return JobOptions(model="animesr-v2-x4", precision="fp32", segment_seconds=0.5, scan=False,
                      encode={"codec": "ffv1", "pix_fmt": "bgr0"}, **kw)


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_local_run_hands_the_state_over_and_equals_one_run(clip, up, one_run, tmp_path):
    plan = plan_job(clip, tmp_path / "out.mkv", options())
    assert [s.frame_count for s in plan.segments] == [4] * 5 and plan.model.warmup_frames == 8
    records: list[dict] = []
    assert run_plan(plan, up.upscale, records=records).ok
    assert [r["state"] for r in records] == ["start"] + ["handed over"] * 4
    got = decoded(tmp_path / "out.mkv")
    assert got.shape == one_run.shape == (FRAMES, 96, 128, 3) and np.array_equal(got, one_run)


def test_a_state_that_does_not_end_just_before_the_segment_is_not_used(clip, up, one_run, tmp_path):
    """Segment 3 (frames 12-15) given the state after segment 1 (frame 7): refused, it warms up
    from frame 4 and is close to one run but not equal; given the state after segment 2, exact."""
    plan = plan_job(clip, tmp_path / "out.mkv", options())
    seg = plan.segments
    states: list[StateHandover] = []
    for i in range(3):  # hands over 0 -> 1 -> 2, keeping each final state
        run_segment(plan, seg[i], tmp_path / f"s{i}.nut", up.upscale,
                    carry_in=states[-1] if states else None, carry_out=states.append)
    pts = plan.info.video.frame_pts
    assert [s.last_pts for s in states] == [pts[3], pts[7], pts[11]]  # each segment's last frame
    assert not states[1].continues(plan, seg[3]) and states[2].continues(plan, seg[3])
    warm = run_segment(plan, seg[3], tmp_path / "warm.nut", up.upscale, carry_in=states[1])
    assert warm["state"] == "warm-up"
    warm_frames = decoded(tmp_path / "warm.nut")
    assert not np.array_equal(warm_frames, one_run[12:16])
    assert min(psnr(a, b) for a, b in zip(warm_frames, one_run[12:16])) > 35  # a warm-up, not garbage
    exact = run_segment(plan, seg[3], tmp_path / "exact.nut", up.upscale, carry_in=states[2])
    assert exact["state"] == "handed over" and json.dumps(exact)  # the record stays JSON
    assert np.array_equal(decoded(tmp_path / "exact.nut"), one_run[12:16])
    # another plan (another output) never takes this plan's state, and drops it
    other = plan_job(clip, tmp_path / "other.mkv", options())
    store = StateStore(keep=2)
    store.put(states[2])
    assert plan_key(other) != plan_key(plan) and store.take(other, other.segments[3]) is None and len(store) == 0


def test_state_store_keeps_the_newest_and_hands_each_out_once(clip, tmp_path):
    plan = plan_job(clip, tmp_path / "out.mkv", options())
    seg, key, pts = plan.segments, plan_key(plan), plan.info.video.frame_pts
    store = StateStore(keep=2)
    for i in (1, 2, 3):  # states after segments 0, 1 and 2 (the carry is only carried along)
        store.put(StateHandover(key=key, last_pts=pts[4 * i - 1], carry=f"after segment {i - 1}"))
    assert len(store) == 2
    assert store.take(plan, seg[1]) is None  # the oldest was dropped
    assert store.take(plan, seg[3]).carry == "after segment 2" and store.take(plan, seg[3]) is None
    assert store.take(plan, seg[2]).carry == "after segment 1" and len(store) == 0


# ---------------------------------------------------------------- scheduling (pure functions)
def segments(n: int) -> list[Segment]:
    return [Segment(index=i, start_pts=10 * i, end_pts=10 * i + 10 if i + 1 < n else None, frame_count=10,
                    start_time=float(i), end_time=float(i + 1)) for i in range(n)]


def simulate(n: int, slots: int, durations: dict[int, int] | None = None) -> list[list[int]]:
    """The segments each slot runs, in order, when segment i takes durations.get(i, 1) time
    units: the scheduler's choices, with slots freed at the same time asked in slot order,
    those whose next segment is pending first (as SegmentScheduler does)."""
    pending = segments(n)
    runs: list[list[int]] = [[] for _ in range(slots)]
    busy: dict[int, tuple[int, Segment]] = {}  # slot -> (end time, segment)
    free = {k: None for k in range(slots)}
    for k, seg in enumerate(first_segments(pending, slots)):
        pending.remove(seg)
        busy[k], runs[k] = (durations.get(seg.index, 1) if durations else 1, seg), [seg.index]
        free.pop(k)
    while busy:
        now = min(t for t, _ in busy.values())
        for k in sorted(k for k, (t, _) in busy.items() if t == now):
            free[k] = busy.pop(k)[1]
        order = sorted(free, key=lambda k: (free[k] is None or free[k].index + 1 not in {s.index for s in pending}, k))
        for k in order:
            seg = next_segment(pending, free[k], {s.index for _, s in busy.values()})
            if seg is None:
                break
            pending.remove(seg)
            free.pop(k)
            busy[k] = (now + (durations.get(seg.index, 1) if durations else 1), seg)
            runs[k].append(seg.index)
    return runs


def test_one_slot_runs_the_segments_in_order():
    assert simulate(7, 1) == [list(range(7))]
    assert [s.index for s in first_segments(segments(7), 1)] == [0]


def test_slots_start_at_the_starts_of_contiguous_ranges():
    assert [s.index for s in first_segments(segments(10), 2)] == [0, 5]
    assert [s.index for s in first_segments(segments(10), 3)] == [0, 3, 6]
    assert [s.index for s in first_segments(segments(2), 4)] == [0, 1]  # more slots than segments
    # a resumed job: the pending segments' ranges, by count
    pending = [s for s in segments(16) if s.index not in (0, 1, 2, 3, 10, 11)]
    assert [s.index for s in first_segments(pending, 2)] == [4, 9]
    assert simulate(10, 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert simulate(9, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_an_idle_slot_steals_the_second_half_of_the_longest_pending_run():
    pending = [s for s in segments(20) if s.index in (4, 5, 6, 12, 13, 14, 15, 16)]
    # 3 and 11 are running: both runs are someone's next; the longer one (12-16) is split
    assert next_segment(pending, segments(20)[19], {3, 11}).index == 14
    # the slot that ran 11 goes on with 12 whatever else is pending
    assert next_segment(pending, segments(20)[11], {3}).index == 12
    # a run whose predecessor nobody runs (a retried segment, or resumed after a crash) is
    # started at its head before any other is split
    assert next_segment(pending, None, {11}).index == 4
    assert next_segment([], None, set()) is None
    # segment 0 takes 4 time units: when the second slot is done with its range (6-11), the
    # first is starting 3, and the second takes the second half of what is left after it (5)
    assert simulate(12, 2, {0: 4}) == [[0, 1, 2, 3, 4], [6, 7, 8, 9, 10, 11, 5]]


# ---------------------------------------------------------------- end to end, through Ray
def vsr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=dict(os.environ))


def test_vsr_upscale_on_one_worker_hands_over_and_equals_one_run(clip, one_run, tmp_path):
    out, work = tmp_path / "out.mkv", tmp_path / "work"
    proc = vsr("upscale", str(clip), str(out), "-m", "animesr-v2-x4", "--codec", "ffv1", "--pix-fmt", "bgr0",
               "--segment-seconds", "0.5", "--precision", "fp32", "--workers", "1", "--workdir", str(work),
               "--keep-workdir", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e["event"] == "job_done")
    assert (done["segments"], done["segments_handed_over"], done["segments_warmed_up"]) == (5, 4, 0)
    manifest = json.loads(next(work.rglob("manifest.json")).read_text())
    states = {int(i): r["state"] for i, r in manifest["segments"].items()}
    assert states == {0: "start", 1: "handed over", 2: "handed over", 3: "handed over", 4: "handed over"}
    assert np.array_equal(decoded(out), one_run)


def test_vsr_upscale_on_two_workers_hands_over_along_each_workers_range(clip, one_run, tmp_path):
    """Two slots start at segments 0 and 2 (two ranges); every segment a worker went on to from
    the segment before it says so, and only the others warm up (2, and any stolen one)."""
    out, work = tmp_path / "out.mkv", tmp_path / "work"
    proc = vsr("upscale", str(clip), str(out), "-m", "animesr-v2-x4", "--codec", "ffv1", "--pix-fmt", "bgr0",
               "--segment-seconds", "0.5", "--precision", "fp32", "--workers", "2", "--workdir", str(work),
               "--keep-workdir", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e["event"] == "job_done")
    starts = [e for e in events if e["event"] == "segment_start"]
    assert done["segments"] == 5 and sorted(e["index"] for e in starts[:2]) == [0, 2]
    records = {int(i): r for i, r in json.loads(next(work.rglob("manifest.json")).read_text())["segments"].items()}
    for i in range(1, 5):
        same_worker = records[i]["worker"] == records[i - 1]["worker"]
        assert records[i]["state"] == ("handed over" if same_worker else "warm-up"), (i, records)
    assert records[0]["state"] == "start" and records[2]["state"] == "warm-up"
    assert done["segments_handed_over"] + done["segments_warmed_up"] == 4 and done["segments_warmed_up"] >= 1
    got = decoded(out)
    # segment 2's warm-up reaches back to frame 0 and the rest go on from it: exact, unless a
    # segment was stolen and warmed up from a later frame
    assert np.array_equal(got, one_run) or min(psnr(a, b) for a, b in zip(got, one_run)) > 35
