"""nnc.torch: save / state_dict / load_state_dict on a small model, bf16 and fp16 kept; torch tensors in nnc.encode."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")

import nnc
import nnc.torch as nt
from nnc.errors import OutputBufferError


def small_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10),
    )
    model.train()
    model(torch.randn(4, 3, 8, 8))      # running stats and num_batches_tracked (int64, 0-d) move
    model.eval()
    return model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_keeps_dtypes_shapes_and_outputs(tmp_path, dtype):
    model = small_model(dtype)
    path = tmp_path / "m.nnr"
    stream = nt.save(model, path, qp=-40)
    assert path.read_bytes() == stream
    sd = nt.state_dict(path)
    ref = model.state_dict()
    assert list(sd) == list(ref)
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        if v.is_floating_point():
            err = (sd[k].float() - v.float()).abs().max().item()
            assert err <= 2 ** (-40 / 4) + 0.01 * v.float().abs().max().item(), (k, err)
        else:
            assert torch.equal(sd[k], v), k
    assert sd["1.num_batches_tracked"].shape == () and int(sd["1.num_batches_tracked"]) == 1

    fresh = small_model(dtype)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    result = nt.load_state_dict(fresh, stream)
    assert result == nt.LoadResult([], [])
    x = torch.randn(2, 3, 8, 8).to(dtype)
    with torch.no_grad():
        a, b = model(x).float(), fresh(x).float()
    assert (a - b).abs().max().item() < 0.1 * a.abs().max().item() + 0.05
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_load_state_dict_decodes_into_the_parameters_memory(monkeypatch):
    model = small_model()
    stream = nt.save(model, qp=-40)
    fresh = small_model()
    ptrs = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    filled = {}
    original_fill = nnc.Decoder._fill

    def spy(self, name, out, arr):
        filled[name] = out
        return original_fill(self, name, out, arr)

    monkeypatch.setattr(nnc.Decoder, "_fill", spy)
    nt.load_state_dict(fresh, stream)
    params = fresh.state_dict()
    assert set(filled) == set(params)          # float32 and int64 alike: all decoded in place
    assert all(np.shares_memory(filled[k], params[k].numpy()) for k in params)
    assert {k: v.data_ptr() for k, v in fresh.state_dict().items()} == ptrs
    assert torch.equal(fresh.state_dict()["4.weight"], nt.state_dict(stream)["4.weight"])


def test_mismatched_modules_are_refused_before_anything_changes():
    stream = nt.save(small_model(), qp=-40)
    other = torch.nn.ModuleDict({"head": torch.nn.Linear(3, 3)})
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(OutputBufferError, match="missing"):
        nt.load_state_dict(other, stream)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    result = nt.load_state_dict(other, stream, strict=False)
    assert result.missing_keys == ["head.weight", "head.bias"] and "4.weight" in result.unexpected_keys

    wrong = small_model()
    wrong[4] = torch.nn.Linear(8 * 6 * 6, 11)
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(OutputBufferError, match="4.weight"):
        nt.load_state_dict(wrong, stream)
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())


def test_nnc_encode_accepts_torch_tensors_bf16_included():
    w = torch.randn(6, 5).to(torch.bfloat16)
    h = torch.randn(7).to(torch.float16)
    stream = nnc.encode({"w": w, "h": h, "n": torch.tensor(5)}, qp=-40)
    out = nnc.decode_model(stream)
    assert out["h"].dtype == np.float16 and out["n"].dtype == np.int64 and out["n"].shape == ()
    sd = nt.state_dict(stream)
    assert sd["w"].dtype == torch.bfloat16
    assert (sd["w"].float() - w.float()).abs().max().item() < 0.02
    assert nnc.decode_model(nnc.encode_model({"w": w}, qp=-40)) is not None
    assert nt.state_dict(nnc.encode_model({"w": w}, qp=-40))["w"].dtype == torch.bfloat16


def test_state_dict_device_and_non_tensor_entries():
    stream = nt.save({"w": torch.ones(2, 2)}, qp=-20)
    assert nt.state_dict(stream, device="cpu")["w"].device.type == "cpu"
    with pytest.raises(nnc.EncodeError, match="'extra'"):
        nt.save({"w": torch.ones(2), "extra": "text"})


def test_docstring_examples_of_nnc_torch():
    import doctest

    result = doctest.testmod(nt, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


def test_input_moments_of_linear_and_convolution_layers():
    torch = pytest.importorskip("torch", reason="the PyTorch helpers need torch")
    from nnc.allocation import input_importance
    from nnc.torch import input_moments

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 5))
    batches = [torch.randn(4, 2, 4, 4) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) for _ in range(3)]
    m = input_moments(model, batches)
    x = torch.cat(batches).double()
    assert np.allclose(m["0.weight"], (x ** 2).mean((0, 2, 3)).numpy())
    hidden = torch.nn.Sequential(*model[:3])(torch.cat(batches)).detach().double()
    assert np.allclose(m["3.weight"], (hidden ** 2).mean(0).numpy())
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    f = input_importance(weights, m)
    assert f["0.weight"].shape == (3, 2, 3, 3) and f["0.weight"][0, 1, 0, 0] > 5 * f["0.weight"][0, 0, 0, 0]
    assert not any(h for layer in model.modules() for h in layer._forward_pre_hooks.values())   # hooks removed
    with pytest.raises(nnc.EncodeError, match="at least one batch"):
        input_moments(model, [])


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: torch.nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), (4, 3, 9, 8)),
        (lambda: torch.nn.Conv2d(2, 4, 4, padding="same"), (3, 2, 7, 6)),
        (lambda: torch.nn.Conv1d(3, 4, 3, padding=2, stride=2), (5, 3, 11)),
        (lambda: torch.nn.Conv1d(2, 3, 4, padding="valid"), (5, 2, 9)),
        (lambda: torch.nn.Linear(6, 3), (2, 5, 6)),
    ],
)
def test_input_covariances_give_the_output_error_of_a_weight_change(layer, shape):
    # for any change E of the weight, sum over outputs of (E applied to the input)^2 = positions * tr(E H E^T)
    torch.manual_seed(1)
    module = torch.nn.Sequential(layer()).double()
    x = torch.randn(*shape, dtype=torch.float64)
    h = nt.input_covariances(module, [x[:2], x[2:]])["0.weight"]
    w = module[0].weight.detach().clone()
    e = torch.randn_like(w)
    with torch.no_grad():
        module[0].bias.zero_()
        module[0].weight.copy_(e)
        out = module(x)
    positions = out.numel() / out.shape[1 if not isinstance(module[0], torch.nn.Linear) else -1]
    em = e.reshape(len(e), -1).numpy()
    assert h.shape == (em.shape[1], em.shape[1])
    assert np.isclose(float((out**2).sum()), positions * float(np.trace(em @ h @ em.T)), rtol=1e-9)


def test_input_covariances_of_chosen_layers_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    h = nt.input_covariances(model, [torch.randn(5, 4)], layers=["2.weight"])
    assert list(h) == ["2.weight"] and h["2.weight"].shape == (3, 3)
    with pytest.raises(nnc.errors.EncodeError, match="at least one batch"):
        nt.input_covariances(model, [])


def test_load_state_dict_with_validate_leaves_the_module_unchanged_on_a_corrupt_stream():
    import torch

    import nnc.torch as nt
    from nnc.decoder import Decoder

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    stream = bytearray(nt.save(source, qp=-30))
    last = Decoder(bytes(stream)).units[-1]
    for i in range(last.payload_offset, last.payload_offset + len(last.payload)):
        stream[i] ^= 0x5A  # the last unit's payload
    target = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(nnc.DecodeError):
        nt.load_state_dict(target, bytes(stream), validate=True)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_an_update_of_differences_is_not_loaded_as_weights():
    """Before: nnc.torch.load_state_dict and state_dict loaded an update's differences as the weights."""
    torch = pytest.importorskip("torch")
    import nnc
    import nnc.torch

    lin = torch.nn.Linear(4, 3)
    sd = {k: v.detach().numpy().copy() for k, v in lin.state_dict().items()}
    sender = nnc.EncoderState()
    nnc.encode(sd, qp=-30, state=sender, differences=True)
    update = nnc.encode({k: v + 0.5 for k, v in sd.items()}, qp=-30, state=sender, differences=True, tca=False)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    with pytest.raises(nnc.errors.UpdateError, match="differences"):
        nnc.torch.load_state_dict(lin, update)
    with pytest.raises(nnc.errors.UpdateError, match="differences"):
        nnc.torch.state_dict(update)
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_a_0d_narrow_float_tensor_keeps_its_shape_in_pt_files(tmp_path, dtype):
    """Before: a 0-d bfloat16 tensor came back with shape (1,); a 0-d float8 one failed (TypeError)."""
    from nnc.cli import main

    src = tmp_path / "z.pt"
    torch.save({"s": torch.tensor(1.5, dtype=getattr(torch, dtype)), "w": torch.ones(2)}, src)
    assert main(["encode", str(src), "-o", str(tmp_path / "z.nnr"), "-q"]) == 0
    assert main(["decode", str(tmp_path / "z.nnr"), "-o", str(tmp_path / "o.pt"), "-q"]) == 0
    back = torch.load(tmp_path / "o.pt")
    assert back["s"].shape == () and back["s"].dtype == getattr(torch, dtype) and float(back["s"]) == 1.5
    assert nt.state_dict(tmp_path / "z.nnr")["s"].shape == ()


