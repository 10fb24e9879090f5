"""The normative NNC decoder: a unit stream in, named tensors out (spec 3–15).

Every function cites the spec clause it implements.  The decoder imports only
decoder-side modules (container, engine, reconstruction); it never imports the
encoder.

    >>> import nnc
    >>> stream = nnc.encode({"w": [[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]]}, qp=-8, dq=False)
    >>> nnc.decode(stream)["w"].tolist()
    [[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]]
"""

from __future__ import annotations

import io
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Union

import numpy as np

from . import container as C
from .engine import get_engine
from .errors import DecodeError, LimitError, NNCError, UnsupportedError
from .reconstruction import (
    DECOMPRESSED_DATA_FORMATS,
    convert_to_format,
    reconstruct_codebook,
    reconstruct_uniform,
    step_size,
)

StreamInput = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", BinaryIO]

PAYLOAD_TYPE_NAMES = {
    C.NNR_PT_INT: "INT",
    C.NNR_PT_FLOAT: "FLOAT",
    C.NNR_PT_RAW_FLOAT: "RAW_FLOAT",
    C.NNR_PT_BLOCK: "BLOCK",
}

#: Elements a CABAC payload can code per byte, at most, when every element costs a bin (spec 15.2).
ELEMENTS_PER_PAYLOAD_BYTE = 8192
ELEMENTS_SLACK = 65536


@dataclass(frozen=True)
class Limits:
    """Resource limits of the decoder (spec 15.2).

    ``max_tensor_elements`` caps every tensor; ``max_total_bytes`` caps the
    decoded output of one stream.  Independently of them, a tensor may not
    declare more elements than its payload can code.
    """

    max_tensor_elements: int = 2**31 - 1
    max_total_bytes: int = 8 * 2**30


@dataclass
class TensorInfo:
    """What the stream says about one decoded tensor."""

    name: str
    shape: tuple
    dtype: str
    payload_type: str
    qp: int | None
    qp_density: int | None
    step: float | None
    dq: bool
    scan_order: int
    n_gtx: int | None
    codebook: list | None
    unit_index: int
    unit_offset: int
    unit_size: int
    block: tuple = ()
    row_skip: bool = False
    entry_points: list = field(default_factory=list)
    decompressed_data_format: int | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class DecoderState:
    """What a 2nd-edition decoder keeps across streams, per tensor name (spec 14).

    * ``levels``: the last decoded integer levels (the TCA base, spec 10.5);
    * ``history``: the HDSP history map, the OR of (level != 0) over all decoded updates.

    Pass one state to successive :func:`decode` calls to decode a base model
    followed by incremental updates.
    """

    def __init__(self):
        self.levels: dict[str, np.ndarray] = {}
        self.history: dict[str, np.ndarray] = {}

    def update(self, name: str, levels: np.ndarray) -> None:
        self.levels[name] = levels
        hist = self.history.get(name)
        nonzero = (levels != 0).astype(np.int8)
        self.history[name] = nonzero if hist is None or hist.shape != nonzero.shape else (hist | nonzero)


