"""The unit writer (informative): coded tensors in, NNC units out (spec 7, 8).

It groups tensors into NDUs (single or BLOCK), builds their headers and CABAC
payloads, chooses the model parameter set's qp, writes nnc's topology
metadata, and tracks how each NDU of an incremental stream relates to the
receiver's state (:class:`Link`, spec 14).

Examples
--------
>>> import numpy as np
>>> from nnc.engine import get_engine
>>> from nnc.encoding.settings import EncoderSettings
>>> from nnc.encoding.quantiser import Quantiser
>>> from nnc.encoding.writer import UnitWriter
>>> settings = EncoderSettings(qp=-8, dq=False)
>>> t = Quantiser(settings, get_engine()).quantise("w", np.array([[0.0, 0.5, -0.25], [1.0, 0.0, 0.0]], np.float32))
>>> writer = UnitWriter(settings, get_engine())
>>> head = writer.head(mps_qp=0, metadata="")
>>> unit = writer.single_unit(t)
>>> (b"".join(head) + unit.build(0)).hex()
'00040201000806810040008000060e000000001516097700d040c120a0c2a080f74e801f67e2f0'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .. import container as C
from .._parallel import row_threads
from ..array_store import size_of
from ..decoder import Limits, _payload_digests, _weights_before_biases
from ..errors import EncodeError
from .quantiser import FLOAT32_FORMAT, CodedTensor, float32_holds
from .settings import EncoderSettings, matches, qp_offset_fits


def block_members(weight: str, parts: Mapping) -> list[str]:
    """The tensors of a block: the weight, then its scaling, bias and batch-norm tensors that are given."""
    return [weight] + [parts[k] for k in ("scaling", "bias") if parts.get(k)] + list(parts.get("bn", []))


def block_groups(
    blocks,
    shapes: Mapping[str, tuple],
    settings: EncoderSettings | None = None,
    dtypes=None,
    incremental=False,
    originals: Mapping[str, str] | None = None,
) -> dict[str, dict]:
    """Which tensors go into BLOCK NDUs with which weight (spec 7.6), from the tensors' shapes.

    ``blocks="auto"`` (the default) pairs as ``True`` does, but only where NNCodec forms the
    same blocks and nothing asks for a tensor on its own: not in incremental streams
    (``incremental``), not with codebooks, and only a float ``X.weight`` directly followed by
    its ``X.bias`` (the decoded order then differs from the model's only in that the bias comes
    just before its weight, spec 15.3), of one dtype (``dtypes``: name -> dtype), that neither
    ``raw``, ``sigmas`` nor ``output_formats`` of ``settings`` name. The values can still split such a pair
    (:meth:`UnitWriter.group_unit`). ``blocks=True`` pairs no tensor that ``raw`` names (a raw tensor is
    stored exactly); a mapping that names one is an :class:`~nnc.errors.EncodeError`. Neither pairs a float8
    tensor (coded exactly, spec A.17; ``originals``: name -> the dtype its file holds, where the settings' ``dtypes``
    do not say it); a mapping that names one is an error too.

    Examples
    --------
    >>> block_groups(True, {"fc.weight": (4, 3), "fc.bias": (4,), "out.weight": (2, 4)})
    {'fc.weight': {'bias': 'fc.bias'}}
    """
    if not blocks:
        return {}
    groups: dict[str, dict] = {}
    raw = settings.raw if settings is not None else ()
    originals = originals or {}
    exact = {n for n in shapes if settings is not None and settings.exact_float8(n, originals.get(n))}
    if settings is None or settings.lossless_int:  # integer tensors are coded losslessly, as INT (spec 7.4)
        exact |= {n for n, d in (dtypes or {}).items() if n in shapes and _kind(d) in "iub"}

    def apart(name):
        """A tensor stored exactly, on its own: raw, float8 or (with lossless_int) integer."""
        return matches(name, raw) or name in exact

    if blocks is True or blocks == "auto":
        for name, shape in shapes.items():
            if name.endswith(".weight") and len(shape) >= 2:
                bias = name[: -len("weight")] + "bias"
                either_raw = apart(name) or apart(bias)
                if bias in shapes and tuple(shapes[bias]) == (shape[0],) and not either_raw:
                    groups[name] = {"bias": bias}
        if blocks == "auto":
            after = dict(zip(shapes, list(shapes)[1:]))  # adjacent pairs only: the decoded order stays close
            groups = {
                w: p
                for w, p in groups.items()
                if after.get(w) == p["bias"] and _auto_pair(w, p["bias"], settings, dtypes, incremental)
            }
    else:
        groups = {k: dict(v) for k, v in blocks.items()}
    for weight, parts in groups.items():
        unknown = sorted(set(parts) - {"scaling", "bias", "bn"}, key=str)
        if unknown or not any(parts.get(k) for k in ("scaling", "bias", "bn")):
            raise EncodeError(
                f"blocks[{weight!r}]: "
                + (f"unknown part {unknown[0]!r}" if unknown else "no part given")
                + " (a block's parts are 'scaling', 'bias' and 'bn', spec 7.6)"
            )
        members = block_members(weight, parts)
        named_raw = [m for m in members if matches(m, raw)]
        if named_raw:
            raise EncodeError(f"{named_raw[0]!r} is named by raw, but a BLOCK unit codes its members (spec 7.6)")
        alone = [m for m in members if m in exact]
        if alone:
            raise EncodeError(
                f"{alone[0]!r} is coded exactly on its own ({'integer' if _kind((dtypes or {}).get(alone[0])) in 'iub' else 'float8'}, "
                "spec A.7, A.17), but a BLOCK unit quantises its members at one step (spec 7.6)"
            )
        for m in members:
            if m not in shapes:
                raise EncodeError(f"block member {m!r} of {weight!r} is not among the tensors")
        rows = shapes[weight][0] if len(shapes[weight]) else 1
        for m in members[1:]:
            if tuple(shapes[m]) != (rows,):
                raise EncodeError(f"block member {m!r} must be 1-D of length {rows}, like {weight!r} rows")
        if parts.get("bn") and len(parts["bn"]) != 4:
            raise EncodeError("a block's 'bn' entry lists beta, gamma, mean and var")
    return groups


def _kind(dtype) -> str:
    """numpy's kind letter of a dtype or dtype name; "" for names numpy does not know (bfloat16, float8)."""
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return ""


