"""Tied weights (spec 6.2.1 "tied"): a tensor that is one array with an earlier one is coded once, and every decoding
path gives it back under its own name, with the coded tensor's values."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnc
from nnc import container as C
from nnc.errors import DecodeError, LimitError, OutputBufferError
from nnc.readers import shared_arrays, source_from_mapping


def _model(seed=0):
    rng = np.random.default_rng(seed)
    emb = (rng.normal(size=(200, 32)) * 0.05).astype(np.float32)
    return {
        "embed.weight": emb,
        "fc.weight": (rng.normal(size=(32, 32)) * 0.1).astype(np.float32),
        "fc.bias": (rng.normal(size=32) * 0.05).astype(np.float32),  # (at qp -30, over the floor of spec A.7)
        "head.weight": emb,
    }


def _metadata(stream) -> dict:
    tpl = next(u for u in C.iter_units(stream) if u.type == C.NNR_TPL)
    return json.loads(tpl.header.data)["nnc"]


def test_one_array_under_two_names_is_coded_once():
    model = _model()
    tied = nnc.encode(model, qp=-30)
    untied = nnc.encode(model, qp=-30, tie_shared=False)
    copies = nnc.encode(dict(model, **{"head.weight": model["head.weight"].copy()}), qp=-30)
    assert copies == untied                                       # equal values in two arrays are two tensors
    meta = _metadata(tied)
    assert meta["version"] == 2 and meta["tied"] == {"head.weight": "embed.weight"}
    assert _metadata(untied)["version"] == 1 and "tied" not in _metadata(untied)
    assert len(tied) < 0.65 * len(untied)                         # the embedding is most of the model
    dec = nnc.Decoder(tied)
    assert [u.type_name for u in dec.units].count("NNR_NDU") == 2   # embedding; fc block
    assert dec.tied == {"head.weight": "embed.weight"}
    assert dec.names() == ["embed.weight", "head.weight", "fc.bias", "fc.weight"]
    out = dec.decode()
    assert out["head.weight"] is out["embed.weight"]              # one array, as the model had
    np.testing.assert_array_equal(out["embed.weight"], nnc.decode(untied)["head.weight"])
    model_view = nnc.decode_model(tied)
    assert list(model_view) == list(model)


def test_the_reconstruction_and_the_lazy_path_agree():
    model = _model(1)
    enc = nnc.Encoder(qp=-28)
    result = enc.encode(model)
    assert list(result.tensors) == ["embed.weight", "fc.bias", "fc.weight"]   # tied tensors are not coded
    assert result.tied == {"head.weight": "embed.weight"}
    decoded = nnc.decode(result.stream)
    assert set(result.reconstruction) == set(decoded) == set(model)
    for name, values in result.reconstruction.items():
        np.testing.assert_array_equal(values, decoded[name])


def test_the_streaming_encoder_writes_the_same_bytes(tmp_path):
    model = _model(2)
    path = tmp_path / "m.nnr"
    summary = nnc.Encoder(qp=-28).encode_to(source_from_mapping(model), path)
    assert path.read_bytes() == nnc.Encoder(qp=-28).encode(model).stream
    assert summary.tied == {"head.weight": "embed.weight"} and summary.tensors == 4
    assert summary.weights == sum(v.size for k, v in model.items() if k != "head.weight")


names = st.sampled_from(["a", "b", "c.weight", "c.bias", "d", "e.weight"])


@st.composite
def models_with_ties(draw):
    """Models where some names are the same array as an earlier name's, or a view of it that is not the same."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    chosen = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    model: dict = {}
    for name in chosen:
        earlier = [k for k, v in model.items() if v.ndim == 2]
        how = draw(st.sampled_from(["new", "same", "view", "copy"])) if earlier else "new"
        if how == "new":
            shape = draw(st.sampled_from([(4, 6), (6,), (3, 3)]))
            model[name] = (rng.normal(size=shape) * 0.1).astype(np.float32)
        else:
            source = model[draw(st.sampled_from(earlier))]
            model[name] = {"same": source, "view": source[:, :2], "copy": source.copy()}[how]
    return model


