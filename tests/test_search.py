"""DC-v2 search against an evaluation function (spec A.13)."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnc import demo
from nnc.errors import EncodeError
from nnc.formats import read_model
from nnc.search import search

X, Y = demo.load_test_set()
PARAMS = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / "mlp.safetensors")[0].items()}


def accuracy(tensors):
    """Module level so that worker processes can use it."""
    return demo.accuracy("mlp", {k: np.asarray(v, np.float32) for k, v in tensors.items()}, X, Y)


@pytest.mark.parametrize("workers", [1, 2])
def test_search_finds_a_stream_within_tolerance_and_a_monotone_front(workers):
    res = search(PARAMS, accuracy, tolerance=0.005, workers=workers, progress=False)
    assert res.best is not None
    assert res.best.score >= res.reference_score - 0.005
    assert res.best.bytes == min(c.bytes for c in res.candidates if c.score >= res.reference_score - 0.005)
    front = res.pareto
    assert [c.bytes for c in front] == sorted(c.bytes for c in front)
    assert all(a.score < b.score for a, b in zip(front, front[1:]))
    import nnc

    assert accuracy(nnc.decode(res.best.stream)) == res.best.score


def test_time_budget_stops_early():
    res = search(PARAMS, accuracy, tolerance=0.005, time_budget=0.0, progress=False)
    assert 1 <= len(res.candidates) <= 2


def test_per_tensor_refinement_never_loses_and_stays_within_tolerance():
    coarse = search(PARAMS, accuracy, tolerance=0.005, per_tensor=False, progress=False)
    refined = search(PARAMS, accuracy, tolerance=0.005, progress=False)
    assert refined.best.bytes <= coarse.best.bytes
    assert refined.best.score >= refined.reference_score - 0.005
    import nnc

    decoded = nnc.decode(refined.best.stream)
    assert accuracy(decoded) == refined.best.score
    assert set(refined.best.settings["qp_per_tensor"]) == set(PARAMS)


def _fake_clock(monkeypatch):
    """A clock that advances one second per evaluation of ``accuracy``: returns (clock, timed evaluate)."""
    import nnc.search

    clock = [0.0]
    monkeypatch.setattr(nnc.search.time, "monotonic", lambda: clock[0])

    def timed_accuracy(tensors):
        clock[0] += 1.0
        return accuracy(tensors)

    return clock, timed_accuracy


def test_time_budget_is_honoured_inside_a_stage(monkeypatch):
    """A fake clock that advances one second per evaluation: the search stops within one candidate."""
    clock, timed_accuracy = _fake_clock(monkeypatch)
    for budget in (3, 12, 40):      # ends in the qp sweep, the rd sweep, the per-tensor refinement
        clock[0] = 0.0
        res = search(PARAMS, timed_accuracy, tolerance=0.005, qp_range=range(-15, -13), lambdas=(0.1,),
                     time_budget=budget, progress=False)
        # the reference evaluation, then candidates until the clock passes the budget: one more at most
        assert len(res.candidates) <= budget + 1
        assert res.candidates


def _stage(c) -> str:
    return "tensor" if "qp_per_tensor" in c.settings else "rd" if "rdoq_lambda" in c.settings else "qp"


def test_rd_sweep_takes_its_share_of_the_budget_most_promising_first(monkeypatch):
    from nnc.search import RD_SHARE, _rd_grid

    _, timed = _fake_clock(monkeypatch)
    lambdas = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
    res = search(PARAMS, timed, tolerance=0.005, qp_range=range(-20, -9), lambdas=lambdas, time_budget=100,
                 progress=False)
    rd = [c for c in res.candidates if _stage(c) == "rd"]
    assert 1 <= len(rd) <= RD_SHARE * 100 + 1 < 2 * 4 * len(lambdas)
    assert any(_stage(c) == "tensor" for c in res.candidates)        # the refinement got the rest
    grid = _rd_grid(-12, True, lambdas)
    assert len(grid) == 2 * 4 * len(lambdas) and len({tuple(sorted(g.items())) for g in grid}) == len(grid)
    assert grid[0] == dict(qp=-12, dq=True, rdoq_lambda=0.2) and grid[1] == dict(qp=-12, dq=False, rdoq_lambda=0.2)
    assert all(not g["dq"] for g in _rd_grid(-12, False, lambdas)) and len(_rd_grid(-12, False, lambdas)) == 24


def test_time_left_after_the_refinement_goes_into_kicks(monkeypatch):
    """With a budget the search keeps trying (kicks) after the refinement has converged, and ends no larger."""
    clock, timed = _fake_clock(monkeypatch)
    kw = dict(tolerance=0.005, qp_range=range(-16, -11), lambdas=(0.1,), bases=1, progress=False)
    converged = search(PARAMS, timed, **kw)
    spent = clock[0]
    clock[0] = 0.0
    kicked = search(PARAMS, timed, time_budget=spent + 60, **kw)
    assert len(kicked.candidates) > len(converged.candidates)
    assert kicked.best.bytes <= converged.best.bytes
    assert kicked.best.score >= kicked.reference_score - 0.005


def test_first_improvement_refinement_for_many_tensors(monkeypatch):
    import nnc
    import nnc.search

    monkeypatch.setattr(nnc.search, "STEEPEST_MOVES", 2)     # as if the model had many tensors
    coarse = search(PARAMS, accuracy, tolerance=0.005, per_tensor=False, progress=False)
    res = search(PARAMS, accuracy, tolerance=0.005, progress=False)
    assert res.best.bytes < coarse.best.bytes
    assert res.best.score >= res.reference_score - 0.005
    assert accuracy(nnc.decode(res.best.stream)) == res.best.score


@settings(deadline=None)
@given(n=st.integers(1, 60), data=st.data(), chunk=st.integers(1, 4))
def test_qp_bisection_finds_the_coarsest_passing_qp(n, data, chunk):
    """With a score that falls as the qp grows, stage 1 finds the first passing qp in log time."""
    from nnc.search import COARSER_SCAN, Candidate, _coarsest_passing_qp

    qps = list(range(n, 0, -1))                     # coarse to fine
    first = data.draw(st.integers(0, n))            # qps[first:] pass; first == n: none does
    calls = []

    def run(batch):
        calls.append(len(batch))
        return [Candidate({"qp": s["qp"]}, 0, 1.0 if qps.index(s["qp"]) >= first else 0.0) for s in batch]

    found = _coarsest_passing_qp(qps, True, 0.5, run, lambda: False, chunk)
    assert found == (qps[first] if first < n else None)
    bisection = calls[:-1] if first < n else calls     # then one batch of the coarser neighbours
    assert all(size <= chunk for size in bisection)
    assert len(bisection) <= math.ceil(math.log(n + 1, chunk + 1)) + 1
    assert sum(calls) - sum(bisection) <= COARSER_SCAN


@settings(deadline=None)
@given(passing=st.lists(st.booleans(), min_size=1, max_size=40), chunk=st.integers(1, 3))
def test_qp_sweep_on_a_noisy_score_returns_a_passing_qp(passing, chunk):
    """Pass/fail in any order: stage 1 returns a qp that passes (None only if none tried does)."""
    from nnc.search import Candidate, _coarsest_passing_qp

    qps = list(range(len(passing), 0, -1))
    tried = {}

    def run(batch):
        out = []
        for s in batch:
            tried[s["qp"]] = passing[qps.index(s["qp"])]
            out.append(Candidate({"qp": s["qp"]}, 0, 1.0 if tried[s["qp"]] else 0.0))
        return out

    found = _coarsest_passing_qp(qps, True, 0.5, run, lambda: False, chunk)
    if found is None:
        assert not any(tried.values())
    else:
        assert tried[found]
        # nothing coarser that was tried passed
        assert not any(ok for q, ok in tried.items() if q > found)


def first_half(tensors):
    return demo.accuracy("mlp", {k: np.asarray(v, np.float32) for k, v in tensors.items()}, X[:270], Y[:270])


def second_half(tensors):
    return demo.accuracy("mlp", {k: np.asarray(v, np.float32) for k, v in tensors.items()}, X[270:], Y[270:])


def test_check_guards_the_result_on_other_data():
    plain = search(PARAMS, first_half, tolerance=0.005, progress=False)
    checked = search(PARAMS, first_half, tolerance=0.005, check=second_half, progress=False)
    best = checked.best
    assert checked.check_reference == second_half(PARAMS)
    if best is not None:
        import nnc

        assert best.score >= checked.reference_score - 0.005
        assert best.check == second_half(nnc.decode(best.stream)) >= checked.check_reference - 0.005
        assert best.bytes >= plain.best.bytes
    # every front candidate within the tolerance and smaller than the result failed the check
    smaller = [c for c in checked.pareto if c.score >= checked.reference_score - 0.005
               and c.bytes < (best.bytes if best else float("inf"))]
    assert all(c.check is not None and c.check < checked.check_reference - 0.005 for c in smaller)


@pytest.mark.parametrize("workers", [1, 2])
def test_check_moves_keeps_the_refinement_where_the_check_holds(workers):
    # on these halves a check only after the search refuses the front and the 32 smallest others: a larger
    # stream, found by doubling the rank, keeps it (before, the search gave no result)
    from nnc.search import MAX_CHECKS, _front

    after = search(PARAMS, first_half, tolerance=0.005, check=second_half, progress=False)
    during = search(PARAMS, first_half, tolerance=0.005, check=second_half, check_moves=True,
                    workers=workers, progress=False)
    front = [c for c in _front(after.candidates, "bound") if c.bound >= after.reference_score - 0.005]
    checked_after = [c for c in after.candidates if c.check_bound is not None]
    assert len(checked_after) > len(front) + MAX_CHECKS
    assert after.best is not None and after.best.check_bound >= after.check_reference - 0.005
    assert all(c.check_bound < after.check_reference - 0.005 for c in checked_after if c.bytes < after.best.bytes)
    best = during.best
    assert best is not None and "qp_per_tensor" in best.settings      # a refined stream
    import nnc

    decoded = nnc.decode(best.stream)
    assert best.score == first_half(decoded) >= during.reference_score - 0.005
    assert best.check == second_half(decoded) >= during.check_reference - 0.005
    # only candidates within the tolerance on the first score were checked
    checked = [c for c in during.candidates if c.check_bound is not None]
    assert checked and all(c.bound >= during.reference_score - 0.005 for c in checked)
    assert best.bytes == min(c.bytes for c in checked if c.check_bound >= during.check_reference - 0.005)


def test_check_moves_progress_shows_the_best_that_passed_both(capsys):
    res = search(PARAMS, first_half, tolerance=0.005, check=second_half, check_moves=True, progress=True)
    shown = [int(m) for m in re.findall(r"best (\d+) bytes", capsys.readouterr().err)]
    both = {c.bytes for c in res.candidates
            if c.bound >= res.reference_score - 0.005 and c.check_bound is not None
            and c.check_bound >= res.check_reference - 0.005}
    assert shown[0] == 0 and set(shown) - {0} <= both     # 0 until a candidate passed both
    assert res.best.bytes <= shown[-1] < max(c.bytes for c in res.candidates if c.bound >= res.reference_score - 0.005)


def test_check_moves_needs_a_check():
    from nnc.errors import EncodeError

    with pytest.raises(EncodeError, match="check_moves"):
        search(PARAMS, first_half, check_moves=True, progress=False)


def test_check_that_nothing_passes_gives_no_result(monkeypatch):
    import nnc.search
    from nnc.search import _front

    monkeypatch.setattr(nnc.search, "MAX_CHECKS", 4)  # fewer than the candidates: the doubling runs too

    calls = []

    def check(tensors):             # the original scores 0, every stream -1
        calls.append(1)
        return 0.0 if len(calls) == 1 else -1.0

    res = search(PARAMS, accuracy, tolerance=0.005, check=check, per_tensor=False, progress=False)
    assert res.best is None
    MAX_CHECKS = nnc.search.MAX_CHECKS

    passing = [c for c in res.candidates if c.bound >= res.reference_score - 0.005]
    front = [c for c in _front(res.candidates, "bound") if c.bound >= res.reference_score - 0.005]
    rest = len(passing) - len(front)
    doubled, failed, rank = 0, MAX_CHECKS - 1, 2 * MAX_CHECKS - 1  # the ranks beyond, by doubling
    while failed < rest - 1:
        doubled, failed, rank = doubled + 1, min(rank, rest - 1), 2 * min(rank, rest - 1) + 1
    assert rest > MAX_CHECKS and doubled >= 1
    assert len(calls) - 1 == len(front) + MAX_CHECKS + doubled     # the original, then the checks


per_image = demo.mlp_correct       # per-sample scores: 1 for each test image classified correctly


def test_per_sample_scores_with_z0_search_like_their_mean():
    plain = search(PARAMS, accuracy, tolerance=0.005, per_tensor=False, progress=False)
    samples = search(PARAMS, per_image, tolerance=0.005, per_tensor=False, z=0.0, progress=False)
    assert [(c.bytes, c.score) for c in samples.candidates] == [(c.bytes, c.score) for c in plain.candidates]
    assert samples.best.bytes == plain.best.bytes


def test_per_sample_bound_is_a_paired_lower_bound():
    res = search(PARAMS, per_image, tolerance=0.005, z=1.0, per_tensor=False, progress=False)
    ref = per_image(PARAMS)
    import nnc

    for c in res.candidates:
        if not c.stream:
            continue
        diff = per_image(nnc.decode(c.stream)) - ref
        expected = ref.mean() + diff.mean() - diff.std(ddof=1) / np.sqrt(diff.size)
        assert c.bound == pytest.approx(expected, abs=1e-12)
        assert c.bound <= c.score + 1e-12
    assert res.best.bound >= res.reference_score - 0.005


@pytest.mark.filterwarnings("ignore:one of the 10 samples")
def test_per_sample_scores_must_keep_their_shape():
    from nnc.errors import EncodeError

    calls = []

    def shifty(tensors):
        calls.append(1)
        return np.ones(10 if len(calls) == 1 else 11)

    with pytest.raises(EncodeError, match="per-sample"):
        search(PARAMS, shifty, tolerance=0.005, per_tensor=False, progress=False)


def test_knapsack_jump_coarsens_many_tensors_within_the_budget():
    """An additive model of bytes and score: the jump takes the cheap tensors, not the costly one."""
    from nnc.search import Candidate, _jump

    names = [f"t{i}" for i in range(6)]
    cost = dict(zip(names, [0.0001, 0.0001, 0.0002, 0.0001, 0.05, 0.0001]))     # score lost per qp step
    base = {k: 0 for k in names}

    def candidate(qps):
        size = sum(1000 - 10 * q for q in qps.values())
        score = 1.0 - sum(cost[k] * q for k, q in qps.items())
        return Candidate({"qp_per_tensor": dict(qps)}, size, score)

    runs = []

    def run(batch):
        runs.append(len(batch))
        return [candidate(s["qp_per_tensor"]) for s in batch]

    current = candidate(base)
    floor = 1.0 - 0.005
    qps, got = _jump(base, {k: 0.0 for k in names}, current, {"qp": 0}, names, floor, 0.005 / 20, run, 40)
    assert got.bound >= floor and got.bytes < current.bytes
    assert qps["t4"] == 0                                # the expensive tensor stays
    assert sum(q > 0 for q in qps.values()) >= 3        # several tensors at once
    assert sum(runs[:2]) == 2 * len(names)               # the probes: each tensor alone, two steps


def test_knapsack_jump_probes_the_smallest_tensors_together_when_time_is_short(monkeypatch):
    """With a budget for two probe groups only, the largest tensor is probed alone and the rest as one group."""
    import nnc.search as S
    from nnc.search import Candidate, _jump

    clock = [0.0]
    monkeypatch.setattr(S.time, "monotonic", lambda: clock[0])
    names = [f"t{i}" for i in range(8)]
    sizes = {k: 100 - i for i, k in enumerate(names)}

    def candidate(qps):
        return Candidate({"qp_per_tensor": dict(qps)}, sum(1000 - 10 * q for q in qps.values()),
                         1.0 - 0.0001 * sum(qps.values()))

    batches = []

    def run(batch):
        clock[0] += len(batch)                             # one second per candidate
        batches.append([s["qp_per_tensor"] for s in batch])
        return [candidate(s["qp_per_tensor"]) for s in batch]

    base = {k: 0 for k in names}
    # 10 s left, 1 s per probe, two steps per group: PROBE_SHARE * 10 / 2 = 2 groups
    qps, got = _jump(base, {k: 0.0 for k in names}, candidate(base), {"qp": 0}, names, 1.0 - 0.005, 0.005 / 20,
                     run, 40, sizes=sizes, time_left=lambda: 10.0)
    assert [len(b) for b in batches[:2]] == [2, 2]
    assert [q["t0"] for q in batches[0]] == list(S.PROBE_STEPS) and all(q["t1"] == 0 for q in batches[0])
    for q, d in zip(batches[1], S.PROBE_STEPS):          # the group: every other tensor raised at once
        assert q["t0"] == 0 and all(q[k] == d for k in names[1:])
    assert got.bytes < candidate(base).bytes and all(qps[k] > 0 for k in names)


def test_warns_when_one_sample_outweighs_the_tolerance():
    def few(tensors):
        return per_image(tensors)[:100]             # one image = 0.01 > 0.005

    with pytest.warns(UserWarning, match="more than the tolerance"):
        search(PARAMS, few, tolerance=0.005, per_tensor=False, progress=False)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_never_larger_than_the_best_single_qp(kind):
    """With cheap candidates stage 1 sweeps the whole range, so a noisy score cannot hide a good single qp."""
    import nnc
    from nnc.encoder import Encoder

    params = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / f"{kind}.safetensors")[0].items()}
    score = demo.mlp_correct if kind == "mlp" else demo.cnn_correct
    qps = range(-30, -5)
    res = search(params, score, tolerance=0.005, qp_range=qps, per_tensor=False, progress=False)
    ref = score(params)
    singles = []
    for qp in qps:
        stream = Encoder(qp=qp).encode(params).stream
        if nnc.search.paired_bound(score(nnc.decode(stream)), ref)[1] >= ref.mean() - 0.005:
            singles.append(len(stream))
    assert res.best.bytes <= min(singles)


@settings(deadline=None)
@given(data=st.data(), n=st.integers(1, 50), z=st.floats(0, 3))
def test_paired_bound_is_below_the_mean_and_exact_without_changes(data, n, z):
    from nnc.search import paired_bound

    ref = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n)))
    cand = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n)))
    score, bound = paired_bound(cand, ref, z)
    assert score == pytest.approx(cand.mean())
    assert bound <= score + 1e-12
    assert paired_bound(ref, ref, z) == pytest.approx((ref.mean(), ref.mean()))


@pytest.mark.parametrize("bad", [np.zeros((2, 2)), [], [1.0, np.nan], np.zeros(3)])
def test_paired_bound_rejects_bad_samples(bad):
    from nnc.errors import EncodeError
    from nnc.search import paired_bound

    with pytest.raises(EncodeError):
        paired_bound(bad, np.zeros(2))


def test_per_sample_scores_in_worker_processes():
    import nnc

    res = search(PARAMS, per_image, tolerance=0.005, workers=2, progress=False)
    assert res.best.bound >= res.reference_score - 0.005
    assert res.best.score == per_image(nnc.decode(res.best.stream)).mean()


def _moves_at_qp_0(sizes, current, run, **extra):
    """The refinement of tensors of these element counts, every qp 0 and λ 0, from ``current``, scoring with ``run``."""
    from nnc.search import _TensorMoves

    return _TensorMoves(
        qps=dict.fromkeys(sizes, 0),
        lams=dict.fromkeys(sizes, 0.0),
        current=current,
        settings={},
        floats=list(sizes),
        sizes=sizes,
        floor=0.5,
        slack=0.01,
        max_qp=10,
        run=run,
        out_of_time=lambda: False,
        **extra,
    )


def test_first_improvement_tries_qp_moves_before_lambda_moves():
    """A pass tries every qp move (largest tensor first) before any λ move."""
    from nnc.search import Candidate

    sizes = {"small": 10, "large": 1000, "middle": 100}
    tried = []

    def run(batch):
        out = []
        for s in batch:
            qps, lams = s["qp_per_tensor"], s["lambda_per_tensor"]
            moved = [("qp", k) for k in qps if qps[k] != 0] + [("lambda", k) for k in lams if lams[k] != 0.0]
            tried.append(moved[0])
            out.append(Candidate(s, 100, 0.0))  # never smaller: nothing is kept
        return out

    moves = _moves_at_qp_0(sizes, Candidate({}, 100, 1.0), run)
    failed: set = set()
    all_moves = [(kind, k) for k in sizes for kind in ("qp", "lambda")]
    assert not moves._first_improvement(all_moves, 1, failed)
    assert tried == [
        ("qp", "large"), ("qp", "middle"), ("qp", "small"),
        ("lambda", "large"), ("lambda", "middle"), ("lambda", "small"),
    ]
    assert failed == set(all_moves)


def test_first_improvement_skips_moves_that_save_too_little_unscored():
    """With ``min_saving`` a pass encodes each move first and scores only those that save enough."""
    from nnc.search import Candidate

    sizes = {"a": 1000, "b": 100, "c": 10}
    saving = {("qp", "a"): 500, ("qp", "b"): 5, ("qp", "c"): 40, ("lambda", "a"): 2, ("lambda", "b"): 0,
              ("lambda", "c"): 1}
    scored = []

    def moved(s):
        qps, lams = s["qp_per_tensor"], s["lambda_per_tensor"]
        return ([("qp", k) for k in qps if qps[k] != 0] + [("lambda", k) for k in lams if lams[k] != 0.0])[0]

    def size(s):
        return 10_000 - saving[moved(s)]

    def run(batch):
        scored.extend(moved(s) for s in batch)
        return [Candidate(s, size(s), 0.0) for s in batch]  # all below the floor: none kept

    moves = _moves_at_qp_0(sizes, Candidate({}, 10_000, 1.0), run, size=size, min_saving=10)
    failed: set = set()
    assert not moves._first_improvement(list(saving), 1, failed)
    assert scored == [("qp", "a"), ("qp", "c")]
    assert failed == set(saving)
    moves.min_saving = 0.0  # off: every move is scored
    scored.clear()
    moves._first_improvement(list(saving), 1, set())
    assert len(scored) == len(saving)


@pytest.mark.parametrize("evaluate, options, words", [
    (lambda t: float("nan"), {}, "evaluate gave nan for the original tensors"),   # ended with no result, silently
    (lambda t: "high", {}, "evaluate must return a number"),                      # a ValueError from numpy
    (lambda t: 1.0, {"tolerance": -1}, "tolerance must be a finite number >= 0"),  # ended with no result
    (lambda t: 1.0, {"qp_range": range(0)}, "qp_range is empty"),                 # "time budget too small?"
])
def test_a_misused_search_says_what_is_wrong(evaluate, options, words):
    w = {"w": np.random.default_rng(0).normal(0, 0.1, (8, 8)).astype(np.float32)}
    kwargs = dict(tolerance=1e-3, qp_range=range(-30, -20), progress=False, time_budget=5)
    with pytest.raises(EncodeError, match=words):
        search(w, evaluate, **dict(kwargs, **options))


@pytest.mark.parametrize("workers", [0, -1, 2.5, True, "2", 10**6])
def test_workers_out_of_range_are_refused_before_any_process_starts(workers):
    """Before: 0 and -1 were accepted, and 10**6 started processes until the machine gave out."""
    from nnc.errors import EncodeError

    w = np.ones((4, 4), np.float32)
    with pytest.raises(EncodeError, match="workers must be an int from 1 to"):
        search({"w": w}, lambda t: 0.0, workers=workers, progress=False)


@pytest.mark.parametrize("score, words", [(math.inf, "gave \\+inf"), ("0.5", "not '0.5'"), (None, "not None")])
def test_a_metric_that_is_no_number_or_infinite_is_refused(score, words):
    """Before: +inf from a candidate was accepted (the smallest stream won, its score printed as JSON Infinity),
    a string was read as a number, and None reported as 'evaluate gave nan'."""
    w = np.random.default_rng(0).normal(0, 0.1, (16, 16)).astype(np.float32)
    first = []

    def metric(t):
        first.append(1)
        return 1.0 if len(first) == 1 else score  # the original scores 1.0, the candidates `score`

    with pytest.raises(EncodeError, match=words):
        search({"w": w}, metric, qp_range=range(-40, -10, 4), progress=False, per_tensor=False)


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(qp=-10), "the search chooses qp itself"),
        (dict(rdoq_lambda=5.0), "the search chooses rdoq_lambda itself"),
        (dict(qp_per_tensor={"w": -10}), "the search chooses qp_per_tensor itself"),
        (dict(step=0.1), "the search chooses step itself"),
        (dict(time_budget=-1), "time_budget must be"),
        (dict(max_qp="x", per_tensor=False), "max_qp must be an int"),
        (dict(bases=0), "bases must be an int >= 1"),
        (dict(z=-5), "z must be a finite number"),
        (dict(check=5), "check must be a callable"),
    ],
)
def test_misused_search_arguments_are_refused_before_any_work(bad, words):
    """Before: qp and rdoq_lambda given as fixed options were overwritten by the candidates' own without a word,
    qp_per_tensor made every candidate alike and best None, and bad values failed deep inside or were ignored."""
    w = np.random.default_rng(0).normal(0, 0.1, (16, 16)).astype(np.float32)
    calls = []

    def score(t):
        calls.append(1)
        return -float(np.mean((t["w"] - w) ** 2))

    with pytest.raises(EncodeError, match=words):
        search({"w": w}, score, progress=False, **bad)
    assert not calls
    with pytest.raises(EncodeError, match="evaluate must be a callable"):
        search({"w": w}, 5, progress=False)
