"""The one exception hierarchy of nnc (spec clause 15).

    NNCError
    ├── DecodeError          the input is not a valid stream
    │   ├── TruncatedError   the input ends too early
    │   ├── LimitError       the input asks for more than the configured limits allow
    │   └── UnsupportedError the input is valid but uses a tool nnc does not decode
    └── EncodeError          the input cannot be encoded as asked

Every error carries, where they apply, the spec clause it relates to (``clause``)
and the byte offset in the stream (``offset``).  They are part of ``str(error)``.
"""

from __future__ import annotations


class NNCError(Exception):
    """Base class of every error nnc raises on purpose."""

    def __init__(self, message: str, *, clause: str | None = None, offset: int | None = None):
        self.message = message
        self.clause = clause
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
        reported relative to the whole stream.
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
    """The input is not a valid NNC stream, or not one this decoder accepts."""


class TruncatedError(DecodeError):
    """The input ends before the syntax it declares is complete."""


class LimitError(DecodeError):
    """The input declares more data than the configured limits allow (spec 15.2)."""


class UnsupportedError(DecodeError):
    """The input is valid but uses a coding tool nnc does not decode (yet)."""


class EncodeError(NNCError, ValueError):
    """The tensors or options given to the encoder cannot be encoded."""


__all__ = [
    "NNCError",
    "DecodeError",
    "TruncatedError",
    "LimitError",
    "UnsupportedError",
    "EncodeError",
]
