"""reconstruct_uniform in one pass and in threads gives exactly float32(n) * float32(step) (spec 12.2, 12.3)."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import nnc.reconstruction as R


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int32, st.integers(0, 300), elements=st.integers(-(2**31), 2**31 - 1)),
    st.floats(2.0**-100, 2.0**100, width=32),
    st.integers(1, 4),
)
def test_threads_give_the_two_pass_values(levels, step, threads):
    R.RECONSTRUCT_CHUNK, chunk = 7, R.RECONSTRUCT_CHUNK  # small slices, so that threads are used
    try:
        check(levels, step, threads)
    finally:
        R.RECONSTRUCT_CHUNK = chunk


def check(levels, step, threads):
    with np.errstate(over="ignore"):
        expected = levels.astype(np.float32) * np.float32(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # overflow to inf is defined: no warning from any thread
        got = R.reconstruct_uniform(levels, np.float32(step), threads)
    assert got.dtype == np.float32 and got.shape == levels.shape
    assert got.tobytes() == np.asarray(expected, np.float32).tobytes()


def test_a_large_tensor_is_split(monkeypatch):
    seen = []
    real = np.multiply

    def spy(a, *args, **kwargs):
        seen.append(a.size)
        return real(a, *args, **kwargs)

    monkeypatch.setattr(R, "RECONSTRUCT_CHUNK", 10)
    monkeypatch.setattr(R.np, "multiply", spy)
    levels = np.arange(35, dtype=np.int32)
    out = R.reconstruct_uniform(levels, np.float32(0.5), threads=3)
    monkeypatch.undo()
    assert sorted(seen) == [11, 12, 12]
    assert out.tolist() == (levels * 0.5).tolist()
