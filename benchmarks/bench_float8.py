"""Size of float8 tensors coded exactly (spec A.17) against lossless byte coders, in the same run.

    python benchmarks/bench_float8.py [--rows 1024 --cols 1024] [--out benchmarks/results]

Synthetic tensors drawn here (never committed): normal and Laplace weights, scaled the way
float8 checkpoints are (each 128 x 128 block by its largest magnitude onto the format's
largest value, "block"; or the whole tensor, "tensor"), converted to float8_e4m3fn and
float8_e5m2 by nnc.narrow_floats (nearest, ties to even; -0 folded to +0, which NNC does not
keep). Each is coded:

* nnc: ``nnc.encode(..., dtypes={w: format})`` (the codebook of A.17), with the default
  number of greater-than flags and with N = 128 (``n_gtx``), which codes every codebook index
  with adaptive flags;
* the bit patterns (1 byte a weight) with zstd (level 19, when installed), xz (preset 9) and
  bz2 (level 9);
* H0: the empirical order-0 entropy of the bit patterns, a bound for coders of independent
  symbols, not a coder.

Every nnc stream is decoded and compared with the values. Writes OUT/float8.md and .json.
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nnc  # noqa: E402
from nnc import narrow_floats as nf  # noqa: E402


def float8_codes(fmt: str, weights: np.ndarray, scaling: str) -> np.ndarray:
    """Bit patterns of ``weights`` scaled onto the format's range, per 128 x 128 block or per tensor."""
    top = nf.largest(fmt)
    if scaling == "block":
        r, c = weights.shape
        blocks = weights.reshape(r // 128, 128, c // 128, 128)
        scaled = (blocks / np.abs(blocks).max(axis=(1, 3), keepdims=True) * top).reshape(r, c)
    else:
        scaled = weights / np.abs(weights).max() * top
    return nf.from_float32(fmt, scaled.astype(np.float32) + np.float32(0))


def h0_bits(codes: np.ndarray) -> float:
    p = np.bincount(codes.reshape(-1), minlength=256) / codes.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    try:
        import zstandard
    except ImportError:
        zstandard = None
        print("zstandard not installed: no zstd column")
    rng = np.random.default_rng(0)
    rows = []
    n = args.rows * args.cols
    for dist in ("normal", "laplace"):
        w = getattr(rng, dist)(size=(args.rows, args.cols)).astype(np.float32)
        for fmt in sorted(nf.FLOAT8):
            for scaling in ("block", "tensor"):
                codes = float8_codes(fmt, w, scaling)
                values = nf.to_float32(fmt, codes)
                row = dict(distribution=dist, format=fmt, scaling=scaling, weights=n, h0=h0_bits(codes))
                for label, options in (("nnc", {}), ("nnc N=128", {"n_gtx": 128})):
                    t0 = time.perf_counter()
                    stream = nnc.encode({"w": values}, dtypes={"w": fmt}, **options)
                    row[f"{label} encode s"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    decoded = nnc.decode(stream)["w"]
                    row[f"{label} decode s"] = time.perf_counter() - t0
                    if not np.array_equal(decoded, values):
                        raise SystemExit(f"{label} did not decode {dist} {fmt} {scaling} exactly")
                    row[label] = 8 * len(stream) / n
                raw = codes.tobytes()
                row["xz"] = 8 * len(lzma.compress(raw, preset=9)) / n
                row["bz2"] = 8 * len(bz2.compress(raw, 9)) / n
                if zstandard is not None:
                    row["zstd"] = 8 * len(zstandard.ZstdCompressor(level=19).compress(raw)) / n
                rows.append(row)
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    coders = ["nnc", "nnc N=128", "zstd", "xz", "bz2", "h0"]
    coders = [c for c in coders if any(c in r for r in rows)]
    lines = ["# float8 tensors coded exactly: bits per weight", "",
             f"Command: `python benchmarks/bench_float8.py --rows {args.rows} --cols {args.cols}`  ",
             f"Machine: {platform.machine()}, 2 cores shared with other jobs. Every nnc stream decodes to the values "
             "exactly; 8 bits per weight is the file's own size.", "",
             "| distribution | format | scaling | " + " | ".join(coders) + " |",
             "|---|---|---|" + "---:|" * len(coders)]
    for r in rows:
        lines.append(f"| {r['distribution']} | {r['format']} | {r['scaling']} | "
                     + " | ".join(f"{r[c]:.3f}" for c in coders) + " |")
    lines += ["", "Seconds (encode / decode) of the nnc streams, default N and N = 128:", "",
              "| distribution | format | scaling | nnc | nnc N=128 |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['distribution']} | {r['format']} | {r['scaling']} | "
                     f"{r['nnc encode s']:.2f} / {r['nnc decode s']:.2f} | "
                     f"{r['nnc N=128 encode s']:.2f} / {r['nnc N=128 decode s']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "float8.md").write_text("\n".join(lines) + "\n")
    (out / "float8.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
