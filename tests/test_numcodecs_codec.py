"""nnc.codec.NNC: the numcodecs codec (one NNC stream per chunk)."""

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnc
from nnc.codec import CHUNK_TENSOR, NNC
from nnc.decoder import Decoder
from nnc.errors import DecodeError, EncodeError, NNCError, OutputBufferError
from nnc.reconstruction import step_size

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)


@given(
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), SHAPES, elements=st.floats(-8, 8, width=16)),
    st.integers(-40, -4),
)
def test_float_chunk_nearest_rounding_within_half_a_step(chunk, qp):
    codec = NNC(qp=qp, dq=False)
    back = codec.decode(codec.encode(chunk))
    assert back.shape == chunk.shape and back.dtype == chunk.dtype
    err = np.abs(back.astype(np.float64) - chunk.astype(np.float64))
    # half a step, plus the rounding of the reconstruction to the chunk's own dtype
    assert np.all(err <= step_size(qp, 2) / 2 + np.abs(chunk.astype(np.float64)) * np.finfo(chunk.dtype).eps + 1e-12)


@given(hnp.arrays(np.float32, SHAPES, elements=st.floats(-8, 8, width=32)), st.integers(-40, -4), st.booleans())
@example(np.array([1.25, 1.25], np.float32), -4, False)
def test_float_chunk_decodes_to_the_encoders_reconstruction(chunk, qp, dq):
    codec = NNC(qp=qp, dq=dq)
    # (the codec pins the 1-D floor off: a chunk's qp is the one given; hypothesis found [1.25, 1.25] at qp -4)
    expected = nnc.encoder.Encoder(qp=qp, dq=dq, nonweight_qp=None, nonweight_snr_db=None).encode({CHUNK_TENSOR: chunk})
    stream = codec.encode(chunk)
    assert stream == expected.stream
    back = codec.decode(stream)
    assert back.shape == chunk.shape
    assert np.array_equal(back, expected.tensors[CHUNK_TENSOR].reconstruction.reshape(chunk.shape))


@given(hnp.arrays(st.sampled_from([np.int8, np.uint8, np.int16, np.int32, np.bool_]), SHAPES))
def test_integer_and_boolean_chunks_are_exact(chunk):
    codec = NNC(qp=-4)
    back = codec.decode(codec.encode(chunk))
    assert back.dtype == chunk.dtype and np.array_equal(back, chunk)


@given(st.floats(10, 50), st.floats(-12, 12), st.integers(1, 400), st.booleans())
def test_target_snr_is_met_by_the_coarsest_qp(target, log_scale, size, dq):
    chunk = (10.0**log_scale * np.random.default_rng(size).standard_normal(size)).astype(np.float32)
    codec = NNC(target_snr=target, dq=dq)
    stream = codec.encode(chunk)
    back = codec.decode(stream).astype(np.float64)
    x = chunk.astype(np.float64)
    assert 10 * np.log10((x**2).sum() / max(((x - back) ** 2).sum(), 1e-300)) >= target
    decoder = Decoder(stream)
    decoder.decode()
    if decoder.info(CHUNK_TENSOR).payload_type == "RAW_FLOAT":  # stored raw: smaller than coded, and exact
        assert np.array_equal(back, x)
        return
    qp = decoder.info(CHUNK_TENSOR).qp
    coarser = nnc.encoder.Encoder(qp=qp + 1, dq=dq, nonweight_qp=None, nonweight_snr_db=None, raw_when_smaller=False).encode(
        {CHUNK_TENSOR: chunk}
    )
    err = ((coarser.tensors[CHUNK_TENSOR].reconstruction.astype(np.float64) - x) ** 2).sum()
    assert 10 * np.log10((x**2).sum() / err) < target


def test_decode_into_out_and_from_buffers():
    chunk = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    codec = NNC(qp=-20)
    stream = codec.encode(chunk)
    out = np.empty(12, np.float32)
    assert codec.decode(np.frombuffer(stream, np.uint8), out=out) is out
    assert np.array_equal(out.reshape(3, 4), codec.decode(memoryview(stream)))
    with pytest.raises(OutputBufferError, match="out holds 8 bytes"):  # (a DecodeError before)
        codec.decode(stream, out=np.empty(2, np.float32))
    with pytest.raises(DecodeError, match="bytes or a buffer, not a NoneType"):  # (an EncodeError before)
        codec.decode(None)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(["<i4", ">i4", "u1", "bool", "<f4", ">f8", "<f2"]), shape=st.sampled_from([(3, 4), (2, 3, 4), (5, 1, 2)]),
       chunk_order=st.sampled_from("CF"), out_order=st.sampled_from("CF"))
