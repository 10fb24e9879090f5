"""Model files in and out: numpy .npz, safetensors, PyTorch state_dict, ONNX.

Formats are detected by content, not only by extension.  safetensors and npz
need nothing beyond numpy; PyTorch needs ``torch`` and ONNX needs ``onnx``
(optional extras ``torch`` and ``onnx``: ``pip install torch onnx``).

Tensors are exchanged as an ordered mapping of name to numpy array.  bfloat16,
float8_e4m3fn and float8_e5m2 have no numpy dtype (:mod:`nnc.narrow_floats`):
they are read as float32 (exactly) and written back in their format when the
caller asks for that dtype by name.

Every ``read_*`` function returns ``(tensors, dtypes)``: the tensors in file
order and {name: original dtype name}; every ``*_bytes`` function returns the
bytes of a file of its format.  :func:`read_model` and :func:`write_model`
choose the format themselves.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from nnc import formats
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> formats.write_model(path, {"w": np.eye(2, dtype=np.float32), "b": np.zeros(2)})
>>> tensors, dtypes = formats.read_model(path)
>>> formats.detect_format(path), list(tensors), dtypes
('safetensors', ['w', 'b'], {'w': 'float32', 'b': 'float64'})
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import narrow_floats
from ._files import (
    cannot_open,
    naming,
    refuse_overwriting,  # noqa: F401 (public here: the tools' check of their outputs)
    reserve_space,
)
from .errors import NNCError


class FormatError(NNCError, ValueError):
    """A model file cannot be read or written in the detected or requested format.

    Also raised when a format's optional back end (torch, onnx) is not
    installed.  A :class:`~nnc.errors.NNCError` and a :class:`ValueError`;
    the parameters are those of :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import nnc
    >>> from nnc import formats
    >>> try:
    ...     formats.format_from_extension("model.h5")
    ... except nnc.NNCError as exc:
    ...     print(type(exc).__name__, "-", exc.message)
    FormatError - model.h5: cannot tell the output format from the extension (use .npz, .safetensors, .pt or .onnx)
    """


#: The model formats that can be read and written.
FORMATS = ("npz", "safetensors", "pt", "onnx")
#: File extensions used for NNC streams.
NNR_EXTENSIONS = (".nnr", ".nnc", ".bin")

#: Model file extensions (lower case, without the dot) with the format of each; nnc writes an output path's format
#: from it and takes a folder's model file by it.
MODEL_EXTENSIONS = {
    "npz": "npz",
    "safetensors": "safetensors",
    "pt": "pt",
    "pth": "pt",
    "bin": "pt",
    "ckpt": "pt",
    "onnx": "onnx",
}

__all__ = [
    "FormatError",
    "refuse_overwriting",
    "FORMATS",
    "MODEL_EXTENSIONS",
    "NNR_EXTENSIONS",
    "read_model",
    "write_model",
    "detect_format",
    "format_from_extension",
    "write_atomic",
    "read_npz",
    "npz_bytes",
    "read_safetensors",
    "safetensors_bytes",
    "safetensors_header",
    "read_pt",
    "pt_bytes",
    "PtWriter",
    "state_dict_metadata",
    "read_onnx",
    "onnx_bytes",
    "write_onnx",
    "OnnxWriter",
    "load_onnx_graph",
    "ONNX_LEFT_IN_FILE",
    "ONNX_INLINE_LIMIT",
    "onnx_quantisation_parameters",
    "bfloat16_to_float32",
    "float32_to_bfloat16",
]

#: The first bytes of an NNC stream: the size (4) and type (NNR_STR) of its start unit (spec 3.1, 4).
NNR_START_UNIT = b"\x00\x04\x02"

# -- detection -----------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """Format of a model file from its first bytes (falls back to the extension).

    Zip archives are told apart by their members (PyTorch's ``data.pkl`` or
    only ``.npy`` files); safetensors by its 8-byte header length and JSON
    header; PyTorch's legacy format by its pickle protocol byte; an NNC
    stream by its start unit.  ONNX files have no magic number: they are
    recognised by the ``.onnx`` extension (or a protobuf first byte in a file
    without extension), like ``.pt``/``.pth`` files that are not zip archives.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file.

    Returns
    -------
    str
        ``"npz"``, ``"safetensors"``, ``"pt"``, ``"onnx"``, or ``"nnr"`` for an
        NNC stream.

    Raises
    ------
    nnc.formats.FormatError
        If the file cannot be read, is a damaged or foreign zip archive, or
        is of no known format.
    OSError
        What ``open()`` raises for a path that cannot be opened (missing, not
        readable, a folder), naming the path.

    Examples
    --------
    >>> import nnc, numpy as np, tempfile, os
    >>> from nnc.formats import detect_format
    >>> d = tempfile.mkdtemp()
    >>> np.savez(os.path.join(d, "weights.npz"), w=np.ones(3))
    >>> os.rename(os.path.join(d, "weights.npz"), os.path.join(d, "weights.bin"))
    >>> detect_format(os.path.join(d, "weights.bin"))  # by content, not by extension
    'npz'
    >>> with open(os.path.join(d, "stream.dat"), "wb") as fh:
    ...     _ = fh.write(nnc.encode({"w": [1.0, 2.0]}))
    >>> detect_format(os.path.join(d, "stream.dat"))
    'nnr'
    >>> with open(os.path.join(d, "notes.txt"), "w") as fh:
    ...     _ = fh.write("hello")
    >>> detect_format(os.path.join(d, "notes.txt"))
    Traceback (most recent call last):
        ...
    nnc.formats.FormatError: .../notes.txt: unknown model format (supported: npz, safetensors, pt/pth, onnx)
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        if cannot_open(exc):  # (nnc.errors: as open() raises it, naming the path)
            raise naming(exc, path) from None
        raise FormatError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
    if head[:4] == b"PK\x05\x06":  # a zip archive of no members: what np.savez writes for no arrays
        return "npz"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError, OSError) as exc:
            raise FormatError(f"{p}: damaged zip archive ({type(exc).__name__}: {exc})") from None
        if any(n.endswith("data.pkl") for n in names):
            return "pt"
        if all(n.endswith(".npy") for n in names):
            return "npz"
        raise FormatError(f"{p}: a zip archive that is neither .npz nor a PyTorch file")
    if len(head) >= 9:
        (hlen,) = struct.unpack("<Q", head[:8])
        if 2 <= hlen < MAX_SAFETENSORS_HEADER and head[8:9] == b"{":
            return "safetensors"
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "pt"
    if head[:3] == NNR_START_UNIT and head[3:4] in (b"\x00", b"\x01"):  # profile 0 or 1
        return "nnr"
    ext = p.suffix.lower().lstrip(".")
    if ext == "onnx" or (head[:1] == b"\x08" and ext in ("onnx", "")):
        return "onnx"
    if ext in ("pth", "pt"):
        return "pt"
    raise FormatError(f"{p}: unknown model format (supported: npz, safetensors, pt/pth, onnx)")


def format_from_extension(path: str | os.PathLike) -> str:
    """Format of a model file to write, from its extension (case-insensitive).

    Parameters
    ----------
    path : str or ``os.PathLike``
        A path ending in .npz, .safetensors, .pt, .pth, .bin, .ckpt or .onnx.

    Returns
    -------
    str
        ``"npz"``, ``"safetensors"``, ``"pt"`` (for .pt, .pth, .bin and .ckpt, PyTorch's files as the readers
        take them) or ``"onnx"``.

    Raises
    ------
    nnc.formats.FormatError
        If the extension is none of these.

    Examples
    --------
    >>> from nnc.formats import format_from_extension
    >>> format_from_extension("out/model.PTH"), format_from_extension("m.safetensors")
    ('pt', 'safetensors')
    """
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in MODEL_EXTENSIONS:
        raise FormatError(
            f"{path}: cannot tell the output format from the extension (use .npz, .safetensors, .pt or .onnx)"
        )
    return MODEL_EXTENSIONS[ext]


