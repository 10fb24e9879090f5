"""Model files in, model files out: the Python twin of ``nnc encode`` and ``nnc decode``.

    >>> import nnc, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> src = os.path.join(d, "m.npz")
    >>> np.savez(src, w=np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), n=np.int64(7))
    >>> stream = nnc.encode_model(src, qp=-20)
    >>> tensors = nnc.decode_model(stream)
    >>> sorted(tensors), tensors["n"].dtype.name, tensors["n"].shape
    (['n', 'w'], 'int64', ())
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Mapping

import numpy as np

from . import formats
from .decoder import Decoder, restore_model_view


def encode_model(model, output=None, **options) -> bytes:
    """Encode a model file (any supported format) or a mapping of arrays; optionally write the stream.

    ``options`` are those of :class:`nnc.Encoder` (qp, step, dq, scan_order, ...).
    """
    from .encoder import Encoder

    if isinstance(model, Mapping):
        tensors = OrderedDict((k, np.asarray(v)) for k, v in model.items())
    else:
        tensors, _ = formats.read_model(model)
    stream = Encoder(**options).encode(tensors).stream
    if output is not None:
        formats.write_atomic(output, stream)
    return stream


def decode_model(stream, output=None, *, template=None, **decoder_options) -> "OrderedDict[str, np.ndarray]":
    """Decode a stream to the model's tensors, with their original shapes and dtypes where known.

    With ``output`` (a .npz, .safetensors, .pt or .onnx path) the model file is written too;
    ONNX output needs the original model as ``template``.  bfloat16 tensors are returned as
    float32 numpy arrays and written back as bfloat16.
    """
    dec = Decoder(stream, **decoder_options)
    tensors, dtypes = restore_model_view(dec.decode(), dec.metadata)
    if output is not None:
        formats.write_model(os.fspath(output), tensors, dtypes, template=template)
    return tensors
