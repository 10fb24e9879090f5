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

import fnmatch
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from . import container as C
from .decoder import DecoderState, apply_update
from .engine import get_engine
from ._parallel import row_threads
from ._threads import ordered_results, thread_count
from .errors import EncodeError, NNCError
from .reconstruction import DECOMPRESSED_DATA_FORMATS, reconstruct_codebook, reconstruct_uniform, step_size

INT32_MAX = 2**31 - 1

#: nnr_decompressed_data_format codes for input dtypes that a profile-1 stream can restore (spec 12.6)
RESTORABLE_FORMATS = {"float16": 8, "float64": 9}


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
    >>> res = Encoder(qp=-30).encode({"w": np.ones((2, 3), np.float32)})
    >>> list(res.tensors), res.tensors["w"].qp
    (['w'], -30)
    """

    stream: bytes
    tensors: OrderedDict[str, EncodedTensor] = field(default_factory=OrderedDict)
    #: Names of tensors left out of an update stream because they are all zero (spec 7.7).
    skipped: list = field(default_factory=list)

    @property
    def reconstruction(self) -> OrderedDict[str, np.ndarray]:
        """{name: reconstructed array}: what any conforming decoder returns for the stream.

        Tensors of skipped NDUs are not in it (the decoder does not output them).
        """
        return OrderedDict((k, v.reconstruction) for k, v in self.tensors.items() if k not in self.skipped)


def qp_for_step(step: float, qp_density: int = 2) -> int:
    """The qp whose step size (spec 12.1) is nearest to ``step`` in the log domain.

    Parameters
    ----------
    step : float
        Target step size Δ > 0.
    qp_density : int
        The stream's qp density (qps per octave = 2**qp_density).

    Returns
    -------
    int
        The qp.

    Raises
    ------
    nnc.errors.EncodeError
        If ``step`` is not a positive finite number.

    Examples
    --------
    >>> qp_for_step(0.00146484375)
    -38
    >>> qp_for_step(0.5, qp_density=3)
    -8
    """
    if not (step > 0 and math.isfinite(step)):
        raise EncodeError(f"step size must be a positive finite number, not {step!r}")
    k = 1 << qp_density
    guess = int(math.floor(math.log2(step) * k))
    best = min(range(guess - 2 * k, guess + 2 * k + 1),
               key=lambda q: abs(math.log2(float(step_size(q, qp_density))) - math.log2(step)))
    return best


def _block_members(weight: str, parts: Mapping) -> list[str]:
    """The tensors of a block: the weight, then its scaling, bias and batch-norm tensors that are given."""
    return [weight] + [parts[k] for k in ("scaling", "bias") if parts.get(k)] + list(parts.get("bn", []))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or p == name for p in patterns)


def _as_float_array(name: str, value) -> tuple[np.ndarray, str]:
    """The tensor as float64 for quantisation, and its original dtype name."""
    arr = np.asarray(value)
    dtype_name = arr.dtype.name
    if dtype_name == "bfloat16" or arr.dtype.kind == "V":
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "fiub":
        raise EncodeError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
    x = arr.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise EncodeError(f"tensor {name!r} contains NaN or Inf, which cannot be quantised")
    return x, dtype_name


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

    def __init__(self):
        super().__init__()
        #: The ``parameter_id`` of each tensor name (spec 7.4).
        self.parameter_ids: dict[str, int] = {}
        #: The ``put_node_depth`` of each tensor's last coded occurrence (1 for the first stream).
        self.depths: dict[str, int] = {}
        #: With ``differences=True``: the model as the receiver holds it (the base's reconstruction
        #: plus every update, by :func:`nnc.decoder.apply_update`).
        self.model: OrderedDict[str, np.ndarray] = OrderedDict()

    def _meta(self) -> dict:
        return dict(parameter_ids=self.parameter_ids, depths=self.depths, model=list(self.model))

    def _set_meta(self, meta: dict, arrays: dict) -> None:
        self.parameter_ids = {str(k): int(v) for k, v in meta["parameter_ids"].items()}
        self.depths = {str(k): int(v) for k, v in meta["depths"].items()}
        self.model = OrderedDict((str(k), arrays[f"model{i}"]) for i, k in enumerate(meta["model"]))

    def _extra_arrays(self) -> dict:
        return {f"model{i}": v for i, v in enumerate(self.model.values())}


class Encoder:
    """Encoder of a mapping of named arrays into an NNC stream (informative, spec Annex A).

    All parameters are keyword-only.

    Parameters
    ----------
    qp : int, optional
        Global quantisation parameter (spec 12.1); -38 if neither ``qp`` nor ``step`` is given.
    step : float, optional
        A target step size instead of ``qp``, mapped to the nearest qp.
    qp_per_tensor : mapping of str to int, optional
        {name or glob pattern: qp}; the first match wins.
    nonweight_qp : int or None
        qp of 1-D tensors (biases, norms), default -75 as in NNCodec; None means ``qp``.
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
    raw : iterable of str
        Names or patterns of tensors stored uncompressed (RAW_FLOAT).
    lossless_int : bool
        Code integer tensors exactly as INT (default True).
    blocks : bool or mapping
        True to pair ``X.weight`` with ``X.bias`` in BLOCK NDUs, or
        {weight name: {"bias": name, "bn": [beta, gamma, mean, var], "scaling": name}}.
    profile : int
        1 = 2nd edition (default, as NNCodec 2.1.3 writes); 0 = 1st edition.
    keep_dtype : bool
        Signal float16/float64 inputs so that they decode as such (default True).
    row_skip : bool
        2nd edition: skip all-zero rows (default False).
    codebook : bool or str
        Code float tensors as codebook indices (True), or whichever is estimated smaller
        (``"auto"``); codebook tensors decode as float64.
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
    skip_zero : bool
        In updates, leave out NDUs whose tensors are all zero (spec 7.7; default True);
        they are listed in :attr:`EncodeResult.skipped`.
    differences : bool
        With ``state``: the tensors given are the whole new model, and an update codes
        its difference to the model the receiver holds (tracked in the state as the
        receiver computes it with :func:`nnc.decoder.apply_update`), so that
        quantisation errors do not pile up over the updates (default False: code the
        tensors as given).

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
    >>> res.tensors["fc.bias"].qp                 # 1-D tensors use nonweight_qp
    -75
    >>> import nnc
    >>> bool((nnc.decode(res.stream)["fc.weight"] == res.reconstruction["fc.weight"]).all())
    True
    """

    def __init__(
        self,
        *,
        qp: int | None = None,
        step: float | None = None,
        qp_per_tensor: Mapping[str, int] | None = None,
        nonweight_qp: int | None = -75,
        qp_density: int = 2,
        dq: bool = True,
        scan_order: int | None = None,
        n_gtx: int = 11,
        param_opt: bool = True,
        raw: Iterable[str] = (),
        lossless_int: bool = True,
        blocks=False,
        profile: int = 1,
        keep_dtype: bool = True,
        row_skip: bool = False,
        codebook=False,
        output_formats: Mapping[str, int] | None = None,
        dtypes: Mapping[str, str] | None = None,
        rdoq_lambda: float = 0.0,
        lambda_per_tensor: Mapping[str, float] | None = None,
        importance: Mapping[str, np.ndarray] | None = None,
        sigmas: Mapping[str, np.ndarray] | None = None,
        dcv1_s: int = 64,
        engine: str | None = None,
        threads: int = 1,
        state: EncoderState | None = None,
        tca: bool = True,
        hdsp: bool = False,
        skip_zero: bool = True,
        differences: bool = False,
    ):
        if qp is not None and step is not None:
            raise EncodeError("give either qp or step, not both")
        if not 0 <= qp_density <= 7:
            raise EncodeError(f"qp_density {qp_density} outside 0..7")
        if scan_order is not None and not 0 <= scan_order <= 4:
            raise EncodeError(f"scan_order {scan_order} outside 0..4")
        if not 1 <= n_gtx <= 256:
            raise EncodeError(f"n_gtx {n_gtx} outside 1..256")
        if profile not in (0, 1):
            raise EncodeError(f"profile must be 0 or 1, not {profile}")
        self.qp_density = qp_density
        self.qp = qp_for_step(step, qp_density) if step is not None else (-38 if qp is None else int(qp))
        self.qp_per_tensor = dict(qp_per_tensor or {})
        self.nonweight_qp = nonweight_qp
        self.dq = bool(dq)
        self.scan_order = scan_order
        self.n_gtx = n_gtx
        self.param_opt = bool(param_opt)
        self.raw = list(raw)
        self.lossless_int = lossless_int
        self.blocks = blocks
        self.profile = profile
        self.edition = 2 if profile == 1 else 1
        self.keep_dtype = keep_dtype
        self.row_skip = row_skip and profile == 1
        if codebook not in (False, True, "auto"):
            raise EncodeError("codebook must be False, True or 'auto'")
        self.codebook = codebook
        self.output_formats = dict(output_formats or {})
        self.dtypes = dict(dtypes or {})
        if not all(isinstance(v, str) for v in self.dtypes.values()):
            raise EncodeError("dtypes values must be dtype names (str)")
        if rdoq_lambda < 0:
            raise EncodeError("rdoq_lambda must be >= 0")
        self.rdoq_lambda = float(rdoq_lambda)
        self.lambda_per_tensor = {k: float(v) for k, v in (lambda_per_tensor or {}).items()}
        if any(not (v >= 0 and math.isfinite(v)) for v in self.lambda_per_tensor.values()):
            raise EncodeError("lambda_per_tensor values must be finite and >= 0")
        self.importance = {k: np.asarray(v, np.float64) for k, v in (importance or {}).items()}
        self.sigmas = {k: np.asarray(v, np.float64) for k, v in (sigmas or {}).items()}
        for k, v in self.sigmas.items():
            if not np.all(v > 0):
                raise EncodeError(f"sigmas of {k!r} must be positive")
        if int(dcv1_s) < 0:
            raise EncodeError("dcv1_s must be a non-negative integer")
        self.dcv1_s = int(dcv1_s)
        self.engine = get_engine(engine)
        try:
            self.threads = thread_count(threads)
        except ValueError as exc:
            raise EncodeError(str(exc)) from None
        if state is not None and not isinstance(state, EncoderState):
            raise EncodeError("state must be an nnc.encoder.EncoderState")
        if state is not None and profile != 1:
            raise EncodeError("incremental coding (state=) needs profile 1 (2nd edition)")
        if differences and state is None:
            raise EncodeError("differences=True needs a state (an EncoderState)")
        self.state = state
        self.tca, self.hdsp, self.skip_zero, self.differences = bool(tca), bool(hdsp), bool(skip_zero), bool(differences)

    # -- per-tensor decisions ----------------------------------------------------
    def tensor_qp(self, name: str, ndim: int) -> int:
        """The qp this encoder gives a float tensor of this name and number of dimensions.

        Examples
        --------
        >>> Encoder(qp=-30, qp_per_tensor={"head.*": -40}).tensor_qp("head.weight", 2)
        -40
        """
        for pattern, value in self.qp_per_tensor.items():
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                return int(value)
        if ndim <= 1 and self.nonweight_qp is not None:
            return int(self.nonweight_qp)
        return self.qp

    def tensor_lambda(self, name: str) -> float:
        """The rate-distortion λ of this tensor (``lambda_per_tensor``, else ``rdoq_lambda``).

        Examples
        --------
        >>> Encoder(rdoq_lambda=0.1, lambda_per_tensor={"fc1.*": 0.4}).tensor_lambda("fc1.weight")
        0.4
        """
        for pattern, value in self.lambda_per_tensor.items():
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                return value
        return self.rdoq_lambda

    def _quantise(self, name: str, x: np.ndarray, step: float, dq: bool, height: int, width: int,
                  scan_order: int, *, reuse_x: bool = False) -> np.ndarray:
        """Integers n for values x (spec A.1, A.2, A.9); ``reuse_x``: x (a private float64 copy the
        caller no longer needs) is divided in place, to save a tensor-sized copy."""
        scaled = np.divide(x.reshape(-1), float(step), out=x.reshape(-1) if reuse_x else None)
        f = self.importance.get(name)
        if f is not None and (f.size != scaled.size or not np.all(f >= 0)):
            raise EncodeError(f"tensor {name!r}: importance needs one non-negative value per element "
                              f"({scaled.size}), not {f.size}")
        if scaled.size and np.abs(scaled).max() >= INT32_MAX - 2:
            raise EncodeError(
                f"tensor {name!r}: values up to {np.abs(scaled).max() * step:.4g} overflow int32 levels at step "
                f"{step:.4g}; use a larger qp"
            )
        lam = self.tensor_lambda(name)
        if dq and lam:
            from ._engine import dq_rdoq_levels

            order_free = np.ascontiguousarray(scaled)
            return dq_rdoq_levels(order_free, height, width, lam=lam, n_gtx=self.n_gtx,
                                  scan_order=scan_order, edition=self.edition,
                                  importance=self.importance.get(name))
        if not dq and lam:
            importance = self.importance.get(name)
            if name in self.sigmas:
                # DC-v1: F = 1 / sigma^2, in squared step sizes (x is w / step)
                importance = (float(step) / np.maximum(self.sigmas[name].reshape(-1), 1e-30)) ** 2
            return self.engine.rdoq_levels(np.ascontiguousarray(scaled), height, width, lam=lam,
                                           n_gtx=self.n_gtx, scan_order=scan_order, edition=self.edition,
                                           importance=importance)
        if not dq:
            return (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int32)
        from ._engine import dq_rdoq_levels

        # one global Viterbi search along the scan (spec A.2)
        return dq_rdoq_levels(np.ascontiguousarray(scaled), height, width, lam=0.0, scan_order=scan_order,
                              edition=self.edition, chunk=max(scaled.size, 1))

    def _block_groups(self, tensors: Mapping[str, np.ndarray]) -> dict[str, dict]:
        """Which tensors go into BLOCK NDUs with which weight (spec 7.6)."""
        if not self.blocks:
            return {}
        groups: dict[str, dict] = {}
        if self.blocks is True:
            for name, arr in tensors.items():
                if name.endswith(".weight") and np.ndim(arr) >= 2:
                    bias = name[: -len("weight")] + "bias"
                    if bias in tensors and np.shape(tensors[bias]) == (np.shape(arr)[0],):
                        groups[name] = {"bias": bias}
        else:
            groups = {k: dict(v) for k, v in self.blocks.items()}
        for weight, parts in groups.items():
            members = _block_members(weight, parts)
            for m in members:
                if m not in tensors:
                    raise EncodeError(f"block member {m!r} of {weight!r} is not among the tensors")
            rows = np.shape(tensors[weight])[0] if np.ndim(tensors[weight]) else 1
            for m in members[1:]:
                if np.shape(tensors[m]) != (rows,):
                    raise EncodeError(f"block member {m!r} must be 1-D of length {rows}, like {weight!r} rows")
            if parts.get("bn") and len(parts["bn"]) != 4:
                raise EncodeError("a block's 'bn' entry lists beta, gamma, mean and var")
        return groups

    # -- stream ------------------------------------------------------------------
    def encode(self, tensors: Mapping[str, object], progress=None, *, cache: "EncodeCache | None" = None
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

        Returns
        -------
        EncodeResult
            The stream and, per tensor, what was coded and its exact reconstruction.

        Raises
        ------
        nnc.errors.EncodeError
            For a bad name, a NaN/Inf value, an unsupported dtype, or levels that do not
            fit the stream's integer range at this qp.

        Examples
        --------
        >>> import numpy as np
        >>> res = Encoder(qp=-20, dq=False).encode({"w": np.array([[0.1, -0.2], [0.3, 0.0]])})
        >>> res.tensors["w"].step, res.tensors["w"].levels.tolist()   # Δ = 2**(-20/4), n in scan order
        (0.03125, [3, -6, 10, 0])
        """
        if not isinstance(tensors, Mapping):
            raise EncodeError("tensors must be a mapping of name to array")
        if cache is not None and self.state is not None:
            raise EncodeError("an EncodeCache cannot be used for incremental coding (state=)")
        arrays = OrderedDict()
        for name, value in tensors.items():
            if not isinstance(name, str) or not name or "\x00" in name:
                raise EncodeError(f"tensor names must be non-empty strings without NUL, not {name!r}")
            arrays[name] = np.asarray(value)
        if self.differences:
            arrays = self._differences(arrays)
        unknown = [k for k in self.dtypes if k not in arrays]
        if unknown:
            raise EncodeError(f"dtypes names a tensor that is not in the model: {unknown[0]!r}")
        groups = self._block_groups(arrays)
        in_block = {m for w, p in groups.items() for m in _block_members(w, p)[1:]}
        names = [name for name in arrays if name not in in_block]
        keys = {name: None if cache is None else self._unit_key(name, groups.get(name), arrays) for name in names}
        cached = {name: cache._get(key) for name, key in keys.items() if key is not None}
        to_make = [(name,) for name in names if cached.get(name) is None]

        def make(name):
            return self._block_ndu(name, groups[name], arrays) if name in groups else self._single_ndu(name, arrays[name])

        units = []
        result = EncodeResult(stream=b"")
        # quantisation, in threads; units recorded (and cached) in stream order
        with ordered_results(make, to_make, self.threads) as made:
            for name in names:
                unit = cached.get(name)
                if unit is None:
                    unit = next(made)
                    if keys[name] is not None:
                        cache._put(keys[name], unit)
                for t in unit.members:
                    self._record(result, t)
                units.append(unit)
                if progress is not None:
                    progress(name, int(arrays[name].size))
        qps = [t.qp for t in result.tensors.values() if t.qp is not None]
        mps_qp = self._mps_qp(qps)
        links = self._links(units, result)
        update = any(link is not None and link["update"] for link in links)
        head = [C.build_str(self.profile),
                C.build_mps(qp_density=self.qp_density, qp=mps_qp, profile=self.profile, parent_signalling=update),
                C.build_tpl(data=_metadata_json(arrays, result, self.dtypes))]
        jobs = [(u, link) for u, link in zip(units, links) if link is None or not link["skip"]]
        # the payloads, in threads
        with ordered_results(lambda unit, link: unit.build(mps_qp, link), jobs, self.threads) as built:
            result.stream = b"".join(head + list(built))
        if self.state is not None:
            self._advance_state(units, links)
            if self.differences:
                self.state.model = apply_update(self.state.model, result.reconstruction)
        return result

    def _differences(self, arrays: "OrderedDict[str, np.ndarray]") -> "OrderedDict[str, np.ndarray]":
        """The tensors minus the receiver's model, where it has them (same shape); the others as given."""
        model = self.state.model
        out = OrderedDict()
        for name, x in arrays.items():
            held = model.get(name)
            if held is None or held.shape != x.shape or x.dtype.kind not in "fiub":
                out[name] = x
            elif x.dtype.kind == "f":
                out[name] = (x.astype(np.float64) - held).astype(x.dtype)
            else:
                out[name] = x.astype(np.int64) - held.astype(np.int64)
        return out

    # -- incremental coding (spec 14) -----------------------------------------------
    def _links(self, units: list, result: EncodeResult) -> list:
        """Per unit, how it relates to the state: None without a state, else its node ids,
        parent, TCA/HDSP use and whether it is skipped; skipped tensors are marked in ``result``."""
        state = self.state
        if state is None:
            return [None] * len(units)
        update = any(t["name"] in state.levels for u in units for t in u.members)
        links, next_id = [], max(state.parameter_ids.values(), default=-1) + 1
        for u in units:
            coded = [t for t in u.members if t["ptype"] != "RAW_FLOAT"]
            names = [t["name"] for t in u.members]
            weight = names[-1]  # members are in coding order: the weight comes last
            # the NDU keeps the id its tensors had (its weight's, if they differ); new NDUs get the next one
            known = [state.parameter_ids[n] for n in names if n in state.parameter_ids]
            pid = state.parameter_ids.get(weight, min(known, default=next_id))
            next_id = max(next_id, pid + 1)
            parent = update and bool(coded) and all(t["name"] in state.levels for t in coded)
            link = dict(
                update=update, parent=parent,
                tca=parent and self.tca and all(state.levels[t["name"]].size == t["levels"].size for t in coded),
                hdsp=parent and self.hdsp,
                ids=dict.fromkeys(names, pid), parameter_id=pid,
                depth=max(state.depths.get(n, 0) for n in names) + 1,
                skip=parent and self.skip_zero and all(not np.any(t["levels"]) for t in coded),
            )
            if link["skip"]:
                result.skipped.extend(t["name"] for t in u.members)
            links.append(link)
        return links

    def _advance_state(self, units: list, links: list) -> None:
        """Record what the receiving decoder records for this stream (spec 14.2, 14.3)."""
        state = self.state
        for u, link in zip(units, links):
            state.parameter_ids.update(link["ids"])
            if link["skip"]:
                continue
            for t in u.members:
                state.depths[t["name"]] = link["depth"]
                if t["ptype"] != "RAW_FLOAT":
                    state.update(t["name"], np.array(t["levels"], np.int32).reshape(-1))

    def _mps_qp(self, qps: list[int]) -> int:
        """The MPS qp: 0 as NNCodec writes, unless the offsets would not fit (spec 8.2)."""
        if not qps:
            return 0
        half = 1 << (5 + self.qp_density)
        lo, hi = min(qps), max(qps)
        if lo >= -half and hi <= half - 1:
            return 0
        centre = (lo + hi + 1) // 2
        if lo - centre < -half or hi - centre > half - 1:
            raise EncodeError(f"per-tensor qps from {lo} to {hi} span more than the {6 + self.qp_density}-bit "
                              f"qp offsets can carry; raise qp_density or narrow the qps")
        if not -4096 <= centre <= 4095:
            raise EncodeError(f"qp {centre} outside the 13-bit range")
        return centre

    def _prepare(self, name: str, arr: np.ndarray, *, in_block: bool = False) -> dict:
        """Quantise one tensor; return what its NDU needs (with any forced output format)."""
        t = self._prepare_values(name, arr, in_block=in_block)
        fmt = self.output_formats.get(name)
        if fmt is not None:
            from .reconstruction import convert_to_format

            if self.profile == 0 and fmt > 1:
                raise EncodeError(f"output format {fmt} needs profile 1 (2nd edition)")
            base = t["levels"].reshape(t["shape"]) if t["ptype"] == "INT" else t["recon"]
            if t["ptype"] == "FLOAT" and t.get("codebook") is None:
                base = reconstruct_uniform(t["levels"], np.float32(t["step"])).reshape(t["shape"])
            try:
                t["recon"] = convert_to_format(base, fmt)
            except NNCError as exc:
                raise EncodeError(f"tensor {name!r}: {exc.message}") from None
            t["fmt"] = fmt
        return t

    def _prepare_values(self, name: str, arr: np.ndarray, *, in_block: bool = False) -> dict:
        shape = tuple(int(d) for d in arr.shape) or (1,)
        size = int(np.prod(shape, dtype=np.int64))
        height = shape[0]
        width = size // height if height else 0
        scan = self.scan_order if self.scan_order is not None else default_scan_order(height, width)
        scan = scan if len(shape) > 1 and height > 1 and width > 1 else 0
        kind = arr.dtype.kind
        if kind in "iub" and self.lossless_int and not in_block:
            values = arr.astype(np.int64).reshape(-1)
            if values.size and (values.min() < -INT32_MAX - 1 or values.max() > INT32_MAX):
                raise EncodeError(f"integer tensor {name!r} has values outside int32")
            levels = values.astype(np.int32)
            return dict(name=name, shape=shape, ptype="INT", levels=levels, qp=None, step=None, dq=False,
                        height=height, width=width, scan=scan, recon=levels.reshape(shape), fmt=None)
        x, dtype_name = _as_float_array(name, arr)
        fmt = None
        if self.keep_dtype and self.profile == 1 and dtype_name in RESTORABLE_FORMATS:
            fmt = RESTORABLE_FORMATS[dtype_name]
        if _matches(name, self.raw) and not in_block:
            f32 = x.astype(np.float32).reshape(shape)
            recon = f32 if fmt is None else f32.astype(np.dtype(dtype_name))
            return dict(name=name, shape=shape, ptype="RAW_FLOAT", levels=None, qp=None, step=None, dq=False,
                        height=height, width=width, scan=0, recon=recon, fmt=fmt, raw=f32)
        qp = self.tensor_qp(name, arr.ndim)
        if name in self.sigmas:
            qp = qp_for_step(dcv1_step(x, self.sigmas[name], self.dcv1_s), self.qp_density)
        step = step_size(qp, self.qp_density)
        if self.codebook and not in_block:
            coded = self._codebook_tensor(name, x, step, height, width, scan, fmt, shape)
            if coded is not None:
                return coded
        levels = self._quantise(name, x, float(step), self.dq, height, width, scan, reuse_x=True)  # x is ours
        recon = reconstruct_uniform(levels, step).reshape(shape)
        if fmt is not None:
            recon = recon.astype(np.dtype(dtype_name))
        return dict(name=name, shape=shape, ptype="FLOAT", levels=levels, qp=qp, step=float(step), dq=self.dq,
                    height=height, width=width, scan=scan, recon=recon, fmt=fmt)

    def _codebook_tensor(self, name, x, step, height, width, scan, fmt, shape) -> dict | None:
        """Codebook mode (spec 7.2, 12.4): the distinct uniform levels form the codebook.

        Returns None in "auto" mode when the plain uniform coding is estimated smaller.
        """
        levels = self._quantise(name, x, float(step), False, height, width, scan)
        book = np.unique(levels)
        if book.size > 1 << 16:
            return None
        pos = np.searchsorted(book, 0)
        zero = int(pos) if pos < book.size and book[pos] == 0 else book.size >> 1
        indices = (np.searchsorted(book, levels) - zero).astype(np.int32)
        t = dict(name=name, shape=shape, ptype="FLOAT", levels=indices, qp=self.tensor_qp(name, len(shape)),
                 step=float(step), dq=False, height=height, width=width, scan=scan, fmt=fmt,
                 codebook=[int(v) for v in book], cb_zero=zero,
                 recon=reconstruct_codebook(indices, book, zero, step).reshape(shape))
        if fmt is not None:
            t["recon"] = t["recon"].astype(DECOMPRESSED_DATA_FORMATS[fmt])
        if self.codebook == "auto":
            edition = self.edition
            kw = dict(n_gtx=self.n_gtx, scan_order=scan, edition=edition)
            cb_bits = self.engine.estimate_tensor_bits(indices, height, width, codebook_size=len(book),
                                                       codebook_zero=zero, **kw) + 16 * len(book)
            uni = self._quantise(name, x, float(step), self.dq, height, width, scan)
            if self.engine.estimate_tensor_bits(uni, height, width, dq=self.dq, **kw) <= cb_bits:
                return None
        return t



    def _record(self, result: EncodeResult, t: dict) -> None:
        result.tensors[t["name"]] = EncodedTensor(
            name=t["name"], shape=t["shape"], payload_type=t["ptype"], qp=t["qp"], step=t["step"], dq=t["dq"],
            levels=t["levels"], reconstruction=t["recon"],
        )

    def _tensor_kwargs(self, t: dict) -> dict:
        book = t.get("codebook")
        return dict(n_gtx=self.n_gtx, dq=t["dq"], scan_order=t["scan"],
                    codebook_size=len(book) if book else 0, codebook_zero=t.get("cb_zero", 0))

    def _header(self, t: dict, ptype: int, names: list[str] | None = None, cpt: int = 0, link=None) -> dict:
        fields = {
            "nnr_compressed_data_unit_payload_type": ptype,
            "nnr_multiple_topology_elements_present_flag": int(names is not None),
            "nnr_decompressed_data_format_present_flag": int(t["fmt"] is not None),
            "input_parameters_present_flag": 1,
            "codebook_present_flag": int(bool(t.get("codebook"))),
            "dq_flag": int(t["dq"]),
            "tensor_dimensions_flag": 1,
            "cabac_unary_length_flag": 1,
            "compressed_parameter_types": cpt,
            "tensor_dimensions": list(t["shape"]),
            "cabac_unary_length_minus1": self.n_gtx - 1,
            "scan_order": t["scan"],
            "entry_points": [],
        }
        if t["fmt"] is not None:
            fields["nnr_decompressed_data_format"] = t["fmt"]
        if t.get("codebook"):
            book = t["codebook"]
            fields.update(codebook=book, codebook_egk=C.best_codebook_egk(book),
                          codebook_center_offset=t["cb_zero"] - (len(book) >> 1))
        if names is None:
            fields["topology_elem_id"] = t["name"]
        else:
            fields["count_topology_elements_minus2"] = len(names) - 2
            fields["topology_elem_ids"] = names
        if self.profile == 1:
            fields.update(node_id_present_flag=1, device_id=0, parameter_id=0, put_node_depth=0,
                          first_tensor_dimension_shift=0)
        if link is not None:
            fields.update(parameter_id=link["parameter_id"], put_node_depth=link["depth"])
            if link["parent"]:
                fields.update(parent_node_id_type=0, parent_device_id=0,
                              temporal_context_modeling_flag=int(link["tca"]))
        return fields

    def _payload(self, members: list[dict], mps_qp: int, link=None) -> tuple[bytes, list[list]]:
        """One CABAC payload with all members in coding order (spec 8.1); entry points per member."""
        enc = self.engine.PayloadEncoder(self.edition)
        specs = []
        qp_bits = 6 + self.qp_density
        for t in members:
            if t["ptype"] != "INT":
                enc.write_qp_offset(t["qp"] - mps_qp, qp_bits)
            levels = t["levels"] if t["levels"].flags.writeable else t["levels"].copy()   # cached: read-only
            context = self._parent_context(t["name"], link)
            enc.encode_tensor(levels, t["height"], t["width"], param_opt=self.param_opt,
                              row_skip=self.row_skip and not t["dq"], hdsp=bool(link and link["hdsp"]),
                              threads=row_threads(self.threads, t["height"] * t["width"]),
                              **context, **self._tensor_kwargs(t))
            specs.append(dict(height=t["height"], width=t["width"], qp_bits=0 if t["ptype"] == "INT" else qp_bits,
                              **context, **self._tensor_kwargs(t)))
        payload = enc.finish()
        if any(t["scan"] > 0 and t["height"] > (4 << t["scan"]) for t in members):
            eps = self.engine.compute_entry_points(payload, self.edition, specs)
        else:
            eps = [[] for _ in members]
        return payload, eps

    def _parent_context(self, name: str, link) -> dict:
        """The engine's parent, TCA base and HDSP history arguments for one tensor of an NDU."""
        if link is None:
            return {}
        return dict(parent_present=link["parent"], tca_base=self.state.levels[name] if link["tca"] else None,
                    hdsp_history=self.state.history.get(name) if link["hdsp"] else None)

    def _single_ndu(self, name: str, arr: np.ndarray) -> "_Unit":
        t = self._prepare(name, arr)

        def build(mps_qp: int, link=None) -> bytes:
            ptype = {"INT": C.NNR_PT_INT, "FLOAT": C.NNR_PT_FLOAT, "RAW_FLOAT": C.NNR_PT_RAW_FLOAT}[t["ptype"]]
            header = self._header(t, ptype, link=link)
            if t["ptype"] == "RAW_FLOAT":
                payload = t["raw"].astype("<f4").tobytes()
            else:
                payload, eps = self._payload([t], mps_qp, link)
                header["entry_points"] = _ep_fields(eps[0], t["dq"])
            return C.build_ndu(header, payload, profile=self.profile, parent_signalling=bool(link and link["update"]))

        return _Unit([t], build)

    def _block_ndu(self, weight: str, parts: dict, arrays: Mapping[str, np.ndarray]) -> "_Unit":
        w = self._prepare(weight, arrays[weight], in_block=True)
        if w["ptype"] != "FLOAT":
            raise EncodeError(f"block weight {weight!r} must be a float tensor")
        ls = [parts["scaling"]] if parts.get("scaling") else []
        bi = [parts["bias"]] if parts.get("bias") else []
        bn = list(parts.get("bn", []))
        coded = [self._prepare(n, arrays[n], in_block=True) for n in ls + bi + bn] + [w]
        for t in coded:
            if t["fmt"] != w["fmt"]:
                raise EncodeError(f"block members of {weight!r} must share one dtype")
        names = [weight] + ls + bn + bi
        cpt = (C.NNR_CPT_LS if ls else 0) | (C.NNR_CPT_BN if bn else 0) | (C.NNR_CPT_BI if bi else 0)

        def build(mps_qp: int, link=None) -> bytes:
            header = self._header(w, C.NNR_PT_BLOCK, names=names, cpt=cpt, link=link)
            payload, eps = self._payload(coded, mps_qp, link)
            header["entry_points"] = _ep_fields(eps[-1], w["dq"])
            return C.build_ndu(header, payload, profile=self.profile, parent_signalling=bool(link and link["update"]))

        return _Unit(coded, build)

    def _unit_key(self, name: str, parts: dict | None, arrays: Mapping[str, np.ndarray]) -> tuple:
        """What an NDU depends on besides the arrays themselves (see :class:`EncodeCache`)."""
        names = [name] if parts is None else _block_members(name, parts)
        members = []
        for n in names:
            arr = arrays[n]
            members.append((n, arr.shape, arr.dtype.str, self.tensor_qp(n, arr.ndim), self.tensor_lambda(n),
                            _matches(n, self.raw), self.output_formats.get(n), id(self.importance.get(n)),
                            id(self.sigmas.get(n))))
        layout = None if parts is None else repr(sorted(parts.items()))
        return (tuple(members), layout, self.qp_density, self.dq, self.scan_order, self.n_gtx,
                self.param_opt, self.lossless_int, self.profile, self.keep_dtype, self.row_skip, self.codebook,
                self.dcv1_s, self.engine.__name__,
                tuple(arrays[n] for n in names), tuple(self.importance.get(n) for n in names),
                tuple(self.sigmas.get(n) for n in names))


