"""Conformance verification: decode every stream of a suite and compare with its expected hashes.

A suite is a directory with ``manifest.json`` (see conformance/README.md).  Each
entry names a stream and either the expected tensors (name, dtype, shape,
SHA-256 of the C-order little-endian bytes) and the hash of the whole output,
or, for must-fail streams, the error class a conforming decoder raises.

Decoders are adapters: a callable ``(bytes, sequence) -> OrderedDict[name, ndarray]``
that raises on invalid input.  nnc's own decoders are built in (``DECODERS``);
any other decoder (NNCodec, another implementation) is an external command
run through :class:`CommandAdapter` (``nnc verify --decoder-command CMD``).
The repository's tools/nncodec_decoder.py is such a command for NNCodec.

Examples
--------
A suite of one stream that must decode and one that must fail:

>>> import json, os, tempfile, numpy as np, nnc
>>> from nnc import verify
>>> suite = tempfile.mkdtemp()
>>> stream = nnc.encode({"w": np.ones((2, 2), np.float32)}, qp=-8)
>>> with open(os.path.join(suite, "ok.nnr"), "wb") as fh:
...     _ = fh.write(stream)
>>> with open(os.path.join(suite, "cut.nnr"), "wb") as fh:
...     _ = fh.write(stream[:-1])
>>> manifest = {"streams": [
...     {"name": "ok", "group": "profile-1", "profile": 1, "file": "ok.nnr",
...      "expected": verify.describe_output(nnc.decode(stream))},
...     {"name": "cut", "group": "must-fail", "profile": 1, "file": "cut.nnr",
...      "expected_error": "TruncatedError", "clause": "3.2"}]}
>>> with open(os.path.join(suite, "manifest.json"), "w") as fh:
...     json.dump(manifest, fh)
>>> results = verify.verify_suite(suite)
>>> [(r.name, r.passed, r.detail) for r in results]
[('ok', True, 'ok'), ('cut', True, 'rejected with TruncatedError (spec 3.2)')]
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from . import errors, narrow_floats

__all__ = [
    "verify_suite",
    "read_manifest",
    "format_table",
    "Result",
    "NNCAdapter",
    "NNCRandomAccessAdapter",
    "NNCAPIAdapter",
    "InconsistentDecoding",
    "CommandAdapter",
    "CommandError",
    "CommandProtocolError",
    "DECODERS",
    "tensor_sha256",
    "output_sha256",
    "describe_output",
]


def tensor_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's C-order, little-endian bytes.

    The hash depends on the values, the dtype's kind and size and the shape's
    element order, not on the array's memory layout or byte order.

    Parameters
    ----------
    a : ``numpy.ndarray``
        The array.

    Returns
    -------
    str
        64 hexadecimal digits.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.verify import tensor_sha256
    >>> tensor_sha256(np.zeros(0, np.float32))  # the SHA-256 of no bytes
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    >>> tensor_sha256(np.arange(3, dtype=">i4")) == tensor_sha256(np.arange(3, dtype="<i4"))
    True
    """
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(a.tobytes()).hexdigest()


def output_sha256(tensors) -> str:
    """SHA-256 of a whole decoded output: per tensor, in order, name, dtype, shape and bytes.

    Each tensor contributes its UTF-8 name, a NUL, its dtype string without
    the byte-order mark (e.g. ``f4``), a NUL, its shape as a JSON list, a NUL
    and the 32-byte digest of :func:`tensor_sha256`.  Tensor order matters.

    Parameters
    ----------
    tensors : ``Mapping``
        {name: ``numpy.ndarray``}, as a decoder returns it.

    Returns
    -------
    str
        64 hexadecimal digits.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.verify import output_sha256
    >>> a, b = np.zeros(2, np.float32), np.ones(1, np.int32)
    >>> output_sha256({"a": a, "b": b}) == output_sha256({"b": b, "a": a})
    False
    >>> output_sha256({"a": a}) == output_sha256({"a": a.astype(np.float64)})
    False
    """
    h = hashlib.sha256()
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        h.update(name.encode() + b"\0" + a.dtype.str.replace("<", "").replace("|", "").encode() + b"\0")
        h.update(json.dumps(list(a.shape)).encode() + b"\0")
        h.update(bytes.fromhex(tensor_sha256(a)))
    return h.hexdigest()


def describe_output(tensors) -> dict:
    """The ``expected`` entry of a suite manifest for a decoded output.

    Parameters
    ----------
    tensors : ``Mapping``
        {name: array-like}, as a decoder returns it.

    Returns
    -------
    dict
        ``{"tensors": [{"name", "dtype", "shape", "sha256"}, ...],
        "output_sha256": ...}``, with the hashes of :func:`tensor_sha256` and
        :func:`output_sha256`.

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.verify import describe_output
    >>> d = describe_output({"w": np.zeros((2, 3), np.float32)})
    >>> d["tensors"][0]["name"], d["tensors"][0]["dtype"], d["tensors"][0]["shape"]
    ('w', 'float32', [2, 3])
    >>> len(d["output_sha256"])
    64
    """
    return {
        "tensors": [
            {
                "name": k,
                "dtype": str(np.asarray(v).dtype),
                "shape": list(np.asarray(v).shape),
                "sha256": tensor_sha256(np.asarray(v)),
            }
            for k, v in tensors.items()
        ],
        "output_sha256": output_sha256(tensors),
    }


