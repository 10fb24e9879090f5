"""Step sizes and reconstruction of tensor values from decoded integers (spec 12).

Decoder side; the encoder imports from here, never the other way round.
Errors are raised as :class:`~nnc.errors.DecodeError` with the spec clause.

Examples
--------
>>> import numpy as np
>>> from nnc.reconstruction import step_size, reconstruct_uniform
>>> step = step_size(-8, 2)
>>> float(step)
0.25
>>> reconstruct_uniform(np.array([0, 2, -1, 4], np.int32), step).tolist()
[0.0, 0.5, -0.25, 1.0]
"""

from __future__ import annotations

import math

import numpy as np

from .errors import DecodeError

#: ``nnr_decompressed_data_format`` values (spec 7.4, 12.6) and the numpy dtype of each.
DECOMPRESSED_DATA_FORMATS: dict[int, np.dtype] = {
    0: np.dtype("int32"),
    1: np.dtype("float32"),
    2: np.dtype("int8"),  # INT2: 2-bit signed values, carried in int8
    3: np.dtype("int8"),  # INT3
    4: np.dtype("int8"),  # INT4
    5: np.dtype("int8"),
    6: np.dtype("int16"),
    7: np.dtype("int64"),
    8: np.dtype("float16"),
    9: np.dtype("float64"),
}
#: Bits of the narrow integer formats (spec 12.6), which bound their value range.
NARROW_INT_BITS = {2: 2, 3: 3, 4: 4}


def step_size(qp: int, qp_density: int) -> np.float32:
    """Quantisation step size Δ for a qp (spec 12.1).

    Δ = (2^qpd + (qp mod 2^qpd)) · 2^(floor(qp / 2^qpd) − qpd), stored as float32.

    Parameters
    ----------
    qp : int
        Quantisation parameter.
    qp_density : int
        qp density qpd (0..7): qp grows by 2^qpd for each doubling of Δ.

    Returns
    -------
    ``numpy.float32``
        The step size; exact whenever it is a normal float32.

    Raises
    ------
    nnc.errors.DecodeError
        If Δ is not a finite non-zero float32 (below 2^-149 or from 2^128 on).

    Examples
    --------
    >>> from nnc.reconstruction import step_size
    >>> float(step_size(-38, 2))
    0.00146484375
    >>> float(step_size(5, 3)), float(step_size(3, 0))
    (1.625, 8.0)
    >>> step_size(600, 2)
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: qp 600 (qp_density 2) gives a step size outside the float32 range [spec 12.1]
    """
    k = 1 << qp_density
    mul = k + (qp & (k - 1))
    shift = qp >> qp_density
    exponent = shift - qp_density
    # Δ is exact in float32 whenever it is a normal float32; outside that range it is not usable.
    if exponent + math.log2(mul) >= 128 or exponent + math.log2(mul) < -149:
        raise DecodeError(
            f"qp {qp} (qp_density {qp_density}) gives a step size outside the float32 range",
            clause="12.1",
        )
    return np.float32(math.ldexp(mul, exponent))


#: Fewest elements of a reconstruction worth splitting over threads.
RECONSTRUCT_CHUNK = 1 << 20


