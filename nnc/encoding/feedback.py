"""Error-feedback quantisation from a layer's input covariance (informative, spec A.16).

A weight tensor W of a linear layer y = W·x (a convolution's as W reshaped to
(out, in·kh·kw) against its input patches) is quantised column by column: each
column's rounding error is passed on to the columns not yet quantised, weighted by
the input covariance H = E[x·xᵀ], so that the layer's output error E‖(W − Ŵ)·x‖²
rather than each weight's own error is kept small. The integers are ordinary
levels on the tensor's uniform grid (no DQ): a decoder sees nothing different.

Examples
--------
>>> import numpy as np
>>> w = np.array([[0.26, 0.26]])
>>> h = np.array([[1.0, 0.9], [0.9, 1.0]])         # two strongly correlated inputs
>>> error_feedback_levels(w, np.eye(2), 0.5).tolist()   # independent inputs: nearest rounding
[[1, 1]]
>>> error_feedback_levels(w, h, 0.5).tolist()           # the second takes back the first one's error
[[1, 0]]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .._lru import SizedLRU
from ..errors import EncodeError

#: columns updated one by one before the rest of the matrix gets their errors at once
BLOCK_COLUMNS = 128
#: added to H's diagonal, as a share of its mean, so that H is invertible (inputs that never vary)
DAMPING = 0.01


def covariance_columns(name: str, shape: tuple, transposed: bool = False) -> int:
    """How many inputs a weight of this shape has, the size of its covariance: the product of the dimensions after
    the first (the first one if ``transposed``), or :class:`nnc.errors.EncodeError` for fewer than 2 dimensions."""
    if len(shape) < 2:
        raise EncodeError(f"tensor {name!r}: a covariance needs a weight of 2 or more dimensions")
    return int(shape[0]) if transposed else int(np.prod(shape[1:], dtype=np.int64))


def check_covariance(name: str, covariance, columns: int, factor: bool = False) -> np.ndarray:
    """``covariance`` as a float64 (columns, columns) matrix, or :class:`nnc.errors.EncodeError` naming the tensor;
    with ``factor`` also checked positive semi-definite (by the factorisation the quantiser makes)."""
    h = np.asarray(covariance)
    if h.dtype.kind not in "biuf":
        raise EncodeError(f"covariance of {name!r} must be real numbers, not {h.dtype}")
    if h.shape != (columns, columns):
        raise EncodeError(
            f"covariance of {name!r} must be ({columns}, {columns}) for the tensor's {columns} inputs, not {h.shape}"
        )
    h = h.astype(np.float64)
    if not np.all(np.isfinite(h)) or not np.allclose(h, h.T, rtol=1e-5, atol=1e-12 * max(1.0, np.abs(h).max())):
        raise EncodeError(f"covariance of {name!r} must be a finite symmetric matrix")
    if np.any(np.diag(h) < 0):
        raise EncodeError(f"covariance of {name!r} has a negative diagonal: not a covariance")
    if factor:
        try:
            _upper_inverse_factor(h)
        except EncodeError as exc:
            raise EncodeError(f"tensor {name!r}: {exc.message}") from None
    return h


@dataclass(frozen=True)
class FeedbackFactor:
    """What error feedback needs of a covariance H, worked out once (an O(n³) step) for every tensor and step
    size that use it: the column order (decreasing input energy, H's diagonal) and, in that order, the upper
    Cholesky factor U of the damped H⁻¹ (H⁻¹ = Uᵀ·U), whose row j carries column j's error onward.

    Examples
    --------
    >>> f = feedback_factor(np.diag([1.0, 4.0]))
    >>> f.order.tolist(), f.columns
    ([1, 0], 2)
    """

    order: np.ndarray
    u: np.ndarray

    @property
    def columns(self) -> int:
        """The number of inputs n."""
        return len(self.order)

    @property
    def nbytes(self) -> int:
        """Memory held."""
        return int(self.order.nbytes + self.u.nbytes)


def feedback_factor(covariance) -> FeedbackFactor:
    """The :class:`FeedbackFactor` of a (columns, columns) covariance, or :class:`nnc.errors.EncodeError` when it
    is not positive semi-definite."""
    h = np.asarray(covariance, dtype=np.float64)
    order = np.argsort(-np.diag(h), kind="stable")
    return FeedbackFactor(order, _upper_inverse_factor(h[np.ix_(order, order)]))


class FactorCache:
    """Factors (:class:`FeedbackFactor`) kept by covariance object (by identity, as :class:`nnc.encoder.EncodeCache` keeps
    its arrays: the matrices must not change in place while in use), the least recently used dropped once they hold
    more than ``max_bytes``. Safe to share between threads.

    Examples
    --------
    >>> h = np.eye(3)
    >>> store = FactorCache()
    >>> store.get(h) is None
    True
    >>> store.put(h, feedback_factor(h)); store.get(h).columns
    3
    """

    def __init__(self, max_bytes: int = 1 << 28):
        self.max_bytes = int(max_bytes)
        self._entries = SizedLRU(self.max_bytes)  # id -> (covariance, factor); the entry keeps the id unique
        self._lock = threading.Lock()

    def get(self, covariance) -> FeedbackFactor | None:
        """The factor kept for this very object, or None."""
        with self._lock:
            entry = self._entries.get(id(covariance))
            return None if entry is None or entry[0] is not covariance else entry[1]

    def put(self, covariance, factor: FeedbackFactor) -> None:
        """Keep ``factor`` for ``covariance``."""
        with self._lock:
            self._entries.put(id(covariance), (covariance, factor), factor.nbytes)

    def __len__(self) -> int:
        return len(self._entries)


def _upper_inverse_factor(h: np.ndarray) -> np.ndarray:
    """U upper triangular with Uᵀ·U = (H + damping)⁻¹: with P the reversal, P·H·P = L·Lᵀ gives U = P·L⁻¹·P."""
    n = h.shape[0]
    mean = float(np.trace(h)) / n
    damped = h + (DAMPING * mean if mean > 0 else 1.0) * np.eye(n)
    try:
        lower = np.linalg.cholesky(damped[::-1, ::-1])
        return np.triu(np.linalg.inv(lower)[::-1, ::-1])
    except np.linalg.LinAlgError:
        raise EncodeError("covariance is not positive semi-definite") from None


def _level_bits(scaled: np.ndarray) -> np.ndarray:
    """Estimated bits of a level of magnitude 0, 1, 2, ...: the order-0 code length of the nearest levels (plus a
    sign bit for non-zero ones), smoothed; the last entry stands for every larger magnitude."""
    mags = np.minimum(np.floor(np.abs(scaled) + 0.5), 63).astype(np.int64).reshape(-1)
    counts = np.bincount(mags, minlength=64).astype(np.float64) + 0.5
    bits = -np.log2(counts / counts.sum())
    bits[1:] += 1.0
    return bits


def _cost(x: np.ndarray, k: np.ndarray, weight: float, lam: float, bits: np.ndarray) -> np.ndarray:
    """c·(x − k)² + λ·bits(k) per row."""
    return weight * (x - k) ** 2 + lam * bits[np.minimum(np.abs(k), 63).astype(np.int64)]


def error_feedback_levels(weights, covariance, step: float, lam: float = 0.0) -> np.ndarray:
    """Integer levels of ``weights`` (rows, columns) on the grid ``step``, with each column's rounding error fed
    forward through the input covariance (spec A.16).

    Columns are taken in order of decreasing input energy (H's diagonal). Each level is the nearest integer of
    the column's corrected value (ties away from zero), or with ``lam`` > 0 the one of it and its neighbour
    towards zero with the smaller c·(x − k)² + λ·bits(k), c being the column's error weight 1/U[j, j]² scaled to
    mean 1 and bits(k) an order-0 estimate (λ in squared steps per bit, as spec A.9).

    Parameters
    ----------
    weights : array-like
        The tensor as a matrix: one row per output, one column per input.
    covariance : array-like or FeedbackFactor
        E[x·xᵀ] of the layer's input, (columns, columns), or its :func:`feedback_factor`.
    step : float
        The step size Δ.
    lam : float
        Rate-distortion λ; 0 for the nearest levels.

    Returns
    -------
    numpy.ndarray
        int32 levels of the same shape as ``weights``.
    """
    w = np.asarray(weights, dtype=np.float64)
    rows, n = w.shape
    factor = covariance if isinstance(covariance, FeedbackFactor) else feedback_factor(covariance)
    if factor.columns != n:
        raise EncodeError(f"a covariance of {factor.columns} inputs for a matrix of {n} columns")
    order, u = factor.order, factor.u
    # one row per column, in steps: a column's values and its updates are contiguous
    columns = np.ascontiguousarray(w[:, order].T) / step
    diag = np.diag(u).copy()
    weight = 1.0 / diag**2
    weight /= weight.mean()
    bits = _level_bits(columns) if lam > 0 else None
    levels = np.empty((n, rows), np.int64)
    for start in range(0, n, BLOCK_COLUMNS):
        stop = min(start + BLOCK_COLUMNS, n)
        errors = np.empty((stop - start, rows))
        for j in range(start, stop):
            x = columns[j]
            k = np.copysign(np.floor(np.abs(x) + 0.5), x)
            if bits is not None:
                toward_zero = k - np.sign(k)
                cost_nearest = _cost(x, k, weight[j], lam, bits)
                k = np.where(_cost(x, toward_zero, weight[j], lam, bits) < cost_nearest, toward_zero, k)
            levels[j] = k
            err = (x - k) / diag[j]
            errors[j - start] = err
            columns[j + 1 : stop] -= np.outer(u[j, j + 1 : stop], err)
        columns[stop:] -= u[start:stop, stop:].T @ errors
    if np.abs(levels).max(initial=0) > 2**31 - 3:
        raise EncodeError(f"levels overflow int32 at step {step:.4g}; use a larger qp")
    out = np.empty((rows, n), dtype=np.int32)
    out[:, order] = levels.T
    return out


__all__ = [
    "error_feedback_levels",
    "feedback_factor",
    "FeedbackFactor",
    "FactorCache",
    "check_covariance",
    "covariance_columns",
    "BLOCK_COLUMNS",
    "DAMPING",
]
