r"""The one exception hierarchy of nnc (spec clause 15).

::

    NNCError
    ├── DecodeError          the input is not a valid stream
    │   ├── TruncatedError   the input ends too early
    │   ├── LimitError       the input asks for more than the configured limits allow
    │   └── UnsupportedError the input is valid but uses a tool nnc does not decode
    ├── EncodeError          the input cannot be encoded as asked
    ├── UpdateError          a decoded update cannot be applied to a model
    ├── OutputBufferError    an array given to the decoder (out=) cannot hold a tensor
    └── ManifestError        a conformance suite's manifest.json is malformed

    UserWarning
    └── PrecisionWarning     an encoded tensor kept none of its signal (it decodes as zeros)

Every error carries, where they apply, the spec clause it relates to (``clause``)
and the byte offset in the stream (``offset``).  They are part of ``str(error)``.
:class:`~nnc.errors.DecodeError` and :class:`~nnc.errors.EncodeError` are also
:class:`ValueError`\ s, so code that catches ``ValueError`` catches them too.
Model files that cannot be read or written raise
:class:`nnc.formats.FormatError`, also an :class:`~nnc.errors.NNCError` (and a
``ValueError``).  A path that cannot be opened at all (a stream or a model
file that does not exist, a folder without write permission) raises the
``OSError`` that ``open()`` raises, naming the path: ``FileNotFoundError``
for ``nnc.Decoder("missing.nnr")``, as for any Python file API.

The line between the two kinds: bad *data* (a stream, a model file, a tensor's values, a
state file) raises an :class:`NNCError`; a *call* that no data could make right (an
argument of the wrong type, an unknown option name, a negative limit) raises the
built-in ``TypeError`` or ``ValueError``, as Python's own APIs do (the checks the engines
and the decoder mark as api checks). The conformance verifier's
``nnc.verify.CommandError`` is deliberately not an :class:`NNCError`: it is another
decoder's rejection of a stream, not nnc's.

Examples
--------
>>> import nnc
>>> try:
...     nnc.decode(b"\x00\x04\x02")
... except nnc.DecodeError as exc:
...     print(type(exc).__name__, exc.clause, exc.offset)
TruncatedError 3.2 0
"""

from __future__ import annotations


class NNCError(Exception):
    """Base class of every error nnc raises for bad data (see the module's note on calls).

    The message, the spec clause and the byte offset are kept as attributes
    and joined into ``str(error)`` as ``"message [spec clause, byte offset
    offset]"``.  Errors survive pickling (e.g. across process pools) with all
    three attributes.

    Parameters
    ----------
    message : str
        What is wrong, in words.
    clause : str or None
        The spec clause the error relates to, e.g. ``"3.2"``; None if none applies.
    offset : int or None
        The byte offset in the stream the error concerns; None if none applies.

    Examples
    --------
    >>> from nnc.errors import NNCError
    >>> err = NNCError("bad value", clause="7.4", offset=12)
    >>> str(err)
    'bad value [spec 7.4, byte offset 12]'
    >>> err.message, err.clause, err.offset
    ('bad value', '7.4', 12)
    >>> str(NNCError("no location"))
    'no location'
    """

    def __init__(self, message: str, *, clause: str | None = None, offset: int | None = None):
        #: What is wrong, in words (without the clause and offset).
        self.message = message
        #: The spec clause the error relates to, or None.
        self.clause = clause
        #: The byte offset in the stream the error concerns, or None.
        self.offset = offset
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.clause is not None:
            where.append(f"spec {self.clause}")
        if self.offset is not None:
            where.append(f"byte offset {self.offset}")
        return f"{self.message} [{', '.join(where)}]" if where else self.message

    def at(self, base_offset: int) -> "NNCError":
        """Return the same error with its offset moved by ``base_offset`` bytes.

        Used when an error found inside a sub-buffer (a unit, a payload) is
        reported relative to the whole stream.  The error itself is not
        changed; a new one of the same class is returned, with the same
        ``__cause__``.

        Parameters
        ----------
        base_offset : int
            Offset of the sub-buffer in the whole stream.  An error without an
            offset gets ``base_offset`` itself.

        Returns
        -------
        nnc.errors.NNCError
            A new error of the same class, message and clause.

        Examples
        --------
        >>> from nnc.errors import DecodeError
        >>> inner = DecodeError("bad bin", clause="9.4", offset=3)
        >>> outer = inner.at(100)
        >>> type(outer).__name__, outer.offset, inner.offset
        ('DecodeError', 103, 3)
        >>> DecodeError("no offset").at(100).offset
        100
        """
        offset = base_offset if self.offset is None else self.offset + base_offset
        new = type(self)(self.message, clause=self.clause, offset=offset)
        new.__cause__ = self.__cause__
        return new

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.clause, self.offset))


