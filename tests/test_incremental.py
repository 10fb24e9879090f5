"""Incremental coding (spec 14): a base model and updates written with an EncoderState decode, with one
DecoderState, to exactly what the encoder reconstructed, and both sides end with the same state."""

import copy
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nnc
from nnc.encoder import EncodeCache, Encoder, EncoderState

SHAPES = {"a.weight": (12, 9), "a.bias": (12,), "c.weight": (4, 3, 2, 2), "steps": (2,)}


def _tensors(rng, scale, zero=()):
    out = {}
    for name, shape in SHAPES.items():
        if name == "steps":
            out[name] = rng.integers(-3, 4, shape).astype(np.int32)
        else:
            x = (rng.laplace(0, scale, shape) * (rng.random(shape) < 0.6)).astype(np.float32)
            out[name] = np.zeros(shape, np.float32) if name in zero else x
    return out


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), updates=st.lists(st.fixed_dictionaries({
    "qp": st.integers(-44, -28), "dq": st.booleans(), "tca": st.booleans(), "hdsp": st.booleans(),
    "row_skip": st.booleans(), "skip_zero": st.booleans(), "blocks": st.booleans(), "threads": st.sampled_from([1, 2]),
    "zero": st.sets(st.sampled_from(sorted(SHAPES)), max_size=2),
    "absent": st.sets(st.sampled_from(sorted(SHAPES)), max_size=2), "new": st.booleans()}), min_size=1, max_size=3))
def test_updates_decode_to_the_encoders_reconstruction(seed, updates):
    """Updates may leave tensors out, zero them, or bring new ones (coded without a parent)."""
    rng = np.random.default_rng(seed)
    enc_state, dec_state = EncoderState(), nnc.DecoderState()
    streams = [Encoder(qp=-30, state=enc_state).encode(_tensors(rng, 0.05))]
    for i, u in enumerate(updates):
        opts = {k: v for k, v in u.items() if k not in ("zero", "absent", "new")}
        tensors = {k: v for k, v in _tensors(rng, 0.005, u["zero"]).items() if k not in u["absent"]}
        if u["new"]:
            tensors[f"new{i}.weight"] = rng.laplace(0, 0.01, (5, 6)).astype(np.float32)
            tensors[f"new{i}.bias"] = rng.laplace(0, 0.01, 5).astype(np.float32)
        streams.append(Encoder(state=enc_state, **opts).encode(tensors))
    for i, res in enumerate(streams):
        out = nnc.decode(res.stream, state=dec_state)
        assert list(out) == list(res.reconstruction)
        assert set(res.skipped) == set(res.tensors) - set(out)
        for name, arr in out.items():
            np.testing.assert_array_equal(arr, res.reconstruction[name], err_msg=f"stream {i}, {name}")
        if i and streams[i].skipped:
            assert all(np.all(res.tensors[n].levels == 0) for n in res.skipped)
    assert enc_state.levels.keys() == dec_state.levels.keys()
    for name in enc_state.levels:
        np.testing.assert_array_equal(enc_state.levels[name], dec_state.levels[name])
        np.testing.assert_array_equal(enc_state.history[name], dec_state.history[name])


def test_an_update_uses_tca_and_cannot_be_decoded_alone():
    rng = np.random.default_rng(5)
    state = EncoderState()
    nnc.encode(_tensors(rng, 0.05), qp=-30, state=state)
    update = Encoder(qp=-38, state=state).encode(_tensors(rng, 0.005))
    dec = nnc.Decoder(update.stream)
    assert all(u.header.temporal_context_modeling_flag == 1 for u in dec.units if u.type_name == "NNR_NDU")
    with pytest.raises(nnc.DecodeError, match="temporal context adaptation") as info:
        dec.decode()
    assert info.value.clause == "14"
    assert state.depths["a.weight"] == 2 and state.parameter_ids == {name: i for i, name in enumerate(SHAPES)}


def test_without_tca_an_update_decodes_alone_and_tca_makes_it_smaller():
    rng = np.random.default_rng(6)
    base = _tensors(rng, 0.05)
    update = {k: v * 0.3 if v.dtype.kind == "f" else v for k, v in base.items()}  # correlated with its parent
    sizes = {}
    for tca in (False, True):
        state = EncoderState()
        nnc.encode(base, qp=-30, state=state)
        res = Encoder(qp=-30, state=state, tca=tca).encode(update)
        sizes[tca] = len(res.stream)
        if not tca:
            out = nnc.decode(res.stream)
            assert all(np.array_equal(out[k], res.reconstruction[k]) for k in out)
    assert sizes[True] < sizes[False]


def test_state_needs_profile_1_and_no_cache():
    with pytest.raises(nnc.EncodeError, match="profile 1"):
        Encoder(profile=0, state=EncoderState())
    with pytest.raises(nnc.EncodeError, match="EncoderState"):
        Encoder(state=nnc.DecoderState())
    with pytest.raises(nnc.EncodeError, match="EncodeCache"):
        Encoder(state=EncoderState()).encode({"w": np.ones(3, np.float32)}, cache=EncodeCache())


def test_states_survive_a_file_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    enc_state, dec_state = EncoderState(), nnc.DecoderState()
    for i in range(2):
        res = Encoder(qp=-30, state=enc_state).encode(_tensors(rng, 0.05 if i == 0 else 0.005))
        nnc.decode(res.stream, state=dec_state)
    enc_state.save(tmp_path / "tx")
    dec_state.save(tmp_path / "rx")
    tx, rx = EncoderState.load(tmp_path / "tx"), nnc.DecoderState.load(tmp_path / "rx")
    assert (tx.parameter_ids, tx.depths) == (enc_state.parameter_ids, enc_state.depths)
    for a, b in ((tx, enc_state), (rx, dec_state)):
        assert a.levels.keys() == b.levels.keys() and a.history.keys() == b.history.keys()
        assert all(np.array_equal(a.levels[k], b.levels[k]) and np.array_equal(a.history[k], b.history[k])
                   for k in a.levels)
    # the loaded states carry on exactly as the live ones
    update = _tensors(rng, 0.005)
    live, loaded = Encoder(qp=-34, state=enc_state).encode(update), Encoder(qp=-34, state=tx).encode(update)
    assert live.stream == loaded.stream
    out = nnc.decode(loaded.stream, state=rx)
    assert all(np.array_equal(out[k], live.reconstruction[k]) for k in out)


def test_a_file_that_is_not_a_state_is_refused(tmp_path):
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not really")
    np.savez(tmp_path / "other.npz", w=np.ones(3))
    EncoderState().save(tmp_path / "tx")
    for path, cls in ((tmp_path / "junk", nnc.DecoderState), (tmp_path / "other.npz", nnc.DecoderState),
                      (tmp_path / "tx", nnc.DecoderState)):  # an encoder's state is not a decoder's
        with pytest.raises(nnc.DecodeError, match="is not an nnc decoder state file"):
            cls.load(path)


def test_cli_state_files_carry_a_sequence(tmp_path):
    from nnc import formats
    from nnc.cli import main

    rng = np.random.default_rng(8)
    models = [_tensors(rng, 0.05), _tensors(rng, 0.005, zero={"a.bias"})]
    for i, m in enumerate(models):
        (tmp_path / f"m{i}.npz").write_bytes(formats.npz_bytes(m))
        assert main(["encode", str(tmp_path / f"m{i}.npz"), "-o", str(tmp_path / f"m{i}.nnr"), "--qp", "-30",
                     "--state", str(tmp_path / "tx"), "-q"]) == 0
    state, api = EncoderState(), []
    for m in models:
        api.append(Encoder(qp=-30, state=state, dtypes={k: v.dtype.name for k, v in m.items()}).encode(m))
    assert [(tmp_path / f"m{i}.nnr").read_bytes() for i in range(2)] == [r.stream for r in api]
    for i in range(2):
        assert main(["decode", str(tmp_path / f"m{i}.nnr"), "-o", str(tmp_path / f"d{i}.npz"),
                     "--state", str(tmp_path / "rx"), "-q"]) == 0
    decoded, _ = formats.read_model(tmp_path / "d1.npz")
    # an update of full values sends its all-zero tensor (a file written from it keeps the tensor)
    assert sorted(decoded) == sorted(api[1].reconstruction) and api[1].skipped == [] and not decoded["a.bias"].any()
    assert main(["decode", str(tmp_path / "m1.nnr"), "-o", str(tmp_path / "alone.npz")]) == 1
    assert main(["encode", str(tmp_path / "m0.npz"), "--state", str(tmp_path / "tx"), "--search", "x:y"]) == 2


def test_info_describes_an_update_without_its_parent(capsys):
    from nnc.cli import main, stream_info

    rng = np.random.default_rng(9)
    state = EncoderState()
    nnc.encode(_tensors(rng, 0.05), qp=-30, state=state)
    update = Encoder(qp=-38, state=state, tca=False, skip_zero=True).encode(_tensors(rng, 0.005, zero={"a.bias"}))
    tca_update = Encoder(qp=-38, state=state).encode(_tensors(rng, 0.005))
    info = stream_info(update.stream)
    assert all(t["parent"] and not t["tca"] and not t["needs_parent"] and t["qp"] is not None
               for t in info["tensors"])
    info = stream_info(tca_update.stream)
    assert all(t["parent"] and t["tca"] and t["needs_parent"] for t in info["tensors"])
    assert info["tensors"][0]["qp"] == -38  # read before the tensor's data
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "update.nnr")
    with open(path, "wb") as fh:
        fh.write(tca_update.stream)
    assert main(["info", path]) == 0 and "decodes only after its parent" in capsys.readouterr().out


