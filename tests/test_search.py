"""DC-v2 search against an evaluation function (spec A.13)."""

import numpy as np
import pytest

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