def _rebuild(cls, message, clause, offset):
    return cls(message, clause=clause, offset=offset)


class DecodeError(NNCError, ValueError):
    r"""The input is not a valid NNC stream, or not one this decoder accepts.

    Raised by the decoder and the container parser for any stream that breaks
    the syntax or a decoding rule (spec 15.1).  Its subclasses say more:
    :class:`~nnc.errors.TruncatedError`, :class:`~nnc.errors.LimitError`, :class:`~nnc.errors.UnsupportedError`.
    The parameters are those of :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import nnc
    >>> nnc.decode(b"\x00\x03\x00")  # a start unit without its general_profile_idc
    Traceback (most recent call last):
        ...
    nnc.errors.DecodeError: unit header runs past the end of its unit [spec 3.2, byte offset 0]
    """


class TruncatedError(DecodeError):
    """The input ends before the syntax it declares is complete.

    Raised when a unit size field, a unit or a CABAC payload runs past the end
    of the data (spec 3.1, 3.2, 9.4).  The parameters are those of
    :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import nnc
    >>> stream = nnc.encode({"w": [0.5, -0.25, 1.0]}, qp=-8, dq=False, nonweight_qp=None)
    >>> nnc.decode(stream[:-1])
    Traceback (most recent call last):
        ...
    nnc.errors.TruncatedError: unit of ... bytes runs past the end of the stream (... bytes left) [spec 3.2, byte offset ...]
    """


class LimitError(DecodeError):
    """The input declares more data than the configured limits allow (spec 15.2).

    The limits are those of a :class:`nnc.decoder.Limits`, and the bound a
    payload's size puts on the number of elements it can code.  The parameters
    are those of :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import nnc
    >>> stream = nnc.encode({"w": [[0.5, 0.25], [1.0, 0.0]]}, qp=-8, dq=False)
    >>> nnc.decode(stream, limits=nnc.Limits(max_tensor_elements=3))
    Traceback (most recent call last):
        ...
    nnc.errors.LimitError: tensor 'w' declares dimensions [2, 2], beyond the limit of 3 elements [spec 15.2, ...]
    """


class UnsupportedError(DecodeError):
    """The input is valid but uses a coding tool nnc does not decode (yet).

    Examples are profiles other than 0 and 1, quantisation (NNR_QNT) and
    aggregate (NNR_AGG) units, indexed topology references and decomposed
    (DC) block NDUs.  The parameters are those of :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import nnc
    >>> from nnc import container
    >>> stream = nnc.encode({"w": [1.0, 2.0]}, qp=-8, dq=False, nonweight_qp=None)
    >>> nnc.decode(container.build_str(profile=2) + stream[4:])
    Traceback (most recent call last):
        ...
    nnc.errors.UnsupportedError: general_profile_idc 2 is not profile 0 or 1 [spec 4, byte offset 0]
    """


class EncodeError(NNCError, ValueError):
    """The tensors or options given to the encoder cannot be encoded.

    Raised for invalid encoder options (a qp_density outside 0..7, both qp and
    step, ...), for tensors that cannot be encoded as asked (unsupported dtypes,
    NaN or Inf in a member of a block NDU; elsewhere they are kept exactly in a
    RAW_FLOAT unit) and for values a syntax element cannot carry.  The parameters
    are those of :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import nnc
    >>> nnc.encode({"fc.weight": [[1.0, 2.0]], "fc.bias": [float("nan")]}, blocks=True)
    Traceback (most recent call last):
        ...
    nnc.errors.EncodeError: tensor 'fc.bias' holds nan at index [0]: a quantised tensor (here a member of a BLOCK unit, as blocks=True asks) cannot carry NaN or Inf; only a RAW_FLOAT NDU can: blocks='auto' (the default) or False stores it apart [spec 7.5]
    """


