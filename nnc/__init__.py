"""nnc: DeepCABAC and MPEG NNC (ISO/IEC 15938-17) coding of neural-network weights.

The two calls most users need::

    stream = nnc.encode({"layer.weight": array, ...}, qp=-38, dq=True)
    tensors = nnc.decode(stream)          # bytes, a path or a binary file

Decoding imports only the decoder side; the encoder is imported on first use.
"""

from .decoder import Decoder, DecoderState, Limits, TensorInfo, decode, decode_with_info
from .errors import (
    DecodeError,
    EncodeError,
    LimitError,
    NNCError,
    TruncatedError,
    UnsupportedError,
)

__version__ = "0.1.0"


def encode(tensors, *, qp=None, dq=True, **options):
    """Encode a mapping of name to array into an NNC stream; see :func:`nnc.encoder.encode`."""
    from .encoder import encode as _encode

    return _encode(tensors, qp=qp, dq=dq, **options)


def encode_model(model, output=None, **options):
    """Encode a model file or mapping of arrays; see :func:`nnc.models.encode_model`."""
    from .models import encode_model as _encode_model

    return _encode_model(model, output, **options)


def decode_model(stream, output=None, **options):
    """Decode a stream to the model's tensors (and file); see :func:`nnc.models.decode_model`."""
    from .models import decode_model as _decode_model

    return _decode_model(stream, output, **options)


def __getattr__(name):
    # lazy access to the encoder side, so that decode-only pipelines never import it
    if name in ("Encoder", "EncodeResult", "encode_with_reconstruction", "qp_for_step"):
        from . import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'nnc' has no attribute {name!r}")


__all__ = [
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
]