def test_an_update_with_a_unit_that_has_no_parent():
    """A block whose bias is new: the stream still enables parent signalling, that NDU names no parent."""
    state, dec_state = EncoderState(), nnc.DecoderState()
    weight, bias = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), np.ones(4, np.float32)
    base = Encoder(state=state, qp=-20).encode({"x.weight": weight, "y.weight": weight})
    nnc.decode(base.stream, state=dec_state)
    for tensors, parents in (({"x.weight": weight / 4, "x.bias": bias}, [0]),
                             ({"x.weight": weight / 2, "x.bias": bias, "y.weight": weight / 4}, [1, 1])):
        update = Encoder(state=state, qp=-20, blocks=True).encode(tensors)
        out = nnc.decode(update.stream, state=dec_state)
        assert all(np.array_equal(out[k], update.reconstruction[k]) for k in update.reconstruction)
        units = nnc.Decoder(update.stream).units
        assert units[1].header.mps_parent_signalling_enabled_flag == 1
        assert [u.header.parent_node_id_present_flag for u in units if u.type_name == "NNR_NDU"] == parents


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 4), dq=st.booleans(), qp=st.integers(-40, -30))
def test_differences_keep_sender_and_receiver_on_one_model(seed, rounds, dq, qp):
    """Closed-loop updates: the receiver's model equals the sender's copy exactly, and its error stays
    within one quantisation of the last update instead of adding up."""
    from nnc.decoder import apply_update

    rng = np.random.default_rng(seed)
    state, receiver = EncoderState(), nnc.DecoderState()
    model = _tensors(rng, 0.05)
    held = None
    for r in range(rounds + 1):
        if r:
            model = {k: v + rng.laplace(0, 0.003, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v + 1
                     for k, v in model.items()}
        res = Encoder(qp=qp, dq=dq, nonweight_qp=qp, state=state, differences=True).encode(model)
        out = nnc.decode(res.stream, state=receiver)
        held = out if held is None else apply_update(held, out)
        assert held.keys() == state.model.keys()
        assert all(np.array_equal(held[k], state.model[k]) for k in held)
    step = max(t.step for t in res.tensors.values() if t.step)
    for k, v in model.items():  # one quantisation: at most half a step, or two with DQ (4-step subsets)
        bound = 0 if v.dtype.kind == "i" else step * (2.0 if dq else 0.5) * 1.01
        assert np.abs(held[k].astype(np.float64) - v).max() <= bound, k


def test_differences_survive_the_state_file_and_the_cli(tmp_path):
    from nnc import formats
    from nnc.cli import main

    rng = np.random.default_rng(10)
    first = _tensors(rng, 0.05)
    second = {k: v + rng.laplace(0, 0.003, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
              for k, v in first.items()}
    for i, m in enumerate((first, second)):
        (tmp_path / f"m{i}.npz").write_bytes(formats.npz_bytes(m))
        assert main(["encode", str(tmp_path / f"m{i}.npz"), "-o", str(tmp_path / f"s{i}.nnr"), "--qp", "-34",
                     "--state", str(tmp_path / "tx"), "--differences", "-q"]) == 0
    assert EncoderState.load(tmp_path / "tx").model.keys() == first.keys()
    assert main(["decode", str(tmp_path / "s0.nnr"), "-o", str(tmp_path / "r0.npz"), "--state", str(tmp_path / "rx"),
                 "-q"]) == 0
    assert main(["decode", str(tmp_path / "s1.nnr"), "-o", str(tmp_path / "r1.npz"), "--state", str(tmp_path / "rx"),
                 "--add-to", str(tmp_path / "r0.npz"), "-q"]) == 0
    held, _ = formats.read_model(tmp_path / "r1.npz")
    tracked = EncoderState.load(tmp_path / "tx").model
    assert all(np.array_equal(held[k], tracked[k]) for k in tracked)
    assert main(["encode", str(tmp_path / "m0.npz"), "--differences", "-q"]) == 1
    with pytest.raises(nnc.EncodeError, match="differences=True needs a state"):
        Encoder(differences=True)


def test_bfloat16_files_updated_through_the_cli_hold_the_senders_model(tmp_path, capsys):
    """Before: each --add-to rounded the sum into the bfloat16 file while the sender kept float32 sums (after 40
    rounds 0.037 apart, exit 0 every time), and an update was added to any model given."""
    from nnc import formats
    from nnc.cli import main

    rng = np.random.default_rng(3)
    model = {"fc.weight": rng.normal(0, 0.3, (16, 12)).astype(np.float32), "fc.bias": rng.normal(0, 0.3, 16)}
    dtypes = {k: "bfloat16" for k in model}
    for i in range(4):
        formats.write_model(tmp_path / f"m{i}.safetensors", model, dtypes)
        assert main(["encode", str(tmp_path / f"m{i}.safetensors"), "-o", str(tmp_path / f"s{i}.nnr"), "--qp", "-30",
                     "--state", str(tmp_path / "tx"), "--differences", "-q"]) == 0
        args = ["decode", str(tmp_path / f"s{i}.nnr"), "-o", str(tmp_path / f"r{i}.safetensors"),
                "--state", str(tmp_path / "rx"), "-q"]
        assert main(args + (["--add-to", str(tmp_path / f"r{i - 1}.safetensors")] if i else [])) == 0
        held, held_dtypes = formats.read_model(tmp_path / f"r{i}.safetensors")
        tracked = EncoderState.load(tmp_path / "tx").model
        assert held_dtypes == dtypes and all(held[k].tolist() == tracked[k].tolist() for k in model)
        model = {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in model.items()}
    formats.write_model(tmp_path / "m4.safetensors", model, dtypes)
    assert main(["encode", str(tmp_path / "m4.safetensors"), "-o", str(tmp_path / "s4.nnr"), "--qp", "-30",
                 "--state", str(tmp_path / "tx"), "--differences", "-q"]) == 0
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "s4.nnr"), "-o", str(tmp_path / "x.safetensors"), "--state",
                 str(tmp_path / "rx"), "--add-to", str(tmp_path / "r2.safetensors"), "-q"]) == 1  # a stale model
    assert "r2.safetensors: the model is not the one this update was made for" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_differences_after_a_state_of_full_values_say_what_the_stream_carries(tmp_path, capsys):
    from nnc import formats
    from nnc.cli import main

    (tmp_path / "m.npz").write_bytes(formats.npz_bytes(_tensors(np.random.default_rng(11), 0.05)))
    args = ["encode", str(tmp_path / "m.npz"), "--qp", "-34", "--state", str(tmp_path / "tx")]
    assert main(args + ["-o", str(tmp_path / "s0.nnr"), "-q"]) == 0          # full values, no model kept
    capsys.readouterr()
    assert main(args + ["-o", str(tmp_path / "s1.nnr"), "--differences"]) == 0
    assert "holds no model" in capsys.readouterr().err                     # said nothing before
    assert not nnc.Decoder(tmp_path / "s1.nnr").differences
    assert main(args + ["-o", str(tmp_path / "s2.nnr"), "--differences"]) == 0
    assert "holds no model" not in capsys.readouterr().err and nnc.Decoder(tmp_path / "s2.nnr").differences


def test_the_api_warns_when_differences_meet_a_state_of_full_values():
    """The CLI said so; nnc.encode(differences=True) sent full values without a word."""
    import warnings

    state, w = nnc.EncoderState(), np.ones((8, 8), np.float32)
    nnc.encode({"w": w}, state=state)
    with pytest.warns(UserWarning, match="holds no model") as caught:
        first = nnc.encode({"w": 1.01 * w}, state=state, differences=True)
    assert caught[0].filename == __file__  # at the caller's line
    assert not nnc.Decoder(first).differences
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nnc.Decoder(nnc.encode({"w": 1.02 * w}, state=state, differences=True)).differences


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None,
          max_examples=10)
@given(counts=st.lists(st.integers(-1000, 1000), min_size=2, max_size=3),
       scales=st.lists(st.sampled_from([0.5, 2.0, 3.0, -1.25]), min_size=3, max_size=3))
def test_differences_of_0d_tensors_are_differences(tmp_path_factory, counts, scales):
    """A 0-d tensor (held as coded, shape (1,)) is sent as a difference too: it was sent whole under a stream that
    says "differences", and the receiver added it to what it held (10 then 7 gave 17)."""
    from nnc import formats
    from nnc.cli import main

    d = tmp_path_factory.mktemp("scalar_updates")
    held = None
    for i, count in enumerate(counts):
        model = {"w": np.full((4, 4), scales[i], np.float32), "n": np.int64(count), "s": np.float32(scales[i])}
        (d / f"m{i}.npz").write_bytes(formats.npz_bytes(model))
        assert main(["encode", str(d / f"m{i}.npz"), "-o", str(d / f"u{i}.nnr"), "--state", str(d / "tx"),
                     "--differences", "-q", "--qp", "-30"]) == 0
        add = ["--add-to", str(held)] if held else []
        assert main(["decode", str(d / f"u{i}.nnr"), "-o", str(d / f"h{i}.npz"), "--state", str(d / "rx"), "-q",
                     *add]) == 0
        held = d / f"h{i}.npz"
        back, _ = formats.read_model(held)
        assert back["n"].shape == () and int(back["n"]) == count  # integers: exact
        assert abs(float(back["s"]) - scales[i]) < 0.02  # within a step or two of qp -30