@dataclass
class Result:
    """The verdict on one stream of a suite.

    The parameters are the fields below.

    Examples
    --------
    >>> from nnc.verify import Result, format_table
    >>> print(format_table([Result("p1_demo", "profile-1", True, "ok", 0.0042)]))
    stream   group      result        ms  detail
    ----------------------------------------------------
    p1_demo  profile-1  PASS         4.2  ok
    ----------------------------------------------------
    1 passed, 0 failed
    """

    #: The stream's name in the manifest.
    name: str
    #: Its group, e.g. ``"profile-1"`` or ``"must-fail"``.
    group: str
    #: Whether the decoder did what the manifest expects.
    passed: bool
    #: ``"ok"``, the error it was rejected with, or what went wrong.
    detail: str
    #: Decoding time in seconds (0 for skipped streams).
    seconds: float


class NNCAdapter:
    """Our decoder; one DecoderState per incremental sequence of the suite.

    Calling the adapter decodes one stream with :func:`nnc.decoder.decode`.
    Streams of the same ``sequence`` share one
    :class:`~nnc.decoder.DecoderState`, so that incremental streams decode
    against their predecessors.

    Parameters
    ----------
    engine : str or None
        ``"cython"`` or ``"python"``; None for the default (see
        :func:`nnc.engine.get_engine`).

    Examples
    --------
    >>> import nnc
    >>> from nnc.verify import NNCAdapter
    >>> adapter = NNCAdapter(engine="python")
    >>> adapter(nnc.encode({"w": [1.0, 2.0]}), "seq-1")["w"].shape
    (2,)
    >>> list(adapter.states)
    ['seq-1']
    """

    def __init__(self, engine: str | None = None):
        #: The engine name given, or None.
        self.engine = engine
        #: The :class:`~nnc.decoder.DecoderState` of each sequence, by sequence id.
        self.states: dict = {}

    def __call__(self, data: bytes, sequence: str | None = None):
        from .decoder import DecoderState, decode

        state = self.states.setdefault(sequence, DecoderState()) if sequence else None
        return decode(data, engine=self.engine, state=state)


class NNCRandomAccessAdapter(NNCAdapter):
    """nnc's decoder, checked once more tensor by tensor.

    Each stream is decoded whole with its transmitted entry points checked
    against the decoded positions (``entry_points="verify"``, spec 11.4); then
    every tensor is decoded on its own, last first, entering its block rows at
    their entry points (``entry_points="use"``, spec 9.7; every other one into
    a caller array, ``out=``), and must equal the whole decoding.  Streams of an incremental sequence get the first check
    only (their tensors depend on the sequence's state).

    Parameters
    ----------
    engine : str or None
        As for :class:`NNCAdapter`.

    Examples
    --------
    >>> import nnc, numpy as np
    >>> from nnc.verify import NNCRandomAccessAdapter
    >>> stream = nnc.encode({"w": np.ones((40, 40), np.float32), "b": np.ones(40, np.float32)}, scan_order=1)
    >>> sorted(NNCRandomAccessAdapter()(stream))
    ['b', 'w']
    """

    #: Checks transmitted entry points: a stream whose entry points are known to be wrong
    #: (manifest ``wrong_entry_points``) passes when this adapter rejects it for them (spec 11.4).
    checks_entry_points = True

    def __call__(self, data: bytes, sequence: str | None = None):
        from .decoder import Decoder, DecoderState

        if sequence:
            state = self.states.setdefault(sequence, DecoderState())
            return Decoder(data, engine=self.engine, state=state, entry_points="verify").decode()
        whole = Decoder(data, engine=self.engine, entry_points="verify").decode()
        dec = Decoder(data, engine=self.engine, entry_points="use")
        for i, info in enumerate(reversed(dec.tensors())):
            # every other tensor into a caller array of its own dtype and shape (out=)
            alone = dec.decode_tensor(info.name, out=np.empty(info.shape, info.dtype) if i % 2 else None)
            if alone.shape != info.shape or tensor_sha256(alone) != tensor_sha256(whole[info.name]):
                raise errors.DecodeError(
                    f"tensor {info.name!r} decoded on its own differs from the whole stream's decoding",
                    clause="9.7",
                    offset=info.unit_offset,
                )
        return whole


class InconsistentDecoding(RuntimeError):
    """Two ways of calling nnc's decoder gave different results for one stream.

    Raised by :class:`NNCAPIAdapter`; :func:`verify_suite` fails the stream
    whatever its group (a must-fail stream is not passed by this rejection).

    Examples
    --------
    >>> from nnc.verify import InconsistentDecoding
    >>> issubclass(InconsistentDecoding, RuntimeError)
    True
    """


