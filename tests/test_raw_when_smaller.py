"""Encoder(raw_when_smaller=True): no tensor costs more than storing it as float32 (issue 18)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import nnc
from nnc import demo
from nnc.cli import stream_info
from nnc.encoder import Encoder
from nnc.formats import read_model

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
    raw_sizes = {t["name"]: t["unit_bytes"] for t in stream_info(raw.stream)["tensors"]}
    units: dict = {}  # unit index -> (its bytes, its tensors): a BLOCK NDU carries several
    for t in stream_info(res.stream)["tensors"]:
        units.setdefault(t["unit_index"], (t["unit_bytes"], []))[1].append(t["name"])
    assert all(size <= sum(raw_sizes[k] for k in names) for size, names in units.values())
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
    res = Encoder(qp=-20, nonweight_qp=-75, blocks=False).encode(tensors)
    assert res.tensors["fc.bias"].payload_type == "RAW_FLOAT"
    assert res.tensors["fc.weight"].payload_type == "FLOAT"
    plain = Encoder(qp=-20, nonweight_qp=-75, blocks=False, raw_when_smaller=False).encode(tensors)  # before 0.2.0
    assert plain.tensors["fc.bias"].payload_type == "FLOAT"


def test_info_shows_each_tensors_header_bytes():
    info = stream_info(nnc.encode({"w": np.ones((4, 4), np.float32), "b": np.ones(4, np.float32)}, qp=-20))
    for t in info["tensors"]:
        assert 0 < t["header_bytes"] < t["unit_bytes"]


def _unit_bytes_by_tensor(stream):
    """{name: bytes of the NDU(s) carrying it}; a BLOCK unit is charged to all its members together."""
    units = {}
    for t in stream_info(stream)["tensors"]:
        units.setdefault(t["unit_index"], [0, []])
        units[t["unit_index"]][0] = t["unit_bytes"]
        units[t["unit_index"]][1].append(t["name"])
    return [(names, size) for size, names in units.values()]


def _no_unit_costs_more_than_raw(tensors, **options):
    res = Encoder(**options).encode(tensors)
    raw = {t["name"]: t["unit_bytes"] for t in stream_info(Encoder(raw=["*"]).encode(tensors).stream)["tensors"]}
    for names, size in _unit_bytes_by_tensor(res.stream):
        assert size <= sum(raw[n] for n in names), (names, size)
    decoded = nnc.decode(res.stream)
    for k in tensors:
        np.testing.assert_array_equal(decoded[k], res.tensors[k].reconstruction)
    return res


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("qp", [-38, -24, -12])
def test_defaults_on_the_bundled_models_never_cost_more_than_raw(kind, qp):
    tensors = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / demo.MODELS[kind])[0].items()}
    res = _no_unit_costs_more_than_raw(tensors, qp=qp)
    for t in res.tensors.values():  # 1-D tensors at the weights' qp, or finer to keep 20 dB (spec A.7)
        assert t.qp is None or (t.qp == qp if len(t.shape) > 1 else t.qp <= qp), t.name
    old = Encoder(qp=qp, nonweight_qp=-75, blocks=False, raw_when_smaller=False).encode(tensors)
    assert len(res.stream) < len(old.stream)  # the measured defaults are smaller (benchmarks/results/paper.md)


@given(arrays(np.float32, st.tuples(st.integers(1, 40)), elements=floats),
       arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 8)), elements=floats),
       st.sampled_from([-60, -38, -20, 0]), st.booleans(), st.booleans())
@settings(max_examples=30, deadline=None)
def test_defaults_on_random_tensors_never_cost_more_than_raw(bias, weight, qp, dq, paired):
    if paired:
        bias = bias[: weight.shape[0]]
        weight = weight[: bias.shape[0]]
    _no_unit_costs_more_than_raw({"l.weight": weight, "l.bias": bias}, qp=qp, dq=dq)


@given(arrays(np.float32, st.tuples(st.integers(1, 300)), elements=st.floats(-1e3, 1e3, width=32)),
       arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 8)), elements=floats),
       st.sampled_from([-100, -80, -60, -38, -20]), st.sampled_from([True, "auto", "few"]), st.booleans())
@settings(max_examples=40, deadline=None)
def test_codebook_modes_never_cost_more_than_raw(values, weight, qp, codebook, dq):
    """Before: raw storage was not weighed for codebook tensors: codebook="auto" or True coded 200 values in
    [-1000, 1000] at qp -80 in 1066 bytes against 863 raw (up to 24 % more than raw)."""
    _no_unit_costs_more_than_raw({"v": values, "l.weight": weight}, qp=qp, dq=dq, codebook=codebook)


def test_default_streams_write_the_same_bytes_to_files(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {"a.weight": rng.normal(0, 0.1, (10, 64)).astype(np.float32),
               "a.bias": rng.normal(0, 0.1, 10).astype(np.float32),
               "b.weight": rng.normal(0, 0.1, (3, 5)).astype(np.float32),
               "b.bias": np.array([1.0, np.inf, 2.0], np.float32),
               "c": rng.normal(0, 1000, 7).astype(np.float32)}  # too fine a step for these values
    stream = Encoder(qp=-30).encode(tensors).stream
    nnc.encode_model(tensors, tmp_path / "m.nnr", qp=-30)
    assert (tmp_path / "m.nnr").read_bytes() == stream
    kinds = {t["name"]: t["payload_type"] for t in stream_info(stream)["tensors"]}
    assert kinds["a.bias"] == "BLOCK" and kinds["b.bias"] == "RAW_FLOAT" and kinds["c"] == "RAW_FLOAT"


@pytest.mark.parametrize("qp", [-200, -129, 128, 200])
def test_small_tensors_at_qps_beyond_the_offset_range_encode(qp):
    """raw_when_smaller compares sizes at an MPS qp the tensor's qp offset fits (spec 8.2), not at 0."""
    x = np.array([1e10 if qp > 0 else 1e-10, 2.0 if qp > 0 else 3e-10], np.float32)
    stream = nnc.encode({"b": x}, qp=qp)
    back = nnc.decode(stream)["b"]
    assert back.shape == x.shape


