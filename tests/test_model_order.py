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
    assert list(nnc.Decoder(stream.read_bytes()).metadata["tensors"]) == list(model)

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


def test_model_order_ignores_what_is_not_a_name_list():
    assert model_order(["b", "a"], {}) == ["b", "a"]
    assert model_order(["b", "a"], {"tensors": "a,b"}) == ["b", "a"]
    assert model_order(["b", "a"], {"tensors": ["a", 3, "zz", "a"]}) == ["a", "b"]


@pytest.mark.parametrize("suffix", [".pt"])
def test_torch_output_keeps_the_input_order(tmp_path, suffix):
    torch = pytest.importorskip("torch", reason="torch is not installed (optional extra nnc[torch])")
    model = _model([(8, 4, True), (3, 8, True)])
    (tmp_path / "m.nnr").write_bytes(nnc.encode(model, qp=-30))
    decode_model(tmp_path / "m.nnr", tmp_path / f"d{suffix}")
    assert list(torch.load(tmp_path / f"d{suffix}", weights_only=True)) == list(model)
