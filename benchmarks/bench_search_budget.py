"""nnc's DC-v2 search with a longer time budget on one packaged model, against NNCodec in the same run.

    python benchmarks/bench_search_budget.py --model rapidocr --time-budget 1800 [--error-feedback]

bench_paper.py gives each model's search a few minutes beside its other coders; where an
evaluation takes seconds (magika 9 s, rapidocr 5 s) that holds only tens of candidates.
This measures what more time buys. The model, its metric, the tolerance (0.5 points),
the qp grid and the held-out inputs (another seed) are bench_paper's. NNCodec 2.1.3: its
default configuration (DQ) at each qp of the grid, the smallest passing stream kept.
`--error-feedback` gives the search the input covariances of the layers that
packaged_models.CovarianceRecorder sees (spec A.16). `--check-moves` gives it a guard: the same
metric on inputs of another seed (GUARD_SEED; FEEDBACK_GUARD_SEED with --error-feedback, whose covariances come
from GUARD_SEED's inputs), checked on each
stream the per-tensor refinement moves to (nnc.search's check and check_moves); NNCodec's pick
must keep the tolerance on the guard too (when no qp of the grid does, finer ones are tried in
turn, at most FINER_QPS). `--variant sparse-NN` prunes first, as bench_paper does. Writes
search_<model>[_<variant>]_<budget>s[_feedback][_guard].md
and .json in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_paper as bp  # noqa: E402

import nnc  # noqa: E402


#: With a guard, NNCodec's qps finer than the grid tried (one at a time) when no qp of the grid passes both.
FINER_QPS = 10
#: The guard's inputs: seed 2 (neither the selection's 0 nor the held-out 1), or, with --error-feedback, whose
#: covariances come from seed 2 (packaged_models.CALIBRATION_SEED), seed 3: a guard is never what the quantiser saw.
GUARD_SEED, FEEDBACK_GUARD_SEED = 2, 3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(bp.PACKAGED), required=True)
    ap.add_argument("--variant", default="dense", help='"dense" or "sparse-NN" (bench_paper\'s pruning, keeping NN %%)')
    ap.add_argument("--time-budget", type=float, default=1800.0, help="seconds of nnc.search")
    ap.add_argument("--error-feedback", action="store_true",
                    help="the search codes the recorded layers with error feedback from their input covariances")
    ap.add_argument("--check-moves", action="store_true",
                    help="guard inputs (another seed) checked on each stream the search's refinement moves to")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    log = lambda s: print(s, flush=True)                      # noqa: E731
    try:
        keep = bp.variant_keep(args.variant)
    except ValueError as exc:
        ap.error(f"--variant {exc}")
    model = bp.packaged_model_or_exit(args.model)
    if keep is not None:
        model = bp.prune_and_finetune(model, keep, 0)
    covariances = None
    if args.error_feedback:
        if model.input_covariances is None:
            raise SystemExit(f"{args.model}: no layer inputs are recorded for error feedback")
        covariances = model.input_covariances(model.params)
    n = sum(v.size for v in model.params.values())
    reference, held_reference = model.evaluate(model.params), model.holdout(model.params)
    passes = bp.within_tolerance(reference)
    guard, guard_passes, guard_options = None, None, {}
    if args.check_moves:
        import packaged_models

        assert FEEDBACK_GUARD_SEED != packaged_models.CALIBRATION_SEED
        guard_seed = FEEDBACK_GUARD_SEED if args.error_feedback else GUARD_SEED
        guard = packaged_models.PACKAGED[args.model](seed=guard_seed)[1]
        guard_reference = guard(model.params)
        guard_passes = bp.within_tolerance(guard_reference)
        guard_options = dict(check=guard, check_moves=True)

    t0 = time.perf_counter()
    res = bp.dcv2_search(model, model.qps, args.time_budget, covariances=covariances, progress=True, **guard_options)
    seconds = time.perf_counter() - t0
    rows = []
    if res.best is not None:
        rows.append(dict(coder="nnc", bytes=res.best.bytes, accuracy=res.best.score,
                         holdout=model.holdout(nnc.decode(res.best.stream)), guard=res.best.check,
                         setting=f"nnc.search, {len(res.candidates)} candidates in {seconds:.0f} s"
                                 + (bp.COVARIANCE_NOTE if covariances else "")))
    log(f"nnc: {rows[-1] if rows else 'no stream within the tolerance'}")
    sweep: list[str] = []     # with a guard: NNCodec's streams, qp by qp
    with bp.nncodec_oracle() as oracle:
        if oracle is None:
            log("NNCodec oracle not available (NNC_ORACLE_PYTHON, tools/setup_oracle.sh): no NNCodec row")
        else:
            guard_scores: list[float] = []

            def sweep_log(line):                  # nncodec_best's line of a qp, with its guard score if one was taken
                if guard_scores:
                    line = line.replace(", passes", "").replace(", fails", "") + \
                        f", guard {guard_scores.pop():.4f}, {'passes' if line.endswith('passes') else 'fails'}"
                log(line)
                sweep.append(line.strip())

            def also(decoded):
                guard_scores.append(guard(decoded))
                return guard_passes(guard_scores[-1])

            also = also if guard else None
            best = bp.nncodec_best(model, model.qps, oracle, passes, sweep_log, also=also)
            finer = min(model.qps) - 1
            while best is None and guard and finer >= min(model.qps) - FINER_QPS:
                best = bp.nncodec_best(model, [finer], oracle, passes, sweep_log, also=also)     # the grid held none
                finer -= 1
            if best is None:
                log(f"NNCodec: no stream of qp {min(model.qps) - FINER_QPS} ... {max(model.qps)} keeps the tolerance")
            else:
                decoded = oracle.decompress(best[3])
                rows.append(dict(coder="nncodec", bytes=best[0], accuracy=best[1], holdout=model.holdout(decoded),
                                 guard=guard(decoded) if guard else None, setting=best[2]))
    for r in rows:
        r.update(bits_per_weight=8 * r["bytes"] / n, loss=100 * (reference - r["accuracy"]),
                 holdout_loss=100 * (held_reference - r["holdout"]))

    command = (f"python benchmarks/bench_search_budget.py --model {args.model}"
               + (f" --variant {args.variant}" if args.variant != "dense" else "") + f" --time-budget {args.time_budget:g}"
               + (" --error-feedback" if args.error_feedback else "") + (" --check-moves" if args.check_moves else ""))
    lines = [f"# {model.name}" + (f" {args.variant}" if args.variant != "dense" else "") + f": nnc's search in {args.time_budget:g} s against NNCodec's best single qp", "",
             f"Command: `{command}`", "",
             f"Metric: {model.metric}. Tolerance 0.5 points (fp32: {100 * reference:.2f} on the selection inputs, "
             f"{100 * held_reference:.2f} on the held-out ones, which no choice used). {n:,} parameters.", ""]
    if guard:
        lines += [f"Guard: the metric on inputs of seed {guard_seed}"
                  + (f" (the covariances come from seed {packaged_models.CALIBRATION_SEED}'s)" if args.error_feedback
                     else "")
                  + f" (fp32: {100 * guard_reference:.2f}); the search checks "
                  f"each stream its per-tensor refinement moves to (nnc.search's check, check_moves), and both "
                  f"coders' picks keep the tolerance on it. It checked "
                  f"{sum(c.check_bound is not None for c in res.candidates)} candidates.", ""]
    guard_column = (" guard loss |", "---:|") if guard else ("", "")
    lines += [f"| coder | bytes | bits/weight | loss (points) | held-out loss |{guard_column[0]} setting |",
              f"|---|---:|---:|---:|---:|{guard_column[1]}---|"]
    lines += [f"| {r['coder']} | {r['bytes']:,} | {r['bits_per_weight']:.3f} | {r['loss']:.2f} | "
              f"{r['holdout_loss']:.2f} |" + (f" {100 * (guard_reference - r['guard']):.2f} |" if guard else "")
              + f" {r['setting']} |" for r in rows]
    if len(rows) == 2:
        lines += ["", f"nnc against NNCodec: {100 * (rows[0]['bytes'] / rows[1]['bytes'] - 1):+.1f} %"]
    if sweep:
        lines += ["", "NNCodec's streams (score on the selection inputs; the guard's only where that passes):", "",
                  "```", *sweep, "```"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"search_{args.model}" + (f"_{args.variant}" if args.variant != "dense" else "") + f"_{args.time_budget:g}s" + ("_feedback" if args.error_feedback else "")
            + ("_guard" if args.check_moves else ""))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(dict(
        command=command, model=model.name, variant=args.variant, parameters=int(n), reference=reference, holdout_reference=held_reference,
        seconds=seconds, guard_seed=guard_seed if guard else None, rows=rows,
        candidates=[dict(bytes=c.bytes, score=c.score, check=c.check) for c in res.candidates]),
        indent=1) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
