"""benchmarks/packaged_models.py: weights put back into an ONNX graph reach the model's outputs."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")

import packaged_models as pm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture
def small_onnx(tmp_path):
    """y = relu6(x @ w + b) * scale, with w an initializer, b a Constant node and 6, scale 0-d constants."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.float32([0.5, -0.5, 1.0]))),
        helper.make_node("Constant", [], ["six"], value=numpy_helper.from_array(np.array(6.0, np.float32))),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["h"]),
        helper.make_node("Clip", ["h", "zero", "six"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def test_params_are_the_weights_not_the_scalar_constants(small_onnx):
    weights = pm.OnnxWeights(small_onnx, prefix="m/")
    assert sorted(weights.params) == ["m/b", "m/w"]
    assert weights.params["m/b"].tolist() == [0.5, -0.5, 1.0]


def test_put_back_weights_change_the_outputs(small_onnx):
    weights = pm.OnnxWeights(small_onnx, prefix="m/")
    x = np.ones((2, 4), np.float32)
    params = weights.params
    y0 = weights.session(params).run(None, {"x": x})[0]
    np.testing.assert_allclose(y0, np.clip(x @ params["m/w"] + params["m/b"], 0, 6), rtol=1e-6)
    changed = {"m/w": np.full((4, 3), 0.25, np.float32), "m/b": np.float32([1, 2, 3])}
    y1 = weights.session(changed).run(None, {"x": x})[0]
    np.testing.assert_allclose(y1, np.clip(x @ changed["m/w"] + changed["m/b"], 0, 6), rtol=1e-6)
    # the 0-d constants (the clip bounds) stay in the graph
    big = {"m/w": np.full((4, 3), 10.0, np.float32), "m/b": np.zeros(3, np.float32)}
    assert weights.session(big).run(None, {"x": x})[0].max() == 6.0


def test_edit_distance():
    assert pm.edit_distance("kitten", "sitting") == 3
    assert pm.edit_distance("", "abc") == 3
    assert pm.edit_distance("same", "same") == 0


def test_mtcnn_nets_load_without_torchvision():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    try:
        pnet, rnet, onet = pm.mtcnn_nets()
    except pm.Unavailable as exc:
        pytest.skip(str(exc))
    with torch.no_grad():
        prob = onet(torch.zeros(1, 3, 48, 48))[-1]
    assert prob.shape == (1, 2) and abs(float(prob.sum()) - 1) < 1e-5


def test_resize_scales_are_graph_structure(tmp_path):
    """A float Constant feeding Resize's scales is not a weight: coding 2.0 as 1.9999 would change shapes."""
    nodes = [
        helper.make_node("Constant", [], ["scales"], value=numpy_helper.from_array(np.float32([1, 1, 2, 2]))),
        helper.make_node("Constant", [], ["gain"], value=numpy_helper.from_array(np.float32([0.5]))),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Mul", ["r", "gain"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "resize.onnx"
    onnx.save(model, path)
    weights = pm.OnnxWeights(path)
    assert list(weights.params) == ["gain"]
    y = weights.session({"gain": np.float32([2.0])}).run(None, {"x": np.ones((1, 1, 2, 2), np.float32)})[0]
    assert y.shape == (1, 1, 4, 4) and np.all(y == 2.0)


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs",
    [
        ((2, 3, 9, 7), (5, 3, 3, 2), dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])),
        ((1, 2, 8, 8), (4, 2, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
        ((1, 2, 7, 6), (3, 2, 2, 2), dict(auto_pad="SAME_LOWER")),
        ((2, 3, 11), (4, 3, 3), dict(pads=[2, 1], strides=[2])),
    ],
)
def test_recorded_conv_patches_times_the_weight_give_the_conv_output(tmp_path, x_shape, w_shape, attrs):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=w_shape).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "conv.onnx")
    weights = pm.OnnxWeights(tmp_path / "conv.onnx")
    x = rng.normal(size=x_shape).astype(np.float32)
    with pm.CovarianceRecorder() as recorder:
        session = weights.session(weights.params)
        (y,) = session.run(None, {"x": x})
    assert [o.name for o in session.get_outputs()] == ["y"]     # the recorded inputs are not outputs
    h = recorder.covariances()["w"]
    wm = weights.tensors["w"].reshape(w_shape[0], -1).astype(np.float64)
    assert np.array_equal(y, weights.session(weights.params).run(None, {"x": x})[0])   # the same outputs
    # the conv alone: the sum over its outputs of (W x)^2 = positions * tr(W H W^T)
    full = helper.make_graph(nodes[:1], "g", graph.input, [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
                             [w])
    conv = helper.make_model(full, opset_imports=[helper.make_opsetid("", 13)])
    conv.ir_version = 8
    out = ort.InferenceSession(conv.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    positions = out.size // out.shape[1]
    assert np.isclose(float((out.astype(np.float64) ** 2).sum()), positions * np.trace(wm @ h @ wm.T), rtol=1e-5)
    assert recorder.transposed == set()


def test_recorded_matmul_weights_are_transposed(small_onnx):
    weights = pm.OnnxWeights(small_onnx)
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    with pm.CovarianceRecorder() as recorder:
        weights.session(weights.params).run(None, {"x": x})
    assert recorder.transposed == {"w"}
    assert np.allclose(recorder.covariances()["w"], x.astype(np.float64).T @ x / 2)


def test_magika_contents_are_the_same_bytes_at_any_time(monkeypatch):
    """The contents magika is scored on carry no date of the run (zip entries, PDF metadata) and come from
    MAGIKA_FILES_COMMIT's files, not from the working tree, where git holds that commit."""
    import time

    pytest.importorskip("PIL", reason="Pillow is not installed (pip install pillow)")
    first, source = pm.magika_samples(0)
    later = time.time() + 400 * 86400
    real_gmtime = time.gmtime
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "gmtime", lambda secs=None: real_gmtime(later if secs is None else secs))
    second, _ = pm.magika_samples(0)
    assert len(first) == len(second) > 500
    assert [i for i, (a, b) in enumerate(zip(first, second)) if a != b] == []
    if pm._committed_names(pm.MAGIKA_FILES_COMMIT) is not None:
        assert source == f"commit {pm.MAGIKA_FILES_COMMIT[:7]}"
