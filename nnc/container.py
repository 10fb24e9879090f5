"""The NNR unit stream, declared with ``construct`` (spec 2-7).

Headers are bit-level structures parsed inside ``construct.Bitwise``; payloads
stay raw bytes (a memoryview of the input), never converted to bits.  Parsing
and building are symmetric: ``build(parse(b)) == b`` and ``parse(build(x)) == x``.

Structures and their clauses:

* descriptors u(n), i(n), ue(k), ie(k), flt(32), st, byte_alignment() — spec 2.1-2.7
* ``nnr_unit_size`` (2- or 4-byte form) — spec 3.2; ``nnr_unit_header`` — spec 3.3
* STR (``general_profile_idc``) — spec 4; MPS incl. performance maps — spec 5.1, 5.3
* LPS — spec 6.1; TPL — spec 6.2; QNT — spec 6.3 (AGG is rejected, 6.4)
* NDU header incl. codebook() and the entry-point list — spec 7.1-7.3

Field names are the element names of the spec.  ``codebook`` is exposed as the
list of codebook integers; ``entry_points`` as a list of {value, dq_state, offset}
where ``offset`` is the bit increment from the previous block row (spec 7.3).

Only :mod:`nnc.errors` exceptions leave this module, whatever the input.

The API is :func:`iter_units` / :func:`parse_stream` (with :class:`Unit` and
:func:`read_unit_size`) for reading, the ``build_*`` functions for writing, and
the constants of the unit and payload types.  The ``construct`` declarations
(descriptors such as ``UE`` and structures such as ``NDU_HEADER``) implement
them and are not part of the API.

Examples
--------
>>> import nnc
>>> from nnc import container
>>> stream = nnc.encode({"w": [[0.5, 1.0, 1.5]] * 2}, qp=-8, dq=False)
>>> units = container.parse_stream(stream)
>>> [(u.type_name, u.offset, u.size) for u in units]
[('NNR_STR', 0, 4), ('NNR_MPS', 4, 8), ('NNR_TPL', 12, 39), ('NNR_NDU', 51, 24)]
>>> ndu = units[-1]
>>> ndu.header.topology_elem_id, ndu.header.tensor_dimensions, ndu.header.dq_flag
('w', [2, 3], 0)
>>> container.build_ndu(dict(ndu.header), ndu.payload) == stream[ndu.offset:ndu.end]
True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

import construct as cs
from construct import Container, If, Struct, this

from .engine.matrix import block_row_count
from .errors import DecodeError, EncodeError, TruncatedError, UnsupportedError

# -- enumerations (spec 3.4, 7.4) --------------------------------------------------
#: ``nnr_unit_type`` values (spec 3.4), in order the start unit, model parameter set,
#: layer parameter set, topology, quantisation, compressed data (NDU) and aggregate units.
NNR_STR, NNR_MPS, NNR_LPS, NNR_TPL, NNR_QNT, NNR_NDU, NNR_AGG = range(7)
#: Name of each ``nnr_unit_type``, as in :attr:`Unit.type_name`.
UNIT_TYPE_NAMES = {0: "NNR_STR", 1: "NNR_MPS", 2: "NNR_LPS", 3: "NNR_TPL", 4: "NNR_QNT", 5: "NNR_NDU", 6: "NNR_AGG"}
#: ``nnr_compressed_data_unit_payload_type`` values (spec 7.4).
NNR_PT_INT, NNR_PT_FLOAT, NNR_PT_RAW_FLOAT, NNR_PT_BLOCK = range(4)
#: ``compressed_parameter_types`` bits of a BLOCK NDU (spec 7.4), in order
#: decomposition, local scaling, batch norm and bias.
NNR_CPT_DC, NNR_CPT_LS, NNR_CPT_BN, NNR_CPT_BI = 0x01, 0x02, 0x04, 0x08
#: Quantisation method flags (spec 5.1), uniform (scalar) quantisation and codebook.
NNR_QSU, NNR_QCB = 0x01, 0x02
#: The spec clause of each unit type's syntax, for error messages.
UNIT_CLAUSE = {0: "4", 1: "5.1", 2: "6.1", 3: "6.2", 4: "6.3", 5: "7.1", 6: "6.4"}

#: Longest Exp-Golomb prefix (zero bits) accepted (spec 2.3).
MAX_UE_PREFIX = 32
#: Longest st string accepted, in bytes (spec 2.6); a topology or quantisation unit's string is bounded by its unit.
MAX_STRING_BYTES = 1 << 16
#: Most tensor dimensions accepted (spec 7.4).
MAX_DIMENSIONS = 64


class SyntaxViolation(cs.ConstructError):
    """A value the syntax forbids, found while parsing."""

    def __init__(self, message: str, clause: str):
        super().__init__(message)
        self.clause = clause


# -- descriptors (spec 2) --------------------------------------------------------------


def _read_bit(stream, path) -> int:
    """One bit, u(1) (spec 2.1)."""
    b = cs.stream_read(stream, 1, path)
    return b[0] & 1


def U(n: int):
    """u(n): n-bit unsigned, MSB first (spec 2.1)."""
    return cs.BitsInteger(n)


def I(n: int):  # noqa: E743
    """i(n): n-bit two's complement (spec 2.2)."""
    return cs.BitsInteger(n, signed=True)


