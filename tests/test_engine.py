"""Tests of the entropy-coding engines (docs/dev/engine-api.md, spec clauses 8-11).

Every test that takes the ``eng`` fixture runs against both engines: the pure-Python
engine ``nnc.engine.python`` and the compiled ``nnc._engine`` (skipped, with
the reason, when it is not built).  The differential tests need both.

The scan order and the dependent-quantisation state machine used to build valid
test inputs are re-implemented here from the spec (11.2, 10.2, 11.5), independently
of the engines.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnc.engine import python as P
from nnc.errors import DecodeError, EncodeError, TruncatedError
from nnc.tables import NEXT_DQ_STATE

INT32_MAX = 2**31 - 1

# Scale hypothesis runs with the loaded profile (tests/conftest.py: "ci" by default).
_EXAMPLES = settings().max_examples


def _scaled(fraction: float, *, deadline=None, **kw):
    return settings(max_examples=max(5, int(_EXAMPLES * fraction)), deadline=deadline,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    **kw)


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------

ENGINE_MODULES = {"python": "nnc.engine.python", "cython": "nnc._engine"}


def _load(name):
    try:
        return importlib.import_module(ENGINE_MODULES[name])
    except ImportError as exc:
        pytest.skip(f"{ENGINE_MODULES[name]} is not importable ({exc}); build it with `pip install .`")


@pytest.fixture(scope="module", params=sorted(ENGINE_MODULES))
def eng(request):
    return _load(request.param)


@pytest.fixture(scope="module")
def both():
    return _load("python"), _load("cython")


# ---------------------------------------------------------------------------
# an independent model of the scan (11.1, 11.2) and of DQ (10.2, 11.5)
# ---------------------------------------------------------------------------

def block_size(h, w, scan):
    """Block size B of the effective scan order, or None for the row-major scan."""
    return None if scan == 0 or h <= 1 or w <= 1 else 4 << scan


def block_rows(h, w, scan):
    """Per block row, the row pieces (row, c0, c1) in scan order."""
    B = block_size(h, w, scan)
    if B is None:
        return [[(r, 0, w) for r in range(h)]] if h else []
    return [[(row, c0, min(c0 + B, w)) for c0 in range(0, w, B) for row in range(r0, min(r0 + B, h))]
            for r0 in range(0, h, B)]


def n_entry_points(h, w, scan):
    B = block_size(h, w, scan)
    return 0 if B is None else -(-h // B) - 1


def levels_from_coded(k, h, w, scan, dq, skip=None):
    """Reconstruction integers n of coded values k (flat, row-major), following the scan."""
    if not dq:
        return np.asarray(k, dtype=np.int32)
    k = [int(x) for x in k]
    n = [0] * len(k)
    s = 0
    for pieces in block_rows(h, w, scan):
        for row, c0, c1 in pieces:
            if skip is not None and skip[row]:
                for _ in range(w):                    # 11.5: W transitions per skipped piece
                    s = NEXT_DQ_STATE[s][0]
                continue
            for p in range(row * w + c0, row * w + c1):
                kk = k[p]
                n[p] = 0 if kk == 0 else 2 * kk - (1 if kk > 0 else -1) * (s & 1)
                s = NEXT_DQ_STATE[s][kk & 1]
    return np.array(n, dtype=np.int32)


def has_row_flags(edition, h, w, codebook_size=0):
    return edition == 2 and w > 1 and h > 1 and codebook_size != 1


# ---------------------------------------------------------------------------
# test cases
# ---------------------------------------------------------------------------

@dataclass
class Case:
    edition: int
    h: int
    w: int
    levels: np.ndarray
    params: dict                       # decode_tensor keyword arguments
    enc: dict = field(default_factory=dict)   # encoder-only options
    qp_bits: int = 0
    qp: int = 0

    def spec(self):
        return dict(height=self.h, width=self.w, qp_bits=self.qp_bits, **self.params)

    def describe(self):
        p = {k: (v if not isinstance(v, np.ndarray) else "array") for k, v in self.params.items()}
        return f"ed{self.edition} {self.h}x{self.w} {p} {self.enc} qp_bits={self.qp_bits}"


def encode_payload(eng, edition, cases):
    enc = eng.PayloadEncoder(edition)
    for c in cases:
        if c.qp_bits:
            enc.write_qp_offset(c.qp, c.qp_bits)
        enc.encode_tensor(c.levels, c.h, c.w, **c.params, **c.enc)
    return enc.finish()


def entry_points(eng, payload, edition, cases):
    """compute_entry_points with per-tensor ``qp_bits`` (the form nnc.encoder uses)."""
    return [list(map(tuple, e)) for e in eng.compute_entry_points(payload, edition, [c.spec() for c in cases])]


def decode_payload(eng, payload, edition, cases, *, eps=None, start=None, record=False, check=True):
    """Decode every tensor; ``eps``/``start``: per-tensor entry points / start block rows."""
    dec = eng.PayloadDecoder(payload, edition)
    out, recorded, init_sets = [], [], []
    for i, c in enumerate(cases):
        if c.qp_bits:
            qp = dec.read_qp_offset(c.qp_bits)
            assert qp == c.qp or not check
        kw = dict(c.params)
        if eps is not None and eps[i]:
            kw["entry_points"] = eps[i]
            kw["start_block_row"] = 0 if start is None else start[i]
        arr = dec.decode_tensor(c.h, c.w, record_entry_points=record, **kw)
        assert arr.dtype == np.int32 and arr.shape == (c.h * c.w,)
        out.append(np.array(arr))
        recorded.append(list(map(tuple, dec.last_entry_points)))
        init_sets.append(np.array(dec.last_init_sets))
    dec.finish()
    return out, recorded, init_sets


def _coded_values(draw, size, dq, kind):
    """Coded values k (not n): without DQ any int32; with DQ |k| <= 2^30 - 1 so that |n| <= 2^31 - 2."""
    top = (2**30 - 1) if dq else INT32_MAX
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "zero":
        k = np.zeros(size, dtype=np.int64)
    elif kind == "small":
        k = rng.integers(-3, 4, size)
    elif kind == "sparse":
        k = rng.integers(-40, 41, size) * (rng.random(size) < 0.2)
    elif kind == "laplace":
        k = np.round(rng.laplace(0, draw(st.sampled_from([0.3, 2.0, 30.0, 3000.0])), size)).astype(np.int64)
        k = np.clip(k, -top, top)
    else:  # extreme: the int32 limits, powers of two and random values of every size
        pool = np.array([0, 1, -1, top, -top, top - 1, -(top - 1), 2**20, -(2**20), 2**29 + 12345, 13, -14,
                         -top if dq else -(2**31)])
        k = np.where(rng.random(size) < 0.5, rng.choice(pool, size),
                     (rng.integers(-top, top, size, endpoint=True) >> rng.integers(0, 31, size)))
    return k.astype(np.int64)


SHAPE_KINDS = ["one", "column", "row", "tall", "wide", "any", "single_block_row"]


@st.composite
def shapes(draw, scan):
    kind = draw(st.sampled_from(SHAPE_KINDS))
    if kind == "one":
        return 1, 1
    if kind == "column":                       # 1-D tensors: height = number of elements, width 1
        return draw(st.integers(2, 150)), 1
    if kind == "row":
        return 1, draw(st.integers(2, 150))
    if kind == "tall":
        return draw(st.integers(9, 140)), draw(st.integers(2, 5))
    if kind == "wide":
        return draw(st.integers(2, 12)), draw(st.integers(20, 140))
    if kind == "single_block_row":
        B = 4 << max(scan, 1)
        return draw(st.integers(2, B)), draw(st.integers(2, 20))
    return draw(st.integers(1, 30)), draw(st.integers(1, 30))


@st.composite
def cases(draw, edition=None, features=True, qp=False, dq=None, codebook=None, row_skip=None,
          tca=None, hdsp=None):
    """One tensor to code, with a random combination of the coding tools.

    ``features``: allow the edition-2 tools at all; ``codebook``, ``row_skip``,
    ``tca``, ``hdsp``: force a tool on (True) or off (False), or draw (None).
    """
    def wanted(flag):
        return draw(st.booleans()) if flag is None else flag

    edition = draw(st.sampled_from([1, 2])) if edition is None else edition
    tools = edition == 2 and features
    scan = draw(st.integers(0, 4))
    h, w = draw(shapes(scan))
    size = h * w
    n_gtx = draw(st.one_of(st.sampled_from([1, 2, 4, 11, 256]), st.integers(1, 256)))
    use_cb = tools and wanted(codebook)
    dq = wanted(dq) and not use_cb
    params = dict(n_gtx=n_gtx, dq=dq, scan_order=scan)
    enc = dict(param_opt=draw(st.booleans()))
    if use_cb:
        S = draw(st.one_of(st.integers(1, 4), st.integers(1, 300)))
        Z = draw(st.integers(0, S - 1))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        k = rng.integers(-Z, S - Z, size) * (rng.random(size) < draw(st.floats(0, 1)))
        params.update(codebook_size=S, codebook_zero=Z)
    else:
        k = _coded_values(draw, size, dq, draw(st.sampled_from(["zero", "small", "sparse", "laplace", "extreme"])))
    if tools and wanted(tca):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        params["tca_base"] = (rng.integers(-4, 5, size) * (rng.random(size) < 0.5)).astype(np.int32)
    if tools and wanted(hdsp):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        params["parent_present"] = True
        params["hdsp_history"] = (rng.random(size) < 0.5).astype(np.int8)
        enc["hdsp"] = draw(st.booleans()) if hdsp is None else True
    skip = None
    if tools and wanted(row_skip):
        enc["row_skip"] = True
        if h > 1:
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            k = k.reshape(h, w)
            k[rng.random(h) < 0.4] = 0
            k = k.reshape(-1)
        if has_row_flags(edition, h, w, params.get("codebook_size", 0)):
            skip = [not k[r * w:(r + 1) * w].any() for r in range(h)]
    levels = levels_from_coded(k, h, w, scan, dq, skip)
    c = Case(edition, h, w, levels, params, enc)
    if qp and draw(st.booleans()):
        c.qp_bits = draw(st.integers(1, 10))
        c.qp = draw(st.integers(-(1 << (c.qp_bits - 1)), (1 << (c.qp_bits - 1)) - 1))
    return c


@st.composite
def payloads(draw, **kw):
    edition = draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 3))
    return edition, [draw(cases(edition=edition, qp=True, **kw)) for _ in range(n)]


def check_round_trip(eng, edition, cs):
    """Encode, decode sequentially, then from every entry point of every tensor."""
    payload = encode_payload(eng, edition, cs)
    out, recorded, _ = decode_payload(eng, payload, edition, cs, record=True)
    for c, arr in zip(cs, out):
        np.testing.assert_array_equal(arr, c.levels, err_msg=c.describe())
    eps = entry_points(eng, payload, edition, cs)
    assert eps == recorded
    for c, e in zip(cs, eps):
        assert len(e) == n_entry_points(c.h, c.w, c.params["scan_order"]), c.describe()
        for value, state, _ in e:
            assert 0 <= value <= 255 and 0 <= state <= 7
            assert c.params["dq"] or state == 0
    for i, c in enumerate(cs):
        B = block_size(c.h, c.w, c.params["scan_order"])
        for r in range(len(eps[i]) + 1):
            start = [0] * len(cs)
            start[i] = r
            got, _, _ = decode_payload(eng, payload, edition, cs, eps=eps, start=start)
            want = c.levels.reshape(c.h, c.w).copy()
            want[: r * B if B else 0] = 0
            np.testing.assert_array_equal(got[i], want.reshape(-1), err_msg=f"start block row {r}")
            for j in range(len(cs)):
                if j != i:
                    np.testing.assert_array_equal(got[j], cs[j].levels)
    return payload


# ---------------------------------------------------------------------------
# 1. known answer (spec example of 9.6 / the NDU of 2.7)
# ---------------------------------------------------------------------------

KNOWN_PAYLOAD = bytes.fromhex("f795003c428fe0")
KNOWN_LEVELS = [0, 2, -1, 4, 0, 0]


@pytest.mark.quick
def test_known_answer_decode(eng):
    dec = eng.PayloadDecoder(KNOWN_PAYLOAD, 1)
    assert dec.read_qp_offset(8) == -8
    out = dec.decode_tensor(2, 3, n_gtx=11, dq=False, scan_order=0)
    assert out.dtype == np.int32
    assert out.tolist() == KNOWN_LEVELS
    assert len(dec.last_init_sets) == eng.context_count(1, 11) == 85
    assert not np.any(dec.last_init_sets)
    dec.finish()
    assert dec.bytes_consumed == 7


@pytest.mark.quick
def test_known_answer_encode(eng):
    enc = eng.PayloadEncoder(1)
    enc.write_qp_offset(-8, 8)
    enc.encode_tensor(np.array(KNOWN_LEVELS, dtype=np.int32), 2, 3, n_gtx=11, param_opt=False)
    assert enc.finish() == KNOWN_PAYLOAD


def test_known_answer_first_bins(eng):
    """8 bypass bins of the qp offset, then bit position T = 8 (11.4)."""
    dec = eng.PayloadDecoder(KNOWN_PAYLOAD, 1)
    assert dec.bit_position == 0
    assert dec.read_bypass(8) == 0b11111000
    assert dec.bit_position == 8


def test_empty_payload(eng):
    """Nothing but the terminate bin: 'fe 80'."""
    assert eng.PayloadEncoder(1).finish() == b"\xfe\x80"
    eng.PayloadDecoder(b"\xfe\x80", 2).finish()


def test_context_count(eng):
    for n in (1, 2, 11, 256):
        assert eng.context_count(1, n) == 63 + 2 * n
        assert eng.context_count(2, n) == 90 + 4 * n


# ---------------------------------------------------------------------------
# 2. binarisation worked examples (10.1)
# ---------------------------------------------------------------------------

def test_worked_example_1_bins():
    """N = 11, no DQ, previous value 0, k = 3."""
    bins = P.binarise(3, P.ContextLayout(1, 11), state=0, prev=0)
    assert bins == [(0, 1), (24, 0), (27, 1), (29, 1), (31, 0)]


def test_worked_example_2_bins():
    """N = 4, previous value -2, DQ state 5, k = -7: remainder 2 = prefix '10' + suffix '1'."""
    bins = P.binarise(-7, P.ContextLayout(1, 4), state=5, prev=-2)
    assert bins == [(16, 1), (25, 1), (28, 1), (30, 1), (32, 1), (34, 1), (35, 1), (36, 0), (None, 1)]


def test_edition2_context_layout():
    L = P.ContextLayout(2, 4)
    assert L.sig(5, -2) == 16 and L.sign(-2) == 49 and L.gtx(1, True) == 56 and L.rem(0) == 69
    assert L.sig(3, 1, base=-2) == 24 + 6 + 1 and L.sig(3, 1, base=1, hdsp_active=True) == 43
    assert L.sign(0, base=-1) == 51 and L.sign(0, base=3) == 52
    assert L.gtx(0, True, base=1) == 53 + 8 and L.gtx(2, False, base=1) == 53 + 8 + 4 + 1
    assert L.init_flag == 87 + 16 and L.row_skip == 89 + 16


def test_init_signalling_lists():
    L1 = P.ContextLayout(1, 11)
    assert len(L1.signalled_contexts(dq=True)) == 59 + 22
    assert len(L1.signalled_contexts(dq=False)) == 38 + 22
    L2 = P.ContextLayout(2, 3)
    full = L2.signalled_contexts(dq=True, tca=True, hdsp=True)
    assert full == (list(range(48)) + [48, 49, 50, 51, 52] + list(range(53, 53 + 12)) + list(range(65, 65 + 31)))
    assert L2.signalled_contexts(dq=False) == [0, 1, 2, 48, 49, 50] + list(range(53, 59)) + list(range(65, 96))
    # codebook restrictions: S = 1 nothing; sign inferred (Z = 0); gtx a < 2 maxAbs; rem a: N-1+2^(a+1)-1 < maxAbs
    assert L2.signalled_contexts(dq=False, bound=P.CodebookBound(1, 0)) == []
    cb = L2.signalled_contexts(dq=False, bound=P.CodebookBound(12, 0))      # maxAbs 11
    assert cb == [0, 1, 2] + list(range(53, 59)) + [65, 66, 67]
    cb = L2.signalled_contexts(dq=False, tca=True, bound=P.CodebookBound(5, 2))   # maxAbs 2
    assert cb == [0, 1, 2, 24, 25, 48, 49, 50, 51, 52] + [53, 54, 55, 56] + [59, 60]


def test_worked_examples_round_trip(eng):
    """The values of both worked examples, decoded back in the same situation."""
    # example 1: k = 3 first in the tensor, N = 11, no DQ
    check_round_trip(eng, 1, [Case(1, 1, 1, np.array([3], np.int32), dict(n_gtx=11, scan_order=0))])
    # example 2: the prefix 1, 0, 1, -2 leads to DQ state 5 with neighbour -2, then k = -7, N = 4
    ks = [1, 0, 1, -2, -7]
    s = 0
    for x in ks[:-1]:
        s = NEXT_DQ_STATE[s][x & 1]
    assert s == 5
    levels = levels_from_coded(ks, 1, len(ks), 0, True)
    assert levels.tolist() == [2, 0, 1, -3, -13]
    for param_opt in (False, True):
        c = Case(1, 1, len(ks), levels, dict(n_gtx=4, dq=True, scan_order=0), dict(param_opt=param_opt))
        check_round_trip(eng, 1, [c])


# ---------------------------------------------------------------------------
# 3. round trips
# ---------------------------------------------------------------------------

@_scaled(1.0)
@given(case=cases(features=False))
def test_round_trip_single_tensor(eng, case):
    check_round_trip(eng, case.edition, [case])


@_scaled(1.0)
@given(p=payloads())
def test_round_trip_payloads(eng, p):
    """Several tensors in one payload (no context sharing), with and without qp offsets."""
    edition, cs = p
    check_round_trip(eng, edition, cs)


@_scaled(1.0)
@given(edition=st.sampled_from([1, 2]), dq=st.booleans(), scan=st.integers(0, 4),
       h=st.integers(0, 80), w=st.integers(0, 20), n_gtx=st.sampled_from([1, 11, 256]))
def test_round_trip_all_zero(eng, edition, dq, scan, h, w, n_gtx):
    c = Case(edition, h, w, np.zeros(h * w, np.int32), dict(n_gtx=n_gtx, dq=dq, scan_order=scan))
    check_round_trip(eng, edition, [c])


@pytest.mark.parametrize("edition", [1, 2])
@pytest.mark.parametrize("dq", [False, True])
def test_round_trip_int32_limits(eng, edition, dq):
    top = 2**30 - 1 if dq else INT32_MAX          # with DQ |n| <= 2 (2^30 - 1) = 2^31 - 2
    k = [top, -top, 0, 1, -1] * 5
    levels = levels_from_coded(k, 5, 5, 1, dq)
    if dq:
        assert np.abs(levels.astype(np.int64)).max() <= 2**31 - 2
    else:
        assert levels.max() == INT32_MAX and levels.min() == -INT32_MAX
    for n_gtx in (1, 256):
        check_round_trip(eng, edition, [Case(edition, 5, 5, levels, dict(n_gtx=n_gtx, dq=dq, scan_order=0))])


def test_entry_points_multiple_block_rows(eng):
    """A tensor with several block rows in every block size, DQ on."""
    rng = np.random.default_rng(3)
    for scan in (1, 2, 3, 4):
        B = 4 << scan
        h, w = 2 * B + 3, 7
        k = rng.integers(-20, 21, h * w) * (rng.random(h * w) < 0.5)
        for edition in (1, 2):
            c = Case(edition, h, w, levels_from_coded(k, h, w, scan, True), dict(n_gtx=3, dq=True, scan_order=scan))
            check_round_trip(eng, edition, [c])


# ---------------------------------------------------------------------------
# 4. edition-2 tools: codebook, row skipping, TCA, HDSP
# ---------------------------------------------------------------------------

@_scaled(1.0)
@given(case=cases(edition=2, codebook=True, row_skip=False, tca=False, hdsp=False))
def test_round_trip_codebook(eng, case):
    check_round_trip(eng, 2, [case])


@pytest.mark.parametrize("S, Z", [(2, 0), (2, 1), (3, 1), (7, 0), (7, 6), (40, 13), (300, 299)])
def test_codebook_all_indices(eng, S, Z):
    """Every index of the codebook, with several N (bounded gtx loop and remainder)."""
    k = np.array([i - Z for i in range(S)] * 2, dtype=np.int32)
    for n_gtx in (1, 2, 3, 11):
        c = Case(2, 2, S, k, dict(n_gtx=n_gtx, scan_order=0, codebook_size=S, codebook_zero=Z))
        check_round_trip(eng, 2, [c])


def test_codebook_size_one_codes_nothing(eng):
    """S = 1: no flags, no init signalling, no bins (10.4)."""
    enc = eng.PayloadEncoder(2)
    enc.encode_tensor(np.zeros(12, np.int32), 3, 4, n_gtx=11, scan_order=0, codebook_size=1,
                      codebook_zero=0, row_skip=True)
    payload = enc.finish()
    assert payload == eng.PayloadEncoder(2).finish()
    dec = eng.PayloadDecoder(payload, 2)
    assert not dec.decode_tensor(3, 4, n_gtx=11, codebook_size=1, codebook_zero=0).any()
    assert not np.any(dec.last_init_sets)
    dec.finish()


def test_codebook_out_of_range_is_encode_error(eng):
    enc = eng.PayloadEncoder(2)
    with pytest.raises(EncodeError):
        enc.encode_tensor(np.array([0, 3], np.int32), 1, 2, n_gtx=4, codebook_size=5, codebook_zero=2)


@_scaled(1.0)
@given(case=cases(edition=2, codebook=False, row_skip=True, tca=False, hdsp=False))
def test_round_trip_row_skip(eng, case):
    check_round_trip(eng, 2, [case])


def test_row_skip_dq_block_scan(eng):
    """Row skipping with DQ, a block scan and W > B: the DQ state advances W times per skipped piece."""
    rng = np.random.default_rng(11)
    h, w, scan = 20, 19, 1
    k = rng.integers(-5, 6, (h, w))
    k[[0, 3, 4, 9, 17]] = 0
    skip = [not k[r].any() for r in range(h)]
    k = k.reshape(-1)
    levels = levels_from_coded(k, h, w, scan, True, skip)
    c = Case(2, h, w, levels, dict(n_gtx=4, dq=True, scan_order=scan), dict(row_skip=True))
    payload = check_round_trip(eng, 2, [c])
    dec = eng.PayloadDecoder(payload, 2)
    dec.decode_tensor(h, w, n_gtx=4, dq=True, scan_order=scan)
    assert dec.last_row_skip and not dec.last_hdsp
    # the same tensor without row skipping is a different stream
    assert payload != encode_payload(eng, 2, [Case(2, h, w, levels_from_coded(k, h, w, scan, True),
                                                   dict(n_gtx=4, dq=True, scan_order=scan))])


@_scaled(1.0)
@given(case=cases(edition=2, codebook=None, row_skip=None, tca=True, hdsp=True))
def test_round_trip_tca_hdsp(eng, case):
    check_round_trip(eng, 2, [case])


def test_hdsp_flag_signalled(eng):
    rng = np.random.default_rng(5)
    h, w = 6, 9
    levels = (rng.integers(-3, 4, h * w) * (rng.random(h * w) < 0.5)).astype(np.int32)
    hist = (rng.random(h * w) < 0.5).astype(np.int8)
    base = rng.integers(-2, 3, h * w).astype(np.int32)
    for flag in (False, True):
        enc = eng.PayloadEncoder(2)
        enc.encode_tensor(levels, h, w, n_gtx=5, parent_present=True, hdsp_history=hist, tca_base=base, hdsp=flag)
        payload = enc.finish()
        dec = eng.PayloadDecoder(payload, 2)
        out = dec.decode_tensor(h, w, n_gtx=5, parent_present=True, hdsp_history=hist, tca_base=base)
        assert dec.last_hdsp == flag and not dec.last_row_skip
        dec.finish()
        np.testing.assert_array_equal(out, levels)


# ---------------------------------------------------------------------------
# encoder checks
# ---------------------------------------------------------------------------

def test_dq_unrepresentable_level_is_encode_error(eng):
    enc = eng.PayloadEncoder(1)
    with pytest.raises(EncodeError):
        enc.encode_tensor(np.array([3], np.int32), 1, 1, n_gtx=11, dq=True)   # state 0 needs even n
    enc = eng.PayloadEncoder(1)
    with pytest.raises(EncodeError):
        # n = 2 (k = 1) -> state 2; n = 2 (k = 1) -> state 3, an odd state: n = 2 is not representable
        enc.encode_tensor(np.array([2, 2, 2], np.int32), 1, 3, n_gtx=11, dq=True)


def test_int32_range(eng):
    """Every int32 is a codable level without DQ, -2^31 included (10.1); beyond int32 is refused."""
    levels = np.array([-(2**31), INT32_MAX, 0, -(2**31) + 1], np.int32)
    for edition in (1, 2):
        check_round_trip(eng, edition, [Case(edition, 2, 2, levels, dict(n_gtx=11, scan_order=0))])
    enc = eng.PayloadEncoder(1)
    with pytest.raises(EncodeError):
        enc.encode_tensor(np.array([2**31], np.int64), 1, 1, n_gtx=11)
    enc = eng.PayloadEncoder(1)
    with pytest.raises(EncodeError):
        enc.encode_tensor(np.array([-(2**31) - 1], np.int64), 1, 1, n_gtx=11)


def test_qp_offset_range(eng):
    enc = eng.PayloadEncoder(1)
    with pytest.raises(EncodeError):
        enc.write_qp_offset(128, 8)
    enc.write_qp_offset(-128, 8)
    enc.write_qp_offset(127, 8)
    dec = eng.PayloadDecoder(enc.finish(), 1)
    assert dec.read_qp_offset(8) == -128 and dec.read_qp_offset(8) == 127
    dec.finish()


def test_explicit_init_sets_reproduce_stream(eng):
    rng = np.random.default_rng(9)
    h, w = 12, 30
    levels = (rng.integers(-9, 10, h * w) * (rng.random(h * w) < 0.3)).astype(np.int32)
    for edition in (1, 2):
        kw = dict(n_gtx=6, dq=False, scan_order=1)
        enc = eng.PayloadEncoder(edition)
        enc.encode_tensor(levels, h, w, param_opt=True, **kw)
        payload = enc.finish()
        dec = eng.PayloadDecoder(payload, edition)
        dec.decode_tensor(h, w, **kw)
        sets = np.array(dec.last_init_sets)
        assert sets.any(), "param_opt should pick some non-default set on this tensor"
        enc = eng.PayloadEncoder(edition)
        enc.encode_tensor(levels, h, w, param_opt=False, init_sets=sets, **kw)
        assert enc.finish() == payload


# ---------------------------------------------------------------------------
# bit estimates (9.8)
# ---------------------------------------------------------------------------

def test_bin_cost(eng):
    assert 0.9 < eng.bin_cost(0, 0) < 1.2 and 0.85 < eng.bin_cost(0, 1) < 1.0
    lps = [eng.bin_cost(c, 0) for c in range(0, 4000, 128)]
    mps = [eng.bin_cost(c, 1) for c in range(0, 4000, 128)]
    assert lps == sorted(lps) and mps == sorted(mps, reverse=True)
    assert lps[-1] > 5 and mps[-1] < 0.05
    assert eng.bin_cost(-2944, 1) == eng.bin_cost(2944, 0)      # same class |C >> 7| = 23, LPS both


@pytest.mark.parametrize("dq, scan, edition", [(False, 0, 1), (True, 2, 2), (False, 1, 2)])
def test_estimate_within_one_percent(eng, dq, scan, edition):
    rng = np.random.default_rng(21)
    h, w = 150, 200
    k = np.round(rng.laplace(0, 4.0, h * w)).astype(np.int64)
    levels = levels_from_coded(k, h, w, scan, dq)
    kw = dict(n_gtx=11, dq=dq, scan_order=scan)
    enc = eng.PayloadEncoder(edition)
    enc.encode_tensor(levels, h, w, param_opt=False, **kw)
    real = 8 * len(enc.finish())
    est = eng.estimate_tensor_bits(levels, h, w, edition=edition, **kw)
    assert abs(est - real) < 0.01 * real, (est, real)


# ---------------------------------------------------------------------------
# 5. corrupt and truncated payloads
# ---------------------------------------------------------------------------

def _sample_payloads(eng):
    rng = np.random.default_rng(1)
    out = []
    # edition 1, DQ, block scan with several block rows, two tensors with qp offsets
    h, w = 20, 11
    k = rng.integers(-30, 31, h * w) * (rng.random(h * w) < 0.6)
    a = Case(1, h, w, levels_from_coded(k, h, w, 1, True), dict(n_gtx=3, dq=True, scan_order=1), qp_bits=8, qp=-5)
    b = Case(1, 4, 1, np.array([7, -1000, 0, 2**31 - 1], np.int32), dict(n_gtx=11, scan_order=2), qp_bits=8, qp=3)
    out.append((1, [a, b]))
    # edition 2, codebook + row skip + TCA + HDSP
    h, w = 18, 9
    k = rng.integers(-4, 9, (h, w))
    k[[2, 5]] = 0
    c = Case(2, h, w, k.reshape(-1).astype(np.int32),
             dict(n_gtx=2, scan_order=1, codebook_size=13, codebook_zero=4, parent_present=True,
                  tca_base=rng.integers(-2, 3, h * w).astype(np.int32),
                  hdsp_history=(rng.random(h * w) < 0.5).astype(np.int8)),
             dict(row_skip=True, hdsp=True))
    out.append((2, [c]))
    # edition 2, DQ, large values
    h, w = 9, 14
    k = rng.integers(-5000, 5001, h * w) * (rng.random(h * w) < 0.7)
    out.append((2, [Case(2, h, w, levels_from_coded(k, h, w, 0, True), dict(n_gtx=11, dq=True, scan_order=0))]))
    return [(ed, cs, encode_payload(eng, ed, cs)) for ed, cs in out]


TIME_LIMIT = 2.0


def _decode_expecting_error(eng, data, edition, cs, eps=None):
    """Decoding must raise DecodeError (in decode_tensor or finish), or succeed; nothing else."""
    start = time.monotonic()
    try:
        decode_payload(eng, data, edition, cs, eps=eps, check=False)
    except DecodeError as exc:
        assert exc.clause is not None
        return exc
    finally:
        assert time.monotonic() - start < TIME_LIMIT
    return None


def test_every_truncation_raises(eng):
    for edition, cs, payload in _sample_payloads(eng):
        for cut in range(len(payload)):
            exc = _decode_expecting_error(eng, payload[:cut], edition, cs)
            assert exc is not None, f"truncation to {cut} of {len(payload)} bytes decoded without error"


def test_truncation_offset(eng):
    with pytest.raises(TruncatedError) as info:
        eng.PayloadDecoder(b"\x00", 1)
    assert info.value.offset == 1
    edition, cs, payload = _sample_payloads(eng)[0]
    dec = eng.PayloadDecoder(payload[:6], edition)
    dec.read_qp_offset(8)
    with pytest.raises(TruncatedError) as info:
        dec.decode_tensor(cs[0].h, cs[0].w, **cs[0].params)
    assert info.value.offset == 6


def test_trailing_bytes_raise(eng):
    edition, cs, payload = _sample_payloads(eng)[2]
    assert _decode_expecting_error(eng, payload + b"\x00", edition, cs) is not None


@settings(max_examples=max(10, _EXAMPLES), deadline=timedelta(seconds=3),
          suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 2), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                               min_size=1, max_size=4),
       use_eps=st.booleans(), data=st.data())
def test_random_byte_flips(eng, which, flips, use_eps, data):
    edition, cs, payload = _sample_payloads_cached(eng)[which]
    b = bytearray(payload)
    for pos, mask in flips:
        b[pos % len(b)] ^= mask
    eps = entry_points(eng, payload, edition, cs) if use_eps else None
    if use_eps and data.draw(st.booleans()):
        # corrupt an entry point as well
        for e in eps:
            if e:
                i = data.draw(st.integers(0, len(e) - 1))
                e[i] = (data.draw(st.integers(0, 255)), data.draw(st.integers(0, 7)),
                        data.draw(st.integers(-64, 10**4)))
    _decode_expecting_error(eng, bytes(b), edition, cs, eps)


@settings(max_examples=max(10, _EXAMPLES), deadline=timedelta(seconds=3),
          suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(min_size=0, max_size=64), edition=st.sampled_from([1, 2]),
       n_gtx=st.sampled_from([1, 11]), dq=st.booleans(), h=st.integers(0, 40), w=st.integers(0, 40),
       scan=st.integers(0, 4))
def test_garbage_payloads(eng, garbage, edition, n_gtx, dq, h, w, scan):
    c = Case(edition, h, w, np.zeros(h * w, np.int32), dict(n_gtx=n_gtx, dq=dq, scan_order=scan))
    _decode_expecting_error(eng, garbage, edition, [c])


_PAYLOAD_CACHE = {}


def _sample_payloads_cached(eng):
    if eng.__name__ not in _PAYLOAD_CACHE:
        _PAYLOAD_CACHE[eng.__name__] = _sample_payloads(eng)
    return _PAYLOAD_CACHE[eng.__name__]


def _write_bins(layout, items):
    """A payload from raw (context, bin) / (None, bin) items, via the Python engine's coder."""
    ae = P.ArithmeticEncoder()
    ctx = [P.ContextModel(0) for _ in range(layout.count)]
    for a, b in items:
        if a is None:
            ae.encode_bypass(b)
        else:
            ae.encode_bin(ctx[a], b)
    return ae.encode_terminate_and_flush()


