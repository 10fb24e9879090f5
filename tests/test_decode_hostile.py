"""Hostile or odd inputs get an error or are ignored, never a traceback or a changed value.

nnc's metadata in the topology unit (spec 6.2.1: recorded shapes and dtypes), a tensor named
``__metadata__`` written to safetensors, ``nnc compare`` on inf/NaN and dtypes, the numcodecs
codec's ``out=``, and ``nnc verify`` selections.
"""

import json
import math

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnc
from nnc import cli
from nnc import container as C
from nnc.codec import NNC
from nnc.decoder import Decoder, exact_integers, recorded_dtype, recorded_shape, restore_model_view
from nnc.errors import DecodeError, ManifestError, OutputBufferError
from nnc.formats import FormatError, read_model
from nnc.models import compare_tensors
from nnc.verify import NNCAPIAdapter, describe_output, verify_suite
from nnc.writers import decode_to_path

W = np.arange(64, dtype=np.float32).reshape(8, 8) / 10
I = np.array([300, -5, 70000], np.int32)  # noqa: E741
BASE = nnc.Encoder(qp=-30).encode({"w": W, "i": I}).stream
NUMPY_SHAPES = {"w": (8, 8), "i": (3,)}


def with_metadata(stream: bytes, **entries) -> bytes:
    """The stream with ``entries`` set in nnc's JSON of its topology unit."""
    for unit in C.iter_units(stream):
        if unit.type == C.NNR_TPL:
            meta = json.loads(unit.header.get("data") or '{"nnc": {"version": 1}}')
            meta["nnc"].update(entries)
            tpl = C.build_tpl(data=json.dumps(meta, separators=(",", ":")))
            return stream[: unit.offset] + tpl + stream[unit.offset + unit.size :]
    raise AssertionError("no topology unit")


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def decoded_files(stream, tmp_path):
    """{extension: (tensors, dtypes)} of the stream decoded to each file format."""
    out = {}
    for ext in ("safetensors", "npz", "pt"):
        if ext == "pt":
            pytest.importorskip("torch")
        path = tmp_path / f"out.{ext}"
        decode_to_path(stream, path)
        out[ext] = read_model(path)
        path.unlink()
    return out


# -- recorded shapes (spec 6.2.1) ---------------------------------------------------------------


def test_the_extra_metadata_of_the_encoder_reaches_the_stream_but_not_its_own_entries():
    stream = nnc.Encoder(qp=-30).encode({"w": W, "i": I}, extra_metadata={"note": {"w": [-1, -64]}}).stream
    assert Decoder(stream).metadata["note"] == {"w": [-1, -64]}
    with pytest.raises(nnc.EncodeError, match="cannot set 'shapes'"):  # (hostile shapes: with_metadata)
        nnc.Encoder(qp=-30).encode({"w": W}, extra_metadata={"shapes": {"w": [-1, -64]}})


@pytest.mark.parametrize("shape", [[-1, -64], [True, 64], [64.0], [2, 32.5], [2**70, 0], ["8", 8], [[8], 8], [-8, -8]])
def test_a_recorded_shape_that_is_not_of_non_negative_integers_is_ignored(tmp_path, shape):
    # [-1, -64] was a ValueError traceback, [True, 64] a TypeError (their products equal the size)
    stream = with_metadata(BASE, shapes={"w": shape})
    dec = Decoder(stream)
    tensors, _ = restore_model_view(dec.decode(), dec.metadata)
    assert tensors["w"].shape == (8, 8) and dec._out_shapes(dec.info("w")) == [(8, 8)]
    for tensors, _ in decoded_files(stream, tmp_path).values():
        assert tensors["w"].shape == (8, 8)


@given(st.lists(st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.floats(allow_nan=True)), max_size=6))
def test_a_recorded_shape_applies_only_as_the_rule_says(shape):
    applies = len(shape) <= 32 and all(type(d) is int and 0 <= d <= 64 for d in shape) and math.prod(shape) == 64
    metadata = {"shapes": {"w": shape}}
    assert recorded_shape(metadata, "w", 64) == (tuple(shape) if applies else None)
    tensors, _ = restore_model_view({"w": W}, metadata)  # never raises
    assert tensors["w"].shape == (tuple(shape) if applies else (8, 8))


