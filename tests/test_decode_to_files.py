"""Streaming decode to model files: checkpoint layouts restored, single files, atomicity, bounded memory."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnc
from nnc import container as C
from nnc import formats
from nnc.decoder import restore_model_view
from nnc.errors import DecodeError
from nnc.writers import decode_to_path

RNG = np.random.default_rng(11)


def with_metadata(stream: bytes, **entries) -> bytes:
    """The stream with ``entries`` added to nnc's JSON in its topology unit (as the encoder writes it)."""
    for unit in C.iter_units(stream):
        if unit.type == C.NNR_TPL:
            data = unit.header.get("data", "") or ""
            meta = json.loads(data) if data.startswith("{") else {"nnc": {"version": 1}}
            meta["nnc"].update(entries)
            tpl = C.build_tpl(data=json.dumps(meta, separators=(",", ":")))
            return stream[:unit.offset] + tpl + stream[unit.offset + unit.size:]
    raise AssertionError("no topology unit")


def st_header(path):
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def sharded_checkpoint():
    """Two safetensors shards (bf16, fp16, int64, a 0-d tensor) and the stream that records their layout."""
    shards = [
        ("model-00001-of-00002.safetensors", {"format": "pt", "note": "first"}, {
            "embed.weight": (RNG.normal(size=(32, 16)).astype(np.float32), "bfloat16"),
            "layer.0.weight": (RNG.normal(size=(16, 16)).astype(np.float32), "bfloat16"),
            "layer.0.norm": (RNG.normal(size=16).astype(np.float16), "float16"),
        }),
        ("model-00002-of-00002.safetensors", {"format": "pt"}, {
            "layer.1.weight": (RNG.normal(size=(16, 16)).astype(np.float16), "float16"),
            "position_ids": (np.arange(40, dtype=np.int64).reshape(1, 40), "int64"),
            "steps": (np.int64(123456), "int64"),
        }),
    ]
    tensors, dtypes, file_of = {}, {}, {}
    for i, (_name, _meta, members) in enumerate(shards):
        for k, (arr, dtype) in members.items():
            tensors[k], dtypes[k], file_of[k] = arr, dtype, i
    stream = nnc.encode(tensors, qp=-32, dtypes={k: v for k, v in dtypes.items() if v == "bfloat16"})
    checkpoint = {
        "format": "safetensors",
        "index": {"name": "model.safetensors.index.json", "metadata": {"total_size": 1, "source": "test"}},
        "files": [{"name": n, "metadata": m} for n, m, _ in shards],
        "file_of": file_of,
    }
    return with_metadata(stream, checkpoint=checkpoint), shards, tensors, dtypes


def test_sharded_checkpoint_layout_is_restored(tmp_path):
    stream, shards, tensors, dtypes = sharded_checkpoint()
    out = tmp_path / "restored"
    summary = decode_to_path(stream, str(out) + os.sep)
    names = sorted(os.listdir(out))
    assert names == sorted([s[0] for s in shards] + ["model.safetensors.index.json"])
    assert summary["tensors"] == len(tensors)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    expected_map = {k: shards[i][0] for i, (_n, _m, members) in enumerate(shards) for k in members}
    assert index["weight_map"] == expected_map
    sizes = {"bfloat16": 2, "float16": 2, "int64": 8}
    total = sum(np.asarray(tensors[k]).size * sizes[dtypes[k]] for k in tensors)
    assert index["metadata"]["total_size"] == total == summary["bytes"]
    assert index["metadata"]["source"] == "test"
    decoded = nnc.decode_model(stream)
    for shard_name, meta, members in shards:
        header = st_header(out / shard_name)
        assert header.pop("__metadata__") == meta
        assert list(header) == list(members)            # the shard's own tensors, in order
        read, read_dtypes = formats.read_model(out / shard_name)
        for k, (arr, dtype) in members.items():
            assert read_dtypes[k] == dtype
            assert read[k].shape == np.asarray(arr).shape
            if dtype == "int64":
                np.testing.assert_array_equal(read[k], arr)
            else:
                ref = decoded[k].astype(np.float32)
                if dtype == "bfloat16":
                    ref = formats.bfloat16_to_float32(formats.float32_to_bfloat16(ref))
                np.testing.assert_array_equal(read[k].astype(np.float32), ref)
                step = 2 ** (-32 / 4)
                assert np.abs(read[k].astype(np.float32) - np.asarray(arr, np.float32)).max() <= \
                    step + 0.01 * np.abs(arr).max()


