"""Ordered work in threads, for the coders' per-unit loops (the Cython engine releases the GIL)."""

from __future__ import annotations

import contextlib
import os

import numpy as np


def thread_count(threads) -> int:
    """``threads`` checked: an int >= 0, where 0 means one per CPU."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0: one per CPU), not {threads!r}")
    return int(threads) or os.cpu_count() or 1


@contextlib.contextmanager
def ordered_results(fn, jobs: list, threads: int):
    """``fn(*job)`` for every job, yielded in job order, computed by up to ``threads`` threads.

    Iterating raises the exception of the first failing job in job order, as a
    plain loop would; on leaving the block, jobs not yet started are cancelled.
    """
    if threads <= 1 or len(jobs) <= 1:
        yield (fn(*job) for job in jobs)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=min(threads, len(jobs)), thread_name_prefix="nnc")
    try:
        yield (f.result() for f in [pool.submit(fn, *job) for job in jobs])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
