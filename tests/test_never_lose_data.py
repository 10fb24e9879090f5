"""Issue 14, "never lose or fake data": every silent failure a new user hit fails loudly now.

Each bad case must give exit status 1, one line on stderr naming the user's own path,
nothing written and the inputs untouched (GUIDE: "Never lose or fake data").
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnc
from nnc import container as C
from nnc import formats
from nnc.cli import main, stream_info
from nnc.encoder import Encoder
from nnc.errors import EncodeError
from nnc.formats import npz_bytes, read_model, safetensors_bytes

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None):
    """The command line in a subprocess: (exit status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "nnc", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env=env)
    return r.returncode, r.stdout, r.stderr


def cli(capsys, *args):
    """The command line in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_refused(code, err, *names, usage=False):
    assert code == (2 if usage else 1)  # 2: options that contradict or need one another
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnc: error: "), err
    for name in names:
        assert str(name) in lines[0], (name, err)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.npz"
    rng = np.random.default_rng(14)
    path.write_bytes(npz_bytes({"fc.weight": rng.standard_normal((8, 6)).astype(np.float32),
                                "fc.bias": rng.standard_normal(8).astype(np.float32)}))
    return path


@pytest.fixture
def stream(model, tmp_path):
    path = tmp_path / "m.nnr"
    nnc.encode_model(model, path, qp=-30, blocks=False)  # one NDU per tensor: unit boundaries between tensors
    return path


# -- item 1: the output is an input ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_encode_refuses_to_overwrite_its_input(model, tmp_path, capsys, how):
    before = model.read_bytes()
    target = {"same": model, "symlink": tmp_path / "link.npz", "hardlink": tmp_path / "hard.npz"}[how]
    if how == "symlink":
        target.symlink_to(model)
    elif how == "hardlink":
        os.link(model, target)
    code, _, err = cli(capsys, "encode", model, "-o", target)
    assert_refused(code, err, target, "refusing to overwrite")
    assert model.read_bytes() == before


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_decode_refuses_to_overwrite_its_stream(stream, tmp_path, capsys, how):
    before = stream.read_bytes()
    target = {"same": stream, "symlink": tmp_path / "link.npz", "hardlink": tmp_path / "hard.npz"}[how]
    if how == "symlink":
        target.symlink_to(stream)
    elif how == "hardlink":
        os.link(stream, target)
    code, _, err = cli(capsys, "decode", stream, "-o", target)
    assert_refused(code, err, target)
    assert stream.read_bytes() == before


def test_decode_refuses_to_overwrite_its_add_to_model(stream, model, capsys):
    before = model.read_bytes()
    code, _, err = cli(capsys, "decode", stream, "-o", model, "--add-to", model)
    assert_refused(code, err, model)
    assert model.read_bytes() == before


# -- item 2: completeness (spec 3.5) ----------------------------------------------------------------------

def _units(data):
    return list(C.iter_units(data))


def test_a_stream_cut_at_a_unit_boundary_is_truncated(stream, tmp_path, capsys):
    data = stream.read_bytes()
    for cut_before in (3, 4):  # before the first NDU, and after it
        cut = data[:_units(data)[cut_before].offset]
        with pytest.raises(nnc.TruncatedError, match="topology unit announces") as exc:
            nnc.decode(cut)
        assert exc.value.clause == "3.5" and exc.value.offset == len(cut)
        with pytest.raises(nnc.TruncatedError):
            nnc.Decoder(cut).decode()
        with pytest.raises(nnc.TruncatedError):
            nnc.decode_model(cut)
        path = tmp_path / "cut.nnr"
        path.write_bytes(cut)
        code, _, err = cli(capsys, "decode", path, "-o", tmp_path / "out.npz")
        assert_refused(code, err, "announces")
        assert not (tmp_path / "out.npz").exists()


def test_an_update_that_skips_tensors_says_so(tmp_path, capsys):
    sender, receiver = nnc.EncoderState(), nnc.DecoderState()
    base = {"a.weight": np.ones((4, 5), np.float32), "b.weight": np.full((3, 3), 0.5, np.float32)}
    first = nnc.encode(base, qp=-20, state=sender, differences=True)
    second = nnc.encode({"a.weight": base["a.weight"] * 1.5, "b.weight": base["b.weight"]}, qp=-20,
                        state=sender, differences=True)
    held = nnc.decode(first, state=receiver)
    update = nnc.decode(second, state=receiver)
    assert list(update) == ["a.weight"] and update.skipped == ("b.weight",) and update.differences
    model = nnc.apply_update(held, update)
    np.testing.assert_allclose(model["a.weight"], 1.5, atol=1e-3)
    path = tmp_path / "update.nnr"
    path.write_bytes(second)
    assert stream_info(path)["skipped"] == ["b.weight"]
    code, out, _ = cli(capsys, "info", path)
    assert code == 0 and "1 tensor(s) skipped" in out and "b.weight" in out
    # the same update cut before its NDU is not complete: a.weight is announced and not skipped
    with pytest.raises(nnc.TruncatedError, match="'a.weight'"):
        nnc.decode(second[:_units(second)[3].offset])


def test_a_tensor_that_was_not_announced_is_an_error():
    # a bias before its own weight: the order rule would swap them, so the names are announced
    one = nnc.encode({"w.bias": np.ones(2, np.float32), "w.weight": np.ones((2, 2), np.float32)})
    assert nnc.Decoder(one).metadata["tensors"] == ["w.bias", "w.weight"]
    other = nnc.encode({"v": np.ones((2, 2), np.float32)})
    with pytest.raises(nnc.DecodeError, match="'v' is not among the tensors") as exc:
        nnc.decode(one + other[_units(other)[3].offset:])
    assert exc.value.clause == "3.5"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=4), st.data())
def test_a_count_announcement_refuses_a_cut_or_an_extra_tensor(layers, data):
    """Announced by a count (spec 3.5, 6.2.1): every cut at a unit boundary after the topology unit loses
    a tensor and is a TruncatedError at the end of the data; an appended NDU is a DecodeError at its offset."""
    model = {}
    for i, (rows, bias) in enumerate(layers):
        model[f"l{i}.weight"] = np.full((rows, 3), 0.25 * (i + 1), np.float32)
        if bias:
            model[f"l{i}.bias"] = np.full(rows, -0.5, np.float32)
    stream = nnc.encode(model, qp=-20, blocks=data.draw(st.sampled_from([True, "auto", False])))
    assert nnc.Decoder(stream).metadata["tensors"] == len(model)
    units = _units(stream)
    tpl = next(i for i, u in enumerate(units) if u.type == C.NNR_TPL)
    cut = data.draw(st.sampled_from([u.offset for u in units[tpl + 1:]]))
    with pytest.raises(nnc.TruncatedError, match="topology unit announces") as exc:
        nnc.decode(stream[:cut])
    assert exc.value.clause == "3.5" and exc.value.offset == cut
    other = nnc.encode({"extra": np.ones((2, 2), np.float32)})
    with pytest.raises(nnc.DecodeError, match="'extra' is beyond the") as exc:
        nnc.decode(stream + other[_units(other)[3].offset:])
    assert exc.value.clause == "3.5" and exc.value.offset == len(stream)


def test_conformance_has_the_completeness_must_fail_streams():
    manifest = json.loads((REPO / "conformance" / "manifest.json").read_text())
    clauses = {e["name"]: (e.get("expected_error"), e.get("clause")) for e in manifest["streams"]}
    assert clauses["mf_cut_after_first_ndu"] == ("TruncatedError", "3.5")
    assert clauses["mf_cut_after_headers"] == ("TruncatedError", "3.5")
    assert clauses["mf_update_cut"] == ("TruncatedError", "3.5")
    assert clauses["mf_unannounced_tensor"] == ("DecodeError", "3.5")
    assert clauses["mf_count_cut_after_first_ndu"] == ("TruncatedError", "3.5")
    assert clauses["mf_count_extra_tensor"] == ("DecodeError", "3.5")


# -- item 3: a template that does not match ---------------------------------------------------------------

def _onnx_model(path, weights, constants=()):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()]
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(np.asarray(v), k + "_value"))
             for k, v in constants]
    names = list(weights) + [k for k, _ in constants]
    nodes += [helper.make_node("Identity", [n], [n + "_out"]) for n in names]
    outputs = [helper.make_tensor_value_info(n + "_out", TensorProto.FLOAT, None) for n in names]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [], outputs, inits)), path)
    return path


@pytest.mark.parametrize("template_weights,expected", [
    ({"w": np.ones((2, 3), np.float32), "other": np.ones(2, np.float32)}, ["'b' is not in the template",
                                                                              "'other' is not in the stream"]),
    ({"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}, ["'w' has shape (2, 3), the template's (3, 2)"]),
    ({"w": np.ones((2, 3), np.float64), "b": np.ones(2, np.float32)}, ["'w' is float32, the template's float64"]),
])
def test_a_template_that_does_not_match_is_an_error_listing_the_differences(tmp_path, capsys, template_weights,
                                                                            expected):
    original = _onnx_model(tmp_path / "m.onnx", {"w": np.ones((2, 3), np.float32), "b": np.ones(2, np.float32)})
    code, _, err = cli(capsys, "encode", original, "-o", tmp_path / "m.nnr")
    assert code == 0, err
    template = _onnx_model(tmp_path / "other.onnx", template_weights)
    before = template.read_bytes()
    code, _, err = cli(capsys, "decode", tmp_path / "m.nnr", "-o", tmp_path / "out.onnx", "--template", template)
    assert_refused(code, err, template, *expected)
    assert not (tmp_path / "out.onnx").exists() and template.read_bytes() == before


# -- item 4: no tensors; ONNX Constant nodes and subgraphs -----------------------------------------------

def test_a_model_without_tensors_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(safetensors_bytes({}))
    code, _, err = cli(capsys, "encode", empty, "-o", tmp_path / "e.nnr")
    assert_refused(code, err, empty, "no tensors")
    assert not (tmp_path / "e.nnr").exists()
    with pytest.raises(nnc.NNCError, match="no tensors"):
        nnc.encode_model(empty)


def _model_with_constants_and_subgraphs(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "w")
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        np.array([-np.inf, 1.5, 2.0], np.float32), "c_value"))
    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
        np.array([3, 2], np.int64), "s"))   # an integer Constant: graph structure, not a weight
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["then_w"], ["t_out"])], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([0.25, -0.75], np.float32), "then_w")])
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["e_out"], value=numpy_helper.from_array(
            np.array([0.5, -0.5], np.float32), "e_value"))], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2])])
    loop_body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "loop_w"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([0.125, 4.0], np.float32), "loop_w")])
    nodes = [const, shape, helper.make_node("Reshape", ["w", "shape"], ["y"]),
             helper.make_node("If", ["cond"], ["y2"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("Loop", ["trips", "cond", "y2"], ["y3"], body=loop_body)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("trips", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2]),
         helper.make_tensor_value_info("y3", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])], [w])
    model = helper.make_model(graph)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_constant_nodes_and_subgraph_initializers_are_weights(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from nnc.formats import _onnx_weights

    path = _model_with_constants_and_subgraphs(tmp_path / "m.onnx")
    tensors, _ = read_model(path)
    assert sorted(tensors) == ["c", "e_out", "loop_w", "then_w", "w"]
    code, _, err = cli(capsys, "encode", path, "-o", tmp_path / "m.nnr", "--qp", "-20")
    assert code == 0, err
    assert "c (holds inf or NaN)" in err  # the -inf of "c" is kept exactly
    code, _, err = cli(capsys, "decode", tmp_path / "m.nnr", "-o", tmp_path / "out.onnx", "--template", path)
    assert code == 0, err
    decoded = nnc.decode_model(tmp_path / "m.nnr")
    written = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(written)
    weights = {k: numpy_helper.to_array(t) for k, t in _onnx_weights(written.graph).items()}
    assert sorted(weights) == sorted(tensors)
    for name, value in weights.items():
        assert value.dtype == tensors[name].dtype and value.shape == tensors[name].shape
        np.testing.assert_array_equal(value, decoded[name])   # the decoded values, not the template's
    assert weights["c"].tobytes() == tensors["c"].tobytes()
    # the integer Constant (a shape) stays as the graph has it
    shape_node = next(n for n in written.graph.node if n.output[0] == "shape")
    assert numpy_helper.to_array(shape_node.attribute[0].t).tolist() == [3, 2]


def test_silero_vad_onnx_round_trip(tmp_path, capsys):
    """A real model whose weights all sit in Constant nodes inside If subgraphs (skipped without the package)."""
    silero = pytest.importorskip("silero_vad", reason="pip install silero-vad for this real-world check")
    path = Path(silero.__file__).parent / "data" / "silero_vad.onnx"
    if not path.exists():
        pytest.skip(f"{path} not in this silero-vad version")
    tensors, _ = read_model(path)
    assert len(tensors) > 10 and sum(v.size for v in tensors.values()) > 100_000
    code, _, err = cli(capsys, "encode", path, "-o", tmp_path / "s.nnr", "--qp", "-40")
    assert code == 0, err
    code, _, err = cli(capsys, "decode", tmp_path / "s.nnr", "-o", tmp_path / "s.onnx", "--template", path)
    assert code == 0, err
    back, _ = read_model(tmp_path / "s.onnx")
    assert list(back) == list(tensors)
    assert all(back[k].shape == tensors[k].shape and back[k].dtype == tensors[k].dtype for k in tensors)


# -- item 5: differences ----------------------------------------------------------------------------------

def test_apply_update_refuses_a_stream_of_full_values(tmp_path, capsys):
    model = {"w": np.ones((3, 3), np.float32)}
    sender, receiver = nnc.EncoderState(), nnc.DecoderState()
    full = nnc.decode(nnc.encode(model, qp=-20, state=sender), state=receiver)  # state, no differences=True
    assert full.differences is False
    with pytest.raises(nnc.UpdateError, match="full values, not differences"):
        nnc.apply_update(model, full)
    # the CLI: --add-to refuses, and writes nothing
    stream = tmp_path / "full.nnr"
    stream.write_bytes(nnc.encode(model, qp=-20))
    (tmp_path / "base.npz").write_bytes(npz_bytes(model))
    code, _, err = cli(capsys, "decode", stream, "-o", tmp_path / "new.npz", "--add-to", tmp_path / "base.npz")
    assert_refused(code, err, stream, "not differences")
    assert not (tmp_path / "new.npz").exists()


def test_the_readme_update_flow_adds_differences_only():
    sender, receiver = nnc.EncoderState(), nnc.DecoderState()
    model = {"w": np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)}
    base = nnc.encode(model, qp=-30, state=sender, differences=True)
    held = nnc.decode(base, state=receiver)
    assert held.differences is False    # the first stream carries the values themselves
    new_model = {"w": model["w"] * 1.1}
    update = nnc.encode(new_model, qp=-30, state=sender, differences=True)
    decoded = nnc.decode(update, state=receiver)
    assert decoded.differences is True
    held = nnc.apply_update(held, decoded)
    np.testing.assert_array_equal(held["w"], sender.model["w"])   # the receiver holds the sender's model
    np.testing.assert_allclose(held["w"], new_model["w"], atol=0.01)
    assert "differences" in json.loads(C.parse_stream(update)[2].header.data)["nnc"]


# -- item 6: non-finite values ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [False, True])
def test_a_minus_inf_scalar_is_kept_bit_exactly(tmp_path, capsys, raw):
    src = tmp_path / "m.npz"
    values = {"mask": np.float32(-np.inf), "nan": np.array([1.0, np.nan, np.inf], np.float32),
              "w": np.ones((4, 4), np.float32)}
    src.write_bytes(npz_bytes(values))
    code, out, err = cli(capsys, "encode", src, "-o", tmp_path / "m.nnr", *(["--raw", "mask"] if raw else []))
    assert code == 0, err
    assert "holds inf or NaN" in err and "RAW_FLOAT" in err and "SNR" in out and "nan dB" not in out
    code, _, err = cli(capsys, "decode", tmp_path / "m.nnr", "-o", tmp_path / "out.npz")
    assert code == 0, err
    back, _ = read_model(tmp_path / "out.npz")
    for name in ("mask", "nan"):
        assert back[name].shape == np.shape(values[name]) and back[name].tobytes() == values[name].tobytes()


def test_the_non_finite_error_names_the_tensor_the_position_and_a_clause():
    with pytest.raises(nnc.EncodeError) as exc:
        nnc.encode({"fc.weight": np.ones((2, 2), np.float32), "fc.bias": np.array([0.0, np.nan], np.float32)},
                   blocks=True)
    assert "'fc.bias'" in str(exc.value) and "index [1]" in str(exc.value) and exc.value.clause == "7.5"


# -- item 7: the smaller ones -----------------------------------------------------------------------------

def test_quiet_verify_and_info_print_nothing(stream, capsys):
    assert cli(capsys, "info", "-q", stream) == (0, "", "")
    code, out, err = cli(capsys, "verify", "-q", REPO / "conformance", "--stream", "p1_urq_so0")
    assert (code, out, err) == (0, "", "")


def test_a_missing_output_folder_names_the_users_path(model, tmp_path, capsys, stream):
    target = tmp_path / "no" / "such" / "m.nnr"
    code, _, err = cli(capsys, "encode", model, "-o", target)
    assert_refused(code, err, target)
    assert ".tmp" not in err
    code, _, err = cli(capsys, "decode", stream, "-o", tmp_path / "nope" / "m.npz")
    assert_refused(code, err, tmp_path / "nope" / "m.npz")
    # the library's atomic write names the path too
    from nnc.formats import write_atomic

    with pytest.raises(FileNotFoundError) as exc:
        write_atomic(target, b"x")
    assert exc.value.filename == str(target)


def test_info_of_a_model_says_it_is_not_a_stream(model, capsys):
    code, _, err = cli(capsys, "info", model)
    assert_refused(code, err, model, "not an NNC stream")


@pytest.mark.parametrize("option", [["--tensor-qp", "head.*=-40"], ["--raw", "*.num_batches_tracked"],
                                    ["--tensor-lambda", "nothing=0.1"]])
def test_patterns_that_match_nothing_are_an_error(model, tmp_path, capsys, option):
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "m.nnr", *option)
    assert_refused(code, err, option[1].split("=")[0], "matches no tensor")
    assert not (tmp_path / "m.nnr").exists()


def test_torchscript_and_whole_module_files_give_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(module), tmp_path / "scripted.pt")
    torch.save(module, tmp_path / "module.pt")
    for name, words in (("scripted.pt", "TorchScript"), ("module.pt", "whole module")):
        code, _, err = cli(capsys, "encode", tmp_path / name, "-o", tmp_path / "x.nnr")
        assert_refused(code, err, tmp_path / name, words, "state_dict")
        assert "\x1b" not in err


def test_info_shows_whole_names_original_dtypes_and_original_size(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    prefix = "encoder.layers.0.self_attention.output.dense."
    sd = {prefix + "weight": torch.ones((4, 4), dtype=torch.bfloat16),
          prefix + "weight_scale": torch.ones((4, 4), dtype=torch.bfloat16),
          "steps": torch.tensor([3], dtype=torch.int64)}
    torch.save(sd, tmp_path / "m.pt")
    code, _, err = cli(capsys, "encode", tmp_path / "m.pt", "-o", tmp_path / "m.nnr")
    assert code == 0, err
    code, out, _ = cli(capsys, "info", tmp_path / "m.nnr")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if line.split()}
    assert prefix + "weight" in rows and prefix + "weight_scale" in rows
    assert rows[prefix + "weight"][2] == "bfloat16" and rows["steps"][2] == "int64"
    info = stream_info(tmp_path / "m.nnr")
    assert info["original_bytes"] == 2 * 32 + 8
    assert f"{info['bytes'] / info['original_bytes']:.1f}x larger than the original {info['original_bytes']} bytes" in out


def test_info_shows_a_0d_tensor_as_scalar_and_keeps_the_coded_shape(tmp_path, capsys):
    path = tmp_path / "s.nnr"
    path.write_bytes(nnc.encode({"step": np.array(3.5, np.float32), "w": np.ones((4, 4), np.float32)}))
    code, out, _ = cli(capsys, "info", path)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if line.split()}
    assert rows["step"][1] == "scalar" and rows["w"][1] == "4x4"
    info = {t["name"]: t for t in stream_info(path)["tensors"]}
    assert info["step"]["original_shape"] == [] and info["step"]["shape"] == [1]
    assert info["w"]["original_shape"] == info["w"]["shape"] == [4, 4]


def test_info_of_a_stream_without_weights_has_no_bits_per_weight(tmp_path, capsys):
    path = tmp_path / "empty.nnr"
    path.write_bytes(nnc.encode({"none": np.zeros((0, 3), np.float32)}))
    code, out, _ = cli(capsys, "info", path)
    assert code == 0 and "bits/weight" not in out.splitlines()[-1] and "800" not in out
    assert stream_info(path)["bits_per_weight"] is None


def test_decoder_of_a_missing_file_raises_file_not_found(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        nnc.Decoder(tmp_path / "missing.nnr")
    with pytest.raises(FileNotFoundError):
        nnc.decode(str(tmp_path / "missing.nnr"))
    code, _, err = cli(capsys, "info", tmp_path / "missing.nnr")
    assert_refused(code, err, tmp_path / "missing.nnr")


def test_the_cli_in_a_subprocess_gives_one_line_and_status_1(model, tmp_path):
    before = model.read_bytes()
    code, out, err = run_cli("encode", model, "-o", model)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and str(model) in err
    assert model.read_bytes() == before


# -- third-party streams in the suite ---------------------------------------------------------------------

SHARED_VECTORS = REPO.parent.parent / "shared" / "vectors"
if not SHARED_VECTORS.exists():
    SHARED_VECTORS = Path("/work/shared/vectors")


def _third_party():
    manifest = json.loads((REPO / "conformance" / "manifest.json").read_text())
    return [e for e in manifest["streams"] if e["group"] == "third-party"]


def test_the_suite_carries_nncodecs_streams_with_producer_and_options():
    entries = _third_party()
    assert len(entries) == 49
    assert {e["producer"] for e in entries} == {"NNCodec 0.3.1", "NNCodec 2.1.3"}
    assert {e["profile"] for e in entries} == {0, 1}
    assert sorted(e["name"] for e in entries if e.get("wrong_entry_points")) == ["e1_kb_01_block_so1",
                                                                                 "e1_kb_02_block_so3"]
    sequence = [e for e in entries if e.get("sequence", {}).get("id") == "nncodec_e2_inc"]
    assert [e["sequence"]["position"] for e in sequence] == [0, 1, 2, 3]
    for e in entries:
        sheet = json.loads((REPO / "conformance" / e["sheet"]).read_text())
        assert sheet["producer"] == e["producer"] and "options" in sheet and "qp" in sheet["options"]
        assert (REPO / "conformance" / e["file"]).stat().st_size == e["bytes"]


def test_the_third_party_group_verifies_without_the_shared_folder():
    from nnc.verify import format_table, verify_suite

    for decoder in ("nnc", "nnc-random-access"):
        results = verify_suite(REPO / "conformance", decoder, groups=["third-party"])
        assert len(results) == 49 and all(r.passed for r in results), format_table(results)


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="the shared NNC test vectors (../shared/vectors) are absent")
def test_the_third_party_streams_are_the_shared_vectors_byte_for_byte():
    copied = {e["name"]: (REPO / "conformance" / e["file"]).read_bytes() for e in _third_party()}
    originals = {p.stem: p.read_bytes() for p in SHARED_VECTORS.rglob("*.nnr")}
    assert copied == originals


# -- values beyond int32 levels (a batch-norm variance of 1e8 at the weights' qp) -----------------------

def test_values_beyond_int32_levels_are_kept_exactly_not_refused(tmp_path, capsys):
    rng = np.random.default_rng(7)
    values = {"bn.var": np.array([1.0, 9.8e7, 3.0e3], np.float32),
              "w": rng.normal(0, 0.05, (16, 16)).astype(np.float32)}
    result = Encoder(qp=-30).encode(values)
    kept = result.tensors["bn.var"]
    assert kept.payload_type == "RAW_FLOAT" and kept.kept_raw and "int32" in kept.kept_raw
    assert result.tensors["w"].payload_type != "RAW_FLOAT" and result.tensors["w"].kept_raw is None
    assert nnc.decode(result.stream)["bn.var"].tobytes() == values["bn.var"].tobytes()
    # the streaming encoder writes the same stream and reports the tensor
    src = tmp_path / "m.npz"
    src.write_bytes(npz_bytes(values))
    code, _, err = cli(capsys, "encode", src, "-o", tmp_path / "m.nnr", "--qp", "-30")
    assert code == 0, err
    assert "bn.var (values up to 9.8e+07 exceed int32 levels at qp -30)" in err
    assert (tmp_path / "m.nnr").read_bytes() == result.stream
    # asking for coded tensors only keeps the clear refusal
    with pytest.raises(EncodeError, match="overflow int32 levels"):
        Encoder(qp=-30, raw_when_smaller=False).encode(values)


@pytest.mark.parametrize("blocks", [True, "auto"])
def test_a_raw_request_is_kept_exactly_whatever_the_blocks(blocks):
    # a tensor named by raw is stored raw, bit for bit: blocks=True leaves its pair apart
    rng = np.random.default_rng(3)
    values = {"fc.weight": rng.normal(size=(8, 8)).astype(np.float32),
              "fc.bias": rng.normal(size=8).astype(np.float32)}
    result = Encoder(qp=-20, raw=["fc.bias"], blocks=blocks).encode(values)
    assert result.tensors["fc.bias"].payload_type == "RAW_FLOAT" and result.tensors["fc.bias"].kept_raw is None
    assert nnc.decode(result.stream)["fc.bias"].tobytes() == values["fc.bias"].tobytes()
    # a pattern works as a name does, and the weight may be the raw one
    result = Encoder(qp=-20, raw=["*.weight"], blocks=blocks).encode(values)
    assert nnc.decode(result.stream)["fc.weight"].tobytes() == values["fc.weight"].tobytes()


def test_a_block_layout_naming_a_raw_tensor_is_refused():
    values = {"fc.weight": np.full((8, 8), 0.5, np.float32), "fc.bias": np.full(8, 0.25, np.float32)}
    with pytest.raises(EncodeError, match="'fc.bias' is named by raw.*7.6"):
        Encoder(qp=-20, raw=["fc.bias"], blocks={"fc.weight": {"bias": "fc.bias"}}).encode(values)


@pytest.mark.parametrize("values", [np.array([2**64 - 1, 3], np.uint64), np.array([2**32 - 1], np.uint32),
                                    np.array([2**63], np.uint64)])
def test_unsigned_integers_beyond_int32_are_refused_not_wrapped(values):
    # a cast to int64 first wrapped 2**64 - 1 into -1, which fits int32: the stream decoded to -1
    with pytest.raises(EncodeError, match="values outside int32"):
        nnc.encode({"ids": values})
    ok = np.array([0, 2**31 - 1], np.uint32)
    assert nnc.decode(nnc.encode({"ids": ok}))["ids"].tolist() == ok.tolist()


def test_float64_values_beyond_float32_are_refused_not_made_inf():
    # the stream carries float32 steps and raw values: 1e300 became inf with exit status 0
    for values in (np.array([[1e-3, 1e300]]), np.array([[np.nan, -1e39]])):
        with pytest.raises(EncodeError, match="beyond the float32 range"):
            nnc.encode({"w": values}, qp=-30)
    near = np.array([[np.nan, 3e38, 0.1]])        # inf and NaN stay raw, the rest is float32
    back = nnc.decode(nnc.encode({"w": near}, qp=-30))["w"]
    assert np.isnan(back[0, 0]) and back[0, 1] == np.float32(3e38)


def test_a_ragged_nested_list_is_an_encode_error():
    with pytest.raises(EncodeError, match="'w' is not an array"):
        nnc.encode({"w": [[1.0], [2.0, 3.0]]})


def test_the_cli_names_the_model_whose_tensor_cannot_be_encoded(tmp_path, capsys):
    src = tmp_path / "ids.npz"
    src.write_bytes(npz_bytes({"ids": np.array([2**64 - 1, 3], np.uint64)}))
    code, _, err = cli(capsys, "encode", src, "-o", tmp_path / "ids.nnr")
    assert_refused(code, err, f"nnc: error: {src}: integer tensor 'ids' has values outside int32 (from 3 to "
                   f"{2**64 - 1})", "no option carries it exactly")
    assert not (tmp_path / "ids.nnr").exists()


def test_a_pt_tensor_of_a_dtype_numpy_lacks_gives_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fnuz"):
        pytest.skip("this torch has no float8_e4m3fnuz")
    path = tmp_path / "fp8.pt"  # (float8_e4m3fn and float8_e5m2 are read: tests/test_float8.py)
    torch.save({"w": torch.ones(4, 4), "w8": torch.ones(4, 4).to(torch.float8_e4m3fnuz)}, path)
    for argv in (("encode", path, "-o", tmp_path / "x.nnr"), ("compare", path, path)):
        code, _, err = cli(capsys, *argv)          # both readers: a traceback (TypeError) before
        assert_refused(code, err, path, "unsupported dtype float8_e4m3fnuz", "'w8'")
    assert not (tmp_path / "x.nnr").exists()


def test_an_output_that_is_a_folder_names_the_folder_not_a_temporary_file(model, tmp_path, capsys):
    folder = tmp_path / "out"
    (folder / "m.nnr").mkdir(parents=True)  # -o out: the stream goes to out/m.nnr, here a folder
    code, _, err = cli(capsys, "encode", model, "-o", folder)   # said ".out.k3j2x.tmp: Is a directory"
    assert_refused(code, err, folder / "m.nnr", "a folder, not a file")
    assert ".tmp" not in err and list((folder / "m.nnr").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("shape", [[-1, 4], [-2, -2]])
def test_a_safetensors_shape_with_a_negative_dimension_is_refused(tmp_path, capsys, shape):
    # the whole-file reader reshaped [-1, 4] to (1, 4) and compared the file with itself as fine;
    # [-2, -2] has a product that fits its 16 bytes
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "neg.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    for argv in (("encode", path, "-o", tmp_path / "x.nnr"), ("compare", path, path)):
        code, _, err = cli(capsys, *argv)
        assert_refused(code, err, path, "negative dimension")


@pytest.mark.parametrize("shape", [(-1, 4), (-2, -2)])
def test_an_npy_shape_with_a_negative_dimension_is_refused(tmp_path, capsys, shape):
    import io
    import zipfile

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
    member.write(np.ones(8, np.float32).tobytes())
    path = tmp_path / "neg.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", member.getvalue())
    for argv in (("encode", path, "-o", tmp_path / "x.nnr"), ("compare", path, path)):
        code, _, err = cli(capsys, *argv)
        assert_refused(code, err, path, "negative dimension")


@pytest.mark.parametrize("dims, count", [([-1, 4], 8), ([-2, -2], 4)])
def test_an_onnx_initializer_with_a_negative_dimension_is_refused(tmp_path, capsys, dims, count):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    init = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=np.ones(count, np.float32).tobytes())
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "neg.onnx"
    onnx.save(model, path)
    for argv in (("encode", path, "-o", tmp_path / "x.nnr"), ("compare", path, path)):   # compare took [-1, 4]
        code, _, err = cli(capsys, *argv)
        assert_refused(code, err, path, "negative dimension")


def test_the_api_refuses_to_write_over_its_input(model, stream, tmp_path):
    # nnc.encode_model(path, path) wrote the stream over the model (the CLI refused, the API did not)
    before = Path(model).read_bytes()
    with pytest.raises(FileExistsError, match="the output is the model"):
        nnc.encode_model(model, Path(model).parent / "." / Path(model).name)
    assert Path(model).read_bytes() == before
    as_npz = tmp_path / "stream.npz"              # a stream file whose name a model output could take
    as_npz.write_bytes(Path(stream).read_bytes())
    with pytest.raises(FileExistsError, match="the output is the stream"):
        nnc.decode_model(as_npz, as_npz)
    assert as_npz.read_bytes() == Path(stream).read_bytes()


def test_running_out_of_memory_is_one_line(stream, tmp_path, capsys, monkeypatch):
    # `nnc info /dev/zero` read the device whole and ended in a MemoryError traceback
    import nnc.decoder

    def exhausted(data):
        raise MemoryError

    monkeypatch.setattr(nnc.decoder, "read_input", exhausted)
    out = tmp_path / "never.npz"
    for argv in (("info", stream), ("decode", stream, "-o", out)):
        code, _, err = cli(capsys, *argv)
        assert code == 1 and err == f"nnc: error: {stream}: out of memory (an input larger than this machine's " \
                                    "memory?); nothing written\n"
    assert not out.exists()


@pytest.mark.parametrize("recorded, values, message", [
    ("int8", np.array([0.3, 200.7, -1.6], np.float32), "float32 values, not int8"),  # before: decoded as 0, -56, -1
    ("uint8", np.array([300, -5], np.int32), "outside uint8"),                      # before: 44, 251
    ("nonsense", np.ones(3, np.float32), "not a dtype"),                            # before: recorded as it was
    ("U8", np.ones(3, np.float32), "not a dtype"),
    ("float32", np.array([3, 4], np.int32), "int32 values, not float32"),
])
def test_a_dtypes_entry_the_values_cannot_be_restored_to_is_refused(recorded, values, message):
    with pytest.raises(nnc.EncodeError, match=message):
        nnc.encode({"w": values}, dtypes={"w": recorded})


def test_integer_differences_may_leave_the_recorded_range():
    from nnc.decoder import apply_update
    from nnc.encoder import EncoderState

    state, receiver = EncoderState(), nnc.DecoderState()
    held = None
    for values in ([10, 200, 3], [7, 255, 0]):  # uint8 differences -3, 55, -3: added in uint8
        x = np.array(values, np.uint8)
        stream = nnc.Encoder(state=state, differences=True, dtypes={"u": "uint8"}).encode({"u": x}).stream
        update = nnc.decode_model(stream, state=receiver)
        held = update if held is None else apply_update(held, update)
        assert held["u"].dtype == np.uint8 and held["u"].tolist() == values


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_a_state_in_a_missing_folder_is_refused_before_the_output_is_written(model, tmp_path, capsys, command):
    stream = tmp_path / "m.nnr"
    assert cli(capsys, "encode", model, "-o", stream, "-q")[0] == 0
    out = tmp_path / ("keep.nnr" if command == "encode" else "keep.npz")
    out.write_bytes(b"precious")  # before: replaced by the new output, then the state write failed
    args = (model, "-o", out) if command == "encode" else (stream, "-o", out)
    code, _, err = cli(capsys, command, *args, "--state", tmp_path / "nodir" / "s.state")
    assert_refused(code, err, tmp_path / "nodir" / "s.state", "does not exist")
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("option", ["--importance", "--sigmas"])
def test_a_per_tensor_file_naming_another_models_tensor_is_refused(model, tmp_path, capsys, option):
    side = tmp_path / "side.npz"
    side.write_bytes(npz_bytes({"other.weight": np.ones((8, 6), np.float32)}))  # before: ignored, exit 0
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", option, side, "--rdoq")
    assert_refused(code, err, side, "'other.weight' is not a tensor of")
    assert not (tmp_path / "x.nnr").exists()


def test_decode_refuses_a_template_for_an_output_that_is_not_onnx(model, tmp_path, capsys):
    stream = tmp_path / "m.nnr"
    assert cli(capsys, "encode", model, "-o", stream, "-q")[0] == 0
    code, _, err = cli(capsys, "decode", stream, "-o", tmp_path / "x.npz", "--template", model)  # before: ignored
    assert_refused(code, err, "for ONNX output only")
    assert not (tmp_path / "x.npz").exists()


def test_decoding_differences_without_add_to_says_what_was_written(model, tmp_path, capsys):
    for i in range(2):  # (the first stream holds the model itself)
        stream = tmp_path / f"u{i}.nnr"
        assert cli(capsys, "encode", model, "-o", stream, "--state", tmp_path / "tx", "--differences", "-q")[0] == 0
        code, _, err = cli(capsys, "decode", stream, "-o", tmp_path / f"d{i}.npz", "--state", tmp_path / "rx")
        assert ("holds differences" in err) == (i == 1)
    # written as they are, the state file unchanged: before, it moved on without the model, so that the note's own
    # advice (--add-to) then failed as "a replayed update"
    assert code == 0 and "holds differences" in err and "--add-to" in err and "state file" in err and "unchanged" in err
    code, _, err = cli(capsys, "decode", stream, "--add-to", tmp_path / "d0.npz", "-o", tmp_path / "m1.npz",
                       "--state", tmp_path / "rx")
    assert code == 0, err


@pytest.mark.parametrize("options, message", [
    (dict(blocks={"w": "b"}), "a mapping of its parts"),                   # before: ValueError from dict()
    (dict(qp_per_tensor={"w": "a"}), r"qp_per_tensor\['w'\] must be an integer"),
    (dict(qp_per_tensor={"w": -20.5}), "must be an integer, not -20.5"),  # before: truncated to -20
    (dict(lambda_per_tensor={"w": "x"}), "must be a number"),
    (dict(qp_per_tensor=[1]), "must be a mapping"),
])
def test_per_tensor_options_of_the_wrong_type_are_encode_errors(options, message):
    with pytest.raises(nnc.EncodeError, match=message):
        nnc.encode({"w": np.ones((2, 2), np.float32)}, **options)


def test_float64_tensors_stored_raw_are_said_to_be_rounded_to_float32(tmp_path, capsys):
    src = tmp_path / "f64.npz"
    src.write_bytes(npz_bytes({"d": np.array([np.nan, 0.1, 1 / 3]), "e": np.array([0.1, 0.2]), "f": np.ones(3, np.float32)}))
    code, _, err = cli(capsys, "encode", src, "-o", tmp_path / "x.nnr", "--raw", "e", "--raw", "f")
    assert code == 0 and "exactly" not in err  # before: "stored uncompressed (RAW_FLOAT), exactly"
    assert "rounded from float64: d, e" in err


def test_a_search_names_the_entries_it_leaves_out(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    src = tmp_path / "ck.pt"
    torch.save({"model": {"w": torch.ones(4, 4)}, "epoch": 3}, src)
    score = tmp_path / "score.py"
    score.write_text("def score(tensors):\n    return 1.0\n")
    code, _, err = cli(capsys, "encode", src, "-o", tmp_path / "s.nnr", "--search", f"{score}:score",
                       "--time-budget", "2")
    assert code == 0 and "'epoch'" in err or "epoch" in err  # before: no note with --search


def test_encoding_refuses_to_write_over_a_shard_or_the_index_it_reads(tmp_path, capsys):
    import json

    ck = tmp_path / "ck"
    ck.mkdir()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for i, shard in enumerate(shards):
        (ck / shard).write_bytes(safetensors_bytes({f"t{i}": np.full((4, 4), i, np.float32)}))
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"t0": shards[0], "t1": shards[1]}}))
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    for target in [*shards, "model.safetensors.index.json"]:  # before: the shard replaced by the stream, exit 0
        code, _, err = cli(capsys, "encode", ck, "-o", ck / target)
        assert_refused(code, err, ck / target, "refusing to overwrite an input")
        with pytest.raises(FileExistsError):
            nnc.encode_model(ck, ck / target)
        with pytest.raises(FileExistsError):
            nnc.models.encode_model_to(ck, ck / target)
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before


def test_encoding_refuses_to_write_over_onnx_external_data(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])], initializer=[w])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), model, save_as_external_data=True, location="m.data", size_threshold=0)
    data = (tmp_path / "m.data").read_bytes()
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "m.data")
    assert_refused(code, err, "refusing to overwrite an input")
    assert (tmp_path / "m.data").read_bytes() == data


@pytest.mark.parametrize("argv, message", [
    (("--target-snr", "1e9"), "target_snr_db must be from -100 to 300"),  # before: OverflowError traceback
    (("--target-snr", "nan"), "argument --target-snr: expected"),          # before: accepted
    (("--lambda", "nan"), "argument --lambda: expected"),                  # before: accepted
])
def test_out_of_range_numbers_are_one_line_errors(model, tmp_path, capsys, argv, message):
    if message.startswith("argument"):  # a usage error (exit status 2), naming the option
        with pytest.raises(SystemExit) as exc:
            cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", *argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    else:
        code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", *argv)
        assert_refused(code, err, model, message)
    assert not (tmp_path / "x.nnr").exists()


def test_compare_reads_checkpoint_folders_and_indexes_as_encode_does(tmp_path, capsys):
    import json

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "a.safetensors").write_bytes(safetensors_bytes({"t": np.ones((4, 4), np.float32)}))
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"t": "a.safetensors"}}))
    assert cli(capsys, "encode", ck, "-o", tmp_path / "m.nnr", "-q")[0] == 0
    for reference in (ck, ck / "model.safetensors.index.json"):  # before: "Is a directory", "unknown model format"
        code, out, _ = cli(capsys, "compare", reference, tmp_path / "m.nnr")
        assert code == 0 and "total" in out


@pytest.mark.parametrize("argv, message", [
    (("--tolerance", "0.01"), "--tolerance is an option of --search"),  # before: accepted and ignored
    (("--workers", "2"), "--workers is an option of --search"),
    (("--time-budget", "5"), "--time-budget is an option of --search"),
    (("--hdsp",), "--hdsp codes updates"),
    (("--no-tca",), "--tca/--no-tca codes updates"),
    (("--profile", "0", "--row-skip"), "--row-skip is a 2nd-edition tool"),
])
def test_options_that_would_do_nothing_are_refused(model, tmp_path, capsys, argv, message):
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", *argv)
    assert_refused(code, err, message, usage=True)
    assert not (tmp_path / "x.nnr").exists()


def test_stream_cut_before_its_topology_unit_is_not_an_empty_model():
    """Before: nnc.decode of a stream cut after its parameter set returned {} (spec 3.5, 15.1 item 48)."""
    stream = nnc.encode({"w": np.ones((3, 4), np.float32)})
    topology = next(u for u in C.iter_units(stream) if u.type == C.NNR_TPL)
    with pytest.raises(nnc.TruncatedError, match="no NDU"):
        nnc.decode(stream[: topology.offset])
    assert list(nnc.decode(nnc.encode({}))) == []  # an empty model announces its zero tensors


@pytest.mark.parametrize("shape", [(65536, 0, 65536), (2**33, 0)])
def test_an_empty_tensor_the_decoder_would_refuse_is_not_encoded(shape, tmp_path, capsys):
    """Before: encoded, exit 0, into a stream the decoder's default limits refuse (spec A.7, 15.2)."""
    tensors = {"e": np.zeros(shape, np.float32), "w": np.ones((4, 4), np.float32)}
    with pytest.raises(EncodeError, match="'e' is empty"):
        nnc.encode(tensors)
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes(tensors))
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "m.nnr")
    assert_refused(code, err, model, "'e' is empty")
    assert not (tmp_path / "m.nnr").exists()
    small = (2**20, 0, 2047)  # just inside the limit: encoded and decoded
    assert nnc.decode(nnc.encode({"e": np.zeros(small, np.float32)}))["e"].shape == small


