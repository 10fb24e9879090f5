"""The encoder's options, checked once: :class:`EncoderSettings` (informative, spec Annex A).

Every choice the encoder makes per tensor (its qp, its λ, whether it is raw)
follows from these settings and the tensor's name and shape, so a stream's
head can be planned before any tensor is read.

Examples
--------
>>> from nnc.encoding.settings import EncoderSettings
>>> s = EncoderSettings(qp=-30, qp_per_tensor={"head.*": -40})
>>> s.tensor_qp("head.weight", 2), s.tensor_qp("body.weight", 2), s.tensor_qp("body.bias", 1)
(-40, -30, -30)
>>> EncoderSettings(n_gtx=0)
Traceback (most recent call last):
    ...
nnc.errors.EncodeError: n_gtx 0 outside 1..256
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from .. import narrow_floats
from .._options import DEFAULT_QP, as_number, check_bool
from .._threads import thread_count
from ..decoder import restorable_dtype
from ..errors import EncodeError, NNCError
from ..reconstruction import step_size

#: How an update's NDU names its parent (spec 7.4, 14.4): by the SHA-256 or SHA-512 of the parent NDU's payload,
#: or by node ids alone (``parent_node_id_type`` 1, 2, 0).
PARENT_IDS = ("sha256", "sha512", "ids")

#: The options that are True or False (``skip_zero`` may also be None).
_BOOL_OPTIONS = (
    "dq",
    "param_opt",
    "row_skip",
    "keep_dtype",
    "lossless_int",
    "tca",
    "hdsp",
    "differences",
    "raw_when_smaller",
    "tie_shared",
)


def qp_offset_fits(qp: int, mps_qp: int, qp_density: int) -> bool:
    """Whether an NDU's ``qp`` is an offset from the MPS qp its (6 + qp_density)-bit field carries (spec 8.2).

    Examples
    --------
    >>> qp_offset_fits(-38, 0, 2), qp_offset_fits(-129, 0, 2)
    (True, False)
    """
    half = 1 << (5 + qp_density)
    return -half <= qp - mps_qp < half


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
        If ``step`` is not a positive finite number, or beyond the steps a qp can signal.

    Examples
    --------
    >>> qp_for_step(0.00146484375)
    -38
    >>> qp_for_step(0.5, qp_density=3)
    -8
    """
    step = as_number("step", step, integer=False)
    qp_density = as_number("qp_density", qp_density, integer=True)
    if not 0 <= qp_density <= 7:
        raise EncodeError(f"qp_density {qp_density} outside 0..7")
    if not (step > 0 and math.isfinite(step)):
        raise EncodeError(f"step size must be a positive finite number, not {step!r}")
    k = 1 << qp_density
    guess = int(math.floor(math.log2(step) * k))
    distance = {}
    for q in range(guess - 2 * k, guess + 2 * k + 1):
        try:
            distance[q] = abs(math.log2(float(step_size(q, qp_density))) - math.log2(step))
        except NNCError:  # beyond the float32 steps a stream carries (spec 12.1)
            continue
    if not distance:
        raise EncodeError(f"step size {step!r} is beyond the float32 steps a qp can signal (spec 12.1)")
    return min(distance, key=distance.__getitem__)


