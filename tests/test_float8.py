"""Formats numpy lacks (nnc.narrow_floats): float8 checkpoints coded exactly, bfloat16 and float8 written back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import nnc
from nnc import narrow_floats as nf
from nnc.cli import main
from nnc.engine import COMPILED_AVAILABLE
from nnc.errors import EncodeError
from nnc.formats import read_model, safetensors_bytes

ENGINES = ["python"] + (["cython"] if COMPILED_AVAILABLE else [])
FLOAT8 = sorted(nf.FLOAT8)


def test_float8_values_of_known_patterns():
    e4m3 = nf.to_float32("float8_e4m3fn", np.array([0x00, 0x01, 0x08, 0x38, 0x7E, 0x7F, 0xFE, 0x80], np.uint8))
    assert e4m3[:5].tolist() == [0.0, 2.0**-9, 2.0**-6, 1.0, 448.0]
    assert np.isnan(e4m3[5]) and e4m3[6] == -448.0 and np.signbit(e4m3[7]) and e4m3[7] == 0
    e5m2 = nf.to_float32("float8_e5m2", np.array([0x01, 0x3C, 0x7B, 0x7C, 0xFC, 0x7D], np.uint8))
    assert e5m2[:3].tolist() == [2.0**-16, 1.0, 57344.0]
    assert e5m2[3] == np.inf and e5m2[4] == -np.inf and np.isnan(e5m2[5])
    assert nf.largest("float8_e4m3fn") == 448.0 and nf.smallest_step("float8_e5m2") == 2.0**-16


@pytest.mark.parametrize("fmt", FLOAT8)
def test_every_float8_pattern_survives_a_round_trip_through_float32(fmt):
    codes = np.arange(256, dtype=np.uint8)
    values = nf.to_float32(fmt, codes)
    back = nf.from_float32(fmt, values)
    finite = np.isfinite(values)
    assert np.array_equal(back[finite], codes[finite])
    assert np.array_equal(np.isnan(nf.to_float32(fmt, back)), np.isnan(values))
    # a NaN keeps its sign (before: e4m3fn's 0xff, -NaN, came back as 0x7f); e5m2 has no NaN payloads to keep
    assert np.array_equal(np.signbit(values), codes >= 128) and np.array_equal(back >= 128, codes >= 128)


@pytest.mark.parametrize("fmt", FLOAT8)
def test_float8_nan_signs_survive_an_encode(fmt):
    codes = np.array([0x7F, 0xFF, 0x01, 0x81, 0x40], np.uint8)  # +NaN, -NaN (both formats), values
    values = nf.to_float32(fmt, codes)
    decoded = nnc.decode_model(nnc.encode({"w": values}, dtypes={"w": fmt}))["w"]
    assert np.array_equal(np.signbit(decoded), np.signbit(values))
    assert np.array_equal(nf.from_float32(fmt, decoded), nf.from_float32(fmt, values))


@pytest.mark.parametrize("fmt", FLOAT8)
def test_float8_conversions_agree_with_torch(fmt):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, fmt, None)
    if dtype is None:
        pytest.skip(f"this torch has no {fmt}")
    codes = np.arange(256, dtype=np.uint8)
    theirs = torch.from_numpy(codes).view(dtype).float().numpy()
    ours = nf.to_float32(fmt, codes)
    assert np.array_equal(ours, theirs, equal_nan=True)
    rng = np.random.default_rng(7)
    top = nf.largest(fmt)
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * s for s in (1e-3, 0.3, 10, top / 8)])
    finite = np.sort(ours[np.isfinite(ours)].astype(np.float64))
    midpoints = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)  # exact ties: to even
    x = np.concatenate([x, midpoints])
    x = x[np.abs(x) <= top]
    assert np.array_equal(nf.from_float32(fmt, x), torch.from_numpy(x).to(dtype).view(torch.uint8).numpy())


@given(st.sampled_from(FLOAT8), st.floats(-1e6, 1e6, width=32))
def test_float8_rounding_picks_the_nearest_value(fmt, x):
    got = float(nf.to_float32(fmt, nf.from_float32(fmt, np.float32(x)))[()])
    values = nf.to_float32(fmt, np.arange(256, dtype=np.uint8)).astype(np.float64)
    values = values[np.isfinite(values)]
    if abs(x) >= nf.largest(fmt):
        assert got == np.copysign(nf.largest(fmt), x)  # saturates: never inf or NaN from a finite value
    else:
        assert abs(got - x) == np.min(np.abs(values - x))


def test_non_finite_values_keep_their_sign_and_finite_ones_saturate():
    x = np.array([np.inf, -np.inf, np.nan, 1e9, -1e9], np.float32)
    e4 = nf.to_float32("float8_e4m3fn", nf.from_float32("float8_e4m3fn", x))
    assert np.isnan(e4[:3]).all() and e4[3:].tolist() == [448.0, -448.0]  # no inf in e4m3fn
    e5 = nf.to_float32("float8_e5m2", nf.from_float32("float8_e5m2", x))
    assert e5[:2].tolist() == [np.inf, -np.inf] and np.isnan(e5[2]) and e5[3:].tolist() == [57344.0, -57344.0]
    big = nf.to_float32("bfloat16", nf.from_float32("bfloat16", np.array([3.4e38, -3.4e38], np.float32)))
    assert np.isfinite(big).all()


def test_a_bfloat16_nan_with_a_payload_stays_nan():
    nan = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000], np.uint32).view(np.float32)
    bits = nf.float32_to_bfloat16(nan)  # the rounding once carried the payload into the sign: -0
    assert np.isnan(nf.bfloat16_to_float32(bits)).all()
    assert [bool(b & 0x8000) for b in bits] == [False, True, False]


def float8_tensor(fmt, codes):
    """float32 values of float8 bit patterns, the non-finite ones (and e5m2's beyond 2^15) replaced by 1."""
    values = nf.to_float32(fmt, codes)
    return np.where(np.isfinite(values) & (np.abs(values) < 2.0**15), values, np.float32(1.0))


@pytest.mark.parametrize("engine", ENGINES)
@given(
    fmt=st.sampled_from(FLOAT8),
    shape=st.sampled_from([(7,), (3, 5), (16, 33), (2, 3, 4)]),
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([4, 40, 256]),
)
@example(fmt="float8_e5m2", shape=(7,), seed=12129, spread=256)  # (-0 among negatives: stored raw, sign kept)
def test_float8_tensors_decode_to_exactly_their_values(engine, fmt, shape, seed, spread):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, spread, size=shape).astype(np.uint8) | (rng.integers(0, 2, size=shape) << 7).astype(
        np.uint8
    )
    w = float8_tensor(fmt, codes)
    stream = nnc.encode({"w": w, "x": w.reshape(-1)[:3] + 0.5}, dtypes={"w": fmt}, engine=engine, qp=-20)
    decoded = nnc.decode(stream, engine=engine)
    assert np.array_equal(decoded["w"].reshape(shape), w)  # (-0 decodes as +0: equal values)
    dec = nnc.Decoder(stream)
    assert dec.metadata["dtypes"]["w"] == fmt
    bits = np.zeros(shape, np.uint8)  # a caller's array of the format's bit patterns
    dec.decode_tensor("w", out=bits)
    expected, zero = nf.from_float32(fmt, w + np.float32(0)), w == 0
    assert np.array_equal(bits[~zero], expected[~zero])
    # (NNC codes values: -0 becomes +0; a tensor small enough to be stored raw, float32, keeps -0's sign)
    zeros = nf.from_float32(fmt, np.array([0.0, -0.0], np.float32))
    assert np.isin(bits[zero], zeros).all()


