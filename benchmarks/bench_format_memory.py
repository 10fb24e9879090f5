"""Peak memory of encoding from, and decoding to, each model format: every path against the model's size
and against the safetensors path of the same run.

    python benchmarks/bench_format_memory.py [--tensors 16] [--rows 2048 --cols 2048] [--qp -30]
                                             [--out benchmarks/results/format_memory.md]

A synthetic float32 model (``--tensors`` tensors of rows x cols, normal values) is written at run
time into a temporary folder as safetensors, PyTorch (.pt), .npz, ONNX with its weights inline
and ONNX with external data. Each measurement runs in a fresh process that imports what the
path needs first (torch for .pt, onnx for .onnx), then records the growth of its peak resident
set size (VmHWM) over that start:

* encode: ``nnc encode MODEL -o m.nnr`` (uniform quantisation at ``--qp``: the quantiser's own
  memory is the same for every format), one row per input format;
* decode: ``nnc decode m.nnr -o OUT`` into each output format (ONNX with ``--template``).

The goal: every path grows by about one tensor in flight, not by the model (the probe of
2026-12-06 found .pt input at 1.26 GB for a 512 MB file, .pt and .onnx outputs at 1.7 and 4.5
times the model). Not a test: peaks vary from run to run.
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

CHILD = r"""
import sys
needs, argv = sys.argv[1], sys.argv[2:]
if needs == "torch":
    import torch
elif needs == "onnx":
    import onnx
import nnc.cli

def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024

before = peak_mb()
code = nnc.cli.main(argv + ["-q"])
print(before, peak_mb(), code)
"""


def write_models(folder: Path, tensors: int, rows: int, cols: int) -> dict:
    """The same model in every format; {label: path}."""
    import onnx
    import torch
    from onnx import helper, numpy_helper

    from nnc import formats

    rng = np.random.default_rng(0)
    weights = {f"layers.{i}.weight": rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
               for i in range(tensors)}
    paths = {
        "safetensors": folder / "model.safetensors",
        "pt": folder / "model.pt",
        "npz": folder / "model.npz",
        "onnx (inline)": folder / "inline" / "model.onnx",
        "onnx (external data)": folder / "external" / "model.onnx",
    }
    paths["safetensors"].write_bytes(formats.safetensors_bytes(weights))
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, paths["pt"])
    np.savez(paths["npz"], **weights)
    names = list(weights)
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", n], [f"h{i}"]) for i, n in enumerate(names)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info(f"h{len(names) - 1}", onnx.TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph)
    for label in ("onnx (inline)", "onnx (external data)"):
        paths[label].parent.mkdir()
    onnx.save(model, paths["onnx (inline)"])
    onnx.save(model, paths["onnx (external data)"], save_as_external_data=True, location="model.onnx.bin")
    return paths


def needs(label: str) -> str:
    return "torch" if label == "pt" else "onnx" if label.startswith("onnx") else "-"


def run(label: str, argv: list, tree: Path = REPO, imports: str | None = None) -> dict:
    """``nnc argv`` in a fresh process importing nnc from ``tree`` (and first ``imports``: "torch", "onnx" or "-";
    default: what ``label``'s format needs): its start and peak resident memory, their growth, its seconds."""
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, imports or needs(label), *map(str, argv)], capture_output=True,
                       text=True, env=env, cwd=tree)  # (python -c imports from its working folder first)
    seconds = time.perf_counter() - t0
    if r.returncode != 0 or not r.stdout.strip():
        raise SystemExit(f"{label}: {' '.join(map(str, argv))} failed:\n{r.stderr[-3000:]}")
    before, peak, code = r.stdout.split()[-3:]
    if code != "0":
        raise SystemExit(f"{label}: exit {code}:\n{r.stderr[-3000:]}")
    return dict(start_mb=float(before), peak_mb=float(peak), growth_mb=float(peak) - float(before), seconds=seconds)


def memory_cells(r: dict, model_mb: float, reference_mb: float) -> str:
    """A :func:`run` row's table cells: start, peak and growth MB, growth over the model and over a reference
    growth, seconds."""
    return (
        f"{r['start_mb']:.0f} | {r['peak_mb']:.0f} | {r['growth_mb']:.0f} | {r['growth_mb'] / model_mb:.2f} "
        f"| {r['growth_mb'] / reference_mb:.2f} | {r['seconds']:.1f}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--qp", type=int, default=-30)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "format_memory.md"))
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("peak memory is read from /proc: Linux only")
    command = "python benchmarks/bench_format_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="nnc-format-memory-"))
    try:
        paths = write_models(work, args.tensors, args.rows, args.cols)
        model_mb = args.tensors * args.rows * args.cols * 4 / 2**20
        tensor_mb = args.rows * args.cols * 4 / 2**20
        rows = []
        stream = work / "m.nnr"
        for label, path in paths.items():
            out = work / f"enc-{len(rows)}.nnr"
            r = run(label, ["encode", path, "-o", out, "--qp", args.qp, "--no-dq"])
            rows.append(dict(op="encode from", format=label, **r))
            if label == "safetensors":
                shutil.copy(out, stream)
            out.unlink()
            print(json.dumps(rows[-1]), flush=True)
        for label, path in paths.items():
            target = work / "out" / label.split()[0] / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            template = ["--template", path] if label.startswith("onnx") else []
            r = run(label, ["decode", stream, "-o", target, *template])
            rows.append(dict(op="decode to", format=label, **r))
            shutil.rmtree(target.parent)
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reference = {r["op"]: r["growth_mb"] for r in rows if r["format"] == "safetensors"}
    lines = [
        "# Peak memory by model format",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"A float32 model of {args.tensors} tensors of {args.rows} x {args.cols} ({model_mb:.0f} MiB; one tensor "
        f"{tensor_mb:.0f} MiB), uniform quantisation at qp {args.qp}. Growth: the peak resident set size over the "
        "process's start (nnc imported, and torch or onnx for their formats); each row a fresh process; ratios to "
        "the model's size and to the safetensors path of the same run. Commit "
        + subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() + f", {time.strftime('%Y-%m-%d')}.",
        "",
        "| operation | format | start MB | peak MB | growth MB | growth / model | growth / safetensors' | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['op']} | {r['format']} | {memory_cells(r, model_mb, reference[r['op']])} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
