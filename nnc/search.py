"""DC-v2: search of (step, λ) against a user's evaluation function (informative, spec Annex A.13).

    result = nnc.search.search(tensors, evaluate, tolerance=0.005)
    result.best.stream          # the smallest stream whose score is within tolerance
    result.pareto               # [(bytes, score, settings)], bytes increasing, score increasing

``evaluate`` maps a dict of decoded tensors to a score where higher is better (accuracy,
say). The search first sweeps global qps with nearest rounding (and the encoder's DQ
setting) to find the coarsest qp that keeps the score within ``tolerance`` of the
original, then sweeps λ of the rate-distortion quantiser (A.9) at and around that qp.
Candidates are evaluated in worker processes when ``workers`` > 1 (``evaluate`` must then
be picklable, e.g. a module-level function); a ``time_budget`` in seconds stops the search
early with the best result found so far.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .decoder import decode
from .encoder import Encoder
from .errors import EncodeError


@dataclass
class Candidate:
    settings: dict
    bytes: int
    score: float
    stream: bytes = field(repr=False, default=b"")


@dataclass
class SearchResult:
    reference_score: float
    tolerance: float
    candidates: list
    best: Candidate | None

    @property
    def pareto(self) -> list:
        """Candidates not beaten in both size and score, by increasing size (scores increase too)."""
        front, best_score = [], -np.inf
        for c in sorted(self.candidates, key=lambda c: (c.bytes, -c.score)):
            if c.score > best_score:
                front.append(c)
                best_score = c.score
        return front


def _evaluate_candidate(args):
    tensors, settings, evaluate = args
    stream = Encoder(**settings).encode(tensors).stream
    return settings, len(stream), float(evaluate(decode(stream))), stream


def search(tensors: Mapping[str, np.ndarray], evaluate: Callable, *, tolerance: float = 0.005,
           qp_range=range(-40, -3), lambdas=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6), dq: bool = True,
           workers: int = 1, time_budget: float | None = None, progress: bool | None = None,
           **encoder_options) -> SearchResult:
    """Find the smallest stream whose score stays within ``tolerance`` of the original's (A.13)."""
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    reference = float(evaluate(tensors))
    floor = reference - tolerance
    start = time.monotonic()
    show = sys.stderr.isatty() if progress is None else progress
    candidates: list[Candidate] = []
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None

    def run(batch):
        jobs = [(tensors, dict(encoder_options, **s), evaluate) for s in batch]
        results = pool.map(_evaluate_candidate, jobs) if pool else map(_evaluate_candidate, jobs)
        out = []
        for settings, size, score, stream in results:
            c = Candidate(settings={k: settings[k] for k in batch[0]}, bytes=size, score=score, stream=stream)
            candidates.append(c)
            out.append(c)
            if show:
                sys.stderr.write(f"\rsearch: {len(candidates)} candidates, best "
                                 f"{min((x.bytes for x in candidates if x.score >= floor), default=0)} bytes")
        return out

    def out_of_time():
        return time_budget is not None and time.monotonic() - start > time_budget

    try:
        # 1. nearest rounding: coarse-to-fine over qps, in chunks so the time budget is honoured
        qps = sorted(qp_range, reverse=True)
        ok_qp = None
        chunk = max(1, workers)
        for i in range(0, len(qps), chunk):
            found = [c for c in run([dict(qp=q, dq=dq) for q in qps[i:i + chunk]]) if c.score >= floor]
            if found:
                ok_qp = max(c.settings["qp"] for c in found)
                break
            if out_of_time():
                break
        # 2. rate-distortion quantisation around the coarsest acceptable qp (uniform reconstruction)
        if ok_qp is not None and not out_of_time():
            grid = [dict(qp=q, dq=False, rdoq_lambda=lam) for q in (ok_qp - 4, ok_qp - 2, ok_qp, ok_qp + 2)
                    for lam in lambdas]
            for i in range(0, len(grid), chunk):
                if out_of_time():
                    break
                run(grid[i:i + chunk])
    finally:
        if pool:
            pool.shutdown()
        if show:
            sys.stderr.write("\n")
    ok = [c for c in candidates if c.score >= floor]
    best = min(ok, key=lambda c: c.bytes) if ok else None
    if not candidates:
        raise EncodeError("the search evaluated no candidate (time budget too small?)")
    return SearchResult(reference_score=reference, tolerance=tolerance, candidates=candidates, best=best)
