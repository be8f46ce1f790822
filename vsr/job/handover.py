"""Handing a recurrent model's state from one segment to the next one of the same plan.

A segment of a temporal model (vsr.job.temporal) normally warms up: it runs frames before its
first one to bring the state close to where a one-segment run would have it, never exactly.
When the same process has just run the segment before it, it holds that state exactly: the
previous frame, the network's previous output and its state after the segment's last frame.
run_segment takes such a StateHandover in and gives one out, and then runs the next segment
without warm-up; the frames are those of a one-segment run, bit for bit.

A hand-over is valid only for the same plan (plan_key) and only when it ended at the frame
just before the segment's first one (by frame index in the file, not by segment number: a
resumed job may be cut into other segments). StateStore keeps the few a worker holds.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from vsr.job.plan import JobPlan
from vsr.job.temporal import frame_index
from vsr.media.segments import Segment


def plan_key(plan: JobPlan) -> str:
    """What identifies a plan's frames and pictures for a hand-over: its input, output, work
    directory, the settings that decide its pictures and the input's frame times."""
    pts = plan.info.video.frame_pts
    ident = [plan.source, plan.output, plan.workdir, plan.settings_fingerprint(), plan.model.model,
             plan.model.precision, len(pts), pts[0] if pts else None, pts[-1] if pts else None]
    return hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:32]


@dataclass
class StateHandover:
    """A recurrent run's carry (vsr.engine.recurrent.RecurrentRun, with no frame waiting) after
    the frame with pts `last_pts` of the plan with key `key`."""

    key: str
    last_pts: int
    carry: Any

    def continues(self, plan: JobPlan, segment: Segment, key: str | None = None) -> bool:
        """Whether this state ended at the frame just before the segment's first one, in the
        same plan (key: plan_key(plan), when the caller has it already)."""
        if self.key != (key if key is not None else plan_key(plan)):
            return False
        pts = plan.info.video.frame_pts
        last = frame_index(plan.info, self.last_pts)
        return last < len(pts) and pts[last] == self.last_pts and frame_index(plan.info, segment.start_pts) == last + 1


class StateStore:
    """The hand-overs one process keeps (thread-safe): at most `keep`, the oldest dropped first,
    and all of another plan's dropped when a segment of a new plan asks. A 1080p state is about
    half a GB on the device, so keep stays small (one per segment run at once)."""

    def __init__(self, keep: int = 1) -> None:
        self.keep = max(1, int(keep))
        self._states: OrderedDict[tuple[str, int], StateHandover] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, plan: JobPlan, segment: Segment) -> StateHandover | None:
        """The state that continues into `segment`, removed from the store (a run changes it in
        place); None when there is none. States of other plans are dropped."""
        key = plan_key(plan)
        with self._lock:
            for k in [k for k in self._states if k[0] != key]:
                del self._states[k]
            for k, state in list(self._states.items()):
                if state.continues(plan, segment, key):
                    return self._states.pop(k)
        return None

    def put(self, state: StateHandover) -> None:
        """Keep a segment's final state for the segment after it."""
        with self._lock:
            self._states.pop((state.key, state.last_pts), None)
            self._states[(state.key, state.last_pts)] = state
            while len(self._states) > self.keep:
                self._states.popitem(last=False)

    def __len__(self) -> int:
        return len(self._states)
