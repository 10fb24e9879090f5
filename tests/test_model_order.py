"""Decoded models come back in the input model's order (spec 6.2.1 "tensors"), whatever the coding order.

With the default ``blocks="auto"`` a weight and its bias travel in one BLOCK NDU, which
carries the bias first (spec 7.3), so coding order differs from the model's order; the
model-file layer restores the announced order, ``nnc.decode`` keeps coding order (15.3).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnc
from nnc.decoder import model_order
from nnc.models import decode_model


def _model(layers: list[tuple[int, int, bool]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(len(layers))
    model = {}
    for i, (rows, cols, bias) in enumerate(layers):
        model[f"l{i}.weight"] = rng.normal(0, 0.1, (rows, cols)).astype(np.float32)
        if bias:
            model[f"l{i}.bias"] = rng.normal(0, 0.1, rows).astype(np.float32)
    return model


LAYERS = st.lists(st.tuples(st.integers(2, 24), st.integers(2, 24), st.booleans()), min_size=1, max_size=5)


def _safetensors_names(path) -> list[str]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return [k for k in json.loads(data[8 : 8 + n]) if k != "__metadata__"]


@settings(max_examples=15, deadline=None)
@given(LAYERS)
def test_model_outputs_keep_the_input_order(tmp_path_factory, layers):
    model = _model(layers)
    folder = tmp_path_factory.mktemp("order")
    stream = folder / "m.nnr"
    stream.write_bytes(nnc.encode(model, qp=-30))
    announced = nnc.Decoder(stream.read_bytes()).metadata["tensors"]
    assert announced in (list(model), len(model))  # by name, or by count where the order rule suffices

    nnc.models.decode_model(stream, folder / "d.npz")
    with np.load(folder / "d.npz") as npz:
        assert list(npz.keys()) == list(model)
    nnc.models.decode_model(stream, folder / "d.safetensors")
    assert _safetensors_names(folder / "d.safetensors") == list(model)


def test_coding_order_differs_and_decode_keeps_it():
    """The case the restoration is for: a BLOCK NDU decodes its bias first (conformance order, 15.3)."""
    model = _model([(8, 4, True), (3, 8, True)])
    stream = nnc.encode(model, qp=-30)
    decoded = nnc.decode(stream)
    assert list(decoded) == ["l0.bias", "l0.weight", "l1.bias", "l1.weight"]
    assert model_order(decoded, nnc.Decoder(stream).metadata) == list(model)


def _tricky_model() -> dict[str, np.ndarray]:
    """Pairs a BLOCK NDU can carry, a 1-D weight after its bias (a layer norm's order), a lone bias."""
    rng = np.random.default_rng(5)
    return {
        "a.weight": rng.normal(0, 0.1, (6, 4)).astype(np.float32),
        "a.bias": rng.normal(0, 0.1, 6).astype(np.float32),
        "ln.bias": rng.normal(0, 0.1, 4).astype(np.float32),
        "ln.weight": rng.normal(1, 0.1, 4).astype(np.float32),
        "b.weight": rng.normal(0, 0.1, (3, 6)).astype(np.float32),
        "b.bias": rng.normal(0, 0.1, 3).astype(np.float32),
        "bias": rng.normal(0, 0.1, 5).astype(np.float32),
        "weight": rng.normal(0, 0.1, (5, 2)).astype(np.float32),
    }


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(_tricky_model())), st.sampled_from([True, "auto", False]))
def test_any_order_comes_back_by_name_or_by_count(order, blocks):
    """Whatever the model's order and pairing, the announcement (a count where the order rule gives the
    model's order back, names otherwise, spec 6.2.1) restores it; and a count is used only then."""
    full = _tricky_model()
    model = {k: full[k] for k in order}
    stream = nnc.encode(model, qp=-30, blocks=blocks)
    dec = nnc.Decoder(stream)
    assert model_order(dec.names(), dec.metadata) == list(model)
    assert model_order(list(nnc.decode(stream)), dec.metadata) == list(model)
    if isinstance(dec.metadata["tensors"], int):
        assert dec.metadata["tensors"] == len(model)


def test_a_count_announces_the_digits_models_and_saves_their_names():
    """The bundled MLP's weight/bias pairs in BLOCK NDUs: the count is enough, and shorter than the names."""
    from nnc.demo import DATA
    from nnc.formats import read_model

    model = {k: np.asarray(v) for k, v in read_model(DATA / "mlp.safetensors")[0].items()}
    dec = nnc.Decoder(nnc.encode(model, qp=-20))
    assert dec.metadata["tensors"] == len(model)
    assert model_order(dec.names(), dec.metadata) == list(model)


def test_model_order_by_count_moves_a_bias_only_before_its_own_weight():
    count = {"tensors": 5}
    assert model_order(["x.bias", "x.weight", "y.bias", "z.weight", "bias"], count) == [
        "x.weight", "x.bias", "y.bias", "z.weight", "bias"]
    assert model_order(["bias", "weight"], count) == ["weight", "bias"]
    assert model_order(["b", "a"], {"tensors": -1}) == ["b", "a"]
    assert model_order(["b.bias", "b.weight"], {"tensors": True}) == ["b.bias", "b.weight"]


def test_model_order_ignores_what_is_not_a_name_list():
    assert model_order(["b", "a"], {}) == ["b", "a"]
    assert model_order(["b", "a"], {"tensors": "a,b"}) == ["b", "a"]
    assert model_order(["b", "a"], {"tensors": ["a", 3, "zz", "a"]}) == ["a", "b"]


@pytest.mark.parametrize("suffix", [".pt"])
def test_torch_output_keeps_the_input_order(tmp_path, suffix):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    model = _model([(8, 4, True), (3, 8, True)])
    (tmp_path / "m.nnr").write_bytes(nnc.encode(model, qp=-30))
    decode_model(tmp_path / "m.nnr", tmp_path / f"d{suffix}")
    assert list(torch.load(tmp_path / f"d{suffix}", weights_only=True)) == list(model)