@pytest.mark.parametrize("module_dtype, values, words", [
    ("int8", [300, -5, 7], "cannot hold"), ("uint8", [300, -5, 7], "cannot hold"), ("bool", [300, -5, 7], "cannot hold"),
    ("int64", [1.7, -2.6, 3.2], "holds float32 values"), ("float16", [1e6, 1.0, 2.0], "float16"),
])
def test_values_a_module_dtype_cannot_hold_are_refused(module_dtype, values, words):
    """Before: torch's copy_ wrapped 300 into int8 44, truncated 1.7 into int64 1, overflowed 1e6 into float16 inf."""
    from nnc.errors import OutputBufferError

    stream = nt.save({"x": torch.tensor(values), "w": torch.zeros(3, 3)})

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("x", torch.zeros(3, dtype=getattr(torch, module_dtype)))
            self.w = torch.nn.Parameter(torch.zeros(3, 3))

    with pytest.raises(OutputBufferError, match=words):
        nt.load_state_dict(Holder(), stream)


def test_a_float16_out_array_refuses_values_beyond_its_range():
    """Before: nnc.decode(out=) wrote inf into a float16 array for a float32 1e6."""
    from nnc.errors import OutputBufferError

    for dq in (True, False):
        stream = nnc.encode({"x": np.array([1e6, 1.0], np.float32), "w": np.zeros((3, 3), np.float32)}, dq=dq)
        with pytest.raises(OutputBufferError, match="whose range its values leave"):
            nnc.decode(stream, out={"x": np.zeros(2, np.float16)})
    for options in ({"qp": -30}, {"raw": ["x"]}, {"codebook": True}):  # direct, RAW_FLOAT and copied paths
        x = np.linspace(-1, 1, 200_000, dtype=np.float32)
        x[-1] = 1e5
        out = np.full(x.shape, 7, np.float16)
        with pytest.raises(OutputBufferError, match="whose range its values leave"):
            nnc.Decoder(nnc.encode({"x": x}, **options)).decode_tensor("x", out=out)
        assert (out == 7).all(), f"{options}: the refused array was written ({int((out != 7).sum())} values)"
    raw = nnc.encode({"x": np.array([100.0, np.inf], np.float32)})  # an inf of the model's own stays
    assert nnc.decode(raw, out={"x": np.zeros(2, np.float16)})["x"].tolist() == [100.0, np.inf]