class UE(cs.Construct):
    """ue(k): k-th order Exp-Golomb (spec 2.3)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def _parse(self, stream, context, path):
        k, value = self.k, 0
        zeros = 0
        while _read_bit(stream, path) == 0:
            value += 1 << k
            k += 1
            zeros += 1
            if zeros > MAX_UE_PREFIX:
                raise SyntaxViolation("Exp-Golomb prefix longer than 32 bits", "2.3")
        suffix = 0
        for _ in range(k):
            suffix = (suffix << 1) | _read_bit(stream, path)
        return value + suffix

    def _build(self, obj, stream, context, path):
        value = int(obj)
        if value < 0:
            raise cs.ExplicitError(f"ue({self.k}) cannot code {value}")
        k, bits = self.k, []
        while value >= (1 << k):
            bits.append(0)
            value -= 1 << k
            k += 1
        bits.append(1)
        bits.extend((value >> (k - 1 - i)) & 1 for i in range(k))
        cs.stream_write(stream, bytes(bits), len(bits), path)
        return obj


class IE(cs.Adapter):
    """ie(k): signed Exp-Golomb, v -> 2v-1 (v > 0), -2v (v <= 0) (spec 2.4)."""

    def __init__(self, k: int):
        super().__init__(UE(k))

    def _decode(self, obj, context, path):
        return (obj + 1) // 2 if obj & 1 else -(obj // 2)

    def _encode(self, obj, context, path):
        v = int(obj)
        return 2 * v - 1 if v > 0 else -2 * v


class Flt(cs.Construct):
    """flt(32): IEEE-754 float32, 4 bytes least significant first, at any bit position (spec 2.5)."""

    def _parse(self, stream, context, path):
        raw = bytes(cs.BitsInteger(8)._parse(stream, context, path) for _ in range(4))
        return struct.unpack("<f", raw)[0]

    def _build(self, obj, stream, context, path):
        for b in struct.pack("<f", float(obj)):
            cs.BitsInteger(8)._build(b, stream, context, path)
        return obj


class St(cs.Construct):
    """st: UTF-8 string with a 0x00 terminator, byte-aligned (spec 2.6)."""

    def _parse(self, stream, context, path):
        out = bytearray()
        while True:
            b = cs.BitsInteger(8)._parse(stream, context, path)
            if b == 0:
                break
            out.append(b)
            if len(out) > MAX_STRING_BYTES:
                raise SyntaxViolation("string longer than 65536 bytes", "2.6")
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise SyntaxViolation("string is not valid UTF-8", "2.6") from None

    def _build(self, obj, stream, context, path):
        raw = str(obj).encode("utf-8")
        if b"\x00" in raw:
            raise cs.ExplicitError("a st string cannot contain NUL")
        if len(raw) > MAX_STRING_BYTES:
            raise cs.ExplicitError(f"a st string is limited to {MAX_STRING_BYTES} bytes (spec 2.6)")
        for b in raw + b"\x00":
            cs.BitsInteger(8)._build(b, stream, context, path)
        return obj


class ByteAlignment(cs.Construct):
    """byte_alignment(): a '1' bit, then '0' bits to the byte boundary (spec 2.7)."""

    #: The syntax elements this construct reads (spec 2.7).
    ELEMENTS = ("alignment_bit_equal_to_one", "alignment_bit_equal_to_zero")

    def __init__(self):
        super().__init__()
        self.flagbuildnone = True

    def _parse(self, stream, context, path):
        _read_bit(stream, path)
        pad = (-cs.stream_tell(stream, path)) % 8
        if pad:
            cs.stream_read(stream, pad, path)
        return None

    def _build(self, obj, stream, context, path):
        pad = (-(cs.stream_tell(stream, path) + 1)) % 8
        cs.stream_write(stream, b"\x01" + b"\x00" * pad, 1 + pad, path)
        return None


class Bits(cs.Adapter):
    """u(n) read as n/8 bytes, for the SHA-256/512 parent identifiers (spec 2.1, 7.1)."""

    def __init__(self, nbits):
        super().__init__(cs.BitsInteger(nbits))
        self.nbytes = nbits // 8

    def _decode(self, obj, context, path):
        return obj.to_bytes(self.nbytes, "big")

    def _encode(self, obj, context, path):
        return int.from_bytes(bytes(obj), "big")


class DimensionCount(UE):
    """count_tensor_dimensions: ue(1), at most 64 (spec 7.4)."""

    def __init__(self):
        super().__init__(1)

    def _parse(self, stream, context, path):
        value = super()._parse(stream, context, path)
        if value > MAX_DIMENSIONS:
            raise SyntaxViolation(f"{value} tensor dimensions (at most {MAX_DIMENSIONS})", "7.4")
        return value


FLAG = U(1)
FLT = Flt()
ST = St()
ALIGN = ByteAlignment()

# -- codebook() (spec 7.2) --------------------------------------------------------------


class Codebook(cs.Construct):
    """codebook(): egk, size, centre offset, zero value and delta-coded entries (spec 7.2)."""

    #: The syntax elements this construct reads (spec 7.2); the deltas come back summed up as ``codebook``.
    ELEMENTS = (
        "codebook_egk",
        "codebook_size",
        "codebook_center_offset",
        "codebook_zero_value",
        "codebook_delta_left",
        "codebook_delta_right",
    )

    def _parse(self, stream, context, path):
        egk = cs.BitsInteger(4)._parse(stream, context, path)
        size = UE(2)._parse(stream, context, path)
        centre = IE(2)._parse(stream, context, path)
        zero_value = IE(7)._parse(stream, context, path)
        zero = (size >> 1) + centre
        if size < 1 or not 0 <= zero < size:
            raise SyntaxViolation(f"codebook of size {size} with zero offset {zero}", "7.2")
        book = {zero: zero_value}
        for j in range(zero - 1, -1, -1):
            book[j] = book[j + 1] - UE(egk)._parse(stream, context, path) - 1
        for j in range(zero + 1, size):
            book[j] = book[j - 1] + UE(egk)._parse(stream, context, path) + 1
        entries = [book[j] for j in range(size)]
        if entries[0] < -(2**31) or entries[-1] > 2**31 - 1:
            raise SyntaxViolation("codebook entry outside int32", "7.2")
        return Container(
            codebook_egk=egk,
            codebook_size=size,
            codebook_center_offset=centre,
            codebook_zero_value=zero_value,
            codebook=entries,
        )

    def _build(self, obj, stream, context, path):
        entries = [int(v) for v in obj["codebook"]]
        size = len(entries)
        centre = int(obj.get("codebook_center_offset", 0))
        egk = int(obj.get("codebook_egk", 0))
        zero = (size >> 1) + centre
        if size < 1 or not 0 <= zero < size or any(b <= a for a, b in zip(entries, entries[1:])):
            raise cs.ExplicitError("a codebook is a strictly increasing list with the zero offset inside it")
        cs.BitsInteger(4)._build(egk, stream, context, path)
        UE(2)._build(size, stream, context, path)
        IE(2)._build(centre, stream, context, path)
        IE(7)._build(entries[zero], stream, context, path)
        for j in range(zero - 1, -1, -1):
            UE(egk)._build(entries[j + 1] - entries[j] - 1, stream, context, path)
        for j in range(zero + 1, size):
            UE(egk)._build(entries[j] - entries[j - 1] - 1, stream, context, path)
        return obj


def codebook_zero_offset(size: int, center_offset: int) -> int:
    """CbZeroOffset (spec 7.2): the position of the zero index in a codebook.

    Parameters
    ----------
    size : int
        ``codebook_size``.
    center_offset : int
        ``codebook_center_offset``.

    Returns
    -------
    int
        ``(size >> 1) + center_offset``.

    Examples
    --------
    >>> from nnc.container import codebook_zero_offset
    >>> codebook_zero_offset(5, 0), codebook_zero_offset(4, -1)
    (2, 1)
    """
    return (size >> 1) + center_offset


def best_codebook_egk(entries) -> int:
    """The egk in 0..15 that codes the codebook deltas in the fewest bits (informative).

    The entries after the first are coded as ue(egk) of the differences minus
    one (spec 7.2); the smallest egk wins a tie.

    Parameters
    ----------
    entries : list of int
        The codebook, strictly increasing.

    Returns
    -------
    int
        The Exp-Golomb order ``codebook_egk``.

    Examples
    --------
    >>> from nnc.container import best_codebook_egk
    >>> best_codebook_egk([-1, 0, 1]), best_codebook_egk([-8, -4, 0, 4, 8])
    (0, 2)
    """
    deltas = [int(b) - int(a) - 1 for a, b in zip(entries, entries[1:])]
    return min(range(16), key=lambda k: ue_bits(deltas, k))


def ue_bits(values, k: int) -> int:
    """The bits of ue(k) codes (spec 2.3) of the non-negative integers ``values``, in all: 2n + 1 + k each, n the
    prefix's zeros, ``floor(log2((v >> k) + 1))``.

    Parameters
    ----------
    values : iterable of int
        The values coded, each >= 0.
    k : int
        The Exp-Golomb order.

    Returns
    -------
    int
        Their bits.

    Examples
    --------
    >>> from nnc.container import ue_bits
    >>> ue_bits([0], 0), ue_bits([1, 2], 0), ue_bits([3], 0), ue_bits([3], 2)
    (1, 6, 5, 3)
    """
    return sum(2 * ((int(v) >> k) + 1).bit_length() - 1 + k for v in values)


def codebook_bits(entries, center_offset: int = 0) -> int:
    """The bits of codebook() (spec 7.2) for ``entries`` at ``codebook_center_offset``, with
    :func:`best_codebook_egk`'s order (informative: what an encoder weighs a codebook at).

    Parameters
    ----------
    entries : list of int
        The codebook, strictly increasing.
    center_offset : int
        ``codebook_center_offset``.

    Returns
    -------
    int
        Bits, as built.

    Examples
    --------
    >>> from nnc.container import codebook_bits
    >>> codebook_bits([-1, 0, 1])   # egk 4, ue(2) size 3, ie(2) centre 3, ie(7) zero value 8, two ue(0) deltas 2
    20
    """
    entries = [int(v) for v in entries]
    size = len(entries)
    zero_value = entries[(size >> 1) + center_offset]
    deltas = [b - a - 1 for a, b in zip(entries, entries[1:])]
    signed = [2 * v - 1 if v > 0 else -2 * v for v in (center_offset, zero_value)]
    header = 4 + ue_bits([size], 2) + ue_bits([signed[0]], 2) + ue_bits([signed[1]], 7)
    return header + min(ue_bits(deltas, k) for k in range(16))


# -- entry points (spec 7.3) ---------------------------------------------------------------


def entry_point_count(ctx) -> int:
    """numBlockRowsMinus1 of the NDU's weight (G and H for DC blocks) (spec 7.3).

    Counted with the signalled scan order, even where the effective one is 0 (spec 7.3, 11.1).
    """
    scan = ctx.scan_order  # > 0: the list is read only then (see INPUT_PARAMETERS)
    if ctx._.nnr_compressed_data_unit_payload_type == NNR_PT_BLOCK and ctx.compressed_parameter_types & NNR_CPT_DC:
        return max(0, block_row_count(ctx.g_number_of_rows, scan) - 1) + max(
            0, block_row_count(ctx.decomposition_rank, scan) - 1
        )
    return max(0, block_row_count(ctx.tensor_dimensions[0], scan) - 1)


class EntryPoints(cs.Construct):
    """cabac_entry_point_list: value, dq_state and second-order differential offsets (spec 7.3)."""

    #: The syntax elements this construct reads (spec 7.3), returned as records of value, dq_state and offset.
    ELEMENTS = ("entry_point_value", "entry_point_dq_state", "entry_point_offset_first", "entry_point_offset_delta")

    def _parse(self, stream, context, path):
        count = entry_point_count(context)
        dq = context._root.get("_dq_flag", 0)
        out, prev = [], 0
        for j in range(count):
            value = cs.BitsInteger(8)._parse(stream, context, path)
            state = cs.BitsInteger(3)._parse(stream, context, path) if dq else 0
            if j == 0:
                offset = UE(11)._parse(stream, context, path)
            else:
                offset = prev + IE(7)._parse(stream, context, path)
            prev = offset
            out.append(Container(value=value, dq_state=state, offset=offset))
        return out

    def _build(self, obj, stream, context, path):
        count = entry_point_count(context)
        dq = context._root.get("_dq_flag", 0)
        obj = list(obj or [])
        if len(obj) != count:
            raise cs.ExplicitError(f"{len(obj)} entry points given, the dimensions need {count}")
        prev = 0
        for j, e in enumerate(obj):
            cs.BitsInteger(8)._build(int(e["value"]), stream, context, path)
            if dq:
                cs.BitsInteger(3)._build(int(e.get("dq_state", 0)), stream, context, path)
            if j == 0:
                UE(11)._build(int(e["offset"]), stream, context, path)
            else:
                IE(7)._build(int(e["offset"]) - prev, stream, context, path)
            prev = int(e["offset"])
        return obj


# -- performance maps (spec 5.3) ------------------------------------------------------------


def _entries(count_field):
    """The loop count over i of a performance map: the count element minus one (spec 5.3)."""
    return lambda ctx: max(0, ctx[count_field] - 1)


SPARSIFICATION_MAP = Struct(
    "spm_count_thresholds" / U(8),
    "entries"
    / cs.Array(
        _entries("spm_count_thresholds"),
        Struct(
            "sparsification_threshold" / FLT,
            "non_zero_ratio" / FLT,
            "spm_nn_accuracy" / FLT,
            "spm_count_classes" / U(8),
            "spm_class_bitmask" / UE(7),
            "spm_nn_class_accuracy" / cs.Array(this.spm_count_classes, FLT),
        ),
    ),
)
PRUNING_MAP = Struct(
    "ppm_count_pruning_ratios" / U(8),
    "entries"
    / cs.Array(
        _entries("ppm_count_pruning_ratios"),
        Struct(
            "pruning_ratio" / FLT,
            "ppm_nn_accuracy" / FLT,
            "ppm_count_classes" / U(8),
            "ppm_class_bitmask" / UE(7),
            "ppm_nn_class_accuracy" / cs.Array(this.ppm_count_classes, FLT),
        ),
    ),
)
UNIFICATION_MAP = Struct(
    "upm_count_thresholds" / U(8),
    "entries"
    / cs.Array(
        _entries("upm_count_thresholds"),
        Struct(
            "count_reshaped_tensor_dimension" / UE(1),
            "reshaped_tensor_dimensions" / cs.Array(lambda c: max(0, c.count_reshaped_tensor_dimension - 1), UE(7)),
            "_align" / ALIGN,
            "count_super_block_dimension" / U(8),
            "super_block_dimensions" / cs.Array(lambda c: max(0, c.count_super_block_dimension - 1), U(8)),
            "count_block_dimension" / U(8),
            "block_dimensions" / cs.Array(lambda c: max(0, c.count_block_dimension - 1), U(8)),
            "unification_threshold" / FLT,
            "upm_nn_accuracy" / FLT,
            "upm_count_classes" / U(8),
            "upm_class_bitmask" / UE(7),
            # looped over the bitmask value, as the reference software does (spec 5.3)
            "upm_nn_class_accuracy" / cs.Array(this.upm_class_bitmask, FLT),
        ),
    ),
)
DECOMPOSITION_MAP = Struct(
    "dpm_count_thresholds" / U(8),
    "entries"
    / cs.Array(
        _entries("dpm_count_thresholds"),
        Struct(
            "mse_threshold" / FLT,
            "dpm_nn_accuracy" / FLT,
            "nn_reduction_ratio" / FLT,
            "dpm_count_classes" / U(16),
            "dpm_nn_class_accuracy" / cs.Array(this.dpm_count_classes, FLT),
        ),
    ),
)

# -- unit structures -----------------------------------------------------------------------

UNIT_HEADER = Struct(
    "nnr_unit_type" / U(6),
    "independently_decodable_flag" / FLAG,
    "partial_data_counter_present_flag" / FLAG,
    "partial_data_counter" / If(this.partial_data_counter_present_flag, U(8)),
)

STR_HEADER = Struct("general_profile_idc" / U(8))

MPS_PAYLOAD = Struct(
    "topology_carriage_flag" / FLAG,
    "mps_sparsification_flag" / FLAG,
    "mps_pruning_flag" / FLAG,
    "mps_unification_flag" / FLAG,
    "mps_decomposition_performance_map_flag" / FLAG,
    "mps_quantization_method_flags" / U(3),
    "mps_topology_indexed_reference_flag" / FLAG,
    "nnr_reserved_zero_7bits" / If(this._.profile == 0, U(7)),
    "base_model_id_present_flag" / If(this._.profile == 1, FLAG),
    "validation_set_performance_present_flag" / If(this._.profile == 1, FLAG),
    "metric_type_performance_map_valid_flag" / If(this._.profile == 1, FLAG),
    "mps_parent_signalling_enabled_flag" / If(this._.profile == 1, FLAG),
    "nnr_pre_flag" / If(this._.profile == 1, FLAG),
    "nnr_reserved_zero_2bits" / If(this._.profile == 1, U(2)),
    "base_model_id" / If(lambda c: c._.profile == 1 and c.base_model_id_present_flag, ST),
    "performance_metric_type"
    / If(
        lambda c: (
            c._.profile == 1 and (c.validation_set_performance_present_flag or c.metric_type_performance_map_valid_flag)
        ),
        ST,
    ),
    "mps_qp_density" / If(this.mps_quantization_method_flags & (NNR_QSU | NNR_QCB), U(3)),
    "mps_quantization_parameter" / If(this.mps_quantization_method_flags & (NNR_QSU | NNR_QCB), I(13)),
    "sparsification_performance_map" / If(this.mps_sparsification_flag, SPARSIFICATION_MAP),
    "pruning_performance_map" / If(this.mps_pruning_flag, PRUNING_MAP),
    "unification_performance_map" / If(this.mps_unification_flag, UNIFICATION_MAP),
    "decomposition_performance_map" / If(this.mps_decomposition_performance_map_flag, DECOMPOSITION_MAP),
    "validation_set_performance" / If(lambda c: c._.profile == 1 and c.validation_set_performance_present_flag, FLT),
    "_align" / ALIGN,
)

LPS_HEADER = Struct("lps_self_contained_flag" / FLAG, "lps_reserved_7bits" / U(7))
LPS_PAYLOAD = Struct(
    "lps_reserved_bit" / FLAG,
    "lps_sparsification_flag" / FLAG,
    "lps_pruning_flag" / FLAG,
    "lps_unification_flag" / FLAG,
    "lps_quantization_method_flags" / U(3),
    "lps_reserved_bit2" / FLAG,
    "lps_qp_density" / If(this.lps_quantization_method_flags & (NNR_QSU | NNR_QCB), U(3)),
    "lps_quantization_parameter" / If(this.lps_quantization_method_flags & (NNR_QSU | NNR_QCB), I(13)),
    "sparsification_performance_map" / If(this.lps_sparsification_flag, SPARSIFICATION_MAP),
    "pruning_performance_map" / If(this.lps_pruning_flag, PRUNING_MAP),
    "unification_performance_map" / If(this.lps_unification_flag, UNIFICATION_MAP),
    "_align" / ALIGN,
)

TPL_HEADER = Struct("topology_storage_format" / U(8), "topology_compression_format" / U(8))
QNT_HEADER = Struct("quantization_storage_format" / U(8), "quantization_compression_format" / U(8))


def _multiple(c):
    """MULT of the NDU header conditions (spec 7.1)."""
    return bool(c.nnr_multiple_topology_elements_present_flag)


def _indexed(c):
    """IDX of the NDU header conditions: the MPS's mps_topology_indexed_reference_flag (spec 7.1)."""
    return bool(c._.get("indexed", False))


