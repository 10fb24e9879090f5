"""A numcodecs codec: NNC coding of array chunks (zarr, and anything else that takes numcodecs codecs).

Each chunk becomes one NNC stream holding one tensor, so a chunk decodes with any
conforming decoder (:func:`nnc.decode`, NNCodec). Float chunks are quantised (lossy: the
step comes from ``qp``, ``step`` or ``target_snr``); integer and boolean chunks are coded
exactly. The decoded chunk has the encoded chunk's shape and dtype (``ml_dtypes``' bfloat16 and float8
too; without ml_dtypes installed such chunks decode as float32 arrays of their values).

numcodecs is optional: without it :class:`NNC` still encodes and decodes, and with it the
class is a :class:`numcodecs.abc.Codec` that :func:`numcodecs.get_codec` finds by its id
``"nnc"`` (registered through the ``numcodecs.codecs`` entry point).

Examples
--------
>>> import numpy as np
>>> from nnc.codec import NNC
>>> codec = NNC(qp=-20, dq=False)  # step 2**-5, nearest rounding
>>> chunk = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
>>> back = codec.decode(codec.encode(chunk))
>>> back.shape, back.dtype, bool(np.abs(back - chunk).max() <= 2**-6)
((8, 8), dtype('float32'), True)
>>> NNC.from_config(codec.get_config()) == codec
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from functools import cache

import numpy as np

from . import narrow_floats
from ._options import DEFAULT_QP, as_number, check_bool
from .errors import DecodeError, EncodeError, NNCError, OutputBufferError
from .reconstruction import step_size

try:  # numcodecs is optional
    from numcodecs.abc import Codec as _CodecBase
except ImportError:  # pragma: no cover - exercised only where numcodecs is absent
    _CodecBase = object

__all__ = ["NNC", "zarr3_codec"]

#: Name of the one tensor in each chunk's stream.
CHUNK_TENSOR = "chunk"


class NNC(_CodecBase):
    """NNC (ISO/IEC 15938-17) coding of one array chunk per stream.

    Parameters
    ----------
    qp : int, optional
        Quantisation parameter of float chunks (step 2**(qp/4) at the default
        ``qp_density`` 2, spec 12.1). Default -38 when neither ``step`` nor
        ``target_snr`` is given.
    step : float, optional
        The step size itself, instead of ``qp`` (rounded to the nearest step a qp
        can signal).
    target_snr : float, optional
        Instead of a step: the coarsest qp whose reconstruction keeps each chunk's
        SNR (10 log10 of sum w² / sum (w - ŵ)²) at or above this many dB, chosen per
        chunk by bisection on the exact reconstruction (several encodes per chunk).
        A chunk that no qp brings to the target, and one with NaN or Inf, is stored raw,
        as with ``qp`` (float32 values: float16, bfloat16 and float32 chunks exactly,
        float64 ones rounded to float32). float8 chunks keep their values at any setting (a NaN as the
        format's NaN, without a payload).
    dq : bool
        Dependent (trellis) quantisation: about 1 dB more SNR at the same rate
        (default True).
    rdoq_lambda : float
        Rate-distortion quantisation strength (0: off), see :class:`nnc.encoder.Encoder`.

    Raises
    ------
    nnc.errors.EncodeError
        If more than one of ``qp``, ``step`` and ``target_snr`` is given, or on
        encoding integers outside int32 or float64 values beyond the float32 range,
        or a float64 chunk that neither a qp nor float32 raw values bring to
        ``target_snr``. (A float chunk with NaN or Inf is stored raw, in float32.)
    nnc.errors.DecodeError
        On decoding anything but a one-tensor NNC stream.
    """

    codec_id = "nnc"

    def __init__(
        self,
        qp: int | None = None,
        step: float | None = None,
        target_snr: float | None = None,
        dq: bool = True,
        rdoq_lambda: float = 0.0,
        **unknown,
    ):
        _check_setting_names(unknown)  # (an EncodeError naming it, as from_config gives, not Python's TypeError)
        if sum(x is not None for x in (qp, step, target_snr)) > 1:
            raise EncodeError("give at most one of qp, step and target_snr")
        # checked now (a string dq, a qp of -20.9), not at the first chunk; the encoder checks ranges again
        # the default qp is recorded, not None: an array's configuration keeps meaning what it meant when written
        if qp is None and step is None and target_snr is None:
            qp = DEFAULT_QP
        self.qp = None if qp is None else as_number("qp", qp, integer=True)
        self.step = None if step is None else as_number("step", step, integer=False)
        self.target_snr = None if target_snr is None else as_number("target_snr", target_snr, integer=False)
        check_bool("dq", dq)
        self.dq = bool(dq)
        self.rdoq_lambda = as_number("rdoq_lambda", rdoq_lambda, integer=False)
        #: Settings of a stored configuration that this version does not know (:meth:`from_config`): it decodes,
        #: but does not encode.
        self.unknown_settings: dict = {}
        if self.qp is not None:
            try:
                step_size(self.qp, 2)  # (the encoder's qp_density)
            except NNCError as exc:
                raise EncodeError(f"qp: {exc.message}") from None
        if self.step is not None and not (self.step > 0 and math.isfinite(self.step)):
            raise EncodeError(f"step must be a positive finite number, not {step!r}")
        if self.step is not None and not 2.0**-126 <= self.step <= float(np.finfo(np.float32).max):
            raise EncodeError(f"step size {step!r} is beyond the float32 steps a qp can signal (spec 12.1)")
        if self.target_snr is not None and not math.isfinite(self.target_snr):
            raise EncodeError(f"target_snr must be a finite number of dB, not {target_snr!r}")
        if not 0 <= self.rdoq_lambda < math.inf:
            raise EncodeError(f"rdoq_lambda must be a finite number >= 0, not {rdoq_lambda!r}")

    def encode(self, buf) -> bytes:
        """The NNC stream of one chunk (an array, or anything with the buffer protocol)."""
        from .encoder import Encoder
        from .encoding.quantiser import is_finite

        if self.unknown_settings:
            raise EncodeError(
                f"this codec's configuration has setting(s) {', '.join(map(repr, sorted(self.unknown_settings)))} "
                "that this version of nnc does not know (written by a later one?): it decodes such chunks but "
                "does not write them; upgrade nnc to write to the array"
            )
        chunk = _as_array(buf)
        extra: dict = {}
        if not chunk.dtype.isnative and chunk.dtype.itemsize > 1:
            # coded as values; the stream records the byte order (spec 6.2.1), so that decoding gives the chunk's
            # own bytes back (zarr v2 reads the decoded buffer as bytes of the chunk's dtype)
            extra["byteorder"] = chunk.dtype.byteorder
            chunk = chunk.astype(chunk.dtype.newbyteorder("="))
        if chunk.ndim > 1 and chunk.flags.f_contiguous and not chunk.flags.c_contiguous:
            # coded transposed: its C order is the chunk's memory order, whose bytes numcodecs' users read back
            extra["order"] = "F"  # spec 6.2.1
            chunk = chunk.T
        # (a chunk's step is the configuration's: no floor of the model tensors of one dimension, spec A.7)
        options = dict(dq=self.dq, rdoq_lambda=self.rdoq_lambda, nonweight_qp=None, nonweight_snr_db=None)
        # a chunk with NaN or Inf has no SNR: it is stored raw, exactly, as at any qp (float8: coded exactly)
        quantised = chunk.dtype.kind == "f" or chunk.dtype.name == "bfloat16"
        if self.target_snr is not None and quantised and np.any(chunk) and is_finite(chunk):
            return self._encode_for_snr(chunk, options, extra)
        if self.step is not None:
            options["step"] = self.step
        else:
            options["qp"] = self.qp
        return Encoder(**options).encode({CHUNK_TENSOR: chunk}, extra_metadata=extra).stream

    def _encode_for_snr(self, chunk: np.ndarray, options: dict, extra: dict) -> bytes:
        """The stream of the coarsest qp whose decoded chunk meets ``target_snr`` (exact, not estimated).

        Only qps with a float32 step and int32 levels for the chunk are tried, each coded as ``NNC(qp=...)``
        codes it (raw when that is smaller). A qp whose values would round beyond the float32 range misses the
        target. When no qp meets it the chunk is stored raw: exact but for float64 values.
        """
        from .encoder import Encoder
        from .encoding.quantiser import INT32_MAX, as_float_array, levels_fit_int32

        values, dtype_name = as_float_array(CHUNK_TENSOR, chunk)  # refuses float64 values beyond float32 first
        x = chunk.astype(np.float64)
        scale = float(np.abs(x).max())  # errors measured on x / scale: the squares of 1e-200 do not underflow
        with np.errstate(over="ignore", divide="ignore"):  # a huge target allows 0, a hugely negative one inf
            allowed = float(((x / scale) ** 2).sum() / np.float64(10.0) ** (self.target_snr / 10))
        lowest, hi = _qp_range()
        peak = max(float(values.max()), -float(values.min()))
        lo = max(lowest, int(np.floor(4 * (np.log2(peak) - np.log2(INT32_MAX)))) - 8) if peak > 0 else lowest
        while not levels_fit_int32(peak, step_size(lo, 2)):  # the encoder's int32 test (peak < float32 max)
            lo += 1

        good = bad = None
        good_stream = b""

        def attempt(qp: int) -> None:
            nonlocal good, bad, good_stream
            result = Encoder(qp=qp, **options).encode({CHUNK_TENSOR: chunk}, extra_metadata=extra)
            t = result.tensors[CHUNK_TENSOR]
            decoded = narrow_floats.as_stored(dtype_name, t.reconstruction).astype(np.float64)
            if t.kept_raw is None and _scaled_error(decoded, x, scale) <= allowed:
                good, good_stream = qp, result.stream
            else:  # (kept_raw: values beyond float32 at this qp, so at any coarser one)
                bad = qp

        # Uniform quantisation leaves about step²/12 per weight: start there, bracket, bisect.
        with np.errstate(divide="ignore"):
            guess = 4 * (np.log2(np.sqrt(12 * allowed / x.size)) + np.log2(scale))
        attempt(int(min(max(np.floor(guess), lo), hi)))
        width = 4
        while (good is None and bad > lo) or (bad is None and good < hi):
            attempt(max(bad - width, lo) if good is None else min(good + width, hi))
            width *= 4
        while bad is not None and good is not None and bad - good > 1:
            attempt((good + bad) // 2)
        if good is not None:
            return good_stream
        raw = Encoder(raw=[CHUNK_TENSOR], **options).encode({CHUNK_TENSOR: chunk}, extra_metadata=extra)
        if _scaled_error(raw.tensors[CHUNK_TENSOR].reconstruction.astype(np.float64), x, scale) > allowed:
            raise EncodeError(
                f"no qp reaches {self.target_snr:g} dB on this {chunk.dtype} chunk, nor do its values stored "
                "raw as float32: give a lower target_snr"
            )
        return raw.stream

    def decode(self, buf, out=None):
        """The chunk of an NNC stream, in its recorded dtype; copied into ``out`` when that is given (same number
        of bytes, put into a C- or Fortran-contiguous ``out``'s memory in order, as numcodecs does; another
        ``out`` must have the chunk's dtype and is filled in C order, else OutputBufferError)."""
        from .decoder import Decoder, refuse_differences, restore_model_view

        try:
            data = buf if isinstance(buf, bytes) else _as_array(buf).tobytes(order="A")
        except EncodeError:
            raise DecodeError(f"NNC decodes a stream given as bytes or a buffer, not a {type(buf).__name__}") from None
        decoder = Decoder(data)
        refuse_differences(decoder, "a chunk's stream holds its values")
        if decoder.names() != [CHUNK_TENSOR]:
            raise DecodeError(
                f"an NNC chunk stream holds one tensor named {CHUNK_TENSOR!r}, this one {decoder.names()!r}"
            )
        restored, dtypes = restore_model_view({CHUNK_TENSOR: decoder.decode_tensor(CHUNK_TENSOR)}, decoder.metadata)
        chunk = _in_narrow_dtype(dtypes.get(CHUNK_TENSOR), restored[CHUNK_TENSOR])
        if decoder.metadata.get("byteorder") in (">", "<") and chunk.dtype.itemsize > 1:
            chunk = chunk.astype(chunk.dtype.newbyteorder(decoder.metadata["byteorder"]))  # the chunk's own order
        if decoder.metadata.get("order") == "F":
            chunk = chunk.T  # the chunk's shape, in Fortran order (spec 6.2.1)
        if out is None:
            return chunk
        flat = np.ravel(chunk, order="K")  # the chunk's elements in memory order, as its bytes go
        try:
            target = out if isinstance(out, np.ndarray) else np.asarray(memoryview(out))  # a view: never a copy
        except TypeError:
            raise OutputBufferError(f"out must be an array or a buffer, not a {type(out).__name__}") from None
        if target.dtype.hasobject:
            raise OutputBufferError(f"out has dtype {target.dtype}, which holds Python objects, not the chunk's bytes")
        if not target.flags.writeable:
            raise OutputBufferError("out is read-only")
        if target.nbytes != chunk.nbytes:
            raise OutputBufferError(f"out holds {target.nbytes} bytes, the decoded chunk {chunk.nbytes}")
        # numcodecs' rule: the chunk's bytes go into out's memory in its memory order (Fortran order too)
        fortran = target.flags.f_contiguous and not target.flags.c_contiguous
        if target.dtype != chunk.dtype and target.dtype.newbyteorder("=") == chunk.dtype.newbyteorder("="):
            # another byte order: the values, not the bytes
            np.copyto(target, flat.reshape(target.shape, order="F" if fortran else "C"))
        elif target.flags.c_contiguous or fortran:
            memory = target.T if fortran else target  # C-contiguous either way: reshape(-1) is a view
            memory.reshape(-1).view(np.uint8)[:] = flat.view(np.uint8)
        elif target.dtype == chunk.dtype:
            np.copyto(target, flat.reshape(target.shape))  # element by element in C order, as the bytes go
        else:
            raise OutputBufferError(
                f"out is not C-contiguous and has dtype {target.dtype}, the chunk {chunk.dtype}: "
                "give a contiguous array or one of the chunk's dtype"
            )
        return out

    def get_config(self) -> dict:
        """The codec's settings as a JSON-able dict with its ``id``."""
        return dict(
            id=self.codec_id,
            qp=self.qp,
            step=self.step,
            target_snr=self.target_snr,
            dq=self.dq,
            rdoq_lambda=self.rdoq_lambda,
            **self.unknown_settings,
        )

    @classmethod
    def from_config(cls, config: dict) -> "NNC":
        """A codec from :meth:`get_config`'s dict.

        Settings this version does not know (from a configuration a later version wrote, as
        zarr stores it with an array) are kept in :attr:`unknown_settings`, with a warning:
        the codec decodes, so that the array can be read, but refuses to encode.
        """
        if not isinstance(config, Mapping):
            raise EncodeError(f"a codec configuration is a dict, not {type(config).__name__}")
        config = dict(config)
        codec_id = config.pop("id", cls.codec_id)
        if codec_id != cls.codec_id:
            raise EncodeError(f"the configuration is for codec {codec_id!r}, not {cls.codec_id!r}")
        unknown = {k: config.pop(k) for k in sorted(set(config) - set(_SETTINGS))}
        codec = cls(**config)
        if unknown:
            warnings.warn(
                f"NNC codec setting(s) {', '.join(map(repr, unknown))} unknown to this version of nnc: "
                "chunks decode, but writing needs a version that knows them",
                stacklevel=2,
            )
            codec.unknown_settings = unknown
        return codec

    def __eq__(self, other) -> bool:
        return isinstance(other, NNC) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, v) for k, v in self.get_config().items() if k not in self.unknown_settings)))

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id" and v is not None)
        return f"NNC({settings})"


