"""The normative NNC decoder: a unit stream in, named tensors out (spec 3–15).

Every function cites the spec clause it implements.  The decoder imports only
decoder-side modules (container, engine, reconstruction); it never imports the
encoder.

Two ways in: :func:`~nnc.decoder.decode` decodes a whole stream at once; :class:`~nnc.decoder.Decoder`
parses the unit stream first and gives the tensors' metadata
(:class:`~nnc.decoder.TensorInfo`) and decoding by name (random access).  Invalid input
raises a :class:`~nnc.errors.DecodeError` subclass, never anything else, and
resources are bounded by :class:`~nnc.decoder.Limits` (spec 15).

Examples
--------
>>> import nnc
>>> stream = nnc.encode({"w": [[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]]}, qp=-8, dq=False)
>>> nnc.decode(stream)["w"].tolist()
[[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]]
"""

from __future__ import annotations

import hashlib
import io
import math
import mmap
import os
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, BinaryIO, Iterable, Mapping, Union

import numpy as np

from . import container as C
from . import narrow_floats
from ._parallel import decode_tensor_threads
from ._threads import thread_count
from .array_store import ArrayStore, SpillFile, StoredArray, as_store, narrowest_integers
from .engine import get_engine
from .engine.matrix import effective_scan_order, matrix_view
from .errors import DecodeError, LimitError, NNCError, TruncatedError, UnsupportedError, UpdateError
from .reconstruction import (
    DECOMPRESSED_DATA_FORMATS,
    check_codebook_indices,
    convert_to_format,
    format_dtype,
    reconstruct_codebook,
    reconstruct_uniform,
    step_size,
)

#: What the decoder accepts as a stream (bytes or any buffer-protocol object, a file path, or a binary file object).
StreamInput = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", BinaryIO]

#: Name of each ``nnr_compressed_data_unit_payload_type`` (spec 7.4), as in :attr:`~nnc.decoder.TensorInfo.payload_type`.
PAYLOAD_TYPE_NAMES = {
    C.NNR_PT_INT: "INT",
    C.NNR_PT_FLOAT: "FLOAT",
    C.NNR_PT_RAW_FLOAT: "RAW_FLOAT",
    C.NNR_PT_BLOCK: "BLOCK",
}

#: Elements a CABAC payload can code per byte, at most, when every element costs a bin (spec 15.2).
ELEMENTS_PER_PAYLOAD_BYTE = 8192
#: Elements allowed on top of ``ELEMENTS_PER_PAYLOAD_BYTE`` times the payload size (spec 15.2).
ELEMENTS_SLACK = 65536


@dataclass(frozen=True)
class Limits:
    """Resource limits of the decoder (spec 15.2).

    ``max_tensor_elements`` caps every tensor; ``max_total_bytes`` caps the
    decoded output of one stream.  Independently of them, a tensor may not
    declare more elements than its payload can code (at most
    ``ELEMENTS_PER_PAYLOAD_BYTE`` per payload byte plus ``ELEMENTS_SLACK``).
    The limits are checked on the headers, before any payload is decoded.

    Parameters
    ----------
    max_tensor_elements : int
        Most elements one tensor may declare (default ``2**31 - 1``).  A zero
        dimension does not hide the others: they are checked as if it were 1.
    max_total_bytes : int
        Most bytes the decoded tensors of one stream may take together
        (default 8 GiB).
    max_metadata_bytes : int
        Most bytes of a topology string that may hold nnc's metadata, read as JSON
        (default 64 MiB; spec 15.2 limit 4).

    Raises
    ------
    ValueError
        If a limit is not an integer >= 0.

    Examples
    --------
    >>> import nnc
    >>> stream = nnc.encode({"w": [[0.5, 0.25], [1.0, 0.0]]}, qp=-8, dq=False)
    >>> nnc.decode(stream, limits=nnc.Limits(max_tensor_elements=4))["w"].shape
    (2, 2)
    >>> nnc.decode(stream, limits=nnc.Limits(max_total_bytes=15))
    Traceback (most recent call last):
        ...
    nnc.errors.LimitError: decoded output would exceed 15 bytes [spec 15.2, byte offset ...]
    """

    #: Most elements one tensor may declare.
    max_tensor_elements: int = 2**31 - 1
    #: Most bytes the decoded output of one stream may take.
    max_total_bytes: int = 8 * 2**30
    #: Most bytes of nnc metadata (a topology string read as JSON).
    max_metadata_bytes: int = 64 * 2**20

    #: How many times its own size a stream decoded to files may write (:meth:`for_files`).
    FILE_OUTPUT_RATIO = 256

    def __post_init__(self):
        for name in ("max_tensor_elements", "max_total_bytes", "max_metadata_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:  # api-check
                raise ValueError(f"Limits.{name} must be an integer >= 0, not {value!r}")

    @classmethod
    def for_files(cls, stream_bytes: int, **limits) -> "Limits":
        """The limits of a decoding that writes its tensors to files one unit at a time (spec 15.2): the output
        may reach :attr:`FILE_OUTPUT_RATIO` times the stream's size, and at least the default ``max_total_bytes``
        (a large model's stream decodes; a small hostile one cannot fill a disk); ``limits`` override."""
        total = max(cls.max_total_bytes, cls.FILE_OUTPUT_RATIO * int(stream_bytes))
        return cls(**{"max_total_bytes": total, **limits})

    @classmethod
    def for_stream(cls, data, **limits) -> "Limits":
        """:meth:`for_files` for a stream given as a path or a buffer (spec 15.2); the default limits (with
        ``limits``) for a file object, whose size is not known."""
        if isinstance(data, (str, os.PathLike)):
            size = os.path.getsize(data) if os.path.isfile(data) else None
        else:
            try:
                size = memoryview(data).nbytes
            except TypeError:
                size = None
        return cls(**limits) if size is None else cls.for_files(size, **limits)


@dataclass
class TensorInfo:
    """What the stream says about one tensor (the NDU header semantics, spec 7.4).

    :meth:`~nnc.decoder.Decoder.tensors` returns one per tensor, built from the NDU headers
    alone.  The fields that the payload carries (``qp``, ``step``,
    ``row_skip``) are filled in when the tensor's unit is decoded, and are
    None (``row_skip`` False) until then.  Users read these records; the
    decoder creates them.  The parameters are the fields below.

    Examples
    --------
    >>> import nnc
    >>> import numpy as np
    >>> w = np.array([[0.5, -0.25], [1.0, 0.0]], np.float32)
    >>> dec = nnc.Decoder(nnc.encode({"fc.weight": w}, qp=-8, dq=False))
    >>> info = dec.info("fc.weight")
    >>> info.shape, info.dtype, info.payload_type, info.size
    ((2, 2), 'float32', 'FLOAT', 4)
    >>> info.qp is None  # the qp offset is in the payload: known once decoded
    True
    >>> _ = dec.decode_tensor("fc.weight")
    >>> info.qp, info.step
    (-8, 0.25)
    """

    #: Tensor name (``topology_elem_id``, spec 7.1).
    name: str
    #: Tensor dimensions as signalled (``tensor_dimensions``, spec 7.4).
    shape: tuple
    #: Name of the numpy dtype the tensor decodes to, e.g. ``"float32"``.
    dtype: str
    #: ``"INT"``, ``"FLOAT"``, ``"RAW_FLOAT"`` or ``"BLOCK"`` (spec 7.4).
    payload_type: str
    #: Quantisation parameter (spec 8.2, 12.1); None for INT and RAW_FLOAT, and until decoded.
    qp: int | None
    #: qp density in force (spec 5.1, 6.1); None for INT and RAW_FLOAT tensors.
    qp_density: int | None
    #: Step size Δ of the qp (spec 12.1); None for INT and RAW_FLOAT, and until decoded.
    step: float | None
    #: Whether dependent quantisation is used (spec 10.2); never for INT tensors.
    dq: bool
    #: Scan order (spec 11); 0 for tensors of fewer than two dimensions.
    scan_order: int
    #: Number of greater-than flags, ``cabac_unary_length_minus1 + 1``; None for RAW_FLOAT.
    n_gtx: int | None
    #: Codebook integers (spec 7.2, 12.4), or None when the tensor has no codebook.
    codebook: list | None
    #: Index of the NDU that carries the tensor among the stream's NDUs (not among all units).
    unit_index: int
    #: Byte offset of that NDU in the stream.
    unit_offset: int
    #: Size of that NDU in bytes (including its size field).
    unit_size: int
    #: Names of all tensors of the same BLOCK NDU, in coding order; empty otherwise (spec 7.6).
    block: tuple = ()
    #: Whether the tensor's ``row_skip_flag`` is set (spec 8.3); known once decoded.
    row_skip: bool = False
    #: Transmitted entry points as ``(value, dq_state, offset)`` tuples (spec 7.3).
    entry_points: list = field(default_factory=list)
    #: ``nnr_decompressed_data_format`` if signalled (spec 7.4, 12.6), else None.
    decompressed_data_format: int | None = None
    #: For a tied tensor (spec 6.2.1), the name of the coded tensor it shares; None for a coded tensor. The other
    #: fields are that tensor's.
    tied_to: str | None = None

    @property
    def size(self) -> int:
        """Number of elements, the product of ``shape`` (1 for a 0-d tensor).

        Returns
        -------
        int
            ``math.prod(shape)``.

        Examples
        --------
        >>> import nnc
        >>> nnc.Decoder(nnc.encode({"w": [[1.0, 2.0, 3.0]] * 2}, qp=-8)).info("w").size
        6
        """
        return math.prod(self.shape)


class DecoderState:
    """What a 2nd-edition decoder keeps across streams, per tensor name (spec 14).

    * ``levels``: the last decoded integer levels (the TCA base, spec 10.5);
    * ``history``: the HDSP history map, the OR of (level != 0) over all decoded updates.

    Pass one state to successive :func:`~nnc.decoder.decode` calls to decode a base model
    followed by incremental updates.  A decoder given a state records every
    tensor it decodes in it, once the whole stream has decoded (a stream that fails,
    or is decoded only in part, leaves the state as it was; spec 14.2); without one,
    levels are kept only for streams whose model parameter set enables parent signalling.

    A decoder reads the state when it is made and enters its stream when the stream has
    decoded; if the stream is an update (its NDUs name parents, spec 14.4) and another
    stream entered the state in between (two decoders made with one state before either
    decoded, or decodes in threads), it raises ``DecodeError`` and leaves the state as the
    other left it: updates decode one after another.

    Examples
    --------
    >>> import nnc
    >>> stream = nnc.encode({"w": [[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]]}, qp=-8, dq=False)
    >>> state = nnc.DecoderState()
    >>> _ = nnc.decode(stream, state=state)
    >>> state.levels["w"].tolist()  # the integers n, with the step 0.25
    [0, 2, -1, 4, 0, 0]
    >>> state.history["w"].tolist()
    [0, 1, 1, 1, 0, 0]
    """

    def __init__(self):
        #: The last decoded levels of each tensor, by name (flat int32 arrays; a mapping whose arrays may be kept in
        #: the state's file or a spill file until read, see :meth:`spill_to`).
        self.levels: ArrayStore = ArrayStore()
        #: The HDSP history map of each tensor, by name (flat int8 arrays, 1 where a decoded level was non-zero).
        self.history: ArrayStore = ArrayStore()
        #: The ``put_node_depth`` of each tensor's last decoded CABAC-coded NDU that carries node ids (spec 7.4,
        #: 14.1, 14.4).
        self.depths: dict[str, int] = {}
        #: The ``put_node_depth`` of a RAW_FLOAT NDU with node ids decoded after it, by tensor name (spec 14.4).
        self.raw_depths: dict[str, int] = {}
        #: The SHA-256 and SHA-512 of the payload of the NDU that last entered each tensor's levels (spec 14.1, 14.4).
        self.payload_digests: dict[str, tuple[bytes, bytes]] = {}
        #: How many streams have entered this state (a decoder refuses to enter its stream if another did meanwhile).
        self.generation = 0

    def update(self, name: str, levels: np.ndarray) -> None:
        """Record a tensor's decoded levels and merge them into its history map (spec 14.1).

        A history map of another shape than ``levels`` is replaced, not merged.

        Parameters
        ----------
        name : str
            Tensor name.
        levels : ``numpy.ndarray``
            The decoded integer levels, flat in row-major order.

        Examples
        --------
        >>> import numpy as np
        >>> from nnc.decoder import DecoderState
        >>> state = DecoderState()
        >>> state.update("w", np.array([0, 3, 0], np.int32))
        >>> state.update("w", np.array([1, 0, 0], np.int32))
        >>> state.levels["w"].tolist(), state.history["w"].tolist()
        ([1, 0, 0], [1, 1, 0])
        """
        if not isinstance(levels, np.ndarray) or levels.dtype.kind not in "iu" or levels.ndim != 1:  # api-check
            raise TypeError(f"levels of {name!r} must be a 1-D numpy array of integers")
        self._enter(name, levels, levels)

    def _enter(self, name: str, entry, levels: np.ndarray) -> None:
        """:meth:`update` (spec 14.1) with the levels' entry (an array, or a stored one not read again) and their
        values."""
        hist = self.history.get(name)
        nonzero = (levels != 0).astype(np.int8)
        self.levels[name] = entry
        self.history[name] = nonzero if hist is None or hist.shape != nonzero.shape else (hist | nonzero)

    def spill_to(self, folder) -> None:
        """Keep the arrays this state holds, and those entered from now on, in an unnamed temporary file in
        ``folder`` rather than in memory (each read back when used; the file goes when the state does). A state
        read by :meth:`load` keeps its arrays in its file until they are used; with both, a model of any size is
        coded and decoded incrementally in memory bounded by the tensors in flight.

        Parameters
        ----------
        folder : str or ``os.PathLike``
            A folder on a disk with room for the state (its file's folder, typically).

        Examples
        --------
        >>> import tempfile, numpy as np
        >>> from nnc.decoder import DecoderState
        >>> state = DecoderState()
        >>> state.spill_to(tempfile.mkdtemp())
        >>> state.update("w", np.arange(100_000, dtype=np.int32))
        >>> int(state.levels["w"][-1])
        99999
        """
        spill = SpillFile(folder)
        for arrays in self._stores():
            arrays.spill_to(spill)

    def _stores(self) -> list:
        """The state's mappings of arrays, as :class:`~nnc.array_store.ArrayStore` (set as such if they were not)."""
        self.levels, self.history = as_store(self.levels), as_store(self.history)
        return [self.levels, self.history]

    #: The state's containers, by attribute name (copied for a stream staged before it enters).
    _CONTAINERS: tuple = ("levels", "history", "depths", "raw_depths", "payload_digests")

    def _containers(self) -> dict:
        return {name: getattr(self, name) for name in self._CONTAINERS}

    def _set_containers(self, containers: dict) -> None:
        for name, value in containers.items():
            setattr(self, name, value)

    def _staged_copy(self):
        """A state of the same class whose containers are copies of this one's (their arrays are shared, not
        read): a stream moves the copy, put in place with :meth:`_set_containers` when it is complete."""
        import copy

        staged = copy.copy(self)
        staged._set_containers({name: value.copy() for name, value in self._containers().items()})
        return staged

    def _new_store(self) -> ArrayStore:
        """An empty store that spills where this state's do."""
        return ArrayStore(spill=getattr(self.levels, "spill", None))

    # -- files: one state carried across processes (e.g. federated-learning rounds) --------
    _KIND = "decoder"

    def _meta(self) -> dict:
        digests = {k: [a.hex(), b.hex()] for k, (a, b) in self.payload_digests.items()}
        return dict(depths=self.depths, raw_depths=self.raw_depths, payload_digests=digests)

    def _set_meta(self, meta: dict, arrays: dict) -> None:
        depths = meta.get("depths", {})  # (none in the files of nnc before 0.2.0)
        self.depths = _name_map(depths, _node_depth, "depths")
        self.raw_depths = _name_map(meta.get("raw_depths", {}), _node_depth, "raw_depths")
        digests = meta.get("payload_digests", {})  # (none in the files of nnc before 0.3.0)
        self.payload_digests = _name_map(digests, _digest_pair, "payload_digests")

    def _extra_arrays(self) -> list:
        """More members of the state file: (name, a function that reads the array)."""
        return []

    def save(self, path) -> None:
        """Write the state to a file (an .npz archive), atomically, one array at a time.

        Parameters
        ----------
        path : str or ``os.PathLike``
            The file to create or replace.

        Raises
        ------
        OSError
            If the file cannot be written; an existing file is then unchanged.

        Examples
        --------
        >>> import os, tempfile, numpy as np
        >>> from nnc.decoder import DecoderState
        >>> state = DecoderState()
        >>> state.update("w", np.array([0, 3, 0], np.int32))
        >>> path = os.path.join(tempfile.mkdtemp(), "receiver.state")
        >>> state.save(path)
        >>> DecoderState.load(path).levels["w"].tolist()
        [0, 3, 0]
        """
        from ._files import AtomicFile, naming

        file = AtomicFile(path)
        try:
            self._write(file.fh)
            file.commit()
        except OSError as exc:
            file.discard()
            raise naming(exc, path) from None  # (a full disk: this file)
        except BaseException:
            file.discard()
            raise

    def _write(self, fh) -> None:
        """The file :meth:`save` writes, into the open binary file ``fh`` (an uncompressed .npz archive whose
        ``meta`` member says what the others are; each array read from the state and written in turn)."""
        import json
        import zipfile

        from .formats import write_npz_member

        names = sorted(set(self.levels) | set(self.history))
        meta = dict(nnc_state=1, kind=self._KIND, names=names, **self._meta())
        members: list[tuple[str, Any]] = [("meta", lambda: np.frombuffer(json.dumps(meta).encode(), np.uint8))]
        for i, name in enumerate(names):
            if name in self.levels:  # (int32 levels in the narrowest dtype that holds them: read as int32)
                members.append((f"levels{i}", lambda name=name: narrowest_integers(np.asarray(self.levels[name]))))
            if name in self.history:
                members.append((f"history{i}", lambda name=name: np.asarray(self.history[name], np.int8)))
        members.extend(self._extra_arrays())
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for member, read in members:
                write_npz_member(zf, member, read())

    def _to_bytes(self) -> bytes:
        """The file :meth:`save` writes, as bytes."""
        import io

        buffer = io.BytesIO()
        self._write(buffer)
        return buffer.getvalue()

    @classmethod
    def load(cls, path):
        """A state written by :meth:`save` (of the same class); its arrays stay in the file until they are used.

        Parameters
        ----------
        path : str or ``os.PathLike``
            The file.

        Returns
        -------
        DecoderState
            The state (an instance of the class it is called on).

        Raises
        ------
        nnc.errors.DecodeError
            If the file is not such a state file (its members' headers are checked here; an array
            damaged within raises :class:`~nnc.formats.FormatError` naming the file when it is read).
        OSError
            If the file cannot be read.

        Examples
        --------
        See :meth:`save`.
        """
        import json

        from .array_store import npz_entries
        from .formats import FormatError

        try:
            arrays = npz_entries(path)
            meta = json.loads(bytes(np.asarray(arrays["meta"].read(), np.uint8)).decode())
            if not isinstance(meta, dict) or meta.get("nnc_state") != 1 or meta.get("kind") != cls._KIND:
                raise ValueError(f"not {'an' if cls._KIND[0] in 'aeiou' else 'a'} {cls._KIND} state")
            state = cls()
            for i, name in enumerate(meta["names"]):
                for key, store, kinds in (("levels", state.levels, "iu"), ("history", state.history, "iub")):
                    entry = arrays.get(f"{key}{i}")
                    if entry is not None:
                        store[str(name)] = _flat_entry(entry, kinds, f"{key}{i}")
            state._set_meta(meta, arrays)
        except KeyError as exc:
            raise DecodeError(
                f"{os.fspath(path)} is not an nnc {cls._KIND} state file (it lacks its entry {exc}: damaged, or "
                "written by another program)"
            ) from None
        except (FormatError, TypeError, ValueError, AttributeError, RecursionError, OverflowError) as exc:
            raise DecodeError(f"{os.fspath(path)} is not an nnc {cls._KIND} state file ({exc})") from None
        return state


def _flat_entry(entry: StoredArray, kinds: str, member: str) -> StoredArray:
    """A state file's array of levels or history, read flat in the state's dtype (int32, int8) when used."""
    if entry.dtype.kind not in kinds:
        raise ValueError(f"its member {member} holds {entry.dtype} values")
    dtype = np.int32 if kinds == "iu" else np.int8
    return StoredArray((entry.size,), np.dtype(dtype), lambda: np.asarray(entry.read(), dtype).reshape(-1))


def _name_map(value, item, what: str) -> dict:
    """A state file's {tensor name: item(v)} (the state of spec 14.1), every entry checked (ValueError names
    ``what``)."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a mapping of tensor names")
    return {str(k): item(v, what) for k, v in value.items()}


def _node_depth(value, what: str) -> int:
    """A node depth or id of a state file: an int that ue(k) codes (spec 7.4), at most 2**31 - 2."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << 31) - 1:
        raise ValueError(f"{what} holds {value!r}, not a node number")
    return value


def _digest_pair(value, what: str) -> tuple[bytes, bytes]:
    """The SHA-256 and SHA-512 of a payload, as a state file keeps them (two hex strings; spec 14.1)."""
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} holds {value!r}, not two hex digests")
    pair = (bytes.fromhex(value[0]), bytes.fromhex(value[1]))
    if (len(pair[0]), len(pair[1])) != (32, 64):
        raise ValueError(f"{what} holds digests of {len(pair[0])} and {len(pair[1])} bytes, not 32 and 64")
    return pair


