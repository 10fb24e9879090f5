# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""DeepCABAC engine (Cython): arithmetic coder, context models, binarisation.

The interface is declared in nnc/engine/interface.py (described in
docs/dev/engine-api.md) and is identical to that of the pure-Python engine
``nnc.engine.python``.  Every loop over a tensor walks the scan with one helper
(``walk_next``) and selects contexts with one set of helpers (``sig_context``,
``sign_context``, ``gtx_context``).  Spec clauses are cited as
"spec 9.2".  Index bounds in the hot loops are proven by construction:

* context states stay within C in [-3891, 3891] and F in [-121, 123]
  (spec 9.3.3), so adaptation-table and rLPS-table indices are in range;
* context indices come from the layout of the tensor's N, which sized the
  context array;
* matrix positions come from loops bounded by height and width, which the
  Python wrapper checked against the array lengths;
* every byte read checks the remaining length itself (``next_byte``); the re-reads of the
  last byte read (``buf[pos - 1]``) rely on pos >= 2, which the start (two bytes, spec 9.1)
  and a seek (its target checked against the length, 9.7) establish.
"""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.math cimport INFINITY, floor
from libc.string cimport memcpy

import math

import numpy as np

from nnc.engine.matrix import MAX_ELEMENTS

cimport numpy as cnp

from nnc import tables
from nnc.errors import DecodeError, EncodeError, TruncatedError

cnp.import_array()

__all__ = ["PayloadDecoder", "PayloadEncoder", "bin_cost", "block_row_count", "compute_entry_points", "context_count",
           "dq_rdoq_levels", "dq_trellis", "estimate_tensor_bits", "rdoq_levels", "request_stop",
           "scan_permutation"]

cdef extern from *:
    int __builtin_clz(unsigned int x) nogil

# --------------------------------------------------------------------------
# Stopping long loops (an interrupt, SIGTERM): every walk over a tensor polls
# every POLL_ELEMENTS elements. In the main thread the poll runs Python's signal
# handlers; in other threads it reads the stop requests that a thread pool makes
# while it unwinds from an interrupt (request_stop). A loop that stops marks its
# thread; the Python wrapper then raises (raise_if_stopped), never returns a result.
# --------------------------------------------------------------------------
cdef extern from *:
    """
    #if defined(_MSC_VER)
    #define NNC_THREAD_LOCAL __declspec(thread)
    #else
    #define NNC_THREAD_LOCAL __thread
    #endif
    static volatile int nnc_stop_requests = 0;
    static NNC_THREAD_LOCAL int nnc_stopped_here = 0;
    """
    int nnc_stop_requests
    int nnc_stopped_here

from cpython.exc cimport PyErr_CheckSignals
cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident() nogil

import threading

cdef unsigned long MAIN_THREAD = threading.main_thread().ident
cdef int64_t POLL_ELEMENTS = 1 << 16
cdef object _signal_exception = None     # what a signal handler raised inside a loop of the main thread


cdef int run_signal_handlers() noexcept with gil:
    """Python's signal handlers, in the main thread; 1 when one raised (kept for raise_if_stopped)."""
    global _signal_exception
    try:
        PyErr_CheckSignals()
    except BaseException as exc:
        _signal_exception = exc
        return 1
    return 0


cdef int poll_stop() noexcept nogil:
    """1 when the loop of this thread must stop (and the thread is marked stopped), else 0."""
    global nnc_stopped_here
    if nnc_stopped_here:
        return 1
    if nnc_stop_requests > 0 or (PyThread_get_thread_ident() == MAIN_THREAD and run_signal_handlers()):
        nnc_stopped_here = 1
        return 1
    return 0


cdef int raise_if_stopped() except -1:
    """Raise what stopped this thread's loop: the signal handler's exception, or KeyboardInterrupt."""
    global _signal_exception, nnc_stopped_here
    if not nnc_stopped_here:
        return 0
    nnc_stopped_here = 0
    exc = _signal_exception if PyThread_get_thread_ident() == MAIN_THREAD else None
    if exc is not None:
        _signal_exception = None
        raise exc
    raise KeyboardInterrupt("stopped: another thread was interrupted")


def request_stop(int change):
    """Add ``change`` (1 or -1) to the stop requests: while any is open, the loops of every thread stop and
    raise KeyboardInterrupt (a thread pool asks while it waits for its workers after an interrupt)."""
    global nnc_stop_requests
    nnc_stop_requests = max(0, nnc_stop_requests + change)

# --------------------------------------------------------------------------
# Tables (spec 9.3.2, 9.3.3, 9.4, 10.2), filled from nnc.tables at import.
# --------------------------------------------------------------------------
cdef uint32_t RLPS[256]
cdef int32_t ADAPT[32]
cdef int32_t ADAPT_SHIFTED[32][32]   # ADAPT[i] >> sh, for the contexts' shift pairs (spec 9.3.3)
cdef int32_t INIT_SH0[9]
cdef int32_t INIT_SH1[9]
cdef int32_t INIT_C[9]
cdef int32_t INIT_F[9]
cdef int32_t NEXT_STATE[8][2]
cdef uint32_t EST_BITS[32][2]     # estimated cost in 1/32768 bit: [prob class][bin == MPS]
cdef uint32_t EST_BYPASS = 32768

cdef int _i
for _i in range(256):
    RLPS[_i] = tables.RLPS_TABLE[_i]
for _i in range(32):
    ADAPT[_i] = tables.ADAPT_STEPS[_i]
cdef int _sh
for _sh in range(32):
    for _i in range(32):
        ADAPT_SHIFTED[_sh][_i] = ADAPT[_i] >> _sh
for _i in range(9):
    INIT_SH0[_i], INIT_SH1[_i], INIT_C[_i], INIT_F[_i] = tables.INIT_SETS[_i]
for _i in range(8):
    NEXT_STATE[_i][0], NEXT_STATE[_i][1] = tables.NEXT_DQ_STATE[_i]


def _estimate_table():
    """Bits of an LPS / MPS bin per probability class, averaged over the range.

    The range R of the coder is spread roughly log-uniformly over 256..510, so
    each R is weighted by 1/R (spec Annex A.4).
    """
    out = []
    for q in range(32):
        lps = mps = wsum = 0.0
        for r in range(256, 511):
            w = 1.0 / r
            rl = tables.RLPS_TABLE[32 * ((r >> 5) & 7) + q]
            lps += w * math.log2(r / rl)
            mps += w * math.log2(r / (r - rl))
            wsum += w
        out.append((lps / wsum, mps / wsum))
    return out


_EST_TABLE = _estimate_table()
for _i in range(32):
    EST_BITS[_i][0] = <uint32_t>(_EST_TABLE[_i][0] * 32768.0 + 0.5)
    EST_BITS[_i][1] = <uint32_t>(_EST_TABLE[_i][1] * 32768.0 + 0.5)

DEF N_SETS = 9
DEF PENALTY = 3 * 32768          # 3 bits for signalling a non-default set (spec A.3)

# error codes of the C-level decoder
DEF ERR_NONE = 0
DEF ERR_TRUNCATED = 1
DEF ERR_LEVEL_RANGE = 2
DEF ERR_PREFIX = 3
DEF ERR_DQ_RANGE = 4
DEF ERR_FORCED_RANGE = 5
DEF ERR_CODEBOOK_RANGE = 6
DEF ERR_SEEK_NEGATIVE = 7
DEF ERR_SEEK_PAST_END = 8
DEF ERR_ENTRY_POINT = 9

DEF MODE_ENCODE = 0
DEF MODE_OPTIMISE = 1
DEF MODE_ESTIMATE = 2

DEF INT32_MAX = 2147483647

cdef extern from "_pricer.h":
    # nine init sets priced at once (spec A.3, A.4), see nnc/_pricer.h
    ctypedef struct nnc_pricer:
        uint64_t cost[9]
    ctypedef struct nnc_pricer_tables:
        int16_t mul_f[9]
        int16_t mul_s[9]
        int16_t init_f[9]
        int16_t init_s[9]
        uint32_t est[64]
    void nnc_pricer_reset(nnc_pricer* p, const nnc_pricer_tables* t) noexcept nogil
    void nnc_price_bin(nnc_pricer* p, const nnc_pricer_tables* t, int bin) noexcept nogil
    int16_t nnc_adapt_step(int16_t i) noexcept nogil

cdef nnc_pricer_tables PRICER
for _i in range(9):
    PRICER.mul_f[_i] = 1 << (7 - INIT_SH0[_i])
    PRICER.mul_s[_i] = 1 << (7 - INIT_SH1[_i])
    PRICER.init_f[_i] = INIT_F[_i]
    PRICER.init_s[_i] = INIT_C[_i] - 16 * INIT_F[_i]
for _i in range(32):
    PRICER.est[2 * _i] = EST_BITS[_i][0]
    PRICER.est[2 * _i + 1] = EST_BITS[_i][1]
    if nnc_adapt_step(_i) != ADAPT[_i]:
        raise ImportError("nnc/_pricer.h's adaptation steps differ from nnc.tables.ADAPT_STEPS")
for _i in range(9):
    if not 4 <= INIT_SH0[_i] <= 7 or not 4 <= INIT_SH1[_i] <= 7:
        raise ImportError("nnc/_pricer.h needs adaptation shifts of 4 ... 7")


# --------------------------------------------------------------------------
# Context models (spec 9.3)
# --------------------------------------------------------------------------
cdef struct Ctx:
    int32_t c          # combined state C = S + 16 F
    int32_t f          # fast state F
    int32_t s          # slow state S
    int32_t init_set
    const int32_t* step_f   # ADAPT >> sh0 and ADAPT >> sh1, indexed -16 .. 15 (spec 9.3.3)
    const int32_t* step_s


cdef inline void ctx_init(Ctx* m, int s) noexcept nogil:
    m.c = INIT_C[s]
    m.f = INIT_F[s]
    m.s = INIT_C[s] - 16 * INIT_F[s]
    m.step_f = &ADAPT_SHIFTED[INIT_SH0[s]][16]
    m.step_s = &ADAPT_SHIFTED[INIT_SH1[s]][16]
    m.init_set = s


cdef inline void contexts_init(Ctx* ctx, int n, int s) noexcept nogil:
    """n contexts in init set s (spec 9.3.2)."""
    cdef int i
    for i in range(n):
        ctx_init(&ctx[i], s)


cdef inline void ctx_reset(Ctx* m) noexcept nogil:
    m.c = INIT_C[m.init_set]
    m.f = INIT_F[m.init_set]
    m.s = INIT_C[m.init_set] - 16 * INIT_F[m.init_set]


cdef inline void ctx_update(Ctx* m, int bin) noexcept nogil:
    """Two-rate adaptation towards the coded bin (spec 9.3.3)."""
    cdef int32_t s = m.s
    cdef int32_t f = m.f
    if bin:
        f += m.step_f[f >> 3]
        s += m.step_s[s >> 7]
    else:
        f -= m.step_f[(-f) >> 3]
        s -= m.step_s[(-s) >> 7]
    m.f = f
    m.s = s
    m.c = s + 16 * f


cdef inline uint32_t prob_class(int32_t c) noexcept nogil:
    cdef int32_t q = c >> 7
    return <uint32_t>(-q if q < 0 else q)


cdef inline uint32_t est_bin(Ctx* m, int bin) noexcept nogil:
    return EST_BITS[prob_class(m.c)][1 if bin == (m.c >= 0) else 0]


# --------------------------------------------------------------------------
# Context layout (spec 10.3.1, 10.3.2)
# --------------------------------------------------------------------------
cdef struct Layout:
    int edition
    int n_gtx
    int n_ctx
    int sig
    int sig_tca
    int sig_hdsp
    int sign
    int sign_tca
    int gtx
    int gtx_tca
    int rem
    int n_rem
    int init_flag
    int row_skip


cdef Layout make_layout(int edition, int n_gtx):
    cdef Layout L
    L.edition = edition
    L.n_gtx = n_gtx
    if edition == 1:
        L.sig = 0
        L.sig_tca = -1
        L.sig_hdsp = -1
        L.sign = 24
        L.sign_tca = -1
        L.gtx = 27
        L.gtx_tca = -1
        L.rem = 27 + 2 * n_gtx
        L.n_rem = 32
        L.init_flag = 61 + 2 * n_gtx
        L.row_skip = -1
        L.n_ctx = 63 + 2 * n_gtx
    else:
        L.sig = 0
        L.sig_tca = 24
        L.sig_hdsp = 40
        L.sign = 48
        L.sign_tca = 51
        L.gtx = 53
        L.gtx_tca = 53 + 2 * n_gtx
        L.rem = 53 + 4 * n_gtx
        L.n_rem = 31
        L.init_flag = 87 + 4 * n_gtx
        L.row_skip = 89 + 4 * n_gtx
        L.n_ctx = 90 + 4 * n_gtx
    return L


