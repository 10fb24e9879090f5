"""Encoding and decoding on a Dask cluster (the ``dask`` extra: ``pip install "dask[distributed]"``).

One task per compressed data unit.  For encoding, every worker reads its own
tensors from the model path (a filesystem the workers share; safetensors files are
read lazily, tensor by tensor) and returns the unit's bytes; the client writes the
units in stream order as they arrive, so only coded units pass through it.  For
decoding, every worker reads the stream file (memory-mapped) and returns the
tensors of its unit; the client writes them into their place in the output files as
they arrive (:func:`decode_to_path`), with a bounded number of units in flight.  The
bytes and values are those of a local run.

Examples
--------
>>> import nnc, numpy as np, os, tempfile
>>> from dask.distributed import Client, LocalCluster            # doctest: +SKIP
>>> client = Client(LocalCluster(n_workers=2, processes=False))  # doctest: +SKIP
>>> d = tempfile.mkdtemp()
>>> model = os.path.join(d, "m.safetensors")
>>> nnc.formats.write_model(model, {"w": np.ones((64, 64), np.float32)})
>>> stream = nnc.encode_model(model, os.path.join(d, "m.nnr"), client=client, qp=-30)  # doctest: +SKIP
>>> stream == nnc.encode_model(model, qp=-30)                    # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import container as C
from . import formats
from ._files import AtomicFile, refuse_overwriting, temp_file_beside
from ._threads import thread_count
from .errors import DecodeError, EncodeError

__all__ = [
    "get_client",
    "check_client",
    "close_client",
    "encode_model",
    "decode_model",
    "decode_to_path",
    "tensor_index",
    "read_tensors",
]


def get_client(scheduler):
    """A ``dask.distributed.Client`` for a scheduler address, ``"local:N"`` or a client.

    ``"local:N"`` starts a ``LocalCluster`` of N worker processes with one thread
    each, closed together with the client.  Returns ``(client, owned)``, where
    ``owned`` tells the caller to close the client when done.

    Raises
    ------
    ImportError
        If dask.distributed is not installed.
    ValueError
        If ``local:N`` does not give a positive N.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError('running on a Dask cluster needs dask.distributed: pip install "dask[distributed]"') from exc
    if isinstance(scheduler, Client):
        return scheduler, False
    scheduler = str(scheduler)
    if scheduler.startswith("local:"):
        n = scheduler[len("local:") :]
        most = max(64, 4 * (os.cpu_count() or 1))
        if not (n.isascii() and n.isdigit()) or not 1 <= int(n) <= most:
            raise ValueError(f"--scheduler local:N needs a worker count N from 1 to {most}, not {scheduler!r}")
        with _interrupts_ignored_by_children():
            cluster = LocalCluster(  # a task's error reaches the caller as an exception: the workers need not log it
                n_workers=int(n),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,
            )
        client = Client(cluster)
        client._nnc_cluster = cluster
        return client, True
    return Client(scheduler), True


@contextlib.contextmanager
def _interrupts_ignored_by_children():
    """SIGINT ignored while the block starts processes, which keep ignoring it (Ctrl-C reaches the terminal's whole
    process group: the caller alone stops, and closes the cluster, without a traceback from each worker). A Ctrl-C
    while the cluster starts (a few seconds) goes unseen; the next one stops the command. (Blocking the signal
    instead does not reach the workers: their processes unblock it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def check_client(client) -> None:
    """Raise ``TypeError`` unless ``client`` is a Dask client (something with ``submit``), naming the way to get one.

    Examples
    --------
    >>> check_client("local:2")
    Traceback (most recent call last):
        ...
    TypeError: client must be a dask.distributed.Client, not str; for 'local:N' or a scheduler address use nnc.distributed.get_client
    """
    if not callable(getattr(client, "submit", None)):
        raise TypeError(
            f"client must be a dask.distributed.Client, not {type(client).__name__}; for 'local:N' or a scheduler "
            "address use nnc.distributed.get_client"
        )


def close_client(client) -> None:
    """Close a client from :func:`get_client` (and the local cluster it started)."""
    client.close()
    cluster = getattr(client, "_nnc_cluster", None)
    if cluster is not None:
        cluster.close()


# -- tensors read by name ----------------------------------------------------------------


def tensor_index(path) -> "tuple[OrderedDict[str, tuple[tuple, str]], dict]":
    """{name: (shape, dtype as read)} in stream order, and the original dtypes, from the
    model's headers alone (:func:`nnc.readers.open_model`: no tensor data is read)."""
    from .readers import open_model

    source = open_model(path)
    index = OrderedDict((t.name, (tuple(t.shape), t.dtype)) for t in source)
    return index, source.dtypes