# -- atomic writes ---------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that it either appears complete or not at all.

    The data go to a temporary file in the same directory, are flushed to
    disk, and the file is renamed over ``path``.  The new file gets the usual
    permissions (0666 less the umask); on any failure the temporary file is
    removed and the error re-raised.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file to create or replace.
    data : bytes
        Its new content.

    Raises
    ------
    OSError
        If the directory is not writable or the disk is full; ``path`` is
        then unchanged.

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc.formats import write_atomic
    >>> d = tempfile.mkdtemp()
    >>> write_atomic(os.path.join(d, "stream.nnr"), b"\\x00\\x04\\x02\\x01")
    >>> os.listdir(d), os.path.getsize(os.path.join(d, "stream.nnr"))
    (['stream.nnr'], 4)
    """
    from ._files import AtomicFile

    with AtomicFile(path) as out:
        out.fh.write(data)


# -- safetensors (hand-written: header length, JSON header, raw little-endian data) --

#: The largest safetensors header read, in bytes (the safetensors library's own limit).
MAX_SAFETENSORS_HEADER = 100_000_000


_ST_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_ST_NAMES = {np.dtype(v).str.replace("|", "").replace("=", "<"): k for k, v in _ST_DTYPES.items()}


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) to float32 values, exactly (:mod:`nnc.narrow_floats`).

    Parameters
    ----------
    raw : ``numpy.ndarray``
        bfloat16 bit patterns as unsigned 16-bit integers.

    Returns
    -------
    ``numpy.ndarray``
        float32 values of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.formats import bfloat16_to_float32
    >>> bfloat16_to_float32(np.array([0x3F80, 0xC040, 0x3EAB], np.uint16)).tolist()
    [1.0, -3.0, 0.333984375]
    """
    return narrow_floats.bfloat16_to_float32(raw)


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16) (:mod:`nnc.narrow_floats`).

    Parameters
    ----------
    x : ``numpy.ndarray``
        Values, converted to float32 first.

    Returns
    -------
    ``numpy.ndarray``
        uint16 bfloat16 bit patterns of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.formats import float32_to_bfloat16
    >>> [hex(b) for b in float32_to_bfloat16(np.array([1.0, -3.0, 1 / 3]))]
    ['0x3f80', '0xc040', '0x3eab']
    >>> [hex(b) for b in float32_to_bfloat16(np.array([1.00390625, 1.01171875]))]  # ties to even
    ['0x3f80', '0x3f82']
    """
    return narrow_floats.float32_to_bfloat16(x)


def read_safetensors(path) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """Tensors (in file order) and {name: original dtype name} of a safetensors file.

    File order is the order of the tensors' data in the file.  The
    ``__metadata__`` entry is ignored; BF16, F8_E4M3 and F8_E5M2 tensors are
    returned as float32 with the dtype names ``"bfloat16"``,
    ``"float8_e4m3fn"`` and ``"float8_e5m2"``.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file.

    Returns
    -------
    tuple
        ``(tensors, dtypes)``: {name: ``numpy.ndarray``} and {name: dtype name}.

    Raises
    ------
    nnc.formats.FormatError
        If the file is too short, its header runs past its end, is not a
        JSON object or lacks a tensor's fields, a tensor lies outside the file
        or does not fit its shape, or a dtype is not supported.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from nnc.formats import read_safetensors, safetensors_bytes
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> w = np.array([[1.0, -3.0]], np.float32)
    >>> with open(path, "wb") as fh:
    ...     _ = fh.write(safetensors_bytes({"w": w, "step": np.int64(5)}, {"w": "bfloat16"}))
    >>> tensors, dtypes = read_safetensors(path)
    >>> tensors["w"].tolist(), tensors["step"].shape, dtypes
    ([[1.0, -3.0]], (), {'w': 'bfloat16', 'step': 'int64'})
    """
    return _read_all("safetensors", path)


def _read_all(fmt: str, path) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """Every tensor of the ``fmt`` file at ``path``, read by :mod:`nnc.readers`' lazy reader of that format
    (one parser per format, its checks included), and {name: original dtype name}."""
    from .readers import _READERS

    tensors, _, _ = _READERS[fmt](Path(path), None)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for t in tensors:
        out[t.name] = t.load()
        if out[t.name].shape != tuple(t.shape):
            raise FormatError(f"{path}: tensor {t.name!r} has shape {out[t.name].shape}, its header says {t.shape}")
    return out, {t.name: t.original_dtype for t in tensors}


def check_safetensors_names(names, where: str = "") -> None:
    """Refuse a tensor named ``__metadata__``, the safetensors header's reserved key (readers would drop the
    tensor); ``where`` (a file name) prefixes the message."""
    if "__metadata__" in names:
        raise FormatError(
            f"{where + ': ' if where else ''}a safetensors file cannot hold a tensor named '__metadata__' (the key of "
            "the file's metadata); write it to a .npz or .pt file"
        )


def safetensors_bytes(tensors, dtypes: dict | None = None, metadata: dict | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors``, in their order.

    Parameters
    ----------
    tensors : ``Mapping``
        {name: array-like}; 0-d arrays keep their empty shape.
    dtypes : dict or None
        {name: dtype name}; only the formats numpy lacks are used: tensors
        named ``"bfloat16"``, ``"float8_e4m3fn"`` or ``"float8_e5m2"`` are
        stored as BF16, F8_E4M3 or F8_E5M2 (:func:`nnc.narrow_floats.from_float32`).
    metadata : dict or None
        The file's ``__metadata__`` ({str: str}, e.g. ``{"format": "pt"}``); none if empty.

    Returns
    -------
    bytes
        Header length (8 bytes, little-endian), JSON header padded with
        spaces to a multiple of 8 bytes, then the little-endian data.

    Raises
    ------
    nnc.formats.FormatError
        If a dtype has no safetensors equivalent (e.g. complex).

    Examples
    --------
    >>> import json, struct, numpy as np
    >>> from nnc.formats import safetensors_bytes
    >>> data = safetensors_bytes({"w": np.ones((2, 3), np.float16)})
    >>> (n,) = struct.unpack("<Q", data[:8])
    >>> json.loads(data[8:8 + n])
    {'w': {'dtype': 'F16', 'shape': [2, 3], 'data_offsets': [0, 12]}}
    >>> len(data) == 8 + n + 12
    True
    """
    buf = io.BytesIO()
    _save_safetensors(buf, tensors, dtypes, metadata)
    return buf.getvalue()


