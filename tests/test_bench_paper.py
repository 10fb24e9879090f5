"""benchmarks/bench_paper.py's choice of streams for the models with short sweeps (packaged models, MiniLM)."""

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
pytest.importorskip("sklearn", reason="the Lloyd baseline needs scikit-learn")
import bench_paper as bp  # noqa: E402
import nnc  # noqa: E402
import nnc.allocation  # noqa: E402
from nnc.reconstruction import step_size  # noqa: E402


def nearest_only_model():
    """A light model whose metric passes only the uniform quantiser's own levels (nearest rounding of the weight
    tensor at a qp of its grid), as a metric that is not monotone in the step may: DQ and RDOQ streams fail it."""
    rng = np.random.default_rng(5)
    params = {"fc.weight": rng.normal(0, 0.1, (48, 40)).astype(np.float32),
              "fc.bias": rng.normal(0, 0.1, 48).astype(np.float32)}
    grid = range(-20, -17)

    def evaluate(t):
        w = np.asarray(t["fc.weight"], np.float32)
        for qp in grid:
            step = float(step_size(qp, 2))
            if np.array_equal(w, (np.round(params["fc.weight"] / step) * step).astype(np.float32)):
                return 1.0
        return 1.0 if np.array_equal(w, params["fc.weight"]) else 0.0

    model = bp.Model("toy", params, evaluate, "nearest levels only")
    model.light, model.qps, model.searched, model.holdout = True, grid, False, evaluate
    return model


def test_light_sweep_holds_the_uniform_operating_point_and_scores_the_holdout():
    rows = bp.run_model(nearest_only_model(), "dense", argparse.Namespace(quick=True, search_budget=0), None,
                        lambda s: None)
    table = {r["coder"]: r for r in rows if r["table"] == "I"}
    # every DQ stream fails the metric; the uniform levels coded by CABAC pass and beat Huffman on them
    assert "dq False lambda 0.0" in table["nnc"]["setting"]
    assert table["nnc"]["accuracy_loss"] == 0 and table["nnc"]["bytes"] < table["huffman"]["bytes"]
    # the held-out score is recorded on the chosen streams (here the same function: the same loss)
    for coder in ("nnc", "huffman", "csr-huffman", "bzip2", "h0"):
        assert table[coder]["holdout_loss"] == table[coder]["accuracy_loss"]


def _passes_only(wanted, params):
    """A metric that scores 1 for the original "fc.weight" and for the reconstructions in ``wanted``, else 0."""

    def evaluate(t):
        return float(any(np.array_equal(np.asarray(t["fc.weight"]), w) for w in wanted)
                     or np.array_equal(np.asarray(t["fc.weight"]), params["fc.weight"]))

    return evaluate


def test_light_sweep_codes_with_the_importance_of_input_moments():
    # a metric that passes only the encoder's defaults coded with the importance of the model's input moments: the
    # sweep must offer those streams, with the arrays nnc.allocation.input_importance makes of the moments
    rng = np.random.default_rng(6)
    params = {"fc.weight": rng.laplace(0, 0.1, (48, 40)).astype(np.float32)}
    moments = np.r_[400.0, np.full(39, 0.01)]
    grid = range(-20, -17)
    importance = nnc.allocation.input_importance(params, {"fc.weight": moments})
    wanted = [nnc.Encoder(qp=qp, rdoq_lambda=0.1, importance=importance).encode(params).reconstruction["fc.weight"]
              for qp in grid]
    plain = [nnc.Encoder(qp=qp, rdoq_lambda=0.1).encode(params).reconstruction["fc.weight"] for qp in grid]
    assert not any(np.array_equal(a, b) for a, b in zip(wanted, plain))   # the importance changes the levels

    evaluate = _passes_only(wanted, params)

    model = bp.Model("toy", params, evaluate, "importance streams only")
    model.light, model.qps, model.searched = True, grid, False
    model.input_moments = lambda p: {"fc.weight": moments}
    rows = bp.run_model(model, "dense", argparse.Namespace(quick=True, search_budget=0), None, lambda s: None)
    table = {r["coder"]: r for r in rows if r["table"] == "I"}
    assert table["nnc"]["setting"].endswith(bp.IMPORTANCE_NOTE) and table["nnc"]["accuracy_loss"] == 0


@pytest.mark.parametrize("light", [True, False])
def test_sweeps_code_with_error_feedback_from_input_covariances(light):
    # a metric that passes only streams coded with error feedback from the model's covariances: both sweeps (the
    # light models' defaults and the full qp sweep) must offer them, in the "nnc-feedback" row too
    rng = np.random.default_rng(7)
    params = {"fc.weight": rng.laplace(0, 0.1, (24, 16)).astype(np.float32)}
    x = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    h = x.T @ x / len(x)
    grid = range(-20, -17)
    wanted = [nnc.Encoder(qp=qp, rdoq_lambda=lam, covariances={"fc.weight": h}).encode(params).reconstruction["fc.weight"]
              for qp in grid for lam in (0.0, 0.1, 0.3)]

    evaluate = _passes_only(wanted, params)

    model = bp.Model("toy", params, evaluate, "error-feedback streams only")
    model.light, model.qps, model.searched = light, grid, False
    model.input_covariances = lambda p: {"fc.weight": h}
    rows = bp.run_model(model, "dense", argparse.Namespace(quick=True, search_budget=0), None, lambda s: None)
    table = {r["coder"]: r for r in rows if r["table"] == "I"}
    assert bp.COVARIANCE_NOTE in table["nnc"]["setting"] and table["nnc"]["accuracy_loss"] == 0
    assert table["nnc-feedback"]["bytes"] == table["nnc"]["bytes"]


def test_nnc_candidates_include_dcv1_streams_from_a_fisher_diagonal():
    # the DC-v1 rows: sigmas from a Fisher diagonal go to the encoder, which weights RDOQ by (step / sigma)^2 itself
    rng = np.random.default_rng(3)
    params = {"fc.weight": rng.normal(0, 0.1, (24, 16)).astype(np.float32),
              "fc.bias": rng.normal(0, 0.1, 24).astype(np.float32)}
    model = bp.Model("toy", params, lambda t: 1.0, "none", data=(np.zeros((10, 16)), np.zeros(10)))
    fisher = {k: rng.uniform(0.5, 2.0, v.shape) for k, v in params.items()}
    cands = bp.nnc_candidates(model, fisher, [-20], [0.0, 0.1], [8], 0, lambda s: None)
    dcv1 = [(setting, stream) for family, setting, stream in cands if family == "dcv1"]
    assert [setting for setting, _ in dcv1] == ["DC-v1 S 8 dq False lambda 0.1", "DC-v1 S 8 dq True lambda 0.1"]
    for _, stream in dcv1:
        decoded = nnc.decode_model(stream)
        assert decoded["fc.weight"].shape == (24, 16)
