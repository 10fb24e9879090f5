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


@pytest.mark.parametrize("dq", [False, True])
def test_the_sigmas_weight_rdoq_with_and_without_dq(dq):
    """Before: with DQ (the default) the trellis got no importance from the sigmas: two sigma sets with the same
    smallest sigma (the same step, eq. 12) gave byte-identical streams."""
    tensors, fisher = _model_and_fisher()
    sigmas = laplace_sigmas(fisher, 1000, weights=tensors)["fc.weight"]
    spread = sigmas.copy()
    spread[:, 4:] = sigmas.max() * 10  # the same minimum: the same step, other importances
    streams = [
        Encoder(sigmas={"fc.weight": s}, dq=dq, rdoq_lambda=0.5).encode(tensors).stream for s in (sigmas, spread)
    ]
    assert streams[0] != streams[1]


def test_sigmas_and_an_importance_for_one_tensor_are_refused():
    tensors, fisher = _model_and_fisher()
    sigmas = laplace_sigmas(fisher, 1000, weights=tensors)
    with pytest.raises(EncodeError, match="both sigmas"):
        Encoder(sigmas=sigmas, importance=fisher, rdoq_lambda=0.1).encode(tensors)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--sigmas", "s.safetensors", "--importance", "s.safetensors", "--rdoq"], "give one"),
        (["--sigmas", "int.safetensors", "--rdoq"], "int.safetensors: the sigmas of 'fc.weight' must be finite"),
        (["--sigmas", "zero.safetensors", "--rdoq"], "zero.safetensors: the sigmas of 'fc.weight' must be finite"),
        (["--sigmas", "empty.safetensors", "--rdoq"], "empty.safetensors: holds no tensor"),
        (["--importance", "zero.safetensors", "--rdoq"], "zero.safetensors: every importance is 0"),
        (["--rdoq", "0.1", "--lambda", "0.5"], "give one"),
        (["--rdoq", "-1"], "argument --rdoq: expected"),
        (["--lambda", "nan"], "argument --lambda: expected"),
        (["--target-snr", "0"], "argument --target-snr: expected"),
        (["--target-snr", "nan"], "argument --target-snr: expected"),
        (["--sigmas", "s.safetensors", "--dcv1-s", "-1"], "argument --dcv1-s: expected"),
    ],
)
def test_degenerate_dc_options_are_refused_in_one_line(tmp_path, capsys, argv, words):
    """Before: an all-zero importance wrote an all-zero model, integer or empty sigmas files were taken (as 1, or
    as no DC-v1), `--rdoq 0.1 --lambda 0.5` dropped 0.1 and `--target-snr 0` zeroed the biases, all with exit 0;
    sigmas of 0 were reported against the model's path."""
    from nnc.cli import main

    tensors, fisher = _model_and_fisher()
    sigmas = laplace_sigmas(fisher, 1000, weights=tensors)
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes(tensors))
    (tmp_path / "s.safetensors").write_bytes(safetensors_bytes({k: v.astype(np.float32) for k, v in sigmas.items()}))
    (tmp_path / "int.safetensors").write_bytes(safetensors_bytes({"fc.weight": np.ones((16, 32), np.int32)}))
    (tmp_path / "zero.safetensors").write_bytes(safetensors_bytes({"fc.weight": np.zeros((16, 32), np.float32)}))
    (tmp_path / "empty.safetensors").write_bytes(safetensors_bytes({}))
    argv = [str(tmp_path / a) if a.endswith(".safetensors") else a for a in argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) if words.startswith("argument") else _no_exit():
        code = main(["encode", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "o.nnr"), *argv])
        assert code == (2 if words == "give one" else 1)  # 2: options that contradict one another
    err = capsys.readouterr().err.strip().splitlines()
    assert any(words in line for line in err), err
    assert not (tmp_path / "o.nnr").exists()


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