class NNCAPIAdapter(NNCAdapter):
    """nnc's decoder, called in every way its API offers; all of them must agree.

    Each stream is decoded from a file with :func:`nnc.decoder.decode_with_info`
    (the result that is verified), and then three times more:

    1. from a binary file object, with ``threads=2`` (units in a thread pool,
       and the block rows of every block-scanned tensor in two ranges decoded in
       threads from their entry points, spec 11.4), into caller arrays
       (``out=``): a float tensor into a float64 array, a tensor whose original
       dtype or shape the stream records (spec 6.2.1) into an array of that
       dtype (bfloat16: ``uint16`` bits, float8: ``uint8`` bits) and shape; with a progress callback;
    2. from a two-dimensional memoryview, every other tensor through
       :meth:`~nnc.decoder.Decoder.iter_tensors` with ``threads=2`` (block rows
       in threads only for large tensors, as by default) and a callable target
       that gives every other one of those an array;
    3. with :func:`~nnc.decoder.decode` and ``entry_points="use"`` (spec 9.7),
       from the stream file memory-mapped as ``nnc decode`` reads it
       (:func:`nnc.writers.map_stream`: the pages of parsed headers are released).

    Every way must give the same tensors (the caller arrays: the same values
    in their dtype) or, for an invalid stream, an error of the same class,
    clause and offset; ``entry_points="use"`` may differ only where the
    transmitted entry points are wrong, which ``entry_points="verify"`` must
    then report (spec 11.4).  A difference raises :class:`InconsistentDecoding`.
    Streams of an incremental sequence are decoded each way from a copy of
    the sequence's state.

    Parameters
    ----------
    engine : str or None
        As for :class:`NNCAdapter`.

    Examples
    --------
    >>> import nnc, numpy as np
    >>> from nnc.verify import NNCAPIAdapter
    >>> stream = nnc.encode({"w": np.ones((40, 40), np.float32), "b": np.ones(40, np.float32)}, scan_order=1)
    >>> list(NNCAPIAdapter()(stream))
    ['w', 'b']
    """

    def __call__(self, data: bytes, sequence: str | None = None):
        import copy

        from .decoder import DecoderState

        state = self.states.setdefault(sequence, DecoderState()) if sequence else None
        before = copy.deepcopy(state)
        routes = [self._threads_into_buffers, self._iterated, self._from_entry_points]
        try:
            reference = self._reference(data, state)
        except errors.NNCError as exc:
            for route in routes:
                self._same_error(route, exc, data, copy.deepcopy(before))
            raise
        for route in routes:
            route(data, copy.deepcopy(before), reference)
        return reference

    def _reference(self, data, state):
        """decode_with_info, from a file"""
        import os

        from .decoder import decode_with_info

        path = self._stream_file(data)
        try:
            tensors, infos = decode_with_info(path, engine=self.engine, state=state)
        finally:
            os.remove(path)
        if [i.name for i in infos] != list(tensors):
            raise InconsistentDecoding("decode_with_info's tensor records are not those of its tensors")
        return tensors

    def _stream_file(self, data) -> str:
        """``data`` written to a new file of the adapter's temporary directory."""
        import os
        import tempfile

        if getattr(self, "_tmp", None) is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nnc-verify-")
        self._files = getattr(self, "_files", 0) + 1
        path = os.path.join(self._tmp.name, f"stream-{self._files}.nnr")
        with open(path, "wb") as fh:
            fh.write(bytes(data))
        return path

    def close(self):
        """Remove the temporary files the streams are decoded from.

        Examples
        --------
        >>> from nnc.verify import NNCAPIAdapter
        >>> NNCAPIAdapter().close()
        """
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _same_error(self, route, want, data, state):
        """``route`` rejects the stream as the decoding did (with entry points used: rejects it at all)."""
        try:
            route(data, state, None)
        except errors.NNCError as exc:
            got, expected = (type(exc), exc.clause, exc.offset), (type(want), want.clause, want.offset)
            if got != expected and route != self._from_entry_points:
                raise InconsistentDecoding(
                    f"{route.__doc__}: {type(exc).__name__} (spec {exc.clause}, offset {exc.offset}), where the "
                    f"decoding raised {type(want).__name__} (spec {want.clause}, offset {want.offset})"
                ) from exc
        else:
            raise InconsistentDecoding(f"{route.__doc__}: decoded a stream the decoding rejects ({want})")

    @staticmethod
    def _compare(route, got, reference, names=None, formats=None):
        """``formats``: {name: the NarrowFloat the stream records}, whose caller arrays hold bit patterns."""
        names = list(reference) if names is None else names
        if list(got) != names:
            raise InconsistentDecoding(f"{route}: tensors {list(got)[:4]}..., expected {names[:4]}...")
        for name in names:
            a, ref = got[name], reference[name]
            narrow = (formats or {}).get(name)
            if narrow is not None and a.dtype == narrow.storage and ref.dtype.kind == "f":
                ref = narrow_floats.from_float32(narrow.name, ref.reshape(-1))
            elif a.dtype.kind in "biu" and ref.dtype.kind == "f":  # as Decoder._fill: rounded to nearest
                ref = np.rint(ref).astype(a.dtype)
            elif a.dtype != ref.dtype:
                ref = ref.astype(a.dtype)
            if tensor_sha256(a.reshape(-1)) != tensor_sha256(ref.reshape(-1)) or a.size != ref.size:
                raise InconsistentDecoding(f"{route}: tensor {name!r} differs from the decoding")

    @staticmethod
    def _narrow(dec) -> dict:
        """{name: NarrowFloat} of the tensors whose original dtype the stream records as bfloat16 or float8."""
        from .decoder import recorded_dtype

        found = {t.name: recorded_dtype(dec.metadata, t.name, t.dtype) for t in dec.tensors()}
        return {k: narrow_floats.NARROW_FLOATS[v] for k, v in found.items() if v and narrow_floats.is_narrow(v)}

    @staticmethod
    def _buffer(dec, info):
        """An array for out=: the original dtype and shape the stream records, float tensors as float64."""
        from .decoder import recorded_dtype, recorded_shape

        dtype = np.dtype(info.dtype)
        original = recorded_dtype(dec.metadata, info.name, info.dtype)
        if narrow_floats.is_narrow(original):
            dtype = narrow_floats.NARROW_FLOATS[original].storage.newbyteorder("=")
        elif original is not None:
            dtype = np.dtype(original)
        elif dtype.kind == "f":
            dtype = np.dtype(np.float64)
        shape = recorded_shape(dec.metadata, info.name, info.size)
        return np.empty(info.shape if shape is None else shape, dtype)

    def _threads_into_buffers(self, data, state, reference):
        """threads=2, from a file object, into caller arrays"""
        import io

        from .decoder import Decoder

        dec = Decoder(io.BytesIO(bytes(data)), engine=self.engine, state=state)
        dec.row_thread_min_elements = 1  # every block-scanned tensor of two or more block rows in two ranges
        buffers = {t.name: self._buffer(dec, t) for t in dec.tensors()}
        seen: list = []
        got = dec.decode(threads=2, out=buffers, progress=seen.append)
        if reference is not None:
            if any(got[k] is not buffers[k] for k in buffers):
                raise InconsistentDecoding(f"{self._threads_into_buffers.__doc__}: a caller array was not used")
            self._compare(self._threads_into_buffers.__doc__, got, reference, formats=self._narrow(dec))
            if [i.name for i in seen] != list(got) or any(i is not dec.info(i.name) for i in seen):
                raise InconsistentDecoding(f"{self._threads_into_buffers.__doc__}: the progress callback saw others")

    def _iterated(self, data, state, reference):
        """iter_tensors with threads=2 and a callable target, from a memoryview"""
        from .decoder import Decoder

        view = memoryview(bytes(data))
        dec = Decoder(view.cast("B", (1, len(view))) if len(view) else view, engine=self.engine, state=state)
        names = dec.names()[:: 2 if reference is not None else 1]  # an invalid stream: every unit, to reject it
        targets = {t.name: self._buffer(dec, t) for t in dec.tensors()[::4]}
        got = dict(dec.iter_tensors(names, threads=2, out=lambda info: targets.get(info.name)))
        if reference is not None:
            self._compare(self._iterated.__doc__, got, reference, names, formats=self._narrow(dec))
            if any(got[k] is not a for k, a in targets.items()):
                raise InconsistentDecoding(f"{self._iterated.__doc__}: a caller array was not used")

    def _from_entry_points(self, data, state, reference):
        """decode with entry_points='use', from the memory-mapped stream file"""
        import os

        from .writers import map_stream

        path = self._stream_file(data)
        mapped = map_stream(path)  # None for an empty file: decoded from the bytes
        try:
            self._use_entry_points(data if mapped is None else mapped, state, reference)
        finally:
            if mapped is not None:
                try:
                    mapped.close()
                    os.remove(path)
                except (BufferError, OSError):  # still referenced: the directory's cleanup removes it
                    pass

    def _use_entry_points(self, source, state, reference):
        from .decoder import Decoder, decode

        if reference is None:
            decode(source, engine=self.engine, state=state, entry_points="use")
            return
        try:
            got = decode(source, engine=self.engine, state=state, entry_points="use")
            self._compare(self._from_entry_points.__doc__, got, reference)
        except (errors.NNCError, InconsistentDecoding) as exc:
            # only wrong entry points may change the result: verifying them must say so
            try:
                Decoder(source, engine=self.engine, state=state, entry_points="verify").decode()
            except errors.DecodeError as wrong:
                if wrong.clause == "11.4":
                    return
            raise InconsistentDecoding(f"entry_points='use' differs ({exc}), yet the entry points verify") from exc


