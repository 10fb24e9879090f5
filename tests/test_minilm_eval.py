"""benchmarks/minilm_eval.py's sentence sets: each has its own job, so none may share a sentence with another."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import minilm_eval as me  # noqa: E402


def test_sentence_sets_are_disjoint():
    sets = {"scored": me.SENTENCES, "held out": me.HELD_OUT_SENTENCES, "calibration": me.CALIBRATION_SENTENCES,
            "guard": me.GUARD_SENTENCES, "docstrings": me.stdlib_docstring_sentences(512)}
    for name, sentences in sets.items():
        assert len(set(sentences)) == len(sentences), f"{name} repeats a sentence"
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(sets[a]) & set(sets[b]), f"{a} and {b} share sentences"


def test_docstring_sentences_are_fixed_plain_sentences():
    first = me.stdlib_docstring_sentences(300)
    assert first == me.stdlib_docstring_sentences(300)                 # the same text for every run
    assert first[:100] == me.stdlib_docstring_sentences(100)            # a longer list extends a shorter one
    assert me.stdlib_docstring_sentences(300, seed=1) != first
    assert len(first) == 300
    assert all(40 <= len(s) <= 160 and s[0].isupper() and s.endswith(".") for s in first)