def test_meta_devices_sparse_tensors_and_bad_devices_are_nnc_errors():
    """Before: load_state_dict into a meta module returned success and loaded nothing; a bad device was a
    RuntimeError or AssertionError, a meta tensor NotImplementedError, a sparse one 'dtype float32 not supported'."""
    from nnc.errors import EncodeError, OutputBufferError

    stream = nnc.torch.save(torch.nn.Linear(4, 3), qp=-40)
    with torch.device("meta"):
        module = torch.nn.Linear(4, 3)
    with pytest.raises(OutputBufferError, match="'weight' is on the meta device"):
        nnc.torch.load_state_dict(module, stream)
    module.to_empty(device="cpu")
    nnc.torch.load_state_dict(module, stream)
    assert torch.equal(module.weight, nnc.torch.state_dict(stream)["weight"])
    for device in ("nonsense", "cuda:0" if not torch.cuda.is_available() else "nonsense:1"):
        with pytest.raises(OutputBufferError, match=f"device '{device}' cannot hold"):
            nnc.torch.state_dict(stream, device=device)
    for device in ("meta", torch.device("meta")):  # (before: meta tensors back, every decoded value dropped)
        with pytest.raises(OutputBufferError, match="holds no values"):
            nnc.torch.state_dict(stream, device=device)
    with pytest.raises(EncodeError, match="'a' is on the meta device"):
        nnc.torch.save({"a": torch.ones(2, device="meta")})
    with pytest.raises(EncodeError, match="'a' has layout torch.sparse_coo"):
        nnc.torch.save({"a": torch.eye(3).to_sparse()})


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: nested tensors are a prototype
def test_negated_views_are_encoded_by_value_and_nested_tensors_refused():
    """Before: RuntimeError from .numpy() on a lazily negated view, and from a nested tensor's sizes."""
    from nnc.errors import EncodeError

    x = torch.arange(4.0)
    back = nnc.decode_model(nnc.encode({"w": torch._neg_view(x)}, qp=-30))
    assert np.array_equal(back["w"], -x.numpy())
    with pytest.raises(EncodeError, match="'n' is a nested tensor"):
        nnc.encode({"n": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])})


