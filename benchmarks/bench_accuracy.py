"""Smallest stream within 0.5 accuracy points: nnc's DC-v2 search against NNCodec's best single qp.

    python benchmarks/bench_accuracy.py [--tolerance 0.005] [--out benchmarks/results]

On the bundled digits models (MLP and CNN, test split shipped with the package). For nnc
the search of nnc.search (qp sweep, then rate-distortion (qp, lambda) sweep, also with
per-tensor bit allocation at the found SNR); for NNCodec 2.1.3 every qp of the same range
with its default DQ, keeping the smallest stream within the tolerance. Both in one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import nnc  # noqa: E402
from nnc import demo  # noqa: E402
from nnc.allocation import allocate_qps  # noqa: E402
from nnc.formats import read_model  # noqa: E402
from nnc.search import search  # noqa: E402

X, Y = demo.load_test_set()
QPS = range(-40, -3)


def make_eval(kind):
    def evaluate(tensors):
        return demo.accuracy(kind, {k: np.asarray(v, np.float32) for k, v in tensors.items()}, X, Y)
    return evaluate


def snr_db(ref, rec):
    num = sum(float((np.asarray(v, np.float64) ** 2).sum()) for v in ref.values())
    den = sum(float(((np.asarray(ref[k], np.float64) - np.asarray(rec[k], np.float64)) ** 2).sum()) for k in ref)
    return 10 * np.log10(num / den)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    from oracle import NNCodecOracle

    oracle = NNCodecOracle() if NNCodecOracle.available() else None
    lines = ["# Smallest stream within tolerance of the original accuracy", "",
             f"Command: `python benchmarks/bench_accuracy.py --tolerance {args.tolerance}`", "",
             "| model | fp32 acc | nnc bytes | nnc acc | nnc setting | NNCodec bytes | NNCodec acc | NNCodec qp | nnc vs NNCodec |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for kind, fname in demo.MODELS.items():
        params = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / fname)[0].items()}
        evaluate = make_eval(kind)
        res = search(params, evaluate, tolerance=args.tolerance, qp_range=QPS, progress=False)
        best = res.best
        # per-tensor allocation at the SNR of the best search result, then a qp-offset sweep
        ref_snr = snr_db(params, nnc.decode(best.stream))
        for delta in (0.0, -1.0, -2.0, -3.0):
            qps = allocate_qps(params, target_snr_db=ref_snr + delta, dq=True)
            stream = nnc.Encoder(qp_per_tensor=qps, dq=True).encode(params).stream
            acc = evaluate(nnc.decode(stream))
            if acc >= res.reference_score - args.tolerance and len(stream) < best.bytes:
                best = type(best)(settings={"allocated_qps": qps}, bytes=len(stream), score=acc, stream=stream)
        theirs = None
        if oracle is not None:
            for qp in QPS:
                stream = oracle.compress(params, qp=qp, use_dq=True)
                acc = evaluate(oracle.decompress(stream))
                if acc >= res.reference_score - args.tolerance and (theirs is None or len(stream) < theirs[0]):
                    theirs = (len(stream), acc, qp)
        ratio = f"{100 * (best.bytes / theirs[0] - 1):+.1f} %" if theirs else "-"
        setting = ", ".join(f"{k}={v}" for k, v in best.settings.items() if k != "allocated_qps") or "per-tensor qps"
        lines.append(f"| {kind} | {100 * res.reference_score:.2f} | {best.bytes} | {100 * best.score:.2f} | {setting} | "
                     f"{theirs[0] if theirs else '-'} | {100 * theirs[1] if theirs else 0:.2f} | "
                     f"{theirs[2] if theirs else '-'} | {ratio} |")
        print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy_digits.md").write_text("\n".join(lines) + "\n")
    if oracle:
        oracle.close()


if __name__ == "__main__":
    main()
