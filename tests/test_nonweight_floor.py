"""The floor of the tensors of at most one dimension (spec A.7): a bias or normalisation buffer far smaller than the
weights keeps ``nonweight_snr_db`` at a finer qp than the weights', instead of rounding to little of its signal."""

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import nnc
from nnc.cli import main, stream_info
from nnc.encoder import Encoder
from nnc.encoding.quantiser import qp_keeping_snr
from nnc.formats import write_model
from nnc.readers import open_model
from nnc.reconstruction import step_size


def snr_db(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    error = float(((x - y) ** 2).sum())
    return np.inf if error == 0 else 10 * np.log10(float((x**2).sum()) / error)


def rounding_snr(x, qp):
    step = float(step_size(qp, 2))
    return snr_db(x, step * np.rint(np.asarray(x, np.float64) / step))


def bn_model(scale=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.05, (16, 8, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(0, scale, 16).astype(np.float32),
        "bn.weight": (1 + rng.normal(0, 0.1, 16)).astype(np.float32),
        "bn.running_mean": rng.normal(0, scale, 16).astype(np.float32),
    }


@given(st.floats(-7, 2), st.integers(1, 300), st.sampled_from([-60, -38, -20, -8]), st.floats(5, 60), st.integers(0, 9))
@settings(max_examples=60, deadline=None)
def test_the_qp_is_the_coarsest_that_keeps_the_snr(log_scale, n, qp, target, seed):
    x = (np.random.default_rng(seed).normal(0, 10.0**log_scale, n)).astype(np.float32)
    q = qp_keeping_snr(x, qp, target, 2)
    assert -128 <= q <= qp
    if q > -128:
        assert rounding_snr(x, q) >= target
    if q < qp:
        assert rounding_snr(x, q + 1) < target  # no coarser qp would do (the search moves one qp at a time)


@given(st.floats(-6, 0), st.integers(2, 200), st.sampled_from([-38, -30, -20]), st.booleans(), st.integers(0, 2),
       st.integers(0, 9))
@settings(max_examples=40, deadline=None)
@example(-2.0625, 181, -30, True, 2, 0)  # one-signed values that rounding zeroes but DQ's trellis does not: 9 dB
def test_a_default_encode_keeps_every_one_dimensional_tensor(log_scale, n, qp, dq, shape, seed):
    rng = np.random.default_rng(seed)

    def draw(size):  # centred, heavy-tailed, or of one sign about an offset (a variance)
        scale = 10.0**log_scale
        values = [rng.normal(0, scale, size), rng.laplace(0, scale, size), scale * (1 + 0.3 * rng.normal(0, 1, size))]
        return values[shape].astype(np.float32)

    model = {"w": rng.normal(0, 0.05, (8, n)).astype(np.float32), "w.bias": draw(8), "norm": draw(n),
             "scale": draw(1).reshape(())}  # (a 0-d float: the floor's rounding once failed on it, TypeError)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nnc.PrecisionWarning)  # no tensor kept little of its signal
        res = Encoder(qp=qp, dq=dq).encode(model)
    decoded = nnc.decode(res.stream)
    for name in ("w.bias", "norm", "scale"):
        assert snr_db(model[name], decoded[name].reshape(model[name].shape)) >= 19.99, name  # (or stored raw: inf)


def test_the_floor_turned_off_or_a_qp_given_leaves_the_qp():
    model = bn_model()
    floored = Encoder().encode(model)
    assert floored.tensors["bn.running_mean"].qp < -38 and floored.tensors["conv.bias"].qp < -38
    assert floored.tensors["bn.weight"].qp == -38  # it keeps 20 dB at the weights' qp
    for options in ({"nonweight_snr_db": 0}, {"nonweight_snr_db": None}, {"nonweight_qp": -38},
                    {"qp_per_tensor": {"bn.*": -38, "conv.bias": -38}}):
        with pytest.warns(nnc.PrecisionWarning, match="kept little of their signal"):
            nnc.encode(model, **options)
        assert Encoder(**options).encode(model).tensors["bn.running_mean"].qp == -38, options
    # explicit blocks quantise a bias at its weight's step
    assert Encoder(blocks=True).encode(model).tensors["conv.bias"].qp == -38
    # qps beyond the offsets around an MPS qp of 0: the floor would change the stream's planned MPS qp
    assert Encoder(qp_per_tensor={"conv.weight": 150}).encode(model).tensors["bn.running_mean"].qp == -38


def test_a_bias_coded_finer_leaves_its_weights_block_and_the_streaming_path_writes_the_same_bytes(tmp_path):
    model = bn_model()
    in_memory = Encoder().encode(model)
    src = tmp_path / "m.safetensors"
    write_model(str(src), model)
    summary = Encoder().encode_to(open_model(str(src)), tmp_path / "m.nnc")  # (plans the qps from the headers)
    assert (tmp_path / "m.nnc").read_bytes() == in_memory.stream
    assert summary.qps["conv.bias"] == in_memory.tensors["conv.bias"].qp < summary.qps["conv.weight"]
    def block_of_conv(stream):
        return next(t["block"] for t in stream_info(stream)["tensors"] if t["name"] == "conv.weight")

    assert block_of_conv(in_memory.stream) == []  # the bias has a qp of its own: no BLOCK NDU carries it (spec 7.6)
    assert block_of_conv(Encoder(nonweight_snr_db=0).encode(model).stream) != []
    decoded = nnc.decode(in_memory.stream)
    assert snr_db(model["bn.running_mean"], decoded["bn.running_mean"]) >= 19.99


def test_the_cli_option_and_its_checks(tmp_path, capsys):
    src = tmp_path / "m.npz"
    write_model(str(src), bn_model())
    assert main(["encode", str(src), "-o", str(tmp_path / "a.nnc")]) == 0
    assert "kept little" not in capsys.readouterr().err
    assert main(["encode", str(src), "-o", str(tmp_path / "b.nnc"), "--nonweight-snr", "0"]) == 0
    assert "kept little of their signal" in capsys.readouterr().err
    assert (tmp_path / "b.nnc").stat().st_size < (tmp_path / "a.nnc").stat().st_size
    for bad in ("-1", "nan", "1000"):
        assert main(["encode", str(src), "-o", str(tmp_path / "c.nnc"), "--nonweight-snr", bad]) != 0
        err = capsys.readouterr().err
        assert "--nonweight-snr" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "c.nnc").exists()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("qp", [-24, -16, -12])
def test_the_bundled_models_decode_with_every_one_dimensional_tensor_kept(kind, qp):
    """Before: a bias quantised again uniformly at its weight's qp (DQ kept under the floor) stayed in the weight's
    BLOCK NDU, whose one dq_flag said DQ (spec 7.6): the stream did not decode (terminate bin, spec 9.6)."""
    from nnc import demo
    from nnc.formats import read_model

    model = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / demo.MODELS[kind])[0].items()}
    res = Encoder(qp=qp).encode(model)
    decoded = nnc.decode(res.stream)
    for name, x in model.items():
        np.testing.assert_array_equal(decoded[name], res.tensors[name].reconstruction)
        if x.ndim == 1:
            assert snr_db(x, decoded[name]) >= 19.99, name


