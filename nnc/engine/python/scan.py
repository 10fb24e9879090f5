"""Scans and entry points (spec 11): the matrix view, the block scan, block rows,
row skipping and the entry points of a payload.

Part of the pure-Python engine (:mod:`nnc.engine.python`).  :class:`TensorScan`
is the one walk over a tensor's scan: the decoder, the encoder, the estimates
and both quantisers (RDOQ, the DQ trellis) all visit elements through its
``segments``.
"""

from __future__ import annotations

import numpy as np

from ...tables import NEXT_DQ_STATE
from ..matrix import MAX_ELEMENTS, block_row_count, block_size, effective_scan_order

# Stopping long loops (docs/dev/engine-api.md, "Stopping"): a walk polls every POLL_ELEMENTS
# elements and raises KeyboardInterrupt while a stop request is open (RDOQ takes about 0.2 s
# for 2^10 elements here). Signals need no poll: Python runs its handlers between bytecodes.
POLL_ELEMENTS = 1 << 10
_stop_requests = 0


def request_stop(change: int) -> None:
    """Add ``change`` (1 or -1) to the stop requests: while any is open, the loops of every thread stop and
    raise KeyboardInterrupt (a thread pool asks while it waits for its workers after an interrupt).

    Examples
    --------
    >>> request_stop(1); request_stop(-1)
    """
    global _stop_requests
    _stop_requests = max(0, _stop_requests + int(change))


def poll_stop() -> None:
    """Raise KeyboardInterrupt while a stop request is open."""
    if _stop_requests > 0:
        raise KeyboardInterrupt("stopped: another thread was interrupted")


def polled(items, every: int = 0):
    """``items``, polling for a stop request every ``every`` of them (default POLL_ELEMENTS), for loops over a
    tensor's bins or a trellis chunk."""
    every = every or POLL_ELEMENTS
    for i, item in enumerate(items):
        if i % every == every - 1:
            poll_stop()
        yield item


def zero_run_table(count: int) -> list:
    """The DQ state after ``count`` transitions with parity 0, from each state (11.5).

    STT[s][0] is a permutation of the 8 states whose order divides 4, so
    ``count`` transitions equal ``count mod 4`` ones.
    """
    table = list(range(8))
    for _ in range(count % 4):
        table = [NEXT_DQ_STATE[s][0] for s in table]
    return table


def _check_zero_transition_order() -> None:
    table = list(range(8))
    for _ in range(4):
        table = [NEXT_DQ_STATE[s][0] for s in table]
    assert table == list(range(8)), "STT[.][0] must have order dividing 4"


_check_zero_transition_order()


# ===========================================================================
# 11  Scan order, block rows
# ===========================================================================


class TensorScan:
    """The scan of a height x width matrix (11.1, 11.2).

    ``order`` is the effective scan order: the signalled one, or 0 when the
    matrix is a single row or column.  Order s > 0 scans blocks of
    B = 4 << s; a block row is B matrix rows.  Order 0 scans row by row and is
    treated as one block row.
    """

    def __init__(self, height: int, width: int, scan_order: int, edition: int):
        self.height, self.width = height, width
        self._next_poll = POLL_ELEMENTS  # elements walked before the next stop poll
        self._walked = 0
        self.order = effective_scan_order(height, width, scan_order)
        if self.order:
            self.block = block_size(self.order)
            self.n_block_rows = block_row_count(height, self.order)
        else:
            self.block = max(height, 1)
            self.n_block_rows = 1 if height > 0 else 0
        # 11.3: R = 256 is forced before the first element -- edition 1 whenever
        # the effective scan order is > 0, edition 2 only with >= 2 block rows.
        if edition == 1:
            self.force_at_start = self.order > 0
        else:
            self.force_at_start = self.order > 0 and self.n_block_rows > 1

    def segments(self, r: int):
        """Pieces of matrix rows in block row r, in scan order: (row, first col, end col) (11.2).

        With order 0 a piece is a whole row; with blocks it is one row of one
        block (blocks left to right, rows top to bottom inside a block).
        """
        if not self.order:
            for row in range(self.height):
                self._count(self.width)
                yield row, 0, self.width
            return
        B = self.block
        rows = range(r * B, min((r + 1) * B, self.height))
        for c0 in range(0, self.width, B):
            c1 = min(c0 + B, self.width)
            for row in rows:
                self._count(c1 - c0)
                yield row, c0, c1

    def _count(self, elements: int) -> None:
        """Count elements walked; poll for a stop request every POLL_ELEMENTS of them."""
        self._walked += elements
        if self._walked >= self._next_poll:
            self._next_poll = self._walked + POLL_ELEMENTS
            poll_stop()


def scan_permutation(height: int, width: int, scan_order: int) -> np.ndarray:
    """Flat row-major indices of a height x width matrix in scan order (11.1, 11.2).

    ``x.reshape(-1)[perm]`` is the tensor in coding order; the effective scan order
    applies (row-major for a single row or column).

    Examples
    --------
    >>> scan_permutation(2, 16, 1)[:10].tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 16, 17]
    """
    height, width = int(height), int(width)
    if height < 0 or width < 0:
        raise ValueError(f"negative tensor dimensions {height}x{width}")
    if width > 0 and height > MAX_ELEMENTS // width:
        raise ValueError(f"tensor dimensions {height}x{width}: more than 2**62 elements")
    scan = TensorScan(height, width, int(scan_order), 2)
    out = np.empty(height * width, dtype=np.int64)  # (all of it first: a size beyond memory fails at once)
    pos = 0
    for r in range(scan.n_block_rows):
        for row, c0, c1 in scan.segments(r):
            out[pos : pos + c1 - c0] = np.arange(row * width + c0, row * width + c1, dtype=np.int64)
            pos += c1 - c0
    return out


_TENSOR_KEYS = (
    "n_gtx",
    "dq",
    "scan_order",
    "codebook_size",
    "codebook_zero",
    "parent_present",
    "tca_base",
    "hdsp_history",
)


def compute_entry_points(payload, edition, tensors) -> list:
    """Entry points of every tensor of a payload, by a sequential decode (11.4).

    ``tensors``: per tensor a dict of ``height``, ``width``, ``qp_bits`` (0 or absent
    when the tensor has no qp offset) and the decode_tensor parameters.  Returns, per
    tensor, the list of (value, dq_state, offset_increment).
    """
    from .payload import PayloadDecoder

    dec = PayloadDecoder(payload, edition)
    result = []
    for spec in tensors:
        bits = spec.get("qp_bits", 0)
        if bits:
            dec.read_qp_offset(int(bits))
        kwargs = {key: spec[key] for key in _TENSOR_KEYS if key in spec}
        dec.decode_tensor(spec["height"], spec["width"], record_entry_points=True, **kwargs)
        result.append(list(dec.last_entry_points))
    dec.finish()
    return result
