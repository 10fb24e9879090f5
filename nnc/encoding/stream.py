"""The streaming encoder: a lazily read model in, an NNC stream file out, in bounded memory.

The head (start unit, model parameter set, topology unit) is planned from the
settings and the tensors' headers alone; then each NDU goes to the output file
as soon as its turn in stream order comes, with at most ``threads`` units (and
a byte budget) in flight.  The file appears atomically: it is written to a
temporary file in the same folder and renamed at the end (removed on error).
The stream is byte for byte the one :meth:`nnc.encoder.Encoder.encode` returns
for the same tensors.

Examples
--------
>>> import numpy as np, tempfile, os, nnc
>>> from nnc.encoder import Encoder
>>> from nnc.readers import source_from_mapping
>>> w = {"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "n": np.int64(3)}
>>> out = os.path.join(tempfile.mkdtemp(), "m.nnr")
>>> summary = Encoder(qp=-20).encode_to(source_from_mapping(w), out)
>>> open(out, "rb").read() == Encoder(qp=-20).encode(w).stream, summary.tensors, summary.weights
(True, 2, 65)
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np

from .. import narrow_floats
from .._files import AtomicFile
from .._threads import in_order_in_flight
from ..errors import EncodeError
from ..measure import error_sums, snr_db
from ..reconstruction import DECOMPRESSED_DATA_FORMATS
from .quantiser import RESTORABLE_FORMATS, exact_qp
from .settings import check_tensor_name, qp_offset_fits
from .writer import (
    UnitWriter,
    block_groups,
    block_members,
    differences_without_a_model,
    metadata_json,
    mps_qp,
    tied_tensors,
    ties_of,
)

#: Default budget of the tensors in flight (their float32 size): at least one unit is always in flight.
DEFAULT_BUDGET = 1 << 30


#: A float tensor coded with an SNR under this many dB kept little of its signal: ``nnc encode`` warns.
COARSE_SNR_DB = 10.0


@dataclass
class StreamSummary:
    """What :meth:`nnc.encoder.Encoder.encode_to` wrote.

    Attributes
    ----------
    path : str
        The stream file.
    stream_bytes : int
        Its size.
    tensors, weights : int
        Number of tensors and of their elements.
    original_bytes : int
        The model's size in its original dtypes (bfloat16: 2 bytes per weight).
    energy, error : float
        Sum of squares of the float weights and of their quantisation errors (with ``measure=True``;
        else both are NaN).
    qps : dict
        {name: qp} of the quantised tensors.
    skipped : list
        Tensors of an update left out because they are all zero (spec 7.7).
    kept_raw : list
        Tensors that could not be quantised (inf or NaN, or values beyond int32 levels at
        their qp), stored exactly in RAW_FLOAT NDUs (spec 7.5); ``kept_raw_reasons`` says why.
    zeroed : list
        Float tensors, and integer ones coded lossily, whose quantisation kept none of their signal (error ≥ energy > 0:
        typically every weight rounds to zero at their qp, so they decode as zeros);
        measured with ``measure=True`` only.
    coarse : dict
        {name: SNR in dB} of the float tensors that kept little of their signal: an SNR
        under :data:`nnc.encoding.stream.COARSE_SNR_DB` but above 0 dB (half their scales zeroed, say);
        measured with ``measure=True`` only.
    float32_precision : list
        float64 tensors that keep only float32 precision, their errors beyond what the step or
        float64 would give; measured with
        ``measure=True`` only.
    left_out : list
        Entries of the model file that are not encoded (:attr:`nnc.readers.ModelSource.left_out`;
        filled by :func:`nnc.models.encode_model_to`).
    tied : dict
        {name: coded tensor} of the tensors stored once for two names (tied weights, spec 6.2.1); ``tensors``
        counts them, ``weights`` does not.
    seconds : float
        Wall time.
    """

    path: str
    stream_bytes: int = 0
    tensors: int = 0
    weights: int = 0
    original_bytes: int = 0
    energy: float = 0.0
    error: float = 0.0
    relative_error: float = 0.0
    relative_weights: int = 0
    qps: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    kept_raw: list = field(default_factory=list)
    kept_raw_reasons: dict = field(default_factory=dict)
    zeroed: list = field(default_factory=list)
    coarse: dict = field(default_factory=dict)
    float32_precision: list = field(default_factory=list)
    left_out: list = field(default_factory=list)
    tied: dict = field(default_factory=dict)
    seconds: float = 0.0

    def add_error(self, name: str, energy: float, error: float, total: bool = True, size: int = 0) -> None:
        """Count a float tensor's energy and quantisation error (``measure=True``); with ``total`` false (an integer
        tensor coded lossily) only to tell whether it kept its signal, not in the float weights' SNR. A tensor kept
        exactly (no error) is left out of the SNR: its energy would raise it with no error to weigh against (a
        causal mask, a constant of -1e4). ``size`` (its elements) counts it in :attr:`relative_snr_db`."""
        if total and error > 0:
            self.energy += energy
            self.error += error
        if total and size and energy > 0:
            self.relative_error += size * error / energy
            self.relative_weights += size
        if error >= energy > 0:
            self.zeroed.append(name)
        elif coarse_snr_db(energy, error) is not None:
            self.coarse[name] = 10 * math.log10(energy / error)

    @property
    def snr_db(self) -> float:
        """Weight SNR 10 log10(energy / error) over the float tensors coded with some error (NaN when not
        measured; inf when every one is exact)."""
        if math.isnan(self.error) or math.isnan(self.energy):
            return math.nan
        return snr_db(self.energy, self.error)

    @property
    def relative_snr_db(self) -> float:
        """The weights' SNR each against its own tensor's scale, what ``--target-snr`` targets (spec A.11): 10
        log10 of 1 over the mean, over the float tensors' weights, of their tensor's error / energy (NaN when not
        measured)."""
        if not self.relative_weights or math.isnan(self.error):
            return math.nan
        return snr_db(1.0, self.relative_error / self.relative_weights)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.stream_bytes / max(self.weights, 1)

    @classmethod
    def of_result(cls, output, result, source) -> "StreamSummary":
        """The summary of a stream coded in memory (an :class:`~nnc.encoder.EncodeResult`) from the model ``source``
        (:class:`nnc.readers.ModelSource`) and written to ``output``: its tied tensors' weights counted once."""
        coded = result.tensors
        return cls(
            path=os.fspath(output),
            stream_bytes=len(result.stream),
            tensors=len(source),
            weights=sum(t.size for t in source if t.name not in result.tied),
            original_bytes=getattr(source, "nbytes", 0),
            tied=dict(result.tied),
            qps={k: t.qp for k, t in coded.items() if t.qp is not None},
            skipped=list(result.skipped),
            kept_raw=[k for k, t in coded.items() if t.kept_raw is not None],
            kept_raw_reasons={k: t.kept_raw for k, t in coded.items() if t.kept_raw is not None},
            left_out=list(getattr(source, "left_out", [])),
        )

    @property
    def ratio(self) -> float:
        """How many times smaller than the model in its original dtypes."""
        return self.original_bytes / max(self.stream_bytes, 1)


