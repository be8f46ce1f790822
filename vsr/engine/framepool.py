"""Frames in parallel on the CPU: a few threads, each running whole frames on its share of cores.

One frame at a time on all cores makes every operator end in an OpenMP barrier, where a core
waits whenever the other was interrupted (by the decoder, the encoder, Ray's own threads) and
where small element-wise operators scale poorly. Two frames at once on half of the cores each
has no barrier between the halves: measured on a 2-core AVX-512 BF16 machine, bf16
realesr-animevideov3 ran 4.15-4.21 frames/s against 4.01-4.03 bare, and a whole video segment
(decode, inference, encode in one worker) took 54.1-54.7 s against 56.6 s.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Callable, Iterable, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

# torch.set_num_threads writes a process-wide default as well as the calling thread's OpenMP
# setting; pools are set up one at a time so the default is put back before anyone else reads it.
_SETUP = threading.Lock()
SETUP_TIMEOUT_S = 60.0
_IN_POOL = threading.local()  # .active: set in every pool thread


class FramePool:
    """`threads` worker threads, each running torch with `intra_threads` intra-op threads.

    The calling thread's torch thread count is left as it was, and so is the process-wide
    default once the pool is set up (a thread that starts using torch during the set-up, which
    vsr's workers never do, would keep `intra_threads`). map() runs fn over items on the pool
    and returns the results in order.
    """

    def __init__(self, threads: int, intra_threads: int) -> None:
        if threads < 2 or intra_threads < 1:
            raise ValueError(f"FramePool needs >= 2 threads and >= 1 intra-op thread, not {threads}, {intra_threads}")
        self.threads, self.intra_threads = threads, intra_threads
        ready = threading.Barrier(threads + 1)

        def setup() -> None:
            try:
                torch.get_num_threads()  # torch's lazy per-thread init first, or it would undo ours
                torch.set_num_threads(intra_threads)
                _IN_POOL.active = True
            except BaseException:
                ready.abort()  # nobody waits for a thread that cannot be set up
                raise
            ready.wait()  # every thread takes one setup call: none is set up twice, none skipped

        with _SETUP:
            before = torch.get_num_threads()
            self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="vsr-frames",
                                                                   initializer=setup)
            try:
                for _ in range(threads):  # each submit starts a thread while none is idle (all in setup)
                    self._executor.submit(int)
                ready.wait(timeout=SETUP_TIMEOUT_S)
            except BaseException as err:
                ready.abort()
                self._executor.shutdown(wait=False, cancel_futures=True)
                if isinstance(err, threading.BrokenBarrierError):
                    raise RuntimeError(f"cannot start {threads} frame threads") from None
                raise
            finally:
                torch.set_num_threads(before)

    @staticmethod
    def in_pool_thread() -> bool:
        """Whether the calling thread is a thread of some FramePool (whose map() would wait on itself)."""
        return getattr(_IN_POOL, "active", False)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn over items, results in order. On an error the items not yet started are dropped
        and the first error is raised once the running ones have finished (none is left
        running on shared state); on an interrupt the rest is dropped at once."""
        futures = [self._executor.submit(fn, item) for item in items]
        try:
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                for f in futures:
                    f.cancel()
                concurrent.futures.wait(futures)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        for f in futures:
            if not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
