"""nnc.formats.OnnxWriter: ONNX models laid out from their template and written one weight at a time."""

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nnc import formats  # noqa: E402

# ONNX types of weights, with values every one of them holds exactly (bfloat16 and float8 included)
TYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "float64": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16,
    "float8_e4m3fn": TensorProto.FLOAT8E4M3FN,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "bool": TensorProto.BOOL,
}


def values_of(dtype, shape, rng):
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.startswith(("int", "uint")):
        return rng.integers(0 if dtype.startswith("u") else -100, 100, shape).astype(dtype)
    return (rng.integers(-8, 8, shape) / 4).astype(np.float32)  # exact in every float type here


def tensor(name, dtype, values):
    """A TensorProto of ``values`` (exact in ``dtype``) as onnx's own helpers make it."""
    return helper.make_tensor(name, TYPES[dtype], values.shape, values.reshape(-1).tolist())


def template(weights, path, external, rng):
    """A model holding ``weights`` {name: (dtype, values)} as initializers, the last (if floating) as a Constant
    node and,
    when there are several, one in the branch of an If node; with a STRING initializer and an int64 one beyond
    int32 that stay in the graph."""
    names = list(weights)
    floating = ("float32", "float16", "float64", "bfloat16")  # (integer Constants are graph structure)
    constant = names[-1] if weights[names[-1]][0] in floating else None
    in_branch = names[0] if len(names) > 2 else None
    inits = [tensor(n, *weights[n]) for n in names if n not in (constant, in_branch)]
    inits.append(helper.make_tensor("labels", TensorProto.STRING, [2], [b"cat", b"dog"]))
    inits.append(numpy_helper.from_array(np.array([2**40, -1], np.int64), "ends"))
    nodes = []
    if constant is not None:
        nodes.append(helper.make_node("Constant", [], [constant], value=tensor("value", *weights[constant])))
    if in_branch is not None:
        branch = helper.make_graph(
            [helper.make_node("Identity", [in_branch], ["z"])], "branch", [],
            [helper.make_tensor_value_info("z", TYPES[weights[in_branch][0]], None)], [tensor(in_branch, *weights[in_branch])],
        )
        empty = helper.make_graph(
            [helper.make_node("Identity", ["cond"], ["z"])], "empty", [],
            [helper.make_tensor_value_info("z", TensorProto.BOOL, None)],
        )
        nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=empty))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [], inits)
    model = helper.make_model(graph)
    if external:
        onnx.save(model, path, save_as_external_data=True, location=os.path.basename(path) + ".bin", size_threshold=0)
    else:
        onnx.save(model, path)


def expected(path, new):
    """The template with its weights replaced by onnx's API (numpy_helper.from_array, raw data): the reference."""
    model = onnx.load(path)
    found = formats._onnx_weights(model.graph)
    for name, t in found.items():
        dtype, values = new[name]
        arr = values.astype(helper.tensor_dtype_to_np_dtype(TYPES[dtype]))
        for field in formats._ONNX_DATA_FIELDS:
            t.ClearField(field)
        t.MergeFrom(numpy_helper.from_array(arr, t.name))
    return model


def normalised(model):
    """``model`` with each tensor's data_location DEFAULT left unset, as onnx.load leaves it set (explicitly) for
    data it read from an external file."""
    for t in formats._onnx_tensors(model.graph):
        if t.data_location == TensorProto.DEFAULT:
            t.ClearField("data_location")
    return model


weight_lists = st.lists(
    st.tuples(st.sampled_from(sorted(TYPES)), st.lists(st.integers(0, 40), max_size=3).map(tuple)),
    min_size=1, max_size=5,
)