def test_module_versions_come_back_with_the_state_dict(tmp_path, monkeypatch):
    """``nnc.torch.save`` records the state_dict's ``_metadata`` (spec 6.2.1); ``state_dict`` gives it back.
    The encoder writes it: the stream is not parsed and copied again to add it."""
    import nnc.models

    monkeypatch.setattr(nnc.models, "with_metadata", lambda *a: pytest.fail("the stream was copied to add metadata"))
    model = small_model()
    stream = nt.save(model, tmp_path / "m.nnr", qp=-30)
    assert (tmp_path / "m.nnr").read_bytes() == stream
    sd = nt.state_dict(stream)
    assert dict(sd._metadata) == dict(model.state_dict()._metadata)
    assert not hasattr(nt.state_dict(nt.save({"w": torch.ones(2)})), "_metadata")  # a plain mapping has none
    fresh = small_model()
    fresh.load_state_dict(sd)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("module_dtype, value", [("float16", 1e5), ("int8", 300)])
def test_load_state_dict_with_validate_leaves_the_module_unchanged_for_values_it_cannot_hold(module_dtype, value):
    """Before: a float16 module's bias beyond float16 raised OutputBufferError after its weight was loaded."""
    stream = nt.save({"w": torch.full((4, 4), 0.5), "b": torch.tensor([1.0, 2.0, 3.0, value])}, qp=-20)
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.full((4, 4), 7.0).to(getattr(torch, module_dtype)), requires_grad=False)
    module.register_buffer("b", torch.full((4,), 7).to(getattr(torch, module_dtype)))
    with pytest.raises(OutputBufferError):
        nt.load_state_dict(module, stream, validate=True)
    assert (module.w == 7).all() and (module.b == 7).all()


def test_a_module_tensor_that_is_an_expanded_view_is_refused_before_anything_changes():
    """Before: torch's RuntimeError from copy_ after the tensors before it were loaded."""
    stream = nt.save({"w": torch.full((4, 4), 0.5), "b": torch.arange(4.0)}, qp=-20)
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.full((4, 4), 7.0), requires_grad=False)
    module.register_buffer("b", torch.zeros(1).expand(4))
    with pytest.raises(OutputBufferError, match="'b' has elements that share memory"):
        nt.load_state_dict(module, stream)
    assert (module.w == 7).all()


