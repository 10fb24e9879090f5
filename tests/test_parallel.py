"""Block rows of one tensor in parallel threads (spec 11.4, A.5): the same levels and bytes as sequential coding."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nnc
from nnc import _parallel
from nnc.engine import get_engine

ENGINES = ["cython", "python"]


def _weights(seed, height, width, zero_rows):
    rng = np.random.default_rng(seed)
    w = (rng.laplace(size=(height, width)) * 0.05).astype(np.float32)
    for r in zero_rows:
        if r < height:
            w[r] = 0
    return w


def _tensor_decoder(stream, engine):
    """(payload decoder positioned at the weight, its keyword arguments, info) of a one-tensor stream."""
    dec = nnc.Decoder(stream)
    info = dec.tensors()[0]
    unit, params = dec._ndus[0]
    edition = 2 if params.profile == 1 else 1
    pd = get_engine(engine).PayloadDecoder(unit.payload, edition)
    pd.read_qp_offset(6 + params.qp_density)
    return pd, dict(n_gtx=info.n_gtx, dq=info.dq, scan_order=info.scan_order), info


shapes = st.tuples(st.integers(2, 140), st.integers(2, 80))


@given(shape=shapes, scan_order=st.integers(1, 4), dq=st.booleans(), row_skip=st.booleans(),
       profile=st.sampled_from([0, 1]), threads=st.integers(2, 5), seed=st.integers(0, 2**16),
       zero_rows=st.lists(st.integers(0, 139), max_size=12))
def test_parallel_decode_equals_sequential(shape, scan_order, dq, row_skip, profile, threads, seed, zero_rows):
    height, width = shape
    w = _weights(seed, height, width, zero_rows)
    stream = nnc.encode({"w": w}, qp=-28, dq=dq, scan_order=scan_order, row_skip=row_skip and profile == 1,
                        profile=profile)
    pd, kw, info = _tensor_decoder(stream, "cython")
    ref = pd.fork().decode_tensor(height, width, **kw)
    levels, after = _parallel.decode_tensor_threads(pd, height, width, entry_points=info.entry_points,
                                                    threads=threads, min_elements=1, **kw)
    np.testing.assert_array_equal(levels, ref)
    after.finish()
    if _parallel.block_row_count(height, width, scan_order) > 1:
        assert after is pd  # the entry points of nnc's streams pass the exact check: no sequential retry


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("scan_order", [1, 2, 3, 4])
def test_parallel_decode_every_scan_order(engine, dq, scan_order):
    # 150 rows: a partial last block row for every block size; rows 3 and 40..60 skipped
    w = _weights(1, 150, 70, [3] + list(range(40, 61)))
    stream = nnc.encode({"w": w}, qp=-28, dq=dq, scan_order=scan_order, row_skip=True)
    pd, kw, info = _tensor_decoder(stream, engine)
    ref = pd.fork().decode_tensor(150, 70, **kw)
    levels, after = _parallel.decode_tensor_threads(pd, 150, 70, entry_points=info.entry_points,
                                                    threads=3, min_elements=1, **kw)
    assert after is pd
    np.testing.assert_array_equal(levels, ref)
    after.finish()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("field", [0, 1, 2])
def test_wrong_entry_points_fall_back_to_sequential(engine, field):
    w = _weights(2, 200, 40, [])
    stream = nnc.encode({"w": w}, qp=-28, dq=True, scan_order=1)
    pd, kw, info = _tensor_decoder(stream, engine)
    ref = pd.fork().decode_tensor(200, 40, **kw)
    eps = [list(e) for e in info.entry_points]
    eps[11][field] = (eps[11][field] + 1) % (8 if field == 1 else 256)   # block row 12 starts a range
    levels, after = _parallel.decode_tensor_threads(pd, 200, 40, entry_points=eps, threads=4,
                                                    min_elements=1, **kw)
    assert after is not pd
    np.testing.assert_array_equal(levels, ref)
    after.finish()


def test_range_decoding_records_the_boundary():
    w = _weights(3, 100, 30, [])
    stream = nnc.encode({"w": w}, qp=-28, dq=True, scan_order=1)
    for engine in ENGINES:
        pd, kw, info = _tensor_decoder(stream, engine)
        out = np.full(3000, 7, dtype=np.int32)
        pd.decode_tensor(100, 30, entry_points=info.entry_points, start_block_row=2, stop_block_row=5,
                         out=out, **kw)
        offset = sum(e[2] for e in info.entry_points[:5])
        assert pd.last_boundary == (offset, info.entry_points[4][0], info.entry_points[4][1], True)
        ref = pd.fork().decode_tensor  # noqa: F841
        assert (out[:16 * 30] == 7).all() and (out[40 * 30:] == 7).all()


# -- parallel encoding ---------------------------------------------------------------

def _valid_levels(w, dq, scan_order, row_skip):
    """Reconstruction integers n on a valid DQ path through the scan, all-zero rows skipped
    as row skipping does (spec 10.2, 11.5), from coded values k = round(w / 0.05)."""
    from nnc.engine.python import TensorScan, dq_reconstruct
    from nnc.tables import NEXT_DQ_STATE

    height, width = w.shape
    k = np.round(w / np.float32(0.05)).astype(np.int64)
    if not dq:
        return k.astype(np.int32).ravel()
    n = np.zeros_like(k)
    skip = ~np.any(k != 0, axis=1) if row_skip else np.zeros(height, bool)
    scan, state = TensorScan(height, width, scan_order, 2), 0
    for br in range(scan.n_block_rows):
        for row, c0, c1 in scan.segments(br):
            if skip[row]:
                for _ in range(width % 4):
                    state = NEXT_DQ_STATE[state][0]
                continue
            for c in range(c0, c1):
                n[row, c] = dq_reconstruct(int(k[row, c]), state)
                state = NEXT_DQ_STATE[state][int(k[row, c]) & 1]
    return n.astype(np.int32).ravel()


def _payload(levels, height, width, edition, threads, **kw):
    pe = get_engine("cython").PayloadEncoder(edition)
    pe.write_qp_offset(-3, 8)
    pe.encode_tensor(levels, height, width, n_gtx=11, threads=threads, **kw)
    pe.encode_tensor(levels[:width], 1, width, n_gtx=11)     # a tensor after it
    return pe.finish()


@given(shape=shapes, scan_order=st.integers(1, 4), dq=st.booleans(), row_skip=st.booleans(),
       profile=st.sampled_from([0, 1]), threads=st.integers(2, 6), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.002, 0.05, 1.0]), zero_rows=st.lists(st.integers(0, 139), max_size=12))
def test_parallel_encode_same_bytes(shape, scan_order, dq, row_skip, profile, threads, seed, scale, zero_rows):
    height, width = shape
    w = _weights(seed, height, width, zero_rows) * np.float32(scale / 0.05)
    edition = 2 if profile == 1 else 1
    levels = _valid_levels(w, dq, scan_order, row_skip and edition == 2)
    kw = dict(dq=dq, scan_order=scan_order, row_skip=row_skip and edition == 2)
    one = _payload(levels, height, width, edition, 1, **kw)
    assert _payload(levels, height, width, edition, threads, **kw) == one
    assert _payload(levels, height, width, edition, threads, param_opt=False, **kw) == \
        _payload(levels, height, width, edition, 1, param_opt=False, **kw)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scan_order", [1, 2, 3, 4])
def test_parallel_decode_dq_with_row_skip(engine, scan_order):
    # DQ with skipped rows (spec 11.5: W transitions per skipped row segment), 150 rows: partial last block row
    w = _weights(9, 150, 70, [3, 17] + list(range(40, 61)) + [149])
    levels = _valid_levels(w, True, scan_order, True)
    pe = get_engine("cython").PayloadEncoder(2)
    pe.encode_tensor(levels, 150, 70, n_gtx=11, dq=True, scan_order=scan_order, row_skip=True)
    payload = pe.finish()
    spec = dict(height=150, width=70, qp_bits=0, n_gtx=11, dq=True, scan_order=scan_order)
    eps = get_engine("cython").compute_entry_points(payload, 2, [spec])[0]
    pd = get_engine(engine).PayloadDecoder(payload, 2)
    kw = dict(n_gtx=11, dq=True, scan_order=scan_order)
    ref = pd.fork().decode_tensor(150, 70, **kw)
    np.testing.assert_array_equal(ref, levels)
    got, after = _parallel.decode_tensor_threads(pd, 150, 70, entry_points=eps, threads=3, min_elements=1, **kw)
    assert after is pd and after.last_row_skip
    np.testing.assert_array_equal(got, levels)
    after.finish()
    kw = dict(dq=True, scan_order=scan_order, row_skip=True)
    assert _payload(levels, 150, 70, 2, 3, **kw) == _payload(levels, 150, 70, 2, 1, **kw)


@pytest.mark.parametrize("dq", [False, True])
def test_python_engine_accepts_threads(dq):
    # the pure-Python engine codes sequentially: the bytes of the compiled engine with threads
    w = _weights(14, 150, 70, [3, 17] + list(range(40, 61)))
    levels = _valid_levels(w, dq, 1, True)
    kw = dict(n_gtx=11, dq=dq, scan_order=1, row_skip=True)
    payloads = []
    for engine, threads in (("cython", 4), ("python", 4), ("python", 1)):
        pe = get_engine(engine).PayloadEncoder(2)
        pe.encode_tensor(levels, 150, 70, threads=threads, **kw)
        payloads.append(pe.finish())
    assert payloads[0] == payloads[1] == payloads[2]


@pytest.mark.parametrize("engine", ENGINES)
def test_range_arguments_checked(engine):
    w = _weights(15, 100, 30, [])
    stream = nnc.encode({"w": w}, qp=-28, scan_order=1)
    pd, kw, info = _tensor_decoder(stream, engine)
    with pytest.raises(ValueError):
        pd.fork().decode_tensor(100, 30, start_block_row=0, stop_block_row=0, **kw)
    with pytest.raises(ValueError):
        pd.fork().decode_tensor(100, 30, start_block_row=2, stop_block_row=4, **kw)   # no entry points
    with pytest.raises(ValueError):
        pd.fork().decode_tensor(100, 30, out=np.zeros(3000, np.int64), **kw)
    # a range from row 0 without entry points decodes rows 0..2 and stops at row 3's start
    out = np.zeros(3000, np.int32)
    ref = pd.fork().decode_tensor(100, 30, **kw)
    part = pd.fork()
    part.decode_tensor(100, 30, stop_block_row=3, out=out, **kw)
    np.testing.assert_array_equal(out[:24 * 30], ref[:24 * 30])
    assert part.last_boundary[0] == sum(e[2] for e in info.entry_points[:3])


def test_decoder_threads_use_entry_points(monkeypatch):
    monkeypatch.setattr(_parallel, "MIN_ELEMENTS_PER_THREAD", 1)
    calls = []
    real = _parallel.decode_tensor_threads

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nnc.decoder, "decode_tensor_threads", spy)
    model = {"a": _weights(4, 90, 33, [5]), "b": _weights(5, 64, 64, [])}
    stream = nnc.encode(model, qp=-30, scan_order=2, row_skip=True)
    one = nnc.decode(stream, threads=1)
    assert not calls
    two = nnc.decode(stream, threads=2)
    assert calls
    for name in model:
        np.testing.assert_array_equal(one[name], two[name])


@pytest.mark.parametrize("engine", ENGINES)
def test_encoder_threads_same_stream(monkeypatch, engine):
    monkeypatch.setattr(_parallel, "MIN_ELEMENTS_PER_THREAD", 1)
    model = {"a": _weights(6, 70, 40, [3, 4]), "b": _weights(7, 33, 100, []), "c": _weights(8, 9, 9, [])}
    for dq in (False, True):
        kw = dict(qp=-30, dq=dq, scan_order=1, row_skip=not dq, engine=engine)
        assert nnc.encode(model, threads=3, **kw) == nnc.encode(model, threads=1, **kw)


# -- the encoder's default block scan -----------------------------------------------------

def test_default_scan_order_rule():
    from nnc.encoder import DEFAULT_SCAN_MIN_ELEMENTS, default_scan_order

    assert default_scan_order(1024, 1024) == 4
    assert default_scan_order(1023, 1024) == 0          # below 2^20 elements
    assert default_scan_order(64, DEFAULT_SCAN_MIN_ELEMENTS) == 0     # one block row: nothing to split
    assert default_scan_order(DEFAULT_SCAN_MIN_ELEMENTS, 1) == 0
    w = _weights(10, 1100, 1000, [])
    res = nnc.Encoder(qp=-30).encode({"big": w, "small": w[:100, :100]})
    dec = nnc.Decoder(res.stream)
    assert dec.info("big").scan_order == 4 and len(dec.info("big").entry_points) == 17
    assert dec.info("small").scan_order == 0
    assert res.stream == nnc.encode({"big": w, "small": w[:100, :100]}, qp=-30, scan_order=None)
    assert nnc.Decoder(nnc.encode({"big": w}, qp=-30, scan_order=0)).info("big").scan_order == 0


@pytest.mark.oracle
def test_nncodec_decodes_the_default_block_scan(oracle):
    model = {"big.weight": _weights(11, 1100, 1000, [7]), "small.weight": _weights(12, 90, 80, []),
             "big.bias": _weights(13, 1, 1100, [])[0]}
    for options in (dict(qp=-32), dict(qp=-30, dq=False), dict(qp=-32, row_skip=True, dq=False)):
        stream = nnc.encode(model, **options)
        assert nnc.Decoder(stream).info("big.weight").scan_order == 4
        ours = nnc.decode(stream, threads=2)
        theirs = oracle.decompress(stream)
        for name in model:
            np.testing.assert_array_equal(np.asarray(theirs[name], np.float32), ours[name])