@given(weights=weight_lists, external=st.booleans(), small_limit=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_written_in_any_order_onnx_reads_the_template_with_the_new_weights(weights, external, small_limit, seed):
    rng = np.random.default_rng(seed)
    old = {f"w{i}": (dtype, values_of(dtype, shape, rng)) for i, (dtype, shape) in enumerate(weights)}
    new = {name: (dtype, values_of(dtype, v.shape, rng)) for name, (dtype, v) in old.items()}
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "t.onnx")
        template(old, source, external, rng)
        out = os.path.join(folder, "out", "m.onnx")
        os.mkdir(os.path.dirname(out))
        limit = formats.ONNX_INLINE_LIMIT
        if small_limit:  # as if the model passed 2 GiB: the weights go to external data
            formats.ONNX_INLINE_LIMIT = 64
        try:
            written = formats.write_onnx(out, {n: v for n, (_, v) in new.items()}, {n: d for n, (d, _) in new.items()}, source)
        finally:
            formats.ONNX_INLINE_LIMIT = limit
        names = sorted(os.path.basename(p) for p in written)
        assert sorted(os.listdir(os.path.dirname(out))) == names  # no temporary file left
        assert names in (["m.onnx"], ["m.onnx", "m.onnx.data"])
        assert normalised(onnx.load(out)) == normalised(expected(source, new))