def read_input(data: StreamInput) -> bytes | memoryview:
    """Bytes of a stream given as bytes, a path or a binary file."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data) if isinstance(data, bytearray) else data
    if isinstance(data, memoryview):
        return data.cast("B") if data.format != "B" else data
    if isinstance(data, (str, os.PathLike)):
        try:
            with open(data, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise DecodeError(f"cannot read stream file {os.fspath(data)!r}: {exc.strerror}") from None
    if hasattr(data, "read"):
        out = data.read()
        if not isinstance(out, (bytes, bytearray)):
            raise TypeError("the file object must be opened in binary mode")
        return bytes(out)
    raise TypeError(f"cannot decode from {type(data).__name__}; give bytes, a path or a binary file")


@dataclass
class _Params:
    """Parameters in force for an NDU: from the MPS, possibly overridden by an LPS (spec 5.2, 6.1)."""

    profile: int = 0
    qp_density: int = 2
    qp: int = 0
    parent_signalling: bool = False


class Decoder:
    """Decoder of one NNC stream, with metadata and random access by tensor.

    >>> import nnc
    >>> dec = nnc.Decoder(nnc.encode({"a": [1.0, 2.0], "b": [3.0]}, qp=-20, nonweight_qp=None))
    >>> [t.name for t in dec.tensors()]
    ['a', 'b']
    >>> dec.decode_tensor("b").tolist()
    [3.0]
    """

    def __init__(
        self,
        data: StreamInput,
        *,
        limits: Limits | None = None,
        engine: str | None = None,
        state: DecoderState | None = None,
        entry_points: str = "ignore",
    ):
        if entry_points not in ("ignore", "use", "verify"):
            raise ValueError("entry_points must be 'ignore', 'use' or 'verify'")
        self.data = read_input(data)
        self.limits = limits or Limits()
        self.engine = get_engine(engine)
        # levels are kept across streams only when the caller asks (a state) or the stream needs them
        self.keep_state = state is not None
        self.state = state if state is not None else DecoderState()
        self.entry_points_mode = entry_points
        self.units: list[C.Unit] = []
        self.metadata: dict = {}
        self._ndus: list[tuple[C.Unit, _Params]] = []
        self._parse_units()
        self._index = self._build_index()
        self._ndu_tensors: list[list[TensorInfo]] = [[] for _ in self._ndus]
        for i, info in self._index.values():
            self._ndu_tensors[i].append(info)

    # -- unit stream (spec 3) -------------------------------------------------
    def _parse_units(self) -> None:
        """Walk the unit stream and record the parameters in force for each NDU (spec 3.1)."""
        params = _Params()
        for unit in C.iter_units(self.data):
            self.units.append(unit)
            h = unit.header
            if unit.type == C.NNR_STR:
                params.profile = int(h.general_profile_idc)
                if params.profile not in (0, 1):
                    raise UnsupportedError(
                        f"general_profile_idc {params.profile} is not profile 0 or 1",
                        clause="4",
                        offset=unit.offset,
                    )
            elif unit.type == C.NNR_MPS:
                params.qp_density = int(_get(h, "mps_qp_density", 2))
                params.qp = int(_get(h, "mps_quantization_parameter", 0))
                params.parent_signalling = bool(_get(h, "mps_parent_signalling_enabled_flag", 0))
                if _get(h, "mps_topology_indexed_reference_flag", 0):
                    raise UnsupportedError(
                        "indexed topology references are not supported", clause="5.2", offset=unit.offset
                    )
            elif unit.type == C.NNR_LPS:
                # spec 6.1: an LPS replaces the qp and qp density for the NDUs that follow it
                if _get(h, "lps_quantization_method_flags", 0):
                    params.qp_density = int(_get(h, "lps_qp_density", params.qp_density))
                    params.qp = int(_get(h, "lps_quantization_parameter", params.qp))
            elif unit.type in (C.NNR_QNT, C.NNR_AGG):
                raise UnsupportedError(
                    f"{unit.type_name} units are not supported", clause="6.3" if unit.type == C.NNR_QNT else "6.4",
                    offset=unit.offset,
                )
            elif unit.type == C.NNR_TPL:
                self.metadata = _topology_metadata(unit)
            elif unit.type == C.NNR_NDU:
                self._ndus.append((unit, _Params(**params.__dict__)))

    def _build_index(self) -> "OrderedDict[str, tuple[int, TensorInfo]]":
        """Tensor metadata from the NDU headers, in decode order (spec 7.4, 7.6)."""
        index: OrderedDict[str, tuple[int, TensorInfo]] = OrderedDict()
        total_bytes = 0
        for i, (unit, params) in enumerate(self._ndus):
            for info in self._tensor_infos(unit, params, i):
                if info.name in index:
                    raise DecodeError(
                        f"tensor name {info.name!r} appears twice in the stream", clause="15.1",
                        offset=unit.offset,
                    )
                self._check_limits(unit, params, info)
                total_bytes += info.size * np.dtype(info.dtype).itemsize
                if total_bytes > self.limits.max_total_bytes:
                    raise LimitError(
                        f"decoded output would exceed {self.limits.max_total_bytes} bytes", clause="15.2",
                        offset=unit.offset,
                    )
                index[info.name] = (i, info)
        return index

    def _check_limits(self, unit: C.Unit, params: _Params, info: TensorInfo) -> None:
        """Refuse sizes the payload cannot code or the limits forbid (spec 15.2)."""
        size = info.size
        # a zero dimension makes the size 0, but the other dimensions still shape the array
        nominal = math.prod(max(d, 1) for d in info.shape)
        if size > self.limits.max_tensor_elements or nominal > self.limits.max_tensor_elements:
            raise LimitError(
                f"tensor {info.name!r} declares dimensions {list(info.shape)}, beyond the limit of "
                f"{self.limits.max_tensor_elements} elements", clause="15.2", offset=unit.offset,
            )
        payload_len = len(unit.payload)
        if info.payload_type == "RAW_FLOAT":
            return
        bound = ELEMENTS_PER_PAYLOAD_BYTE * payload_len + ELEMENTS_SLACK
        height = info.shape[0] if info.shape else 1
        width = size // height if height else 0
        if info.codebook is not None and len(info.codebook) == 1 and params.profile == 1:
            return  # nothing is coded for a one-entry codebook (spec 10.4)
        if params.profile == 1 and width > 1 and height > 1:
            counted = height  # each row costs at least its row-skip bin (spec 8.3)
        else:
            counted = size
        if counted > bound:
            raise LimitError(
                f"tensor {info.name!r} declares {size} elements, more than a {payload_len}-byte "
                f"payload can code", clause="15.2", offset=unit.offset,
            )

    def _tensor_infos(self, unit: C.Unit, params: _Params, ndu_index: int) -> list[TensorInfo]:
        """Names, shapes and coding parameters of the tensors of one NDU, in coding order."""
        h = unit.header
        ptype = int(h.nnr_compressed_data_unit_payload_type)
        if ptype not in PAYLOAD_TYPE_NAMES:
            raise DecodeError(f"reserved payload type {ptype}", clause="7.4", offset=unit.offset)
        pname = PAYLOAD_TYPE_NAMES[ptype]
        if not _get(h, "input_parameters_present_flag", 1) or not _get(h, "tensor_dimensions_flag", 0):
            raise UnsupportedError(
                "tensor dimensions are carried out of band; this decoder needs them in the stream",
                clause="7.4", offset=unit.offset,
            )
        dims = tuple(int(d) for d in h.tensor_dimensions)
        n_gtx = int(_get(h, "cabac_unary_length_minus1", 9)) + 1
        dq = bool(_get(h, "dq_flag", 0)) and ptype != C.NNR_PT_INT
        scan = int(_get(h, "scan_order", 0))
        codebook = list(h.codebook) if _get(h, "codebook_present_flag", 0) else None
        if codebook is not None and dq:
            raise DecodeError("a codebook cannot be combined with dq_flag = 1", clause="15.1", offset=unit.offset)
        fmt = int(h.nnr_decompressed_data_format) if _get(h, "nnr_decompressed_data_format_present_flag", 0) else None
        eps = [(int(e.value), int(_get(e, "dq_state", 0)), int(e.offset)) for e in (_get(h, "entry_points", None) or [])]

        def info(name, shape, is_weight):
            if ptype == C.NNR_PT_INT:
                dtype = "int32"
            elif codebook is not None and is_weight:
                dtype = "float64"
            else:
                dtype = "float32"
            if fmt is not None:
                if fmt not in DECOMPRESSED_DATA_FORMATS:
                    raise DecodeError(f"reserved nnr_decompressed_data_format {fmt}", clause="7.4",
                                      offset=unit.offset)
                dtype = DECOMPRESSED_DATA_FORMATS[fmt].name
            return TensorInfo(
                name=name, shape=shape, dtype=dtype, payload_type=pname, qp=None,
                qp_density=params.qp_density if ptype in (C.NNR_PT_FLOAT, C.NNR_PT_BLOCK) else None,
                step=None, dq=dq, scan_order=scan if len(shape) > 1 else 0,
                n_gtx=None if ptype == C.NNR_PT_RAW_FLOAT else n_gtx,
                codebook=codebook if is_weight else None, unit_index=ndu_index, unit_offset=unit.offset,
                unit_size=unit.size, entry_points=eps if is_weight else [], decompressed_data_format=fmt,
            )

        if ptype != C.NNR_PT_BLOCK:
            if _get(h, "nnr_multiple_topology_elements_present_flag", 0):
                raise UnsupportedError(
                    "several topology elements in a non-block NDU are not supported", clause="7.4", offset=unit.offset
                )
            return [info(str(h.topology_elem_id), dims, True)]
        # BLOCK: names listed W, LS, BN beta/gamma/mean/var, BI; coded LS, BI, BN..., W (spec 7.6)
        if not _get(h, "nnr_multiple_topology_elements_present_flag", 0) or h.get("topology_elem_ids") is None:
            raise DecodeError("a block NDU must list its tensors' names", clause="7.6", offset=unit.offset)
        cpt = int(_get(h, "compressed_parameter_types", 0))
        if cpt & C.NNR_CPT_DC:
            raise UnsupportedError("decomposed (DC) block NDUs are not supported", clause="7.6", offset=unit.offset)
        names = [str(n) for n in h.topology_elem_ids]
        expected = 1 + bool(cpt & C.NNR_CPT_LS) + 4 * bool(cpt & C.NNR_CPT_BN) + bool(cpt & C.NNR_CPT_BI)
        if len(names) != expected:
            raise DecodeError(
                f"block NDU lists {len(names)} names but its compressed_parameter_types need {expected}",
                clause="7.6", offset=unit.offset,
            )
        if not dims:
            raise DecodeError("a block NDU needs the weight's dimensions", clause="7.6", offset=unit.offset)
        weight, rest = names[0], names[1:]
        ls = [rest.pop(0)] if cpt & C.NNR_CPT_LS else []
        bn = [rest.pop(0) for _ in range(4)] if cpt & C.NNR_CPT_BN else []
        bi = [rest.pop(0)] if cpt & C.NNR_CPT_BI else []
        order = ls + bi + bn
        infos = [info(n, (dims[0],), False) for n in order] + [info(weight, dims, True)]
        group = tuple(i.name for i in infos)
        for i in infos:
            i.block = group
        return infos

    # -- public API --------------------------------------------------------------
    def tensors(self) -> list[TensorInfo]:
        """Metadata of every tensor, in decode order, without decoding payloads."""
        return [info for _, info in self._index.values()]

    def names(self) -> list[str]:
        return list(self._index)

    def decode(self, names: Iterable[str] | None = None, progress=None) -> "OrderedDict[str, np.ndarray]":
        """Decode all tensors (or those named), in stream order.

        ``progress``, if given, is called with the TensorInfo of each decoded tensor.
        """
        wanted = None if names is None else set(names)
        if wanted is not None:
            missing = wanted - set(self._index)
            if missing:
                raise KeyError(f"no tensor named {sorted(missing)[0]!r} in the stream")
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for i, (unit, params) in enumerate(self._ndus):
            infos = self._ndu_tensors[i]
            if wanted is not None and not any(t.name in wanted for t in infos):
                continue
            for name, arr in self._decode_ndu(unit, params, infos).items():
                if wanted is None or name in wanted:
                    out[name] = arr
                    if progress is not None:
                        progress(self._index[name][1])
        return out

    def decode_tensor(self, name: str) -> np.ndarray:
        """Decode one tensor, touching only the unit that carries it (random access)."""
        if name not in self._index:
            raise KeyError(f"no tensor named {name!r} in the stream")
        i, _ = self._index[name]
        unit, params = self._ndus[i]
        return self._decode_ndu(unit, params, self._ndu_tensors[i])[name]

    def info(self, name: str) -> TensorInfo:
        return self._index[name][1]

    # -- NDU payload (spec 7.5, 8) ---------------------------------------------
    def _decode_ndu(self, unit: C.Unit, params: _Params, infos: list[TensorInfo]) -> dict:
        try:
            return self._decode_ndu_payload(unit, params, infos)
        except NNCError as exc:
            # errors inside a payload carry payload-relative offsets
            raise exc.at(unit.payload_offset) from exc

    def _decode_ndu_payload(self, unit: C.Unit, params: _Params, infos: list[TensorInfo]) -> dict:
        h = unit.header
        payload = unit.payload
        first = infos[0]
        if first.payload_type == "RAW_FLOAT":
            # spec 7.5: float32, little-endian, C order, exactly the unit's payload
            need = first.size * 4
            if len(payload) != need:
                raise DecodeError(
                    f"RAW_FLOAT payload has {len(payload)} bytes, the dimensions need {need}", clause="7.5",
                )
            arr = np.frombuffer(payload, dtype="<f4").astype(np.float32).reshape(first.shape)
            if first.decompressed_data_format is not None:
                arr = convert_to_format(arr, first.decompressed_data_format)
            return {first.name: arr}

        edition = 2 if params.profile == 1 else 1
        dec = self.engine.PayloadDecoder(payload, edition)
        parent_present = bool(_get(h, "parent_node_id_present_flag", 0))
        tca = bool(_get(h, "temporal_context_modeling_flag", 0))
        out = {}
        for info in infos:
            height = info.shape[0] if info.shape else 1
            width = info.size // height if height else 0
            if info.payload_type != "INT":
                # spec 8.2: qp offset, (6 + qp_density)-bit two's complement bypass value
                info.qp = params.qp + dec.read_qp_offset(6 + params.qp_density)
                info.step = float(step_size(info.qp, params.qp_density))
            cb = info.codebook
            cb_size = len(cb) if (cb is not None and edition == 2) else 0
            cb_zero = (len(cb) >> 1) + int(h.codebook_center_offset) if cb is not None else 0
            tca_base = None
            if tca:
                tca_base = self.state.levels.get(info.name)
                if tca_base is None or tca_base.size != info.size:
                    raise DecodeError(
                        f"tensor {info.name!r} uses temporal context adaptation but no parent levels of "
                        f"its size were decoded before; decode the parent stream first with the same "
                        f"DecoderState", clause="14",
                    )
            kwargs = dict(
                n_gtx=info.n_gtx, dq=info.dq, scan_order=info.scan_order,
                codebook_size=cb_size, codebook_zero=cb_zero,
                parent_present=parent_present, tca_base=tca_base,
                hdsp_history=self.state.history.get(info.name) if parent_present else None,
            )
            if kwargs["hdsp_history"] is not None and kwargs["hdsp_history"].size != info.size:
                kwargs["hdsp_history"] = None
            mode = self.entry_points_mode
            use_eps = mode == "use" and info.entry_points and info.scan_order > 0
            levels = dec.decode_tensor(
                height, width, entry_points=info.entry_points if use_eps else None,
                record_entry_points=(mode == "verify"), **kwargs,
            )
            if mode == "verify" and info.entry_points and height > 1 and width > 1:
                if list(dec.last_entry_points) != list(info.entry_points):
                    raise DecodeError(
                        f"transmitted entry points of {info.name!r} differ from the decoded positions",
                        clause="11.4",
                    )
            info.row_skip = bool(dec.last_row_skip)
            if self.keep_state or params.parent_signalling:
                self.state.update(info.name, levels)
            out[info.name] = self._reconstruct(info, levels, cb_zero)
        dec.finish()
        return out

    def _reconstruct(self, info: TensorInfo, levels: np.ndarray, cb_zero: int) -> np.ndarray:
        """Tensor values from decoded integers (spec 12)."""
        if info.payload_type == "INT":
            values = levels
        elif info.codebook is not None:
            values = reconstruct_codebook(levels, info.codebook, cb_zero, np.float32(info.step))
        else:
            values = reconstruct_uniform(levels, np.float32(info.step))
        if info.decompressed_data_format is not None:
            values = convert_to_format(levels if info.payload_type == "INT" else values,
                                       info.decompressed_data_format)
        return values.reshape(info.shape)


def _topology_metadata(unit: C.Unit) -> dict:
    """nnc's metadata in a format-0 topology unit, if any (spec 6.2.1); {} otherwise."""
    import json

    h = unit.header
    if h.get("topology_storage_format") != 0 or not h.get("data", "").startswith("{"):
        return {}
    try:
        meta = json.loads(h.data).get("nnc", {})
    except (ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def restore_model_view(tensors: "OrderedDict[str, np.ndarray]", metadata: dict) -> tuple:
    """Tensors as the original model had them: 0-d shapes and dtypes from nnc's metadata (spec 6.2.1).

    Returns (tensors, {name: dtype name}); bfloat16 stays float32 in numpy and is named in the dtypes.
    """
    shapes = metadata.get("shapes", {}) if isinstance(metadata.get("shapes"), dict) else {}
    dtypes = metadata.get("dtypes", {}) if isinstance(metadata.get("dtypes"), dict) else {}
    out, names = OrderedDict(), {}
    for k, v in tensors.items():
        if k in shapes and isinstance(shapes[k], list) and int(np.prod(shapes[k], dtype=np.int64)) == v.size:
            v = v.reshape(shapes[k])
        want = dtypes.get(k)
        if isinstance(want, str) and want != "bfloat16":
            try:
                v = v.astype(np.dtype(want))
            except TypeError:
                want = None
        out[k] = v
        names[k] = want or v.dtype.name
    return out, names


def _get(container, name, default=None):
    try:
        value = container[name]
    except (KeyError, TypeError, AttributeError):
        return default
    return default if value is None else value


def decode(
    data: StreamInput,
    *,
    limits: Limits | None = None,
    engine: str | None = None,
    state: DecoderState | None = None,
    entry_points: str = "ignore",
) -> "OrderedDict[str, np.ndarray]":
    """Decode an NNC stream into an ordered mapping of tensor name to array.

    ``data`` is bytes, a path or a binary file.  ``state`` carries the
    decoder state across incremental (2nd-edition) streams.  Raises a
    :class:`nnc.DecodeError` subclass on any invalid input.

    >>> import nnc
    >>> nnc.decode(nnc.encode({"x": [0.25, -1.0]}, qp=-16, nonweight_qp=None))["x"].tolist()
    [0.25, -1.0]
    """
    return Decoder(data, limits=limits, engine=engine, state=state, entry_points=entry_points).decode()


def decode_with_info(data: StreamInput, **kwargs) -> tuple["OrderedDict[str, np.ndarray]", list[TensorInfo]]:
    """Decode a stream and return the tensors with their metadata."""
    dec = Decoder(data, **kwargs)
    tensors = dec.decode()
    return tensors, dec.tensors()
