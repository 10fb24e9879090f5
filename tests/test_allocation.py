"""Bit allocation across tensors, the empirical Fisher importance and the input-moment importance (spec A.11, A.12)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnc
from nnc.allocation import allocate_qps, empirical_fisher, input_importance


def _model(seed):
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.laplace(0, 0.05, (64, 64)).astype(np.float32),
            "b.weight": rng.laplace(0, 0.005, (128, 64)).astype(np.float32),
            "c.weight": (rng.standard_normal((32, 32)) * 0.2).astype(np.float32)}


def _relative_snr(tensors, decoded):
    """What a target SNR means (A.11): each tensor's error against its own energy, counted by its weights."""
    nsr = sum(v.size * float(((v.astype(np.float64) - decoded[k]) ** 2).sum() / (v.astype(np.float64) ** 2).sum())
              for k, v in tensors.items())
    return 10 * np.log10(sum(v.size for v in tensors.values()) / nsr)


def _snr(tensors, result):
    return _relative_snr(tensors, {k: t.reconstruction for k, t in result.tensors.items()})


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("target", [18.0, 24.0, 30.0])
def test_allocation_meets_the_target_with_no_more_bytes_than_one_global_qp(dq, target):
    tensors = _model(int(target))
    qps = allocate_qps(tensors, target_snr_db=target, dq=dq)
    res = nnc.Encoder(qp_per_tensor=qps, dq=dq).encode(tensors)
    assert _snr(tensors, res) >= target - 1e-6
    best = None
    for qp in range(-60, -10):
        glob = nnc.Encoder(qp=qp, dq=dq, nonweight_qp=None).encode(tensors)
        if _snr(tensors, glob) >= target:
            best = len(glob.stream)
    assert best is not None and len(res.stream) <= best


def test_target_must_be_given_once():
    with pytest.raises(nnc.EncodeError):
        allocate_qps(_model(1))
    with pytest.raises(nnc.EncodeError):
        allocate_qps(_model(1), target_snr_db=20, target_distortion=1.0)


def test_empirical_fisher_is_the_mean_squared_gradient():
    grads = [{"w": np.array([1.0, -2.0]), "b": np.array([0.5])}, {"w": np.array([3.0, 0.0]), "b": None}]
    f = empirical_fisher(iter(grads))
    np.testing.assert_allclose(f["w"], [5.0, 2.0])
    np.testing.assert_allclose(f["b"], [0.125])
    with pytest.raises(nnc.EncodeError):
        empirical_fisher(iter([]))


@settings(deadline=None, max_examples=40)
@given(out=st.integers(1, 5), features=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_input_importance_weights_errors_by_their_output_error(out, features, seed):
    # inputs along the feature axes (x = s e_j) have E[x_j x_k] = 0 for j != k: there the F-weighted squared error
    # of W is exactly the mean squared output error, up to F's scale to mean 1
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.0, 3.0, features)
    inputs = np.diag(scales)
    error = rng.normal(size=(out, features))
    moments = (inputs ** 2).mean(0)
    f = input_importance({"w": np.zeros((out, features), np.float32)}, {"w": moments})["w"]
    assert f.shape == (out, features) and f.dtype == np.float32
    output_error = ((inputs @ error.T) ** 2).sum(1).mean()
    scale = moments.mean() if moments.mean() > 0 else 1.0
    assert np.isclose((f * error ** 2).sum() * scale, output_error, rtol=1e-5, atol=1e-12) or moments.mean() == 0


def test_input_importance_of_convolutions_and_bad_moments():
    f = input_importance({"c": np.zeros((4, 3, 2, 2))}, {"c": [0.0, 1.0, 2.0]})["c"]
    assert f.shape == (4, 3, 2, 2)
    assert np.array_equal(f[2, :, 1, 0], [0.0, 1.0, 2.0]) and np.isclose(f.mean(), 1.0)
    assert np.all(input_importance({"w": np.zeros((2, 2))}, {"w": [0.0, 0.0]})["w"] == 1.0)
    for bad in ({"w": [1.0]}, {"w": [1.0, -1.0]}, {"w": [1.0, np.nan]}, {"b": [1.0, 1.0]}):
        with pytest.raises(nnc.EncodeError):
            input_importance({"w": np.zeros((2, 2)), "b": np.zeros(2)}, bad)
    with pytest.raises(nnc.EncodeError, match="no weight tensor 'x'"):
        input_importance({}, {"x": [1.0]})


