"""Error-feedback quantisation from input covariances (nnc/encoding/feedback.py, spec A.16)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnc
from nnc.encoder import EncodeCache, Encoder
from nnc.encoding.feedback import DAMPING, FactorCache, error_feedback_levels, feedback_factor
from nnc.errors import EncodeError


def _nearest(x):
    return np.copysign(np.floor(np.abs(x) + 0.5), x)


def _least_squares_levels(w, h, step):
    """The same levels by another route: column by column (largest input energy first), the columns not yet
    rounded are set to their least-squares optimum given the rounded ones, E[(W - Q) x]^2 with H damped as the
    encoder damps it, and the next column is rounded."""
    n = h.shape[0]
    h = h + DAMPING * np.trace(h) / n * np.eye(n)
    order = np.argsort(-np.diag(h), kind="stable")
    rows = len(w)
    done = []
    q = np.zeros_like(w)
    for j in order:
        rest = [c for c in order if c not in done]
        target = w[:, rest].copy()
        if done:
            e_fixed = w[:, done] - q[:, done]
            target += e_fixed @ h[np.ix_(done, rest)] @ np.linalg.inv(h[np.ix_(rest, rest)])
        x = target[:, 0] / step
        q[:, j] = _nearest(x) * step
        done.append(j)
    assert q.shape == (rows, n)
    return np.rint(q / step).astype(np.int64)


def _covariance(rng, n, samples=400):
    mix = rng.normal(size=(n, n))
    x = rng.normal(size=(samples, n)) @ mix * rng.uniform(0.2, 2.0, n)
    return x.T @ x / samples


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 6), st.integers(1, 7), st.integers(0, 2**32 - 1), st.floats(0.05, 1.0), st.floats(0, 0.8))
def test_levels_are_the_least_squares_sequence(rows, n, seed, step, pruned):
    rng = np.random.default_rng(seed)
    h = _covariance(rng, n)
    diag = np.diag(h)
    assume(len(np.unique(np.round(diag, 9))) == n)  # one order of the columns
    w = rng.normal(size=(rows, n)) * (rng.uniform(size=(rows, n)) >= pruned)
    got = error_feedback_levels(w, h, step)
    want = _least_squares_levels(w, h, step)
    # identical but where a corrected value lies within float error of a rounding boundary
    assert np.abs(got - want).max(initial=0) <= 1
    assert np.mean(got != want) <= 0.1


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_independent_inputs_give_the_nearest_levels(rows, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, n)) * 3
    h = np.diag(rng.uniform(0.1, 5.0, n))
    assert np.array_equal(error_feedback_levels(w, h, 0.25), _nearest(w / 0.25).astype(np.int32))


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**32 - 1), st.floats(0.01, 10.0))
def test_lambda_only_moves_levels_towards_zero(rows, n, seed, lam):
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=(rows, n))
    h = np.diag(rng.uniform(0.1, 5.0, n))
    plain = error_feedback_levels(w, h, 0.2)
    rated = error_feedback_levels(w, h, 0.2, lam)
    assert np.all(np.abs(rated) <= np.abs(plain))
    assert np.all(np.abs(rated - plain) <= 1)
    assert np.all((rated == 0) | (np.sign(rated) == np.sign(plain)))


def test_blocked_update_equals_one_block():
    import nnc.encoding.feedback as fb

    rng = np.random.default_rng(3)
    h = _covariance(rng, 300, samples=900)
    w = rng.normal(size=(7, 300)) * 0.1
    blocked = error_feedback_levels(w, h, 0.01)
    saved = fb.BLOCK_COLUMNS
    try:
        fb.BLOCK_COLUMNS = 1000
        whole = error_feedback_levels(w, h, 0.01)
    finally:
        fb.BLOCK_COLUMNS = saved
    assert np.mean(blocked != whole) < 0.002


def _layer(seed=0, out=12, n=24):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, n)) @ rng.normal(size=(n, n))
    h = x.T @ x / len(x)
    w = (rng.normal(size=(out, n)) * 0.05).astype(np.float32)
    b = (rng.normal(size=out) * 0.05).astype(np.float32)
    return x, h, {"fc.weight": w, "fc.bias": b}


@pytest.mark.parametrize("blocks", [False, True])
def test_encoder_codes_the_fed_back_levels_and_decodes_them(blocks):
    x, h, t = _layer()
    # (the bias's own qp: no floor of spec A.7 that would code it finer and uniformly)
    res = Encoder(qp=-20, blocks=blocks, covariances={"fc.weight": h}, nonweight_snr_db=0).encode(t)
    dec = nnc.decode(res.stream)
    coded = res.tensors["fc.weight"]
    assert not coded.dq                                   # uniform grid
    assert res.tensors["fc.bias"].dq == (not blocks)      # a block's members follow its weight
    assert np.array_equal(dec["fc.weight"], coded.reconstruction)
    step = coded.step
    want = error_feedback_levels(t["fc.weight"], h, step)
    assert np.array_equal(coded.levels.reshape(want.shape), want)


def test_output_error_is_smaller_than_with_the_default_quantisers():
    x, h, t = _layer(seed=1)
    w = t["fc.weight"]

    def output_error(stream):
        e = nnc.decode(stream)["fc.weight"] - w
        return float(np.mean((x @ e.T) ** 2))

    for qp in (-24, -20, -16):
        fed = output_error(Encoder(qp=qp, covariances={"fc.weight": h}).encode(t).stream)
        assert fed < 0.5 * output_error(Encoder(qp=qp, dq=False).encode(t).stream)
        assert fed < 0.7 * output_error(Encoder(qp=qp).encode(t).stream)


def test_convolution_columns_in_channel_kh_kw_order():
    rng = np.random.default_rng(2)
    w = (rng.normal(size=(4, 3, 2, 2)) * 0.1).astype(np.float32)
    x = rng.normal(size=(500, 12))
    h = x.T @ x / len(x)
    levels = Encoder(qp=-16, covariances={"c.weight": h}).encode({"c.weight": w}).tensors["c.weight"].levels
    step = float(nnc.reconstruction.step_size(-16, 2))
    assert np.array_equal(levels, error_feedback_levels(w.reshape(4, 12), h, step).reshape(-1))


@pytest.mark.parametrize(
    "covariance, message",
    [
        (np.eye(5), r"'fc.weight' must be \(24, 24\)"),
        (np.triu(np.ones((24, 24))), "symmetric"),
        (np.full((24, 24), np.nan), "finite"),
        (-np.eye(24), "negative diagonal"),
        (np.array([["a"] * 24] * 24), "real numbers"),
        (np.eye(24) + 5 * (np.eye(24, k=1) + np.eye(24, k=-1)), "'fc.weight': covariance is not positive semi-definite"),
    ],
)
def test_a_wrong_covariance_is_refused_naming_the_tensor(covariance, message):
    _, _, t = _layer()
    with pytest.raises(EncodeError, match=message):
        Encoder(qp=-20, covariances={"fc.weight": covariance}).encode(t)


def test_a_covariance_needs_a_weight_and_no_sigmas():
    _, h, t = _layer()
    with pytest.raises(EncodeError, match="2 or more dimensions"):
        Encoder(qp=-20, covariances={"fc.bias": np.eye(12)}).encode(t)
    with pytest.raises(EncodeError, match="both sigmas"):
        Encoder(covariances={"fc.weight": h}, sigmas={"fc.weight": np.ones((12, 24))})


def test_encode_cache_keys_covariances_by_identity():
    _, h, t = _layer()
    cache = EncodeCache()
    options = dict(qp=-20, blocks=False)                  # two units: the weight's and the bias's
    first = Encoder(covariances={"fc.weight": h}, **options).encode(t, cache=cache).stream
    again = Encoder(covariances={"fc.weight": h}, **options).encode(t, cache=cache).stream
    assert again == first and (cache.hits, cache.misses) == (2, 2)
    other = Encoder(covariances={"fc.weight": h + np.eye(24)}, **options).encode(t, cache=cache).stream
    assert (cache.hits, cache.misses) == (3, 3)           # the weight's unit again, with the other matrix
    assert other == Encoder(covariances={"fc.weight": h + np.eye(24)}, **options).encode(t).stream


def test_search_with_covariances_keeps_the_score():
    from nnc.search import search

    x, h, t = _layer(seed=4)
    reference = x @ t["fc.weight"].T

    def score(d):
        return -float(np.mean((x @ d["fc.weight"].T - reference) ** 2))

    tolerance = 0.01 * float(np.mean(reference**2))       # 1 % of the output's energy
    options = dict(tolerance=tolerance, qp_range=range(-34, -4), progress=False, per_tensor=False)
    res = search(t, score, covariances={"fc.weight": h}, **options)
    assert score(nnc.decode(res.best.stream)) >= res.reference_score - tolerance
    plain = search(t, score, **options)
    assert res.best.bytes < plain.best.bytes


def test_transposed_weights_are_fed_back_over_their_first_dimension():
    x, h, t = _layer(seed=5)
    w = t["fc.weight"]
    plain = Encoder(qp=-20, covariances={"fc.weight": h}).encode(t)
    inputs_first = Encoder(qp=-20, covariances={"w.t": h}, covariance_transposed=["w.*"]).encode({"w.t": w.T.copy()})
    assert np.array_equal(inputs_first.tensors["w.t"].reconstruction, plain.tensors["fc.weight"].reconstruction.T)
    with pytest.raises(EncodeError, match=r"must be \(12, 12\)"):
        Encoder(qp=-20, covariances={"w.t": h}, covariance_transposed=["w.t"]).encode({"w.t": w.copy()})


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_the_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(n, seed):
    h = _covariance(np.random.default_rng(seed), n)
    f = feedback_factor(h)
    assert sorted(f.order.tolist()) == list(range(n))
    assert np.all(np.diff(np.diag(h)[f.order]) <= 0)                   # decreasing input energy
    damped = h + DAMPING * np.trace(h) / n * np.eye(n)
    want = np.linalg.inv(damped[np.ix_(f.order, f.order)])
    assert np.array_equal(f.u, np.triu(f.u)) and np.all(np.diag(f.u) > 0)
    np.testing.assert_allclose(f.u.T @ f.u, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())


def test_levels_from_a_kept_factor_equal_those_from_the_covariance():
    rng = np.random.default_rng(7)
    h = _covariance(rng, 30)
    w = rng.normal(size=(9, 30))
    f = feedback_factor(h)
    for step, lam in ((0.3, 0.0), (0.1, 0.4)):
        assert np.array_equal(error_feedback_levels(w, f, step, lam), error_feedback_levels(w, h, step, lam))
    with pytest.raises(EncodeError, match="a covariance of 30 inputs for a matrix of 29 columns"):
        error_feedback_levels(w[:, :29], f, 0.3)


def test_factor_cache_keeps_factors_by_identity_within_its_memory():
    h1, h2, h3 = (np.eye(40) * (i + 1) for i in range(3))
    f1 = feedback_factor(h1)
    store = FactorCache(max_bytes=2 * f1.nbytes)
    store.put(h1, f1)
    assert store.get(h1) is f1 and store.get(h1.copy()) is None        # an equal matrix is another matrix
    store.put(h2, feedback_factor(h2))
    store.get(h1)                                                      # h1 now the most recently used
    store.put(h3, feedback_factor(h3))
    assert len(store) == 2 and store.get(h2) is None and store.get(h1) is f1
    small = FactorCache(max_bytes=1)                                   # one factor over the budget: the newest stays
    small.put(h1, f1)
    small.put(h2, store.get(h3))
    assert len(small) == 1 and small.get(h2) is not None


def test_encodes_share_the_factor_through_the_encode_cache():
    _, h, t = _layer()
    cache = EncodeCache()
    streams = [Encoder(qp=qp, covariances={"fc.weight": h}).encode(t, cache=cache).stream for qp in (-20, -16)]
    assert len(cache.factors) == 1
    kept = cache.factors.get(h)
    assert kept is not None and np.array_equal(kept.u, feedback_factor(h).u)
    assert streams == [Encoder(qp=qp, covariances={"fc.weight": h}).encode(t).stream for qp in (-20, -16)]
    # a kept factor of another size is not used: the matrix is checked against the tensor as without it
    cache.factors.put(h, feedback_factor(np.eye(5)))
    assert Encoder(qp=-20, covariances={"fc.weight": h}).encode(t, cache=cache).stream == streams[0]
    with pytest.raises(EncodeError, match=r"'fc.weight' must be \(24, 24\)"):
        Encoder(qp=-20, covariances={"fc.weight": np.eye(5)}).encode(t, cache=cache)