def _scaled_error(decoded: np.ndarray, x: np.ndarray, scale: float) -> float:
    """The squared error of ``decoded`` against ``x``, both divided by ``scale``."""
    return float((((decoded - x) / scale) ** 2).sum())


#: The settings :class:`NNC` takes.
_SETTINGS = ("qp", "step", "target_snr", "dq", "rdoq_lambda")


def _check_setting_names(settings) -> None:
    """EncodeError for a setting :class:`NNC` does not take (rather than Python's TypeError)."""
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise EncodeError(
            f"unknown NNC codec setting(s) {', '.join(map(repr, unknown))}: it takes "
            "qp, step, target_snr, dq and rdoq_lambda"
        )


@cache
def _qp_range() -> tuple[int, int]:
    """The finest and the coarsest qp whose step is a finite non-zero float32 (qp_density 2, spec 12.1)."""
    valid = []
    for qp in range(-1024, 1024):
        try:
            step_size(qp, 2)
        except NNCError:
            continue
        valid.append(qp)
    return valid[0], valid[-1]


def _in_narrow_dtype(name, chunk: np.ndarray) -> np.ndarray:
    """A chunk recorded as bfloat16 or float8 (float32 values, as the decoder gives them) in that ``ml_dtypes``
    dtype; any other chunk, and without ml_dtypes, as it is."""
    if not narrow_floats.is_narrow(name):
        return chunk
    try:
        import ml_dtypes
    except ImportError:
        return chunk
    bits = narrow_floats.from_float32(name, chunk)  # exact: the values are the format's (as_stored)
    return np.asarray(bits).reshape(chunk.shape).view(getattr(ml_dtypes, name))