class UpdateError(NNCError, ValueError):
    """A decoded update cannot be applied to a model (:func:`nnc.decoder.apply_update`).

    Raised when the update holds full values rather than differences (adding
    them would double the model), or a tensor's shape differs from the model's.
    The parameters are those of :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import numpy as np, nnc
    >>> nnc.apply_update({"w": np.zeros(2)}, {"w": np.zeros(3)})
    Traceback (most recent call last):
        ...
    nnc.errors.UpdateError: update of 'w' has shape (3,), the model's is (2,)
    """


class OutputBufferError(NNCError, ValueError):
    """An output array given to the decoder (``out=``) cannot hold the tensor.

    Raised before anything is written into the array: it has another shape
    than the tensor, a dtype the tensor does not decode to, or is not a
    writable C-contiguous numpy array (checked before decoding), or a
    float16 array cannot hold the tensor's values (checked once they are
    decoded; arrays given for other tensors may be filled by then).  The
    parameters are those of :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import nnc, numpy as np
    >>> dec = nnc.Decoder(nnc.encode({"w": [[0.5, 0.25], [1.0, 0.0]]}, qp=-8))
    >>> dec.decode_tensor("w", out=np.empty((4,), np.float32))
    Traceback (most recent call last):
        ...
    nnc.errors.OutputBufferError: out= for tensor 'w' has shape (4,), the tensor's is (2, 2)
    """


class ManifestError(NNCError, ValueError):
    """A conformance suite's ``manifest.json`` is not JSON, or an entry lacks what
    :func:`nnc.verify.verify_suite` needs (conformance/README.md, "Layout").

    The message names the manifest and the entry.  The parameters are those of
    :class:`~nnc.errors.NNCError`.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> from nnc.errors import ManifestError
    >>> from nnc.verify import verify_suite
    >>> suite = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (suite / "manifest.json").write_text(json.dumps({"streams": [{"name": "a"}]}))
    >>> try:
    ...     verify_suite(suite)
    ... except ManifestError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    stream 0 ('a'): 'group' must be a string
    """


class PrecisionWarning(UserWarning):
    """A warning, not an error: tensors whose quantisation kept none of their signal (non-zero values that all decode
    as 0, at a step too coarse for them: a learning rate or a small scale coded at the weights' qp).

    :func:`nnc.encode` and :func:`nnc.encode_model` issue it, naming the tensors; the stream is written. The
    ``nnc encode`` command reports them in its own words. Turn it into an error with
    ``warnings.simplefilter("error", nnc.PrecisionWarning)``.

    Examples
    --------
    >>> import warnings, nnc
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = nnc.encode({"lr": 3e-4, "w": [[0.5, -0.25]]})
    >>> [type(w.message).__name__ for w in caught], "'lr'" in str(caught[0].message)
    (['PrecisionWarning'], True)
    """


def about_file(path, exc: BaseException) -> str:
    """The message of ``exc`` as one line about the file at ``path``: ``"PATH: message"``.

    For command-line tools that report an error on an input file.  A message that
    already starts with the path is kept as it is; an ``OSError`` gives its
    ``strerror`` (``"No such file or directory"``).

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file the error is about.
    exc : BaseException
        The error.

    Returns
    -------
    str
        One line.

    Examples
    --------
    >>> from nnc.errors import DecodeError, about_file
    >>> about_file("m.nnr", DecodeError("bad bin", clause="9.4", offset=3))
    'm.nnr: bad bin [spec 9.4, byte offset 3]'
    >>> about_file("m.nnr", FileNotFoundError(2, "No such file or directory", "m.nnr"))
    'm.nnr: No such file or directory'
    >>> about_file("m.npz", ValueError("m.npz: not a readable .npz archive"))
    'm.npz: not a readable .npz archive'
    """
    import os

    where = os.fspath(path)
    message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return message if message.startswith(where) else f"{where}: {message}"


__all__ = [
    "about_file",
    "NNCError",
    "DecodeError",
    "TruncatedError",
    "LimitError",
    "UnsupportedError",
    "EncodeError",
    "UpdateError",
    "OutputBufferError",
    "ManifestError",
    "PrecisionWarning",
]