def coarse_snr_db(energy: float, error: float) -> float | None:
    """The SNR in dB of a tensor coded with this energy and error when it kept little of its signal: above 0 dB (at
    0 dB or under it kept none) and under :data:`COARSE_SNR_DB`; else None.

    Examples
    --------
    >>> round(coarse_snr_db(1.0, 0.25), 2), coarse_snr_db(1.0, 0.01), coarse_snr_db(1.0, 1.0)
    (6.02, None, None)
    """
    if not 0 < error < energy:
        return None
    snr = 10 * math.log10(energy / error)
    return snr if snr < COARSE_SNR_DB else None


def predicted(settings, t, in_block: bool) -> tuple:
    """(decoded dtype name, qp) the quantiser will give tensor ``t`` (a LazyTensor), from its
    header alone; (None, None) when that depends on the values (codebooks, DC-v1 sigmas)."""
    s = settings
    kind = np.dtype(t.dtype).kind
    fmt = s.output_formats.get(t.name)
    if kind in "iub" and s.lossless_int and not in_block:
        return (DECOMPRESSED_DATA_FORMATS[fmt].name if fmt is not None else "int32"), None
    restorable = s.keep_dtype and s.profile == 1 and t.dtype in RESTORABLE_FORMATS
    natural = t.dtype if restorable else "float32"
    if fmt is not None:
        natural = DECOMPRESSED_DATA_FORMATS[fmt].name
    if s.is_raw(t.name) and not in_block:
        return natural, None
    float8 = s.exact_float8(t.name, t.original_dtype)
    if float8 is not None:  # (never in a block)
        return "float64", exact_qp(float8, s.qp_density)  # a codebook at this qp or coarser (A.17), or raw
    if t.name in s.sigmas or (s.codebook_from_values and not in_block):
        return None, None
    return natural, s.tensor_qp(t.name, len(t.shape))


