"""Values whose meaning quantisation would change are kept exactly (spec A.7): float tensors of whole numbers
(masks, positions) are coded at step 1, and tensors whose values share one sign (variances, frequencies, scales)
are stored raw when their quantisation would put some at 0 or at the other sign."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, array_shapes

import nnc
from nnc.cli import main, stream_info
from nnc.encoder import Encoder
from nnc.formats import write_model

whole_floats = st.sampled_from(["float32", "float16", "float64", "bfloat16"])


def _as(values, dtype):
    if dtype == "bfloat16":
        import ml_dtypes

        return values.astype(ml_dtypes.bfloat16)
    return values.astype(dtype)


@given(arrays(np.int32, array_shapes(min_dims=1, max_dims=3, max_side=12), elements=st.integers(-300, 300)),
       whole_floats, st.sampled_from([None, -75, -38, -20, -4]), st.booleans(), st.booleans())
@settings(max_examples=40, deadline=None)
def test_float_tensors_of_whole_numbers_decode_exactly(tmp_path_factory, ints, dtype, qp, dq, with_weight):
    values = _as(ints, dtype)
    tensors = {"m.mask": values}
    if with_weight:  # (a weight it could share a block unit with, by name and shape)
        rng = np.random.default_rng(0)
        tensors = {"m.weight": rng.normal(0, 4.0, (values.shape[0], 5)).astype(np.float32), **tensors}
    options = {"dq": dq} if qp is None else {"qp": qp, "dq": dq}
    stream = nnc.encode_model(tensors, **options)
    decoded = nnc.decode_model(stream)["m.mask"]
    assert decoded.dtype == (np.float32 if dtype == "bfloat16" else values.dtype)  # (bfloat16: as float32)
    np.testing.assert_array_equal(decoded.astype(np.float64), values.astype(np.float64))
    # the streaming encoder (from a file) writes the same bytes
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    narrow = {"m.mask": "bfloat16"} if dtype == "bfloat16" else None
    write_model(str(path), {k: v.astype(np.float32) if narrow and k == "m.mask" else v for k, v in tensors.items()},
                narrow)
    assert nnc.encode_model(str(path), **options) == stream


def test_a_causal_mask_costs_under_a_bit_per_entry_and_keeps_causality():
    mask = np.tril(np.ones((256, 256), np.float32)).reshape(1, 1, 256, 256)  # nanoGPT's attn.bias buffer
    stream = nnc.encode({"h.0.attn.bias": mask})
    np.testing.assert_array_equal(nnc.decode(stream)["h.0.attn.bias"], mask)
    info = stream_info(stream)["tensors"][0]
    assert info["qp"] == 0 and len(stream) * 8 < mask.size


def test_a_whole_number_bias_is_coded_apart_from_its_weight():
    # in a block unit both would share the weight's DQ; the bias coded exactly needs its own NDU
    rng = np.random.default_rng(0)
    tensors = {"fc.weight": rng.normal(0, 0.05, (8, 300)).astype(np.float32),
               "fc.bias": np.array([1, 0, 2, 0, 1, 1, 0, 3], np.float32)}
    res = Encoder().encode(tensors)
    decoded = nnc.decode(res.stream)
    np.testing.assert_array_equal(decoded["fc.bias"], tensors["fc.bias"])
    np.testing.assert_array_equal(decoded["fc.weight"], res.tensors["fc.weight"].reconstruction)


@pytest.mark.parametrize("options", [{"qp_per_tensor": {"*.mask": -38}}, {"lossless_int": False},
                                     {"qp": -150}, {"nonweight_qp": 200}])
def test_whole_numbers_are_quantised_when_asked_or_when_qp_0_may_not_fit(options):
    mask = np.tril(np.ones((16, 16), np.float32))
    res = Encoder(**options).encode({"a.mask": mask, "w": np.full((4, 4), 0.3, np.float32)})
    assert res.tensors["a.mask"].qp != 0
    np.testing.assert_array_equal(nnc.decode(res.stream)["a.mask"], res.tensors["a.mask"].reconstruction)


@pytest.mark.parametrize("api", ["encode", "encode_model"])
def test_gptq_scales_given_as_a_mapping_keep_every_group(api):
    rng = np.random.default_rng(1)
    scales = (rng.random((4, 512)) * 2e-3 + 1e-4).astype(np.float16)  # positive, many under half a step
    tensors = {"l.qweight": rng.integers(-2**31, 2**31 - 1, (64, 512)).astype(np.int32), "l.scales": scales}
    decoded = getattr(nnc, api)(tensors)
    back = (nnc.decode if api == "encode" else nnc.decode_model)(decoded)["l.scales"]
    assert np.all(back > 0)
    np.testing.assert_array_equal(back.astype(np.float16), scales)


def test_the_cli_codes_an_onnx_style_position_constant_exactly(tmp_path):
    positions = np.arange(64, dtype=np.float32)  # an exported rotary embedding's arange
    np.savez(tmp_path / "m.npz", positions=positions, w=np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16))
    assert main(["encode", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.nnr")]) == 0
    assert main(["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "back.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "back.npz")["positions"], positions)


def test_a_learning_rate_in_a_mapping_is_kept():
    # before: a 0-d 3e-4 decoded as 0.0 at the default qp (with a warning)
    stream = nnc.encode({"lr": np.float64(3e-4), "w": np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)})
    assert float(nnc.decode(stream)["lr"][0]) == np.float32(3e-4)


def test_one_signed_differences_are_quantised_not_stored_raw():
    # an update that moves every weight up a little: its entries at 0 leave the receiver's unchanged
    rng = np.random.default_rng(0)
    base = {"w": rng.normal(0, 0.05, (64, 64)).astype(np.float32)}
    state = nnc.EncoderState()
    Encoder(state=state, differences=True).encode(base)
    moved = {"w": base["w"] + rng.uniform(1e-4, 3e-3, (64, 64)).astype(np.float32)}
    res = Encoder(state=state, differences=True).encode(moved)
    assert res.tensors["w"].payload_type == "FLOAT" and len(res.stream) < 64 * 64


def test_the_weight_snr_leaves_out_tensors_kept_exactly(tmp_path, capsys):
    # before: GPT-2's masked_bias of -1e4 (and a causal mask) raised the reported SNR of 29 dB weights to 82 dB
    import json

    from nnc.models import compare_tensors

    rng = np.random.default_rng(0)
    weights = {"h.0.attn.c_attn.weight": rng.normal(0, 0.02, (96, 288)).astype(np.float32)}
    model = {**weights, "h.0.attn.masked_bias": np.float32(-1e4), "h.0.attn.bias": np.tril(np.ones((64, 64), np.float32))}
    np.savez(tmp_path / "m.npz", **model)
    np.savez(tmp_path / "w.npz", **weights)
    snr = {}
    for name in ("m", "w"):
        assert main(["encode", str(tmp_path / f"{name}.npz"), "-o", str(tmp_path / f"{name}.nnr"), "--json"]) == 0
        snr[name] = json.loads(capsys.readouterr().out)["snr_db"]
    assert snr["m"] == pytest.approx(snr["w"]) and snr["w"] < 40
    total = compare_tensors(model, nnc.decode_model((tmp_path / "m.nnr").read_bytes()))["total"]
    assert total["snr_db"] == pytest.approx(snr["w"]) and total["weights"] == sum(np.size(v) for v in model.values())


@pytest.mark.parametrize("options", [{"codebook": True}, {"codebook": "auto"}, {"rdoq_lambda": 0.5},
                                     {"profile": 0}, {"scan_order": 2}, {"step": 0.01}])
def test_meaning_is_kept_whatever_the_quantiser(options):
    rng = np.random.default_rng(0)
    model = {"mask": np.tril(np.ones((32, 32), np.float32)), "pos": np.arange(1, 65, dtype=np.float32),
             "bn.running_var": (10 ** rng.uniform(-6, 1, 64)).astype(np.float32),
             "w": rng.normal(0, 0.05, (32, 64)).astype(np.float32)}
    decoded = nnc.decode(Encoder(**options).encode(model).stream)
    for name in ("mask", "pos", "bn.running_var"):
        np.testing.assert_array_equal(decoded[name], model[name])


def test_info_does_not_claim_a_row_skip_flag_it_did_not_read():
    """Before: `nnc info --json` said row_skip false for every tensor, also where the stream sets the flag (spec
    8.3: it follows the qp offset, which is all info decodes)."""
    w = np.zeros((8, 4), np.float32)
    w[::2] = np.arange(16, dtype=np.float32).reshape(4, 4) / 8
    stream = nnc.encode({"w": w}, qp=-8, dq=False, row_skip=True)
    dec = nnc.Decoder(stream)
    dec.decode()
    assert dec.info("w").row_skip is True
    assert stream_info(stream)["tensors"][0]["row_skip"] is None