def test_a_tensor_whose_qp_is_given_counts_towards_the_target():
    """Before: `--target-snr 30 --tensor-qp fc1.weight=-20` allocated the other tensors as if fc1.weight met the
    target too, and the file had 11.5 dB with exit 0 (the report listing a qp for fc1.weight it did not use)."""
    rng = np.random.default_rng(0)
    t = {"a": rng.normal(0, 0.1, (64, 64)).astype(np.float32), "b": rng.normal(0, 0.1, (64, 64)).astype(np.float32)}
    qps = allocate_qps(t, target_snr_db=30, dq=False, qp_per_tensor={"a": -32})
    assert list(qps) == ["b"]
    rec = nnc.decode(nnc.encode(t, qp_per_tensor={"a": -32, **qps}, dq=False))
    err = sum(float(((t[k] - rec[k]) ** 2).sum()) for k in t)
    energy = sum(float((t[k].astype(np.float64) ** 2).sum()) for k in t)
    assert 10 * np.log10(energy / err) >= 29.9
    with pytest.raises(nnc.errors.EncodeError, match="alone exceed"):
        allocate_qps(t, target_snr_db=30, dq=False, qp_per_tensor={"a": -10})


def test_a_qp_whose_levels_leave_int32_is_skipped_not_an_error():
    """Before: the allocation skipped qps at peak / step >= 2^31 - 2, the encoder refused them from 2^31 - 3: a
    value of 2147483645.5 at qp 0 made the search fail instead of moving on to qp 4."""
    x = {"w": np.array([2147483645.5, 1.0])}
    assert allocate_qps(x, target_snr_db=10, qp_range=[0, 4]) == {"w": 4}


