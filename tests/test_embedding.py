"""Decoding into caller buffers (out=), the tensor iterator, and decoding from any buffer without a copy."""

import mmap
import re
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnc
from nnc.decoder import Decoder, read_input
from nnc.errors import NNCError, OutputBufferError

RNG = np.random.default_rng(7)


MODEL = {
    "fc.weight": RNG.normal(size=(16, 24)).astype(np.float32),
    "fc.bias": RNG.normal(size=16).astype(np.float32),
    "half": RNG.normal(size=(8, 8)).astype(np.float16),
    "steps": np.int64(12),
    "ids": np.arange(10, dtype=np.int32),
}


def _model():
    return MODEL


@pytest.fixture(scope="module")
def stream():
    # one NDU per tensor in model order (no BLOCK pairing), the bias finely quantised
    return nnc.encode(_model(), qp=-24, blocks=False, nonweight_qp=-75)


def test_decode_tensor_out_fills_and_returns_the_callers_array(stream):
    dec = Decoder(stream)
    expected = Decoder(stream).decode_tensor("fc.weight")
    buf = np.full((16, 24), np.nan, np.float32)
    assert dec.decode_tensor("fc.weight", out=buf) is buf
    np.testing.assert_array_equal(buf, expected)


def test_out_in_the_original_dtype_and_shape(stream):
    dec = Decoder(stream)
    half = np.zeros((8, 8), np.float16)
    dec.decode_tensor("half", out=half)
    np.testing.assert_array_equal(half, dec.decode_tensor("half").astype(np.float16))
    steps = np.zeros((), np.int64)            # recorded as a 0-d int64
    dec.decode_tensor("steps", out=steps)
    assert int(steps) == 12
    steps1 = np.zeros((1,), np.int32)         # or as signalled
    dec.decode_tensor("steps", out=steps1)
    assert steps1.tolist() == [12]


@pytest.mark.parametrize("bad, words", [
    (np.zeros((24, 16), np.float32), "shape (24, 16)"),
    (np.zeros(384, np.float32), "shape (384,)"),
    (np.zeros((16, 24), np.int32), "dtype int32"),
    (np.zeros((16, 24), np.complex64), "dtype complex64"),
    (np.zeros((24, 16), np.float32).T, "not C-contiguous"),
    (np.zeros((16, 48), np.float32)[:, ::2], "not C-contiguous"),
    ([[0.0] * 24] * 16, "must be a numpy array"),
])
def test_out_refuses_wrong_buffers_with_a_clear_error(stream, bad, words):
    with pytest.raises(OutputBufferError, match=re.escape(words)) as info:
        Decoder(stream).decode_tensor("fc.weight", out=bad)
    assert isinstance(info.value, NNCError) and isinstance(info.value, ValueError)
    assert "fc.weight" in str(info.value)


def test_out_refuses_read_only_and_int_tensors_in_float_buffers(stream):
    ro = np.zeros((16, 24), np.float32)
    ro.flags.writeable = False
    with pytest.raises(OutputBufferError, match="read-only"):
        Decoder(stream).decode_tensor("fc.weight", out=ro)
    with pytest.raises(OutputBufferError, match="dtype float32"):
        Decoder(stream).decode_tensor("ids", out=np.zeros(10, np.float32))


def test_decode_with_out_mapping_checks_everything_before_decoding(stream):
    dec = Decoder(stream)
    good = np.zeros((16, 24), np.float32)
    with pytest.raises(OutputBufferError):
        dec.decode(out={"fc.weight": good, "fc.bias": np.zeros(3, np.float32)})
    assert not good.any()   # nothing was decoded into the good buffer either
    with pytest.raises(KeyError, match="nope"):
        dec.decode(out={"nope": good})
    out = dec.decode(out={"fc.weight": good})
    assert out["fc.weight"] is good
    np.testing.assert_array_equal(good, Decoder(stream).decode_tensor("fc.weight"))
    assert list(out) == list(_model())


