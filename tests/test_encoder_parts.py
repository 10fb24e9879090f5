"""The encoder's three parts (settings, quantiser, writer): their examples, the settings' checks,
and that the front keeps the old keyword interface and quantises each tensor once."""

import dataclasses
import doctest
import importlib

import numpy as np
import pytest

import nnc
from nnc.encoder import Encoder
from nnc.encoding.quantiser import Quantiser
from nnc.encoding.settings import OPTIONS, EncoderSettings
from nnc.errors import EncodeError


@pytest.mark.parametrize("name", ["nnc.encoding.settings", "nnc.encoding.quantiser", "nnc.encoding.writer"])
def test_docstring_examples(name):
    tests = [t for t in doctest.DocTestFinder().find(importlib.import_module(name)) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert tests and runner.summarize(verbose=False).failed == 0


def test_settings_are_frozen_and_checked_once():
    s = EncoderSettings(qp=-30, raw=["a"], qp_per_tensor={"x": -20})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.qp = -10
    with pytest.raises(TypeError):
        s.qp_per_tensor["y"] = 1            # a read-only copy
    assert s.raw == ("a",) and s.is_raw("a") and not s.is_raw("b")
    with pytest.raises(EncodeError, match="either qp or step"):
        EncoderSettings(qp=-30, step=0.1)
    with pytest.raises(EncodeError, match="scan_order"):
        s.replace(scan_order=7)
    assert s.replace(dq=False).qp == -30


def test_encoder_front_keeps_every_keyword_and_attribute():
    enc = Encoder(qp=-24, dq=False, threads=2)
    assert (enc.qp, enc.dq, enc.threads, enc.edition) == (-24, False, 2, 2)
    assert set(OPTIONS) | {"state"} >= {"qp", "step", "codebook", "differences", "engine"}
    with pytest.raises(TypeError, match="unexpected keyword"):
        Encoder(qpp=-24)
    with pytest.raises(AttributeError):
        enc.no_such_option
    s = EncoderSettings(qp=-24, dq=False)
    w = {"w": np.linspace(-1, 1, 64).reshape(8, 8)}
    assert Encoder(settings=s).encode(w).stream == enc.encode(w).stream


@pytest.mark.parametrize("dq", [True, False])
def test_codebook_auto_quantises_each_tensor_once_per_mode(monkeypatch, dq):
    calls = []
    original = Quantiser.levels

    def counting(self, name, x, step, dq_, *args, **kw):
        calls.append((name, dq_))
        return original(self, name, x, step, dq_, *args, **kw)

    monkeypatch.setattr(Quantiser, "levels", counting)
    rng = np.random.default_rng(0)
    w = {"w": rng.normal(0, 0.05, (32, 32)).astype(np.float32)}
    stream = Encoder(codebook="auto", dq=dq, qp=-30).encode(w).stream
    assert len(calls) == len(set(calls)), calls     # never the same quantisation twice
    monkeypatch.setattr(Quantiser, "levels", original)
    assert nnc.decode(stream)["w"].shape == (32, 32)