def _edition1_prefix(layout, dq, value_bins):
    """Init signalling (all 0) for one tensor, then ``value_bins``."""
    flags = [(layout.init_flag, 0)] * len(layout.signalled_contexts(dq=dq))
    return flags + value_bins


def test_overlong_prefix_edition1(eng):
    """More than 31 remainder-prefix ones (edition 1 has no cap): DecodeError (10.1)."""
    L = P.ContextLayout(1, 1)
    bins = [(L.sig(0, 0), 1), (L.sign(0), 0), (L.gtx(0, False), 1)] + [(L.rem(i), 1) for i in range(33)]
    payload = _write_bins(L, _edition1_prefix(L, False, bins))
    dec = eng.PayloadDecoder(payload, 1)
    with pytest.raises(DecodeError):
        dec.decode_tensor(1, 1, n_gtx=1)
        dec.finish()


def _magnitude_bins(L, negative, suffix):
    """N = 2: sig, sign, both flags 1, prefix of 30 ones and a 0, 30 suffix bits: |k| = 3 + 2^30 - 1 + suffix."""
    bins = [(L.sig(0, 0), 1), (L.sign(0), int(negative)), (L.gtx(0, negative), 1), (L.gtx(1, negative), 1)]
    bins += [(L.rem(i), 1) for i in range(30)] + [(L.rem(30), 0)]
    return bins + [(None, (suffix >> i) & 1) for i in range(29, -1, -1)]