# -- the parent digest: an update applied twice, skipped or to another model is refused (spec 6.2.1) ----------

_DTYPES = st.sampled_from(["float32", "float16", "float64", "int64", "int32", "uint8"])


@st.composite
def _model(draw):
    names = draw(st.lists(st.sampled_from(["a.weight", "a.bias", "b", "n", "s"]), min_size=1, max_size=4, unique=True))
    out = {}
    for name in names:
        dtype = draw(_DTYPES)
        shape = draw(st.sampled_from([(), (3,), (4, 5)]))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        values = rng.normal(size=shape) if np.dtype(dtype).kind == "f" else rng.integers(0, 50, size=shape)
        out[name] = np.asarray(values).astype(dtype)
    return out


@settings(max_examples=40, deadline=None)
@given(model=_model(), steps=st.integers(1, 3), tca=st.booleans(), seed=st.integers(0, 2**16))
@example(model={"a.weight": np.array(0.12573022, dtype=np.float32)}, steps=3, tca=False, seed=3)  # back to the start
def test_a_sequence_of_updates_applies_and_a_replay_is_refused(model, steps, tca, seed):
    """The receiver's model after each update has the digest the next update records (no false refusal, in the
    API and through files with restored dtypes); applying an update twice, or skipping one, is refused."""
    from nnc.decoder import model_digest
    from nnc.encoder import EncoderState

    rng = np.random.default_rng(seed)
    enc_state, dec_state = EncoderState(), nnc.DecoderState()
    held = nnc.decode(nnc.encode(model, qp=-16, state=enc_state, differences=True, tca=tca), state=dec_state)
    updates = []
    for _ in range(steps):
        model = {k: (v + rng.normal(scale=0.1, size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v + 1)
                 for k, v in model.items()}
        update = nnc.decode(nnc.encode(model, qp=-18, state=enc_state, differences=True, tca=tca), state=dec_state)
        assert update.differences and update.parent == model_digest(held)
        updates.append(update)
        held = nnc.apply_update(held, update)
        if model_digest(nnc.apply_update(held, update, check_parent=False)) != model_digest(held):
            with pytest.raises(nnc.errors.UpdateError, match="not the one this update was made for"):
                nnc.apply_update(held, update)  # replayed (an update that changes nothing may be)
    assert model_digest(held) == model_digest(enc_state.model)
    # (the model may come back to where it was: then the first update applies again, by the digest's rule)
    if steps > 1 and model_digest(held) != updates[0].parent:
        with pytest.raises(nnc.errors.UpdateError, match="not the one"):
            nnc.apply_update(held, updates[0])
    nnc.apply_update(held, updates[-1], check_parent=False)  # the caller's choice


def test_a_replayed_update_is_refused_by_decode_add_to(tmp_path, capsys):
    from nnc.cli import main
    from nnc.formats import write_model

    rng = np.random.default_rng(3)
    w = {"a.weight": rng.normal(size=(16, 8)).astype(np.float32), "a.bias": rng.normal(size=16).astype(np.float32)}
    write_model(tmp_path / "w0.safetensors", w)
    write_model(tmp_path / "w1.safetensors", {k: v + 0.01 for k, v in w.items()})
    p = lambda name: str(tmp_path / name)  # noqa: E731
    for src, out in (("w0.safetensors", "base.nnr"), ("w1.safetensors", "up.nnr")):
        assert main(["encode", p(src), "-o", p(out), "--state", p("es"), "--differences", "-q"]) == 0
    assert main(["decode", p("base.nnr"), "-o", p("m0.safetensors"), "--state", p("ds"), "-q"]) == 0
    assert main(["decode", p("up.nnr"), "--add-to", p("m0.safetensors"), "-o", p("m1.safetensors"),
                 "--state", p("ds"), "-q"]) == 0
    state_before = (tmp_path / "ds").read_bytes()
    capsys.readouterr()
    code = main(["decode", p("up.nnr"), "--add-to", p("m1.safetensors"), "-o", p("m2.safetensors"),
                 "--state", p("ds")])
    err = capsys.readouterr().err
    # the decoder state knows the update was decoded before (spec 14.4), before --add-to's digest would
    assert code == 1 and err.count("\n") == 1 and "up.nnr" in err and "a replayed update" in err
    assert not (tmp_path / "m2.safetensors").exists()
    code = main(["decode", p("up.nnr"), "--add-to", p("m1.safetensors"), "-o", p("m2.safetensors"),
                 "--state", p("ds2")])  # a state without the base: the digest of the model refuses it
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and ("m1.safetensors" in err and "not the one this update" in err
                                                  or "decode the parent stream first" in err)
    assert not (tmp_path / "m2.safetensors").exists()
    assert (tmp_path / "ds").read_bytes() == state_before


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), fmt=st.sampled_from(["bfloat16", "float8_e4m3fn", "float8_e5m2"]),
       rounds=st.integers(1, 4), qp=st.integers(-36, -24))
def test_bfloat16_and_float8_updates_keep_sender_and_receivers_on_one_model(seed, fmt, rounds, qp):
    """Before: the sender tracked float32 sums while a receiver's bfloat16 file held them rounded, so the two drifted
    apart round by round, and no parent digest was recorded (an update applied twice or to another model was
    added, exit 0). Now both hold the values rounded to the format (spec 14.5) and the digest is recorded."""
    from nnc.narrow_floats import as_stored

    rng = np.random.default_rng(seed)
    model = {"w": rng.normal(0, 0.5, (6, 8)).astype(np.float32), "b": rng.normal(0, 0.5, 8).astype(np.float32)}
    dtypes = {k: fmt for k in model}
    state, receiver = EncoderState(), nnc.DecoderState()
    base = nnc.decode(nnc.encode(model, qp=qp, state=state, differences=True, dtypes=dtypes), state=receiver)
    as_decoded = dict(base)  # float32, not rounded (nnc.decode)
    as_in_a_file = {k: as_stored(fmt, v) for k, v in base.items()}  # as a reader gives a bfloat16 / float8 file
    for _ in range(rounds):
        model = {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in model.items()}
        update = nnc.decode(nnc.encode(model, qp=qp, state=state, differences=True, dtypes=dtypes), state=receiver)
        assert update.parent is not None and dict(update.narrow) == dtypes
        as_decoded, as_in_a_file = nnc.apply_update(as_decoded, update), nnc.apply_update(as_in_a_file, update)
        for k in model:
            assert as_decoded[k].tolist() == as_in_a_file[k].tolist() == state.model[k].tolist()
            assert as_stored(fmt, state.model[k]).tolist() == state.model[k].tolist()
        with pytest.raises(nnc.errors.UpdateError, match="not the one this update was made for"):
            nnc.apply_update(as_in_a_file, update)  # applied twice
        with pytest.raises(nnc.errors.UpdateError, match="not the one this update was made for"):
            nnc.apply_update({k: np.full_like(v, 7.0) for k, v in as_in_a_file.items()}, update)  # another model


def test_an_update_without_a_parent_digest_applies_unchecked():
    """Streams of nnc before parent digests (and of other encoders) record none: applied without a check."""
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    state = EncoderState()
    nnc.encode({"w": w}, state=state, differences=True)
    update = nnc.decode(nnc.encode({"w": w + 0.25}, state=state, differences=True, tca=False))
    assert update.parent is not None
    update.parent = None
    once = nnc.apply_update({"w": w}, update)
    assert nnc.apply_update(once, update)["w"].tolist() == (w + 2 * update["w"]).tolist()


def _round(state, receiver, held, model, **options):
    update = nnc.decode(nnc.encode(model, qp=-30, state=state, differences=True, **options), state=receiver)
    return nnc.apply_update(held, update), update


def test_changes_no_difference_can_say_are_sent_whole():
    """Before: an unchanged -inf mask became NaN, a change from inf gave NaN, a change to another dtype kind was
    truncated or added, a difference beyond float32 became -inf, a change of shape failed after moving the state
    (the receiver then could not decode the next update). Now such tensors are sent whole (spec 6.2.1)."""
    from nnc.decoder import model_digest

    mask = np.triu(np.full((4, 4), -np.inf, np.float32), 1)
    m0 = {"w": np.ones((4, 4), np.float32), "mask": mask, "x": np.array([np.inf, 1, 2, 3], np.float32),
          "i": np.arange(3), "f": np.array([1.0, 2.0, 3.0], np.float32), "s": np.ones(3, np.float32),
          "big": np.array([3e38, 1], np.float32), "n": np.array([np.nan, 1.0], np.float32)}
    state, receiver = EncoderState(), nnc.DecoderState()
    held = nnc.decode(nnc.encode(m0, qp=-30, state=state, differences=True), state=receiver)
    m1 = dict(m0, w=m0["w"] + 0.5, x=np.array([0.5, 1, 2, 3], np.float32), i=np.array([1.7, 2.2, 3.6], np.float32),
              f=np.array([7, 2, 3]), s=np.ones(4, np.float32), big=np.array([-3e38, 1], np.float32))
    held, update = _round(state, receiver, held, m1)
    assert set(update.replaced) == {"x", "i", "f", "s", "big"}
    assert np.array_equal(held["mask"], mask) and np.isnan(held["n"][0]) and held["n"][1] == 1.0
    np.testing.assert_allclose(held["x"], m1["x"], atol=0.01)
    np.testing.assert_allclose(held["i"], m1["i"], atol=0.01)
    assert held["f"].dtype.kind == "i" and held["f"].tolist() == [7, 2, 3]
    assert held["s"].shape == (4,) and held["big"][0] < -2.9e38 and np.isfinite(held["big"]).all()
    m2 = dict(m1, w=m1["w"] + 0.25, s=m1["s"] * 2)
    held, update = _round(state, receiver, held, m2)  # the next update decodes and applies
    assert update.replaced == () and model_digest(held) == model_digest(state.model)
    np.testing.assert_allclose(held["s"], 2.0, atol=0.01)


