"""Checks of option values shared by the encoder's settings and the numcodecs codec (no encoder import: a
decode-only pipeline constructs codecs too)."""

from __future__ import annotations

import numbers

import numpy as np

from .errors import EncodeError

#: The qp the encoder and the numcodecs codec use when neither a qp nor a step is given (Δ = 2^-9.5 · 1.5).
DEFAULT_QP = -38


def as_number(option: str, value, integer: bool):
    """``value`` as an int (``integer``) or a float; EncodeError for anything else (a bool, a string, 20.5 for an
    integer)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    kind = "an integer" if integer else "a number"
    if not number:
        raise EncodeError(f"{option} must be {kind}, not {value!r}")
    try:
        as_float = float(value)
    except OverflowError:  # (10**400)
        raise EncodeError(f"{option} must be {kind} within the float range, not one that large") from None
    if integer and not as_float.is_integer():
        raise EncodeError(f"{option} must be {kind}, not {value!r}")
    return int(value) if integer else as_float


def check_bool(option: str, value) -> None:
    """EncodeError unless ``value`` is True or False (or 0 or 1): ``bool("False")`` is True."""
    if not isinstance(value, (bool, np.bool_, int)) or value not in (0, 1):
        raise EncodeError(f"{option} must be True or False, not {value!r}")
