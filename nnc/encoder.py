"""The nnc encoder (informative, spec Annex A): named arrays in, an NNC stream out.

The decoder fixes what a stream means; the encoder chooses the integers.  This
module quantises (nearest rounding, or the dependent-quantisation trellis),
codes the integers with the engine, and writes the unit stream with the
container.  Its reconstruction is exactly what any conforming decoder returns.

    >>> import numpy as np, nnc
    >>> w = {"fc.weight": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    >>> stream = nnc.encode(w, qp=-20, dq=True)
    >>> back = nnc.decode(stream)["fc.weight"]
    >>> bool(np.abs(back - w["fc.weight"]).max() < 0.1)
    True
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np

from . import narrow_floats
from ._lru import SizedLRU
from ._threads import ordered_results
from .array_store import ArrayStore, as_store
from .decoder import DecoderState, _HeldValues, _name_map, _node_depth, apply_update, model_digest
from .encoding.feedback import FactorCache
from .encoding.quantiser import (  # noqa: F401
    DEFAULT_SCAN_MIN_ELEMENTS,
    DEFAULT_SCAN_ORDER,
    INT32_MAX,
    RESTORABLE_FORMATS,
    CodedTensor,
    Quantiser,
    dcv1_step,
    default_scan_order,
)
from .encoding.quantiser import as_float_array as _as_float_array  # noqa: F401
from .encoding.settings import OPTIONS, EncoderSettings, check_tensor_name, matches, qp_for_step
from .encoding.writer import (
    Unit,
    UnitWriter,
    block_groups,
    block_members,
    differences_without_a_model,
    metadata_json,
    mps_qp,
    sends_differences,
    tied_tensors,
    ties_of,
)
from .engine import get_engine
from .errors import EncodeError
from .readers import shared_arrays

if TYPE_CHECKING:
    from .encoding.stream import StreamSummary


@dataclass
class EncodedTensor:
    """What the encoder did with one tensor.

    Attributes
    ----------
    name : str
        Tensor name.
    shape : tuple
        Its shape.
    payload_type : str
        The NDU payload type used: ``"FLOAT"``, ``"INT"``, ``"RAW_FLOAT"`` or ``"BLOCK"``
        member.
    qp : int or None
        The tensor's qp (None for lossless and raw tensors).
    step : float or None
        The step size Δ of that qp (spec 12.1).
    dq : bool
        Whether dependent quantisation was used.
    levels : numpy.ndarray or None
        The reconstruction integers n (None for raw tensors).
    reconstruction : numpy.ndarray
        Exactly what a conforming decoder returns for the tensor.
    kept_raw : str or None
        Why the tensor is stored raw though it was to be quantised: it holds inf or NaN, or its
        values would leave int32 levels at its qp (None otherwise).

    Examples
    --------
    >>> import numpy as np
    >>> t = Encoder(qp=-8, dq=False).encode({"w": np.array([[0.4, -1.3]])}).tensors["w"]
    >>> t.payload_type, t.qp, t.step, t.levels.tolist(), t.reconstruction.tolist()
    ('FLOAT', -8, 0.25, [2, -5], [[0.5, -1.25]])
    """

    name: str
    shape: tuple
    payload_type: str
    qp: int | None
    step: float | None
    dq: bool
    levels: np.ndarray | None
    reconstruction: np.ndarray
    kept_raw: str | None = None


@dataclass
class EncodeResult:
    """The result of :meth:`Encoder.encode`.

    Attributes
    ----------
    stream : bytes
        The NNC unit stream.
    tensors : collections.OrderedDict
        {name: :class:`EncodedTensor`} in stream order.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.encoder import Encoder
    >>> res = Encoder(qp=-30).encode({"w": np.full((16, 16), 0.3, np.float32)})
    >>> list(res.tensors), res.tensors["w"].qp
    (['w'], -30)
    """

    stream: bytes
    tensors: OrderedDict[str, EncodedTensor] = field(default_factory=OrderedDict)
    #: Names of tensors left out of an update stream because they are all zero (spec 7.7).
    skipped: list = field(default_factory=list)
    #: Whether the stream's tensors are differences to the receiver's model (spec 6.2.1, ``differences=True``).
    differences: bool = False
    #: {name: coded tensor} of the tensors coded once for two names (tied weights, spec 6.2.1); not in ``tensors``.
    tied: dict = field(default_factory=dict)

    @property
    def reconstruction(self) -> OrderedDict[str, np.ndarray]:
        """{name: reconstructed array}: what nnc's decoder returns for the stream, a tied tensor (spec 6.2.1) right
        after its coded tensor, as the same array.

        Tensors of skipped NDUs are not in it (the decoder does not output them).
        """
        tied = ties_of(self.tied)
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for k, v in self.tensors.items():
            if k not in self.skipped:
                out[k] = v.reconstruction
                for tie in tied.get(k, ()):
                    out[tie] = v.reconstruction
        return out


def _difference(x: np.ndarray, held: np.ndarray) -> np.ndarray | None:
    """``x`` minus the receiver's ``held`` tensor, such that adding it in ``held``'s dtype gives ``x`` back up to
    the coding's error (spec 14.5); None when no difference can (the tensor is then sent whole)."""
    if (
        held.shape != (x.shape or (1,))
        or x.dtype.kind not in "fiub"
        or (x.dtype.kind == "f") != (held.dtype.kind == "f")
    ):
        return None  # another shape, a format numpy lacks, or float <-> integer (a 0-d tensor is held as (1,))
    held = held.reshape(x.shape)
    if x.dtype.kind != "f":
        delta = x.astype(np.int64) - held.astype(np.int64)
        return delta if delta.size == 0 or (delta.min() >= -(2**31) and delta.max() < 2**31) else None
    finite = bool(np.isfinite(x).all() and np.isfinite(held).all())
    if not finite:  # unchanged infs and NaNs (a mask of -inf) are a zero difference; any other change is not
        return np.zeros_like(x) if np.array_equal(x, held, equal_nan=True) else None
    delta = np.empty_like(x)
    flat_x, flat_held, flat_delta = x.reshape(-1), held.reshape(-1), delta.reshape(-1)
    limit = np.finfo(x.dtype).max
    for i in range(0, flat_x.size, _SLICE):  # (in float64, a slice at a time: small temporaries)
        wide = flat_x[i : i + _SLICE].astype(np.float64) - flat_held[i : i + _SLICE]
        if np.abs(wide).max() > limit:
            return None
        flat_delta[i : i + _SLICE] = wide
    return delta


#: Elements taken at a time where whole-tensor float64 temporaries would double a tensor's memory.
_SLICE = 1 << 20


