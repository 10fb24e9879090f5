"""SizedLRU, the store behind EncodeCache and FactorCache: the newest entries within the budget, nothing else."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from nnc._lru import SizedLRU
from nnc.encoder import EncodeCache, Encoder
from nnc.encoding import writer

OPERATIONS = st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 7), st.integers(0, 40)),
                      max_size=60)


@given(max_bytes=st.integers(0, 100), operations=OPERATIONS)
def test_keeps_the_most_recent_entries_that_fit(max_bytes, operations):
    store, recent = SizedLRU(max_bytes), []            # recent: (key, size), least recently used first
    for op, key, size in operations:
        kept = dict(recent)
        if op == "get":
            assert store.get(key) == (None if key not in kept else f"v{key}")
            if key in kept:
                recent = [e for e in recent if e[0] != key] + [(key, kept[key])]
            continue
        store.put(key, f"v{key}", size)
        recent = [e for e in recent if e[0] != key] + [(key, size)]
        while sum(s for _, s in recent) > max_bytes and len(recent) > 1:
            recent.pop(0)
        assert list(store.keys()) == [k for k, _ in recent]
        assert store.total == sum(s for _, s in recent)


def test_encode_cache_measures_each_unit_once_per_use(monkeypatch):
    # the budget is kept without walking every kept unit on each put (that made long searches quadratic)
    calls = []
    measure = writer.Unit.nbytes
    monkeypatch.setattr(writer.Unit, "nbytes", lambda self: calls.append(1) or measure(self))
    rng = np.random.default_rng(0)
    t = {f"t{i}": rng.normal(size=(8, 8)) for i in range(40)}
    cache = EncodeCache()
    for qp in (-20, -18, -20, -16):
        Encoder(qp=qp, threads=1).encode(t, cache=cache)
    assert cache.misses == 120 and cache.hits == 40
    assert len(calls) == cache.misses + cache.hits
