"""The Shannon-lower-bound benchmark's estimator and water-filling, on sources with known answers."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench_bound = pytest.importorskip("bench_bound")


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_entropy_estimate_gaussian_and_laplacian(scale):
    rng = np.random.default_rng(1)
    g = bench_bound.differential_entropy(scale * rng.standard_normal(200_000))
    lap = bench_bound.differential_entropy(scale * rng.laplace(size=200_000))
    assert g == pytest.approx(0.5 * np.log2(2 * np.pi * np.e * scale**2), abs=0.01)
    assert lap == pytest.approx(np.log2(2 * np.e * scale), abs=0.01)


def test_bound_of_a_gaussian_is_its_rate_distortion_function():
    # For a Gaussian source the bound is R(D) = 1/2 log2(var / D): SNR / 6.02 dB per bit.
    x = np.random.default_rng(2).standard_normal(500_000)
    for snr in (10.0, 20.0, 30.0):
        assert bench_bound.shannon_bound({"w": x}, snr) == pytest.approx(snr / (20 * np.log10(2)), abs=0.02)


def test_water_filling_spends_no_bits_on_a_tensor_below_the_water_level():
    rng = np.random.default_rng(3)
    big, small = rng.standard_normal(200_000), 1e-3 * rng.standard_normal(200_000)
    # distortion per weight 0.01: the small tensor is left at zero rate, the big one takes it all
    n, energy = 400_000, float((big**2).sum() + (small**2).sum())
    snr = 10 * np.log10(energy / n / 0.01)
    expected = 0.5 * 0.5 * np.log2(1 / (0.02 - 1e-6))  # half the weights, each at D = 2 * 0.01 - var(small)
    assert bench_bound.shannon_bound({"a": big, "b": small}, snr) == pytest.approx(expected, abs=0.01)