def test_compare_names_the_model_entries_it_does_not_compare(tmp_path, capsys):
    """Before: an ONNX model's sparse initializer was left out of the comparison without a word."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5, 2.5], np.float32), "s"),
                                       numpy_helper.from_array(np.array([1, 5], np.int64), "s_idx"), [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    graph = helper.make_graph([helper.make_node("Add", ["w", "s"], ["y"])], "g", [], [y], [w],
                              sparse_initializer=[sparse])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), model)
    assert cli(capsys, "encode", model, "-o", tmp_path / "m.nnr", "-q")[0] == 0
    code, _, err = cli(capsys, "compare", model, tmp_path / "m.nnr")
    assert code == 0 and "not compared" in err and "s (a sparse initializer)" in err


def test_encode_with_a_state_keeps_bfloat16_and_float8_dtypes(tmp_path, capsys):
    """Before: `nnc encode --state` coded a bfloat16 / float8 file as float32 (the dtypes were not recorded, float8
    was quantised, not coded exactly), exit 0."""
    rng = np.random.default_rng(0)
    bias = np.array([0.5, -0.25, 1, 2], np.float32)
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes({"b.weight": rng.normal(size=(8, 8)).astype(np.float32), "b.bias": bias},
                                        dtypes={"b.weight": "bfloat16", "b.bias": "float8_e4m3fn"}))
    assert cli(capsys, "encode", model, "-o", tmp_path / "s.nnr", "--qp", "-30", "--state", tmp_path / "tx",
               "-q")[0] == 0
    assert cli(capsys, "decode", tmp_path / "s.nnr", "-o", tmp_path / "r.safetensors", "-q")[0] == 0
    tensors, dtypes = read_model(tmp_path / "r.safetensors")
    assert dtypes == {"b.weight": "bfloat16", "b.bias": "float8_e4m3fn"}
    assert np.array_equal(tensors["b.bias"], bias)


def test_values_that_round_beyond_their_dtype_are_stored_exactly(tmp_path, capsys):
    """Before: a float16 65504 at a coarse qp reconstructed as 65536 and decoded as inf (exit 0; `nnc encode` wrote
    the stream, then crashed in its summary); a float32 3.4e38 likewise."""
    mask = np.array([-65504, 0, 0, -65504] * 4, np.float16)
    assert np.array_equal(nnc.decode(nnc.encode({"mask": mask}, qp=24))["mask"], mask)
    big = np.array([3.4e38, 1], np.float32)
    assert np.array_equal(nnc.decode(nnc.encode({"w": big}, qp=500, dq=False))["w"], big)
    with pytest.raises(EncodeError, match="round beyond the float16 range"):  # (whole numbers not coded exactly)
        nnc.encode({"mask": mask}, qp=24, raw_when_smaller=False, lossless_int=False)
    model = tmp_path / "f16.safetensors"
    model.write_bytes(safetensors_bytes({"mask": mask, "w": np.linspace(-1, 1, 16).astype(np.float16)}))
    assert cli(capsys, "encode", model, "-o", tmp_path / "f.nnr", "--qp", "24")[0] == 0
    assert cli(capsys, "decode", tmp_path / "f.nnr", "-o", tmp_path / "d.safetensors", "-q")[0] == 0
    assert np.array_equal(read_model(tmp_path / "d.safetensors")[0]["mask"], mask)


@pytest.mark.parametrize("argv, message", [
    (("--search", "nnc.demo:mlp_accuracy", "--tensor-qp", "fc*=-30"), "--tensor-qp would be ignored: --search"),
    (("--search", "nnc.demo:mlp_accuracy", "--rdoq"), "--rdoq would be ignored: --search"),
    (("--target-snr", "30", "--qp", "-10"), "--qp would be ignored: --target-snr"),
    (("--target-snr", "30", "--nonweight-qp", "-60"), "--nonweight-qp would be ignored"),
    (("--dcv1-s", "3",), "--dcv1-s scales the steps of --sigmas"),
    (("--search", "nnc.demo:mlp_accuracy", "--time-budget", "nan"), "--time-budget must be a positive number"),
    (("--search", "nnc.demo:mlp_accuracy", "--time-budget", "0"), "--time-budget must be a positive number"),
])
def test_options_another_option_would_override_are_refused(model, tmp_path, capsys, argv, message):
    """Before: read, checked, then ignored, exit 0 (the stream as without them)."""
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", *argv)
    assert_refused(code, err, message, usage=True)
    assert not (tmp_path / "x.nnr").exists()


def test_importance_without_what_it_weights_is_refused(model, tmp_path, capsys):
    side = tmp_path / "imp.npz"
    tensors, _ = read_model(model)
    side.write_bytes(npz_bytes({k: np.ones_like(v, dtype=np.float32) for k, v in tensors.items()}))
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", "--importance", side)
    assert_refused(code, err, "--importance weights the error of --rdoq or --target-snr", usage=True)


@pytest.mark.parametrize("option", ["--importance", "--sigmas"])
def test_a_per_tensor_file_of_another_shape_or_infinite_sigmas_is_refused(model, tmp_path, capsys, option):
    """Before: only the element count was checked; an infinite sigma zeroed the tensor, exit 0."""
    tensors, _ = read_model(model)
    name, value = next((k, v) for k, v in tensors.items() if np.ndim(v) == 2 and v.shape[0] != v.shape[1])
    side = tmp_path / "side.npz"
    side.write_bytes(npz_bytes({name: np.ones(value.shape[::-1], np.float32)}))
    code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", option, side, "--rdoq")
    assert_refused(code, err, side, "has shape")
    if option == "--sigmas":
        side.write_bytes(npz_bytes({name: np.full(value.shape, np.inf, np.float32)}))
        code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", option, side)
        assert_refused(code, err, side, "must be finite and positive")


def test_a_metric_that_raises_or_exits_is_one_line(model, tmp_path, capsys):
    """Before: a traceback; a metric that called sys.exit(0) ended nnc with exit 0 and nothing written."""
    import sys as _sys

    script = tmp_path / "metric_probe.py"
    script.write_text("def raises(t):\n    raise RuntimeError('boom')\ndef exits(t):\n    raise SystemExit(0)\n")
    for func, words in (("raises", "raised RuntimeError: boom"), ("exits", "exited (status 0)")):
        code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", "--search", f"{script}:{func}")
        assert_refused(code, err, words)
        assert not (tmp_path / "x.nnr").exists()
    _sys.modules.pop("nnc_user_evaluation", None)


def test_a_tensor_qp_pattern_that_never_applies_is_refused(model, tmp_path, capsys):
    out = tmp_path / "x.nnr"
    # every tensor 'fc.weight' matches is taken by the earlier 'fc.*': it would be ignored
    code, _, err = cli(capsys, "encode", model, "-o", out, "--tensor-qp", "fc.*=-30", "--tensor-qp", "fc.weight=-20")
    assert_refused(code, err, "'fc.weight'", "'fc.*'", "never apply")
    assert not out.exists()
    code, _, err = cli(capsys, "encode", model, "-o", out, "--tensor-lambda", "*=0.1", "--tensor-lambda", "fc.bias=1",
                       "--rdoq")
    assert_refused(code, err, "'fc.bias'", "never apply")
    # a raw tensor has no qp or lambda: before, --raw won silently over them
    for option in ("--tensor-qp", "--tensor-lambda"):
        code, _, err = cli(capsys, "encode", model, "-o", out, "--raw", "fc.weight", option, "fc.weight=1", "--rdoq")
        assert_refused(code, err, "'fc.weight'", "--raw", "never apply")
    assert not out.exists()
    # the same pattern twice with two values is a usage error; in the other order both apply
    with pytest.raises(SystemExit) as exc:
        cli(capsys, "encode", model, "-o", out, "--tensor-qp", "fc.bias=-30", "--tensor-qp", "fc.bias=-20")
    assert exc.value.code == 2 and "given twice" in capsys.readouterr().err
    code, _, err = cli(capsys, "encode", model, "-o", out, "--tensor-qp", "fc.weight=-20", "--tensor-qp", "fc.*=-30",
                       "--no-blocks")
    assert code == 0, err
    qps = {t["name"]: t["qp"] for t in stream_info(out)["tensors"]}
    assert qps == {"fc.weight": -20, "fc.bias": -30}


def test_an_explicit_tensor_qp_glob_wins_over_the_allocation(model, tmp_path, capsys):
    out = tmp_path / "x.nnr"
    code, _, err = cli(capsys, "encode", model, "-o", out, "--target-snr", "30", "--tensor-qp", "fc.w*=-44",
                       "--no-blocks")
    assert code == 0, err
    qps = {t["name"]: t["qp"] for t in stream_info(out)["tensors"]}
    assert qps["fc.weight"] == -44 and qps["fc.bias"] != -44
    # a qp too coarse for the target on its own: refused, not a file missing the target (exit 0, before)
    code, _, err = cli(capsys, "encode", model, "-o", out, "--target-snr", "30", "--tensor-qp", "fc.w*=-12",
                       "--no-blocks")
    assert_refused(code, err, "fc.weight", "alone exceed the target")


def test_the_scales_of_a_quantised_model_are_kept_exact(tmp_path, capsys):
    """Before: per-channel scales of 1e-4 to 3e-3 were quantised at the weights' step: half of them decoded as 0,
    zeroing their channels, with exit status 0 and no warning."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    scales = np.linspace(1e-4, 3e-3, 16).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
         helper.make_node("QLinearConv", ["xq", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"], ["yq"]),
         helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])],
        [numpy_helper.from_array(np.array(0.0237, np.float32), "x_scale"),
         numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
         numpy_helper.from_array(rng.integers(-127, 127, (16, 3, 3, 3)).astype(np.int8), "w"),
         numpy_helper.from_array(scales, "w_scale"), numpy_helper.from_array(np.zeros(16, np.int8), "w_zp"),
         numpy_helper.from_array(np.array(0.002, np.float32), "y_scale"),
         numpy_helper.from_array(np.array(128, np.uint8), "y_zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "q.onnx")
    code, _, err = cli(capsys, "encode", tmp_path / "q.onnx", "-o", tmp_path / "q.nnr")
    assert code == 0 and "3 quantisation parameter(s)" in err and "w_scale" in err
    decoded = nnc.decode_model((tmp_path / "q.nnr").read_bytes())
    assert np.array_equal(decoded["w_scale"], scales) and float(decoded["x_scale"]) == np.float32(0.0237)

    # a GPTQ-style checkpoint: its fp16 scales by name; an explicit --tensor-qp still quantises them
    gptq = tmp_path / "g.safetensors"
    gptq.write_bytes(safetensors_bytes({"l.qweight": rng.integers(0, 2**31 - 1, (8, 32)).astype(np.int32),
                                        "l.scales": (rng.random((2, 32)) * 3e-3).astype(np.float16),
                                        "l.weight": rng.normal(0, 0.05, (32, 32)).astype(np.float32)}))
    code, _, err = cli(capsys, "encode", gptq, "-o", tmp_path / "g.nnr")
    assert code == 0 and "l.scales" in err
    back = nnc.decode_model((tmp_path / "g.nnr").read_bytes())
    assert np.array_equal(back["l.scales"], formats.read_model(gptq)[0]["l.scales"]) and back["l.scales"].dtype == np.float16
    assert not np.array_equal(back["l.weight"], formats.read_model(gptq)[0]["l.weight"])  # weights still quantised
    code, _, err = cli(capsys, "encode", gptq, "-o", tmp_path / "g2.nnr", "--tensor-qp", "l.scales=-36")
    assert code == 0 and "quantisation parameter" not in err
    assert stream_info(tmp_path / "g2.nnr")["tensors"][1]["qp"] == -36


def test_a_tensor_that_keeps_little_of_its_signal_is_warned_of(tmp_path, capsys):
    """Before: only a tensor that kept none of its signal (SNR <= 0 dB) was named; one at 4 dB passed silently."""
    rng = np.random.default_rng(1)
    path = tmp_path / "m.npz"
    path.write_bytes(npz_bytes({"gamma": rng.normal(0, 1e-3, 64).astype(np.float32),  # (mixed signs: not kept raw)
                                "w": rng.normal(0, 0.05, (64, 64)).astype(np.float32)}))
    off = ("--nonweight-snr", "0")  # (the floor of 1-D tensors off: on, gamma keeps 20 dB; test_nonweight_floor.py)
    code, out, err = cli(capsys, "encode", path, "-o", tmp_path / "m.nnr", *off)
    assert code == 0 and "kept little of their signal" in err and "gamma (" in err and "w (" not in err
    code, out, _ = cli(capsys, "encode", path, "-o", tmp_path / "m.nnr", "--json", *off)
    report = json.loads(out)
    assert set(report["coarse"]) == {"gamma"} and report["coarse"]["gamma"] < 10
    code, _, err = cli(capsys, "encode", path, "-o", tmp_path / "m.nnr", "--raw", "gamma", *off)
    assert code == 0 and "little of their signal" not in err
    code, _, err = cli(capsys, "encode", path, "-o", tmp_path / "m.nnr")
    assert code == 0 and "little of their signal" not in err


def test_the_python_functions_warn_of_a_tensor_that_keeps_little_of_its_signal(tmp_path):
    """Before: only the command line said so (a BatchNorm running mean at the weights' step, 3 dB); nnc.encode and
    nnc.encode_model passed it silently."""
    import warnings

    rng = np.random.default_rng(2)
    model = {"conv.weight": rng.normal(0, 0.1, (16, 8, 3, 3)).astype(np.float32),
             "bn.running_mean": (1e-3 + rng.normal(0, 5e-4, 16)).astype(np.float32)}
    off = {"nonweight_snr_db": 0}  # (the floor of 1-D tensors off: on, the mean keeps 20 dB; test_nonweight_floor.py)
    with pytest.warns(nnc.PrecisionWarning, match=r"kept little of their signal.*'bn.running_mean' \(\d"):
        nnc.encode(model, **off)
    path = tmp_path / "m.npz"
    path.write_bytes(npz_bytes(model))
    with pytest.warns(nnc.PrecisionWarning, match="kept little.*'bn.running_mean'"):
        nnc.encode_model(str(path), **off)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnc.encode(model, raw=["bn.*"])                           # kept exactly: nothing to say
        nnc.encode({"w": model["conv.weight"]})                   # a weight at its step keeps its signal


@pytest.mark.parametrize("command", ["encode", "decode-file", "decode-folder"])
def test_sigterm_leaves_no_partial_output(tmp_path, command):
    """Before: SIGTERM (kill, timeout, a batch scheduler) ended nnc where it stood, leaving its temporary file
    (a 200 MB .tmp beside the output, or a new folder holding one). The process here signals itself just before
    the output is renamed into place, when the temporary file is whole."""
    model = tmp_path / "m.npz"
    model.write_bytes(npz_bytes({"w": np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)}))
    stream = tmp_path / "m.nnr"
    assert main(["encode", str(model), "-o", str(stream), "-q"]) == 0
    args = {"encode": ["encode", str(model), "-o", str(tmp_path / "out.nnr")],
            "decode-file": ["decode", str(stream), "-o", str(tmp_path / "out.safetensors")],
            "decode-folder": ["decode", str(stream), "-o", str(tmp_path / "new") + os.sep]}[command]
    script = (
        "import os, signal, sys\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        "    real(fd)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "os.fsync = fsync\n"
        "from nnc.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip() == "nnc: error: terminated (SIGTERM)", r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary file, no new folder


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    """Before: SIGKILL (the out-of-memory killer, kill -9) left the whole temporary output beside the target, hidden,
    for good. Now the next write of the same target removes the temporary files of its writers that no longer run
    (this machine's, unchanged for 10 minutes); those of running writers, other machines and other targets stay."""
    model = tmp_path / "m.npz"
    model.write_bytes(npz_bytes({"w": np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)}))
    script = (
        "import os, signal, sys\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.fsync = fsync\n"
        "from nnc.cli import main\n"
        f"sys.exit(main(['encode', {str(model)!r}, '-o', {str(tmp_path / 'out.nnr')!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.nnr.")]
    assert len(left) == 1 and left[0].stat().st_size > 1000        # the killed writer's whole stream, hidden
    from nnc._files import _owner_tag

    tag = _owner_tag()
    running = tmp_path / f".out.nnr.{tag}keep.tmp"                     # this process's: it runs
    elsewhere = tmp_path / f".out.nnr.nnc_00000000_{99999}_x.tmp"     # another machine's
    other = tmp_path / f".other.nnr.{tag.replace(str(os.getpid()), '999999999')}x.tmp"   # another target's
    for p in (running, elsewhere, other):
        p.write_bytes(b"x")
    old = time.time() - 3600
    for p in (*left, running, elsewhere, other):
        os.utime(p, (old, old))
    assert main(["encode", str(model), "-o", str(tmp_path / "out.nnr"), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", "out.nnr", running.name, elsewhere.name,
                                                                 other.name])
    recent = tmp_path / f".out.nnr.{tag.replace(str(os.getpid()), '999999999')}y.tmp"   # ended, but just now
    recent.write_bytes(b"x")
    assert main(["encode", str(model), "-o", str(tmp_path / "out.nnr"), "-q"]) == 0
    assert recent.exists()


