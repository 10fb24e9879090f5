"""codebook="few" (the default, spec A.8): float tensors of few distinct values coded as codebooks where smaller."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnc
from nnc import formats
from nnc.encoding import quantiser
from nnc.encoding.quantiser import CODEBOOK_SAMPLE, FEW_VALUES, FEW_VALUES_MIN_SIZE, few_distinct_values, sample_bands


def decoder(stream):
    """A Decoder whose tensor records hold their qp and step."""
    dec = nnc.Decoder(stream)
    dec.read_qps()
    return dec


def test_a_constant_tensor_costs_bytes_not_bits_per_weight():
    """Before: 59,191 bytes for a 256x256 tensor of 0.5 (its level 362 cost about 7 bits a weight); 72 now."""
    w = np.full((256, 256), 0.5, np.float32)
    stream, plain = nnc.encode({"w": w}), nnc.encode({"w": w}, codebook=False)
    assert len(stream) < 100 < 50_000 < len(plain)
    dec = decoder(stream)
    assert dec.info("w").codebook is not None and len(dec.info("w").codebook) == 1
    for decoded in (nnc.decode(stream)["w"], nnc.decode_model(stream)["w"]):
        assert decoded.dtype == np.float32 and decoded.shape == w.shape  # (not a codebook's float64)
        assert np.abs(decoded - w).max() <= dec.info("w").step / 2


def test_weights_quantised_before_are_smaller_and_nearer():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(16) * 0.05).astype(np.float32)
    w = values[rng.integers(0, 16, (512, 512))]
    stream, plain = nnc.encode({"w": w}), nnc.encode({"w": w}, codebook=False)
    assert len(stream) < 0.9 * len(plain)  # (about its order-0 entropy, 4 bits a weight)
    error = np.abs(nnc.decode_model(stream)["w"] - w).max()
    assert error <= decoder(stream).info("w").step / 2 < np.abs(nnc.decode_model(plain)["w"] - w).max()


def test_trained_weights_and_small_tensors_are_coded_as_before():
    rng = np.random.default_rng(2)
    model = {"fc.weight": (rng.standard_normal((128, 64)) * 0.05).astype(np.float32),
             "fc.bias": (rng.standard_normal(128) * 0.01).astype(np.float32),
             "small": np.full((8, 8), 0.5, np.float32), "sparse": np.zeros((64, 64), np.float32)}
    model["sparse"][::7, ::5] = rng.standard_normal((10, 13)).astype(np.float32)
    assert nnc.encode(model) == nnc.encode(model, codebook=False)


def test_a_few_valued_weight_is_coded_apart_from_its_bias():
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(8) * 0.05).astype(np.float32)
    model = {"fc.weight": values[rng.integers(0, 8, (64, 64))], "fc.bias": rng.standard_normal(64).astype(np.float32)}
    dec = nnc.Decoder(nnc.encode(model))
    assert dec.info("fc.weight").codebook is not None and not dec.info("fc.weight").block
    assert dec.info("fc.bias").codebook is None


def test_few_distinct_values_checks_every_element_not_only_its_sample():
    x = np.zeros(1 << 14, np.float32)
    assert few_distinct_values(x) and not few_distinct_values(x[: FEW_VALUES_MIN_SIZE - 1])
    x[1] = 0.25  # (between the strided sample's elements)
    assert few_distinct_values(x)
    x[3::16] = np.arange(x[3::16].size) % FEW_VALUES  # 256 values and 0.25, none of them in the sample
    assert not few_distinct_values(x)
    x[3::16] = np.arange(x[3::16].size) % (FEW_VALUES - 1)
    assert few_distinct_values(x)
    x[1::4] = np.arange(x[1::4].size)  # many values, none of them in the sample
    assert not few_distinct_values(x)
    assert not few_distinct_values(np.arange(4096, dtype=np.float32))
    assert few_distinct_values(np.tile(np.arange(FEW_VALUES, dtype=np.float32), 8))
    assert not few_distinct_values(np.tile(np.arange(FEW_VALUES + 1, dtype=np.float32), 8))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, FEW_VALUES), rows=st.integers(32, 96), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(["float32", "float16", "float64"]), scale=st.sampled_from([1e-3, 0.05, 3.0]))
def test_few_valued_tensors_round_trip_alike_from_memory_and_from_files(tmp_path_factory, k, rows, seed, dtype,
                                                                      scale):
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(k) * scale).astype(dtype)
    model = {"q.weight": values[rng.integers(0, k, (rows, 40))],
             "q.bias": (rng.standard_normal(rows) * 0.01).astype(dtype),
             "other.weight": (rng.standard_normal((rows, 40)) * scale).astype(dtype)}
    stream = nnc.encode_model(model)
    path = tmp_path_factory.mktemp("few") / "m.safetensors"
    path.write_bytes(formats.safetensors_bytes(model))
    out = path.with_suffix(".nnr")
    nnc.encode_model_to(path, out) if hasattr(nnc, "encode_model_to") else nnc.models.encode_model_to(path, out)
    assert out.read_bytes() == stream  # (the streaming encoder plans the same stream from the headers)
    dec = decoder(stream)
    decoded = nnc.decode_model(stream)
    for name, x in model.items():
        assert decoded[name].dtype == x.dtype and decoded[name].shape == x.shape
        info = dec.info(name)
        if info.codebook is not None:  # nearest levels: within half a step (and the dtype's rounding)
            tol = info.step / 2 + np.abs(x.astype(np.float64)).max() * np.finfo(dtype).eps
            assert np.abs(decoded[name].astype(np.float64) - x.astype(np.float64)).max() <= tol


@pytest.mark.parametrize("mode, setting", [("few", "few"), ("never", False), ("auto", "auto"), ("always", True)])
def test_the_command_line_chooses_the_codebook_mode(tmp_path, capsys, mode, setting):
    from nnc.cli import main

    rng = np.random.default_rng(4)
    model = {"c": np.full((64, 64), 0.3, np.float32), "g": (rng.standard_normal((64, 64)) * 0.05).astype(np.float32)}
    path = tmp_path / "m.safetensors"
    path.write_bytes(formats.safetensors_bytes(model))
    out = tmp_path / "m.nnr"
    argv = ["encode", str(path), "-o", str(out), "-q"] + ([] if mode == "few" else ["--codebook", mode])
    assert main(argv) == 0
    assert out.read_bytes() == nnc.encode_model(model, codebook=setting)
    books = {n: nnc.Decoder(out.read_bytes()).info(n).codebook is not None for n in model}
    assert books == {"few": {"c": True, "g": False}, "never": {"c": False, "g": False},
                     "auto": {"c": True, "g": False}, "always": {"c": True, "g": True}}[mode]


def test_a_codebook_mode_that_encodes_in_memory_is_refused_on_a_cluster(tmp_path, capsys):
    from nnc.cli import main

    path = tmp_path / "m.npz"
    np.savez(path, w=np.ones((4, 4), np.float32))
    assert main(["encode", str(path), "-o", str(tmp_path / "m.nnr"), "--codebook", "auto", "--scheduler",
                 "local:1"]) == 1
    assert "--codebook auto cannot be combined with --scheduler" in capsys.readouterr().err
    assert not (tmp_path / "m.nnr").exists()


@pytest.mark.parametrize("codebook", ["few", "auto", True])
def test_a_constant_difference_coded_as_a_codebook_is_not_skipped(codebook):
    """Before (codebook="auto" or True; and so with "few"): a difference of 0.25 everywhere coded as a one-entry
    codebook, its indices all 0, was taken for an all-zero tensor and left out of the update, sender and receiver
    agreeing on the stale value (exit 0, digests equal)."""
    sender, receiver = nnc.EncoderState(), nnc.DecoderState()
    model = {"c": np.full((64, 64), 0.5, np.float32)}
    held = nnc.decode_model(nnc.encode(model, state=sender, differences=True, codebook=codebook), state=receiver)
    for step in range(1, 4):
        model = {"c": model["c"] + 0.25}
        update = nnc.decode(nnc.encode(model, state=sender, differences=True, codebook=codebook), state=receiver)
        assert "c" in update and not update.skipped
        held = nnc.apply_update(held, update)
        assert np.abs(held["c"] - model["c"]).max() <= 1e-3, step
    unchanged = nnc.decode(nnc.encode(model, state=sender, differences=True, codebook=codebook), state=receiver)
    assert unchanged.skipped == ("c",)  # a zero difference is still left out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 40), fmt=st.sampled_from([1, 8, 9, 0, 5, 6]),
       scale=st.sampled_from([0.05, 3.0, 90.0]))
def test_codebook_values_in_a_signalled_format_are_the_spec_s(seed, k, fmt, scale):
    """The decoder picks each codebook value converted once (float formats) or converts slice by slice (integer
    formats), not the float64 values of the whole tensor: the values of spec 12.4 converted by 12.6 all the same."""
    from nnc.reconstruction import convert_to_format

    import warnings

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(k) * scale)[rng.integers(0, k, (70, 50))].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (integer formats round the values: said by a warning)
        plain = nnc.encode({"w": w}, codebook=True, dq=False, qp=-20)
        try:
            signalled = nnc.encode({"w": w}, codebook=True, dq=False, qp=-20, output_formats={"w": fmt})
        except nnc.errors.EncodeError:  # (a format the values do not fit is refused)
            return
    assume(nnc.Decoder(signalled).info("w").codebook is not None)  # (not stored raw, e.g. one-signed values)
    reference = convert_to_format(nnc.decode(plain)["w"], fmt)  # float64 values of 12.4, then 12.6
    decoded = nnc.decode(signalled)["w"]
    assert decoded.dtype == reference.dtype
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize("codebook", ["few", "auto", True])
def test_a_codebook_tensor_with_dc_v1_sigmas_decodes_at_its_own_step(codebook):
    """Before (codebook="auto" or True; and so with "few"): the codebook's levels were taken at DC-v1's step but the
    NDU signalled the settings' qp, so every value decoded 0.75 times too small, without a word."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(8) * 0.05).astype(np.float32)
    w = values[rng.integers(0, 8, (64, 64))]
    result = nnc.encode_with_reconstruction({"w": w}, sigmas={"w": np.full((64, 64), 0.02, np.float32)},
                                            codebook=codebook)
    dec = decoder(result.stream)
    assert dec.info("w").codebook is not None
    decoded = nnc.decode(result.stream)["w"]
    np.testing.assert_array_equal(decoded, np.asarray(result.reconstruction["w"], decoded.dtype))
    assert np.abs(decoded - w).max() <= dec.info("w").step / 2


