"""Peak memory of incremental coding (``--state``): each step of a round of federated-style updates against the
plain encode and decode of the same model, in the same run.

    python benchmarks/bench_incremental_memory.py [--tensors 16] [--rows 2048 --cols 2048] [--qp -30]
                                                  [--nnc-tree PATH] [--out benchmarks/results/incremental_memory.md]

A synthetic float32 model (``--tensors`` tensors of rows x cols, normal values) and the same model
after a small update are written as safetensors into a temporary folder. Each step runs in a fresh
process (``nnc.cli.main``) and records the growth of its peak resident set size (VmHWM) over its
start:

* the plain ``nnc encode`` and ``nnc decode`` of the model (the reference: no state);
* the sender's first stream, ``nnc encode --state enc.state --differences``, and the receiver's
  ``nnc decode --state dec.state``;
* the sender's update (the second model, ``--differences``) and the receiver's
  ``nnc decode --state dec.state --add-to`` the model it holds.

``--nnc-tree`` imports nnc from another checkout (the tree before a change, for a before/after
pair). The goal: every step grows by the tensors in flight, as the plain paths do, not by the model
(the probe of 2026-12-06: 3.6 GB for the first stream of a 512 MB model, 5.0 GB for an update).
Not a test: peaks vary from run to run.
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
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_format_memory import memory_cells, run  # noqa: E402 (a fresh process's peak memory)


def write_models(folder: Path, tensors: int, rows: int, cols: int) -> tuple[Path, Path]:
    """The model and the model after an update, as safetensors, written one tensor at a time."""
    rng = np.random.default_rng(0)
    paths = folder / "model.safetensors", folder / "updated.safetensors"
    size = rows * cols * 4
    header = {f"layers.{i}.weight": dict(dtype="F32", shape=[rows, cols], data_offsets=[i * size, (i + 1) * size])
              for i in range(tensors)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(paths[0], "wb") as base, open(paths[1], "wb") as updated:
        for fh in (base, updated):
            fh.write(len(text).to_bytes(8, "little") + text)
        for _ in header:
            w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
            base.write(w.tobytes())
            updated.write((w + rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.002)).tobytes())
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--qp", type=int, default=-30)
    ap.add_argument("--nnc-tree", default=str(REPO), help="the checkout whose nnc is measured (default: this one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "incremental_memory.md"))
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("peak memory is read from /proc: Linux only")
    command = "python benchmarks/bench_incremental_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    tree = Path(args.nnc_tree).resolve()
    work = Path(tempfile.mkdtemp(prefix="nnc-incremental-memory-"))
    quantise = ["--qp", args.qp, "--no-dq"]
    try:
        base, updated = write_models(work, args.tensors, args.rows, args.cols)
        steps = [
            ("plain encode", ["encode", base, "-o", work / "plain.nnr", *quantise]),
            ("plain decode", ["decode", work / "plain.nnr", "-o", work / "plain.safetensors"]),
            ("sender: first stream", ["encode", base, "-o", work / "s0.nnr", "--state", work / "enc.state",
                                      "--differences", *quantise]),
            ("receiver: first stream", ["decode", work / "s0.nnr", "-o", work / "r0.safetensors", "--state",
                                        work / "dec.state"]),
            ("sender: update", ["encode", updated, "-o", work / "s1.nnr", "--state", work / "enc.state",
                                "--differences", *quantise]),
            ("receiver: update (--add-to)", ["decode", work / "s1.nnr", "-o", work / "r1.safetensors", "--state",
                                             work / "dec.state", "--add-to", work / "r0.safetensors"]),
        ]
        rows = []
        for label, step in steps:
            rows.append(dict(step=label, **run(label, step, tree, imports="-")))
            print(json.dumps(rows[-1]), flush=True)
        state_mb = {k: os.path.getsize(work / k) / 2**20 for k in ("enc.state", "dec.state")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model_mb = args.tensors * args.rows * args.cols * 4 / 2**20
    plain = {"encode": rows[0]["growth_mb"], "decode": rows[1]["growth_mb"]}
    revision = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "nnc"],
                      capture_output=True, text=True).stdout.strip():
        revision += " with changes not committed"
    lines = [
        "# Peak memory of incremental coding",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"A float32 model of {args.tensors} tensors of {args.rows} x {args.cols} ({model_mb:.0f} MiB; one tensor "
        f"{args.rows * args.cols * 4 / 2**20:.0f} MiB) and the same model after a small update, as safetensors; "
        f"uniform quantisation at qp {args.qp}; the sender codes differences. Growth: the peak resident set size "
        "over the process's start (nnc imported); each row a fresh process; ratios to the model's size and to the "
        f"plain encode or decode of the same run. nnc of commit {revision}, {time.strftime('%Y-%m-%d')}. State "
        f"files: the sender's {state_mb['enc.state']:.0f} MB, the receiver's {state_mb['dec.state']:.0f} MB.",
        "",
        "| step | start MB | peak MB | growth MB | growth / model | growth / plain | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = plain["encode" if "encode" in r["step"] or "sender" in r["step"] else "decode"]
        lines.append(f"| {r['step']} | {memory_cells(r, model_mb, ref)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
