"""DC-v2: search of quantisation settings against a user's evaluation function (informative, spec A.13).

The search finds the smallest stream whose score (accuracy, say; higher is better) stays
within ``tolerance`` of the original model's, in three stages:

1. **qp sweep** — global qps from coarse to fine with the encoder's default quantiser
   (DQ unless ``dq=False``), until one keeps the score;
2. **rate-distortion sweep** — (qp, λ) pairs of the rate-distortion quantiser (spec A.9)
   at and around that qp;
3. **per-tensor refinement** (``per_tensor=True``, the default) — starting from each of
   the ``bases`` smallest streams so far, on a qp scale one density finer (the smallest
   step is an eighth of an octave with the default density), each round tries two moves
   per tensor (1-D tensors included): its qp raised by the current step (16, 8, 4, 2,
   then 1), or its rate-distortion λ raised to the next value of :data:`LAMBDA_LADDER`.
   It keeps the move that saves the most bytes per point of score lost; a move that
   breaks the tolerance is dropped for the current step. With more than
   :data:`STEEPEST_MOVES` moves (models with many tensors) it keeps instead the first
   move that helps, trying the largest tensors first, so that a time budget goes into
   kept moves. When no single move is left,
   swap moves (one of the :data:`SWAP_TENSORS` largest tensors finer by
   :data:`SWAP_STEPS`, another as much coarser) that make the stream smaller within the
   tolerance restart the single moves. This is bit allocation driven by the score
   itself: a single global qp spends bits on tensors that do not need them (biases coded
   near-losslessly by default, say).

The search keeps the smallest of many candidates that pass, so it fits whatever
``evaluate`` measures: give it validation data rather than the data a result is reported
on, enough samples (or a smoother score than accuracy), and a tolerance with some margin.
``benchmarks/bench_accuracy.py --holdout`` shows the effect on the digits models.

Candidates run in worker processes when ``workers`` > 1 (``evaluate`` must then be
picklable, e.g. a module-level function); ``time_budget`` (seconds) ends the search with
the best result found so far.
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

#: step sizes of the per-tensor refinement, in qp units
REFINE_STEPS = (16, 8, 4, 2, 1)
#: rate-distortion λ values a tensor can move through in the per-tensor refinement
LAMBDA_LADDER = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
#: qp shifts of the refinement's swap moves (one tensor finer, another as much coarser)
SWAP_STEPS = (2, 1)
#: how many of the largest tensors take part in swap moves
SWAP_TENSORS = 8
#: up to this many moves a round tries them all and keeps the best; above, the first that helps
STEEPEST_MOVES = 24


@dataclass
class Candidate:
    """One evaluated encoder setting.

    Attributes
    ----------
    settings : dict
        The :class:`nnc.encoder.Encoder` options that made the stream (beyond the search's
        fixed ``encoder_options``).
    bytes : int
        Stream size.
    score : float
        ``evaluate`` of the decoded stream.
    stream : bytes
        The stream itself.

    Examples
    --------
    >>> c = Candidate(settings={"qp": -20}, bytes=1200, score=0.97)
    >>> c
    Candidate(settings={'qp': -20}, bytes=1200, score=0.97)
    """

    settings: dict
    bytes: int
    score: float
    stream: bytes = field(repr=False, default=b"")


@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes
    ----------
    reference_score : float
        ``evaluate`` of the original tensors.
    tolerance : float
        The allowed drop of the score.
    candidates : list of Candidate
        Every evaluated setting, in evaluation order.
    best : Candidate or None
        The smallest stream whose score is at least ``reference_score - tolerance``, or
        None when no candidate reached it.

    Examples
    --------
    >>> cands = [Candidate({"qp": q}, b, s) for q, b, s in [(-8, 100, 0.5), (-12, 150, 0.9), (-10, 160, 0.8)]]
    >>> res = SearchResult(reference_score=0.95, tolerance=0.1, candidates=cands, best=cands[1])
    >>> [c.settings["qp"] for c in res.pareto]       # (-10: larger and worse than -12)
    [-8, -12]
    """

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
           qp_range=None, lambdas=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6), dq: bool = True,
           per_tensor: bool = True, bases: int = 3, max_qp: int = 40, workers: int = 1, time_budget: float | None = None,
           progress: bool | None = None, **encoder_options) -> SearchResult:
    """Find the smallest stream whose score stays within ``tolerance`` of the original's (spec A.13).

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The model's tensors, as for :func:`nnc.encode`.
    evaluate : callable
        ``evaluate(decoded_tensors) -> float``; higher is better. It receives a dict of
        name to array, as :func:`nnc.decode` returns.
    tolerance : float
        Allowed drop of the score below ``evaluate(tensors)`` (0.005 = half a point of
        accuracy given as a fraction).
    qp_range : iterable of int, optional
        Global qps of the first sweep; by default the steps 2**-10 to 2**-1 at the
        encoder's qp density (qps -40 to -4 at the default density 2).
    lambdas : sequence of float
        λ values of the rate-distortion sweep (scale: squared steps per bit, spec A.9).
    dq : bool
        Use dependent quantisation in the qp sweep.
    per_tensor : bool
        Run the per-tensor refinement (stage 3).
    max_qp : int
        Largest qp the refinement gives a tensor.
    workers : int
        Worker processes for the candidates of a stage (1 = in this process).
    time_budget : float or None
        Seconds after which no further batch of candidates starts.
    progress : bool or None
        Write progress to stderr (None: when stderr is a terminal).
    **encoder_options
        Fixed :class:`nnc.encoder.Encoder` options for every candidate (``n_gtx``,
        ``profile``...).

    Returns
    -------
    SearchResult
        All candidates, the Pareto front and the best stream.

    Raises
    ------
    nnc.errors.EncodeError
        If no candidate could be evaluated (a zero time budget still evaluates one batch).

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.search import search
    >>> w = np.random.default_rng(0).normal(0, 0.1, (32, 32)).astype(np.float32)
    >>> def score(t):      # minus the mean squared error
    ...     return -float(np.mean((t["w"] - w) ** 2))
    >>> res = search({"w": w}, score, tolerance=1e-4, qp_range=range(-40, -10, 2), progress=False)
    >>> res.best.score >= res.reference_score - 1e-4
    True
    >>> [c.bytes for c in res.pareto] == sorted(c.bytes for c in res.pareto)
    True
    """
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    reference = float(evaluate(tensors))
    floor = reference - tolerance
    start = time.monotonic()
    show = sys.stderr.isatty() if progress is None else progress
    candidates: list[Candidate] = []
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    stage = ["qp sweep"]
    chunk = max(1, workers)

    def best_bytes():
        return min((x.bytes for x in candidates if x.score >= floor), default=0)

    def run(batch):
        """Evaluate settings, ``workers`` at a time, until the batch or the time budget ends.

        Returns the candidates evaluated, in batch order (a prefix of the batch when time ran
        out; at least one candidate is evaluated in a search).
        """
        out = []
        for i in range(0, len(batch), chunk):
            if out_of_time() and candidates:
                break
            jobs = [(tensors, dict(encoder_options, **s), evaluate) for s in batch[i:i + chunk]]
            results = pool.map(_evaluate_candidate, jobs) if pool else map(_evaluate_candidate, jobs)
            for settings, size, score, stream in results:
                c = Candidate(settings={k: settings[k] for k in batch[0]}, bytes=size, score=score, stream=stream)
                candidates.append(c)
                out.append(c)
                if show:
                    sys.stderr.write(f"\rsearch ({stage[0]}): {len(candidates)} candidates, best "
                                     f"{best_bytes()} bytes, {time.monotonic() - start:.0f} s ")
        return out

    def out_of_time():
        return time_budget is not None and time.monotonic() - start > time_budget

    def best_ok():
        ok = [c for c in candidates if c.score >= floor]
        return min(ok, key=lambda c: c.bytes) if ok else None

    try:
        # 1. qp sweep, coarse to fine, in chunks so that the time budget is honoured
        if qp_range is None:
            density = int(encoder_options.get("qp_density", 2))
            qp_range = range(-10 << density, -(1 << density) + 1)
        qps = sorted(qp_range, reverse=True)
        ok_qp = None
        for i in range(0, len(qps), chunk):
            found = [c for c in run([dict(qp=q, dq=dq) for q in qps[i:i + chunk]]) if c.score >= floor]
            if found:
                ok_qp = max(c.settings["qp"] for c in found)
                break
            if out_of_time():
                break
        # 2. rate-distortion quantisation around the coarsest acceptable qp, with and without DQ
        stage[0] = "rd sweep"
        if ok_qp is not None and not out_of_time():
            grid = [dict(qp=q, dq=d, rdoq_lambda=lam) for d in sorted({False, dq})
                    for q in (ok_qp - 4, ok_qp - 2, ok_qp, ok_qp + 2) for lam in lambdas]
            run(grid)
        # 3. per-tensor refinement from the best setting so far
        stage[0] = "per tensor"
        if per_tensor:
            ok = sorted((c for c in candidates if c.score >= floor), key=lambda c: c.bytes)
            for base in ok[:bases]:
                if out_of_time():
                    break
                _refine(tensors, base, floor, tolerance, run, out_of_time, max_qp, encoder_options)
    finally:
        if pool:
            pool.shutdown()
        if show:
            sys.stderr.write("\n")
    if not candidates:
        raise EncodeError("the search evaluated no candidate (time budget too small?)")
    return SearchResult(reference_score=reference, tolerance=tolerance, candidates=candidates, best=best_ok())


