# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Encoder-side quantisers (informative, spec Annex A): the dependent-quantisation trellis.

Works on a weight sequence already in scan order and already divided by the
step size.  Index safety: every array is sized by the caller-checked length
``n``; states are 0..7 by the transition table.
"""

from libc.math cimport floor, INFINITY
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

import numpy as np

cimport numpy as cnp

from nnc import tables

cnp.import_array()

cdef int NEXT_STATE[8][2]
cdef int _s
for _s in range(8):
    NEXT_STATE[_s][0], NEXT_STATE[_s][1] = tables.NEXT_DQ_STATE[_s]

DEF N_STATES = 8
DEF N_CAND = 3


cdef inline int64_t coded_from_n(int64_t n, int state) noexcept nogil:
    """k for a reconstruction integer n in a state (spec 10.2)."""
    if n == 0:
        return 0
    if n > 0:
        return (n + (state & 1)) >> 1
    return (n - (state & 1)) >> 1


cdef inline void candidates(double x, int state, int64_t* out) noexcept nogil:
    """0 and the two levels of the state's quantiser that bracket x."""
    cdef int64_t a
    out[0] = 0
    if state & 1:
        # Q1: odd integers
        a = 2 * <int64_t>floor((x - 1.0) / 2.0) + 1
    else:
        # Q0: even integers
        a = 2 * <int64_t>floor(x / 2.0)
    out[1] = a
    out[2] = a + 2
    if out[1] == 0:
        out[1] = out[2] + 2 if x > 0 else a - 2


def dq_trellis(double[::1] x, int8_t[::1] advance_before=None):
    """Distortion-only trellis over the 8-state DQ machine (spec Annex A.2).

    ``x``: weights divided by the step size, in scan order.  ``advance_before[i]``:
    parity-0 state moves applied before element i (skipped rows, spec 11.5).
    Returns the reconstruction integers n (int64) minimising sum (x - n)^2
    over every path of the trellis that starts in state 0.
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t i
    cdef int s, c, nxt, j, best_state, adv
    cdef double cost[N_STATES]
    cdef double new_cost[N_STATES]
    cdef double d, total
    cdef int64_t cand[N_CAND]
    cdef int64_t cand_store
    cdef int64_t k
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    # back[i, next_state] = prev_state * 4 + candidate index
    back_arr = np.zeros((n, N_STATES), dtype=np.uint8)
    cdef uint8_t[:, ::1] back = back_arr
    cdef int64_t[::1] o = out
    cdef bint has_adv = advance_before is not None
    if has_adv and advance_before.shape[0] != n:
        raise ValueError("advance_before must have one entry per element")
    with nogil:
        for s in range(N_STATES):
            cost[s] = INFINITY
        cost[0] = 0.0
        for i in range(n):
            if has_adv and advance_before[i] > 0:
                for adv in range(advance_before[i] % 4):
                    for s in range(N_STATES):
                        new_cost[s] = INFINITY
                    for s in range(N_STATES):
                        new_cost[NEXT_STATE[s][0]] = cost[s]
                    for s in range(N_STATES):
                        cost[s] = new_cost[s]
                # remember the permutation by marking: recomputed on backtrack
            for s in range(N_STATES):
                new_cost[s] = INFINITY
            for s in range(N_STATES):
                if cost[s] == INFINITY:
                    continue
                candidates(x[i], s, cand)
                for c in range(N_CAND):
                    k = coded_from_n(cand[c], s)
                    nxt = NEXT_STATE[s][k & 1]
                    d = x[i] - <double>cand[c]
                    total = cost[s] + d * d
                    if total < new_cost[nxt]:
                        new_cost[nxt] = total
                        back[i, nxt] = <uint8_t>(s * 4 + c)
            for s in range(N_STATES):
                cost[s] = new_cost[s]
        best_state = 0
        for s in range(1, N_STATES):
            if cost[s] < cost[best_state]:
                best_state = s
        s = best_state
        i = n - 1
        while i >= 0:
            j = back[i, s]
            c = j & 3
            s = j >> 2
            candidates(x[i], s, cand)
            o[i] = cand[c]
            # undo the parity-0 moves applied before element i
            if has_adv and advance_before[i] % 4:
                for adv in range(advance_before[i] % 4):
                    s = _prev_parity0(s)
            i -= 1
    return out


cdef inline int _prev_parity0(int s) noexcept nogil:
    cdef int p
    for p in range(N_STATES):
        if NEXT_STATE[p][0] == s:
            return p
    return 0