@pytest.mark.parametrize("edition", [1, 2])
@pytest.mark.parametrize("negative, magnitude, valid", [
    (False, 2**31 - 1, True), (False, 2**31, False), (True, 2**31, True), (True, 2**31 + 1, False)])
def test_magnitude_limits(eng, edition, negative, magnitude, valid):
    """A decoded k must fit in int32: |k| <= 2^31 - 1 if positive, 2^31 if negative (10.1)."""
    L = P.ContextLayout(edition, 2)
    flags = [(L.init_flag, 0)] * len(L.signalled_contexts(dq=False))    # a 1x1 tensor has no row flags
    payload = _write_bins(L, flags + _magnitude_bins(L, negative, magnitude - 3 - (2**30 - 1)))
    dec = eng.PayloadDecoder(payload, edition)
    if valid:
        assert dec.decode_tensor(1, 1, n_gtx=2).tolist() == [-magnitude if negative else magnitude]
        dec.finish()
    else:
        with pytest.raises(DecodeError):
            dec.decode_tensor(1, 1, n_gtx=2)
            dec.finish()


def test_dq_reconstruction_overflow(eng):
    """k = 2^30 in DQ state 0 gives n = 2^31: DecodeError (10.2)."""
    L = P.ContextLayout(1, 1)
    r = 2**30 - 2                      # |k| = N + 1 + r = 2^30
    m = (r + 1).bit_length() - 1
    suffix = r - (2**m - 1)
    bins = [(L.sig(0, 0), 1), (L.sign(0), 0), (L.gtx(0, False), 1)]
    bins += [(L.rem(i), 1) for i in range(m)] + [(L.rem(m), 0)]
    bins += [(None, (suffix >> i) & 1) for i in range(m - 1, -1, -1)]
    payload = _write_bins(L, _edition1_prefix(L, True, bins))
    dec = eng.PayloadDecoder(payload, 1)
    with pytest.raises(DecodeError):
        dec.decode_tensor(1, 1, n_gtx=1, dq=True)
        dec.finish()
    # k = -2^30 in state 0 gives n = -2^31: valid
    bins[1] = (L.sign(0), 1)
    bins[2] = (L.gtx(0, True), 1)
    dec = eng.PayloadDecoder(_write_bins(L, _edition1_prefix(L, True, bins)), 1)
    assert dec.decode_tensor(1, 1, n_gtx=1, dq=True).tolist() == [-(2**31)]
    dec.finish()


