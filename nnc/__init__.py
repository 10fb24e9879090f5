"""nnc: DeepCABAC and MPEG NNC (ISO/IEC 15938-17) coding of neural-network weights.

The two calls most users need::

    stream = nnc.encode({"layer.weight": array, ...}, qp=-38, dq=True)
    tensors = nnc.decode(stream)          # bytes, a path or a binary file

``import nnc`` is light (no numpy); each name is loaded from its module when first used, and
decoding imports only the decoder side. The names of ``__all__`` come from :mod:`nnc.decoder` and
:mod:`nnc.errors`; ``Encoder``, ``EncoderState``, ``EncodeResult``,
``encode_with_reconstruction`` and ``qp_for_step`` are attributes of ``nnc`` too, loaded from
:mod:`nnc.encoder` (they are not in ``__all__``, so that ``from nnc import *`` does not import
the encoder). Submodules are attributes as well (``nnc.models``, imported when first used).

Examples
--------
>>> import numpy as np, nnc
>>> w = np.array([[0.5, -0.25], [1.0, 0.0]], np.float32)
>>> stream = nnc.encode({"fc.weight": w}, qp=-8, dq=False)
>>> decoded = nnc.decode(stream)
>>> decoded["fc.weight"].dtype.name, bool((decoded["fc.weight"] == w).all())
('float32', True)
>>> nnc.qp_for_step(0.25)
-8
"""

from typing import TYPE_CHECKING

from .errors import (
    DecodeError,
    EncodeError,
    LimitError,
    NNCError,
    OutputBufferError,
    PrecisionWarning,
    TruncatedError,
    UnsupportedError,
    UpdateError,
)

if TYPE_CHECKING:
    from .decoder import Decoder, DecoderState, Limits, TensorInfo, apply_update, decode, decode_with_info

__version__ = "0.3.0.dev0"  # the one place the version is written (pyproject.toml reads it)

#: Names of ``nnc`` loaded from their modules when first used: ``import nnc`` itself is light (no numpy), so that the
#: command line can answer Ctrl-C from its first moment, and decode-only pipelines never import the encoder.
_LAZY = {
    **dict.fromkeys(
        ("Decoder", "DecoderState", "Limits", "TensorInfo", "apply_update", "decode", "decode_with_info"), "decoder"
    ),
    **dict.fromkeys(
        ("Encoder", "EncoderState", "EncodeResult", "encode_with_reconstruction", "qp_for_step"), "encoder"
    ),
}


def encode(tensors, *, qp=None, dq=None, **options):
    """Encode a mapping of name to array into an NNC stream (bytes).

    The same as :func:`nnc.encoder.encode`, imported on first use.  The
    stream is a profile-1 (2nd edition) unit stream unless ``profile=0`` is
    given.

    Parameters
    ----------
    tensors : ``Mapping``
        {name: array-like}; float tensors are quantised, integer tensors
        coded exactly (by default), in this order.
    qp : int or None
        Global quantisation parameter (spec 12.1); None for the default, -38.
        Tensors of at most one dimension (biases, norms) use it too, unless
        the ``nonweight_qp`` option gives them another.
    dq : bool or None
        Dependent quantisation (spec 10.2); None for the default, True.
    **options
        Any other keyword option of :class:`nnc.encoder.Encoder` (``step``,
        ``scan_order``, ``nonweight_qp``, ``profile``, ``codebook``, ...).

    Returns
    -------
    bytes
        The NNC stream.

    Raises
    ------
    nnc.errors.EncodeError
        If an option is out of range, or a tensor cannot be encoded (an
        unsupported dtype, NaN or Inf in a member of a BLOCK NDU; elsewhere
        they are kept exactly, raw).
    TypeError
        If an option name is unknown.

    Examples
    --------
    >>> import numpy as np, nnc
    >>> w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    >>> stream = nnc.encode({"fc.weight": w}, qp=-20, dq=False)  # step 2**-5
    >>> back = nnc.decode(stream)["fc.weight"]
    >>> back.shape, bool(np.abs(back - w).max() <= 2**-6)  # nearest rounding: error <= step / 2
    ((3, 4), True)
    >>> nnc.encode({"w": [1.0]}, qp=-8, step=0.1)
    Traceback (most recent call last):
        ...
    nnc.errors.EncodeError: give either qp or step, not both
    """
    from .encoder import encode as _encode
    from .torch import numpy_inputs

    tensors, options["dtypes"] = numpy_inputs(tensors, options.get("dtypes"))  # torch tensors, bf16 kept
    if options["dtypes"] is None:
        del options["dtypes"]

    return _encode(tensors, qp=qp, dq=dq, **options)