def test_tensors_sent_whole_take_their_recorded_shapes_and_dtypes_from_a_decoded_update():
    """Before: with nnc.decode's coded tensors (the README's way), a replaced or new bool tensor came back int32 and
    a 0-d int64 one int32 of shape (1,); decode_model's gave them right. Both give the sender's model now."""
    sender, receiver = EncoderState(), nnc.DecoderState()
    m0 = {"flag": np.zeros(3, np.float32), "steps": np.array(-2**31, np.int64), "s": np.array(np.inf, np.float32)}
    m1 = {"flag": np.array([True, False, True]), "steps": np.array(2**31 - 1, np.int64),
          "s": np.array(1.5, np.float32), "new": np.array(5, np.int64), "mask": np.array([False, True])}
    held = nnc.decode_model(nnc.encode(m0, state=sender, differences=True), state=receiver)
    update = nnc.decode(nnc.encode(m1, state=sender, differences=True), state=receiver)
    assert set(update.replaced) == {"flag", "steps", "s"} and update.metadata
    for applied in (nnc.apply_update(held, update), nnc.apply_update(held, nnc.decoder.restore_model_view(
            update, update.metadata)[0])):
        for name, want in m1.items():
            assert applied[name].dtype == want.dtype and applied[name].shape == want.shape, name
            assert np.array_equal(applied[name], want) if want.dtype.kind != "f" else applied[name] == 1.5
        assert nnc.decoder.model_digest(applied) == nnc.decoder.model_digest(sender.model)


def test_a_failed_update_leaves_the_encoder_state_as_it_was():
    state = EncoderState()
    w = {"w": np.ones((4, 4), np.float32)}
    nnc.encode(w, qp=-30, state=state, differences=True)
    before = (dict(state.depths), {k: v.copy() for k, v in state.model.items()}, dict(state.levels))
    with pytest.raises(nnc.errors.EncodeError):
        nnc.encode({"w": w["w"], "q": np.array([2**40])}, qp=-30, state=state, differences=True)
    assert state.depths == before[0] and state.levels.keys() == before[2].keys()
    assert all(np.array_equal(state.model[k], v) for k, v in before[1].items())


def test_a_sequence_with_replaced_tensors_through_files(tmp_path):
    """nnc decode --add-to writes a replaced tensor with the update's dtype, not the model's."""
    from nnc.cli import main

    p = lambda name: str(tmp_path / name)  # noqa: E731
    mask = np.triu(np.full((3, 3), -np.inf, np.float32), 1)
    np.savez(p("a0.npz"), w=np.linspace(-1, 1, 12, dtype=np.float32), i=np.arange(3), mask=mask)
    np.savez(p("a1.npz"), w=np.linspace(-1, 1.5, 12, dtype=np.float32), i=np.array([1.7, 2.2, 3.6], np.float32),
             mask=mask)
    for r in (0, 1):
        assert main(["encode", p(f"a{r}.npz"), "-o", p(f"s{r}.nnr"), "--qp", "-20", "--state", p("tx"),
                     "--differences", "-q"]) == 0
    assert main(["decode", p("s0.nnr"), "-o", p("r0.npz"), "--state", p("rx"), "-q"]) == 0
    assert main(["decode", p("s1.nnr"), "--add-to", p("r0.npz"), "-o", p("r1.npz"), "--state", p("rx"), "-q"]) == 0
    with np.load(p("r1.npz")) as got:
        assert got["i"].dtype == np.float32 and np.allclose(got["i"], [1.7, 2.2, 3.6], atol=0.02)
        assert np.array_equal(got["mask"], mask)


def test_integers_coded_lossily_do_not_make_a_false_parent_mismatch(tmp_path):
    """Before: with --no-lossless-int the receiver's file held the integers rounded, the sender tracked floats, and
    the next update was refused as made for another model."""
    from nnc.cli import main

    p = lambda name: str(tmp_path / name)  # noqa: E731
    np.savez(p("a0.npz"), w=np.linspace(-1, 1, 20, dtype=np.float32), i=np.arange(0, 2000, 100))
    np.savez(p("a1.npz"), w=np.linspace(-1, 1.2, 20, dtype=np.float32), i=np.arange(0, 2000, 100) + 7)
    for r in (0, 1):
        assert main(["encode", p(f"a{r}.npz"), "-o", p(f"s{r}.nnr"), "--qp", "-10", "--no-lossless-int",
                     "--state", p("tx"), "--differences", "-q"]) == 0
    assert nnc.Decoder(p("s1.nnr")).parent is None
    assert main(["decode", p("s0.nnr"), "-o", p("r0.npz"), "--state", p("rx"), "-q"]) == 0
    assert main(["decode", p("s1.nnr"), "--add-to", p("r0.npz"), "-o", p("r1.npz"), "--state", p("rx"), "-q"]) == 0


def test_a_full_values_update_keeps_its_all_zero_tensors(tmp_path):
    """Before: an update of full values left out its all-zero tensors (skipped NDUs, spec 7.7), and `nnc decode`
    wrote the model without them, exit 0. Now only streams of differences skip them (by default)."""
    from nnc.cli import main

    p = lambda name: str(tmp_path / name)  # noqa: E731
    np.savez(p("a0.npz"), w=np.linspace(-1, 1, 12, dtype=np.float32), z=np.ones(4, np.float32), i=np.arange(3))
    np.savez(p("a1.npz"), w=np.linspace(-1, 1.5, 12, dtype=np.float32), z=np.zeros(4, np.float32),
             i=np.zeros(3, np.int64))
    for r in (0, 1):
        assert main(["encode", p(f"a{r}.npz"), "-o", p(f"s{r}.nnr"), "--qp", "-20", "--state", p("tx"), "-q"]) == 0
        assert main(["decode", p(f"s{r}.nnr"), "-o", p(f"r{r}.npz"), "--state", p("rx"), "-q"]) == 0
    with np.load(p("r1.npz")) as got:
        assert sorted(got.files) == ["i", "w", "z"] and not got["z"].any() and not got["i"].any()
    state = EncoderState()
    nnc.encode({"z": np.ones(4, np.float32)}, state=state, differences=True)
    assert Encoder(state=state, differences=True).encode({"z": np.ones(4, np.float32)}).skipped == ["z"]
    assert Encoder(state=EncoderState(), skip_zero=True).encode({"z": np.zeros(4, np.float32)}).skipped == []


def test_add_to_reads_a_checkpoint_folder_and_names_what_it_leaves_out(tmp_path, capsys):
    """Before: --add-to a folder was "Is a directory"; a training checkpoint's other entries were dropped silently;
    nnc compare on a TCA update advised a DecoderState, which a command cannot take."""
    torch = pytest.importorskip("torch")
    from nnc.cli import main
    from nnc.formats import read_model, write_model

    p = lambda name: str(tmp_path / name)  # noqa: E731
    rng = np.random.default_rng(4)
    w = {"a.weight": rng.normal(size=(16, 8)).astype(np.float32), "a.bias": rng.normal(size=16).astype(np.float32)}
    write_model(p("w0.safetensors"), w)
    write_model(p("w1.safetensors"), {k: v + 0.01 for k, v in w.items()})
    for r in (0, 1):
        assert main(["encode", p(f"w{r}.safetensors"), "-o", p(f"s{r}.nnr"), "--state", p("tx"), "--differences",
                     "-q"]) == 0
    assert main(["decode", p("s0.nnr"), "-o", p("r0") + os.sep, "--state", p("rx"), "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", p("w1.safetensors"), p("s1.nnr")]) == 1
    assert "nnc decode --state" in capsys.readouterr().err
    assert main(["decode", p("s1.nnr"), "--add-to", p("r0") + os.sep, "-o", p("r1.safetensors"), "--state",
                 p("rx"), "-q"]) == 0
    got, _ = read_model(p("r1.safetensors"))
    assert all(np.allclose(got[k], w[k] + 0.01, atol=0.01) for k in w)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in got.items()}, "epoch": 3}, p("ck.pt"))
    write_model(p("w2.safetensors"), {k: v + 0.02 for k, v in w.items()})
    assert main(["encode", p("w2.safetensors"), "-o", p("s2.nnr"), "--state", p("tx"), "--differences", "-q"]) == 0
    capsys.readouterr()
    assert main(["decode", p("s2.nnr"), "--add-to", p("ck.pt"), "-o", p("r2.pt"), "--state", p("rx")]) == 0
    assert "epoch" in capsys.readouterr().err


