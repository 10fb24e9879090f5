"""Model formats: names, order, shapes and dtypes survive encode/decode; values equal the reconstruction."""

import io
import os

import numpy as np
import pytest

import nnc
from nnc import formats, readers
from nnc.decoder import restore_model_view
from nnc.encoder import Encoder


def _tensors():
    rng = np.random.default_rng(3)
    return {
        "layer.weight": rng.standard_normal((6, 5)).astype(np.float32),
        "layer.bias": rng.standard_normal(6).astype(np.float16),
        "norm.weight": rng.standard_normal(6).astype(np.float64),
        "bn.num_batches_tracked": np.array(17, np.int64),
        "emb": rng.standard_normal((3, 2, 2)).astype(np.float32),
    }


def _round_trip(write, read, tmp_path, suffix, dtypes=None):
    src = tmp_path / f"in.{suffix}"
    tensors = _tensors()
    write(src, tensors)
    loaded, loaded_dtypes = formats.read_model(src)
    assert list(loaded) == list(tensors)
    result = Encoder(qp=-30).encode(loaded)
    dec = nnc.Decoder(result.stream)
    decoded, dtypes = restore_model_view(dec.decode(), dec.metadata)
    out = tmp_path / f"out.{suffix}"
    formats.write_model(out, decoded, dtypes, template=src if suffix == "onnx" else None)
    back, back_dtypes = formats.read_model(out)
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back_dtypes[k] == (dtypes or {}).get(k, np.asarray(v).dtype.name), k
        assert np.asarray(back[k]).shape == np.asarray(v).shape, k
        rec = np.asarray(result.tensors[k].reconstruction).astype(np.asarray(back[k]).dtype).reshape(np.shape(v))
        np.testing.assert_array_equal(np.asarray(back[k]), rec, err_msg=k)
    return back


@pytest.mark.quick
def test_safetensors(tmp_path):
    _round_trip(lambda p, t: p.write_bytes(formats.safetensors_bytes(t)), None, tmp_path, "safetensors")


@pytest.mark.quick
def test_npz(tmp_path):
    _round_trip(lambda p, t: p.write_bytes(formats.npz_bytes(t)), None, tmp_path, "npz")


def test_bfloat16_safetensors(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    p = tmp_path / "b.safetensors"
    p.write_bytes(formats.safetensors_bytes({"w": x}, {"w": "bfloat16"}))
    loaded, dtypes = formats.read_model(p)
    assert dtypes == {"w": "bfloat16"}
    np.testing.assert_array_equal(loaded["w"], formats.bfloat16_to_float32(formats.float32_to_bfloat16(x)))


def test_pytorch_state_dict(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch)")

    def write(p, t):
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in t.items()}, p)

    _round_trip(write, None, tmp_path, "pt")
    sd = {"w": torch.randn(4, 3, dtype=torch.bfloat16)}
    p = tmp_path / "bf.pt"
    torch.save(sd, p)
    loaded, dtypes = formats.read_model(p)
    assert dtypes["w"] == "bfloat16" and loaded["w"].dtype == np.float32
    out = tmp_path / "bf_out.pt"
    formats.write_model(out, loaded, dtypes)
    assert torch.load(out, weights_only=True)["w"].dtype == torch.bfloat16


