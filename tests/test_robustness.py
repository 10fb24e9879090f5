"""Bad input is a test: truncations, bit flips, wrong sizes, huge dims, reserved values (spec 15).

Every case must raise an nnc.DecodeError (never another exception, never a crash or a
hang) or, for the rare mutation that still forms a valid stream, decode normally.
"""

import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnc
from nnc import container as C
from vectors import manifests

TIME_LIMIT = 1.0  # seconds per decode of a mutated stream


def _sample_streams():
    rng = np.random.default_rng(7)
    streams = {
        "p1_dq_scan": nnc.encode({"a.weight": rng.standard_normal((40, 33)).astype(np.float32),
                                  "a.bias": rng.standard_normal(40).astype(np.float32)},
                                 qp=-26, dq=True, scan_order=1),
        "p0_urq": nnc.encode({"w": rng.standard_normal((9, 7)).astype(np.float32),
                              "n": np.arange(12, dtype=np.int32)}, qp=-20, dq=False, profile=0),
        "raw": nnc.encode({"r": rng.standard_normal((3, 4)).astype(np.float32)}, raw=["r"]),
    }
    for d, e in manifests()[:40:7]:
        if "sequence" not in e:
            streams[e["name"]] = (d / e["file"]).read_bytes()
    return streams


STREAMS = _sample_streams()


def _decode_or_decode_error(data: bytes) -> None:
    start = time.monotonic()
    try:
        nnc.decode(data)
    except nnc.DecodeError as exc:
        assert exc.clause is not None or "spec" in str(exc) or exc.offset is not None, exc
    assert time.monotonic() - start < TIME_LIMIT


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_truncation_raises_decode_error(name):
    """A cut inside a unit is an error; so is a cut between units once the topology unit has
    announced the tensors, and a cut that leaves no NDU and no announcement (spec 3.5). Streams
    that announce nothing (NNCodec's) cut between units after an NDU are shorter valid streams."""
    data = STREAMS[name]
    nnc.decode(data)
    units = list(C.iter_units(data))
    announces = "tensors" in nnc.Decoder(data).metadata
    first_ndu = next(u.end for u in units if u.type == C.NNR_NDU)
    boundaries = {u.end for u in units}
    for cut in range(len(data)):
        if cut in boundaries and not announces and cut >= first_ndu:
            decoded = nnc.decode(data[:cut])
            assert 0 < len(decoded) <= len(nnc.decode(data))
            continue
        with pytest.raises(nnc.TruncatedError if cut in boundaries else nnc.DecodeError):
            nnc.decode(data[:cut])