def _auto_pair(weight: str, bias: str, settings: EncoderSettings | None, dtypes, incremental: bool) -> bool:
    """Whether ``blocks="auto"`` carries ``bias`` in a BLOCK NDU with ``weight``."""
    if settings is None or dtypes is None or incremental or settings.codebook_from_values:
        return False
    kinds = {np.dtype(dtypes[weight]).name, np.dtype(dtypes[bias]).name}
    if len(kinds) != 1 or np.dtype(kinds.pop()).kind != "f":
        return False
    named = (settings.sigmas, settings.output_formats)  # raw: left out by block_groups itself
    return not any(matches(n, patterns) for n in (weight, bias) for patterns in named)


#: Largest block group (in values) whose BLOCK NDU ``blocks="auto"`` compares with the members' own NDUs.
SMALL_BLOCK_ELEMENTS = 4096


def mps_qp(qps, qp_density: int) -> int:
    """The MPS qp: 0 as NNCodec writes, unless the offsets would not fit (spec 8.2).

    Examples
    --------
    >>> mps_qp([-38, -75], 2), mps_qp([-200, -100], 2)
    (0, -150)
    """
    qps = list(qps)
    if not qps:
        return 0
    lo, hi = min(qps), max(qps)
    if qp_offset_fits(lo, 0, qp_density) and qp_offset_fits(hi, 0, qp_density):
        return 0
    centre = (lo + hi + 1) // 2
    if not qp_offset_fits(lo, centre, qp_density) or not qp_offset_fits(hi, centre, qp_density):
        raise EncodeError(
            f"per-tensor qps from {lo} to {hi} span more than the {6 + qp_density}-bit "
            f"qp offsets can carry; raise qp_density or narrow the qps"
        )
    if not -4096 <= centre <= 4095:
        raise EncodeError(f"qp {centre} outside the 13-bit range")
    return centre