def test_module_level_decode_accepts_out(stream):
    buf = np.zeros(16, np.float64)
    out = nnc.decode(stream, out={"fc.bias": buf})
    assert out["fc.bias"] is buf
    np.testing.assert_allclose(buf, _model()["fc.bias"], atol=2 ** -7)


def test_bfloat16_bits_into_uint16():
    w = RNG.normal(size=(4, 6)).astype(np.float32)
    stream = nnc.encode({"w": w}, qp=-30, dtypes={"w": "bfloat16"})
    dec = Decoder(stream)
    bits = np.zeros((4, 6), np.uint16)
    dec.decode_tensor("w", out=bits)
    from nnc.formats import bfloat16_to_float32, float32_to_bfloat16

    np.testing.assert_array_equal(bits, float32_to_bfloat16(dec.decode_tensor("w")))
    np.testing.assert_allclose(bfloat16_to_float32(bits), w, atol=0.02, rtol=0.01)


def test_iter_tensors_yields_in_stream_order_and_matches_decode(stream):
    whole = Decoder(stream).decode()
    seen = []
    for name, arr in Decoder(stream).iter_tensors():
        seen.append(name)
        np.testing.assert_array_equal(arr, whole[name])
    assert seen == list(whole)
    assert [n for n, _ in Decoder(stream).iter_tensors(["ids", "fc.bias"])] == ["fc.bias", "ids"]
    assert [n for n, _ in Decoder(stream).iter_tensors(threads=3)] == list(whole)


def test_iter_tensors_with_a_callable_out_opens_buffers_on_demand(stream):
    asked = []

    def place(info):
        asked.append(info.name)
        return np.empty(info.shape, info.dtype) if info.name == "fc.weight" else None

    it = Decoder(stream).iter_tensors(out=place)
    name, arr = next(it)
    assert (name, asked) == ("fc.weight", ["fc.weight"])
    it.close()
    assert asked == ["fc.weight"]     # stopping early decodes nothing more


def test_iter_tensors_memory_is_bounded_by_one_tensor():
    n, shape = 8, (256, 1024)   # 1 MiB float32 each
    model = {f"t{i}": np.full(shape, i / 8, np.float32) for i in range(n)}
    stream = nnc.encode(model, qp=-10, dq=False)
    dec = Decoder(stream)
    tracemalloc.start()
    for _name, arr in dec.iter_tensors():
        del arr
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tensor = 4 * shape[0] * shape[1]
    assert peak < 3.5 * tensor, (peak, tensor)   # the whole model would be 8 tensors


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "numpy", "numpy2d", "mmap"])
def test_decode_from_any_buffer_without_copying(stream, tmp_path, kind):
    expected = nnc.decode(stream)
    if kind == "bytearray":
        source = bytearray(stream)
    elif kind == "memoryview":
        source = memoryview(np.frombuffer(stream, np.uint8).copy())
    elif kind == "numpy":
        source = np.frombuffer(stream, np.uint8).copy()
    elif kind == "numpy2d":
        padded = stream + b"\0" * (-len(stream) % 4)
        source = np.frombuffer(padded, np.uint8).copy().reshape(4, -1)   # trailing zeros: not a unit
        source = memoryview(source)[:]
    else:
        path = tmp_path / "s.nnr"
        path.write_bytes(stream)
        fh = open(path, "rb")
        source = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if kind == "numpy2d":
        view = read_input(source)
        assert np.shares_memory(np.frombuffer(view, np.uint8), np.asarray(source))
        return
    dec = Decoder(source)
    view = np.frombuffer(dec.data, np.uint8)
    if kind != "mmap":
        assert np.shares_memory(view, np.asarray(memoryview(source)))
    else:
        assert not view.flags.owndata and view.base is not None
    for name, arr in dec.decode().items():
        np.testing.assert_array_equal(arr, expected[name])
    if kind == "mmap":
        del dec, view, arr
        import gc

        gc.collect()
        source.close()
        fh.close()


