"""How much of the tolerance does each large tensor of a packaged model use up on its own? A probe.

    python benchmarks/probe_tensor_losses.py --model magika --qps -27 -19 [--top 3]

Codes one tensor at a time (the ``--top`` largest, then all the others together) at every
second qp from FINEST to COARSEST, with every other tensor left as in the fp32 model, and scores the result
on bench_paper's selection and held-out inputs. Two quantisers: nnc's defaults (DQ,
rdoq_lambda 0.1) and, for the tensors whose layer inputs can be recorded, error feedback
(spec A.16, covariances on the calibration seed). The bytes are that tensor's stream
alone. NNCodec's smallest passing stream (its default configuration at each qp of
bench_paper's grid) is measured in the same run, when the oracle is there, to give the
budget a stream 20 % under it has. Writes tensor_losses_<model>.md and .json in --out.
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
from nnc.encoder import Encoder  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(bp.PACKAGED), required=True)
    ap.add_argument("--qps", type=int, nargs=2, metavar=("FINEST", "COARSEST"), required=True)
    ap.add_argument("--top", type=int, default=3, help="the largest tensors probed one by one")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    log = lambda s: print(s, flush=True)                      # noqa: E731
    if args.qps[0] > args.qps[1]:
        ap.error(f"--qps {args.qps[0]} {args.qps[1]}: the finest (lowest) qp first")
    t0 = time.perf_counter()
    model = bp.packaged_model_or_exit(args.model)
    reference, held_reference = model.evaluate(model.params), model.holdout(model.params)
    covariances = model.input_covariances(model.params) if model.input_covariances else {}
    names = sorted(model.params, key=lambda k: -model.params[k].size)
    groups = [(n, [n]) for n in names[: args.top]] + [("the other tensors", names[args.top:])]

    def score(params):
        return 100 * (reference - model.evaluate(params)), 100 * (held_reference - model.holdout(params))

    rows = []
    for label, group in groups:
        part = {n: model.params[n] for n in group}
        modes = [("defaults", {})]
        if all(n in covariances for n in group):
            modes.append(("error feedback", dict(covariances={n: covariances[n] for n in group},
                                                 covariance_transposed=tuple(model.transposed))))
        for qp in range(args.qps[0], args.qps[1] + 1, 2):
            for mode, extra in modes:
                stream = Encoder(qp=qp, dq=True, rdoq_lambda=0.1, **extra).encode(part).stream
                loss, held = score({**model.params, **nnc.decode(stream)})
                rows.append(dict(tensors=label, weights=int(sum(model.params[n].size for n in group)), qp=qp,
                                 mode=mode, bytes=len(stream), loss=loss, holdout_loss=held))
                log(f"{label[-40:]:40} qp {qp} {mode:14} {len(stream):9,} B  loss {loss:+.2f}  held out {held:+.2f}")

    nncodec = None
    with bp.nncodec_oracle() as oracle:
        if oracle is None:
            log("NNCodec oracle not available (NNC_ORACLE_PYTHON, tools/setup_oracle.sh): no budget line")
        else:
            best = bp.nncodec_best(model, model.qps, oracle, bp.within_tolerance(reference), log)
            if best is not None:
                decoded = oracle.decompress(best[3])
                loss, held = score(decoded)
                nncodec = dict(bytes=best[0], setting=best[2], loss=loss, holdout_loss=held)

    command = (f"python benchmarks/probe_tensor_losses.py --model {args.model} --qps {args.qps[0]} {args.qps[1]} "
               f"--top {args.top}")
    lines = [f"# {model.name}: each large tensor's loss on its own", "", f"Command: `{command}` "
             f"({(time.perf_counter() - t0) / 60:.0f} min)", "",
             f"Metric: {model.metric}; fp32: {100 * reference:.2f} on the selection inputs, "
             f"{100 * held_reference:.2f} on the held-out ones. Losses in points; Table I's tolerance is 0.5.", "",
             "One tensor (or group) coded, every other tensor as in the fp32 model; bytes: that stream alone.", ""]
    if nncodec:
        lines += [f"NNCodec's smallest passing stream of the whole model: {nncodec['bytes']:,} bytes "
                  f"({nncodec['setting']}; loss {nncodec['loss']:+.2f}, held out {nncodec['holdout_loss']:+.2f}); "
                  f"20 % under it: {int(0.8 * nncodec['bytes']):,} bytes for every tensor together.", ""]
    lines += ["| tensors | weights | qp | quantiser | bytes | loss | held-out loss |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tensors']} | {r['weights']:,} | {r['qp']} | {r['mode']} | {r['bytes']:,} | "
                     f"{r['loss']:+.2f} | {r['holdout_loss']:+.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"tensor_losses_{args.model}"
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(dict(
        command=command, model=model.name, reference=reference, holdout_reference=held_reference,
        nncodec=nncodec, rows=rows), indent=1) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
