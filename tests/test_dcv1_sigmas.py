"""DC-v1 from end to end: Fisher -> Laplace sigmas -> Encoder(sigmas=) and `nnc encode --sigmas` (issue 18)."""

import subprocess
import sys

import numpy as np
import pytest

import nnc
from nnc.allocation import empirical_fisher, laplace_sigmas
from nnc.encoder import Encoder, dcv1_step, qp_for_step
from nnc.errors import EncodeError
from nnc.formats import safetensors_bytes


def _model_and_fisher():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (16, 32)).astype(np.float32)
    grads = [{"fc.weight": rng.normal(0, 1e-2, w.shape) * (1 + 10 * (np.arange(32) < 4))} for _ in range(8)]
    return {"fc.weight": w, "fc.bias": np.zeros(16, np.float32)}, empirical_fisher(grads)


def test_sigmas_shrink_where_the_fisher_is_large():
    tensors, fisher = _model_and_fisher()
    s = laplace_sigmas(fisher, 1000, weights=tensors)["fc.weight"]
    assert s.shape == tensors["fc.weight"].shape and np.all(s > 0)
    assert s[:, :4].mean() < s[:, 4:].mean()
    assert np.all(s <= np.std(tensors["fc.weight"]) + 1e-12)          # the prior's variance bounds them


def test_sigmas_drive_the_encoders_step_and_round_trip():
    tensors, fisher = _model_and_fisher()
    sigmas = laplace_sigmas(fisher, 1000, weights=tensors)
    res = Encoder(sigmas=sigmas, dcv1_s=16, dq=False, rdoq_lambda=0.1).encode(tensors)
    expected = qp_for_step(dcv1_step(tensors["fc.weight"], sigmas["fc.weight"], 16), 2)
    assert res.tensors["fc.weight"].qp == expected
    out = nnc.decode(res.stream)
    np.testing.assert_array_equal(out["fc.weight"], res.tensors["fc.weight"].reconstruction)


def test_prior_is_required():
    with pytest.raises(EncodeError, match="prior_precision"):
        laplace_sigmas({"w": np.ones(3)}, 10)
    with pytest.raises(EncodeError, match="positive"):
        laplace_sigmas({"w": np.ones(3)}, 10, prior_precision=0.0)


def test_cli_encodes_with_a_sigmas_file(tmp_path):
    tensors, fisher = _model_and_fisher()
    sigmas = laplace_sigmas(fisher, 1000, weights=tensors)
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes(tensors))
    (tmp_path / "s.safetensors").write_bytes(safetensors_bytes({k: v.astype(np.float32) for k, v in sigmas.items()}))
    r = subprocess.run([sys.executable, "-m", "nnc", "encode", str(tmp_path / "m.safetensors"), "-o",
                        str(tmp_path / "m.nnr"), "--sigmas", str(tmp_path / "s.safetensors"), "--rdoq", "0.1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert set(nnc.decode((tmp_path / "m.nnr").read_bytes())) == set(tensors)