@pytest.mark.parametrize("fmt", FLOAT8)
def test_full_range_float8_tensors_are_coded_not_stored_raw(fmt, tmp_path, capsys):
    # e5m2's largest value is 3.8e9 subnormal spacings: the step must be the values' own (largest common) power of 2
    rng = np.random.default_rng(5)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    w = nf.to_float32(fmt, nf.from_float32(fmt, w / np.abs(w).max() * nf.largest(fmt) + np.float32(0)))
    res = nnc.Encoder(dtypes={"w": fmt}).encode({"w": w})
    assert res.tensors["w"].kept_raw is None and len(res.stream) < w.size  # under a byte a weight
    assert np.array_equal(nnc.decode(res.stream)["w"], w)
    src = tmp_path / "m.safetensors"  # the streaming encoder plans the finest qp and takes a coarser one
    src.write_bytes(safetensors_bytes({"w": w, "v": w[:4] / 4}, {"w": fmt, "v": fmt}))
    assert main(["encode", str(src), "-o", str(tmp_path / "m.nnr"), "--quiet"]) == 0
    capsys.readouterr()
    assert (tmp_path / "m.nnr").read_bytes() == nnc.encode_model(src)
    assert np.array_equal(nnc.decode_model(tmp_path / "m.nnr")["w"], w)