def safetensors_header(entries, metadata: dict | None = None, where: str = "") -> tuple[bytes, list]:
    """The head of a safetensors file, and where each tensor's data starts.

    Parameters
    ----------
    entries : iterable of tuple
        (name, dtype, shape) of each tensor in file order; dtype a numpy dtype, or the
        name of a format numpy lacks (``"bfloat16"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``).
    metadata : dict or None
        The file's ``__metadata__`` ({str: str}); none if empty.
    where : str
        A file name that prefixes errors.

    Returns
    -------
    tuple
        (head, offsets): the header's length (8 bytes, little-endian) and JSON header padded
        with spaces to a multiple of 8 bytes; each tensor's data offset from the file's start.

    Raises
    ------
    nnc.formats.FormatError
        If a dtype has no safetensors equivalent, or a tensor is named ``__metadata__``.

    Examples
    --------
    >>> import json
    >>> head, offsets = safetensors_header([("w", "float16", (2, 3)), ("b", "bfloat16", (3,))])
    >>> json.loads(head[8:])["b"], offsets
    ({'dtype': 'BF16', 'shape': [3], 'data_offsets': [12, 18]}, [128, 140])
    """
    entries = list(entries)
    check_safetensors_names([name for name, _, _ in entries], where)
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    starts, offset = [], 0
    for name, dtype, shape in entries:
        code: str | None
        if narrow_floats.is_narrow(dtype):
            narrow = narrow_floats.NARROW_FLOATS[dtype]
            code, item = narrow.safetensors, narrow.storage.itemsize
        else:
            code, item = _ST_NAMES.get(np.dtype(dtype).newbyteorder("<").str.replace("|", "")), np.dtype(dtype).itemsize
        if code is None:
            raise FormatError(f"dtype {np.dtype(dtype)} of {name!r} has no safetensors equivalent")
        size = math.prod(shape) * item
        header[name] = {"dtype": code, "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        starts.append(offset)
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    head = struct.pack("<Q", len(text)) + text
    return head, [start + len(head) for start in starts]


def _save_safetensors(fh, tensors, dtypes: dict | None = None, metadata: dict | None = None) -> None:
    """Write the safetensors file of :func:`safetensors_bytes` to the open binary file ``fh``, one tensor's bytes
    in memory at a time."""
    dtypes = dtypes or {}
    entries = []
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        narrow = dtypes.get(name) if narrow_floats.is_narrow(dtypes.get(name)) else None
        entries.append((name, narrow or arr.dtype, arr.shape))
    head, _ = safetensors_header(entries, metadata)
    fh.write(head)
    for name, arr in tensors.items():
        arr = np.asarray(arr, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        stored = dtypes.get(name) if narrow_floats.is_narrow(dtypes.get(name)) else arr.dtype
        raw = narrow_floats.to_file_values(stored, arr)
        fh.write(np.ascontiguousarray(raw).reshape(-1).view(np.uint8).data)


# -- npz -----------------------------------------------------------------------------


def read_npz(path):
    """Tensors and dtype names of a numpy .npz archive (no pickled objects).

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file.

    Returns
    -------
    tuple
        ``(tensors, dtypes)``: {name: ``numpy.ndarray``} in archive order and
        {name: dtype name}.

    Raises
    ------
    nnc.formats.FormatError
        If the archive is damaged, a member is not a numeric .npy array (pickled
        objects are refused), or an array header claims more data than its member holds.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from nnc.formats import read_npz
    >>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> np.savez(path, w=np.ones(2, np.float32), n=np.int64(3))
    >>> read_npz(path)[1]
    {'w': 'float32', 'n': 'int64'}
    """
    import zlib

    out = OrderedDict()
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.infolist():
                if not member.filename.endswith(".npy"):
                    raise FormatError(f"{path}: member {member.filename!r} is not a .npy array")
                if member.filename[:-4] in out:  # (numpy keeps the last; the lazy reader refuses it too)
                    raise FormatError(f"{path}: tensor {member.filename[:-4]!r} appears twice")
                with zf.open(member) as fh:
                    out[member.filename[:-4]] = _read_npy_member(path, member, fh)
    except FormatError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        ValueError,
        EOFError,
        KeyError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        if isinstance(exc, OSError) and cannot_open(exc):
            raise naming(exc, path) from None
        # damaged archives: bad offsets and sizes, encryption flags, unknown compression, bad headers
        raise FormatError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    return out, {k: v.dtype.name for k, v in out.items()}


def _npy_header(path, member, fh) -> tuple:
    """(shape, fortran_order, dtype) of an .npz member's .npy header; numeric dtypes only."""
    version = np.lib.format.read_magic(fh)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise FormatError(f"{path}: {member.filename}: unsupported .npy version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = read(fh)
    except ValueError as exc:  # numpy's own words suggest options nnc has none of
        why = "too large to read safely" if "max_header_size" in str(exc) else "malformed"
        raise FormatError(f"{path}: {member.filename}: its .npy header is {why}") from None
    if dtype.hasobject:
        raise FormatError(f"{path}: {member.filename}: dtype {dtype} holds Python objects (pickles are refused)")
    if dtype.kind not in "biufc":
        raise FormatError(f"{path}: {member.filename}: dtype {dtype} is not numeric (bool, int, float)")
    return _dims(f"{path}: {member.filename}", shape), fortran, dtype


def _dims(where: str, dims) -> tuple:
    """``dims`` of a tensor header as a shape; a FormatError naming ``where`` if one is negative, or
    if numpy cannot hold an array of that shape (even one with no elements) in its widest dtype."""
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) for d in dims):
        raise FormatError(f"{where}: dimensions {list(dims)!r} are not all integers")
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise FormatError(f"{where}: a negative dimension in {list(shape)}")
    if len(shape) > _MAX_DIMS:
        raise FormatError(f"{where}: {len(shape)} dimensions, more than the {_MAX_DIMS} numpy holds")
    if math.prod(d for d in shape if d) * _WIDEST_ITEMSIZE > np.iinfo(np.intp).max:
        raise FormatError(f"{where}: shape {list(shape)} too large")
    return shape


#: The most dimensions a numpy array has (64 since numpy 2, 32 before).
_MAX_DIMS = 64 if int(np.__version__.split(".")[0]) >= 2 else 32

#: Bytes of an element of complex128, the widest dtype a tensor is held in.
_WIDEST_ITEMSIZE = 16


def _read_npy_member(path, member, fh) -> np.ndarray:
    """One array of an .npz archive; its header's size is checked against the member's, before reading."""
    shape, fortran, dtype = _npy_header(path, member, fh)
    count = math.prod(shape)
    if count * dtype.itemsize > member.file_size:
        raise FormatError(
            f"{path}: {member.filename}: header claims {count} x {dtype.itemsize} bytes, "
            f"the member holds {member.file_size}"
        )
    if member.compress_type == zipfile.ZIP_STORED and member.compress_size > os.path.getsize(path):
        raise FormatError(  # (read at once, a size the archive cannot hold would be allocated first)
            f"{path}: {member.filename}: the archive says {member.compress_size:,} bytes, more than the whole file"
        )
    arr = np.empty(count, dtype)  # (read into in pieces: the array's memory, not twice it)
    into, done = arr.view(np.uint8), 0
    while done < into.size:
        piece = fh.read(min(into.size - done, _NPY_PIECE))
        if not piece:
            raise FormatError(f"{path}: {member.filename}: array data is truncated")
        into[done : done + len(piece)] = np.frombuffer(piece, np.uint8)
        done += len(piece)
    if not dtype.isnative:  # (in place: the same bytes in native order)
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    arr = arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
    return np.ascontiguousarray(arr) if fortran else arr  # (C order; 0-d stays 0-d)


#: Bytes of an .npz member read at once.
_NPY_PIECE = 1 << 24


def npz_bytes(tensors, dtypes=None) -> bytes:
    """The bytes of an uncompressed .npz archive holding ``tensors``.

    Parameters
    ----------
    tensors : ``Mapping``
        {name: array-like}.
    dtypes : dict or None
        Ignored (numpy has no bfloat16 or float8); accepted for a uniform interface.

    Returns
    -------
    bytes
        The archive, as ``numpy.savez`` writes it.

    Examples
    --------
    >>> import io, numpy as np
    >>> from nnc.formats import npz_bytes
    >>> with np.load(io.BytesIO(npz_bytes({"w": [1.5, 2.5]}))) as z:
    ...     z["w"].tolist()
    [1.5, 2.5]
    """
    buf = io.BytesIO()
    _save_npz(buf, tensors)
    return buf.getvalue()


def _save_npz(fh, tensors) -> None:
    """Write the archive of :func:`npz_bytes` to the open binary file ``fh`` (seekable), member by member.
    (Not ``np.savez(fh, **tensors)``: a tensor named ``file`` or ``allow_pickle`` would be taken for its argument.)"""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in tensors.items():
            write_npz_member(zf, name, np.asarray(value))


def _in_dtype(path, name: str, values: np.ndarray, want: str) -> np.ndarray:
    """``values`` of tensor ``name`` in dtype ``want`` without changing one, as the decoder restores a recorded
    dtype (:func:`nnc.decoder.restore_model_view`): integers rounded to the nearest, a value the dtype cannot hold
    refused (FormatError); a dtype a model file cannot hold leaves them as they are."""
    from .decoder import _check_narrowed, exact_integers, restorable_dtype
    from .errors import DecodeError

    target = restorable_dtype(want)
    if target is None or values.dtype.kind not in "biuf":
        return values
    try:
        if np.dtype(target).kind in "biu":
            return exact_integers(name, values, target)
        with np.errstate(over="ignore"):
            written = values.astype(target)
        _check_narrowed(name, values, written, recorded=True)
        return written
    except DecodeError as exc:
        raise FormatError(f"{os.fspath(path)}: {exc.message}") from None


def write_npz_member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Tensor ``name`` as the member ``name.npy`` of an open ``.npz`` archive, as ``numpy.savez`` writes it; an
    ml_dtypes bfloat16 or float8 array as float32 (the same values: .npz has no such dtype)."""
    if narrow_floats.is_narrow(array.dtype.name):
        array = array.astype(np.float32)
    array = np.ascontiguousarray(array) if array.ndim else array
    with zf.open(name + ".npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, array, allow_pickle=False)


# -- PyTorch ---------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError:
        raise FormatError("PyTorch files need torch: pip install torch") from None
    return torch


def read_pt(path):
    """Tensors and dtype names of a PyTorch state_dict file (needs ``torch``).

    The file is loaded with ``weights_only=True`` on the CPU.  A checkpoint
    ``{"state_dict": {...}, ...}`` is unwrapped, and so is one whose only
    mapping of tensors sits under another key (``{"model": {...}, "epoch":
    3}``); entries that are not tensors are skipped.  bfloat16 and float8
    tensors are returned as float32.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file (.pt, .pth).

    Returns
    -------
    tuple
        ``(tensors, dtypes)``: {name: ``numpy.ndarray``} and {name: torch
        dtype name, e.g. ``"bfloat16"``}.

    Raises
    ------
    nnc.formats.FormatError
        If torch is not installed, the file cannot be loaded, or it holds no
        mapping of tensors (or several, under different keys).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from nnc.formats import pt_bytes, read_pt
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> with open(path, "wb") as fh:
    ...     _ = fh.write(pt_bytes({"w": np.array([1.0, -3.0], np.float32)}, {"w": "bfloat16"}))
    >>> tensors, dtypes = read_pt(path)
    >>> tensors["w"].dtype.name, tensors["w"].tolist(), dtypes
    ('float32', [1.0, -3.0], {'w': 'bfloat16'})
    """
    return _read_all("pt", path)


def _is_torchscript(path) -> bool:
    """Whether a .pt file is a TorchScript archive (code and constants besides the data)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError, EOFError):
        return False