def context_count(int edition, int n_gtx):
    """Number of context models of one tensor (spec 10.3)."""
    _check_edition(edition)
    return make_layout(edition, n_gtx).n_ctx


def _check_edition(edition):
    if edition not in (1, 2):  # api-check
        raise ValueError(f"edition must be 1 or 2, not {edition!r}")


# --------------------------------------------------------------------------
# Per-tensor coding parameters shared by decoder and encoder
# --------------------------------------------------------------------------
cdef struct TensorShape:
    int64_t height
    int64_t width
    int scan_order          # effective scan order (spec 11.1)
    int64_t block_h         # block height / width of the scan (whole matrix for scan 0)
    int64_t block_w
    int64_t n_block_rows
    int dq
    int cb                  # codebook-bounded binarisation active (edition 2)
    int64_t cb_size
    int64_t cb_zero
    int sign_inferred
    int inferred_negative
    int64_t max_abs_pos
    int64_t max_abs_neg
    int tca
    int hdsp


cdef TensorShape make_shape(int edition, int64_t height, int64_t width, int scan_order, int dq,
                            int64_t cb_size, int64_t cb_zero, int tca, int hdsp):
    cdef TensorShape t
    t.height = height
    t.width = width
    t.dq = dq
    if width <= 1 or height <= 1:  # the effective scan order (spec 11.1; nnc.engine.matrix)
        scan_order = 0
    t.scan_order = scan_order
    if scan_order == 0:
        t.block_h = height if height > 0 else 1
        t.block_w = width if width > 0 else 1
        t.n_block_rows = 1
    else:
        t.block_h = 4 << scan_order
        t.block_w = t.block_h
        t.n_block_rows = (height + t.block_h - 1) // t.block_h
        if t.n_block_rows < 1:
            t.n_block_rows = 1
    t.cb = edition == 2 and cb_size > 0
    t.cb_size = cb_size
    t.cb_zero = cb_zero
    t.sign_inferred = 0
    t.inferred_negative = 0
    t.max_abs_pos = INT32_MAX + 1
    t.max_abs_neg = INT32_MAX + 1
    if t.cb:
        t.max_abs_pos = cb_size - 1 - cb_zero
        t.max_abs_neg = cb_zero
        if cb_zero == 0 or cb_zero == cb_size - 1:
            t.sign_inferred = 1
            t.inferred_negative = cb_zero != 0
    t.tca = tca
    t.hdsp = hdsp
    return t


cdef inline int first_range_forced(Layout* L, TensorShape* t) noexcept nogil:
    """Whether R is forced to 256 before the first element (spec 11.3, 13)."""
    if t.scan_order == 0:
        return 0
    if L.edition == 1:
        return 1
    return t.n_block_rows > 1


cdef inline int has_row_flags(Layout* L, TensorShape* t) noexcept nogil:
    """Edition 2 row-skip / HDSP flags present (spec 8.3)."""
    return L.edition == 2 and t.width > 1 and t.height > 1 and t.cb_size != 1


# --------------------------------------------------------------------------
# The scan walk (spec 11.2): one walker, used by every loop over a tensor --
# decoding, encoding, estimates, the n -> k conversion and both quantisers.
# It yields row segments (one matrix row inside one block, 11.2) in scan order;
# the caller visits the flat indices first .. end - 1 of each.
# --------------------------------------------------------------------------
cdef struct ScanWalk:
    int64_t height
    int64_t width
    int64_t block_h
    int64_t block_w
    int64_t n_block_rows
    int64_t br              # current block row
    int64_t r_end           # end of the current block row's matrix rows
    int64_t c_end           # end of the current block column
    int64_t c0              # start of the current block column
    int64_t row             # matrix row of the current segment
    int64_t first           # flat index of the segment's first element
    int64_t end             # flat index after the segment's last element
    int block_row_start     # the segment is the first of block row br
    int64_t unpolled        # elements walked since the last poll_stop
    int stopped             # the walk was stopped: it has no more segments


cdef inline void walk_start(ScanWalk* w, TensorShape* t, int64_t first_block_row) noexcept nogil:
    """Start a walk at block row ``first_block_row``; an empty matrix has no segments."""
    walk_rows(w, t, first_block_row, t.n_block_rows)


cdef inline void walk_rows(ScanWalk* w, TensorShape* t, int64_t first_block_row,
                           int64_t stop_block_row) noexcept nogil:
    """Start a walk over block rows first_block_row .. stop_block_row - 1 (a block-row range)."""
    w.height = t.height
    w.width = t.width
    w.block_h = t.block_h
    w.block_w = t.block_w
    w.n_block_rows = stop_block_row if (t.height > 0 and t.width > 0) else 0
    if w.n_block_rows > t.n_block_rows:
        w.n_block_rows = t.n_block_rows
    w.br = first_block_row - 1
    w.r_end = 0
    w.row = 0
    w.c_end = t.width
    w.c0 = t.width
    w.unpolled = 0
    w.stopped = 0


cdef inline int walk_next(ScanWalk* w) noexcept nogil:
    """Advance to the next row segment: blocks left to right, rows top to bottom (spec 11.2).

    Returns 0 after the last segment, or early when the loop must stop (poll_stop: the
    caller's wrapper then raises).
    """
    if w.stopped:
        return 0
    w.block_row_start = 0
    w.row += 1
    if w.row >= w.r_end:
        w.c0 = w.c_end
        if w.c0 >= w.width:
            w.br += 1
            if w.br >= w.n_block_rows:
                return 0
            w.c0 = 0
            w.r_end = (w.br + 1) * w.block_h
            if w.r_end > w.height:
                w.r_end = w.height
            w.block_row_start = 1
        w.c_end = w.c0 + w.block_w
        if w.c_end > w.width:
            w.c_end = w.width
        w.row = w.br * w.block_h
    w.first = w.row * w.width + w.c0
    w.end = w.row * w.width + w.c_end
    w.unpolled += w.end - w.first
    if w.unpolled >= POLL_ELEMENTS:
        w.unpolled = 0
        if poll_stop():
            w.stopped = 1
            return 0
    return 1


cdef inline int skip_row_states(int state, int64_t width) noexcept nogil:
    """The DQ state after a skipped row segment (spec 11.5): ``width`` parity-0 moves, which have order 4."""
    cdef int64_t i
    for i in range(width % 4):
        state = NEXT_STATE[state][0]
    return state


# --------------------------------------------------------------------------
# One step of the walk, shared by decoding, encoding, estimates and the n -> k
# conversion: block-row boundaries, skipped rows, the DQ state and the values
# that select contexts (spec 10.2, 10.5, 11.3, 11.5).
# --------------------------------------------------------------------------
cdef inline bint enters_block_row(ScanWalk* w) noexcept nogil:
    """The segment starts a block row after the first: contexts reset, R forced to 256 (spec 11.3)."""
    return w.block_row_start and w.br > 0


cdef inline bint skips_segment(ScanWalk* w, TensorShape* t, const uint8_t* skipped, int* state) noexcept nogil:
    """The segment lies in a skipped row (spec 11.5): nothing is coded, and with DQ the state
    moves as the reference decoder's does (``skip_row_states``)."""
    if skipped == NULL or not skipped[w.row]:
        return 0
    if t.dq:
        state[0] = skip_row_states(state[0], w.width)
    return 1


cdef inline int dq_step(TensorShape* t, int state, int64_t k) noexcept nogil:
    """The DQ state after coded value k (spec 10.2); without DQ the state stays 0."""
    return NEXT_STATE[state][k & 1] if t.dq else state


cdef inline int64_t dq_n_from_k(int64_t k, int state) noexcept nogil:
    """Reconstruction integer n = 2k - sgn(k)(s & 1) (spec 10.2)."""
    if k == 0:
        return 0
    return 2 * k - ((state & 1) if k > 0 else -(state & 1))


cdef inline int32_t tca_base_at(const int32_t* base, int64_t i) noexcept nogil:
    """Element i's temporal context base (spec 10.5); 0 without TCA."""
    return base[i] if base != NULL else 0


cdef inline int hdsp_at(const int8_t* hist, int64_t i) noexcept nogil:
    """Whether the history selects element i's HDSP sig context (spec 10.5)."""
    return hist != NULL and hist[i] == 1


def block_row_count(int64_t height, int scan_order):
    """Number of block rows of ``height`` matrix rows in scan order s (spec 11.2): ceil(H / B), 1 for s = 0.

    Give the effective scan order (11.1) for the scan itself, the signalled one for the
    length of a header's entry-point list (7.3).
    """
    if scan_order == 0:
        return 1
    return (height + (4 << scan_order) - 1) // (4 << scan_order)


