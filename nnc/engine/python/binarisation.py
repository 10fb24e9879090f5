"""Binarisation and contexts (spec 10): the context layout and context selection,
the binarisation of a level, dependent quantisation and codebook bounds.

Part of the pure-Python engine (:mod:`nnc.engine.python`): 10.1 binarisation,
10.2 dependent quantisation, 10.3 context selection, 10.4 codebook-bounded
binarisation, 10.5 temporal context adaptation and HDSP.
"""

from __future__ import annotations


def check_edition(edition) -> int:
    """1 (1st-edition rules) or 2 (2nd edition); anything else is a ValueError."""
    if edition not in (1, 2):  # api-check
        raise ValueError(f"edition must be 1 or 2, not {edition!r}")
    return int(edition)


# ===========================================================================
# 10.3  Context index layout and context selection
# ===========================================================================


def context_count(edition: int, n_gtx: int) -> int:
    """Number of contexts of a tensor (10.3): 63 + 2N (edition 1), 90 + 4N (edition 2)."""
    check_edition(edition)
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
        if edition == 1:  # 10.3.1
            self.sig0, self.sign0, self.gtx0 = 0, 24, 27
            self.rem0 = 27 + 2 * N
            self.n_rem = 32
            self.init_flag = 61 + 2 * N
            self.row_skip = None
            self.sig_tca0 = self.sig_hdsp0 = self.sign_tca0 = self.gtx_tca0 = None
        else:  # 10.3.2
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
            return []  # S = 1: nothing is signalled
        out = list(range(0, 24 if dq else 3))  # 1. sig
        if tca:
            out += list(range(24, 40)) if dq else [24, 25]  # 2. sig with TCA
        if hdsp:
            out += list(range(40, 48)) if dq else [40]  # 3. sig with HDSP
        signs = [48, 49, 50] + ([51, 52] if tca else [])  # 4. sign
        if bound is None or bound.inferred_negative is None:
            out += signs
        gtx = list(range(2 * N))  # 5. gtx, as a = ctx - 53
        if tca:
            gtx += list(range(2 * N, 4 * N))  # 6. gtx with TCA
        for a in gtx:
            if bound is not None:
                limit = 2 * bound.max_abs if a < 2 * N else 2 * (bound.max_abs - 1) + 2 * N
                if a >= limit:
                    continue
            out.append(self.gtx0 + a)
        for a in range(31):  # 7. remainder prefix
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
        self.max_negative = zero  # largest |k| of a negative k
        self.max_positive = size - 1 - zero  # largest |k| of a positive k
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


def binarise(
    k: int,
    layout: ContextLayout,
    *,
    state: int = 0,
    prev: int = 0,
    base: int = 0,
    hdsp_active: bool = False,
    bound: CodebookBound | None = None,
) -> list:
    """The bins of the coded value k, as (context index, bin) pairs (10.1, 10.3, 10.4).

    Bypass bins have context ``None``.  ``state`` is the DQ state, ``prev`` the
    previously coded k (the neighbour), ``base`` the TCA base level and
    ``hdsp_active`` whether HDSP applies at this position.
    """
    bins = []
    if bound is not None and bound.size == 1:
        return bins  # 10.4: S = 1 codes nothing
    bins.append((layout.sig(state, prev, base, hdsp_active), 1 if k else 0))  # sig_flag
    if k == 0:
        return bins
    negative = k < 0
    if bound is None or bound.inferred_negative is None:
        bins.append((layout.sign(prev, base), 1 if negative else 0))  # sign_flag
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
        return bins  # |k| = max_abs reached
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
