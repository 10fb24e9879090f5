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


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"dtypes": {"w": "int8"}}, "cannot set 'dtypes'"),
        ({"differences": True}, "cannot set 'differences'"),
        ({"tensors": 5}, "cannot set 'tensors'"),
        (5, "must be a mapping"),
        ({"x": object()}, "not JSON"),
        ({1: "x"}, "keys are strings"),
        ({"x": float("nan")}, "not JSON"),
    ],
)
def test_extra_metadata_cannot_set_the_encoders_own_entries_or_hold_what_json_cannot(extra, words):
    """Before: {"dtypes": ...} changed the decoded dtype, {"differences": True} made apply_update add full values,
    {"tensors": 5} wrote a stream the decoder refused, and a non-mapping was a bare TypeError."""
    from nnc.errors import EncodeError

    with pytest.raises(EncodeError, match=words):
        Encoder(qp=-20).encode({"w": np.full((2, 2), 0.5, np.float32)}, extra_metadata=extra)
    assert Encoder().encode({"w": np.ones(2, np.float32)}, extra_metadata={"note": [1, "x"]}).stream


@pytest.mark.parametrize(
    "option, value",
    [
        ("importance", {"fc.weigth": np.ones((4, 4))}),
        ("sigmas", {"fc.weigth": np.full((4, 4), 0.1)}),
        ("covariances", {"fc.weigth": np.eye(4)}),
        ("output_formats", {"fc.weigth": 1}),
        ("dtypes", {"fc.weigth": "float16"}),
    ],
)
def test_options_keyed_by_tensor_names_refuse_a_name_not_in_the_model(option, value, tmp_path):
    """Before: a misspelt name turned DC-v1, the importance weights or error feedback off without a word."""
    from nnc.errors import EncodeError

    model = {"fc.weight": np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)}
    with pytest.raises(EncodeError, match=f"{option} names a tensor that is not in the model: 'fc.weigth'"):
        nnc.encode(model, **{option: value})
    path = tmp_path / "m.npz"
    np.savez(path, **model)
    with pytest.raises(EncodeError, match="not in the model"):
        nnc.encode_model(path, tmp_path / "m.nnr", **{option: value})
    assert not (tmp_path / "m.nnr").exists()


def test_torch_tensors_in_encode_with_reconstruction_and_encoder_encode():
    """Before: a tensor requiring grad was torch's RuntimeError, a bfloat16 one a TypeError."""
    torch = pytest.importorskip("torch")
    from nnc.encoder import encode_with_reconstruction
    from nnc.errors import EncodeError

    tensors = {"w": torch.ones(3, 3, dtype=torch.bfloat16, requires_grad=True), "b": torch.ones(3, requires_grad=True)}
    result = encode_with_reconstruction(tensors, qp=-20)
    assert nnc.Decoder(result.stream).metadata["dtypes"] == {"w": "bfloat16"}
    with pytest.raises(EncodeError, match="give the encoder dtypes="):
        Encoder().encode(tensors)
    assert Encoder(qp=-20, dtypes={"w": "bfloat16"}).encode(tensors).stream == result.stream
    with pytest.raises(EncodeError, match="meta device"):
        Encoder().encode({"w": torch.empty(2, device="meta")})


def test_settings_and_encoders_pickle_and_nnc_encode_takes_settings():
    """Before: EncoderSettings held read-only mappings pickle refuses (no encoder for a process pool), and
    nnc.encode(settings=...) always failed ("give either settings or options")."""
    import copy
    import pickle

    from nnc.encoder import EncoderState

    model = {"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)}
    settings = EncoderSettings(qp=-20, importance={"w": np.ones((8, 8))}, qp_per_tensor={"b*": -30}, dq=False)
    back = pickle.loads(pickle.dumps(settings))
    assert back.importance.keys() == {"w"} and back.qp_per_tensor == {"b*": -30} and back.dq is False
    assert nnc.encode(model, settings=settings) == Encoder(settings=back).encode(model).stream
    with pytest.raises(EncodeError, match="either settings or options"):
        nnc.encode(model, qp=-20, settings=settings)
    with pytest.raises(EncodeError, match="settings must be"):
        Encoder(settings=5)
    stateful = Encoder(qp=-20, state=EncoderState())
    stateful.encode(model)
    update = {"w": model["w"] * 0.5}
    assert pickle.loads(pickle.dumps(stateful)).encode(update).stream == copy.deepcopy(stateful).encode(update).stream
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(nnc.Decoder(nnc.encode(model)))


def test_a_stateful_encoder_used_from_threads_writes_a_sequence_of_updates():
    """Before: four threads encoding with one EncoderState wrote four updates from the same state: a receiver
    took one and refused the others, and then the sender's next update too."""
    from concurrent.futures import ThreadPoolExecutor

    from nnc.encoder import EncoderState

    w = np.linspace(-1, 1, 10_000, dtype=np.float32).reshape(100, 100)
    encoder, receiver = Encoder(qp=-24, state=EncoderState()), nnc.DecoderState()
    nnc.decode(encoder.encode({"w": w}).stream, state=receiver)
    order = []  # the order the encodes ran in (progress is called inside each)

    def update(k):
        return encoder.encode({"w": w + np.float32(0.01 * k)}, lambda *_: order.append(k)).stream

    with ThreadPoolExecutor(4) as pool:
        streams = dict(zip(range(4), pool.map(update, range(4))))
    for k in order:
        nnc.decode(streams[k], state=receiver)  # each accepted, in the order written
    nnc.decode(encoder.encode({"w": w + np.float32(0.5)}).stream, state=receiver)
