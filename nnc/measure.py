"""How far decoded values lie from the values coded: energy, squared error and SNR (informative).

One home for the measure that the encoder's summaries (``nnc encode``'s weight SNR, the
warnings of coarse tensors) and ``nnc compare`` report. Sums are taken in float64, in slices
(small temporaries), over the values scaled by a power of two (exact), so that float64 values
under about 1e-154 or over 1e154 do not square to 0 or inf.

Examples
--------
>>> import numpy as np
>>> from nnc.measure import error_sums, snr_db
>>> sums = error_sums(np.array([3.0, 4.0, np.inf]), np.array([3.0, 3.5, np.inf]))
>>> sums
ErrorSums(energy=25.0, error=0.25, max_abs_error=0.5, nonfinite=0)
>>> round(snr_db(sums.energy, sums.error), 2)
20.0
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import numpy as np

from .narrow_floats import as_stored

#: Values measured at a time (the float64 temporaries stay a few MB).
SLICE = 1 << 18


class ErrorSums(NamedTuple):
    """Sums over a tensor's values x against their reconstruction y."""

    #: The sum of x² over the finite x.
    energy: float
    #: The sum of (x - y)² where they differ (inf where an inf or NaN meets another value).
    error: float
    #: The largest magnitude of x - y over the finite differences.
    max_abs_error: float
    #: How many inf or NaN values meet another value (inf and NaN equal in both are no error).
    nonfinite: int


def error_sums(x, y, stored_as: str | None = None, rounded: bool = False) -> ErrorSums:
    """The :class:`ErrorSums` of ``y`` against ``x`` (same number of values).

    ``y`` is taken as a file of dtype ``stored_as`` holds it (:func:`nnc.narrow_floats.as_stored`: bfloat16 and
    float8 rounded), or with ``rounded`` to whole numbers (an integer tensor's), slice by slice. An energy beyond
    float64's normal range is returned brought within it, its error by the same factor: the tensor's SNR is kept,
    and its weight in a sum over tensors stays under 1e-307 (tiny values) or at 1e300 (huge ones).

    Examples
    --------
    >>> import numpy as np
    >>> e, d, _, _ = error_sums(np.array([3e-300, 4e-300]), np.zeros(2))
    >>> e > 0 and e == d
    True
    >>> error_sums(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    ErrorSums(energy=1.0, error=inf, max_abs_error=0.0, nonfinite=1)
    """
    a, b = np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)
    k = _exponent_of_peak(a)  # the values over 2^k lie within 1
    e = d = peak = 0.0
    nonfinite = 0
    for i in range(0, a.size, SLICE):
        u = a[i : i + SLICE].astype(np.float64)
        v = as_stored(stored_as, b[i : i + SLICE]).astype(np.float64)
        if rounded:
            v = np.rint(v)
        with np.errstate(invalid="ignore", over="ignore"):
            kept = (u == v) | (np.isnan(u) & np.isnan(v))
            u, v = np.ldexp(u, -k), np.ldexp(v, -k)
            diff = np.where(kept, 0.0, u - v)
        finite = np.isfinite(diff)
        nonfinite += int(diff.size - np.count_nonzero(finite))
        diff = np.where(finite, diff, 0.0)
        u = np.where(np.isfinite(u), u, 0.0)
        e, d = e + float(u @ u), d + float(diff @ diff)
        if diff.size:
            peak = max(peak, float(np.abs(diff).max()))
    exponent = 2 * k
    if e > 0:  # within float64's normal range: at least its smallest normal, at most 1e300
        exponent = min(max(exponent, math.ceil(math.log2(sys.float_info.min / e))), math.floor(math.log2(1e300 / e)))
    error = math.inf if nonfinite else _ldexp(d, exponent)
    return ErrorSums(_ldexp(e, exponent), error, _ldexp(peak, k), nonfinite)


def snr_db(energy: float, error: float) -> float:
    """10 log10(energy / error): inf for no error, -inf for no energy or an infinite error.

    Examples
    --------
    >>> snr_db(100.0, 1.0), snr_db(1.0, 0.0), snr_db(0.0, 1.0)
    (20.0, inf, -inf)
    """
    if error == 0:
        return math.inf
    if energy == 0 or math.isinf(error):
        return -math.inf
    return math.inf if math.isinf(energy) else 10 * math.log10(energy / error)


def _exponent_of_peak(a: np.ndarray) -> int:
    """k with the finite values' largest magnitude in [2^(k-1), 2^k) (0 for none)."""
    peak = 0.0
    for i in range(0, a.size, SLICE):
        part = np.abs(a[i : i + SLICE].astype(np.float64))
        part = part[np.isfinite(part)]
        if part.size:
            peak = max(peak, float(part.max()))
    return math.frexp(peak)[1] if peak > 0 else 0


def _ldexp(value: float, exponent: int) -> float:
    """value · 2^exponent, inf on overflow."""
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.inf