def finer_than_planned(settings, name: str, t, planned: tuple) -> bool:
    """Whether coded tensor ``t`` took a finer qp than ``planned`` (dtype, qp) to keep its SNR (spec A.7)."""
    return (
        t.qp is not None and planned[1] is not None and t.qp < planned[1] and settings.floors_nonweight(name, t.shape)
    )


def _planned(settings, tensors: list, incremental: bool, tied: Mapping = MappingProxyType({})) -> tuple:
    """A stream's plan from its tensors' headers: (the tensors coded by name, the block groups, the members of blocks
    other than their weights, each coded tensor's predicted (decoded dtype, qp)); names and options checked. The
    ``tied`` tensors (:func:`~nnc.encoding.writer.tied_tensors`) are not coded."""
    for t in tensors:
        check_tensor_name(t.name)
    settings.check_names({t.name for t in tensors})
    tensors = [t for t in tensors if t.name not in tied]
    by_name = {t.name: t for t in tensors}
    groups = block_groups(
        settings.blocks,
        {t.name: t.shape for t in tensors},
        settings,
        {t.name: t.dtype for t in tensors},
        incremental=incremental,
        originals={t.name: t.original_dtype for t in tensors},
    )
    in_block = {m for w, p in groups.items() for m in block_members(w, p)[1:]}
    plan = {t.name: predicted(settings, t, t.name in in_block or t.name in groups) for t in tensors}
    return by_name, groups, in_block, plan


