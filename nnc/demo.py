"""The bundled example: digits models encoded, decoded and evaluated (``nnc demo``).

Two small models trained on scikit-learn's digits data (examples/digits/train.py)
ship as package data.  The demo encodes each at a few quality settings, decodes
the stream, and reports size, compression ratio, weight SNR and test accuracy
before and after.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "digits"
MODELS = {"mlp": "mlp.safetensors", "cnn": "cnn.safetensors"}


def relu(z):
    return np.maximum(z, 0)


def im2col(x, k, stride):
    """x: (n, c, h, w) -> (n, oh, ow, c*k*k) for 'same'-style padding k//2."""
    n, c, h, w = x.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh = (h + 2 * p - k) // stride + 1
    ow = (w + 2 * p - k) // stride + 1
    cols = np.empty((n, oh, ow, c, k, k), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, :, i, j] = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride].transpose(
                0, 2, 3, 1
            )
    return cols.reshape(n, oh, ow, c * k * k), (oh, ow)


def mlp_forward(params, x, cache=False):
    """Logits of the MLP; with cache=True also the activations (for training).

    Parameters
    ----------
    params : mapping of str to numpy.ndarray
        ``fc1.weight`` ... ``fc3.bias``.
    x : numpy.ndarray
        Images, (n, 8, 8) or (n, 64).
    cache : bool
        Also return the activations.

    Returns
    -------
    numpy.ndarray or tuple
        Logits (n, 10), or (logits, activations).

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> params, _ = read_model(DATA / "mlp.safetensors")
    >>> x, y = load_test_set()
    >>> mlp_forward(params, x[:3]).shape
    (3, 10)
    """
    h = x.reshape(len(x), -1)
    acts = [h]
    names = ["fc1", "fc2", "fc3"]
    for i, name in enumerate(names):
        h = h @ params[f"{name}.weight"].T + params[f"{name}.bias"]
        if i < len(names) - 1:
            h = relu(h)
        acts.append(h)
    return (h, acts) if cache else h


def cnn_forward(params, x, cache=False):
    """Logits of the CNN; with cache=True also the intermediate values (for training).

    Parameters
    ----------
    params : mapping of str to numpy.ndarray
        ``conv1.weight`` ... ``fc.bias``.
    x : numpy.ndarray
        Images, (n, 8, 8) or (n, 64).
    cache : bool
        Also return the intermediate values.

    Returns
    -------
    numpy.ndarray or tuple
        Logits (n, 10), or (logits, intermediates).

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> params, _ = read_model(DATA / "cnn.safetensors")
    >>> x, y = load_test_set()
    >>> cnn_forward(params, x[:3]).shape
    (3, 10)
    """
    x = x.reshape(len(x), 1, 8, 8)
    c1, s1 = im2col(x, 3, 1)
    w1 = params["conv1.weight"]
    z1 = c1 @ w1.reshape(len(w1), -1).T + params["conv1.bias"]  # n, 8, 8, 16
    a1 = relu(z1).transpose(0, 3, 1, 2)
    c2, s2 = im2col(a1, 3, 2)
    w2 = params["conv2.weight"]
    z2 = c2 @ w2.reshape(len(w2), -1).T + params["conv2.bias"]  # n, 4, 4, 32
    a2 = relu(z2).transpose(0, 3, 1, 2).reshape(len(x), -1)
    logits = a2 @ params["fc.weight"].T + params["fc.bias"]
    if cache:
        return logits, (x, c1, z1, a1, c2, z2, a2)
    return logits


FORWARD = {"mlp": mlp_forward, "cnn": cnn_forward}


def load_test_set(data_dir: Path = DATA):
    """The bundled test split of scikit-learn's digits: images scaled to [0, 1] and labels.

    Parameters
    ----------
    data_dir : pathlib.Path
        The folder holding ``test_set.npz`` (the package's own by default).

    Returns
    -------
    tuple of numpy.ndarray
        (images of shape (n, 8, 8), float32; labels of shape (n,), int64).

    Examples
    --------
    >>> x, y = load_test_set()
    >>> x.shape, y.shape
    ((540, 8, 8), (540,))
    """
    z = np.load(data_dir / "test_set.npz")
    return z["images"].astype(np.float32) / 16.0, z["labels"].astype(np.int64)