def encode_model(model, output=None, **options):
    """Encode a model file or mapping of arrays; see :func:`nnc.models.encode_model`.

    Parameters
    ----------
    model : str, ``os.PathLike`` or ``Mapping``
        A model file (.npz, .safetensors, .pt/.pth, .onnx; detected by
        content) or {name: array-like}.
    output : str, ``os.PathLike`` or None
        If given, the stream is also written there, atomically.
    **options
        Keyword options of :class:`nnc.encoder.Encoder`, ``client`` and ``extra_metadata``, and
        ``target_snr_db``: each float tensor's qp chosen first for that SNR, as
        ``nnc encode --target-snr`` does (:func:`nnc.allocation.allocate_qps`).

    Returns
    -------
    bytes
        The NNC stream.

    Raises
    ------
    nnc.formats.FormatError
        If the model file cannot be read.
    nnc.errors.EncodeError
        If an option is invalid or a tensor cannot be encoded.

    Examples
    --------
    >>> import numpy as np, tempfile, os, nnc
    >>> src = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> np.savez(src, w=np.ones((2, 2), np.float32))
    >>> list(nnc.decode(nnc.encode_model(src, qp=-20)))
    ['w']
    """
    from .models import encode_model as _encode_model

    return _encode_model(model, output, **options)


def decode_model(stream, output=None, **options):
    """Decode a stream to the model's tensors (and file); see :func:`nnc.models.decode_model`.

    Unlike :func:`nnc.decoder.decode`, the tensors get back the shapes and
    dtypes of the original model that the stream records (0-d tensors,
    int64, uint8, ...; bfloat16 and float8 tensors come back as float32
    arrays, and are written back in their dtype to a model file).

    Parameters
    ----------
    stream : bytes, str, ``os.PathLike`` or ``BinaryIO``
        The NNC stream, a path to it, or a binary file.
    output : str, ``os.PathLike`` or None
        If given, the model file to write (.npz, .safetensors, .pt (.pth, .bin, .ckpt) or .onnx).
    **options
        ``template`` (the original ONNX model, for ONNX output), ``threads``
        (units decoded at the same time, 0 for one per CPU) and the keyword
        options of :class:`nnc.decoder.Decoder`.

    Returns
    -------
    ``collections.OrderedDict``
        {name: ``numpy.ndarray``} in stream order.

    Raises
    ------
    nnc.errors.DecodeError
        If the stream is invalid.
    nnc.formats.FormatError
        If ``output`` cannot be written in the format its extension names.

    Examples
    --------
    >>> import numpy as np, nnc
    >>> stream = nnc.encode({"n": np.int64(7), "w": np.ones(3, np.float32)})
    >>> tensors = nnc.decode_model(stream)
    >>> tensors["n"].dtype.name, tensors["n"].shape, int(tensors["n"])
    ('int64', (), 7)
    """
    from .models import decode_model as _decode_model

    return _decode_model(stream, output, **options)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def __getattr__(name):
    import importlib.util

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f".{name}", __name__) is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule, as after ``import nnc.<name>``
    raise AttributeError(f"module 'nnc' has no attribute {name!r}")


__all__ = [
    "apply_update",
    "decode",
    "decode_with_info",
    "encode",
    "encode_model",
    "decode_model",
    "Decoder",
    "DecoderState",
    "Limits",
    "TensorInfo",
    "NNCError",
    "DecodeError",
    "TruncatedError",
    "LimitError",
    "UnsupportedError",
    "EncodeError",
    "UpdateError",
    "OutputBufferError",
    "PrecisionWarning",
]