def sends_differences(settings, state) -> bool:
    """Whether a stream's tensors are differences (spec 6.2.1): ``differences=True`` and the receiver holds a model
    (the first stream of a sequence carries the values themselves)."""
    return bool(settings.differences and state is not None and state.model)


def differences_without_a_model(differences: bool, state) -> bool:
    """Whether differences are asked for (``differences``) but the state's earlier streams were coded without them:
    it holds no model to take differences to, so the next stream carries full values."""
    return bool(differences and state is not None and state.depths and not state.model)


def metadata_json(
    shapes: Mapping[str, tuple],
    decoded: Mapping[str, str],
    original: Mapping[str, str],
    extra: Mapping | None = None,
    *,
    skipped=(),
    differences: bool = False,
    groups: Mapping[str, dict] | None = None,
    tied: Mapping[str, str] | None = None,
) -> str:
    """nnc's topology metadata (spec 6.2.1): the tensors announced (and skipped, spec 3.5),
    whether they are differences, original shapes of 0-d tensors and original dtypes.

    ``shapes`` are the tensors' original shapes (in the model's order), ``decoded`` the dtype
    name each decodes as, ``original`` the dtype name each had; ``skipped`` names the
    tensors an incremental update leaves out, ``differences`` says the tensors are
    differences to the receiver's model; ``extra`` adds keys (e.g. "checkpoint").
    ``groups`` are the block groups of :func:`block_groups`: given, the tensors are announced
    by their count where that gives the model's order back (:func:`announced_by_count`),
    otherwise by name. ``tied`` ({name: coded tensor}, :func:`tied_tensors`) names the tensors
    the stream does not code, whose values are another's (metadata version 2).

    Examples
    --------
    >>> metadata_json({"w": (2, 2), "n": ()}, {"w": "float32", "n": "int32"}, {"w": "float32", "n": "int64"})
    '{"nnc":{"dtypes":{"n":"int64"},"shapes":{"n":[]},"tensors":["w","n"],"version":1}}'
    """
    tied = tied or {}
    coded = [k for k in shapes if k not in tied]  # (a tied tensor is restored as its coded one)
    zero_d: dict[str, list] = {k: [] for k in coded if len(shapes[k]) == 0}
    dtypes = {k: original[k] for k in coded if original[k] != decoded[k]}
    by_count = groups is not None and not skipped and not tied and announced_by_count(list(shapes), groups)
    meta: dict = {"version": 2 if tied else 1, "tensors": len(shapes) if by_count else list(shapes)}
    if tied:
        meta["tied"] = dict(tied)
    if skipped:
        meta["skipped"] = list(skipped)
    if differences:
        meta["differences"] = True
    if zero_d:
        meta["shapes"] = zero_d
    if dtypes:
        meta["dtypes"] = dtypes
    meta.update(extra or {})
    text = json.dumps({"nnc": meta}, separators=(",", ":"), sort_keys=True)
    if len(text) > Limits.max_metadata_bytes:  # (ASCII: json.dumps escapes the rest)
        raise EncodeError(
            f"the stream's metadata (names, dtypes, file layout of {len(shapes):,} tensors) takes {len(text):,} bytes, "
            f"more than the {Limits.max_metadata_bytes:,} decoders read by default (spec 15.2)"
        )
    return text


def tied_tensors(shares: Mapping[str, str], settings: EncoderSettings, ndims: Mapping[str, int], state=None) -> dict:
    """The tensors coded once for two names (tied weights, spec 6.2.1): {name: the earlier tensor coded for it}.

    ``shares`` maps a tensor to an earlier one whose values it shares (one storage in a .pt file, one array in
    memory: :attr:`nnc.readers.LazyTensor.same_as`); a pair is tied when ``settings.tie_shared`` is on, the two
    get the same options (:meth:`~nnc.encoding.settings.EncoderSettings.codes_alike`), and the stream is not
    part of an incremental sequence (``state``), whose updates name each tensor's parent.

    Examples
    --------
    >>> from nnc.encoding.settings import EncoderSettings
    >>> tied_tensors({"head.weight": "embed.weight"}, EncoderSettings(qp=-30), {"head.weight": 2})
    {'head.weight': 'embed.weight'}
    >>> tied_tensors({"head.weight": "embed.weight"}, EncoderSettings(qp=-30, tie_shared=False), {"head.weight": 2})
    {}
    """
    if not settings.tie_shared or state is not None or settings.differences:
        return {}
    return {
        name: source
        for name, source in shares.items()
        if source != name and source not in shares and settings.codes_alike(name, source, ndims[name])
    }