# ---------------------------------------------------------------------------
# 6. differential: both engines, identical results
# ---------------------------------------------------------------------------

@_scaled(1.0)
@given(p=payloads())
def test_differential(both, p):
    py, cy = both
    edition, cs = p
    payload = encode_payload(py, edition, cs)
    assert encode_payload(cy, edition, cs) == payload
    out_p, rec_p, sets_p = decode_payload(py, payload, edition, cs, record=True)
    out_c, rec_c, sets_c = decode_payload(cy, payload, edition, cs, record=True)
    for a, b in zip(out_p, out_c):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(sets_p, sets_c):
        np.testing.assert_array_equal(a, b)
    assert rec_p == rec_c
    assert entry_points(py, payload, edition, cs) == entry_points(cy, payload, edition, cs) == rec_p


@_scaled(1.0)
@given(case=cases(qp=False))
def test_differential_estimates(both, case):
    py, cy = both
    kw = {k: v for k, v in case.params.items() if k in ("n_gtx", "dq", "scan_order", "codebook_size", "codebook_zero")}
    if case.enc.get("row_skip") and case.params["dq"]:
        return                       # estimate_tensor_bits has no row skipping; DQ levels follow it
    a = py.estimate_tensor_bits(case.levels, case.h, case.w, edition=case.edition, **kw)
    b = cy.estimate_tensor_bits(case.levels, case.h, case.w, edition=case.edition, **kw)
    assert a == b
    for c in (-3968, -129, -1, 0, 127, 2000, 4095):
        assert py.bin_cost(c, 0) == cy.bin_cost(c, 0) and py.bin_cost(c, 1) == cy.bin_cost(c, 1)


