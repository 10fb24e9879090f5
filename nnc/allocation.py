"""Encoder-side helpers of the paper's encoder (informative, spec Annex A.11, A.12).

* :func:`allocate_qps` — per-tensor qps that minimise the estimated total size for a target
  total (importance-weighted) distortion, or for a target weight SNR;
* :func:`empirical_fisher` — a cheap importance estimate: the mean squared gradient of each
  weight over a few batches, from a user callback (any framework);
* :func:`input_importance` — an importance without gradients: the second moments of each
  layer's inputs (the diagonal of its Gauss-Newton matrix).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np

from ._threads import in_order_in_flight
from .encoder import Encoder
from .encoding.quantiser import is_finite, levels_fit_int32, tensor_geometry
from .encoding.settings import check_importance, matches
from .errors import EncodeError
from .measure import SLICE as MEASURE_SLICE
from .narrow_floats import as_stored
from .reconstruction import step_size

if TYPE_CHECKING:
    from .readers import ModelSource


def _tensor_curve(
    enc: Encoder, name: str, x: np.ndarray, qps, importance, allow_empty: bool = False
) -> list[tuple[int, float, float]]:
    """(qp, estimated bits, weighted squared error) of one tensor at each candidate qp, as the encoder would code
    it there: uniformly, or as a codebook where its mode weighs one (A.8)."""
    shape, height, width, scan = tensor_geometry(x.shape, enc.scan_order)
    flat = x.reshape(-1).astype(np.float64)
    if importance is not None and not np.isscalar(importance):  # (one F for the whole tensor needs no check)
        importance = np.asarray(importance, np.float64).reshape(-1)
        check_importance(name, importance, flat.size)
    quantiser = enc.quantiser
    weighs_codebook = quantiser.weighs_codebook(x)
    curve = []
    for qp in qps:
        step = float(step_size(qp, enc.qp_density))
        if not levels_fit_int32(float(np.abs(flat).max(initial=0)), step):
            continue
        coded, levels = None, None
        if weighs_codebook:
            coded, levels = quantiser.codebook_or_levels(name, x, qp, step, height, width, scan, None, shape, enc.dq)
        if coded is not None:
            bits = (
                enc.engine.estimate_tensor_bits(
                    coded.levels,
                    height,
                    width,
                    n_gtx=enc.n_gtx,
                    scan_order=scan,
                    edition=enc.edition,
                    codebook_size=len(coded.codebook),
                    codebook_zero=coded.cb_zero,
                )
                + coded.codebook_bits()
            )
            recon = np.asarray(coded.recon, np.float32).reshape(-1)
        else:
            if levels is None:
                levels = quantiser.levels(name, flat, step, enc.dq, height, width, scan)
            bits = enc.engine.estimate_tensor_bits(
                levels, height, width, n_gtx=enc.n_gtx, dq=enc.dq, scan_order=scan, edition=enc.edition
            )
            recon = levels.astype(np.float32) * np.float32(step)
        recon = as_stored(enc.settings.dtypes.get(name), recon)  # (bfloat16: as its file holds it)
        err = _weighted_error(flat, recon, importance)
        curve.append((qp, bits, err))
    if not curve and not allow_empty:
        raise EncodeError(f"tensor {name!r}: no candidate qp keeps its levels within int32")
    return curve


#: Bytes of tensors (float32 size) whose curves are measured at once with ``threads`` above 1 (one always is).
CURVE_BUDGET = 1 << 30

#: The finest default candidate step of a tensor, in octaves of its root mean square (2^-12 RMS: about 83 dB)
FINEST_OCTAVES = -12


def default_qps(x: np.ndarray, qp_density: int) -> range:
    """The qps :func:`allocate_qps` tries for a tensor by default, at the encoder's qp density: steps from 2^-12
    times its root mean square to the first power of two at least 4 times its largest magnitude (every weight
    0: a tensor may be given up whole); for a tensor of zeros, 2^-15 to 2^-3.

    Parameters
    ----------
    x : numpy.ndarray
        The tensor's values (finite).
    qp_density : int
        The encoder's qp density (spec 12.1).

    Returns
    -------
    range
        The candidate qps, finest first.

    Examples
    --------
    >>> import numpy as np
    >>> r = default_qps(np.full(16, 0.25), 2)   # RMS and peak 2^-2: steps 2^-14 to 2^0
    >>> r.start, r.stop - 1
    (-56, 0)
    """
    flat = np.asarray(x, np.float64).reshape(-1)
    rms = math.sqrt(float(np.mean(np.square(flat)))) if flat.size else 0.0
    if not 0 < rms < math.inf:
        return range(-15 << qp_density, (-3 << qp_density) + 1)
    peak = float(np.abs(flat).max())
    low, high = math.floor(math.log2(rms)) + FINEST_OCTAVES, math.ceil(math.log2(peak)) + 2
    low, high = max(low, -149), min(high, 126)  # (steps within float32's range, spec 12.1)
    return range(low << qp_density, (high << qp_density) + 1)


def allocate_qps(
    tensors: Mapping[str, np.ndarray] | ModelSource,
    *,
    target_distortion: float | None = None,
    target_snr_db: float | None = None,
    qp_range: Iterable[int] | None = None,
    importance: Mapping[str, np.ndarray] | None = None,
    progress=None,
    **encoder_options,
) -> dict[str, int]:
    """Per-tensor qps minimising the estimated total bits for a total distortion target (spec A.11).

    The distortion is sum F (w - ŵ)^2 over all float tensors (F = 1 unless ``importance``
    gives it).  Give ``target_distortion`` directly or ``target_snr_db`` (10 log10 of
    sum F w^2 over the distortion; without an importance F is 1 over each tensor's mean
    square, :func:`scale_importance`: every weight's error counts against its own tensor's
    scale, as :attr:`~nnc.encoding.stream.StreamSummary.relative_snr_db` reports it).  Each tensor's
    (bits, distortion) curve over its candidate qps is measured with the encoder's own
    quantiser (a codebook where its mode would weigh one) and rate estimate; a Lagrange multiplier,
    found by bisection, picks one point per tensor so that the total distortion meets the
    target with the fewest bits.  The result feeds ``Encoder(qp_per_tensor=...)``.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray, or nnc.readers.ModelSource
        The model's tensors; integer tensors are ignored (they are coded losslessly). A model opened with
        :func:`nnc.readers.open_model` is read one tensor at a time (three times: its statistics, its curve's
        first pass, then near its choice), so memory holds one tensor, not the model.
    target_distortion : float, optional
        Total (importance-weighted) squared error to meet.
    target_snr_db : float, optional
        Or a target SNR in dB: importance-weighted when ``importance`` is given, else each
        tensor's against its own scale.
    qp_range : iterable of int, optional
        Candidate qps of every tensor; by default each tensor's own (:func:`default_qps`: steps
        from 2^-12 times its root mean square to where every weight is 0).
    importance : mapping of str to numpy.ndarray, optional
        Per-weight F, e.g. from :func:`empirical_fisher`.
    progress : callable, optional
        Called as ``progress(name, elements)`` after each tensor's curve is measured (the
        measuring takes most of the time: one quantisation and estimate per candidate qp),
        twice per tensor with the default candidates: they are measured one qp an octave
        first, then near each tensor's choice.
    **encoder_options
        :class:`nnc.encoder.Encoder` options that shape the curves (``dq``, ``n_gtx``...); its ``threads``
        measure that many tensors' curves at once (the same qps for any count).
        A tensor that ``qp_per_tensor`` names (or matches as a glob) keeps its qp: its
        error counts towards the target and the other tensors make up for it.

    Returns
    -------
    dict of str to int
        {tensor name: qp} of the float tensors ``qp_per_tensor`` does not name (with the
        default candidates, not those whose values are too small for any qp within the
        span one stream's qp offsets carry from the others': the encoder's rules code them).

    Raises
    ------
    nnc.errors.EncodeError
        If both or neither target is given, no qp in the range meets the target, or
        ``covariances`` are given (error feedback trades the weights' own error, which the
        curves measure, for the layers' output error).

    Examples
    --------
    >>> import numpy as np, nnc
    >>> rng = np.random.default_rng(0)
    >>> t = {"big": rng.normal(0, 0.1, (64, 64)), "small": rng.normal(0, 0.01, (64, 64))}
    >>> qps = allocate_qps(t, target_snr_db=30, dq=False)
    >>> sorted(qps) == ["big", "small"]
    True
    >>> rec = nnc.decode(nnc.encode(t, qp_per_tensor=qps, dq=False))
    >>> nsr = [((t[k] - rec[k]) ** 2).sum() / (t[k] ** 2).sum() for k in t]  # each against its own scale
    >>> bool(10 * np.log10(1 / np.mean(nsr)) >= 29.9)
    True
    """
    if (target_distortion is None) == (target_snr_db is None):
        raise EncodeError("give exactly one of target_distortion and target_snr_db")
    if target_snr_db is not None and not -100 <= float(target_snr_db) <= 300:  # (NaN too)
        raise EncodeError(f"target_snr_db must be from -100 to 300 dB, not {target_snr_db}")
    if target_distortion is not None and not 0 <= float(target_distortion) < math.inf:
        raise EncodeError(f"target_distortion must be a finite number >= 0, not {target_distortion}")
    if encoder_options.get("covariances"):
        raise EncodeError(
            "allocate_qps measures each tensor's own error, which error feedback (covariances=) trades for the "
            "layers' output error: give the covariances to the encoder, not to the allocation"
        )
    if progress is not None and not callable(progress):
        raise EncodeError(f"progress must be a callable or None, not {type(progress).__name__}")
    importance = dict(importance or {})
    if importance and "importance" not in encoder_options:  # (the curves are the encoder's: A.9 weighs by it too)
        encoder_options = dict(encoder_options, importance=importance)
    enc = Encoder(**encoder_options)
    qps = None if qp_range is None else list(qp_range)
    by_scale = target_snr_db is not None and not importance  # (each tensor's error against its own scale)
    # One pass over the tensors, one in memory at a time, for what the choice needs of each: its candidate qps,
    # its mean square (the scale importance) and its weighted energy (the target's signal).
    floats: dict[str, Callable[[], np.ndarray]] = {}
    sizes, ndims, mean_squares, energies, own, pinned = {}, {}, {}, {}, {}, set()
    for k, load in _float_tensors(tensors, enc.settings.is_raw).items():
        x = load()
        if not is_finite(x):  # (a tensor holding inf or NaN is stored exactly, spec 7.5: no qp to choose)
            continue
        if k in importance:
            check_importance(k, np.asarray(importance[k], np.float64).reshape(-1), x.size)
        floats[k], sizes[k], ndims[k] = load, x.size, x.ndim
        if matches(k, enc.settings.qp_per_tensor):
            pinned.add(k)
        elif qps is None:
            own[k] = default_qps(x, enc.qp_density)
        mean_squares[k] = _mean_square(x)
        energies[k] = _weighted_energy(x, _scale_factor(mean_squares[k]) if by_scale else importance.get(k))
        del x
    # (one stream's qps are offsets of (6 + qp_density) bits from one MPS qp, spec 8.2: the default ranges end
    # within that span of the coarsest; a tensor whose whole range lies below it, of values far smaller than the
    # others', is left to the encoder's own qp and rules (raw storage for one-signed values), out of the target)
    floor = max((r.stop - 1 for r in own.values()), default=0) - (1 << (6 + enc.qp_density)) + 2
    for k in [k for k, r in own.items() if r.stop - 1 < floor]:
        del floats[k], own[k]
    if target_snr_db is not None:
        # (the signal weighted as the error is: an SNR in the importance's terms)
        target_distortion = sum(energies[k] for k in floats) / 10 ** (target_snr_db / 10)

    def weights_of(k):
        return _scale_factor(mean_squares[k]) if by_scale else importance.get(k)

    def candidates(k):
        if k in pinned:
            return [enc.settings.tensor_qp(k, ndims[k])]
        if qps is not None:
            return qps
        return [q for q in own[k] if q >= floor]

    octave = 1 << enc.qp_density
    coarse_first = qps is None  # (default candidates: one qp an octave first, then those near each choice)

    def first_pass(k):
        c = candidates(k)
        if not coarse_first or k in pinned:
            return c
        return c[::octave] + ([c[-1]] if (len(c) - 1) % octave else [])

    def measured(job):  # (each tensor's curve points, in model order, from up to ``threads`` tensors at a time)
        names = list(floats)
        yield from in_order_in_flight(names, job, lambda k: 4 * sizes[k], CURVE_BUDGET, enc.settings.threads)

    curves = {}
    for k, curve in measured(lambda k: _tensor_curve(enc, k, floats[k](), first_pass(k), weights_of(k))):
        curves[k] = curve
        if progress is not None:
            progress(k, sizes[k])
    assert target_distortion is not None  # (set above from the SNR when not given)
    choice, bits = _multiplier_choice(curves, pinned, target_distortion)
    if coarse_first:

        def near_choice(k):
            done = {p[0] for p in curves[k]}
            near = [q for q in candidates(k) if abs(q - choice[k]) < octave and q not in done]
            if not near or k in pinned:
                return []
            return _tensor_curve(enc, k, floats[k](), near, weights_of(k), allow_empty=True)

        for k, more in measured(near_choice):
            curves[k] = sorted(curves[k] + more)
            if progress is not None:
                progress(k, sizes[k])
        choice, bits = _multiplier_choice(curves, pinned, target_distortion)
    choice, bits = _no_worse_than_one_qp(curves, pinned, target_distortion, choice, bits)
    return {k: qp for k, qp in choice.items() if k not in pinned}


#: Encoder options that the qps of a target SNR replace: given with one, they would be ignored.
REPLACED_BY_TARGET = ("qp", "step", "nonweight_qp", "sigmas")


def with_allocated_qps(
    tensors: Mapping[str, np.ndarray] | ModelSource,
    target_snr_db: float,
    options: Mapping,
    progress=None,
    dtypes: Mapping[str, str] | None = None,
) -> tuple[dict, dict[str, int]]:
    """Encoder ``options`` completed with each float tensor's qp for ``target_snr_db`` (:func:`allocate_qps`).

    What ``nnc encode --target-snr`` and :func:`nnc.encode_model` with ``target_snr_db`` do. The qps of
    ``qp_per_tensor`` keep their tensors (the allocation makes up for their error) and come first (the first
    pattern that matches a tensor applies); ``importance`` weighs the target and the encoder's RDOQ alike.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray, or nnc.readers.ModelSource
        The model's tensors, in memory or opened (read one at a time, :func:`allocate_qps`).
    target_snr_db : float
        The target SNR in dB, as :func:`allocate_qps` takes it.
    options : mapping
        :class:`nnc.encoder.Encoder` keyword options.
    progress : callable, optional
        As :func:`allocate_qps` takes it.
    dtypes : mapping of str to str, optional
        The dtypes a model file holds (bfloat16 tensors read as float32): the curves measure the error of the
        values the file holds. Not added to the options returned.

    Returns
    -------
    tuple
        ``(options, qps)``: a new dict of options with ``qp_per_tensor`` set, and the allocated {name: qp}.

    Raises
    ------
    nnc.errors.EncodeError
        If ``options`` also give a qp, step, ``nonweight_qp`` or ``sigmas`` (they would be ignored),
        ``settings`` or ``covariances``, or :func:`allocate_qps` fails.

    Examples
    --------
    >>> import numpy as np
    >>> t = {"w": np.random.default_rng(0).normal(0, 0.1, (32, 32)), "b": np.linspace(-1, 1, 32)}
    >>> options, qps = with_allocated_qps(t, 30.0, {"dq": False, "qp_per_tensor": {"b": -40}})
    >>> options["qp_per_tensor"]["b"], sorted(qps), options["dq"]
    (-40, ['w'], False)
    """
    if "settings" in options:
        raise EncodeError("a target SNR completes the encoder's options given as keywords, not settings=")
    for option in REPLACED_BY_TARGET:
        value = options.get(option)
        if value is not None and not (option == "sigmas" and not value):
            raise EncodeError(
                f"{option}= would be ignored: a target SNR chooses every tensor's qp (qp_per_tensor wins)"
            )
    fixed = {k: v for k, v in options.items() if k not in ("importance", *REPLACED_BY_TARGET)}
    if dtypes:
        from .models import with_file_dtypes

        with_file_dtypes(fixed, dtypes)
    qps = allocate_qps(
        tensors, target_snr_db=target_snr_db, importance=options.get("importance"), progress=progress, **fixed
    )
    explicit = dict(options.get("qp_per_tensor") or {})
    completed = dict(options, qp_per_tensor=dict(explicit, **{k: v for k, v in qps.items() if k not in explicit}))
    return completed, qps


def _multiplier_choice(curves: dict, pinned, target: float) -> tuple[dict, float]:
    """The qp per tensor minimising bits + μ·error for the smallest μ (bisection) whose total error meets
    ``target``, and its bits; EncodeError when no choice of the curves meets it."""

    def pick(mu: float) -> tuple[dict, float, float]:
        choice, bits, dist = {}, 0.0, 0.0
        for name, curve in curves.items():
            qp, b, d = min(curve, key=lambda p: p[1] + mu * p[2])
            choice[name], bits, dist = qp, bits + b, dist + d
        return choice, bits, dist

    lo, hi = 0.0, 1.0
    while pick(hi)[2] > target and hi < 1e300:
        hi *= 16.0
    if pick(hi)[2] > target:
        fixed_error = sum(curves[k][0][2] for k in pinned)
        if fixed_error > target:
            raise EncodeError(
                f"the tensors whose qp is given ({', '.join(sorted(pinned)[:3])}{', ...' if len(pinned) > 3 else ''}) "
                f"alone exceed the target distortion {target:.4g} ({fixed_error:.4g}): give them finer qps"
            )
        raise EncodeError(f"no qps in the range reach the target distortion {target:.4g}")
    for _ in range(200):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e12
        if pick(mid)[2] > target:
            lo = mid
        else:
            hi = mid
        if lo > 0 and hi / lo < 1 + 1e-9:
            break
    choice, bits, _ = pick(hi)
    return choice, bits


def _no_worse_than_one_qp(curves, pinned, target: float, choice: dict, bits: float) -> tuple[dict, float]:
    """``choice`` (the multiplier's, ``bits`` in all), or the one qp common to the free tensors' candidates that
    meets ``target`` in fewer bits on the measured curves: the multiplier reaches only the points of the curves'
    convex hulls, so a target between two of them can cost more than one qp for all (A.11)."""
    points = {k: {qp: (b, d) for qp, b, d in curve} for k, curve in curves.items()}
    free = [k for k in curves if k not in pinned]
    common = set.intersection(*(set(points[k]) for k in free)) if free else set()
    for qp in sorted(common):
        chosen = {k: (choice[k] if k in pinned else qp) for k in curves}
        total_bits = sum(points[k][q][0] for k, q in chosen.items())
        if total_bits < bits and sum(points[k][q][1] for k, q in chosen.items()) <= target:
            choice, bits = chosen, total_bits
    return choice, bits


def scale_importance(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """F = 1 / (mean square of its tensor) for each tensor of some energy: the importance under which
    :func:`allocate_qps`'s SNR target is each tensor's error against its own scale, counted by its weights (spec
    A.11). Without it a total weight SNR lets a tensor of large values (an embedding, a mask constant of -1e4)
    stand for the model: a 40 dB target zeroed every layer of a GPT whose masks held -1e4.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The float tensors.

    Returns
    -------
    dict of str to numpy.ndarray
        {name: F} (float64, flat) of the tensors of finite, non-zero energy.

    Examples
    --------
    >>> import numpy as np
    >>> F = scale_importance({"a": np.array([2.0, -2.0]), "zeros": np.zeros(3)})
    >>> F["a"].tolist(), "zeros" in F
    ([0.25, 0.25], False)
    """
    factors = {name: (_scale_factor(_mean_square(x)), np.size(x)) for name, x in tensors.items()}
    return {name: np.full(size, f) for name, (f, size) in factors.items() if f is not None}


def _mean_square(x) -> float:
    """The mean square of a tensor's values, in float64 (0 for an empty one)."""
    flat = np.asarray(x, np.float64).reshape(-1)
    return float(np.mean(np.square(flat))) if flat.size else 0.0


def _scale_factor(mean_square: float) -> float | None:
    """F = 1 / mean square, each of a tensor's weights' in :func:`scale_importance`, or None when its energy is 0 or
    not finite."""
    return 1.0 / mean_square if 0 < mean_square < math.inf else None


def _float_tensors(tensors, is_raw: Callable[[str], bool]) -> dict[str, Callable[[], np.ndarray]]:
    """{name: a loader of its values} of the float tensors not stored raw by name (``is_raw``): a model opened
    lazily (:class:`nnc.readers.ModelSource`) is read a tensor at a time, each time its values are wanted."""
    from .readers import ModelSource

    if isinstance(tensors, ModelSource):
        return {t.name: t.load for t in tensors if np.dtype(t.dtype).kind == "f" and not is_raw(t.name)}
    arrays = {k: np.asarray(v) for k, v in tensors.items() if not is_raw(k)}
    return {k: _held(a) for k, a in arrays.items() if a.dtype.kind == "f"}


def _held(array: np.ndarray) -> Callable[[], np.ndarray]:
    """A loader of an array already in memory."""
    return lambda: array


def _weighted_energy(x: np.ndarray, importance) -> float:
    """sum F w^2 of a tensor (F = 1 without an importance; one F for all its weights, or one each)."""
    return _weighted_error(np.asarray(x).reshape(-1), None, importance)


def _weighted_error(x: np.ndarray, recon: np.ndarray | None, importance) -> float:
    """sum F (x - recon)^2 over a flat tensor (recon None: 0), in float64 slice by slice (no tensor-sized
    temporaries); ``importance`` None (F = 1), one F for all, or one each."""
    one = importance is None or np.isscalar(importance)
    f = None if one else np.asarray(importance, np.float64).reshape(-1)
    total = 0.0
    for i in range(0, x.size, MEASURE_SLICE):
        d = x[i : i + MEASURE_SLICE].astype(np.float64)  # (a copy: x is the caller's)
        if recon is not None:
            d -= recon[i : i + MEASURE_SLICE]
        d *= d
        if f is not None:
            d *= f[i : i + MEASURE_SLICE]
        total += float(d.sum())
    return total if importance is None else float(importance) * total if one else total


def empirical_fisher(gradients: Iterable[Mapping[str, object]]) -> dict[str, np.ndarray]:
    """Mean squared gradient per weight over batches: an importance estimate F (spec A.12).

    ``gradients`` yields, per batch, {name: gradient} (numpy arrays, or torch tensors, which
    are detached and moved to the CPU).  For example, with PyTorch::

        def grads():
            for x, y in batches:
                model.zero_grad(); loss_fn(model(x), y).backward()
                yield {n: p.grad for n, p in model.named_parameters()}
        F = nnc.allocation.empirical_fisher(grads())

    Parameters
    ----------
    gradients : iterable of mapping
        Per batch, {name: gradient}; None gradients are skipped.

    Returns
    -------
    dict of str to numpy.ndarray
        {name: mean squared gradient}, usable as ``importance`` of
        :func:`allocate_qps` and :class:`nnc.encoder.Encoder`.

    Raises
    ------
    nnc.errors.EncodeError
        If ``gradients`` yields no batch.

    Examples
    --------
    >>> import numpy as np
    >>> F = empirical_fisher([{"w": np.array([1.0, -2.0])}, {"w": np.array([3.0, 0.0])}])
    >>> F["w"].tolist()
    [5.0, 2.0]
    """
    total: dict[str, np.ndarray] = {}
    count = 0
    from .torch import numpy_inputs

    for batch in gradients:
        count += 1
        batch, _ = numpy_inputs(batch)  # torch tensors (bfloat16 too) as numpy arrays
        for name, g in batch.items():
            if g is None:
                continue
            g = np.asarray(g, np.float64)
            total[name] = total.get(name, 0.0) + g * g
    if count == 0:
        raise EncodeError("empirical_fisher needs at least one batch of gradients")
    return {k: v / count for k, v in total.items()}


def laplace_sigmas(
    fisher: Mapping[str, np.ndarray],
    n_samples: int,
    *,
    weights: Mapping[str, np.ndarray] | None = None,
    prior_precision: float | Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Per-weight standard deviations from a Laplace approximation: σ = 1 / sqrt(N·F + τ) (spec A.10).

    The posterior of each weight is approximated by a Gaussian whose precision is the
    Fisher information of the ``n_samples`` training samples (N times the per-sample
    Fisher diagonal F) plus the precision τ of a Gaussian prior. The result is DeepCABAC's
    DC-v1 input: ``Encoder(sigmas=...)`` or ``nnc encode --sigmas FILE`` (save it with
    :func:`nnc.formats.write_model`).

    Parameters
    ----------
    fisher : mapping of str to numpy.ndarray
        Per-sample Fisher diagonal per tensor, e.g. :func:`empirical_fisher` of per-sample
        gradients (labels drawn from the model's own predictions avoid the near-zero
        gradients of a model that fits its training labels).
    n_samples : int
        N, the number of training samples the posterior is conditioned on.
    weights : mapping of str to numpy.ndarray, optional
        The tensors; without ``prior_precision``, τ = 1 / var(w) of each tensor.
    prior_precision : float or mapping of str to float, optional
        τ for all tensors, or per tensor.

    Returns
    -------
    dict of str to numpy.ndarray
        {name: σ}, positive, one per weight.

    Raises
    ------
    nnc.errors.EncodeError
        If neither ``weights`` nor ``prior_precision`` gives τ, or τ is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> s = laplace_sigmas({"w": np.array([0.0, 0.75])}, 100, prior_precision=25.0)
    >>> s["w"].tolist()
    [0.2, 0.1]
    """
    out = {}
    for name, f in fisher.items():
        if isinstance(prior_precision, Mapping):
            tau = prior_precision.get(name)
        else:
            tau = prior_precision
        if tau is None:
            if weights is None or name not in weights:
                raise EncodeError(f"tensor {name!r}: give prior_precision or the weights (tau = 1/var(w))")
            tau = 1.0 / max(float(np.var(np.asarray(weights[name], np.float64))), 1e-30)
        if not tau > 0:
            raise EncodeError(f"tensor {name!r}: prior precision must be positive, not {tau}")
        out[name] = 1.0 / np.sqrt(n_samples * np.asarray(f, np.float64) + tau)
    return out


def input_importance(
    weights: Mapping[str, np.ndarray], input_moments: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Importance F of each weight from the second moments of its layer's inputs (spec A.12).

    For a linear layer y = W·x, an error e in W[i, j] changes y[i] by e·x[j], so its
    squared output error is e²·E[x[j]²]: F[i, j] = E[x[j]²], the diagonal of the
    layer's Gauss-Newton matrix with unit output weighting. Input features of large
    energy (the outlier channels of transformers) make their weights important; the
    rate-distortion choice then spends its rate there. Convolution weights
    (out, in, ...) take E[x[c]²] of their input channel c for every kernel position.
    Each tensor's F is scaled to mean 1, so λ keeps its meaning.

    Parameters
    ----------
    weights : mapping of str to numpy.ndarray
        The weight tensors, (out, in) or (out, in, kernel...); only their shapes are used.
    input_moments : mapping of str to numpy.ndarray
        {weight name: E[x²] per input feature or channel} (length ``in``), measured on a
        few inputs of the application; tensors without an entry get none.

    Returns
    -------
    dict of str to numpy.ndarray
        {name: F}, float32 in the weight's shape: ``Encoder(importance=...)``.

    Raises
    ------
    nnc.errors.EncodeError
        If a weight is named that is not there, has fewer than two dimensions, or its
        moments are not one non-negative finite value per input feature.

    Examples
    --------
    >>> import numpy as np
    >>> f = input_importance({"w": np.zeros((2, 3))}, {"w": np.array([1.0, 4.0, 1.0])})
    >>> f["w"].tolist()
    [[0.5, 2.0, 0.5], [0.5, 2.0, 0.5]]
    """
    out = {}
    for name, moments in input_moments.items():
        if name not in weights:
            raise EncodeError(f"input_importance: no weight tensor {name!r}")
        shape = np.shape(weights[name])
        m = np.asarray(moments, np.float64).reshape(-1)
        if len(shape) < 2 or m.size != shape[1] or not np.all(np.isfinite(m) & (m >= 0)):
            raise EncodeError(
                f"tensor {name!r}: input moments need one non-negative value per input feature "
                f"({shape[1] if len(shape) > 1 else 'a 2-d or larger weight'}), got {m.size}"
            )
        mean = m.mean()
        m = m / mean if mean > 0 else np.ones_like(m)
        per_input = m.reshape((1, -1) + (1,) * (len(shape) - 2))
        out[name] = np.ascontiguousarray(np.broadcast_to(per_input, shape), np.float32)
    return out


__all__ = [
    "allocate_qps",
    "default_qps",
    "empirical_fisher",
    "input_importance",
    "laplace_sigmas",
    "scale_importance",
    "with_allocated_qps",
]