def test_a_template_of_other_weights_is_refused_before_anything_is_written(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "t.onnx"
    template({"a": ("float32", values_of("float32", (4, 4), rng)), "b": ("int8", values_of("int8", (3,), rng))},
             str(source), False, rng)
    out = tmp_path / "o" / "m.onnx"
    out.parent.mkdir()
    with pytest.raises(formats.FormatError, match=r"'c' is not in the template; 'a' has shape \(4, 5\).*'b' is int16"):
        formats.write_onnx(out, {"a": np.zeros((4, 5)), "b": np.zeros(3, np.int16), "c": np.zeros(1)},
                           {"b": "int16"}, source)
    assert os.listdir(out.parent) == []


def test_gaps_are_filled_by_decoding_into_them(tmp_path):
    """The writer hands out each weight's place in the file (a map of the template's type); a value decoded
    there is the file's without another copy."""
    rng = np.random.default_rng(1)
    source = tmp_path / "t.onnx"
    template({"a": ("float16", values_of("float16", (8, 8), rng)), "b": ("float32", values_of("float32", (2,), rng))},
             str(source), False, rng)
    writer = formats.OnnxWriter(tmp_path / "m.onnx", "m.onnx", {"a": ((8, 8), "float16"), "b": ((2,), "float32")},
                                source, None)
    place = writer.buffer("a")
    assert place.dtype == np.dtype("<f2") and place.shape == (8, 8)
    place[...] = 0.5
    writer.write("a", place)
    writer.write("b", np.array([1.0, 2.0]))
    writer.close()
    model = onnx.load(tmp_path / "m.onnx")
    got = {name: numpy_helper.to_array(t) for name, t in formats._onnx_weights(model.graph).items()}
    assert got["a"].dtype == np.float16 and (got["a"] == 0.5).all() and got["b"].tolist() == [1.0, 2.0]


CHILD = textwrap.dedent(
    """
    import sys
    import onnx
    import nnc.cli
    def hwm():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    before = hwm()
    assert nnc.cli.main(["decode", sys.argv[1], "-o", sys.argv[2], "--template", sys.argv[3], "-q"]) == 0
    print(before, hwm())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc (Linux only)")
def test_decoding_to_onnx_holds_one_tensor_not_the_model(tmp_path):
    """`nnc decode -o model.onnx --template` built the whole model in memory (4.5 times it); now each weight is
    decoded into its place in the file."""
    from test_scale_decode import many_unit_stream

    src = tmp_path / "many.nnr"
    units, values = 512, 65536  # 512 raw tensors of 256 KiB: 128 MiB
    x = many_unit_stream(src, units=units, values=values)
    inits = [numpy_helper.from_array(np.zeros(values, np.float32), f"t{i:05d}") for i in range(units)]
    source = tmp_path / "t.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], inits)), source, save_as_external_data=True,
              location="t.bin")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(source)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    before, peak = map(float, r.stdout.split()[-2:])
    assert peak - before < 48, f"decoding a 128 MiB stream to .onnx raised the peak by {peak - before:.0f} MB"
    assert sorted(os.listdir(out.parent)) == ["model.onnx", "model.onnx.data"]
    model = onnx.load(out)
    assert len(model.graph.initializer) == units
    for i in (0, units - 1):
        np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[i]), x)


@given(weights=weight_lists, seed=st.integers(0, 2**32 - 1), cut=st.integers(0, 10**6))
def test_a_graph_opened_without_its_data_is_the_model_once_the_data_is_read(weights, seed, cut):
    """load_onnx_graph leaves raw data of 1 KiB or more in the file (external data in the file itself); read
    back, the model is onnx.load's. A file cut anywhere opens as onnx.load opens it, or fails as it fails."""
    from onnx.external_data_helper import load_external_data_for_model

    rng = np.random.default_rng(seed)
    old = {f"w{i}": (dtype, values_of(dtype, shape, rng)) for i, (dtype, shape) in enumerate(weights)}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "t.onnx")
        template(old, path, False, rng)
        model = onnx.load(path)
        for t in formats._onnx_tensors(model.graph):  # as raw data, the way numpy_helper writes tensors
            if t.data_type != TensorProto.STRING:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
        onnx.save(model, path)
        graph = formats.load_onnx_graph(path)
        left = [t for t in formats._onnx_tensors(graph.graph) if t.data_location == TensorProto.EXTERNAL]
        assert all(len(t.raw_data) == 0 for t in left)
        big = [t for t in formats._onnx_tensors(model.graph) if len(t.raw_data) >= formats.ONNX_LEFT_IN_FILE]
        assert len(left) == len(big)
        load_external_data_for_model(graph, folder)
        assert normalised(graph) == normalised(onnx.load(path))
        with open(path, "rb") as fh:
            data = fh.read()
        with open(path, "wb") as fh:
            fh.write(data[: cut % (len(data) + 1)])
        try:
            theirs = onnx.load(path, load_external_data=False)
        except Exception as exc:
            with pytest.raises(type(exc)):
                formats.load_onnx_graph(path)
        else:
            mine = formats.load_onnx_graph(path)
            load_external_data_for_model(mine, folder)
            assert normalised(mine) == normalised(theirs)


@pytest.mark.parametrize("where", ["op_type", "initializer name"])
def test_names_that_are_not_text_are_a_format_error(tmp_path, where):
    """Protobuf gives a string field that is not UTF-8 as bytes: the reader raised TypeError (found by fuzzing)."""
    from nnc import readers

    w = numpy_helper.from_array(np.ones((16, 16), np.float32), "Wxyz")
    graph = helper.make_graph([helper.make_node("Abcdefg", ["Wxyz"], ["y"])], "g", [], [], [w])
    data = helper.make_model(graph).SerializeToString()
    old = b"Abcdefg" if where == "op_type" else b"Wxyz"
    data = data.replace(old, b"\xff\xfe" + old[2:])
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(formats.FormatError, match=str(path)):
        [t.load() for t in readers.open_model(path)]


def test_template_misuse_is_refused_before_decoding(tmp_path, capsys):
    """--template into a folder was ignored (a safetensors file written, exit 0); an .onnx output without one
    failed only after the whole stream had decoded; an unknown extension is still named as such."""
    from nnc import cli

    rng = np.random.default_rng(2)
    source = tmp_path / "t.onnx"
    template({"a": ("float32", values_of("float32", (8, 8), rng))}, str(source), False, rng)
    stream = tmp_path / "m.nnr"
    assert cli.main(["encode", str(source), "-o", str(stream), "-q"]) == 0
    capsys.readouterr()
    cases = {
        f"{tmp_path / 'folder'}/": (True, "a template is for ONNX output only"),
        str(tmp_path / "o.npz"): (True, "a template is for ONNX output only"),
        str(tmp_path / "o.onnx"): (False, "writing ONNX needs the original model as a template"),
        str(tmp_path / "o.xyz"): (True, "cannot tell the output format from the extension"),
    }
    for output, (with_template, message) in cases.items():
        argv = ["decode", str(stream), "-o", output, "-q"] + (["--template", str(source)] if with_template else [])
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("nnc: error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nnr", "t.onnx"]
    assert cli.main(["decode", str(stream), "-o", str(tmp_path / "o.onnx"), "--template", str(source), "-q"]) == 0


_CUT_WHILE_READ = textwrap.dedent(
    """
    import os, sys
    from nnc import formats
    path = sys.argv[1]
    walk = formats._without_raw_data
    def cut_first(data, start, end, kind, location, depth):
        if depth == 0:
            os.truncate(path, 100)  # another program cuts the file after it was mapped
        return walk(data, start, end, kind, location, depth)
    formats._without_raw_data = cut_first
    try:
        formats.load_onnx_graph(path)
    except formats.FormatError as exc:
        print(exc)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGBUS is a POSIX signal")
def test_an_onnx_file_cut_while_its_graph_is_read_is_a_format_error_not_a_sigbus(tmp_path):
    """load_onnx_graph maps the file: a page past a cut would end the process (SIGBUS) without the guard."""
    pytest.importorskip("nnc._mapguard", reason="the compiled module nnc._mapguard is not built")
    inits = [numpy_helper.from_array(np.ones((64, 64), np.float32), f"w{i}") for i in range(8)]
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], inits)), path)
    run = subprocess.run([sys.executable, "-c", _CUT_WHILE_READ, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run
    assert "was cut by another program" in run.stdout and str(path) in run.stdout


@pytest.mark.parametrize("location", ["../outside.bin", "missing.bin"])
def test_a_template_whose_external_data_leaves_its_folder_or_is_missing_is_refused(tmp_path, capsys, location):
    """The template's kept tensors (here an int64 initializer beyond int32, which stays in the graph) were read by
    onnx's own external-data loader; they go through the reader's, which keeps to the model's folder."""
    from nnc.cli import main

    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.arange(4, dtype=np.int64).tobytes() * 4)
    big = numpy_helper.from_array(np.array([2**40, 1], np.int64), "bound")
    weight = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])], [weight, big])
    template = folder / "t.onnx"
    onnx.save(helper.make_model(graph), str(template))
    stream = tmp_path / "s.nnr"
    assert main(["encode", str(template), "-o", str(stream), "-q"]) == 0
    model = onnx.load(str(template))
    bound = next(t for t in model.graph.initializer if t.name == "bound")
    bound.ClearField("raw_data")
    bound.data_location = TensorProto.EXTERNAL
    bound.external_data.add(key="location", value=location)
    bound.external_data.add(key="length", value="16")
    onnx.save(model, str(template))
    out = tmp_path / "out.onnx"
    capsys.readouterr()
    assert main(["decode", str(stream), "-o", str(out), "--template", str(template), "-q"]) == 1
    err = capsys.readouterr().err
    assert str(template) in err and len(err.strip().splitlines()) == 1, err
    assert ("outside the model's folder" if location.startswith("..") else "missing") in err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["model", "outside.bin", "s.nnr"]


def test_an_output_whose_weights_all_stay_inline_gets_no_empty_data_file(tmp_path):
    """Before: a template with external data made the output write OUTPUT.onnx.data, left empty when every weight
    was under 1 KiB and so written inline (the graph names no such file)."""
    import nnc
    from nnc.cli import main

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])], initializer=[w])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "t.onnx"), save_as_external_data=True,
                    location="t.onnx.data", size_threshold=0)
    assert main(["encode", str(tmp_path / "t.onnx"), "-o", str(tmp_path / "m.nnr"), "-q"]) == 0
    assert main(["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "o.onnx"), "--template",
                 str(tmp_path / "t.onnx"), "-q"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["m.nnr", "o.onnx", "t.onnx", "t.onnx.data"]
    model = onnx.load(str(tmp_path / "o.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]),
                                  nnc.decode(tmp_path / "m.nnr")["w"])