def _refine(tensors, base: Candidate, floor, tolerance, run, out_of_time, max_qp, encoder_options):
    """Stage 3 from one base candidate: per-tensor qps and λs on a qp scale one density finer."""
    settings = {k: v for k, v in base.settings.items() if k != "qp_per_tensor"}
    enc = Encoder(**dict(encoder_options, **settings))
    floats = [k for k, v in tensors.items() if v.dtype.kind == "f" and v.size]
    qps = dict(base.settings.get("qp_per_tensor") or {})
    for k in floats:
        qps.setdefault(k, enc.tensor_qp(k, tensors[k].ndim))
    if enc.qp_density < 7:
        # one density finer: the same steps at twice the qps, and half-size refinement steps
        settings = dict(settings, qp=2 * enc.qp, qp_density=enc.qp_density + 1)
        qps = {k: 2 * q for k, q in qps.items()}
        max_qp *= 2
    # a drop of the score is charged at least this much, so that free savings come first
    slack = max(tolerance, 1e-12) / 20
    sizes = {k: tensors[k].size for k in floats}
    qps, lams, current = _raise(qps, base, settings, floats, floor, slack, run, out_of_time, max_qp, sizes=sizes)
    # swaps: one tensor finer, another coarser, when that is smaller; then single moves again.
    # Among the largest tensors only, so that a round stays small on models with many tensors.
    settings = {k: v for k, v in settings.items() if k != "rdoq_lambda"}
    swappable = sorted(floats, key=lambda k: tensors[k].size, reverse=True)[:SWAP_TENSORS]
    for swap in SWAP_STEPS:
        while not out_of_time():
            pairs = [(a, b) for a in swappable for b in swappable if a != b and qps[b] + swap <= max_qp]
            trials = [dict(settings, qp_per_tensor=dict(qps, **{a: qps[a] - swap, b: qps[b] + swap}),
                           lambda_per_tensor=dict(lams)) for a, b in pairs]
            results = run(trials)
            good = [(c.bytes, i) for i, c in enumerate(results) if c.score >= floor and c.bytes < current.bytes]
            if not good:
                break
            i = min(good)[1]
            a, b = pairs[i]
            qps[a] -= swap
            qps[b] += swap
            qps, lams, current = _raise(qps, results[i], settings, floats, floor, slack, run, out_of_time,
                                        max_qp, lams, sizes)


