"""Streaming decode to model files: plan each file from the stream's headers, then fill it tensor by tensor.

The names, shapes and dtypes of every tensor are known from the unit headers
and nnc's topology metadata before any payload is decoded, so the layout of
every output file (its header, each tensor's byte range) is fixed first.  Each
tensor is then decoded straight into its place: a memory map of its range in a
safetensors file (through :meth:`nnc.decoder.Decoder.iter_tensors` with
``out=``), or one .npy member of an .npz archive.  The decoded model is never
held in memory: the peak is one tensor's decoding.

A stream that records a checkpoint layout (the ``"checkpoint"`` entry of nnc's
metadata, spec 6.2.1) is restored into a folder: the same shard names, each
shard's ``__metadata__``, the index with its ``weight_map`` and ``total_size``.
Every file is written to a temporary file in the target folder and renamed at
the end; on any error the temporary files are removed and nothing is left.

Examples
--------
>>> import nnc, numpy as np, tempfile, os
>>> from nnc.writers import decode_to_path
>>> stream = nnc.encode({"w": np.ones((2, 3), np.float32), "n": np.int64(3)}, qp=-20)
>>> d = tempfile.mkdtemp()
>>> summary = decode_to_path(stream, os.path.join(d, "out") + os.sep)
>>> [os.path.basename(f) for f in summary["files"]], summary["tensors"]
(['model.safetensors'], 2)
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from . import narrow_floats
from ._files import TemporaryFiles, naming, new_files_only, refuse_overwriting, reserve_space
from .decoder import (
    DecodedTensors,
    Decoder,
    Limits,
    _releasable_map,
    map_file,
    model_order,
    recorded_dtype,
    recorded_shape,
    refuse_full_values,
    release_pages,
    restore_model_view,
)
from .errors import DecodeError

__all__ = ["decode_to_path", "DecodeProgress", "is_directory_target", "is_safe_file_name", "map_stream"]

#: File name used in a folder when the stream records no checkpoint layout.
DEFAULT_FILE = "model.safetensors"


@dataclass
class DecodeProgress:
    """What :func:`decode_to_path` reports to its ``progress`` callable.

    Reported once before any tensor is decoded (``name`` None) and then after
    each tensor is written; the parameters are the fields below.

    Examples
    --------
    >>> import nnc, numpy as np, tempfile, os
    >>> from nnc.writers import decode_to_path
    >>> stream = nnc.encode({"a": np.ones(4, np.float32), "b": np.ones(2, np.float32)}, qp=-20)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> _ = decode_to_path(stream, path, progress=lambda p: print(p.name, p.tensors_done, p.bytes_done, p.bytes_total))
    None 0 0 24
    a 1 16 24
    b 2 24 24
    """

    #: The tensor just written, or None for the report before the first one.
    name: str | None
    #: Tensors written so far, and in all.
    tensors_done: int
    tensors_total: int
    #: Bytes of tensor data written so far, and in all (in the output dtypes).
    bytes_done: int
    bytes_total: int


@dataclass
class _Tensor:
    name: str
    shape: tuple  # the original (restored) shape
    dtype: str  # the original dtype name (bfloat16 and float8 included: nnc.narrow_floats)
    tied_to: str | None = None  # the coded tensor whose values it is (spec 6.2.1)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


@dataclass
class _File:
    name: str
    format: str
    metadata: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    template: Any = None  # an .onnx file's original model


def _itemsize(dtype: str) -> int:
    return narrow_floats.itemsize(dtype)


def is_directory_target(output) -> bool:
    """Whether ``output`` names a folder: it ends with a path separator or is an existing directory.

    Parameters
    ----------
    output : str or ``os.PathLike``
        An output path as given by the user.

    Returns
    -------
    bool
        True for a folder to write the model's files into.

    Examples
    --------
    >>> from nnc.writers import is_directory_target
    >>> is_directory_target("out/"), is_directory_target("out/model.safetensors")
    (True, False)
    """
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or os.path.isdir(text)


# -- the plan ------------------------------------------------------------------------------


def _model_tensors(dec: Decoder, names) -> "OrderedDict[str, _Tensor]":
    """Original name, shape and dtype of every wanted tensor, from headers and metadata only (spec 6.2.1)."""
    out: OrderedDict[str, _Tensor] = OrderedDict()
    infos = {info.name: info for info in dec.tensors()}
    for name in model_order(infos, dec.metadata):  # files list tensors in the model's order
        info = infos[name]
        if names is not None and info.name not in names:
            continue
        shape = recorded_shape(dec.metadata, info.name, info.size)
        dtype = recorded_dtype(dec.metadata, info.name, info.dtype)
        out[info.name] = _Tensor(
            info.name,
            tuple(info.shape) if shape is None else shape,
            info.dtype if dtype is None else dtype,
            info.tied_to,
        )
    return out


def is_safe_file_name(name) -> bool:
    """Whether a checkpoint layout may name the file ``name`` (spec 6.2.1): a plain file name, no path.

    Parameters
    ----------
    name : object

    Returns
    -------
    bool

    Examples
    --------
    >>> from nnc.writers import is_safe_file_name
    >>> is_safe_file_name("model.pt"), is_safe_file_name("../model.pt"), is_safe_file_name("a\\\\b.pt")
    (True, False, False)
    """
    return (
        isinstance(name, str)
        and bool(name)
        and _encodable(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and os.path.basename(name) == name
    )


def _safe_file_name(name, where: str) -> str:
    if not is_safe_file_name(name):
        raise DecodeError(f"the stream's checkpoint metadata names an unsafe file {name!r} ({where})", clause="6.2.1")
    return name


def _encodable(name: str) -> bool:
    """Whether ``name`` can be a file name here (a lone surrogate cannot)."""
    try:
        os.fsencode(name)
        name.encode("utf-8")
    except UnicodeError:
        return False
    return True


def _checkpoint_plan(ckpt: Any, tensors, new_to_last: bool = False) -> tuple[list, dict | None]:
    """The files (and the index) of a checkpoint layout (spec 6.2.1: a stream's, or a model's own) holding
    ``tensors``; with ``new_to_last``, a tensor the layout does not place goes to its last file."""
    try:
        fmt = ckpt["format"]
        files = [_File(_safe_file_name(f["name"], "files"), fmt, dict(f.get("metadata") or {})) for f in ckpt["files"]]
        file_of = ckpt["file_of"]
        index = ckpt.get("index")
        if index is not None:
            index = dict(name=_safe_file_name(index["name"], "index"), metadata=dict(index.get("metadata") or {}))
        if fmt not in ("safetensors", "npz", "pt", "onnx") or not files or not isinstance(file_of, dict):
            raise ValueError("unknown format or no files")
        for t in tensors.values():
            if t.name not in file_of and not new_to_last:
                raise ValueError(f"no file for tensor {t.name!r}")
            files[int(file_of.get(t.name, len(files) - 1))].tensors.append(t)
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise DecodeError(
            f"the stream's checkpoint metadata is malformed ({type(exc).__name__}: {exc})", clause="6.2.1"
        ) from None
    if len({f.name for f in files}) != len(files) or (index and index["name"] in {f.name for f in files}):
        raise DecodeError("the stream's checkpoint metadata names a file twice", clause="6.2.1")
    if fmt == "onnx":
        from .formats import FormatError

        raise FormatError(
            "the stream records an ONNX model: decode it to a .onnx file with a template (template=, --template) "
            "(the original model), or to a .safetensors or .npz file"
        )
    return [f for f in files if f.tensors], index


def _plan(dec: Decoder, output, names, template=None) -> tuple[Path, list, dict | None]:
    """(folder, files, index) to write for ``output`` (an .onnx file from ``template``)."""
    from .formats import format_from_extension

    tensors = _model_tensors(dec, names)
    ckpt = dec.metadata.get("checkpoint")
    if is_directory_target(output):
        folder = Path(output)
        if ckpt is not None:
            files, index = _checkpoint_plan(ckpt, tensors)  # the stream's JSON, checked as it is read
            return folder, files, index
        return folder, [_File(DEFAULT_FILE, "safetensors", {}, list(tensors.values()))], None
    path = Path(output)
    fmt = format_from_extension(path)
    metadata = single_file_metadata(dec.metadata, fmt)
    return path.parent, [_File(path.name, fmt, metadata, list(tensors.values()), template)], None


def single_file_metadata(metadata: dict, fmt: str) -> dict:
    """The file metadata of a stream whose checkpoint layout is in format ``fmt`` (spec 6.2.1: a safetensors
    ``__metadata__``, a PyTorch state_dict's ``_metadata``), to write into a single decoded file of that format:
    its one file's, or the one all its shards have alike (``{"format": "pt"}``); {} otherwise.

    Parameters
    ----------
    metadata : dict
        The stream's topology metadata (:attr:`nnc.decoder.Decoder.metadata`).
    fmt : str
        The format of the file to write (:data:`nnc.formats.FORMATS`).

    Returns
    -------
    dict

    Examples
    --------
    >>> layout = {"format": "pt", "files": [{"name": "m.pt", "metadata": {"": {"version": 1}}}], "file_of": {}}
    >>> single_file_metadata({"checkpoint": layout}, "pt"), single_file_metadata({"checkpoint": layout}, "npz")
    ({'': {'version': 1}}, {})
    """
    ckpt = metadata.get("checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt or not isinstance(ckpt.get("files"), list):
        return {}
    files = ckpt["files"]
    if not files or not all(isinstance(f, dict) and isinstance(f.get("metadata"), dict) for f in files):
        return {}
    first = files[0]["metadata"]
    return dict(first) if all(f["metadata"] == first for f in files) else {}


# -- safetensors: header first, then each tensor decoded into a memory map of its range --------


def _safetensors_header(file: _File) -> tuple[bytes, dict]:
    from .formats import safetensors_header

    head, offsets = safetensors_header([(t.name, t.dtype, t.shape) for t in file.tensors], file.metadata, file.name)
    return head, {t.name: offset for t, offset in zip(file.tensors, offsets)}


class _SafetensorsSink:
    def __init__(self, file: _File, tmp: str, new_file: Callable[[str], str]):
        self.tmp = tmp
        head, self.offsets = _safetensors_header(file)
        self.tensors = {t.name: t for t in file.tensors}
        with open(tmp, "r+b") as fh:
            fh.write(head)
            try:
                reserve_space(fh.fileno(), len(head) + sum(t.nbytes for t in file.tensors))  # sizes it; ENOSPC here
            except OSError as exc:  # (names the file: in a folder of shards, the one that does not fit)
                raise naming(exc, Path(tmp).parent / file.name) from None

    def buffer(self, info):
        t = self.tensors[info.name]
        if t.nbytes == 0:
            return None
        dtype = narrow_floats.file_dtype(t.dtype)
        return np.memmap(self.tmp, dtype=dtype, mode="r+", offset=self.offsets[t.name], shape=t.shape)

    def take(self, name, array):
        if isinstance(array, np.memmap):
            array.flush()

    def close(self):
        pass

    def abort(self):
        pass


class _NpzSink:
    """An uncompressed .npz written member by member, in the model's order.

    A tensor that arrives before its turn (a bias decoded with its weight from one
    BLOCK unit) waits until the tensors planned before it are written.
    """

    def __init__(self, file: _File, tmp: str, new_file: Callable[[str], str]):
        self.zf = zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.tensors = {t.name: t for t in file.tensors}
        self.order = list(self.tensors)
        self.next = 0
        self.waiting: dict[str, np.ndarray] = {}

    def buffer(self, info):
        return None

    def take(self, name, array):
        self.waiting[name] = array
        while self.next < len(self.order) and self.order[self.next] in self.waiting:
            turn = self.order[self.next]
            self._write(turn, self.waiting.pop(turn))
            self.next += 1

    def _write(self, name, array):
        t = self.tensors[name]
        arr, _ = restore_model_view(
            OrderedDict([(name, array)]), {"shapes": {name: list(t.shape)}, "dtypes": {name: t.dtype}}
        )
        from .formats import write_npz_member

        write_npz_member(self.zf, name, arr[name])

    def close(self):
        for name in list(self.waiting):  # (only when a planned tensor never came: the write fails anyway)
            self._write(name, self.waiting.pop(name))
        self.zf.close()

    def abort(self):
        """Let the archive go unfinished (its temporary file is removed): zipfile would otherwise try again to write
        its end, at garbage collection, and print the failure ("Exception ignored")."""
        fp, self.zf.fp = self.zf.fp, None
        if fp is not None:
            fp.close()


class _PtSink:
    """A PyTorch file written tensor by tensor (:class:`nnc.formats.PtWriter`: memory holds one tensor)."""

    def __init__(self, file: _File, tmp: str, new_file: Callable[[str], str]):
        from .formats import PtWriter

        self.tensors = {t.name: t for t in file.tensors}
        ties = {t.name: t.tied_to for t in file.tensors if t.tied_to in self.tensors}  # (one storage, as torch ties)
        self.writer = PtWriter(tmp, [(t.name, t.dtype, t.shape) for t in file.tensors], file.metadata, ties)

    def buffer(self, info):
        return None

    def take(self, name, array):
        t = self.tensors[name]
        view, _ = restore_model_view(
            OrderedDict([(name, array)]), {"shapes": {name: list(t.shape)}, "dtypes": {name: t.dtype}}
        )
        self.writer.write(name, view[name])

    def close(self):
        self.writer.close()

    def abort(self):
        self.writer.abort()


class _OnnxSink:
    """An ONNX model laid out from its template, each weight decoded into its place (:class:`nnc.formats.OnnxWriter`:
    memory holds the template's graph and one tensor); its external data file, if any, is an extra temporary file."""

    def __init__(self, file: _File, tmp: str, new_file: Callable[[str], str]):
        from .formats import OnnxWriter

        plan = {t.name: (t.shape, t.dtype) for t in file.tensors}
        try:
            self.writer = OnnxWriter(tmp, file.name, plan, file.template, new_file)  # (its data: a further file)
        except BaseException:
            self.abort()
            raise

    def buffer(self, info):
        return self.writer.buffer(info.name)

    def take(self, name, array):
        self.writer.write(name, array)

    def close(self):
        self.writer.close()

    def abort(self):
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.buffers.clear()  # (maps of the temporary files: some systems cannot remove a mapped file)


class _Sink(Protocol):
    """Where one output file's tensors go, made with the file, its temporary file and a maker of further temporary
    files (``new_file(final name)``: an ONNX model's external data): an array to decode into (or None), then each
    array, then close (or, on an error, abort: the writer removes every temporary file)."""

    def buffer(self, info): ...

    def take(self, name, array): ...

    def close(self): ...

    def abort(self): ...


_SINKS: dict[str, Callable[[_File, str, Callable[[str], str]], _Sink]] = {
    "safetensors": _SafetensorsSink,
    "npz": _NpzSink,
    "pt": _PtSink,
    "onnx": _OnnxSink,
}


MODEL_FILE_SUFFIXES = (".safetensors", ".index.json", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".npy", ".onnx")


def _refuse_mixing(folder: Path, written: set) -> None:
    """Raise ``FileExistsError`` if ``folder`` holds model files that a checkpoint (shards, index) written there would
    not replace: a loader reading the folder would mix them with the decoded tensors (stale shards of an earlier
    decode, of ``--tensor``, of another model)."""
    if not folder.is_dir():
        return
    others = sorted(
        p.name for p in folder.iterdir() if p.name not in written and p.name.lower().endswith(MODEL_FILE_SUFFIXES)
    )
    if others:
        raise FileExistsError(
            errno.EEXIST,
            f"the folder already holds model files this decode would not replace ({_listed(others)}); a loader would mix "
            "them with the decoded checkpoint: decode into a new or empty folder, or remove them",
            os.fspath(folder),
        )


def _listed(names: list) -> str:
    """The first three file names and how many more."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _refuse_replacing(folder: Path, names: list) -> None:
    """Raise ``FileExistsError`` if ``folder`` holds files of these ``names``: the stream named them, not the user,
    and they may be the original model's."""
    there = [name for name in names if (folder / name).exists()]
    if there:
        raise FileExistsError(
            errno.EEXIST,
            f"the folder already holds {_listed(there)}, named by the stream; they are not replaced (perhaps the original "
            "model): decode into a new or empty folder, or replace them with --overwrite (overwrite=True)",
            os.fspath(folder),
        )


def _index_json(index: dict, files: list) -> bytes:
    weight_map = {t.name: f.name for f in files for t in f.tensors}
    metadata = dict(index.get("metadata") or {})
    metadata["total_size"] = sum(t.nbytes for f in files for t in f.tensors)
    body = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(body, indent=2) + "\n").encode()


def _write_folder_from_memory(folder: Path, tensors, dtypes: dict, layout, inputs: dict, overwrite=False) -> dict:
    """Write in-memory ``tensors`` into ``folder`` in a checkpoint ``layout`` (a model's own: shards, index; a tensor
    it does not place goes to its last file), or as ``model.safetensors`` without one. ``inputs``: {what: path or
    list of paths} no written file may replace."""
    planned = OrderedDict(
        (k, _Tensor(k, tuple(np.shape(v)), str(dtypes.get(k) or np.asarray(v).dtype.name))) for k, v in tensors.items()
    )
    if layout is not None:
        files, index = _checkpoint_plan(layout, planned, new_to_last=True)
    else:
        files, index = [_File(DEFAULT_FILE, "safetensors", {}, list(planned.values()))], None

    def from_memory(names, out_of):
        for name in names:
            yield name, _as_written(np.asarray(tensors[name]), planned[name], out_of)

    return _write_files(folder, files, index, True, layout is not None, from_memory, None, inputs, overwrite)


def _as_written(value: np.ndarray, planned: _Tensor, out_of) -> np.ndarray:
    """``value`` put where a sink wants the tensor (``out_of(planned)``: its place in the file, as the file holds
    it), or as it is where the sink takes it so."""
    buffer = out_of(planned)
    if buffer is None:
        return value
    buffer[...] = narrow_floats.to_file_values(planned.dtype, value)
    return buffer


def _add_update(dec: Decoder, output, add_to, template, progress, inputs, overwrite, threads: int = 1) -> dict:
    """A decoded update of differences added to the model ``add_to`` (spec 14.5), written tensor by tensor: each
    of the model's tensors is read, the update's tensor of that name decoded and added (:func:`apply_update`), and
    the sum written, into a folder in the model's own checkpoint layout or into one file (``template``: .onnx);
    memory is bounded by the tensors in flight. The model's digest is checked against the update's parent first.
    ``threads``: within each unit (its entry points, spec 7.3); the units are decoded in order (their parents)."""
    from .decoder import apply_update, check_update_parent
    from .errors import UpdateError
    from .formats import FormatError, format_from_extension
    from .models import checkpoint_metadata
    from .readers import open_model

    source = open_model(add_to)  # a file, a checkpoint folder or its index
    held = _LoadedOneByOne(source)
    refuse_full_values(dec, "decode it without --add-to")
    try:  # before decoding: a replayed update is refused before it touches a decoder state
        check_update_parent(held, dec.parent, dec.narrow)
    except UpdateError as exc:
        raise UpdateError(f"{os.fspath(add_to)}: {exc.message}", clause=exc.clause) from None
    layout = (checkpoint_metadata(source) or {}).get("checkpoint")
    update = _model_tensors(dec, None)
    sent_whole = set(dec.replaced)
    planned: OrderedDict[str, _Tensor] = OrderedDict()
    for lazy in source:  # the model's tensors in its order, its dtypes (those sent whole: the update's)
        whole = lazy.name in sent_whole and lazy.name in update
        planned[lazy.name] = update[lazy.name] if whole else _Tensor(lazy.name, tuple(lazy.shape), lazy.original_dtype)
    for name, t in update.items():  # then the tensors new in the update
        planned.setdefault(name, t)
    into_folder = is_directory_target(output)
    if into_folder:
        folder = Path(output)
        if layout is not None:
            files, index = _checkpoint_plan(layout, planned, new_to_last=True)
        else:
            files, index = [_File(DEFAULT_FILE, "safetensors", {}, list(planned.values()))], None
    else:
        fmt = format_from_extension(output)
        metadata = single_file_metadata({"checkpoint": layout} if layout is not None else {}, fmt)
        folder, files, index = (
            Path(output).parent,
            [_File(Path(output).name, fmt, metadata, list(planned.values()), template)],
            None,
        )

    def added(names, out_of):
        names = list(names)
        here = set(names)
        later: dict = {}  # members of a BLOCK unit decoded with an earlier one, until their turn (one decode a unit)
        for name in names:
            if name in update:
                if name not in later:
                    unit = dec.decode(dec.info(name).block or [name], threads=threads)
                    later.update((k, v) for k, v in unit.items() if k in here)
                decoded, _ = restore_model_view({name: later.pop(name)}, dec.metadata)
                model = {name: held[name]} if name in held else {}
                try:
                    value = apply_update(model, decoded, check_parent=False, replaced=sent_whole, narrow=dec.narrow)[
                        name
                    ]
                except ValueError as exc:
                    raise FormatError(f"{os.fspath(add_to)}: {exc}") from None
            else:  # (skipped by the update: unchanged; or no longer named by it: kept as it is)
                value = held[name]
            yield name, _as_written(value, planned[name], out_of)

    added_files = {"model added to": source.files, **(inputs or {})}
    return _write_files(
        folder, files, index, into_folder, into_folder and layout is not None, added, progress, added_files, overwrite
    )


class _LoadedOneByOne(Mapping):
    """A model opened lazily (:class:`nnc.readers.ModelSource`) as {name: array}: each tensor read when looked up."""

    def __init__(self, source):
        self.source = source

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.source:
            raise KeyError(name)
        return self.source[name].load()

    def __contains__(self, name) -> bool:
        return name in self.source

    def __iter__(self):
        return (t.name for t in self.source)

    def __len__(self) -> int:
        return len(self.source)


#: The stream file memory-mapped as nnc.Decoder(path) maps it (one home: :func:`nnc.decoder.map_file`).
map_stream = map_file


def _release(mapped, upto: int) -> None:
    """Let the kernel drop the pages of the decoded units, so resident memory does not grow with the stream."""
    release_pages(mapped, 0, upto)


def decode_to_path(
    stream,
    output,
    *,
    names=None,
    threads: int = 1,
    progress=None,
    add_to=None,
    inputs=None,
    overwrite: bool = False,
    template=None,
    **decoder_options,
) -> dict:
    """Decode a stream to model files, one tensor at a time, never holding the model in memory.

    ``output`` is a folder (a path ending with a separator, or an existing
    directory) or a file.  Into a folder, the checkpoint layout the stream
    records is restored (the same shard names and ``__metadata__``, the index
    with ``weight_map`` and ``total_size``, the original dtypes); a stream
    without one becomes ``model.safetensors`` there.  A .safetensors, .npz or
    .pt file is written the same way, streaming, and so is a .onnx file
    from ``template`` (:class:`nnc.formats.OnnxWriter`).

    Parameters
    ----------
    stream : bytes, buffer, str, ``os.PathLike``, ``BinaryIO`` or nnc.decoder.Decoder
        The NNC stream (as for :class:`nnc.decoder.Decoder`), or a Decoder of it.
        A path is memory-mapped, and the pages of the units already decoded
        are released, so that resident memory does not grow with the stream.
    output : str or ``os.PathLike``
        The folder or file to write.
    names : str, iterable of str or None
        Decode only this tensor or these; None for all.
    threads : int
        Units decoded at the same time (0: one per CPU); each in flight holds
        one tensor in memory.
    progress : ``callable`` or None
        Called with a :class:`DecodeProgress` before the first tensor and after each.
    add_to : str, ``os.PathLike`` or None
        For a stream of differences (an update): the model it is added to (a
        file, a checkpoint folder or its index; :func:`nnc.decoder.apply_update`);
        the sum is made in memory and written to the file ``output``, or into
        the folder ``output`` in the model's own checkpoint layout (its shards
        and index; a tensor new in the update goes to the last shard). Without
        it, the differences themselves are written (to look at them; ``nnc
        decode`` notes it), unlike :func:`nnc.models.decode_model`, which
        refuses to write them as a model.
    inputs : dict or None
        {what: path} of further files no written file may replace (a state file); the
        stream, ``template`` and ``add_to`` are never replaced.
    overwrite : bool
        Into a folder: replace files of the names the stream's layout gives that are
        there already (the stream names them, not the caller: by default they are
        refused, so that decoding next to the original model does not replace it).
    template : str, ``os.PathLike`` or None
        The original .onnx model, for .onnx output (its graph; the weights are the stream's).
    **decoder_options
        ``limits``, ``engine``, ``state``, ``entry_points``, as for :func:`nnc.models.decode_model`.

    Returns
    -------
    dict
        ``files`` (the paths written, in order), ``tensors``, ``weights`` and
        ``bytes`` (tensor data written).

    Raises
    ------
    nnc.errors.DecodeError
        If the stream is invalid, or its checkpoint metadata is malformed or
        names a file outside the folder; nothing is written.
    nnc.formats.FormatError
        If the output's format cannot be told or cannot hold a dtype, or
        ``add_to`` cannot be read or has a tensor of another shape than the update's.
    KeyError
        If a name is not that of a tensor of the stream.
    TypeError
        If ``progress`` is not a callable.
    FileExistsError
        If a file to be written into a folder exists and ``overwrite`` is false, or
        would replace an input.
    OSError
        If a file cannot be written; nothing is left behind.

    Examples
    --------
    >>> import nnc, numpy as np, tempfile, os
    >>> from nnc.writers import decode_to_path
    >>> stream = nnc.encode({"w": np.ones((4, 4), np.float32)}, qp=-20, dtypes={"w": "bfloat16"})
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> decode_to_path(stream, path)["bytes"]     # bfloat16: 2 bytes a weight
    32
    >>> nnc.formats.read_model(path)[1]
    {'w': 'bfloat16'}
    """
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable or None, not {type(progress).__name__}")
    if isinstance(stream, Decoder):
        dec = stream
    else:
        source = map_stream(stream) if isinstance(stream, (str, os.PathLike)) else None
        data = source if source is not None else stream
        decoder_options.setdefault("limits", Limits.for_stream(data))  # written one unit at a time
        dec = Decoder(data, **decoder_options)
    mapped = _releasable_map(dec.data)
    if mapped is not None:
        _release(mapped, len(mapped))  # what else touched pages since parsing; payloads are read again when decoded
    wanted = None if names is None else {names} if isinstance(names, str) else set(names)
    if wanted is not None:
        missing = sorted(wanted - set(dec.names()))
        if missing:
            raise KeyError(f"no tensor named {missing[0]!r} in the stream")
    if add_to is not None and wanted is not None:  # (a part of an update added: in memory)
        if not is_directory_target(output):
            return _decode_in_memory(dec, output, wanted, template, threads, progress, add_to)
        return _decode_in_memory(dec, output, wanted, template, threads, progress, add_to, inputs, overwrite)
    if add_to is not None:
        return _add_update(dec, output, add_to, template, progress, inputs, overwrite, threads)

    def local(names, out):
        for name, array in dec.iter_tensors(names, threads=threads, out=out):
            yield name, array
            if mapped is not None:
                info = dec.info(name)
                _release(mapped, info.unit_offset + info.unit_size)

    own = {"stream": stream if isinstance(stream, (str, os.PathLike)) else None, "template": template}
    return write_tensors(
        dec,
        output,
        wanted,
        local,
        progress,
        inputs={**own, "model added to": add_to, **(inputs or {})},
        overwrite=overwrite,
        template=template,
    )


def write_tensors(
    dec: Decoder, output, wanted, produce, progress=None, inputs=None, overwrite: bool = False, template=None
) -> dict:
    """Write the tensors ``produce(names, out)`` yields into the files planned for ``output``, atomically.

    ``produce`` yields ``(name, array)`` for the planned names, in the stream's order, as
    :meth:`nnc.decoder.Decoder.iter_tensors` does with ``out`` (the array a tensor is to
    be written into, or None): :func:`decode_to_path` decodes locally, :mod:`nnc.distributed`
    on a cluster.  ``overwrite``, ``template``: as for :func:`decode_to_path`.  Returns the summary of
    :func:`decode_to_path`.
    """
    folder, files, index = _plan(dec, output, wanted, template)
    into_folder = is_directory_target(output)
    checkpoint = into_folder and dec.metadata.get("checkpoint") is not None
    return _write_files(folder, files, index, into_folder, checkpoint, produce, progress, inputs, overwrite)


def _write_files(
    folder: Path, files, index, into_folder: bool, checkpoint: bool, produce, progress, inputs, overwrite=False
) -> dict:
    """Write planned ``files`` (and ``index``) into ``folder`` from ``produce``, atomically (:func:`write_tensors`);
    a ``checkpoint`` is not written among model files it would not replace; into a folder, files there already
    are replaced only with ``overwrite``."""
    names = [f.name for f in files] + ([index["name"]] if index is not None else [])
    for name in names:
        refuse_overwriting(folder / name, inputs or {})  # a stream's file names may be any (spec 6.2.1)
    if checkpoint:
        _refuse_mixing(folder, set(names))
    if into_folder and not overwrite:
        _refuse_replacing(folder, names)
    created = into_folder and not folder.exists()  # a file's folder must exist
    if created:
        folder.mkdir(parents=True)
    temporary = TemporaryFiles(folder)
    sinks: dict[str, _Sink] = {}
    try:
        for f in files:
            sinks[f.name] = _SINKS[f.format](f, temporary.new(f.name), temporary.new)
        sink_of = {t.name: sinks[f.name] for f in files for t in f.tensors}
        total_bytes = sum(t.nbytes for f in files for t in f.tensors)
        done = dict(tensors=0, bytes=0)
        n_tensors = len(sink_of)
        nbytes = {t.name: t.nbytes for f in files for t in f.tensors}
        if progress is not None:
            progress(DecodeProgress(None, 0, n_tensors, 0, total_bytes))
        for name, array in produce(list(sink_of), lambda info: sink_of[info.name].buffer(info)):
            sink_of[name].take(name, array)
            del array
            done["tensors"] += 1
            done["bytes"] += nbytes[name]
            if progress is not None:
                progress(DecodeProgress(name, done["tensors"], n_tensors, done["bytes"], total_bytes))
        for sink in sinks.values():
            sink.close()
        extra = [name for name in temporary.temps if name not in {f.name for f in files}]  # (an ONNX model's data)
        for name in extra:
            refuse_overwriting(folder / name, inputs or {})
        if index is not None:
            with open(temporary.new(index["name"]), "wb") as fh:
                fh.write(_index_json(index, files))
        order = extra + names  # (external data renamed before the model naming it)
        with (
            new_files_only(*(folder / n for n in order)) if into_folder and not overwrite else contextlib.nullcontext()
        ):
            written = temporary.commit(order)  # the whole checkpoint or none (nor one appeared meanwhile, unasked)
    except BaseException as exc:
        for sink in sinks.values():
            try:
                sink.abort()
            except Exception:
                pass
        temporary.discard()
        if created:
            try:
                folder.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):  # named by the user's path, not a temporary file's (or none: a full disk)
            named = temporary.user_error(exc, folder / files[0].name if len(files) == 1 else folder)
            if named is not None:
                raise named from None
        raise
    return dict(
        files=written,
        tensors=done["tensors"],
        bytes=done["bytes"],
        weights=sum(math.prod(t.shape) for f in files for t in f.tensors),
    )