def ties_of(tied: Mapping[str, str]) -> dict:
    """{coded tensor: the names tied to it, in order}, from ``tied`` ({name: coded tensor}, :func:`tied_tensors`).

    Examples
    --------
    >>> ties_of({"head.weight": "embed.weight", "lm.weight": "embed.weight"})
    {'embed.weight': ['head.weight', 'lm.weight']}
    """
    out: dict = {}
    for name, coded in tied.items():
        out.setdefault(coded, []).append(name)
    return out


def announced_by_count(names: list, groups: Mapping[str, dict]) -> bool:
    """Whether announcing the count of ``names`` (the model's order) is enough (spec 6.2.1):
    every block group is a weight directly followed by its bias alone, and no ``P.bias``
    directly precedes a ``P.weight``. The decoder's order rule (a ``P.bias`` directly before
    ``P.weight`` goes after it) then gives the model's order back, whether a group is coded
    as a BLOCK NDU (bias decoded first, spec 15.3) or as two NDUs.

    Examples
    --------
    >>> announced_by_count(["fc.weight", "fc.bias", "out.weight"], {"fc.weight": {"bias": "fc.bias"}})
    True
    >>> announced_by_count(["fc.bias", "fc.weight"], {})
    False
    """
    at = {n: i for i, n in enumerate(names)}
    for weight, parts in groups.items():
        bias = parts.get("bias")
        if set(parts) != {"bias"} or weight not in at or at.get(bias) != at[weight] + 1:
            return False
    return _weights_before_biases(names) == names  # the decoder's order rule changes nothing


@dataclass
class Link:
    """How one NDU of an incremental stream relates to the receiver's state (spec 14).

    Attributes
    ----------
    update : bool
        The stream is an update (its MPS enables parent signalling).
    parent : bool
        The NDU names a parent (all its coded tensors are known to the receiver).
    tca, hdsp : bool
        Temporal context adaptation / history-dependent probabilities in use (spec 10.5).
    ids : dict
        {tensor name: parameter_id} recorded for the NDU's tensors.
    parameter_id : int
        The NDU's node id (spec 7.4).
    skip : bool
        The NDU is left out (an all-zero update, spec 7.7).
    """

    update: bool
    parent: bool
    tca: bool
    hdsp: bool
    ids: dict
    parameter_id: int
    skip: bool


class Unit:
    """One NDU in the making: its coded members and a builder of its bytes for an MPS qp."""

    __slots__ = ("members", "_build", "_built")

    def __init__(self, members: list[CodedTensor], build):
        self.members = members
        self._build = build
        self._built: dict[int, bytes] = {}

    def build(self, mps_qp: int, link: Link | None = None) -> bytes:
        if link is not None:  # incremental coding: depends on the state, never cached
            return self._build(mps_qp, link)
        if mps_qp not in self._built:
            self._built[mps_qp] = self._build(mps_qp)
        return self._built[mps_qp]

    def nbytes(self) -> int:
        size = sum(len(b) for b in self._built.values())
        for t in self.members:
            size += sum(a.nbytes for a in t.arrays())
        return size