def _ndims(c):
    """D of the NDU header conditions (spec 7.1)."""
    return c.count_tensor_dimensions if c.get("tensor_dimensions_flag") else 0


INPUT_PARAMETERS = Struct(
    "tensor_dimensions_flag" / FLAG,
    "cabac_unary_length_flag" / FLAG,
    "compressed_parameter_types" / U(4),
    "decomposition_rank" / If(this.compressed_parameter_types & NNR_CPT_DC, UE(3)),
    "g_number_of_rows" / If(this.compressed_parameter_types & NNR_CPT_DC, UE(3)),
    "count_tensor_dimensions" / If(this.tensor_dimensions_flag, DimensionCount()),
    "tensor_dimensions" / If(this.tensor_dimensions_flag, cs.Array(this.count_tensor_dimensions, UE(7))),
    "cabac_unary_length_minus1" / If(this.cabac_unary_length_flag, U(8)),
    "codebook_dc"
    / If(
        lambda c: (
            c._.nnr_compressed_data_unit_payload_type == NNR_PT_BLOCK
            and c.compressed_parameter_types & NNR_CPT_DC
            and c._.codebook_present_flag
        ),
        Codebook(),
    ),
    "first_tensor_dimension_shift" / If(lambda c: c._._.profile == 1 and _ndims(c) > 1, UE(1)),
    "scan_order" / If(lambda c: _ndims(c) > 1, U(4)),
    "entry_points" / If(lambda c: _ndims(c) > 1 and c.scan_order, EntryPoints()),
)