def test_add_to_notes_the_tensors_the_update_no_longer_names(tmp_path, capsys):
    from nnc.cli import main

    p = lambda name: str(tmp_path / name)  # noqa: E731
    np.savez(p("a0.npz"), w=np.linspace(-1, 1, 12, dtype=np.float32), extra=np.ones(3, np.float32))
    np.savez(p("a1.npz"), w=np.linspace(-1, 1.5, 12, dtype=np.float32))
    for r in (0, 1):
        assert main(["encode", p(f"a{r}.npz"), "-o", p(f"s{r}.nnr"), "--state", p("tx"), "--differences", "-q"]) == 0
    assert main(["decode", p("s0.nnr"), "-o", p("r0.npz"), "--state", p("rx"), "-q"]) == 0
    capsys.readouterr()
    assert main(["decode", p("s1.nnr"), "--add-to", p("r0.npz"), "-o", p("r1.npz"), "--state", p("rx")]) == 0
    err = capsys.readouterr().err
    assert "does not name" in err and "extra" in err
    with np.load(p("r1.npz")) as got:
        assert sorted(got.files) == ["extra", "w"]


def test_an_update_added_to_a_checkpoint_folder_writes_its_layout(tmp_path, capsys):
    """Before: --add-to with -o folder/ was refused ("written to one file"); now the sum keeps the model's shards,
    index and dtypes, and a tensor new in the update goes to the last shard."""
    import json
    import shutil

    from nnc.cli import main
    from nnc.formats import read_model, safetensors_bytes

    p = lambda name: str(tmp_path / name)  # noqa: E731
    rng = np.random.default_rng(5)
    shards = [{"a.weight": rng.normal(size=(16, 8)).astype(np.float16), "a.bias": rng.normal(size=16).astype(np.float32)},
              {"b.weight": rng.normal(size=(8, 8)).astype(np.float32), "steps": np.array([3], np.int64)}]

    def checkpoint(folder, shards):
        os.makedirs(folder)
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(safetensors_bytes(shard))
            weight_map.update((k, name) for k in shard)
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, fh)

    checkpoint(p("m0"), shards)
    moved = [{k: (v + np.asarray(0.25, v.dtype) if v.dtype.kind == "f" else v) for k, v in s.items()} for s in shards]
    moved[1]["c.new"] = np.full(4, 2.0, np.float32)
    checkpoint(p("m1"), moved)
    for r in (0, 1):
        assert main(["encode", p(f"m{r}") + os.sep, "-o", p(f"s{r}.nnr"), "--state", p("tx"), "--differences",
                     "-q"]) == 0
    assert main(["decode", p("s0.nnr"), "-o", p("r0") + os.sep, "--state", p("rx"), "-q"]) == 0
    shutil.copy(p("rx"), p("ry"))
    assert main(["decode", p("s1.nnr"), "--add-to", p("r0") + os.sep, "-o", p("r1") + os.sep, "--state",
                 p("rx"), "-q"]) == 0
    assert sorted(os.listdir(p("r1"))) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                           "model.safetensors.index.json"]
    index = json.load(open(os.path.join(p("r1"), "model.safetensors.index.json")))
    assert index["weight_map"]["a.weight"] == "model-00001-of-00002.safetensors"
    assert index["weight_map"]["c.new"] == "model-00002-of-00002.safetensors"
    got = {}
    for name in sorted(os.listdir(p("r1"))):
        if name.endswith(".safetensors"):
            tensors, dtypes = read_model(os.path.join(p("r1"), name))
            assert set(tensors) == {k for k, v in index["weight_map"].items() if v == name}
            got.update((k, (v, dtypes[k])) for k, v in tensors.items())
    want = {k: v for s in moved for k, v in s.items()}
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k][1] == v.dtype.name, k
        assert np.allclose(got[k][0], v, atol=0.02), k
    assert np.array_equal(got["steps"][0], [3])
    # the model added to is an input: never written over, even through its index
    before = {n: open(os.path.join(p("r0"), n), "rb").read() for n in os.listdir(p("r0"))}
    code = main(["decode", p("s1.nnr"), "--add-to", os.path.join(p("r0"), "model.safetensors.index.json"),
                 "-o", p("r0") + os.sep, "--state", p("ry"), "-q"])
    assert code == 1 and "refusing to overwrite an input" in capsys.readouterr().err
    assert {n: open(os.path.join(p("r0"), n), "rb").read() for n in os.listdir(p("r0"))} == before


@pytest.mark.parametrize("tca", [False, True])
def test_hdsp_with_a_tensor_of_a_new_size_codes_it_without_history(tca):
    """Before: 'hdsp_history has 24 elements, the tensor has 30' (an EncodeError); a history of another size is not
    used (spec 10.5, 14.2), on either side."""
    rng = np.random.default_rng(0)
    sender, receiver = EncoderState(), nnc.DecoderState()
    nnc.decode(Encoder(qp=-30, state=sender).encode({"w": rng.normal(0, 0.05, (4, 6)).astype(np.float32)}).stream,
               state=receiver)
    for shape in ((5, 6), (5, 6), (3, 6)):
        result = Encoder(qp=-30, state=sender, hdsp=True, tca=tca).encode(
            {"w": rng.normal(0, 0.05, shape).astype(np.float32)})
        for engine in ("cython", "python"):
            got = nnc.decode(result.stream, state=copy.deepcopy(receiver), engine=engine)
            assert np.array_equal(got["w"], result.tensors["w"].reconstruction.reshape(shape)), engine
        nnc.decode(result.stream, state=receiver)


def test_an_nncodec_update_with_no_ndu_decodes_to_no_tensors_and_leaves_the_state(tmp_path, capsys):
    """NNCodec writes an update whose tensors are all zero as a start unit, a model parameter set with parent
    signalling and an empty topology string (spec 3.5): before, a TruncatedError ended the sequence. The same
    stream without parent signalling is still a cut stream (conformance must-fail mf_nncodec_cut_after_topology)."""
    from nnc.cli import main

    empty_update = bytes.fromhex("00040201000806810840008000060e000000")
    state = nnc.DecoderState()
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 16
    nnc.decode(Encoder(qp=-20, state=EncoderState()).encode({"w": w}).stream, state=state)
    before = {k: v.copy() for k, v in state.levels.items()}
    dec = nnc.Decoder(empty_update, state=state)
    assert dec.parent_signalling and dec.names() == [] and dict(dec.decode()) == {}
    assert state.levels.keys() == before.keys() and all(np.array_equal(state.levels[k], before[k]) for k in before)
    cut = bytes.fromhex("00040201000806810040008000060e000000")
    with pytest.raises(nnc.errors.TruncatedError):
        nnc.Decoder(cut)
    (tmp_path / "u.nnr").write_bytes(empty_update)
    assert main(["decode", str(tmp_path / "u.nnr"), "-o", str(tmp_path / "u.npz")]) == 1
    assert "an update that sends no tensor" in capsys.readouterr().err and not (tmp_path / "u.npz").exists()


def _sequence(rng, rounds=3, **options):
    sender, streams = EncoderState(), []
    model = {"a": rng.normal(0, 0.05, (20, 16)).astype(np.float32), "b": rng.normal(0, 0.05, (12, 9)).astype(np.float32)}
    for i in range(rounds):
        streams.append(Encoder(qp=-30, state=sender, **options).encode(model).stream)
        model = {k: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in model.items()}
    return streams


@pytest.mark.parametrize("engine", ["cython", "python"])
def test_a_failed_or_partial_decode_leaves_the_state_as_it_was(engine):
    """Before: the levels of the NDUs decoded before a failing one (and of the failing one) entered the state, so
    that the intact copy of the update then failed too; decoding a unit twice with one Decoder used its own levels
    as the parent the second time."""
    streams = _sequence(np.random.default_rng(7), tca=True)
    state = nnc.DecoderState()
    nnc.decode(streams[0], state=state, engine=engine)
    before = {k: v.copy() for k, v in state.levels.items()}
    bad = bytearray(streams[1])
    bad[-3] ^= 0xFF  # inside the last NDU's payload: the first NDU decodes, the stream does not
    with pytest.raises(nnc.DecodeError):
        nnc.decode(bytes(bad), state=state, engine=engine)
    assert all(np.array_equal(state.levels[k], before[k]) for k in before)
    dec = nnc.Decoder(streams[1], state=state, engine=engine)
    first = dec.decode_tensor("a")  # one NDU of two: the state waits for the whole stream
    assert all(np.array_equal(state.levels[k], before[k]) for k in before)
    whole = dec.decode()
    assert np.array_equal(whole["a"], first) and np.array_equal(dec.decode_tensor("a"), first)
    assert not np.array_equal(state.levels["a"], before["a"])  # entered once every NDU decoded
    assert np.array_equal(nnc.decode(streams[2], state=state, engine=engine)["a"],
                          nnc.decode(streams[2], state=_states_after(streams[:2], engine), engine=engine)["a"])


def _states_after(streams, engine):
    state = nnc.DecoderState()
    for s in streams:
        nnc.decode(s, state=state, engine=engine)
    return state


