"""Incremental coding tensor by tensor: states whose arrays stay on disk (read lazily from their file, or spilled to
a temporary file), updates encoded by Encoder.encode_to and added to a model by decode --add-to, in memory bounded
by the tensors in flight, and byte for byte what the in-memory paths give."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnc
import nnc.encoding.stream as stream_module
import nnc.readers
from nnc import formats
from nnc.array_store import ArrayStore, StoredArray, narrowest_integers
from nnc.cli import main
from nnc.decoder import DecoderState, apply_update
from nnc.encoder import Encoder, EncoderState

NAMES = ["a.weight", "a.bias", "c.weight", "steps", "frozen.weight"]


def _round(rng, i, absent, reshape):
    """One round's model: weights moving a little, an int tensor, a tensor that never changes, maybe a new one."""
    model = {
        "a.weight": rng.normal(0, 0.05, (40, 700)).astype(np.float32),  # (100 KiB: spilled)
        "a.bias": rng.normal(0, 0.05, 40).astype(np.float32),
        "c.weight": rng.normal(0, 0.05, (6, 3, 3, 3) if not reshape else (6, 27)).astype(np.float32),
        "steps": np.array([i, 7 * i], np.int64),
        "frozen.weight": np.ones((30, 20), np.float32),
    }
    for name in absent:
        model.pop(name, None)
    if i == 1:
        model["new.weight"] = rng.normal(0, 1, (9, 9)).astype(np.float32)
    return model


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None,
          max_examples=20)
@given(seed=st.integers(0, 2**16), differences=st.booleans(), tca=st.booleans(), hdsp=st.booleans(),
       parent_id=st.sampled_from(["sha256", "ids"]), skip_zero=st.sampled_from([None, True, False]),
       blocks=st.sampled_from(["auto", True]), dq=st.booleans(),
       absent=st.sets(st.sampled_from(NAMES), max_size=2), reshape=st.booleans(), threads=st.sampled_from([1, 2]))
def test_updates_encoded_to_a_file_are_the_in_memory_streams(tmp_path_factory, seed, differences, tca, hdsp,
                                                             parent_id, skip_zero, blocks, dq, absent, reshape,
                                                             threads):
    """Encoder.encode_to with a state writes, round after round, the stream Encoder.encode returns and leaves the
    same state, with the streaming path's state spilled to disk and saved and loaded between rounds."""
    folder = tmp_path_factory.mktemp("rounds")
    in_memory, streamed = EncoderState(), EncoderState()
    streamed.spill_to(folder)
    options = dict(qp=-30, differences=differences, tca=tca, hdsp=hdsp, parent_id=parent_id, skip_zero=skip_zero,
                   blocks=blocks, dq=dq, threads=threads)
    rng = np.random.default_rng(seed)
    for i in range(3):
        model = _round(rng, i, absent if i == 2 else (), reshape and i == 2)
        want = Encoder(state=in_memory, **options).encode(model).stream
        path = folder / f"s{i}.nnr"
        other = streamed._staged_copy()  # (the same state)
        Encoder(state=streamed, **options).encode_to(model, path, budget=1)  # (one tensor in flight at a time...)
        Encoder(state=other, **options).encode_to(model, folder / "t.nnr")  # (...or several)
        assert (folder / "t.nnr").read_bytes() == want
        assert path.read_bytes() == want, f"round {i}"
        assert streamed._to_bytes() == in_memory._to_bytes(), f"round {i}: the states differ"
        streamed.save(folder / "sender.state")
        streamed = EncoderState.load(folder / "sender.state")
        streamed.spill_to(folder)


def test_updates_are_encoded_tensor_by_tensor(tmp_path, monkeypatch):
    """The in-memory fallback is only for codebooks and DC-v1 sigmas (their qps depend on the values)."""
    state = EncoderState()
    rng = np.random.default_rng(1)
    monkeypatch.setattr(stream_module, "_encode_update_in_memory", None)  # (called: TypeError)
    for i in range(2):
        Encoder(state=state, qp=-28, differences=True).encode_to(_round(rng, i, (), False), tmp_path / "s.nnr")


