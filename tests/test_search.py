"""DC-v2 search against an evaluation function (spec A.13)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnc import demo
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


def test_time_budget_is_honoured_inside_a_stage(monkeypatch):
    """A fake clock that advances one second per evaluation: the search stops within one candidate."""
    import nnc.search

    clock = [0.0]
    monkeypatch.setattr(nnc.search.time, "monotonic", lambda: clock[0])

    def timed_accuracy(tensors):
        clock[0] += 1.0
        return accuracy(tensors)

    for budget in (3, 12, 40):      # ends in the qp sweep, the rd sweep, the per-tensor refinement
        clock[0] = 0.0
        res = search(PARAMS, timed_accuracy, tolerance=0.005, qp_range=range(-15, -13), lambdas=(0.1,),
                     time_budget=budget, progress=False)
        # the reference evaluation, then candidates until the clock passes the budget: one more at most
        assert len(res.candidates) <= budget + 1
        assert res.candidates


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
    from nnc.search import Candidate, _coarsest_passing_qp

    qps = list(range(n, 0, -1))                     # coarse to fine
    first = data.draw(st.integers(0, n))            # qps[first:] pass; first == n: none does
    calls = []

    def run(batch):
        calls.append(len(batch))
        return [Candidate({"qp": s["qp"]}, 0, 1.0 if qps.index(s["qp"]) >= first else 0.0) for s in batch]

    found = _coarsest_passing_qp(qps, True, 0.5, run, lambda: False, chunk)
    assert found == (qps[first] if first < n else None)
    assert all(size <= chunk for size in calls)
    assert len(calls) <= math.ceil(math.log(n + 1, chunk + 1)) + 1


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


def test_check_that_nothing_passes_gives_no_result():
    calls = []

    def check(tensors):             # the original scores 0, every stream -1
        calls.append(1)
        return 0.0 if len(calls) == 1 else -1.0

    res = search(PARAMS, accuracy, tolerance=0.005, check=check, per_tensor=False, progress=False)
    assert res.best is None
    assert len(calls) - 1 == len([c for c in res.pareto if c.score >= res.reference_score - 0.005])