def test_decode_puts_the_chunks_bytes_into_out_in_its_memory_order(dtype, shape, chunk_order, out_order):
    """numcodecs' rule, which zarr 2 relies on for arrays of order="F": the decoded chunk's bytes go into out's
    memory in memory order. Before: an F-contiguous out was filled element by element in C order (a scrambled
    chunk, integers too)."""
    chunk = np.asarray((np.arange(np.prod(shape)).reshape(shape) * 5) % 7, dtype=dtype, order=chunk_order)
    codec = NNC(qp=-20)
    decoded = codec.decode(codec.encode(chunk))
    assert decoded.shape == shape and decoded.dtype == chunk.dtype
    memory = np.ravel(decoded, order="K").tobytes()  # the chunk's bytes, as numcodecs gives them without out
    out = np.zeros(shape, dtype, order=out_order)
    assert codec.decode(codec.encode(chunk), out=out) is out
    assert np.ravel(out, order="K").tobytes() == memory
    if np.dtype(dtype).kind != "f" and chunk_order == out_order:
        assert np.array_equal(out, chunk)  # exact, and in place


@settings(max_examples=30, deadline=None)
@given(st.floats(-320, 300), st.floats(5, 40))
def test_target_snr_holds_for_float64_chunks_of_any_scale(log_scale, target):
    """Before: at scales of 1e-200 the squares underflowed, the allowed error was 0 and every qp "met" it: the
    chunk decoded as zeros (0 dB), no error. The target is met, or EncodeError."""
    x = 10.0**log_scale * np.random.default_rng(int(log_scale) % 7).standard_normal(64)
    assume(np.abs(x).max() > 0 and np.isfinite(x).all())
    codec = NNC(target_snr=target)
    try:
        back = codec.decode(codec.encode(x))
    except EncodeError as exc:
        assert "no qp reaches" in str(exc) or "float32 range" in str(exc)
        return
    scale = np.abs(x).max()
    assert 10 * np.log10(((x / scale) ** 2).sum() / max((((x - back) / scale) ** 2).sum(), 1e-300)) >= target


def test_a_misspelt_setting_is_an_encode_error_as_from_config_gives():
    with pytest.raises(EncodeError, match="unknown NNC codec setting.*'qpp'"):  # (Python's TypeError before)
        NNC(qpp=-30)


def test_bad_input_gets_the_documented_errors():
    with pytest.raises(EncodeError, match="at most one"):
        NNC(qp=-20, step=0.1)
    nan_chunk = np.array([1.0, np.nan])
    assert NNC().decode(NNC().encode(nan_chunk)).tobytes() == nan_chunk.tobytes()  # kept exactly (raw)
    inf_chunk = np.array([1.0, np.inf, -0.25])  # no SNR to meet: kept exactly (raw) too
    assert NNC(target_snr=20).decode(NNC(target_snr=20).encode(inf_chunk)).tobytes() == inf_chunk.tobytes()
    with pytest.raises(EncodeError, match="float32 range"):
        NNC(target_snr=20).encode(np.array([1.0, 1e300]))
    with pytest.raises(EncodeError):
        NNC().encode(np.array(["a"], dtype=object))
    with pytest.raises(DecodeError, match="one tensor named 'chunk'"):
        NNC().decode(nnc.encode({"a": [1.0], "b": [2.0]}))
    with pytest.raises(NNCError):
        NNC().decode(b"\x00\x04garbage")


def test_config_round_trip_and_registry():
    codec = NNC(target_snr=35.5, dq=False, rdoq_lambda=0.1)
    assert NNC.from_config(codec.get_config()) == codec
    assert "target_snr=35.5" in repr(codec)
    numcodecs = pytest.importorskip("numcodecs", reason="numcodecs not installed: registry not tested")
    assert numcodecs.get_codec(codec.get_config()) == codec