def test_a_zero_d_shape_is_still_restored(tmp_path):
    stream = nnc.encode({"step": np.int64(7), "w": W}, qp=-20)
    for tensors, dtypes in decoded_files(stream, tmp_path).values():
        assert tensors["step"].shape == () and dtypes["step"] == "int64" and int(tensors["step"]) == 7


# -- recorded dtypes (spec 6.2.1) ---------------------------------------------------------------

IGNORED_ON_FLOATS = [
    "U8",
    "object",
    "datetime64[ns]",
    ">f4",
    "complex64",
    "float128",
    "S4",
    "i4,i4",
    "(2,)i4",
    "a",
    "whatever",
    "",
    5,
    None,
    ["int8"],
]


@pytest.mark.parametrize("dtype", IGNORED_ON_FLOATS)
def test_a_recorded_dtype_outside_the_rule_is_ignored_in_every_path(tmp_path, dtype):
    # U8, datetime64 and >f4 were tracebacks; object gave an array of Python objects
    stream = with_metadata(BASE, dtypes={"w": dtype})
    dec = Decoder(stream)
    tensors, dtypes = restore_model_view(dec.decode(), dec.metadata)
    assert tensors["w"].dtype == np.float32 and dtypes["w"] == "float32"
    assert set(dec._out_dtypes(dec.info("w"))) == {"float32", "float16", "float64", "bfloat16"}
    for tensors, dtypes in decoded_files(stream, tmp_path).values():
        assert dtypes["w"] == "float32" and np.array_equal(tensors["w"], nnc.decode(BASE)["w"])
    assert list(NNCAPIAdapter()(stream)) == ["w", "i"]  # its caller arrays follow the same rule


@given(st.text(max_size=12))
def test_any_recorded_dtype_name_gives_an_allowed_dtype_or_none(name):
    for decoded in ("float32", "int32"):
        got = recorded_dtype({"dtypes": {"x": name}}, "x", decoded)
        if got is None:
            continue
        if nnc.narrow_floats.is_narrow(got):
            assert decoded == "float32"
            continue
        dtype = np.dtype(got)
        assert dtype.isnative and dtype.kind in ("biuf" if decoded == "float32" else "biu") and dtype.itemsize <= 8


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "bfloat16", "float16", "float64"])
def test_a_float_dtype_recorded_on_an_integer_tensor_is_ignored(tmp_path, dtype):
    # float8_e4m3fn on the int32 [300, -5, 70000] was written saturated (288, 448) with exit status 0
    stream = with_metadata(BASE, dtypes={"i": dtype})
    dec = Decoder(stream)
    assert restore_model_view(dec.decode(), dec.metadata)[0]["i"].tolist() == I.tolist()
    assert dec._out_dtypes(dec.info("i")) == ["int32"]
    for ext, (tensors, dtypes) in decoded_files(stream, tmp_path).items():
        assert dtypes["i"] == "int32" and tensors["i"].tolist() == I.tolist(), ext


