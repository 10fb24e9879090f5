"""Engine throughput: encode and decode of 4M Laplacian weights at about 2, 4 and 6 bits per weight.

    python benchmarks/bench_engine.py [--size 2048] [--repeats 3] [--engine cython] [--json out.json]

Our figures time the engine alone (one payload, one tensor, single thread).  When the
NNCodec 2.1.3 oracle is installed, NNCodec is timed in the same run on the same integer
levels: it gets float32 values equal to the levels with qp 0 (step 1), so its uniform
quantiser reproduces them exactly; its compress() therefore also includes its own
quantisation and unit writing, and its decompress() its unit parsing and reconstruction.
Its timings are taken inside its worker process, so its import time is excluded.
Ratios ours/NNCodec above 1 mean nnc is faster.  Not a test: machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nnc.engine import get_engine  # noqa: E402

N_GTX = 11


def count_bins(levels: np.ndarray, n_gtx: int = N_GTX) -> int:
    """Bins of the binarisation (spec 10.1) for non-DQ levels: sig, sign, gtx, remainder prefix and suffix."""
    a = np.abs(levels.astype(np.int64))
    nz = a > 0
    bins = a.size + int(nz.sum())                       # sig + sign
    bins += int(np.minimum(a[nz] - 1, n_gtx).sum())     # gtx flags that are 1 ...
    bins += int((nz & (a <= n_gtx)).sum())              # ... and the terminating 0
    r = a[a > n_gtx] - n_gtx - 1
    m = np.floor(np.log2(r + 1)).astype(np.int64)       # Exp-Golomb: prefix m ones + 0, m suffix bits
    bins += int((2 * m + 1).sum())
    return bins


def entropy_bits(levels: np.ndarray) -> float:
    _, counts = np.unique(levels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def levels_for(target_bits: float, size: int, seed: int = 1) -> np.ndarray:
    """Laplacian weights quantised with the step whose index entropy is closest to the target."""
    w = np.random.default_rng(seed).laplace(0, 0.02, (size, size))
    lo, hi = 1e-6, 1.0
    for _ in range(40):
        step = (lo * hi) ** 0.5
        lv = np.round(w / step)
        if entropy_bits(lv[:256]) > target_bits:
            lo = step
        else:
            hi = step
    return np.round(w / step).astype(np.int32)


def median_time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_ours(engine, levels, repeats):
    h, w = levels.shape
    flat = levels.reshape(-1)

    def encode():
        e = engine.PayloadEncoder(2)
        e.write_qp_offset(0, 8)
        e.encode_tensor(flat, h, w, n_gtx=N_GTX)
        return e.finish()

    t_enc, payload = median_time(encode, repeats)

    def decode():
        d = engine.PayloadDecoder(payload, 2)
        d.read_qp_offset(8)
        out = d.decode_tensor(h, w, n_gtx=N_GTX)
        d.finish()
        return out

    t_dec, out = median_time(decode, repeats)
    assert np.array_equal(out, flat)
    return len(payload), t_enc, t_dec


def bench_nncodec(oracle, levels, repeats):
    stream, t_enc = oracle.compress_timed({"w.weight": levels.astype(np.float32)}, repeats, qp=0, qp_density=2,
                                          use_dq=False, param_opt=True)
    out, t_dec = oracle.decompress_timed(stream, repeats)
    assert np.array_equal(out["w.weight"].astype(np.int64), levels.astype(np.int64))
    return len(stream), statistics.median(t_enc), statistics.median(t_dec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="tensor side (default 2048: 4M weights)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", default="cython", choices=("cython", "python"))
    ap.add_argument("--bits", type=float, nargs="*", default=[2.0, 4.0, 6.0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-nncodec", action="store_true")
    args = ap.parse_args(argv)
    engine = get_engine(args.engine)
    oracle = None
    if not args.no_nncodec:
        sys.path.insert(0, str(REPO / "tests"))
        from oracle import NNCodecOracle

        if NNCodecOracle.available():
            oracle = NNCodecOracle()
        else:
            print(f"NNCodec oracle not available ({NNCodecOracle.reason}); nnc figures only\n")
    rows = []
    n = args.size * args.size
    for bits in args.bits:
        levels = levels_for(bits, args.size)
        bins = count_bins(levels)
        size, t_enc, t_dec = bench_ours(engine, levels, args.repeats)
        row = dict(target_bits=bits, weights=n, bins=bins, bytes=size, bits_per_weight=8 * size / n,
                   enc_mw_s=n / t_enc / 1e6, dec_mw_s=n / t_dec / 1e6, enc_mbins_s=bins / t_enc / 1e6,
                   dec_mbins_s=bins / t_dec / 1e6)
        if oracle is not None:
            s2, e2, d2 = bench_nncodec(oracle, levels, args.repeats)
            row.update(nncodec_bytes=s2, nncodec_enc_mw_s=n / e2 / 1e6, nncodec_dec_mw_s=n / d2 / 1e6,
                       enc_ratio=e2 / t_enc, dec_ratio=d2 / t_dec)
        rows.append(row)
    print(f"engine: {args.engine}; {n} Laplacian weights; median of {args.repeats}; single thread\n")
    head = f"{'bits/w':>7} {'Mbins':>7} {'enc Mw/s':>9} {'dec Mw/s':>9} {'enc Mbin/s':>10} {'dec Mbin/s':>10}"
    if oracle is not None:
        head += f" {'NNCodec enc':>11} {'NNCodec dec':>11} {'enc ratio':>9} {'dec ratio':>9}"
    print(head)
    for r in rows:
        line = (f"{r['bits_per_weight']:>7.3f} {r['bins'] / 1e6:>7.2f} {r['enc_mw_s']:>9.2f} {r['dec_mw_s']:>9.2f} "
                f"{r['enc_mbins_s']:>10.1f} {r['dec_mbins_s']:>10.1f}")
        if oracle is not None:
            line += (f" {r['nncodec_enc_mw_s']:>11.2f} {r['nncodec_dec_mw_s']:>11.2f} {r['enc_ratio']:>9.2f}"
                     f" {r['dec_ratio']:>9.2f}")
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if oracle is not None:
        oracle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