def test_cli_decode_to_a_folder(tmp_path):
    stream, shards, tensors, _ = sharded_checkpoint()
    src = tmp_path / "m.nnr"
    src.write_bytes(stream)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "nnc", "decode", str(src), "-o", str(out) + "/", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert sorted(os.listdir(out)) == sorted([s[0] for s in shards] + ["model.safetensors.index.json"])


def test_folder_without_checkpoint_metadata_gets_model_safetensors(tmp_path):
    model = {"w": RNG.normal(size=(8, 8)).astype(np.float32), "n": np.int64(5)}
    stream = nnc.encode(model, qp=-30)
    out = tmp_path / "plain"
    out.mkdir()
    decode_to_path(stream, out)          # an existing folder, no trailing separator
    assert os.listdir(out) == ["model.safetensors"]
    read, dtypes = formats.read_model(out / "model.safetensors")
    assert dtypes == {"w": "float32", "n": "int64"} and read["n"].shape == ()


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_single_files_stream_the_same_tensors_as_decode_model(tmp_path, ext):
    stream, _shards, tensors, dtypes = sharded_checkpoint()
    path = tmp_path / f"model.{ext}"
    decode_to_path(stream, path)
    read, read_dtypes = formats.read_model(path)
    expected = nnc.decode_model(stream)
    assert list(read) == list(expected)
    for k in expected:
        want = expected[k]
        if ext == "safetensors" and dtypes[k] == "bfloat16":
            want = formats.bfloat16_to_float32(formats.float32_to_bfloat16(want))
        assert read[k].shape == want.shape
        np.testing.assert_array_equal(read[k], want)
    assert read_dtypes["steps"] == "int64" and read_dtypes["layer.0.norm"] == "float16"
    assert os.listdir(tmp_path) == [path.name]
    if ext == "npz":
        with zipfile.ZipFile(path) as zf:
            assert [i.compress_type for i in zf.infolist()] == [zipfile.ZIP_STORED] * len(expected)


def test_a_shard_that_does_not_fit_is_named(tmp_path, monkeypatch):
    """Before: a full disk while reserving a shard said "restored: cannot reserve the file's ... bytes", naming the
    folder."""
    import errno

    import nnc.writers

    stream, shards, _, _ = sharded_checkpoint()
    second = shards[1][0]

    def full_at_the_second(fd, size):
        if os.readlink(f"/proc/self/fd/{fd}").split(os.sep)[-1].startswith("." + second):
            raise OSError(errno.ENOSPC, f"cannot reserve the file's {size:,} bytes (No space left on device)")

    monkeypatch.setattr(nnc.writers, "reserve_space", full_at_the_second)
    out = tmp_path / "restored"
    with pytest.raises(OSError) as caught:
        decode_to_path(stream, str(out) + os.sep)
    assert caught.value.filename == str(out / second) and caught.value.errno == errno.ENOSPC
    assert not out.exists()