def test_a_dash_for_a_file_is_a_usage_error(model, tmp_path, capsys, monkeypatch):
    """Before: `-o -` wrote a file named '-' in the current folder, exit 0 (and `nnc encode -` then read it)."""
    monkeypatch.chdir(tmp_path)
    for args in (["encode", model, "-o", "-"], ["decode", "-", "-o", "x.npz"], ["encode", "-", "-o", "x.nnr"],
                 ["compare", model, "-"], ["compare", "-", model]):  # compare: was "cannot read '-'", exit 1
        with pytest.raises(SystemExit) as exc:
            cli(capsys, *args)
        assert exc.value.code == 2 and "cannot be '-'" in capsys.readouterr().err
    assert not (tmp_path / "-").exists() and not (tmp_path / "x.nnr").exists()


def test_a_file_that_is_no_stream_is_called_so(tmp_path, capsys):
    """Before: random bytes gave 'unit of 721548877 bytes runs past the end of the stream' alone."""
    path = tmp_path / "garbage.bin"
    path.write_bytes(bytes(range(7, 250)) * 4)
    for command in (["info", path], ["decode", path, "-o", tmp_path / "x.safetensors"]):
        code, _, err = cli(capsys, *command)
        assert_refused(code, err, path, "not an NNC stream", "byte offset 0")
    assert not (tmp_path / "x.safetensors").exists()
    cut = tmp_path / "cut.nnr"  # a stream cut short is still called what it is
    cut.write_bytes(nnc.encode({"w": np.ones((8, 8), np.float32)})[:30])
    code, _, err = cli(capsys, "info", cut)
    assert code == 1 and "not an NNC stream" not in err


