"""Inputs of the decoder fuzzing campaign (benchmarks/fuzz_decoder.py), replayed through every entry point.

tests/data/fuzz/ holds inputs the campaign kept because they reached new decoder code
(its corpus, minimised by libFuzzer), and every input that ever made the decoder fail
(named ``finding-*.nnr``; see benchmarks/results/fuzz.md).  Each one must,
through each entry point the campaign fuzzes, either decode or be refused with an
``nnc.NNCError``: no other exception, no allocation beyond the ``Limits`` given.
"""

import sys
from pathlib import Path

import pytest

import nnc
from nnc.decoder import DecoderState

DATA = Path(__file__).resolve().parent / "data" / "fuzz"
INPUTS = sorted(DATA.glob("*.nnr"))
SUITE = Path(__file__).resolve().parent.parent / "conformance" / "streams"
LIMITS = nnc.Limits(max_tensor_elements=1 << 20, max_total_bytes=32 << 20)
PY_LIMITS = nnc.Limits(max_tensor_elements=1 << 11, max_total_bytes=1 << 13)  # the campaign's, for the Python engine


def base_state() -> DecoderState:
    state = DecoderState()
    nnc.decode((SUITE / "p1_incremental_0_base" / "stream.nnr").read_bytes(), state=state)
    return state


def decode_every_way(data: bytes) -> None:
    """The campaign's entry points; raises whatever the decoder raises."""
    nnc.decode(data, limits=LIMITS)
    dec = nnc.Decoder(data, limits=LIMITS)
    for info in reversed(dec.tensors()):
        dec.decode_tensor(info.name)
    nnc.decode(data, limits=LIMITS, entry_points="use")
    nnc.decode(data, limits=LIMITS, entry_points="verify")
    state = base_state()
    nnc.decode(data, limits=LIMITS, state=state)
    nnc.decode(data, limits=LIMITS, state=state)
    nnc.decode(data, limits=PY_LIMITS, engine="python")


def refused_only_with_nnc_errors(data: bytes) -> None:
    try:
        decode_every_way(data)
    except nnc.NNCError:
        pass


def test_there_are_inputs():
    assert len(INPUTS) >= 10


@pytest.mark.parametrize("path", INPUTS, ids=[p.stem for p in INPUTS])
def test_fuzz_input_is_decoded_or_refused_with_an_nnc_error(path):
    refused_only_with_nnc_errors(path.read_bytes())


def test_the_replay_catches_a_foreign_exception(monkeypatch):
    """A decoder bug that raises something else than an NNCError fails the replay."""
    from nnc.decoder import Decoder

    def broken(self, unit, params, infos, *args):
        raise IndexError("a bug")

    monkeypatch.setattr(Decoder, "_decode_ndu_payload", broken)
    stream = nnc.encode({"w": [[1.0, 2.0]] * 3}, qp=-8)
    with pytest.raises(IndexError):
        refused_only_with_nnc_errors(stream)


def test_the_slow_python_engine_finding_decodes_alike_in_both_engines():
    """Run 3's finding: a valid stream over the 1-s check only under instrumentation (fuzz.md).

    It decodes, the same in both engines, and the campaign's Python-engine limits now refuse it.
    """
    data = (DATA / "finding-72f4f208c149020e.nnr").read_bytes()
    compiled = nnc.decode(data)
    python = nnc.decode(data, engine="python")
    assert sum(v.size for v in compiled.values()) == 4590
    assert compiled.keys() == python.keys()
    for name in compiled:
        assert compiled[name].tobytes() == python[name].tobytes()
    with pytest.raises(nnc.LimitError):
        nnc.decode(data, limits=PY_LIMITS, engine="python")


@pytest.mark.parametrize("engine", ["python"] + (["cython"] if nnc.engine.COMPILED_AVAILABLE else []))
def test_a_payload_ending_in_a_remainder_is_truncated_in_both_engines(engine):
    """Probe finding (2026-12-06): the compiled engine read zeros past the payload's end and let the level-range
    check they failed replace the truncation (DecodeError 10.1 where the Python engine said TruncatedError 9.2).
    The input is mf_level_overflow with mps_qp_density 1."""
    data = (DATA / "finding-801bca12fc7f4e39.nnr").read_bytes()
    with pytest.raises(nnc.TruncatedError) as info:
        nnc.decode(data, engine=engine)
    assert (info.value.clause, info.value.offset) == ("9.2", 45)


@pytest.mark.skipif(sys.platform != "linux", reason="an address-space limit (RLIMIT_AS) as Linux applies it")
def test_a_stream_within_the_limits_the_machine_cannot_allocate_is_a_limit_error():
    """Probe finding (2026-12-06): 42 bytes declaring 2^31 - 1 int32 elements of a one-entry codebook (nothing
    coded, so no per-byte bound; 8 GiB of output, just within max_total_bytes) made numpy's MemoryError escape
    the API where memory is smaller. It is a LimitError now, naming the tensor."""
    import subprocess

    code = (
        "import resource, nnc\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
        f"data = open({str(DATA / 'finding-fb2e7bdfbe88860f.nnr')!r}, 'rb').read()\n"
        "for engine in ('python', 'cython' if nnc.engine.COMPILED_AVAILABLE else 'python'):\n"
        "    try:\n"
        "        nnc.decode(data, engine=engine)\n"
        "    except nnc.LimitError as exc:\n"
        "        assert exc.clause == '15.2' and \"tensor 'w' needs about\" in exc.message, exc\n"
        "    else:\n"
        "        raise AssertionError('decoded')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