NDU_HEADER = Struct(
    "nnr_compressed_data_unit_payload_type" / U(5),
    "nnr_multiple_topology_elements_present_flag" / FLAG,
    "nnr_decompressed_data_format_present_flag" / FLAG,
    "input_parameters_present_flag" / FLAG,
    "count_topology_elements_minus2" / If(_multiple, UE(7)),
    "_align_ids" / If(lambda c: _multiple(c) and not _indexed(c), ALIGN),
    "topology_elem_ids"
    / If(lambda c: _multiple(c) and not _indexed(c), cs.Array(lambda c: c.count_topology_elements_minus2 + 2, ST)),
    "topology_elem_id_indices"
    / If(lambda c: _multiple(c) and _indexed(c), cs.Array(lambda c: c.count_topology_elements_minus2 + 2, UE(7))),
    "_align_indices" / If(lambda c: _multiple(c) and _indexed(c), ALIGN),
    "topology_elem_id" / If(lambda c: not _multiple(c) and not _indexed(c), ST),
    "topology_elem_id_index" / If(lambda c: not _multiple(c) and _indexed(c), UE(7)),
    "node_id_present_flag" / If(this._.profile == 1, FLAG),
    "device_id" / If(lambda c: c._.profile == 1 and c.node_id_present_flag, UE(1)),
    "parameter_id" / If(lambda c: c._.profile == 1 and c.node_id_present_flag, UE(5)),
    "put_node_depth" / If(lambda c: c._.profile == 1 and c.node_id_present_flag, UE(4)),
    "parent_node_id_present_flag" / If(lambda c: c._.profile == 1 and c._.parent_signalling, FLAG),
    "parent_node_id_type" / If(lambda c: c.parent_node_id_present_flag, U(2)),
    "temporal_context_modeling_flag" / If(lambda c: c.parent_node_id_present_flag, FLAG),
    "parent_device_id" / If(lambda c: c.parent_node_id_present_flag and c.parent_node_id_type == 0, UE(1)),
    "parent_parameter_id"
    / If(lambda c: c.parent_node_id_present_flag and c.parent_node_id_type == 0 and not c.node_id_present_flag, UE(5)),
    "parent_put_node_depth"
    / If(lambda c: c.parent_node_id_present_flag and c.parent_node_id_type == 0 and not c.node_id_present_flag, UE(4)),
    "parent_node_payload_sha256"
    / If(lambda c: c.parent_node_id_present_flag and c.parent_node_id_type == 1, Bits(256)),
    "parent_node_payload_sha512"
    / If(lambda c: c.parent_node_id_present_flag and c.parent_node_id_type == 2, Bits(512)),
    "codebook_present_flag"
    / If(lambda c: c.nnr_compressed_data_unit_payload_type in (NNR_PT_FLOAT, NNR_PT_BLOCK), FLAG),
    "codebook" / If(this.codebook_present_flag, Codebook()),
    "dq_flag" / If(lambda c: c.nnr_compressed_data_unit_payload_type in (NNR_PT_INT, NNR_PT_FLOAT, NNR_PT_BLOCK), FLAG),
    "_dq" / cs.Computed(lambda c: c._root.__setitem__("_dq_flag", c.dq_flag or 0)),
    "nnr_decompressed_data_format" / If(this.nnr_decompressed_data_format_present_flag, U(7)),
    "input_parameters" / If(this.input_parameters_present_flag, INPUT_PARAMETERS),
    "_align" / ALIGN,
)

