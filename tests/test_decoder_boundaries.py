"""Decoder boundaries: the exact edge of each normative range, one side accepted and the other refused.

int32 codebook entries (spec 7.2), the ue(k) prefix of 32 zero bits (2.3), the float32 range of the step
size (12.1), the integer output formats' rounding and ranges (12.6), codebook indices (12.4), N when
``cabac_unary_length_minus1`` is absent (7.4) and the scan order of a block NDU's 1-D members (7.4, 11.1).
Streams are built with the container and the engines (as conformance/generate.py crafts them), not with the
encoder, and decoded whole with both engines where the path runs through one.
"""

import math

import construct as cs
import numpy as np
import pytest

import nnc
from nnc import container as C
from nnc.decoder import Decoder, decode_with_info
from nnc.engine import get_engine
from nnc.errors import DecodeError
from nnc.reconstruction import check_codebook_indices, convert_to_format, step_size

ENGINES = ["cython", "python"]
pytestmark = pytest.mark.quick


# -- stream crafting ----------------------------------------------------------------------------------------


def craft_ndu(name, levels, dims, *, engine, profile=1, qp=0, mps_qp=0, qp_density=2, n_gtx=11, signal_n=True,
              fmt=None, codebook=None, cb_center=0, ptype=C.NNR_PT_FLOAT):
    """One NDU coding the integers ``levels`` (k) with the engine, its header written by the container.

    ``signal_n=False`` leaves ``cabac_unary_length_minus1`` out (``cabac_unary_length_flag`` 0, spec 7.4)
    while the payload is still coded with ``n_gtx``.
    """
    eng = get_engine(engine)
    edition = 2 if profile == 1 else 1
    height = dims[0] if dims else 1
    width = math.prod(dims) // height if height else 0
    cb_zero = (len(codebook) >> 1) + cb_center if codebook else 0
    e = eng.PayloadEncoder(edition)
    if ptype != C.NNR_PT_INT:
        e.write_qp_offset(qp - mps_qp, 6 + qp_density)
    # edition 1 codes a codebook index as any integer (its range is checked in 12.4, not by 10.4)
    e.encode_tensor(np.asarray(levels, np.int32).reshape(-1), height, width, n_gtx=n_gtx, param_opt=False,
                    codebook_size=len(codebook) if codebook and edition == 2 else 0, codebook_zero=cb_zero)
    header = dict(nnr_compressed_data_unit_payload_type=ptype, topology_elem_id=name, tensor_dimensions=list(dims),
                  nnr_decompressed_data_format_present_flag=int(fmt is not None), nnr_decompressed_data_format=fmt)
    if signal_n:
        header["cabac_unary_length_minus1"] = n_gtx - 1
    if codebook is not None:
        header.update(codebook_present_flag=1, codebook=list(codebook), codebook_center_offset=cb_center)
    if profile == 1:
        header["node_id_present_flag"] = 0
    return C.build_ndu(header, e.finish(), profile=profile)


def head(profile=1, qp=0, qp_density=2):
    return C.build_str(profile) + C.build_mps(qp_density=qp_density, qp=qp, profile=profile) + C.build_tpl()


def one_tensor(levels, dims=None, *, engine, profile=1, mps_qp=0, qp_density=2, **options):
    """A whole stream of one tensor named "w"."""
    dims = [len(levels)] if dims is None else dims
    return head(profile, mps_qp, qp_density) + craft_ndu(
        "w", levels, dims, engine=engine, profile=profile, mps_qp=mps_qp, qp_density=qp_density, **options)


def parse_ue(k: int, pattern: str) -> int:
    """ue(k) (spec 2.3) parsed from the bits ``pattern`` ('0'/'1'), exactly as written, one bit a byte as
    construct's bit-level parsing sees them."""
    return C.UE(k).parse(bytes(int(b) for b in pattern))


# -- C4: codebook entries lie in int32 (spec 7.2) -----------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_codebook_spanning_exactly_the_int32_range_decodes(engine):
    """Spec 7.2: every entry in -2^31 ... 2^31 - 1; the two extremes themselves are entries (12.4: × Δ = 1)."""
    book = [-(2**31), 0, 2**31 - 1]
    out = nnc.decode(one_tensor([-1, 0, 1, 1], codebook=book, engine=engine), engine=engine)
    assert out["w"].dtype == np.float64
    assert out["w"].tolist() == [-(2.0**31), 0.0, 2.0**31 - 1, 2.0**31 - 1]


