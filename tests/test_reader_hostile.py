"""Hostile and unusual model files: the readers read them exactly, or refuse them with one FormatError
naming the file, or report what they leave out; never a traceback, a dropped tensor or wrong values."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnc import formats, models, readers
from nnc.formats import FormatError, read_model
from nnc.readers import open_model


def _safetensors_raw(path, header: bytes, body: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


def _refused(path, *words):
    with pytest.raises(FormatError) as err:
        for t in readers.open_model(path):
            t.load()
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


# -- ONNX external data ----------------------------------------------------------------------


def _onnx_with_external_data(folder, tensors, keep_length=True, trailing=b""):
    """A model whose initializers all lie in folder/m.data, one after another; returns its path."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    folder.mkdir(exist_ok=True)
    path = folder / "m.onnx"
    graph = helper.make_graph([], "g", [], [], initializer=tensors)
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    if not keep_length:
        model = onnx.load(str(path), load_external_data=False)
        for init in model.graph.initializer:
            kept = [(e.key, e.value) for e in init.external_data if e.key != "length"]
            del init.external_data[:]
            for key, value in kept:
                entry = init.external_data.add()
                entry.key, entry.value = key, value
        onnx.save(model, str(path))
    with open(folder / "m.data", "ab") as fh:
        fh.write(trailing)
    return path


PACKED = ["INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2", "FLOAT6E2M3", "FLOAT6E3M2"]


@settings(max_examples=30, deadline=None)
@given(type_name=st.sampled_from(PACKED), count=st.integers(0, 9), seed=st.integers(0, 2**32 - 1),
       keep_length=st.booleans())
def test_onnx_external_packed_types_are_read_as_onnx_reads_them(tmp_path_factory, type_name, count, seed, keep_length):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    if not hasattr(onnx.TensorProto, type_name):
        return
    data_type = getattr(onnx.TensorProto, type_name)
    np_dtype = helper.tensor_dtype_to_np_dtype(data_type)
    bits = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}.get(type_name, 6)
    codes = np.random.default_rng(seed).integers(0, 2**bits, count).astype(np.uint8)
    q = numpy_helper.from_array(codes.view(np_dtype), "q")
    after = numpy_helper.from_array(np.full(7, 0xA5, np.uint8), "after")  # bytes a misread would take
    path = _onnx_with_external_data(tmp_path_factory.mktemp("m"), [q, after], keep_length, trailing=b"\xff" * 9)
    expected = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    got = readers.open_model(path)["q"].load()
    assert got.shape == expected.shape == (count,)
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))


def test_onnx_external_int4_through_read_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    q = helper.make_tensor("q", onnx.TensorProto.INT4, [4], bytes([0x21, 0x43]), raw=True)  # 1, 2, 3, 4
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "W")
    tensors, dtypes = formats.read_model(_onnx_with_external_data(tmp_path / "i4", [q, w]))
    assert tensors["q"].astype(int).tolist() == [1, 2, 3, 4] and dtypes["q"] == "int4"
    np.testing.assert_array_equal(tensors["W"], np.arange(6, dtype=np.float32).reshape(2, 3) / 7)


def _onnx_external_entries(folder, entries, data: bytes, dims=(2, 3)):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    folder.mkdir()
    t = onnx.TensorProto()
    t.name, t.data_type, t.data_location = "W", onnx.TensorProto.FLOAT, onnx.TensorProto.EXTERNAL
    t.dims.extend(dims)
    for key, value in {"location": "w.bin", **entries}.items():
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], initializer=[t])), str(path))
    (folder / "w.bin").write_bytes(data)
    return path


@pytest.mark.parametrize("length", ["8", "25", "0"])
def test_onnx_external_length_that_disagrees_with_the_shape_is_refused(tmp_path, length):
    w = np.arange(6, dtype=np.float32)
    path = _onnx_external_entries(tmp_path / "m", {"offset": "4", "length": length}, bytes(4) + w.tobytes() * 2)
    _refused(path, "'W'", f"length {length}", "24 bytes")