def test_zarr_array_with_the_codec():
    zarr = pytest.importorskip("zarr", reason="zarr not installed: zarr round trip not tested")
    if not hasattr(zarr, "create_array"):
        pytest.skip("zarr < 3: create_array missing")
    x = np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32)
    a = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=x.shape,
        chunks=(16, 16),
        dtype="float32",
        zarr_format=2,
        compressors=NNC(target_snr=30),
    )
    a[:] = x
    back = a[:]
    for i in range(0, 40, 16):  # every chunk meets the target on its own
        for j in range(0, 30, 16):
            c, b = x[i : i + 16, j : j + 16].astype(np.float64), back[i : i + 16, j : j + 16]
            assert 10 * np.log10((c**2).sum() / ((c - b) ** 2).sum()) >= 30


def test_decoding_chunks_does_not_load_the_encoder():
    import subprocess
    import sys

    stream = NNC(qp=-20).encode(np.linspace(-1, 1, 16, dtype=np.float32))
    code = (
        "import sys; from nnc.codec import NNC; NNC().decode(sys.stdin.buffer.read()); "
        "loaded = [m for m in sys.modules if m.startswith(('nnc.encod', 'nnc.search'))]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], input=stream, check=True)


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">f2", "<f4"])
def test_chunks_of_either_byte_order_come_back_as_their_own_bytes(dtype):
    """Before: a big-endian chunk decoded to native bytes, which zarr v2 read as big-endian: garbage, exit 0."""
    from nnc.codec import NNC

    codec = NNC(qp=-20)
    chunk = np.arange(6).astype(dtype)
    back = codec.decode(codec.encode(chunk))
    assert back.dtype == chunk.dtype and back.tobytes() == chunk.tobytes()
    out = np.empty(6, dtype)
    codec.decode(codec.encode(chunk), out=out)
    assert np.array_equal(out, chunk)
    other = np.empty(6, np.dtype(dtype).newbyteorder("S"))  # a caller's array of the other byte order: values
    codec.decode(codec.encode(chunk), out=other)
    assert np.array_equal(other, chunk)


def test_zarr_v2_array_of_big_endian_floats_reads_back(tmp_path):
    zarr = pytest.importorskip("zarr", reason="zarr is not installed (optional extra)")
    from nnc.codec import NNC

    try:
        z = zarr.create_array(
            str(tmp_path / "a.zarr"),
            shape=(4,),
            chunks=(2,),
            dtype=">f4",
            zarr_format=2,
            compressors=NNC(qp=-20),
            filters=None,
        )
    except (TypeError, AttributeError):
        pytest.skip("this zarr has no create_array(zarr_format=2, compressors=)")
    z[:] = np.arange(4)
    assert np.array_equal(zarr.open_array(str(tmp_path / "a.zarr"))[:], np.arange(4))


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(dq="False"), "dq must be True or False"),
        (dict(qp=-20.9), "qp must be an integer"),
        (dict(qp=10**6), "outside the float32 range"),
        (dict(step=1e-300), "beyond the float32 steps"),
        (dict(target_snr=float("inf")), "target_snr must be a finite number"),
    ],
)
def test_codec_settings_are_checked_when_the_codec_is_made(settings, words):
    """Before: coerced (bool("False") is True, -20.9 became -20) or refused only at the first chunk, as a
    DecodeError."""
    from nnc.codec import NNC
    from nnc.errors import EncodeError

    with pytest.raises(EncodeError, match=words):
        NNC(**settings)
    with pytest.raises(EncodeError, match=words):
        NNC.from_config(dict(settings, id="nnc"))


def test_from_config_refuses_another_codecs_configuration():
    from nnc.codec import NNC
    from nnc.errors import EncodeError

    with pytest.raises(EncodeError, match="for codec 'zlib'"):
        NNC.from_config({"id": "zlib", "level": 1})
    with pytest.raises(EncodeError, match="is a dict"):
        NNC.from_config([("qp", 1)])
    assert NNC.from_config(NNC(qp=-30).get_config()) == NNC(qp=-30)


def test_structured_and_void_chunks_and_read_only_outputs_are_nnc_errors():
    """Before: a ValueError, a TypeError, or (one-field structured arrays) silently coded as float32."""
    from nnc.codec import NNC
    from nnc.errors import OutputBufferError

    codec = NNC(qp=-20)
    for bad in (np.zeros(2, "V4"), np.zeros(2, [("a", "f4")])):
        with pytest.raises(EncodeError, match="unsupported dtype"):
            codec.encode(bad)
    stream = codec.encode(np.arange(4, dtype=np.float32))
    read_only = np.empty(4, np.float32)
    read_only.flags.writeable = False
    for out in (read_only, b"\0" * 16):
        with pytest.raises(OutputBufferError, match="read-only"):
            codec.decode(stream, out=out)


