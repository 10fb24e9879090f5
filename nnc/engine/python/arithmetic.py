"""Arithmetic coding (spec 9): the probability model of one context, the binary
arithmetic decoder and encoder, and the encoder's bit estimates.

Part of the pure-Python engine (:mod:`nnc.engine.python`); every class names the
clause it implements: 9.1 decoder initialisation, 9.2 context-coded bins, 9.3 the
probability model, 9.4 the rLPS table, 9.5 bypass bins, 9.6 termination and stop
pattern, 9.7 entry-point positioning, 9.8 the encoder and its rate estimates.
"""

from __future__ import annotations

import math

from ...errors import DecodeError, TruncatedError
from ...tables import ADAPT_STEPS, INIT_SETS, RLPS_TABLE

#: Number of context initialisation sets (9.3.2).
N_INIT_SETS = len(INIT_SETS)

#: Unit of the encoder's bit estimates: 2^-15 bit (exact integer arithmetic,
#: so that both engines take identical init-set decisions).
EST_UNIT = 1 << 15


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
            raise DecodeError("first two payload bytes are outside the initial interval", clause="9.1", offset=0)

    # -- bytes ------------------------------------------------------------
    def _next_byte(self) -> int:
        if self.pos >= len(self.data):
            raise TruncatedError("the CABAC payload ends before the data it codes", clause="9.2", offset=len(self.data))
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
            raise DecodeError("code value outside the interval at a block-row boundary", clause="11.3", offset=self.pos)

    def fill_in_bits_match(self) -> bool:
        """Whether V's low 7 bits equal those a start at this position fills in (9.7)."""
        return (self.value & 127) == (self.data[self.pos - 1] << (8 + self.bits_needed)) & 127

    def start_at_entry_point(self, t: int, value: int) -> None:
        """Position the decoder at bit T with V >> 7 = ``value`` and R = 256 (9.7)."""
        if t < 0:
            raise DecodeError(f"entry point at negative bit position {t}", clause="9.7", offset=self.pos)
        if not 0 <= value <= 255:  # api-check
            raise DecodeError(f"entry point value {value} outside 0..255", clause="9.7", offset=self.pos)
        p = t + 9
        if p % 8:
            consumed, bits_needed = p // 8 + 1, p % 8 - 9
        else:
            consumed, bits_needed = p // 8, -1
        if consumed > len(self.data):
            raise TruncatedError(f"entry point at bit {t} lies beyond the payload", clause="9.7", offset=len(self.data))
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
        acc = ((self.low >> 8) << 1) | 1  # remaining bits of L, then the stop bit
        nbits += 1
        pad = -nbits % 8
        acc <<= pad
        nbits += pad
        self.out += acc.to_bytes(nbits // 8, "big")
        return bytes(self.out)


# ===========================================================================
# 9.8  Bit estimates of the encoder
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