def test_the_reported_snr_counts_tensors_stored_raw_as_exact(tmp_path, capsys):
    """Two scales stored raw because that is smaller decode exactly; the encode's report said 58 dB (measured on
    the quantised values it did not write)."""
    import json

    from nnc import formats
    from nnc.cli import main

    model = tmp_path / "s.safetensors"
    formats.write_model(str(model), {"a.scale": np.float32(1.0), "b.scale": np.float32(0.37)})
    out = tmp_path / "s.nnr"
    assert main(["encode", str(model), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["payload_type"] for t in stream_info(out.read_bytes())["tensors"]] == ["RAW_FLOAT"] * 2
    assert float(report["snr_db"]) == float("inf")   # (JSON has no inf: written as "inf")


def test_encode_model_refuses_a_ragged_entry_with_an_encode_error():
    with pytest.raises(nnc.EncodeError, match="'h' is not an array"):
        nnc.encode_model({"w": np.ones(2, np.float32), "h": [[1.0, 2.0], [3.0]]})


one_signed_magnitudes = st.floats(-12, 3)  # log10 of a magnitude: 1e-12 .. 1e3


@given(st.lists(one_signed_magnitudes, min_size=1, max_size=80), st.sampled_from([1.0, -1.0]),
       st.sampled_from([None, -75, -38, -20]), st.booleans(), st.booleans())
@settings(max_examples=40, deadline=None)
def test_a_one_signed_non_weight_tensor_never_decodes_an_entry_as_zero(exponents, sign, qp, dq, with_weight):
    # a variance, a rotary inv_freq, a layer scale: an entry at 0 (or of the other sign) changes what the model does
    values = (sign * 10.0 ** np.asarray(exponents)).astype(np.float32)
    tensors = {"norm.running_var": values}
    if with_weight:  # (in a model, after a weight it could share a block unit with)
        tensors = {"norm.weight": np.ones((len(values), 3), np.float32), **tensors}
    options = {} if qp is None else {"qp": qp}
    res = Encoder(dq=dq, **options).encode(tensors)
    decoded = nnc.decode(res.stream)["norm.running_var"]
    assert np.all(np.sign(decoded) == sign)
    if res.tensors["norm.running_var"].payload_type == "RAW_FLOAT":
        np.testing.assert_array_equal(decoded, values)  # (stored raw for this or because it is smaller)


def test_a_rotary_inv_freq_is_kept_and_the_cli_says_why(tmp_path, capsys):
    inv_freq = (1.0 / 10000 ** (np.arange(0, 64, 2) / 64)).astype(np.float32)  # 1 .. 1.3e-4
    np.savez(tmp_path / "m.npz", **{"rotary.inv_freq": inv_freq})
    assert nnc.cli.main(["encode", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.nnr")]) == 0
    assert "rotary.inv_freq (all 32 values positive, like a variance, frequency or scale; 7 would decode as 0 at qp -38)" in capsys.readouterr().err
    np.testing.assert_array_equal(nnc.decode((tmp_path / "m.nnr").read_bytes())["rotary.inv_freq"], inv_freq)


@pytest.mark.parametrize("options", [{"qp_per_tensor": {"rotary.*": -38}}, {"raw_when_smaller": False}])
def test_one_signed_tensors_are_quantised_when_their_qp_is_given_or_raw_storage_is_off(options):
    inv_freq = (1.0 / 10000 ** (np.arange(0, 64, 2) / 64)).astype(np.float32)
    res = Encoder(**options).encode({"rotary.inv_freq": inv_freq})
    assert res.tensors["rotary.inv_freq"].payload_type == "FLOAT"
    assert np.count_nonzero(nnc.decode(res.stream)["rotary.inv_freq"] == 0) == 7


def test_mixed_sign_biases_are_still_quantised_to_zero_where_small():
    bias = np.array([0.5, -0.5, 1e-5, -1e-5] * 8, np.float32)  # zeros there cost the model almost nothing
    res = Encoder().encode({"fc.bias": bias})
    assert res.tensors["fc.bias"].payload_type == "FLOAT" and res.tensors["fc.bias"].kept_raw is None
