"""The argument checks marked ``# api-check``: only a caller can fail them, never a stream, so the
conformance coverage (tools/conformance_coverage.py) leaves them out. Here each one fails, in both
engines, and every marked check of nnc/ has its case (a new marker without a case fails the count).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

import nnc
from nnc import errors
from nnc.decoder import Decoder, read_input
from nnc.engine import COMPILED_AVAILABLE, get_engine

REPO = Path(__file__).resolve().parent.parent
ENGINES = ["python"] + (["cython"] if COMPILED_AVAILABLE else [])

#: The marked checks per file (a check is one marked statement).
MARKED = {
    "nnc/decoder.py": 28,
    "nnc/engine/python/payload.py": 17,
    "nnc/engine/python/arithmetic.py": 1,
    "nnc/engine/python/binarisation.py": 1,
    "nnc/_engine.pyx": 18,
    "nnc/engine/__init__.py": 1,
}


def test_every_marked_check_is_counted_here():
    found = {}
    for path in sorted((REPO / "nnc").rglob("*.py")) + [REPO / "nnc" / "_engine.pyx"]:
        n = sum(bool(re.search(r"#\s*api-check\b", line)) for line in path.read_text().splitlines())
        if n:
            found[str(path.relative_to(REPO))] = n
    assert found == MARKED


def _payload(engine, edition=2, h=16, w=4, scan_order=1, dq=False, n_gtx=2, qp_bits=0):
    """A small valid payload: qp offset (if any), one tensor; and the tensor's keyword arguments."""
    enc = engine.PayloadEncoder(edition)
    if qp_bits:
        enc.write_qp_offset(-3, qp_bits)
    x = (np.arange(h * w) % 5 - 2).astype(np.float64)
    levels = engine.dq_rdoq_levels(x, h, w, lam=0.0, scan_order=scan_order, edition=edition) if dq else x.astype(np.int32)
    enc.encode_tensor(levels, h, w, n_gtx=n_gtx, dq=dq, scan_order=scan_order)
    return enc.finish(), dict(n_gtx=n_gtx, dq=dq, scan_order=scan_order)


def _decoder(engine_name, **kw):
    engine = get_engine(engine_name)
    data, args = _payload(engine, **kw)
    return engine.PayloadDecoder(data, kw.get("edition", 2)), args


# -- the engines (docs/dev/engine-api.md) ----------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_edition_outside_1_and_2(engine):
    with pytest.raises(ValueError, match="edition"):
        get_engine(engine).PayloadDecoder(b"\x00\x00\x80", 3)
    with pytest.raises(ValueError, match="edition"):
        get_engine(engine).context_count(0, 2)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "kwargs, clause",
    [
        (dict(height=-1, width=4), "11.1"),
        (dict(height=2**32, width=2**32), "11.1"),
        (dict(n_gtx=0), "7.4"),
        (dict(n_gtx=257), "7.4"),
        (dict(codebook_size=4, codebook_zero=4), "7.2"),
        (dict(codebook_size=4, codebook_zero=1, dq=True), "10.4"),
        (dict(codebook_size=-1), "10.4"),
        (dict(tca_base=np.zeros(3, np.int32)), "10.5"),
        (dict(tca_base=np.zeros(64, np.float32)), "10.5"),
        (dict(tca_base=np.full(64, 2**40, np.int64)), "10.5"),
        (dict(parent_present=True, hdsp_history=np.zeros(63, np.int8)), "10.5"),
    ],
)
def test_tensor_arguments(engine, kwargs, clause):
    dec, args = _decoder(engine)
    args.update(kwargs)
    height, width = args.pop("height", 16), args.pop("width", 4)
    with pytest.raises(errors.DecodeError) as info:
        dec.decode_tensor(height, width, **args)
    assert info.value.clause == clause