def read_tensors(path, names, expected=None) -> dict:
    """The named tensors of a model file or checkpoint, each read lazily on its own
    (a safetensors file is memory-mapped and only those tensors are read). ``expected``:
    {name: (shape, dtype)} the client planned from the headers; a tensor read otherwise (the
    worker sees another file at the path) is an EncodeError."""
    from .readers import open_model

    source = open_model(path)
    tensors = {}
    for name in names:
        if name not in source:
            raise EncodeError(f"{path}: a worker finds no tensor {name!r} there: the workers see another file")
        tensors[name] = array = source[name].load()
        if expected is not None and name in expected:
            shape, dtype = expected[name]
            if tuple(array.shape) != tuple(shape) or np.dtype(array.dtype) != np.dtype(dtype):
                raise EncodeError(
                    f"{path}: tensor {name!r} reads as {array.dtype}{list(array.shape)} on a worker, "
                    f"{np.dtype(dtype)}{list(shape)} on the client: the workers see another file"
                )
    return tensors


# -- encoding -------------------------------------------------------------------------------


def _encode_unit(path, name, parts, options, mps_qp, expected=None):
    """Worker: one NDU (a tensor, or a block and its members) -> (bytes, member summaries). ``expected``: the
    client's {name: (shape, dtype)} of the unit's tensors."""
    from .encoder import Encoder, coarse_signal, lost_signal
    from .encoding.settings import qp_offset_fits
    from .encoding.writer import UnitWriter, block_members

    enc = Encoder(**options)
    s = enc.settings
    writer = UnitWriter(s, enc.engine)
    names = block_members(name, parts) if parts else [name]
    arrays = read_tensors(path, names, expected)
    if parts:
        coded = {n: enc.quantiser.quantise(n, arrays[n], in_block=s.blocks != "auto") for n in names}
        unit = writer.group_unit(name, parts, coded, arrays)
    else:
        unit = writer.single_unit(writer.raw_if_smaller(enc.quantiser.quantise(name, arrays[name]), arrays[name]))
    summary = [
        dict(
            name=t.name,
            qp=t.qp,
            recon=np.asarray(t.recon).dtype.name,
            lost=lost_signal(t.levels, t.recon, arrays[t.name]) if t.name in arrays else False,
            coarse=coarse_signal(arrays.get(t.name), t.levels, t.recon, s.dtypes.get(t.name)),
        )
        for t in unit.members
    ]
    if mps_qp == 0 and any(t.qp is not None and not qp_offset_fits(t.qp, 0, s.qp_density) for t in unit.members):
        return None, summary  # the MPS qp cannot be 0 (spec 8.2): built in the second round
    return unit.build(mps_qp), summary


