"""A full disk, and files that change under a command: one line naming the user's path, exit 1, nothing written,
no temporary file left, an earlier output and the --state file as they were (never a SIGBUS or a half output)."""

from __future__ import annotations

import errno
import json
import gc
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import nnc
from nnc import formats, readers
from nnc.cli import main
from nnc.formats import FormatError


def _model(tmp_path, n=300):
    model = {"a.weight": np.linspace(-1, 1, n * n, dtype=np.float32).reshape(n, n), "a.bias": np.ones(n, np.float32)}
    stream = tmp_path / "m.nnr"
    stream.write_bytes(nnc.encode(model, qp=-30))
    return stream


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", "/"])
def test_a_full_disk_while_decoding_is_one_line_and_leaves_the_old_output(tmp_path, monkeypatch, capfd, suffix):
    stream = _model(tmp_path)
    out = tmp_path / "out" if suffix == "/" else tmp_path / f"out{suffix}"
    if suffix != "/":
        out.write_bytes(b"OLD")
    if suffix == ".npz":
        monkeypatch.setattr(np.lib.format, "write_array", _no_space)
    else:  # the space a memory-mapped safetensors file needs is reserved first: a full disk fails there
        monkeypatch.setattr(os, "posix_fallocate", _no_space, raising=False)
    assert main(["decode", str(stream), "-o", str(out) + ("/" if suffix == "/" else ""), "-q", "--overwrite"]) == 1
    gc.collect()  # (an unfinished zip archive must not try again at collection: "Exception ignored")
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(out) in err, err
    assert ".tmp" not in err and "Exception ignored" not in err
    assert _leftovers(tmp_path) == []
    if suffix == "/":
        assert not out.exists()
    else:
        assert out.read_bytes() == b"OLD"


def test_a_state_that_cannot_be_written_leaves_the_output_as_it_was(tmp_path, monkeypatch, capfd):
    """The state's bytes are written before the output is renamed into place (it replaced the output, then failed)."""
    stream = _model(tmp_path)
    out, state = tmp_path / "dec.npz", tmp_path / "rx.state"
    out.write_bytes(b"OLD")
    monkeypatch.setattr(nnc.DecoderState, "_write", lambda self, fh: _no_space())
    assert main(["decode", str(stream), "-o", str(out), "--state", str(state), "-q", "--overwrite"]) == 1
    assert out.read_bytes() == b"OLD" and not state.exists() and _leftovers(tmp_path) == []
    assert "No space left on device" in capfd.readouterr().err


