"""The quantiser (informative, spec Annex A): one tensor in, a :class:`CodedTensor` out.

It chooses the payload type (INT, FLOAT, RAW_FLOAT, codebook), the qp and the
integers (nearest rounding, RDOQ or the dependent-quantisation trellis) and
computes the exact reconstruction a conforming decoder returns.

Examples
--------
>>> import numpy as np
>>> from nnc.engine import get_engine
>>> from nnc.encoding.settings import EncoderSettings
>>> from nnc.encoding.quantiser import Quantiser
>>> q = Quantiser(EncoderSettings(qp=-8, dq=False), get_engine())
>>> t = q.quantise("w", np.array([[0.4, -1.3]]))
>>> t.ptype, t.qp, t.step, t.levels.tolist(), t.recon.tolist()
('FLOAT', -8, 0.25, [2, -5], [[0.5, -1.25]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import narrow_floats
from ..container import codebook_bits
from ..decoder import Limits
from ..engine.matrix import INT32_MAX, effective_scan_order, matrix_view
from ..errors import EncodeError, NNCError
from ..measure import SLICE as MEASURE_SLICE
from ..measure import error_sums
from ..measure import snr_db as measured_snr_db
from ..reconstruction import DECOMPRESSED_DATA_FORMATS, reconstruct_codebook, reconstruct_uniform, step_size
from .feedback import (
    FactorCache,
    FeedbackFactor,
    check_covariance,
    covariance_columns,
    error_feedback_levels,
    feedback_factor,
)
from .settings import EncoderSettings, check_importance, matches, qp_for_step, qp_offset_fits


def levels_fit_int32(peak: float, step: float) -> bool:
    """Whether values up to ``peak`` in magnitude quantise to int32 levels at ``step`` (spec 7.4), with room for the
    trellis's one-level moves: the one test of the encoder, its qp searches and the codec."""
    return peak / float(step) < INT32_MAX - 2


#: nnr_decompressed_data_format codes for input dtypes that a profile-1 stream can restore (spec 12.6)
RESTORABLE_FORMATS = {"float16": 8, "float64": 9}
#: nnr_decompressed_data_format TENSOR_FLOAT32 (spec 12.6): what a ``codebook="few"`` tensor signals to decode as
#: float32, the dtype of a uniformly coded one, not as a codebook's float64.
FLOAT32_FORMAT = 1
#: ``codebook="few"`` (the default) weighs a codebook for a float tensor of at most this many distinct values
#: (weights quantised before, a constant) and at least ``FEW_VALUES_MIN_SIZE`` elements (spec A.8).
FEW_VALUES = 256
FEW_VALUES_MIN_SIZE = 1024