class _Unit:
    """One NDU in the making: its coded members and a builder of its bytes for an MPS qp."""

    __slots__ = ("members", "_build", "_built")

    def __init__(self, members: list[dict], build):
        self.members = members
        self._build = build
        self._built: dict[int, bytes] = {}

    def build(self, mps_qp: int, link=None) -> bytes:
        if link is not None:  # incremental coding: depends on the state, never cached
            return self._build(mps_qp, link)
        if mps_qp not in self._built:
            self._built[mps_qp] = self._build(mps_qp)
        return self._built[mps_qp]

    def nbytes(self) -> int:
        size = sum(len(b) for b in self._built.values())
        for t in self.members:
            for k in ("levels", "recon", "raw"):
                v = t.get(k)
                size += v.nbytes if isinstance(v, np.ndarray) else 0
        return size


class EncodeCache:
    """NDUs kept between encodes, for sweeps that change a few tensors at a time.

    :meth:`Encoder.encode` with ``cache=`` reuses a unit when the same array objects (by
    identity, not by value) are coded with the same per-tensor settings: qp, λ, and every
    encoder option that changes a unit's bytes. The input arrays must not change in place
    while the cache is in use; the levels and reconstructions of results are shared with
    the cache and read-only. The DC-v2 search (:func:`nnc.search.search`) uses one per
    worker. The least recently used units go first once their arrays and bytes exceed
    ``max_bytes``.

    Parameters
    ----------
    max_bytes : int
        Memory budget of the kept units (levels, reconstructions and NDU bytes).

    Returns
    -------
    EncodeCache
        An empty cache.

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

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._units: OrderedDict = OrderedDict()

    def _lookup_key(self, key: tuple) -> tuple:
        # the arrays are compared by identity; the entry keeps them alive so that ids stay unique
        head, arrays = key[:-3], key[-3]
        return head + (tuple(id(a) for a in arrays),)

    def _get(self, key: tuple):
        k = self._lookup_key(key)
        entry = self._units.get(k)
        if entry is None or any(a is not b for a, b in zip(entry[0], key[-3] + key[-2] + key[-1])):
            self.misses += 1
            return None
        self._units.move_to_end(k)
        self.hits += 1
        return entry[1]

    def _put(self, key: tuple, unit: _Unit) -> None:
        for t in unit.members:          # shared by every result served from the cache
            for name in ("levels", "recon", "raw"):
                if isinstance(t.get(name), np.ndarray):
                    t[name].setflags(write=False)
        k = self._lookup_key(key)
        self._units[k] = (key[-3] + key[-2] + key[-1], unit)
        self._units.move_to_end(k)
        self._trim()

    def _trim(self) -> None:
        total = 0
        for k in reversed(list(self._units)):
            total += self._units[k][1].nbytes()
            if total > self.max_bytes and len(self._units) > 1:
                del self._units[k]

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

    def __len__(self) -> int:
        return len(self._units)


def dcv1_step(weights: np.ndarray, sigmas: np.ndarray, s: int) -> float:
    """DeepCABAC DC-v1 step size, eq. 12: Δ = 2|w_max| / (2|w_max|/σ_min + S) (spec A.10).

    Parameters
    ----------
    weights : numpy.ndarray
        The tensor's weights.
    sigmas : numpy.ndarray
        Their standard deviations (same number of values).
    s : int
        The global integer S.

    Returns
    -------
    float
        The step size (not yet snapped to the qp grid).

    Raises
    ------
    nnc.errors.EncodeError
        If ``sigmas`` does not have one value per weight.

    Examples
    --------
    >>> dcv1_step(np.array([0.5, -1.0]), np.array([0.1, 0.2]), 0)
    0.1
    """
    w = np.asarray(weights, np.float64)
    sg = np.asarray(sigmas, np.float64)
    if sg.shape != w.shape and sg.size != w.size:
        raise EncodeError("sigmas must have one value per weight")
    w_max = float(np.abs(w).max(initial=0.0))
    sigma_min = float(sg.min(initial=np.inf))
    if w_max == 0 or not np.isfinite(sigma_min):
        return float(sigma_min) if np.isfinite(sigma_min) else 1.0
    return 2 * w_max / (2 * w_max / sigma_min + s)


def _metadata_json(arrays: Mapping[str, np.ndarray], result: EncodeResult, given: Mapping[str, str]) -> str:
    """nnc's topology metadata (spec 6.2.1): original shapes of 0-d tensors and original dtypes.

    ``given`` names the original dtype of tensors handed over in another one.
    Empty (as NNCodec writes) when nothing needs restoring.
    """
    import json

    shapes = {k: [] for k, v in arrays.items() if v.ndim == 0}
    dtypes = {}
    for k, v in arrays.items():
        decoded = result.tensors[k].reconstruction.dtype
        original = given.get(k, v.dtype.name)
        if original != decoded.name:
            dtypes[k] = original
    if not shapes and not dtypes:
        return ""
    meta = {"version": 1}
    if shapes:
        meta["shapes"] = shapes
    if dtypes:
        meta["dtypes"] = dtypes
    return json.dumps({"nnc": meta}, separators=(",", ":"), sort_keys=True)


def _ep_fields(eps: list, dq: bool) -> list[dict]:
    return [{"value": v, "dq_state": s if dq else 0, "offset": off} for v, s, off in eps]


#: The default block scan (B = 64) and the fewest elements a tensor needs to get it
#: (spec A.5, measured in benchmarks/results/scan_cost.md).
DEFAULT_SCAN_ORDER = 4
DEFAULT_SCAN_MIN_ELEMENTS = 1 << 20


def default_scan_order(height: int, width: int) -> int:
    """The scan order an :class:`Encoder` with ``scan_order=None`` gives a height x width matrix view.

    A tensor of at least 2^20 elements with at least two block rows gets
    ``DEFAULT_SCAN_ORDER`` (block rows of 64 rows, entry points, parallel decoding);
    smaller ones stay row-major, where the block scan's context resets cost more.

    Parameters
    ----------
    height, width : int
        The tensor's matrix view (spec 11.1): dims[0] and the product of the others.

    Returns
    -------
    int
        ``DEFAULT_SCAN_ORDER`` or 0.

    Examples
    --------
    >>> default_scan_order(4096, 1024), default_scan_order(512, 512), default_scan_order(64, 1 << 16)
    (4, 0, 0)
    """
    if height * width >= DEFAULT_SCAN_MIN_ELEMENTS and height > (4 << DEFAULT_SCAN_ORDER) and width > 1:
        return DEFAULT_SCAN_ORDER
    return 0


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
    idx = np.arange(height * width, dtype=np.int64)
    if scan_order == 0 or height <= 1 or width <= 1:
        return idx
    b = 4 << scan_order
    m = idx.reshape(height, width)
    parts = []
    for r0 in range(0, height, b):
        for c0 in range(0, width, b):
            parts.append(m[r0:r0 + b, c0:c0 + b].reshape(-1))
    return np.concatenate(parts)


def encode(tensors: Mapping[str, object], *, qp: int | None = None, dq: bool = True, **options) -> bytes:
    """Encode a mapping of name to array into an NNC stream (bytes).

    Parameters
    ----------
    tensors : mapping of str to array-like
        Named arrays, coded in this order.
    qp : int, optional
        Global quantisation parameter (spec 12.1); default -38.
    dq : bool
        Dependent quantisation (default True).
    **options
        Any other :class:`Encoder` option.

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
    >>> stream.hex()  # byte for byte what NNCodec 2.1.3 writes for this tensor
    '00040201000806810040008000060e000000001516097700d040c120a0c2a080f74e801f67e2f0'
    """
    return Encoder(qp=qp, dq=dq, **options).encode(tensors).stream


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
    return Encoder(**options).encode(tensors)


__all__ = ["Encoder", "EncoderState", "EncodeCache", "EncodeResult", "EncodedTensor", "encode", "encode_with_reconstruction", "qp_for_step",
           "dcv1_step", "scan_permutation", "default_scan_order"]