def test_pytorch_checkpoints_are_unwrapped_or_refused_clearly(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch)")
    sd = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    cases = {"nested": {"model": sd, "epoch": 3, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
             "lightning": {"state_dict": sd, "hyper_parameters": {"a": 1}}}
    cases["extra state"] = {**sd, "_extra_state": b"opaque", "note": "x"}
    left_out = {"nested": ["epoch", "optimizer"], "lightning": ["hyper_parameters"],
                "extra state": ["_extra_state", "note"]}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        assert list(formats.read_model(tmp_path / f"{name}.pt")[0]) == ["fc.weight", "fc.bias"], name
        source = readers.open_model(tmp_path / f"{name}.pt")
        assert [t.name for t in source] == ["fc.weight", "fc.bias"] and source.left_out == left_out[name], name
    torch.save({"state_dict": {**sd, "step": 4}}, tmp_path / "inner.pt")
    assert readers.open_model(tmp_path / "inner.pt").left_out == ["state_dict/step"]
    torch.save({"model": sd, "ema": sd}, tmp_path / "two.pt")
    with pytest.raises(formats.FormatError, match="several entries hold tensors .'model', 'ema'."):
        formats.read_model(tmp_path / "two.pt")
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(formats.FormatError, match="no tensors found .top-level keys: 'epoch'."):
        formats.read_model(tmp_path / "none.pt")


def test_onnx_initializers(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install onnx)")
    from onnx import helper, numpy_helper

    def write(p, t):
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in t.items()]
        graph = helper.make_graph([], "g", [], [], initializer=inits)
        onnx.save(helper.make_model(graph), p)

    _round_trip(write, None, tmp_path, "onnx")


def test_detection_is_by_content(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(formats.safetensors_bytes({"a": np.zeros(3, np.float32)}))
    assert formats.detect_format(p) == "safetensors"
    q = tmp_path / "weights.dat"
    q.write_bytes(formats.npz_bytes({"a": np.zeros(3, np.float32)}))
    assert formats.detect_format(q) == "npz"
    r = tmp_path / "x.onnx"
    r.write_bytes(b"garbage")
    with pytest.raises(formats.FormatError):
        formats.read_model(r)
    # a path that cannot be opened raises open()'s OSError (nnc.errors), not a FormatError (it did)
    for missing in ("nothing-here.safetensors", "nothing-here.npz", "nothing-here"):
        with pytest.raises(FileNotFoundError, match="nothing-here"):
            formats.read_model(tmp_path / missing)
        with pytest.raises(FileNotFoundError, match="nothing-here"):
            nnc.encode_model(tmp_path / missing)
    for kind in (nnc.DecoderState, nnc.EncoderState):
        with pytest.raises(FileNotFoundError, match="nothing-here"):
            kind.load(tmp_path / "nothing-here.state")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "t.npz"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats.os, "fsync", boom)
    with pytest.raises(RuntimeError):
        formats.write_atomic(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]


def test_encode_model_and_decode_model_mirror_the_cli(tmp_path):
    from nnc.cli import main

    src = tmp_path / "m.safetensors"
    src.write_bytes(formats.safetensors_bytes(
        {"w": np.ones((3, 4), np.float32), "h": np.ones(4, np.float16), "n": np.array(3, np.int64),
         "b": np.full((2, 3), 0.5, np.float32)}, {"b": "bfloat16"}))
    stream_path = tmp_path / "m.nnr"
    stream = nnc.encode_model(src, stream_path, qp=-20)
    assert stream_path.read_bytes() == stream
    assert main(["encode", str(src), "-o", str(tmp_path / "cli.nnr"), "--qp", "-20", "-q"]) == 0
    assert (tmp_path / "cli.nnr").read_bytes() == stream
    want = {"w": "float32", "h": "float16", "n": "int64", "b": "bfloat16"}
    for out in (tmp_path / "back.safetensors", tmp_path / "cli_back.safetensors"):
        if out.name.startswith("cli"):
            assert main(["decode", str(tmp_path / "cli.nnr"), "-o", str(out), "-q"]) == 0
        else:
            tensors = nnc.decode_model(stream_path, out)
            assert tensors["n"].shape == ()
        back, dtypes = formats.read_model(out)
        assert list(back) == ["w", "h", "n", "b"] and dtypes == want
        assert back["n"].shape == ()


# -- damaged model files: only FormatError (an NNCError), never another exception ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nnc.errors import NNCError  # noqa: E402
from nnc.formats import FormatError, npz_bytes, read_model, safetensors_bytes  # noqa: E402

_SAMPLE = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float16), "n": np.int64(7)}


def _pt(tensors):
    pytest.importorskip("torch", reason="torch not installed")
    from nnc.formats import pt_bytes

    return pt_bytes(tensors)


