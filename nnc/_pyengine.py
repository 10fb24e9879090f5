"""The pure-Python reference engine ("educational decoder") of nnc.

This module implements the entropy-coding layer of an NNR compressed data unit
(NDU) payload -- DeepCABAC -- in plain Python, written to be read side by side
with the spec.  Every function names the clause it implements:

* clause 8   the per-tensor payload order (8.1), the qp offset (8.2), the
             row-skip / HDSP flags (8.3), the context-initialisation signalling
             (8.4) and the terminate bin (8.5);
* clause 9   the binary arithmetic coder: decoder initialisation (9.1),
             context-coded bins (9.2), the probability model (9.3), the rLPS
             table (9.4), bypass bins (9.5), termination and stop pattern (9.6),
             entry-point positioning (9.7) and the encoder (9.8);
* clause 10  binarisation of a level (10.1), dependent quantisation (10.2),
             context selection (10.3), codebook-bounded binarisation (10.4)
             and temporal context adaptation / history-dependent significance
             probability (10.5);
* clause 11  the matrix view and effective scan order (11.1), the block scan
             (11.2), block-row boundaries (11.3), entry points (11.4) and row
             skipping (11.5).

It has exactly the interface of the compiled engine ``nnc._engine``
(docs/dev/engine-api.md); both must produce identical bytes and arrays.  This
one favours clarity over speed: it is the engine to step through in a debugger
when a stream does not decode.

``edition`` 1 selects the rules of the 1st edition of ISO/IEC 15938-17
(profile 0 streams), ``edition`` 2 those of the 2nd edition (profile 1).

Constant tables come from :mod:`nnc.tables`; errors from :mod:`nnc.errors`.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .errors import DecodeError, EncodeError, TruncatedError
from .tables import ADAPT_STEPS, INIT_SETS, NEXT_DQ_STATE, RLPS_TABLE

__all__ = [
    "PayloadDecoder",
    "PayloadEncoder",
    "compute_entry_points",
    "bin_cost",
    "estimate_tensor_bits",
    "context_count",
    "binarise",
]

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)

#: Number of context initialisation sets (9.3.2).
N_INIT_SETS = len(INIT_SETS)

#: Unit of the encoder's bit estimates: 2^-15 bit (exact integer arithmetic,
#: so that both engines take identical init-set decisions).
EST_UNIT = 1 << 15

#: Estimated cost of signalling an init set other than 0 (8.4): 3 bypass bins.
INIT_SET_PENALTY = 3 * EST_UNIT

#: Marker events in the list of bins of a tensor (see PayloadEncoder).
_FORCE_RANGE = "force"        # force R = 256 before the first element (11.3)
_BLOCK_ROW = "block-row"      # block-row boundary: reset contexts, force R = 256 (11.3)


def _check_edition(edition) -> int:
    if edition not in (1, 2):
        raise ValueError(f"edition must be 1 or 2, not {edition!r}")
    return int(edition)


# ===========================================================================
# 9.3  Probability model of one context
# ===========================================================================

class ContextModel:
    """One adaptive binary context (9.3.1).

    State: the fast state F (8-bit scale), the combined state C = S + 16 F
    (S: the slow state, 12-bit scale), the two adaptation shifts and the
    index of the init set the context was last initialised with.
    """

    __slots__ = ("c", "f", "sh0", "sh1", "init_set")

    def __init__(self, init_set: int = 0):
        self.initialise(init_set)

    def initialise(self, init_set: int) -> None:
        """Initialise with one of the 9 init sets (9.3.2): shifts and state."""
        self.sh0, self.sh1, self.c, self.f = INIT_SETS[init_set]
        self.init_set = init_set

    def reset(self) -> None:
        """Block-row reset (11.3): restore C and F of the current init set, keep the shifts."""
        _, _, self.c, self.f = INIT_SETS[self.init_set]

    @property
    def mps(self) -> int:
        """The more probable symbol: 1 if C >= 0 (9.3.1)."""
        return 1 if self.c >= 0 else 0

    def update(self, bin: int) -> None:
        """Two-rate update after coding ``bin`` (9.3.3).

        Each of F and S moves towards the coded bin by a step read from
        ADAPT_STEPS, indexed by how strongly the state agrees (>= 16) or
        disagrees (< 16) with the bin, and scaled down by the context's shift.
        """
        s = self.c - 16 * self.f
        if bin:
            self.f += ADAPT_STEPS[16 + (self.f >> 3)] >> self.sh0
            s += ADAPT_STEPS[16 + (s >> 7)] >> self.sh1
        else:
            self.f -= ADAPT_STEPS[16 + ((-self.f) >> 3)] >> self.sh0
            s -= ADAPT_STEPS[16 + ((-s) >> 7)] >> self.sh1
        self.c = s + 16 * self.f


def _fresh_contexts(count: int) -> list:
    """A whole context set in the default state, init set 0 (8.1 step 2)."""
    return [ContextModel(0) for _ in range(count)]


# ===========================================================================
# 9.4  LPS sub-range
# ===========================================================================

def rlps(rng: int, state_c: int) -> int:
    """rLPS for the 9-bit range ``rng`` and combined state C (9.4).

    The row of the table is the range class (R >> 5) & 7, the column the
    probability class |C >> 7| (0..31).
    """
    return RLPS_TABLE[(rng & 0xE0) + abs(state_c >> 7)]


# ===========================================================================
# 9.1 - 9.7  Arithmetic decoder
# ===========================================================================

class ArithmeticDecoder:
    """The binary arithmetic decoder (9.1).

    ``rng`` is the 9-bit range R.  ``value`` is V: the code value relative to
    the bottom of the current interval, scaled by 2^7; its low
    (8 + bits_needed) bits are placeholders that the next byte read fills.
    """

    def __init__(self, data: bytes):
        self.data = data
        if len(data) < 2:
            raise TruncatedError("a CABAC payload needs at least 2 bytes", clause="9.1", offset=len(data))
        # 9.1: R = 510, V = the first two bytes, bitsNeeded = -8
        self.rng = 510
        self.value = (data[0] << 8) | data[1]
        self.pos = 2
        self.bits_needed = -8
        if self.value >= self.rng << 7:
            # An encoder never produces this; without the check the decoder
            # would leave the interval and decode arbitrarily long garbage.
            raise DecodeError("first two payload bytes are outside the initial interval",
                              clause="9.1", offset=0)

    # -- bytes ------------------------------------------------------------
    def _next_byte(self) -> int:
        if self.pos >= len(self.data):
            raise TruncatedError("the CABAC payload ends before the data it codes",
                                 clause="9.2", offset=len(self.data))
        byte = self.data[self.pos]
        self.pos += 1
        return byte

    @property
    def position(self) -> int:
        """T = 8 * bytes consumed - 8 + bitsNeeded (11.4): the stream bit position of V's MSB."""
        return 8 * self.pos - 8 + self.bits_needed

    # -- 9.2 context-coded bin ---------------------------------------------
    def decode_bin(self, ctx: ContextModel) -> int:
        r_lps = rlps(self.rng, ctx.c)
        r_mps = self.rng - r_lps
        mps = ctx.mps
        if self.value >= r_mps << 7:
            bin = 1 - mps
            self.value -= r_mps << 7
            self.rng = r_lps
        else:
            bin = mps
            self.rng = r_mps
        # renormalise: shift until R >= 256, one byte fills 8 placeholders
        n = 0
        while self.rng < 256:
            self.rng <<= 1
            n += 1
        if n:
            self.value <<= n
            self.bits_needed += n
            if self.bits_needed >= 0:
                self.value += self._next_byte() << self.bits_needed
                self.bits_needed -= 8
        ctx.update(bin)
        return bin

    # -- 9.5 bypass bins ---------------------------------------------------
    def decode_bypass(self) -> int:
        self.value <<= 1
        self.bits_needed += 1
        if self.bits_needed >= 0:
            self.value += self._next_byte()
            self.bits_needed = -8
        if self.value >= self.rng << 7:
            self.value -= self.rng << 7
            return 1
        return 0

    def decode_bypass_bits(self, nbits: int) -> int:
        """``nbits`` bypass bins, MSB first, as an unsigned integer (9.5)."""
        v = 0
        for _ in range(nbits):
            v = (v << 1) | self.decode_bypass()
        return v

    # -- 9.6 terminate bin -------------------------------------------------
    def decode_terminate(self) -> int:
        """1 at the end of a payload; 0 is an error, after which nothing is decoded (9.6)."""
        self.rng -= 2
        return 1 if self.value >= self.rng << 7 else 0

    def stop_pattern_ok(self) -> bool:
        """The unread rest of the last byte read is '1000...' (9.6)."""
        last = self.data[self.pos - 1]
        return ((last << (8 + self.bits_needed)) & 0xFF) == 0x80

    # -- 11.3 range forcing, 9.7 entry points --------------------------------
    def force_range(self) -> None:
        """Force R = 256 without renormalisation (11.3)."""
        self.rng = 256
        if self.value >= self.rng << 7:
            # The encoder narrows its interval to [L, L + 256) here, so a valid
            # stream always has V < 256 * 2^7 at this point.
            raise DecodeError("code value outside the interval at a block-row boundary",
                              clause="11.3", offset=self.pos)

    def start_at_entry_point(self, t: int, value: int) -> None:
        """Position the decoder at bit T with V >> 7 = ``value`` and R = 256 (9.7)."""
        if t < 0:
            raise DecodeError(f"entry point at negative bit position {t}", clause="9.7", offset=self.pos)
        if not 0 <= value <= 255:
            raise DecodeError(f"entry point value {value} outside 0..255", clause="9.7", offset=self.pos)
        p = t + 9
        if p % 8:
            consumed, bits_needed = p // 8 + 1, p % 8 - 9
        else:
            consumed, bits_needed = p // 8, -1
        if consumed > len(self.data):
            raise TruncatedError(f"entry point at bit {t} lies beyond the payload", clause="9.7",
                                 offset=len(self.data))
        self.pos = consumed
        self.bits_needed = bits_needed
        # V = value * 2^7 + the next stream bits after the 9-bit value window
        # (bits T+9 .. T+15) as far as they are in the bytes consumed, 0 beyond.
        self.value = (value << 7) + ((self.data[consumed - 1] << (8 + bits_needed)) & 127)
        self.rng = 256