@settings(max_examples=40, deadline=None)
@given(models_with_ties(), st.booleans())
def test_round_trip_with_ties(model, tie):
    stream = nnc.encode(model, qp=-24, tie_shared=tie)
    dec = nnc.Decoder(stream)
    expected = shared_arrays(model) if tie else {}
    assert dec.tied == {k: expected[k] for k in model if k in expected}
    out = dec.decode()
    assert set(out) == set(model)
    for name, source in dec.tied.items():
        assert out[name] is out[source]
        assert model[name] is model[source] or np.shares_memory(model[name], model[source])
    untied = nnc.decode(nnc.encode(model, qp=-24, tie_shared=False))
    for name in model:                                            # the same values as coding each tensor
        np.testing.assert_array_equal(out[name], untied[name])
    for name in model:                                            # a tensor alone, by its own name
        np.testing.assert_array_equal(nnc.Decoder(stream).decode_tensor(name), untied[name])


def test_views_that_are_not_the_same_array_are_not_tied():
    w = np.arange(24, dtype=np.float32).reshape(4, 6) / 7
    model = {"w": w, "t": w.T, "part": w[:2], "flat": w.reshape(-1), "again": w}
    assert nnc.Decoder(nnc.encode(model, qp=-20)).tied == {"again": "w"}


def test_tensors_with_other_options_are_not_tied():
    model = _model(3)
    assert nnc.Decoder(nnc.encode(model, qp=-30, qp_per_tensor={"head.*": -20})).tied == {}
    assert nnc.Decoder(nnc.encode(model, qp=-30, raw=["head.weight"])).tied == {}
    assert nnc.Decoder(nnc.encode(model, qp=-30, qp_per_tensor={"*.weight": -20})).tied == {"head.weight": "embed.weight"}


def test_no_ties_in_incremental_sequences():
    state = nnc.EncoderState()
    enc = nnc.Encoder(qp=-30, state=state)
    first = enc.encode(_model(4)).stream
    assert nnc.Decoder(first, state=nnc.DecoderState()).tied == {}


def test_decoding_a_tied_tensor_alone_and_into_buffers():
    stream = nnc.encode(_model(5), qp=-30)
    dec = nnc.Decoder(stream)
    info = dec.info("head.weight")
    assert info.tied_to == "embed.weight" and info.qp is None
    assert [t.name for t in dec.tensors()] == dec.names()
    assert list(dec.decode(["head.weight"])) == ["head.weight"]
    assert info.qp == -30 and dec.info("embed.weight").qp == -30   # filled in by decoding the coded tensor
    expected = dec.decode_tensor("embed.weight")
    buffer = np.zeros((200, 32), np.float32)
    assert dec.decode_tensor("head.weight", out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)
    shared = np.zeros((200, 32), np.float32)                    # a module's tied parameters: one buffer
    got = dec.decode(out={"embed.weight": shared, "head.weight": shared})
    assert got["head.weight"] is shared and got["embed.weight"] is shared
    np.testing.assert_array_equal(shared, expected)
    apart = {"embed.weight": np.zeros((200, 32), np.float32), "head.weight": np.zeros((200, 32), np.float16)}
    dict(dec.iter_tensors(out=lambda i: apart.get(i.name)))
    np.testing.assert_array_equal(apart["head.weight"], expected.astype(np.float16))
    with pytest.raises(OutputBufferError, match="head.weight"):
        dec.decode_tensor("head.weight", out=np.zeros((32, 200), np.float32))


def _with_metadata(stream: bytes, meta: dict) -> bytes:
    units = list(C.iter_units(stream))
    out = b""
    for u in units:
        raw = bytes(stream[u.offset:u.end])
        out += C.build_tpl(data=json.dumps({"nnc": meta})) if u.type == C.NNR_TPL else raw
    return out


@pytest.mark.parametrize("tied, why", [
    ([["head.weight", "embed.weight"]], "not an object"),
    ({"fc.weight": "embed.weight"}, "a tensor the stream codes"),
    ({"head.weight": "nothing"}, "not a tensor the stream codes"),
    ({"head.weight": 3}, "not a tensor the stream codes"),
    ({"": "embed.weight"}, "not a valid tensor name"),
    ({"a\x00b": "embed.weight"}, "not a valid tensor name"),
    ({"\ud800": "embed.weight"}, "not a valid tensor name"),
])
def test_a_malformed_tie_is_refused(tied, why):
    stream = nnc.encode(_model(6), qp=-30)
    meta = dict(_metadata(stream), tied=tied)
    meta["tensors"] = [n for n in meta["tensors"] if n != "head.weight"]
    with pytest.raises(DecodeError, match=why) as info:
        nnc.Decoder(_with_metadata(stream, meta))
    assert info.value.clause == "6.2.1"