def scan_permutation(int64_t height, int64_t width, int scan_order):
    """Flat row-major indices of a height x width matrix in scan order (spec 11.1, 11.2).

    ``x.reshape(-1)[perm]`` is the tensor in coding order.
    """
    if height < 0 or width < 0:
        raise ValueError(f"negative tensor dimensions {height}x{width}")
    if width > 0 and height > MAX_ELEMENTS // width:
        raise ValueError(f"tensor dimensions {height}x{width}: more than 2**62 elements")
    cdef TensorShape t = make_shape(2, height, width, scan_order, 0, 0, 0, 0, 0)
    out = np.empty(height * width, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef ScanWalk w
    cdef int64_t i, pos = 0
    walk_start(&w, &t, 0)
    while walk_next(&w):
        for i in range(w.first, w.end):
            o[pos] = i
            pos += 1
    raise_if_stopped()
    return out


# --------------------------------------------------------------------------
# Context selection (spec 10.3, 10.5): one place for decoding, encoding and the
# rate estimates.  ``c`` is the neighbour class of the previous coded value.
# --------------------------------------------------------------------------
cdef inline int neighbour_class(int64_t prev) noexcept nogil:
    if prev == 0:
        return 0
    return 1 if prev < 0 else 2


cdef inline int sig_context(Layout* L, int state, int c, int32_t base, int hdsp_active) noexcept nogil:
    """sig_flag: HDSP before TCA before the neighbour rule (spec 10.3.2, 10.5)."""
    if hdsp_active:
        return L.sig_hdsp + state
    if base != 0:
        return L.sig_tca + 2 * state + (1 if (base > 1 or base < -1) else 0)
    return L.sig + 3 * state + c


cdef inline int sign_context(Layout* L, int c, int32_t base) noexcept nogil:
    """sign_flag (spec 10.3, 10.5)."""
    if base != 0:
        return L.sign_tca + (0 if base < 0 else 1)
    return L.sign + c


cdef inline int gtx_context(Layout* L, int j, int neg, int32_t base) noexcept nogil:
    """Greater-than flag j (spec 10.3, 10.5); with TCA the choice is |base| >= j."""
    cdef int64_t abs_base
    if base != 0:
        abs_base = -(<int64_t>base) if base < 0 else base
        return L.gtx_tca + 2 * j + (0 if abs_base >= j else 1)
    return L.gtx + 2 * j + neg


cdef list init_signalled_contexts(Layout* L, TensorShape* t):
    """Contexts whose init set is signalled, in signalling order (spec 8.4)."""
    cdef list out = []
    cdef int n = L.n_gtx
    cdef int a
    cdef int64_t max_abs
    if L.edition == 1:
        for a in range(L.rem + 32):
            if not t.dq and 3 <= a <= 23:
                continue
            out.append(a)
        return out
    if t.cb and t.cb_size == 1:
        return out
    max_abs = t.max_abs_pos if t.max_abs_pos > t.max_abs_neg else t.max_abs_neg
    out.extend(range(24) if t.dq else range(3))
    if t.tca:
        out.extend(range(24, 40) if t.dq else (24, 25))
    if t.hdsp:
        out.extend(range(40, 48) if t.dq else (40,))
    if not (t.cb and t.sign_inferred):
        out.extend((48, 49, 50))
        if t.tca:
            out.extend((51, 52))
    for a in range(2 * n):
        if not t.cb or a < 2 * max_abs:
            out.append(53 + a)
    if t.tca:
        for a in range(2 * n, 4 * n):
            if not t.cb or a < 2 * (max_abs - 1) + 2 * n:
                out.append(53 + a)
    for a in range(31):
        if not t.cb or n - 1 + ((<int64_t>1 << (a + 1)) - 1) < max_abs:
            out.append(L.rem + a)
    return out


# --------------------------------------------------------------------------
# Arithmetic decoder (spec 9.1, 9.2, 9.5, 9.6, 9.7)
# --------------------------------------------------------------------------
cdef struct ArithDecoder:
    const uint8_t* buf
    int64_t length
    int64_t pos
    uint32_t rng
    uint32_t val
    int bits_needed
    int err


cdef inline uint32_t next_byte(ArithDecoder* d) noexcept nogil:
    if d.pos < d.length:
        d.pos += 1
        return d.buf[d.pos - 1]
    d.err = ERR_TRUNCATED
    return 0


cdef inline int decode_bin(ArithDecoder* d, Ctx* m) noexcept nogil:
    """Decode one context-coded bin (spec 9.2)."""
    cdef uint32_t lps = RLPS[prob_class(m.c) + (d.rng & 0xE0)]
    cdef uint32_t mps_range = d.rng - lps
    cdef uint32_t scaled = mps_range << 7
    cdef int mps = m.c >= 0
    cdef int bin
    cdef int n
    if d.val < scaled:
        bin = mps
        d.rng = mps_range
        if mps_range < 256:
            d.rng = mps_range << 1
            d.val <<= 1
            d.bits_needed += 1
            if d.bits_needed == 0:
                d.bits_needed = -8
                d.val += next_byte(d)
    else:
        bin = 1 - mps
        n = __builtin_clz(lps) - 23
        d.val = (d.val - scaled) << n
        d.rng = lps << n
        d.bits_needed += n
        if d.bits_needed >= 0:
            d.val += next_byte(d) << d.bits_needed
            d.bits_needed -= 8
    ctx_update(m, bin)
    return bin


cdef inline int decode_bypass(ArithDecoder* d) noexcept nogil:
    """Decode one equiprobable bin (spec 9.5)."""
    cdef uint32_t scaled
    d.val <<= 1
    d.bits_needed += 1
    if d.bits_needed >= 0:
        d.bits_needed = -8
        d.val += next_byte(d)
    scaled = d.rng << 7
    if d.val >= scaled:
        d.val -= scaled
        return 1
    return 0


cdef inline uint64_t decode_bypass_bits(ArithDecoder* d, int nbits) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(nbits):
        v = (v << 1) | <uint64_t>decode_bypass(d)
    return v


cdef inline int decode_terminate(ArithDecoder* d) noexcept nogil:
    """Decode the terminate bin (spec 9.6): 1 at the end of a payload; 0 is an error."""
    d.rng -= 2
    return 1 if d.val >= (d.rng << 7) else 0


cdef inline void decode_failed(ArithDecoder* d, int code) noexcept nogil:
    """Record a decoding error, unless one is recorded already: bits read past the payload's end are zeros, and
    what they decode to must not hide the truncation (spec 9.2)."""
    if d.err == ERR_NONE:
        d.err = code


cdef inline int64_t decoder_position(ArithDecoder* d) noexcept nogil:
    """Bit position T of the decoder (spec 11.4)."""
    return 8 * d.pos - 8 + d.bits_needed


cdef inline bint fill_in_bits_match(ArithDecoder* d) noexcept nogil:
    """Whether V's low 7 bits equal those a start at the decoder's position fills in (spec 9.7)."""
    return (d.val & 127) == ((<uint32_t>d.buf[d.pos - 1] << (8 + d.bits_needed)) & 127)


cdef inline bint at_entry_point(int64_t t, int64_t value, bint low_ok, int state, int64_t ep_t, int64_t ep_value,
                                int64_t ep_state, bint dq) noexcept nogil:
    """Whether a block row reached sequentially starts in the state its entry point
    gives: position T, all of V and the DQ state (spec 11.4)."""
    return t == ep_t and value == ep_value and low_ok and (not dq or state == ep_state)


cdef inline int decoder_seek(ArithDecoder* d, int64_t t, uint32_t value) noexcept nogil:
    """Start decoding at bit position t with the window value (spec 9.7); 0 or an error code."""
    cdef int64_t p = t + 9
    cdef int64_t consumed
    cdef int bits_needed
    if t < 0:
        return ERR_SEEK_NEGATIVE
    if p % 8 != 0:
        consumed = p // 8 + 1
        bits_needed = <int>(p % 8) - 9
    else:
        consumed = p // 8
        bits_needed = -1
    if consumed > d.length:
        return ERR_SEEK_PAST_END
    d.pos = consumed
    d.bits_needed = bits_needed
    d.val = (value << 7) + ((<uint32_t>d.buf[d.pos - 1] << (8 + d.bits_needed)) & 127)
    d.rng = 256
    return ERR_NONE


# --------------------------------------------------------------------------
# Arithmetic encoder (spec 9.8)
# --------------------------------------------------------------------------
cdef struct ArithEncoder:
    uint32_t low
    uint32_t rng
    int bits_left
    uint32_t buffered_byte
    int64_t num_buffered
    uint8_t* out
    int64_t out_len
    int64_t out_cap
    int err
    uint64_t bins


cdef int enc_init(ArithEncoder* e) noexcept nogil:
    e.low = 0
    e.rng = 510
    e.bits_left = 23
    e.buffered_byte = 0xFF
    e.num_buffered = 0
    e.out_cap = 4096
    e.out_len = 0
    e.err = 0
    e.bins = 0
    e.out = <uint8_t*>malloc(e.out_cap)
    return e.out != NULL


cdef inline void enc_put_byte(ArithEncoder* e, uint32_t b) noexcept nogil:
    cdef uint8_t* grown
    if e.out_len == e.out_cap:
        grown = <uint8_t*>realloc(e.out, e.out_cap * 2)
        if grown == NULL:
            e.err = 1
            return
        e.out = grown
        e.out_cap *= 2
    e.out[e.out_len] = <uint8_t>(b & 0xFF)
    e.out_len += 1


cdef inline void enc_write_out(ArithEncoder* e) noexcept nogil:
    """Emit one byte of low, holding back 0xFF bytes until the carry is known."""
    cdef uint32_t lead = e.low >> (24 - e.bits_left)
    cdef uint32_t b
    e.bits_left += 8
    e.low &= (<uint32_t>0xFFFFFFFF) >> e.bits_left
    if lead == 0xFF:
        e.num_buffered += 1
    elif e.num_buffered > 0:
        b = e.buffered_byte + (lead >> 8)
        e.buffered_byte = lead & 0xFF
        enc_put_byte(e, b)
        b = (0xFF + (lead >> 8)) & 0xFF
        while e.num_buffered > 1:
            enc_put_byte(e, b)
            e.num_buffered -= 1
    else:
        e.num_buffered = 1
        e.buffered_byte = lead


cdef inline void enc_bin(ArithEncoder* e, Ctx* m, int bin) noexcept nogil:
    cdef uint32_t lps = RLPS[prob_class(m.c) + (e.rng & 0xE0)]
    cdef int n
    e.rng -= lps
    if bin != (m.c >= 0):
        n = __builtin_clz(lps) - 23
        e.low = (e.low + e.rng) << n
        e.rng = lps << n
        e.bits_left -= n
    elif e.rng < 256:
        e.low <<= 1
        e.rng <<= 1
        e.bits_left -= 1
    ctx_update(m, bin)
    if e.bits_left < 12:
        enc_write_out(e)


cdef inline void enc_bypass(ArithEncoder* e, int bin) noexcept nogil:
    e.low <<= 1
    if bin:
        e.low += e.rng
    e.bits_left -= 1
    if e.bits_left < 12:
        enc_write_out(e)


cdef inline void enc_bypass_bits(ArithEncoder* e, uint64_t value, int nbits) noexcept nogil:
    cdef int i
    for i in range(nbits - 1, -1, -1):
        enc_bypass(e, <int>((value >> i) & 1))


cdef void enc_release_pending(ArithEncoder* e) noexcept nogil:
    """Write the held-back bytes, carrying the bit above low's 32 - bits_left code bits into them (spec 9.8)."""
    cdef int nbits = 32 - e.bits_left
    if (e.low >> nbits) != 0:
        enc_put_byte(e, e.buffered_byte + 1)
        while e.num_buffered > 1:
            enc_put_byte(e, 0x00)
            e.num_buffered -= 1
        e.low -= <uint32_t>1 << nbits
    else:
        if e.num_buffered > 0:
            enc_put_byte(e, e.buffered_byte)
        while e.num_buffered > 1:
            enc_put_byte(e, 0xFF)
            e.num_buffered -= 1


cdef void enc_terminate_and_flush(ArithEncoder* e) noexcept nogil:
    """Terminate bin 1, flush, stop bit '1' and zero padding (spec 9.8)."""
    cdef int nbits
    cdef uint32_t bits
    e.rng -= 2
    e.low += e.rng
    e.low <<= 7
    e.rng = 256
    e.bits_left -= 7
    if e.bits_left < 12:
        enc_write_out(e)
    enc_release_pending(e)
    # remaining (24 - bits_left) bits of low >> 8, then the stop bit, then zero padding
    nbits = 24 - e.bits_left
    bits = ((e.low >> 8) & ((<uint32_t>1 << nbits) - 1)) << 1 | 1
    nbits += 1
    while nbits % 8 != 0:
        bits <<= 1
        nbits += 1
    while nbits > 0:
        nbits -= 8
        enc_put_byte(e, (bits >> nbits) & 0xFF)


# --------------------------------------------------------------------------
# Tensor decoding (spec 8.1, 10, 11)
# --------------------------------------------------------------------------
cdef inline int64_t decode_value(ArithDecoder* d, Ctx* ctx, Layout* L, TensorShape* t,
                                 int state, int64_t prev, int32_t base, int hdsp_active) noexcept nogil:
    """Decode one coded integer k (spec 10.1, 10.3, 10.4). Errors set d.err."""
    cdef int c = neighbour_class(prev)
    cdef int neg
    cdef int64_t absk = 1
    cdef int64_t max_abs
    cdef int j = 0
    cdef int m = 0
    cdef int n = L.n_gtx
    if t.cb and t.cb_size == 1:
        return 0                    # one-entry codebook: nothing is coded (spec 10.4)
    if not decode_bin(d, &ctx[sig_context(L, state, c, base, hdsp_active)]):
        return 0
    if t.cb and t.sign_inferred:
        neg = t.inferred_negative
    else:
        neg = decode_bin(d, &ctx[sign_context(L, c, base)])
    max_abs = t.max_abs_neg if neg else t.max_abs_pos
    while absk < max_abs and j < n:
        if not decode_bin(d, &ctx[gtx_context(L, j, neg, base)]):
            return -absk if neg else absk
        absk += 1
        j += 1
    if j == n and absk < max_abs:
        # Exp-Golomb remainder with context-coded prefix (spec 10.1)
        while True:
            if m == L.n_rem:
                if L.edition == 2:
                    break           # prefix cap: no terminating bin after 31 ones
                decode_failed(d, ERR_PREFIX)
                return 0
            if t.cb and max_abs < absk + (<int64_t>1 << m):
                break
            if not decode_bin(d, &ctx[L.rem + m]):
                break
            absk += <int64_t>1 << m
            m += 1
        absk += <int64_t>decode_bypass_bits(d, m)
    if absk > (<int64_t>INT32_MAX + 1) or (not neg and absk > INT32_MAX):
        decode_failed(d, ERR_LEVEL_RANGE)
        return 0
    if t.cb and absk > max_abs:
        decode_failed(d, ERR_CODEBOOK_RANGE)
        return 0
    return -absk if neg else absk


cdef inline void contexts_reset(Ctx* ctx, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        ctx_reset(&ctx[i])


cdef int decode_tensor_data(ArithDecoder* dsrc, Ctx* ctx, Layout* Lsrc, TensorShape* tsrc,
                            int32_t* out, const int32_t* base, const int8_t* hist, const uint8_t* skipped,
                            int64_t* ep_t, int64_t* ep_value, int64_t* ep_state, int64_t n_ep, int use_ep,
                            int64_t start_row, int64_t* rec_t, int64_t* rec_value, int64_t* rec_state,
                            int64_t stop_row, int64_t* bnd) noexcept nogil:
    """Decode the scan of one tensor (spec 11.2, 11.3, 11.5). Returns 0 or an error code.

    With entry points (``use_ep``) the block rows before ``start_row`` are not decoded, and
    every block row after the first one decoded must start where its entry point does.
    With ``bnd`` != NULL (a block-row range, spec 11.4): only block row ``start_row``
    is entered from its entry point, rows up to ``stop_row`` - 1 follow sequentially,
    and at the start of ``stop_row`` (< n_block_rows) bnd receives
    (T, V >> 7, DQ state, 1 if V's low 7 bits equal those an entry-point start fills in).

    The scan runs on local copies of the decoder, the layout and the shape: stores to
    ``out`` and to the contexts cannot alias them, so the compiler keeps the coder's
    registers in registers.  The decoder's state is copied back at the end.
    """
    cdef ArithDecoder dl = dsrc[0]
    cdef Layout Ll = Lsrc[0]
    cdef TensorShape tl = tsrc[0]
    cdef ArithDecoder* d = &dl
    cdef Layout* L = &Ll
    cdef TensorShape* t = &tl
    cdef int64_t br, i
    cdef int state = 0
    cdef int64_t prev = 0
    cdef int64_t k, n_rec
    cdef int64_t seq_t, seq_value
    cdef int seq_state
    cdef bint seq_low_ok
    cdef int code
    cdef ScanWalk w
    try:
        # a range also walks the first row after it, to stop at its boundary
        walk_rows(&w, t, start_row if (use_ep or bnd != NULL) else 0,
                  stop_row + 1 if bnd != NULL else t.n_block_rows)
        while walk_next(&w):
            br = w.br
            if enters_block_row(&w):
                contexts_reset(ctx, L.n_ctx)
                prev = 0
                d.rng = 256
                if (not use_ep or br > start_row) and d.val >= (256 << 7):
                    return ERR_FORCED_RANGE
                if rec_t != NULL:
                    rec_t[br - 1] = decoder_position(d)
                    rec_value[br - 1] = d.val >> 7
                    rec_state[br - 1] = state
                if bnd != NULL and br == stop_row:
                    bnd[0] = decoder_position(d)
                    bnd[1] = d.val >> 7
                    bnd[2] = state
                    bnd[3] = fill_in_bits_match(d)
                    return ERR_NONE
                seq_t, seq_value, seq_state = decoder_position(d), d.val >> 7, state
                seq_low_ok = fill_in_bits_match(d)
                if use_ep and (bnd == NULL or br == start_row):
                    code = decoder_seek(d, ep_t[br - 1], <uint32_t>ep_value[br - 1])
                    if code:
                        return code
                    state = <int>ep_state[br - 1] if t.dq else 0
                if use_ep and br > start_row and not at_entry_point(seq_t, seq_value, seq_low_ok, seq_state,
                                                                    ep_t[br - 1], ep_value[br - 1], ep_state[br - 1],
                                                                    t.dq):
                    return ERR_ENTRY_POINT
            if skips_segment(&w, t, skipped, &state):
                continue
            for i in range(w.first, w.end):
                k = decode_value(d, ctx, L, t, state, prev, tca_base_at(base, i), hdsp_at(hist, i))
                if d.err:
                    return d.err
                if t.dq:
                    n_rec = dq_n_from_k(k, state)
                    if n_rec > INT32_MAX or n_rec < -INT32_MAX - 1:
                        return ERR_DQ_RANGE
                    out[i] = <int32_t>n_rec
                else:
                    out[i] = <int32_t>k
                state = dq_step(t, state, k)
                prev = k
        return ERR_NONE
    finally:
        dsrc[0] = dl


# --------------------------------------------------------------------------
# Tensor encoding, init-set optimisation and rate estimation share one walk
# over the bins: ``put_bin`` sends a bin to the coder, to the 9 parallel
# estimators of the init-set optimiser, or to the single rate estimator.
# --------------------------------------------------------------------------
cdef struct BinSink:
    int mode
    ArithEncoder* enc
    Ctx* ctx                # MODE_ENCODE / MODE_ESTIMATE: one context set
    nnc_pricer* pricers     # MODE_OPTIMISE: one pricer (all N_SETS sets) per context
    int n_ctx
    uint64_t est_bits       # MODE_ESTIMATE: accumulated cost; MODE_OPTIMISE: the bypass bins' (1/32768 bit)


cdef inline void start_optimiser(BinSink* s, nnc_pricer* pricers, int n_ctx) noexcept nogil:
    """A sink that prices every bin under all N_SETS init sets at once (spec A.3)."""
    cdef int a, k
    for a in range(n_ctx):
        nnc_pricer_reset(&pricers[a], &PRICER)
        for k in range(N_SETS):
            pricers[a].cost[k] = 0
    s.mode = MODE_OPTIMISE
    s.pricers = pricers
    s.n_ctx = n_ctx
    s.est_bits = 0


cdef inline void start_estimator(BinSink* s, Ctx* ctx, int n_ctx) noexcept nogil:
    """A sink that adds up estimated bits while one context set adapts (spec A.4)."""
    s.mode = MODE_ESTIMATE
    s.ctx = ctx
    s.n_ctx = n_ctx
    s.est_bits = 0


cdef inline void put_bin(BinSink* s, int ctx_idx, int bin) noexcept nogil:
    if s.mode == MODE_ENCODE:
        enc_bin(s.enc, &s.ctx[ctx_idx], bin)
    elif s.mode == MODE_ESTIMATE:
        s.est_bits += est_bin(&s.ctx[ctx_idx], bin)
        ctx_update(&s.ctx[ctx_idx], bin)
    else:
        nnc_price_bin(&s.pricers[ctx_idx], &PRICER, bin)


cdef inline void put_bypass(BinSink* s, uint64_t value, int nbits) noexcept nogil:
    if s.mode == MODE_ENCODE:
        enc_bypass_bits(s.enc, value, nbits)
    else:
        s.est_bits += <uint64_t>nbits * EST_BYPASS


cdef inline void sink_block_row_start(BinSink* s) noexcept nogil:
    """Context reset and range forcing at a block-row boundary (spec 11.3)."""
    cdef int i
    if s.mode == MODE_OPTIMISE:
        for i in range(s.n_ctx):
            nnc_pricer_reset(&s.pricers[i], &PRICER)
        return
    contexts_reset(s.ctx, s.n_ctx)
    if s.mode == MODE_ENCODE:
        s.enc.rng = 256


cdef inline void encode_value(BinSink* s, Layout* L, TensorShape* t, int64_t k, int state,
                              int64_t prev, int32_t base, int hdsp_active) noexcept nogil:
    """Binarise one coded integer k (spec 10.1, 10.3, 10.4); inverse of decode_value."""
    cdef int c = neighbour_class(prev)
    cdef int neg = k < 0
    cdef int64_t absk = -k if neg else k
    cdef int64_t run = 1
    cdef int64_t max_abs
    cdef int64_t r
    cdef int j = 0
    cdef int m = 0
    cdef int n = L.n_gtx
    cdef int flag
    if t.cb and t.cb_size == 1:
        return
    put_bin(s, sig_context(L, state, c, base, hdsp_active), k != 0)
    if k == 0:
        return
    if not (t.cb and t.sign_inferred):
        put_bin(s, sign_context(L, c, base), neg)
    max_abs = t.max_abs_neg if neg else t.max_abs_pos
    while run < max_abs and j < n:
        flag = absk > run
        put_bin(s, gtx_context(L, j, neg, base), flag)
        if not flag:
            return
        run += 1
        j += 1
    if j == n and run < max_abs:
        r = absk - run
        while True:
            if m == L.n_rem:
                break
            if t.cb and max_abs < run + (<int64_t>1 << m):
                break
            if r >= (<int64_t>1 << m):
                put_bin(s, L.rem + m, 1)
                r -= <int64_t>1 << m
                run += <int64_t>1 << m
                m += 1
            else:
                put_bin(s, L.rem + m, 0)
                break
        put_bypass(s, <uint64_t>r, m)


cdef void encode_tensor_data(BinSink* s, Layout* L, TensorShape* t, const int32_t* k_values,
                             const int32_t* base, const int8_t* hist, const uint8_t* skipped) noexcept nogil:
    """Walk the scan of one tensor, sending its bins to the sink (spec 11.2, 11.3, 11.5)."""
    encode_block_rows(s, L, t, k_values, base, hist, skipped, 0, t.n_block_rows, 0)


cdef void encode_block_rows(BinSink* ssrc, Layout* Lsrc, TensorShape* tsrc, const int32_t* k_values,
                            const int32_t* base, const int8_t* hist, const uint8_t* skipped,
                            int64_t br_start, int64_t br_stop, int state0) noexcept nogil:
    """Walk block rows br_start .. br_stop - 1, the DQ state being state0 at the first (spec 11.2).

    Runs on local copies of the sink, its coder, the layout and the shape (see decode_tensor_data).
    """
    cdef BinSink sl = ssrc[0]
    cdef ArithEncoder el
    cdef Layout Ll = Lsrc[0]
    cdef TensorShape tl = tsrc[0]
    cdef BinSink* s = &sl
    cdef Layout* L = &Ll
    cdef TensorShape* t = &tl
    cdef int64_t i
    cdef int state = state0
    cdef int64_t prev = 0
    cdef int64_t k
    cdef ScanWalk w
    if sl.mode == MODE_ENCODE:
        el = ssrc.enc[0]
        sl.enc = &el
    walk_rows(&w, t, br_start, br_stop)
    while walk_next(&w):
        if enters_block_row(&w):
            sink_block_row_start(s)
            prev = 0
        if skips_segment(&w, t, skipped, &state):
            continue
        for i in range(w.first, w.end):
            k = k_values[i]
            encode_value(s, L, t, k, state, prev, tca_base_at(base, i), hdsp_at(hist, i))
            state = dq_step(t, state, k)
            prev = k
    if sl.mode == MODE_ENCODE:
        ssrc.enc[0] = el
        sl.enc = ssrc.enc
    ssrc[0] = sl


# --------------------------------------------------------------------------
# Block-row ranges coded on their own and joined exactly (spec A.5, 9.8)
# --------------------------------------------------------------------------
cdef void enc_segment_code(ArithEncoder* e) noexcept nogil:
    """Turn a segment encoder's state into its whole code value (9.8): every pending
    byte with the register's carry, then the register's 32 - bits_left bits, MSB first,
    left-aligned in the last byte.  The segment started with low 0, R 256, bits_left 23,
    so the code has n + 9 bits for n renormalisation shifts."""
    cdef int nbits = 32 - e.bits_left
    cdef uint64_t bits
    enc_release_pending(e)
    e.num_buffered = 0
    bits = e.low
    while nbits % 8 != 0:
        bits <<= 1
        nbits += 1
    while nbits > 0:
        nbits -= 8
        enc_put_byte(e, <uint32_t>(bits >> nbits) & 0xFF)


cdef void enc_append_code(ArithEncoder* e, const uint8_t* code, int64_t n, uint32_t final_rng) noexcept nogil:
    """Continue encoder e (R forced to 256 at a block-row start) with a segment coded on its own
    from that point: low becomes low * 2^n + (the segment's n + 9-bit code), with carries (9.8)."""
    cdef int64_t pos = 9
    cdef int64_t end = n + 9
    cdef int g, j
    cdef uint32_t v
    e.low += ((<uint32_t>code[0] << 1) | (code[1] >> 7))      # the top 9 bits (< 256)
    while pos < end:
        g = 8 if end - pos >= 8 else <int>(end - pos)
        v = 0
        for j in range(g):
            v = (v << 1) | ((code[(pos + j) >> 3] >> (7 - ((pos + j) & 7))) & 1)
        pos += g
        e.low = (e.low << g) + v
        e.bits_left -= g
        if e.bits_left < 12:
            enc_write_out(e)
    e.rng = final_rng


cdef class _RowRange:
    """Block rows [a, b) of one tensor, estimated or coded on their own (parallel encoding)."""
    cdef BinSink s
    cdef ArithEncoder e
    cdef Ctx* ctx
    cdef nnc_pricer* pricers
    cdef Layout L
    cdef TensorShape t
    cdef const int32_t* k
    cdef const int32_t* base
    cdef const int8_t* hist
    cdef const uint8_t* skip
    cdef int64_t a, b, shifts
    cdef int state0

    def __cinit__(self):
        self.ctx = NULL
        self.pricers = NULL
        self.e.out = NULL

    def __dealloc__(self):
        free(self.ctx)
        free(self.pricers)
        free(self.e.out)

    def run(self):
        with nogil:
            encode_block_rows(&self.s, &self.L, &self.t, self.k, self.base, self.hist, self.skip,
                              self.a, self.b, self.state0)
            if self.s.mode == MODE_ENCODE:
                # n = shifts since the start: 23 - bits_left + 8 per byte written or pending
                self.shifts = 23 - self.e.bits_left + 8 * (self.e.out_len + self.e.num_buffered)
                enc_segment_code(&self.e)
        raise_if_stopped()
        if self.e.err:
            raise MemoryError()


cdef _RowRange _row_range(int mode, Layout* L, TensorShape* t, const int32_t* k, const int32_t* base,
                          const int8_t* hist, const uint8_t* skip, int64_t a, int64_t b, int state0, list sets):
    cdef _RowRange rr = _RowRange()
    cdef int i
    rr.L = L[0]
    rr.t = t[0]
    rr.k, rr.base, rr.hist, rr.skip = k, base, hist, skip
    rr.a, rr.b, rr.state0 = a, b, state0
    rr.s.mode = mode
    rr.s.n_ctx = L.n_ctx
    if mode == MODE_OPTIMISE:
        rr.pricers = <nnc_pricer*>malloc(L.n_ctx * sizeof(nnc_pricer))
        if rr.pricers == NULL:
            raise MemoryError()
        start_optimiser(&rr.s, rr.pricers, L.n_ctx)
    else:
        rr.ctx = <Ctx*>malloc(L.n_ctx * sizeof(Ctx))
        if rr.ctx == NULL or not enc_init(&rr.e):
            raise MemoryError()
        for i in range(L.n_ctx):
            ctx_init(&rr.ctx[i], sets[i])
        rr.e.rng = 256
        rr.s.enc = &rr.e
        rr.s.ctx = rr.ctx
    return rr


cdef void _add_costs(nnc_pricer* total, _RowRange part, int n_ctx) noexcept:
    cdef int a, k
    for a in range(n_ctx):
        for k in range(N_SETS):
            total[a].cost[k] += part.pricers[a].cost[k]


def _run_in_threads(list tasks):
    """Run every task's ``run()``; the first in this thread, the others in a pool."""
    from nnc._threads import worker_pool

    with worker_pool(max(1, len(tasks) - 1), "nnc-rows") as pool:
        futures = [pool.submit(task.run) for task in tasks[1:]]
        tasks[0].run()
        for f in futures:
            f.result()


cdef inline int64_t dq_k_from_n(int64_t n, int state) noexcept nogil:
    """k = (n + sgn(n)(s & 1)) >> 1 (spec 10.2), the encoder's conversion n -> k."""
    if n == 0:
        return 0
    if n > 0:
        return (n + (state & 1)) >> 1
    return (n - (state & 1)) >> 1


cdef int levels_to_coded(TensorShape* t, const int32_t* n_values, int32_t* k_out,
                         const uint8_t* skipped, int64_t* bad_index, int32_t* row_states) noexcept nogil:
    """Convert reconstruction integers n to coded values k along the scan (spec 10.2).

    Returns 0, or 1 with *bad_index set when some n is not representable in
    the trellis state reached at its position.  With ``row_states`` != NULL it
    receives the DQ state at the start of every block row (spec 11.3, 11.5), for
    coding block-row ranges on their own.
    """
    cdef int64_t i
    cdef int state = 0
    cdef int64_t n, k
    cdef ScanWalk w
    walk_start(&w, t, 0)
    while walk_next(&w):
        if w.block_row_start and row_states != NULL:
            row_states[w.br] = state
        if skips_segment(&w, t, skipped, &state):
            continue
        for i in range(w.first, w.end):
            n = n_values[i]
            k = dq_k_from_n(n, state)
            if dq_n_from_k(k, state) != n:     # n is no level of this state's quantiser
                bad_index[0] = i
                return 1
            k_out[i] = <int32_t>k
            state = dq_step(t, state, k)
    return 0


# --------------------------------------------------------------------------
# Python interface (docs/dev/engine-api.md)
# --------------------------------------------------------------------------
_DECODE_ERRORS = {
    ERR_TRUNCATED: (TruncatedError, "payload ends before the tensor data is complete", "9.2"),
    ERR_LEVEL_RANGE: (DecodeError, "decoded level magnitude does not fit in int32", "10.1"),
    ERR_PREFIX: (DecodeError, "remainder prefix longer than 31 bins", "10.1"),
    ERR_DQ_RANGE: (DecodeError, "dependent-quantisation reconstruction integer does not fit in int32", "10.2"),
    ERR_FORCED_RANGE: (DecodeError, "the code point lies outside the range forced at a block-row start", "11.3"),
    ERR_CODEBOOK_RANGE: (DecodeError, "decoded codebook index offset outside the codebook", "10.4"),
    ERR_SEEK_NEGATIVE: (DecodeError, "entry point at a negative position", "9.7"),
    ERR_SEEK_PAST_END: (TruncatedError, "entry point needs bytes beyond the payload", "9.7"),
    ERR_ENTRY_POINT: (DecodeError, "a block row ends where its successor's entry point does not start", "11.4"),
}


cdef int _check_tensor_args(int64_t height, int64_t width, int n_gtx, int scan_order, error) except -1:
    if height < 0 or width < 0:  # api-check
        raise error(f"negative tensor dimensions {height}x{width}", clause="11.1")
    if width > 0 and height > MAX_ELEMENTS // width:  # api-check
        raise error(f"tensor dimensions {height}x{width}: more than 2**62 elements", clause="11.1")
    if not 1 <= n_gtx <= 256:  # api-check
        raise error(f"number of greater-than flags {n_gtx} outside 1..256", clause="7.4")
    if not 0 <= scan_order <= 4:
        raise error(f"scan_order {scan_order} outside 0..4", clause="7.4")
    return 0


def _as_array(a, dtype, int64_t size, name, error):
    if a is None:
        return None
    arr = np.ascontiguousarray(a).reshape(-1)
    if arr.size != size:  # api-check
        raise error(f"{name} has {arr.size} elements, the tensor has {size}", clause="10.5")
    if arr.dtype != dtype:  # api-check
        if not np.issubdtype(arr.dtype, np.integer):
            raise error(f"{name} must be an integer array, not {arr.dtype}", clause="10.5")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise error(f"{name} has values outside {np.dtype(dtype).name}", clause="10.5")
        arr = arr.astype(dtype)
    return arr


cdef class PayloadDecoder:
    """Decoder of one NDU CABAC payload (spec 8, 9)."""

    cdef ArithDecoder d
    cdef const uint8_t[::1] _view
    cdef readonly int edition
    cdef public object last_entry_points
    cdef public object last_init_sets
    cdef public bint last_row_skip
    cdef public bint last_hdsp
    cdef public object last_boundary
    cdef bint _finished

    def __init__(self, data, int edition):
        _check_edition(edition)
        if isinstance(data, np.ndarray):  # (as the Python engine takes it: its values as bytes)
            data = np.ascontiguousarray(data, dtype=np.uint8)
        elif isinstance(data, memoryview):
            if not data.c_contiguous:  # (a strided view: its bytes, copied, as the Python engine does)
                data = data.tobytes()
            elif data.format != "B":
                data = data.cast("B")
        self._view = data
        self.edition = edition
        self.last_entry_points = []
        self.last_init_sets = None
        self.last_row_skip = False
        self.last_hdsp = False
        self.last_boundary = None
        self._finished = False
        self.d.length = self._view.shape[0]
        self.d.buf = &self._view[0] if self.d.length > 0 else NULL
        self.d.err = ERR_NONE
        if self.d.length < 2:
            raise TruncatedError("a CABAC payload needs at least 2 bytes", clause="9.1",
                                 offset=self.d.length)
        # spec 9.1: R = 510, V = first two bytes, 8 bits still to read
        self.d.rng = 510
        self.d.val = (<uint32_t>self.d.buf[0] << 8) | self.d.buf[1]
        self.d.pos = 2
        self.d.bits_needed = -8
        if self.d.val >= (self.d.rng << 7):
            # never written by an encoder: the code point lies outside the initial interval
            raise DecodeError("first two payload bytes are outside the initial interval", clause="9.1",
                              offset=0)

    @property
    def bytes_consumed(self):
        return self.d.pos

    def fork(self):
        """An independent decoder of the same payload in this one's exact state (for parallel block rows)."""
        cdef PayloadDecoder other = PayloadDecoder.__new__(PayloadDecoder)
        other._view = self._view
        other.d = self.d
        other.edition = self.edition
        other.last_entry_points = []
        other.last_init_sets = None
        other.last_row_skip = self.last_row_skip
        other.last_hdsp = self.last_hdsp
        other.last_boundary = None
        other._finished = False
        return other

    @property
    def bit_position(self):
        return decoder_position(&self.d)

    cdef _raise(self, int code):
        cls, msg, clause = _DECODE_ERRORS[code]
        # a payload too short is reported at its end (spec 9.2, 9.7), as the Python engine does
        raise cls(msg, clause=clause, offset=self.d.length if cls is TruncatedError else self.d.pos)

    def read_bypass(self, int nbits):
        """nbits bypass bins, MSB first, as an unsigned integer (spec 2.8, 9.5)."""
        if not 0 <= nbits <= 64:  # api-check
            raise ValueError("nbits must be in 0..64")
        v = decode_bypass_bits(&self.d, nbits)
        if self.d.err:
            self._raise(self.d.err)
        return v

    def read_qp_offset(self, int nbits):
        """Signed nbits-bit bypass value: the per-tensor qp offset (spec 8.2)."""
        if not 1 <= nbits <= 32:  # api-check
            raise ValueError("nbits must be in 1..32")
        v = self.read_bypass(nbits)
        if v >= (1 << (nbits - 1)):
            v -= 1 << nbits
        return v

    def decode_tensor(self, int64_t height, int64_t width, *, int n_gtx, bint dq=False, int scan_order=0,
                      int64_t codebook_size=0, int64_t codebook_zero=0, bint parent_present=False,
                      tca_base=None, hdsp_history=None, entry_points=None, int64_t start_block_row=0,
                      bint record_entry_points=False, stop_block_row=None, out=None):
        """Decode one tensor: reconstruction integers n, flat, row-major (spec 8.1).

        ``stop_block_row`` (a block-row range, spec 11.4): only ``start_block_row`` is entered
        from its entry point, the rows after it follow sequentially up to ``stop_block_row`` - 1,
        and ``last_boundary`` records the state at the start of ``stop_block_row``.  ``out``:
        a writeable C-contiguous int32 array to decode into."""
        _check_tensor_args(height, width, n_gtx, scan_order, DecodeError)
        cdef int64_t size = height * width
        cdef Layout L = make_layout(self.edition, n_gtx)
        base_arr = _as_array(tca_base, np.int32, size, "tca_base", DecodeError) if self.edition == 2 else None
        hist_arr = _as_array(hdsp_history, np.int8, size, "hdsp_history", DecodeError) if self.edition == 2 else None
        cdef TensorShape t = make_shape(self.edition, height, width, scan_order, dq,
                                        codebook_size, codebook_zero, base_arr is not None, 0)
        if t.cb and not 0 <= codebook_zero < codebook_size:  # api-check
            raise DecodeError(f"codebook zero offset {codebook_zero} outside the codebook of "
                              f"{codebook_size} entries", clause="7.2")
        if t.cb and dq:  # api-check
            raise DecodeError("a codebook cannot be combined with dependent quantisation", clause="10.4")
        if self.edition == 2 and codebook_size < 0:  # api-check
            raise DecodeError(f"negative codebook size {codebook_size}", clause="10.4")
        ctx_buf = np.empty(L.n_ctx * sizeof(Ctx), dtype=np.uint8)  # the contexts, freed with the array
        cdef Ctx* ctx = <Ctx*>cnp.PyArray_DATA(<cnp.ndarray>ctx_buf)
        cdef int i
        cdef int a
        cdef int flag
        cdef int64_t r
        cdef int64_t t0
        cdef int code
        if out is None:
            out = np.zeros(size, dtype=np.int32)
        elif not (isinstance(out, np.ndarray) and out.dtype == np.int32 and out.size == size  # api-check
                  and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous int32 array of {size} elements")
        cdef cnp.ndarray skipped = None
        cdef int32_t[::1] base_v
        cdef int8_t[::1] hist_v
        cdef uint8_t[::1] skip_v
        cdef const int32_t* base_p = NULL
        cdef const int8_t* hist_p = NULL
        cdef const uint8_t* skip_p = NULL
        cdef int32_t* out_p = <int32_t*>cnp.PyArray_DATA(<cnp.ndarray>out)
        cdef int64_t bnd[4]
        cdef int64_t stop_row = t.n_block_rows
        cdef bint ranged = stop_block_row is not None and t.scan_order > 0
        cdef int64_t n_ep = t.n_block_rows - 1
        cdef cnp.ndarray ep_arr = np.zeros((3, n_ep if n_ep > 0 else 1), dtype=np.int64)
        cdef cnp.ndarray rec_arr = np.zeros((3, n_ep if n_ep > 0 else 1), dtype=np.int64)
        cdef int64_t[:, ::1] ep_v = ep_arr
        cdef int64_t[:, ::1] rec_v = rec_arr
        cdef bint use_ep = False
        if ranged:
            stop_row = stop_block_row
            if not 0 <= start_block_row < stop_row <= t.n_block_rows:  # api-check
                raise ValueError(f"block rows {start_block_row}..{stop_row} outside 0..{t.n_block_rows}")
            if start_block_row > 0 and entry_points is None:  # api-check
                raise ValueError("start_block_row > 0 needs entry points")
        self.last_boundary = None
        contexts_init(ctx, L.n_ctx, 0)
        self.last_row_skip = False
        self.last_hdsp = False
        # edition 2 row-level flags (spec 8.3)
        if has_row_flags(&L, &t):
            if parent_present:
                self.last_hdsp = decode_bypass(&self.d) == 1
            self.last_row_skip = decode_bypass(&self.d) == 1
            if self.last_row_skip:
                skipped = np.zeros(height, dtype=np.uint8)
                skip_v = skipped
                for r in range(height):
                    skip_v[r] = decode_bin(&self.d, &ctx[L.row_skip])
                skip_p = &skip_v[0]
        t.hdsp = self.last_hdsp
        # context-initialisation signalling (spec 8.4)
        for a in init_signalled_contexts(&L, &t):
            flag = decode_bin(&self.d, &ctx[L.init_flag])
            ctx_init(&ctx[a], 1 + <int>decode_bypass_bits(&self.d, 3) if flag else 0)
        if self.d.err:
            self._raise(self.d.err)
        self.last_init_sets = np.array([ctx[i].init_set for i in range(L.n_ctx)], dtype=np.uint8)
        t0 = decoder_position(&self.d)
        if first_range_forced(&L, &t):
            self.d.rng = 256
            if self.d.val >= (256 << 7):
                self._raise(ERR_FORCED_RANGE)
        if entry_points is not None and t.scan_order > 0:
            if len(entry_points) != n_ep:  # api-check
                raise DecodeError(f"{len(entry_points)} entry points given, the tensor has "
                                  f"{n_ep + 1} block rows", clause="11.4", offset=self.d.pos)
            if not 0 <= start_block_row < t.n_block_rows:  # api-check
                raise ValueError(f"start_block_row {start_block_row} outside 0..{t.n_block_rows - 1}")
            pos = t0
            for r, (value, state, inc) in enumerate(entry_points):
                pos += inc
                if not 0 <= value <= 255:  # api-check
                    raise DecodeError(f"entry point value {value} outside 0..255", clause="9.7")
                if t.dq and not 0 <= state <= 7:  # api-check
                    raise DecodeError(f"entry point DQ state {state} outside 0..7", clause="11.4")
                # a position outside the payload is stored as one that fails the seek alike (spec 9.7): in int64
                ep_v[0, r] = -1 if pos < 0 else min(pos, 8 * self.d.length + 8)
                ep_v[1, r] = value
                ep_v[2, r] = state
            use_ep = True
        if base_arr is not None:
            base_v = base_arr
            base_p = &base_v[0] if size > 0 else NULL
        if hist_arr is not None and t.hdsp:
            hist_v = hist_arr
            hist_p = &hist_v[0] if size > 0 else NULL
        with nogil:
            code = decode_tensor_data(&self.d, ctx, &L, &t, out_p, base_p, hist_p, skip_p,
                                      &ep_v[0, 0], &ep_v[1, 0], &ep_v[2, 0], n_ep, use_ep,
                                      start_block_row,
                                      &rec_v[0, 0] if record_entry_points else NULL,
                                      &rec_v[1, 0], &rec_v[2, 0], stop_row, bnd if ranged else NULL)
        raise_if_stopped()  # (before the error code: a stopped loop leaves the payload part read)
        if code:
            self._raise(code)
        if ranged and stop_row < t.n_block_rows:
            self.last_boundary = (int(bnd[0] - t0), int(bnd[1]), int(bnd[2]) if t.dq else 0, bool(bnd[3]))
        if record_entry_points:
            eps = []
            prev_t = t0
            for r in range(n_ep):
                eps.append((int(rec_v[1, r]), int(rec_v[2, r]) if t.dq else 0, int(rec_v[0, r] - prev_t)))
                prev_t = rec_v[0, r]
            self.last_entry_points = eps
        return out

    def finish(self):
        """Terminate bin, stop pattern, and all bytes consumed (spec 8.5, 9.6)."""
        cdef uint32_t last
        if not decode_terminate(&self.d):
            raise DecodeError("terminate bin is 0 at the end of the payload", clause="9.6",
                              offset=self.d.pos)
        last = self.d.buf[self.d.pos - 1]
        if ((last << (8 + self.d.bits_needed)) & 0xFF) != 0x80:
            raise DecodeError("stop pattern '1000...' missing after the terminate bin", clause="9.6",
                              offset=self.d.pos - 1)
        if self.d.pos != self.d.length:
            raise DecodeError(f"{self.d.length - self.d.pos} bytes left after the end of the CABAC payload",
                              clause="8.5", offset=self.d.pos)
        self._finished = True


cdef class _TensorPlan:
    """One tensor made ready for coding by PayloadEncoder._plan (arrays kept alive here)."""
    cdef Layout L
    cdef TensorShape t
    cdef int64_t size
    cdef bint flags, do_hdsp, do_skip
    cdef object k_arr, base_arr, hist_arr, skipped
    cdef const int32_t* k_p
    cdef const int32_t* base_p
    cdef const int8_t* hist_p
    cdef const uint8_t* skip_p
    cdef list ranges
    cdef list signalled

    def __cinit__(self):
        self.k_p = NULL
        self.base_p = NULL
        self.hist_p = NULL
        self.skip_p = NULL


cdef class PayloadEncoder:
    """Encoder of one NDU CABAC payload (spec 9.8, Annex A)."""

    cdef ArithEncoder e
    cdef readonly int edition
    cdef bint _finished

    def __cinit__(self, *args, **kwargs):
        self.e.out = NULL

    def __init__(self, int edition):
        _check_edition(edition)
        self.edition = edition
        self._finished = False
        if not enc_init(&self.e):
            raise MemoryError()

    def __dealloc__(self):
        if self.e.out != NULL:
            free(self.e.out)
            self.e.out = NULL

    cdef _check_open(self):
        if self._finished:
            raise EncodeError("the payload is already finished")

    def write_bypass(self, value, int nbits):
        """nbits bypass bins, MSB first (spec 2.8)."""
        self._check_open()
        if not 0 <= nbits <= 64 or not 0 <= value < (1 << nbits):
            raise EncodeError(f"value {value} does not fit in {nbits} bypass bins")
        enc_bypass_bits(&self.e, <uint64_t>value, nbits)

    def write_qp_offset(self, value, int nbits):
        """Signed nbits-bit qp offset (spec 8.2)."""
        if not 1 <= nbits <= 32:
            raise ValueError("nbits must be in 1..32")
        lo, hi = -(1 << (nbits - 1)), (1 << (nbits - 1)) - 1
        if not lo <= value <= hi:
            raise EncodeError(f"qp offset {value} outside {lo}..{hi} ({nbits} bits)", clause="8.2")
        self.write_bypass(value & ((1 << nbits) - 1), nbits)

    cdef _TensorPlan _plan(self, levels, int64_t height, int64_t width, int n_gtx, bint dq, int scan_order,
                           int64_t codebook_size, int64_t codebook_zero, bint parent_present, tca_base,
                           hdsp_history, bint hdsp, bint row_skip, int threads):
        """Checks a tensor's arguments and prepares its coding: the coded integers k, the row
        flags, the TCA/HDSP arrays and, for threads, the block-row ranges (spec 8.3, 10.2, A.5)."""
        _check_tensor_args(height, width, n_gtx, scan_order, EncodeError)
        cdef _TensorPlan plan = _TensorPlan()
        cdef int64_t size = height * width
        plan.size = size
        n_arr = _as_array(levels, np.int32, size, "levels", EncodeError)
        if n_arr is None:
            raise EncodeError("levels missing")
        plan.L = make_layout(self.edition, n_gtx)
        base_arr = _as_array(tca_base, np.int32, size, "tca_base", EncodeError) if self.edition == 2 else None
        hist_arr = _as_array(hdsp_history, np.int8, size, "hdsp_history", EncodeError) if self.edition == 2 else None
        plan.t = make_shape(self.edition, height, width, scan_order, dq, codebook_size, codebook_zero,
                            base_arr is not None, 0)
        if plan.t.cb:
            if dq:
                raise EncodeError("a codebook cannot be combined with dependent quantisation", clause="12.4")
            if not 0 <= codebook_zero < codebook_size:
                raise EncodeError(f"codebook zero offset {codebook_zero} outside 0..{codebook_size - 1}",
                                  clause="7.2")
            if size and (n_arr.min() < -codebook_zero or n_arr.max() > codebook_size - 1 - codebook_zero):
                raise EncodeError("levels outside the codebook index range", clause="10.4")
        plan.flags = has_row_flags(&plan.L, &plan.t)
        plan.do_hdsp = plan.flags and parent_present and hdsp
        plan.do_skip = plan.flags and row_skip
        plan.t.hdsp = plan.do_hdsp
        if plan.do_skip:
            plan.skipped = np.ascontiguousarray(~np.any(n_arr.reshape(height, width) != 0, axis=1), dtype=np.uint8)
            if height > 0:
                plan.skip_p = <const uint8_t*>cnp.PyArray_DATA(plan.skipped)
        # n -> k along the scan (spec 10.2)
        cdef const int32_t[::1] n_v = n_arr
        cdef int32_t[::1] k_v
        cdef int64_t bad = -1
        cdef int rc = 0
        # block-row ranges for threads, with the DQ state at each range's start (spec A.5)
        cdef bint split = threads > 1 and plan.t.scan_order > 0 and plan.t.n_block_rows > 1 and size > 0
        cdef cnp.ndarray br_states = np.zeros(plan.t.n_block_rows if split else 1, dtype=np.int32)
        cdef int32_t* br_states_p = <int32_t*>cnp.PyArray_DATA(br_states) if split else NULL
        if dq:
            plan.k_arr = np.zeros(size, dtype=np.int32)
            k_v = plan.k_arr
            if size:
                with nogil:
                    rc = levels_to_coded(&plan.t, &n_v[0], &k_v[0], plan.skip_p, &bad, br_states_p)
                raise_if_stopped()
            if rc:
                raise EncodeError(f"level {int(n_arr[bad])} at flat index {bad} is not a reconstruction "
                                  f"level of the dependent quantiser state reached there", clause="10.2")
        else:
            plan.k_arr = n_arr
        if size:
            plan.k_p = <const int32_t*>cnp.PyArray_DATA(plan.k_arr)
        if base_arr is not None and size:
            plan.base_arr = base_arr
            plan.base_p = <const int32_t*>cnp.PyArray_DATA(base_arr)
        if hist_arr is not None and plan.do_hdsp and size:
            plan.hist_arr = hist_arr
            plan.hist_p = <const int8_t*>cnp.PyArray_DATA(hist_arr)
        plan.ranges = []
        if split:
            parts = min(threads, plan.t.n_block_rows)
            bounds = [plan.t.n_block_rows * i // parts for i in range(parts + 1)]
            plan.ranges = [(bounds[i], bounds[i + 1], int(br_states[bounds[i]])) for i in range(parts)]
        plan.signalled = init_signalled_contexts(&plan.L, &plan.t)
        return plan

    def choose_init_sets(self, levels, int64_t height, int64_t width, *, int n_gtx, bint dq=False,
                         int scan_order=0, int64_t codebook_size=0, int64_t codebook_zero=0,
                         bint parent_present=False, tca_base=None, hdsp_history=None, bint hdsp=False,
                         bint row_skip=False, int threads=1):
        """The init sets ``encode_tensor`` with ``param_opt`` chooses for this tensor (spec A.3),
        and the estimated bits of its data bins with them (spec A.4); writes nothing.

        Returns (uint8 array of one set per context, estimated bits)."""
        cdef _TensorPlan plan = self._plan(levels, height, width, n_gtx, dq, scan_order, codebook_size,
                                           codebook_zero, parent_present, tca_base, hdsp_history, hdsp,
                                           row_skip, threads)
        cdef uint64_t est = 0
        sets = self._choose_init_sets(plan, None, True, &est)
        return np.array(sets, dtype=np.uint8), est / 32768.0

    def encode_tensor(self, levels, int64_t height, int64_t width, *, int n_gtx, bint dq=False,
                      int scan_order=0, bint param_opt=True, init_sets=None, int64_t codebook_size=0,
                      int64_t codebook_zero=0, bint parent_present=False, tca_base=None, hdsp_history=None,
                      bint hdsp=False, bint row_skip=False, int threads=1):
        """Encode one tensor given its reconstruction integers n (spec 8.1, Annex A).

        ``threads`` > 1: the block rows of a block scan are estimated and coded in up to
        that many threads, each range on its own and joined exactly (the same bytes, spec A.5)."""
        self._check_open()
        cdef _TensorPlan plan = self._plan(levels, height, width, n_gtx, dq, scan_order, codebook_size,
                                           codebook_zero, parent_present, tca_base, hdsp_history, hdsp,
                                           row_skip, threads)
        cdef uint64_t est = 0
        sets = self._choose_init_sets(plan, init_sets, param_opt, &est)
        cdef Layout L = plan.L
        cdef TensorShape t = plan.t
        cdef Ctx* ctx = <Ctx*>malloc(L.n_ctx * sizeof(Ctx))
        if ctx == NULL:
            raise MemoryError()
        cdef BinSink s
        cdef int a
        cdef int64_t r
        try:
            contexts_init(ctx, L.n_ctx, 0)
            s.mode = MODE_ENCODE
            s.enc = &self.e
            s.ctx = ctx
            s.n_ctx = L.n_ctx
            if plan.flags:
                if parent_present:
                    enc_bypass(&self.e, plan.do_hdsp)
                enc_bypass(&self.e, plan.do_skip)
                if plan.do_skip:
                    for r in range(height):
                        enc_bin(&self.e, &ctx[L.row_skip], plan.skip_p[r])
            for a in plan.signalled:
                if sets[a]:
                    enc_bin(&self.e, &ctx[L.init_flag], 1)
                    enc_bypass_bits(&self.e, sets[a] - 1, 3)
                else:
                    enc_bin(&self.e, &ctx[L.init_flag], 0)
                ctx_init(&ctx[a], sets[a])
            if first_range_forced(&L, &t):
                self.e.rng = 256
            if plan.ranges:
                self._encode_ranges(&s, &L, &t, plan.k_p, plan.base_p, plan.hist_p, plan.skip_p, plan.ranges, sets)
            elif plan.size:
                with nogil:
                    encode_tensor_data(&s, &L, &t, plan.k_p, plan.base_p, plan.hist_p, plan.skip_p)
                raise_if_stopped()
            if self.e.err:
                raise MemoryError()
        except BaseException:
            self._finished = True  # a tensor written in part: the payload cannot be finished
            raise
        finally:
            free(ctx)

    cdef _encode_ranges(self, BinSink* s, Layout* L, TensorShape* t, const int32_t* k, const int32_t* base_p,
                        const int8_t* hist_p, const uint8_t* skip_p, list ranges, list sets):
        """Range 0 coded here, the others on their own in threads, then appended (spec 11.3, A.5, 9.8)."""
        from nnc._threads import worker_pool

        cdef _RowRange rr
        cdef int64_t b0 = ranges[0][1]
        segments = [_row_range(MODE_ENCODE, L, t, k, base_p, hist_p, skip_p, a, b, st, sets)
                    for a, b, st in ranges[1:]]
        with worker_pool(len(segments), "nnc-rows") as pool:
            futures = [pool.submit(seg.run) for seg in segments]
            with nogil:
                encode_block_rows(s, L, t, k, base_p, hist_p, skip_p, 0, b0, 0)
            raise_if_stopped()
            for f in futures:
                f.result()
        for rr in segments:
            self.e.rng = 256                  # the block-row boundary of spec 11.3
            enc_append_code(&self.e, rr.e.out, rr.shifts, rr.e.rng)
            self.e.bins += rr.e.bins

    cdef list _choose_init_sets(self, _TensorPlan plan, init_sets, bint param_opt, uint64_t* estimate):
        """Init set per context: given, optimised by estimated bits, or all 0 (spec A.3).
        When optimised, ``estimate`` receives the estimated bits (in 1/32768 bit) of the
        data bins under the chosen sets (spec A.4: contexts, then bypass bins).

        With block-row ``ranges`` the ranges' costs are estimated in threads and added (spec A.5)."""
        cdef Layout L = plan.L
        cdef TensorShape t = plan.t
        cdef list sets = [0] * L.n_ctx
        cdef int a, k, best
        cdef uint64_t best_cost, cost
        cdef BinSink s
        if init_sets is not None:
            given = np.asarray(init_sets).reshape(-1)
            if given.size != L.n_ctx:
                raise EncodeError(f"init_sets has {given.size} entries, the layout has {L.n_ctx} contexts")
            allowed = set(plan.signalled)
            for a in range(L.n_ctx):
                v = int(given[a])
                if not 0 <= v < N_SETS or (v and a not in allowed):
                    raise EncodeError(f"init set {v} for context {a} cannot be signalled", clause="8.4")
                sets[a] = v
            return sets
        if not param_opt or plan.size == 0 or not plan.signalled:
            return sets
        cdef nnc_pricer* pricers = <nnc_pricer*>malloc(L.n_ctx * sizeof(nnc_pricer))
        try:
            if pricers == NULL:
                raise MemoryError()
            start_optimiser(&s, pricers, L.n_ctx)
            if plan.ranges:
                # contexts restart at every block row, so the ranges' costs add up
                parts = [_row_range(MODE_OPTIMISE, &L, &t, plan.k_p, plan.base_p, plan.hist_p, plan.skip_p,
                                    a, b, st, None)
                         for a, b, st in plan.ranges]
                _run_in_threads(parts)
                for part in parts:
                    _add_costs(pricers, <_RowRange>part, L.n_ctx)
                    s.est_bits += (<_RowRange>part).s.est_bits
            else:
                with nogil:
                    encode_tensor_data(&s, &L, &t, plan.k_p, plan.base_p, plan.hist_p, plan.skip_p)
                raise_if_stopped()
            for a in plan.signalled:
                best = 0
                best_cost = pricers[a].cost[0]
                for k in range(1, N_SETS):
                    cost = pricers[a].cost[k] + PENALTY
                    if cost < best_cost:
                        best = k
                        best_cost = cost
                sets[a] = best
            estimate[0] = s.est_bits            # the bypass bins
            for a in range(L.n_ctx):
                estimate[0] += pricers[a].cost[sets[a]]
            return sets
        finally:
            free(pricers)

    def finish(self):
        """Terminate the payload and return its bytes (spec 9.8)."""
        self._check_open()
        enc_terminate_and_flush(&self.e)
        if self.e.err:
            raise MemoryError()
        self._finished = True
        return bytes(<uint8_t[:self.e.out_len]>self.e.out) if self.e.out_len else b""


def bin_cost(int state_c, int bin):
    """Estimated bits of a context-coded bin under combined state C (spec A.4)."""
    cdef Ctx m
    m.c = state_c
    return est_bin(&m, bin) / 32768.0


def estimate_tensor_bits(levels, int64_t height, int64_t width, *, int n_gtx, bint dq=False,
                         int scan_order=0, int edition=2, int64_t codebook_size=0, int64_t codebook_zero=0,
                         init_sets=None):
    """Estimated bits of a tensor's data bins, contexts adapting along (spec A.4).

    Excludes the qp offset, the row flags and the init signalling.
    """
    _check_edition(edition)
    _check_tensor_args(height, width, n_gtx, scan_order, EncodeError)
    cdef int64_t size = height * width
    n_arr = _as_array(levels, np.int32, size, "levels", EncodeError)
    cdef Layout L = make_layout(edition, n_gtx)
    cdef TensorShape t = make_shape(edition, height, width, scan_order, dq, codebook_size, codebook_zero, 0, 0)
    cdef int32_t[::1] n_v = n_arr
    cdef cnp.ndarray k_arr = np.zeros(size, dtype=np.int32)
    cdef int32_t[::1] k_v = k_arr
    cdef int64_t bad = -1
    cdef int i
    if size == 0:
        return 0.0
    if dq:
        if levels_to_coded(&t, &n_v[0], &k_v[0], NULL, &bad, NULL):
            raise EncodeError(f"level at flat index {bad} is not representable", clause="10.2")
    else:
        k_v = n_v
    cdef Ctx* ctx = <Ctx*>malloc(L.n_ctx * sizeof(Ctx))
    if ctx == NULL:
        raise MemoryError()
    cdef BinSink s
    try:
        sets = np.zeros(L.n_ctx, dtype=np.int64) if init_sets is None else np.asarray(init_sets).reshape(-1)
        for i in range(L.n_ctx):
            ctx_init(&ctx[i], int(sets[i]))
        start_estimator(&s, ctx, L.n_ctx)
        with nogil:
            encode_tensor_data(&s, &L, &t, &k_v[0], NULL, NULL, NULL)
        raise_if_stopped()
        return s.est_bits / 32768.0
    finally:
        free(ctx)


def compute_entry_points(payload, int edition, tensors):
    """Entry points of every tensor of a payload, by a sequential decode (spec 11.4, A.5).

    ``tensors``: per-tensor dicts of decode_tensor keyword arguments plus
    ``height``, ``width`` and ``qp_bits`` (0 when the tensor has no qp offset).
    """
    dec = PayloadDecoder(payload, edition)
    result = []
    for spec in tensors:
        spec = dict(spec)
        qp_bits = spec.pop("qp_bits", 0)
        height = spec.pop("height")
        width = spec.pop("width")
        if qp_bits:
            dec.read_qp_offset(qp_bits)
        dec.decode_tensor(height, width, record_entry_points=True, **spec)
        result.append(list(dec.last_entry_points))
    dec.finish()
    return result


# --------------------------------------------------------------------------
# Rate-distortion quantisation (informative, spec Annex A.9): for each weight,
# in scan order, the index k minimising F (x - k)^2 + lambda * bits(k), where
# bits(k) is the estimated code length under the current adaptive contexts.
# --------------------------------------------------------------------------
cdef inline uint64_t value_cost(Ctx* ctx, Layout* L, int64_t k, int state, int64_t prev) noexcept nogil:
    """Estimated cost (1/32768 bit) of coding k in DQ state `state` (0 without DQ), contexts unchanged (spec A.4).

    The bins of encode_value for a tensor without codebook, TCA or HDSP, with the same
    context selection; kept apart from encode_value because the quantisers price up to 24
    candidates per weight and need it lean (the differential tests against the Python
    engine, which prices with its one binarisation, check it).
    """
    cdef int c = neighbour_class(prev)
    cdef int neg = k < 0
    cdef int64_t absk = -k if neg else k
    cdef int64_t run = 1
    cdef int64_t r
    cdef int j = 0
    cdef int m = 0
    cdef uint64_t cost = est_bin(&ctx[sig_context(L, state, c, 0, 0)], k != 0)
    if k == 0:
        return cost
    cost += est_bin(&ctx[sign_context(L, c, 0)], neg)
    while j < L.n_gtx:
        cost += est_bin(&ctx[gtx_context(L, j, neg, 0)], absk > run)
        if absk <= run:
            return cost
        run += 1
        j += 1
    r = absk - run
    while m < L.n_rem:
        if r >= (<int64_t>1 << m):
            cost += est_bin(&ctx[L.rem + m], 1)
            r -= <int64_t>1 << m
            m += 1
        else:
            cost += est_bin(&ctx[L.rem + m], 0)
            break
    return cost + <uint64_t>m * EST_BYPASS


cdef inline void dq_candidates(double x, int state, int64_t* out) noexcept nogil:
    """0 and the two levels of the state's quantiser that bracket x (as in A.2)."""
    cdef int64_t a
    if state & 1:
        a = 2 * <int64_t>floor((x - 1.0) / 2.0) + 1
    else:
        a = 2 * <int64_t>floor(x / 2.0)
    out[0] = 0
    out[1] = a
    out[2] = a + 2


cdef int64_t _check_quantiser_args(int64_t elements, int64_t height, int64_t width, int n_gtx, int scan_order,
                                   int edition) except -1:
    """The argument checks both quantisers share (``elements``: x's); returns the tensor's size."""
    _check_edition(edition)
    _check_tensor_args(height, width, n_gtx, scan_order, EncodeError)
    cdef int64_t size = height * width
    if elements != size:
        raise EncodeError(f"x has {elements} elements, the tensor has {size}")
    return size


def _importance_array(importance, int64_t size):
    """F per element (spec A.9) as a float64 array, or None for all 1."""
    if importance is None:
        return None
    f_arr = np.ascontiguousarray(importance, dtype=np.float64).reshape(-1)
    if f_arr.size != size or not np.all(f_arr >= 0):
        raise EncodeError("importance needs one non-negative value per element")
    return f_arr


cdef void rdoq_scan(const double* x, const double* f, int32_t* o, Ctx* ctx, Layout* Lsrc, TensorShape* tsrc,
                    double scale) noexcept nogil:
    """RDOQ along the scan (spec A.9): the level of each element, then the contexts adapt to it.

    Runs on local copies of the layout and the shape (see decode_tensor_data)."""
    cdef Layout Ll = Lsrc[0]
    cdef TensorShape tl = tsrc[0]
    cdef Layout* L = &Ll
    cdef TensorShape* t = &tl
    cdef BinSink s
    cdef ScanWalk w
    cdef int64_t i, cand, best_k, lo
    cdef int q
    cdef int64_t prev = 0
    cdef double ax, d, cost, best_cost, fi
    cdef int64_t cands[3]
    start_estimator(&s, ctx, L.n_ctx)
    walk_start(&w, t, 0)
    while walk_next(&w):
        if enters_block_row(&w):
            contexts_reset(ctx, L.n_ctx)
            prev = 0
        for i in range(w.first, w.end):
            ax = x[i] if x[i] >= 0 else -x[i]
            fi = f[i] if f != NULL else 1.0
            lo = <int64_t>ax
            cands[0] = 0
            cands[1] = lo
            cands[2] = lo + 1
            best_k = 0
            best_cost = 1e308
            for q in range(3):
                cand = cands[q]
                if q > 0 and cand == 0:
                    continue
                if cand > INT32_MAX:
                    continue
                d = ax - <double>cand
                cost = fi * d * d
                if scale > 0:
                    cost += scale * <double>value_cost(ctx, L, -cand if x[i] < 0 else cand, 0, prev)
                if cost < best_cost or (cost == best_cost and cand > best_k):
                    best_cost = cost
                    best_k = cand
            if x[i] < 0:
                best_k = -best_k
            o[i] = <int32_t>best_k
            encode_value(&s, L, t, best_k, 0, prev, 0, 0)
            prev = best_k


def rdoq_levels(double[::1] x, int64_t height, int64_t width, *, double lam, int n_gtx=11, int scan_order=0,
                int edition=2, importance=None):
    """Rate-distortion quantisation of x = w / step (spec A.9), uniform reconstruction.

    For each element in scan order the level k in {0, floor(|x|), ceil(|x|)} (signed like x)
    minimises F (x - k)^2 + lam * bits(k); bits come from the context models, which then
    adapt to the chosen k as the encoder's will.  ``lam`` is in squared steps per bit, so its
    meaning does not depend on the step size; ``importance`` gives F per element (default 1).
    lam = 0 is nearest rounding (ties away from zero).
    """
    cdef int64_t size = _check_quantiser_args(x.shape[0], height, width, n_gtx, scan_order, edition)
    if lam < 0:
        raise EncodeError("lambda must be >= 0")
    f_arr = _importance_array(importance, size)
    cdef double[::1] f_v
    cdef const double* f_p = NULL
    if f_arr is not None and size:
        f_v = f_arr
        f_p = &f_v[0]
    out = np.zeros(size, dtype=np.int32)
    if size == 0:
        return out
    cdef int32_t[::1] o = out
    cdef Layout L = make_layout(edition, n_gtx)
    cdef TensorShape t = make_shape(edition, height, width, scan_order, 0, 0, 0, 0, 0)
    cdef Ctx* ctx = <Ctx*>malloc(L.n_ctx * sizeof(Ctx))
    if ctx == NULL:
        raise MemoryError()
    cdef int q
    cdef double scale = lam / 32768.0
    try:
        contexts_init(ctx, L.n_ctx, 0)
        with nogil:
            rdoq_scan(&x[0], f_p, &o[0], ctx, &L, &t, scale)
        raise_if_stopped()
        return out
    finally:
        free(ctx)


cdef int DQ_PRED[8][2][2]        # DQ_PRED[next][i] = (state, k parity) of its i-th predecessor edge, states ascending
for _i in range(8):
    _edges = sorted((_s, _p) for _s in range(8) for _p in range(2) if tables.NEXT_DQ_STATE[_s][_p] == _i)
    for _sh in range(2):
        DQ_PRED[_i][_sh][0], DQ_PRED[_i][_sh][1] = _edges[_sh]


cdef inline void dq_distortion_step(double x, double fi, double* cost, uint8_t* back) noexcept nogil:
    """One position of the distortion-only trellis (spec A.2): the costs of the 8 states
    after x, and each state's back pointer (predecessor * 4 + candidate).

    The same totals and choices as the rate-aware step with lambda = 0 (the first minimum
    in the order predecessor state, then candidate), worked out per edge without branches:
    a state's edge of k parity p carries those of its quantiser's candidates (0, a, a + 2;
    0 only once) whose k has parity p; the others cost infinity on that edge."""
    cdef int64_t cand[3]
    cdef double dist[2][2][3]          # [quantiser][k parity][candidate]
    cdef double edge_cost[8][2]
    cdef uint8_t edge_back[8][2]
    cdef double d, t0, t1, t2, best, ca, cb
    cdef int q, p, ci, s, nxt, bi
    for q in range(2):
        dq_candidates(x, q, cand)
        for ci in range(3):
            d = x - <double>cand[ci]
            d = fi * d * d
            p = <int>(dq_k_from_n(cand[ci], q) & 1)
            if ci > 0 and cand[ci] == 0:
                d = INFINITY
            dist[q][p][ci] = d
            dist[q][1 - p][ci] = INFINITY
    for s in range(8):
        q = s & 1
        for p in range(2):
            t0 = cost[s] + dist[q][p][0]
            t1 = cost[s] + dist[q][p][1]
            t2 = cost[s] + dist[q][p][2]
            best = t1 if t1 < t0 else t0
            bi = 1 if t1 < t0 else 0
            bi = 2 if t2 < best else bi
            best = t2 if t2 < best else best
            edge_cost[s][p] = best
            edge_back[s][p] = <uint8_t>(s * 4 + bi)
    for nxt in range(8):
        ca = edge_cost[DQ_PRED[nxt][0][0]][DQ_PRED[nxt][0][1]]
        cb = edge_cost[DQ_PRED[nxt][1][0]][DQ_PRED[nxt][1][1]]
        cost[nxt] = cb if cb < ca else ca
        back[nxt] = edge_back[DQ_PRED[nxt][1][0]][DQ_PRED[nxt][1][1]] if cb < ca else \
            edge_back[DQ_PRED[nxt][0][0]][DQ_PRED[nxt][0][1]]


# --------------------------------------------------------------------------
# Rate-aware dependent quantisation (informative, spec Annex A.14): the 8-state
# Viterbi search of A.2 with the cost F (x - n)^2 + lambda * bits(k).  The rates come
# from the adaptive contexts frozen at the start of each chunk of the scan; at a chunk's
# end the best path is fixed, the contexts adapt to its levels, and the next chunk starts
# from that path's state and neighbour.
# --------------------------------------------------------------------------
cdef void dq_rdoq_scan(const void* x, bint single, double step, const double* f, int32_t* o, Ctx* ctx, Ctx* frozen,
                       Layout* Lsrc, TensorShape* tsrc, double scale, int64_t clen, int64_t* pos, double* xs,
                       uint8_t* back) noexcept nogil:
    """The chunked DQ trellis along the scan (spec A.2, A.14) on x / step (x float32 when ``single``, else
    float64); ``pos``, ``xs`` (the chunk's x / step) and ``back`` hold one chunk.

    Runs on local copies of the layout and the shape (see decode_tensor_data)."""
    cdef Layout Ll = Lsrc[0]
    cdef TensorShape tl = tsrc[0]
    cdef Layout* L = &Ll
    cdef TensorShape* t = &tl
    cdef BinSink sink
    cdef ScanWalk w
    cdef double cost[8]
    cdef double new_cost[8]
    cdef int64_t prevk[2][8]
    cdef int64_t cand[3]
    cdef int64_t n, i, idx, k, n_val, prev_run = 0, seg_i = 0, seg_end = 0
    cdef int s, nxt, best_state, start_state = 0, j, cur, ci
    cdef bint row_start_pending = False, chunk_row_start
    cdef double d, total, fi
    start_estimator(&sink, ctx, L.n_ctx)
    walk_start(&w, t, 0)
    while True:
        # the next chunk of the scan; with rates, a block row starts a new chunk so
        # that its context reset applies
        n = 0
        chunk_row_start = False
        while n < clen:
            if seg_i == seg_end:
                if not walk_next(&w):
                    break
                seg_i = w.first
                seg_end = w.end
                row_start_pending = enters_block_row(&w)
            if row_start_pending:
                if n == 0:
                    chunk_row_start = True
                elif scale > 0:
                    break
                row_start_pending = False
            pos[n] = seg_i
            if single:
                xs[n] = <double>(<const float*>x)[seg_i] / step
            else:
                xs[n] = (<const double*>x)[seg_i] / step
            seg_i += 1
            n += 1
        if n == 0:
            return
        if chunk_row_start:
            contexts_reset(ctx, L.n_ctx)
            prev_run = 0
        memcpy(frozen, ctx, L.n_ctx * sizeof(Ctx))
        for s in range(8):
            cost[s] = INFINITY
            prevk[0][s] = prev_run
        cost[start_state] = 0.0
        cur = 0
        for i in range(n):
            idx = pos[i]
            fi = f[idx] if f != NULL else 1.0
            if scale == 0:
                dq_distortion_step(xs[i], fi, cost, &back[8 * i])
                continue
            for s in range(8):
                new_cost[s] = INFINITY
            for s in range(8):
                if cost[s] == INFINITY:
                    continue
                dq_candidates(xs[i], s, cand)
                for ci in range(3):
                    if ci > 0 and cand[ci] == 0:
                        continue
                    k = dq_k_from_n(cand[ci], s)
                    nxt = NEXT_STATE[s][k & 1]
                    d = xs[i] - <double>cand[ci]
                    total = cost[s] + fi * d * d
                    if scale > 0:
                        total += scale * <double>value_cost(frozen, L, k, s, prevk[cur][s])
                    if total < new_cost[nxt]:
                        new_cost[nxt] = total
                        back[8 * i + nxt] = <uint8_t>(s * 4 + ci)
                        prevk[1 - cur][nxt] = k
            for s in range(8):
                cost[s] = new_cost[s]
            cur = 1 - cur
        best_state = 0
        for s in range(1, 8):
            if cost[s] < cost[best_state]:
                best_state = s
        # trace back the chunk
        s = best_state
        i = n - 1
        while i >= 0:
            j = back[8 * i + s]
            ci = j & 3
            s = j >> 2
            dq_candidates(xs[i], s, cand)
            o[pos[i]] = <int32_t>cand[ci]
            i -= 1
        # adapt the contexts to the chosen levels, in scan order
        s = start_state
        for i in range(n):
            n_val = o[pos[i]]
            k = dq_k_from_n(n_val, s)
            if scale > 0:
                encode_value(&sink, L, t, k, s, prev_run, 0, 0)
            prev_run = k
            s = NEXT_STATE[s][k & 1]
        start_state = s


def dq_rdoq_levels(x, int64_t height, int64_t width, *, double lam, int n_gtx=11,
                   int scan_order=0, int edition=2, importance=None, int64_t chunk=1024, double step=1.0):
    """Rate-aware DQ trellis on x / step (x = w, or w already divided with step 1; spec A.14); returns
    reconstruction integers n.

    x is read as it is when float32 or float64 (each value divided by ``step`` in float64, as the
    trellis reaches it: no float64 copy of the tensor). lam = 0 is the distortion-only trellis
    of A.2; give chunk >= the tensor size for one global Viterbi search (the default chunking
    fixes the path every ``chunk`` elements). The working memory is 24 bytes per chunk
    element, whatever the tensor's size.
    """
    src = np.ascontiguousarray(x).reshape(-1)
    if src.dtype != np.float32 and src.dtype != np.float64:
        src = src.astype(np.float64)
    cdef int64_t size = _check_quantiser_args(src.shape[0], height, width, n_gtx, scan_order, edition)
    if lam < 0 or chunk < 1:
        raise EncodeError("lambda must be >= 0 and chunk >= 1")
    if not 0 < step < INFINITY:  # (NaN too)
        raise EncodeError(f"step must be a positive finite number, not {step}")
    cdef bint single = src.dtype == np.float32
    cdef const float[::1] x32
    cdef const double[::1] x64
    cdef const void* x_p = NULL
    f_arr = _importance_array(importance, size)
    cdef double[::1] f_v
    cdef const double* f_p = NULL
    if f_arr is not None and size:
        f_v = f_arr
        f_p = &f_v[0]
    cdef Layout L = make_layout(edition, n_gtx)
    cdef TensorShape t = make_shape(edition, height, width, scan_order, 1, 0, 0, 0, 0)
    out = np.zeros(size, dtype=np.int32)
    if size == 0:
        return out
    cdef int32_t[::1] o = out
    # memory bounded by the chunk: its scan positions, values and back pointers (24 bytes per element)
    cdef int64_t clen = chunk if chunk < size else size
    if single:
        x32 = src
        x_p = &x32[0]
    else:
        x64 = src
        x_p = &x64[0]
    pos_arr = np.zeros(clen, dtype=np.int64)
    cdef int64_t[::1] pos = pos_arr
    xs_arr = np.zeros(clen, dtype=np.float64)
    cdef double[::1] xs = xs_arr
    back_arr = np.zeros(clen * 8, dtype=np.uint8)
    cdef uint8_t[::1] back = back_arr
    cdef Ctx* ctx = <Ctx*>malloc(L.n_ctx * sizeof(Ctx))
    cdef Ctx* frozen = <Ctx*>malloc(L.n_ctx * sizeof(Ctx))
    if ctx == NULL or frozen == NULL:
        free(ctx)
        free(frozen)
        raise MemoryError()
    cdef int q
    cdef double scale = lam / 32768.0
    try:
        contexts_init(ctx, L.n_ctx, 0)
        with nogil:
            dq_rdoq_scan(x_p, single, step, f_p, &o[0], ctx, frozen, &L, &t, scale, clen, &pos[0], &xs[0], &back[0])
        raise_if_stopped()
        return out
    finally:
        free(ctx)
        free(frozen)


def dq_trellis(double[::1] x):
    """Distortion-only DQ trellis over a sequence (spec A.2): n minimising sum (x - n)^2."""
    cdef int64_t size = x.shape[0]
    return dq_rdoq_levels(x, 1, size, lam=0.0, chunk=size if size > 0 else 1)
