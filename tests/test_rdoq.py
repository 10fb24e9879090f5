"""Rate-distortion quantisation (spec A.9): the first piece of the paper's encoder."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnc
from nnc.engine import get_engine

ENGINES = ["cython", "python"]


@settings(deadline=None, max_examples=40)
@given(x=hnp.arrays(np.float64, st.integers(1, 300), elements=st.floats(-1e4, 1e4)),
       engine=st.sampled_from(ENGINES))
def test_lambda_zero_is_nearest_rounding(x, engine):
    n = get_engine(engine).rdoq_levels(x, 1, x.size, lam=0.0)
    np.testing.assert_array_equal(n, (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int32))


@settings(deadline=None, max_examples=25)
@given(h=st.integers(1, 24), w=st.integers(1, 24), scan=st.integers(0, 4), edition=st.sampled_from([1, 2]),
       lam=st.sampled_from([0.05, 0.5, 3.0]), seed=st.integers(0, 2**16), weighted=st.booleans())
def test_both_engines_choose_the_same_levels(h, w, scan, edition, lam, seed, weighted):
    rng = np.random.default_rng(seed)
    x = rng.laplace(0, 4, h * w)
    f = rng.random(h * w) if weighted else None
    a = get_engine("cython").rdoq_levels(x, h, w, lam=lam, scan_order=scan, edition=edition, importance=f)
    b = get_engine("python").rdoq_levels(x, h, w, lam=lam, scan_order=scan, edition=edition, importance=f)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scale", [0.3, 2.0, 10.0])
def test_larger_lambda_never_grows_a_large_tensor(scale):
    """On a fixed large tensor the payload shrinks as lambda grows (the rate term is what lambda buys)."""
    eng = get_engine("cython")
    x = np.random.default_rng(int(scale * 10)).laplace(0, scale, 150 * 160)
    sizes, errors = [], []
    for lam in (0.0, 0.25, 1.0, 4.0, 16.0):
        n = eng.rdoq_levels(x, 150, 160, lam=lam)
        enc = eng.PayloadEncoder(2)
        enc.encode_tensor(n, 150, 160, n_gtx=11)
        sizes.append(len(enc.finish()))
        errors.append(float(((x - n) ** 2).sum()))
    assert sizes == sorted(sizes, reverse=True), sizes
    assert errors == sorted(errors), errors


def test_zero_importance_weights_are_free_to_move():
    x = np.full(400, 0.6)
    f = np.zeros(400)
    n = get_engine("cython").rdoq_levels(x, 20, 20, lam=1.0, importance=f)
    assert not n.any()


def test_encoder_option_and_exact_reconstruction():
    rng = np.random.default_rng(1)
    tensors = {"w.weight": rng.laplace(0, 0.02, (64, 48)).astype(np.float32)}
    plain = nnc.Encoder(qp=-36, dq=False).encode(tensors)
    rd = nnc.Encoder(qp=-36, dq=False, rdoq_lambda=1.0).encode(tensors)
    assert len(rd.stream) < len(plain.stream)
    np.testing.assert_array_equal(nnc.decode(rd.stream)["w.weight"], rd.tensors["w.weight"].reconstruction)
    dq = nnc.Encoder(qp=-36, dq=True, rdoq_lambda=0.5).encode(tensors)
    np.testing.assert_array_equal(nnc.decode(dq.stream)["w.weight"], dq.tensors["w.weight"].reconstruction)


def test_rate_aware_trellis():
    eng = get_engine("cython")
    rng = np.random.default_rng(4)
    x = rng.laplace(0, 3, 120 * 130)
    np.testing.assert_array_equal(eng.dq_rdoq_levels(x, 120, 130, lam=0.0, chunk=10**9), eng.dq_trellis(x))
    sizes = []
    for lam in (0.0, 0.5, 2.0, 8.0):
        n = eng.dq_rdoq_levels(x, 120, 130, lam=lam, scan_order=2)
        enc = eng.PayloadEncoder(2)
        enc.encode_tensor(n, 120, 130, n_gtx=11, dq=True, scan_order=2)  # raises if n leaves the trellis
        sizes.append(len(enc.finish()))
    assert sizes == sorted(sizes, reverse=True)


def test_dcv1_step_and_importance():
    from nnc.encoder import dcv1_step
    from nnc.reconstruction import step_size

    rng = np.random.default_rng(2)
    w = rng.laplace(0, 0.02, (64, 64)).astype(np.float32)
    sig = np.full(w.shape, 0.01)
    sig[:, :32] = 0.2  # uncertain half
    enc = nnc.Encoder(dq=False, rdoq_lambda=0.5, sigmas={"w": sig}, dcv1_s=16, nonweight_qp=None)
    res = enc.encode({"w": w})
    t = res.tensors["w"]
    want = dcv1_step(w, sig, 16)
    assert abs(np.log2(t.step) - np.log2(want)) <= 0.125 + 1e-9  # nearest step of the qp grid
    assert t.step == float(step_size(t.qp, 2))
    n = t.levels.reshape(64, 64)
    assert (n[:, :32] == 0).mean() > (n[:, 32:] == 0).mean()
    np.testing.assert_array_equal(nnc.decode(res.stream)["w"], t.reconstruction)
    with pytest.raises(nnc.EncodeError, match="positive"):
        nnc.Encoder(sigmas={"w": np.zeros(3)})


@settings(deadline=None, max_examples=60)
@given(x=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-9, 9)),
       engine=st.sampled_from(ENGINES))
def test_distortion_only_trellis_is_optimal(x, engine):
    """Against brute force over every valid level sequence near x (spec 10.2, A.2)."""
    from nnc.tables import NEXT_DQ_STATE

    def best(i, s):
        if i == len(x):
            return 0.0
        out = np.inf
        for n in range(int(np.floor(x[i])) - 3, int(np.ceil(x[i])) + 4):
            if n != 0 and (n % 2 == 0) != (s % 2 == 0):
                continue
            k = 0 if n == 0 else ((n + (s & 1)) >> 1 if n > 0 else (n - (s & 1)) >> 1)
            out = min(out, (x[i] - n) ** 2 + best(i + 1, NEXT_DQ_STATE[s][k & 1]))
        return out

    n = get_engine(engine).dq_trellis(np.ascontiguousarray(x))
    assert abs(float(((x - n) ** 2).sum()) - best(0, 0)) < 1e-9


def test_lambda_per_tensor_overrides_the_global_lambda():
    from nnc.encoder import Encoder

    rng = np.random.default_rng(3)
    t = {"a.weight": rng.laplace(0, 0.05, (40, 50)), "b.weight": rng.laplace(0, 0.05, (30, 20))}
    for dq in (False, True):
        mixed = Encoder(qp=-28, dq=dq, rdoq_lambda=0.1, lambda_per_tensor={"a.*": 0.8}).encode(t)
        only_a = Encoder(qp=-28, dq=dq, rdoq_lambda=0.8).encode({"a.weight": t["a.weight"]})
        only_b = Encoder(qp=-28, dq=dq, rdoq_lambda=0.1).encode({"b.weight": t["b.weight"]})
        assert np.array_equal(mixed.tensors["a.weight"].levels, only_a.tensors["a.weight"].levels)
        assert np.array_equal(mixed.tensors["b.weight"].levels, only_b.tensors["b.weight"].levels)
    with pytest.raises(nnc.EncodeError):
        Encoder(lambda_per_tensor={"a": -1.0})


@settings(deadline=None, max_examples=30)
@given(h=st.integers(1, 20), w=st.integers(1, 20), scan=st.integers(0, 4), edition=st.sampled_from([1, 2]),
       lam=st.sampled_from([0.0, 0.05, 0.5]), chunk=st.sampled_from([1, 7, 1024]), seed=st.integers(0, 2**16),
       single=st.booleans(), step=st.sampled_from([0.0014865, 0.1, 1.0, 3.7]))
def test_the_trellis_divides_by_the_step_as_the_whole_tensor_divided_first(h, w, scan, edition, lam, chunk, seed,
                                                                          single, step):
    # the quantiser gives the trellis w and the step (no float64 copy of w / step): the same levels, both engines
    rng = np.random.default_rng(seed)
    weights = (rng.laplace(0, 4, h * w) * step).astype(np.float32 if single else np.float64)
    divided = np.divide(weights, step, dtype=np.float64)
    options = dict(lam=lam, scan_order=scan, edition=edition, chunk=chunk)
    expected = get_engine("python").dq_rdoq_levels(divided, h, w, **options)
    for engine in ENGINES:
        np.testing.assert_array_equal(get_engine(engine).dq_rdoq_levels(weights, h, w, step=step, **options),
                                      expected)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("step", [0.0, -1.0, float("nan"), float("inf")])
def test_the_trellis_refuses_a_step_that_is_not_positive_and_finite(engine, step):
    with pytest.raises(nnc.EncodeError, match="step must be a positive finite number"):
        get_engine(engine).dq_rdoq_levels(np.ones(4), 2, 2, lam=0.0, step=step)


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_the_dq_quantiser_makes_no_float64_copy_of_the_tensor(lam):
    """Before: x / step was computed whole, in float64, for the trellis (twice the float32 tensor's bytes)."""
    import tracemalloc

    from nnc.encoding.quantiser import Quantiser
    from nnc.encoding.settings import EncoderSettings

    x = np.random.default_rng(0).normal(0, 0.05, 1 << 21).astype(np.float32)
    quantiser = Quantiser(EncoderSettings(dq=True, rdoq_lambda=lam), get_engine())
    tracemalloc.start()
    try:
        levels = quantiser.levels("w", x, 0.0014865, True, 1024, 2048, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert levels.dtype == np.int32 and peak < 1.3 * x.nbytes, f"peak {peak / x.nbytes:.2f} x the tensor"