def _onnx(tensors):
    pytest.importorskip("onnx", reason="onnx not installed")
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()]
    return helper.make_model(helper.make_graph([], "g", [], [], initializer=inits)).SerializeToString()


_BLOBS = {}


@pytest.mark.parametrize("make, suffix", [(safetensors_bytes, ".safetensors"), (npz_bytes, ".npz"),
                                          (_pt, ".pt"), (_onnx, ".onnx")])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_raise_format_errors_only(tmp_path, make, suffix, data):
    if suffix not in _BLOBS:
        _BLOBS[suffix] = make(_SAMPLE)
    blob = bytearray(_BLOBS[suffix])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(bytes(blob))
    try:
        tensors, _ = read_model(path)
    except NNCError:
        return
    assert all(isinstance(v, np.ndarray) for v in tensors.values())


@pytest.mark.parametrize("header", [b"[]", b'{"w": {}}', b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}',
                                    b'{"w": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}',
                                    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": ["a", 4]}}'])
def test_malformed_safetensors_headers(tmp_path, header):
    import struct

    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(FormatError):
        read_model(path, "safetensors")


def test_npz_header_claiming_more_data_than_its_member_is_refused_before_allocating(tmp_path):
    import zipfile

    header = {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(bytes(64))
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", buf.getvalue())       # the header (with its magic) and 64 bytes of data
    with pytest.raises(FormatError, match="claims"):
        read_model(path)


def test_npz_fortran_order_and_byte_order_are_honoured(tmp_path):
    a = np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))
    path = tmp_path / "f.npz"
    np.savez(path, a=a)
    back, dtypes = read_model(path)
    np.testing.assert_array_equal(back["a"], a)
    assert dtypes["a"] == "int32"


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "pt"])
def test_write_model_refuses_what_no_model_file_holds_and_writes_big_endian_values(tmp_path, fmt):
    """Before: pickled object and str arrays written to .npz (which nnc then refused to read), TypeErrors for a
    non-string name or str values in .pt, a ValueError for a big-endian array in .pt."""
    if fmt == "pt":
        pytest.importorskip("torch")
    from nnc.formats import FormatError, read_model, write_model

    path = tmp_path / f"m.{fmt}"
    for bad, words in (({"a": np.array(["x"])}, "holds numbers"), ({"a": np.array([None])}, "holds numbers"),
                       ({5: np.ones(2)}, "names are strings")):
        with pytest.raises(FormatError, match=words):
            write_model(path, bad)
        assert not path.exists()
    write_model(path, {"b": np.arange(3).astype(">f4")})
    assert read_model(path)[0]["b"].tolist() == [0.0, 1.0, 2.0]