def test_empirical_fisher_takes_bfloat16_torch_gradients():
    """Before: TypeError (Got unsupported ScalarType BFloat16) from .numpy()."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    fisher = empirical_fisher([{"w": torch.full((3,), 2.0, dtype=torch.bfloat16)}])
    assert fisher["w"].tolist() == [4.0, 4.0, 4.0]


def test_a_tensor_holding_inf_or_nan_is_left_to_raw_storage(tmp_path):
    """Before: --target-snr refused a model with a NaN in one tensor ("no candidate qp keeps its levels within
    int32"), though the encoder stores such a tensor exactly (spec 7.5)."""
    from nnc.cli import main
    from nnc.formats import safetensors_bytes

    rng = np.random.default_rng(0)
    tensors = {"fc.weight": rng.standard_normal((16, 16)).astype(np.float32),
               "x": np.array([1.0, np.nan, 2.0, -np.inf], np.float32)}
    qps = allocate_qps(tensors, target_snr_db=30, dq=False)
    assert set(qps) == {"fc.weight"}
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes(tensors))
    assert main(["encode", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.nnr"), "--target-snr", "30"]) == 0
    decoded = nnc.decode(tmp_path / "m.nnr")
    np.testing.assert_array_equal(decoded["x"], tensors["x"])


def _weight_snr(tensors, stream):
    return _relative_snr(tensors, nnc.decode(stream))


def _best_single_qp(tensors, target, qps):
    sizes = [len(s) for s in (nnc.encode(tensors, qp=qp) for qp in qps) if _weight_snr(tensors, s) >= target]
    return min(sizes) if sizes else None


@pytest.mark.parametrize("target", [30.0, 45.0])
def test_allocation_counts_the_codebooks_the_encoder_will_use(target):
    """Before: the curves were those of the uniform coding alone, so a ternary or int4-dequantised tensor (coded as a
    codebook, nearly as small at any qp) got coarse qps: larger than one qp and further from the target."""
    rng = np.random.default_rng(9)
    tensors = {"g.weight": (rng.standard_normal((256, 256)) * 0.05).astype(np.float32),
               "t.weight": (rng.integers(-1, 2, (256, 256)) * 0.05).astype(np.float32),
               "q.weight": (rng.integers(-8, 8, (256, 256)) * 0.013).astype(np.float32)}
    stream = nnc.encode(tensors, qp_per_tensor=allocate_qps(tensors, target_snr_db=target))
    assert _weight_snr(tensors, stream) >= target
    assert len(stream) <= _best_single_qp(tensors, target, range(-60, -20))


@pytest.mark.parametrize("scale, target", [(1.0, 10.0), (1.0, 20.0), (1e-5, 20.0), (300.0, 30.0)])
def test_allocation_tries_steps_at_each_tensor_s_scale(scale, target):
    """Before: qps -60 to -12 for every tensor: an embedding of unit scale at 10 dB took twice the bytes of qp -3,
    and a tensor of scale 1e-5 could not be allocated at all ("no qps in the range reach the target")."""
    rng = np.random.default_rng(1)
    tensors = {"emb": (rng.standard_normal((500, 64)) * scale).astype(np.float32),
               "w": (rng.standard_normal((64, 64)) * scale * 0.1).astype(np.float32)}
    stream = nnc.encode(tensors, qp_per_tensor=allocate_qps(tensors, target_snr_db=target))
    assert _weight_snr(tensors, stream) >= target
    centre = int(np.round(4 * np.log2(scale)))
    assert len(stream) <= _best_single_qp(tensors, target, range(centre - 70, centre + 12))


def test_a_target_snr_with_importance_is_the_importance_weighted_snr():
    """Before: the target compared the plain signal energy with the weighted error: with a Fisher importance of
    ~1e-9 every target gave the same stream, at a weight SNR of 3 to 6 dB."""
    rng = np.random.default_rng(4)
    tensors = {"a": (rng.standard_normal((64, 64)) * 0.05).astype(np.float32),
               "b": (rng.standard_normal((64, 64)) * 0.05).astype(np.float32)}
    importance = {k: rng.uniform(0.5, 1.5, v.shape) * 1e-9 for k, v in tensors.items()}
    sizes = []
    for target in (20.0, 30.0, 40.0):
        qps = allocate_qps(tensors, target_snr_db=target, importance=importance)
        res = nnc.Encoder(qp_per_tensor=qps).encode(tensors)
        num = sum(float((importance[k] * tensors[k].astype(np.float64) ** 2).sum()) for k in tensors)
        den = sum(float((importance[k] * (tensors[k] - res.tensors[k].reconstruction) ** 2).sum()) for k in tensors)
        assert 10 * np.log10(num / den) >= target
        sizes.append(len(res.stream))
    assert sizes[0] < sizes[1] < sizes[2]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), exponent=st.integers(-12, 6), lam=st.sampled_from([0.1, 0.4]),
       dq=st.booleans())
def test_importance_is_taken_relative_to_its_tensor_s_mean(seed, exponent, lam, dq):
    """Before: RDOQ weighed F (x - k)^2 + λ L with F as given, so an empirical Fisher (squared gradients, ~1e-9)
    made every weight 0 (283 bytes, 10 % accuracy on a digits MLP): the importance is scaled to mean 1 (A.9)."""
    rng = np.random.default_rng(seed)
    w = {"w": (rng.standard_normal((32, 48)) * 0.05).astype(np.float32)}
    f = rng.uniform(0.1, 2.0, (32, 48))
    at_unit = nnc.encode(w, qp=-30, dq=dq, rdoq_lambda=lam, importance={"w": f / f.mean()})
    assert nnc.encode(w, qp=-30, dq=dq, rdoq_lambda=lam, importance={"w": f * 10.0**exponent}) == at_unit