def test_names_a_stream_cannot_hold_and_forced_blocks_say_what_is_wrong():
    """Before: 'cannot build Struct: ...' without the tensor's name, and 'must share one dtype' for a pair that
    blocks=True formed itself."""
    for name, words in (("a\udc80", "not valid UTF-8"), ("n" * 70000, "takes 70000 bytes")):
        with pytest.raises(EncodeError, match=words):
            nnc.encode({name: np.ones(3, np.float32)})
    pair = {"fc.weight": np.zeros((4, 3), np.float64), "fc.bias": np.zeros(4, np.float32)}
    with pytest.raises(EncodeError, match="'fc.bias' and 'fc.weight' have different dtypes.*blocks='auto'"):
        nnc.encode(pair, blocks=True)
    assert set(nnc.decode(nnc.encode(pair))) == {"fc.weight", "fc.bias"}


def test_importance_must_be_finite_and_non_negative(model, tmp_path, capsys):
    """Before: an inf passed (`f >= 0`), and under --rdoq every weight of the tensor decoded as zero, exit 0."""
    for bad in (np.inf, np.nan, -1.0):
        f = np.ones((8, 6), np.float32)
        f[0, 0] = bad
        imp = tmp_path / "imp.npz"
        imp.write_bytes(npz_bytes({"fc.weight": f}))
        for extra in (["--rdoq"], ["--target-snr", "20"]):
            code, _, err = cli(capsys, "encode", model, "-o", tmp_path / "x.nnr", "--importance", imp, *extra)
            assert_refused(code, err, imp, "'fc.weight'", "finite and >= 0")
        with pytest.raises(EncodeError, match="finite and >= 0"):
            nnc.encode({"fc.weight": np.ones((8, 6), np.float32)}, rdoq_lambda=0.1, importance={"fc.weight": f})
    assert not (tmp_path / "x.nnr").exists()


