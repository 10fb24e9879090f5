"""DC-v2: search of quantisation settings against a user's evaluation function (informative, spec A.13).

The search finds the smallest stream whose score (accuracy, say; higher is better) stays
within ``tolerance`` of the original model's, in up to four stages:

1. **qp sweep** — the coarsest global qp that keeps the score, by bisection over
   ``qp_range`` with the encoder's default quantiser (DQ unless ``dq=False``), and a
   look at the few qps just coarser (:data:`COARSER_SCAN`); when candidates are cheap
   (:data:`SWEEP_SHARE`, :data:`SWEEP_SECONDS`) every coarser qp of the range, so that
   the result is never larger than the best single qp's stream, however noisy the score;
2. **rate-distortion sweep** — (qp, λ) pairs of the rate-distortion quantiser (spec A.9)
   at and around that qp; with a time budget at most :data:`RD_SHARE` of it, the most
   promising pairs first, so that the time goes into stage 3;
3. **per-tensor refinement** (``per_tensor=True``, the default) — starting from each of
   the ``bases`` smallest streams so far, on a qp scale one density finer (the smallest
   step is an eighth of an octave with the default density), each round tries two moves
   per tensor (1-D tensors included): its qp raised by the current step (16, 8, 4, 2,
   then 1), or its rate-distortion λ raised to the next value of :data:`LAMBDA_LADDER`.
   On models with many tensors a knapsack step comes first: each tensor is probed alone
   at :data:`PROBE_STEPS` coarser (largest first; past :data:`PROBE_SHARE` of the time
   left, the smallest together as one group), and the combination that saves the most
   bytes for the score the tolerance leaves (drops taken as additive) is tried at once.
   It keeps the move that saves the most bytes per point of score lost; a move that
   breaks the tolerance is dropped for the current step. With more than
   :data:`STEEPEST_MOVES` moves (models with many tensors) it keeps instead the first
   move that helps, trying qp moves before λ moves and the largest tensors first, so
   that a time budget goes into kept moves; with a time budget a move is encoded first and
   scored only when it saves at least :data:`MIN_SAVING_SHARE` of the stream. When no single move is left,
   swap moves (one of the :data:`SWAP_TENSORS` largest tensors finer by
   :data:`SWAP_STEPS`, another as much coarser) that make the stream smaller within the
   tolerance restart the single moves. This is bit allocation driven by the score
   itself: a single global qp spends bits on tensors that do not need them (biases coded
   near-losslessly by default, say).
4. **kicks** — with time left of a budget, iterated local search: :data:`KICK_TENSORS`
   random tensors of the smallest refined setting :data:`KICK_STEP` qps finer, then
   single tensors coarsened again.

The search keeps the smallest of many candidates that pass, so it fits whatever
``evaluate`` measures: give it validation data rather than the data a result is reported
on, and enough of it. Let ``evaluate`` return one score per sample (1/0 per input for
accuracy) rather than their mean: the search then compares each candidate with the
original sample by sample and passes it only when the mean paired difference minus ``z``
standard errors (:func:`paired_bound`) is within the tolerance, so that a candidate that
loses some inputs and wins others back by chance does not pass. On the digits models this
is the difference between streams that keep their accuracy on unseen images and streams
that lose points there (``benchmarks/bench_accuracy.py --holdout`` and ``--crossfit``).
``check`` adds a second score on other data that the result must also keep; with
``check_moves`` the per-tensor refinement keeps it on every move it takes, not only the
result.

Candidates run in worker processes when ``workers`` > 1 (``evaluate`` must then be
picklable, e.g. a module-level function); ``time_budget`` (seconds) ends the search with
the best result found so far. Each worker keeps the NDUs of its earlier candidates
(:class:`nnc.encoder.EncodeCache`), so that a per-tensor move re-encodes one tensor, and
candidates are scored on the encoder's reconstruction (what the decoder returns; the
result is decoded and checked). Finally the best setting is re-encoded with weights and
biases paired in block NDUs (``blocks=True``) when that container is smaller: the same
values with fewer unit headers.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np

from .decoder import decode
from .encoder import EncodeCache, Encoder
from .errors import EncodeError
from .narrow_floats import as_stored

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
#: stage 1 tries every qp of the range coarser than the bisection's result when that is
#: estimated to take at most this share of ``time_budget`` ...
SWEEP_SHARE = 0.1
#: ... or, without a time budget, at most these seconds
SWEEP_SECONDS = 60.0
#: with ``check``: how many candidates off the Pareto front are checked one by one when none on it passes
#: (then larger ones by doubling the rank)
MAX_CHECKS = 32
#: how many qps just coarser than the bisection's result stage 1 tries as well
COARSER_SCAN = 4
#: qp steps (on the refinement's finer scale) by which each tensor is probed alone before
#: the knapsack step of the refinement coarsens many tensors at once
PROBE_STEPS = (4, 8)
#: with a time budget, a first-improvement pass skips, without scoring it, a move whose stream is
#: smaller than the current one by less than this share of it: scores are what the budget buys,
#: and on MiniLM-L6 most of them went to moves worth a few bytes
MIN_SAVING_SHARE = 1e-4
#: with a time budget, the rate-distortion sweep (stage 2) takes at most this share of it
#: (its most promising settings first), so that the per-tensor refinement gets the rest
RD_SHARE = 0.2
#: the iterated local search (stage 4, with time left) makes this many tensors finer at a time ...
KICK_TENSORS = 2
#: ... by this many qps on the refinement's scale, before it coarsens single tensors again
KICK_STEP = 4
#: with a time budget, the knapsack step's probes take at most this share of the time left;
#: past it the smallest tensors are probed together as one group
PROBE_SHARE = 0.4


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
        The stream itself; empty (to bound the search's memory) for candidates that are
        not on the Pareto front of the search's result.
    check : float or None
        ``check`` of the decoded stream, for the candidates the search's ``check`` looked at.
    check_bound : float or None
        What the search compared with the check's floor (as ``bound`` is for the score).
    bound : float
        What the search compares with the floor: ``score`` itself for a scalar score; for
        per-sample scores, the original's score plus the mean paired difference minus
        ``z`` standard errors of it.

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
    check: float | None = field(repr=False, default=None)
    bound: float | None = field(repr=False, default=None)
    check_bound: float | None = field(repr=False, default=None)

    def __post_init__(self):
        if self.bound is None:
            self.bound = self.score


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
        The smallest stream whose :attr:`Candidate.bound` (its score, for a scalar score)
        is at least ``reference_score - tolerance`` (and that passes the same way on
        ``check``, with a check), or None when no candidate reached it.
    check_reference : float or None
        ``check`` of the original tensors, when the search had a ``check``.

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
    check_reference: float | None = None

    @property
    def pareto(self) -> list:
        """Candidates not beaten in both size and score, by increasing size (scores increase too)."""
        return _front(self.candidates, "score")


class _Evaluator:
    """Encodes and scores candidates; keeps the units of earlier ones (:class:`EncodeCache`).

    A candidate's score is taken on the encoder's reconstruction, which is what the
    decoder returns (the search checks that on its result), with the values of bfloat16
    and float8 tensors rounded to their format as the decoded model's file holds them.
    """

    def __init__(self, tensors, evaluate, cache_bytes, check=None):
        self.tensors = tensors
        self.evaluate = evaluate
        self.check = check
        self.cache = EncodeCache(cache_bytes)

    def _reconstruction(self, settings):
        res = Encoder(**settings).encode(self.tensors, cache=self.cache)
        dtypes = settings.get("dtypes") or {}  # bfloat16 and float8 tensors: the values their file holds
        return res, {k: np.array(as_stored(dtypes.get(k), v)) for k, v in res.reconstruction.items()}

    def __call__(self, settings):
        res, decoded = self._reconstruction(settings)
        return settings, len(res.stream), _as_scores(self.evaluate(decoded)), res.stream

    def size(self, settings) -> int:
        """The bytes of a candidate's stream, without scoring it (its units stay in the cache for the scoring)."""
        return len(Encoder(**settings).encode(self.tensors, cache=self.cache).stream)

    def check_value(self, settings):
        """``check`` of a candidate's reconstruction (its units mostly come from the cache)."""
        return _as_scores(self.check(self._reconstruction(settings)[1]))