def test_a_target_snr_keeps_every_tensor_whatever_the_others_scales():
    """Before: the target was a total weight SNR, which a GPT's mask constants of -1e4 (stored exactly) or its
    unit-scale embedding could meet alone: a 40 dB target zeroed every attention weight, exit 0. Now each tensor's
    error counts against its own scale (scale_importance)."""
    rng = np.random.default_rng(0)
    model = {"wte": rng.normal(0, 1, (500, 64)).astype(np.float32)}
    for i in range(3):
        model[f"h{i}.masked_bias"] = np.array(-1e4, np.float32)
        model[f"h{i}.weight"] = rng.normal(0, 0.04, (64, 192)).astype(np.float32)
        model[f"h{i}.bias"] = rng.normal(0, 0.01, 192).astype(np.float32)
    decoded = nnc.decode(nnc.encode(model, qp_per_tensor=allocate_qps(model, target_snr_db=40)))
    assert _relative_snr(model, decoded) >= 40
    for k, v in model.items():
        error = float(((v.astype(np.float64) - decoded[k].reshape(v.shape)) ** 2).sum())
        assert error == 0 or 10 * np.log10(float((v.astype(np.float64) ** 2).sum()) / error) > 30, k


def test_allocation_reports_progress_tensor_by_tensor():
    """--target-snr measured every tensor's curve with no progress shown (12 minutes on MiniLM-L6 in a probe)."""
    seen = []
    model = _model(3)
    allocate_qps(model, target_snr_db=20, progress=lambda name, n: seen.append((name, n)))
    assert seen == 2 * [(k, v.size) for k, v in model.items()]  # (one qp an octave, then near each choice)
    with pytest.raises(nnc.EncodeError, match="progress must be a callable"):
        allocate_qps(model, target_snr_db=20, progress=5)


def test_allocation_curves_use_the_importance_the_encoder_will_weigh_rdoq_by():
    """Before: the importance weighted the curves' error but not their RDOQ levels, which the encoder then chose
    by it: an importance-weighted 25 dB target ended at 23.7 dB."""
    rng = np.random.default_rng(5)
    tensors = {f"t{i}": (rng.standard_normal((64, 96)) * 0.05).astype(np.float32) for i in range(3)}
    importance = {k: rng.chisquare(1, v.shape) * 1e-9 for k, v in tensors.items()}
    for target in (25.0, 40.0):
        qps = allocate_qps(tensors, target_snr_db=target, importance=importance, rdoq_lambda=0.5, dq=False)
        res = nnc.Encoder(qp_per_tensor=qps, rdoq_lambda=0.5, dq=False, importance=importance).encode(tensors)
        num = sum(float((importance[k] * tensors[k].astype(np.float64) ** 2).sum()) for k in tensors)
        den = sum(float((importance[k] * (tensors[k] - res.tensors[k].reconstruction) ** 2).sum()) for k in tensors)
        assert 10 * np.log10(num / den) >= target


def test_allocation_stays_within_what_one_stream_can_carry():
    """Before: a tensor of 1e-30 values got qp -422 beside -29 (the encoder refused the span of qp offsets), a peak
    of 5e37 a qp whose step leaves float32 (a DecodeError from an encoder API), and an importance of the wrong
    shape a bare numpy ValueError."""
    rng = np.random.default_rng(7)
    tiny, w = np.full(2048, 1e-30, np.float32), rng.normal(0, 0.1, (64, 64)).astype(np.float32)
    qps = allocate_qps({"v": tiny, "w": w}, target_snr_db=30)
    assert "v" not in qps  # (left to the encoder's rules: one-signed values stored raw)
    assert nnc.decode(nnc.encode({"v": tiny, "w": w}, qp_per_tensor=qps))["v"][0] == np.float32(1e-30)
    huge = {"v": np.full(100, 5e37, np.float32)}
    nnc.encode(huge, qp_per_tensor=allocate_qps(huge, target_snr_db=30))
    with pytest.raises(nnc.EncodeError, match="importance needs one value per element"):
        allocate_qps({"w": w}, target_snr_db=30, importance={"w": np.ones(3)})