def test_float8_values_off_the_grid_are_stored_exactly_too():
    w = np.array([[0.1, 0.2], [1e-7, 3.0]], np.float32)  # not float8 values, though the caller says so
    res = nnc.Encoder(dtypes={"w": "float8_e4m3fn"}).encode({"w": w})
    assert res.tensors["w"].kept_raw and np.array_equal(nnc.decode(res.stream)["w"], w)


def test_float8_tensors_stay_out_of_blocks():
    w = float8_tensor("float8_e4m3fn", np.arange(48, dtype=np.uint8).reshape(6, 8))
    model = {"fc.weight": w, "fc.bias": np.linspace(-1, 1, 6).astype(np.float32)}
    for blocks in ("auto", True):
        stream = nnc.encode(model, dtypes={"fc.weight": "float8_e4m3fn"}, blocks=blocks)
        assert np.array_equal(nnc.decode(stream)["fc.weight"], w)
        assert not any(i.block for i in nnc.Decoder(stream).tensors())
    with pytest.raises(EncodeError, match="float8"):
        nnc.encode(model, dtypes={"fc.weight": "float8_e4m3fn"}, blocks={"fc.weight": {"bias": "fc.bias"}})


@pytest.mark.parametrize("fmt", FLOAT8)
def test_a_float8_safetensors_checkpoint_decodes_to_the_same_file(fmt, tmp_path, capsys):
    rng = np.random.default_rng(3)
    codes = nf.from_float32(fmt, (rng.standard_normal((64, 48)) * 2).astype(np.float32) + np.float32(0))
    codes[codes == 0x80] = 0  # NNC codes values: -0 decodes as +0
    w = float8_tensor(fmt, codes)
    tensors = {"l.weight": w, "l.weight_scale_inv": rng.random((1, 1), np.float32), "l.bias": w[:, 0].copy()}
    dtypes = {"l.weight": fmt, "l.bias": "bfloat16"}
    src = tmp_path / "m.safetensors"
    src.write_bytes(safetensors_bytes(tensors, dtypes))
    assert main(["encode", str(src), "-o", str(tmp_path / "m.nnr"), "--raw", "*scale_inv", "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "out.safetensors")]) == 0
    capsys.readouterr()
    back, back_dtypes = read_model(tmp_path / "out.safetensors")
    assert back_dtypes == {"l.weight": fmt, "l.weight_scale_inv": "float32", "l.bias": "bfloat16"}
    assert np.array_equal(back["l.weight"], w) and np.array_equal(back["l.weight_scale_inv"],
                                                                  tensors["l.weight_scale_inv"])
    original = src.read_bytes()
    offset = original.index(nf.from_float32(fmt, w).tobytes())  # the tensor's bytes, byte for byte (no -0 here)
    assert (tmp_path / "out.safetensors").read_bytes()[offset:offset + w.size] == original[offset:offset + w.size]
    # and in memory: the API reads the file's dtypes and codes the tensor exactly
    assert np.array_equal(nnc.decode_model(nnc.encode_model(src))["l.weight"], w)


def test_float8_torch_checkpoints_and_state_dicts_keep_their_dtype(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8 dtypes")
    w = (torch.randn(32, 16) * 20).to(torch.float8_e4m3fn)
    v = torch.randn(8, 8).to(torch.float8_e5m2)
    src = tmp_path / "m.pt"
    torch.save({"w": w, "v": v}, src)
    assert main(["encode", str(src), "-o", str(tmp_path / "m.nnr"), "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "out.pt")]) == 0
    capsys.readouterr()
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert back["w"].dtype == torch.float8_e4m3fn and back["v"].dtype == torch.float8_e5m2
    assert torch.equal(back["w"].float(), w.float()) and torch.equal(back["v"].float(), v.float())
    import nnc.torch as nt

    sd = nt.state_dict(nt.save({"w": w}, qp=-20))
    assert sd["w"].dtype == torch.float8_e4m3fn and torch.equal(sd["w"].float(), w.float())


def test_the_api_adapter_of_nnc_verify_decodes_float8_into_bit_patterns():
    from nnc.verify import NNCAPIAdapter

    w = float8_tensor("float8_e4m3fn", np.arange(256, dtype=np.uint8).reshape(16, 16))
    stream = nnc.encode({"w": w}, dtypes={"w": "float8_e4m3fn"})
    assert np.array_equal(NNCAPIAdapter()(stream)["w"].reshape(16, 16), w)


def test_a_caller_who_names_one_dtype_keeps_the_files_dtypes_for_the_others(tmp_path):
    w = float8_tensor("float8_e4m3fn", np.arange(64, dtype=np.uint8).reshape(8, 8))
    src = tmp_path / "m.safetensors"
    src.write_bytes(safetensors_bytes({"w": w, "b": np.linspace(-1, 1, 8, dtype=np.float32)}, {"w": "float8_e4m3fn",
                                                                                               "b": "bfloat16"}))
    dec = nnc.Decoder(nnc.encode_model(src, dtypes={"w": "float32"}, qp=-30))  # w quantised again, as float32
    assert dec.metadata["dtypes"] == {"b": "bfloat16"}  # before: the file's dtypes all replaced by the caller's
    assert dec.info("w").codebook is None and dec.info("w").dq  # quantised, not the exact codebook


def test_onnx_float8_and_bfloat16_initializers_come_back_in_their_types(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(4).standard_normal((6, 5)).astype(np.float32)
    inits = [numpy_helper.from_array(w.astype(ml_dtypes.bfloat16), "wbf"),
             numpy_helper.from_array(w.astype(ml_dtypes.float8_e4m3fn), "w8")]
    graph = helper.make_graph([helper.make_node("Identity", ["w8"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, [6, 5])],
                              initializer=inits)
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), src)
    assert main(["encode", str(src), "-o", str(tmp_path / "m.nnr"), "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "out.onnx"), "--template", str(src)]) == 0
    capsys.readouterr()
    back = {i.name: i for i in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert back["w8"].data_type == TensorProto.FLOAT8E4M3FN and back["wbf"].data_type == TensorProto.BFLOAT16
    exact = w.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) + np.float32(0)
    assert np.array_equal(numpy_helper.to_array(back["w8"]).astype(np.float32), exact)


def test_nnc_torch_refuses_a_dtype_numpy_lacks_instead_of_coding_it_as_float32():
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fnuz"):
        pytest.skip("this torch has no float8_e4m3fnuz")
    import nnc.torch as nt

    with pytest.raises(EncodeError, match="float8_e4m3fnuz"):  # before: coded as float32, its dtype forgotten
        nt.save({"w": torch.ones(4, 4).to(torch.float8_e4m3fnuz)})


def test_integer_tensors_stay_out_of_blocks_and_stay_exact():
    model = {"fc.weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4),
             "fc.bias": np.array([-8000, -7000, -6000, -5000, -3999, 12], np.int32),
             "g.weight": np.arange(24, dtype=np.int8).reshape(6, 4), "g.bias": np.ones(6, np.float32)}
    for blocks in (True, "auto"):  # blocks=True quantised them with the weight: -7000 came back as -6999
        decoded = nnc.decode_model(nnc.encode(model, blocks=blocks, qp=-20))
        assert np.array_equal(decoded["fc.bias"], model["fc.bias"]) and np.array_equal(decoded["g.weight"],
                                                                                      model["g.weight"])
    with pytest.raises(EncodeError, match="integer"):
        nnc.encode(model, blocks={"fc.weight": {"bias": "fc.bias"}})
    lossy = nnc.decode(nnc.encode(model, blocks=True, lossless_int=False, qp=-20))  # asked for: they may pair
    assert lossy["fc.bias"].dtype.kind == "f"
