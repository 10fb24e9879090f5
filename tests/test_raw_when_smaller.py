"""Encoder(raw_when_smaller=True): no tensor costs more than storing it as float32 (issue 18)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import nnc
from nnc.cli import stream_info
from nnc.encoder import Encoder

floats = st.floats(-4, 4, width=32, allow_nan=False)


@given(arrays(np.float32, st.tuples(st.integers(1, 40)), elements=floats),
       arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=floats),
       st.sampled_from([-75, -40, -20]), st.booleans())
@settings(max_examples=25, deadline=None)
def test_no_tensor_costs_more_than_raw_and_round_trip_is_exact(bias, weight, nonweight_qp, dq):
    tensors = {"l.weight": weight, "l.bias": bias}
    res = Encoder(qp=-20, nonweight_qp=nonweight_qp, dq=dq, raw_when_smaller=True).encode(tensors)
    plain = Encoder(qp=-20, nonweight_qp=nonweight_qp, dq=dq).encode(tensors)
    raw = Encoder(raw=["*"]).encode(tensors)
    sizes = {t["name"]: t["unit_bytes"] for t in stream_info(res.stream)["tensors"]}
    raw_sizes = {t["name"]: t["unit_bytes"] for t in stream_info(raw.stream)["tensors"]}
    assert all(sizes[k] <= raw_sizes[k] for k in tensors)
    assert len(res.stream) <= len(plain.stream)
    decoded = nnc.decode(res.stream)
    for k in tensors:
        np.testing.assert_array_equal(decoded[k], res.tensors[k].reconstruction)
        if res.tensors[k].payload_type == "RAW_FLOAT":
            np.testing.assert_array_equal(decoded[k], tensors[k])       # raw means exact


def test_a_ten_value_bias_at_qp_minus_75_goes_raw():
    rng = np.random.default_rng(0)
    tensors = {"fc.weight": rng.normal(0, 0.1, (10, 64)).astype(np.float32),
               "fc.bias": rng.normal(0, 0.1, 10).astype(np.float32)}
    res = Encoder(qp=-20, raw_when_smaller=True).encode(tensors)
    assert res.tensors["fc.bias"].payload_type == "RAW_FLOAT"
    assert res.tensors["fc.weight"].payload_type == "FLOAT"
    assert Encoder(qp=-20).encode(tensors).tensors["fc.bias"].payload_type == "FLOAT"     # off by default


def test_info_shows_each_tensors_header_bytes():
    info = stream_info(nnc.encode({"w": np.ones((4, 4), np.float32), "b": np.ones(4, np.float32)}, qp=-20))
    for t in info["tensors"]:
        assert 0 < t["header_bytes"] < t["unit_bytes"]
