"""The payload of one NNR compressed data unit (spec 8): the per-tensor order of qp
offset, row flags, context-initialisation signalling and data; the decoder and the
encoder of a payload, and the encoder's rate estimate of a tensor.

Part of the pure-Python engine (:mod:`nnc.engine.python`): clause 8.1 the
per-tensor payload order, 8.2 the qp offset, 8.3 the row-skip / HDSP flags, 8.4 the
context-initialisation signalling, 8.5 the terminate bin.  Arithmetic coding comes
from :mod:`.arithmetic` (9), binarisation and contexts from :mod:`.binarisation`
(10), the scan from :mod:`.scan` (11).
"""

from __future__ import annotations

import copy

import numpy as np

from ...errors import DecodeError, EncodeError
from ...tables import NEXT_DQ_STATE
from ..matrix import INT32_MAX, MAX_ELEMENTS
from .arithmetic import (
    _COST,
    EST_UNIT,
    N_INIT_SETS,
    ArithmeticDecoder,
    ArithmeticEncoder,
    ContextModel,
    _fresh_contexts,
)
from .binarisation import CodebookBound, ContextLayout, binarise, check_edition, dq_coded_value, dq_reconstruct
from .scan import TensorScan, polled, zero_run_table

INT32_MIN = -INT32_MAX - 1

#: Estimated cost of signalling an init set other than 0 (8.4): 3 bypass bins.
INIT_SET_PENALTY = 3 * EST_UNIT

#: Marker events in the list of bins of a tensor (see PayloadEncoder).
_FORCE_RANGE = "force"  # force R = 256 before the first element (11.3)
_BLOCK_ROW = "block-row"  # block-row boundary: reset contexts, force R = 256 (11.3)


# ===========================================================================
# Per-tensor parameters
# ===========================================================================


def _int_array(a, dtype, size: int, name: str, error, clause: str):
    """``a`` as a flat list of Python ints checked against ``dtype`` and ``size``."""
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub":  # api-check
        raise error(f"{name} must be an integer array, not {arr.dtype}", clause=clause)
    arr = arr.reshape(-1)
    if arr.size != size:  # api-check
        raise error(f"{name} has {arr.size} elements, the tensor has {size}", clause=clause)
    info = np.iinfo(dtype)
    if arr.size and arr.dtype.kind != "b" and (int(arr.min()) < info.min or int(arr.max()) > info.max):  # api-check
        raise error(f"{name} has values outside {np.dtype(dtype).name}", clause=clause)
    return [int(x) for x in arr.tolist()]


class _Tensor:
    """The per-tensor coding parameters (engine-api.md), checked and derived."""

    def __init__(
        self,
        edition,
        height,
        width,
        *,
        n_gtx,
        dq,
        scan_order,
        codebook_size,
        codebook_zero,
        parent_present,
        tca_base,
        hdsp_history,
        error,
    ):
        height, width, n_gtx, scan_order = int(height), int(width), int(n_gtx), int(scan_order)
        if height < 0 or width < 0:  # api-check
            raise error(f"negative tensor dimensions {height}x{width}", clause="11.1")
        if height * width > MAX_ELEMENTS:  # api-check
            raise error(f"tensor dimensions {height}x{width}: more than 2**62 elements", clause="11.1")
        if not 1 <= n_gtx <= 256:  # api-check
            raise error(f"number of greater-than flags {n_gtx} outside 1..256", clause="7.4")
        if not 0 <= scan_order <= 4:
            raise error(f"scan_order {scan_order} outside 0..4", clause="7.4")
        self.edition = edition
        self.height, self.width, self.size = height, width, height * width
        self.n_gtx = n_gtx
        self.dq = bool(dq)
        self.layout = ContextLayout(edition, n_gtx)
        self.scan = TensorScan(height, width, scan_order, edition)
        self.bound = None
        self.base = None
        self.history = None
        self.parent_present = False
        if edition == 2:
            codebook_size, codebook_zero = int(codebook_size), int(codebook_zero)
            if codebook_size > 0:
                if not 0 <= codebook_zero < codebook_size:  # api-check
                    raise error(
                        f"codebook zero offset {codebook_zero} outside the codebook of {codebook_size} entries",
                        clause="7.2",
                    )
                if self.dq:  # api-check
                    raise error("a codebook cannot be combined with dependent quantisation", clause="10.4")
                self.bound = CodebookBound(codebook_size, codebook_zero)
            elif codebook_size < 0:  # api-check
                raise error(f"negative codebook size {codebook_size}", clause="10.4")
            self.parent_present = bool(parent_present)
            self.base = _int_array(tca_base, np.int32, self.size, "tca_base", error, "10.5")
            self.history = _int_array(hdsp_history, np.int8, self.size, "hdsp_history", error, "10.5")
        # 8.3: the row-skip / HDSP flags exist in edition 2 for real matrices,
        # unless the codebook has a single entry
        self.has_row_flags = (
            edition == 2 and width > 1 and self.size > width and not (self.bound is not None and self.bound.size == 1)
        )
        self.codes_nothing = self.bound is not None and self.bound.size == 1

    def signalled(self, hdsp: bool) -> list:
        return self.layout.signalled_contexts(self.dq, self.base is not None, hdsp, self.bound)

    def hdsp_active(self, hdsp: bool, pos: int) -> bool:
        return hdsp and self.history is not None and self.history[pos] == 1

    def base_at(self, pos: int) -> int:
        return 0 if self.base is None else self.base[pos]