def encode_to(
    encoder, source, output, *, progress=None, extra_metadata=None, budget: int = DEFAULT_BUDGET, measure: bool = False
) -> StreamSummary:
    """Encode ``source`` (a :class:`nnc.readers.ModelSource`) into the file ``output``.

    See :meth:`nnc.encoder.Encoder.encode_to`.
    """
    from ..encoder import _extra_metadata, float32_precision_lost

    s, state = encoder.settings, encoder.state
    extra_metadata = _extra_metadata(extra_metadata)
    t0 = time.perf_counter()
    if state is not None:
        return _encode_update_to(
            encoder,
            source,
            output,
            progress=progress,
            extra_metadata=extra_metadata,
            measure=measure,
            budget=budget,
            t0=t0,
        )
    tensors = list(source)
    shares = {t.name: t.same_as for t in tensors if t.same_as is not None}
    tied = tied_tensors(shares, s, {t.name: len(t.shape) for t in tensors})
    by_name, groups, in_block, plan = _planned(s, tensors, incremental=False, tied=tied)
    exact = {t.name for t in tensors if s.exact_float8(t.name, t.original_dtype)}
    if any(dtype is None for dtype, _ in plan.values()):
        raise EncodeError(
            "codebooks and DC-v1 sigmas choose per tensor from the values: use Encoder.encode (in memory) for them"
        )
    original = {t.name: s.dtypes.get(t.name, t.original_dtype) for t in tensors}
    stream_qp = mps_qp([qp for _, qp in plan.values() if qp is not None], s.qp_density)
    writer = UnitWriter(s, encoder.engine, None)
    metadata = metadata_json(
        {t.name: t.shape for t in tensors},
        {k: v[0] for k, v in plan.items()},
        original,
        extra_metadata,
        groups=groups,
        tied=tied,
    )
    tied_names = ties_of(tied)
    units = [name for name in by_name if name not in in_block]
    kept_raw: dict = {}
    narrowed: set = set()  # float64 tensors that keep only float32 precision (measured only)
    summary = StreamSummary(
        path=os.fspath(output),
        tensors=len(tensors),
        weights=sum(t.size for t in by_name.values()),  # (a tied tensor's are its coded tensor's)
        original_bytes=source.nbytes if hasattr(source, "nbytes") else 0,
        tied=dict(tied),
    )
    if not measure:
        summary.energy = summary.error = math.nan

    def load(name):
        x = by_name[name].load()
        if tuple(x.shape) != tuple(by_name[name].shape):
            raise EncodeError(f"tensor {name!r} has shape {x.shape}, its header says {by_name[name].shape}")
        return x

    def measure_member(n, x, t, stats):
        """Record member ``n``'s (energy, error) as coded in ``t``, against the values the decoded model's file holds."""
        narrowed.discard(n)
        if measure and x.dtype.kind == "f":
            stats[n] = error_sums(x, t.recon, stored_as=s.dtypes.get(n, by_name[n].original_dtype))[:2]
            if float32_precision_lost(x, t.levels, t.step, t.recon, t.kept_raw, s.is_raw(n)):
                narrowed.add(n)
        elif measure and t.levels is not None and t.step is not None:  # integers coded lossily (--no-lossless-int)
            stats[n] = (*error_sums(x, t.recon, rounded=True)[:2], False)
            if float32_precision_lost(x, t.levels, t.step, t.recon, t.kept_raw, s.is_raw(n)):
                narrowed.add(n)

    def quantise(name):
        """The unit of ``name`` (its block members too), and each member's (energy, error). Each member is
        measured as soon as it is quantised, and its values and reconstruction let go: what stays in flight is
        its integers (read again only if raw storage could be smaller)."""
        members = [name] if name not in groups else block_members(name, groups[name])
        coded, stats = {}, {}
        for n in members:
            x = load(n)
            t = encoder.quantiser.quantise(
                n,
                x,
                in_block=name in groups and s.blocks != "auto",
                dq=s.tensor_dq(name),
                original_dtype=by_name[n].original_dtype,
            )
            if t.kept_raw is not None:  # stored exactly, with the dtype planned (the MPS qp stays)
                kept_raw[n] = t.kept_raw
            elif (
                (t.recon.dtype.name, t.qp) != plan[n]
                and not (n in exact and t.recon.dtype.name == plan[n][0] and t.qp >= plan[n][1])
                and not (
                    (t.kept_exact or finer_than_planned(s, n, t, plan[n]))
                    and t.recon.dtype.name == plan[n][0]
                    and qp_offset_fits(t.qp, stream_qp, s.qp_density)
                )
            ):  # (coded exactly: a float8 tensor at the plan's qp or coarser, spec A.17; whole numbers at qp 0, A.7;
                # a tensor of at most one dimension finer, to keep its SNR, A.7)
                raise EncodeError(
                    f"tensor {n!r}: coded as {t.recon.dtype.name} at qp {t.qp}, planned {plan[n]}"
                )  # the head written would be wrong
            measure_member(n, x, t, stats)
            t.forget_reconstruction()
            coded[n] = t
            del x
        values = {n: functools.partial(load, n) for n in members}  # raw_when_smaller stores these values
        if name in groups:
            unit = writer.group_unit(name, groups[name], coded, values)
        else:
            unit = writer.single_unit(writer.raw_if_smaller(coded[name], values[name]))
        for t in unit.members:
            if t is not coded[t.name]:  # stored raw as the smaller: measured as stored
                measure_member(t.name, load(t.name), t, stats)
        return unit, stats

    def job(name):
        unit, stats = quantise(name)
        return unit, stats, unit.build(stream_qp)

    out = AtomicFile(output)
    try:
        for part in writer.head(stream_qp, metadata, False):
            out.fh.write(part)

        def cost(name):
            members = [name] if name not in groups else block_members(name, groups[name])
            return sum(4 * by_name[n].size for n in members)

        def record(unit, stats):
            for t in unit.members:
                if t.qp is not None:
                    summary.qps[t.name] = t.qp
                if measure:
                    summary.add_error(t.name, *stats.get(t.name, (0.0, 0.0)), size=by_name[t.name].size)
                if progress is not None:
                    progress(t.name, by_name[t.name].size)
                    for tie in tied_names.get(t.name, ()):
                        progress(tie, by_name[t.name].size)

        with contextlib.closing(in_order_in_flight(units, job, cost, budget, s.threads)) as results:
            for _, (unit, stats, data) in results:
                out.fh.write(data)
                record(unit, stats)
                del unit, data, stats  # (before the next tensor is loaded)
        summary.stream_bytes = out.fh.tell()
        summary.kept_raw = [n for n in by_name if n in kept_raw]
        summary.kept_raw_reasons = {n: kept_raw[n] for n in summary.kept_raw}
        summary.float32_precision = [n for n in by_name if n in narrowed]
        out.commit()
    except BaseException:
        out.discard()
        raise
    summary.seconds = time.perf_counter() - t0
    return summary


