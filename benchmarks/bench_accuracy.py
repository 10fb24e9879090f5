"""Smallest stream within 0.5 accuracy points: nnc's DC-v2 search against NNCodec's best single qp.

    python benchmarks/bench_accuracy.py [--tolerance 0.005] [--out benchmarks/results]
    python benchmarks/bench_accuracy.py --model MODEL --evaluate MODULE:FUNCTION [--time-budget S] [--workers N]

On the bundled digits models (MLP and CNN, test split shipped with the package). For nnc
the search of nnc.search (qp sweep, rate-distortion (qp, lambda) sweep, per-tensor qp
refinement driven by the accuracy); for NNCodec 2.1.3 every qp of the same range with its
default configuration (DQ, parameter optimisation, nonweight_qp -75), keeping the smallest
stream within the tolerance. Both in one run. Writes accuracy_digits.md (table) and
accuracy_digits.png (accuracy against bytes: nnc's candidates and Pareto front, NNCodec's
qp sweep).

The accuracy is measured on the same test split that selects the setting, for both coders.
`--holdout` selects on one half and reports the other too (accuracy_digits_holdout.md);
`--crossfit` rotates three folds: select on one, `search(check=)` on another, report on
the third (accuracy_digits_crossfit.md). `--error-feedback` gives nnc's search the input
covariances of the layers on the digits training split (spec A.16; the file names get
"_feedback").

`--model` with `--evaluate` runs the same comparison on any model file (safetensors, PyTorch,
ONNX, npz) and evaluation function (decoded tensors -> a score, or one score per sample;
higher is better), as `nnc encode --search` takes it; both coders select under the rule the
function's output implies (the mean, or per-sample scores with the paired bound). Writes
accuracy_<model stem>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import nnc  # noqa: E402
from nnc import demo  # noqa: E402
from nnc.formats import read_model  # noqa: E402
from nnc.search import paired_bound, search  # noqa: E402

X, Y = demo.load_test_set()
QPS = range(-40, -3)


def make_eval(kind, part=slice(None), per_sample=False):
    """Accuracy of model ``kind`` on ``part`` of the bundled test split.

    With ``per_sample``, one score per image (1 if classified correctly), which lets the
    search compare candidates with the original image by image (``nnc.search.search``).
    """
    x, y = X[part], Y[part]

    def evaluate(tensors):
        params = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        if per_sample == "probability":
            logits = demo.FORWARD[kind](params, x).astype(np.float64)
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            return p[np.arange(len(y)), y] / p.sum(1)
        if per_sample:
            return demo.correct(kind, params, x, y)
        return demo.accuracy(kind, params, x, y)
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


def nncodec_sweep(oracle, params, samples):
    """NNCodec 2.1.3 at every qp of QPS (default configuration): (qp, stream, per-image scores)."""
    out = []
    for qp in QPS:
        stream = oracle.compress(params, qp=qp, use_dq=True)
        out.append((qp, stream, samples(oracle.decompress(stream))))
    return out


@contextlib.contextmanager
def nncodec_oracle():
    """NNCodec 2.1.3 through the oracle, or None where it is not set up; closed on leaving."""
    from oracle import NNCodecOracle

    oracle = NNCodecOracle() if NNCodecOracle.available() else None
    try:
        yield oracle
    finally:
        if oracle:
            oracle.close()


def smallest_passing(sweep, ref_samples, tolerance, per_image):
    """The smallest (qp, stream, scores) of ``sweep`` within the tolerance: by the mean, or by the paired bound."""
    floor = ref_samples.mean() - tolerance
    passing = [entry for entry in sweep
               if paired_bound(entry[2], ref_samples, 1.0)[1 if per_image else 0] >= floor]
    return min(passing, key=lambda entry: len(entry[1]), default=None)


def crossfit(args, oracle):
    """Three folds A, B, C of the test split, rotated: select on A, (check on B), report on C."""
    n = len(X)
    folds = [slice(i * n // 3, (i + 1) * n // 3) for i in range(3)]
    lines = ["# Held-out accuracy of the selected streams (three folds, rotated)", "",
             f"Command: `python benchmarks/bench_accuracy.py --tolerance {args.tolerance} --crossfit`", "",
             f"The test split in three folds of {n // 3} images; for each rotation (A, B, C) every coder selects its "
             "smallest stream within the tolerance on fold A; \"+ check\" also requires the tolerance on fold B "
             "(`search(..., check=)`), \"on each move\" of every stream the per-tensor refinement moves to "
             "(`check_moves=True`); all are reported on fold C, which no selection saw. \"per-image scores\": "
             "the evaluation returns one score per image and the search passes a candidate only when its paired "
             "difference to the original, minus one standard error (`z=1`), is within the tolerance. Means over "
             "the three rotations (a coder that found no stream in some rotation shows \"-\" and in how many it "
             "did); \"drop\" is the fp32 "
             f"accuracy on C minus the stream's (points; one image is {300 / n:.2f}).", "",
             "| model | coder | mean bytes | vs NNCodec | mean drop on C | worst drop on C |",
             "|---|---|---:|---:|---:|---:|"]
    for kind, fname in demo.MODELS.items():
        params = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / fname)[0].items()}
        variants = {  # name: (per-image scores, check on fold B: None, "end" or "moves")
            "nnc, accuracy as one number": (False, None),
            "nnc, accuracy as one number + check on each move": (False, "moves"),
            "nnc, per-image scores": (True, None),
            "nnc, per-image scores + check": (True, "end"),
            "nnc, per-image scores + check on each move": (True, "moves"),
            "nnc, per-image probability of the true class": ("probability", None),
        }
        rows = {name: [] for name in variants}
        rows["NNCodec best single qp, mean rule"] = []
        rows["NNCodec best single qp, per-image rule"] = []
        for r in range(3):
            a, b, c = folds[r], folds[(r + 1) % 3], folds[(r + 2) % 3]
            report = make_eval(kind, c)
            ref = report(params)
            for name, (per_sample, check) in variants.items():
                res = search(params, make_eval(kind, a, per_sample), tolerance=args.tolerance, qp_range=QPS,
                             check=make_eval(kind, b, per_sample) if check else None, check_moves=check == "moves",
                             progress=False)
                if res.best is not None:
                    rows[name].append((res.best.bytes, 100 * (ref - report(nnc.decode(res.best.stream)))))
            if oracle is not None:
                sweep = nncodec_sweep(oracle, params, make_eval(kind, a, per_sample=True))
                ref_samples = make_eval(kind, a, per_sample=True)(params)
                for name, per_image in (("NNCodec best single qp, mean rule", False),
                                        ("NNCodec best single qp, per-image rule", True)):
                    theirs = smallest_passing(sweep, ref_samples, args.tolerance, per_image)
                    if theirs is not None:
                        stream = theirs[1]
                        rows[name].append((len(stream), 100 * (ref - report(oracle.decompress(stream)))))
        base = rows["NNCodec best single qp, mean rule"]
        base_bytes = np.mean([x for x, _ in base]) if len(base) == 3 else None
        for name, got in rows.items():
            if len(got) < 3:
                lines.append(f"| {kind} | {name} | - ({len(got)} of 3) | - | - | - |")
            else:
                mean_bytes = np.mean([x for x, _ in got])
                ratio = f"{100 * (mean_bytes / base_bytes - 1):+.1f} %" if base_bytes else "-"
                lines.append(f"| {kind} | {name} | {mean_bytes:.0f} | {ratio} | {np.mean([d for _, d in got]):+.2f} "
                             f"| {max(d for _, d in got):+.2f} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy_digits_crossfit.md").write_text("\n".join(lines) + "\n")


def any_model(args, oracle):
    """The comparison on a user's model and evaluation function (--model, --evaluate)."""
    from nnc.cli import load_callable

    evaluate = load_callable(args.evaluate, "--evaluate")
    tensors, _ = read_model(args.model)
    # what NNCodec takes: float32 and int32 tensors (both coders code the same values)
    params = {k: np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.int32) for k, v in tensors.items()}
    ref = np.asarray(evaluate({k: v.copy() for k, v in params.items()}), np.float64)
    per_sample = ref.ndim > 0
    rule = "per-sample" if per_sample else "mean"
    res = search(params, evaluate, tolerance=args.tolerance, qp_range=QPS, time_budget=args.time_budget,
                 workers=args.workers, progress=None)
    best = res.best
    theirs = None
    if oracle is not None:
        sweep = nncodec_sweep(oracle, params, lambda t: np.atleast_1d(np.asarray(evaluate(t), np.float64)))
        pick = smallest_passing(sweep, np.atleast_1d(ref), args.tolerance, per_sample)
        theirs = None if pick is None else (len(pick[1]), float(pick[2].mean()), pick[0])
    ratio = f"{100 * (best.bytes / theirs[0] - 1):+.1f} %" if theirs and best else "-"
    name = Path(args.model).stem
    lines = [f"# Smallest stream within {args.tolerance} of the original score: {name}", "",
             f"Command: `python benchmarks/bench_accuracy.py --model {args.model} --evaluate {args.evaluate} "
             f"--tolerance {args.tolerance}" + (f" --time-budget {args.time_budget:g}" if args.time_budget else "")
             + (f" --workers {args.workers}" if args.workers > 1 else "") + "`", "",
             f"Rule: {rule} ({len(np.atleast_1d(ref))} sample{'s' if per_sample else ''}); nnc: the DC-v2 search "
             f"({len(res.candidates)} candidates); NNCodec 2.1.3: every qp of {QPS.start}..{QPS.stop - 1} with its "
             "default configuration, the smallest stream that passes.", "",
             "| model | rule | fp32 score | nnc bytes | nnc score | NNCodec bytes | NNCodec score | NNCodec qp | "
             "nnc vs NNCodec |", "|---|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| {name} | {rule} | {ref.mean():.5f} | {best.bytes if best else '-'} | "
             f"{f'{best.score:.5f}' if best else '-'} | {theirs[0] if theirs else '-'} | "
             f"{f'{theirs[1]:.5f}' if theirs else '-'} | {theirs[2] if theirs else '-'} | {ratio} |"]
    if oracle is None:
        lines += ["", "NNCodec oracle not available (tools/setup_oracle.sh): nnc's result only."]
    print("\n".join(lines[-1:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"accuracy_{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--holdout", action="store_true",
                    help="select on the first half of the test split, report accuracy on the second half too "
                         "(writes accuracy_digits_holdout.md)")
    ap.add_argument("--crossfit", action="store_true",
                    help="three folds rotated: select on one, check on another, report on the third "
                         "(writes accuracy_digits_crossfit.md)")
    ap.add_argument("--error-feedback", action="store_true",
                    help="the digits models: nnc's search quantises with error feedback from the layers' input "
                         "covariances on the training split (spec A.16)")
    ap.add_argument("--model", help="any model file instead of the digits models (needs --evaluate)")
    ap.add_argument("--evaluate", metavar="MODULE:FUNCTION",
                    help="with --model: decoded tensors -> score or per-sample scores, higher is better")
    ap.add_argument("--time-budget", type=float, help="with --model: the search's time budget in seconds")
    ap.add_argument("--workers", type=int, default=1, help="with --model: the search's worker processes")
    args = ap.parse_args(argv)
    if bool(args.model) != bool(args.evaluate):
        ap.error("--model and --evaluate go together")
    if args.model or args.crossfit:
        with nncodec_oracle() as oracle:
            (any_model if args.model else crossfit)(args, oracle)
        return
    half = len(X) // 2
    select, held = (slice(0, half), slice(half, None)) if args.holdout else (slice(None), None)
    from oracle import NNCodecOracle

    oracle = NNCodecOracle() if NNCodecOracle.available() else None
    n_sel = len(X[select])
    lines = ["# Smallest stream within tolerance of the original accuracy", "",
             f"Command: `python benchmarks/bench_accuracy.py --tolerance {args.tolerance}"
             + (" --holdout" if args.holdout else "") + (" --error-feedback" if args.error_feedback else "") + "`", "",
             *(["nnc's search quantises the weights with error feedback from their layers' input covariances, "
                "measured on the digits training split (`covariances=`, spec A.16).", ""] if args.error_feedback
               else []),
             f"Both coders select on {n_sel} test images under the same acceptance rule. \"mean\": the accuracy "
             "may drop by the tolerance (the issue's criterion). \"per-image\": the evaluation gives one score per "
             "image and a stream passes when its paired difference to the original minus one standard error "
             "(`search(..., z=1)`) is within the tolerance, so that images lost and others won back by chance do "
             "not pass. For NNCodec: every qp of the range with its default configuration (DQ, "
             "nonweight_qp -75), the smallest stream that passes.", ""]
    if args.holdout:
        lines += [f"\"held-out\" is the accuracy of the selected streams on the other {len(X) - n_sel} images.", "",
                  "| model | rule | fp32 acc | fp32 held-out | nnc bytes | nnc acc | nnc held-out | NNCodec bytes | "
                  "NNCodec acc | NNCodec held-out | NNCodec qp | nnc vs NNCodec |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| model | rule | fp32 acc | nnc bytes | nnc acc | nnc setting | NNCodec bytes | NNCodec acc | "
                  "NNCodec qp | nnc vs NNCodec |", "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    results = {}
    for kind, fname in demo.MODELS.items():
        params = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / fname)[0].items()}
        samples = make_eval(kind, select, per_sample=True)
        sweep = nncodec_sweep(oracle, params, samples) if oracle is not None else []
        extra = {}
        if args.error_feedback:
            from bench_paper import _train_module, digits_input_covariances

            extra["covariances"] = digits_input_covariances(kind, params, _train_module().load_split()[0])
        for rule in ("mean", "per-image"):
            per_image = rule == "per-image"
            res = search(params, make_eval(kind, select, per_sample=per_image), tolerance=args.tolerance,
                         qp_range=QPS, progress=False, **extra)
            best = res.best
            if rule == "mean":
                results[kind] = dict(reference=res.reference_score, pareto=[(c.bytes, c.score) for c in res.pareto],
                                     nncodec=[(len(st), float(v.mean())) for _, st, v in sweep])
            pick = smallest_passing(sweep, samples(params), args.tolerance, per_image)
            theirs = None if pick is None else (len(pick[1]), float(pick[2].mean()), pick[0], pick[1])
            ratio = f"{100 * (best.bytes / theirs[0] - 1):+.1f} %" if theirs and best else "-"
            if best is None:
                lines.append(f"| {kind} | {rule} | no nnc stream passes |")
                print(lines[-1], flush=True)
                continue
            per = ("qp_per_tensor", "lambda_per_tensor")
            setting = ", ".join(f"{k}={v}" for k, v in best.settings.items() if k not in per)
            if "qp_per_tensor" in best.settings:
                lams = best.settings.get("lambda_per_tensor", {})
                setting += "; per tensor qp/λ: " + ", ".join(
                    f"{k} {q}/{lams.get(k, 0):g}" for k, q in best.settings["qp_per_tensor"].items())
            if args.holdout:
                check = make_eval(kind, held)
                lines.append(
                    f"| {kind} | {rule} | {100 * res.reference_score:.2f} | {100 * check(params):.2f} | {best.bytes} | "
                    f"{100 * best.score:.2f} | {100 * check(nnc.decode(best.stream)):.2f} | "
                    + (f"{theirs[0]} | {100 * theirs[1]:.2f} | {100 * check(oracle.decompress(theirs[3])):.2f} | "
                       f"{theirs[2]} | {ratio} |" if theirs else "- | - | - | - | - |"))
            else:
                lines.append(f"| {kind} | {rule} | {100 * res.reference_score:.2f} | {best.bytes} | "
                             f"{100 * best.score:.2f} | {setting} | {theirs[0] if theirs else '-'} | "
                             f"{100 * theirs[1] if theirs else 0:.2f} | {theirs[2] if theirs else '-'} | {ratio} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_feedback" if args.error_feedback else ""
    if args.holdout:
        (out / f"accuracy_digits_holdout{suffix}.md").write_text("\n".join(lines) + "\n")
    else:
        (out / f"accuracy_digits{suffix}.md").write_text("\n".join(lines) + "\n")
        plot(results, args.tolerance, out / f"accuracy_digits{suffix}.png")
    if oracle:
        oracle.close()


if __name__ == "__main__":
    main()
