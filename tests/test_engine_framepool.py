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


def test_map_keeps_order_and_on_an_error_drops_what_has_not_started():
    pool = FramePool(2, 1)
    started, ended = [], []

    def work(i: int) -> int:
        started.append(i)
        try:
            if i == 1:
                raise ValueError("item 1 failed")
            time.sleep(0.3)
            return i
        finally:
            ended.append(i)

    try:
        assert pool.map(lambda i: i * i, range(7)) == [i * i for i in range(7)]
        with pytest.raises(ValueError, match="item 1 failed"):
            pool.map(work, range(6))
        assert sorted(started) == sorted(ended)  # nothing still running on shared state
        assert 0 in ended and not {3, 4, 5} & set(started)  # the rest was dropped, not run
    finally:
        pool.close()
    with pytest.raises(ValueError):
        FramePool(1, 1)


def test_a_thread_that_cannot_be_set_up_fails_the_pool_instead_of_hanging(monkeypatch):
    real = torch.set_num_threads
    failed: list[str] = []

    def fails_once_in_a_pool_thread(n: int) -> None:
        name = threading.current_thread().name
        if name.startswith("vsr-frames") and not failed:
            failed.append(name)
            raise RuntimeError("thread setup failed")
        real(n)

    torch.set_num_threads(2)
    monkeypatch.setattr(torch, "set_num_threads", fails_once_in_a_pool_thread)
    with pytest.raises(RuntimeError, match="cannot start 2 frame threads"):
        FramePool(2, 1)
    assert failed and torch.get_num_threads() == 2
