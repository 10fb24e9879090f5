"""Floating-point formats numpy lacks: bfloat16, float8_e4m3fn and float8_e5m2.

Checkpoints hold them (safetensors ``BF16``, ``F8_E4M3``, ``F8_E5M2``; torch's dtypes of
the same names).  nnc reads them as float32, which holds every value of each exactly,
records the original name in the stream's metadata (spec 6.2.1), and converts back on
writing: round to nearest, ties to even.  Finite values beyond a format's largest finite
value saturate to it (a lossy reconstruction never becomes inf or NaN); inf and NaN keep
their sign (float8_e4m3fn has no inf: it becomes NaN).

This module is the one home of those formats: their names, bit layouts, storage
integers, and the conversions.  It needs numpy only.

Examples
--------
>>> import numpy as np
>>> from nnc import narrow_floats as nf
>>> nf.to_float32("float8_e4m3fn", np.array([0x38, 0x7E, 0x01], np.uint8)).tolist()
[1.0, 448.0, 0.001953125]
>>> nf.from_float32("float8_e4m3fn", np.array([1.0, 500.0, 1.0625])).tolist()  # saturates; ties to even
[56, 126, 56]
>>> nf.itemsize("bfloat16"), nf.itemsize("float8_e5m2"), nf.itemsize("int64")
(2, 1, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class NarrowFloat:
    """One format: its name (torch's), bit layout and names in files."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    safetensors: str  # the dtype code in a safetensors header
    has_inf: bool  # IEEE-style: the top exponent holds inf and NaN; otherwise only all-ones is NaN

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def storage(self) -> np.dtype:
        """The unsigned integer dtype holding its bit patterns (little-endian)."""
        return np.dtype("<u2") if self.bits == 16 else np.dtype("u1")


#: The formats by name (torch's dtype names without ``torch.``).
NARROW_FLOATS = {
    f.name: f
    for f in (
        NarrowFloat("bfloat16", 8, 7, "BF16", True),
        NarrowFloat("float8_e4m3fn", 4, 3, "F8_E4M3", False),
        NarrowFloat("float8_e5m2", 5, 2, "F8_E5M2", True),
    )
}

#: safetensors dtype code -> format name
BY_SAFETENSORS_CODE = {f.safetensors: f.name for f in NARROW_FLOATS.values()}

#: The 8-bit formats, whose tensors the encoder codes exactly (a codebook of their values)
FLOAT8 = frozenset(name for name, f in NARROW_FLOATS.items() if f.bits == 8)


def is_narrow(name) -> bool:
    """Whether ``name`` names one of these formats."""
    return isinstance(name, str) and name in NARROW_FLOATS


def itemsize(name: str) -> int:
    """Bytes per element of a dtype name, these formats included.

    Raises
    ------
    TypeError
        If numpy does not know the name either.
    """
    f = NARROW_FLOATS.get(name)
    return f.bits // 8 if f is not None else np.dtype(name).itemsize


def file_dtype(name) -> np.dtype:
    """The little-endian dtype of the bytes a model file holds for a tensor of dtype ``name``: a format's storage
    integers for these formats, the dtype itself for any other."""
    f = NARROW_FLOATS.get(str(name))
    return (f.storage if f is not None else np.dtype(name)).newbyteorder("<")


def to_file_values(name, values) -> np.ndarray:
    """``values`` as a model file holds a tensor of dtype ``name`` (:func:`file_dtype`): these formats as their
    bit patterns (:func:`from_float32`), any other dtype cast to it; the shape is kept."""
    values = np.asarray(values)
    if is_narrow(str(name)):
        return np.asarray(from_float32(str(name), values)).astype(file_dtype(name), copy=False).reshape(values.shape)
    return values.astype(file_dtype(name), copy=False)


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) to float32 values, exactly (a shift: no table)."""
    bits = np.asarray(raw).astype(np.uint32)
    np.left_shift(bits, 16, out=bits)  # in place: no second tensor-sized temporary
    return bits.view(np.float32)


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16); NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(np.ascontiguousarray(x, dtype=np.float32))
    if nan.any():  # (rounding could carry a NaN's payload into the sign bit)
        out[nan] = ((bits[nan] >> 16) & 0x8000) | 0x7FC0
    return out


@cache
def _values(name: str) -> np.ndarray:
    """float32 value of every bit pattern of an 8-bit format (index = pattern)."""
    f = NARROW_FLOATS[name]
    codes = np.arange(1 << f.bits)
    sign = np.where(codes >> (f.bits - 1), -1.0, 1.0)
    exponent = (codes >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1)
    mantissa = codes & ((1 << f.mantissa_bits) - 1)
    bias = (1 << (f.exponent_bits - 1)) - 1
    normal = (1 + mantissa / (1 << f.mantissa_bits)) * np.exp2(exponent.astype(float) - bias)
    subnormal = mantissa / (1 << f.mantissa_bits) * 2.0 ** (1 - bias)
    values = sign * np.where(exponent == 0, subnormal, normal)
    top = exponent == (1 << f.exponent_bits) - 1
    nan = top & (mantissa != 0) if f.has_inf else top & (mantissa == (1 << f.mantissa_bits) - 1)
    if f.has_inf:
        values[top & (mantissa == 0)] = sign[top & (mantissa == 0)] * np.inf
    values[nan] = np.copysign(np.nan, sign[nan])  # (a NaN keeps its sign: from_float32 gives it back)
    return values.astype(np.float32)


@cache
def _positive_finite(name: str) -> np.ndarray:
    """The positive finite values of an 8-bit format, in pattern order (which is value order)."""
    values = _values(name)[: 1 << (NARROW_FLOATS[name].bits - 1)]
    return values[np.isfinite(values)].astype(np.float64)


def largest(name: str) -> float:
    """The largest finite value of a format."""
    if NARROW_FLOATS[name].bits == 16:
        return float(bfloat16_to_float32(np.array([0x7F7F], np.uint16))[0])
    return float(_positive_finite(name)[-1])


def smallest_step(name: str) -> float:
    """The spacing of a format's subnormals: every finite value is an integer multiple of it."""
    f = NARROW_FLOATS[name]
    return 2.0 ** (2 - (1 << (f.exponent_bits - 1)) - f.mantissa_bits)