def test_save_of_a_module_warns_of_tensors_that_keep_none_of_their_signal():
    """Before: a module's state_dict (with module versions) took an encode path of its own, without the warning
    nnc.encode and a plain state_dict give."""
    linear = torch.nn.Linear(4, 4)
    with torch.no_grad():  # (mixed signs: not stored raw as one-signed values are, spec A.7)
        linear.weight.copy_(1e-6 * torch.tensor([1.0, -1.0]).repeat(8).reshape(4, 4))
    with pytest.warns(nnc.PrecisionWarning, match="kept none of their signal.*'weight'"):
        stream = nt.save(linear, qp=0)
    assert getattr(nt.state_dict(stream), "_metadata", None) is not None  # the module versions, still


@pytest.mark.parametrize(
    "module, options, words",
    [
        ({"weight": None}, {}, "module must be a torch.nn.Module, not dict"),
        (None, {}, "module must be a torch.nn.Module, not NoneType"),
        ("linear", {"strict": "no"}, "strict must be True or False"),
        ("linear", {"validate": "no"}, "validate must be True or False"),
    ],
)
def test_load_state_dict_names_a_misused_argument(module, options, words):
    """A dict or None for the module was an AttributeError ('dict' has no 'state_dict'); strict="no" meant True."""
    stream = nnc.torch.save(torch.nn.Linear(2, 2), qp=-30)
    with pytest.raises(TypeError, match=words):
        nnc.torch.load_state_dict(torch.nn.Linear(2, 2) if module == "linear" else module, stream, **options)


def test_apply_update_takes_a_torch_state_dict_with_bfloat16_tensors():
    """Before: a receiver holding its model as a torch bfloat16 state_dict got torch's bare TypeError ("Got
    unsupported ScalarType BFloat16") from nnc.apply_update; float32 ones worked."""
    import ml_dtypes

    from nnc.decoder import DecoderState, apply_update
    from nnc.encoder import EncoderState

    sender, receiver = EncoderState(), DecoderState()
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    base = nnc.decode(nnc.encode({"w": w}, qp=-24, state=sender, differences=True), state=receiver)
    update = nnc.decode(nnc.encode({"w": w + 0.1}, qp=-24, state=sender, differences=True), state=receiver)
    as_torch = {"w": torch.from_numpy(np.asarray(base["w"], np.float32)).to(torch.bfloat16)}
    as_numpy = {"w": np.asarray(base["w"], np.float32).astype(ml_dtypes.bfloat16)}
    got, expected = apply_update(as_torch, update), apply_update(as_numpy, update)
    np.testing.assert_array_equal(np.asarray(got["w"], np.float32), np.asarray(expected["w"], np.float32))
    np.testing.assert_array_equal(np.asarray(got["w"], np.float32), np.asarray(sender.model["w"], np.float32))


def test_input_statistics_refuse_layers_and_batches_they_cannot_measure():
    """Before: layers="0.weight" (a str) or an unknown name gave {} (the encoder then quantised without error
    feedback, silently); numpy or dict batches raised AttributeError ('detach') from a hook, an int TypeError."""
    torch = pytest.importorskip("torch")
    from nnc.errors import EncodeError

    seq = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    batches = [torch.randn(8, 4)]
    assert set(nt.input_covariances(seq, batches, layers="0.weight")) == {"0.weight"}
    assert set(nt.input_covariances(seq, batches, layers=["0.weight", "2.weight"])) == {"0.weight", "2.weight"}
    for layers in (["0", "2.weight"], ["nope.weight"], ["1.weight"]):
        with pytest.raises(EncodeError, match="not the weight of a Linear"):
            nt.input_covariances(seq, batches, layers=layers)
    lin = torch.nn.Linear(4, 2)
    with pytest.raises(EncodeError, match="got ndarray input, not a torch tensor"):
        nt.input_covariances(lin, [np.ones((2, 4), np.float32)])
    with pytest.raises(EncodeError, match="batches must be an iterable"):
        nt.input_covariances(lin, 5)
    with pytest.raises(EncodeError, match="batches must be an iterable"):
        nt.input_moments(lin, 5)
    assert not lin._forward_pre_hooks  # (the hooks are removed after a failure)