_TYPE_STRUCTS = {
    NNR_STR: (STR_HEADER, None),
    NNR_MPS: (None, MPS_PAYLOAD),
    NNR_LPS: (LPS_HEADER, LPS_PAYLOAD),
    NNR_TPL: (TPL_HEADER, None),
    NNR_QNT: (QNT_HEADER, None),
    NNR_NDU: (NDU_HEADER, None),
}

#: Syntax elements read by hand rather than through a construct: the size field (spec 3.2),
#: read by :func:`read_unit_size` before a unit's structure is known.
UNIT_SIZE_ELEMENTS = ("nnr_unit_size_flag", "nnr_unit_size")
#: ... and the string of a topology or quantisation unit (spec 6.2, 6.3), read by :func:`_read_unit_string` as
#: bytes (it may be long, and need not be text); in :attr:`Unit.header` it is ``data``.
UNIT_STRING_ELEMENTS = {NNR_TPL: "topology_data", NNR_QNT: "quantization_data"}

#: Fields of the constructs above that are not one syntax element of the same name in spec/'s
#: tables: the spec names they stand for (``name()`` for a syntax structure), or () for a field
#: that only groups elements.  tests/test_spec_citations.py checks the declarations against spec/.
FIELD_SPEC_NAMES = {
    "codebook_dc": ("codebook()",),  # the second codebook() of a DC block (7.1)
    "entry_points": ("cabac_entry_point_list()",),  # 7.3
    "input_parameters": (),  # the elements under input_parameters_present_flag (7.1)
    "entries": (),  # the loop over i of a performance map (5.3)
    "lps_reserved_bit": ("lps_reserved_1bit_a",),  # 6.1.1
    "lps_reserved_bit2": ("lps_reserved_1bit_b",),  # 6.1.1
}

# Flattened views: the nested input_parameters and codebook containers are merged
# into the NDU header so that users see one flat record of spec element names.
_CODEBOOK_FIELDS = ("codebook_egk", "codebook_size", "codebook_center_offset", "codebook_zero_value")
_INPUT_FIELDS = tuple(name for name in (sc.name for sc in INPUT_PARAMETERS.subcons) if name)


# -- streams over memoryviews ------------------------------------------------------------


class _ViewReader:
    """A read-only byte stream over a memoryview, without copying it."""

    def __init__(self, view: memoryview, start: int = 0):
        self.view = view
        self.pos = start

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n is None or n < 0 else min(len(self.view), self.pos + n)
        out = bytes(self.view[self.pos : end])
        self.pos = end
        return out

    def tell(self) -> int:
        return self.pos


@dataclass
class Unit:
    """One NNR unit of a stream, as :func:`iter_units` parses it (spec 3).

    The parameters are the fields below.  ``header`` is a ``construct``
    Container (a dict with attribute access) of spec element names: the
    common unit header, then the type's own header and, for the parameter
    sets, topology and quantisation units, their payload syntax.  An NDU's
    header is flat: the elements of ``nnr_compressed_data_unit_header``,
    ``codebook()`` and the input parameters are all at the top level, with
    None for those absent.  ``payload`` is what follows the parsed syntax: the
    CABAC (or raw float) payload of an NDU, empty for the other types.

    Examples
    --------
    >>> import nnc
    >>> from nnc import container
    >>> unit = container.parse_stream(nnc.encode({"w": [1.0, 2.0]}))[-1]
    >>> unit.type == container.NNR_NDU, unit.type_name, unit.header.topology_elem_id
    (True, 'NNR_NDU', 'w')
    >>> unit.payload_offset - unit.offset + len(unit.payload) == unit.size
    True
    """

    #: ``nnr_unit_type`` (spec 3.4), one of ``NNR_STR`` ... ``NNR_AGG``.
    type: int
    #: Its name, e.g. ``"NNR_NDU"``.
    type_name: str
    #: Byte offset of the unit (its size field) in the stream.
    offset: int
    #: ``nnr_unit_size``, the unit's length in bytes including the size field.
    size: int
    #: The parsed syntax elements, by spec name.
    header: Container
    #: Byte offset of ``payload`` in the stream.
    payload_offset: int
    #: The bytes after the parsed syntax, a view into the input (not a copy).
    payload: memoryview

    @property
    def end(self) -> int:
        """Byte offset just past the unit, where the next one starts.

        Returns
        -------
        int
            ``offset + size``.

        Examples
        --------
        >>> import nnc
        >>> from nnc import container
        >>> units = container.parse_stream(nnc.encode({"w": [1.0, 2.0]}))
        >>> all(a.end == b.offset for a, b in zip(units, units[1:]))
        True
        """
        return self.offset + self.size


def _flatten_ndu(h: Container) -> Container:
    """The NDU header as one flat record of spec element names (spec 7.1, 7.2, 7.3)."""
    out = Container()
    for k, v in h.items():
        if k.startswith("_") or k in ("input_parameters", "codebook"):
            continue
        out[k] = v
    cb = h.get("codebook")
    if cb is not None:
        for f in _CODEBOOK_FIELDS:
            out[f] = cb[f]
        out["codebook"] = list(cb["codebook"])
    else:
        out["codebook"] = None
    ip = h.get("input_parameters")
    for f in _INPUT_FIELDS:
        out[f] = ip.get(f) if ip is not None else None
    if ip is not None and ip.get("tensor_dimensions") is not None:
        out["tensor_dimensions"] = list(ip["tensor_dimensions"])
    if ip is not None and ip.get("entry_points") is not None:
        out["entry_points"] = [
            Container(value=e.value, dq_state=e.dq_state, offset=e.offset) for e in ip["entry_points"]
        ]
    for k in ("topology_elem_ids", "topology_elem_id_indices"):
        if out.get(k) is not None:
            out[k] = list(out[k])
    return out


_NDU_DEFAULTS = dict(
    nnr_multiple_topology_elements_present_flag=0,
    nnr_decompressed_data_format_present_flag=0,
    input_parameters_present_flag=1,
)


def _unflatten_ndu(fields: dict) -> dict:
    fields = {**_NDU_DEFAULTS, **{k: v for k, v in fields.items() if v is not None or k not in _NDU_DEFAULTS}}
    ptype = fields.get("nnr_compressed_data_unit_payload_type")
    if ptype in (NNR_PT_FLOAT, NNR_PT_BLOCK) and fields.get("codebook_present_flag") is None:
        fields["codebook_present_flag"] = 0
    if ptype in (NNR_PT_INT, NNR_PT_FLOAT, NNR_PT_BLOCK) and fields.get("dq_flag") is None:
        fields["dq_flag"] = 0
    if fields.get("node_id_present_flag") is None:
        fields["node_id_present_flag"] = int(fields.get("device_id") is not None)
    if fields.get("parent_node_id_present_flag") is None:
        fields["parent_node_id_present_flag"] = int(fields.get("parent_node_id_type") is not None)
    h = {k: v for k, v in fields.items() if k not in _INPUT_FIELDS and k not in _CODEBOOK_FIELDS}
    if fields.get("codebook_present_flag"):
        h["codebook"] = {
            "codebook": fields["codebook"],
            "codebook_egk": fields.get("codebook_egk", best_codebook_egk(fields["codebook"])),
            "codebook_center_offset": fields.get("codebook_center_offset", 0),
        }
    else:
        h["codebook"] = None
    if fields.get("input_parameters_present_flag", 1):
        ip = {f: fields.get(f) for f in _INPUT_FIELDS}
        if ip.get("tensor_dimensions_flag") is None:
            ip["tensor_dimensions_flag"] = int(fields.get("tensor_dimensions") is not None)
        if ip.get("cabac_unary_length_flag") is None:
            ip["cabac_unary_length_flag"] = int(fields.get("cabac_unary_length_minus1") is not None)
        ip["compressed_parameter_types"] = ip.get("compressed_parameter_types") or 0
        if ip.get("tensor_dimensions") is not None:
            ip["count_tensor_dimensions"] = len(ip["tensor_dimensions"])
        ndims = len(ip.get("tensor_dimensions") or [])
        if ndims > 1:
            ip["scan_order"] = ip.get("scan_order") or 0
            ip["first_tensor_dimension_shift"] = ip.get("first_tensor_dimension_shift") or 0
        ip["entry_points"] = ip.get("entry_points") or []
        h["input_parameters"] = ip
    else:
        h["input_parameters"] = None
    return h