def test_decoding_a_large_buffer_allocates_no_copy_of_it():
    big = RNG.normal(size=(512, 1024)).astype(np.float32)
    stream = nnc.encode({"w": big}, qp=-40, dq=False)
    buf = np.frombuffer(stream, np.uint8).copy()
    tracemalloc.start()
    dec = Decoder(memoryview(buf))
    assert dec.names() == ["w"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < len(stream) / 4, (peak, len(stream))


def test_non_contiguous_buffers_are_refused():
    with pytest.raises(TypeError, match="non-contiguous"):
        Decoder(memoryview(np.zeros(64, np.uint8))[::2])


@given(st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=40),
       st.sampled_from(["float32", "float64", "float16"]))
def test_out_equals_a_plain_decode_cast(values, dtype):
    stream = nnc.encode({"x": np.array(values, np.float32)}, qp=-16, dq=False, nonweight_qp=None)
    dec = Decoder(stream)
    plain = dec.decode_tensor("x")
    out = np.empty(len(values), dtype)
    dec.decode_tensor("x", out=out)
    np.testing.assert_array_equal(out, plain.astype(dtype))


# -- out= is decoded into, not copied into -----------------------------------------------------------------------


def _direct_cases():
    """Streams exercising every reconstruction path: (name, stream, encoder options)."""
    w = RNG.normal(size=(64, 48)).astype(np.float32)
    w[5:9] = 0  # all-zero rows, skipped with row_skip (spec 11.5): must come out 0 in a dirty buffer
    model = {"w": w, "fc.bias": RNG.normal(size=64).astype(np.float32), "ids": np.arange(-5, 20, dtype=np.int32)}
    return [
        ("dq", dict(qp=-30, dq=True)),
        ("uniform+row_skip", dict(qp=-26, dq=False, row_skip=True)),
        ("dq+row_skip+scan", dict(qp=-30, dq=True, row_skip=True, scan_order=2)),
        ("raw", dict(qp=-30, raw=["w"])),
        ("codebook", dict(qp=-24, codebook=True)),
        ("float16 format", dict(qp=-30, output_formats={"w": 8})),
        ("float64 format", dict(qp=-30, output_formats={"w": 9})),
    ], model


@pytest.mark.parametrize("case", range(len(_direct_cases()[0])), ids=[c[0] for c in _direct_cases()[0]])
@pytest.mark.parametrize("threads", [1, 2])
def test_out_is_identical_to_a_plain_decode_on_every_path(case, threads):
    (label, options), model = _direct_cases()[0][case], _direct_cases()[1]
    stream = nnc.encode(model, **options)
    dec = Decoder(stream)
    plain = dec.decode(threads=threads)
    for name, ref in plain.items():
        dtypes = ["float16", "float32", "float64"] if ref.dtype.kind == "f" else [ref.dtype.name]
        for dtype in dtypes:
            dirty = np.full(ref.shape, 77, dtype)  # not zero: every element must be written
            assert dec.decode_tensor(name, out=dirty) is dirty
            np.testing.assert_array_equal(dirty, ref.astype(dtype), err_msg=f"{label} {name} {dtype}")
            dirty[...] = 55
            got = dec.decode(out={name: dirty}, threads=threads)
            assert got[name] is dirty
            np.testing.assert_array_equal(dirty, ref.astype(dtype), err_msg=f"{label} {name} {dtype} decode()")


def test_out_with_an_incremental_state_keeps_the_levels_apart():
    base = RNG.normal(size=(32, 32)).astype(np.float32)
    state = nnc.EncoderState()
    first = nnc.Encoder(qp=-30, state=state).encode({"w": base}).stream
    update = nnc.Encoder(qp=-30, state=state).encode({"w": base * 1.01}).stream
    plain_state, direct_state = nnc.DecoderState(), nnc.DecoderState()
    plain = [nnc.decode(s, state=plain_state)["w"] for s in (first, update)]
    bufs = [np.full((32, 32), 9, np.float32) for _ in range(2)]
    for s, buf in zip((first, update), bufs):
        nnc.decode(s, state=direct_state, out={"w": buf})
    for ref, buf in zip(plain, bufs):
        np.testing.assert_array_equal(buf, ref)