@pytest.mark.parametrize("dtype", ["uint8", "int16", "bool", "uint64"])
def test_an_integer_dtype_that_cannot_hold_the_values_is_refused(tmp_path, capsys, dtype):
    # uint8 wrote 300 as 44, with exit status 0
    stream = with_metadata(BASE, dtypes={"i": dtype})
    dec = Decoder(stream)
    with pytest.raises(DecodeError, match="'i'") as caught:
        restore_model_view(dec.decode(), dec.metadata)
    assert caught.value.clause == "6.2.1"
    with pytest.raises(DecodeError, match="'i'"):
        dec.decode_tensor("i", out=np.empty(3, dtype))  # np.copyto(casting="unsafe") wrapped
    src = tmp_path / "m.nnr"
    src.write_bytes(stream)
    for ext in ("safetensors", "npz", "pt"):
        code, _, err = run_cli(capsys, "decode", src, "-o", tmp_path / f"o.{ext}", "-q")
        assert code == 1 and err.startswith(f"nnc: error: {src}: ") and err.count("\n") == 1, err
        assert "Traceback" not in err and "[spec 6.2.1]" in err
        assert not (tmp_path / f"o.{ext}").exists()
    code, _, err = run_cli(capsys, "decode", src, "-o", tmp_path / "o.onnx", "-q")  # (refused before decoding)
    assert code == 1 and err == f"nnc: error: {tmp_path / 'o.onnx'}: writing ONNX needs the original model as a template (--template ORIGINAL.onnx)\n"
    assert not (tmp_path / "o.onnx").exists()
    code, _, err = run_cli(capsys, "decode", src, "-o", f"{tmp_path / 'folder'}/", "-q")
    assert code == 1 and "[spec 6.2.1]" in err and not (tmp_path / "folder").exists()
    np.savez(tmp_path / "m.npz", w=W, i=I)
    code, _, err = run_cli(capsys, "compare", tmp_path / "m.npz", src, "-q")
    assert code == 1 and err.startswith(f"nnc: error: {src}: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nnr", "m.npz"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e5m2", "float16"])
def test_a_float_dtype_recorded_on_a_float_tensor_is_restored(tmp_path, dtype):
    stream = with_metadata(BASE, dtypes={"w": dtype})
    dec = Decoder(stream)
    assert restore_model_view(dec.decode(), dec.metadata)[1]["w"] == dtype
    for ext, (tensors, dtypes) in decoded_files(stream, tmp_path).items():
        in_npz = "float32" if ext == "npz" and nnc.narrow_floats.is_narrow(dtype) else dtype  # npz: no such dtype
        assert dtypes["w"] == in_npz and tensors["w"].shape == (8, 8), ext


def test_an_integer_dtype_that_holds_the_values_is_restored(tmp_path):
    stream = with_metadata(BASE, dtypes={"i": "int64"})
    for tensors, dtypes in decoded_files(stream, tmp_path).values():
        assert dtypes["i"] == "int64" and tensors["i"].tolist() == I.tolist()
    out = np.empty(3, np.int64)
    assert Decoder(stream).decode_tensor("i", out=out) is out and out.tolist() == I.tolist()


def test_a_lossily_coded_integer_tensor_is_rounded_not_truncated(tmp_path):
    ints = np.random.default_rng(0).integers(-100000, 100000, 1000).astype(np.int32)
    stream = nnc.encode({"i": ints, "w": W}, lossless_int=False, qp=3)
    floats = nnc.decode(stream)["i"]
    assert not np.array_equal(floats, np.rint(floats))  # the case: values between integers
    for tensors, dtypes in decoded_files(stream, tmp_path).values():
        assert dtypes["i"] == "int32" and np.array_equal(tensors["i"], np.rint(floats).astype(np.int32))
    out = np.empty(1000, np.int32)
    Decoder(stream).decode_tensor("i", out=out)
    assert np.array_equal(out, np.rint(floats))


def test_a_float_tensor_recorded_as_integers_refuses_values_out_of_range_and_nan():
    stream = with_metadata(nnc.encode({"w": np.array([1.0, 2.0, 300.0], np.float32)}, qp=-30), dtypes={"w": "int8"})
    with pytest.raises(DecodeError, match="int8"):
        Decoder(stream).decode_tensor("w", out=np.empty(3, np.int8))
    stream = with_metadata(nnc.encode({"w": np.array([1.0, np.nan], np.float32)}, qp=-30), dtypes={"w": "int8"})
    dec = Decoder(stream)
    with pytest.raises(DecodeError, match="int8"):
        restore_model_view(dec.decode(), dec.metadata)


def test_the_check_of_a_caller_array_covers_every_slice():
    values = np.zeros((1 << 20) + 5, np.int32)
    values[-1] = 40000  # in the second slice of Decoder._fill
    stream = with_metadata(nnc.encode({"i": values}), dtypes={"i": "int16"})
    with pytest.raises(DecodeError, match="40000"):
        Decoder(stream).decode_tensor("i", out=np.empty(values.size, np.int16))


@given(
    st.one_of(
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8).map(lambda v: np.array(v, np.int64)),
        st.lists(st.floats(width=32), max_size=8).map(lambda v: np.array(v, np.float32)),
    ),
    st.sampled_from(["bool", "int8", "uint8", "int16", "uint32", "int64", "uint64"]),
)
def test_exact_integers_keeps_every_value_or_refuses(values, dtype):
    lowest, highest = (0, 1) if dtype == "bool" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    nearest = [v if isinstance(v, int) else int(np.rint(v)) if math.isfinite(v) else None for v in values.tolist()]
    fits = all(v is not None and lowest <= v <= highest for v in nearest)
    try:
        got = exact_integers("x", values, dtype)
    except DecodeError as exc:
        assert not fits and exc.clause == "6.2.1"
        return
    assert fits and got.dtype == np.dtype(dtype) and [int(v) for v in got.tolist()] == nearest


