"""Stream-level round trips: encode -> decode reproduces the encoder's reconstruction bit for bit."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnc
from nnc.encoder import Encoder, qp_for_step, scan_permutation
from nnc.engine import COMPILED_AVAILABLE
from nnc.reconstruction import step_size

ROOT = Path(__file__).resolve().parent.parent

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=9)
FLOATS = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, width=32)


def _tensors(draw, max_tensors=3):
    n = draw(st.integers(1, max_tensors))
    out = {}
    for i in range(n):
        shape = draw(SHAPES)
        out[f"t{i}.weight"] = draw(hnp.arrays(np.float32, shape, elements=FLOATS))
    return out


@st.composite
def tensor_dicts(draw):
    return _tensors(draw)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@pytest.mark.quick
@given(tensors=tensor_dicts(), qp=st.integers(-40, -4), dq=st.booleans(), scan=st.integers(0, 4),
       profile=st.sampled_from([0, 1]), n_gtx=st.sampled_from([1, 2, 11, 256]), param_opt=st.booleans(),
       threads=st.sampled_from([1, 2, 3, 0]))
def test_decode_reproduces_encoder_reconstruction(tensors, qp, dq, scan, profile, n_gtx, param_opt, threads):
    res = Encoder(qp=qp, dq=dq, scan_order=scan, profile=profile, n_gtx=n_gtx, param_opt=param_opt,
                  nonweight_qp=None).encode(tensors)
    out = nnc.decode(res.stream, threads=threads)
    threaded = Encoder(qp=qp, dq=dq, scan_order=scan, profile=profile, n_gtx=n_gtx, param_opt=param_opt,
                       nonweight_qp=None, threads=threads).encode(tensors)
    assert threaded.stream == res.stream
    assert list(out) == list(res.tensors)
    for name, t in res.tensors.items():
        assert out[name].dtype == t.reconstruction.dtype
        assert out[name].shape == (tensors[name].shape or (1,))
        np.testing.assert_array_equal(out[name].view(np.uint8), t.reconstruction.view(np.uint8))


@settings(deadline=None)
@given(tensors=tensor_dicts(), qp=st.integers(-40, -4))
def test_uniform_error_is_at_most_half_a_step(tensors, qp):
    out = nnc.decode(nnc.encode(tensors, qp=qp, dq=False, nonweight_qp=None))
    step = float(step_size(qp, 2))
    for name, arr in tensors.items():
        err = np.abs(out[name].reshape(-1).astype(np.float64) - arr.reshape(-1).astype(np.float64))
        assert err.max(initial=0) <= step / 2 + 1e-6 * max(1.0, np.abs(arr).max(initial=0))


@settings(deadline=None)
@given(arr=hnp.arrays(np.int64, hnp.array_shapes(max_dims=3, max_side=8),
                      elements=st.integers(-(2**31) + 1, 2**31 - 1)))
def test_integer_tensors_are_lossless(arr):
    out = nnc.decode(nnc.encode({"ints": arr}))
    assert out["ints"].dtype == np.int32
    np.testing.assert_array_equal(out["ints"].reshape(arr.shape or (1,)), arr.reshape(arr.shape or (1,)))


@pytest.mark.parametrize("dtype,code", [("float16", 8), ("float64", 9)])
def test_input_dtype_is_restored_in_profile_1(dtype, code):
    arr = np.linspace(-1, 1, 24).reshape(4, 6).astype(dtype)
    res = Encoder(qp=-30).encode({"w": arr})
    dec = nnc.Decoder(res.stream)
    assert dec.info("w").decompressed_data_format == code
    out = dec.decode()["w"]
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, res.tensors["w"].reconstruction)


@pytest.mark.quick
def test_raw_float_tensors_are_exact():
    arr = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    out = nnc.decode(nnc.encode({"keep": arr, "q": arr}, qp=-10, raw=["keep"]))
    np.testing.assert_array_equal(out["keep"], arr)
    assert nnc.Decoder(nnc.encode({"keep": arr}, raw=["keep"])).info("keep").payload_type == "RAW_FLOAT"


def test_block_ndu_with_bias_round_trips_in_coding_order():
    rng = np.random.default_rng(1)
    tensors = {"fc.weight": rng.standard_normal((20, 9)).astype(np.float32),
               "fc.bias": rng.standard_normal(20).astype(np.float32)}
    res = Encoder(qp=-30, blocks=True, scan_order=1).encode(tensors)
    dec = nnc.Decoder(res.stream)
    assert [t.name for t in dec.tensors()] == ["fc.bias", "fc.weight"]
    assert dec.info("fc.weight").payload_type == "BLOCK"
    out = dec.decode()
    for k in tensors:
        np.testing.assert_array_equal(out[k], res.tensors[k].reconstruction)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_kept_exactly_in_a_raw_float_unit(bad):
    arr = np.zeros((3, 3), np.float32)
    arr[1, 1] = bad
    stream = nnc.encode({"w": arr})
    assert nnc.Decoder(stream).info("w").payload_type == "RAW_FLOAT"
    assert nnc.decode(stream)["w"].tobytes() == arr.tobytes()


def test_decode_accepts_bytes_path_and_file(tmp_path):
    stream = nnc.encode({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, qp=-20)
    path = tmp_path / "s.nnr"
    path.write_bytes(stream)
    a = nnc.decode(stream)["w"]
    np.testing.assert_array_equal(a, nnc.decode(path)["w"])
    np.testing.assert_array_equal(a, nnc.decode(str(path))["w"])
    np.testing.assert_array_equal(a, nnc.decode(io.BytesIO(stream))["w"])
    np.testing.assert_array_equal(a, nnc.decode(bytearray(stream))["w"])
    np.testing.assert_array_equal(a, nnc.decode(memoryview(stream))["w"])


def test_threads_give_the_first_error_in_stream_order():
    """With several threads, an invalid stream raises what one thread raises: the first bad unit's error."""
    from nnc import container as C

    rng = np.random.default_rng(3)
    stream = nnc.encode({f"l{i}.weight": rng.standard_normal((30, 30)).astype(np.float32) for i in range(6)},
                        qp=-30)
    units = list(C.iter_units(stream))
    broken = bytearray(stream)
    for u in (units[5], units[7]):  # the 3rd and 5th NDUs: payload bytes after the first two zeroed
        broken[u.payload_offset + 2:u.end] = bytes(u.end - u.payload_offset - 2)
    errors = []
    for threads in (1, 2, 4):
        with pytest.raises(nnc.errors.DecodeError) as info:
            nnc.decode(bytes(broken), threads=threads)
        errors.append((type(info.value), str(info.value), info.value.offset))
    assert errors[0] == errors[1] == errors[2]
    assert units[5].payload_offset <= errors[0][2] <= units[5].end