def test_covariances_are_refused_with_a_reason():
    """Before: the curves quantised each tensor flattened, and the error feedback asked for its two dimensions: 'a
    covariance needs a weight of 2 or more dimensions' for a weight of two (the command line refused the pair)."""
    w = np.random.default_rng(0).normal(0, 0.05, (8, 16)).astype(np.float32)
    with pytest.raises(nnc.EncodeError, match="error feedback .covariances=. trades"):
        allocate_qps({"w": w}, target_snr_db=30, dq=False, covariances={"w": np.eye(16)})


def _allocation_model(rng):
    return {"a.weight": rng.normal(0, 0.05, (48, 40)).astype(np.float32),
            "a.bias": rng.normal(0, 0.01, 48).astype(np.float32),
            "b.weight": rng.normal(0, 0.5, (24, 48)).astype(np.float32)}


@given(st.floats(15, 45), st.integers(0, 5))
@settings(max_examples=6, deadline=None)
def test_one_call_with_a_target_snr_equals_the_command_line_and_the_two_steps(tmp_path_factory, target, seed):
    """Before: a target SNR was the command line's alone; from Python, allocate_qps and then the encoder, with the
    command line's rules (file dtypes, qp_per_tensor first) to be repeated by hand."""
    from nnc.allocation import with_allocated_qps
    from nnc.cli import main
    from nnc.formats import write_model
    from nnc.models import encode_model_to

    d = tmp_path_factory.mktemp("target")
    model = _allocation_model(np.random.default_rng(seed))
    path = d / "m.safetensors"
    write_model(str(path), model, {"b.weight": "bfloat16"})
    options = {"qp_per_tensor": {"a.bias": -44}, "rdoq_lambda": 0.05}
    stream = nnc.encode_model(str(path), target_snr_db=target, **options)
    summary = encode_model_to(str(path), d / "s.nnr", target_snr_db=target, measure=True, **options)
    assert main(["encode", str(path), "-o", str(d / "c.nnr"), "--target-snr", str(target), "--tensor-qp",
                 "a.bias=-44", "--lambda", "0.05", "-q"]) == 0
    assert (d / "s.nnr").read_bytes() == stream == (d / "c.nnr").read_bytes()
    assert summary.qps["a.bias"] == -44 and summary.relative_snr_db >= target - 0.5
    tensors, dtypes, _ = nnc.models.load_model(str(path))
    by_hand, qps = with_allocated_qps(tensors, target, options, dtypes=dtypes)
    assert "a.bias" not in qps and by_hand["qp_per_tensor"]["a.bias"] == -44
    assert nnc.encode_model(str(path), **by_hand) == stream


@pytest.mark.parametrize("option", [{"qp": -30}, {"step": 0.01}, {"nonweight_qp": -60}, {"covariances": {}},
                                    {"sigmas": {"a.weight": np.ones((48, 40))}}, {"covariances": {"a.weight": np.eye(40)}}])
def test_a_target_snr_refuses_the_options_it_would_ignore(tmp_path, option):
    model = _allocation_model(np.random.default_rng(0))
    if option == {"covariances": {}}:  # (no covariance: nothing ignored)
        assert nnc.encode_model(model, target_snr_db=30, **option)
        return
    with pytest.raises(nnc.EncodeError, match="would be ignored|covariances"):
        nnc.encode_model(model, tmp_path / "m.nnr", target_snr_db=30, **option)
    assert not (tmp_path / "m.nnr").exists()


