"""The DeepCABAC paper's baseline coders (benchmark code, not part of the codec).

Every size counts every byte a decoder needs to rebuild the tensors: names, shapes, steps,
code tables and codebooks, not only the payload.

* :func:`huffman_lengths`, :func:`huffman_encode` / :func:`huffman_decode`: scalar (two-part)
  Huffman code of integer symbols, canonical, with its table in the stream;
* :func:`csr_encode` / :func:`csr_decode`: CSR-Huffman after Han et al. (the paper's [38]):
  the non-zero values and the gaps between their positions (relative indexing with filler
  zeros when a gap exceeds the index width), both Huffman-coded;
* :func:`bzip2_size`: bzip2 (level 9) of the indices as int8/int16/int32 plus headers;
* :func:`weighted_lloyd`: the paper's weighted, entropy-constrained Lloyd algorithm
  (Algorithm 4), initialised by scikit-learn's KMeans with ``sample_weight=F``;
* :func:`h0_bits`: the empirical order-0 entropy, a bound and not a coder.

Model-level sizes (:func:`model_size`) add one header per tensor: its name, shape, step (or
codebook) and payload length. 1-D tensors (biases) are stored as raw float32, as in the
paper's appendix ("their original size was added to the compressed size").
"""

from __future__ import annotations

import bz2
import heapq
import math
import struct
from typing import Mapping

import numpy as np


# -- variable-length integers (the headers and tables of every baseline) ------------------------------------------------
def uvarint(n: int) -> bytes:
    """LEB128 unsigned varint."""
    n = int(n)
    if n < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


def unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


# -- order-0 entropy ----------------------------------------------------------------------------------------------------
def h0_bits(symbols) -> float:
    """Empirical order-0 entropy of ``symbols`` times their number, in bits (no table, no header)."""
    s = np.asarray(symbols).reshape(-1)
    if s.size == 0:
        return 0.0
    _, counts = np.unique(s, return_counts=True)
    p = counts / s.size
    return float(-(counts * np.log2(p)).sum())