def test_onnx_weights_go_to_external_data_when_the_template_keeps_them_there_or_they_pass_2gib(tmp_path, monkeypatch):
    """Before: the weights were always written inline, and a model over 2 GiB failed in protobuf with a traceback."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper

    from nnc import formats

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "inline.onnx")
    onnx.save(onnx.load(tmp_path / "inline.onnx"), tmp_path / "ext.onnx", save_as_external_data=True,
              location="ext.weights", size_threshold=0)
    x = rng.normal(size=(1, 64)).astype(np.float32)
    half = {"w": w / 2}

    def run(path):
        return ort.InferenceSession(str(path)).run(None, {"x": x})[0]

    assert formats.write_onnx(tmp_path / "a.onnx", half, template=tmp_path / "inline.onnx") == [str(tmp_path / "a.onnx")]
    written = formats.write_onnx(tmp_path / "b.onnx", half, template=tmp_path / "ext.onnx")
    assert written == [str(tmp_path / "b.onnx.data"), str(tmp_path / "b.onnx")]
    assert np.allclose(run(tmp_path / "a.onnx"), run(tmp_path / "b.onnx")) and np.allclose(run(tmp_path / "a.onnx"), x @ w / 2, atol=1e-5)
    assert (tmp_path / "ext.weights").read_bytes() == w.tobytes()  # the template's own data untouched
    monkeypatch.setattr(formats, "ONNX_INLINE_LIMIT", 1000)  # a model "over 2 GiB"
    formats.write_model(tmp_path / "c.onnx", half, template=tmp_path / "inline.onnx")
    assert (tmp_path / "c.onnx.data").exists() and np.allclose(run(tmp_path / "c.onnx"), x @ w / 2, atol=1e-5)
    with pytest.raises(formats.FormatError, match="2 GiB"):
        formats.onnx_bytes(half, template=tmp_path / "inline.onnx")
    # the external data file may not be one of the template's
    onnx.save(onnx.load(tmp_path / "inline.onnx"), tmp_path / "d.onnx", save_as_external_data=True,
              location="d.onnx.data", size_threshold=0)
    before = (tmp_path / "d.onnx.data").read_bytes()
    with pytest.raises(FileExistsError):
        formats.write_onnx(tmp_path / "d.onnx", half, template=tmp_path / "d.onnx")
    assert (tmp_path / "d.onnx.data").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nnc-")]


def test_onnx_external_data_is_written_whatever_the_current_folder_holds(tmp_path, monkeypatch):
    """Before: onnx's save_as_external_data refused a data file name that existed in the current folder
    (FileExistsError), so replacing m.onnx from its own folder failed; the data file was also private (0600)."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    from nnc import formats

    w = np.arange(4096, dtype=np.float32).reshape(64, 64)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph), tmp_path / "t.onnx", save_as_external_data=True, location="t.bin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "x.onnx.data").write_bytes(b"not the output's")
    for target, value in (("m.onnx", 1.0), ("m.onnx", 2.0), ("out/x.onnx", 3.0)):
        formats.write_onnx(target, {"w": np.full((64, 64), value)}, template="t.onnx")
        loaded = onnx.load(target)
        assert numpy_helper.to_array(loaded.graph.initializer[0]).tolist() == np.full((64, 64), value).tolist()
        data, model = os.stat(target + ".data"), os.stat(target)
        assert data.st_mode & 0o777 == model.st_mode & 0o777
    assert (tmp_path / "x.onnx.data").read_bytes() == b"not the output's"