@given(seed=st.integers(0, 2**16), tca=st.booleans(), hdsp=st.booleans())
@settings(max_examples=25, deadline=None)
def test_an_update_decoded_twice_or_after_a_missing_one_is_refused(seed, tca, hdsp):
    """Before: the decoder did not compare the NDUs' node depths with its state, and some replayed or skipped
    updates decoded silently to wrong values (22 of 2,000 and 4 of 2,000 in a probe). Now refused by the state's
    depths (spec 14.4), before any payload; the right order decodes, and a state saved to a file keeps them."""
    streams = _sequence(np.random.default_rng(seed), rounds=3, tca=tca, hdsp=hdsp)
    for order in ([0, 1, 1], [0, 2], [0, 1, 2, 2]):
        state = nnc.DecoderState()
        for i in order[:-1]:
            nnc.decode(streams[i], state=state)
        with pytest.raises(nnc.DecodeError, match="spec 14.4"):
            nnc.decode(streams[order[-1]], state=state)
    state = _states_after(streams[:2], "cython")
    assert state.depths == {"a": 2, "b": 2}
    nnc.decode(streams[2], state=state)
    assert state.depths == {"a": 3, "b": 3}


def test_decoder_state_files_keep_the_depths(tmp_path):
    state = _states_after(_sequence(np.random.default_rng(1), rounds=2), "cython")
    state.save(tmp_path / "s")
    assert nnc.DecoderState.load(tmp_path / "s").depths == state.depths == {"a": 2, "b": 2}


def _parent_ids(stream):
    from nnc import container as C

    return [(u.header.topology_elem_ids or [u.header.topology_elem_id], u.header.parent_node_id_type)
            for u in C.parse_stream(stream) if u.type_name == "NNR_NDU"]


@given(seed=st.integers(0, 2**16), other=st.integers(0, 2**16), tca=st.booleans(), hdsp=st.booleans(),
       parent_id=st.sampled_from(["sha256", "sha512"]))
@settings(max_examples=30, deadline=None)
def test_an_update_of_another_model_is_refused_by_its_parents_digest(seed, other, tca, hdsp, parent_id):
    """Before: an update was checked against the state by node depth alone, and one of another sequence of the same
    names, shapes and depth decoded with this state, through TCA, to wrong values in 2 of 300 small random pairs.
    Now each NDU names its parent by the digest of the parent NDU's payload (spec 7.4, 14.4, 15.1 item 50), and the
    state refuses another one; the update's own sequence decodes, also after its state went through a file."""
    ours = _sequence(np.random.default_rng(seed), rounds=3, tca=tca, hdsp=hdsp, parent_id=parent_id)
    theirs = _sequence(np.random.default_rng(seed + 1 + other), rounds=2, tca=tca, hdsp=hdsp, parent_id=parent_id)
    assert {kind for _, kind in _parent_ids(ours[1])} == {1 if parent_id == "sha256" else 2}
    state = nnc.DecoderState()
    nnc.decode(ours[0], state=state)
    with pytest.raises(nnc.DecodeError, match=r"another model or sequence.*spec 14.4"):
        nnc.decode(theirs[1], state=state)
    state = nnc.DecoderState.load(_saved(state))
    for stream in ours[1:]:
        nnc.decode(stream, state=state)
    with pytest.raises(nnc.DecodeError, match="spec 14.4"):
        nnc.decode(ours[2], state=state)  # a replay


def _saved(state):
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "state")
    state.save(path)
    return path


def test_node_ids_alone_name_the_parent_with_parent_id_ids():
    """``parent_id="ids"`` writes NNCodec's type 0 (32 bytes less per NDU than a SHA-256), checked by depth only:
    another sequence's update of the same depth is then not told apart."""
    rng = np.random.default_rng(3)
    digest, ids = (_sequence(np.random.default_rng(3), rounds=2, parent_id=p) for p in ("sha256", "ids"))
    assert {kind for _, kind in _parent_ids(ids[1])} == {0}
    assert len(digest[1]) - len(ids[1]) == 2 * 32
    other = _sequence(rng, rounds=2, parent_id="ids")
    state = nnc.DecoderState()
    nnc.decode(_sequence(np.random.default_rng(4), rounds=1)[0], state=state)
    try:
        nnc.decode(other[1], state=state)
    except nnc.DecodeError as exc:  # only when its payload happens to fail: no depth or digest tells
        assert "14.4" not in str(exc)
    with pytest.raises(nnc.EncodeError, match="parent_id must be one of"):
        Encoder(parent_id="md5")


def test_a_block_of_tensors_from_two_parents_is_named_by_ids():
    """A BLOCK NDU whose tensors came from two NDUs of the base cannot name one payload: node ids then."""
    rng = np.random.default_rng(5)
    base = {"f.weight": rng.normal(0, 0.05, (16, 12)).astype(np.float32),
            "f.bias": rng.normal(0, 0.05, 16).astype(np.float32)}
    sender, receiver = EncoderState(), nnc.DecoderState()
    streams = [Encoder(qp=-30, state=sender, blocks=False).encode(base).stream]
    update = {k: (v * 0.1).astype(np.float32) for k, v in base.items()}
    streams.append(Encoder(qp=-38, state=sender, blocks=True).encode(update).stream)
    streams.append(Encoder(qp=-38, state=sender, blocks=True).encode(update).stream)
    assert _parent_ids(streams[1]) == [(["f.weight", "f.bias"], 0)]
    assert _parent_ids(streams[2]) == [(["f.weight", "f.bias"], 1)]  # now both came from one BLOCK NDU
    for stream in streams:
        nnc.decode(stream, state=receiver)
    assert receiver.payload_digests == sender.payload_digests


def test_a_state_file_without_digests_decodes_unchecked(tmp_path):
    """A state of nnc 0.2.0 (no payload digests) still decodes the next update; it is checked by depth only."""
    streams = _sequence(np.random.default_rng(6), rounds=2, tca=True)
    state = nnc.DecoderState()
    nnc.decode(streams[0], state=state)
    state.payload_digests = {}
    state = nnc.DecoderState.load(_saved(state))
    assert state.payload_digests == {}
    live = nnc.DecoderState()
    nnc.decode(streams[0], state=live)
    out, ref = nnc.decode(streams[1], state=state), nnc.decode(streams[1], state=live)
    assert all(np.array_equal(out[k], ref[k]) for k in ref)
    assert state.payload_digests == live.payload_digests


