"""Model files in, model files out: the Python twin of ``nnc encode`` and ``nnc decode``.

A model file (.npz, .safetensors, PyTorch .pt/.pth, ONNX; see
:mod:`nnc.formats`) is encoded into one NNC stream, and decoded back with the
original names, order, shapes and dtypes, also those NNC itself cannot carry
(0-d tensors, int64, bfloat16): the encoder records them in the stream's
topology unit.  Both functions are also at the top level, as
``nnc.encode_model`` and ``nnc.decode_model``.

Examples
--------
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

import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np

from . import formats, narrow_floats
from .decoder import Decoder, refuse_differences, restore_model_view
from .measure import error_sums, snr_db

__all__ = [
    "encode_model",
    "encode_model_to",
    "load_model",
    "checkpoint_metadata",
    "with_metadata",
    "keep_quantisation_parameters_exact",
    "QUANTISATION_PARAMETER_NAMES",
    "decode_model",
    "compare_tensors",
]


def with_file_dtypes(options: dict, dtypes: Mapping[str, str]) -> None:
    """Set ``options["dtypes"]`` to the dtypes a model file holds, the caller's own entries winning (a caller who
    names one tensor's dtype keeps the file's for the others)."""
    given = options.get("dtypes")
    options["dtypes"] = {**dtypes, **given} if isinstance(given, Mapping) else dtypes if given is None else given


#: Names (globs) of the float scales and zero points of quantised checkpoints (GPTQ/AWQ ``scales``, FP8
#: ``weight_scale_inv``, bitsandbytes ``absmax``...), kept exact like an ONNX graph's quantisation parameters.
QUANTISATION_PARAMETER_NAMES = (
    "*weight_scale",
    "*weight_scale_inv",
    "*input_scale",
    "*output_scale",
    "*.k_scale",
    "*.v_scale",
    "*.scales",
    "*.absmax",
    "*.nested_absmax",
    "*.quant_map",
    "*.nested_quant_map",
    "*.SCB",
    "*weight_zero_point",
    "*input_zero_point",
)


def keep_quantisation_parameters_exact(options: dict, source) -> list:
    """Add the float quantisation parameters of ``source`` (a :class:`nnc.readers.ModelSource`) to
    ``options["raw"]``, and return their names: the scales and zero points its ONNX graph uses
    (:attr:`nnc.readers.LazyTensor.quantisation_parameter`) or that :data:`QUANTISATION_PARAMETER_NAMES` name.

    Each scale sets the step of a channel or group of a quantised model's integer weights: rounded at a step
    meant for weights it is often zero, and the channel with it. Stored raw they are exact at a cost of a
    few bytes. A tensor the caller gives a qp of its own (``qp_per_tensor``) is left to it.

    Parameters
    ----------
    options : dict
        Encoder options; ``options["raw"]`` gets the names (after the caller's own).
    source : nnc.readers.ModelSource
        The model, as :func:`nnc.readers.open_model` opens it.

    Returns
    -------
    list of str
        The quantisation parameters found (stored raw unless ``qp_per_tensor`` names them).

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.readers import source_from_mapping
    >>> source = source_from_mapping({"l.qweight": np.zeros((4, 4), np.int32), "l.scales": np.ones(4, np.float16),
    ...                               "l.weight_scale": np.ones(4, np.float32)})
    >>> options = {"qp_per_tensor": {"l.weight_scale": -30}}
    >>> keep_quantisation_parameters_exact(options, source), options["raw"]
    (['l.scales'], ('l.scales',))
    """
    from .encoding.settings import matches

    explicit = tuple(options.get("qp_per_tensor") or ())
    names = [
        t.name
        for t in source
        if (narrow_floats.is_narrow(t.original_dtype) or np.dtype(t.original_dtype).kind == "f")
        and (t.quantisation_parameter or matches(t.name, QUANTISATION_PARAMETER_NAMES))
        and not matches(t.name, explicit)
    ]
    given = tuple(options.get("raw") or ())
    if names:
        options["raw"] = given + tuple(n for n in names if n not in given)
    return names


def encode_model(model, output=None, *, client=None, extra_metadata=None, target_snr_db=None, **options) -> bytes:
    """Encode a model file (any supported format) or a mapping of arrays; optionally write the stream.

    ``options`` are those of :class:`nnc.encoder.Encoder` (qp, step, dq, scan_order, ...).

    Parameters
    ----------
    model : str, ``os.PathLike`` or ``Mapping``
        Path of a model file, whose format is detected by content, of a sharded
        checkpoint folder or its index .json (:func:`nnc.readers.open_model`), or a
        mapping of name to array-like.
    output : str, ``os.PathLike`` or None
        If given, the stream is also written there, atomically.
    client : ``dask.distributed.Client`` or None
        Encode on a Dask cluster, one task per unit, the workers reading their
        tensors from ``model`` (a path they can read); the same stream
        (see :mod:`nnc.distributed`).
    extra_metadata : dict, optional
        For a mapping: entries added to the stream's nnc metadata (spec 6.2.1), as
        :meth:`nnc.encoder.Encoder.encode` takes them. A model file's own come from the file.
    target_snr_db : float, optional
        Choose each float tensor's qp for this SNR first (:func:`nnc.allocation.allocate_qps`,
        as ``nnc encode --target-snr``; ``importance`` weighs it, ``qp_per_tensor`` keeps its
        tensors); not with ``qp``, ``step``, ``nonweight_qp``, ``sigmas`` or ``covariances``.
    **options
        Keyword options of :class:`nnc.encoder.Encoder`. For a model file, ``dtypes``
        defaults to the dtypes the file holds, so that tensors read in another dtype
        (bfloat16, as float32) decode back to theirs, and the float scales of a
        quantised model are stored exactly (:func:`nnc.models.keep_quantisation_parameters_exact`).

    Returns
    -------
    bytes
        The NNC stream.

    Raises
    ------
    nnc.formats.FormatError
        If the model file cannot be read, holds no tensors, or its format is
        unknown or needs a missing back end (torch, onnx).
    nnc.errors.EncodeError
        If an option is invalid or a tensor cannot be encoded.
    FileExistsError
        If ``output`` is the model file itself (nothing is written).
    OSError
        If ``output`` cannot be written.
    TypeError
        If ``model`` is neither a mapping nor a path.

    Examples
    --------
    >>> import nnc, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "model.nnr")
    >>> stream = nnc.encode_model({"w": np.ones((2, 3), np.float32)}, path, qp=-20)
    >>> os.path.getsize(path) == len(stream)
    True
    >>> nnc.encode_model(path)
    Traceback (most recent call last):
        ...
    nnc.formats.FormatError: .../model.nnr is an NNC stream, not a model; use decode
    """
    from ._files import refuse_overwriting
    from .encoder import Encoder, _warn_after_encode

    if not isinstance(model, (Mapping, str, os.PathLike)):
        raise TypeError(
            f"model must be a mapping of names to arrays or a model file's path, not {type(model).__name__}"
        )
    if output is not None and not isinstance(model, Mapping):
        from .readers import open_model

        refuse_overwriting(output, {"model": model, "model's file": open_model(model).files})
    if client is not None:
        if target_snr_db is not None:
            from .readers import open_model

            opened = model if isinstance(model, Mapping) else open_model(model)
            options = _with_target_qps(opened, target_snr_db, options)
        from . import distributed

        if output is not None:
            distributed.encode_model(model, output, client, **options)
            return Path(output).read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            distributed.encode_model(model, os.path.join(tmp, "stream.nnr"), client, **options)
            return Path(tmp, "stream.nnr").read_bytes()
    extra = extra_metadata
    if extra_metadata is not None and not isinstance(model, Mapping):
        raise TypeError("extra_metadata is for a mapping of arrays: a model file's come from the file")
    if isinstance(model, Mapping):
        from .encoder import _tensor_arrays
        from .torch import numpy_inputs

        model, dtypes = numpy_inputs(model, options.get("dtypes"))  # torch tensors, bf16 kept
        if dtypes:
            options["dtypes"] = dtypes
        tensors = _tensor_arrays(model)
    else:
        from .readers import open_model

        source = open_model(model)
        tensors = source.load_all()
        extra = checkpoint_metadata(source)
        with_file_dtypes(options, source.dtypes)  # e.g. bfloat16, read as float32: restored on decoding
        keep_quantisation_parameters_exact(options, source)
        if not tensors:
            raise formats.FormatError(f"{model}: no tensors found (nothing to encode)")
    if target_snr_db is not None:
        from .allocation import with_allocated_qps

        options, _ = with_allocated_qps(tensors, target_snr_db, options)
    encoder = Encoder(**options)
    result = encoder.encode(tensors, extra_metadata=extra)
    _warn_after_encode(encoder, result, tensors)
    stream = result.stream
    if output is not None:
        formats.write_atomic(output, stream)
    return stream


def _with_target_qps(model, target_snr_db: float, options: dict) -> dict:
    """``options`` with the qps of ``target_snr_db`` for ``model`` (an opened model, read a tensor at a time, or a
    mapping) by :func:`nnc.allocation.with_allocated_qps`."""
    from .allocation import with_allocated_qps

    given = dict(options)
    if isinstance(model, Mapping):
        from .torch import numpy_inputs

        tensors, dtypes = numpy_inputs(model, options.get("dtypes"))
    else:
        keep_quantisation_parameters_exact(given, model)  # (raw: out of the allocation, as the encoder keeps them)
        tensors, dtypes = model, model.dtypes
    completed, _ = with_allocated_qps(tensors, target_snr_db, given, dtypes=dtypes)
    return dict(options, qp_per_tensor=completed["qp_per_tensor"])


def checkpoint_metadata(source) -> dict | None:
    """The topology metadata entries that record where a model came from (spec 6.2.1).

    ``{"checkpoint": layout}`` for a sharded checkpoint, so that decoding can restore its
    files, their metadata and which tensor goes where, and for a single safetensors file
    with a ``__metadata__`` (``{"format": "pt"}``, which transformers looks for); None for
    any other single model file.

    Parameters
    ----------
    source : nnc.readers.ModelSource

    Returns
    -------
    dict or None

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from nnc import formats, readers
    >>> from nnc.models import checkpoint_metadata
    >>> folder = tempfile.mkdtemp()
    >>> formats.write_model(os.path.join(folder, "m.safetensors"), {"w": np.ones(2, np.float32)})
    >>> print(checkpoint_metadata(readers.open_model(os.path.join(folder, "m.safetensors"))))
    None
    """
    return None if source.checkpoint is None else {"checkpoint": source.checkpoint}


def with_metadata(stream: bytes, extra: dict) -> bytes:
    """``stream`` (written by nnc's encoder) with ``extra`` entries added to nnc's metadata in its topology unit
    (spec 6.2.1), every other unit unchanged: for a stream made without them, such as the DC-v2 search's.

    Parameters
    ----------
    stream : bytes
        A stream whose topology unit carries nnc's metadata.
    extra : dict
        Entries to add (e.g. :func:`checkpoint_metadata`'s).

    Returns
    -------
    bytes

    Examples
    --------
    >>> import nnc
    >>> from nnc.models import with_metadata
    >>> stream = with_metadata(nnc.encode({"w": [1.0, 2.0]}), {"checkpoint": {"format": "npz"}})
    >>> nnc.Decoder(stream).metadata["checkpoint"], nnc.decode(stream)["w"].shape
    ({'format': 'npz'}, (2,))
    """
    import json

    from . import container as C
    from .decoder import _topology_metadata
    from .errors import DecodeError

    units = C.parse_stream(stream)
    tpl = [(u, m) for u in units if u.type == C.NNR_TPL for m in [_topology_metadata(u)] if m]  # the last applies
    if not tpl:
        raise DecodeError("the stream has no topology unit with nnc's metadata", clause="6.2.1")
    last, meta = tpl[-1]
    unit = C.build_tpl(data=json.dumps({"nnc": dict(meta, **extra)}, separators=(",", ":"), sort_keys=True))
    return bytes(stream[: last.offset]) + unit + bytes(stream[last.end :])


def load_model(path) -> tuple:
    """(tensors, original dtype names, extra topology metadata) of a model file or checkpoint, in memory.

    For commands that need every tensor at once (the DC-v2 search);
    :func:`encode_model_to` streams instead.

    Parameters
    ----------
    path : str, ``os.PathLike`` or ``nnc.readers.ModelSource``
        A model file, a sharded checkpoint folder or its index .json, or a model already opened.

    Returns
    -------
    tuple
        ``(tensors, dtypes, extra)``: {name: array} in stream order, {name: dtype name},
        and :func:`checkpoint_metadata` (or None).

    Raises
    ------
    nnc.formats.FormatError
        If the model cannot be read.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from nnc import formats
    >>> from nnc.models import load_model
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> formats.write_model(path, {"w": np.ones((2, 3), np.float32)})
    >>> tensors, dtypes, extra = load_model(path)
    >>> tensors["w"].shape, dtypes, extra
    ((2, 3), {'w': 'float32'}, None)
    """
    from .readers import ModelSource, open_model

    source = path if isinstance(path, ModelSource) else open_model(path)
    tensors = source.load_all()
    return tensors, source.dtypes, checkpoint_metadata(source)


def encode_model_to(
    model, output, *, progress=None, budget: int = 1 << 30, measure: bool = False, target_snr_db=None, **options
):
    """Encode a model file, a sharded checkpoint or a mapping of arrays into the stream file ``output``.

    Tensors are read one at a time (:func:`nnc.readers.open_model`) and each NDU is
    written as soon as its turn comes (:meth:`nnc.encoder.Encoder.encode_to`), so the
    memory used is bounded by the tensors in flight, not by the model.  The stream is the
    one :func:`encode_model` returns.  Codebooks and DC-v1 ``sigmas`` choose per tensor
    from the values; with them the model is encoded in memory.

    Parameters
    ----------
    model : str, ``os.PathLike``, ``Mapping`` or ``nnc.readers.ModelSource``
        As for :func:`encode_model`, or a model already opened.
    output : str or ``os.PathLike``
        The stream file, written atomically.
    progress : callable, optional
        Called with (name, number of elements) after each tensor is written.
    budget : int
        Bytes of tensors (float32 size) in flight at most.
    measure : bool
        Also measure the weight SNR (``summary.snr_db``; an extra pass over each tensor).
    target_snr_db : float, optional
        Choose each float tensor's qp for this SNR first, as :func:`encode_model` does: the
        allocation reads the model a tensor at a time too (each tensor three times more).
    **options
        :class:`nnc.encoder.Encoder` options.

    Returns
    -------
    nnc.encoding.stream.StreamSummary
        Sizes (also of the model in its original dtypes), qps and the weight SNR.

    Raises
    ------
    nnc.formats.FormatError
        If the model cannot be read.
    nnc.errors.EncodeError
        If an option is invalid, ``output`` is not a path, or a tensor cannot be encoded.
    OSError
        If ``output`` cannot be written (it is then left as it was).

    Examples
    --------
    >>> import nnc, numpy as np, tempfile, os
    >>> from nnc import formats
    >>> d = tempfile.mkdtemp()
    >>> formats.write_model(os.path.join(d, "m.safetensors"), {"w": np.ones((8, 8), np.float32)}, {"w": "bfloat16"})
    >>> summary = nnc.models.encode_model_to(os.path.join(d, "m.safetensors"), os.path.join(d, "m.nnr"), qp=-20)
    >>> summary.original_bytes, summary.stream_bytes == os.path.getsize(os.path.join(d, "m.nnr"))
    (128, True)
    """
    from ._files import refuse_overwriting
    from .encoder import Encoder
    from .encoding.stream import StreamSummary
    from .errors import EncodeError
    from .readers import open_model, source_from_mapping

    if not isinstance(output, (str, os.PathLike)):
        raise EncodeError(f"output must be a path (str or os.PathLike), not {type(output).__name__}")
    if isinstance(model, Mapping):
        source = source_from_mapping(model)
    elif hasattr(model, "tensors") and hasattr(model, "checkpoint"):
        source = model  # already opened
    else:
        source = open_model(model)
    refuse_overwriting(output, {"model's file": source.files})
    if not isinstance(model, Mapping):
        if not len(source):  # (as encode_model: a file of no tensors is not a model to write an empty stream of)
            raise formats.FormatError(f"{source.path}: no tensors found (nothing to encode)")
        keep_quantisation_parameters_exact(options, source)
    if target_snr_db is not None:  # (a mapping's quantisation parameters are not kept exact: allocated as well)
        options = _with_target_qps(model if isinstance(model, Mapping) else source, target_snr_db, options)
    encoder = Encoder(**options)
    extra = checkpoint_metadata(source)
    s = encoder.settings
    if not s.codebook_from_values and not s.sigmas:
        summary = encoder.encode_to(
            source, output, progress=progress, extra_metadata=extra, budget=budget, measure=measure
        )
        summary.left_out = list(source.left_out)
        return summary
    import time

    t0 = time.perf_counter()
    tensors = source.load_all()
    with_file_dtypes(options, source.dtypes)
    encoder = Encoder(**options)
    result = encoder.encode(tensors, progress=progress, extra_metadata=extra)
    formats.write_atomic(output, result.stream)
    summary = StreamSummary.of_result(output, result, source)
    if not measure:
        summary.energy = summary.error = float("nan")
    elif encoder.state is None:
        for name, x in tensors.items():
            if x.dtype.kind == "f":  # against the values the decoded model's file holds
                stored_as = encoder.settings.dtypes.get(name)
                sums = error_sums(x, result.tensors[name].reconstruction, stored_as=stored_as)
                summary.add_error(name, sums[0], sums[1], size=x.size)
    summary.seconds = time.perf_counter() - t0
    return summary


#: What to do with a stream of differences instead of taking it as the model.
_ADD_DIFFERENCES = (
    "add them to the model with nnc.apply_update (nnc.decode gives them) or nnc.writers.decode_to_path(add_to=...)"
)


def decode_model(
    stream, output=None, *, template=None, threads: int = 1, client=None, **decoder_options
) -> "OrderedDict[str, np.ndarray]":
    """Decode a stream to the model's tensors, with their original shapes and dtypes where known.

    With ``output`` (a .npz, .safetensors, .pt or .onnx path) the model file is written too;
    ONNX output needs the original model as ``template``.  bfloat16 tensors are returned as
    float32 numpy arrays and written back as bfloat16.

    Parameters
    ----------
    stream : bytes, str, ``os.PathLike`` or ``BinaryIO``
        The NNC stream, a path to it, or a binary file (as for :func:`nnc.decoder.decode`).
    output : str, ``os.PathLike`` or None
        If given, the model file to write (atomically); its format follows its
        extension (:func:`nnc.formats.format_from_extension`).
    template : str, ``os.PathLike`` or None
        For ONNX output, the original ONNX model whose initializers are replaced
        (for any other output a FormatError, before decoding).
    threads : int
        Units decoded at the same time; 0 for one per CPU (see
        :meth:`nnc.decoder.Decoder.decode`).
    client : ``dask.distributed.Client`` or None
        Decode on a Dask cluster, one task per unit, the workers reading the
        stream file (``stream`` must be a path they can read); the same tensors
        (see :mod:`nnc.distributed`).  They are gathered on the client, one unit
        at a time; :func:`nnc.distributed.decode_to_path` writes files instead.
        Not with ``template`` (FormatError).
    **decoder_options
        ``limits``, ``engine``, ``state``, ``entry_points``: as for
        :class:`nnc.decoder.Decoder`.

    Returns
    -------
    ``collections.OrderedDict``
        {name: ``numpy.ndarray``} in stream order, with the original shapes and
        dtypes where the stream records them.

    Raises
    ------
    nnc.errors.DecodeError
        If the stream is invalid (or one of its subclasses).
    nnc.errors.UpdateError
        With ``output``, if the stream holds differences to a model (an update
        encoded with ``differences=True``), not its values: nothing is written;
        add them to the model with :func:`nnc.decoder.apply_update` or
        :func:`nnc.writers.decode_to_path` (``add_to=``).  Without ``output``
        the differences are returned.
    nnc.formats.FormatError
        If ``output`` is a folder (:func:`nnc.writers.decode_to_path` writes
        folders) or has an unknown extension (both before decoding), is ONNX
        without a ``template``, needs a missing back end, or ``client`` and
        ``template`` are both given.
    FileExistsError
        If ``output`` is the stream file or the template itself (nothing is written).
    OSError
        If ``output`` cannot be written.

    Examples
    --------
    >>> import nnc, numpy as np, tempfile, os
    >>> from nnc import formats
    >>> stream = nnc.encode({"w": np.ones((2, 3), np.float32), "n": np.int64(3)}, qp=-20)
    >>> path = os.path.join(tempfile.mkdtemp(), "decoded.safetensors")
    >>> tensors = nnc.decode_model(stream, path)
    >>> written, dtypes = formats.read_model(path)
    >>> list(written), dtypes, written["n"].shape
    (['w', 'n'], {'w': 'float32', 'n': 'int64'}, ())
    """
    fmt = ""
    if output is not None:
        from ._files import refuse_overwriting
        from .writers import is_directory_target

        if is_directory_target(output):
            raise formats.FormatError(
                f"{os.fspath(output)}: decode_model writes one model file; nnc.writers.decode_to_path writes a "
                "folder (a checkpoint's shards and index)"
            )
        fmt = formats.format_from_extension(output)  # (a bad extension fails before the decoding)
        if template is not None and fmt != "onnx":
            raise formats.FormatError(
                f"template {os.fspath(template)}: a template is for ONNX output only, not {os.fspath(output)}"
            )
        refuse_overwriting(
            output, {"stream": stream if isinstance(stream, (str, os.PathLike)) else None, "template": template}
        )
    elif template is not None:
        raise formats.FormatError("template is for writing an ONNX output; give output= too")
    if client is not None:
        from . import distributed

        if template is not None:  # the ONNX model is written whole, on this machine
            raise formats.FormatError("client cannot be combined with template: decode to .onnx without a Dask client")
        return distributed.decode_model(stream, output, client, threads=threads, **decoder_options)
    dec = Decoder(stream, **decoder_options)
    if output is not None:  # (returned, they are what the caller's state asked for: nnc.apply_update adds them)
        refuse_differences(dec, _ADD_DIFFERENCES)
    tensors, dtypes = restore_model_view(dec.decode(threads=threads), dec.metadata)
    if output is not None:
        from .writers import single_file_metadata

        metadata = single_file_metadata(dec.metadata, fmt)
        formats.write_model(os.fspath(output), tensors, dtypes, fmt=fmt, template=template, metadata=metadata)
    return tensors


def compare_tensors(reference, other, reference_dtypes=None, other_dtypes=None) -> dict:
    """Per-tensor and total error of ``other`` against ``reference`` (mappings of name to array).

    Float tensors get their squared-error energy, the largest absolute error and the SNR
    10 log10(sum w² / sum (w - w')²); other tensors whether they are equal.  inf and NaN
    equal in both are no error; against another value they make the error infinite (SNR
    -inf) and are counted.  Names in only one of the two and tensors of another shape are
    listed, not compared; tensors of another dtype are compared and listed.

    Parameters
    ----------
    reference, other : mapping of str to array-like
    reference_dtypes, other_dtypes : mapping of str to str, optional
        The dtype names of the models' files where the arrays do not tell them (``"bfloat16"``,
        ``"float8_e4m3fn"``: held as float32 in memory), as :func:`load_model` and
        :func:`nnc.decoder.restore_model_view` give them.

    Returns
    -------
    dict
        ``tensors`` (one dict per compared name, in the reference's order; a float one's
        ``nonfinite_mismatches`` counts its inf or NaN against another value), ``total``
        (weights: the float weights compared; energy, error, snr_db over the float tensors
        that differ, inf when none does; ``exact_mismatches``,
        the non-float tensors that differ; ``dtype_mismatches``, the tensors of another
        dtype; ``nonfinite_mismatches``, the float tensors with such a count), ``missing``
        (names only in the reference), ``extra`` (names only in ``other``) and
        ``shape_mismatches``.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.models import compare_tensors
    >>> r = compare_tensors({"w": np.array([3.0, 4.0]), "n": np.array([1])},
    ...                     {"w": np.array([3.0, 4.5]), "n": np.array([1])})
    >>> round(r["tensors"][0]["snr_db"], 2), r["tensors"][0]["max_abs_error"], r["tensors"][1]["equal"]
    (20.0, 0.5, True)
    """
    rows, missing, mismatched = [], [], []
    energy = error = 0.0
    weights, exact_mismatches = 0, []
    dtype_mismatches: list[str] = []
    nonfinite_mismatches: list[str] = []
    for name, ref in reference.items():
        if name not in other:
            missing.append(name)
            continue
        a, b = np.asarray(ref), np.asarray(other[name])
        if {a.shape, b.shape} == {(), (1,)}:
            a, b = a.reshape(-1), b.reshape(-1)  # 0-d against one element (a stream's coded shape)
        if a.shape != b.shape:
            mismatched.append(dict(name=name, shape=list(a.shape), other_shape=list(b.shape)))
            continue
        a_dtype = str((reference_dtypes or {}).get(name) or a.dtype.name)
        b_dtype = str((other_dtypes or {}).get(name) or b.dtype.name)
        row = dict(name=name, shape=list(a.shape), dtype=a_dtype, other_dtype=b_dtype)
        if a_dtype != b_dtype:
            dtype_mismatches.append(name)
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            e, d, peak, nonfinite = error_sums(a, b)
            if nonfinite:  # inf or NaN against another value: an infinite error
                peak = math.inf
                nonfinite_mismatches.append(name)
            row.update(energy=e, error=d, snr_db=snr_db(e, d), max_abs_error=peak, nonfinite_mismatches=nonfinite)
            weights += a.size
            if d > 0:  # (a tensor reproduced exactly would raise the total with no error to weigh against)
                energy, error = energy + e, error + d
        else:
            row["equal"] = bool(np.array_equal(a, b))
            if not row["equal"]:
                exact_mismatches.append(name)
        rows.append(row)
    return dict(
        tensors=rows,
        missing=missing,
        extra=[k for k in other if k not in reference],
        shape_mismatches=mismatched,
        total=dict(
            weights=weights,
            energy=energy,
            error=error,
            snr_db=snr_db(energy, error),
            exact_mismatches=exact_mismatches,
            dtype_mismatches=dtype_mismatches,
            nonfinite_mismatches=nonfinite_mismatches,
        ),
    )