class DecodedTensors(OrderedDict):
    """The tensors of a decoded stream, in stream order, with what the stream says about them.

    An ``OrderedDict`` of name to array, as :func:`~nnc.decoder.decode` and
    :meth:`~nnc.decoder.Decoder.decode` return it, with attributes that say what the stream holds:

    * ``differences``: True when the stream's metadata says that its tensors are
      differences to the receiver's model (spec 6.2.1, ``Encoder(differences=True)``),
      so that :func:`~nnc.decoder.apply_update` may add them; False for full values;
    * ``skipped``: names the stream announces as skipped (all zero in an incremental
      update, spec 3.5, 7.7);
    * ``parent``: with differences, the :func:`model_digest` of the model they apply to, when
      the stream records it (spec 6.2.1); None otherwise.
    * ``replaced``: with differences, the names of the tensors that carry full values, which
      replace the model's (spec 6.2.1): a difference could not say it (a change from inf or
      NaN, another shape or kind of dtype, a difference beyond the dtype's range).
    * ``narrow``: {name: format} of the float tensors the metadata records as bfloat16 or
      float8 (spec 6.2.1): a model holds their values rounded to the format, and
      :func:`~nnc.decoder.apply_update` rounds them so (spec 14.5).
    * ``metadata``: the stream's nnc metadata (:attr:`Decoder.metadata`), or None: with it
      :func:`~nnc.decoder.apply_update` gives the tensors an update sends whole (new or
      replaced) their recorded shapes and dtypes (spec 6.2.1), as :func:`restore_model_view` does.

    Examples
    --------
    >>> import nnc
    >>> out = nnc.decode(nnc.encode({"w": [1.0, 2.0]}, qp=-8))
    >>> list(out), out.differences, out.skipped
    (['w'], False, ())
    """

    differences: bool = False
    skipped: tuple = ()
    parent: "str | None" = None
    replaced: tuple = ()
    narrow: "Mapping[str, str]" = MappingProxyType({})
    metadata: "dict | None" = None

    def take_attributes(self, source) -> "DecodedTensors":
        """Takes what ``source`` (a :class:`Decoder` or another ``DecodedTensors``) says about the stream's tensors
        (spec 6.2.1, 14.5); returns self."""
        self.differences, self.skipped, self.parent = source.differences, source.skipped, source.parent
        self.replaced, self.narrow, self.metadata = source.replaced, source.narrow, source.metadata
        return self

    def __reduce__(self):
        # (pickle, copy: the read-only mapping goes as a dict and comes back read-only)
        attributes = dict(vars(self), narrow=dict(self.narrow))
        return (_rebuild_decoded, (attributes,), None, None, iter(self.items()))


def _rebuild_decoded(attributes: dict) -> DecodedTensors:
    out = DecodedTensors()
    vars(out).update(attributes, narrow=MappingProxyType(dict(attributes.get("narrow", {}))))
    return out


def apply_update(
    model: "Mapping[str, np.ndarray]",
    update: "Mapping[str, np.ndarray]",
    *,
    parent: "str | None" = None,
    check_parent: bool = True,
    replaced: "Iterable[str] | None" = None,
    narrow: "Mapping[str, str] | None" = None,
) -> "OrderedDict[str, np.ndarray]":
    """The model after a decoded update of differences (spec 14.5): ``model + update``, tensor by tensor.

    Tensors the update does not carry (skipped: all zero) stay as they are; tensors
    new in the update are added, and those it carries as full values (``replaced``)
    replace the model's, with the shapes and dtypes the update's metadata records
    for them.  Each sum keeps the model tensor's dtype.  A tensor
    recorded as bfloat16 or float8 (``narrow``) is held rounded to its format:
    the model's values are rounded before the difference is added, and the sum
    after (spec 14.5), whether the model holds them as float32 or in the
    format.  This is the rule :class:`nnc.encoder.Encoder` assumes with
    ``differences=True``, so that sender and receiver hold the same model.

    A decoded stream (:class:`~nnc.decoder.DecodedTensors`) says whether it holds
    differences; one of full values (a base stream, or one encoded without
    ``differences=True``) is refused, since adding it would double the model.
    A mapping built by hand is taken as differences.

    An update records the :func:`model_digest` of the model it was made for (spec 6.2.1,
    ``parent``); the model is checked against it, so that an update applied twice, skipped
    or applied to another model is refused instead of giving a wrong model.

    Parameters
    ----------
    model : ``Mapping``
        {name: ``numpy.ndarray``}, the receiver's model (not changed).
    update : ``Mapping``
        {name: ``numpy.ndarray``}, a decoded update.
    parent : str or None
        The digest the model must have (default: ``update.parent``, as decoded).
    check_parent : bool
        False applies the update without checking the model's digest.
    replaced : iterable of str, optional
        Names of the update's tensors that hold full values (default: ``update.replaced``, as decoded).
    narrow : ``Mapping``, optional
        {name: format} of tensors held rounded to bfloat16 or float8 (default: ``update.narrow``, as decoded).

    Returns
    -------
    ``collections.OrderedDict``
        The new model, in the model's order, new tensors last.

    Raises
    ------
    nnc.errors.UpdateError
        If ``update`` is a decoded stream of full values, not differences, the model
        is not the one the update was made for, or a tensor of the update has another
        shape than the model's.
    TypeError
        If ``model`` or ``update`` is not a mapping of names to arrays.

    Examples
    --------
    >>> import numpy as np, nnc
    >>> from nnc.decoder import apply_update
    >>> apply_update({"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([0.5, 0.0], np.float32)})["w"].tolist()
    [1.5, 2.0]
    >>> apply_update({"w": np.array([1.0, 2.0], np.float32)}, nnc.decode(nnc.encode({"w": [1.0, 2.0]}, qp=-8)))
    Traceback (most recent call last):
        ...
    nnc.errors.UpdateError: the stream holds full values, not differences (it was not encoded with differences=True, --differences): use its tensors as the model instead of adding them [spec 6.2.1]
    """
    for what, value in (("model", model), ("update", update)):
        if not isinstance(value, Mapping):  # api-check
            raise TypeError(f"{what} must be a mapping of tensor names to arrays, not {type(value).__name__}")
    refuse_full_values(update, "use its tensors as the model instead of adding them")
    narrow = getattr(update, "narrow", {}) if narrow is None else _narrow_formats(narrow)
    if any(type(v).__module__.startswith("torch") for v in model.values()):
        from .torch import _is_torch_tensor, _to_numpy  # (a torch state_dict: bfloat16 as its float32 values)

        model = OrderedDict((k, _to_numpy(v, k)[0] if _is_torch_tensor(v) else v) for k, v in model.items())
    if check_parent:
        check_update_parent(model, parent if parent is not None else getattr(update, "parent", None), narrow)
    whole = set(getattr(update, "replaced", ()) if replaced is None else _names_of("replaced", replaced))
    out = OrderedDict((k, np.asarray(v)) for k, v in model.items())
    for name, held in out.items():
        if held.dtype.kind not in "biuf" and not narrow_floats.is_narrow(held.dtype.name):
            raise UpdateError(f"model tensor {name!r} holds {held.dtype} values, not numbers")
    for name, delta in update.items():
        delta = np.asarray(delta)
        if delta.dtype.kind not in "biuf" and not narrow_floats.is_narrow(delta.dtype.name):
            raise UpdateError(f"update of {name!r} holds {delta.dtype} values, not numbers")
        if name not in out or name in whole:
            recorded = getattr(update, "metadata", None)
            if recorded:  # (nnc.decode's coded tensor: the sender's shape and dtype, as full values, spec 6.2.1)
                delta = restore_model_view(OrderedDict([(name, delta)]), dict(recorded, differences=False))[0][name]
            out[name] = narrow_floats.as_stored(narrow.get(name) if delta.dtype.kind == "f" else None, delta)
            continue
        stored = narrow.get(name) if delta.dtype.kind == "f" else None
        if (
            delta.shape != out[name].shape
            and (delta.size, out[name].size) == (1, 1)
            and 0 in (delta.ndim, out[name].ndim)
        ):
            delta = delta.reshape(out[name].shape)  # (a 0-d tensor, decoded as (1,) without restore_model_view)
        if delta.shape != out[name].shape:
            raise UpdateError(f"update of {name!r} has shape {delta.shape}, the model's is {out[name].shape}")
        held = narrow_floats.as_stored(stored, out[name])
        if held.dtype.kind in "iub" and delta.dtype != held.dtype:
            out[name] = _integer_sum(name, held, delta)
            continue
        # (differences of the model's own integer dtype add modulo its range, as the encoder took them)
        out[name] = narrow_floats.as_stored(stored, held + delta).astype(out[name].dtype, copy=False)
    return out


def _names_of(what: str, names) -> set:
    """A set of tensor names from a name or an iterable of them (``apply_update``'s ``replaced``, spec 14.5), or
    TypeError."""
    if isinstance(names, str):
        return {names}
    if not isinstance(names, Iterable) or isinstance(names, bytes):  # api-check
        raise TypeError(f"{what} must be a tensor name or an iterable of them, not {type(names).__name__}")
    names = set(names)
    if not all(isinstance(n, str) for n in names):  # api-check
        raise TypeError(f"{what} must hold tensor names (str)")
    return names


def _narrow_formats(narrow) -> "Mapping[str, str]":
    """``apply_update``'s ``narrow`` (spec 14.5): {name: bfloat16 or float8 format}, or TypeError / ValueError."""
    if not isinstance(narrow, Mapping):  # api-check
        raise TypeError(f"narrow must be a mapping of tensor names to formats, not {type(narrow).__name__}")
    for name, fmt in narrow.items():
        if not isinstance(fmt, str) or not narrow_floats.is_narrow(fmt):  # api-check
            raise ValueError(f"narrow[{name!r}]: {fmt!r} is not a bfloat16 or float8 format")
    return narrow


