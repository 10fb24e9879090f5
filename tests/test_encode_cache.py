"""EncodeCache: an encode with the cache is byte-identical to one without, whatever came before."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnc
from nnc.encoder import EncodeCache, Encoder

FLOATS = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def model(draw):
    """Layers with a weight and (usually) a matching bias, plus an occasional integer tensor."""
    out = {}
    for i in range(draw(st.integers(1, 3))):
        rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        out[f"l{i}.weight"] = draw(hnp.arrays(np.float32, (rows, cols), elements=FLOATS))
        if draw(st.booleans()):
            out[f"l{i}.bias"] = draw(hnp.arrays(np.float32, (rows,), elements=FLOATS))
    if draw(st.booleans()):
        out["steps"] = np.arange(3, dtype=np.int64)
    return out


def encoder_settings(names):
    floats = [n for n in names if n != "steps"]
    return st.fixed_dictionaries({
        "qp": st.integers(-30, -4),
        "dq": st.booleans(),
        "blocks": st.booleans(),
        "rdoq_lambda": st.sampled_from([0.0, 0.1, 0.8]),
        "qp_per_tensor": st.dictionaries(st.sampled_from(floats), st.integers(-30, 0), max_size=2),
        "lambda_per_tensor": st.dictionaries(st.sampled_from(floats), st.sampled_from([0.0, 0.4]), max_size=2),
        "n_gtx": st.sampled_from([1, 11]),
        "profile": st.sampled_from([0, 1]),
    })


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(data=st.data(), max_bytes=st.sampled_from([0, 200, 1 << 30]))
def test_cached_encodes_equal_fresh_ones(data, max_bytes):
    tensors = data.draw(model())
    cache = EncodeCache(max_bytes)
    for _ in range(data.draw(st.integers(2, 5))):
        opts = data.draw(encoder_settings(list(tensors)))
        # threads change neither the stream nor what the cache holds
        cached = Encoder(**opts, threads=data.draw(st.sampled_from([1, 2, 3]))).encode(tensors, cache=cache)
        fresh = Encoder(**opts).encode(tensors)
        assert cached.stream == fresh.stream
        decoded = nnc.decode(cached.stream)
        for k, v in fresh.reconstruction.items():
            assert np.array_equal(cached.reconstruction[k], v)
            assert np.array_equal(decoded[k], v)


def test_units_are_reused_only_for_the_same_array_objects():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(16, 16)).astype(np.float32)
    cache = EncodeCache()
    Encoder(qp=-20).encode({"a": a}, cache=cache)
    Encoder(qp=-20).encode({"a": a}, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    changed = a.copy()
    changed[0, 0] += 1.0                           # a new object: never served from the cache
    res = Encoder(qp=-20).encode({"a": changed}, cache=cache)
    assert cache.misses == 2
    assert res.stream == Encoder(qp=-20).encode({"a": changed}).stream


def test_memory_budget_evicts_least_recently_used():
    rng = np.random.default_rng(4)
    t = {f"t{i}": rng.normal(size=(32, 32)) for i in range(4)}
    cache = EncodeCache(max_bytes=1)
    Encoder(qp=-20).encode(t, cache=cache)
    assert len(cache) == 1                          # only the newest unit is kept: t3's
    Encoder(qp=-20).encode({"t3": t["t3"]}, cache=cache)
    assert (cache.hits, cache.misses) == (1, 4)
    cache.clear()
    assert len(cache) == 0


def test_results_served_from_the_cache_are_read_only():
    w = np.random.default_rng(5).normal(size=(8, 8))
    cache = EncodeCache()
    res = Encoder(qp=-20).encode({"w": w}, cache=cache)
    try:
        res.reconstruction["w"][0, 0] = 1.0
    except ValueError:
        pass
    else:
        raise AssertionError("a cached reconstruction was writable")
    again = Encoder(qp=-20).encode({"w": w}, cache=cache)
    assert np.array_equal(again.reconstruction["w"], Encoder(qp=-20).encode({"w": w}).reconstruction["w"])


def test_float32_importance_and_sigmas_are_reused():
    # the settings keep the caller's arrays: encoders built from one mapping hit the cache (a float64 copy per encoder
    # made every unit a miss, and the DC-v2 search re-encoded every tensor for every candidate)
    rng = np.random.default_rng(6)
    t = {"a": rng.normal(size=(16, 16)).astype(np.float32), "b": rng.normal(size=(16, 16)).astype(np.float32)}
    importance = {"a": rng.uniform(0.1, 4, size=(16, 16)).astype(np.float32)}
    sigmas = {"b": rng.uniform(0.01, 0.1, size=(16, 16)).astype(np.float32)}
    cache = EncodeCache()
    opts = dict(qp=-20, rdoq_lambda=0.4, importance=importance, sigmas=sigmas)
    Encoder(**opts).encode(t, cache=cache)
    res = Encoder(**opts, lambda_per_tensor={"b": 0.8}).encode(t, cache=cache)
    assert (cache.hits, cache.misses) == (1, 3)     # "a" reused
    assert res.stream == Encoder(**opts, lambda_per_tensor={"b": 0.8}).encode(t).stream
    as64 = {k: v.astype(np.float64) for k, v in importance.items()}
    assert res.stream == Encoder(qp=-20, rdoq_lambda=0.4, importance=as64, sigmas=sigmas,
                                 lambda_per_tensor={"b": 0.8}).encode(t).stream


def test_importance_must_be_real_numbers():
    with pytest.raises(nnc.EncodeError, match="importance of 'a' must be real numbers"):
        Encoder(importance={"a": np.array(["x"])})
