"""From a review of spec/ against the decoder (2026-12-08): each case was a place where the text and the code
disagreed; the text was right unless the test says otherwise."""

import numpy as np
import pytest

import nnc
from nnc import container as C
from nnc.errors import DecodeError
from nnc.reconstruction import DECOMPRESSED_DATA_FORMATS, convert_to_format


def _format(name):
    return next(code for code, dtype in DECOMPRESSED_DATA_FORMATS.items() if np.dtype(dtype).name == name)


@pytest.mark.parametrize("value, name", [(2.0**31, "int32"), (2.0**63, "int64"), (-(2.0**31) - 256, "int32"),
                                         (2.0**15, "int16"), (128.0, "int8")])
def test_a_value_one_past_an_integer_format_is_refused(value, name):
    """Before: the bounds were compared in float32 (int32's 2^31 - 1 is the float32 2^31), so 2^31 passed and wrapped
    to -2^31 (spec 12.6, 15.1 item 45)."""
    for dtype in (np.float32, np.float64):
        with pytest.raises(DecodeError, match="outside the range"):
            convert_to_format(np.array([value], dtype), _format(name))


@pytest.mark.parametrize("value, expected", [(8388609.0, 8388609), (-8388609.0, -8388609), (0.49999997, 0),
                                             (-0.49999997, 0), (0.5, 1), (-0.5, -1), (2.5, 3), (-2.5, -3),
                                             (2.0**31 - 128, 2**31 - 128), (-(2.0**31), -(2**31))])
def test_integer_formats_round_exactly_halves_away_from_zero(value, expected):
    """Before: floor(v + 0.5) in float32 turned 2^23 + 1 into 2^23 + 2 and 0.49999997 into 1."""
    assert convert_to_format(np.array([value], np.float32), _format("int32")).tolist() == [expected]


def test_entry_points_of_a_tensor_coded_row_major_are_ignored_in_use_mode():
    """Before: "use" mode took the signalled scan order, so entry points of a [20, 1] tensor (effective scan order 0)
    were used, and a DQ state among them refused a stream the other modes decode (spec 11.4)."""
    stream = nnc.encode({"i": np.arange(20, dtype=np.int32).reshape(20, 1)}, scan_order=0)
    unit = next(u for u in C.parse_stream(stream) if u.type_name == "NNR_NDU")
    header = dict(unit.header, scan_order=1, dq_flag=1,
                  entry_points=[dict(value=0, dq_state=3, offset=10), dict(value=0, dq_state=0, offset=10)])
    crafted = stream[:unit.offset] + C.build_ndu(header, bytes(unit.payload))
    for mode in ("ignore", "verify", "use"):
        decoded = nnc.decode(crafted, entry_points=mode)
        assert decoded["i"].reshape(-1).tolist() == list(range(20)), mode


def test_the_dc_bit_of_an_ndu_of_one_tensor_is_refused_and_its_other_bits_ignored():
    """Before: an NDU of one tensor with the DC bit decoded as a plain tensor (15.1 item 20 named block NDUs only)."""
    stream = nnc.encode({"w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)}, qp=-20)
    unit = next(u for u in C.parse_stream(stream) if u.type_name == "NNR_NDU")

    def with_types(cpt, **extra):
        header = dict(unit.header, compressed_parameter_types=cpt, **extra)
        return stream[:unit.offset] + C.build_ndu(header, bytes(unit.payload)) + stream[unit.end:]

    with pytest.raises(nnc.UnsupportedError, match="decomposed"):
        nnc.decode(with_types(C.NNR_CPT_DC, decomposition_rank=2, g_number_of_rows=4))
    assert np.array_equal(nnc.decode(with_types(C.NNR_CPT_BI | C.NNR_CPT_LS))["w"], nnc.decode(stream)["w"])