def test_onnx_output_keeps_each_weights_doc_string_and_metadata_props(tmp_path):
    """Before: writing replaced each TensorProto whole, dropping its doc_string and metadata_props."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    w.doc_string = "the weight"
    c = numpy_helper.from_array(np.full(2, 3.0, np.float32), "c")
    c.doc_string = "a constant"
    for t, value in ((w, "layer1"), (c, "layer2")):
        if "metadata_props" in t.DESCRIPTOR.fields_by_name:
            entry = t.metadata_props.add()
            entry.key, entry.value = "origin", value
    nodes = [helper.make_node("Constant", [], ["c"], value=c), helper.make_node("Add", ["w", "c"], ["y"])]
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [], [y], [w])), path)
    model = onnx.load_from_string(formats.onnx_bytes({"w": np.full((2, 2), 0.5), "c": np.zeros(2)}, template=path))
    onnx.checker.check_model(model)
    new_w, new_c = model.graph.initializer[0], model.graph.node[0].attribute[0].t
    assert numpy_helper.to_array(new_w).tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert numpy_helper.to_array(new_c).tolist() == [0.0, 0.0]
    for new, old in ((new_w, w), (new_c, c)):
        assert new.name == old.name and new.doc_string == old.doc_string and new.doc_string
        if "metadata_props" in old.DESCRIPTOR.fields_by_name:
            assert [(e.key, e.value) for e in new.metadata_props] == [(e.key, e.value) for e in old.metadata_props]


def _onnx_with_int64_max_and_labels(path):
    """A Slice whose ends initializer is INT64_MAX (as exporters write "to the end") and STRING class labels."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    TP = onnx.TensorProto
    inits = [
        numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w"),
        numpy_helper.from_array(np.array([1], np.int64), "starts"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "ends"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array([b"cat", b"dog"], dtype=object), "labels"),
    ]
    nodes = [helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Slice", ["s", "starts", "ends", "axes"], ["y"]),
             helper.make_node("Identity", ["labels"], ["lab"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [3, 3]),
                               helper.make_tensor_value_info("lab", TP.STRING, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_onnx_int64_initializers_beyond_int32_and_string_initializers_stay_in_the_graph(tmp_path):
    """Before: an INT64_MAX Slice bound refused the whole model ("leave it out of the model or split it"), and
    STRING labels gave "unsupported dtype object"."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from nnc import models
    from nnc.cli import main

    src = _onnx_with_int64_max_and_labels(tmp_path / "m.onnx")
    source = readers.open_model(src)
    assert [t.name for t in source] == ["w", "starts", "axes"]
    assert [entry.split()[0] for entry in source.left_out] == ["ends", "labels"]
    assert list(formats.read_model(src)[0]) == ["w", "starts", "axes"]
    assert main(["encode", str(src), "-o", str(tmp_path / "m.nnr"), "--qp", "-30"]) == 0
    assert models.encode_model_to(src, tmp_path / "n.nnr", qp=-30).left_out == source.left_out
    assert main(["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "out.onnx"), "--template", str(src)]) == 0
    before, after = onnx.load(src), onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(after, full_check=True)
    held = {t.name: t for t in before.graph.initializer}
    for t in after.graph.initializer:
        if t.name in ("ends", "labels", "starts", "axes"):
            assert t.SerializeToString() == held[t.name].SerializeToString(), t.name
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"x": x})
    got = ort.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"x": x})
    w = nnc.decode_model(tmp_path / "m.nnr")["w"]  # the graph runs as before, on the decoded weight
    np.testing.assert_array_equal(got[0], (x + w)[:, 1:])
    np.testing.assert_allclose(got[0], want[0], atol=1e-2)
    assert list(got[1]) == list(want[1]) == ["cat", "dog"]


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".PTH"])
def test_pytorch_suffixes_the_readers_take_are_written_as_pytorch_files(tmp_path, suffix):
    pytest.importorskip("torch")
    from nnc.cli import main

    model = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    stream = tmp_path / "m.nnr"
    stream.write_bytes(nnc.encode(model, qp=-30))
    out = tmp_path / f"m{suffix}"
    assert main(["decode", str(stream), "-o", str(out), "-q"]) == 0
    back, _ = read_model(str(out))
    np.testing.assert_allclose(back["w"], model["w"], atol=2**-8)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".npz"])
def test_write_model_streams_each_tensor_to_the_file_without_copying_the_model(tmp_path, suffix):
    """A model file is written straight to its temporary file: the model is not copied, then serialised to bytes,
    then copied again (the .pt path held about 3x the model). numpy and Python allocations are traced."""
    import tracemalloc

    if suffix == ".pt":
        pytest.importorskip("torch")
    tensors = {f"t{i}": np.linspace(-1, i, 1_000_000, dtype=np.float32) for i in range(9)}
    tensors["b"] = np.ones((1000, 1000), np.float32)  # (bfloat16 in the file: converted on the way)
    model = 40_000_000
    path = tmp_path / f"m{suffix}"
    tracemalloc.start()
    try:
        formats.write_model(path, tensors, {"b": "bfloat16"} if suffix != ".npz" else None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < model / 2, f"{peak:,} bytes traced writing a {model:,}-byte model"
    back = formats.read_model(path)[0]
    np.testing.assert_array_equal(np.asarray(back["t8"]), tensors["t8"])
    np.testing.assert_array_equal(np.asarray(back["b"], np.float32), tensors["b"])


def test_decode_model_refuses_a_folder_or_a_bad_extension_before_decoding(tmp_path, monkeypatch):
    """Before: a folder was "cannot tell the output format from the extension", after the whole model was decoded."""
    stream = nnc.encode({"w": np.ones((2, 2), np.float32)})
    monkeypatch.setattr(nnc.Decoder, "decode", lambda *a, **k: pytest.fail("decoded before the output was checked"))
    with pytest.raises(formats.FormatError, match="decode_to_path writes a folder"):
        nnc.decode_model(stream, str(tmp_path) + "/")
    with pytest.raises(formats.FormatError, match="extension"):
        nnc.decode_model(stream, tmp_path / "m.xyz")


def test_npz_archives_keep_tensors_named_like_savez_arguments(tmp_path):
    """Before: write_model and npz_bytes went through np.savez(fh, **tensors): a tensor named allow_pickle was
    taken for the argument and left out of the archive without a word; one named file was a TypeError."""
    tensors = {"allow_pickle": np.array([1.0, 2.0], np.float32), "file": np.float32(3.0), "w": np.ones((2, 3))}
    nnc.decode_model(nnc.encode(tensors, qp=-20), tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as z:
        assert sorted(z.files) == ["allow_pickle", "file", "w"]
    with np.load(io.BytesIO(formats.npz_bytes(tensors))) as z:
        assert sorted(z.files) == ["allow_pickle", "file", "w"] and z["file"].tolist() == 3.0


def test_write_model_refuses_values_its_recorded_dtype_cannot_hold(tmp_path):
    """Before: values were cast with astype: [70000, 1e6] recorded as int16 were written as [4464, 16960]."""
    for want in ("int16", "uint8", "float16"):
        with pytest.raises(formats.FormatError, match=f"m.npz: tensor 'w'.*{want}"):
            formats.write_model(tmp_path / "m.npz", {"w": np.array([70000.0, 1e6])}, {"w": want})
        assert not (tmp_path / "m.npz").exists()
    formats.write_model(tmp_path / "m.npz", {"w": np.array([7.0, -2.6])}, {"w": "int16"})
    with np.load(tmp_path / "m.npz") as z:
        assert z["w"].dtype == np.int16 and z["w"].tolist() == [7, -3]  # the nearest integers


def test_an_npz_output_holds_ml_dtypes_bfloat16_arrays_as_float32(tmp_path):
    """Before: written as a |V2 member, which read_model then refused ("not numeric")."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")
    formats.write_model(tmp_path / "n.npz", {"w": np.array([1.5, 2.25], ml_dtypes.bfloat16)}, {"w": "bfloat16"})
    tensors, _ = formats.read_model(tmp_path / "n.npz")
    assert tensors["w"].dtype == np.float32 and tensors["w"].tolist() == [1.5, 2.25]


def test_decode_model_refuses_a_template_it_would_ignore(tmp_path):
    """decode_model(s, "x.npz", template="m.npz") ignored the template without a word."""
    import nnc

    stream = nnc.encode({"w": np.ones((2, 2), np.float32)})
    (tmp_path / "m.npz").write_bytes(b"")
    with pytest.raises(nnc.formats.FormatError, match="for ONNX output only"):
        nnc.decode_model(stream, tmp_path / "x.npz", template=tmp_path / "m.npz")
    with pytest.raises(nnc.formats.FormatError, match="give output="):
        nnc.decode_model(stream, template=tmp_path / "m.npz")
    assert not (tmp_path / "x.npz").exists()


def test_an_npz_of_no_arrays_is_an_npz_with_no_tensors(tmp_path, capsys):
    """Before: np.savez with no arrays (a zip archive of no members) was "unknown model format"; the other
    formats' empty files say "no tensors found"."""
    from nnc.cli import main

    np.savez(tmp_path / "empty.npz")
    assert formats.detect_format(tmp_path / "empty.npz") == "npz"
    assert main(["encode", str(tmp_path / "empty.npz"), "-o", str(tmp_path / "e.nnr")]) == 1
    assert "no tensors found" in capsys.readouterr().err and not (tmp_path / "e.nnr").exists()
    with pytest.raises(formats.FormatError, match="no tensors found"):  # (the streaming encoder wrote an empty stream)
        nnc.models.encode_model_to(tmp_path / "empty.npz", tmp_path / "e.nnr")
    assert not (tmp_path / "e.nnr").exists()