@pytest.mark.parametrize("engine", ENGINES)
def test_tca_base_of_another_integer_dtype_is_converted(engine):
    eng = get_engine(engine)
    base, levels = np.arange(64) % 3 - 1, np.arange(64, dtype=np.int32) % 4 - 1
    enc = eng.PayloadEncoder(2)
    enc.encode_tensor(levels, 16, 4, n_gtx=2, scan_order=1, tca_base=base.astype(np.int32))
    data = enc.finish()
    decoded = eng.PayloadDecoder(data, 2).decode_tensor(16, 4, n_gtx=2, scan_order=1, tca_base=base.astype(np.int64))
    assert decoded.tolist() == levels.tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_payload_as_a_numpy_array(engine):
    eng = get_engine(engine)
    data, args = _payload(eng)
    from_array = eng.PayloadDecoder(np.frombuffer(data, np.uint8), 2).decode_tensor(16, 4, **args)
    assert from_array.tolist() == eng.PayloadDecoder(data, 2).decode_tensor(16, 4, **args).tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_bypass_bit_counts(engine):
    dec, _ = _decoder(engine)
    for nbits in (-1, 65):
        with pytest.raises(ValueError, match="nbits"):
            dec.read_bypass(nbits)
    for nbits in (0, 33):
        with pytest.raises(ValueError, match="nbits"):
            dec.read_qp_offset(nbits)


@pytest.mark.parametrize("engine", ENGINES)
def test_position_properties_agree(engine):
    """bytes_consumed and bit_position (spec 11.4), which decoding does not call."""
    python, _ = _decoder("python", qp_bits=8)
    other, _ = _decoder(engine, qp_bits=8)
    python.read_qp_offset(8)
    other.read_qp_offset(8)
    assert (other.bytes_consumed, other.bit_position) == (python.bytes_consumed, python.bit_position) == (3, 8)


@pytest.mark.parametrize("engine", ENGINES)
def test_block_row_ranges(engine):
    dec, args = _decoder(engine)
    eps = list(_entry_points(engine))
    with pytest.raises(ValueError, match="block rows"):
        dec.decode_tensor(16, 4, entry_points=eps, start_block_row=1, stop_block_row=1, **args)
    with pytest.raises(ValueError, match="block rows"):
        dec.decode_tensor(16, 4, entry_points=eps, start_block_row=0, stop_block_row=3, **args)
    with pytest.raises(ValueError, match="start_block_row"):
        dec.decode_tensor(16, 4, start_block_row=1, stop_block_row=2, **args)
    with pytest.raises(ValueError, match="start_block_row"):
        dec.decode_tensor(16, 4, entry_points=eps, start_block_row=2, **args)


def _entry_points(engine, **kw):
    eng = get_engine(engine)
    data, args = _payload(eng, **kw)
    dec = eng.PayloadDecoder(data, kw.get("edition", 2))
    dec.decode_tensor(16, 4, record_entry_points=True, **args)
    return dec.last_entry_points


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "out",
    [np.zeros(64, np.int64), np.zeros(63, np.int32), np.zeros((64, 2), np.int32)[:, 0], np.zeros(64, np.int32)[::-1],
     list(range(64))],
)
def test_out_arrays(engine, out):
    dec, args = _decoder(engine)
    if isinstance(out, np.ndarray) and out.dtype == np.int32 and out.size == 64 and out.flags.c_contiguous:
        out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be"):
        dec.decode_tensor(16, 4, out=out, **args)