def to_float32(name: str, raw: np.ndarray) -> np.ndarray:
    """Bit patterns of a format (its storage integers) to float32 values, exactly."""
    if NARROW_FLOATS[name].bits == 16:
        return bfloat16_to_float32(raw)
    return _values(name)[np.asarray(raw, dtype=np.uint8)]


def as_stored(dtype, x: np.ndarray) -> np.ndarray:
    """Values as a file of ``dtype`` holds them: rounded to the format for bfloat16 and float8 (as float32,
    exactly; what :func:`from_float32` writes), unchanged for any other dtype (None too).

    The decoder gives a bfloat16 tensor's reconstruction in float32; the model written from it holds those
    values rounded. Every measure of a decoded model (its SNR, a search's metric, a comparison) takes them so.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.narrow_floats import as_stored
    >>> as_stored("bfloat16", np.array([1.0 + 2**-10], np.float32)).tolist(), as_stored("float32", [0.5])
    ([1.0], [0.5])
    """
    if dtype is None or not is_narrow(str(dtype)):
        return x
    return np.asarray(to_float32(str(dtype), from_float32(str(dtype), x)), np.float32).reshape(np.shape(x))


def from_float32(name: str, x: np.ndarray) -> np.ndarray:
    """Values to a format's bit patterns: nearest, ties to even; finite values saturate; inf and NaN keep the sign."""
    f = NARROW_FLOATS[name]
    x = np.asarray(x, dtype=np.float32)
    if f.bits == 16:
        big = np.isfinite(x) & (np.abs(x) > largest(name))
        return float32_to_bfloat16(np.where(big, np.sign(x) * np.float32(largest(name)), x) if big.any() else x)
    table = _positive_finite(name)
    magnitude = np.abs(x.astype(np.float64))
    above = np.minimum(np.searchsorted(table, magnitude), table.size - 1)  # first value >= |x| (or the largest)
    below = np.maximum(above - 1, 0)
    gap_below, gap_above = magnitude - table[below], table[above] - magnitude
    take_below = (gap_below < gap_above) | ((gap_below == gap_above) & (below % 2 == 0))
    code = np.where(take_below & (magnitude < table[above]), below, above).astype(np.uint8)
    sign = np.signbit(x).astype(np.uint8) << (f.bits - 1)
    if f.has_inf:
        inf_code = ((1 << f.exponent_bits) - 1) << f.mantissa_bits
        code = np.where(np.isinf(x), inf_code, code).astype(np.uint8)
    nan_code = (1 << (f.bits - 1)) - 1  # all exponent and mantissa bits
    code = np.where(np.isnan(x) | (np.isinf(x) & (not f.has_inf)), nan_code, code).astype(np.uint8)
    return (code | sign).astype(np.uint8)


__all__ = [
    "BY_SAFETENSORS_CODE",
    "as_stored",
    "FLOAT8",
    "NARROW_FLOATS",
    "NarrowFloat",
    "bfloat16_to_float32",
    "file_dtype",
    "float32_to_bfloat16",
    "from_float32",
    "is_narrow",
    "itemsize",
    "largest",
    "smallest_step",
    "to_file_values",
    "to_float32",
]