def test_compare_sees_narrow_dtypes_and_tensors_only_in_other(tmp_path, capsys):
    """Before: bfloat16 against float32 compared as 'float32 against float32', exit 0; a tensor only in OTHER was
    a note (exit 0) while one only in REFERENCE failed; --min-snr nan was accepted; 0-d against (1, 1) was one
    shape."""
    w = np.linspace(-1, 1, 8, dtype=np.float32)  # values bfloat16 holds exactly
    formats.write_model(tmp_path / "bf.safetensors", {"w": w}, {"w": "bfloat16"})
    formats.write_model(tmp_path / "f32.safetensors", {"w": w})
    formats.write_model(tmp_path / "more.safetensors", {"w": w, "extra": np.ones(2, np.float32)})
    formats.write_model(tmp_path / "s0.npz", {"s": np.array(1.0, np.float32)})
    formats.write_model(tmp_path / "s11.npz", {"s": np.ones((1, 1), np.float32)})
    for a, b, words in (("bf", "f32", "dtype bfloat16 against float32"),
                        ("f32", "more", "1 tensor(s) only in"),
                        ("more", "f32", "1 tensor(s) missing")):
        code, _, err = cli(capsys, "compare", tmp_path / f"{a}.safetensors", tmp_path / f"{b}.safetensors", "-q")
        assert code == 1 and words in err, (a, b, err)
    code, _, err = cli(capsys, "compare", tmp_path / "s0.npz", tmp_path / "s11.npz", "-q")
    assert code == 1 and "shape () against (1, 1)" in err
    with pytest.raises(SystemExit) as exc:
        cli(capsys, "compare", tmp_path / "f32.safetensors", tmp_path / "f32.safetensors", "--min-snr", "nan")
    assert exc.value.code == 2
    stream = tmp_path / "bf.nnr"
    assert main(["encode", str(tmp_path / "bf.safetensors"), "-o", str(stream), "-q"]) == 0
    code, _, err = cli(capsys, "compare", tmp_path / "bf.safetensors", stream, "-q")
    assert code == 0, err  # a stream of a bfloat16 model decodes to bfloat16