def test_a_float32_out_is_decoded_in_place_without_a_full_size_array():
    shape = (512, 1024)  # 2 MiB float32
    stream = nnc.encode({"w": RNG.normal(size=shape).astype(np.float32)}, qp=-30)
    dec = Decoder(stream)
    ref = dec.decode_tensor("w")
    tensor = ref.nbytes
    for dtype, bound in (("float32", 0.25 * tensor), ("float64", 1.25 * tensor), ("float16", 1.25 * tensor)):
        out = np.empty(shape, dtype)
        tracemalloc.start()
        dec.decode_tensor("w", out=out)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        np.testing.assert_array_equal(out, ref.astype(dtype))
        # float32: the levels are decoded into the buffer itself and scaled in place, so neither
        # the int32 levels (1 tensor) nor a float32 reconstruction (1 more) is allocated;
        # wider or narrower buffers hold only the levels (1 tensor), no reconstruction to copy.
        assert peak < bound, (dtype, peak / tensor)


@pytest.fixture
def no_garbage_collection():
    import gc

    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


@pytest.mark.parametrize("engine", ["cython", "python"])
@pytest.mark.parametrize("damage", ["none", "truncated", "bytes"])
def test_a_memory_map_closes_once_the_decoder_is_gone(tmp_path, stream, no_garbage_collection, engine, damage):
    """docs/embedding.md: ``del dec`` lets the caller close its map, also after a parse that failed (construct's
    parse contexts kept the reader, and its view of the map, in reference cycles: BufferError until a collection).
    """
    from nnc.engine import COMPILED_AVAILABLE

    if engine == "cython" and not COMPILED_AVAILABLE:
        pytest.skip("the compiled engine is not built")
    rng = np.random.default_rng(len(damage))
    for trial in range(30 if damage != "none" else 1):
        data = bytearray(stream)
        if damage == "truncated":
            data = data[: int(rng.integers(1, len(data)))]
        elif damage == "bytes":
            for at in rng.integers(0, len(data), 3):
                data[at] = int(rng.integers(256))
        (tmp_path / "s.nnr").write_bytes(bytes(data))
        with open(tmp_path / "s.nnr", "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            dec = None
            try:
                dec = Decoder(mm, engine=engine)
                dec.decode_tensor("fc.weight")
                dec.decode()
            except (NNCError, KeyError):  # (damage may rename the tensor)
                pass
            del dec  # (the map's close then raised BufferError in 117 of 300 damaged streams)


def test_one_out_array_for_two_tensors_holds_them_only_if_they_decode_alike():
    """Before: out={"a": buf, "b": buf} returned buf for both, holding b's values (a silently wrong)."""
    from nnc.errors import OutputBufferError

    a, b = np.ones((4, 4), np.float32), np.full((4, 4), 2, np.float32)
    buf = np.zeros((4, 4), np.float32)
    with pytest.raises(OutputBufferError, match="one array, and they decode to different values"):
        nnc.Decoder(nnc.encode({"a": a, "b": b}, qp=-20)).decode(out={"a": buf, "b": buf})
    tied = nnc.decode(nnc.encode({"a": a, "b": a.copy()}, qp=-20), out={"a": buf, "b": buf})  # tied weights
    assert tied["a"] is buf and tied["b"] is buf and (buf == 1).all()
    wide = np.zeros(32, np.float32)
    with pytest.raises(OutputBufferError, match="overlap"):
        nnc.decode(
            nnc.encode({"a": a, "b": b}, qp=-20), out={"a": wide[:16].reshape(4, 4), "b": wide[8:24].reshape(4, 4)}
        )
    assert (wide == 0).all()
    only_b = nnc.Decoder(nnc.encode({"a": a, "b": b}, qp=-20)).decode(["b"], out={"a": buf, "b": buf})  # a not decoded
    assert only_b["b"] is buf and (buf == 2).all()
