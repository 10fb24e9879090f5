"""Ordered work in threads, for the coders' per-unit loops (the Cython engine releases the GIL)."""

from __future__ import annotations

import collections
import contextlib
import os
from concurrent.futures import Future

import numpy as np


def thread_count(threads) -> int:
    """``threads`` checked: an int >= 0, where 0 means one per CPU."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0: one per CPU), not {threads!r}")
    return int(threads) or os.cpu_count() or 1


#: Set by the command line's signal handlers: the process is being interrupted (SIGINT, SIGTERM).
_interrupted = False


def note_interrupt(flag: bool = True) -> None:
    """Say that the process is being interrupted (or, with False, no longer): pools left from now on stop their
    workers' engine loops (:func:`worker_pool`)."""
    global _interrupted
    _interrupted = flag


@contextlib.contextmanager
def stopping_workers():
    """While the block runs, the engines' loops in every thread stop at their next poll and raise
    KeyboardInterrupt."""
    import sys

    from .engine import _compiled_or_none

    engines = [e for e in (_compiled_or_none(), sys.modules.get("nnc.engine.python")) if e is not None]
    for engine in engines:
        engine.request_stop(1)
    try:
        yield
    finally:
        for engine in engines:
            engine.request_stop(-1)


@contextlib.contextmanager
def worker_pool(max_workers: int, prefix: str = "nnc"):
    """A ``ThreadPoolExecutor`` that, when the block is left by an interrupt (KeyboardInterrupt, SystemExit, or
    :func:`note_interrupt`), stops its workers' engine loops instead of waiting for them to finish: a signal
    ends a command within moments, not after the tensors in flight (which may take a minute each)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=prefix)
    try:
        yield pool
    except (KeyboardInterrupt, SystemExit):
        with stopping_workers():
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        if _interrupted:
            with stopping_workers():
                pool.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def ordered_results(fn, jobs: list, threads: int):
    """``fn(*job)`` for every job, yielded in job order, computed by up to ``threads`` threads.

    Iterating raises the exception of the first failing job in job order, as a
    plain loop would; on leaving the block, jobs not yet started are cancelled.
    """
    if threads <= 1 or len(jobs) <= 1:
        yield (fn(*job) for job in jobs)
        return
    with worker_pool(min(threads, len(jobs))) as pool:
        yield (f.result() for f in [pool.submit(fn, *job) for job in jobs])


def in_order_in_flight(names: list, job, cost, budget: int, threads: int):
    """``(name, job(name))`` for each name in order, the jobs run by ``threads`` threads with at most ``threads``
    of them and ``budget`` bytes (``cost(name)``) in flight (one job is always allowed); the next job starts only
    once the caller has let go of the result before it (the loop body has run)."""
    pending: collections.deque[tuple[str, Future]] = collections.deque()
    queue = collections.deque(names)
    in_flight = 0
    with worker_pool(max(1, threads)) as pool:

        def refill():
            nonlocal in_flight
            while queue and len(pending) < max(1, threads) and (not pending or in_flight + cost(queue[0]) <= budget):
                name = queue.popleft()
                in_flight += cost(name)
                pending.append((name, pool.submit(job, name)))

        try:
            refill()
            while pending:
                name, future = pending.popleft()
                result = future.result()
                del future  # (it holds the result too)
                in_flight -= cost(name)
                yield name, result
                del result
                refill()
        except BaseException:  # (GeneratorExit too: the caller stopped)
            for _, f in pending:
                f.cancel()
            raise