def accuracy(kind: str, params, x, y) -> float:
    """Fraction of ``x`` that model ``kind`` ("mlp" or "cnn") with ``params`` classifies as ``y``.

    Parameters
    ----------
    kind : str
        ``"mlp"`` or ``"cnn"``.
    params : mapping of str to numpy.ndarray
        The model's tensors.
    x, y : numpy.ndarray
        Images and labels, as :func:`load_test_set` returns them.

    Returns
    -------
    float

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> x, y = load_test_set()
    >>> round(accuracy("mlp", read_model(DATA / "mlp.safetensors")[0], x, y), 4)
    0.9889
    """
    return float(correct(kind, params, x, y).mean())


def correct(kind: str, params, x, y) -> np.ndarray:
    """Per-image scores: 1.0 where model ``kind`` with ``params`` classifies ``x`` as ``y``, else 0.0.

    Parameters
    ----------
    kind : str
        ``"mlp"`` or ``"cnn"``.
    params : mapping of str to numpy.ndarray
        The model's tensors.
    x, y : numpy.ndarray
        Images and labels, as :func:`load_test_set` returns them.

    Returns
    -------
    numpy.ndarray
        One float per image; its mean is :func:`accuracy`.

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> x, y = load_test_set()
    >>> correct("mlp", read_model(DATA / "mlp.safetensors")[0], x[:6], y[:6]).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    return (FORWARD[kind](params, x).argmax(1) == y).astype(np.float64)


_TEST_SET = []


def _score(kind: str, tensors, per_image: bool = False):
    if not _TEST_SET:
        _TEST_SET.append(load_test_set())
    x, y = _TEST_SET[0]
    params = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
    return correct(kind, params, x, y) if per_image else accuracy(kind, params, x, y)


def mlp_correct(tensors) -> np.ndarray:
    """Per-image scores of the bundled MLP: 1.0 for each test image classified correctly, else 0.0.

    The search's per-sample form of :func:`mlp_accuracy` (``--search nnc.demo:mlp_correct``):
    candidates are compared with the original image by image.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The MLP's tensors, e.g. as decoded.

    Returns
    -------
    numpy.ndarray
        One float per bundled test image.

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> tensors, _ = read_model(DATA / "mlp.safetensors")
    >>> s = mlp_correct(tensors)
    >>> s.shape, round(float(s.mean()), 4)
    ((540,), 0.9889)
    """
    return _score("mlp", tensors, per_image=True)


def cnn_correct(tensors) -> np.ndarray:
    """Per-image scores of the bundled CNN; see :func:`mlp_correct`.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The CNN's tensors, e.g. as decoded.

    Returns
    -------
    numpy.ndarray
        One float per bundled test image.

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> tensors, _ = read_model(DATA / "cnn.safetensors")
    >>> round(float(cnn_correct(tensors).mean()), 4)
    0.9907
    """
    return _score("cnn", tensors, per_image=True)


def mlp_accuracy(tensors) -> float:
    """Test accuracy of the bundled MLP with these tensors: an evaluation function for the search.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The MLP's tensors (``fc1.weight`` ... ``fc3.bias``), e.g. as decoded.

    Returns
    -------
    float
        The fraction of the bundled test images classified correctly.

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> tensors, _ = read_model(DATA / "mlp.safetensors")
    >>> round(mlp_accuracy(tensors), 4)
    0.9889
    """
    return _score("mlp", tensors)


def cnn_accuracy(tensors) -> float:
    """Test accuracy of the bundled CNN with these tensors; see :func:`mlp_accuracy`.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The CNN's tensors, e.g. as decoded.

    Returns
    -------
    float

    Examples
    --------
    >>> from nnc.formats import read_model
    >>> tensors, _ = read_model(DATA / "cnn.safetensors")
    >>> round(cnn_accuracy(tensors), 4)
    0.9907
    """
    return _score("cnn", tensors)


def snr_db(ref: dict, rec: dict) -> float:
    """10 log10 of signal energy over error energy, over all tensors (inf if identical).

    Parameters
    ----------
    ref, rec : mapping of str to numpy.ndarray
        Original and reconstructed tensors (same names).

    Returns
    -------
    float
        The SNR in dB.

    Examples
    --------
    >>> import numpy as np
    >>> round(snr_db({"w": np.array([1.0, 1.0])}, {"w": np.array([1.1, 0.9])}), 6)
    20.0
    """
    from .models import compare_tensors

    return compare_tensors(ref, rec)["total"]["snr_db"]


DEFAULT_SETTINGS = ((-28, True), (-20, True), (-16, True), (-12, True), (-20, False))


def run(data_dir: Path = DATA, settings=DEFAULT_SETTINGS, out=print) -> list[dict]:
    """Encode and decode every bundled model at each (qp, dq) setting; print and return a table.

    This is ``nnc demo``.

    Parameters
    ----------
    data_dir : pathlib.Path
        Where the models and the test set are (the package's own by default).
    settings : sequence of (int, bool)
        (qp, dq) pairs.
    out : callable
        Receives each line of the table (``print`` by default).

    Returns
    -------
    list of dict
        One row per model and setting: bytes, bits per weight, ratio, SNR, accuracy
        before and after, times.

    Examples
    --------
    >>> rows = run(settings=((-20, True),), out=lambda line: None)
    >>> [r["model"] for r in rows], all(r["acc_after"] > 0.9 for r in rows)
    (['mlp', 'cnn'], True)
    """
    import nnc
    from nnc.encoder import Encoder
    from nnc.formats import read_model

    x, y = load_test_set(data_dir)
    rows = []
    for kind, fname in MODELS.items():
        params, _ = read_model(data_dir / fname)
        params = {k: np.asarray(v, np.float32) for k, v in params.items()}
        fp32_bytes = sum(v.size * 4 for v in params.values())
        base_acc = accuracy(kind, params, x, y)
        n_weights = sum(v.size for v in params.values())
        for qp, dq in settings:
            t0 = time.perf_counter()
            stream = Encoder(qp=qp, dq=dq).encode(params).stream  # (a sweep: coarse qps may zero tensors, measured)
            t1 = time.perf_counter()
            decoded = nnc.decode(stream)
            t2 = time.perf_counter()
            rows.append(
                dict(
                    model=kind,
                    qp=qp,
                    dq=dq,
                    bytes=len(stream),
                    bits_per_weight=8 * len(stream) / n_weights,
                    ratio=fp32_bytes / len(stream),
                    snr_db=snr_db(params, decoded),
                    acc_before=base_acc,
                    acc_after=accuracy(kind, decoded, x, y),
                    encode_s=t1 - t0,
                    decode_s=t2 - t1,
                )
            )
    header = (
        f"{'model':5} {'qp':>4} {'dq':>3} {'bytes':>7} {'bits/w':>6} {'ratio':>6} {'SNR dB':>6} "
        f"{'acc fp32':>8} {'acc nnc':>8}"
    )
    out(header)
    out("-" * len(header))
    for r in rows:
        out(
            f"{r['model']:5} {r['qp']:>4} {('on' if r['dq'] else 'off'):>3} {r['bytes']:>7} "
            f"{r['bits_per_weight']:>6.2f} {r['ratio']:>5.1f}x {r['snr_db']:>6.1f} "
            f"{100 * r['acc_before']:>7.2f}% {100 * r['acc_after']:>7.2f}%"
        )
    return rows


__all__ = [
    "DATA",
    "MODELS",
    "run",
    "load_test_set",
    "accuracy",
    "correct",
    "mlp_accuracy",
    "cnn_accuracy",
    "mlp_correct",
    "cnn_correct",
    "snr_db",
    "mlp_forward",
    "cnn_forward",
]
