"""AnimeSR: the state handed from each segment to the next one.

A clip of 20 frames cut into 5 segments of 4: the segments that start after frame 8 would warm
up from a later frame than 0 (8 frames, vsr.job.temporal) and not be exact; handed over, they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import MEDIA, psnr
from vsr.engine.recurrent import RecurrentUpscaler
from vsr.job.handover import StateHandover, StateStore, plan_key
from vsr.job.local import run_plan
from vsr.job.options import JobOptions
from vsr.job.plan import plan_job
from vsr.job.segment import run_segment
from vsr.media.decode import decode_segment
from vsr.media.probe import probe
from vsr.media.segments import plan_segments

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