# -- a tensor named __metadata__ into safetensors ---------------------------------------------


def test_a_tensor_named_metadata_is_refused_by_the_safetensors_writer(tmp_path, capsys):
    # it was dropped silently: its header entry is the file's metadata key
    stream = nnc.encode({"__metadata__": np.ones(3, np.float32), "w": W}, qp=-20)
    for target in (tmp_path / "o.safetensors", f"{tmp_path / 'folder'}/"):
        with pytest.raises(FormatError, match="__metadata__"):
            decode_to_path(stream, target)
    assert list(tmp_path.iterdir()) == []
    src = tmp_path / "m.nnr"
    src.write_bytes(stream)
    code, _, err = run_cli(capsys, "decode", src, "-o", tmp_path / "o.safetensors")
    assert code == 1 and err.count("\n") == 1 and "o.safetensors" in err and "__metadata__" in err
    assert [p.name for p in tmp_path.iterdir()] == ["m.nnr"]
    decode_to_path(stream, tmp_path / "o.npz")  # a format that can hold it
    assert np.array_equal(read_model(tmp_path / "o.npz")[0]["__metadata__"], np.ones(3))


# -- nnc compare ------------------------------------------------------------------------------


@pytest.mark.parametrize("special", [np.inf, -np.inf, np.nan])
def test_compare_fails_on_inf_or_nan_against_another_value(tmp_path, capsys, special):
    # inf against 2.0 was "ValueError: math domain error"; NaN against 5.0 printed SNR nan and exit 0
    a, b = np.array([1.0, special, 3.0], np.float32), np.array([1.0, 2.0, 3.0], np.float32)
    np.savez(tmp_path / "a.npz", w=a)
    np.savez(tmp_path / "b.npz", w=b)
    for first, second in (("a", "b"), ("b", "a")):
        code, out, err = run_cli(capsys, "compare", tmp_path / f"{first}.npz", tmp_path / f"{second}.npz")
        assert code == 1 and "Traceback" not in err and "w: 1 inf or NaN" in err, err
        assert " -inf " in out and "nan" not in out.lower()
    code, out, err = run_cli(capsys, "compare", tmp_path / "a.npz", tmp_path / "a.npz", "--json")
    assert code == 0 and json.loads(out)["passed"]  # the same inf or NaN on both sides is no error


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.5, -2.0, np.inf, -np.inf, np.nan]), st.sampled_from([0.5, -2.0, np.inf, -np.inf, np.nan])
        ),
        min_size=1,
        max_size=8,
    )
)
def test_compare_tensors_counts_the_inf_and_nan_that_differ(pairs):
    a, b = (np.array([p[k] for p in pairs], np.float32) for k in (0, 1))
    differ = sum(
        not (x == y or (np.isnan(x) and np.isnan(y))) and not (np.isfinite(x) and np.isfinite(y)) for x, y in pairs
    )
    row = compare_tensors({"w": a}, {"w": b})["tensors"][0]
    assert row["nonfinite_mismatches"] == differ
    assert not math.isnan(row["snr_db"]) and not math.isnan(row["max_abs_error"])
    if differ:
        assert row["snr_db"] == -math.inf and row["max_abs_error"] == math.inf


