"""Peak memory and throughput of encoding and decoding sharded bf16 checkpoints of growing size.

    python benchmarks/bench_scale.py [--sizes 0.2 1 4] [--rows 4096 --cols 4096] [--qp -30] [--no-dq]
                                     [--threads 1 0] [--workdir DIR] [--out benchmarks/results]

For each size (GB of bf16 weights) a synthetic checkpoint is written at run time into a
temporary folder (never committed): shards of 8 tensors of rows x cols bf16 values (normal,
sigma 0.02) with model.safetensors.index.json; the largest tensor therefore stays the same as
the model grows. Each measurement runs in a fresh process and records its peak resident set
size (VmHWM), its wall time and the weights per second:

* encode, streaming: ``nnc.models.encode_model_to(folder, out)`` (what ``nnc encode DIR`` runs):
  one tensor read at a time, each NDU written as its turn comes;
* encode, in memory: every tensor loaded, then ``Encoder.encode`` (today's in-memory path),
  the reference for the throughput ratio (run up to ``--memory-max-gb``);
* decode: the stream decoded in memory (``nnc.decode``), as streaming decode into a folder
  is not on this branch.

The goal (issue 16) is a peak RSS <= 1.5 x the largest tensor's float32 size + 300 MB at every
size, flat as the model grows, with the streaming throughput within 5 % of the in-memory one.
Writes scale.md (and scale.json) into --out. Not a test: peaks and times vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r'''
import json, os, sys, time
op, folder, out, qp, dq, threads = sys.argv[1:7]
qp, dq, threads = int(qp), dq == "1", int(threads)

def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024

import numpy as np
import nnc
from nnc import models, readers
before = peak_mb()
t0 = time.perf_counter()
if op == "encode-stream":
    s = models.encode_model_to(folder, out, qp=qp, dq=dq, threads=threads)
    weights, size = s.weights, s.stream_bytes
elif op == "encode-memory":
    source = readers.open_model(folder)
    tensors = {t.name: t.load() for t in source}
    stream = nnc.Encoder(qp=qp, dq=dq, threads=threads, dtypes=source.dtypes).encode(
        tensors, extra_metadata=models.checkpoint_metadata(source)).stream
    with open(out, "wb") as fh:
        fh.write(stream)
    weights, size = sum(t.size for t in source), len(stream)
else:
    decoded = nnc.decode(out, threads=threads)
    weights, size = sum(int(v.size) for v in decoded.values()), os.path.getsize(out)
seconds = time.perf_counter() - t0
print(json.dumps(dict(before=before, peak=peak_mb(), seconds=seconds, weights=weights, bytes=size)))
'''


def write_checkpoint(folder: Path, gigabytes: float, rows: int, cols: int, per_shard: int = 8) -> dict:
    """A sharded bf16 checkpoint of about ``gigabytes`` GB; returns its facts."""
    from nnc import formats

    folder.mkdir(parents=True)
    tensor_bytes = 2 * rows * cols
    count = max(1, round(gigabytes * 1e9 / tensor_bytes))
    shards = (count + per_shard - 1) // per_shard
    rng = np.random.default_rng(0)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        names = [f"layers.{i}.weight" for i in range(s * per_shard, min(count, (s + 1) * per_shard))]
        header = {"__metadata__": {"format": "pt"}}
        for j, n in enumerate(names):
            header[n] = {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [j * tensor_bytes, (j + 1) * tensor_bytes]}
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(folder / name, "wb") as fh:
            fh.write(len(h).to_bytes(8, "little"))
            fh.write(h)
            for _ in names:
                x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
                fh.write(formats.float32_to_bfloat16(x).tobytes())
        weight_map.update((n, name) for n in names)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": count * tensor_bytes}, "weight_map": weight_map}))
    return dict(tensors=count, shards=shards, bytes=count * tensor_bytes, largest_fp32=4 * rows * cols)


def run(op, folder, out, qp, dq, threads) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, op, str(folder), str(out), str(qp), "1" if dq else "0",
                        str(threads)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{op} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.2, 1, 4], help="model sizes in GB of bf16")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--qp", type=int, default=-30)
    ap.add_argument("--no-dq", dest="dq", action="store_false", help="uniform quantisation (faster)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0: one per CPU")
    ap.add_argument("--memory-max-gb", type=float, default=1.0, help="largest size also run in memory")
    ap.add_argument("--workdir", default=None, help="where the checkpoints are written (default: a temp dir)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nnc-scale-", dir=args.workdir))
    rows = []
    try:
        for size in args.sizes:
            folder = work / f"ckpt-{size}"
            facts = write_checkpoint(folder, size, args.rows, args.cols)
            goal = 1.5 * facts["largest_fp32"] / 2**20 + 300
            for threads in args.threads:
                stream = work / f"m-{size}-{threads}.nnr"
                enc = run("encode-stream", folder, stream, args.qp, args.dq, threads)
                mem = run("encode-memory", folder, work / "mem.nnr", args.qp, args.dq, threads) \
                    if size <= args.memory_max_gb else None
                if mem is not None:
                    assert (work / "mem.nnr").read_bytes() == stream.read_bytes(), "streams differ"
                dec = run("decode", folder, stream, args.qp, args.dq, threads)
                row = dict(size_gb=size, threads=threads or os.cpu_count(), goal_mb=goal, **facts,
                           encode_stream=enc, encode_memory=mem, decode_memory=dec)
                rows.append(row)
                print(json.dumps(row), flush=True)
                stream.unlink()
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report(rows, args, Path(args.out))
    return 0


def write_report(rows, args, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(rows, indent=1))
    cmd = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    lines = [f"# Scale: sharded bf16 checkpoints, qp {args.qp}, {'DQ' if args.dq else 'uniform (--no-dq)'}", "",
             f"Command: `{cmd.strip()}`", "",
             f"Tensors of {args.rows} x {args.cols} bf16 (largest tensor {4 * args.rows * args.cols / 2**20:.0f} MB "
             f"as float32), 8 per shard. Peak = VmHWM of a fresh process (imports included); "
             f"goal = 1.5 x largest fp32 + 300 MB. Throughput in M weights/s; 'vs memory' is the streaming "
             f"encoder's throughput over the in-memory encoder's in the same run. Machine: 2 cores shared "
             f"with other jobs, so times are noisy; decode is in memory (nnc.decode), not streaming.", "",
             "| model GB | tensors | threads | encode peak MB (stream) | goal MB | encode peak MB (in memory) "
             "| encode M w/s (stream) | vs memory | decode peak MB (in memory) | decode M w/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        enc, mem, dec = r["encode_stream"], r["encode_memory"], r["decode_memory"]
        tput = enc["weights"] / enc["seconds"] / 1e6
        mem_peak = f"{mem['peak']:.0f}" if mem else "-"
        ratio = f"{tput / (mem['weights'] / mem['seconds'] / 1e6):.2f}x" if mem else "-"
        lines.append(f"| {r['size_gb']} | {r['tensors']} | {r['threads']} | {enc['peak']:.0f} | {r['goal_mb']:.0f} | "
                     f"{mem_peak} | {tput:.2f} | {ratio} | {dec['peak']:.0f} | "
                     f"{dec['weights'] / dec['seconds'] / 1e6:.2f} |")
    (out / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