def _raise(qps, current, settings, floats, floor, slack, run, out_of_time, max_qp, lams=None, sizes=None):
    """Coarsen single tensors while the score holds, best bytes saved per score lost first.

    A move raises one tensor's qp by the current step, or its rate-distortion λ to the next
    value of ``LAMBDA_LADDER`` (cheaper than a coarser step at low rates). Every candidate
    tried lands in the search's list through ``run``. Returns the final (qps, λs, candidate).
    """
    qps = dict(qps)
    sizes = sizes or {k: 0 for k in floats}
    base_lambda = float(settings.get("rdoq_lambda", 0.0))
    lams = dict(lams) if lams else {k: base_lambda for k in floats}
    settings = {k: v for k, v in settings.items() if k != "rdoq_lambda"}

    def next_lambda(k):
        return next((x for x in LAMBDA_LADDER if x > lams[k]), None)

    def valid(kind, k):
        return qps[k] + step <= max_qp if kind == "qp" else next_lambda(k) is not None

    def trial(kind, k):
        q, lam = dict(qps), dict(lams)
        if kind == "qp":
            q[k] += step
        else:
            lam[k] = next_lambda(k)
        return dict(settings, qp_per_tensor=q, lambda_per_tensor=lam)

    def apply(kind, k):
        if kind == "qp":
            qps[k] += step
        else:
            lams[k] = next_lambda(k)

    for step in REFINE_STEPS:
        failed = set()
        while not out_of_time():
            moves = [(kind, k) for k in floats for kind in ("qp", "lambda") if (kind, k) not in failed
                     and valid(kind, k)]
            if not moves:
                break
            if len(moves) > STEEPEST_MOVES:
                # many tensors: first improvement, largest tensors first, so that a time budget
                # is spent on moves that are kept rather than on rounds that are cut short
                improved = False
                for kind, k in sorted(moves, key=lambda m: -sizes[m[1]]):
                    if not valid(kind, k):     # a move of the same tensor taken in this pass
                        continue
                    tried = run([trial(kind, k)])
                    if not tried:
                        break
                    c = tried[0]
                    if c.score >= floor and c.bytes < current.bytes:
                        apply(kind, k)
                        current, improved = c, True
                    else:
                        failed.add((kind, k))
                if not improved:
                    break
                continue
            results = run([trial(kind, k) for kind, k in moves])
            good = []
            for move, c in zip(moves, results):
                if c.score >= floor and c.bytes < current.bytes:
                    drop = max(current.score - c.score, 0.0)
                    good.append(((current.bytes - c.bytes) / (drop + slack), move, c))
                else:
                    failed.add(move)
            if not good:
                break
            _, (kind, k), c = max(good, key=lambda g: g[0])
            apply(kind, k)
            current = c
    return qps, lams, current


__all__ = ["search", "SearchResult", "Candidate", "REFINE_STEPS", "LAMBDA_LADDER", "SWAP_STEPS", "SWAP_TENSORS",
           "STEEPEST_MOVES"]