def _encode_update_to(encoder, source, output, *, progress, extra_metadata, measure, budget, t0) -> StreamSummary:
    """A stream with an encoder state (spec 14): tensor by tensor (:func:`_encode_update_streaming`), or in memory
    where the stream's qp cannot be planned from the headers (codebooks, DC-v1 sigmas)."""
    from ..encoder import _STATEFUL

    tensors = list(source)
    # the file's own dtypes (bfloat16, float8: read as float32) are recorded, float8 coded exactly, as in a full stream
    originals = {t.name: t.original_dtype for t in tensors if t.original_dtype not in (None, t.dtype)}
    if any(k not in encoder.settings.dtypes for k in originals):
        dtypes = {**originals, **encoder.settings.dtypes}
        encoder = type(encoder)(state=encoder.state, settings=encoder.settings.replace(dtypes=dtypes))
    with _STATEFUL:  # (each update names the one before it)
        summary = _encode_update_streaming(encoder, source, tensors, output, progress, extra_metadata, budget)
        if summary is None:
            summary = _encode_update_in_memory(encoder, source, tensors, output, progress, extra_metadata)
    summary.energy = summary.error = math.nan
    summary.seconds = time.perf_counter() - t0
    return summary


def _encode_update_in_memory(encoder, source, tensors, output, progress, extra_metadata) -> StreamSummary:
    """An update coded in memory (:meth:`nnc.encoder.Encoder.encode`) and written atomically."""
    from ..formats import write_atomic

    arrays = {t.name: t.load() for t in tensors}
    result = encoder.encode(arrays, progress, extra_metadata=extra_metadata)
    write_atomic(output, result.stream)
    return StreamSummary.of_result(output, result, source)