def few_distinct_values(x: np.ndarray) -> bool:
    """Whether ``x`` holds at most ``FEW_VALUES`` distinct values and at least ``FEW_VALUES_MIN_SIZE`` elements:
    the distinct values of a strided sample of 4096 first (most tensors stop there), then of every element, slice
    by slice."""
    flat = x.reshape(-1)
    if flat.size < FEW_VALUES_MIN_SIZE:
        return False
    seen = np.unique(flat[:: max(1, flat.size // 4096)])
    for i in range(0, flat.size, 1 << 20):
        if seen.size > FEW_VALUES:
            return False
        seen = np.union1d(seen, np.unique(flat[i : i + (1 << 20)]))
    return seen.size <= FEW_VALUES


#: Above this many elements the "auto" and "few" modes weigh the two codings on bands of the tensor (A.8)
CODEBOOK_SAMPLE = 1 << 18
_SAMPLE_BANDS = 8


def unit_mean(importance):
    """A given importance scaled to mean 1 over its tensor (A.9), so that λ keeps its meaning (squared steps per
    bit) whatever the importance's units: an empirical Fisher's squared gradients are ~1e-9, which made the rate
    term drown the distortion (every weight 0). None, and an importance of mean 0, as they are."""
    if importance is None:
        return None
    f = np.asarray(importance, np.float64).reshape(-1)
    mean = float(f.mean()) if f.size else 0.0
    return f / mean if 0 < mean < math.inf else f


def sample_bands(a: np.ndarray, target: int = CODEBOOK_SAMPLE) -> np.ndarray:
    """About ``target`` elements of the 2-D array ``a`` in eight evenly spaced bands of rows (of columns when
    eight bands of rows would take every row), joined: a smaller tensor whose coding costs per element resemble
    the whole's; ``a`` itself when it is not larger than ``target``."""
    height, width = a.shape
    if a.size <= target:
        return a
    rows, columns = -(-target // (_SAMPLE_BANDS * width)), -(-target // (_SAMPLE_BANDS * height))
    by_rows = rows * _SAMPLE_BANDS < height
    if not by_rows and columns * _SAMPLE_BANDS >= width:
        return a
    n, band = (height, rows) if by_rows else (width, columns)
    starts = np.linspace(0, n - band, _SAMPLE_BANDS).astype(np.int64)
    parts = [a[s : s + band] if by_rows else a[:, s : s + band] for s in starts]
    return np.concatenate(parts, axis=0 if by_rows else 1)


@dataclass
class CodedTensor:
    """One tensor as the quantiser coded it: what its NDU needs.

    Attributes
    ----------
    name : str
    shape : tuple
        The coded shape (``(1,)`` for a 0-d tensor).
    ptype : str
        ``"INT"``, ``"FLOAT"`` or ``"RAW_FLOAT"``.
    levels : numpy.ndarray or None
        The integers in scan order (codebook indices for a codebook tensor; None for raw).
    qp, step : int or None, float or None
        The tensor's qp and step size (None for INT and RAW_FLOAT).
    dq : bool
        Dependent quantisation.
    height, width, scan : int
        The tensor as a matrix and its scan order (spec 11.2).
    recon : numpy.ndarray
        What a conforming decoder returns (empty, of its dtype, once :meth:`forget_reconstruction` let it go).
    fmt : int or None
        The signalled nnr_decompressed_data_format (spec 12.6).
    raw : numpy.ndarray or None
        The float32 values of a RAW_FLOAT tensor.
    codebook : list of int or None
        The codebook (spec 12.4); ``cb_zero`` is the index of its zero.
    init_sets : numpy.ndarray or None
        The contexts' init sets once chosen (spec A.3), so that coding does not choose them again.
    kept_raw : str or None
        Why a tensor that was to be quantised is stored raw instead: it holds inf or NaN, or
        its values would leave int32 levels at its qp (None otherwise).
    """

    name: str
    shape: tuple
    ptype: str
    levels: np.ndarray | None
    qp: int | None
    step: float | None
    dq: bool
    height: int
    width: int
    scan: int
    recon: np.ndarray
    fmt: int | None = None
    raw: np.ndarray | None = None
    codebook: list | None = None
    cb_zero: int = 0
    init_sets: np.ndarray | None = None
    kept_raw: str | None = None
    kept_exact: str | None = None  # why a float tensor is coded exactly at a qp other than its own

    def codebook_bits(self) -> int:
        """The bits of its codebook() syntax (spec 7.2) as built; 0 without a codebook."""
        if not self.codebook:
            return 0
        return codebook_bits(self.codebook, self.cb_zero - (len(self.codebook) >> 1))

    @classmethod
    def raw_float(
        cls, name: str, values: np.ndarray, height: int, width: int, recon=None, fmt=None, kept_raw=None
    ) -> "CodedTensor":
        """A RAW_FLOAT record (spec 7.5): ``values`` float32 in the tensor's shape, kept exactly;
        ``kept_raw`` says why, when the tensor was to be quantised."""
        return cls(
            name=name,
            shape=values.shape,
            ptype="RAW_FLOAT",
            levels=None,
            qp=None,
            step=None,
            dq=False,
            height=height,
            width=width,
            scan=0,
            recon=values if recon is None else recon,
            fmt=fmt,
            raw=values,
            kept_raw=kept_raw,
        )

    def forget_reconstruction(self) -> None:
        """Let the reconstruction go (keeping its dtype): the streaming encoder measures it and writes the
        integers, so that a tensor in flight holds them alone."""
        self.recon = np.empty(0, self.recon.dtype)

    def arrays(self) -> list:
        """The numpy arrays this record holds (for memory accounting and read-only sharing)."""
        return [a for a in (self.levels, self.recon, self.raw) if isinstance(a, np.ndarray)]


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


#: Weights after which the distortion-only DQ trellis fixes its path (bounded memory, spec A.2).
DQ_TRELLIS_CHUNK = 1 << 16

#: Elements per slice of the checks and conversions done in slices (small temporaries).
SLICE = 1 << 20


def as_float_array(name: str, value) -> tuple[np.ndarray, str]:
    """The tensor as a float array for quantisation, and its original dtype name.

    Float tensors are returned as they are (no float64 copy: the quantiser divides them
    by the step in float64, which gives the same values); integers become float64.
    """
    arr = np.asarray(value)
    dtype_name = arr.dtype.name
    if narrow_floats.is_narrow(dtype_name):  # (ml_dtypes' bfloat16 and float8 arrays)
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "fiub":
        raise EncodeError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:  # (it decoded as float32, its dtype lost: as a file's)
        raise EncodeError(
            f"tensor {name!r} is {arr.dtype.name} (long double), a dtype no stream restores: convert it to float64"
        )
    x = arr if arr.dtype.kind == "f" else arr.astype(np.float64)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and finite_peak(x) > FLOAT32_MAX:
        raise EncodeError(
            f"tensor {name!r} ({arr.dtype}) holds finite values beyond the float32 range (up to "
            f"{finite_peak(x):.4g}): a stream carries float32 steps and raw values (spec 7.5), they would become inf"
        )
    return x, dtype_name


def check_empty_dims(name: str, shape: tuple) -> None:
    """Refuse an empty tensor whose other dimensions multiply beyond the decoders' default element limit: a decoder
    checks a zero dimension as if it were 1 (spec 15.2), so its stream would not decode (spec A.7)."""
    if 0 in shape:
        declared = math.prod(max(d, 1) for d in shape)
        if declared > Limits.max_tensor_elements:
            raise EncodeError(
                f"tensor {name!r} is empty but its other dimensions {list(shape)} multiply to {declared}, beyond the "
                f"{Limits.max_tensor_elements} elements decoders accept by default (spec 15.2): give it a smaller shape"
            )


def check_recorded_dtype(name: str, arr: np.ndarray, recorded: str, differences: bool = False) -> None:
    """Refuse a ``dtypes`` entry the tensor's values cannot be restored to unchanged: an integer or bool dtype for
    float values or for integers outside its range, a float format for integers (spec 6.2.1). ``differences``: the
    values are differences to the receiver's model, which may leave the range (added in the dtype, modulo 2^bits)."""
    kind = np.asarray(arr).dtype.kind
    if narrow_floats.is_narrow(recorded) or np.dtype(recorded).kind == "f":
        if kind not in "fV":
            raise EncodeError(f"dtypes: tensor {name!r} holds {np.asarray(arr).dtype} values, not {recorded} ones")
        if kind == "f" and not differences:  # (bfloat16 inputs, kind V, hold their own values)
            largest = float(
                narrow_floats.largest(recorded) if narrow_floats.is_narrow(recorded) else np.finfo(recorded).max
            )
            peak = finite_peak(np.asarray(arr))
            if peak > largest:
                raise EncodeError(
                    f"dtypes: tensor {name!r} holds values up to {peak:.6g}, beyond {recorded}'s largest "
                    f"{largest:.6g}: a {recorded} file cannot hold them"
                )
        return
    if kind not in "iub":
        raise EncodeError(f"dtypes: tensor {name!r} holds {np.asarray(arr).dtype} values, not {recorded} ones")
    info = np.iinfo(recorded) if np.dtype(recorded).kind in "iu" else None
    if info is None:
        low, high = 0, 1
    else:
        low, high = int(info.min), int(info.max)
    if not differences and arr.size and (int(np.min(arr)) < low or int(np.max(arr)) > high):
        raise EncodeError(
            f"dtypes: tensor {name!r} holds values from {int(np.min(arr))} to {int(np.max(arr))}, outside {recorded}"
        )


def exact_qp(float8: str, qp_density: int) -> int:
    """The qp whose step is the float8 format's subnormal spacing (a power of two, so exact at any qp density):
    the finest step of an exactly coded float8 tensor (spec A.17), whose qp is this or coarser."""
    exponent = int(np.log2(narrow_floats.smallest_step(float8)))
    return exponent << qp_density


def keeps_snr(x: np.ndarray, recon: np.ndarray, snr_db: float) -> bool:
    """Whether ``recon`` keeps an SNR of at least ``snr_db`` of ``x`` (all zeros: always; :mod:`nnc.measure`).

    Examples
    --------
    >>> keeps_snr(np.float32([1, 2]), np.float32([1, 2.1]), 20.0), keeps_snr(np.float32([1, 2]), np.zeros(2), 1.0)
    (True, False)
    """
    sums = error_sums(x, recon)
    return measured_snr_db(sums.energy, sums.error) >= snr_db


def qp_keeping_snr(x: np.ndarray, qp: int, snr_db: float, qp_density: int) -> int:
    """The coarsest qp, no coarser than ``qp``, at which rounding ``x`` to the step (spec 12.1) keeps an SNR of at
    least ``snr_db``, down to the finest qp whose offset fits an MPS qp of 0 (spec 8.2); ``qp`` when ``x`` keeps it
    there already or is all zeros (spec A.7's floor of the tensors of at most one dimension).

    Examples
    --------
    >>> running_mean = np.random.default_rng(0).normal(0, 1e-3, 64).astype(np.float32)
    >>> qp_keeping_snr(running_mean, -38, 20.0, 2), qp_keeping_snr(running_mean * 1000, -38, 20.0, 2)
    (-47, -38)
    """
    flat = x.reshape(-1)
    slices = [flat[i : i + MEASURE_SLICE] for i in range(0, flat.size, MEASURE_SLICE)]

    def keeps(q: int) -> bool:  # (the sums of the slices, each taken in float64 at its own scale: nnc.measure)
        step = float(step_size(q, qp_density))
        sums = [error_sums(part, step * _rounded_multiples(part, step)) for part in slices]
        return measured_snr_db(sum(e.energy for e in sums), sum(e.error for e in sums)) >= snr_db

    energy = sum(error_sums(part, part).energy for part in slices)
    if energy == 0.0 or keeps(qp):
        return qp
    finest = -(1 << (5 + qp_density))
    # first guess: the step whose uniform error, step^2 / 12 a value, meets the target (qp = 2^qpd log2 step)
    guess = math.sqrt(12.0 * energy / 10.0 ** (snr_db / 10.0) / flat.size)
    q = round(math.log2(guess) * (1 << qp_density)) if guess > 0.0 else finest
    q = min(qp - 1, max(finest, q))
    if keeps(q):
        while q + 1 < qp and keeps(q + 1):
            q += 1
        return q
    while q > finest and not keeps(q):
        q -= 1
    return q


#: The largest finite float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite_peak(x: np.ndarray) -> float:
    """The largest magnitude among the finite values of ``x`` (0 for none; in slices: small temporaries)."""
    flat = x.reshape(-1)
    peak = 0.0
    for i in range(0, flat.size, SLICE):
        part = np.abs(flat[i : i + SLICE])
        part = part[np.isfinite(part)]
        if part.size:
            peak = max(peak, float(part.max()))
    return peak


def is_finite(x: np.ndarray) -> bool:
    """True when ``x`` holds no inf or NaN (checked in slices: small temporaries)."""
    flat = x.reshape(-1)
    return all(np.isfinite(flat[i : i + SLICE]).all() for i in range(0, flat.size, SLICE))


#: The values a test of every value looks at a time (a weight's mixed signs or fractions end it at the first).
TEST_SLICE = 1 << 16


def one_sign(x: np.ndarray) -> int:
    """1 when every value of ``x`` is positive, -1 when every one is negative, else 0 (in small slices)."""
    flat = x.reshape(-1)
    sign = 1 if flat.size and flat[0] > 0 else -1 if flat.size and flat[0] < 0 else 0
    for i in range(0, flat.size if sign else 0, TEST_SLICE):
        if not (flat[i : i + TEST_SLICE] * sign > 0).all():
            return 0
    return sign


def whole_numbers(x: np.ndarray, limit: float = 2**24) -> bool:
    """Whether every value of ``x`` is a whole number of magnitude at most ``limit`` (in small slices)."""
    flat = x.reshape(-1)
    for i in range(0, flat.size, TEST_SLICE):
        part = flat[i : i + TEST_SLICE].astype(np.float64, copy=False)
        if not (np.abs(part) <= limit).all() or not (np.rint(part) == part).all():
            return False
    return bool(flat.size)


def unchanged(recon: np.ndarray, x: np.ndarray) -> bool:
    """Whether ``recon`` holds the values of ``x`` (in small slices)."""
    a, b = recon.reshape(-1), x.reshape(-1)
    return all(np.array_equal(a[i : i + TEST_SLICE], b[i : i + TEST_SLICE]) for i in range(0, a.size, TEST_SLICE))


def stored_raw(name: str, f32: np.ndarray, height: int, width: int, fmt, dtype_name: str, kept_raw) -> CodedTensor:
    """A tensor stored exactly (RAW_FLOAT, spec 7.5) from its float32 values ``f32``, reconstructed in
    ``dtype_name`` when an output format ``fmt`` restores it; ``kept_raw`` says why (None: asked for)."""
    recon = f32 if fmt is None else f32.astype(np.dtype(dtype_name))
    return CodedTensor.raw_float(name, f32, height, width, recon=recon, fmt=fmt, kept_raw=kept_raw)


def float32_holds(values: np.ndarray, f32: np.ndarray) -> bool:
    """Whether ``f32`` (``values`` as float32) holds every integer of ``values`` unchanged; true for floats (their
    rounding to float32 is RAW_FLOAT's, spec 7.5)."""
    if values.dtype.kind not in "iu" or not values.size or max(int(values.max()), -int(values.min())) <= 2**24:
        return True
    return bool(np.array_equal(f32.reshape(values.shape).astype(np.float64), values))


def _holds(dtype: np.dtype, values: np.ndarray) -> bool:
    """Whether the finite ``values`` stay finite in the (narrower or equal) float ``dtype`` (in slices)."""
    if dtype.itemsize >= values.dtype.itemsize:
        return True
    flat = values.reshape(-1)
    with np.errstate(over="ignore"):
        return all(np.isfinite(flat[i : i + SLICE].astype(dtype)).all() for i in range(0, flat.size, SLICE))


def non_finite_error(name: str, x: np.ndarray) -> EncodeError:
    """The error for a tensor with NaN or Inf that cannot be stored raw (spec 7.5): names the first one."""
    flat = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
    where = tuple(int(i) for i in np.unravel_index(flat, x.shape)) if x.ndim else ()
    return EncodeError(
        f"tensor {name!r} holds {x.reshape(-1)[flat]} at index {list(where)}: a quantised tensor "
        f"(here a member of a BLOCK unit, as blocks=True asks) cannot carry NaN or Inf; only a RAW_FLOAT NDU can: "
        "blocks='auto' (the default) or False stores it apart",
        clause="7.5",
    )


#: The default block scan (B = 64) and the fewest elements a tensor needs to get it
#: (spec A.5, measured in benchmarks/results/scan_cost.md).
DEFAULT_SCAN_ORDER = 4
DEFAULT_SCAN_MIN_ELEMENTS = 1 << 20


def default_scan_order(height: int, width: int) -> int:
    """The scan order an :class:`~nnc.encoder.Encoder` with ``scan_order=None`` gives a height x width matrix view.

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


def tensor_geometry(shape: tuple, scan_order: int | None) -> tuple[tuple, int, int, int]:
    """(coded shape, height, width, scan order) of a tensor of this shape (spec 11.2);
    ``scan_order=None`` takes :func:`default_scan_order`."""
    shape = tuple(int(d) for d in shape) or (1,)
    height, width = matrix_view(shape)
    if scan_order is None:
        scan_order = default_scan_order(height, width)
    return shape, height, width, effective_scan_order(height, width, scan_order)


def _nearest_levels(flat: np.ndarray, step: float) -> np.ndarray:
    """Nearest integers to flat / step (ties away from zero, spec A.1), computed in float64 slice by
    slice, so that no tensor-sized float64 temporaries are made."""
    levels = np.empty(flat.size, np.int32)
    for i in range(0, flat.size, SLICE):
        levels[i : i + SLICE] = _rounded_multiples(flat[i : i + SLICE], step)
    return levels


def _rounded_multiples(x: np.ndarray, step: float) -> np.ndarray:
    """sgn(x) floor(|x| / step + 0.5) in float64, the nearest multiple counts of ``step`` with ties away from zero
    (spec A.1): the rounding of the quantiser and of the 1-D floor's measurements alike.

    Examples
    --------
    >>> _rounded_multiples(np.array([0.5, -0.5, 1.5, 2.5, 0.49]), 1.0).tolist()
    [1.0, -1.0, 2.0, 3.0, 0.0]
    """
    scaled = np.atleast_1d(np.divide(x, step, dtype=np.float64))  # (a 0-d tensor too: in place below)
    rounded = np.abs(scaled)
    rounded += 0.5
    np.floor(rounded, out=rounded)
    return np.copysign(rounded, scaled, out=rounded).reshape(np.shape(x))  # (-0.0 becomes 0 once a level)


def _integers_losslessly(name: str, arr: np.ndarray, shape: tuple, height: int, width: int, scan: int) -> CodedTensor:
    """An integer tensor coded exactly as int32 levels (spec 7.4); an EncodeError if a value lies outside int32 (its
    range checked on the values themselves: a cast first would wrap uint64 ones into range)."""
    if arr.size and (int(arr.min()) < -INT32_MAX - 1 or int(arr.max()) > INT32_MAX):
        raise EncodeError(
            f"integer tensor {name!r} has values outside int32 (from {int(arr.min())} to {int(arr.max())}): "
            "NNC codes integers as int32 levels (spec 7.4) and raw values as float32 (spec 7.5), so no "
            "option carries it exactly; leave it out of the model or split it"
        )
    ints = arr.astype(np.int32).reshape(-1)
    return CodedTensor(
        name=name,
        shape=shape,
        ptype="INT",
        levels=ints,
        qp=None,
        step=None,
        dq=False,
        height=height,
        width=width,
        scan=scan,
        recon=ints.reshape(shape),
    )


class Quantiser:
    """Turns one named array into a :class:`CodedTensor` under fixed settings.

    Parameters
    ----------
    settings : EncoderSettings
    engine : ``types.ModuleType``
        The entropy-coding engine (:func:`nnc.engine.get_engine`), for RDOQ and rate estimates.
    factors : FactorCache, optional
        Where the covariances' factors (spec A.16) are kept between tensors and encodes; default: none kept.
    """

    def __init__(self, settings: EncoderSettings, engine, factors: FactorCache | None = None):
        self.settings = settings
        self.engine = engine
        self.factors = factors

    def feedback_factor(self, name: str, columns: int) -> FeedbackFactor:
        """The factor of tensor ``name``'s covariance (of ``columns`` inputs), from ``self.factors`` when kept there."""
        covariance = self.settings.covariances[name]
        kept = None if self.factors is None else self.factors.get(covariance)
        if kept is not None and kept.columns == columns:
            return kept
        h = check_covariance(name, covariance, columns)
        try:
            factor = feedback_factor(h)
        except EncodeError as exc:
            raise EncodeError(f"tensor {name!r}: {exc.message}") from None
        if self.factors is not None:
            self.factors.put(covariance, factor)
        return factor

    def quantise(
        self,
        name: str,
        arr: np.ndarray,
        *,
        in_block: bool = False,
        dq: bool | None = None,
        original_dtype: str | None = None,
        difference: bool = False,
    ) -> CodedTensor:
        """Quantise one tensor; return what its NDU needs (with any forced output format). ``dq``: the
        quantiser of a block member, which follows its weight's (default: :meth:`~nnc.encoding.settings.EncoderSettings.tensor_dq`).
        ``original_dtype``: the dtype the model file holds (a float8 tensor is coded exactly), when the settings'
        ``dtypes`` do not say it. ``difference``: ``arr`` is a difference to the receiver's tensor (incremental
        coding), whose entries at 0 only leave it unchanged."""
        s = self.settings
        check_empty_dims(name, np.shape(arr))
        if name in s.dtypes:
            check_recorded_dtype(name, arr, s.dtypes[name], differences=s.differences)
        t = self._values(
            name,
            arr,
            in_block=in_block,
            dq=s.tensor_dq(name) if dq is None else dq,
            original_dtype=original_dtype,
            difference=difference,
        )
        fmt = s.output_formats.get(name)
        if fmt is not None:
            from ..reconstruction import convert_to_format

            if s.profile == 0 and fmt > 1:
                raise EncodeError(f"output format {fmt} needs profile 1 (2nd edition)")
            if t.ptype == "INT":
                assert t.levels is not None  # INT tensors carry their integers
                base = t.levels.reshape(t.shape)
            elif t.ptype == "FLOAT" and t.codebook is None:
                assert t.levels is not None  # uniform FLOAT tensors carry their levels
                base = reconstruct_uniform(t.levels, np.float32(t.step)).reshape(t.shape)
            else:
                base = t.recon
            try:
                t.recon = convert_to_format(base, fmt)
            except NNCError as exc:
                raise EncodeError(f"tensor {name!r}: {exc.message}") from None
            if t.recon.dtype.kind == "f":  # a decoder rounds overflow to inf (spec 12.6): refused, not written
                lost = np.isfinite(base) & ~np.isfinite(t.recon)
                if lost.any():
                    raise EncodeError(
                        f"tensor {name!r}: values up to {float(np.abs(base[lost]).max()):.6g} leave the range of "
                        f"output format {fmt} ({t.recon.dtype.name}): they would decode as inf"
                    )
            elif np.asarray(base).dtype.kind == "f" and not np.array_equal(base, t.recon):
                from ..encoder import _warn  # an integer format rounds the values beyond their quantisation

                _warn(
                    f"tensor {name!r}: output format {fmt} ({t.recon.dtype.name}) holds whole numbers, and the "
                    f"tensor's reconstruction has fractions{'' if t.step is None else f' (step {t.step:g})'}: they "
                    "decode rounded (spec 12.6); a float output format, or a step of 1 or a multiple of it, keeps them"
                )
            t.fmt = fmt
        return t

    def levels(
        self,
        name: str,
        x: np.ndarray,
        step: float,
        dq: bool,
        height: int,
        width: int,
        scan_order: int,
        *,
        reuse_x: bool = False,
        rated: bool = True,
    ) -> np.ndarray:
        """Integers n for values x (spec A.1, A.2, A.9), from x / step in float64; ``reuse_x``: x (a
        private float64 array the caller no longer needs) is divided in place, to save a tensor-sized copy;
        ``rated=False``: without the rate term of A.9 (a codebook's indices do not cost what levels cost)."""
        s = self.settings
        flat = x.reshape(-1)
        f = s.importance.get(name)
        if f is not None:
            check_importance(name, f, flat.size)
        # max |x / step| = (max |x|) / step: division by a positive step is monotone, also when rounded
        peak = max(float(flat.max()), -float(flat.min())) if flat.size else 0.0
        if not levels_fit_int32(peak, step):
            raise EncodeError(
                f"tensor {name!r}: values up to {peak:.4g} overflow int32 levels at step {step:.4g}; use a larger qp"
            )
        lam = s.tensor_lambda(name) if rated else 0.0
        if name in s.covariances:
            transposed = matches(name, s.covariance_transposed)  # (inputs, outputs...): y = x·W
            columns = covariance_columns(name, x.shape, transposed)
            matrix = x.reshape(len(x), -1)
            if transposed:
                matrix = matrix.T
            factor = self.feedback_factor(name, columns)
            try:
                levels = error_feedback_levels(matrix, factor, float(step), lam)
            except EncodeError as exc:
                raise EncodeError(f"tensor {name!r}: {exc.message}") from None
            return (levels.T if transposed else levels).reshape(-1)
        if not dq and not lam:
            return _nearest_levels(flat, float(step))
        importance = unit_mean(s.importance.get(name))
        if lam and name in s.sigmas:
            # DC-v1: F = 1 / sigma^2, in squared step sizes (x is w / step)
            importance = (float(step) / np.maximum(np.asarray(s.sigmas[name], np.float64).reshape(-1), 1e-30)) ** 2
        if dq:  # the trellis divides by the step as it reads: no float64 copy of the tensor
            values = flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32)  # (float16: exact)
            trellis = (
                dict(lam=lam, n_gtx=s.n_gtx, importance=importance) if lam else dict(lam=0.0, chunk=DQ_TRELLIS_CHUNK)
            )
            # (without rates: the Viterbi search of A.2 along the scan, its path fixed every DQ_TRELLIS_CHUNK weights)
            return self.engine.dq_rdoq_levels(
                np.ascontiguousarray(values),
                height,
                width,
                scan_order=scan_order,
                edition=s.edition,
                step=float(step),
                **trellis,
            )
        in_place = reuse_x and flat.dtype == np.float64 and flat.flags.writeable
        scaled = np.divide(flat, float(step), out=flat if in_place else None, dtype=np.float64)
        return self.engine.rdoq_levels(  # (RDOQ without DQ)
            np.ascontiguousarray(scaled),
            height,
            width,
            lam=lam,
            n_gtx=s.n_gtx,
            scan_order=scan_order,
            edition=s.edition,
            importance=importance,
        )

    def _values(
        self,
        name: str,
        arr: np.ndarray,
        *,
        in_block: bool = False,
        dq: bool = False,
        original_dtype=None,
        difference: bool = False,
    ) -> CodedTensor:
        s = self.settings
        shape, height, width, scan = tensor_geometry(arr.shape, s.scan_order)
        kind = arr.dtype.kind
        if kind in "iub" and s.lossless_int and not in_block:
            return _integers_losslessly(name, arr, shape, height, width, scan)
        x, dtype_name = as_float_array(name, arr)
        fmt = None
        if s.keep_dtype and s.profile == 1 and dtype_name in RESTORABLE_FORMATS:
            fmt = RESTORABLE_FORMATS[dtype_name]
        float8 = s.exact_float8(name, original_dtype or dtype_name)
        if float8 is not None and not in_block:
            return self._exactly(name, x, float8, shape, height, width, scan)
        finite = is_finite(x)  # inf and NaN are kept exactly, in a RAW_FLOAT NDU (spec 7.5)
        if not finite and in_block:
            raise non_finite_error(name, x)
        kept_raw = None if finite or s.is_raw(name) else "holds inf or NaN"
        floor = rounded_erased = None
        if finite:  # (a block member is always finite here)
            qp, dq, floor, rounded_erased = self._qp_and_floor(name, x, arr, dq, in_block, difference)
            step = step_size(qp, s.qp_density)
            if not s.is_raw(name) and not in_block and s.raw_when_smaller:
                peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
                if not levels_fit_int32(peak, float(step)):
                    # no int32 levels at this qp: stored exactly (no tensor costs more than raw)
                    kept_raw = f"values up to {peak:.4g} exceed int32 levels at qp {qp}"
        if (s.is_raw(name) or kept_raw is not None) and not in_block:
            f32 = x.astype(np.float32).reshape(shape)
            if not float32_holds(arr, f32):
                raise EncodeError(
                    f"integer tensor {name!r} has values up to {max(int(arr.max()), -int(arr.min()))}, which RAW_FLOAT's float32 "
                    "does not hold (spec 7.5): code it losslessly (lossless_int=True, the default)"
                )
            return stored_raw(name, f32, height, width, fmt, dtype_name, kept_raw)
        levels = None
        if not in_block and self.weighs_codebook(x, kind):
            book_fmt = FLOAT32_FORMAT if s.codebook == "few" and fmt is None else fmt
            coded, levels = self.codebook_or_levels(name, x, qp, step, height, width, scan, book_fmt, shape, dq)
            if coded is not None:
                if kind not in "iub":
                    geometry = (shape, height, width, scan, fmt, dtype_name)
                    coded = self._meaning_kept(name, x, coded.recon, coded.qp, difference, *geometry) or coded
                return self._within_range(
                    coded, arr if kind in "iub" else x, in_block, dtype_name, arr.dtype if kind in "iub" else None
                )
        if levels is None:
            private = not np.may_share_memory(x, arr)  # a float64 copy of integers: divided in place
            levels = self.levels(name, x, float(step), dq, height, width, scan, reuse_x=private and floor is None)
        recon = reconstruct_uniform(levels, step).reshape(shape)
        if floor is not None and dq and not keeps_snr(x, recon, floor):
            dq = False  # DQ's trellis kept less than the floor, which rounding keeps at this qp (spec A.7)
            levels = self.levels(name, x, float(step), dq, height, width, scan)
            recon = reconstruct_uniform(levels, step).reshape(shape)
        if kind not in "iub" and not in_block:  # (integers' x may have been divided in place)
            kept = self._meaning_kept(name, x, recon, qp, difference, shape, height, width, scan, fmt, dtype_name)
            if kept is None and rounded_erased is not None:  # (DQ kept their sign, but not their values: A.7)
                kept = stored_raw(
                    name, x.astype(np.float32).reshape(shape), height, width, fmt, dtype_name, rounded_erased
                )
            if kept is not None:
                return self._within_range(kept, x, in_block, dtype_name)
        if fmt is not None:
            with np.errstate(over="ignore"):  # (checked below)
                recon = recon.astype(np.dtype(dtype_name))
        coded = CodedTensor(
            name=name,
            shape=shape,
            ptype="FLOAT",
            levels=levels,
            qp=qp,
            step=float(step),
            dq=dq,
            height=height,
            width=width,
            scan=scan,
            recon=recon,
            fmt=fmt,
        )
        # (integers: their own values, x may have been divided by the step in place)
        return self._within_range(
            coded, arr if kind in "iub" else x, in_block, dtype_name, arr.dtype if kind in "iub" else None
        )

    def _qp_and_floor(
        self, name: str, x: np.ndarray, arr: np.ndarray, dq: bool, in_block: bool, difference: bool
    ) -> tuple[int, bool, float | None, str | None]:
        """A finite float tensor's qp and whether DQ codes it: the settings' (DC-v1's with sigmas), or, for a tensor
        of at most one dimension longer than 1, the coarsest finer qp that keeps ``nonweight_snr_db`` by rounding,
        uniformly (spec A.7); with the floor kept (or None) and, when rounding at its own qp puts one-signed values
        at 0, the reason they are stored exactly instead (the floor then None)."""
        s = self.settings
        qp = s.tensor_qp(name, arr.ndim)
        floor = rounded_erased = None
        if arr.dtype.kind not in "iub" and not in_block and not difference and s.floors_nonweight(name, arr.shape):
            own_step = float(step_size(qp, s.qp_density))
            rounded_erased = self._sign_erased(name, x, own_step * _rounded_multiples(x, own_step), qp)
            # (one-signed values that rounding at its qp puts at 0 are stored exactly; the quantiser's own count is
            # reported when it puts them at 0 too)
            floor = s.nonweight_snr_db if rounded_erased is None else None
        if name in s.sigmas:
            qp = qp_for_step(dcv1_step(x, s.sigmas[name], s.dcv1_s), s.qp_density)
        elif floor is not None:
            floored = qp_keeping_snr(x, qp, floor, s.qp_density)
            if floored != qp:  # uniform, as the floor's rounding measured it (DQ's trellis may keep less)
                qp, dq = floored, False
        return qp, dq, floor, rounded_erased

    def _meaning_kept(
        self, name: str, x: np.ndarray, recon, qp: int, difference: bool, shape, height, width, scan, fmt, dtype_name
    ) -> CodedTensor | None:
        """The tensor kept exactly when ``recon``, its quantisation at ``qp``, would change what its values mean
        (spec A.7): whole numbers (a mask, positions) coded at step 1, or one-signed values (a variance, a
        frequency, a scale) with entries at 0 stored raw; None when it keeps their meaning."""
        exact = self._whole_numbers_exactly(name, x, recon, shape, height, width, scan, fmt, dtype_name)
        if exact is not None:
            return exact
        erased = None if difference else self._sign_erased(name, x, recon, qp)
        if erased is None:
            return None
        return stored_raw(name, x.astype(np.float32).reshape(shape), height, width, fmt, dtype_name, erased)

    def _sign_erased(self, name: str, x: np.ndarray, recon: np.ndarray, qp: int) -> str | None:
        """Why a tensor must be stored raw (spec A.7): all its values share one sign (a variance, a frequency, a
        scale), but some would decode as 0 or with the other sign at ``qp``; None when not, when raw storage is
        off, or when the tensor's qp was given by name."""
        s = self.settings
        if not s.raw_when_smaller or s.qp_given(name):
            return None
        sign = one_sign(x)
        if not sign:
            return None
        flat = recon.reshape(-1)
        erased = sum(
            int(np.count_nonzero(flat[i : i + TEST_SLICE] * sign <= 0)) for i in range(0, flat.size, TEST_SLICE)
        )
        if not erased:
            return None
        word = "positive" if sign > 0 else "negative"
        return f"all {x.size} values {word}, like a variance, frequency or scale; {erased} would decode as 0 at qp {qp}"

    def _whole_numbers_exactly(
        self, name: str, x: np.ndarray, recon: np.ndarray, shape, height, width, scan, fmt, dtype_name
    ) -> CodedTensor | None:
        """A float tensor of whole numbers (a 0/1 mask, positions, indices) coded exactly (spec A.7): at step 1 (qp
        0, no DQ), when its own qp would change some of them. None when not, when ``lossless_int`` is off, when
        its qp is given by name, or when a qp of the settings lies beyond the qp offsets around an MPS qp of 0
        (spec 8.2: qp 0 might not fit the stream's)."""
        s = self.settings
        qps = [s.qp, s.nonweight_qp, *s.qp_per_tensor.values()]
        if (
            not s.lossless_int
            or s.qp_given(name)
            or any(q is not None and not qp_offset_fits(q, 0, s.qp_density) for q in qps)
        ):
            return None
        if not whole_numbers(x) or unchanged(recon, x):
            return None
        levels = np.rint(x).astype(np.int32).reshape(-1)
        exact = reconstruct_uniform(levels, step_size(0, s.qp_density)).reshape(shape)
        if fmt is not None:
            exact = exact.astype(np.dtype(dtype_name))
        return CodedTensor(
            name=name,
            shape=shape,
            ptype="FLOAT",
            levels=levels,
            qp=0,
            step=1.0,
            dq=False,
            height=height,
            width=width,
            scan=scan,
            recon=exact,
            fmt=fmt,
            kept_exact="whole numbers (a mask, positions) coded at step 1",
        )

    def _within_range(
        self, t: CodedTensor, x: np.ndarray, in_block: bool, dtype_name: str, integers=None
    ) -> CodedTensor:
        """``t``, unless a finite value reconstructs beyond its output dtype's range (a float16 65504 rounded up to
        65536 at a coarse qp decodes as inf; an ``integers`` dtype's values, coded lossily, rounded beyond its range:
        the decoder refuses them, spec 6.2.1): then the tensor is stored exactly, in RAW_FLOAT, when raw storage is
        allowed (spec A.7) and float32 holds its values, else refused."""
        if integers is None:
            restored = self._restored_float(t.name, t.recon.dtype, dtype_name)
            if is_finite(t.recon) and _holds(restored, t.recon):
                return t
            peak = max(float(x.max()), -float(x.min()))
            reason = f"values up to {peak:.6g} round beyond the {restored.name} range at qp {t.qp}"
            effect = "they would decode as inf, spec A.7"
        else:
            low, high = (0, 1) if integers.kind == "b" else (np.iinfo(integers).min, np.iinfo(integers).max)
            rounded = np.rint(t.recon.astype(np.float64)) if t.recon.size else np.zeros(1)
            if low <= rounded.min() and rounded.max() <= high:
                return t
            reason = (
                f"values reconstruct from {rounded.min():.6g} to {rounded.max():.6g} at qp {t.qp}, beyond {integers}"
            )
            effect = "a decoder refuses them, spec 6.2.1"
        exact = integers is None or not x.size or float(np.abs(x).max()) <= 2**24  # float32 holds the integers
        if in_block or not self.settings.raw_when_smaller or self.settings.is_raw(t.name) or not exact:
            raise EncodeError(f"tensor {t.name!r}: {reason} ({effect}): give it a finer qp")
        return stored_raw(t.name, x.astype(np.float32).reshape(t.shape), t.height, t.width, t.fmt, dtype_name, reason)

    def _restored_float(self, name: str, decoded: np.dtype, dtype_name: str) -> np.dtype:
        """The float dtype a decoder restores tensor ``name`` to (spec 6.2.1): a float ``dtypes`` entry of the
        settings, else the input's (``dtype_name``), never wider than the decoded one; bfloat16 and float8 saturate
        (their as_stored values), so they count as float32."""
        want = self.settings.dtypes.get(name, dtype_name)
        if narrow_floats.is_narrow(want) or np.dtype(want).kind != "f":
            want = "float32"
        return min(np.dtype(want), decoded, key=lambda d: d.itemsize)

    def codebook_or_levels(self, name, x, qp, step, height, width, scan, fmt, shape, dq):
        """Codebook mode (spec 7.2, 12.4): the distinct uniform levels form the codebook.

        Returns (coded tensor, None), or in "auto" and "few" modes (None, uniform levels) when the
        plain uniform coding is estimated smaller: those levels are then coded as they are,
        so that no tensor is quantised twice with the same settings. (None, None) when the
        codebook would be too large.
        """
        s = self.settings
        weighed = s.codebook in ("auto", "few")
        if weighed and x.size > CODEBOOK_SAMPLE and not self._per_weight(name):
            part = sample_bands(x.reshape(height, width))
            if part.size < x.size and self._uniform_smaller(name, part, qp, step, scan, dq, x.size / part.size):
                return None, None  # (the caller quantises the whole tensor once, uniformly)
            # (else weighed again whole: the bands may hold few of the tensor's distinct values, which makes
            # the codebook look cheaper there, so only the uniform coding's win is taken from them)
        levels = self.levels(name, x, float(step), False, height, width, scan, rated=False)  # (A.8: nearest)
        t = self._codebook_of(name, levels, qp, step, shape, height, width, scan, fmt)  # (qp: DC-v1's too)
        if t is None:
            return None, (levels if self._uniform_levels_are(name, dq) else None)
        if weighed:
            index_bits, uni_bits, uni = self._weigh(name, x, levels, t, step, height, width, scan, dq)
            if uni_bits <= index_bits + t.codebook_bits():
                return None, uni
        return t, None

    def weighs_codebook(self, x: np.ndarray, kind: str = "f") -> bool:
        """Whether a tensor outside block NDUs (values ``x``, of dtype kind ``kind``) is coded as a codebook or
        weighed for one (A.8): with ``codebook`` True or "auto", or "few" for a float tensor of few values in
        profile 1 (decoded in its own dtype)."""
        s = self.settings
        if s.codebook != "few":
            return bool(s.codebook)
        return kind not in "iub" and s.profile == 1 and few_distinct_values(x)

    def _uniform_levels_are(self, name: str, dq: bool) -> bool:
        """Whether a codebook's levels (nearest, A.8) are the ones the uniform coding would use: without DQ,
        RDOQ and error feedback."""
        return not dq and not self.settings.tensor_lambda(name) and name not in self.settings.covariances

    def _per_weight(self, name: str) -> bool:
        """Whether the tensor's levels depend on per-weight inputs (importance, sigmas, covariances), which
        ``sample_bands`` would have to cut alike."""
        s = self.settings
        return name in s.importance or name in s.sigmas or name in s.covariances

    def _weigh(self, name, x, levels, book_tensor, step, height, width, scan, dq):
        """Estimated bits (A.4) of the codebook tensor's indices and of the uniform coding of ``x`` whose
        nearest (or RDOQ) levels are ``levels``, each under the init sets its coding would choose (A.3, with
        ``param_opt``); and the uniform levels."""
        index_bits = self._estimate(
            book_tensor.levels,
            height,
            width,
            scan,
            codebook_size=len(book_tensor.codebook or ()),
            codebook_zero=book_tensor.cb_zero,
        )
        uni = (
            levels if self._uniform_levels_are(name, dq) else self.levels(name, x, float(step), dq, height, width, scan)
        )
        return index_bits, self._estimate(uni, height, width, scan, dq=dq), uni

    def _estimate(self, levels, height, width, scan, **kw) -> float:
        """The estimated bits of coding ``levels`` (A.4), under the init sets A.3 chooses when ``param_opt``."""
        s = self.settings
        kw.update(n_gtx=s.n_gtx, scan_order=scan)
        if s.param_opt:
            return self.engine.PayloadEncoder(s.edition).choose_init_sets(levels, height, width, **kw)[1]
        return self.engine.estimate_tensor_bits(levels, height, width, edition=s.edition, **kw)

    def _uniform_smaller(self, name, part, qp, step, scan, dq, scale: float) -> bool:
        """Whether the uniform coding is estimated smaller than the codebook on the bands ``part`` of a
        tensor ``scale`` times as large (A.8): the two codings' bits per element there, the codebook's
        syntax counted once."""
        height, width = part.shape
        scan = effective_scan_order(height, width, scan)
        levels = self.levels(name, part, float(step), False, height, width, scan, rated=False)
        t = self._codebook_of(name, levels, qp, step, part.shape, height, width, scan)
        if t is None:
            return True
        index_bits, uni_bits, _ = self._weigh(name, part, levels, t, step, height, width, scan, dq)
        return uni_bits * scale <= index_bits * scale + t.codebook_bits()

    @staticmethod
    def _codebook_of(name, levels, qp, step, shape, height, width, scan, fmt=None) -> CodedTensor | None:
        """The codebook tensor (spec 7.2, 12.4) of integer ``levels`` at ``qp``: its distinct levels form the
        codebook, the indices are coded; None when there are more than 2^16 of them."""
        book = np.unique(levels)
        if book.size > 1 << 16:
            return None
        pos = np.searchsorted(book, 0)
        zero = int(pos) if pos < book.size and book[pos] == 0 else book.size >> 1
        indices = (np.searchsorted(book, levels) - zero).astype(np.int32)
        t = CodedTensor(
            name=name,
            shape=shape,
            ptype="FLOAT",
            levels=indices,
            qp=qp,
            step=float(step),
            dq=False,
            height=height,
            width=width,
            scan=scan,
            fmt=fmt,
            codebook=[int(v) for v in book],
            cb_zero=zero,
            recon=reconstruct_codebook(indices, book, zero, step).reshape(shape),
        )
        if fmt is not None:
            with np.errstate(over="ignore"):  # (an overflow to inf is found by _within_range)
                t.recon = t.recon.astype(DECOMPRESSED_DATA_FORMATS[fmt])
        return t

    def _exactly(self, name, x, float8: str, shape, height, width, scan) -> CodedTensor:
        """A float8 tensor coded exactly (spec A.17): its values as a codebook of integer multiples of the largest
        power of two that divides them all (at least the format's subnormal spacing, :func:`exact_qp`); stored raw
        (float32, exact too) when they are not all on that grid within int32 (inf or NaN, values that are not the
        format's)."""
        qpd = self.settings.qp_density
        finest = exact_qp(float8, qpd) >> qpd  # the exponent of the format's subnormal spacing
        scaled = np.asarray(x, np.float64).reshape(-1) * 2.0**-finest  # exact: a power of two
        exponent, levels = finest, None
        if bool(np.all(np.isfinite(scaled))) and bool(np.array_equal(scaled, np.rint(scaled))):
            if scaled.size == 0 or float(np.abs(scaled).max()) < 2.0**62:
                ints = scaled.astype(np.int64)
                nonzero = ints[ints != 0]
                # the largest power of two dividing every value: coarser steps, smaller codebook integers
                low_bit = int(np.bitwise_and(nonzero, -nonzero).min()) if nonzero.size else 1
                coarsest = ((1 << (5 + qpd)) - 1) >> qpd  # the qp stays within the offsets from an MPS qp of 0
                shift = min(low_bit.bit_length() - 1, coarsest - finest)
                ints >>= shift
                exponent += shift
                if ints.size == 0 or int(np.abs(ints).max()) <= INT32_MAX:
                    levels = ints.astype(np.int32)
        if levels is not None:
            qp = exponent << qpd
            coded = self._codebook_of(name, levels, qp, step_size(qp, qpd), shape, height, width, scan)
            if coded is not None:
                return coded
        f32 = np.asarray(x, np.float32).reshape(shape)
        reason = f"{float8} values not all on the format's grid within int32 levels"
        return CodedTensor.raw_float(name, f32, height, width, recon=f32, kept_raw=reason)


__all__ = [
    "CodedTensor",
    "Quantiser",
    "default_scan_order",
    "DEFAULT_SCAN_ORDER",
    "DEFAULT_SCAN_MIN_ELEMENTS",
    "dcv1_step",
    "as_float_array",
    "is_finite",
    "non_finite_error",
    "tensor_geometry",
    "INT32_MAX",
    "RESTORABLE_FORMATS",
]