# ===========================================================================
# 9.8  Arithmetic encoder
# ===========================================================================

class ArithmeticEncoder:
    """The binary arithmetic encoder (9.8): the mirror image of ArithmeticDecoder.

    ``low`` is L, the bottom of the interval, holding (32 - bits_left) bits not
    yet written.  A finished byte is written as soon as 8 bits are settled
    (bits_left < 12).  A carry out of L is added to the bytes already written
    (and propagates through trailing 0xFF bytes): this gives exactly the bytes
    of the classic "buffered byte + count of 0xFF" implementation.
    """

    def __init__(self):
        self.low = 0
        self.rng = 510
        self.bits_left = 23
        self.out = bytearray()

    def _add_carry(self) -> None:
        i = len(self.out) - 1
        while i >= 0 and self.out[i] == 0xFF:
            self.out[i] = 0x00
            i -= 1
        if i < 0:
            raise AssertionError("arithmetic encoder: carry out of the first byte")
        self.out[i] += 1

    def _write_out(self) -> None:
        while self.bits_left < 12:
            lead = self.low >> (24 - self.bits_left)
            self.bits_left += 8
            self.low &= 0xFFFFFFFF >> self.bits_left
            if lead > 0xFF:
                self._add_carry()
                lead &= 0xFF
            self.out.append(lead)

    def encode_bin(self, ctx: ContextModel, bin: int) -> None:
        r_lps = rlps(self.rng, ctx.c)
        r_mps = self.rng - r_lps
        if bin != ctx.mps:
            self.low += r_mps
            n = 0
            while (r_lps << n) < 256:
                n += 1
            self.rng = r_lps << n
            self.low <<= n
            self.bits_left -= n
        else:
            self.rng = r_mps
            if self.rng < 256:
                self.rng <<= 1
                self.low <<= 1
                self.bits_left -= 1
        ctx.update(bin)
        self._write_out()

    def encode_bypass(self, bin: int) -> None:
        self.low <<= 1
        if bin:
            self.low += self.rng
        self.bits_left -= 1
        self._write_out()

    def encode_bypass_bits(self, value: int, nbits: int) -> None:
        for i in range(nbits - 1, -1, -1):
            self.encode_bypass((value >> i) & 1)

    def force_range(self) -> None:
        """Force R = 256 (11.3); the interval shrinks to [L, L + 256)."""
        self.rng = 256

    def encode_terminate_and_flush(self) -> bytes:
        """Terminate bin 1 (8.5, 9.6), flush L, stop bit '1', zero padding (9.8)."""
        self.rng -= 2
        self.low += self.rng
        self.low <<= 7
        self.rng = 256
        self.bits_left -= 7
        self._write_out()
        if self.low >> (32 - self.bits_left):
            self._add_carry()
            self.low -= 1 << (32 - self.bits_left)
        nbits = 24 - self.bits_left
        acc = ((self.low >> 8) << 1) | 1          # remaining bits of L, then the stop bit
        nbits += 1
        pad = -nbits % 8
        acc <<= pad
        nbits += pad
        self.out += acc.to_bytes(nbits // 8, "big")
        return bytes(self.out)


# ===========================================================================
# 10.3  Context index layout and context selection
# ===========================================================================

def context_count(edition: int, n_gtx: int) -> int:
    """Number of contexts of a tensor (10.3): 63 + 2N (edition 1), 90 + 4N (edition 2)."""
    _check_edition(edition)
    return 63 + 2 * n_gtx if edition == 1 else 90 + 4 * n_gtx


def _neighbour_class(prev: int) -> int:
    """0 if the previous coded value is 0, 1 if negative, 2 if positive (10.3)."""
    return 0 if prev == 0 else (1 if prev < 0 else 2)


class ContextLayout:
    """Where each syntax element's contexts sit in the context array (10.3.1, 10.3.2)."""

    def __init__(self, edition: int, n_gtx: int):
        N = n_gtx
        self.edition = edition
        self.n_gtx = N
        self.count = context_count(edition, N)
        if edition == 1:                       # 10.3.1
            self.sig0, self.sign0, self.gtx0 = 0, 24, 27
            self.rem0 = 27 + 2 * N
            self.n_rem = 32
            self.init_flag = 61 + 2 * N
            self.row_skip = None
            self.sig_tca0 = self.sig_hdsp0 = self.sign_tca0 = self.gtx_tca0 = None
        else:                                  # 10.3.2
            self.sig0, self.sig_tca0, self.sig_hdsp0 = 0, 24, 40
            self.sign0, self.sign_tca0 = 48, 51
            self.gtx0, self.gtx_tca0 = 53, 53 + 2 * N
            self.rem0 = 53 + 4 * N
            self.n_rem = 31
            self.init_flag = 87 + 4 * N
            self.row_skip = 89 + 4 * N

    # -- selection of one element's contexts -----------------------------------
    def sig(self, state: int, prev: int, base: int = 0, hdsp_active: bool = False) -> int:
        """sig_flag context: HDSP before TCA before the neighbour rule (10.3.2, 10.5)."""
        if hdsp_active:
            return self.sig_hdsp0 + state
        if base:
            return self.sig_tca0 + 2 * state + (1 if abs(base) > 1 else 0)
        return self.sig0 + 3 * state + _neighbour_class(prev)

    def sign(self, prev: int, base: int = 0) -> int:
        """sign_flag context (10.3, 10.5)."""
        if base:
            return self.sign_tca0 + (0 if base < 0 else 1)
        return self.sign0 + _neighbour_class(prev)

    def gtx(self, j: int, negative: bool, base: int = 0) -> int:
        """Context of greater-than flag j, "|k| > j + 1" (10.3, 10.5).

        With TCA the choice is "|b| >= j" with j counted from 0, as in the
        reference software (so j = 0 always takes the even context).
        """
        if base:
            return self.gtx_tca0 + 2 * j + (0 if abs(base) >= j else 1)
        return self.gtx0 + 2 * j + (1 if negative else 0)

    def rem(self, i: int) -> int:
        """Context of remainder prefix bin i (10.1)."""
        return self.rem0 + i

    # -- 8.4 which contexts have their init set signalled ----------------------
    def signalled_contexts(self, dq: bool, tca: bool = False, hdsp: bool = False, bound=None) -> list:
        """The list of contexts whose init set is signalled, in signalling order (8.4)."""
        N = self.n_gtx
        if self.edition == 1:
            # contexts 0 .. 58+2N, without the DQ-state sig contexts 3 .. 23 when DQ is off
            return [a for a in range(59 + 2 * N) if dq or not 3 <= a <= 23]
        if bound is not None and bound.size == 1:
            return []                                   # S = 1: nothing is signalled
        out = list(range(0, 24 if dq else 3))           # 1. sig
        if tca:
            out += list(range(24, 40)) if dq else [24, 25]   # 2. sig with TCA
        if hdsp:
            out += list(range(40, 48)) if dq else [40]        # 3. sig with HDSP
        signs = [48, 49, 50] + ([51, 52] if tca else [])       # 4. sign
        if bound is None or bound.inferred_negative is None:
            out += signs
        gtx = list(range(2 * N))                                # 5. gtx, as a = ctx - 53
        if tca:
            gtx += list(range(2 * N, 4 * N))                    # 6. gtx with TCA
        for a in gtx:
            if bound is not None:
                limit = 2 * bound.max_abs if a < 2 * N else 2 * (bound.max_abs - 1) + 2 * N
                if a >= limit:
                    continue
            out.append(self.gtx0 + a)
        for a in range(31):                                     # 7. remainder prefix
            if bound is None or N - 1 + (2 ** (a + 1) - 1) < bound.max_abs:
                out.append(self.rem0 + a)
        return out


# ===========================================================================
# 10.4  Codebook-bounded binarisation (edition 2)
# ===========================================================================

class CodebookBound:
    """The bounds a codebook of size S with zero offset Z puts on the coded k (10.4).

    k = codebook index - Z, so k lies in [-Z, S-1-Z].
    """

    def __init__(self, size: int, zero: int):
        self.size, self.zero = size, zero
        self.max_negative = zero               # largest |k| of a negative k
        self.max_positive = size - 1 - zero    # largest |k| of a positive k
        self.max_abs = max(self.max_negative, self.max_positive)
        # The sign is not coded when all values have one sign; it is inferred
        # as negative iff Z != 0.
        self.inferred_negative = (zero != 0) if (zero == 0 or zero == size - 1) else None

    def max_abs_for(self, negative: bool) -> int:
        return self.max_negative if negative else self.max_positive

    def contains(self, k: int) -> bool:
        return -self.zero <= k <= self.size - 1 - self.zero


# ===========================================================================
# 10.1  Binarisation of one level (encoder side, also used by the tests)
# ===========================================================================

def binarise(k: int, layout: ContextLayout, *, state: int = 0, prev: int = 0, base: int = 0,
             hdsp_active: bool = False, bound: CodebookBound | None = None) -> list:
    """The bins of the coded value k, as (context index, bin) pairs (10.1, 10.3, 10.4).

    Bypass bins have context ``None``.  ``state`` is the DQ state, ``prev`` the
    previously coded k (the neighbour), ``base`` the TCA base level and
    ``hdsp_active`` whether HDSP applies at this position.
    """
    bins = []
    if bound is not None and bound.size == 1:
        return bins                                          # 10.4: S = 1 codes nothing
    bins.append((layout.sig(state, prev, base, hdsp_active), 1 if k else 0))   # sig_flag
    if k == 0:
        return bins
    negative = k < 0
    if bound is None or bound.inferred_negative is None:
        bins.append((layout.sign(prev, base), 1 if negative else 0))           # sign_flag
    a = abs(k)
    max_abs = None if bound is None else bound.max_abs_for(negative)
    # greater-than flags "|k| > j + 1", j = 0 .. N-1, stop after the first 0;
    # bounded: only while the running |k| is below max_abs
    level, j = 1, 0
    while j < layout.n_gtx and (max_abs is None or level < max_abs):
        flag = 1 if a > level else 0
        bins.append((layout.gtx(j, negative, base), flag))
        if not flag:
            return bins
        level += 1
        j += 1
    if j < layout.n_gtx or (max_abs is not None and level >= max_abs):
        return bins                                           # |k| = max_abs reached
    # remainder: Exp-Golomb order 0 with context-coded prefix (10.1), truncated
    # by max_abs (10.4), prefix capped at 31 ones in edition 2
    m = 0
    while True:
        if layout.edition == 2 and m == 31:
            break
        if max_abs is not None and max_abs < level + (1 << m):
            break
        one = 1 if a >= level + (1 << m) else 0
        bins.append((layout.rem(m), one))
        if not one:
            break
        level += 1 << m
        m += 1
    suffix = a - level
    for i in range(m - 1, -1, -1):
        bins.append((None, (suffix >> i) & 1))
    return bins


# ===========================================================================
# 10.2  Dependent quantisation
# ===========================================================================

def dq_reconstruct(k: int, state: int) -> int:
    """n = 2k - sgn(k)(s & 1) (10.2): even states use Q0, odd states Q1."""
    if k == 0:
        return 0
    return 2 * k - (state & 1) * (1 if k > 0 else -1)


def dq_coded_value(n: int, state: int) -> int:
    """k = (n + sgn(n)(s & 1)) >> 1 (10.2), the encoder's conversion n -> k."""
    sgn = (n > 0) - (n < 0)
    return (n + sgn * (state & 1)) >> 1


def _zero_run_table(count: int) -> list:
    """The DQ state after ``count`` transitions with parity 0, from each state (11.5).

    STT[s][0] is a permutation of the 8 states whose order divides 4, so
    ``count`` transitions equal ``count mod 4`` ones.
    """
    table = list(range(8))
    for _ in range(count % 4):
        table = [NEXT_DQ_STATE[s][0] for s in table]
    return table


def _check_zero_transition_order() -> None:
    table = list(range(8))
    for _ in range(4):
        table = [NEXT_DQ_STATE[s][0] for s in table]
    assert table == list(range(8)), "STT[.][0] must have order dividing 4"


_check_zero_transition_order()


# ===========================================================================
# 11  Scan order, block rows
# ===========================================================================

class TensorScan:
    """The scan of a height x width matrix (11.1, 11.2).

    ``order`` is the effective scan order: the signalled one, or 0 when the
    matrix is a single row or column.  Order s > 0 scans blocks of
    B = 4 << s; a block row is B matrix rows.  Order 0 scans row by row and is
    treated as one block row.
    """

    def __init__(self, height: int, width: int, scan_order: int, edition: int):
        self.height, self.width = height, width
        self.order = scan_order if (height > 1 and width > 1) else 0       # 11.1
        if self.order:
            self.block = 4 << self.order
            self.n_block_rows = -(-height // self.block)
        else:
            self.block = max(height, 1)
            self.n_block_rows = 1 if height > 0 else 0
        # 11.3: R = 256 is forced before the first element -- edition 1 whenever
        # the effective scan order is > 0, edition 2 only with >= 2 block rows.
        if edition == 1:
            self.force_at_start = self.order > 0
        else:
            self.force_at_start = self.order > 0 and self.n_block_rows > 1

    def segments(self, r: int):
        """Pieces of matrix rows in block row r, in scan order: (row, first col, end col) (11.2).

        With order 0 a piece is a whole row; with blocks it is one row of one
        block (blocks left to right, rows top to bottom inside a block).
        """
        if not self.order:
            for row in range(self.height):
                yield row, 0, self.width
            return
        B = self.block
        rows = range(r * B, min((r + 1) * B, self.height))
        for c0 in range(0, self.width, B):
            c1 = min(c0 + B, self.width)
            for row in rows:
                yield row, c0, c1


# ===========================================================================
# Per-tensor parameters
# ===========================================================================

def _int_array(a, dtype, size: int, name: str, error, clause: str):
    """``a`` as a flat list of Python ints checked against ``dtype`` and ``size``."""
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub":
        raise error(f"{name} must be an integer array, not {arr.dtype}", clause=clause)
    arr = arr.reshape(-1)
    if arr.size != size:
        raise error(f"{name} has {arr.size} elements, the tensor has {size}", clause=clause)
    info = np.iinfo(dtype)
    if arr.size and arr.dtype.kind != "b" and (int(arr.min()) < info.min or int(arr.max()) > info.max):
        raise error(f"{name} has values outside {np.dtype(dtype).name}", clause=clause)
    return [int(x) for x in arr.tolist()]


class _Tensor:
    """The per-tensor coding parameters (engine-api.md), checked and derived."""

    def __init__(self, edition, height, width, *, n_gtx, dq, scan_order, codebook_size, codebook_zero,
                 parent_present, tca_base, hdsp_history, error):
        height, width, n_gtx, scan_order = int(height), int(width), int(n_gtx), int(scan_order)
        if height < 0 or width < 0:
            raise error(f"negative tensor dimensions {height}x{width}", clause="11.1")
        if not 1 <= n_gtx <= 256:
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
                if not 0 <= codebook_zero < codebook_size:
                    raise error(f"codebook zero offset {codebook_zero} outside the codebook of "
                                f"{codebook_size} entries", clause="7.2")
                if self.dq:
                    raise error("a codebook cannot be combined with dependent quantisation", clause="10.4")
                self.bound = CodebookBound(codebook_size, codebook_zero)
            elif codebook_size < 0:
                raise error(f"negative codebook size {codebook_size}", clause="10.4")
            self.parent_present = bool(parent_present)
            self.base = _int_array(tca_base, np.int32, self.size, "tca_base", error, "10.5")
            self.history = _int_array(hdsp_history, np.int8, self.size, "hdsp_history", error, "10.5")
        # 8.3: the row-skip / HDSP flags exist in edition 2 for real matrices,
        # unless the codebook has a single entry
        self.has_row_flags = (edition == 2 and width > 1 and self.size > width
                              and not (self.bound is not None and self.bound.size == 1))
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
        self.edition = _check_edition(edition)
        if isinstance(data, np.ndarray):
            data = data.astype(np.uint8, copy=False).tobytes()
        self._ad = ArithmeticDecoder(bytes(data))           # 9.1
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
        if not 0 <= nbits <= 64:
            raise ValueError("nbits must be in 0..64")
        return self._ad.decode_bypass_bits(nbits)

    def read_qp_offset(self, nbits: int) -> int:
        """The per-tensor qp offset: ``nbits`` bypass bins, two's complement (8.2)."""
        if not 1 <= nbits <= 32:
            raise ValueError("nbits must be in 1..32")
        v = self.read_bypass(nbits)
        return v - (1 << nbits) if v >= 1 << (nbits - 1) else v

    # -- 8.1 one tensor ---------------------------------------------------------
    def decode_tensor(self, height, width, *, n_gtx, dq=False, scan_order=0, codebook_size=0,
                      codebook_zero=0, parent_present=False, tca_base=None, hdsp_history=None,
                      entry_points=None, start_block_row=0, record_entry_points=False,
                      stop_block_row=None, out=None):
        """Decode one tensor (8.1); returns the reconstruction integers n, flat, row-major.

        With ``stop_block_row`` (a block-row range, 11.4), only ``start_block_row``
        is entered from its entry point; the rows after it follow sequentially up to
        ``stop_block_row`` - 1, and at the start of ``stop_block_row`` (if it is a
        block row of the tensor) ``last_boundary`` records (T - T_0, V >> 7, DQ state,
        whether V's low 7 bits equal those an entry-point start fills in).
        """
        t = _Tensor(self.edition, height, width, n_gtx=n_gtx, dq=dq, scan_order=scan_order,
                    codebook_size=codebook_size, codebook_zero=codebook_zero,
                    parent_present=parent_present, tca_base=tca_base, hdsp_history=hdsp_history,
                    error=DecodeError)
        ad = self._ad
        scan = t.scan
        layout = t.layout
        use_eps = entry_points is not None and scan.n_block_rows > 1
        start_block_row = int(start_block_row)
        ranged = stop_block_row is not None and scan.n_block_rows > 1
        stop_row = int(stop_block_row) if ranged else scan.n_block_rows
        if ranged and not 0 <= start_block_row < stop_row <= scan.n_block_rows:
            raise ValueError(f"block rows {start_block_row}..{stop_row} outside 0..{scan.n_block_rows}")
        if start_block_row and not (use_eps and 0 <= start_block_row < scan.n_block_rows):
            raise ValueError("start_block_row > 0 needs entry points and a block row of the tensor")
        if out is not None and not (isinstance(out, np.ndarray) and out.dtype == np.int32
                                    and out.size == t.size and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous int32 array of {t.size} elements")
        self.last_boundary = None
        if use_eps:
            entry_points = [tuple(int(x) for x in e) for e in entry_points]
            if len(entry_points) != scan.n_block_rows - 1:
                raise DecodeError(f"{len(entry_points)} entry points for {scan.n_block_rows} block rows",
                                  clause="11.4", offset=ad.pos)

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
            ad.force_range()                                  # 11.3
        t0 = t_prev = ad.position                             # T_0 (11.4)
        increments = [e[2] for e in entry_points] if use_eps else None
        zero_run = _zero_run_table(t.width) if (t.dq and skip is not None) else None
        W = t.width
        state = 0
        for r in range(start_block_row, stop_row + 1 if stop_row < scan.n_block_rows else stop_row):
            prev = 0
            if r == stop_row:
                # end of a block-row range: record where the next range must start
                ad.force_range()
                low = (ad.data[ad.pos - 1] << (8 + ad.bits_needed)) & 127
                self.last_boundary = (ad.position - t0, ad.value >> 7, state if t.dq else 0,
                                      (ad.value & 127) == low)
                break
            if r > 0:
                # 11.3 block-row boundary: contexts reset, neighbour 0, R = 256;
                # or 9.7: jump to the block row's entry point
                if use_eps and (r == start_block_row or not ranged):
                    value, ep_state = entry_points[r - 1][0], entry_points[r - 1][1]
                    if t.dq and not 0 <= ep_state <= 7:
                        raise DecodeError(f"entry point DQ state {ep_state} outside 0..7",
                                          clause="11.4", offset=ad.pos)
                    ad.start_at_entry_point(t0 + sum(increments[:r]), value)
                    state = ep_state if t.dq else 0
                else:
                    ad.force_range()
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
                        n = dq_reconstruct(k, state)                      # 10.2
                        if not INT32_MIN <= n <= INT32_MAX:
                            raise DecodeError("dependent-quantisation reconstruction integer does not "
                                              "fit in int32", clause="10.2", offset=ad.pos)
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
            return 0                                                     # 10.4: S = 1
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
                raise DecodeError("decoded level magnitude does not fit in int32", clause="10.1",
                                  offset=ad.pos)
        k = -level if negative else level
        if bound is not None and not bound.contains(k):
            raise DecodeError(f"decoded codebook index offset {k} outside the codebook",
                              clause="10.4", offset=ad.pos)
        return k

    def finish(self) -> None:
        """Terminate bin (must be 1), stop pattern, every byte consumed (8.5, 9.6)."""
        ad = self._ad
        if not ad.decode_terminate():
            raise DecodeError("terminate bin is 0 at the end of the payload", clause="9.6", offset=ad.pos)
        if not ad.stop_pattern_ok():
            raise DecodeError("stop pattern '1000...' missing after the terminate bin", clause="9.6",
                              offset=ad.pos - 1)
        if ad.pos != len(ad.data):
            raise DecodeError(f"{len(ad.data) - ad.pos} bytes left after the end of the CABAC payload",
                              clause="8.5", offset=ad.pos)


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
                raise EncodeError(f"level {n} at flat index {pos} outside the codebook range "
                                  f"[{-t.bound.zero}, {t.bound.size - 1 - t.bound.zero}]", clause="10.4")
        return list(levels)
    k_values = [0] * t.size
    zero_run = _zero_run_table(W) if skip is not None else None
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
                    raise EncodeError(f"level {n} at flat index {pos} is not representable in "
                                      f"dependent-quantisation state {state}", clause="10.2")
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
    zero_run = _zero_run_table(W) if (t.dq and skip is not None) else None
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
                bins += binarise(k, layout, state=state, prev=prev, base=t.base_at(pos),
                                 hdsp_active=t.hdsp_active(hdsp, pos), bound=bound)
                if t.dq:
                    state = NEXT_DQ_STATE[state][k & 1]
                prev = k
    return bins


def _skipped_rows(t: _Tensor, levels: list) -> list:
    """Row-skip bins (8.3): 1 for every all-zero row."""
    W = t.width
    return [0 if any(levels[row * W:(row + 1) * W]) else 1 for row in range(t.height)]


def _estimate_costs(bins: list, n_ctx: int, init_sets) -> int:
    """Estimated cost (units of 2^-15 bit) of ``bins`` with contexts adapting along (8.4, 9.8)."""
    ctx = _fresh_contexts(n_ctx)
    for a, s in enumerate(init_sets):
        if s:
            ctx[a].initialise(int(s))
    total = 0
    for item in bins:
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
    for item in bins:
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
        self.edition = _check_edition(edition)
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

    def encode_tensor(self, levels, height, width, *, n_gtx, dq=False, scan_order=0, param_opt=True,
                      init_sets=None, codebook_size=0, codebook_zero=0, parent_present=False,
                      tca_base=None, hdsp_history=None, hdsp=False, row_skip=False, threads=1) -> None:
        """Encode one tensor given its reconstruction integers n (8.1).

        ``threads`` is accepted for the interface's sake: this engine codes sequentially,
        which gives the bytes the compiled engine gives with any number of threads.
        """
        self._check_open()
        t = _Tensor(self.edition, height, width, n_gtx=n_gtx, dq=dq, scan_order=scan_order,
                    codebook_size=codebook_size, codebook_zero=codebook_zero,
                    parent_present=parent_present, tca_base=tca_base, hdsp_history=hdsp_history,
                    error=EncodeError)
        if levels is None:
            raise EncodeError("levels missing", clause="8.1")
        n_values = _int_array(levels, np.int32, t.size, "levels", EncodeError, "8.1")
        if hdsp and self.edition == 2 and not t.parent_present:
            raise EncodeError("the HDSP flag needs parent_present", clause="8.3")
        layout = t.layout
        # 8.3: which flags are sent
        hdsp = bool(hdsp) and t.has_row_flags and t.parent_present
        row_skip = bool(row_skip) and t.has_row_flags
        skip = _skipped_rows(t, n_values) if row_skip else None
        # 10.2 / 10.4: the coded values, then all bins of the data
        k_values = _coded_values(t, n_values, skip)
        bins = _tensor_bins(t, k_values, skip, hdsp)
        # 8.4: the init sets
        signalled = t.signalled(hdsp)
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

        # code it, in the order of 8.1
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
        for item in bins:
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


# ===========================================================================
# Bit estimates (9.8) and module helpers
# ===========================================================================

def _cost_table() -> list:
    """Estimated bits of a bin per probability class q = |C >> 7|: [q][bin is MPS].

    The average over the range R = 256..510 (weighted by 1/R, the range being
    roughly log-uniformly distributed) of -log2 of the coding probability:
    log2(R / rLPS) for the LPS, log2(R / (R - rLPS)) for the MPS.  Stored in
    units of 2^-15 bit, rounded.
    """
    table = []
    for q in range(32):
        lps = mps = wsum = 0.0
        for r in range(256, 511):
            w = 1.0 / r
            rl = RLPS_TABLE[32 * ((r >> 5) & 7) + q]
            lps += w * math.log2(r / rl)
            mps += w * math.log2(r / (r - rl))
            wsum += w
        table.append((int(lps / wsum * EST_UNIT + 0.5), int(mps / wsum * EST_UNIT + 0.5)))
    return table


_COST = _cost_table()


def bin_cost(state_c: int, bin: int) -> float:
    """Estimated bits of a context-coded bin coded with combined state C (9.8)."""
    state_c = int(state_c)
    q = abs(state_c >> 7)
    if q > 31:
        raise ValueError(f"combined state {state_c} outside the model's range (|C >> 7| <= 31)")
    mps = 1 if state_c >= 0 else 0
    return _COST[q][1 if bin == mps else 0] / EST_UNIT


def estimate_tensor_bits(levels, height, width, *, n_gtx, dq=False, scan_order=0, edition=2,
                         codebook_size=0, codebook_zero=0, init_sets=None, tca_base=None,
                         hdsp_history=None, hdsp=False) -> float:
    """Estimated bits of a tensor's data, contexts adapting along (9.8).

    Excludes the qp offset, the row-skip/HDSP flags and the init signalling.
    ``init_sets``: the contexts' init sets (default all 0).
    """
    edition = _check_edition(edition)
    t = _Tensor(edition, height, width, n_gtx=n_gtx, dq=dq, scan_order=scan_order,
                codebook_size=codebook_size, codebook_zero=codebook_zero, parent_present=hdsp,
                tca_base=tca_base, hdsp_history=hdsp_history, error=EncodeError)
    n_values = _int_array(levels, np.int32, t.size, "levels", EncodeError, "8.1")
    k_values = _coded_values(t, n_values, None)
    bins = _tensor_bins(t, k_values, None, bool(hdsp) and edition == 2)
    sets = [0] * t.layout.count if init_sets is None else [int(s) for s in np.asarray(init_sets).reshape(-1)]
    if len(sets) != t.layout.count or not all(0 <= s < N_INIT_SETS for s in sets):
        raise EncodeError(f"init_sets must be {t.layout.count} values in 0..8", clause="8.4")
    return _estimate_costs(bins, t.layout.count, sets) / EST_UNIT


_TENSOR_KEYS = ("n_gtx", "dq", "scan_order", "codebook_size", "codebook_zero", "parent_present",
                "tca_base", "hdsp_history")


def compute_entry_points(payload, edition, *args) -> list:
    """Entry points of every tensor of a payload, by a sequential decode (11.4).

    Called as ``compute_entry_points(payload, edition, qp_bits, tensors)``
    (engine-api.md: each tensor dict has ``qp_offset: bool``) or as
    ``compute_entry_points(payload, edition, tensors)`` with a per-tensor
    ``qp_bits`` (0 = no qp offset).  Each dict also holds ``height``,
    ``width`` and the decode_tensor parameters.  Returns, per tensor, the list
    of (value, dq_state, offset_increment).
    """
    if len(args) == 1:
        qp_bits, tensors = 0, args[0]
    elif len(args) == 2:
        qp_bits, tensors = args
    else:
        raise TypeError("compute_entry_points(payload, edition, [qp_bits,] tensors)")
    dec = PayloadDecoder(payload, edition)
    result = []
    for spec in tensors:
        bits = spec.get("qp_bits")
        if bits is None:
            bits = qp_bits if spec.get("qp_offset", False) else 0
        if bits:
            dec.read_qp_offset(int(bits))
        kwargs = {key: spec[key] for key in _TENSOR_KEYS if key in spec}
        dec.decode_tensor(spec["height"], spec["width"], record_entry_points=True, **kwargs)
        result.append(list(dec.last_entry_points))
    dec.finish()
    return result


# ===========================================================================
# Rate-distortion quantisation (informative, Annex A.9)
# ===========================================================================

def _bin_cost_units(ctx: ContextModel, bin: int) -> int:
    return _COST[abs(ctx.c >> 7)][1 if bin == ctx.mps else 0]


def rdoq_levels(x, height, width, *, lam, n_gtx=11, scan_order=0, edition=2, importance=None):
    """Rate-distortion quantisation of x = w / step (A.9), uniform reconstruction.

    For each element in scan order the level k in {0, floor(|x|), ceil(|x|)} (signed like x)
    minimises F (x - k)^2 + lam * bits(k), bits estimated under the current contexts, which
    then adapt to the chosen k.  ``lam`` is in squared steps per bit; lam = 0 is nearest
    rounding (ties away from zero).
    """
    edition = _check_edition(edition)
    t = _Tensor(edition, height, width, n_gtx=n_gtx, dq=False, scan_order=scan_order, codebook_size=0,
                codebook_zero=0, parent_present=False, tca_base=None, hdsp_history=None, error=EncodeError)
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    if x.size != t.size:
        raise EncodeError(f"x has {x.size} elements, the tensor has {t.size}")
    if lam < 0:
        raise EncodeError("lambda must be >= 0")
    f = np.ones(t.size) if importance is None else np.ascontiguousarray(importance, np.float64).reshape(-1)
    if f.size != t.size or not np.all(f >= 0):
        raise EncodeError("importance needs one non-negative value per element")
    layout = t.layout
    ctx = _fresh_contexts(layout.count)
    out = np.zeros(t.size, dtype=np.int32)
    prev = 0
    block_h, block_w = (height, width) if t.scan.order == 0 else (4 << t.scan.order, 4 << t.scan.order)
    for r0 in range(0, height, max(block_h, 1)):
        if r0 > 0:                                             # 11.3 block-row reset
            for c in ctx:
                c.reset()
            prev = 0
        for c0 in range(0, width, max(block_w, 1)):
            for r in range(r0, min(height, r0 + block_h)):
                for col in range(c0, min(width, c0 + block_w)):
                    i = r * width + col
                    ax = abs(x[i])
                    best_k, best_cost = 0, None
                    for cand in (0, int(ax), int(ax) + 1):
                        if (cand == 0 and best_cost is not None) or cand > INT32_MAX:
                            continue
                        k = -cand if x[i] < 0 else cand
                        cost = f[i] * (ax - cand) ** 2
                        if lam:
                            bits = sum(EST_UNIT if cx is None else _bin_cost_units(ctx[cx], b)
                                       for cx, b in binarise(k, layout, prev=prev))
                            cost += lam * bits / EST_UNIT
                        if best_cost is None or cost < best_cost or (cost == best_cost and cand > abs(best_k)):
                            best_k, best_cost = k, cost
                    for cx, b in binarise(best_k, layout, prev=prev):
                        if cx is not None:
                            ctx[cx].update(b)
                    out[i] = best_k
                    prev = best_k
    return out