def test_differential_corrupt(both):
    """On a corrupt payload both engines raise, or both give the same values."""
    py, cy = both
    rng = np.random.default_rng(4)
    for edition, cs, payload in _sample_payloads(py):
        for _ in range(40):
            b = bytearray(payload)
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
            results = []
            for e in (py, cy):
                try:
                    results.append(decode_payload(e, bytes(b), edition, cs, check=False)[0])
                except DecodeError:
                    results.append(None)
            if results[0] is None or results[1] is None:
                assert results[0] is None and results[1] is None
            else:
                for x, y in zip(*results):
                    np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------
# Python-engine specifics
# ---------------------------------------------------------------------------

def test_compute_entry_points_qp_bits_per_tensor():
    """compute_entry_points(payload, edition, tensors): qp_bits per tensor, 0 or absent without a qp offset."""
    rng = np.random.default_rng(2)
    h, w = 30, 5
    levels = rng.integers(-9, 10, h * w).astype(np.int32)
    enc = P.PayloadEncoder(1)
    enc.write_qp_offset(-3, 8)
    enc.encode_tensor(levels, h, w, n_gtx=4, scan_order=1)
    enc.encode_tensor(levels, h, w, n_gtx=4, scan_order=1)
    payload = enc.finish()
    specs = [dict(height=h, width=w, n_gtx=4, scan_order=1, qp_bits=8),
             dict(height=h, width=w, n_gtx=4, scan_order=1)]
    eps = P.compute_entry_points(payload, 1, specs)
    assert len(eps) == 2 and len(eps[0]) == 3
    assert eps == P.compute_entry_points(payload, 1, [specs[0], dict(specs[1], qp_bits=0)])


def test_start_block_row_needs_entry_points():
    payload = P.PayloadEncoder(1)
    payload.encode_tensor(np.zeros(40, np.int32), 20, 2, n_gtx=1, scan_order=1)
    data = payload.finish()
    with pytest.raises(ValueError):
        P.PayloadDecoder(data, 1).decode_tensor(20, 2, n_gtx=1, scan_order=1, start_block_row=1)