class CommandAdapter:
    """An external decoder run as a command that speaks the decoder-command protocol.

    This is how decoders other than nnc's own take part in verification (the
    NNCodec adapter of the repository's ``tools/nncodec_decoder.py`` is one):
    ``nnc verify SUITE --decoder-command CMD``.  The command is started once
    and kept running, so that it can keep an incremental decoder state per
    sequence (spec 14).  The protocol is JSON lines over its stdin and stdout:

    1. On start the command writes one line, ``{"ok": true, "ready": true}``.
    2. For each stream nnc writes one line
       ``{"op": "decompress", "in": STREAM, "npz": OUTPUT, "sequence": ID, "id": N}``
       (``ID`` is null outside an incremental sequence; streams of one
       sequence come in order; ``N`` counts the requests, and a reply that
       carries an ``"id"`` must carry this one).
    3. The command decodes ``STREAM``, writes the tensors to the .npz file
       ``OUTPUT`` and replies ``{"ok": true, "names": [...]}``, the tensor
       names in decoding order; or, when it rejects the stream, replies
       ``{"ok": false, "error": MESSAGE}``; or, when it does not implement a
       tool the stream uses, ``{"ok": false, "unsupported": MESSAGE}`` (the
       stream is then skipped: neither passed nor failed).
    4. When its stdin closes, the command exits.

    Anything the command writes to stderr is passed through.  A command that
    exits, replies something else than one of these JSON objects (or a line
    longer than :attr:`MAX_REPLY`), or gives no reply within ``timeout`` seconds
    fails the stream, must-fail ones included (it is stopped, and started again
    for the next one).

    Parameters
    ----------
    command : str or list of str
        The command line (a string is split as a POSIX shell would).
    timeout : float
        Seconds to wait for each reply (600 by default).

    Raises
    ------
    RuntimeError
        If the command cannot be started or does not announce itself.

    Examples
    --------
    Any program that speaks the protocol will do; here, a small one around nnc:

    >>> import sys, textwrap, tempfile, os, nnc
    >>> from nnc.verify import CommandAdapter
    >>> script = os.path.join(tempfile.mkdtemp(), "dec.py")
    >>> with open(script, "w") as fh:
    ...     _ = fh.write(textwrap.dedent('''
    ...         import json, sys, numpy as np, nnc
    ...         print(json.dumps({"ok": True, "ready": True}), flush=True)
    ...         for line in sys.stdin:
    ...             req = json.loads(line)
    ...             try:
    ...                 out = nnc.decode(req["in"])
    ...             except nnc.NNCError as exc:
    ...                 print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
    ...                 continue
    ...             np.savez(req["npz"], **out)
    ...             print(json.dumps({"ok": True, "names": list(out)}), flush=True)
    ...     '''))
    >>> adapter = CommandAdapter([sys.executable, script])
    >>> list(adapter(nnc.encode({"w": [[1.0, 2.0]] * 2})))
    ['w']
    >>> adapter(b"not a stream")
    Traceback (most recent call last):
        ...
    nnc.verify.CommandError: the decoder command rejected the stream: ...
    >>> adapter.close()
    """

    #: The longest reply line read, in characters; a longer one is a broken protocol, not read whole.
    MAX_REPLY = 1 << 22

    def __init__(self, command, timeout: float = 600.0):
        import shlex
        import tempfile

        try:
            self.command = shlex.split(command) if isinstance(command, str) else list(command)
        except ValueError as exc:  # an unclosed quotation
            raise ValueError(f"the decoder command cannot be split: {exc}") from None
        if not self.command:
            raise ValueError("the decoder command is empty")
        #: Seconds to wait for each reply before the command is stopped and the stream failed.
        self.timeout = float(timeout)
        self._tmp = tempfile.TemporaryDirectory(prefix="nnc-verify-")
        self._n = 0
        self._proc: Any = None
        self._start()

    def _start(self):
        import queue
        import subprocess
        import threading

        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        except OSError as exc:
            raise RuntimeError(f"cannot start the decoder command {self.command[0]!r}: {exc.strerror}") from None
        self._lines: queue.Queue = queue.Queue()
        proc, lines, limit = self._proc, self._lines, self.MAX_REPLY

        def read():  # a thread, so that a command that never replies can be waited for with a timeout
            while True:
                line = proc.stdout.readline(limit + 1)
                lines.put(line)
                if not line or len(line) > limit:
                    return

        threading.Thread(target=read, daemon=True).start()
        hello = self._reply()
        if hello.get("ready") is not True:
            self.close()
            raise RuntimeError(
                f"the decoder command {' '.join(self.command)!r} did not announce itself "
                f'(its first line must be {{"ok": true, "ready": true}})'
                + (f": {hello['broken']}" if hello.get("broken") else "")
            )

    def _stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def _reply(self) -> dict:
        import queue

        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            self._stop()
            return {"ok": False, "broken": f"the decoder command gave no reply within {self.timeout:g} s (stopped)"}
        if not line:
            self._proc.wait()
            return {"ok": False, "broken": f"the decoder command exited (status {self._proc.returncode})"}
        if len(line) > self.MAX_REPLY:
            self._stop()
            return {
                "ok": False,
                "broken": f"the decoder command replied a line of more than {self.MAX_REPLY} characters",
            }
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self._stop()  # out of step: its next line would be taken for the next stream's reply
            return {"ok": False, "broken": f"the decoder command replied {line.strip()[:80]!r}, not a JSON object"}
        return reply

    def __call__(self, data: bytes, sequence: str | None = None):
        import os

        if self._proc.poll() is not None:  # it died on an earlier stream: start afresh
            self._start()
        self._n += 1
        src = os.path.join(self._tmp.name, f"{self._n}.nnr")
        npz = os.path.join(self._tmp.name, f"{self._n}.npz")
        with open(src, "wb") as fh:
            fh.write(bytes(data))
        request = {"op": "decompress", "in": src, "npz": npz, "sequence": sequence, "id": self._n}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        reply = self._reply()
        if "id" in reply and reply["id"] != self._n and not reply.get("broken"):
            self._stop()  # out of step: its later replies would be taken for other streams
            reply = {"ok": False, "broken": f"the decoder command replied to request {reply['id']!r}, not {self._n}"}
        try:
            if reply.get("broken"):  # a crash is not a rejection: a must-fail stream is not passed by it
                raise CommandProtocolError(reply["broken"])
            if reply.get("ok") is True:
                return _read_output(npz, reply.get("names"))
            if reply.get("ok") is False and isinstance(reply.get("unsupported"), str):
                raise NotImplementedError(reply["unsupported"])  # said so: skipped, not passed
            if reply.get("ok") is False and isinstance(reply.get("error"), str):
                raise CommandError(f"the decoder command rejected the stream: {reply['error']}")
            self._stop()  # (none of the protocol's replies: not a rejection, and maybe out of step)
            raise CommandProtocolError(
                f"the decoder command replied {json.dumps(reply)[:80]}, none of the protocol's replies "
                '({"ok": true, ...}, {"ok": false, "error": ...}, {"ok": false, "unsupported": ...})'
            )
        finally:
            for path in (src, npz):
                if os.path.exists(path):
                    os.remove(path)

    def close(self):
        """Close the command's stdin, wait for it to exit, remove the temporary files.

        Examples
        --------
        See :class:`CommandAdapter`.
        """
        import subprocess

        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_output(npz: str, names) -> OrderedDict:
    """The tensors a decoder command wrote, in the order it names them; any failure to read them (a missing,
    damaged or unreadable file, a name it does not hold) is a broken protocol, never a skip or a pass."""
    try:
        with np.load(npz, allow_pickle=False) as z:
            names = names if names else list(z.files)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"'names' is {names!r}, not a list of tensor names")
            return OrderedDict((k, z[k]) for k in names)
    except Exception as exc:  # noqa: BLE001 - NotImplementedError (an unknown zip method) included
        raise CommandProtocolError(
            f"the decoder command's output {os.path.basename(npz)} cannot be read ({type(exc).__name__}: {exc})"
        ) from None