@pytest.mark.parametrize("book", [[0, 1, 2**31], [-5, 0, 2**31], [-(2**31) - 1, 0, 7]],
                         ids=["top_2^31", "top_2^31_zero_value_0", "bottom_-2^31-1"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_codebook_entry_just_outside_int32_is_refused(engine, book):
    """Spec 7.2 (15.1 item 23): an entry of 2^31 (or -2^31 - 1) is an error, found parsing the header."""
    stream = one_tensor([-1, 0, 1], codebook=book, engine=engine)
    with pytest.raises(DecodeError, match="int32") as caught:
        nnc.decode(stream, engine=engine)
    assert caught.value.clause == "7.2"


def test_codebook_syntax_alone_refuses_2_31_and_accepts_2_31_minus_1():
    """Spec 7.2 on the codebook() syntax itself: the same bits with the last delta one larger are refused."""
    syntax = cs.Bitwise(C.Codebook())
    good = syntax.build(dict(codebook=[0, 1, 2**31 - 1], codebook_egk=0, codebook_center_offset=0))
    assert syntax.parse(good).codebook == [0, 1, 2**31 - 1]
    bad = syntax.build(dict(codebook=[0, 1, 2**31], codebook_egk=0, codebook_center_offset=0))
    with pytest.raises(C.SyntaxViolation) as caught:
        syntax.parse(bad)
    assert caught.value.clause == "7.2"


# -- C11: ue(k) prefixes of at most 32 zero bits (spec 2.3) ---------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 7])
def test_ue_accepts_a_prefix_of_exactly_32_zeros(k):
    """Spec 2.3: 32 zeros, the '1', then 32 + k suffix bits: value (2^32 - 1)·2^k + suffix."""
    suffix = (1 << (32 + k)) - 2  # all ones but the last bit
    pattern = "0" * 32 + "1" + format(suffix, f"0{32 + k}b")
    assert parse_ue(k, pattern) == ((1 << 32) - 1) * (1 << k) + suffix
    zero_suffix = "0" * 32 + "1" + "0" * (32 + k)
    assert parse_ue(k, zero_suffix) == ((1 << 32) - 1) << k
    assert C.MAX_UE_PREFIX == 32


@pytest.mark.parametrize("zeros", [33, 34, 40])
@pytest.mark.parametrize("k", [0, 1, 7])
def test_ue_refuses_a_prefix_of_33_zeros_or_more(k, zeros):
    """Spec 2.3 (15.1 item 13): more than 32 zeros is an error even when a '1' and the suffix follow."""
    pattern = "0" * zeros + "1" + "0" * (zeros + k)
    with pytest.raises(C.SyntaxViolation) as caught:
        parse_ue(k, pattern)
    assert caught.value.clause == "2.3"


def test_ue_prefix_boundary_in_a_whole_stream():
    """Spec 2.3 in an NDU header: a ue(1) device_id (7.1) with a 32-zero prefix decodes, one with 33 is refused."""
    def stream(device_id):
        e = get_engine("python").PayloadEncoder(2)
        e.write_qp_offset(0, 8)
        e.encode_tensor(np.array([1, -2, 3], np.int32), 3, 1, n_gtx=11, param_opt=False)
        header = dict(nnr_compressed_data_unit_payload_type=C.NNR_PT_FLOAT, topology_elem_id="w",
                      tensor_dimensions=[3], cabac_unary_length_minus1=10, node_id_present_flag=1,
                      device_id=device_id, parameter_id=0, put_node_depth=0)
        return head() + C.build_ndu(header, e.finish())

    longest = 2 * ((1 << 32) - 1)  # ue(1): the smallest value with a 32-zero prefix ...
    assert nnc.decode(stream(longest))["w"].tolist() == [1.0, -2.0, 3.0]
    assert nnc.decode(stream(2 * ((1 << 33) - 1) - 1))["w"].tolist() == [1.0, -2.0, 3.0]  # ... and the largest
    with pytest.raises(DecodeError) as caught:
        nnc.decode(stream(2 * ((1 << 33) - 1)))  # 33 zeros
    assert caught.value.clause == "2.3"


# -- R1, R2: the step size is a finite non-zero float32, 2^-149 <= Δ < 2^128 (spec 12.1) -----------------------


def test_step_size_upper_boundary():
    """Spec 12.1 (15.1 item 32): Δ = 2^128 is refused, from any qp_density; the largest steps below decode."""
    for qp, qpd in [(128, 0), (512, 2), (2048, 4), (129, 0), (513, 2)]:
        with pytest.raises(DecodeError) as caught:
            step_size(qp, qpd)
        assert caught.value.clause == "12.1"
    assert float(step_size(127, 0)) == 2.0**127
    assert float(step_size(511, 2)) == 1.75 * 2.0**127
    assert float(step_size(2047, 4)) == (31 / 16) * 2.0**127


def test_step_size_lower_boundary():
    """Spec 12.1: Δ = 2^-149 (the least subnormal) is the smallest step; 2^-150 and 1.75·2^-150 are refused."""
    assert float(step_size(-149, 0)) == 2.0**-149
    assert float(step_size(-596, 2)) == 2.0**-149
    for qp, qpd in [(-150, 0), (-597, 2), (-151, 0)]:
        with pytest.raises(DecodeError) as caught:
            step_size(qp, qpd)
        assert caught.value.clause == "12.1"


@pytest.mark.parametrize("engine", ENGINES)
def test_step_size_boundaries_in_a_whole_stream(engine):
    """Spec 12.1 with the qp of 8.2 (MPS qp + offset): qp 127 and -149 decode exactly, qp 128 and -150 fail."""
    def stream(qp):
        return one_tensor([1, -1, 3], engine=engine, mps_qp=qp, qp=qp, qp_density=0)

    assert nnc.decode(stream(127), engine=engine)["w"].tolist() == [2.0**127, -(2.0**127), np.inf]
    assert nnc.decode(stream(-149), engine=engine)["w"].tolist() == [2.0**-149, -(2.0**-149), 3 * 2.0**-149]
    for qp in (128, -150):
        with pytest.raises(DecodeError) as caught:
            nnc.decode(stream(qp), engine=engine)
        assert caught.value.clause == "12.1"


# -- R3, R4: the integer output formats round halves away from zero and hold their ranges (spec 12.6) ----------


HALVES = [5, -5, 1, -1, 3, -3, 7, -7, 0]  # × Δ = 0.5: 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 3.5, -3.5, 0
AWAY_FROM_ZERO = [3, -3, 1, -1, 2, -2, 4, -4, 0]


@pytest.mark.parametrize("fmt", [0, 5, 6, 7])
@pytest.mark.parametrize("engine", ENGINES)
def test_integer_formats_round_halves_away_from_zero_in_a_whole_decode(engine, fmt):
    """Spec 12.6 integer rule: 2.5 -> 3, -2.5 -> -3, 0.5 -> 1, -0.5 -> -1 (not to even, not up)."""
    # qp -4 at qp_density 2: Δ = 0.5 (12.1)
    stream = one_tensor(HALVES, engine=engine, qp=-4, fmt=fmt)
    out = nnc.decode(stream, engine=engine)["w"]
    assert out.dtype == np.dtype({0: "int32", 5: "int8", 6: "int16", 7: "int64"}[fmt])
    assert out.tolist() == AWAY_FROM_ZERO


@pytest.mark.parametrize("engine", ENGINES)
def test_codebook_values_round_halves_away_from_zero_in_an_integer_format(engine):
    """Spec 12.4 then 12.6: codebook entries × Δ = 0.5 give halves, rounded away from zero."""
    stream = one_tensor([-2, -1, 0, 1, 2], engine=engine, qp=-4, fmt=0, codebook=[-5, -1, 0, 1, 5])
    assert nnc.decode(stream, engine=engine)["w"].tolist() == [-3, -1, 0, 1, 3]


def test_convert_to_format_rounds_halves_away_from_zero():
    """Spec 12.6 on the function: float32 and float64 halves, every integer format."""
    for dtype in (np.float32, np.float64):
        values = np.array([2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 1.4999, -1.4999, 0.0], dtype)
        for fmt in (0, 5, 6, 7):
            assert convert_to_format(values, fmt).tolist() == [3, -3, 1, -1, 2, -2, 1, -1, 0]
    assert convert_to_format(np.array([-1.5, 0.5]), 2).tolist() == [-2, 1]  # INT2's ends reached by rounding


NARROW = {2: (-2, 1), 3: (-4, 3), 4: (-8, 7)}  # INT2, INT3, INT4 (spec 12.6)


@pytest.mark.parametrize("fmt", sorted(NARROW))
def test_convert_to_format_narrow_ranges(fmt):
    """Spec 12.6: INTn holds -2^(n-1) ... 2^(n-1) - 1; hi + 1 and lo - 1 are errors (15.1 item 45)."""
    lo, hi = NARROW[fmt]
    ok = convert_to_format(np.arange(lo, hi + 1, dtype=np.int32), fmt)
    assert ok.dtype == np.int8 and ok.tolist() == list(range(lo, hi + 1))
    assert convert_to_format(np.array([lo, hi], np.float32), fmt).tolist() == [lo, hi]
    for outside in (hi + 1, lo - 1):
        for values in (np.array([outside], np.int32), np.array([float(outside)], np.float32)):
            with pytest.raises(DecodeError, match="outside the range") as caught:
                convert_to_format(values, fmt)
            assert caught.value.clause == "12.6"
    with pytest.raises(DecodeError):
        convert_to_format(np.array([hi + 0.5], np.float64), fmt)  # rounds away from zero to hi + 1


@pytest.mark.parametrize("fmt", sorted(NARROW))
@pytest.mark.parametrize("ptype", [C.NNR_PT_INT, C.NNR_PT_FLOAT], ids=["INT", "FLOAT"])
@pytest.mark.parametrize("engine", ENGINES)
def test_narrow_format_range_in_a_whole_decode(engine, ptype, fmt):
    """Spec 12.6: an INT tensor's k, or a FLOAT tensor's values (Δ = 1), fill INTn exactly; hi + 1 or lo - 1 fail."""
    lo, hi = NARROW[fmt]
    inside = list(range(lo, hi + 1))
    out = nnc.decode(one_tensor(inside, engine=engine, ptype=ptype, fmt=fmt), engine=engine)["w"]
    assert out.dtype == np.int8 and out.tolist() == inside
    for outside in (hi + 1, lo - 1):
        stream = one_tensor([0, outside, lo], engine=engine, ptype=ptype, fmt=fmt)
        with pytest.raises(DecodeError, match="outside the range") as caught:
            nnc.decode(stream, engine=engine)
        assert caught.value.clause == "12.6"


# -- R5: a codebook index k + CbZeroOffset lies in 0 ... size - 1 (spec 12.4) ----------------------------------


BOOK7 = [-30, -20, -10, 0, 10, 20, 40]  # CbZeroOffset 3 (centre offset 0): k in -3 ... 3


def test_check_codebook_indices_boundaries():
    """Spec 12.4: index = k + CbZeroOffset must lie in 0 ... size - 1; size and -1 are refused."""
    check_codebook_indices(np.array([-3, 0, 3]), 7, 3)
    check_codebook_indices(np.array([0, 6]), 7, 0)
    for k, size, zero in [(4, 7, 3), (-4, 7, 3), (7, 7, 0), (1, 1, 0), (0, 1, 1)]:
        with pytest.raises(DecodeError) as caught:
            check_codebook_indices(np.array([0, k]), size, zero)
        assert caught.value.clause == "12.4"


@pytest.mark.parametrize("fmt", [None, 1, 9, 0], ids=["default", "float32", "float64", "int32"])
@pytest.mark.parametrize("engine", ENGINES)
def test_edition1_codebook_index_equal_to_the_size_is_refused(engine, fmt):
    """Spec 12.4 (15.1 item 38), 1st edition (the check is 12.4's, not 10.4's): k = 3 reaches the last entry,
    k = 4 (index 7 = the size) and k = -4 (index -1) are errors, whatever the output format."""
    good = one_tensor([-3, 3, 0, 1], engine=engine, profile=0, fmt=fmt, codebook=BOOK7)
    out = nnc.decode(good, engine=engine)["w"]
    assert out.tolist() == [-30, 40, 0, 10]
    for k in (4, -4):
        stream = one_tensor([0, k, 1], engine=engine, profile=0, fmt=fmt, codebook=BOOK7)
        with pytest.raises(DecodeError) as caught:
            nnc.decode(stream, engine=engine)
        assert caught.value.clause == "12.4"


# -- D2: N = 10 when cabac_unary_length_minus1 is absent (spec 7.4) -------------------------------------------


LONG_LEVELS = [0, 9, -10, 10, 11, -11, 12, -12, 13, 25, -40, 1, 0, -1, 300]  # reach beyond N = 10 and 11


@pytest.mark.parametrize("profile", [1, 0])
@pytest.mark.parametrize("engine", ENGINES)
def test_absent_cabac_unary_length_means_n_10(engine, profile):
    """Spec 7.4 (and 13, table item 7): without cabac_unary_length_minus1 (cabac_unary_length_flag 0), N = 10,
    in both profiles. A payload coded with N = 10 decodes as the one that signals minus1 = 9."""
    # qp -8 at qp_density 2: Δ = 0.25
    absent = one_tensor(LONG_LEVELS, engine=engine, profile=profile, qp=-8, n_gtx=10, signal_n=False)
    signalled = one_tensor(LONG_LEVELS, engine=engine, profile=profile, qp=-8, n_gtx=10)
    ndu = C.parse_stream(absent)[-1]
    assert ndu.header.cabac_unary_length_flag == 0 and ndu.header.cabac_unary_length_minus1 is None
    assert bytes(ndu.payload) == bytes(C.parse_stream(signalled)[-1].payload)
    dec = Decoder(absent, engine=engine)
    assert dec.info("w").n_gtx == 10
    assert dec.decode()["w"].tolist() == [v * 0.25 for v in LONG_LEVELS]
    assert nnc.decode(signalled, engine=engine)["w"].tolist() == [v * 0.25 for v in LONG_LEVELS]


@pytest.mark.parametrize("engine", ENGINES)
def test_absent_cabac_unary_length_in_an_int_matrix(engine):
    """Spec 7.4: N = 10 for an INT (k as decoded, 12.5) matrix without the element too."""
    levels = np.array([[11, -12, 10, 0], [40, -10, 13, -11], [9, 1, -300, 12]], np.int32)
    stream = one_tensor(levels, [3, 4], engine=engine, ptype=C.NNR_PT_INT, n_gtx=10, signal_n=False)
    out = nnc.decode(stream, engine=engine)["w"]
    assert out.dtype == np.int32 and out.tolist() == levels.tolist()


# -- D6: the 1-D members of a BLOCK NDU are row-major, scan order 0 (spec 7.4, 11.1) --------------------------


def block_stream(engine, scan_order=1):
    """A BLOCK NDU (7.6) of a 16 x 12 weight with block scan ``scan_order`` and its bias, built by hand: the bias
    is coded first, then the weight, each after its qp offset; one entry point (two block rows of 8)."""
    eng = get_engine(engine)
    r = np.random.default_rng(7)
    bias = r.integers(-20, 20, 16).astype(np.int32)
    weight = r.integers(-20, 20, (16, 12)).astype(np.int32)
    e = eng.PayloadEncoder(2)
    common = dict(n_gtx=11)
    e.write_qp_offset(-8, 8)
    e.encode_tensor(bias, 16, 1, param_opt=False, **common)
    e.write_qp_offset(-4, 8)
    e.encode_tensor(weight.reshape(-1), 16, 12, scan_order=scan_order, param_opt=False, **common)
    payload = e.finish()
    specs = [dict(height=16, width=1, qp_bits=8, **common),
             dict(height=16, width=12, qp_bits=8, scan_order=scan_order, **common)]
    eps = eng.compute_entry_points(payload, 2, specs)[1]
    header = dict(nnr_compressed_data_unit_payload_type=C.NNR_PT_BLOCK, nnr_multiple_topology_elements_present_flag=1,
                  count_topology_elements_minus2=0, topology_elem_ids=["f.weight", "f.bias"],
                  compressed_parameter_types=C.NNR_CPT_BI, tensor_dimensions=[16, 12], cabac_unary_length_minus1=10,
                  scan_order=scan_order, node_id_present_flag=0,
                  entry_points=[dict(value=v, dq_state=s, offset=o) for v, s, o in eps])
    return head() + C.build_ndu(header, payload), weight, bias


@pytest.mark.parametrize("scan_order", [1, 2])
@pytest.mark.parametrize("engine", ENGINES)
def test_block_ndu_bias_has_scan_order_0(engine, scan_order):
    """Spec 7.4: scan_order applies to the weight of a block NDU; its 1-D members are always row-major, so their
    TensorInfo.scan_order is 0 (before and after decoding), the weight's the signalled block scan."""
    stream, weight, bias = block_stream(engine, scan_order)
    assert [(i.name, i.scan_order) for i in Decoder(stream, engine=engine).tensors()] == [
        ("f.bias", 0), ("f.weight", scan_order)]
    tensors, infos = decode_with_info(stream, engine=engine)
    assert [(i.name, i.scan_order, i.payload_type, i.block) for i in infos] == [
        ("f.bias", 0, "BLOCK", ("f.bias", "f.weight")), ("f.weight", scan_order, "BLOCK", ("f.bias", "f.weight"))]
    assert tensors["f.bias"].tolist() == (bias * 0.25).tolist()
    assert tensors["f.weight"].tolist() == (weight * 0.5).tolist()