def _decode_in_memory(
    dec: Decoder, output, wanted, template, threads, progress, add_to=None, inputs=None, overwrite=False
) -> dict:
    """Updates added to a model (``add_to``): the whole model is decoded and added to the model, then written, into
    a folder in the model's own checkpoint layout or into one file."""
    from .formats import format_from_extension, write_model

    into_folder = is_directory_target(output)
    fmt = None if into_folder else format_from_extension(output)
    previous = layout = None
    if add_to is not None:
        from .models import load_model
        from .readers import open_model

        refuse_full_values(dec, "decode it without --add-to")  # (before the model is read)
        source = open_model(add_to)  # a file, a checkpoint folder or its index
        previous = load_model(source)
        layout = (previous[2] or {}).get("checkpoint")
        added_files = source.files  # every shard is an input
    if previous is not None and dec.differences:
        from .decoder import check_update_parent
        from .errors import UpdateError

        try:  # before decoding: a replayed update is refused before it touches a decoder state
            check_update_parent(previous[0], dec.parent, dec.narrow)
        except UpdateError as exc:
            raise UpdateError(f"{os.fspath(add_to)}: {exc.message}", clause=exc.clause) from None

    tensors = _model_tensors(dec, wanted)
    total = sum(t.nbytes for t in tensors.values())
    if progress is not None:
        progress(DecodeProgress(None, 0, len(tensors), 0, total))
    decoded, done = DecodedTensors().take_attributes(dec), 0  # (apply_update refuses full values)
    for name, array in dec.iter_tensors(list(tensors), threads=threads):
        decoded[name] = array
        done += tensors[name].nbytes
        if progress is not None:
            progress(DecodeProgress(name, len(decoded), len(tensors), done, total))
    view, dtypes = restore_model_view(decoded, dec.metadata)
    if previous is not None:
        from .decoder import apply_update

        try:
            view = apply_update(previous[0], view, check_parent=False)  # (checked above)
        except ValueError as exc:
            from .formats import FormatError

            raise FormatError(f"{os.fspath(add_to)}: {exc}") from None
        # the model's dtypes, but a tensor sent whole (spec 6.2.1 "replaced") or new has the update's
        kept = {k: v for k, v in previous[1].items() if k in previous[0] and k not in dec.replaced}
        dtypes = dict({k: v for k, v in dtypes.items() if k not in previous[0] or k in dec.replaced}, **kept)
    if into_folder:
        return _write_folder_from_memory(
            Path(output), view, dtypes, layout, {"model added to": added_files, **(inputs or {})}, overwrite
        )
    own = {"checkpoint": layout} if add_to is not None else dec.metadata  # the file metadata to write back
    write_model(
        os.fspath(output), view, dtypes, fmt=fmt, template=template, metadata=single_file_metadata(own, fmt or "")
    )
    return dict(
        files=[os.fspath(output)],
        tensors=len(view),
        bytes=total,
        weights=sum(int(np.asarray(v).size) for v in view.values()),  # the model written (with --add-to, all of it)
    )
