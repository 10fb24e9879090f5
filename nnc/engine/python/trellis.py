"""Rate-distortion quantisation (informative, spec Annex A): RDOQ for uniform
reconstruction (A.9) and the dependent-quantisation trellis (A.2, A.14).

Part of the pure-Python engine (:mod:`nnc.engine.python`).  The quantisers walk the
scan of :class:`.scan.TensorScan`, estimate rates with the contexts of
:mod:`.binarisation` and the bit estimates of :mod:`.arithmetic`, and give exactly
the levels of the compiled engine: every floating-point operation is done in the
same order.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import EncodeError
from ...tables import NEXT_DQ_STATE
from ..matrix import INT32_MAX, MAX_ELEMENTS
from .arithmetic import _COST, EST_UNIT, _fresh_contexts
from .binarisation import ContextLayout, binarise, check_edition
from .scan import TensorScan, polled


def _check_quantiser_args(x, height, width, n_gtx, scan_order, lam, importance) -> tuple:
    """x and F as flat float64 arrays, after the checks both engines make."""
    height, width, n_gtx, scan_order = int(height), int(width), int(n_gtx), int(scan_order)
    if height < 0 or width < 0:
        raise EncodeError(f"negative tensor dimensions {height}x{width}", clause="11.1")
    if height * width > MAX_ELEMENTS:
        raise EncodeError(f"tensor dimensions {height}x{width}: more than 2**62 elements", clause="11.1")
    if not 1 <= n_gtx <= 256:
        raise EncodeError(f"number of greater-than flags {n_gtx} outside 1..256", clause="7.4")
    if not 0 <= scan_order <= 4:
        raise EncodeError(f"scan_order {scan_order} outside 0..4", clause="7.4")
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    size = height * width
    if x.size != size:
        raise EncodeError(f"x has {x.size} elements, the tensor has {size}")
    if lam < 0:
        raise EncodeError("lambda must be >= 0")
    f = None
    if importance is not None:
        f = np.ascontiguousarray(importance, dtype=np.float64).reshape(-1)
        if f.size != size or not np.all(f >= 0):
            raise EncodeError("importance needs one non-negative value per element")
    return x, f


def _value_cost(ctx: list, layout: ContextLayout, k: int, state: int, prev: int) -> int:
    """Estimated cost (2^-15 bit) of coding k in DQ state ``state`` with neighbour ``prev``; contexts unchanged."""
    total = 0
    for a, bin in binarise(k, layout, state=state, prev=prev):
        if a is None:
            total += EST_UNIT
        else:
            m = ctx[a]
            total += _COST[abs(m.c >> 7)][1 if bin == m.mps else 0]
    return total


def _adapt(ctx: list, layout: ContextLayout, k: int, state: int, prev: int) -> None:
    """Let the contexts adapt to coding k, as the encoder's will (A.4)."""
    for a, bin in binarise(k, layout, state=state, prev=prev):
        if a is not None:
            ctx[a].update(bin)


def _scan_positions(scan: TensorScan):
    """(flat index, starts a block row > 0) of every element in scan order (11.2, 11.3)."""
    W = scan.width
    for r in range(scan.n_block_rows):
        first = r > 0
        for row, c0, c1 in scan.segments(r):
            for pos in range(row * W + c0, row * W + c1):
                yield pos, first
                first = False


def rdoq_levels(x, height, width, *, lam, n_gtx=11, scan_order=0, edition=2, importance=None):
    """Rate-distortion quantisation of x = w / step (A.9), uniform reconstruction.

    For each element in scan order the level k in {0, floor(|x|), ceil(|x|)} (signed like x)
    minimises F (x - k)^2 + lam * bits(k), bits estimated under the current contexts, which
    then adapt to the chosen k.  ``lam`` is in squared steps per bit; lam = 0 is nearest
    rounding (ties away from zero).
    """
    edition = check_edition(edition)
    x, f = _check_quantiser_args(x, height, width, n_gtx, scan_order, lam, importance)
    layout = ContextLayout(edition, int(n_gtx))
    scan = TensorScan(int(height), int(width), int(scan_order), edition)
    ctx = _fresh_contexts(layout.count)
    out = np.zeros(x.size, dtype=np.int32)
    scale = lam / 32768.0
    prev = 0
    for i, block_row_start in _scan_positions(scan):
        if block_row_start:  # 11.3 block-row reset
            for m in ctx:
                m.reset()
            prev = 0
        xi = float(x[i])
        ax = xi if xi >= 0 else -xi
        fi = 1.0 if f is None else float(f[i])
        lo = int(ax)
        best_k, best_cost = 0, 1e308
        for q, cand in enumerate((0, lo, lo + 1)):
            if (q > 0 and cand == 0) or cand > INT32_MAX:
                continue
            d = ax - float(cand)
            cost = fi * d * d
            if scale > 0:
                cost += scale * float(_value_cost(ctx, layout, -cand if xi < 0 else cand, 0, prev))
            if cost < best_cost or (cost == best_cost and cand > best_k):
                best_k, best_cost = cand, cost
        if xi < 0:
            best_k = -best_k
        out[i] = best_k
        _adapt(ctx, layout, best_k, 0, prev)
        prev = best_k
    return out