def test_cli_parent_id_option(tmp_path, capsys):
    import json

    from nnc.cli import main

    rng = np.random.default_rng(9)
    for i in range(2):
        np.savez(tmp_path / f"m{i}.npz", w=rng.normal(0, 0.05, (10, 8)).astype(np.float32))
    assert main(["encode", str(tmp_path / "m0.npz"), "-o", str(tmp_path / "x.nnr"), "--parent-id", "ids"]) == 2
    assert "--parent-id codes updates; give --state too" in capsys.readouterr().err
    for i, parent_id in enumerate(["sha512", "sha512"]):
        assert main(["encode", str(tmp_path / f"m{i}.npz"), "-o", str(tmp_path / f"s{i}.nnr"), "--state",
                     str(tmp_path / "tx"), "--parent-id", parent_id, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s1.nnr"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["tensors"][0]
    base = nnc.container.parse_stream((tmp_path / "s0.nnr").read_bytes())[-1]
    import hashlib

    assert row["parent_id"] == "sha512:" + hashlib.sha512(bytes(base.payload)).hexdigest()


_BAD_STATE_META = [
    ("depths", {"a": float("inf")}), ("depths", {"a": "2"}), ("depths", {"a": 1.5}), ("depths", {"a": True}),
    ("depths", {"a": -1}), ("depths", [1]), ("payload_digests", {"a": ["00" * 4, "00" * 64]}),
    ("payload_digests", {"a": ["00" * 64, "00" * 32]}), ("payload_digests", {"a": {"x": 1, "y": 2}}),
    ("payload_digests", {"a": ["zz" * 32, "00" * 64]}), ("payload_digests", {"a": ["00" * 32]}),
]


@pytest.mark.parametrize("kind,change", [(k, c) for k in ("decoder", "encoder") for c in _BAD_STATE_META]
                         + [("encoder", ("parameter_ids", {"a": 10**12}))])
def test_a_state_file_with_bad_ids_or_digests_is_refused_naming_it(tmp_path, change, kind):
    """Before: an infinite depth escaped DecoderState.load as OverflowError (a traceback from the CLI); digests of
    another length, depths of "2", 1.5 or true loaded, and an encoder then wrote a zero-padded digest that its
    receiver refused, or failed in the container without naming the file."""
    import json

    from nnc.formats import npz_bytes, read_npz

    streams = _sequence(np.random.default_rng(11), rounds=1)
    state = nnc.DecoderState() if kind == "decoder" else EncoderState()
    if kind == "decoder":
        nnc.decode(streams[0], state=state)
    else:
        Encoder(qp=-30, state=state).encode({"a": np.ones((4, 4), np.float32)})
    path = tmp_path / "state"
    state.save(path)
    arrays, _ = read_npz(path)
    meta = json.loads(bytes(np.asarray(arrays["meta"], np.uint8)).decode())
    meta[change[0]] = change[1]
    path.write_bytes(npz_bytes(dict(arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))))
    cls = nnc.DecoderState if kind == "decoder" else EncoderState
    with pytest.raises(nnc.DecodeError, match=f"{path} is not an nnc {kind} state file"):
        cls.load(path)


def _renumbered(stream, depths):
    """``stream`` with the put_node_depth of each named tensor's NDU replaced (as nnc 0.2.0 numbered them)."""
    from nnc import container as C

    units = C.parse_stream(stream)
    ps = any(u.type_name == "NNR_MPS" and u.header.mps_parent_signalling_enabled_flag for u in units)
    out = b""
    for u in units:
        raw = stream[u.offset:u.end]
        if u.type_name == "NNR_NDU" and u.header.topology_elem_id in depths:
            raw = C.build_ndu(dict(u.header, put_node_depth=depths[u.header.topology_elem_id]), bytes(u.payload),
                              parent_signalling=ps)
        out += raw
    return out


@pytest.mark.parametrize("parent_id", ["sha256", "ids"])
def test_a_raw_float_update_leaves_the_depths_and_old_numbering_decodes(parent_id):
    """Before: a tensor stored raw in one update took that NDU's depth, and NNCodec (which numbers from the coded
    NDU before it) refused the next update that coded it. A RAW_FLOAT NDU now leaves the depths (spec 14.4); the
    sequences nnc 0.2.0 wrote, numbered from the RAW_FLOAT NDU, still decode."""
    rng = np.random.default_rng(12)
    sender, receiver, old = EncoderState(), nnc.DecoderState(), nnc.DecoderState()
    for i, raw in enumerate([(), "b", (), "b", "b", ()]):
        tensors = {k: (rng.standard_normal((8, 9)) * 0.05).astype(np.float32) for k in "ab"}
        res = Encoder(qp=-30, state=sender, raw=raw, parent_id=parent_id).encode(tensors)
        out = nnc.decode(res.stream, state=receiver)
        assert all(np.array_equal(out[k], res.reconstruction[k]) for k in out)
        assert sender.depths == receiver.depths == {"a": i + 1, "b": 1 + sum(r == () for r in [(), "b", (), "b", "b", ()][1:i + 1])}
        # nnc 0.2.0 gave every NDU one above the tensor's last NDU, RAW_FLOAT or not
        renumbered = _renumbered(res.stream, {"a": i + 1, "b": i + 1})
        back = nnc.decode(renumbered, state=old)
        assert all(np.array_equal(back[k], out[k]) for k in out)
    with pytest.raises(nnc.DecodeError, match="spec 14.4"):
        nnc.decode(res.stream, state=receiver)  # a replay is still refused


def test_one_decoder_state_in_threads_takes_each_update_once():
    """Before: six threads decoding one update with one DecoderState all succeeded (the replay went unnoticed),
    and one read a state half entered by another (new levels, old depths). Now one enters it, the others refuse."""
    import threading

    rng = np.random.default_rng(5)
    model = {"w": rng.normal(size=(48, 48)).astype(np.float32)}
    sender = EncoderState()
    base = nnc.encode(model, qp=-30, state=sender, differences=True)
    update = nnc.encode({"w": model["w"] + 0.1}, qp=-30, state=sender, differences=True)
    alone = nnc.DecoderState()
    nnc.decode(base, state=alone)
    nnc.decode(update, state=alone)
    for _ in range(3):
        shared = nnc.DecoderState()
        nnc.decode(base, state=shared)
        outcomes = []

        def decode():
            try:
                nnc.decode(update, state=shared)
                outcomes.append("decoded")
            except nnc.errors.DecodeError as exc:
                outcomes.append(exc.clause)

        threads = [threading.Thread(target=decode) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("decoded") == 1 and set(outcomes) <= {"decoded", "14.2", "14.4"}
        assert shared.levels["w"].tolist() == alone.levels["w"].tolist() and shared.depths == alone.depths
    # streams that name no parents decode whatever the state holds: entered in any order
    shared = nnc.DecoderState()
    first, second = (nnc.Decoder(nnc.encode({k: model["w"]}), state=shared) for k in ("a", "b"))
    first.decode()
    second.decode()
    assert sorted(shared.levels) == ["a", "b"]


def test_an_hdsp_update_decoded_without_its_history_says_what_is_missing():
    """Before: only "terminate bin is 0 at the end of the payload"; a TCA update said what was missing already."""
    rng = np.random.default_rng(8)
    state = EncoderState()
    for i in range(2):
        stream = nnc.encode({"w": rng.normal(size=(32, 32)).astype(np.float32)}, qp=-30, state=state, hdsp=True,
                            tca=False)
    with pytest.raises(nnc.errors.DecodeError, match="no history of it was decoded before.*same DecoderState"):
        nnc.decode(stream)  # (this one fails; another could decode to other values with an empty history)


def test_a_state_file_from_before_the_rounding_rule_records_no_parent_for_bfloat16_updates(tmp_path, monkeypatch):
    """A sender state of nnc before spec 14.5's rule tracked unrounded sums, from which its receivers' bfloat16
    files had drifted: a parent digest of its model would refuse every next update (a chain could not go on).
    Such a state records none for those tensors, as then; states of now record it."""
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    state = EncoderState()
    nnc.encode({"w": w}, qp=-30, state=state, differences=True, dtypes={"w": "bfloat16"})
    state.save(tmp_path / "new.npz")
    old_meta = state._meta

    def without_the_flag():
        meta = old_meta()
        del meta["narrow_rounded"]
        return meta

    monkeypatch.setattr(state, "_meta", without_the_flag)
    state.save(tmp_path / "old.npz")
    for name, parent in (("new.npz", True), ("old.npz", False)):
        loaded = EncoderState.load(tmp_path / name)
        update = nnc.decode(nnc.encode({"w": w + 0.1}, qp=-30, state=loaded, differences=True,
                                       dtypes={"w": "bfloat16"}, tca=False))
        assert (update.parent is not None) == parent
        assert EncoderState.load(tmp_path / name).narrow_rounded == parent


def test_decode_model_does_not_write_an_update_s_differences_as_the_model(tmp_path):
    """decode_model(update, "m.npz", state=...) wrote the differences as if they were the model, without a word;
    the numcodecs codec returned them as a chunk's values."""
    import nnc.codec

    state, receiver = nnc.EncoderState(), nnc.DecoderState()
    base = nnc.encode({"w": np.ones(4, np.float32)}, state=state, differences=True)
    update = nnc.encode({"w": np.full(4, 2, np.float32)}, state=state, differences=True)
    held = nnc.decode_model(base, state=receiver)
    out = tmp_path / "m.npz"
    with pytest.raises(nnc.UpdateError, match="holds differences"):
        nnc.decode_model(update, out, state=receiver)
    assert not out.exists()
    with pytest.raises(nnc.UpdateError, match="holds differences"):
        nnc.codec.NNC().decode(update)
    differences = nnc.decode_model(update, state=receiver)  # in memory: what the state asked for
    assert np.allclose(nnc.apply_update(held, differences)["w"], 2.0, atol=0.01)


@pytest.mark.parametrize(
    "model, update, words",
    [
        (np.array([0, 255], np.uint8), np.array([-1, 1], np.int32), "beyond its uint8 model's range"),
        (np.array([127], np.int8), np.array([1], np.int32), "beyond its int8 model's range"),
        (np.array([1, 2]), np.array([0.6, -0.6]), "holds fractions"),
        (np.zeros(2), np.array(["a", "b"]), "not numbers"),
        (np.zeros(2), np.array([None, 1]), "not numbers"),
    ],
)
def test_apply_update_never_wraps_or_rounds_an_integer_model(model, update, words):
    """uint8 [0, 255] + int32 [-1, 1] gave [255, 0]; int [1, 2] + [0.6, -0.6] gave [1, 1], without a word."""
    with pytest.raises(nnc.UpdateError, match=words):
        nnc.apply_update({"n": model}, {"n": update})


def test_apply_update_adds_whole_differences_of_another_dtype_exactly():
    out = nnc.apply_update({"n": np.array([1, 250], np.uint8)}, {"n": np.array([2.0, -250.0])})["n"]
    assert out.dtype == np.uint8 and out.tolist() == [3, 0]
    big = np.array([2**53 + 1, 2**63 - 1], np.int64)  # float64 sums rounded the first and wrapped the second
    assert nnc.apply_update({"n": big}, {"n": np.zeros(2)})["n"].tolist() == big.tolist()
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed")
    with pytest.raises(nnc.UpdateError, match="holds fractions"):  # bfloat16 differences were truncated
        nnc.apply_update({"n": np.array([10, 10])}, {"n": np.array([0.5, 1.5], ml_dtypes.bfloat16)})
    same = nnc.apply_update({"n": np.array([10, 200], np.uint8)}, {"n": np.array([253, 55], np.uint8)})["n"]
    assert same.tolist() == [7, 255]  # the model's own dtype: modulo its range, as the encoder took them


def test_decoded_tensors_pickle_and_copy_with_what_the_stream_says():
    """pickle.dumps(nnc.decode(...)) and copy.deepcopy failed: cannot pickle 'mappingproxy' object."""
    import copy
    import pickle

    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed")
    state, receiver = nnc.EncoderState(), nnc.DecoderState()
    w = np.linspace(-1, 1, 16, dtype=np.float32).astype(ml_dtypes.bfloat16)
    nnc.decode(nnc.encode({"w": w}, state=state, differences=True), state=receiver)
    update = nnc.decode(nnc.encode({"w": (w.astype(np.float32) * 2).astype(ml_dtypes.bfloat16)}, state=state,
                                   differences=True), state=receiver)
    for back in (pickle.loads(pickle.dumps(update)), copy.deepcopy(update)):
        assert type(back) is type(update) and list(back) == list(update)
        assert (back.differences, back.parent, dict(back.narrow)) == (True, update.parent, {"w": "bfloat16"})
        assert np.array_equal(back["w"], update["w"])
        with pytest.raises(TypeError):
            back.narrow["w"] = "float32"  # still read-only


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_a_state_file_another_command_moved_on_meanwhile_is_not_replaced(tmp_path, monkeypatch, capsys, command):
    """Two `nnc decode --state R` of different updates at once both exited 0 and R kept only the later one: the
    other update was lost from the state without a word. The state file is now checked before it is replaced."""
    from nnc import cli, formats

    model = tmp_path / "m.npz"
    model.write_bytes(formats.npz_bytes(_tensors(np.random.default_rng(3), 0.05)))
    tx, rx = tmp_path / "tx", tmp_path / "rx"
    assert cli.main(["encode", str(model), "-o", str(tmp_path / "s0.nnr"), "--state", str(tx), "-q"]) == 0
    assert cli.main(["decode", str(tmp_path / "s0.nnr"), "-o", str(tmp_path / "d0.npz"), "--state", str(rx),
                     "-q"]) == 0
    state = tx if command == "encode" else rx
    before = state.read_bytes()
    loaded = cli._load_state

    def and_another_command_writes_it(cls, path, *rest):
        out = loaded(cls, path, *rest)
        state.write_bytes(before + b"")  # the same bytes, another file: the other command's
        os.utime(state, ns=(0, 10**9))
        return out

    monkeypatch.setattr(cli, "_load_state", and_another_command_writes_it)
    out = tmp_path / ("s1.nnr" if command == "encode" else "d1.npz")
    argv = (["encode", str(model), "-o", str(out), "--state", str(tx)] if command == "encode"
            else ["decode", str(tmp_path / "s0.nnr"), "-o", str(out), "--state", str(rx), "--overwrite"])
    capsys.readouterr()
    assert cli.main([*argv, "-q"]) == 1
    err = capsys.readouterr().err
    assert "the --state file changed while this command ran" in err and err.count("\n") == 1
    assert not out.exists() and state.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(sys.platform == "win32", reason="advisory file locks are POSIX's")
def test_a_command_on_a_state_file_another_command_holds_waits_and_reads_what_it_wrote(tmp_path):
    """The --state check refused a state file replaced while the command ran (exit 1: run it again), and left a
    short window between the output's rename and the state's. The file is now locked while a command uses it: the
    second command waits, then codes on the state the first wrote (three streams deep here, not two)."""
    import fcntl
    import shutil
    import subprocess

    from nnc import cli, formats

    model = tmp_path / "m.npz"
    model.write_bytes(formats.npz_bytes(_tensors(np.random.default_rng(3), 0.05)))
    tx, first = tmp_path / "tx", tmp_path / "first"
    assert cli.main(["encode", str(model), "-o", str(tmp_path / "s0.nnr"), "--state", str(tx), "-q"]) == 0
    shutil.copy(tx, first)  # the other command's state, one stream further on
    assert cli.main(["encode", str(model), "-o", str(tmp_path / "s1.nnr"), "--state", str(first), "-q"]) == 0
    with open(tx, "rb") as other:  # the other command holds the state file
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        cmd = [sys.executable, "-m", "nnc", "encode", str(model), "-o", str(tmp_path / "s2.nnr"), "--state", str(tx)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        assert proc.stderr.readline() == f"nnc: note: waiting for another command that uses {tx}\n"
        os.replace(first, tx)  # ... and writes its state
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert set(nnc.EncoderState.load(tx).depths.values()) == {3}


@pytest.mark.skipif(sys.platform == "win32", reason="advisory file locks are POSIX's")
def test_a_command_that_fails_after_reading_its_state_leaves_it_unlocked(tmp_path):
    import fcntl

    from nnc import cli, formats

    model = tmp_path / "m.npz"
    model.write_bytes(formats.npz_bytes(_tensors(np.random.default_rng(3), 0.05)))
    rx = tmp_path / "rx"
    assert cli.main(["encode", str(model), "-o", str(tmp_path / "s0.nnr"), "-q"]) == 0
    assert cli.main(["decode", str(tmp_path / "s0.nnr"), "-o", str(tmp_path / "d0.npz"), "--state", str(rx),
                     "-q"]) == 0
    bad = tmp_path / "bad.nnr"
    bad.write_bytes((tmp_path / "s0.nnr").read_bytes()[:-7])
    assert cli.main(["decode", str(bad), "-o", str(tmp_path / "d1.npz"), "--state", str(rx), "-q"]) == 1
    assert cli._STATE_LOCKS == []
    with open(rx, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # (BlockingIOError if the failed command held it)


def test_add_to_decodes_each_unit_once(tmp_path, monkeypatch):
    """Before: --add-to decoded tensor by tensor in the model's order, so a BLOCK unit (a weight with its bias)
    was decoded once for each of its members."""
    from nnc import formats
    from nnc.cli import main
    from nnc.decoder import Decoder

    rng = np.random.default_rng(11)
    first = {"fc.weight": rng.normal(0, 0.05, (24, 16)).astype(np.float32),
             "fc.bias": rng.normal(0, 0.01, 24).astype(np.float32),
             "out.weight": rng.normal(0, 0.05, (4, 24)).astype(np.float32)}
    second = {k: v + rng.laplace(0, 0.003, v.shape).astype(np.float32) for k, v in first.items()}
    for i, m in enumerate((first, second)):
        (tmp_path / f"m{i}.npz").write_bytes(formats.npz_bytes(m))
        assert main(["encode", str(tmp_path / f"m{i}.npz"), "-o", str(tmp_path / f"s{i}.nnr"), "--qp", "-34",
                     "--state", str(tmp_path / "tx"), "--differences", "--blocks", "-q"]) == 0
    assert main(["decode", str(tmp_path / "s0.nnr"), "-o", str(tmp_path / "r0.npz"), "--state",
                 str(tmp_path / "rx"), "-q"]) == 0
    update = Decoder(str(tmp_path / "s1.nnr"))
    assert update.info("fc.weight").block                         # the weight and its bias share a BLOCK unit
    decoded: list = []
    real = Decoder._decode_ndu

    def counting(self, unit, *args, **kwargs):
        decoded.append(unit.offset)
        return real(self, unit, *args, **kwargs)

    monkeypatch.setattr(Decoder, "_decode_ndu", counting)
    assert main(["decode", str(tmp_path / "s1.nnr"), "-o", str(tmp_path / "r1.npz"), "--state", str(tmp_path / "rx"),
                 "--add-to", str(tmp_path / "r0.npz"), "-q"]) == 0
    assert sorted(decoded) == sorted(set(decoded)) and len(decoded) == 2
    held, _ = formats.read_model(tmp_path / "r1.npz")
    tracked = EncoderState.load(tmp_path / "tx").model
    assert list(held) == list(first) and all(np.array_equal(held[k], tracked[k]) for k in tracked)


def test_add_to_decodes_each_unit_with_the_threads_asked_for(tmp_path, monkeypatch):
    """Before: --add-to ignored --threads (decode_to_path's threads= never reached it): every unit in one thread,
    though a unit's entry points let it decode in several."""
    from nnc import formats
    from nnc.cli import main
    from nnc.decoder import Decoder

    rng = np.random.default_rng(12)
    first = {"w": rng.normal(0, 0.05, (64, 64)).astype(np.float32)}
    second = {"w": first["w"] + rng.laplace(0, 0.003, (64, 64)).astype(np.float32)}
    for i, m in enumerate((first, second)):
        (tmp_path / f"m{i}.npz").write_bytes(formats.npz_bytes(m))
        assert main(["encode", str(tmp_path / f"m{i}.npz"), "-o", str(tmp_path / f"s{i}.nnr"), "--qp", "-34",
                     "--state", str(tmp_path / "tx"), "--differences", "-q"]) == 0
    assert main(["decode", str(tmp_path / "s0.nnr"), "-o", str(tmp_path / "r0.npz"), "--state",
                 str(tmp_path / "rx"), "-q"]) == 0
    asked: list = []
    real = Decoder._decode_ndu

    def recording(self, unit, params, infos, threads, *args, **kwargs):
        asked.append(threads)
        return real(self, unit, params, infos, threads, *args, **kwargs)

    monkeypatch.setattr(Decoder, "_decode_ndu", recording)
    assert main(["decode", str(tmp_path / "s1.nnr"), "-o", str(tmp_path / "r1.npz"), "--state", str(tmp_path / "rx"),
                 "--add-to", str(tmp_path / "r0.npz"), "--threads", "2", "-q"]) == 0
    assert asked == [2]
    held, _ = formats.read_model(tmp_path / "r1.npz")
    assert np.array_equal(held["w"], EncoderState.load(tmp_path / "tx").model["w"])
