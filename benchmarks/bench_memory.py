"""Peak memory of encoding and decoding a whole model: nnc against NNCodec 2.1.3, in one run.

    python benchmarks/bench_memory.py [--model PATH] [--qp -30] [--out benchmarks/results]

Each measurement runs in a fresh process: it imports the coder, reads its input (the model
as float32/int32 arrays, or the stream's bytes), records its peak resident set size (Linux
VmHWM), runs the one operation, and records the peak again. The table gives the growth of the peak
over the input, the memory the operation itself needed, as MB and as a multiple of the
model's float32 size. nnc runs with one thread and with one per CPU. NNCodec runs in its
oracle environment (tools/setup_oracle.sh) on the same tensors and on the stream nnc wrote
(nnc and NNCodec streams decode alike). Default model: MiniLM-L6 when installed, else the
bundled digits MLP. Writes memory.md. Not a test: peaks vary a little from run to run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# Runs in a child process: argv = coder, operation, input file, output file, qp, threads.
CHILD = r'''
import json, resource, sys
coder, op, src, dst, qp, threads = sys.argv[1:7]
qp, threads = int(qp), int(threads)

def peak_mb():
    # VmHWM: this process image's peak (ru_maxrss would carry the parent's peak over the exec)
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

import numpy as np
if coder == "nnc":
    import nnc
else:
    sys.path.insert(0, sys.argv[7])
    import contextlib, nncodec_worker
    nncodec_worker._stub_torchvision()
    from nncodec import nnc as nncodec
if op == "encode":
    with np.load(src) as z:
        tensors = {k: z[k] for k in z.files}
else:
    data = bytearray(open(src, "rb").read())
before = peak_mb()
if coder == "nnc" and op == "encode":
    out = nnc.Encoder(qp=qp, threads=threads).encode(tensors).stream
elif coder == "nnc":
    out = nnc.decode(bytes(data), threads=threads)
else:
    with contextlib.redirect_stdout(sys.stderr):
        if op == "encode":
            out = nncodec.compress(tensors, bitstream_path=None, return_bitstream=True, qp=qp, use_dq=True,
                                   verbose=False)
        else:
            out = nncodec.decompress(data, verbose=False)
after = peak_mb()
if op == "encode":
    open(dst, "wb").write(bytes(out))
print(json.dumps({"before": before, "after": after}))
'''


def measure(python, coder, op, src, dst, qp, threads=1):
    """(peak MB before the operation, peak MB after) of one run in a fresh process."""
    r = subprocess.run([str(python), "-c", CHILD, coder, op, str(src), str(dst), str(qp), str(threads),
                        str(REPO / "tools" / "oracle")], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if r.returncode != 0:
        raise RuntimeError(f"{coder} {op} failed: {r.stderr[-500:]}")
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    return rep["before"], rep["after"]


def main(argv=None):
    import os

    from nnc.formats import read_model, write_atomic, npz_bytes
    from oracle import NNCodecOracle
    from tools.oracle.client import oracle_python

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model file (default: MiniLM-L6 if installed, else the digits MLP)")
    ap.add_argument("--qp", type=int, default=-30)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.model is None:
        from test_interop import minilm_path

        from nnc import demo

        args.model = str(minilm_path() or demo.DATA / "mlp.safetensors")
    tensors, _ = read_model(args.model)
    # both coders get the same float32 / int32 arrays (what NNCodec takes)
    tensors = {k: np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.int32) for k, v in tensors.items()}
    fp32_mb = sum(v.size for v in tensors.values()) * 4 / 2**20
    work = Path(tempfile.mkdtemp(prefix="nnc-mem-"))
    src, stream = work / "model.npz", work / "model.nnr"
    write_atomic(src, npz_bytes(tensors))
    cpus = os.cpu_count() or 1
    runs = [("nnc, 1 thread", sys.executable, "nnc", 1), (f"nnc, {cpus} threads", sys.executable, "nnc", cpus)]
    if NNCodecOracle.available():
        runs.append(("NNCodec 2.1.3", oracle_python(), "nncodec", 1))
    rows = []
    for op in ("encode", "decode"):
        for label, python, coder, threads in runs:
            if op == "decode" and not stream.exists():
                measure(sys.executable, "nnc", "encode", src, stream, args.qp)
            before, after = measure(python, coder, op, stream if op == "decode" else src,
                                    work / f"{coder}.nnr", args.qp, threads)
            rows.append((op, label, after, after - before))
            print(f"{op:6} {label:16} peak {after:8.1f} MB, growth {after - before:8.1f} MB", flush=True)
    name = Path(args.model).name
    lines = [f"# Peak memory, {name} ({fp32_mb:.1f} MB as float32), qp {args.qp}", "",
             f"Command: `python benchmarks/bench_memory.py --model {args.model if 'site-packages' not in args.model else '$MINILM'}"
             f" --qp {args.qp}`", "",
             "Each row is a fresh process. \"growth\" is the peak resident set size after the operation minus "
             "the peak before it (after imports and reading the input): the memory the operation needed. "
             "The ratio column is nnc's growth over NNCodec's in the same run.", "",
             "| operation | coder | peak MB | growth MB | growth / model fp32 | vs NNCodec |",
             "|---|---|---:|---:|---:|---:|"]
    for op in ("encode", "decode"):
        theirs = next((g for o, label, _, g in rows if o == op and label.startswith("NNCodec")), None)
        for o, label, peak, growth in rows:
            if o != op:
                continue
            ratio = f"{growth / theirs:.2f}x" if theirs and not label.startswith("NNCodec") else "-"
            lines.append(f"| {op} | {label} | {peak:.0f} | {growth:.0f} | {growth / fp32_mb:.2f} | {ratio} |")
    if not NNCodecOracle.available():
        lines += ["", f"NNCodec oracle not available ({NNCodecOracle.reason}): nnc only."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
