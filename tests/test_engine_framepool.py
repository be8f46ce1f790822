"""FramePool: threads with their own torch thread count, results in order, errors after all ran."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from vsr.engine.framepool import FramePool


def test_pool_threads_run_with_their_share_and_leave_the_caller_alone():
    torch.set_num_threads(2)
    pool = FramePool(2, 1)
    try:
        assert torch.get_num_threads() == 2
        seen = pool.map(lambda _: (threading.current_thread().name, torch.get_num_threads()), range(6))
        assert {n for _, n in seen} == {1}
        assert all(name.startswith("vsr-frames") for name, _ in seen)
        # a thread started after the pool gets the process's count, not the pool's
        out = []
        t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert out == [2]
    finally:
        pool.close()


def test_map_keeps_order_and_raises_after_every_item_finished():
    pool = FramePool(2, 1)
    finished = []

    def work(i: int) -> int:
        time.sleep(0.05 * (3 - i % 3))
        if i == 1:
            raise ValueError("item 1 failed")
        finished.append(i)
        return i * i

    try:
        assert pool.map(lambda i: i * i, range(7)) == [i * i for i in range(7)]
        with pytest.raises(ValueError, match="item 1 failed"):
            pool.map(work, range(5))
        assert sorted(finished) == [0, 2, 3, 4]  # nothing still running on shared state
    finally:
        pool.close()
    with pytest.raises(ValueError):
        FramePool(1, 1)