def _pt_load_problem(exc: Exception, path=None) -> str:
    """One line saying why a .pt file is not a state_dict (torch's own message spans many lines): for a file
    ``torch.load(weights_only=True)`` refuses, the type it refused, and whether the file holds a whole module."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "weights_only" in text or "Unsupported global" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        refused = found.group(1) if found else None
        if path is not None and _pt_pickles_a_module(path):
            return (
                f"a whole module pickled with torch.save(model){f' ({refused})' if refused else ''}, not a "
                "state_dict of tensors; save model.state_dict() with torch.save and encode that"
            )
        if refused:
            what = f"the {refused} it holds"
        else:
            detail = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
            what = f"it ({detail.group(1).strip().rstrip('.')})" if detail else "it"
        return (
            f"torch.load(weights_only=True) refuses {what} (nnc runs no pickled code); re-save only the "
            "state_dict, torch.save(model.state_dict(), path), and encode that"
        )
    first = text.strip().splitlines()
    return f"cannot load as a PyTorch state_dict: {first[0] if first else type(exc).__name__}"


def _pt_pickles_a_module(path) -> bool:
    """Whether a .pt file's pickle holds a torch.nn.Module (its ``_parameters`` and ``_modules``), read
    with pickletools (nothing unpickled); False if it cannot be read."""
    import pickletools

    def strings(fh) -> set:
        return {arg for _, arg, _ in pickletools.genops(fh) if isinstance(arg, str)}

    try:
        with open(path, "rb") as fh:
            if zipfile.is_zipfile(fh):
                with zipfile.ZipFile(fh) as zf:
                    name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                    if name is None:
                        return False
                    with zf.open(name) as member:  # streamed: read op by op
                        names = strings(member)
            else:  # legacy: magic number, protocol, sys info, then the object
                fh.seek(0)
                for _ in range(3):
                    strings(fh)
                names = strings(fh)
    except Exception:  # a damaged pickle: not known to be a module
        return False
    return {"_parameters", "_modules"} <= names


def _unwrap_checkpoint(path, obj: dict) -> tuple[dict, list]:
    """The state_dict inside a training checkpoint ({"state_dict": ..., "epoch": ...} and the like),
    and the entries of the file that are left out (not tensors, or beside the state_dict).

    ``obj["state_dict"]`` if it is a mapping holding tensors; else ``obj`` itself if it holds tensors;
    else its only entry that is a mapping holding tensors ("model", "module", ...).
    Left-out entries are named by their keys, joined with "/" under the state_dict's key.
    """

    def holds_tensors(d):
        return isinstance(d, dict) and any(hasattr(v, "detach") for v in d.values())

    if holds_tensors(obj.get("state_dict")):
        key = "state_dict"
    elif holds_tensors(obj):
        key = None
    else:
        inner = [k for k, v in obj.items() if holds_tensors(v)]
        if len(inner) > 1:
            raise FormatError(
                f"{path}: several entries hold tensors ({', '.join(map(repr, inner))}); save the one state_dict to encode"
            )
        if not inner:
            deeper = [k for k, v in obj.items() if _holds_tensor(v)]
            if deeper:
                raise FormatError(
                    f"{path}: the tensors are nested deeper in {deeper[0]!r} than a checkpoint's state_dict; "
                    "save the one state_dict (name: tensor) to encode"
                )
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise FormatError(f"{path}: no tensors found (top-level keys: {keys or 'none'})")
        key = inner[0]
    state = obj if key is None else obj[key]
    left_out = [str(k) for k in obj if k != key] if key is not None else []
    prefix = "" if key is None else f"{key}/"
    for k, v in state.items():
        if hasattr(v, "detach"):
            continue
        if _holds_tensor(v):  # the model's own weights in another form: leaving them out would lose them
            raise FormatError(
                f"{path}: entry {f'{prefix}{k}'!r} holds tensors inside a {type(v).__name__} (a quantised layer's packed "
                "parameters, or a nested state_dict); nnc codes a state_dict of plain tensors: save a float model's "
                "state_dict"
            )
        left_out.append(f"{prefix}{k}")
    return state, left_out


def _holds_tensor(value, depth: int = 0) -> bool:
    """Whether ``value`` is, or holds in nested dicts, lists and tuples, a tensor."""
    if hasattr(value, "detach"):
        return True
    if depth > 16:
        return False
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(_holds_tensor(v, depth + 1) for v in items)


def state_dict_metadata(metadata) -> dict | None:
    """A PyTorch state_dict's ``_metadata`` (module prefix -> {"version": n, ...}, which ``load_state_dict``
    hands to each module) as a JSON object, or None when it is empty or not of that form: an object of objects
    whose values are strings, integers, booleans, finite floats or None, a ``"version"`` an integer (spec 6.2.1).

    Parameters
    ----------
    metadata : object
        ``state_dict._metadata``, or the recorded JSON object.

    Returns
    -------
    dict or None

    Examples
    --------
    >>> state_dict_metadata({"": {"version": 1}, "bn": {"version": 2}})
    {'': {'version': 1}, 'bn': {'version': 2}}
    >>> print(state_dict_metadata({"bn": "version 2"}))
    None
    """
    if not isinstance(metadata, Mapping) or not metadata:
        return None
    checked = {}
    for prefix, entry in metadata.items():
        if not isinstance(prefix, str) or not isinstance(entry, Mapping):
            return None
        for key, value in entry.items():
            plain = value is None or isinstance(value, (bool, int, str))
            if not isinstance(key, str) or not (plain or (isinstance(value, float) and math.isfinite(value))):
                return None
            if key == "version" and (isinstance(value, bool) or not isinstance(value, int)):
                return None  # (torch compares it with integers)
        checked[prefix] = dict(entry)
    return checked


def pt_bytes(tensors, dtypes=None, metadata=None) -> bytes:
    """The bytes of a PyTorch state_dict file holding ``tensors`` (needs ``torch``).

    Parameters
    ----------
    tensors : ``Mapping``
        {name: array-like}, saved as CPU tensors in this order.
    dtypes : dict or None
        {name: dtype name}; tensors named ``"bfloat16"``, ``"float8_e4m3fn"``
        or ``"float8_e5m2"`` are saved in that dtype.
    metadata : dict or None
        The state_dict's ``_metadata`` (:func:`state_dict_metadata`); ignored when not of that form.

    Returns
    -------
    bytes
        The file, as ``torch.save`` writes it.

    Raises
    ------
    nnc.formats.FormatError
        If torch is not installed.

    Examples
    --------
    >>> import io, numpy as np, torch
    >>> from nnc.formats import pt_bytes
    >>> sd = torch.load(io.BytesIO(pt_bytes({"w": np.ones(2, np.float32)})), weights_only=True)
    >>> list(sd), sd["w"].dtype
    (['w'], torch.float32)
    """
    buf = io.BytesIO()
    _save_pt(buf, tensors, dtypes, metadata)
    return buf.getvalue()


def _save_pt(fh, tensors, dtypes=None, metadata=None) -> None:
    """Write the file of :func:`pt_bytes` to the open binary file ``fh`` (:class:`PtWriter`, one tensor at a
    time)."""
    dtypes = dtypes or {}
    arrays = OrderedDict((k, np.asarray(v)) for k, v in tensors.items())
    writer = PtWriter(fh, [(k, str(dtypes.get(k) or v.dtype.name), v.shape) for k, v in arrays.items()], metadata)
    try:
        for k, v in arrays.items():
            writer.write(k, v)
        writer.close()
    except BaseException:
        writer.abort()  # (else the archive's end is written again when it is collected, and fails again)
        raise


#: The typed storages torch (every version since 1.6) rebuilds tensors of these dtypes from; other dtypes are
#: rebuilt from an untyped storage and the dtype (torch 2.1 and later).
_PT_TYPED_STORAGES = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
    "complex128": "ComplexDoubleStorage",
}

#: Where each record's data starts in the file: a multiple of this, as torch's own writer places it (a map of
#: the file, ``torch.load(mmap=True)``, then gives aligned tensors).
_PT_ALIGNMENT = 64


class PtWriter:
    """A PyTorch state_dict file (torch.save's zip layout) written one tensor at a time: the pickled state_dict
    first, made from the names, dtypes and shapes alone, then each tensor's bytes as it comes, in any order, so
    memory holds one tensor, not the model. ``torch.load`` reads it (``weights_only``, ``mmap`` too) as a
    state_dict of contiguous CPU tensors, each with a storage of its own.

    Parameters
    ----------
    file : str, ``os.PathLike`` or binary file
        The path to write, or a binary file open for writing and seekable (the caller closes it).
    plan : list
        ``(name, dtype name, shape)`` of every tensor, in the state_dict's order; ``"bfloat16"``,
        ``"float8_e4m3fn"`` and ``"float8_e5m2"`` tensors are given as float32 values and stored in that format.
    metadata : dict or None
        The state_dict's ``_metadata`` (:func:`state_dict_metadata`); ignored when not of that form.
    ties : dict or None
        {name: an earlier planned name of the same dtype and shape}: the two share one storage (tied weights, as
        torch saves them); the later one's values are not written again (its :meth:`write` only checks them in).

    Raises
    ------
    nnc.formats.FormatError
        If torch is not installed, or a dtype has no torch counterpart.
    ValueError
        If a name is planned twice, or a tie names no earlier planned tensor of its dtype and shape.

    Examples
    --------
    >>> import io, numpy as np, torch
    >>> from nnc.formats import PtWriter
    >>> buf = io.BytesIO()
    >>> writer = PtWriter(buf, [("w", "float32", (2, 3)), ("b", "bfloat16", (3,))])
    >>> writer.write("b", np.array([0.5, 1.0, 2.0], np.float32))
    >>> writer.write("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> writer.close()
    >>> sd = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    >>> list(sd), sd["b"].dtype, sd["w"][1].tolist()
    (['w', 'b'], torch.bfloat16, [3.0, 4.0, 5.0])
    """

    def __init__(self, file, plan, metadata=None, ties=None):
        torch = _torch()
        self.planned = OrderedDict((name, (str(dtype), tuple(int(n) for n in shape))) for name, dtype, shape in plan)
        if len(self.planned) != len(plan):
            raise ValueError("a tensor name is planned twice")
        self.keys = {name: str(i) for i, name in enumerate(self.planned)}
        self.ties = dict(ties or {})
        for name, source in self.ties.items():
            if source not in self.planned or source in self.ties or self.planned[source] != self.planned.get(name):
                raise ValueError(f"tensor {name!r} cannot share the storage of {source!r}")
            self.keys[name] = self.keys[source]
        self.written: set[str] = set()
        state = OrderedDict(
            (name, _PlannedTensor(torch, dtype, shape, self.keys[name]))
            for name, (dtype, shape) in self.planned.items()
        )
        versions = state_dict_metadata(metadata)
        if versions is not None:
            state._metadata = OrderedDict((prefix, dict(entry)) for prefix, entry in versions.items())
        pickled = io.BytesIO()
        _StateDictPickler(pickled, protocol=2).dump(state)
        self.own_file = isinstance(file, (str, os.PathLike))
        self.zf = zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._record("data.pkl", pickled.getvalue())
        self._record("byteorder", b"little")

    def write(self, name: str, values) -> None:
        """Write tensor ``name``'s values (an array of its planned shape; float32 for the narrow formats)."""
        if name not in self.planned or name in self.written:
            raise ValueError(f"tensor {name!r} is not planned, or written already")
        dtype, shape = self.planned[name]
        values = np.asarray(values)
        if values.shape != shape:
            raise ValueError(f"tensor {name!r} has shape {values.shape}, planned {shape}")
        if name in self.ties:  # (its storage is its source's)
            self.written.add(name)
            return
        data = narrow_floats.to_file_values(dtype, values)
        self._record(f"data/{self.keys[name]}", np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        self.written.add(name)

    def close(self) -> None:
        """Write the file's end; every planned tensor must have been written."""
        missing = [name for name in self.planned if name not in self.written]
        if missing:
            raise ValueError(f"tensor {missing[0]!r} was planned but not written")
        self._record("version", b"3\n")
        self.zf.close()

    def abort(self) -> None:
        """Leave the file unfinished (the caller removes it): no end is written, now or at garbage collection."""
        fp, self.zf.fp = self.zf.fp, None
        if fp is not None and self.own_file:
            fp.close()

    def _record(self, name: str, data) -> None:
        info = zipfile.ZipInfo("archive/" + name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = len(data)
        # the local header (30 bytes, the name, this padding field, the zip64 field of 20 bytes) ends aligned
        header = 30 + len(info.filename.encode("utf-8")) + 4 + 20
        pad = -(self.zf.fp.tell() + header) % _PT_ALIGNMENT
        info.extra = struct.pack("<HH", 0x4E4E, pad) + bytes(pad)
        chunk = 1 << 24
        view = memoryview(data)
        with self.zf.open(info, "w", force_zip64=True) as out:
            for at in range(0, len(view), chunk):
                out.write(view[at : at + chunk])


class _PlannedTensor:
    """A tensor of a :class:`PtWriter` plan in its pickle: rebuilt by torch from the storage record ``key``."""

    def __init__(self, torch, dtype: str, shape: tuple, key: str):
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise FormatError(f"PyTorch has no dtype {dtype!r}")
        strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        count = math.prod(shape)
        typed = _PT_TYPED_STORAGES.get(dtype)
        extra: tuple = ()
        if typed is not None:
            storage = ("storage", getattr(torch, typed), key, "cpu", count)
            rebuild = torch._utils._rebuild_tensor_v2
        else:  # the dtypes of torch 2.1 and later: an untyped storage of bytes
            storage = ("storage", torch.storage.UntypedStorage, key, "cpu", count * narrow_floats.itemsize(dtype))
            rebuild, extra = torch._utils._rebuild_tensor_v3, (torch_dtype,)
        self.reduced: tuple = (rebuild, (_StorageRecord(storage), 0, shape, strides, False, OrderedDict(), *extra))


class _StorageRecord:
    """A storage in the pickle: a persistent id naming its record (``data/<key>``)."""

    def __init__(self, persistent_id: tuple):
        self.persistent_id = persistent_id


class _StateDictPickler(pickle.Pickler):
    """Pickles a state_dict of :class:`_PlannedTensor` as torch.save pickles one of tensors."""

    def persistent_id(self, obj):
        return obj.persistent_id if isinstance(obj, _StorageRecord) else None

    def reducer_override(self, obj):
        return obj.reduced if isinstance(obj, _PlannedTensor) else NotImplemented


def torch_narrow_float(torch, name: str, values: np.ndarray):
    """A torch tensor of a format numpy lacks (``name`` in :data:`nnc.narrow_floats.NARROW_FLOATS`) holding
    ``values``, converted by :func:`nnc.narrow_floats.from_float32` (the same bits as the safetensors writer)."""
    narrow = narrow_floats.NARROW_FLOATS[name]
    bits = np.asarray(narrow_floats.from_float32(name, values)).astype(narrow.storage.newbyteorder("="))
    bits = bits.reshape(np.shape(values)).copy(order="C")  # a 0-d tensor stays 0-d (ascontiguousarray: 1-d)
    signed = torch.int16 if narrow.bits == 16 else torch.uint8  # torch views need a dtype of the same width
    raw = torch.from_numpy(bits.view(np.int16) if narrow.bits == 16 else bits)
    return raw.view(signed).view(getattr(torch, name))


# -- ONNX -------------------------------------------------------------------------------


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise FormatError("ONNX files need onnx: pip install onnx") from None
    return onnx, numpy_helper


def onnx_quantisation_parameters(graph, found=None) -> set:
    """Names of an ONNX graph's quantisation parameters: the scale and zero-point inputs of QuantizeLinear and
    DequantizeLinear, and every input of the ``QLinear*`` and ``*Integer`` operators but their data (subgraphs too).

    A quantised model's weights are integers, coded exactly; its float scales set the step of every one of
    them, so that a scale rounded by quantisation changes a whole channel of the model.

    Parameters
    ----------
    graph : ``onnx.GraphProto``
        The graph.

    Returns
    -------
    set of str
        The input names (initializers or not).

    Examples
    --------
    >>> import onnx
    >>> node = onnx.helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"])
    >>> graph = onnx.helper.make_graph([node], "g", [], [])
    >>> sorted(onnx_quantisation_parameters(graph))
    ['w_scale', 'w_zp']
    """
    found = set() if found is None else found
    data_inputs = {"QLinearConv": (0, 3, 8), "QLinearMatMul": (0, 3), "ConvInteger": (0, 1), "MatMulInteger": (0, 1)}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            found.update(n for n in node.input[1:] if n)
        elif node.op_type.startswith("QLinear") or node.op_type in data_inputs:
            data = data_inputs.get(node.op_type, (0, 3))  # QLinearAdd, QLinearMul...: a and b
            found.update(n for i, n in enumerate(node.input) if n and i not in data)
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                onnx_quantisation_parameters(sub, found)
    return found


def _onnx_weights(graph, found=None, values=None, kept=None) -> "OrderedDict":
    """Every weight of an ONNX graph: {name: TensorProto}, in graph order.

    Weights are the graph's initializers, the floating-point ``value`` tensors of
    its Constant nodes (named by the node's output) and, recursively, those of the
    subgraphs of If, Loop and Scan nodes.  Integer Constant nodes (shapes, axes,
    slice bounds) are graph structure and stay with the graph, and so do the
    initializers no stream can code (:func:`_onnx_kept_in_graph`), each appended
    to ``kept`` as "name (why)".  ``values(tensor)`` gives an initializer's array
    (default: its inline data).  The TensorProtos are the model's own, so that
    writing replaces them in place.
    """
    float_types = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
    found = OrderedDict() if found is None else found

    def add(name, tensor):
        if name in found:
            raise FormatError(f"two weights of the ONNX model are named {name!r}")
        found[name] = tensor

    for init in graph.initializer:
        why = _onnx_kept_in_graph(init, values or _onnx_inline_values)
        if why:
            if kept is not None:
                kept.append(f"{init.name} ({why}; kept in the graph: decoding with --template restores it)")
            continue
        add(init.name, init)
    for node in graph.node:
        for attr in node.attribute:
            if (
                node.op_type == "Constant"
                and attr.name == "value"
                and attr.HasField("t")
                and node.output
                and attr.t.data_type in float_types
            ):
                add(node.output[0], attr.t)
            for sub in _subgraphs(attr):
                _onnx_weights(sub, found, values, kept)
    return found


#: TensorProto types of integers that may hold values beyond int32 (INT64, UINT32, UINT64).
_ONNX_WIDE_INTS = {7: "int64", 12: "uint32", 13: "uint64"}


def _onnx_kept_in_graph(init, values) -> str | None:
    """Why an initializer stays in the graph instead of being coded, or None: STRING tensors (class labels)
    and integers beyond int32 (INT64_MAX slice bounds), which a stream cannot hold (spec 7.4, 7.5)."""
    if init.data_type == 8:  # STRING
        return "a STRING initializer"
    if init.data_type in _ONNX_WIDE_INTS:
        arr = values(init)
        if arr.size and (int(arr.min()) < -(1 << 31) or int(arr.max()) >= 1 << 31):
            return f"an {_ONNX_WIDE_INTS[init.data_type]} initializer beyond int32"
    return None


def _onnx_inline_values(init) -> np.ndarray:
    """An initializer's array, from data held in the model (external data must have been loaded)."""
    _, numpy_helper = _onnx()
    if init.data_location == 1:  # EXTERNAL, not loaded: to_array would look for it beside the working directory
        raise FormatError(f"initializer {init.name!r}: its external data is not loaded")
    return numpy_helper.to_array(init)


def _subgraphs(attribute) -> list:
    """The graphs an ONNX node attribute holds (the bodies of If, Loop, Scan)."""
    return ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)


def _onnx_sparse_weights(graph) -> list:
    """The sparse weights of an ONNX graph and its subgraphs, which :func:`_onnx_weights` leaves out:
    sparse initializers and Constant nodes with a ``sparse_value``, each named and said to be sparse."""
    found = [f"{sparse.values.name} (a sparse initializer)" for sparse in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "sparse_value" and node.output:
                found.append(f"{node.output[0]} (a sparse Constant)")
            for sub in _subgraphs(attr):
                found += _onnx_sparse_weights(sub)
    return found


def read_onnx(path):
    """The weights of an ONNX model and their dtype names (needs ``onnx``).

    Weights are the initializers, the floating-point tensors of Constant nodes
    (named by the node's output) and those of subgraphs (If, Loop, Scan), in
    graph order; integer Constant nodes are graph structure, not weights, and
    so are STRING initializers and integer ones with values beyond int32
    (which no stream holds; decoding takes them from the template).  These,
    sparse initializers and sparse Constant nodes are not read (the lazy
    reader, :func:`nnc.readers.open_model`, names them in ``left_out``).

    Parameters
    ----------
    path : str or ``os.PathLike``
        The .onnx file.

    Returns
    -------
    tuple
        ``(tensors, dtypes)``: {initializer name: ``numpy.ndarray``} in graph
        order and {name: dtype name}.

    Raises
    ------
    nnc.formats.FormatError
        If onnx is not installed or the file cannot be loaded.

    Examples
    --------
    >>> import numpy as np, tempfile, os, onnx
    >>> from onnx import helper, numpy_helper
    >>> from nnc.formats import read_onnx
    >>> w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    >>> y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])
    >>> graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [y], [w])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> onnx.save(helper.make_model(graph), path)
    >>> tensors, dtypes = read_onnx(path)
    >>> tensors["w"].shape, dtypes
    ((2, 2), {'w': 'float32'})
    """
    return _read_all("onnx", path)


def onnx_bytes(tensors, dtypes=None, template=None) -> bytes:
    """The ONNX model ``template`` (a path) with its weights replaced by ``tensors``.

    ONNX files hold the graph as well as the weights, so an ONNX file is
    written by replacing the weights of the original model: initializers,
    Constant nodes and those of subgraphs (see :func:`read_onnx`).  The
    template must match: the same weight names, and for each the same shape
    and (where ``dtypes`` names it) the same dtype; otherwise nothing is
    written and the error lists every difference.

    Parameters
    ----------
    tensors : ``Mapping``
        {weight name: array-like}.
    dtypes : dict or None
        {name: original dtype name} of the tensors (as decoding restores them),
        checked against the template's.
    template : str, ``os.PathLike`` or None
        The original ONNX model.

    Returns
    -------
    bytes
        The serialised model.

    Raises
    ------
    nnc.formats.FormatError
        If onnx is not installed, no template is given, or the template's
        weights do not match ``tensors`` (names, shapes, dtypes).

    Examples
    --------
    >>> import numpy as np, tempfile, os, onnx
    >>> from onnx import helper, numpy_helper
    >>> from nnc.formats import onnx_bytes
    >>> w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    >>> y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])
    >>> graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [y], [w])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> onnx.save(helper.make_model(graph), path)
    >>> model = onnx.load_from_string(onnx_bytes({"w": np.full((2, 2), 0.5)}, template=path))
    >>> numpy_helper.to_array(model.graph.initializer[0]).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        _write_onnx_weights(OnnxWriter(path, "model.onnx", _onnx_plan(tensors, dtypes), template, None), tensors)
        with open(path, "rb") as fh:
            return fh.read()


#: Largest ONNX model written with its weights inline (protobuf messages end at 2 GiB); a larger one, or one
#: whose template keeps its weights in external data, is written with its weights in ``NAME.data`` beside it.
ONNX_INLINE_LIMIT = (1 << 31) - (1 << 24)


# -- ONNX written tensor by tensor -----------------------------------------------------------

#: TensorProto data types a streamed ONNX weight may have (FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, BOOL,
#: FLOAT16, DOUBLE, UINT32, UINT64, BFLOAT16, FLOAT8E4M3FN, FLOAT8E5M2): their raw data is the file bytes of their
#: numpy dtype (:func:`nnc.narrow_floats.file_dtype`).
_ONNX_WRITABLE_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16, 17, 19})

#: Weights of at least this many bytes go to the external data file when one is written; smaller ones stay inline.
_ONNX_EXTERNAL_THRESHOLD = 1024


class OnnxWriter:
    """The ONNX model ``template`` with its weights replaced one at a time: the file is laid out first, from the
    template's graph and the weights' shapes and types, with a gap where each weight's bytes go; each weight is
    then written (or decoded) into its gap, so memory holds the template's graph and one tensor, not the model.

    The weights go inline, or, when the template keeps its own in external data or the model would pass
    protobuf's 2 GiB (:data:`ONNX_INLINE_LIMIT`), those of 1 KiB or more into one external data file
    ``NAME.data`` beside the model (each at a multiple of 4096 bytes). ``onnx.load`` reads the result as the
    model :func:`write_onnx` writes in memory.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file to write the model to (a temporary file: the caller renames it).
    final_name : str
        The model's file name once renamed: the external data file is named after it.
    plan : dict
        {weight name: (shape, dtype name)} as decoded (a dtype None is not checked against the template's);
        every weight of the template must be there.
    template : str or ``os.PathLike``
        The original ONNX model.
    data_file : callable or None
        ``data_file(location)``: the (temporary) path to write the external data file ``location`` to, called
        only if one is written; None writes every weight inline.

    Raises
    ------
    nnc.formats.FormatError
        If onnx is not installed, the template cannot be read, or its weights do not match ``plan``.

    Examples
    --------
    >>> import numpy as np, tempfile, os, onnx
    >>> from onnx import helper, numpy_helper
    >>> from nnc.formats import OnnxWriter
    >>> w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    >>> y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])
    >>> graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [y], [w])
    >>> folder = tempfile.mkdtemp()
    >>> onnx.save(helper.make_model(graph), os.path.join(folder, "t.onnx"))
    >>> out = os.path.join(folder, "m.onnx")
    >>> writer = OnnxWriter(out, "m.onnx", {"w": ((2, 2), "float32")}, os.path.join(folder, "t.onnx"), None)
    >>> writer.write("w", np.full((2, 2), 0.5))
    >>> writer.close()
    >>> numpy_helper.to_array(onnx.load(out).graph.initializer[0]).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """

    def __init__(self, path, final_name: str, plan: dict, template, data_file):
        import functools

        from .readers import onnx_external_bytes, onnx_initializer_values

        onnx, numpy_helper = _onnx()
        if template is None:
            raise FormatError(
                "writing ONNX needs the original model as a template (template=, nnc decode --template MODEL.onnx)"
            )
        self.path = os.fspath(path)
        folder = os.path.dirname(os.fspath(template))
        try:
            model = load_onnx_graph(template)
            weights = _onnx_weights(model.graph, values=functools.partial(onnx_initializer_values, template))
        except FormatError as exc:
            raise FormatError(f"{template}: {exc}") from None
        except Exception as exc:
            raise FormatError(f"{template}: cannot load as ONNX: {exc}") from None
        held = {}
        for name, t in weights.items():
            if t.data_type not in _ONNX_WRITABLE_TYPES:
                raise FormatError(
                    f"{template}: weight {name!r} has ONNX data type {t.data_type}, which nnc cannot write"
                )
            held[name] = _HeldWeight(tuple(int(d) for d in t.dims), onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        decoded = {name: np.broadcast_to(np.empty((), np.uint8), tuple(shape)) for name, (shape, _) in plan.items()}
        problems = _template_mismatches(decoded, {name: dtype for name, (_, dtype) in plan.items()}, held)
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise FormatError(f"{template} does not match the decoded model: {shown}")
        own = os.path.realpath(template)  # (the data load_onnx_graph left in the template: not external data)
        theirs = [f for f in _external_files(model.graph, folder) if os.path.realpath(f) != own]
        self.weights = {name: (held[name].dtype.name, held[name].shape) for name in weights}
        marker = os.urandom(12)
        holes = {}  # {the raw_data marking a weight's gap: (name, length)}
        for i, (name, t) in enumerate(weights.items()):
            for f in _ONNX_DATA_FIELDS:
                if f in t.DESCRIPTOR.fields_by_name and f not in ("dims", "data_type"):
                    t.ClearField(f)
            length = math.prod(held[name].shape) * narrow_floats.file_dtype(held[name].dtype.name).itemsize
            t.raw_data = marker + struct.pack("<I", i)
            holes[t.raw_data] = (name, length)
        for t in _onnx_tensors(model.graph):  # what stays of the template's own data: read into the graph
            if t.data_location == onnx.TensorProto.EXTERNAL:
                t.raw_data = onnx_external_bytes(template, t)
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
        pieces = _wire_pieces(model, holes, marker)
        inline_size = _pieces_size(pieces)
        self.offsets: dict[str, tuple] = {}  # name -> (path, offset)
        if data_file is None and inline_size > ONNX_INLINE_LIMIT:
            raise FormatError(
                f"the ONNX model takes {inline_size} bytes, more than one protobuf message holds (2 GiB): "
                "write it to a file (write_model), which puts its weights in external data"
            )
        external = [
            t
            for t in _onnx_tensors(model.graph)
            if t.raw_data in holes and holes[t.raw_data][1] >= _ONNX_EXTERNAL_THRESHOLD
        ]
        if data_file is not None and (theirs or inline_size > ONNX_INLINE_LIMIT) and external:
            from ._files import refuse_overwriting

            location = final_name + ".data"
            refuse_overwriting(Path(self.path).parent / location, {"template's external data": theirs})
            data_path = data_file(location)
            end = 0
            for t in external:  # (the weights of 1 KiB or more, in graph order)
                name, length = holes.pop(t.raw_data)
                end = -(-end // 4096) * 4096
                t.ClearField("raw_data")
                for key, value in (("location", location), ("offset", end), ("length", length)):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, str(value)
                t.data_location = onnx.TensorProto.EXTERNAL
                self.offsets[name] = (data_path, end)
                end += length
            pieces = _wire_pieces(model, holes, marker)  # (the gaps left inline: weights under 1 KiB)
            with open(data_path, "wb") as fh:
                fh.truncate(end)
                reserve_space(fh.fileno(), end)  # the gaps are written through maps: a full disk fails here
        with open(self.path, "wb") as fh:
            for piece in pieces:
                if isinstance(piece, bytes):
                    fh.write(piece)
                else:
                    name, length = piece
                    self.offsets[name] = (self.path, fh.tell())
                    fh.seek(length, os.SEEK_CUR)
            fh.truncate()
            fh.flush()
            reserve_space(fh.fileno(), fh.tell())
        self.written: set[str] = set()
        self.buffers: dict[str, np.memmap] = {}

    def buffer(self, name: str):
        """The array in the file to decode weight ``name`` into: its gap as a map of the template's raw type, or
        None for an empty weight."""
        dtype, shape = self.weights[name]
        if not math.prod(shape):
            return None
        if name not in self.buffers:
            path, offset = self.offsets[name]
            self.buffers[name] = np.memmap(
                path, dtype=narrow_floats.file_dtype(dtype), mode="r+", offset=offset, shape=shape
            )
        return self.buffers[name]

    def write(self, name: str, values) -> None:
        """Write weight ``name``'s values (converted to the template's type; bfloat16 and float8 from values)."""
        if name not in self.weights or name in self.written:
            raise ValueError(f"weight {name!r} is not in the template, or written already")
        dtype, shape = self.weights[name]
        out = self.buffer(name)
        if out is not None and not np.may_share_memory(values, out):  # (else decoded into its place already)
            out[...] = narrow_floats.to_file_values(dtype, values).reshape(shape)
        if out is not None:
            out.flush()
            del self.buffers[name]
        self.written.add(name)

    def close(self) -> None:
        """Check that every weight was written."""
        missing = [name for name in self.weights if name not in self.written]
        if missing:
            raise ValueError(f"weight {missing[0]!r} was not written")


class _HeldWeight:
    """A template weight's shape and dtype, for :func:`_template_mismatches` (its values are not read)."""

    def __init__(self, shape: tuple, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)


def _external_files(graph, folder: str) -> list:
    """The external data files of a graph's tensors (none when they are inline)."""
    files = []
    for t in _onnx_tensors(graph):
        if t.data_location == 1:
            location = next((e.value for e in t.external_data if e.key == "location"), None)
            if location:
                files.append(os.path.join(folder, location))
    return list(dict.fromkeys(files))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _wire_pieces(message, holes: dict, marker: bytes) -> list:
    """``message`` serialised (protobuf wire format) as pieces: bytes, and for each TensorProto whose raw_data
    is a key of ``holes`` (each begins with ``marker``), its bytes without that field, the field's key and
    length, then (name, length) for the gap its data fills. Only messages that hold a gap are taken apart, field
    by field in field order."""
    whole = message.SerializeToString()
    if marker not in whole:
        return [whole]
    if message.DESCRIPTOR.name == "TensorProto" and message.raw_data in holes:
        name, length = holes[message.raw_data]
        rest = type(message)()
        rest.CopyFrom(message)
        rest.ClearField("raw_data")
        number = message.DESCRIPTOR.fields_by_name["raw_data"].number
        return [rest.SerializeToString(), _varint(number << 3 | 2) + _varint(length), (name, length)]
    pieces: list = []
    for field, value in message.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if field.type == field.TYPE_MESSAGE:
            for element in value if repeated else [value]:
                inner = _wire_pieces(element, holes, marker)
                pieces += [_varint(field.number << 3 | 2) + _varint(_pieces_size(inner)), *inner]
        else:
            alone = type(message)()
            if repeated:
                getattr(alone, field.name).extend(value)
            else:
                setattr(alone, field.name, value)
            pieces.append(alone.SerializeToString())
    return pieces


def _pieces_size(pieces: list) -> int:
    return sum(len(p) if isinstance(p, bytes) else p[1] for p in pieces)


# -- ONNX opened without its raw data --------------------------------------------------------

#: Raw data of at least this many bytes stays in the file when an ONNX model is opened (:func:`load_onnx_graph`).
ONNX_LEFT_IN_FILE = 1024

#: The messages of an ONNX model that lead to the tensors :func:`_onnx_tensors` walks (initializers and node
#: attributes' tensors, in the graph and its subgraphs): {message: {field number: the message it holds}}.
_ONNX_NESTING = {
    "model": {7: "graph"},
    "graph": {1: "node", 5: "tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 11: "graph"},
}


class _WireError(ValueError):
    """Bytes that are not protobuf's wire format as the walk expects it (the caller falls back to onnx.load)."""


def load_onnx_graph(path):
    """``onnx.load(path, load_external_data=False)`` without reading the model's tensor data into memory: each
    tensor's raw data of :data:`ONNX_LEFT_IN_FILE` bytes or more stays in the file, and the tensor says where, as
    external data whose location is the model file itself (offset and length of its bytes there). A model of
    any size then opens in the memory of its graph, and its tensors are read one at a time as external data is.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The .onnx file.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    Exception
        What ``onnx.load`` raises for a file it cannot read (a file the walk cannot follow is handed to it).

    Examples
    --------
    >>> import numpy as np, tempfile, os, onnx
    >>> from onnx import helper, numpy_helper
    >>> from nnc.formats import load_onnx_graph
    >>> w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    >>> graph = helper.make_graph([], "g", [], [], [w])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> onnx.save(helper.make_model(graph), path)
    >>> t = load_onnx_graph(path).graph.initializer[0]
    >>> len(t.raw_data), {e.key: e.value for e in t.external_data}["location"]
    (0, 'm.onnx')
    """
    from .decoder import GuardedMap

    onnx, _ = _onnx()
    path = Path(path)
    cut = False
    try:
        with open(path, "rb") as fh, GuardedMap(fh.fileno(), 0, access=mmap.ACCESS_READ).guard() as data:
            stripped = _without_raw_data(data, 0, len(data), "model", path.name.encode("utf-8"), 0)
            cut = data.cut  # (a page past a cut reads zeros: what was read is not the file)
        if not cut:
            model = onnx.ModelProto()
            model.ParseFromString(stripped)
            return model
    except Exception:  # (an empty file, a damaged one, groups): onnx says what is wrong with it
        pass
    if cut:
        raise FormatError(f"{path}: the file was cut by another program while it was read")
    return onnx.load(os.fspath(path), load_external_data=False)


def _read_varint(data, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise _WireError("a varint runs past its message")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _without_raw_data(data, start: int, end: int, kind: str, location: bytes, depth: int) -> bytes:
    """The message of ``kind`` in data[start:end] with the raw data of its tensors left out, each tensor naming its
    bytes as external data in ``location``; everything else byte for byte."""
    if depth > 100:
        raise _WireError("messages nested too deeply")
    nested = _ONNX_NESTING.get(kind, {})
    out = bytearray()
    copied = start  # data[copied:at] is still to be copied as it is
    external = b""
    at = start
    while at < end:
        field_start = at
        key, at = _read_varint(data, at, end)
        number, wire = key >> 3, key & 7
        if kind == "tensor" and number == 13:  # external already: left as it is
            return bytes(data[start:end])
        if wire == 0:
            value, at = _read_varint(data, at, end)
            if kind == "tensor" and number == 14 and value != 0:  # (data_location EXTERNAL)
                return bytes(data[start:end])
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length, body = _read_varint(data, at, end)
            at = body + length
            if at > end:
                raise _WireError("a field runs past its message")
            if kind == "tensor" and number == 9 and length >= ONNX_LEFT_IN_FILE:
                out += data[copied:field_start]
                copied = at
                external = _external_data_fields(location, body, length)
            elif number in nested:
                out += data[copied:field_start]
                inner = _without_raw_data(data, body, at, nested[number], location, depth + 1)
                out += _varint(key) + _varint(len(inner)) + inner
                copied = at
        else:
            raise _WireError(f"wire type {wire}")
        if at > end:
            raise _WireError("a field runs past its message")
    out += data[copied:end]
    return bytes(out + external)


def _external_data_fields(location: bytes, offset: int, length: int) -> bytes:
    """A TensorProto's fields external_data (13: location, offset, length) and data_location (14) EXTERNAL."""
    fields = b""
    for key, value in ((b"location", location), (b"offset", str(offset).encode()), (b"length", str(length).encode())):
        entry = _varint(1 << 3 | 2) + _varint(len(key)) + key + _varint(2 << 3 | 2) + _varint(len(value)) + value
        fields += _varint(13 << 3 | 2) + _varint(len(entry)) + entry
    return fields + _varint(14 << 3) + _varint(1)


#: The fields of an ONNX TensorProto that hold or locate its data, replaced when a weight is written.
_ONNX_DATA_FIELDS = (
    "dims",
    "data_type",
    "segment",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "raw_data",
    "double_data",
    "uint64_data",
    "external_data",
    "data_location",
)


def _onnx_tensors(graph):
    """Every initializer and Constant node tensor of an ONNX graph and its subgraphs (coded or not)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            for sub in _subgraphs(attr):
                yield from _onnx_tensors(sub)


def write_onnx(path, tensors, dtypes=None, template=None) -> list:
    """Write the ONNX model ``template`` with its weights replaced by ``tensors`` to ``path``, atomically.

    The weights are written inline, or, when the template keeps its own in external data or the model
    would pass protobuf's 2 GiB (:data:`ONNX_INLINE_LIMIT`), into one external data file ``NAME.data``
    beside ``path`` (written first; ``path`` last).

    Parameters
    ----------
    path : str or ``os.PathLike``
        The .onnx file.
    tensors, dtypes, template
        As for :func:`onnx_bytes`.

    Returns
    -------
    list of str
        The files written (the external data file first, if any).

    Raises
    ------
    nnc.formats.FormatError
        As :func:`onnx_bytes`.
    FileExistsError
        If the external data file would replace one of the template's.

    Examples
    --------
    >>> import numpy as np, tempfile, os, onnx
    >>> from onnx import helper, numpy_helper
    >>> w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    >>> y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])
    >>> graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [y], [w])
    >>> d = tempfile.mkdtemp()
    >>> onnx.save(helper.make_model(graph), os.path.join(d, "t.onnx"), save_as_external_data=True, location="t.bin")
    >>> [os.path.basename(f) for f in write_onnx(os.path.join(d, "m.onnx"), {"w": np.zeros((64, 64))}, template=os.path.join(d, "t.onnx"))]
    ['m.onnx.data', 'm.onnx']
    """
    from ._files import TemporaryFiles

    final = Path(path)
    files = TemporaryFiles(final.parent)
    try:
        model_tmp = files.new(final.name)
        _write_onnx_weights(
            OnnxWriter(model_tmp, final.name, _onnx_plan(tensors, dtypes), template, files.new), tensors
        )
        order = sorted(files.temps, key=lambda name: name == final.name)  # the data first: the model names it
        return files.commit(order)
    except BaseException as exc:
        files.discard()
        if isinstance(exc, OSError) and (named := files.user_error(exc, final)) is not None:
            raise named from None
        raise


def _onnx_plan(tensors, dtypes) -> dict:
    """An :class:`OnnxWriter` plan of in-memory tensors: their shapes, and their dtypes where ``dtypes`` names
    them (the others take the template's)."""
    return {name: (tuple(np.shape(v)), (dtypes or {}).get(name)) for name, v in tensors.items()}


def _write_onnx_weights(writer: "OnnxWriter", tensors) -> None:
    for name, values in tensors.items():
        writer.write(name, values)
    writer.close()


def _template_mismatches(tensors, dtypes, held) -> list:
    """What differs between decoded tensors and a template's weights: names, shapes, dtypes."""
    problems = [f"{name!r} is not in the template" for name in tensors if name not in held]
    problems += [f"the template's {name!r} is not in the stream" for name in held if name not in tensors]
    for name, arr in tensors.items():
        if name not in held:
            continue
        shape = tuple(np.shape(arr))
        if shape != held[name].shape:
            problems.append(f"{name!r} has shape {shape}, the template's {held[name].shape}")
        want = dtypes.get(name)  # the stream's own dtype of the tensor, where known
        if want is not None and want != held[name].dtype.name:
            problems.append(f"{name!r} is {want}, the template's {held[name].dtype.name}")
    return problems


# -- public ---------------------------------------------------------------------------------

_READERS = {"npz": read_npz, "safetensors": read_safetensors, "pt": read_pt, "onnx": read_onnx}


def read_model(path, fmt: str | None = None):
    """(tensors, original dtype names) of a model file; the format is detected by content.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The model file.
    fmt : str or None
        One of ``FORMATS`` to skip detection; None to detect it
        (:func:`detect_format`).

    Returns
    -------
    tuple
        ``(tensors, dtypes)``: {name: ``numpy.ndarray``} in file order and
        {name: original dtype name} (bfloat16 tensors come as float32).

    Raises
    ------
    nnc.formats.FormatError
        If the format is unknown, the file is an NNC stream, or it cannot be
        read in its format (see the ``read_*`` functions).
    OSError
        What ``open()`` raises for a path that cannot be opened, naming the path.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from nnc.formats import read_model
    >>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> np.savez(path, w=np.ones(3, np.float16))
    >>> tensors, dtypes = read_model(path)
    >>> tensors["w"].tolist(), dtypes
    ([1.0, 1.0, 1.0], {'w': 'float16'})
    >>> read_model(path, fmt="h5")
    Traceback (most recent call last):
        ...
    nnc.formats.FormatError: unknown model format 'h5'
    """
    fmt = fmt or detect_format(path)
    if fmt == "nnr":
        raise FormatError(f"{path} is an NNC stream, not a model; use decode")
    if fmt not in _READERS:
        raise FormatError(f"unknown model format {fmt!r}")
    return _READERS[fmt](path)


def write_model(path, tensors, dtypes=None, fmt: str | None = None, template=None, metadata=None) -> None:
    """Write tensors to a model file atomically, restoring original dtypes where given.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file to write (see :func:`write_atomic`).
    tensors : ``Mapping``
        {name: array-like}, written in this order.
    dtypes : dict or None
        {name: dtype name}: tensors are converted to these dtypes (names
        numpy does not know are ignored); ``"bfloat16"``, ``"float8_e4m3fn"``
        and ``"float8_e5m2"`` are honoured by the safetensors and PyTorch formats.
    fmt : str or None
        One of ``FORMATS``; None to take it from the extension
        (:func:`format_from_extension`).
    template : str, ``os.PathLike`` or None
        The original ONNX model, needed for ONNX output (:func:`onnx_bytes`).
    metadata : dict or None
        A safetensors file's ``__metadata__``, or a PyTorch state_dict's ``_metadata``
        (:func:`state_dict_metadata`); npz and ONNX files have no place for it.

    Raises
    ------
    nnc.formats.FormatError
        If the format is unknown or cannot be told from the extension, a
        dtype cannot be stored, ONNX is asked for without a template, or the
        format's back end is missing.
    OSError
        If the file cannot be written.
    TypeError
        If ``tensors`` or ``dtypes`` is not a mapping.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from nnc.formats import read_model, write_model
    >>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> write_model(path, {"w": np.array([0.5, 1.5])}, {"w": "float16"})
    >>> read_model(path)[1]
    {'w': 'float16'}
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of names to arrays, not {type(tensors).__name__}")
    if dtypes is not None and not isinstance(dtypes, Mapping):
        raise TypeError(f"dtypes must be a mapping of names to dtype names, not {type(dtypes).__name__}")
    fmt = fmt or format_from_extension(path)
    dtypes = dtypes or {}
    restored = OrderedDict()
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise FormatError(f"{path}: tensor names are strings, not {k!r}")
        kind = np.asarray(v).dtype
        if kind.kind not in "biufc" and not narrow_floats.is_narrow(kind.name):
            raise FormatError(f"{path}: tensor {k!r} has dtype {kind}: a model file holds numbers (bool, int, float)")
        if not kind.isnative:  # (torch and some readers take native byte order only; the values are the same)
            v = np.asarray(v).astype(kind.newbyteorder("="))
        want = dtypes.get(k)
        if want and not narrow_floats.is_narrow(want) and np.asarray(v).dtype.name != want:
            v = _in_dtype(path, k, np.asarray(v), want)
        restored[k] = v
    if fmt == "onnx":
        write_onnx(path, restored, dtypes, template)
        return
    if fmt not in ("npz", "safetensors", "pt"):
        raise FormatError(f"unknown model format {fmt!r}")
    if fmt == "pt":
        _torch()  # (a missing torch is refused before a file is begun)
    from ._files import AtomicFile

    with AtomicFile(path) as out:  # each tensor's bytes go to the file as they are made: no copy of the model
        if fmt == "npz":
            _save_npz(out.fh, restored)
        elif fmt == "safetensors":
            _save_safetensors(out.fh, restored, dtypes, metadata)
        else:
            _save_pt(out.fh, restored, dtypes, metadata)