class UnitWriter:
    """Builds the units of one stream under fixed settings; ``state`` for incremental coding.

    Parameters
    ----------
    settings : EncoderSettings
    engine : ``types.ModuleType``
        The entropy-coding engine.
    state : nnc.encoder.EncoderState or None
        The incremental state the links are computed from (and advanced).
    """

    def __init__(self, settings: EncoderSettings, engine, state=None):
        self.settings = settings
        self.engine = engine
        self.state = state
        self._next_id: int | None = None
        self._payload_digests: dict[str, tuple[bytes, bytes]] = {}  # of this stream's NDUs, by tensor
        self._ndu_depths: dict[str, int] = {}  # the put_node_depth of this stream's NDUs, by tensor

    # -- the stream's head ---------------------------------------------------------
    def head(self, mps_qp: int, metadata: str, update: bool = False) -> list[bytes]:
        """The start unit, the model parameter set and the topology unit (spec 7.1-7.3)."""
        s = self.settings
        return [
            C.build_str(s.profile),
            C.build_mps(qp_density=s.qp_density, qp=mps_qp, profile=s.profile, parent_signalling=update),
            C.build_tpl(data=metadata),
        ]

    # -- units -----------------------------------------------------------------------
    def single_unit(self, t: CodedTensor) -> Unit:
        """An NDU of one tensor."""
        s = self.settings

        def build(mps_qp: int, link=None) -> bytes:
            ptype = {"INT": C.NNR_PT_INT, "FLOAT": C.NNR_PT_FLOAT, "RAW_FLOAT": C.NNR_PT_RAW_FLOAT}[t.ptype]
            header = self._header(t, ptype, link=link)
            if t.ptype == "RAW_FLOAT":
                assert t.raw is not None  # RAW_FLOAT tensors carry their float32 values
                payload = t.raw.astype("<f4").tobytes()
            else:
                payload, eps = self._payload([t], mps_qp, link)
                header["entry_points"] = _ep_fields(eps[0], t.dq)
                self._coded_payload([t], payload, link)
            return C.build_ndu(header, payload, profile=s.profile, parent_signalling=bool(link and link.update))

        return Unit([t], build)

    def raw_if_smaller(self, t: CodedTensor, arr) -> CodedTensor:
        """``t`` as RAW_FLOAT when its coded NDU would not be smaller: no tensor costs more than float32.
        ``arr``: the tensor's values, or a function that reads them (called only when raw storage is weighed).

        Only for a coded float tensor that decodes as float32 or as a codebook's float64 (no output
        format, restored dtype or incremental state; raw storage keeps a float32 input's values
        exactly). The coded size is estimated first, by the init-set choice that coding needs anyway (spec A.3, A.4; the sets are kept in ``t`` for coding); both NDUs
        are built (at an MPS qp the tensor's qp offset fits) only for tensors under 64 values
        or when the estimate comes within 25 % of the raw payload.
        """
        s = self.settings
        if (
            not s.raw_when_smaller
            or t.ptype != "FLOAT"
            or t.fmt not in (None, FLOAT32_FORMAT)
            or self.state is not None
            or t.name in s.output_formats
        ):
            return t
        n = int(_levels(t).size)
        kw = self._tensor_kwargs(t)
        if s.param_opt:
            t.init_sets, estimate = self.engine.PayloadEncoder(s.edition).choose_init_sets(
                t.levels,
                t.height,
                t.width,
                row_skip=s.row_skip and not t.dq,
                threads=row_threads(s.threads, n),
                **kw,
            )
        else:
            estimate = self.engine.estimate_tensor_bits(t.levels, t.height, t.width, edition=s.edition, **kw)
        estimate += t.codebook_bits()
        if n >= 64 and estimate / 8 < 0.75 * 4 * n:  # a quarter of 256+ bytes covers any header difference
            return t
        if callable(arr):
            arr = arr()
        f32 = np.asarray(arr, dtype=np.float32).reshape(t.shape)
        if not float32_holds(arr, f32):  # integers beyond 2^24 (coded lossily): float32 would change them
            return t
        raw = CodedTensor.raw_float(t.name, f32, t.height, t.width)
        at = mps_qp([t.qp], s.qp_density)  # an MPS qp whose offset the tensor's qp fits (spec 8.2)
        return raw if len(self.single_unit(raw).build(at)) <= len(self.single_unit(t).build(at)) else t

    def group_unit(self, weight: str, parts: dict, coded: Mapping[str, CodedTensor], arrays) -> Unit:
        """The unit of a block group: its BLOCK NDU, or with ``blocks="auto"`` the members'
        own NDUs one after the other when a member holds inf or NaN, one of them would
        be smaller stored raw (``raw_when_smaller``) or is coded exactly (whole numbers), or, for a group of at most
        ``SMALL_BLOCK_ELEMENTS`` values, the BLOCK NDU would be larger. ``coded`` are quantised ``in_block``
        unless ``blocks="auto"``; ``arrays`` maps the names to the tensors' values (or functions that read them: :meth:`raw_if_smaller`)."""
        if self.settings.blocks != "auto":
            return self.block_unit(weight, parts, coded)
        names = block_members(weight, parts)
        alone = {n: self.raw_if_smaller(coded[n], arrays[n]) for n in names}
        units = [self.single_unit(alone[n]) for n in names]

        def build(mps_qp: int, link=None) -> bytes:
            return b"".join(u.build(mps_qp, link) for u in units)

        separate = Unit([alone[n] for n in names], build)
        dq = coded[weight].dq  # (one dq_flag for every member, spec 7.6; each has its own qp)
        if not all(
            t.ptype == "FLOAT" and t.kept_exact is None and not t.codebook and t.dq == dq for t in alone.values()
        ):  # (a member stored raw, coded exactly, uniformly to keep its SNR (spec A.7), or as a codebook)
            return separate
        block = self.block_unit(weight, parts, coded)
        if sum(int(_levels(t).size) for t in block.members) > SMALL_BLOCK_ELEMENTS:
            return block  # a block's header saving is small, its coding cost the same: no second encoding
        at = mps_qp([t.qp for t in block.members], self.settings.qp_density)
        return block if len(block.build(at)) <= len(separate.build(at)) else separate

    def block_unit(self, weight: str, parts: dict, coded: Mapping[str, CodedTensor]) -> Unit:
        """A BLOCK NDU (spec 7.6) of a weight and its parts, coded ``in_block``."""
        s = self.settings
        w = coded[weight]
        if w.ptype != "FLOAT":
            raise EncodeError(f"block weight {weight!r} must be a float tensor")
        ls = [parts["scaling"]] if parts.get("scaling") else []
        bi = [parts["bias"]] if parts.get("bias") else []
        bn = list(parts.get("bn", []))
        members = [coded[n] for n in ls + bi + bn] + [w]
        for t in members:
            if t.dq != w.dq:  # (one dq_flag for every member, spec 7.6: the payload would not decode)
                raise EncodeError(
                    f"{t.name!r} and {weight!r} were quantised with and without DQ: no BLOCK unit carries both"
                )
            if t.fmt != w.fmt:
                raise EncodeError(
                    f"{t.name!r} and {weight!r} have different dtypes, but a BLOCK unit restores one (spec 7.6): "
                    "blocks='auto' (the default) or False codes them apart"
                )
        names = [weight] + ls + bn + bi
        cpt = (C.NNR_CPT_LS if ls else 0) | (C.NNR_CPT_BN if bn else 0) | (C.NNR_CPT_BI if bi else 0)

        def build(mps_qp: int, link=None) -> bytes:
            header = self._header(w, C.NNR_PT_BLOCK, names=names, cpt=cpt, link=link)
            payload, eps = self._payload(members, mps_qp, link)
            header["entry_points"] = _ep_fields(eps[-1], w.dq)
            self._coded_payload(members, payload, link)
            return C.build_ndu(header, payload, profile=s.profile, parent_signalling=bool(link and link.update))

        return Unit(members, build)

    def _coded_payload(self, members: list[CodedTensor], payload: bytes, link: Link | None) -> None:
        """In incremental coding, keep the digests of the members' CABAC payload for :meth:`advance_state`."""
        if link is not None:
            digests = _payload_digests(payload)
            for t in members:
                self._payload_digests[t.name] = digests

    def _tensor_kwargs(self, t: CodedTensor) -> dict:
        book = t.codebook
        return dict(
            n_gtx=self.settings.n_gtx,
            dq=t.dq,
            scan_order=t.scan,
            codebook_size=len(book) if book else 0,
            codebook_zero=t.cb_zero,
        )

    def _header(
        self, t: CodedTensor, ptype: int, names: list[str] | None = None, cpt: int = 0, link: Link | None = None
    ) -> dict:
        s = self.settings
        fields = {
            "nnr_compressed_data_unit_payload_type": ptype,
            "nnr_multiple_topology_elements_present_flag": int(names is not None),
            "nnr_decompressed_data_format_present_flag": int(t.fmt is not None),
            "input_parameters_present_flag": 1,
            "codebook_present_flag": int(bool(t.codebook)),
            "dq_flag": int(t.dq),
            "tensor_dimensions_flag": 1,
            "cabac_unary_length_flag": 1,
            "compressed_parameter_types": cpt,
            "tensor_dimensions": list(t.shape),
            "cabac_unary_length_minus1": s.n_gtx - 1,
            "scan_order": t.scan,
            "entry_points": [],
        }
        if t.fmt is not None:
            fields["nnr_decompressed_data_format"] = t.fmt
        if t.codebook:
            book = t.codebook
            fields.update(
                codebook=book,
                codebook_egk=C.best_codebook_egk(book),
                codebook_center_offset=t.cb_zero - (len(book) >> 1),
            )
        if names is None:
            fields["topology_elem_id"] = t.name
        else:
            fields["count_topology_elements_minus2"] = len(names) - 2
            fields["topology_elem_ids"] = names
        if s.profile == 1:
            fields.update(
                node_id_present_flag=1, device_id=0, parameter_id=0, put_node_depth=0, first_tensor_dimension_shift=0
            )
        if link is not None:
            members = [t.name] if names is None else names
            # one above the last coded NDU of its tensors (spec 14.4; a RAW_FLOAT NDU leaves the depths)
            depth = max(self.state.depths.get(n, 0) for n in members) + 1
            fields.update(parameter_id=link.parameter_id, put_node_depth=depth)
            self._ndu_depths.update(dict.fromkeys(members, depth))
            if link.parent:
                fields.update(self._parent_id(members))
                fields["temporal_context_modeling_flag"] = int(link.tca)
        return fields

    def _parent_id(self, names: list[str]) -> dict:
        """The parent identifier of an update NDU of these tensors (spec 7.4, 14.4): the digest of the payload
        that last entered their levels (``parent_id``), when they all came from one NDU; else node ids alone."""
        kind = self.settings.parent_id
        digests = {self.state.payload_digests.get(n) for n in names}
        if kind == "ids" or len(digests) != 1 or None in digests:
            return dict(parent_node_id_type=0, parent_device_id=0)
        (sha256, sha512) = digests.pop()
        if kind == "sha256":
            return dict(parent_node_id_type=1, parent_node_payload_sha256=sha256)
        return dict(parent_node_id_type=2, parent_node_payload_sha512=sha512)

    def _payload(self, members: list[CodedTensor], mps_qp: int, link: Link | None = None) -> tuple[bytes, list[list]]:
        """One CABAC payload with all members in coding order (spec 8.1); entry points per member."""
        s = self.settings
        enc = self.engine.PayloadEncoder(s.edition)
        specs = []
        qp_bits = 6 + s.qp_density
        for t in members:
            if t.ptype != "INT":
                assert t.qp is not None  # FLOAT tensors carry their qp
                enc.write_qp_offset(t.qp - mps_qp, qp_bits)
            levels = _levels(t)
            levels = levels if levels.flags.writeable else levels.copy()  # cached: read-only
            context = self._parent_context(t.name, link, levels.size)
            enc.encode_tensor(
                levels,
                t.height,
                t.width,
                param_opt=s.param_opt,
                init_sets=t.init_sets if link is None else None,
                row_skip=s.row_skip and not t.dq,
                hdsp=bool(link and link.hdsp),
                threads=row_threads(s.threads, t.height * t.width),
                **context,
                **self._tensor_kwargs(t),
            )
            specs.append(
                dict(
                    height=t.height,
                    width=t.width,
                    qp_bits=0 if t.ptype == "INT" else qp_bits,
                    **context,
                    **self._tensor_kwargs(t),
                )
            )
        payload = enc.finish()
        if any(t.scan > 0 and t.height > (4 << t.scan) for t in members):
            eps = self.engine.compute_entry_points(payload, s.edition, specs)
        else:
            eps = [[] for _ in members]
        return payload, eps

    def _parent_context(self, name: str, link: Link | None, size: int) -> dict:
        """The engine's parent, TCA base and HDSP history arguments for one tensor of ``size`` elements of an NDU;
        a history of another size is not used (spec 10.5, 14.2), as the decoder does."""
        if link is None:
            return {}
        history = self.state.history.get(name) if link.hdsp else None
        return dict(
            parent_present=link.parent,
            tca_base=self.state.levels[name] if link.tca else None,
            hdsp_history=history if history is not None and history.size == size else None,
        )

    # -- incremental coding (spec 14) -------------------------------------------------
    def is_update(self, names) -> bool:
        """Whether a stream of these tensors is an update: the state already holds one of them."""
        return self.state is not None and any(n in self.state.levels for n in names)

    def link(self, unit: Unit, update: bool) -> Link | None:
        """How ``unit`` relates to the state (None without a state); call in stream order."""
        state, s = self.state, self.settings
        if state is None:
            return None
        if self._next_id is None:
            self._next_id = max(state.parameter_ids.values(), default=-1) + 1
        coded = [t for t in unit.members if t.ptype != "RAW_FLOAT"]
        names = [t.name for t in unit.members]
        weight = names[-1]  # members are in coding order: the weight comes last
        # the NDU keeps the id its tensors had (its weight's, if they differ); new NDUs get the next one
        known = [state.parameter_ids[n] for n in names if n in state.parameter_ids]
        pid = state.parameter_ids.get(weight, min(known, default=self._next_id))
        self._next_id = max(self._next_id, pid + 1)
        parent = update and bool(coded) and all(t.name in state.levels for t in coded)
        return Link(
            update=update,
            parent=parent,
            tca=parent and s.tca and all(size_of(state.levels, t.name) == _levels(t).size for t in coded),
            hdsp=parent and s.hdsp,
            ids=dict.fromkeys(names, pid),
            parameter_id=pid,
            skip=parent and self._skips_zero() and all(decodes_to_zeros(t) for t in coded),
        )

    def _skips_zero(self) -> bool:
        """Whether an update leaves out its all-zero NDUs (spec 7.7): ``skip_zero`` when given; by default only
        in a stream of differences, where zero means unchanged (a receiver writing a full-values update to a
        file would otherwise lose those tensors)."""
        s = self.settings
        if s.skip_zero is not None:
            return bool(s.skip_zero)
        return sends_differences(s, self.state)

    def advance_state(self, unit: Unit, link: Link) -> None:
        """Record what the receiving decoder records for this NDU (spec 14.2, 14.3)."""
        state = self.state
        state.parameter_ids.update(link.ids)
        if link.skip:
            return
        for t in unit.members:
            if t.ptype != "RAW_FLOAT":  # (a RAW_FLOAT NDU changes no levels, and its depth no parent's, 14.4)
                state.depths[t.name] = self._ndu_depths[t.name]
                state.update(t.name, np.array(t.levels, np.int32).reshape(-1))
                state.payload_digests[t.name] = self._payload_digests[t.name]


def decodes_to_zeros(t: CodedTensor) -> bool:
    """Whether every value of ``t`` decodes as 0 (spec 7.7: an update may skip it): all its integers are 0 and, for a
    codebook tensor, whose integers are indices, the codebook's value at index 0 (CbZeroOffset, 7.2) is 0 too."""
    if t.levels is None or np.any(t.levels):
        return False
    return not t.codebook or t.codebook[t.cb_zero] == 0


def _levels(t: CodedTensor) -> np.ndarray:
    """The levels of an INT or FLOAT tensor (RAW_FLOAT tensors have none and never reach here)."""
    assert t.levels is not None, f"tensor {t.name!r} ({t.ptype}) has no levels"
    return t.levels


def _ep_fields(eps: list, dq: bool) -> list[dict]:
    return [{"value": v, "dq_state": s if dq else 0, "offset": off} for v, s, off in eps]


__all__ = [
    "UnitWriter",
    "Unit",
    "Link",
    "announced_by_count",
    "block_groups",
    "block_members",
    "mps_qp",
    "metadata_json",
    "tied_tensors",
    "ties_of",
]