@pytest.mark.parametrize("engine", ENGINES)
def test_read_only_out_array(engine):
    dec, args = _decoder(engine)
    out = np.zeros(64, np.int32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be"):
        dec.decode_tensor(16, 4, out=out, **args)


@pytest.mark.parametrize("engine", ENGINES)
def test_entry_point_lists(engine):
    """A list of the wrong length, a value outside 8 bits, a DQ state outside 3 bits (spec 7.3)."""
    dec, args = _decoder(engine)
    eps = list(_entry_points(engine))
    with pytest.raises(errors.DecodeError) as info:
        dec.decode_tensor(16, 4, entry_points=eps[:-1], **args)
    assert info.value.clause == "11.4"
    dec, args = _decoder(engine)
    with pytest.raises(errors.DecodeError) as info:
        dec.decode_tensor(16, 4, entry_points=[(256, 0, eps[0][2])] + eps[1:], **args)
    assert info.value.clause == "9.7"
    dec, args = _decoder(engine, dq=True)
    eps = list(_entry_points(engine, dq=True))
    with pytest.raises(errors.DecodeError) as info:
        dec.decode_tensor(16, 4, entry_points=[(eps[0][0], 8, eps[0][2])] + eps[1:], **args)
    assert info.value.clause == "11.4"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("increment", [2**70, -(2**70)])
def test_entry_points_far_outside_the_payload(engine, increment):
    """Offsets beyond int64 fail the seek as any other outside the payload (spec 9.7)."""
    eng = get_engine(engine)
    data, args = _payload(eng)
    eps = [(v, s, increment) for v, s, _ in _entry_points(engine)]
    with pytest.raises(errors.NNCError) as info:
        eng.PayloadDecoder(data, 2).decode_tensor(16, 4, entry_points=eps, **args)
    if increment > 0:
        assert (type(info.value), info.value.clause, info.value.offset) == (errors.TruncatedError, "9.7", len(data))
    else:
        assert (type(info.value), info.value.clause) == (errors.DecodeError, "9.7")


# -- the decoder's API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream():
    return nnc.encode({"w": np.ones((4, 3), np.float32), "b": np.arange(3, dtype=np.int32)}, qp=-20)


def test_read_input_refusals(stream, tmp_path):
    (tmp_path / "m.nnr").write_bytes(stream)
    with open(tmp_path / "m.nnr") as text:  # (before: a UnicodeDecodeError of the stream's bytes)
        with pytest.raises(TypeError, match="binary mode"):
            nnc.decode(text)
    with pytest.raises(TypeError, match="non-contiguous"):
        read_input(memoryview(np.frombuffer(stream, np.uint8))[::2])
    with pytest.raises(TypeError, match="binary mode"):
        read_input(io.StringIO("text"))
    with pytest.raises(TypeError, match="cannot decode from int"):
        read_input(42)


@pytest.mark.parametrize("engine", ENGINES)
def test_unknown_names_and_modes(engine, stream):
    with pytest.raises(ValueError, match="entry_points"):
        Decoder(stream, engine=engine, entry_points="sometimes")
    with pytest.raises(TypeError, match="limits must be an nnc.Limits, not dict"):  # was an AttributeError
        Decoder(stream, engine=engine, limits={"max_tensor_elements": 4})
    with pytest.raises(TypeError, match="state must be an nnc.DecoderState, not dict"):  # was an AttributeError
        Decoder(stream, engine=engine, state={})
    with pytest.raises(TypeError, match="engine must be a name"):  # was an AttributeError ('int' ... 'lower')
        Decoder(stream, engine=5)
    for bad in (float("nan"), -1, None, "a", True):  # NaN turned a limit off; None failed deep inside the parser
        with pytest.raises(ValueError, match="Limits.max_total_bytes"):
            nnc.Limits(max_total_bytes=bad)
    named = nnc.encode({"fc.weight": np.ones((2, 2), np.float32), "fc.bias": np.ones(2, np.float32)})
    assert set(Decoder(named, engine=engine).decode("fc.weight")) == {"fc.weight"}  # one name, not its letters
    dec = Decoder(stream, engine=engine)
    with pytest.raises(KeyError, match="'x'"):
        dec.decode(["w", "x"])
    with pytest.raises(KeyError, match="'x'"):
        list(dec.iter_tensors(out={"x": np.zeros(3)}))
    with pytest.raises(KeyError, match="'x'"):
        dec.decode_tensor("x")
    with pytest.raises(KeyError, match="'x'"):
        dec.decode(out={"x": np.zeros(3)})


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "out, message",
    [
        ([0.0] * 12, "must be a numpy array"),
        (np.zeros((3, 4), np.float32), "has shape"),
        (np.zeros((4, 3), np.int32), "has dtype"),
        (np.zeros((4, 3), ">f4"), "has dtype"),
        (np.zeros((4, 3), np.float32, order="F"), "not C-contiguous"),
        ("read-only", "read-only"),
    ],
)
def test_out_arrays_of_the_decoder(engine, stream, out, message):
    if isinstance(out, str):
        out = np.zeros((4, 3), np.float32)
        out.flags.writeable = False
    with pytest.raises(errors.OutputBufferError, match=message):
        Decoder(stream, engine=engine).decode_tensor("w", out=out)