def reconstruct_uniform(levels: np.ndarray, step: np.float32, threads: int = 1) -> np.ndarray:
    """w = float32(Δ) · float32(n), computed in float32 (spec 12.2, 12.3).

    Overflow to infinity is the defined result and raises no warning.  One pass
    over the levels; with ``threads`` > 1 a large tensor is split into slices
    reconstructed in threads (the same values).

    Parameters
    ----------
    levels : ``numpy.ndarray``
        Reconstruction integers n (with DQ already mapped from k to n).
    step : ``numpy.float32``
        Step size Δ, as from :func:`step_size`.
    threads : int
        Threads for a tensor of at least 2 * ``RECONSTRUCT_CHUNK`` elements.

    Returns
    -------
    ``numpy.ndarray``
        float32 values of the same shape as ``levels``.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.reconstruction import reconstruct_uniform
    >>> w = reconstruct_uniform(np.array([[1, -3], [0, 8]], np.int32), np.float32(0.125))
    >>> w.dtype.name, w.tolist()
    ('float32', [[0.125, -0.375], [0.0, 1.0]])
    """
    out = np.empty(levels.shape, np.float32)
    src, dst, step = levels.reshape(-1), out.reshape(-1), np.float32(step)

    def part(a: int, b: int) -> None:
        with np.errstate(over="ignore"):  # IEEE overflow to inf is the defined result (per thread)
            np.multiply(src[a:b], step, out=dst[a:b], dtype=np.float32)

    parts = max(1, min(threads, src.size // RECONSTRUCT_CHUNK))
    if parts == 1:
        part(0, src.size)
        return out
    from concurrent.futures import ThreadPoolExecutor

    bounds = [src.size * i // parts for i in range(parts + 1)]
    with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="nnc-recon") as pool:
        list(pool.map(part, bounds[:-1], bounds[1:]))
    return out


def reconstruct_codebook(indices: np.ndarray, codebook, zero_offset: int, step: np.float32) -> np.ndarray:
    """w = codebook[k + CbZeroOffset] · Δ, computed in float64 (spec 12.4).

    Parameters
    ----------
    indices : ``numpy.ndarray``
        Decoded integers k, signed relative to the codebook's zero entry.
    codebook : list of int
        The codebook integers (strictly increasing, spec 7.2).
    zero_offset : int
        CbZeroOffset, the position of the zero index in the codebook
        (see :func:`nnc.container.codebook_zero_offset`).
    step : ``numpy.float32``
        Step size Δ (:func:`step_size`), widened exactly to float64.

    Returns
    -------
    ``numpy.ndarray``
        float64 values of the same shape as ``indices``.

    Raises
    ------
    nnc.errors.DecodeError
        If an index falls outside the codebook.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.reconstruction import reconstruct_codebook
    >>> reconstruct_codebook(np.array([-1, 0, 1]), [-3, 0, 5], 1, np.float32(0.5)).tolist()
    [-1.5, 0.0, 2.5]
    >>> reconstruct_codebook(np.array([2]), [-3, 0, 5], 1, np.float32(0.5))
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: codebook index outside 0..2 [spec 12.4]
    """
    book = np.asarray(codebook, dtype=np.int64)
    check_codebook_indices(indices, book.size, zero_offset)
    return book[indices.astype(np.int64) + zero_offset].astype(np.float64) * float(step)


def check_codebook_indices(indices: np.ndarray, size: int, zero_offset: int) -> None:
    """Refuse decoded integers k whose codebook position k + CbZeroOffset falls outside 0..size-1 (spec 12.4).

    Parameters
    ----------
    indices : ``numpy.ndarray``
        Decoded integers k, signed relative to the codebook's zero entry.
    size : int
        The number of codebook entries.
    zero_offset : int
        CbZeroOffset, the position of the zero index in the codebook.

    Raises
    ------
    nnc.errors.DecodeError
        If an index falls outside the codebook.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.reconstruction import check_codebook_indices
    >>> check_codebook_indices(np.array([-1, 1]), 3, 1)
    >>> check_codebook_indices(np.array([2]), 3, 1)
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: codebook index outside 0..2 [spec 12.4]
    """
    if indices.size and (int(indices.min()) + zero_offset < 0 or int(indices.max()) + zero_offset >= size):
        raise DecodeError(f"codebook index outside 0..{size - 1}", clause="12.4")


def format_dtype(fmt: int) -> np.dtype:
    """The dtype of an ``nnr_decompressed_data_format`` (spec 7.4, 12.6).

    Parameters
    ----------
    fmt : int
        The signalled format.

    Returns
    -------
    ``numpy.dtype``
        Its entry of ``DECOMPRESSED_DATA_FORMATS``.

    Raises
    ------
    nnc.errors.DecodeError
        If ``fmt`` is reserved (spec 7.4).

    Examples
    --------
    >>> from nnc.reconstruction import format_dtype
    >>> format_dtype(8).name
    'float16'
    >>> format_dtype(42)
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: reserved nnr_decompressed_data_format 42 [spec 7.4]
    """
    if fmt not in DECOMPRESSED_DATA_FORMATS:
        raise DecodeError(f"reserved nnr_decompressed_data_format {fmt}", clause="7.4")
    return DECOMPRESSED_DATA_FORMATS[fmt]


def convert_to_format(values: np.ndarray, fmt: int) -> np.ndarray:
    """Convert a reconstructed tensor to its ``nnr_decompressed_data_format`` (spec 12.6).

    Float formats round to nearest (overflow to infinity); integer formats
    round float values half away from zero and check that they fit the
    format's range (-2..1 for INT2, -4..3 for INT3, -8..7 for INT4).

    Parameters
    ----------
    values : ``numpy.ndarray``
        Reconstructed values (float), or the integers of an INT tensor.
    fmt : int
        A key of ``DECOMPRESSED_DATA_FORMATS``.

    Returns
    -------
    ``numpy.ndarray``
        The values in the format's dtype, same shape.

    Raises
    ------
    nnc.errors.DecodeError
        If ``fmt`` is reserved, or for an integer format if a value is not
        finite or lies outside its range.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.reconstruction import convert_to_format
    >>> convert_to_format(np.array([1.4, -2.5, 2.5], np.float32), 0).tolist()  # int32
    [1, -3, 3]
    >>> convert_to_format(np.array([0.1], np.float32), 8).dtype.name
    'float16'
    >>> convert_to_format(np.array([2.0]), 2)  # INT2 holds -2..1
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: decoded value outside the range -2..1 of output format 2 [spec 12.6]
    """
    dtype = format_dtype(fmt)
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # IEEE round to nearest, overflow to inf
            return values.astype(dtype)
    bits = NARROW_INT_BITS.get(fmt)
    if bits is not None:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise DecodeError("non-finite value in an integer output format", clause="12.6")
        rounded = _rounded_half_away(values)
        # (the bounds as exact float64 powers of two: hi itself may not be one, 2^63 - 1 rounds to 2^63)
        outside = rounded.size and (rounded.min() < float(lo) or rounded.max() >= float(hi + 1))
    else:
        rounded = values.astype(np.int64)
        outside = rounded.size and (int(rounded.min()) < lo or int(rounded.max()) > hi)
    if outside:
        raise DecodeError(f"decoded value outside the range {lo}..{hi} of output format {fmt}", clause="12.6")
    return rounded.astype(dtype)


def _rounded_half_away(values: np.ndarray) -> np.ndarray:
    """The nearest integers to finite float values, halves away from zero, exactly (spec 12.6): in float64, where a
    value less its integer part is exact (floor(v + 0.5) in float32 turns 2^23 + 1 into 2^23 + 2, and 0.49999997
    into 1).

    Examples
    --------
    >>> _rounded_half_away(np.array([2.5, -2.5, 0.49999997, 8388609.0], np.float32)).tolist()
    [3.0, -3.0, 0.0, 8388609.0]
    """
    v = values.astype(np.float64)
    whole = np.trunc(v)
    return whole + np.copysign((np.abs(v - whole) >= 0.5).astype(np.float64), v)


__all__ = [
    "step_size",
    "reconstruct_uniform",
    "reconstruct_codebook",
    "check_codebook_indices",
    "convert_to_format",
    "format_dtype",
    "DECOMPRESSED_DATA_FORMATS",
    "NARROW_INT_BITS",
]