def _as_array(buf) -> np.ndarray:
    """A C- or Fortran-contiguous ndarray view of an array or buffer (a C copy only if it is neither)."""
    try:
        arr = np.asarray(buf) if isinstance(buf, np.generic) else buf  # (ml_dtypes scalars have no buffer)
        arr = arr if isinstance(arr, np.ndarray) else np.asarray(memoryview(arr))
    except TypeError:
        raise EncodeError(f"NNC codes an array or a buffer, not a {type(buf).__name__}") from None
    if arr.dtype == object:
        raise EncodeError("NNC codes numeric arrays, not object arrays")
    contiguous = arr.flags.c_contiguous or arr.flags.f_contiguous
    return arr if contiguous else arr.copy(order="C")  # (np.ascontiguousarray makes 0-d 1-d)


# -- zarr version 3 ------------------------------------------------------------------

#: The name of the codec in zarr v3 array metadata (numcodecs' namespace, then the id).
ZARR3_NAME = "numcodecs.nnc"

_zarr3_class = None


def _zarr3_codec_class():
    """Build :class:`NNCZarr3` on first use (importing zarr is slow, and zarr is optional)."""
    global _zarr3_class
    if _zarr3_class is not None:
        return _zarr3_class
    import numcodecs

    try:  # zarr >= 3.1.3 holds numcodecs' zarr 3 wrappers
        from zarr.codecs.numcodecs import _NumcodecsArrayBytesCodec
    except ImportError:  # numcodecs < 0.16 still held them in numcodecs.zarr3
        from numcodecs.zarr3 import _NumcodecsArrayBytesCodec
    from zarr.registry import register_codec

    numcodecs.register_codec(NNC)  # the wrapper finds the codec by its id (also an entry point)

    class NNCZarr3(_NumcodecsArrayBytesCodec, codec_name="nnc"):
        """NNC as a zarr version 3 array-to-bytes codec (``numcodecs.nnc`` in the array metadata).

        The same settings as :class:`NNC` (``qp``, ``step``, ``target_snr``, ``dq``,
        ``rdoq_lambda``); every chunk is one NNC stream.
        """

    NNCZarr3.__module__ = __name__
    NNCZarr3.__qualname__ = "NNCZarr3"
    register_codec(ZARR3_NAME, NNCZarr3)
    _zarr3_class = NNCZarr3
    return NNCZarr3


