"""Model files in and out: numpy .npz, safetensors, PyTorch state_dict, ONNX.

Formats are detected by content, not only by extension.  safetensors and npz
need nothing beyond numpy; PyTorch needs ``torch`` and ONNX needs ``onnx``
(optional extras: ``pip install "nnc[torch]"`` / ``"nnc[onnx]"``).

Tensors are exchanged as an ordered mapping of name to numpy array.  bfloat16
has no numpy dtype: it is read as float32 (exactly) and written back as
bfloat16 when the caller asks for that dtype by name.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import NNCError


class FormatError(NNCError, ValueError):
    """A model file cannot be read or written in the detected or requested format."""


FORMATS = ("npz", "safetensors", "pt", "onnx")
NNR_EXTENSIONS = (".nnr", ".nnc", ".bin")

# -- detection -----------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """Format of a model file from its first bytes (falls back to the extension)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise FormatError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            raise FormatError(f"{p}: damaged zip archive") from None
        if any(n.endswith("data.pkl") for n in names):
            return "pt"
        if all(n.endswith(".npy") for n in names):
            return "npz"
        raise FormatError(f"{p}: a zip archive that is neither .npz nor a PyTorch file")
    if len(head) >= 9:
        (hlen,) = struct.unpack("<Q", head[:8])
        if 2 <= hlen < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "pt"
    if head[:4] == b"\x00\x04\x02\x00" or head[:4] == b"\x00\x04\x02\x01":
        return "nnr"
    ext = p.suffix.lower().lstrip(".")
    if ext == "onnx" or (head[:1] == b"\x08" and ext in ("onnx", "")):
        return "onnx"
    if ext in ("pth", "pt"):
        return "pt"
    raise FormatError(f"{p}: unknown model format (supported: npz, safetensors, pt/pth, onnx)")