def test_an_encoders_state_that_cannot_be_written_leaves_the_output_as_it_was(tmp_path, monkeypatch):
    from nnc.encoder import EncoderState

    model = tmp_path / "m.safetensors"
    formats.write_model(str(model), {"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)})
    out, state = tmp_path / "m.nnr", tmp_path / "tx.state"
    out.write_bytes(b"OLD")
    monkeypatch.setattr(EncoderState, "_write", lambda self, fh: _no_space())
    assert main(["encode", str(model), "-o", str(out), "--state", str(state), "-q"]) == 1
    assert out.read_bytes() == b"OLD" and not state.exists() and _leftovers(tmp_path) == []


def test_a_model_file_cut_after_its_header_was_read_is_a_format_error(tmp_path):
    path = tmp_path / "m.safetensors"
    formats.write_model(str(path), {"w": np.ones(1000, np.float32)})
    source = readers.open_model(path)
    os.truncate(path, 500)
    with pytest.raises(FormatError, match="changed since nnc opened it"):
        [t.load() for t in source]


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_a_checkpoint_saved_again_while_it_is_encoded_is_an_error_not_a_mixed_model(tmp_path, capsys, how):
    """A safetensors file replaced by rename (how checkpoints are saved) while nnc encode read it gave a stream of
    the old file's first tensors and the new file's others, exit 0: each tensor was read by opening the path again."""
    from nnc import cli

    path = tmp_path / "m.safetensors"
    old = {f"t{i}": np.full((64, 64), i, np.float32) for i in range(4)}
    formats.write_model(str(path), old)
    new = tmp_path / "new.safetensors"
    formats.write_model(str(new), {k: v + 100 for k, v in old.items()})
    source = readers.open_model(path)
    assert source.tensors[0].load()[0, 0] == 0
    if how == "renamed over":
        os.replace(new, path)
    else:
        path.write_bytes(new.read_bytes())
        os.utime(path, ns=(0, 10**9))  # (a rewrite within the clock's resolution still changes it)
    with pytest.raises(FormatError, match="changed since nnc opened it"):
        source.tensors[1].load()


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root on Linux to mount a small tmpfs")
@pytest.mark.parametrize("output", ["o.safetensors", "o.onnx", "external/o.onnx"])
def test_a_real_full_disk_is_an_error_not_a_sigbus(tmp_path, output):
    """Decoding to a memory-mapped safetensors file on a full tmpfs died of SIGBUS (exit 135), no message, and left
    a full-size temporary file that kept the disk full. An ONNX file (inline, or its external data) is decoded
    into maps of its gaps too."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (no privilege in this container)")
    try:
        stream = _model(tmp_path)
        extra = []
        if output.endswith(".onnx"):
            onnx = pytest.importorskip("onnx", reason="onnx is not installed: .onnx output not tested")
            from onnx import helper, numpy_helper

            model = nnc.decode(stream.read_bytes())
            graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(v, k) for k, v in model.items()])
            kept = {"save_as_external_data": True, "location": "t.bin"} if output.startswith("external") else {}
            onnx.save(helper.make_model(graph), tmp_path / "t.onnx", **kept)
            extra = ["--template", str(tmp_path / "t.onnx")]
        target = small / output.split("/")[-1]
        run = subprocess.run([sys.executable, "-m", "nnc", "decode", str(stream), "-o", str(target), "-q", *extra],
                             capture_output=True, text=True)
        assert run.returncode == 1, run
        assert "No space left on device" in run.stderr and str(target) in run.stderr, run.stderr
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _checkpoint(tmp_path, scale):
    folder = tmp_path / f"ck{scale}"
    folder.mkdir()
    index = {}
    for i in range(3):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        formats.write_model(str(folder / name), {f"l{i}.weight": np.full((4, 4), scale * (i + 1), np.float32)})
        index[f"l{i}.weight"] = name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    stream = tmp_path / f"ck{scale}.nnr"
    nnc.encode_model(str(folder), str(stream), qp=-30)
    return stream


def test_a_rename_failing_inside_a_checkpoint_puts_the_old_files_back(tmp_path, monkeypatch):
    """Shards 1 and 2 were replaced and 3 was not: a loader read half old, half new values (exit 1)."""
    out = tmp_path / "out"
    assert main(["decode", str(_checkpoint(tmp_path, 1.0)), "-o", f"{out}/", "-q"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    coarser = _checkpoint(tmp_path, 2.0)
    real, calls = os.replace, []

    def failing_third(src, dst, *a, **k):
        if str(src).endswith(".tmp") and not str(src).endswith(".old"):
            calls.append(dst)
            if len(calls) == 3:
                raise OSError(errno.EPERM, "Operation not permitted", str(src))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing_third)
    assert main(["decode", str(coarser), "-o", f"{out}/", "--overwrite", "-q"]) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_output_under_a_file_says_so(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    formats.write_model(str(model), {"w": np.ones((4, 4), np.float32)})
    (tmp_path / "afile").write_bytes(b"")
    assert main(["encode", str(model), "-o", str(tmp_path / "afile" / "x.nnr"), "-q"]) == 1
    assert "afile is a file, not a folder" in capsys.readouterr().err


def test_model_files_are_read_not_memory_mapped(tmp_path, monkeypatch):
    """A file cut by another program while nnc has it mapped ends the process with SIGBUS; read into an array, the
    same cut is a FormatError (the test above). Before: safetensors and ONNX external data were memory-mapped."""
    import mmap

    def refuse(*args, **kwargs):
        raise AssertionError("a model file was memory-mapped")

    path = tmp_path / "m.safetensors"
    formats.write_model(str(path), {"w": np.arange(1000, dtype=np.float32), "h": np.ones(10, np.float16)})
    monkeypatch.setattr(np, "memmap", refuse)
    monkeypatch.setattr(mmap, "mmap", refuse)
    loaded = {t.name: t.load() for t in readers.open_model(path)}
    assert loaded["w"].tolist() == list(range(1000)) and loaded["h"].dtype == np.float16


_CUT_WHILE_DECODING = r"""
import mmap, os, sys
import numpy as np
import nnc
from nnc.writers import decode_to_path, map_stream

stream, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
nnc.encode_model({f"w{i}": rng.normal(size=(128, 128)).astype(np.float32) for i in range(12)}, stream)
size = os.path.getsize(stream)

# a Decoder on the map: the file cut at a page boundary well before its end, then every tensor asked for
mapped = map_stream(stream)
dec = nnc.Decoder(mapped)
first = dec.decode_tensor("w0")
os.truncate(stream, (size // 2) - (size // 2) % mmap.PAGESIZE)
errors = set()
for name in dec.names():
    try:
        dec.decode_tensor(name)
        errors.add("decoded")
    except nnc.TruncatedError as exc:
        errors.add("cut" if "was cut" in str(exc) else str(exc))
from nnc import _mapguard
print("api", sorted(errors), _mapguard.faulted(mapped._slot))
del dec, mapped

# decode_to_path: the file cut after the first tensor is written; nothing is left at the output
nnc.encode_model({f"w{i}": rng.normal(size=(128, 128)).astype(np.float32) for i in range(12)}, stream)
def cut(progress):
    if progress.tensors_done == 1:
        os.truncate(stream, mmap.PAGESIZE)
try:
    decode_to_path(stream, out, progress=cut)
    print("path", "decoded")
except nnc.TruncatedError as exc:
    print("path", "cut" if "was cut" in str(exc) else str(exc), sorted(os.listdir(os.path.dirname(out))))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGBUS is a POSIX signal")
def test_a_stream_cut_while_it_is_decoded_is_a_truncated_error_not_a_sigbus(tmp_path):
    """A stream file cut by another program while nnc decoded it from its memory map ended the process (SIGBUS,
    exit 135, no message); the map is guarded: the pages past the cut read zeros and the decoder refuses them."""
    pytest.importorskip("nnc._mapguard", reason="the compiled module nnc._mapguard is not built")
    (tmp_path / "out").mkdir()
    run = subprocess.run(
        [sys.executable, "-c", _CUT_WHILE_DECODING, str(tmp_path / "m.nnr"), str(tmp_path / "out" / "m.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.splitlines() == ["api ['cut'] True", "path cut []"], run.stdout


def test_a_stream_cut_inside_its_last_page_is_found_without_a_fault(tmp_path, monkeypatch):
    """Bytes past a cut inside the file's last page read as zeros with no fault at all: the map's file size tells."""
    from nnc import decoder
    from nnc.writers import map_stream

    monkeypatch.setattr(decoder, "_mapguard", None)  # as in a build without the compiled module
    path = tmp_path / "m.nnr"
    nnc.encode_model({"a": np.linspace(-1, 1, 5000, dtype=np.float32), "b": np.ones(7, np.float32)}, path)
    dec = nnc.Decoder(map_stream(path))
    os.truncate(path, os.path.getsize(path) - 3)
    with pytest.raises(nnc.TruncatedError, match=f"stream file {re.escape(str(path))} was cut"):
        dec.decode_tensor("b")


def test_a_guarded_map_closed_by_with_is_no_longer_guarded(tmp_path):
    """`with map_stream(p) as m:` closed through mmap's own __exit__, which left the map's range guarded: a later
    map at the same address, cut, would have read zeros instead of failing (a review found it)."""
    mapguard = pytest.importorskip("nnc._mapguard", reason="the compiled module nnc._mapguard is not built")
    from nnc.writers import map_stream

    path = tmp_path / "m.nnr"
    nnc.encode_model({"w": np.ones(3, np.float32)}, path)
    with map_stream(path) as mapped:
        slot = mapped._slot
        assert slot >= 0
    assert mapped.closed and mapped._slot == -1
    again = map_stream(path)  # the slot is free again: the next map takes it
    assert again._slot == slot
    again.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # (the archive's end written again)
def test_a_full_disk_under_torch_save_is_the_os_error_not_torch_s_runtime_error():
    """A .pt output on a full disk printed a 30-line traceback ending in torch's
    "RuntimeError: [enforce fail at inline_container.cc] unexpected pos": now the OSError it met."""
    import io

    pytest.importorskip("torch", reason="torch not installed: .pt output not tested")

    class Full(io.RawIOBase):
        written = 0

        def writable(self):
            return True

        def write(self, data):
            self.written += len(data)
            if self.written > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

    with pytest.raises(OSError, match="No space left on device"):
        formats._save_pt(Full(), {"w": np.ones((1000, 1000), np.float32)})


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt", "/"])
def test_an_output_another_command_created_meanwhile_is_not_replaced(tmp_path, monkeypatch, capsys, suffix):
    """Two `nnc decode` commands writing the same output both exited 0 (the later rename won) though neither was
    given --overwrite: the existence check ran before either file existed. The commit now fails on a file that
    appeared meanwhile, and leaves it as it is."""
    if suffix == ".pt":
        pytest.importorskip("torch", reason="torch not installed: .pt output not tested")
    from nnc import cli

    stream = _model(tmp_path)
    out = tmp_path / ("out" if suffix == "/" else f"out{suffix}")
    theirs = (out / "model.safetensors") if suffix == "/" else out
    original = cli._DecodeBar.__call__

    def another_command_writes(self, event):
        if not theirs.exists():
            theirs.parent.mkdir(exist_ok=True)
            theirs.write_bytes(b"the other command's model")
        return original(self, event)

    monkeypatch.setattr(cli._DecodeBar, "__call__", another_command_writes)
    target = f"{out}/" if suffix == "/" else str(out)
    assert main(["decode", str(stream), "-o", target, "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "created by another program meanwhile" in err and str(theirs) in err
    assert theirs.read_bytes() == b"the other command's model"
    assert _leftovers(theirs.parent) == [] and not list(theirs.parent.glob(".*.old"))
    assert main(["decode", str(stream), "-o", target, "-q", "--overwrite"]) == 0  # asked: replaced
    assert theirs.read_bytes() != b"the other command's model"


_PT_CUT_WHILE_ENCODED = r"""
import os, sys
import torch
from nnc import formats, readers
from nnc.cli import main

path, out = sys.argv[1], sys.argv[2]
torch.save({f"w{i}": torch.randn(256, 256) for i in range(12)}, path)
source = readers.open_model(path)
source.tensors[0].load()
os.truncate(path, os.path.getsize(path) // 3)  # another program cuts the checkpoint
results = set()
for t in source.tensors:
    try:
        t.load()
        results.add("read")
    except formats.FormatError as exc:
        results.add("cut" if "was cut or changed" in str(exc) else str(exc))
print(sorted(results))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGBUS is a POSIX signal")
def test_a_pt_checkpoint_cut_while_it_is_read_is_a_format_error_not_a_sigbus(tmp_path):
    """torch.load(mmap=True) maps a .pt file: cut by another program while nnc encode read it, the process ended
    with SIGBUS (exit 135) and left its temporary stream; the storages' memory is now guarded."""
    pytest.importorskip("torch", reason="torch not installed: .pt input not tested")
    pytest.importorskip("nnc._mapguard", reason="the compiled module nnc._mapguard is not built")
    run = subprocess.run([sys.executable, "-c", _PT_CUT_WHILE_ENCODED, str(tmp_path / "m.pt"), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.strip() == "['cut']", run.stdout


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_a_full_disk_under_the_state_file_names_the_state_file(tmp_path, monkeypatch, capsys, command):
    """With only the --state file's folder full, the error named the output ("out.nnr: No space left on device")."""
    stream = _model(tmp_path)
    state = tmp_path / "st"
    cls = nnc.EncoderState if command == "encode" else nnc.DecoderState
    monkeypatch.setattr(cls, "_write", _no_space)
    if command == "encode":
        model = tmp_path / "m.npz"
        formats.write_model(str(model), {"w": np.ones((8, 8), np.float32)})
        argv = ["encode", str(model), "-o", str(tmp_path / "o.nnr"), "--state", str(state), "-q"]
    else:
        argv = ["decode", str(stream), "-o", str(tmp_path / "o.npz"), "--state", str(state), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nnc: error: {state}: No space left on device"), err
    assert not (tmp_path / "o.nnr").exists() and not (tmp_path / "o.npz").exists() and not state.exists()


def test_without_hard_links_a_file_another_command_wrote_is_kept(tmp_path, monkeypatch):
    """On a file system without hard links, the target of a folder decode was moved aside first (to put back on
    failure), so the new-files-only commit found no file, renamed over it and then deleted the other's file."""
    from nnc import _files

    def no_links(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target, tmp = tmp_path / "model.safetensors", tmp_path / ".model.safetensors.x.tmp"
    tmp.write_bytes(b"ours")
    target.write_bytes(b"theirs")  # written by another command after this one checked
    with _files.new_files_only(target), pytest.raises(FileExistsError, match="created by another program"):
        _files.replace_all([(tmp, target)])
    assert target.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_write_onnx_names_the_user_s_file_when_a_write_fails(tmp_path, monkeypatch):
    """Before: formats.write_onnx (the writer of nnc.decode_model and --add-to into one ONNX file) raised the OSError
    of its temporary file, so the message named a '.m.onnx.nnc_....tmp' the user never asked for."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    from nnc import formats

    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])],
                              [numpy_helper.from_array(np.ones((64, 64), np.float32), "w")])
    onnx.save(helper.make_model(graph), str(tmp_path / "t.onnx"), save_as_external_data=True, location="t.bin")

    def temporary_file_full(writer, tensors):
        tmp = next(p for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(formats, "_write_onnx_weights", temporary_file_full)
    with pytest.raises(OSError) as err:
        formats.write_onnx(tmp_path / "m.onnx", {"w": np.zeros((64, 64))}, template=tmp_path / "t.onnx")
    assert err.value.filename in (str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx.data")), err.value.filename
    assert _leftovers(tmp_path) == [] and not (tmp_path / "m.onnx").exists()
