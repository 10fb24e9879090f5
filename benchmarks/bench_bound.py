"""How far the measured rate-distortion points are from the Shannon lower bound.

    python benchmarks/bench_bound.py [--datasets digits,minilm,PATH] [--results benchmarks/results]

For every point of rd_<dataset>.json (written by bench_rd.py) this computes, at the
point's weight SNR, the Shannon lower bound (SLB) on the rate of *any* coder that treats
the weights of each tensor as independent draws from that tensor's distribution:

    R_t(D_t) >= max(0, h_t - 1/2 log2(2 pi e D_t))        (bits per weight of tensor t)

h_t is the differential entropy of tensor t's weights, estimated from a histogram with the
Miller-Madow correction, bin width sigma_t * max(1/64, 2 n_t^(-1/3)) (half and 1.5 times
that width are reported too, to show that the estimate does not hang on the width). The distortions
D_t are shared out by reverse water-filling, D_t = min(theta, P_t) with P_t = 2^(2 h_t) /
(2 pi e) the entropy power, theta chosen so that the mean squared error gives the
point's SNR: that allocation minimises the sum of the per-tensor bounds, so the result
bounds every allocation across tensors too. Before measuring, the estimator is checked
on Gaussian and Laplacian samples of the model's tensor sizes, whose entropies are known.

A rate below this bound can only come from dependencies between weights, and in NNC
those are for the decoder's fixed context modelling to exploit, not for the encoder.
Writes bound_<dataset>.md to --results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from bench_rd import load  # noqa: E402

WIDTHS = (0.5, 1.0, 1.5)  # bin widths reported, relative to the default width; 1.0 is the one used


def differential_entropy(x: np.ndarray, width_factor: float = 1.0) -> float:
    """Estimate of h(X) in bits from samples: H(histogram) + log2(bin width), Miller-Madow corrected."""
    x = np.asarray(x, np.float64).ravel()
    width = width_factor * x.std() * max(1 / 64, 2 * x.size ** (-1 / 3))
    _, counts = np.unique(np.floor(x / width).astype(np.int64), return_counts=True)
    p = counts / x.size
    plug_in = float(-(p * np.log2(p)).sum())
    return plug_in + (counts.size - 1) / (2 * x.size * np.log(2)) + float(np.log2(width))


def estimator_check(sizes, rng) -> list[str]:
    """Error of the estimator on samples with known entropy, one row per size class."""
    rows = []
    for n in sorted({int(10 ** round(np.log10(s))) for s in sizes if s >= 10}):
        n = min(n, 2_000_000)
        gauss = [differential_entropy(rng.standard_normal(n)) - 0.5 * np.log2(2 * np.pi * np.e) for _ in range(10)]
        laplace = [differential_entropy(rng.laplace(size=n)) - np.log2(2 * np.e) for _ in range(10)]
        rows.append(f"| {n} | {np.mean(gauss):+.4f} ± {np.std(gauss):.4f} | {np.mean(laplace):+.4f} ± {np.std(laplace):.4f} |")
    return rows


def shannon_bound(tensors, snr_db: float, width_factor: float = 1.0, cache: dict | None = None) -> float:
    """Lower bound in bits per weight, over all tensors, for a total weight SNR of snr_db."""
    key = ("h", width_factor)
    if cache is None or key not in cache:
        stats = []
        for v in tensors.values():
            x = np.asarray(v, np.float64).ravel()
            if x.size > 1 and x.std() > 0:
                h = differential_entropy(x, width_factor)
                stats.append((x.size, h, min(2 ** (2 * h) / (2 * np.pi * np.e), float(x.var()))))
        if cache is not None:
            cache[key] = stats
    else:
        stats = cache[key]
    n = sum(np.asarray(v).size for v in tensors.values())
    energy = sum(float((np.asarray(v, np.float64) ** 2).sum()) for v in tensors.values())
    target = energy / n / 10 ** (snr_db / 10)  # mean squared error per weight
    lo, hi = 0.0, max(p for _, _, p in stats)
    for _ in range(200):  # water level theta by bisection
        theta = (lo + hi) / 2
        if sum(m * min(theta, p) for m, _, p in stats) / n < target:
            lo = theta
        else:
            hi = theta
    theta = lo
    return sum(m * max(0.0, h - 0.5 * np.log2(2 * np.pi * np.e * min(theta, p))) for m, h, p in stats) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="digits,minilm")
    ap.add_argument("--results", default=str(REPO / "results"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    rng = np.random.default_rng(0)
    for source in args.datasets.split(","):
        dataset = Path(source).stem if Path(source).is_file() else source
        points = json.loads((results / f"rd_{dataset}.json").read_text())
        tensors = load(source)
        cache: dict = {}
        lines = [f"# Measured rates against the Shannon lower bound, {dataset}", "",
                 f"Command: `python benchmarks/bench_bound.py --datasets {source}` "
                 f"(points from `rd_{dataset}.json`)", "",
                 "Estimator check: estimated minus true differential entropy (bits), mean ± deviation "
                 "over 10 samples of each size:", "",
                 "| samples | Gaussian | Laplacian |", "|---:|---:|---:|"]
        lines += estimator_check([np.asarray(v).size for v in tensors.values()], rng)
        lines += ["", "SLB: bits per weight no coder of independent weights can go under at that SNR "
                  "(histogram bins of 0.5, 1 and 1.5 times the default width). Gap: the method's rate above "
                  "the SLB (default width), in bits per weight and in % of the SLB.", "",
                  "| method | qp | SNR dB | bits/weight | SLB x0.5 | SLB | SLB x1.5 | gap bits | gap % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in points:
            slb = {f: shannon_bound(tensors, p["snr_db"], f, cache) for f in WIDTHS}
            gap = p["bits_per_weight"] - slb[1.0]
            lines.append(f"| {p['method']} | {p['qp']} | {p['snr_db']:.2f} | {p['bits_per_weight']:.3f} | "
                         f"{slb[0.5]:.3f} | {slb[1.0]:.3f} | {slb[1.5]:.3f} | {gap:.3f} | {100 * gap / slb[1.0]:.1f} |")
        ref = [p for p in points if p["method"] == "nncodec-dq-default" and 3 <= p["bits_per_weight"] <= 7]
        if ref:
            lines += ["", "The rate goal (5 % fewer bits than nncodec-dq-default at equal SNR) against the bound, "
                      "3-7 bits/weight:", "",
                      "| qp | SNR dB | nncodec-dq-default | goal (0.95x) | SLB | goal under the SLB? |",
                      "|---:|---:|---:|---:|---:|---|"]
            for p in ref:
                slb = shannon_bound(tensors, p["snr_db"], 1.0, cache)
                goal = 0.95 * p["bits_per_weight"]
                lines.append(f"| {p['qp']} | {p['snr_db']:.2f} | {p['bits_per_weight']:.3f} | {goal:.3f} | "
                             f"{slb:.3f} | {'yes' if goal < slb else 'no'} |")
        (results / f"bound_{dataset}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