def format_from_extension(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    mapping = {"npz": "npz", "safetensors": "safetensors", "pt": "pt", "pth": "pt", "onnx": "onnx"}
    if ext not in mapping:
        raise FormatError(f"{path}: cannot tell the output format from the extension "
                          f"(use .npz, .safetensors, .pt or .onnx)")
    return mapping[ext]


# -- atomic writes ---------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that it either appears complete or not at all."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- safetensors (hand-written: header length, JSON header, raw little-endian data) --

_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_ST_NAMES = {np.dtype(v).str.replace("|", "").replace("=", "<"): k for k, v in _ST_DTYPES.items()}


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def read_safetensors(path) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """Tensors (in file order) and {name: original dtype name} of a safetensors file."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise FormatError(f"{path}: too short for safetensors")
    (hlen,) = struct.unpack("<Q", data[:8])
    if 8 + hlen > len(data):
        raise FormatError(f"{path}: safetensors header runs past the end of the file")
    try:
        header = json.loads(data[8:8 + hlen])
    except ValueError:
        raise FormatError(f"{path}: safetensors header is not JSON") from None
    body = memoryview(data)[8 + hlen:]
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    items.sort(key=lambda kv: kv[1]["data_offsets"][0])
    out, dtypes = OrderedDict(), {}
    for name, info in items:
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not 0 <= start <= end <= len(body):
            raise FormatError(f"{path}: tensor {name!r} lies outside the file")
        st = info["dtype"]
        if st == "BF16":
            raw = np.frombuffer(body[start:end], dtype="<u2").reshape(shape)
            out[name] = bfloat16_to_float32(raw)
            dtypes[name] = "bfloat16"
        elif st in _ST_DTYPES:
            arr = np.frombuffer(body[start:end], dtype=_ST_DTYPES[st]).reshape(shape)
            out[name] = arr.astype(arr.dtype.newbyteorder("="))
            dtypes[name] = out[name].dtype.name
        else:
            raise FormatError(f"{path}: unsupported safetensors dtype {st} for {name!r}")
    return out, dtypes


def safetensors_bytes(tensors, dtypes: dict | None = None) -> bytes:
    dtypes = dtypes or {}
    header, chunks, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.asarray(arr, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        if dtypes.get(name) == "bfloat16":
            raw, st = float32_to_bfloat16(arr.astype(np.float32)).astype("<u2").tobytes(), "BF16"
        else:
            le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            key = le.dtype.str.replace("|", "")
            if key not in _ST_NAMES:
                raise FormatError(f"dtype {arr.dtype} of {name!r} has no safetensors equivalent")
            raw, st = le.tobytes(), _ST_NAMES[key]
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(chunks)


# -- npz -----------------------------------------------------------------------------


def read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            out = OrderedDict((k, z[k]) for k in z.files)
    except ValueError as exc:
        raise FormatError(f"{path}: {exc}") from None
    return out, {k: v.dtype.name for k, v in out.items()}


def npz_bytes(tensors, dtypes=None) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in tensors.items()})
    return buf.getvalue()


# -- PyTorch ---------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError:
        raise FormatError('PyTorch files need torch: pip install "nnc[torch]"') from None
    return torch


def read_pt(path):
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on bad files
        raise FormatError(f"{path}: cannot load as a PyTorch state_dict: {exc}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: not a state_dict (a mapping of names to tensors)")
    out, dtypes = OrderedDict(), {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            continue
        t = v.detach().cpu()
        dtypes[k] = str(t.dtype).replace("torch.", "")
        out[k] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return out, dtypes


def pt_bytes(tensors, dtypes=None) -> bytes:
    torch = _torch()
    dtypes = dtypes or {}
    sd = OrderedDict()
    for k, v in tensors.items():
        t = torch.from_numpy(np.array(v, order="C", copy=True))
        if dtypes.get(k) == "bfloat16":
            t = t.to(torch.bfloat16)
        sd[k] = t
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


# -- ONNX -------------------------------------------------------------------------------


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise FormatError('ONNX files need onnx: pip install "nnc[onnx]"') from None
    return onnx, numpy_helper


def read_onnx(path):
    onnx, numpy_helper = _onnx()
    try:
        model = onnx.load(os.fspath(path))
    except Exception as exc:
        raise FormatError(f"{path}: cannot load as ONNX: {exc}") from None
    out = OrderedDict((init.name, numpy_helper.to_array(init)) for init in model.graph.initializer)
    return out, {k: v.dtype.name for k, v in out.items()}


def onnx_bytes(tensors, dtypes=None, template=None) -> bytes:
    """The ONNX model ``template`` (a path) with its initializers replaced by ``tensors``."""
    onnx, numpy_helper = _onnx()
    if template is None:
        raise FormatError("writing ONNX needs the original model as a template (--template MODEL.onnx)")
    model = onnx.load(os.fspath(template))
    for init in model.graph.initializer:
        if init.name in tensors:
            arr = np.asarray(tensors[init.name]).astype(numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return model.SerializeToString()


# -- public ---------------------------------------------------------------------------------

_READERS = {"npz": read_npz, "safetensors": read_safetensors, "pt": read_pt, "onnx": read_onnx}


def read_model(path, fmt: str | None = None):
    """(tensors, original dtype names) of a model file; the format is detected by content."""
    fmt = fmt or detect_format(path)
    if fmt == "nnr":
        raise FormatError(f"{path} is an NNC stream, not a model; use decode")
    if fmt not in _READERS:
        raise FormatError(f"unknown model format {fmt!r}")
    return _READERS[fmt](path)


def write_model(path, tensors, dtypes=None, fmt: str | None = None, template=None) -> None:
    """Write tensors to a model file atomically, restoring original dtypes where given."""
    fmt = fmt or format_from_extension(path)
    dtypes = dtypes or {}
    restored = OrderedDict()
    for k, v in tensors.items():
        want = dtypes.get(k)
        if want and want not in ("bfloat16",) and np.asarray(v).dtype.name != want:
            try:
                v = np.asarray(v).astype(want)
            except TypeError:
                pass
        restored[k] = v
    if fmt == "npz":
        data = npz_bytes(restored)
    elif fmt == "safetensors":
        data = safetensors_bytes(restored, dtypes)
    elif fmt == "pt":
        data = pt_bytes(restored, dtypes)
    elif fmt == "onnx":
        data = onnx_bytes(restored, dtypes, template)
    else:
        raise FormatError(f"unknown model format {fmt!r}")
    write_atomic(path, data)