def test_apply_update_and_encode_model_refuse_what_is_not_a_mapping():
    """Before: AttributeError ('list' object has no attribute 'items') and a TypeError about paths alone."""
    for model, update in (([1, 2], {"w": np.ones(2)}), ({"w": np.ones(2)}, None)):
        with pytest.raises(TypeError, match="must be a mapping"):
            nnc.apply_update(model, update)
    with pytest.raises(TypeError, match="a mapping of names to arrays or a model file's path, not list"):
        nnc.encode_model([1, 2])


def test_apply_update_takes_one_replaced_name_and_checks_its_arguments():
    """Before: replaced="fc.weight" became the letters 'f', 'c', ...: the full values were added to the model's
    (6 instead of 1, no error); narrow=[...] and a model of strings raised AttributeError / UFuncTypeError."""
    model, update = {"fc.weight": np.full(2, 5.0)}, {"fc.weight": np.ones(2)}
    assert nnc.apply_update(model, update, replaced="fc.weight")["fc.weight"].tolist() == [1.0, 1.0]
    assert nnc.apply_update(model, update, replaced=("fc.weight",))["fc.weight"].tolist() == [1.0, 1.0]
    assert nnc.apply_update(model, update, replaced=())["fc.weight"].tolist() == [6.0, 6.0]
    for bad, kind, words in ((dict(replaced=5), TypeError, "replaced must be a tensor name"),
                             (dict(replaced=b"fc.weight"), TypeError, "replaced must be a tensor name"),
                             (dict(replaced=[1]), TypeError, "replaced must hold tensor names"),
                             (dict(narrow=["fc.weight"]), TypeError, "narrow must be a mapping"),
                             (dict(narrow={"fc.weight": "bogus"}), ValueError, "not a bfloat16 or float8 format")):
        with pytest.raises(kind, match=words):
            nnc.apply_update(model, update, **bad)
    with pytest.raises(errors.UpdateError, match="model tensor 'fc.weight' holds <U1 values, not numbers"):
        nnc.apply_update({"fc.weight": "x"}, update)


def test_a_single_raw_name_is_one_name_and_pattern_keys_must_be_names():
    """Before: raw="fc.weight" became the one-letter patterns 'f', 'c', ...: the tensor was quantised, silently."""
    x = {"fc.weight": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)}
    result = nnc.Encoder(raw="fc.weight").encode(x)
    assert result.tensors["fc.weight"].payload_type == "RAW_FLOAT"
    assert nnc.decode(result.stream)["fc.weight"].tobytes() == x["fc.weight"].tobytes()
    for bad in (dict(raw=5), dict(raw=[1]), dict(dtypes=["int8"]), dict(qp_per_tensor={1: -20})):
        with pytest.raises(errors.EncodeError):
            nnc.encode(x, **bad)