@pytest.mark.parametrize("name", sorted(STREAMS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bit_flips_give_decode_errors_or_valid_output(name, data):
    stream = bytearray(STREAMS[name])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] ^= 1 << data.draw(st.integers(0, 7))
    _decode_or_decode_error(bytes(stream))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    _decode_or_decode_error(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_random_bytes_after_a_valid_start(tail):
    _decode_or_decode_error(STREAMS["p1_dq_scan"][:4] + tail)


def _units(stream):
    return [(u.offset, u.size) for u in C.iter_units(stream)]


def test_unit_size_larger_than_data_is_truncation():
    s = bytearray(STREAMS["p1_dq_scan"])
    off, size = _units(bytes(s))[-1]
    s[off:off + 2] = struct.pack(">H", size + 5)
    with pytest.raises(nnc.TruncatedError):
        nnc.decode(bytes(s))


def test_unit_size_smaller_than_header_is_rejected():
    s = bytearray(STREAMS["p1_dq_scan"])
    off, _ = _units(bytes(s))[1]
    s[off:off + 2] = struct.pack(">H", 2)
    with pytest.raises(nnc.DecodeError):
        nnc.decode(bytes(s))


def test_unknown_unit_type_is_rejected():
    s = bytearray(STREAMS["p1_dq_scan"])
    off, _ = _units(bytes(s))[2]
    s[off + 2] = (s[off + 2] & 0x03) | (9 << 2)  # nnr_unit_type 9 is reserved
    with pytest.raises(nnc.DecodeError):
        nnc.decode(bytes(s))


def test_first_unit_must_be_start_unit():
    s = STREAMS["p1_dq_scan"]
    with pytest.raises(nnc.DecodeError):
        nnc.decode(s[4:])


def test_trailing_garbage_in_payload_is_rejected():
    s = bytearray(STREAMS["p0_urq"])
    off, size = _units(bytes(s))[-1]
    s[off:off + 2] = struct.pack(">H", size + 1)
    s.insert(off + size, 0)
    with pytest.raises(nnc.DecodeError):
        nnc.decode(bytes(s))


@pytest.mark.parametrize("dims", [[2**30, 2**30], [10**9], [1 << 20, 1 << 20, 1 << 20], [65536, 65536]])
def test_huge_declared_dims_are_refused_before_allocation(dims):
    stream = nnc.encode({"w": np.ones((2, 3), np.float32)}, qp=-8, dq=False)
    units = list(C.iter_units(stream))
    ndu = units[-1]
    header = dict(ndu.header)
    header["tensor_dimensions"] = dims
    header["scan_order"] = 0
    bad = stream[:ndu.offset] + C.build_ndu(header, bytes(ndu.payload), profile=1)
    start = time.monotonic()
    with pytest.raises(nnc.LimitError):
        nnc.decode(bad)
    assert time.monotonic() - start < TIME_LIMIT


def test_configurable_limit():
    stream = nnc.encode({"w": np.ones((64, 64), np.float32)}, qp=-8)
    with pytest.raises(nnc.LimitError):
        nnc.decode(stream, limits=nnc.Limits(max_tensor_elements=1000))
    with pytest.raises(nnc.LimitError):
        nnc.decode(stream, limits=nnc.Limits(max_total_bytes=1000))


def test_errors_carry_clause_and_offset():
    s = STREAMS["p1_dq_scan"]
    try:
        nnc.decode(s[: len(s) - 3])
    except nnc.DecodeError as exc:
        assert exc.offset is not None and "byte offset" in str(exc)
        assert exc.clause is not None and "spec" in str(exc)
    else:
        pytest.fail("truncated stream decoded")


@pytest.mark.parametrize("failure", [KeyError("x"), TypeError("x"), IndexError("x"), AttributeError("x")])
def test_an_unforeseen_parser_failure_is_a_decode_error(failure):
    """container._parse_struct's last resort: no stream reaches it (a header fuzzing campaign did not), but a
    failure of the parser library or of a syntax declaration still comes out as a DecodeError."""
    import io

    import construct as cs

    class Failing(cs.Construct):
        def _parse(self, stream, context, path):
            raise failure

    with pytest.raises(nnc.errors.DecodeError, match=f"malformed syntax: {type(failure).__name__}") as info:
        C._parse_struct(cs.Struct("x" / Failing()), io.BytesIO(b"\x00"), {}, "7.4", 10, 10)
    assert info.value.clause == "7.4" and info.value.offset == 10


@pytest.mark.parametrize("option, value, words", [
    ("qp", "x", "qp must be an integer, not 'x'"),
    ("qp", -20.5, "qp must be an integer"),              # int() used to truncate it to -20
    ("rdoq_lambda", "a", "rdoq_lambda must be a number"),
    ("rdoq_lambda", None, "rdoq_lambda must be a number"),
    ("step", "0.1", "step must be a number"),
    ("n_gtx", None, "n_gtx must be an integer"),
    ("profile", True, "profile must be an integer"),
    ("dcv1_s", 1.5, "dcv1_s must be an integer"),
])
def test_an_option_of_the_wrong_type_is_an_encode_error_naming_it(option, value, words):
    # these were TypeErrors and ValueErrors from deep inside, or silent truncation
    with pytest.raises(nnc.EncodeError, match=words):
        nnc.encode({"w": np.ones((2, 2), np.float32)}, **{option: value})


def test_numpy_scalars_and_integral_floats_are_options_too():
    w = {"w": np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)}
    expected = nnc.encode(w, qp=-20, qp_density=2, dcv1_s=2)
    assert nnc.encode(w, qp=np.int64(-20), qp_density=2.0, dcv1_s=np.int32(2)) == expected
