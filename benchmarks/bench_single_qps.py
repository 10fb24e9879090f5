"""nnc's and NNCodec's streams at each single qp of a packaged model, scored on the selection and held-out inputs.

    python benchmarks/bench_single_qps.py --model magika --variant sparse-70 --qps -21 -16

Table I keeps each coder's smallest stream within 0.5 points. Where one input is a sizeable
part of the tolerance (magika: 0.17 points) the score is not monotone in the step, and
which qp passes is partly chance. This shows the whole grid: both coders' default
configurations (DQ, nnc's RDOQ λ 0.1) at each qp, their bytes, and their losses on the
inputs the tables select on and on bench_paper's held-out inputs (another seed). The
model, its metric and the sparse variant are bench_paper's. Writes
single_qps_<model>_<variant>.md and .json in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_paper as bp  # noqa: E402

import nnc  # noqa: E402
from nnc.encoder import Encoder  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(bp.PACKAGED), required=True)
    ap.add_argument("--variant", default="dense", help='"dense" or "sparse-NN" (bench_paper\'s pruning)')
    ap.add_argument("--qps", type=int, nargs=2, metavar=("FINEST", "COARSEST"), required=True)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    log = lambda s: print(s, flush=True)                      # noqa: E731
    if args.qps[0] > args.qps[1]:
        ap.error(f"--qps {args.qps[0]} {args.qps[1]}: the finest (lowest) qp first")
    try:
        keep = bp.variant_keep(args.variant)
    except ValueError as exc:
        ap.error(f"--variant {exc}")
    model = bp.packaged_model_or_exit(args.model)
    if keep is not None:
        model = bp.prune_and_finetune(model, keep, 0)
    reference, held_reference = model.evaluate(model.params), model.holdout(model.params)
    n = sum(v.size for v in model.params.values())
    rows = []
    with bp.nncodec_oracle() as oracle:
        if oracle is None:
            log("NNCodec oracle not available (NNC_ORACLE_PYTHON, tools/setup_oracle.sh): nnc only")
        float32 = {k: np.asarray(v, np.float32) for k, v in model.params.items()}     # what NNCodec takes
        for qp in range(args.qps[0], args.qps[1] + 1):
            coded = [("nnc", Encoder(qp=qp, dq=True, rdoq_lambda=0.1).encode(model.params).stream, nnc.decode)]
            if oracle is not None:
                coded.append(("nncodec", oracle.compress(float32, qp=qp, use_dq=True), oracle.decompress))
            for coder, stream, decode in coded:
                decoded = decode(stream)
                rows.append(dict(coder=coder, qp=qp, bytes=len(stream), bits_per_weight=8 * len(stream) / n,
                                 loss=100 * (reference - model.evaluate(decoded)),
                                 holdout_loss=100 * (held_reference - model.holdout(decoded))))
                log(f"qp {qp} {coder:8} {len(stream):9,} B  loss {rows[-1]['loss']:+.2f}  "
                    f"held out {rows[-1]['holdout_loss']:+.2f}")

    command = (f"python benchmarks/bench_single_qps.py --model {args.model} --variant {args.variant} "
               f"--qps {args.qps[0]} {args.qps[1]}")
    lines = [f"# {model.name} {args.variant}: both coders at each single qp", "", f"Command: `{command}`", "",
             f"Metric: {model.metric}. fp32 ({args.variant}): {100 * reference:.2f} on the selection inputs, "
             f"{100 * held_reference:.2f} on the held-out ones. Losses in points; Table I's tolerance is 0.5.", "",
             "| qp | nnc bytes | nnc loss | nnc held-out | NNCodec bytes | NNCodec loss | NNCodec held-out | "
             "nnc vs NNCodec |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for qp in range(args.qps[0], args.qps[1] + 1):
        ours, theirs = ([r for r in rows if r["qp"] == qp and r["coder"] == c] for c in ("nnc", "nncodec"))
        o = ours[0]
        t = theirs[0] if theirs else None
        lines.append(f"| {qp} | {o['bytes']:,} | {o['loss']:+.2f} | {o['holdout_loss']:+.2f} | "
                     + (f"{t['bytes']:,} | {t['loss']:+.2f} | {t['holdout_loss']:+.2f} | "
                        f"{100 * (o['bytes'] / t['bytes'] - 1):+.1f} % |" if t else "- | - | - | - |"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"single_qps_{args.model}_{args.variant}"
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(dict(
        command=command, model=model.name, variant=args.variant, parameters=int(n), reference=reference,
        holdout_reference=held_reference, rows=rows), indent=1) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
