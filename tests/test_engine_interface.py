"""The engine boundary: both engines expose the declared interface (nnc/engine/interface.py),
the quantisers give equal levels in both, and nnc runs from a tree without the compiled engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnc.engine import COMPILED_AVAILABLE, get_engine
from nnc.engine.interface import CLASSES, FUNCTIONS, NAMES, check_engine
from nnc.errors import DecodeError, EncodeError

REPO = Path(__file__).resolve().parent.parent
needs_compiled = pytest.mark.skipif(not COMPILED_AVAILABLE, reason="the compiled engine nnc._engine is not built")
ENGINES = ["python"] + (["cython"] if COMPILED_AVAILABLE else [])


@pytest.mark.parametrize("name", ENGINES)
def test_engine_implements_the_declared_interface(name):
    assert check_engine(get_engine(name)) == []


def _copy_of(module) -> types.ModuleType:
    fake = types.ModuleType(module.__name__)
    for name in NAMES:
        setattr(fake, name, getattr(module, name))
    fake.__all__ = list(module.__all__)
    return fake


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("missing", NAMES)
def test_interface_check_fails_when_a_name_is_removed(name, missing):
    fake = _copy_of(get_engine(name))
    delattr(fake, missing)
    assert any(missing in problem for problem in check_engine(fake))


@pytest.mark.parametrize("name", ENGINES)
def test_interface_check_fails_on_a_changed_signature(name):
    engine = get_engine(name)
    fake = _copy_of(engine)
    fake.compute_entry_points = lambda payload, edition, qp_bits, tensors: None
    assert any("compute_entry_points" in p for p in check_engine(fake))

    class Decoder(engine.PayloadDecoder):
        def finish(self, strict=True):
            return super().finish()

    fake = _copy_of(engine)
    fake.PayloadDecoder = Decoder
    assert any("finish" in p for p in check_engine(fake))


def test_interface_declares_every_documented_method():
    assert set(CLASSES) == {"PayloadDecoder", "PayloadEncoder"}
    assert {"rdoq_levels", "dq_rdoq_levels", "dq_trellis", "compute_entry_points"} <= set(FUNCTIONS)


# ---------------------------------------------------------------------------
# the quantisers of Annex A: equal levels in both engines
# ---------------------------------------------------------------------------

_QUANTISER = settings(max_examples=max(10, settings().max_examples // 4), deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


@needs_compiled
@_QUANTISER
@given(h=st.integers(1, 20), w=st.integers(1, 20), scan=st.integers(0, 4), edition=st.sampled_from([1, 2]),
       lam=st.sampled_from([0.0, 0.05, 0.5, 3.0]), chunk=st.sampled_from([1, 5, 64, 1024, 10**9]),
       seed=st.integers(0, 2**16), spread=st.sampled_from([0.4, 3.0, 50.0]), weighted=st.booleans(),
       n_gtx=st.integers(1, 11))
def test_dq_trellis_equal_in_both_engines(h, w, scan, edition, lam, chunk, seed, spread, weighted, n_gtx):
    rng = np.random.default_rng(seed)
    x = rng.laplace(0, spread, h * w)
    f = rng.random(h * w) if weighted else None
    kw = dict(lam=lam, n_gtx=n_gtx, scan_order=scan, edition=edition, importance=f, chunk=chunk)
    a = get_engine("cython").dq_rdoq_levels(x, h, w, **kw)
    b = get_engine("python").dq_rdoq_levels(x, h, w, **kw)
    np.testing.assert_array_equal(a, b)
    # and the levels are codable: both engines write the same bytes for them
    payloads = []
    for name in ("cython", "python"):
        enc = get_engine(name).PayloadEncoder(edition)
        enc.encode_tensor(a, h, w, n_gtx=n_gtx, dq=True, scan_order=scan)
        payloads.append(enc.finish())
    assert payloads[0] == payloads[1]


@needs_compiled
@_QUANTISER
@given(h=st.integers(1, 20), w=st.integers(1, 20), scan=st.integers(0, 4), edition=st.sampled_from([1, 2]),
       lam=st.sampled_from([0.0, 0.05, 0.5, 3.0]), seed=st.integers(0, 2**16), n_gtx=st.integers(1, 11))
def test_rdoq_equal_in_both_engines(h, w, scan, edition, lam, seed, n_gtx):
    x = np.random.default_rng(seed).laplace(0, 4, h * w)
    kw = dict(lam=lam, n_gtx=n_gtx, scan_order=scan, edition=edition)
    np.testing.assert_array_equal(get_engine("cython").rdoq_levels(x, h, w, **kw),
                                  get_engine("python").rdoq_levels(x, h, w, **kw))


@needs_compiled
@settings(max_examples=30, deadline=None)
@given(x=st.lists(st.floats(-1e3, 1e3), max_size=200))
def test_distortion_only_trellis_equal_in_both_engines(x):
    x = np.array(x, np.float64)
    np.testing.assert_array_equal(get_engine("cython").dq_trellis(x), get_engine("python").dq_trellis(x))


@needs_compiled
@settings(max_examples=40, deadline=None)
@given(halves=st.lists(st.integers(-12, 12), min_size=1, max_size=120), denominator=st.sampled_from([2, 4]),
       weighted=st.booleans(), chunk=st.sampled_from([1, 3, 64]))
def test_distortion_only_trellis_ties_equal_in_both_engines(halves, denominator, weighted, chunk):
    # values on a half or quarter grid make equal costs, where the order of the choices decides
    x = np.array(halves, np.float64) / denominator
    f = (np.arange(x.size) % 3) / 2.0 if weighted else None
    kw = dict(lam=0.0, importance=f, chunk=chunk)
    np.testing.assert_array_equal(get_engine("cython").dq_rdoq_levels(x, 1, x.size, **kw),
                                  get_engine("python").dq_rdoq_levels(x, 1, x.size, **kw))


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 24), w=st.integers(1, 24), scan=st.integers(0, 4), edition=st.sampled_from([1, 2]),
       spread=st.sampled_from([0.3, 2.0, 30.0]), row_skip=st.booleans(), dq=st.booleans(),
       seed=st.integers(0, 2**16), n_gtx=st.integers(1, 11))
def test_choose_init_sets_gives_the_bytes_of_param_opt(engine, h, w, scan, edition, spread, row_skip, dq, seed,
                                                       n_gtx):
    eng = get_engine(engine)
    x = np.random.default_rng(seed).laplace(0, spread, h * w)
    x[: (h * w) // 3] = 0                            # some all-zero rows for row skipping
    if dq:   # the trellis along the scan; row skipping is for uniform levels (as the writer uses it)
        levels = eng.dq_rdoq_levels(x, h, w, lam=0.0, scan_order=scan, edition=edition)
        row_skip = False
    else:
        levels = np.round(x).astype(np.int32)
    kw = dict(n_gtx=n_gtx, dq=dq, scan_order=scan, row_skip=row_skip)
    sets, bits = eng.PayloadEncoder(edition).choose_init_sets(levels, h, w, **kw)
    chosen = eng.PayloadEncoder(edition)
    chosen.encode_tensor(levels, h, w, param_opt=True, **kw)
    if engine == "python":   # the pure-Python encoder also reports its choice
        assert np.array_equal(sets, chosen.last_init_sets)
    given_sets = eng.PayloadEncoder(edition)
    given_sets.encode_tensor(levels, h, w, init_sets=sets, **kw)
    assert given_sets.finish() == chosen.finish()
    if not row_skip:   # the estimate is the one estimate_tensor_bits gives under those sets
        assert bits == eng.estimate_tensor_bits(levels, h, w, n_gtx=n_gtx, dq=dq, scan_order=scan, edition=edition,
                                                init_sets=sets)


@needs_compiled
@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), scan=st.integers(0, 4), spread=st.sampled_from([0.3, 2.0, 30.0]),
       row_skip=st.booleans(), seed=st.integers(0, 2**16), threads=st.sampled_from([1, 2]))
def test_choose_init_sets_equal_in_both_engines(h, w, scan, spread, row_skip, seed, threads):
    levels = np.round(np.random.default_rng(seed).laplace(0, spread, h * w)).astype(np.int32)
    kw = dict(n_gtx=11, scan_order=scan, row_skip=row_skip, threads=threads)
    a = get_engine("cython").PayloadEncoder(2).choose_init_sets(levels, h, w, **kw)
    b = get_engine("python").PayloadEncoder(2).choose_init_sets(levels, h, w, **kw)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]


@needs_compiled
@pytest.mark.parametrize("h,w,scan", [(37, 70, 1), (10, 12, 1), (1, 50, 3), (50, 1, 2), (0, 5, 1), (40, 0, 1), (130, 200, 4)])
def test_scan_helpers_equal_in_both_engines(h, w, scan):
    c, p = get_engine("cython"), get_engine("python")
    np.testing.assert_array_equal(c.scan_permutation(h, w, scan), p.scan_permutation(h, w, scan))
    assert sorted(c.scan_permutation(h, w, scan).tolist()) == list(range(h * w))
    assert c.block_row_count(h, scan) == p.block_row_count(h, scan)


@needs_compiled
@pytest.mark.parametrize("edition", [1, 2])
@pytest.mark.parametrize("h,w", [(40, 0), (0, 40), (100, 0)])
@pytest.mark.parametrize("entry_points", [None, [(0, 0, 0)] * 4])
def test_an_empty_matrix_decodes_alike_in_both_engines(edition, h, w, entry_points):
    """The compiled engine kept a signalled scan order for a matrix of 0 columns (spec 11.1: H <= 1 or W <= 1 scans
    row by row) and refused a valid stream the Python engine decoded (DecodeError 11.3)."""
    results = []
    for eng in (get_engine("cython"), get_engine("python")):
        payload = bytes([0x12, 0xFF, 0x00, 0x55]) + bytes(20)
        dec = eng.PayloadDecoder(payload, edition)
        try:
            out = dec.decode_tensor(h, w, n_gtx=1, scan_order=1, entry_points=entry_points)
            results.append(("decoded", out.shape, dec.bit_position))
        except DecodeError as exc:
            results.append((type(exc).__name__, exc.clause, exc.offset))
    assert results[0] == results[1] and results[0][0] == "decoded"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_matrix_of_more_than_2_to_62_elements_is_refused(engine):
    """The compiled engine computed H x W in 64 bits, wrapping: scan_permutation(2**32, 2**32, 0) and decode_tensor
    of that shape ended the process (SIGSEGV)."""
    eng = get_engine(engine)
    with pytest.raises(DecodeError, match="more than 2..62 elements"):
        eng.PayloadDecoder(bytes(4096), 1).decode_tensor(2**32, 2**32, n_gtx=1)
    with pytest.raises(EncodeError, match="more than 2..62 elements"):
        eng.rdoq_levels(np.zeros(4), 2**32, 2**32, lam=0.0)
    if engine == "cython":  # (the Python engine's scan runs out of memory first)
        with pytest.raises(ValueError, match="more than 2..62 elements"):
            eng.scan_permutation(2**32, 2**32, 0)


@needs_compiled
def test_a_strided_buffer_decodes_its_own_bytes_in_both_engines():
    """The compiled decoder read a strided or reversed memoryview as if its bytes were contiguous: other values, and
    bytes before the buffer."""
    payload = bytes([0x12, 0x34] + list(range(40)))
    reversed_view = memoryview(payload[::-1])[::-1]
    strided = memoryview(bytes(b for x in payload for b in (x, 0xFF)))[::2]
    as_int64 = np.frombuffer(payload, np.uint8).astype(np.int64)[::1]
    for data in (payload, reversed_view, strided, as_int64, np.frombuffer(bytes(b for x in payload for b in (x, 0xFF)), np.uint8)[::2]):
        bits = [eng.PayloadDecoder(data, 1).read_bypass(40) for eng in (get_engine("cython"), get_engine("python"))]
        assert bits[0] == bits[1] == get_engine("python").PayloadDecoder(payload, 1).read_bypass(40)


# ---------------------------------------------------------------------------
# a tree without the compiled engine (issues 15 and 19)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uncompiled_tree(tmp_path_factory):
    """A copy of the package without any compiled extension."""
    root = tmp_path_factory.mktemp("uncompiled")
    shutil.copytree(REPO / "nnc", root / "nnc",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    return root


# An editable install of another checkout must not lend its compiled engine to the copy.
_ONLY_PYTHONPATH = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                    "if not str(getattr(f, '__module__', '')).startswith('__editable__')]\n")


def _run(args, pythonpath, env_extra=None, cwd=None):
    """``python -c CODE`` or ``python -m MODULE ...`` with ``pythonpath`` as the only source of nnc."""
    env = {k: v for k, v in os.environ.items() if k not in ("NNC_ENGINE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(pythonpath)
    env.update(env_extra or {})
    if args[0] == "-m":
        code = _ONLY_PYTHONPATH + f"import runpy; runpy.run_module({args[1]!r}, run_name='__main__', alter_sys=True)"
        args = ["-c", code, *args[2:]]
    else:
        args = ["-c", _ONLY_PYTHONPATH + args[1], *args[2:]]
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd or pythonpath, capture_output=True, text=True,
                          timeout=600)


def test_import_without_compiled_engine_warns_once(uncompiled_tree):
    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    import nnc, nnc.engine, nnc.decoder, nnc.encoder\n"
            "from nnc.engine import EngineFallbackWarning, engine_name, get_engine\n"
            "print(sum(issubclass(w.category, EngineFallbackWarning) for w in caught), len(caught))\n"
            "print(engine_name(), get_engine().__name__)\n"
            "try:\n    get_engine('cython')\nexcept ImportError:\n    print('explicit cython: ImportError')\n")
    out = _run(["-c", code], uncompiled_tree)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["1 1", "python nnc.engine.python", "explicit cython: ImportError"]
    # the warning names the user's import, not a frame of nnc or of importlib (it named <frozen importlib._bootstrap>)
    (uncompiled_tree / "user_script.py").write_text("import nnc\nnnc.encode({'w': [0.5, 1.0]})\n")
    shown = _run(["-c", "import warnings; warnings.simplefilter('always'); import user_script"], uncompiled_tree)
    assert shown.returncode == 0 and "user_script.py:2: EngineFallbackWarning" in shown.stderr, shown.stderr
    quiet = _run(["-c", "import warnings; warnings.simplefilter('error'); import nnc; print('ok')"],
                 uncompiled_tree, {"NNC_ENGINE": "python"})
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok", quiet.stderr


@needs_compiled
@pytest.mark.parametrize("options", [[], ["--rdoq", "0.1"], ["--no-dq", "--rdoq", "0.1"]],
                         ids=["defaults", "rdoq", "no-dq-rdoq"])
def test_uncompiled_python_engine_writes_the_compiled_bytes(uncompiled_tree, tmp_path, options):
    """`NNC_ENGINE=python python -m nnc encode` from a tree without the .so writes the compiled engine's bytes."""
    rng = np.random.default_rng(7)
    model = tmp_path / "m.npz"
    np.savez(model, **{"fc1.weight": rng.laplace(0, 0.05, (24, 40)).astype(np.float32),
                       "fc1.bias": rng.normal(0, 0.1, 24).astype(np.float32),
                       "conv.weight": rng.laplace(0, 0.05, (8, 3, 3, 3)).astype(np.float32)})
    streams = []
    for tree, engine in ((uncompiled_tree, "python"), (REPO, "cython")):
        out = tmp_path / f"{engine}.nnr"
        run = _run(["-m", "nnc", "encode", str(model), "-o", str(out), "-q", *options], tree,
                   {"NNC_ENGINE": engine}, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        streams.append(out.read_bytes())
    assert streams[0] == streams[1]


#: Engine calls with absurd integers (beyond int64, or dimensions far beyond memory), by what they exercise.
_ABSURD = {
    "context_count": "e.context_count(2, N)",
    "scan_permutation": "e.scan_permutation(N, 2, 0)",
    "scan_permutation_huge": "e.scan_permutation(2**40, 2, 1)",
    "block_row_count": "e.block_row_count(N, 1)",
    "estimate_n_gtx": "e.estimate_tensor_bits(lv, 2, 2, n_gtx=N)",
    "estimate_height": "e.estimate_tensor_bits(lv, N, 2, n_gtx=11)",
    "rdoq_n_gtx": "e.rdoq_levels(x, 2, 2, lam=0.1, n_gtx=N)",
    "rdoq_height": "e.rdoq_levels(x, N, 2, lam=0.1)",
    "dq_rdoq_chunk": "e.dq_rdoq_levels(x, 2, 2, lam=0.1, chunk=N)",
    "dq_rdoq_edition": "e.dq_rdoq_levels(x, 2, 2, lam=0.1, edition=N)",
    "bin_cost": "e.bin_cost(N, 1)",
    "read_bypass": "e.PayloadDecoder(b'\\0\\0\\0\\0', 2).read_bypass(N)",
    "read_qp_offset": "e.PayloadDecoder(b'\\0\\0\\0\\0', 2).read_qp_offset(N)",
    "decoder_edition": "e.PayloadDecoder(b'\\0\\0\\0\\0', N)",
    "decode_height": "e.PayloadDecoder(b'\\0\\0\\0\\0', 2).decode_tensor(N, 2, n_gtx=11)",
    "decode_huge": "e.PayloadDecoder(b'\\0\\0\\0\\0', 2).decode_tensor(2**40, 2, n_gtx=11)",
    "decode_n_gtx": "e.PayloadDecoder(b'\\0\\0\\0\\0', 2).decode_tensor(2, 2, n_gtx=N)",
    "decode_codebook": "e.PayloadDecoder(b'\\0\\0\\0\\0', 2).decode_tensor(2, 2, n_gtx=11, codebook_size=N)",
    "decode_start_row": "e.PayloadDecoder(b'\\0\\0\\0\\0', 2).decode_tensor(2, 2, n_gtx=11, start_block_row=N)",
    "encoder_edition": "e.PayloadEncoder(N)",
    "write_bypass": "e.PayloadEncoder(2).write_bypass(N, 3)",
    "write_bypass_bits": "e.PayloadEncoder(2).write_bypass(1, N)",
    "write_qp_offset": "e.PayloadEncoder(2).write_qp_offset(N, 6)",
    "encode_height": "e.PayloadEncoder(2).encode_tensor(lv, N, 2, n_gtx=11)",
    "encode_n_gtx": "e.PayloadEncoder(2).encode_tensor(lv, 2, 2, n_gtx=N)",
    "entry_points": "e.compute_entry_points(b'\\0\\0\\0\\0', N, [])",
}


@pytest.mark.parametrize("name", ENGINES)
def test_absurd_engine_arguments_raise_and_never_crash(name):
    """Before: the Python engine's scan_permutation(2**70, 2, 0) grew until the machine's memory killed the
    process. Every call with an absurd integer raises an exception (the compiled engine's C types: OverflowError;
    checks: ValueError or nnc's errors; a size beyond memory: MemoryError) or returns, in a process whose address
    space is capped at 4 GB, which a runaway allocation would exceed."""
    script = (
        "import json, resource, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from nnc.engine import get_engine\n"
        f"e, N = get_engine({name!r}), 2**70\n"
        "lv, x = np.zeros(4, np.int32), np.zeros(4)\n"
        f"out = {{}}\n"
        f"for key, call in {_ABSURD!r}.items():\n"
        "    try:\n"
        "        eval(call)\n"
        "        out[key] = 'returned'\n"
        "    except Exception as exc:\n"
        "        out[key] = type(exc).__name__\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    import nnc.errors

    allowed = {"returned", "ValueError", "OverflowError", "MemoryError"} | {
        n for n in dir(nnc.errors) if isinstance(getattr(nnc.errors, n), type) and issubclass(
            getattr(nnc.errors, n), nnc.errors.NNCError)}
    results = json.loads(r.stdout)
    assert set(results) == set(_ABSURD)
    assert {k: v for k, v in results.items() if v not in allowed} == {}
    assert results["scan_permutation"] in ("ValueError", "OverflowError")   # refused before anything is allocated
    assert results["decode_height"] != "returned"