class CommandError(RuntimeError):
    """A decoder command rejected a stream or broke the protocol (the message says which).

    It is not an :class:`nnc.errors.NNCError`: the decoder under test is not nnc,
    and :func:`verify_suite` counts it as that decoder's rejection of the stream.

    Examples
    --------
    >>> from nnc.verify import CommandError
    >>> issubclass(CommandError, RuntimeError)
    True
    """


class CommandProtocolError(RuntimeError):
    """A decoder command exited or replied something other than a JSON object: a broken harness or decoder, not a
    rejection of the stream (:func:`verify_suite` fails the stream, whatever its group).

    Examples
    --------
    >>> from nnc.verify import CommandError, CommandProtocolError
    >>> issubclass(CommandProtocolError, CommandError)
    False
    """


#: Decoder name -> adapter factory, for ``verify_suite(suite, decoder=name)``.
DECODERS = {
    "nnc": NNCAdapter,
    "nnc-python": lambda: NNCAdapter("python"),
    "nnc-random-access": NNCRandomAccessAdapter,
    "nnc-python-random-access": lambda: NNCRandomAccessAdapter("python"),
    "nnc-api": NNCAPIAdapter,
    "nnc-python-api": lambda: NNCAPIAdapter("python"),
}


def _check_expected(entry: dict, out) -> tuple[bool, str]:
    expected = entry["expected"]
    names = [t["name"] for t in expected["tensors"]]
    if list(out) != names:
        return False, f"tensor names/order differ: {list(out)[:4]}... vs {names[:4]}..."
    for t in expected["tensors"]:
        a = np.asarray(out[t["name"]])
        if str(a.dtype) != t["dtype"]:
            return False, f"{t['name']}: dtype {a.dtype}, expected {t['dtype']}"
        if list(a.shape) != t["shape"]:
            return False, f"{t['name']}: shape {list(a.shape)}, expected {t['shape']}"
        if tensor_sha256(a) != t["sha256"]:
            return False, f"{t['name']}: values differ (sha256)"
    if output_sha256(out) != expected["output_sha256"]:
        return False, "whole-output hash differs"
    return True, "ok"