def test_ties_in_a_stream_of_differences_are_refused():
    stream = nnc.encode(_model(7), qp=-30)
    with pytest.raises(DecodeError, match="differences"):
        nnc.Decoder(_with_metadata(stream, dict(_metadata(stream), differences=True)))


def test_tied_tensors_count_towards_the_output_limit():
    stream = nnc.encode(_model(8), qp=-30)
    meta = _metadata(stream)
    meta["tied"] = dict(meta["tied"], **{f"copy{i}": "embed.weight" for i in range(100)})
    coded = sum(v.nbytes for k, v in _model(8).items() if k != "head.weight")
    hostile = _with_metadata(stream, meta)
    limit = nnc.Limits(max_total_bytes=coded + 50 * 200 * 32 * 4)       # room for half the copies
    with pytest.raises(LimitError, match="tied"):
        nnc.Decoder(hostile, limits=limit)
    assert len(nnc.Decoder(hostile).decode()) == 104


def test_a_tied_tensor_missing_from_the_announcement_is_still_complete():
    stream = nnc.encode(_model(9), qp=-30)
    assert "head.weight" in _metadata(stream)["tensors"]
    meta = _metadata(stream)
    meta["tensors"] = [n for n in meta["tensors"] if n != "head.weight"]
    assert "head.weight" in nnc.Decoder(_with_metadata(stream, meta)).names()


torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")


def _tied_pt(path):
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(500, 32, generator=gen) * 0.05
    state = {"embed.weight": emb, "fc.weight": torch.randn(32, 32, generator=gen) * 0.1,
             "fc.bias": torch.randn(32, generator=gen) * 0.01, "head.weight": emb, "rows": emb[1:]}
    torch.save(state, path)
    return state


def _cli(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "nnc", *argv], capture_output=True, text=True, cwd=cwd)


def test_a_pt_file_s_tied_weights_are_stored_once_and_written_back_as_one_storage(tmp_path):
    _tied_pt(tmp_path / "m.pt")
    run = _cli("encode", "m.pt", "-o", "m.nnr", "--qp", "-30", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "1 tied tensor(s) stored once" in run.stderr and "head.weight (as embed.weight)" in run.stderr
    run = _cli("encode", "m.pt", "-o", "apart.nnr", "--qp", "-30", "--no-tie-shared", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert os.path.getsize(tmp_path / "m.nnr") < 0.7 * os.path.getsize(tmp_path / "apart.nnr")
    assert nnc.Decoder(str(tmp_path / "m.nnr")).tied == {"head.weight": "embed.weight"}   # not the offset view
    info = _cli("info", "m.nnr", cwd=tmp_path)
    assert "head.weight" in info.stdout and "tied to embed.weight" in info.stdout
    for out in ("back.pt", "back.safetensors", "back.npz"):
        run = _cli("decode", "m.nnr", "-o", out, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        back = nnc.formats.read_model(str(tmp_path / out))[0]
        assert list(back) == ["embed.weight", "fc.weight", "fc.bias", "head.weight", "rows"]
        np.testing.assert_array_equal(back["head.weight"], back["embed.weight"])
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["head.weight"].untyped_storage().data_ptr() == back["embed.weight"].untyped_storage().data_ptr()
    rows = 499 * 32 * 4                                           # the offset view, written on its own
    assert os.path.getsize(tmp_path / "back.pt") < 1.1 * (os.path.getsize(tmp_path / "m.pt") + rows)
    compared = _cli("compare", "m.pt", "m.nnr", cwd=tmp_path)
    assert compared.returncode == 0 and "head.weight" in compared.stdout


def test_a_torch_module_s_tied_parameters_stay_tied():
    import nnc.torch

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 8)
            self.head = torch.nn.Linear(8, 64, bias=False)
            self.head.weight = self.emb.weight

    for dtype in (torch.float32, torch.bfloat16):
        stream = nnc.torch.save(Tied().to(dtype))
        assert nnc.Decoder(stream).tied == {"head.weight": "emb.weight"}
        module = Tied().to(dtype)
        nnc.torch.load_state_dict(module, stream)
        assert module.head.weight.data_ptr() == module.emb.weight.data_ptr()
        loaded = nnc.torch.state_dict(stream)
        assert torch.equal(loaded["head.weight"], loaded["emb.weight"])
