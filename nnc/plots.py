"""Figures for the command line: ``nnc compare --plot`` and ``nnc bench --plot``.

matplotlib is optional (the ``plot`` extra: ``pip install matplotlib``); without it
these functions raise ImportError saying so.  Figures are written as PNG (or any format
matplotlib knows by the file's extension), atomically: a failed plot leaves no file.

Examples
--------
>>> import numpy as np
>>> from nnc.plots import error_histogram
>>> counts, edges = error_histogram({"w": np.zeros(3)}, {"w": np.array([0.0, 0.25, -0.25])}, ["w"], bins=2)
>>> counts.tolist()
[1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._files import AtomicFile

__all__ = ["compare_figure", "rate_snr_figure", "error_histogram"]

#: At most this many tensors get a bar of their own in the per-tensor SNR panel (the largest).
MAX_BARS = 60


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from exc
    return plt


def _save(fig, path) -> None:
    """Write the figure atomically (:class:`nnc._files.AtomicFile`: a temporary file beside it, flushed, renamed)."""
    path = Path(path)
    with AtomicFile(path) as file:
        fig.savefig(file.fh, dpi=120, bbox_inches="tight", format=(path.suffix[1:] or "png"))


def error_histogram(reference: Mapping, other: Mapping, names: Sequence[str], bins: int = 101):
    """Histogram of the errors ``other - reference`` over the float tensors ``names``.

    Computed tensor by tensor (and in slices), so memory stays bounded by one slice.

    Parameters
    ----------
    reference, other : mapping of str to array-like
    names : sequence of str
        The float tensors to include (same shape in both).
    bins : int
        Number of bins, symmetric around 0.

    Returns
    -------
    tuple of ndarray
        ``(counts, edges)`` as :func:`numpy.histogram` returns them.

    Examples
    --------
    >>> import numpy as np
    >>> counts, edges = error_histogram({"w": np.zeros(4)}, {"w": np.array([0, 0.5, -0.5, 0])}, ["w"], bins=3)
    >>> counts.tolist(), edges[[0, -1]].tolist()
    ([1, 2, 1], [-0.5, 0.5])
    """
    step = 1 << 20
    peak = 0.0
    for name in names:
        a, b = np.asarray(reference[name]).reshape(-1), np.asarray(other[name]).reshape(-1)
        for i in range(0, a.size, step):
            d = b[i : i + step].astype(np.float64) - a[i : i + step].astype(np.float64)
            peak = max(peak, float(np.abs(d).max(initial=0.0)))
    peak = peak or 1.0
    edges = np.linspace(-peak, peak, bins + 1)
    counts = np.zeros(bins, np.int64)
    for name in names:
        a, b = np.asarray(reference[name]).reshape(-1), np.asarray(other[name]).reshape(-1)
        for i in range(0, a.size, step):
            d = b[i : i + step].astype(np.float64) - a[i : i + step].astype(np.float64)
            counts += np.histogram(d, edges)[0]
    return counts, edges


def compare_figure(result: dict, reference: Mapping, other: Mapping, path, title: str = "") -> None:
    """Per-tensor SNR and the error histogram of a comparison (``nnc compare --plot``).

    Parameters
    ----------
    result : dict
        What :func:`nnc.models.compare_tensors` returned for ``reference`` and ``other``.
    reference, other : mapping of str to array-like
        The tensors compared.
    path : str or path-like
        The image file to write (its extension picks the format; PNG by default).
    title : str
        A title for the figure.

    Raises
    ------
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from nnc.models import compare_tensors
    >>> ref = {"w": np.linspace(-1, 1, 100), "b": np.ones(3)}
    >>> other = {"w": np.round(ref["w"] * 8) / 8, "b": np.ones(3)}
    >>> path = os.path.join(tempfile.mkdtemp(), "compare.png")
    >>> compare_figure(compare_tensors(ref, other), ref, other, path)
    >>> os.path.getsize(path) > 10_000
    True
    """
    plt = _pyplot()
    floats = [r for r in result["tensors"] if "snr_db" in r]
    shown = sorted(floats, key=lambda r: -math.prod(r["shape"]))[:MAX_BARS]
    shown = [r for r in floats if r in shown]  # the model's order
    fig, (ax_snr, ax_hist) = plt.subplots(
        1, 2, figsize=(13, max(4.0, 0.18 * len(shown) + 1.5)), gridspec_kw=dict(width_ratios=[3, 2])
    )
    if shown:
        snrs = [r["snr_db"] if math.isfinite(r["snr_db"]) else np.nan for r in shown]
        finite = [s for s in snrs if np.isfinite(s)]
        top = (max(finite) if finite else 0.0) + 5
        values = [top if r["snr_db"] == float("inf") else s for r, s in zip(shown, snrs)]
        y = np.arange(len(shown))
        ax_snr.barh(y, values, color=["tab:green" if r["snr_db"] == float("inf") else "tab:blue" for r in shown])
        ax_snr.set_yticks(y)
        ax_snr.set_yticklabels([r["name"][-40:] for r in shown], fontsize=7)
        ax_snr.invert_yaxis()
        total = result["total"]["snr_db"]
        if math.isfinite(total):
            ax_snr.axvline(total, color="tab:red", linestyle="--", label=f"total {total:.2f} dB")
            ax_snr.legend(loc="lower right", fontsize=8)
    else:
        ax_snr.text(0.5, 0.5, "no float tensors in common", ha="center", va="center", transform=ax_snr.transAxes)
    more = len(floats) - len(shown)
    ax_snr.set_xlabel("weight SNR (dB); green: exact")
    ax_snr.set_title(f"per-tensor SNR ({len(shown)} largest of {len(floats)} shown)" if more else "per-tensor SNR")

    counts, edges = error_histogram(reference, other, [r["name"] for r in floats])
    centres = (edges[:-1] + edges[1:]) / 2
    ax_hist.bar(centres, counts, width=edges[1] - edges[0], color="tab:gray")
    if counts.any():
        ax_hist.set_yscale("log")
    ax_hist.set_xlabel("error (other - reference)")
    ax_hist.set_ylabel("weights")
    ax_hist.set_title(f"error histogram ({result['total']['weights']} float weights)")
    if title:
        fig.suptitle(title)
    try:
        _save(fig, path)
    finally:
        plt.close(fig)


def rate_snr_figure(curves: Mapping[str, Sequence[tuple[float, float]]], path, title: str = "") -> None:
    """Rate against SNR, one curve per coder (``nnc bench --plot``).

    Parameters
    ----------
    curves : mapping of str to sequence of (bits per weight, SNR dB)
        One entry per coder; points are sorted by rate.
    path : str or path-like
        The image file to write.
    title : str
        A title for the figure.

    Raises
    ------
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "rd.png")
    >>> rate_snr_figure({"nnc": [(2.0, 30.0), (3.0, 36.0)], "lzma": [(3.1, 30.0), (4.2, 36.0)]}, path)
    >>> os.path.getsize(path) > 10_000
    True
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = "osD^v<>ph*"
    for i, (coder, points) in enumerate(curves.items()):
        pts = sorted((r, s) for r, s in points if math.isfinite(s))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], label=coder)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("weight SNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "rate against SNR")
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
