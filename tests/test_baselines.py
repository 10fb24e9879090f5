"""The paper's baseline coders (benchmarks/baselines.py): optimality, exact round trips, descent, H0."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import baselines as bl  # noqa: E402


def test_huffman_dyadic_lengths_are_minus_log2_p():
    counts = [8, 4, 2, 1, 1]                       # p = 1/2, 1/4, 1/8, 1/16, 1/16
    lengths = bl.huffman_lengths(counts)
    assert lengths.tolist() == [1, 2, 3, 4, 4]
    symbols = np.repeat(np.arange(5), counts)
    assert sum(c * l for c, l in zip(counts, lengths)) == pytest.approx(bl.h0_bits(symbols))


@given(st.lists(st.integers(1, 1000), min_size=2, max_size=40))
@settings(max_examples=200, deadline=None)
def test_huffman_is_within_one_bit_of_entropy_and_satisfies_kraft(counts):
    lengths = bl.huffman_lengths(counts)
    total = sum(counts)
    mean = sum(c * l for c, l in zip(counts, lengths)) / total
    entropy = -sum(c / total * math.log2(c / total) for c in counts)
    assert entropy - 1e-9 <= mean < entropy + 1
    assert sum(2.0 ** -l for l in lengths) == pytest.approx(1.0)     # a full tree: Kraft with equality


@given(st.lists(st.integers(1, 50), min_size=2, max_size=7))
@settings(max_examples=100, deadline=None)
def test_huffman_matches_brute_force_optimum(counts):
    """No prefix code (any lengths satisfying Kraft) has a smaller total length."""
    import itertools

    n = len(counts)
    best = min(sum(c * l for c, l in zip(counts, ls))
               for ls in itertools.product(range(1, n), repeat=n) if sum(2.0 ** -l for l in ls) <= 1)
    lengths = bl.huffman_lengths(counts)
    assert sum(c * l for c, l in zip(counts, lengths)) == best


@given(st.lists(st.integers(-300, 300), min_size=1, max_size=400))
@settings(max_examples=150, deadline=None)
def test_huffman_round_trip_and_size(values):
    x = np.array(values, np.int64)
    stream = bl.huffman_encode(x)
    assert len(stream) == bl.huffman_size(x)
    got, end = bl.huffman_decode(stream + b"tail", len(x))
    assert got.tolist() == values
    assert end == len(stream)


sparse_levels = st.lists(st.one_of(st.just(0), st.just(0), st.just(0), st.integers(-40, 40)), min_size=1,
                         max_size=600)


@given(sparse_levels, st.one_of(st.none(), st.integers(1, 16)))
@settings(max_examples=150, deadline=None)
def test_csr_round_trip_is_exact(values, bits):
    x = np.array(values, np.int64)
    stream = bl.csr_encode(x, bits)
    got, end = bl.csr_decode(stream + b"\x00tail", len(x))
    assert got.tolist() == values
    assert end == len(stream)
    if bits is None:
        assert bl.csr_size(x) == len(stream)  # the size the benchmark counts is the stream's


def test_csr_beats_dense_huffman_on_very_sparse_data():
    rng = np.random.default_rng(3)
    x = rng.integers(-8, 9, 20000) * (rng.random(20000) < 0.02)
    assert len(bl.csr_encode(x)) < bl.huffman_size(x)


@pytest.mark.parametrize("lam", [0.0, 0.5, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_lloyd_objective_never_increases(lam, seed):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(seed)
    w = np.concatenate([rng.laplace(0, 0.05, 3000), np.zeros(500)])
    f = rng.gamma(1.0, 1.0, w.size)
    centres, assign, history = bl.weighted_lloyd(w, f, k=32, lam=lam, iters=40, seed=seed)
    assert len(history) >= 2
    assert np.all(np.diff(history) <= 1e-9 * abs(history[0]))
    assert 0.0 in centres                                       # the zero cluster stays at 0
    assert history[-1] == pytest.approx(bl.lloyd_objective(w, f, centres, assign, lam))


def test_weighted_lloyd_follows_the_weights():
    """A heavily weighted point pulls its cluster's centre onto itself."""
    pytest.importorskip("sklearn")
    w = np.array([1.0, 1.2, 5.0, 5.2, 0.0])
    f = np.array([1000.0, 1.0, 1.0, 1.0, 1.0])
    centres, assign, _ = bl.weighted_lloyd(w, f, k=3, lam=0.0)
    assert centres[assign[0]] == pytest.approx((1000 * 1.0 + 1.2) / 1001)


def test_h0():
    assert bl.h0_bits([1, 1, 1, 1]) == 0.0
    assert bl.h0_bits([0, 1, 2, 3]) == pytest.approx(8.0)
    assert bl.h0_bits([5, 5, 7, 9]) == pytest.approx(4 * 1.5)
    assert bl.h0_bits([]) == 0.0


def test_model_sizes_count_headers_and_order():
    rng = np.random.default_rng(0)
    levels = {"fc.weight": (rng.integers(-5, 6, (64, 64)) * (rng.random((64, 64)) < 0.1))}
    steps = {"fc.weight": 0.01}
    raw = {"fc.bias": rng.normal(0, 1, 64).astype(np.float32)}
    sizes = {c: bl.model_size(c, levels, steps, raw) for c in ("huffman", "csr-huffman", "bzip2", "h0")}
    raw_bias = bl.raw_tensor_bytes("fc.bias", raw["fc.bias"])
    assert raw_bias >= 4 * 64 + len("fc.bias")
    h0_payload = math.ceil(bl.h0_bits(levels["fc.weight"]) / 8)
    assert sizes["h0"] > h0_payload + raw_bias
    assert sizes["huffman"] >= sizes["h0"]
    assert sizes["huffman"] == bl.model_size("huffman", levels, steps) + raw_bias