@pytest.mark.parametrize(
    "call, kind, words",
    [
        (lambda d, s: d.info("zz"), KeyError, "no tensor named 'zz'"),
        (lambda d, s: d.decode(b"w"), TypeError, "names must be a tensor name"),
        (lambda d, s: d.decode(5), TypeError, "names must be a tensor name"),
        (lambda d, s: d.decode(out=np.ones((4, 4), np.float32)), errors.OutputBufferError, "out= must map tensor names"),
        (lambda d, s: list(d.iter_tensors(out=5)), errors.OutputBufferError, "out= must map tensor names"),
        (lambda d, s: nnc.Decoder(s.decode("latin1")), TypeError, "holds a NUL character"),
        (lambda d, s: nnc.apply_update({"w": np.ones((4, 4))}, {"w": np.ones((4, 4))}, parent=5), TypeError, "parent"),
        (lambda d, s: nnc.encoder.Encoder(engine="rust"), nnc.EncodeError, "unknown engine"),
        (lambda d, s: nnc.encoder.Encoder().encode({"w": [1.0]}, cache={}), nnc.EncodeError, "EncodeCache"),
        (lambda d, s: nnc.encoder.Encoder().encode({"w": [1.0]}, progress=5), nnc.EncodeError, "callable"),
        (lambda d, s: nnc.encoder.EncodeCache(-1), nnc.EncodeError, "max_bytes"),
        (lambda d, s: nnc.codec.NNC().decode(None), nnc.DecodeError, "bytes or a buffer"),
        (lambda d, s: nnc.encoder.Encoder(engine=5), TypeError, "engine must be a name"),
        (lambda d, s: nnc.DecoderState().update("w", [1, 2]), TypeError, "1-D numpy array of integers"),
        (lambda d, s: d.decode(progress=5), TypeError, "progress must be a callable"),
        (lambda d, s: nnc.DecoderState().update("w", np.array([0.5])), TypeError, "1-D numpy array of integers"),
        # these were silently wrong or raw errors from inside (skip_zero="False" dropped a tensor as True)
        (lambda d, s: nnc.encoder.Encoder(skip_zero="False"), nnc.EncodeError, "skip_zero must be True or False"),
        (lambda d, s: nnc.encoder.Encoder(nonweight_qp=10**6), nnc.EncodeError, "nonweight_qp: qp 1000000"),
        (lambda d, s: nnc.encoder.Encoder(blocks=1), nnc.EncodeError, "blocks must be"),
        (lambda d, s: nnc.encoder.Encoder(output_formats=[1, 2]), nnc.EncodeError, "output_formats must be a map"),
        (lambda d, s: nnc.qp_for_step(0.1, 100), nnc.EncodeError, "qp_density 100 outside 0..7"),
        (lambda d, s: nnc.qp_for_step(0.1, -1), nnc.EncodeError, "qp_density -1 outside 0..7"),
        (lambda d, s: nnc.qp_for_step(0.1, 2.5), nnc.EncodeError, "qp_density must be an integer"),
        (lambda d, s: nnc.qp_for_step("0.1"), nnc.EncodeError, "step must be a number"),
        (lambda d, s: nnc.qp_for_step(np.array([0.1, 0.2])), nnc.EncodeError, "step must be a number"),
        (
            lambda d, s: nnc.encode(
                {"fc.weight": np.ones((2, 2), np.float32), "fc.bias": np.ones(2, np.float32)},
                blocks={"fc.weight": {"bais": "fc.bias"}},
            ),
            nnc.EncodeError,
            "unknown part 'bais'",
        ),
        (
            lambda d, s: nnc.encode({"fc.weight": np.ones((2, 2), np.float32)}, blocks={"fc.weight": {}}),
            nnc.EncodeError,
            "no part given",
        ),
    ],
)
def test_misused_calls_say_what_was_wrong(call, kind, words):
    """Before: AttributeErrors from inside, "no tensor named 119" for b"w", "embedded null byte", a ValueError for an
    unknown engine: each now names what was wrong, from nnc's hierarchy or as Python's TypeError / KeyError."""
    import nnc.codec
    import nnc.encoder

    stream = nnc.encode({"w": np.ones((4, 4), np.float32)}, qp=-20)
    with pytest.raises(kind, match=words):
        call(nnc.Decoder(stream), stream)


def test_file_writers_check_their_arguments(tmp_path):
    """Before: write_model(path, [1, 2]) raised AttributeError ('list' object has no attribute 'items'),
    decode_to_path(progress=5) "'int' object is not callable" mid-write, and names="w" meant the names 'w'... by
    letter (a KeyError for a longer name)."""
    from nnc.formats import write_model
    from nnc.writers import decode_to_path

    with pytest.raises(TypeError, match="tensors must be a mapping"):
        write_model(tmp_path / "m.npz", [1, 2])
    with pytest.raises(TypeError, match="dtypes must be a mapping"):
        write_model(tmp_path / "m.npz", {"w": np.ones(2)}, dtypes=["float16"])
    stream = nnc.encode({"fc.weight": np.ones((4, 4), np.float32), "b": np.ones(4, np.float32)}, qp=-20)
    with pytest.raises(TypeError, match="progress must be a callable"):
        decode_to_path(stream, tmp_path / "p.safetensors", progress=5)
    assert decode_to_path(stream, tmp_path / "one.npz", names="fc.weight")["tensors"] == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "one.npz"]
