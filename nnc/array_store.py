"""Arrays by name, each held in memory or on disk until it is read: the storage of incremental coding's states.

A state (:class:`nnc.decoder.DecoderState`, :class:`nnc.encoder.EncoderState`) holds a model's levels, history
maps and values: several times the model. Read from its file, each array stays in the file until it is used; with
a spill folder (:meth:`nnc.decoder.DecoderState.spill_to`), each array entered is written to an unnamed temporary
file there and read back when used. Memory is then bounded by the tensors in flight, not by the model.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import numpy as np

__all__ = ["ArrayStore", "StoredArray", "SpillFile"]

#: Arrays smaller than this stay in memory even with a spill file (their bookkeeping would cost more).
SPILL_MIN_BYTES = 1 << 16


class StoredArray:
    """An array kept outside memory: its shape, dtype, and how to read it (``read()``: a fresh array).

    Examples
    --------
    >>> import numpy as np
    >>> from nnc.array_store import StoredArray
    >>> entry = StoredArray((2,), np.dtype(np.int32), lambda: np.array([1, 2], np.int32))
    >>> entry.size, entry.read().tolist()
    (2, [1, 2])
    """

    __slots__ = ("shape", "dtype", "read")

    def __init__(self, shape: tuple, dtype: np.dtype, read: Callable[[], np.ndarray]):
        self.shape, self.dtype, self.read = shape, dtype, read

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


class SpillFile:
    """An unnamed temporary file in ``folder`` (gone when closed, or when the process ends however it ends) holding
    arrays.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from nnc.array_store import SpillFile
    >>> entry = SpillFile(tempfile.mkdtemp()).put(np.array([3, -4], np.int32))  # kept as int8
    >>> entry.read().dtype.name, entry.read().tolist()
    ('int32', [3, -4])
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        # (unbuffered: nothing is left to write when the file is closed, even after a full disk)
        self.fh = tempfile.TemporaryFile(dir=self.folder, buffering=0)  # noqa: SIM115 (open for the store's life)
        self.lock = threading.Lock()

    def put(self, array: np.ndarray) -> StoredArray:
        """The array written at the file's end (integers in the narrowest dtype that holds them), to be read back
        as it was."""
        shape, dtype = array.shape, array.dtype
        kept = np.ascontiguousarray(narrowest_integers(array)).reshape(-1)
        with self.lock, self._named_errors():
            offset = self.fh.seek(0, os.SEEK_END)
            data = kept.data.cast("B")
            while data:  # (a raw file may take part of it at a time)
                data = data[self.fh.write(data) :]
        stored, count = kept.dtype, kept.size

        def read() -> np.ndarray:
            out = np.empty(count, stored)
            view, at = out.data.cast("B"), 0
            with self.lock, self._named_errors():
                self.fh.seek(offset)
                while at < len(view):
                    got = self.fh.readinto(view[at:])
                    if not got:  # (the file is ours alone: only a failing disk gets here)
                        raise OSError(errno.EIO, "a temporary file of nnc's state lost its data", self.folder)
                    at += got
            return out.astype(dtype, copy=False).reshape(shape)

        return StoredArray(shape, dtype, read)

    @contextlib.contextmanager
    def _named_errors(self):
        """An OSError of the spill file (a full disk) names its folder: the state's, not the command's output."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(
                exc.errno, f"{exc.strerror or exc} (the temporary file of the state's arrays)", self.folder
            ) from None


def narrowest_integers(array: np.ndarray) -> np.ndarray:
    """An integer array in the narrowest signed dtype of at most its width that holds its values (int32 levels are
    mostly small); other arrays as they are."""
    if array.dtype.kind != "i" or array.itemsize == 1 or not array.size:
        return array
    low, high = int(array.min()), int(array.max())
    for narrow in (np.int8, np.int16, np.int32):
        info = np.iinfo(narrow)
        if np.dtype(narrow).itemsize < array.itemsize and info.min <= low and high <= info.max:
            return array.astype(narrow)
    return array


class ArrayStore(MutableMapping):
    """{name: ``numpy.ndarray``}, in order of entry; an entry may live in a file (:class:`StoredArray`), read
    afresh each time it is looked up. With a :class:`SpillFile`, arrays of ``SPILL_MIN_BYTES`` or more that
    are entered go to it. The levels, history maps and model of :class:`nnc.decoder.DecoderState` and
    :class:`nnc.encoder.EncoderState` are such stores.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from nnc.array_store import ArrayStore, SpillFile
    >>> store = ArrayStore(spill=SpillFile(tempfile.mkdtemp()))
    >>> store["w"] = np.zeros(100_000, np.int32)  # written to the spill file
    >>> type(store.entry("w")).__name__, store.size("w"), store["w"].shape
    ('StoredArray', 100000, (100000,))
    """

    def __init__(self, items: Any = (), spill: SpillFile | None = None):
        self._entries: dict[str, Any] = {}
        self.spill = spill
        self.update(items)

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        return entry.read() if isinstance(entry, StoredArray) else entry

    def __setitem__(self, name: str, value) -> None:
        if isinstance(value, StoredArray):
            self._entries[name] = value
        elif self.spill is not None and isinstance(value, np.ndarray) and value.nbytes >= SPILL_MIN_BYTES:
            self._entries[name] = self.spill.put(value)
        else:
            self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"ArrayStore({list(self._entries)!r})"

    def __reduce__(self):
        """Pickled with its arrays read (a file of this process means nothing to another)."""
        return ArrayStore, (dict(self.items()),)

    def entry(self, name: str):
        """The entry itself: an array, or a :class:`StoredArray` not read."""
        return self._entries[name]

    def size(self, name: str) -> int:
        """The number of elements of ``name``, without reading it."""
        return int(self._entries[name].size)

    def copy(self) -> ArrayStore:
        """A new store with the same entries (nothing read or copied)."""
        new = ArrayStore(spill=self.spill)
        new._entries = dict(self._entries)
        return new

    def spill_to(self, spill: SpillFile | None) -> None:
        """Enter arrays from now on into ``spill``; the arrays held in memory go there too."""
        self.spill = spill
        for name, entry in list(self._entries.items()):
            if not isinstance(entry, StoredArray):
                self[name] = entry


def as_store(value, spill: SpillFile | None = None) -> ArrayStore:
    """``value`` (a mapping of names to arrays) as an :class:`ArrayStore` (itself, when it is one: its entries are
    not read)."""
    if isinstance(value, ArrayStore):
        return value
    return ArrayStore(value, spill)


def size_of(arrays, name: str) -> int:
    """The number of elements of ``arrays[name]``, not read when it is stored."""
    return arrays.size(name) if isinstance(arrays, ArrayStore) else int(np.asarray(arrays[name]).size)


def npz_entries(path) -> dict[str, StoredArray]:
    """The members of an ``.npz`` archive, by name without ``.npy``, each read when it is used (the headers checked
    now; FormatError naming ``path``). The archive stays open while an entry is kept."""
    from pathlib import Path

    from .readers import _read_npz

    tensors, _, _ = _read_npz(Path(path), 0)
    return {t.name: StoredArray(t.shape, np.dtype(t.dtype), t.load) for t in tensors}