@pytest.mark.parametrize(
    "a, b",
    [
        (np.float32(1.5), np.float64(1.5)),
        (np.int64(7), np.array([7], np.int32)),
        (np.ones(3, np.float16), np.ones(3, np.float32)),
    ],
)
def test_compare_reports_and_fails_on_another_dtype(tmp_path, capsys, a, b):
    # both were reported exact (SNR inf), exit status 0
    np.savez(tmp_path / "a.npz", t=a)
    np.savez(tmp_path / "b.npz", t=b)
    code, out, err = run_cli(capsys, "compare", tmp_path / "a.npz", tmp_path / "b.npz")
    want = f"dtype {np.asarray(a).dtype} against {np.asarray(b).dtype}"
    assert code == 1 and want in out and f"nnc: t: {want}" in err, (out, err)
    assert " exact " not in out
    code, out, _ = run_cli(capsys, "compare", tmp_path / "a.npz", tmp_path / "b.npz", "--json")
    result = json.loads(out)
    assert code == 1 and result["total"]["dtype_mismatches"] == ["t"] and not result["passed"]


def test_compare_of_a_stream_with_its_model_still_passes(tmp_path, capsys):
    model = {"w": W, "step": np.int64(3), "h": np.ones(4, np.float16)}
    np.savez(tmp_path / "m.npz", **model)
    (tmp_path / "m.nnr").write_bytes(nnc.encode(model, qp=-20))
    code, out, err = run_cli(capsys, "compare", tmp_path / "m.npz", tmp_path / "m.nnr")
    assert code == 0, err


# -- the numcodecs codec's out= ----------------------------------------------------------------


def test_codec_decode_fills_a_non_contiguous_out():
    # a copy of it was filled and out returned unchanged
    codec = NNC(qp=-30)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    big = np.zeros((3, 8), np.float32)
    out = big[:, ::2]
    assert codec.decode(codec.encode(x), out=out) is out
    assert np.array_equal(out, codec.decode(codec.encode(x)).reshape(3, 4)) and not big[:, 1::2].any()
    with pytest.raises(OutputBufferError, match="not C-contiguous"):
        codec.decode(codec.encode(x), out=np.zeros((3, 8), np.int32)[:, ::2])


# -- nnc verify --------------------------------------------------------------------------------


def make_suite(folder, streams=None, sequence=None):
    stream = nnc.encode({"w": np.ones((2, 2), np.float32)}, qp=-8)
    (folder / "ok.nnr").write_bytes(stream)
    entry = {
        "name": "ok",
        "group": "profile-1",
        "profile": 1,
        "file": "ok.nnr",
        "expected": describe_output(nnc.decode(stream)),
        "sequence": sequence,
    }
    (folder / "manifest.json").write_text(json.dumps({"streams": [entry] if streams is None else streams}))
    return folder


def test_verify_takes_a_null_sequence_as_none(tmp_path, capsys):
    # AttributeError: 'NoneType' object has no attribute 'get'
    suite = make_suite(tmp_path)
    assert [r.passed for r in verify_suite(suite)] == [True]
    assert run_cli(capsys, "verify", suite, "-q")[0] == 0


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--stream", "typo_name"], "no stream named 'typo_name'"),
        (["--group", "nogroup"], "no group named 'nogroup'"),
        ([], "no stream to verify"),
    ],
)
def test_verify_refuses_a_selection_of_no_stream(tmp_path, capsys, argv, words):
    # each printed "0 passed, 0 failed" and exit status 0
    suite = make_suite(tmp_path, streams=[] if not argv else None)
    code, out, err = run_cli(capsys, "verify", suite, *argv)
    assert code == 1 and err.startswith(f"nnc: error: {suite / 'manifest.json'}: {words}"), err
    assert err.count("\n") == 1
    assert "passed" not in out
    with pytest.raises(ManifestError, match=words):
        verify_suite(
            suite, groups=argv[1:] if "--group" in argv else None, names=argv[1:] if "--stream" in argv else None
        )