def _integer_sum(name: str, held: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``held + delta`` in ``held``'s integer dtype, exactly, or UpdateError: a sum that is not a whole number or
    leaves the dtype's range would be rounded or wrapped (spec 6.2.1)."""
    total: np.ndarray
    if delta.dtype.kind not in "biu":  # floats (bfloat16 and float8 too): whole numbers, added as integers
        wide = delta.astype(np.float64)
        if not np.all(np.isfinite(wide)) or not np.array_equal(wide, np.round(wide)):
            raise UpdateError(f"update of {name!r} holds fractions, which its {held.dtype} model cannot hold")
        if wide.size and not (wide.min() >= -(2.0**63) and wide.max() < 2.0**63):
            raise UpdateError(f"update of {name!r} holds differences beyond the int64 range")
        delta = wide.astype(np.int64)  # (exact: whole floats below 2^63)
    if np.uint64 in (held.dtype, delta.dtype):  # (beyond int64: Python's integers, rare)
        total = np.asarray(held.astype(object) + delta.astype(object))
    else:
        a, b = held.astype(np.int64), delta.astype(np.int64)
        total = a + b  # wraps on overflow, which the signs tell
        if np.any(((a ^ total) & (b ^ total)) < 0):
            raise UpdateError(f"update of {name!r} takes values beyond the int64 range")
    info = np.iinfo(held.dtype) if held.dtype.kind != "b" else None
    low, high = (0, 1) if info is None else (info.min, info.max)
    if total.size and (total.min() < low or total.max() > high):
        raise UpdateError(
            f"update of {name!r} takes values to {total.min()}..{total.max()}, beyond its {held.dtype} model's range"
        )
    return np.asarray(total).astype(held.dtype)


class _HeldValues(Mapping):
    """A model's tensors as it holds them (spec 14.5): those of ``narrow`` rounded to their format, one at a time."""

    def __init__(self, model: "Mapping[str, Any]", narrow: "Mapping[str, str]"):
        self.model, self.narrow = model, narrow

    def __getitem__(self, name):
        value = self.model[name]
        return narrow_floats.as_stored(self.narrow.get(name), value) if name in self.narrow else value

    def __iter__(self):
        return iter(self.model)

    def __len__(self):
        return len(self.model)


def model_digest(tensors: "Mapping[str, Any]") -> str:
    """The SHA-256 digest of a model's values (spec 6.2.1, ``"parent"``), as 64 hex digits: over the tensors in
    order of their names, each name's UTF-8 bytes, a 0 byte, its element count (8 bytes, little-endian) and its
    elements in row-major order, float ones as float64 and integer and bool ones as int64, little-endian. Shapes
    and dtypes do not enter (a tensor restored to int64, or to its 0-d shape, has the same digest).

    Parameters
    ----------
    tensors : ``Mapping``
        {name: array}, the model.

    Returns
    -------
    str
        64 lower-case hex digits.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.decoder import model_digest
    >>> model_digest({"w": np.array([1.0, 2.0], np.float32)}) == model_digest({"w": np.array([[1.0], [2.0]])})
    True
    >>> model_digest({"w": np.array([1.0, 2.0])}) == model_digest({"w": np.array([1.0, 2.5])})
    False
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype.kind not in "biuf":
            a = a.astype(np.float32)  # bfloat16 / float8 storage (ml_dtypes): their values
        flat = a.reshape(-1)
        h.update(name.encode("utf-8") + b"\0" + int(flat.size).to_bytes(8, "little"))
        wide = np.dtype("<f8") if a.dtype.kind == "f" else np.dtype("<i8")
        for start in range(0, flat.size, 1 << 20):  # bounded temporaries
            h.update(np.ascontiguousarray(flat[start : start + (1 << 20)], dtype=wide).tobytes())
    return h.hexdigest()


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be written in UTF-8 (no lone surrogates, which JSON text may spell), as a name must (spec
    2.6)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _iterable(value) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _wanted_names(names, index, tied: Mapping = MappingProxyType({})) -> "set[str] | None":
    """The tensor names a call asks for (None: all of them), each one of ``index``'s or ``tied``'s."""
    if isinstance(names, (bytes, bytearray)) or not (names is None or isinstance(names, str) or _iterable(names)):
        raise TypeError(f"names must be a tensor name or an iterable of names, not {type(names).__name__}")
    wanted = None if names is None else {names} if isinstance(names, str) else set(names)
    if wanted is not None:
        # (not a set of every name: a model decoded one tensor at a time would build it for each)
        missing = sorted(n for n in wanted if n not in index and n not in tied)
        if missing:  # api-check
            raise KeyError(f"no tensor named {missing[0]!r} in the stream")
    return wanted


def check_update_parent(
    model: "Mapping[str, Any]", parent: str | None, narrow: "Mapping[str, str] | None" = None
) -> None:
    """Refuse a model whose :func:`model_digest` is not ``parent``, the digest an update of differences records
    of the model it was made for (spec 6.2.1); nothing to check when ``parent`` is None.  The tensors of
    ``narrow`` enter rounded to their format (spec 14.5).

    Parameters
    ----------
    model : ``Mapping``
        {name: array}, the receiver's model.
    parent : str or None
        The update's :attr:`Decoder.parent`.
    narrow : ``Mapping``, optional
        The update's :attr:`Decoder.narrow`: {name: bfloat16 or float8 format}.

    Raises
    ------
    nnc.errors.UpdateError
        If the model's digest is not ``parent``.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.decoder import check_update_parent, model_digest
    >>> model = {"w": np.ones(3, np.float32)}
    >>> check_update_parent(model, model_digest(model))
    >>> check_update_parent({"w": np.zeros(3)}, model_digest(model))
    Traceback (most recent call last):
        ...
    nnc.errors.UpdateError: the model is not the one this update was made for ...
    """
    if parent is not None and not isinstance(parent, str):  # api-check
        raise TypeError(f"parent must be a digest (str) or None, not {type(parent).__name__}")
    if parent is not None and model_digest(_HeldValues(model, narrow or {})) != parent:
        raise UpdateError(
            "the model is not the one this update was made for (its digest differs from the update's parent "
            f"{parent[:12]}...): the update was applied already, an update before it is missing, or the model "
            "is another one",
            clause="6.2.1",
        )


def recorded_replaced(metadata: dict) -> tuple:
    """Names of a stream of differences whose tensors carry full values (spec 6.2.1, ``"replaced"``).

    Parameters
    ----------
    metadata : dict
        :attr:`Decoder.metadata` of the stream.

    Returns
    -------
    tuple of str
        Empty when the stream holds no differences or names none.

    Examples
    --------
    >>> from nnc.decoder import recorded_replaced
    >>> recorded_replaced({"differences": True, "replaced": ["mask", 5]}), recorded_replaced({"replaced": ["mask"]})
    (('mask',), ())
    """
    names = metadata.get("replaced")
    if metadata.get("differences") is not True or not isinstance(names, list):
        return ()
    return tuple(n for n in names if isinstance(n, str))


def recorded_parent(metadata: dict) -> str | None:
    """The parent digest nnc's metadata records (spec 6.2.1): 64 lower-case hex digits, or None.

    Parameters
    ----------
    metadata : dict
        :attr:`Decoder.metadata` of the stream.

    Returns
    -------
    str or None
        The digest, or None when the metadata records none (or not as 64 lower-case hex digits).

    Examples
    --------
    >>> from nnc.decoder import recorded_parent
    >>> recorded_parent({"parent": "ab" * 32}) == "ab" * 32, recorded_parent({"parent": "AB"})
    (True, None)
    """
    value = metadata.get("parent")
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else None


def recorded_narrow(metadata: dict) -> "Mapping[str, str]":
    """{name: format} of the tensors nnc's metadata records as bfloat16 or float8 (spec 6.2.1, 14.5).

    Parameters
    ----------
    metadata : dict
        :attr:`Decoder.metadata` of the stream.

    Returns
    -------
    ``Mapping``
        Tensor names to :mod:`nnc.narrow_floats` format names (read-only).

    Examples
    --------
    >>> from nnc.decoder import recorded_narrow
    >>> dict(recorded_narrow({"dtypes": {"w": "bfloat16", "b": "float32", "x": 7}}))
    {'w': 'bfloat16'}
    """
    recorded = metadata.get("dtypes")
    if not isinstance(recorded, dict):
        return MappingProxyType({})
    return MappingProxyType({k: v for k, v in recorded.items() if isinstance(v, str) and narrow_floats.is_narrow(v)})


def refuse_full_values(update, instead: str) -> None:
    """Raise :class:`~nnc.errors.UpdateError` if ``update`` (a :class:`Decoder`, or tensors it decoded) holds a
    model's full values, not differences to it (spec 6.2.1): added to a model, they would double it. The converse
    of :func:`refuse_differences`; a mapping that does not say is taken as differences.

    Parameters
    ----------
    update : nnc.decoder.Decoder or mapping
        The decoder of the stream, or its decoded tensors (their ``differences`` attribute).
    instead : str
        What the caller should do instead, ending the message.

    Examples
    --------
    >>> import nnc, numpy as np
    >>> from nnc.decoder import Decoder, refuse_full_values
    >>> refuse_full_values({"w": np.ones(3)}, "")  # a plain mapping: nothing to say
    >>> refuse_full_values(Decoder(nnc.encode({"w": [1.0]})), "decode it without --add-to")
    Traceback (most recent call last):
        ...
    nnc.errors.UpdateError: the stream holds full values, not differences (it was not encoded with differences=True, --differences): decode it without --add-to [spec 6.2.1]
    """
    if getattr(update, "differences", True) is False:
        raise UpdateError(
            "the stream holds full values, not differences (it was not encoded with differences=True, "
            "--differences): " + instead,
            clause="6.2.1",
        )


def refuse_differences(dec: "Decoder", instead: str) -> None:
    """Raise :class:`~nnc.errors.UpdateError` if ``dec``'s stream holds differences to a model (an update, spec
    6.2.1): taken as the model's values, they would replace the model by its changes.

    Parameters
    ----------
    dec : nnc.decoder.Decoder
        The decoder of the stream.
    instead : str
        What the caller should do instead, ending the message.

    Examples
    --------
    >>> import nnc, numpy as np
    >>> from nnc.decoder import Decoder, refuse_differences
    >>> state = nnc.EncoderState()
    >>> _ = nnc.encode({"w": np.ones(3, np.float32)}, state=state, differences=True)
    >>> update = nnc.encode({"w": np.full(3, 2, np.float32)}, state=state, differences=True)
    >>> refuse_differences(Decoder(nnc.encode({"w": [1.0]})), "")  # full values: nothing to say
    >>> refuse_differences(Decoder(update), "add them with nnc.apply_update")
    Traceback (most recent call last):
        ...
    nnc.errors.UpdateError: the stream holds differences to a model (an update encoded with differences=True), not its values: add them with nnc.apply_update [spec 6.2.1]
    """
    if dec.differences:
        raise UpdateError(
            "the stream holds differences to a model (an update encoded with differences=True), not its values: "
            + instead,
            clause="6.2.1",
        )


def _is_difference(metadata: dict, name: str) -> bool:
    """Whether tensor ``name`` of a stream holds a difference to the receiver's model, not full values (spec 6.2.1)."""
    return metadata.get("differences") is True and name not in recorded_replaced(metadata)


def read_input(data: StreamInput) -> bytes | memoryview:
    """Bytes of a stream given as bytes, any buffer, a path or a binary file.

    Parameters
    ----------
    data : bytes, buffer, str, ``os.PathLike`` or ``BinaryIO``
        The stream itself (bytes, or any object with the buffer protocol:
        bytearray, memoryview, ``mmap.mmap``, a C-contiguous numpy array...),
        the path of a file holding it (memory-mapped, read by the pages the
        decoded units touch, :func:`map_file`; a file that cannot be mapped is
        read whole), or a file object opened in binary mode (read to its end).

    Returns
    -------
    bytes or memoryview
        The stream's bytes.  bytes are returned as they are and any other
        buffer (a path's map too) as a flat byte memoryview of it, without
        copying: the buffer, or the file, must not change while the decoder
        uses it (a file cut meanwhile is a TruncatedError, spec 15.2).

    Raises
    ------
    OSError
        If the file at the path cannot be read: ``FileNotFoundError``,
        ``PermissionError``, ... as ``open()`` raises it, naming the path.
    TypeError
        If ``data`` is none of the above, or a file object opened in text mode.

    Examples
    --------
    >>> import io
    >>> from nnc.decoder import read_input
    >>> read_input(io.BytesIO(b"\\x00\\x04\\x02\\x01"))
    b'\\x00\\x04\\x02\\x01'
    >>> read_input(io.StringIO("text"))
    Traceback (most recent call last):
        ...
    TypeError: the file object must be opened in binary mode
    >>> read_input("no/such/file.nnr")
    Traceback (most recent call last):
        ...
    FileNotFoundError: [Errno 2] No such file or directory: 'no/such/file.nnr'
    """
    if isinstance(data, bytes):
        return data
    if not isinstance(data, (str, os.PathLike)):
        try:
            # any object may carry the buffer protocol (mmap, numpy arrays...); memoryview() tells
            view = memoryview(data)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            if not view.c_contiguous:  # api-check
                raise TypeError("cannot decode from a non-contiguous buffer; give a C-contiguous one")
            return view.cast("B") if (view.format != "B" or view.ndim != 1) else view
    if isinstance(data, str) and "\0" in data:  # api-check
        raise TypeError("a str is read as a path, and this one holds a NUL character: give a stream as bytes")
    if isinstance(data, (str, os.PathLike)):
        mapped = map_file(data)  # read by the pages the decoded units touch
        if mapped is not None:
            return memoryview(mapped)
        with open(data, "rb") as fh:  # a missing file is a FileNotFoundError, as for open()
            return fh.read()
    if hasattr(data, "read"):
        if isinstance(data, io.TextIOBase):  # api-check (its read() would fail decoding the stream as text)
            raise TypeError("the file object must be opened in binary mode")
        out = data.read()
        if not isinstance(out, (bytes, bytearray)):  # api-check
            raise TypeError("the file object must be opened in binary mode")
        return bytes(out)
    raise TypeError(  # api-check
        f"cannot decode from {type(data).__name__}; give bytes, a buffer, a path or a binary file"
    )


#: Read-only maps of stream files whose pages may be dropped once read (:func:`map_file` adds its own).
RELEASABLE_MAPS: "weakref.WeakSet[mmap.mmap]" = weakref.WeakSet()

#: Held while a decoder reads a DecoderState or enters its stream into one (cheap: dict copies and updates).
_STATES_LOCK = threading.Lock()


try:  # compiled with the engine; without it a cut file can end the process (SIGBUS), as any mmap's can
    from . import _mapguard
except ImportError:  # pragma: no cover - a build without a C compiler
    _mapguard = None


class GuardedMap(mmap.mmap):
    """A read-only map of a stream file that survives the file being cut while it is read (spec 15.2, informative).

    Reading a page past the file's new end would end the process (SIGBUS); in a
    guarded map it reads zeros instead and marks the map as :attr:`cut`, which
    the decoder checks after every unit it reads, raising
    :class:`~nnc.errors.TruncatedError` (on Windows, and in builds without the
    compiled engine, the map is not guarded).
    """

    _slot = -1
    _faulted = False  # (a fault seen by a slot given up)
    #: The mapped file's path, for messages (set by :func:`map_file`).
    path: "str | None" = None

    def guard(self) -> "GuardedMap":
        """Start guarding the map (once it is open and non-empty)."""
        if _mapguard is not None and self._slot < 0 and not self.closed and len(self):
            self._slot = _mapguard.add(self)
        return self

    @property
    def cut(self) -> bool:
        """Whether the file is now shorter than the map, or a read found it so (it was cut while mapped)."""
        if self._faulted or (self._slot >= 0 and _mapguard is not None and _mapguard.faulted(self._slot)):
            return True
        try:
            return not self.closed and self.size() < len(self)  # the cut's last page reads zeros, without a fault
        except OSError:
            return True

    def _unguard(self) -> None:
        if self._slot >= 0 and _mapguard is not None:
            self._faulted = self._faulted or _mapguard.faulted(self._slot)
            _mapguard.remove(self._slot)
        self._slot = -1

    def close(self) -> None:
        self._unguard()  # before the memory is unmapped: a later map at its address is not this one
        try:
            super().close()
        except BufferError:  # views of it are alive: it stays mapped, and guarded again
            self.guard()
            raise

    def __exit__(self, *exc) -> None:  # (the base type's closes without this class's close)
        self.close()

    def __del__(self) -> None:
        self._unguard()  # before the memory is unmapped (the base type's deallocation)

    def close_when_unused(self) -> None:
        """Close the map now, or, while views of it are alive (a decoder still using it), when the last goes."""
        try:
            self.close()
        except BufferError:
            pass


def map_file(path):
    """A stream file memory-mapped read-only, guarded against being cut while it is read (spec 15.2, informative).

    :func:`read_input` maps a path this way (and ``nnc.writers.map_stream`` is
    this function). Pages are read as the units are decoded, and
    :func:`nnc.writers.decode_to_path` releases those of the units it has
    decoded, so that resident memory does not grow with the stream; the map is
    unmapped when the last view of it goes (a decoder's).

    Parameters
    ----------
    path : str or ``os.PathLike``
        The stream file.

    Returns
    -------
    ``mmap.mmap`` or None
        The map (a ``GuardedMap``); None if the file cannot be mapped (it cannot be opened, is
        empty, or is no regular file): the caller then reads it, and reports
        what is wrong on the path.

    Examples
    --------
    >>> import nnc, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.nnr")
    >>> _ = nnc.encode_model({"w": np.ones(3, np.float32)}, path)
    >>> nnc.Decoder(map_file(path)).names(), map_file(path + ".missing")
    (['w'], None)
    """
    try:
        with open(path, "rb") as fh:
            mapped = GuardedMap(fh.fileno(), 0, access=mmap.ACCESS_READ).guard()
    except (OSError, ValueError):
        return None
    mapped.path = os.fspath(path)
    RELEASABLE_MAPS.add(mapped)
    return mapped