# -- parsing -------------------------------------------------------------------------------------


def _parse_struct(structure, reader, ctx, clause, base, unit_offset):
    """Parse one bit-level structure from a reader; convert every failure to our errors (spec 3.2, 15.1)."""
    start = reader.tell()
    lent = _LentReader(reader)
    try:
        return cs.Bitwise(structure).parse_stream(lent, **ctx)
    except SyntaxViolation as exc:
        raise DecodeError(str(exc), clause=exc.clause, offset=base + reader.tell()) from None
    except (cs.StreamError, ValueError):
        raise DecodeError("unit header runs past the end of its unit", clause="3.2", offset=unit_offset) from None
    except (cs.ConstructError, OverflowError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise DecodeError(f"malformed syntax: {type(exc).__name__}", clause=clause, offset=base + start) from None
    finally:
        lent.reader = None


def _read_unit_string(reader: _ViewReader, utype: int, unit_offset: int):
    """``topology_data`` or ``quantization_data`` (spec 6.2, 6.3): the bytes up to the first 0x00, which ends the
    string, bounded only by the unit; a str when they are UTF-8 text, else the bytes themselves (2.6, 6.2)."""
    rest = bytes(reader.view[reader.pos :])
    end = rest.find(0)
    if end < 0:
        raise DecodeError(
            f"{UNIT_STRING_ELEMENTS[utype]} has no terminating 0x00 before the end of its unit",
            clause="3.2",
            offset=unit_offset,
        )
    raw = rest[:end]
    reader.pos += end + 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _unit_string_bytes(data) -> bytes:
    """The bytes of a topology or quantisation unit's string, with its terminator (spec 6.2, 6.3)."""
    if data is None:
        data = ""
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        raise EncodeError(f"a unit's string must be str or bytes, not {type(data).__name__}")
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    except UnicodeEncodeError:
        raise EncodeError("a unit's string is not valid UTF-8 text (a lone surrogate)") from None
    if b"\x00" in raw:
        raise EncodeError("a unit's string cannot contain a 0x00 byte (its terminator, spec 2.6)")
    return raw + b"\x00"


class _LentReader:
    """A reader lent to construct for one parse. construct's parse contexts keep their stream in reference cycles,
    which only the garbage collector breaks; this one lets go of the reader, and of its view of the caller's buffer,
    when the parse ends (else the caller's mmap could not be closed: BufferError)."""

    def __init__(self, reader):
        self.reader = reader

    def read(self, n: int = -1) -> bytes:
        return self.reader.read(n)

    def tell(self) -> int:
        return self.reader.tell()


def read_unit_size(data: memoryview, offset: int) -> tuple[int, int]:
    """(nnr_unit_size, bytes of the size field) at ``offset`` (spec 3.2).

    A size field is 2 bytes, or 4 bytes when its first bit is set (then the
    other 31 bits are the size).

    Parameters
    ----------
    data : memoryview
        The stream (any bytes-like object that indexes to ints works).
    offset : int
        Where the unit starts.

    Returns
    -------
    tuple
        ``(size, field_length)``: the unit size including the field, and 2 or 4.

    Raises
    ------
    nnc.errors.TruncatedError
        If the data end inside the size field.

    Examples
    --------
    >>> from nnc.container import read_unit_size
    >>> read_unit_size(memoryview(b"\\x00\\x04\\x02\\x01"), 0)
    (4, 2)
    >>> read_unit_size(memoryview(b"\\x80\\x00\\x01\\x00"), 0)
    (256, 4)
    >>> read_unit_size(memoryview(b"\\x80\\x00"), 0)
    Traceback (most recent call last):
        ...
    nnc.errors.TruncatedError: stream ends inside a 4-byte nnr_unit_size field [spec 3.2, byte offset 0]
    """
    if offset + 2 > len(data):
        raise TruncatedError("stream ends inside an nnr_unit_size field", clause="3.2", offset=offset)
    first = data[offset]
    if first & 0x80:
        if offset + 4 > len(data):
            raise TruncatedError("stream ends inside a 4-byte nnr_unit_size field", clause="3.2", offset=offset)
        return int.from_bytes(bytes(data[offset : offset + 4]), "big") & 0x7FFFFFFF, 4
    return int.from_bytes(bytes(data[offset : offset + 2]), "big"), 2


def iter_units(data, *, strict: bool = False) -> Iterator[Unit]:
    """Walk the unit stream, parsing each unit's header (spec 3.1).

    The profile comes from the start unit and the flags that NDU headers depend
    on from the model parameter set, so units must come in stream order.

    This is a generator: a unit is parsed when it is reached, so an error in a
    later unit is raised only after the earlier units have been yielded.
    Payloads are not decoded.  A topology unit may carry bytes after its
    string (tolerated unless ``strict``); any other unit must end where its
    syntax ends (NDUs end with their payload).

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The whole stream; not copied.
    strict : bool
        Also refuse bytes left over at the end of a topology unit.

    Yields
    ------
    nnc.container.Unit
        Each unit, in stream order.

    Raises
    ------
    nnc.errors.TruncatedError
        If the stream is empty, or ends inside a size field or a unit.
    nnc.errors.UnsupportedError
        For an aggregate unit (NNR_AGG).
    nnc.errors.DecodeError
        For any other violation of the unit syntax: a size smaller than the
        header, a reserved unit type, a first unit that is not a start unit,
        an NDU before the model parameter set, a malformed header, bytes left
        over.

    Examples
    --------
    >>> import nnc
    >>> from nnc import container
    >>> stream = nnc.encode({"w": [1.0, 2.0]})
    >>> [u.type_name for u in container.iter_units(stream)]
    ['NNR_STR', 'NNR_MPS', 'NNR_TPL', 'NNR_NDU']
    >>> list(container.iter_units(stream[4:]))  # without its start unit
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: the first unit of a stream must be a start unit (NNR_STR) [spec 3.1, byte offset 0]
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    ctx = dict(profile=0, parent_signalling=False, indexed=False)
    offset = 0
    index = 0
    seen_mps = False
    if len(view) == 0:
        raise TruncatedError("empty stream: a stream starts with a start unit (NNR_STR)", clause="3.1", offset=0)
    while offset < len(view):
        size, size_len = read_unit_size(view, offset)
        if size < size_len + 1:
            raise DecodeError(f"nnr_unit_size {size} is smaller than its own header", clause="3.2", offset=offset)
        if offset + size > len(view):
            raise TruncatedError(
                f"unit of {size} bytes runs past the end of the stream ({len(view) - offset} bytes left)",
                clause="3.2",
                offset=offset,
            )
        unit_view = view[offset : offset + size]
        reader = _ViewReader(unit_view, size_len)
        common = _parse_struct(UNIT_HEADER, reader, {}, "3.3", offset, offset)
        utype = common.nnr_unit_type
        if utype not in UNIT_TYPE_NAMES:
            raise DecodeError(f"reserved nnr_unit_type {utype}", clause="3.4", offset=offset + size_len)
        if index == 0 and utype != NNR_STR:
            raise DecodeError("the first unit of a stream must be a start unit (NNR_STR)", clause="3.1", offset=offset)
        if utype == NNR_NDU and not seen_mps:
            raise DecodeError(
                "a compressed data unit comes before the model parameter set", clause="3.1", offset=offset
            )
        if utype == NNR_AGG:
            raise UnsupportedError("aggregate units (NNR_AGG) are not supported", clause="6.4", offset=offset)
        if utype == NNR_NDU and common.partial_data_counter_present_flag:
            raise DecodeError("partial_data_counter is not allowed in an NDU", clause="15.1", offset=offset)
        header_struct, payload_struct = _TYPE_STRUCTS[utype]
        header = Container(common)
        clause = UNIT_CLAUSE[utype]
        if header_struct is not None:
            header.update(_parse_struct(header_struct, reader, ctx, clause, offset, offset))
        if payload_struct is not None:
            header.update(_parse_struct(payload_struct, reader, ctx, clause, offset, offset))
        if utype in UNIT_STRING_ELEMENTS:
            header["data"] = _read_unit_string(reader, utype, offset)
        if utype == NNR_NDU:
            header = Container(common, **_flatten_ndu(header))
        for k in [k for k in header if k.startswith("_")]:
            del header[k]
        if utype == NNR_STR:
            ctx["profile"] = header.general_profile_idc
        elif utype == NNR_MPS:
            seen_mps = True
            ctx["parent_signalling"] = bool(header.get("mps_parent_signalling_enabled_flag"))
            ctx["indexed"] = bool(header.get("mps_topology_indexed_reference_flag"))
        payload_start = reader.tell()
        if utype in (NNR_STR, NNR_MPS, NNR_LPS, NNR_TPL, NNR_QNT) and payload_start != size:
            if strict or utype != NNR_TPL:
                raise DecodeError(
                    f"{size - payload_start} bytes left over at the end of the unit",
                    clause="3.2",
                    offset=offset + payload_start,
                )
        unit = Unit(
            type=utype,
            type_name=UNIT_TYPE_NAMES[utype],
            offset=offset,
            size=size,
            header=header,
            payload_offset=offset + payload_start,
            payload=unit_view[payload_start:],
        )
        yield unit
        offset = unit.end
        index += 1


def parse_stream(data) -> list[Unit]:
    """All units of a stream, parsed (spec 3.1).

    ``list(iter_units(data))``: the whole stream is checked before anything is
    returned.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The whole stream.

    Returns
    -------
    list of nnc.container.Unit
        The units in stream order.

    Raises
    ------
    nnc.errors.DecodeError
        As :func:`iter_units` (including its subclasses).

    Examples
    --------
    >>> import nnc
    >>> from nnc import container
    >>> stream = nnc.encode({"a": [1.0], "b": [2.0]})
    >>> [u.header.topology_elem_id for u in container.parse_stream(stream) if u.type == container.NNR_NDU]
    ['a', 'b']
    >>> container.parse_stream(stream[:-1])
    Traceback (most recent call last):
        ...
    nnc.errors.TruncatedError: unit of ... bytes runs past the end of the stream (... bytes left) [spec 3.2, byte offset ...]
    """
    return list(iter_units(data))


# -- building --------------------------------------------------------------------------------


def _size_prefix(body_len: int) -> bytes:
    """nnr_unit_size for a unit whose bytes after the size field number body_len (spec 3.2)."""
    if 2 + body_len <= 0x7FFF:
        return (2 + body_len).to_bytes(2, "big")
    total = 4 + body_len
    if total > 0x7FFFFFFF:
        raise EncodeError("unit larger than 2^31 - 1 bytes")
    return (0x80000000 | total).to_bytes(4, "big")


def _complete(structure, fields: dict) -> dict:
    """Missing optional fields of a Struct are absent (None) when building."""
    out = dict(fields)
    for sc in structure.subcons:
        if sc.name and sc.name not in out:
            out[sc.name] = None
    return out


def _build_struct(structure, fields, ctx) -> bytes:
    fields = _complete(structure, fields)
    try:
        return cs.Bitwise(structure).build(fields, **ctx)
    except (cs.ConstructError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot build {structure.__class__.__name__}: {exc}") from None


def build_unit(
    unit_type: int,
    header: dict | None = None,
    payload: bytes = b"",
    *,
    profile: int = 1,
    parent_signalling: bool = False,
    indexed: bool = False,
    independently_decodable: int = 1,
) -> bytes:
    """Build one unit: size, common header, type-specific header/payload structure, raw payload.

    The inverse of :func:`iter_units`: ``build_unit(u.type, dict(u.header),
    u.payload)`` gives back the unit's bytes.  Fields are spec element names;
    fields that the syntax makes absent can be left out or None.  For an NDU
    the header is flat (as :attr:`Unit.header`), and flags that follow from
    other fields (``tensor_dimensions_flag``, ``codebook_present_flag``
    defaults, ...) are derived when not given.  The size field takes the
    2-byte form when the unit fits in 32767 bytes, else the 4-byte form.

    Parameters
    ----------
    unit_type : int
        ``NNR_STR`` ... ``NNR_NDU``.
    header : dict or None
        The syntax elements, by spec name.
    payload : bytes
        Raw bytes appended after the syntax (an NDU's payload).
    profile : int
        The stream's ``general_profile_idc`` (0 or 1), which the MPS and NDU
        syntax depend on.
    parent_signalling : bool
        The MPS's ``mps_parent_signalling_enabled_flag``, for NDU headers.
    indexed : bool
        The MPS's ``mps_topology_indexed_reference_flag``, for NDU headers.
    independently_decodable : int
        ``independently_decodable_flag`` unless ``header`` has it.

    Returns
    -------
    bytes
        The unit, including its size field.

    Raises
    ------
    nnc.errors.EncodeError
        If a field is missing or out of range, an NDU header lacks
        ``nnr_compressed_data_unit_payload_type``, or the unit would exceed
        2^31 - 1 bytes.

    Examples
    --------
    >>> from nnc import container
    >>> container.build_unit(container.NNR_STR, {"general_profile_idc": 1}).hex()
    '00040201'
    >>> container.build_unit(container.NNR_STR, {})
    Traceback (most recent call last):
        ...
    nnc.errors.EncodeError: cannot build Struct: ...
    """
    header = dict(header or {})
    ctx = dict(profile=profile, parent_signalling=parent_signalling, indexed=indexed)
    common = {
        "nnr_unit_type": unit_type,
        "independently_decodable_flag": header.pop("independently_decodable_flag", independently_decodable),
        "partial_data_counter_present_flag": int(header.get("partial_data_counter") is not None),
        "partial_data_counter": header.pop("partial_data_counter", None),
    }
    body = _build_struct(UNIT_HEADER, common, {})
    header_struct, payload_struct = _TYPE_STRUCTS[unit_type]
    if unit_type == NNR_NDU:
        if header.get("nnr_compressed_data_unit_payload_type") is None:
            raise EncodeError("an NDU header needs nnr_compressed_data_unit_payload_type")
        body += _build_struct(NDU_HEADER, _unflatten_ndu(header), ctx)
    else:
        if header_struct is not None:
            body += _build_struct(header_struct, header, ctx)
        if payload_struct is not None:
            body += _build_struct(payload_struct, header, ctx)
        if unit_type in UNIT_STRING_ELEMENTS:
            body += _unit_string_bytes(header.get("data"))
    body += bytes(payload)
    return _size_prefix(len(body)) + body


def build_str(profile: int = 1) -> bytes:
    """The start unit (spec 4).

    Parameters
    ----------
    profile : int
        ``general_profile_idc``: 1 for 2nd-edition streams, 0 for 1st-edition ones.

    Returns
    -------
    bytes
        The 4-byte unit.

    Examples
    --------
    >>> from nnc.container import build_str
    >>> build_str(), build_str(0)
    (b'\\x00\\x04\\x02\\x01', b'\\x00\\x04\\x02\\x00')
    """
    return build_unit(NNR_STR, {"general_profile_idc": profile}, profile=profile)


def build_mps(
    *,
    qp_density: int = 2,
    qp: int = 0,
    profile: int = 1,
    parent_signalling: bool = False,
    quantization_method_flags: int = NNR_QSU,
    **extra,
) -> bytes:
    """A model parameter set as NNCodec writes it, with optional extras (spec 5.1).

    Topology carriage on, no performance maps, uniform quantisation.

    Parameters
    ----------
    qp_density : int
        ``mps_qp_density`` (0..7).
    qp : int
        ``mps_quantization_parameter``, the base qp of the NDUs.
    profile : int
        The stream's profile (0 or 1): profile 1 adds the 2nd-edition flags.
    parent_signalling : bool
        ``mps_parent_signalling_enabled_flag`` (profile 1).
    quantization_method_flags : int
        ``mps_quantization_method_flags`` (``NNR_QSU``, ``NNR_QCB``).
    **extra
        Any other MPS field by spec name, overriding the defaults.

    Returns
    -------
    bytes
        The unit.

    Raises
    ------
    nnc.errors.EncodeError
        If a value does not fit its field.

    Examples
    --------
    >>> from nnc import container
    >>> mps = container.build_mps(qp=-38)
    >>> unit = container.parse_stream(container.build_str() + mps)[1]
    >>> unit.header.mps_quantization_parameter, unit.header.mps_qp_density
    (-38, 2)
    """
    fields = dict(
        topology_carriage_flag=1,
        mps_sparsification_flag=0,
        mps_pruning_flag=0,
        mps_unification_flag=0,
        mps_decomposition_performance_map_flag=0,
        mps_quantization_method_flags=quantization_method_flags,
        mps_topology_indexed_reference_flag=0,
        nnr_reserved_zero_7bits=0,
        base_model_id_present_flag=0,
        validation_set_performance_present_flag=0,
        metric_type_performance_map_valid_flag=0,
        mps_parent_signalling_enabled_flag=int(parent_signalling),
        nnr_pre_flag=0,
        nnr_reserved_zero_2bits=0,
        base_model_id=None,
        performance_metric_type=None,
        mps_qp_density=qp_density,
        mps_quantization_parameter=qp,
        sparsification_performance_map=None,
        pruning_performance_map=None,
        unification_performance_map=None,
        decomposition_performance_map=None,
        validation_set_performance=None,
    )
    fields.update(extra)
    return build_unit(NNR_MPS, fields, profile=profile)


def build_tpl(storage_format: int = 0, compression_format: int = 0, data: str | bytes = "") -> bytes:
    """A topology unit (spec 6.2); NNCodec writes format 0 with an empty string.

    nnc's encoder stores its metadata (original shapes and dtypes) as JSON in
    ``data`` (see :attr:`nnc.decoder.Decoder.metadata`).

    Parameters
    ----------
    storage_format : int
        ``topology_storage_format``.
    compression_format : int
        ``topology_compression_format``.
    data : str or bytes
        ``topology_data``: text (UTF-8) or bytes, without a 0x00 byte; its length is bounded only by the unit's.

    Returns
    -------
    bytes
        The unit.

    Raises
    ------
    nnc.errors.EncodeError
        If ``data`` holds a 0x00 byte, or the unit would exceed 2^31 - 1 bytes.

    Examples
    --------
    >>> from nnc import container
    >>> tpl = container.build_tpl(data="{}")
    >>> container.parse_stream(container.build_str() + container.build_mps() + tpl)[2].header.data
    '{}'
    """
    return build_unit(
        NNR_TPL,
        {"topology_storage_format": storage_format, "topology_compression_format": compression_format, "data": data},
    )


def build_ndu(header_fields: dict, payload: bytes, *, profile: int = 1, parent_signalling: bool = False) -> bytes:
    """An NDU from flat header fields (spec element names) and its raw payload (spec 7).

    Parameters
    ----------
    header_fields : dict
        The flat NDU header, as :attr:`Unit.header` of a parsed NDU; needs at
        least ``nnr_compressed_data_unit_payload_type``.
    payload : bytes
        The coded payload, appended as is.
    profile : int
        The stream's profile (0 or 1).
    parent_signalling : bool
        The MPS's ``mps_parent_signalling_enabled_flag``.

    Returns
    -------
    bytes
        The unit.

    Raises
    ------
    nnc.errors.EncodeError
        If the payload type is missing or a field is invalid.

    Examples
    --------
    >>> from nnc import container
    >>> ndu = container.build_ndu({"nnr_compressed_data_unit_payload_type": container.NNR_PT_RAW_FLOAT,
    ...                            "topology_elem_id": "w", "tensor_dimensions": [1]}, bytes(4))
    >>> stream = container.build_str() + container.build_mps() + ndu
    >>> unit = container.parse_stream(stream)[-1]
    >>> unit.header.topology_elem_id, unit.header.tensor_dimensions, bytes(unit.payload)
    ('w', [1], b'\\x00\\x00\\x00\\x00')
    >>> container.build_ndu({"topology_elem_id": "w"}, b"")
    Traceback (most recent call last):
        ...
    nnc.errors.EncodeError: an NDU header needs nnr_compressed_data_unit_payload_type
    """
    return build_unit(NNR_NDU, header_fields, payload, profile=profile, parent_signalling=parent_signalling)


__all__ = [
    "iter_units",
    "parse_stream",
    "read_unit_size",
    "Unit",
    "build_unit",
    "build_str",
    "build_mps",
    "build_tpl",
    "build_ndu",
    "codebook_zero_offset",
    "best_codebook_egk",
    "codebook_bits",
    "ue_bits",
    "NNR_STR",
    "NNR_MPS",
    "NNR_LPS",
    "NNR_TPL",
    "NNR_QNT",
    "NNR_NDU",
    "NNR_AGG",
    "UNIT_TYPE_NAMES",
    "UNIT_CLAUSE",
    "NNR_PT_INT",
    "NNR_PT_FLOAT",
    "NNR_PT_RAW_FLOAT",
    "NNR_PT_BLOCK",
    "NNR_CPT_DC",
    "NNR_CPT_LS",
    "NNR_CPT_BN",
    "NNR_CPT_BI",
    "NNR_QSU",
    "NNR_QCB",
    "MAX_UE_PREFIX",
    "MAX_STRING_BYTES",
    "MAX_DIMENSIONS",
]