def test_a_failed_streamed_update_leaves_the_state_and_writes_nothing(tmp_path):
    state = EncoderState()
    state.spill_to(tmp_path)
    rng = np.random.default_rng(2)
    Encoder(state=state, qp=-28, differences=True).encode_to(_round(rng, 0, (), False), tmp_path / "s0.nnr")
    before = state._to_bytes()
    source = nnc.readers.source_from_mapping(_round(rng, 1, (), False))

    def fail():
        raise formats.FormatError("m.safetensors: damaged")

    source["c.weight"].loader = fail  # (read after a.weight and a.bias were coded)
    with pytest.raises(formats.FormatError, match="damaged"):
        Encoder(state=state, qp=-28, differences=True).encode_to(source, tmp_path / "s1.nnr")
    assert not (tmp_path / "s1.nnr").exists() and sorted(os.listdir(tmp_path)) == ["s0.nnr"]
    assert state._to_bytes() == before


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None,
          max_examples=15)
@given(seed=st.integers(0, 2**16), tca=st.booleans(), hdsp=st.booleans())
def test_a_receiver_state_kept_on_disk_decodes_as_one_in_memory(tmp_path_factory, seed, tca, hdsp):
    folder = tmp_path_factory.mktemp("receiver")
    sender, held, on_disk = EncoderState(), DecoderState(), DecoderState()
    on_disk.spill_to(folder)
    rng = np.random.default_rng(seed)
    for i in range(3):
        data = nnc.encode(_round(rng, i, (), False), qp=-30, state=sender, differences=True, tca=tca, hdsp=hdsp)
        want = nnc.decode(data, state=held)
        got = nnc.decode(data, state=on_disk)
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        assert on_disk._to_bytes() == held._to_bytes()
        on_disk.save(folder / "receiver.state")
        on_disk = DecoderState.load(folder / "receiver.state")
        assert all(isinstance(on_disk.levels.entry(n), StoredArray) for n in on_disk.levels)  # (not read yet)
        on_disk.spill_to(folder)


@given(values=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50), dtype=st.sampled_from(["int16", "int32",
                                                                                                "int64"]))
def test_integers_are_kept_in_the_narrowest_dtype_that_holds_them(values, dtype):
    info = np.iinfo(dtype)
    array = np.clip(np.array(values, np.int64), info.min, info.max).astype(dtype)
    narrow = narrowest_integers(array)
    assert narrow.itemsize <= array.itemsize and np.array_equal(narrow.astype(dtype), array)
    if array.size and narrow.itemsize > 1:
        smaller = np.iinfo(f"int{8 * narrow.itemsize // 2}")
        assert array.min() < smaller.min or array.max() > smaller.max


def test_a_spilled_store_reads_back_what_was_entered(tmp_path):
    from nnc.array_store import SpillFile

    store = ArrayStore(spill=SpillFile(tmp_path))
    big = np.arange(40_000, dtype=np.int32).reshape(200, 200)
    store["big"], store["small"] = big, np.ones(3, np.float32)
    assert isinstance(store.entry("big"), StoredArray) and isinstance(store.entry("small"), np.ndarray)
    assert store["big"].dtype == np.int32 and np.array_equal(store["big"], big)
    store["big"][0, 0] = 5  # (each read is a fresh array)
    assert store["big"][0, 0] == 0 and store.size("big") == 40_000 and os.listdir(tmp_path) == []  # (unnamed)
    copy = store.copy()
    del copy["big"]
    assert "big" in store and list(copy) == ["small"]


def test_a_state_kept_on_disk_pickles_with_its_arrays(tmp_path):
    import pickle

    state = EncoderState()
    nnc.encode(_round(np.random.default_rng(3), 0, (), False), qp=-30, state=state, differences=True)
    state.save(tmp_path / "tx.state")
    loaded = EncoderState.load(tmp_path / "tx.state")
    loaded.spill_to(tmp_path)
    loaded.update("more", np.arange(50_000, dtype=np.int32))
    state.update("more", np.arange(50_000, dtype=np.int32))
    assert pickle.loads(pickle.dumps(loaded))._to_bytes() == state._to_bytes()