def _check_not_cut(data, path=None) -> None:
    """Raise :class:`~nnc.errors.TruncatedError` if ``data`` is (a view of) a :class:`GuardedMap` whose file was cut.

    What was read from it after the cut is zeros, not the stream: nothing decoded from it may be used (spec 3.2,
    15.2 informative).
    """
    under = data.obj if isinstance(data, memoryview) else data
    if isinstance(under, GuardedMap) and under.cut:
        path = path if path is not None else under.path
        where = f"{os.fspath(path)} " if path is not None else ""
        raise TruncatedError(
            f"the stream file {where}was cut by another program while it was being read; nothing decoded from it "
            "is used",
            clause="3.2",
        )


def release_pages(mapped: mmap.mmap, start: int, end: int) -> None:
    """Drop a releasable map's pages in [start, end) from resident memory; the file keeps the bytes.

    The range is widened to whole pages inside it; a kernel without MADV_DONTNEED keeps the pages.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    start, end = start - start % mmap.PAGESIZE, end - end % mmap.PAGESIZE
    if advice is not None and end > start:
        try:
            mapped.madvise(advice, start, end - start)
        except (OSError, ValueError):
            pass


def _releasable_map(data) -> "mmap.mmap | None":
    """The map under ``data`` if it is one of RELEASABLE_MAPS, else None."""
    under = data.obj if isinstance(data, memoryview) else None
    return under if isinstance(under, mmap.mmap) and under in RELEASABLE_MAPS else None


@dataclass
class _Params:
    """Parameters in force for an NDU: from the MPS, possibly overridden by an LPS (spec 5.2, 6.1)."""

    profile: int = 0
    qp_density: int = 2
    qp: int = 0
    parent_signalling: bool = False


class Decoder:
    """Decoder of one NNC stream, with metadata and random access by tensor.

    Construction reads the stream and parses every unit header (spec 3–7),
    so that the tensors' names, shapes and coding parameters are known and
    every header-level error and limit is found at once; payloads are
    decoded only when asked for, by :meth:`~nnc.decoder.Decoder.decode` or :meth:`~nnc.decoder.Decoder.decode_tensor`.

    Parameters
    ----------
    data : bytes, bytearray, memoryview, str, ``os.PathLike`` or ``BinaryIO``
        The stream, a path to it, or a file object opened in binary mode
        (see :func:`~nnc.decoder.read_input`).
    limits : nnc.decoder.Limits or None
        Resource limits (spec 15.2); None for the defaults of :class:`~nnc.decoder.Limits`.
    engine : str or None
        ``"cython"`` or ``"python"``; None for ``$NNC_ENGINE`` or the compiled
        engine (see :func:`nnc.engine.get_engine`).
    state : nnc.decoder.DecoderState or None
        State kept across incremental 2nd-edition streams (spec 14).  When
        given, every decoded tensor's levels are recorded in it.
    entry_points : str
        What to do with transmitted entry points (spec 11.4): ``"ignore"``
        them (decode sequentially, the default), ``"use"`` them to decode
        each block row from its entry point (each block row must end where the
        next one's entry point starts: the result is that of sequential decoding
        or a ``DecodeError``), or ``"verify"`` that they equal the positions
        found by sequential decoding.

    Raises
    ------
    nnc.errors.TruncatedError
        If the stream ends inside a unit.
    nnc.errors.LimitError
        If a tensor or the whole output exceeds ``limits``, or a tensor
        declares more elements than its payload can code.
    nnc.errors.UnsupportedError
        If the stream uses a profile or tool nnc does not decode.
    nnc.errors.DecodeError
        For any other invalid header.
    OSError
        If a path cannot be read (``FileNotFoundError`` for a missing file).
    ValueError
        If ``entry_points`` or ``engine`` is not one of the values above.
    TypeError
        If ``data`` is of an unsupported type.

    Examples
    --------
    >>> import nnc
    >>> dec = nnc.Decoder(nnc.encode({"a": [1.0, 2.0], "b": [3.0]}, qp=-20, nonweight_qp=None))
    >>> [t.name for t in dec.tensors()]
    ['a', 'b']
    >>> dec.decode_tensor("b").tolist()
    [3.0]
    >>> [u.type_name for u in dec.units]
    ['NNR_STR', 'NNR_MPS', 'NNR_TPL', 'NNR_NDU', 'NNR_NDU']
    >>> nnc.Decoder(b"\\x00\\x04\\x02\\x01", entry_points="skip")
    Traceback (most recent call last):
        ...
    ValueError: entry_points must be 'ignore', 'use' or 'verify'
    """

    def __reduce__(self):
        raise TypeError(
            "an nnc Decoder cannot be pickled (it reads a file or buffer): send the stream and decode there"
        )

    def __init__(
        self,
        data: StreamInput,
        *,
        limits: Limits | None = None,
        engine: str | None = None,
        state: DecoderState | None = None,
        entry_points: str = "ignore",
    ):
        if entry_points not in ("ignore", "use", "verify"):  # api-check
            raise ValueError("entry_points must be 'ignore', 'use' or 'verify'")
        if limits is not None and not isinstance(limits, Limits):  # api-check
            raise TypeError(f"limits must be an nnc.Limits, not {type(limits).__name__}")
        if state is not None and not isinstance(state, DecoderState):  # api-check
            raise TypeError(f"state must be an nnc.DecoderState, not {type(state).__name__}")
        #: The stream's bytes.
        self.data = read_input(data)
        #: The :class:`~nnc.decoder.Limits` in force.
        self.limits = limits or Limits()
        #: The engine module that decodes payloads (see :mod:`nnc.engine`).
        self.engine = get_engine(engine)
        # levels are kept across streams only when the caller asks (a state) or the stream needs them
        #: Whether every decoded tensor's levels are recorded in ``state`` (a state was given).
        self.keep_state = state is not None
        #: The :class:`~nnc.decoder.DecoderState` given, or a new one of this decoder's own.
        self.state = state if state is not None else DecoderState()
        # the parents as they were before this stream (spec 14.1): every decode of a unit reads these, and the
        # stream's own levels enter ``state`` only once all its NDUs have decoded (a failed stream leaves it)
        with _STATES_LOCK:  # (not torn by a decoder entering its stream meanwhile)
            self._parent_levels = self.state.levels.copy()
            self._parent_history = self.state.history.copy()
            self._parent_depths = dict(self.state.depths)
            self._parent_raw_depths = dict(self.state.raw_depths)
            self._parent_digests = dict(self.state.payload_digests)
            self._parent_generation = getattr(self.state, "generation", 0)
        self._staged = self.state._new_store() if isinstance(self.state, DecoderState) else ArrayStore()
        self._decoded_ndus: set[int] = set()
        self._entered = False  # the stream's levels are in the state
        self._state_lock = threading.Lock()
        #: The ``entry_points`` argument (``"ignore"``, ``"use"`` or ``"verify"``).
        self.entry_points_mode = entry_points
        #: Every unit of the stream, parsed (:class:`nnc.container.Unit`), in stream order.
        self.units: list[C.Unit] = []
        #: nnc's metadata from a topology unit (original shapes and dtypes, announced tensors), or ``{}``.
        self.metadata: dict = {}
        self._metadata_offset = 0  # of the topology unit whose metadata applies
        self._ndus: list[tuple[C.Unit, _Params]] = []
        try:
            self._parse_units()
        except NNCError as exc:
            _check_not_cut(self.data)  # zeros read where the file was cut are not the stream's error
            raise exc
        _check_not_cut(self.data)
        self._index = self._build_index()
        self._ndu_tensors: list[list[TensorInfo]] = [[] for _ in self._ndus]
        for i, info in self._index.values():
            self._ndu_tensors[i].append(info)
        #: Tensors the model holds as another, coded tensor (tied weights, spec 6.2.1): {name: coded tensor's name}.
        self.tied: dict[str, str] = self._read_tied()
        self._ties_of: dict[str, list[TensorInfo]] = {}  # {coded tensor: the records of the tensors tied to it}
        for name, source in self.tied.items():
            self._ties_of.setdefault(source, []).append(replace(self._index[source][1], name=name, tied_to=source))
        #: Names the topology unit announces as skipped by an incremental update (spec 3.5), in order.
        self.skipped: tuple = ()
        #: Whether the stream's tensors are differences to the receiver's model (spec 6.2.1).
        self.differences: bool = self.metadata.get("differences") is True
        #: With differences: the :func:`model_digest` of the model they apply to (spec 6.2.1), or None.
        self.parent: str | None = recorded_parent(self.metadata) if self.differences else None
        #: With differences: names of the tensors that carry full values, replacing the model's (spec 6.2.1).
        self.replaced: tuple = recorded_replaced(self.metadata)
        #: The float tensors recorded as bfloat16 or float8 (spec 14.5), by name, with their format; a model holds
        #: them rounded to it.
        self.narrow: Mapping[str, str] = recorded_narrow(self.metadata)
        #: Fewest elements of a block-row range worth a thread of its own when decoding with ``threads`` > 1;
        #: None for ``nnc._parallel.MIN_ELEMENTS_PER_THREAD``, 2**18 (the verifier lowers it to test small streams).
        self.row_thread_min_elements: int | None = None
        self._check_complete()
        self._check_parents()
        _check_not_cut(self.data)

    def _check_parents(self) -> None:
        """An update NDU must name the parent the decoder state holds for its tensors (spec 14.4): by node ids, the
        depth of their last decoded occurrence; by a SHA-256 or SHA-512, the payload of the NDU their levels came
        from. An update decoded a second time, after a missing one, or with another model's state is refused
        before any payload is decoded."""
        for i, (unit, _) in enumerate(self._ndus):
            h = unit.header
            if not _get(h, "parent_node_id_present_flag", 0):
                continue
            names = [info.name for info in self._ndu_tensors[i]]
            self._check_parent_depth(unit, names)
            self._check_parent_payload(unit, names)

    def _check_parent_depth(self, unit: C.Unit, names: list[str]) -> None:
        """The depth of the NDU's parent, ``put_node_depth`` - 1 with node ids, else ``parent_put_node_depth``
        (type 0), is that of its tensors' last decoded occurrence where the state knows it (spec 14.4, item 49)."""
        h = unit.header
        if _get(h, "node_id_present_flag", 0):
            parent_depth = int(_get(h, "put_node_depth", 0)) - 1
        elif _get(h, "parent_node_id_type", 0) == 0:
            parent_depth = int(_get(h, "parent_put_node_depth", 0))
        else:
            return  # a hash names the parent and no node ids say its depth
        if parent_depth < 0:
            return  # depth 0 with a parent: an encoder that does not number its nodes (as nnc's suite)
        known = {n: self._parent_depths[n] for n in names if n in self._parent_depths}
        # a RAW_FLOAT NDU in between: NNCodec (and nnc since 0.3.0) number from the coded NDU before it, nnc 0.2.0
        # from the RAW_FLOAT one
        with_raw = {n: self._parent_raw_depths.get(n, d) for n, d in known.items()}
        if known and parent_depth not in (max(known.values()), max(with_raw.values())):
            name, depth = max(known.items(), key=lambda kv: kv[1])
            when = (
                "was decoded before (a replayed update), or comes from another sender or an older sender state"
                if depth > parent_depth
                else "misses one before it"
            )
            raise DecodeError(
                f"the NDU of {name!r} updates its depth-{parent_depth} node, but the decoder state's last "
                f"{name!r} is at depth {depth}: this update {when}",
                clause="14.4",
                offset=unit.offset,
            )

    def _check_parent_payload(self, unit: C.Unit, names: list[str]) -> None:
        """A parent named by the SHA-256 (type 1) or SHA-512 (type 2) of its payload is the NDU that last entered
        the levels of each of the NDU's tensors where the state knows it (spec 14.4, 15.1 item 50)."""
        h = unit.header
        kind = _get(h, "parent_node_id_type", 0)
        if kind not in (1, 2):
            return
        named = bytes(_get(h, "parent_node_payload_sha256" if kind == 1 else "parent_node_payload_sha512", b""))
        for name in names:
            digests = self._parent_digests.get(name)
            if digests is not None and digests[kind - 1] != named:
                raise DecodeError(
                    f"the NDU of {name!r} updates the NDU whose payload's {('SHA-256', 'SHA-512')[kind - 1]} is "
                    f"{named.hex()[:16]}..., but the decoder state's {name!r} came from "
                    f"{digests[kind - 1].hex()[:16]}...: this update belongs to another model or sequence, "
                    f"was decoded before, or misses one before it",
                    clause="14.4",
                    offset=unit.offset,
                )

    @property
    def parent_signalling(self) -> bool:
        """Whether a model parameter set of the stream enables parent signalling (spec 5): an update of a model
        decoded before (spec 14); with no NDU, one in which every tensor is all zero (spec 3.5, 7.7)."""
        return any(
            u.type_name == "NNR_MPS" and bool(_get(u.header, "mps_parent_signalling_enabled_flag", 0))
            for u in self.units
        )

    def _check_complete(self) -> None:
        """Every tensor the topology unit announces arrives, and no other (spec 3.5)."""
        count = _announced_count(self.metadata)
        announced = self.metadata.get("tensors")
        names = isinstance(announced, list) and all(isinstance(n, str) for n in announced)
        if announced is not None and count is None and not names:
            raise DecodeError(
                f'the topology metadata\'s "tensors" is neither a count nor a list of names: {str(announced)[:60]}',
                clause="3.5",
                offset=self._metadata_offset,
            )
        if not self._ndus and count is None and not names and not self.parent_signalling:
            raise TruncatedError(
                "the stream holds no NDU and no topology unit that announces its tensors: it ends before its "
                "model (a cut stream)",
                clause="3.5",
                offset=len(self.data),
            )
        if count is not None:
            self._check_count(count)
            return
        if not names or not isinstance(announced, list):
            return  # no announcement (NNCodec's streams): the stream is what arrives
        skipped = self.metadata.get("skipped", [])
        skipped = [n for n in skipped if isinstance(n, str)] if isinstance(skipped, list) else []
        expected = set(announced)
        self.skipped = tuple(n for n in announced if n in set(skipped) and n not in self._index)
        missing = [n for n in announced if n not in self._index and n not in self.skipped and n not in self.tied]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise TruncatedError(
                f"the stream ends before {len(missing)} of the {len(announced)} tensors its topology unit "
                f"announces (missing: {missing[0]!r}{more})",
                clause="3.5",
                offset=len(self.data),
            )
        extra = [n for n in self._index if n not in expected]
        if extra:
            i, info = self._index[extra[0]]
            raise DecodeError(
                f"tensor {extra[0]!r} is not among the tensors the topology unit announces",
                clause="3.5",
                offset=info.unit_offset,
            )

    def _check_count(self, count: int) -> None:
        """As many tensors arrive as the topology unit's count announces (spec 3.5)."""
        held = list(self._index)
        if len(held) < count:
            raise TruncatedError(
                f"the stream ends before {count - len(held)} of the {count} tensor(s) its topology unit announces",
                clause="3.5",
                offset=len(self.data),
            )
        if len(held) > count:
            _, info = self._index[held[count]]
            raise DecodeError(
                f"tensor {held[count]!r} is beyond the {count} tensor(s) the topology unit announces",
                clause="3.5",
                offset=info.unit_offset,
            )

    # -- unit stream (spec 3) -------------------------------------------------
    def _parse_units(self) -> None:
        """Walk the unit stream and record the parameters in force for each NDU (spec 3.1)."""
        params = _Params()
        mapped, released = _releasable_map(self.data), 0
        for unit in C.iter_units(self.data):
            if mapped is not None:  # headers parsed so far leave memory: the scan's peak does not grow with the stream
                release_pages(mapped, released, unit.offset)
                released = unit.offset - unit.offset % mmap.PAGESIZE
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
            elif unit.type == C.NNR_QNT:  # the container rejects NNR_AGG itself (spec 6.4)
                raise UnsupportedError("NNR_QNT units are not supported", clause="6.3", offset=unit.offset)
            elif unit.type == C.NNR_TPL:
                # spec 6.2.1: the last topology unit that carries nnc metadata applies; another changes nothing
                meta = _topology_metadata(unit, self.limits.max_metadata_bytes)
                if meta:
                    self.metadata, self._metadata_offset = meta, unit.offset
            else:  # NNR_NDU: the container rejects reserved types and NNR_AGG (spec 3.4, 6.4)
                self._ndus.append((unit, _Params(**params.__dict__)))

    def _build_index(self) -> "OrderedDict[str, tuple[int, TensorInfo]]":
        """Tensor metadata from the NDU headers, in decode order (spec 7.4, 7.6)."""
        index: OrderedDict[str, tuple[int, TensorInfo]] = OrderedDict()
        total_bytes = 0
        for i, (unit, params) in enumerate(self._ndus):
            for info in self._tensor_infos(unit, params, i):
                if info.name in index:
                    raise DecodeError(
                        f"tensor name {info.name!r} appears twice in the stream",
                        clause="15.1",
                        offset=unit.offset,
                    )
                self._check_limits(unit, params, info)
                total_bytes = self._count_output(total_bytes, info, unit.offset, "decoded output")
                index[info.name] = (i, info)
        return index

    def _count_output(self, total: int, info: TensorInfo, offset: int, what: str) -> int:
        """``total`` bytes of output and ``info``'s; a LimitError at ``offset`` past ``Limits.max_total_bytes``
        (spec 15.2)."""
        total += info.size * np.dtype(info.dtype).itemsize
        if total > self.limits.max_total_bytes:
            raise LimitError(f"{what} would exceed {self.limits.max_total_bytes} bytes", clause="15.2", offset=offset)
        return total

    def _read_tied(self) -> dict:
        """The metadata's ``"tied"`` entry, checked (spec 6.2.1): {name: the coded tensor it equals}. Each tied
        tensor takes its coded tensor's recorded shape and dtype in :attr:`metadata`; its bytes count towards
        ``Limits.max_total_bytes``."""
        tied = self.metadata.get("tied")
        if tied is None:
            return {}

        def refuse(why: str) -> DecodeError:
            return DecodeError(f'the topology metadata\'s "tied" {why}', clause="6.2.1", offset=self._metadata_offset)

        if not isinstance(tied, dict):
            raise refuse("is not an object of tensor names")
        if tied and self.metadata.get("differences") is True:
            raise refuse("is in a stream of differences, whose tensors cannot be tied")
        total = sum(info.size * np.dtype(info.dtype).itemsize for _, info in self._index.values())
        for name, source in tied.items():
            if not name or "\x00" in name or not _is_utf8(name):
                raise refuse(f"names a tensor {name[:40]!r}, not a valid tensor name (spec 2.6)")
            if name in self._index:
                raise refuse(f"names {name[:40]!r}, a tensor the stream codes")
            if not isinstance(source, str) or source not in self._index:
                raise refuse(f"ties {name[:40]!r} to {str(source)[:40]!r}, which is not a tensor the stream codes")
            total = self._count_output(
                total, self._index[source][1], self._metadata_offset, "decoded output with its tied tensors"
            )
        for key in ("shapes", "dtypes"):  # a tied tensor is restored as its coded tensor is
            entries = self.metadata.get(key)
            if isinstance(entries, dict):
                for name, source in tied.items():
                    if source in entries:
                        entries[name] = entries[source]
                    else:
                        entries.pop(name, None)
        return dict(tied)

    def _check_limits(self, unit: C.Unit, params: _Params, info: TensorInfo) -> None:
        """Refuse sizes the payload cannot code or the limits forbid (spec 15.2)."""
        size = info.size
        # a zero dimension makes the size 0, but the other dimensions still shape the array
        nominal = math.prod(max(d, 1) for d in info.shape)
        if size > self.limits.max_tensor_elements or nominal > self.limits.max_tensor_elements:
            raise LimitError(
                f"tensor {info.name!r} declares dimensions {list(info.shape)}, beyond the limit of "
                f"{self.limits.max_tensor_elements} elements",
                clause="15.2",
                offset=unit.offset,
            )
        payload_len = len(unit.payload)
        if info.payload_type == "RAW_FLOAT":
            return
        bound = ELEMENTS_PER_PAYLOAD_BYTE * payload_len + ELEMENTS_SLACK
        height, width = matrix_view(info.shape)
        if info.codebook is not None and len(info.codebook) == 1 and params.profile == 1:
            return  # nothing is coded for a one-entry codebook (spec 10.4)
        if params.profile == 1 and width > 1 and height > 1:
            counted = height  # each row costs at least its row-skip bin (spec 8.3)
        else:
            counted = size
        if counted > bound:
            raise LimitError(
                f"tensor {info.name!r} declares {size} elements, more than a {payload_len}-byte payload can code",
                clause="15.2",
                offset=unit.offset,
            )

    def _tensor_infos(self, unit: C.Unit, params: _Params, ndu_index: int) -> list[TensorInfo]:
        """Names, shapes and coding parameters of the tensors of one NDU, in coding order (spec 7.4, 7.6)."""
        h = unit.header
        ptype = int(h.nnr_compressed_data_unit_payload_type)
        if ptype not in PAYLOAD_TYPE_NAMES:
            raise DecodeError(f"reserved payload type {ptype}", clause="7.4", offset=unit.offset)
        pname = PAYLOAD_TYPE_NAMES[ptype]
        if not _get(h, "input_parameters_present_flag", 1) or not _get(h, "tensor_dimensions_flag", 0):
            raise UnsupportedError(
                "tensor dimensions are carried out of band; this decoder needs them in the stream",
                clause="7.4",
                offset=unit.offset,
            )
        dims = tuple(int(d) for d in h.tensor_dimensions)
        n_gtx = int(_get(h, "cabac_unary_length_minus1", 9)) + 1
        dq = bool(_get(h, "dq_flag", 0)) and ptype != C.NNR_PT_INT
        scan = int(_get(h, "scan_order", 0))
        if scan > 4:
            raise DecodeError(f"scan_order {scan} is above 4", clause="7.4", offset=unit.offset)
        codebook = list(h.codebook) if _get(h, "codebook_present_flag", 0) else None
        if codebook is not None and dq:
            raise DecodeError("a codebook cannot be combined with dq_flag = 1", clause="15.1", offset=unit.offset)
        fmt = int(h.nnr_decompressed_data_format) if _get(h, "nnr_decompressed_data_format_present_flag", 0) else None
        eps = [
            (int(e.value), int(_get(e, "dq_state", 0)), int(e.offset)) for e in (_get(h, "entry_points", None) or [])
        ]

        def info(name, shape, is_weight):
            if ptype == C.NNR_PT_INT:
                dtype = "int32"
            elif codebook is not None and is_weight:
                dtype = "float64"
            else:
                dtype = "float32"
            if fmt is not None:
                try:
                    dtype = format_dtype(fmt).name
                except DecodeError as exc:
                    raise exc.at(unit.offset) from None
            return TensorInfo(
                name=name,
                shape=shape,
                dtype=dtype,
                payload_type=pname,
                qp=None,
                qp_density=params.qp_density if ptype in (C.NNR_PT_FLOAT, C.NNR_PT_BLOCK) else None,
                step=None,
                dq=dq,
                scan_order=scan if len(shape) > 1 else 0,
                n_gtx=None if ptype == C.NNR_PT_RAW_FLOAT else n_gtx,
                codebook=codebook if is_weight else None,
                unit_index=ndu_index,
                unit_offset=unit.offset,
                unit_size=unit.size,
                entry_points=eps if is_weight else [],
                decompressed_data_format=fmt,
            )

        if ptype != C.NNR_PT_BLOCK:
            if _get(h, "nnr_multiple_topology_elements_present_flag", 0):
                raise UnsupportedError(
                    "several topology elements in a non-block NDU are not supported", clause="7.4", offset=unit.offset
                )
            if int(_get(h, "compressed_parameter_types", 0)) & C.NNR_CPT_DC:  # (its LS, BN, BI bits: ignored)
                raise UnsupportedError("decomposed (DC) weights are not supported", clause="7.6", offset=unit.offset)
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
                clause="7.6",
                offset=unit.offset,
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
        """Metadata of every tensor, in decode order, without decoding payloads; a tied tensor (spec 6.2.1) right
        after the coded tensor it shares, with that tensor's fields and ``tied_to`` its name.

        Returns
        -------
        list of nnc.decoder.TensorInfo
            One record per tensor.  The records are the decoder's own: decoding
            fills in their ``qp``, ``step`` and ``row_skip``.

        Examples
        --------
        >>> import nnc
        >>> dec = nnc.Decoder(nnc.encode({"w": [[1.0, 2.0]] * 3, "b": [0.5]}, qp=-20, nonweight_qp=None))
        >>> [(t.name, t.shape, t.payload_type) for t in dec.tensors()]
        [('w', (3, 2), 'FLOAT'), ('b', (1,), 'FLOAT')]
        """
        if not self.tied:
            return [info for _, info in self._index.values()]
        return [i for _, info in self._index.values() for i in (info, *self._ties_of.get(info.name, ()))]

    def read_qps(self, names: Iterable[str] | None = None) -> None:
        """Fill in the ``qp`` and ``step`` of tensors (all by default) with no more decoding than they need.

        A tensor's qp offset begins its part of the payload (spec 8.2): the first tensor of
        an NDU has it at the payload's start, so its levels are not decoded; in a block NDU
        (7.6) the tensors before the last are decoded to reach the last one's offset.
        RAW_FLOAT and INT tensors have no qp (None). The payloads are not checked further:
        :meth:`decode` does that.

        Parameters
        ----------
        names : ``Iterable[str]``, str or None
            The tensors; all of them by default.

        Raises
        ------
        nnc.errors.DecodeError
            If a payload ends before an offset, or a tensor before it does not decode.
        KeyError
            If a name is not that of a tensor of the stream.

        Examples
        --------
        >>> import nnc
        >>> dec = nnc.Decoder(nnc.encode({"w": [[1.0, 2.0]] * 3}, qp=-20))
        >>> dec.read_qps()
        >>> dec.info("w").qp
        -20
        """
        wanted = _wanted_names(names, self._index, self.tied)
        if wanted is not None:
            wanted = {self.tied.get(n, n) for n in wanted}
        by_ndu: dict[int, list[TensorInfo]] = {}
        for i, info in self._index.values():
            by_ndu.setdefault(i, []).append(info)  # coding order
        for i, infos in by_ndu.items():
            if wanted is not None and wanted.isdisjoint(info.name for info in infos):
                continue
            unit, params = self._ndus[i]
            try:
                self._decode_ndu_payload(unit, params, infos, staged={}, qps_only=True)
            except NNCError as exc:
                _check_not_cut(self.data)
                raise self._without_history(unit, infos, exc).at(unit.payload_offset) from exc
            self._update_ties(infos)
        _check_not_cut(self.data)

    def names(self) -> list[str]:
        """Names of every tensor, in decode order, a tied one (spec 6.2.1) right after the coded tensor it shares.

        Returns
        -------
        list of str
            The tensor names.

        Examples
        --------
        >>> import nnc
        >>> nnc.Decoder(nnc.encode({"w": [[1.0, 2.0]] * 3, "b": [0.5]}, qp=-20, nonweight_qp=None)).names()
        ['w', 'b']
        """
        if not self.tied:
            return list(self._index)
        return [info.name for info in self.tensors()]

    def decode(
        self,
        names: Iterable[str] | None = None,
        progress=None,
        threads: int = 1,
        out: "Mapping[str, np.ndarray] | None" = None,
    ) -> "DecodedTensors":
        """Decode all tensors (or those named), in stream order.

        Only the units that carry a wanted tensor are decoded.  Tensors named
        in ``out`` are decoded into the caller's arrays (see
        :meth:`~nnc.decoder.Decoder.decode_tensor`); every array of ``out`` is
        checked before anything is decoded.

        Parameters
        ----------
        names : ``Iterable[str]``, str or None
            Names of the tensors to decode (a str: that one); None for all of them.
        progress : ``callable`` or None
            If given, called with the :class:`~nnc.decoder.TensorInfo` of each tensor once
            it is decoded.
        threads : int
            Compressed data units decoded at the same time (the Cython engine
            releases the GIL); 0 for one per CPU.  With the default
            ``entry_points="ignore"``, the block rows of a large block-scanned
            tensor are also decoded in threads from its entry points, each
            range checked to end exactly where the next one starts (spec 11.4;
            a tensor failing the check is decoded sequentially).  The output and the error
            raised for an invalid stream (that of the first invalid unit in
            stream order) are the same for every value.  Streams that read or
            update a decoder state (incremental coding, spec 14) are decoded
            one unit after another.
        out : ``Mapping`` or None
            {name: ``numpy.ndarray``}: arrays to decode these tensors into.

        Returns
        -------
        DecodedTensors
            {name: ``numpy.ndarray``} in stream order, each array with the
            signalled shape and the dtype named by its :class:`~nnc.decoder.TensorInfo`
            (for the tensors of ``out``: the caller's arrays themselves), with the
            stream's ``differences`` and ``skipped``.

        Raises
        ------
        KeyError
            If a name (of ``names`` or ``out``) is not that of a tensor of the stream.
        nnc.errors.OutputBufferError
            If an array of ``out`` cannot hold its tensor.
        ValueError
            If ``threads`` is not an int >= 0.
        nnc.errors.DecodeError
            If a payload is invalid (its subclass
            :class:`~nnc.errors.TruncatedError` if it ends too early); the
            offset is relative to the whole stream.

        Examples
        --------
        >>> import nnc
        >>> dec = nnc.Decoder(nnc.encode({"w": [[1.0, 2.0]] * 3, "b": [0.5]}, qp=-20, nonweight_qp=None))
        >>> out = dec.decode(["b"], progress=lambda t: print("decoded", t.name))
        decoded b
        >>> list(out), out["b"].tolist()
        (['b'], [0.5])
        >>> dec.decode(["bias"])
        Traceback (most recent call last):
            ...
        KeyError: "no tensor named 'bias' in the stream"
        """
        if progress is not None and not callable(progress):  # api-check
            raise TypeError(f"progress must be a callable or None, not {type(progress).__name__}")
        if isinstance(out, Mapping) and not callable(out):
            for name, array in out.items():
                self._check_out(name, array)
        result = DecodedTensors().take_attributes(self)
        for name, arr in self.iter_tensors(names, threads=threads, out=out):
            result[name] = arr
            if progress is not None:
                progress(self.info(name))
        return result

    def iter_tensors(self, names: Iterable[str] | None = None, *, threads: int = 1, out=None):
        """Decode tensors one unit (NDU, spec 7.5) at a time, yielding each as soon as it is decoded.

        Memory is bounded by the units in flight: one NDU with ``threads=1``,
        at most ``threads`` with more; a tensor the caller has let go of is
        freed before the next units are decoded.  Stopping the iteration early
        decodes nothing more.

        Parameters
        ----------
        names : ``Iterable[str]``, str or None
            Names of the tensors to decode (a str: that one); None for all of them.
        threads : int
            Units decoded at the same time; 0 for one per CPU (as for
            :meth:`~nnc.decoder.Decoder.decode`).
        out : ``Mapping``, ``callable`` or None
            Where to decode tensors: {name: ``numpy.ndarray``}, or a function
            called with a tensor's :class:`~nnc.decoder.TensorInfo` just before
            its unit is decoded (from a decoding thread when ``threads`` > 1)
            that returns the array to fill or None (e.g. a memory map of the
            tensor's place in a file, opened only then).  The arrays must fit as
            for :meth:`~nnc.decoder.Decoder.decode_tensor`, and are decoded into
            directly where their dtype allows.  A mapping's arrays are checked
            against one another (a partial overlap is refused); a callable's are
            not, as one may reuse the memory of a tensor already yielded: an
            array that overlaps a tensor still in use overwrites it.

        Yields
        ------
        tuple
            ``(name, array)`` in stream order; the array is the caller's when
            ``out`` gave one.

        Raises
        ------
        KeyError
            If a name is not that of a tensor of the stream.
        nnc.errors.OutputBufferError
            If an array from ``out`` cannot hold its tensor.
        nnc.errors.DecodeError
            If a payload is invalid; the tensors before it have been yielded.

        Examples
        --------
        >>> import nnc
        >>> dec = nnc.Decoder(nnc.encode({"w": [[1.0, 2.0]] * 3, "b": [0.5]}, qp=-20, nonweight_qp=None))
        >>> for name, array in dec.iter_tensors():
        ...     print(name, array.shape)
        w (3, 2)
        b (1,)
        """
        wanted = _wanted_names(names, self._index, self.tied)
        aliases: dict = {}
        if out is None:
            target = None
        elif callable(out):
            target = out
        elif not isinstance(out, Mapping):  # api-check
            from .errors import OutputBufferError

            raise OutputBufferError(
                f"out= must map tensor names to arrays (or be a callable), not {type(out).__name__}"
            )
        else:
            unknown = [k for k in out if k not in self._index and k not in self.tied]
            if unknown:  # api-check
                raise KeyError(f"no tensor named {unknown[0]!r} in the stream")
            aliases = self._shared_outs(out, wanted)
            target = lambda info: None if info.name in aliases else out.get(info.name)  # noqa: E731
        threads = thread_count(threads)
        units = (
            range(len(self._ndus)) if wanted is None else sorted({self._index[self.tied.get(n, n)][0] for n in wanted})
        )
        jobs = [(*self._ndus[i], self._ndu_tensors[i], threads) for i in units]
        stateful = self.keep_state or any(params.parent_signalling for _, params, *_ in jobs)

        def decode_unit(unit, params, infos, threads):
            # the unit's out= arrays, asked for and checked just before it is decoded, and filled directly
            into = {}
            for info in infos if target is not None else ():
                if wanted is None or info.name in wanted:
                    buffer = target(info)
                    if buffer is not None:
                        self._check_out(info.name, buffer)
                        into[info.name] = buffer
            return self._decode_ndu(unit, params, infos, threads, into=into), into

        for decoded, into in _bounded_ordered(decode_unit, jobs, 1 if stateful else threads):
            for name in list(decoded):
                arr = decoded.pop(name)
                if wanted is None or name in wanted:
                    if name in into:
                        arr = self._fill(name, into.pop(name), arr)
                    elif name in aliases:  # (out= gives tied weights one array: equal values)
                        arr = self._fill_alias(name, aliases[name], out, arr)
                    yield name, arr
                for tie in self._ties_of.get(name, ()):  # (the model's tied tensors, spec 6.2.1)
                    if wanted is None or tie.name in wanted:
                        yield tie.name, self._tied_array(tie.name, arr, target, aliases, out)
            del decoded

    def _tied_array(self, name: str, arr: np.ndarray, target, aliases: dict, out) -> np.ndarray:
        """Tied tensor ``name``'s array (spec 6.2.1), from its coded tensor's ``arr``: the caller's out= array filled
        with it, or ``arr`` itself (one array for both, as tied weights are)."""
        if name in aliases:
            return self._fill_alias(name, aliases[name], out, arr)
        buffer = target(self.info(name)) if target is not None else None
        if buffer is None:
            return arr
        self._check_out(name, buffer)
        return self._fill(name, buffer, arr)

    def decode_tensor(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one tensor, touching only the unit that carries it (random access, spec 7.5, 11.4).

        A tensor of a BLOCK NDU is decoded with the other tensors of its
        block, which share its payload; only the one asked for is returned.

        With ``out``, the tensor is written into the caller's array (pinned
        memory, a model's parameter, a memory-mapped file), which is checked
        before anything is decoded.  It must be a writable, C-contiguous numpy
        array of the tensor's signalled shape (or the original shape the
        stream records, e.g. ``()`` for a 0-d tensor).  Its dtype must be the
        one the tensor decodes to or the original one the stream records
        (e.g. int64); a float tensor also decodes into float16, float32,
        float64 or ``ml_dtypes`` bfloat16 arrays (rounded to nearest), and a
        tensor recorded as bfloat16, float8_e4m3fn or float8_e5m2 into
        ``uint16`` (bfloat16) or ``uint8`` (float8) arrays, which receive the
        bit patterns (:func:`nnc.narrow_floats.from_float32`), or into an
        ``ml_dtypes`` array of that format.  Values are converted as
        :func:`~nnc.decoder.restore_model_view` converts them.  Where the
        dtypes allow (float32, float16 or float64 arrays for uniform and DQ
        tensors, int32 for INT ones) the tensor is decoded straight into
        ``out``, with no full-size working copy; if decoding fails, the
        contents of ``out`` are unspecified.

        Parameters
        ----------
        name : str
            The tensor's name.
        out : ``numpy.ndarray`` or None
            The array to decode into; None for a new one.

        Returns
        -------
        ``numpy.ndarray``
            The tensor, with its signalled shape and dtype; ``out`` itself when given.

        Raises
        ------
        KeyError
            If the stream has no tensor of that name.
        nnc.errors.OutputBufferError
            If ``out`` has another shape, a dtype the tensor does not decode
            to, or is read-only, not C-contiguous or not a numpy array.
        nnc.errors.DecodeError
            If the unit's payload is invalid, or an integer or bool ``out``
            cannot hold the tensor's values exactly (spec 6.2.1).

        Examples
        --------
        >>> import nnc, numpy as np
        >>> dec = nnc.Decoder(nnc.encode({"w": [[1.0, 2.0]] * 3, "b": [0.5]}, qp=-20, nonweight_qp=None))
        >>> dec.decode_tensor("w").tolist()
        [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
        >>> buffer = np.zeros((3, 2), np.float32)
        >>> dec.decode_tensor("w", out=buffer) is buffer, buffer[0].tolist()
        (True, [1.0, 2.0])
        >>> dec.decode_tensor("w", out=np.zeros((3, 2), np.int32))
        Traceback (most recent call last):
            ...
        nnc.errors.OutputBufferError: out= for tensor 'w' has dtype int32; it decodes to float64 (or float16, ...)
        """
        if name not in self._index and name not in self.tied:  # api-check
            raise KeyError(f"no tensor named {name!r} in the stream")
        if out is not None:
            self._check_out(name, out)
        if name in self.tied:
            arr = self.decode_tensor(self.tied[name])
            return arr if out is None else self._fill(name, out, arr)
        i, _ = self._index[name]
        unit, params = self._ndus[i]
        arr = self._decode_ndu(unit, params, self._ndu_tensors[i], into=None if out is None else {name: out})[name]
        return arr if out is None else self._fill(name, out, arr)

    # -- caller buffers (out=) --------------------------------------------------------
    def _out_dtypes(self, info: TensorInfo) -> list:
        """Dtypes an out= array of a tensor may have: the decoded one, the original one (bf16, float8: its bits)."""
        allowed = [info.dtype]
        if np.dtype(info.dtype).kind == "f":
            allowed += [d for d in ("float16", "float32", "float64") if d != info.dtype]
        original = recorded_dtype(self.metadata, info.name, info.dtype)
        narrow = narrow_floats.NARROW_FLOATS.get(original) if original is not None else None
        if narrow is not None:
            allowed += [narrow.name, narrow.storage.name]
        elif original is not None:
            allowed.append(original)
        if np.dtype(info.dtype).kind == "f" and "bfloat16" not in allowed:
            allowed.append("bfloat16")  # an ml_dtypes array
        return list(dict.fromkeys(allowed))

    def _out_shapes(self, info: TensorInfo) -> list:
        shapes = [tuple(info.shape)]
        recorded = recorded_shape(self.metadata, info.name, info.size)
        if recorded is not None:
            shapes.append(recorded)
        return shapes

    def _shared_outs(self, out: Mapping, wanted) -> dict:
        """{name: the name decoded first into the same array} for out= arrays given for several tensors (tied
        weights); an array that overlaps another only in part is refused (OutputBufferError)."""
        from .errors import OutputBufferError

        if len(out) < 2:
            return {}
        order = {info.name: (i, j, 0) for i, infos in enumerate(self._ndu_tensors) for j, info in enumerate(infos)}
        for k, (name, source) in enumerate(self.tied.items()):  # (decoded right after their coded tensor)
            order[name] = (*order[source][:2], 1 + k)
        regions = sorted(
            (a.__array_interface__["data"][0], a.nbytes, order[name], name)
            for name, a in out.items()
            if isinstance(a, np.ndarray) and a.nbytes and (wanted is None or name in wanted)
        )
        aliases, owner, end, region = {}, None, 0, None
        for start, size, _, name in regions:
            if owner is not None and start < end:
                if (start, size) != region:
                    raise OutputBufferError(f"out= arrays for tensors {owner!r} and {name!r} overlap")
                aliases[name] = owner
                continue
            owner, end, region = name, start + size, (start, size)
        return aliases

    def _fill_alias(self, name: str, owner: str, out: Mapping, arr: np.ndarray) -> np.ndarray:
        """The array out= gives tensors ``name`` and ``owner`` (decoded already), if ``name`` decodes to its values."""
        from .errors import OutputBufferError

        shared = out[name]
        self._check_out(name, shared)
        if shared.dtype != out[owner].dtype or not np.array_equal(
            shared, np.asarray(arr, dtype=shared.dtype), equal_nan=shared.dtype.kind in "fc"
        ):
            raise OutputBufferError(
                f"out= gives tensors {owner!r} and {name!r} one array, and they decode to different values"
            )
        return shared

    def _check_out(self, name: str, out) -> None:
        """Refuse an out= array that cannot hold the tensor, before decoding."""
        from .errors import OutputBufferError

        info = self.info(name) if name in self._index or name in self.tied else None
        if info is None:  # api-check
            raise KeyError(f"no tensor named {name!r} in the stream")
        if not isinstance(out, np.ndarray):  # api-check
            raise OutputBufferError(f"out= for tensor {name!r} must be a numpy array, not {type(out).__name__}")
        shapes = self._out_shapes(info)
        if out.shape not in shapes:  # api-check
            raise OutputBufferError(f"out= for tensor {name!r} has shape {out.shape}, the tensor's is {shapes[0]}")
        allowed = self._out_dtypes(info)
        if out.dtype.name not in allowed or not out.dtype.isnative and out.dtype.itemsize > 1:  # api-check
            also = f" (or {', '.join(allowed[1:])})" if len(allowed) > 1 else ""
            raise OutputBufferError(f"out= for tensor {name!r} has dtype {out.dtype}; it decodes to {info.dtype}{also}")
        if not out.flags.writeable:  # api-check
            raise OutputBufferError(f"out= for tensor {name!r} is read-only")
        if not out.flags.c_contiguous:  # api-check
            raise OutputBufferError(f"out= for tensor {name!r} is not C-contiguous")

    def _fill(self, name: str, out: np.ndarray, arr: np.ndarray) -> np.ndarray:
        """Copy a decoded tensor into the caller's array, converting its dtype in slices.

        A tensor decoded straight into ``out`` (``arr is out``, see :func:`_direct_target`) is not copied.
        An integer or bool ``out`` receives the values only if it holds them exactly (:func:`exact_integers`).
        """
        if arr is out:
            return out
        self._check_out(name, out)
        src, dst = arr.reshape(-1), out.reshape(-1)
        narrow = self._bit_pattern_format(name, out, arr)
        if narrow is not None:
            dst = dst.view(narrow.storage.newbyteorder("="))
        checked = narrow is None and out.dtype.kind in "biu" and not np.can_cast(arr.dtype, out.dtype, "safe")
        narrowing = narrow is None and out.dtype.kind == "f" and out.dtype.itemsize < arr.dtype.itemsize
        step = 1 << 20
        for i in range(0, src.size, step):  # values out cannot hold are refused before it is touched
            if checked:
                exact_integers(name, src[i : i + step], out.dtype)
            elif narrowing:
                _check_narrowing(name, src[i : i + step], out.dtype)
        for i in range(0, src.size, step):
            part = src[i : i + step]
            if narrow is not None:
                dst[i : i + step] = narrow_floats.from_float32(narrow.name, part)
            elif checked:
                dst[i : i + step] = exact_integers(name, part, out.dtype)
            else:
                with np.errstate(over="ignore"):
                    np.copyto(dst[i : i + step], part, casting="unsafe")
        return out

    def _bit_pattern_format(self, name: str, out: np.ndarray, arr: np.ndarray):
        """The format (:mod:`nnc.narrow_floats`) whose bit patterns ``out`` receives for a float tensor: an ml_dtypes
        array of one, or the storage integers of the one the stream records (spec 6.2.1; bf16: uint16; float8:
        uint8); else None."""
        if arr.dtype.kind != "f":
            return None
        if narrow_floats.is_narrow(out.dtype.name):
            return narrow_floats.NARROW_FLOATS[out.dtype.name]
        original = recorded_dtype(self.metadata, name, arr.dtype)
        narrow = narrow_floats.NARROW_FLOATS.get(original) if original is not None else None
        return narrow if narrow is not None and out.dtype == narrow.storage else None

    def info(self, name: str) -> TensorInfo:
        """Metadata of one tensor, without decoding it.

        Parameters
        ----------
        name : str
            The tensor's name.

        Returns
        -------
        nnc.decoder.TensorInfo
            The decoder's record of the tensor (see :meth:`~nnc.decoder.Decoder.tensors`).

        Raises
        ------
        KeyError
            If the stream has no tensor of that name.

        Examples
        --------
        >>> import nnc
        >>> info = nnc.Decoder(nnc.encode({"w": [[1.0, 2.0]] * 3}, qp=-20, dq=True)).info("w")
        >>> info.shape, info.dq, info.unit_index
        ((3, 2), True, 0)
        """
        if name in self.tied:
            return next(i for i in self._ties_of[self.tied[name]] if i.name == name)
        if name not in self._index:  # api-check
            raise KeyError(f"no tensor named {name!r} in the stream")
        return self._index[name][1]

    # -- NDU payload (spec 7.5, 8) ---------------------------------------------
    def _decode_ndu(
        self, unit: C.Unit, params: _Params, infos: list[TensorInfo], threads: int = 1, into: dict | None = None
    ) -> dict:
        """Decode one NDU's payload (spec 7.5); errors get offsets relative to the whole stream (spec 15.1).

        ``into``: {name: checked out= array}; a tensor that can be is decoded straight into it.
        """
        staged: dict[str, np.ndarray] = {}
        try:
            out = self._decode_ndu_payload(unit, params, infos, threads, into, staged)
        except NNCError as exc:
            _check_not_cut(self.data)
            if not isinstance(exc, DecodeError):
                raise  # another input's (a state file's array that cannot be read): no offset in the stream
            # errors inside a payload carry payload-relative offsets
            raise self._without_history(unit, infos, exc).at(unit.payload_offset) from exc
        except MemoryError:  # within the limits, beyond this machine: still the stream's demand, said as one
            need = sum(info.size * (np.dtype(info.dtype).itemsize + 4) for info in infos)  # values and levels
            raise LimitError(
                f"tensor {infos[0].name!r} needs about {need} bytes (its values and levels), more than this machine "
                f"could allocate; Limits.max_total_bytes ({self.limits.max_total_bytes}) refuses such streams "
                "before decoding",
                clause="15.2",
                offset=unit.offset,
            ) from None
        _check_not_cut(self.data)  # a payload read where its file was cut decoded zeros
        self._stage(unit, staged)
        self._update_ties(infos)
        return out

    def _update_ties(self, infos: list[TensorInfo]) -> None:
        """A tied tensor's record takes its coded tensor's fields decoding filled in (spec 6.2.1)."""
        for info in infos:
            for tie in self._ties_of.get(info.name, ()):
                tie.qp, tie.step, tie.row_skip = info.qp, info.step, info.row_skip

    def _without_history(self, unit: C.Unit, infos: list[TensorInfo], exc: NNCError) -> NNCError:
        """``exc``, saying so when the NDU updates a parent whose HDSP history this decoder's state lacks (spec 10.5,
        14.1): an update coded with that history decodes to nonsense without it."""
        lacking = [i.name for i in infos if i.name not in self._parent_history]
        if not _get(unit.header, "parent_node_id_present_flag", 0) or not lacking or not isinstance(exc, DecodeError):
            return exc
        return DecodeError(
            f"{exc.message} (tensor {lacking[0]!r} updates a parent, but no history of it was decoded before: an "
            "update coded with history-dependent significance needs the streams before it decoded with the same "
            "DecoderState, nnc decode --state FILE)",
            clause=exc.clause,
            offset=exc.offset,
        )

    def _stage(self, unit: C.Unit, levels: dict) -> None:
        """Keep an NDU's levels for the state; once every NDU of the stream has decoded, enter them all (spec 14.1,
        14.2): a stream that fails, or is decoded only in part, leaves the state as it was."""
        with self._state_lock:
            if self._entered:
                return  # a unit decoded again gives the same levels
            self._staged.update(levels)
            self._decoded_ndus.add(unit.offset)
            if len(self._decoded_ndus) == len(self._ndus):
                self._enter_stream()
                self._entered = True

    def _enter_stream(self) -> None:
        """Enter the decoded stream's levels, node depths and payload digests into the state (spec 14.1, 14.2),
        unless the stream updates parents (spec 14.4) and another stream entered the state since this decoder read
        it (its parents were then not these)."""
        reads_parents = any(_get(u.header, "parent_node_id_present_flag", 0) for u, _ in self._ndus)
        kept = self.keep_state or any(params.parent_signalling for _, params in self._ndus)
        digests = {  # read again from the stream (its pages may have been released): checked before they are kept
            ndu.offset: _payload_digests(ndu.payload)
            for ndu, _ in self._ndus
            if kept and ndu.header.nnr_compressed_data_unit_payload_type != C.NNR_PT_RAW_FLOAT
        }  # (a decoder's own state, of a stream that names no parents, is never asked for them: not read again)
        _check_not_cut(self.data)
        with _STATES_LOCK:
            if reads_parents and getattr(self.state, "generation", 0) != self._parent_generation:
                raise DecodeError(
                    "the DecoderState changed while this stream was decoded (another stream was decoded with it "
                    "meanwhile): decode a base model and its updates one after another, each with a decoder made "
                    "after the one before has decoded",
                    clause="14.2",
                )
            for name in list(self._staged):  # (levels kept on disk enter as they are, not written again)
                self.state._enter(name, self._staged.entry(name), self._staged[name])
            self._staged = ArrayStore()
            for i, (ndu, _) in enumerate(self._ndus if kept else ()):  # node depths, payload digests (14.1, 14.4)
                self._enter_ids(ndu, self._ndu_tensors[i], digests.get(ndu.offset))
            self.state.generation = getattr(self.state, "generation", 0) + 1

    def _enter_ids(self, ndu: C.Unit, infos: list[TensorInfo], digests: "tuple[bytes, bytes] | None") -> None:
        """The node depth and payload digests of a decoded NDU's tensors (spec 14.1): a CABAC-coded NDU sets
        them; a RAW_FLOAT NDU changes no levels, and its depth is kept apart (``raw_depths``, spec 14.4)."""
        depth = int(_get(ndu.header, "put_node_depth", 0)) if _get(ndu.header, "node_id_present_flag", 0) else None
        if ndu.header.nnr_compressed_data_unit_payload_type == C.NNR_PT_RAW_FLOAT:
            for info in infos:
                if depth is None:
                    self.state.raw_depths.pop(info.name, None)
                else:
                    self.state.raw_depths[info.name] = depth
            return
        assert digests is not None  # (a CABAC-coded NDU's, taken before the state is entered)
        for info in infos:
            self.state.raw_depths.pop(info.name, None)
            self.state.payload_digests[info.name] = digests
            if depth is None:
                self.state.depths.pop(info.name, None)
            else:
                self.state.depths[info.name] = depth

    def _decode_ndu_payload(
        self,
        unit: C.Unit,
        params: _Params,
        infos: list[TensorInfo],
        threads: int = 1,
        into: dict | None = None,
        staged: dict | None = None,
        qps_only: bool = False,
    ) -> dict:
        """The decoding loop of one NDU payload: {name: reconstructed tensor} for its tensors, in coding order.

        With ``qps_only`` it stops after the last tensor's qp offset (the tensors before it decoded, their
        values dropped): the qps and steps are filled in, nothing is returned.

        A RAW_FLOAT payload is the tensor's float32 values (spec 7.5).  A CABAC
        payload (spec 8.1) holds, per tensor: the qp offset of a quantised
        tensor (spec 8.2); then the row-skip and HDSP flags and the context
        initialisation (spec 8.3, 8.4, inside the engine); then the levels
        (spec 10), in the tensor's scan (spec 11), from the entry points of
        each block row when ``entry_points="use"`` (spec 11.4, 9.7).  An update
        with temporal context adaptation or HDSP reads the levels and history
        of its parent from the decoder state as it was before the stream
        (spec 10.5, 14); the new levels go to ``staged`` (:meth:`_stage`).  The payload ends with the terminate bin (spec 8.5).
        With ``threads`` > 1 the block rows of a block-scanned tensor are decoded in
        threads from their entry points, each range's end checked against the
        next one's start (else sequentially): the result is that of sequential
        decoding.  The levels are reconstructed to values by :meth:`_reconstruct` (spec 12),
        or straight into a caller's array of ``into`` where :func:`_direct_target` allows.
        Offsets of errors are relative to the payload.
        """
        h = unit.header
        payload = unit.payload
        first = infos[0]
        if first.payload_type == "RAW_FLOAT" and qps_only:
            return {}  # (no qp)
        if first.payload_type == "RAW_FLOAT":
            # spec 7.5: float32, little-endian, C order, exactly the unit's payload
            need = first.size * 4
            if len(payload) != need:
                raise DecodeError(
                    f"RAW_FLOAT payload has {len(payload)} bytes, the dimensions need {need}",
                    clause="7.5",
                )
            direct = _direct_target(first, into)
            if direct is not None:
                values = np.frombuffer(payload, dtype="<f4")
                _check_narrowing(first.name, values, direct.dtype)  # (before the caller's array is touched)
                with np.errstate(over="ignore"):
                    np.copyto(direct.reshape(-1), values, casting="same_kind")
                return {first.name: direct}
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
            height, width = matrix_view(info.shape)
            if info.payload_type != "INT":
                # spec 8.2: qp offset, (6 + qp_density)-bit two's complement bypass value
                info.qp = params.qp + dec.read_qp_offset(6 + params.qp_density)
                info.step = float(step_size(info.qp, params.qp_density))
            if qps_only and info is infos[-1]:
                return {}
            cb = info.codebook
            cb_size = len(cb) if (cb is not None and edition == 2) else 0
            cb_zero = (len(cb) >> 1) + int(h.codebook_center_offset) if cb is not None else 0
            tca_base = None
            if tca:
                tca_base = self._parent_levels.get(info.name)
                if tca_base is None or tca_base.size != info.size:
                    raise DecodeError(
                        f"tensor {info.name!r} uses temporal context adaptation but no parent levels of "
                        f"its size were decoded before; decode the parent stream first with the same "
                        f"DecoderState (nnc decode --state FILE)",
                        clause="14",
                    )
            kwargs: dict[str, Any] = dict(
                n_gtx=info.n_gtx,
                dq=info.dq,
                scan_order=info.scan_order,
                codebook_size=cb_size,
                codebook_zero=cb_zero,
                parent_present=parent_present,
                tca_base=tca_base,
                hdsp_history=self._parent_history.get(info.name) if parent_present else None,
            )
            if kwargs["hdsp_history"] is not None and kwargs["hdsp_history"].size != info.size:
                kwargs["hdsp_history"] = None
            mode = self.entry_points_mode
            # (entry points of a tensor whose effective scan order is 0 are ignored in every mode, spec 11.4)
            in_blocks = bool(info.entry_points) and effective_scan_order(height, width, info.scan_order) > 0
            use_eps = mode == "use" and in_blocks
            if use_eps and not info.dq and any(state for _, state, _ in info.entry_points):
                # without DQ every block row starts in state 0 (spec 11.4), as "verify" finds too
                raise DecodeError(
                    f"tensor {info.name!r} has no DQ, but an entry point gives DQ state "
                    f"{next(s for _, s, _ in info.entry_points if s)}",
                    clause="11.4",
                    offset=info.unit_offset,
                )
            direct = _direct_target(info, into)
            kept = self.keep_state or params.parent_signalling  # the state keeps the levels
            if direct is not None and direct.dtype.itemsize == 4 and not kept:
                kwargs["out"] = direct.reshape(-1).view(np.int32)  # the levels, then the values, in place
                kwargs["out"].fill(0)  # rows the stream skips stay 0 (spec 11.5)
            elif direct is not None and info.payload_type == "INT":
                direct = None
            if mode == "ignore" and threads > 1 and in_blocks:
                kwargs.pop("out", None)
                # block rows in threads from the entry points, checked exactly (spec 11.4)
                levels, dec = decode_tensor_threads(
                    dec,
                    height,
                    width,
                    entry_points=info.entry_points,
                    threads=threads,
                    min_elements=self.row_thread_min_elements,
                    **kwargs,
                )
            else:
                levels = dec.decode_tensor(
                    height,
                    width,
                    entry_points=info.entry_points if use_eps else None,
                    record_entry_points=(mode == "verify"),
                    **kwargs,
                )
            if mode == "verify" and info.entry_points and effective_scan_order(height, width, 1):
                if list(dec.last_entry_points) != list(info.entry_points):
                    raise DecodeError(
                        f"transmitted entry points of {info.name!r} differ from the decoded positions",
                        clause="11.4",
                    )
            info.row_skip = bool(dec.last_row_skip)
            if (self.keep_state or params.parent_signalling) and staged is not None:
                # (INT levels are the output tensor itself: the state keeps its own copy)
                staged[info.name] = levels.copy() if info.payload_type == "INT" else levels
            if direct is None:
                out[info.name] = self._reconstruct(info, levels, cb_zero, threads)
            elif info.payload_type == "INT":
                flat = direct.reshape(-1)
                if not np.shares_memory(levels, flat):
                    np.copyto(flat, levels)
                out[info.name] = direct
            else:  # spec 12.2, 12.3 as reconstruct_uniform: float32(n) * float32(step), in float32
                flat, step, chunk = direct.reshape(-1), np.float32(info.step), 1 << 16
                if flat.dtype.itemsize < 4 and levels.size:  # float16: the largest |n| * step, before writing
                    peak = max(int(levels.max()), -int(levels.min()))
                    with np.errstate(over="ignore"):
                        _check_narrowing(info.name, np.float32(peak) * step, flat.dtype)
                with np.errstate(over="ignore"):  # in chunks: numpy copies an aliased operand (levels in place)
                    for i in range(0, flat.size, chunk):
                        np.multiply(levels[i : i + chunk], step, out=flat[i : i + chunk], dtype=np.float32)
                out[info.name] = direct
        dec.finish()
        return out

    def _reconstruct(self, info: TensorInfo, levels: np.ndarray, cb_zero: int, threads: int = 1) -> np.ndarray:
        """Tensor values from decoded integers (spec 12); a large uniform tensor in ``threads``."""
        if info.payload_type == "INT":
            values = levels
        elif info.codebook is not None and info.decompressed_data_format is not None:
            step = np.float32(info.step)
            values = _codebook_in_format(levels, info.codebook, cb_zero, step, info.decompressed_data_format)
            return values.reshape(info.shape)
        elif info.codebook is not None:
            values = reconstruct_codebook(levels, info.codebook, cb_zero, np.float32(info.step))
        else:
            values = reconstruct_uniform(levels, np.float32(info.step), threads)
        if info.decompressed_data_format is not None:
            values = convert_to_format(levels if info.payload_type == "INT" else values, info.decompressed_data_format)
        return values.reshape(info.shape)


def _codebook_in_format(levels: np.ndarray, codebook: list, cb_zero: int, step: np.float32, fmt: int) -> np.ndarray:
    """A codebook tensor's values (spec 12.4) converted to its signalled format (12.6), without holding the float64
    values of 12.4 for the whole tensor (eight bytes a weight for a float32 output): a float format converts each
    codebook value once (the conversion is per value) and the indices pick them; an integer format, which refuses
    a value out of its range only where one is used, converts slice by slice."""
    flat = levels.reshape(-1)
    out = np.empty(flat.size, format_dtype(fmt))
    if out.dtype.kind != "f":
        for i in range(0, flat.size, 1 << 14):
            out[i : i + (1 << 14)] = convert_to_format(
                reconstruct_codebook(flat[i : i + (1 << 14)], codebook, cb_zero, step), fmt
            )
        return out
    check_codebook_indices(flat, len(codebook), cb_zero)
    values = convert_to_format(reconstruct_codebook(np.arange(len(codebook)) - cb_zero, codebook, cb_zero, step), fmt)
    # index k picks codebook entry k + CbZeroOffset: rolled so, a negative k counts from the end (in range: checked)
    rolled = np.roll(values, -cb_zero)
    for i in range(0, flat.size, 1 << 14):  # (numpy's indices are 8 bytes: small temporaries)
        np.take(rolled, flat[i : i + (1 << 14)], out=out[i : i + (1 << 14)], mode="wrap")
    return out


def _check_narrowing(name: str, values, dtype) -> None:
    """Refuse, before writing, a caller's narrower float array (``dtype``: float16) for finite ``values`` beyond
    its range (see :func:`_check_narrowed`)."""
    values = np.asarray(values).reshape(-1)
    if np.dtype(dtype).itemsize >= values.dtype.itemsize:
        return
    for i in range(0, values.size, 1 << 16):  # (small temporaries)
        part = values[i : i + (1 << 16)]
        with np.errstate(over="ignore"):
            _check_narrowed(name, part, part.astype(dtype))


def _check_narrowed(name: str, values: np.ndarray, written: np.ndarray, recorded: bool = False) -> None:
    """Refuse a narrower float array (float16) whose range finite ``values`` left (they became inf; the decoded
    values are those of spec 12.2-12.6, which a caller's array or a recorded dtype holds, or refuses, spec 6.2.1):
    a caller's array (OutputBufferError), or with ``recorded`` the tensor's recorded dtype (DecodeError)."""
    if written.dtype.itemsize >= values.dtype.itemsize:
        return
    values, written = values.reshape(-1), written.reshape(-1)
    for i in range(0, values.size, 1 << 16):  # (small temporaries)
        part, got = values[i : i + (1 << 16)], written[i : i + (1 << 16)]
        if np.isinf(got).any() and np.any(np.isfinite(part) & np.isinf(got)):
            from .errors import OutputBufferError

            peak = float(np.max(np.abs(part[np.isfinite(part)])))
            if recorded:
                raise DecodeError(
                    f"tensor {name!r} is recorded as {written.dtype}, whose range its decoded values leave (up to "
                    f"{peak:.6g})",
                    clause="6.2.1",
                )
            raise OutputBufferError(
                f"out= for tensor {name!r} has dtype {written.dtype}, whose range its values leave (up to "
                f"{peak:.6g}): give an array of {values.dtype}"
            )


def _direct_target(info: TensorInfo, into: dict | None) -> np.ndarray | None:
    """The caller's array (out=) that ``info``'s tensor decodes straight into, or None for a copy.

    Straight in: uniform (or RAW_FLOAT) float tensors into float16/32/64 arrays whose values equal
    those of reconstructing in float32 and converting (spec 12.2, 12.6; so not through a float16
    output format into a wider array; a float16 array is checked for values beyond its range),
    and INT tensors without an output format into int32 arrays.
    The rest (codebooks, bfloat16, integer formats) is decoded, then converted by ``Decoder._fill``.
    """
    out = into.get(info.name) if into else None
    if out is None or info.codebook is not None:
        return None
    fmt = info.decompressed_data_format
    if info.payload_type == "INT":
        return out if out.dtype == np.int32 and fmt in (None, 0) else None
    if out.dtype.name not in ("float16", "float32", "float64"):
        return None
    return out if fmt in (None, 1, 9) or DECOMPRESSED_DATA_FORMATS.get(fmt) == out.dtype else None


def _bounded_ordered(fn, jobs: list, threads: int):
    """``fn(*job)`` for every job, yielded in job order, with at most ``threads`` jobs in flight.

    Unlike :func:`nnc._threads.ordered_results`, the pool never runs more than
    ``threads`` results ahead of the consumer, so memory stays bounded.
    """
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(*job)
        return
    from collections import deque
    from concurrent.futures import Future

    from ._threads import worker_pool

    pending: deque[Future] = deque()
    with worker_pool(min(threads, len(jobs))) as pool:
        try:
            for job in jobs:
                pending.append(pool.submit(fn, *job))
                if len(pending) >= threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _topology_metadata(unit: C.Unit, max_bytes: int | None = None) -> dict:
    """nnc's metadata in a format-0 topology unit, if any (spec 6.2.1): the object under the key ``"nnc"`` of a
    ``topology_data`` that is a JSON object; {} otherwise. LimitError past ``max_bytes`` (spec 15.2 limit 4)."""
    import json

    h = unit.header
    data = h.get("data")
    if (h.get("topology_storage_format"), h.get("topology_compression_format")) != (0, 0) or not isinstance(data, str):
        return {}
    if not data.lstrip(" \t\n\r").startswith("{"):
        return {}
    if max_bytes is not None and 4 * len(data) > max_bytes:  # (a character takes 1 to 4 bytes)
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise LimitError(
                f"a topology unit's metadata of {size:,} bytes exceeds {max_bytes:,} (Limits.max_metadata_bytes)",
                clause="15.2",
                offset=unit.offset,
            )
    try:
        meta = json.loads(data).get("nnc", {})
    except (ValueError, AttributeError, RecursionError):  # hostile nesting: not nnc metadata
        return {}
    if not isinstance(meta, dict):
        return {}
    if meta.get("version", 1) not in (1, 2) or isinstance(meta.get("version"), bool):
        raise UnsupportedError(
            f"nnc metadata version {str(meta.get('version'))[:20]} (this decoder reads versions 1 and 2; a later nnc "
            "wrote the stream)",
            clause="6.2.1",
            offset=unit.offset,
        )
    return meta


def recorded_shape(metadata: dict, name: str, size: int) -> tuple | None:
    """The original shape nnc's metadata records for tensor ``name`` of ``size`` elements, if it applies (spec 6.2.1):
    a list of at most 32 integers (not booleans), each from 0 to ``size``, whose product is ``size``; else None.

    Parameters
    ----------
    metadata : dict
        :attr:`Decoder.metadata` of the stream.
    name : str
        The tensor's name.
    size : int
        Its number of elements.

    Returns
    -------
    tuple or None
        The shape to restore, or None.

    Examples
    --------
    >>> from nnc.decoder import recorded_shape
    >>> meta = {"shapes": {"n": [], "w": [-1, -4], "v": [2, 3]}}
    >>> recorded_shape(meta, "n", 1), recorded_shape(meta, "w", 4), recorded_shape(meta, "v", 6)
    ((), None, (2, 3))
    """
    recorded = metadata.get("shapes")
    shape = recorded.get(name) if isinstance(recorded, dict) else None
    if (
        isinstance(shape, list)
        and len(shape) <= 32
        and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 0 <= d <= size for d in shape)
        and math.prod(int(d) for d in shape) == size
    ):
        return tuple(int(d) for d in shape)
    return None


def restorable_dtype(want) -> str | None:
    """``want`` as a dtype a tensor may be restored to (spec 6.2.1): bool, a signed or unsigned integer, float16/32/64
    in native byte order (their numpy names), or a format of :mod:`nnc.narrow_floats`; else None.

    Parameters
    ----------
    want : str
        A dtype name as the metadata records it.

    Returns
    -------
    str or None
        The name of the dtype to restore, or None when it may not be restored to.

    Examples
    --------
    >>> from nnc.decoder import restorable_dtype
    >>> restorable_dtype("int64"), restorable_dtype("float8_e4m3fn"), restorable_dtype(">f4"), restorable_dtype("U8")
    ('int64', 'float8_e4m3fn', None, None)
    """
    if not isinstance(want, str):
        return None
    if narrow_floats.is_narrow(want):
        return want
    try:
        dtype = np.dtype(want)
    except Exception:  # noqa: BLE001 - numpy's parser of dtype strings fails in many ways (",": SyntaxError)
        return None
    if dtype.kind not in "biuf" or not dtype.isnative or dtype.itemsize > 8:
        return None
    return dtype.name


def recorded_dtype(metadata: dict, name: str, decoded_dtype) -> str | None:
    """The original dtype nnc's metadata records for tensor ``name`` (decoded as ``decoded_dtype``), if it applies
    (spec 6.2.1): a :func:`restorable_dtype`; a float one only for a float tensor; an integer or bool one not in a
    stream of differences (whose integers may leave the dtype's range: :func:`apply_update` adds them in the
    model's dtype).  Its name, or None.

    Parameters
    ----------
    metadata : dict
        :attr:`Decoder.metadata` of the stream.
    name : str
        The tensor's name.
    decoded_dtype : ``numpy.dtype`` or str
        The dtype the tensor decodes to.

    Returns
    -------
    str or None
        The dtype to restore, or None.

    Examples
    --------
    >>> from nnc.decoder import recorded_dtype
    >>> meta = {"dtypes": {"n": "int64", "w": "bfloat16"}}
    >>> recorded_dtype(meta, "n", "int32"), recorded_dtype(meta, "w", "float32"), recorded_dtype(meta, "w", "int32")
    ('int64', 'bfloat16', None)
    >>> recorded_dtype(dict(meta, differences=True), "n", "int32") is None
    True
    """
    recorded = metadata.get("dtypes")
    want = restorable_dtype(recorded.get(name) if isinstance(recorded, dict) else None)
    if want is None:
        return None
    decoded_float = np.dtype(decoded_dtype).kind == "f"
    if narrow_floats.is_narrow(want) or np.dtype(want).kind == "f":
        return want if decoded_float else None
    return None if _is_difference(metadata, name) else want


def exact_integers(name: str, values: np.ndarray, dtype) -> np.ndarray:
    """``values`` of tensor ``name`` (or a slice of them) converted to its recorded bool or integer ``dtype`` without
    changing one (spec 6.2.1): floats (an integer tensor coded lossily) are rounded to the nearest integer, ties to
    even; a value the dtype cannot hold (NaN, inf, out of its range; bool: other than 0 and 1) raises DecodeError.

    Parameters
    ----------
    name : str
        The tensor's name (for the error).
    values : ``numpy.ndarray``
        Decoded values, or a slice of them.
    dtype : ``numpy.dtype`` or str
        The recorded bool or integer dtype.

    Returns
    -------
    ``numpy.ndarray``
        The values in ``dtype``.

    Raises
    ------
    nnc.errors.DecodeError
        If a value does not fit ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.decoder import exact_integers
    >>> exact_integers("n", np.array([2.6, -1.0]), "int8").tolist()
    [3, -1]
    >>> exact_integers("n", np.array([300]), "uint8")
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: tensor 'n' holds values from 300 to 300, which its recorded dtype uint8 cannot hold (0 to 255) [spec 6.2.1]
    """
    dtype = np.dtype(dtype)
    if values.dtype.kind == "f":
        values = np.rint(values)
    if values.size:
        low, high = values.min().item(), values.max().item()  # Python numbers: compared exactly
        lowest, highest = (0, 1) if dtype.kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
        if not (math.isfinite(low) and math.isfinite(high) and lowest <= low and high <= highest):
            raise DecodeError(
                f"tensor {name!r} holds values from {low} to {high}, which its recorded dtype {dtype.name} "
                f"cannot hold ({lowest} to {highest})",
                clause="6.2.1",
            )
    return values.astype(dtype)


def restore_model_view(tensors: "OrderedDict[str, np.ndarray]", metadata: dict) -> tuple:
    """Tensors as the original model had them: order, 0-d shapes and dtypes from nnc's metadata (spec 6.2.1).

    The encoder records in a topology unit the model's order of the tensors
    (coding order puts a bias before its weight in a BLOCK unit), the shapes
    that NNC cannot carry (0-d tensors are coded as 1-d) and the dtypes it does
    not restore by itself; :attr:`~nnc.decoder.Decoder.metadata` holds them.
    Entries that do not apply are ignored (:func:`recorded_shape`,
    :func:`recorded_dtype`); an integer or bool dtype must hold every value
    (:func:`exact_integers`).

    Parameters
    ----------
    tensors : ``collections.OrderedDict``
        {name: ``numpy.ndarray``} as decoded.
    metadata : dict
        :attr:`~nnc.decoder.Decoder.metadata` of the stream (``{}`` restores nothing).

    Returns
    -------
    tuple
        ``(tensors, dtypes)``: a new {name: ``numpy.ndarray``} in the model's
        order (the announced names first, then any others as given), and
        {name: dtype name}.  bfloat16 and float8 have no numpy dtype: such
        tensors are float32 arrays of the values their format holds (rounded,
        :func:`nnc.narrow_floats.as_stored`) and are named by their format in
        ``dtypes`` (:mod:`nnc.narrow_floats`).

    Raises
    ------
    nnc.errors.DecodeError
        If a tensor's values do not fit the integer or bool dtype the metadata records for it.

    Examples
    --------
    >>> import nnc, numpy as np
    >>> from nnc.decoder import restore_model_view
    >>> dec = nnc.Decoder(nnc.encode({"step": np.int64(7)}))
    >>> decoded = dec.decode()
    >>> decoded["step"].dtype.name, decoded["step"].shape
    ('int32', (1,))
    >>> tensors, dtypes = restore_model_view(decoded, dec.metadata)
    >>> tensors["step"].dtype.name, tensors["step"].shape, dtypes
    ('int64', (), {'step': 'int64'})
    """
    out: OrderedDict[str, np.ndarray]
    if isinstance(tensors, DecodedTensors):
        out = DecodedTensors().take_attributes(tensors)
    else:
        out = OrderedDict()
    names = {}
    for k in model_order(tensors, metadata):
        v = tensors[k]
        shape = recorded_shape(metadata, k, v.size)
        if shape is not None:
            v = v.reshape(shape)
        want = recorded_dtype(metadata, k, v.dtype)
        if want is not None and narrow_floats.is_narrow(want):
            if not _is_difference(metadata, k):  # (apply_update rounds the sum, spec 14.5)
                v = narrow_floats.as_stored(want, v)  # as float32, the values its file holds (as the readers give them)
        elif want is None or v.dtype == want:
            pass
        elif np.dtype(want).kind in "biu":
            restored = np.empty(v.shape, want)
            flat, source = restored.reshape(-1), v.reshape(-1)
            for i in range(0, source.size, 1 << 20):  # in slices: small temporaries
                flat[i : i + (1 << 20)] = exact_integers(k, source[i : i + (1 << 20)], want)
            v = restored
        else:
            with np.errstate(over="ignore"):
                restored = v.astype(want)
            _check_narrowed(k, v, restored, recorded=True)  # (float16: refused rather than inf)
            v = restored
        out[k] = v
        names[k] = want or v.dtype.name
    return out, names


def _announced_count(metadata: dict) -> int | None:
    """The count of tensors nnc's metadata announces (spec 6.2.1), or None when it announces none or names them."""
    n = metadata.get("tensors")
    return n if type(n) is int and n >= 0 else None


def _weights_before_biases(names: list) -> list:
    """``names`` with each ``P.bias`` directly followed by ``P.weight`` put after it (spec 6.2.1)."""
    out = list(names)
    i = 0
    while i + 1 < len(out):
        a, b = out[i], out[i + 1]
        if isinstance(a, str) and a.endswith("bias") and b == a[: -len("bias")] + "weight":
            out[i], out[i + 1] = b, a
            i += 2
        else:
            i += 1
    return out


def model_order(names, metadata: dict) -> list:
    """``names`` in the model's order: those announced in nnc's metadata first, in its order (spec 6.2.1).

    Parameters
    ----------
    names : iterable of str
        Tensor names, e.g. in decoding order.
    metadata : dict
        :attr:`~nnc.decoder.Decoder.metadata` of the stream; its ``"tensors"`` list, when it is
        one, gives the model's order; a count of tensors says that the decoding order is the
        model's but for the bias a BLOCK NDU decodes before its weight.

    Returns
    -------
    list of str
        The announced names present in ``names``, in the announced order, then the others
        in their order in ``names``; with a count, ``names`` with each ``P.bias`` that
        directly precedes ``P.weight`` moved after it.

    Examples
    --------
    >>> model_order(["fc.bias", "fc.weight", "x"], {"tensors": ["fc.weight", "fc.bias"]})
    ['fc.weight', 'fc.bias', 'x']
    >>> model_order(["fc.bias", "fc.weight", "x"], {"tensors": 3})
    ['fc.weight', 'fc.bias', 'x']
    """
    names = list(names)
    announced = metadata.get("tensors")
    if _announced_count(metadata) is not None:
        return _weights_before_biases(names)
    if not isinstance(announced, list):
        return names
    present = set(names)
    first = [n for n in dict.fromkeys(announced) if isinstance(n, str) and n in present]
    placed = set(first)
    return first + [n for n in names if n not in placed]


__all__ = [
    "apply_update",
    "model_digest",
    "check_update_parent",
    "recorded_parent",
    "recorded_replaced",
    "decode",
    "decode_with_info",
    "DecodedTensors",
    "Decoder",
    "DecoderState",
    "Limits",
    "TensorInfo",
    "read_input",
    "map_file",
    "model_order",
    "restore_model_view",
    "recorded_shape",
    "recorded_dtype",
    "restorable_dtype",
    "exact_integers",
    "PAYLOAD_TYPE_NAMES",
    "ELEMENTS_PER_PAYLOAD_BYTE",
    "ELEMENTS_SLACK",
]


def _payload_digests(payload) -> tuple[bytes, bytes]:
    """The SHA-256 and SHA-512 of an NDU's payload, by which a later NDU may name it as its parent (spec 7.4)."""
    return hashlib.sha256(payload).digest(), hashlib.sha512(payload).digest()


def _get(container, name, default=None):
    """A parsed syntax element, or ``default`` when the unit does not carry it (None or absent)."""
    value = container.get(name)
    return default if value is None else value


def decode(
    data: StreamInput,
    *,
    limits: Limits | None = None,
    engine: str | None = None,
    state: DecoderState | None = None,
    entry_points: str = "ignore",
    threads: int = 1,
    out: "Mapping[str, np.ndarray] | None" = None,
) -> "OrderedDict[str, np.ndarray]":
    """Decode an NNC stream into an ordered mapping of tensor name to array.

    ``data`` is bytes, a path or a binary file.  ``state`` carries the
    decoder state across incremental (2nd-edition) streams.  Raises a
    :class:`~nnc.errors.DecodeError` subclass on any invalid input.  The
    same as ``Decoder(data, ...).decode()``; see :class:`~nnc.decoder.Decoder`.

    Parameters
    ----------
    data : bytes, bytearray, memoryview, str, ``os.PathLike`` or ``BinaryIO``
        The stream, a path to it, or a file object opened in binary mode.
    limits : nnc.decoder.Limits or None
        Resource limits (spec 15.2); None for the defaults.
    engine : str or None
        ``"cython"`` or ``"python"``; None for ``$NNC_ENGINE`` or ``"cython"``.
    state : nnc.decoder.DecoderState or None
        State kept across incremental streams (spec 14).
    entry_points : str
        ``"ignore"``, ``"use"`` or ``"verify"`` transmitted entry points
        (see :class:`~nnc.decoder.Decoder`).
    threads : int
        Units decoded at the same time; 0 for one per CPU (see
        :meth:`~nnc.decoder.Decoder.decode`).
    out : ``Mapping`` or None
        {name: ``numpy.ndarray``}: caller arrays to decode these tensors into
        (see :meth:`~nnc.decoder.Decoder.decode_tensor`).

    Returns
    -------
    ``collections.OrderedDict``
        {name: ``numpy.ndarray``}, in stream order, as the stream codes them (spec 7): a 0-d
        tensor with shape (1,), integers as int32, floats in the stream's output format.
        :func:`nnc.decode_model` gives them as the model had them (order, shapes and
        dtypes nnc's metadata records, spec 6.2.1).

    Raises
    ------
    nnc.errors.TruncatedError
        If the stream ends too early.
    nnc.errors.LimitError
        If the stream exceeds ``limits`` (spec 15.2).
    nnc.errors.UnsupportedError
        If the stream uses a tool nnc does not decode.
    nnc.errors.DecodeError
        For any other invalid stream.
    OSError
        If a path cannot be read (``FileNotFoundError`` for a missing file).
    ValueError
        If ``entry_points``, ``engine`` or ``threads`` is not a valid choice.
    TypeError
        If ``data`` is of an unsupported type.

    Examples
    --------
    >>> import nnc
    >>> nnc.decode(nnc.encode({"x": [0.25, -1.0]}, qp=-16, nonweight_qp=None))["x"].tolist()
    [0.25, -1.0]
    >>> stream = nnc.encode({"w": [[0.5, 0.25], [1.0, 0.0]]}, qp=-8)
    >>> nnc.decode(stream[:-2])
    Traceback (most recent call last):
        ...
    nnc.errors.TruncatedError: unit of ... bytes runs past the end of the stream ...
    """
    return Decoder(data, limits=limits, engine=engine, state=state, entry_points=entry_points).decode(
        threads=threads, out=out
    )


def decode_with_info(data: StreamInput, **kwargs) -> tuple["OrderedDict[str, np.ndarray]", list[TensorInfo]]:
    """Decode a stream and return the tensors with their metadata (spec 7.4, 8).

    Parameters
    ----------
    data : bytes, bytearray, memoryview, str, ``os.PathLike`` or ``BinaryIO``
        The stream, a path to it, or a file object opened in binary mode.
    **kwargs
        ``limits``, ``engine``, ``state``, ``entry_points``: as for :class:`~nnc.decoder.Decoder`.

    Returns
    -------
    tuple
        ``(tensors, infos)``: {name: ``numpy.ndarray``} in stream order as from
        :func:`~nnc.decoder.decode`, and the list of :class:`~nnc.decoder.TensorInfo`, with ``qp`` and
        ``step`` filled in.

    Raises
    ------
    nnc.errors.DecodeError
        On any invalid stream (see :func:`~nnc.decoder.decode`).

    Examples
    --------
    >>> import nnc
    >>> tensors, infos = nnc.decode_with_info(nnc.encode({"w": [[0.5, -0.5]] * 2}, qp=-8, dq=False))
    >>> tensors["w"].tolist(), infos[0].qp, infos[0].step
    ([[0.5, -0.5], [0.5, -0.5]], -8, 0.25)
    """
    dec = Decoder(data, **kwargs)
    tensors = dec.decode()
    return tensors, dec.tensors()