def encode_model(model, output, client, **options) -> int:
    """Encode a model file on a Dask cluster into ``output``; return the stream's length.

    The stream is the one :func:`nnc.encode_model` writes with the same options.
    ``model`` must be a path the workers can read.  Incremental coding (``state``)
    is not available here.

    Raises
    ------
    nnc.errors.EncodeError
        If ``model`` is not a path or an option cannot be used on a cluster, or a
        tensor cannot be encoded (raised by its worker).
    nnc.formats.FormatError
        If the model cannot be read.
    """
    from .encoder import Encoder, warn_coarse, warn_lost_signal
    from .encoding.writer import block_groups, block_members, metadata_json, tied_tensors
    from .encoding.writer import mps_qp as stream_qp
    from .models import checkpoint_metadata, keep_quantisation_parameters_exact, with_file_dtypes
    from .readers import open_model

    check_client(client)
    if not isinstance(model, (str, os.PathLike)):
        raise EncodeError("on a Dask cluster the model must be a path the workers can read")
    source = open_model(model)
    refuse_overwriting(output, {"model": model, "model's file": source.files})
    keep_quantisation_parameters_exact(options, source)
    for option in ("state", "differences", "importance", "sigmas"):
        if options.get(option):
            raise EncodeError(f"the option {option!r} is not available on a Dask cluster")
    path = os.path.abspath(os.fspath(model))
    index, dtypes = tensor_index(path)
    with_file_dtypes(options, dtypes)
    options.setdefault("threads", 1)
    enc = Encoder(**options)  # checks the options on the client
    s = enc.settings
    shapes = OrderedDict((k, tuple(shape)) for k, (shape, _) in index.items())
    unknown = [k for k in s.dtypes if k not in shapes]
    if unknown:
        raise EncodeError(f"dtypes names a tensor that is not in the model: {unknown[0]!r}")
    shares = {t.name: t.same_as for t in source if t.same_as is not None}
    tied = tied_tensors(shares, s, {k: len(v) for k, v in shapes.items()})  # (coded once, as encode_model does)
    coded = {k: dtype for k, (_, dtype) in index.items() if k not in tied}
    groups = block_groups(s.blocks, {k: shapes[k] for k in coded}, s, coded)
    in_block = {m for w, p in groups.items() for m in block_members(w, p)[1:]}
    names = [name for name in coded if name not in in_block]

    window = _in_flight(client, None)

    def planned(name):  # what the client read in the headers, which the worker checks
        members = block_members(name, groups[name]) if groups.get(name) else [name]
        return {m: index[m] for m in members}

    def tasks(mps_qp):  # each submits one unit's encoding when called
        return [
            lambda name=name: client.submit(
                _encode_unit, path, name, groups.get(name), options, mps_qp, planned(name), pure=False
            )
            for name in names
        ]

    output = Path(output)
    fd, spool = temp_file_beside(output, ".units")
    try:
        with os.fdopen(fd, "w+b") as units:
            summaries = _write_in_order(tasks(0), window, units)
            qps = [m["qp"] for summary in summaries for m in summary if m["qp"] is not None]
            mps_qp = stream_qp(qps, s.qp_density)
            if mps_qp != 0:  # per-tensor qps too far apart for offsets from 0: rebuild (spec 8.2)
                units.seek(0)
                units.truncate()
                _write_in_order(tasks(mps_qp), window, units)
            decoded = {m["name"]: m["recon"] for summary in summaries for m in summary}
            original = {k: s.dtypes.get(k, np.dtype(dtype).name) for k, (_, dtype) in index.items()}
            metadata = metadata_json(shapes, decoded, original, checkpoint_metadata(source), groups=groups, tied=tied)
            head = b"".join(
                [
                    C.build_str(s.profile),
                    C.build_mps(qp_density=s.qp_density, qp=mps_qp, profile=s.profile, parent_signalling=False),
                    C.build_tpl(data=metadata),
                ]
            )
            units.seek(0)
            length = _write_atomic_parts(output, head, units)
    finally:
        if os.path.exists(spool):
            os.unlink(spool)
    warn_lost_signal([m["name"] for summary in summaries for m in summary if m.get("lost")])  # as a local encode
    warn_coarse({m["name"]: m["coarse"] for summary in summaries for m in summary if m.get("coarse") and not m["lost"]})
    return length