# ===========================================================================
# The decoder
# ===========================================================================


class PayloadDecoder:
    """Decoder of one NDU CABAC payload (clause 8): qp offsets and tensors in coding order."""

    def __init__(self, data, edition: int):
        self.edition = check_edition(edition)
        if isinstance(data, np.ndarray):  # api-check
            data = data.astype(np.uint8, copy=False).tobytes()
        self._ad = ArithmeticDecoder(bytes(data))  # 9.1
        self.last_entry_points = []
        self.last_init_sets = None
        self.last_row_skip = False
        self.last_hdsp = False
        self.last_boundary = None

    @property
    def bytes_consumed(self) -> int:
        return self._ad.pos

    def fork(self) -> "PayloadDecoder":
        """An independent decoder of the same payload in this one's exact state (11.4)."""
        other = copy.copy(self)
        other._ad = copy.copy(self._ad)
        other.last_entry_points, other.last_init_sets, other.last_boundary = [], None, None
        return other

    @property
    def bit_position(self) -> int:
        """T of 11.4: 8 * bytes consumed - 8 + bitsNeeded."""
        return self._ad.position

    def read_bypass(self, nbits: int) -> int:
        """``nbits`` bypass bins, MSB first, unsigned (9.5)."""
        if not 0 <= nbits <= 64:  # api-check
            raise ValueError("nbits must be in 0..64")
        return self._ad.decode_bypass_bits(nbits)

    def read_qp_offset(self, nbits: int) -> int:
        """The per-tensor qp offset: ``nbits`` bypass bins, two's complement (8.2)."""
        if not 1 <= nbits <= 32:  # api-check
            raise ValueError("nbits must be in 1..32")
        v = self.read_bypass(nbits)
        return v - (1 << nbits) if v >= 1 << (nbits - 1) else v

    # -- 8.1 one tensor ---------------------------------------------------------
    def decode_tensor(
        self,
        height,
        width,
        *,
        n_gtx,
        dq=False,
        scan_order=0,
        codebook_size=0,
        codebook_zero=0,
        parent_present=False,
        tca_base=None,
        hdsp_history=None,
        entry_points=None,
        start_block_row=0,
        record_entry_points=False,
        stop_block_row=None,
        out=None,
    ):
        """Decode one tensor (8.1); returns the reconstruction integers n, flat, row-major.

        With ``stop_block_row`` (a block-row range, 11.4), only ``start_block_row``
        is entered from its entry point; the rows after it follow sequentially up to
        ``stop_block_row`` - 1, and at the start of ``stop_block_row`` (if it is a
        block row of the tensor) ``last_boundary`` records (T - T_0, V >> 7, DQ state,
        whether V's low 7 bits equal those an entry-point start fills in).
        ``out``: a writeable C-contiguous int32 array to decode into.
        """
        t = _Tensor(
            self.edition,
            height,
            width,
            n_gtx=n_gtx,
            dq=dq,
            scan_order=scan_order,
            codebook_size=codebook_size,
            codebook_zero=codebook_zero,
            parent_present=parent_present,
            tca_base=tca_base,
            hdsp_history=hdsp_history,
            error=DecodeError,
        )
        ad = self._ad
        scan = t.scan
        layout = t.layout
        use_eps = entry_points is not None and scan.n_block_rows > 1
        start_block_row = int(start_block_row)
        ranged = stop_block_row is not None and scan.order > 0
        stop_row = int(stop_block_row) if ranged else scan.n_block_rows
        if ranged and not 0 <= start_block_row < stop_row <= scan.n_block_rows:  # api-check
            raise ValueError(f"block rows {start_block_row}..{stop_row} outside 0..{scan.n_block_rows}")
        if start_block_row and not (use_eps and 0 <= start_block_row < scan.n_block_rows):  # api-check
            raise ValueError("start_block_row > 0 needs entry points and a block row of the tensor")
        if out is not None and not (  # api-check
            isinstance(out, np.ndarray)
            and out.dtype == np.int32
            and out.size == t.size
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            raise ValueError(f"out must be a writeable C-contiguous int32 array of {t.size} elements")
        self.last_boundary = None
        if use_eps:
            entry_points = [tuple(int(x) for x in e) for e in entry_points]
            if len(entry_points) != scan.n_block_rows - 1:  # api-check
                raise DecodeError(
                    f"{len(entry_points)} entry points for {scan.n_block_rows} block rows", clause="11.4", offset=ad.pos
                )

        # 8.1 step 2: fresh context set, neighbour 0
        ctx = _fresh_contexts(layout.count)
        # 8.3: HDSP flag and row skipping (edition 2)
        hdsp = row_skip = False
        skip = None
        if t.has_row_flags:
            if t.parent_present:
                hdsp = bool(ad.decode_bypass())
            row_skip = bool(ad.decode_bypass())
            if row_skip:
                skip = [ad.decode_bin(ctx[layout.row_skip]) for _ in range(t.height)]
        self.last_hdsp, self.last_row_skip = hdsp, row_skip
        # 8.4: context-initialisation signalling
        for a in t.signalled(hdsp):
            if ad.decode_bin(ctx[layout.init_flag]):
                ctx[a].initialise(1 + ad.decode_bypass_bits(3))
        self.last_init_sets = np.array([m.init_set for m in ctx], dtype=np.uint8)

        # 8.1 step 5: the data, in scan order (11)
        if out is None:
            out = np.zeros(t.size, dtype=np.int32)
        flat = out.reshape(-1)
        self.last_entry_points = entries = []
        if scan.force_at_start:
            ad.force_range()  # 11.3
        t0 = t_prev = ad.position  # T_0 (11.4)
        increments = [e[2] for e in entry_points] if use_eps else None
        zero_run = zero_run_table(t.width) if (t.dq and skip is not None) else None
        W = t.width
        state = 0
        # a range also enters the block row after it, to stop at its boundary
        for r in range(start_block_row, min(stop_row + 1, scan.n_block_rows)):
            prev = 0
            if r == stop_row:
                # end of a block-row range: record where the next range must start
                ad.force_range()
                self.last_boundary = (ad.position - t0, ad.value >> 7, state if t.dq else 0, ad.fill_in_bits_match())
                break
            if r > 0:
                # 11.3 block-row boundary: contexts reset, neighbour 0, R = 256;
                # or 9.7: jump to the block row's entry point
                entered = use_eps and r == start_block_row
                if not entered:
                    ad.force_range()
                reached = (ad.position, ad.value >> 7, state if t.dq else 0, ad.fill_in_bits_match())
                if use_eps:
                    value, ep_state = entry_points[r - 1][0], entry_points[r - 1][1]
                    ep_t = t0 + sum(increments[:r])
                    if entered or not ranged:
                        if t.dq and not 0 <= ep_state <= 7:  # api-check
                            raise DecodeError(
                                f"entry point DQ state {ep_state} outside 0..7", clause="11.4", offset=ad.pos
                            )
                        ad.start_at_entry_point(ep_t, value)
                        state = ep_state if t.dq else 0
                    if not entered and reached != (ep_t, value, ep_state if t.dq else 0, True):
                        # a block row reached sequentially starts where its entry point says (11.4)
                        raise DecodeError(
                            "a block row ends where its successor's entry point does not start",
                            clause="11.4",
                            offset=ad.pos,
                        )
                for m in ctx:
                    m.reset()
                if record_entry_points:
                    tr = ad.position
                    entries.append((ad.value >> 7, state, tr - t_prev))
                    t_prev = tr
            for row, c0, c1 in scan.segments(r):
                if skip is not None and skip[row]:
                    # 11.5: a skipped row piece codes nothing and leaves the
                    # neighbour alone; the DQ state advances W times with parity 0
                    if zero_run is not None:
                        state = zero_run[state]
                    continue
                for pos in range(row * W + c0, row * W + c1):
                    k = self._decode_value(ctx, t, state, prev, t.base_at(pos), t.hdsp_active(hdsp, pos))
                    if t.dq:
                        n = dq_reconstruct(k, state)  # 10.2
                        if not INT32_MIN <= n <= INT32_MAX:
                            raise DecodeError(
                                "dependent-quantisation reconstruction integer does not fit in int32",
                                clause="10.2",
                                offset=ad.pos,
                            )
                        state = NEXT_DQ_STATE[state][k & 1]
                        flat[pos] = n
                    else:
                        flat[pos] = k
                    prev = k
        return out

    def _decode_value(self, ctx, t: _Tensor, state: int, prev: int, base: int, hdsp_active: bool) -> int:
        """Decode one coded value k (10.1, with the bounds of 10.4 and contexts of 10.3/10.5)."""
        ad, layout, bound = self._ad, t.layout, t.bound
        if t.codes_nothing:
            return 0  # 10.4: S = 1
        if not ad.decode_bin(ctx[layout.sig(state, prev, base, hdsp_active)]):
            return 0
        if bound is None or bound.inferred_negative is None:
            negative = bool(ad.decode_bin(ctx[layout.sign(prev, base)]))
        else:
            negative = bound.inferred_negative
        max_abs = None if bound is None else bound.max_abs_for(negative)
        level, j = 1, 0
        while j < layout.n_gtx and (max_abs is None or level < max_abs):
            if not ad.decode_bin(ctx[layout.gtx(j, negative, base)]):
                return -level if negative else level
            level += 1
            j += 1
        if j == layout.n_gtx and (max_abs is None or level < max_abs):
            m = 0
            while not (layout.edition == 2 and m == 31):
                if max_abs is not None and max_abs < level + (1 << m):
                    break
                if not ad.decode_bin(ctx[layout.rem(m)]):
                    break
                level += 1 << m
                m += 1
                if m > 31:
                    raise DecodeError("remainder prefix longer than 31 bins", clause="10.1", offset=ad.pos)
            level += ad.decode_bypass_bits(m)
            # k must fit in int32: |k| <= 2^31 - 1 if positive, <= 2^31 if negative
            if level > (INT32_MAX + 1 if negative else INT32_MAX):
                raise DecodeError("decoded level magnitude does not fit in int32", clause="10.1", offset=ad.pos)
        k = -level if negative else level
        if bound is not None and not bound.contains(k):
            raise DecodeError(f"decoded codebook index offset {k} outside the codebook", clause="10.4", offset=ad.pos)
        return k

    def finish(self) -> None:
        """Terminate bin (must be 1), stop pattern, every byte consumed (8.5, 9.6)."""
        ad = self._ad
        if not ad.decode_terminate():
            raise DecodeError("terminate bin is 0 at the end of the payload", clause="9.6", offset=ad.pos)
        if not ad.stop_pattern_ok():
            raise DecodeError("stop pattern '1000...' missing after the terminate bin", clause="9.6", offset=ad.pos - 1)
        if ad.pos != len(ad.data):
            raise DecodeError(
                f"{len(ad.data) - ad.pos} bytes left after the end of the CABAC payload", clause="8.5", offset=ad.pos
            )


# ===========================================================================
# The encoder
# ===========================================================================


def _coded_values(t: _Tensor, levels: list, skip) -> list:
    """The coded values k of a tensor from its reconstruction integers n (10.2, 10.4, 11.5).

    Walks the scan to know the DQ state of every position; raises EncodeError
    when n is not representable.
    """
    scan, W = t.scan, t.width
    if not t.dq:
        # k = n; every int32 is codable (10.1)
        for pos, n in enumerate(levels):
            if t.bound is not None and not t.bound.contains(n):
                raise EncodeError(
                    f"level {n} at flat index {pos} outside the codebook range "
                    f"[{-t.bound.zero}, {t.bound.size - 1 - t.bound.zero}]",
                    clause="10.4",
                )
        return list(levels)
    k_values = [0] * t.size
    zero_run = zero_run_table(W) if skip is not None else None
    state = 0
    for r in range(scan.n_block_rows):
        for row, c0, c1 in scan.segments(r):
            if skip is not None and skip[row]:
                state = zero_run[state]
                continue
            for pos in range(row * W + c0, row * W + c1):
                n = levels[pos]
                k = dq_coded_value(n, state)
                if dq_reconstruct(k, state) != n:
                    raise EncodeError(
                        f"level {n} at flat index {pos} is not representable in dependent-quantisation state {state}",
                        clause="10.2",
                    )
                k_values[pos] = k
                state = NEXT_DQ_STATE[state][k & 1]
    return k_values


def _tensor_bins(t: _Tensor, k_values: list, skip, hdsp: bool) -> list:
    """All bins of a tensor's data in coding order (8.1 step 5, 10, 11).

    Items are (context index, bin), (None, bin) for a bypass bin, or one of
    the markers _FORCE_RANGE / _BLOCK_ROW.
    """
    scan, W, layout, bound = t.scan, t.width, t.layout, t.bound
    bins = []
    if scan.force_at_start:
        bins.append(_FORCE_RANGE)
    state = 0
    zero_run = zero_run_table(W) if (t.dq and skip is not None) else None
    for r in range(scan.n_block_rows):
        prev = 0
        if r > 0:
            bins.append(_BLOCK_ROW)
        for row, c0, c1 in scan.segments(r):
            if skip is not None and skip[row]:
                if zero_run is not None:
                    state = zero_run[state]
                continue
            for pos in range(row * W + c0, row * W + c1):
                k = k_values[pos]
                bins += binarise(
                    k,
                    layout,
                    state=state,
                    prev=prev,
                    base=t.base_at(pos),
                    hdsp_active=t.hdsp_active(hdsp, pos),
                    bound=bound,
                )
                if t.dq:
                    state = NEXT_DQ_STATE[state][k & 1]
                prev = k
    return bins


def _skipped_rows(t: _Tensor, levels: list) -> list:
    """Row-skip bins (8.3): 1 for every all-zero row."""
    W = t.width
    return [0 if any(levels[row * W : (row + 1) * W]) else 1 for row in range(t.height)]


def _estimate_costs(bins: list, n_ctx: int, init_sets) -> int:
    """Estimated cost (units of 2^-15 bit) of ``bins`` with contexts adapting along (8.4, 9.8)."""
    ctx = _fresh_contexts(n_ctx)
    for a, s in enumerate(init_sets):
        if s:
            ctx[a].initialise(int(s))
    total = 0
    for item in polled(bins):
        if item is _FORCE_RANGE:
            continue
        if item is _BLOCK_ROW:
            for m in ctx:
                m.reset()
            continue
        a, bin = item
        if a is None:
            total += EST_UNIT
        else:
            m = ctx[a]
            total += _COST[abs(m.c >> 7)][1 if bin == m.mps else 0]
            m.update(bin)
    return total


def _choose_init_sets(bins: list, n_ctx: int, signalled: list) -> list:
    """Init set of every context by estimated bits (8.4 "parameter optimisation", 9.8).

    Pseudo-codes the bins under all 9 init sets in parallel (resetting at
    block-row boundaries), and for every signalled context picks the set with
    the fewest estimated bits plus a penalty of 3 bits for every set != 0.
    Ties go to the lowest set index.
    """
    wanted = set(signalled)
    # the bins of each signalled context, with the block-row epoch they belong to
    per_ctx = {a: [] for a in wanted}
    epoch = 0
    for item in polled(bins):
        if item is _BLOCK_ROW:
            epoch += 1
        elif item is not _FORCE_RANGE and item[0] in wanted:
            per_ctx[item[0]].append((epoch, item[1]))
    sets = [0] * n_ctx
    for a in signalled:
        best_set, best_cost = 0, None
        for s in range(N_INIT_SETS):
            m = ContextModel(s)
            cost = INIT_SET_PENALTY if s else 0
            current = 0
            for ep, bin in per_ctx[a]:
                if ep != current:
                    m.reset()
                    current = ep
                cost += _COST[abs(m.c >> 7)][1 if bin == m.mps else 0]
                m.update(bin)
            if best_cost is None or cost < best_cost:
                best_set, best_cost = s, cost
        sets[a] = best_set
    return sets


class PayloadEncoder:
    """Encoder of one NDU CABAC payload (9.8): the mirror image of PayloadDecoder."""

    def __init__(self, edition: int):
        self.edition = check_edition(edition)
        self._ae = ArithmeticEncoder()
        self._finished = False
        self.last_init_sets = None

    def _check_open(self) -> None:
        if self._finished:
            raise EncodeError("the payload is already finished")

    def write_bypass(self, value, nbits: int) -> None:
        """``nbits`` bypass bins, MSB first (9.5)."""
        self._check_open()
        if not 0 <= nbits <= 64:
            raise ValueError("nbits must be in 0..64")
        value = int(value)
        if not 0 <= value < (1 << nbits):
            raise EncodeError(f"value {value} does not fit in {nbits} bypass bins", clause="9.5")
        self._ae.encode_bypass_bits(value, nbits)

    def write_qp_offset(self, value, nbits: int) -> None:
        """The signed per-tensor qp offset (8.2)."""
        if not 1 <= nbits <= 32:
            raise ValueError("nbits must be in 1..32")
        value = int(value)
        lo, hi = -(1 << (nbits - 1)), (1 << (nbits - 1)) - 1
        if not lo <= value <= hi:
            raise EncodeError(f"qp offset {value} outside {lo}..{hi} ({nbits} bits)", clause="8.2")
        self.write_bypass(value & ((1 << nbits) - 1), nbits)

    def _plan(
        self,
        levels,
        height,
        width,
        n_gtx,
        dq,
        scan_order,
        codebook_size,
        codebook_zero,
        parent_present,
        tca_base,
        hdsp_history,
        hdsp,
        row_skip,
    ):
        """A tensor's checked arguments and all its data bins (8.3, 10.2, 10.4)."""
        t = _Tensor(
            self.edition,
            height,
            width,
            n_gtx=n_gtx,
            dq=dq,
            scan_order=scan_order,
            codebook_size=codebook_size,
            codebook_zero=codebook_zero,
            parent_present=parent_present,
            tca_base=tca_base,
            hdsp_history=hdsp_history,
            error=EncodeError,
        )
        if levels is None:
            raise EncodeError("levels missing", clause="8.1")
        n_values = _int_array(levels, np.int32, t.size, "levels", EncodeError, "8.1")
        if hdsp and self.edition == 2 and not t.parent_present:
            raise EncodeError("the HDSP flag needs parent_present", clause="8.3")
        # 8.3: which flags are sent
        hdsp = bool(hdsp) and t.has_row_flags and t.parent_present
        row_skip = bool(row_skip) and t.has_row_flags
        skip = _skipped_rows(t, n_values) if row_skip else None
        # 10.2 / 10.4: the coded values, then all bins of the data
        k_values = _coded_values(t, n_values, skip)
        bins = _tensor_bins(t, k_values, skip, hdsp)
        return t, hdsp, row_skip, skip, bins, t.signalled(hdsp)

    def choose_init_sets(
        self,
        levels,
        height,
        width,
        *,
        n_gtx,
        dq=False,
        scan_order=0,
        codebook_size=0,
        codebook_zero=0,
        parent_present=False,
        tca_base=None,
        hdsp_history=None,
        hdsp=False,
        row_skip=False,
        threads=1,
    ):
        """The init sets ``encode_tensor`` with ``param_opt`` chooses (A.3), and the estimated
        bits of the tensor's data bins with them (A.4); writes nothing.

        Returns (uint8 array of one set per context, estimated bits)."""
        t, _, _, _, bins, signalled = self._plan(
            levels,
            height,
            width,
            n_gtx,
            dq,
            scan_order,
            codebook_size,
            codebook_zero,
            parent_present,
            tca_base,
            hdsp_history,
            hdsp,
            row_skip,
        )
        n_ctx = t.layout.count
        sets = _choose_init_sets(bins, n_ctx, signalled) if t.size and signalled else [0] * n_ctx
        return np.array(sets, dtype=np.uint8), _estimate_costs(bins, n_ctx, sets) / EST_UNIT

    def encode_tensor(
        self,
        levels,
        height,
        width,
        *,
        n_gtx,
        dq=False,
        scan_order=0,
        param_opt=True,
        init_sets=None,
        codebook_size=0,
        codebook_zero=0,
        parent_present=False,
        tca_base=None,
        hdsp_history=None,
        hdsp=False,
        row_skip=False,
        threads=1,
    ) -> None:
        """Encode one tensor given its reconstruction integers n (8.1).

        ``threads`` is accepted for the interface's sake: this engine codes sequentially,
        which gives the bytes the compiled engine gives with any number of threads (A.5).
        """
        self._check_open()
        t, hdsp, row_skip, skip, bins, signalled = self._plan(
            levels,
            height,
            width,
            n_gtx,
            dq,
            scan_order,
            codebook_size,
            codebook_zero,
            parent_present,
            tca_base,
            hdsp_history,
            hdsp,
            row_skip,
        )
        layout = t.layout
        # 8.4: the init sets
        if init_sets is not None:
            given = np.asarray(init_sets).reshape(-1)
            if given.size != layout.count or (given.size and (given.min() < 0 or given.max() >= N_INIT_SETS)):
                raise EncodeError(f"init_sets must be {layout.count} values in 0..8", clause="8.4")
            sets = [0] * layout.count
            for a in signalled:
                sets[a] = int(given[a])
        elif param_opt:
            sets = _choose_init_sets(bins, layout.count, signalled)
        else:
            sets = [0] * layout.count
        self.last_init_sets = np.array(sets, dtype=np.uint8)

        try:
            self._write_bins(t, hdsp, row_skip, skip, signalled, sets, bins)
        except BaseException:
            self._finished = True  # a tensor written in part: the payload cannot be finished
            raise

    def _write_bins(self, t, hdsp: bool, row_skip: bool, skip, signalled: list, sets: list, bins: list) -> None:
        """A tensor's bins, in the order of 8.1: the row flags, the init sets (8.4), then its levels."""
        layout = t.layout
        ae = self._ae
        ctx = _fresh_contexts(layout.count)
        if t.has_row_flags:
            if t.parent_present:
                ae.encode_bypass(1 if hdsp else 0)
            ae.encode_bypass(1 if row_skip else 0)
            if row_skip:
                for flag in skip:
                    ae.encode_bin(ctx[layout.row_skip], flag)
        for a in signalled:
            s = sets[a]
            ae.encode_bin(ctx[layout.init_flag], 1 if s else 0)
            if s:
                ae.encode_bypass_bits(s - 1, 3)
                ctx[a].initialise(s)
        for item in polled(bins):
            if item is _FORCE_RANGE:
                ae.force_range()
            elif item is _BLOCK_ROW:
                ae.force_range()
                for m in ctx:
                    m.reset()
            elif item[0] is None:
                ae.encode_bypass(item[1])
            else:
                ae.encode_bin(ctx[item[0]], item[1])

    def finish(self) -> bytes:
        """Terminate bin, flush, stop bit (8.5, 9.8); returns the payload."""
        self._check_open()
        self._finished = True
        return self._ae.encode_terminate_and_flush()


def estimate_tensor_bits(
    levels, height, width, *, n_gtx, dq=False, scan_order=0, edition=2, codebook_size=0, codebook_zero=0, init_sets=None
) -> float:
    """Estimated bits of a tensor's data, contexts adapting along (9.8).

    Excludes the qp offset, the row-skip/HDSP flags and the init signalling.
    ``init_sets``: the contexts' init sets (default all 0).
    """
    edition = check_edition(edition)
    t = _Tensor(
        edition,
        height,
        width,
        n_gtx=n_gtx,
        dq=dq,
        scan_order=scan_order,
        codebook_size=codebook_size,
        codebook_zero=codebook_zero,
        parent_present=False,
        tca_base=None,
        hdsp_history=None,
        error=EncodeError,
    )
    n_values = _int_array(levels, np.int32, t.size, "levels", EncodeError, "8.1")
    k_values = _coded_values(t, n_values, None)
    bins = _tensor_bins(t, k_values, None, False)
    sets = [0] * t.layout.count if init_sets is None else [int(s) for s in np.asarray(init_sets).reshape(-1)]
    if len(sets) != t.layout.count or not all(0 <= s < N_INIT_SETS for s in sets):
        raise EncodeError(f"init_sets must be {t.layout.count} values in 0..8", clause="8.4")
    return _estimate_costs(bins, t.layout.count, sets) / EST_UNIT
