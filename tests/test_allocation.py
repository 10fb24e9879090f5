"""Bit allocation across tensors and the empirical Fisher importance (spec A.11, A.12)."""

import numpy as np
import pytest

import nnc
from nnc.allocation import allocate_qps, empirical_fisher


def _model(seed):
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.laplace(0, 0.05, (64, 64)).astype(np.float32),
            "b.weight": rng.laplace(0, 0.005, (128, 64)).astype(np.float32),
            "c.weight": (rng.standard_normal((32, 32)) * 0.2).astype(np.float32)}


def _snr(tensors, result):
    num = sum(float((v.astype(np.float64) ** 2).sum()) for v in tensors.values())
    den = sum(float(((tensors[k].astype(np.float64) - result.tensors[k].reconstruction) ** 2).sum())
              for k in tensors)
    return 10 * np.log10(num / den)


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