def test_the_searchs_warning_is_one_line_and_quiet_with_q(model, tmp_path, capsys):
    """Before: 'cli.py:714: UserWarning ...' with the source line, printed even with -q."""
    metric = tmp_path / "metric.py"
    metric.write_text("import numpy as np\ndef per_sample(t):\n    return np.ones(10)\n")
    args = ["encode", model, "-o", tmp_path / "s.nnr", "--search", f"{metric}:per_sample", "--tolerance", "0.05",
            "--time-budget", "1"]
    code, _, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if "samples moves the score" in line]
    assert code == 0 and len(lines) == 1 and lines[0].startswith("nnc: warning: one of the 10 samples")
    code, _, err = cli(capsys, *args, "-q")
    assert code == 0 and "samples moves the score" not in err


def test_decoding_bfloat16_to_npz_says_it_is_float32(tmp_path, capsys):
    formats.write_model(tmp_path / "b.safetensors", {"w": np.ones((4, 4), np.float32)}, {"w": "bfloat16"})
    assert main(["encode", str(tmp_path / "b.safetensors"), "-o", str(tmp_path / "b.nnr"), "-q"]) == 0
    capsys.readouterr()
    code, _, err = cli(capsys, "decode", tmp_path / "b.nnr", "-o", tmp_path / "b.npz")
    assert code == 0 and ".npz has no bfloat16 or float8: w written as float32" in err
    code, _, err = cli(capsys, "decode", tmp_path / "b.nnr", "-o", tmp_path / "b2.safetensors")
    assert code == 0 and "npz" not in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_an_output_that_is_a_pipe_or_a_device_is_not_replaced(tmp_path, capsys):
    """Before: `-o /dev/null` (as root) or `-o a-fifo` renamed the finished file over the device or pipe, exit 0."""
    model = tmp_path / "m.npz"
    model.write_bytes(npz_bytes({"w": np.ones((4, 4), np.float32)}))
    fifo = tmp_path / "pipe.nnr"
    os.mkfifo(fifo)
    capsys.readouterr()
    assert main(["encode", str(model), "-o", str(fifo), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(fifo) in err[0] and "not a regular file" in err[0]
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "pipe.nnr"]


def test_an_output_name_of_250_bytes_is_written(tmp_path):
    """Before: the temporary file's name (the output's with a prefix and suffix) passed the 255 bytes a folder
    entry holds, and a legal output name failed with 'File name too long'."""
    model = tmp_path / "m.npz"
    model.write_bytes(npz_bytes({"w": np.ones((4, 4), np.float32)}))
    out = tmp_path / ("s" * 246 + ".nnr")
    assert main(["encode", str(model), "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", out.name])


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_a_state_file_that_cannot_be_written_leaves_no_output(tmp_path, capsys, monkeypatch, command):
    """Before: --state was saved after the output was written, so a state that could not be written (a folder
    without room or rights, a name too long) failed with the output changed and the state not."""
    from nnc import _files

    model = tmp_path / "m.npz"
    model.write_bytes(npz_bytes({"w": np.ones((4, 4), np.float32)}))
    stream = tmp_path / "m.nnr"
    assert main(["encode", str(model), "-o", str(stream), "-q"]) == 0
    beside = _files.temp_file_beside

    def refusing(path, suffix=".tmp"):
        if str(path).endswith(".state"):
            raise OSError(28, "cannot write there (No space left on device)", str(path))
        return beside(path, suffix)

    monkeypatch.setattr(_files, "temp_file_beside", refusing)
    out = tmp_path / ("again.nnr" if command == "encode" else "out.npz")
    source = model if command == "encode" else stream
    capsys.readouterr()
    assert main([command, str(source), "-o", str(out), "--state", str(tmp_path / "x.state"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.state" in err[0], err
    assert not out.exists() and not (tmp_path / "x.state").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nnr", "m.npz"]


def test_integer_tensors_coded_lossily_stay_decodable_and_are_warned_about(tmp_path, capsys):
    """--no-lossless-int. Before: a uint8 255 reconstructing as 256 at a coarse qp gave a stream every decoder
    refuses (exit 0 at encoding), and a bool mask rounded to all False went unmentioned."""
    model = tmp_path / "m.npz"
    model.write_bytes(npz_bytes({"u8": np.array([0, 10, 255, 200], np.uint8), "mask": np.array([1, 0, 1], bool),
                                 "w": np.linspace(-1, 1, 200, dtype=np.float32).reshape(20, 10)}))
    out, back = tmp_path / "m.nnr", tmp_path / "back.npz"
    capsys.readouterr()
    assert main(["encode", str(model), "-o", str(out), "--no-lossless-int", "--qp", "20"]) == 0
    err = capsys.readouterr().err
    assert "u8" in err and "beyond uint8" in err  # stored raw: exact
    assert "kept none of their signal" in err and "mask" in err.split("kept none of their signal")[1]
    assert main(["decode", str(out), "-o", str(back), "-q"]) == 0
    tensors, _ = read_model(back)
    assert tensors["u8"].tolist() == [0, 10, 255, 200] and tensors["u8"].dtype == np.uint8


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 on this platform")
def test_a_long_double_tensor_is_refused_on_every_path(tmp_path, capsys):
    """Before: from an .npz on the command line and from a mapping it was coded as float32 and restored as float32,
    exit 0 (the path API refused it)."""
    model = tmp_path / "m.npz"
    np.savez(model, l=np.ones(3, np.longdouble))
    assert main(["encode", str(model), "-o", str(tmp_path / "m.nnr")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "float64" in err[0] and str(model) in err[0]
    assert not (tmp_path / "m.nnr").exists()
    with pytest.raises(EncodeError, match="long double"):
        nnc.encode_model({"a": np.ones(3, np.longdouble)})


def test_the_api_warns_of_tensors_that_keep_none_of_their_signal(tmp_path):
    """A learning rate in a mapping, coded at the default qp, decoded as 0.0 without a word (the CLI warned)."""
    import warnings

    # (a learning rate alone, one-signed, is now stored exactly: tests/test_exact_values.py; a tiny mixed-sign
    # matrix still decodes as zeros; a vector, also shaped (1, n), keeps 20 dB: tests/test_nonweight_floor.py)
    model = {"drift": np.array([[3e-4, -2e-4], [-1e-4, 2e-4]]), "w": np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)}
    for call in (lambda: nnc.encode(model), lambda: nnc.encode_model(model, tmp_path / "m.nnr")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stream = call()
        assert [type(w.message) for w in caught] == [nnc.PrecisionWarning]
        assert "'drift'" in str(caught[0].message) and "'w'" not in str(caught[0].message)
        assert caught[0].filename == __file__           # the caller's line, not nnc's
        assert not nnc.decode(stream)["drift"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnc.encode(model, qp_per_tensor={"drift": -120})  # kept: no warning
        nnc.encode({"z": np.zeros(3, np.float32)})       # zeros stay zeros


_EDGE_VALUES = {
    "int32": [2**31 - 1, -(2**31), 2**24 + 1, 0, 7],
    "int64": [2**31 - 1, -(2**31), 2**24 + 3, 1],
    "float32": [3.4e38, -3.4e38, 3e38, 1.0, 65500.0, -65519.0],
    "float16": [65504.0, -65504.0, 60000.0, 1.0],
    "float64": [1e30, -3.4e38, 1.0, 2.0**-40],
}


@settings(max_examples=120, deadline=None)
@given(dtype=st.sampled_from(sorted(_EDGE_VALUES)), data=st.data(), qp=st.integers(-40, 520),
       lossless_int=st.booleans(), codebook=st.sampled_from([False, True, "auto"]), raw=st.booleans(),
       raw_when_smaller=st.booleans(), as_float16=st.booleans(), output_format=st.sampled_from([None, 8, 9]))
def test_every_stream_the_encoder_writes_its_decoder_restores(dtype, data, qp, lossless_int, codebook, raw,
                                                              raw_when_smaller, as_float16, output_format):
    """The encoder refuses (EncodeError) or writes a stream that decode_model restores, its values finite where the
    input's were and in the recorded dtype. Before: int32 near 2^31 stored RAW_FLOAT (--no-lossless-int), codebook
    values at a coarse qp beyond float32, float32 values recorded as float16 rounded past 65504, and output format
    float16 for 1e6 were each written, exit 0, and refused or decoded as inf."""
    values = data.draw(st.lists(st.sampled_from(_EDGE_VALUES[dtype]), min_size=1, max_size=12))
    x = np.array(values, dtype=dtype).reshape(1, -1)
    options = dict(qp=qp, lossless_int=lossless_int, codebook=codebook, raw_when_smaller=raw_when_smaller,
                   raw=["w"] if raw else [])
    if as_float16 and dtype == "float32":
        options["dtypes"] = {"w": "float16"}
    if output_format is not None:
        options.update(output_formats={"w": output_format}, profile=1)
    try:
        stream = nnc.encode({"w": x}, **options)
    except EncodeError:
        return
    restored = nnc.decode_model(stream)["w"]
    assert restored.shape == x.shape
    if output_format is None:
        assert restored.dtype == np.dtype(options.get("dtypes", {}).get("w", dtype))
    assert np.isfinite(restored.astype(np.float64)).all()
    if x.dtype.kind in "iu" and lossless_int:
        assert restored.tolist() == x.tolist()


def test_float64_tensors_that_keep_only_float32_precision_are_warned_of():
    """Before: silent (the CLI noted raw float64 values only): a float64 tensor at 2^23 or more steps decoded with
    errors of many steps, and raw= rounded float64 values to float32."""
    import warnings

    big = np.random.default_rng(0).normal(0, 1e5, (64, 64))
    with pytest.warns(nnc.PrecisionWarning, match="1 float64 or lossily coded integer tensor.*float32 precision.*'w'"):
        nnc.encode({"w": big}, dq=False)
    with pytest.warns(nnc.PrecisionWarning, match="float32 precision"):
        nnc.encode({"w": np.array([1 + 2**-40, 123456789.12])}, raw=["w"])
    with pytest.warns(nnc.PrecisionWarning, match="float32 precision"):
        nnc.encode_model({"w": np.array([0.1, np.nan])})  # kept exactly, but for float32's rounding
    with pytest.warns(nnc.PrecisionWarning, match="1 float64 or lossily coded integer tensor.*'mean_'"):  # not scale_ nor n: exact
        nnc.encode({"mean_": np.array([5.3e4, 38.2, 1.2e5]), "scale_": np.array([2.1e4, 12.0, 3e4]),
                    "n": np.float64(1e6)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = nnc.EncoderState()
        with pytest.warns(nnc.PrecisionWarning):
            nnc.encode({"w": big}, qp=-38, state=state, differences=True)  # the base: full values
        nnc.encode({"w": big + 1e-3}, qp=-60, state=state, differences=True)  # an update: small differences
        nnc.encode({"w": np.array([0.1, 0.2, 0.3])})  # raw only as the smaller choice: coding loses more
        nnc.encode({"w": np.random.default_rng(0).normal(size=(64, 64))})  # an ordinary float64 tensor
        nnc.encode({"w": np.array([1.5, -2.0])}, raw=["w"])  # float32 holds them
        nnc.encode({"w": big.astype(np.float32)}, dq=False)


def test_integers_coded_lossily_beyond_float32_precision_are_warned_of(tmp_path, capsys):
    """Before: silent (exit 0, SNR inf): an integer above 2^24 coded with --no-lossless-int decoded 5 steps off, as
    float32 reconstructs it; the float64 twin was warned of."""
    import warnings

    from nnc.cli import main

    x = np.array([[2**25 + 1, 3], [5, 7]], np.int64)
    with pytest.warns(nnc.PrecisionWarning, match="1 float64 or lossily coded integer tensor.*'x'"):
        assert nnc.decode_model(nnc.encode({"x": x}, lossless_int=False, qp=-10, dq=False))["x"][0, 0] == 2**25
    np.savez(tmp_path / "m.npz", x=x)
    assert main(["encode", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.nnr"), "--no-lossless-int", "--qp", "-10",
                 "--no-dq"]) == 0
    assert "keep only float32 precision" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnc.encode({"x": x})  # losslessly: exact
        nnc.encode({"x": np.array([[2**20 + 1, 3], [5, 7]])}, lossless_int=False, qp=-10, dq=False)  # within 2^23 steps


def test_a_codebook_that_overflows_float16_falls_back_without_numpys_warning():
    """Before: numpy's "RuntimeWarning: overflow encountered in cast" was printed before the tensor was stored raw."""
    import warnings

    x = np.tile(np.float16([65504, -65504, 60000, 1]), (1, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        stream = nnc.encode({"t": x}, qp=40, codebook=True)
    assert nnc.decode_model(stream)["t"].tolist() == x.tolist()


def test_the_command_line_warns_of_float64_tensors_that_keep_only_float32_precision(tmp_path, capsys):
    """The CLI's streaming encode said nothing where nnc.encode warned (a float64 tensor at 2^23 or more steps)."""
    from nnc.cli import main

    big = np.random.default_rng(0).normal(0, 1e5, (64, 64))
    path = tmp_path / "m.npz"
    np.savez(path, w=big, ok=np.random.default_rng(1).normal(size=(64, 64)))
    assert main(["encode", str(path), "-o", str(tmp_path / "m.nnr"), "--no-dq"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 float64 or lossily coded integer tensor(s) keep only float32 precision" in err and "'w'" in err
    assert main(["encode", str(path), "-o", str(tmp_path / "m2.nnr"), "--no-dq", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["float32_precision"] == ["w"]


def test_an_integer_output_format_that_rounds_a_float_tensor_s_fractions_says_so():
    """output_formats={"w": 0} decoded [[.25, -.5], [.75, 0]] as int32 [[0, -1], [1, 0]], without a word. (A
    warning, not an error: the rounding is the format's, spec 12.6, and a conformance stream tests it.)"""
    import warnings

    x = np.array([[0.25, -0.5], [0.75, 0.0]], np.float32)
    for fmt in (0, 2, 3, 7):
        with pytest.warns(nnc.PrecisionWarning, match="holds whole numbers.*decode rounded") as caught:
            nnc.encode({"w": x}, output_formats={"w": fmt}, qp=-20)
        assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = np.array([[4.0, -8.0], [12.0, 0.0]], np.float32)  # a step of 4 reconstructs whole numbers
        stream = nnc.encode({"w": whole}, output_formats={"w": 0}, qp=8, dq=False)
    assert nnc.decode(stream)["w"].tolist() == whole.tolist()


@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1e-100])
def test_float64_values_beyond_float32_range_are_measured_not_reported_exact(tmp_path, capsys, scale):
    """Before: float64 weights under about 1e-154 squared to 0 in the SNR's sums: every one decoded as 0, and
    ``nnc encode`` and ``nnc compare --min-snr 30`` both said "SNR inf dB" and passed. Now the sums are taken on
    the values scaled by a power of two."""
    from nnc.measure import error_sums

    w = np.random.default_rng(0).standard_normal((16, 16)) * scale
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes({"w": w}))
    code = main(["encode", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.nnr"), "--json"])
    report = json.loads(capsys.readouterr().out)
    decoded = nnc.decode(tmp_path / "m.nnr")["w"].astype(np.float64)
    expected = 10 * np.log10(np.sum((w / scale) ** 2) / np.sum(((w - decoded) / scale) ** 2))
    assert code == 0 and report["snr_db"] == pytest.approx(expected, abs=1e-6)
    e, d, peak, _ = error_sums(w, decoded)
    assert 10 * np.log10(e / d) == pytest.approx(expected, abs=1e-6) and peak == np.abs(w - decoded).max()
    min_snr = ["--min-snr", str(expected + 1)]
    assert main(["compare", str(tmp_path / "m.safetensors"), str(tmp_path / "m.nnr"), *min_snr]) == 1
    if scale < 1e-50:  # everything decodes as 0: said so
        assert not decoded.any() and report["snr_db"] == 0.0
        assert "w" in report["zeroed"]


@settings(max_examples=50, deadline=None)
@given(st.integers(-1000, 1000), st.integers(0, 2**32 - 1))
def test_error_sums_keep_the_snr_at_any_float64_scale(exponent, seed):
    """The SNR of values scaled by 2^exponent is that of the values (sums over squares that leave float64's
    range were 0 or inf before)."""
    from nnc.measure import error_sums

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(100)
    y = x + rng.standard_normal(100) * 0.01
    e0, d0, p0, _ = error_sums(x, y)
    e, d, peak, nonfinite = error_sums(np.ldexp(x, exponent), np.ldexp(y, exponent))
    assert nonfinite == 0 and 0 < e < np.inf and 0 < d < np.inf
    assert e / d == pytest.approx(e0 / d0, rel=1e-9)
    assert peak == np.ldexp(p0, exponent)


def test_an_ndarray_subclass_encodes_and_a_masked_array_with_masked_values_is_refused():
    """Before: an np.matrix raised numpy's own ValueError from the SNR's sums, and a masked array was coded
    without its mask (its hidden values decoded as if they were data)."""
    m = np.matrix([[1.0, 2.0], [3.0, 4.0]])
    assert np.array_equal(nnc.decode(nnc.encode({"w": m}, qp=-20))["w"], np.asarray(m))
    hidden = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    with pytest.raises(EncodeError, match="masked array with 1 masked value"):
        nnc.encode({"w": hidden})
    with pytest.raises(EncodeError, match="masked array"):
        nnc.models.encode_model({"w": hidden})
    plain = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 0, 0])
    assert nnc.decode(nnc.encode({"w": plain}, qp=-20))["w"].tolist() == [1.0, 2.0, 3.0]


def test_an_onnx_output_does_not_replace_an_existing_external_data_file(tmp_path, capsys):
    """Before: ``nnc decode m.nnr -o out.onnx --template t.onnx`` refused an existing out.onnx but replaced an
    existing out.onnx.data (where the output's external data goes) without --overwrite."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", 1, [64, 64])], initializer=[w])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "t.onnx"), save_as_external_data=True,
                    location="t.onnx.data", size_threshold=0)
    assert main(["encode", str(tmp_path / "t.onnx"), "-o", str(tmp_path / "m.nnr"), "-q"]) == 0
    precious = tmp_path / "out.onnx.data"
    precious.write_bytes(b"someone else's data")
    capsys.readouterr()
    decode = ["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "out.onnx"), "--template", str(tmp_path / "t.onnx")]
    assert main(decode) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(precious) in err and "--overwrite" in err
    assert precious.read_bytes() == b"someone else's data" and not (tmp_path / "out.onnx").exists()
    assert main([*decode, "--overwrite", "-q"]) == 0
    assert precious.stat().st_size == 64 * 64 * 4


def test_encode_does_not_replace_a_model_file_whatever_its_name(tmp_path, capsys):
    """Before: ``-o other.safetensors`` was refused, but ``-o weights`` replaced a safetensors model of that name
    (and ``-o checkpoint.tar`` a PyTorch one) with the stream, exit 0. An existing stream is replaced, as before."""
    (tmp_path / "a.safetensors").write_bytes(safetensors_bytes({"w": np.ones((4, 4), np.float32)}))
    (tmp_path / "weights").write_bytes(safetensors_bytes({"v": np.ones((8, 8), np.float32)}))
    (tmp_path / "arrays.bin").write_bytes(npz_bytes({"v": np.ones(3)}))
    for target in ("weights", "arrays.bin"):
        before = (tmp_path / target).read_bytes()
        capsys.readouterr()
        assert main(["encode", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / target)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / target) in err and "model" in err
        assert (tmp_path / target).read_bytes() == before
    out = tmp_path / "stream.bin"
    assert main(["encode", str(tmp_path / "a.safetensors"), "-o", str(out), "-q"]) == 0
    assert main(["encode", str(tmp_path / "a.safetensors"), "-o", str(out), "-q", "--qp", "-20"]) == 0  # a stream
    (tmp_path / "empty").write_bytes(b"")  # e.g. made by mktemp
    assert main(["encode", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "empty"), "-q"]) == 0


def test_an_onnx_output_of_some_tensors_is_refused_with_the_reason(tmp_path, capsys):
    """Before: ``--tensor a -o out.onnx --template t.onnx`` said the template's other weights were "not in the
    stream", though they were (only not selected)."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), n) for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", 1, [8, 8])], initializer=inits)
    onnx.save_model(helper.make_model(graph), str(tmp_path / "t.onnx"))
    assert main(["encode", str(tmp_path / "t.onnx"), "-o", str(tmp_path / "m.nnr"), "-q"]) == 0
    capsys.readouterr()
    decode = ["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "out.onnx"), "--template", str(tmp_path / "t.onnx")]
    assert main([*decode, "--tensor", "a"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "selects 1 of the stream's 2" in err and not (tmp_path / "out.onnx").exists()
    assert main([*decode, "--tensor", "a", "--tensor", "b", "-q"]) == 0


def test_a_state_folder_that_takes_no_file_is_named_by_the_users_path(tmp_path, capsys, monkeypatch):
    """Before: when --state's folder took no new file (read-only), the error named nnc's temporary file there
    ("ro/tmp2ke3yz6d: Operation not permitted"), not the state file."""
    import errno

    from nnc import array_store

    model = tmp_path / "m.npz"
    model.write_bytes(npz_bytes({"w": np.ones((4, 4), np.float32)}))
    state = tmp_path / "ro" / "s.state"
    state.parent.mkdir()

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", os.path.join(dir, "tmp2ke3yz6d"))

    monkeypatch.setattr(array_store.tempfile, "TemporaryFile", refused)
    capsys.readouterr()
    assert main(["encode", str(model), "-o", str(tmp_path / "m.nnr"), "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert err == f"nnc: error: {state}: Operation not permitted\n"
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "ro"] and not os.listdir(state.parent)


@pytest.mark.parametrize("header, why", [
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': f(3,), }", "malformed"),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }" + b" " * 20_000, "too large to read safely"),
])
def test_an_npy_header_numpy_refuses_is_one_line_of_ours(tmp_path, capsys, header, why):
    """Before: numpy's own message went through, over three lines, with advice (allow_pickle=True,
    max_header_size) that no nnc option follows; or an ``<ast.Call object at 0x...>``."""
    import io
    import zipfile

    npy = io.BytesIO()
    npy.write(b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header) + 1) + header + b"\n")
    npy.write(np.ones(3, np.float32).tobytes())
    with zipfile.ZipFile(tmp_path / "m.npz", "w") as zf:
        zf.writestr("w.npy", npy.getvalue())
    assert main(["encode", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.nnr")]) == 1
    err = capsys.readouterr().err
    assert err == f"nnc: error: {tmp_path / 'm.npz'}: w.npy: its .npy header is {why}\n"
    assert not (tmp_path / "m.nnr").exists()
    with pytest.raises(formats.FormatError, match=why):
        read_model(tmp_path / "m.npz")


def test_a_message_of_several_lines_is_printed_as_one(capsys):
    from nnc.cli import _fail

    assert _fail("a: first\n  second\r\nthird ") == 1
    assert capsys.readouterr().err == "nnc: error: a: first second third\n"


def test_no_memory_for_a_thread_is_one_line(stream, tmp_path, capsys, monkeypatch):
    # under a low `ulimit -v`, "RuntimeError: can't start new thread" ended decode and encode in a traceback
    import nnc.decoder

    def no_thread(data):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(nnc.decoder, "read_input", no_thread)
    out = tmp_path / "never.npz"
    code, _, err = cli(capsys, "decode", stream, "-o", out)
    assert code == 1 and err == f"nnc: error: {stream}: out of memory (no memory to start another thread: try " \
                                "--threads 1); nothing written\n"
    assert not out.exists()


def test_a_symlinked_output_or_state_file_is_written_where_the_link_leads(tmp_path, capsys):
    """Before: the rename replaced the link by a new file, and the file it pointed to (a --state file) kept its old
    contents, exit 0: the next update through the real path was refused."""
    rng = np.random.default_rng(0)
    (tmp_path / "keep").mkdir()
    for i in range(2):
        np.savez(tmp_path / f"m{i}.npz", w=rng.normal(size=(8, 8)).astype(np.float32))
    real_state, link_state = tmp_path / "keep" / "enc.state", tmp_path / "enc.state"
    assert cli(capsys, "encode", tmp_path / "m0.npz", "-o", tmp_path / "s0.nnr", "--state", real_state,
               "--differences")[0] == 0
    link_state.symlink_to(real_state)
    before = real_state.read_bytes()
    real_out, link_out = tmp_path / "keep" / "s1.nnr", tmp_path / "s1.nnr"
    real_out.write_bytes(b"old")
    link_out.symlink_to(real_out)
    assert cli(capsys, "encode", tmp_path / "m1.npz", "-o", link_out, "--state", link_state, "--differences")[0] == 0
    assert link_state.is_symlink() and link_out.is_symlink()
    assert real_state.read_bytes() != before and real_out.read_bytes()[:3] != b"old"
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["enc.state", "s1.nnr"]  # no temporary left


def test_a_hard_linked_state_file_is_refused_before_anything_is_written(tmp_path, capsys):
    """Before: the state was saved by a rename, so one name got the new state and its other names kept the old one,
    exit 0: the next update through another name decoded against a stale state (or was refused)."""
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(tmp_path / f"m{i}.npz", w=rng.normal(size=(8, 8)).astype(np.float32))
    state, other = tmp_path / "enc.state", tmp_path / "other.state"
    assert cli(capsys, "encode", tmp_path / "m0.npz", "-o", tmp_path / "s0.nnr", "--state", state,
               "--differences")[0] == 0
    os.link(state, other)
    before = state.read_bytes()
    for command in (["encode", tmp_path / "m1.npz", "-o", tmp_path / "s1.nnr", "--differences"],
                    ["decode", tmp_path / "s0.nnr", "-o", tmp_path / "d.npz"]):
        code, _, err = cli(capsys, *command, "--state", state)
        assert code == 1 and err.startswith(f"nnc: error: {state}: the --state file has 2 names (hard links)")
        assert err.count("\n") == 1 and state.read_bytes() == before == other.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.state", "m0.npz", "m1.npz", "other.state", "s0.nnr"]


def test_a_replaced_file_keeps_its_mode_and_a_read_only_one_is_not_replaced(tmp_path, capsys, monkeypatch):
    """Before: a replaced file got 0666 less the umask (a private stream or state became readable by all), and a
    read-only one was replaced."""
    import stat

    np.savez(tmp_path / "m.npz", w=np.ones((8, 8), np.float32) / 3)
    out = tmp_path / "m.nnr"
    out.write_bytes(b"old")
    out.chmod(0o600)
    assert cli(capsys, "encode", tmp_path / "m.npz", "-o", out)[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_bytes()[:3] != b"old"
    out.chmod(0o400)
    access = os.access  # (root may write any file: the check asks as another user would be answered)
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out else access(p, mode))
    before = out.read_bytes()
    code, _, err = cli(capsys, "encode", tmp_path / "m.npz", "-o", out)
    assert code == 1 and err == f"nnc: error: {out}: the file is read-only, and is not replaced (make it writable " \
                                "first)\n"
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.nnr", "m.npz"]


def test_an_error_writing_a_plot_names_the_plot(tmp_path):
    # a full disk while matplotlib wrote the figure said "nnc: error: : No space left on device"
    from nnc._files import AtomicFile

    target = tmp_path / "p.png"
    with pytest.raises(OSError) as caught, AtomicFile(target) as file:
        file.fh.close()
        file.fh = open("/dev/full", "wb", buffering=0)  # noqa: SIM115
        file.fh.write(b"x")
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert not target.exists() and list(tmp_path.iterdir()) == []