def sum_overflows(name: str, held: np.ndarray, difference: np.ndarray, x, narrow: Mapping) -> bool:
    """Whether the receiver's tensor ``name``, its ``held`` values plus the decoded ``difference`` in their dtype
    (:func:`nnc.decoder.apply_update`, spec 14.5), holds inf or NaN where the tensor's values ``x`` (or a function
    that reads them) are finite: a float16 value near its largest, its difference rounded up by the coding. The
    tensor is then sent whole. Values that stay under half the dtype's largest are not added (they cannot overflow).

    Examples
    --------
    >>> import numpy as np
    >>> held, x = np.array([10000.0], np.float16), np.array([65504.0], np.float16)
    >>> sum_overflows("w", held, np.array([55520.0], np.float32), x, {})
    True
    >>> sum_overflows("w", held, np.array([55504.0], np.float32), x, {})
    False
    """
    from .decoder import apply_update
    from .encoding.quantiser import finite_peak

    stored = narrow.get(name) or ""
    if narrow_floats.is_narrow(stored):
        largest = narrow_floats.largest(stored)
    elif held.dtype.kind == "f":
        largest = float(np.finfo(held.dtype).max)
    else:
        return False
    if finite_peak(held) + finite_peak(np.asarray(difference)) <= largest / 2:
        return False
    x = x() if callable(x) else x
    with np.errstate(over="ignore", invalid="ignore"):
        got = apply_update({name: held}, {name: difference}, check_parent=False, narrow=narrow)[name]
    return bool(np.any(~np.isfinite(got) & np.isfinite(np.asarray(x, np.float64).reshape(got.shape))))


def code_unit(quantiser, writer, name: str, groups: Mapping, arrays: Mapping, deltas) -> Unit:
    """The unit of ``name`` (a weight with its block members, ``groups``) from ``arrays``, those named in ``deltas``
    differences to the receiver's tensors; ``arrays`` may map names to functions that read the values (raw storage
    weighs them, :meth:`~nnc.encoding.writer.UnitWriter.raw_if_smaller`) only for members coded alone."""
    if name not in groups:
        t = quantiser.quantise(name, arrays[name], difference=name in deltas)
        return writer.single_unit(writer.raw_if_smaller(t, arrays[name]))
    members = block_members(name, groups[name])
    in_block = quantiser.settings.blocks != "auto"  # auto pairs are float tensors, coded alike either way
    dq = quantiser.settings.tensor_dq(name)  # the block's members follow its weight
    coded = {
        n: quantiser.quantise(n, arrays[n], in_block=in_block, dq=dq, difference=n in deltas)
        for n in members[1:] + [name]
    }
    return writer.group_unit(name, groups[name], coded, arrays)


def unit_with_finite_sums(code, arrays: dict, deltas: set, whole: list, held: Mapping, values, narrow) -> Unit:
    """``code()``'s unit, in which a member coded as a difference whose receiver's sum would leave its dtype's
    range (:func:`sum_overflows`) is coded again from its values (``values(name)``), its name added to ``whole``
    (the tensors sent whole, spec 6.2.1 ``"replaced"``)."""
    unit = code()
    overflow = [
        t.name
        for t in unit.members
        if t.name in deltas and sum_overflows(t.name, held[t.name], t.recon, functools.partial(values, t.name), narrow)
    ]
    if not overflow:
        return unit
    for n in overflow:  # (each name is in one unit: safe from the unit's own thread)
        deltas.discard(n)
        whole.append(n)
        arrays[n] = values(n)
    return code()


def _warn_after_encode(encoder: "Encoder", result: "EncodeResult", arrays: Mapping) -> None:
    """PrecisionWarnings at the first caller outside nnc: the tensors of ``result`` whose non-zero values all decode
    as 0, and the float tensors that kept little of their signal (an SNR under ``COARSE_SNR_DB``, as ``nnc encode``
    says; neither for an update, whose small differences may round to zero by design), and the float64 tensors that
    keep only float32 precision."""
    if not encoder.settings.differences:
        lost = [
            name
            for name, t in result.tensors.items()
            if name in arrays and lost_signal(t.levels, t.reconstruction, arrays[name])
        ]
        warn_lost_signal(lost)
        warn_coarse(_coarse(encoder, result, arrays, set(lost)))
    narrowed = [
        name
        for name, t in result.tensors.items()
        if name in arrays
        and not result.differences
        and float32_precision_lost(
            arrays[name], t.levels, t.step, t.reconstruction, t.kept_raw, encoder.settings.is_raw(name)
        )
    ]
    if narrowed:
        _warn(float32_precision_message(narrowed))


def float32_precision_message(names: list) -> str:
    """The warning for float64 or integer tensors that keep only float32 precision (the API's PrecisionWarning, the
    CLI's line)."""
    return (
        f"{len(names)} float64 or lossily coded integer tensor(s) keep only float32 precision (NNC reconstructs "
        f"values, and stores raw ones, in float32; spec 7.5, 12.1): {_first_names(names)}; their errors exceed "
        "what the step would give"
    )


def float32_precision_lost(values, levels, step, reconstruction, kept_raw, asked_raw: bool) -> bool:
    """Whether float64 ``values`` lose more to float32 than their coding does: stored raw as asked (``raw``) or to be
    kept exactly (inf, NaN), a value that float32 changes (not when raw was only the smaller choice: coding would
    have lost more); quantised (``levels`` at ``step``; integers too, coded lossily), values above 2^23 steps whose
    float32 ``reconstruction`` misses by more than two steps (more than quantisation would). Not for updates: their
    differences are small beside the values."""
    values = np.asarray(values)
    if not values.size or values.dtype != np.float64 and values.dtype.kind not in "iu":
        return False
    if values.dtype.kind in "iu" and (levels is None or step is None):
        return False  # (exact: coded losslessly, or raw only where float32 holds them)
    if levels is None or step is None:
        if not asked_raw and kept_raw is None:
            return False
        return not np.array_equal(values.astype(np.float32).astype(np.float64), values, equal_nan=True)
    from .encoding.quantiser import finite_peak

    if finite_peak(values) / step <= 2**23:
        return False  # float32 resolves half a step at every value
    errors = np.abs(np.asarray(reconstruction, np.float64) - values)
    return bool(np.nanmax(errors, initial=0.0) > 2 * step)  # more than quantisation (DQ: up to about 1.84 steps)


def lost_signal(levels, reconstruction, values) -> bool:
    """Whether a tensor coded as ``levels`` (None: stored raw or exactly) with ``reconstruction`` keeps none of its
    non-zero ``values``."""
    return levels is not None and not np.any(reconstruction) and bool(np.any(np.asarray(values)))


def warn_lost_signal(lost: list) -> None:
    """The PrecisionWarning (nnc.errors) naming tensors whose non-zero values all decode as 0, at the first caller
    outside nnc; nothing for none."""
    if lost:
        _warn(
            f"{len(lost)} tensor(s) kept none of their signal (their quantisation step is too coarse for their "
            f"values, which decode as zeros): {_first_names(lost)}; a finer qp (tensor_qp=, nonweight_qp=) or raw= "
            "keeps them"
        )