# -- Huffman ------------------------------------------------------------------------------------------------------------
def huffman_lengths(counts) -> np.ndarray:
    """Code lengths of an optimal (Huffman) prefix code for positive ``counts``.

    A single symbol gets length 1 (a decoder still needs one bit per symbol to count them;
    the model-level coders below skip the payload entirely in that case).
    """
    counts = [int(c) for c in counts]
    n = len(counts)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.ones(1, np.int64)
    # (weight, tie-breaker, leaves under this node)
    heap = [(c, i, [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    lengths = np.zeros(n, np.int64)
    tie = n
    while len(heap) > 1:
        c1, _, a = heapq.heappop(heap)
        c2, _, b = heapq.heappop(heap)
        for leaf in a:
            lengths[leaf] += 1
        for leaf in b:
            lengths[leaf] += 1
        heapq.heappush(heap, (c1 + c2, tie, a + b))
        tie += 1
    return lengths


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code words for ``lengths`` (symbols in the given order, shorter codes first)."""
    lengths = np.asarray(lengths, np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    codes = np.zeros(len(lengths), np.int64)
    code = 0
    prev = int(lengths[order[0]]) if len(order) else 0
    for k, i in enumerate(order):
        ln = int(lengths[i])
        if k:
            code = (code + 1) << (ln - prev)
        codes[i] = code
        prev = ln
    return codes


def _table_bytes(alphabet: np.ndarray, lengths: np.ndarray) -> bytes:
    """The table a decoder reads: count, sorted symbols (zigzag first, then gaps), one length byte each."""
    out = bytearray(uvarint(len(alphabet)))
    if len(alphabet):
        out += uvarint(zigzag(int(alphabet[0])))
        for d in np.diff(alphabet.astype(np.int64)):
            out += uvarint(int(d))
        out += bytes(int(v) for v in lengths)
    return bytes(out)


def _read_table(buf: bytes, pos: int) -> tuple[np.ndarray, np.ndarray, int]:
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pos
    z, pos = read_uvarint(buf, pos)
    alphabet = [unzigzag(z)]
    for _ in range(n - 1):
        d, pos = read_uvarint(buf, pos)
        alphabet.append(alphabet[-1] + d)
    lengths = np.frombuffer(buf, np.uint8, n, pos).astype(np.int64)
    return np.array(alphabet, np.int64), lengths, pos + n


def huffman_size(symbols) -> int:
    """Bytes of :func:`huffman_encode` (computed without building the bit string)."""
    s = np.asarray(symbols, np.int64).reshape(-1)
    alphabet, counts = np.unique(s, return_counts=True)
    lengths = huffman_lengths(counts)
    bits = int((counts * lengths).sum()) if len(alphabet) > 1 else 0
    return len(_table_bytes(alphabet, lengths)) + (bits + 7) // 8


def huffman_encode(symbols) -> bytes:
    """Two-part Huffman code of integer ``symbols``: the canonical table, then the bits.

    The number of symbols is not in the stream (the decoder knows the tensor's shape). With
    one distinct symbol the payload is empty.
    """
    s = np.asarray(symbols, np.int64).reshape(-1)
    alphabet, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    lengths = huffman_lengths(counts)
    table = _table_bytes(alphabet, lengths)
    if len(alphabet) <= 1:
        return table
    codes = canonical_codes(lengths)
    ln = lengths[inverse]
    cw = codes[inverse]
    total = int(ln.sum())
    starts = np.repeat(np.cumsum(ln) - ln, ln)
    within = np.arange(total, dtype=np.int64) - starts
    bits = (np.repeat(cw, ln) >> (np.repeat(ln, ln) - 1 - within)) & 1
    return table + np.packbits(bits.astype(np.uint8)).tobytes()


def huffman_decode(buf: bytes, n: int, pos: int = 0) -> tuple[np.ndarray, int]:
    """``n`` symbols from :func:`huffman_encode`'s bytes at ``pos``: (symbols, position after them)."""
    alphabet, lengths, pos = _read_table(buf, pos)
    if len(alphabet) <= 1:
        return np.full(n, alphabet[0] if len(alphabet) else 0, np.int64), pos
    codes = canonical_codes(lengths)
    lookup = {(int(l), int(c)): int(a) for a, l, c in zip(alphabet, lengths, codes)}
    bits = np.unpackbits(np.frombuffer(buf, np.uint8, offset=pos))
    out = np.empty(n, np.int64)
    i = 0
    for k in range(n):
        code = ln = 0
        while (ln, code) not in lookup or ln == 0:
            code = (code << 1) | int(bits[i])
            i += 1
            ln += 1
        out[k] = lookup[(ln, code)]
    return out, pos + (i + 7) // 8


# -- CSR-Huffman --------------------------------------------------------------------------------------------------------
def _csr_arrays(levels: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and gaps of the non-zeros in row-major order; a gap > 2^bits - 1 inserts filler zeros."""
    flat = np.asarray(levels, np.int64).reshape(-1)
    pos = np.flatnonzero(flat)
    cap = (1 << index_bits) - 1
    gaps = np.diff(pos, prepend=-1)
    fillers = (gaps - 1) // cap                # zero values `cap` places apart before each non-zero
    reps = fillers + 1
    total = int(reps.sum())
    last = np.cumsum(reps) - 1                 # where each non-zero lands in the output arrays
    values = np.zeros(total, np.int64)
    out_gaps = np.full(total, cap, np.int64)
    values[last] = flat[pos]
    out_gaps[last] = gaps - fillers * cap
    return values, out_gaps


def csr_encode(levels, index_bits: int | None = None) -> bytes:
    """CSR-Huffman of one tensor's integer levels (row-major): index width, entry count, two Huffman codes.

    The rows of the CSR matrix are implied by the gaps over the row-major order and the
    shape the decoder knows, so no row-pointer array is sent (it would only add bytes).
    ``index_bits`` None tries widths 1..16 and keeps the smallest stream.
    """
    levels = np.asarray(levels)
    if index_bits is None:
        return min((csr_encode(levels, b) for b in range(1, 17)), key=len)
    values, gaps = _csr_arrays(levels, index_bits)
    return bytes([index_bits]) + uvarint(len(values)) + huffman_encode(values) + huffman_encode(gaps)


def csr_size(levels) -> int:
    """``len(csr_encode(levels))``, counted without building the bytes (fast on large tensors)."""
    levels = np.asarray(levels)

    def size(bits):
        values, gaps = _csr_arrays(levels, bits)
        return 1 + len(uvarint(len(values))) + huffman_size(values) + huffman_size(gaps)

    return min(size(b) for b in range(1, 17))


def csr_decode(buf: bytes, n: int, pos: int = 0) -> tuple[np.ndarray, int]:
    """``n`` levels from :func:`csr_encode`'s bytes at ``pos``: (levels, position after them)."""
    pos += 1                                   # the index width is not needed to decode
    count, pos = read_uvarint(buf, pos)
    values, pos = huffman_decode(buf, count, pos)
    gaps, pos = huffman_decode(buf, count, pos)
    out = np.zeros(n, np.int64)
    where = np.cumsum(gaps) - 1
    out[where[values != 0]] = values[values != 0]
    return out, pos


# -- weighted Lloyd -----------------------------------------------------------------------------------------------------
def _assign(w, f, centres, log_p, lam, chunk=1 << 16):
    """argmin_j F_i (w_i - c_j)^2 - lam log2 P_j, in chunks."""
    out = np.empty(w.size, np.int64)
    for s in range(0, w.size, chunk):
        d = f[s:s + chunk, None] * (w[s:s + chunk, None] - centres[None, :]) ** 2 - lam * log_p[None, :]
        out[s:s + chunk] = d.argmin(1)
    return out


def lloyd_objective(w, f, centres, assign, lam) -> float:
    """J = sum_i F_i (w_i - c_a(i))^2 + lam * sum_i -log2 P_a(i), P the empirical frequencies."""
    counts = np.bincount(assign, minlength=len(centres))
    p = counts / max(w.size, 1)
    rate = -(counts[counts > 0] * np.log2(p[counts > 0])).sum()
    return float((f * (w - centres[assign]) ** 2).sum() + lam * rate)


def weighted_lloyd(w, f=None, k: int = 256, lam: float = 0.0, iters: int = 30, seed: int = 0, tol: float = 1e-9):
    """The paper's weighted Lloyd algorithm (Algorithm 4) with a zero cluster fixed at 0.

    Initial centres: scikit-learn's KMeans with ``sample_weight=F``; one of them (the one
    nearest zero) is then pinned at 0 for the whole run, which keeps every step a descent step
    of J (the paper sets it to 0 after each update, which can raise J). Returns
    (centres, assignment, [J after each iteration]); J never increases.
    """
    from sklearn.cluster import KMeans

    w = np.asarray(w, np.float64).reshape(-1)
    f = np.ones_like(w) if f is None else np.asarray(f, np.float64).reshape(-1)
    f = np.maximum(f, 1e-30)
    k = int(min(k, np.unique(w).size))
    km = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=50)
    km.fit(w[:, None], sample_weight=f)
    centres = np.sort(km.cluster_centers_.reshape(-1))
    zero = int(np.abs(centres).argmin())
    centres[zero] = 0.0
    log_p = np.full(k, -math.log2(k))
    history = []
    assign = _assign(w, f, centres, log_p, lam)
    for _ in range(iters):
        # update step: weighted means (the zero centre stays), then the probabilities
        sw = np.bincount(assign, weights=f, minlength=k)
        sx = np.bincount(assign, weights=f * w, minlength=k)
        used = sw > 0
        new = centres.copy()
        new[used] = sx[used] / sw[used]
        new[zero] = 0.0
        centres = new
        counts = np.bincount(assign, minlength=k)
        with np.errstate(divide="ignore"):
            log_p = np.log2(counts / w.size)
        history.append(lloyd_objective(w, f, centres, assign, lam))
        # assignment step (empty clusters have log P = -inf and stay empty)
        new_assign = _assign(w, f, centres, log_p, lam)
        if np.array_equal(new_assign, assign):
            break
        assign = new_assign
        if len(history) > 1 and history[-2] - history[-1] <= tol * abs(history[-2]):
            break
    history.append(lloyd_objective(w, f, centres, assign, lam))
    return centres, assign, history


# -- model-level sizes --------------------------------------------------------------------------------------------------
def _tensor_header(name: str, shape) -> bytes:
    raw = name.encode()
    return uvarint(len(raw)) + raw + bytes([len(shape)]) + b"".join(uvarint(d) for d in shape)


def raw_tensor_bytes(name: str, x: np.ndarray) -> int:
    """A tensor stored as float32 with its header."""
    return len(_tensor_header(name, np.shape(x))) + 1 + 4 * int(np.size(x))


def _index_bytes(levels: np.ndarray) -> bytes:
    lo, hi = int(levels.min(initial=0)), int(levels.max(initial=0))
    for dt in (np.int8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return bytes([np.dtype(dt).itemsize]) + np.asarray(levels, dt).tobytes()
    raise ValueError("levels beyond int32")


def model_size(coder: str, levels: Mapping[str, np.ndarray], steps: Mapping[str, float],
               raw: Mapping[str, np.ndarray] = (), codebook: np.ndarray | None = None) -> int:
    """Bytes of a whole model coded with one baseline.

    ``levels``: {name: integer array with the tensor's shape}; ``steps``: {name: step} (the
    decoder multiplies), unless ``codebook`` (one float32 codebook shared by all tensors,
    sorted by value; level l means entry l + the number of negative entries, so that 0 is
    the zero centre) is given; ``raw``: {name: tensor stored as float32}.
    ``coder``: "huffman" (per tensor, the smaller of its own table and one table shared by
    the model), "csr-huffman", "bzip2", or "h0" (order-0 entropy of each tensor's levels plus
    the same headers, rounded up to bytes: a bound that no header-free coder exists for).
    """
    total = 1
    if codebook is not None:
        total += len(uvarint(len(codebook))) + 4 * len(codebook)
    for name, x in dict(raw).items():
        total += raw_tensor_bytes(name, x)
    headers = sum(len(_tensor_header(n, np.shape(v))) + 1 + (4 if codebook is None else 0)
                  for n, v in levels.items())
    if coder == "bzip2":
        blob = bytearray()
        for n, v in levels.items():
            blob += _tensor_header(n, np.shape(v))
            if codebook is None:
                blob += struct.pack("<f", steps[n])
            blob += _index_bytes(np.asarray(v).reshape(-1))
        for n, x in dict(raw).items():
            blob += _tensor_header(n, np.shape(x)) + np.asarray(x, "<f4").tobytes()
        return 1 + len(bz2.compress(bytes(blob), 9)) + (len(uvarint(len(codebook))) + 4 * len(codebook)
                                                         if codebook is not None else 0)
    if coder == "huffman":
        own = [huffman_size(v) for v in levels.values()]
        allv = np.concatenate([np.asarray(v, np.int64).reshape(-1) for v in levels.values()]) if levels else \
            np.zeros(0, np.int64)
        alphabet, counts = np.unique(allv, return_counts=True)
        lengths = huffman_lengths(counts)
        lut = dict(zip(alphabet.tolist(), lengths.tolist()))
        shared = []
        for v in levels.values():
            a, c = np.unique(np.asarray(v, np.int64), return_counts=True)
            bits = sum(lut[s] * n for s, n in zip(a.tolist(), c.tolist())) if len(alphabet) > 1 else 0
            shared.append((int(bits) + 7) // 8)
        shared_total = len(_table_bytes(alphabet, lengths)) + sum(len(uvarint(p)) + p for p in shared)
        own_total = sum(len(uvarint(p)) + p for p in own)
        return total + headers + min(own_total, shared_total)
    if coder == "csr-huffman":
        payloads = [csr_size(v) for v in levels.values()]
    elif coder == "h0":
        payloads = [math.ceil(h0_bits(v) / 8) for v in levels.values()]
    else:
        raise ValueError(f"unknown coder {coder!r}")
    return total + headers + sum(len(uvarint(p)) + p for p in payloads)


__all__ = ["uvarint", "read_uvarint", "h0_bits", "huffman_lengths", "canonical_codes", "huffman_size",
           "huffman_encode", "huffman_decode", "csr_encode", "csr_size", "csr_decode", "weighted_lloyd", "lloyd_objective",
           "model_size", "raw_tensor_bytes"]