def _encode_update_streaming(
    encoder, source, tensors, output, progress, extra_metadata, budget: int
) -> StreamSummary | None:
    """A stream with an encoder state, byte for byte what :meth:`nnc.encoder.Encoder.encode` writes, in memory
    bounded by the tensors in flight: each unit is quantised against the state's arrays of its own tensors (read
    one at a time, see :meth:`nnc.decoder.DecoderState.spill_to`), built and written to a temporary file; the head,
    which announces the skipped tensors (spec 3.5), is written once every unit is, then the units after it. The
    state moves on a copy of its containers, put in place only when the stream is complete.

    None, with nothing written and the state unchanged, when the stream's qp cannot be planned from the tensors'
    headers (codebooks, DC-v1 sigmas) or turns out other than planned: the caller then codes it in memory."""
    import tempfile

    from ..decoder import apply_update
    from ..encoder import FULL_VALUES_NOTE, _difference, _warn, code_unit, unit_with_finite_sums

    s, state = encoder.settings, encoder.state
    by_name, groups, in_block, plan = _planned(s, tensors, incremental=True)
    if any(dtype is None for dtype, _ in plan.values()):
        return None
    try:
        stream_qp = mps_qp([qp for _, qp in plan.values() if qp is not None], s.qp_density)
    except EncodeError:
        return None  # (the in-memory encode says so, or codes it)
    differences = encoder._sends_differences()
    if differences_without_a_model(s.differences, state):
        _warn(FULL_VALUES_NOTE, UserWarning)
    staged = state._staged_copy()  # the state as this stream moves it, put in place at the end
    writer = UnitWriter(s, encoder.engine, staged)
    update = writer.is_update(by_name)
    # (as the in-memory encode records them: the dtypes of the values coded, differences' own)
    original_dtypes = {k: s.dtypes.get(k, t.dtype) for k, t in by_name.items()}
    narrow = {k: v for k, v in original_dtypes.items() if narrow_floats.is_narrow(v)}
    names = [t.name for t in tensors if t.name not in in_block]
    encoded: dict[str, _Coded] = {}
    replaced: list[str] = []
    skipped: list[str] = []

    def load(name) -> np.ndarray:
        x = by_name[name].load()
        if tuple(x.shape) != tuple(by_name[name].shape):
            raise EncodeError(f"tensor {name!r} has shape {x.shape}, its header says {by_name[name].shape}")
        return np.asarray(x)

    def value(name, whole: list, deltas: set) -> np.ndarray:
        """The tensor, or its difference to the receiver's (its name in ``deltas``; ``whole``: the names sent whole
        instead)."""
        x = load(name)
        held = state.model.get(name) if s.differences else None
        delta = x if held is None else _difference(x, held)
        if delta is None:
            whole.append(name)
            delta = x
        elif held is not None:
            deltas.add(name)
        return delta

    def quantise(name):
        """(the unit of ``name`` and its block's members, the names sent whole, {name: dtype of the values coded})."""
        whole: list[str] = []
        deltas: set[str] = set()
        members = [name] if name not in groups else block_members(name, groups[name])
        arrays = {n: value(n, whole, deltas) for n in members}

        def code():
            return code_unit(encoder.quantiser, writer, name, groups, arrays, deltas)

        unit = unit_with_finite_sums(code, arrays, deltas, whole, state.model, load, narrow)
        return unit, whole, {n: a.dtype.name for n, a in arrays.items()}

    def cost(name):
        members = [name] if name not in groups else block_members(name, groups[name])
        return sum(4 * by_name[n].size for n in members)

    def code_units(units_file) -> None:
        """Each unit quantised (in threads), linked to the state, built into ``units_file`` and entered into the
        staged state (and the receiver's model), in stream order."""
        with contextlib.closing(in_order_in_flight(names, quantise, cost, budget, s.threads)) as results:
            for _, (unit, whole, coded_dtypes) in results:
                replaced.extend(whole)
                original_dtypes.update({k: s.dtypes.get(k, v) for k, v in coded_dtypes.items()})
                link = writer.link(unit, update)
                assert link is not None  # (a state is given)
                if link.skip:
                    skipped.extend(t.name for t in unit.members)
                else:
                    units_file.write(unit.build(stream_qp, link))
                writer.advance_state(unit, link)
                record(unit, link.skip)
                del unit  # (before the next tensor is loaded)

    def record(unit, skipped: bool) -> None:
        """A unit's tensors' qps and dtypes kept for the head; their reconstructions added to the staged model."""
        for t in unit.members:
            encoded[t.name] = _Coded(t.qp, t.kept_raw, t.recon.dtype.name)
            if s.differences and not skipped:
                held = staged.model.get(t.name)
                staged.model[t.name] = apply_update(
                    {t.name: held} if held is not None else {},
                    {t.name: t.recon},
                    check_parent=False,
                    replaced=[t.name] if t.name in replaced else [],
                    narrow=narrow,
                )[t.name]
            if progress is not None:
                progress(t.name, by_name[t.name].size)

    def head_metadata() -> str:
        """nnc's topology metadata (spec 6.2.1), known once every unit is coded: the skipped and replaced tensors,
        the dtypes, the parent's digest."""
        decoded_dtypes = {k: t.decoded_dtype for k, t in encoded.items()}
        parent = encoder._parent_digest(decoded_dtypes, original_dtypes, narrow)
        return metadata_json(
            {t.name: t.shape for t in tensors},
            decoded_dtypes,
            original_dtypes,
            dict(
                extra_metadata or {},
                **({"parent": parent} if parent else {}),
                **({"replaced": replaced} if replaced else {}),
            ),
            skipped=skipped,
            differences=differences,
            groups=groups,
        )

    out = AtomicFile(output)
    before = state._containers()
    try:
        with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(output))) as units_file:
            code_units(units_file)
            if mps_qp([t.qp for t in encoded.values() if t.qp is not None], s.qp_density) != stream_qp:
                out.discard()
                return None  # (planned otherwise: the head would be wrong)
            for part in writer.head(stream_qp, head_metadata(), update):
                out.fh.write(part)
            units_file.seek(0)
            shutil.copyfileobj(units_file, out.fh, 1 << 20)
        summary = StreamSummary(
            path=os.fspath(output),
            stream_bytes=out.fh.tell(),
            tensors=len(tensors),
            weights=sum(t.size for t in tensors),
            original_bytes=source.nbytes if hasattr(source, "nbytes") else 0,
            qps={k: t.qp for k, t in encoded.items() if t.qp is not None},
            skipped=skipped,
            kept_raw=[k for k, t in encoded.items() if t.kept_raw is not None],
            kept_raw_reasons={k: t.kept_raw for k, t in encoded.items() if t.kept_raw is not None},
        )
        state._set_containers(staged._containers())  # before the output's rename: a --state file is written then
        out.commit()
    except BaseException:
        state._set_containers(before)
        out.discard()
        raise
    return summary


class _Coded(NamedTuple):
    """What a stream's head and summary need of a coded tensor, once its arrays are gone."""

    qp: int | None
    kept_raw: str | None
    decoded_dtype: str


__all__ = ["encode_to", "StreamSummary", "DEFAULT_BUDGET", "COARSE_SNR_DB"]
