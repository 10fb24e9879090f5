"""Smallest stream within 0.5 accuracy points: nnc's DC-v2 search against NNCodec's best single qp.

    python benchmarks/bench_accuracy.py [--tolerance 0.005] [--out benchmarks/results]

On the bundled digits models (MLP and CNN, test split shipped with the package). For nnc
the search of nnc.search (qp sweep, rate-distortion (qp, lambda) sweep, per-tensor qp
refinement driven by the accuracy); for NNCodec 2.1.3 every qp of the same range with its
default configuration (DQ, parameter optimisation, nonweight_qp -75), keeping the smallest
stream within the tolerance. Both in one run. Writes accuracy_digits.md (table) and
accuracy_digits.png (accuracy against bytes: nnc's candidates and Pareto front, NNCodec's
qp sweep).

The accuracy is measured on the same test split that selects the setting, for both coders.
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
from nnc.formats import read_model  # noqa: E402
from nnc.search import search  # noqa: E402

X, Y = demo.load_test_set()
QPS = range(-40, -3)


def make_eval(kind, part=slice(None)):
    """Accuracy of model ``kind`` on ``part`` of the bundled test split."""
    def evaluate(tensors):
        return demo.accuracy(kind, {k: np.asarray(v, np.float32) for k, v in tensors.items()}, X[part], Y[part])
    return evaluate


def plot(results, tolerance, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2))
    for ax, (kind, r) in zip(np.atleast_1d(axes), results.items()):
        ref = 100 * r["reference"]
        front = sorted(r["pareto"])
        ax.plot([b for b, _ in front], [100 * s for _, s in front], "o-", ms=3, label="nnc (DC-v2 search, Pareto front)")
        theirs = sorted(r["nncodec"])
        if theirs:
            ax.plot([b for b, _ in theirs], [100 * s for _, s in theirs], "s--", ms=3,
                    label="NNCodec 2.1.3 (qp sweep, default DQ)")
        ax.axhline(ref, color="grey", lw=0.8, label=f"fp32 ({ref:.2f} %)")
        ax.axhline(ref - 100 * tolerance, color="grey", lw=0.8, ls=":", label=f"fp32 - {100 * tolerance:g} points")
        ax.set_xscale("log")
        ax.set_ylim(max(0, ref - 10), min(100, ref + 1.5))
        ax.set_xlabel("stream bytes")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"digits {kind}: accuracy against size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--holdout", action="store_true",
                    help="select on the first half of the test split, report accuracy on the second half too "
                         "(writes accuracy_digits_holdout.md)")
    args = ap.parse_args(argv)
    half = len(X) // 2
    select, held = (slice(0, half), slice(half, None)) if args.holdout else (slice(None), None)
    from oracle import NNCodecOracle

    oracle = NNCodecOracle() if NNCodecOracle.available() else None
    lines = ["# Smallest stream within tolerance of the original accuracy", "",
             f"Command: `python benchmarks/bench_accuracy.py --tolerance {args.tolerance}"
             + (" --holdout`" if args.holdout else "`"), ""]
    if args.holdout:
        lines += [f"Both coders select on the first {half} test images (acc); \"held-out acc\" is the accuracy "
                  f"of the selected streams on the other {len(X) - half}.", "",
                  "| model | fp32 acc | fp32 held-out | nnc bytes | nnc acc | nnc held-out | NNCodec bytes | "
                  "NNCodec acc | NNCodec held-out | NNCodec qp | nnc vs NNCodec |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| model | fp32 acc | nnc bytes | nnc acc | nnc setting | NNCodec bytes | NNCodec acc | NNCodec qp | "
                  "nnc vs NNCodec |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    results = {}
    for kind, fname in demo.MODELS.items():
        params = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / fname)[0].items()}
        evaluate = make_eval(kind, select)
        res = search(params, evaluate, tolerance=args.tolerance, qp_range=QPS, progress=False)
        best = res.best
        results[kind] = dict(reference=res.reference_score, pareto=[(c.bytes, c.score) for c in res.pareto],
                             nncodec=[])
        theirs = None
        if oracle is not None:
            for qp in QPS:
                stream = oracle.compress(params, qp=qp, use_dq=True)
                acc = evaluate(oracle.decompress(stream))
                results[kind]["nncodec"].append((len(stream), acc))
                if acc >= res.reference_score - args.tolerance and (theirs is None or len(stream) < theirs[0]):
                    theirs = (len(stream), acc, qp, stream)
        ratio = f"{100 * (best.bytes / theirs[0] - 1):+.1f} %" if theirs else "-"
        per = ("qp_per_tensor", "lambda_per_tensor")
        setting = ", ".join(f"{k}={v}" for k, v in best.settings.items() if k not in per)
        if "qp_per_tensor" in best.settings:
            lams = best.settings.get("lambda_per_tensor", {})
            setting += "; per tensor qp/λ: " + ", ".join(
                f"{k} {q}/{lams.get(k, 0):g}" for k, q in best.settings["qp_per_tensor"].items())
        if args.holdout:
            check = make_eval(kind, held)
            lines.append(f"| {kind} | {100 * res.reference_score:.2f} | {100 * check(params):.2f} | {best.bytes} | "
                         f"{100 * best.score:.2f} | {100 * check(nnc.decode(best.stream)):.2f} | "
                         + (f"{theirs[0]} | {100 * theirs[1]:.2f} | {100 * check(oracle.decompress(theirs[3])):.2f} | "
                            f"{theirs[2]} | {ratio} |" if theirs else "- | - | - | - | - |"))
        else:
            lines.append(f"| {kind} | {100 * res.reference_score:.2f} | {best.bytes} | {100 * best.score:.2f} | "
                         f"{setting} | {theirs[0] if theirs else '-'} | {100 * theirs[1] if theirs else 0:.2f} | "
                         f"{theirs[2] if theirs else '-'} | {ratio} |")
        print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.holdout:
        (out / "accuracy_digits_holdout.md").write_text("\n".join(lines) + "\n")
    else:
        (out / "accuracy_digits.md").write_text("\n".join(lines) + "\n")
        plot(results, args.tolerance, out / "accuracy_digits.png")
    if oracle:
        oracle.close()


if __name__ == "__main__":
    main()