def _write_in_order(tasks, window: int, fh) -> list:
    """Write the unit bytes of ``tasks`` (callables that submit a unit and return its future) in order, with at most
    ``window`` submitted and not yet written (the workers hold finished units until their turn); return the
    summaries."""
    from collections import deque

    summaries: list = []
    pending: deque = deque()
    tasks = iter(tasks)
    try:
        while True:
            while len(pending) < window:
                task = next(tasks, None)
                if task is None:
                    break
                pending.append(task())
            if not pending:
                return summaries
            f = pending.popleft()
            data, summary = f.result()
            if data is not None:
                fh.write(data)
            summaries.append(summary)
            f.release()
    finally:
        for f in pending:
            f.cancel()


def _write_atomic_parts(path: Path, head: bytes, rest) -> int:
    with AtomicFile(path) as out:
        out.fh.write(head)
        while True:
            chunk = rest.read(1 << 24)
            if not chunk:
                break
            out.fh.write(chunk)
        return out.fh.tell()


# -- decoding -------------------------------------------------------------------------------


def stream_fingerprint(dec) -> str:
    """A digest of a stream as a Decoder parsed it: its length, every unit's header and the units other than NDUs
    (spec 3.1, 7.4). The client sends it with each task; a worker whose file at the path differs (a stale copy,
    a file replaced meanwhile) refuses to decode rather than give tensors of another stream."""
    h = hashlib.sha256(len(dec.data).to_bytes(8, "little"))
    data = memoryview(dec.data)
    for unit in dec.units:
        end = unit.payload_offset if unit.type == C.NNR_NDU else unit.end
        h.update(unit.offset.to_bytes(8, "little") + bytes(data[unit.offset : end]))
    return h.hexdigest()


_WORKER_DECODER: dict = {}  # on a worker: {job token: (Decoder, map)} of the stream being decoded
_WORKER_LOCK = threading.Lock()


def _worker_decoder(token, path, decoder_options, fingerprint=None):
    """The worker's Decoder of ``path`` for the job ``token``: the stream's headers are parsed once per worker and
    checked against the client's ``fingerprint`` (:func:`stream_fingerprint`)."""
    from .decoder import Decoder
    from .writers import map_stream

    with _WORKER_LOCK:
        if token not in _WORKER_DECODER:
            _forget(None, locked=True)  # one stream at a time per worker
            mapped = map_stream(path)
            dec = Decoder(mapped if mapped is not None else b"", **decoder_options)
            if fingerprint is not None and stream_fingerprint(dec) != fingerprint:
                del dec
                if mapped is not None:
                    mapped.close_when_unused()
                raise DecodeError(
                    f"{path}: the stream a worker reads there is not the one the client read (its headers or length "
                    "differ): the workers see another file"
                )
            _WORKER_DECODER[token] = (dec, mapped)
        return _WORKER_DECODER[token]


def _forget(token, locked: bool = False) -> None:
    """Worker: let go of the Decoder and the map of ``token`` (of every job for None)."""
    if not locked:
        with _WORKER_LOCK:
            return _forget(token, locked=True)
    for key in [k for k in _WORKER_DECODER if token is None or k == token]:
        _, mapped = _WORKER_DECODER.pop(key)
        if mapped is not None:
            mapped.close_when_unused()  # (a task may still be decoding from it)
    return None


def _decode_unit(path, i, decoder_options, threads, token=None, fingerprint=None):
    """Worker: the tensors of NDU ``i`` of the stream at ``path`` (the client's when ``fingerprint`` is given)."""
    from .decoder import release_pages

    if token is None:  # one task on its own: nothing kept
        token = object()
        try:
            return _decode_unit(path, i, decoder_options, threads, token, fingerprint)
        finally:
            _forget(token)
    dec, mapped = _worker_decoder(token, path, decoder_options, fingerprint)
    unit, params = dec._ndus[i]
    out = dec._decode_ndu(unit, params, dec._ndu_tensors[i], threads)
    result = OrderedDict((k, np.array(v, copy=True)) for k, v in out.items())
    if mapped is not None:
        release_pages(mapped, unit.offset, unit.end)  # the payload's pages: a worker's memory stays bounded
    return result