def verify_suite(
    suite: str | Path, decoder: Callable | str = "nnc", *, groups=None, names=None, profiles=None
) -> list[Result]:
    """Decode every stream of a suite with ``decoder``; return one Result per stream.

    A stream of a decoding group passes when the names, order, dtypes, shapes
    and hashes of the output equal the manifest's.  A must-fail stream passes
    when the decoder raises: nnc's own errors must be of the stated class and
    cite the stated clause, while any exception of a foreign decoder counts as
    a rejection.  A stream the adapter cannot decode (``NotImplementedError``)
    is reported as passed with a ``"skipped: ..."`` detail.

    Parameters
    ----------
    suite : str or ``os.PathLike``
        Directory holding ``manifest.json`` and the streams it names.
    decoder : str or ``callable``
        A key of ``DECODERS`` (``"nnc"``, ``"nnc-python"``, ...), or an
        adapter ``adapter(data, sequence) -> {name: array}`` such as a
        :class:`CommandAdapter` (not closed here).  An
        adapter made from a name here is closed at the end.
    groups : ``Iterable[str]`` or None
        Only streams of these groups; None for all.
    names : ``Iterable[str]`` or None
        Only streams of these names; None for all.
    profiles : ``Iterable[int]`` or None
        Only streams of these profiles; None for all.

    Returns
    -------
    list of nnc.verify.Result
        In manifest order.

    Raises
    ------
    KeyError
        If ``decoder`` is an unknown name.
    OSError
        If the manifest or a stream cannot be read.
    nnc.errors.ManifestError
        If the manifest is malformed (:func:`read_manifest`), ``groups`` or
        ``names`` name one the suite lacks, or no stream is selected.

    Examples
    --------
    The module's example builds a suite; here, the must-fail streams of the
    conformance suite of a repository checkout:

    >>> import pathlib, nnc
    >>> from nnc.verify import verify_suite
    >>> suite = pathlib.Path(nnc.__file__).resolve().parent.parent / "conformance"
    >>> results = verify_suite(suite, groups=["must-fail"])
    >>> len(results) > 0 and all(r.passed for r in results)
    True
    >>> {r.detail.split()[0] for r in results}
    {'rejected'}
    """
    suite = Path(suite)
    manifest = read_manifest(suite)
    _check_selection(suite, manifest, groups, names, profiles)
    run = DECODERS[decoder]() if isinstance(decoder, str) else decoder
    results = []
    try:
        _run_entries(suite, manifest, run, results, groups, names, profiles)
    finally:
        if isinstance(decoder, str) and hasattr(run, "close"):
            run.close()
    return results