def test_onnx_external_length_that_agrees_is_read(tmp_path):
    w = np.arange(6, dtype=np.float32)
    path = _onnx_external_entries(tmp_path / "m", {"offset": "4", "length": "24"}, bytes(4) + w.tobytes() + b"x")
    np.testing.assert_array_equal(readers.open_model(path)["W"].load(), w.reshape(2, 3))


@pytest.mark.parametrize("key", ["offset", "length"])
@pytest.mark.parametrize("value", ["abc", "-8", "", "1.5", "+8", " 8", "\u0663"])
def test_onnx_external_offset_and_length_must_be_non_negative_integers(tmp_path, key, value):
    path = _onnx_external_entries(tmp_path / "m", {key: value}, bytes(64))
    _refused(path, "'W'", f"external data {key} {value!r} is not a non-negative integer")


def test_onnx_external_offset_past_the_end_is_refused(tmp_path):
    path = _onnx_external_entries(tmp_path / "m", {"offset": "9" * 30}, bytes(64))
    _refused(path, "'W'", "missing or too short")


# -- safetensors and index headers: a name given twice ----------------------------------------


def test_safetensors_tensor_named_twice_is_refused(tmp_path):
    header = (b'{"w": {"dtype":"F32","shape":[6],"data_offsets":[0,24]},'
              b' "w": {"dtype":"I32","shape":[4],"data_offsets":[24,40]}}')
    path = _safetensors_raw(tmp_path / "dup.safetensors", header, bytes(40))
    _refused(path, "tensor 'w' appears twice in the header")
    with pytest.raises(FormatError, match="appears twice"):
        formats.read_model(path)


def test_safetensors_key_given_twice_inside_an_entry_is_refused(tmp_path):
    header = b'{"w": {"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}}'
    _refused(_safetensors_raw(tmp_path / "k.safetensors", header, bytes(8)), "key 'dtype' appears twice")


def _checkpoint(folder, index_text, shards=("s1",)):
    folder.mkdir()
    for i, name in enumerate(shards):
        tensors = {f"t{i}": np.arange(4, dtype=np.int32) + i}
        (folder / f"{name}.safetensors").write_bytes(formats.safetensors_bytes(tensors))
    (folder / "model.safetensors.index.json").write_text(index_text)
    return folder / "model.safetensors.index.json"


def test_index_naming_a_tensor_twice_is_refused(tmp_path):
    index = _checkpoint(tmp_path / "ck", '{"weight_map": {"t0": "s1.safetensors", "t0": "s1.safetensors"}}')
    _refused(index, "tensor 't0' appears twice in the index")
    with pytest.raises(FormatError, match="appears twice"):
        readers.open_model(tmp_path / "ck")


# -- index metadata, unindexed shards ---------------------------------------------------------


@pytest.mark.parametrize("metadata", ["hello", [1, 2], 3, ""])
def test_index_metadata_that_is_not_an_object_is_refused(tmp_path, metadata):
    index = _checkpoint(tmp_path / "ck", json.dumps({"metadata": metadata, "weight_map": {"t0": "s1.safetensors"}}))
    _refused(index, "metadata is not a JSON object")


@pytest.mark.parametrize("metadata", [None, {}, {"total_size": 16}])
def test_index_metadata_object_or_null_is_accepted(tmp_path, metadata):
    index = _checkpoint(tmp_path / "ck", json.dumps({"metadata": metadata, "weight_map": {"t0": "s1.safetensors"}}))
    source = readers.open_model(index)
    assert source.checkpoint["index"]["metadata"] == (metadata or {})
    assert source.left_out == []


def test_a_shard_the_index_does_not_name_is_left_out_and_said(tmp_path):
    text = json.dumps({"weight_map": {"t0": "s1.safetensors", "t1": "s2.safetensors"}})
    _checkpoint(tmp_path / "ck", text, shards=("s1", "s2", "s3"))
    (tmp_path / "ck" / "notes.txt").write_text("not a shard")
    source = readers.open_model(tmp_path / "ck")
    assert [t.name for t in source] == ["t0", "t1"]
    assert source.left_out == ["s3.safetensors (a shard the index does not name)"]
    summary = models.encode_model_to(tmp_path / "ck", tmp_path / "m.nnr", qp=-20)
    assert summary.left_out == source.left_out