def test_a_target_snr_keeps_a_quantised_model_s_scales_exact(tmp_path):
    """The scales of a quantised checkpoint are stored exactly (nnc.models.keep_quantisation_parameters_exact) with a
    target SNR too: given a qp of their own by the allocation, they would be quantised like weights."""
    from nnc.formats import write_model

    rng = np.random.default_rng(3)
    scales = (rng.uniform(1e-3, 2e-3, 32)).astype(np.float16)
    path = tmp_path / "q.safetensors"
    write_model(str(path), {"l.qweight": rng.integers(-8, 8, (32, 16)).astype(np.int32), "l.scales": scales,
                            "head.weight": rng.normal(0, 0.05, (16, 32)).astype(np.float32)})
    for stream in (nnc.encode_model(str(path), target_snr_db=25),
                   nnc.models.encode_model_to(str(path), tmp_path / "s.nnr", target_snr_db=25) and
                   (tmp_path / "s.nnr").read_bytes()):
        back = nnc.decode_model(stream)["l.scales"]
        assert back.dtype == np.float16 and np.array_equal(back, scales)
    mapping = {"l.scales": scales.astype(np.float32), "head.weight": rng.normal(0, 0.05, (16, 32)).astype(np.float32)}
    nnc.models.encode_model_to(mapping, tmp_path / "m.nnr", target_snr_db=25)  # (a mapping's scales: allocated)
    assert (tmp_path / "m.nnr").read_bytes() == nnc.encode_model(mapping, target_snr_db=25)


def _counting_source(model):
    """A ModelSource whose loaders make fresh arrays and record, at each load, how many earlier ones are alive."""
    import weakref

    from nnc.readers import LazyTensor, ModelSource

    alive, most = [], [0]

    def loader(values):
        def load():
            most[0] = max(most[0], sum(r() is not None for r in alive))
            fresh = values.copy()
            alive.append(weakref.ref(fresh))
            return fresh
        return load

    tensors = [LazyTensor(k, v.shape, str(v.dtype), str(v.dtype), loader(v)) for k, v in model.items()]
    return ModelSource("<counting>", "safetensors", tensors), most


@pytest.mark.parametrize("target", [20.0, 40.0])
def test_a_target_snr_reads_an_opened_model_one_tensor_at_a_time(tmp_path, target):
    """Before: the allocation loaded the whole model (and an importance of 8 bytes a weight for all of it) before it
    measured the first curve; an opened model is now read a tensor at a time, with the same qps as in memory."""
    from nnc.allocation import with_allocated_qps

    rng = np.random.default_rng(5)
    model = {f"l{i}.weight": rng.normal(0, 0.05 * (i + 1), (24, 32)).astype(np.float32) for i in range(6)}
    model["norm"] = (1 + rng.normal(0, 0.1, 32)).astype(np.float32)
    source, most = _counting_source(model)
    _, lazily = with_allocated_qps(source, target, {"rdoq_lambda": 0.05})
    assert most[0] <= 1
    assert lazily == with_allocated_qps(model, target, {"rdoq_lambda": 0.05})[1]
    source, most = _counting_source(model)
    nnc.models.encode_model_to(source, tmp_path / "m.nnr", target_snr_db=target)
    assert most[0] <= 1 and (tmp_path / "m.nnr").read_bytes() == nnc.encode_model(model, target_snr_db=target)
    with pytest.raises(nnc.EncodeError, match="output must be a path"):  # (was a TypeError once encoded)
        nnc.models.encode_model_to(model, None)


@pytest.mark.parametrize("budget", [1, 1 << 30])
def test_curves_measured_in_threads_give_the_same_qps(monkeypatch, budget):
    """With threads above 1 (``--threads``) the tensors' curves are measured at once, within a byte budget; the
    allocation is the one of a single thread."""
    import nnc.allocation

    monkeypatch.setattr(nnc.allocation, "CURVE_BUDGET", budget)
    rng = np.random.default_rng(7)
    model = {f"l{i}.weight": rng.laplace(0, 0.02 * (i + 1), (16 * (i + 1), 24)).astype(np.float32) for i in range(5)}
    model["l0.bias"] = rng.normal(0, 0.01, 16).astype(np.float32)
    calls = []
    one = allocate_qps(model, target_snr_db=33, threads=1)
    assert allocate_qps(model, target_snr_db=33, threads=3, progress=lambda k, n: calls.append(k)) == one
    assert calls == [*model, *model]  # (in model order, twice: one qp an octave, then near each choice)