@pytest.mark.parametrize("shape", [(4096, 256), (300, 2000), (1, 1 << 19), (20000, 40), (64, 64), (8, 1 << 16)])
def test_sample_bands_are_spread_over_the_tensor(shape):
    a = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    part = sample_bands(a)
    if a.size <= CODEBOOK_SAMPLE:
        assert part is a
        return
    assert CODEBOOK_SAMPLE <= part.size < a.size
    by_rows = part.shape[1] == shape[1]
    assert by_rows or part.shape[0] == shape[0]
    lines = np.unique(part // shape[1] if by_rows else part % shape[1])  # the rows (columns) the bands take
    assert lines.min() < shape[0 if by_rows else 1] // 8 and lines.max() >= shape[0 if by_rows else 1] * 7 // 8
    assert np.array_equal(np.unique(part), np.unique(a[lines] if by_rows else a[:, lines]))


@pytest.mark.parametrize("bits, codebook", [(4, True), (8, False)])
def test_a_large_tensor_is_weighed_on_its_bands_and_quantised_once(monkeypatch, bits, codebook):
    """The two codings of a large few-valued tensor are estimated on bands of it (A.8): where the uniform
    coding wins (int8-dequantised weights) no codebook of the whole tensor is built, only its uniform levels."""
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((1024, 1024)) * 0.02
    scale = np.abs(w).max() / (2 ** (bits - 1) - 1)
    q = (np.round(w / scale) * scale).astype(np.float32)
    sizes = []
    built = quantiser.Quantiser._codebook_of

    def recording(name, levels, *args, **kwargs):
        sizes.append(levels.size)
        return built(name, levels, *args, **kwargs)

    monkeypatch.setattr(quantiser.Quantiser, "_codebook_of", staticmethod(recording))
    stream = nnc.encode({"w": q})
    assert (nnc.Decoder(stream).info("w").codebook is not None) == codebook
    assert max(sizes) == (q.size if codebook else sample_bands(q).size)
    monkeypatch.undo()
    assert len(stream) == len(nnc.encode({"w": q}))


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_codebook_levels_are_the_nearest_also_with_rdoq(lam):
    """A codebook's levels are the nearest ones (A.8): RDOQ's rates are those of levels, not of indices, so its
    moves only added error (a constant 0.6 of a step away, 16 values 2.5 times the squared error)."""
    rng = np.random.default_rng(7)
    tensors = {"c": np.full(40000, 0.3), "q": (rng.integers(-8, 8, (128, 128)) * 0.013).astype(np.float32)}
    for qp, (name, w) in zip((-20, -30), tensors.items()):
        plain = nnc.encode({name: w}, qp=qp, dq=False)
        rated = nnc.encode({name: w}, qp=qp, dq=False, rdoq_lambda=lam)
        dec = decoder(rated)
        assert dec.info(name).codebook is not None
        error = np.abs(nnc.decode(rated)[name] - w)
        assert error.max() <= dec.info(name).step / 2 * (1 + 1e-6)
        assert np.array_equal(nnc.decode(rated)[name], nnc.decode(plain)[name])


def test_auto_weighs_a_codebook_at_its_syntax_s_bits():
    """Before: 16 bits an entry were charged, so codebook="auto" refused a codebook of a layer norm's 900 dense
    entries (about 150 bytes as built, charged 1.8 kB) that was 13 % smaller."""
    ln = {"ln": (1 + np.random.default_rng(0).normal(0, 0.05, 4096)).astype(np.float32)}
    auto, always = nnc.encode(ln, qp=-48, codebook="auto"), nnc.encode(ln, qp=-48, codebook=True)
    assert len(auto) == len(always) < 0.9 * len(nnc.encode(ln, qp=-48, codebook=False))


def test_a_codebook_won_on_the_bands_is_weighed_again_whole():
    """Before: binary weights with one scale per row (256 values) were weighed on eight bands holding 64 of them,
    where the codebook looked cheaper: the default coded it 20 % larger than codebook=False."""
    rng = np.random.default_rng(7)
    scales = rng.uniform(0.01, 0.1, 128)
    w = (rng.choice([-1, 1], (128, 8192)) * scales[:, None]).astype(np.float32)
    plain = len(nnc.encode({"w": w}, codebook=False))
    assert len(nnc.encode({"w": w})) <= plain and len(nnc.encode({"w": w}, codebook="auto")) <= plain