def read_manifest(suite: str | Path) -> dict:
    """A suite's ``manifest.json``, checked for what :func:`verify_suite` reads of each entry.

    Every entry needs a string ``name``, ``group`` and ``file`` (a relative path inside the
    suite); a must-fail entry the name of an :mod:`nnc.errors` class in ``expected_error``
    and a ``clause``; any other entry an ``expected`` output (:func:`describe_output`).

    Parameters
    ----------
    suite : str or ``os.PathLike``
        The suite's directory.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    OSError
        If the manifest cannot be read.
    nnc.errors.ManifestError
        If it is not JSON or an entry lacks what it needs; the message names the entry.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> from nnc.verify import read_manifest
    >>> suite = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (suite / "manifest.json").write_text(json.dumps({"streams": [{"name": "a", "group": "must-fail"}]}))
    >>> read_manifest(suite)
    Traceback (most recent call last):
        ...
    nnc.errors.ManifestError: .../manifest.json: stream 0 ('a'): 'file' must be a string
    """
    path = Path(suite) / "manifest.json"
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise errors.ManifestError(f"{path}: not JSON ({exc})") from None
    except RecursionError:  # hostile nesting
        raise errors.ManifestError(f"{path}: JSON nested too deeply to read") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise errors.ManifestError(f"{path}: {problem}")
    return manifest


