"""PyTorch helpers: save a module's weights as an NNC stream, load them back (needs ``torch``).

``torch`` is an optional extra (``torch``: ``pip install torch``); importing this
module does not import it, calling a helper does.  bfloat16 and float16
tensors come back in their own dtype, integer buffers exactly, 0-d tensors
with their empty shape.

Examples
--------
>>> import torch, nnc.torch, tempfile, os
>>> model = torch.nn.Linear(4, 3).to(torch.bfloat16)
>>> path = os.path.join(tempfile.mkdtemp(), "linear.nnr")
>>> _ = nnc.torch.save(model, path, qp=-40)
>>> sd = nnc.torch.state_dict(path)
>>> sd["weight"].dtype, tuple(sd["weight"].shape)
(torch.bfloat16, (3, 4))
>>> result = nnc.torch.load_state_dict(torch.nn.Linear(4, 3).to(torch.bfloat16), path)
>>> result.missing_keys, result.unexpected_keys
([], [])
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Mapping

import numpy as np

from . import narrow_floats
from .decoder import exact_integers
from .errors import EncodeError
from .formats import torch_narrow_float

__all__ = ["save", "state_dict", "load_state_dict", "numpy_inputs", "input_moments", "input_covariances", "LoadResult"]


class LoadResult(namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])):
    """What :func:`load_state_dict` returns, like ``torch.nn.Module.load_state_dict``.

    ``missing_keys``: names of the module the stream does not carry;
    ``unexpected_keys``: names of the stream the module does not have.

    Examples
    --------
    >>> from nnc.torch import LoadResult
    >>> LoadResult(["fc.bias"], [])
    LoadResult(missing_keys=['fc.bias'], unexpected_keys=[])
    """

    __slots__ = ()


def _torch():
    try:
        import torch
    except ImportError:
        from .formats import FormatError

        raise FormatError("the PyTorch helpers need torch: pip install torch") from None
    return torch


def _is_torch_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach") and hasattr(value, "dtype")


def _to_numpy(value, name: str = "") -> tuple[np.ndarray, str | None]:
    """A torch tensor as a numpy array, and its dtype name when numpy has none (bfloat16, float8)."""
    what = f"tensor {name!r}" if name else "a tensor"
    if value.device.type == "meta":
        raise EncodeError(f"{what} is on the meta device: it has no values to encode (materialise the module first)")
    if getattr(value, "is_nested", False):
        raise EncodeError(f"{what} is a nested tensor: encode its components one by one (.unbind())")
    if value.layout != _torch().strided:
        raise EncodeError(f"{what} has layout {value.layout}: encode its dense form (.to_dense())")
    t = value.detach().cpu().resolve_conj().resolve_neg()  # lazy negated or conjugated views: their values
    name = str(t.dtype).replace("torch.", "")
    if narrow_floats.is_narrow(name):
        return t.float().numpy(), name
    try:
        return t.numpy(), None
    except TypeError:  # other dtypes without a numpy twin
        raise EncodeError(f"tensor dtype {name} is not supported (no numpy equivalent)") from None


def _storage_view(value) -> tuple:
    """What makes two torch tensors one array: device, storage, offset, shape, strides and dtype; a key of its own
    for a tensor without plain storage (meta, sparse, nested, empty)."""
    try:
        if value.numel() and value.layout == _torch().strided and value.device.type != "meta":
            storage = value.untyped_storage().data_ptr()
            return (str(value.device), storage, value.storage_offset(), tuple(value.shape), value.stride(), value.dtype)
    except (RuntimeError, NotImplementedError):  # (tensor subclasses without a storage)
        pass
    return ("own", id(value))


def numpy_inputs(tensors, dtypes: Mapping[str, str] | None = None):
    """``tensors`` with torch tensors turned into numpy arrays, and the dtypes to record for them.

    The hook :func:`nnc.encode` and :func:`nnc.models.encode_model` call on
    their input: a mapping without torch tensors is returned as it is.

    Parameters
    ----------
    tensors : ``Mapping``
        {name: array-like or ``torch.Tensor``}.
    dtypes : ``Mapping`` or None
        The caller's ``dtypes`` option; its entries win.

    Returns
    -------
    tuple
        ``(tensors, dtypes)``: the mapping (numpy arrays for torch tensors,
        on the CPU) and the ``dtypes`` option, with ``"bfloat16"``,
        ``"float8_e4m3fn"`` or ``"float8_e5m2"`` for every tensor of those
        dtypes (None if there is nothing to record).

    Examples
    --------
    >>> import torch
    >>> from nnc.torch import numpy_inputs
    >>> arrays, dtypes = numpy_inputs({"w": torch.ones(2, dtype=torch.bfloat16), "b": [0.5]})
    >>> arrays["w"].dtype.name, dtypes
    ('float32', {'w': 'bfloat16'})
    """
    if not isinstance(tensors, Mapping) or not any(_is_torch_tensor(v) for v in tensors.values()):
        return tensors, dtypes
    arrays, recorded = OrderedDict(), {}
    converted: dict = {}  # {view of a storage: its array}: tied weights stay one array (spec 6.2.1)
    for name, value in tensors.items():
        if _is_torch_tensor(value):
            view = _storage_view(value)
            if view not in converted:
                converted[view] = _to_numpy(value, name)
            value, dtype = converted[view]
            if dtype is not None:
                recorded[name] = dtype
        arrays[name] = value
    recorded.update(dtypes or {})
    return arrays, (recorded or dtypes)


def _state_dict_of(module_or_state_dict) -> Mapping:
    if hasattr(module_or_state_dict, "state_dict") and callable(module_or_state_dict.state_dict):
        return module_or_state_dict.state_dict()
    if isinstance(module_or_state_dict, Mapping):
        return module_or_state_dict
    raise TypeError(f"expected a torch.nn.Module or a state_dict, not {type(module_or_state_dict).__name__}")


def save(module_or_state_dict, path=None, **options) -> bytes:
    """Encode a module's state_dict (or a state_dict) into an NNC stream, written atomically to ``path``.

    Parameters
    ----------
    module_or_state_dict : ``torch.nn.Module`` or ``Mapping``
        The module, or {name: ``torch.Tensor``} (numpy arrays are accepted too).
    path : str, ``os.PathLike`` or None
        The stream file to write; None to only return the stream.
    **options
        Keyword options of :class:`nnc.encoder.Encoder` (``qp``, ``dq``, ``threads``, ...).

    Returns
    -------
    bytes
        The NNC stream.

    Raises
    ------
    nnc.errors.EncodeError
        If an entry of the state_dict is not a tensor, or cannot be encoded.
    nnc.formats.FormatError
        If torch is not installed.
    OSError
        If ``path`` cannot be written.

    Examples
    --------
    >>> import torch, nnc, nnc.torch
    >>> stream = nnc.torch.save({"w": torch.ones(2, 3, dtype=torch.bfloat16)}, qp=-20)
    >>> nnc.decode_model(stream)["w"].shape, nnc.torch.state_dict(stream)["w"].dtype
    ((2, 3), torch.bfloat16)
    """
    from .formats import state_dict_metadata
    from .models import encode_model
    from .readers import single_file_layout

    sd = _state_dict_of(module_or_state_dict)
    for name, value in sd.items():
        if not (_is_torch_tensor(value) or isinstance(value, (np.ndarray, np.generic))):
            raise EncodeError(f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor")
    tensors, dtypes = numpy_inputs(sd, options.pop("dtypes", None))
    if dtypes:
        options["dtypes"] = dtypes
    versions = state_dict_metadata(getattr(sd, "_metadata", None))
    extra = None if versions is None else {"checkpoint": single_file_layout("pt", sd, versions)}  # (spec 6.2.1)
    return encode_model(OrderedDict(tensors), path, extra_metadata=extra, **options)


def _as_torch(array: np.ndarray, dtype: str, device):
    torch = _torch()
    t = torch.from_numpy(np.ascontiguousarray(array) if array.ndim else array.copy())
    if narrow_floats.is_narrow(dtype):
        t = torch_narrow_float(torch, dtype, array)
    return t.to(device) if device is not None else t


def _decoded_views(dec, names=None, out=None):
    """(name, array in the original shape and dtype, original dtype name), one tensor at a time."""
    from .decoder import restore_model_view

    for name, array in dec.iter_tensors(names, out=out):
        view, dtypes = restore_model_view(OrderedDict([(name, array)]), dec.metadata)
        yield name, view[name], dtypes[name]


def _check_device(torch, device) -> None:
    """Refuse a ``device`` torch cannot put tensors on (a misspelt name, CUDA on a CPU build), before decoding."""
    from .errors import OutputBufferError

    if device is None:
        return
    try:
        probe = torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OutputBufferError(f"device {device!r} cannot hold the tensors: {first}") from None
    if probe.is_meta:  # (tensors there have shapes, no values: every decoded value would be dropped)
        raise OutputBufferError(f"device {device!r} holds no values: give a device that does ('cpu', 'cuda', ...)")


def _refuse_differences(dec) -> None:
    """A stream of differences (an update, spec 6.2.1) is not a state_dict."""
    from .decoder import refuse_differences

    refuse_differences(dec, "decode it with nnc.decode and add it with nnc.apply_update")


def state_dict(stream, device="cpu", **decoder_options) -> "OrderedDict[str, object]":
    """Decode a stream into a state_dict of torch tensors, in their original dtypes and shapes.

    Parameters
    ----------
    stream : bytes, buffer, str, ``os.PathLike`` or ``BinaryIO``
        The NNC stream (as for :class:`nnc.decoder.Decoder`).
    device : str, ``torch.device`` or None
        Where the tensors go (``"cpu"``, ``"cuda:0"``, ...); None leaves them on the CPU.
    **decoder_options
        ``limits``, ``engine``, ``state``, ``entry_points`` of :class:`nnc.decoder.Decoder`.

    Returns
    -------
    ``collections.OrderedDict``
        {name: ``torch.Tensor``} in the model's order (spec 6.2.1).

    Raises
    ------
    nnc.errors.DecodeError
        If the stream is invalid.
    nnc.errors.UpdateError
        If the stream holds differences to a model (an update), not its weights.
    nnc.errors.OutputBufferError
        If torch cannot put tensors on ``device``, or it holds no values (``"meta"``; checked before decoding).
    nnc.formats.FormatError
        If torch is not installed.

    Examples
    --------
    >>> import torch, nnc, nnc.torch
    >>> stream = nnc.encode({"w": torch.ones(2, 2, dtype=torch.float16), "n": torch.tensor(3)})
    >>> sd = nnc.torch.state_dict(stream)
    >>> sd["w"].dtype, sd["n"].dtype, sd["n"].shape
    (torch.float16, torch.int64, torch.Size([]))
    """
    from .decoder import Decoder, model_order
    from .formats import state_dict_metadata
    from .writers import single_file_metadata

    _check_device(_torch(), device)
    dec = Decoder(stream, **decoder_options)
    _refuse_differences(dec)
    decoded = {name: _as_torch(array, dtype, device) for name, array, dtype in _decoded_views(dec)}
    result = OrderedDict((name, decoded[name]) for name in model_order(decoded, dec.metadata))
    versions = state_dict_metadata(single_file_metadata(dec.metadata, "pt"))
    if versions is not None:  # the module versions of the state_dict encoded (spec 6.2.1)
        result._metadata = OrderedDict(versions.items())  # type: ignore[attr-defined]
    return result


def load_state_dict(module, stream, strict: bool = True, validate: bool = False, **decoder_options) -> LoadResult:
    """Decode a stream into a module's parameters and buffers, in place, one tensor at a time.

    Names and shapes are checked against the module before anything is
    decoded.  A CPU tensor whose dtype numpy has (float32, float16, int64...)
    is decoded straight into its memory (``out=``); others (bfloat16, GPU
    tensors) receive a copy of the decoded tensor.

    Parameters
    ----------
    module : ``torch.nn.Module``
        The module to fill.
    stream : bytes, buffer, str, ``os.PathLike`` or ``BinaryIO``
        The NNC stream.
    strict : bool
        Refuse a stream whose names differ from the module's state_dict keys
        (as ``torch.nn.Module.load_state_dict`` does); otherwise load the
        names both have.
    validate : bool
        Decode every unit once before loading anything, so that an invalid
        stream, or a value a module tensor's dtype cannot hold, leaves the
        module unchanged (the decoding takes twice as long). Without it, a
        stream found invalid midway leaves the tensors before the fault
        loaded and the faulty one's contents unspecified; a value out of a
        tensor's range leaves the tensors before it loaded.
    **decoder_options
        ``limits``, ``engine``, ``state``, ``entry_points`` of :class:`nnc.decoder.Decoder`.

    Returns
    -------
    LoadResult
        ``(missing_keys, unexpected_keys)``: names only in the module, only in the stream.

    Raises
    ------
    nnc.errors.OutputBufferError
        If ``strict`` and the names differ, a tensor's shape differs from
        the module's, or a module tensor is on the meta device (it has no
        storage) or an expanded view (its elements share memory): the module
        is then unchanged; or if a module tensor's dtype
        cannot hold its decoded values (float16 beyond its range, an integer
        tensor given fractions): unchanged with ``validate``, partly loaded
        without.
    nnc.errors.DecodeError
        If the stream is invalid; the module is then unchanged with ``validate``,
        partly loaded without.
    nnc.errors.UpdateError
        If the stream holds differences to a model (an update), not its weights; the
        module is then unchanged.
    TypeError
        If ``module`` is not a ``torch.nn.Module``, or ``strict`` or ``validate`` is
        not True or False.

    Examples
    --------
    >>> import torch, nnc.torch
    >>> stream = nnc.torch.save(torch.nn.Linear(2, 2), qp=-30)
    >>> nnc.torch.load_state_dict(torch.nn.Linear(2, 3), stream)
    Traceback (most recent call last):
        ...
    nnc.errors.OutputBufferError: tensor 'weight' has shape (2, 2) in the stream, (3, 2) in the module
    """
    from ._options import check_bool
    from .decoder import Decoder, model_order, recorded_shape
    from .errors import EncodeError, OutputBufferError

    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, not {type(module).__name__}")
    for option, value in (("strict", strict), ("validate", validate)):
        try:
            check_bool(option, value)  # ("no" would be True)
        except EncodeError as exc:
            raise TypeError(exc.message) from None
    dec = Decoder(stream, **decoder_options)
    _refuse_differences(dec)
    target = module.state_dict()
    names = model_order(dec.names(), dec.metadata)
    missing = [k for k in target if k not in names]
    unexpected = [k for k in names if k not in target]
    if strict and (missing or unexpected):
        raise OutputBufferError(
            f"the stream does not fit the module: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    common = [k for k in names if k in target]
    on_meta = [k for k in common if target[k].device.type == "meta"]
    if on_meta:  # copy_ into a meta tensor does nothing
        raise OutputBufferError(
            f"the module's tensor {on_meta[0]!r} is on the meta device (no storage to load into): materialise "
            "the module first, e.g. module.to_empty(device='cpu')"
        )
    shared = [k for k in common if any(st == 0 and n > 1 for st, n in zip(target[k].stride(), target[k].shape))]
    if shared:  # (an expand()ed buffer: copy_ into it is torch's RuntimeError)
        raise OutputBufferError(
            f"the module's tensor {shared[0]!r} has elements that share memory (an expanded view): it cannot take "
            "decoded values; make it a tensor of its own, e.g. with .clone()"
        )
    for name in common:
        info = dec.info(name)
        recorded = recorded_shape(dec.metadata, name, info.size)
        shape = info.shape if recorded is None else recorded  # (a 0-d tensor's recorded shape is ())
        if tuple(target[name].shape) != tuple(shape):
            raise OutputBufferError(
                f"tensor {name!r} has shape {tuple(shape)} in the stream, {tuple(target[name].shape)} in the module"
            )

    if validate:  # one tensor in memory at a time; the values must also fit the module's dtypes
        for name, array, dtype in _decoded_views(dec, common):
            _check_fits(torch, name, array, dtype, target[name].dtype)
    in_place = set()

    def direct(info):
        t = target[info.name]
        if (
            t.device.type != "cpu"
            or t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
            or not t.is_contiguous()
        ):
            return None
        try:
            array = t.numpy()
        except (TypeError, RuntimeError):
            return None
        try:
            dec._check_out(info.name, array)
        except OutputBufferError:
            return None
        in_place.add(info.name)
        return array

    with torch.no_grad():
        for name, array, dtype in _decoded_views(dec, common, out=direct):
            if name not in in_place:
                _check_fits(torch, name, array, dtype, target[name].dtype)
                target[name].copy_(_as_torch(array, dtype, None).reshape(target[name].shape))
    return LoadResult(missing, unexpected)


def _check_fits(torch, name: str, array: np.ndarray, original, dtype) -> None:
    """Refuse values a module tensor's ``dtype`` cannot hold (torch's copy_ would wrap, truncate or overflow them):
    an integer or bool tensor takes integers in its range (spec 6.2.1), not a float tensor's values; a float
    tensor finite values within its range. ``original``: the dtype the stream records for the tensor."""
    from .errors import DecodeError, OutputBufferError

    values = np.asarray(array)
    if not dtype.is_floating_point and not dtype.is_complex:
        kind = "f" if narrow_floats.is_narrow(str(original)) else np.dtype(str(original)).kind
        if kind == "f":
            raise OutputBufferError(f"tensor {name!r} holds {original} values; the module's is {dtype}")
        try:
            exact_integers(name, values, torch.empty(0, dtype=dtype).numpy().dtype)
        except DecodeError:
            low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
            raise OutputBufferError(
                f"tensor {name!r} holds values from {low} to {high}, which the module's {dtype} cannot hold"
            ) from None
        return
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    peak = float(np.max(np.abs(finite))) if finite.size else 0.0
    if peak > float(torch.finfo(dtype).max):
        raise OutputBufferError(f"tensor {name!r} holds values up to {peak:.6g}, beyond the module's {dtype}")


def input_moments(module, batches) -> dict[str, np.ndarray]:
    """The mean square of each input feature of the module's linear and convolution layers.

    Runs ``module(batch)`` (``torch.no_grad``) for each of ``batches`` (tensors, or tuples
    of positional arguments) and measures E[x²] of every ``torch.nn.Linear`` input feature
    (over all leading dimensions) and every ``Conv1d/2d/3d`` input channel (over the batch
    and the positions; convolutions with groups are left out). With
    :func:`nnc.allocation.input_importance` it gives an importance for the encoder's
    rate-distortion choice (spec A.12).

    Parameters
    ----------
    module : ``torch.nn.Module``
        The model, in the mode to be measured (``module.eval()`` usually).
    batches : iterable
        Inputs of the application: a few batches suffice.

    Returns
    -------
    dict of str to numpy.ndarray
        {"<layer>.weight": E[x²] per input feature}, float64.

    Raises
    ------
    nnc.errors.EncodeError
        If ``batches`` yields nothing.

    Examples
    --------
    >>> import torch, nnc.torch, nnc.allocation
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> m = nnc.torch.input_moments(model, [torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]])])
    >>> m["0.weight"].tolist()
    [1.0, 2.0, 0.0]
    >>> weights = {k: v.numpy() for k, v in model.state_dict().items()}
    >>> F = nnc.allocation.input_importance(weights, m)
    >>> F["0.weight"].tolist()
    [[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]]
    """
    torch = _torch()

    def channels(layer, x, _name):
        if isinstance(layer, torch.nn.Linear):
            return x.reshape(-1, x.shape[-1])
        if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) and layer.groups == 1:
            return x.movedim(1, -1).reshape(-1, x.shape[1])
        return None

    return _input_statistics(module, batches, channels, lambda x: (x * x).sum(0), "input_moments")


def input_covariances(module, batches, layers=None) -> dict[str, np.ndarray]:
    """E[x·xᵀ] of the input of the module's linear and 1-D/2-D convolution layers.

    Runs ``module(batch)`` (``torch.no_grad``) for each of ``batches`` and measures the
    second moments of every ``torch.nn.Linear`` input (over all leading dimensions) and of
    every ``Conv1d``/``Conv2d`` input patch (over the batch and the positions, in the
    weight's (channel, kh, kw) order; zero padding, no groups). Given to the encoder as
    ``covariances``, they make it quantise those weights with error feedback (spec A.16).
    A layer with n inputs (C·kh·kw for a convolution) needs an n × n float64 matrix:
    ``layers`` limits the measurement to some of them.

    Parameters
    ----------
    module : ``torch.nn.Module``
        The model, in the mode to be measured (``module.eval()`` usually).
    batches : iterable
        Inputs of the application (tensors, or tuples of positional arguments): a few
        batches with many more positions than each layer has inputs.
    layers : iterable of str, optional
        Weight names (``"<layer>.weight"``) to measure; default all.

    Returns
    -------
    dict of str to numpy.ndarray
        {"<layer>.weight": (n, n) matrix}, float64.

    Raises
    ------
    nnc.errors.EncodeError
        If ``batches`` yields nothing or is not an iterable of torch inputs, or ``layers``
        names a weight that is not one of a measured layer.

    Examples
    --------
    >>> import torch, nnc.torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 1))
    >>> h = nnc.torch.input_covariances(model, [torch.tensor([[1.0, 2.0], [3.0, 0.0]])])
    >>> h["0.weight"].tolist()
    [[5.0, 1.0], [1.0, 2.0]]
    """
    torch = _torch()
    wanted = _wanted_layers(module, layers)

    def patches(layer, x):
        if isinstance(layer, torch.nn.Linear):
            return x.reshape(-1, x.shape[-1])
        if not isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d)) or layer.groups != 1:
            return None
        if layer.padding_mode != "zeros":
            return None
        if isinstance(layer, torch.nn.Conv1d):
            x = x.unsqueeze(-2)
        dims = len(layer.kernel_size)
        kernel = (1,) * (2 - dims) + tuple(layer.kernel_size)
        dilation = (1,) * (2 - dims) + tuple(layer.dilation)
        stride = (1,) * (2 - dims) + tuple(layer.stride)
        if isinstance(layer.padding, str):  # "valid" or "same" (stride 1): the extra row or column at the end
            total = [0] * (2 - dims) + [
                0 if layer.padding == "valid" else d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)
            ]
            pad = []
            for t in reversed(total):
                pad += [t // 2, t - t // 2]
        else:
            padding = (0,) * (2 - dims) + tuple(layer.padding)
            pad = [p for q in reversed(padding) for p in (q, q)]
        x = torch.nn.functional.pad(x, pad)
        cols = torch.nn.functional.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def select(layer, x, name):
        return None if wanted is not None and name not in wanted else patches(layer, x)

    return _input_statistics(module, batches, select, lambda x: x.T @ x, "input_covariances")


def _wanted_layers(module, layers) -> "set[str] | None":
    """``input_covariances``' ``layers`` as a set of weight names (one name may be given as a str), or EncodeError
    for a name that is not the weight of a layer it measures (the result would lack it, and the encoder would
    quantise that weight without error feedback, silently)."""
    if layers is None:
        return None
    torch = _torch()
    wanted = {layers} if isinstance(layers, str) else set(layers)
    measured = set()
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) or (
            isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d))
            and layer.groups == 1
            and layer.padding_mode == "zeros"
        ):
            measured.add(f"{name}.weight" if name else "weight")
    unknown = sorted(map(str, wanted - measured))
    if unknown:
        raise EncodeError(
            f"layers: {', '.join(repr(n) for n in unknown[:5])}{' ...' if len(unknown) > 5 else ''} not the weight "
            "of a Linear or Conv1d/Conv2d layer (no groups, zero padding) of the module: give names as "
            "'<layer>.weight'"
        )
    return wanted


def _input_statistics(module, batches, rows_of, statistic, what: str) -> dict:
    """Mean of ``statistic(rows)`` over the rows of each layer input that ``rows_of(layer, x, name)`` turns into a
    matrix (None: layer left out), over the forward passes of ``batches`` (forward pre-hooks, removed after)."""
    torch = _torch()
    if isinstance(batches, (str, bytes)) or not hasattr(batches, "__iter__"):
        raise EncodeError(f"{what}: batches must be an iterable of inputs, not {type(batches).__name__}")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def hook(name, layer):
        def record(_module, args):
            if not args or not isinstance(args[0], torch.Tensor):
                got = type(args[0]).__name__ if args else "no"
                raise EncodeError(
                    f"{what}: layer {name!r} got {got} input, not a torch tensor: give batches as torch "
                    "tensors, or tuples of the module's positional arguments"
                )
            x = args[0].detach().to(torch.float64)
            rows = rows_of(layer, x, name)
            if rows is None:
                return
            sums[name] = sums.get(name, 0.0) + statistic(rows).cpu().numpy()
            counts[name] = counts.get(name, 0) + rows.shape[0]

        return record

    handles = []
    for name, layer in module.named_modules():
        weight = f"{name}.weight" if name else "weight"
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            handles.append(layer.register_forward_pre_hook(hook(weight, layer)))
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                module(*batch) if isinstance(batch, tuple) else module(batch)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise EncodeError(f"{what} needs at least one batch")
    return {k: sums[k] / max(counts[k], 1) for k in sums}