# -- zero-element tensors with huge shapes ---------------------------------------------------


@pytest.mark.parametrize("shape", [[2**40, 2**40, 0], [0, 2**62], [2**63, 0]])
def test_safetensors_empty_tensor_shape_numpy_cannot_hold_is_refused(tmp_path, shape):
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    _refused(_safetensors_raw(tmp_path / "big.safetensors", header), "'w'", "too large")


def test_safetensors_empty_tensor_with_large_dimensions_is_read(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [65536, 0, 65536], "data_offsets": [0, 0]}}).encode()
    t = readers.open_model(_safetensors_raw(tmp_path / "e.safetensors", header))["w"]
    assert t.load().shape == (65536, 0, 65536) and t.size == 0


def test_npz_empty_member_shape_numpy_cannot_hold_is_refused(tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 1, 0), np.float32))
    member = buf.getvalue().replace(b"(1, 1, 0)", f"({2**40}, {2**40}, 0)".encode())
    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", member)
    _refused(path, "w.npy", "too large")


def test_onnx_empty_initializer_shape_numpy_cannot_hold_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    t = helper.make_tensor("W", onnx.TensorProto.FLOAT, [2**40, 2**40, 0], [])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], initializer=[t])), str(path))
    _refused(path, "'W'", "too large")


# -- PyTorch: sparse and meta tensors ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_pt_sparse_tensor_is_refused(tmp_path, layout):
    torch = pytest.importorskip("torch")
    dense = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / "sparse.pt"
    torch.save({"b": torch.ones(2), "w": dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()}, path)
    _refused(path, "'w'", "sparse tensors are not supported", ".to_dense()")


def test_pt_meta_tensor_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "meta.pt"
    torch.save({"w": torch.ones(2, 3, device="meta")}, path)
    _refused(path, "'w'", "meta tensor has no data")


# -- ONNX sparse weights: left out, and said ---------------------------------------------------