def decode_model(stream, output, client, *, threads: int = 1, **decoder_options):
    """Decode a stream file on a Dask cluster: :func:`nnc.decode_model` with one task per unit.

    Streams that need a decoder state (incremental coding) are decoded on the
    client.  Returns the tensors as :func:`nnc.decode_model` does.
    """
    from .decoder import Decoder, Limits, refuse_differences, restore_model_view
    from .writers import map_stream

    check_client(client)
    thread_count(threads)
    if not isinstance(stream, (str, os.PathLike)):
        raise TypeError("on a Dask cluster the stream must be a path the workers can read")
    refuse_overwriting(output, {"stream": stream})
    path = os.path.abspath(os.fspath(stream))
    decoder_options.setdefault("limits", Limits.for_stream(path))  # written one unit at a time
    mapped = map_stream(path)
    dec = Decoder(mapped if mapped is not None else path, **decoder_options)
    if output is not None:
        refuse_differences(dec, "add them to the model with nnc.apply_update or nnc.writers.decode_to_path(add_to=...)")
    metadata, ndus, fingerprint, tied = dec.metadata, len(dec._ndus), stream_fingerprint(dec), dec.tied
    local = decoder_options.get("state") is not None or any(p.parent_signalling for _, p in dec._ndus)
    tensors: OrderedDict[str, np.ndarray] = dec.decode(threads=threads) if local else OrderedDict()
    del dec
    if mapped is not None:
        mapped.close_when_unused()
    if not local:
        units = _units_in_order(client, path, range(ndus), decoder_options, threads, None, fingerprint)
        for _, unit_tensors in units:
            tensors.update(unit_tensors)
        for name, coded in tied.items():  # (tied weights: the coded tensor's array, spec 6.2.1)
            tensors[name] = tensors[coded]
    tensors, dtypes = restore_model_view(tensors, metadata)
    if output is not None:
        from .writers import single_file_metadata

        metadata = single_file_metadata(metadata, formats.format_from_extension(output))
        formats.write_model(os.fspath(output), tensors, dtypes, metadata=metadata)
    return tensors


def _in_flight(client, in_flight) -> int:
    if in_flight is not None:
        if isinstance(in_flight, bool) or not isinstance(in_flight, (int, np.integer)) or in_flight < 1:
            raise ValueError(f"in_flight must be an int >= 1, not {in_flight!r}")
        return int(in_flight)
    try:
        return max(2, 2 * sum(client.nthreads().values()))
    except Exception:  # a client that cannot tell: two per worker thread is only a default
        return 4


def _units_in_order(client, path, units, decoder_options, threads, in_flight, fingerprint=None):
    """Yield ``(i, tensors of NDU i)`` for ``units`` in order, with at most ``in_flight`` tasks submitted at once.

    A result is fetched when its turn comes and released at once, so the client holds
    one unit's tensors at a time and the workers at most ``in_flight``.
    """
    import uuid
    from collections import deque

    token = uuid.uuid4().hex
    window = _in_flight(client, in_flight)
    pending = iter(units)
    futures: deque = deque()

    def submit():
        i = next(pending, None)
        if i is not None:
            futures.append(
                (i, client.submit(_decode_unit, path, i, decoder_options, threads, token, fingerprint, pure=False))
            )

    try:
        for _ in range(window):
            submit()
        while futures:
            i, f = futures.popleft()
            result = f.result()
            f.release()
            submit()
            yield i, result
            del result
    finally:
        for _, f in futures:
            f.cancel()
        try:
            client.run(_forget, token)
        except Exception:  # a worker gone: its process took the map with it
            pass