@given(
    hnp.arrays(
        st.sampled_from([np.int32, np.float32]),
        hnp.array_shapes(min_dims=2, max_dims=4, max_side=6),
        elements=st.integers(-100, 100),
    )
)
def test_fortran_order_chunks_come_back_with_their_shape_and_memory_order(values):
    """Before: a Fortran-order chunk was coded in C order, so its decoded bytes (which zarr v2 reads in the
    array's memory order) were transposed: an int32 arange read back as [[0, 3, 6, 9], ...]."""
    chunk = np.asfortranarray(values)
    codec = NNC(qp=-30, dq=False)  # nearest rounding: within half a step
    stream = codec.encode(chunk)
    back = codec.decode(stream)
    assert back.shape == chunk.shape and np.abs(back - chunk).max() <= step_size(-30, 2)
    if chunk.dtype.kind == "i":
        assert np.array_equal(back, chunk)
    out = np.empty(chunk.size, chunk.dtype)
    codec.decode(stream, out=out)  # the bytes, in the chunk's memory order (as numcodecs' byte codecs give them)
    assert np.array_equal(out, np.ravel(back, order="K")) and np.array_equal(out, np.ravel(back, order="F"))
    fortran_only = chunk.flags.f_contiguous and not chunk.flags.c_contiguous
    assert (Decoder(stream).metadata.get("order") == "F") == fortran_only
    if fortran_only:  # another decoder gives the transposed tensor (spec 6.2.1)
        assert nnc.decode(stream)[CHUNK_TENSOR].shape == chunk.shape[::-1]


def test_zarr_v2_fortran_order_array_reads_back(tmp_path):
    zarr = pytest.importorskip("zarr", reason="zarr is not installed (optional extra)")
    try:
        z = zarr.create_array(
            str(tmp_path / "f.zarr"),
            shape=(6, 8),
            chunks=(3, 4),
            dtype="int32",
            zarr_format=2,
            compressors=NNC(),
            order="F",
        )
    except (TypeError, AttributeError):
        pytest.skip("this zarr has no create_array(zarr_format=2, compressors=, order=)")
    a = np.arange(48, dtype=np.int32).reshape(6, 8)
    z[:] = a
    assert np.array_equal(zarr.open_array(str(tmp_path / "f.zarr"))[:], a)


def test_unknown_settings_and_non_buffers_are_encode_errors():
    """Before: TypeError from __init__ and from memoryview."""
    with pytest.raises(EncodeError, match="unknown NNC codec setting.*'lossless'"):
        NNC(lossless=True)
    with pytest.raises(EncodeError, match="not a list"):
        NNC().encode([1.0, 2.0])


def test_a_stored_configuration_with_a_later_setting_decodes_but_does_not_encode():
    """An array whose stored configuration had a setting this version does not know could not be opened even to
    read (from_config refused it); now it decodes, keeps the setting, and refuses to write chunks without it."""
    chunk = np.linspace(-1, 1, 64, dtype=np.float32)
    stream = NNC(qp=-30).encode(chunk)
    with pytest.warns(UserWarning, match="'lossless' unknown to this version"):
        later = NNC.from_config({"id": "nnc", "qp": -30, "lossless": True})
    assert np.array_equal(later.decode(stream), NNC(qp=-30).decode(stream))
    assert later.get_config()["lossless"] is True and later != NNC(qp=-30)
    with pytest.raises(EncodeError, match="'lossless' that this version of nnc does not know"):
        later.encode(chunk)
    hash(later)


def test_the_default_qp_is_recorded_so_equal_codecs_compare_equal():
    """NNC() coded as NNC(qp=-38) but compared unequal (and recorded qp None in an array's metadata)."""
    assert NNC() == NNC(qp=-38) and hash(NNC()) == hash(NNC(qp=-38))
    assert NNC().get_config()["qp"] == -38 and NNC(step=0.01).qp is None and NNC(target_snr=30).qp is None
    assert NNC.from_config({"id": "nnc", "qp": None}) == NNC()  # configurations written before