def _as_scores(value):
    """A scalar score as a float, per-sample scores as a 1-D float array."""
    problem = "evaluate must return a number or a non-empty 1-D array of finite per-sample scores"
    if value is None or isinstance(value, (str, bytes)):  # (numpy would read "0.5" as a number)
        raise EncodeError(f"{problem}, not {value!r:.80}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise EncodeError(f"{problem}, not {value!r:.80}") from None
    if arr.ndim == 0:
        if float(arr) == math.inf:  # better than any model: a broken metric (-inf and NaN fail the tolerance)
            raise EncodeError("evaluate gave +inf: a score must be finite (or -inf, or NaN, for a model that fails)")
        return float(arr)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise EncodeError(problem)
    return arr


def paired_bound(samples, reference_samples, z: float = 1.0) -> tuple[float, float]:
    """The score and the search's lower bound for per-sample scores against the original's.

    The bound is the original's mean score plus the mean paired difference minus ``z``
    standard errors of that difference; :func:`search` passes a candidate when the bound
    is within the tolerance of the original's score.

    Parameters
    ----------
    samples : array-like
        One score per sample for the candidate.
    reference_samples : array-like
        The original model's scores for the same samples.
    z : float
        Standard errors to keep in hand.

    Returns
    -------
    tuple of float
        (mean score, bound).

    Raises
    ------
    nnc.errors.EncodeError
        If the two do not have the same number of finite scores.

    Examples
    --------
    >>> ref = [1, 1, 1, 0, 1, 1, 0, 1]             # 6 of 8 right
    >>> score, bound = paired_bound([1, 1, 0, 1, 1, 1, 0, 1], ref)   # one lost, another won back
    >>> score, round(bound, 3)
    (0.75, 0.561)
    >>> paired_bound(ref, ref)
    (0.75, 0.75)
    """
    measure = _Bound(_as_scores(reference_samples), z)
    if measure.samples is None:
        raise EncodeError("paired_bound needs per-sample scores")
    return measure(_as_scores(samples))


class _Bound:
    """Turns what ``evaluate`` returned into (score, bound) against the original's samples."""

    def __init__(self, reference, z: float):
        self.samples = reference if isinstance(reference, np.ndarray) else None
        self.reference = float(np.mean(reference))
        self.z = float(z)

    def __call__(self, value) -> tuple[float, float]:
        if isinstance(value, np.ndarray) != (self.samples is not None):
            raise EncodeError("evaluate returned per-sample scores for some settings and a number for others")
        if self.samples is None:
            return value, value
        if value.shape != self.samples.shape:
            raise EncodeError(f"evaluate returned {value.size} per-sample scores, the original {self.samples.size}")
        diff = value - self.samples
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        score = float(value.mean())
        return score, self.reference + float(diff.mean()) - self.z * se


_WORKER: list = []


def _init_worker(tensors, evaluate, cache_bytes, check=None):
    # Ctrl-C reaches every process of the terminal's group: the parent stops the workers (_stop_pool), with
    # SIGTERM, which ends them quietly (a forked worker would otherwise keep its parent's handler)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER[:] = [_Evaluator(tensors, evaluate, cache_bytes, check)]


def _stop_pool(pool: ProcessPoolExecutor, abandon: bool) -> None:
    """Shut the workers down: after their work, or with ``abandon`` (an error, Ctrl-C) at once, their work
    cancelled and the running evaluations ended."""
    if not abandon:
        pool.shutdown()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # (no public way to end running work)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


def _evaluate_in_worker(settings):
    return _WORKER[0](settings)


def _check_in_worker(settings):
    return _WORKER[0].check_value(settings)


def _size_in_worker(settings):
    return _WORKER[0].size(settings)


#: Encoder options whose values the search chooses itself (a fixed value of one would be overwritten)
SEARCHED_OPTIONS = ("qp", "step", "dq", "rdoq_lambda", "qp_per_tensor", "lambda_per_tensor")


def _check_search_arguments(evaluate, check, time_budget, max_qp, bases, z, encoder_options) -> None:
    """EncodeError for a search argument that would fail deep inside, be ignored or be overwritten."""
    if not callable(evaluate):
        raise EncodeError(f"evaluate must be a callable that scores decoded tensors, not {type(evaluate).__name__}")
    if check is not None and not callable(check):
        raise EncodeError(f"check must be a callable that scores decoded tensors, not {type(check).__name__}")
    searched = [k for k in SEARCHED_OPTIONS if k in encoder_options]
    if searched:
        raise EncodeError(
            f"the search chooses {', '.join(searched)} itself: give qp_range, lambdas or dq to the search instead"
        )
    if time_budget is not None and not (_is_number(time_budget) and 0 <= time_budget < math.inf):
        raise EncodeError(f"time_budget must be None or a number of seconds >= 0, not {time_budget!r}")
    for name, value, low in (("max_qp", max_qp, None), ("bases", bases, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (low is not None and value < low):
            raise EncodeError(f"{name} must be an int{'' if low is None else f' >= {low}'}, not {value!r}")
    if not (_is_number(z) and 0 <= z < math.inf):
        raise EncodeError(f"z must be a finite number >= 0, not {z!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def search(
    tensors: Mapping[str, np.ndarray],
    evaluate: Callable,
    *,
    tolerance: float = 0.005,
    qp_range=None,
    lambdas=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
    dq: bool = True,
    per_tensor: bool = True,
    bases: int = 3,
    max_qp: int = 40,
    workers: int = 1,
    time_budget: float | None = None,
    progress: bool | None = None,
    cache_bytes: int = 2 << 30,
    check: Callable | None = None,
    check_moves: bool = False,
    z: float = 1.0,
    **encoder_options,
) -> SearchResult:
    """Find the smallest stream whose score stays within ``tolerance`` of the original's (spec A.13).

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The model's tensors, as for :func:`nnc.encode`.
    evaluate : callable
        ``evaluate(decoded_tensors)``; higher is better. It receives a dict of name to
        array, as :func:`nnc.decode` returns, and returns the score, or better one score
        per sample (1 or 0 for each correctly or wrongly classified input, say; the score
        is their mean). Per-sample scores let the search compare each candidate with the
        original sample by sample, and pass it only when the mean paired difference minus
        ``z`` standard errors stays within the tolerance: a candidate that loses some
        samples and wins others back by chance does not pass.
    tolerance : float
        Allowed drop of the score below ``evaluate(tensors)`` (0.005 = half a point of
        accuracy given as a fraction).
    qp_range : iterable of int, optional
        Global qps of the first sweep (bisected for the coarsest that keeps the score); by
        default the steps 2**-10 to 2**-1 at the encoder's qp density (qps -40 to -4 at the
        default density 2).
    lambdas : sequence of float
        λ values of the rate-distortion sweep (scale: squared steps per bit, spec A.9).
    dq : bool
        Use dependent quantisation in the qp sweep.
    per_tensor : bool
        Run the per-tensor refinement (stage 3).
    max_qp : int
        Largest qp the refinement gives a tensor.
    workers : int
        Worker processes for the candidates of a stage (1 = in this process; at most 4 per CPU).
    time_budget : float or None
        Seconds after which no further batch of candidates starts.
    progress : bool or None
        Write progress to stderr (None: when stderr is a terminal).
    z : float
        With per-sample scores, how many standard errors of the paired difference a
        candidate must keep in hand (0 compares the means only).
    check : callable, optional
        A second score on other data (a number or per-sample scores, like ``evaluate``), to
        guard the result against a search fitted to ``evaluate``'s data: the result is the
        smallest candidate within the tolerance on both. Only candidates within the
        tolerance of ``evaluate`` are checked, those of the Pareto front first, smallest
        first, until one passes; then the others by increasing size (:data:`MAX_CHECKS` of
        them one by one, the larger ones by doubling the rank and bisecting back), so the
        check data steers the choice little.
    check_moves : bool
        With ``check``: also check each candidate the per-tensor refinement would move to
        (and its bases), and move only to those that pass. The refinement then spends its
        time on streams the check keeps instead of ending at the edge of the tolerance on
        ``evaluate``'s data alone, at the price of one ``check`` per move taken; the check
        data then steers the search more, so report on a third set.
    cache_bytes : int
        Memory for the units kept between candidates (:class:`nnc.encoder.EncodeCache`,
        shared out among the workers): a per-tensor move re-encodes one tensor, not the model.
    **encoder_options
        Fixed :class:`nnc.encoder.Encoder` options for every candidate (``n_gtx``,
        ``profile``...), not those the search chooses (``nnc.search.SEARCHED_OPTIONS``).

    Returns
    -------
    SearchResult
        All candidates, the Pareto front and the best stream.

    Raises
    ------
    nnc.errors.EncodeError
        If no candidate could be evaluated (a zero time budget still evaluates one batch), an
        argument is of the wrong kind, or ``encoder_options`` fixes an option the search
        chooses (``nnc.search.SEARCHED_OPTIONS``).

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
    _check_search_arguments(evaluate, check, time_budget, max_qp, bases, z, encoder_options)
    if not (isinstance(tolerance, (int, float, np.number)) and 0 <= tolerance < math.inf):
        raise EncodeError(f"tolerance must be a finite number >= 0, not {tolerance!r}")
    most = 4 * (os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or not 1 <= workers <= most:
        raise EncodeError(f"workers must be an int from 1 to {most} (4 per CPU), not {workers!r}")
    workers = int(workers)
    if qp_range is not None and len(qp_range) == 0:
        raise EncodeError("qp_range is empty: give the qps the search may try")
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    measure = _Bound(_as_scores(evaluate({k: v.copy() for k, v in tensors.items()})), z)
    reference = measure.reference
    if not math.isfinite(reference):
        raise EncodeError(f"evaluate gave {reference} for the original tensors: the search needs a finite score there")
    floor = reference - tolerance
    _warn_if_unresolvable(measure.samples, tolerance)
    if check_moves and check is None:
        raise EncodeError("check_moves=True needs a check")
    check_measure = None
    if check is not None:
        check_measure = _Bound(_as_scores(check({k: v.copy() for k, v in tensors.items()})), z)
    move_check = check if check_moves else None
    state = _SearchState(
        tensors=tensors,
        encoder_options=encoder_options,
        measure=measure,
        floor=floor,
        tolerance=tolerance,
        time_budget=time_budget,
        show=sys.stderr.isatty() if progress is None else progress,
        chunk=max(1, workers),
        check_measure=check_measure if check_moves else None,
        check_floor=check_measure.reference - tolerance if check_measure and check_moves else None,
    )
    if workers > 1:
        state.pool = ProcessPoolExecutor(
            max_workers=workers,
            initializer=_init_worker,
            initargs=(tensors, evaluate, cache_bytes // workers, move_check),
        )
    else:
        state.evaluate_one = _Evaluator(tensors, evaluate, cache_bytes, move_check)
    try:
        # 1. qp sweep: bisection for the coarsest qp that keeps the score
        if qp_range is None:
            density = int(encoder_options.get("qp_density", 2))
            qp_range = range(-10 << density, -(1 << density) + 1)
        qps = sorted(qp_range, reverse=True)
        ok_qp = _coarsest_passing_qp(qps, dq, floor, state.run, state.out_of_time, state.chunk)
        # when candidates are cheap, every other qp too: the best single qp, whatever the score's shape
        per_candidate = (time.monotonic() - state.start) / max(len(state.candidates), 1)
        affordable = SWEEP_SHARE * time_budget if time_budget is not None else SWEEP_SECONDS
        tried = {c.settings["qp"] for c in state.candidates}
        rest = [q for q in qps if q not in tried and (ok_qp is None or q > ok_qp)]
        if rest and len(rest) * per_candidate / state.chunk <= affordable:
            passing = [c.settings["qp"] for c in state.run([dict(qp=q, dq=dq) for q in rest]) if c.bound >= floor]
            ok_qp = max(passing + ([ok_qp] if ok_qp is not None else []), default=None)
        # 2. rate-distortion quantisation around the coarsest acceptable qp, with and without DQ
        state.stage = "rd sweep"
        if ok_qp is not None and not state.out_of_time():
            grid = _rd_grid(ok_qp, dq, lambdas)
            if time_budget is not None:
                per_candidate = max((time.monotonic() - state.start) / max(len(state.candidates), 1), 1e-9)
                grid = grid[: max(state.chunk, int(RD_SHARE * time_budget * state.chunk / per_candidate))]
            state.run(grid)
        # 3. per-tensor refinement from the best setting so far
        state.stage = "per tensor"
        if per_tensor:
            ok = sorted((c for c in state.candidates if c.bound >= floor), key=lambda c: c.bytes)
            finals = []
            for base in state.bases(ok, bases):
                if state.out_of_time():
                    break
                finals.append(_refine(state, base, max_qp))
            # 4. with time left: perturb the best refined setting and descend again
            state.stage = "kicks"
            if time_budget is not None:
                _kicks(state, finals)
    except BaseException:  # an error, Ctrl-C: the running evaluations are ended, not waited for
        if state.pool:
            _stop_pool(state.pool, abandon=True)
            state.pool = None
        raise
    finally:
        if state.pool:
            _stop_pool(state.pool, abandon=False)
        if state.show:
            sys.stderr.write("\n")
    candidates = state.candidates
    if not candidates:
        raise EncodeError("the search evaluated no candidate (time budget too small?)")
    best = state.best_passing()
    check_reference = None
    if check is not None and check_measure is not None:
        check_reference = check_measure.reference

        def stream_of(c):
            if not c.stream:
                c.stream = Encoder(**dict(encoder_options, **c.settings)).encode(tensors).stream
            return c.stream

        best = _first_passing_check(candidates, floor, check, check_measure, check_reference - tolerance, stream_of)
        if best is not None:
            stream_of(best)  # checked during the refinement, its stream may have been freed
    if best is not None:
        decoded = _check_decodes(best, tensors, encoder_options)
        if "blocks" not in encoder_options:
            best = _smaller_container(tensors, best, encoder_options, decoded)
    return SearchResult(
        reference_score=reference,
        tolerance=tolerance,
        candidates=candidates,
        best=best,
        check_reference=check_reference,
    )


@dataclass
class _SearchState:
    """What one :func:`search` knows and does between its stages.

    It evaluates batches of encoder settings (in this process or in worker processes),
    keeps every candidate, and knows the stage it is in and whether the time budget is spent.
    """

    #: The model's tensors.
    tensors: dict
    #: Fixed encoder options of every candidate.
    encoder_options: dict
    #: Score and bound of an evaluation (:class:`_Bound`).
    measure: "_Bound"
    #: The lowest bound that passes: the reference score minus the tolerance.
    floor: float
    #: The allowed drop of the score.
    tolerance: float
    #: Seconds after which no further batch starts, or None.
    time_budget: float | None
    #: Whether progress goes to stderr.
    show: bool
    #: Settings evaluated at a time (the number of workers).
    chunk: int
    #: Worker processes, or None to evaluate in this process with ``evaluate_one``.
    pool: ProcessPoolExecutor | None = None
    evaluate_one: "_Evaluator | None" = None
    #: Every candidate evaluated, in evaluation order.
    candidates: list = field(default_factory=list)
    #: The stage, for the progress line.
    stage: str = "qp sweep"
    #: ``time.monotonic()`` when the search began (looked up at creation, so that a test's fake clock counts).
    start: float = field(default_factory=lambda: time.monotonic())
    #: With ``check_moves``: the check's measure and floor; the refinement moves only to candidates that pass.
    check_measure: "_Bound | None" = None
    check_floor: float | None = None
    #: How many candidates the refinement checked.
    checks: int = 0

    def passes_check(self, c: Candidate) -> bool:
        """Whether ``c`` keeps the check (always, without ``check_moves``); checked once per candidate."""
        if self.check_measure is None or self.check_floor is None:
            return True
        if c.check_bound is None:
            job = dict(self.encoder_options, **c.settings)
            if self.pool:
                value = self.pool.submit(_check_in_worker, job).result()
            else:
                assert self.evaluate_one is not None
                value = self.evaluate_one.check_value(job)
            c.check, c.check_bound = self.check_measure(value)
            self.checks += 1
        return c.check_bound >= self.check_floor

    def size(self, settings: dict) -> int:
        """The bytes of the stream of ``settings`` (with the fixed options), encoded but not scored."""
        job = dict(self.encoder_options, **settings)
        if self.pool:
            return self.pool.submit(_size_in_worker, job).result()
        assert self.evaluate_one is not None
        return self.evaluate_one.size(job)

    def bases(self, passing: list, count: int) -> list:
        """The first ``count`` of ``passing`` (candidates by increasing size) that keep the check,
        looking at most :data:`MAX_CHECKS` further."""
        if self.check_measure is None:
            return passing[:count]
        out: list[Candidate] = []
        for c in passing[: count + MAX_CHECKS]:
            if self.out_of_time() and out:
                break
            if self.passes_check(c):
                out.append(c)
                if len(out) == count:
                    break
        return out

    def out_of_time(self) -> bool:
        return self.time_budget is not None and time.monotonic() - self.start > self.time_budget

    def time_left(self) -> float | None:
        """Seconds left of the time budget (at least 0), or None without one."""
        return None if self.time_budget is None else max(self.time_budget - (time.monotonic() - self.start), 0.0)

    def best_passing(self) -> Candidate | None:
        """The smallest candidate within the tolerance (the higher bound on a tie), or None."""
        ok = [c for c in self.candidates if c.bound >= self.floor]
        return min(ok, key=lambda c: (c.bytes, -c.bound)) if ok else None

    def run(self, batch: list) -> list:
        """Evaluate settings, ``chunk`` at a time, until the batch or the time budget ends.

        Returns the candidates evaluated, in batch order (a prefix of the batch when time ran
        out; at least one candidate is evaluated in a search).
        """
        out = []
        for i in range(0, len(batch), self.chunk):
            if self.out_of_time() and self.candidates:
                break
            jobs = [dict(self.encoder_options, **s) for s in batch[i : i + self.chunk]]
            if self.pool:
                results = self.pool.map(_evaluate_in_worker, jobs)
            else:
                assert self.evaluate_one is not None  # the search sets it when there is no pool
                results = map(self.evaluate_one, jobs)
            for settings, size, value, stream in results:
                score, bound = self.measure(value)
                c = Candidate(
                    settings={k: settings[k] for k in batch[0]}, bytes=size, score=score, stream=stream, bound=bound
                )
                self.candidates.append(c)
                out.append(c)
                _drop_dominated_streams(self.candidates)
                if self.show:
                    best = min(
                        (x.bytes for x in self.candidates if _passed_both(x, self.floor, self.check_floor)), default=0
                    )
                    checked = f", {self.checks} checked" if self.check_measure is not None else ""
                    sys.stderr.write(
                        f"\rsearch ({self.stage}): {len(self.candidates)} candidates{checked}, best "
                        f"{best} bytes, {time.monotonic() - self.start:.0f} s "
                    )
        return out


def _warn_if_unresolvable(samples, tolerance: float) -> None:
    """Warn when one sample of a 0/1 per-sample score outweighs the tolerance."""
    if samples is None or not np.all((samples == 0) | (samples == 1)):
        return
    if 1.0 / samples.size > tolerance:
        warnings.warn(
            f"one of the {samples.size} samples moves the score by {1 / samples.size:.4g}, more than the "
            f"tolerance {tolerance:g}: the search can only keep every sample as the original has it, and "
            f"its result will be fitted to these samples; use more of them",
            stacklevel=3,
        )


def _first_passing_check(
    candidates: list, floor: float, check: Callable, measure: "_Bound", check_floor: float, stream_of: Callable
):
    """The smallest candidate within the tolerance that also passes ``check``, or one close to it.

    The smallest candidate that passed it during the refinement (``check_moves``), unless a
    smaller one passes: the (bytes, bound) front first, smallest first, then the other
    candidates within the tolerance by increasing size, at most :data:`MAX_CHECKS` of
    them (re-encoded when their stream was freed). When none of those passes, the larger ones
    are searched by doubling the rank (2, 4, 8, ... times ``MAX_CHECKS``, then the largest) and
    bisecting back from the first that passes: about 2 log2(n) more checks, not n.
    """
    known = min(
        (c for c in candidates if _passed_both(c, floor, check_floor)), key=lambda c: (c.bytes, -c.bound), default=None
    )
    limit = known.bytes if known is not None else np.inf
    front = [c for c in _front(candidates, "bound") if c.bound >= floor and c.bytes < limit]
    on_front = {id(c) for c in front}
    rest = sorted(
        (c for c in candidates if c.bound >= floor and c.bytes < limit and id(c) not in on_front),
        key=lambda c: (c.bytes, -c.bound),
    )

    def passes(c) -> bool:
        if c.check_bound is None:
            c.check, c.check_bound = measure(_as_scores(check(decode(stream_of(c)))))
        return c.check_bound >= check_floor

    for c in front + rest[:MAX_CHECKS]:
        if passes(c):
            return c
    failed, rank = MAX_CHECKS - 1, 2 * MAX_CHECKS - 1
    while failed < len(rest) - 1:
        rank = min(rank, len(rest) - 1)
        if passes(rest[rank]):
            while rank - failed > 1:  # bisect between the last failure and this pass
                middle = (failed + rank) // 2
                if passes(rest[middle]):
                    rank = middle
                else:
                    failed = middle
            return rest[rank]
        failed, rank = rank, 2 * rank + 1
    return known


def _passed_both(c: Candidate, floor: float, check_floor: float | None) -> bool:
    """Whether ``c`` is within the tolerance and, when ``check_floor`` is given, already passed the check."""
    if c.bound < floor:
        return False
    return check_floor is None or (c.check_bound is not None and c.check_bound >= check_floor)


def _front(candidates: list, key: str) -> list:
    """Candidates not beaten in both size and ``key`` ("score" or "bound"), by increasing size."""
    front, best = [], -np.inf
    for c in sorted(candidates, key=lambda c: (c.bytes, -getattr(c, key))):
        if getattr(c, key) > best:
            front.append(c)
            best = getattr(c, key)
    return front


def _coarsest_passing_qp(qps: list, dq: bool, floor: float, run, out_of_time, chunk: int):
    """Stage 1: the coarsest qp of ``qps`` (coarse to fine) that keeps the score, by bisection.

    The score is taken to fall as the qp grows; ``chunk`` qps are tried at a time, evenly
    spread over the interval still open, so a sweep of n qps costs about log2(n) rounds.
    Then the :data:`COARSER_SCAN` qps just coarser than the one found are tried too (those
    the bisection skipped), and the coarsest that passes wins: a noisy score (accuracy on
    few samples) does not fall monotonically near its threshold. Returns None when no qp
    tried keeps the score.
    """
    lo, hi = -1, len(qps)  # qps[lo] fails, qps[hi] passes (sentinels outside the list)
    evaluated: set = set()
    while hi - lo > 1:
        width = hi - lo - 1
        picks = sorted({lo + 1 + (j + 1) * width // (chunk + 1) for j in range(min(chunk, width))})
        picks = [min(max(i, lo + 1), hi - 1) for i in picks]
        tried = run([dict(qp=qps[i], dq=dq) for i in picks])
        if not tried:
            break
        evaluated.update(picks[: len(tried)])
        passing = [i for i, c in zip(picks, tried) if c.bound >= floor]
        if passing:
            hi = passing[0]
            lo = max([lo] + [i for i, c in zip(picks, tried) if i < hi])
        else:
            lo = picks[len(tried) - 1]
    if hi >= len(qps):
        return None
    # near the threshold a noisy score passes and fails by turns: try the next coarser qps too
    window = [i for i in range(max(hi - COARSER_SCAN, 0), hi) if i not in evaluated]
    for i, c in zip(window, run([dict(qp=qps[i], dq=dq) for i in window])):
        if c.bound >= floor:
            return qps[i]
    return qps[hi]


def _rd_grid(ok_qp: int, dq: bool, lambdas) -> list:
    """Stage 2's settings, most promising first: λ from the middle of ``lambdas`` outwards,
    then qp₀, qp₀ − 2, qp₀ + 2, qp₀ − 4, then DQ before the uniform quantiser (DQ only with ``dq``)."""
    order = sorted(range(len(lambdas)), key=lambda i: abs(i - (len(lambdas) - 1) / 2))
    return [
        dict(qp=q, dq=d, rdoq_lambda=lambdas[i])
        for i in order
        for q in (ok_qp, ok_qp - 2, ok_qp + 2, ok_qp - 4)
        for d in ((True, False) if dq else (False,))
    ]


def _drop_dominated_streams(candidates: list) -> None:
    """Free the streams of candidates that are neither on the Pareto front nor the best so far.

    A search on a large model evaluates hundreds of candidates; keeping every stream
    would hold hundreds of model-sized byte strings.
    """
    front = {id(c) for key in ("score", "bound") for c in _front(candidates, key)}
    for c in candidates:
        if c.stream and id(c) not in front:
            c.stream = b""


def _smaller_container(tensors, best: Candidate, encoder_options, decoded) -> Candidate:
    """The best candidate, re-encoded with weights and biases paired in block NDUs when that is smaller.

    Pairing changes only the container (one NDU header instead of two per layer), not a
    single reconstructed value, so the score carries over; the paired stream is kept only
    when it decodes to ``decoded`` (what the best stream decodes to) and to the encoder's
    own reconstruction.
    """
    settings = dict(encoder_options, **best.settings, blocks=True)
    try:
        paired = Encoder(**settings).encode(tensors)
    except EncodeError:
        return best
    if len(paired.stream) >= best.bytes:
        return best
    again = decode(paired.stream)
    if not (_same_tensors(again, decoded) and _same_tensors(again, paired.reconstruction)):
        return best
    # the same candidate in a smaller container: updated in place
    best.settings, best.bytes, best.stream = dict(best.settings, blocks=True), len(paired.stream), paired.stream
    return best


def _check_decodes(best: Candidate, tensors, encoder_options) -> dict:
    """The search scores the encoder's reconstruction; make sure the decoder agrees.

    Returns the decoded tensors of the best stream.
    """
    again = Encoder(**dict(encoder_options, **best.settings)).encode(tensors)
    decoded = decode(best.stream)
    if again.stream != best.stream or not _same_tensors(decoded, again.reconstruction):
        raise EncodeError(
            "internal error: the search's best stream does not decode to the encoder's reconstruction; please report it"
        )
    return decoded


def _same_tensors(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _refine(search: _SearchState, base: Candidate, max_qp: int) -> "_TensorMoves":
    """Stage 3 from one base candidate: per-tensor qps and λs on a qp scale one density finer; returns where it ended."""
    tensors, encoder_options = search.tensors, search.encoder_options
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
    base_lambda = float(settings.get("rdoq_lambda", 0.0))
    moves = _TensorMoves(
        qps=qps,
        lams={k: base_lambda for k in floats},
        current=base,
        settings=settings,
        floats=floats,
        sizes={k: tensors[k].size for k in floats},
        floor=search.floor,
        # a drop of the score is charged at least this much, so that free savings come first
        slack=max(search.tolerance, 1e-12) / 20,
        max_qp=max_qp,
        run=search.run,
        out_of_time=search.out_of_time,
        time_left=search.time_left,
        passes=search.passes_check,
        size=search.size,
        min_saving=MIN_SAVING_SHARE * base.bytes if search.time_budget is not None else 0.0,
    )
    if 2 * len(floats) > STEEPEST_MOVES:
        # many tensors: one knapsack step first, as single moves would take a round each
        moves.jump()
    moves.coarsen_single_tensors()
    # swaps: one tensor finer, another coarser, when that is smaller; then single moves again.
    # Among the largest tensors only, so that a round stays small on models with many tensors.
    swappable = sorted(floats, key=lambda k: tensors[k].size, reverse=True)[:SWAP_TENSORS]
    for swap in SWAP_STEPS:
        while not search.out_of_time() and moves.swap(swappable, swap):
            moves.coarsen_single_tensors()
    return moves


def _kicks(search: _SearchState, finals: list, seed: int = 0) -> None:
    """Stage 4, with a time budget left after the refinement: iterated local search.

    From the smallest refined setting, :data:`KICK_TENSORS` tensors drawn at random are made
    :data:`KICK_STEP` qps finer (on the refinement's scale) and single tensors are coarsened
    again from there; a descent that ends smaller within the tolerance becomes the start of
    the next kick. It ends with the time budget.
    """
    rng = random.Random(seed)
    finals = [m for m in finals if m.current.bound >= search.floor]
    while finals and not search.out_of_time():
        best = min(finals, key=lambda m: m.current.bytes)
        qps = dict(best.qps)
        for k in rng.sample(best.floats, min(KICK_TENSORS, len(best.floats))):
            qps[k] -= KICK_STEP
        kicked = search.run([best._trial(qps)])
        if not kicked:
            return
        moves = replace(best, qps=qps, current=kicked[0])
        moves.coarsen_single_tensors()
        current = moves.current
        if current.bound >= search.floor and current.bytes < best.current.bytes and search.passes_check(current):
            finals.append(moves)


@dataclass
class _TensorMoves:
    """The per-tensor refinement from one base candidate (stage 3): per-tensor qps and λs, and the moves on them.

    Every move evaluates candidates through ``run`` (so they land in the search's list) and
    keeps a change only when the candidate stays within the floor and is smaller than
    ``current``.
    """

    #: qp of each float tensor.
    qps: dict
    #: Rate-distortion λ of each float tensor.
    lams: dict
    #: The candidate of the current qps and λs.
    current: Candidate
    #: Encoder settings besides the per-tensor ones (a global ``rdoq_lambda`` is dropped: ``lams`` hold it).
    settings: dict
    #: Names of the float tensors, the ones that move.
    floats: list
    #: Element count of each float tensor (largest first in first-improvement rounds).
    sizes: dict
    floor: float
    #: The least score drop a move is charged, so that free savings come first.
    slack: float
    #: Largest qp a tensor may get.
    max_qp: int
    #: Evaluates a batch of settings (:meth:`_SearchState.run`).
    run: Callable
    out_of_time: Callable
    #: Seconds left of the time budget, or None without one.
    time_left: Callable = lambda: None
    #: Whether a candidate keeps the search's check (:meth:`_SearchState.passes_check`).
    passes: Callable = lambda c: True
    #: The bytes of a setting's stream, unscored (:meth:`_SearchState.size`); used with ``min_saving``.
    size: Callable | None = None
    #: First-improvement passes skip, unscored, a move that saves fewer bytes than this (0: none skipped).
    min_saving: float = 0.0

    def __post_init__(self):
        self.qps, self.lams = dict(self.qps), dict(self.lams)
        self.settings = {k: v for k, v in self.settings.items() if k != "rdoq_lambda"}

    def _trial(self, qps: dict) -> dict:
        return dict(self.settings, qp_per_tensor=qps, lambda_per_tensor=dict(self.lams))

    def _keeps(self, c: Candidate) -> bool:
        """Within the floor and smaller than the current candidate."""
        return c.bound >= self.floor and c.bytes < self.current.bytes

    def _accepts(self, c: Candidate) -> bool:
        """:meth:`_keeps`, and keeps the check (asked only then, as it costs an evaluation)."""
        return self._keeps(c) and self.passes(c)

    def jump(self) -> None:
        """Coarsen many tensors at once, as far as their separately measured score drops allow.

        Each tensor's qp is raised alone by each of :data:`PROBE_STEPS` (one candidate per
        tensor and step), largest tensors first; with a time budget, once the probes would
        take more than :data:`PROBE_SHARE` of the time left, the remaining (smallest) tensors
        are probed as one group. Then, taking the drops as additive, a multiple-choice
        knapsack picks per tensor (or group) the step that saves the most bytes for the score
        the tolerance leaves (greedy on the bytes saved per score lost), and that combination
        is tried with the whole budget, then half and a quarter of it, until one keeps the
        score.  Otherwise the best single probe that kept it is taken, if any.
        """
        qps, current = self.qps, self.current
        order = sorted(self.floats, key=lambda k: -self.sizes[k])
        left = self.time_left()
        began = time.monotonic()
        groups = [order[:1]]

        def probe(first: int) -> tuple[list, list]:
            moves = [
                (g, d) for g in range(first, len(groups)) for d in PROBE_STEPS if self._raised(groups[g], d) != qps
            ]
            return moves, self.run([self._trial(self._raised(groups[g], d)) for g, d in moves])

        probes, results = probe(0)
        count = len(order)
        if left is not None and results:
            per_probe = max((time.monotonic() - began) / len(results), 1e-9)
            count = max(2, int(PROBE_SHARE * left / (per_probe * len(PROBE_STEPS))))
        alone = order[1:] if count >= len(order) else order[1 : count - 1]
        groups += [[k] for k in alone] + ([order[len(alone) + 1 :]] if len(alone) + 1 < len(order) else [])
        more, got = probe(1)
        probes, results = probes + more[: len(got)], results + got
        options: dict = {}
        for (g, d), c in zip(probes, results):
            if self._keeps(c):
                options.setdefault(g, []).append((d, current.bytes - c.bytes, max(current.bound - c.bound, 0.0)))
        increments = _knapsack_increments(options, self.slack)
        budget = current.bound - self.floor
        tried = set()
        for share in (1.0, 0.5, 0.25):
            chosen = _knapsack_choice(increments, share * budget, self.slack)
            if len(chosen) < 2 or tuple(sorted(chosen.items())) in tried:
                continue  # one group alone was a probe already
            tried.add(tuple(sorted(chosen.items())))
            new_qps = dict(qps)
            for g, d in chosen.items():
                new_qps.update(self._raised(groups[g], d, new_qps))
            got = self.run([self._trial(new_qps)])
            if not got:
                break
            if self._accepts(got[0]):
                self.qps, self.current = new_qps, got[0]
                return
        # no combination kept the score: continue from the best single probe that did
        singles = sorted((c.bytes, i) for i, c in enumerate(results) if self._keeps(c))
        for _, i in singles[: 1 + MAX_CHECKS]:
            if self._accepts(results[i]):
                g, d = probes[i]
                self.qps, self.current = self._raised(groups[g], d), results[i]
                return

    def _raised(self, group: list, step: int, qps: dict | None = None) -> dict:
        """``qps`` (the current ones by default) with the qps of ``group`` raised by ``step``, at most to ``max_qp``."""
        qps = dict(self.qps if qps is None else qps)
        for k in group:
            qps[k] = max(qps[k], min(qps[k] + step, self.max_qp))
        return qps

    def _next_lambda(self, k: str):
        return next((x for x in LAMBDA_LADDER if x > self.lams[k]), None)

    def _can_move(self, move: tuple, step: int) -> bool:
        kind, k = move
        return self.qps[k] + step <= self.max_qp if kind == "qp" else self._next_lambda(k) is not None

    def _moved(self, move: tuple, step: int) -> tuple[dict, dict]:
        """(qps, λs) after a move: one tensor's qp raised by ``step``, or its λ up the ladder."""
        kind, k = move
        qps, lams = dict(self.qps), dict(self.lams)
        if kind == "qp":
            qps[k] += step
        else:
            lams[k] = self._next_lambda(k)
        return qps, lams

    def _setting(self, move: tuple, step: int) -> dict:
        qps, lams = self._moved(move, step)
        return dict(self.settings, qp_per_tensor=qps, lambda_per_tensor=lams)

    def _try(self, moves: list, step: int) -> list:
        return self.run([self._setting(move, step) for move in moves])

    def _saves_too_little(self, move: tuple, step: int) -> bool:
        """Whether ``move`` makes the stream less than ``min_saving`` bytes smaller (encoded, not scored)."""
        if not self.min_saving or self.size is None:
            return False
        return self.current.bytes - self.size(self._setting(move, step)) < self.min_saving

    def _take(self, move: tuple, step: int, c: Candidate) -> None:
        self.qps, self.lams = self._moved(move, step)
        self.current = c

    def coarsen_single_tensors(self) -> None:
        """Coarsen single tensors while the score holds, best bytes saved per score lost first.

        A move raises one tensor's qp by the current step of :data:`REFINE_STEPS`, or its
        rate-distortion λ to the next value of :data:`LAMBDA_LADDER` (cheaper than a coarser
        step at low rates).  With more than :data:`STEEPEST_MOVES` moves, the first move
        that helps is kept instead (:meth:`_first_improvement`).
        """
        for step in REFINE_STEPS:
            failed: set[tuple[str, str]] = set()
            while not self.out_of_time():
                moves = [
                    (kind, k)
                    for k in self.floats
                    for kind in ("qp", "lambda")
                    if (kind, k) not in failed and self._can_move((kind, k), step)
                ]
                if not moves:
                    break
                if len(moves) > STEEPEST_MOVES:
                    # many tensors: first improvement, largest tensors first, so that a time budget
                    # is spent on moves that are kept rather than on rounds that are cut short
                    if not self._first_improvement(moves, step, failed):
                        break
                    continue
                results = self._try(moves, step)
                good = []
                for move, c in zip(moves, results):
                    if self._keeps(c):
                        drop = max(self.current.bound - c.bound, 0.0)
                        good.append(((self.current.bytes - c.bytes) / (drop + self.slack), move, c))
                    else:
                        failed.add(move)
                taken = False
                for _, move, c in sorted(good, key=lambda g: -g[0]):
                    if self.passes(c):
                        self._take(move, step, c)
                        taken = True
                        break
                    failed.add(move)
                if not taken:
                    break

    def _first_improvement(self, moves: list, step: int, failed: set) -> bool:
        """One pass over ``moves`` (qp moves before λ moves, largest tensors first), keeping each that helps;
        whether any did.

        A λ step saves far less than a qp step of the same tensor (2-85 bytes against
        kilobytes on rapidocr), so with a time budget the evaluations go to qp moves first;
        a move that saves less than ``min_saving`` bytes is dropped without a score.
        """
        improved = False
        for move in sorted(moves, key=lambda m: (m[0] != "qp", -self.sizes[m[1]])):
            if not self._can_move(move, step):  # a move of the same tensor taken in this pass
                continue
            if self.out_of_time():
                break
            if self._saves_too_little(move, step):
                failed.add(move)
                continue
            tried = self._try([move], step)
            if not tried:
                break
            if self._accepts(tried[0]):
                self._take(move, step, tried[0])
                improved = True
            else:
                failed.add(move)
        return improved

    def swap(self, swappable: list, step: int) -> bool:
        """Make one of ``swappable`` finer by ``step`` and another coarser, the pair that gives the smallest
        stream within the floor; whether one did."""
        qps = self.qps
        pairs = [(a, b) for a in swappable for b in swappable if a != b and qps[b] + step <= self.max_qp]
        results = self.run([self._trial(dict(qps, **{a: qps[a] - step, b: qps[b] + step})) for a, b in pairs])
        good = sorted((c.bytes, i) for i, c in enumerate(results) if self._keeps(c))
        i = next((i for _, i in good if self.passes(results[i])), None)
        if i is None:
            return False
        a, b = pairs[i]
        self.qps = dict(qps, **{a: qps[a] - step, b: qps[b] + step})
        self.current = results[i]
        return True


def _knapsack_increments(options: dict, slack: float) -> list:
    """Per tensor, its probe steps as increments (bytes saved per score lost, tensor, step, extra drop), best first.

    A larger step counts only after the smaller one, and only when it saves more.
    """
    increments = []
    for k, opts in options.items():
        prev_saved, prev_drop = 0, 0.0
        for d, saved, drop in sorted(opts):
            if saved <= prev_saved:
                continue
            extra_drop = max(drop - prev_drop, 0.0)
            increments.append(((saved - prev_saved) / (extra_drop + slack), k, d, extra_drop))
            prev_saved, prev_drop = saved, max(drop, prev_drop)
    increments.sort(key=lambda x: -x[0])
    return increments


def _knapsack_choice(increments: list, budget: float, slack: float) -> dict:
    """{tensor: step}: increments taken greedily, each tensor's in order, each charged at least ``slack``."""
    chosen: dict[str, int] = {}
    spent, progress = 0.0, True
    while progress:
        progress = False
        for _, k, d, extra in increments:
            if chosen.get(k, 0) != max((i[2] for i in increments if i[1] == k and i[2] < d), default=0):
                continue
            cost = max(extra, slack)
            if spent + cost > budget:
                continue
            chosen[k] = d
            spent += cost
            progress = True
            break
    return chosen


def _jump(qps, lams, current, settings, floats, floor, slack, run, max_qp, sizes=None, time_left=lambda: None):
    """:meth:`_TensorMoves.jump` on its own (the form tests/test_search.py calls); returns (qps, candidate)."""
    moves = _TensorMoves(
        qps=qps,
        lams=lams,
        current=current,
        settings=settings,
        floats=floats,
        sizes=sizes or {k: 0 for k in floats},
        floor=floor,
        slack=slack,
        max_qp=max_qp,
        run=run,
        out_of_time=lambda: False,
        time_left=time_left,
    )
    moves.jump()
    return moves.qps, moves.current


__all__ = [
    "search",
    "SearchResult",
    "Candidate",
    "REFINE_STEPS",
    "LAMBDA_LADDER",
    "SWAP_STEPS",
    "SWAP_TENSORS",
    "STEEPEST_MOVES",
    "MIN_SAVING_SHARE",
    "PROBE_STEPS",
    "PROBE_SHARE",
    "KICK_TENSORS",
    "KICK_STEP",
    "RD_SHARE",
    "COARSER_SCAN",
    "MAX_CHECKS",
    "SWEEP_SHARE",
    "SWEEP_SECONDS",
    "paired_bound",
]