def test_pt_shards_are_restored(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed")
    import torch

    stream, _shards, tensors, dtypes = sharded_checkpoint()
    meta = nnc.Decoder(stream).metadata["checkpoint"]
    meta = dict(meta, format="pt", index={"name": "pytorch_model.bin.index.json", "metadata": {}},
                files=[{"name": "pytorch_model-00001-of-00002.bin", "metadata": {}},
                       {"name": "pytorch_model-00002-of-00002.bin", "metadata": {}}])
    stream = with_metadata(stream, checkpoint=meta)
    decode_to_path(stream, str(tmp_path / "pt") + "/")
    sd = torch.load(tmp_path / "pt" / "pytorch_model-00001-of-00002.bin", weights_only=True)
    assert list(sd) == ["embed.weight", "layer.0.weight", "layer.0.norm"]
    assert sd["embed.weight"].dtype == torch.bfloat16 and sd["layer.0.norm"].dtype == torch.float16
    sd2 = torch.load(tmp_path / "pt" / "pytorch_model-00002-of-00002.bin", weights_only=True)
    assert sd2["steps"].dtype == torch.int64 and sd2["steps"].shape == () and int(sd2["steps"]) == 123456


def test_a_corrupt_stream_leaves_nothing_behind(tmp_path):
    stream, *_ = sharded_checkpoint()
    units = list(C.iter_units(stream))
    last = units[-1]
    bad = bytearray(stream)
    for i in range(last.payload_offset, last.offset + last.size):
        bad[i] = 0xFF                                  # the last NDU's payload: found only when decoding it
    bad = bytes(bad)
    with pytest.raises(DecodeError):
        nnc.decode(bad)
    target = tmp_path / "new"
    with pytest.raises(DecodeError):
        decode_to_path(bad, str(target) + "/")
    assert not target.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(DecodeError):
        decode_to_path(bad, existing)
    assert os.listdir(existing) == ["keep.txt"]
    single = tmp_path / "one.safetensors"
    with pytest.raises(DecodeError):
        decode_to_path(bad, single)
    assert sorted(os.listdir(tmp_path)) == ["existing"]


@pytest.mark.parametrize("evil", ["../escape.safetensors", "/etc/x.safetensors", "a/b.safetensors", "..", ""])
def test_hostile_file_names_in_the_metadata_are_refused(tmp_path, evil):
    stream, *_ = sharded_checkpoint()
    meta = nnc.Decoder(stream).metadata["checkpoint"]
    meta = dict(meta, files=[{"name": evil, "metadata": {}}, meta["files"][1]])
    with pytest.raises(DecodeError, match="unsafe file"):
        decode_to_path(with_metadata(stream, checkpoint=meta), str(tmp_path / "o") + "/")
    assert os.listdir(tmp_path) == []


def test_malformed_checkpoint_metadata_is_a_decode_error(tmp_path):
    stream, *_ = sharded_checkpoint()
    meta = nnc.Decoder(stream).metadata["checkpoint"]
    for broken in (dict(meta, file_of={}), dict(meta, files="x"), dict(meta, format="h5"),
                   dict(meta, file_of=dict(meta["file_of"], steps=7))):
        with pytest.raises(DecodeError, match="checkpoint metadata"):
            decode_to_path(with_metadata(stream, checkpoint=broken), str(tmp_path / "o") + "/")
    assert os.listdir(tmp_path) == []


def test_progress_reports_bytes_and_tensors(tmp_path):
    stream, _s, tensors, _d = sharded_checkpoint()
    events = []
    decode_to_path(stream, tmp_path / "m.safetensors", progress=events.append)
    assert events[0].name is None and events[0].bytes_done == 0
    assert [e.tensors_done for e in events] == list(range(len(tensors) + 1))
    assert events[-1].bytes_done == events[-1].bytes_total > 0
    assert all(a.bytes_done <= b.bytes_done for a, b in zip(events, events[1:]))


def _renamed_copies(unit_bytes: bytes, old: str, new_names):
    """The NDU with its topology_elem_id replaced by names of the same length (test-only splice)."""
    head = unit_bytes.index(old.encode())
    return [unit_bytes[:head] + n.encode() + unit_bytes[head + len(old):] for n in new_names]


def test_decoding_a_model_larger_than_the_address_space_limit(tmp_path):
    """24 tensors of 16 MiB (384 MiB) decoded to a folder with 96 MiB of address space to spare."""
    pytest.importorskip("resource", reason="resource.RLIMIT_AS needs a POSIX system")
    n, shape = 24, (2048, 2048)
    base = np.zeros(shape, np.float32)
    base[::64] = RNG.normal(size=(shape[0] // 64, shape[1])).astype(np.float32)
    one = nnc.encode({"tensor_000": base}, qp=-16, dq=False)
    units = list(C.iter_units(one))
    head = b"".join(one[u.offset:u.offset + u.size] for u in units[:-1])
    ndu = one[units[-1].offset:units[-1].offset + units[-1].size]
    names = [f"tensor_{i:03d}" for i in range(n)]
    stream = with_metadata(head, tensors=names) + b"".join(_renamed_copies(ndu, "tensor_000", names))
    src = tmp_path / "big.nnr"
    src.write_bytes(stream)
    out = tmp_path / "out"
    headroom = 96 << 20
    code = textwrap.dedent(f"""
        import resource, sys
        import nnc
        from nnc.writers import decode_to_path
        dec = nnc.Decoder({str(src)!r})
        vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom}, vm + {headroom}))
        try:
            bytearray({n} * 4 * {shape[0] * shape[1]})
        except MemoryError:
            print("limit holds")
        summary = decode_to_path(dec, {str(out) + "/"!r})
        print(summary["bytes"])
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["limit", "holds", str(n * 4 * shape[0] * shape[1])]
    assert n * 4 * shape[0] * shape[1] > 3 * headroom
    path = out / "model.safetensors"
    header = st_header(path)
    assert list(header) == names
    expected = nnc.decode(one)["tensor_000"]
    with open(path, "rb") as fh:
        (hlen,) = struct.unpack("<Q", fh.read(8))
    data = np.memmap(path, dtype="<f4", mode="r", offset=8 + hlen, shape=(n,) + shape)
    for i in (0, n // 2, n - 1):
        np.testing.assert_array_equal(data[i], expected)
    del data


DTYPES = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8"]


@st.composite
def models(draw):
    n = draw(st.integers(1, 5))
    tensors, dtypes = {}, {}
    for i in range(n):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
        size = int(np.prod(shape))
        if dtype in ("int64", "int32", "int8", "uint8"):
            lo, hi = (0, 255) if dtype == "uint8" else (-100, 100)
            arr = np.array(draw(st.lists(st.integers(lo, hi), min_size=size, max_size=size)), dtype).reshape(shape)
        else:
            vals = draw(st.lists(st.floats(-8, 8, width=16), min_size=size, max_size=size))
            arr = np.array(vals, np.float32 if dtype == "bfloat16" else dtype).reshape(shape)
        tensors[f"t{i}.{dtype}"] = arr
        if dtype == "bfloat16":
            dtypes[f"t{i}.{dtype}"] = "bfloat16"
    return tensors, dtypes


@settings(max_examples=25, deadline=None)
@given(models())
def test_streamed_files_equal_the_in_memory_writers(tmp_path_factory, model):
    tensors, dtypes = model
    stream = nnc.encode(tensors, qp=-20, dtypes=dtypes)
    d = tmp_path_factory.mktemp("p")
    expected = nnc.decode_model(stream)
    _, expected_dtypes = restore_model_view(nnc.decode(stream), nnc.Decoder(stream).metadata)
    decode_to_path(stream, d / "m.safetensors")
    assert (d / "m.safetensors").read_bytes() == formats.safetensors_bytes(expected, expected_dtypes)
    decode_to_path(stream, d / "m.npz")
    read, _ = formats.read_npz(d / "m.npz")
    assert list(read) == list(expected)
    for k, v in expected.items():
        assert read[k].dtype == v.dtype and read[k].shape == v.shape
        np.testing.assert_array_equal(read[k], v)
    for k, v in tensors.items():     # integers exact
        if v.dtype.kind in "iu":
            np.testing.assert_array_equal(expected[k], v)


def test_cli_progress_on_a_terminal_in_bytes_and_tensors(tmp_path):
    pty = pytest.importorskip("pty", reason="needs a pseudo-terminal")
    import fcntl
    import termios

    stream, _s, tensors, dtypes = sharded_checkpoint()
    src = tmp_path / "m.nnr"
    src.write_bytes(stream)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 200, 0, 0))
    outputs = []
    for quiet in ([], ["-q"]):
        out = tmp_path / f"o{len(quiet)}.safetensors"
        r = subprocess.run([sys.executable, "-m", "nnc", "decode", str(src), "-o", str(out), "--threads", "1"] + quiet,
                           stderr=slave, stdout=subprocess.PIPE, timeout=120)
        assert r.returncode == 0
        os.set_blocking(master, False)
        data = b""
        try:
            while chunk := os.read(master, 65536):
                data += chunk
        except (BlockingIOError, OSError):
            pass
        outputs.append(data.decode(errors="replace"))
    os.close(master)
    os.close(slave)
    assert f"/{len(tensors)} tensors" in outputs[0] and "decoding:" in outputs[0]
    total = sum(np.asarray(t).size * (8 if dtypes[k] == "int64" else 2) for k, t in tensors.items())
    assert f"/{total / 1024:.2f}k" in outputs[0]       # bytes, in KiB
    assert outputs[1] == ""


def test_decoding_to_files_scales_the_output_limit_with_the_stream(tmp_path, monkeypatch):
    """The in-memory default (8 GiB of decoded tensors) refused the stream of any model over 8 GiB in float32
    (2 billion weights) in `nnc decode`; written one unit at a time, the output may be 256 times the stream."""
    from nnc import writers
    from nnc.decoder import Limits

    assert Limits.for_files(10).max_total_bytes == Limits().max_total_bytes  # a small stream: the default
    assert Limits.for_files(3 * 2**30).max_total_bytes == 256 * 3 * 2**30   # a 3 GiB stream: 768 GiB
    assert Limits.for_files(10, max_tensor_elements=5).max_tensor_elements == 5
    seen = []
    monkeypatch.setattr(writers.Limits, "for_files", classmethod(lambda cls, n, **kw: seen.append(n) or cls()))
    stream = nnc.encode({"w": np.ones((8, 8), np.float32)}, qp=-20)
    path = tmp_path / "m.nnr"
    path.write_bytes(stream)
    writers.decode_to_path(path, tmp_path / "out.safetensors")
    assert seen == [len(stream)]