def _dq_candidates(x: float, state: int) -> tuple:
    """0 and the two levels of the state's quantiser that bracket x (A.2)."""
    if state & 1:
        a = 2 * math.floor((x - 1.0) / 2.0) + 1
    else:
        a = 2 * math.floor(x / 2.0)
    return 0, a, a + 2


def _dq_k_from_n(n: int, state: int) -> int:
    """k = (n + sgn(n)(s & 1)) >> 1 (10.2)."""
    if n == 0:
        return 0
    return (n + (state & 1)) >> 1 if n > 0 else (n - (state & 1)) >> 1


def dq_rdoq_levels(x, height, width, *, lam, n_gtx=11, scan_order=0, edition=2, importance=None, chunk=1024, step=1.0):
    """Rate-aware DQ trellis on x / step (x = w, or w already divided with step 1; A.14); returns reconstruction
    integers n (x / step taken in float64).

    The 8-state Viterbi search of A.2 with the cost F (x - n)^2 + lam * bits(k).  The
    rates come from the adaptive contexts frozen at the start of each chunk of the
    scan; at a chunk's end the best path is fixed, the contexts adapt to its levels,
    and the next chunk starts from that path's state and neighbour.  With rates, a
    block row starts a new chunk so that its context reset applies.  lam = 0 is the
    distortion-only trellis of A.2; chunk >= the tensor size gives one global search.
    The working memory is that of one chunk, whatever the tensor's size.
    """
    edition = check_edition(edition)
    x, f = _check_quantiser_args(x, height, width, n_gtx, scan_order, lam, importance)
    if chunk < 1:
        raise EncodeError("lambda must be >= 0 and chunk >= 1")
    if not 0 < step < math.inf:  # (NaN too)
        raise EncodeError(f"step must be a positive finite number, not {step}")
    x = x / float(step)
    layout = ContextLayout(edition, int(n_gtx))
    scan = TensorScan(int(height), int(width), int(scan_order), edition)
    out = np.zeros(x.size, dtype=np.int32)
    clen = min(int(chunk), x.size)
    scale = lam / 32768.0
    inf = math.inf
    ctx = _fresh_contexts(layout.count)
    walk = _scan_positions(scan)
    held = None  # a block row's first element, waiting for the next chunk
    start_state, prev_run = 0, 0
    while True:
        # the next chunk of the scan; with rates, a block row starts a new chunk
        positions = []
        while len(positions) < clen:
            item = held if held is not None else next(walk, None)
            held = None
            if item is None:
                break
            if item[1] and positions and scale > 0:
                held = item
                break
            positions.append(item)
        if not positions:
            break
        if positions[0][1]:
            for m in ctx:
                m.reset()
            prev_run = 0
        frozen = ctx  # the contexts adapt only after the chunk's search
        cost = [inf] * 8
        cost[start_state] = 0.0
        prevk = [prev_run] * 8
        back = []
        for idx, _ in polled(positions, 64):  # (a poll every 64 steps, about 10 ms)
            xi = float(x[idx])
            fi = 1.0 if f is None else float(f[idx])
            new_cost = [inf] * 8
            new_prev = [0] * 8
            step = [0] * 8
            for s in range(8):
                if cost[s] == inf:
                    continue
                cand = _dq_candidates(xi, s)
                for ci in range(3):
                    if ci > 0 and cand[ci] == 0:
                        continue
                    k = _dq_k_from_n(cand[ci], s)
                    nxt = NEXT_DQ_STATE[s][k & 1]
                    d = xi - float(cand[ci])
                    total = cost[s] + fi * d * d
                    if scale > 0:
                        total += scale * float(_value_cost(frozen, layout, k, s, prevk[s]))
                    if total < new_cost[nxt]:
                        new_cost[nxt] = total
                        step[nxt] = s * 4 + ci
                        new_prev[nxt] = k
            back.append(step)
            cost, prevk = new_cost, new_prev
        # trace the chunk back from its best end state (the first of equal costs)
        s = min(range(8), key=lambda state: (cost[state], state))
        for i in range(len(positions) - 1, -1, -1):
            j = back[i][s]
            ci, s = j & 3, j >> 2
            idx = positions[i][0]
            out[idx] = _dq_candidates(float(x[idx]), s)[ci]
        # the contexts adapt to the chosen levels, in scan order
        s = start_state
        for idx, _ in positions:
            k = _dq_k_from_n(int(out[idx]), s)
            if scale > 0:
                _adapt(ctx, layout, k, s, prev_run)
            prev_run = k
            s = NEXT_DQ_STATE[s][k & 1]
        start_state = s
    return out


def dq_trellis(x):
    """Distortion-only DQ trellis over a sequence (A.2): the n minimising sum (x - n)^2."""
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    return dq_rdoq_levels(x, 1, x.size, lam=0.0, chunk=max(x.size, 1))
