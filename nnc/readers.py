"""Lazy model readers: a model's tensors one at a time, for encoding models of any size.

:func:`open_model` opens a model file or a sharded checkpoint (a folder with
``model.safetensors.index.json``, or that index itself) and returns a
:class:`ModelSource`: every tensor's name, shape and dtypes known from the
headers up front, and its values read only when :meth:`LazyTensor.load` is
called, then released by the caller.  No reader materialises the whole model:

* safetensors: each tensor is read from the file when loaded (not mapped: a file cut meanwhile is a FormatError);
* PyTorch ``.bin``/``.pt``: ``torch.load(mmap=True)`` (zip files; legacy files are read whole);
* ONNX: initializers with external data are read from their files when loaded;
* npz: member by member.

The layout of a checkpoint (its shard files, each file's ``__metadata__``, the
index's metadata, which file holds which tensor) is :attr:`ModelSource.checkpoint`,
the dictionary the encoder records as the topology metadata key "checkpoint"
(spec 6.2.1).

Examples
--------
>>> import numpy as np, tempfile, os
>>> from nnc import readers
>>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
>>> np.savez(path, w=np.ones((2, 3), np.float32), n=np.int64(7))
>>> src = readers.open_model(path)
>>> [(t.name, t.shape, t.dtype) for t in src]
[('w', (2, 3), 'float32'), ('n', (), 'int64')]
>>> float(src["w"].load().sum())
6.0
"""

from __future__ import annotations

import collections
import ctypes
import functools
import json
import math
import mmap
import os
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from . import formats, narrow_floats
from ._files import cannot_open, naming
from .formats import FormatError

#: Index files of sharded checkpoints, by format, in the order they are looked for in a folder.
INDEX_NAMES = {"safetensors": "model.safetensors.index.json", "pt": "pytorch_model.bin.index.json"}


@dataclass
class LazyTensor:
    """One tensor of a model, known by its header; :meth:`load` reads its values.

    Attributes
    ----------
    name : str
    shape : tuple
    dtype : str
        The numpy dtype name :meth:`load` returns (``"float32"`` for bfloat16 and float8 tensors).
    original_dtype : str
        The dtype the file holds (``"bfloat16"``, ``"float8_e4m3fn"``, ``"float16"``, ``"int64"``...).
    file : int or None
        Index of the checkpoint file that holds it (:attr:`ModelSource.checkpoint` "files").
    loader : callable
        Returns the values as a numpy array (a fresh array the caller owns).
    data_path : str or None
        The file its values are read from when that is not the model file (ONNX external data).
    quantisation_parameter : bool
        The model's graph uses it as a scale or zero point of quantised weights
        (:func:`nnc.formats.onnx_quantisation_parameters`).
    same_as : str or None
        The name of an earlier tensor of the same file whose values this one shares (tied weights: one
        storage in a .pt file, one array in memory), or None.
    """

    name: str
    shape: tuple
    dtype: str
    original_dtype: str
    loader: Callable[[], np.ndarray] = field(repr=False)
    file: int | None = None
    data_path: str | None = None
    quantisation_parameter: bool = False
    same_as: str | None = None

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the loaded array."""
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def original_bits(self) -> int:
        """Bits per element in the file's dtype (16 for bfloat16, 8 for float8)."""
        return 8 * narrow_floats.itemsize(self.original_dtype)

    def load(self) -> np.ndarray:
        """The values (bfloat16 and float8 as float32, exactly)."""
        return self.loader()


