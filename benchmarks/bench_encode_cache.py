"""Encodes with an EncodeCache as it fills, against the same encodes without one, in one run.

    python benchmarks/bench_encode_cache.py [--tensors 700] [--encodes 12]

A search re-encodes a model with a new global qp or λ many times (every unit a miss, all
kept) and then moves one tensor at a time (hits). The cost of keeping a unit must not grow
with the number already kept: this times each of ``--encodes`` encodes of a model of
``--tensors`` small tensors at a new qp with one cache, next to the same encode without a
cache, and then one encode that hits every unit. Writes encode_cache.md in --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nnc.encoder import EncodeCache, Encoder  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", type=int, default=700)
    ap.add_argument("--encodes", type=int, default=12)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    model = {f"t{i}": rng.normal(size=(50, 40)).astype(np.float32) for i in range(args.tensors)}
    cache = EncodeCache()
    lines = ["# Encodes with a filling EncodeCache against the same encodes without one", "",
             f"Command: `python benchmarks/bench_encode_cache.py --tensors {args.tensors} --encodes {args.encodes}`",
             "", f"{args.tensors} tensors of 50x40 float32, one thread; each encode at a new qp (every unit a miss, "
             "kept), then the first qp again (every unit a hit).", "",
             "| encode | units kept before | with the cache (s) | without (s) | ratio |", "|---:|---:|---:|---:|---:|"]
    qps = list(range(-30, -30 + args.encodes)) + [-30]
    for i, qp in enumerate(qps):
        kept = len(cache)
        with_cache = timed(lambda: Encoder(qp=qp, threads=1).encode(model, cache=cache))
        without = timed(lambda: Encoder(qp=qp, threads=1).encode(model))
        label = f"{i + 1}" + (" (hits)" if i == len(qps) - 1 else "")
        lines.append(f"| {label} | {kept} | {with_cache:.2f} | {without:.2f} | {with_cache / without:.2f} |")
        print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode_cache.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