def _coarse(encoder: "Encoder", result: "EncodeResult", arrays: Mapping, lost: set) -> dict:
    """{name: SNR in dB} of the tensors of ``result`` that kept little of their signal (:func:`coarse_signal`)."""
    out = {}
    for name, t in result.tensors.items():
        if name in arrays and name not in lost:
            snr = coarse_signal(arrays[name], t.levels, t.reconstruction, encoder.settings.dtypes.get(name))
            if snr is not None:
                out[name] = snr
    return out


def coarse_signal(values, levels, reconstruction, dtype: str | None = None) -> float | None:
    """The SNR in dB of a quantised float tensor (``levels`` not None) that kept little of its signal, measured
    against the values a file of ``dtype`` holds (bfloat16: rounded); None for one that kept more, none, or was
    stored exactly.

    Examples
    --------
    >>> import numpy as np
    >>> round(coarse_signal(np.array([1.0, 1.0]), np.array([1, 0]), np.array([1.0, 0.5])), 2)
    9.03
    """
    from .encoding.stream import coarse_snr_db
    from .measure import error_sums

    if levels is None or not isinstance(values, np.ndarray) or values.dtype.kind != "f":
        return None
    return coarse_snr_db(*error_sums(values, reconstruction, stored_as=dtype)[:2])


def warn_coarse(coarse: Mapping[str, float]) -> None:
    """The PrecisionWarning (nnc.errors) naming float tensors that kept little of their signal, with their SNRs, at
    the first caller outside nnc; nothing for none."""
    from .encoding.stream import COARSE_SNR_DB

    if coarse:
        shown = [f"{k!r} ({v:.1f} dB)" for k, v in list(coarse.items())[:3]]
        more = f" and {len(coarse) - 3} more" if len(coarse) > 3 else ""
        _warn(
            f"{len(coarse)} tensor(s) kept little of their signal (SNR under {COARSE_SNR_DB:g} dB: their "
            f"quantisation step is coarse for their values): {', '.join(shown)}{more}; a finer qp (tensor_qp=, "
            "nonweight_qp=) or raw= keeps them"
        )


def _first_names(names: list) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


#: Said when ``differences=True`` meets a state whose streams were coded without it.
FULL_VALUES_NOTE = (
    "differences=True, but the state's earlier streams were coded without it, so it holds no model to take "
    "differences to: this stream carries full values; the updates after it carry differences"
)


def _warn(message: str, category: "type[Warning] | None" = None) -> None:
    """A warning (default nnc.errors.PrecisionWarning) at the first caller outside nnc."""
    import os
    import sys
    import warnings

    from .errors import PrecisionWarning

    package, frame, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(0), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category or PrecisionWarning, stacklevel=level)


def _tensor_arrays(tensors: Mapping, dtypes: Mapping | None = None) -> "OrderedDict[str, np.ndarray]":
    """The input's tensors as numpy arrays, each name checked (spec 2.6); EncodeError for what is not an array.
    Torch tensors are converted (:func:`nnc.torch.numpy_inputs`); one of a dtype numpy lacks (bfloat16) must be
    named in ``dtypes``, the encoder's option, which records it."""
    from .readers import mapping_array
    from .torch import numpy_inputs

    arrays = OrderedDict()
    tensors, recorded = numpy_inputs(tensors)  # the mapping itself when it holds no torch tensors
    unnamed = [k for k in recorded or {} if k not in (dtypes or {})]
    if unnamed:
        raise EncodeError(
            f"tensor {unnamed[0]!r} is a torch {recorded[unnamed[0]]} tensor: give the encoder "
            f"dtypes={{{unnamed[0]!r}: {recorded[unnamed[0]]!r}, ...}} to record it, or encode with nnc.encode, "
            "which does"
        )
    for name, value in tensors.items():
        check_tensor_name(name)
        arrays[name] = mapping_array(name, value)
    return arrays


#: Held by an encode with an EncoderState (the state changes with each stream it writes).
_STATEFUL = threading.RLock()

#: The entries of nnc metadata (spec 6.2.1) the encoder writes itself, which ``extra_metadata`` may not set.
_OWN_METADATA = ("version", "tensors", "skipped", "shapes", "dtypes", "differences", "parent", "replaced")