class ModelSource:
    """A model's tensors in file order, loaded one at a time.

    Attributes
    ----------
    path : str
        What was opened.
    format : str or None
        ``"safetensors"``, ``"pt"``, ``"onnx"`` or ``"npz"`` (None for a checkpoint index that names no tensors).
    tensors : list of LazyTensor
    checkpoint : dict or None
        For a sharded checkpoint, its layout: {"format", "index" (optional), "files", "file_of"}
        as recorded in the stream (spec 6.2.1); for a single safetensors file with a
        ``__metadata__``, the same with one file; else None.
    files : list of str
        Every file the tensors are read from: the model file or the index and its shards, and
        ONNX external data files (an output must not be one of them).
    left_out : list of str
        Entries of the file that are not encoded: a PyTorch checkpoint's entries that are not
        tensors or lie beside its state_dict (``"optimizer"``, ``"model/_extra_state"``; in a
        sharded checkpoint prefixed by the shard's file name); an ONNX model's sparse initializers
        and sparse Constant nodes, and its STRING initializers and integer ones beyond int32
        (kept in the graph); the shard files beside a checkpoint index that it does not name.
    """

    def __init__(
        self,
        path,
        fmt: str | None,
        tensors: list[LazyTensor],
        checkpoint: dict | None = None,
        left_out: list[str] | None = None,
    ):
        self.path = os.fspath(path)
        self.format = fmt
        self.tensors = tensors
        self.checkpoint = checkpoint
        self.left_out = list(left_out or [])
        folder = os.path.dirname(self.path)
        shards = [os.path.join(folder, f["name"]) for f in (checkpoint or {}).get("files", [])] if checkpoint else []
        external = [t.data_path for t in tensors if t.data_path]
        self.files = list(dict.fromkeys([self.path, *shards, *external]))
        self._by_name = {t.name: t for t in tensors}
        if len(self._by_name) != len(tensors):
            seen: set[str] = set()
            for t in tensors:
                if t.name in seen:
                    raise FormatError(f"{self.path}: tensor {t.name!r} appears twice")
                seen.add(t.name)

    def __iter__(self) -> Iterator[LazyTensor]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, name: str) -> LazyTensor:
        return self._by_name[name]

    def __contains__(self, name) -> bool:  # (a name, not a LazyTensor, as for a mapping)
        return name in self._by_name

    @property
    def dtypes(self) -> dict:
        """{name: original dtype name}, as :func:`nnc.formats.read_model` returns them."""
        return {t.name: t.original_dtype for t in self.tensors}

    def load_all(self) -> "OrderedDict[str, np.ndarray]":
        """Every tensor's values, in order; a tensor that shares another's values (:attr:`LazyTensor.same_as`) as
        the same array, read once."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for t in self.tensors:
            out[t.name] = out[t.same_as] if t.same_as is not None and t.same_as in out else t.load()
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the model in its original dtypes (tensors that share values counted once)."""
        return sum(t.size * t.original_bits // 8 for t in self.tensors if t.same_as is None)


def open_model(path) -> ModelSource:
    """Open a model file or a sharded checkpoint for lazy reading.

    Parameters
    ----------
    path : str or ``os.PathLike``
        A model file (format detected by content), a folder holding a sharded checkpoint
        (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json`` and its shards,
        or a single model file), or such an index file itself.

    Returns
    -------
    ModelSource

    Raises
    ------
    nnc.formats.FormatError
        If the path is not a readable model, an index names a missing shard or a tensor
        its shard lacks, or a header is damaged.
    """
    p = Path(path)
    if p.is_dir():
        for name in INDEX_NAMES.values():
            if (p / name).is_file():
                return _open_index(p / name)
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        # (not .ckpt: beside a model, a training checkpoint, e.g. Lightning's last.ckpt; give it by its path)
        models = [f for f in files if f.suffix.lower().lstrip(".") in formats.MODEL_EXTENSIONS.keys() - {"ckpt"}]
        if len(models) == 1:
            return open_model(models[0])
        raise FormatError(
            f"{p}: a folder without {INDEX_NAMES['safetensors']} "
            f"({len(models)} model files in it; give the file or the index)"
        )
    if p.name.endswith(".index.json"):
        return _open_index(p)
    fmt = formats.detect_format(p)
    if fmt == "nnr":
        raise FormatError(f"{p} is an NNC stream, not a model; use decode")
    tensors, metadata, left_out = _READERS[fmt](p, None)
    checkpoint = None
    if metadata:  # a safetensors __metadata__ ({"format": "pt"}...), a state_dict's _metadata: restored on decoding
        checkpoint = single_file_layout(fmt, (t.name for t in tensors), metadata, p.name)
    return ModelSource(p, fmt, tensors, checkpoint, left_out=left_out)


def single_file_layout(fmt: str, names, metadata, file_name: str | None = None) -> dict:
    """The checkpoint layout (spec 6.2.1) of one model file with file-level metadata.

    A safetensors ``__metadata__`` or a state_dict's ``_metadata`` is kept this way, so that
    decoding to that format writes it back.

    Parameters
    ----------
    fmt : str
        The file's format ("safetensors", "pt", ...).
    names : iterable of str
        Its tensors' names.
    metadata : dict
        Its metadata (a safetensors ``__metadata__``, :func:`nnc.formats.state_dict_metadata`'s).
    file_name : str, optional
        Its name; ``model.<fmt>`` when not given or not one the decoder writes
        (:func:`nnc.writers.is_safe_file_name`).

    Returns
    -------
    dict
        ``{"format", "files": [{"name", "metadata"}], "file_of"}``.

    Examples
    --------
    >>> from nnc.readers import single_file_layout
    >>> single_file_layout("safetensors", ["w", "b"], {"format": "pt"}, "m.safetensors")["files"]
    [{'name': 'm.safetensors', 'metadata': {'format': 'pt'}}]
    >>> single_file_layout("pt", ["w"], {"": {"version": 1}}, "a\\\\b.pt")["files"][0]["name"]
    'model.pt'
    """
    from .writers import is_safe_file_name  # the decoder's rule: a name it would refuse is not recorded

    return {
        "format": fmt,
        "files": [{"name": file_name if is_safe_file_name(file_name) else f"model.{fmt}", "metadata": metadata}],
        "file_of": dict.fromkeys(names, 0),
    }


#: Largest checkpoint index read (bytes): an index of 100,000 tensors takes about 10 MB; as the safetensors header's.
MAX_INDEX_BYTES = 100_000_000


def _open_index(index_path: Path) -> ModelSource:
    try:
        size = index_path.stat().st_size
    except OSError as exc:
        raise FormatError(f"cannot read {index_path}: {exc.strerror}") from None
    if size > MAX_INDEX_BYTES:  # (its JSON would take tens of times that in memory)
        raise FormatError(f"{index_path}: a checkpoint index of {size:,} bytes, more than the {MAX_INDEX_BYTES:,} read")
    try:
        index, repeated = _json_noting_repeated_keys(index_path.read_text())
        if not isinstance(index, dict):
            raise TypeError(f"a JSON {type(index).__name__}, not an object with a weight_map")
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a mapping of tensor names to file names")
    except OSError as exc:
        raise FormatError(f"cannot read {index_path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{index_path}: not a checkpoint index ({type(exc).__name__}: {exc})") from None
    if repeated:
        where, key = repeated[0]
        what = f"tensor {key!r}" if where is weight_map else f"key {key!r}"
        raise FormatError(f"{index_path}: {what} appears twice in the index")
    if index.get("metadata") is not None and not isinstance(index["metadata"], dict):
        raise FormatError(f"{index_path}: the index's metadata is not a JSON object")
    folder = index_path.parent
    file_names = sorted(set(weight_map.values()))  # model-00001-of-... first
    files: list[dict] = []
    by_name: dict[str, LazyTensor] = {}
    shard_of: dict[str, str] = {}
    left_out: list[str] = []
    fmt: str | None = None
    for i, file_name in enumerate(file_names):
        shard = folder / file_name
        if Path(file_name).name != file_name:  # (the decoder writes shards beside the index, by these names)
            raise FormatError(
                f"{index_path}: shard {file_name!r} is not a file name in the index's folder (nnc reads shards "
                "beside their index, as checkpoints keep them)"
            )
        if not shard.is_file():
            raise FormatError(f"{index_path}: shard {file_name!r} {_not_a_file(shard)} in {folder}")
        shard_fmt = formats.detect_format(shard)
        if fmt is None:
            fmt = shard_fmt
        elif shard_fmt != fmt:
            raise FormatError(f"{shard}: a {shard_fmt} shard among {fmt} shards")
        if fmt not in ("safetensors", "pt"):
            raise FormatError(f"{shard}: sharded checkpoints of {fmt} files are not supported")
        tensors, metadata, shard_left_out = _READERS[fmt](shard, i)
        left_out += [f"{file_name}: {entry}" for entry in shard_left_out]
        files.append({"name": file_name, "metadata": metadata or {}})
        for t in tensors:
            if t.name in shard_of:
                raise FormatError(
                    f"{index_path}: tensor {t.name!r} is in two shards, {shard_of[t.name]!r} and {file_name!r}"
                )
            by_name[t.name], shard_of[t.name] = t, file_name
    ordered = []
    for name, file_name in weight_map.items():
        t = by_name.get(name)
        if t is None or t.file is None or file_names[t.file] != file_name:
            raise FormatError(f"{index_path}: tensor {name!r} is not in its shard {file_name!r}")
        ordered.append(t)
    unindexed = sorted(set(by_name) - set(weight_map))
    if unindexed:
        raise FormatError(f"{index_path}: shard tensor {unindexed[0]!r} is not in the index's weight_map")
    left_out += [f"{name} (a shard the index does not name)" for name in _unindexed_shards(index_path, file_names)]
    checkpoint: dict[str, Any] = {"format": fmt, "files": files, "file_of": {t.name: t.file for t in ordered}}
    checkpoint["index"] = {"name": index_path.name, "metadata": index.get("metadata") or {}}
    return ModelSource(index_path, fmt, ordered, checkpoint, left_out=left_out)


def _unindexed_shards(index_path: Path, file_names: list[str]) -> list[str]:
    """Files beside the index with a shard's extension (".safetensors" for model.safetensors.index.json)
    that the index does not name."""
    suffixes = {Path(name).suffix for name in file_names} | {Path(index_path.name.removesuffix(".index.json")).suffix}
    suffixes.discard("")
    return sorted(
        f.name
        for f in index_path.parent.iterdir()
        if f.suffix in suffixes and f.name not in file_names and f.is_file() and not f.name.startswith(".")
    )


def _json_noting_repeated_keys(text) -> tuple[Any, list[tuple[dict, str]]]:
    """``json.loads(text)``, and the keys that appear twice in one object (json.loads keeps the last),
    each with the object that holds it."""
    repeated: list[tuple[dict, str]] = []

    def to_dict(pairs):
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                repeated.append((obj, key))
            obj[key] = value
        return obj

    def refuse(constant):
        raise ValueError(f"{constant} is not a JSON value")

    try:
        return json.loads(text, object_pairs_hook=to_dict, parse_constant=refuse), repeated
    except RecursionError:  # hostile nesting: report it as the malformed JSON it is
        raise ValueError("JSON nested too deeply") from None


# -- safetensors: header parsed up front, each tensor memory-mapped when loaded -------------


def file_identity(stat: os.stat_result) -> tuple:
    """What tells a file from the one read before at its path: device, inode, size, modification time."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def path_identity(path) -> tuple | None:
    """:func:`file_identity` of the file at ``path``, None if there is none."""
    try:
        return file_identity(os.stat(path))
    except FileNotFoundError:
        return None


#: The most JSON objects a safetensors header may hold (one a tensor, and its metadata's): a million tensors a file.
MAX_SAFETENSORS_OBJECTS = 1_000_000


def _safetensors_header(path: Path) -> tuple[dict, int, int, tuple]:
    """The header, where the data starts, its size, and the :func:`file_identity` of the file they were read from."""
    try:
        with open(path, "rb") as fh:
            stat = os.fstat(fh.fileno())
            size = stat.st_size
            head = fh.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: too short for safetensors")
            (hlen,) = struct.unpack("<Q", head)
            if 8 + hlen > size:
                raise FormatError(f"{path}: safetensors header runs past the end of the file")
            if hlen >= formats.MAX_SAFETENSORS_HEADER:
                raise FormatError(
                    f"{path}: safetensors header of {hlen:,} bytes, more than the "
                    f"{formats.MAX_SAFETENSORS_HEADER:,} read"
                )
            raw = fh.read(hlen)
            objects = raw.count(b"{")  # (parsed, each costs some 300 bytes: a 91 MB header of {} took 2.2 GB)
            if objects > MAX_SAFETENSORS_OBJECTS:
                raise FormatError(
                    f"{path}: safetensors header of {objects:,} objects, more than the {MAX_SAFETENSORS_OBJECTS:,} "
                    "read (one a tensor)"
                )
            header, repeated = _json_noting_repeated_keys(raw)
    except FormatError:
        raise
    except OSError as exc:
        raise FormatError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise FormatError(f"{path}: safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    if repeated:
        where, key = repeated[0]
        what = f"tensor {key!r}" if where is header and key != "__metadata__" else f"key {key!r}"
        raise FormatError(f"{path}: {what} appears twice in the header")
    return header, 8 + hlen, size - 8 - hlen, file_identity(stat)


def _read_safetensors(path: Path, file_index):
    header, base, body_size, identity = _safetensors_header(path)
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise FormatError(f"{path}: safetensors __metadata__ is not a JSON object of strings")
    out = []
    covered = 0  # the tensors' bytes follow one another from the start of the data to its end (no gap, no overlap)
    try:
        for name, info in header.items():
            if name != "__metadata__" and not (isinstance(info, dict) and isinstance(info.get("data_offsets"), list)):
                raise FormatError(f"{path}: the header's entry of {name!r} is not an object with data_offsets")
        items = sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__"),
            key=lambda kv: (kv[1]["data_offsets"][0], kv[1]["data_offsets"][1]),  # an empty tensor before its peer
        )
        for name, info in items:
            start, end = info["data_offsets"]
            shape = formats._dims(f"{path}: tensor {name!r}", info["shape"])
            st = info["dtype"]
            offsets_are_ints = all(isinstance(o, int) and not isinstance(o, bool) for o in (start, end))
            if not offsets_are_ints or not 0 <= start <= end <= body_size:
                raise FormatError(f"{path}: tensor {name!r} lies outside the file")
            if start != covered:
                what = "overlaps the tensor before it" if start < covered else f"leaves {start - covered} bytes unused"
                raise FormatError(f"{path}: tensor {name!r} (data_offsets [{start}, {end}]) {what}")
            covered = end
            narrow = narrow_floats.BY_SAFETENSORS_CODE.get(st)
            if narrow is not None:
                stored, dtype, original = narrow_floats.NARROW_FLOATS[narrow].storage, "float32", narrow
            elif st in formats._ST_DTYPES:
                stored = np.dtype(formats._ST_DTYPES[st])
                dtype = original = stored.newbyteorder("=").name
            else:
                raise FormatError(f"{path}: unsupported safetensors dtype {st} for {name!r}")
            if math.prod(shape) * stored.itemsize != end - start:
                raise FormatError(f"{path}: tensor {name!r}: shape {list(shape)} does not fit its {end - start} bytes")
            out.append(
                LazyTensor(
                    name,
                    shape,
                    dtype,
                    original,
                    _safetensors_loader(path, base + start, stored, shape, narrow, identity),
                    file_index,
                )
            )
    except FormatError:
        raise  # (a ValueError too) already says what is wrong
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise FormatError(f"{path}: malformed safetensors header ({type(exc).__name__}: {exc})") from None
    if covered != body_size:
        raise FormatError(f"{path}: {body_size - covered} bytes after the last tensor's data")
    return out, metadata, []


def _read_values(path, stored: np.dtype, offset: int, count: int, identity: tuple | None = None) -> np.ndarray:
    """``count`` values of ``stored`` at ``offset`` of the file, read into a new array (not memory-mapped: a file cut
    by another program while nnc reads it would end the process with SIGBUS at a page of the map); a file shorter
    than that now (changed or cut since its header was read), or, with ``identity``, another file at the path or
    one rewritten since (a checkpoint saved again by rename: the model would mix two files) is a FormatError naming
    it."""
    values = np.empty(count, stored)
    view = values.reshape(-1).view(np.uint8).data
    done = 0
    with open(path, "rb", buffering=0) as fh:
        _check_identity(path, fh, identity)
        fh.seek(offset)
        while done < len(view):
            n = fh.readinto(view[done:])
            if not n:
                raise FormatError(
                    f"{path}: the file ends before the tensor data its header places there (changed or cut while "
                    "being read?)"
                )
            done += n
        _check_identity(path, fh, identity)  # (rewritten in place while this tensor was read)
    return values


def _check_identity(path, fh, identity: tuple | None) -> None:
    if identity is not None and file_identity(os.fstat(fh.fileno())) != identity:
        raise FormatError(
            f"{path}: the file changed since nnc opened it (replaced or rewritten by another program): its tensors "
            "would mix two files; try again once it is written"
        )


def _safetensors_loader(path: Path, offset: int, stored: np.dtype, shape: tuple, narrow: str | None, identity: tuple):
    def load() -> np.ndarray:
        count = math.prod(shape)
        raw = _read_values(path, stored, offset, count, identity) if count else np.zeros(shape, stored)
        if narrow is not None:  # a format numpy lacks: as float32, exactly
            return narrow_floats.to_float32(narrow, raw).reshape(shape)
        return raw.astype(stored.newbyteorder("="), copy=False).reshape(shape)

    return load


# -- PyTorch: torch.load(mmap=True) ---------------------------------------------------------


def _read_pt(path: Path, file_index):
    torch = formats._torch()
    if formats._is_torchscript(path):
        raise FormatError(
            f"{path}: a TorchScript archive, not a state_dict; save model.state_dict() with torch.save and encode that"
        )
    try:
        with open(path, "rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
        mapped = _MappedFile(path) if is_zip else None
        with warnings.catch_warnings():  # torch's deprecation notes on what a file holds: the user did not call torch
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # torch raises many types on bad files
        raise FormatError(f"{path}: {formats._pt_load_problem(exc, path)}") from None
    if is_zip:  # (a memory-mapped load takes a storage's record as long as the pickle says, whatever it holds)
        _refuse_short_storage_records(path)
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: not a state_dict (a mapping of names to tensors)")
    obj, left_out = formats._unwrap_checkpoint(path, obj)
    recorded = getattr(obj, "_metadata", None)
    metadata = formats.state_dict_metadata(recorded)
    if metadata is None and recorded is not None and not (isinstance(recorded, dict) and not recorded):
        left_out.append("_metadata (module versions not of the form JSON can carry)")
    out = []
    first: dict = {}  # the first tensor of each view of a storage
    for name, v in obj.items():
        if not hasattr(v, "detach"):
            continue  # (in left_out)
        original = str(v.dtype).replace("torch.", "")
        dtype = "float32" if narrow_floats.is_narrow(original) else original
        if original not in _PT_DTYPES:  # other torch-only dtypes: no numpy array to hand on
            raise FormatError(f"{path}: unsupported dtype {original} for {name!r}")
        if v.layout != torch.strided:
            raise FormatError(f"{path}: tensor {name!r}: sparse tensors are not supported; save .to_dense()")
        if v.is_meta:
            raise FormatError(f"{path}: tensor {name!r}: a meta tensor has no data")
        tensor = LazyTensor(name, tuple(v.shape), dtype, original, _pt_loader(v, torch, mapped), file_index)
        if v.numel():  # tied weights: one view of one storage
            view = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
            if view in first:
                tensor.same_as = first[view]
            else:
                first[view] = name
        out.append(tensor)
    if mapped is not None:
        mapped.guard([v for v in obj.values() if hasattr(v, "untyped_storage")])
    return out, metadata or {}, left_out


def _refuse_short_storage_records(path: Path) -> None:
    """A FormatError if a storage of a zip-format .pt file needs more bytes than its record holds: torch.load with
    mmap=True reads past such a record's end (into the next entry of the zip) without a word. An archive whose
    storages cannot be told for sure (two records of one name, not one data.pkl, a pickle this reading does not
    follow though torch's did) is refused too: the check is not to be turned off by the file it checks."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            twice = next((name for name, count in collections.Counter(names).items() if count > 1), None)
            if twice is not None:
                raise FormatError(f"{path}: the archive holds {twice!r} twice")
            pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(pickles) != 1:
                raise FormatError(f"{path}: the archive holds {len(pickles)} data.pkl records, not one")
            prefix = pickles[0].filename[: -len("data.pkl")]
            sizes = {i.filename: i.file_size for i in infos}
            with zf.open(pickles[0]) as fh:
                storages = _PickledStorages(fh).storages_of()
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 (torch.load read it, so a failure here is the file's)
        raise FormatError(f"{path}: its storages cannot be checked against their records ({exc})") from None
    torch = formats._torch()
    for type_name, key, numel in storages:
        storage_type = getattr(torch, type_name.rpartition(".")[2], None) if type_name.startswith("torch.") else None
        with warnings.catch_warnings():  # (torch's note that typed storages are deprecated: the file names them)
            warnings.simplefilter("ignore")
            dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int):
            continue
        needed, held = numel * dtype.itemsize, sizes.get(f"{prefix}data/{key}", 0)
        if held < needed:
            raise FormatError(f"{path}: storage {key} needs {needed:,} bytes, its record holds {held:,}: damaged file")


class _PickledStorages(pickle.Unpickler):
    """Reads a .pt file's data.pkl for its storages' (type, key, element count), building nothing: every class it
    names is a stand-in (:class:`_StandIn`), so no code of the file's runs."""

    def __init__(self, fh):
        super().__init__(fh)
        self.storages: list[tuple[str, str, object]] = []
        self.classes: dict[tuple[str, str], type] = {}  # (one stand-in a name: a pickle may name one many times)

    def find_class(self, module, name):
        key = (str(module), str(name))
        if key not in self.classes:
            self.classes[key] = type("StandIn", (_StandIn,), {"pickled_name": f"{key[0]}.{key[1]}"})
        return self.classes[key]

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            self.storages.append((getattr(pid[1], "pickled_name", ""), str(pid[2]), pid[4]))
        return _StandIn()

    def storages_of(self) -> list:
        self.load()
        return self.storages


class _StandIn:
    """Any object of a pickle read by :class:`_PickledStorages`: takes every argument, state and item, keeps none."""

    pickled_name = ""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _StandIn()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _MappedFile:
    """The file torch.load(mmap=True) maps, watched while its tensors are read: a file cut meanwhile would end the
    process (SIGBUS) at a page past its new end; the storages' memory is guarded (nnc.decoder.GuardedMap's
    mechanism), so such a page reads zeros, and :meth:`check` refuses what was read (and a file changed since)."""

    def __init__(self, path: Path):
        self.path = path
        self.identity = path_identity(path)  # (before torch opens it: a file replaced meanwhile is told)
        self.slots: list[int] = []
        self.tensors: list = []  # kept: the map lives while a slot guards it
        from .decoder import _mapguard

        self._mapguard = _mapguard  # (kept: __del__ may run when imports no longer work)

    def guard(self, tensors: list) -> None:
        _mapguard = self._mapguard
        self.check()
        if _mapguard is None:
            return
        spans: list[list[int]] = []
        for start, length in sorted({(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}):
            if length and spans and start <= spans[-1][1] + 4096:  # (one map: zip headers between storages)
                spans[-1][1] = max(spans[-1][1], start + length)
            elif length:
                spans.append([start, start + length])
        self.tensors = tensors
        self.slots = [slot for start, end in spans if (slot := _mapguard.add_range(start, end - start)) >= 0]

    def check(self) -> None:
        """FormatError if the file was cut or changed since it was mapped (what was read past a cut is zeros)."""
        _mapguard = self._mapguard
        try:
            changed = path_identity(self.path) != self.identity
        except OSError:
            changed = True
        if changed or (_mapguard is not None and any(_mapguard.faulted(slot) for slot in self.slots)):
            raise FormatError(
                f"{self.path}: the file was cut or changed by another program while its tensors were read; nothing "
                "read from it is used"
            )

    def release(self, tensor) -> None:
        """Drop the pages of ``tensor``'s storage from resident memory once its values are copied: a later read
        pages them in again from the file (the map is private and never written)."""
        storage = tensor.untyped_storage()
        _release_address_range(storage.data_ptr(), storage.nbytes())

    def __del__(self) -> None:
        _mapguard = getattr(self, "_mapguard", None)
        if _mapguard is not None:
            for slot in self.slots:  # before the tensors (and so the map) go
                _mapguard.remove(slot)
        self.slots = []


def _release_address_range(address: int, length: int) -> None:
    """Drop the whole pages of a file map's [address, address + length) from resident memory (madvise
    MADV_DONTNEED) for a map not made by Python's mmap module; nothing where the platform lacks madvise.

    Only for private maps that were never written (a read pages the file in again) or shared file maps.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    start = -(-address // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (address + length) // mmap.PAGESIZE * mmap.PAGESIZE
    if advice is None or end <= start or _libc() is None:
        return
    _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(advice))


@functools.cache
def _libc():
    """The C library, with madvise declared; None if it cannot be loaded."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


#: The torch dtypes a .pt tensor may have: those ``Tensor.numpy()`` converts, and bfloat16 and float8 (read as
#: float32).
_PT_DTYPES = frozenset(
    [
        "float16",
        "float32",
        "float64",
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "complex64",
        "complex128",
    ]
)


def _pt_loader(tensor, torch, mapped: "_MappedFile | None" = None):
    def load() -> np.ndarray:
        t = tensor.detach()
        name = str(t.dtype).replace("torch.", "")
        if narrow_floats.is_narrow(name):  # its bits as numpy reads them, widened exactly
            bits = torch.uint16 if narrow_floats.itemsize(name) == 2 else torch.uint8
            values = narrow_floats.to_float32(name, t.view(bits).numpy())
        else:  # numpy's copy, not torch's clone: 16 MB clones left the heap about 5 MB larger each
            values = np.array(t.numpy(), order="C", copy=True)
        if mapped is not None:
            mapped.check()
            mapped.release(t)  # the file's pages: without this the whole file ended up resident
        return values

    return load


# -- ONNX: external data memory-mapped --------------------------------------------------------


def _read_onnx(path: Path, file_index):
    onnx, numpy_helper = formats._onnx()
    try:
        model = formats.load_onnx_graph(path)  # (tensor data left in the file, read one tensor at a time)
    except Exception as exc:
        raise FormatError(f"{path}: cannot load as ONNX: {exc}") from None

    kept: list[str] = []  # initializers no stream holds, left in the graph
    try:
        values = functools.partial(onnx_initializer_values, path)  # (of integers, to tell whether they fit int32)
        weights = formats._onnx_weights(model.graph, values=values, kept=kept)  # initializers, Constants, subgraphs
        scales = formats.onnx_quantisation_parameters(model.graph)
    except FormatError as exc:
        raise FormatError(exc.message if exc.message.startswith(f"{path}: ") else f"{path}: {exc}") from None
    except TypeError as exc:  # protobuf gives a name that is not UTF-8 as bytes
        raise FormatError(f"{path}: damaged ONNX model (a name or operator type is not text: {exc})") from None
    out = []
    for name, init in weights.items():
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
        except Exception as exc:
            raise FormatError(f"{path}: damaged ONNX initializer {name!r}: {exc}") from None
        shape = formats._dims(f"{path}: damaged ONNX initializer {name!r}", init.dims)
        data_path = None
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loader, data_path = _onnx_external_loader(path, init, dtype, shape, onnx, numpy_helper)
        else:
            loader = _onnx_loader(path, init, numpy_helper)
        in_model = data_path is not None and data_path == path.resolve()  # (its raw data left in the model file)
        data_file = None if in_model else os.fspath(data_path or "") or None
        out.append(LazyTensor(name, shape, dtype.name, dtype.name, loader, file_index, data_file, name in scales))
    return out, {}, kept + formats._onnx_sparse_weights(model.graph)


def onnx_initializer_values(path, init) -> np.ndarray:
    """The array of an ONNX initializer of the model file ``path``, its data inline or external (read from the
    model's folder, which it may not leave: FormatError naming ``path``).

    Parameters
    ----------
    path : str or ``os.PathLike``
        The model file the initializer belongs to.
    init : ``onnx.TensorProto``

    Returns
    -------
    ``numpy.ndarray``

    Examples
    --------
    >>> import os, tempfile, numpy as np, onnx
    >>> from onnx import helper, numpy_helper
    >>> from nnc.readers import onnx_initializer_values
    >>> init = numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")
    >>> onnx_initializer_values("m.onnx", init).tolist()
    [0.0, 1.0, 2.0]
    """
    onnx, numpy_helper = formats._onnx()
    path = Path(path)
    if init.data_location != onnx.TensorProto.EXTERNAL:
        return _onnx_loader(path, init, numpy_helper)()
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
    except Exception as exc:
        raise FormatError(f"{path}: damaged ONNX initializer {init.name!r}: {exc}") from None
    shape = formats._dims(f"{path}: damaged ONNX initializer {init.name!r}", init.dims)
    return _onnx_external_loader(path, init, dtype, shape, onnx, numpy_helper)[0]()


def onnx_external_bytes(path, init) -> bytes:
    """The bytes of an ONNX tensor's external data (``offset`` and ``length`` as it names them), read from the
    folder of the model file ``path``, which it may not leave (FormatError naming ``path``)."""
    path = Path(path)
    data_path, info = _onnx_external_file(path, init)
    offset, length = (_external_data_int(path, init, info, key) for key in ("offset", "length"))
    with open(data_path, "rb") as fh:
        fh.seek(offset or 0)
        data = fh.read(-1 if length is None else length)
    if length is not None and len(data) != length:
        raise FormatError(f"{path}: external data of {init.name!r} ({info['location']}) is missing or too short")
    return data


def _onnx_external_file(path: Path, init) -> tuple[Path, dict]:
    """(the file, the entries) of a tensor's external data; the file must lie in the model's folder, or be the model
    file itself (as ``formats.load_onnx_graph`` locates the large tensors it reads in place: a model reached by a
    symbolic link, as in the Hugging Face cache, resolves elsewhere)."""
    info = {e.key: e.value for e in init.external_data}
    location = info.get("location", "")
    if not location:
        raise FormatError(f"{path}: initializer {init.name!r} has external data without a location")
    data_path = (path.parent / location).resolve()
    itself = location == path.name and data_path == path.resolve()
    if not itself and (Path(location).is_absolute() or path.parent.resolve() not in data_path.parents):
        raise FormatError(f"{path}: initializer {init.name!r} has external data outside the model's folder")
    if not data_path.is_file():
        raise FormatError(f"{path}: external data of {init.name!r} ({location}) {_not_a_file(data_path)}")
    return data_path, info


def _not_a_file(path: Path) -> str:
    """Why a path the model names is not a file to read: "is missing", or what it is instead."""
    if os.path.isdir(path):
        return "is a folder, not a file"
    if os.path.exists(path):
        return "is not a regular file"
    return "is a broken symbolic link" if os.path.lexists(path) else "is missing"


def _onnx_loader(path, init, numpy_helper):
    def load():
        try:
            return np.array(numpy_helper.to_array(init))
        except Exception as exc:
            raise FormatError(f"{path}: damaged ONNX initializer {init.name!r}: {exc}") from None

    return load


def _onnx_external_loader(path: Path, init, dtype: np.dtype, shape: tuple, onnx, numpy_helper):
    data_path, info = _onnx_external_file(path, init)
    location = info["location"]
    offset, length = (_external_data_int(path, init, info, key) for key in ("offset", "length"))
    offset, count = offset or 0, math.prod(shape)
    packed_bits = _ONNX_PACKED_BITS.get(onnx.TensorProto.DataType.Name(init.data_type))
    stored = dtype.newbyteorder("<")
    nbytes = -(-count * packed_bits // 8) if packed_bits else count * stored.itemsize
    if length is not None and length != nbytes:
        raise FormatError(
            f"{path}: initializer {init.name!r}: external data length {length} is not the {nbytes} bytes "
            f"its shape {list(shape)} and dtype {dtype.name} need"
        )

    identity = path_identity(data_path)  # (as the model is opened)

    def load():
        if not data_path.is_file() or data_path.stat().st_size < offset + nbytes:
            raise FormatError(f"{path}: external data of {init.name!r} ({location}) is missing or too short")
        if count == 0:
            return np.zeros(shape, dtype)
        if packed_bits:  # several values a byte: onnx unpacks them, from a copy holding just their bytes
            tensor = onnx.TensorProto()
            tensor.CopyFrom(init)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            with open(data_path, "rb") as fh:
                fh.seek(offset)
                tensor.raw_data = fh.read(nbytes)
            return np.array(numpy_helper.to_array(tensor))
        raw = _read_values(data_path, stored, offset, count, identity)
        return raw.astype(dtype.newbyteorder("="), copy=False).reshape(shape)

    return load, data_path


#: Bits a value of the ONNX types that pack several values into a byte (low bits first).
_ONNX_PACKED_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2, "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}


def _external_data_int(path: Path, init, info: dict, key: str) -> int | None:
    """The ``key`` entry ("offset", "length") of an initializer's external data, if it has one."""
    value = info.get(key)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise FormatError(
            f"{path}: initializer {init.name!r}: external data {key} {value!r} is not a non-negative integer"
        )
    return int(value)


# -- npz: member by member -----------------------------------------------------------------------


def _read_npz(path: Path, file_index):
    out = []
    zf = None
    try:
        zf = zipfile.ZipFile(path)  # kept open for the loaders: its directory is read once, not once a tensor
        archive = _OpenArchive(zf)
        for member in zf.infolist():
            if not member.filename.endswith(".npy"):
                raise FormatError(f"{path}: member {member.filename!r} is not a .npy array")
            with zf.open(member) as fh:
                shape, _fortran, dtype = formats._npy_header(path, member, fh)
            name = dtype.newbyteorder("=").name
            out.append(
                LazyTensor(
                    member.filename[:-4], tuple(shape), name, name, _npz_loader(path, archive, member), file_index
                )
            )
    except FormatError:
        if zf is not None:
            zf.close()
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError, OSError, RuntimeError, NotImplementedError) as exc:
        if zf is not None:
            zf.close()
        if isinstance(exc, OSError) and cannot_open(exc):
            raise naming(exc, path) from None
        raise FormatError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    return out, {}, []


class _OpenArchive:
    """An .npz archive open for its tensors' loaders, one member read at a time; closed with the last loader."""

    def __init__(self, zf: zipfile.ZipFile):
        import threading

        self.zf = zf
        self.lock = threading.Lock()

    def __del__(self):
        self.zf.close()


def _npz_loader(path: Path, archive: _OpenArchive, member: zipfile.ZipInfo):
    def load():
        import zlib

        try:
            with archive.lock, archive.zf.open(member) as fh:
                return formats._read_npy_member(path, member, fh)
        except FormatError:
            raise
        except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, KeyError, OSError, RuntimeError) as exc:
            raise FormatError(f"{path}: {member.filename}: not readable ({type(exc).__name__}: {exc})") from None

    return load


def _named(reader):
    """``reader``, refusing a tensor name no stream can hold (a state_dict's int keys, "")."""

    def read(path: Path, file_index):
        tensors, metadata, left_out = reader(path, file_index)
        for t in tensors:
            _check_name(path, t.name)
        return tensors, metadata, left_out

    return read


def _check_name(path: Path, name) -> None:
    """A FormatError naming ``path`` and the key unless ``name`` can name a tensor in a stream."""
    from .encoding.settings import check_tensor_name
    from .errors import EncodeError

    if not isinstance(name, str):
        raise FormatError(
            f"{path}: tensor key {name!r} is {type(name).__name__}, not a string; a stream names tensors by "
            "strings: save the state_dict with string keys"
        )
    try:
        check_tensor_name(name)
    except EncodeError as exc:
        raise FormatError(f"{path}: {exc.message}") from None


_READERS = {
    fmt: _named(reader)
    for fmt, reader in {"safetensors": _read_safetensors, "pt": _read_pt, "onnx": _read_onnx, "npz": _read_npz}.items()
}


def mapping_array(name: str, value) -> np.ndarray:
    """A mapping's tensor ``value`` as a plain numpy array; EncodeError for what is not one, or a masked array
    with masked values (NNC codes the values, not a mask: its data would decode with no mask).

    Examples
    --------
    >>> mapping_array("w", np.matrix([[1, 2]])).__class__.__name__
    'ndarray'
    >>> mapping_array("w", np.ma.masked_array([1.0, 2.0], mask=[0, 1]))
    Traceback (most recent call last):
    nnc.errors.EncodeError: tensor 'w' is a masked array with 1 masked value: NNC codes values, not masks; give its .filled(...) or .data
    """
    from .errors import EncodeError

    masked = int(np.ma.count_masked(value)) if isinstance(value, np.ma.MaskedArray) else 0
    if masked:
        raise EncodeError(
            f"tensor {name!r} is a masked array with {masked} masked value{'s' if masked > 1 else ''}: NNC codes "
            "values, not masks; give its .filled(...) or .data"
        )
    try:
        return np.asarray(value)
    except ValueError as exc:  # e.g. a ragged nested list
        raise EncodeError(f"tensor {name!r} is not an array: {exc}") from None


def source_from_mapping(tensors, dtypes=None, name: str = "<arrays>") -> ModelSource:
    """A :class:`ModelSource` over arrays already in memory (``dtypes``: original dtype names)."""
    out = []
    for key, value in tensors.items():
        arr = mapping_array(key, value)
        original = (dtypes or {}).get(key, arr.dtype.name)
        out.append(LazyTensor(key, tuple(arr.shape), arr.dtype.name, original, _constant_loader(arr)))
    shares = shared_arrays({t.name: t.load() for t in out})
    for t in out:
        t.same_as = shares.get(t.name)
    return ModelSource(name, "arrays", out)


def shared_arrays(arrays: Mapping) -> dict:
    """{name: the earlier name} for arrays that are one array in memory (the same data, shape, strides and dtype):
    tied weights, e.g. a model's ``state_dict()`` converted to numpy. Empty arrays share nothing.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.ones((2, 3))
    >>> shared_arrays({"a": w, "b": w, "c": w.copy(), "d": w[:, :2]})
    {'b': 'a'}
    """
    first: dict = {}
    out = {}
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or not arr.size:
            continue
        view = (arr.__array_interface__["data"][0], arr.shape, arr.strides, arr.dtype.str)
        if view in first:
            out[name] = first[view]
        else:
            first[view] = name
    return out


def _constant_loader(arr: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: arr


__all__ = [
    "open_model",
    "ModelSource",
    "LazyTensor",
    "mapping_array",
    "source_from_mapping",
    "shared_arrays",
    "single_file_layout",
    "INDEX_NAMES",
]
