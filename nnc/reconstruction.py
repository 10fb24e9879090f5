"""Step sizes and reconstruction of tensor values from decoded integers (spec 12).

Decoder side; the encoder imports from here, never the other way round.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import DecodeError

#: ``nnr_decompressed_data_format`` values (spec 7.4, 12.6) and the numpy dtype of each.
DECOMPRESSED_DATA_FORMATS = {
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
#: Value range of the narrow integer formats (spec 12.6).
NARROW_INT_BITS = {2: 2, 3: 3, 4: 4}


def step_size(qp: int, qp_density: int) -> np.float32:
    """Quantisation step size Δ for a qp (spec 12.1).

    Δ = (2^qpd + (qp mod 2^qpd)) · 2^(floor(qp / 2^qpd) − qpd), stored as float32.

    >>> float(step_size(-38, 2))
    0.00146484375
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


def reconstruct_uniform(levels: np.ndarray, step: np.float32) -> np.ndarray:
    """w = float32(Δ) · float32(n), computed in float32 (spec 12.2, 12.3)."""
    with np.errstate(over="ignore"):  # IEEE overflow to inf is the defined result
        return levels.astype(np.float32) * np.float32(step)


def reconstruct_codebook(indices: np.ndarray, codebook, zero_offset: int, step: np.float32) -> np.ndarray:
    """w = codebook[k + CbZeroOffset] · Δ, computed in float64 (spec 12.4)."""
    book = np.asarray(codebook, dtype=np.int64)
    idx = indices.astype(np.int64) + zero_offset
    if idx.size and (idx.min() < 0 or idx.max() >= book.size):
        raise DecodeError(
            f"codebook index outside 0..{book.size - 1}", clause="12.4"
        )
    return book[idx].astype(np.float64) * float(step)


def convert_to_format(values: np.ndarray, fmt: int) -> np.ndarray:
    """Convert a reconstructed tensor to its ``nnr_decompressed_data_format`` (spec 12.6)."""
    if fmt not in DECOMPRESSED_DATA_FORMATS:
        raise DecodeError(f"reserved nnr_decompressed_data_format {fmt}", clause="7.4")
    dtype = DECOMPRESSED_DATA_FORMATS[fmt]
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # IEEE round to nearest, overflow to inf
            return values.astype(dtype)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise DecodeError("non-finite value in an integer output format", clause="12.6")
        rounded = np.where(values >= 0, np.floor(values + 0.5), np.ceil(values - 0.5))
    else:
        rounded = values.astype(np.int64)
    bits = NARROW_INT_BITS.get(fmt)
    if bits is not None:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        info = np.iinfo(dtype)
        lo, hi = info.min, info.max
    if rounded.size and (rounded.min() < lo or rounded.max() > hi):
        raise DecodeError(
            f"decoded value outside the range {lo}..{hi} of output format {fmt}", clause="12.6"
        )
    return rounded.astype(dtype)