def test_the_in_memory_safetensors_writer_refuses_a_tensor_named_metadata():
    from nnc.formats import FormatError, safetensors_bytes

    with pytest.raises(FormatError, match="__metadata__"):  # before: written, then dropped by every reader
        safetensors_bytes({"__metadata__": np.ones(2, np.float32)})


@pytest.mark.parametrize("recorded", [",", "(", "i4,i4", "U8", "\x00x"])
def test_info_and_decode_take_a_hostile_dtype_string_without_a_traceback(tmp_path, capsys, recorded):
    stream = with_metadata(nnc.encode({"w": np.ones((4, 4), np.float32)}, qp=-30), dtypes={"w": recorded})
    path = tmp_path / "h.nnr"
    path.write_bytes(stream)  # "," made numpy's dtype parser raise SyntaxError
    assert cli.main(["info", str(path)]) == 0
    assert cli.main(["decode", str(path), "-o", str(tmp_path / "o.npz"), "-q"]) == 0
    assert read_model(tmp_path / "o.npz")[0]["w"].dtype == np.float32
    capsys.readouterr()


def test_deeply_nested_json_is_not_a_recursion_error(tmp_path, capsys):
    """Before: RecursionError (outside nnc.errors) from the topology metadata, safetensors headers and indexes."""
    import struct

    from nnc import container as C
    from nnc.cli import main

    stream = nnc.encode({"w": np.ones(4, np.float32)})
    units = C.parse_stream(stream)
    deep = "[" * 30000 + "]" * 30000
    hostile = stream[:units[2].offset] + C.build_tpl(data='{"nnc":' + deep + "}") + stream[units[3].offset:]
    assert nnc.decode(hostile)["w"].shape == (4,)  # not nnc metadata: ignored (spec 6.2.1)
    header = ('{"a":' + deep + "}").encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (tmp_path / "m.index.json").write_text('{"weight_map":' + deep + "}")
    for model in ("m.safetensors", "m.index.json"):
        code = main(["encode", str(tmp_path / model), "-o", str(tmp_path / "x.nnr")])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and model in err


def test_a_checkpoint_file_name_with_a_lone_surrogate_is_refused_in_one_line(tmp_path, capsys):
    """Before: UnicodeEncodeError traceback when decoding to a folder."""
    from nnc.cli import main
    from nnc.models import with_metadata

    stream = with_metadata(nnc.encode({"w": np.ones(12, np.float32)}),
                           {"checkpoint": {"format": "safetensors", "files": [{"name": "\ud800.st"}],
                                           "file_of": {"w": 0}}})
    (tmp_path / "e.nnr").write_bytes(stream)
    code = main(["decode", str(tmp_path / "e.nnr"), "-o", str(tmp_path / "out") + os.sep])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unsafe file" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("names", [{"files": ["e.nnr"]}, {"files": ["a.safetensors"], "index": "rx.state"}])
def test_a_streams_checkpoint_file_names_cannot_replace_decodes_inputs(tmp_path, capsys, names):
    """Before: a stream whose checkpoint metadata named its own file (or the state file, as the index) was written
    over by `nnc decode e.nnr -o ./`, exit 0."""
    from nnc.cli import main
    from nnc.models import with_metadata

    layout = {"format": "safetensors", "files": [{"name": n} for n in names["files"]], "file_of": {"w": 0}}
    if "index" in names:
        layout["index"] = {"name": names["index"], "metadata": {}}
    stream = with_metadata(nnc.encode({"w": np.ones(12, np.float32)}), {"checkpoint": layout})
    (tmp_path / "e.nnr").write_bytes(stream)
    nnc.DecoderState().save(tmp_path / "rx.state")
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    argv = ["decode", str(tmp_path / "e.nnr"), "-o", str(tmp_path) + os.sep]
    code = main(argv + (["--state", str(tmp_path / "rx.state")] if "index" in names else []))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "refusing to overwrite an input" in err
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def _block_scanned(scan_order, dq):
    rng = np.random.default_rng(scan_order + 10 * dq)
    tensors = {"w": rng.standard_normal((40, 70)).astype(np.float32)}
    return nnc.encode(tensors, qp=-30, scan_order=scan_order, dq=dq)