@pytest.mark.parametrize("shape", [(1, 64), (1, 64, 1), (1, 1, 64), (64, 1)])
def test_an_export_s_norms_with_singleton_dimensions_keep_the_floor_too(tmp_path, shape):
    """Before: ONNX and JAX exports keep a norm's scale or bias as (1, 512) or (1, 512, 1) (magika's every small
    tensor): counted as two or three dimensions, none was floored, and a running mean of 1e-3 kept 4 dB."""
    rng = np.random.default_rng(4)
    model = {"conv.weight": rng.normal(0, 0.05, (64, 8, 3, 3)).astype(np.float32),
             "norm.mean": rng.normal(0, 1e-3, shape).astype(np.float32)}
    res = Encoder().encode(model)
    assert res.tensors["norm.mean"].qp < -38
    assert snr_db(model["norm.mean"], nnc.decode(res.stream)["norm.mean"]) >= 19.99
    src = tmp_path / "m.safetensors"
    write_model(str(src), model)
    Encoder().encode_to(open_model(str(src)), tmp_path / "m.nnc")  # (planned from the headers: the same bytes)
    assert (tmp_path / "m.nnc").read_bytes() == res.stream
    # a matrix is a weight: its qp is the global one, floor or not
    wide = {"w": rng.normal(0, 1e-3, (2, 64)).astype(np.float32)}
    assert Encoder(nonweight_snr_db=60).encode(wide).tensors["w"].qp == -38


def test_the_floor_rounds_half_a_step_away_from_zero_as_the_quantiser_does():
    """Before: the floor's one-signed check rounded with np.rint (ties to even), so a positive value of exactly half a
    step counted as put at 0 and the whole tensor was stored raw for a reason untrue of the quantiser, which rounds
    it to 1 (spec A.1)."""
    step = float(step_size(-38, 2))
    x = np.full(256, 100 * step, np.float32)
    x[7] = 0.5 * step
    coded = Encoder(qp=-38, dq=False).encode({"scale": x}).tensors["scale"]
    assert coded.kept_raw is None and coded.qp == -38
    assert np.array_equal(nnc.decode(nnc.encode({"scale": x}, qp=-38, dq=False))["scale"], np.where(x == x[7], step, x))