def check_tensor_name(name) -> None:
    """Raise EncodeError unless ``name`` can be a tensor name in a stream: a non-empty string without NUL, in
    UTF-8 (no lone surrogates) of at most 65536 bytes (an ``st`` string, spec 2.6).

    Examples
    --------
    >>> check_tensor_name("fc.weight")
    >>> check_tensor_name("")
    Traceback (most recent call last):
        ...
    nnc.errors.EncodeError: tensor names must be non-empty strings without NUL, not ''
    """
    from ..container import MAX_STRING_BYTES

    if not isinstance(name, str) or not name or "\x00" in name:
        raise EncodeError(f"tensor names must be non-empty strings without NUL, not {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise EncodeError(f"tensor name {name!r} is not valid UTF-8 text (a lone surrogate; spec 2.6)") from None
    if size > MAX_STRING_BYTES:
        raise EncodeError(
            f"tensor name {name[:40]!r}... takes {size} bytes in UTF-8; a stream holds names of at most "
            f"{MAX_STRING_BYTES} (spec 2.6)"
        )


def check_importance(name: str, f: np.ndarray, size: int) -> None:
    """Raise EncodeError unless ``f`` holds one finite value >= 0 per element of a tensor of ``size`` (an
    infinite weight would make every other error of the tensor free, a NaN one any choice).

    Examples
    --------
    >>> import numpy as np
    >>> check_importance("w", np.array([1.0, np.inf]), 2)
    Traceback (most recent call last):
        ...
    nnc.errors.EncodeError: tensor 'w': importance values must be finite and >= 0 (it holds inf)
    """
    if f.size != size:
        raise EncodeError(f"tensor {name!r}: importance needs one value per element ({size}), not {f.size}")
    good = np.isfinite(f) & (f >= 0)
    if not np.all(good):
        raise EncodeError(f"tensor {name!r}: importance values must be finite and >= 0 (it holds {float(f[~good][0])})")


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` equals one of ``patterns`` or matches it as a glob."""
    return any(fnmatch.fnmatchcase(name, p) or p == name for p in patterns)


#: The scalar options: (name, whether it must be an integer, whether None means "not given"); numpy scalars
#: count, bool does not.
_NUMBER_OPTIONS = (
    ("qp", True, True),
    ("qp_density", True, False),
    ("scan_order", True, True),
    ("n_gtx", True, False),
    ("profile", True, False),
    ("nonweight_qp", True, True),
    ("dcv1_s", True, False),
    ("step", False, True),
    ("rdoq_lambda", False, False),
    ("nonweight_snr_db", False, True),
)


def _settings_from(values: dict) -> "EncoderSettings":
    return EncoderSettings(**values)


def _frozen(mapping) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


def _real_array(value, option: str, name: str) -> np.ndarray:
    """``value`` as an array of real numbers, the same object when it already is one."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise EncodeError(f"{option} of {name!r} must be real numbers, not {array.dtype}")
    return array


@dataclass(frozen=True, eq=False)
class EncoderSettings:
    """Every option of :class:`nnc.encoder.Encoder` except the incremental state, validated once.

    The fields are the keyword arguments of :class:`~nnc.encoder.Encoder` (see there for
    their meaning), normalised: ``qp`` is the resolved global qp (from ``step`` when that
    is given, -38 when neither is), mappings are read-only copies, ``raw`` is a tuple,
    ``threads`` is a count (0 resolved to the number of CPUs) and ``row_skip`` is off in
    profile 0.  ``dataclasses.replace`` makes a checked variant.

    Raises
    ------
    nnc.errors.EncodeError
        If an option is out of range or inconsistent.

    Examples
    --------
    >>> import dataclasses
    >>> s = EncoderSettings(step=0.01)
    >>> s.qp, s.step, s.edition
    (-27, None, 2)
    >>> dataclasses.replace(s, dq=False).dq
    False
    """

    qp: int | None = None
    step: float | None = None
    qp_per_tensor: Mapping[str, int] = field(default_factory=dict)
    nonweight_qp: int | None = None
    qp_density: int = 2
    dq: bool = True
    scan_order: int | None = None
    n_gtx: int = 11
    param_opt: bool = True
    raw: tuple = ()
    lossless_int: bool = True
    blocks: Any = "auto"
    profile: int = 1
    keep_dtype: bool = True
    row_skip: bool = False
    codebook: Any = "few"
    output_formats: Mapping[str, int] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    rdoq_lambda: float = 0.0
    lambda_per_tensor: Mapping[str, float] = field(default_factory=dict)
    importance: Mapping[str, np.ndarray] = field(default_factory=dict)
    sigmas: Mapping[str, np.ndarray] = field(default_factory=dict)
    covariances: Mapping[str, np.ndarray] = field(default_factory=dict)
    covariance_transposed: tuple = ()
    dcv1_s: int = 64
    engine: str | None = None
    threads: int = 1
    tca: bool = True
    hdsp: bool = False
    parent_id: str = "sha256"
    skip_zero: bool | None = None
    differences: bool = False
    raw_when_smaller: bool = True
    tie_shared: bool = True
    nonweight_snr_db: float | None = 20.0

    def __post_init__(self):
        for option, integer, optional in _NUMBER_OPTIONS:
            value = getattr(self, option)
            if value is None and optional:
                continue
            object.__setattr__(self, option, as_number(option, value, integer))
        if self.qp is not None and self.step is not None:
            raise EncodeError("give either qp or step, not both")
        if not 0 <= self.qp_density <= 7:
            raise EncodeError(f"qp_density {self.qp_density} outside 0..7")
        if self.scan_order is not None and not 0 <= self.scan_order <= 4:
            raise EncodeError(f"scan_order {self.scan_order} outside 0..4")
        if not 1 <= self.n_gtx <= 256:
            raise EncodeError(f"n_gtx {self.n_gtx} outside 1..256")
        if self.profile not in (0, 1):
            raise EncodeError(f"profile must be 0 or 1, not {self.profile}")
        if not (
            self.blocks is False
            or self.blocks is True
            or isinstance(self.blocks, str)
            and self.blocks == "auto"
            or isinstance(self.blocks, Mapping)
        ):
            raise EncodeError("blocks must be False, True, 'auto' or a mapping of weight names to their parts")
        if isinstance(self.blocks, Mapping) and not all(isinstance(v, Mapping) for v in self.blocks.values()):
            raise EncodeError(
                "blocks: each weight maps to a mapping of its parts, e.g. {'fc.weight': {'bias': 'fc.bias'}}"
            )
        _check_numbers("qp_per_tensor", self.qp_per_tensor, integer=True)
        _check_numbers("lambda_per_tensor", self.lambda_per_tensor, integer=False)
        if self.codebook not in (False, True, "auto", "few"):
            raise EncodeError("codebook must be False, True, 'auto' or 'few'")
        if self.dtypes is not None and not isinstance(self.dtypes, Mapping):
            raise EncodeError(f"dtypes must be a mapping of tensor names to dtype names, not {self.dtypes!r}")
        dtypes = dict(self.dtypes or {})
        if not all(isinstance(v, str) for v in dtypes.values()):
            raise EncodeError("dtypes values must be dtype names (str)")
        for name, recorded in dtypes.items():
            if restorable_dtype(recorded) is None:
                raise EncodeError(
                    f"dtypes: {recorded!r} for {name!r} is not a dtype a tensor can be restored to (bool, integers, "
                    "float16/32/64, bfloat16, float8_e4m3fn, float8_e5m2)"
                )
        if self.nonweight_snr_db is not None and not 0 <= self.nonweight_snr_db <= 200:  # (NaN too)
            raise EncodeError(
                f"nonweight_snr_db must be a number of dB from 0 to 200, or None, not {self.nonweight_snr_db}"
            )
        if not 0 <= self.rdoq_lambda < math.inf:  # (NaN too)
            raise EncodeError(f"rdoq_lambda must be a finite number >= 0, not {self.rdoq_lambda}")
        lambdas = {k: float(v) for k, v in (self.lambda_per_tensor or {}).items()}
        if any(not (v >= 0 and math.isfinite(v)) for v in lambdas.values()):
            raise EncodeError("lambda_per_tensor values must be finite and >= 0")
        # the caller's arrays themselves (converted to float64 where they are used), so that encoders built from
        # the same mapping share them: EncodeCache compares them by identity
        importance = {k: _real_array(v, "importance", k) for k, v in (self.importance or {}).items()}
        sigmas = {k: _real_array(v, "sigmas", k) for k, v in (self.sigmas or {}).items()}
        for k, v in sigmas.items():
            if not np.all((v > 0) & np.isfinite(v)):  # (an infinite sigma would zero the tensor, eq. 12)
                raise EncodeError(f"sigmas of {k!r} must be finite and positive")
        covariances = {k: _real_array(v, "covariance", k) for k, v in (self.covariances or {}).items()}
        both = sorted(set(covariances) & set(sigmas))
        if both:
            raise EncodeError(f"tensor {both[0]!r} has both sigmas (DC-v1) and a covariance: give one")
        both = sorted(set(importance) & set(sigmas))
        if both:  # with RDOQ both would weight its error: one would be dropped
            raise EncodeError(
                f"tensor {both[0]!r} has both sigmas (DC-v1, importance 1/sigma^2) and an importance: give one"
            )
        if self.parent_id not in PARENT_IDS:
            raise EncodeError(f"parent_id must be one of {', '.join(map(repr, PARENT_IDS))}, not {self.parent_id!r}")
        if int(self.dcv1_s) < 0:
            raise EncodeError("dcv1_s must be a non-negative integer")
        try:
            threads = thread_count(self.threads)
        except ValueError as exc:
            raise EncodeError(str(exc)) from None
        for option in _BOOL_OPTIONS:  # bool("False") is True: a string here is a mistake, not a truth value
            check_bool(option, getattr(self, option))
        if self.skip_zero is not None:
            check_bool("skip_zero", self.skip_zero)
        if not isinstance(self.output_formats or {}, Mapping):
            raise EncodeError(
                f"output_formats must be a mapping of tensor names to formats, not {type(self.output_formats).__name__}"
            )
        qd = self.qp_density
        qp = qp_for_step(self.step, qd) if self.step is not None else (DEFAULT_QP if self.qp is None else int(self.qp))
        main = "step: " if self.step is not None else ""  # (the message begins "qp N (qp_density D) gives...")
        nonweight = [] if self.nonweight_qp is None else [("nonweight_qp: ", self.nonweight_qp)]
        for option, tensor_qp in (
            [(main, qp)]
            + nonweight
            + [(f"qp_per_tensor[{k!r}]: ", v) for k, v in dict(self.qp_per_tensor or {}).items()]
        ):
            try:
                step_size(int(tensor_qp), qd)
            except NNCError as exc:  # a step beyond float32 is a bad option, not a bad stream
                raise EncodeError(f"{option}{exc.message}") from None
        normalised = dict(
            qp=qp,
            step=None,
            qp_per_tensor=_frozen(self.qp_per_tensor),
            dq=bool(self.dq),
            param_opt=bool(self.param_opt),
            raw=_names("raw", self.raw),
            row_skip=bool(self.row_skip) and self.profile == 1,
            output_formats=_frozen(self.output_formats),
            dtypes=_frozen(dtypes),
            rdoq_lambda=float(self.rdoq_lambda),
            lambda_per_tensor=_frozen(lambdas),
            importance=_frozen(importance),
            sigmas=_frozen(sigmas),
            covariances=_frozen(covariances),
            covariance_transposed=_names("covariance_transposed", self.covariance_transposed),
            dcv1_s=int(self.dcv1_s),
            threads=threads,
            tca=bool(self.tca),
            hdsp=bool(self.hdsp),
            skip_zero=None if self.skip_zero is None else bool(self.skip_zero),
            differences=bool(self.differences),
            raw_when_smaller=bool(self.raw_when_smaller),
            tie_shared=bool(self.tie_shared),
        )
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    def __reduce__(self):
        # (pickle, copy: the read-only mappings go as dicts; the options are checked again on the way back)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _settings_from, ({k: dict(v) if isinstance(v, Mapping) else v for k, v in values.items()},)

    @property
    def edition(self) -> int:
        """The NNC edition the profile writes: 2 for profile 1, 1 for profile 0."""
        return 2 if self.profile == 1 else 1

    def check_names(self, names) -> None:
        """Refuse an option keyed by exact tensor names (``dtypes``, ``importance``, ``sigmas``, ``covariances``,
        ``output_formats``) that names a tensor not among ``names`` (a misspelt name would turn the option off);
        the options that take glob patterns (``qp_per_tensor``, ``raw``...) may match nothing."""
        for option in ("dtypes", "importance", "sigmas", "covariances", "output_formats"):
            unknown = [k for k in getattr(self, option) if k not in names]
            if unknown:
                raise EncodeError(f"{option} names a tensor that is not in the model: {unknown[0]!r}")

    @property
    def codebook_from_values(self) -> bool:
        """Whether the codebook choice can change a tensor's decoded dtype (``True``, ``"auto"``: float64, spec
        12.6), which the stream's plan then cannot know from the headers; ``"few"`` keeps the tensor's dtype."""
        return self.codebook is True or self.codebook == "auto"

    def tensor_qp(self, name: str, ndim: int) -> int:
        """The qp of a float tensor of this name and number of dimensions (DC-v1 aside).

        Examples
        --------
        >>> EncoderSettings(qp=-30, qp_per_tensor={"head.*": -40}).tensor_qp("head.weight", 2)
        -40
        """
        for pattern, value in self.qp_per_tensor.items():
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                return int(value)
        if ndim <= 1 and self.nonweight_qp is not None:
            return int(self.nonweight_qp)
        assert self.qp is not None  # __post_init__ turns a step or no qp into a qp
        return self.qp

    def qp_given(self, name: str) -> bool:
        """Whether ``qp_per_tensor`` gives this tensor its qp (by name or pattern).

        Examples
        --------
        >>> EncoderSettings(qp_per_tensor={"head.*": -40}).qp_given("head.bias")
        True
        """
        return matches(name, self.qp_per_tensor)

    def floors_nonweight(self, name: str, shape: tuple) -> bool:
        """Whether a float tensor of this name and shape may be coded at a finer qp than its own to keep
        ``nonweight_snr_db`` (spec A.7): one with at most one dimension longer than 1 (a bias, a norm's scale, also
        as an export's (1, 512)) whose qp is given neither by name nor by ``nonweight_qp``, when every qp of the
        settings fits the offsets around an MPS qp of 0 (spec 8.2).

        Examples
        --------
        >>> s = EncoderSettings(qp_per_tensor={"head.*": -40})
        >>> s.floors_nonweight("norm", (1, 512)), s.floors_nonweight("head.bias", (8,)), s.floors_nonweight("w", (2, 2))
        (True, False, False)
        """
        if not self.nonweight_snr_db or sum(d > 1 for d in shape) > 1 or self.qp_given(name):
            return False
        if len(shape) <= 1 and self.nonweight_qp is not None:
            return False  # (its qp is the non-weight qp given)
        return name not in self.sigmas and all(
            qp_offset_fits(q, 0, self.qp_density) for q in (self.qp, *self.qp_per_tensor.values()) if q is not None
        )

    def tensor_lambda(self, name: str) -> float:
        """The rate-distortion λ of this tensor (``lambda_per_tensor``, else ``rdoq_lambda``).

        Examples
        --------
        >>> EncoderSettings(rdoq_lambda=0.1, lambda_per_tensor={"fc1.*": 0.4}).tensor_lambda("fc1.weight")
        0.4
        """
        for pattern, value in self.lambda_per_tensor.items():
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                return value
        return self.rdoq_lambda

    def tensor_dq(self, name: str) -> bool:
        """Whether this tensor (or the block whose weight it is) uses DQ: not with a covariance (spec A.16).

        Examples
        --------
        >>> import numpy as np
        >>> s = EncoderSettings(dq=True, covariances={"fc.weight": np.eye(3)})
        >>> s.tensor_dq("fc.weight"), s.tensor_dq("other.weight")
        (False, True)
        """
        return self.dq and name not in self.covariances

    def is_raw(self, name: str) -> bool:
        """Whether this tensor is stored uncompressed (``raw``)."""
        return matches(name, self.raw)

    def exact_float8(self, name: str, original_dtype: str | None = None) -> str | None:
        """The float8 format a tensor is coded exactly in (spec A.17): its original dtype (``dtypes`` first, then
        ``original_dtype``, the dtype its file holds) when that is float8_e4m3fn or float8_e5m2 and ``raw`` does
        not name it; else None."""
        original = self.dtypes.get(name, original_dtype)
        return original if original in narrow_floats.FLOAT8 and not self.is_raw(name) else None

    def codes_alike(self, a: str, b: str, ndim: int) -> bool:
        """Whether tensors ``a`` and ``b`` of ``ndim`` dimensions get the same per-tensor options, so that one coded
        tensor may stand for both (tied weights, spec 6.2.1): the same qp (and whether it is given by name), λ, DQ,
        raw storage, output format and recorded dtype, and neither has importance, sigmas or a covariance of its own.

        Examples
        --------
        >>> s = EncoderSettings(qp=-30, qp_per_tensor={"head.*": -40})
        >>> s.codes_alike("embed.weight", "tok.weight", 2), s.codes_alike("embed.weight", "head.weight", 2)
        (True, False)
        """
        own = (self.importance, self.sigmas, self.covariances)
        return (
            not any(n in m for m in own for n in (a, b))
            and self.tensor_qp(a, ndim) == self.tensor_qp(b, ndim)
            and self.qp_given(a) == self.qp_given(b)
            and self.tensor_lambda(a) == self.tensor_lambda(b)
            and self.tensor_dq(a) == self.tensor_dq(b)
            and self.is_raw(a) == self.is_raw(b)
            and self.output_formats.get(a) == self.output_formats.get(b)
            and self.dtypes.get(a) == self.dtypes.get(b)
        )

    def replace(self, **changes) -> "EncoderSettings":
        """A copy with some options changed, checked again."""
        return dataclasses.replace(self, **changes)


def _check_numbers(option: str, values, integer: bool) -> None:
    """Refuse a per-tensor option that is not a mapping of names to numbers (integers with ``integer``)."""
    if values is None:
        return
    if not isinstance(values, Mapping):
        raise EncodeError(f"{option} must be a mapping of tensor names or patterns to values, not {values!r}")
    for pattern, value in values.items():
        if not isinstance(pattern, str):
            raise EncodeError(f"{option} keys must be tensor names or patterns (str), not {pattern!r}")
        as_number(f"{option}[{pattern!r}]", value, integer)


def _names(option: str, value) -> tuple:
    """A collection of tensor names or patterns as a tuple; one name alone (a str) is one name, not its letters."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise EncodeError(f"{option} must be a tensor name or a collection of names, not {value!r}") from None
    if not all(isinstance(n, str) for n in names):
        raise EncodeError(f"{option} must hold tensor names or patterns (str), not {names!r}")
    return names


#: The option names of :class:`EncoderSettings` (all keyword arguments of ``Encoder`` but ``state``).
OPTIONS = tuple(f.name for f in dataclasses.fields(EncoderSettings))

__all__ = ["EncoderSettings", "qp_for_step", "matches", "OPTIONS"]