def _manifest_problem(manifest) -> str | None:
    """What makes ``manifest`` unusable by :func:`verify_suite`, or None."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("streams"), list):
        return "no list of 'streams'"
    seen: set = set()
    for i, entry in enumerate(manifest["streams"]):
        if not isinstance(entry, dict):
            return f"stream {i} is not an object"
        where = f"stream {i} ({entry.get('name')!r})"
        for key in ("name", "group", "file"):
            if not isinstance(entry.get(key), str):
                return f"{where}: {key!r} must be a string"
        if entry["name"] in seen:  # (it would be verified, and counted, twice)
            return f"{where}: another stream has this name"
        seen.add(entry["name"])
        file = PurePosixPath(entry["file"])
        if file.is_absolute() or ".." in file.parts or not file.parts or "\0" in entry["file"]:
            return f"{where}: file {entry['file']!r} is not a path inside the suite"
        sequence = entry.get("sequence")
        if sequence is not None and not (isinstance(sequence, dict) and isinstance(sequence.get("id"), str)):
            return f"{where}: 'sequence' must be an object with a string 'id'"
        if entry["group"] == "must-fail":
            error = getattr(errors, str(entry.get("expected_error")), None)
            if not (isinstance(error, type) and issubclass(error, errors.NNCError)):
                return f"{where}: 'expected_error' must name a class of nnc.errors"
            if not isinstance(entry.get("clause"), str):
                return f"{where}: 'clause' must be a string"
            continue
        expected = entry.get("expected")
        tensor_keys = {"name": str, "dtype": str, "shape": list, "sha256": str}
        if not (
            isinstance(expected, dict)
            and isinstance(expected.get("output_sha256"), str)
            and isinstance(expected.get("tensors"), list)
            and all(
                isinstance(t, dict) and all(isinstance(t.get(k), kind) for k, kind in tensor_keys.items())
                for t in expected["tensors"]
            )
        ):
            return f"{where}: 'expected' must hold 'output_sha256' and 'tensors' of name, dtype, shape and sha256"
    return None


def _selected(entry, groups, names, profiles) -> bool:
    return not (
        (groups and entry["group"] not in groups)
        or (names and entry["name"] not in names)
        or (profiles is not None and entry.get("profile") not in profiles)
    )


def _check_selection(suite, manifest, groups, names, profiles) -> None:
    """Refuse a group or stream name the suite lacks (a typo), and a selection of no stream."""
    where = Path(suite) / "manifest.json"
    entries = manifest["streams"]
    for kind, asked, known in (
        ("group", groups, {e["group"] for e in entries}),
        ("stream", names, {e["name"] for e in entries}),
    ):
        unknown = [x for x in asked or () if x not in known]
        if unknown:
            raise errors.ManifestError(f"{where}: no {kind} named {unknown[0]!r} in the suite")
    if not any(_selected(e, groups, names, profiles) for e in entries):
        raise errors.ManifestError(f"{where}: no stream to verify" + (" (of the selection)" if entries else ""))


def _read_stream(suite, entry) -> bytes:
    """The bytes of an entry's stream: a regular file inside the suite once symbolic links are followed (not a
    device, a FIFO or a file elsewhere)."""
    path = Path(suite) / entry["file"]
    where = f"{Path(suite) / 'manifest.json'}: stream {entry['name']!r}"
    try:
        real, root = path.resolve(), Path(suite).resolve()
    except (OSError, RuntimeError) as exc:
        raise errors.ManifestError(f"{where}: {entry['file']!r} cannot be resolved ({exc})") from None
    if root not in real.parents:
        raise errors.ManifestError(f"{where}: {entry['file']!r} leads outside the suite (to {real})")
    if real.exists() and not real.is_file():
        raise errors.ManifestError(f"{where}: {entry['file']!r} is not a regular file")
    return path.read_bytes()


def _in_sequence_order(streams: list) -> list:
    """``streams`` with each sequence's members in position order, in the places the sequence's members hold
    (conformance/README.md: decode a sequence in position order, spec 14); ManifestError for positions that are
    not 0, 1, ... once each."""
    slots: dict = {}
    for i, e in enumerate(streams):
        seq = e.get("sequence") or {}
        if seq.get("id") is not None:
            slots.setdefault(seq["id"], []).append(i)
    ordered = list(streams)
    for seq_id, places in slots.items():
        members = [streams[i] for i in places]
        positions = [m["sequence"].get("position") for m in members]
        if sorted(p for p in positions if isinstance(p, int)) != list(range(len(members))):
            raise errors.ManifestError(
                f"sequence {seq_id!r}: positions {positions} are not 0 to {len(members) - 1}, once each"
            )
        for i, member in zip(places, sorted(members, key=lambda m: m["sequence"]["position"])):
            ordered[i] = member
    return ordered


def _run_entries(suite, manifest, run, results, groups, names, profiles):
    # a selected update needs the streams before it in its sequence decoded first, with the same state (spec 14)
    manifest = dict(manifest, streams=_in_sequence_order(manifest["streams"]))
    sequence_of = {e["name"]: (e.get("sequence") or {}).get("id") for e in manifest["streams"]}
    last_needed = {}
    for i, e in enumerate(manifest["streams"]):
        if sequence_of[e["name"]] is not None and _selected(e, groups, names, profiles):
            last_needed[sequence_of[e["name"]]] = i
    for i, entry in enumerate(manifest["streams"]):
        seq = sequence_of[entry["name"]]  # null: not in a sequence
        if not _selected(entry, groups, names, profiles):
            if seq is not None and i < last_needed.get(seq, -1):
                try:  # an earlier member, decoded for the state only; its own verdict is not asked for
                    run(_read_stream(suite, entry), seq)
                except Exception:  # noqa: BLE001, S110 - the selected member's verdict says what went wrong
                    pass
            continue
        data = _read_stream(suite, entry)
        t0 = time.perf_counter()
        try:
            out = run(data, seq)
        except NotImplementedError as exc:
            results.append(Result(entry["name"], entry["group"], True, f"skipped: {exc}", 0.0))
            continue
        except InconsistentDecoding as exc:
            results.append(Result(entry["name"], entry["group"], False, str(exc)[:160], time.perf_counter() - t0))
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a verdict
            dt = time.perf_counter() - t0
            if (
                entry.get("wrong_entry_points")
                and getattr(run, "checks_entry_points", False)
                and isinstance(exc, errors.DecodeError)
                and exc.clause == "11.4"
            ):
                results.append(
                    Result(entry["name"], entry["group"], True, "its wrong entry points detected (spec 11.4)", dt)
                )
                continue
            if entry["group"] != "must-fail":
                results.append(
                    Result(entry["name"], entry["group"], False, f"{type(exc).__name__}: {str(exc)[:120]}", dt)
                )
                continue
            want = getattr(errors, entry["expected_error"])
            # a foreign decoder passes by rejecting; ours must raise the stated class and clause
            if isinstance(exc, errors.NNCError):
                ok = isinstance(exc, want) and exc.clause == entry["clause"]
                detail = (
                    f"rejected with {type(exc).__name__} (spec {exc.clause})"
                    if ok
                    else f"raised {type(exc).__name__} (spec {exc.clause}), expected "
                    f"{entry['expected_error']} (spec {entry['clause']})"
                )
            elif isinstance(exc, CommandError):
                ok, detail = True, f"rejected with {type(exc).__name__}"
            else:  # a crash or a broken protocol is not a rejection
                ok, detail = False, f"{type(exc).__name__}: {str(exc)[:120]} (not a rejection)"
            results.append(Result(entry["name"], entry["group"], ok, detail, dt))
            continue
        dt = time.perf_counter() - t0
        if entry["group"] == "must-fail":
            results.append(Result(entry["name"], entry["group"], False, "decoded a stream that must fail", dt))
        else:
            ok, detail = _check_expected(entry, out)
            results.append(Result(entry["name"], entry["group"], ok, detail, dt))


def format_table(results: list[Result]) -> str:
    """The results as a plain-text table with a pass/fail count, as ``nnc verify`` prints it.

    Parameters
    ----------
    results : list of nnc.verify.Result
        The verdicts, e.g. from :func:`verify_suite`.

    Returns
    -------
    str
        One line per result between rules, then ``"N passed, M failed"`` (and
        ``", K skipped"`` for streams the decoder under test does not handle).

    Examples
    --------
    >>> from nnc.verify import Result, format_table
    >>> table = format_table([Result("a", "must-fail", True, "rejected", 0.001),
    ...                       Result("b", "profile-0", False, "values differ", 0.002)])
    >>> print(table.splitlines()[-1])
    1 passed, 1 failed
    >>> print(format_table([Result("c", "profile-1", True, "skipped: no DQ", 0.0)]).splitlines()[-1])
    0 passed, 0 failed, 1 skipped
    """
    width = max([len(r.name) for r in results] + [6])
    group_width = max([len(r.group) for r in results] + [9])
    rule = "-" * (width + group_width + 36)
    lines = [f"{'stream':<{width}}  {'group':<{group_width}}  {'result':<6}  {'ms':>8}  detail", rule]

    def skipped(r):
        return r.passed and r.detail.startswith("skipped")

    for r in results:
        verdict = "SKIP" if skipped(r) else "PASS" if r.passed else "FAIL"
        lines.append(f"{r.name:<{width}}  {r.group:<{group_width}}  {verdict:<6}  {1000 * r.seconds:>8.1f}  {r.detail}")
    n_skipped = sum(skipped(r) for r in results)
    passed = sum(r.passed for r in results) - n_skipped
    lines.append(rule)
    lines.append(
        f"{passed} passed, {len(results) - passed - n_skipped} failed" + (f", {n_skipped} skipped" if n_skipped else "")
    )
    return "\n".join(lines)