BLOCK_SCANNED = {(s, dq): _block_scanned(s, dq) for s in (1, 3) for dq in (False, True)}


def _decoded_or_error(data, engine, entry_points):
    try:
        (array,) = nnc.decode(data, engine=engine, entry_points=entry_points).values()  # ("w", unless a flip renamed it)
        return array
    except nnc.errors.NNCError as exc:
        return (type(exc).__name__, exc.clause, exc.offset)


@given(
    st.sampled_from(sorted(BLOCK_SCANNED)),
    st.lists(st.integers(0, 10**9), min_size=1, max_size=3),
)
def test_entry_points_used_give_the_sequential_values_or_an_error(key, flips):
    """A tensor decoded from its entry points (``entry_points="use"``) of a stream with flipped bits, in the
    header or the payload: the values of sequential decoding, or an error, never other values; both engines
    alike (spec 11.4, 15.1 item 44)."""
    data = bytearray(BLOCK_SCANNED[key])
    for f in flips:
        bit = f % (8 * len(data))
        data[bit // 8] ^= 1 << (bit % 8)
    used = _decoded_or_error(bytes(data), "cython", "use")
    assert _equal_or_same_error(used, _decoded_or_error(bytes(data), "python", "use"))
    if isinstance(used, np.ndarray):
        sequential = _decoded_or_error(bytes(data), "cython", "ignore")
        assert isinstance(sequential, np.ndarray) and sequential.tobytes() == used.tobytes()


def _equal_or_same_error(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.tobytes() == b.tobytes()
    return a == b


def test_a_corrupted_block_row_is_refused_with_entry_points_used():
    """Every flipped payload bit in a stretch of block row 0 that sequential decoding refuses is refused with the
    entry points used too, not decoded into other values; some are found where block row 1 starts (11.4)."""
    stream = BLOCK_SCANNED[(1, False)]
    payload = next(u for u in C.iter_units(stream) if u.type == C.NNR_NDU).payload_offset
    clauses = set()
    for bit in range(8 * (payload + 40), 8 * (payload + 60)):
        data = bytearray(stream)
        data[bit // 8] ^= 1 << (bit % 8)
        if isinstance(_decoded_or_error(bytes(data), "cython", "ignore"), np.ndarray):
            continue
        for engine in ("cython", "python"):
            used = _decoded_or_error(bytes(data), engine, "use")
            assert not isinstance(used, np.ndarray), bit
            clauses.add(used[1])
    assert "11.4" in clauses, clauses


def test_a_float16_dtype_whose_range_the_values_leave_is_refused_not_inf(tmp_path):
    """Before: dtypes={'w': 'float16'} on a value of 70000 was encoded, and decoding restored it as inf (float8:
    saturated to 448), exit 0. The encoder refuses such a dtype; a stream recording it anyway is refused on
    decoding (spec 6.2.1), in memory and to a file."""
    x = np.array([[1.7, 70000.0]], np.float32)
    for recorded in ("float16", "float8_e4m3fn", "float8_e5m2"):
        with pytest.raises(nnc.errors.EncodeError, match="largest"):
            nnc.encode({"w": x}, qp=-20, dtypes={"w": recorded})
    stream = with_metadata(nnc.encode({"w": x}, qp=-20), dtypes={"w": "float16"})
    with pytest.raises(DecodeError) as refused:
        nnc.decode_model(stream)
    assert refused.value.clause == "6.2.1"
    with pytest.raises(DecodeError):
        decode_to_path(stream, tmp_path / "w.npz")
    assert not (tmp_path / "w.npz").exists()
    assert nnc.decode_model(nnc.encode({"w": x / 2}, qp=-20, dtypes={"w": "float16"}))["w"].dtype == np.float16


@pytest.mark.parametrize("profile", [0, 1])
def test_use_mode_refuses_a_dq_state_in_an_entry_point_of_a_tensor_without_dq(profile):
    """An INT NDU transmits dq_flag (decoding treats it as 0), so its entry points carry DQ states: "verify" refused
    a state of 7, "use" decoded past it (spec 11.4)."""
    a = (np.arange(400, dtype=np.int32).reshape(20, 20) % 7) - 3
    stream = nnc.encode({"i": a}, profile=profile, scan_order=1)
    ndu = C.parse_stream(stream)[-1]
    fields = {k: v for k, v in ndu.header.items() if k not in ("nnr_unit_type", "partial_data_counter_present_flag")}
    for state, refused in ((0, False), (7, True)):
        eps = [dict(value=e.value, dq_state=state, offset=e.offset) for e in ndu.header.entry_points]
        unit = C.build_ndu(dict(fields, dq_flag=1, entry_points=eps), bytes(ndu.payload), profile=profile)
        bad = stream[: ndu.offset] + unit
        for mode in ("use", "verify"):
            if refused:
                with pytest.raises(DecodeError, match="11.4"):
                    nnc.Decoder(bad, entry_points=mode).decode()
            else:
                np.testing.assert_array_equal(nnc.Decoder(bad, entry_points=mode).decode()["i"], a)
        np.testing.assert_array_equal(nnc.Decoder(bad, entry_points="ignore").decode()["i"], a)


def test_decoding_one_tensor_by_name_looks_at_its_own_unit_only(monkeypatch):
    """`nnc info` decodes tensor by tensor; each call walked every unit (20,000 NDUs: 506 s, now 15 s)."""
    stream = nnc.encode({f"t{i}": np.full(3, i, np.float32) for i in range(200)}, qp=-20)
    dec = nnc.Decoder(stream)

    class Counting(list):
        reads = 0

        def __getitem__(self, i):
            Counting.reads += 1
            return super().__getitem__(i)

    dec._ndu_tensors = Counting(dec._ndu_tensors)
    assert float(dict(dec.iter_tensors(["t150"]))["t150"][0]) == pytest.approx(150, abs=0.1)
    assert Counting.reads <= 3


def test_read_qps_gives_decode_s_qps_without_decoding_a_lone_tensor_s_levels(monkeypatch):
    """`nnc info` decoded every tensor to learn its qp (a 3 GB model's stream: as long as a full decode); the qp
    offset begins each tensor's payload part (spec 8.2), so only a block NDU's members before the last decode."""
    rng = np.random.default_rng(5)
    model = {"a.weight": rng.standard_normal((16, 8)).astype(np.float32), "a.bias": rng.standard_normal(16),
             "b.weight": rng.standard_normal((8, 16)).astype(np.float32), "n": np.arange(6, dtype=np.int32)}
    model["a.bias"] = model["a.bias"].astype(np.float32)
    stream = nnc.encode(model, qp_per_tensor={"b.weight": -21}, blocks=True, raw_when_smaller=False)
    decoded = nnc.Decoder(stream)
    decoded.decode()
    expected = {t.name: (t.qp, t.step) for t in decoded.tensors()}
    calls = []
    dec = nnc.Decoder(stream)
    engine = dec.engine

    class CountingEngine:
        def __getattr__(self, name):
            return getattr(engine, name)

        def PayloadDecoder(self, *args):  # noqa: N802
            inner = engine.PayloadDecoder(*args)

            class Counting:
                def __getattr__(self, name):
                    return getattr(inner, name)

                def decode_tensor(self, height, width, **kwargs):
                    calls.append(height * width)
                    return inner.decode_tensor(height, width, **kwargs)

            return Counting()

    monkeypatch.setattr(dec, "engine", CountingEngine())
    dec.read_qps()
    assert {t.name: (t.qp, t.step) for t in dec.tensors()} == expected
    assert expected["b.weight"][0] == -21 and expected["n"] == (None, None)
    assert [t.name for t in dec.tensors() if t.block] == ["a.bias", "a.weight"]  # (a block NDU: bias first)
    assert calls == [16]  # the bias's levels, to reach the weight's qp offset; no weight's levels
