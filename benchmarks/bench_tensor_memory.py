"""Peak memory of encoding one large tensor: this tree against an earlier commit and NNCodec 2.1.3, in one run.

    python benchmarks/bench_tensor_memory.py [--rows 8192 --cols 4096] [--before REF]
                                             [--out benchmarks/results/tensor_memory.md]

A model of one rows x cols tensor (normal values) is written as float32 and as bfloat16 safetensors.
Each measurement runs in a fresh process that imports its coder and records the growth of its peak
resident set size (VmHWM) over that start, in multiples of the tensor's float32 bytes:

* ``nnc encode MODEL -o m.nnr`` with the defaults (DQ) and with ``--no-dq``, from this tree and,
  with ``--before``, from a worktree of that commit (its compiled engine copied from this tree,
  which must have the same ``nnc/_engine.pyx``);
* NNCodec 2.1.3 (its oracle environment, tools/setup_oracle.sh) encoding the float32 tensor, read
  from an .npz, with DQ and without (it takes no bfloat16).

The streaming encoder's memory is bounded by the tensors in flight; this measures what one tensor
costs. Not a test: peaks vary a little from run to run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys
coder, src, dst, dq = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"

def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024

import numpy as np
if coder == "nnc":
    import nnc.cli
else:
    sys.path.insert(0, sys.argv[5])
    import contextlib, nncodec_worker
    nncodec_worker._stub_torchvision()
    from nncodec import nnc as nncodec
before = peak_mb()
if coder == "nnc":
    code = nnc.cli.main(["encode", src, "-o", dst, "-q"] + ([] if dq else ["--no-dq"]))
else:
    with np.load(src) as z:
        tensors = {k: z[k] for k in z.files}
    with contextlib.redirect_stdout(sys.stderr):
        out = nncodec.compress(tensors, bitstream_path=None, return_bitstream=True, qp=-38, use_dq=dq, verbose=False)
    open(dst, "wb").write(bytes(out))
    code = 0
print(json.dumps({"before": before, "after": peak_mb(), "code": code}))
"""


def measure(python: str, coder: str, src: Path, dst: Path, dq: bool, pythonpath: Path | None = None) -> float:
    """Growth of the peak resident set size in MB of one encode in a fresh process."""
    import os

    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    argv = [python, "-c", CHILD, coder, str(src), str(dst), "1" if dq else "0", str(REPO / "tools" / "oracle")]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{coder} failed: {r.stderr[-800:]}")
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    if rep["code"] != 0:
        raise RuntimeError(f"{coder} exited {rep['code']}: {r.stderr[-800:]}")
    return rep["after"] - rep["before"]


def worktree_of(ref: str, folder: Path) -> Path:
    """A worktree of ``ref`` whose compiled modules are this tree's (the engine sources must be the same)."""
    for source in ("nnc/_engine.pyx", "nnc/_mapguard.pyx", "nnc/_mapguard.h", "nnc/_pricer.h"):
        theirs = subprocess.run(["git", "show", f"{ref}:{source}"], cwd=REPO, capture_output=True).stdout
        if theirs != (REPO / source).read_bytes():
            raise SystemExit(f"{ref}'s {source} differs from this tree's: build that commit to compare with it")
    tree = folder / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=REPO, check=True)
    for built in (REPO / "nnc").glob("*.so"):
        shutil.copy2(built, tree / "nnc" / built.name)
    return tree


def main(argv=None) -> None:
    import ml_dtypes
    from safetensors.numpy import save_file

    sys.path.insert(0, str(REPO / "tests"))
    from oracle import NNCodecOracle

    from tools.oracle.client import oracle_python

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--before", metavar="REF", help="an earlier commit to measure in the same run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tensor_memory.md"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nnc-tensor-mem-"))
    tree = None
    try:
        w = (np.random.default_rng(0).standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
        fp32_mb = w.nbytes / 2**20
        save_file({"w": w}, str(work / "float32.safetensors"))
        save_file({"w": w.astype(ml_dtypes.bfloat16)}, str(work / "bfloat16.safetensors"))
        np.savez(work / "float32.npz", w=w)
        del w
        coders = [("this tree", None)]
        if args.before:
            tree = worktree_of(args.before, work)
            coders.append((f"{args.before}", tree))
        rows = []
        for dtype in ("float32", "bfloat16"):
            for dq in (True, False):
                for label, path in coders:
                    growth = measure(sys.executable, "nnc", work / f"{dtype}.safetensors", work / "m.nnr", dq, path)
                    rows.append((f"nnc ({label})", dtype, dq, growth))
                    print(rows[-1], flush=True)
                if dtype == "float32" and NNCodecOracle.available():
                    growth = measure(oracle_python(), "nncodec", work / "float32.npz", work / "n.nnr", dq)
                    rows.append(("NNCodec 2.1.3", dtype, dq, growth))
                    print(rows[-1], flush=True)
    finally:
        if tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO)
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    command = "python benchmarks/bench_tensor_memory.py" + (f" --before {args.before}" if args.before else "")
    if (args.rows, args.cols) != (8192, 4096):
        command += f" --rows {args.rows} --cols {args.cols}"
    lines = [
        "# Peak memory of encoding one tensor",
        "",
        f"Command: `{command}`",
        "",
        f"One {args.rows} x {args.cols} tensor ({fp32_mb:.0f} MiB as float32), qp -38. Growth: the peak resident set size "
        "over the process's start (the coder imported, nothing read); each row a fresh process. nnc encodes the "
        "safetensors file with its CLI (streaming); NNCodec encodes the float32 arrays of an .npz. "
        f"HEAD {commit.strip()} (this tree may hold uncommitted changes).",
        "",
        "| coder | file dtype | DQ | growth MB | growth / tensor's float32 bytes |",
        "|---|---|---|---:|---:|",
    ]
    for label, dtype, dq, growth in rows:
        lines.append(f"| {label} | {dtype} | {'yes' if dq else 'no'} | {growth:.0f} | {growth / fp32_mb:.2f} |")
    if not NNCodecOracle.available():
        lines += ["", f"NNCodec oracle not available ({NNCodecOracle.reason}): nnc only."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
