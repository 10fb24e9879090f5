"""A tensor's matrix view and effective scan order (spec 11.1) and its block rows (11.2).

One home for the rule, shared by both engines' callers, the container, the decoder and the
encoder. It imports nothing of either engine, so that decoding with the compiled engine does
not load the pure-Python one. (The compiled engine applies the same rule in C; the engine
tests hold the two to it.)
"""

from __future__ import annotations

import math

__all__ = ["INT32_MAX", "MAX_ELEMENTS", "block_row_count", "block_size", "effective_scan_order", "matrix_view"]

#: The most elements a tensor may have in either engine (positions are 64-bit; no memory holds more).
MAX_ELEMENTS = 2**62

#: The largest level (spec 10.1: levels are int32; a negative one may reach -2^31).
INT32_MAX = 2**31 - 1


def matrix_view(shape) -> tuple[int, int]:
    """(H, W) of a tensor of this shape (spec 11.1): H = dims[0], W = prod(dims[1:]); 1 x 1 for an empty shape.

    Examples
    --------
    >>> matrix_view((8, 3, 3, 3)), matrix_view((10,)), matrix_view(()), matrix_view((0, 40))
    ((8, 27), (10, 1), (1, 1), (0, 40))
    """
    dims = [int(d) for d in shape]
    if not dims:
        return 1, 1
    return dims[0], math.prod(dims[1:])


def effective_scan_order(height: int, width: int, scan_order: int) -> int:
    """The scan order the elements are visited in (spec 11.1): 0 when H <= 1 or W <= 1, else the signalled one.

    Examples
    --------
    >>> effective_scan_order(40, 0, 1), effective_scan_order(1, 64, 2), effective_scan_order(64, 64, 2)
    (0, 0, 2)
    """
    return int(scan_order) if height > 1 and width > 1 else 0


def block_size(scan_order: int) -> int:
    """B = 4 << s, the block size of scan order s > 0 (spec 11.2); 0 for the row-major scan."""
    return 4 << scan_order if scan_order else 0


def block_row_count(height: int, scan_order: int) -> int:
    """Number of block rows of ``height`` matrix rows in scan order s (spec 11.2): ceil(H / B), 1 for s = 0.

    Give the effective scan order (11.1) for the scan itself, the signalled one for the
    length of a header's entry-point list (7.3).

    Examples
    --------
    >>> block_row_count(37, 2), block_row_count(37, 0), block_row_count(0, 1)
    (3, 1, 0)
    """
    height, scan_order = int(height), int(scan_order)
    if not scan_order:
        return 1
    return -(-height // block_size(scan_order))