def decode_to_path(
    stream,
    output,
    client,
    *,
    threads: int = 1,
    in_flight: int | None = None,
    overwrite: bool = False,
    **decoder_options,
) -> dict:
    """Decode a stream file on a Dask cluster into model files: :func:`nnc.writers.decode_to_path`, one task per unit.

    The client plans the files from the stream's headers, the workers decode the
    units (each reading the stream file, which must be on a filesystem they share),
    and the client writes each unit's tensors into their place in the output as they
    arrive, then lets them go: at most ``in_flight`` units (default: two per worker
    thread) are on the workers, one on the client.  The files are those of a local
    run.  ``.onnx`` files, updates and streams that need a decoder state
    are decoded as :func:`nnc.writers.decode_to_path` does them, on the client.

    Parameters
    ----------
    stream : str or ``os.PathLike``
        The stream file, at a path the workers can read.
    output : str or ``os.PathLike``
        The folder or file to write (as for :func:`nnc.writers.decode_to_path`).
    client : ``dask.distributed.Client``
    threads : int
        Threads per task inside a large tensor (0: one per CPU of the worker).
    in_flight : int or None
        Units submitted at a time; None for two per worker thread.
    overwrite : bool
        Replace files there already in an output folder (as for :func:`nnc.writers.decode_to_path`).
    **decoder_options
        ``limits``, ``engine``, ``entry_points`` (as for :class:`nnc.decoder.Decoder`).

    Returns
    -------
    dict
        As :func:`nnc.writers.decode_to_path`: ``files``, ``tensors``, ``weights``, ``bytes``.

    Raises
    ------
    nnc.errors.DecodeError
        If the stream is invalid (raised on the worker that found it); nothing is written.
    TypeError
        If ``stream`` is not a path.
    ValueError
        If ``in_flight`` is below 1.

    Examples
    --------
    >>> from dask.distributed import Client, LocalCluster                # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, processes=False))      # doctest: +SKIP
    >>> decode_to_path("model.nnr", "decoded/", client)["files"]         # doctest: +SKIP
    ['decoded/model-00001-of-00002.safetensors', ..., 'decoded/model.safetensors.index.json']
    """
    from . import writers
    from .decoder import Decoder, Limits
    from .formats import format_from_extension

    check_client(client)
    thread_count(threads)
    if in_flight is not None:
        _in_flight(client, in_flight)
    if not isinstance(stream, (str, os.PathLike)):
        raise TypeError("on a Dask cluster the stream must be a path the workers can read")
    refuse_overwriting(output, {"stream": stream})
    path = os.path.abspath(os.fspath(stream))
    mapped = writers.map_stream(path)
    decoder_options.setdefault("limits", Limits.for_stream(path))  # written one unit at a time
    dec = Decoder(mapped if mapped is not None else path, **decoder_options)
    single = not writers.is_directory_target(output)
    if (
        decoder_options.get("state") is not None
        or any(p.parent_signalling for _, p in dec._ndus)
        or (single and format_from_extension(output) == "onnx")
    ):
        return writers.decode_to_path(dec, output, threads=threads, overwrite=overwrite)
    if mapped is not None:
        writers._release(mapped, len(mapped))
    options = {k: v for k, v in decoder_options.items() if k != "state"}
    fingerprint = stream_fingerprint(dec)

    def remote(names, out):
        wanted = set(names)
        units = sorted({dec._index[dec.tied.get(n, n)][0] for n in names})
        for _, tensors in _units_in_order(client, path, units, options, threads, in_flight, fingerprint):
            for name in list(tensors):
                array = tensors.pop(name)
                ties = [t.name for t in dec._ties_of.get(name, ())]  # (tied weights, spec 6.2.1)
                for each in [name, *ties]:
                    if each in wanted:
                        buffer = out(dec.info(each))
                        yield each, (dec._fill(each, buffer, array) if buffer is not None else array)
                del array

    return writers.write_tensors(dec, output, None, remote, inputs={"stream": stream}, overwrite=overwrite)