def _extra_metadata(extra) -> dict:
    """The caller's ``extra_metadata``, checked: a mapping of str keys to JSON values, none of the encoder's own."""
    import json

    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise EncodeError(f"extra_metadata must be a mapping of str keys to JSON values, not {type(extra).__name__}")
    for key in extra:
        if not isinstance(key, str):
            raise EncodeError(f"extra_metadata keys are strings, not {key!r}")
        if key in _OWN_METADATA:
            raise EncodeError(f"extra_metadata cannot set {key!r}: the encoder writes it (spec 6.2.1)")
    try:
        json.dumps(dict(extra), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(f"extra_metadata is not JSON: {exc}") from None
    return dict(extra)


class EncoderState(DecoderState):
    """What an encoder of incremental (2nd-edition) streams keeps across the streams it writes.

    The levels and history maps are those the receiving decoder's
    :class:`~nnc.decoder.DecoderState` will hold after decoding the same streams
    in the same order (spec 14.1): the encoder codes an update's contexts
    (TCA, HDSP) from them.  The node identifiers are numbered as NNCodec
    numbers them: a parameter id per NDU in order of first appearance, kept
    by its tensors' names in later streams, and a depth that counts the
    streams that carried the tensor.

    Examples
    --------
    >>> import nnc, numpy as np
    >>> from nnc.encoder import EncoderState
    >>> enc_state, dec_state = EncoderState(), nnc.DecoderState()
    >>> w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    >>> base = nnc.encode({"w": w}, qp=-20, state=enc_state)
    >>> update = nnc.encode({"w": w / 8}, qp=-24, state=enc_state)
    >>> _ = nnc.decode(base, state=dec_state)
    >>> nnc.decode(update, state=dec_state)["w"].shape, enc_state.depths
    ((3, 4), {'w': 2})
    """

    _KIND = "encoder"
    _CONTAINERS = DecoderState._CONTAINERS + ("parameter_ids", "model")

    def __init__(self):
        super().__init__()
        #: The ``parameter_id`` of each tensor name (spec 7.4).
        self.parameter_ids: dict[str, int] = {}
        #: The ``put_node_depth`` of each tensor's last coded occurrence (1 for the first stream).
        self.depths: dict[str, int] = {}
        #: With ``differences=True``: the model as the receiver holds it (the base's reconstruction
        #: plus every update, by :func:`nnc.decoder.apply_update`; in order, arrays perhaps kept on disk as
        #: for ``levels``).
        self.model: ArrayStore = ArrayStore()
        #: Whether ``model`` holds bfloat16 and float8 tensors rounded to their format, as receivers do (spec 14.5);
        #: False for a state file of nnc before that rule, whose updates of such tensors then record no parent digest
        #: (its receivers' files had drifted from it).
        self.narrow_rounded = True

    def _meta(self) -> dict:
        return dict(
            super()._meta(),
            parameter_ids=self.parameter_ids,
            model=list(self.model),
            narrow_rounded=self.narrow_rounded,
        )

    def _set_meta(self, meta: dict, arrays: dict) -> None:
        super()._set_meta(meta, arrays)
        self.parameter_ids = _name_map(meta["parameter_ids"], _node_depth, "parameter_ids")
        self.depths = _name_map(meta["depths"], _node_depth, "depths")
        self.model = ArrayStore((str(k), arrays[f"model{i}"]) for i, k in enumerate(meta["model"]))
        self.narrow_rounded = meta.get("narrow_rounded") is True  # (absent before the rounding rule)

    def _extra_arrays(self) -> list:
        return [(f"model{i}", lambda name=name: self.model[name]) for i, name in enumerate(self.model)]

    def _stores(self) -> list:
        self.model = as_store(self.model, getattr(self.levels, "spill", None))
        return super()._stores() + [self.model]


class Encoder:
    """Encoder of a mapping of named arrays into an NNC stream (informative, spec Annex A).

    All parameters are keyword-only. They are checked once into an
    :class:`~nnc.encoding.settings.EncoderSettings` (:attr:`settings`, also readable as
    attributes: ``enc.qp``); the quantiser (:class:`~nnc.encoding.quantiser.Quantiser`)
    and the unit writer (:class:`~nnc.encoding.writer.UnitWriter`) do the work.
    One encoder may be used from several threads at once; encodes with a ``state``
    are put in sequence (each update names the one before it). An encoder pickles
    as its settings and state.

    Parameters
    ----------
    qp : int, optional
        Global quantisation parameter (spec 12.1); -38 if neither ``qp`` nor ``step`` is given.
    step : float, optional
        A target step size instead of ``qp``, mapped to the nearest qp.
    qp_per_tensor : mapping of str to int, optional
        {name or glob pattern: qp}; the first match wins.
    nonweight_qp : int or None
        qp of the tensors of at most one dimension (biases, norms; a (1, n) tensor, also a
        one-output layer's weight, keeps ``qp``); None (default) means ``qp``, as the measurements
        of ``benchmarks/results/paper.md`` recommend (NNCodec uses -75; before 0.2.0 so did nnc).
    nonweight_snr_db : float or None
        The least SNR, in dB, a float tensor with at most one dimension longer than 1 (also
        an export's (1, 512)) keeps when neither its name nor ``nonweight_qp`` gives its qp
        (default 20): one whose qp would round it
        coarser (a ``running_mean`` of 1e-3 at qp -38: 4 dB) is coded at a finer qp, out of
        its weight's block (spec A.7). 0 or None codes it at ``qp`` whatever it keeps.
    qp_density : int
        0..7, default 2 (four qps per octave of step size).
    dq : bool
        Dependent (trellis) quantisation, default True (spec A.2).
    scan_order : int or None
        0 (row-major) or 1..4 (block scans with entry points, spec 11.2); None (default)
        chooses per tensor with :func:`nnc.encoder.default_scan_order`: a 64x64 block scan for tensors of
        at least 2^20 elements and more than 64 rows, whose block rows then decode and
        encode in parallel threads (about 0.15 % more bytes), row-major below.
    n_gtx : int
        Number of greater-than flags, 1..256, default 11.
    param_opt : bool
        Choose context initialisations per tensor and signal them (default True, spec A.4).
    raw : str or iterable of str
        Names or patterns of tensors stored uncompressed (RAW_FLOAT); a str is one name.
    lossless_int : bool
        Code integer tensors exactly as INT (default True).
    blocks : bool, str or mapping
        ``"auto"`` (default) pairs a float ``X.weight`` with its ``X.bias`` in BLOCK NDUs
        (spec 7.6) where NNCodec forms such blocks too: not in incremental streams, not
        with codebooks, not for tensors named by ``raw``, ``sigmas`` or ``output_formats``,
        and not when a member holds inf or NaN or would be smaller stored raw. True pairs
        every such weight and bias that ``raw`` does not name, False none; or
        {weight name: {"bias": name, "bn": [beta, gamma, mean, var], "scaling": name}}
        (naming a ``raw`` tensor there is an error).
    profile : int
        1 = 2nd edition (default, as NNCodec 2.1.3 writes); 0 = 1st edition.
    keep_dtype : bool
        Signal float16/float64 inputs so that they decode as such (default True).
    row_skip : bool
        2nd edition: skip all-zero rows (default False) of the tensors coded without
        DQ (``dq=False``, integer tensors). DQ tensors are coded without it: a skipped
        row segment advances the DQ state by the matrix width (spec 11.5), which the
        trellis does not model.
    codebook : bool or str
        ``"few"`` (default): a float tensor of at most 256 distinct values (and 1024 or more
        elements) is coded as codebook indices where that is estimated smaller, and decodes
        in its own dtype (spec A.8); True codes every float tensor as codebook indices, or
        ``"auto"`` whichever is estimated smaller, and those decode as float64; False never.
    output_formats : mapping of str to int, optional
        {name: nnr_decompressed_data_format} to signal an output dtype (spec 12.6).
    dtypes : mapping of str to str, optional
        {name: dtype name} of tensors handed over in another dtype than the model's,
        e.g. ``"bfloat16"`` for the float32 arrays that :func:`nnc.formats.read_model`
        returns for bfloat16 tensors. Recorded in the topology unit's metadata when it
        differs from the decoded dtype, so that :func:`nnc.decode_model` restores it.
    rdoq_lambda : float
        Rate-distortion quantisation, default 0 (off). With ``dq=False`` each level
        minimises F·(w/Δ − k)² + λ·bits in scan order with the adaptive contexts' rates
        (spec A.9); with ``dq=True`` the trellis minimises the same cost along its paths
        (spec A.14). λ is in squared step sizes per bit, so it does not depend on Δ;
        0.1 is a good start (``benchmarks/bench_rd.py``).
    lambda_per_tensor : mapping of str to float, optional
        {name or glob pattern: λ} overriding ``rdoq_lambda`` for matching tensors.
    importance : mapping of str to numpy.ndarray, optional
        Per-weight importance F for the rate-distortion choice (e.g. from
        :func:`nnc.allocation.empirical_fisher`).
    sigmas : mapping of str to numpy.ndarray, optional
        DeepCABAC DC-v1: per-weight standard deviations σ. The tensor's step follows eq. 12,
        Δ = 2|w_max| / (2|w_max|/σ_min + S), snapped to the qp grid, and with
        ``rdoq_lambda`` the importance is F = 1/σ² (spec A.10).
    covariances : mapping of str to numpy.ndarray, optional
        {weight name: E[x·xᵀ] of its layer's input}, an (n, n) matrix for a weight of shape
        (out, ...) with n = the product of the other dimensions (a convolution's input patches
        in (channel, kh, kw) order, as :func:`nnc.torch.input_covariances` measures them).
        These weights are quantised with error feedback (spec A.16): each rounding error is
        compensated in the weights not yet rounded, so that the layer's output error rather
        than the weights' own error stays small, which allows a coarser qp for the same
        accuracy. Their levels lie on the uniform grid (no DQ; ``importance`` is not used
        for them); ``rdoq_lambda`` trades levels for bits with an order-0 rate estimate.
        A block NDU with such a weight codes its members without DQ too.
    covariance_transposed : sequence of str, optional
        Names or glob patterns of weights with ``covariances`` that are stored inputs first,
        (n, outputs...), as ONNX ``MatMul`` and Keras ``Dense`` keep them (y = x·W): their
        matrix is over the first dimension.
    dcv1_s : int
        The global integer S of eq. 12 (default 64).
    engine : str, optional
        ``"cython"`` or ``"python"`` (default: the ``NNC_ENGINE`` environment variable,
        else Cython).
    threads : int
        Tensors quantised and coded at the same time (default 1; 0 for one per CPU).
        The stream is the same for every value; the working memory grows with it (each
        tensor in flight needs about 2-3 times its float32 size while it is quantised).
    state : EncoderState, optional
        Incremental coding (profile 1, spec 14): the state carried across the streams
        this and other encoders write for one receiver, base model first. A stream
        whose tensors the state already holds is an update: its model parameter set
        enables parent signalling, and each of its NDUs names its parent and, with
        ``tca``, codes its contexts from the parent's levels. The state is updated as
        the receiving decoder's will be. Updates typically code differences to the
        previous model; applying them is the application's business (spec 14.5).
        For NNCodec to decode a sequence, keep ``blocks`` the same in all its streams.
    tca : bool
        In updates, temporal context adaptation (spec 10.5; default True).
    hdsp : bool
        In updates, history-dependent significance probabilities (spec 10.5; default False).
    parent_id : str
        How an update's NDU names its parent (spec 7.4, 14.4): ``"sha256"`` (default) or
        ``"sha512"``, the digest of the payload of the NDU that last carried its tensors'
        levels, so that a decoder refuses the update with another model's or sequence's
        state, a replayed or a missing update (32 or 64 bytes per NDU; it pins the parent's
        payload, not the state behind it: spec 14.4); ``"ids"``, node ids
        alone (``parent_node_id_type`` 0, as NNCodec writes: a few bits; a replayed or
        missing update is still refused by its depth, another sequence's update of the
        same depth is not). NNCodec 2.1.3 decodes all three.
    skip_zero : bool or None
        In updates, leave out NDUs whose tensors are all zero (spec 7.7); they are listed
        in :attr:`EncodeResult.skipped`. None (default): only in streams of differences,
        where zero means unchanged; in an update of full values an all-zero tensor is sent
        (a receiver writing the update to a file keeps it). True leaves them out in every
        update, as NNCodec does.
    differences : bool
        With ``state``: the tensors given are the whole new model, and an update codes
        its difference to the model the receiver holds (tracked in the state as the
        receiver computes it with :func:`nnc.decoder.apply_update`), so that
        quantisation errors do not pile up over the updates (default False: code the
        tensors as given).
    raw_when_smaller : bool
        Store a float tensor as RAW_FLOAT when its coded NDU would be no smaller: no tensor
        then costs more than its float32 bytes (default True since 0.2.0;
        ``benchmarks/results/paper.md``). Not inside explicit BLOCK NDUs.
    tie_shared : bool
        Code a tensor that is one array with an earlier one (tied weights: the same data,
        shape, strides and dtype; a PyTorch file's views of one storage) once, and record
        the tie in nnc's metadata (spec 6.2.1 ``"tied"``), when both get the same options
        and there is no ``state`` (default True). Decoders that ignore nnc's metadata then
        give only the coded tensor; False codes every name.
    settings : nnc.encoding.settings.EncoderSettings, optional
        All the options above (but ``state``) as one checked object, instead of keywords.

    Raises
    ------
    nnc.errors.EncodeError
        If an option is out of range or inconsistent.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.encoder import Encoder
    >>> w = np.random.default_rng(1).normal(0, 0.05, (64, 64)).astype(np.float32)
    >>> enc = Encoder(qp=-32, dq=True, rdoq_lambda=0.1)
    >>> res = enc.encode({"fc.weight": w, "fc.bias": w[0]})
    >>> res.tensors["fc.bias"].qp                 # 1-D tensors use qp unless nonweight_qp is given
    -32
    >>> import nnc
    >>> bool((nnc.decode(res.stream)["fc.weight"] == res.reconstruction["fc.weight"]).all())
    True
    """

    def __init__(self, *, state: EncoderState | None = None, settings: EncoderSettings | None = None, **options):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"Encoder() got an unexpected keyword argument {unknown[0]!r}")
        if settings is not None and options:
            raise EncodeError("give either settings or options, not both")
        if settings is not None and not isinstance(settings, EncoderSettings):
            raise EncodeError(
                f"settings must be an nnc.encoding.settings.EncoderSettings, not {type(settings).__name__}"
            )
        #: The validated options (:class:`~nnc.encoding.settings.EncoderSettings`).
        self.settings = settings if settings is not None else EncoderSettings(**options)
        s = self.settings
        try:
            self.engine = get_engine(s.engine)
        except ValueError as exc:  # an unknown engine
            raise EncodeError(str(exc)) from None
        if state is not None and not isinstance(state, EncoderState):
            raise EncodeError("state must be an nnc.encoder.EncoderState")
        if state is not None and s.profile != 1:
            raise EncodeError("incremental coding (state=) needs profile 1 (2nd edition)")
        if s.differences and state is None:
            raise EncodeError("differences=True needs a state (an EncoderState)")
        self.state = state
        #: Turns each tensor into a :class:`~nnc.encoding.quantiser.CodedTensor`; keeps the factors of the
        #: covariances (spec A.16) between encodes.
        self.quantiser = Quantiser(s, self.engine, FactorCache())

    def __reduce__(self):
        # (pickle, copy: an encoder is its settings and its state; the engine and caches are made again)
        return _encoder_from, (self.settings, self.state)

    def __getattr__(self, name):
        # the options read as attributes (enc.qp, enc.dq, enc.edition, ...), as before the settings class
        if name != "settings" and "settings" in self.__dict__ and hasattr(self.settings, name):
            return getattr(self.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- per-tensor decisions ----------------------------------------------------
    def tensor_qp(self, name: str, ndim: int) -> int:
        """The qp this encoder gives a float tensor of this name and number of dimensions.

        Examples
        --------
        >>> Encoder(qp=-30, qp_per_tensor={"head.*": -40}).tensor_qp("head.weight", 2)
        -40
        """
        return self.settings.tensor_qp(name, ndim)

    def tensor_lambda(self, name: str) -> float:
        """The rate-distortion λ of this tensor (``lambda_per_tensor``, else ``rdoq_lambda``).

        Examples
        --------
        >>> Encoder(rdoq_lambda=0.1, lambda_per_tensor={"fc1.*": 0.4}).tensor_lambda("fc1.weight")
        0.4
        """
        return self.settings.tensor_lambda(name)

    # -- stream ------------------------------------------------------------------
    def encode(
        self,
        tensors: Mapping[str, object],
        progress=None,
        *,
        cache: "EncodeCache | None" = None,
        extra_metadata: Mapping | None = None,
    ) -> EncodeResult:
        """Encode the tensors; return the stream and the reconstruction of each tensor.

        Parameters
        ----------
        tensors : mapping of str to array-like
            Named arrays (numpy arrays or anything ``numpy.asarray`` accepts), coded in
            this order. Float tensors are quantised, integer tensors coded losslessly.
        progress : callable, optional
            Called with (name, number of elements) after each tensor.
        cache : EncodeCache, optional
            Reuse the NDUs of earlier encodes (with any encoder) of the same array objects
            under the same per-tensor settings; for sweeps that change a few tensors at a time.
        extra_metadata : mapping, optional
            More keys for nnc's topology metadata (spec 6.2.1), e.g. ``{"checkpoint": ...}``
            (:attr:`nnc.readers.ModelSource.checkpoint`): str keys, JSON values, none of the
            entries the encoder writes itself (``"tensors"``, ``"dtypes"``, ``"differences"``...).

        Returns
        -------
        EncodeResult
            The stream and, per tensor, what was coded and its exact reconstruction.

        Raises
        ------
        nnc.errors.EncodeError
            For a bad name, a NaN/Inf value in a block NDU member (elsewhere such tensors
            are kept exactly, raw), an unsupported dtype, levels that do not fit the
            stream's integer range at this qp, or ``extra_metadata`` that is not JSON or
            sets an entry of the encoder's own.

        Examples
        --------
        >>> import numpy as np
        >>> res = Encoder(qp=-20, dq=False).encode({"w": np.array([[0.1, -0.2], [0.3, 0.0]])})
        >>> res.tensors["w"].step, res.tensors["w"].levels.tolist()   # Δ = 2**(-20/4), n in scan order
        (0.03125, [3, -6, 10, 0])
        """
        if self.state is None:
            return self._encode(tensors, progress, cache, extra_metadata)
        with _STATEFUL:  # each update names the one before it: encodes from threads are put in a sequence
            return self._encode(tensors, progress, cache, extra_metadata)

    def _encode(self, tensors, progress, cache, extra_metadata) -> EncodeResult:
        if not isinstance(tensors, Mapping):
            raise EncodeError("tensors must be a mapping of name to array")
        if progress is not None and not callable(progress):
            raise EncodeError(f"progress must be a callable, not {type(progress).__name__}")
        if cache is not None and not isinstance(cache, EncodeCache):
            raise EncodeError(f"cache must be an nnc.encoder.EncodeCache, not {type(cache).__name__}")
        if cache is not None and self.state is not None:
            raise EncodeError("an EncodeCache cannot be used for incremental coding (state=)")
        s = self.settings
        extra_metadata = _extra_metadata(extra_metadata)
        model = _tensor_arrays(tensors, s.dtypes)
        s.check_names(model)
        tied = tied_tensors(shared_arrays(model), s, {n: a.ndim for n, a in model.items()}, self.state)
        arrays = OrderedDict((n, a) for n, a in model.items() if n not in tied)  # (a tied tensor is coded once)
        replaced: list[str] = []
        if differences_without_a_model(s.differences, self.state):
            _warn(FULL_VALUES_NOTE, UserWarning)
        deltas: set = set()  # the names whose values are differences to the receiver's
        if s.differences:
            arrays, replaced, deltas = self._differences(arrays)
        original_dtypes = {k: s.dtypes.get(k, v.dtype.name) for k, v in model.items()}
        # bfloat16 / float8 tensors: held rounded to their format, as the receiver holds them (spec 14.5)
        narrow = {k: v for k, v in original_dtypes.items() if narrow_floats.is_narrow(v)}
        writer = UnitWriter(s, self.engine, self.state)
        groups = block_groups(
            s.blocks,
            {n: a.shape for n, a in arrays.items()},
            s,
            # (bfloat16 and float8 arrays are coded as float32, as a file's are read: paired alike)
            {n: np.dtype(np.float32) if narrow_floats.is_narrow(a.dtype.name) else a.dtype for n, a in arrays.items()},
            incremental=self.state is not None,
            originals={n: a.dtype.name for n, a in arrays.items()},
        )
        in_block = {m for w, p in groups.items() for m in block_members(w, p)[1:]}
        names = [name for name in arrays if name not in in_block]
        quantiser = self.quantiser if cache is None else Quantiser(s, self.engine, cache.factors)
        keys = {name: None if cache is None else self._unit_key(name, groups.get(name), arrays) for name in names}
        cached = {name: cache._get(key) for name, key in keys.items() if key is not None}
        to_make = [(name,) for name in names if cached.get(name) is None]

        def make(name):
            def code():
                return code_unit(quantiser, writer, name, groups, arrays, deltas)

            if not deltas:
                return code()
            return unit_with_finite_sums(code, arrays, deltas, replaced, self.state.model, model.__getitem__, narrow)

        units = []
        result = EncodeResult(stream=b"", tied=tied)
        # quantisation, in threads; units recorded (and cached) in stream order
        with ordered_results(make, to_make, s.threads) as made:
            for name in names:
                unit = cached.get(name)
                if unit is None:
                    unit = next(made)
                    if keys[name] is not None:
                        cache._put(keys[name], unit)
                for t in unit.members:
                    result.tensors[t.name] = _encoded(t)
                units.append(unit)
                if progress is not None:
                    progress(name, int(arrays[name].size))
        replaced = [n for n in model if n in set(replaced)]  # (in the model's order, whichever thread added one)
        stream_qp = mps_qp([t.qp for t in result.tensors.values() if t.qp is not None], s.qp_density)
        update = writer.is_update(arrays)
        links = [writer.link(u, update) for u in units]
        for u, link in zip(units, links):
            if link is not None and link.skip:
                result.skipped.extend(t.name for t in u.members)
        decoded_dtypes = {k: t.reconstruction.dtype.name for k, t in result.tensors.items()}
        parent = self._parent_digest(decoded_dtypes, original_dtypes, narrow)
        metadata = metadata_json(
            {k: v.shape for k, v in model.items()},
            decoded_dtypes,
            original_dtypes,
            dict(
                extra_metadata or {},
                **({"parent": parent} if parent else {}),
                **({"replaced": replaced} if replaced else {}),  # (only with a model held: differences)
            ),
            skipped=result.skipped,
            differences=self._sends_differences(),
            groups=groups,
            tied=tied,
        )
        result.differences = self._sends_differences()
        head = writer.head(stream_qp, metadata, update)
        jobs = [(u, link) for u, link in zip(units, links) if link is None or not link.skip]
        # the payloads, in threads
        with ordered_results(lambda unit, link: unit.build(stream_qp, link), jobs, s.threads) as built:
            result.stream = b"".join(head + list(built))
        if self.state is not None:
            # the receiver's model first: nothing below may fail once the state has moved
            model = None
            if s.differences:
                model = apply_update(self.state.model, result.reconstruction, replaced=replaced, narrow=narrow)
            for u, link in zip(units, links):
                writer.advance_state(u, link)
            if model is not None:
                self.state.model = ArrayStore(model, getattr(self.state.levels, "spill", None))
        return result

    def _parent_digest(
        self, decoded: Mapping[str, str], original: Mapping[str, str], narrow: Mapping[str, str]
    ) -> str | None:
        """The digest of the receiver's model that an update of differences records (spec 6.2.1, ``"parent"``), so
        that applying it twice or to another model is refused; None when not sending differences, or when a tensor
        decoded as floats is restored to another float or integer dtype (float16 from float32, an integer tensor
        coded lossily: the receiver's file then holds rounded values, not the model this encoder tracks).
        bfloat16 and float8 tensors (``narrow``: their formats) enter rounded to their format, as receivers hold them
        (spec 14.5)."""
        if not self._sends_differences():
            return None
        assert self.state is not None
        if narrow and not getattr(self.state, "narrow_rounded", True):
            return None  # a state of nnc before spec 14.5's rule: its receivers hold other values
        for k, want in original.items():
            got = decoded.get(k)
            if got is None or want == got or k in narrow:
                continue
            if np.dtype(want).kind == "f" or np.dtype(got).kind == "f":
                return None  # a file of ``want`` holds rounded values (also integers coded lossily, as floats)
        return model_digest(_HeldValues(self.state.model, narrow))

    def _sends_differences(self) -> bool:
        """The stream's tensors are differences: ``differences=True`` and the receiver holds a model."""
        return sends_differences(self.settings, self.state)

    def encode_to(
        self, source, output, progress=None, *, extra_metadata=None, budget: int = 1 << 30, measure: bool = False
    ) -> "StreamSummary":
        """Encode a lazily read model into the file ``output``, in memory bounded by the tensors in flight.

        The stream is byte for byte what :meth:`encode` returns for the same tensors.  Its
        head is planned from the settings and the tensors' headers; each NDU is written as
        soon as its turn comes, with at most ``threads`` units and ``budget`` bytes (of the
        units' float32 size) in flight; the file appears atomically (a temporary file in
        the same folder, renamed at the end, removed on error).

        Parameters
        ----------
        source : nnc.readers.ModelSource or mapping
            From :func:`nnc.readers.open_model` (a model file or a sharded checkpoint), or
            named arrays.
        output : str or ``os.PathLike``
            The stream file to write.
        progress : callable, optional
            Called with (name, number of elements) after each tensor is written.
        extra_metadata : dict, optional
            More keys for nnc's topology metadata (spec 6.2.1), e.g. ``{"checkpoint": ...}``.
        budget : int
            Bytes of tensors (their float32 size) in flight at most; one unit is always allowed.
        measure : bool
            Also sum the squared weights and quantisation errors, for the summary's weight SNR
            (an extra pass over each tensor; default False).

        Returns
        -------
        nnc.encoding.stream.StreamSummary
            Sizes, the qps, the weight SNR and the skipped tensors.

        Raises
        ------
        nnc.errors.EncodeError
            As :meth:`encode`; also with codebooks or DC-v1 ``sigmas``, whose per-tensor
            choices depend on the values (use :meth:`encode`).
        nnc.formats.FormatError
            If a tensor cannot be read.
        OSError
            If ``output`` cannot be written; it is then left as it was.

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "m.nnr")
        >>> summary = Encoder(qp=-20).encode_to({"w": np.ones((4, 4), np.float32)}, path)
        >>> summary.stream_bytes == os.path.getsize(path), summary.weights
        (True, 16)
        """
        from .encoding.stream import encode_to
        from .readers import source_from_mapping

        if isinstance(source, Mapping):
            source = source_from_mapping(source)
        return encode_to(
            self, source, output, progress=progress, extra_metadata=extra_metadata, budget=budget, measure=measure
        )

    def _differences(self, arrays: "OrderedDict[str, np.ndarray]") -> tuple["OrderedDict[str, np.ndarray]", list, set]:
        """The tensors minus the receiver's model, where it has them, the names of those sent whole instead
        (spec 6.2.1 ``"replaced"``: a difference cannot say a change from inf or NaN, to another shape or kind of
        dtype, or one beyond the dtype's range), and the names of the differences. Tensors new to the receiver are
        sent as they are."""
        model = self.state.model
        out, replaced, deltas = OrderedDict(), [], set()
        for name, x in arrays.items():
            held = model.get(name)
            if held is None:
                out[name] = x
                continue
            delta = _difference(x, held)
            if delta is None:
                replaced.append(name)
                delta = x
            else:
                deltas.add(name)
            out[name] = delta
        return out, replaced, deltas

    def _unit_key(self, name: str, parts: dict | None, arrays: Mapping[str, np.ndarray]) -> tuple:
        """What an NDU depends on besides the arrays themselves (see :class:`EncodeCache`)."""
        s = self.settings
        names = [name] if parts is None else block_members(name, parts)
        members = []
        for n in names:
            arr = arrays[n]
            members.append(
                (
                    n,
                    arr.shape,
                    arr.dtype.str,
                    s.tensor_qp(n, arr.ndim),
                    s.tensor_lambda(n),
                    s.is_raw(n),
                    s.output_formats.get(n),
                    id(s.importance.get(n)),
                    id(s.sigmas.get(n)),
                    id(s.covariances.get(n)),
                    matches(n, s.covariance_transposed),
                )
            )
        layout = None if parts is None else repr(sorted(parts.items()))
        return (
            tuple(members),
            layout,
            s.qp_density,
            s.dq,
            s.scan_order,
            s.n_gtx,
            s.param_opt,
            s.lossless_int,
            s.profile,
            s.keep_dtype,
            s.row_skip,
            s.codebook,
            s.dcv1_s,
            s.raw_when_smaller,
            self.engine.__name__,
            tuple(arrays[n] for n in names),
            tuple(s.importance.get(n) for n in names),
            tuple(s.sigmas.get(n) for n in names),
            tuple(s.covariances.get(n) for n in names),
        )


def _encoded(t: CodedTensor) -> EncodedTensor:
    """The public record of a coded tensor."""
    return EncodedTensor(
        name=t.name,
        shape=t.shape,
        payload_type=t.ptype,
        qp=t.qp,
        step=t.step,
        dq=t.dq,
        levels=t.levels,
        reconstruction=t.recon,
        kept_raw=t.kept_raw,
    )


def _encoder_from(settings: EncoderSettings, state: "EncoderState | None") -> "Encoder":
    return Encoder(settings=settings, state=state)


class EncodeCache:
    """NDUs kept between encodes, for sweeps that change a few tensors at a time.

    :meth:`Encoder.encode` with ``cache=`` reuses a unit when the same array objects (by
    identity, not by value) are coded with the same per-tensor settings: qp, λ, and every
    encoder option that changes a unit's bytes (``importance`` and ``sigmas`` arrays also by
    identity). The input arrays must not change in place while the cache is in use; the
    levels and reconstructions of results are shared with the cache and read-only. The
    DC-v2 search (:func:`nnc.search.search`) uses one per worker. The least recently used
    units go first once their arrays and bytes exceed ``max_bytes``. It also keeps the
    factors of ``covariances`` matrices (spec A.16; an O(n³) step per matrix), by identity, in
    a quarter of ``max_bytes`` (:class:`~nnc.encoding.feedback.FactorCache`).

    Parameters
    ----------
    max_bytes : int
        Memory budget of the kept units (levels, reconstructions and NDU bytes).

    Returns
    -------
    EncodeCache
        An empty cache.

    Raises
    ------
    nnc.errors.EncodeError
        If ``max_bytes`` is not an integer >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = {"a": rng.normal(size=(64, 64)), "b": rng.normal(size=(64, 64))}
    >>> cache = EncodeCache()
    >>> s1 = Encoder(qp=-20).encode(t, cache=cache).stream
    >>> s2 = Encoder(qp=-20, qp_per_tensor={"b": -16}).encode(t, cache=cache).stream   # "a" reused
    >>> s2 == Encoder(qp=-20, qp_per_tensor={"b": -16}).encode(t).stream
    True
    >>> cache.hits, cache.misses
    (1, 3)
    """

    def __reduce__(self):
        raise TypeError("an EncodeCache cannot be pickled: it keeps units by the identity of arrays in this process")

    def __init__(self, max_bytes: int = 1 << 30):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise EncodeError(f"max_bytes must be an integer >= 0, not {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._units = SizedLRU(self.max_bytes)  # lookup key -> (arrays, unit); the arrays keep the ids unique
        #: the covariances' factors, shared by every encode that uses this cache
        self.factors = FactorCache(self.max_bytes // 4)

    #: a unit key ends with this many tuples of arrays: the tensors, then importance, sigmas and covariances
    _ARRAY_FIELDS = 4

    def _lookup_key(self, key: tuple) -> tuple:
        # the arrays are compared by identity; the entry keeps them alive so that ids stay unique
        head, arrays = key[: -self._ARRAY_FIELDS], key[-self._ARRAY_FIELDS]
        return head + (tuple(id(a) for a in arrays),)

    def _arrays(self, key: tuple) -> tuple:
        return sum(key[-self._ARRAY_FIELDS :], ())

    def _get(self, key: tuple):
        k = self._lookup_key(key)
        entry = self._units.get(k)
        if entry is None or any(a is not b for a, b in zip(entry[0], self._arrays(key))):
            self.misses += 1
            return None
        self._units.put(k, entry, entry[1].nbytes())  # counted anew: payloads built since it was kept
        self.hits += 1
        return entry[1]

    def _put(self, key: tuple, unit: Unit) -> None:
        for t in unit.members:  # shared by every result served from the cache
            for array in t.arrays():
                array.setflags(write=False)
        k = self._lookup_key(key)
        self._units.put(k, (self._arrays(key), unit), unit.nbytes())

    def clear(self) -> None:
        """Forget every unit.

        Returns
        -------
        None

        Examples
        --------
        >>> c = EncodeCache(); c.clear(); len(c)
        0
        """
        self._units.clear()
        self.factors = FactorCache(self.max_bytes // 4)

    def __len__(self) -> int:
        return len(self._units)


def scan_permutation(height: int, width: int, scan_order: int) -> np.ndarray:
    """Flat row-major indices in scan order (spec 11.2).

    Parameters
    ----------
    height, width : int
        The tensor as a matrix (height = dims[0]).
    scan_order : int
        0 = row-major; 1..4 = blocks of (4 << scan_order) squared.

    Returns
    -------
    numpy.ndarray
        ``x.reshape(-1)[perm]`` is the tensor in coding order.

    Examples
    --------
    >>> scan_permutation(2, 16, 1)[:10].tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 16, 17]
    """
    return get_engine().scan_permutation(height, width, scan_order)


def encode(tensors: Mapping[str, object], *, qp: int | None = None, dq: bool | None = None, **options) -> bytes:
    """Encode a mapping of name to array into an NNC stream (bytes).

    Parameters
    ----------
    tensors : mapping of str to array-like
        Named arrays, coded in this order.
    qp : int, optional
        Global quantisation parameter (spec 12.1); default -38.
    dq : bool, optional
        Dependent quantisation (default True).
    **options
        Any other :class:`Encoder` option, or ``settings=`` (an
        :class:`~nnc.encoding.settings.EncoderSettings`, given alone).

    Returns
    -------
    bytes
        The NNC unit stream.

    Raises
    ------
    nnc.errors.EncodeError
        For invalid tensors or options.

    Examples
    --------

    >>> import nnc
    >>> import numpy as np
    >>> stream = nnc.encode({"w": np.array([[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]], np.float32)}, qp=-8, dq=False)
    >>> ndu = nnc.container.parse_stream(stream)[-1]  # after the topology unit, which announces "w" (spec 3.5)
    >>> stream[ndu.offset:].hex()  # byte for byte what NNCodec 2.1.3 writes for this tensor
    '001516097700d040c120a0c2a080f74e801f67e2f0'
    """
    given = {k: v for k, v in (("qp", qp), ("dq", dq)) if v is not None}
    encoder = Encoder(**given, **options)
    result = encoder.encode(tensors)
    _warn_after_encode(encoder, result, tensors)
    return result.stream


def encode_with_reconstruction(tensors: Mapping[str, object], **options) -> EncodeResult:
    """Encode and also return the exact reconstruction any conforming decoder will produce.

    Parameters
    ----------
    tensors : mapping of str to array-like
        Named arrays.
    **options
        :class:`Encoder` options.

    Returns
    -------
    EncodeResult

    Raises
    ------
    nnc.errors.EncodeError
        For invalid tensors or options.

    Examples
    --------
    >>> import numpy as np
    >>> res = encode_with_reconstruction({"w": np.full((2, 2), 0.3, np.float32)}, qp=-12, dq=False)
    >>> res.reconstruction["w"].tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    from .torch import numpy_inputs

    tensors, dtypes = numpy_inputs(tensors, options.pop("dtypes", None))  # torch tensors, bf16 kept
    return Encoder(**options, **({"dtypes": dtypes} if dtypes is not None else {})).encode(tensors)


__all__ = [
    "Encoder",
    "EncoderState",
    "EncodeCache",
    "EncodeResult",
    "EncodedTensor",
    "encode",
    "encode_with_reconstruction",
    "qp_for_step",
    "dcv1_step",
    "scan_permutation",
    "default_scan_order",
]