def test_onnx_sparse_weights_are_left_out_and_said(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    def sparse(name):
        values = numpy_helper.from_array(np.array([7.0, 8.0], np.float32), name)
        return helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 3], np.int64), "i"), [2, 2])

    def branch(name):
        return helper.make_graph([helper.make_node("Constant", [], [name], sparse_value=sparse(name))], name, [],
                                 [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [2, 2])])

    nodes = [helper.make_node("Constant", [], ["C"], sparse_value=sparse("C")),
             helper.make_node("If", ["cond"], ["Z"], then_branch=branch("C_then"), else_branch=branch("C_else"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])], [],
                              initializer=[numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")])
    graph.sparse_initializer.append(sparse("S"))
    path = tmp_path / "sparse.onnx"
    onnx.save(helper.make_model(graph), str(path))
    source = readers.open_model(path)
    assert [t.name for t in source] == ["W"]
    assert sorted(source.left_out) == ["C (a sparse Constant)", "C_else (a sparse Constant)",
                                       "C_then (a sparse Constant)", "S (a sparse initializer)"]
    assert models.encode_model_to(path, tmp_path / "m.nnr", qp=-20).left_out == source.left_out


def _safetensors_file(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


_F32 = {"dtype": "F32"}


@pytest.mark.parametrize("header, words", [
    ({"a": dict(_F32, shape=[4], data_offsets=[0, 16]), "b": dict(_F32, shape=[4], data_offsets=[8, 24])},
     "overlaps the tensor before it"),
    ({"a": dict(_F32, shape=[6], data_offsets=[0, 24]), "b": dict(_F32, shape=[6], data_offsets=[0, 24])},
     "overlaps the tensor before it"),
    ({"a": dict(_F32, shape=[2], data_offsets=[16, 24])}, "leaves 16 bytes unused"),
    ({"a": dict(_F32, shape=[2], data_offsets=[0, 8])}, "16 bytes after the last tensor"),
    ({"a": dict(_F32, shape=[6.0], data_offsets=[0, 24])}, "not all integers"),
    ({"a": dict(_F32, shape=[True, 6], data_offsets=[0, 24])}, "not all integers"),
    ({"a": dict(_F32, shape=[0], data_offsets=[False, False]), "b": dict(_F32, shape=[6], data_offsets=[0, 24])},
     "lies outside the file"),
    ({"__metadata__": {"x": 5}, "a": dict(_F32, shape=[6], data_offsets=[0, 24])}, "JSON object of strings"),
])
def test_safetensors_headers_that_misplace_their_data_are_refused(tmp_path, header, words):
    """Before: overlapping, aliased, gapped and trailing data, float and bool dimensions were read silently (the
    safetensors format lays tensors end to end over the whole buffer)."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(_safetensors_file(header, np.arange(6, dtype=np.float32).tobytes()))
    with pytest.raises(FormatError, match=words):
        list(open_model(path))
    with pytest.raises(FormatError, match=words):
        read_model(path)


def test_a_safetensors_file_with_an_empty_tensor_beside_another_reads(tmp_path):
    header = {"b": dict(_F32, shape=[4], data_offsets=[8, 24]), "e": dict(_F32, shape=[0], data_offsets=[8, 8]),
              "a": dict(_F32, shape=[2], data_offsets=[0, 8])}
    path = tmp_path / "m.safetensors"
    path.write_bytes(_safetensors_file(header, np.arange(6, dtype=np.float32).tobytes()))
    tensors, _ = read_model(path)
    assert tensors["b"].tolist() == [2, 3, 4, 5] and tensors["e"].shape == (0,)


def test_eager_npz_reader_refuses_a_repeated_member(tmp_path):
    """Before: formats.read_model kept the last of two members named a.npy (the lazy reader refused it)."""
    import io
    import warnings
    import zipfile

    with warnings.catch_warnings(), zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        warnings.simplefilter("ignore")  # (zipfile warns of the duplicate name)
        for v in (np.ones(2), np.zeros(2)):
            b = io.BytesIO()
            np.save(b, v)
            z.writestr("a.npy", b.getvalue())
    with pytest.raises(FormatError, match="appears twice"):
        read_model(tmp_path / "d.npz")


# -- tensor names a stream cannot hold -----------------------------------------------------------


@pytest.mark.parametrize("keys", [[0, 1], ["a", 3], [("x", 1)], ["", "b"], ["a\x00b"]], ids=repr)
def test_pt_tensor_names_that_are_not_names_are_refused_by_the_reader(tmp_path, keys):
    """Before: int keys reached the encoder's name patterns and crashed (TypeError) in encode and compare."""
    torch = pytest.importorskip("torch")
    import collections

    path = tmp_path / "keys.pt"
    torch.save(collections.OrderedDict((k, torch.ones(2)) for k in keys), path)
    bad = next(k for k in keys if not (isinstance(k, str) and k and "\x00" not in k))
    _refused(path, repr(bad))
    with pytest.raises(FormatError, match=re.escape(repr(bad))):
        read_model(path)


@pytest.mark.parametrize("command", ["encode", "compare"])
def test_pt_with_int_keys_gives_one_line_in_every_command(tmp_path, capsys, command):
    torch = pytest.importorskip("torch")
    import collections

    from nnc.cli import main

    path = tmp_path / "intkeys.pt"
    torch.save(collections.OrderedDict([(0, torch.randn(2)), (1, torch.randn(3))]), path)
    args = {"encode": [path, "-o", tmp_path / "x.nnr"], "compare": [path, path]}[command]
    code = main([command, *map(str, args)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("nnc: error: "), err
    assert str(path) in lines[0] and "key 0 " in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intkeys.pt"]


# -- PyTorch entries that hold the model's weights in another form ----------------------------------------------


@pytest.mark.parametrize("entry", ["tuple", "nested", "list"])
def test_weights_held_inside_other_entries_are_refused_not_left_out(tmp_path, entry):
    """A dynamically quantised layer keeps its weights in a tuple (`_packed_params`); a nested state_dict keeps
    them in a dict: left out with a note, the stream held none of them and the command passed."""
    torch = pytest.importorskip("torch")
    held = {"tuple": (torch.ones(2, 3), torch.zeros(2)), "nested": {"weight": torch.ones(2)},
            "list": [1, [torch.ones(1)]]}[entry]
    path = tmp_path / "m.pt"
    torch.save({"scale": torch.tensor(0.5), "epoch_like": 3, "packed": held}, path)
    _refused(path, "'packed'", "holds tensors")
    out = tmp_path / "m.nnr"
    from nnc.cli import main

    assert main(["encode", str(path), "-o", str(out), "-q"]) == 1
    assert not out.exists()


def test_a_state_dict_of_no_tensors_beside_the_model_is_passed_over(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "c.pt"
    torch.save({"state_dict": {}, "model": {"w": torch.ones(3)}, "epoch": 2}, path)
    source = open_model(path)
    assert [t.name for t in source] == ["w"] and set(source.left_out) == {"state_dict", "epoch"}


def test_tensors_nested_deeper_than_a_state_dict_are_named(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "c.pt"
    torch.save({"model": {"encoder": {"w": torch.ones(3)}, "decoder": {"w": torch.ones(3)}}}, path)
    _refused(path, "nested deeper in 'model'")


def test_a_checkpoint_index_past_the_size_read_is_refused_before_parsing(tmp_path, monkeypatch):
    """A 160 MB index of empty lists took 3.75 GB to parse (a probe); indexes are capped as safetensors headers."""
    folder = tmp_path / "ck"
    folder.mkdir()
    formats.write_model(str(folder / "model-00001-of-00001.safetensors"), {"w": np.ones(2, np.float32)})
    index = {"metadata": {"x": [[]] * 2000}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [t.name for t in open_model(folder)] == ["w"]
    monkeypatch.setattr(readers, "MAX_INDEX_BYTES", 1000)
    _refused(folder / "model.safetensors.index.json", "checkpoint index of", "more than the 1,000")


def test_an_npz_archive_is_opened_once_for_all_its_tensors(tmp_path, monkeypatch):
    """Each tensor reopened the archive and read its whole directory again: 8,000 members took over 600 s."""
    import zipfile

    path = tmp_path / "m.npz"
    path.write_bytes(formats.npz_bytes({f"t{i}": np.full(2, i, np.float32) for i in range(50)}))
    opened = []
    real = zipfile.ZipFile

    class Counting(real):
        def __init__(self, *a, **k):
            opened.append(a[0])
            super().__init__(*a, **k)

    monkeypatch.setattr(zipfile, "ZipFile", Counting)
    values = [t.load() for t in open_model(path)]
    assert len(values) == 50 and float(values[49][0]) == 49.0
    assert len(opened) <= 2                      # its format told, then read: not once a tensor


def test_an_npz_member_claiming_more_than_the_archive_is_refused(tmp_path):
    """A 300-byte archive whose stored member says 4 GB read "out of memory" (its read allocated the size first)."""
    import io
    import zipfile

    path = tmp_path / "m.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**30 - 64,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("w.npy", header.getvalue() + bytes(64))
    data = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x01\x02", 20), (b"PK\x03\x04", 18)):
        struct.pack_into("<II", data, data.index(signature) + at, 0xFFFFFFF0, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    _refused(path, "w.npy", "more than the whole file")


def test_malformed_headers_and_indexes_say_what_is_wrong(tmp_path):
    """An index of [] said "TypeError: list indices must be integers or slices, not str"; a header entry that is
    not an object "'int' object is not subscriptable"; an index's NaN "ck: extra_metadata is not JSON"."""
    import json
    import struct

    from nnc import formats, readers

    header = json.dumps({"t": 5}).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(formats.FormatError, match="entry of 't' is not an object with data_offsets"):
        readers.open_model(tmp_path / "bad.safetensors")
    ck = tmp_path / "ck"
    ck.mkdir()
    formats.write_model(str(ck / "a.safetensors"), {"t": np.ones((2, 2), np.float32)})
    index = ck / "model.safetensors.index.json"
    for text, words in (
        ("[]", "a JSON list, not an object with a weight_map"),
        ('{"metadata": {"total_size": NaN}, "weight_map": {"t": "a.safetensors"}}', "NaN is not a JSON value"),
    ):
        index.write_text(text)
        with pytest.raises(formats.FormatError, match=words):
            readers.open_model(ck)


# -- a probe of hostile model files (2026-12-08) ------------------------------------------------


def test_a_pt_storage_record_shorter_than_its_tensor_is_refused(tmp_path):
    """Before: torch.load(mmap=True) read past the cut record into the next zip entry's header, and the model encoded
    with those bytes as values, exit 0 (torch.load without mmap refuses the same file)."""
    import zipfile

    torch = pytest.importorskip("torch")
    whole, cut = tmp_path / "two.pt", tmp_path / "cut.pt"
    torch.save({"a": torch.arange(4.0), "b": torch.full((64,), 7.0), "h": torch.ones(3, dtype=torch.bfloat16)}, whole)
    with zipfile.ZipFile(whole) as zin, zipfile.ZipFile(cut, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(zipfile.ZipInfo(info.filename, info.date_time), data[:4] if info.filename.endswith("/data/0")
                          else data)
    _refused(cut, "storage 0 needs 16 bytes, its record holds 4")
    assert {t.name: t.load().tolist() for t in open_model(whole)} == {"a": [0, 1, 2, 3], "b": [7.0] * 64,
                                                                      "h": [1.0] * 3}


def test_an_onnx_model_reached_by_a_symbolic_link_reads_its_own_large_tensors(tmp_path):
    """Before: a model file linked from elsewhere (the Hugging Face cache's snapshots/ and blobs/) was refused as having
    'external data outside the model's folder': its own tensors of 1024 bytes or more, read in place, resolved to the
    link's target."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    (tmp_path / "blobs").mkdir()
    (tmp_path / "snapshot").mkdir()
    values = np.arange(1024, dtype=np.float32) / 7
    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(values, "big")])
    (tmp_path / "blobs" / "abc").write_bytes(helper.make_model(graph).SerializeToString())
    link = tmp_path / "snapshot" / "model.onnx"
    link.symlink_to(tmp_path / "blobs" / "abc")
    assert np.array_equal(open_model(link)["big"].load(), values)
    assert onnx.load(str(link)).graph.initializer[0].name == "big"


def test_a_tensor_of_more_dimensions_than_numpy_holds_is_refused(tmp_path):
    """Before: a header of 100,001 dimensions passed the checks and load() raised numpy's ValueError (a traceback in
    nnc encode)."""
    shape = [1] * 100_000 + [6]
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 24]}}).encode()
    _refused(_safetensors_raw(tmp_path / "m.safetensors", header, bytes(24)), "100001 dimensions, more than the")


def test_a_safetensors_header_past_the_size_read_is_refused_before_reading(tmp_path, monkeypatch):
    """Before: read_safetensors read a header of any size the file held (3 GB: 3.7 GB of memory) before parsing it."""
    monkeypatch.setattr(formats, "MAX_SAFETENSORS_HEADER", 32)
    header = json.dumps({"w": {"dtype": "F32", "shape": [30], "data_offsets": [0, 120]}}).encode()
    path = _safetensors_raw(tmp_path / "m.safetensors", header, bytes(120))
    with pytest.raises(FormatError, match=f"header of {len(header)} bytes, more than the 32 read"):
        formats.read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")  # (and the checks before it keep their own words)
    with pytest.raises(FormatError, match="header runs past the end of the file"):
        formats.read_safetensors(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members_read_in_pieces_keep_their_values_byte_order_and_layout(tmp_path, monkeypatch, compressed):
    """The reader fills the array in pieces (it read the member whole, then copied it: twice the tensor's memory)."""
    monkeypatch.setattr(formats, "_NPY_PIECE", 7)
    rng = np.random.default_rng(0)
    arrays = {"big_endian": rng.normal(size=(3, 5)).astype(">f4"), "fortran": np.asfortranarray(rng.normal(size=(4, 6))),
              "scalar": np.array(2.5), "empty": np.zeros((0, 3)), "ints": np.arange(11, dtype=">i8"),
              "flags": np.array([True, False, True])}
    (np.savez_compressed if compressed else np.savez)(tmp_path / "m.npz", **arrays)
    for name, t in [(t.name, t) for t in open_model(tmp_path / "m.npz")]:
        got = t.load()
        assert got.shape == arrays[name].shape and np.array_equal(got, arrays[name]), name
        assert got.dtype.isnative and got.flags.c_contiguous and got.flags.writeable, name


def _cut_pt(tmp_path, extra=()):
    """A .pt of two tensors whose first storage record is cut to 4 bytes, with ``extra`` (name, bytes) entries."""
    import zipfile

    torch = pytest.importorskip("torch")
    whole, cut = tmp_path / "two.pt", tmp_path / f"cut{len(extra)}.pt"
    torch.save({"a": torch.arange(4.0), "b": torch.full((64,), 7.0)}, whole)
    with zipfile.ZipFile(whole) as zin, zipfile.ZipFile(cut, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(zipfile.ZipInfo(info.filename, info.date_time), data[:4] if info.filename.endswith("/data/0")
                          else data)
        for name, data in extra:
            zout.writestr(zipfile.ZipInfo(name), data)
    return whole, cut


def test_the_short_record_check_is_not_turned_off_by_a_second_record_of_one_name(tmp_path):
    """Before (a review of the check): a second 'top/data.pkl' entry made the check pass over the archive (not one
    data.pkl), and torch read the cut record past its end as before, exit 0."""
    import zipfile

    whole, _ = _cut_pt(tmp_path)
    with zipfile.ZipFile(whole) as z:
        pickled = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        pkl = z.read(pickled)
    _, cut = _cut_pt(tmp_path, [(pickled, pkl)])
    _refused(cut, f"the archive holds {pickled!r} twice")


def test_the_storages_reader_makes_one_stand_in_a_name_however_often_the_pickle_names_it(tmp_path):
    """Before: every GLOBAL of the pickle made a new class: a 15 MB .pt naming OrderedDict 600,000 times took
    1.6 GB to check (torch's own load 240 MB)."""
    import io

    from nnc.readers import _PickledStorages

    many = b"\x80\x02](" + b"ccollections\nOrderedDict\n" * 1000 + b"e."
    reader = _PickledStorages(io.BytesIO(many))
    assert reader.storages_of() == [] and list(reader.classes) == [("collections", "OrderedDict")]


def test_a_shard_that_is_a_folder_or_a_fifo_is_said_to_be_so_not_missing(tmp_path):
    """Before: a shard named by the index that was a folder, a FIFO or a broken link was reported 'missing'."""
    import os

    folder = tmp_path / "ck"
    folder.mkdir()
    formats.write_model(str(folder / "a.safetensors"), {"w": np.ones(2, np.float32)})
    index = {"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "b.safetensors").mkdir()
    _refused(folder / "model.safetensors.index.json", "'b.safetensors' is a folder, not a file")
    (folder / "b.safetensors").rmdir()
    os.mkfifo(folder / "b.safetensors")
    _refused(folder / "model.safetensors.index.json", "'b.safetensors' is not a regular file")
    (folder / "b.safetensors").unlink()
    (folder / "b.safetensors").symlink_to(tmp_path / "nowhere")
    _refused(folder / "model.safetensors.index.json", "'b.safetensors' is a broken symbolic link")
    (folder / "b.safetensors").unlink()
    _refused(folder / "model.safetensors.index.json", "'b.safetensors' is missing")


def test_a_safetensors_header_of_more_objects_than_tensors_a_file_holds_is_refused_before_parsing(tmp_path, monkeypatch):
    """Before: a 91 MB header of 7 million empty objects (under the size cap) took 2.2 GB and 20 s to parse before its
    first entry was refused (the hostile-files probe)."""
    monkeypatch.setattr(readers, "MAX_SAFETENSORS_OBJECTS", 100)
    header = json.dumps({f"{i:07d}": {} for i in range(150)}).encode()
    _refused(_safetensors_raw(tmp_path / "m.safetensors", header), "header of 151 objects, more than the 100")
    fine = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(99)}
    path = _safetensors_raw(tmp_path / "ok.safetensors", json.dumps(fine).encode(), bytes(4 * 99))
    assert len(open_model(path)) == 99