def _narrow(name):
    return np.dtype(getattr(pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed"), name))


@given(st.sampled_from(["bfloat16", "float8_e4m3fn", "float8_e5m2"]), SHAPES, st.data())
def test_narrow_float_chunks_decode_in_their_own_dtype(name, shape, data):
    """Before: decoded as float32 (twice or four times the chunk's bytes: zarr read garbage; out= refused)."""
    dtype = _narrow(name)
    if name == "bfloat16":  # multiples of the step, within bfloat16's 8 bits: nearest rounding keeps them
        values = hnp.arrays(np.int16, shape, elements=st.integers(-255, 255)).map(
            lambda k: np.asarray(k / 32).astype(dtype)
        )
    else:  # every bit pattern (NaN and inf too): float8 chunks are coded exactly
        values = hnp.arrays(np.uint8, shape).map(lambda b: np.asarray(b).view(dtype))
    chunk = data.draw(values)
    codec = NNC(qp=-20, dq=False)
    stream = codec.encode(chunk)
    back = codec.decode(stream)
    assert back.dtype == dtype and back.shape == chunk.shape and back.nbytes == chunk.nbytes
    assert np.array_equal(back.astype(np.float32), chunk.astype(np.float32), equal_nan=True)
    out = np.empty(chunk.shape, dtype)
    assert codec.decode(stream, out=out) is out
    assert out.tobytes() == back.tobytes()
    one = dtype.type(1.5)  # a scalar of the format (no buffer protocol): before, an EncodeError
    assert codec.decode(codec.encode(one)).tobytes() == np.asarray(one).tobytes()


def _meets(chunk, back, target):
    x, y = chunk.astype(np.float64), back.astype(np.float64)
    err = ((x - y) ** 2).sum()
    return err == 0 or 10 * np.log10((x**2).sum() / err) >= target


@pytest.mark.parametrize(
    "chunk, target",
    [
        (np.full((4, 4), 3e38, np.float32), 40),  # coarse qps round beyond float32
        (np.array([0.7], np.float32), 200),  # the qps that would reach it overflow int32 levels
        (np.array([[0.5, 0.25]], np.float32), 1000),  # the first guess, qp -663, has no float32 step
    ],
)
def test_target_snr_stores_what_qp_mode_stores(chunk, target):
    """Before: EncodeError naming a qp the caller never gave, though NNC(qp=-20) stores these chunks exactly."""
    codec = NNC(target_snr=target)
    back = codec.decode(codec.encode(chunk))
    assert back.dtype == chunk.dtype and _meets(chunk, back, target)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["float16", "float32", "bfloat16"]),
    hnp.array_shapes(max_dims=2, max_side=12),
    st.floats(0.01, 1e4),
    st.booleans(),
    st.data(),
)
def test_any_finite_chunk_meets_any_positive_target(dtype, shape, target, dq, data):
    """Before: refusals at qps the search should not have tried; bfloat16 chunks ignored the target."""
    dtype = _narrow(dtype) if dtype == "bfloat16" else np.dtype(dtype)
    width = 16 if dtype == np.float16 else 32
    chunk = data.draw(
        hnp.arrays(np.float32, shape, elements=st.floats(width=width, allow_nan=False, allow_infinity=False))
    ).astype(dtype)
    assume(np.all(np.isfinite(chunk.astype(np.float32))))  # (bfloat16 rounds the largest float32 values to inf)
    codec = NNC(target_snr=target, dq=dq)
    back = codec.decode(codec.encode(chunk))
    assert back.dtype == chunk.dtype and back.shape == chunk.shape
    assert _meets(chunk, back, target)


def test_a_target_nothing_reaches_is_refused():
    with pytest.raises(EncodeError, match="300 dB"):  # float64: neither a qp nor float32 raw values reach it
        NNC(target_snr=300).encode(np.array([0.1, 0.3]))


@pytest.mark.parametrize("option", ["qp", "step", "target_snr", "rdoq_lambda"])
def test_huge_settings_are_encode_errors(option):
    """Before: OverflowError."""
    with pytest.raises(EncodeError, match=option):
        NNC(**{option: 10**400})


def test_out_of_objects_is_an_output_buffer_error():
    """Before: TypeError from numpy."""
    from nnc.errors import OutputBufferError

    stream = NNC(qp=-20).encode(np.arange(4, dtype=np.float32))
    for out in (np.empty(2, object), np.empty(1, [("a", object), ("b", object)]), [0.0] * 4):
        with pytest.raises(OutputBufferError):
            NNC().decode(stream, out=out)