def test_a_damaged_state_file_is_named_when_its_array_is_read(tmp_path, capsys):
    """A state file is read lazily: an array whose bytes were damaged is found when the command needs it (the zip
    checksum), and the command fails naming the state file, with nothing written."""
    model = tmp_path / "m.safetensors"
    formats.write_model(str(model), {"w": np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)})
    state = tmp_path / "tx.state"
    assert main(["encode", str(model), "-o", str(tmp_path / "s0.nnr"), "--state", str(state), "-q"]) == 0
    data = bytearray(state.read_bytes())
    at = data.index(b"levels0.npy")
    data[at + 400] ^= 0xFF  # (inside the levels' bytes, after their header)
    state.write_bytes(bytes(data))
    code = main(["encode", str(model), "-o", str(tmp_path / "s1.nnr"), "--state", str(state), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and str(state) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s1.nnr").exists() and state.read_bytes() == bytes(data)


def test_add_to_streams_into_the_models_layout_and_dtypes(tmp_path):
    """decode --add-to writes the model with the update added, tensor by tensor: the same values as the in-memory
    apply_update, the model's dtypes (bfloat16 kept), its tensors the update skips or no longer names, and the
    tensors new in the update last."""
    pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(5)
    base = {"w": rng.normal(0, 0.1, (50, 60)).astype(np.float32), "b": rng.normal(0, 0.1, 50).astype(np.float32),
            "still": np.ones((4, 4), np.float32), "gone": np.arange(6, dtype=np.int16)}
    dtypes = {"b": "bfloat16"}
    formats.write_model(str(tmp_path / "m0.safetensors"), base, dtypes)
    updated = {"w": base["w"] + 0.01, "b": base["b"] - 0.02, "still": base["still"], "new": np.full((3,), 2.5,
                                                                                                  np.float32)}
    formats.write_model(str(tmp_path / "m1.safetensors"), updated, dtypes)
    tx, rx = tmp_path / "tx.state", tmp_path / "rx.state"
    for i in range(2):
        assert main(["encode", str(tmp_path / f"m{i}.safetensors"), "-o", str(tmp_path / f"s{i}.nnr"), "--state",
                     str(tx), "--differences", "--qp", "-34", "-q"]) == 0
    assert main(["decode", str(tmp_path / "s0.nnr"), "-o", str(tmp_path / "r0.safetensors"), "--state", str(rx),
                 "-q"]) == 0
    assert main(["decode", str(tmp_path / "s1.nnr"), "-o", str(tmp_path / "r1.safetensors"), "--state", str(rx),
                 "--add-to", str(tmp_path / "r0.safetensors"), "-q"]) == 0
    held, _ = formats.read_model(str(tmp_path / "r0.safetensors"))
    receiver = DecoderState()
    nnc.decode((tmp_path / "s0.nnr").read_bytes(), state=receiver)
    want = apply_update(held, nnc.decode((tmp_path / "s1.nnr").read_bytes(), state=receiver))
    got, got_dtypes = formats.read_model(str(tmp_path / "r1.safetensors"))
    assert list(got) == ["w", "b", "still", "gone", "new"] == list(want)
    assert got_dtypes == {"w": "float32", "b": "bfloat16", "still": "float32", "gone": "int16", "new": "float32"}
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert np.abs(got["w"] - updated["w"]).max() < 0.01


CHILD = textwrap.dedent(
    """
    import sys
    import nnc.cli
    def hwm():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    before = hwm()
    code = nnc.cli.main(sys.argv[1:] + ["-q"])
    print(before, hwm(), code)
    """
)
TENSORS, ROWS, COLS = 64, 512, 1024  # 64 float32 tensors of 2 MiB: a 128 MiB model
BOUND_MB = 72  # growth of each step's peak (20-52 MB measured, with the quantiser in a thread; before: 2.6-9.9 times
#                the model, 330-1270 MB)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc (Linux only)")
def test_incremental_coding_holds_the_tensors_in_flight_not_the_model(tmp_path):
    """The sender's and the receiver's state files, the update coded and the update added to the model are read and
    written tensor by tensor (benchmarks/results/incremental_memory.md); the result is the in-memory API's."""
    rng = np.random.default_rng(0)
    base = {f"l{i}.weight": rng.normal(0, 0.02, (ROWS, COLS)).astype(np.float32) for i in range(TENSORS)}
    updated = {k: v + rng.normal(0, 0.002, v.shape).astype(np.float32) for k, v in base.items()}
    formats.write_model(str(tmp_path / "m0.safetensors"), base)
    formats.write_model(str(tmp_path / "m1.safetensors"), updated)
    q = ["--qp", "-30", "--no-dq", "--differences"]
    steps = [
        ["encode", tmp_path / "m0.safetensors", "-o", tmp_path / "s0.nnr", "--state", tmp_path / "tx.state", *q],
        ["decode", tmp_path / "s0.nnr", "-o", tmp_path / "r0.safetensors", "--state", tmp_path / "rx.state"],
        ["encode", tmp_path / "m1.safetensors", "-o", tmp_path / "s1.nnr", "--state", tmp_path / "tx.state", *q],
        ["decode", tmp_path / "s1.nnr", "-o", tmp_path / "r1.safetensors", "--state", tmp_path / "rx.state",
         "--add-to", tmp_path / "r0.safetensors"],
    ]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    for argv in steps:
        r = subprocess.run([sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True, text=True, env=env,
                           timeout=600)
        assert r.returncode == 0 and r.stdout.split()[-1] == "0", r.stderr[-2000:]
        before, peak = map(float, r.stdout.split()[:2])
        assert peak - before < BOUND_MB, f"{argv[0]} {argv[1].name}: the peak grew by {peak - before:.0f} MB"
    sender, receiver = EncoderState(), DecoderState()
    held = nnc.decode(nnc.encode(base, qp=-30, dq=False, differences=True, state=sender), state=receiver)
    update = nnc.decode(nnc.encode(updated, qp=-30, dq=False, differences=True, state=sender), state=receiver)
    want = apply_update(held, update)
    got, _ = formats.read_model(str(tmp_path / "r1.safetensors"))
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert DecoderState.load(tmp_path / "rx.state")._to_bytes() == receiver._to_bytes()


def test_an_update_holds_one_tensor_at_a_time_on_the_heap(tmp_path):
    """With one thread, coding the streams of a sequence keeps the Python heap's peak to one tensor's arrays (its
    values, the receiver's, the difference, the levels, the reconstruction and the state's copy of the levels:
    about 5 times its float32 size; 7 before), not also the unit before it (a loop variable held the previous
    tensor's levels and reconstruction) or float64 temporaries of the whole difference."""
    import tracemalloc

    rng = np.random.default_rng(3)
    model = {f"l{i}.weight": rng.normal(0, 0.02, (1024, 2048)).astype(np.float32) for i in range(3)}
    formats.write_model(str(tmp_path / "m0.safetensors"), model)
    formats.write_model(str(tmp_path / "m1.safetensors"), {k: v + np.float32(0.001) for k, v in model.items()})
    tensor = 4 * 1024 * 2048
    state = EncoderState()
    state.spill_to(tmp_path)
    for i in range(2):
        tracemalloc.start()
        try:
            Encoder(state=state, qp=-30, dq=False, differences=True, threads=1).encode_to(
                nnc.readers.open_model(tmp_path / f"m{i}.safetensors"), tmp_path / f"s{i}.nnr")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 5.5 * tensor, f"stream {i}: peak {peak / tensor:.2f} x one tensor's float32 size"


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a write past the limit fails with EFBIG, as on a full disk)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    if sys.argv[2] == "save":
        import numpy as np
        from nnc.decoder import DecoderState
        state = DecoderState()
        for i in range(8):
            state.update(f"w{i}", np.random.default_rng(i).integers(-100, 100, 1_000_000).astype(np.int32))
        try:
            state.save(sys.argv[3])
        except OSError as exc:
            print(exc.filename, exc.strerror)
    else:
        import nnc.cli
        sys.exit(nnc.cli.main(sys.argv[2:]))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a file size limit stands in for a full disk")
def test_a_state_file_that_cannot_be_written_is_named_and_leaves_nothing(tmp_path):
    """The state is written through zipfile: the bytes left in its buffer failed again when the temporary file was
    closed, before it was removed, and that error (naming no file) replaced the first."""
    r = subprocess.run([sys.executable, "-c", FULL_DISK, "3000000", "save", str(tmp_path / "x.state")],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.split()[0] == str(tmp_path / "x.state"), r.stdout + r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a file size limit stands in for a full disk")
def test_a_full_disk_under_the_states_arrays_names_the_state_not_the_output(tmp_path):
    rng = np.random.default_rng(0)
    base = {f"l{i}.weight": rng.normal(0, 0.05, (256, 1024)).astype(np.float32) for i in range(8)}
    formats.write_model(str(tmp_path / "m0.safetensors"), base)
    formats.write_model(str(tmp_path / "m1.safetensors"), {k: v + np.float32(0.003) for k, v in base.items()})
    states = tmp_path / "states"
    states.mkdir()
    tx, out = states / "tx.state", tmp_path / "s1.nnr"
    assert main(["encode", str(tmp_path / "m0.safetensors"), "-o", str(tmp_path / "s0.nnr"), "--state", str(tx),
                 "--differences", "-q"]) == 0
    before = tx.read_bytes()
    r = subprocess.run([sys.executable, "-c", FULL_DISK, "8000000", "encode", str(tmp_path / "m1.safetensors"), "-o",
                        str(out), "--state", str(tx), "--differences", "-q"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"nnc: error: {states}: ") and "state's arrays" in r.stderr, r.stderr
    assert not out.exists() and tx.read_bytes() == before and os.listdir(states) == ["tx.state"]


def test_a_damaged_receiver_state_is_not_given_an_offset_in_the_stream(tmp_path, capsys):
    model = {"w": np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)}
    formats.write_model(str(tmp_path / "m.safetensors"), model)
    rx = tmp_path / "rx.state"
    for i in range(2):
        assert main(["encode", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / f"s{i}.nnr"), "--state",
                     str(tmp_path / "tx.state"), "-q"]) == 0
    assert main(["decode", str(tmp_path / "s0.nnr"), "-o", str(tmp_path / "r0.safetensors"), "--state", str(rx),
                 "-q"]) == 0
    data = bytearray(rx.read_bytes())
    data[data.index(b"levels0.npy") + 400] ^= 0xFF
    rx.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "s1.nnr"), "-o", str(tmp_path / "r1.safetensors"), "--state", str(rx),
                 "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nnc: error: {rx}: levels0.npy") and "byte offset" not in err, err
    assert not (tmp_path / "r1.safetensors").exists() and rx.read_bytes() == bytes(data)


