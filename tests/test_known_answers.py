"""Known answers: exact bytes pinned from the format description (spec 2, 3, 7, 8, 9, 10)."""

import numpy as np
import pytest

import nnc
from nnc import container as C
from nnc.engine import get_engine

ENGINES = ["cython", "python"]
pytestmark = pytest.mark.quick  # run on every Python version by .ci/run


def test_start_mps_topology_bytes():
    assert C.build_str(0) == bytes.fromhex("00040200")
    assert C.build_str(1) == bytes.fromhex("00040201")
    assert C.build_mps(profile=0) == bytes.fromhex("0008068100400080")
    assert C.build_mps(profile=1) == bytes.fromhex("0008068100400080")
    assert C.build_tpl() == bytes.fromhex("00060e000000")


R1_NDU = bytes.fromhex("0013160977003048283" "0a080" "f795003c428fe0")


def test_edition1_ndu_example_parses_and_rebuilds():
    stream = C.build_str(0) + C.build_mps(profile=0) + C.build_tpl() + R1_NDU
    units = C.parse_stream(stream)
    ndu = units[-1]
    h = ndu.header
    assert h.topology_elem_id == "w" and h.tensor_dimensions == [2, 3]
    assert h.cabac_unary_length_minus1 == 10 and h.scan_order == 0 and h.dq_flag == 0
    assert bytes(ndu.payload) == bytes.fromhex("f795003c428fe0")
    assert C.build_ndu(dict(h), bytes(ndu.payload), profile=0) == R1_NDU
    out = nnc.decode(stream)
    assert out["w"].tolist() == [[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]]


def test_edition2_ndu_header_bytes_for_the_same_tensor():
    header = dict(nnr_compressed_data_unit_payload_type=C.NNR_PT_FLOAT, topology_elem_id="w",
                  input_parameters_present_flag=1, dq_flag=0, codebook_present_flag=0, tensor_dimensions=[2, 3],
                  cabac_unary_length_minus1=10, scan_order=0, node_id_present_flag=1, device_id=0, parameter_id=0,
                  put_node_depth=0, first_tensor_dimension_shift=0)
    unit = C.build_ndu(header, b"", profile=1)
    assert unit[3:].startswith(bytes.fromhex("097700d040c120a0c2a080"))


@pytest.mark.parametrize("engine", ENGINES)
def test_worked_payload_example(engine):
    eng = get_engine(engine)
    d = eng.PayloadDecoder(bytes.fromhex("f795003c428fe0"), 1)
    assert d.read_qp_offset(8) == -8
    assert d.decode_tensor(2, 3, n_gtx=11).tolist() == [0, 2, -1, 4, 0, 0]
    d.finish()
    e = eng.PayloadEncoder(1)
    e.write_qp_offset(-8, 8)
    e.encode_tensor(np.array([0, 2, -1, 4, 0, 0], np.int32), 2, 3, n_gtx=11, param_opt=False)
    assert e.finish() == bytes.fromhex("f795003c428fe0")


def test_entry_point_header_example():
    """fc.weight 37x70, DQ, scan order 2: two entries (234, 7, 7168) and (72, 7, 7188) (spec 7.3)."""
    header = dict(nnr_compressed_data_unit_payload_type=C.NNR_PT_FLOAT, topology_elem_id="fc.weight",
                  input_parameters_present_flag=1, dq_flag=1, codebook_present_flag=0, tensor_dimensions=[37, 70],
                  cabac_unary_length_minus1=10, scan_order=2,
                  entry_points=[dict(value=234, dq_state=7, offset=7168), dict(value=72, dq_state=7, offset=7188)])
    unit = C.build_ndu(header, b"", profile=0)
    after_name = unit[unit.index(b"fc.weight\x00") + len(b"fc.weight\x00"):]
    assert after_name.startswith(bytes.fromhex("704a5c60a2eae48009" "1e")[:9])
    parsed = C.parse_stream(C.build_str(0) + C.build_mps(profile=0) + unit + b"")[-1].header
    assert [(e.value, e.dq_state, e.offset) for e in parsed.entry_points] == [(234, 7, 7168), (72, 7, 7188)]


def test_exp_golomb_examples():
    import construct as cs

    bits = lambda k, v: cs.Bitwise(cs.Sequence(C.UE(k), C.ByteAlignment())).build([v, None])  # noqa: E731
    assert bits(1, 2) == bytes([0b01001000])           # 0 1 00, then alignment 1 000
    assert bits(7, 37) == bytes([0b10100101, 0x80])    # 1 0100101, then a whole alignment byte
    assert bits(0, 0) == bytes([0b11000000])


@pytest.mark.parametrize("engine", ENGINES)
def test_binarisation_examples_round_trip(engine):
    """k = 3 with N = 11 and k = -7 with N = 4, DQ (spec 10.1 examples) code and decode."""
    eng = get_engine(engine)
    for values, n_gtx, dq in (([3], 11, False), ([-2, -7], 4, False), ([3, -7, 120, -(2**31 - 1)], 4, True)):
        if dq:
            values = eng.dq_trellis(np.array(values, np.float64)).tolist()
        lv = np.array(values, np.int32)
        e = eng.PayloadEncoder(1)
        e.encode_tensor(lv, 1, lv.size, n_gtx=n_gtx, dq=dq)
        d = eng.PayloadDecoder(e.finish(), 1)
        assert d.decode_tensor(1, lv.size, n_gtx=n_gtx, dq=dq).tolist() == lv.tolist()
        d.finish()
