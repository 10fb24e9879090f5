"""Block rows of one tensor decoded and encoded in parallel threads (spec 11.3, 11.4).

Encoding (in the compiled engine, ``PayloadEncoder.encode_tensor(threads=)``): the
DQ state is found sequentially at every block-row start; then each range of block rows
is estimated (init-set choice, whose costs add up over block rows since the contexts
restart at each) and coded on its own, starting from low 0 and R = 256 as the block-row
boundary forces (spec 11.3); the codes are appended to the payload's coder in order,
shifted and added with carry propagation (9.8), which gives exactly the sequential bytes.

Decoding: block row r >= 1 of a block-scanned tensor can be started from its
transmitted entry point (spec 11.4).  The block rows are split into contiguous
ranges, one per thread; each range is decoded by a fork of the payload decoder,
entering its first row from the entry point and continuing sequentially.  A range
that ends before the tensor does records the decoder's exact state at the start
of the next range (position, code value V and DQ state); the result is accepted
only if every such state equals the one the next range was started from.  By
induction every range then decoded exactly what sequential decoding decodes.
Otherwise (wrong entry points, as in some NNCodec 1.x streams, spec 13.3, or any
error) the tensor is decoded sequentially, so the output and the error raised are
always those of sequential decoding.
"""

from __future__ import annotations

import numpy as np

from ._threads import worker_pool
from .engine.matrix import block_row_count as engine_block_row_count
from .engine.matrix import effective_scan_order
from .errors import NNCError

#: Fewest elements per block-row range worth a thread of its own.
MIN_ELEMENTS_PER_THREAD = 1 << 18


def row_threads(threads: int, size: int, min_elements: int | None = None) -> int:
    """Threads worth giving one tensor of ``size`` elements (at least 1)."""
    if min_elements is None:
        min_elements = MIN_ELEMENTS_PER_THREAD
    return max(1, min(threads, size // max(1, min_elements)))


def block_row_count(height: int, width: int, scan_order: int) -> int:
    """Number of block rows of a height x width matrix view (spec 11.1, 11.2): the engine's
    count for the effective scan order (1 for a matrix of one row or column)."""
    return engine_block_row_count(height, effective_scan_order(height, width, scan_order))


def block_row_ranges(n_block_rows: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges [a, b) of block rows, as equal as possible."""
    parts = max(1, min(parts, n_block_rows))
    bounds = [n_block_rows * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def decode_tensor_threads(
    dec, height: int, width: int, *, entry_points, threads: int, min_elements: int | None = None, **kwargs
):
    """Decode one tensor with ``dec`` (positioned at the tensor's start), its block rows in threads, each
    starting at its entry point (spec 11.4), every boundary checked against the next row's entry point.

    Returns ``(levels, decoder)``: the levels equal those of
    ``dec.decode_tensor(height, width, **kwargs)`` and ``decoder`` is positioned
    after the tensor (``dec`` itself, or a fork of it when the tensor had to be
    decoded again sequentially).
    """
    scan_order = kwargs.get("scan_order", 0)
    n_rows = block_row_count(height, width, scan_order)
    parts = row_threads(threads, height * width, min_elements)
    if parts < 2 or n_rows < 2 or not entry_points or len(entry_points) != n_rows - 1:
        return dec.decode_tensor(height, width, **kwargs), dec
    ranges = block_row_ranges(n_rows, parts)
    start = dec.fork()
    out = np.zeros(height * width, dtype=np.int32)
    eps = [tuple(int(x) for x in e) for e in entry_points]

    def run(decoder, a, b):
        decoder.decode_tensor(height, width, entry_points=eps, start_block_row=a, stop_block_row=b, out=out, **kwargs)
        return decoder.last_boundary

    ok = True
    with worker_pool(len(ranges) - 1, "nnc-rows") as pool:
        futures = [pool.submit(run, start.fork(), a, b) for a, b in ranges[:-1]]
        try:
            run(dec, *ranges[-1])
        except NNCError:  # (the sequential decode below says what is wrong)
            ok = False
        offsets = np.cumsum([e[2] for e in eps]).tolist()
        dq = bool(kwargs.get("dq", False))
        for f, (_, b) in zip(futures, ranges):
            try:
                reached = f.result()
            except NNCError:
                ok = False
                continue
            want = (offsets[b - 1], eps[b - 1][0], eps[b - 1][1] if dq else 0, True)
            ok = ok and reached == want
    if ok:
        return out, dec
    seq = start.fork()
    return seq.decode_tensor(height, width, **kwargs), seq