def test_an_update_decoded_by_nnc_decode_applies_to_a_model_with_0d_tensors():
    """nnc.decode gives a 0-d tensor as (1,) (NNC has no 0-d tensors; restore_model_view restores the shape):
    apply_update refused it against the user's own model ("has shape (1,), the model's is ()")."""
    sender, receiver = EncoderState(), DecoderState()
    model = {"w": np.ones((3, 3), np.float32), "scale": np.float32(2.5)}
    nnc.decode(nnc.encode(model, state=sender, differences=True, qp=-20), state=receiver)
    new = {"w": model["w"] + 1, "scale": np.float32(3.0)}
    update = nnc.decode(nnc.encode(new, state=sender, differences=True, qp=-20), state=receiver)
    held = apply_update(model, update, check_parent=False)
    assert held["scale"].shape == () and abs(float(held["scale"]) - 3.0) < 0.01
    with pytest.raises(nnc.errors.UpdateError, match="has shape"):
        apply_update({"w": np.ones(2, np.float32)}, {"w": np.ones((1, 2), np.float32)})


@pytest.mark.parametrize("streaming", [False, True])
def test_a_float16_difference_that_would_round_the_sum_to_inf_is_sent_whole(tmp_path, streaming):
    """Before: a float16 tensor rising from about 10000 to 65504 (its largest value) went as a difference whose
    coding error rounded the receiver's sum to inf, in the receiver's model and the sender's own; decoding exited 0.
    Now the encoder checks the receiver's sum of each difference it codes, and sends such a tensor whole."""
    from nnc.decoder import DecoderState, apply_update
    from nnc.encoder import Encoder, EncoderState

    rng = np.random.default_rng(0)
    base = {"h": (rng.standard_normal((16, 16)) * 100 + 10000).astype(np.float16),
            "w": rng.standard_normal((16, 16)).astype(np.float32)}
    step = {"h": np.full((16, 16), 65504, np.float16), "w": base["w"] + np.float32(0.01)}
    sender, receiver = EncoderState(), DecoderState()
    model = {}
    for i, tensors in enumerate((base, step)):
        encoder = Encoder(qp=-24, state=sender, differences=True)
        if streaming:
            encoder.encode_to(tensors, tmp_path / f"u{i}.nnr")
            stream = (tmp_path / f"u{i}.nnr").read_bytes()
        else:
            stream = encoder.encode(tensors).stream
        decoded = nnc.decode(stream, state=receiver)
        model = decoded if i == 0 else apply_update(model, decoded)
    assert decoded.replaced == ("h",)
    assert np.array_equal(model["h"], step["h"]) and np.isfinite(np.asarray(sender.model["h"])).all()
    assert np.abs(model["w"] - step["w"]).max() < 2**-5  # (still a difference: within two steps of qp -24)