def test_encoder_threads_give_the_first_error_in_tensor_order():
    good = np.ones((30, 30), np.float32)
    tensors = {"a": good, "b": np.full((4, 4), 2**40, np.int64), "c": good, "d": np.array([-2**40], np.int64)}
    for threads in (1, 2, 4):
        with pytest.raises(nnc.errors.EncodeError, match="integer tensor 'b' has values outside int32"):
            Encoder(threads=threads).encode(tensors)
    with pytest.raises(nnc.errors.EncodeError, match="threads"):
        Encoder(threads=-1)


def test_threads_keep_progress_in_stream_order_and_check_their_argument():
    rng = np.random.default_rng(4)
    stream = nnc.encode({f"l{i}.weight": rng.standard_normal((20, 20)).astype(np.float32) for i in range(5)})
    seen = []
    nnc.Decoder(stream).decode(progress=lambda t: seen.append(t.name), threads=3)
    assert seen == [f"l{i}.weight" for i in range(5)]
    seen = []
    Encoder(threads=3).encode(nnc.decode(stream), progress=lambda name, n: seen.append(name))
    assert seen == [f"l{i}.weight" for i in range(5)]
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads"):
            nnc.decode(stream, threads=bad)


def test_random_access_decodes_one_tensor():
    rng = np.random.default_rng(2)
    tensors = {f"l{i}.weight": rng.standard_normal((8, 8)).astype(np.float32) for i in range(4)}
    stream = nnc.encode(tensors, qp=-24)
    dec = nnc.Decoder(stream)
    full = nnc.decode(stream)
    np.testing.assert_array_equal(dec.decode_tensor("l2.weight"), full["l2.weight"])
    assert list(dec.decode(["l3.weight", "l1.weight"])) == ["l1.weight", "l3.weight"]
    with pytest.raises(KeyError):
        dec.decode_tensor("missing")


@given(step=st.floats(1e-6, 10.0))
def test_qp_for_step_is_nearest_in_log_domain(step):
    qp = qp_for_step(step)
    err = abs(np.log2(float(step_size(qp, 2))) - np.log2(step))
    for other in (qp - 1, qp + 1):
        assert err <= abs(np.log2(float(step_size(other, 2))) - np.log2(step)) + 1e-12


@given(h=st.integers(1, 40), w=st.integers(1, 40), scan=st.integers(0, 4))
def test_scan_permutation_is_a_permutation(h, w, scan):
    perm = scan_permutation(h, w, scan)
    assert sorted(perm.tolist()) == list(range(h * w))


def test_decoder_only_import_does_not_load_the_encoder():
    import subprocess
    import sys

    code = ("import sys, nnc; nnc.Decoder; "
            "assert 'nnc.encoder' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not COMPILED_AVAILABLE, reason="the compiled engine nnc._engine is not built")
def test_decoding_with_the_compiled_engine_loads_no_encoder_nor_the_python_engine():
    """The container and the threaded decoder took block_row_count from the pure-Python engine, which loaded it
    whole (its trellis and encoder too) into every decode."""
    import subprocess
    import sys

    stream = sorted((ROOT / "conformance" / "streams").glob("*/*.nnr"))[0]
    code = (f"import sys, nnc; nnc.decode(open({str(stream)!r}, 'rb').read()); "
            "loaded = [m for m in sys.modules if m.startswith(('nnc.encod', 'nnc.engine.python', 'nnc.formats'))]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, NNC_ENGINE="cython"))