def __getattr__(name: str):
    if name == "NNCZarr3":
        return _zarr3_codec_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def zarr3_codec(**settings):
    """NNC as a zarr version 3 codec, through numcodecs' zarr 3 wrappers.

    A zarr v3 array takes it as its array-to-bytes codec (``serializer=``); each chunk is
    one NNC stream, decodable on its own by any NNC decoder.  The array metadata names
    it ``numcodecs.nnc`` with the settings as its configuration; it is also registered
    with zarr (and through the ``zarr.codecs`` entry point), so that arrays written with
    it open again.

    Parameters
    ----------
    **settings
        The arguments of :class:`NNC`: ``qp``, ``step``, ``target_snr``, ``dq``,
        ``rdoq_lambda``.

    Returns
    -------
    zarr.abc.codec.ArrayBytesCodec
        An instance of ``nnc.codec.NNCZarr3`` (zarr emits a ``ZarrUserWarning`` that
        numcodecs codecs are not in the zarr v3 specification).

    Raises
    ------
    ImportError
        If zarr (>= 3) or numcodecs is not installed.
    nnc.errors.EncodeError
        If the settings are invalid (as for :class:`NNC`).

    Examples
    --------
    >>> import warnings, numpy as np, zarr
    >>> from nnc.codec import zarr3_codec
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     z = zarr.create_array(store={}, shape=(64, 64), chunks=(32, 32), dtype="float32",
    ...                           serializer=zarr3_codec(target_snr=40), compressors=None)
    ...     x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    ...     z[:] = x
    ...     back = z[:]
    >>> bool(10 * np.log10((x.astype(float) ** 2).sum() / ((x - back).astype(float) ** 2).sum()) >= 40)
    True
    """
    _check_setting_names(settings)
    config = NNC(**settings).get_config()  # checks the settings
    config.pop("id")
    return _zarr3_codec_class()(**config)
